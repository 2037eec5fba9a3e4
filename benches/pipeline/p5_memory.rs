//! P5: the peak memory of the `hubsync` binary draining a deep backlog.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Args;
use crate::harness::{BenchDb, config_text, load_outbox, secs, start_sim, table};

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

pub async fn run(args: &Args, base_url: &str) -> anyhow::Result<()> {
    let events = args.events;
    let contacts = args.contacts();
    // Built by `cargo bench` with the bench profile, which inherits release.
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_hubsync"));
    println!(
        "## P5: worker memory with a {events}-event backlog\n\n\
         The outbox is loaded as in P3 ({contacts} contacts); then `{} run --until-idle` runs as \
         a separate process against the unthrottled in-process simulator, with \
         requests_per_10s = 10000. /proc/<pid>/status is sampled every 50 ms.\n",
        binary.display()
    );
    // The binary creates the properties itself, so the simulator starts empty.
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
    let dirty = db.dirty().await?;
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
    db.drop_db().await
}
