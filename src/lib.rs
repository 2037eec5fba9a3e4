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

/// `print!` for what a command prints on standard output: a reader that went away
/// (`hubsync status | head -3`) ends the command quietly instead of with a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

/// `println!` through [`out!`].
macro_rules! outln {
    () => {
        out!("\n")
    };
    ($($arg:tt)*) => {
        out!("{}\n", format_args!($($arg)*))
    };
}

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
