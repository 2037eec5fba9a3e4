-- What each contact's association was made for, so that it is made again when the contact's
-- HubSpot id changes (deleted and re-created, merged) and the one to a previous company can be
-- removed; and a retry schedule for pairs HubSpot refuses, like the one objects have.
ALTER TABLE hubsync.objects
    ADD COLUMN associated_contact_id  text,
    ADD COLUMN associated_company_id  text,
    ADD COLUMN association_attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN association_next_at    timestamptz;
