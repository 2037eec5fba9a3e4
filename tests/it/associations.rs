//! Contact → company associations through the worker against the simulator: HubSpot's per-pair
//! answers are read, a refused pair is retried and then dead-lettered while the others are made,
//! and an association follows the contact's record id and company.

use hubsync::core::vocabulary::ObjectType;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::Harness;

async fn contact_at(h: &Harness, email: &str, company: &str) {
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                object_key => $1, properties => '{\"total_sessions\": 1}', company_key => $2)",
    )
    .bind(email)
    .bind(company)
    .execute(&h.pool)
    .await
    .unwrap();
}

async fn company(h: &Harness, key: &str) {
    sqlx::query(
        "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'company',
                object_key => $1, properties => '{\"seats\": 1}')",
    )
    .bind(key)
    .execute(&h.pool)
    .await
    .unwrap();
}

fn company_id(h: &Harness, key: &str) -> String {
    h.sim
        .company("product_account_id", key)
        .expect("company stored")
        .id
}

/// Ingests and syncs both types, without associating.
async fn sync_only(h: &Harness) {
    let cancel = CancellationToken::new();
    h.worker.ingest_once().await.unwrap();
    for kind in [ObjectType::Company, ObjectType::Contact] {
        h.worker.sync_once(kind, &cancel).await.unwrap();
    }
}

/// A worker giving up on HubSpot after `timeout`, whose first retry waits the whole first
/// backoff (one second).
async fn worker_waiting(h: &Harness, timeout: std::time::Duration) -> hubsync::worker::Worker {
    let client = hubsync::hubspot::HubSpotClient::new(
        &h.sim.base_url(),
        "sim-token",
        hubsync::hubspot::Paths::new(h.config.hubspot.api_version),
        timeout,
    )
    .unwrap();
    hubsync::worker::Worker::new(h.pool.clone(), h.config.clone(), client)
        .await
        .unwrap()
        .with_jitter(std::sync::Arc::new(|| 1.0))
}

/// Companies acct_1 and acct_2 and contact a@acme.com of acct_1, synced, not associated.
async fn synced_at_acct_1_beside_acct_2(pool: PgPool) -> Harness {
    let h = Harness::new(pool).await;
    h.setup().await;
    company(&h, "acct_1").await;
    company(&h, "acct_2").await;
    contact_at(&h, "a@acme.com", "acct_1").await;
    sync_only(&h).await;
    h
}

#[sqlx::test(migrations = false)]
async fn a_refused_pair_is_retried_then_dead_lettered_and_the_others_are_made(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    for (email, key) in [
        ("a@acme.com", "acct_1"),
        ("b@acme.com", "acct_2"),
        ("c@acme.com", "acct_3"),
    ] {
        company(&h, key).await;
        contact_at(&h, email, key).await;
    }
    sync_only(&h).await;
    // Someone deletes b in HubSpot before it is associated: HubSpot refuses that pair.
    let b = h.contact("b@acme.com").id;
    assert!(h.sim.delete_record("contacts", &b));
    h.sim.reset_requests();
    h.drain().await;

    let mut made = h.sim.associations();
    made.sort();
    let mut wanted = vec![
        (h.contact("a@acme.com").id, company_id(&h, "acct_1")),
        (h.contact("c@acme.com").id, company_id(&h, "acct_3")),
    ];
    wanted.sort();
    assert_eq!(made, wanted);
    let tries = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/associate/default"))
        .filter(|r| {
            r.body
                .as_ref()
                .is_some_and(|body| body.to_string().contains(&format!("\"{b}\"")))
        })
        .count();
    assert_eq!(
        tries, h.config.worker.max_attempts as usize,
        "retried, then given up"
    );
    let (object_type, key, category, error): (String, String, String, String) = sqlx::query_as(
        "SELECT object_type, object_key, error_category, error::text FROM hubsync.dlq
         WHERE kind = 'object'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        (object_type.as_str(), key.as_str(), category.as_str()),
        ("association", "b@acme.com", "association_refused")
    );
    assert!(error.contains(&b), "HubSpot's error is kept: {error}");
    // Nothing more is sent for it.
    h.sim.reset_requests();
    h.drain().await;
    assert!(h.sim.requests().is_empty());
}

