//! The command line: parses arguments, loads config and environment, and calls the library.
//! Each command returns an exit code; messages for people go to stderr, results to stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
#[cfg(feature = "simulator")]
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
#[cfg(feature = "simulator")]
use hubspot_sim::{Fault, SimConfig, Simulator};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Env};
use crate::core::dlq::Category;
use crate::db;
use crate::db::dlq::{OperatorSql, Var};
use crate::hubspot::{HubSpotClient, Paths};
#[cfg(feature = "simulator")]
use crate::secret::Secret;
use crate::worker::Worker;

/// The simulator's default token, which is not a secret.
#[cfg(feature = "simulator")]
const SIM_TOKEN: &str = "sim-token";

/// hubsync: product events from a Postgres outbox into HubSpot properties.
#[derive(Debug, Parser)]
#[command(name = "hubsync", version, about)]
pub struct Cli {
    /// Config file (default: $HUBSYNC_CONFIG, else ./hubsync.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `docs/ARCHITECTURE.md` §1.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the hubsync schema.
    Migrate,
    /// Validate the config against the portal; print what `run` would create; exit 1 on mismatch.
    Check,
    /// Run the worker until SIGTERM/SIGINT (finishing the batch in flight).
    Run {
        /// Drain everything that can be sent now, then exit 0.
        #[arg(long)]
        until_idle: bool,
    },
    /// Backlog, oldest event age, drain rate and ETA, DLQ counts by category, rate and daily
    /// budget, the pause in force, the workers by config generation.
    Status {
        /// Redraw every 2 s, with a progress bar while a backlog drains (Ctrl-C stops).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// Print one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and replay the dead-letter table (the statements of sql/).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the HubSpot simulator on a local port.
    #[cfg(feature = "simulator")]
    Simulator(SimulatorArgs),
    /// Migrate, start the simulator, enqueue sample events, run the worker, print the result.
    #[cfg(feature = "simulator")]
    Demo {
        /// Sample events to enqueue.
        #[arg(long, default_value_t = 400)]
        events: usize,
        /// Distinct contacts they touch.
        #[arg(long, default_value_t = 40)]
        contacts: usize,
    },
}

/// `hubsync dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Rows by category: parked and scheduled (sql/dlq_summary.sql).
    Summary,
    /// The most recent rows (sql/dlq_list.sql).
    List {
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One row in full (sql/dlq_show.sql).
    Show {
        /// The row id.
        id: i64,
    },
    /// Replay rows: one id, a category, or all (sql/dlq_retry_*.sql).
    Retry(Selection),
    /// Delete rows for good: one id, a category, or all (sql/dlq_discard_*.sql).
    Discard(Selection),
    /// Delete parked rows whose last failure is older than DAYS days (sql/dlq_purge.sql).
    /// Rows scheduled for a replay are kept; nothing is ever purged automatically.
    Purge {
        /// Age of the last failure, in days.
        #[arg(long, value_name = "DAYS")]
        older_than: u32,
    },
}

/// Which DLQ rows a retry or discard applies to.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// One row id.
    pub id: Option<i64>,
    /// Every row of this category.
    #[arg(long)]
    pub category: Option<String>,
    /// Every row.
    #[arg(long)]
    pub all: bool,
}

/// `hubsync simulator ...`
#[cfg(feature = "simulator")]
#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    pub port: u16,
    /// Address to bind (use 0.0.0.0 inside a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The token it accepts (never printed).
    #[arg(
        long,
        env = "HUBSPOT_ACCESS_TOKEN",
        hide_env_values = true,
        default_value = SIM_TOKEN
    )]
    pub token: Secret,
    /// Requests allowed per rolling window (0 = unlimited).
    #[arg(long, default_value_t = 100)]
    pub requests_per_window: u32,
    /// Rolling window length in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub window_ms: u64,
    /// Requests allowed per portal day (it resets at the portal's midnight); without it, the
    /// Free and Starter tiers' 250,000.
    #[arg(long)]
    pub daily_limit: Option<u64>,
    /// The portal's time zone name, as its account details report it; a name the tz database
    /// knows (e.g. US/Eastern) sets the offset, daylight saving included.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// The portal's offset from UTC in minutes, for a zone given by offset alone (e.g. -300).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub utc_offset_minutes: i32,
    /// Echo `objectWriteTraceId` on upsert results (HubSpot may or may not).
    #[arg(long)]
    pub echo_trace_ids: bool,
    /// Share of write requests answered with a random fault (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Faults for the next write requests, in order, comma-separated: STATUS (e.g. 500),
    /// STATUS:RETRY_AFTER_SECS (e.g. 477:30), apply-STATUS, apply-drop, drop, silent, hang-MILLIS.
    #[arg(long, value_delimiter = ',')]
    pub script: Vec<Fault>,
}

