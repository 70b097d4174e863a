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
