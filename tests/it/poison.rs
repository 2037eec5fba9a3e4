//! Nothing in the outbox can stop the pipeline: rows any buggy producer can write with a plain
//! INSERT, states an operator broke by hand, rows Postgres itself refuses, rows another
//! session holds locked. Each ends folded or in the DLQ, and the rows around it move on. Nor can
//! a dead-letter row an operator edited by hand: it is parked again, saying what to fix.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{CONFIG, Harness, database_url, psql, worker_for};

/// Writes one outbox row as a producer's plain INSERT would, every column as text so any value
/// Postgres accepts can be written.
pub async fn insert_raw(
    pool: &PgPool,
    object_type: &str,
    key: &str,
    properties: &str,
    occurred_at: &str,
    company_key: Option<&str>,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at,
                                     company_key)
         VALUES ($1, $2, $3, $4::jsonb, $5::timestamptz, $6)",
    )
    .bind(id)
    .bind(object_type)
    .bind(key)
    .bind(properties)
    .bind(occurred_at)
    .bind(company_key)
    .execute(pool)
    .await
    .unwrap_or_else(|e| panic!("plain INSERT of {properties} at {occurred_at}: {e}"));
    id
}

/// DLQ event rows: event id → category.
async fn dead_events(pool: &PgPool) -> BTreeMap<Uuid, String> {
    sqlx::query_as::<_, (Uuid, String)>(
        "SELECT event_id, error_category FROM hubsync.dlq WHERE kind = 'event'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

const NOW: &str = "2026-11-26 10:00:00+00";

/// The rows the pipeline used to stop on, each with the category it must end in.
/// (object_type, key, properties, occurred_at, company_key, expected category)
type BadRow = (
    &'static str,
    String,
    String,
    String,
    Option<String>,
    &'static str,
);

fn bad_rows() -> Vec<BadRow> {
    let long = "x".repeat(4000);
    let sessions = r#"{"total_sessions": 1}"#.to_string();
    vec![
        (
            "contact",
            "inf@acme.com".into(),
            sessions.clone(),
            "infinity".into(),
            None,
            "invalid_event",
        ),
        (
            "contact",
            "ninf@acme.com".into(),
            sessions.clone(),
            "-infinity".into(),
            None,
            "invalid_event",
        ),
        (
            "contact",
            "far@acme.com".into(),
            sessions.clone(),
            "262144-01-01 00:00:00+00".into(),
            None,
            "invalid_event",
        ),
        (
            "contact",
            "old@acme.com".into(),
            sessions.clone(),
            "1969-12-31 23:59:59+00".into(),
            None,
            "invalid_event",
        ),
        (
            "contact",
            "co@acme.com".into(),
            sessions.clone(),
            NOW.into(),
            Some(long.clone()),
            "invalid_key",
        ),
        (
            "company",
            long.clone(),
            r#"{"seats": 3}"#.into(),
            NOW.into(),
            None,
            "invalid_key",
        ),
        (
            "contact",
            format!("{}@acme.com", "a".repeat(300)),
            sessions.clone(),
            NOW.into(),
            None,
            "invalid_key",
        ),
        (
            "contact",
            "huge@acme.com".into(),
            r#"{"total_sessions": 1e400}"#.into(),
            NOW.into(),
            None,
            "invalid_value",
        ),
        (
            "contact",
            "tiny@acme.com".into(),
            r#"{"total_sessions": 1e-400}"#.into(),
            NOW.into(),
            None,
            "invalid_value",
        ),
        (
            "contact",
            "arr@acme.com".into(),
            "[1, 2]".into(),
            NOW.into(),
            None,
            "invalid_event",
        ),
    ]
}

/// Each bad row between two good ones; returns (bad id → expected category, good emails).
async fn write_bad_between_good(pool: &PgPool) -> (BTreeMap<Uuid, &'static str>, Vec<String>) {
    let mut bad = BTreeMap::new();
    let mut good = Vec::new();
    for (i, (object_type, key, props, at, company, category)) in bad_rows().into_iter().enumerate()
    {
        let before = format!("before{i}@acme.com");
        let after = format!("after{i}@acme.com");
        let ok = r#"{"total_sessions": 12345678901234567890, "current_plan": "pro"}"#;
        insert_raw(pool, "contact", &before, ok, NOW, None).await;
        let id = insert_raw(pool, object_type, &key, &props, &at, company.as_deref()).await;
        insert_raw(pool, "contact", &after, ok, NOW, None).await;
        bad.insert(id, category);
        good.extend([before, after]);
    }
    (bad, good)
}

async fn assert_bad_parked_and_good_arrived(
    h: &Harness,
    bad: &BTreeMap<Uuid, &'static str>,
    good: &[String],
) {
    assert_eq!(h.count("outbox").await, 0, "nothing is left behind");
    let dead = dead_events(&h.pool).await;
    let expected: BTreeMap<Uuid, String> = bad.iter().map(|(k, v)| (*k, v.to_string())).collect();
    assert_eq!(dead, expected);
    for email in good {
        assert_eq!(
            h.prop(email, "total_sessions").as_deref(),
            Some("12345678901234567890"),
            "{email}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn each_bad_row_is_dead_lettered_and_the_rows_around_it_arrive(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let (bad, good) = write_bad_between_good(&h.pool).await;
    h.drain().await;
    assert_bad_parked_and_good_arrived(&h, &bad, &good).await;
    // The refusals say what and where, and the raw row is kept for the operator.
    let (message, payload): (String, Value) = sqlx::query_as(
        "SELECT error_message, payload FROM hubsync.dlq WHERE object_key = 'inf@acme.com'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(message.contains("occurred_at infinity"), "{message}");
    assert_eq!(payload["occurred_at"], "infinity");
}

#[sqlx::test(migrations = false)]
async fn two_workers_isolate_the_same_bad_rows(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let (bad, good) = write_bad_between_good(&h.pool).await;
    let other = worker_for(&h.pool, &h.sim, &h.config).await;
    let cancel = CancellationToken::new();
    let (a, b) = tokio::join!(
        h.worker.run_until_idle(&cancel),
        other.run_until_idle(&cancel)
    );
    a.unwrap();
    b.unwrap();
    h.drain().await;
    assert_bad_parked_and_good_arrived(&h, &bad, &good).await;
}

#[sqlx::test(migrations = false)]
async fn an_increment_that_would_overflow_is_refused_and_the_sum_kept(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let big = format!("9{}", "0".repeat(31));
    let props = format!(r#"{{"total_sessions": {big}}}"#);
    insert_raw(&h.pool, "contact", "sum@acme.com", &props, NOW, None).await;
    let refused = insert_raw(&h.pool, "contact", "sum@acme.com", &props, NOW, None).await;
    insert_raw(
        &h.pool,
        "contact",
        "sum@acme.com",
        r#"{"total_sessions": 1}"#,
        NOW,
        None,
    )
    .await;
    h.drain().await;
    assert_eq!(
        h.prop("sum@acme.com", "total_sessions"),
        Some(format!("9{}1", "0".repeat(30)))
    );
    let dead = dead_events(&h.pool).await;
    assert_eq!(
        dead.get(&refused).map(String::as_str),
        Some("invalid_value")
    );
    assert_eq!(dead.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_state_that_cannot_be_read_is_parked_never_overwritten(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    h.enqueue("a@acme.com", json!({"total_sessions": 5})).await;
    h.drain().await;
    let good: String = sqlx::query_scalar(
        "SELECT state::text FROM hubsync.objects WHERE object_key = 'a@acme.com'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let broken = r#"{"props": {"total_sessions": 5}}"#;
    sqlx::query("UPDATE hubsync.objects SET state = $1::jsonb WHERE object_key = 'a@acme.com'")
        .bind(broken)
        .execute(&h.pool)
        .await
        .unwrap();
    // At ingest: the event waits in the DLQ, the object is parked, its neighbour goes on.
    h.enqueue("a@acme.com", json!({"total_sessions": 2})).await;
    h.enqueue("b@acme.com", json!({"total_sessions": 7})).await;
    h.drain().await;
    assert_eq!(h.prop("b@acme.com", "total_sessions").as_deref(), Some("7"));
    let state: Value =
        sqlx::query_scalar("SELECT state FROM hubsync.objects WHERE object_key = 'a@acme.com'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(state, serde_json::from_str::<Value>(broken).unwrap());
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, error_category FROM hubsync.dlq WHERE object_key = 'a@acme.com' ORDER BY kind",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("event".to_string(), "invalid_state".to_string()),
            ("object".to_string(), "invalid_state".to_string())
        ]
    );
    // At sync: a dirty object whose state cannot be read is parked, not sent.
    sqlx::query("UPDATE hubsync.objects SET dirty = true, dirty_since = now() WHERE object_key = 'a@acme.com'")
        .execute(&h.pool)
        .await
        .unwrap();
    let sent = h.upserts().len();
    h.drain().await;
    assert_eq!(
        h.upserts().len(),
        sent,
        "nothing is sent for it: {:?}",
        h.upserts().last()
    );
    assert_eq!(h.prop("a@acme.com", "total_sessions").as_deref(), Some("5"));
    // Fixed and replayed: the parked event is folded once, and the object synced.
    sqlx::query("UPDATE hubsync.objects SET state = $1::jsonb WHERE object_key = 'a@acme.com'")
        .bind(&good)
        .execute(&h.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE hubsync.dlq SET next_retry_at = now()")
        .execute(&h.pool)
        .await
        .unwrap();
    h.drain().await;
    assert_eq!(h.prop("a@acme.com", "total_sessions").as_deref(), Some("7"));
    assert!(h.dlq().await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn a_row_postgres_refuses_is_found_and_dead_lettered_and_the_chunk_commits(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    // A constraint the validation knows nothing of stands for any refusal tied to one row.
    sqlx::query(
        "ALTER TABLE hubsync.objects ADD CONSTRAINT refuses_one CHECK (object_key <> 'refused@acme.com')",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    for i in 0..20 {
        h.enqueue(&format!("n{i}@acme.com"), json!({"total_sessions": 1}))
            .await;
        if i == 13 {
            h.enqueue("refused@acme.com", json!({"total_sessions": 1}))
                .await;
        }
    }
    h.drain().await;
    for i in 0..20 {
        assert_eq!(
            h.prop(&format!("n{i}@acme.com"), "total_sessions")
                .as_deref(),
            Some("1")
        );
    }
    let dlq = h.dlq().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].0, "refused@acme.com");
    assert_eq!(dlq[0].1, "invalid_event");
    assert!(dlq[0].2.contains("refuses_one"), "{}", dlq[0].2);
    assert_eq!(h.count("outbox").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_row_locked_by_another_session_delays_only_itself(pool: PgPool) {
    let config = format!("{CONFIG}\n[worker]\nlock_timeout_ms = 200\n");
    let h = Harness::with(pool, &config, Default::default()).await;
    h.setup().await;
    let worker_pool = hubsync::db::connect_worker(&database_url(&h.pool), 6, &h.config.worker)
        .await
        .unwrap();
    let worker = worker_for(&worker_pool, &h.sim, &h.config).await;
    for email in ["a@acme.com", "b@acme.com", "c@acme.com"] {
        h.enqueue(email, json!({"current_plan": "free"})).await;
    }
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();

    // An outside session holds a@'s row, as an operator's open transaction would.
    let mut outside = h.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM hubsync.objects WHERE object_key = 'a@acme.com' FOR UPDATE")
        .execute(&mut *outside)
        .await
        .unwrap();
    for email in ["a@acme.com", "b@acme.com", "c@acme.com"] {
        h.enqueue(email, json!({"current_plan": "pro"})).await;
    }
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(h.prop("b@acme.com", "current_plan").as_deref(), Some("pro"));
    assert_eq!(h.prop("c@acme.com", "current_plan").as_deref(), Some("pro"));
    assert_eq!(
        h.prop("a@acme.com", "current_plan").as_deref(),
        Some("free")
    );
    assert_eq!(h.count("outbox").await, 1, "a@'s event waits in the outbox");

    outside.commit().await.unwrap();
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(h.prop("a@acme.com", "current_plan").as_deref(), Some("pro"));
    assert_eq!(h.count("outbox").await, 0);
    assert!(h.dlq().await.is_empty());
}

// ---- any row a producer can write ----

mod arbitrary {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    /// One outbox row as text: (object_type, key, properties, occurred_at, company_key).
    pub type Row = (String, String, String, String, Option<String>);

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{0,12}@[a-z]{1,8}\\.(com|io)",
            "\\PC{0,40}",
            (1usize..5000).prop_map(|n| "k".repeat(n)),
            Just(" Ünïcødé@Exämple.com ".to_string()),
            Just(String::new()),
        ]
        .prop_map(|s| s.replace('\0', ""))
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            Just("1e400".to_string()),
            Just("-1e400".to_string()),
            Just("1e-400".to_string()),
            Just("12345678901234567890".to_string()),
            Just("0.000001".to_string()),
            (1usize..400).prop_map(|n| format!("1{}", "0".repeat(n))),
        ]
    }

    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            number(),
            text().prop_map(|s| serde_json::Value::String(s).to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((text(), inner), 0..4).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k)))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    fn properties() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("total_sessions".to_string()),
            Just("current_plan".to_string()),
            Just("last_active_at".to_string()),
            Just("trial_started_on".to_string()),
            Just("used_reports".to_string()),
            Just("seats".to_string()),
            "[a-z_]{1,12}",
        ];
        prop_oneof![
            4 => prop::collection::vec((name, json_value()), 0..5).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
            1 => json_value(),
        ]
    }

    fn time() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("infinity".to_string()),
            Just("-infinity".to_string()),
            Just("1970-01-01 00:00:00+00".to_string()),
            Just("1969-12-31 23:59:59.999999+00".to_string()),
            Just("9999-12-31 23:59:59.999999+00".to_string()),
            Just("10000-01-01 00:00:00+00".to_string()),
            Just("262143-12-31 23:59:59+00".to_string()),
            Just("294276-12-31 23:59:59+00".to_string()),
            Just("4713-01-01 00:00:00+00 BC".to_string()),
            (0i64..253_402_300_799)
                .prop_map(|s| format!("{s}"))
                .prop_map(|s| {
                    chrono::DateTime::from_timestamp(s.parse().unwrap_or(0), 0)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                }),
        ]
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            prop_oneof![
                4 => Just("contact".to_string()),
                2 => Just("company".to_string()),
                1 => "\\PC{0,12}".prop_map(|s| s.replace('\0', "")),
            ],
            text(),
            properties(),
            time(),
            prop::option::of(text()),
        )
    }

    /// `cases` batches of 1 to 8 rows, the same on every run.
    pub fn batches(cases: usize) -> Vec<Vec<Row>> {
        let mut runner = TestRunner::deterministic();
        let strategy = prop::collection::vec(row(), 1..8);
        (0..cases)
            .map(|_| {
                strategy
                    .new_tree(&mut runner)
                    .expect("the strategy generates")
                    .current()
            })
            .collect()
    }
}

#[sqlx::test(migrations = false)]
async fn any_row_ends_folded_or_dead_lettered_and_no_worker_stops(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let second = worker_for(&h.pool, &h.sim, &h.config).await;
    for (case, rows) in arbitrary::batches(48).into_iter().enumerate() {
        let mut ids = Vec::new();
        for (object_type, key, properties, at, company) in &rows {
            ids.push(
                insert_raw(
                    &h.pool,
                    object_type,
                    key,
                    properties,
                    at,
                    company.as_deref(),
                )
                .await,
            );
        }
        let cancel = CancellationToken::new();
        let (a, b) = tokio::join!(
            h.worker.run_until_idle(&cancel),
            second.run_until_idle(&cancel)
        );
        a.unwrap_or_else(|e| panic!("case {case}: a worker stopped on {rows:?}: {e:#}"));
        b.unwrap_or_else(|e| panic!("case {case}: a worker stopped on {rows:?}: {e:#}"));
        assert_eq!(
            h.count("outbox").await,
            0,
            "case {case}: rows left behind: {rows:?}"
        );
        let (processed, dead): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM hubsync.ledger WHERE event_id = ANY($1)),
                    (SELECT count(*) FROM hubsync.dlq WHERE kind = 'event' AND event_id = ANY($1))",
        )
        .bind(&ids)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        assert_eq!(processed as usize, ids.len(), "case {case}: {rows:?}");
        assert!(dead as usize <= ids.len());
    }
    // Whatever was folded is in HubSpot: nothing is left dirty.
    let dirty: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.objects WHERE dirty")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(dirty, 0);
}

