//! `classify`: one pure function that turns any HubSpot reply or transport error into one
//! `Outcome`. Retries, the DLQ, the limiter, logs and status all read that outcome and nothing
//! else, so each HubSpot behaviour (`docs/hubspot-behaviour.md` §2, §4) is interpreted in
//! exactly one place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::dlq::Category;
use super::values::listed;

/// Per-record error codes that will fail again until someone changes the data, the config or
/// the portal: such records are parked at once.
const PERMANENT_CODES: &[&str] = &[
    "PROPERTY_DOESNT_EXIST",
    "INVALID_INTEGER",
    "INVALID_LONG",
    "INVALID_DOUBLE",
    "INVALID_OPTION",
    "INVALID_DATE",
    "INVALID_DATETIME",
    "INVALID_EMAIL",
    "INVALID_BOOLEAN",
    "READ_ONLY_VALUE",
    "MISSING_REQUIRED_PROPERTY",
    "MISSING_CONDITIONAL_REQUIRED_PROPERTY",
    "VALUE_TOO_LONG",
];

/// The property a batch upserts by, and how HubSpot's replies give its values back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdProperty<'a> {
    /// Contacts' `email`: HubSpot keeps emails lower-cased, so a reply's email is matched to
    /// an input trimmed and lower-cased.
    Email,
    /// A property created with `hasUniqueValue` (companies). Whether HubSpot compares its
    /// values ignoring case is not known, and hubsync keeps "Acme" and "acme" as two objects,
    /// so a reply's value is matched to an input exactly as sent (and `worker/sync.rs` never
    /// sends two keys equal but for case in one request).
    Unique(&'a str),
}

impl IdProperty<'_> {
    /// The property's name, as sent in `idProperty` and found in a result's `properties`.
    pub(crate) fn name(&self) -> &str {
        match self {
            IdProperty::Email => "email",
            IdProperty::Unique(name) => name,
        }
    }

    /// A key as it is compared: emails trimmed and lower-cased, unique values as they are.
    fn compared(&self, key: &str) -> String {
        match self {
            IdProperty::Email => key.trim().to_lowercase(),
            IdProperty::Unique(_) => key.to_string(),
        }
    }

    /// Which of `keys` (in the order they were due) must wait for a later request: those HubSpot
    /// may take for the same record as an earlier key. A request naming one record twice is
    /// refused whole ("Duplicate IDs"), so for a unique value equal to an earlier one but for
    /// case, the later one waits: harmless if HubSpot tells them apart, needed if it does not.
    pub(crate) fn wait_for_next_request(&self, keys: &[&str]) -> Vec<bool> {
        let mut seen: HashSet<String> = HashSet::with_capacity(keys.len() * 2);
        keys.iter()
            .map(|key| {
                let forms = match self {
                    IdProperty::Email => vec![self.compared(key)],
                    // Both directions: some letters fold together only one way ("ß" and "SS").
                    IdProperty::Unique(_) => vec![key.to_lowercase(), key.to_uppercase()],
                };
                let clash = forms.iter().any(|form| seen.contains(form));
                if !clash {
                    seen.extend(forms);
                }
                clash
            })
            .collect()
    }
}

/// One input of a batch as sent: its key and its trace id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentInput {
    /// The id sent (the normalised email, or the company key as kept).
    pub key: String,
    /// The unique `objectWriteTraceId` sent with it.
    pub trace_id: String,
    /// The HubSpot record id hubsync already knows for it, if any.
    pub hubspot_id: Option<String>,
    /// The property values sent, as text.
    pub properties: BTreeMap<String, String>,
}

/// HubSpot's rate-limit headers, when present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// `X-HubSpot-RateLimit-Max`
    pub max: Option<u64>,
    /// `X-HubSpot-RateLimit-Remaining`
    pub remaining: Option<u64>,
    /// `X-HubSpot-RateLimit-Interval-Milliseconds`
    pub interval_ms: Option<u64>,
    /// `X-HubSpot-RateLimit-Daily`
    pub daily: Option<u64>,
    /// `X-HubSpot-RateLimit-Daily-Remaining`
    pub daily_remaining: Option<u64>,
}

/// An HTTP reply, as far as classification needs it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Rate-limit headers.
    pub rate: RateHeaders,
    /// `Retry-After`, in seconds, when present.
    pub retry_after: Option<Duration>,
    /// The body as text.
    pub body: String,
}

/// A request that got no HTTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// No reply within the timeout: the write may or may not have happened.
    Timeout,
    /// The connection failed or was closed before a full reply.
    Connection(String),
}

/// Why one record failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordError {
    /// The DLQ category it is parked under, if it comes to that.
    pub category: Category,
    /// HubSpot's error code, when one was given.
    pub code: Option<String>,
    /// A sentence for a person.
    pub message: String,
    /// HubSpot's error as received.
    pub raw: Value,
    /// Whether retrying without a change can ever succeed.
    pub permanent: bool,
    /// The properties HubSpot named as the cause, when every problem it listed names one:
    /// those can be held back while the record's other properties are sent again.
    pub properties: Vec<String>,
}

/// An input HubSpot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WrittenInput {
    /// Its index in the request.
    pub input: usize,
    /// HubSpot's record id, when the reply gave one.
    pub id: Option<String>,
}

/// An input HubSpot did not write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FailedInput {
    /// Its index in the request.
    pub input: usize,
    /// Why.
    pub error: RecordError,
}

/// What one request's reply means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// A 2xx: which inputs were written (with HubSpot's record id) and which failed.
    /// Inputs the reply does not account for are listed as failed (`not_written`).
    Completed {
        /// The inputs HubSpot wrote.
        written: Vec<WrittenInput>,
        /// The inputs it did not, and why.
        failed: Vec<FailedInput>,
    },
    /// The whole request was refused; `offenders` are the inputs known to cause it (empty:
    /// unknown, split the batch to find them). Nothing was written.
    Rejected {
        /// Offending input indexes.
        offenders: Vec<usize>,
        /// The error.
        error: RecordError,
    },
    /// A transient failure: try the same inputs again later. Counts as an attempt.
    Retry {
        /// Server-requested wait (`Retry-After`), if any.
        after: Option<Duration>,
        /// The least wait this kind of failure needs.
        min_wait: Duration,
        /// What happened.
        reason: String,
        /// The request may still be carried out later (no answer came, or a gateway gave up
        /// while HubSpot went on): a write sent after it could be overtaken by it.
        may_land_late: bool,
    },
    /// A 429: every worker waits; not an attempt against the inputs.
    RateLimited {
        /// The daily budget is spent (else the rolling window).
        daily: bool,
        /// How long to wait.
        wait: Duration,
        /// What happened.
        reason: String,
    },
    /// Credentials or setup are wrong: stop sending, consume nothing, probe again slowly.
    Halt {
        /// The HTTP status.
        status: u16,
        /// What is wrong and what to do.
        reason: String,
        /// Scopes HubSpot says are missing.
        scopes: Vec<String>,
    },
}

/// The longest a daily 429 waits when the portal's time zone is unknown: the next request
/// then probes whether the portal's day has turned.
pub(crate) const DAILY_PROBE: Duration = Duration::from_secs(3600);

