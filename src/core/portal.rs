//! The portal's time zone: HubSpot's daily limit resets at midnight there. A named zone
//! (`US/Eastern`) follows daylight saving; a bare offset (`-05:00`) is used when the name is
//! not one the tz database knows.

use std::str::FromStr;

use chrono::{DateTime, Days, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};

/// Where the portal's day begins and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalZone {
    /// An IANA zone, with its daylight-saving rules.
    Named(chrono_tz::Tz),
    /// A fixed offset from UTC.
    Fixed(FixedOffset),
}

impl PortalZone {
    /// The zone an account's details describe: `name` when the tz database knows it, else
    /// `offset`; `None` when neither is usable.
    pub fn read(name: Option<&str>, offset: Option<FixedOffset>) -> Option<PortalZone> {
        name.and_then(|n| chrono_tz::Tz::from_str(n.trim()).ok())
            .map(PortalZone::Named)
            .or(offset.map(PortalZone::Fixed))
    }

    /// The zone's offset from UTC at `at`.
    pub fn offset_at(self, at: DateTime<Utc>) -> FixedOffset {
        match self {
            PortalZone::Named(tz) => at.with_timezone(&tz).offset().fix(),
            PortalZone::Fixed(offset) => offset,
        }
    }

    /// The first midnight in the zone after `at`.
    pub fn next_midnight(self, at: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            PortalZone::Named(tz) => next_midnight_in(&tz, at),
            PortalZone::Fixed(offset) => next_midnight_in(&offset, at),
        }
    }
}

/// Now, on the portal's clock; on UTC's when its time zone is unknown.
pub fn now_in(zone: Option<PortalZone>) -> DateTime<FixedOffset> {
    let now = Utc::now();
    let offset = zone.map_or_else(|| Utc.fix(), |zone| zone.offset_at(now));
    now.with_timezone(&offset)
}

/// The first midnight in `zone` after `at`. A day whose midnight a clock change skips starts at
/// the first instant that exists; a day longer than 48 hours cannot happen, so the fallback
/// (a day from now) is never reached in practice.
pub(crate) fn next_midnight_in<Tz: TimeZone>(zone: &Tz, at: DateTime<Utc>) -> DateTime<Utc> {
    let local: NaiveDateTime = at.with_timezone(zone).naive_local();
    let Some(midnight) = local
        .date()
        .checked_add_days(Days::new(1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    else {
        return at + chrono::Duration::hours(24);
    };
    match zone.from_local_datetime(&midnight) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        // Midnight skipped by a clock change: the day starts an hour later.
        LocalResult::None => zone
            .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(at + chrono::Duration::hours(24)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_named_zone_follows_daylight_saving() {
        let eastern = PortalZone::read(Some("US/Eastern"), FixedOffset::west_opt(4 * 3600))
            .expect("known zone");
        // Summer: UTC−4, midnight at 04:00 UTC.
        assert_eq!(
            eastern.next_midnight(utc("2026-07-01T20:00:00Z")),
            utc("2026-07-02T04:00:00Z")
        );
        // The evening after clocks went back (1 November 2026): UTC−5, midnight at 05:00 UTC,
        // whatever offset the account reported when it was read in summer.
        assert_eq!(
            eastern.next_midnight(utc("2026-11-02T01:00:00Z")),
            utc("2026-11-02T05:00:00Z")
        );
        assert_eq!(
            eastern.offset_at(utc("2026-11-27T12:00:00Z")),
            FixedOffset::west_opt(5 * 3600).unwrap()
        );
    }

    #[test]
    fn an_unknown_name_falls_back_to_the_offset() {
        let offset = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        let zone = PortalZone::read(Some("Not/AZone"), Some(offset)).unwrap();
        assert_eq!(zone, PortalZone::Fixed(offset));
        assert_eq!(
            zone.next_midnight(utc("2026-11-27T20:00:00Z")),
            utc("2026-11-27T18:30:00Z") + chrono::Duration::days(1)
        );
        assert_eq!(PortalZone::read(None, None), None);
    }

    #[test]
    fn a_midnight_a_clock_change_skips_starts_the_day_an_hour_later() {
        // Santiago moved its clocks from 24:00 to 01:00 on 6 September 2026.
        let santiago = PortalZone::read(Some("America/Santiago"), None).unwrap();
        let start = santiago.next_midnight(utc("2026-09-05T12:00:00Z"));
        assert_eq!(start, utc("2026-09-06T04:00:00Z"));
    }
}
