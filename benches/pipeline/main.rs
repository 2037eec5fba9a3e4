//! The pipeline benchmarks P1–P8 of `docs/ARCHITECTURE.md` §5: a program that prints one table per
//! measure and asserts nothing on time (`BENCHMARKS.md` records the latest results).
//!
//! Run: `cargo bench --bench pipeline -- <p1|p2|p3|p4|p5|p6|p8|all> [options]` (P7 is measured
//! with P3). Each scenario recreates its own database `hubsync_bench_<scenario>` on the
//! `DATABASE_URL` server, starts the HubSpot simulator in-process, and drops the database when it
//! is done. It must not leave processes running: P5's worker child is always waited for.
//!
//! This file parses the arguments, prints the machine and runs the measures in order; each
//! measure has a module of its own, and `harness` holds what they share.

mod harness;
mod p1_rate_limit;
mod p2_requests;
mod p3_ingest;
mod p4_latency;
mod p5_memory;
mod p6_idle;
mod p7_checkpoint;
mod p8_enqueue;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use hubsync::config::DEFAULT_DATABASE_URL;
use sqlx::{ConnectOptions, Connection};

use harness::{admin_options, table};

const USAGE: &str = "usage: cargo bench --bench pipeline -- <p1|p2|p3|p4|p5|p6|p7|p8|all>... (p7 is measured in p3's run) [options]
  --events N      P3/P5: outbox events (default 1000000)
  --contacts C    P3/P5: the contacts they are spread over, in turn (default N/10)
  --limit L       P1: requests allowed per window (default 20)
  --window-ms W   P1: the rate window, simulator and worker alike (default 1000)
  --windows K     P1: windows measured after the first request (default 15)
  --samples S     P4: latency samples (default 200)
env: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres); BENCH_LOG=1 shows logs;
  BENCH_PG_LOG_MS=N has Postgres log this run's statements slower than N ms (server log)";

/// Command-line options.
#[derive(Debug, Clone)]
struct Args {
    scenarios: Vec<String>,
    events: usize,
    contacts: Option<usize>,
    limit: u32,
    window_ms: u64,
    windows: u32,
    samples: usize,
}

impl Args {
    /// The contacts P3 and P5 spread their events over.
    fn contacts(&self) -> usize {
        self.contacts.unwrap_or(self.events / 10).max(1)
    }
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        scenarios: Vec::new(),
        events: 1_000_000,
        contacts: None,
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
            "--contacts" => args.contacts = Some(usize::try_from(value("--contacts")?)?.max(1)),
            "--limit" => args.limit = u32::try_from(value("--limit")?)?.max(1),
            "--window-ms" => args.window_ms = value("--window-ms")?.max(100),
            "--windows" => args.windows = u32::try_from(value("--windows")?)?.max(1),
            "--samples" => args.samples = usize::try_from(value("--samples")?)?.max(1),
            "p1" | "p2" | "p3" | "p4" | "p5" | "p6" | "p8" => args.scenarios.push(a),
            // P7 is measured in P3's run.
            "p7" => args.scenarios.push("p3".into()),
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
            "p1" => p1_rate_limit::run(&args, &base_url).await?,
            "p2" => p2_requests::run(&base_url).await?,
            "p3" => p3_ingest::run(&args, &base_url).await?,
            "p4" => p4_latency::run(&args, &base_url).await?,
            "p5" => p5_memory::run(&args, &base_url).await?,
            "p6" => p6_idle::run(&base_url).await?,
            "p8" => p8_enqueue::run(&base_url).await?,
            _ => unreachable!("parse_args only accepts p1..p8"),
        }
        println!("({s} took {:.0} s)\n", started.elapsed().as_secs_f64());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The machine, the Postgres server and the commit every result belongs to.

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
                "crates",
                "migrations",
                "Cargo.lock",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} (uncommitted changes)")
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
