//! The pipeline benchmarks P1–P5 of `docs/ARCHITECTURE.md` §4: a program that prints one table per
//! measure and asserts nothing on time (`BENCHMARKS.md` records the latest results).
//!
//! Run: `cargo bench --bench pipeline -- <p1|p2|p3|p4|p5|all> [--events N]`. Each scenario
//! recreates its own database `hubsync_bench_<scenario>` on the `DATABASE_URL` server, starts
//! the HubSpot simulator in-process, and drops the database when it is done. It must not
//! leave processes running: P5's worker child is always waited for.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hubspot_sim::{SimConfig, SimRequest, Simulator};
use hubsync::config::{Config, DEFAULT_DATABASE_URL};
use hubsync::hubspot::{HubSpotClient, Paths};
use hubsync::schema::ObjectKind;
use hubsync::worker::Worker;
use reqwest::Method;
use serde_json::{Map, Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USAGE: &str = "usage: cargo bench --bench pipeline -- <p1|p2|p3|p4|p5|p6|p8|all>... [options]
  --events N      P3/P5: outbox events (default 1000000), over N/10 contacts
  --limit L       P1: requests allowed per window (default 20)
  --window-ms W   P1: the rate window, simulator and worker alike (default 1000)
  --windows K     P1: windows measured after the first request (default 15)
  --samples S     P4: latency samples (default 200)
env: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres); BENCH_LOG=1 shows logs;
  BENCH_PG_LOG_MS=N has Postgres log this run's statements slower than N ms (server log)";

/// The claim statement of `db::ingest::claim_outbox`, run bare for P3's yardstick.
const BARE_CLAIM: &str = "WITH picked AS MATERIALIZED (
         SELECT id FROM hubsync.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
     )
     DELETE FROM hubsync.outbox o USING picked WHERE o.id = picked.id
     RETURNING o.id AS seq, o.event_id, o.object_type, o.object_key,
               o.properties::text AS properties, o.occurred_at, o.company_key";

/// Command-line options.
#[derive(Debug, Clone)]
struct Args {
    scenarios: Vec<String>,
    events: usize,
    limit: u32,
    window_ms: u64,
    windows: u32,
    samples: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        scenarios: Vec::new(),
        events: 1_000_000,
        limit: 20,
        window_ms: 1000,
        windows: 15,
        samples: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let v = it
                .next()
                .with_context(|| format!("{name} needs a number\n{USAGE}"))?;
            v.replace('_', "")
                .parse()
                .with_context(|| format!("{name} {v}: not a number\n{USAGE}"))
        };
        match a.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--events" => args.events = usize::try_from(value("--events")?)?.max(1),
            "--limit" => args.limit = u32::try_from(value("--limit")?)?.max(1),
            "--window-ms" => args.window_ms = value("--window-ms")?.max(100),
            "--windows" => args.windows = u32::try_from(value("--windows")?)?.max(1),
            "--samples" => args.samples = usize::try_from(value("--samples")?)?.max(1),
            "p1" | "p2" | "p3" | "p4" | "p5" | "p6" | "p8" => args.scenarios.push(a),
            "all" => args
                .scenarios
                .extend(["p1", "p2", "p3", "p4", "p5", "p6", "p8"].map(String::from)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.scenarios.is_empty() {
        bail!("name at least one scenario\n{USAGE}");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::var("BENCH_LOG").is_ok() {
        hubsync::telemetry::init("info");
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let base_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    print_machine(&base_url).await?;
    for s in &args.scenarios {
        let started = Instant::now();
        match s.as_str() {
            "p1" => p1(&args, &base_url).await?,
            "p2" => p2(&base_url).await?,
            "p3" => p3(&args, &base_url).await?,
            "p4" => p4(&args, &base_url).await?,
            "p5" => p5(&args, &base_url).await?,
            "p6" => p6(&base_url).await?,
            "p8" => p8(&base_url).await?,
            _ => unreachable!("parse_args only accepts p1..p8"),
        }
        println!("({s} took {:.0} s)\n", started.elapsed().as_secs_f64());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared parts: the machine, tables, databases, config, simulator, outbox loading.

/// Prints an aligned markdown table.
fn table(title: &str, columns: &[&str], rows: &[Vec<String>]) {
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

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    })
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Prints the machine, the Postgres server and the commit every result belongs to.
async fn print_machine(base_url: &str) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".to_string(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            // Only changes to what is measured matter (Cargo.toml holds this bench's entry).
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
                "migrations",
                "Cargo.lock",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} (src/ has uncommitted changes)")
            } else {
                c
            }
        }
        None => "unknown (no git)".into(),
    };
    let mut conn = admin_options(base_url)?.connect().await.with_context(|| {
        format!(
            "cannot connect to Postgres at {}; start it or set DATABASE_URL",
            hubsync::db::redact(base_url)
        )
    })?;
    let (pg,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await.ok();
    table(
        "## machine",
        &[
            "nproc",
            "memory",
            "CPU",
            "PostgreSQL",
            "DATABASE_URL",
            "commit",
            "run at (UTC)",
        ],
        &[vec![
            cpus.to_string(),
            memory,
            cpu,
            pg,
            hubsync::db::redact(base_url),
            commit,
            chrono::Utc::now().format("%Y-%m-%d %H:%M").to_string(),
        ]],
    );
    Ok(())
}