/// Runs the parsed command and returns the process exit code.
pub async fn main_with(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigError>() {
                crate::telemetry::say(tracing::Level::ERROR, &format!("error: {c}"));
                return ExitCode::from(2);
            }
            let hint = db::pooler_hint(&e)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            crate::telemetry::say(
                tracing::Level::ERROR,
                &format!("error: {}{hint}", crate::telemetry::chain(&e)),
            );
            ExitCode::from(1)
        }
    }
}

/// Writes a command's output (through `out!` and `outln!`). When the reader has gone away
/// (`hubsync dlq list | head -1`), the command ends at once with exit code 0, as Unix tools do:
/// what it did before printing (a retry, a discard) is committed already. Any other failure to
/// write is said on standard error, with exit code 1.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!(
                "error: cannot write the output to standard output ({e}); check where it goes"
            );
            std::process::exit(1);
        }
    }
}

fn load_config(cli_path: &Option<PathBuf>, env: &Env) -> Result<Config, ConfigError> {
    let path = cli_path.clone().unwrap_or_else(|| env.config_path.clone());
    Config::load(&path)
}

fn client_for(config: &Config, env: &Env) -> anyhow::Result<HubSpotClient> {
    let token = env.require_token()?;
    HubSpotClient::new(
        env.checked_base_url()?,
        token.clone(),
        Paths::new(config.hubspot.api_version),
        config.hubspot.request_timeout,
    )
}

/// The shared limiter for `check`'s calls, so that they count against the portal's limit with
/// every worker's; `None` (with a warning) when the database cannot give one.
async fn check_limiter(env: &Env, config: &Config) -> Option<crate::ratelimit::Limiter> {
    let limiter = async {
        let pool = db::connect(env.database_url.expose(), 2).await?;
        require_schema(&pool).await?;
        let limiter = crate::ratelimit::Limiter::configured(pool, &config.hubspot).await?;
        anyhow::Ok(limiter)
    }
    .await;
    match limiter {
        Ok(limiter) => Some(limiter),
        Err(e) => {
            tracing::warn!(
                "check calls HubSpot without the shared rate limiter ({}); its requests are not counted with the workers', so a 429 is possible while they run",
                crate::telemetry::chain(&e)
            );
            None
        }
    }
}

