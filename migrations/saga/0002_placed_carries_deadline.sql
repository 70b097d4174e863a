-- OrderPlaced version 3 carries the order's deadline; a saga started on an older one keeps the
-- deadline it computed, now written into the stored event too, so every row reads as version 3.
UPDATE saga.sagas
SET placed = placed || jsonb_build_object('deadline_at', to_jsonb(deadline_at))
WHERE NOT placed ? 'deadline_at';
