//! Ingest statements: claim outbox rows, consult and fill the delivered ledger, fold events
//! into `hubsync.objects`. All run inside the caller's one ingest transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// One outbox row, as claimed.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Outbox sequence (`id`): the tie-breaker for equal `occurred_at`.
    pub seq: i64,
    /// The producer's idempotency key.
    pub event_id: Uuid,
    /// `contact` or `company` (unchecked).
    pub object_type: String,
    /// Email or company key (not normalised).
    pub object_key: String,
    /// The properties object as JSON text (numbers exact).
    pub properties: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Company to associate a contact with.
    pub company_key: Option<String>,
}

fn event_from_row(row: &sqlx::postgres::PgRow) -> Result<OutboxEvent, sqlx::Error> {
    Ok(OutboxEvent {
        seq: row.try_get("seq")?,
        event_id: row.try_get("event_id")?,
        object_type: row.try_get("object_type")?,
        object_key: row.try_get("object_key")?,
        properties: row.try_get("properties")?,
        occurred_at: row.try_get("occurred_at")?,
        company_key: row.try_get("company_key")?,
    })
}

/// Claims and deletes up to `limit` outbox rows, oldest first, and records their event ids in
/// the ledger in the same statement. Returns each claimed event with `true` when its id was new,
/// `false` when it repeats an event already processed (to be dropped). Locks: the claimed rows
/// (`SKIP LOCKED`, so concurrent ingesters take disjoint chunks) and the new ledger rows; a
/// rollback restores both. A concurrent ingest of the same id waits on the ledger row, then
/// sees it as a repeat.
pub async fn claim_outbox(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(OutboxEvent, bool)>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED (
             SELECT id FROM hubsync.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             DELETE FROM hubsync.outbox o USING picked WHERE o.id = picked.id
             RETURNING o.id, o.event_id, o.object_type, o.object_key, o.properties,
                       o.occurred_at, o.company_key
         ), fresh AS (
             INSERT INTO hubsync.ledger (event_id) SELECT event_id FROM claimed
             ON CONFLICT DO NOTHING RETURNING event_id
         )
         SELECT c.id AS seq, c.event_id, c.object_type, c.object_key,
                c.properties::text AS properties, c.occurred_at, c.company_key,
                (f.event_id IS NOT NULL) AS fresh
         FROM claimed c LEFT JOIN fresh f ON f.event_id = c.event_id",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut events: Vec<(OutboxEvent, bool)> = rows
        .iter()
        .map(|r| Ok((event_from_row(r)?, r.try_get("fresh")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    events.sort_by_key(|(e, _)| e.seq);
    Ok(events)
}

/// An object row locked for folding.
#[derive(Debug, Clone)]
pub struct LockedObject {
    /// Normalised key.
    pub key: String,
    /// Merged state as JSON text.
    pub state: String,
    /// 0 for a row this transaction just created.
    pub version: i64,
}

/// Locks all of `keys` (which must be sorted), creating the missing rows. Locks: existing rows
/// first, in key order (the order every other statement locks them in, so ingesting workers and
/// sync never deadlock), then the rows this call inserts, which nobody else can see yet.
pub async fn lock_objects(
    tx: &mut PgConnection,
    object_type: &str,
    keys: &[String],
) -> Result<Vec<LockedObject>, sqlx::Error> {
    let mut locked = select_for_update(tx, object_type, keys).await?;
    if locked.len() == keys.len() {
        return Ok(locked);
    }
    let found: HashSet<&str> = locked.iter().map(|l| l.key.as_str()).collect();
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !found.contains(k.as_str()))
        .cloned()
        .collect();
    let inserted: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO hubsync.objects (object_type, object_key)
         SELECT $1, k FROM unnest($2::text[]) AS k ORDER BY k
         ON CONFLICT DO NOTHING RETURNING object_key",
    )
    .bind(object_type)
    .bind(&missing)
    .fetch_all(&mut *tx)
    .await?;
    let inserted: HashSet<String> = inserted.into_iter().map(|(k,)| k).collect();
    // Rows another ingest created meanwhile (it has committed, or we would still be waiting).
    let raced: Vec<String> = missing
        .iter()
        .filter(|k| !inserted.contains(*k))
        .cloned()
        .collect();
    if !raced.is_empty() {
        locked.extend(select_for_update(tx, object_type, &raced).await?);
    }
    locked.extend(inserted.into_iter().map(|key| LockedObject {
        key,
        state: "{}".into(),
        version: 0,
    }));
    Ok(locked)
}

async fn select_for_update(
    tx: &mut PgConnection,
    object_type: &str,
    keys: &[String],
) -> Result<Vec<LockedObject>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT object_key, state::text AS state, version FROM hubsync.objects
         WHERE object_type = $1 AND object_key = ANY($2)
         ORDER BY object_key FOR UPDATE",
    )
    .bind(object_type)
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LockedObject {
                key: r.try_get("object_key")?,
                state: r.try_get("state")?,
                version: r.try_get("version")?,
            })
        })
        .collect()
}

/// Writes new merged states, bumps versions and marks the objects dirty. Locks: those rows
/// (already locked by `lock_objects`).
pub async fn store_objects(
    tx: &mut PgConnection,
    object_type: &str,
    keys: &[String],
    states: &[String],
    company_keys: &[Option<String>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hubsync.objects o
         SET state = u.state::jsonb, company_key = u.company_key, version = o.version + 1,
             dirty = true, dirty_since = CASE WHEN o.dirty THEN o.dirty_since ELSE now() END,
             updated_at = now()
         FROM unnest($2::text[], $3::text[], $4::text[]) AS u(key, state, company_key)
         WHERE o.object_type = $1 AND o.object_key = u.key",
    )
    .bind(object_type)
    .bind(keys)
    .bind(states)
    .bind(company_keys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
