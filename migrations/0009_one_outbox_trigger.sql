-- The outbox had two triggers: a row trigger that skips known ids, and a statement trigger
-- that notified the workers after every INSERT, even one that kept no row (all its ids known).
-- The row trigger now notifies itself, for the first row it keeps in a transaction, and the
-- statement trigger is gone. The setting hubsync.notified (local to the transaction, undone
-- with a rolled-back savepoint like the notification itself) spares the other rows of a bulk
-- INSERT the cost of a notification Postgres would fold into the first anyway.
CREATE OR REPLACE FUNCTION hubsync.outbox_skip_known() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = NEW.event_id)
       OR EXISTS (SELECT 1 FROM hubsync.outbox o WHERE o.event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    IF current_setting('hubsync.notified', true) IS DISTINCT FROM 'on'
       AND current_setting('hubsync.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('hubsync', 'outbox');
        PERFORM set_config('hubsync.notified', 'on', true);
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER outbox_notify ON hubsync.outbox;
DROP FUNCTION hubsync.notify_outbox();