#[sqlx::test(migrations = false)]
async fn a_chunk_of_large_events_is_cut_by_size_and_the_rest_follows(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    // 120 events of 400 kB each (48 MB, stored compressed in far less), refused as unknown
    // properties, then a good one behind them.
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties)
         SELECT gen_random_uuid(), 'contact', 'big' || g || '@acme.com',
                jsonb_build_object('nickname', repeat(chr(65 + g % 26), 400000))
         FROM generate_series(1, 120) g",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    h.enqueue("behind@acme.com", json!({"total_sessions": 3}))
        .await;
    h.drain().await;
    assert_eq!(h.count("outbox").await, 0);
    assert_eq!(h.count("dlq").await, 120);
    assert_eq!(
        h.prop("behind@acme.com", "total_sessions").as_deref(),
        Some("3")
    );
    // Each ingest transaction records its ids at its own start time: the 48 MB went in more
    // than one chunk, none of them holding much more than 32 MB.
    let chunks: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM hubsync.ledger GROUP BY processed_at ORDER BY processed_at",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert!(chunks.len() >= 2, "{chunks:?}");
    assert!(chunks.iter().all(|n| *n <= 84), "{chunks:?}");

    // Replayed, they are taken in rounds of the same size, and each is parked again.
    sqlx::query("UPDATE hubsync.dlq SET next_retry_at = now()")
        .execute(&h.pool)
        .await
        .unwrap();
    h.drain().await;
    let rounds: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM hubsync.ledger l JOIN hubsync.dlq d USING (event_id)
         GROUP BY l.processed_at ORDER BY l.processed_at",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert!(
        rounds.len() >= 2 && rounds.iter().all(|n| *n <= 84),
        "{rounds:?}"
    );
    let parked_again: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hubsync.dlq WHERE attempts = 2 AND next_retry_at IS NULL",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(parked_again, 120);
}

