//! The answers the simulator sends, and the HubSpot-shaped bodies of its errors. Every error
//! body here copies what HubSpot is known to send (`docs/hubspot-behaviour.md` §4); none of them is
//! friendlier than the real thing.

use hyper::StatusCode;
use serde_json::{Value, json};

/// An answer before the rate-limit headers are added.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: ReplyBody,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// A JSON body, or the HTML page a gateway in front of HubSpot sends.
#[derive(Debug, Clone)]
pub(crate) enum ReplyBody {
    /// `application/json`.
    Json(Value),
    /// `text/html`.
    Html(String),
    /// No body (204).
    Empty,
}

/// A fresh correlation id, as HubSpot puts in every error.
pub(crate) fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Reply {
    /// A JSON answer.
    pub(crate) fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: ReplyBody::Json(body),
            retry_after: None,
        }
    }

    /// The standard error envelope.
    pub(crate) fn error(status: u16, category: &str, message: &str) -> Reply {
        Reply::json(
            status,
            json!({
                "status": "error", "message": message,
                "correlationId": correlation_id(), "category": category
            }),
        )
    }

    /// A whole-request 400 `VALIDATION_ERROR` with its `context`.
    pub(crate) fn validation(message: &str, context: Value) -> Reply {
        Reply::json(
            400,
            json!({
                "status": "error", "message": message, "correlationId": correlation_id(),
                "category": "VALIDATION_ERROR", "context": context
            }),
        )
    }

    /// 404 for an absent object, property or route.
    pub(crate) fn not_found() -> Reply {
        Reply::json(
            404,
            json!({"status": "error", "message": "resource not found", "category": "OBJECT_NOT_FOUND"}),
        )
    }

    /// 405 for a known path with the wrong method.
    pub(crate) fn method_not_allowed() -> Reply {
        Reply::error(
            405,
            "METHOD_NOT_ALLOWED",
            "HTTP method not allowed on this resource",
        )
    }

    /// 401 for a missing or wrong token.
    pub(crate) fn unauthorized() -> Reply {
        Reply::error(
            401,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        )
    }

    /// 403 naming the scopes the app lacks.
    pub(crate) fn missing_scopes(scopes: &[String]) -> Reply {
        Reply::json(
            403,
            json!({
                "status": "error",
                "message": "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
                "correlationId": correlation_id(),
                "errors": [{
                    "message": "One or more of the following scopes are required.",
                    "context": {"requiredGranularScopes": scopes}
                }],
                "category": "MISSING_SCOPES"
            }),
        )
    }

    /// 429 for the rolling window or, when `daily`, the daily limit. No `category`, as seen live.
    pub(crate) fn rate_limited(daily: bool) -> Reply {
        let (message, policy, group) = if daily {
            (
                "You have reached your daily limit.",
                "DAILY",
                "publicapi:private_app-api-calls-daily:1",
            )
        } else {
            (
                "You have reached your ten_secondly_rolling limit.",
                "TEN_SECONDLY_ROLLING",
                "publicapi:private_app-api-calls-ten-secondly:1",
            )
        };
        Reply::json(
            429,
            json!({
                "status": "error", "message": message, "errorType": "RATE_LIMIT",
                "correlationId": correlation_id(), "policyName": policy, "groupName": group
            }),
        )
    }

    /// The body HubSpot (or the gateway in front of it) sends with an injected `status`.
    pub(crate) fn fault(status: u16, retry_after: Option<u64>) -> Reply {
        let mut reply = match status {
            400 => Reply::validation("Invalid input (injected fault)", json!({})),
            401 => Reply::unauthorized(),
            403 => Reply::missing_scopes(&["crm.objects.contacts.write".to_owned()]),
            429 => Reply::rate_limited(false),
            423 => Reply::error(
                423,
                "LOCKED",
                "The portal is locked while it processes a large volume of writes; retry in a few seconds",
            ),
            477 => Reply::error(
                477,
                "MIGRATION_IN_PROGRESS",
                "This portal is being migrated between data centers; retry later",
            ),
            500 => Reply::error(500, "INTERNAL_ERROR", "internal error"),
            // These come from the gateway in front of HubSpot, as an HTML page.
            502 | 503 | 504 | 524 => Reply {
                status,
                body: ReplyBody::Html(format!(
                    "<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>",
                    reason = reason(status)
                )),
                retry_after: None,
            },
            _ => Reply::error(status, "ERROR", reason(status)),
        };
        reply.retry_after = retry_after;
        reply
    }
}

/// The status line's reason phrase, or a generic one for non-standard codes like 477 or 524.
fn reason(status: u16) -> &'static str {
    match status {
        524 => "A Timeout Occurred",
        _ => StatusCode::from_u16(status)
            .ok()
            .and_then(|code| code.canonical_reason())
            .unwrap_or("Error"),
    }
}
