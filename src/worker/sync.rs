//! Sync: the second short transaction. Lease up to 100 dirty objects, commit, send their
//! absolute values in one batch upsert, then record the outcome fenced by the lease token.
//!
//! Every reply goes through `classify`; this file only decides what each outcome means for
//! the leased rows. A whole-batch 400 is narrowed down to its offenders (from the error's
//! context, else by splitting the batch) within a bounded number of extra requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Worker;
use crate::core::dlq::Category;
use crate::core::merge::ObjectState;
use crate::core::retry::retry_delay;
use crate::core::values::listed;
use crate::core::vocabulary::ObjectType;
use crate::db;
use crate::db::objects::{Leased, ObjectFailure, Written};
use crate::hubspot::requests::{self, UpsertInput};
use crate::hubspot::{
    FailedInput, IdProperty, Outcome, RecordError, SentInput, WrittenInput, classify,
};
use crate::ratelimit::NoPermit;

/// Tries at recording a sent batch's outcome while the database is away (about 15 s).
const RECORD_RETRIES: u32 = 5;

/// Extra requests one batch may spend isolating the inputs of a whole-batch 400.
const MAX_ISOLATION_REQUESTS: usize = 24;

/// What one sync step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects leased.
    pub leased: usize,
    /// Objects written and recorded clean.
    pub written: usize,
    /// Objects moved to the DLQ.
    pub dead_lettered: usize,
    /// Objects scheduled for another attempt.
    pub retrying: usize,
    /// Objects handed back untouched (rate limit, halt, shutdown, or a key HubSpot may take
    /// for the same record as another in the batch).
    pub released: usize,
    /// HTTP requests sent.
    pub requests: usize,
    /// Sending stopped: HubSpot refused the credentials, the endpoint or the company key
    /// property.
    pub halted: bool,
    /// The soonest retry this step scheduled: an idle loop looks again then.
    pub retry_in: Option<Duration>,
}

impl SyncReport {
    /// Adds another report's counts to this one.
    pub(crate) fn add(&mut self, other: &SyncReport) {
        self.leased += other.leased;
        self.written += other.written;
        self.dead_lettered += other.dead_lettered;
        self.retrying += other.retrying;
        self.released += other.released;
        self.requests += other.requests;
        self.halted |= other.halted;
        if let Some(due) = other.retry_in {
            self.due_in(due);
        }
    }

    /// Notes that an object falls due again after `due`; the soonest is kept.
    fn due_in(&mut self, due: Duration) {
        self.retry_in = Some(self.retry_in.map_or(due, |r| r.min(due)));
    }
}

struct Input {
    leased: Leased,
    trace_id: String,
    properties: Map<String, Value>,
    /// Holds that stay in force after this send: properties left out because HubSpot refused
    /// exactly their current value.
    held: BTreeMap<String, String>,
}

/// The batch's inputs, and the leased objects whose stored state cannot be read (never sent:
/// sending what could be read of them would mark them synced).
struct Built {
    key_property: String,
    inputs: Vec<Input>,
    unreadable: Vec<(Leased, String)>,
}

fn build_inputs(w: &Worker, kind: ObjectType, leased: Vec<Leased>) -> Built {
    let (key_property, objects) = match kind {
        ObjectType::Contact => ("email".to_string(), &w.config.contacts),
        ObjectType::Company => match &w.config.companies {
            Some(c) => (c.id_property.clone(), &c.objects),
            None => ("".to_string(), &w.config.contacts),
        },
    };
    let mut inputs = Vec::with_capacity(leased.len());
    let mut unreadable = Vec::new();
    for l in leased {
        let state = match ObjectState::read(&l.state, objects) {
            Ok(state) => state,
            Err(e) => {
                unreadable.push((l, e));
                continue;
            }
        };
        // Holds are hubsync's own notes; one that cannot be read holds nothing back (HubSpot
        // refuses the value again, and it is held again).
        let holds: BTreeMap<String, String> = l
            .held
            .as_deref()
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_default();
        let mut properties = Map::new();
        let mut held = BTreeMap::new();
        for (name, prop) in &state.props {
            // Only declared properties are sent: removing one from hubsync.toml stops it.
            if !objects.properties.contains_key(name) {
                continue;
            }
            // A refused value stays back until it changes or the DLQ row is replayed.
            if holds.get(name) == Some(&prop.v) {
                held.insert(name.clone(), prop.v.clone());
                continue;
            }
            properties.insert(name.clone(), Value::String(prop.v.clone()));
        }
        // The key is always sent too: HubSpot may not set it from `id` on create.
        properties.insert(key_property.clone(), Value::String(l.key.clone()));
        inputs.push(Input {
            leased: l,
            // Unique per input and never reused: a fresh UUID each time it is sent.
            trace_id: Uuid::new_v4().simple().to_string(),
            properties,
            held,
        });
    }
    Built {
        key_property,
        inputs,
        unreadable,
    }
}

