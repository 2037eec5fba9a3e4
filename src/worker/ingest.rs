//! Ingest: the first short transaction. Claim outbox rows, drop known event ids, validate,
//! fold accepted events into `hubsync.objects`, park refused ones in the DLQ, record every id
//! in the ledger, commit. Also replays dead-lettered events an operator marked due.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Context;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::Config;
use crate::db;
use crate::db::dlq::EventFailure;
use crate::db::ingest::OutboxEvent;
use crate::event::{Prepared, payload, prepare};
use crate::schema::{ObjectKind, ObjectState, merge, merge_company};

/// What one fold did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Events applied to objects.
    pub accepted: usize,
    /// Events dead-lettered.
    pub refused: usize,
}

/// Validates and folds `events` inside `tx`; returns the ids that were refused.
pub async fn fold(
    tx: &mut PgConnection,
    config: &Config,
    events: &[OutboxEvent],
) -> anyhow::Result<(Folded, HashSet<Uuid>)> {
    let mut failures: Vec<EventFailure> = Vec::new();
    let mut by_object: BTreeMap<(ObjectKind, String), Vec<Prepared>> = BTreeMap::new();
    let mut referenced_companies: BTreeSet<String> = BTreeSet::new();
    for event in events {
        match prepare(event, config) {
            Ok(p) => {
                if let Some(c) = &p.company_key {
                    referenced_companies.insert(c.clone());
                }
                by_object
                    .entry((p.kind, p.key.clone()))
                    .or_default()
                    .push(p);
            }
            Err(r) => failures.push(EventFailure {
                event_id: event.event_id,
                object_type: event.object_type.clone(),
                object_key: event.object_key.clone(),
                payload: payload(event),
                category: r.category.to_string(),
                message: r.message,
                error: json!({"source": "hubsync", "category": r.category, "detail": r.detail})
                    .to_string(),
            }),
        }
    }
    // A company a contact points at is created (by its key alone) if no event names it.
    for c in referenced_companies {
        by_object.entry((ObjectKind::Company, c)).or_default();
    }
    let accepted = events.len() - failures.len();
    for kind in [ObjectKind::Contact, ObjectKind::Company] {
        // BTreeMap order: keys sorted, so rows are locked in key order.
        let keys: Vec<String> = by_object
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, key)| key.clone())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let objects = match kind {
            ObjectKind::Contact => &config.contacts,
            ObjectKind::Company => match &config.companies {
                Some(c) => &c.objects,
                None => continue,
            },
        };
        let locked = db::ingest::lock_objects(tx, kind.as_str(), &keys)
            .await
            .context("failed to lock object rows")?;
        let mut out_keys = Vec::new();
        let mut out_states = Vec::new();
        let mut out_companies = Vec::new();
        for row in locked {
            let Some(prepared) = by_object.get(&(kind, row.key.clone())) else {
                continue;
            };
            let mut state: ObjectState = serde_json::from_str(&row.state).unwrap_or_default();
            let before = state.clone();
            for p in prepared {
                for (name, contribution) in &p.contributions {
                    let Some(def) = objects.properties.get(name) else {
                        continue;
                    };
                    let merged = merge(def, state.props.get(name), contribution);
                    state.props.insert(name.clone(), merged);
                }
                if let Some(c) = &p.company_key {
                    merge_company(&mut state, c, p.at, p.seq);
                }
            }
            if state != before || row.version == 0 {
                out_keys.push(row.key);
                out_companies.push(state.company.as_ref().map(|c| c.v.clone()));
                out_states.push(serde_json::to_string(&state)?);
            }
        }
        if !out_keys.is_empty() {
            db::ingest::store_objects(tx, kind.as_str(), &out_keys, &out_states, &out_companies)
                .await
                .context("failed to store merged object state")?;
        }
    }
    let refused: HashSet<Uuid> = failures.iter().map(|f| f.event_id).collect();
    for f in &failures {
        tracing::warn!(event_id = %f.event_id, category = %f.category, "event dead-lettered: {}", f.message);
    }
    db::dlq::insert_event_failures(tx, &failures)
        .await
        .context("failed to write refused events to hubsync.dlq")?;
    Ok((
        Folded {
            accepted,
            refused: failures.len(),
        },
        refused,
    ))
}

/// Claims one chunk of the outbox and folds it, in one transaction. Returns the number of
/// outbox rows consumed (0: the outbox is empty).
pub async fn ingest_once(pool: &sqlx::PgPool, config: &Config) -> anyhow::Result<(usize, Folded)> {
    let mut tx = pool
        .begin()
        .await
        .context("failed to start ingest transaction")?;
    let limit = i64::try_from(config.worker.ingest_chunk).unwrap_or(i64::MAX);
    let events = db::ingest::claim_outbox(&mut tx, limit)
        .await
        .context("failed to claim outbox rows")?;
    if events.is_empty() {
        tx.commit().await?;
        return Ok((0, Folded::default()));
    }
    let claimed = events.len();
    let fresh_ids: HashSet<Uuid> = events
        .iter()
        .filter(|(_, fresh)| *fresh)
        .map(|(e, _)| e.event_id)
        .collect();
    let events: Vec<OutboxEvent> = events.into_iter().map(|(e, _)| e).collect();
    let fresh = crate::event::dedupe(events, &fresh_ids);
    let (folded, _) = fold(&mut tx, config, &fresh).await?;
    tx.commit().await.context("failed to commit ingest")?;
    Ok((claimed, folded))
}

/// Replays dead-lettered events that are due (an operator set `next_retry_at`): folds those
/// that are now valid and deletes their rows; the rest are parked again with the new reason.
pub async fn replay_due_events(pool: &sqlx::PgPool, config: &Config) -> anyhow::Result<Folded> {
    let mut tx = pool.begin().await?;
    let due = db::dlq::claim_due_events(&mut tx, 500)
        .await
        .context("failed to claim due dead-lettered events")?;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(Folded::default());
    }
    let events: Vec<OutboxEvent> = due.iter().map(|(_, e)| e.clone()).collect();
    let (folded, refused) = fold(&mut tx, config, &events).await?;
    let done: Vec<i64> = due
        .iter()
        .filter(|(_, e)| !refused.contains(&e.event_id))
        .map(|(id, _)| *id)
        .collect();
    db::dlq::delete_rows(&mut tx, &done).await?;
    tx.commit().await?;
    Ok(folded)
}