impl Outcome {
    /// A daily 429 waits for the portal's midnight when its time zone is known (`classify`
    /// was given the portal's clock); otherwise midnight was reckoned in UTC, which may be
    /// most of a day off, so it waits [`DAILY_PROBE`] at most.
    pub(crate) fn daily_wait(self, zone_known: bool) -> Outcome {
        match self {
            Outcome::RateLimited {
                daily: true,
                wait,
                reason,
            } if !zone_known => Outcome::RateLimited {
                daily: true,
                wait: wait.min(DAILY_PROBE),
                reason,
            },
            other => other,
        }
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The property-level problems inside one HubSpot error: `(code, property, message)`. The
/// nested `errors[]` come first; the JSON embedded in `message` (which always names the
/// property) fills in what they leave out, or stands alone when there are none.
fn property_problems(err: &Value) -> Vec<(Option<String>, Option<String>, String)> {
    let mut out = Vec::new();
    if let Some(Value::Array(items)) = err.get("errors") {
        for item in items {
            let code = str_field(item, "code").map(String::from);
            let prop = item
                .get("context")
                .and_then(|c| strings(c.get("propertyName")).into_iter().next());
            let msg = str_field(item, "message").unwrap_or_default().to_string();
            out.push((code, prop, msg));
        }
    }
    let mut embedded = Vec::new();
    if let Some(message) = str_field(err, "message")
        && let Some(start) = message.find('[')
        && let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&message[start..])
    {
        for item in items {
            embedded.push((
                str_field(&item, "error").map(String::from),
                str_field(&item, "name").map(String::from),
                str_field(&item, "message").unwrap_or_default().to_string(),
            ));
        }
    }
    if out.is_empty() {
        return embedded;
    }
    let same_count = out.len() == embedded.len();
    for (n, (code, prop, _)) in out.iter_mut().enumerate() {
        if prop.is_some() {
            continue;
        }
        // The embedded problem with the same code, else the one in the same place.
        *prop = embedded
            .iter()
            .find(|(c, _, _)| c.is_some() && c == code)
            .or_else(|| same_count.then(|| &embedded[n]))
            .and_then(|(_, name, _)| name.clone());
    }
    out
}

fn record_error(err: &Value, default_category: Category) -> RecordError {
    let problems = property_problems(err);
    let code = problems.iter().find_map(|(c, _, _)| c.clone()).or_else(|| {
        str_field(err, "subCategory")
            .or_else(|| str_field(err, "category"))
            .map(String::from)
    });
    let permanent = problems
        .iter()
        .any(|(c, _, _)| c.as_deref().is_some_and(|c| PERMANENT_CODES.contains(&c)));
    let message = if problems.is_empty() {
        format!(
            "HubSpot refused the record: {}",
            str_field(err, "message").unwrap_or("(no message)")
        )
    } else {
        let parts: Vec<String> = problems
            .iter()
            .map(|(c, p, m)| {
                format!(
                    "{}{}{}",
                    p.as_ref()
                        .map(|p| format!("property \"{p}\": "))
                        .unwrap_or_default(),
                    c.as_ref().map(|c| format!("{c}: ")).unwrap_or_default(),
                    m
                )
            })
            .collect();
        format!(
            "HubSpot refused the record: {}",
            listed(parts.iter().cloned(), parts.len(), "; ", "problems")
        )
    };
    let named: Option<Vec<String>> = problems.iter().map(|(_, p, _)| p.clone()).collect();
    let mut properties = named.unwrap_or_default();
    properties.sort();
    properties.dedup();
    RecordError {
        category: if permanent {
            Category::HubspotValidation
        } else {
            default_category
        },
        code,
        message,
        raw: err.clone(),
        permanent,
        properties,
    }
}

fn parse_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.chars().take(2000).collect()))
}

/// The time left until the next midnight in `now`'s time zone (the portal's): when HubSpot's
/// daily limit resets.
fn next_midnight<Tz: TimeZone>(now: &DateTime<Tz>) -> Duration {
    let at = now.with_timezone(&Utc);
    (super::portal::next_midnight_in(&now.timezone(), at) - at)
        .to_std()
        .unwrap_or(Duration::from_secs(3600))
}

/// Classifies a batch-upsert reply for `inputs`. `id` is the property HubSpot echoes the key
/// in, and says how keys compare; `now`, in the portal's time zone, decides how long a
/// daily limit lasts (until the portal's midnight).
pub(crate) fn classify<Tz: TimeZone>(
    inputs: &[SentInput],
    id: IdProperty<'_>,
    reply: Result<&Reply, &Transport>,
    now: DateTime<Tz>,
) -> Outcome {
    let reply = match reply {
        Err(Transport::Timeout) => {
            return Outcome::Retry {
                after: None,
                min_wait: Duration::ZERO,
                reason: "HubSpot did not answer in time (the write may or may not have happened)"
                    .into(),
                may_land_late: true,
            };
        }
        Err(Transport::Connection(e)) => {
            return Outcome::Retry {
                after: None,
                min_wait: Duration::ZERO,
                reason: format!("connection to HubSpot failed: {e}"),
                may_land_late: true,
            };
        }
        Ok(r) => r,
    };
    let body = parse_body(&reply.body);
    let message = str_field(&body, "message")
        .map(String::from)
        .unwrap_or_else(|| reply.body.chars().take(300).collect());
    match reply.status {
        200..=299 => completed(inputs, id, &body),
        401 => Outcome::Halt {
            status: 401,
            reason: format!(
                "HubSpot refused the access token ({}): {message}; set HUBSPOT_ACCESS_TOKEN to a valid private app token",
                str_field(&body, "category").unwrap_or("INVALID_AUTHENTICATION")
            ),
            scopes: Vec::new(),
        },
        403 => {
            let mut scopes: Vec<String> = Vec::new();
            if let Some(Value::Array(errors)) = body.get("errors") {
                for e in errors {
                    for s in strings(
                        e.get("context")
                            .and_then(|c| c.get("requiredGranularScopes")),
                    ) {
                        if !scopes.contains(&s) {
                            scopes.push(s);
                        }
                    }
                }
            }
            let what = if scopes.is_empty() {
                "grant the private app the crm.objects.*.write and crm.schemas.*.write scopes"
                    .to_string()
            } else {
                format!("grant the private app these scopes: {}", scopes.join(", "))
            };
            Outcome::Halt {
                status: 403,
                reason: format!("HubSpot denied access ({message}); {what}"),
                scopes,
            }
        }
        404 => Outcome::Halt {
            status: 404,
            reason: format!(
                "HubSpot answered 404 for the batch endpoint ({message}); check HUBSPOT_BASE_URL and hubspot.api_version"
            ),
            scopes: Vec::new(),
        },
        429 => {
            let daily = str_field(&body, "policyName") == Some("DAILY");
            let wait = if daily {
                // The day's limit lasts until the portal's midnight: a shorter Retry-After
                // would only buy a 429 more.
                let midnight = next_midnight(&now);
                reply
                    .retry_after
                    .map_or(midnight, |after| after.max(midnight))
            } else {
                reply
                    .retry_after
                    .or(reply.rate.interval_ms.map(Duration::from_millis))
                    .unwrap_or(Duration::from_secs(10))
            };
            Outcome::RateLimited {
                daily,
                wait,
                reason: format!(
                    "HubSpot rate limit ({}): {message}",
                    str_field(&body, "policyName").unwrap_or("unknown policy")
                ),
            }
        }
        // Any other 4xx (400, 409 `CONFLICT`, 413, 422, ...) can be caused by one record of the
        // batch: narrow it down to its offenders and let the rest through.
        status @ 400..=499 if !matches!(status, 423 | 477) => {
            let not_unique = matches!(
                BatchError::read(&message),
                BatchError::NonUniqueIdProperty { property } if property == id.name()
            );
            // Contacts are upserted by `email`, which HubSpot keeps unique itself.
            if let (400, IdProperty::Unique(key_property), true) = (status, id, not_unique) {
                return Outcome::Halt {
                    status,
                    reason: format!(
                        "HubSpot cannot upsert companies by \"{key_property}\" ({message}); the property must be created with hasUniqueValue = true: set companies.id_property to a new name and hubsync creates it as unique"
                    ),
                    scopes: Vec::new(),
                };
            }
            let offenders = offenders(inputs, id, &body);
            let mut error = record_error(&body, Category::HubspotRejected);
            if error.category != Category::HubspotValidation {
                error.category = Category::HubspotRejected;
            }
            if error.code.is_none() {
                error.code = Some(status.to_string());
            }
            // A whole-request refusal of one known input is that input's fault.
            error.permanent = true;
            Outcome::Rejected { offenders, error }
        }
        423 => Outcome::Retry {
            after: reply.retry_after,
            min_wait: Duration::from_secs(2),
            reason: "HubSpot answered 423 Locked (heavy writes on the portal)".into(),
            may_land_late: false,
        },
        status => Outcome::Retry {
            after: reply.retry_after,
            min_wait: Duration::ZERO,
            reason: format!("HubSpot answered {status}: {message}"),
            // Gateway timeouts: the request was handed on and may still be carried out.
            may_land_late: matches!(status, 502 | 504 | 524),
        },
    }
}

/// A whole-request error HubSpot describes only in words, read once here into a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// `Unable to perform update/upsert by non-unique <object> property <name>`, which HubSpot
    /// may end with ` in portal ID <id>`: the batch's `idProperty` was not created with
    /// `hasUniqueValue` (or no longer exists). HubSpot gives no code or context for it, so its
    /// words are the only signal.
    NonUniqueIdProperty {
        /// The property named.
        property: String,
    },
    /// Anything else: its offenders, if any, are named in `context`.
    Other,
}

impl BatchError {
    /// Reads HubSpot's `message` of a 400 refusing a whole batch.
    pub(crate) fn read(message: &str) -> BatchError {
        const NON_UNIQUE: &str = "by non-unique ";
        const PROPERTY: &str = " property ";
        let Some(at) = message.find(NON_UNIQUE) else {
            return BatchError::Other;
        };
        let rest = &message[at + NON_UNIQUE.len()..];
        // The name is the word after "property", whatever follows it.
        let name = rest
            .find(PROPERTY)
            .and_then(|p| rest[p + PROPERTY.len()..].split_whitespace().next())
            .map(|word| word.trim_matches(['.', '"', '\'', ',']))
            .unwrap_or_default();
        if name.is_empty() {
            BatchError::Other
        } else {
            BatchError::NonUniqueIdProperty {
                property: name.to_string(),
            }
        }
    }
}

