//! What an on-call engineer sees: `/metrics` agreeing with the database and the simulator,
//! `/readyz` through a revoked token, the JSON log, `status --json`, and the alert rules
//! naming only series the exporter emits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hubspot_sim::SimConfig;
use hubsync::telemetry::Telemetry;
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{CONFIG, Harness, database_url};
use crate::invariants::{settled, spawn_worker_with};

/// Waits until nothing waits in the outbox and no object is dirty (at most `secs` seconds).
async fn wait_settled(pool: &PgPool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !settled(pool).await {
        assert!(Instant::now() < deadline, "the worker never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// `GET http://addr/path`: status and body.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reply = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = reply.status().as_u16();
    Some((status, reply.text().await.ok()?))
}

/// Polls `GET path` until `ok` holds for the answer (at most `secs` seconds).
async fn wait_for(addr: &str, path: &str, secs: u64, ok: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = get(addr, path).await {
            if ok(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("GET {path} never satisfied the test; last answer: {last:?}");
}

fn value(text: &str, series: &str) -> f64 {
    Telemetry::value_of(text, series).unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
}

/// Requests the simulator answered on `path_end`, by the outcome label hubsync gives them.
fn sim_outcomes(h: &Harness, path_end: &str) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for r in h.sim.requests() {
        if !r.path.ends_with(path_end) {
            continue;
        }
        let outcome = match r.status {
            200..=299 => "ok",
            429 => "rate_limited",
            401 | 403 => "auth_refused",
            400..=499 => "client_error",
            _ => "server_error",
        };
        *out.entry(outcome).or_default() += 1.0;
    }
    out
}

#[sqlx::test(migrations = false)]
async fn metrics_agree_with_the_database_and_the_simulator_and_readyz_follows_a_revoked_token(
    pool: PgPool,
) {
    let h = Harness::with(pool.clone(), CONFIG, SimConfig::default()).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = crate::harness::tempdir();
    let config_path = dir.join("hubsync.toml");
    // The file's listener is overridden by HUBSYNC_METRICS_LISTEN below.
    let config = format!(
        "{CONFIG}\n[worker]\nauth_probe_secs = 1\npoll_interval_ms = 100\n\n[metrics]\nlisten = \"127.0.0.1:1\"\n"
    );
    std::fs::write(&config_path, config).unwrap();

    // 60 valid events for 20 contacts, and invalid ones of two kinds.
    for i in 0..60 {
        h.enqueue(
            &format!("m{}@acme.com", i % 20),
            json!({"total_sessions": 1, "current_plan": "pro"}),
        )
        .await;
    }
    for i in 0..3 {
        h.enqueue(&format!("bad{i}@acme.com"), json!({"no_such_property": 1}))
            .await;
    }
    for i in 0..2 {
        h.enqueue(&format!("not-an-email-{i}"), json!({"total_sessions": 1}))
            .await;
    }

    let url = database_url(&pool);
    let base = h.sim.base_url();
    let _worker = spawn_worker_with(
        &url,
        &base,
        &config_path,
        &[("HUBSYNC_METRICS_LISTEN", addr.as_str())],
    );

    wait_for(&addr, "/healthz", 30, |s, _| s == 200).await;
    wait_for(&addr, "/readyz", 30, |s, _| s == 200).await;
    wait_settled(&pool, 60).await;
    // The queue gauges are at most a few seconds old.
    let text = wait_for(&addr, "/metrics", 20, |s, t| {
        s == 200
            && Telemetry::value_of(t, "hubsync_outbox_backlog") == Some(0.0)
            && Telemetry::value_of(t, "hubsync_objects_dirty{object_type=\"contact\"}") == Some(0.0)
    })
    .await;
    assert_eq!(value(&text, "hubsync_queue_gauges_fresh"), 1.0);

    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ledger, 65);
    assert_eq!(value(&text, "hubsync_events_ingested_total"), ledger as f64);
    let by_category: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT error_category, count(*), count(*) FILTER (WHERE kind = 'event')
           FROM hubsync.dlq GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        by_category.iter().map(|c| c.2).sum::<i64>(),
        5,
        "{by_category:?}"
    );
    assert!(
        by_category.len() >= 2,
        "two kinds of refusal: {by_category:?}"
    );
    for (category, rows, events) in &by_category {
        assert_eq!(
            value(
                &text,
                &format!("hubsync_dlq_rows{{category=\"{category}\"}}")
            ),
            *rows as f64
        );
        assert_eq!(
            value(
                &text,
                &format!("hubsync_events_dead_lettered_total{{category=\"{category}\"}}")
            ),
            *events as f64
        );
    }
    let written: usize = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("contacts/batch/upsert") && r.status == 200)
        .map(|r| r.inputs)
        .sum();
    assert!(written >= 20);
    assert_eq!(
        value(
            &text,
            "hubsync_objects_synced_total{object_type=\"contact\"}"
        ),
        written as f64
    );
    let ok = sim_outcomes(&h, "contacts/batch/upsert");
    assert_eq!(
        value(
            &text,
            "hubsync_hubspot_requests_total{endpoint=\"contacts/batch/upsert\",outcome=\"ok\"}"
        ),
        ok["ok"]
    );
    assert_eq!(value(&text, "hubsync_outbox_oldest_age_seconds"), 0.0);
    assert_eq!(value(&text, "hubsync_halted"), 0.0);
    assert!(value(&text, "hubsync_hubspot_request_duration_seconds_count") >= ok["ok"]);
    assert!(value(&text, "hubsync_batch_inputs_count") >= 1.0);
    assert!(text.contains("hubsync_rate_limited_total{policy=\"daily\"} 0"));
    assert!(text.contains("# TYPE hubsync_daily_budget_remaining gauge"));

    // A revoked token: the worker halts and says so on /readyz.
    h.sim.set_token("revoked");
    h.enqueue("after-revoke@acme.com", json!({"total_sessions": 1}))
        .await;
    let why = wait_for(&addr, "/readyz", 30, |s, _| s == 503).await;
    assert!(why.contains("halted"), "{why}");
    assert!(!why.contains("sim-token"), "{why}");
    // The shared pause says it is a halt, for `hubsync status` (it is written again at each
    // probe, every second here, and cleared between them).
    let mut reason = None;
    for _ in 0..100 {
        reason = sqlx::query_scalar(
            "SELECT pause_reason FROM hubsync.limiter
             WHERE name = 'hubspot' AND paused_until > now() AND pause_reason IS NOT NULL",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if reason.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason: String = reason.expect("a pause while halted");
    assert!(reason.starts_with("halted: HubSpot refused"), "{reason}");
    let text = wait_for(&addr, "/metrics", 10, |_, t| {
        Telemetry::value_of(t, "hubsync_halted") == Some(1.0)
    })
    .await;
    assert!(
        value(
            &text,
            "hubsync_hubspot_requests_total{endpoint=\"contacts/batch/upsert\",outcome=\"auth_refused\"}"
        ) >= 1.0
    );

    // The token works again: the worker resumes by itself and is ready.
    h.sim.set_token("sim-token");
    wait_for(&addr, "/readyz", 30, |s, _| s == 200).await;
    wait_settled(&pool, 30).await;
    let text = wait_for(&addr, "/metrics", 10, |_, t| {
        Telemetry::value_of(t, "hubsync_halted") == Some(0.0)
    })
    .await;
    let outcomes = sim_outcomes(&h, "contacts/batch/upsert");
    for (outcome, n) in &outcomes {
        assert_eq!(
            value(
                &text,
                &format!(
                    "hubsync_hubspot_requests_total{{endpoint=\"contacts/batch/upsert\",outcome=\"{outcome}\"}}"
                )
            ),
            *n,
            "{outcome}"
        );
    }
    assert!(h.prop("after-revoke@acme.com", "total_sessions").is_some());
}

#[sqlx::test(migrations = false)]
async fn a_json_log_is_one_object_per_line_with_a_line_per_batch_and_per_ingest_chunk(
    pool: PgPool,
) {
    let token = "pat-na1-json-log-secret-0123";
    let sim = SimConfig {
        token: hubspot_sim::Token::new(token),
        daily_limit: Some(250_000),
        ..SimConfig::default()
    };
    let h = Harness::with(pool.clone(), CONFIG, sim).await;
    for i in 0..30 {
        h.enqueue(
            &format!("j{}@acme.com", i % 10),
            json!({"total_sessions": 1}),
        )
        .await;
    }
    h.enqueue("j-bad@acme.com", json!({"no_such_property": 1}))
        .await;
    h.enqueue("not-an-email", json!({"total_sessions": 1}))
        .await;
    let url = database_url(&pool);
    let base = h.sim.base_url();
    let out = crate::harness::hubsync_beside(
        &["run", "--until-idle"],
        Some(CONFIG),
        &[
            ("DATABASE_URL", url.as_str()),
            ("HUBSPOT_BASE_URL", base.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", token),
            ("HUBSYNC_LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let log = crate::harness::stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(token), "the token leaked into the log");
    let mut lines = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
        lines.push(v);
    }
    let with = |m: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|v| v["message"] == m).collect()
    };
    let chunks = with("ingest chunk");
    assert!(!chunks.is_empty(), "{log}");
    let total = |vs: &[&serde_json::Value], f: &str| -> u64 {
        vs.iter()
            .map(|v| v[f].as_u64().unwrap_or_else(|| panic!("{f} in {v}")))
            .sum()
    };
    assert_eq!(total(&chunks, "folded"), 30);
    assert_eq!(total(&chunks, "dead_lettered"), 2);
    for v in &chunks {
        assert!(v["duration_ms"].is_u64(), "{v}");
    }
    let batches = with("batch");
    assert!(!batches.is_empty(), "{log}");
    for v in &batches {
        assert_eq!(v["object_type"], "contact", "{v}");
        for f in ["inputs", "written", "refused", "retried", "duration_ms"] {
            assert!(v[f].is_u64(), "{f} in {v}");
        }
        assert_eq!(v["http_status"], 200, "{v}");
        assert!(
            v["daily_budget_left"].as_u64().is_some_and(|d| d < 250_000),
            "{v}"
        );
    }
    assert_eq!(total(&batches, "written"), 10);
    assert_eq!(total(&batches, "inputs"), 10);
    let idle = "idle: 32 events ingested (2 dead-lettered), 10 objects written";
    assert!(
        lines
            .iter()
            .any(|v| v["message"].as_str().is_some_and(|m| m.starts_with(idle))),
        "{log}"
    );
}

#[sqlx::test(migrations = false)]
async fn status_json_reports_backlog_oldest_age_drain_rate_and_eta(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    // 50 events waiting for 5 minutes; 120 processed in the last minute (2 per second).
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at, enqueued_at)
         SELECT gen_random_uuid(), 'contact', 'u' || i || '@acme.com', '{\"total_sessions\": 1}',
                now(), now() - interval '5 minutes'
           FROM generate_series(1, 50) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    // And 30 processed earlier, which the drain rate leaves out.
    sqlx::query(
        "INSERT INTO hubsync.ledger (event_id, processed_at)
         SELECT gen_random_uuid(),
                now() - CASE WHEN i <= 120 THEN make_interval(secs => i / 4.0)
                             ELSE interval '5 minutes' END
           FROM generate_series(1, 150) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The shared limiter as a worker leaves it (no hubspot.daily_budget).
    sqlx::query("INSERT INTO hubsync.limiter (name) VALUES ('hubspot')")
        .execute(&pool)
        .await
        .unwrap();
    let url = database_url(&pool);
    let out = crate::harness::hubsync_beside(
        &["status", "--json"],
        Some(CONFIG),
        &[("DATABASE_URL", url.as_str())],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("status --json is JSON");
    assert_eq!(v["outbox_backlog"], 50);
    let age = v["oldest_event_age_s"].as_f64().expect("oldest age");
    assert!((300.0..330.0).contains(&age), "{age}");
    assert_eq!(v["processed_last_minute"], 120);
    assert_eq!(v["drain_rate_per_s"], 2.0);
    // 50 events at 2/s: 25 s; the rate limit (100 requests per 10 s) would allow 1000/s.
    assert_eq!(v["eta_at_drain_rate_s"], 25.0);
    assert_eq!(v["eta_at_rate_limit_s"], 0.1);
    assert_eq!(v["eta_s"], 25.0);
    assert_eq!(v["rate_limit_per_10s"], 100);
    assert_eq!(v["paused_now"], false);
    assert!(v["generation_in_use"].is_null());
    assert!(v.get("workers_by_generation").is_some());
    assert_eq!(v["dlq_by_category"], json!({}));
    assert_eq!(v["associations_waiting"], 0);
    // No hubspot.daily_budget: nothing is left to count, rather than nothing left.
    assert!(v["daily_budget"].is_null(), "{v}");
    assert!(v["budget_left"].is_null(), "{v}");

    // The text form says the same in words.
    let status_text = || async {
        let out = crate::harness::hubsync_beside(
            &["status"],
            Some(CONFIG),
            &[("DATABASE_URL", url.as_str())],
        )
        .await;
        assert!(out.status.success(), "{}", crate::harness::stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status_text().await;
    assert!(
        text.contains("2.0 events/s taken from the outbox over the last minute"),
        "{text}"
    );
    assert!(
        text.contains("25s (at the drain rate 25s, at the rate limit 0s)"),
        "{text}"
    );
    assert!(text.contains("pause | none"), "{text}");
    assert!(
        text.contains("daily_budget | not set (hubspot.daily_budget); 0 requests today"),
        "{text}"
    );
    // With a budget, the text gives what is used and left of it, as --json does.
    sqlx::query(
        "UPDATE hubsync.limiter SET daily_budget = 1000, day_used = 40,
                day_ends = now() + interval '1 hour'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let text = status_text().await;
    assert!(
        text.contains("daily_budget | 40 used of 1000, 960 left; the portal's day resets at"),
        "{text}"
    );

    // --watch draws the same with a progress bar, until stopped.
    let mut watch = crate::harness::command(
        &["status", "--watch"],
        Some(CONFIG),
        &[("DATABASE_URL", url.as_str())],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("status --watch starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("status --watch stops");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("outbox_backlog | 50"), "{screen}");
    assert!(
        screen.contains("0% 0 of 50 events drained since watching began"),
        "{screen}"
    );
}

#[sqlx::test(migrations = false)]
async fn readyz_says_a_worker_stands_aside_for_a_newer_config_and_serves_its_own_counts(
    pool: PgPool,
) {
    use hubsync::telemetry::metrics::Readiness;
    let h = Harness::new(pool.clone()).await;
    h.setup().await;
    let newer = crate::harness::parse_config(&format!(
        "{CONFIG}\n[contacts.properties.reports_run]\ntype = \"number\"\nmerge = \"increment\"\n"
    ));
    h.setup_with(&newer).await;
    h.worker.telemetry().set_reconciled();
    assert_eq!(h.worker.telemetry().readiness(Ok(())), Readiness::Ready);
    let new = crate::harness::worker_for(&pool, &h.sim, &newer).await;
    h.worker.heartbeat().await.unwrap();
    let Readiness::NotReady(why) = h.worker.telemetry().readiness(Ok(())) else {
        panic!("an older generation is not ready while a newer one runs");
    };
    assert!(why.iter().any(|w| w.contains("standing aside")), "{why:?}");

    // Served over HTTP, from this worker's own registry: the newer worker's work is not in it.
    let cancel = tokio_util::sync::CancellationToken::new();
    let addr = hubsync::telemetry::health::serve(
        "127.0.0.1:0".parse().unwrap(),
        h.worker.telemetry().clone(),
        pool.clone(),
        cancel.clone(),
    )
    .await
    .unwrap()
    .to_string();
    let (status, body) = get(&addr, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("standing aside"), "{body}");
    h.enqueue("aside@acme.com", json!({"total_sessions": 1}))
        .await;
    new.run_until_idle(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let (_, text) = get(&addr, "/metrics").await.unwrap();
    assert_eq!(value(&text, "hubsync_events_ingested_total"), 0.0);
    assert_eq!(
        value(&new.telemetry().render(), "hubsync_events_ingested_total"),
        1.0
    );
    assert_eq!(value(&text, "hubsync_ready"), 0.0);
    cancel.cancel();
}

/// `hubsync status | head -1`, `hubsync dlq list | head -1`: a reader that goes away ends the
/// command quietly, with no panic and exit code 0. Here the reader is gone before the command
/// prints anything, so every first write meets a closed pipe.
#[sqlx::test(migrations = false)]
async fn a_reader_that_goes_away_ends_a_command_quietly(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let url = database_url(&pool);
    for args in [&["status"][..], &["status", "--json"], &["dlq", "list"]] {
        let mut child = crate::harness::command(args, Some(CONFIG), &[("DATABASE_URL", &url)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hubsync starts");
        drop(child.stdout.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .expect("hubsync ends");
        let err = crate::harness::stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// `status` answers with a wrong hubsync.toml too (it reads the file only for the rate limit),
/// and says what is wrong with it.
#[sqlx::test(migrations = false)]
async fn status_reports_with_a_wrong_config_and_names_the_mistake(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let url = database_url(&pool);
    let out = crate::harness::hubsync_beside(
        &["status", "--json"],
        Some("[hubspot]\nrequests_per_10s = \"many\"\n"),
        &[("DATABASE_URL", url.as_str())],
    )
    .await;
    let err = crate::harness::stderr(&out);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["outbox_backlog"], 0);
    assert!(
        err.contains("hubsync.toml") && err.contains("requests_per_10s"),
        "{err}"
    );
}

/// A producer sending many bad events at once does not flood the log: one warning per category
/// per chunk, with the count and a first reason. A log read from a file or a pipe carries no
/// colour codes.
#[sqlx::test(migrations = false)]
async fn a_text_log_of_many_bad_events_says_each_category_once_without_colour_codes(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties)
         SELECT gen_random_uuid(), 'contact', 'u' || i || '@acme.com',
                '{\"current_plan\": \"platinum\"}'
         FROM generate_series(1, 300) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    h.enqueue("ok@acme.com", json!({"total_sessions": 1})).await;
    let url = database_url(&pool);
    let base = h.sim.base_url();
    let out = crate::harness::hubsync_beside(
        &["run", "--until-idle"],
        Some(CONFIG),
        &[
            ("DATABASE_URL", url.as_str()),
            ("HUBSPOT_BASE_URL", base.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let log = crate::harness::stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dead-lettered as invalid_value"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains("300 events") && refused[0].contains("platinum"),
        "{log}"
    );
    assert!(
        log.lines().count() < 30,
        "{} lines: {log}",
        log.lines().count()
    );
    assert_eq!(h.count("dlq").await, 300);
}

/// Events folded but not yet sent count as waiting, a pause adds its time, and a halt says so:
/// an empty outbox in front of a stalled sync is not "nothing waiting".
#[sqlx::test(migrations = false)]
async fn status_counts_objects_still_to_send_and_names_a_halt(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    sqlx::query(
        "INSERT INTO hubsync.objects (object_type, object_key, state, version, dirty, dirty_since)
         SELECT 'contact', 'u' || i || '@acme.com', '{}', 1, true, now()
           FROM generate_series(1, 3000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO hubsync.limiter (name) VALUES ('hubspot')")
        .execute(&pool)
        .await
        .unwrap();
    let url = database_url(&pool);
    let status = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let out = crate::harness::hubsync_beside(
                args,
                Some(CONFIG),
                &[("DATABASE_URL", url.as_str())],
            )
            .await;
            assert!(out.status.success(), "{}", crate::harness::stderr(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let v: serde_json::Value = serde_json::from_str(&status(&["status", "--json"]).await).unwrap();
    // 3000 objects, 100 to a request, 100 requests per 10 s: 3 s.
    assert_eq!(v["outbox_backlog"], 0);
    assert_eq!(v["eta_s"], 3.0, "{v}");
    assert_eq!(v["halted_now"], false);
    let text = status(&["status"]).await;
    assert!(!text.contains("nothing waiting"), "{text}");

    // A 429's pause adds its time; a halt is named as one.
    sqlx::query(
        "UPDATE hubsync.limiter SET paused_until = now() + interval '60 seconds',
                pause_reason = 'HubSpot rate limit (TEN_SECONDLY_ROLLING)'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&status(&["status", "--json"]).await).unwrap();
    let eta = v["eta_s"].as_f64().unwrap();
    assert!((60.0..=63.0).contains(&eta), "{v}");
    assert_eq!(
        (v["paused_now"].clone(), v["halted_now"].clone()),
        (json!(true), json!(false))
    );
    sqlx::query(
        "UPDATE hubsync.limiter SET pause_reason = 'halted: HubSpot refused the access token'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&status(&["status", "--json"]).await).unwrap();
    assert_eq!(v["halted_now"], true, "{v}");
    assert!(v["eta_s"].is_null(), "{v}");
    let text = status(&["status"]).await;
    assert!(
        text.contains("HALTED") && text.contains("eta | unknown: syncing is halted"),
        "{text}"
    );
    assert!(
        text.contains("): HubSpot refused the access token"),
        "said once: {text}"
    );
    assert!(text.contains("dead-letter rows by category"), "{text}");
}
