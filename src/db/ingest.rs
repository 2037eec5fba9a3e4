//! Ingest statements: claim outbox rows, consult and fill the delivered ledger, fold events
//! into `hubsync.objects`. All run inside the caller's one ingest transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::core::event::OutboxEvent;
use crate::core::vocabulary::ObjectType;

/// `occurred_at` as a time only when it is within bounds; always as text too. Shared by the
/// claim and by the statements that read events back.
const OCCURRED_AT_COLUMNS: &str = "CASE WHEN c.occurred_at >= '1970-01-01 00:00:00+00'::timestamptz
                   AND c.occurred_at < '10000-01-01 00:00:00+00'::timestamptz
              THEN c.occurred_at END AS occurred_at,
         c.occurred_at::text AS occurred_at_text";

fn event_from_row(row: &sqlx::postgres::PgRow) -> Result<OutboxEvent, sqlx::Error> {
    let occurred_at: Option<DateTime<Utc>> = row.try_get("occurred_at")?;
    let text: Option<String> = row.try_get("occurred_at_text")?;
    Ok(OutboxEvent {
        seq: row.try_get("seq")?,
        event_id: row.try_get("event_id")?,
        object_type: row.try_get("object_type")?,
        object_key: row.try_get("object_key")?,
        properties: row.try_get("properties")?,
        occurred_at: occurred_at.ok_or_else(|| text.unwrap_or_else(|| "null".into())),
        company_key: row.try_get("company_key")?,
        enqueued_at: row.try_get("enqueued_at")?,
    })
}

/// At most this many bytes of event data (properties and keys) are claimed in one chunk,
/// however many rows that is (always at least one): a chunk of large events stays well within
/// the worker's memory and far from Postgres's 1 GB limit on one message, which the statements
/// writing a chunk's objects and dead-letter rows would otherwise meet.
pub(crate) const CLAIM_BYTES: i64 = 32 << 20;

/// The size of the jsonb `column` as a claim counts it against [`CLAIM_BYTES`]: as stored
/// when small, as text otherwise, since a value stored compressed may be far larger than it is
/// on disk (only those are measured as text: compression starts at about 2 kB).
pub(crate) fn jsonb_bytes(column: &str) -> String {
    format!(
        "CASE WHEN pg_column_size({column}) < 256 THEN pg_column_size({column})
              ELSE octet_length({column}::text) END"
    )
}

/// What one claim took.
pub(crate) struct ClaimedRows {
    /// Each event, with `true` when its id was new to the ledger (`false`: a repeat of an event
    /// already processed, to be dropped).
    pub events: Vec<(OutboxEvent, bool)>,
    /// Whether `limit` rows were waiting: a backlog, even when the chunk was cut short at
    /// [`CLAIM_BYTES`].
    pub more: bool,
}

/// Claims and deletes up to `limit` outbox rows (and at most about [`CLAIM_BYTES`] of them),
/// oldest first, and records their event ids in the ledger in the same statement. Locks: the
/// rows looked at (`SKIP LOCKED`, so concurrent ingesters take disjoint chunks; those left out
/// by the byte budget stay locked until the transaction ends, and are claimed by a later
/// chunk) and the new ledger rows; a rollback restores both. A concurrent ingest of the same id
/// waits on the ledger row, then sees it as a repeat.
pub(crate) async fn claim_outbox(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<ClaimedRows, sqlx::Error> {
    let properties_bytes = jsonb_bytes("properties");
    let sql = format!(
        "WITH locked AS MATERIALIZED (
             SELECT id,
                    {properties_bytes}
                    + octet_length(object_key) + coalesce(octet_length(company_key), 0) AS bytes
             FROM hubsync.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             DELETE FROM hubsync.outbox o
             WHERE o.id = ANY (ARRAY(
                 SELECT s.id FROM (SELECT id, sum(bytes) OVER (ORDER BY id) - bytes AS before
                                   FROM locked) s
                 WHERE s.before < $2))
             RETURNING o.id, o.event_id, o.object_type, o.object_key, o.properties,
                       o.occurred_at, o.company_key, o.enqueued_at
         ), fresh AS (
             INSERT INTO hubsync.ledger (event_id)
             SELECT c.event_id FROM claimed c
             WHERE NOT EXISTS (SELECT 1 FROM hubsync.ledger l WHERE l.event_id = c.event_id)
             RETURNING event_id
         )
         SELECT c.id AS seq, c.event_id, c.object_type, c.object_key,
                c.properties::text AS properties, {OCCURRED_AT_COLUMNS}, c.company_key,
                c.enqueued_at, (f.event_id IS NOT NULL) AS fresh,
                (SELECT count(*) FROM locked) AS looked_at
         FROM claimed c LEFT JOIN fresh f ON f.event_id = c.event_id"
    );
    let rows = sqlx::query(&sql)
        .bind(limit)
        .bind(CLAIM_BYTES)
        .fetch_all(&mut *tx)
        .await?;
    let looked_at: i64 = match rows.first() {
        Some(r) => r.try_get("looked_at")?,
        None => 0,
    };
    let mut events: Vec<(OutboxEvent, bool)> = rows
        .iter()
        .map(|r| Ok((event_from_row(r)?, r.try_get("fresh")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    events.sort_by_key(|(e, _)| e.seq);
    Ok(ClaimedRows {
        events,
        more: looked_at >= limit,
    })
}

/// An object row locked for folding.
#[derive(Debug, Clone)]
pub(crate) struct LockedObject {
    /// Normalised key.
    pub key: String,
    /// Merged state as JSON text.
    pub state: String,
}

/// Locks the existing rows of `keys` (sorted), in key order, without ever waiting for a row
/// another session holds: those are left out, as are keys with no row.
pub(crate) async fn lock_existing(
    tx: &mut PgConnection,
    object_type: ObjectType,
    keys: &[String],
) -> Result<Vec<LockedObject>, sqlx::Error> {
    let rows = sqlx::query(&super::lock_in_key_order(
        "object_key, state::text AS state",
        " SKIP LOCKED",
    ))
    .bind(object_type.as_str())
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LockedObject {
                key: r.try_get("object_key")?,
                state: r.try_get("state")?,
            })
        })
        .collect()
}

