//! Record endpoints: batch upsert (with HubSpot's whole-request and per-record validation),
//! read-back of one record, and contact→company batch association. Each function runs with the
//! state locked and returns the reply; nothing here waits.

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};

use crate::object_type::ObjectType;
use crate::replies::{Reply, ReplyBody, correlation_id};
use crate::state::{ObjectStore, State, StoredRecord, timestamp};
use crate::types::{PORTAL_ID, SimConfig};
use crate::values::{ValueError, check_email, check_value};

/// HubSpot's limit on inputs per batch request.
const MAX_BATCH_INPUTS: usize = 100;

/// One refused value of one input.
#[derive(Debug, Clone)]
struct Problem {
    name: String,
    error: ValueError,
}

/// An input that passed the whole-request checks.
#[derive(Debug)]
struct Input<'a> {
    /// The `id`, normalised as its `idProperty` is compared.
    key: String,
    id_property: &'a str,
    trace_id: Option<&'a str>,
    properties: &'a Map<String, Value>,
}

/// An input that passed the per-record checks: values as they will be stored (`None` clears).
#[derive(Debug)]
struct Prepared {
    key: String,
    id_property: String,
    trace_id: Option<String>,
    values: Vec<(String, Option<String>)>,
}

/// `POST .../objects/{type}/batch/upsert`.
pub(crate) fn batch_upsert(
    state: &mut State,
    object: ObjectType,
    body: Result<&Value, &str>,
    config: &SimConfig,
) -> Reply {
    let started_at = timestamp();
    let raw_inputs = match batch_inputs(body) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let inputs = match parse_inputs(state.store(object), raw_inputs) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    // A record that clashes with an existing one fails the whole request, naming no input.
    if let Some(input) = inputs
        .iter()
        .find(|input| state.conflicts_with(object, &input.key))
    {
        let existing = state
            .store(object)
            .find(input.id_property, &input.key)
            .unwrap_or_else(|| state.store(object).next_id());
        let what = match object {
            ObjectType::Contacts => "Contact",
            ObjectType::Companies => "Company",
        };
        return Reply::json(
            409,
            json!({
                "status": "error", "message": format!("{what} already exists. Existing ID: {existing}"),
                "correlationId": correlation_id(), "category": "CONFLICT"
            }),
        );
    }

    // HubSpot isolates bad records only when it can name them: every input needs its own trace id.
    let trace_ids: HashSet<&str> = inputs.iter().filter_map(|input| input.trace_id).collect();
    let isolate = trace_ids.len() == inputs.len() && !state.whole_batch_errors;
    let anonymous = state.whole_batch_errors;

    let checked = check_inputs(state.store(object), &inputs);
    if !isolate
        && let Some((input, problems)) = inputs
            .iter()
            .zip(&checked)
            .find_map(|(input, checked)| checked.as_ref().err().map(|p| (input, p)))
    {
        let error = record_error(problems, input.trace_id);
        let mut body = json!({
            "status": "error", "correlationId": correlation_id(), "category": "VALIDATION_ERROR"
        });
        for key in ["message", "errors", "context"] {
            body[key] = error[key].clone();
        }
        if anonymous {
            body["context"] = json!({});
        }
        return Reply::json(400, body);
    }

    let mut results = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (input, checked) in inputs.iter().zip(checked) {
        match checked {
            Ok(prepared) => results.push(apply(state, object, prepared, config.echo_trace_ids)),
            Err(problems) => errors.push(record_error(&problems, input.trace_id)),
        }
    }
    if config.shuffle_results {
        results.shuffle(&mut state.rng);
    }
    batch_reply(results, errors, started_at)
}

