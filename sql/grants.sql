-- Least privilege for the roles around hubsync. Run it as the owner of schema hubsync (the role
-- that runs `hubsync migrate`) after every `hubsync migrate`; it is safe to repeat. Each role is
-- optional and must already exist:
--
--   psql "$DATABASE_URL" -v producer=app_producer -v worker=hubsync_worker \
--        -v operator=hubsync_operator -f sql/grants.sql
--
-- producer: the application. Calls hubsync.enqueue or inserts into hubsync.outbox, and nothing
--           else: it cannot read or delete outbox rows, nor read the objects, ledger or DLQ.
-- worker:   `hubsync run`, `status` and `dlq`. Reads and writes hubsync's tables, reads the
--           migration history; owns nothing and cannot migrate.
-- operator: a person on call: `hubsync status` and `hubsync dlq` (list, show, retry, discard,
--           purge), or the same files of sql/ with psql. Cannot read the events waiting in the
--           outbox nor the objects' values.
\set ON_ERROR_STOP on

\if :{?producer}
\elif :{?worker}
\elif :{?operator}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'no role given: pass -v producer=ROLE, -v worker=ROLE and/or -v operator=ROLE';
END $$;
\endif

BEGIN;

DO $$ BEGIN
    IF to_regclass('hubsync.schema_migrations') IS NULL THEN
        RAISE EXCEPTION 'schema hubsync is missing or was made by an older hubsync: run `hubsync migrate` first';
    END IF;
END $$;

\if :{?producer}
GRANT USAGE ON SCHEMA hubsync TO :"producer";
GRANT EXECUTE ON FUNCTION hubsync.enqueue(uuid, text, text, jsonb, timestamptz, text) TO :"producer";
-- hubsync.new_event_id() needs no grant: it reads nothing and runs with the caller's rights, so
-- like any PostgreSQL function it is open to every role that may use the schema.
-- The columns a producer writes; id (an identity column: no right on a sequence needed) and
-- enqueued_at are always their defaults.
GRANT INSERT (event_id, object_type, object_key, properties, occurred_at, company_key)
    ON hubsync.outbox TO :"producer";
\endif

\if :{?worker}
GRANT USAGE ON SCHEMA hubsync TO :"worker";
GRANT SELECT ON hubsync.schema_migrations TO :"worker";
-- Ingest claims outbox rows with SELECT ... FOR UPDATE (which needs UPDATE) and deletes them.
GRANT SELECT, UPDATE, DELETE ON hubsync.outbox TO :"worker";
GRANT SELECT, INSERT, UPDATE, DELETE ON hubsync.ledger TO :"worker";
GRANT SELECT, INSERT, UPDATE ON hubsync.objects TO :"worker";
GRANT SELECT, INSERT, UPDATE, DELETE ON hubsync.dlq TO :"worker";
GRANT USAGE ON SEQUENCE hubsync.dlq_id_seq TO :"worker";
GRANT SELECT, INSERT, UPDATE ON hubsync.limiter TO :"worker";
-- Rolling deploys: each worker registers the declarations it runs with, and a heartbeat.
GRANT SELECT, INSERT ON hubsync.configs TO :"worker";
GRANT USAGE ON SEQUENCE hubsync.config_generation TO :"worker";
GRANT SELECT, INSERT, UPDATE, DELETE ON hubsync.workers TO :"worker";
\endif

\if :{?operator}
GRANT USAGE ON SCHEMA hubsync TO :"operator";
GRANT SELECT ON hubsync.schema_migrations TO :"operator";
-- Read, replay (next_retry_at), discard and purge dead-letter rows.
GRANT SELECT, DELETE ON hubsync.dlq TO :"operator";
GRANT UPDATE (next_retry_at) ON hubsync.dlq TO :"operator";
-- `hubsync status`: counts and ages (the drain rate from when events were processed, the
-- contacts whose company association is not made yet), not the events or the objects' state.
GRANT SELECT (enqueued_at) ON hubsync.outbox TO :"operator";
GRANT SELECT (processed_at) ON hubsync.ledger TO :"operator";
GRANT SELECT (dirty, attempts, object_type, company_key, associated_company_key,
              association_next_at) ON hubsync.objects TO :"operator";
GRANT SELECT ON hubsync.limiter TO :"operator";
GRANT SELECT ON hubsync.configs, hubsync.workers TO :"operator";
\endif

COMMIT;