/// The association type HubSpot's default contact → company association has, read from
/// contact to company; its reverse, read from company to contact, has the next one
/// (`docs/hubspot-behaviour.md` §6).
const CONTACT_TO_COMPANY: i64 = 279;
const COMPANY_TO_CONTACT: i64 = 280;

/// The end of a contact → company pair an id named in an error stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Contact,
    Company,
    /// The error does not say: contact and company ids overlap, so it may be either.
    Unknown,
}

/// The end an object type name in an error's context stands for.
fn end_of_type(name: Option<&str>) -> End {
    match name.map(str::to_ascii_lowercase).as_deref() {
        Some("contact" | "contacts" | "0-1") => End::Contact,
        Some("company" | "companies" | "0-2") => End::Company,
        _ => End::Unknown,
    }
}

/// The ids an association error's `context` names, each with the end it stands for when the
/// context says: `fromObjectId` / `toObjectId`, `objectId` beside `objectType`, and
/// `INVALID_OBJECT_IDS` entries such as `CONTACT=5 is not valid`. Ids under any other key
/// could be either end.
fn named_ids(error: &Value) -> Vec<(End, String)> {
    let Some(Value::Object(context)) = error.get("context") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in context {
        let ids = strings(Some(value));
        match key.as_str() {
            "fromObjectId" => out.extend(ids.into_iter().map(|id| (End::Contact, id))),
            "toObjectId" => out.extend(ids.into_iter().map(|id| (End::Company, id))),
            "objectType" => {}
            "objectId" => {
                let types = strings(context.get("objectType"));
                for (n, id) in ids.into_iter().enumerate() {
                    // One type for every id, or one type per id; anything else says nothing.
                    let name = match types.as_slice() {
                        [one] => Some(one.as_str()),
                        many if many.len() > 1 => many.get(n).map(String::as_str),
                        _ => None,
                    };
                    out.push((end_of_type(name), id));
                }
            }
            "INVALID_OBJECT_IDS" => {
                for entry in ids {
                    let placed = entry.split_once('=').and_then(|(kind, rest)| {
                        let id = rest.split_whitespace().next()?;
                        Some((end_of_type(Some(kind.trim())), id.to_string()))
                    });
                    out.push(placed.unwrap_or((End::Unknown, entry)));
                }
            }
            _ => out.extend(ids.into_iter().map(|id| (End::Unknown, id))),
        }
    }
    out
}

/// How surely an error is about a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// Its context places the pair: by the ends of its ids, or by an id no other pair holds.
    Sure,
    /// It names an id that more than one pair holds without saying at which end, or it names
    /// none of the batch's ids at all: the pair may or may not be the one refused.
    Maybe,
}

/// The pairs (contact id, company id) an association error is about, and how surely.
fn blame(error: &Value, pairs: &[(String, String)]) -> Vec<(usize, Blame)> {
    let named = named_ids(error);
    let at = |end: End| -> Vec<&str> {
        named
            .iter()
            .filter(|(e, _)| *e == end)
            .map(|(_, id)| id.as_str())
            .collect()
    };
    let (contacts, companies) = (at(End::Contact), at(End::Company));
    if !contacts.is_empty() || !companies.is_empty() {
        return pairs
            .iter()
            .enumerate()
            .filter(|(_, (contact, company))| {
                (contacts.is_empty() || contacts.contains(&contact.as_str()))
                    && (companies.is_empty() || companies.contains(&company.as_str()))
            })
            .map(|(i, _)| (i, Blame::Sure))
            .collect();
    }
    let mut out: Vec<(usize, Blame)> = Vec::new();
    for id in at(End::Unknown) {
        let holders: Vec<usize> = (0..pairs.len())
            .filter(|i| pairs[*i].0 == id || pairs[*i].1 == id)
            .collect();
        let blame = if holders.len() == 1 {
            Blame::Sure
        } else {
            Blame::Maybe
        };
        for i in holders {
            match out.iter_mut().find(|(j, _)| *j == i) {
                Some(seen) if blame == Blame::Sure => seen.1 = Blame::Sure,
                Some(_) => {}
                None => out.push((i, blame)),
            }
        }
    }
    out
}

/// The `errors` of a batch reply.
fn batch_errors(body: &Value) -> &[Value] {
    match body.get("errors") {
        Some(Value::Array(errors)) => errors,
        _ => &[],
    }
}

/// The errors of a batch reply about pairs: for each pair, the first error that is surely
/// about it, else the first that may be.
struct PairErrors<'a> {
    per_pair: Vec<Option<(&'a Value, Blame)>>,
    /// The errors that name no pair of the batch at all.
    unplaced: Vec<&'a Value>,
}

fn pair_errors<'a>(body: &'a Value, pairs: &[(String, String)]) -> PairErrors<'a> {
    let mut per_pair: Vec<Option<(&Value, Blame)>> = vec![None; pairs.len()];
    let mut unplaced = Vec::new();
    for error in batch_errors(body) {
        let blamed = blame(error, pairs);
        if blamed.is_empty() {
            unplaced.push(error);
        }
        for (i, blame) in blamed {
            match per_pair[i] {
                None => per_pair[i] = Some((error, blame)),
                Some((_, Blame::Maybe)) if blame == Blame::Sure => {
                    per_pair[i] = Some((error, blame))
                }
                Some(_) => {}
            }
        }
    }
    PairErrors { per_pair, unplaced }
}

