//! Failure handling against the simulator: one test per outcome class of `classify`, poison
//! isolation in both 207 and whole-batch-400 forms, lost responses, revoked tokens, and the
//! dead-letter table's replay and parking, through the operator's own SQL files.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubspot_sim::{Fault, SimConfig};
use hubsync::hubspot::{HubSpotClient, Paths};
use hubsync::worker::Worker;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::{CONFIG, Harness, database_url, next_attempt_in, psql};

/// HubSpot's `current_plan` without the `enterprise` option: writes of it fail per record.
fn drop_enterprise_option(h: &Harness) {
    let mut plan = h.sim.property("contacts", "current_plan").unwrap();
    plan["options"] = json!([
        {"label": "free", "value": "free", "displayOrder": 0, "hidden": false},
        {"label": "pro", "value": "pro", "displayOrder": 1, "hidden": false}
    ]);
    h.sim.define_property("contacts", plan);
}

async fn hundred_with_one_bad(h: &Harness) {
    for i in 0..100 {
        let plan = if i == 42 { "enterprise" } else { "pro" };
        h.enqueue(
            &format!("u{i:03}@acme.com"),
            json!({"total_sessions": 1, "current_plan": plan}),
        )
        .await;
    }
}

/// The 99 good records written whole; the bad one written without its refused property,
/// which waits in the DLQ, parked.
fn assert_99_written_and_1_held_back(
    h: &Harness,
    dlq: &[(
        String,
        String,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    )],
) {
    let records = h.sim.records("contacts");
    assert_eq!(records.len(), 100);
    for i in (0..100).filter(|i| *i != 42) {
        assert_eq!(
            h.prop(&format!("u{i:03}@acme.com"), "current_plan")
                .as_deref(),
            Some("pro")
        );
    }
    let bad = h.contact("u042@acme.com");
    assert_eq!(
        bad.properties.get("total_sessions").map(String::as_str),
        Some("1")
    );
    assert_eq!(bad.properties.get("current_plan"), None);
    assert_eq!(dlq.len(), 1);
    let (key, category, message, next) = &dlq[0];
    assert_eq!(key, "u042@acme.com");
    assert_eq!(category, "hubspot_validation");
    assert!(
        message.contains("current_plan")
            && message.contains("INVALID_OPTION")
            && message.contains("held back"),
        "{message}"
    );
    assert!(next.is_none(), "a permanent refusal is parked at once");
}

