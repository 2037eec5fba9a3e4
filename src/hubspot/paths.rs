//! Every HubSpot path hubsync calls, in one place, for both API editions
//! (`docs/hubspot-behaviour.md` §1).

use crate::core::vocabulary::{ApiVersion, ObjectType};

/// Builds request paths for the configured API edition.
#[derive(Debug, Clone, Copy)]
pub struct Paths {
    version: ApiVersion,
}

impl Paths {
    /// Paths for this edition.
    pub fn new(version: ApiVersion) -> Paths {
        Paths { version }
    }

    fn objects(self) -> &'static str {
        match self.version {
            ApiVersion::V2026_03 => "/crm/objects/2026-03",
            ApiVersion::V3 => "/crm/v3/objects",
        }
    }

    fn properties(self) -> &'static str {
        match self.version {
            ApiVersion::V2026_03 => "/crm/properties/2026-03",
            ApiVersion::V3 => "/crm/v3/properties",
        }
    }

    /// `POST` batch upsert.
    pub fn batch_upsert(self, kind: ObjectType) -> String {
        format!("{}/{}/batch/upsert", self.objects(), kind.plural())
    }

    /// `GET` list / `POST` create properties.
    pub(crate) fn property_list(self, kind: ObjectType) -> String {
        format!("{}/{}", self.properties(), kind.plural())
    }

    /// `GET` / `PATCH` one property.
    pub(crate) fn property(self, kind: ObjectType, name: &str) -> String {
        format!("{}/{}/{name}", self.properties(), kind.plural())
    }

    /// `GET` list / `POST` create property groups.
    pub(crate) fn groups(self, kind: ObjectType) -> String {
        format!("{}/{}/groups", self.properties(), kind.plural())
    }

    /// `POST` default associations contact → company.
    pub(crate) fn associate_contacts_to_companies(self) -> String {
        match self.version {
            ApiVersion::V2026_03 => {
                "/crm/associations/2026-03/contacts/companies/batch/associate/default".into()
            }
            ApiVersion::V3 => {
                "/crm/v4/associations/contacts/companies/batch/associate/default".into()
            }
        }
    }

    /// `POST` removal of contact → company associations.
    pub(crate) fn archive_contacts_to_companies(self) -> String {
        match self.version {
            ApiVersion::V2026_03 => {
                "/crm/associations/2026-03/contacts/companies/batch/archive".into()
            }
            ApiVersion::V3 => "/crm/v4/associations/contacts/companies/batch/archive".into(),
        }
    }

    /// `GET` the portal's account details (time zone).
    pub(crate) fn account_details(self) -> String {
        "/account-info/v3/details".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_editions_have_their_paths() {
        let new = Paths::new(ApiVersion::V2026_03);
        let old = Paths::new(ApiVersion::V3);
        assert_eq!(
            new.batch_upsert(ObjectType::Contact),
            "/crm/objects/2026-03/contacts/batch/upsert"
        );
        assert_eq!(
            old.batch_upsert(ObjectType::Company),
            "/crm/v3/objects/companies/batch/upsert"
        );
        assert_eq!(
            new.property(ObjectType::Contact, "plan"),
            "/crm/properties/2026-03/contacts/plan"
        );
        assert_eq!(
            old.groups(ObjectType::Contact),
            "/crm/v3/properties/contacts/groups"
        );
        assert!(
            old.associate_contacts_to_companies()
                .starts_with("/crm/v4/")
        );
    }
}
