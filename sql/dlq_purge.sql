-- Remove parked rows (next_retry_at is NULL: nothing will replay them) whose last failure is
-- older than -v days=N, once nobody needs them any more. Rows scheduled for a replay are kept.
-- hubsync never removes dead-letter rows by itself; run this by hand or from cron.
DELETE FROM hubsync.dlq
WHERE next_retry_at IS NULL AND last_failed_at < now() - interval '1 day' * :days
RETURNING id, kind, error_category, object_key, last_failed_at;