#[sqlx::test(migrations = false)]
async fn one_bad_record_in_a_207_is_dead_lettered_and_the_99_are_written(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    drop_enterprise_option(&h);
    hundred_with_one_bad(&h).await;
    h.drain().await;
    assert_eq!(
        h.upserts().len(),
        2,
        "one request (HubSpot isolates by trace id), then the refused record without its bad property"
    );
    assert_eq!(h.upserts()[0].status, 207);
    assert_99_written_and_1_held_back(&h, &h.dlq().await);

    // A later event still reaches HubSpot for the other properties; the held value stays back.
    h.enqueue("u042@acme.com", json!({"total_sessions": 2}))
        .await;
    h.drain().await;
    assert_eq!(
        h.prop("u042@acme.com", "total_sessions").as_deref(),
        Some("3")
    );
    assert_eq!(h.prop("u042@acme.com", "current_plan"), None);
    assert_eq!(h.dlq().await.len(), 1);

    // Once HubSpot has the option again, a replay sends the held value and clears the row.
    let mut plan = h.sim.property("contacts", "current_plan").unwrap();
    plan["options"].as_array_mut().unwrap().push(
        json!({"label": "enterprise", "value": "enterprise", "displayOrder": 2, "hidden": false}),
    );
    h.sim.define_property("contacts", plan);
    sqlx::query("UPDATE hubsync.dlq SET next_retry_at = now()")
        .execute(&h.pool)
        .await
        .unwrap();
    h.drain().await;
    assert_eq!(
        h.prop("u042@acme.com", "current_plan").as_deref(),
        Some("enterprise")
    );
    assert!(h.dlq().await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn one_bad_record_in_a_whole_batch_400_is_found_and_the_99_are_written(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    drop_enterprise_option(&h);
    h.sim.set_whole_batch_errors(true);
    hundred_with_one_bad(&h).await;
    h.drain().await;
    let upserts = h.upserts();
    assert!(
        upserts.len() <= 17,
        "isolation took {} requests",
        upserts.len()
    );
    assert_99_written_and_1_held_back(&h, &h.dlq().await);
}

#[sqlx::test(migrations = false)]
async fn a_write_applied_but_its_response_lost_leaves_counters_exact(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    for fault in [
        Fault::ApplyThenStatus(500),
        Fault::ApplyThenDrop,
        Fault::ApplyThenStatus(524),
    ] {
        h.enqueue("lost@acme.com", json!({"total_sessions": 3}))
            .await;
        h.sim.script(vec![fault]);
        h.drain().await;
    }
    assert_eq!(
        h.prop("lost@acme.com", "total_sessions").as_deref(),
        Some("9")
    );
    let statuses: Vec<u16> = h.upserts().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![500, 200, 0, 200, 524, 200],
        "each lost reply is retried once"
    );
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn transient_statuses_are_retried_until_written(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    h.enqueue("t@acme.com", json!({"total_sessions": 1})).await;
    h.sim.script(vec![
        Fault::Status {
            status: 500,
            retry_after_secs: None,
        },
        Fault::Status {
            status: 502,
            retry_after_secs: None,
        },
        Fault::Status {
            status: 503,
            retry_after_secs: None,
        },
        Fault::Status {
            status: 504,
            retry_after_secs: None,
        },
        Fault::Drop,
        Fault::SilentOk,
    ]);
    let start = Instant::now();
    while h.sim.contact("t@acme.com").is_none() {
        h.drain().await;
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert_eq!(h.prop("t@acme.com", "total_sessions").as_deref(), Some("1"));
    assert_eq!(h.upserts().len(), 7);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM hubsync.objects")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "success resets the attempt count");
}

#[sqlx::test(migrations = false)]
async fn locked_and_migrating_portals_are_waited_for_as_told(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    h.enqueue("w@acme.com", json!({"total_sessions": 1})).await;
    h.sim.script(vec![Fault::Status {
        status: 477,
        retry_after_secs: Some(30),
    }]);
    h.drain().await;
    let wait = next_attempt_in(&h.pool).await;
    assert!(
        wait > 25.0,
        "477 Retry-After: 30 is honoured (waits {wait:.1} s)"
    );
    assert!(h.sim.contact("w@acme.com").is_none());

    sqlx::query("UPDATE hubsync.objects SET next_attempt_at = now()")
        .execute(&h.pool)
        .await
        .unwrap();
    h.sim.script(vec![Fault::Status {
        status: 423,
        retry_after_secs: None,
    }]);
    h.drain().await;
    let wait = next_attempt_in(&h.pool).await;
    assert!(wait > 1.0, "423 waits at least 2 s (waits {wait:.1} s)");
}

/// A worker that gives up on HubSpot after half a second sends slow@acme.com's `older` state;
/// HubSpot holds that write 1.5 s, long after the worker gave up on it, and carries it out all
/// the same, late. `newer` is enqueued while it is on the wire. The two writes carry different
/// plans, so an older one landing after the newer one shows in what HubSpot ends with. Returns
/// the plans the upserts carried, in order, once HubSpot holds "pro" and nothing is dirty.
async fn a_late_older_write_then_a_newer_one(
    h: &Harness,
    older: serde_json::Value,
    newer: serde_json::Value,
) -> Vec<String> {
    let client = HubSpotClient::new(
        &h.sim.base_url(),
        "sim-token",
        Paths::new(h.config.hubspot.api_version),
        Duration::from_millis(500),
    )
    .unwrap();
    let worker = Arc::new(
        Worker::new(h.pool.clone(), h.config.clone(), client)
            .await
            .unwrap()
            .with_jitter(Arc::new(|| 0.0)),
    );
    h.enqueue("slow@acme.com", older).await;
    let hang = Duration::from_millis(1500);
    h.sim.script(vec![Fault::Hang(hang)]);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));
    let start = Instant::now();
    while h.upserts().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hung_at = Instant::now();
    h.enqueue("slow@acme.com", newer).await;
    while h.prop("slow@acme.com", "current_plan").as_deref() != Some("pro") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the newer write never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The hung request lands after it: HubSpot holds the older value for a while.
    tokio::time::sleep((hang + Duration::from_millis(100)).saturating_sub(hung_at.elapsed())).await;
    // hubsync writes the object once more once such a late write must have landed.
    let dirty = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM hubsync.objects WHERE dirty")
            .fetch_one(&h.pool)
            .await
            .unwrap()
    };
    while h.prop("slow@acme.com", "current_plan").as_deref() != Some("pro") || dirty().await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the older value stayed: {:?}",
            h.prop("slow@acme.com", "current_plan")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    running.await.unwrap().unwrap();
    let plans: Vec<String> = h
        .upserts()
        .iter()
        .map(|r| r.body.as_ref().unwrap()["inputs"][0]["properties"]["current_plan"].to_string())
        .collect();
    assert!(plans.len() >= 2, "{plans:?}");
    assert_eq!(
        plans[0], "\"free\"",
        "the hung write carries the older value"
    );
    assert_eq!(
        plans.last().map(String::as_str),
        Some("\"pro\""),
        "the last write carries the newer value: {plans:?}"
    );
    plans
}

