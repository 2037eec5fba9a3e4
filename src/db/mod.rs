//! Every SQL statement hubsync runs, as small named functions over a pool or a transaction.
//! Each says what it locks and why. No other module writes SQL.
//!
//! One lock order, for every transaction that takes row locks in more than one table:
//! outbox rows, then ledger rows, then object rows in key order, then DLQ rows. The limiter
//! row is only ever locked alone, by one statement. Ingest never waits for an object row
//! (`SKIP LOCKED`; events for a row held elsewhere go back to the outbox), so the only waits on
//! object rows are the recording statements of sync and replay, which all lock in key order
//! and give up after the session's `lock_timeout`. A statement that takes a lock out of this
//! order (replay claiming DLQ event rows before folding them) takes it with `SKIP LOCKED` and
//! never waits for the rows after it. No cycle of waits can form.

pub mod dlq;
pub mod ingest;
pub mod limiter;
pub mod migrations;
pub mod objects;
pub mod status;

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use migrations::{MIGRATOR, migrate};

/// Connects to Postgres with a small pool.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to Postgres at {}; check DATABASE_URL and that the server is running",
                redact(url)
            )
        })
}

/// The name worker sessions carry in `pg_stat_activity`, so an operator can tell them apart.
pub const APPLICATION_NAME: &str = "hubsync";

/// Connects the worker's pool: every session carries the worker's timeouts, so a statement
/// that hangs, a lock held elsewhere, or a transaction left open by a worker that was cut off
/// holds nothing for long. A connection that dies is replaced at the next use.
pub async fn connect_worker(
    url: &str,
    max_connections: u32,
    worker: &crate::config::WorkerSettings,
) -> anyhow::Result<PgPool> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let options: PgConnectOptions = url.parse().map_err(|_| {
        anyhow::anyhow!(
            "DATABASE_URL is not a valid Postgres URL; write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    })?;
    let options = options.application_name(APPLICATION_NAME).options([
        ("statement_timeout", ms(worker.statement_timeout)),
        ("lock_timeout", ms(worker.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(worker.idle_in_transaction_timeout),
        ),
    ]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot connect to Postgres at {}; check DATABASE_URL and that the server is running",
                redact(url)
            )
        })
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
