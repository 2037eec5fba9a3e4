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
    IF inserted > 0 AND current_setting('hubsync.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('hubsync', 'outbox');
    END IF;
    RETURN inserted > 0;
END
$$;