#[sqlx::test(migrations = false)]
async fn a_timeout_is_retried_and_the_late_older_write_does_not_win(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    a_late_older_write_then_a_newer_one(
        &h,
        json!({"total_sessions": 4, "current_plan": "free"}),
        json!({"total_sessions": 3, "current_plan": "pro"}),
    )
    .await;
    assert_eq!(
        h.prop("slow@acme.com", "total_sessions").as_deref(),
        Some("7")
    );
}

/// The same when the request that got no answer was the object's last try: the object goes to
/// the DLQ, the newer event is sent at once, and once the late request must have landed the
/// newer state is written again.
#[sqlx::test(migrations = false)]
async fn a_last_try_that_lands_late_does_not_win_over_a_newer_write(pool: PgPool) {
    let text = CONFIG.replace("# [worker]", "[worker]\nmax_attempts = 1\n# ");
    let h = Harness::with(pool, &text, SimConfig::default()).await;
    h.setup().await;
    a_late_older_write_then_a_newer_one(
        &h,
        json!({"current_plan": "free"}),
        json!({"current_plan": "pro"}),
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_revoked_token_halts_without_consuming_and_resumes_when_restored(pool: PgPool) {
    let text = CONFIG.replace("# [worker]", "[worker]\nauth_probe_secs = 1\n# ");
    let h = Harness::with(pool, &text, SimConfig::default()).await;
    h.setup().await;
    h.enqueue("a@acme.com", json!({"total_sessions": 1})).await;
    h.drain().await;
    assert_eq!(h.prop("a@acme.com", "total_sessions").as_deref(), Some("1"));

    h.sim.set_token("rotated-token");
    for i in 0..20 {
        h.enqueue(&format!("b{i}@acme.com"), json!({"total_sessions": 2}))
            .await;
    }
    h.enqueue("a@acme.com", json!({"total_sessions": 1})).await;
    let err = h
        .worker
        .run_until_idle(&CancellationToken::new())
        .await
        .expect_err("a 401 halts the drain");
    assert!(err.to_string().contains("credentials"), "{err}");
    assert_eq!(h.count("dlq").await, 0, "nothing dead-lettered");
    let (dirty, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE dirty), coalesce(sum(attempts), 0) FROM hubsync.objects",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        (dirty, attempts),
        (21, 0),
        "every change kept, no attempt counted"
    );
    let reason: Option<String> = sqlx::query_scalar("SELECT pause_reason FROM hubsync.limiter")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert!(reason.unwrap().contains("HUBSPOT_ACCESS_TOKEN"));

    h.sim.set_token("sim-token");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.drain().await;
    assert_eq!(h.prop("a@acme.com", "total_sessions").as_deref(), Some("2"));
    for i in 0..20 {
        assert_eq!(
            h.prop(&format!("b{i}@acme.com"), "total_sessions")
                .as_deref(),
            Some("2")
        );
    }
}

#[sqlx::test(migrations = false)]
async fn missing_scopes_are_named_and_nothing_is_consumed(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    h.sim
        .set_missing_scopes(vec!["crm.objects.contacts.write".into()]);
    h.enqueue("s@acme.com", json!({"total_sessions": 1})).await;
    assert!(
        h.worker
            .run_until_idle(&CancellationToken::new())
            .await
            .is_err()
    );
    let reason: Option<String> = sqlx::query_scalar("SELECT pause_reason FROM hubsync.limiter")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert!(reason.unwrap().contains("crm.objects.contacts.write"));
    assert_eq!(h.count("dlq").await, 0);
    let dirty: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.objects WHERE dirty")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(dirty, 1);
}

#[sqlx::test(migrations = false)]
async fn an_invalid_event_is_parked_then_replayed_once_after_the_fix(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    h.setup().await;
    h.enqueue(
        "v@acme.com",
        json!({"total_sessions": 5, "current_plan": "platinum"}),
    )
    .await;
    h.enqueue("v@acme.com", json!({"total_sessions": 1})).await;
    let step = h.drain().await;
    assert_eq!(step.refused, 1);
    assert_eq!(
        step.sync.requests, 1,
        "the valid event still goes; the invalid one costs nothing"
    );
    assert_eq!(h.prop("v@acme.com", "total_sessions").as_deref(), Some("1"));
    let dlq = h.dlq().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].1, "invalid_value");
    assert!(
        dlq[0].2.contains("current_plan") && dlq[0].2.contains("platinum"),
        "{}",
        dlq[0].2
    );
    assert!(dlq[0].3.is_none(), "parked");

    // The runbook: what fails, then the fix (a new option), then replay by category.
    assert!(psql(&pool, "sql/dlq_summary.sql", &[]).contains("invalid_value"));
    assert!(psql(&pool, "sql/dlq_list.sql", &[]).contains("v@acme.com"));
    let worker = h.add_platinum_option().await;
    psql(
        &pool,
        "sql/dlq_retry_category.sql",
        &[("category", "invalid_value")],
    );
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        h.prop("v@acme.com", "current_plan").as_deref(),
        Some("platinum")
    );
    assert_eq!(
        h.prop("v@acme.com", "total_sessions").as_deref(),
        Some("6"),
        "applied once"
    );
    assert_eq!(h.count("dlq").await, 0);

    // Another cause, on HubSpot's side this time: "platinum" is taken out of the portal, so
    // HubSpot refuses it for two more contacts. Their rows wait in the DLQ, parked.
    let with_platinum = h.sim.property("contacts", "current_plan").unwrap();
    let mut without = with_platinum.clone();
    without["options"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["value"] != "platinum");
    h.sim.define_property("contacts", without);
    for (email, sessions) in [("w@acme.com", 2), ("x@acme.com", 3)] {
        h.enqueue(
            email,
            json!({"total_sessions": sessions, "current_plan": "platinum"}),
        )
        .await;
    }
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    let dlq = h.dlq().await;
    let keys: Vec<&str> = dlq.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["w@acme.com", "x@acme.com"], "{dlq:?}");
    assert!(
        dlq.iter()
            .all(|r| r.1 == "hubspot_validation" && r.3.is_none()),
        "refused by HubSpot and parked: {dlq:?}"
    );
    assert_eq!(h.prop("w@acme.com", "current_plan"), None);
    assert_eq!(h.prop("x@acme.com", "current_plan"), None);
    assert_eq!(h.prop("w@acme.com", "total_sessions").as_deref(), Some("2"));

    // The fix, then the replay of everything in the DLQ: both rows go out and are cleared,
    // and the event replayed before is not counted again.
    h.sim.define_property("contacts", with_platinum);
    let replayed = psql(&pool, "sql/dlq_retry_all.sql", &[]);
    assert!(
        replayed.contains("w@acme.com") && replayed.contains("x@acme.com"),
        "{replayed}"
    );
    worker
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    for (email, sessions) in [("w@acme.com", "2"), ("x@acme.com", "3")] {
        assert_eq!(
            h.prop(email, "current_plan").as_deref(),
            Some("platinum"),
            "{email}"
        );
        assert_eq!(
            h.prop(email, "total_sessions").as_deref(),
            Some(sessions),
            "{email}"
        );
    }
    assert_eq!(h.count("dlq").await, 0, "{:?}", h.dlq().await);
    assert_eq!(h.prop("v@acme.com", "total_sessions").as_deref(), Some("6"));
}

