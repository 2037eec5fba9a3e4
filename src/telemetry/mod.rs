//! What an on-call engineer sees of a running worker: logs on stderr (human-readable, or one
//! JSON object per line with `HUBSYNC_LOG_FORMAT=json`), Prometheus metrics and health checks
//! (`metrics`, `health`), one log line per batch and per ingest chunk.
//!
//! Each `Worker` owns a `Telemetry` handle with its own registry, so several workers in one
//! process (the tests) keep their counts apart. The worker code reports outcomes with one call
//! where they are known; the details a step learns on the way (the HTTP status of the last
//! request, the categories of refused events) are collected by `traced` around the step.

pub mod health;
pub mod metrics;
pub(crate) mod status;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;

use tracing_subscriber::EnvFilter;

use crate::core::dlq::Category;

pub use metrics::Telemetry;

/// The log formats `HUBSYNC_LOG_FORMAT` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// One human-readable line per event (the default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// Reads `HUBSYNC_LOG_FORMAT` (`json` or `text`; unset or empty: text).
    pub(crate) fn from_env() -> Result<LogFormat, String> {
        match std::env::var("HUBSYNC_LOG_FORMAT") {
            Err(_) => Ok(LogFormat::Text),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!(
                    "HUBSYNC_LOG_FORMAT={other:?} is not a log format; use \"json\" for one JSON object per line, or \"text\" (the default)"
                )),
            },
        }
    }
}

/// An error and its causes joined by ": ", as `{:#}` prints them, but leaving out a cause whose
/// words the text before it already holds: sqlx repeats a database error's message as its
/// source, which read "X: X" in every log line of an outage.
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Installs the global subscriber with `default` (e.g. `info`) unless `RUST_LOG` is set, in
/// the format `HUBSYNC_LOG_FORMAT` asks for; a second call is a no-op. An unknown format or a
/// `RUST_LOG` that is not a filter is reported on stderr, and the default is used.
pub fn init(default: &str) {
    let fallback = || EnvFilter::new(format!("{default},sqlx=warn,hyper=warn,reqwest=warn"));
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!(
                "warning: RUST_LOG={v:?} is not a log filter ({e}); logging at the default level ({default}). Use a level (error, warn, info, debug, trace) or target=level pairs, such as hubsync=debug"
            );
            fallback()
        }),
        _ => fallback(),
    };
    let format = LogFormat::from_env().unwrap_or_else(|e| {
        eprintln!("warning: {e}");
        LogFormat::Text
    });
    let _ = FORMAT.set(format);
    // Colours only for a person at a terminal: in a file, journald or `docker logs` the escape
    // codes would stand between a field's name, `=` and its value. NO_COLOR turns them off too.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Whether logs are JSON lines (`init` saw `HUBSYNC_LOG_FORMAT=json`).
pub(crate) fn json_logs() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// A message for the person running a command, on stderr: the plain text as it is, or, with
/// JSON logs, a log event at `level` so that every line of stderr stays one JSON object.
pub(crate) fn say(level: tracing::Level, text: &str) {
    if !json_logs() {
        eprintln!("{text}");
    } else if level == tracing::Level::ERROR {
        tracing::error!("{text}");
    } else if level == tracing::Level::WARN {
        tracing::warn!("{text}");
    } else {
        tracing::info!("{text}");
    }
}

/// What a step learned on the way, collected by `traced`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Trace {
    /// The HTTP status of the last request sent (`None`: none sent, or no answer).
    pub last_status: Option<u16>,
    /// The daily budget HubSpot reported with the last answer that carried it.
    pub daily_remaining: Option<u64>,
    /// Events dead-lettered, by category (only those in statements that were not undone).
    pub refused: BTreeMap<String, u64>,
}

tokio::task_local! {
    static TRACE: RefCell<Trace>;
}

/// Runs `step`, collecting what it reports through `note_*` into a `Trace`.
pub(crate) async fn traced<F: Future>(step: F) -> (F::Output, Trace) {
    TRACE
        .scope(RefCell::new(Trace::default()), async move {
            let out = step.await;
            let trace = TRACE.with(|t| t.take());
            (out, trace)
        })
        .await
}

fn note(f: impl FnOnce(&mut Trace)) {
    // Outside `traced` (a step called directly, e.g. by a test) there is nothing to collect.
    let _ = TRACE.try_with(|t| f(&mut t.borrow_mut()));
}

/// Notes events dead-lettered at ingest, by category (call once their DLQ rows are written).
pub(crate) fn note_refused(categories: impl IntoIterator<Item = Category>) {
    note(|t| {
        for c in categories {
            *t.refused.entry(c.as_str().to_string()).or_default() += 1;
        }
    });
}

/// Notes the answer to a request.
pub(crate) fn note_reply(status: Option<u16>, daily_remaining: Option<u64>) {
    note(|t| {
        t.last_status = status;
        if daily_remaining.is_some() {
            t.daily_remaining = daily_remaining;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::chain;

    /// A cause whose words the message already holds, as sqlx's database errors have.
    #[derive(Debug)]
    struct Repeats(&'static str, Option<Box<Repeats>>);

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let db = Repeats(
            "error returned from database: database \"x\" is not accepting connections",
            Some(Box::new(Repeats(
                "database \"x\" is not accepting connections",
                None,
            ))),
        );
        let e = anyhow::Error::new(db).context("ingest failed");
        assert_eq!(
            chain(&e),
            "ingest failed: error returned from database: database \"x\" is not accepting connections"
        );
        let plain = anyhow::anyhow!("refused").context("GET /x");
        assert_eq!(chain(&plain), format!("{plain:#}"));
    }
}
