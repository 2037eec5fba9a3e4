-- hubsync.enqueue's properties may be left out, as occurred_at and company_key may: an event
-- that only associates a contact with its company needs none. Leaving it out gives '{}', as
-- NULL already did. The body is the one of 0010, unchanged; replacing the function keeps its
-- grants.
CREATE OR REPLACE FUNCTION hubsync.enqueue(
    event_id    uuid,
    object_type text,
    object_key  text,
    properties  jsonb DEFAULT '{}'::jsonb,
    occurred_at timestamptz DEFAULT now(),
    company_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    inserted integer;
BEGIN
    INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at,
                                company_key, via_enqueue)
    SELECT enqueue.event_id, enqueue.object_type, enqueue.object_key,
           coalesce(enqueue.properties, '{}'::jsonb), coalesce(enqueue.occurred_at, now()),
           enqueue.company_key, true
    WHERE NOT EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = enqueue.event_id)
    ON CONFLICT (event_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted > 0 AND current_setting('hubsync.notify', true) IS DISTINCT FROM 'off'
       AND NOT pg_try_advisory_xact_lock(1752523379, (txid_current() % 64)::integer) THEN
        PERFORM pg_notify('hubsync', 'outbox');
    END IF;
    RETURN inserted > 0;
END
$$;
