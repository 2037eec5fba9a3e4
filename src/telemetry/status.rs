//! `hubsync status`: the columns of `sql/status.sql`, the drain rate over the last minute, the
//! time the backlog needs at that rate and at the rate limit, the pause in force and the DLQ by
//! category; as text, as one JSON object (`--json`), or redrawn every 2 s (`--watch`).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Inputs per batch upsert: with one event per object, the most events one request moves.
const EVENTS_PER_REQUEST: f64 = 100.0;

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `column | value` lines.
    Text,
    /// One JSON object.
    Json,
}

/// One look at the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// Every column of `sql/status.sql` and the derived figures, by name.
    pub fields: Map<String, Value>,
}

impl Snapshot {
    /// Reads the pipeline's state; `requests_per_10s` is the configured rate limit (`None`:
    /// no config at hand, HubSpot's lowest tier is assumed).
    pub(crate) async fn read(
        pool: &PgPool,
        requests_per_10s: Option<u32>,
    ) -> anyhow::Result<Snapshot> {
        let (mut fields, dlq) = crate::db::status::status_row(pool).await?;
        let number = |f: &Map<String, Value>, k: &str| f.get(k).and_then(Value::as_f64);
        let backlog = number(&fields, "outbox_backlog").unwrap_or(0.0);
        let to_sync = number(&fields, "objects_to_sync").unwrap_or(0.0);
        let processed = number(&fields, "processed_last_minute").unwrap_or(0.0);
        let rate = processed / 60.0;
        let per_10s = requests_per_10s.unwrap_or(100);
        let ceiling = f64::from(per_10s) / 10.0 * EVENTS_PER_REQUEST;
        let at_rate = if backlog == 0.0 {
            Some(0.0)
        } else if rate > 0.0 {
            Some(backlog / rate)
        } else {
            None
        };
        // What is still to be sent: the outbox's events (at most one input each) and the
        // objects already folded, one input each, 100 to a request.
        let pause_left = number(&fields, "pause_left_s").unwrap_or(0.0);
        let at_limit = (backlog + to_sync) / ceiling + pause_left;
        // Whichever is slower; unknown while events wait and nothing drains, and while halted.
        let halted = fields.get("halted_now") == Some(&Value::Bool(true));
        let eta = at_rate.map(|r| r.max(at_limit)).filter(|_| !halted);
        let round = |x: f64| (x * 10.0).round() / 10.0;
        fields.insert("drain_rate_per_s".into(), json!(round(rate)));
        fields.insert("eta_at_drain_rate_s".into(), json!(at_rate.map(round)));
        fields.insert("eta_at_rate_limit_s".into(), json!(round(at_limit)));
        fields.insert("eta_s".into(), json!(eta.map(round)));
        fields.insert("rate_limit_per_10s".into(), json!(per_10s));
        fields.insert(
            "rate_limit_from".into(),
            json!(if requests_per_10s.is_some() {
                "hubsync.toml"
            } else {
                "assumed: not set in hubsync.toml (or no valid hubsync.toml found)"
            }),
        );
        fields.insert("dlq_by_category".into(), dlq);
        Ok(Snapshot { fields })
    }

    fn f64(&self, k: &str) -> Option<f64> {
        self.fields.get(k).and_then(Value::as_f64)
    }

