-- Each change of an order's status, or of whether it is settled, in the order the changes
-- committed, with the message that caused it (the one handled, or, for the customer's
-- cancellation, the deadline and the placing, the one announced): the statuses the order's
-- timeline shows beside its messages, the same in both styles for the same story.
CREATE TABLE orders.status_changes (
    id         BIGSERIAL    PRIMARY KEY,
    order_id   UUID         NOT NULL REFERENCES orders.orders (id),
    message_id UUID         NOT NULL,
    status     order_status NOT NULL,
    settled    BOOLEAN      NOT NULL,
    changed_at TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX status_changes_by_order ON orders.status_changes (order_id, id);
CREATE INDEX status_changes_by_message ON orders.status_changes (message_id);
