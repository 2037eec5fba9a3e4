//! An in-process HubSpot CRM API simulator, served over real HTTP on loopback.
//!
//! It owns everything HubSpot would: stored contacts and companies, property definitions and
//! groups, associations, the rolling-window and daily rate limits, authentication, and the
//! request log; plus the fault injection (scripted or random) that tests and benchmarks use to
//! prove the worker survives lost responses, 5xx, 429 and dropped connections.
//! Behaviour follows the repository's `docs/hubspot-behaviour.md`; where that page marks a fact
//! as unsure, the simulator takes the stricter reading. It is a crate of its own and depends on
//! nothing of `hubsync`: the worker is tested against it, so sharing code with the worker would
//! hide the worker's mistakes. Even the accepted token has its own type here, [`Token`], which
//! keeps it out of any output.
//!
//! Layout, each module using only those listed after it: this file holds [`Simulator`], the
//! handle that starts, inspects, steers and stops one; `server` accepts connections and serves
//! them over HTTP; `pipeline` runs one request through latency, auth, rate limit, faults and
//! routing; `objects` does upserts, read-back and associations; `state` holds the mutable state
//! behind one mutex; `values` checks values by property type; `properties` owns property
//! definitions and groups; `replies` builds the HubSpot-shaped error bodies; `types` holds the
//! public data (settings, records, logged requests, faults); `object_type` names contacts and
//! companies; `token` keeps the accepted token out of any output.

mod object_type;
mod objects;
mod pipeline;
mod properties;
mod replies;
mod server;
mod state;
mod token;
mod types;
mod values;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::token::Token;
pub use crate::types::{
    DEFAULT_DAILY_LIMIT, Fault, SimConfig, SimRecord, SimRequest, UNLIMITED_HEADER_VALUE,
};

use crate::server::accept_loop;
use crate::state::{Shared, State};

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

    /// Queues faults for the calls that are not object writes (property, group and account
    /// reads and writes), consumed one per such call in order, after auth and rate limit.
    pub fn script_setup(&self, faults: Vec<Fault>) {
        self.shared.lock().setup_faults.extend(faults);
    }

    /// Drops every scripted fault not yet consumed and turns random faults off.
    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.faults.clear();
        state.setup_faults.clear();
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
