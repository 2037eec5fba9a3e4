//! hubsync: moves product events from a Postgres outbox into HubSpot contact and company
//! properties, batched, idempotent, inside the rate limit, with failures kept in `hubsync.dlq`.

pub mod cli;
pub mod config;
pub mod core;
pub mod db;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod hubspot;
pub mod ratelimit;
pub mod reconcile;
pub mod secret;
pub mod setup;
pub mod table;
pub mod telemetry;
pub mod worker;
