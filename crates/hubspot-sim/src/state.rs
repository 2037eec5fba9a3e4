//! The simulator's mutable state, kept behind one mutex (`Shared`, with the fixed config):
//! records and their unique-value indexes, property schemas, associations, the rate-limit
//! window, faults and the request log. Everything here is synchronous and quick; callers never
//! hold the lock across an await.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, SecondsFormat, Utc};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use crate::object_type::ObjectType;
use crate::properties::Schema;
use crate::token::Token;
use crate::types::{
    DEFAULT_DAILY_LIMIT, Fault, SimConfig, SimRecord, SimRequest, UNLIMITED_HEADER_VALUE,
};
use crate::values::normalize_email;

/// The current time as HubSpot writes timestamps: RFC 3339, UTC, milliseconds.
pub(crate) fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Today in the portal's time zone: the day the daily limit counts.
fn portal_today(config: &SimConfig) -> NaiveDate {
    (Utc::now() + chrono::Duration::minutes(i64::from(config.offset_minutes_now()))).date_naive()
}

/// The first record id of each object type: both types start here, so their ids collide.
const FIRST_ID: u64 = 1001;

/// One stored record.
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    /// Property values, including `hs_object_id`, `createdate` and `lastmodifieddate`.
    pub properties: BTreeMap<String, String>,
    /// `createdAt`.
    pub created_at: String,
    /// `updatedAt`.
    pub updated_at: String,
}

/// Records and schema of one object type.
#[derive(Debug)]
pub(crate) struct ObjectStore {
    /// Property definitions and groups.
    pub schema: Schema,
    /// Records by numeric id.
    pub records: BTreeMap<u64, StoredRecord>,
    /// For each unique property (and the contact email): value → record id. Keeps a 100-input
    /// upsert at 100 hash lookups however many records exist.
    indexes: HashMap<String, HashMap<String, u64>>,
    /// Contacts' secondary emails (normalised) → record id: an upsert by email matches them too.
    secondary_emails: HashMap<String, u64>,
    /// The id the next new record gets. Each object type counts on its own, as in HubSpot, so
    /// a contact and a company can have the same id (`docs/hubspot-behaviour.md` §6).
    next_id: u64,
}

impl ObjectStore {
    fn new(object: ObjectType, now: &str) -> ObjectStore {
        let mut store = ObjectStore {
            schema: Schema::seeded(object, now),
            records: BTreeMap::new(),
            indexes: HashMap::new(),
            secondary_emails: HashMap::new(),
            next_id: FIRST_ID,
        };
        store.refresh_indexes();
        store
    }

    /// The object type stored here.
    pub(crate) fn object(&self) -> ObjectType {
        self.schema.object
    }

    /// How a lookup value of property `name` is compared: contact emails case-insensitively.
    pub(crate) fn normalise(&self, name: &str, value: &str) -> String {
        if self.object() == ObjectType::Contacts && name == "email" {
            normalize_email(value)
        } else {
            value.to_owned()
        }
    }

    /// The id the next new record will get.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Takes the next id for a new record.
    pub(crate) fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Whether `name` has an index, i.e. holds values unique across records.
    pub(crate) fn is_indexed(&self, name: &str) -> bool {
        self.indexes.contains_key(name)
    }

    /// The id of the record whose property `name` equals `value` (normalised).
    pub(crate) fn find(&self, name: &str, value: &str) -> Option<u64> {
        if name == "hs_object_id" {
            return value
                .parse::<u64>()
                .ok()
                .filter(|id| self.records.contains_key(id));
        }
        let value = self.normalise(name, value);
        if self.object() == ObjectType::Contacts
            && name == "email"
            && let Some(id) = self.secondary_emails.get(&value)
        {
            return Some(*id);
        }
        match self.indexes.get(name) {
            Some(index) => index.get(&value).copied(),
            None => self
                .records
                .iter()
                .find(|(_, record)| record.properties.get(name) == Some(&value))
                .map(|(id, _)| *id),
        }
    }