/// Whole-request checks of every input: shape, string values, usable idProperty, no duplicates.
fn parse_inputs<'a>(store: &ObjectStore, raw_inputs: &'a [Value]) -> Result<Vec<Input<'a>>, Reply> {
    let object = store.object();
    let mut inputs = Vec::with_capacity(raw_inputs.len());
    for (position, raw) in raw_inputs.iter().enumerate() {
        let Some(raw) = raw.as_object() else {
            return Err(Reply::validation(
                &format!("Invalid input JSON: input {position} is not an object"),
                json!({}),
            ));
        };
        let trace_id = raw.get("objectWriteTraceId").and_then(Value::as_str);
        let context = || match trace_id {
            Some(trace_id) => json!({"objectWriteTraceId": [trace_id]}),
            None => json!({}),
        };
        let Some(id_property) = raw.get("idProperty").and_then(Value::as_str) else {
            return Err(Reply::validation(
                &format!(
                    "Input {position} has no idProperty: upserts need an idProperty on every input"
                ),
                context(),
            ));
        };
        let Some(id) = raw.get("id").and_then(Value::as_str) else {
            return Err(Reply::validation(
                &format!("Input {position} has no id: upserts need a string id on every input"),
                context(),
            ));
        };
        let Some(properties) = raw.get("properties").and_then(Value::as_object) else {
            return Err(Reply::validation(
                &format!("Input {position} has no properties object"),
                context(),
            ));
        };
        if let Some((name, value)) = properties.iter().find(|(_, value)| !value.is_string()) {
            return Err(Reply::validation(
                &format!(
                    "Invalid input JSON: property '{name}' of input {position} is {value}, but every property value must be a string"
                ),
                context(),
            ));
        }
        let usable = (object == ObjectType::Contacts && id_property == "email")
            || store
                .schema
                .props
                .get(id_property)
                .is_some_and(|def| def.unique);
        if !usable {
            return Err(Reply::validation(
                &format!(
                    "Unable to perform update/upsert by non-unique {} property {id_property} in portal ID {PORTAL_ID}",
                    object.type_id()
                ),
                context(),
            ));
        }
        inputs.push(Input {
            key: store.normalise(id_property, id),
            id_property,
            trace_id,
            properties,
        });
    }

    let mut seen = HashSet::with_capacity(inputs.len());
    let mut duplicates: Vec<&str> = Vec::new();
    for input in &inputs {
        let key = (input.id_property, input.key.as_str());
        if !seen.insert(key) && !duplicates.contains(&key.1) {
            duplicates.push(key.1);
        }
    }
    if !duplicates.is_empty() {
        return Err(Reply::validation(
            &format!(
                "Duplicate IDs found in batch input: [{}]. IDs must be unique",
                duplicates.join(", ")
            ),
            json!({ "ids": duplicates }),
        ));
    }
    Ok(inputs)
}

