-- The hubsync schema: the producer's outbox, the delivered-event ledger, the per-object merged
-- state, the dead-letter table operators query, and the limiter shared by every worker.

CREATE SCHEMA IF NOT EXISTS hubsync;

-- Producers write here, in the same transaction as their own business write.
-- Rows leave the table once a worker has folded them into hubsync.objects.
CREATE TABLE hubsync.outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL,
    object_type text        NOT NULL,
    object_key  text        NOT NULL,
    properties  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    company_key text,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX outbox_event_id ON hubsync.outbox (event_id);

-- Every event id a worker has processed (folded or dead-lettered), kept for the retention
-- period so that a re-enqueued event is a no-op.
CREATE TABLE hubsync.ledger (
    event_id     uuid        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_processed_at ON hubsync.ledger (processed_at);

-- A plain INSERT of an event id that is already waiting or already processed is a no-op,
-- exactly like hubsync.enqueue.
CREATE FUNCTION hubsync.outbox_skip_known() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = NEW.event_id)
       OR EXISTS (SELECT 1 FROM hubsync.outbox o WHERE o.event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER outbox_skip_known BEFORE INSERT ON hubsync.outbox
    FOR EACH ROW EXECUTE FUNCTION hubsync.outbox_skip_known();

-- The producer interface. Returns true when the event was enqueued, false when it was a no-op.
CREATE FUNCTION hubsync.enqueue(
    event_id    uuid,
    object_type text,
    object_key  text,
    properties  jsonb,
    occurred_at timestamptz DEFAULT now(),
    company_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    inserted integer;
BEGIN
    INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at, company_key)
    VALUES (enqueue.event_id, enqueue.object_type, enqueue.object_key,
            coalesce(enqueue.properties, '{}'::jsonb), coalesce(enqueue.occurred_at, now()),
            enqueue.company_key)
    ON CONFLICT (event_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted > 0;
END
$$;

-- One row per HubSpot object: the merged state of every property (value, occurred_at, seq),
-- a version bumped on every change, and the sync lease.
CREATE TABLE hubsync.objects (
    object_type      text        NOT NULL,
    object_key       text        NOT NULL,
    state            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    company_key      text,
    hubspot_id       text,
    associated_company_key text,
    version          bigint      NOT NULL DEFAULT 0,
    synced_version   bigint      NOT NULL DEFAULT 0,
    dirty            boolean     NOT NULL DEFAULT false,
    dirty_since      timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    leased_until     timestamptz,
    lease_token      uuid,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    synced_at        timestamptz,
    PRIMARY KEY (object_type, object_key)
) WITH (fillfactor = 80);
-- Sync takes dirty objects in the order they became dirty (fair under a storm: an object that
-- keeps changing keeps its place). Free space per page and no index column that changes while
-- an object stays dirty: folding more events into it is a HOT update (no index writes).
CREATE INDEX objects_dirty ON hubsync.objects (object_type, next_attempt_at NULLS FIRST, dirty_since)
    WHERE dirty;

-- Failed events (kind 'event', refused at ingest) and failed objects (kind 'object', refused or
-- lost by HubSpot). next_retry_at NULL means parked: a person has to look.
CREATE TABLE hubsync.dlq (
    id              bigserial   PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('event', 'object')),
    event_id        uuid,
    object_type     text        NOT NULL,
    object_key      text        NOT NULL,
    payload         jsonb       NOT NULL,
    error_category  text        NOT NULL,
    error_message   text        NOT NULL,
    error           jsonb,
    attempts        integer     NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    next_retry_at   timestamptz
);
CREATE UNIQUE INDEX dlq_event ON hubsync.dlq (event_id) WHERE kind = 'event';
CREATE UNIQUE INDEX dlq_object ON hubsync.dlq (object_type, object_key) WHERE kind = 'object';
CREATE INDEX dlq_due ON hubsync.dlq (next_retry_at) WHERE next_retry_at IS NOT NULL;
CREATE INDEX dlq_category ON hubsync.dlq (error_category);

-- The rate limiter shared by every worker: the send times of the last N requests, and a pause
-- (429, bad credentials) that holds every worker back.
CREATE TABLE hubsync.limiter (
    name            text        PRIMARY KEY,
    slots           timestamptz[] NOT NULL DEFAULT '{}',
    paused_until    timestamptz,
    pause_reason    text,
    daily_limit     bigint,
    daily_remaining bigint,
    observed_at     timestamptz
);
