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