/// The id of an association end (`{"id": …}`), as text.
fn end_id(end: Option<&Value>) -> Option<String> {
    match end.and_then(|end| end.get("id")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The HubSpot-defined association type of one result, when it has one.
fn association_type(result: &Value) -> Option<i64> {
    let spec = result.get("associationSpec")?;
    match str_field(spec, "associationCategory") {
        None | Some("HUBSPOT_DEFINED") => {}
        Some(_) => return None,
    }
    match spec.get("associationTypeId")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The pairs (contact id, company id) a batch-associate reply shows made. A result's direction
/// comes from its association type (279 contact → company, 280 company → contact). A result
/// without either type counts only when its two ids can be read one way alone: contact and
/// company ids overlap, so (5, 7) and (7, 5) may both be in the batch.
fn made_pairs(body: &Value, pairs: &[(String, String)]) -> Vec<(String, String)> {
    let mut made: Vec<(String, String)> = Vec::new();
    let Some(Value::Array(results)) = body.get("results") else {
        return made;
    };
    for result in results {
        let (Some(from), Some(to)) = (end_id(result.get("from")), end_id(result.get("to"))) else {
            continue;
        };
        let pair = match association_type(result) {
            Some(CONTACT_TO_COMPANY) => (from, to),
            Some(COMPANY_TO_CONTACT) => (to, from),
            _ => {
                let forward = pairs.iter().any(|(c, k)| *c == from && *k == to);
                let backward = pairs.iter().any(|(c, k)| *c == to && *k == from);
                match (forward, backward) {
                    (true, false) => (from, to),
                    (false, true) => (to, from),
                    // The same pair both ways round: a contact and a company with one id.
                    (true, true) if from == to => (from, to),
                    _ => continue,
                }
            }
        };
        if !made.contains(&pair) {
            made.push(pair);
        }
    }
    made
}

/// The body of a 2xx reply to an association call; anything else classified as for upserts
/// (429 pauses, 401/403 halt, the rest retry).
fn success_body<Tz: TimeZone>(
    reply: Result<&Reply, &Transport>,
    now: DateTime<Tz>,
) -> Result<Value, Box<Outcome>> {
    match reply {
        Ok(r) if (200..300).contains(&r.status) => Ok(parse_body(&r.body)),
        _ => Err(Box::new(classify(&[], IdProperty::Unique(""), reply, now))),
    }
}

/// Classifies a batch-association reply for `pairs` (contact id, company id). A 2xx lists each
/// pair as written when a result shows it made (`made_pairs`), as failed
/// (`association_refused`) when an error is surely about it, and as failed (`not_written`)
/// otherwise, an error that may be about it kept. A request refused whole for data that names
/// its pair(s) fails only those (`refused_whole`). Anything else is classified as for upserts:
/// 429 pauses, 401/403 halt, the rest retry.
pub(crate) fn classify_associations<Tz: TimeZone>(
    pairs: &[(String, String)],
    reply: Result<&Reply, &Transport>,
    now: DateTime<Tz>,
) -> Outcome {
    let body = match success_body(reply, now) {
        Ok(body) => body,
        Err(outcome) => return refused_whole(pairs, reply, *outcome),
    };
    let made = made_pairs(&body, pairs);
    // Errors that name no pair of the batch: their words stay with the pairs not made.
    let PairErrors { per_pair, unplaced } = pair_errors(&body, pairs);
    let said = |e: &Value| {
        str_field(e, "message")
            .unwrap_or("(no message)")
            .to_string()
    };
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for (i, (contact, company)) in pairs.iter().enumerate() {
        if made.iter().any(|(c, k)| c == contact && k == company) {
            written.push(WrittenInput { input: i, id: None });
            continue;
        }
        let error = match per_pair[i] {
            Some((e, Blame::Sure)) => RecordError {
                category: Category::AssociationRefused,
                code: str_field(e, "category").map(String::from),
                message: format!(
                    "HubSpot refused to associate contact {contact} with company {company}: {}",
                    said(e)
                ),
                raw: e.clone(),
                permanent: false,
                properties: Vec::new(),
            },
            Some((e, Blame::Maybe)) => RecordError {
                category: Category::NotWritten,
                code: str_field(e, "category").map(String::from),
                message: format!(
                    "HubSpot did not associate contact {contact} with company {company}, and \
                     refused a pair of the batch naming an id this pair shares with another \
                     ({}); the association is tried again",
                    said(e)
                ),
                raw: e.clone(),
                permanent: false,
                properties: Vec::new(),
            },
            None => RecordError {
                category: Category::NotWritten,
                code: None,
                message: format!(
                    "HubSpot answered success but its reply does not mention the association of contact {contact} with company {company}, so it was not made{}",
                    unplaced_note(&unplaced, "pair")
                ),
                raw: raw_errors(&unplaced),
                permanent: false,
                properties: Vec::new(),
            },
        };
        failed.push(FailedInput { input: i, error });
    }
    Outcome::Completed { written, failed }
}

/// A whole association request refused for data (a 4xx taken as `Rejected`) whose error names
/// the pair or pairs at fault, as HubSpot's single-pair endpoint does (`INVALID_OBJECT_IDS`):
/// those pairs fail (`association_refused`) and the others are left out of the outcome, neither
/// made nor charged, so they go again without them. An error that names no pair surely keeps
/// `outcome` as it is: a try for every pair.
fn refused_whole(
    pairs: &[(String, String)],
    reply: Result<&Reply, &Transport>,
    outcome: Outcome,
) -> Outcome {
    let (Outcome::Rejected { .. }, Ok(r)) = (&outcome, reply) else {
        return outcome;
    };
    let body = parse_body(&r.body);
    let sure: Vec<usize> = blame(&body, pairs)
        .into_iter()
        .filter(|(_, blame)| *blame == Blame::Sure)
        .map(|(i, _)| i)
        .collect();
    if sure.is_empty() {
        return outcome;
    }
    let said = str_field(&body, "message").unwrap_or("(no message)");
    let failed = sure
        .into_iter()
        .map(|i| FailedInput {
            input: i,
            error: RecordError {
                category: Category::AssociationRefused,
                code: str_field(&body, "category").map(String::from),
                message: format!(
                    "HubSpot refused the request associating contact {} with company {} \
                     (HTTP {}), naming this pair: {said}",
                    pairs[i].0, pairs[i].1, r.status
                ),
                raw: body.clone(),
                permanent: false,
                properties: Vec::new(),
            },
        })
        .collect();
    Outcome::Completed {
        written: Vec::new(),
        failed,
    }
}

/// Classifies the reply to a removal of `pairs` (contact id, previous company id). A 2xx
/// without `errors` (the v4 path's 204 has no body) removed them all. An error surely about a
/// pair fails it (`association_refused`); one that may be about it, or that names no pair of
/// the batch, fails it as not removed (`not_written`): a removal is never taken as done on a
/// guess, and trying one again is harmless. Anything else is classified as for upserts.
pub(crate) fn classify_removals<Tz: TimeZone>(
    pairs: &[(String, String)],
    reply: Result<&Reply, &Transport>,
    now: DateTime<Tz>,
) -> Outcome {
    let body = match success_body(reply, now) {
        Ok(body) => body,
        Err(outcome) => return *outcome,
    };
    let PairErrors { per_pair, unplaced } = pair_errors(&body, pairs);
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for (i, (contact, company)) in pairs.iter().enumerate() {
        let found = per_pair[i].or(unplaced.first().map(|e| (*e, Blame::Maybe)));
        let Some((e, blame)) = found else {
            written.push(WrittenInput { input: i, id: None });
            continue;
        };
        // A record of this very pair no longer exists (deleted or merged away in HubSpot): no
        // association with it is left to remove, and waiting would hold the new one back for
        // good.
        if blame == Blame::Sure && str_field(e, "category") == Some("OBJECT_NOT_FOUND") {
            written.push(WrittenInput { input: i, id: None });
            continue;
        }
        let said = str_field(e, "message").unwrap_or("(no message)");
        let (category, message) = match blame {
            Blame::Sure => (
                Category::AssociationRefused,
                format!(
                    "HubSpot refused the removal of the association of contact {contact} with \
                     its previous company {company}: {said}; the association with the new \
                     company waits until the old one is removed"
                ),
            ),
            Blame::Maybe => (
                Category::NotWritten,
                format!(
                    "HubSpot refused the removal of an association of this batch without \
                     saying which ({said}); the association of contact {contact} with its \
                     previous company {company} may still be there, so its removal is tried \
                     again"
                ),
            ),
        };
        failed.push(FailedInput {
            input: i,
            error: RecordError {
                category,
                code: str_field(e, "category").map(String::from),
                message,
                raw: e.clone(),
                permanent: false,
                properties: Vec::new(),
            },
        });
    }
    Outcome::Completed { written, failed }
}

fn offenders(inputs: &[SentInput], id_property: IdProperty<'_>, body: &Value) -> Vec<usize> {
    let by_trace: HashMap<&str, usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.trace_id.as_str(), i))
        .collect();
    let mut out: Vec<usize> = Vec::new();
    let context = body.get("context");
    for t in strings(context.and_then(|c| c.get("objectWriteTraceId"))) {
        if let Some(i) = by_trace.get(t.as_str()) {
            out.push(*i);
        }
    }
    for id in strings(context.and_then(|c| c.get("ids"))) {
        let id = id_property.compared(&id);
        for (i, s) in inputs.iter().enumerate() {
            if id_property.compared(&s.key) == id && !out.contains(&i) {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn completed(inputs: &[SentInput], id_property: IdProperty<'_>, body: &Value) -> Outcome {
    let normal = |s: &str| id_property.compared(s);
    let key_property = id_property.name();
    let by_key: HashMap<String, usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| (normal(&s.key), i))
        .collect();
    let by_trace: HashMap<&str, usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.trace_id.as_str(), i))
        .collect();
    let by_id: HashMap<&str, usize> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((s.hubspot_id.as_deref()?, i)))
        .collect();
    let mut fate: Vec<Option<Result<Option<String>, RecordError>>> = vec![None; inputs.len()];
    let mut leftover: Vec<(Option<String>, Option<&Value>)> = Vec::new();
    // Errors that name no input of this request, by trace id or by key.
    let mut unmatched: Vec<&Value> = Vec::new();

    if let Some(Value::Array(errors)) = body.get("errors") {
        for err in errors {
            let context = err.get("context");
            let mut hit: Vec<usize> = strings(context.and_then(|c| c.get("objectWriteTraceId")))
                .iter()
                .filter_map(|t| by_trace.get(t.as_str()).copied())
                .collect();
            if hit.is_empty() {
                hit = strings(context.and_then(|c| c.get("ids")))
                    .iter()
                    .filter_map(|k| by_key.get(&normal(k)).copied())
                    .collect();
            }
            if hit.is_empty() {
                unmatched.push(err);
            }
            for i in hit {
                fate[i] = Some(Err(record_error(err, Category::HubspotError)));
            }
        }
    }
    if let Some(Value::Array(results)) = body.get("results") {
        for result in results {
            let id = match result.get("id") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            // The trace id says for sure; the record id hubsync knows is next best (an upsert by
            // a secondary email answers with the primary one); the key last.
            let idx = str_field(result, "objectWriteTraceId")
                .and_then(|t| by_trace.get(t).copied())
                .or_else(|| id.as_deref().and_then(|id| by_id.get(id).copied()))
                .or_else(|| {
                    result
                        .get("properties")
                        .and_then(|p| str_field(p, key_property))
                        .and_then(|k| by_key.get(&normal(k)).copied())
                });
            match idx {
                Some(i) if fate[i].is_none() => fate[i] = Some(Ok(id)),
                Some(_) => {}
                None => leftover.push((id, result.get("properties"))),
            }
        }
    }
    // A result none of those match (no trace id echoed, an upsert by a secondary email that
    // came back with the primary one, a record id hubsync did not know yet) belongs to the one
    // unaccounted input whose sent values it carries, or else to the only one left.
    for (id, properties) in leftover {
        let open: Vec<usize> = (0..inputs.len()).filter(|i| fate[*i].is_none()).collect();
        let carries = |i: &usize| {
            properties.is_some_and(|p| {
                inputs[*i]
                    .properties
                    .iter()
                    .filter(|(name, _)| name.as_str() != key_property)
                    .all(|(name, value)| str_field(p, name) == Some(value.as_str()))
            })
        };
        let matching: Vec<usize> = open.iter().copied().filter(carries).collect();
        let pick = match (matching.as_slice(), open.as_slice()) {
            ([one], _) | (_, [one]) => Some(*one),
            _ => None,
        };
        if let Some(i) = pick {
            fate[i] = Some(Ok(id));
        }
    }
    // Errors naming no input are still HubSpot's words about the inputs left unaccounted:
    // the only one left owns them; with several left, each keeps them, still not written.
    let open: Vec<usize> = (0..inputs.len()).filter(|i| fate[*i].is_none()).collect();
    if let ([one], false) = (open.as_slice(), unmatched.is_empty()) {
        fate[*one] = Some(Err(combined_error(&unmatched)));
    }
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for (i, f) in fate.into_iter().enumerate() {
        match f {
            Some(Ok(id)) => written.push(WrittenInput { input: i, id }),
            Some(Err(error)) => failed.push(FailedInput { input: i, error }),
            None => failed.push(FailedInput {
                input: i,
                error: not_written(&unmatched),
            }),
        }
    }
    Outcome::Completed { written, failed }
}

/// The error of an input that every one of `errors` is about.
fn combined_error(errors: &[&Value]) -> RecordError {
    let mut parts: Vec<RecordError> = errors
        .iter()
        .map(|e| record_error(e, Category::HubspotError))
        .collect();
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let permanent = parts.iter().any(|p| p.permanent);
    // Properties can be held back only when every error names the ones it is about.
    let mut properties: Vec<String> = if parts.iter().all(|p| !p.properties.is_empty()) {
        parts.iter().flat_map(|p| p.properties.clone()).collect()
    } else {
        Vec::new()
    };
    properties.sort();
    properties.dedup();
    let said: Vec<&str> = parts
        .iter()
        .map(|p| {
            p.message
                .strip_prefix("HubSpot refused the record: ")
                .unwrap_or(&p.message)
        })
        .collect();
    RecordError {
        category: if permanent {
            Category::HubspotValidation
        } else {
            Category::HubspotError
        },
        code: parts.iter().find_map(|p| p.code.clone()),
        message: format!(
            "HubSpot refused the record: {}",
            listed(
                said.iter().map(|s| s.to_string()),
                said.len(),
                "; ",
                "errors"
            )
        ),
        raw: raw_errors(errors),
        permanent,
        properties,
    }
}

/// The error of an input a 2xx reply does not account for; `unmatched` are the reply's errors
/// that name no input, which may be about this one.
fn not_written(unmatched: &[&Value]) -> RecordError {
    RecordError {
        category: Category::NotWritten,
        code: None,
        message: format!(
            "HubSpot answered success but its reply does not mention this record, so it was not \
             written{}",
            unplaced_note(unmatched, "record")
        ),
        raw: raw_errors(unmatched),
        permanent: false,
        properties: Vec::new(),
    }
}

/// What a "not written" message adds about a reply's `errors` that name no `what` (record,
/// pair) of the request: they may be about this one. Empty when there are none.
fn unplaced_note(errors: &[&Value], what: &str) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let said: Vec<String> = errors
        .iter()
        .map(|e| format!("\"{}\"", str_field(e, "message").unwrap_or("(no message)")))
        .collect();
    format!(
        "; the reply also carries {} error(s) naming no {what}, which may be about this one: {}",
        errors.len(),
        listed(said.iter().cloned(), said.len(), "; ", "")
    )
}

