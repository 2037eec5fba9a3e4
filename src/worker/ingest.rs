//! Ingest: the first short transaction. Claim outbox rows, drop known event ids, validate,
//! fold accepted events into `hubsync.objects`, park refused ones in the DLQ, record every id
//! in the ledger, commit. Also replays dead-lettered events an operator marked due.
//!
//! Whatever one row holds, it ends folded or in `hubsync.dlq`, and it never holds back the rows
//! around it: validation refuses what is out of bounds before anything is written, and if
//! Postgres still refuses a statement for a reason tied to the data, the chunk is split under
//! savepoints until the offending rows are found and dead-lettered. Events for an object
//! another session holds locked go back to the outbox (same sequence) instead of waiting.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;

use anyhow::Context;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::Config;
use crate::core::dlq::Category;
use crate::core::event::{OutboxEvent, Prepared, payload, prepare};
use crate::core::fold::fold as fold_events;
use crate::core::merge::ObjectState;
use crate::core::vocabulary::ObjectType;
use crate::db;
use crate::db::dlq::EventFailure;

/// What one fold did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Folded {
    /// Events applied to objects.
    pub accepted: usize,
    /// Events dead-lettered.
    pub refused: usize,
    /// Ids of the events dead-lettered.
    pub refused_ids: HashSet<Uuid>,
    /// Events not folded because another session holds their object's row: they go back to
    /// where they came from and are tried again.
    pub deferred: Vec<OutboxEvent>,
}

impl Folded {
    fn add(&mut self, other: Folded) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.refused_ids.extend(other.refused_ids);
        self.deferred.extend(other.deferred);
    }
}

fn event_failure(
    event: &OutboxEvent,
    category: Category,
    message: String,
    detail: serde_json::Value,
) -> EventFailure {
    EventFailure {
        event_id: event.event_id,
        object_type: event.object_type.clone(),
        object_key: event.object_key.clone(),
        payload: payload(event),
        category,
        error: json!({"source": "hubsync", "category": category.as_str(), "detail": detail})
            .to_string(),
        message,
    }
}

/// One object's state to write.
struct StateWrite {
    /// The merged state as JSON text.
    state: String,
    /// The company it belongs to, for the row's `company_key`.
    company_key: Option<String>,
}

/// What folding one object's events gave.
struct Folding {
    /// The state to write, when it changed (always, for a new object).
    write: Option<StateWrite>,
    /// Events refused.
    failures: Vec<EventFailure>,
    /// The object, when its stored state cannot be read.
    unreadable: Option<db::dlq::UnreadableObject>,
}

/// Folds `prepared` (events of `events`, by index) into the object `key` whose stored state is
/// `stored` (`None`: a new object, from the empty state). A state that does not parse is never
/// overwritten: the object is parked with it, and its events wait in the DLQ for the fix.
fn fold_row(
    kind: ObjectType,
    key: &str,
    stored: Option<&str>,
    prepared: &[(usize, Prepared)],
    events: &[OutboxEvent],
    objects: &crate::config::ObjectConfig,
) -> anyhow::Result<Folding> {
    let mut failures = Vec::new();
    let new = stored.is_none();
    let stored = stored.unwrap_or("{}");
    let mut state: ObjectState = match ObjectState::read(stored, objects) {
        Ok(s) => s,
        Err(e) => {
            let problem = format!(
                "the stored state of {} \"{key}\" in hubsync.objects cannot be read ({e})",
                kind.as_str(),
            );
            for (i, _) in prepared {
                failures.push(event_failure(
                    &events[*i],
                    Category::InvalidState,
                    format!(
                        "not folded: {problem}; fix or reset that state (see the object's row in hubsync.dlq), then replay this event"
                    ),
                    json!({"object_key": key, "reason": e}),
                ));
            }
            return Ok(Folding {
                write: None,
                failures,
                unreadable: Some(db::dlq::UnreadableObject {
                    key: key.to_string(),
                    state: stored.to_string(),
                    message: format!(
                        "{problem}; its events are parked beside it. Fix the state (or reset it: UPDATE hubsync.objects SET state = '{{}}'), then replay this row and its events"
                    ),
                }),
            });
        }
    };
    let before = state.clone();
    let mine: Vec<&Prepared> = prepared.iter().map(|(_, p)| p).collect();
    for u in fold_events(&mut state, &objects.properties, &mine) {
        let r = u.refusal;
        failures.push(event_failure(
            &events[prepared[u.event].0],
            r.category,
            r.message,
            r.detail,
        ));
    }
    let write = if state != before || new {
        Some(StateWrite {
            company_key: state.company.as_ref().map(|c| c.v.clone()),
            state: serde_json::to_string(&state)?,
        })
    } else {
        None
    };
    Ok(Folding {
        write,
        failures,
        unreadable: None,
    })
}

