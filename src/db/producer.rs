//! The producer side, as an application calls it: `hubsync.enqueue`. hubsync itself only
//! enqueues in `hubsync demo`; applications write the same call in their own code.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::core::vocabulary::ObjectType;

/// One event for `hubsync.enqueue`.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// The producer's idempotency key.
    pub event_id: Uuid,
    /// Contact or company.
    pub object_type: ObjectType,
    /// Email or company key, as the producer has it.
    pub object_key: &'a str,
    /// Property name → value.
    pub properties: &'a Value,
    /// When it happened (`None`: now).
    pub occurred_at: Option<DateTime<Utc>>,
    /// The company a contact belongs to.
    pub company_key: Option<&'a str>,
}

/// Calls `hubsync.enqueue` with named arguments. Returns whether the event was queued (false:
/// its id is already waiting or was processed). Locks: the new outbox row.
pub async fn enqueue(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT hubsync.enqueue(event_id => $1, object_type => $2, object_key => $3,
                                properties => $4::jsonb,
                                occurred_at => coalesce($5, now()), company_key => $6)",
    )
    .bind(event.event_id)
    .bind(event.object_type.as_str())
    .bind(event.object_key)
    .bind(event.properties.to_string())
    .bind(event.occurred_at)
    .bind(event.company_key)
    .fetch_one(conn)
    .await
}
