//! How the worker reads HubSpot's replies: results matched to inputs by trace id, then by the
//! record id hubsync knows, then by key, then by the values they carry; a whole-batch 4xx of
//! unknown kind narrowed to the record that causes it; company keys equal but for case kept
//! apart.

use hubspot_sim::SimConfig;
use hubsync::core::vocabulary::ObjectType;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{CONFIG, Harness};

async fn object(pool: &PgPool, key: &str) -> (bool, Option<String>) {
    sqlx::query_as("SELECT dirty, hubspot_id FROM hubsync.objects WHERE object_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn dlq(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT object_key, error_category, error::text FROM hubsync.dlq ORDER BY object_key",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `main@acme.com` synced, then `other@acme.com` added to it as a secondary email; returns
/// the contact's id.
async fn merged(h: &Harness) -> String {
    h.setup().await;
    h.enqueue("main@acme.com", json!({"total_sessions": 1}))
        .await;
    h.drain().await;
    assert!(!object(&h.pool, "main@acme.com").await.0, "matched by key");
    let main = h.contact("main@acme.com").id;
    assert!(h.sim.add_secondary_email("main@acme.com", "other@acme.com"));
    h.enqueue("other@acme.com", json!({"total_sessions": 5}))
        .await;
    main
}

/// The event for `other@acme.com` reached the contact `main`, and hubsync recorded it so.
async fn written_to_the_primary(h: &Harness, main: String) {
    assert_eq!(object(&h.pool, "other@acme.com").await, (false, Some(main)));
    assert_eq!(
        h.prop("main@acme.com", "total_sessions").as_deref(),
        Some("5")
    );
    assert!(dlq(&h.pool).await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn an_upsert_by_a_secondary_email_is_matched_by_its_trace_id(pool: PgPool) {
    let sim = SimConfig {
        echo_trace_ids: true,
        ..SimConfig::default()
    };
    let h = Harness::with(pool, CONFIG, sim).await;
    let main = merged(&h).await;
    h.drain().await;
    written_to_the_primary(&h, main).await;
}

#[sqlx::test(migrations = false)]
async fn without_trace_ids_echoed_a_known_record_id_matches_the_reply(pool: PgPool) {
    let sim = SimConfig {
        echo_trace_ids: false,
        ..SimConfig::default()
    };
    let h = Harness::with(pool, CONFIG, sim).await;
    let main = merged(&h).await;
    h.worker.ingest_once().await.unwrap();
    // hubsync learnt this contact's id earlier (say, before the two were merged in HubSpot).
    sqlx::query("UPDATE hubsync.objects SET hubspot_id = $1 WHERE object_key = 'other@acme.com'")
        .bind(&main)
        .execute(&h.pool)
        .await
        .unwrap();
    h.drain().await;
    written_to_the_primary(&h, main).await;
}

#[sqlx::test(migrations = false)]
async fn without_trace_ids_or_a_known_id_a_reply_is_matched_by_the_values_it_carries(pool: PgPool) {
    let sim = SimConfig {
        echo_trace_ids: false,
        ..SimConfig::default()
    };
    let h = Harness::with(pool, CONFIG, sim).await;
    let main = merged(&h).await;
    // With another contact in the same batch, so that matching is not by elimination.
    h.enqueue("third@acme.com", json!({"total_sessions": 2}))
        .await;
    h.drain().await;
    written_to_the_primary(&h, main).await;
    assert!(!object(&h.pool, "third@acme.com").await.0);
    assert_eq!(
        h.upserts().len(),
        2,
        "no retry: the first reply was understood"
    );
}

#[sqlx::test(migrations = false)]
async fn a_409_for_one_record_of_a_full_batch_dead_letters_only_that_record(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    h.sim.conflict_on("contacts", "clash@acme.com");
    for i in 0..99 {
        h.enqueue(
            &format!("user{i:02}@acme.com"),
            json!({"total_sessions": 1}),
        )
        .await;
    }
    h.enqueue("clash@acme.com", json!({"total_sessions": 1}))
        .await;
    h.sim.reset_requests();
    h.drain().await;
    let upserts = h.upserts();
    assert_eq!(upserts[0].inputs, 100, "one full batch first");
    assert!(
        upserts.len() <= 1 + 24,
        "{} requests: isolating one record must cost at most 24 extra",
        upserts.len()
    );
    assert_eq!(
        h.sim.records("contacts").len(),
        99,
        "its batch-mates are written"
    );
    let parked = dlq(&h.pool).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    let (key, category, error) = &parked[0];
    assert_eq!(key, "clash@acme.com");
    assert_eq!(category, "hubspot_rejected");
    assert!(
        error.contains("Contact already exists"),
        "HubSpot's body is kept: {error}"
    );
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hubsync.objects WHERE attempts > 0")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 0, "no batch-mate is charged an attempt");
}

async fn enqueue_company(h: &Harness, key: &str, seats: u32) {
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'company',
                object_key => $1, properties => $2::jsonb)",
    )
    .bind(key)
    .bind(json!({ "seats": seats }).to_string())
    .execute(&h.pool)
    .await
    .unwrap();
}

#[sqlx::test(migrations = false)]
async fn companies_whose_keys_differ_only_in_case_each_keep_their_own_record(pool: PgPool) {
    // Results in input order and no trace ids echoed: only the key tells them apart.
    let sim = SimConfig {
        shuffle_results: false,
        ..SimConfig::default()
    };
    let h = Harness::with(pool, CONFIG, sim).await;
    h.setup().await;
    enqueue_company(&h, "Acme", 3).await;
    enqueue_company(&h, "acme", 7).await;
    h.worker.ingest_once().await.unwrap();
    let first = h
        .worker
        .sync_once(ObjectType::Company, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((first.leased, first.written, first.released), (2, 1, 1));
    let waiting: Vec<(bool, Option<Uuid>, i32)> = sqlx::query_as(
        "SELECT dirty, lease_token, attempts FROM hubsync.objects
         WHERE object_type = 'company' AND hubspot_id IS NULL",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        waiting,
        vec![(true, None, 0)],
        "the other is handed back for the next batch, due at once and not charged an attempt"
    );
    h.drain().await;
    let mut ids = Vec::new();
    for (key, seats) in [("Acme", "3"), ("acme", "7")] {
        let record = h
            .sim
            .company("product_account_id", key)
            .unwrap_or_else(|| panic!("company {key} is in the simulator"));
        assert_eq!(record.properties["seats"], seats, "{key}");
        assert_eq!(record.properties["product_account_id"], key);
        assert_eq!(
            object(&h.pool, key).await,
            (false, Some(record.id.clone())),
            "{key} is recorded clean with its own record id"
        );
        ids.push(record.id);
    }
    assert_ne!(ids[0], ids[1]);
    assert!(dlq(&h.pool).await.is_empty());
    // A portal that compares the key case-insensitively would refuse a request holding both.
    for upsert in h.upserts() {
        let keys: Vec<String> = upsert.body.as_ref().unwrap()["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|input| input["id"].as_str().unwrap().to_lowercase())
            .collect();
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), keys.len(), "one request holds {keys:?}");
    }
}