fn body(key_property: &str, inputs: &[Input], group: &[usize]) -> Value {
    requests::upsert_body(
        key_property,
        group.iter().map(|&i| UpsertInput {
            key: &inputs[i].leased.key,
            trace_id: &inputs[i].trace_id,
            properties: &inputs[i].properties,
        }),
    )
}

/// The objects a step retries for one reason.
#[derive(Default)]
struct Retries {
    keys: Vec<String>,
    /// Seconds until each one's next attempt.
    delays: Vec<f64>,
    /// Whether each one's failed request may still land.
    may_land_late: Vec<bool>,
}

/// The fate of one leased object after the step.
enum Fate {
    Written(Option<String>),
    Failed(RecordError),
    /// Try again after `wait`; parked under `category` once out of attempts. When the
    /// request `may_land_late`, the object is written once more after it must have landed.
    Transient {
        wait: Duration,
        reason: String,
        category: Category,
        may_land_late: bool,
        /// HubSpot's error as received, kept for the DLQ row if it comes to that (or null).
        raw: Value,
    },
    Released,
}

/// Leases one batch of `kind` and syncs it. `cancel` stops waiting for permits (the batch is
/// handed back untouched); a request already sent is always finished and recorded.
pub(crate) async fn sync_once(
    w: &Worker,
    kind: ObjectType,
    cancel: &CancellationToken,
) -> anyhow::Result<SyncReport> {
    if kind == ObjectType::Company && w.config.companies.is_none() {
        return Ok(SyncReport::default());
    }
    let token = Uuid::new_v4();
    let lease = w.config.worker.lease;
    let leased_at = Instant::now();
    let limit = i64::try_from(w.config.worker.batch_size).unwrap_or(100);
    let leased = db::objects::lease(&w.pool, kind, limit, lease, token, w.generation())
        .await
        .context("failed to lease dirty objects")?;
    let mut report = SyncReport {
        leased: leased.len(),
        ..SyncReport::default()
    };
    if leased.is_empty() {
        return Ok(report);
    }
    let Built {
        key_property,
        inputs,
        unreadable,
    } = build_inputs(w, kind, leased);
    if !unreadable.is_empty() {
        park_unreadable(w, kind, token, unreadable, &mut report).await?;
    }
    if inputs.is_empty() {
        return Ok(report);
    }
    let sent: Vec<SentInput> = inputs
        .iter()
        .map(|i| SentInput {
            key: i.leased.key.clone(),
            trace_id: i.trace_id.clone(),
            hubspot_id: i.leased.hubspot_id.clone(),
            properties: i
                .properties
                .iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_string())))
                .collect(),
        })
        .collect();
    let id_property = match kind {
        ObjectType::Contact => IdProperty::Email,
        ObjectType::Company => IdProperty::Unique(&key_property),
    };
    let mut fates: BTreeMap<usize, Fate> = BTreeMap::new();
    // Two keys HubSpot may take for one record would get the whole request refused: the later
    // waits for the next batch, handed back untouched and still due first.
    let keys: Vec<&str> = inputs.iter().map(|i| i.leased.key.as_str()).collect();
    let mut first: Vec<usize> = Vec::with_capacity(inputs.len());
    for (i, wait) in id_property
        .wait_for_next_request(&keys)
        .into_iter()
        .enumerate()
    {
        if wait {
            tracing::debug!(
                object = kind.as_str(),
                key = %inputs[i].leased.key,
                "key equal but for case to another in this batch; it goes in the next one"
            );
            fates.insert(i, Fate::Released);
        } else {
            first.push(i);
        }
    }
    let mut stack: Vec<Vec<usize>> = vec![first];
    let mut extra = 0usize;
    let timeout = w.config.hubspot.request_timeout;

    while let Some(group) = stack.pop() {
        // Never send once the lease could run out before the reply: another worker could then
        // lease the same objects and an older value could land after a newer one.
        let budget = lease.saturating_sub(leased_at.elapsed() + timeout + Duration::from_secs(5));
        if budget.is_zero() {
            tracing::warn!("the lease ran short before this batch could be sent; handing it back");
            for i in group {
                fates.insert(i, Fate::Released);
            }
            continue;
        }
        // Everything is ready before the permit is taken, so the request leaves right after it
        // and arrives at HubSpot as close as possible to the time the limiter recorded.
        let group_sent: Vec<SentInput> = group.iter().map(|&i| sent[i].clone()).collect();
        let request = body(&key_property, &inputs, &group);
        match w.limiter.acquire(cancel, budget).await? {
            Ok(()) => {}
            Err(why) => {
                if let NoPermit::Paused(wait) = why {
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "sending paused; handing the batch back"
                    );
                }
                for i in group.into_iter().chain(stack.drain(..).flatten()) {
                    fates.insert(i, Fate::Released);
                }
                break;
            }
        }
        let reply = w
            .telemetry
            .batch_upsert(kind, w.client.batch_upsert(kind, &request))
            .await;
        report.requests += 1;
        crate::setup::observe(&w.limiter, &reply).await?;
        let outcome = w.daily_wait(classify(
            &group_sent,
            id_property,
            reply.as_ref(),
            w.portal_now(),
        ));
        match outcome {
            Outcome::Completed { written, failed } => {
                for WrittenInput { input: j, id } in written {
                    fates.insert(group[j], Fate::Written(id));
                }
                for FailedInput { input: j, error: e } in failed {
                    let fate = if e.category == Category::NotWritten {
                        let attempts = inputs[group[j]].leased.attempts;
                        Fate::Transient {
                            wait: retry_delay(attempts, None, Duration::ZERO, (w.jitter)()),
                            reason: e.message.clone(),
                            category: Category::NotWritten,
                            may_land_late: false,
                            raw: e.raw,
                        }
                    } else {
                        Fate::Failed(e)
                    };
                    fates.insert(group[j], fate);
                }
                w.limiter.clear().await?;
            }
            Outcome::RateLimited { wait, reason, .. } => {
                w.pause_everyone(wait, &reason).await?;
                // Not an attempt: the same inputs go again once the pause is over.
                stack.push(group);
            }
            Outcome::Halt { reason, status, .. } => {
                w.halt(status, &reason).await?;
                report.halted = true;
                for i in group.into_iter().chain(stack.drain(..).flatten()) {
                    fates.insert(i, Fate::Released);
                }
            }
            Outcome::Retry {
                after,
                min_wait,
                reason,
                may_land_late,
            } => {
                tracing::warn!("{reason}; will retry these {} objects", group.len());
                for i in group {
                    let attempts = inputs[i].leased.attempts;
                    let delay = retry_delay(attempts, after, min_wait, (w.jitter)());
                    fates.insert(
                        i,
                        Fate::Transient {
                            wait: delay,
                            reason: reason.clone(),
                            category: Category::HubspotUnavailable,
                            may_land_late,
                            raw: Value::Null,
                        },
                    );
                }
            }
            Outcome::Rejected { offenders, error } => {
                if !offenders.is_empty() {
                    for &j in &offenders {
                        fates.insert(group[j], Fate::Failed(error.clone()));
                    }
                    let rest: Vec<usize> = group
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !offenders.contains(j))
                        .map(|(_, &i)| i)
                        .collect();
                    if !rest.is_empty() {
                        extra += 1;
                        stack.push(rest);
                    }
                } else if group.len() == 1 {
                    fates.insert(group[0], Fate::Failed(error));
                } else if extra + 2 <= MAX_ISOLATION_REQUESTS {
                    extra += 2;
                    let (a, b) = group.split_at(group.len() / 2);
                    stack.push(b.to_vec());
                    stack.push(a.to_vec());
                } else {
                    for i in group {
                        let attempts = inputs[i].leased.attempts;
                        fates.insert(
                            i,
                            Fate::Transient {
                                wait: retry_delay(attempts, None, Duration::ZERO, (w.jitter)()),
                                reason: format!(
                                    "isolating a refused batch ran out of requests: {}",
                                    error.message
                                ),
                                category: Category::HubspotRejected,
                                may_land_late: false,
                                raw: error.raw.clone(),
                            },
                        );
                    }
                }
            }
        }
    }
    // The request was sent: its outcome is worth a few tries if the database blinks (every
    // statement of `record` is fenced by the token, so running it again changes nothing
    // twice). Given up, the objects are sent again once their lease runs out.
    let mut failures = 0;
    loop {
        match record(w, kind, token, &key_property, &inputs, &fates, &mut report).await {
            Ok(()) => break,
            Err(e) if failures < RECORD_RETRIES => {
                failures += 1;
                tracing::warn!(
                    "recording a batch's outcome failed: {}; trying again",
                    crate::telemetry::chain(&e)
                );
                tokio::time::sleep(crate::core::retry::outage_delay(failures)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

async fn record(
    w: &Worker,
    kind: ObjectType,
    token: Uuid,
    key_property: &str,
    inputs: &[Input],
    fates: &BTreeMap<usize, Fate>,
    report: &mut SyncReport,
) -> anyhow::Result<()> {
    let mut written: Vec<Written> = Vec::new();
    let mut failures: Vec<ObjectFailure> = Vec::new();
    let mut released = Vec::new();
    let max_attempts = w.config.worker.max_attempts;
    let mut transient: BTreeMap<String, Retries> = BTreeMap::new();
    for (&i, fate) in fates {
        let input = &inputs[i];
        let key = input.leased.key.clone();
        match fate {
            Fate::Written(id) => written.push(Written {
                key,
                version: input.leased.version,
                hubspot_id: id.clone(),
                held: if input.held.is_empty() {
                    None
                } else {
                    Some(json!(input.held).to_string())
                },
            }),
            Fate::Failed(e) => failures.push(match refused_properties(input, e, key_property) {
                Some(hold) => held_back(input, e, hold),
                None => failure(input, e.category, &e.message, &e.raw, e.permanent),
            }),
            Fate::Transient {
                reason,
                category,
                raw,
                may_land_late,
                ..
            } if input.leased.attempts + 1 >= max_attempts => {
                // Out of attempts in a row: to the DLQ with the last reason and HubSpot's words.
                // Not the record's fault (HubSpot down or busy for minutes), so the row is tried
                // again by itself, further and further apart, before it is parked.
                let message = format!(
                    "{reason} (gave up after {} attempts in a row); hubsync sends it again by itself at next_retry_at, or replay it with `hubsync dlq retry` once HubSpot answers",
                    input.leased.attempts + 1
                );
                let mut failed = failure(input, *category, &message, raw, false);
                // Its last request may still land: a write after it is repeated once that
                // must have happened, as for any retry.
                failed.settles_in = may_land_late.then(|| w.settle());
                failures.push(failed);
            }
            Fate::Transient {
                wait: delay,
                reason,
                may_land_late,
                ..
            } => {
                let entry: &mut Retries = transient.entry(reason.clone()).or_default();
                entry.keys.push(key);
                entry.delays.push(delay.as_secs_f64());
                entry.may_land_late.push(*may_land_late);
            }
            Fate::Released => released.push(key),
        }
    }
    if !written.is_empty() {
        let done = db::objects::record_written(&w.pool, kind, token, &written)
            .await
            .context("failed to record written objects")?;
        report.written += done.keys.len();
        if let Some(soonest) = done.rewrite_in {
            report.due_in(soonest);
        }
    }
    if !released.is_empty() {
        db::objects::release(&w.pool, kind, token, &released).await?;
        report.released += released.len();
    }
    // A request that may still land is overtaken by one more write after it must have.
    let settle = w.settle();
    for (
        reason,
        Retries {
            keys,
            delays,
            may_land_late,
        },
    ) in transient
    {
        let retries = db::objects::Retries {
            keys: &keys,
            delays: &delays,
            may_land_late: &may_land_late,
            settle,
        };
        let after = db::objects::record_transient(&w.pool, kind, token, &retries, &reason)
            .await
            .context("failed to schedule retries")?;
        report.retrying += after.len();
        if let Some(soonest) = delays.iter().copied().reduce(f64::min) {
            report.due_in(Duration::from_secs_f64(soonest.max(0.0)));
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            tracing::warn!(object = kind.as_str(), key = %f.key, category = %f.category, "dead-lettered: {}", f.message);
        }
        db::objects::dead_letter(&w.pool, kind, token, &failures, max_attempts)
            .await
            .context("failed to write failed objects to hubsync.dlq")?;
        report.dead_lettered += failures.len();
    }
    Ok(())
}

/// The properties of `input` HubSpot refused for good, with the values sent, when the error
/// names them all and none is the key: those can be held back and the rest sent again.
fn refused_properties(
    input: &Input,
    e: &RecordError,
    key_property: &str,
) -> Option<BTreeMap<String, String>> {
    if !e.permanent || e.properties.is_empty() {
        return None;
    }
    e.properties
        .iter()
        .map(|name| match input.properties.get(name) {
            Some(Value::String(v)) if name != key_property => Some((name.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

fn held_back(input: &Input, e: &RecordError, hold: BTreeMap<String, String>) -> ObjectFailure {
    let names: Vec<String> = hold.keys().map(|n| format!("\"{n}\"")).collect();
    let message = format!(
        "{}; held back: {} (the object's other properties keep syncing). Fix the value or the property, then replay this row to send it again",
        e.message,
        listed(names.iter().cloned(), names.len(), ", ", "")
    );
    ObjectFailure {
        key: input.leased.key.clone(),
        version: input.leased.version,
        payload: json!({"id": input.leased.key, "properties": hold, "held": true}).to_string(),
        category: e.category,
        message,
        error: e.raw.to_string(),
        permanent: true,
        hold: Some(json!(hold).to_string()),
        settles_in: None,
    }
}

/// Parks leased objects whose stored state cannot be read, leaving the state as it is.
async fn park_unreadable(
    w: &Worker,
    kind: ObjectType,
    token: Uuid,
    unreadable: Vec<(Leased, String)>,
    report: &mut SyncReport,
) -> anyhow::Result<()> {
    let failures: Vec<ObjectFailure> = unreadable
        .into_iter()
        .map(|(l, reason)| {
            let message = format!(
                "the stored state of {} \"{}\" in hubsync.objects cannot be read ({reason}); nothing was sent. Fix the state (or reset it: UPDATE hubsync.objects SET state = '{{}}'), then replay this row",
                kind.as_str(),
                l.key
            );
            tracing::error!(object = kind.as_str(), key = %l.key, "object parked: {message}");
            ObjectFailure {
                payload: json!({"id": l.key, "state": l.state}).to_string(),
                key: l.key,
                version: l.version,
                category: Category::InvalidState,
                error: json!({"source": "hubsync", "message": message}).to_string(),
                message,
                permanent: true,
                hold: None,
                settles_in: None,
            }
        })
        .collect();
    db::objects::dead_letter(
        &w.pool,
        kind,
        token,
        &failures,
        w.config.worker.max_attempts,
    )
    .await
    .context("failed to park objects whose state cannot be read")?;
    report.dead_lettered += failures.len();
    Ok(())
}

fn failure(
    input: &Input,
    category: Category,
    message: &str,
    raw: &Value,
    permanent: bool,
) -> ObjectFailure {
    ObjectFailure {
        key: input.leased.key.clone(),
        version: input.leased.version,
        payload: json!({"id": input.leased.key, "properties": input.properties}).to_string(),
        category,
        message: message.to_string(),
        error: if raw.is_null() {
            json!({"source": "hubsync", "message": message}).to_string()
        } else {
            raw.to_string()
        },
        permanent,
        hold: None,
        settles_in: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_on_many_properties_names_the_first_twenty() {
        let input = Input {
            leased: Leased {
                key: "a@acme.com".into(),
                state: "{}".into(),
                version: 1,
                company_key: None,
                hubspot_id: None,
                attempts: 0,
                held: None,
            },
            trace_id: "t0".into(),
            properties: Map::new(),
            held: BTreeMap::new(),
        };
        let hold: BTreeMap<String, String> =
            (0..100).map(|n| (format!("p{n:03}"), "x".into())).collect();
        let e = RecordError {
            category: Category::HubspotValidation,
            code: Some("INVALID_OPTION".into()),
            message: "HubSpot refused the record".into(),
            raw: Value::Null,
            permanent: true,
            properties: hold.keys().cloned().collect(),
        };
        let f = held_back(&input, &e, hold);
        assert!(
            f.message.contains(r#"held back: "p000", "#)
                && f.message.contains(r#""p019", and 80 more (the object's"#),
            "{}",
            f.message
        );
        assert!(!f.message.contains("p020"), "{}", f.message);
        assert!(
            f.hold.unwrap().contains("p099"),
            "the hold itself keeps every property"
        );
    }
}
