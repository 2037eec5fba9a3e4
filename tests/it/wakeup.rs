//! Idle workers sleep on LISTEN: an event committed by `hubsync.enqueue` or a plain INSERT,
//! and a replay an operator asks for, wake them; nothing else does within the test (their own
//! look comes only once an hour here). Producers notify only while a worker waits, and a
//! worker going idle waits for the producers that did not notify before it looks once more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use hubsync::core::vocabulary::ObjectType;
use hubsync::db::producer::{NewEvent, enqueue};
use hubsync::db::wake;

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

/// One event for `hubsync.enqueue`, for a contact, occurring now.
fn contact_event<'a>(event_id: Uuid, email: &'a str, properties: &'a Value) -> NewEvent<'a> {
    NewEvent {
        event_id,
        object_type: ObjectType::Contact,
        object_key: email,
        properties,
        occurred_at: None,
        company_key: None,
    }
}

/// A producer's plain INSERT of one event per id, in one statement.
async fn insert(
    conn: &mut sqlx::PgConnection,
    ids: Vec<Uuid>,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties)
         SELECT id, 'contact', 'a@acme.com', '{}' FROM unnest($1::uuid[]) AS id",
    )
    .bind(ids)
    .execute(conn)
    .await
}

#[sqlx::test(migrations = false)]
async fn the_outbox_notifies_once_per_transaction_and_only_for_what_it_keeps(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("hubsync").await.unwrap();
    // Played here: a worker waiting for new events holds the slots.
    let mut idle_worker = wake::connect(&pool).await.unwrap();
    wake::hold_slots(&mut idle_worker).await.unwrap();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut conn = pool.acquire().await.unwrap();

    // Three rows in two statements of one transaction: one notification.
    let mut tx = pool.begin().await.unwrap();
    insert(&mut tx, vec![a, b]).await.unwrap();
    insert(&mut tx, vec![c]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(heard(&mut listener).await, ["outbox"]);

    // Ids already waiting are skipped, and nothing is said.
    let done = insert(&mut conn, vec![a, c]).await.unwrap();
    assert_eq!(done.rows_affected(), 0);
    let props = json!({});
    let event = |event_id| contact_event(event_id, "a@acme.com", &props);
    assert!(!enqueue(&mut conn, &event(b)).await.unwrap());
    assert_eq!(heard(&mut listener).await, Vec::<String>::new());

    // A producer that turned notifications off is not heard; enqueue is heard once.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL hubsync.notify = 'off'")
        .execute(&mut *tx)
        .await
        .unwrap();
    insert(&mut tx, vec![Uuid::new_v4()]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(heard(&mut listener).await, Vec::<String>::new());
    assert!(enqueue(&mut conn, &event(Uuid::new_v4())).await.unwrap());
    assert_eq!(heard(&mut listener).await, ["outbox"]);
    let waiting: i64 = hubsync::db::status::count(&pool, "outbox").await.unwrap();
    assert_eq!(waiting, 5);

    // A row whose savepoint is rolled back takes its notification with it: the next row kept
    // in the same transaction notifies.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
    insert(&mut tx, vec![Uuid::new_v4()]).await.unwrap();
    sqlx::query("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .unwrap();
    insert(&mut tx, vec![Uuid::new_v4()]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(heard(&mut listener).await, ["outbox"]);

    // No worker waits: nobody is told, through either path.
    wake::release_slots(&mut idle_worker).await.unwrap();
    assert!(enqueue(&mut conn, &event(Uuid::new_v4())).await.unwrap());
    insert(&mut conn, vec![Uuid::new_v4()]).await.unwrap();
    assert_eq!(heard(&mut listener).await, Vec::<String>::new());
}

#[sqlx::test(migrations = false)]
async fn a_worker_going_idle_waits_for_the_producers_that_did_not_notify(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let props = json!({});
    let event = contact_event(Uuid::new_v4(), "a@acme.com", &props);
    // Enqueued while no worker waits: no notification, and the producer keeps its slot.
    let mut producer = pool.begin().await.unwrap();
    assert!(enqueue(&mut producer, &event).await.unwrap());

    let mut waiting = wake::connect(&pool).await.unwrap();
    let holding = tokio::spawn(async move {
        wake::hold_slots(&mut waiting).await.unwrap();
        waiting
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !holding.is_finished(),
        "the slots were taken while a producer that did not notify was still open"
    );
    producer.commit().await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_secs(10), holding)
        .await
        .expect("the slots were not taken after the producer committed")
        .unwrap();
    // What the worker now sees when it looks once more: the producer's row.
    let rows: i64 = hubsync::db::status::count(&pool, "outbox").await.unwrap();
    assert_eq!(rows, 1);
    drop(waiting);
}

#[sqlx::test(migrations = false)]
async fn an_event_committed_while_the_worker_settles_is_not_left_for_its_own_look(pool: PgPool) {
    let config = format!("{CONFIG}\n[worker]\nidle_poll_secs = 3600\n");
    let h = Harness::with(pool, &config, Default::default()).await;
    h.setup().await;
    // A producer's transaction is open, its event inserted, when the worker starts: the
    // worker finds the outbox empty, and the producer found no worker to notify.
    let props = json!({"total_sessions": 4});
    let event = contact_event(Uuid::new_v4(), "late@acme.com", &props);
    let mut producer = h.pool.begin().await.unwrap();
    assert!(enqueue(&mut producer, &event).await.unwrap());

    let worker = Arc::new(crate::harness::worker_for(&h.pool, &h.sim, &h.config).await);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(cancel.clone()));
    // Wait until the worker, idle, asks for the slots and waits for the producer.
    let started = Instant::now();
    loop {
        let asking: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                                             AND classid = $1::int::oid
                                             AND database = (SELECT oid FROM pg_database
                                                             WHERE datname = current_database())",
        )
        .bind(wake::CLASS)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        if asking > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the idle worker never asked for the slots"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    producer.commit().await.unwrap();
    // Its own look would come in three hours; the event arrives now.
    arrives(&h, "late@acme.com", "total_sessions", "4").await;

    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_idle_worker_whose_sessions_were_cut_is_told_again(pool: PgPool) {
    let config = format!("{CONFIG}\n[worker]\nidle_poll_secs = 3600\n");
    let h = Harness::with(pool, &config, Default::default()).await;
    h.setup().await;
    // Its own pool, whose sessions carry hubsync's application name, as `hubsync run`'s do.
    let worker_pool =
        hubsync::db::connect_worker(&crate::harness::database_url(&h.pool), 8, &h.config.worker)
            .await
            .unwrap();
    let worker = Arc::new(crate::harness::worker_for(&worker_pool, &h.sim, &h.config).await);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(cancel.clone()));
    // The session holding every slot, once there is one.
    let holder = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                                      AND classid = $1::int::oid
                                      AND database = (SELECT oid FROM pg_database
                                                      WHERE datname = current_database())
             GROUP BY pid HAVING count(*) = $2",
        )
        .bind(wake::CLASS)
        .bind(i64::from(wake::SLOTS))
        .fetch_optional(&h.pool)
        .await
        .unwrap()
    };
    let until_held_by_other_than = |old: Option<i32>| async move {
        let started = Instant::now();
        loop {
            if let Some(pid) = holder().await.filter(|pid| Some(*pid) != old) {
                return pid;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the idle worker did not take the slots (before: {old:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let first = until_held_by_other_than(None).await;
    // Every worker session is cut, the one holding the slots included, as a restart would.
    let cut = crate::harness::cut_worker_sessions(&h.pool).await;
    assert!(cut >= 2, "the worker's sessions are there to cut ({cut})");
    // The worker takes the slots again on a new connection, and producers notify it: its own
    // look would come in three hours.
    until_held_by_other_than(Some(first)).await;
    h.enqueue("again@acme.com", json!({"total_sessions": 7}))
        .await;
    arrives(&h, "again@acme.com", "total_sessions", "7").await;

    cancel.cancel();
    running.await.unwrap().unwrap();
}