/// Validates and folds `events` inside `tx`. Locks object rows without waiting (events for a
/// row someone else holds come back in `deferred`), then DLQ rows: the order `db` states.
pub(crate) async fn fold(
    tx: &mut PgConnection,
    config: &Config,
    events: &[OutboxEvent],
) -> anyhow::Result<Folded> {
    let mut failures: Vec<EventFailure> = Vec::new();
    let mut deferred: Vec<OutboxEvent> = Vec::new();
    // (kind, key) → the events for it, by index into `events`.
    let mut by_object: BTreeMap<(ObjectType, String), Vec<(usize, Prepared)>> = BTreeMap::new();
    let mut referenced_companies: BTreeSet<String> = BTreeSet::new();
    for (i, event) in events.iter().enumerate() {
        match prepare(event, config.declared()) {
            Ok(p) => {
                if let Some(c) = &p.company_key {
                    referenced_companies.insert(c.clone());
                }
                by_object
                    .entry((p.kind, p.key.clone()))
                    .or_default()
                    .push((i, p));
            }
            Err(r) => failures.push(event_failure(event, r.category, r.message, r.detail)),
        }
    }
    // A company a contact points at is created (by its key alone) if no event names it.
    for c in referenced_companies {
        by_object.entry((ObjectType::Company, c)).or_default();
    }
    for kind in [ObjectType::Contact, ObjectType::Company] {
        // BTreeMap order: keys sorted, so rows are locked in key order.
        let keys: Vec<String> = by_object
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, key)| key.clone())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let Some(objects) = config.declared().of(kind) else {
            continue;
        };
        let mut out_keys = Vec::new();
        let mut out_states = Vec::new();
        let mut out_companies = Vec::new();
        let mut unreadable = Vec::new();
        let mut take = |row: db::ingest::LockedObject,
                        failures: &mut Vec<EventFailure>|
         -> anyhow::Result<()> {
            let Some(prepared) = by_object.get(&(kind, row.key.clone())) else {
                return Ok(());
            };
            let folding = fold_row(kind, &row.key, Some(&row.state), prepared, events, objects)?;
            failures.extend(folding.failures);
            unreadable.extend(folding.unreadable);
            if let Some(write) = folding.write {
                out_keys.push(row.key);
                out_states.push(write.state);
                out_companies.push(write.company_key);
            }
            Ok(())
        };
        // Existing rows first, in key order, never waiting for one another session holds.
        let existing = db::ingest::lock_existing(tx, kind, &keys)
            .await
            .context("failed to lock object rows")?;
        let found: HashSet<String> = existing.iter().map(|row| row.key.clone()).collect();
        for row in existing {
            take(row, &mut failures)?;
        }
        // Objects not seen before are folded from the empty state and inserted with it, one
        // write each. A key someone else inserted meanwhile is taken as it now is, or, when its
        // row is held, waits with its events for a later ingest.
        let missing: Vec<&String> = keys.iter().filter(|k| !found.contains(*k)).collect();
        if !missing.is_empty() {
            let mut new_keys = Vec::with_capacity(missing.len());
            let mut new_states = Vec::with_capacity(missing.len());
            let mut new_companies = Vec::with_capacity(missing.len());
            let mut new_failures: BTreeMap<String, Vec<EventFailure>> = BTreeMap::new();
            for key in &missing {
                let prepared = &by_object[&(kind, (*key).clone())];
                let folding = fold_row(kind, key, None, prepared, events, objects)?;
                let write = folding
                    .write
                    .context("a new object's state is always written")?;
                new_keys.push((*key).clone());
                new_states.push(write.state);
                new_companies.push(write.company_key);
                new_failures.insert((*key).clone(), folding.failures);
            }
            let mut inserted: HashSet<String> = HashSet::new();
            for r in byte_ranges(new_states.iter().map(String::len), WRITE_BYTES) {
                let (k, st, c) = (
                    &new_keys[r.clone()],
                    &new_states[r.clone()],
                    &new_companies[r],
                );
                inserted.extend(
                    db::ingest::insert_objects(tx, kind, k, st, c)
                        .await
                        .context("failed to insert new object rows")?,
                );
            }
            let mut taken = Vec::new();
            for (key, its_failures) in new_failures {
                if inserted.contains(&key) {
                    failures.extend(its_failures);
                } else {
                    taken.push(key);
                }
            }
            if !taken.is_empty() {
                let now_free = db::ingest::lock_existing(tx, kind, &taken)
                    .await
                    .context("failed to lock object rows")?;
                let free: HashSet<String> = now_free.iter().map(|row| row.key.clone()).collect();
                for key in taken.iter().filter(|k| !free.contains(*k)) {
                    if let Some(prepared) = by_object.get(&(kind, key.clone())) {
                        deferred.extend(prepared.iter().map(|(i, _)| events[*i].clone()));
                    }
                }
                for row in now_free {
                    take(row, &mut failures)?;
                }
            }
        }
        for r in byte_ranges(out_states.iter().map(String::len), WRITE_BYTES) {
            let (k, st, c) = (
                &out_keys[r.clone()],
                &out_states[r.clone()],
                &out_companies[r],
            );
            db::ingest::store_objects(tx, kind, k, st, c, config.hubspot.settle())
                .await
                .context("failed to store merged object state")?;
        }
        if !unreadable.is_empty() {
            for u in &unreadable {
                tracing::error!(object = kind.as_str(), key = %u.key, "object parked: {}", u.message);
            }
            db::dlq::park_unreadable_objects(tx, kind, &unreadable)
                .await
                .context("failed to park objects whose state cannot be read")?;
        }
    }
    let refused_ids: HashSet<Uuid> = failures.iter().map(|f| f.event_id).collect();
    log_refusals(&failures);
    let sizes = failures
        .iter()
        .map(|f| f.object_key.len() + f.payload.len() + f.message.len() + f.error.len());
    for r in byte_ranges(sizes, WRITE_BYTES) {
        db::dlq::insert_event_failures(tx, &failures[r])
            .await
            .context("failed to write refused events to hubsync.dlq")?;
    }
    crate::telemetry::note_refused(failures.iter().map(|f| f.category));
    Ok(Folded {
        accepted: events.len() - failures.len() - deferred.len(),
        refused: failures.len(),
        refused_ids,
        deferred,
    })
}

