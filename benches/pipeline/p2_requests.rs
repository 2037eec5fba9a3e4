//! P2: how many requests 10,000 events over 1,000 contacts take, beside a naive batcher.

use hubsync::core::vocabulary::ObjectType;
use hubsync::demo::Lcg;
use hubsync::hubspot::HubSpotClient;
use reqwest::Method;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{Rig, client, enqueue_contact, is_2xx, mean_inputs, table, upserts};

const EVENTS: usize = 10_000;
const CONTACTS: usize = 1_000;

pub async fn run(base_url: &str) -> anyhow::Result<()> {
    println!(
        "## P2: requests for {EVENTS} events over {CONTACTS} contacts\n\n\
         Events (10 per contact, shuffled) are enqueued through hubsync.enqueue first; then \
         `run_until_idle` drains them. The naive batcher sends the same events, in arrival \
         order, 100 per upsert, merging nothing, to the same simulator (unthrottled here so \
         that only 400s can refuse it).\n"
    );
    let rig = Rig::start(base_url, "p2", 0, 100, 10_000).await?;

    // Exactly 10 events per contact, in a shuffled arrival order; the demo's generator makes
    // every run enqueue the same events in the same order.
    let mut order: Vec<usize> = (0..EVENTS).map(|i| i % CONTACTS).collect();
    let mut rng = Lcg(42);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.next(i + 1));
    }
    let plans = ["free", "pro", "enterprise"];
    let mut tx = rig.db.pool.begin().await?;
    for (n, c) in order.iter().enumerate() {
        let props = json!({
            "total_sessions": 1,
            "current_plan": plans[rng.next(plans.len())],
        });
        enqueue_contact(&mut *tx, &format!("user{c}@example.com"), &props).await?;
        if n % 500 == 499 {
            tx.commit().await?;
            tx = rig.db.pool.begin().await?;
        }
    }
    tx.commit().await?;
    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT object_key, properties::text FROM hubsync.outbox ORDER BY id")
            .fetch_all(&rig.db.pool)
            .await?;

    rig.sim.reset_requests();
    let w = rig.worker().await?;
    let step = w.run_until_idle(&CancellationToken::new()).await?;
    let requests = rig.sim.requests();
    let ups = upserts(&requests);
    let refused = ups.iter().filter(|r| !is_2xx(r)).count();
    let contacts = rig.sim.records("contacts").len();
    let mut rows = vec![vec![
        "hubsync worker (run_until_idle)".to_string(),
        ups.len().to_string(),
        refused.to_string(),
        format!("{:.1}", mean_inputs(&ups)),
        format!("{} ingested, {} written", step.ingested, step.sync.written),
    ]];

    let c = client(&rig.sim, &rig.config)?;
    for dedupe in [false, true] {
        let (sent, refused, inputs) = naive_batches(&c, &events, dedupe).await?;
        rows.push(vec![
            if dedupe {
                "naive, 100 events per upsert, ids de-duplicated within a batch (last event wins)"
            } else {
                "naive, 100 events per upsert, as they come"
            }
            .to_string(),
            sent.to_string(),
            refused.to_string(),
            format!("{inputs:.1}"),
            String::new(),
        ]);
    }
    table(
        &format!(
            "P2 results (target: {} requests, one per 100 distinct objects; HubSpot holds {contacts} contacts)",
            CONTACTS.div_ceil(100)
        ),
        &[
            "strategy",
            "upsert requests",
            "refused (non-2xx)",
            "inputs per request",
            "worker totals",
        ],
        &rows,
    );
    drop(w);
    rig.finish().await
}

/// Sends `events` 100 at a time, one upsert per 100 events; returns (sent, refused, mean inputs).
async fn naive_batches(
    client: &HubSpotClient,
    events: &[(String, String)],
    dedupe: bool,
) -> anyhow::Result<(usize, usize, f64)> {
    let path = client.paths.batch_upsert(ObjectType::Contact);
    let (mut sent, mut refused, mut inputs_total) = (0, 0, 0);
    for chunk in events.chunks(100) {
        let mut inputs: Vec<(String, Value)> = Vec::new();
        for (key, props) in chunk {
            let props: Map<String, Value> = serde_json::from_str(props)?;
            let mut strings: Map<String, Value> = props
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, Value::String(s))
                })
                .collect();
            strings.insert("email".into(), Value::String(key.clone()));
            let input = json!({"id": key, "idProperty": "email", "properties": strings});
            match inputs.iter_mut().find(|(k, _)| dedupe && k == key) {
                Some(slot) => slot.1 = input,
                None => inputs.push((key.clone(), input)),
            }
        }
        inputs_total += inputs.len();
        let body = json!({"inputs": inputs.into_iter().map(|(_, i)| i).collect::<Vec<_>>()});
        let reply = client.send(Method::POST, &path, Some(&body)).await;
        sent += 1;
        if !reply.is_ok_and(|r| (200..300).contains(&r.status)) {
            refused += 1;
        }
    }
    Ok((sent, refused, inputs_total as f64 / sent.max(1) as f64))
}
