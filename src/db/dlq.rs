//! The dead-letter table: writing failed events at ingest, replaying due rows, and the
//! operator statements of `sql/` (which `hubsync dlq` runs exactly as psql would).

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::core::dlq::Category;

use crate::core::event::OutboxEvent;
use crate::core::vocabulary::ObjectType;

/// An event refused at ingest.
#[derive(Debug, Clone)]
pub(crate) struct EventFailure {
    /// The event id.
    pub event_id: Uuid,
    /// As enqueued.
    pub object_type: String,
    /// As enqueued.
    pub object_key: String,
    /// The whole event as JSON text.
    pub payload: String,
    /// Why it was refused.
    pub category: Category,
    /// Property, value and reason, for a person.
    pub message: String,
    /// Structured detail (JSON text).
    pub error: String,
}

/// Parks refused events (a refusal by validation is permanent until someone changes the
/// config or the data). A replayed event that fails again updates its row. Locks: the new or
/// updated DLQ rows until commit.
pub(crate) async fn insert_event_failures(
    tx: &mut PgConnection,
    failures: &[EventFailure],
) -> Result<(), sqlx::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&EventFailure) -> String| failures.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO hubsync.dlq AS d (kind, event_id, object_type, object_key, payload,
                                      error_category, error_message, error, next_retry_at)
         SELECT 'event', u.event_id, u.object_type, u.object_key, u.payload::jsonb,
                u.category, u.message, u.error::jsonb, NULL
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[]) AS u(event_id, object_type, object_key, payload, category,
                                      message, error)
         ON CONFLICT (event_id) WHERE kind = 'event' DO UPDATE
         SET error_category = EXCLUDED.error_category, error_message = EXCLUDED.error_message,
             error = EXCLUDED.error, attempts = d.attempts + 1, last_failed_at = now(),
             next_retry_at = NULL",
    )
    .bind(failures.iter().map(|f| f.event_id).collect::<Vec<_>>())
    .bind(col(|f| f.object_type.clone()))
    .bind(col(|f| f.object_key.clone()))
    .bind(col(|f| f.payload.clone()))
    .bind(col(|f| f.category.as_str().to_string()))
    .bind(col(|f| f.message.clone()))
    .bind(col(|f| f.error.clone()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An object whose stored state cannot be read.
#[derive(Debug, Clone)]
pub(crate) struct UnreadableObject {
    /// Normalised key.
    pub key: String,
    /// The state as stored, kept in the DLQ payload for the person who fixes it.
    pub state: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Parks objects whose state cannot be read (kind `object`, category `invalid_state`), leaving
/// the object rows as they are. Locks: those DLQ rows, inside the caller's transaction, which
/// already holds the object rows (objects before DLQ rows, the order `db` states).
pub(crate) async fn park_unreadable_objects(
    tx: &mut PgConnection,
    object_type: ObjectType,
    objects: &[UnreadableObject],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO hubsync.dlq AS d (kind, object_type, object_key, payload, error_category,
                                      error_message, error, next_retry_at)
         SELECT 'object', $1, u.key, jsonb_build_object('id', u.key, 'state', u.state),
                'invalid_state', u.message,
                jsonb_build_object('source', 'hubsync', 'message', u.message), NULL
         FROM unnest($2::text[], $3::text[], $4::text[]) AS u(key, state, message)
         ON CONFLICT (object_type, object_key) WHERE kind = 'object' DO UPDATE
         SET payload = EXCLUDED.payload, error_category = EXCLUDED.error_category,
             error_message = EXCLUDED.error_message, error = EXCLUDED.error,
             attempts = d.attempts + 1, last_failed_at = now(), next_retry_at = NULL",
    )
    .bind(object_type.as_str())
    .bind(objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>())
    .bind(objects.iter().map(|o| o.state.clone()).collect::<Vec<_>>())
    .bind(
        objects
            .iter()
            .map(|o| o.message.clone())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A due DLQ row that cannot be replayed as it stands (edited by hand, most likely): it is
/// parked again, saying which field is wrong and what to do, and the other rows go on.
#[derive(Debug, Clone)]
pub(crate) struct UnreadableRow {
    /// The row's id.
    pub id: i64,
    /// The new category, for an event row; an object row keeps its own (HubSpot's reason).
    pub category: Option<Category>,
    /// What is wrong, where, and what to do.
    pub message: String,
    /// Structured detail (JSON text) replacing `error`, for an event row; an object row keeps
    /// HubSpot's error.
    pub error: Option<String>,
}

/// One field of a DLQ row that is wrong, with what to do about it.
#[derive(Debug, Clone)]
struct Problem {
    /// The column or payload field at fault (`payload`: the whole payload).
    field: &'static str,
    /// The value as the row holds it, shortened (`None`: NULL or absent).
    value: Option<String>,
    /// What is wrong and what to set, for a person.
    text: String,
}

/// The message of a row that cannot be replayed: each problem, then what to do.
fn unreadable_message(id: i64, problems: &[Problem]) -> String {
    let what: Vec<&str> = problems.iter().map(|p| p.text.as_str()).collect();
    format!(
        "hubsync.dlq row {id} cannot be replayed as it stands: {}. Fix the row, then retry it (hubsync dlq retry {id}), or discard it (hubsync dlq discard {id})",
        what.join("; ")
    )
}

/// An event row that cannot be rebuilt as an event: parked again as `invalid_event`.
fn unreadable_event(id: i64, problems: &[Problem]) -> UnreadableRow {
    let detail: Vec<serde_json::Value> = problems
        .iter()
        .map(|p| serde_json::json!({"field": p.field, "value": p.value}))
        .collect();
    UnreadableRow {
        id,
        category: Some(Category::InvalidEvent),
        message: unreadable_message(id, problems),
        error: Some(
            serde_json::json!({
                "source": "hubsync",
                "category": Category::InvalidEvent.as_str(),
                "detail": {"dlq_id": id, "unreadable": detail},
            })
            .to_string(),
        ),
    }
}

/// Due event rows: those rebuilt as events, and those that cannot be.
#[derive(Debug, Default)]
pub(crate) struct DueEvents {
    /// (row id, the event as kept in its payload).
    pub events: Vec<(i64, OutboxEvent)>,
    /// Rows to park again.
    pub unreadable: Vec<UnreadableRow>,
}

/// A due event row as read: every column in a form that cannot fail to decode, each payload
/// field as its JSON type and text, so that whatever an operator left in the row is judged
/// here, one row at a time, instead of failing the statement for every row.
#[derive(Debug, Clone, Default)]
struct RawDue {
    id: i64,
    event_id: Option<Uuid>,
    first_failed_at: chrono::DateTime<chrono::Utc>,
    /// `jsonb_typeof(payload)`.
    payload_type: String,
    /// `payload->>'event_id'`.
    payload_event_id: Option<String>,
    /// (jsonb_typeof, ->> text) of `seq`, `object_type`, `object_key`, `occurred_at`,
    /// `company_key`.
    seq: (Option<String>, Option<String>),
    object_type: (Option<String>, Option<String>),
    object_key: (Option<String>, Option<String>),
    occurred_at: (Option<String>, Option<String>),
    company_key: (Option<String>, Option<String>),
    /// `payload->'properties'` as JSON text (`null` when absent).
    properties: String,
}

/// A value as JSON shows it, shortened: a string quoted, anything else as its text.
fn shown_json(json_type: Option<&str>, text: &str) -> String {
    let short = crate::core::values::shown(text);
    if json_type == Some("string") {
        format!("\"{short}\"")
    } else {
        short
    }
}

/// A whole number in `bigint`'s range, written as Postgres writes a JSON number (or as a string
/// of one): digits, maybe a sign, maybe a fraction of zeros.
fn whole_number(text: &str) -> Option<i64> {
    let text = text.trim();
    let (int, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    int.parse().ok()
}

/// Rebuilds the event kept in a due row, or says every field that stops it.
fn rebuild(raw: RawDue) -> Result<OutboxEvent, UnreadableRow> {
    let mut problems = Vec::new();
    if raw.event_id.is_none() {
        let hint = match raw.payload_event_id.as_deref().map(str::parse::<Uuid>) {
            Some(Ok(id)) => format!("its payload keeps {id}"),
            _ => "or a new one, gen_random_uuid(), if it is lost".to_string(),
        };
        problems.push(Problem {
            field: "event_id",
            value: None,
            text: format!(
                "event_id is NULL, and an event is replayed under its id; set event_id to the event's id ({hint})"
            ),
        });
    }
    if raw.payload_type != "object" {
        problems.push(Problem {
            field: "payload",
            value: Some(raw.payload_type.clone()),
            text: format!(
                "payload is a JSON {}, not the object an event row keeps (event_id, object_type, object_key, occurred_at, company_key, seq, properties); put that object back",
                raw.payload_type
            ),
        });
        return Err(unreadable_event(raw.id, &problems));
    }
    // Absent or null: 0 (the sequence only breaks ties between events of the same time).
    let seq = match (raw.seq.0.as_deref(), raw.seq.1.as_deref()) {
        (_, None) => 0,
        (kind, Some(text)) => match kind
            .filter(|k| matches!(*k, "number" | "string"))
            .and_then(|_| whole_number(text))
        {
            Some(n) => n,
            None => {
                let value = shown_json(kind, text);
                problems.push(Problem {
                    field: "seq",
                    text: format!(
                        "payload field seq is {value}, not a whole number from {} to {}; set it to one (it orders events that happened at the same time) or remove it",
                        i64::MIN,
                        i64::MAX
                    ),
                    value: Some(value),
                });
                0
            }
        },
    };
    // A text field: a string (or a number, as its text); absent or null when `optional`.
    let mut text_field = |name: &'static str,
                          (kind, text): &(Option<String>, Option<String>),
                          optional: bool,
                          what: &str|
     -> Option<String> {
        match (kind.as_deref(), text) {
            (Some("string" | "number"), Some(text)) => return Some(text.clone()),
            (None | Some("null"), _) if optional => return None,
            _ => {}
        }
        let value = text.as_deref().map(|t| shown_json(kind.as_deref(), t));
        let is = match (kind.as_deref(), &value) {
            (None | Some("null"), _) => "missing".to_string(),
            (Some(kind), Some(value)) => format!("a JSON {kind}, {value}"),
            (Some(kind), None) => format!("a JSON {kind}"),
        };
        problems.push(Problem {
            field: name,
            value,
            text: format!("payload field {name} is {is}; set it to {what}"),
        });
        None
    };
    let object_type = text_field(
        "object_type",
        &raw.object_type,
        false,
        "\"contact\" or \"company\"",
    );
    let object_key = text_field(
        "object_key",
        &raw.object_key,
        false,
        "the contact's email or the company's key",
    );
    let company_key = text_field(
        "company_key",
        &raw.company_key,
        true,
        "the company's key as a string, or null",
    );
    let occurred_at = text_field(
        "occurred_at",
        &raw.occurred_at,
        true,
        "an RFC 3339 time such as \"2026-01-31T12:00:00Z\", or remove it",
    );
    let occurred_at = match occurred_at {
        None => raw.first_failed_at,
        Some(text) => match parse_occurred_at(&text) {
            Ok(t) => t,
            Err(_) => {
                let value = shown_json(raw.occurred_at.0.as_deref(), &text);
                problems.push(Problem {
                    field: "occurred_at",
                    text: format!(
                        "payload field occurred_at is {value}, not an RFC 3339 time between 1970-01-01 and 9999-12-31; set it to when the event happened (such as \"2026-01-31T12:00:00Z\"), or remove it to use the time the row first failed"
                    ),
                    value: Some(value),
                });
                raw.first_failed_at
            }
        },
    };
    let Some(event_id) = raw.event_id.filter(|_| problems.is_empty()) else {
        return Err(unreadable_event(raw.id, &problems));
    };
    Ok(OutboxEvent {
        seq,
        event_id,
        object_type: object_type.unwrap_or_default(),
        object_key: object_key.unwrap_or_default(),
        properties: raw.properties,
        occurred_at: Ok(occurred_at),
        company_key,
        enqueued_at: None,
    })
}

/// Claims dead-lettered events that are due for replay, rebuilt as outbox events, and marks
/// them processed now in the ledger (re-adding entries pruned meanwhile): a copy the producer
/// sends again within the retention period after the replay stays a no-op. A row that cannot be
/// rebuilt (a field edited into something hubsync cannot read) comes back in `unreadable`
/// instead of failing the statement. At most about `CLAIM_BYTES` of events are taken at once,
/// as for the outbox. Locks: the claimed DLQ rows and their ledger rows until
/// the caller's transaction ends (`SKIP LOCKED` for the DLQ rows; ledger rows before any object
/// row, as ingest takes them).
pub(crate) async fn claim_due_events(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<DueEvents, sqlx::Error> {
    // Nothing here casts a payload field: each comes as its JSON type and text, judged in
    // `rebuild`.
    let payload_bytes = super::ingest::jsonb_bytes("payload");
    let sql = format!(
        "WITH locked AS MATERIALIZED (
             SELECT id, next_retry_at, {payload_bytes} AS bytes
             FROM hubsync.dlq
             WHERE kind = 'event' AND next_retry_at <= now()
             ORDER BY next_retry_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), due AS MATERIALIZED (
             -- As for the outbox: at most about CLAIM_BYTES of events per round (at least one);
             -- the rest stay due for the next.
             SELECT id FROM (
                 SELECT id, sum(bytes) OVER (ORDER BY next_retry_at, id) - bytes AS before
                 FROM locked) s
             WHERE s.before < $2
         ), processed AS (
             INSERT INTO hubsync.ledger (event_id)
             SELECT d.event_id FROM hubsync.dlq d JOIN due USING (id)
             WHERE d.event_id IS NOT NULL ORDER BY d.event_id
             ON CONFLICT (event_id) DO UPDATE SET processed_at = now()
         )
         SELECT d.id, d.event_id, d.first_failed_at,
                jsonb_typeof(d.payload) AS payload_type,
                d.payload->>'event_id' AS payload_event_id,
                jsonb_typeof(d.payload->'seq') AS seq_type, d.payload->>'seq' AS seq,
                jsonb_typeof(d.payload->'object_type') AS object_type_type,
                d.payload->>'object_type' AS object_type,
                jsonb_typeof(d.payload->'object_key') AS object_key_type,
                d.payload->>'object_key' AS object_key,
                jsonb_typeof(d.payload->'occurred_at') AS occurred_at_type,
                d.payload->>'occurred_at' AS occurred_at,
                jsonb_typeof(d.payload->'company_key') AS company_key_type,
                d.payload->>'company_key' AS company_key,
                coalesce(d.payload->'properties', 'null'::jsonb)::text AS properties
         FROM hubsync.dlq d JOIN due USING (id)
         ORDER BY d.id"
    );
    let rows = sqlx::query(&sql)
        .bind(limit)
        .bind(super::ingest::CLAIM_BYTES)
        .fetch_all(&mut *tx)
        .await?;
    let mut due = DueEvents::default();
    for r in &rows {
        let pair = |name: &str| -> Result<(Option<String>, Option<String>), sqlx::Error> {
            Ok((
                r.try_get(format!("{name}_type").as_str())?,
                r.try_get(name)?,
            ))
        };
        let raw = RawDue {
            id: r.try_get("id")?,
            event_id: r.try_get("event_id")?,
            first_failed_at: r.try_get("first_failed_at")?,
            payload_type: r
                .try_get::<Option<String>, _>("payload_type")?
                .unwrap_or_default(),
            payload_event_id: r.try_get("payload_event_id")?,
            seq: pair("seq")?,
            object_type: pair("object_type")?,
            object_key: pair("object_key")?,
            occurred_at: pair("occurred_at")?,
            company_key: pair("company_key")?,
            properties: r
                .try_get::<Option<String>, _>("properties")?
                .unwrap_or_else(|| "null".into()),
        };
        let id = raw.id;
        match rebuild(raw) {
            Ok(event) => due.events.push((id, event)),
            Err(row) => due.unreadable.push(row),
        }
    }
    Ok(due)
}

/// Parks due rows that cannot be replayed as they stand: `next_retry_at` NULL, the message
/// saying what to fix, one more attempt; an event row also gets its new category and detail.
/// A row no longer due (parked meanwhile by another worker) is left as it is. Returns how many
/// were parked. Locks: those DLQ rows (already held when claimed; after the object rows
/// otherwise).
pub(crate) async fn park_unreadable_rows(
    tx: &mut PgConnection,
    rows: &[UnreadableRow],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let parked: Vec<i64> = sqlx::query_scalar(
        "UPDATE hubsync.dlq d
         SET next_retry_at = NULL, error_message = u.message,
             error_category = coalesce(u.category, d.error_category),
             error = CASE WHEN u.error IS NULL THEN d.error ELSE u.error::jsonb END,
             attempts = d.attempts + 1, last_failed_at = now()
         FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[])
              AS u(id, message, category, error)
         WHERE d.id = u.id AND d.next_retry_at <= now()
         RETURNING d.id",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message.clone()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.category.map(|c| c.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    for r in rows.iter().filter(|r| parked.contains(&r.id)) {
        tracing::warn!(dlq_id = r.id, "dead-letter row parked again: {}", r.message);
    }
    Ok(parked.len() as u64)
}

/// An `occurred_at` kept in a DLQ payload (RFC 3339 as hubsync wrote it), within the bounds
/// the outbox claim applies; anything else comes back as its text.
fn parse_occurred_at(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::Datelike;
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
        .filter(|t| (1970..=9999).contains(&t.year()))
        .ok_or_else(|| text.to_string())
}

/// Deletes DLQ rows that were replayed successfully. Locks: those rows.
pub(crate) async fn delete_rows(tx: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM hubsync.dlq WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// An object row that cannot be replayed: its object type is not one hubsync writes, or no
/// object has its key. It keeps its category and HubSpot's error.
fn unreadable_object(id: i64, problem: Problem) -> UnreadableRow {
    UnreadableRow {
        id,
        category: None,
        message: unreadable_message(id, std::slice::from_ref(&problem)),
        error: None,
    }
}

/// Marks the objects of due DLQ object rows dirty again, with nothing held back, so the next
/// sync resends their whole current state; the row stays until a sync succeeds or fails again,
/// pushed ahead by `round` (how long the object's tries in a row may take), at least an hour,
/// so that it does not come due again while they go on. A row naming an object type hubsync
/// does not write, or an object not in `hubsync.objects`, is parked again saying so. Locks, in
/// the order `db` states: the objects in key order, then their DLQ rows (the due rows are
/// found without locking first, and re-checked once locked).
pub async fn requeue_due_objects(
    pool: &PgPool,
    limit: i64,
    round: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let due: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, object_type, object_key FROM hubsync.dlq
         WHERE kind = 'object' AND next_retry_at <= now()
         ORDER BY next_retry_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut requeued = 0;
    // An association's row is keyed by its contact: replaying it makes the contact's
    // association due again.
    let types = [
        ("contact", ObjectType::Contact),
        ("company", ObjectType::Company),
        ("association", ObjectType::Contact),
    ];
    let strangers: Vec<UnreadableRow> = due
        .iter()
        .filter(|(_, t, _)| !types.iter().any(|(name, _)| name == t))
        .map(|(id, t, _)| {
            unreadable_object(
                *id,
                Problem {
                    field: "object_type",
                    value: Some(crate::core::values::shown(t)),
                    text: format!(
                        "object_type \"{}\" is not one an object row can have; set it to 'contact', 'company' or 'association'",
                        crate::core::values::shown(t)
                    ),
                },
            )
        })
        .collect();
    if !strangers.is_empty() {
        let mut tx = pool.begin().await?;
        requeued += park_unreadable_rows(&mut tx, &strangers).await?;
        tx.commit().await?;
    }
    for (object_type, row_type) in types {
        let mut keys: Vec<String> = due
            .iter()
            .filter(|(_, t, _)| t == object_type)
            .map(|(_, _, k)| k.clone())
            .collect();
        if keys.is_empty() {
            continue;
        }
        keys.sort();
        let (mut tx, locked) = super::objects::begin_locked(pool, row_type, &keys).await?;
        // A key not locked is held by another session (its row stays due for the next round),
        // or names no object at all: that row is parked, since nothing can be sent for it.
        let unlocked: Vec<&String> = keys.iter().filter(|k| !locked.contains(k)).collect();
        if !unlocked.is_empty() {
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT object_key FROM hubsync.objects
                 WHERE object_type = $1 AND object_key = ANY($2)",
            )
            .bind(row_type.as_str())
            .bind(&unlocked)
            .fetch_all(&mut *tx)
            .await?;
            let missing: Vec<UnreadableRow> = due
                .iter()
                .filter(|(_, t, k)| {
                    t == object_type && unlocked.contains(&k) && !found.contains(k)
                })
                .map(|(id, _, k)| {
                    let key = crate::core::values::shown(k);
                    let whose = if object_type == "association" {
                        " (an association row is keyed by its contact)"
                    } else {
                        ""
                    };
                    unreadable_object(
                        *id,
                        Problem {
                            field: "object_key",
                            value: Some(key.clone()),
                            text: format!(
                                "object_key \"{key}\" names no {} in hubsync.objects{whose}, so nothing can be sent for it; set it to the key hubsync.objects has for the object (a contact's email in lower case, a company's key as sent)",
                                row_type.as_str()
                            ),
                        },
                    )
                })
                .collect();
            requeued += park_unreadable_rows(&mut tx, &missing).await?;
        }
        let still_due: Vec<String> = sqlx::query_scalar(
            "UPDATE hubsync.dlq
             SET next_retry_at = now() + greatest(interval '1 hour', make_interval(secs => $3))
             WHERE kind = 'object' AND object_type = $1 AND object_key = ANY($2)
               AND next_retry_at <= now()
             RETURNING object_key",
        )
        .bind(object_type)
        .bind(&locked)
        .bind(round.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        if object_type == "association" {
            // A parked association is due at once, with its tries counted anew. One already
            // on its way again (taken by a worker, waiting to retry, or waiting for a pair that
            // may still land to be removed: `resume_association`) is left alone: clearing a
            // worker's lease would let another send a second company for the same contact.
            requeued += sqlx::query(
                "UPDATE hubsync.objects SET association_attempts = 0, association_next_at = NULL
                 WHERE object_type = 'contact' AND object_key = ANY($1)
                   AND association_next_at = 'infinity'",
            )
            .bind(&still_due)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            continue;
        }
        // The version moves, so a batch in flight cannot record the holds it saw as current.
        requeued += sqlx::query(
            "UPDATE hubsync.objects
             SET dirty = true, next_attempt_at = NULL, attempts = 0, held = NULL,
                 version = version + 1,
                 dirty_since = CASE WHEN dirty THEN dirty_since ELSE now() END
             WHERE object_type = $1 AND object_key = ANY($2)",
        )
        .bind(row_type.as_str())
        .bind(&still_due)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
    }
    Ok(requeued)
}

/// An operator statement from `sql/`, with psql's `:name` / `:'name'` variables.
pub(crate) struct OperatorSql {
    /// File name, for messages.
    pub name: &'static str,
    /// The psql text.
    pub text: &'static str,
}

macro_rules! operator_sql {
    ($($ident:ident => $file:literal),* $(,)?) => {
        $(
            #[doc = concat!("`sql/", $file, "`")]
            pub(crate) const $ident: OperatorSql = OperatorSql {
                name: $file,
                text: include_str!(concat!("../../sql/", $file)),
            };
        )*
    };
}

operator_sql! {
    SUMMARY => "dlq_summary.sql",
    LIST => "dlq_list.sql",
    SHOW => "dlq_show.sql",
    RETRY_ONE => "dlq_retry_one.sql",
    RETRY_CATEGORY => "dlq_retry_category.sql",
    RETRY_ALL => "dlq_retry_all.sql",
    DISCARD_ONE => "dlq_discard_one.sql",
    DISCARD_CATEGORY => "dlq_discard_category.sql",
    DISCARD_ALL => "dlq_discard_all.sql",
    PURGE => "dlq_purge.sql",
    STATUS => "status.sql",
}

/// A value for a psql variable.
#[derive(Debug, Clone)]
pub(crate) enum Var {
    /// Substituted as `:name` (a number).
    Int(i64),
    /// Substituted as `:'name'` (a quoted string).
    Text(String),
}

/// Turns psql text into one statement with `$n` parameters, in the order they appear; psql
/// meta-commands (`\if` …) and comments are dropped.
pub(crate) fn to_statement(text: &str, vars: &[(&str, Var)]) -> Result<(String, Vec<Var>), String> {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('\\') && !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::with_capacity(body.len());
    let mut params: Vec<(String, Var)> = Vec::new();
    let mut rest = body.as_str();
    while let Some(pos) = rest.find(':') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        // `::type` casts are not variables.
        if let Some(stripped) = after.strip_prefix(':') {
            out.push_str("::");
            rest = stripped;
            continue;
        }
        let (quoted, name_start) = match after.strip_prefix('\'') {
            Some(s) => (true, s),
            None => (false, after),
        };
        let len = name_start
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(name_start.len());
        let name = &name_start[..len];
        if name.is_empty() {
            out.push(':');
            rest = after;
            continue;
        }
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("no value given for :{name}"))?;
        let index = match params.iter().position(|(n, _)| n == name) {
            Some(i) => i + 1,
            None => {
                params.push((name.to_string(), value.clone()));
                params.len()
            }
        };
        let cast = match value {
            Var::Int(_) => "::int8",
            Var::Text(_) => "::text",
        };
        out.push_str(&format!("${index}{cast}"));
        rest = if quoted {
            name_start[len..]
                .strip_prefix('\'')
                .unwrap_or(&name_start[len..])
        } else {
            &name_start[len..]
        };
    }
    out.push_str(rest);
    let statement = out.trim().trim_end_matches(';').to_string();
    Ok((statement, params.into_iter().map(|(_, v)| v).collect()))
}

/// Runs an operator statement and returns its rows as (column names, text cells).
pub(crate) async fn run_operator(
    pool: &PgPool,
    sql: &OperatorSql,
    vars: &[(&str, Var)],
) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let (statement, params) =
        to_statement(sql.text, vars).map_err(|e| anyhow::anyhow!("sql/{}: {e}", sql.name))?;
    // Every column comes back as text, in the statement's column order, as psql shows it.
    let final_sql = format!(
        "WITH r AS ({statement}), n AS (SELECT row_number() OVER () AS rn, row_to_json(r) AS j FROM r)
         SELECT n.rn, e.key, e.value FROM n, json_each_text(n.j) WITH ORDINALITY AS e(key, value, ord)
         ORDER BY n.rn, e.ord"
    );
    // The statement is one of our own sql/ files; values travel as bind parameters.
    let mut q = sqlx::query_as::<_, (i64, String, Option<String>)>(&(final_sql));
    for p in params {
        q = match p {
            Var::Int(i) => q.bind(i),
            Var::Text(t) => q.bind(t),
        };
    }
    let cells: Vec<(i64, String, Option<String>)> = q
        .fetch_all(pool)
        .await
        .map_err(|e| anyhow::anyhow!("sql/{} failed: {e}", sql.name))?;
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut current = None;
    for (rn, key, value) in cells {
        if current != Some(rn) {
            current = Some(rn);
            rows.push(Vec::new());
        }
        if rows.len() == 1 {
            columns.push(key);
        }
        if let Some(row) = rows.last_mut() {
            row.push(value.unwrap_or_default());
        }
    }
    Ok((columns, rows))
}

/// One row's category and message, as `hubsync demo` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// `error_category`
    pub category: String,
    /// `error_message`
    pub message: String,
}

/// Every row's category and message, oldest first. Locks nothing.
pub async fn reasons(pool: &PgPool) -> Result<Vec<Reason>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT error_category, error_message FROM hubsync.dlq ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(category, message)| Reason { category, message })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_variables_become_parameters() {
        let (s, p) = to_statement(
            "-- c\n\\if x\nSELECT a::text FROM t WHERE (:'category' = '' OR c = :'category') LIMIT :limit;",
            &[("category", Var::Text("x".into())), ("limit", Var::Int(5))],
        )
        .unwrap();
        assert_eq!(
            s,
            "SELECT a::text FROM t WHERE ($1::text = '' OR c = $1::text) LIMIT $2::int8"
        );
        assert_eq!(p.len(), 2);
        assert!(to_statement("SELECT :id", &[]).is_err());
    }

    #[test]
    fn a_seq_is_read_only_as_a_whole_number_in_range() {
        assert_eq!(whole_number("42"), Some(42));
        assert_eq!(whole_number(" -7 "), Some(-7));
        assert_eq!(whole_number("53.000"), Some(53));
        assert_eq!(whole_number("9223372036854775807"), Some(i64::MAX));
        for bad in ["abc", "53.5", "9223372036854775808", "1e3", "", "."] {
            assert_eq!(whole_number(bad), None, "{bad}");
        }
    }

    fn field(kind: &str, text: &str) -> (Option<String>, Option<String>) {
        (Some(kind.into()), Some(text.into()))
    }

    fn raw() -> RawDue {
        RawDue {
            id: 7,
            event_id: Some(Uuid::nil()),
            payload_type: "object".into(),
            seq: field("number", "12"),
            object_type: field("string", "contact"),
            object_key: field("string", "a@acme.com"),
            occurred_at: field("string", "2026-01-31T12:00:00Z"),
            properties: "{}".into(),
            ..RawDue::default()
        }
    }

    #[test]
    fn a_due_row_is_rebuilt_or_every_wrong_field_is_named() {
        let event = rebuild(raw()).unwrap();
        assert_eq!((event.seq, event.company_key), (12, None));
        assert_eq!(event.object_key, "a@acme.com");
        // An absent seq and occurred_at: 0 and the time the row first failed.
        let event = rebuild(RawDue {
            seq: (None, None),
            occurred_at: (Some("null".into()), None),
            ..raw()
        })
        .unwrap();
        assert_eq!(event.seq, 0);
        assert_eq!(
            event.occurred_at,
            Ok(chrono::DateTime::<chrono::Utc>::default())
        );

        let row = rebuild(RawDue {
            event_id: None,
            seq: field("string", "abc"),
            object_key: field("array", "[1]"),
            company_key: field("boolean", "true"),
            occurred_at: field("string", "infinity"),
            ..raw()
        })
        .unwrap_err();
        assert_eq!(row.id, 7);
        assert_eq!(row.category, Some(Category::InvalidEvent));
        for part in [
            "hubsync.dlq row 7",
            "event_id is NULL",
            "seq is \"abc\"",
            "object_key is a JSON array, [1]",
            "company_key is a JSON boolean",
            "occurred_at is \"infinity\"",
            "hubsync dlq retry 7",
            "hubsync dlq discard 7",
        ] {
            assert!(row.message.contains(part), "{part}: {}", row.message);
        }
        let error: serde_json::Value = serde_json::from_str(row.error.as_deref().unwrap()).unwrap();
        assert_eq!(error["detail"]["unreadable"].as_array().unwrap().len(), 5);

        let row = rebuild(RawDue {
            payload_type: "string".into(),
            ..raw()
        })
        .unwrap_err();
        assert!(
            row.message.contains("payload is a JSON string"),
            "{}",
            row.message
        );
    }

    #[test]
    fn every_operator_file_converts() {
        let vars = [
            ("category", Var::Text(String::new())),
            ("limit", Var::Int(1)),
            ("id", Var::Int(1)),
            ("days", Var::Int(30)),
        ];
        for sql in [
            SUMMARY,
            LIST,
            SHOW,
            RETRY_ONE,
            RETRY_CATEGORY,
            RETRY_ALL,
            DISCARD_ONE,
            DISCARD_CATEGORY,
            DISCARD_ALL,
            PURGE,
            STATUS,
        ] {
            let (s, _) = to_statement(sql.text, &vars).unwrap();
            assert!(!s.contains(':') || s.contains("::"), "{}: {s}", sql.name);
        }
    }
}
