//! Retention: `run --until-idle` prunes the ledger as `run` does, a replayed event is
//! remembered from its replay on, and dead-letter rows go only when an operator purges them.

use std::time::Duration;

use chrono::Utc;
use hubspot_sim::SimConfig;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{CONFIG, Harness, database_url, enqueue_id, hubsync_beside, psql, stderr};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

async fn ledger_count(pool: &PgPool, filter: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM hubsync.ledger WHERE {filter}"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn run_until_idle_prunes_the_ledger_past_retention_in_batches(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    sqlx::query(
        "INSERT INTO hubsync.ledger (event_id, processed_at)
         SELECT gen_random_uuid(), now() - interval '8 days' - n * interval '1 second'
         FROM generate_series(1, 25003) AS n
         UNION ALL
         SELECT gen_random_uuid(), now() - interval '6 days' FROM generate_series(1, 5)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = database_url(&pool);
    let base = h.sim.base_url();
    let out = hubsync_beside(
        &["run", "--until-idle"],
        Some(CONFIG),
        &[
            ("DATABASE_URL", url.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
            ("HUBSPOT_BASE_URL", base.as_str()),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("25003 ledger entries past retention removed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ledger_count(&pool, "true").await,
        5,
        "within retention: kept"
    );

    // Several small batches add up.
    sqlx::query(
        "INSERT INTO hubsync.ledger (event_id, processed_at)
         SELECT gen_random_uuid(), now() - interval '8 days' FROM generate_series(1, 20)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let removed = hubsync::db::retention::prune_ledger_in_batches(&pool, WEEK, 7)
        .await
        .unwrap();
    assert_eq!(removed, 20);
    assert_eq!(ledger_count(&pool, "true").await, 5);
}

#[sqlx::test(migrations = false)]
async fn a_replayed_event_is_remembered_from_its_replay_so_a_later_copy_is_a_no_op(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    h.setup().await;
    h.enqueue("r@acme.com", json!({"total_sessions": 1})).await;
    // Two events refused for a missing option: one whose ledger entry is old by the time it is
    // replayed, one whose entry was already pruned.
    let (old, pruned) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [old, pruned] {
        let props = json!({"total_sessions": 5, "current_plan": "platinum"});
        assert!(enqueue_id(&pool, id, "contact", "r@acme.com", props, Utc::now()).await);
    }
    h.drain().await;
    assert_eq!(h.count("dlq").await, 2);
    sqlx::query(
        "UPDATE hubsync.ledger SET processed_at = now() - interval '6 days' WHERE event_id = $1",
    )
    .bind(old)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM hubsync.ledger WHERE event_id = $1")
        .bind(pruned)
        .execute(&pool)
        .await
        .unwrap();

    // The fix, then the replay.
    let worker = h.add_platinum_option().await;
    psql(&pool, "sql/dlq_retry_all.sql", &[]);
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(h.count("dlq").await, 0);
    assert_eq!(
        h.prop("r@acme.com", "total_sessions").as_deref(),
        Some("11")
    );
    let fresh = ledger_count(
        &pool,
        &format!(
            "event_id IN ('{old}', '{pruned}') AND processed_at > now() - interval '1 minute'"
        ),
    )
    .await;
    assert_eq!(fresh, 2, "both marked processed at the replay");

    // Two days later the producer sends both again: still within retention of the replay.
    sqlx::query("UPDATE hubsync.ledger SET processed_at = processed_at - interval '2 days'")
        .execute(&pool)
        .await
        .unwrap();
    hubsync::db::retention::prune_ledger(&pool, WEEK)
        .await
        .unwrap();
    for id in [old, pruned] {
        let props = json!({"total_sessions": 5, "current_plan": "platinum"});
        assert!(!enqueue_id(&pool, id, "contact", "r@acme.com", props, Utc::now()).await);
    }
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        h.prop("r@acme.com", "total_sessions").as_deref(),
        Some("11"),
        "counted once"
    );
}

#[sqlx::test(migrations = false)]
async fn dlq_purge_removes_old_parked_rows_and_only_when_asked(pool: PgPool) {
    let h = Harness::with(pool.clone(), CONFIG, SimConfig::default()).await;
    h.setup().await;
    for (key, failed_days_ago, next_retry) in [
        ("old-parked", 40, None),
        ("recent-parked", 10, None),
        ("old-scheduled", 40, Some("1 hour")),
    ] {
        sqlx::query(
            "INSERT INTO hubsync.dlq (kind, event_id, object_type, object_key, payload,
                                      error_category, error_message, first_failed_at,
                                      last_failed_at, next_retry_at)
             VALUES ('event', gen_random_uuid(), 'contact', $1, '{}', 'invalid_value', 'x',
                     now() - make_interval(days => $2), now() - make_interval(days => $2),
                     now() + $3::interval)",
        )
        .bind(key)
        .bind(failed_days_ago)
        .bind(next_retry)
        .execute(&pool)
        .await
        .unwrap();
    }
    // A worker never purges.
    h.drain().await;
    assert_eq!(h.count("dlq").await, 3);

    let url = database_url(&pool);
    let out = hubsync_beside(
        &["dlq", "purge", "--older-than", "30"],
        None,
        &[("DATABASE_URL", url.as_str())],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 parked row(s) purged"), "{said}");
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT object_key FROM hubsync.dlq ORDER BY object_key")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(keys, ["old-scheduled", "recent-parked"]);

    // The same file with psql.
    let shown = psql(&pool, "sql/dlq_purge.sql", &[("days", "5")]);
    assert!(
        shown.contains("recent-parked") && shown.contains("(1 row)"),
        "{shown}"
    );
    assert_eq!(h.count("dlq").await, 1, "the scheduled row stays");
}

#[sqlx::test(migrations = false)]
async fn new_event_ids_are_version_7_and_grow_with_time(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    // Its first 48 bits are the time in milliseconds.
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-27T12:34:56.789Z").unwrap();
    let id: Uuid = sqlx::query_scalar("SELECT hubsync.new_event_id($1)")
        .bind(at)
        .fetch_one(&pool)
        .await
        .unwrap();
    let millis = u64::try_from(at.timestamp_millis()).unwrap();
    assert_eq!(id.as_bytes()[..6], millis.to_be_bytes()[2..], "{id}");
    assert_eq!(id.get_version_num(), 7, "{id}");
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");

    // Many drawn at once are all different; one drawn a millisecond later sorts after each.
    let (distinct, all_v7, later_sorts_after): (i64, bool, bool) = sqlx::query_as(
        "WITH ids AS (SELECT hubsync.new_event_id($1) AS id,
                             hubsync.new_event_id($1 + interval '1 millisecond') AS next
                      FROM generate_series(1, 5000))
         SELECT count(DISTINCT id), bool_and(substr(id::text, 15, 1) = '7'), bool_and(id < next)
         FROM ids",
    )
    .bind(at)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((distinct, all_v7, later_sorts_after), (5000, true, true));

    // The default is the moment of the call.
    let (before, id, after): (chrono::DateTime<Utc>, Uuid, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT clock_timestamp(), hubsync.new_event_id(), clock_timestamp()")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut stamp = [0u8; 8];
    stamp[2..].copy_from_slice(&id.as_bytes()[..6]);
    let stamp = i64::from_be_bytes(stamp);
    assert!(
        (before.timestamp_millis()..=after.timestamp_millis()).contains(&stamp),
        "{id}"
    );
}
