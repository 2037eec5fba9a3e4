//! One request's way through the simulator: arrival (logged, counted against the limits),
//! latency or a scripted hang, auth, rate limit, faults on object writes, routing, and the
//! rate-limit headers on the way out. The state lock is taken in short synchronous sections,
//! never across a sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::object_type::ObjectType;
use crate::objects::{self, Edition};
use crate::replies::{Reply, ReplyBody};
use crate::state::{Admission, Shared, State, timestamp};
use crate::types::{Fault, PORTAL_ID, SimConfig, SimRequest};

/// What the connection should do with a request.
pub(crate) enum Outcome {
    /// Send this response.
    Reply(Response<Full<Bytes>>),
    /// Close the connection without answering.
    Drop,
}

/// Where a path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Upsert(ObjectType),
    ReadOne(ObjectType, String),
    Properties(ObjectType),
    Property(ObjectType, String),
    Groups(ObjectType),
    Associate,
    ArchiveAssociations(Edition),
    AccountDetails,
    Unknown,
}

impl Route {
    /// Both path editions: `v3`/`v4` and the date-versioned `2026-03`.
    fn parse(path: &str) -> Route {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let object = ObjectType::parse;
        let route = match segments.as_slice() {
            ["crm", "v3", "objects", kind, "batch", "upsert"]
            | ["crm", "objects", "2026-03", kind, "batch", "upsert"] => {
                object(kind).map(Route::Upsert)
            }
            ["crm", "v3", "objects", kind, id] | ["crm", "objects", "2026-03", kind, id] => {
                object(kind).map(|kind| Route::ReadOne(kind, percent_decode(id, false)))
            }
            ["crm", "v3", "properties", kind] | ["crm", "properties", "2026-03", kind] => {
                object(kind).map(Route::Properties)
            }
            ["crm", "v3", "properties", kind, "groups"]
            | ["crm", "properties", "2026-03", kind, "groups"] => object(kind).map(Route::Groups),
            ["crm", "v3", "properties", kind, name]
            | ["crm", "properties", "2026-03", kind, name] => {
                object(kind).map(|kind| Route::Property(kind, percent_decode(name, false)))
            }
            ["crm", "v4", "associations", rest @ ..] => associations(rest, Edition::V4),
            ["crm", "associations", "2026-03", rest @ ..] => associations(rest, Edition::Dated),
            ["account-info", "v3", "details"] => Some(Route::AccountDetails),
            _ => None,
        };
        route.unwrap_or(Route::Unknown)
    }

    /// Batch endpoints: their `inputs` are counted in the log.
    fn is_batch(&self) -> bool {
        matches!(
            self,
            Route::Upsert(_) | Route::Associate | Route::ArchiveAssociations(_)
        )
    }
}

/// The contact → company association routes below an edition's prefix.
fn associations(rest: &[&str], edition: Edition) -> Option<Route> {
    match rest {
        ["contacts", "companies", "batch", "associate", "default"] => Some(Route::Associate),
        ["contacts", "companies", "batch", "archive"] => Some(Route::ArchiveAssociations(edition)),
        _ => None,
    }
}

/// What the checks before routing decided.
enum Step {
    Done(Reply),
    Drop,
    /// A random `Hang`: wait, then handle normally.
    HangThenHandle(Duration),
}

/// The request as the handlers need it, body read and parsed once.
struct Parsed {
    method: Method,
    route: Route,
    query: Vec<(String, String)>,
    body: Result<Value, String>,
}

impl Parsed {
    fn body(&self) -> Result<&Value, &str> {
        self.body.as_ref().map_err(String::as_str)
    }

    /// Object writes, the only requests faults apply to.
    fn is_write(&self) -> bool {
        self.method == Method::POST && self.route.is_batch()
    }
}

