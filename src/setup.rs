//! Setup calls (property and group reads and writes, the portal's account details): each takes a
//! permit from the shared limiter when there is one, and its reply goes through `classify` like
//! every batch does: a 429 pauses every worker, a passing failure (5xx, 423, 477, no answer) is
//! waited out a few times, and a 401/403 fails this process alone. A process starting with a
//! token HubSpot refuses (a typo, a secret not rolled out yet) must not stop workers whose token
//! works; a running worker whose token is refused halts them all on its own
//! (`Worker::halt`). The client itself never paces anything.

use std::time::Duration;

use anyhow::bail;
use chrono::FixedOffset;
use reqwest::Method;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::core::portal::PortalZone;
use crate::hubspot::{HubSpotClient, IdProperty, Outcome, Reply, SetupReply, Transport, classify};
use crate::ratelimit::Limiter;

/// Feeds a reply's rate-limit headers to the shared limiter (the limit it states, the daily
/// budget left).
pub(crate) async fn observe(
    limiter: &Limiter,
    reply: &Result<Reply, Transport>,
) -> Result<(), sqlx::Error> {
    match reply {
        Ok(r) => {
            let rate = &r.rate;
            limiter
                .observe(rate.max, rate.interval_ms, rate.daily, rate.daily_remaining)
                .await
        }
        Err(_) => Ok(()),
    }
}

/// HubSpot refused the access token (401): nothing else can work with it.
#[derive(Debug)]
pub(crate) struct TokenRefused(String);

impl std::fmt::Display for TokenRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenRefused {}

/// Tries per setup call while HubSpot is busy or unreachable.
const TRIES: u32 = 6;

/// A client for setup calls, paced by the shared limiter when there is one.
#[derive(Clone)]
pub struct Setup {
    client: HubSpotClient,
    limiter: Option<Limiter>,
    /// The portal's time zone once read: a daily 429 waits for its midnight.
    zone: Option<PortalZone>,
}

impl From<HubSpotClient> for Setup {
    /// Setup calls not paced by any limiter (a single process, or no database).
    fn from(client: HubSpotClient) -> Setup {
        Setup {
            client,
            limiter: None,
            zone: None,
        }
    }
}

impl Setup {
    /// Setup calls through `client`, each taking a permit from `limiter`.
    pub fn new(client: HubSpotClient, limiter: Option<Limiter>) -> Setup {
        Setup {
            client,
            limiter,
            zone: None,
        }
    }

    /// The same calls, with a daily 429 waiting for midnight in the portal's time `zone`
    /// (read with [`portal_zone`]), and the limiter's portal day (`hubspot.daily_budget`)
    /// ending there. Without it such a wait is an hour at most: midnight in UTC may be most of
    /// a day away from the portal's.
    pub(crate) fn in_zone(mut self, zone: Option<PortalZone>) -> Setup {
        self.zone = zone;
        self.limiter = self.limiter.map(|limiter| limiter.in_portal(zone));
        self
    }

    /// The client (for its paths).
    pub(crate) fn client(&self) -> &HubSpotClient {
        &self.client
    }

