//! The limiter every worker shares, through one Postgres row: permits within the portal's
//! burst limit, and pauses (429, bad credentials) that hold every worker back at once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Offset, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::core::portal::PortalZone;
use crate::db;

/// The limiter row's name.
pub const LIMITER: &str = "hubspot";

/// Learned limits are taken up to this many requests per window.
const MAX_LEARNED: u64 = 10_000;

/// A handle on the shared limiter.
#[derive(Clone)]
pub struct Limiter {
    pool: PgPool,
    ceiling: Option<i32>,
    window: Duration,
    margin: Duration,
    daily_budget: Option<i64>,
    portal: Option<PortalZone>,
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
    /// A limiter shared through `pool`: at most `ceiling` requests per `window` when given,
    /// else what HubSpot's rate-limit headers say (100 per `window` until they are seen).
    /// `margin` is added to the window so that requests taken at the edge of ours do not land
    /// inside HubSpot's, whose clock starts when each request arrives.
    pub async fn new(
        pool: PgPool,
        ceiling: Option<u32>,
        window: Duration,
        margin: Duration,
    ) -> Result<Limiter, sqlx::Error> {
        db::limiter::ensure(&pool, LIMITER).await?;
        Ok(Limiter {
            pool,
            ceiling: ceiling.map(|c| i32::try_from(c).unwrap_or(i32::MAX)),
            window,
            margin,
            daily_budget: None,
            portal: None,
        })
    }

    /// The limiter `[hubspot]` describes, its daily budget counted by UTC days until the
    /// portal's time zone is known ([`Limiter::with_day`]): start-up calls are capped too.
    pub async fn configured(
        pool: PgPool,
        hubspot: &crate::config::HubSpotSettings,
    ) -> Result<Limiter, sqlx::Error> {
        let limiter = Limiter::new(
            pool,
            hubspot.requests_per_10s,
            hubspot.rate_window,
            hubspot.rate_margin,
        )
        .await?;
        Ok(limiter.with_day(None, hubspot.daily_budget))
    }

    /// Counts requests per portal day (ending at midnight at `portal`, UTC when unknown) and
    /// hands out at most `budget` a day when given.
    pub fn with_day(mut self, portal: Option<PortalZone>, budget: Option<u64>) -> Limiter {
        self.portal = portal;
        self.daily_budget = budget.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        self
    }

    /// The same limiter, its days ending at midnight at `portal` (UTC when unknown).
    pub(crate) fn in_portal(mut self, portal: Option<PortalZone>) -> Limiter {
        self.portal = portal;
        self
    }

    /// Once the portal's time zone is known, makes the portal day in force end at its
    /// midnight, should a process that did not know it yet have started that day.
    pub(crate) async fn align_day(&self) -> Result<(), sqlx::Error> {
        let Some(zone) = self.portal else {
            return Ok(());
        };
        let now = Utc::now();
        let began = zone.next_midnight(now - chrono::Duration::hours(24));
        db::limiter::align_day(&self.pool, LIMITER, began, zone.next_midnight(now)).await
    }

    /// The end of the portal's current day.
    fn day_ends(&self) -> DateTime<Utc> {
        let zone = self.portal.unwrap_or(PortalZone::Fixed(Utc.fix()));
        zone.next_midnight(Utc::now())
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
            let bounds = db::limiter::Bounds {
                ceiling: self.ceiling,
                window: self.window,
                margin: self.margin,
                daily_budget: self.daily_budget,
                day_ends: self.day_ends(),
            };
            match db::limiter::try_acquire(&self.pool, LIMITER, bounds).await? {
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
    pub(crate) async fn pause(&self, wait: Duration, reason: &str) -> Result<(), sqlx::Error> {
        db::limiter::pause(&self.pool, LIMITER, wait, reason).await
    }

    /// How long the pause in force still lasts (429 or halted credentials), if any.
    pub(crate) async fn pause_remaining(&self) -> Result<Option<Duration>, sqlx::Error> {
        db::limiter::pause_remaining(&self.pool, LIMITER).await
    }

    /// Clears an expired pause after a success, so `status` stops reporting it.
    pub(crate) async fn clear(&self) -> Result<(), sqlx::Error> {
        db::limiter::clear_pause(&self.pool, LIMITER).await
    }

    /// Feeds HubSpot's rate headers back (`X-HubSpot-RateLimit-Max`, `-Interval-Milliseconds`,
    /// `-Daily`, `-Daily-Remaining`): records the daily budget for `status`. (The window itself
    /// is enforced by our own slots; a 429 pauses everyone through `pause`.)
    pub(crate) async fn observe(
        &self,
        max: Option<u64>,
        interval_ms: Option<u64>,
        daily: Option<u64>,
        daily_remaining: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        if let (Some(max), Some(interval)) = (max, interval_ms)
            && max > 0
            && interval > 0
        {
            let max = i32::try_from(max.min(MAX_LEARNED)).unwrap_or(i32::MAX);
            let interval = i32::try_from(interval.min(3_600_000)).unwrap_or(i32::MAX);
            db::limiter::learn(&self.pool, LIMITER, max, interval).await?;
        }
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
