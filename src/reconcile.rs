//! Start-up reconciliation of hubsync.toml with the portal's property definitions: plan (pure)
//! what to create, which enumeration options to add, and which declared types clash; then apply.
//!
//! A type clash refuses start-up: writing values of one type into a property of another would
//! either be refused record by record or, for `string`, silently stored as text. So does a
//! name HubSpot defines (sales and marketing own those, and calculated or read-only ones fail
//! every record) and a name an archived property still holds. Adding options never rewrites the
//! options people set up in the portal: HubSpot's `PATCH` replaces the whole list, so every
//! existing option is sent back exactly as read and only missing values are appended.

use std::collections::BTreeMap;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use crate::config::{Config, ObjectConfig};
use crate::core::vocabulary::{ObjectType, PropertyDef, PropertyType};
use crate::hubspot::SetupReply;
use crate::setup::Setup;

/// What `check` and `run` found when comparing config and portal.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Property groups to create: (object, group name).
    pub create_groups: Vec<(ObjectType, String)>,
    /// Properties to create: (object, JSON body).
    pub create: Vec<(ObjectType, String, Value)>,
    /// Enumerations to PATCH: (object, name, the full option list to send: every existing
    /// option exactly as read, then the missing values).
    pub add_options: Vec<(ObjectType, String, Vec<Value>)>,
    /// Refusals: each says what clashes and how to fix it.
    pub mismatches: Vec<String>,
}

impl Plan {
    /// Lines describing the plan, for `hubsync check`.
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, g) in &self.create_groups {
            out.push(format!("create property group {} \"{g}\"", kind.plural()));
        }
        for (kind, name, body) in &self.create {
            out.push(format!(
                "create {} property \"{name}\" ({})",
                kind.plural(),
                body["type"].as_str().unwrap_or("?")
            ));
        }
        for (kind, name, options) in &self.add_options {
            let values: Vec<&str> = options
                .iter()
                .filter_map(|o| o.get("value").and_then(Value::as_str))
                .collect();
            out.push(format!(
                "update {} property \"{name}\" options to [{}]",
                kind.plural(),
                values.join(", ")
            ));
        }
        for m in &self.mismatches {
            out.push(format!("MISMATCH: {m}"));
        }
        out
    }
}

fn property_body(def: &PropertyDef, group: &str) -> Value {
    let mut body = json!({
        "name": def.name,
        "label": def.label,
        "type": def.ptype.name(),
        "fieldType": def.ptype.field_type(),
        "groupName": group,
        "description": def.description.clone().unwrap_or_default(),
    });
    match &def.ptype {
        PropertyType::Enumeration { options, .. } => {
            body["options"] = Value::Array(new_options(options, 0, &[]));
        }
        // As HubSpot's own UI creates a checkbox property.
        PropertyType::Bool => {
            body["options"] = json!([
                {"label": "Yes", "value": "true", "displayOrder": 0, "hidden": false},
                {"label": "No", "value": "false", "displayOrder": 1, "hidden": false}
            ]);
        }
        _ => {}
    }
    body
}

/// Options hubsync adds, ordered after `first`: label = value, unless an option already has
/// that label (HubSpot refuses a label twice), then `value (2)`, `value (3)`, ...
fn new_options(values: &[String], first: usize, taken: &[&str]) -> Vec<Value> {
    let mut labels: Vec<String> = taken.iter().map(|l| l.to_string()).collect();
    values
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let label = std::iter::once(o.clone())
                .chain((2..).map(|n| format!("{o} ({n})")))
                .find(|l| !labels.contains(l))
                .unwrap_or_else(|| o.clone());
            labels.push(label.clone());
            json!({"label": label, "value": o, "displayOrder": first + i, "hidden": false})
        })
        .collect()
}

/// The full option list to send when `declared` values are missing from the portal's `p`:
/// every existing option exactly as read (label, order, hidden flag, description), then the
/// missing ones. `None` when nothing is missing.
pub(crate) fn options_to_send(p: &Value, declared: &[String]) -> Option<Vec<Value>> {
    let existing: Vec<Value> = p
        .get("options")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let values: Vec<&str> = existing
        .iter()
        .filter_map(|o| o.get("value").and_then(Value::as_str))
        .collect();
    let missing: Vec<String> = declared
        .iter()
        .filter(|o| !values.contains(&o.as_str()))
        .cloned()
        .collect();
    if missing.is_empty() {
        return None;
    }
    let after = existing
        .iter()
        .filter_map(|o| o.get("displayOrder").and_then(Value::as_i64))
        .max()
        .map_or(0, |m| usize::try_from(m.saturating_add(1)).unwrap_or(0));
    let labels: Vec<&str> = existing
        .iter()
        .filter_map(|o| o.get("label").and_then(Value::as_str))
        .collect();
    let added = new_options(&missing, after.max(existing.len()), &labels);
    let mut all = existing;
    all.extend(added);
    Some(all)
}