/// Runs one request to its outcome.
pub(crate) async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Outcome {
    let (parts, body) = request.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            // The client went away mid-body: there is nobody to answer.
            tracing::debug!(%err, "simulator failed to read a request body");
            return Outcome::Drop;
        }
    };
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().map(str::to_owned);
    let parsed = Parsed {
        route: Route::parse(&path),
        query: parse_query(raw_query.as_deref()),
        body: if bytes.is_empty() {
            Err("the request body is empty".to_owned())
        } else {
            serde_json::from_slice(&bytes).map_err(|err| err.to_string())
        },
        method: parts.method,
    };
    let inputs = if parsed.route.is_batch() {
        parsed
            .body()
            .ok()
            .and_then(|body| body.get("inputs"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    } else {
        0
    };
    let logged_body = match &parsed.body {
        _ if !shared.config.log_bodies || bytes.is_empty() => None,
        Ok(body) => Some(body.clone()),
        Err(_) => Some(Value::from(String::from_utf8_lossy(&bytes).into_owned())),
    };

    // Arrival: logged and counted against the limits now, whatever happens later.
    let (seq, admission, delay) = {
        let mut state = shared.lock();
        let now = Instant::now();
        let seq = state.log_arrival(SimRequest {
            method: parsed.method.to_string(),
            path,
            query: raw_query,
            status: 0,
            inputs,
            body: logged_body,
            at: now,
        });
        let admission = state.admit(&shared.config, now);
        let hang = if parsed.is_write() {
            state.take_leading_hang()
        } else {
            None
        };
        (seq, admission, state.latency + hang.unwrap_or_default())
    };
    // HubSpot goes on with a request whose client has given up: a write held up (latency or
    // a scripted hang) lands all the same, late. So the work runs apart from this connection,
    // which the client may close meanwhile.
    let portal = Arc::clone(shared);
    let limits = admission.clone();
    let work = async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let step = {
            let mut state = portal.lock();
            decide(&mut state, &portal, &parsed, token.as_deref(), &limits)
        };
        let reply = match step {
            Step::Done(reply) => Some(reply),
            Step::Drop => None,
            Step::HangThenHandle(hang) => {
                tokio::time::sleep(hang).await;
                Some(dispatch(&mut portal.lock(), &portal, &parsed))
            }
        };
        portal
            .lock()
            .log_status(seq, reply.as_ref().map_or(0, |reply| reply.status));
        reply
    };
    let reply = tokio::spawn(work).await.ok().flatten();
    match reply {
        Some(reply) => Outcome::Reply(into_response(reply, &admission)),
        None => Outcome::Drop,
    }
}

/// Auth, then rate limit, then faults (object writes only), then normal handling.
fn decide(
    state: &mut State,
    shared: &Shared,
    parsed: &Parsed,
    token: Option<&str>,
    admission: &Admission,
) -> Step {
    if token != Some(state.token.expose()) {
        return Step::Done(Reply::unauthorized());
    }
    if !state.missing_scopes.is_empty() {
        return Step::Done(Reply::missing_scopes(&state.missing_scopes));
    }
    if let Some(daily) = admission.limited {
        return Step::Done(Reply::rate_limited(daily));
    }
    let fault = if parsed.is_write() {
        state.next_fault()
    } else {
        state.setup_faults.pop_front()
    };
    match fault {
        None => Step::Done(dispatch(state, shared, parsed)),
        Some(Fault::Status {
            status,
            retry_after_secs,
        }) => Step::Done(Reply::fault(status, retry_after_secs)),
        Some(Fault::ApplyThenStatus(status)) => {
            dispatch(state, shared, parsed);
            Step::Done(Reply::fault(status, None))
        }
        Some(Fault::ApplyThenDrop) => {
            dispatch(state, shared, parsed);
            Step::Drop
        }
        Some(Fault::Drop) => Step::Drop,
        Some(Fault::SilentOk) => Step::Done(Reply::json(
            200,
            json!({
                "status": "COMPLETE", "results": [], "numErrors": 0, "errors": [],
                "startedAt": timestamp(), "completedAt": timestamp()
            }),
        )),
        Some(Fault::Hang(hang)) => Step::HangThenHandle(hang),
    }
}

/// Normal handling by route and method.
fn dispatch(state: &mut State, shared: &Shared, parsed: &Parsed) -> Reply {
    let method = &parsed.method;
    let body = parsed.body();
    let archived = parsed
        .query
        .iter()
        .any(|(key, value)| key == "archived" && value == "true");
    let sensitivity = parsed
        .query
        .iter()
        .find(|(key, _)| key == "dataSensitivity")
        .map_or("non_sensitive", |(_, value)| value.as_str());
    let invalid_json =
        |err: &str| Reply::validation(&format!("Invalid input JSON: {err}"), json!({}));
    match &parsed.route {
        Route::Unknown => Reply::not_found(),
        Route::Upsert(object) if method == Method::POST => {
            objects::batch_upsert(state, *object, body, &shared.config)
        }
        Route::Associate if method == Method::POST => objects::associate(state, body),
        Route::ArchiveAssociations(edition) if method == Method::POST => {
            objects::archive_associations(state, body, *edition)
        }
        Route::AccountDetails if method == Method::GET => account_details(&shared.config),
        Route::ReadOne(object, id) if method == Method::GET => {
            objects::read_one(state, *object, id, &parsed.query)
        }
        Route::Properties(object) if method == Method::GET => {
            state.store(*object).schema.list(archived, sensitivity)
        }
        Route::Properties(object) if method == Method::POST => match body {
            Ok(body) => {
                let store = state.store_mut(*object);
                let reply = store.schema.create(body, &timestamp());
                store.refresh_indexes();
                reply
            }
            Err(err) => invalid_json(err),
        },
        Route::Property(object, name) if method == Method::GET => {
            state.store(*object).schema.get(name, archived)
        }
        Route::Property(object, name) if method == Method::PATCH => match body {
            Ok(body) => {
                let store = state.store_mut(*object);
                let reply = store.schema.update(name, body, &timestamp());
                store.refresh_indexes();
                reply
            }
            Err(err) => invalid_json(err),
        },
        Route::Groups(object) if method == Method::GET => state.store(*object).schema.list_groups(),
        Route::Groups(object) if method == Method::POST => match body {
            Ok(body) => state.store_mut(*object).schema.create_group(body),
            Err(err) => invalid_json(err),
        },
        _ => Reply::method_not_allowed(),
    }
}

