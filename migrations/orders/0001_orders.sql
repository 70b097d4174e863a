-- Orders owns the catalog (prices) and the orders, and announces OrderPlaced,
-- OrderConfirmed and OrderCancelled.

CREATE TABLE orders.products (
    sku         TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents > 0)
);

INSERT INTO orders.products (sku, name, price_cents) VALUES
    ('MUG-001',     'Choreography mug',            1250),
    ('TEE-001',     'Past-tense T-shirt',          1999),
    ('BOOK-001',    'Sagas without a conductor',   3500),
    ('STICKER-001', 'Idempotency sticker pack',     300),
    ('HOODIE-001',  'Dead-letter hoodie',          4900);

CREATE TABLE orders.orders (
    id                  UUID        PRIMARY KEY,
    customer_id         TEXT        NOT NULL,
    status              TEXT        NOT NULL CHECK (status IN
                            ('pending', 'paid', 'stock_reserved', 'confirmed', 'cancelled')),
    total_cents         BIGINT      NOT NULL CHECK (total_cents > 0),
    payment_method      TEXT        NOT NULL,
    shipping_address    JSONB       NOT NULL,
    -- Which failure cancelled the order decides which compensations must be seen.
    cancelled_by        TEXT        CHECK (cancelled_by IN
                            ('PaymentFailed', 'StockReservationFailed', 'ShipmentFailed')),
    cancellation_reason TEXT,
    refund_seen         BOOLEAN     NOT NULL DEFAULT false,
    release_seen        BOOLEAN     NOT NULL DEFAULT false,
    idempotency_key     TEXT        UNIQUE,
    -- The normalized request, so a reused Idempotency-Key with another body is refused.
    request             JSONB       NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_recent ON orders.orders (created_at DESC);

CREATE TABLE orders.order_items (
    order_id         UUID   NOT NULL REFERENCES orders.orders (id),
    line             INT    NOT NULL,
    sku              TEXT   NOT NULL REFERENCES orders.products (sku),
    quantity         INT    NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, line),
    UNIQUE (order_id, sku)
);
