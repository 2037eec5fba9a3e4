//! hubsync: moves product events from a Postgres outbox into HubSpot contact and company
//! properties, batched, idempotent, inside the rate limit, with failures kept in `hubsync.dlq`.
//!
//! - [`core`]: the pure decisions (values, merging, classifying replies); no I/O.
//! - [`db`]: every SQL statement. [`hubspot`]: every HTTP request to HubSpot.
//! - [`worker`]: the ingest, sync and upkeep loops, over [`ratelimit`], [`setup`] and
//!   [`reconcile`]. [`telemetry`]: metrics, health, status.
//! - [`cli`]: the commands, with [`config`] and [`secret`]. The HubSpot simulator is the
//!   workspace crate `hubspot-sim`.
//!
//! `docs/ARCHITECTURE.md` tells how the parts fit.

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
pub(crate) mod table;
pub mod telemetry;
pub mod worker;
