//! Rolling deploys: workers with an older and a newer hubsync.toml side by side lose nothing
//! and mark nothing synced that was not sent; a rollback hands work back to the older config.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::{
    CONFIG, Harness, database_url, hubsync_beside, parse_config, stderr, worker_for,
};
use crate::invariants::settled;

fn newer_config() -> String {
    format!(
        "{CONFIG}\n[contacts.properties.reports_run]\ntype = \"number\"\nmerge = \"increment\"\n"
    )
}

#[sqlx::test(migrations = false)]
async fn old_and_new_configs_side_by_side_lose_nothing(pool: PgPool) {
    // The old config runs; the new one is rolled out and its start creates the new property.
    let h = Harness::new(pool).await;
    h.setup().await;
    let old_config = h.config.clone();
    let new_config = parse_config(&newer_config());
    h.setup_with(&new_config).await;
    let old = Arc::new(worker_for(&h.pool, &h.sim, &old_config).await);
    let new = Arc::new(worker_for(&h.pool, &h.sim, &new_config).await);
    assert!(new.generation() > old.generation());

    let stop_old = CancellationToken::new();
    let stop_new = CancellationToken::new();
    let old_run = tokio::spawn(old.clone().run(stop_old.clone()));
    let new_run = tokio::spawn(new.clone().run(stop_new.clone()));

    let mut sessions: BTreeMap<String, i64> = BTreeMap::new();
    let mut reports: BTreeMap<String, i64> = BTreeMap::new();
    let started = Instant::now();
    let mut round = 0i64;
    while started.elapsed() < Duration::from_secs(4) {
        for c in 0..20 {
            let email = format!("roll{c}@acme.com");
            h.enqueue(
                &email,
                json!({"total_sessions": 1, "reports_run": round % 3 + 1}),
            )
            .await;
            *sessions.entry(email.clone()).or_default() += 1;
            *reports.entry(email).or_default() += round % 3 + 1;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !settled(&h.pool).await {
        assert!(started.elapsed() < Duration::from_secs(60), "not settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The rollout finishes: the old worker stops.
    stop_old.cancel();
    old_run.await.unwrap().unwrap();

    for (email, sum) in &sessions {
        assert_eq!(
            h.prop(email, "total_sessions"),
            Some(sum.to_string()),
            "{email}"
        );
        assert_eq!(
            h.prop(email, "reports_run"),
            Some(reports[email].to_string()),
            "{email}"
        );
    }
    let unknown: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hubsync.dlq WHERE error_category = 'unknown_property'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(unknown, 0);

    // A rollback: the new workers stop, and a worker of the old config takes work again.
    stop_new.cancel();
    new_run.await.unwrap().unwrap();
    let rolled_back = worker_for(&h.pool, &h.sim, &old_config).await;
    assert_eq!(
        rolled_back.generation(),
        old.generation(),
        "known declarations keep their place"
    );
    h.enqueue("roll0@acme.com", json!({"total_sessions": 5}))
        .await;
    rolled_back
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        h.prop("roll0@acme.com", "total_sessions"),
        Some((sessions["roll0@acme.com"] + 5).to_string())
    );
}

#[sqlx::test(migrations = false)]
async fn an_older_config_takes_no_work_while_a_newer_one_runs(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let old = &h.worker;
    let new_config = parse_config(&newer_config());
    h.setup_with(&new_config).await;
    let new = worker_for(&h.pool, &h.sim, &new_config).await;
    assert!(new.generation() > old.generation());
    h.enqueue("a@acme.com", json!({"reports_run": 2})).await;
    let step = old.run_until_idle(&CancellationToken::new()).await.unwrap();
    assert_eq!(step.ingested, 0, "the older worker stands aside");
    assert_eq!(h.count("outbox").await, 1);
    assert!(h.dlq().await.is_empty(), "nothing refused as unknown");
    new.run_until_idle(&CancellationToken::new()).await.unwrap();
    assert_eq!(h.prop("a@acme.com", "reports_run").as_deref(), Some("2"));
    let (generations, workers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM hubsync.configs), (SELECT count(*) FROM hubsync.workers)",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(generations, 2);
    assert!(workers >= 2);
}

#[sqlx::test(migrations = false)]
async fn a_finished_until_idle_run_holds_no_older_worker_back(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let url = database_url(&h.pool);
    let base = h.sim.base_url();
    let envs = [
        ("DATABASE_URL", url.as_str()),
        ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
        ("HUBSPOT_BASE_URL", base.as_str()),
    ];
    let newer = newer_config();
    let out = hubsync_beside(&["run", "--until-idle"], Some(&newer), &envs).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let newer_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hubsync.workers w JOIN hubsync.configs c USING (fingerprint)
         WHERE c.generation > (SELECT min(generation) FROM hubsync.configs)",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(newer_rows, 0, "a run that ended is not a running worker");

    // A cron run with the older config, right after: nothing newer runs, so it takes the work.
    h.enqueue("a@acme.com", json!({"total_sessions": 2})).await;
    let out = hubsync_beside(&["run", "--until-idle"], Some(CONFIG), &envs).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(h.count("outbox").await, 0, "{}", stderr(&out));
    assert_eq!(h.prop("a@acme.com", "total_sessions").as_deref(), Some("2"));
}
