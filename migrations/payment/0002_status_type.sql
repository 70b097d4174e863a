-- A payment's status as an enum type: the database cannot hold a status the code does not
-- know, and the code binds the Rust enum directly (no hand-written names).
ALTER TABLE payment.payments DROP CONSTRAINT payments_status_check;
CREATE TYPE payment.payment_status AS ENUM ('charged', 'declined', 'refunded');
ALTER TABLE payment.payments
    ALTER COLUMN status TYPE payment.payment_status USING status::payment.payment_status;
