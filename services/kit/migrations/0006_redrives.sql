-- Every re-drive of this service's dead letters: when, by whom, which selection (all, one
-- message, one cause) and which messages went back to the work queue.
CREATE TABLE redrives (
    id bigserial PRIMARY KEY,
    redriven_at timestamptz NOT NULL DEFAULT now(),
    redriven_by text NOT NULL,
    selection text NOT NULL,
    message_ids uuid[] NOT NULL,
    left_too_old integer NOT NULL
);
