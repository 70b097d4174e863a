-- A minimal service schema for tests of the kit itself (the kit adds its outbox and inbox).
-- The probe stands in for inventory, so this lands in the inventory schema of the test's own
-- database.

-- The probe's "effect": a row per successful handling.
CREATE TABLE inventory.effects (
    message_id UUID PRIMARY KEY,
    order_id   UUID NOT NULL
);
