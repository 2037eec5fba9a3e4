//! The two object types the simulator stores, contacts and companies, and how paths name them.

/// The two object types the simulator stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObjectType {
    /// `contacts`, type id `0-1`.
    Contacts,
    /// `companies`, type id `0-2`.
    Companies,
}

impl ObjectType {
    /// Parses a path segment: the name or the type id.
    pub(crate) fn parse(segment: &str) -> Option<ObjectType> {
        match segment {
            "contacts" | "0-1" => Some(ObjectType::Contacts),
            "companies" | "0-2" => Some(ObjectType::Companies),
            _ => None,
        }
    }

    /// The plural name used in paths.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
        }
    }

    /// HubSpot's object type id.
    pub(crate) fn type_id(self) -> &'static str {
        match self {
            ObjectType::Contacts => "0-1",
            ObjectType::Companies => "0-2",
        }
    }
}
