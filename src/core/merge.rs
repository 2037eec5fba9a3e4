//! Merging: many events for one object fold into one absolute state whose result does not
//! depend on the order or the number of times they arrive. [`fold`](super::fold::fold) is the one place events
//! are applied to a state; ingest calls it, and the property tests beside it call it too.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::values::{Plain, check_number_bounds, format_decimal, parse_decimal};
use super::vocabulary::{MergeRule, ObjectConfig, PropertyDef, PropertyType};

/// One property's merged value: the HubSpot string, and the event that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropState {
    /// The value to send (already serialised for HubSpot).
    pub v: String,
    /// `occurred_at` of the deciding event, in microseconds since the epoch.
    pub at: i64,
    /// The deciding event's outbox sequence (the tie-breaker).
    pub seq: i64,
}

/// An object's merged state: every property, and the company it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    /// Merged properties by name.
    #[serde(default)]
    pub props: BTreeMap<String, PropState>,
    /// The company key, merged like a `set` property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<PropState>,
}

impl ObjectState {
    /// Reads a state as stored in `hubsync.objects`: a JSON object whose declared properties
    /// hold values of their declared type, as hubsync writes them (or nothing, for a cleared
    /// one). Anything else (edited by hand?) is refused with the reason, so that it is parked,
    /// never merged into or overwritten: an increment onto a sum that is not a number would
    /// otherwise start again from the event's delta.
    pub(crate) fn read(stored: &str, declared: &ObjectConfig) -> Result<ObjectState, String> {
        if !stored.trim_start().starts_with('{') {
            return Err("it is not a JSON object".into());
        }
        let state: ObjectState = serde_json::from_str(stored).map_err(|e| e.to_string())?;
        for (name, prop) in &state.props {
            if let Some(def) = declared.properties.get(name)
                && let Some(problem) = stored_value_problem(&def.ptype, &prop.v)
            {
                return Err(format!(
                    "property \"{name}\" holds \"{}\", {problem}",
                    super::values::shown(&prop.v)
                ));
            }
        }
        Ok(state)
    }
}

/// Why a stored value cannot be one hubsync wrote for `ptype`, if it cannot.
fn stored_value_problem(ptype: &PropertyType, v: &str) -> Option<&'static str> {
    if v.is_empty() {
        return None;
    }
    let fits = match ptype {
        PropertyType::Number => Plain::parse(v).is_some() || parse_decimal(v).is_some(),
        PropertyType::Bool => v == "true" || v == "false",
        PropertyType::Date => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok(),
        PropertyType::Datetime => chrono::DateTime::parse_from_rfc3339(v).is_ok(),
        PropertyType::String | PropertyType::Enumeration { .. } => true,
    };
    (!fits).then_some(match ptype {
        PropertyType::Number => "which is not a number",
        PropertyType::Bool => "which is not true or false",
        PropertyType::Date => "which is not a YYYY-MM-DD date",
        _ => "which is not an RFC 3339 time",
    })
}

/// One accepted event's contribution to one property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// Serialised value (for `increment`, the delta).
    pub v: String,
    /// occurred_at in microseconds.
    pub at: i64,
    /// Outbox sequence.
    pub seq: i64,
}

fn later(a: (i64, i64), b: (i64, i64)) -> bool {
    a > b
}

