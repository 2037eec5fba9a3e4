//! Configuration: `hubsync.toml` and the environment, read once at start into validated types.
//!
//! Every mistake is refused here with a message naming the file, the line, the key and the fix;
//! nothing downstream re-checks strings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub(crate) use crate::core::vocabulary::{ApiVersion, CompanyConfig, ObjectConfig};
use crate::core::vocabulary::{Declared, MergeRule, PropertyDef, PropertyType};
use crate::secret::Secret;

/// Default HubSpot API base URL.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
/// Default database for local runs, tests and the demo.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default config path.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "./hubsync.toml";

/// A refused configuration: what, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read config file {path}: {source}; create it (see hubsync.example.toml) or point HUBSYNC_CONFIG at it"
    )]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong value type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value that parses but is not allowed.
    #[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The 1-based line, when known.
        line: Option<usize>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A required environment variable is missing.
    #[error("{name} is not set: {hint}")]
    MissingEnv {
        /// The variable.
        name: &'static str,
        /// What to set it to.
        hint: &'static str,
    },
    /// An environment variable holds a value that cannot be used.
    #[error("{name}: {message}")]
    BadEnv {
        /// The variable.
        name: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The `[hubspot]` table, validated.
#[derive(Debug, Clone)]
pub struct HubSpotSettings {
    /// A ceiling on requests per rolling window; `None`: hubsync starts at 100 and adopts the
    /// limit HubSpot's `X-HubSpot-RateLimit-Max` / `-Interval-Milliseconds` headers state.
    pub requests_per_10s: Option<u32>,
    /// At most this many requests per portal day (`hubspot.daily_budget`), leaving the rest of
    /// the portal's daily limit to other apps; `None`: no cap of hubsync's own.
    pub daily_budget: Option<u64>,
    /// The rolling window HubSpot counts in (10 s; shorter only against the simulator).
    pub rate_window: Duration,
    /// Added to the window by the limiter: the spread between taking a permit and HubSpot
    /// seeing the request arrive (default 2.5 % of the window, at least 50 ms).
    pub rate_margin: Duration,
    /// The property group hubsync creates its properties in.
    pub property_group: String,
    /// The label of that group.
    pub property_group_label: String,
    /// Path edition.
    pub api_version: ApiVersion,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

/// How many request timeouts after it was sent a request without an answer may still be
/// carried out by HubSpot (a gateway gave up, HubSpot went on).
pub const SETTLE_TIMEOUTS: u32 = 4;

impl HubSpotSettings {
    /// How long after it was sent a request without an answer may still be carried out.
    pub fn settle(&self) -> Duration {
        self.request_timeout * SETTLE_TIMEOUTS
    }
}

/// The `[worker]` table, validated.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Inputs per batch upsert (at most 100).
    pub batch_size: usize,
    /// Outbox rows claimed per ingest transaction.
    pub ingest_chunk: usize,
    /// Batch requests in flight at once per worker.
    pub concurrency: usize,
    /// Pause between polls when there is nothing to do.
    pub poll_interval: Duration,
    /// Attempts before a failing object or dead-letter row is parked.
    pub max_attempts: i32,
    /// How long delivered event ids are remembered.
    pub ledger_retention: Duration,
    /// How long an object lease lasts; must outlive a request.
    pub lease: Duration,
    /// How often a worker halted by bad credentials probes HubSpot again.
    pub auth_probe_interval: Duration,
    /// Wait on `LISTEN hubsync` for new events; false for a pooler that cannot hold a
    /// LISTEN (PgBouncer in transaction mode): then the worker polls every `poll_interval`.
    pub listen: bool,
    /// With `listen`, how often an idle worker still looks for work nobody announces:
    /// retries coming due, leases running out, other workers' leftovers.
    pub idle_poll: Duration,
    /// Postgres `statement_timeout` on worker sessions: far above any statement hubsync runs,
    /// so it only ends one that hangs.
    pub statement_timeout: Duration,
    /// Postgres `lock_timeout` on worker sessions: a row held by another session delays a
    /// worker this long at most, then the worker goes on with other rows.
    pub lock_timeout: Duration,
    /// Postgres `idle_in_transaction_session_timeout` on worker sessions: a worker cut off
    /// mid-transaction releases its locks after this long instead of when TCP gives up.
    pub idle_in_transaction_timeout: Duration,
}

/// What a config declares, as deployments compare it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Declarations {
    /// Canonical text whose digest identifies the declarations.
    pub canonical: String,
    /// The declared property names per object type (`{"contact": [...], "company": [...]}`).
    pub properties: serde_json::Value,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// `[hubspot]`
    pub hubspot: HubSpotSettings,
    /// `[worker]`
    pub worker: WorkerSettings,
    /// `[contacts]`
    pub contacts: ObjectConfig,
    /// `[companies]`, when configured.
    pub companies: Option<CompanyConfig>,
    /// `[metrics]`
    pub metrics: MetricsSettings,
}

