-- A shipment's status as an enum type: the database cannot hold a status the code does not
-- know, and the code binds the Rust enum directly.
ALTER TABLE shipping.shipments DROP CONSTRAINT shipments_status_check;
ALTER TABLE shipping.shipments DROP CONSTRAINT shipments_check;
CREATE TYPE shipping.shipment_status AS ENUM ('booked', 'failed');
ALTER TABLE shipping.shipments
    ALTER COLUMN status TYPE shipping.shipment_status USING status::shipping.shipment_status;
ALTER TABLE shipping.shipments
    ADD CONSTRAINT shipments_booked_has_id CHECK ((status = 'booked') = (shipment_id IS NOT NULL));