    fn text(&self, k: &str) -> String {
        match self.fields.get(k) {
            None | Some(Value::Null) => "-".into(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }

    /// The snapshot as `name | value` lines, with the derived figures in words.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let backlog = self.f64("outbox_backlog").unwrap_or(0.0);
        let to_sync = self.f64("objects_to_sync").unwrap_or(0.0);
        let pause = if self.fields.get("halted_now") == Some(&Value::Bool(true)) {
            let reason = self.text("pause_reason");
            format!(
                "HALTED, sending nothing until HubSpot accepts (next try at {}): {}",
                self.text("paused_until"),
                reason.strip_prefix("halted: ").unwrap_or(&reason)
            )
        } else if self.fields.get("paused_now") == Some(&Value::Bool(true)) {
            format!(
                "until {}: {}",
                self.text("paused_until"),
                self.text("pause_reason")
            )
        } else {
            "none".into()
        };
        let eta = match self.f64("eta_s") {
            _ if backlog == 0.0 && to_sync == 0.0 => "nothing waiting".to_string(),
            _ if self.fields.get("halted_now") == Some(&Value::Bool(true)) => {
                "unknown: syncing is halted (see pause)".to_string()
            }
            Some(s) => format!(
                "{} (at the drain rate {}, at the rate limit {})",
                duration(s),
                self.f64("eta_at_drain_rate_s")
                    .map(duration)
                    .unwrap_or_else(|| "-".into()),
                duration(self.f64("eta_at_rate_limit_s").unwrap_or(0.0))
            ),
            None => {
                "unknown: nothing was processed in the last minute (is a worker running? see workers_by_generation and the pause)".into()
            }
        };
        let dlq = match self.fields.get("dlq_by_category") {
            Some(Value::Object(m)) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".into(),
        };
        let resets = match self.fields.get("day_resets_at") {
            None | Some(Value::Null) => String::new(),
            Some(_) => format!(
                "; the portal's day resets at {}",
                self.text("day_resets_at")
            ),
        };
        let budget = match self.fields.get("daily_budget") {
            None | Some(Value::Null) => format!(
                "not set (hubspot.daily_budget); {} requests today{resets}",
                self.text("used_today")
            ),
            Some(_) => format!(
                "{} used of {}, {} left{resets}",
                self.text("used_today"),
                self.text("daily_budget"),
                self.text("budget_left")
            ),
        };
        let rows: Vec<(&str, String)> = vec![
            ("outbox_backlog", self.text("outbox_backlog")),
            (
                "oldest_event_age",
                self.f64("oldest_event_age_s")
                    .map(duration)
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "drain_rate",
                format!(
                    "{} events/s taken from the outbox over the last minute",
                    self.text("drain_rate_per_s")
                ),
            ),
            ("eta", eta),
            ("objects_to_sync", self.text("objects_to_sync")),
            ("objects_backing_off", self.text("objects_backing_off")),
            (
                "associations_waiting",
                format!(
                    "{} contacts not yet associated with their company",
                    self.text("associations_waiting")
                ),
            ),
            ("dlq_rows", format!("{}; {dlq}", self.text("dlq_rows"))),
            ("dlq_parked", self.text("dlq_parked")),
            (
                "requests_last_10s",
                format!(
                    "{} (limit {}, {})",
                    self.text("requests_last_10s"),
                    self.text("rate_limit_per_10s"),
                    self.text("rate_limit_from")
                ),
            ),
            ("pause", pause),
            (
                "daily_remaining",
                format!("{} (as HubSpot last counted)", self.text("daily_remaining")),
            ),
            ("daily_budget", budget),
            ("generation_in_use", self.text("generation_in_use")),
            ("workers_by_generation", self.text("workers_by_generation")),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>width$} | {v}");
        }
        out
    }
}

/// `3h 02m`, `4m 10s`, `12s`.
pub(crate) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A bar of `width` cells, `done` of `total` filled.
pub(crate) fn progress_bar(done: f64, total: f64, width: usize) -> String {
    let share = if total > 0.0 {
        (done / total).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let filled = (share * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(width - filled),
        share * 100.0
    )
}

/// Prints one snapshot in `format`.
pub(crate) async fn print_once(
    pool: &PgPool,
    requests_per_10s: Option<u32>,
    format: Format,
) -> anyhow::Result<()> {
    let snap = Snapshot::read(pool, requests_per_10s).await?;
    match format {
        Format::Json => outln!("{}", Value::Object(snap.fields)),
        Format::Text => out!("{}", snap.render()),
    }
    Ok(())
}

/// Redraws the snapshot every 2 s until `cancel` fires, with a progress bar while a backlog
/// drains (measured from the largest backlog seen since watching began).
pub(crate) async fn watch(
    pool: &PgPool,
    requests_per_10s: Option<u32>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut largest = 0.0f64;
    while !cancel.is_cancelled() {
        let snap = Snapshot::read(pool, requests_per_10s).await?;
        let backlog = snap.f64("outbox_backlog").unwrap_or(0.0);
        largest = largest.max(backlog);
        let mut screen = String::from("\x1b[2J\x1b[H");
        let _ = writeln!(screen, "hubsync status, every 2 s (Ctrl-C to stop)\n");
        screen.push_str(&snap.render());
        if largest > 0.0 {
            let _ = writeln!(
                screen,
                "\n{} {} of {} events drained since watching began",
                progress_bar(largest - backlog, largest, 40),
                largest - backlog,
                largest
            );
        }
        out!("{screen}");
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    Ok(())
}
