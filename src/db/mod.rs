//! Every SQL statement hubsync runs, as small named functions over a pool or a transaction.
//! Each says what it locks and why. No other module writes SQL.
//!
//! One lock order, for every transaction that takes row locks in more than one table:
//! outbox rows, then ledger rows, then object rows in key order, then DLQ rows. The limiter
//! row is only ever locked alone, by one statement. Ingest never waits for an object row
//! (`SKIP LOCKED`; events for a row held elsewhere go back to the outbox), so the only waits on
//! object rows are the recording statements of sync and replay, which all lock in key order
//! and give up after the session's `lock_timeout`. A statement that takes a lock out of this
//! order (replay claiming DLQ event rows before folding them) takes it with `SKIP LOCKED` and
//! never waits for the rows after it. No cycle of waits can form.

pub mod dlq;
pub(crate) mod generations;
pub(crate) mod ingest;
pub mod limiter;
pub mod migrations;
pub mod objects;
pub mod producer;
pub mod retention;
pub mod status;
pub mod wake;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use migrations::{MIGRATOR, migrate};

/// The query parameters sqlx reads from a database URL. Anything else is dropped before sqlx
/// parses the URL: sqlx would log the value of a parameter it does not know (`sslpassword`, a
/// misspelt `passwd`), and such a value may be a secret.
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Parses a database URL; returns the options and the names of the parameters it ignored.
/// Neither the URL nor any value in it appears in an error.
fn parse_url(url: &str) -> anyhow::Result<(PgConnectOptions, Vec<String>)> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| {
        anyhow::anyhow!(
            "DATABASE_URL is not a URL ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    })?;
    let (kept, ignored): (Vec<_>, Vec<_>) = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .partition(|(k, _)| URL_PARAMETERS.contains(&k.as_str()) || k.starts_with("options["));
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(&kept);
    }
    let options = PgConnectOptions::from_str(parsed.as_str()).map_err(|e| {
        anyhow::anyhow!(
            "DATABASE_URL is not a Postgres URL ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    })?;
    Ok((options, ignored.into_iter().map(|(k, _)| k).collect()))
}

/// Connect options from a database URL, with a warning naming (never showing) any parameter
/// that is ignored.
pub(crate) fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let (options, ignored) = parse_url(url)?;
    if !ignored.is_empty() {
        tracing::warn!(
            "DATABASE_URL: ignoring the parameters {} (not supported); remove them",
            ignored.join(", ")
        );
    }
    Ok(options)
}

/// Where the options lead, for messages: user, host, port and database, never the password.
pub(crate) fn describe(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_string(),
    };
    format!(
        "postgres://{}@{host}:{}/{}",
        options.get_username(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

/// A database URL for messages: user, host, port and database only.
pub fn redact(url: &str) -> String {
    match parse_url(url) {
        Ok((options, _)) => describe(&options),
        Err(_) => "(DATABASE_URL, which is not a valid Postgres URL)".to_string(),
    }
}

/// Connects to Postgres with a small pool.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    pool(connect_options(url)?, max_connections).await
}

/// The name worker sessions carry in `pg_stat_activity`, so an operator can tell them apart.
pub const APPLICATION_NAME: &str = "hubsync";

/// Connects the worker's pool: every session carries the worker's timeouts, so a statement
/// that hangs, a lock held elsewhere, or a transaction left open by a worker that was cut off
/// holds nothing for long. They are set once each connection opens, not sent as startup
/// `options`, which a pooler such as PgBouncer refuses, or drops when told to ignore them. A
/// connection that dies is replaced at the next use.
///
/// Each session also compresses the page images it writes to the WAL (`wal_compression`),
/// when its role may set that (a superuser, or `GRANT SET ON PARAMETER` on PostgreSQL 15 and
/// later); otherwise nothing changes. After a checkpoint the first change to a page writes the
/// whole page, and the objects' pages of merged JSON compress about six times: the WAL, backups
/// and replicas of the application's database carry less of hubsync. Only the WAL of hubsync's
/// own sessions is affected.
pub async fn connect_worker(
    url: &str,
    max_connections: u32,
    worker: &crate::config::WorkerSettings,
) -> anyhow::Result<PgPool> {
    let ms = |d: Duration| d.as_millis();
    let settings = format!(
        "SET statement_timeout = {}; SET lock_timeout = {}; \
         SET idle_in_transaction_session_timeout = {}",
        ms(worker.statement_timeout),
        ms(worker.lock_timeout),
        ms(worker.idle_in_transaction_timeout)
    );
    let options = connect_options(url)?.application_name(APPLICATION_NAME);
    pool_with(options, max_connections, Some(settings)).await
}

/// How long a command waits for Postgres to accept a first connection (a server restarting).
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Whether a failed connection will fail the same way however long one waits: refused
/// credentials (class 28), a database that does not exist (3D000), or a startup parameter a
/// connection pooler does not take (08P01).
fn lasting(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code.starts_with("28") || code == "3D000" || code == "08P01")
}

/// What hubsync needs of its connection, for the errors a pooler in transaction mode causes.
pub(crate) const SESSION_HINT: &str = "hubsync needs a connection of its own for each session: connect it to Postgres directly, or through PgBouncer in session mode (pool_mode = session), not transaction mode (see the README, \"Connection poolers\")";

/// [`SESSION_HINT`] when `e` comes from a connection pooler in transaction mode: a startup
/// parameter it refuses, or prepared statements found on, or missing from, a server
/// connection this session did not prepare them on.
pub fn pooler_hint(e: &anyhow::Error) -> Option<&'static str> {
    let pooled = e
        .chain()
        .any(|cause| cause.downcast_ref::<sqlx::Error>().is_some_and(from_pooler));
    pooled.then_some(SESSION_HINT)
}

/// Whether Postgres (or what stands in front of it) refused as a pooler in transaction mode
/// makes it refuse: a startup parameter, or a prepared statement that another session left on,
/// or did not make on, the server connection.
fn from_pooler(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        matches!(d.code().as_deref(), Some("42P05" | "26000"))
            || (d.code().as_deref() == Some("08P01") && d.message().contains("startup parameter"))
    })
}

