//! The dead-letter table: writing failed events at ingest, replaying due rows, and the
//! operator statements of `sql/` (which `hubsync dlq` runs exactly as psql would).

use sqlx::postgres::PgRow;
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

/// Claims dead-lettered events that are due for replay, rebuilt as outbox events, and marks
/// them processed now in the ledger (re-adding entries pruned meanwhile): a copy the producer
/// sends again within the retention period after the replay stays a no-op. Locks: the claimed
/// DLQ rows and their ledger rows until the caller's transaction ends (`SKIP LOCKED` for the
/// DLQ rows; ledger rows before any object row, as ingest takes them).
pub(crate) async fn claim_due_events(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(i64, OutboxEvent)>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS MATERIALIZED (
             SELECT id FROM hubsync.dlq
             WHERE kind = 'event' AND next_retry_at <= now()
             ORDER BY next_retry_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), processed AS (
             INSERT INTO hubsync.ledger (event_id)
             SELECT d.event_id FROM hubsync.dlq d JOIN due USING (id)
             WHERE d.event_id IS NOT NULL ORDER BY d.event_id
             ON CONFLICT (event_id) DO UPDATE SET processed_at = now()
         )
         SELECT d.id, d.event_id,
                coalesce((d.payload->>'seq')::bigint, 0) AS seq,
                d.payload->>'object_type' AS object_type,
                d.payload->>'object_key' AS object_key,
                coalesce(d.payload->'properties', 'null'::jsonb)::text AS properties,
                d.payload->>'occurred_at' AS occurred_at_text, d.first_failed_at,
                d.payload->>'company_key' AS company_key
         FROM hubsync.dlq d JOIN due USING (id)",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r: &PgRow| {
            Ok((
                r.try_get("id")?,
                OutboxEvent {
                    seq: r.try_get("seq")?,
                    event_id: r.try_get("event_id")?,
                    object_type: r
                        .try_get::<Option<String>, _>("object_type")?
                        .unwrap_or_default(),
                    object_key: r
                        .try_get::<Option<String>, _>("object_key")?
                        .unwrap_or_default(),
                    properties: r.try_get("properties")?,
                    // Read as text and parsed here: whatever an operator left in the payload
                    // is refused again at validation instead of failing this statement.
                    occurred_at: match r.try_get::<Option<String>, _>("occurred_at_text")? {
                        Some(text) => parse_occurred_at(&text),
                        None => Ok(r.try_get("first_failed_at")?),
                    },
                    company_key: r.try_get("company_key")?,
                    enqueued_at: None,
                },
            ))
        })
        .collect()
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

/// Marks the objects of due DLQ object rows dirty again, with nothing held back, so the next
/// sync resends their whole current state; the row stays (pushed an hour ahead) until a sync
/// succeeds or fails again. Locks, in the order `db` states: the objects in key order, then
/// their DLQ rows (the due rows are found without locking first, and re-checked once locked).
pub async fn requeue_due_objects(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let due: Vec<(String, String)> = sqlx::query_as(
        "SELECT object_type, object_key FROM hubsync.dlq
         WHERE kind = 'object' AND next_retry_at <= now()
         ORDER BY next_retry_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut requeued = 0;
    // An association's row is keyed by its contact: replaying it makes the contact's
    // association due again.
    for (object_type, row_type) in [
        ("contact", ObjectType::Contact),
        ("company", ObjectType::Company),
        ("association", ObjectType::Contact),
    ] {
        let mut keys: Vec<String> = due
            .iter()
            .filter(|(t, _)| t == object_type)
            .map(|(_, k)| k.clone())
            .collect();
        if keys.is_empty() {
            continue;
        }
        keys.sort();
        let (mut tx, locked) = super::objects::begin_locked(pool, row_type, &keys).await?;
        let still_due: Vec<String> = sqlx::query_scalar(
            "UPDATE hubsync.dlq SET next_retry_at = now() + interval '1 hour'
             WHERE kind = 'object' AND object_type = $1 AND object_key = ANY($2)
               AND next_retry_at <= now()
             RETURNING object_key",
        )
        .bind(object_type)
        .bind(&locked)
        .fetch_all(&mut *tx)
        .await?;
        if object_type == "association" {
            requeued += sqlx::query(
                "UPDATE hubsync.objects SET association_attempts = 0, association_next_at = NULL
                 WHERE object_type = 'contact' AND object_key = ANY($1)",
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