/// Says what was dead-lettered: one warning per category, with its count and its first event's
/// reason, so that a producer sending thousands of bad events does not write thousands of log
/// lines (the DLQ holds each one); each event at debug level.
fn log_refusals(failures: &[EventFailure]) {
    let mut first: Vec<(&EventFailure, usize)> = Vec::new();
    for f in failures {
        tracing::debug!(event_id = %f.event_id, category = %f.category, "event dead-lettered: {}", f.message);
        match first.iter_mut().find(|(g, _)| g.category == f.category) {
            Some((_, n)) => *n += 1,
            None => first.push((f, 1)),
        }
    }
    for (f, n) in first {
        if n == 1 {
            tracing::warn!(event_id = %f.event_id, category = %f.category, "event dead-lettered: {}", f.message);
        } else {
            tracing::warn!(
                events = n,
                category = %f.category,
                "{n} events dead-lettered as {}, the first ({}) because: {}; `hubsync dlq list --category {}` lists them",
                f.category,
                f.event_id,
                f.message,
                f.category
            );
        }
    }
}

/// The SQLSTATE classes that blame the data of a statement rather than the database or the
/// connection: data exceptions (22), integrity constraints (23), program limits such as an
/// index row too large (54).
const ROW_TIED_CLASSES: [&str; 3] = ["22", "23", "54"];

/// Postgres's message when `e` is a refusal tied to the data being written.
fn row_tied(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db))
                if db
                    .code()
                    .is_some_and(|c| ROW_TIED_CLASSES.iter().any(|class| c.starts_with(class))) =>
            {
                Some(format!(
                    "{} (SQLSTATE {})",
                    db.message(),
                    db.code().unwrap_or_default()
                ))
            }
            _ => None,
        })
}