/// `[metrics]`: where `hubsync run` serves `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `listen`, e.g. `127.0.0.1:9464`; `None`: no listener.
    pub listen: Option<std::net::SocketAddr>,
}

/// A listen address: `IP:PORT`, or `HOST:PORT` with a name the system resolves (`localhost:9464`);
/// `None` when it is neither.
fn listen_address(text: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    text.parse()
        .ok()
        .or_else(|| text.to_socket_addrs().ok()?.next())
}

impl MetricsSettings {
    /// The address to serve on: `HUBSYNC_METRICS_LISTEN` when set (an empty value turns the
    /// listener off), else `listen` from the file.
    pub(crate) fn effective_listen(
        &self,
        env: &Env,
    ) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        match &env.metrics_listen {
            None => Ok(self.listen),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => listen_address(v).map(Some).ok_or_else(|| ConfigError::BadEnv {
                name: "HUBSYNC_METRICS_LISTEN",
                message: format!(
                    "{v:?} is not an address; use HOST:PORT such as 127.0.0.1:9464 or 0.0.0.0:9464, or leave it empty for no listener"
                ),
            }),
        }
    }
}

/// Secrets and addresses from the environment. The secrets format as `[redacted]`.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    /// `DATABASE_URL` (it may hold a password).
    pub database_url: Secret,
    /// `HUBSPOT_ACCESS_TOKEN`, when set.
    pub access_token: Option<Secret>,
    /// `HUBSPOT_BASE_URL`
    pub base_url: String,
    /// `HUBSYNC_CONFIG`
    pub config_path: PathBuf,
    /// `HUBSYNC_METRICS_LISTEN`, when set (it overrides `[metrics] listen`).
    pub metrics_listen: Option<String>,
}

impl Env {
    /// Reads the environment, with the documented defaults.
    pub(crate) fn from_env() -> Env {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Env {
            database_url: Secret::new(
                var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            ),
            access_token: var("HUBSPOT_ACCESS_TOKEN").map(Secret::new),
            base_url: var("HUBSPOT_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.into()),
            config_path: var("HUBSYNC_CONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()),
            metrics_listen: std::env::var("HUBSYNC_METRICS_LISTEN").ok(),
        }
    }

    /// `HUBSPOT_BASE_URL` when it is an absolute http(s) URL, or the refusal that says what to
    /// set instead (without echoing the value, which could hold credentials).
    pub(crate) fn checked_base_url(&self) -> Result<&str, ConfigError> {
        let problem = match reqwest::Url::parse(&self.base_url) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!("its scheme \"{}\" is not http or https", url.scheme())
            }
            Ok(_) => return Ok(&self.base_url),
            Err(e) => format!("it is not an absolute URL ({e})"),
        };
        Err(ConfigError::BadEnv {
            name: "HUBSPOT_BASE_URL",
            message: format!(
                "{problem}; set it to {DEFAULT_BASE_URL} (the default, when unset) or to a simulator's address such as http://127.0.0.1:8089"
            ),
        })
    }

