-- Inventory owns the stock, the items of each order (learned from OrderPlaced) and the
-- reservations, and announces StockReserved, StockReservationFailed and StockReleased.

CREATE TABLE inventory.stock (
    sku       TEXT PRIMARY KEY,
    -- What the shop started with: the auditor checks seeded = available + reserved.
    seeded    INT  NOT NULL CHECK (seeded >= 0),
    available INT  NOT NULL CHECK (available >= 0),
    reserved  INT  NOT NULL CHECK (reserved >= 0)
);

INSERT INTO inventory.stock (sku, seeded, available, reserved) VALUES
    ('MUG-001',      100,  100, 0),
    ('TEE-001',       50,   50, 0),
    ('BOOK-001',      25,   25, 0),
    ('STICKER-001', 1000, 1000, 0),
    ('HOODIE-001',    10,   10, 0);

CREATE TABLE inventory.order_items (
    order_id UUID NOT NULL,
    sku      TEXT NOT NULL,
    quantity INT  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE inventory.reservations (
    order_id   UUID        PRIMARY KEY,
    status     TEXT        NOT NULL CHECK (status IN ('reserved', 'failed', 'released')),
    reason     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
