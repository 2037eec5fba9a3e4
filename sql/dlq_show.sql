-- Everything about one dead-letter row (-v id=...): the payload that failed, the full HubSpot
-- error, attempts and schedule. Use it before deciding to retry or discard.
SELECT id, kind, event_id, object_type, object_key, error_category, error_message,
       attempts, first_failed_at, last_failed_at, next_retry_at,
       jsonb_pretty(payload) AS payload, jsonb_pretty(error) AS error
FROM hubsync.dlq
WHERE id = :id;
