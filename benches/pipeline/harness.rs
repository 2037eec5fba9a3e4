//! What every measure shares: the bench databases, the config, the HubSpot simulator, workers,
//! the outbox, the simulator's request log, number formatting and table output.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hubsync::config::Config;
use hubsync::hubspot::{HubSpotClient, Paths};
use hubsync::worker::Worker;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgExecutor, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The HubSpot simulator: every measure reaches it through these names only.
pub use hubspot_sim::{SimConfig, SimRequest, Simulator};

// ---------------------------------------------------------------------------------------------
// Databases.

pub fn admin_options(base_url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(base_url).with_context(|| {
        format!(
            "DATABASE_URL {} is not a Postgres URL",
            hubsync::db::redact(base_url)
        )
    })
}

/// `base_url` pointing at database `db` instead.
fn url_with_db(base_url: &str, db: &str) -> String {
    let (head, query) = base_url.split_once('?').unwrap_or((base_url, ""));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let cut = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{query}", &head[..cut])
}

/// A database of the benchmark's own, recreated empty and migrated.
pub struct BenchDb {
    name: String,
    pub url: String,
    base_url: String,
    pub pool: PgPool,
}

impl BenchDb {
    /// Drops and recreates `hubsync_bench_<scenario>`, then runs the migrations. With
    /// `BENCH_PG_LOG_MS=N` the server logs every statement of it slower than N ms.
    pub async fn fresh(base_url: &str, scenario: &str) -> anyhow::Result<BenchDb> {
        let name = format!("hubsync_bench_{scenario}");
        let mut conn = admin_options(base_url)?.connect().await?;
        sqlx::query(&(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot drop the previous {name}"))?;
        sqlx::query(&(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| {
                format!("cannot create {name}; the DATABASE_URL user needs CREATEDB")
            })?;
        if let Some(ms) = std::env::var("BENCH_PG_LOG_MS")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
        {
            sqlx::query(&(format!("ALTER DATABASE {name} SET log_min_duration_statement = {ms}")))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await.ok();
        let url = url_with_db(base_url, &name);
        let pool = hubsync::db::connect(&url, 4).await?;
        hubsync::db::migrate(&pool).await?;
        Ok(BenchDb {
            name,
            url,
            base_url: base_url.to_string(),
            pool,
        })
    }

    /// A pool as `hubsync run` sizes it for one worker.
    pub async fn worker_pool(&self, config: &Config) -> anyhow::Result<PgPool> {
        let size = 2 + u32::try_from(config.worker.concurrency).unwrap_or(4) * 2;
        hubsync::db::connect_worker(&self.url, size, &config.worker).await
    }

    pub async fn count(&self, sql: &'static str) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&self.pool).await?;
        Ok(n)
    }

    /// Objects waiting to be written to HubSpot.
    pub async fn dirty(&self) -> anyhow::Result<i64> {
        self.count("SELECT count(*) FROM hubsync.objects WHERE dirty")
            .await
    }

    pub async fn drop_db(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut conn = admin_options(&self.base_url)?.connect().await?;
        sqlx::query(&(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Config, simulator and workers.

/// The benchmarks' config: the example's properties, with the rate settings given.
pub fn config_text(requests_per_10s: u32, window_ms: u64) -> String {
    format!(
        r#"[hubspot]
requests_per_10s = {requests_per_10s}
rate_window_ms   = {window_ms}
property_group   = "product_signals"

[contacts.properties.total_sessions]
type  = "number"
merge = "increment"

[contacts.properties.last_active_at]
type  = "datetime"
merge = "max"

[contacts.properties.current_plan]
type    = "enumeration"
options = ["free", "pro", "enterprise"]
merge   = "set"

[companies]
id_property = "product_account_id"

[companies.properties.seats]
type  = "number"
merge = "set"
"#
    )
}

fn config(requests_per_10s: u32, window_ms: u64) -> anyhow::Result<Arc<Config>> {
    let mut text = config_text(requests_per_10s, window_ms);
    // BENCH_INGEST_CHUNK=N measures another `worker.ingest_chunk` (P3 uses it for both loops).
    if let Ok(chunk) = std::env::var("BENCH_INGEST_CHUNK") {
        text.push_str(&format!("\n[worker]\ningest_chunk = {}\n", chunk.trim()));
    }
    Ok(Arc::new(Config::parse(Path::new("bench.toml"), &text)?))
}

/// The simulator on a loopback port, allowing `requests_per_window` per `window` (0: no limit),
/// without request bodies in its log.
pub async fn start_sim(requests_per_window: u32, window: Duration) -> anyhow::Result<Simulator> {
    Simulator::start(SimConfig {
        requests_per_window,
        window,
        log_bodies: false,
        ..SimConfig::default()
    })
    .await
    .context("cannot start the HubSpot simulator on a loopback port")
}

pub fn client(sim: &Simulator, config: &Config) -> anyhow::Result<HubSpotClient> {
    HubSpotClient::new(
        &sim.base_url(),
        "sim-token",
        Paths::new(config.hubspot.api_version),
        config.hubspot.request_timeout,
    )
}

/// A fresh database, a simulator and a config, with the properties already created in the
/// simulator as `hubsync run` does at start.
pub struct Rig {
    pub db: BenchDb,
    pub sim: Simulator,
    pub config: Arc<Config>,
}

impl Rig {
    /// The simulator allows `sim_limit` requests per `window_ms` (0: no limit); the config
    /// sets `requests_per_10s` and `rate_window_ms = window_ms`.
    pub async fn start(
        base_url: &str,
        scenario: &str,
        sim_limit: u32,
        requests_per_10s: u32,
        window_ms: u64,
    ) -> anyhow::Result<Rig> {
        let db = BenchDb::fresh(base_url, scenario).await?;
        let sim = start_sim(sim_limit, Duration::from_millis(window_ms)).await?;
        let config = config(requests_per_10s, window_ms)?;
        hubsync::reconcile::ensure(&client(&sim, &config)?.into(), &config).await?;
        Ok(Rig { db, sim, config })
    }

    /// A worker on `pool`.
    pub async fn worker_on(&self, pool: PgPool) -> anyhow::Result<Worker> {
        Worker::new(pool, self.config.clone(), client(&self.sim, &self.config)?).await
    }

    /// A worker with a pool of its own, sized as `hubsync run` sizes it.
    pub async fn worker(&self) -> anyhow::Result<Arc<Worker>> {
        let pool = self.db.worker_pool(&self.config).await?;
        Ok(Arc::new(self.worker_on(pool).await?))
    }

    pub async fn finish(self) -> anyhow::Result<()> {
        self.sim.shutdown().await;
        self.db.drop_db().await
    }
}

/// Workers running `Worker::run` until `stop`.
#[derive(Default)]
pub struct Running {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn spawn(&mut self, worker: Arc<Worker>) {
        self.tasks
            .push(tokio::spawn(worker.run(self.cancel.clone())));
    }

    /// Whether some worker has already returned.
    pub fn any_finished(&self) -> bool {
        self.tasks.iter().any(JoinHandle::is_finished)
    }

    /// Cancels every worker and waits for each.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for task in self.tasks {
            task.await.context("a worker panicked")??;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The outbox.

/// How a load draws its event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventIds {
    /// `gen_random_uuid()`: version 4, random.
    Random,
    /// `hubsync.new_event_id()`: version 7, its first bits the time of the draw.
    TimeOrdered,
}

impl EventIds {
    /// The SQL expression that draws one.
    pub fn sql(self) -> &'static str {
        match self {
            EventIds::Random => "gen_random_uuid()",
            EventIds::TimeOrdered => "hubsync.new_event_id()",
        }
    }
}

/// Loads `events` contact events over `contacts` contacts (event g goes to contact g mod
/// `contacts`) with one INSERT ... SELECT, then VACUUM ANALYZE; returns the time it took.
pub async fn load_outbox(
    pool: &PgPool,
    events: usize,
    contacts: usize,
) -> anyhow::Result<Duration> {
    load_outbox_with(pool, events, contacts, EventIds::Random).await
}

/// [`load_outbox`] with event ids drawn as `ids` says.
pub async fn load_outbox_with(
    pool: &PgPool,
    events: usize,
    contacts: usize,
    ids: EventIds,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sqlx::query(&format!(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at)
         SELECT {}, 'contact', 'user' || (g % $2) || '@example.com',
                jsonb_build_object(
                    'total_sessions', 1,
                    'last_active_at', 1767225600000 + g * 1000,
                    'current_plan', (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3]),
                timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => g::float8 / 1000)
         FROM generate_series(0::int8, $1 - 1) AS g
         ORDER BY g",
        ids.sql()
    ))
    .bind(i64::try_from(events)?)
    .bind(i64::try_from(contacts.max(1))?)
    .execute(pool)
    .await
    .context("failed to load the outbox")?;
    sqlx::query("VACUUM ANALYZE hubsync.outbox")
        .execute(pool)
        .await?;
    Ok(started.elapsed())
}

/// One contact event through `hubsync.enqueue`, as an application enqueues it.
pub async fn enqueue_contact<'e>(
    db: impl PgExecutor<'e>,
    key: &str,
    properties: &Value,
) -> anyhow::Result<()> {
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => $1, object_type => 'contact', object_key => $2,
                                properties => $3::jsonb)",
    )
    .bind(Uuid::new_v4())
    .bind(key)
    .bind(properties.to_string())
    .execute(db)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The simulator's request log.

/// The batch upserts among `requests`.
pub fn upserts(requests: &[SimRequest]) -> Vec<&SimRequest> {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/batch/upsert"))
        .collect()
}

pub fn is_2xx(r: &SimRequest) -> bool {
    (200..300).contains(&r.status)
}

/// The mean number of inputs per request.
pub fn mean_inputs(requests: &[&SimRequest]) -> f64 {
    requests.iter().map(|r| r.inputs).sum::<usize>() as f64 / requests.len().max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// Output.

pub fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

pub fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

pub fn pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// Prints an aligned markdown table.
pub fn table(title: &str, columns: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!("{title}\n");
    println!("{}", line(columns.iter().map(|c| c.to_string()).collect()));
    println!(
        "{}",
        line(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())
    );
    for row in rows {
        println!("{}", line(row.clone()));
    }
    println!();
}
