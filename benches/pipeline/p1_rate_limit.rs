//! P1: how much of HubSpot's rate limit the workers use with a deep backlog, with 1 and 4 workers.

use std::time::{Duration, Instant};

use crate::Args;
use crate::harness::{
    Rig, Running, SimRequest, is_2xx, load_outbox, mean_inputs, pct, table, upserts,
};

struct P1Result {
    workers: usize,
    per_window: Vec<usize>,
    phase_mean: f64,
    rolling_max: usize,
    inputs_avg: f64,
    accepted: usize,
    throttled: usize,
}

pub async fn run(args: &Args, base_url: &str) -> anyhow::Result<()> {
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
        results.push(measure(args, base_url, workers, contacts).await?);
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
    Ok(())
}

async fn measure(
    args: &Args,
    base_url: &str,
    workers: usize,
    contacts: usize,
) -> anyhow::Result<P1Result> {
    let window = Duration::from_millis(args.window_ms);
    let rig = Rig::start(base_url, "p1", args.limit, args.limit, args.window_ms).await?;
    load_outbox(&rig.db.pool, contacts, contacts).await?;
    let folder = rig.worker_on(rig.db.pool.clone()).await?;
    while folder.ingest_once().await?.claimed > 0 {}
    let dirty = rig.db.dirty().await?;
    eprintln!("p1: {workers} worker(s): {dirty} dirty objects folded; measuring");
    // Let the start-up requests leave the simulator's window before measuring.
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    rig.sim.reset_requests();

    let mut running = Running::default();
    for _ in 0..workers {
        running.spawn(rig.worker().await?);
    }
    let first = loop {
        if let Some(r) = upserts(&rig.sim.requests()).first() {
            break r.at;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let end = first + window * args.windows;
    // One more window, for the start offsets of the phase-averaged count.
    let recorded_end = end + window;
    tokio::time::sleep_until((recorded_end + Duration::from_millis(100)).into()).await;
    running.stop().await?;

    let requests = rig.sim.requests();
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
    let ok: Vec<&SimRequest> = measured
        .iter()
        .copied()
        .filter(|r| r.path.ends_with("/batch/upsert") && is_2xx(r))
        .collect();
    let inputs_avg = mean_inputs(&ok);
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    drop(folder);
    rig.finish().await?;
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