/// Seconds until the DLQ row of `key` is due (`None`: parked).
async fn due_in(h: &Harness, key: &str) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM next_retry_at - clock_timestamp())::float8
         FROM hubsync.dlq WHERE object_key = $1",
    )
    .bind(key)
    .fetch_one(&h.pool)
    .await
    .unwrap()
}

/// HubSpot down for longer than an object's tries in a row: the object goes to the DLQ, which
/// sends it again by itself a minute later, and HubSpot, back by then, takes it.
#[sqlx::test(migrations = false)]
async fn objects_out_of_attempts_while_hubspot_is_down_are_sent_again_by_themselves(pool: PgPool) {
    let text = CONFIG.replace("# [worker]", "[worker]\nmax_attempts = 3\n# ");
    let h = Harness::with(pool.clone(), &text, SimConfig::default()).await;
    h.setup().await;
    h.enqueue("x@acme.com", json!({"total_sessions": 2})).await;
    h.sim.script(vec![crate::harness::SERVICE_UNAVAILABLE; 3]);
    h.drain().await;
    let dlq = h.dlq().await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].1, "hubspot_unavailable");
    assert!(
        dlq[0].2.contains("gave up after 3 attempts"),
        "{}",
        dlq[0].2
    );
    let wait = due_in(&h, "x@acme.com").await.expect("not parked");
    assert!((30.0..=61.0).contains(&wait), "due in {wait} s");
    // Nothing is sent before it is due.
    h.drain().await;
    assert_eq!(h.upserts().len(), 3);

    h.dlq_due_now().await;
    h.drain().await;
    assert_eq!(h.upserts().len(), 4);
    assert_eq!(h.prop("x@acme.com", "total_sessions").as_deref(), Some("2"));
    assert_eq!(h.count("dlq").await, 0, "a successful sync clears the row");
}

