-- The most recent dead-letter rows, optionally of one category (-v category=...; empty = all).
-- Use it to see which contacts or companies are affected and the reason for each.
\if :{?category} \else \set category '' \endif
\if :{?limit} \else \set limit 50 \endif
SELECT id, kind, error_category, object_type, object_key, attempts,
       next_retry_at, last_failed_at, error_message
FROM hubsync.dlq
WHERE (:'category' = '' OR error_category = :'category')
ORDER BY last_failed_at DESC, id DESC
LIMIT :limit;
