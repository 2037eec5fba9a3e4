//! An in-process HubSpot CRM API simulator, served over real HTTP on loopback.
//!
//! It owns everything HubSpot would: stored contacts and companies, property definitions and
//! groups, associations, the rolling-window and daily rate limits, authentication, and the
//! request log; plus the fault injection (scripted or random) that tests and benchmarks use to
//! prove the worker survives lost responses, 5xx, 429 and dropped connections.
//! Behaviour follows the repository's `docs/HUBSPOT.md`; where that page marks a fact as unsure,
//! the simulator takes the stricter reading. It is a crate of its own and depends on nothing of
//! `hubsync`: the worker is tested against it, so sharing code with the worker would hide the
//! worker's mistakes. Even the accepted token has its own type here, [`Token`], which keeps it
//! out of any output.
//!
//! Layout: this file holds the public types and the accept loop; `pipeline` runs one request
//! through latency, auth, rate limit, faults and routing; `objects` does upserts, read-back and
//! associations; `properties` owns property definitions and groups; `values` checks values by
//! property type; `state` holds the mutable state behind one mutex; `replies` builds the
//! HubSpot-shaped error bodies.

mod objects;
mod pipeline;
mod properties;
mod replies;
mod state;
mod token;
mod values;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use self::pipeline::Outcome;
use self::state::State;
pub use self::token::Token;

/// The value both `X-HubSpot-RateLimit-Max` and `-Remaining` carry when the window is unlimited.
pub const UNLIMITED_HEADER_VALUE: u32 = 1_000_000;

/// Settings fixed when the simulator starts; the rest is changed through [`Simulator`] methods.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The accepted private-app token (default `"sim-token"`); never printed.
    pub token: Token,
    /// Requests allowed per rolling window (default 100); 0 means unlimited.
    pub requests_per_window: u32,
    /// Length of the rolling window (default 10 s).
    pub window: Duration,
    /// Requests allowed per portal day (it resets at midnight in the portal's time zone);
    /// `None` means unlimited.
    pub daily_limit: Option<u64>,
    /// The portal's time zone name, as `GET /account-info/v3/details` reports it (default `UTC`).
    pub time_zone: String,
    /// The portal's offset from UTC in minutes (default 0; `-300` for UTC−5): the daily limit
    /// resets at midnight at this offset.
    pub utc_offset_minutes: i32,
    /// Echo each input's `objectWriteTraceId` on its upsert result (default true). HubSpot may
    /// or may not: tests turn it off to make the client match results another way.
    pub echo_trace_ids: bool,
    /// Return batch results in an order unrelated to the inputs (default true), as HubSpot does.
    pub shuffle_results: bool,
    /// Keep request bodies in the request log (default true; benchmarks turn it off).
    pub log_bodies: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token: Token::new("sim-token"),
            requests_per_window: 100,
            window: Duration::from_secs(10),
            daily_limit: None,
            time_zone: "UTC".to_owned(),
            utc_offset_minutes: 0,
            echo_trace_ids: true,
            shuffle_results: true,
            log_bodies: true,
        }
    }
}

/// One stored CRM record, as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRecord {
    /// HubSpot's record id (`hs_object_id`), a numeric string.
    pub id: String,
    /// Every stored property value, including `hs_object_id`, `createdate`, `lastmodifieddate`.
    pub properties: BTreeMap<String, String>,
}

/// One request the simulator received, with the status it answered.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// HTTP method, e.g. `"POST"`.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Status answered; 0 when no response was sent (a dropped connection) or none yet.
    pub status: u16,
    /// Number of entries in the body's `inputs` array for batch endpoints, 0 otherwise.
    pub inputs: usize,
    /// The request body (JSON, or a JSON string holding non-JSON text) when `log_bodies` is on.
    pub body: Option<serde_json::Value>,
    /// When the request arrived.
    pub at: Instant,
}