/// Per-record checks against the current records and property definitions.
fn check_inputs(store: &ObjectStore, inputs: &[Input<'_>]) -> Vec<Result<Prepared, Vec<Problem>>> {
    // Which target each unique value is claimed for, so two inputs can't take the same one.
    #[derive(PartialEq, Clone, Copy)]
    enum Target {
        Existing(u64),
        New(usize),
    }
    let mut claimed: HashMap<(String, String), Target> = HashMap::new();
    let mut checked = Vec::with_capacity(inputs.len());
    for (position, input) in inputs.iter().enumerate() {
        let mut problems = Vec::new();
        let mut values = Vec::with_capacity(input.properties.len());
        if let Some(def) = store.schema.props.get(input.id_property) {
            let id_check = if def.is_email {
                check_email(&input.key)
            } else {
                check_value(def, &input.key)
            };
            if let Err(error) = id_check {
                problems.push(Problem {
                    name: input.id_property.to_owned(),
                    error,
                });
            }
        }
        for (name, value) in input.properties {
            let value = value.as_str().unwrap_or_default();
            match check_one(store, name, value) {
                Ok(stored) => values.push((name.clone(), stored)),
                Err(error) => problems.push(Problem {
                    name: name.clone(),
                    error,
                }),
            }
        }

        let target = store
            .find(input.id_property, &input.key)
            .map_or(Target::New(position), Target::Existing);
        let mut unique_values: Vec<(&str, &str)> = values
            .iter()
            .filter(|(name, _)| store.is_indexed(name))
            .filter_map(|(name, value)| value.as_deref().map(|value| (name.as_str(), value)))
            .collect();
        if !unique_values
            .iter()
            .any(|(name, _)| *name == input.id_property)
        {
            unique_values.push((input.id_property, &input.key));
        }
        for (name, value) in unique_values {
            let owner = store.find(name, value).map(Target::Existing);
            let claim = claimed.get(&(name.to_owned(), value.to_owned())).copied();
            if owner.is_some_and(|owner| owner != target) || claim.is_some_and(|c| c != target) {
                problems.push(Problem {
                    name: name.to_owned(),
                    error: ValueError {
                        code: "CONFLICTING_UNIQUE_VALUE",
                        message: format!(
                            "Another {} record already has {name} {value}",
                            store.object().type_id()
                        ),
                    },
                });
            } else if problems.is_empty() {
                claimed.insert((name.to_owned(), value.to_owned()), target);
            }
        }

        checked.push(if problems.is_empty() {
            Ok(Prepared {
                key: input.key.clone(),
                id_property: input.id_property.to_owned(),
                trace_id: input.trace_id.map(str::to_owned),
                values,
            })
        } else {
            Err(problems)
        });
    }
    checked
}

/// One property value: `Ok(None)` clears it, `Ok(Some(v))` stores `v`.
fn check_one(store: &ObjectStore, name: &str, value: &str) -> Result<Option<String>, ValueError> {
    let def = store.schema.props.get(name);
    if def.map_or(name.starts_with("hs_"), |def| def.read_only) {
        return Err(ValueError {
            code: "READ_ONLY_VALUE",
            message: format!("{name} is a read only property; its value cannot be set."),
        });
    }
    let Some(def) = def else {
        return Err(ValueError {
            code: "PROPERTY_DOESNT_EXIST",
            message: format!("Property \"{name}\" does not exist"),
        });
    };
    if value.is_empty() {
        return Ok(None);
    }
    check_value(def, value).map(Some)
}

/// Writes one checked input and returns its result entry.
fn apply(state: &mut State, object: ObjectType, prepared: Prepared, echo_trace_id: bool) -> Value {
    let now = timestamp();
    let existing = state
        .store(object)
        .find(&prepared.id_property, &prepared.key);
    let (id, new) = match existing {
        Some(id) => (id, false),
        None => {
            let id = state.store_mut(object).allocate_id();
            let mut record = StoredRecord {
                properties: Default::default(),
                created_at: now.clone(),
                updated_at: now.clone(),
            };
            record
                .properties
                .insert("hs_object_id".to_owned(), id.to_string());
            record
                .properties
                .insert("createdate".to_owned(), now.clone());
            state.store_mut(object).records.insert(id, record);
            (id, true)
        }
    };
    let store = state.store_mut(object);
    // Matched by a secondary email: the primary stays what it was.
    let by_secondary = object == ObjectType::Contacts
        && prepared.id_property == "email"
        && store.is_secondary_email(&prepared.key);
    for (name, value) in &prepared.values {
        if by_secondary && name == "email" {
            continue;
        }
        store.set_value(id, name, value.clone());
    }
    // The key the record was upserted by is not copied into its properties: whether HubSpot
    // does that is not known, so a record created without its key among them has no key, and
    // the next upsert by that key creates another record.
    store.set_value(id, "lastmodifieddate", Some(now.clone()));
    let Some(record) = store.records.get_mut(&id) else {
        // Inserted or found above, under the same lock.
        return Value::Null;
    };
    record.updated_at = now;

    let mut properties = Map::new();
    let mut echo = |name: &str| {
        let value = record.properties.get(name).cloned().unwrap_or_default();
        properties.insert(name.to_owned(), Value::from(value));
    };
    for (name, _) in &prepared.values {
        echo(name);
    }
    for name in ["hs_object_id", "createdate", "lastmodifieddate"] {
        echo(name);
    }
    if object == ObjectType::Contacts {
        echo("email");
    }
    let mut result = json!({
        "id": id.to_string(), "new": new, "properties": properties,
        "createdAt": record.created_at, "updatedAt": record.updated_at, "archived": false
    });
    if echo_trace_id && let Some(trace_id) = prepared.trace_id {
        result["objectWriteTraceId"] = Value::from(trace_id);
    }
    result
}

/// One error entry of a 207, or the core of a whole-request 400: every bad value of one record.
fn record_error(problems: &[Problem], trace_id: Option<&str>) -> Value {
    // HubSpot embeds a JSON list in `message`, keys in this order; built by hand because
    // serde_json's map would sort them.
    let embedded: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                r#"{{"isValid":false,"message":{},"error":{},"name":{}}}"#,
                Value::from(p.error.message.as_str()),
                Value::from(p.error.code),
                Value::from(p.name.as_str())
            )
        })
        .collect();
    // The nested errors carry the code; only the embedded list is known to name the property,
    // so a client must read the property from there.
    let errors: Vec<Value> = problems
        .iter()
        .map(|p| json!({"message": p.error.message, "code": p.error.code}))
        .collect();
    let context = match trace_id {
        Some(trace_id) => json!({"objectWriteTraceId": [trace_id]}),
        None => json!({}),
    };
    json!({
        "status": "error", "category": "VALIDATION_ERROR",
        "message": format!("Property values were not valid: [{}]", embedded.join(",")),
        "errors": errors, "context": context
    })
}