/// Folds `events`, each try under a savepoint. When Postgres refuses a statement for a reason
/// tied to the data, the events are split in halves until the ones at fault are alone; those
/// are dead-lettered with Postgres's reason and the rest are folded. Any other failure (the
/// database is gone, a timeout) fails the whole call, and the caller's transaction with it.
pub(crate) async fn fold_isolating(
    tx: &mut PgConnection,
    config: &Config,
    events: &[OutboxEvent],
) -> anyhow::Result<Folded> {
    let mut total = Folded::default();
    let mut stack: Vec<&[OutboxEvent]> = vec![events];
    while let Some(part) = stack.pop() {
        if part.is_empty() {
            continue;
        }
        db::ingest::savepoint(tx).await?;
        let err = match fold(tx, config, part).await {
            Ok(folded) => {
                db::ingest::release_savepoint(tx).await?;
                total.add(folded);
                continue;
            }
            Err(e) => e,
        };
        let Some(reason) = row_tied(&err) else {
            return Err(err);
        };
        db::ingest::rollback_to_savepoint(tx).await?;
        if let [event] = part {
            tracing::warn!(event_id = %event.event_id, "Postgres refused to store an event: {reason}");
            let failure = event_failure(
                event,
                Category::InvalidEvent,
                format!(
                    "Postgres refused to store this event: {reason}; fix the producer's data, then replay or discard this row"
                ),
                json!({"database_error": reason}),
            );
            db::dlq::insert_event_failures(tx, std::slice::from_ref(&failure))
                .await
                .context("failed to dead-letter an event Postgres refused")?;
            crate::telemetry::note_refused([failure.category]);
            total.refused += 1;
            total.refused_ids.insert(event.event_id);
        } else {
            let (a, b) = part.split_at(part.len() / 2);
            stack.push(b);
            stack.push(a);
        }
    }
    Ok(total)
}

/// The most data one statement writing a chunk's objects or dead-letter rows carries: far
/// below Postgres's 1 GB limit on one message, whatever the objects' states hold.
const WRITE_BYTES: usize = 64 << 20;