/// Refuses to run against a database the migrations have not reached.
async fn require_schema(pool: &PgPool) -> anyhow::Result<()> {
    let latest = db::migrations::latest_embedded();
    match db::migrations::latest_applied(pool).await? {
        Some(v) if v >= latest => Ok(()),
        _ => anyhow::bail!(
            "the hubsync schema is missing or out of date in the database at {}; run `hubsync migrate` first (with this DATABASE_URL)",
            db::describe(&pool.connect_options())
        ),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = Env::from_env();
    match cli.command {
        Command::Migrate => {
            let pool = db::connect(env.database_url.expose(), 2).await?;
            db::migrate(&pool).await?;
            outln!(
                "hubsync schema is up to date in {}",
                db::describe(&pool.connect_options())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let config = load_config(&cli.config, &env)?;
            let client = client_for(&config, &env)?;
            let setup = crate::setup::Setup::new(client, check_limiter(&env, &config).await);
            // First, so that a daily 429 on a later call waits for the portal's midnight.
            let zone = crate::setup::portal_zone(&setup).await?;
            let setup = setup.in_zone(zone);
            let plan = crate::reconcile::plan(&setup, &config).await?;
            outln!("config {} is valid", config.path.display());
            let lines = plan.describe();
            if lines.is_empty() {
                outln!("the portal already has every declared property; nothing to create");
            }
            for l in lines {
                outln!("{l}");
            }
            Ok(if plan.mismatches.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Run { until_idle } => {
            let config = Arc::new(load_config(&cli.config, &env)?);
            let client = client_for(&config, &env)?;
            // Two ingest transactions (one folding, the next claimed), upkeep and the
            // heartbeat, and two per sync loop (its lease and its settling).
            let pool = db::connect_worker(
                env.database_url.expose(),
                3 + config.worker.concurrency as u32 * 2,
                &config.worker,
            )
            .await?;
            require_schema(&pool).await?;
            let cancel = CancellationToken::new();
            let telemetry = crate::telemetry::Telemetry::new();
            if let Some(addr) = config.metrics.effective_listen(&env)? {
                crate::telemetry::health::serve(
                    addr,
                    telemetry.clone(),
                    pool.clone(),
                    cancel.clone(),
                )
                .await?;
            }
            let limiter =
                crate::ratelimit::Limiter::configured(pool.clone(), &config.hubspot).await?;
            let setup = crate::setup::Setup::new(client.clone(), Some(limiter.clone()));
            // First, so that a daily 429 on a later call waits for the portal's midnight.
            let zone = crate::setup::portal_zone(&setup).await?;
            let setup = setup.in_zone(zone);
            tracing::info!(
                "reading the portal's property definitions from {} to compare them with {}",
                client.base_url(),
                config.path.display()
            );
            crate::reconcile::ensure(&setup, &config).await?;
            telemetry.set_reconciled();
            let worker = Worker::in_portal(pool, config, client, limiter, zone).await?;
            let worker = Arc::new(worker.with_telemetry(telemetry));
            spawn_signal_handler(cancel.clone());
            if until_idle {
                let step = worker.run_until_idle(&cancel).await;
                worker.leave().await;
                let step = step?;
                // Cron users get the upkeep `run` does every ten minutes.
                let pruned = db::retention::prune_ledger(
                    &worker.pool,
                    worker.config.worker.ledger_retention,
                )
                .await
                .context("cannot prune the ledger (hubsync.ledger)")?;
                crate::telemetry::say(
                    tracing::Level::INFO,
                    &format!(
                        "idle: {} events ingested ({} dead-lettered), {} objects written in {} requests, {} dead-lettered, {} waiting to retry; {pruned} ledger entries past retention removed",
                        step.ingested,
                        step.refused,
                        step.sync.written,
                        step.sync.requests,
                        step.sync.dead_lettered,
                        step.sync.retrying
                    ),
                );
            } else {
                tracing::info!(
                    "hubsync worker running; SIGTERM or Ctrl-C stops it after the batch in flight"
                );
                worker.run(cancel).await?;
                tracing::info!("hubsync worker stopped");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { watch, json } => {
            let pool = db::connect(env.database_url.expose(), 2).await?;
            require_schema(&pool).await?;
            // The rate limit bounds the ETA; when hubsync.toml does not set it, HubSpot's
            // lowest tier is assumed (and the output says so). status reports even when the
            // file is absent (run from another directory) or wrong (what it is for at 3 a.m.),
            // and says what is wrong with it.
            let per_10s = match load_config(&cli.config, &env) {
                Ok(config) => config.hubspot.requests_per_10s,
                Err(ConfigError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(e) => {
                    crate::telemetry::say(
                        tracing::Level::WARN,
                        &format!(
                            "{e}; status reports all the same, with the rate limit assumed; `hubsync check` tells every mistake in the file"
                        ),
                    );
                    None
                }
            };
            use crate::telemetry::status;
            if watch {
                let cancel = CancellationToken::new();
                spawn_signal_handler(cancel.clone());
                status::watch(&pool, per_10s, &cancel).await?;
            } else if json {
                status::print_once(&pool, per_10s, status::Format::Json).await?;
            } else {
                status::print_once(&pool, per_10s, status::Format::Text).await?;
                outln!();
                outln!("dead-letter rows by category (hubsync dlq summary):");
                print_sql(&pool, &db::dlq::SUMMARY, &[], false, usize::MAX).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(cmd) => {
            let pool = db::connect(env.database_url.expose(), 2).await?;
            require_schema(&pool).await?;
            dlq(&pool, cmd).await
        }
        #[cfg(feature = "simulator")]
        Command::Simulator(args) => simulator(args).await,
        #[cfg(feature = "simulator")]
        Command::Demo { events, contacts } => {
            crate::demo::run(&env, events, contacts).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `hubsync dlq purge`: prints only how many rows went (there may be many).
async fn purge(pool: &PgPool, older_than: u32) -> anyhow::Result<ExitCode> {
    let days = [("days", Var::Int(i64::from(older_than)))];
    let (_, rows) = db::dlq::run_operator(pool, &db::dlq::PURGE, &days).await?;
    outln!(
        "{} parked row(s) purged (last failed more than {older_than} days ago)",
        rows.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn dlq(pool: &PgPool, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let named = match &cmd {
        DlqCommand::List { category, .. } => category.as_deref(),
        DlqCommand::Retry(s) | DlqCommand::Discard(s) => s.category.as_deref(),
        _ => None,
    };
    if let Some(word) = named
        && Category::parse(word).is_none()
    {
        // Rows written by another version may carry other words: say so, and go on.
        eprintln!(
            "note: hubsync does not write the category \"{word}\"; it writes {}",
            Category::ALL.map(Category::as_str).join(", ")
        );
    }
    let pick = |s: &Selection, one: OperatorSql, cat: OperatorSql, all: OperatorSql| {
        if let Some(id) = s.id {
            (one, vec![("id", Var::Int(id))])
        } else if let Some(c) = &s.category {
            (cat, vec![("category", Var::Text(c.clone()))])
        } else {
            (all, vec![])
        }
    };
    let list_limit = match &cmd {
        DlqCommand::List { limit, .. } => Some(*limit),
        _ => None,
    };
    let (sql, vars, vertical) = match cmd {
        DlqCommand::Summary => (db::dlq::SUMMARY, vec![], false),
        DlqCommand::List { category, limit } => (
            db::dlq::LIST,
            vec![
                ("category", Var::Text(category.unwrap_or_default())),
                ("limit", Var::Int(limit)),
            ],
            false,
        ),
        DlqCommand::Show { id } => (db::dlq::SHOW, vec![("id", Var::Int(id))], true),
        DlqCommand::Retry(s) => {
            let (sql, vars) = pick(
                &s,
                db::dlq::RETRY_ONE,
                db::dlq::RETRY_CATEGORY,
                db::dlq::RETRY_ALL,
            );
            (sql, vars, false)
        }
        DlqCommand::Discard(s) => {
            let (sql, vars) = pick(
                &s,
                db::dlq::DISCARD_ONE,
                db::dlq::DISCARD_CATEGORY,
                db::dlq::DISCARD_ALL,
            );
            (sql, vars, false)
        }
        DlqCommand::Purge { older_than } => return purge(pool, older_than).await,
    };
    // A retry or discard of a whole category can touch thousands of rows: show the first.
    let shown = if matches!(
        sql.name,
        "dlq_retry_category.sql"
            | "dlq_retry_all.sql"
            | "dlq_discard_category.sql"
            | "dlq_discard_all.sql"
    ) {
        SHOWN_ROWS
    } else {
        usize::MAX
    };
    let rows = print_sql(pool, &sql, &vars, vertical, shown).await?;
    if let Some(limit) = list_limit
        && i64::try_from(rows).is_ok_and(|n| n >= limit)
    {
        eprintln!(
            "the {rows} most recent rows; --limit N shows more, `hubsync dlq summary` counts them all"
        );
    }
    if rows == 0
        && matches!(
            sql.name,
            "dlq_show.sql" | "dlq_retry_one.sql" | "dlq_discard_one.sql"
        )
    {
        eprintln!("no dead-letter row with that id; `hubsync dlq list` shows the ids");
        return Ok(ExitCode::from(1));
    }
    if sql.name.starts_with("dlq_retry") {
        eprintln!("{rows} row(s) marked for replay; a running worker retries them within seconds");
    } else if sql.name.starts_with("dlq_discard") {
        eprintln!("{rows} row(s) discarded");
    }
    Ok(ExitCode::SUCCESS)
}

/// Rows a retry or discard of many rows prints.
const SHOWN_ROWS: usize = 20;

/// Prints a statement's rows as a table (or one `column: value` per line when `vertical`), the
/// first `shown` of them; returns how many there were.
async fn print_sql(
    pool: &PgPool,
    sql: &OperatorSql,
    vars: &[(&str, Var)],
    vertical: bool,
    shown: usize,
) -> anyhow::Result<usize> {
    let (columns, mut rows) = db::dlq::run_operator(pool, sql, vars).await?;
    if rows.is_empty() {
        outln!("(no rows)");
        return Ok(0);
    }
    let all = rows.len();
    rows.truncate(shown);
    if all > rows.len() {
        let rest = if sql.name.starts_with("dlq_discard") {
            ""
        } else {
            "; `hubsync dlq list` and `hubsync dlq summary` show the rest"
        };
        eprintln!("the first {} of {all} rows{rest}", rows.len());
    }
    if vertical {
        let width = columns.iter().map(|c| c.len()).max().unwrap_or(0);
        for (n, row) in rows.iter().enumerate() {
            if n > 0 {
                outln!();
            }
            for (c, v) in columns.iter().zip(row) {
                outln!("{c:>width$} | {v}");
            }
        }
    } else {
        out!("{}", crate::table::render(&columns, &rows));
    }
    Ok(all)
}

#[cfg(feature = "simulator")]
async fn simulator(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    let addr: std::net::SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "--host {} --port {} is not an address",
                args.host, args.port
            )
        })?;
    let offset = args.utc_offset_minutes.clamp(-24 * 60 + 1, 24 * 60 - 1);
    let config = SimConfig {
        token: hubspot_sim::Token::new(args.token.expose()),
        requests_per_window: args.requests_per_window,
        window: Duration::from_millis(args.window_ms),
        daily_limit: args.daily_limit,
        // A name the tz database knows sets the offset; an offset alone names itself.
        time_zone: match (args.time_zone.as_str(), offset) {
            ("UTC", minutes) if minutes != 0 => format!(
                "UTC{}{:02}:{:02}",
                if minutes < 0 { '-' } else { '+' },
                minutes.unsigned_abs() / 60,
                minutes.unsigned_abs() % 60
            ),
            _ => args.time_zone,
        },
        utc_offset_minutes: offset,
        echo_trace_ids: args.echo_trace_ids,
        ..SimConfig::default()
    };
    let sim = Simulator::start_on(addr, config)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick another --port"))?;
    if args.fault_rate > 0.0 {
        sim.set_random_faults(
            args.fault_rate.min(1.0),
            vec![
                Fault::Status {
                    status: 500,
                    retry_after_secs: None,
                },
                Fault::Status {
                    status: 503,
                    retry_after_secs: None,
                },
                Fault::ApplyThenStatus(502),
                Fault::Status {
                    status: 423,
                    retry_after_secs: None,
                },
            ],
            42,
        );
    }
    if args.latency_ms > 0 {
        sim.set_latency(Duration::from_millis(args.latency_ms));
    }
    if !args.script.is_empty() {
        sim.script(args.script.clone());
    }
    // The token is never printed; the default one is public.
    let token = if args.token.expose() == SIM_TOKEN {
        format!("token \"{SIM_TOKEN}\"")
    } else {
        "token from --token or HUBSPOT_ACCESS_TOKEN".to_string()
    };
    eprintln!(
        "HubSpot simulator listening on {} ({token}, {} requests per {} ms); Ctrl-C stops it",
        sim.base_url(),
        args.requests_per_window,
        args.window_ms
    );
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    cancel.cancelled().await;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `cancel` on SIGINT or SIGTERM.
pub(crate) fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested: finishing the batch in flight");
        cancel.cancel();
    });
}
