//! Forgetting what is no longer needed: ledger entries past the retention period. Dead-letter
//! rows are only ever removed by a person (`hubsync dlq purge`, `sql/dlq_purge.sql`).

use std::time::Duration;

use sqlx::PgPool;

/// Ledger rows deleted per statement, so that pruning a large backlog never holds many locks
/// or a long transaction.
pub(crate) const PRUNE_BATCH: i64 = 10_000;

/// Forgets ledger entries older than `retention`, in batches; returns how many. Locks: each
/// batch's rows, for its own short statement.
pub async fn prune_ledger(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    prune_ledger_in_batches(pool, retention, PRUNE_BATCH).await
}

/// `prune_ledger` with a given batch size.
pub async fn prune_ledger_in_batches(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    loop {
        // The age is checked again on the row itself: an entry a replay refreshed meanwhile stays.
        let done = sqlx::query(
            "DELETE FROM hubsync.ledger
             WHERE event_id IN (SELECT event_id FROM hubsync.ledger
                                WHERE processed_at < now() - make_interval(secs => $1)
                                LIMIT $2)
               AND processed_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        removed += done;
        if done < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(removed);
        }
    }
}