    /// The access token, or the refusal that says how to provide it.
    pub(crate) fn require_token(&self) -> Result<&Secret, ConfigError> {
        self.access_token.as_ref().ok_or(ConfigError::MissingEnv {
                name: "HUBSPOT_ACCESS_TOKEN",
                hint: "set it to your HubSpot private app's access token (Settings > Integrations > Private Apps)",
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    hubspot: RawHubSpot,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    contacts: RawObjects,
    companies: Option<RawCompanies>,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHubSpot {
    requests_per_10s: Option<Spanned<u32>>,
    daily_budget: Option<Spanned<u64>>,
    rate_window_ms: Option<Spanned<u64>>,
    rate_margin_ms: Option<Spanned<u64>>,
    property_group: Option<Spanned<String>>,
    property_group_label: Option<String>,
    api_version: Option<Spanned<String>>,
    request_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    batch_size: Option<Spanned<usize>>,
    ingest_chunk: Option<Spanned<usize>>,
    concurrency: Option<Spanned<usize>>,
    poll_interval_ms: Option<Spanned<u64>>,
    max_attempts: Option<Spanned<i32>>,
    ledger_retention_days: Option<Spanned<u64>>,
    lease_secs: Option<Spanned<u64>>,
    auth_probe_secs: Option<Spanned<u64>>,
    listen: Option<bool>,
    idle_poll_secs: Option<Spanned<u64>>,
    statement_timeout_secs: Option<Spanned<u64>>,
    lock_timeout_ms: Option<Spanned<u64>>,
    idle_in_transaction_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawObjects {
    #[serde(default)]
    properties: BTreeMap<String, RawProperty>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompanies {
    id_property: Option<Spanned<String>>,
    #[serde(default)]
    properties: BTreeMap<String, RawProperty>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProperty {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    merge: Option<Spanned<String>>,
    label: Option<String>,
    description: Option<String>,
    options: Option<Spanned<Vec<String>>>,
    multiple: Option<Spanned<bool>>,
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// The line of `[table]` (or a dotted key inside another table) that introduces `name`.
    /// The line of `[table]`, or else of the first `[table.…]` header that opens it.
    fn line_of_table(&self, table: &str) -> Option<usize> {
        let header = format!("[{table}]");
        let sub = format!("[{table}.");
        let headers = || self.text.lines().map(|l| l.trim().replace(' ', ""));
        headers()
            .position(|l| l == header)
            .or_else(|| headers().position(|l| l.starts_with(&sub)))
            .map(|i| i + 1)
    }

    fn invalid(&self, line: Option<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>) -> Option<usize> {
        Some(self.line_at(spanned.span().start))
    }
}

/// A property name HubSpot will accept for a custom property, or why not.
pub(crate) fn check_property_name(name: &str) -> Result<(), String> {
    if name.starts_with("hs_") {
        return Err(format!(
            "\"{name}\" starts with hs_, which HubSpot reserves for its own properties; rename it (e.g. \"{}\")",
            name.trim_start_matches("hs_")
        ));
    }
    if name.is_empty() || name.len() >= 100 {
        return Err(format!(
            "\"{name}\" must be 1 to 99 characters long; shorten it"
        ));
    }
    let first_ok = name.starts_with(|c: char| c.is_ascii_lowercase());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok {
        return Err(format!(
            "\"{name}\" must be lower-case letters, digits and _ and start with a letter (HubSpot stores names lower-case); rename it to \"{}\"",
            name.to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
    }
    Ok(())
}

impl Config {
    /// What this config declares, as event preparation reads it.
    pub(crate) fn declared(&self) -> Declared<'_> {
        Declared {
            contacts: &self.contacts,
            companies: self.companies.as_ref(),
        }
    }

    /// What this config declares, as deployments compare it: every property's name, type and
    /// merge rule (and options), and the company key; not labels, descriptions or tuning.
    pub(crate) fn declarations(&self) -> Declarations {
        let describe = |objects: &ObjectConfig| -> Vec<serde_json::Value> {
            objects
                .properties
                .values()
                .map(|d| {
                    let options = match &d.ptype {
                        crate::core::vocabulary::PropertyType::Enumeration {
                            options,
                            multiple,
                        } => {
                            serde_json::json!({"options": options, "multiple": multiple})
                        }
                        _ => serde_json::Value::Null,
                    };
                    serde_json::json!([d.name, d.ptype.name(), d.merge.name(), options])
                })
                .collect()
        };
        let names = |objects: &ObjectConfig| -> Vec<String> {
            objects.properties.keys().cloned().collect()
        };
        let canonical = serde_json::json!({
            "contact": describe(&self.contacts),
            "company": self.companies.as_ref().map(|c| {
                serde_json::json!({"id_property": c.id_property, "properties": describe(&c.objects)})
            }),
        });
        let properties = serde_json::json!({
            "contact": names(&self.contacts),
            "company": self.companies.as_ref().map(|c| names(&c.objects)).unwrap_or_default(),
        });
        Declarations {
            canonical: canonical.to_string(),
            properties,
        }
    }

    /// Reads and validates the config file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{}\nfix this line; every key is listed in hubsync.example.toml and the README",
                e.to_string().trim_end()
            ),
        })?;
        let src = Source { path, text };
        let hubspot = hubspot_settings(&src, raw.hubspot)?;
        let lease_span = raw.worker.lease_secs.as_ref().and_then(|l| src.at(l));
        let worker = worker_settings(&src, raw.worker)?;
        // A batch may only be sent while its lease outlives the reply (see worker::sync).
        let needed = hubspot.request_timeout + Duration::from_secs(5);
        if worker.lease <= needed {
            return Err(src.invalid(
                lease_span,
                format!(
                    "worker.lease_secs = {} must be longer than hubspot.request_timeout_secs ({}) plus 5; raise it to at least {}",
                    worker.lease.as_secs(),
                    hubspot.request_timeout.as_secs(),
                    needed.as_secs() + 1
                ),
            ));
        }
        let contacts = object_config(&src, "contacts", raw.contacts.properties, &["email"])?;
        let companies = match raw.companies {
            None => None,
            Some(c) => {
                let line = src.line_of_table("companies");
                let id = c.id_property.ok_or_else(|| {
                    src.invalid(
                        line,
                        "[companies] needs id_property: the unique property companies are matched by, e.g. id_property = \"product_account_id\"".into(),
                    )
                })?;
                check_property_name(id.get_ref())
                    .map_err(|m| src.invalid(src.at(&id), format!("companies.id_property: {m}")))?;
                let id_property = id.get_ref().clone();
                let objects = object_config(&src, "companies", c.properties, &[&id_property])?;
                Some(CompanyConfig {
                    id_property,
                    objects,
                })
            }
        };
        let listen = match &raw.metrics.listen {
            None => None,
            Some(l) => Some(listen_address(l.get_ref()).ok_or_else(|| {
                src.invalid(
                    src.at(l),
                    format!(
                        "metrics.listen = {:?} is not an address; use HOST:PORT such as \"127.0.0.1:9464\" (or remove [metrics] for no listener)",
                        l.get_ref()
                    ),
                )
            })?),
        };
        Ok(Config {
            path: path.to_path_buf(),
            hubspot,
            worker,
            contacts,
            companies,
            metrics: MetricsSettings { listen },
        })
    }
}

fn bounded<T: PartialOrd + Copy + std::fmt::Display>(
    src: &Source,
    key: &str,
    value: &Option<Spanned<T>>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() >= min && *v.get_ref() <= max => Ok(*v.get_ref()),
        Some(v) => Err(src.invalid(
            src.at(v),
            format!(
                "{key} = {} is out of range; use a value from {min} to {max}",
                v.get_ref()
            ),
        )),
    }
}

/// An optional key: `None` when absent, else checked like `bounded`.
fn optional_bounded<T: PartialOrd + Copy + std::fmt::Display>(
    src: &Source,
    key: &str,
    value: &Option<Spanned<T>>,
    min: T,
    max: T,
) -> Result<Option<T>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) => bounded(src, key, value, *v.get_ref(), min, max).map(Some),
    }
}

