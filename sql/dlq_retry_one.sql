-- Replay one row (-v id=...) after fixing its cause (config, HubSpot property, data).
-- A running worker picks it up within seconds: an event is validated and folded again, an
-- object is synced again with its current state. If it fails again it comes back here.
UPDATE hubsync.dlq SET next_retry_at = now() WHERE id = :id
RETURNING id, kind, error_category, object_key;