fn compare_values(ptype: &PropertyType, a: &str, b: &str) -> Ordering {
    match ptype {
        PropertyType::Number => {
            if let Some(order) = Plain::parse(a)
                .zip(Plain::parse(b))
                .and_then(|(x, y)| x.compare(y))
            {
                return order;
            }
            match (parse_decimal(a), parse_decimal(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => a.cmp(b),
            }
        }
        // Both are fixed-width UTC forms, so text order is time order.
        _ => a.cmp(b),
    }
}

/// Why `current` + `delta` is refused.
fn sum_refused(def: &PropertyDef, current: &str, delta: &str, reason: &str) -> String {
    format!(
        "property \"{}\": adding {delta} to {current} {reason}",
        def.name
    )
}

/// `current` + `delta` with arbitrary precision, for numbers [`Plain`] does not hold. An empty
/// current value (never set) counts as zero.
fn exact_sum(def: &PropertyDef, current: &str, delta: &str) -> Result<String, String> {
    Ok(match (parse_decimal(current), parse_decimal(delta)) {
        (Some(a), Some(b)) => {
            let sum = a + b;
            check_number_bounds(&sum)
                .map_err(|reason| sum_refused(def, current, delta, &reason))?;
            format_decimal(&sum)
        }
        (None, Some(b)) => format_decimal(&b),
        (Some(a), None) => format_decimal(&a),
        (None, None) => String::new(),
    })
}

/// Folds one contribution into a property's state under the property's merge rule.
/// The result is the same whatever order contributions arrive in. Refused (with the reason)
/// only when an `increment` would take the sum out of the bounds a number can have; the
/// state is then left as it was.
pub(crate) fn merge(
    def: &PropertyDef,
    current: Option<&PropState>,
    c: &Contribution,
) -> Result<PropState, String> {
    let incoming = PropState {
        v: c.v.clone(),
        at: c.at,
        seq: c.seq,
    };
    let Some(cur) = current else {
        return Ok(incoming);
    };
    let newer = later((c.at, c.seq), (cur.at, cur.seq));
    Ok(match def.merge {
        MergeRule::Set => {
            if newer {
                incoming
            } else {
                cur.clone()
            }
        }
        MergeRule::SetOnce => {
            if newer {
                cur.clone()
            } else {
                incoming
            }
        }
        MergeRule::Increment => {
            let plain = Plain::parse(&cur.v)
                .zip(Plain::parse(&c.v))
                .and_then(|(a, b)| a.checked_add(b));
            let sum = match plain {
                Some(sum) => {
                    sum.check()
                        .map_err(|reason| sum_refused(def, &cur.v, &c.v, &reason))?;
                    sum.format()
                }
                None => exact_sum(def, &cur.v, &c.v)?,
            };
            let (at, seq) = if newer {
                (c.at, c.seq)
            } else {
                (cur.at, cur.seq)
            };
            PropState { v: sum, at, seq }
        }
        MergeRule::Max | MergeRule::Min => {
            let mut ord = compare_values(&def.ptype, &c.v, &cur.v);
            if def.merge == MergeRule::Min {
                ord = ord.reverse();
            }
            match ord {
                Ordering::Greater => incoming,
                Ordering::Less => cur.clone(),
                // Equal values: keep the later event's stamp so the state is order-proof.
                Ordering::Equal if newer => incoming,
                Ordering::Equal => cur.clone(),
            }
        }
    })
}

/// Folds a company key into the state like a `set` property.
pub(crate) fn merge_company(state: &mut ObjectState, key: &str, at: i64, seq: i64) {
    let newer = match &state.company {
        None => true,
        Some(cur) => later((at, seq), (cur.at, cur.seq)),
    };
    if newer {
        state.company = Some(PropState {
            v: key.to_string(),
            at,
            seq,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(ptype: PropertyType, merge: MergeRule) -> PropertyDef {
        PropertyDef::test(ptype, merge)
    }
    fn c(v: &str, at: i64, seq: i64) -> Contribution {
        Contribution {
            v: v.into(),
            at,
            seq,
        }
    }

    fn fold(d: &PropertyDef, items: &[Contribution]) -> PropState {
        let mut state: Option<PropState> = None;
        for item in items {
            state = Some(merge(d, state.as_ref(), item).unwrap());
        }
        state.unwrap()
    }

    #[test]
    fn set_keeps_the_latest_and_breaks_ties_by_sequence() {
        let d = def(PropertyType::String, MergeRule::Set);
        let items = [c("a", 10, 1), c("b", 30, 2), c("c", 20, 3), c("d", 30, 1)];
        assert_eq!(fold(&d, &items).v, "b");
        let mut rev = items.to_vec();
        rev.reverse();
        assert_eq!(fold(&d, &rev).v, "b");
    }

    #[test]
    fn set_once_keeps_the_earliest() {
        let d = def(PropertyType::String, MergeRule::SetOnce);
        assert_eq!(
            fold(&d, &[c("b", 30, 2), c("a", 10, 5), c("z", 10, 6)]).v,
            "a"
        );
    }

    #[test]
    fn increment_sums_exactly() {
        let d = def(PropertyType::Number, MergeRule::Increment);
        let items = [
            c("0.1", 1, 1),
            c("0.2", 2, 2),
            c("-0.3", 3, 3),
            c("5", 4, 4),
        ];
        assert_eq!(fold(&d, &items).v, "5");
        let big = [c("9007199254740993", 1, 1), c("1", 2, 2)];
        assert_eq!(fold(&d, &big).v, "9007199254740994");
    }

    #[test]
    fn max_and_min_compare_by_type() {
        let max = def(PropertyType::Number, MergeRule::Max);
        assert_eq!(
            fold(&max, &[c("9", 1, 1), c("10", 2, 2), c("-1", 3, 3)]).v,
            "10"
        );
        let min = def(PropertyType::Datetime, MergeRule::Min);
        let items = [
            c("2026-11-26T10:00:00.000Z", 1, 1),
            c("2026-01-01T00:00:00.000Z", 2, 2),
        ];
        assert_eq!(fold(&min, &items).v, "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn an_increment_that_would_leave_the_bounds_is_refused() {
        let d = def(PropertyType::Number, MergeRule::Increment);
        let big = format!("9{}", "0".repeat(31));
        let cur = merge(&d, None, &c(&big, 1, 1)).unwrap();
        let err = merge(&d, Some(&cur), &c(&big, 2, 2)).unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let down = merge(&d, Some(&cur), &c(&format!("-{big}"), 2, 2)).unwrap();
        assert_eq!(down.v, "0");
    }

    #[test]
    fn a_stored_state_is_read_only_when_its_values_fit_their_types() {
        let mut declared = ObjectConfig {
            properties: BTreeMap::new(),
            lines: BTreeMap::new(),
        };
        for (name, ptype, merge) in [
            ("sessions", PropertyType::Number, MergeRule::Increment),
            ("seen", PropertyType::Datetime, MergeRule::Max),
            ("trial", PropertyType::Date, MergeRule::Set),
            ("paid", PropertyType::Bool, MergeRule::Set),
        ] {
            let mut d = def(ptype, merge);
            d.name = name.into();
            declared.properties.insert(name.into(), d);
        }
        let state = |name: &str, v: &str| {
            format!(r#"{{"props":{{"{name}":{{"v":"{v}","at":1,"seq":1}}}}}}"#)
        };
        for (name, v) in [
            ("sessions", "12"),
            ("sessions", "-0.5"),
            ("sessions", "12345678901234567890123456789012.00000001"),
            ("sessions", ""),
            ("seen", "2026-11-26T10:00:00.000Z"),
            ("trial", "2026-11-26"),
            ("paid", "false"),
            ("undeclared", "anything"),
        ] {
            assert!(
                ObjectState::read(&state(name, v), &declared).is_ok(),
                "{name} {v}"
            );
        }
        for (name, v, why) in [
            ("sessions", "12abc", "not a number"),
            ("seen", "garbage", "not an RFC 3339 time"),
            ("trial", "2026-02-30", "not a YYYY-MM-DD date"),
            ("paid", "yes", "not true or false"),
        ] {
            let err = ObjectState::read(&state(name, v), &declared).unwrap_err();
            assert!(
                err.contains(name) && err.contains(v) && err.contains(why),
                "{err}"
            );
        }
        for not_an_object in ["[]", "null", "5", " \"x\""] {
            let err = ObjectState::read(not_an_object, &declared).unwrap_err();
            assert!(err.contains("not a JSON object"), "{not_an_object}: {err}");
        }
    }
}
