-- Catching up from the shop's history (REPLAY_FROM): one row per replay asked for, with the
-- history's last offset when it began (where it ends) and how far it got (the stream keeps no
-- reader's position). A finished replay is not repeated.
CREATE TABLE replay (
    requested   text PRIMARY KEY,
    -- The first offset not yet read; NULL: none read yet (start where `requested` says).
    next_offset bigint,
    -- The history's last offset when the replay began; NULL: the history was empty.
    until_offset bigint,
    -- History events read and handled through the service's routes (applied, absorbed or
    -- parked), and read but not for this service (another's subscription, or older than the
    -- inbox remembers).
    handled     bigint      NOT NULL DEFAULT 0,
    skipped     bigint      NOT NULL DEFAULT 0,
    began_at    timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