fn admin_options(base_url: &str) -> anyhow::Result<PgConnectOptions> {
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
struct BenchDb {
    name: String,
    url: String,
    base_url: String,
    pool: PgPool,
}

impl BenchDb {
    async fn fresh(base_url: &str, scenario: &str) -> anyhow::Result<BenchDb> {
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
        // Diagnosis: have the server log every statement of this database slower than N ms.
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
    async fn worker_pool(&self, config: &Config) -> anyhow::Result<PgPool> {
        let size = 2 + u32::try_from(config.worker.concurrency).unwrap_or(4) * 2;
        hubsync::db::connect_worker(&self.url, size, &config.worker).await
    }

    async fn count(&self, sql: &'static str) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&self.pool).await?;
        Ok(n)
    }

    async fn drop_db(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut conn = admin_options(&self.base_url)?.connect().await?;
        sqlx::query(&(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(())
    }
}

/// The benchmarks' config: the example's properties, with the rate settings given.
fn config_text(requests_per_10s: u32, window_ms: u64) -> String {
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
    let text = config_text(requests_per_10s, window_ms);
    Ok(Arc::new(Config::parse(Path::new("bench.toml"), &text)?))
}

async fn start_sim(requests_per_window: u32, window: Duration) -> anyhow::Result<Simulator> {
    Simulator::start(SimConfig {
        requests_per_window,
        window,
        log_bodies: false,
        ..SimConfig::default()
    })
    .await
    .context("cannot start the HubSpot simulator on a loopback port")
}

fn client(sim: &Simulator, config: &Config) -> anyhow::Result<HubSpotClient> {
    HubSpotClient::new(
        &sim.base_url(),
        "sim-token",
        Paths::new(config.hubspot.api_version),
        config.hubspot.request_timeout,
    )
}

/// Creates the properties in the simulator, as `hubsync run` does at start.
async fn setup_portal(sim: &Simulator, config: &Config) -> anyhow::Result<()> {
    hubsync::reconcile::ensure(&client(sim, config)?.into(), config).await?;
    Ok(())
}

async fn worker(pool: PgPool, sim: &Simulator, config: &Arc<Config>) -> anyhow::Result<Worker> {
    Worker::new(pool, config.clone(), client(sim, config)?).await
}

fn upserts(requests: &[SimRequest]) -> Vec<&SimRequest> {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/batch/upsert"))
        .collect()
}

/// Loads `events` contact events over `contacts` contacts (event g goes to contact g mod
/// `contacts`) with one INSERT ... SELECT, then VACUUM ANALYZE; returns the time it took.
async fn load_outbox(pool: &PgPool, events: usize, contacts: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at)
         SELECT gen_random_uuid(), 'contact', 'user' || (g % $2) || '@example.com',
                jsonb_build_object(
                    'total_sessions', 1,
                    'last_active_at', 1767225600000 + g * 1000,
                    'current_plan', (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3]),
                timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => g::float8 / 1000)
         FROM generate_series(0::int8, $1 - 1) AS g
         ORDER BY g",
    )
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

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

fn pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

// ---------------------------------------------------------------------------------------------
// P1: rate-limit use with a deep backlog.

struct P1Result {
    workers: usize,
    per_window: Vec<usize>,
    phase_mean: f64,
    rolling_max: usize,
    inputs_avg: f64,
    accepted: usize,
    throttled: usize,
}

async fn p1(args: &Args, base_url: &str) -> anyhow::Result<()> {
    let window = Duration::from_millis(args.window_ms);
    let limit = args.limit;
    // Full batches all the way through: a third more objects than the measured windows can send.
    let contacts = (args.windows as usize * limit as usize * 100 * 4).div_ceil(3);
    println!(
        "## P1: rate-limit use with a deep backlog\n\n\
         Shortened window: simulator window {} ms with {limit} requests allowed, worker \
         rate_window_ms = {} and requests_per_10s = {limit} (the real limit counts per 10 s).\n\
         Backlog: {contacts} contacts, 1 event each, folded by ingest before measuring. \
         Measured: {} windows from the first upsert; default [worker] settings (concurrency 4).\n\n\
         The limiter sends in bursts, so a count over fixed windows depends on where the windows \
         start. \"Requests per window\" is therefore the count in a span of {} windows averaged \
         over 100 start offsets spread across one window after the first upsert (one more window \
         is recorded for this); the fixed windows starting at the first upsert are shown beside \
         it. \"Max in any rolling window\" counts every request, as HubSpot does.\n",
        args.window_ms, args.window_ms, args.windows, args.windows
    );
    let mut results = Vec::new();
    for workers in [1usize, 4] {
        results.push(p1_run(args, base_url, workers, contacts).await?);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let n = r.per_window.len().max(1) as f64;
            let fixed_mean = r.per_window.iter().sum::<usize>() as f64 / n;
            let mean = r.phase_mean;
            let min = r.per_window.iter().copied().min().unwrap_or(0);
            let max = r.per_window.iter().copied().max().unwrap_or(0);
            vec![
                r.workers.to_string(),
                format!("{mean:.2} of {limit}"),
                pct(mean / f64::from(limit)),
                format!("{fixed_mean:.2}, {min}–{max}"),
                r.rolling_max.to_string(),
                format!("{:.1}", r.inputs_avg),
                r.accepted.to_string(),
                r.throttled.to_string(),
            ]
        })
        .collect();
    table(
        &format!(
            "P1 results (window {} ms, L = {limit}; target ≥ 95 % of L, ≥ 95 inputs, zero 429)",
            args.window_ms
        ),
        &[
            "workers",
            "requests per window (mean)",
            "share of L",
            "fixed windows: mean, min–max",
            "max in any rolling window",
            "inputs per request",
            "2xx upserts recorded",
            "429s",
        ],
        &rows,
    );
    if let Some(edge) = hubsync_edge_margin() {
        let ceiling = window.as_secs_f64() / (window + edge).as_secs_f64();
        println!(
            "Note: the worker's limiter adds a {} ms edge margin to the window (src/ratelimit.rs), \
             so it allows at most L per {} ms: a ceiling of {} of L on this window \
             ({} on HubSpot's real 10 s window).\n",
            edge.as_millis(),
            (window + edge).as_millis(),
            pct(ceiling),
            pct(10.0 / (10.0 + edge.as_secs_f64())),
        );
    }
    Ok(())
}

/// The margin `ratelimit::Limiter` adds to the configured window (its private `EDGE_MARGIN`),
/// read from the source this benchmark was built with; `None` if it can no longer be found.
fn hubsync_edge_margin() -> Option<Duration> {
    let source = include_str!("../src/ratelimit.rs");
    let tail = source
        .split("EDGE_MARGIN: Duration = Duration::from_millis(")
        .nth(1)?;
    let ms: String = tail.chars().take_while(char::is_ascii_digit).collect();
    ms.parse().ok().map(Duration::from_millis)
}

async fn p1_run(
    args: &Args,
    base_url: &str,
    workers: usize,
    contacts: usize,
) -> anyhow::Result<P1Result> {
    let window = Duration::from_millis(args.window_ms);
    let db = BenchDb::fresh(base_url, "p1").await?;
    let sim = start_sim(args.limit, window).await?;
    let config = config(args.limit, args.window_ms)?;
    setup_portal(&sim, &config).await?;
    load_outbox(&db.pool, contacts, contacts).await?;
    let folder = worker(db.pool.clone(), &sim, &config).await?;
    while folder.ingest_once().await?.claimed > 0 {}
    let dirty = db
        .count("SELECT count(*) FROM hubsync.objects WHERE dirty")
        .await?;
    eprintln!("p1: {workers} worker(s): {dirty} dirty objects folded; measuring");
    // Let the start-up requests leave the simulator's window before measuring.
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    sim.reset_requests();

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let pool = db.worker_pool(&config).await?;
        let w = Arc::new(worker(pool, &sim, &config).await?);
        tasks.spawn(w.run(cancel.clone()));
    }
    let first = loop {
        if let Some(r) = upserts(&sim.requests()).first() {
            break r.at;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let end = first + window * args.windows;
    // One more window, for the start offsets of the phase-averaged count.
    let recorded_end = end + window;
    tokio::time::sleep_until((recorded_end + Duration::from_millis(100)).into()).await;
    cancel.cancel();
    while let Some(done) = tasks.join_next().await {
        done.context("a worker panicked")??;
    }

    let requests = sim.requests();
    let measured: Vec<&SimRequest> = requests
        .iter()
        .filter(|r| r.at >= first && r.at < recorded_end)
        .collect();
    let mut per_window = vec![0usize; args.windows as usize];
    for r in upserts(&requests) {
        if r.at >= first && r.at < end {
            let k = (r.at - first).as_nanos() / window.as_nanos();
            per_window[usize::try_from(k)?] += 1;
        }
    }
    let upsert_times: Vec<Instant> = upserts(&requests).iter().map(|r| r.at).collect();
    let span = window * args.windows;
    let phase_mean = (0..100u32)
        .map(|i| {
            let from = first + window * i / 100;
            upsert_times
                .iter()
                .filter(|at| **at >= from && **at < from + span)
                .count() as f64
        })
        .sum::<f64>()
        / 100.0
        / f64::from(args.windows);
    // Every request counts against HubSpot's window, whatever its path.
    let rolling_max = measured
        .iter()
        .map(|a| {
            measured
                .iter()
                .filter(|b| b.at >= a.at && b.at < a.at + window)
                .count()
        })
        .max()
        .unwrap_or(0);
    let ok: Vec<&&SimRequest> = measured
        .iter()
        .filter(|r| r.path.ends_with("/batch/upsert") && (200..300).contains(&r.status))
        .collect();
    let inputs_avg = ok.iter().map(|r| r.inputs).sum::<usize>() as f64 / ok.len().max(1) as f64;
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    drop(folder);
    sim.shutdown().await;
    db.drop_db().await?;
    Ok(P1Result {
        workers,
        per_window,
        phase_mean,
        rolling_max,
        inputs_avg,
        accepted: ok.len(),
        throttled,
    })
}

// ---------------------------------------------------------------------------------------------
// P2: requests for 10,000 events over 1,000 contacts, beside a naive batcher.

const P2_EVENTS: usize = 10_000;
const P2_CONTACTS: usize = 1_000;

/// The demo's deterministic generator: every run enqueues the same events in the same order.
use hubsync::demo::Lcg;

async fn p2(base_url: &str) -> anyhow::Result<()> {
    println!(
        "## P2: requests for {P2_EVENTS} events over {P2_CONTACTS} contacts\n\n\
         Events (10 per contact, shuffled) are enqueued through hubsync.enqueue first; then \
         `run_until_idle` drains them. The naive batcher sends the same events, in arrival \
         order, 100 per upsert, merging nothing, to the same simulator (unthrottled here so \
         that only 400s can refuse it).\n"
    );
    let db = BenchDb::fresh(base_url, "p2").await?;
    let sim = start_sim(0, Duration::from_secs(10)).await?;
    let config = config(100, 10_000)?;
    setup_portal(&sim, &config).await?;

    // Exactly 10 events per contact, in a shuffled arrival order.
    let mut order: Vec<usize> = (0..P2_EVENTS).map(|i| i % P2_CONTACTS).collect();
    let mut rng = Lcg(42);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.next(i + 1));
    }
    let plans = ["free", "pro", "enterprise"];
    let mut tx = db.pool.begin().await?;
    for (n, c) in order.iter().enumerate() {
        let props = json!({
            "total_sessions": 1,
            "current_plan": plans[rng.next(plans.len())],
        });
        sqlx::query(
            "SELECT hubsync.enqueue(event_id => $1, object_type => 'contact', object_key => $2,
                                    properties => $3::jsonb)",
        )
        .bind(Uuid::new_v4())
        .bind(format!("user{c}@example.com"))
        .bind(props.to_string())
        .execute(&mut *tx)
        .await?;
        if n % 500 == 499 {
            tx.commit().await?;
            tx = db.pool.begin().await?;
        }
    }
    tx.commit().await?;
    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT object_key, properties::text FROM hubsync.outbox ORDER BY id")
            .fetch_all(&db.pool)
            .await?;

    sim.reset_requests();
    let w = worker(db.worker_pool(&config).await?, &sim, &config).await?;
    let step = w.run_until_idle(&CancellationToken::new()).await?;
    let requests = sim.requests();
    let ups = upserts(&requests);
    let refused = ups
        .iter()
        .filter(|r| !(200..300).contains(&r.status))
        .count();
    let inputs = ups.iter().map(|r| r.inputs).sum::<usize>() as f64 / ups.len().max(1) as f64;
    let contacts = sim.records("contacts").len();
    let mut rows = vec![vec![
        "hubsync worker (run_until_idle)".to_string(),
        ups.len().to_string(),
        refused.to_string(),
        format!("{inputs:.1}"),
        format!("{} ingested, {} written", step.ingested, step.sync.written),
    ]];

    let c = client(&sim, &config)?;
    for dedupe in [false, true] {
        let (sent, refused, inputs) = naive_batches(&c, &events, dedupe).await?;
        rows.push(vec![
            if dedupe {
                "naive, 100 events per upsert, ids de-duplicated within a batch (last event wins)"
            } else {
                "naive, 100 events per upsert, as they come"
            }
            .to_string(),
            sent.to_string(),
            refused.to_string(),
            format!("{inputs:.1}"),
            String::new(),
        ]);
    }
    table(
        &format!(
            "P2 results (target: {} requests, one per 100 distinct objects; HubSpot holds {contacts} contacts)",
            P2_CONTACTS.div_ceil(100)
        ),
        &[
            "strategy",
            "upsert requests",
            "refused (non-2xx)",
            "inputs per request",
            "worker totals",
        ],
        &rows,
    );
    drop(w);
    sim.shutdown().await;
    db.drop_db().await?;
    Ok(())
}

