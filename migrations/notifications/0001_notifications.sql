-- Notifications owns the notices sent to customers. It announces nothing.

CREATE TABLE notifications.notifications (
    id         BIGSERIAL   PRIMARY KEY,
    order_id   UUID        NOT NULL,
    kind       TEXT        NOT NULL CHECK (kind IN
                   ('order_confirmed', 'order_cancelled', 'payment_refunded')),
    message    TEXT        NOT NULL,
    -- The event that caused the notice.
    message_id UUID        NOT NULL UNIQUE,
    sent_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A customer hears each thing once.
    UNIQUE (order_id, kind)
);

-- The inbox: ids of handled messages, written in the same transaction as their effect.
CREATE TABLE notifications.inbox (
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
CREATE INDEX inbox_by_order ON notifications.inbox (correlation_id);