/// A row sent again is pushed ahead by as long as its object's tries in a row may take, an
/// hour at least: it must not come due again, and start the tries over, before they end (with a
/// large `worker.max_attempts` it would never be parked).
#[sqlx::test(migrations = false)]
async fn a_row_sent_again_is_not_due_again_before_its_tries_can_end(pool: PgPool) {
    let text = CONFIG.replace("# [worker]", "[worker]\nmax_attempts = 3\n# ");
    let h = Harness::with(pool.clone(), &text, SimConfig::default()).await;
    h.setup().await;
    for (key, round_s, expected_s) in [("x@acme.com", 600, 3600.0), ("y@acme.com", 7200, 7200.0)] {
        h.enqueue(key, json!({"total_sessions": 2})).await;
        h.sim.script(vec![crate::harness::SERVICE_UNAVAILABLE; 3]);
        h.drain().await;
        h.dlq_due_now().await;
        let requeued =
            hubsync::db::dlq::requeue_due_objects(&h.pool, 10, Duration::from_secs(round_s))
                .await
                .unwrap();
        assert_eq!(requeued, 1, "{key}");
        let wait = due_in(&h, key).await.expect("scheduled");
        assert!(
            (expected_s - 60.0..=expected_s + 1.0).contains(&wait),
            "{key}: due in {wait} s, expected {expected_s}"
        );
        // The object goes out and HubSpot takes it: the row is gone.
        h.drain().await;
        assert_eq!(h.prop(key, "total_sessions").as_deref(), Some("2"));
        assert_eq!(h.count("dlq").await, 0, "{key}");
    }
}

/// HubSpot down for longer than the DLQ's own tries: the row waits longer each time, then is
/// parked, and an operator's replay sends it.
#[sqlx::test(migrations = false)]
async fn objects_hubspot_keeps_failing_are_parked_after_max_attempts_rounds_and_the_cli_replays_them(
    pool: PgPool,
) {
    let text = CONFIG.replace("# [worker]", "[worker]\nmax_attempts = 3\n# ");
    let h = Harness::with(pool.clone(), &text, SimConfig::default()).await;
    h.setup().await;
    h.enqueue("x@acme.com", json!({"total_sessions": 2})).await;
    let mut waits = Vec::new();
    for round in 1..=3 {
        h.sim.script(vec![crate::harness::SERVICE_UNAVAILABLE; 3]);
        h.drain().await;
        assert_eq!(h.upserts().len(), 3 * round, "round {round}");
        waits.push(due_in(&h, "x@acme.com").await);
        h.dlq_due_now().await;
    }
    let minutes: Vec<Option<i64>> = waits
        .iter()
        .map(|w| w.map(|s| (s / 60.0).ceil() as i64))
        .collect();
    assert_eq!(minutes, vec![Some(1), Some(2), None], "{waits:?}");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM hubsync.dlq")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 3);
    assert!(h.sim.contact("x@acme.com").is_none());
    // Parked: nothing more happens by itself.
    h.drain().await;
    assert_eq!(h.upserts().len(), 9);

    let out = Command::new(env!("CARGO_BIN_EXE_hubsync"))
        .args(["dlq", "retry", "--category", "hubspot_unavailable"])
        .env("DATABASE_URL", database_url(&pool))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("x@acme.com"));
    h.drain().await;
    assert_eq!(h.prop("x@acme.com", "total_sessions").as_deref(), Some("2"));
    assert_eq!(h.count("dlq").await, 0, "a successful sync clears the row");
}

