//! Read-only statements for `hubsync status` and tests.

use sqlx::PgPool;

/// Rows in a `hubsync` table (for tests and the demo). Locks nothing.
pub async fn count(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    let allowed = ["outbox", "ledger", "objects", "dlq"];
    let table = allowed
        .iter()
        .find(|t| **t == table)
        .ok_or_else(|| sqlx::Error::Protocol(format!("unknown table {table}")))?;
    // `table` is one of the fixed names above.
    sqlx::query_scalar(&(format!("SELECT count(*) FROM hubsync.{table}")))
        .fetch_one(pool)
        .await
}

/// The shared queue as the metrics gauges show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QueueGauges {
    /// Rows in `hubsync.outbox`.
    pub backlog: i64,
    /// Age of the oldest outbox row in seconds (0 when empty).
    pub oldest_age_s: f64,
    /// Dirty objects by object type.
    pub dirty: std::collections::BTreeMap<String, i64>,
    /// DLQ rows by category.
    pub dlq: std::collections::BTreeMap<String, i64>,
    /// Requests left today: the fewer of what HubSpot last reported and what
    /// `hubspot.daily_budget` leaves of the portal day, when either is known.
    pub daily_remaining: Option<i64>,
}

/// Reads the queue gauges in one statement. Locks nothing; counts the outbox, the dirty
/// objects (through their partial index) and the DLQ.
pub(crate) async fn queue_gauges(pool: &PgPool) -> Result<QueueGauges, sqlx::Error> {
    let row: (
        i64,
        f64,
        Option<i64>,
        sqlx::types::Json<serde_json::Value>,
        sqlx::types::Json<serde_json::Value>,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM hubsync.outbox),
                    (SELECT coalesce(extract(epoch FROM now() - min(enqueued_at)), 0)::float8
                       FROM hubsync.outbox),
                    (SELECT CASE WHEN daily_budget IS NULL THEN daily_remaining
                                 ELSE least(daily_remaining,
                                            CASE WHEN day_ends IS NULL OR day_ends <= clock_timestamp()
                                                 THEN daily_budget
                                                 ELSE greatest(daily_budget - day_used, 0) END)
                            END
                       FROM hubsync.limiter WHERE name = 'hubspot'),
                    (SELECT coalesce(jsonb_object_agg(object_type, n), '{}')
                       FROM (SELECT object_type, count(*) AS n FROM hubsync.objects
                              WHERE dirty GROUP BY object_type) d),
                    (SELECT coalesce(jsonb_object_agg(error_category, n), '{}')
                       FROM (SELECT error_category, count(*) AS n FROM hubsync.dlq
                              GROUP BY error_category) q)",
    )
    .fetch_one(pool)
    .await?;
    let counts = |v: &serde_json::Value| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(QueueGauges {
        backlog: row.0,
        oldest_age_s: row.1,
        daily_remaining: row.2,
        dirty: counts(&row.3),
        dlq: counts(&row.4),
    })
}

/// The row of `sql/status.sql` as a JSON object (numbers as numbers, NULL as null), and the
/// DLQ rows by category as an object. Locks nothing.
pub(crate) async fn status_row(
    pool: &PgPool,
) -> anyhow::Result<(
    serde_json::Map<String, serde_json::Value>,
    serde_json::Value,
)> {
    let sql = crate::db::dlq::STATUS;
    let statement = sql.text.trim().trim_end_matches(';');
    let (row, dlq): (sqlx::types::Json<serde_json::Value>, sqlx::types::Json<serde_json::Value>) =
        sqlx::query_as(&format!(
            "SELECT row_to_json(r)::jsonb,
                    (SELECT coalesce(jsonb_object_agg(error_category, n ORDER BY error_category), '{{}}')
                       FROM (SELECT error_category, count(*) AS n FROM hubsync.dlq
                              GROUP BY error_category) q)
               FROM ({statement}\n) r"
        ))
        .fetch_one(pool)
        .await
        .map_err(|e| anyhow::anyhow!("sql/{}: {e}", sql.name))?;
    match row.0 {
        serde_json::Value::Object(fields) => Ok((fields, dlq.0)),
        other => anyhow::bail!("sql/{} returned {other} instead of one row", sql.name),
    }
}
