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