/// Whether HubSpot's `fieldType` suits what hubsync writes for `ptype`.
fn field_type_fits(ptype: &PropertyType, field_type: &str) -> bool {
    match ptype {
        PropertyType::String => {
            matches!(
                field_type,
                "text" | "textarea" | "phonenumber" | "html" | "file"
            )
        }
        PropertyType::Number => field_type == "number",
        PropertyType::Bool => field_type == "booleancheckbox",
        PropertyType::Date | PropertyType::Datetime => field_type == "date",
        // Several values joined by `;` need a multi-select; one value needs a single-select.
        PropertyType::Enumeration { multiple: true, .. } => field_type == "checkbox",
        PropertyType::Enumeration {
            multiple: false, ..
        } => matches!(field_type, "select" | "radio" | "booleancheckbox"),
    }
}

/// Why hubsync must not write a portal property, if it must not: it holds sensitive data,
/// HubSpot defines it, or calculates it, or its value is read-only.
fn owned_by_hubspot(p: &Value) -> Option<&'static str> {
    let flag = |pointer: &str| p.pointer(pointer).and_then(Value::as_bool) == Some(true);
    let sensitivity = p.get("dataSensitivity").and_then(Value::as_str);
    if sensitivity.is_some_and(|s| s != "non_sensitive") {
        Some(
            "holds sensitive data in HubSpot (dataSensitivity), which hubsync does not sync product signals into",
        )
    } else if flag("/calculated") {
        Some("is calculated by HubSpot, so every write would be refused")
    } else if flag("/modificationMetadata/readOnlyValue") {
        Some("is read-only in HubSpot, so every write would be refused")
    } else if flag("/hubspotDefined") {
        Some(
            "is defined by HubSpot and belongs to the portal's users (sales, marketing); syncing into it would overwrite their data",
        )
    } else {
        None
    }
}

/// A declared name that must not be synced into, or `None` when it may be.
fn refusal(
    kind: ObjectType,
    name: &str,
    live: Option<&Value>,
    archived: bool,
    where_: &str,
    config_file: &str,
) -> Option<String> {
    if let Some(p) = live {
        return owned_by_hubspot(p).map(|why| {
            format!(
                "{} property \"{name}\"{where_} {why}; pick another name in {config_file} (a new custom property)",
                kind.as_str()
            )
        });
    }
    archived.then(|| {
        format!(
            "{} property \"{name}\"{where_} was archived in HubSpot (deleted, restorable for 90 days), so HubSpot refuses to create it again; restore it in HubSpot (Settings > Properties > Archived properties) or pick another name in {config_file}",
            kind.as_str()
        )
    })
}

/// One object type as declared: its kind, properties, and (companies) the unique id property.
pub(crate) struct Declared<'a> {
    /// Contact or company.
    pub kind: ObjectType,
    /// Declared properties.
    pub objects: &'a ObjectConfig,
    /// The unique property companies are upserted by.
    pub unique_id: Option<&'a str>,
}

/// The portal's side: properties by name and group names.
pub(crate) struct Remote {
    /// Properties by name, as HubSpot returns them.
    pub properties: BTreeMap<String, Value>,
    /// Names of archived properties (listed with `archived=true`).
    pub archived: Vec<String>,
    /// Property group names.
    pub groups: Vec<String>,
}