    /// Builds an index for every unique property that lacks one: after any schema change.
    pub(crate) fn refresh_indexes(&mut self) {
        let mut wanted: Vec<String> = self
            .schema
            .props
            .values()
            .filter(|def| def.unique)
            .map(|def| def.name().to_owned())
            .collect();
        if self.object() == ObjectType::Contacts {
            wanted.push("email".to_owned());
        }
        self.indexes.retain(|name, _| wanted.contains(name));
        for name in wanted {
            if self.indexes.contains_key(&name) {
                continue;
            }
            let index = self
                .records
                .iter()
                .filter_map(|(id, record)| record.properties.get(&name).map(|v| (v.clone(), *id)))
                .collect();
            self.indexes.insert(name, index);
        }
    }

    /// Sets (or with `None` clears) one value of record `id`, keeping indexes current.
    pub(crate) fn set_value(&mut self, id: u64, name: &str, value: Option<String>) {
        let Some(record) = self.records.get_mut(&id) else {
            return;
        };
        let old = match &value {
            Some(value) => record.properties.insert(name.to_owned(), value.clone()),
            None => record.properties.remove(name),
        };
        if let Some(index) = self.indexes.get_mut(name) {
            if let Some(old) = old
                && index.get(&old) == Some(&id)
            {
                index.remove(&old);
            }
            if let Some(value) = value {
                index.insert(value, id);
            }
        }
    }

    /// Whether `email` (normalised) is a secondary email of some contact.
    pub(crate) fn is_secondary_email(&self, email: &str) -> bool {
        self.secondary_emails.contains_key(email)
    }

    /// Removes record `id` and its index entries; false if there is none.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(record) = self.records.remove(&id) else {
            return false;
        };
        for (name, value) in &record.properties {
            if let Some(index) = self.indexes.get_mut(name)
                && index.get(value) == Some(&id)
            {
                index.remove(value);
            }
        }
        self.secondary_emails.retain(|_, owner| *owner != id);
        true
    }

    /// The record as the public accessors return it.
    pub(crate) fn sim_record(&self, id: u64) -> Option<SimRecord> {
        self.records.get(&id).map(|record| SimRecord {
            id: id.to_string(),
            properties: record.properties.clone(),
        })
    }
}

/// Random faults: each object write draws from `rng`.
#[derive(Debug)]
pub(crate) struct RandomFaults {
    rate: f64,
    faults: Vec<Fault>,
    rng: SmallRng,
}

/// What the rate limiter decided for one request at its arrival.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    /// `Some(true)` over the daily limit, `Some(false)` over the rolling window, `None` allowed.
    pub limited: Option<bool>,
    /// The `X-HubSpot-RateLimit-*` headers for the response: lower-case name, value.
    pub headers: Vec<(&'static str, u64)>,
}

/// Everything the simulator changes while running.
#[derive(Debug)]
pub(crate) struct State {
    /// The accepted bearer token.
    pub token: Token,
    /// Non-empty: every request answers 403 naming these.
    pub missing_scopes: Vec<String>,
    /// Added before every request is handled.
    pub latency: Duration,
    /// Answer any invalid record with a 400 for the whole batch that names no input, as HubSpot
    /// does for requests without trace ids.
    pub whole_batch_errors: bool,
    /// Scripted faults, consumed in order by object writes.
    pub faults: VecDeque<Fault>,
    /// Scripted faults, consumed in order by the other calls (properties, groups, account).
    pub setup_faults: VecDeque<Fault>,
    /// Random faults, drawn once the script is empty.
    pub random_faults: Option<RandomFaults>,
    /// Contacts.
    pub contacts: ObjectStore,
    /// Companies.
    pub companies: ObjectStore,
    /// Shuffles batch results.
    pub rng: SmallRng,
    associations: Vec<(u64, u64)>,
    association_set: HashSet<(u64, u64)>,
    log: Vec<SimRequest>,
    /// Requests logged before the last reset: log position = sequence number − this.
    log_forgotten: u64,
    window: VecDeque<Instant>,
    day: NaiveDate,
    used_today: u64,
    /// (object, normalised key) pairs whose upserts answer 409 `CONFLICT`.
    conflicts: HashSet<(ObjectType, String)>,
}

