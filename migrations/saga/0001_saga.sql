-- The orchestrator's state: one row per order, the state machine of services/order-saga/src/saga.rs.

CREATE TYPE saga.saga_phase AS ENUM
    ('running', 'confirming', 'cancelling', 'compensating', 'confirmed', 'cancelled');

CREATE TABLE saga.sagas (
    order_id      UUID        PRIMARY KEY,
    phase         saga_phase  NOT NULL,
    -- Steps asked for, in order (payment, stock, shipment): the first steps_taken of them.
    steps_taken   SMALLINT    NOT NULL CHECK (steps_taken BETWEEN 0 AND 3),
    -- Steps still to walk back, the last taken first: the first steps_to_undo of them.
    steps_to_undo SMALLINT    NOT NULL DEFAULT 0 CHECK (steps_to_undo BETWEEN 0 AND 3),
    -- The OrderPlaced the saga started on: what each step's command carries.
    placed        JSONB       NOT NULL,
    -- A saga timeout is data: it survives restarts, and each due saga is taken by one replica.
    deadline_at   TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX sagas_running_by_deadline ON saga.sagas (deadline_at) WHERE phase = 'running';
CREATE INDEX sagas_open ON saga.sagas (order_id) WHERE phase NOT IN ('confirmed', 'cancelled');