/// Plans one object type into `plan`; `config_file` and `group` are for messages and bodies.
pub(crate) fn plan_object(
    declared: &Declared,
    remote: &Remote,
    group: &str,
    config_file: &str,
    plan: &mut Plan,
) {
    let Declared {
        kind,
        objects,
        unique_id,
    } = *declared;
    let archived = &remote.archived;
    let (remote, groups) = (&remote.properties, &remote.groups);
    if !groups.iter().any(|g| g == group) {
        plan.create_groups.push((kind, group.to_string()));
    }
    if let Some(id) = unique_id {
        let is_archived = archived.iter().any(|a| a == id);
        if let Some(why) = refusal(
            kind,
            id,
            remote.get(id),
            is_archived,
            " (companies.id_property)",
            config_file,
        ) {
            plan.mismatches.push(why);
        } else {
            match remote.get(id) {
                None => {
                    let mut body = json!({
                        "name": id, "label": "Product account id", "type": "string",
                        "fieldType": "text", "groupName": group, "hasUniqueValue": true,
                    });
                    body["description"] = json!("Unique key hubsync upserts companies by");
                    plan.create.push((kind, id.to_string(), body));
                }
                Some(p) => {
                    if p.get("hasUniqueValue").and_then(Value::as_bool) != Some(true) {
                        plan.mismatches.push(format!(
                        "companies.id_property \"{id}\" exists in HubSpot without hasUniqueValue, so companies cannot be upserted by it (and HubSpot cannot change that); set companies.id_property in {config_file} to a new name and hubsync will create it as unique"
                    ));
                    }
                }
            }
        }
    }
    for (name, def) in &objects.properties {
        let line = objects
            .lines
            .get(name)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        let is_archived = archived.iter().any(|a| a == name);
        if let Some(why) = refusal(
            kind,
            name,
            remote.get(name),
            is_archived,
            &line,
            config_file,
        ) {
            plan.mismatches.push(why);
            continue;
        }
        let Some(p) = remote.get(name) else {
            plan.create
                .push((kind, name.clone(), property_body(def, group)));
            continue;
        };
        if let Some(why) = type_mismatch(def, p) {
            plan.mismatches.push(format!(
                "{} property \"{name}\" {why} in {config_file}{line}; rename it in {config_file} or change it in HubSpot",
                kind.as_str(),
            ));
            continue;
        }
        if let PropertyType::Enumeration { options, .. } = &def.ptype
            && let Some(all) = options_to_send(p, options)
        {
            plan.add_options.push((kind, name.clone(), all));
        }
    }
}

/// How the portal's definition `p` differs from the declared one in `type` or `fieldType`.
fn type_mismatch(def: &PropertyDef, p: &Value) -> Option<String> {
    let remote_type = p.get("type").and_then(Value::as_str).unwrap_or("unknown");
    let field_type = p
        .get("fieldType")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    if remote_type != def.ptype.name() {
        return Some(format!(
            "is \"{remote_type}\" in HubSpot but \"{}\"",
            def.ptype.name()
        ));
    }
    if !field_type_fits(&def.ptype, field_type) {
        let wanted = match &def.ptype {
            PropertyType::Enumeration { multiple: true, .. } => "a multi-select (multiple = true)",
            PropertyType::Enumeration { .. } => "a single-select (multiple = false)",
            _ => "another field type",
        };
        return Some(format!(
            "has fieldType \"{field_type}\" in HubSpot but is declared {wanted} (fieldType \"{}\")",
            def.ptype.field_type()
        ));
    }
    None
}

/// A list call's `results`, by name: properties or groups.
async fn list_by_name(setup: &Setup, path: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let list = setup
        .call(Method::GET, path, None)
        .await?
        .unwrap_or(Value::Null);
    Ok(by_name(&list))
}

/// A list reply's `results`, by `name`.
fn by_name(list: &Value) -> BTreeMap<String, Value> {
    list.get("results")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|p| Some((p.get("name")?.as_str()?.to_string(), p.clone())))
                .collect()
        })
        .unwrap_or_default()
}

async fn fetch_object(setup: &Setup, kind: ObjectType) -> anyhow::Result<Remote> {
    let paths = setup.client().paths;
    let mut properties = list_by_name(setup, &paths.property_list(kind)).await?;
    // Properties holding sensitive data are listed only on request, one level at a time, and
    // only to apps granted the scope for them: without it, a clash shows only when HubSpot
    // refuses the create.
    for level in ["sensitive", "highly_sensitive"] {
        let list = format!("{}?dataSensitivity={level}", paths.property_list(kind));
        match setup.get_if_allowed(&list).await {
            Ok(list) => {
                for (name, p) in by_name(&list.unwrap_or(Value::Null)) {
                    properties.entry(name).or_insert(p);
                }
            }
            Err(e) => tracing::warn!(
                "cannot list the portal's {} {} properties ({}); going on without them",
                level.replace('_', " "),
                kind.plural(),
                crate::telemetry::chain(&e)
            ),
        }
    }
    let groups = list_by_name(setup, &paths.groups(kind)).await?;
    // Archived properties are invisible to the plain list, yet their names are taken.
    let archived = list_by_name(
        setup,
        &format!("{}?archived=true", paths.property_list(kind)),
    )
    .await?;
    Ok(Remote {
        properties,
        archived: archived.into_keys().collect(),
        groups: groups.into_keys().collect(),
    })
}