/// Sends `events` 100 at a time, one upsert per 100 events; returns (sent, refused, mean inputs).
async fn naive_batches(
    client: &HubSpotClient,
    events: &[(String, String)],
    dedupe: bool,
) -> anyhow::Result<(usize, usize, f64)> {
    let path = client.paths.batch_upsert(ObjectKind::Contact);
    let (mut sent, mut refused, mut inputs_total) = (0, 0, 0);
    for chunk in events.chunks(100) {
        let mut inputs: Vec<(String, Value)> = Vec::new();
        for (key, props) in chunk {
            let props: Map<String, Value> = serde_json::from_str(props)?;
            let mut strings: Map<String, Value> = props
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, Value::String(s))
                })
                .collect();
            strings.insert("email".into(), Value::String(key.clone()));
            let input = json!({"id": key, "idProperty": "email", "properties": strings});
            match inputs.iter_mut().find(|(k, _)| dedupe && k == key) {
                Some(slot) => slot.1 = input,
                None => inputs.push((key.clone(), input)),
            }
        }
        inputs_total += inputs.len();
        let body = json!({"inputs": inputs.into_iter().map(|(_, i)| i).collect::<Vec<_>>()});
        let reply = client.send(Method::POST, &path, Some(&body)).await;
        sent += 1;
        if !reply.is_ok_and(|r| (200..300).contains(&r.status)) {
            refused += 1;
        }
    }
    Ok((sent, refused, inputs_total as f64 / sent.max(1) as f64))
}