impl State {
    /// A fresh portal with the default properties and no records.
    pub(crate) fn new(config: &SimConfig) -> State {
        let now = timestamp();
        State {
            token: config.token.clone(),
            missing_scopes: Vec::new(),
            latency: Duration::ZERO,
            whole_batch_errors: false,
            faults: VecDeque::new(),
            setup_faults: VecDeque::new(),
            random_faults: None,
            contacts: ObjectStore::new(ObjectType::Contacts, &now),
            companies: ObjectStore::new(ObjectType::Companies, &now),
            rng: rand::make_rng(),
            associations: Vec::new(),
            association_set: HashSet::new(),
            log: Vec::new(),
            log_forgotten: 0,
            window: VecDeque::new(),
            day: portal_today(config),
            used_today: 0,
            conflicts: HashSet::new(),
        }
    }

    /// The store of `object`.
    pub(crate) fn store(&self, object: ObjectType) -> &ObjectStore {
        match object {
            ObjectType::Contacts => &self.contacts,
            ObjectType::Companies => &self.companies,
        }
    }

    /// The store of `object`, mutably.
    pub(crate) fn store_mut(&mut self, object: ObjectType) -> &mut ObjectStore {
        match object {
            ObjectType::Contacts => &mut self.contacts,
            ObjectType::Companies => &mut self.companies,
        }
    }

    /// Every record of `object_type`, by id; empty for an unknown type.
    pub(crate) fn records(&self, object_type: &str) -> Vec<SimRecord> {
        let Some(object) = ObjectType::parse(object_type) else {
            return Vec::new();
        };
        let store = self.store(object);
        store
            .records
            .keys()
            .filter_map(|id| store.sim_record(*id))
            .collect()
    }

    /// The record of `object_type` whose `name` equals `value`.
    pub(crate) fn find_record(
        &self,
        object_type: &str,
        name: &str,
        value: &str,
    ) -> Option<SimRecord> {
        let store = self.store(ObjectType::parse(object_type)?);
        store.find(name, value).and_then(|id| store.sim_record(id))
    }

    /// Records an association; false if it already existed.
    pub(crate) fn associate(&mut self, contact: u64, company: u64) -> bool {
        let added = self.association_set.insert((contact, company));
        if added {
            self.associations.push((contact, company));
        }
        added
    }

    /// Removes an association; false if there was none.
    pub(crate) fn dissociate(&mut self, contact: u64, company: u64) -> bool {
        let removed = self.association_set.remove(&(contact, company));
        if removed {
            self.associations.retain(|pair| *pair != (contact, company));
        }
        removed
    }

    /// Archives a live property.
    pub(crate) fn archive_property(&mut self, object_type: &str, name: &str) -> bool {
        let Some(object) = ObjectType::parse(object_type) else {
            return false;
        };
        let store = self.store_mut(object);
        let archived = store.schema.archive(name, &timestamp());
        store.refresh_indexes();
        archived
    }

    /// Deletes a record and its associations.
    pub(crate) fn delete_record(&mut self, object_type: &str, id: &str) -> bool {
        let (Some(object), Ok(id)) = (ObjectType::parse(object_type), id.parse::<u64>()) else {
            return false;
        };
        if !self.store_mut(object).remove(id) {
            return false;
        }
        let gone = |(contact, company): &(u64, u64)| match object {
            ObjectType::Contacts => *contact == id,
            ObjectType::Companies => *company == id,
        };
        self.associations.retain(|pair| !gone(pair));
        self.association_set.retain(|pair| !gone(pair));
        true
    }