/// `GET .../objects/{type}/{id}?idProperty=…&properties=a,b`.
pub(crate) fn read_one(
    state: &State,
    object: ObjectType,
    id: &str,
    query: &[(String, String)],
) -> Reply {
    let store = state.store(object);
    let id_property = query
        .iter()
        .find(|(key, _)| key == "idProperty")
        .map_or("hs_object_id", |(_, value)| value.as_str());
    let Some(record_id) = store.find(id_property, id) else {
        return Reply::not_found();
    };
    let Some(record) = store.records.get(&record_id) else {
        return Reply::not_found();
    };
    let mut wanted: Vec<&str> = query
        .iter()
        .filter(|(key, _)| key == "properties")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    wanted.extend(["hs_object_id", "createdate", "lastmodifieddate"]);
    if object == ObjectType::Contacts {
        wanted.push("email");
    }
    let properties: Map<String, Value> = wanted
        .into_iter()
        .map(|name| {
            let value = record
                .properties
                .get(name)
                .map_or(Value::Null, |v| Value::from(v.as_str()));
            (name.to_owned(), value)
        })
        .collect();
    Reply::json(
        200,
        json!({
            "id": record_id.to_string(), "properties": properties,
            "createdAt": record.created_at, "updatedAt": record.updated_at, "archived": false
        }),
    )
}

/// `POST .../associations/contacts/companies/batch/associate/default`.
/// A batch reply: 200 when every input went through, 207 listing the failed ones otherwise.
fn batch_reply(results: Vec<Value>, errors: Vec<Value>, started_at: String) -> Reply {
    let mut body = json!({"status": "COMPLETE", "results": results});
    let status = if errors.is_empty() {
        200
    } else {
        body["numErrors"] = Value::from(errors.len());
        body["errors"] = Value::Array(errors);
        207
    };
    body["startedAt"] = Value::from(started_at);
    body["completedAt"] = Value::from(timestamp());
    Reply::json(status, body)
}

/// The `inputs` array of a batch body, or the whole-request 400 HubSpot answers instead.
fn batch_inputs<'a>(body: Result<&'a Value, &str>) -> Result<&'a Vec<Value>, Reply> {
    let body =
        body.map_err(|err| Reply::validation(&format!("Invalid input JSON: {err}"), json!({})))?;
    let Some(inputs) = body.get("inputs").and_then(Value::as_array) else {
        return Err(Reply::validation(
            "Invalid input JSON: the body must be an object with an \"inputs\" array",
            json!({}),
        ));
    };
    if inputs.len() > MAX_BATCH_INPUTS {
        return Err(Reply::validation(
            &format!(
                "Batch input size {} exceeds the limit of {MAX_BATCH_INPUTS}",
                inputs.len()
            ),
            json!({"inputs": [inputs.len().to_string()]}),
        ));
    }
    Ok(inputs)
}

