-- hubsync.enqueue makes the known-id check in its own INSERT, so the outbox's row trigger, which
-- gives a plain INSERT the same check, has to stand aside for it. It used to learn that from a
-- setting enqueue set and cleared around its INSERT, and the trigger's condition read it: two
-- function calls and a condition built for every statement, about 13 µs of each enqueue.
-- enqueue now marks its rows instead. via_enqueue is false unless written, and a producer role
-- cannot write it (sql/grants.sql grants INSERT on the six producer columns only), so every
-- plain INSERT still meets the trigger. A role that can write it anyway and sets it skips only
-- the early no-op: a waiting id then fails on the unique index, and ingest drops an id it
-- already processed. Adding a column with a constant default rewrites nothing.
ALTER TABLE hubsync.outbox ADD COLUMN via_enqueue boolean NOT NULL DEFAULT false;

DROP TRIGGER outbox_skip_known ON hubsync.outbox;
CREATE TRIGGER outbox_skip_known BEFORE INSERT ON hubsync.outbox
    FOR EACH ROW WHEN (NOT NEW.via_enqueue)
    EXECUTE FUNCTION hubsync.outbox_skip_known();

-- A NOTIFY makes its transaction's commit take a lock that every notifying commit in the
-- database takes in turn, across its flush to disk: with eight producers enqueueing at once,
-- that halved their throughput. A notification only helps a worker that waits for one, so a
-- producer now notifies only while some worker waits.
--
-- A waiting worker holds, on a connection of its own, a shared advisory lock on each of 64
-- slots (class 1752523379, "hubs" in ASCII; slots 0 to 63). A producer tries an exclusive lock,
-- for its transaction, on one slot (its transaction id modulo 64):
-- - the try fails while a worker holds the slot or waits for it: the producer notifies;
-- - the try succeeds when no worker waits: no notification, and the slot stays locked until
--   the producer's commit. A worker that goes idle takes every slot, so it first waits for
--   those producers to end, then looks at the outbox once more: it finds their rows.
-- Two producers on the same slot at once: the second notifies, which is only a notification
-- too many. With hubsync.notify = 'off' nothing is tried and nothing notified, as before.
-- The slot's lock is the same lock for the trigger and for enqueue (taken again, it is held
-- once), and the worker's side is in src/db/wake.rs.
CREATE OR REPLACE FUNCTION hubsync.outbox_skip_known() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = NEW.event_id)
       OR EXISTS (SELECT 1 FROM hubsync.outbox o WHERE o.event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
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

CREATE OR REPLACE FUNCTION hubsync.enqueue(
    event_id    uuid,
    object_type text,
    object_key  text,
    properties  jsonb,
    occurred_at timestamptz DEFAULT now(),
    company_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    inserted integer;
BEGIN
    INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at,
                                company_key, via_enqueue)
    SELECT enqueue.event_id, enqueue.object_type, enqueue.object_key,
           coalesce(enqueue.properties, '{}'::jsonb), coalesce(enqueue.occurred_at, now()),
           enqueue.company_key, true
    WHERE NOT EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = enqueue.event_id)
    ON CONFLICT (event_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted > 0 AND current_setting('hubsync.notify', true) IS DISTINCT FROM 'off'
       AND NOT pg_try_advisory_xact_lock(1752523379, (txid_current() % 64)::integer) THEN
        PERFORM pg_notify('hubsync', 'outbox');
    END IF;
    RETURN inserted > 0;
END
$$;
