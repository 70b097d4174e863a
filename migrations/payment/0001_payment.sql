-- Payment owns the charges and refunds, and announces PaymentCompleted, PaymentFailed and
-- PaymentRefunded.

CREATE TABLE payment.payments (
    order_id       UUID        PRIMARY KEY,
    payment_id     UUID        NOT NULL UNIQUE,
    status         TEXT        NOT NULL CHECK (status IN ('charged', 'declined', 'refunded')),
    amount_cents   BIGINT      NOT NULL CHECK (amount_cents >= 0),
    payment_method TEXT        NOT NULL,
    decline_reason TEXT,
    charged_at     TIMESTAMPTZ,
    refunded_at    TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The transactional outbox: events committed with the state change, published by the relay.
CREATE TABLE payment.outbox (
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
CREATE INDEX outbox_unsent ON payment.outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_by_order ON payment.outbox (correlation_id);

-- The inbox: ids of handled messages, written in the same transaction as their effect.
CREATE TABLE payment.inbox (
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
CREATE INDEX inbox_by_order ON payment.inbox (correlation_id);
