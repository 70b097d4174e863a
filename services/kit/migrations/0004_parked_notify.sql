-- A message handled for an order that has parked messages tells every instance of the service
-- (NOTIFY on channel `<schema>_parked`, delivered at commit), so the instance that parked them
-- tries them at once instead of on its sweep. Duplicates (ON CONFLICT updates) do not fire it.
-- `SET search_path FROM CURRENT` pins the function to this schema (the migration runs in it), so
-- an insert from a connection with another search_path (an operator's) still finds `parked`.
CREATE FUNCTION notify_parked_order() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM parked WHERE correlation_id = NEW.correlation_id) THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_parked', NEW.correlation_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER inbox_frees_parked AFTER INSERT ON inbox
    FOR EACH ROW EXECUTE FUNCTION notify_parked_order();