/// Reads the portal's definitions and plans what start-up must do.
pub async fn plan(setup: &Setup, config: &Config) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let file = config.path.display().to_string();
    let group = &config.hubspot.property_group;
    let contacts = Declared {
        kind: ObjectType::Contact,
        objects: &config.contacts,
        unique_id: None,
    };
    let remote = fetch_object(setup, ObjectType::Contact).await?;
    plan_object(&contacts, &remote, group, &file, &mut plan);
    if let Some(companies) = &config.companies {
        let declared = Declared {
            kind: ObjectType::Company,
            objects: &companies.objects,
            unique_id: Some(&companies.id_property),
        };
        let remote = fetch_object(setup, ObjectType::Company).await?;
        plan_object(&declared, &remote, group, &file, &mut plan);
    }
    Ok(plan)
}

/// Applies a plan without mismatches: groups, then properties, then option additions.
pub async fn apply(setup: &Setup, config: &Config, plan: &Plan) -> anyhow::Result<()> {
    for (kind, group) in &plan.create_groups {
        let body = json!({"name": group, "label": config.hubspot.property_group_label, "displayOrder": -1});
        // Another worker creating the group first (409) is fine: a group has nothing to compare.
        setup
            .request(
                Method::POST,
                &setup.client().paths.groups(*kind),
                Some(&body),
            )
            .await
            .with_context(|| format!("failed to create property group \"{group}\""))?;
    }
    let file = config.path.display().to_string();
    for (kind, name, body) in &plan.create {
        let created = setup
            .request(
                Method::POST,
                &setup.client().paths.property_list(*kind),
                Some(body),
            )
            .await
            .with_context(|| format!("failed to create {} property \"{name}\"", kind.plural()))?;
        if let SetupReply::AlreadyExists(answer) = created {
            // Created meanwhile (another worker, a person) or archived: read it and compare.
            check_existing(setup, config, *kind, name, body, &answer, &file).await?;
            continue;
        }
        tracing::info!(object = kind.plural(), property = %name, "created property");
    }
    for (kind, name, options) in &plan.add_options {
        // PATCH replaces the whole option list: every existing option goes back as read.
        let body = json!({"options": options});
        setup
            .call(
                Method::PATCH,
                &setup.client().paths.property(*kind, name),
                Some(&body),
            )
            .await
            .with_context(|| format!("failed to add options to property \"{name}\""))?;
        tracing::info!(object = kind.plural(), property = %name, "added enumeration options");
    }
    Ok(())
}

/// After a 409 on create: the property as it now is must be one hubsync may write, of the
/// declared type.
async fn check_existing(
    setup: &Setup,
    config: &Config,
    kind: ObjectType,
    name: &str,
    body: &Value,
    answer: &Value,
    file: &str,
) -> anyhow::Result<()> {
    let path = setup.client().paths.property(kind, name);
    let live = setup.call(Method::GET, &path, None).await?;
    let Some(p) = live else {
        let archived = setup
            .call(Method::GET, &format!("{path}?archived=true"), None)
            .await?
            .is_some();
        let why = refusal(kind, name, None, archived, "", file).unwrap_or_else(|| {
            format!(
                "{} property \"{name}\" could not be created (HubSpot answered 409: {answer}) and cannot be read back; check it in HubSpot or pick another name in {file}",
                kind.as_str()
            )
        });
        anyhow::bail!("{why}");
    };
    if let Some(why) = refusal(kind, name, Some(&p), false, "", file) {
        anyhow::bail!("{why}");
    }
    let declared = declared_def(config, kind, name);
    let mismatch = match declared {
        Some(def) => type_mismatch(def, &p),
        // The company id property: a unique string.
        None => (p.get("type") != body.get("type")
            || p.get("hasUniqueValue").and_then(Value::as_bool) != Some(true))
        .then(|| "exists in HubSpot without being a unique string".to_string()),
    };
    if let Some(why) = mismatch {
        anyhow::bail!(
            "{} property \"{name}\" was created by someone else meanwhile and {why} in {file}; rename it in {file} or change it in HubSpot",
            kind.as_str()
        );
    }
    tracing::info!(object = kind.plural(), property = %name, "property already created elsewhere; it matches");
    Ok(())
}

fn declared_def<'a>(config: &'a Config, kind: ObjectType, name: &str) -> Option<&'a PropertyDef> {
    match kind {
        ObjectType::Contact => config.contacts.properties.get(name),
        ObjectType::Company => config
            .companies
            .as_ref()
            .and_then(|c| c.objects.properties.get(name)),
    }
}

/// Plans and, when nothing clashes, applies; a clash is an error listing every mismatch.
pub async fn ensure(setup: &Setup, config: &Config) -> anyhow::Result<Plan> {
    let plan = plan(setup, config).await?;
    if !plan.mismatches.is_empty() {
        anyhow::bail!(
            "{} does not match the portal's property definitions:\n  {}",
            config.path.display(),
            plan.mismatches.join("\n  ")
        );
    }
    apply(setup, config, &plan).await?;
    Ok(plan)
}
