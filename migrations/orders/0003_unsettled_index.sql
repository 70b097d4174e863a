-- Admission control counts the orders accepted but not yet settled on every POST /orders;
-- this partial index holds only those, so the count stays as small as the backlog.
CREATE INDEX orders_unsettled ON orders.orders (id)
    WHERE status IN ('pending', 'paid', 'stock_reserved')
       OR (status = 'cancelled'
           AND ((cancelled_by IN ('StockReservationFailed', 'ShipmentFailed') AND NOT refund_seen)
                OR (cancelled_by = 'ShipmentFailed' AND NOT release_seen)));
