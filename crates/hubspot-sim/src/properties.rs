//! Property definitions and property groups of one object type: the seeded defaults, the
//! create / update / read endpoints with HubSpot's validation, and the typed view of each
//! definition that value checks use. Knows nothing about records.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::object_type::ObjectType;
use crate::replies::Reply;

/// The declared `type` of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropKind {
    /// `string`: stores any text.
    String,
    /// `number`: plain decimals.
    Number,
    /// `bool`: `true` / `false`, checked like a two-option enumeration.
    Bool,
    /// `date`: a day.
    Date,
    /// `datetime`: an instant.
    Datetime,
    /// `enumeration`: option values.
    Enumeration,
    /// Anything else a test seeded with `define_property`: stored as text.
    Other,
}

impl PropKind {
    fn parse(kind: &str) -> PropKind {
        match kind {
            "string" => PropKind::String,
            "number" => PropKind::Number,
            "bool" => PropKind::Bool,
            "date" => PropKind::Date,
            "datetime" => PropKind::Datetime,
            "enumeration" => PropKind::Enumeration,
            _ => PropKind::Other,
        }
    }
}

/// One property definition: the JSON HubSpot returns plus the fields writes are checked by.
#[derive(Debug, Clone)]
pub(crate) struct PropertyDef {
    /// The definition exactly as `GET` returns it.
    pub json: Value,
    /// Declared type.
    pub kind: PropKind,
    /// Declared field type.
    pub field_type: String,
    /// Internal option values, in order.
    pub options: Vec<String>,
    /// Writes are refused with `READ_ONLY_VALUE`.
    pub read_only: bool,
    /// Created with `hasUniqueValue: true`: usable as an upsert `idProperty`.
    pub unique: bool,
    /// Values must be email addresses and are stored lower-cased (the contact `email`).
    pub is_email: bool,
}

