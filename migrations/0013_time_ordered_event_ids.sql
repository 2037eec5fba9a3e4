-- hubsync.new_event_id(): a fresh event id whose first 48 bits are the time in milliseconds
-- (the layout of a version 7 UUID; the other bits random). The ledger remembers every processed
-- id in a B-tree keyed by the id. Random ids land on any page of that index, and the first
-- change to a page after each checkpoint writes the whole page to the WAL: with a ledger of a
-- few million ids, that is several kilobytes per event. Ids that grow with time land at the
-- index's end, on a handful of pages. Producers on PostgreSQL 18 can use uuidv7() instead, and
-- any language's UUIDv7 does the same; an id derived from the application's own record stays
-- the better idempotency key where it exists.
--
-- Plain SQL with every name given its schema: it runs with the caller's rights and reads
-- nothing, so a caller's search path cannot change what it does.
CREATE FUNCTION hubsync.new_event_id(at timestamptz DEFAULT pg_catalog.clock_timestamp())
RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
AS $$
    SELECT pg_catalog.encode(
               pg_catalog.set_byte(
                   pg_catalog.overlay(
                       pg_catalog.uuid_send(pg_catalog.gen_random_uuid()),
                       pg_catalog.substr(
                           pg_catalog.int8send(pg_catalog.floor(
                               pg_catalog.date_part('epoch', at) OPERATOR(pg_catalog.*) 1000
                           )::pg_catalog.int8), 3),
                       1, 6),
                   -- The version (7) in the high four bits of byte 6, four random bits below.
                   6, pg_catalog.floor(pg_catalog.random() OPERATOR(pg_catalog.*) 16)::pg_catalog.int4
                      OPERATOR(pg_catalog.|) 112),
               'hex')::pg_catalog.uuid
$$;
