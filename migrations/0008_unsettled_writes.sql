-- A write whose request timed out (or whose gateway gave up) may still land at HubSpot later,
-- after a newer write. Until this time, such an object stays dirty after being written, and is
-- written once more then, so that the newest state is the last one HubSpot receives.
ALTER TABLE hubsync.objects ADD COLUMN unsettled_until timestamptz;
