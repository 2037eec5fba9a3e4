//! The reasons a row is parked in `hubsync.dlq` (`error_category`): one enum, so every place
//! that writes, counts or documents a category uses the same words.

use std::fmt;

/// A DLQ `error_category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// The event is malformed: object type, time, properties JSON, a missing `[companies]`.
    InvalidEvent,
    /// The email or company key is not a valid key.
    InvalidKey,
    /// A value does not fit its declared property, or an `increment` would leave the bounds.
    InvalidValue,
    /// The event names a property the config does not declare.
    UnknownProperty,
    /// The object's stored state cannot be read.
    InvalidState,
    /// HubSpot refused the record (a per-record validation error).
    HubspotValidation,
    /// A whole-batch 4xx traced to this record.
    HubspotRejected,
    /// Another per-record error from HubSpot; retried until `max_attempts`.
    HubspotError,
    /// Transient failures went on for `max_attempts`.
    HubspotUnavailable,
    /// HubSpot answered success without this record, `max_attempts` times.
    NotWritten,
    /// HubSpot refused to associate a contact with its company.
    AssociationRefused,
    /// Association requests kept failing.
    AssociationFailed,
}

impl Category {
    /// Every category, in the order the README lists them.
    pub(crate) const ALL: [Category; 12] = [
        Category::InvalidEvent,
        Category::InvalidKey,
        Category::InvalidValue,
        Category::UnknownProperty,
        Category::InvalidState,
        Category::HubspotValidation,
        Category::HubspotRejected,
        Category::HubspotError,
        Category::HubspotUnavailable,
        Category::NotWritten,
        Category::AssociationRefused,
        Category::AssociationFailed,
    ];

    /// The categories ingest refuses events under.
    pub const EVENT: [Category; 4] = [
        Category::InvalidEvent,
        Category::InvalidKey,
        Category::InvalidValue,
        Category::UnknownProperty,
    ];

    /// The word stored in `hubsync.dlq.error_category`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Category::InvalidEvent => "invalid_event",
            Category::InvalidKey => "invalid_key",
            Category::InvalidValue => "invalid_value",
            Category::UnknownProperty => "unknown_property",
            Category::InvalidState => "invalid_state",
            Category::HubspotValidation => "hubspot_validation",
            Category::HubspotRejected => "hubspot_rejected",
            Category::HubspotError => "hubspot_error",
            Category::HubspotUnavailable => "hubspot_unavailable",
            Category::NotWritten => "not_written",
            Category::AssociationRefused => "association_refused",
            Category::AssociationFailed => "association_failed",
        }
    }

    /// The category stored as `word`, if it is one.
    pub(crate) fn parse(word: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == word)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_reads_back_from_its_word() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(c));
        }
        assert_eq!(Category::parse("nonsense"), None);
    }
}
