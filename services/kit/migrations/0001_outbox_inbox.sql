-- The kit's tables, created in every service's own schema (the connection's search_path is
-- the service's schema, so these names land there). History: <schema>._kit_migrations.

-- The transactional outbox: events committed with the state change, published by the relay.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    message_id       UUID        NOT NULL UNIQUE,
    event_type       TEXT        NOT NULL,
    routing_key      TEXT        NOT NULL,
    correlation_id   UUID        NOT NULL,
    causation_id     UUID,
    envelope         JSONB       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ,
    publish_attempts INT         NOT NULL DEFAULT 0,
    last_error       TEXT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_by_order ON outbox (correlation_id);

-- The inbox: ids of handled messages, written in the same transaction as their effect.
CREATE TABLE inbox (
    message_id     UUID        PRIMARY KEY,
    event_type     TEXT        NOT NULL,
    correlation_id UUID        NOT NULL,
    causation_id   UUID,
    producer       TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Deliveries of this message after the first, absorbed without effect.
    duplicates     INT         NOT NULL DEFAULT 0
);
CREATE INDEX inbox_by_order ON inbox (correlation_id);