    /// Adds a secondary email to the contact with primary email `primary`.
    pub(crate) fn add_secondary_email(&mut self, primary: &str, secondary: &str) -> bool {
        let Some(id) = self.contacts.find("email", primary) else {
            return false;
        };
        let secondary = normalize_email(secondary);
        self.contacts.secondary_emails.insert(secondary.clone(), id);
        let listed = self
            .contacts
            .records
            .get(&id)
            .and_then(|record| record.properties.get("hs_additional_emails"))
            .map(|list| format!("{list};{secondary}"))
            .unwrap_or(secondary);
        self.contacts
            .set_value(id, "hs_additional_emails", Some(listed));
        true
    }

    /// Makes upserts of this key answer 409.
    pub(crate) fn conflict_on(&mut self, object_type: &str, key: &str) {
        if let Some(object) = ObjectType::parse(object_type) {
            // Contacts are upserted by email, compared normalised; company keys as they are.
            let key = self.store(object).normalise("email", key);
            self.conflicts.insert((object, key));
        }
    }

    /// Whether an upsert of `object` with this (normalised) key is scripted to answer 409.
    pub(crate) fn conflicts_with(&self, object: ObjectType, key: &str) -> bool {
        self.conflicts.contains(&(object, key.to_owned()))
    }

    /// Every association as (contact id, company id).
    pub(crate) fn associations(&self) -> Vec<(String, String)> {
        self.associations
            .iter()
            .map(|(contact, company)| (contact.to_string(), company.to_string()))
            .collect()
    }

    /// A property definition as `GET` returns it.
    pub(crate) fn property(&self, object_type: &str, name: &str) -> Option<Value> {
        let object = ObjectType::parse(object_type)?;
        self.store(object)
            .schema
            .props
            .get(name)
            .map(|def| def.json.clone())
    }

    /// Seeds or overwrites a definition, unchecked.
    pub(crate) fn define_property(&mut self, object_type: &str, property: Value) {
        let Some(object) = ObjectType::parse(object_type) else {
            tracing::warn!(object_type, "define_property: unknown object type ignored");
            return;
        };
        let store = self.store_mut(object);
        store.schema.define(property, &timestamp());
        store.refresh_indexes();
    }

    /// Turns random faults on (rate > 0 and a non-empty list) or off.
    pub(crate) fn set_random_faults(&mut self, rate: f64, faults: Vec<Fault>, seed: u64) {
        // `random_bool` panics outside [0, 1]; NaN counts as 0.
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.random_faults = (rate > 0.0 && !faults.is_empty()).then(|| RandomFaults {
            rate,
            faults,
            rng: SmallRng::seed_from_u64(seed),
        });
    }

    /// Takes a scripted `Hang` at the head of the script: it applies before auth.
    pub(crate) fn take_leading_hang(&mut self) -> Option<Duration> {
        match self.faults.front() {
            Some(Fault::Hang(duration)) => {
                let duration = *duration;
                self.faults.pop_front();
                Some(duration)
            }
            _ => None,
        }
    }

    /// The fault for this object write: the next scripted one, else maybe a random one.
    pub(crate) fn next_fault(&mut self) -> Option<Fault> {
        if let Some(fault) = self.faults.pop_front() {
            return Some(fault);
        }
        let random = self.random_faults.as_mut()?;
        if !random.rng.random_bool(random.rate) {
            return None;
        }
        let pick = random.rng.random_range(0..random.faults.len());
        random.faults.get(pick).cloned()
    }

