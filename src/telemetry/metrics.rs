//! The Prometheus series of one worker (`docs/ARCHITECTURE.md` §1 names them), its readiness, and the log
//! line per batch and per ingest chunk.
//!
//! Counters and histograms count what this process did. The gauges that describe the shared
//! queue (backlog, oldest age, dirty objects, DLQ rows, daily budget) are read from the
//! database at most once per `QUEUE_REFRESH`, when a scrape asks for them, so scrapes never
//! load the database however often they come.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use sqlx::PgPool;

use super::Trace;
use crate::core::dlq::Category;
use crate::core::vocabulary::ObjectType;
use crate::hubspot::{Reply, Transport};
use crate::worker::SyncReport;
use crate::worker::ingest::Ingested;

/// The oldest queue gauges a scrape may be answered with.
pub(crate) const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Label sets: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// A worker's metrics registry and readiness, cheap to clone (one shared inside).
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    events_ingested: Counter,
    events_dead_lettered: Family<Labels, Counter>,
    objects_synced: Family<Labels, Counter>,
    objects_dead_lettered: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    request_duration: Histogram,
    batch_inputs: Histogram,
    rate_limited: Family<Labels, Counter>,
    backlog: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    dirty: Family<Labels, Gauge>,
    dlq_rows: Family<Labels, Gauge>,
    daily_budget: Gauge,
    queue_fresh: Gauge,
    halted: Gauge,
    ready: Gauge,
    /// Every DLQ category seen, so that one whose rows are gone reads 0.
    dlq_categories: Mutex<BTreeSet<String>>,
    /// Whether the last read of the queue gauges succeeded.
    database_ok: AtomicBool,
    /// When the queue gauges were last read (held while reading, so one scrape reads).
    queue_read: tokio::sync::Mutex<Option<Instant>>,
    reconciled: AtomicBool,
    standing_aside: AtomicBool,
    /// Why syncing was last halted, as the worker logged it.
    halt_reason: Mutex<Option<String>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Taking work.
    Ready,
    /// Not taking work, and why (one reason per line).
    NotReady(Vec<String>),
}

