//! The shared rate limiter's statements. One row per limiter holds the send times of the last
//! N requests and a pause; every worker on every machine takes permits from the same row.

use std::time::Duration;

use sqlx::PgPool;

/// Creates the limiter row if missing. Locks nothing beyond the insert.
pub(crate) async fn ensure(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO hubsync.limiter (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// What bounds permits, besides the pause.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The configured requests per window: a ceiling when set; the limit learned from HubSpot's
    /// headers (or 100) applies under it.
    pub ceiling: Option<i32>,
    /// The configured window, used until HubSpot's interval header is learned.
    pub window: Duration,
    /// Added to the window (see `Limiter::new`).
    pub margin: Duration,
    /// At most this many requests per portal day (`hubspot.daily_budget`).
    pub daily_budget: Option<i64>,
    /// When the portal's current day ends (its next midnight).
    pub day_ends: chrono::DateTime<chrono::Utc>,
}

/// The limit in force, as SQL over the limiter row `l`, the ceiling `$2` and the configured
/// window `$3`: without a ceiling, what HubSpot's headers said (100 until they are seen); with
/// one, the ceiling, lowered by what the headers said when they count in the same window.
const LIMIT: &str = "(CASE WHEN $2::int4 IS NULL THEN coalesce(l.learned_max, 100)
        WHEN l.learned_interval_ms = round($3::float8 * 1000) THEN least($2::int4, coalesce(l.learned_max, $2::int4))
        ELSE $2::int4 END)";
/// The window in force, in seconds (with the margin `$6`): HubSpot's interval header without a
/// ceiling, the configured window with one.
const WINDOW: &str =
    "((CASE WHEN $2::int4 IS NULL THEN coalesce(l.learned_interval_ms / 1000.0, $3::float8)
        ELSE $3::float8 END) + $6::float8)";

/// Takes one permit if fewer than the limit in force were sent in the window in force, the
/// portal day's budget is not spent and no pause is in force; otherwise returns how long to
/// wait. Locks: the limiter row for this one statement, which serialises permit-taking across
/// all workers.
pub async fn try_acquire(
    pool: &PgPool,
    name: &str,
    bounds: Bounds,
) -> Result<Result<(), Duration>, sqlx::Error> {
    // The checks read the row through `l`, not a snapshot: under READ COMMITTED a concurrent
    // permit-taker blocks on the row lock and re-evaluates them against the newest slots.
    let new_day = "(l.day_ends IS NULL OR l.day_ends <= clock_timestamp())";
    let sql = format!(
        "WITH upd AS (
             UPDATE hubsync.limiter l
             SET slots = (CASE WHEN cardinality(l.slots) >= {LIMIT}
                               THEN l.slots[cardinality(l.slots) - {LIMIT} + 2 : cardinality(l.slots)]
                               ELSE l.slots END) || clock_timestamp(),
                 day_used = CASE WHEN {new_day} THEN 1 ELSE l.day_used + 1 END,
                 day_ends = CASE WHEN {new_day} THEN $5 ELSE l.day_ends END,
                 daily_budget = $4
             WHERE l.name = $1
               AND (l.paused_until IS NULL OR l.paused_until <= clock_timestamp())
               AND ($4::int8 IS NULL OR {new_day} OR l.day_used < $4::int8)
               AND (cardinality(l.slots) < {LIMIT}
                    OR l.slots[cardinality(l.slots) - {LIMIT} + 1]
                       <= clock_timestamp() - make_interval(secs => {WINDOW}))
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM upd),
                coalesce((SELECT 1000 * extract(epoch FROM greatest(
                    coalesce(l.paused_until - clock_timestamp(), interval '0'),
                    CASE WHEN $4::int8 IS NOT NULL AND NOT {new_day} AND l.day_used >= $4::int8
                         THEN l.day_ends - clock_timestamp() ELSE interval '0' END,
                    CASE WHEN cardinality(l.slots) >= {LIMIT}
                         THEN l.slots[cardinality(l.slots) - {LIMIT} + 1]
                              + make_interval(secs => {WINDOW}) - clock_timestamp()
                         ELSE interval '0' END))::float8
                  FROM hubsync.limiter l WHERE l.name = $1), 0)"
    );
    let (granted, wait_ms): (bool, f64) = sqlx::query_as(&sql)
        .bind(name)
        .bind(bounds.ceiling)
        .bind(bounds.window.as_secs_f64())
        .bind(bounds.daily_budget)
        .bind(bounds.day_ends)
        .bind(bounds.margin.as_secs_f64())
        .fetch_one(pool)
        .await?;
    if granted {
        Ok(Ok(()))
    } else {
        Ok(Err(Duration::from_secs_f64((wait_ms.max(1.0)) / 1000.0)))
    }
}

/// Adopts the limit HubSpot's headers state (`X-HubSpot-RateLimit-Max`,
/// `-Interval-Milliseconds`), writing only when it changed. Locks: the limiter row, briefly.
pub(crate) async fn learn(
    pool: &PgPool,
    name: &str,
    max: i32,
    interval_ms: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.limiter SET learned_max = $2, learned_interval_ms = $3
         WHERE name = $1
           AND (learned_max IS DISTINCT FROM $2 OR learned_interval_ms IS DISTINCT FROM $3)",
    )
    .bind(name)
    .bind(max)
    .bind(interval_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Pauses every worker for `wait` from now (never shortening a longer pause).
/// Locks: the limiter row, briefly.
pub(crate) async fn pause(
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
pub(crate) async fn clear_pause(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.limiter SET paused_until = NULL, pause_reason = NULL
         WHERE name = $1 AND pause_reason IS NOT NULL AND paused_until <= clock_timestamp()",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves the end of the portal day in force to `day_ends`, the portal's next midnight, when it
/// was reckoned in UTC (a midnight there) by a process that did not know the portal's time
/// zone yet: every start reads it with a request of its own, which may be the day's first.
/// `day_began` is the portal's last midnight: nothing moves unless the database's clock is
/// past it too, so a host clock a little ahead cannot stretch the day to the next one. The
/// requests counted so far stay counted. Locks: the limiter row, briefly.
pub(crate) async fn align_day(
    pool: &PgPool,
    name: &str,
    day_began: chrono::DateTime<chrono::Utc>,
    day_ends: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.limiter SET day_ends = $3
         WHERE name = $1 AND day_ends > clock_timestamp() AND day_ends <> $3
           AND day_ends = date_trunc('day', day_ends, 'UTC')
           AND $2 <= clock_timestamp()",
    )
    .bind(name)
    .bind(day_began)
    .bind(day_ends)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores the daily budget HubSpot reported. Locks: the limiter row, briefly.
pub(crate) async fn observe_daily(
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
pub(crate) async fn pause_remaining(
    pool: &PgPool,
    name: &str,
) -> Result<Option<Duration>, sqlx::Error> {
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
