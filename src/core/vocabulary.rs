//! The words hubsync speaks: the property types it can write, how events combine (merge
//! rules), the two object types, and the properties a config declares. Pure data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A HubSpot property type hubsync can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyType {
    /// Free text, up to 65,536 characters.
    String,
    /// A decimal number, sent without exponent.
    Number,
    /// A checkbox, sent as `true` / `false`.
    Bool,
    /// A calendar date, sent as `YYYY-MM-DD`.
    Date,
    /// A point in time, sent as UTC ISO 8601 with milliseconds.
    Datetime,
    /// One option (or several, joined by `;`, when `multiple`) out of a fixed list.
    Enumeration {
        /// The options' internal values.
        options: Vec<String>,
        /// Multi-select (HubSpot fieldType `checkbox`).
        multiple: bool,
    },
}

impl PropertyType {
    /// The name used in hubsync.toml and in HubSpot's `type` field.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            PropertyType::String => "string",
            PropertyType::Number => "number",
            PropertyType::Bool => "bool",
            PropertyType::Date => "date",
            PropertyType::Datetime => "datetime",
            PropertyType::Enumeration { .. } => "enumeration",
        }
    }

    /// The HubSpot `fieldType` hubsync creates the property with.
    pub(crate) fn field_type(&self) -> &'static str {
        match self {
            PropertyType::String => "text",
            PropertyType::Number => "number",
            PropertyType::Bool => "booleancheckbox",
            PropertyType::Date | PropertyType::Datetime => "date",
            PropertyType::Enumeration { multiple: true, .. } => "checkbox",
            PropertyType::Enumeration {
                multiple: false, ..
            } => "select",
        }
    }

    /// The type names accepted in hubsync.toml.
    pub(crate) const NAMES: &'static str = "string, number, bool, date, datetime, enumeration";
}

/// How many events touching one property combine into one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeRule {
    /// The latest `occurred_at` wins; on a tie, the event enqueued later.
    Set,
    /// The earliest `occurred_at` wins; on a tie, the event enqueued earlier.
    SetOnce,
    /// Each event carries a delta; the value is their exact sum.
    Increment,
    /// The greatest value wins.
    Max,
    /// The smallest value wins.
    Min,
}

impl MergeRule {
    /// Parses a merge rule name from hubsync.toml.
    pub(crate) fn parse(name: &str) -> Option<MergeRule> {
        Some(match name {
            "set" => MergeRule::Set,
            "set_once" => MergeRule::SetOnce,
            "increment" => MergeRule::Increment,
            "max" => MergeRule::Max,
            "min" => MergeRule::Min,
            _ => return None,
        })
    }

    /// The name used in hubsync.toml.
    pub(crate) fn name(self) -> &'static str {
        match self {
            MergeRule::Set => "set",
            MergeRule::SetOnce => "set_once",
            MergeRule::Increment => "increment",
            MergeRule::Max => "max",
            MergeRule::Min => "min",
        }
    }

    /// Whether this rule makes sense for that type; `None` when it does, else what fits.
    pub(crate) fn misfit(self, ptype: &PropertyType) -> Option<&'static str> {
        match (self, ptype) {
            (MergeRule::Set | MergeRule::SetOnce, _) => None,
            (MergeRule::Increment, PropertyType::Number) => None,
            (MergeRule::Increment, _) => Some("increment works only on number properties"),
            (
                MergeRule::Max | MergeRule::Min,
                PropertyType::Number | PropertyType::Date | PropertyType::Datetime,
            ) => None,
            (MergeRule::Max | MergeRule::Min, _) => {
                Some("max and min work only on number, date and datetime properties")
            }
        }
    }
}

/// HubSpot API edition: date-versioned paths, or the older v3/v4 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/crm/objects/2026-03/...` and friends (the default).
    V2026_03,
    /// `/crm/v3/...` and `/crm/v4/associations/...`, for older portals.
    V3,
}

/// The two HubSpot object types hubsync writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectType {
    /// A contact, keyed by email.
    Contact,
    /// A company, keyed by the configured unique id property.
    Company,
}

impl ObjectType {
    /// The name used in `hubsync.outbox.object_type`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ObjectType::Contact => "contact",
            ObjectType::Company => "company",
        }
    }

    /// Parses `hubsync.outbox.object_type`.
    pub(crate) fn parse(name: &str) -> Option<ObjectType> {
        match name.trim() {
            "contact" => Some(ObjectType::Contact),
            "company" => Some(ObjectType::Company),
            _ => None,
        }
    }

    /// The object type in HubSpot's paths.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            ObjectType::Contact => "contacts",
            ObjectType::Company => "companies",
        }
    }
}

/// One declared property: its HubSpot name, type, merge rule and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyDef {
    /// HubSpot internal name.
    pub name: String,
    /// The declared type.
    pub ptype: PropertyType,
    /// How events combine.
    pub merge: MergeRule,
    /// The label shown in HubSpot.
    pub label: String,
    /// Optional description shown in HubSpot.
    pub description: Option<String>,
}

/// One object type's declared properties.
#[derive(Debug, Clone, Default)]
pub struct ObjectConfig {
    /// Declared properties by name.
    pub properties: BTreeMap<String, PropertyDef>,
    /// The config-file line each property is declared on, for messages.
    pub lines: BTreeMap<String, usize>,
}

#[cfg(test)]
impl PropertyDef {
    /// A property `p` of that type and rule, for tests.
    pub(crate) fn test(ptype: PropertyType, merge: MergeRule) -> PropertyDef {
        PropertyDef {
            name: "p".into(),
            ptype,
            merge,
            label: "P".into(),
            description: None,
        }
    }
}

/// The `[companies]` table.
#[derive(Debug, Clone)]
pub struct CompanyConfig {
    /// The unique property companies are upserted by.
    pub id_property: String,
    /// Declared properties.
    pub objects: ObjectConfig,
}

/// What a config declares for both object types: all event preparation needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Declared<'a> {
    /// `[contacts]`
    pub contacts: &'a ObjectConfig,
    /// `[companies]`, when configured.
    pub companies: Option<&'a CompanyConfig>,
}

impl<'a> Declared<'a> {
    /// The properties declared for `object`, or `None` when companies are not configured.
    pub(crate) fn of(self, object: ObjectType) -> Option<&'a ObjectConfig> {
        match object {
            ObjectType::Contact => Some(self.contacts),
            ObjectType::Company => self.companies.map(|c| &c.objects),
        }
    }
}
