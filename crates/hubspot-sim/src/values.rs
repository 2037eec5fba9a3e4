//! Checks one property value against its declared type, the way HubSpot does on a write, and
//! turns accepted values into the form HubSpot stores and returns. Pure functions only: the
//! caller decides what a failure means for the batch.

use chrono::{DateTime, NaiveDate, SecondsFormat, Timelike, Utc};

use crate::properties::{PropKind, PropertyDef};

/// Why HubSpot refused one value: the error code it reports and its human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueError {
    /// HubSpot's code, e.g. `INVALID_OPTION`.
    pub code: &'static str,
    /// The text HubSpot puts in `message`.
    pub message: String,
}

impl ValueError {
    fn new(code: &'static str, message: String) -> ValueError {
        ValueError { code, message }
    }
}

/// Checks a non-empty `value` for property `def` and returns it as stored.
///
/// Numbers and strings are stored as sent; dates become `YYYY-MM-DD`; datetimes become
/// RFC 3339 UTC with milliseconds, as HubSpot returns them; emails are trimmed and lower-cased.
pub(crate) fn check_value(def: &PropertyDef, value: &str) -> Result<String, ValueError> {
    match def.kind {
        PropKind::String | PropKind::Other => {
            if def.is_email {
                check_email(value)
            } else {
                Ok(value.to_owned())
            }
        }
        PropKind::Number => {
            if is_plain_decimal(value) {
                Ok(value.to_owned())
            } else {
                Err(ValueError::new(
                    "INVALID_INTEGER",
                    format!("{value} was not a valid number."),
                ))
            }
        }
        PropKind::Bool | PropKind::Enumeration => check_options(def, value),
        PropKind::Date => check_date(value),
        PropKind::Datetime => check_datetime(value),
    }
}

/// Checks an email address (`local@domain.tld`, no spaces) and returns it normalised.
pub(crate) fn check_email(value: &str) -> Result<String, ValueError> {
    let normalised = normalize_email(value);
    if looks_like_email(&normalised) {
        Ok(normalised)
    } else {
        Err(ValueError::new(
            "INVALID_EMAIL",
            format!("Email address {value} is invalid"),
        ))
    }
}

/// HubSpot's key for a contact email: trimmed and lower-cased.
pub(crate) fn normalize_email(value: &str) -> String {
    value.trim().to_lowercase()
}

fn looks_like_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    if local.is_empty() || domain.contains('@') || value.chars().any(char::is_whitespace) {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| !label.is_empty())
        && labels.last().is_some_and(|tld| tld.len() >= 2)
}

/// `^-?\d+(\.\d+)?$`: HubSpot's number format (no exponent, no grouping, one dot at most).
fn is_plain_decimal(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match digits.split_once('.') {
        Some((int, frac)) => all_digits(int) && all_digits(frac),
        None => all_digits(digits),
    }
}

/// Enumerations and bools: every `;`-separated part must be an option's internal value, and
/// only multi-select checkboxes take more than one.
fn check_options(def: &PropertyDef, value: &str) -> Result<String, ValueError> {
    let parts: Vec<&str> = value.split(';').collect();
    let multi = def.field_type == "checkbox" && def.kind == PropKind::Enumeration;
    let invalid = |part: &str| {
        ValueError::new(
            "INVALID_OPTION",
            format!(
                "{part} was not one of the allowed options: [{}]",
                def.options.join(", ")
            ),
        )
    };
    if parts.len() > 1 && !multi {
        return Err(invalid(value));
    }
    match parts
        .iter()
        .find(|part| !def.options.iter().any(|option| option == *part))
    {
        Some(bad) => Err(invalid(bad)),
        None => Ok(value.to_owned()),
    }
}

fn parse_epoch_millis(value: &str) -> Option<DateTime<Utc>> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
}

/// `YYYY-MM-DD` exactly (zero-padded), or epoch milliseconds at midnight UTC.
fn check_date(value: &str) -> Result<String, ValueError> {
    let bytes = value.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if shaped && let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(date.format("%Y-%m-%d").to_string());
    }
    if let Some(at) = parse_epoch_millis(value) {
        let time = at.time();
        if time.num_seconds_from_midnight() == 0 && time.nanosecond() == 0 {
            return Ok(at.date_naive().format("%Y-%m-%d").to_string());
        }
        return Err(ValueError::new(
            "INVALID_DATE",
            format!(
                "{value} is at {} UTC, not midnight!",
                time.format("%H:%M:%S%.3f")
            ),
        ));
    }
    Err(ValueError::new(
        "INVALID_DATE",
        format!(
            "{value} is not a valid date: use YYYY-MM-DD or epoch milliseconds at midnight UTC"
        ),
    ))
}

