//! Sync statements: lease dirty objects, and record each batch's outcome fenced by the lease
//! token, so a worker whose lease expired can never overwrite what another worker recorded.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::core::dlq::Category;
use crate::core::vocabulary::ObjectType;

/// Starts a transaction holding the object rows of `keys`, locked in key order (the one lock
/// order `db` states). A row held by another session for longer than the session's
/// `lock_timeout` is left out rather than waited on: the returned keys are those held. A
/// leased object left out keeps its lease; when the lease runs out, it is sent again.
pub(crate) async fn begin_locked(
    pool: &PgPool,
    object_type: ObjectType,
    keys: &[String],
) -> Result<(Transaction<'static, Postgres>, Vec<String>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    match lock_rows(&mut tx, object_type, keys, "").await {
        Ok(held) => return Ok((tx, held)),
        Err(e) if is_lock_timeout(&e) => {}
        Err(e) => return Err(e),
    }
    drop(tx);
    let mut tx = pool.begin().await?;
    let held = lock_rows(&mut tx, object_type, keys, " SKIP LOCKED").await?;
    tracing::warn!(
        object = object_type.as_str(),
        locked = keys.len() - held.len(),
        "object rows held by another session; their outcome is recorded once they are free"
    );
    Ok((tx, held))
}

async fn lock_rows(
    tx: &mut PgConnection,
    object_type: ObjectType,
    keys: &[String],
    wait: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&super::lock_in_key_order("object_key", wait))
        .bind(object_type.as_str())
        .bind(keys)
        .fetch_all(&mut *tx)
        .await
}

/// A lock wait ended by the session's `lock_timeout` (SQLSTATE 55P03).
pub(crate) fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// A dirty object leased for one batch.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Normalised key.
    pub key: String,
    /// Merged state as JSON text.
    pub state: String,
    /// Version at lease time: the object stays dirty if it moved meanwhile.
    pub version: i64,
    /// Company to associate with (contacts).
    pub company_key: Option<String>,
    /// HubSpot record id, once known.
    pub hubspot_id: Option<String>,
    /// Consecutive transient failures so far.
    pub attempts: i32,
    /// Properties held back after HubSpot refused them (`{"name": "refused value"}`), if any.
    pub held: Option<String>,
}

/// Leases up to `limit` dirty objects that are due, in the order they became due: a fresh
/// object from when it became dirty, one backing off from when its retry fell due. Returns
/// them in that order (the sync step holds back the later of two keys HubSpot may take for
/// one record, which then leads the next lease). Leases nothing while a worker of a
/// generation newer than `generation` is alive. Locks: the chosen rows for the length of
/// this statement only (`SKIP LOCKED`); the lease columns then keep others away until the
/// batch is recorded or the lease expires. No transaction stays open across the HTTP call.
pub async fn lease(
    pool: &PgPool,
    object_type: ObjectType,
    limit: i64,
    lease: Duration,
    token: Uuid,
    generation: i64,
) -> Result<Vec<Leased>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED (
             SELECT object_type, object_key FROM hubsync.objects
             WHERE object_type = $1 AND dirty
               AND coalesce(next_attempt_at, dirty_since, '-infinity'::timestamptz) <= now()
               AND (leased_until IS NULL OR leased_until < now())
               AND NOT EXISTS (
                   SELECT 1 FROM hubsync.workers w JOIN hubsync.configs c USING (fingerprint)
                   WHERE c.generation > $5
                     AND w.seen_at > now() - make_interval(secs => $6))
             ORDER BY coalesce(next_attempt_at, dirty_since, '-infinity'::timestamptz)
             LIMIT $2 FOR UPDATE SKIP LOCKED
         ), leased AS (
             UPDATE hubsync.objects o
             SET leased_until = clock_timestamp() + make_interval(secs => $3), lease_token = $4
             FROM picked
             WHERE o.object_type = picked.object_type AND o.object_key = picked.object_key
             RETURNING o.object_key, o.state::text AS state, o.version, o.company_key,
                       o.hubspot_id, o.attempts, o.held::text AS held,
                       coalesce(o.next_attempt_at, o.dirty_since, '-infinity'::timestamptz)
                           AS due
         )
         SELECT object_key, state, version, company_key, hubspot_id, attempts, held
         FROM leased ORDER BY due, object_key",
    )
    .bind(object_type.as_str())
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(token)
    .bind(generation)
    .bind(super::generations::ALIVE_SECS)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Leased {
                key: r.try_get("object_key")?,
                state: r.try_get("state")?,
                version: r.try_get("version")?,
                company_key: r.try_get("company_key")?,
                hubspot_id: r.try_get("hubspot_id")?,
                attempts: r.try_get("attempts")?,
                held: r.try_get("held")?,
            })
        })
        .collect()
}