/// Association requests that keep failing (HubSpot down): the pair goes to the DLQ, which
/// tries it again by itself; a pair HubSpot refused waits for a person instead (above).
#[sqlx::test(migrations = false)]
async fn an_association_whose_requests_kept_failing_is_tried_again_by_itself(pool: PgPool) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    let tries = h.config.worker.max_attempts as usize;
    h.sim
        .script(vec![crate::harness::SERVICE_UNAVAILABLE; tries]);
    h.sim.reset_requests();
    h.drain().await;
    assert!(h.sim.associations().is_empty());
    assert_eq!(h.sim.requests().len(), tries);
    let (category, due_in): (String, Option<f64>) = sqlx::query_as(
        "SELECT error_category, extract(epoch FROM next_retry_at - clock_timestamp())::float8
         FROM hubsync.dlq WHERE object_type = 'association' AND object_key = 'a@acme.com'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(category, "association_failed");
    let due_in = due_in.expect("tried again by itself, not parked");
    assert!((30.0..=61.0).contains(&due_in), "due in {due_in} s");
    // Not before it is due.
    h.drain().await;
    assert_eq!(h.sim.requests().len(), tries);

    h.dlq_due_now().await;
    h.drain().await;
    assert_eq!(
        h.sim.associations(),
        vec![(h.contact("a@acme.com").id, company_id(&h, "acct_1"))]
    );
    assert_eq!(h.count("dlq").await, 0, "made: its row is gone");
}

/// A success that leaves the pair out, every time: HubSpot's trouble, not the records'. The
/// pair waits in the DLQ as `association_failed`, which tries it again by itself.
#[sqlx::test(migrations = false)]
async fn an_association_left_out_of_every_answer_is_tried_again_by_itself(pool: PgPool) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    let tries = h.config.worker.max_attempts as usize;
    h.sim.script(vec![hubspot_sim::Fault::SilentOk; tries]);
    h.drain().await;
    assert!(h.sim.associations().is_empty());
    let (category, message, scheduled): (String, String, bool) = sqlx::query_as(
        "SELECT error_category, error_message, next_retry_at IS NOT NULL
         FROM hubsync.dlq WHERE object_type = 'association' AND object_key = 'a@acme.com'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(category, "association_failed", "{message}");
    assert!(scheduled, "tried again by itself: {message}");
    assert!(message.contains("next_retry_at"), "{message}");
}

#[sqlx::test(migrations = false)]
async fn a_company_change_removes_the_old_association_and_makes_the_new_one(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    company(&h, "acct_1").await;
    company(&h, "acct_2").await;
    contact_at(&h, "a@acme.com", "acct_1").await;
    h.drain().await;
    let a = h.contact("a@acme.com").id;
    assert_eq!(
        h.sim.associations(),
        vec![(a.clone(), company_id(&h, "acct_1"))]
    );

    contact_at(&h, "a@acme.com", "acct_2").await;
    h.drain().await;
    assert_eq!(h.sim.associations(), vec![(a, company_id(&h, "acct_2"))]);
}

#[sqlx::test(migrations = false)]
async fn a_re_created_contact_is_associated_again(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    company(&h, "acct_1").await;
    contact_at(&h, "a@acme.com", "acct_1").await;
    h.drain().await;
    let old = h.contact("a@acme.com").id;
    assert!(h.sim.delete_record("contacts", &old));
    assert!(h.sim.associations().is_empty());

    // The next event re-creates the contact under a new id.
    contact_at(&h, "a@acme.com", "acct_1").await;
    h.drain().await;
    let new = h.contact("a@acme.com").id;
    assert_ne!(new, old);
    assert_eq!(h.sim.associations(), vec![(new, company_id(&h, "acct_1"))]);
}

#[sqlx::test(migrations = false)]
async fn a_pair_is_not_taken_as_made_by_the_reverse_pair_when_ids_collide(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    // One record at a time, so the ids cross: contact a and company acct_1 share an id, and so
    // do contact b and company acct_2. a belongs with acct_2 and b with acct_1.
    company(&h, "acct_1").await;
    sync_only(&h).await;
    company(&h, "acct_2").await;
    sync_only(&h).await;
    contact_at(&h, "a@acme.com", "acct_2").await;
    sync_only(&h).await;
    contact_at(&h, "b@acme.com", "acct_1").await;
    sync_only(&h).await;
    let (a, b) = (h.contact("a@acme.com").id, h.contact("b@acme.com").id);
    let (acct_1, acct_2) = (company_id(&h, "acct_1"), company_id(&h, "acct_2"));
    assert_eq!((&a, &b), (&acct_1, &acct_2), "the ids cross");

    // a is deleted in HubSpot: its pair is refused, while b's is made, and b's reply joins the
    // same two numbers the other way round (b→acct_1 is a→acct_2 read backwards).
    assert!(h.sim.delete_record("contacts", &a));
    h.drain().await;

    assert_eq!(h.sim.associations(), vec![(b, acct_1)]);
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT object_key, error_category, error::text FROM hubsync.dlq
         WHERE kind = 'object' AND object_type = 'association'",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("a@acme.com", "association_refused")
    );
    assert!(
        rows[0].2.contains(&a),
        "HubSpot's error is kept: {}",
        rows[0].2
    );
}

