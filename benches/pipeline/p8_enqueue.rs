//! P8: what `hubsync.enqueue` costs the application against a plain INSERT into the same table
//! without triggers, measured with pgbench.

use anyhow::Context;
use uuid::Uuid;

use crate::harness::{BenchDb, pct, table};

const SECONDS: u32 = 15;
const ROUNDS: usize = 3;

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

pub async fn run(base_url: &str) -> anyhow::Result<()> {
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