impl Telemetry {
    /// A fresh registry with every series registered (counters at 0).
    pub(crate) fn new() -> Telemetry {
        let mut r = Registry::with_prefix("hubsync");
        let events_ingested = register(
            &mut r,
            "events_ingested",
            "Outbox rows this worker consumed: folded, dead-lettered, or dropped as already delivered",
            Counter::default(),
        );
        let events_dead_lettered = register(
            &mut r,
            "events_dead_lettered",
            "Events this worker refused at ingest and wrote to hubsync.dlq, by category",
            Family::<Labels, Counter>::default(),
        );
        let objects_synced = register(
            &mut r,
            "objects_synced",
            "Objects this worker wrote to HubSpot and recorded clean, by object type",
            Family::<Labels, Counter>::default(),
        );
        let objects_dead_lettered = register(
            &mut r,
            "objects_dead_lettered",
            "Objects this worker moved to hubsync.dlq after HubSpot refused them, by object type",
            Family::<Labels, Counter>::default(),
        );
        let requests = register(
            &mut r,
            "hubspot_requests",
            "Batch requests this worker sent to HubSpot, by endpoint and outcome",
            Family::<Labels, Counter>::default(),
        );
        let request_duration = register(
            &mut r,
            "hubspot_request_duration_seconds",
            "Time from sending a batch request to reading its whole answer",
            Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        );
        let batch_inputs = register(
            &mut r,
            "batch_inputs",
            "Objects leased per batch",
            Histogram::new([1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0]),
        );
        let rate_limited = register(
            &mut r,
            "rate_limited",
            "429 answers from HubSpot, by policy (ten_secondly_rolling, daily)",
            Family::<Labels, Counter>::default(),
        );
        let backlog = register(
            &mut r,
            "outbox_backlog",
            "Events waiting in hubsync.outbox (all workers)",
            Gauge::default(),
        );
        let oldest_age = register(
            &mut r,
            "outbox_oldest_age_seconds",
            "Age of the oldest event waiting in hubsync.outbox (0 when empty)",
            Gauge::<f64, AtomicU64>::default(),
        );
        let dirty = register(
            &mut r,
            "objects_dirty",
            "Objects waiting to be written to HubSpot, by object type",
            Family::<Labels, Gauge>::default(),
        );
        let dlq_rows = register(
            &mut r,
            "dlq_rows",
            "Rows in hubsync.dlq, by category",
            Family::<Labels, Gauge>::default(),
        );
        let daily_budget = register(
            &mut r,
            "daily_budget_remaining",
            "Requests left today: the fewer of HubSpot's last reported count and what hubspot.daily_budget leaves (-1: neither known yet)",
            Gauge::default(),
        );
        let queue_fresh = register(
            &mut r,
            "queue_gauges_fresh",
            "1 when the queue gauges (backlog, oldest age, objects dirty, DLQ rows, daily budget) were read from the database for this scrape; 0 when that read failed and they hold the last values read",
            Gauge::default(),
        );
        let halted = register(
            &mut r,
            "halted",
            "1 while syncing is halted (HubSpot refuses this worker's credentials, the endpoint or the company key property), else 0",
            Gauge::default(),
        );
        let ready = register(
            &mut r,
            "ready",
            "1 while this worker takes work (what /readyz answers 200 for), else 0",
            Gauge::default(),
        );
        daily_budget.set(-1);
        // The usual series exist (at 0) before anything happens, so that rates and alerts
        // see them from the first scrape.
        for kind in [ObjectType::Contact, ObjectType::Company] {
            let _ = objects_synced.get_or_create(&object_type(kind));
            let _ = objects_dead_lettered.get_or_create(&object_type(kind));
            let _ = dirty.get_or_create(&object_type(kind));
            let _ = requests.get_or_create(&vec![
                ("endpoint", batch_endpoint(kind).to_string()),
                ("outcome", "ok".to_string()),
            ]);
        }
        for c in Category::EVENT {
            let _ = events_dead_lettered.get_or_create(&vec![("category", c.to_string())]);
        }
        // Every category from the start: the first rows of one must be a rise from 0, or an
        // alert on the gauge's change could not see them.
        for c in Category::ALL {
            let _ = dlq_rows.get_or_create(&vec![("category", c.to_string())]);
        }
        for p in ["ten_secondly_rolling", "daily"] {
            let _ = rate_limited.get_or_create(&vec![("policy", p.to_string())]);
        }
        Telemetry {
            inner: Arc::new(Inner {
                registry: r,
                events_ingested,
                events_dead_lettered,
                objects_synced,
                objects_dead_lettered,
                requests,
                request_duration,
                batch_inputs,
                rate_limited,
                backlog,
                oldest_age,
                dirty,
                dlq_rows,
                daily_budget,
                queue_fresh,
                halted,
                ready,
                dlq_categories: Mutex::new(Category::ALL.iter().map(|c| c.to_string()).collect()),
                database_ok: AtomicBool::new(true),
                queue_read: tokio::sync::Mutex::new(None),
                reconciled: AtomicBool::new(false),
                standing_aside: AtomicBool::new(false),
                halt_reason: Mutex::new(None),
            }),
        }
    }