#[sqlx::test(migrations = false)]
async fn a_removal_whose_old_company_is_gone_counts_as_done_and_the_new_one_is_made(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    for key in ["acct_1", "acct_2", "acct_3"] {
        company(&h, key).await;
    }
    contact_at(&h, "a@acme.com", "acct_1").await;
    contact_at(&h, "b@acme.com", "acct_2").await;
    h.drain().await;
    let (a, b) = (h.contact("a@acme.com").id, h.contact("b@acme.com").id);
    let (acct_1, acct_3) = (company_id(&h, "acct_1"), company_id(&h, "acct_3"));
    assert_eq!(h.sim.associations().len(), 2);

    // Both move to acct_3; acct_1 is deleted in HubSpot meanwhile, so HubSpot refuses to
    // remove a's association with it (no such company) while it removes b's with acct_2.
    // Nothing is left to remove for a: its new association is made all the same.
    contact_at(&h, "a@acme.com", "acct_3").await;
    contact_at(&h, "b@acme.com", "acct_3").await;
    assert!(h.sim.delete_record("companies", &acct_1));
    h.sim.reset_requests();
    h.drain().await;

    let mut made = h.sim.associations();
    made.sort();
    let mut expected = vec![(a, acct_3.clone()), (b, acct_3)];
    expected.sort();
    assert_eq!(made, expected);
    let removals = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/batch/archive"))
        .filter(|r| {
            r.body
                .as_ref()
                .is_some_and(|body| body.to_string().contains(&format!("\"{acct_1}\"")))
        })
        .count();
    assert_eq!(
        removals, 1,
        "tried once: a missing company has no association left"
    );
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_backlog_of_associations_is_made_without_waiting_between_batches(pool: PgPool) {
    // A worker that looks on its own only every three hours: nothing but the work itself may
    // bring the next batch.
    let config = format!(
        "{}\n[worker]\nidle_poll_secs = 3600\n",
        crate::harness::CONFIG
    );
    let h = Harness::with(pool, &config, hubspot_sim::SimConfig::default()).await;
    h.setup().await;
    company(&h, "acct_1").await;
    for i in 0..350 {
        contact_at(&h, &format!("c{i}@acme.com"), "acct_1").await;
    }
    // Everything synced, nothing associated yet: 350 pairs wait, four batches' worth.
    let cancel = CancellationToken::new();
    while h.worker.ingest_once().await.unwrap().claimed > 0 {}
    for kind in [ObjectType::Company, ObjectType::Contact] {
        while h.worker.sync_once(kind, &cancel).await.unwrap().leased > 0 {}
    }
    assert!(h.sim.associations().is_empty());
    // `hubsync status` counts them.
    let status = include_str!("../../sql/status.sql")
        .trim()
        .trim_end_matches(';');
    let waiting: i64 =
        sqlx::query_scalar(&format!("SELECT associations_waiting FROM ({status}) s"))
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(waiting, 350);

    let worker = std::sync::Arc::new(crate::harness::worker_for(&h.pool, &h.sim, &h.config).await);
    let running = tokio::spawn(worker.clone().run(cancel.clone()));
    let started = std::time::Instant::now();
    while h.sim.associations().len() < 350 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{} of 350 associated",
            h.sim.associations().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[sqlx::test(migrations = false)]
async fn workers_side_by_side_leave_each_contact_with_only_its_latest_company(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    for key in ["k0", "k1", "k2"] {
        company(&h, key).await;
    }
    h.drain().await;
    // Slow answers widen the window in which two workers could take the same contacts.
    let hang = hubspot_sim::Fault::Hang(std::time::Duration::from_millis(120));
    h.sim.set_random_faults(1.0, vec![hang], 7);
    let cancel = CancellationToken::new();
    let mut running = Vec::new();
    for _ in 0..3 {
        let url = crate::harness::database_url(&h.pool);
        let pool = hubsync::db::connect_worker(&url, 8, &h.config.worker)
            .await
            .unwrap();
        let worker = crate::harness::worker_for(&pool, &h.sim, &h.config).await;
        running.push(tokio::spawn(
            std::sync::Arc::new(worker).run(cancel.clone()),
        ));
    }
    // Three producers move thirty contacts among the companies at random, as fast as they
    // can, while the workers run.
    let mut producers = Vec::new();
    for p in 0..3u64 {
        let pool = h.pool.clone();
        producers.push(tokio::spawn(async move {
            let mut x = p * 7919 + 1;
            for _ in 0..200 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let (i, k) = ((x >> 33) % 30, (x >> 17) % 3);
                sqlx::query(
                    "SELECT hubsync.enqueue(event_id => gen_random_uuid(), object_type => 'contact',
                            object_key => $1, properties => '{\"total_sessions\": 1}',
                            company_key => $2)",
                )
                .bind(format!("m{i}@acme.com"))
                .bind(format!("k{k}"))
                .execute(&pool)
                .await
                .unwrap();
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    // Once everything is settled, HubSpot holds for each contact exactly the company hubsync
    // merged last for it, and no other.
    let started = std::time::Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM hubsync.objects WHERE dirty
                OR (object_type = 'contact' AND associated_company_key IS DISTINCT FROM company_key)",
        )
        .fetch_one(&h.pool)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "{pending} objects not settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cancel.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }
    let latest: Vec<(String, String)> = sqlx::query_as(
        "SELECT object_key, company_key FROM hubsync.objects WHERE object_type = 'contact'",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let expected: std::collections::BTreeSet<(String, String)> = latest
        .iter()
        .map(|(contact, company)| (h.contact(contact).id, company_id(&h, company)))
        .collect();
    let made: std::collections::BTreeSet<(String, String)> =
        h.sim.associations().into_iter().collect();
    assert_eq!(
        made, expected,
        "each contact with exactly its latest company"
    );
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_pair_whose_reply_was_lost_is_removed_when_the_contact_moves_on(pool: PgPool) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    // HubSpot makes the association, but a 503 comes back instead of its answer. This worker's
    // retries wait out the first backoff (one second), so the contact can move meanwhile.
    let patient = worker_waiting(&h, std::time::Duration::from_secs(5)).await;
    h.sim.script(vec![hubspot_sim::Fault::ApplyThenStatus(503)]);
    patient
        .run_until_idle(&CancellationToken::new())
        .await
        .unwrap();
    let a = h.contact("a@acme.com").id;
    assert_eq!(
        h.sim.associations(),
        vec![(a.clone(), company_id(&h, "acct_1"))],
        "the association landed"
    );

    contact_at(&h, "a@acme.com", "acct_2").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.drain().await;
    assert_eq!(
        h.sim.associations(),
        vec![(a, company_id(&h, "acct_2"))],
        "the pair that may have landed is removed, as a made one would be"
    );
    assert_eq!(h.count("dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_parked_association_is_tried_again_when_the_contact_moves_to_another_company(
    pool: PgPool,
) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    // The company is deleted in HubSpot before the association is made: every try is refused
    // and the association is parked.
    assert!(h.sim.delete_record("companies", &company_id(&h, "acct_1")));
    h.drain().await;
    assert!(h.sim.associations().is_empty());
    assert_eq!(h.count("dlq").await, 1);

    // The contact moves to a company that exists: its association is made, without a replay.
    contact_at(&h, "a@acme.com", "acct_2").await;
    h.drain().await;
    assert_eq!(
        h.sim.associations(),
        vec![(h.contact("a@acme.com").id, company_id(&h, "acct_2"))]
    );
    assert_eq!(
        h.count("dlq").await,
        0,
        "the parked row goes once it is made"
    );
}

#[sqlx::test(migrations = false)]
async fn a_parked_association_is_tried_again_when_the_contact_is_created_again(pool: PgPool) {
    let h = Harness::new(pool).await;
    h.setup().await;
    company(&h, "acct_1").await;
    contact_at(&h, "a@acme.com", "acct_1").await;
    sync_only(&h).await;
    // The contact is deleted in HubSpot before it is associated: the pair is parked.
    let old = h.contact("a@acme.com").id;
    assert!(h.sim.delete_record("contacts", &old));
    h.drain().await;
    assert_eq!(h.count("dlq").await, 1);

    // Its next event creates it again under a new id, which is associated without a replay.
    contact_at(&h, "a@acme.com", "acct_1").await;
    h.drain().await;
    let new = h.contact("a@acme.com").id;
    assert_ne!(new, old);
    assert_eq!(h.sim.associations(), vec![(new, company_id(&h, "acct_1"))]);
    assert_eq!(h.count("dlq").await, 0);
}

/// Makes a@acme.com's next try of its association its last.
async fn next_try_of_a_is_its_last(h: &Harness) {
    sqlx::query(
        "UPDATE hubsync.objects SET association_attempts = $1
         WHERE object_type = 'contact' AND object_key = 'a@acme.com'",
    )
    .bind(h.config.worker.max_attempts - 1)
    .execute(&h.pool)
    .await
    .unwrap();
}

/// A worker that gives up on HubSpot after one second and retries a first failure after one
/// second, and the moment from which HubSpot takes three seconds over the next request (and
/// carries it out all the same).
async fn giving_up_before_a_three_second_hang(
    h: &Harness,
) -> (hubsync::worker::Worker, std::time::Instant) {
    let impatient = worker_waiting(h, std::time::Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    h.sim.script(vec![hubspot_sim::Fault::Hang(
        std::time::Duration::from_secs(3),
    )]);
    (impatient, started)
}

/// a's request for its pair with acct_1 lands 3 s after `started` (HubSpot carried it out
/// after `worker` gave up on it), and a has moved to acct_2: no removal of the old pair goes
/// out before it lands, and a ends with acct_2 alone.
async fn ends_with_acct_2_alone_after_the_late_pair(
    h: &Harness,
    worker: &hubsync::worker::Worker,
    started: std::time::Instant,
) {
    let cancel = CancellationToken::new();
    tokio::time::sleep_until((started + std::time::Duration::from_millis(2300)).into()).await;
    worker.run_until_idle(&cancel).await.unwrap();
    // Only a run that ended before the pair landed can tell (a loaded machine may be later).
    if started.elapsed() < std::time::Duration::from_millis(2900) {
        let removals = h
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.contains("/archive"))
            .count();
        assert_eq!(removals, 0, "a removal went out before the old pair landed");
    }
    // Not before the old pair has landed: until then a wrong order could look right.
    tokio::time::sleep_until((started + std::time::Duration::from_millis(3500)).into()).await;
    let wanted = vec![(h.contact("a@acme.com").id, company_id(h, "acct_2"))];
    loop {
        worker.run_until_idle(&cancel).await.unwrap();
        if h.sim.associations() == wanted {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "a holds {:?}",
            h.sim.associations()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_pair_that_may_still_land_is_removed_only_after_it_must_have_landed(pool: PgPool) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    let (impatient, started) = giving_up_before_a_three_second_hang(&h).await;
    let cancel = CancellationToken::new();
    impatient.run_until_idle(&cancel).await.unwrap();
    assert!(h.sim.associations().is_empty(), "not landed yet");

    // The contact moves on while that request is still on its way. A next try before it lands
    // would remove a pair that is not there yet, then HubSpot would make it.
    contact_at(&h, "a@acme.com", "acct_2").await;
    ends_with_acct_2_alone_after_the_late_pair(&h, &impatient, started).await;
}

#[sqlx::test(migrations = false)]
async fn a_contact_that_moves_during_its_last_try_is_not_parked_with_the_old_pair(pool: PgPool) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    // acct_1 is gone from HubSpot, so a's pair is refused; its next try is its last, and slow:
    // the contact moves to acct_2 while it is on its way.
    assert!(h.sim.delete_record("companies", &company_id(&h, "acct_1")));
    next_try_of_a_is_its_last(&h).await;
    h.sim.script(vec![hubspot_sim::Fault::Hang(
        std::time::Duration::from_millis(1500),
    )]);
    let cancel = CancellationToken::new();
    let draining = async {
        h.worker.run_until_idle(&cancel).await.unwrap();
    };
    let moving = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        contact_at(&h, "a@acme.com", "acct_2").await;
        h.worker.ingest_once().await.unwrap();
    };
    tokio::join!(draining, moving);
    // The refusal of the old pair does not park the contact's new company.
    h.drain().await;
    assert_eq!(
        h.sim.associations(),
        vec![(h.contact("a@acme.com").id, company_id(&h, "acct_2"))]
    );
    assert_eq!(h.count("dlq").await, 0, "nothing parked for the new pair");
}

/// Like [`synced_at_acct_1_beside_acct_2`], with requests given up after one second, and a's
/// next try of its association its last.
async fn on_its_last_try_with_one_second_timeouts(pool: PgPool) -> Harness {
    let text = crate::harness::CONFIG.replace("[hubspot]", "[hubspot]\nrequest_timeout_secs = 1");
    let h = Harness::with(pool, &text, hubspot_sim::SimConfig::default()).await;
    h.setup().await;
    company(&h, "acct_1").await;
    company(&h, "acct_2").await;
    contact_at(&h, "a@acme.com", "acct_1").await;
    sync_only(&h).await;
    next_try_of_a_is_its_last(&h).await;
    h
}

/// A last try that got no answer parks the pair; HubSpot carries it out later all the same.
/// The contact moves on meanwhile: the old pair is removed only once it must have landed
/// (four request timeouts), or HubSpot would make it after its removal.
#[sqlx::test(migrations = false)]
async fn a_parked_pair_that_may_still_land_is_removed_only_after_it_must_have_landed(pool: PgPool) {
    let h = on_its_last_try_with_one_second_timeouts(pool).await;
    let (impatient, started) = giving_up_before_a_three_second_hang(&h).await;
    let cancel = CancellationToken::new();
    impatient.run_until_idle(&cancel).await.unwrap();
    let parked: Option<String> = sqlx::query_scalar(
        "SELECT error_category FROM hubsync.dlq WHERE object_type = 'association'",
    )
    .fetch_optional(&h.pool)
    .await
    .unwrap();
    assert_eq!(parked.as_deref(), Some("association_failed"));
    assert!(h.sim.associations().is_empty(), "not landed yet");

    contact_at(&h, "a@acme.com", "acct_2").await;
    h.worker.ingest_once().await.unwrap();
    ends_with_acct_2_alone_after_the_late_pair(&h, &impatient, started).await;
}

/// The same, with the contact moving while that last try is on its way.
#[sqlx::test(migrations = false)]
async fn a_contact_that_moves_during_a_last_try_without_answer_waits_for_it_to_land(pool: PgPool) {
    let h = on_its_last_try_with_one_second_timeouts(pool).await;
    let (impatient, started) = giving_up_before_a_three_second_hang(&h).await;
    let at = |secs: f64| started + std::time::Duration::from_secs_f64(secs);
    let cancel = CancellationToken::new();
    let trying = async {
        impatient.run_until_idle(&cancel).await.unwrap();
    };
    let moving = async {
        tokio::time::sleep_until(at(0.5).into()).await;
        contact_at(&h, "a@acme.com", "acct_2").await;
        h.worker.ingest_once().await.unwrap();
    };
    tokio::join!(trying, moving);
    ends_with_acct_2_alone_after_the_late_pair(&h, &impatient, started).await;
}

#[sqlx::test(migrations = false)]
async fn a_contact_that_moves_back_after_its_old_association_was_removed_gets_it_again(
    pool: PgPool,
) {
    let h = synced_at_acct_1_beside_acct_2(pool).await;
    h.drain().await;
    let a = h.contact("a@acme.com").id;
    assert_eq!(
        h.sim.associations(),
        vec![(a.clone(), company_id(&h, "acct_1"))]
    );

    // It moves to acct_2, which is gone from HubSpot: the old association is removed, the new
    // one refused until it is parked.
    assert!(h.sim.delete_record("companies", &company_id(&h, "acct_2")));
    contact_at(&h, "a@acme.com", "acct_2").await;
    h.drain().await;
    assert!(h.sim.associations().is_empty());

    // It moves back: its association with acct_1 is made again.
    contact_at(&h, "a@acme.com", "acct_1").await;
    h.drain().await;
    assert_eq!(h.sim.associations(), vec![(a, company_id(&h, "acct_1"))]);
}

#[sqlx::test(migrations = false)]
async fn contacts_parked_for_a_deleted_company_are_associated_when_it_is_created_again(
    pool: PgPool,
) {
    let h = Harness::new(pool).await;
    h.setup().await;
    company(&h, "acct_1").await;
    contact_at(&h, "a@acme.com", "acct_1").await;
    sync_only(&h).await;
    // The company is deleted in HubSpot: the pair is refused until it is parked.
    let old = company_id(&h, "acct_1");
    assert!(h.sim.delete_record("companies", &old));
    h.drain().await;
    assert_eq!(h.count("dlq").await, 1);

    // The company's next event creates it again under a new id: the contact follows it.
    company(&h, "acct_1").await;
    h.drain().await;
    let new = company_id(&h, "acct_1");
    assert_ne!(new, old);
    assert_eq!(
        h.sim.associations(),
        vec![(h.contact("a@acme.com").id, new)]
    );
    assert_eq!(h.count("dlq").await, 0);
}
