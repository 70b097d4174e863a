-- A reservation's status as an enum type: the database cannot hold a status the code does
-- not know, and the code binds the Rust enum directly.
ALTER TABLE inventory.reservations DROP CONSTRAINT reservations_status_check;
CREATE TYPE inventory.reservation_status AS ENUM ('reserved', 'failed', 'released');
ALTER TABLE inventory.reservations
    ALTER COLUMN status TYPE inventory.reservation_status
    USING status::inventory.reservation_status;
