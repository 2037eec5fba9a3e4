//! The portal's limits: a daily budget hubsync keeps to, and a rate limit learned from
//! HubSpot's headers when `requests_per_10s` is not configured.

use std::sync::Arc;
use std::time::Duration;

use hubspot_sim::SimConfig;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::{CONFIG, Harness, parse_config, worker_for};

#[sqlx::test(migrations = false)]
async fn the_daily_budget_caps_what_hubsync_spends_in_a_portal_day(pool: PgPool) {
    let text = CONFIG
        .replace("[hubspot]\n", "[hubspot]\ndaily_budget = 40\n")
        .replace(
            "[contacts.properties.total_sessions]",
            "[worker]\nbatch_size = 1\n\n[contacts.properties.total_sessions]",
        );
    let h = Harness::with(pool, &text, SimConfig::default()).await;
    h.setup().await;
    for i in 0..60 {
        h.enqueue(&format!("b{i:02}@acme.com"), json!({"total_sessions": 1}))
            .await;
    }
    h.drain().await;
    assert_eq!(
        h.sim.requests().len(),
        40,
        "every call counts, none past the budget"
    );
    let (used, left): (i64, i64) = sqlx::query_as(
        "SELECT used_today, budget_left FROM (SELECT * FROM hubsync.limiter) l,
         LATERAL (SELECT CASE WHEN l.day_ends > now() THEN l.day_used ELSE 0 END AS used_today,
                         greatest(l.daily_budget - l.day_used, 0) AS budget_left) s
         WHERE l.name = 'hubspot'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!((used, left), (40, 0));
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.objects WHERE dirty")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert!(waiting > 0, "the rest waits for the next portal day");
}

#[sqlx::test(migrations = false)]
async fn start_up_calls_keep_to_the_daily_budget_too(pool: PgPool) {
    // The worker's start reads the portal's details: one call. Creating the declared
    // properties needs several more; only two are left in the budget.
    let text = CONFIG.replace("[hubspot]\n", "[hubspot]\ndaily_budget = 3\n");
    let h = Harness::with(pool, &text, SimConfig::default()).await;
    let before = h.sim.requests().len();
    assert_eq!(before, 1, "the account details call");
    let config = parse_config(&text);
    let limiter = hubsync::ratelimit::Limiter::configured(h.pool.clone(), &config.hubspot)
        .await
        .unwrap();
    let setup = hubsync::setup::Setup::new(h.client(), Some(limiter));
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        hubsync::reconcile::ensure(&setup, &config),
    )
    .await
    .expect("a spent budget refuses at once, it does not wait for the portal's midnight")
    .expect_err("the properties cannot all be created within the budget");
    assert!(format!("{err:#}").contains("daily_budget"), "{err:#}");
    assert_eq!(h.sim.requests().len(), 3, "no call past the budget");
}

#[sqlx::test(migrations = false)]
async fn a_limit_stated_by_hubspot_is_used_without_being_configured(pool: PgPool) {
    const LIMIT: usize = 190;
    const WINDOW: Duration = Duration::from_millis(8000);
    let sim = SimConfig {
        requests_per_window: LIMIT as u32,
        window: WINDOW,
        ..SimConfig::default()
    };
    // No requests_per_10s: hubsync starts at 100 per window and adopts what the headers say.
    let text = CONFIG
        .replace(
            "requests_per_10s = 100            # optional ceiling; absent: learned from HubSpot's headers\n",
            "rate_window_ms = 8000\nrate_margin_ms = 100\n",
        )
        .replace(
            "[contacts.properties.total_sessions]",
            "[worker]\nbatch_size = 1\nconcurrency = 6\n\n[contacts.properties.total_sessions]",
        );
    assert!(!text.contains("requests_per_10s"));
    let h = Harness::with(pool, &text, sim).await;
    h.setup().await;
    for i in 0..800 {
        h.enqueue(&format!("r{i:04}@acme.com"), json!({"total_sessions": 1}))
            .await;
    }
    let config = parse_config(&text);
    assert_eq!(config.hubspot.requests_per_10s, None);
    let worker = Arc::new(worker_for(&h.pool, &h.sim, &config).await);
    // Fold the backlog first, so the measured window is pure sending.
    while worker.ingest_once().await.unwrap().claimed > 0 {}
    h.sim.reset_requests();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(cancel.clone()));
    tokio::time::sleep(WINDOW * 2 + Duration::from_secs(1)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();

    let upserts = h.upserts();
    assert!(
        upserts.iter().all(|r| r.status != 429),
        "never over HubSpot's limit"
    );
    // The second window: the first one includes learning (100 until the first reply).
    let start = upserts[0].at + WINDOW;
    let in_window = upserts
        .iter()
        .filter(|r| r.at >= start && r.at < start + WINDOW)
        .count();
    assert!(
        in_window * 100 >= LIMIT * 95,
        "{in_window} requests in a {WINDOW:?} window, HubSpot allows {LIMIT}"
    );
}