pub(crate) fn associate(state: &mut State, body: Result<&Value, &str>) -> Reply {
    let started_at = timestamp();
    let inputs = match batch_inputs(body) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let mut pairs = Vec::with_capacity(inputs.len());
    for (position, input) in inputs.iter().enumerate() {
        let (Some(from), Some(to)) = (id_of(input.get("from")), id_of(input.get("to"))) else {
            return Reply::validation(
                &format!("Input {position} needs from.id and to.id"),
                json!({}),
            );
        };
        pairs.push((from, to));
    }

    let mut results = Vec::with_capacity(pairs.len() * 2);
    let mut errors = Vec::new();
    for (from, to) in pairs {
        let contact = state.contacts.find("hs_object_id", &from);
        let company = state.companies.find("hs_object_id", &to);
        match (contact, company) {
            (Some(contact), Some(company)) => {
                state.associate(contact, company);
                let spec = |type_id: u32| json!({"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id});
                results.push(json!({
                    "from": {"id": contact.to_string()}, "to": {"id": company.to_string()},
                    "associationSpec": spec(279)
                }));
                results.push(json!({
                    "from": {"id": company.to_string()}, "to": {"id": contact.to_string()},
                    "associationSpec": spec(280)
                }));
            }
            (None, _) => errors.push(not_found_error("contact", "fromObjectId", &from)),
            (_, None) => errors.push(not_found_error("company", "toObjectId", &to)),
        }
    }
    // Associations answer 200 even when some pairs failed: only the body tells.
    let mut reply = batch_reply(results, errors, started_at);
    reply.status = 200;
    reply
}

/// The edition an associations path belongs to: they answer a removal differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edition {
    /// `/crm/v4/associations/...`: 204 and no body.
    V4,
    /// `/crm/associations/2026-03/...`: 200 and a batch response that lists refused pairs.
    Dated,
}

/// `POST .../associations/contacts/companies/batch/archive` with
/// `{"inputs":[{"from":{"id"},"to":[{"id"}]}]}`. A pair whose contact or company does not exist
/// cannot be removed: the dated edition lists it in `errors`, naming both ids; v4 has no body to
/// say so in. A pair of existing records that are not associated is removed already
/// (`docs/hubspot-behaviour.md` §6).
pub(crate) fn archive_associations(
    state: &mut State,
    body: Result<&Value, &str>,
    edition: Edition,
) -> Reply {
    let started_at = timestamp();
    let inputs = match batch_inputs(body) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let mut pairs = Vec::new();
    for (position, input) in inputs.iter().enumerate() {
        let from = id_of(input.get("from"));
        let to: Option<Vec<String>> = input
            .get("to")
            .and_then(Value::as_array)
            .map(|to| to.iter().map(|end| id_of(Some(end))).collect())
            .and_then(|ids: Vec<Option<String>>| ids.into_iter().collect());
        let (Some(from), Some(to)) = (from, to) else {
            return Reply::validation(
                &format!("Input {position} needs from.id and a to array of {{id}}"),
                json!({}),
            );
        };
        pairs.extend(to.into_iter().map(|to| (from.clone(), to)));
    }
    let mut errors = Vec::new();
    for (from, to) in pairs {
        let contact = state.contacts.find("hs_object_id", &from);
        let company = state.companies.find("hs_object_id", &to);
        match (contact, company) {
            (Some(contact), Some(company)) => {
                state.dissociate(contact, company);
            }
            (None, _) => errors.push(archive_error("contact", &from, &from, &to)),
            (_, None) => errors.push(archive_error("company", &to, &from, &to)),
        }
    }
    match edition {
        Edition::V4 => Reply {
            status: 204,
            body: ReplyBody::Empty,
            retry_after: None,
        },
        Edition::Dated => {
            // What a removal's `results` hold is not documented: none are given, so a client
            // can only go by `errors`.
            let mut reply = batch_reply(Vec::new(), errors, started_at);
            reply.status = 200;
            reply
        }
    }
}

/// A removal refused because the `missing` end (`kind`) does not exist: a full standard
/// error, naming both ends of the pair.
fn archive_error(kind: &str, missing: &str, from: &str, to: &str) -> Value {
    json!({
        "status": "error", "category": "OBJECT_NOT_FOUND",
        "message": format!(
            "Cannot remove the association: no {kind} with id {missing} exists"
        ),
        "context": {"fromObjectId": [from], "toObjectId": [to]},
        "errors": [], "links": {}
    })
}

/// The `id` of an association end, given as a string or a number.
fn id_of(end: Option<&Value>) -> Option<String> {
    end.and_then(|end| end.get("id")).and_then(|id| {
        id.as_str()
            .map(str::to_owned)
            .or_else(|| id.as_u64().map(|id| id.to_string()))
    })
}

fn not_found_error(kind: &str, field: &str, id: &str) -> Value {
    json!({
        "status": "error", "category": "OBJECT_NOT_FOUND",
        "message": format!("No {kind} with id {id} exists"),
        "context": { field: [id] }
    })
}
