-- Give up on one row (-v id=...): the event or object state it holds will not be sent.
-- Use it for data that is wrong at the source and will never be valid.
DELETE FROM hubsync.dlq WHERE id = :id
RETURNING id, kind, error_category, object_key;
