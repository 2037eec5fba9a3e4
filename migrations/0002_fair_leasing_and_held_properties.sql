-- Sync leases dirty objects in the order they became due: a fresh object from when it became
-- dirty, one backing off from when its retry falls due. Neither can starve the other under a
-- storm of fresh objects. The index references the same columns as before, so folding more
-- events into an already dirty object stays a HOT update.
DROP INDEX hubsync.objects_dirty;
CREATE INDEX objects_due ON hubsync.objects
    (object_type, (coalesce(next_attempt_at, dirty_since, '-infinity'::timestamptz)))
    WHERE dirty;

-- Properties HubSpot refused for this object, as {"name": "refused value"}: held back while
-- the object's other properties keep syncing, until the value changes or the object's DLQ row
-- is replayed. NULL: nothing held.
ALTER TABLE hubsync.objects ADD COLUMN held jsonb;
