-- The console's read model: every event of the shop as the console heard it, and nothing
-- else (it never reads another service's schema).
CREATE TABLE console.events (
    -- Arrival order here: what the live page streams from.
    seq          BIGSERIAL   PRIMARY KEY,
    message_id   UUID        NOT NULL UNIQUE,
    order_id     UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    producer     TEXT        NOT NULL,
    causation_id UUID,
    occurred_at  TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload      JSONB       NOT NULL
);
CREATE INDEX events_by_order ON console.events (order_id, occurred_at);
CREATE INDEX events_by_arrival ON console.events (received_at);
