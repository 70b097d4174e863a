-- Retention prunes sent outbox rows and old inbox ids in small batches, oldest first; these
-- indexes let each batch find its rows without scanning the table.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX inbox_received ON inbox (received_at);