    /// The parsed JSON body on 2xx, `None` on 404, and an error naming the call and HubSpot's
    /// answer otherwise (409 included).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        let what = format!("{method} {path}");
        match self.request(method, path, body).await? {
            SetupReply::Done(value) => Ok(Some(value)),
            SetupReply::NotFound => Ok(None),
            SetupReply::AlreadyExists(body) => {
                bail!("{what}: HubSpot answered 409 (it already exists): {body}")
            }
        }
    }

    /// One setup call whose 404 and 409 the caller handles.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<SetupReply> {
        self.request_with(method, path, body).await
    }

    /// A `GET` hubsync can do without (a token may lack the one scope it needs): as
    /// [`Setup::call`], for callers that go on without its answer when it fails.
    pub(crate) async fn get_if_allowed(&self, path: &str) -> anyhow::Result<Option<Value>> {
        match self.request_with(Method::GET, path, None).await? {
            SetupReply::Done(value) => Ok(Some(value)),
            SetupReply::NotFound | SetupReply::AlreadyExists(_) => Ok(None),
        }
    }

    async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<SetupReply> {
        let what = format!("{method} {path}");
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(limiter) = &self.limiter {
                // Say why nothing happens while a pause lasts, instead of waiting in silence.
                if attempt == 1
                    && let Ok(Some(left)) = limiter.pause_remaining().await
                    && left >= Duration::from_secs(1)
                {
                    tracing::warn!(
                        "{what} waits {} s: HubSpot calls are paused for every worker (a 429, refused credentials, or the daily budget spent; `hubsync status` says which)",
                        left.as_secs()
                    );
                }
                let permit = limiter
                    .acquire(&CancellationToken::new(), Duration::from_secs(120))
                    .await
                    .map_err(|e| anyhow::anyhow!("{what}: cannot take a permit from the shared rate limiter in hubsync.limiter ({e}); check the database"))?;
                if let Err(refused) = permit {
                    let wait = match refused {
                        crate::ratelimit::NoPermit::Paused(wait) => {
                            format!(" for another {} s", wait.as_secs())
                        }
                        crate::ratelimit::NoPermit::Cancelled => String::new(),
                    };
                    bail!(
                        "{what}: the shared rate limiter holds requests back{wait} (a 429 pause, refused credentials, or hubspot.daily_budget spent for the portal day; `hubsync status` says which); try again later or raise daily_budget"
                    );
                }
            }
            let reply = self.client.send(method.clone(), path, body).await;
            if let (Some(limiter), Ok(r)) = (&self.limiter, &reply) {
                limiter
                    .observe(
                        r.rate.max,
                        r.rate.interval_ms,
                        r.rate.daily,
                        r.rate.daily_remaining,
                    )
                    .await?;
            }
            if let Ok(r) = &reply {
                match r.status {
                    404 => return Ok(SetupReply::NotFound),
                    409 => {
                        return Ok(SetupReply::AlreadyExists(
                            serde_json::from_str(&r.body)
                                .unwrap_or_else(|_| Value::String(r.body.clone())),
                        ));
                    }
                    _ => {}
                }
            }
            let now = crate::core::portal::now_in(self.zone);
            let outcome = classify(&[], IdProperty::Unique(""), reply.as_ref(), now)
                .daily_wait(self.zone.is_some());
            let wait = match outcome {
                Outcome::Completed { .. } => {
                    let text = reply.map(|r| r.body).unwrap_or_default();
                    return Ok(SetupReply::Done(
                        serde_json::from_str(&text).unwrap_or(Value::Null),
                    ));
                }
                // A refused token may be one meant for another address.
                Outcome::Halt {
                    reason,
                    status: 401,
                    ..
                } => {
                    return Err(TokenRefused(format!(
                        "{what}: {reason} (requests go to {}, which HUBSPOT_BASE_URL sets)",
                        self.client.base_url()
                    ))
                    .into());
                }
                Outcome::Halt { reason, .. } => bail!("{what}: {reason}"),
                Outcome::Rejected { error, .. } => {
                    bail!("{what}: HubSpot refused the request: {}", error.raw)
                }
                Outcome::RateLimited {
                    daily,
                    wait,
                    reason,
                } => {
                    if let Some(limiter) = &self.limiter {
                        limiter.pause(wait, &reason).await?;
                    }
                    if daily {
                        bail!(
                            "{what}: {reason}; every worker waits {}s, until the portal's day ends; start again then",
                            wait.as_secs()
                        );
                    }
                    wait
                }
                Outcome::Retry {
                    after,
                    min_wait,
                    reason,
                    ..
                } => {
                    if attempt >= TRIES {
                        let hint = match &reply {
                            Err(Transport::Timeout | Transport::Connection(_)) => format!(
                                " at {}; check HUBSPOT_BASE_URL and the network",
                                self.client.base_url()
                            ),
                            Ok(_) => "; HubSpot is having trouble, try again later".to_string(),
                        };
                        bail!("{what}: {reason}{hint}");
                    }
                    after.unwrap_or(Duration::from_secs(2)).max(min_wait)
                }
            };
            if attempt >= TRIES {
                bail!("{what}: HubSpot kept answering 429 (rate limited); try again later");
            }
            // As long as HubSpot asks (a 477 during a portal migration may ask for minutes),
            // up to ten minutes a try.
            let wait = wait.min(Duration::from_secs(600));
            tracing::warn!(
                attempt,
                "{what}: HubSpot is busy or unreachable; trying again in {wait:?}"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// The portal's time zone, from `GET /account-info/v3/details`: `timeZone` (an IANA name, so
/// daylight saving is followed), else `utcOffsetMilliseconds` or `utcOffset` (`±HH:MM`).
/// HubSpot's daily limit resets at the portal's midnight: once the zone is read, the shared
/// limiter's portal day is made to end there (`Limiter::align_day`). Fails only when HubSpot
/// refuses the token (nothing else can work then); `None`, with a warning, when the call is not
/// allowed or the answer can't be read.
pub(crate) async fn portal_zone(setup: &Setup) -> anyhow::Result<Option<PortalZone>> {
    let path = setup.client().paths.account_details();
    let details = match setup.get_if_allowed(&path).await {
        Ok(Some(details)) => details,
        Ok(None) => Value::Null,
        Err(e) if e.is::<TokenRefused>() => return Err(e),
        Err(e) => {
            tracing::warn!(
                "cannot read the portal's time zone ({}); after a daily 429, hubsync tries again once an hour instead of waiting for the portal's midnight",
                crate::telemetry::chain(&e)
            );
            return Ok(None);
        }
    };
    let offset = details
        .get("utcOffsetMilliseconds")
        .and_then(Value::as_i64)
        .and_then(|ms| i32::try_from(ms / 1000).ok())
        .or_else(|| {
            let text = details.get("utcOffset")?.as_str()?;
            let (sign, rest) = match text.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, text.strip_prefix('+').unwrap_or(text)),
            };
            let (hours, minutes) = rest.split_once(':').unwrap_or((rest, "0"));
            let seconds = hours.parse::<i32>().ok()? * 3600 + minutes.parse::<i32>().ok()? * 60;
            Some(sign * seconds)
        })
        .and_then(FixedOffset::east_opt);
    let zone = PortalZone::read(details.get("timeZone").and_then(Value::as_str), offset);
    if zone.is_none() {
        tracing::warn!(
            "the portal's account details carry no readable time zone; after a daily 429, hubsync tries again once an hour"
        );
    }
    if let Some(limiter) = &setup.limiter
        && let Err(e) = limiter.clone().in_portal(zone).align_day().await
    {
        tracing::warn!(
            "cannot set the portal's day in the shared rate limiter in hubsync.limiter ({e}); the daily budget's day may end at UTC's midnight this once"
        );
    }
    Ok(zone)
}
