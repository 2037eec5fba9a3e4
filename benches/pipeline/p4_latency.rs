//! P4: the latency from an event's commit to its HubSpot write, on an idle system.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::Args;
use crate::harness::{Rig, Running, enqueue_contact, table, upserts};

const WARMUP: usize = 5;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(args: &Args, base_url: &str) -> anyhow::Result<()> {
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
    let rig = Rig::start(base_url, "p4", 100, 100, 10_000).await?;
    let mut running = Running::default();
    running.spawn(rig.worker().await?);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let props = json!({"total_sessions": 1});
    let mut arrival = Vec::new();
    let mut visible = Vec::new();
    for i in 0..args.samples + WARMUP {
        let key = format!("p4-{i}@example.com");
        enqueue_contact(&rig.db.pool, &key, &props).await?;
        let committed = Instant::now();
        let seen = loop {
            if rig.sim.contact(&key).is_some() {
                break Instant::now();
            }
            if committed.elapsed() > Duration::from_secs(30) {
                bail!("{key} did not reach the simulator within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let arrived = upserts(&rig.sim.requests())
            .iter()
            .map(|r| r.at)
            .find(|at| *at >= committed)
            .unwrap_or(seen);
        if i >= WARMUP {
            arrival.push((arrived - committed).as_secs_f64() * 1000.0);
            visible.push((seen - committed).as_secs_f64() * 1000.0);
        }
        rig.sim.reset_requests();
        tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 51)).await;
    }
    running.stop().await?;

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
        "P4 results, ms (target: p50 ≤ 50, p99 ≤ 250)",
        &["commit →", "samples", "p50", "p95", "p99", "max", "mean"],
        &[
            row("upsert arrival", &mut arrival),
            row("contact visible", &mut visible),
        ],
    );
    rig.finish().await
}
