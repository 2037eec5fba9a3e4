-- The producer interface runs with the rights of the schema's owner, so that a producer role
-- needs no privilege beyond calling it or inserting (see sql/grants.sql): the trigger that makes
-- a plain INSERT of a known event id a no-op reads the ledger and the outbox, and enqueue's
-- ON CONFLICT (event_id) needs SELECT on outbox.event_id; a producer may do neither.
-- Every name in them is schema-qualified and their search path is fixed, so a caller cannot
-- slip its own objects in.

CREATE OR REPLACE FUNCTION hubsync.outbox_skip_known() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = NEW.event_id)
       OR EXISTS (SELECT 1 FROM hubsync.outbox o WHERE o.event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION hubsync.enqueue(
    event_id    uuid,
    object_type text,
    object_key  text,
    properties  jsonb,
    occurred_at timestamptz DEFAULT now(),
    company_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Functions that run as their owner are called by the roles they are granted to, not by
-- everyone. A role that could already insert into the outbox keeps calling enqueue.
REVOKE EXECUTE ON FUNCTION hubsync.outbox_skip_known() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hubsync.enqueue(uuid, text, text, jsonb, timestamptz, text) FROM PUBLIC;
DO $$
DECLARE
    role_oid oid;
BEGIN
    FOR role_oid IN
        SELECT DISTINCT a.grantee
        FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
        WHERE c.oid = 'hubsync.outbox'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> c.relowner
    LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION hubsync.enqueue(uuid, text, text, jsonb, timestamptz, text) TO %s',
            CASE WHEN role_oid = 0 THEN 'PUBLIC' ELSE role_oid::regrole::text END);
    END LOOP;
END
$$;
