-- A booked shipment cancelled because its order was, and an order cancelled before shipping
-- booked anything (so a late StockReserved never books it).
ALTER TYPE shipping.shipment_status ADD VALUE 'cancelled';
ALTER TYPE shipping.shipment_status ADD VALUE 'voided';
