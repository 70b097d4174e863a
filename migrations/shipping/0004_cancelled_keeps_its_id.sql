-- A cancelled shipment keeps the id it was booked under (a separate migration: a new enum
-- value can be used only once the transaction that added it has committed).
ALTER TABLE shipping.shipments DROP CONSTRAINT shipments_booked_has_id;
ALTER TABLE shipping.shipments
    ADD CONSTRAINT shipments_booked_has_id
    CHECK ((status IN ('booked', 'cancelled')) = (shipment_id IS NOT NULL));
