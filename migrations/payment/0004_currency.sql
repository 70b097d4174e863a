-- OrderPlaced version 2 names the order's currency; a payment records what it charged in.
-- Every earlier payment was in euros (OrderPlaced version 1 implied them).
ALTER TABLE payment.payments ADD COLUMN currency TEXT NOT NULL DEFAULT 'EUR';
