//! Contact → company associations (`docs/hubspot-behaviour.md` §6): made once a contact and its
//! company both have HubSpot ids, made again when the contact's id changes, and the one hubsync
//! made to a previous company removed when the contact's company changes. Every reply is read
//! pair by pair, through `classify_removals` and `classify_associations`; a refused pair is
//! retried with the objects' backoff, then dead-lettered (category `association_refused`,
//! object_type `association`). A contact whose old association was not removed waits for its
//! new one. A pair sent without an answer counts as possibly made: should the contact move on
//! before it settles, it is removed like a made one.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::core::dlq::Category;
use crate::core::retry::retry_delay;
use crate::db;
use crate::db::objects::{AssociationFailure, PendingAssociation};
use crate::hubspot::requests::{archive_body, associate_body};
use crate::hubspot::{
    Outcome, RecordError, Reply, Transport, classify_associations, classify_removals,
};

/// Pairs per request.
pub(crate) const BATCH: usize = 100;

/// Removes stale associations, then makes the due ones; returns how many pairs were handled.
pub(crate) async fn associate_once(
    w: &Worker,
    cancel: &CancellationToken,
) -> anyhow::Result<usize> {
    if w.config.companies.is_none() {
        return Ok(0);
    }
    let lease = w.config.worker.lease;
    let pending = db::objects::pending_associations(&w.pool, BATCH as i64, lease).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    // The contacts whose outcome is recorded (made, or a retry scheduled); the others are
    // handed back, due again at once.
    let mut settled: BTreeSet<String> = BTreeSet::new();
    let result = associate_taken(w, cancel, &pending, &mut settled).await;
    let left: Vec<String> = pending
        .iter()
        .map(|p| p.contact_key.clone())
        .filter(|k| !settled.contains(k))
        .collect();
    let released = db::objects::release_associations(&w.pool, &left).await;
    let handled = result?;
    released?;
    Ok(handled)
}

/// Removes stale associations of the contacts taken, then makes their due ones; notes in
/// `settled` each contact whose outcome is recorded.
async fn associate_taken(
    w: &Worker,
    cancel: &CancellationToken,
    pending: &[PendingAssociation],
    settled: &mut BTreeSet<String>,
) -> anyhow::Result<usize> {
    let handled = pending.len();

    // The association hubsync made with the previous company goes first: writing the new
    // company does not replace it.
    let stale: Vec<(PendingAssociation, String)> = pending
        .iter()
        .filter_map(|p| Some((p.clone(), p.previous_company_id.clone()?)))
        .collect();
    let mut held_up: BTreeSet<String> = BTreeSet::new();
    if !stale.is_empty() {
        let pairs: Vec<(String, String)> = stale
            .iter()
            .map(|(p, previous)| (p.contact_id.clone(), previous.clone()))
            .collect();
        let path = w.client.paths.archive_contacts_to_companies();
        let Some(reply) = send(w, cancel, &path, &archive_body(&pairs)).await? else {
            return Ok(0);
        };
        let stale: Vec<PendingAssociation> = stale.into_iter().map(|(p, _)| p).collect();
        match w.daily_wait(classify_removals(&pairs, reply.as_ref(), w.portal_now())) {
            // A contact whose old association is still there waits for its new one: making it
            // now would leave the contact with two companies.
            Outcome::Completed { failed, .. } => {
                let failed: Vec<(PendingAssociation, RecordError)> = failed
                    .into_iter()
                    .map(|f| (stale[f.input].clone(), f.error))
                    .collect();
                held_up.extend(failed.iter().map(|(p, _)| p.contact_key.clone()));
                // Removed: the contact has no association left to count on, should it move
                // back to that company before its new one is made.
                let removed: Vec<PendingAssociation> = stale
                    .iter()
                    .filter(|p| !held_up.contains(&p.contact_key))
                    .cloned()
                    .collect();
                db::objects::record_removed(&w.pool, &removed).await?;
                retry_or_park(w, &failed, None, Duration::ZERO).await?;
                settled.extend(held_up.iter().cloned());
            }
            other => {
                if !settle_failure(w, &stale, other).await? {
                    return Ok(0);
                }
                held_up.extend(stale.iter().map(|p| p.contact_key.clone()));
                settled.extend(held_up.iter().cloned());
            }
        }
    }

    let due: Vec<PendingAssociation> = pending
        .iter()
        .filter(|p| !held_up.contains(&p.contact_key))
        .cloned()
        .collect();
    if due.is_empty() {
        return Ok(handled);
    }
    let pairs: Vec<(String, String)> = due
        .iter()
        .map(|p| (p.contact_id.clone(), p.company_id.clone()))
        .collect();
    let path = w.client.paths.associate_contacts_to_companies();
    let Some(reply) = send(w, cancel, &path, &associate_body(&pairs)).await? else {
        return Ok(0);
    };
    match w.daily_wait(classify_associations(
        &pairs,
        reply.as_ref(),
        w.portal_now(),
    )) {
        Outcome::Completed { written, failed } => {
            let done: Vec<PendingAssociation> =
                written.iter().map(|w| due[w.input].clone()).collect();
            if !done.is_empty() {
                db::objects::record_associated(&w.pool, &done).await?;
                settled.extend(done.iter().map(|p| p.contact_key.clone()));
            }
            let failed: Vec<(PendingAssociation, RecordError)> = failed
                .into_iter()
                .map(|f| (due[f.input].clone(), f.error))
                .collect();
            retry_or_park(w, &failed, None, Duration::ZERO).await?;
            settled.extend(failed.iter().map(|(p, _)| p.contact_key.clone()));
            w.limiter.clear().await?;
        }
        mut other => {
            // A retry (a lost reply, a 5xx) may follow a request HubSpot applied.
            if let Outcome::Retry {
                min_wait,
                may_land_late,
                ..
            } = &mut other
            {
                db::objects::note_maybe_associated(&w.pool, &due).await?;
                // One that may still be carried out: the next try waits until it must have
                // been, or a removal of this pair (the contact moved meanwhile) could come
                // first and the pair be made after it.
                if *may_land_late {
                    *min_wait = (*min_wait).max(w.settle());
                }
            }
            if settle_failure(w, &due, other).await? {
                settled.extend(due.iter().map(|p| p.contact_key.clone()));
            }
        }
    }
    Ok(handled)
}