fn hubspot_settings(src: &Source, raw: RawHubSpot) -> Result<HubSpotSettings, ConfigError> {
    let requests_per_10s = optional_bounded(
        src,
        "hubspot.requests_per_10s",
        &raw.requests_per_10s,
        1,
        10_000,
    )?;
    let daily_budget = optional_bounded(
        src,
        "hubspot.daily_budget",
        &raw.daily_budget,
        1,
        100_000_000,
    )?;
    let window_ms = bounded(
        src,
        "hubspot.rate_window_ms",
        &raw.rate_window_ms,
        10_000,
        100,
        600_000,
    )?;
    let timeout = bounded(
        src,
        "hubspot.request_timeout_secs",
        &raw.request_timeout_secs,
        30,
        1,
        300,
    )?;
    let property_group = match raw.property_group {
        None => "product_signals".to_string(),
        Some(g) => {
            check_property_name(g.get_ref())
                .map_err(|m| src.invalid(src.at(&g), format!("hubspot.property_group: {m}")))?;
            g.into_inner()
        }
    };
    let api_version = match raw.api_version {
        None => ApiVersion::V2026_03,
        Some(v) => match v.get_ref().as_str() {
            "2026-03" => ApiVersion::V2026_03,
            "v3" => ApiVersion::V3,
            other => {
                return Err(src.invalid(
                    src.at(&v),
                    format!(
                        "hubspot.api_version = \"{other}\" is not known; use \"2026-03\" (default) or \"v3\" for portals without date-versioned APIs"
                    ),
                ));
            }
        },
    };
    Ok(HubSpotSettings {
        requests_per_10s,
        daily_budget,
        rate_window: Duration::from_millis(window_ms),
        rate_margin: match &raw.rate_margin_ms {
            Some(_) => Duration::from_millis(bounded(
                src,
                "hubspot.rate_margin_ms",
                &raw.rate_margin_ms,
                0,
                0,
                60_000,
            )?),
            None => (Duration::from_millis(window_ms) / 40).max(Duration::from_millis(50)),
        },
        property_group_label: raw
            .property_group_label
            .unwrap_or_else(|| "Product signals".into()),
        property_group,
        api_version,
        request_timeout: Duration::from_secs(timeout),
    })
}

