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

/// What arrives on `hubsync` within a short wait, in order.
async fn heard(listener: &mut sqlx::postgres::PgListener) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(n) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await {
        got.push(
            n.expect("the listening connection failed")
                .payload()
                .to_owned(),
        );
    }
    got
}

#[sqlx::test(migrations = false)]
async fn the_outbox_notifies_once_per_transaction_and_only_for_what_it_keeps(pool: PgPool) {
    let h = Harness::new(pool).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&h.pool)
        .await
        .unwrap();
    listener.listen("hubsync").await.unwrap();
    let insert = |ids: &str| {
        format!(
            "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties)
             SELECT id, 'contact', 'a@acme.com', '{{}}' FROM unnest('{{{ids}}}'::uuid[]) AS id"
        )
    };
    let (a, b, c) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );

    // Three rows in two statements of one transaction: one notification.
    let mut tx = h.pool.begin().await.unwrap();
    sqlx::query(&insert(&format!("{a},{b}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&insert(&c.to_string()))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(heard(&mut listener).await, ["outbox"]);

    // Ids already waiting are skipped, and nothing is said.
    let done = sqlx::query(&insert(&format!("{a},{c}")))
        .execute(&h.pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 0);
    let queued: bool = sqlx::query_scalar(
        "SELECT hubsync.enqueue(event_id => $1, object_type => 'contact',
                                object_key => 'a@acme.com', properties => '{}')",
    )
    .bind(b)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(!queued);
    assert_eq!(heard(&mut listener).await, Vec::<String>::new());

    // A producer that turned notifications off is not heard; enqueue is heard once.
    let mut tx = h.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL hubsync.notify = 'off'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&insert(&uuid::Uuid::new_v4().to_string()))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(heard(&mut listener).await, Vec::<String>::new());
    h.enqueue("d@acme.com", json!({"total_sessions": 1})).await;
    assert_eq!(heard(&mut listener).await, ["outbox"]);
    assert_eq!(h.count("outbox").await, 5);
}
