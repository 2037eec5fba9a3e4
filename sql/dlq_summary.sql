-- What is failing and why: dead-letter rows by category, split into parked (needs a person)
-- and scheduled (will be retried automatically). Start here.
SELECT error_category,
       kind,
       count(*)                                   AS rows,
       count(*) FILTER (WHERE next_retry_at IS NULL) AS parked,
       count(*) FILTER (WHERE next_retry_at IS NOT NULL) AS scheduled,
       min(first_failed_at)                       AS oldest,
       max(last_failed_at)                        AS latest,
       (array_agg(error_message ORDER BY last_failed_at DESC))[1] AS latest_message
FROM hubsync.dlq
GROUP BY error_category, kind
ORDER BY rows DESC;
