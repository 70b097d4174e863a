-- A minimal service schema for tests of the kit itself (the kit adds its outbox and inbox).

-- The probe's "effect": a row per successful handling.
CREATE TABLE probe.effects (
    message_id UUID PRIMARY KEY,
    order_id   UUID NOT NULL
);