    /// The registry in Prometheus text format (the queue gauges as last read; the database
    /// counts as reachable when that read succeeded).
    pub fn render(&self) -> String {
        let database = if self.inner.database_ok.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the last read of the queue gauges failed".to_string())
        };
        let ready = self.readiness(database) == Readiness::Ready;
        self.inner.ready.set(i64::from(ready));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }

    /// Re-reads the queue gauges from the database unless they were read less than
    /// `QUEUE_REFRESH` ago; concurrent callers wait for one read. A failed read keeps the
    /// previous values and is logged.
    pub(crate) async fn refresh_queue(&self, pool: &PgPool) {
        let mut last = self.inner.queue_read.lock().await;
        if last.is_some_and(|at| at.elapsed() < QUEUE_REFRESH) {
            return;
        }
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            crate::db::status::queue_gauges(pool),
        )
        .await;
        let fresh = matches!(read, Ok(Ok(_)));
        self.inner.database_ok.store(fresh, Ordering::Relaxed);
        self.inner.queue_fresh.set(i64::from(fresh));
        match read {
            Ok(Ok(q)) => {
                let i = &self.inner;
                i.backlog.set(q.backlog);
                i.oldest_age.set(q.oldest_age_s);
                i.daily_budget.set(q.daily_remaining.unwrap_or(-1));
                for kind in [ObjectType::Contact, ObjectType::Company] {
                    let n = q.dirty.get(kind.as_str()).copied().unwrap_or(0);
                    i.dirty.get_or_create(&object_type(kind)).set(n);
                }
                // Categories whose rows are all gone read 0, not their last count.
                if let Ok(mut seen) = i.dlq_categories.lock() {
                    seen.extend(q.dlq.keys().cloned());
                    for category in seen.iter() {
                        let n = q.dlq.get(category).copied().unwrap_or(0);
                        i.dlq_rows
                            .get_or_create(&vec![("category", category.clone())])
                            .set(n);
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(
                "metrics: cannot read the queue gauges from the database: {e}; serving the last values"
            ),
            Err(_) => tracing::warn!(
                "metrics: the database did not answer the queue gauges' query within 3 s; serving the last values"
            ),
        }
        *last = Some(Instant::now());
    }

    /// Marks the portal's properties as reconciled with the config (`hubsync run` start-up).
    pub fn set_reconciled(&self) {
        self.inner.reconciled.store(true, Ordering::Relaxed);
    }

    /// Notes whether this worker stands aside for a newer config generation.
    pub(crate) fn set_standing_aside(&self, aside: bool) {
        self.inner.standing_aside.store(aside, Ordering::Relaxed);
    }

    /// Whether syncing is halted: HubSpot refused the credentials, the endpoint or the company
    /// key property.
    pub(crate) fn halted(&self) -> bool {
        self.inner.halted.get() != 0
    }

    /// Notes that syncing is halted, and why (what `/readyz` then says).
    pub(crate) fn set_halted(&self, reason: &str) {
        self.inner.halted.set(1);
        if let Ok(mut r) = self.inner.halt_reason.lock() {
            *r = Some(reason.to_string());
        }
    }

    /// What `/readyz` answers: `database` is whether the database answered just now.
    pub fn readiness(&self, database: Result<(), String>) -> Readiness {
        let mut why = Vec::new();
        if let Err(e) = database {
            why.push(format!(
                "database unreachable: {e}; check DATABASE_URL and that Postgres is up"
            ));
        }
        if !self.inner.reconciled.load(Ordering::Relaxed) {
            why.push(
                "properties not reconciled yet: start-up is still creating or checking the portal's properties".into(),
            );
        }
        if self.halted() {
            let reason = self
                .inner
                .halt_reason
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or_else(|| {
                    "HubSpot refuses the access token; set HUBSPOT_ACCESS_TOKEN to a valid private app token".into()
                });
            why.push(format!(
                "halted: {reason} (the worker tries again every worker.auth_probe_secs and resumes by itself once HubSpot accepts)"
            ));
        }
        if self.inner.standing_aside.load(Ordering::Relaxed) {
            why.push(
                "standing aside: workers with a newer hubsync.toml are running; stop this worker to finish the rollout".into(),
            );
        }
        if why.is_empty() {
            Readiness::Ready
        } else {
            Readiness::NotReady(why)
        }
    }

    /// Sends a batch upsert of `kind` (`send`), counting it by outcome and timing it.
    pub(crate) async fn batch_upsert(
        &self,
        kind: ObjectType,
        send: impl Future<Output = Result<Reply, Transport>>,
    ) -> Result<Reply, Transport> {
        self.timed(batch_endpoint(kind), send).await
    }

    /// Sends any other request (`send`) to `endpoint`, counting it by outcome and timing it.
    pub(crate) async fn timed(
        &self,
        endpoint: &'static str,
        send: impl Future<Output = Result<Reply, Transport>>,
    ) -> Result<Reply, Transport> {
        let started = Instant::now();
        let reply = send.await;
        self.request_done(endpoint, &reply, started.elapsed());
        reply
    }

    /// Counts one request's outcome and duration (and a 429 by policy).
    pub(crate) fn request_done(
        &self,
        endpoint: &'static str,
        reply: &Result<Reply, Transport>,
        took: Duration,
    ) {
        let i = &self.inner;
        let outcome = outcome(reply);
        i.requests
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        i.request_duration.observe(took.as_secs_f64());
        match reply {
            Ok(r) => {
                if r.status == 429 {
                    i.rate_limited
                        .get_or_create(&vec![("policy", rate_policy(&r.body))])
                        .inc();
                }
                if (200..300).contains(&r.status) && i.halted.get() != 0 {
                    i.halted.set(0);
                    tracing::info!("HubSpot accepts this worker's requests again; syncing resumes");
                }
                if let Some(d) = r.rate.daily_remaining {
                    i.daily_budget.set(i64::try_from(d).unwrap_or(i64::MAX));
                }
                super::note_reply(Some(r.status), r.rate.daily_remaining);
            }
            Err(_) => super::note_reply(None, None),
        }
    }

    /// Runs one sync step (a batch of `kind`), then records and logs it.
    pub(crate) async fn batch(
        &self,
        kind: ObjectType,
        step: impl Future<Output = anyhow::Result<SyncReport>>,
    ) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let (report, trace) = super::traced(step).await;
        self.batch_done(kind, &report, &trace, started.elapsed());
        report
    }

    /// Runs one ingest step (a chunk whose claim began at `started`), then records and logs it.
    pub(crate) async fn ingest(
        &self,
        started: Instant,
        step: impl Future<Output = anyhow::Result<Ingested>>,
    ) -> anyhow::Result<Ingested> {
        let (done, trace) = super::traced(step).await;
        self.ingest_done(&done, &trace, started.elapsed());
        done
    }

    /// Records one sync step (a batch of `kind`) and logs it; a step that leased nothing is
    /// neither counted nor logged.
    pub(crate) fn batch_done(
        &self,
        kind: ObjectType,
        report: &anyhow::Result<SyncReport>,
        trace: &Trace,
        took: Duration,
    ) {
        let Ok(r) = report else { return };
        let i = &self.inner;
        // A halt is noted where it is decided (`Worker::halt`), with its reason.
        if r.leased == 0 {
            return;
        }
        i.batch_inputs.observe(r.leased as f64);
        i.objects_synced
            .get_or_create(&object_type(kind))
            .inc_by(r.written as u64);
        if r.dead_lettered > 0 {
            i.objects_dead_lettered
                .get_or_create(&object_type(kind))
                .inc_by(r.dead_lettered as u64);
        }
        let budget = trace
            .daily_remaining
            .map(|d| i64::try_from(d).unwrap_or(i64::MAX))
            .unwrap_or(i.daily_budget.get());
        tracing::info!(
            object_type = kind.as_str(),
            inputs = r.leased,
            written = r.written,
            refused = r.dead_lettered,
            retried = r.retrying,
            released = r.released,
            requests = r.requests,
            http_status = trace.last_status,
            duration_ms = took.as_millis() as u64,
            daily_budget_left = (budget >= 0).then_some(budget),
            halted = r.halted,
            "batch"
        );
    }

    /// Records one ingest chunk and logs it; an empty claim is neither counted nor logged.
    pub(crate) fn ingest_done(
        &self,
        done: &anyhow::Result<Ingested>,
        trace: &Trace,
        took: Duration,
    ) {
        let Ok(d) = done else { return };
        let consumed = d.claimed.saturating_sub(d.deferred);
        if d.claimed == 0 {
            return;
        }
        let i = &self.inner;
        i.events_ingested.inc_by(consumed as u64);
        for (category, n) in &trace.refused {
            i.events_dead_lettered
                .get_or_create(&vec![("category", category.clone())])
                .inc_by(*n);
        }
        tracing::info!(
            claimed = d.claimed,
            folded = d.accepted,
            dead_lettered = d.refused,
            deferred = d.deferred,
            duration_ms = took.as_millis() as u64,
            "ingest chunk"
        );
    }

    /// The current value of a counter or gauge series in the rendered text, e.g.
    /// `value_of("hubsync_events_ingested_total")` or
    /// `value_of("hubsync_dlq_rows{category=\"invalid_event\"}")` (tests, scripts).
    pub fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

/// The `endpoint` label of a batch upsert of `kind`.
fn batch_endpoint(kind: ObjectType) -> &'static str {
    match kind {
        ObjectType::Contact => "contacts/batch/upsert",
        ObjectType::Company => "companies/batch/upsert",
    }
}

