//! Ingest statements: claim outbox rows, consult and fill the delivered ledger, fold events
//! into `hubsync.objects`. All run inside the caller's one ingest transaction.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
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

/// Claims and deletes up to `limit` outbox rows, oldest first. Locks: the claimed rows
/// (`SKIP LOCKED`, so concurrent ingesters take disjoint chunks); a rollback restores them.
pub async fn claim_outbox(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED (
             SELECT id FROM hubsync.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
         )
         DELETE FROM hubsync.outbox o USING picked WHERE o.id = picked.id
         RETURNING o.id AS seq, o.event_id, o.object_type, o.object_key,
                   o.properties::text AS properties, o.occurred_at, o.company_key",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut events: Vec<OutboxEvent> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// Records event ids as processed and returns those that were not already: the rest are
/// repeats of delivered events, to be dropped. Locks: the new ledger rows until commit (a
/// concurrent ingest of the same id waits here, then sees it as a repeat).
pub async fn record_new_events(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "INSERT INTO hubsync.ledger (event_id) SELECT unnest($1::uuid[])
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Forgets ledger entries older than `retention`. Locks: the deleted rows, briefly.
pub async fn prune_ledger(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM hubsync.ledger WHERE processed_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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

/// Creates missing object rows and locks all of `keys` (which must be sorted). Locks: the
/// object rows, taken in key order so two ingesting workers never deadlock.
pub async fn lock_objects(
    tx: &mut PgConnection,
    object_type: &str,
    keys: &[String],
) -> Result<Vec<LockedObject>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO hubsync.objects (object_type, object_key)
         SELECT $1, k FROM unnest($2::text[]) AS k ORDER BY k
         ON CONFLICT DO NOTHING",
    )
    .bind(object_type)
    .bind(keys)
    .execute(&mut *tx)
    .await?;
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
             dirty = true, updated_at = now()
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
