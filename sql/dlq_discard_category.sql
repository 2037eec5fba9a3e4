-- Give up on every row of one category (-v category=...), e.g. test traffic with invalid keys.
DELETE FROM hubsync.dlq WHERE error_category = :'category'
RETURNING id, kind, error_category, object_key;
