//! Idle workers sleep on LISTEN: an event committed by `hubsync.enqueue` or a plain INSERT,
//! and a replay an operator asks for, wake them; nothing else does within the test (their own
//! look comes only once an hour here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::{CONFIG, Harness};

async fn arrives(h: &Harness, email: &str, name: &str, value: &str) {
    let started = Instant::now();
    while h.prop(email, name).as_deref() != Some(value) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{email} never got {name} = {value}: the worker was not woken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn notifications_wake_an_idle_worker(pool: PgPool) {
    let config = format!("{CONFIG}\n[worker]\nidle_poll_secs = 3600\n");
    let h = Harness::with(pool, &config, Default::default()).await;
    h.setup().await;
    let worker = Arc::new(crate::harness::worker_for(&h.pool, &h.sim, &h.config).await);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(cancel.clone()));
    // Let every loop settle into its wait.
    tokio::time::sleep(Duration::from_secs(1)).await;

    h.enqueue("a@acme.com", json!({"total_sessions": 1})).await;
    arrives(&h, "a@acme.com", "total_sessions", "1").await;

    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties)
         VALUES (gen_random_uuid(), 'contact', 'b@acme.com', '{\"total_sessions\": 2}')",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    arrives(&h, "b@acme.com", "total_sessions", "2").await;

    // A refused event, fixed and replayed by an operator's UPDATE.
    h.enqueue("c@acme.com", json!({"current_plan": "platinum"}))
        .await;
    let started = Instant::now();
    while h.dlq().await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query(
        "UPDATE hubsync.dlq SET payload = jsonb_set(payload, '{properties,current_plan}', '\"pro\"'),
                                next_retry_at = now()",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    arrives(&h, "c@acme.com", "current_plan", "pro").await;

    cancel.cancel();
    running.await.unwrap().unwrap();
}
