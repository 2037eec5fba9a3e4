//! The database can come and go, and the parts that share it stay fair and deadlock-free:
//! worker backends terminated mid-run, the lock order between replay and recording, objects in
//! backoff under a storm of fresh ones, and batches that would outlive their lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubspot_sim::SimConfig;
use hubsync::core::vocabulary::ObjectType;
use hubsync::db::objects::{Written, dead_letter, lease, record_written};
use hubsync::ratelimit::{LIMITER, Limiter};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::{CONFIG, Harness, cut_worker_sessions, database_url, worker_for};
use crate::invariants::settled;

#[sqlx::test(migrations = false)]
async fn workers_ride_out_their_connections_being_terminated(pool: PgPool) {
    // Short leases: a batch whose lease was taken just before its session was cut is sent
    // again once the lease runs out.
    let config = format!(
        "{}\n[worker]\nlease_secs = 10\n",
        CONFIG.replace(
            "requests_per_10s = 100",
            "requests_per_10s = 100\nrequest_timeout_secs = 2"
        )
    );
    let h = Harness::with(pool, &config, SimConfig::default()).await;
    h.setup().await;
    let worker_pool = hubsync::db::connect_worker(&database_url(&h.pool), 8, &h.config.worker)
        .await
        .unwrap();
    let worker = Arc::new(worker_for(&worker_pool, &h.sim, &h.config).await);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(cancel.clone()));

    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for round in 0..6 {
        for c in 0..40 {
            let email = format!("t{c}@acme.com");
            let delta = (c % 3 + round) as i64 + 1;
            h.enqueue(&email, json!({"total_sessions": delta})).await;
            *expected.entry(email).or_default() += delta;
        }
        // Every worker session is cut, as a Postgres restart or a failover would.
        let cut = cut_worker_sessions(&h.pool).await;
        assert!(
            cut > 0 || round > 0,
            "the worker's sessions are there to cut"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let started = Instant::now();
    while !settled(&h.pool).await {
        assert!(
            !running.is_finished(),
            "the worker stopped: {:?}",
            running.await
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the worker did not settle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!running.is_finished(), "the worker is still running");
    cancel.cancel();
    running.await.unwrap().unwrap();
    for (email, sum) in expected {
        assert_eq!(
            h.prop(&email, "total_sessions"),
            Some(sum.to_string()),
            "{email}"
        );
    }
    assert!(h.dlq().await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn replaying_and_recording_the_same_objects_at_once_cannot_deadlock(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let keys: Vec<String> = (0..30).map(|i| format!("k{i:02}@acme.com")).collect();
    for round in 0..25 {
        sqlx::query("DELETE FROM hubsync.objects")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM hubsync.dlq")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO hubsync.objects (object_type, object_key, state, dirty, dirty_since)
             SELECT 'contact', k, '{}', true, now() FROM unnest($1::text[]) AS k",
        )
        .bind(&keys)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO hubsync.dlq (kind, object_type, object_key, payload, error_category,
                                      error_message, next_retry_at)
             SELECT 'object', 'contact', k, '{}', 'hubspot_error', 'x', now() - interval '1 s'
             FROM unnest($1::text[]) AS k",
        )
        .bind(&keys)
        .execute(&pool)
        .await
        .unwrap();
        let (token, leased) = crate::harness::lease_contacts(&pool).await;
        let (written, failed) = leased.split_at(leased.len() / 2);
        let written: Vec<Written> = written
            .iter()
            .map(|l| Written {
                key: l.key.clone(),
                version: l.version,
                hubspot_id: None,
                held: None,
            })
            .collect();
        let failures: Vec<_> = failed
            .iter()
            .map(|l| crate::harness::retryable_failure(l, "x".into()))
            .collect();
        let (a, b, c) = tokio::join!(
            hubsync::db::dlq::requeue_due_objects(&pool, 100, Duration::from_secs(3600)),
            record_written(&pool, ObjectType::Contact, token, &written),
            dead_letter(&pool, ObjectType::Contact, token, &failures, 10),
        );
        a.unwrap_or_else(|e| panic!("round {round}: replay: {e}"));
        b.unwrap_or_else(|e| panic!("round {round}: record: {e}"));
        c.unwrap_or_else(|e| panic!("round {round}: dead-letter: {e}"));
    }
}

#[sqlx::test(migrations = false)]
async fn an_object_in_backoff_is_leased_when_due_even_under_a_storm_of_fresh_ones(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    sqlx::query(
        "INSERT INTO hubsync.objects (object_type, object_key, state, dirty, dirty_since,
                                      attempts, next_attempt_at)
         VALUES ('contact', 'backoff@acme.com', '{}', true, now() - interval '1 hour', 3,
                 now() - interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO hubsync.objects (object_type, object_key, state, dirty, dirty_since)
         SELECT 'contact', 'fresh' || i || '@acme.com', '{}', true, now()
         FROM generate_series(1, 300) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let leased = lease(
        &pool,
        ObjectType::Contact,
        100,
        Duration::from_secs(60),
        uuid::Uuid::new_v4(),
        i64::MAX,
    )
    .await
    .unwrap();
    assert_eq!(leased.len(), 100);
    assert!(
        leased.iter().any(|l| l.key == "backoff@acme.com"),
        "the object whose retry fell due before the storm is in the first batch"
    );
}

#[sqlx::test(migrations = false)]
async fn a_permit_is_never_granted_past_the_callers_deadline(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    // One request per second, and a competitor that takes every permit the moment it frees:
    // each single wait is short, but together they outlast a batch's lease.
    let limiter = Limiter::new(
        pool.clone(),
        Some(1),
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let competitor = {
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let bounds = hubsync::db::limiter::Bounds {
                    ceiling: Some(1),
                    window: Duration::from_secs(1),
                    margin: Duration::ZERO,
                    daily_budget: None,
                    day_ends: chrono::Utc::now() + chrono::Duration::hours(1),
                };
                let _ = hubsync::db::limiter::try_acquire(&pool, LIMITER, bounds).await;
            }
        })
    };
    let max_wait = Duration::from_millis(1500);
    for _ in 0..3 {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            max_wait + Duration::from_secs(5),
            limiter.acquire(&CancellationToken::new(), max_wait),
        )
        .await
        .expect("acquire gives up instead of queueing past its deadline")
        .unwrap();
        if outcome.is_ok() {
            assert!(
                started.elapsed() <= max_wait,
                "a permit granted after {:?}, past the {max_wait:?} the caller could wait",
                started.elapsed()
            );
        }
    }
    stop.cancel();
    competitor.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn worker_sessions_carry_the_configured_timeouts_without_startup_options(pool: PgPool) {
    let config = crate::harness::parse_config(&format!(
        "{CONFIG}\n[worker]\nstatement_timeout_secs = 7\nlock_timeout_ms = 1234\n\
         idle_in_transaction_timeout_secs = 9\n"
    ));
    let worker_pool = hubsync::db::connect_worker(&database_url(&pool), 2, &config.worker)
        .await
        .unwrap();
    // Each connection, the first and one opened later, is set up the same way.
    for _ in 0..2 {
        let mut conn = worker_pool.acquire().await.unwrap();
        let shown: (String, String, String) = sqlx::query_as(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),
                    current_setting('idle_in_transaction_session_timeout')",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(shown, ("7s".into(), "1234ms".into(), "9s".into()));
        // Set in the session, not sent at start-up where a pooler refuses or drops them.
        let source: String =
            sqlx::query_scalar("SELECT source FROM pg_settings WHERE name = 'statement_timeout'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(source, "session");
        // A superuser, as here, may compress the WAL's page images for its own sessions.
        let compression: String = sqlx::query_scalar("SELECT current_setting('wal_compression')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(compression, "pglz");
        conn.detach();
    }
}

/// A row that has failed many times (a large `worker.max_attempts`) waits six hours, as the
/// schedule's cap says; before the cap on the exponent, its next wait overflowed an interval
/// and recording the failure failed, leaving the object leased over and over.
#[sqlx::test(migrations = false)]
async fn a_row_failing_for_the_fiftieth_time_waits_six_hours(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    sqlx::query(
        "INSERT INTO hubsync.objects (object_type, object_key, state, dirty, dirty_since)
         VALUES ('contact', 'k@acme.com', '{}', true, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO hubsync.dlq (kind, object_type, object_key, payload, error_category,
                                  error_message, attempts, next_retry_at)
         VALUES ('object', 'contact', 'k@acme.com', '{}', 'hubspot_error', 'x', 50,
                 now() + interval '1 hour')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (token, leased) = crate::harness::lease_contacts(&pool).await;
    let failures: Vec<_> = leased
        .iter()
        .map(|l| crate::harness::retryable_failure(l, "again".into()))
        .collect();
    dead_letter(&pool, ObjectType::Contact, token, &failures, 100)
        .await
        .expect("the failure is recorded");
    let (attempts, wait): (i32, f64) = sqlx::query_as(
        "SELECT attempts, extract(epoch FROM next_retry_at - now())::float8 FROM hubsync.dlq",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 51);
    assert!(
        (6.0 * 3600.0 - 60.0..=6.0 * 3600.0 + 1.0).contains(&wait),
        "{wait}"
    );
}

/// An association row that comes due by itself while its contact's association is on its way
/// again (taken by a worker, or waiting to retry) leaves that alone; a parked one is due at once.
#[sqlx::test(migrations = false)]
async fn a_due_association_row_leaves_an_association_on_its_way_alone(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    sqlx::query(
        "INSERT INTO hubsync.objects (object_type, object_key, state, company_key,
                                      association_next_at, association_attempts)
         VALUES ('contact', 'taken@acme.com', '{}', 'acct_1', now() + interval '5 minutes', 2),
                ('contact', 'parked@acme.com', '{}', 'acct_1', 'infinity', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO hubsync.dlq (kind, object_type, object_key, payload, error_category,
                                  error_message, next_retry_at)
         SELECT 'object', 'association', k, '{}', 'association_failed', 'x', now() - interval '1 s'
         FROM unnest(ARRAY['taken@acme.com', 'parked@acme.com']) AS k",
    )
    .execute(&pool)
    .await
    .unwrap();
    hubsync::db::dlq::requeue_due_objects(&pool, 10, Duration::from_secs(3600))
        .await
        .unwrap();
    let rows: Vec<(String, Option<f64>, i32)> = sqlx::query_as(
        "SELECT object_key, extract(epoch FROM association_next_at - now())::float8,
                association_attempts
         FROM hubsync.objects ORDER BY object_key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows[0].0, "parked@acme.com");
    assert_eq!((rows[0].1, rows[0].2), (None, 0), "due at once");
    assert_eq!(rows[1].0, "taken@acme.com");
    let left = rows[1].1.expect("still taken");
    assert!((250.0..=300.0).contains(&left), "{left}");
    assert_eq!(rows[1].2, 2, "its tries go on counting");
}
