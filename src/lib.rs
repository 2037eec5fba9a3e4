//! hubsync: moves product events from a Postgres outbox into HubSpot contact and company
//! properties, batched, idempotent, inside the rate limit, with failures kept in `hubsync.dlq`.

pub mod simulator;
