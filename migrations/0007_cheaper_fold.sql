-- A fold rewrites every object it touches. Leave room on each page so that the new version
-- of a row lands beside the old one: a heap-only update, with no new index entries to write
-- (and no index bloat) while the object stays dirty. Applies to pages written from now on.
ALTER TABLE hubsync.objects SET (fillfactor = 70);

-- The ledger's age index serves only pruning, which reads whole ranges of time. Ids are
-- recorded in time order, so a BRIN index summarises them in a few pages and costs next to
-- nothing per recorded event, where a B-tree entry per event cost as much as the row itself.
DROP INDEX hubsync.ledger_processed_at;
CREATE INDEX ledger_processed_at ON hubsync.ledger USING brin (processed_at);
