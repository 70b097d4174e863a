-- An Idempotency-Key is its customer's own (the IETF idempotency-key draft scopes a key to its
-- client): another customer sending the same key must neither be refused as reusing it nor,
-- ever, be answered with this customer's order.
ALTER TABLE orders.orders DROP CONSTRAINT orders_idempotency_key_key;
ALTER TABLE orders.orders
    ADD CONSTRAINT orders_idempotency_key_per_customer UNIQUE (customer_id, idempotency_key);
