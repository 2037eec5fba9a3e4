//! Property types and merge rules end to end, through the worker and the simulator. The
//! order-proof property of the fold itself is tested beside it, in `core::fold`.

use chrono::{Duration, TimeZone, Utc};
use hubspot_sim::SimConfig;
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{Harness, enqueue_at};

const TYPES: &str = r#"
[hubspot]
requests_per_10s = 100

[contacts.properties.nickname]
type = "string"

[contacts.properties.score]
type = "number"

[contacts.properties.total_sessions]
type = "number"
merge = "increment"

[contacts.properties.beta]
type = "bool"

[contacts.properties.trial_started_on]
type = "date"
merge = "set_once"

[contacts.properties.last_active_at]
type = "datetime"
merge = "max"

[contacts.properties.first_seen_at]
type = "datetime"
merge = "min"

[contacts.properties.current_plan]
type = "enumeration"
options = ["free", "pro", "enterprise"]

[contacts.properties.features]
type = "enumeration"
multiple = true
options = ["reports", "exports", "api"]
"#;

async fn harness(pool: PgPool) -> Harness {
    let h = Harness::with(pool, TYPES, SimConfig::default()).await;
    h.setup().await;
    h
}

#[sqlx::test(migrations = false)]
async fn every_type_arrives_in_the_form_hubspot_accepts(pool: PgPool) {
    let h = harness(pool).await;
    h.enqueue(
        "types@acme.com",
        json!({
            "nickname": "Ali ✓",
            "score": 12345678901234567890u64,
            "beta": true,
            "trial_started_on": "2026-11-01",
            "last_active_at": "2026-11-26T11:00:00+01:00",
            "first_seen_at": 1_795_687_200_123i64,
            "current_plan": "pro",
            "features": ["api", "reports"],
        }),
    )
    .await;
    // Exact decimals, through SQL so no float is involved anywhere.
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                object_key => 'exact@acme.com',
                properties => '{\"score\": 1e3, \"total_sessions\": 0.1}')",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                object_key => 'exact@acme.com', properties => '{\"total_sessions\": 0.2}')",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    h.drain().await;
    assert_eq!(h.count("dlq").await, 0, "{:?}", h.dlq().await);
    let r = h.contact("types@acme.com").properties;
    assert_eq!(r["nickname"], "Ali ✓");
    assert_eq!(r["score"], "12345678901234567890");
    assert_eq!(r["beta"], "true");
    assert_eq!(r["trial_started_on"], "2026-11-01");
    assert_eq!(r["last_active_at"], "2026-11-26T10:00:00.000Z");
    assert_eq!(r["first_seen_at"], "2026-11-26T10:00:00.123Z");
    assert_eq!(r["current_plan"], "pro");
    assert_eq!(r["features"], "api;reports");
    let e = h.contact("exact@acme.com").properties;
    assert_eq!(e["score"], "1000");
    assert_eq!(e["total_sessions"], "0.3", "0.1 + 0.2 is exactly 0.3");
    // What was sent: strings only, in HubSpot's formats.
    let body = h.upserts()[0].body.clone().unwrap();
    let sent = body["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "types@acme.com")
        .unwrap()["properties"]
        .clone();
    assert_eq!(sent["first_seen_at"], "2026-11-26T10:00:00.123Z");
    assert_eq!(sent["features"], "api;reports");
}

#[sqlx::test(migrations = false)]
async fn null_clears_a_set_property(pool: PgPool) {
    let h = harness(pool).await;
    let t = Utc::now();
    enqueue_at(
        &h.pool,
        "contact",
        "n@acme.com",
        json!({"nickname": "x"}),
        t,
    )
    .await;
    h.drain().await;
    assert_eq!(h.prop("n@acme.com", "nickname").as_deref(), Some("x"));
    enqueue_at(
        &h.pool,
        "contact",
        "n@acme.com",
        json!({"nickname": null}),
        t + Duration::seconds(1),
    )
    .await;
    h.drain().await;
    assert_eq!(h.prop("n@acme.com", "nickname"), None, "cleared");
}

