-- An order's status and the failure that cancelled it as enum types: the database cannot
-- hold a state the code does not know, and the code binds the Rust enums directly.
ALTER TABLE orders.orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders.orders DROP CONSTRAINT orders_cancelled_by_check;
CREATE TYPE orders.order_status AS ENUM
    ('pending', 'paid', 'stock_reserved', 'confirmed', 'cancelled');
CREATE TYPE orders.cancelled_by AS ENUM
    ('PaymentFailed', 'StockReservationFailed', 'ShipmentFailed');
ALTER TABLE orders.orders
    ALTER COLUMN status TYPE orders.order_status USING status::orders.order_status,
    ALTER COLUMN cancelled_by TYPE orders.cancelled_by USING cancelled_by::orders.cancelled_by;
