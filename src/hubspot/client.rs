//! The HTTP client: sends requests to HubSpot (or the simulator) and returns raw `Reply`s or
//! `Transport` errors. It never retries, never paces and never interprets a status: callers take
//! permits from the limiter, and `classify` reads every reply.

use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use super::paths::Paths;
use crate::core::classify::{RateHeaders, Reply, Transport};
use crate::core::vocabulary::ObjectType;
use crate::secret::Secret;

/// What a setup call got: a 2xx body, a 404, or a 409 (the object exists already).
#[derive(Debug, Clone, PartialEq)]
pub enum SetupReply {
    /// 2xx, with the parsed body (`Null` when there is none).
    Done(Value),
    /// 404.
    NotFound,
    /// 409, with HubSpot's body.
    AlreadyExists(Value),
}

/// A HubSpot API client bound to one base URL and token.
#[derive(Clone)]
pub struct HubSpotClient {
    http: reqwest::Client,
    base_url: String,
    token: Secret,
    timeout: Duration,
    /// Paths for the configured API edition.
    pub paths: Paths,
}

impl HubSpotClient {
    /// Builds a client; `timeout` bounds each request end to end.
    pub fn new(
        base_url: &str,
        token: impl Into<Secret>,
        paths: Paths,
        timeout: Duration,
    ) -> anyhow::Result<HubSpotClient> {
        // reqwest is built without a bundled crypto provider; ring is ours. A second install
        // (several clients in one process) fails harmlessly, so the result is ignored.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hubsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(HubSpotClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.into(),
            timeout,
            paths,
        })
    }

    /// How long a request may take before this client gives up on it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The base URL requests go to, for messages: without any user name or password it holds.
    pub(crate) fn base_url(&self) -> String {
        match reqwest::Url::parse(&self.base_url) {
            Ok(mut url) if url.password().is_some() || !url.username().is_empty() => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string().trim_end_matches('/').to_string()
            }
            _ => self.base_url.clone(),
        }
    }

    /// Sends one request and reads the whole reply.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Transport> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            // The only place the token leaves its wrapper; reqwest marks the header sensitive.
            .bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let rate = rate_headers(resp.headers());
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
        let body = resp.text().await.map_err(transport)?;
        Ok(Reply {
            status,
            rate,
            retry_after,
            body,
        })
    }

    /// Sends a batch upsert body for `kind`.
    pub(crate) async fn batch_upsert(
        &self,
        kind: ObjectType,
        body: &Value,
    ) -> Result<Reply, Transport> {
        self.send(Method::POST, &self.paths.batch_upsert(kind), Some(body))
            .await
    }
}

fn transport(e: reqwest::Error) -> Transport {
    if e.is_timeout() {
        Transport::Timeout
    } else {
        // Walk the source chain: "connection closed before message completed" lives deep.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Transport::Connection(text)
    }
}

/// Reads HubSpot's rate-limit headers, ignoring any that are absent or malformed.
fn rate_headers(headers: &reqwest::header::HeaderMap) -> RateHeaders {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    RateHeaders {
        max: get("x-hubspot-ratelimit-max"),
        remaining: get("x-hubspot-ratelimit-remaining"),
        interval_ms: get("x-hubspot-ratelimit-interval-milliseconds"),
        daily: get("x-hubspot-ratelimit-daily"),
        daily_remaining: get("x-hubspot-ratelimit-daily-remaining"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_in_messages_holds_no_credentials() {
        let client = |url: &str| {
            HubSpotClient::new(
                url,
                "token",
                Paths::new(crate::config::ApiVersion::V2026_03),
                Duration::from_secs(1),
            )
            .unwrap()
        };
        assert_eq!(
            client("https://user:s3cret@proxy.example:8443/").base_url(),
            "https://proxy.example:8443"
        );
        assert_eq!(
            client("http://127.0.0.1:8089").base_url(),
            "http://127.0.0.1:8089"
        );
    }
}