/// Takes a permit and sends; `None` when no permit came (paused, shutting down).
async fn send(
    w: &Worker,
    cancel: &CancellationToken,
    path: &str,
    body: &Value,
) -> anyhow::Result<Option<Result<Reply, Transport>>> {
    if w.limiter
        .acquire(cancel, Duration::from_secs(15))
        .await?
        .is_err()
    {
        return Ok(None);
    }
    let endpoint = if path.contains("/archive") {
        "associations/batch/archive"
    } else {
        "associations/batch/associate"
    };
    let reply = w
        .telemetry
        .timed(endpoint, w.client.send(Method::POST, path, Some(body)))
        .await;
    crate::setup::observe(&w.limiter, &reply).await?;
    Ok(Some(reply))
}

/// A whole request that did not go through: a 429 pauses every worker and a 401/403 halts them
/// (no try is counted against the pairs); anything else is a try for each pair. Returns whether
/// the pairs were charged a try.
async fn settle_failure(
    w: &Worker,
    pairs: &[PendingAssociation],
    outcome: Outcome,
) -> anyhow::Result<bool> {
    match outcome {
        Outcome::RateLimited { wait, reason, .. } => {
            w.pause_everyone(wait, &reason).await?;
            Ok(false)
        }
        Outcome::Halt { reason, status, .. } => {
            w.halt(status, &reason).await?;
            Ok(false)
        }
        Outcome::Retry {
            after,
            min_wait,
            reason,
            ..
        } => {
            let failed = with_error(pairs, Category::AssociationFailed, &reason, Value::Null);
            retry_or_park(w, &failed, after, min_wait).await?;
            Ok(true)
        }
        Outcome::Rejected { error, .. } => {
            let failed = with_error(
                pairs,
                Category::AssociationRefused,
                &error.message,
                error.raw,
            );
            retry_or_park(w, &failed, None, Duration::ZERO).await?;
            Ok(true)
        }
        Outcome::Completed { .. } => Ok(false),
    }
}

fn with_error(
    pairs: &[PendingAssociation],
    category: Category,
    message: &str,
    raw: Value,
) -> Vec<(PendingAssociation, RecordError)> {
    pairs
        .iter()
        .map(|p| {
            (
                p.clone(),
                RecordError {
                    category,
                    code: None,
                    message: message.to_string(),
                    raw: raw.clone(),
                    permanent: false,
                    properties: Vec::new(),
                },
            )
        })
        .collect()
}

/// What a parked association row holds: the pair, and the previous company whose
/// association is to be removed first, when there is one.
fn payload(p: &PendingAssociation) -> Value {
    let mut payload = json!({
        "contact": p.contact_key, "company": p.company_key,
        "from": {"id": p.contact_id}, "to": {"id": p.company_id}
    });
    if let Some(previous) = &p.previous_company_id {
        payload["previous_company"] = json!({"id": previous});
    }
    payload
}

/// Schedules another try with the objects' backoff, or parks the pair once it is out of tries.
async fn retry_or_park(
    w: &Worker,
    failed: &[(PendingAssociation, RecordError)],
    after: Option<Duration>,
    min_wait: Duration,
) -> anyhow::Result<()> {
    let max_attempts = w.config.worker.max_attempts;
    let mut keys = Vec::new();
    let mut delays = Vec::new();
    let mut parked = Vec::new();
    for (p, e) in failed {
        if p.attempts + 1 >= max_attempts {
            // Requests that failed, or a success that left the pair out, are HubSpot's trouble:
            // the row is tried again by itself. A refusal waits for someone to fix the records.
            let failed = matches!(
                e.category,
                Category::AssociationFailed | Category::NotWritten
            );
            let message = if failed {
                format!(
                    "{} (gave up after {} tries in a row); hubsync tries again by itself at next_retry_at, or replay this row once HubSpot answers",
                    e.message,
                    p.attempts + 1
                )
            } else {
                format!(
                    "{} (gave up after {} tries). Fix the records in HubSpot, then replay this row to try again",
                    e.message,
                    p.attempts + 1
                )
            };
            tracing::warn!(contact = %p.contact_key, company = %p.company_key, "association dead-lettered: {message}");
            parked.push(AssociationFailure {
                contact_key: p.contact_key.clone(),
                company_key: p.company_key.clone(),
                payload: payload(p).to_string(),
                category: if failed {
                    Category::AssociationFailed
                } else {
                    Category::AssociationRefused
                },
                error: if e.raw.is_null() {
                    json!({"source": "hubsync", "message": message}).to_string()
                } else {
                    e.raw.to_string()
                },
                message,
            });
        } else {
            tracing::info!(contact = %p.contact_key, "{}; will try again", e.message);
            keys.push(p.contact_key.clone());
            delays.push(retry_delay(p.attempts, after, min_wait, (w.jitter)()).as_secs_f64());
        }
    }
    if !keys.is_empty() {
        db::objects::retry_associations(&w.pool, &keys, &delays).await?;
    }
    if !parked.is_empty() {
        db::objects::park_associations(&w.pool, &parked, max_attempts, w.settle()).await?;
    }
    Ok(())
}