/// Registers `metric` under `name` and returns it (a handle on the registered one).
fn register<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

fn object_type(kind: ObjectType) -> Labels {
    vec![("object_type", kind.as_str().to_string())]
}

/// The `outcome` label of a request.
pub(crate) fn outcome(reply: &Result<Reply, Transport>) -> &'static str {
    match reply {
        Ok(r) => match r.status {
            200..=299 => "ok",
            429 => "rate_limited",
            401 | 403 => "auth_refused",
            // Locked, or a portal migration: HubSpot's own trouble, retried like a 5xx.
            423 | 477 => "server_error",
            400..=499 => "client_error",
            _ => "server_error",
        },
        Err(Transport::Timeout) => "timeout",
        Err(Transport::Connection(_)) => "connection_error",
    }
}

/// The `policy` label of a 429: HubSpot's `policyName`, lower-cased (`unknown` without one).
fn rate_policy(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("policyName")?.as_str().map(str::to_ascii_lowercase))
        .filter(|p| {
            !p.is_empty()
                && p.len() <= 64
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::Telemetry;
    use serde_json::Value;

    /// Every series the exporter emits: counters with `_total`, histograms with `_bucket`,
    /// `_sum` and `_count`, gauges as they are.
    fn emitted() -> Vec<String> {
        let text = Telemetry::new().render();
        let mut names = Vec::new();
        for rest in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match kind {
                "counter" => names.push(format!("{name}_total")),
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.push(format!("{name}{suffix}"));
                    }
                }
                _ => names.push(name.to_string()),
            }
        }
        names
    }

    /// The `hubsync_*` series an expression names.
    fn series_in(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("hubsync_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    }

    fn repo_file(path: &str) -> String {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    #[test]
    fn the_exporter_emits_every_series_of_the_contract() {
        let emitted = emitted();
        for series in [
            "hubsync_events_ingested_total",
            "hubsync_events_dead_lettered_total",
            "hubsync_objects_synced_total",
            "hubsync_hubspot_requests_total",
            "hubsync_hubspot_request_duration_seconds_bucket",
            "hubsync_batch_inputs_bucket",
            "hubsync_rate_limited_total",
            "hubsync_outbox_backlog",
            "hubsync_outbox_oldest_age_seconds",
            "hubsync_objects_dirty",
            "hubsync_dlq_rows",
            "hubsync_daily_budget_remaining",
            "hubsync_halted",
            "hubsync_queue_gauges_fresh",
        ] {
            assert!(emitted.iter().any(|e| e == series), "{series}: {emitted:?}");
        }
    }

    #[test]
    fn every_alert_rule_names_only_series_the_exporter_emits() {
        let emitted = emitted();
        let rules: Value = serde_norway::from_str(&repo_file("monitoring/alerts.yml"))
            .expect("monitoring/alerts.yml is YAML");
        let mut names = Vec::new();
        for group in rules["groups"].as_array().expect("a list of groups") {
            for rule in group["rules"].as_array().expect("each group has rules") {
                let name = rule["alert"].as_str().expect("each rule is an alert");
                let expr = rule["expr"].as_str().expect("each rule has an expr");
                assert!(rule["annotations"]["summary"].is_string(), "{name}");
                let used = series_in(expr);
                assert!(!used.is_empty(), "{name} names no hubsync series: {expr}");
                for s in used {
                    assert!(emitted.contains(&s), "{name} names {s}, never emitted");
                }
                names.push(name.to_string());
            }
        }
        for wanted in [
            "HubsyncBacklogOld",
            "HubsyncDeadLetterGrowing",
            "HubsyncHaltedOnCredentials",
            "HubsyncRateLimited",
            "HubsyncWorkerNotReady",
        ] {
            assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
        }
    }

    #[test]
    fn every_dashboard_panel_queries_series_the_exporter_emits() {
        let emitted = emitted();
        let dash: Value = serde_json::from_str(&repo_file("monitoring/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
        let panels = dash["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        for p in panels {
            // Prometheus's own `up` may join a panel; each panel shows some hubsync series.
            let mut used = Vec::new();
            for t in p["targets"].as_array().expect("targets") {
                used.extend(series_in(t["expr"].as_str().expect("expr")));
            }
            assert!(!used.is_empty(), "{} shows no hubsync series", p["title"]);
            for s in used {
                assert!(emitted.contains(&s), "{}: {s} is never emitted", p["title"]);
            }
        }
    }

    #[test]
    fn compose_prometheus_scrapes_the_worker_with_the_repository_rules() {
        let compose: Value = serde_norway::from_str(&repo_file("docker-compose.yml"))
            .expect("docker-compose.yml is YAML");
        let listen = compose["services"]["worker"]["environment"]["HUBSYNC_METRICS_LISTEN"]
            .as_str()
            .expect("the worker serves metrics");
        let port = listen.rsplit(':').next().expect("a port");
        let prometheus = &compose["services"]["prometheus"];
        for volume in prometheus["volumes"].as_array().expect("volumes") {
            let host = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .expect("a path");
            repo_file(host.trim_start_matches("./"));
        }
        let scrape: Value = serde_norway::from_str(&repo_file("monitoring/prometheus.yml"))
            .expect("monitoring/prometheus.yml is YAML");
        let targets = &scrape["scrape_configs"][0]["static_configs"][0]["targets"];
        assert_eq!(targets[0], format!("worker:{port}"));
        assert_eq!(scrape["rule_files"][0], "/etc/prometheus/alerts.yml");
    }

    #[tokio::test]
    async fn queue_gauges_a_failed_read_left_as_they_were_say_so() {
        let t = Telemetry::new();
        // Nothing listens on port 1: the read fails at once.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
            .unwrap();
        t.refresh_queue(&pool).await;
        let text = t.render();
        assert_eq!(
            Telemetry::value_of(&text, "hubsync_queue_gauges_fresh"),
            Some(0.0)
        );
        assert_eq!(Telemetry::value_of(&text, "hubsync_ready"), Some(0.0));
    }

    #[test]
    fn value_of_reads_a_series_with_and_without_labels() {
        let text = Telemetry::new().render();
        assert_eq!(Telemetry::value_of(&text, "hubsync_halted"), Some(0.0));
        assert_eq!(
            Telemetry::value_of(&text, "hubsync_daily_budget_remaining"),
            Some(-1.0)
        );
        assert_eq!(
            Telemetry::value_of(&text, "hubsync_objects_dirty{object_type=\"contact\"}"),
            Some(0.0)
        );
        assert_eq!(Telemetry::value_of(&text, "hubsync_nothing"), None);
    }
}
