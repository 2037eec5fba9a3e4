//! Turning one outbox event into contributions to one object, or into a refusal: pure.
//!
//! An event is accepted or refused whole. Applying part of an event would make a later replay
//! from the DLQ apply its valid part twice (an `increment` counted twice), so an event with one
//! bad property is dead-lettered with all of them, and replays exactly once after the fix.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Config;
use crate::db::ingest::OutboxEvent;
use crate::schema::{
    Contribution, ObjectKind, normalize_email, parse_properties, serialize_value, shown,
};

/// An accepted event: what it contributes to which object.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Contact or company.
    pub kind: ObjectKind,
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
    /// DLQ category: `invalid_key`, `unknown_property`, `invalid_value`, `invalid_event`.
    pub category: &'static str,
    /// Property, value and reason.
    pub message: String,
    /// Structured detail for `hubsync.dlq.error`.
    pub detail: Value,
}

/// Longest company key: HubSpot's unique property values are short text, and the key is
/// indexed in `hubsync.objects`.
pub const MAX_COMPANY_KEY_CHARS: usize = 255;

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

fn refuse(category: &'static str, message: String, detail: Value) -> Refusal {
    Refusal {
        category,
        message,
        detail,
    }
}

/// Keeps the first occurrence of each event whose id is in `fresh` (newly recorded in the
/// ledger); drops repeats of processed events and duplicates within the chunk.
pub fn dedupe(events: Vec<OutboxEvent>, fresh: &HashSet<Uuid>) -> Vec<OutboxEvent> {
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(events.len());
    events
        .into_iter()
        .filter(|e| fresh.contains(&e.event_id) && seen.insert(e.event_id))
        .collect()
}

/// Validates an event against the config and prepares its contributions.
pub fn prepare(event: &OutboxEvent, config: &Config) -> Result<Prepared, Refusal> {
    let Some(kind) = ObjectKind::parse(&event.object_type) else {
        return Err(refuse(
            "invalid_event",
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
                "invalid_event",
                format!(
                    "occurred_at {} is not a time between 1970-01-01 and 9999-12-31; enqueue the event with the time it happened (or leave occurred_at out for now())",
                    shown(text)
                ),
                json!({"field": "occurred_at", "value": shown(text)}),
            ));
        }
    };
    let (objects, key) = match kind {
        ObjectKind::Contact => {
            let key = normalize_email(&event.object_key).map_err(|reason| {
                refuse(
                    "invalid_key",
                    format!("object_key: {reason}; contacts are keyed by email"),
                    json!({"field": "object_key", "value": shown(&event.object_key), "reason": reason}),
                )
            })?;
            (&config.contacts, key)
        }
        ObjectKind::Company => {
            let Some(companies) = &config.companies else {
                return Err(refuse(
                    "invalid_event",
                    "a company event arrived but hubsync.toml has no [companies] table; add one with id_property".into(),
                    json!({"field": "object_type", "value": "company"}),
                ));
            };
            let key = company_key(&event.object_key).map_err(|reason| {
                refuse(
                    "invalid_key",
                    format!("object_key {reason}"),
                    json!({"field": "object_key", "value": shown(&event.object_key), "reason": reason}),
                )
            })?;
            (&companies.objects, key)
        }
    };
    let props = parse_properties(&event.properties).map_err(|reason| {
        refuse(
            "invalid_event",
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
            "unknown_property",
            message,
            json!({"problems": details}),
        ));
    }
    if !invalid.is_empty() {
        return Err(refuse(
            "invalid_value",
            invalid.join("; "),
            json!({"problems": details}),
        ));
    }
    let company_key = match (kind, &event.company_key) {
        (ObjectKind::Contact, Some(c)) if !c.trim().is_empty() => {
            if config.companies.is_none() {
                return Err(refuse(
                    "invalid_event",
                    format!(
                        "company_key \"{}\" given but hubsync.toml has no [companies] table; add one with id_property, or stop sending company_key",
                        shown(c)
                    ),
                    json!({"field": "company_key", "value": shown(c)}),
                ));
            }
            Some(company_key(c).map_err(|reason| {
                refuse(
                    "invalid_key",
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
pub fn payload(event: &OutboxEvent) -> String {
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