/// `errors` as kept in a record error's `raw`: null when there are none.
fn raw_errors(errors: &[&Value]) -> Value {
    match errors {
        [] => Value::Null,
        errors => Value::Array(errors.iter().map(|e| (*e).clone()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(n: usize) -> Vec<SentInput> {
        (0..n)
            .map(|i| SentInput {
                key: format!("user{i}@acme.com"),
                trace_id: format!("t{i}"),
                hubspot_id: None,
                properties: BTreeMap::from([("n".to_string(), i.to_string())]),
            })
            .collect()
    }

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            rate: RateHeaders::default(),
            retry_after: None,
            body: body.to_string(),
        }
    }

    fn run(status: u16, body: Value, n: usize) -> Outcome {
        classify(
            &inputs(n),
            IdProperty::Email,
            Ok(&reply(status, body)),
            Utc::now(),
        )
    }

    #[test]
    fn results_map_by_key_in_any_order_and_errors_by_trace_id() {
        let body = json!({
            "status": "COMPLETE",
            "results": [
                {"id": "12", "properties": {"email": "USER2@acme.com"}},
                {"id": "10", "properties": {"email": "user0@acme.com"}}
            ],
            "numErrors": 1,
            "errors": [{"status": "error", "category": "VALIDATION_ERROR",
                "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"bad\",\"error\":\"INVALID_OPTION\",\"name\":\"plan\"}]",
                "context": {"objectWriteTraceId": ["t1"]}}]
        });
        let Outcome::Completed { written, failed } = run(207, body, 3) else {
            panic!("not completed")
        };
        assert_eq!(
            written
                .iter()
                .map(|w| (w.input, w.id.clone()))
                .collect::<Vec<_>>(),
            vec![(0, Some("10".into())), (2, Some("12".into()))]
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].input, 1);
        assert!(failed[0].error.permanent);
        assert_eq!(failed[0].error.code.as_deref(), Some("INVALID_OPTION"));
        assert!(failed[0].error.message.contains("property \"plan\""));
    }

    #[test]
    fn results_match_by_trace_id_then_known_record_id_then_key() {
        let mut sent = inputs(3);
        sent[1].hubspot_id = Some("77".into());
        // Input 0 matched by trace id though its email differs; input 1 by the id hubsync knows
        // (HubSpot answered with the contact's primary email); input 2 by key.
        let body = json!({"results": [
            {"id": "5", "objectWriteTraceId": "t0", "properties": {"email": "primary@acme.com"}},
            {"id": "77", "properties": {"email": "other@acme.com"}},
            {"id": "9", "properties": {"email": "user2@acme.com"}}
        ]});
        let out = classify(&sent, IdProperty::Email, Ok(&reply(200, body)), Utc::now());
        let Outcome::Completed { written, failed } = out else {
            panic!("not completed")
        };
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            written
                .iter()
                .map(|w| (w.input, w.id.clone()))
                .collect::<Vec<_>>(),
            vec![
                (0, Some("5".into())),
                (1, Some("77".into())),
                (2, Some("9".into()))
            ]
        );
    }

    fn companies(keys: &[&str]) -> Vec<SentInput> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| SentInput {
                key: key.to_string(),
                trace_id: format!("t{i}"),
                hubspot_id: None,
                // The same values for all: only the key can tell the results apart.
                properties: BTreeMap::from([("seats".to_string(), "1".to_string())]),
            })
            .collect()
    }

    #[test]
    fn company_keys_that_differ_only_in_case_are_matched_exactly_as_sent() {
        let sent = companies(&["Acme", "acme", "ACME"]);
        let id = IdProperty::Unique("product_account_id");
        let body = json!({"status": "COMPLETE",
            "results": [
                {"id": "2", "properties": {"product_account_id": "acme", "seats": "1"}},
                {"id": "1", "properties": {"product_account_id": "Acme", "seats": "1"}}
            ],
            "numErrors": 1,
            "errors": [{"status": "error", "category": "VALIDATION_ERROR",
                "message": "Property values were not valid", "context": {"ids": ["ACME"]}}]
        });
        let Outcome::Completed { written, failed } =
            classify(&sent, id, Ok(&reply(207, body)), Utc::now())
        else {
            panic!("not completed")
        };
        let mut pairs: Vec<(usize, Option<String>)> =
            written.iter().map(|w| (w.input, w.id.clone())).collect();
        pairs.sort();
        assert_eq!(pairs, vec![(0, Some("1".into())), (1, Some("2".into()))]);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].input, 2);
        assert_eq!(failed[0].error.category, Category::HubspotError);
        // A whole-batch refusal naming one of them names that one only.
        let refused = json!({"status": "error", "category": "VALIDATION_ERROR",
            "message": "Duplicate IDs found in batch input: [acme]. IDs must be unique",
            "context": {"ids": ["acme"]}});
        let out = classify(&sent, id, Ok(&reply(400, refused)), Utc::now());
        assert!(
            matches!(&out, Outcome::Rejected { offenders, .. } if offenders == &vec![1]),
            "{out:?}"
        );
    }

    #[test]
    fn a_company_key_equal_to_an_earlier_one_but_for_case_waits_for_the_next_request() {
        let id = IdProperty::Unique("product_account_id");
        assert_eq!(
            id.wait_for_next_request(&[
                "Acme", "acme", "Beta", "ACME", "acme ", "STRASSE", "straße"
            ]),
            vec![false, true, false, true, false, false, true]
        );
        assert_eq!(
            IdProperty::Email.wait_for_next_request(&["a@acme.com", "b@acme.com"]),
            vec![false, false]
        );
    }

    #[test]
    fn a_2xx_that_omits_an_input_is_a_failure_for_that_input() {
        let body = json!({"status": "COMPLETE", "results": []});
        let Outcome::Completed { written, failed } = run(200, body, 2) else {
            panic!()
        };
        assert!(written.is_empty());
        assert_eq!(failed.len(), 2);
        assert!(
            failed
                .iter()
                .all(|f| f.error.category == Category::NotWritten && !f.error.permanent)
        );
    }

    /// The error a 207 reply for two inputs gives the second.
    fn error_of_input_1(body: Value) -> RecordError {
        let Outcome::Completed { failed, .. } = run(207, body, 2) else {
            panic!("not completed")
        };
        failed.into_iter().find(|f| f.input == 1).unwrap().error
    }

    #[test]
    fn a_reply_with_many_errors_gives_messages_that_list_the_first_twenty() {
        let problem = |n: usize| {
            json!({"code": "INVALID_OPTION", "message": format!("bad value {n:03}"),
            "context": {"propertyName": [format!("p{n:03}")]}})
        };
        // One error for input 1 with 100 property problems.
        let body = json!({"status": "COMPLETE", "results": [],
            "errors": [{"status": "error", "category": "VALIDATION_ERROR", "message": "invalid",
                "context": {"objectWriteTraceId": ["t1"]},
                "errors": (0..100).map(problem).collect::<Vec<_>>()}]});
        let e = error_of_input_1(body);
        assert!(
            e.message.contains("bad value 019; and 80 more problems"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("bad value 020"), "{}", e.message);
        assert_eq!(e.properties.len(), 100, "every property is still held back");
        // 30 errors naming no input, and only input 1 left to own them.
        let body = json!({"status": "COMPLETE",
            "results": [{"id": "10", "properties": {"email": "user0@acme.com", "n": "0"}}],
            "errors": (0..30).map(|n| json!({"status": "error", "category": "VALIDATION_ERROR",
                "message": "invalid", "errors": [problem(n)]})).collect::<Vec<_>>()});
        let e = error_of_input_1(body);
        assert!(
            e.message.contains("bad value 019; and 10 more errors"),
            "{}",
            e.message
        );
        // 100 errors naming no input, two inputs left unaccounted: each carries the first 20.
        let body = json!({"status": "COMPLETE",
            "results": [{"id": "10", "properties": {"email": "user0@acme.com", "n": "0"}}],
            "errors": (0..100).map(|n| json!({"status": "error", "message": format!("lost {n:03}")}))
                .collect::<Vec<_>>()});
        let Outcome::Completed { failed, .. } = run(207, body, 3) else {
            panic!("not completed")
        };
        assert_eq!(failed.len(), 2);
        for f in &failed {
            let m = &f.error.message;
            assert!(m.contains("carries 100 error(s)"), "{m}");
            assert!(m.contains("\"lost 019\"; and 80 more"), "{m}");
            assert!(!m.contains("lost 020"), "{m}");
        }
    }

    /// The error quotes both of the two errors the tests below give HubSpot's reply.
    fn says_both(e: &RecordError) {
        for words in ["platinum was not one of", "Something else went wrong"] {
            assert!(e.message.contains(words), "{}", e.message);
        }
    }

    fn invalid_option(context: Value) -> Value {
        json!({"status": "error", "category": "VALIDATION_ERROR",
            "message": "Property values were not valid: [{\"isValid\":false,\"message\":\
                \"platinum was not one of the allowed options\",\"error\":\"INVALID_OPTION\",\
                \"name\":\"current_plan\"}]",
            "context": context})
    }

    #[test]
    fn an_error_naming_no_input_belongs_to_the_only_input_left_unaccounted() {
        // One error with no context, one naming a trace id this request did not send.
        for context in [json!({}), json!({"objectWriteTraceId": ["t99"]})] {
            let error = invalid_option(context);
            let body = json!({"status": "COMPLETE",
                "results": [
                    {"id": "10", "properties": {"email": "user0@acme.com", "n": "0"}},
                    {"id": "12", "properties": {"email": "user2@acme.com", "n": "2"}}
                ],
                "numErrors": 1, "errors": [error.clone()]});
            let Outcome::Completed { written, failed } = run(207, body, 3) else {
                panic!("not completed")
            };
            assert_eq!(written.len(), 2);
            assert_eq!(failed.len(), 1, "{failed:?}");
            let FailedInput { input, error: e } = &failed[0];
            assert_eq!(*input, 1);
            assert_eq!(e.category, Category::HubspotValidation);
            assert!(e.permanent);
            assert_eq!(e.code.as_deref(), Some("INVALID_OPTION"));
            assert_eq!(e.properties, vec!["current_plan".to_string()]);
            assert!(
                e.message.contains("platinum was not one of"),
                "{}",
                e.message
            );
            assert_eq!(e.raw, error);
        }
        // Two such errors and one input left: both are its.
        let other = json!({"status": "error", "message": "Something else went wrong"});
        let body = json!({"status": "COMPLETE",
            "results": [{"id": "10", "properties": {"email": "user0@acme.com", "n": "0"}}],
            "numErrors": 2, "errors": [invalid_option(json!({})), other.clone()]});
        let Outcome::Completed { written, failed } = run(207, body, 2) else {
            panic!("not completed")
        };
        assert_eq!((written.len(), failed.len()), (1, 1));
        let e = &failed[0].error;
        assert_eq!((failed[0].input, e.permanent), (1, true));
        says_both(e);
        assert_eq!(e.raw, json!([invalid_option(json!({})), other]));
    }

    #[test]
    fn errors_naming_no_input_are_kept_on_every_input_left_unaccounted() {
        let first = invalid_option(json!({}));
        let second = json!({"status": "error", "message": "Something else went wrong"});
        let body = json!({"status": "COMPLETE",
            "results": [{"id": "10", "properties": {"email": "user0@acme.com", "n": "0"}}],
            "numErrors": 2, "errors": [first.clone(), second.clone()]});
        let Outcome::Completed { written, failed } = run(207, body, 3) else {
            panic!("not completed")
        };
        assert_eq!(
            written.iter().map(|w| w.input).collect::<Vec<_>>(),
            vec![0],
            "an error is never counted as a write"
        );
        assert_eq!(
            failed.iter().map(|f| f.input).collect::<Vec<_>>(),
            vec![1, 2]
        );
        for FailedInput { error: e, .. } in &failed {
            assert_eq!(e.category, Category::NotWritten);
            assert!(!e.permanent);
            says_both(e);
            assert_eq!(e.raw, json!([first, second]));
        }
        // Every input accounted for: an error naming none of them changes nothing.
        let body = json!({"status": "COMPLETE",
            "results": [{"id": "10", "properties": {"email": "user0@acme.com", "n": "0"}}],
            "numErrors": 1, "errors": [second]});
        let Outcome::Completed { written, failed } = run(207, body, 1) else {
            panic!("not completed")
        };
        assert_eq!((written.len(), failed.len()), (1, 0));
    }

    #[test]
    fn a_whole_batch_400_names_offenders_from_context() {
        let dup = json!({"status": "error",
            "message": "Duplicate IDs found in batch input: [user1@acme.com]. IDs must be unique",
            "context": {"ids": ["user1@acme.com"]}, "category": "VALIDATION_ERROR"});
        assert!(
            matches!(run(400, dup, 3), Outcome::Rejected { offenders, .. } if offenders == vec![1])
        );
        let traced =
            json!({"status": "error", "message": "bad", "context": {"objectWriteTraceId": ["t2"]}});
        assert!(
            matches!(run(400, traced, 3), Outcome::Rejected { offenders, .. } if offenders == vec![2])
        );
        let unknown = json!({"status": "error", "message": "Property values were not valid"});
        assert!(
            matches!(run(400, unknown, 3), Outcome::Rejected { offenders, .. } if offenders.is_empty())
        );
    }

    #[test]
    fn any_other_4xx_is_narrowed_down_and_non_unique_halts_only_for_the_company_id() {
        for status in [409, 413, 422, 400] {
            let body = json!({"status": "error", "category": "CONFLICT",
                "message": "Contact already exists. Existing ID: 5"});
            assert!(
                matches!(run(status, body, 3), Outcome::Rejected { offenders, error }
                    if offenders.is_empty() && error.category == Category::HubspotRejected && error.permanent),
                "{status}"
            );
        }
        let non_unique = json!({"message": "Unable to perform update/upsert by non-unique 0-2 property product_account_id"});
        let company = classify(
            &inputs(2),
            IdProperty::Unique("product_account_id"),
            Ok(&reply(400, non_unique.clone())),
            Utc::now(),
        );
        assert!(matches!(company, Outcome::Halt { status: 400, .. }));
        assert!(matches!(run(400, non_unique, 2), Outcome::Rejected { .. }));
    }

    #[test]
    fn credentials_problems_halt_and_name_the_scopes() {
        let forbidden = json!({"status": "error", "category": "MISSING_SCOPES", "message": "no",
            "errors": [{"message": "One or more", "context": {"requiredGranularScopes": ["crm.objects.contacts.write"]}}]});
        let Outcome::Halt { scopes, reason, .. } = run(403, forbidden, 1) else {
            panic!()
        };
        assert_eq!(scopes, vec!["crm.objects.contacts.write".to_string()]);
        assert!(reason.contains("crm.objects.contacts.write"));
        assert!(matches!(
            run(401, json!({"category": "INVALID_AUTHENTICATION"}), 1),
            Outcome::Halt { status: 401, .. }
        ));
    }

    #[test]
    fn rate_limits_wait_for_their_window() {
        let mut r = reply(
            429,
            json!({"policyName": "TEN_SECONDLY_ROLLING", "errorType": "RATE_LIMIT"}),
        );
        r.rate.interval_ms = Some(10_000);
        let out = classify(&inputs(1), IdProperty::Email, Ok(&r), Utc::now());
        assert!(
            matches!(out, Outcome::RateLimited { daily: false, wait, .. } if wait == Duration::from_secs(10))
        );
        let daily = reply(429, json!({"policyName": "DAILY"}));
        let noon: chrono::DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let out = classify(&inputs(1), IdProperty::Email, Ok(&daily), noon);
        assert!(
            matches!(out, Outcome::RateLimited { daily: true, wait, .. } if wait == Duration::from_secs(12 * 3600))
        );
        // Noon UTC is 07:00 at UTC-5: the portal's day ends in 17 hours.
        let eastern = chrono::FixedOffset::west_opt(5 * 3600).unwrap();
        let out = classify(
            &inputs(1),
            IdProperty::Email,
            Ok(&daily),
            noon.with_timezone(&eastern),
        );
        assert!(
            matches!(out, Outcome::RateLimited { daily: true, wait, .. } if wait == Duration::from_secs(17 * 3600))
        );
    }

    #[test]
    fn transient_failures_retry_and_honour_retry_after() {
        for status in [500, 502, 503, 504, 524] {
            assert!(
                matches!(run(status, json!({}), 1), Outcome::Retry { .. }),
                "{status}"
            );
        }
        assert!(
            matches!(run(423, json!({}), 1), Outcome::Retry { min_wait, .. } if min_wait == Duration::from_secs(2))
        );
        let mut r = reply(477, json!({}));
        r.retry_after = Some(Duration::from_secs(30));
        let out = classify(&inputs(1), IdProperty::Email, Ok(&r), Utc::now());
        assert!(
            matches!(out, Outcome::Retry { after: Some(a), .. } if a == Duration::from_secs(30))
        );
        let out = classify(
            &inputs(1),
            IdProperty::Email,
            Err(&Transport::Timeout),
            Utc::now(),
        );
        assert!(matches!(out, Outcome::Retry { .. }));
    }

    #[test]
    fn a_non_unique_id_property_is_read_into_its_name() {
        assert_eq!(
            BatchError::read("Unable to perform update/upsert by non-unique 0-2 property domain"),
            BatchError::NonUniqueIdProperty {
                property: "domain".into()
            }
        );
        assert_eq!(
            BatchError::read(
                "Unable to perform update/upsert by non-unique 0-2 property product_account_id in portal ID 21939747"
            ),
            BatchError::NonUniqueIdProperty {
                property: "product_account_id".into()
            }
        );
        assert_eq!(
            BatchError::read("Duplicate IDs found in batch input: [a@b.com]. IDs must be unique"),
            BatchError::Other
        );
        assert_eq!(BatchError::read("non-unique"), BatchError::Other);
        assert_eq!(
            BatchError::read("Unable to perform update/upsert by non-unique 0-2 property"),
            BatchError::Other
        );
    }

    #[test]
    fn a_property_left_out_of_the_nested_errors_is_read_from_the_message() {
        let error = json!({
            "status": "error", "category": "VALIDATION_ERROR",
            "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"platinum was not one of the allowed options\",\"error\":\"INVALID_OPTION\",\"name\":\"current_plan\"}]",
            "errors": [{"code": "INVALID_OPTION", "message": "platinum was not one of the allowed options"}],
            "context": {"objectWriteTraceId": ["t0"]}
        });
        let e = record_error(&error, Category::HubspotError);
        assert!(e.permanent);
        assert_eq!(e.properties, vec!["current_plan".to_string()]);
    }

    #[test]
    fn a_daily_429_waits_for_midnight_whatever_retry_after_says() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 23, 0, 0).unwrap();
        let reply = Reply {
            status: 429,
            rate: RateHeaders::default(),
            retry_after: Some(Duration::from_secs(10)),
            body: json!({"status": "error", "errorType": "RATE_LIMIT", "policyName": "DAILY",
                         "message": "You have reached your daily limit."})
            .to_string(),
        };
        let out = classify(&inputs(1), IdProperty::Email, Ok(&reply), now);
        assert!(
            matches!(out, Outcome::RateLimited { daily: true, wait, .. } if wait == Duration::from_secs(3600)),
            "{out:?}"
        );
    }

    #[test]
    fn a_result_under_another_email_is_matched_by_what_it_carries() {
        // No trace ids echoed; input 1 matched a secondary email, so its result carries the
        // primary one and an id hubsync has not seen.
        let body = json!({"status": "COMPLETE", "results": [
            {"id": "20", "properties": {"email": "user0@acme.com", "n": "0"}},
            {"id": "21", "properties": {"email": "main@acme.com", "n": "1"}},
            {"id": "22", "properties": {"email": "user2@acme.com", "n": "2"}}
        ]});
        let Outcome::Completed { written, failed } = run(200, body, 3) else {
            panic!()
        };
        assert!(failed.is_empty(), "{failed:?}");
        let mut pairs: Vec<(usize, Option<String>)> =
            written.iter().map(|w| (w.input, w.id.clone())).collect();
        pairs.sort();
        assert_eq!(
            pairs,
            vec![
                (0, Some("20".into())),
                (1, Some("21".into())),
                (2, Some("22".into()))
            ]
        );
        // Two results under other emails, one input silently left out: only the one whose
        // values match is written.
        let body = json!({"status": "COMPLETE", "results": [
            {"id": "30", "properties": {"email": "main@acme.com", "n": "1"}},
            {"id": "31", "properties": {"email": "user0@acme.com", "n": "0"}}
        ]});
        let Outcome::Completed { written, failed } = run(200, body, 3) else {
            panic!()
        };
        assert_eq!(written.len(), 2);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].input, 2);
        assert_eq!(failed[0].error.category, Category::NotWritten);
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(c, k)| (c.to_string(), k.to_string()))
            .collect()
    }

    fn association(from: &str, to: &str, type_id: i64) -> Value {
        json!({"from": {"id": from}, "to": {"id": to}, "associationSpec":
            {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}})
    }

    fn associated(pairs: &[(String, String)], body: Value) -> (Vec<usize>, Vec<FailedInput>) {
        let out = classify_associations(pairs, Ok(&reply(200, body)), Utc::now());
        let Outcome::Completed { written, failed } = out else {
            panic!("not completed: {out:?}")
        };
        (written.iter().map(|w| w.input).collect(), failed)
    }

    #[test]
    fn colliding_ids_are_matched_by_the_direction_of_each_result() {
        // Contact 5 with company 7, and contact 7 with company 5: only the second is made, and
        // its two results join 5 and 7 both ways round.
        let sent = pairs(&[("5", "7"), ("7", "5")]);
        let refused = json!({"status": "error", "category": "OBJECT_NOT_FOUND",
            "message": "No contact with id 5 exists", "context": {"fromObjectId": ["5"]}});
        let body = json!({"status": "COMPLETE",
            "results": [association("7", "5", 279), association("5", "7", 280)],
            "errors": [refused], "numErrors": 1});
        let (written, failed) = associated(&sent, body);
        assert_eq!(written, vec![1]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].input, 0);
        assert_eq!(failed[0].error.category, Category::AssociationRefused);
        assert_eq!(failed[0].error.raw["context"]["fromObjectId"][0], "5");

        // The type id may come as text; a company → contact result alone is enough.
        let body = json!({"results": [{"from": {"id": "7"}, "to": {"id": "5"},
            "associationSpec": {"associationTypeId": "280"}}]});
        assert_eq!(associated(&sent, body).0, vec![0]);
    }

    #[test]
    fn an_error_is_pinned_on_the_end_its_context_names() {
        // Company 7 and contact 7 are different records; each error says which end it means.
        let sent = pairs(&[("5", "7"), ("7", "9")]);
        let body = json!({"status": "COMPLETE", "results": [], "errors": [
            {"category": "OBJECT_NOT_FOUND", "message": "No company with id 7 exists",
             "context": {"toObjectId": ["7"]}},
            {"category": "OBJECT_NOT_FOUND", "message": "No contact with id 7 exists",
             "context": {"fromObjectId": ["7"]}}
        ]});
        let (written, failed) = associated(&sent, body);
        assert!(written.is_empty());
        let message = |i: usize| failed[i].error.message.clone();
        assert!(
            message(0).contains("No company with id 7"),
            "{}",
            message(0)
        );
        assert!(
            message(1).contains("No contact with id 7"),
            "{}",
            message(1)
        );
        assert!(
            failed
                .iter()
                .all(|f| f.error.category == Category::AssociationRefused)
        );

        // objectId beside objectType places the id as well.
        let body = json!({"results": [association("5", "7", 279)], "errors": [
            {"message": "One or more associations are invalid", "category": "VALIDATION_ERROR",
             "context": {"objectId": ["7"], "objectType": ["CONTACT"]}}]});
        let (written, failed) = associated(&sent, body);
        assert_eq!(written, vec![0]);
        assert_eq!(failed[0].error.category, Category::AssociationRefused);
    }

    #[test]
    fn an_error_naming_no_pair_is_kept_on_the_pairs_not_made() {
        let sent = pairs(&[("5", "7"), ("6", "8")]);
        let error = json!({"category": "VALIDATION_ERROR", "message": "Something went wrong"});
        let body = json!({"status": "COMPLETE", "results": [association("5", "7", 279)],
                          "errors": [error.clone()]});
        let (written, failed) = associated(&sent, body);
        assert_eq!(written, vec![0], "an error is never counted as a pair made");
        assert_eq!(failed.len(), 1);
        let e = &failed[0].error;
        assert_eq!((failed[0].input, &e.category), (1, &Category::NotWritten));
        assert!(e.message.contains("Something went wrong"), "{}", e.message);
        assert_eq!(e.raw, json!([error]));
    }

    #[test]
    fn an_unplaced_id_or_an_untyped_result_counts_only_when_one_pair_can_hold_it() {
        let sent = pairs(&[("5", "7"), ("7", "9")]);
        // 7 is pair 0's company and pair 1's contact: neither is blamed for sure, neither made.
        let body = json!({"results": [], "errors": [
            {"category": "OBJECT_NOT_FOUND", "message": "gone", "context": {"ids": ["7"]}}]});
        let (written, failed) = associated(&sent, body);
        assert!(written.is_empty());
        assert!(
            failed
                .iter()
                .all(|f| f.error.category == Category::NotWritten
                    && f.error.raw["message"] == "gone")
        );
        // 9 belongs to pair 1 alone.
        let body = json!({"results": [], "errors": [
            {"category": "OBJECT_NOT_FOUND", "message": "gone", "context": {"ids": ["9"]}}]});
        let (_, failed) = associated(&sent, body);
        assert_eq!(failed[1].error.category, Category::AssociationRefused);
        assert_eq!(failed[0].error.category, Category::NotWritten);
        assert!(failed[0].error.raw.is_null());

        // A result without a type joins 5 and 7: one pair can be read from it...
        let untyped = json!({"results": [{"from": {"id": "7"}, "to": {"id": "5"}}]});
        assert_eq!(
            associated(&pairs(&[("5", "7")]), untyped.clone()).0,
            vec![0]
        );
        // ...but not when the batch holds both (5, 7) and (7, 5).
        let (written, failed) = associated(&pairs(&[("5", "7"), ("7", "5")]), untyped);
        assert!(written.is_empty());
        assert_eq!(failed.len(), 2);
    }

    #[test]
    fn a_removal_is_done_unless_an_error_is_or_may_be_about_it() {
        let sent = pairs(&[("5", "7"), ("7", "5"), ("9", "5")]);
        let removed = |status: u16, body: &str| {
            let r = Reply {
                status,
                rate: RateHeaders::default(),
                retry_after: None,
                body: body.to_string(),
            };
            let Outcome::Completed { written, failed } =
                classify_removals(&sent, Ok(&r), Utc::now())
            else {
                panic!("not completed")
            };
            (written.iter().map(|w| w.input).collect::<Vec<_>>(), failed)
        };
        // The v4 path: 204, no body.
        assert_eq!(removed(204, "").0, vec![0, 1, 2]);
        // Contact 7's removal with company 5 is refused; contact 5 and company 7 are others.
        let body = json!({"status": "COMPLETE", "results": [], "numErrors": 1, "errors": [
            {"status": "error", "category": "VALIDATION_ERROR", "message": "not now",
             "context": {"fromObjectId": ["7"], "toObjectId": ["5"]}}]});
        let (written, failed) = removed(200, &body.to_string());
        assert_eq!(written, vec![0, 2]);
        assert_eq!(failed[0].input, 1);
        assert_eq!(failed[0].error.category, Category::AssociationRefused);
        assert!(failed[0].error.message.contains("previous company 5"));
        // Refused because a record of that pair is gone: nothing is left to remove.
        let body = json!({"status": "COMPLETE", "results": [], "numErrors": 1, "errors": [
            {"status": "error", "category": "OBJECT_NOT_FOUND",
             "message": "no company with id 5 exists",
             "context": {"fromObjectId": ["7"], "toObjectId": ["5"]}}]});
        let (written, failed) = removed(200, &body.to_string());
        assert_eq!(written, vec![0, 1, 2]);
        assert!(failed.is_empty());
        // An error that places no pair leaves every removal unsure: none is taken as done.
        let body = json!({"status": "COMPLETE", "results": [], "errors": [
            {"category": "VALIDATION_ERROR", "message": "something", "context": {}}]});
        let (written, failed) = removed(200, &body.to_string());
        assert!(written.is_empty());
        assert!(
            failed
                .iter()
                .all(|f| f.error.category == Category::NotWritten)
        );
    }

    #[test]
    fn an_association_request_refused_whole_fails_only_the_pairs_it_names() {
        let sent = pairs(&[("5", "7"), ("6", "8"), ("9", "10")]);
        // The shape of the single-pair endpoint's refusal: one record named by type and id.
        let named = json!({"status": "error", "category": "VALIDATION_ERROR",
            "message": "One or more associations are invalid",
            "context": {"INVALID_OBJECT_IDS": ["CONTACT=6 is not valid"]}});
        let out = classify_associations(&sent, Ok(&reply(400, named)), Utc::now());
        let Outcome::Completed { written, failed } = out else {
            panic!("not completed: {out:?}")
        };
        assert!(written.is_empty(), "nothing is taken as made");
        assert_eq!(failed.len(), 1, "the others are neither made nor charged");
        assert_eq!(failed[0].input, 1);
        assert_eq!(failed[0].error.category, Category::AssociationRefused);
        assert!(
            failed[0].error.message.contains("HTTP 400"),
            "{}",
            failed[0].error.message
        );

        // Naming nothing, or only an id two pairs share, it stays a try for every pair.
        let vague = json!({"status": "error", "category": "VALIDATION_ERROR",
            "message": "Invalid input JSON"});
        let out = classify_associations(&sent, Ok(&reply(400, vague)), Utc::now());
        assert!(matches!(out, Outcome::Rejected { .. }), "{out:?}");
        let shared = pairs(&[("5", "7"), ("5", "8")]);
        let ambiguous = json!({"status": "error", "message": "bad",
            "context": {"ids": ["5"]}});
        let out = classify_associations(&shared, Ok(&reply(400, ambiguous)), Utc::now());
        assert!(matches!(out, Outcome::Rejected { .. }), "{out:?}");
    }
}
