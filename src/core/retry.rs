//! Retry delays: capped exponential backoff with full jitter, as a pure function of the attempt
//! number and an injected random unit, so tests are deterministic.

use std::time::Duration;

/// First retry waits up to this long.
pub(crate) const BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this (unless HubSpot asks for more).
pub(crate) const CAP: Duration = Duration::from_secs(300);

/// Full-jitter backoff: a uniform pick in `[0, min(CAP, BASE·2^attempt)]` (`unit` in [0, 1]),
/// then at least `min_wait`, and at least what `Retry-After` asked for.
pub(crate) fn retry_delay(
    attempt: i32,
    retry_after: Option<Duration>,
    min_wait: Duration,
    unit: f64,
) -> Duration {
    let exp = u32::try_from(attempt.clamp(0, 20)).unwrap_or(20);
    let ceiling = BASE.saturating_mul(1u32 << exp).min(CAP);
    let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
    jittered
        .max(min_wait)
        .max(retry_after.unwrap_or(Duration::ZERO))
}

/// The wait before the `failures`-th retry of a loop whose database went away: half a second,
/// doubling, at most 30 s. No jitter: reconnecting workers do not contend with each other.
pub(crate) fn outage_delay(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(6))
        .min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_delays_double_then_cap() {
        assert_eq!(outage_delay(1), Duration::from_millis(500));
        assert_eq!(outage_delay(2), Duration::from_secs(1));
        assert_eq!(outage_delay(6), Duration::from_secs(16));
        assert_eq!(outage_delay(7), Duration::from_secs(30));
        assert_eq!(outage_delay(100), Duration::from_secs(30));
    }

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(
            retry_delay(0, None, Duration::ZERO, 1.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(3, None, Duration::ZERO, 1.0),
            Duration::from_secs(8)
        );
        assert_eq!(retry_delay(30, None, Duration::ZERO, 1.0), CAP);
        assert_eq!(
            retry_delay(3, None, Duration::ZERO, 0.5),
            Duration::from_secs(4)
        );
        assert_eq!(retry_delay(3, None, Duration::ZERO, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_and_minimum_waits_win() {
        let after = Some(Duration::from_secs(30));
        assert_eq!(
            retry_delay(0, after, Duration::ZERO, 1.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(0, None, Duration::from_secs(2), 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(-5, None, Duration::ZERO, 7.0),
            Duration::from_secs(1)
        );
    }
}