fn worker_settings(src: &Source, raw: RawWorker) -> Result<WorkerSettings, ConfigError> {
    let lease = bounded(src, "worker.lease_secs", &raw.lease_secs, 120, 10, 3600)?;
    Ok(WorkerSettings {
        batch_size: bounded(src, "worker.batch_size", &raw.batch_size, 100, 1, 100)?,
        ingest_chunk: bounded(
            src,
            "worker.ingest_chunk",
            &raw.ingest_chunk,
            // Measured (P3): 5000 folds about a fifth faster than 2000; each ingest
            // transaction then lasts about a tenth of a second.
            5000,
            1,
            50_000,
        )?,
        concurrency: bounded(src, "worker.concurrency", &raw.concurrency, 4, 1, 64)?,
        poll_interval: Duration::from_millis(bounded(
            src,
            "worker.poll_interval_ms",
            &raw.poll_interval_ms,
            100,
            10,
            60_000,
        )?),
        max_attempts: bounded(src, "worker.max_attempts", &raw.max_attempts, 10, 1, 1000)?,
        ledger_retention: Duration::from_secs(
            86_400
                * bounded(
                    src,
                    "worker.ledger_retention_days",
                    &raw.ledger_retention_days,
                    7,
                    1,
                    365,
                )?,
        ),
        lease: Duration::from_secs(lease),
        auth_probe_interval: Duration::from_secs(bounded(
            src,
            "worker.auth_probe_secs",
            &raw.auth_probe_secs,
            60,
            1,
            3600,
        )?),
        listen: raw.listen.unwrap_or(true),
        idle_poll: Duration::from_secs(bounded(
            src,
            "worker.idle_poll_secs",
            &raw.idle_poll_secs,
            15,
            1,
            3600,
        )?),
        statement_timeout: Duration::from_secs(bounded(
            src,
            "worker.statement_timeout_secs",
            &raw.statement_timeout_secs,
            300,
            5,
            86_400,
        )?),
        lock_timeout: Duration::from_millis(bounded(
            src,
            "worker.lock_timeout_ms",
            &raw.lock_timeout_ms,
            5000,
            10,
            600_000,
        )?),
        idle_in_transaction_timeout: Duration::from_secs(bounded(
            src,
            "worker.idle_in_transaction_timeout_secs",
            &raw.idle_in_transaction_timeout_secs,
            60,
            1,
            86_400,
        )?),
    })
}

