//! P6: the load an idle worker puts on the database, in transactions per second.

use std::time::Duration;

use sqlx::PgPool;

use crate::harness::{Rig, Running, table};

const WINDOW: Duration = Duration::from_secs(60);

/// Transactions committed or rolled back in the current database so far.
async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    // Statistics reach the shared view when a backend has been idle for a second at most.
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database
         WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok(n)
}

pub async fn run(base_url: &str) -> anyhow::Result<()> {
    println!(
        "## P6: an idle worker's load on the database\n\n\
         One worker with `Worker::run` and the default [worker] settings, an empty outbox, \
         nothing dirty; after 20 s of warm-up (start-up's calls and their statistics settle), \
         the database's committed and rolled-back transactions (pg_stat_database) are counted \
         over {} s, less the two reads of the counter itself. Idle backends report their \
         counts within 10 s, so each reading waits 11 s after what it counts.\n",
        WINDOW.as_secs()
    );
    let rig = Rig::start(base_url, "p6", 100, 100, 10_000).await?;
    let mut running = Running::default();
    running.spawn(rig.worker().await?);
    tokio::time::sleep(Duration::from_secs(20)).await;
    // What the window counts is what happens between the two readings, each taken once every
    // backend has reported what came before it.
    let before = transactions(&rig.db.pool).await?;
    tokio::time::sleep(WINDOW).await;
    let after_window = transactions(&rig.db.pool).await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after = transactions(&rig.db.pool).await?;
    let _ = after_window;
    running.stop().await?;
    let count = (after - before - 2).max(0);
    table(
        "P6 results (target: ≤ 1 transaction per second)",
        &["window s", "transactions", "per second"],
        &[vec![
            WINDOW.as_secs().to_string(),
            count.to_string(),
            format!("{:.2}", count as f64 / WINDOW.as_secs_f64()),
        ]],
    );
    rig.finish().await
}
