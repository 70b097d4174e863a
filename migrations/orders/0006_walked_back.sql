-- In the orchestrated style orders hears no participant's answer: the saga walks the steps
-- back and then says so (SettleOrder), and a cancelled order with this set is settled.
ALTER TABLE orders.orders ADD COLUMN walked_back BOOLEAN NOT NULL DEFAULT false;