/// Opens one connection before the pool does, so that a failure says why (the pool only
/// says it timed out): at once when waiting cannot help, otherwise after trying again for
/// up to [`CONNECT_PATIENCE`], saying once meanwhile that it waits.
async fn first_connection(options: &PgConnectOptions, place: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let give_up = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let mut said = false;
    loop {
        let error = match tokio::time::timeout_at(
            give_up,
            sqlx::PgConnection::connect_with(options),
        )
        .await
        {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => anyhow::bail!(
                "cannot connect to Postgres at {place}: no answer within {}s; check DATABASE_URL and that the server is running",
                CONNECT_PATIENCE.as_secs()
            ),
        };
        if lasting(&error) || tokio::time::Instant::now() + Duration::from_secs(1) >= give_up {
            // The error's own words only: its source would repeat them.
            if from_pooler(&error) {
                anyhow::bail!("cannot connect to Postgres at {place}: {error}; {SESSION_HINT}");
            }
            anyhow::bail!(
                "cannot connect to Postgres at {place}: {error}; check DATABASE_URL and that the server is running"
            );
        }
        if !said {
            tracing::warn!(
                "cannot connect to Postgres at {place} yet ({error}); trying again for up to {}s",
                CONNECT_PATIENCE.as_secs()
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn pool(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    pool_with(options, max_connections, None).await
}

/// Whether this session's role may set `wal_compression`: a superuser, or on PostgreSQL 15 and
/// later a role granted `SET` on it. Asked without a statement that fails on older servers.
async fn may_compress_wal(conn: &mut sqlx::PgConnection) -> bool {
    let Ok((superuser, version)): Result<(bool, i32), _> = sqlx::query_as(
        "SELECT current_setting('is_superuser') = 'on',
                current_setting('server_version_num')::int",
    )
    .fetch_one(&mut *conn)
    .await
    else {
        return false;
    };
    if superuser {
        return true;
    }
    version >= 150_000
        && sqlx::query_scalar("SELECT has_parameter_privilege('wal_compression', 'SET')")
            .fetch_one(&mut *conn)
            .await
            .unwrap_or(false)
}

/// A pool whose connections, when `settings` are given, run those statements as they open, then
/// try to compress the WAL's page images for the session (see [`connect_worker`]).
async fn pool_with(
    options: PgConnectOptions,
    max_connections: u32,
    settings: Option<String>,
) -> anyhow::Result<PgPool> {
    let place = describe(&options);
    first_connection(&options, &place).await?;
    let mut pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30));
    if let Some(settings) = settings {
        pool = pool.after_connect(move |conn, _| {
            let settings = settings.clone();
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute(settings.as_str()).await?;
                // Only where the role may (`connect_worker`): a refused SET would put an error
                // in the server's log for every connection.
                if may_compress_wal(&mut *conn).await
                    && let Err(e) = conn.execute("SET wal_compression = on").await
                {
                    tracing::debug!("page images in the WAL stay uncompressed: {e}");
                }
                Ok(())
            })
        });
    }
    pool.connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot connect to Postgres at {place}; check DATABASE_URL and that the server is running"
            )
        })
}

/// Drops the database `name` (closing its sessions) and creates it empty, through `admin`.
/// For `hubsync demo`'s own database only.
pub async fn recreate_database(admin: &mut sqlx::PgConnection, name: &str) -> anyhow::Result<()> {
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .execute(&mut *admin)
        .await
        .with_context(|| format!("cannot drop the database {name}"))?;
    sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut *admin)
        .await
        .with_context(|| {
            format!("cannot create the database {name}; the DATABASE_URL user needs CREATEDB")
        })?;
    Ok(())
}

/// Whether the database answers. Locks nothing.
pub(crate) async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// The statement that locks object rows in the one order `db` states (by key, within one
/// object type), selecting `columns`; `wait` is `""` (wait up to `lock_timeout`) or
/// `" SKIP LOCKED"`. Binds: `$1` object type, `$2` the keys.
pub(crate) fn lock_in_key_order(columns: &str, wait: &str) -> String {
    format!(
        "SELECT {columns} FROM hubsync.objects WHERE object_type = $1 AND object_key = ANY($2)
         ORDER BY object_key FOR UPDATE{wait}"
    )
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h:5432/db");
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret&sslpassword=secret&sslmode=prefer"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?port=6543"),
            "postgres://u@h:6543/db"
        );
        let err = format!(
            "{:#}",
            super::connect_options("postgres://u:secret@h:99999/db").unwrap_err()
        );
        assert!(
            !err.contains("secret") && err.contains("DATABASE_URL"),
            "{err}"
        );
    }
}
