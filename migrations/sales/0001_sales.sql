-- Sales owns a read-only view of the shop: each order it heard of, and how it ended. It
-- announces nothing; the figures are computed from these rows when asked for.

CREATE TABLE sales.orders (
    order_id    UUID        PRIMARY KEY,
    customer_id TEXT        NOT NULL,
    country     TEXT        NOT NULL,
    total_cents BIGINT      NOT NULL,
    currency    TEXT        NOT NULL,
    placed_at   TIMESTAMPTZ NOT NULL,
    -- NULL while the order is open.
    outcome     TEXT        CHECK (outcome IN ('confirmed', 'cancelled'))
);
CREATE INDEX orders_by_country ON sales.orders (country) WHERE outcome = 'confirmed';
