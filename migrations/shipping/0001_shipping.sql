-- Shipping owns the destinations (learned from OrderPlaced), which carrier serves which
-- country, and the shipments; it announces ShipmentBooked and ShipmentFailed.

CREATE TABLE shipping.carrier_coverage (
    country TEXT PRIMARY KEY CHECK (country ~ '^[A-Z]{2}$'),
    carrier TEXT NOT NULL
);

-- Countries not listed here (Antarctica, AQ, for one) fail booking: the deterministic way to
-- drive the ShipmentFailed path.
INSERT INTO shipping.carrier_coverage (country, carrier) VALUES
    ('AT', 'eurocourier'), ('BE', 'eurocourier'), ('CH', 'eurocourier'), ('CZ', 'eurocourier'),
    ('DE', 'eurocourier'), ('DK', 'eurocourier'), ('ES', 'eurocourier'), ('FI', 'eurocourier'),
    ('FR', 'eurocourier'), ('IT', 'eurocourier'), ('LU', 'eurocourier'), ('NL', 'eurocourier'),
    ('NO', 'eurocourier'), ('PL', 'eurocourier'), ('PT', 'eurocourier'), ('SE', 'eurocourier'),
    ('GB', 'royal-parcel'), ('IE', 'royal-parcel'),
    ('US', 'northstar'), ('CA', 'northstar'), ('MX', 'northstar'),
    ('AU', 'southern-cross'), ('NZ', 'southern-cross'),
    ('JP', 'pacific-express'), ('KR', 'pacific-express'), ('SG', 'pacific-express'),
    ('BR', 'andes-post'), ('AR', 'andes-post'), ('CL', 'andes-post');

CREATE TABLE shipping.destinations (
    order_id    UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    line1       TEXT NOT NULL,
    city        TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    country     TEXT NOT NULL
);

CREATE TABLE shipping.shipments (
    order_id        UUID        PRIMARY KEY,
    status          TEXT        NOT NULL CHECK (status IN ('booked', 'failed')),
    shipment_id     UUID        UNIQUE,
    carrier         TEXT,
    tracking_number TEXT,
    reason          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'booked') = (shipment_id IS NOT NULL))
);

-- The transactional outbox: events committed with the state change, published by the relay.
CREATE TABLE shipping.outbox (
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
CREATE INDEX outbox_unsent ON shipping.outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_by_order ON shipping.outbox (correlation_id);

-- The inbox: ids of handled messages, written in the same transaction as their effect.
CREATE TABLE shipping.inbox (
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
CREATE INDEX inbox_by_order ON shipping.inbox (correlation_id);
