-- Replay everything in the dead-letter table, e.g. after a HubSpot outage long enough to park
-- objects as hubspot_unavailable. Rows that fail again come back with their new reason.
UPDATE hubsync.dlq SET next_retry_at = now()
RETURNING id, kind, error_category, object_key;
