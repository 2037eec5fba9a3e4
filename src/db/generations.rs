//! Rolling deploys: each worker registers the declarations it runs with (a config
//! generation, numbered in the order each set of declarations was first seen) and a heartbeat.
//! A worker takes no work while a worker of a newer generation is alive, so an older config
//! never refuses a property a newer one declares, nor marks an object synced without it.
//!
//! Registering takes an exclusive advisory lock that every ingest transaction holds shared
//! while it folds: once a newer generation is registered, no older worker's fold that started
//! before can still be running, and every later one sees it.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The advisory lock between registering a generation and folding ("hubsync" + 1).
const GENERATION_LOCK: i64 = 0x68756273796e64;

/// Seconds after its last heartbeat that a worker counts as gone.
pub(crate) const ALIVE_SECS: f64 = 30.0;

/// A worker's place among the generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    /// The digest of the declarations.
    pub fingerprint: String,
    /// The generation of those declarations.
    pub generation: i64,
}

/// A newer generation with live workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newer {
    /// The newest live generation.
    pub generation: i64,
    /// Its live workers.
    pub workers: i64,
}

impl Newer {
    /// From a row of [`newer_sql`]: (generation, live workers).
    fn from_row((generation, workers): (i64, i64)) -> Newer {
        Newer {
            generation,
            workers,
        }
    }
}

/// Registers a worker running with `canonical` declarations (`properties`: the names per
/// object type). Known declarations keep their generation (a restarted worker of an older
/// deploy stays older); new ones become the newest. Also forgets workers gone for an hour.
/// Locks: the generation advisory lock (exclusive, waiting for folds in flight), the new rows.
pub(crate) async fn register(
    pool: &PgPool,
    worker: Uuid,
    canonical: &str,
    properties: &serde_json::Value,
) -> Result<Registered, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GENERATION_LOCK)
        .execute(&mut *tx)
        .await?;
    let (fingerprint, generation): (String, i64) = sqlx::query_as(
        "WITH new AS (
             INSERT INTO hubsync.configs (fingerprint, properties) VALUES (md5($1), $2)
             ON CONFLICT (fingerprint) DO NOTHING RETURNING fingerprint, generation
         )
         SELECT fingerprint, generation FROM new
         UNION ALL
         SELECT fingerprint, generation FROM hubsync.configs WHERE fingerprint = md5($1)
         LIMIT 1",
    )
    .bind(canonical)
    .bind(properties)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM hubsync.workers WHERE seen_at < now() - interval '1 hour'")
        .execute(&mut *tx)
        .await?;
    let registered = Registered {
        fingerprint,
        generation,
    };
    beat(&mut tx, worker, &registered).await?;
    tx.commit().await?;
    Ok(registered)
}

/// Marks the worker alive and returns the newest live generation above its own, if any, in
/// one statement (an idle worker's heartbeat is most of its load on the database). Locks: the
/// worker's own row, briefly.
pub(crate) async fn heartbeat(
    pool: &PgPool,
    worker: Uuid,
    registered: &Registered,
) -> Result<Option<Newer>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    beat(&mut conn, worker, registered).await
}

async fn beat(
    conn: &mut PgConnection,
    worker: Uuid,
    registered: &Registered,
) -> Result<Option<Newer>, sqlx::Error> {
    let sql = format!(
        "WITH me AS (
             INSERT INTO hubsync.workers (id, fingerprint, host, pid)
             VALUES ($1, $2, coalesce(inet_client_addr()::text, 'local'), $3)
             ON CONFLICT (id) DO UPDATE SET seen_at = now()
         )
         {}",
        newer_sql(4, 5)
    );
    let row: Option<(i64, i64)> = sqlx::query_as(&sql)
        .bind(worker)
        .bind(&registered.fingerprint)
        .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
        .bind(registered.generation)
        .bind(ALIVE_SECS)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(Newer::from_row))
}

/// The newest live generation above parameter `$generation` (`$alive`: seconds a worker counts
/// as alive after its last heartbeat), with its live workers.
fn newer_sql(generation: usize, alive: usize) -> String {
    format!(
        "SELECT c.generation, count(*) FROM hubsync.workers w JOIN hubsync.configs c USING (fingerprint)
         WHERE c.generation > ${generation} AND w.seen_at > now() - make_interval(secs => ${alive})
         GROUP BY c.generation ORDER BY c.generation DESC LIMIT 1"
    )
}

async fn newer(conn: &mut PgConnection, generation: i64) -> Result<Option<Newer>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(&newer_sql(1, 2))
        .bind(generation)
        .bind(ALIVE_SECS)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(Newer::from_row))
}

/// Inside a fold's transaction, before it reads anything: holds the generation lock shared
/// until the transaction ends, and returns the newest live generation above `generation`
/// (then the caller must fold nothing). Locks: the generation advisory lock, shared.
pub(crate) async fn gate_fold(
    tx: &mut PgConnection,
    generation: i64,
) -> Result<Option<Newer>, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(GENERATION_LOCK)
        .execute(&mut *tx)
        .await?;
    newer(tx, generation).await
}

/// Removes the worker's row when it stops. Locks: that row.
pub(crate) async fn leave(pool: &PgPool, worker: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM hubsync.workers WHERE id = $1")
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}
