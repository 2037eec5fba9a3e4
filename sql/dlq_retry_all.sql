-- Replay everything in the dead-letter table, e.g. after a long HubSpot outage parked objects
-- as retries_exhausted. Rows that fail again come back with their new reason.
UPDATE hubsync.dlq SET next_retry_at = now()
RETURNING id, kind, error_category, object_key;
