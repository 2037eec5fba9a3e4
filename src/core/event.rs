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
use super::values::{
    MAX_LISTED, ValueError, listed, normalize_email, parse_properties, serialize_value, shown,
};
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
    // Every unknown name and invalid value is counted; the first MAX_LISTED of each are kept
    // for the message and the detail.
    let (mut unknown, mut unknown_count) = (Vec::new(), 0usize);
    let (mut invalid, mut invalid_count) = (Vec::<ValueError>::new(), 0usize);
    for (name, value) in &props {
        let Some(def) = objects.properties.get(name) else {
            unknown_count += 1;
            if unknown.len() < MAX_LISTED {
                unknown.push((name, value));
            }
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
                invalid_count += 1;
                if invalid.len() < MAX_LISTED {
                    invalid.push(e);
                }
            }
        }
    }
    if unknown_count + invalid_count > 0 {
        let mut problems: Vec<Value> = unknown
            .iter()
            .map(|(name, value)| json!({"property": shown(name), "value": shown(&value.to_json_text()), "reason": "not declared in hubsync.toml"}))
            .collect();
        problems.extend(invalid.iter().map(
            |e| json!({"property": e.property, "value": shown(&e.value), "reason": e.reason}),
        ));
        let not_listed = unknown_count + invalid_count - problems.len();
        let mut detail = json!({ "problems": problems });
        if not_listed > 0 {
            detail["problems_not_listed"] = json!(not_listed);
        }
        let invalid_text = listed(
            invalid.iter().map(ToString::to_string),
            invalid_count,
            "; ",
            "invalid values",
        );
        if unknown_count == 0 {
            return Err(refuse(Category::InvalidValue, invalid_text, detail));
        }
        let one = unknown_count == 1;
        let mut message = format!(
            "{} {} not declared for {} in hubsync.toml; declare {} under [{}.properties.<name>] or stop sending {}",
            if one { "property" } else { "properties" },
            listed(
                unknown
                    .iter()
                    .map(|(name, _)| format!("\"{}\"", shown(name))),
                unknown_count,
                ", ",
                "",
            ),
            kind.plural(),
            if one { "it" } else { "them" },
            kind.plural(),
            if one { "it" } else { "them" },
        );
        if invalid_count > 0 {
            message.push_str("; also ");
            message.push_str(&invalid_text);
        }
        return Err(refuse(Category::UnknownProperty, message, detail));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::core::vocabulary::{MergeRule, ObjectConfig, PropertyDef, PropertyType};

    fn contacts() -> ObjectConfig {
        let def = |name: &str, ptype: PropertyType| PropertyDef {
            name: name.into(),
            ..PropertyDef::test(ptype, MergeRule::Set)
        };
        let plans = PropertyType::Enumeration {
            options: (0..30).map(|n| format!("plan_{n:02}")).collect(),
            multiple: false,
        };
        ObjectConfig {
            properties: [
                ("score".to_string(), def("score", PropertyType::Number)),
                ("plan".to_string(), def("plan", plans)),
            ]
            .into(),
            lines: BTreeMap::new(),
        }
    }

    fn event(properties: String) -> OutboxEvent {
        OutboxEvent {
            seq: 1,
            event_id: Uuid::from_u128(1),
            object_type: "contact".into(),
            object_key: "a@acme.com".into(),
            properties,
            occurred_at: Ok(Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap()),
            company_key: None,
            enqueued_at: None,
        }
    }

    fn refused(properties: String) -> Refusal {
        let contacts = contacts();
        let declared = Declared {
            contacts: &contacts,
            companies: None,
        };
        prepare(&event(properties), declared).expect_err("refused")
    }

    fn object(entries: impl Iterator<Item = String>) -> String {
        format!("{{{}}}", entries.collect::<Vec<_>>().join(","))
    }

    #[test]
    fn twenty_thousand_unknown_properties_give_a_short_message_and_detail() {
        let r = refused(object((0..20_000).map(|n| format!(r#""u{n:05}":{n}"#))));
        assert_eq!(r.category, Category::UnknownProperty);
        let m = &r.message;
        assert!(m.len() < 1_000, "{} bytes: {m}", m.len());
        assert!(m.starts_with(r#"properties "u00000", "u00001", "#), "{m}");
        assert!(
            m.contains(r#""u00019", and 19980 more not declared for contacts"#),
            "{m}"
        );
        assert!(!m.contains("u00020"), "{m}");
        assert!(m.contains("[contacts.properties.<name>]"), "{m}");
        let detail = r.detail.to_string();
        assert!(detail.len() < 4_000, "{} bytes: {detail}", detail.len());
        assert_eq!(r.detail["problems"].as_array().unwrap().len(), 20);
        assert_eq!(r.detail["problems_not_listed"], 19_980);
    }

    #[test]
    fn twenty_thousand_invalid_values_give_a_short_message_and_detail() {
        // One property holds one value: many invalid values need many declared properties.
        let many: ObjectConfig = ObjectConfig {
            properties: (0..20_000)
                .map(|n| {
                    let name = format!("n{n:05}");
                    let def = PropertyDef {
                        name: name.clone(),
                        ..PropertyDef::test(PropertyType::Number, MergeRule::Set)
                    };
                    (name, def)
                })
                .collect(),
            lines: BTreeMap::new(),
        };
        let declared = Declared {
            contacts: &many,
            companies: None,
        };
        let e = event(object((0..20_000).map(|n| format!(r#""n{n:05}":"{n}""#))));
        let r = prepare(&e, declared).expect_err("refused");
        assert_eq!(r.category, Category::InvalidValue);
        assert!(r.message.len() < 4_000, "{} bytes", r.message.len());
        assert!(r.message.contains("property \"n00000\""), "{}", r.message);
        assert!(
            r.message.contains("and 19980 more invalid values"),
            "{}",
            r.message
        );
        assert!(r.detail.to_string().len() < 8_000);
        assert_eq!(r.detail["problems"].as_array().unwrap().len(), 20);
        assert_eq!(r.detail["problems_not_listed"], 19_980);
        // Unknown and invalid together: each list is capped.
        let mut mixed: Vec<String> = (0..100).map(|n| format!(r#""u{n:03}":1"#)).collect();
        mixed.extend((0..100).map(|n| format!(r#""n{n:05}":"x""#)));
        let r = prepare(&event(object(mixed.into_iter())), declared).expect_err("refused");
        assert_eq!(r.category, Category::UnknownProperty);
        assert!(
            r.message.contains(", and 80 more not declared"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("and 80 more invalid values"),
            "{}",
            r.message
        );
        assert_eq!(r.detail["problems"].as_array().unwrap().len(), 40);
        assert_eq!(r.detail["problems_not_listed"], 160);
    }

    #[test]
    fn a_huge_value_or_name_is_not_copied_whole_into_the_message_or_detail() {
        let huge = "x".repeat(1_000_000);
        let r = refused(format!(
            r#"{{"nickname":"{huge}","score":"{huge}","{huge}":1}}"#
        ));
        assert!(r.message.len() < 1_000, "{} bytes", r.message.len());
        assert!(
            r.detail.to_string().len() < 2_000,
            "{} bytes",
            r.detail.to_string().len()
        );
    }

    #[test]
    fn a_short_list_is_given_whole() {
        let r = refused(r#"{"nope":1,"score":"47"}"#.into());
        assert!(
            r.message.starts_with(
                r#"property "nope" not declared for contacts in hubsync.toml; declare it under"#
            ),
            "{}",
            r.message
        );
        assert!(
            r.message.contains(r#"also property "score": value "47""#),
            "{}",
            r.message
        );
        assert_eq!(r.detail["problems"].as_array().unwrap().len(), 2);
        assert!(
            r.detail.get("problems_not_listed").is_none(),
            "{}",
            r.detail
        );
        // An option list longer than a message lists is cut the same way.
        let r = refused(r#"{"plan":"gold"}"#.into());
        assert!(r.message.contains("plan_19, and 10 more]"), "{}", r.message);
        assert!(!r.message.contains("plan_20"), "{}", r.message);
    }
}
