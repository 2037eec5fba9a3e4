//! The whole path: `hubsync.enqueue` in the application's transaction → ingest → sync →
//! the simulator's records.

use chrono::{Duration, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{Harness, enqueue_id};

#[sqlx::test(migrations = false)]
async fn committed_events_reach_the_right_contacts_with_the_right_values(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let mut tx = h.pool.begin().await.unwrap();
    for (email, sessions) in [("Alice@Acme.com", 3), ("bob@acme.com", 2)] {
        for _ in 0..sessions {
            sqlx::query(
                "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                        object_key => $1, properties => '{\"total_sessions\": 1}')",
            )
            .bind(email)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                object_key => ' ALICE@acme.com ',
                properties => '{\"current_plan\": \"pro\", \"last_active_at\": \"2026-11-26T10:00:00Z\"}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let step = h.drain().await;
    assert_eq!(step.ingested, 6);
    assert_eq!(
        h.prop("alice@acme.com", "total_sessions").as_deref(),
        Some("3")
    );
    assert_eq!(
        h.prop("alice@acme.com", "current_plan").as_deref(),
        Some("pro")
    );
    assert_eq!(
        h.prop("alice@acme.com", "last_active_at").as_deref(),
        Some("2026-11-26T10:00:00.000Z")
    );
    assert_eq!(
        h.prop("alice@acme.com", "email").as_deref(),
        Some("alice@acme.com")
    );
    assert_eq!(
        h.prop("bob@acme.com", "total_sessions").as_deref(),
        Some("2")
    );
    assert_eq!(h.sim.records("contacts").len(), 2);
    // Six events, two contacts: one request.
    assert_eq!(h.upserts().len(), 1);
    assert_eq!(h.count("outbox").await, 0);
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_rolled_back_transaction_never_reaches_hubspot(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let mut tx = h.pool.begin().await.unwrap();
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                object_key => 'ghost@acme.com', properties => '{\"total_sessions\": 1}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    h.enqueue("real@acme.com", json!({"total_sessions": 1}))
        .await;

    h.drain().await;
    assert!(h.sim.contact("ghost@acme.com").is_none());
    assert_eq!(
        h.prop("real@acme.com", "total_sessions").as_deref(),
        Some("1")
    );
}

#[sqlx::test(migrations = false)]
async fn enqueueing_the_same_event_id_twice_changes_nothing(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let id = Uuid::new_v4();
    let props = json!({"total_sessions": 5});
    let at = Utc::now();
    assert!(enqueue_id(&h.pool, id, "contact", "dup@acme.com", props.clone(), at).await);
    // Again while it waits in the outbox.
    assert!(!enqueue_id(&h.pool, id, "contact", "dup@acme.com", props.clone(), at).await);
    // A plain INSERT of the same id is a no-op too.
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties)
         VALUES ($1, 'contact', 'dup@acme.com', '{\"total_sessions\": 5}')",
    )
    .bind(id)
    .execute(&h.pool)
    .await
    .unwrap();
    assert_eq!(h.count("outbox").await, 1);
    h.drain().await;
    assert_eq!(
        h.prop("dup@acme.com", "total_sessions").as_deref(),
        Some("5")
    );

    // And again after it was delivered: still a no-op, the counter stays exact.
    assert!(
        !enqueue_id(
            &h.pool,
            id,
            "contact",
            "dup@acme.com",
            props,
            at + Duration::seconds(1)
        )
        .await
    );
    h.drain().await;
    assert_eq!(
        h.prop("dup@acme.com", "total_sessions").as_deref(),
        Some("5")
    );
    assert_eq!(h.count("outbox").await, 0);

    // A role allowed to write via_enqueue (enqueue's mark, which spares its rows the trigger)
    // skips the early no-op, and nothing more: ingest still drops the processed id.
    let privileged =
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, via_enqueue)
         VALUES ($1, 'contact', 'dup@acme.com', '{\"total_sessions\": 5}', true)";
    sqlx::query(privileged)
        .bind(id)
        .execute(&h.pool)
        .await
        .unwrap();
    assert_eq!(h.count("outbox").await, 1);
    // A second such row for the same id is refused by the unique index, not queued twice.
    let again = sqlx::query(privileged).bind(id).execute(&h.pool).await;
    assert!(
        again.is_err_and(|e| e.to_string().contains("outbox_event_id")),
        "a waiting id written twice must hit the unique index"
    );
    h.drain().await;
    assert_eq!(
        h.prop("dup@acme.com", "total_sessions").as_deref(),
        Some("5")
    );
    assert_eq!(h.count("outbox").await, 0);
}

#[sqlx::test(migrations = false)]
async fn plain_inserts_into_the_outbox_are_delivered_like_enqueue(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at)
         VALUES (gen_random_uuid(), 'contact', 'plain@acme.com', '{\"total_sessions\": 2}', now())",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    h.drain().await;
    assert_eq!(
        h.prop("plain@acme.com", "total_sessions").as_deref(),
        Some("2")
    );
}

#[sqlx::test(migrations = false)]
async fn batches_are_well_formed_with_unique_trace_ids(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    for i in 0..250 {
        h.enqueue(&format!("u{i}@acme.com"), json!({"total_sessions": 1}))
            .await;
        // Same contact again in another letter case: one input, never a duplicate id.
        h.enqueue(&format!("U{i}@ACME.com"), json!({"total_sessions": 1}))
            .await;
    }
    h.drain().await;
    let upserts = h.upserts();
    assert_eq!(upserts.len(), 3, "250 contacts take three requests");
    let mut traces = std::collections::HashSet::new();
    for r in &upserts {
        assert_eq!(r.status, 200);
        assert!(r.inputs <= 100);
        let inputs = r.body.as_ref().unwrap()["inputs"]
            .as_array()
            .unwrap()
            .clone();
        let mut ids = std::collections::HashSet::new();
        for input in inputs {
            assert!(
                ids.insert(input["id"].as_str().unwrap().to_string()),
                "duplicate id"
            );
            assert!(traces.insert(input["objectWriteTraceId"].as_str().unwrap().to_string()));
            assert_eq!(input["idProperty"], "email");
            for v in input["properties"].as_object().unwrap().values() {
                assert!(v.is_string(), "every value is sent as a string");
            }
        }
    }
    assert_eq!(h.sim.records("contacts").len(), 250);
    assert!(
        h.sim
            .records("contacts")
            .iter()
            .all(|r| r.properties["total_sessions"] == "2")
    );
}

#[sqlx::test(migrations = false)]
async fn companies_are_upserted_by_their_unique_key_and_associated(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    let prop = h.sim.property("companies", "product_account_id").unwrap();
    assert_eq!(prop["hasUniqueValue"], true);
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                object_key => 'carol@acme.com', properties => '{\"total_sessions\": 1}',
                company_key => 'acct_42')",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'company',
                object_key => 'acct_42', properties => '{\"seats\": 12}')",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    h.drain().await;
    let company = h
        .sim
        .company("product_account_id", "acct_42")
        .expect("company stored");
    assert_eq!(company.properties["seats"], "12");
    let contact = h.contact("carol@acme.com");
    assert_eq!(h.sim.associations(), vec![(contact.id, company.id)]);
}