    /// Counts one request against the daily limit and the rolling window, at `now`.
    /// Every request counts, refused ones included (the stricter reading).
    pub(crate) fn admit(&mut self, config: &SimConfig, now: Instant) -> Admission {
        let today = portal_today(config);
        if today != self.day {
            self.day = today;
            self.used_today = 0;
        }
        self.used_today += 1;
        // A private app always has a daily limit: without one configured, the lowest tier's.
        let daily_limit = config.daily_limit.unwrap_or(DEFAULT_DAILY_LIMIT);
        let over_daily = self.used_today > daily_limit;

        let (max, remaining, over_window) = if config.requests_per_window == 0 {
            (UNLIMITED_HEADER_VALUE, UNLIMITED_HEADER_VALUE, false)
        } else {
            while self
                .window
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) >= config.window)
            {
                self.window.pop_front();
            }
            self.window.push_back(now);
            let limit = config.requests_per_window;
            let used = u32::try_from(self.window.len()).unwrap_or(u32::MAX);
            (limit, limit.saturating_sub(used), used > limit)
        };

        let interval = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
        let headers = vec![
            ("x-hubspot-ratelimit-max", u64::from(max)),
            ("x-hubspot-ratelimit-remaining", u64::from(remaining)),
            ("x-hubspot-ratelimit-interval-milliseconds", interval),
            ("x-hubspot-ratelimit-daily", daily_limit),
            (
                "x-hubspot-ratelimit-daily-remaining",
                daily_limit.saturating_sub(self.used_today),
            ),
        ];
        let limited = if over_daily {
            Some(true)
        } else if over_window {
            Some(false)
        } else {
            None
        };
        Admission { limited, headers }
    }

    /// Logs a request on arrival and returns its sequence number.
    pub(crate) fn log_arrival(&mut self, request: SimRequest) -> u64 {
        // usize is at most 64 bits on every target Rust supports: lossless.
        let seq = self.log_forgotten + self.log.len() as u64;
        self.log.push(request);
        seq
    }

    /// Sets the final status of request `seq`, unless the log was reset since.
    pub(crate) fn log_status(&mut self, seq: u64, status: u16) {
        let Some(position) = seq.checked_sub(self.log_forgotten) else {
            return;
        };
        if let Some(entry) = usize::try_from(position)
            .ok()
            .and_then(|position| self.log.get_mut(position))
        {
            entry.status = status;
        }
    }

    /// A copy of the request log.
    pub(crate) fn requests(&self) -> Vec<SimRequest> {
        self.log.clone()
    }

    /// Forgets the request log.
    pub(crate) fn reset_requests(&mut self) {
        // Lossless, as in `log_arrival`.
        self.log_forgotten += self.log.len() as u64;
        self.log.clear();
    }
}

/// What every connection task shares: the fixed config and the mutable state.
pub(crate) struct Shared {
    /// Settings fixed at start.
    pub config: SimConfig,
    /// Everything else, behind one mutex.
    pub state: Mutex<State>,
}

impl Shared {
    /// Locks the state. A panic while locked cannot leave it half-updated in a way that matters
    /// more than stopping the simulator would, so a poisoned lock is simply taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_daily_limit_set_the_lowest_tiers_is_reported_and_kept() {
        let config = SimConfig {
            requests_per_window: 0,
            ..SimConfig::default()
        };
        let mut state = State::new(&config);
        let now = Instant::now();
        let header = |admission: &Admission, name: &str| {
            admission
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        };
        let first = state.admit(&config, now);
        assert_eq!(first.limited, None);
        assert_eq!(header(&first, "x-hubspot-ratelimit-daily"), Some(250_000));
        assert_eq!(
            header(&first, "x-hubspot-ratelimit-daily-remaining"),
            Some(249_999)
        );
        for _ in 1..DEFAULT_DAILY_LIMIT {
            assert_eq!(state.admit(&config, now).limited, None);
        }
        let over = state.admit(&config, now);
        assert_eq!(over.limited, Some(true), "the 250,001st request of the day");
        assert_eq!(
            header(&over, "x-hubspot-ratelimit-daily-remaining"),
            Some(0)
        );
    }
}
