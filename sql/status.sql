-- Pipeline health: events waiting in the outbox and how old the oldest is, events processed in
-- the last minute (the drain rate), objects waiting to be synced or backing off after failures,
-- contacts waiting for their company association, dead-letter rows, the shared rate limiter:
-- its pause, the daily budget (hubspot.daily_budget), what is left of it and when the portal's
-- day resets, the limit HubSpot's headers state, and the workers running by config generation.
SELECT
  (SELECT count(*) FROM hubsync.outbox)                                    AS outbox_backlog,
  (SELECT extract(epoch FROM now() - min(enqueued_at)) FROM hubsync.outbox) AS oldest_event_age_s,
  (SELECT count(*) FROM hubsync.ledger
     WHERE processed_at > now() - interval '1 minute')                     AS processed_last_minute,
  (SELECT count(*) FROM hubsync.objects WHERE dirty)                       AS objects_to_sync,
  (SELECT count(*) FROM hubsync.objects WHERE dirty AND attempts > 0)      AS objects_backing_off,
  -- Contacts whose association with their company is not made yet (parked ones are in the DLQ).
  (SELECT count(*) FROM hubsync.objects
     WHERE object_type = 'contact' AND company_key IS NOT NULL
       AND associated_company_key IS DISTINCT FROM company_key
       AND association_next_at IS DISTINCT FROM 'infinity')                 AS associations_waiting,
  (SELECT count(*) FROM hubsync.dlq)                                       AS dlq_rows,
  (SELECT count(*) FROM hubsync.dlq WHERE next_retry_at IS NULL)           AS dlq_parked,
  (SELECT count(*) FROM hubsync.limiter l, unnest(l.slots) AS sent
     WHERE l.name = 'hubspot' AND sent > now() - interval '10 seconds')    AS requests_last_10s,
  (SELECT paused_until FROM hubsync.limiter WHERE name = 'hubspot')        AS paused_until,
  (SELECT pause_reason FROM hubsync.limiter WHERE name = 'hubspot')        AS pause_reason,
  coalesce((SELECT paused_until > now() FROM hubsync.limiter
             WHERE name = 'hubspot'), false)                               AS paused_now,
  -- A halt (HubSpot refuses the credentials, the endpoint or the company key property) is a
  -- pause until the next probe, whose reason starts with "halted:".
  coalesce((SELECT paused_until > now() AND pause_reason LIKE 'halted:%' FROM hubsync.limiter
             WHERE name = 'hubspot'), false)                               AS halted_now,
  coalesce((SELECT greatest(extract(epoch FROM paused_until - now()), 0)::float8
              FROM hubsync.limiter WHERE name = 'hubspot'), 0)             AS pause_left_s,
  (SELECT daily_remaining FROM hubsync.limiter WHERE name = 'hubspot')     AS daily_remaining,
  -- Rolling deploys: the generation that takes work, and the live workers by generation.
  (SELECT max(c.generation) FROM hubsync.workers w JOIN hubsync.configs c USING (fingerprint)
    WHERE w.seen_at > now() - interval '30 seconds')                       AS generation_in_use,
  (SELECT string_agg(format('generation %s, %s worker(s)%s', g.generation, g.workers,
                            CASE WHEN g.newest THEN '' ELSE ' (standing aside)' END), '; '
                     ORDER BY g.generation DESC)
     FROM (SELECT c.generation, count(*) AS workers,
                  c.generation = max(c.generation) OVER () AS newest
             FROM hubsync.workers w JOIN hubsync.configs c USING (fingerprint)
            WHERE w.seen_at > now() - interval '30 seconds'
            GROUP BY c.generation) g)                                      AS workers_by_generation,
  (SELECT daily_budget FROM hubsync.limiter WHERE name = 'hubspot')        AS daily_budget,
  (SELECT CASE WHEN day_ends > now() THEN day_used ELSE 0 END
     FROM hubsync.limiter WHERE name = 'hubspot')                          AS used_today,
  -- NULL without a budget (greatest() would turn the NULL difference into 0).
  (SELECT CASE WHEN daily_budget IS NOT NULL
               THEN greatest(daily_budget - CASE WHEN day_ends > now() THEN day_used ELSE 0 END,
                             0) END
     FROM hubsync.limiter WHERE name = 'hubspot')                          AS budget_left,
  (SELECT day_ends FROM hubsync.limiter WHERE name = 'hubspot')            AS day_resets_at,
  (SELECT coalesce(learned_max::text || ' per ' || learned_interval_ms || ' ms', 'not seen yet')
     FROM hubsync.limiter WHERE name = 'hubspot')                          AS hubspot_rate_limit;
