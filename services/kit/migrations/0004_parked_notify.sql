-- A message handled for an order that has parked messages tells every instance of the service
-- (NOTIFY on channel `<schema>_parked`, delivered at commit), so the instance that parked them
-- tries them at once instead of on its sweep. Duplicates (ON CONFLICT updates) do not fire it.
--
-- The function names its schema's `parked` table outright (written in when the migration runs
-- in that schema), so an insert from a connection with another search_path still finds it,
-- without the per-call cost of a function-level `SET search_path`.
DO $migration$
BEGIN
    EXECUTE format($function$
        CREATE FUNCTION notify_parked_order() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            IF EXISTS (SELECT 1 FROM %1$I.parked WHERE correlation_id = NEW.correlation_id) THEN
                PERFORM pg_notify(%2$L, NEW.correlation_id::text);
            END IF;
            RETURN NULL;
        END
        $body$
    $function$, current_schema(), current_schema() || '_parked');
END
$migration$;

CREATE TRIGGER inbox_frees_parked AFTER INSERT ON inbox
    FOR EACH ROW EXECUTE FUNCTION notify_parked_order();
