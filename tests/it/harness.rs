//! Shared test parts: a real Postgres database per test (`#[sqlx::test(migrations = false)]`,
//! migrated by `hubsync::db::migrate` as in production), the simulator on a loopback port, a
//! worker wired to both, and helpers to enqueue and drain.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hubspot_sim::{SimConfig, SimRecord, Simulator};
use hubsync::config::Config;
use hubsync::hubspot::{HubSpotClient, Paths};
use hubsync::worker::{Step, Worker};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The example config, which tests use unless they need their own.
pub const CONFIG: &str = include_str!("../../hubsync.example.toml");

/// Quiet by default; `TEST_LOG=1` shows the worker's logs.
pub fn logs() {
    if std::env::var("TEST_LOG").is_ok() {
        hubsync::telemetry::init("debug");
    }
}

pub fn parse_config(text: &str) -> Arc<Config> {
    Arc::new(Config::parse(Path::new("hubsync.toml"), text).expect("test config is valid"))
}

/// A database, a simulator and a worker between them.
pub struct Harness {
    pub pool: PgPool,
    pub sim: Simulator,
    pub config: Arc<Config>,
    config_text: String,
    pub worker: Worker,
}

impl Harness {
    pub async fn new(pool: PgPool) -> Harness {
        Harness::with(pool, CONFIG, SimConfig::default()).await
    }

    pub async fn with(pool: PgPool, config_text: &str, sim: SimConfig) -> Harness {
        logs();
        migrate(&pool).await;
        let sim = Simulator::start(sim).await.expect("simulator starts");
        let config = parse_config(config_text);
        let worker = worker_for(&pool, &sim, &config).await;
        Harness {
            pool,
            sim,
            config,
            config_text: config_text.to_string(),
            worker,
        }
    }

    pub fn client(&self) -> HubSpotClient {
        client_for(&self.sim, &self.config)
    }

    /// Creates the properties, as `hubsync run` does at start.
    pub async fn setup(&self) {
        self.setup_with(&self.config).await;
    }

    /// Creates the properties of `config`, as `hubsync run` with it does at start.
    pub async fn setup_with(&self, config: &Config) {
        setup_on(&self.pool, &self.sim, config).await;
    }

    /// The fix for events refused for the plan "platinum": the option added to the config and
    /// the portal, and a worker with that config.
    pub async fn add_platinum_option(&self) -> Worker {
        let fixed = parse_config(&self.config_text.replace(
            "options = [\"free\", \"pro\", \"enterprise\"]",
            "options = [\"free\", \"pro\", \"enterprise\", \"platinum\"]",
        ));
        hubsync::reconcile::ensure(&self.client().into(), &fixed)
            .await
            .expect("the new option is added");
        worker_for(&self.pool, &self.sim, &fixed).await
    }

    /// Runs the worker until there is nothing left to do now.
    pub async fn drain(&self) -> Step {
        self.worker
            .run_until_idle(&CancellationToken::new())
            .await
            .expect("worker drains")
    }

    pub async fn enqueue(&self, email: &str, props: Value) -> Uuid {
        enqueue_at(&self.pool, "contact", email, props, Utc::now()).await
    }

    pub fn contact(&self, email: &str) -> SimRecord {
        self.sim
            .contact(email)
            .unwrap_or_else(|| panic!("{email} is not in the simulator"))
    }

    pub fn prop(&self, email: &str, name: &str) -> Option<String> {
        self.sim
            .contact(email)
            .and_then(|r| r.properties.get(name).cloned())
    }