#[sqlx::test(migrations = false)]
async fn a_stored_value_edited_into_the_wrong_type_is_parked_not_merged_over(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    for key in ["sum@acme.com", "max@acme.com", "list@acme.com"] {
        h.enqueue(
            key,
            json!({"total_sessions": 2, "last_active_at": "2026-11-20T10:00:00Z"}),
        )
        .await;
    }
    h.drain().await;
    // Edited by hand: a sum that is not a number, a time that is not a time, not an object.
    let edits = [
        (
            "sum@acme.com",
            r#"{"props": {"total_sessions": {"v": "12abc", "at": 1, "seq": 1}}}"#,
        ),
        (
            "max@acme.com",
            r#"{"props": {"last_active_at": {"v": "garbage", "at": 1, "seq": 1}}}"#,
        ),
        ("list@acme.com", "[]"),
    ];
    for (key, state) in edits {
        sqlx::query("UPDATE hubsync.objects SET state = $1::jsonb WHERE object_key = $2")
            .bind(state)
            .bind(key)
            .execute(&h.pool)
            .await
            .unwrap();
        h.enqueue(
            key,
            json!({"total_sessions": 1, "last_active_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    }
    h.drain().await;
    for (key, state) in edits {
        let stored: Value =
            sqlx::query_scalar("SELECT state FROM hubsync.objects WHERE object_key = $1")
                .bind(key)
                .fetch_one(&h.pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            serde_json::from_str::<Value>(state).unwrap(),
            "{key}"
        );
        let categories: Vec<(String, String)> = sqlx::query_as(
            "SELECT kind, error_category FROM hubsync.dlq WHERE object_key = $1 ORDER BY kind",
        )
        .bind(key)
        .fetch_all(&h.pool)
        .await
        .unwrap();
        assert_eq!(
            categories,
            vec![
                ("event".to_string(), "invalid_state".to_string()),
                ("object".to_string(), "invalid_state".to_string())
            ],
            "{key}"
        );
        // HubSpot keeps what it had: nothing went backwards.
        assert_eq!(h.prop(key, "total_sessions").as_deref(), Some("2"), "{key}");
    }
    let message: String = sqlx::query_scalar(
        "SELECT error_message FROM hubsync.dlq WHERE object_key = 'sum@acme.com' AND kind = 'object'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(
        message.contains("\"total_sessions\" holds \"12abc\", which is not a number"),
        "{message}"
    );
}

/// A dead-letter row's id, by the event it holds.
async fn dlq_id(pool: &PgPool, event_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT id FROM hubsync.dlq WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn dead_letter_rows_edited_by_hand_are_parked_again_and_the_others_replay(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    h.setup().await;
    // Events refused for an option the portal does not have yet: each its own parked row.
    let mut refused = BTreeMap::new();
    for (i, name) in [
        "good1", "good2", "abc", "huge", "frac", "noid", "when", "company", "array",
    ]
    .into_iter()
    .enumerate()
    {
        let email = format!("{name}@acme.com");
        let props = json!({"total_sessions": i + 1, "current_plan": "platinum"});
        refused.insert(name, h.enqueue(&email, props).await);
    }
    // A contact that syncs, whose object row will be replayed.
    h.enqueue("synced@acme.com", json!({"total_sessions": 1}))
        .await;
    h.drain().await;
    assert_eq!(h.count("dlq").await, 9);
    let mut row = BTreeMap::new();
    for (name, event_id) in &refused {
        row.insert(*name, dlq_id(&h.pool, *event_id).await);
    }
    // Object rows: one for an object that exists, one of a type hubsync does not replay, one
    // for an object that is not in hubsync.objects, an association of a contact that is not.
    for (object_type, key) in [
        ("contact", "synced@acme.com"),
        ("deal", "d-1"),
        ("contact", "nobody@acme.com"),
        ("association", "ghost@acme.com"),
    ] {
        sqlx::query(
            "INSERT INTO hubsync.dlq (kind, object_type, object_key, payload, error_category,
                                      error_message)
             VALUES ('object', $1, $2, '{}', 'hubspot_unavailable', 'gave up')",
        )
        .bind(object_type)
        .bind(key)
        .execute(&h.pool)
        .await
        .unwrap();
    }
    let object_row = |key: &'static str| {
        let pool = h.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM hubsync.dlq WHERE kind = 'object' AND object_key = $1",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let deal = object_row("d-1").await;
    let nobody = object_row("nobody@acme.com").await;
    let ghost = object_row("ghost@acme.com").await;

    // Edits by hand, as an operator may make with plain SQL. A seq written as a string of
    // digits is still a whole number.
    for (name, edit) in [
        (
            "good2",
            "SET payload = jsonb_set(payload, '{seq}', '\"77\"')",
        ),
        (
            "abc",
            "SET payload = jsonb_set(payload, '{seq}', '\"abc\"')",
        ),
        ("huge", "SET payload = jsonb_set(payload, '{seq}', '1e300')"),
        ("frac", "SET payload = jsonb_set(payload, '{seq}', '53.5')"),
        ("noid", "SET event_id = NULL"),
        (
            "when",
            "SET payload = jsonb_set(payload, '{occurred_at}', '\"yesterday\"')",
        ),
        (
            "company",
            "SET payload = jsonb_set(payload, '{company_key}', '{\"id\": 1}')",
        ),
        ("array", "SET payload = jsonb_build_array(payload)"),
    ] {
        sqlx::query(&format!("UPDATE hubsync.dlq {edit} WHERE id = $1"))
            .bind(row[name])
            .execute(&h.pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The fix, a new event meanwhile, and every row marked for replay.
    let worker = h.add_platinum_option().await;
    h.enqueue("fresh@acme.com", json!({"total_sessions": 3}))
        .await;
    psql(&pool, "sql/dlq_retry_all.sql", &[]);
    let cancel = CancellationToken::new();
    tokio::time::timeout(Duration::from_secs(60), worker.run_until_idle(&cancel))
        .await
        .expect("the worker finishes, not retrying a failing statement")
        .expect("the worker does not fail");

    // Every readable row was replayed and delivered, and the outbox drained.
    for (name, sessions) in [("good1", "1"), ("good2", "2")] {
        let email = format!("{name}@acme.com");
        assert_eq!(h.prop(&email, "current_plan").as_deref(), Some("platinum"));
        assert_eq!(h.prop(&email, "total_sessions").as_deref(), Some(sessions));
    }
    assert_eq!(
        h.prop("fresh@acme.com", "total_sessions").as_deref(),
        Some("3")
    );
    assert_eq!(h.count("outbox").await, 0);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM hubsync.dlq ORDER BY id")
        .fetch_all(&h.pool)
        .await
        .unwrap();
    let mut expected: Vec<i64> = ["abc", "huge", "frac", "noid", "when", "company", "array"]
        .iter()
        .map(|n| row[n])
        .chain([deal, nobody, ghost])
        .collect();
    expected.sort();
    assert_eq!(
        left,
        expected,
        "the readable rows are gone: {:?}",
        h.dlq().await
    );

    // The others are parked again, each saying which field of which row, and what to do.
    for (id, field) in [
        (row["abc"], "seq"),
        (row["huge"], "seq"),
        (row["frac"], "seq"),
        (row["noid"], "event_id"),
        (row["when"], "occurred_at"),
        (row["company"], "company_key"),
        (row["array"], "payload"),
        (deal, "object_type"),
        (nobody, "object_key"),
        (ghost, "object_key"),
    ] {
        let (category, message, parked): (String, String, bool) = sqlx::query_as(
            "SELECT error_category, error_message, next_retry_at IS NULL FROM hubsync.dlq
             WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        assert!(parked, "row {id} is parked: {message}");
        for part in [
            format!("row {id}"),
            field.to_string(),
            format!("hubsync dlq retry {id}"),
            format!("hubsync dlq discard {id}"),
        ] {
            assert!(
                message.contains(&part),
                "row {id}: no {part:?} in {message:?}"
            );
        }
        if id < deal {
            assert_eq!(category, "invalid_event", "row {id}: {message}");
        }
    }
    let message: String = sqlx::query_scalar("SELECT error_message FROM hubsync.dlq WHERE id = $1")
        .bind(row["abc"])
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert!(message.contains("\"abc\""), "the value is shown: {message}");
    // Nothing of theirs was applied, and nothing is due any more: the next run is idle.
    assert_eq!(h.prop("abc@acme.com", "current_plan"), None);
    let again = tokio::time::timeout(Duration::from_secs(60), worker.run_until_idle(&cancel))
        .await
        .expect("the worker finishes")
        .expect("the worker does not fail");
    assert_eq!(again.replayed, 0, "{again:?}");
}