/// `GET /account-info/v3/details`: the portal's id, currency and time zone, or 403 when the
/// token lacks the scope it needs.
fn account_details(config: &SimConfig) -> Reply {
    if !config.account_details_allowed {
        return Reply::missing_scopes(&["oauth".to_owned()]);
    }
    let offset = config.offset_minutes_now();
    let sign = if offset < 0 { '-' } else { '+' };
    let magnitude = offset.unsigned_abs();
    Reply::json(
        200,
        json!({
            "portalId": PORTAL_ID, "accountType": "STANDARD",
            "timeZone": config.time_zone, "companyCurrency": "USD", "additionalCurrencies": [],
            "utcOffset": format!("{sign}{:02}:{:02}", magnitude / 60, magnitude % 60),
            "utcOffsetMilliseconds": i64::from(offset) * 60_000,
            "uiDomain": "app.hubspot.com", "dataHostingLocation": "na1"
        }),
    )
}

/// The HTTP response, with the rate-limit headers every HubSpot response carries.
fn into_response(reply: Reply, admission: &Admission) -> Response<Full<Bytes>> {
    let (content_type, body) = match reply.body {
        ReplyBody::Json(value) => ("application/json;charset=utf-8", value.to_string()),
        ReplyBody::Html(html) => ("text/html", html),
        ReplyBody::Empty => ("text/plain", String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    // A scripted fault may name a status hyper can't send (outside 100..=999).
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in &admission.headers {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(*value));
    }
    if let Some(seconds) = reply.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `a=1&b=x%40y` → pairs, percent-decoded, `+` as space.
fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` when `plus_is_space`); malformed escapes stay as they are.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    fn hex(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex);
                let low = bytes.get(i + 2).copied().and_then(hex);
                if let (Some(high), Some(low)) = (high, low) {
                    // At most 15 * 16 + 15 = 255: no overflow.
                    out.push(high * 16 + low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_path_editions_route_alike() {
        for prefix in ["/crm/v3/objects", "/crm/objects/2026-03"] {
            assert_eq!(
                Route::parse(&format!("{prefix}/contacts/batch/upsert")),
                Route::Upsert(ObjectType::Contacts)
            );
            assert_eq!(
                Route::parse(&format!("{prefix}/0-2/batch/upsert")),
                Route::Upsert(ObjectType::Companies)
            );
            assert_eq!(
                Route::parse(&format!("{prefix}/contacts/a%2Bb%40x.com")),
                Route::ReadOne(ObjectType::Contacts, "a+b@x.com".to_owned())
            );
        }
        for prefix in ["/crm/v3/properties", "/crm/properties/2026-03"] {
            assert_eq!(
                Route::parse(&format!("{prefix}/companies/groups")),
                Route::Groups(ObjectType::Companies)
            );
            assert_eq!(
                Route::parse(&format!("{prefix}/contacts/plan")),
                Route::Property(ObjectType::Contacts, "plan".to_owned())
            );
        }
        assert_eq!(
            Route::parse("/crm/associations/2026-03/contacts/companies/batch/associate/default"),
            Route::Associate
        );
        assert_eq!(
            Route::parse("/crm/v4/associations/contacts/companies/batch/archive"),
            Route::ArchiveAssociations(Edition::V4)
        );
        assert_eq!(
            Route::parse("/crm/associations/2026-03/contacts/companies/batch/archive"),
            Route::ArchiveAssociations(Edition::Dated)
        );
        assert_eq!(
            Route::parse("/crm/v3/objects/deals/batch/upsert"),
            Route::Unknown
        );
    }

    #[test]
    fn queries_are_percent_decoded() {
        assert_eq!(
            parse_query(Some("idProperty=email&properties=a,b&x=a+b%40c%zz")),
            vec![
                ("idProperty".to_owned(), "email".to_owned()),
                ("properties".to_owned(), "a,b".to_owned()),
                ("x".to_owned(), "a b@c%zz".to_owned()),
            ]
        );
    }
}
