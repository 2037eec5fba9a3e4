-- Pipeline health: events waiting in the outbox and how old the oldest is, objects waiting to
-- be synced or backing off after failures, dead-letter rows, and the shared rate limiter: its
-- pause, the daily budget (hubspot.daily_budget), what is left of it and when the portal's day
-- resets, and the limit HubSpot's headers state.
SELECT
  (SELECT count(*) FROM hubsync.outbox)                                    AS outbox_backlog,
  (SELECT extract(epoch FROM now() - min(enqueued_at)) FROM hubsync.outbox) AS oldest_event_age_s,
  (SELECT count(*) FROM hubsync.objects WHERE dirty)                       AS objects_to_sync,
  (SELECT count(*) FROM hubsync.objects WHERE dirty AND attempts > 0)      AS objects_backing_off,
  (SELECT count(*) FROM hubsync.dlq)                                       AS dlq_rows,
  (SELECT count(*) FROM hubsync.dlq WHERE next_retry_at IS NULL)           AS dlq_parked,
  (SELECT count(*) FROM hubsync.limiter l, unnest(l.slots) AS sent
     WHERE l.name = 'hubspot' AND sent > now() - interval '10 seconds')    AS requests_last_10s,
  (SELECT paused_until FROM hubsync.limiter WHERE name = 'hubspot')        AS paused_until,
  (SELECT pause_reason FROM hubsync.limiter WHERE name = 'hubspot')        AS pause_reason,
  (SELECT daily_remaining FROM hubsync.limiter WHERE name = 'hubspot')     AS daily_remaining,
  (SELECT daily_budget FROM hubsync.limiter WHERE name = 'hubspot')        AS daily_budget,
  (SELECT CASE WHEN day_ends > now() THEN day_used ELSE 0 END
     FROM hubsync.limiter WHERE name = 'hubspot')                          AS used_today,
  (SELECT greatest(daily_budget - CASE WHEN day_ends > now() THEN day_used ELSE 0 END, 0)
     FROM hubsync.limiter WHERE name = 'hubspot')                          AS budget_left,
  (SELECT day_ends FROM hubsync.limiter WHERE name = 'hubspot')            AS day_resets_at,
  (SELECT coalesce(learned_max::text || ' per ' || learned_interval_ms || ' ms', 'not seen yet')
     FROM hubsync.limiter WHERE name = 'hubspot')                          AS hubspot_rate_limit;