/// Inserts new objects (`keys` sorted) with their merged states, dirty, in one statement.
/// Returns the keys inserted; a key another ingest inserted meanwhile is left as it is (its
/// insert waits for that transaction to end, the one wait ingest can have, and never on a row
/// sync or an operator holds). Locks: the rows inserted.
pub(crate) async fn insert_objects(
    tx: &mut PgConnection,
    object_type: ObjectType,
    keys: &[String],
    states: &[String],
    company_keys: &[Option<String>],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO hubsync.objects AS o (object_type, object_key, state, company_key, version,
                                           dirty, dirty_since)
         SELECT $1, u.key, u.state::jsonb, u.company_key, 1, true, now()
         FROM unnest($2::text[], $3::text[], $4::text[]) AS u(key, state, company_key)
         ORDER BY u.key
         ON CONFLICT DO NOTHING RETURNING o.object_key",
    )
    .bind(object_type.as_str())
    .bind(keys)
    .bind(states)
    .bind(company_keys)
    .fetch_all(&mut *tx)
    .await
}

/// Puts claimed events back into the outbox with their sequence, and forgets their ledger
/// entries, in the claiming transaction: as if they had never been claimed. Locks: those
/// ledger rows and the re-inserted outbox rows.
pub(crate) async fn put_back(
    tx: &mut PgConnection,
    events: &[OutboxEvent],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    sqlx::query("DELETE FROM hubsync.ledger WHERE event_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    // Deferred events passed validation, so their time is within bounds.
    let times: Vec<Option<DateTime<Utc>>> =
        events.iter().map(|e| e.occurred_at.clone().ok()).collect();
    sqlx::query(
        "INSERT INTO hubsync.outbox (id, event_id, object_type, object_key, properties,
                                     occurred_at, company_key, enqueued_at)
         SELECT u.id, u.event_id, u.object_type, u.object_key, u.properties::jsonb,
                coalesce(u.occurred_at, now()), u.company_key, coalesce(u.enqueued_at, now())
         FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::text[], $8::timestamptz[])
              AS u(id, event_id, object_type, object_key, properties, occurred_at,
                   company_key, enqueued_at)
         ON CONFLICT DO NOTHING",
    )
    .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
    .bind(&ids)
    .bind(
        events
            .iter()
            .map(|e| e.object_type.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.object_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.properties.clone())
            .collect::<Vec<_>>(),
    )
    .bind(times)
    .bind(
        events
            .iter()
            .map(|e| e.company_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.enqueued_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks a point the ingest transaction can return to. Locks nothing.
pub(crate) async fn savepoint(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SAVEPOINT fold").execute(&mut *tx).await?;
    Ok(())
}

/// Keeps what was done since the savepoint. Locks nothing.
pub(crate) async fn release_savepoint(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("RELEASE SAVEPOINT fold")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Undoes what was done since the savepoint (and the locks it took), then drops it.
pub(crate) async fn rollback_to_savepoint(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("ROLLBACK TO SAVEPOINT fold")
        .execute(&mut *tx)
        .await?;
    release_savepoint(tx).await
}

/// The statement of [`store_objects`], put together once: ingest runs it for every chunk.
static STORE_OBJECTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE hubsync.objects o
         SET state = u.state::jsonb, company_key = u.company_key, version = o.version + 1,
             dirty = true, dirty_since = CASE WHEN o.dirty THEN o.dirty_since ELSE now() END,
             next_attempt_at = CASE WHEN o.attempts = 0 THEN NULL ELSE o.next_attempt_at END,
             association_next_at = CASE WHEN o.association_next_at = 'infinity'
                                             AND u.company_key IS DISTINCT FROM o.company_key
                                        THEN {resume} ELSE o.association_next_at END,
             updated_at = now()
         FROM unnest($2::text[], $3::text[], $4::text[]) AS u(key, state, company_key)
         WHERE o.object_type = $1 AND o.object_key = u.key",
        resume = super::objects::resume_association("$5"),
    )
});

/// Writes new merged states, bumps versions and marks the objects dirty, due at once unless
/// they are backing off after failures (a write repeated only to settle an earlier request
/// that may land late goes out with the new state instead). A contact whose association was
/// parked and whose company changes has its new association tried, after `settle` when its
/// last pair may still land (`resume_association`; a lease or a retry delay in progress is left
/// alone). Locks: those rows (already locked by `lock_objects`).
pub(crate) async fn store_objects(
    tx: &mut PgConnection,
    object_type: ObjectType,
    keys: &[String],
    states: &[String],
    company_keys: &[Option<String>],
    settle: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(&STORE_OBJECTS)
        .bind(object_type.as_str())
        .bind(keys)
        .bind(states)
        .bind(company_keys)
        .bind(settle.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