fn object_config(
    src: &Source,
    object: &str,
    raw: BTreeMap<String, RawProperty>,
    reserved: &[&str],
) -> Result<ObjectConfig, ConfigError> {
    let mut properties = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for (name, p) in raw {
        let table = format!("{object}.properties.{name}");
        let line = src
            .line_of_table(&table)
            .or_else(|| p.kind.as_ref().and_then(|k| src.at(k)));
        let fail =
            |line: Option<usize>, msg: String| src.invalid(line, format!("[{table}]: {msg}"));
        check_property_name(&name).map_err(|m| fail(line, m))?;
        if reserved.contains(&name.as_str()) {
            return Err(fail(
                line,
                format!(
                    "\"{name}\" is the key hubsync matches {object} by and is always sent; remove this table"
                ),
            ));
        }
        let kind = p.kind.as_ref().ok_or_else(|| {
            fail(
                line,
                format!(
                    "type is missing; add type = \"...\" with one of {}",
                    PropertyType::NAMES
                ),
            )
        })?;
        let multiple = p.multiple.as_ref().map(|m| *m.get_ref()).unwrap_or(false);
        let ptype = match kind.get_ref().as_str() {
            "string" => PropertyType::String,
            "number" => PropertyType::Number,
            "bool" => PropertyType::Bool,
            "date" => PropertyType::Date,
            "datetime" => PropertyType::Datetime,
            "enumeration" => {
                let options = p
                    .options
                    .as_ref()
                    .map(|o| o.get_ref().clone())
                    .unwrap_or_default();
                if options.is_empty() {
                    return Err(fail(
                        src.at(kind),
                        "an enumeration needs options; add options = [\"value1\", \"value2\"]"
                            .into(),
                    ));
                }
                for (i, o) in options.iter().enumerate() {
                    if o.trim().is_empty() || o.contains(';') {
                        return Err(fail(
                            p.options.as_ref().and_then(|s| src.at(s)),
                            format!(
                                "option \"{o}\" must be non-empty and contain no ';'; rename it"
                            ),
                        ));
                    }
                    if options[..i].contains(o) {
                        return Err(fail(
                            p.options.as_ref().and_then(|s| src.at(s)),
                            format!("option \"{o}\" is listed twice; remove one"),
                        ));
                    }
                }
                PropertyType::Enumeration { options, multiple }
            }
            other => {
                return Err(fail(
                    src.at(kind),
                    format!(
                        "type \"{other}\" is not a property type; use one of {}",
                        PropertyType::NAMES
                    ),
                ));
            }
        };
        if let Some(o) = &p.options
            && !matches!(ptype, PropertyType::Enumeration { .. })
        {
            return Err(fail(
                src.at(o),
                format!(
                    "options only apply to enumerations, not {}; remove them",
                    ptype.name()
                ),
            ));
        }
        if let Some(m) = &p.multiple
            && !matches!(ptype, PropertyType::Enumeration { .. })
        {
            return Err(fail(
                src.at(m),
                "multiple only applies to enumerations; remove it".into(),
            ));
        }
        let merge = match &p.merge {
            None => MergeRule::Set,
            Some(m) => MergeRule::parse(m.get_ref()).ok_or_else(|| {
                fail(
                    src.at(m),
                    format!(
                        "merge = \"{}\" is not a merge rule; use one of set, set_once, increment, max, min",
                        m.get_ref()
                    ),
                )
            })?,
        };
        if let Some(why) = merge.misfit(&ptype) {
            return Err(fail(
                p.merge.as_ref().and_then(|m| src.at(m)),
                format!(
                    "merge = \"{}\" does not fit type \"{}\": {why}; change the merge rule or the type",
                    merge.name(),
                    ptype.name()
                ),
            ));
        }
        let label = p.label.clone().unwrap_or_else(|| default_label(&name));
        if let Some(l) = line {
            lines.insert(name.clone(), l);
        }
        properties.insert(
            name.clone(),
            PropertyDef {
                name,
                ptype,
                merge,
                label,
                description: p.description.clone(),
            },
        );
    }
    Ok(ObjectConfig { properties, lines })
}

