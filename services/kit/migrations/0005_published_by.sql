-- The broker user that published a message, as the broker vouched for it (the AMQP `user-id`
-- property, which RabbitMQ checks against the publishing connection's user): who published
-- each handled event, and what a parked message keeps until it is applied.
ALTER TABLE inbox ADD COLUMN published_by text;
ALTER TABLE parked ADD COLUMN published_by text;