/// Consecutive ranges of `sizes` holding at most `max` bytes each (an item larger than `max`
/// alone); none when there are no items. Writing range by range keeps key order.
fn byte_ranges(sizes: impl IntoIterator<Item = usize>, max: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0usize, 0);
    for size in sizes {
        if end > start && bytes.saturating_add(size) > max {
            ranges.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes = bytes.saturating_add(size);
        end += 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

/// What one ingest (one or more chunks, each its own transaction) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Outbox rows claimed (0: the outbox is empty).
    pub claimed: usize,
    /// Events folded.
    pub accepted: usize,
    /// Events dead-lettered.
    pub refused: usize,
    /// Events put back because their object was locked by another session.
    pub deferred: usize,
    /// Nothing was claimed: a worker with newer declarations is running (rolling deploy).
    pub newer: Option<db::generations::Newer>,
    /// A full chunk's worth of rows was waiting: more may wait behind it.
    pub backlog: bool,
}

impl Ingested {
    pub(crate) fn add(&mut self, other: Ingested) {
        self.claimed += other.claimed;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.deferred += other.deferred;
        self.newer = other.newer.or(self.newer.take());
        self.backlog = other.backlog;
    }
}

/// One chunk claimed in a transaction that is still open: the claimed rows stay locked (and
/// deleted, and their ids in the ledger) until [`fold_claimed`] commits, or the transaction is
/// dropped and rolls back, which puts everything back.
pub(crate) enum Claimed {
    /// Rows claimed (none: the outbox was empty).
    Chunk {
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        /// Each event, with `true` when its id was new to the ledger.
        events: Vec<(OutboxEvent, bool)>,
        /// A full chunk's worth of rows was waiting (the chunk may have been cut short by its
        /// size): more may wait behind it.
        more: bool,
    },
    /// Nothing claimed: a worker with newer declarations is running (rolling deploy).
    Newer(db::generations::Newer),
}

impl Claimed {
    /// Whether more rows may wait behind this chunk.
    pub(crate) fn backlog(&self) -> bool {
        matches!(self, Claimed::Chunk { more: true, .. })
    }
}

/// Opens an ingest transaction and claims up to `limit` outbox rows in it, unless a worker of a
/// generation newer than `generation` is running. Owns what it uses, so it can run beside the
/// fold of the chunk before.
pub(crate) async fn claim(
    pool: sqlx::PgPool,
    limit: usize,
    generation: i64,
) -> anyhow::Result<Claimed> {
    let mut tx = pool
        .begin()
        .await
        .context("failed to start ingest transaction")?;
    if let Some(newer) = db::generations::gate_fold(&mut tx, generation)
        .await
        .context("failed to check for workers with a newer config")?
    {
        tx.commit().await?;
        return Ok(Claimed::Newer(newer));
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let claimed = db::ingest::claim_outbox(&mut tx, limit)
        .await
        .context("failed to claim outbox rows")?;
    Ok(Claimed::Chunk {
        tx,
        events: claimed.events,
        more: claimed.more,
    })
}

/// Folds a claimed chunk and commits its transaction.
pub(crate) async fn fold_claimed(config: &Config, claimed: Claimed) -> anyhow::Result<Ingested> {
    let (mut tx, events, backlog) = match claimed {
        Claimed::Newer(newer) => {
            return Ok(Ingested {
                newer: Some(newer),
                ..Ingested::default()
            });
        }
        Claimed::Chunk { tx, events, more } => (tx, events, more),
    };
    if events.is_empty() {
        tx.commit().await?;
        return Ok(Ingested::default());
    }
    let claimed = events.len();
    let fresh_ids: HashSet<Uuid> = events
        .iter()
        .filter(|(_, fresh)| *fresh)
        .map(|(e, _)| e.event_id)
        .collect();
    let events: Vec<OutboxEvent> = events.into_iter().map(|(e, _)| e).collect();
    let fresh = crate::core::event::dedupe(events, &fresh_ids);
    let folded = fold_isolating(&mut tx, config, &fresh).await?;
    if !folded.deferred.is_empty() {
        db::ingest::put_back(&mut tx, &folded.deferred)
            .await
            .context("failed to put events for locked objects back into the outbox")?;
    }
    tx.commit().await.context("failed to commit ingest")?;
    Ok(Ingested {
        claimed,
        accepted: folded.accepted,
        refused: folded.refused,
        deferred: folded.deferred.len(),
        newer: None,
        backlog,
    })
}

/// Replays dead-lettered events that are due (an operator set `next_retry_at`): folds those
/// that are now valid and deletes their rows; the rest are parked again with the new reason,
/// and those whose object is locked stay due for the next round. A row that cannot even be read
/// as an event (a field edited by hand into something else) is parked again saying which field
/// to fix, and holds back none of the others.
pub(crate) async fn replay_due_events(
    pool: &sqlx::PgPool,
    config: &Config,
    generation: i64,
) -> anyhow::Result<Folded> {
    let mut tx = pool.begin().await?;
    if db::generations::gate_fold(&mut tx, generation)
        .await?
        .is_some()
    {
        tx.commit().await?;
        return Ok(Folded::default());
    }
    let due = db::dlq::claim_due_events(&mut tx, 500)
        .await
        .context("failed to claim due dead-lettered events")?;
    let parked = db::dlq::park_unreadable_rows(&mut tx, &due.unreadable)
        .await
        .context("failed to park dead-lettered events that cannot be read")?;
    crate::telemetry::note_refused(due.unreadable.iter().filter_map(|r| r.category));
    let parked = usize::try_from(parked).unwrap_or(usize::MAX);
    let due = due.events;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(Folded {
            refused: parked,
            ..Folded::default()
        });
    }
    let events: Vec<OutboxEvent> = due.iter().map(|(_, e)| e.clone()).collect();
    let mut folded = fold_isolating(&mut tx, config, &events).await?;
    folded.refused += parked;
    let waiting: HashSet<Uuid> = folded.deferred.iter().map(|e| e.event_id).collect();
    let done: Vec<i64> = due
        .iter()
        .filter(|(_, e)| {
            !folded.refused_ids.contains(&e.event_id) && !waiting.contains(&e.event_id)
        })
        .map(|(id, _)| *id)
        .collect();
    db::dlq::delete_rows(&mut tx, &done).await?;
    tx.commit().await?;
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::byte_ranges;

    #[test]
    fn writes_are_split_by_bytes_in_order() {
        assert!(byte_ranges(Vec::new(), 10).is_empty());
        assert_eq!(byte_ranges([3, 3, 3, 3], 6), vec![0..2, 2..4]);
        assert_eq!(byte_ranges([3, 3, 3], 10), vec![0..3]);
        // An item larger than the limit goes alone; nothing is dropped.
        assert_eq!(byte_ranges([1, 20, 1, 1], 10), vec![0..1, 1..2, 2..4]);
        assert_eq!(byte_ranges([usize::MAX, 1], 10), vec![0..1, 1..2]);
    }
}