/// Marks written objects clean unless their version moved, stores HubSpot ids and what stays
/// held back, and removes the dead-letter rows of objects that hold nothing back any more. A
/// parked association is tried again when its contact's or its company's record id changed
/// (deleted in HubSpot and created again). Fenced by `token`. Locks: those object rows in key
/// order, then (companies) the contacts parked with them, then their DLQ rows.
pub async fn record_written(
    pool: &PgPool,
    object_type: ObjectType,
    token: Uuid,
    written: &[Written],
) -> Result<Recorded, sqlx::Error> {
    let keys: Vec<String> = written.iter().map(|w| w.key.clone()).collect();
    let (mut tx, locked) = begin_locked(pool, object_type, &keys).await?;
    // Companies HubSpot now holds under another record id (deleted there, created again).
    let renamed_companies: Vec<String> = if object_type == ObjectType::Company {
        sqlx::query_scalar(
            "SELECT o.object_key FROM hubsync.objects o
             JOIN unnest($1::text[], $2::text[]) AS u(key, hubspot_id) ON u.key = o.object_key
             WHERE o.object_type = 'company' AND o.object_key = ANY($3)
               AND o.hubspot_id IS NOT NULL AND u.hubspot_id IS NOT NULL
               AND o.hubspot_id <> u.hubspot_id",
        )
        .bind(&keys)
        .bind(
            written
                .iter()
                .map(|w| w.hubspot_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(&locked)
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    // A version that moved meanwhile may come from a replay that cleared the holds: keep
    // the row's own holds then, and let the next batch work them out again. An object whose
    // earlier request may still land stays dirty until then, to be written once more.
    let done: Vec<(String, Option<f64>)> = sqlx::query_as(
        "UPDATE hubsync.objects o
         SET dirty = (o.version <> u.version) OR coalesce(o.unsettled_until > now(), false),
             synced_version = u.version,
             hubspot_id = coalesce(u.hubspot_id, o.hubspot_id),
             association_next_at = CASE WHEN o.association_next_at = 'infinity'
                                             AND u.hubspot_id IS DISTINCT FROM o.hubspot_id
                                             AND u.hubspot_id IS NOT NULL
                                        THEN NULL ELSE o.association_next_at END,
             held = CASE WHEN o.version = u.version THEN u.held::jsonb ELSE o.held END,
             leased_until = NULL, lease_token = NULL, attempts = 0,
             next_attempt_at = CASE WHEN o.version = u.version AND o.unsettled_until > now()
                                    THEN o.unsettled_until END,
             last_error = NULL, synced_at = now()
         FROM unnest($2::text[], $3::int8[], $4::text[], $5::text[])
              AS u(key, version, hubspot_id, held)
         WHERE o.object_type = $1 AND o.object_key = u.key AND o.lease_token = $6
           AND o.object_key = ANY($7)
         RETURNING o.object_key,
                   extract(epoch FROM o.next_attempt_at - clock_timestamp())::float8",
    )
    .bind(object_type.as_str())
    .bind(&keys)
    .bind(written.iter().map(|w| w.version).collect::<Vec<_>>())
    .bind(
        written
            .iter()
            .map(|w| w.hubspot_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(written.iter().map(|w| w.held.clone()).collect::<Vec<_>>())
    .bind(token)
    .bind(&locked)
    .fetch_all(&mut *tx)
    .await?;
    let rewrite_in = done
        .iter()
        .filter_map(|(_, secs)| *secs)
        .reduce(f64::min)
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    let keys: Vec<String> = done.into_iter().map(|(k, _)| k).collect();
    if object_type == ObjectType::Company {
        resume_parked_for_new_companies(&mut tx, &renamed_companies).await?;
    }
    sqlx::query(
        "DELETE FROM hubsync.dlq d USING hubsync.objects o
         WHERE d.kind = 'object' AND d.object_type = $1 AND d.object_key = ANY($2)
           AND o.object_type = d.object_type AND o.object_key = d.object_key
           AND o.held IS NULL",
    )
    .bind(object_type.as_str())
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded { keys, rewrite_in })
}

/// What `record_written` recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The keys recorded (a lost lease, or a row another session holds, records nothing).
    pub keys: Vec<String>,
    /// When the soonest of them is to be written once more (an earlier request of it may
    /// still land), if any is.
    pub rewrite_in: Option<Duration>,
}

/// One object HubSpot wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// Normalised key.
    pub key: String,
    /// Version at lease time: the object stays dirty if it moved meanwhile.
    pub version: i64,
    /// The record id HubSpot gave, when the reply said.
    pub hubspot_id: Option<String>,
    /// What stays held back after this write (`{"name": "value"}` text), or none.
    pub held: Option<String>,
}

/// Gives leased objects back untouched (rate limit, halted credentials, shutdown): not an
/// attempt. Fenced by `token`. Locks: those rows, briefly.
pub(crate) async fn release(
    pool: &PgPool,
    object_type: ObjectType,
    token: Uuid,
    keys: &[String],
) -> Result<(), sqlx::Error> {
    let (mut tx, locked) = begin_locked(pool, object_type, keys).await?;
    sqlx::query(
        "UPDATE hubsync.objects SET leased_until = NULL, lease_token = NULL
         WHERE object_type = $1 AND object_key = ANY($2) AND lease_token = $3",
    )
    .bind(object_type.as_str())
    .bind(&locked)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The objects one transient failure retries.
#[derive(Debug, Clone, Copy)]
pub struct Retries<'a> {
    /// Their keys.
    pub keys: &'a [String],
    /// Seconds until each one's next attempt.
    pub delays: &'a [f64],
    /// Whether each one's failed request may still land at HubSpot later.
    pub may_land_late: &'a [bool],
    /// How long such a request may take to land: until then, the object is written once more
    /// after any success.
    pub settle: Duration,
}

/// Counts a transient failure against each object and schedules its next attempt after the
/// matching delay. Fenced by `token`. Locks: those rows, briefly. Returns (key, attempts).
pub(crate) async fn record_transient(
    pool: &PgPool,
    object_type: ObjectType,
    token: Uuid,
    retries: &Retries<'_>,
    error: &str,
) -> Result<Vec<(String, i32)>, sqlx::Error> {
    let (mut tx, locked) = begin_locked(pool, object_type, retries.keys).await?;
    let rows = sqlx::query_as(
        "UPDATE hubsync.objects o
         SET attempts = o.attempts + 1,
             next_attempt_at = clock_timestamp() + make_interval(secs => u.delay),
             unsettled_until = CASE WHEN u.late
                 THEN greatest(o.unsettled_until, clock_timestamp() + make_interval(secs => $7))
                 ELSE o.unsettled_until END,
             leased_until = NULL, lease_token = NULL, last_error = $5
         FROM unnest($2::text[], $3::float8[], $8::bool[]) AS u(key, delay, late)
         WHERE o.object_type = $1 AND o.object_key = u.key AND o.lease_token = $4
           AND o.object_key = ANY($6)
         RETURNING o.object_key, o.attempts",
    )
    .bind(object_type.as_str())
    .bind(retries.keys)
    .bind(retries.delays)
    .bind(token)
    .bind(error)
    .bind(&locked)
    .bind(retries.settle.as_secs_f64())
    .bind(retries.may_land_late)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One object failure bound for the DLQ.
#[derive(Debug, Clone)]
pub struct ObjectFailure {
    /// Normalised key.
    pub key: String,
    /// Version at lease time.
    pub version: i64,
    /// The input as sent (JSON text).
    pub payload: String,
    /// Why it is parked.
    pub category: Category,
    /// Message for a person.
    pub message: String,
    /// HubSpot's error (JSON text).
    pub error: String,
    /// Parked at once (no automatic retry).
    pub permanent: bool,
    /// Properties HubSpot refused (`{"name": "value"}` text): these are held back and the
    /// object's other properties go on syncing, instead of the whole object failing.
    pub hold: Option<String>,
    /// When the last request for it got no answer: how long HubSpot may still carry it out.
    /// A later write is then repeated once that time is over (`unsettled_until`).
    pub settles_in: Option<Duration>,
}

/// When a DLQ row written for the first time (`attempts` 1) is due: never for a failure
/// marked permanent (`u.permanent`) or when `worker.max_attempts` (`$7`) is 1, else in a
/// minute.
const DLQ_FIRST_RETRY: &str = "CASE WHEN u.permanent OR $7 <= 1 THEN NULL
                                   ELSE clock_timestamp() + interval '1 minute' END";

/// When a DLQ row `d` failing once more is due: parked (NULL) once it was written for a
/// permanent failure or has failed `worker.max_attempts` (`$7`) times, else after twice the
/// last wait (2, 4, 8 … minutes, at most 6 hours: the exponent stops at 9, past which the
/// interval would overflow after some 38 failures). With the default of 10, a row is tried
/// again over about eight and a half hours of waits.
const DLQ_NEXT_RETRY: &str = "CASE
                 WHEN EXCLUDED.next_retry_at IS NULL OR d.attempts + 1 >= $7 THEN NULL
                 ELSE clock_timestamp()
                      + least(interval '6 hours',
                              interval '1 minute' * power(2, least(d.attempts, 9)))
             END";

/// Moves failed objects to the DLQ (one row per object, updated on repeat failures) and
/// releases them; an object whose version moved meanwhile stays dirty so its newer state is
/// tried. Retryable rows are due again after a delay growing with attempts, and parked after
/// `max_attempts`. Fenced by `token`. Locks: those object rows in key order, then their DLQ
/// rows, briefly.
pub async fn dead_letter(
    pool: &PgPool,
    object_type: ObjectType,
    token: Uuid,
    failures: &[ObjectFailure],
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    let keys: Vec<String> = failures.iter().map(|f| f.key.clone()).collect();
    let versions: Vec<i64> = failures.iter().map(|f| f.version).collect();
    let messages: Vec<String> = failures.iter().map(|f| f.message.clone()).collect();
    let holds: Vec<Option<String>> = failures.iter().map(|f| f.hold.clone()).collect();
    let (mut tx, locked) = begin_locked(pool, object_type, &keys).await?;
    // An object holding properties back stays dirty and due: its other properties are sent
    // by the next batch.
    let owned: Vec<(String,)> = sqlx::query_as(
        "UPDATE hubsync.objects o
         SET dirty = (u.hold IS NOT NULL OR o.version <> u.version),
             held = CASE WHEN u.hold IS NULL THEN o.held
                         ELSE coalesce(o.held, '{}'::jsonb) || u.hold::jsonb END,
             leased_until = NULL, lease_token = NULL,
             attempts = 0, next_attempt_at = NULL, last_error = u.message,
             unsettled_until = CASE WHEN u.settle IS NULL THEN o.unsettled_until
                 ELSE greatest(o.unsettled_until,
                               clock_timestamp() + make_interval(secs => u.settle)) END
         FROM unnest($2::text[], $3::int8[], $4::text[], $6::text[], $8::float8[])
              AS u(key, version, message, hold, settle)
         WHERE o.object_type = $1 AND o.object_key = u.key AND o.lease_token = $5
           AND o.object_key = ANY($7)
         RETURNING o.object_key",
    )
    .bind(object_type.as_str())
    .bind(&keys)
    .bind(&versions)
    .bind(&messages)
    .bind(token)
    .bind(&holds)
    .bind(&locked)
    .bind(
        failures
            .iter()
            .map(|f| f.settles_in.map(|d| d.as_secs_f64()))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let owned: std::collections::HashSet<String> = owned.into_iter().map(|(k,)| k).collect();
    let mine: Vec<&ObjectFailure> = failures.iter().filter(|f| owned.contains(&f.key)).collect();
    sqlx::query(&format!(
        "INSERT INTO hubsync.dlq AS d (kind, object_type, object_key, payload, error_category,
                                      error_message, error, attempts, next_retry_at)
         SELECT 'object', $1, u.key, u.payload::jsonb, u.category, u.message, u.error::jsonb, 1,
                {first}
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $8::bool[])
              AS u(key, payload, category, message, error, permanent)
         ON CONFLICT (object_type, object_key) WHERE kind = 'object' DO UPDATE
         SET payload = EXCLUDED.payload, error_category = EXCLUDED.error_category,
             error_message = EXCLUDED.error_message, error = EXCLUDED.error,
             attempts = d.attempts + 1, last_failed_at = now(), next_retry_at = {again}",
        first = DLQ_FIRST_RETRY,
        again = DLQ_NEXT_RETRY,
    ))
    .bind(object_type.as_str())
    .bind(mine.iter().map(|f| f.key.clone()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.payload.clone()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.category.as_str()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.message.clone()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.error.clone()).collect::<Vec<_>>())
    .bind(max_attempts)
    .bind(mine.iter().map(|f| f.permanent).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// When the association of contact row `o`, parked or taken, is due again now that it is to
/// be tried for another company: at once, unless a request for its last pair got no answer
/// (`note_maybe_associated` left that pair's ids without its company key) and may still be
/// carried out. The removal of that pair then waits `settle_param` seconds (a bind parameter),
/// or HubSpot could make the pair after removing it.
pub(crate) fn resume_association(settle_param: &str) -> String {
    format!(
        "CASE WHEN o.associated_company_key IS NULL AND o.associated_company_id IS NOT NULL
              THEN clock_timestamp() + make_interval(secs => {settle_param}) END"
    )
}

/// One contact whose association with its company is due.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PendingAssociation {
    /// The contact's HubSpot id.
    pub contact_id: String,
    /// The company's HubSpot id.
    pub company_id: String,
    /// The contact's key.
    pub contact_key: String,
    /// The company's key.
    pub company_key: String,
    /// The company HubSpot id hubsync associated this same contact record with before, when
    /// that is another company: that association is removed.
    pub previous_company_id: Option<String>,
    /// Refused or failed tries so far.
    pub attempts: i32,
}

/// Takes up to `limit` contacts whose association is not made for their current contact id,
/// company key and company id, and not waiting for a retry, for `lease`: their
/// `association_next_at` moves to the lease's end, so that no other worker sends their pairs
/// meanwhile (two workers sending different companies for one contact at once could leave it
/// with both). Recording the outcome, a retry delay, or [`release_associations`] ends the
/// lease; a worker that stops leaves it to run out. Locks: those contact rows, skipping any
/// another session holds, for this one statement.
pub(crate) async fn pending_associations(
    pool: &PgPool,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<PendingAssociation>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT c.object_key
             FROM hubsync.objects c
             JOIN hubsync.objects co ON co.object_type = 'company' AND co.object_key = c.company_key
             WHERE c.object_type = 'contact' AND c.hubspot_id IS NOT NULL
               AND co.hubspot_id IS NOT NULL
               AND (c.associated_company_key IS DISTINCT FROM c.company_key
                    OR c.associated_contact_id IS DISTINCT FROM c.hubspot_id
                    OR c.associated_company_id IS DISTINCT FROM co.hubspot_id)
               AND (c.association_next_at IS NULL OR c.association_next_at <= now())
             ORDER BY c.association_next_at NULLS FIRST
             LIMIT $1
             FOR UPDATE OF c SKIP LOCKED
         )
         UPDATE hubsync.objects c
         SET association_next_at = now() + make_interval(secs => $2)
         FROM due, hubsync.objects co
         WHERE c.object_type = 'contact' AND c.object_key = due.object_key
           AND co.object_type = 'company' AND co.object_key = c.company_key
         RETURNING c.hubspot_id AS contact_id, co.hubspot_id AS company_id,
                   c.object_key AS contact_key, co.object_key AS company_key,
                   CASE WHEN c.associated_contact_id = c.hubspot_id
                             AND c.associated_company_id IS DISTINCT FROM co.hubspot_id
                        THEN c.associated_company_id END AS previous_company_id,
                   c.association_attempts AS attempts",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Hands back contacts taken by [`pending_associations`] whose pairs were not sent or not
/// answered for (a pause, a shutdown, a request refused for another pair): they are due again
/// at once. Locks: those contact rows, briefly.
pub(crate) async fn release_associations(
    pool: &PgPool,
    contact_keys: &[String],
) -> Result<(), sqlx::Error> {
    if contact_keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE hubsync.objects SET association_next_at = NULL
         WHERE object_type = 'contact' AND object_key = ANY($1) AND association_next_at > now()
           AND association_next_at <> 'infinity'",
    )
    .bind(contact_keys)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records associations made (for these contact and company ids) and drops their DLQ rows.
/// Locks: those contact rows, briefly.
pub(crate) async fn record_associated(
    pool: &PgPool,
    done: &[PendingAssociation],
) -> Result<(), sqlx::Error> {
    let keys: Vec<String> = done.iter().map(|p| p.contact_key.clone()).collect();
    let (mut tx, locked) = begin_locked(pool, ObjectType::Contact, &keys).await?;
    sqlx::query(
        "UPDATE hubsync.objects o
         SET associated_company_key = u.company, associated_contact_id = u.contact_id,
             associated_company_id = u.company_id, association_attempts = 0,
             association_next_at = NULL
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
              AS u(contact, company, contact_id, company_id)
         WHERE o.object_type = 'contact' AND o.object_key = u.contact
           AND o.object_key = ANY($5)",
    )
    .bind(&keys)
    .bind(
        done.iter()
            .map(|p| p.company_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        done.iter()
            .map(|p| p.contact_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        done.iter()
            .map(|p| p.company_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(&locked)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM hubsync.dlq
         WHERE kind = 'object' AND object_type = 'association' AND object_key = ANY($1)",
    )
    .bind(&locked)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Contacts whose association was parked (their company deleted in HubSpot, say) are tried
/// again once these companies are held under a new record id. Locks: those contact rows, in
/// key order (after the company rows the caller holds: companies sort before contacts).
async fn resume_parked_for_new_companies(
    tx: &mut sqlx::PgConnection,
    companies: &[String],
) -> Result<(), sqlx::Error> {
    if companies.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE hubsync.objects o SET association_next_at = NULL
         FROM (SELECT object_key FROM hubsync.objects
               WHERE object_type = 'contact' AND company_key = ANY($1)
                 AND association_next_at = 'infinity'
               ORDER BY object_key
               FOR UPDATE) AS parked
         WHERE o.object_type = 'contact' AND o.object_key = parked.object_key
           AND o.association_next_at = 'infinity'",
    )
    .bind(companies)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Notes pairs whose request may have been applied though no answer said so (a lost reply, a
/// 5xx): the contact is taken as possibly associated with that company, so that if it moves
/// on before a try settles it, that association is removed like a made one (removing a pair
/// that was never made is harmless). The company key stays unrecorded, so the pair is still
/// due. Locks: those contact rows, briefly.
pub(crate) async fn note_maybe_associated(
    pool: &PgPool,
    sent: &[PendingAssociation],
) -> Result<(), sqlx::Error> {
    let keys: Vec<String> = sent.iter().map(|p| p.contact_key.clone()).collect();
    let (mut tx, locked) = begin_locked(pool, ObjectType::Contact, &keys).await?;
    sqlx::query(
        "UPDATE hubsync.objects o
         SET associated_company_key = NULL, associated_contact_id = u.contact_id,
             associated_company_id = u.company_id
         FROM unnest($1::text[], $2::text[], $3::text[]) AS u(contact, contact_id, company_id)
         WHERE o.object_type = 'contact' AND o.object_key = u.contact
           AND o.object_key = ANY($4)",
    )
    .bind(&keys)
    .bind(
        sent.iter()
            .map(|p| p.contact_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        sent.iter()
            .map(|p| p.company_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(&locked)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records that the association of these contacts with their previous company is removed:
/// nothing is taken as made for them until their new one is. Locks: those contact rows,
/// briefly.
pub(crate) async fn record_removed(
    pool: &PgPool,
    removed: &[PendingAssociation],
) -> Result<(), sqlx::Error> {
    if removed.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = removed.iter().map(|p| p.contact_key.clone()).collect();
    let (mut tx, locked) = begin_locked(pool, ObjectType::Contact, &keys).await?;
    sqlx::query(
        "UPDATE hubsync.objects o
         SET associated_company_key = NULL, associated_company_id = NULL
         FROM unnest($1::text[], $2::text[], $3::text[]) AS u(contact, contact_id, previous)
         WHERE o.object_type = 'contact' AND o.object_key = u.contact
           AND o.associated_contact_id = u.contact_id AND o.associated_company_id = u.previous
           AND o.object_key = ANY($4)",
    )
    .bind(&keys)
    .bind(
        removed
            .iter()
            .map(|p| p.contact_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        removed
            .iter()
            .map(|p| p.previous_company_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(&locked)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Schedules another try of these contacts' associations after `delays` (seconds).
/// Locks: those contact rows, briefly.
pub(crate) async fn retry_associations(
    pool: &PgPool,
    contact_keys: &[String],
    delays: &[f64],
) -> Result<(), sqlx::Error> {
    let (mut tx, locked) = begin_locked(pool, ObjectType::Contact, contact_keys).await?;
    sqlx::query(
        "UPDATE hubsync.objects o
         SET association_attempts = o.association_attempts + 1,
             association_next_at = clock_timestamp() + make_interval(secs => u.delay)
         FROM unnest($1::text[], $2::float8[]) AS u(contact, delay)
         WHERE o.object_type = 'contact' AND o.object_key = u.contact
           AND o.object_key = ANY($3)",
    )
    .bind(contact_keys)
    .bind(delays)
    .bind(&locked)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// One association given up on: the contact, what was sent and why HubSpot refused it.
#[derive(Debug, Clone)]
pub(crate) struct AssociationFailure {
    /// The contact's key.
    pub contact_key: String,
    /// The company key of the pair that was refused.
    pub company_key: String,
    /// The pair, as JSON text.
    pub payload: String,
    /// Why it is parked.
    pub category: Category,
    /// For a person.
    pub message: String,
    /// HubSpot's error, as JSON text.
    pub error: String,
}

/// Parks associations that ran out of tries: a DLQ row each (kind `object`, object_type
/// `association`, keyed by the contact), and no more tries until it is replayed, the contact
/// moves to another company, or its or its company's record id changes (`store_objects`,
/// `record_written`). A row for requests that failed (`association_failed`: 5xx, no answer)
/// replays itself on the DLQ's schedule ([`DLQ_NEXT_RETRY`]); one HubSpot refused waits for a
/// person. Locks: those contact rows, briefly.
pub(crate) async fn park_associations(
    pool: &PgPool,
    failures: &[AssociationFailure],
    max_attempts: i32,
    settle: Duration,
) -> Result<(), sqlx::Error> {
    let keys: Vec<String> = failures.iter().map(|f| f.contact_key.clone()).collect();
    let (mut tx, locked) = begin_locked(pool, ObjectType::Contact, &keys).await?;
    // A contact whose company changed while its last try was on its way is not parked with
    // the old pair: its new company is due, once the old pair can no longer land.
    let parked: Vec<String> = sqlx::query_scalar::<_, Option<String>>(&format!(
        "UPDATE hubsync.objects o
         SET association_attempts = 0,
             association_next_at = CASE WHEN o.company_key IS NOT DISTINCT FROM u.company
                                        THEN 'infinity'::timestamptz
                                        ELSE {resume} END
         FROM unnest($1::text[], $2::text[]) AS u(contact, company)
         WHERE o.object_type = 'contact' AND o.object_key = u.contact
           AND o.object_key = ANY($3)
         RETURNING CASE WHEN o.association_next_at = 'infinity' THEN o.object_key END",
        resume = resume_association("$4"),
    ))
    .bind(&keys)
    .bind(
        failures
            .iter()
            .map(|f| f.company_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(&locked)
    .bind(settle.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    let mine: Vec<&AssociationFailure> = failures
        .iter()
        .filter(|f| parked.contains(&f.contact_key))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO hubsync.dlq AS d (kind, object_type, object_key, payload, error_category,
                                      error_message, error, attempts, next_retry_at)
         SELECT 'object', 'association', u.key, u.payload::jsonb, u.category, u.message,
                u.error::jsonb, 1, {first}
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[])
              AS u(key, payload, category, message, error, permanent)
         ON CONFLICT (object_type, object_key) WHERE kind = 'object' DO UPDATE
         SET payload = EXCLUDED.payload, error_category = EXCLUDED.error_category,
             error_message = EXCLUDED.error_message, error = EXCLUDED.error,
             attempts = d.attempts + 1, last_failed_at = now(), next_retry_at = {again}",
        first = DLQ_FIRST_RETRY,
        again = DLQ_NEXT_RETRY,
    ))
    .bind(
        mine.iter()
            .map(|f| f.contact_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(mine.iter().map(|f| f.payload.clone()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.category.as_str()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.message.clone()).collect::<Vec<_>>())
    .bind(mine.iter().map(|f| f.error.clone()).collect::<Vec<_>>())
    .bind(
        mine.iter()
            .map(|f| f.category != Category::AssociationFailed)
            .collect::<Vec<_>>(),
    )
    .bind(max_attempts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