impl PropertyDef {
    /// Derives the typed view from a (completed) definition of a property of `object`.
    pub(crate) fn from_json(json: Value, object: ObjectType) -> PropertyDef {
        let text = |key: &str| json.get(key).and_then(Value::as_str).unwrap_or_default();
        let name = text("name");
        let kind = PropKind::parse(text("type"));
        let field_type = text("fieldType").to_owned();
        let options: Vec<String> = json
            .get("options")
            .and_then(Value::as_array)
            .map(|options| {
                options
                    .iter()
                    .filter_map(|option| option.get("value").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let calculated = json
            .get("calculated")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let read_only = calculated
            || json
                .pointer("/modificationMetadata/readOnlyValue")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let unique = json
            .get("hasUniqueValue")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        PropertyDef {
            is_email: object == ObjectType::Contacts && name == "email",
            kind,
            field_type,
            options,
            read_only,
            unique,
            json,
        }
    }

    /// The property's name.
    pub(crate) fn name(&self) -> &str {
        self.json
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// The property definitions and groups of one object type.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The object type these definitions belong to.
    pub object: ObjectType,
    /// Definitions by name.
    pub props: BTreeMap<String, PropertyDef>,
    /// Archived definitions by name: listed only with `?archived=true`, their names taken.
    pub archived: BTreeMap<String, PropertyDef>,
    /// Groups by name, as `GET .../groups` returns them.
    pub groups: BTreeMap<String, Value>,
}

/// How a default property may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any value of its type.
    Writable,
    /// `modificationMetadata.readOnlyValue`: writes fail with `READ_ONLY_VALUE`.
    ReadOnly,
    /// `calculated: true` (a rollup or formula), read-only as well.
    Calculated,
}

/// `(name, label, type, fieldType, access, option values)` of the default properties: a
/// realistic sample of what HubSpot defines on every portal (`hubspotDefined: true`).
type Seed = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Access,
    &'static [&'static str],
);

const LIFECYCLE: &[&str] = &[
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
];

const CONTACT_SEEDS: &[Seed] = &[
    ("email", "Email", "string", "text", Access::Writable, &[]),
    (
        "firstname",
        "First Name",
        "string",
        "text",
        Access::Writable,
        &[],
    ),
    (
        "lastname",
        "Last Name",
        "string",
        "text",
        Access::Writable,
        &[],
    ),
    (
        "phone",
        "Phone Number",
        "string",
        "phonenumber",
        Access::Writable,
        &[],
    ),
    (
        "company",
        "Company Name",
        "string",
        "text",
        Access::Writable,
        &[],
    ),
    (
        "hs_lead_status",
        "Lead Status",
        "enumeration",
        "radio",
        Access::Writable,
        &[
            "NEW",
            "OPEN",
            "IN_PROGRESS",
            "OPEN_DEAL",
            "UNQUALIFIED",
            "ATTEMPTED_TO_CONTACT",
            "CONNECTED",
            "BAD_TIMING",
        ],
    ),
    (
        "num_associated_deals",
        "Number of Associated Deals",
        "number",
        "number",
        Access::Calculated,
        &[],
    ),
    (
        "hs_additional_emails",
        "Additional email addresses",
        "enumeration",
        "checkbox",
        Access::ReadOnly,
        &[],
    ),
];

/// What contacts and companies both have: the lifecycle stage, the revenue rollup, the record
/// id and its timestamps.
const SHARED_SEEDS: &[Seed] = &[
    (
        "lifecyclestage",
        "Lifecycle Stage",
        "enumeration",
        "radio",
        Access::Writable,
        LIFECYCLE,
    ),
    (
        "total_revenue",
        "Total Revenue",
        "number",
        "number",
        Access::Calculated,
        &[],
    ),
    (
        "hs_object_id",
        "Record ID",
        "number",
        "number",
        Access::ReadOnly,
        &[],
    ),
    (
        "createdate",
        "Create Date",
        "datetime",
        "date",
        Access::ReadOnly,
        &[],
    ),
    (
        "lastmodifieddate",
        "Last Modified Date",
        "datetime",
        "date",
        Access::ReadOnly,
        &[],
    ),
];

const COMPANY_SEEDS: &[Seed] = &[
    (
        "name",
        "Company name",
        "string",
        "text",
        Access::Writable,
        &[],
    ),
    (
        "domain",
        "Company Domain Name",
        "string",
        "text",
        Access::Writable,
        &[],
    ),
    (
        "industry",
        "Industry",
        "enumeration",
        "select",
        Access::Writable,
        &[
            "ACCOUNTING",
            "COMPUTER_SOFTWARE",
            "FINANCIAL_SERVICES",
            "INFORMATION_TECHNOLOGY_AND_SERVICES",
        ],
    ),
    (
        "annualrevenue",
        "Annual Revenue",
        "number",
        "number",
        Access::Writable,
        &[],
    ),
    (
        "numberofemployees",
        "Number of Employees",
        "number",
        "number",
        Access::Writable,
        &[],
    ),
    (
        "num_associated_contacts",
        "Number of Associated Contacts",
        "number",
        "number",
        Access::Calculated,
        &[],
    ),
];

/// HubSpot allows at most this many unique-value properties per object type.
const MAX_UNIQUE_PROPERTIES: usize = 10;

impl Schema {
    /// The defaults a fresh portal has for `object`.
    pub(crate) fn seeded(object: ObjectType, now: &str) -> Schema {
        let (seeds, group, group_label) = match object {
            ObjectType::Contacts => (CONTACT_SEEDS, "contactinformation", "Contact information"),
            ObjectType::Companies => (COMPANY_SEEDS, "companyinformation", "Company information"),
        };
        let mut schema = Schema {
            object,
            props: BTreeMap::new(),
            archived: BTreeMap::new(),
            groups: BTreeMap::new(),
        };
        schema.groups.insert(
            group.to_owned(),
            json!({"name": group, "label": group_label, "displayOrder": -1, "archived": false}),
        );
        for (order, &(name, label, kind, field_type, access, options)) in
            seeds.iter().chain(SHARED_SEEDS).enumerate()
        {
            let options: Vec<Value> = options
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    json!({"label": value, "value": value, "displayOrder": i, "hidden": false, "description": ""})
                })
                .collect();
            let mut json = json!({
                "name": name, "label": label, "type": kind, "fieldType": field_type,
                "groupName": group, "displayOrder": order, "options": options,
                "hubspotDefined": true,
                "calculated": access == Access::Calculated,
                // HubSpot's own properties can't be redefined through the API.
                "modificationMetadata": {
                    "archivable": false, "readOnlyDefinition": true,
                    "readOnlyValue": access != Access::Writable
                },
            });
            complete(&mut json, now);
            schema
                .props
                .insert(name.to_owned(), PropertyDef::from_json(json, object));
        }
        schema
    }

    /// Stores `json` as the definition of its `name`, filling missing fields, unchecked.
    pub(crate) fn define(&mut self, mut json: Value, now: &str) {
        let Some(name) = json.get("name").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        complete(&mut json, now);
        self.props
            .insert(name, PropertyDef::from_json(json, self.object));
    }

    /// `GET /properties/{type}`: the live definitions of one sensitivity level (by default
    /// `non_sensitive`), or with `archived` only the archived.
    pub(crate) fn list(&self, archived: bool, sensitivity: &str) -> Reply {
        let source = if archived {
            &self.archived
        } else {
            &self.props
        };
        // Each sensitivity level is listed only when asked for (`dataSensitivity`).
        let results: Vec<&Value> = source
            .values()
            .map(|def| &def.json)
            .filter(|json| {
                json.get("dataSensitivity")
                    .and_then(Value::as_str)
                    .unwrap_or("non_sensitive")
                    == sensitivity
            })
            .collect();
        Reply::json(200, json!({ "results": results }))
    }

    /// `GET /properties/{type}/{name}`: an archived one only with `archived`.
    pub(crate) fn get(&self, name: &str, archived: bool) -> Reply {
        let source = if archived {
            &self.archived
        } else {
            &self.props
        };
        match source.get(name) {
            Some(def) => Reply::json(200, def.json.clone()),
            None => Reply::not_found(),
        }
    }

    /// Archives a live property (as deleting it in HubSpot's UI does); false if there is none.
    pub(crate) fn archive(&mut self, name: &str, now: &str) -> bool {
        let Some(def) = self.props.remove(name) else {
            return false;
        };
        let mut json = def.json;
        if let Some(object) = json.as_object_mut() {
            object.insert("archived".to_owned(), Value::from(true));
            object.insert("archivedAt".to_owned(), Value::from(now));
        }
        self.archived
            .insert(name.to_owned(), PropertyDef::from_json(json, self.object));
        true
    }

    /// `POST /properties/{type}`: validates like HubSpot and answers 201, 409 or 400.
    pub(crate) fn create(&mut self, body: &Value, now: &str) -> Reply {
        let object = self.object;
        let Some(body) = body.as_object() else {
            return Reply::validation("Invalid input JSON: expected an object", json!({}));
        };
        let name = match body.get("name").and_then(Value::as_str) {
            Some(name) => name,
            None => return Reply::validation("Property name is required", json!({})),
        };
        if let Err(message) = check_property_name(name) {
            return Reply::validation(&message, json!({"name": [name]}));
        }
        // An archived property keeps its name until it is purged: the same 409, which says
        // nothing of the archive.
        if self.props.contains_key(name) || self.archived.contains_key(name) {
            return Reply::error(
                409,
                "OBJECT_ALREADY_EXISTS",
                &format!("Property named '{name}' already exists."),
            );
        }
        for field in ["label", "type", "fieldType", "groupName"] {
            if body
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Reply::validation(
                    &format!("Property '{name}' is missing the required field '{field}'"),
                    json!({"field": [field]}),
                );
            }
        }
        let mut json = Value::Object(body.clone());
        if let Some(object) = json.as_object_mut() {
            // Clients can't make a property read-only or HubSpot-defined.
            object.remove("modificationMetadata");
        }
        complete(&mut json, now);
        if let Err(reply) = self.check_definition(&json) {
            return reply;
        }
        let unique = json.get("hasUniqueValue").and_then(Value::as_bool) == Some(true);
        if unique && self.props.values().filter(|def| def.unique).count() >= MAX_UNIQUE_PROPERTIES {
            return Reply::validation(
                &format!(
                    "Property '{name}' can't have unique values: {} already allows at most {MAX_UNIQUE_PROPERTIES} unique properties",
                    object.type_id()
                ),
                json!({}),
            );
        }
        self.props.insert(
            name.to_owned(),
            PropertyDef::from_json(json.clone(), object),
        );
        Reply::json(201, json)
    }

    /// `PATCH /properties/{type}/{name}`: label, description, group, options (replacing the
    /// whole list), display settings, type and fieldType. Name and uniqueness never change.
    pub(crate) fn update(&mut self, name: &str, body: &Value, now: &str) -> Reply {
        let object = self.object;
        let Some(current) = self.props.get(name) else {
            return Reply::not_found();
        };
        let Some(patch) = body.as_object() else {
            return Reply::validation("Invalid input JSON: expected an object", json!({}));
        };
        let read_only_definition = current
            .json
            .pointer("/modificationMetadata/readOnlyDefinition")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if read_only_definition {
            return Reply::validation(
                &format!("Property '{name}' is defined by HubSpot and can't be modified"),
                json!({"name": [name]}),
            );
        }
        let mut json = current.json.clone();
        const PATCHABLE: &[&str] = &[
            "label",
            "description",
            "groupName",
            "options",
            "displayOrder",
            "hidden",
            "formField",
            "type",
            "fieldType",
        ];
        if let Some(target) = json.as_object_mut() {
            for (key, value) in patch {
                if PATCHABLE.contains(&key.as_str()) {
                    target.insert(key.clone(), value.clone());
                }
            }
            target.insert("updatedAt".to_owned(), Value::from(now));
        }
        complete(&mut json, now);
        if let Err(reply) = self.check_definition(&json) {
            return reply;
        }
        self.props.insert(
            name.to_owned(),
            PropertyDef::from_json(json.clone(), object),
        );
        Reply::json(200, json)
    }

    /// Type, field type, group and options of a completed definition.
    fn check_definition(&self, json: &Value) -> Result<(), Reply> {
        let object = self.object;
        let text = |key: &str| json.get(key).and_then(Value::as_str).unwrap_or_default();
        let (name, kind, field_type, group) = (
            text("name"),
            text("type"),
            text("fieldType"),
            text("groupName"),
        );
        let fits: &[&str] = match kind {
            "string" => &["text", "textarea", "phonenumber", "html", "file"],
            "number" => &["number"],
            "bool" => &["booleancheckbox"],
            "date" | "datetime" => &["date"],
            "enumeration" => &["select", "radio", "checkbox", "booleancheckbox"],
            _ => {
                return Err(Reply::validation(
                    &format!(
                        "Property '{name}' has invalid type '{kind}': use one of string, number, bool, date, datetime, enumeration"
                    ),
                    json!({"type": [kind]}),
                ));
            }
        };
        if !fits.contains(&field_type) {
            return Err(Reply::validation(
                &format!(
                    "Property '{name}' of type '{kind}' can't have fieldType '{field_type}': use one of {}",
                    fits.join(", ")
                ),
                json!({"fieldType": [field_type]}),
            ));
        }
        if !self.groups.contains_key(group) {
            return Err(Reply::validation(
                &format!(
                    "Property group '{group}' does not exist for {}",
                    object.as_str()
                ),
                json!({"groupName": [group]}),
            ));
        }
        let unique = json.get("hasUniqueValue").and_then(Value::as_bool) == Some(true);
        if unique && !matches!(kind, "string" | "number") {
            return Err(Reply::validation(
                &format!("Property '{name}' of type '{kind}' can't have unique values"),
                json!({}),
            ));
        }
        let options = json
            .get("options")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if kind == "enumeration" && options.is_empty() {
            return Err(Reply::validation(
                &format!("Enumeration property '{name}' needs at least one option"),
                json!({"options": []}),
            ));
        }
        // Each option's value and each option's label appear once.
        let mut values = Vec::with_capacity(options.len());
        let mut labels = Vec::with_capacity(options.len());
        for option in options {
            let value = option.get("value").and_then(Value::as_str);
            let label = option.get("label").and_then(Value::as_str);
            match (value, label) {
                (Some(value), Some(_)) if values.contains(&value) => {
                    return Err(Reply::validation(
                        &format!("Property '{name}' has the option value '{value}' twice"),
                        json!({"options": [value]}),
                    ));
                }
                (Some(_), Some(label)) if labels.contains(&label) => {
                    return Err(Reply::validation(
                        &format!("Property '{name}' has the option label '{label}' twice"),
                        json!({"options": [label]}),
                    ));
                }
                (Some(value), Some(label)) => {
                    values.push(value);
                    labels.push(label);
                }
                _ => {
                    return Err(Reply::validation(
                        &format!(
                            "Every option of property '{name}' needs a string label and value"
                        ),
                        json!({}),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `GET /properties/{type}/groups`.
    pub(crate) fn list_groups(&self) -> Reply {
        let results: Vec<&Value> = self.groups.values().collect();
        Reply::json(200, json!({ "results": results }))
    }

    /// `POST /properties/{type}/groups` with `{name, label, displayOrder}`.
    pub(crate) fn create_group(&mut self, body: &Value) -> Reply {
        let name = body.get("name").and_then(Value::as_str);
        let label = body.get("label").and_then(Value::as_str);
        let (Some(name), Some(label)) = (name, label) else {
            return Reply::validation("A property group needs a name and a label", json!({}));
        };
        if let Err(message) = check_group_name(name) {
            return Reply::validation(&message, json!({"name": [name]}));
        }
        if self.groups.contains_key(name) {
            return Reply::error(
                409,
                "OBJECT_ALREADY_EXISTS",
                &format!("Property group named '{name}' already exists."),
            );
        }
        let display_order = body
            .get("displayOrder")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let group = json!({
            "name": name, "label": label, "displayOrder": display_order, "archived": false
        });
        self.groups.insert(name.to_owned(), group.clone());
        Reply::json(201, group)
    }
}

/// Lower-case letters, digits and underscores, starting with a letter, under 100 characters,
/// and not in HubSpot's own `hs_` namespace.
fn check_property_name(name: &str) -> Result<(), String> {
    if name.len() >= 100 {
        return Err(format!(
            "Property name '{name}' is too long: it must be under 100 characters"
        ));
    }
    if name.starts_with("hs_") {
        return Err(format!(
            "Property name '{name}' is invalid: the hs_ prefix is reserved for HubSpot-defined properties"
        ));
    }
    check_group_name(name).map_err(|_| {
        format!(
            "Property name '{name}' is invalid: use lower-case letters, digits and underscores, starting with a letter"
        )
    })
}

fn check_group_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if starts_with_letter
        && name.len() < 100
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "Name '{name}' is invalid: use lower-case letters, digits and underscores, starting with a letter"
        ))
    }
}

/// Fills the fields HubSpot always returns, and normalises options.
fn complete(json: &mut Value, now: &str) {
    let Some(object) = json.as_object_mut() else {
        return;
    };
    let defaults = [
        ("label", object.get("name").cloned().unwrap_or(Value::Null)),
        ("description", Value::from("")),
        ("groupName", Value::from("")),
        ("options", Value::Array(Vec::new())),
        ("displayOrder", Value::from(-1)),
        ("calculated", Value::from(false)),
        ("externalOptions", Value::from(false)),
        ("hasUniqueValue", Value::from(false)),
        ("hidden", Value::from(false)),
        ("formField", Value::from(false)),
        (
            "modificationMetadata",
            json!({"archivable": true, "readOnlyDefinition": false, "readOnlyValue": false}),
        ),
        ("createdAt", Value::from(now)),
        ("updatedAt", Value::from(now)),
        ("archived", Value::from(false)),
    ];
    for (key, value) in defaults {
        object.entry(key).or_insert(value);
    }
    // A bool property has the options its creator sends (HubSpot's UI and integrations send
    // Yes/`true` and No/`false`); created without them, it has none, and takes no value.
    if let Some(Value::Array(options)) = object.get_mut("options") {
        for (order, option) in options.iter_mut().enumerate() {
            if let Some(option) = option.as_object_mut() {
                complete_option(option, order);
            }
        }
    }
}

fn complete_option(option: &mut Map<String, Value>, order: usize) {
    option
        .entry("displayOrder")
        .or_insert_with(|| Value::from(order));
    option.entry("hidden").or_insert(Value::from(false));
}
