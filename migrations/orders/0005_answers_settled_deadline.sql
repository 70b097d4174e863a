-- Each participant answers a cancellation with what it undid; orders records the answers it
-- has seen and whether the order is settled (confirmed, or cancelled with every answer in),
-- so admission control and the auditor read one column instead of repeating the rule.
ALTER TABLE orders.orders
    ADD COLUMN payment_voided     BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN reservation_voided BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN shipment_undone    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN settled            BOOLEAN NOT NULL DEFAULT false,
    -- The customer's own words when they cancelled (at most 200 characters).
    ADD COLUMN cancellation_note  TEXT,
    -- When the order expires if it is still open: data, so every orders replica (and a
    -- restarted one) sees the same deadline.
    ADD COLUMN deadline_at        TIMESTAMPTZ;

-- Orders settled under the rule before cancellations were answered stay settled.
UPDATE orders.orders SET settled = true
WHERE status = 'confirmed'
   OR (status = 'cancelled'
       AND NOT ((cancelled_by IN ('StockReservationFailed', 'ShipmentFailed') AND NOT refund_seen)
                OR (cancelled_by = 'ShipmentFailed' AND NOT release_seen)));
UPDATE orders.orders SET deadline_at = created_at + interval '10 minutes';
ALTER TABLE orders.orders ALTER COLUMN deadline_at SET NOT NULL;

DROP INDEX orders.orders_unsettled;
CREATE INDEX orders_unsettled ON orders.orders (id) WHERE NOT settled;
-- The deadline sweep reads the open orders by deadline.
CREATE INDEX orders_open_by_deadline ON orders.orders (deadline_at)
    WHERE status IN ('pending', 'paid', 'stock_reserved');
