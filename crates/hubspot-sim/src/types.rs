//! The simulator's public data: its settings, what it stores and logs, and the faults it can
//! inject. Plain values, with no behaviour beyond parsing fault names.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::token::Token;

/// The value both `X-HubSpot-RateLimit-Max` and `-Remaining` carry when the window is unlimited.
pub const UNLIMITED_HEADER_VALUE: u32 = 1_000_000;

/// The simulated portal's id: in the account details, and at the end of some of HubSpot's
/// messages (`... in portal ID 1512050`).
pub const PORTAL_ID: u64 = 1_512_050;

/// Requests per portal day of the Free and Starter tiers: the daily limit when none is set.
pub const DEFAULT_DAILY_LIMIT: u64 = 250_000;

/// Settings fixed when the simulator starts; the rest is changed through
/// [`Simulator`](crate::Simulator) methods.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The accepted private-app token (default `"sim-token"`); never printed.
    pub token: Token,
    /// Requests allowed per rolling window (default 100); 0 means unlimited.
    pub requests_per_window: u32,
    /// Length of the rolling window (default 10 s).
    pub window: Duration,
    /// Requests allowed per portal day (it resets at midnight in the portal's time zone);
    /// `None` means the Free and Starter tiers' [`DEFAULT_DAILY_LIMIT`]. Reported on every
    /// response (`X-HubSpot-RateLimit-Daily`, `-Daily-Remaining`), as to any private app.
    pub daily_limit: Option<u64>,
    /// The portal's time zone name, as `GET /account-info/v3/details` reports it (default `UTC`).
    /// A name the tz database knows sets the offset, daylight saving included.
    pub time_zone: String,
    /// The portal's offset from UTC in minutes (default 0; `-300` for UTC−5), used when
    /// `time_zone` is not a name the tz database knows: the daily limit resets at midnight at
    /// the portal's offset.
    pub utc_offset_minutes: i32,
    /// Whether the token may read the account details (default true). HubSpot asks for the
    /// `oauth` scope there, which a private app's token may lack: then the call answers 403.
    pub account_details_allowed: bool,
    /// Echo each input's `objectWriteTraceId` on its upsert result (default false). Whether
    /// HubSpot does is not known, so by default the simulator takes the stricter reading and a
    /// client must match results another way; tests turn it on to check the trace id path.
    pub echo_trace_ids: bool,
    /// Return batch results in an order unrelated to the inputs (default true), as HubSpot does.
    pub shuffle_results: bool,
    /// Keep request bodies in the request log (default true; benchmarks turn it off).
    pub log_bodies: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token: Token::new("sim-token"),
            requests_per_window: 100,
            window: Duration::from_secs(10),
            daily_limit: None,
            time_zone: "UTC".to_owned(),
            utc_offset_minutes: 0,
            account_details_allowed: true,
            echo_trace_ids: false,
            shuffle_results: true,
            log_bodies: true,
        }
    }
}

impl SimConfig {
    /// The portal's offset from UTC now, in minutes: from `time_zone` when it names a known
    /// zone, else `utc_offset_minutes`.
    pub fn offset_minutes_now(&self) -> i32 {
        match self.time_zone.trim().parse::<chrono_tz::Tz>() {
            Ok(zone) => {
                use chrono::Offset;
                chrono::Utc::now()
                    .with_timezone(&zone)
                    .offset()
                    .fix()
                    .local_minus_utc()
                    / 60
            }
            Err(_) => self.utc_offset_minutes,
        }
    }
}

/// One stored CRM record, as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRecord {
    /// HubSpot's record id (`hs_object_id`), a numeric string.
    pub id: String,
    /// Every stored property value, including `hs_object_id`, `createdate`, `lastmodifieddate`.
    pub properties: BTreeMap<String, String>,
}

/// One request the simulator received, with the status it answered.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// HTTP method, e.g. `"POST"`.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Status answered; 0 when no response was sent (a dropped connection) or none yet.
    pub status: u16,
    /// Number of entries in the body's `inputs` array for batch endpoints, 0 otherwise.
    pub inputs: usize,
    /// The request body (JSON, or a JSON string holding non-JSON text) when `log_bodies` is on.
    pub body: Option<serde_json::Value>,
    /// When the request arrived.
    pub at: Instant,
}

/// A fault injected into one object-write request (batch upsert or batch associate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status without applying anything, with a HubSpot-like body and, when given,
    /// a `Retry-After` header in seconds.
    Status {
        /// The status to answer (423, 477, 500, 502, 503, 504, 524, 400, 401, 403, 429 …).
        status: u16,
        /// Seconds for a `Retry-After` header.
        retry_after_secs: Option<u64>,
    },
    /// Apply the write, then answer this status: the real response is lost.
    ApplyThenStatus(u16),
    /// Apply the write, then close the connection without any response.
    ApplyThenDrop,
    /// Close the connection without applying or answering.
    Drop,
    /// Answer 200 with no results and no errors, applying nothing (a silent failure).
    SilentOk,
    /// Wait this long, then handle the request normally (to trigger client timeouts). The
    /// write lands even when the client has given up by then, as it does at HubSpot.
    Hang(Duration),
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// Parses the command line's fault names: `500`, `477:30` (status, Retry-After seconds),
    /// `apply-500`, `apply-drop`, `drop`, `silent`, `hang-2000` (milliseconds).
    fn from_str(text: &str) -> Result<Fault, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "fault \"{text}\" is not one of STATUS, STATUS:RETRY_AFTER_SECS, apply-STATUS, apply-drop, drop, silent, hang-MILLIS"
            )
        };
        match text {
            "drop" => return Ok(Fault::Drop),
            "silent" => return Ok(Fault::SilentOk),
            "apply-drop" => return Ok(Fault::ApplyThenDrop),
            _ => {}
        }
        if let Some(status) = text.strip_prefix("apply-") {
            return status
                .parse()
                .map(Fault::ApplyThenStatus)
                .map_err(|_| bad());
        }
        if let Some(ms) = text.strip_prefix("hang-") {
            return ms
                .parse()
                .map(|ms| Fault::Hang(Duration::from_millis(ms)))
                .map_err(|_| bad());
        }
        let (status, retry_after) = match text.split_once(':') {
            Some((s, r)) => (s, Some(r.parse::<u64>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let status: u16 = status.parse().map_err(|_| bad())?;
        if !(100..=599).contains(&status) {
            return Err(bad());
        }
        Ok(Fault::Status {
            status,
            retry_after_secs: retry_after,
        })
    }
}

#[cfg(test)]
mod fault_names {
    use super::Fault;
    use std::time::Duration;

    #[test]
    fn command_line_fault_names_parse() {
        let parsed: Vec<Fault> = "500,477:30,apply-502,apply-drop,drop,silent,hang-250"
            .split(',')
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(
            parsed,
            vec![
                Fault::Status {
                    status: 500,
                    retry_after_secs: None
                },
                Fault::Status {
                    status: 477,
                    retry_after_secs: Some(30)
                },
                Fault::ApplyThenStatus(502),
                Fault::ApplyThenDrop,
                Fault::Drop,
                Fault::SilentOk,
                Fault::Hang(Duration::from_millis(250)),
            ]
        );
        for bad in ["", "boom", "99", "apply-x", "477:soon"] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
