-- A minimal service schema for tests of the kit itself: just the outbox and the inbox.
CREATE TABLE probe.outbox (
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

CREATE TABLE probe.inbox (
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

-- The probe's "effect": a row per successful handling.
CREATE TABLE probe.effects (
    message_id UUID PRIMARY KEY,
    order_id   UUID NOT NULL
);
