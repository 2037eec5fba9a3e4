-- The producer interface runs with the rights of the schema's owner, so that a producer role
-- needs no privilege beyond calling it or inserting (see sql/grants.sql): the trigger that makes
-- a plain INSERT of a known event id a no-op reads the ledger and the outbox, and enqueue's
-- ON CONFLICT (event_id) needs SELECT on outbox.event_id; a producer may do neither.
-- Every name in their bodies is schema-qualified and their search path is fixed, so a caller
-- cannot slip its own objects in. A later CREATE OR REPLACE of either must repeat
-- SECURITY DEFINER and the SET clause, or it drops them.
ALTER FUNCTION hubsync.outbox_skip_known()
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION hubsync.enqueue(uuid, text, text, jsonb, timestamptz, text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

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