/// The hubsync binary with `args`, on this test's database.
fn on_database(pool: &PgPool, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hubsync"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .output()
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_dlq_commands_list_show_and_discard(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    h.setup().await;
    h.enqueue("not-an-email", json!({"total_sessions": 1}))
        .await;
    h.enqueue("y@acme.com", json!({"nope": 1})).await;
    h.drain().await;
    let run = |args: &[&str]| {
        let out = on_database(&pool, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, list) = run(&["dlq", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        list.contains("invalid_key") && list.contains("unknown_property"),
        "{list}"
    );
    let id: i64 =
        sqlx::query_scalar("SELECT id FROM hubsync.dlq WHERE error_category = 'unknown_property'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let (code, show) = run(&["dlq", "show", &id.to_string()]);
    assert_eq!(code, Some(0));
    assert!(
        show.contains("\"nope\"") && show.contains("not declared"),
        "{show}"
    );
    let (code, status) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        status.contains("dlq_parked") && status.contains("invalid_key"),
        "{status}"
    );
    assert_eq!(run(&["dlq", "discard", &id.to_string()]).0, Some(0));
    assert_eq!(run(&["dlq", "show", &id.to_string()]).0, Some(1), "gone");
    assert_eq!(run(&["dlq", "discard", "--all"]).0, Some(0));
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn retryable_record_errors_come_back_with_growing_delays_then_park(pool: PgPool) {
    use hubsync::db::objects::dead_letter;
    let h = Harness::new(pool.clone()).await;
    h.setup().await;
    h.enqueue("r@acme.com", json!({"total_sessions": 1})).await;
    h.worker.ingest_once().await.unwrap();
    let max_attempts = 4;
    let mut delays = Vec::new();
    for attempt in 1..=max_attempts {
        // The object is due again (the DLQ row came due and re-queued it), then fails again.
        sqlx::query("UPDATE hubsync.objects SET dirty = true")
            .execute(&pool)
            .await
            .unwrap();
        let (token, leased) = crate::harness::lease_contacts(&pool).await;
        assert_eq!(leased.len(), 1);
        let failure = crate::harness::retryable_failure(
            &leased[0],
            format!("HubSpot refused the record: something odd ({attempt})"),
        );
        dead_letter(
            &pool,
            hubsync::core::vocabulary::ObjectType::Contact,
            token,
            &[failure],
            max_attempts,
        )
        .await
        .unwrap();
        let (attempts, delay): (i32, Option<f64>) = sqlx::query_as(
            "SELECT attempts, extract(epoch FROM next_retry_at - now())::float8 FROM hubsync.dlq",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(attempts, attempt);
        delays.push(delay);
    }
    assert!(delays[..3].iter().all(Option::is_some), "{delays:?}");
    assert!(
        delays[0] < delays[1] && delays[1] < delays[2],
        "growing: {delays:?}"
    );
    assert_eq!(delays[3], None, "parked after max_attempts");

    // An operator replays it; this time HubSpot takes it and the row goes away.
    sqlx::query("UPDATE hubsync.dlq SET next_retry_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    h.drain().await;
    assert_eq!(h.prop("r@acme.com", "total_sessions").as_deref(), Some("1"));
    assert_eq!(h.count("dlq").await, 0);
}

/// The offset from UTC, in minutes, of a portal where it is noon now (to the minute): its day
/// ends twelve hours from now, whatever the hour in UTC.
fn offset_of_a_portal_at_noon() -> i32 {
    let minute_of_day =
        i32::try_from(chrono::Timelike::num_seconds_from_midnight(&chrono::Utc::now()) / 60)
            .unwrap();
    (12 * 60 - minute_of_day).rem_euclid(24 * 60)
}

/// The next midnight of a portal `offset_minutes` from UTC.
fn next_midnight_at(offset_minutes: i32) -> chrono::DateTime<chrono::Utc> {
    let zone = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
    chrono::Utc::now()
        .with_timezone(&zone)
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_local_timezone(zone)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[sqlx::test(migrations = false)]
async fn a_portal_that_hides_its_time_zone_neither_halts_the_start_nor_waits_a_whole_day(
    pool: PgPool,
) {
    // The account details ask for a scope the token lacks: 403 on that call only. The portal
    // is where it is about noon now, so its day (and its count) does not end during the test.
    const DAILY: u64 = 24;
    let sim = SimConfig {
        daily_limit: Some(DAILY),
        account_details_allowed: false,
        time_zone: "Portal/Noon".into(),
        utc_offset_minutes: offset_of_a_portal_at_noon(),
        ..SimConfig::default()
    };
    let h = Harness::with(pool, CONFIG, sim).await;
    assert_eq!(h.worker.portal(), None);
    let details = h.sim.requests();
    assert_eq!(details.len(), 1);
    assert_eq!(details[0].status, 403);
    let paused: Option<String> =
        sqlx::query_scalar("SELECT pause_reason FROM hubsync.limiter WHERE paused_until > now()")
            .fetch_optional(&h.pool)
            .await
            .unwrap()
            .flatten();
    assert_eq!(paused, None, "a refused optional call halts nobody");
    h.setup().await;
    let setup_calls = h.sim.requests().len();
    for i in 0..(DAILY as usize - setup_calls) {
        h.enqueue(&format!("z{i}@acme.com"), json!({"total_sessions": 1}))
            .await;
        h.drain().await;
    }
    h.enqueue("over@acme.com", json!({"total_sessions": 1}))
        .await;
    h.drain().await;
    assert_eq!(h.upserts().last().unwrap().status, 429);
    // Without the portal's midnight, the pause lasts until UTC's, an hour at most; the next
    // request then probes.
    let (left, to_midnight): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM paused_until - now())::float8,
                extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day'
                                   - (now() AT TIME ZONE 'UTC'))::float8
         FROM hubsync.limiter",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let expected = to_midnight.min(3600.0);
    assert!(
        (expected - 100.0..=expected + 5.0).contains(&left),
        "paused for {left} s, expected about {expected} s"
    );
}

#[sqlx::test(migrations = false)]
async fn the_daily_limit_pauses_until_the_next_day_without_counting_attempts(pool: PgPool) {
    // Start-up reads and creates the properties first; the rest is left for upserts.
    const DAILY: u64 = 24;
    let sim = SimConfig {
        daily_limit: Some(DAILY),
        ..SimConfig::default()
    };
    let h = Harness::with(pool, CONFIG, sim).await;
    h.setup().await;
    let setup_calls = h.sim.requests().len();
    assert!(setup_calls < DAILY as usize);
    for i in 0..(DAILY as usize - setup_calls) {
        // One contact per request: drain each on its own.
        h.enqueue(&format!("d{i}@acme.com"), json!({"total_sessions": 1}))
            .await;
        h.drain().await;
    }
    h.enqueue("over@acme.com", json!({"total_sessions": 1}))
        .await;
    h.drain().await;
    let last = h.upserts().last().cloned().unwrap();
    assert_eq!(last.status, 429);
    let (until_midnight, reason): (f64, String) = sqlx::query_as(
        "SELECT extract(epoch FROM paused_until - date_trunc('day', now() AT TIME ZONE 'UTC' + interval '1 day') AT TIME ZONE 'UTC')::float8,
                pause_reason FROM hubsync.limiter",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(
        until_midnight.abs() < 5.0,
        "paused until the next UTC midnight ({until_midnight} s off)"
    );
    assert!(reason.contains("DAILY"), "{reason}");
    // Nothing more is sent while paused, and the object has spent no attempt.
    h.drain().await;
    assert_eq!(h.upserts().last().unwrap().status, 429);
    assert_eq!(h.upserts().len(), DAILY as usize - setup_calls + 1);
    let attempts: i32 = sqlx::query_scalar(
        "SELECT attempts FROM hubsync.objects WHERE object_key = 'over@acme.com'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 0);
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_daily_limit_in_a_portal_at_utc_minus_5_pauses_until_its_local_midnight(pool: PgPool) {
    let sim = SimConfig {
        daily_limit: Some(1),
        // UTC−5 all year (no daylight saving), as the simulator's fixed offset is.
        time_zone: "America/Bogota".into(),
        utc_offset_minutes: -300,
        ..SimConfig::default()
    };
    // The worker reads the portal's time zone before the day's budget is known to be spent.
    let h = Harness::with(pool, CONFIG, sim).await;
    assert_eq!(
        h.worker.portal(),
        chrono::FixedOffset::west_opt(5 * 3600),
        "read from the account details"
    );
    h.enqueue("over@acme.com", json!({"total_sessions": 1}))
        .await;
    h.drain().await;
    assert_eq!(h.upserts().last().map(|r| r.status), Some(429));
    let paused_until: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT paused_until FROM hubsync.limiter WHERE name = 'hubspot'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    let eastern = chrono::FixedOffset::west_opt(5 * 3600).unwrap();
    let local_now = chrono::Utc::now().with_timezone(&eastern);
    let local_midnight = local_now
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_local_timezone(eastern)
        .unwrap();
    let off = (paused_until - local_midnight.with_timezone(&chrono::Utc))
        .num_milliseconds()
        .abs();
    assert!(
        off < 5_000,
        "paused until {paused_until}, local midnight is {local_midnight}"
    );
}

/// `check`, or a worker starting, that meets the daily limit while it reads the portal's
/// properties pauses every worker until the portal's midnight, as a running worker does, not
/// until UTC's (which may be most of a day later). The portal stands at noon, twelve hours from
/// its midnight, whatever the hour in UTC.
#[sqlx::test(migrations = false)]
async fn a_daily_limit_met_while_starting_waits_for_the_portals_midnight(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let url = database_url(&pool);
    for args in [&["check"][..], &["run", "--until-idle"]] {
        let offset_minutes = offset_of_a_portal_at_noon();
        // The account details are the day's one request; the next is refused for the day.
        let sim = hubspot_sim::Simulator::start(SimConfig {
            daily_limit: Some(1),
            time_zone: "Portal/Noon".into(),
            utc_offset_minutes: offset_minutes,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let base = sim.base_url();
        let envs = [
            ("DATABASE_URL", url.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
            ("HUBSPOT_BASE_URL", base.as_str()),
        ];
        sqlx::query("UPDATE hubsync.limiter SET paused_until = NULL, pause_reason = NULL")
            .execute(&pool)
            .await
            .unwrap();
        let out = crate::harness::hubsync_beside(args, Some(CONFIG), &envs).await;
        let err = crate::harness::stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.contains("DAILY"), "{args:?}: {err}");
        let (paused_until, reason): (chrono::DateTime<chrono::Utc>, String) = sqlx::query_as(
            "SELECT paused_until, pause_reason FROM hubsync.limiter WHERE name = 'hubspot'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(reason.contains("DAILY"), "{args:?}: {reason}");
        let midnight = next_midnight_at(offset_minutes);
        let off = (paused_until - midnight).num_seconds().abs();
        assert!(
            off < 5,
            "{args:?}: paused until {paused_until}, the portal's midnight is {midnight}: {err}"
        );
    }
}

/// With `hubspot.daily_budget`, the budget's day ends at the portal's midnight even when the
/// first request of the day is the one that reads the portal's time zone (`check`, a worker
/// starting), which cannot know yet where the day ends.
#[sqlx::test(migrations = false)]
async fn the_budgets_day_ends_at_the_portals_midnight_from_the_first_request(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let url = database_url(&pool);
    let text = CONFIG.replace("[hubspot]", "[hubspot]\ndaily_budget = 1000");
    let offset_minutes = offset_of_a_portal_at_noon();
    let sim = hubspot_sim::Simulator::start(SimConfig {
        time_zone: "Portal/Noon".into(),
        utc_offset_minutes: offset_minutes,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let midnight = || next_midnight_at(offset_minutes);
    let day_ends = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT day_ends FROM hubsync.limiter WHERE name = 'hubspot'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
        .expect("a day in force")
    };

    let base = sim.base_url();
    let envs = [
        ("DATABASE_URL", url.as_str()),
        ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
        ("HUBSPOT_BASE_URL", base.as_str()),
    ];
    let out = crate::harness::hubsync_beside(&["check"], Some(&text), &envs).await;
    let err = crate::harness::stderr(&out);
    let ends = day_ends().await;
    assert!(
        (ends - midnight()).num_seconds().abs() < 5,
        "after check: the day ends at {ends}, the portal's midnight is {}: {err}",
        midnight()
    );

    // A worker starting on a new day.
    sqlx::query("UPDATE hubsync.limiter SET day_ends = NULL, day_used = 0")
        .execute(&pool)
        .await
        .unwrap();
    let config = crate::harness::parse_config(&text);
    let _worker = crate::harness::worker_for(&pool, &sim, &config).await;
    let ends = day_ends().await;
    assert!(
        (ends - midnight()).num_seconds().abs() < 5,
        "after a start: the day ends at {ends}, the portal's midnight is {}",
        midnight()
    );
}

#[sqlx::test(migrations = false)]
async fn a_company_key_that_stops_being_unique_halts_and_parks_nothing(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    // Someone archives the company key property in HubSpot while workers run: HubSpot then
    // refuses every company upsert by it, whatever the records hold.
    assert!(h.sim.archive_property("companies", "product_account_id"));
    for i in 0..5 {
        sqlx::query(
            "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'company',
                    object_key => $1, properties => '{\"seats\": 3}')",
        )
        .bind(format!("acct_{i}"))
        .execute(&h.pool)
        .await
        .unwrap();
    }
    let halted = h.worker.run_until_idle(&CancellationToken::new()).await;
    assert!(halted.is_err(), "{halted:?}");
    let reason: Option<String> = sqlx::query_scalar("SELECT pause_reason FROM hubsync.limiter")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    let reason = reason.expect("the pipeline is paused");
    assert!(
        reason.contains("\"product_account_id\"") && reason.contains("hasUniqueValue"),
        "{reason}"
    );
    assert_eq!(h.count("dlq").await, 0, "nothing is parked for it");
    let hubsync::telemetry::metrics::Readiness::NotReady(why) =
        h.worker.telemetry().readiness(Ok(()))
    else {
        panic!("a halted worker is not ready");
    };
    assert!(
        why.iter().any(|w| w.contains("\"product_account_id\"")),
        "/readyz says why: {why:?}"
    );
    let dirty: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hubsync.objects WHERE object_type = 'company' AND dirty",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(dirty, 5);
    assert_eq!(
        h.upserts().len(),
        1,
        "one refused request, not a search for offenders"
    );
}

/// Retrying or discarding a whole category prints its first rows and the count, not thousands
/// of lines; `dlq list` says when it stopped at its limit; a message is printed whole.
#[sqlx::test(migrations = false)]
async fn dlq_commands_on_many_rows_print_a_readable_amount(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let long = format!(
        "property \"current_plan\": value \"platinum\" is not an option; {}add it to options in hubsync.toml",
        "options are [free, pro, enterprise]; ".repeat(2)
    );
    sqlx::query(
        "INSERT INTO hubsync.dlq (kind, object_type, object_key, payload, error_category, error_message)
         SELECT 'event', 'contact', 'u' || i || '@acme.com', '{}', 'invalid_value', $1
           FROM generate_series(1, 30) i",
    )
    .bind(&long)
    .execute(&pool)
    .await
    .unwrap();
    let run = |args: &[&str]| {
        let out = on_database(&pool, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            crate::harness::stderr(&out)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            crate::harness::stderr(&out),
        )
    };
    let (list, note) = run(&["dlq", "list", "--limit", "10"]);
    assert_eq!(
        list.lines().count(),
        12,
        "a header, a rule and 10 rows: {list}"
    );
    assert!(note.contains("the 10 most recent rows"), "{note}");
    assert!(list.contains("add it to options in hubsync.toml"), "{list}");

    let (retried, note) = run(&["dlq", "retry", "--category", "invalid_value"]);
    assert_eq!(retried.lines().count(), 22, "{retried}");
    assert!(
        note.contains("the first 20 of 30 rows") && note.contains("30 row(s) marked for replay"),
        "{note}"
    );
    let due: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hubsync.dlq WHERE next_retry_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(due, 30, "every row is marked, whatever is printed");
}
