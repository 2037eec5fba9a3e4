//! The HTTP client: sends requests to HubSpot (or the simulator) and returns raw `Reply`s or
//! `Transport` errors. It never retries and never interprets a status: `classify` does.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;

use tokio_util::sync::CancellationToken;

use super::classify::{RateHeaders, Reply, Transport};
use super::paths::Paths;
use crate::ratelimit::Limiter;
use crate::schema::ObjectKind;
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
    /// Paths for the configured API edition.
    pub paths: Paths,
    /// When set, setup calls take permits from the shared limiter like batches do.
    limiter: Option<Limiter>,
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
            paths,
            limiter: None,
        })
    }

    /// Makes setup calls (properties, groups) count against the shared rate limit.
    pub fn with_limiter(mut self, limiter: Limiter) -> HubSpotClient {
        self.limiter = Some(limiter);
        self
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
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
        let rate = RateHeaders::from_headers(resp.headers());
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
    pub async fn batch_upsert(&self, kind: ObjectKind, body: &Value) -> Result<Reply, Transport> {
        self.send(Method::POST, &self.paths.batch_upsert(kind), Some(body))
            .await
    }

    /// A setup call (properties, groups): the parsed JSON body on 2xx, `None` on 404, and an
    /// error naming the call and HubSpot's answer otherwise (409 included).
    pub async fn setup_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        let what = format!("{method} {path}");
        match self.setup_request(method, path, body).await? {
            SetupReply::Done(value) => Ok(Some(value)),
            SetupReply::NotFound => Ok(None),
            SetupReply::AlreadyExists(body) => {
                bail!("{what}: HubSpot answered 409 (already exists): {body}")
            }
        }
    }

    /// A setup call whose 404 and 409 the caller handles.
    pub async fn setup_request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<SetupReply> {
        let what = format!("{method} {path}");
        let mut attempt = 0u32;
        let reply = loop {
            attempt += 1;
            if let Some(limiter) = &self.limiter {
                limiter
                    .acquire(&CancellationToken::new(), Duration::from_secs(120))
                    .await
                    .context("cannot take a permit from the shared rate limiter")?
                    .map_err(|_| anyhow::anyhow!("{what}: sending is paused by the shared rate limiter (see `hubsync status`); try again later"))?;
            }
            let reply = self.send(method.clone(), path, body).await;
            // Start-up calls wait out a rate limit or a passing failure (several workers may
            // start at once); anything else is reported as it is.
            let wait = match &reply {
                Ok(r) if r.status == 429 => Some(
                    r.retry_after
                        .or(r.rate.interval_ms.map(Duration::from_millis))
                        .unwrap_or(Duration::from_secs(10)),
                ),
                Ok(r) if matches!(r.status, 423 | 477 | 500..=599) => {
                    Some(r.retry_after.unwrap_or(Duration::from_secs(2)))
                }
                Err(_) => Some(Duration::from_secs(2)),
                Ok(_) => None,
            };
            match wait {
                Some(wait) if attempt < 6 => {
                    tracing::warn!(
                        attempt,
                        "{what}: HubSpot is busy or unreachable; trying again in {wait:?}"
                    );
                    tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                }
                _ => break reply,
            }
        };
        let reply = reply.map_err(|t| {
            anyhow::anyhow!(
                "{what} at {}: {}; check HUBSPOT_BASE_URL and the network",
                self.base_url,
                match t {
                    Transport::Timeout => "no answer in time".to_string(),
                    Transport::Connection(e) => e,
                }
            )
        })?;
        match reply.status {
            200..=299 => Ok(SetupReply::Done(
                serde_json::from_str(&reply.body).unwrap_or(Value::Null),
            )),
            404 => Ok(SetupReply::NotFound),
            409 => Ok(SetupReply::AlreadyExists(
                serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body)),
            )),
            401 => bail!(
                "{what}: HubSpot refused the access token (401: {}); set HUBSPOT_ACCESS_TOKEN to a valid private app token",
                reply.body
            ),
            403 => bail!(
                "{what}: HubSpot denied access (403: {}); grant the private app the crm.schemas.contacts.read/write and crm.schemas.companies.read/write scopes",
                reply.body
            ),
            status => bail!("{what}: HubSpot answered {status}: {}", reply.body),
        }
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
