//! Every request body hubsync sends HubSpot, built here (`docs/hubspot-behaviour.md` §2, §6).

use serde_json::{Map, Value, json};

/// One batch-upsert input: the key, its trace id and the properties (all strings).
pub(crate) struct UpsertInput<'a> {
    /// The normalised key, sent as `id`.
    pub key: &'a str,
    /// The unique `objectWriteTraceId`.
    pub trace_id: &'a str,
    /// Property values.
    pub properties: &'a Map<String, Value>,
}

/// `POST .../batch/upsert`: every input by `key_property`, with its own trace id.
pub(crate) fn upsert_body<'a>(
    key_property: &str,
    inputs: impl IntoIterator<Item = UpsertInput<'a>>,
) -> Value {
    let items: Vec<Value> = inputs
        .into_iter()
        .map(|input| {
            json!({
                "id": input.key,
                "idProperty": key_property,
                "objectWriteTraceId": input.trace_id,
                "properties": input.properties,
            })
        })
        .collect();
    json!({ "inputs": items })
}

/// `POST .../batch/associate/default`: (contact id, company id) pairs.
pub(crate) fn associate_body(pairs: &[(String, String)]) -> Value {
    let inputs: Vec<Value> = pairs
        .iter()
        .map(|(contact, company)| json!({"from": {"id": contact}, "to": {"id": company}}))
        .collect();
    json!({ "inputs": inputs })
}

/// `POST .../batch/archive`: removes (contact id, company id) associations.
pub(crate) fn archive_body(pairs: &[(String, String)]) -> Value {
    let inputs: Vec<Value> = pairs
        .iter()
        .map(|(contact, company)| json!({"from": {"id": contact}, "to": [{"id": company}]}))
        .collect();
    json!({ "inputs": inputs })
}
