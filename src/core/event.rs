//! Turning one outbox event into contributions to one object, or into a refusal: pure.
//!
//! An event is accepted or refused whole. Applying part of an event would make a later replay
//! from the DLQ apply its valid part twice (an `increment` counted twice), so an event with one
//! bad property is dead-lettered with all of them, and replays exactly once after the fix.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::dlq::Category;

use super::merge::Contribution;
use super::values::{normalize_email, parse_properties, serialize_value, shown};
use super::vocabulary::{Declared, ObjectType};

/// One outbox row, as claimed. Every column is read in a form that cannot fail to decode, so
/// whatever a producer wrote reaches validation, where it is folded or dead-lettered.
#[derive(Debug, Clone)]
pub(crate) struct OutboxEvent {
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
    /// When it happened, or the time as Postgres wrote it when it is outside 1970-01-01 to
    /// 9999-12-31 (`infinity`, a year past what a timestamp here can hold): refused at
    /// validation.
    pub occurred_at: Result<DateTime<Utc>, String>,
    /// Company to associate a contact with.
    pub company_key: Option<String>,
    /// When the row entered the outbox (none for an event replayed from the DLQ).
    pub enqueued_at: Option<DateTime<Utc>>,
}

/// An accepted event: what it contributes to which object.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Contact or company.
    pub kind: ObjectType,
    /// Normalised key.
    pub key: String,
    /// (property, contribution), in property-name order.
    pub contributions: Vec<(String, Contribution)>,
    /// Company key, for contacts.
    pub company_key: Option<String>,
    /// occurred_at, microseconds.
    pub at: i64,
    /// Outbox sequence.
    pub seq: i64,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// One of [`Category::EVENT`].
    pub category: Category,
    /// Property, value and reason.
    pub message: String,
    /// Structured detail for `hubsync.dlq.error`.
    pub detail: Value,
}

/// Longest company key: HubSpot's unique property values are short text, and the key is
/// indexed in `hubsync.objects`.
pub(crate) const MAX_COMPANY_KEY_CHARS: usize = 255;

/// A company key, trimmed and within bounds; the reason otherwise.
fn company_key(raw: &str) -> Result<String, String> {
    let key = raw.trim();
    if key.is_empty() {
        return Err("is empty; companies are keyed by their unique id".into());
    }
    let chars = key.chars().count();
    if chars > MAX_COMPANY_KEY_CHARS {
        return Err(format!(
            "\"{}\" is {chars} characters long; a company key has at most {MAX_COMPANY_KEY_CHARS}",
            shown(key)
        ));
    }
    Ok(key.to_string())
}

fn refuse(category: Category, message: String, detail: Value) -> Refusal {
    Refusal {
        category,
        message,
        detail,
    }
}

/// Keeps the first occurrence of each event whose id is in `fresh` (newly recorded in the
/// ledger); drops repeats of processed events and duplicates within the chunk.
pub(crate) fn dedupe(events: Vec<OutboxEvent>, fresh: &HashSet<Uuid>) -> Vec<OutboxEvent> {
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(events.len());
    events
        .into_iter()
        .filter(|e| fresh.contains(&e.event_id) && seen.insert(e.event_id))
        .collect()
}