fn default_label(name: &str) -> String {
    let mut words: Vec<String> = name
        .split('_')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    if let Some(first) = words.first_mut() {
        let mut chars = first.chars();
        if let Some(c) = chars.next() {
            *first = c.to_uppercase().chain(chars).collect();
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../hubsync.example.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("hubsync.toml"), text)
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.hubspot.requests_per_10s, Some(100));
        assert_eq!(
            c.contacts.properties["total_sessions"].merge,
            MergeRule::Increment
        );
        assert_eq!(c.companies.unwrap().id_property, "product_account_id");
    }

    #[test]
    fn the_metrics_listener_comes_from_the_file_and_the_environment_overrides_it() {
        let env = |v: Option<&str>| Env {
            database_url: Secret::new(DEFAULT_DATABASE_URL),
            access_token: None,
            base_url: DEFAULT_BASE_URL.into(),
            config_path: DEFAULT_CONFIG_PATH.into(),
            metrics_listen: v.map(String::from),
        };
        let none = parse(EXAMPLE).unwrap();
        assert_eq!(none.metrics.effective_listen(&env(None)).unwrap(), None);
        let file = parse(&format!(
            "{EXAMPLE}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"
        ))
        .unwrap();
        let at = |a: &str| Some(a.parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(file.metrics.listen, at("127.0.0.1:9464"));
        assert_eq!(
            file.metrics
                .effective_listen(&env(Some("0.0.0.0:9100")))
                .unwrap(),
            at("0.0.0.0:9100")
        );
        assert_eq!(
            file.metrics.effective_listen(&env(Some(" "))).unwrap(),
            None
        );
        let named = parse(&format!(
            "{EXAMPLE}\n[metrics]\nlisten = \"localhost:9464\"\n"
        ))
        .unwrap();
        let named = named.metrics.listen.expect("a host name resolves");
        assert!(named.ip().is_loopback() && named.port() == 9464, "{named}");
        let bad_env = file
            .metrics
            .effective_listen(&env(Some("localhost")))
            .unwrap_err();
        assert!(
            bad_env.to_string().contains("HUBSYNC_METRICS_LISTEN"),
            "{bad_env}"
        );
        let bad = parse(&format!("{EXAMPLE}\n[metrics]\nlisten = \"9464\"\n")).unwrap_err();
        let text = bad.to_string();
        assert!(
            text.contains("metrics.listen") && text.contains("HOST:PORT"),
            "{text}"
        );
        assert!(
            matches!(bad, ConfigError::Invalid { line: Some(_), .. }),
            "{text}"
        );
    }

    #[test]
    fn default_labels_read_like_words() {
        assert_eq!(default_label("last_active_at"), "Last active at");
    }
}