/// A fault injected into one object-write request (batch upsert or batch associate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status without applying anything, with a HubSpot-like body and, when given,
    /// a `Retry-After` header in seconds.
    Status {
        /// The status to answer (423, 477, 500, 502, 503, 504, 524, 400, 401, 403, 429 …).
        status: u16,
        /// Seconds for a `Retry-After` header.
        retry_after_secs: Option<u64>,
    },
    /// Apply the write, then answer this status: the real response is lost.
    ApplyThenStatus(u16),
    /// Apply the write, then close the connection without any response.
    ApplyThenDrop,
    /// Close the connection without applying or answering.
    Drop,
    /// Answer 200 with no results and no errors, applying nothing (a silent failure).
    SilentOk,
    /// Wait this long, then handle the request normally (to trigger client timeouts).
    Hang(Duration),
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// Parses the command line's fault names: `500`, `477:30` (status, Retry-After seconds),
    /// `apply-500`, `apply-drop`, `drop`, `silent`, `hang-2000` (milliseconds).
    fn from_str(text: &str) -> Result<Fault, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "fault \"{text}\" is not one of STATUS, STATUS:RETRY_AFTER_SECS, apply-STATUS, apply-drop, drop, silent, hang-MILLIS"
            )
        };
        match text {
            "drop" => return Ok(Fault::Drop),
            "silent" => return Ok(Fault::SilentOk),
            "apply-drop" => return Ok(Fault::ApplyThenDrop),
            _ => {}
        }
        if let Some(status) = text.strip_prefix("apply-") {
            return status
                .parse()
                .map(Fault::ApplyThenStatus)
                .map_err(|_| bad());
        }
        if let Some(ms) = text.strip_prefix("hang-") {
            return ms
                .parse()
                .map(|ms| Fault::Hang(Duration::from_millis(ms)))
                .map_err(|_| bad());
        }
        let (status, retry_after) = match text.split_once(':') {
            Some((s, r)) => (s, Some(r.parse::<u64>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let status: u16 = status.parse().map_err(|_| bad())?;
        if !(100..=599).contains(&status) {
            return Err(bad());
        }
        Ok(Fault::Status {
            status,
            retry_after_secs: retry_after,
        })
    }
}

/// What every connection task shares: the fixed config and the mutable state.
pub(crate) struct Shared {
    config: SimConfig,
    state: Mutex<State>,
}

impl Shared {
    /// Locks the state. A panic while locked cannot leave it half-updated in a way that matters
    /// more than stopping the simulator would, so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running simulator; dropping it or calling [`Simulator::shutdown`] stops it.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1` with a free port.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        Simulator::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a simulator listening on `addr`.
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(&config)),
            config,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        tracing::debug!(%addr, "HubSpot simulator listening");
        Ok(Simulator {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The base URL to point a client at, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every stored record of `object_type` (`contacts`, `companies`, `0-1`, `0-2`), by id.
    pub fn records(&self, object_type: &str) -> Vec<SimRecord> {
        self.shared.lock().records(object_type)
    }

    /// The contact with this email (compared case-insensitively, trimmed).
    pub fn contact(&self, email: &str) -> Option<SimRecord> {
        self.shared.lock().find_record("contacts", "email", email)
    }

    /// The company whose property `id_property` has exactly `value`.
    pub fn company(&self, id_property: &str, value: &str) -> Option<SimRecord> {
        self.shared
            .lock()
            .find_record("companies", id_property, value)
    }

    /// Every stored (contact id, company id) association, in the order first made.
    pub fn associations(&self) -> Vec<(String, String)> {
        self.shared.lock().associations()
    }

    /// Every request received since start or the last [`Simulator::reset_requests`], in
    /// arrival order.
    pub fn requests(&self) -> Vec<SimRequest> {
        self.shared.lock().requests()
    }

    /// The property definition as `GET /crm/v3/properties/{type}/{name}` would return it.
    pub fn property(&self, object_type: &str, name: &str) -> Option<serde_json::Value> {
        self.shared.lock().property(object_type, name)
    }

    /// Seeds or overwrites a property definition without validation (e.g. a type mismatch).
    /// Missing fields get defaults; an unknown object type is ignored.
    pub fn define_property(&self, object_type: &str, property: serde_json::Value) {
        self.shared.lock().define_property(object_type, property);
    }

    /// Archives a property, as deleting it in HubSpot's UI does: it leaves the list (it is
    /// listed only with `?archived=true`) and its name can't be used to create another.
    /// Returns false when there is no such live property.
    pub fn archive_property(&self, object_type: &str, name: &str) -> bool {
        self.shared.lock().archive_property(object_type, name)
    }

    /// Deletes a record (as a user deleting or merging it away would): associations made with
    /// it go too, and an upsert by its key afterwards creates a new record with a new id.
    /// Returns false when there is no such record.
    pub fn delete_record(&self, object_type: &str, id: &str) -> bool {
        self.shared.lock().delete_record(object_type, id)
    }

    /// Adds a secondary email to the contact whose primary email is `primary`: an upsert by
    /// `secondary` then updates that contact, and its result carries the primary email.
    pub fn add_secondary_email(&self, primary: &str, secondary: &str) -> bool {
        self.shared.lock().add_secondary_email(primary, secondary)
    }

    /// Any batch upsert of `object_type` holding an input with this key is refused as a whole
    /// with 409 `CONFLICT` ("... already exists. Existing ID: ..."), naming no input, as
    /// HubSpot does when one record of a batch clashes with an existing one.
    pub fn conflict_on(&self, object_type: &str, key: &str) {
        self.shared.lock().conflict_on(object_type, key);
    }

    /// Changes the accepted token; any other token then gets 401 (a revoked token).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = Token::new(token);
    }

    /// When non-empty, every authenticated request answers 403 `MISSING_SCOPES` naming these.
    pub fn set_missing_scopes(&self, scopes: Vec<String>) {
        self.shared.lock().missing_scopes = scopes;
    }

    /// Queues faults, consumed one per object-write request in order, after auth and rate limit.
    pub fn script(&self, faults: Vec<Fault>) {
        self.shared.lock().faults.extend(faults);
    }

    /// Drops every scripted fault not yet consumed and turns random faults off.
    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.faults.clear();
        state.random_faults = None;
    }

    /// With probability `rate`, each object-write request (once the script is empty) gets a
    /// fault picked uniformly from `faults`, drawn from an rng seeded with `seed`.
    pub fn set_random_faults(&self, rate: f64, faults: Vec<Fault>, seed: u64) {
        self.shared.lock().set_random_faults(rate, faults, seed);
    }

    /// `true`: any invalid record fails the whole batch with a 400 that names no input (what
    /// HubSpot does for requests without trace ids), so the client must find it by splitting.
    pub fn set_whole_batch_errors(&self, on: bool) {
        self.shared.lock().whole_batch_errors = on;
    }

    /// Adds this delay before every request is handled.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Forgets the request log.
    pub fn reset_requests(&self) {
        self.shared.lock().reset_requests();
    }

    /// Stops accepting, closes every open connection and waits for the server task to end.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            tracing::warn!(%err, "HubSpot simulator task ended abnormally");
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // The accept loop and every connection task watch this; they end on their own.
        self.stop.send_replace(true);
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Accepts connections until told to stop, then closes the ones still open.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // An error means the Simulator is gone: stop as well.
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), stop.clone()));
                }
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%err, "HubSpot simulator failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Serves one connection; ends it abruptly when a handler asks for a dropped connection.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Small JSON responses: don't let Nagle delay them behind the client's delayed ACK.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY");
    }
    let drop_connection = Arc::new(Notify::new());
    let service = {
        let drop_connection = Arc::clone(&drop_connection);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let drop_connection = Arc::clone(&drop_connection);
            async move {
                match pipeline::handle(&shared, request).await {
                    Outcome::Reply(response) => Ok::<_, Infallible>(response),
                    Outcome::Drop => {
                        // notify_one keeps a permit, so the select below sees it even if it
                        // is not polling `notified()` at this very moment. Never answering
                        // keeps hyper from writing anything before the connection is dropped.
                        drop_connection.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(err) = served {
                tracing::debug!(%err, "simulator connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket with no response written.
        () = drop_connection.notified() => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod fault_names {
    use super::Fault;
    use std::time::Duration;

    #[test]
    fn command_line_fault_names_parse() {
        let parsed: Vec<Fault> = "500,477:30,apply-502,apply-drop,drop,silent,hang-250"
            .split(',')
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(
            parsed,
            vec![
                Fault::Status {
                    status: 500,
                    retry_after_secs: None
                },
                Fault::Status {
                    status: 477,
                    retry_after_secs: Some(30)
                },
                Fault::ApplyThenStatus(502),
                Fault::ApplyThenDrop,
                Fault::Drop,
                Fault::SilentOk,
                Fault::Hang(Duration::from_millis(250)),
            ]
        );
        for bad in ["", "boom", "99", "apply-x", "477:soon"] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
