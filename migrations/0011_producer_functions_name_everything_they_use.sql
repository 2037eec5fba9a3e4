-- The two producer functions run as the schema's owner (see 0003). Until now each also fixed
-- its search path (SET search_path = pg_catalog, pg_temp), so that a caller could not slip its
-- own functions, operators or types in. That setting is saved, changed and restored on every
-- call, and every call then rebuilds the search path: about 6 µs of each enqueue, a fifth of
-- what enqueue costs over a plain INSERT.
--
-- The same protection now comes from the bodies themselves: every function, operator and type
-- they use is named with its schema (pg_catalog.now(), OPERATOR(pg_catalog.=),
-- pg_catalog.jsonb), tables with hubsync., and nothing resolves through the caller's search
-- path. Constructs that would (IS DISTINCT FROM looks up "=" by search path) are written
-- without it. Keywords (coalesce, EXISTS, integer, boolean) do not depend on it.
--
-- Rule for every later change of these two bodies: name every function, operator and type with
-- its schema. tests/it/grants.rs calls both as a producer whose search path puts a schema of
-- its own, full of look-alike functions, operators and types, before pg_catalog.
CREATE OR REPLACE FUNCTION hubsync.outbox_skip_known() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM hubsync.ledger l
               WHERE l.event_id OPERATOR(pg_catalog.=) NEW.event_id)
       OR EXISTS (SELECT 1 FROM hubsync.outbox o
                  WHERE o.event_id OPERATOR(pg_catalog.=) NEW.event_id) THEN
        RETURN NULL;
    END IF;
    -- Once per transaction (hubsync.notified, undone with a rolled-back savepoint).
    IF coalesce(pg_catalog.current_setting('hubsync.notified', true), '')
           OPERATOR(pg_catalog.<>) 'on' THEN
        IF coalesce(pg_catalog.current_setting('hubsync.notify', true), '')
               OPERATOR(pg_catalog.<>) 'off'
           AND NOT pg_catalog.pg_try_advisory_xact_lock(
                   1752523379,
                   (pg_catalog.txid_current() OPERATOR(pg_catalog.%) 64)::integer) THEN
            PERFORM pg_catalog.pg_notify('hubsync', 'outbox');
        END IF;
        PERFORM pg_catalog.set_config('hubsync.notified', 'on', true);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION hubsync.enqueue(
    event_id    uuid,
    object_type text,
    object_key  text,
    properties  jsonb,
    occurred_at timestamptz DEFAULT pg_catalog.now(),
    company_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at,
                                company_key, via_enqueue)
    SELECT enqueue.event_id, enqueue.object_type, enqueue.object_key,
           coalesce(enqueue.properties, '{}'::pg_catalog.jsonb),
           coalesce(enqueue.occurred_at, pg_catalog.now()),
           enqueue.company_key, true
    WHERE NOT EXISTS (SELECT 1 FROM hubsync.ledger l
                      WHERE l.event_id OPERATOR(pg_catalog.=) enqueue.event_id)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF coalesce(pg_catalog.current_setting('hubsync.notify', true), '')
           OPERATOR(pg_catalog.<>) 'off'
       AND NOT pg_catalog.pg_try_advisory_xact_lock(
               1752523379,
               (pg_catalog.txid_current() OPERATOR(pg_catalog.%) 64)::integer) THEN
        PERFORM pg_catalog.pg_notify('hubsync', 'outbox');
    END IF;
    RETURN true;
END
$$;