/// Validates an event against what the config declares and prepares its contributions.
pub(crate) fn prepare(event: &OutboxEvent, declared: Declared<'_>) -> Result<Prepared, Refusal> {
    let Some(kind) = ObjectType::parse(&event.object_type) else {
        return Err(refuse(
            Category::InvalidEvent,
            format!(
                "object_type \"{}\" is not known; use 'contact' or 'company'",
                shown(&event.object_type)
            ),
            json!({"field": "object_type", "value": shown(&event.object_type)}),
        ));
    };
    let occurred_at = match &event.occurred_at {
        Ok(t) => *t,
        Err(text) => {
            return Err(refuse(
                Category::InvalidEvent,
                format!(
                    "occurred_at {} is not a time between 1970-01-01 and 9999-12-31; enqueue the event with the time it happened (or leave occurred_at out for now())",
                    shown(text)
                ),
                json!({"field": "occurred_at", "value": shown(text)}),
            ));
        }
    };
    let (objects, key) = match kind {
        ObjectType::Contact => {
            let key = normalize_email(&event.object_key).map_err(|reason| {
                refuse(
                    Category::InvalidKey,
                    format!("object_key: {reason}; contacts are keyed by email"),
                    json!({"field": "object_key", "value": shown(&event.object_key), "reason": reason}),
                )
            })?;
            (declared.contacts, key)
        }
        ObjectType::Company => {
            let Some(companies) = declared.companies else {
                return Err(refuse(
                    Category::InvalidEvent,
                    "a company event arrived but hubsync.toml has no [companies] table; add one with id_property".into(),
                    json!({"field": "object_type", "value": "company"}),
                ));
            };
            let key = company_key(&event.object_key).map_err(|reason| {
                refuse(
                    Category::InvalidKey,
                    format!("object_key {reason}"),
                    json!({"field": "object_key", "value": shown(&event.object_key), "reason": reason}),
                )
            })?;
            (&companies.objects, key)
        }
    };
    let props = parse_properties(&event.properties).map_err(|reason| {
        refuse(
            Category::InvalidEvent,
            format!("properties: {reason}"),
            json!({"field": "properties", "reason": reason}),
        )
    })?;
    let at = occurred_at.timestamp_micros();
    let mut contributions = Vec::with_capacity(props.len());
    let mut unknown: Vec<String> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    let mut details: Vec<Value> = Vec::new();
    for (name, value) in &props {
        let Some(def) = objects.properties.get(name) else {
            unknown.push(name.clone());
            details.push(json!({"property": name, "value": value.to_json_text(), "reason": "not declared in hubsync.toml"}));
            continue;
        };
        match serialize_value(def, value) {
            Ok(v) => contributions.push((
                name.clone(),
                Contribution {
                    v,
                    at,
                    seq: event.seq,
                },
            )),
            Err(e) => {
                details.push(json!({"property": name, "value": e.value, "reason": e.reason}));
                invalid.push(e.to_string());
            }
        }
    }
    if !unknown.is_empty() {
        let mut message = format!(
            "{} {} not declared for {} in hubsync.toml; declare {} under [{}.properties.<name>] or stop sending {}",
            if unknown.len() == 1 {
                "property"
            } else {
                "properties"
            },
            unknown
                .iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", "),
            kind.plural(),
            if unknown.len() == 1 { "it" } else { "them" },
            kind.plural(),
            if unknown.len() == 1 { "it" } else { "them" },
        );
        if !invalid.is_empty() {
            message.push_str("; also ");
            message.push_str(&invalid.join("; "));
        }
        return Err(refuse(
            Category::UnknownProperty,
            message,
            json!({"problems": details}),
        ));
    }
    if !invalid.is_empty() {
        return Err(refuse(
            Category::InvalidValue,
            invalid.join("; "),
            json!({"problems": details}),
        ));
    }
    let company_key = match (kind, &event.company_key) {
        (ObjectType::Contact, Some(c)) if !c.trim().is_empty() => {
            if declared.companies.is_none() {
                return Err(refuse(
                    Category::InvalidEvent,
                    format!(
                        "company_key \"{}\" given but hubsync.toml has no [companies] table; add one with id_property, or stop sending company_key",
                        shown(c)
                    ),
                    json!({"field": "company_key", "value": shown(c)}),
                ));
            }
            Some(company_key(c).map_err(|reason| {
                refuse(
                    Category::InvalidKey,
                    format!("company_key {reason}"),
                    json!({"field": "company_key", "value": shown(c), "reason": reason}),
                )
            })?)
        }
        _ => None,
    };
    Ok(Prepared {
        kind,
        key,
        contributions,
        company_key,
        at,
        seq: event.seq,
    })
}

/// The event as it is kept in `hubsync.dlq.payload` (JSON text, numbers exact).
pub(crate) fn payload(event: &OutboxEvent) -> String {
    let properties = serde_json::value::RawValue::from_string(event.properties.clone())
        .unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("null".into()).expect("null is valid JSON")
        });
    let mut map: BTreeMap<&str, Value> = BTreeMap::new();
    map.insert("event_id", json!(event.event_id));
    map.insert("object_type", json!(event.object_type));
    map.insert("object_key", json!(event.object_key));
    map.insert(
        "occurred_at",
        match &event.occurred_at {
            Ok(t) => json!(t.to_rfc3339()),
            Err(text) => json!(text),
        },
    );
    map.insert("company_key", json!(event.company_key));
    map.insert("seq", json!(event.seq));
    let mut text = serde_json::to_string(&map).unwrap_or_else(|_| "{}".into());
    // Splice the properties in as raw text so no digit is lost on the way through a float.
    text.pop();
    text.push_str(",\"properties\":");
    text.push_str(properties.get());
    text.push('}');
    text
}
