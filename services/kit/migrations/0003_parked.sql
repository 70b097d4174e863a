-- Messages that arrived before the fact they depend on (a handler answered "deferred"). They
-- wait here, acked, instead of travelling through a delay queue, and are applied the moment a
-- commit of the same order may have brought what they wait for; the row is deleted in the
-- transaction that applies them.
CREATE TABLE parked (
    message_id     UUID        PRIMARY KEY,
    correlation_id UUID        NOT NULL,
    -- The routing key the event was published with, and the message exactly as received.
    routing_key    TEXT        NOT NULL,
    body           BYTEA       NOT NULL,
    -- Tries so far (the delivery that parked it included) and why the last one waited.
    attempts       INT         NOT NULL,
    last_error     TEXT        NOT NULL,
    parked_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the sweep tries it next (a commit of the same order in this process tries it at once).
    next_try_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX parked_by_order ON parked (correlation_id);
CREATE INDEX parked_due ON parked (next_try_at);
