//! The shared rate limiter's statements. One row per limiter holds the send times of the last
//! N requests and a pause; every worker on every machine takes permits from the same row.

use std::time::Duration;

use sqlx::PgPool;

/// Creates the limiter row if missing. Locks nothing beyond the insert.
pub async fn ensure(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO hubsync.limiter (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Takes one permit if fewer than `limit` requests were sent in the last `window` and no
/// pause is in force; otherwise returns how long to wait. Locks: the limiter row for this one
/// statement, which serialises permit-taking across all workers.
pub async fn try_acquire(
    pool: &PgPool,
    name: &str,
    limit: i32,
    window: Duration,
) -> Result<Result<(), Duration>, sqlx::Error> {
    // The checks read the row through `l`, not a snapshot: under READ COMMITTED a concurrent
    // permit-taker blocks on the row lock and re-evaluates them against the newest slots.
    let (granted, wait_ms): (bool, f64) = sqlx::query_as(
        "WITH upd AS (
             UPDATE hubsync.limiter l
             SET slots = (CASE WHEN cardinality(l.slots) >= $2
                               THEN l.slots[cardinality(l.slots) - $2 + 2 : cardinality(l.slots)]
                               ELSE l.slots END) || clock_timestamp()
             WHERE l.name = $1
               AND (l.paused_until IS NULL OR l.paused_until <= clock_timestamp())
               AND (cardinality(l.slots) < $2
                    OR l.slots[cardinality(l.slots) - $2 + 1]
                       <= clock_timestamp() - make_interval(secs => $3))
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM upd),
                coalesce((SELECT 1000 * extract(epoch FROM greatest(
                    coalesce(c.paused_until - clock_timestamp(), interval '0'),
                    CASE WHEN cardinality(c.slots) >= $2
                         THEN c.slots[cardinality(c.slots) - $2 + 1]
                              + make_interval(secs => $3) - clock_timestamp()
                         ELSE interval '0' END))::float8
                  FROM hubsync.limiter c WHERE c.name = $1), 0)",
    )
    .bind(name)
    .bind(limit)
    .bind(window.as_secs_f64())
    .fetch_one(pool)
    .await?;
    if granted {
        Ok(Ok(()))
    } else {
        Ok(Err(Duration::from_secs_f64((wait_ms.max(1.0)) / 1000.0)))
    }
}

/// Pauses every worker until `until` from now (never shortening a longer pause).
/// Locks: the limiter row, briefly.
pub async fn pause(
    pool: &PgPool,
    name: &str,
    wait: Duration,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.limiter
         SET paused_until = greatest(coalesce(paused_until, clock_timestamp()),
                                     clock_timestamp() + make_interval(secs => $2)),
             pause_reason = $3
         WHERE name = $1",
    )
    .bind(name)
    .bind(wait.as_secs_f64())
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Clears a pause once requests succeed again. Locks: the limiter row, briefly.
pub async fn clear_pause(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.limiter SET paused_until = NULL, pause_reason = NULL
         WHERE name = $1 AND pause_reason IS NOT NULL AND paused_until <= clock_timestamp()",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores the daily budget HubSpot reported. Locks: the limiter row, briefly.
pub async fn observe_daily(
    pool: &PgPool,
    name: &str,
    daily: Option<i64>,
    remaining: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.limiter SET daily_limit = coalesce($2, daily_limit),
                daily_remaining = $3, observed_at = now()
         WHERE name = $1",
    )
    .bind(name)
    .bind(daily)
    .bind(remaining)
    .execute(pool)
    .await?;
    Ok(())
}

/// How long the current pause still lasts, if one is in force. Locks nothing.
pub async fn pause_remaining(pool: &PgPool, name: &str) -> Result<Option<Duration>, sqlx::Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM paused_until - clock_timestamp())::float8
         FROM hubsync.limiter WHERE name = $1 AND paused_until > clock_timestamp()",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?
    .flatten();
    Ok(secs.filter(|s| *s > 0.0).map(Duration::from_secs_f64))
}
