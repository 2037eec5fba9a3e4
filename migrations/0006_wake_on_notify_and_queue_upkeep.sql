-- Idle workers wait on LISTEN hubsync instead of polling. An insert into the outbox notifies
-- once per statement; Postgres folds identical notifications of one transaction into one.
CREATE FUNCTION hubsync.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hubsync', 'outbox');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON hubsync.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION hubsync.notify_outbox();

-- A replay (next_retry_at set by an operator) wakes the workers too.
CREATE FUNCTION hubsync.notify_dlq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hubsync', 'dlq');
    RETURN NULL;
END
$$;
CREATE TRIGGER dlq_notify AFTER UPDATE OF next_retry_at ON hubsync.dlq
    FOR EACH STATEMENT EXECUTE FUNCTION hubsync.notify_dlq();

-- Queue tables churn: every row of the outbox is deleted soon after it is written, the ledger
-- is pruned in bulk, objects are rewritten by every fold. Vacuum them by row counts rather
-- than by a share of the table, so dead rows never pile up behind a large live table.
ALTER TABLE hubsync.outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
                               autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000,
                               autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000);
ALTER TABLE hubsync.ledger SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 10000,
                               autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE hubsync.objects SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 1000,
                                autovacuum_analyze_scale_factor = 0.05);

-- enqueue does its own no-op check in one statement (the ledger in its WHERE, waiting ids by
-- the unique index through ON CONFLICT) and notifies only when it queued something, so the
-- row trigger that serves plain INSERTs, and the statement trigger, stay out of its way: one
-- function call per event instead of three. The setting that tells them is set and cleared
-- around its one INSERT.
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
    PERFORM set_config('hubsync.in_enqueue', 'on', true);
    INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at, company_key)
    SELECT enqueue.event_id, enqueue.object_type, enqueue.object_key,
           coalesce(enqueue.properties, '{}'::jsonb), coalesce(enqueue.occurred_at, now()),
           enqueue.company_key
    WHERE NOT EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = enqueue.event_id)
    ON CONFLICT (event_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    PERFORM set_config('hubsync.in_enqueue', '', true);
    IF inserted > 0 AND current_setting('hubsync.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('hubsync', 'outbox');
    END IF;
    RETURN inserted > 0;
END
$$;

DROP TRIGGER outbox_skip_known ON hubsync.outbox;
CREATE TRIGGER outbox_skip_known BEFORE INSERT ON hubsync.outbox
    FOR EACH ROW WHEN (current_setting('hubsync.in_enqueue', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION hubsync.outbox_skip_known();
DROP TRIGGER outbox_notify ON hubsync.outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON hubsync.outbox
    FOR EACH STATEMENT WHEN (current_setting('hubsync.in_enqueue', true) IS DISTINCT FROM 'on'
                             AND current_setting('hubsync.notify', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION hubsync.notify_outbox();

-- A NOTIFY makes its transaction's commit wait for a lock that every notifying commit takes in
-- turn. At very high enqueue rates, a producer can do without it: SET hubsync.notify = 'off'
-- (for instance ALTER ROLE app_producer SET hubsync.notify = 'off') and run the workers with
-- worker.listen = false, which poll instead.
