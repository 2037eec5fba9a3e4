//! P8: what `hubsync.enqueue` costs the application against a plain INSERT into the same table
//! without triggers, measured with pgbench.
//!
//! The scripts run in one pgbench run, each transaction picking one of them at random, so that
//! every script meets the same machine at the same moments; pgbench reports each script's mean
//! latency, and the slowdown is the ratio of those. Separate runs per script, alternated, were
//! tried first: from one 15 s run to the next the same script moved by ±15 % on a shared
//! machine, more than the difference being measured.

use anyhow::Context;
use uuid::Uuid;

use crate::harness::{BenchDb, pct, table};

const SECONDS: u32 = 20;

/// The scripts, in the order pgbench numbers them.
const SCRIPTS: [&str; 3] = [
    "plain INSERT, table without triggers",
    "hubsync.enqueue",
    "plain INSERT into hubsync.outbox",
];

/// One pgbench run of all `scripts` at equal weight against `url`: each script's mean latency
/// in milliseconds, in order.
fn pgbench(url: &str, scripts: &[String], options: &str, clients: u32) -> anyhow::Result<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("hubsync-p8-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let mut command = std::process::Command::new("pgbench");
    command.env("PGOPTIONS", options).args([
        "-n",
        "-c",
        &clients.to_string(),
        "-j",
        "2",
        "-T",
        &SECONDS.to_string(),
    ]);
    for (i, script) in scripts.iter().enumerate() {
        let file = dir.join(format!("script{i}.sql"));
        std::fs::write(&file, script)?;
        command.arg("-f").arg(format!("{}@1", file.display()));
    }
    let out = command.arg(url).output().context(
        "cannot run pgbench; install PostgreSQL's client tools (postgresql-contrib on older Debian)",
    );
    std::fs::remove_dir_all(&dir).ok();
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    // After the totals, pgbench prints for each script a "SQL script N: ..." line followed by
    // its own "latency average = X ms".
    let latencies: Vec<f64> = text
        .split("SQL script ")
        .skip(1)
        .filter_map(|section| {
            section.lines().find_map(|l| {
                l.trim_start_matches([' ', '-'])
                    .strip_prefix("latency average = ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<f64>().ok())
            })
        })
        .collect();
    if latencies.len() != scripts.len() {
        anyhow::bail!(
            "pgbench printed no latency for each script: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(latencies)
}

pub async fn run(base_url: &str) -> anyhow::Result<()> {
    println!(
        "## P8: hubsync.enqueue against a plain INSERT\n\n\
         pgbench, {SECONDS} s per run; in each run every transaction is one of the scripts \
         below, picked at random, so all of them meet the same conditions. Reference: a plain \
         INSERT of the same row into a copy of hubsync.outbox (same columns, defaults and \
         indexes) without its trigger. Compared: each script's mean latency. Runs, 2 clients \
         unless said: no worker waiting (producers do not notify; as under load, when every \
         worker is busy); a worker waiting (the bench holds the waiting slots, so every \
         enqueueing transaction notifies, as on an idle system); with hubsync.notify = off; \
         with synchronous_commit = off, where no commit waits for its WAL to reach the disk and \
         what is left is the statements' own work; 8 clients, no worker waiting. The tables \
         are emptied before each run.\n"
    );
    let db = BenchDb::fresh(base_url, "p8").await?;
    sqlx::query("CREATE TABLE public.plain_outbox (LIKE hubsync.outbox INCLUDING ALL)")
        .execute(&db.pool)
        .await?;
    let props = r#"'{"total_sessions": 1, "current_plan": "pro"}'"#;
    let scripts = [
        format!(
            "INSERT INTO public.plain_outbox (event_id, object_type, object_key, properties) \
             VALUES (gen_random_uuid(), 'contact', 'p8@example.com', {props});\n"
        ),
        format!(
            "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact', \
             object_key => 'p8@example.com', properties => {props});\n"
        ),
        format!(
            "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties) \
             VALUES (gen_random_uuid(), 'contact', 'p8@example.com', {props});\n"
        ),
    ];
    let mut rows = Vec::new();
    for (run, options, clients, worker_waits) in [
        ("no worker waiting", "", 2, false),
        ("a worker waiting", "", 2, true),
        ("hubsync.notify = off", "-c hubsync.notify=off", 2, false),
        (
            "synchronous_commit = off",
            "-c synchronous_commit=off",
            2,
            false,
        ),
        ("8 clients, no worker waiting", "", 8, false),
    ] {
        sqlx::query("TRUNCATE hubsync.outbox, public.plain_outbox")
            .execute(&db.pool)
            .await?;
        sqlx::query("CHECKPOINT").execute(&db.pool).await.ok();
        let mut waiting = None;
        if worker_waits {
            let mut conn = hubsync::db::wake::connect(&db.pool).await?;
            hubsync::db::wake::hold_slots(&mut conn).await?;
            waiting = Some(conn);
        }
        let latencies = pgbench(&db.url, &scripts, options, clients)?;
        drop(waiting);
        let reference = latencies[0];
        for (i, (name, ms)) in SCRIPTS.iter().zip(&latencies).enumerate() {
            rows.push(vec![
                run.to_string(),
                name.to_string(),
                format!("{:.0} µs", ms * 1000.0),
                if i == 0 {
                    String::new()
                } else {
                    pct(ms / reference - 1.0)
                },
            ]);
        }
    }
    table(
        "P8 results (target: hubsync.enqueue ≤ 5 % slower)",
        &[
            "run",
            "script",
            "mean latency",
            "slower than the reference by",
        ],
        &rows,
    );
    db.drop_db().await
}
