//! Start-up reconciliation of hubsync.toml with the portal's property definitions: plan (pure)
//! what to create, which enumeration options to add, and which declared types clash; then apply.
//!
//! A type clash refuses start-up: writing values of one type into a property of another would
//! either be refused record by record or, for `string`, silently stored as text.

use std::collections::BTreeMap;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use crate::config::{Config, ObjectConfig};
use crate::hubspot::HubSpotClient;
use crate::schema::{ObjectKind, PropertyDef, PropertyType};

/// What `check` and `run` found when comparing config and portal.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Property groups to create: (object, group name).
    pub create_groups: Vec<(ObjectKind, String)>,
    /// Properties to create: (object, JSON body).
    pub create: Vec<(ObjectKind, String, Value)>,
    /// Enumerations to PATCH with the union of both option lists: (object, name, options).
    pub add_options: Vec<(ObjectKind, String, Vec<String>)>,
    /// Refusals: each says what clashes and how to fix it.
    pub mismatches: Vec<String>,
}

impl Plan {
    /// Lines describing the plan, for `hubsync check`.
    pub fn describe(&self) -> Vec<String> {
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
            out.push(format!(
                "update {} property \"{name}\" options to [{}]",
                kind.plural(),
                options.join(", ")
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
    if let PropertyType::Enumeration { options, .. } = &def.ptype {
        body["options"] = options_json(options);
    }
    body
}

fn options_json(options: &[String]) -> Value {
    Value::Array(
        options
            .iter()
            .enumerate()
            .map(|(i, o)| json!({"label": o, "value": o, "displayOrder": i, "hidden": false}))
            .collect(),
    )
}

fn remote_options(p: &Value) -> Vec<String> {
    p.get("options")
        .and_then(Value::as_array)
        .map(|opts| {
            opts.iter()
                .filter_map(|o| o.get("value").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// One object type as declared: its kind, properties, and (companies) the unique id property.
pub struct Declared<'a> {
    /// Contact or company.
    pub kind: ObjectKind,
    /// Declared properties.
    pub objects: &'a ObjectConfig,
    /// The unique property companies are upserted by.
    pub unique_id: Option<&'a str>,
}

/// The portal's side: properties by name and group names.
pub struct Remote {
    /// Properties by name, as HubSpot returns them.
    pub properties: BTreeMap<String, Value>,
    /// Property group names.
    pub groups: Vec<String>,
}

/// Plans one object type into `plan`; `config_file` and `group` are for messages and bodies.
pub fn plan_object(
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
    let (remote, groups) = (&remote.properties, &remote.groups);
    if !groups.iter().any(|g| g == group) {
        plan.create_groups.push((kind, group.to_string()));
    }
    if let Some(id) = unique_id {
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
    for (name, def) in &objects.properties {
        let Some(p) = remote.get(name) else {
            plan.create
                .push((kind, name.clone(), property_body(def, group)));
            continue;
        };
        let remote_type = p.get("type").and_then(Value::as_str).unwrap_or("unknown");
        if remote_type != def.ptype.name() {
            let line = objects
                .lines
                .get(name)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            plan.mismatches.push(format!(
                "{} property \"{name}\" is \"{remote_type}\" in HubSpot but \"{}\" in {config_file}{line}; rename it in {config_file} or change it in HubSpot",
                kind.as_str(),
                def.ptype.name()
            ));
            continue;
        }
        if let PropertyType::Enumeration { options, .. } = &def.ptype {
            let mut union = remote_options(p);
            let before = union.len();
            for o in options {
                if !union.contains(o) {
                    union.push(o.clone());
                }
            }
            if union.len() > before {
                plan.add_options.push((kind, name.clone(), union));
            }
        }
    }
}

async fn fetch_object(client: &HubSpotClient, kind: ObjectKind) -> anyhow::Result<Remote> {
    let list = client
        .setup_call(Method::GET, &client.paths.property_list(kind), None)
        .await?
        .unwrap_or(Value::Null);
    let remote: BTreeMap<String, Value> = list
        .get("results")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|p| Some((p.get("name")?.as_str()?.to_string(), p.clone())))
                .collect()
        })
        .unwrap_or_default();
    let groups = client
        .setup_call(Method::GET, &client.paths.groups(kind), None)
        .await?
        .unwrap_or(Value::Null);
    let groups: Vec<String> = groups
        .get("results")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|g| g.get("name")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(Remote {
        properties: remote,
        groups,
    })
}

/// Reads the portal's definitions and plans what start-up must do.
pub async fn plan(client: &HubSpotClient, config: &Config) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let file = config.path.display().to_string();
    let group = &config.hubspot.property_group;
    let contacts = Declared {
        kind: ObjectKind::Contact,
        objects: &config.contacts,
        unique_id: None,
    };
    let remote = fetch_object(client, ObjectKind::Contact).await?;
    plan_object(&contacts, &remote, group, &file, &mut plan);
    if let Some(companies) = &config.companies {
        let declared = Declared {
            kind: ObjectKind::Company,
            objects: &companies.objects,
            unique_id: Some(&companies.id_property),
        };
        let remote = fetch_object(client, ObjectKind::Company).await?;
        plan_object(&declared, &remote, group, &file, &mut plan);
    }
    Ok(plan)
}

/// Applies a plan without mismatches: groups, then properties, then option unions.
pub async fn apply(client: &HubSpotClient, config: &Config, plan: &Plan) -> anyhow::Result<()> {
    for (kind, group) in &plan.create_groups {
        let body = json!({"name": group, "label": config.hubspot.property_group_label, "displayOrder": -1});
        create_tolerating_race(client, &client.paths.groups(*kind), &body)
            .await
            .with_context(|| format!("failed to create property group \"{group}\""))?;
    }
    for (kind, name, body) in &plan.create {
        create_tolerating_race(client, &client.paths.property_list(*kind), body)
            .await
            .with_context(|| format!("failed to create {} property \"{name}\"", kind.plural()))?;
        tracing::info!(object = kind.plural(), property = %name, "created property");
    }
    for (kind, name, options) in &plan.add_options {
        // PATCH replaces the whole option list, so the union is sent.
        let body = json!({"options": options_json(options)});
        client
            .setup_call(
                Method::PATCH,
                &client.paths.property(*kind, name),
                Some(&body),
            )
            .await
            .with_context(|| format!("failed to add options to property \"{name}\""))?;
        tracing::info!(object = kind.plural(), property = %name, "added enumeration options");
    }
    Ok(())
}

/// Creates a property or group; another worker creating it first (409) is fine.
async fn create_tolerating_race(
    client: &HubSpotClient,
    path: &str,
    body: &Value,
) -> anyhow::Result<()> {
    match client.setup_call(Method::POST, path, Some(body)).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("answered 409") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Plans and, when nothing clashes, applies; a clash is an error listing every mismatch.
pub async fn ensure(client: &HubSpotClient, config: &Config) -> anyhow::Result<Plan> {
    let plan = plan(client, config).await?;
    if !plan.mismatches.is_empty() {
        anyhow::bail!(
            "hubsync.toml does not match the portal's property definitions:\n  {}",
            plan.mismatches.join("\n  ")
        );
    }
    apply(client, config, &plan).await?;
    Ok(plan)
}
