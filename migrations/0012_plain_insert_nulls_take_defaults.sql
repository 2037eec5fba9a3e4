-- A plain INSERT into hubsync.outbox that writes NULL for occurred_at or properties takes what
-- hubsync.enqueue takes for them (now(), '{}'), instead of failing the producer's transaction
-- on the NOT NULL constraint. A BEFORE row trigger runs before those constraints are checked.
-- Rows enqueue writes never reach this trigger (see 0010), and enqueue already does the same.
CREATE OR REPLACE FUNCTION hubsync.outbox_skip_known() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = NEW.event_id)
       OR EXISTS (SELECT 1 FROM hubsync.outbox o WHERE o.event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    NEW.occurred_at := coalesce(NEW.occurred_at, now());
    NEW.properties := coalesce(NEW.properties, '{}'::jsonb);
    -- Once per transaction (hubsync.notified, undone with a rolled-back savepoint).
    IF current_setting('hubsync.notified', true) IS DISTINCT FROM 'on' THEN
        IF current_setting('hubsync.notify', true) IS DISTINCT FROM 'off'
           AND NOT pg_try_advisory_xact_lock(1752523379, (txid_current() % 64)::integer) THEN
            PERFORM pg_notify('hubsync', 'outbox');
        END IF;
        PERFORM set_config('hubsync.notified', 'on', true);
    END IF;
    RETURN NEW;
END
$$;