#[sqlx::test(migrations = false)]
async fn invalid_values_of_every_type_are_dead_lettered_before_any_call(pool: PgPool) {
    let h = harness(pool).await;
    let bad = [
        json!({"score": "47"}),
        json!({"beta": "yes"}),
        json!({"trial_started_on": "2026-11-26T22:18:55.865Z"}),
        json!({"trial_started_on": 1_795_687_200_000i64}),
        json!({"last_active_at": 1_795_687_200}),
        json!({"current_plan": "platinum"}),
        json!({"features": ["api", "fax"]}),
        json!({"nickname": "x".repeat(65_537)}),
        json!({"unknown_thing": 1}),
        json!({"total_sessions": null}),
    ];
    for props in &bad {
        h.enqueue("bad@acme.com", props.clone()).await;
    }
    h.enqueue("not an email", json!({"score": 1})).await;
    let step = h.drain().await;
    assert_eq!(step.refused, bad.len() + 1);
    assert_eq!(
        step.sync.requests, 0,
        "no API call is spent on invalid events"
    );
    let dlq = h.dlq().await;
    assert_eq!(dlq.len(), bad.len() + 1);
    let messages: Vec<&str> = dlq.iter().map(|d| d.2.as_str()).collect();
    for (expected, message) in [
        "send a JSON number",
        "send true or false",
        "22:18:55.865 UTC, not midnight",
        "not midnight",
        "looks like epoch seconds",
        "\"platinum\" is not an option",
        "\"fax\" is not an option",
        "at most 65536",
        "\"unknown_thing\" not declared",
        "null clears a property",
        "not an email address",
    ]
    .iter()
    .zip(&messages)
    {
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message}"
        );
    }
    assert!(dlq.iter().all(|d| d.3.is_none()), "all parked");
}

#[sqlx::test(migrations = false)]
async fn out_of_order_events_in_separate_batches_end_with_the_newest_value_and_exact_sum(
    pool: PgPool,
) {
    let h = harness(pool).await;
    let base = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
    // Arrival order: 3rd, 1st, 4th (newest), 2nd; each drained separately.
    let events = [
        (2, "pro", 5, "2026-11-03"),
        (0, "free", 1, "2026-11-01"),
        (3, "enterprise", 7, "2026-11-04"),
        (1, "free", 2, "2026-11-02"),
    ];
    for (minute, plan, sessions, trial) in events {
        enqueue_at(
            &h.pool,
            "contact",
            "o@acme.com",
            json!({"current_plan": plan, "total_sessions": sessions, "trial_started_on": trial,
                   "last_active_at": (base + Duration::minutes(minute)).to_rfc3339(),
                   "first_seen_at": (base + Duration::minutes(minute)).to_rfc3339()}),
            base + Duration::minutes(minute),
        )
        .await;
        h.drain().await;
    }
    let r = h.contact("o@acme.com").properties;
    assert_eq!(
        r["current_plan"], "enterprise",
        "newest set wins, not the last to arrive"
    );
    assert_eq!(r["total_sessions"], "15");
    assert_eq!(
        r["trial_started_on"], "2026-11-01",
        "set_once keeps the earliest"
    );
    assert_eq!(r["last_active_at"], "2026-11-26T12:03:00.000Z");
    assert_eq!(r["first_seen_at"], "2026-11-26T12:00:00.000Z");
    assert_eq!(h.upserts().len(), 4, "every change reached HubSpot");
}

#[sqlx::test(migrations = false)]
async fn an_older_event_arriving_late_costs_no_request(pool: PgPool) {
    let h = harness(pool).await;
    let base = Utc::now();
    enqueue_at(
        &h.pool,
        "contact",
        "late@acme.com",
        json!({"current_plan": "pro"}),
        base,
    )
    .await;
    h.drain().await;
    enqueue_at(
        &h.pool,
        "contact",
        "late@acme.com",
        json!({"current_plan": "free"}),
        base - Duration::hours(1),
    )
    .await;
    h.drain().await;
    assert_eq!(
        h.prop("late@acme.com", "current_plan").as_deref(),
        Some("pro")
    );
    assert_eq!(
        h.upserts().len(),
        1,
        "a stale value changes nothing, so nothing is sent"
    );
}
