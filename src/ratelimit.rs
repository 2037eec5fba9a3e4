//! The limiter every worker shares, through one Postgres row: permits within the portal's
//! burst limit, and pauses (429, bad credentials) that hold every worker back at once.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;

/// The limiter row's name.
pub const LIMITER: &str = "hubspot";

/// A handle on the shared limiter.
#[derive(Clone)]
pub struct Limiter {
    pool: PgPool,
    limit: i32,
    window: Duration,
}

/// Why no permit was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPermit {
    /// Shutdown was requested.
    Cancelled,
    /// A pause longer than the caller is willing to wait is in force.
    Paused(Duration),
}

impl Limiter {
    /// A limiter of `limit` requests per `window`, shared through `pool`. `margin` is added to
    /// the window so that requests taken at the edge of ours do not land inside HubSpot's, whose
    /// clock starts when each request arrives.
    pub async fn new(
        pool: PgPool,
        limit: u32,
        window: Duration,
        margin: Duration,
    ) -> Result<Limiter, sqlx::Error> {
        db::limiter::ensure(&pool, LIMITER).await?;
        Ok(Limiter {
            pool,
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
            window: window + margin,
        })
    }

    /// Waits for a permit, at most `max_wait` in all. Gives up when cancelled, when a pause
    /// or the queue for permits would outlast `max_wait`, or when the permit arrives too late
    /// (a caller holding leases must not send once they could run out before the reply).
    pub async fn acquire(
        &self,
        cancel: &CancellationToken,
        max_wait: Duration,
    ) -> Result<Result<(), NoPermit>, sqlx::Error> {
        let deadline = Instant::now() + max_wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match db::limiter::try_acquire(&self.pool, LIMITER, self.limit, self.window).await? {
                // Taking the permit can itself wait on other workers taking theirs.
                Ok(()) if Instant::now() > deadline => {
                    return Ok(Err(NoPermit::Paused(Duration::ZERO)));
                }
                Ok(()) => return Ok(Ok(())),
                Err(wait) if wait > left => return Ok(Err(NoPermit::Paused(wait))),
                Err(wait) => {
                    // Re-check at least every second: another worker may clear a pause.
                    let nap = wait.min(Duration::from_secs(1));
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(Err(NoPermit::Cancelled)),
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
            }
        }
    }

    /// Pauses every worker for `wait`.
    pub async fn pause(&self, wait: Duration, reason: &str) -> Result<(), sqlx::Error> {
        db::limiter::pause(&self.pool, LIMITER, wait, reason).await
    }

    /// How long the pause in force still lasts (429 or halted credentials), if any.
    pub async fn pause_remaining(&self) -> Result<Option<Duration>, sqlx::Error> {
        db::limiter::pause_remaining(&self.pool, LIMITER).await
    }

    /// Clears an expired pause after a success, so `status` stops reporting it.
    pub async fn clear(&self) -> Result<(), sqlx::Error> {
        db::limiter::clear_pause(&self.pool, LIMITER).await
    }

    /// Feeds HubSpot's rate headers back (`X-HubSpot-RateLimit-Max`, `-Interval-Milliseconds`,
    /// `-Daily`, `-Daily-Remaining`): records the daily budget for `status`. (The window itself
    /// is enforced by our own slots; a 429 pauses everyone through `pause`.)
    pub async fn observe(
        &self,
        _max: Option<u64>,
        _interval_ms: Option<u64>,
        daily: Option<u64>,
        daily_remaining: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        if let Some(remaining) = daily_remaining {
            let daily = daily.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
            db::limiter::observe_daily(
                &self.pool,
                LIMITER,
                daily,
                i64::try_from(remaining).unwrap_or(i64::MAX),
            )
            .await?;
        }
        Ok(())
    }
}
