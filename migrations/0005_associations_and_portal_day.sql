-- What each contact's association was made for, so that it is made again when the contact's
-- HubSpot id changes (deleted and re-created, merged) and the one to a previous company can be
-- removed; and a retry schedule for pairs HubSpot refuses, like the one objects have.
ALTER TABLE hubsync.objects
    ADD COLUMN associated_contact_id  text,
    ADD COLUMN associated_company_id  text,
    ADD COLUMN association_attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN association_next_at    timestamptz;

-- Requests taken in the portal's current day (it ends at `day_ends`, the portal's midnight), so
-- that `hubspot.daily_budget` caps what hubsync spends and `status` shows it; and the limit
-- learned from HubSpot's X-HubSpot-RateLimit-Max / -Interval-Milliseconds headers.
ALTER TABLE hubsync.limiter
    ADD COLUMN day_used     bigint NOT NULL DEFAULT 0,
    ADD COLUMN day_ends     timestamptz,
    ADD COLUMN daily_budget bigint,
    ADD COLUMN learned_max  integer,
    ADD COLUMN learned_interval_ms integer;
