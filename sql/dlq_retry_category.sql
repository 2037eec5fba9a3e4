-- Replay every row of one category (-v category=...), e.g. after adding a missing enumeration
-- option or property that caused hubspot_validation or unknown_property failures.
UPDATE hubsync.dlq SET next_retry_at = now() WHERE error_category = :'category'
RETURNING id, kind, error_category, object_key;
