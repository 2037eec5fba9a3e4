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
