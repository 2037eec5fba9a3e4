-- Empty the dead-letter table. Nothing in it will be sent; use only when that is intended.
DELETE FROM hubsync.dlq
RETURNING id, kind, error_category, object_key;