// ---------------------------------------------------------------------------------------------
// P3: pipeline capacity against an unthrottled simulator.

async fn p3(args: &Args, base_url: &str) -> anyhow::Result<()> {
    let events = args.events;
    let contacts = (events / 10).max(1);
    let db = BenchDb::fresh(base_url, "p3").await?;
    let sim = start_sim(0, Duration::from_secs(10)).await?;
    let config = config(10_000, 10_000)?;
    let chunk = config.worker.ingest_chunk;
    println!(
        "## P3: pipeline capacity, {events} events over {contacts} contacts\n\n\
         Unthrottled simulator (requests_per_window 0, log_bodies off); requests_per_10s = 10000. \
         The outbox is loaded with one INSERT ... SELECT FROM generate_series (then VACUUM \
         ANALYZE), once for the bare SQL loop and again, after TRUNCATE, for the worker. \
         Bare: the worker's claim statement (same CTE, same RETURNING) alone, one \
         transaction per chunk of {chunk} (= ingest_chunk). Ingest: `Worker::ingest_once` until \
         it returns 0. Sync: `Worker::run` (concurrency {}) until no object is dirty.\n",
        config.worker.concurrency
    );
    setup_portal(&sim, &config).await?;

    let load_bare = load_outbox(&db.pool, events, contacts).await?;
    eprintln!(
        "p3: outbox loaded in {} s; bare claim loop",
        secs(load_bare)
    );
    let wal_bare_start = wal_position(&db.pool).await?;
    let started = Instant::now();
    let mut bare_rows = 0usize;
    loop {
        let mut tx = db.pool.begin().await?;
        let rows = sqlx::query(BARE_CLAIM)
            .bind(i64::try_from(chunk)?)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if rows.is_empty() {
            break;
        }
        bare_rows += rows.len();
    }
    let bare = started.elapsed();
    let wal_bare = wal_position(&db.pool).await? - wal_bare_start;

    sqlx::query("TRUNCATE hubsync.outbox")
        .execute(&db.pool)
        .await?;
    let load_ingest = load_outbox(&db.pool, events, contacts).await?;
    eprintln!("p3: outbox loaded again in {} s; ingest", secs(load_ingest));
    let w = Arc::new(worker(db.worker_pool(&config).await?, &sim, &config).await?);
    let wal_ingest_start = wal_position(&db.pool).await?;
    let started = Instant::now();
    let (mut ingested, mut refused) = (0usize, 0usize);
    loop {
        let done = w.ingest_once().await?;
        if done.claimed == 0 {
            break;
        }
        ingested += done.claimed;
        refused += done.refused;
    }
    let ingest = started.elapsed();
    let wal_ingest = wal_position(&db.pool).await? - wal_ingest_start;
    let (objects_bytes, objects_rows): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('hubsync.objects'), (SELECT count(*) FROM hubsync.objects)",
    )
    .fetch_one(&db.pool)
    .await?;
    let (ledger_bytes,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('hubsync.ledger')")
        .fetch_one(&db.pool)
        .await?;
    let dirty = db
        .count("SELECT count(*) FROM hubsync.objects WHERE dirty")
        .await?;
    eprintln!("p3: {ingested} events ingested into {dirty} dirty objects; sync");

    sim.reset_requests();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(w.clone().run(cancel.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = db
            .count("SELECT count(*) FROM hubsync.objects WHERE dirty")
            .await?;
        if left == 0 || task.is_finished() {
            break;
        }
    }
    let sync = started.elapsed();
    cancel.cancel();
    task.await.context("the worker panicked")??;
    let written = db
        .count("SELECT count(*) FROM hubsync.objects WHERE synced_at IS NOT NULL")
        .await?;
    let written = usize::try_from(written)?;
    let requests = sim.requests();
    let ups = upserts(&requests);
    let failed = ups
        .iter()
        .filter(|r| !(200..300).contains(&r.status))
        .count();
    let dlq = db.count("SELECT count(*) FROM hubsync.dlq").await?;

    let per_event = |wal: i64, rows: usize| wal as f64 / rows.max(1) as f64;
    let (bare_wal, ingest_wal) = (
        per_event(wal_bare, bare_rows),
        per_event(wal_ingest, ingested),
    );
    table(
        "P7 results, WAL written per event (target: ingest ≤ 2 × bare); sizes after ingest",
        &["measure", "value", "notes"],
        &[
            vec![
                "bare claim-and-delete".into(),
                format!("{bare_wal:.0} B"),
                "pg_current_wal_insert_lsn() before and after".into(),
            ],
            vec![
                "ingest (Worker::ingest_once)".into(),
                format!("{ingest_wal:.0} B"),
                format!("{:.1} × bare", ingest_wal / bare_wal.max(1.0)),
            ],
            vec![
                "hubsync.objects per object".into(),
                format!("{:.0} B", objects_bytes as f64 / objects_rows.max(1) as f64),
                format!(
                    "{} MB for {objects_rows} objects",
                    objects_bytes / 1_000_000
                ),
            ],
            vec![
                "hubsync.ledger".into(),
                format!("{} MB", ledger_bytes / 1_000_000),
                format!("{ingested} event ids"),
            ],
        ],
    );
    let ratio = (ingested as f64 / ingest.as_secs_f64()) / (bare_rows as f64 / bare.as_secs_f64());
    table(
        &format!(
            "P3 results ({events} events, {contacts} contacts; target: ingest ≥ 70 % of bare)"
        ),
        &["phase", "rows", "seconds", "per second", "notes"],
        &[
            vec![
                "outbox load (INSERT ... SELECT, VACUUM ANALYZE)".into(),
                events.to_string(),
                secs(load_ingest),
                rate(events, load_ingest),
                "producer side, not a target".into(),
            ],
            vec![
                "bare claim-and-delete SQL".into(),
                bare_rows.to_string(),
                secs(bare),
                rate(bare_rows, bare),
                format!("chunks of {chunk}"),
            ],
            vec![
                "ingest (Worker::ingest_once)".into(),
                ingested.to_string(),
                secs(ingest),
                rate(ingested, ingest),
                format!("{refused} refused; {dirty} objects dirty after"),
            ],
            vec![
                "ingest / bare".into(),
                String::new(),
                String::new(),
                pct(ratio),
                if ratio >= 0.7 {
                    "meets ≥ 70 %".into()
                } else {
                    "MISSES ≥ 70 %".into()
                },
            ],
            vec![
                "sync (Worker::run) objects".into(),
                written.to_string(),
                secs(sync),
                rate(written, sync),
                format!(
                    "{} upserts ({failed} non-2xx), {:.1} inputs each; {dlq} DLQ rows",
                    ups.len(),
                    ups.iter().map(|r| r.inputs).sum::<usize>() as f64 / ups.len().max(1) as f64
                ),
            ],
        ],
    );
    drop(w);
    sim.shutdown().await;
    db.drop_db().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// P4: commit → HubSpot latency on an idle system.

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn p4(args: &Args, base_url: &str) -> anyhow::Result<()> {
    const WARMUP: usize = 5;
    println!(
        "## P4: commit → HubSpot latency on an idle system\n\n\
         One worker with `Worker::run` and the default [worker] settings (poll_interval 100 ms, \
         concurrency 4); simulator and config at 100 requests per 10 s. One event at a time via \
         hubsync.enqueue (autocommit; the clock starts when the statement returns), {} samples \
         after {WARMUP} warm-up ones, 50–100 ms apart. \"arrival\": the simulator's arrival time \
         of the first upsert after the commit; \"visible\": when the simulator first returns the \
         contact (polled every 1 ms).\n",
        args.samples
    );
    let db = BenchDb::fresh(base_url, "p4").await?;
    let sim = start_sim(100, Duration::from_secs(10)).await?;
    let config = config(100, 10_000)?;
    setup_portal(&sim, &config).await?;
    let w = Arc::new(worker(db.worker_pool(&config).await?, &sim, &config).await?);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(w.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut arrival = Vec::new();
    let mut visible = Vec::new();
    for i in 0..args.samples + WARMUP {
        let key = format!("p4-{i}@example.com");
        sqlx::query(
            "SELECT hubsync.enqueue(event_id => $1, object_type => 'contact', object_key => $2,
                                    properties => '{\"total_sessions\": 1}'::jsonb)",
        )
        .bind(Uuid::new_v4())
        .bind(&key)
        .execute(&db.pool)
        .await?;
        let committed = Instant::now();
        let seen = loop {
            if sim.contact(&key).is_some() {
                break Instant::now();
            }
            if committed.elapsed() > Duration::from_secs(30) {
                bail!("{key} did not reach the simulator within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let arrived = upserts(&sim.requests())
            .iter()
            .map(|r| r.at)
            .find(|at| *at >= committed)
            .unwrap_or(seen);
        if i >= WARMUP {
            arrival.push((arrived - committed).as_secs_f64() * 1000.0);
            visible.push((seen - committed).as_secs_f64() * 1000.0);
        }
        sim.reset_requests();
        tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 51)).await;
    }
    cancel.cancel();
    task.await.context("the worker panicked")??;

    let row = |name: &str, v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        vec![
            name.to_string(),
            v.len().to_string(),
            format!("{:.0}", percentile(v, 50.0)),
            format!("{:.0}", percentile(v, 95.0)),
            format!("{:.0}", percentile(v, 99.0)),
            format!("{:.0}", v.last().copied().unwrap_or(f64::NAN)),
            format!("{mean:.0}"),
        ]
    };
    table(
        "P4 results, ms (target: p50 ≤ 300, p99 ≤ 1000)",
        &["commit →", "samples", "p50", "p95", "p99", "max", "mean"],
        &[
            row("upsert arrival", &mut arrival),
            row("contact visible", &mut visible),
        ],
    );
    drop(w);
    sim.shutdown().await;
    db.drop_db().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// P5: the worker binary's peak RSS with a deep backlog.

/// (VmHWM, VmRSS) of `pid` in kB, while it runs.
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

async fn p5(args: &Args, base_url: &str) -> anyhow::Result<()> {
    let events = args.events;
    let contacts = (events / 10).max(1);
    // Built by `cargo bench` with the bench profile, which inherits release.
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_hubsync"));
    println!(
        "## P5: worker memory with a {events}-event backlog\n\n\
         The outbox is loaded as in P3 ({contacts} contacts); then `{} run --until-idle` runs as \
         a separate process against the unthrottled in-process simulator, with \
         requests_per_10s = 10000. /proc/<pid>/status is sampled every 50 ms.\n",
        binary.display()
    );
    let db = BenchDb::fresh(base_url, "p5").await?;
    let sim = start_sim(0, Duration::from_secs(10)).await?;
    let load = load_outbox(&db.pool, events, contacts).await?;
    eprintln!("p5: outbox loaded in {} s; running the worker", secs(load));
    let dir = std::env::temp_dir().join("hubsync-bench");
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("p5.toml");
    std::fs::write(&config_path, config_text(10_000, 10_000))?;

    let started = Instant::now();
    let mut child = tokio::process::Command::new(&binary)
        .args(["run", "--until-idle"])
        .env("DATABASE_URL", &db.url)
        .env("HUBSPOT_BASE_URL", sim.base_url())
        .env("HUBSPOT_ACCESS_TOKEN", "sim-token")
        .env("HUBSYNC_CONFIG", &config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id().context("the worker exited at once")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let mut stderr = stderr;
        stderr.read_to_string(&mut text).await.map(|_| text)
    });
    let (mut hwm, mut rss_max, mut samples) = (0u64, 0u64, 0usize);
    let status = loop {
        if let Some((h, r)) = memory_of(pid) {
            hwm = hwm.max(h);
            rss_max = rss_max.max(r);
            samples += 1;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let log = reader.await??;
    if !status.success() {
        bail!("the worker failed ({status}):\n{log}");
    }
    let left = db.count("SELECT count(*) FROM hubsync.outbox").await?;
    let dirty = db
        .count("SELECT count(*) FROM hubsync.objects WHERE dirty")
        .await?;
    let mb = |kb: u64| format!("{:.1}", kb as f64 / 1024.0);
    table(
        &format!("P5 results ({events} events; target: peak RSS ≤ 64 MB)"),
        &[
            "peak RSS (VmHWM), MB",
            "max sampled VmRSS, MB",
            "samples",
            "wall time, s",
            "left after (outbox / dirty)",
            "worker's summary",
        ],
        &[vec![
            mb(hwm),
            mb(rss_max),
            samples.to_string(),
            secs(took),
            format!("{left} / {dirty}"),
            log.lines()
                .rfind(|l| l.starts_with("idle:"))
                .unwrap_or("")
                .to_string(),
        ]],
    );
    sim.shutdown().await;
    db.drop_db().await?;
    Ok(())
}

/// Transactions committed or rolled back in the current database so far.
async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    // Statistics reach the shared view when a backend has been idle for a second at most.
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database
         WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// P6: the load an idle worker puts on the database.
async fn p6(base_url: &str) -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(60);
    println!(
        "## P6: an idle worker's load on the database\n\n\
         One worker with `Worker::run` and the default [worker] settings, an empty outbox, \
         nothing dirty; after 20 s of warm-up (start-up's calls and their statistics settle), \
         the database's committed and rolled-back transactions (pg_stat_database) are counted \
         over {} s, less the two reads of the counter itself. Idle backends report their \
         counts within 10 s, so each reading waits 11 s after what it counts.\n",
        WINDOW.as_secs()
    );
    let db = BenchDb::fresh(base_url, "p6").await?;
    let sim = start_sim(100, Duration::from_secs(10)).await?;
    let config = config(100, 10_000)?;
    setup_portal(&sim, &config).await?;
    let w = Arc::new(worker(db.worker_pool(&config).await?, &sim, &config).await?);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(w.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(20)).await;
    // What the window counts is what happens between the two readings, each taken once every
    // backend has reported what came before it.
    let before = transactions(&db.pool).await?;
    tokio::time::sleep(WINDOW).await;
    let after_window = transactions(&db.pool).await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after = transactions(&db.pool).await?;
    let _ = after_window;
    cancel.cancel();
    task.await.context("the worker panicked")??;
    let count = (after - before - 2).max(0);
    table(
        "P6 results (target: ≤ 1 transaction per second)",
        &["window s", "transactions", "per second"],
        &[vec![
            WINDOW.as_secs().to_string(),
            count.to_string(),
            format!("{:.2}", count as f64 / WINDOW.as_secs_f64()),
        ]],
    );
    db.drop_db().await
}

/// One pgbench run of `script` against `url`: transactions per second.
fn pgbench(url: &str, script: &str, seconds: u32, options: &str) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("hubsync-p8-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
    let out = std::process::Command::new("pgbench")
        .env("PGOPTIONS", options)
        .args(["-n", "-c", "2", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg(url)
        .output()
        .context("cannot run pgbench; install PostgreSQL's client tools (postgresql-contrib on older Debian)")?;
    std::fs::remove_dir_all(&dir).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
        .with_context(|| {
            format!(
                "pgbench printed no tps: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// P8: `hubsync.enqueue` against a plain INSERT into the same table without triggers.
async fn p8(base_url: &str) -> anyhow::Result<()> {
    const SECONDS: u32 = 15;
    const ROUNDS: usize = 3;
    println!(
        "## P8: hubsync.enqueue against a plain INSERT\n\n\
         pgbench, 2 clients, {SECONDS} s per run, {ROUNDS} rounds alternating the scripts \
         (median shown). Reference: a plain INSERT of the same row into a copy of \
         hubsync.outbox (same columns, defaults and indexes) without its triggers. The outbox \
         is emptied before each run.\n"
    );
    let db = BenchDb::fresh(base_url, "p8").await?;
    sqlx::query("CREATE TABLE public.plain_outbox (LIKE hubsync.outbox INCLUDING ALL)")
        .execute(&db.pool)
        .await?;
    let props = r#"'{"total_sessions": 1, "current_plan": "pro"}'"#;
    let enqueue = format!(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact', \
         object_key => 'p8@example.com', properties => {props});\n"
    );
    let plain = format!(
        "INSERT INTO public.plain_outbox (event_id, object_type, object_key, properties) \
         VALUES (gen_random_uuid(), 'contact', 'p8@example.com', {props});\n"
    );
    let (mut with, mut quiet, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (script, options, into) in [
            (&plain, "", &mut without),
            (&enqueue, "", &mut with),
            (&enqueue, "-c hubsync.notify=off", &mut quiet),
        ] {
            sqlx::query("TRUNCATE hubsync.outbox, public.plain_outbox")
                .execute(&db.pool)
                .await?;
            sqlx::query("CHECKPOINT").execute(&db.pool).await.ok();
            into.push(pgbench(&db.url, script, SECONDS, options)?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[ROUNDS / 2]
    };
    let (a, q, b) = (median(&mut with), median(&mut quiet), median(&mut without));
    table(
        "P8 results (target: enqueue ≤ 5 % slower)",
        &["script", "tps", "slower than plain INSERT by"],
        &[
            vec!["plain INSERT".into(), format!("{b:.0}"), String::new()],
            vec![
                "hubsync.enqueue".into(),
                format!("{a:.0}"),
                pct(1.0 - a / b),
            ],
            vec![
                "hubsync.enqueue, hubsync.notify = off".into(),
                format!("{q:.0}"),
                pct(1.0 - q / b),
            ],
        ],
    );
    db.drop_db().await
}

/// The WAL insert position, in bytes.
async fn wal_position(pool: &PgPool) -> anyhow::Result<i64> {
    let (lsn,): (i64,) =
        sqlx::query_as("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
            .fetch_one(pool)
            .await?;
    Ok(lsn)
}