    /// Batch upsert requests the simulator received.
    pub fn upserts(&self) -> Vec<hubspot_sim::SimRequest> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/batch/upsert"))
            .collect()
    }

    pub async fn count(&self, table: &str) -> i64 {
        hubsync::db::status::count(&self.pool, table).await.unwrap()
    }

    /// Makes every DLQ row that is scheduled due now, as the passing of its wait would.
    pub async fn dlq_due_now(&self) {
        sqlx::query("UPDATE hubsync.dlq SET next_retry_at = now() WHERE next_retry_at IS NOT NULL")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn dlq(&self) -> Vec<(String, String, String, Option<DateTime<Utc>>)> {
        sqlx::query_as(
            "SELECT object_key, error_category, error_message, next_retry_at FROM hubsync.dlq ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// Creates the hubsync schema the way `hubsync migrate` does.
pub async fn migrate(pool: &PgPool) {
    hubsync::db::migrate(pool)
        .await
        .expect("the hubsync migrations apply");
}

/// Creates the properties of `config` in `sim`, through the limiter shared in `pool`, as
/// `hubsync run` with it does at start.
pub async fn setup_on(pool: &PgPool, sim: &Simulator, config: &Config) {
    let limiter = hubsync::ratelimit::Limiter::configured(pool.clone(), &config.hubspot)
        .await
        .unwrap();
    let setup = hubsync::setup::Setup::new(client_for(sim, config), Some(limiter));
    hubsync::reconcile::ensure(&setup, config)
        .await
        .expect("start-up reconciliation succeeds");
}

pub fn client_for(sim: &Simulator, config: &Config) -> HubSpotClient {
    HubSpotClient::new(
        &sim.base_url(),
        "sim-token",
        Paths::new(config.hubspot.api_version),
        Duration::from_secs(5),
    )
    .unwrap()
}

pub async fn worker_for(pool: &PgPool, sim: &Simulator, config: &Arc<Config>) -> Worker {
    Worker::new(pool.clone(), config.clone(), client_for(sim, config))
        .await
        .unwrap()
        // Deterministic: retries are due at once, so a drain sees them through.
        .with_jitter(Arc::new(|| 0.0))
}

/// Enqueues through the producer interface, as an application would.
pub async fn enqueue_at(
    pool: &PgPool,
    object_type: &str,
    key: &str,
    props: Value,
    at: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::new_v4();
    enqueue_id(pool, id, object_type, key, props, at).await;
    id
}

pub async fn enqueue_id(
    pool: &PgPool,
    id: Uuid,
    object_type: &str,
    key: &str,
    props: Value,
    at: DateTime<Utc>,
) -> bool {
    sqlx::query_scalar(
        "SELECT hubsync.enqueue(event_id => $1, object_type => $2, object_key => $3,
                                properties => $4::jsonb, occurred_at => $5)",
    )
    .bind(id)
    .bind(object_type)
    .bind(key)
    .bind(props.to_string())
    .bind(at)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A URL for a child process to reach this test's database.
pub fn database_url(pool: &PgPool) -> String {
    let db = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_string();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let (head, query) = base.split_once('?').unwrap_or((&base, ""));
    let cut = head
        .rfind('/')
        .filter(|i| *i > head.find("://").unwrap() + 2)
        .unwrap_or(head.len());
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{query}", &head[..cut])
}

/// Cuts every session of this test's database that carries hubsync's application name (the
/// workers' pools and their own connections), as a Postgres restart or a failover would.
/// Returns how many were cut.
pub async fn cut_worker_sessions(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(hubsync::db::APPLICATION_NAME)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Another pool on the test's database (each worker gets its own, as on separate machines).
pub async fn connect_pool(
    options: &sqlx::postgres::PgPoolOptions,
    connect: &sqlx::postgres::PgConnectOptions,
    max: u32,
) -> PgPool {
    options
        .clone()
        .max_connections(max)
        .connect_with(connect.clone())
        .await
        .expect("test database reachable")
}

/// Seconds until the (single) object's next attempt.
pub async fn next_attempt_in(pool: &PgPool) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM hubsync.objects",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The `hubsync` binary with `args`, a config file holding `config` (or pointing at a missing
/// one), no token, warnings only, and `envs` on top.
/// HubSpot's 503, without `Retry-After`.
pub const SERVICE_UNAVAILABLE: hubspot_sim::Fault = hubspot_sim::Fault::Status {
    status: 503,
    retry_after_secs: None,
};

pub fn command(args: &[&str], config: Option<&str>, envs: &[(&str, &str)]) -> Command {
    let dir = tempdir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubsync"));
    cmd.args(args)
        .env_remove("HUBSPOT_ACCESS_TOKEN")
        .env("RUST_LOG", "warn");
    if let Some(text) = config {
        let path = dir.join("hubsync.toml");
        std::fs::write(&path, text).unwrap();
        cmd.env("HUBSYNC_CONFIG", &path);
    } else {
        cmd.env("HUBSYNC_CONFIG", dir.join("missing.toml"));
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the `hubsync` binary as `command` sets it up, to the end.
pub fn hubsync(args: &[&str], config: Option<&str>, envs: &[(&str, &str)]) -> Output {
    command(args, config, envs)
        .output()
        .expect("the hubsync binary runs")
}

/// `hubsync` off the test's runtime, so that an in-process simulator can answer it meanwhile.
pub async fn hubsync_beside(args: &[&str], config: Option<&str>, envs: &[(&str, &str)]) -> Output {
    let mut cmd = command(args, config, envs);
    tokio::task::spawn_blocking(move || cmd.output().expect("the hubsync binary runs"))
        .await
        .expect("the hubsync binary runs")
}

pub fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hubsync-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs one of the repository's SQL files with psql and these `-v` variables, as an operator
/// would.
pub fn psql_output(pool: &PgPool, file: &str, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(database_url(pool))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f", file]);
    for (k, v) in vars {
        cmd.arg("-v").arg(format!("{k}={v}"));
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("psql runs")
}

/// `psql_output` that must succeed; returns stdout.
pub fn psql(pool: &PgPool, file: &str, vars: &[(&str, &str)]) -> String {
    let out = psql_output(pool, file, vars);
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Leases every due contact (up to 100) with a fresh token, as a sync step would.
pub async fn lease_contacts(pool: &PgPool) -> (Uuid, Vec<hubsync::db::objects::Leased>) {
    let token = Uuid::new_v4();
    let leased = hubsync::db::objects::lease(
        pool,
        hubsync::core::vocabulary::ObjectType::Contact,
        100,
        Duration::from_secs(60),
        token,
        i64::MAX,
    )
    .await
    .unwrap();
    (token, leased)
}

/// A retryable per-record failure of a leased object, as HubSpot's 207 would give.
pub fn retryable_failure(
    leased: &hubsync::db::objects::Leased,
    message: String,
) -> hubsync::db::objects::ObjectFailure {
    hubsync::db::objects::ObjectFailure {
        key: leased.key.clone(),
        version: leased.version,
        payload: "{}".into(),
        category: hubsync::core::dlq::Category::HubspotError,
        message,
        error: "{}".into(),
        permanent: false,
        hold: None,
        settles_in: None,
    }
}