/// ISO 8601 in UTC with milliseconds (`2026-11-26T10:00:00.000Z`), the one form HubSpot
/// documents, or epoch milliseconds; epoch seconds pass and mean 1970.
fn check_datetime(value: &str) -> Result<String, ValueError> {
    let utc_millis = value.len() == 24
        && value.ends_with('Z')
        && value.as_bytes().get(19) == Some(&b'.')
        && value.as_bytes()[20..23].iter().all(u8::is_ascii_digit);
    let parsed = utc_millis
        .then(|| DateTime::parse_from_rfc3339(value).ok())
        .flatten()
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| parse_epoch_millis(value));
    match parsed {
        Some(at) => Ok(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        None => Err(ValueError::new(
            "INVALID_DATE",
            format!(
                "{value} is not a valid datetime: use ISO 8601 in UTC with milliseconds (2026-11-26T10:00:00.000Z) or epoch milliseconds"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::object_type::ObjectType;

    fn def(kind: &str, field_type: &str, options: &[&str]) -> PropertyDef {
        let options: Vec<_> = options
            .iter()
            .map(|v| json!({"label": v, "value": v}))
            .collect();
        PropertyDef::from_json(
            json!({"name": "p", "type": kind, "fieldType": field_type, "options": options}),
            ObjectType::Contacts,
        )
    }

    #[test]
    fn numbers_must_be_plain_decimals() {
        let number = def("number", "number", &[]);
        for good in ["47", "-3.25", "0", "0.5"] {
            assert_eq!(check_value(&number, good).as_deref(), Ok(good));
        }
        for bad in ["1,000", "1e3", "1.", ".5", "1.2.3", "abc", "+1", " 1"] {
            assert_eq!(
                check_value(&number, bad).map_err(|e| e.code),
                Err("INVALID_INTEGER")
            );
        }
    }

    #[test]
    fn dates_must_be_at_midnight_utc() {
        let date = def("date", "date", &[]);
        assert_eq!(
            check_value(&date, "2026-11-26").as_deref(),
            Ok("2026-11-26")
        );
        assert_eq!(
            check_value(&date, "1795737600000").as_deref(),
            Ok("2026-11-27")
        );
        let err = check_value(&date, "1795817935865").unwrap_err();
        assert_eq!(err.code, "INVALID_DATE");
        assert_eq!(
            err.message,
            "1795817935865 is at 22:18:55.865 UTC, not midnight!"
        );
        for bad in [
            "2026-13-01",
            "2026-1-5",
            "26-11-2026",
            "2026-11-26T00:00:00Z",
        ] {
            assert!(check_value(&date, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes_are_taken_in_utc_with_millis_or_as_epoch_millis() {
        let datetime = def("datetime", "date", &[]);
        assert_eq!(
            check_value(&datetime, "2026-11-26T10:00:00.000Z").as_deref(),
            Ok("2026-11-26T10:00:00.000Z")
        );
        assert_eq!(
            check_value(&datetime, "1795687200000").as_deref(),
            Ok("2026-11-26T10:00:00.000Z")
        );
        // Forms HubSpot does not document are refused.
        for other in [
            "2026-11-26T11:00:00.000+01:00",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00.0000Z",
            "2026-11-26T10:00:00.00éZ",
        ] {
            assert!(check_value(&datetime, other).is_err(), "{other}");
        }
        assert_eq!(
            check_value(&datetime, "0").as_deref(),
            Ok("1970-01-01T00:00:00.000Z")
        );
        assert!(check_value(&datetime, "2026-11-26").is_err());
        assert!(check_value(&datetime, "yesterday").is_err());
    }

    #[test]
    fn enumerations_take_option_values_only() {
        let select = def("enumeration", "select", &["free", "pro"]);
        assert!(check_value(&select, "pro").is_ok());
        assert_eq!(
            check_value(&select, "Pro").map_err(|e| e.code),
            Err("INVALID_OPTION")
        );
        assert!(check_value(&select, "free;pro").is_err());
        let multi = def("enumeration", "checkbox", &["a", "b"]);
        assert!(check_value(&multi, "a;b").is_ok());
        assert!(check_value(&multi, "a;c").is_err());
        let flag = def("bool", "booleancheckbox", &["true", "false"]);
        assert!(check_value(&flag, "true").is_ok());
        assert_eq!(
            check_value(&flag, "yes").map_err(|e| e.code),
            Err("INVALID_OPTION")
        );
    }

    #[test]
    fn emails_need_a_domain_with_a_dot() {
        assert_eq!(
            check_email(" Alice@Acme.COM ").as_deref(),
            Ok("alice@acme.com")
        );
        for bad in [
            "bad@",
            "@acme.com",
            "a b@acme.com",
            "a@acme",
            "a@@acme.com",
            "a@acme.c",
        ] {
            assert_eq!(
                check_email(bad).map_err(|e| e.code),
                Err("INVALID_EMAIL"),
                "{bad}"
            );
        }
    }
}
