//! Read-only statements for `hubsync status` and tests.

use sqlx::PgPool;

/// Rows in a `hubsync` table (for tests and the demo). Locks nothing.
pub async fn count(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    let allowed = ["outbox", "ledger", "objects", "dlq"];
    let table = allowed
        .iter()
        .find(|t| **t == table)
        .ok_or_else(|| sqlx::Error::Protocol(format!("unknown table {table}")))?;
    // `table` is one of the fixed names above.
    sqlx::query_scalar(&(format!("SELECT count(*) FROM hubsync.{table}")))
        .fetch_one(pool)
        .await
}
