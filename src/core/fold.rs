//! The fold: applying prepared events to an object's state. Ingest calls [`fold`] for every
//! object it touches, and the property tests beside it call the same function, so what they
//! prove (any order, any duplication, any cut into chunks gives one state) is what runs.

use std::collections::BTreeMap;

use serde_json::json;

use super::dlq::Category;
use super::event::{Prepared, Refusal};
use super::merge::{ObjectState, merge, merge_company};
use super::vocabulary::PropertyDef;

/// An event [`fold`] left out, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unapplied {
    /// Its position in the events given to `fold`.
    pub event: usize,
    /// Why it was not applied.
    pub refusal: Refusal,
}

/// Applies `events` (all for the object `state` belongs to, in any order) to `state`. Each
/// event is applied whole or not at all: one whose `increment` would leave the bounds a number
/// can have is left out entirely (a later replay would otherwise count its other deltas twice)
/// and comes back as [`Unapplied`]. Properties `declared` does not know are skipped.
pub fn fold(
    state: &mut ObjectState,
    declared: &BTreeMap<String, PropertyDef>,
    events: &[&Prepared],
) -> Vec<Unapplied> {
    let mut unapplied = Vec::new();
    'events: for (n, p) in events.iter().enumerate() {
        let mut merged = Vec::with_capacity(p.contributions.len());
        for (name, contribution) in &p.contributions {
            let Some(def) = declared.get(name) else {
                continue;
            };
            match merge(def, state.props.get(name), contribution) {
                Ok(m) => merged.push((name.clone(), m)),
                Err(reason) => {
                    unapplied.push(Unapplied {
                        event: n,
                        refusal: Refusal {
                            category: Category::InvalidValue,
                            message: format!("{reason}; the sum is left as it was"),
                            detail: json!({"problems": [{
                                "property": name, "value": contribution.v, "reason": reason
                            }]}),
                        },
                    });
                    continue 'events;
                }
            }
        }
        state.props.extend(merged);
        if let Some(c) = &p.company_key {
            merge_company(state, c, p.at, p.seq);
        }
    }
    unapplied
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::core::event::{OutboxEvent, dedupe, prepare};
    use crate::core::vocabulary::{
        CompanyConfig, Declared, MergeRule, ObjectConfig, ObjectType, PropertyType,
    };

    fn declare(props: &[(&str, PropertyType, MergeRule)]) -> ObjectConfig {
        ObjectConfig {
            properties: props
                .iter()
                .map(|(name, ptype, merge)| {
                    let def = PropertyDef {
                        name: name.to_string(),
                        ptype: ptype.clone(),
                        merge: *merge,
                        label: name.to_string(),
                        description: None,
                    };
                    (name.to_string(), def)
                })
                .collect(),
            lines: BTreeMap::new(),
        }
    }

    fn contacts() -> ObjectConfig {
        let plans = PropertyType::Enumeration {
            options: vec!["free".into(), "pro".into(), "enterprise".into()],
            multiple: false,
        };
        declare(&[
            ("current_plan", plans, MergeRule::Set),
            ("total_sessions", PropertyType::Number, MergeRule::Increment),
            ("score", PropertyType::Number, MergeRule::Max),
            ("trial_started_on", PropertyType::Date, MergeRule::SetOnce),
            ("last_active_at", PropertyType::Datetime, MergeRule::Max),
            ("first_seen_at", PropertyType::Datetime, MergeRule::Min),
        ])
    }

    fn companies() -> CompanyConfig {
        CompanyConfig {
            id_property: "product_account_id".into(),
            objects: declare(&[
                ("seats", PropertyType::Number, MergeRule::Max),
                ("account_tier", PropertyType::String, MergeRule::Set),
                ("usage_total", PropertyType::Number, MergeRule::Increment),
            ]),
        }
    }

    /// One generated event: which object, when, and the values it carries.
    #[derive(Debug, Clone)]
    struct Spec {
        company_event: bool,
        object: usize,
        minute: i64,
        pick: usize,
        delta: &'static str,
        seen: i64,
        company: Option<usize>,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            any::<bool>(),
            0usize..2,
            0i64..6, // few minutes: many ties, broken by sequence
            0usize..3,
            prop_oneof![
                Just("1"),
                Just("0.1"),
                Just("-2.5"),
                Just("12345678901234567890")
            ],
            0i64..20,
            prop::option::of(0usize..2),
        )
            .prop_map(
                |(company_event, object, minute, pick, delta, seen, company)| Spec {
                    company_event,
                    object,
                    minute,
                    pick,
                    delta,
                    seen,
                    company,
                },
            )
    }

    fn event(n: usize, s: &Spec) -> OutboxEvent {
        let base = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let seen = (base + Duration::minutes(s.seen)).to_rfc3339();
        let (object_type, object_key, properties, company_key) = if s.company_event {
            let tiers = ["seed", "growth", "scale"];
            (
                "company",
                format!("acct-{}", s.object),
                format!(
                    r#"{{"seats": {}, "account_tier": "{}", "usage_total": {}}}"#,
                    s.seen, tiers[s.pick], s.delta
                ),
                None,
            )
        } else {
            let plans = ["free", "pro", "enterprise"];
            (
                "contact",
                format!("User{}@Acme.com", s.object),
                // Written as text: the deltas keep every digit (no float on the way).
                format!(
                    r#"{{"current_plan": "{}", "total_sessions": {d}, "score": {d},
                        "trial_started_on": "2026-10-{:02}", "last_active_at": "{seen}",
                        "first_seen_at": "{seen}"}}"#,
                    plans[s.pick],
                    1 + (s.seen % 28),
                    d = s.delta,
                ),
                s.company.map(|c| format!("acct-{c}")),
            )
        };
        OutboxEvent {
            seq: n as i64 + 1,
            event_id: Uuid::from_u128(n as u128 + 1),
            object_type: object_type.into(),
            object_key,
            properties,
            occurred_at: Ok(base + Duration::minutes(s.minute)),
            company_key,
            enqueued_at: None,
        }
    }

    type States = BTreeMap<(ObjectType, String), ObjectState>;

    /// What ingest does with chunks as they are claimed: the ledger (here a set of ids) drops
    /// what was processed before, then each object's events are folded into its state.
    fn ingest(chunks: &[Vec<OutboxEvent>], declared: Declared<'_>) -> States {
        let mut states = States::new();
        let mut ledger: HashSet<Uuid> = HashSet::new();
        for chunk in chunks {
            let fresh: HashSet<Uuid> = chunk
                .iter()
                .map(|e| e.event_id)
                .filter(|id| ledger.insert(*id))
                .collect();
            let mut by_object: BTreeMap<(ObjectType, String), Vec<Prepared>> = BTreeMap::new();
            for e in dedupe(chunk.clone(), &fresh) {
                let p = prepare(&e, declared).expect("generated events are valid");
                by_object
                    .entry((p.kind, p.key.clone()))
                    .or_default()
                    .push(p);
            }
            for ((kind, key), prepared) in by_object {
                let state = states.entry((kind, key)).or_default();
                let mine: Vec<&Prepared> = prepared.iter().collect();
                let defs = &declared.of(kind).expect("declared").properties;
                let unapplied = fold(state, defs, &mine);
                assert!(unapplied.is_empty(), "{unapplied:?}");
            }
        }
        states
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

        #[test]
        fn any_order_duplication_and_chunking_of_the_same_events_gives_the_same_states(
            specs in prop::collection::vec(spec(), 1..30),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
            seed in any::<u64>(),
        ) {
            let (contacts, companies) = (contacts(), companies());
            let declared = Declared { contacts: &contacts, companies: Some(&companies) };
            let events: Vec<OutboxEvent> =
                specs.iter().enumerate().map(|(n, s)| event(n, s)).collect();
            let reference = ingest(std::slice::from_ref(&events), declared);

            // A permutation (seeded shuffle), with duplicates, cut into chunks.
            let mut shuffled = events.clone();
            for d in &dups {
                shuffled.push(events[d.index(events.len())].clone());
            }
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut bounds: Vec<usize> =
                cuts.iter().map(|c| c.index(shuffled.len() + 1)).collect();
            bounds.push(0);
            bounds.push(shuffled.len());
            bounds.sort_unstable();
            let chunks: Vec<Vec<OutboxEvent>> =
                bounds.windows(2).map(|w| shuffled[w[0]..w[1]].to_vec()).collect();

            prop_assert_eq!(ingest(&chunks, declared), reference);
        }
    }

    #[test]
    fn the_newest_company_key_wins_whatever_the_order() {
        let (contacts, companies) = (contacts(), companies());
        let declared = Declared {
            contacts: &contacts,
            companies: Some(&companies),
        };
        let at = |minute, company| Spec {
            company_event: false,
            object: 0,
            minute,
            pick: 0,
            delta: "1",
            seen: 0,
            company: Some(company),
        };
        let events = vec![event(0, &at(5, 1)), event(1, &at(2, 0))];
        let mut reversed = events.clone();
        reversed.reverse();
        for order in [events, reversed] {
            let states = ingest(&[order], declared);
            let contact = &states[&(ObjectType::Contact, "user0@acme.com".to_string())];
            assert_eq!(
                contact.company.as_ref().map(|c| c.v.as_str()),
                Some("acct-1")
            );
        }
    }

    #[test]
    fn an_event_that_would_overflow_a_sum_is_left_out_whole() {
        let (contacts, companies) = (contacts(), companies());
        let declared = Declared {
            contacts: &contacts,
            companies: Some(&companies),
        };
        let big = format!("9{}", "0".repeat(31));
        let e = |n: usize, plan: &str| OutboxEvent {
            seq: n as i64,
            event_id: Uuid::from_u128(n as u128),
            object_type: "contact".into(),
            object_key: "p@acme.com".into(),
            properties: format!(r#"{{"current_plan": "{plan}", "total_sessions": {big}}}"#),
            occurred_at: Ok(Utc.with_ymd_and_hms(2026, 11, 1, 0, n as u32, 0).unwrap()),
            company_key: None,
            enqueued_at: None,
        };
        let prepared: Vec<Prepared> = [e(1, "free"), e(2, "pro")]
            .iter()
            .map(|x| prepare(x, declared).unwrap())
            .collect();
        let mut state = ObjectState::default();
        let refs: Vec<&Prepared> = prepared.iter().collect();
        let unapplied = fold(&mut state, &contacts.properties, &refs);
        assert_eq!(unapplied.len(), 1);
        assert_eq!(unapplied[0].event, 1);
        assert_eq!(unapplied[0].refusal.category, Category::InvalidValue);
        // The second event is left out whole: its plan is not applied either.
        assert_eq!(state.props["current_plan"].v, "free");
        assert_eq!(state.props["total_sessions"].v, big);
    }
}
