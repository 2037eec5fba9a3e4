//! hubsync's own migration history, `hubsync.schema_migrations`: the embedded migrations
//! (`migrations/`) are applied in version order under an advisory lock, each in one transaction
//! with its history row. Nothing outside schema `hubsync` is created or changed, except that an
//! install made before this history existed has its rows moved out of the application's
//! `_sqlx_migrations` (only the rows that are hubsync's own migrations; the table itself stays).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::migrate::{Migration, Migrator};
use sqlx::{Acquire, Executor, PgConnection, PgPool};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The key of the session advisory lock `migrate` holds ("hubsync" in ASCII), so that two
/// deploys migrating at once take turns. Advisory locks are per database.
pub const LOCK_KEY: i64 = 0x0068_7562_7379_6e63;

/// The history table, created before the first migration runs.
const HISTORY_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS hubsync;
CREATE TABLE IF NOT EXISTS hubsync.schema_migrations (
    version        bigint      PRIMARY KEY,
    description    text        NOT NULL,
    installed_on   timestamptz NOT NULL DEFAULT now(),
    success        boolean     NOT NULL,
    checksum       bytea       NOT NULL,
    execution_time bigint      NOT NULL
);
COMMENT ON TABLE hubsync.schema_migrations IS
    'Migrations hubsync has applied (hubsync migrate); the application''s own history is elsewhere.';
";

/// The highest version among the embedded migrations.
pub(crate) fn latest_embedded() -> i64 {
    up_migrations().map(|m| m.version).max().unwrap_or(0)
}

fn up_migrations() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

/// Creates or upgrades the `hubsync` schema. Safe to run again, and from several processes at
/// once (they take turns on an advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool
        .acquire()
        .await
        .context("cannot open a connection to migrate the hubsync schema")?;
    // The lock belongs to this session: closing the connection instead of returning it to the
    // pool releases it on every path, an error or a cancelled migration included.
    conn.close_on_drop();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await
        .context("cannot take the hubsync migration lock (pg_advisory_lock)")?;
    let applied = migrate_locked(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    applied?;
    unlocked.context("cannot release the hubsync migration lock")?;
    Ok(())
}

async fn migrate_locked(conn: &mut PgConnection) -> anyhow::Result<()> {
    let schema_existed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'hubsync')",
    )
    .fetch_one(&mut *conn)
    .await?;
    conn.execute(HISTORY_DDL)
        .await
        .context("cannot create schema hubsync or its history table as this role; run `hubsync migrate` as the role that owns schema hubsync (for a first install, one with CREATE on the database)")?;
    // A schema without history of its own: an install of the previous layout (or one whose
    // first migration failed). Once hubsync has history here, the application's table is never
    // looked at again.
    let history_empty: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM hubsync.schema_migrations)")
            .fetch_one(&mut *conn)
            .await?;
    if schema_existed && history_empty {
        adopt_previous_history(conn).await?;
    }
    let applied: Vec<(i64, String, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT version, description, checksum, success FROM hubsync.schema_migrations
         ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (version, description, checksum, success) in &applied {
        if !success {
            bail!(
                "hubsync migration {version} ({description}) failed part-way earlier; repair the schema by hand, delete its row from hubsync.schema_migrations, then run `hubsync migrate` again"
            );
        }
        match up_migrations().find(|m| m.version == *version) {
            None => bail!(
                "this database has hubsync migration {version} ({description}), which this hubsync does not have: a newer hubsync migrated it; run that version or a later one"
            ),
            Some(m) if *m.checksum != checksum[..] => bail!(
                "hubsync migration {version} ({description}) differs from the one applied to this database; build hubsync from an unmodified migrations/ directory"
            ),
            Some(_) => {}
        }
    }
    let mut pending: Vec<&Migration> = up_migrations()
        .filter(|m| applied.iter().all(|(v, ..)| *v != m.version))
        .collect();
    pending.sort_by_key(|m| m.version);
    for m in pending {
        apply(conn, m).await.with_context(|| {
            format!(
                "hubsync migration {} ({}) failed{}",
                m.version,
                m.description,
                if m.no_tx {
                    "; it runs outside a transaction, so check what it left behind"
                } else {
                    "; nothing of it was applied"
                }
            )
        })?;
        tracing::info!(
            version = m.version,
            "applied hubsync migration {}",
            m.description
        );
    }
    Ok(())
}

/// How long a migration waits for a lock on one of hubsync's tables before it lets go.
/// Waiting for a table lock (to add a column, replace a trigger) puts every later writer of
/// that table in the queue behind it: the application's inserts into the outbox included. So
/// a migration waits a little, gives way, and tries again a few times.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Tries before `migrate` gives up (about 15 s in all), and the pause between them.
const LOCK_TRIES: u32 = 5;
const LOCK_PAUSE: Duration = Duration::from_secs(1);

/// Applies one migration and records it, in one transaction unless the file asks for none.
async fn apply(conn: &mut PgConnection, m: &Migration) -> anyhow::Result<()> {
    let started = Instant::now();
    if m.no_tx {
        conn.execute(&*m.sql).await?;
        record(conn, m, started).await?;
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = conn.begin().await?;
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = {}",
            LOCK_WAIT.as_millis()
        ))
        .execute(&mut *tx)
        .await?;
        match tx.execute(&*m.sql).await {
            Ok(_) => {}
            Err(e) if is_lock_timeout(&e) && attempt < LOCK_TRIES => {
                tx.rollback().await?;
                tracing::warn!(
                    version = m.version,
                    "hubsync migration {} waits for a lock another session holds on a hubsync table; giving way to the application's writes, then trying again ({attempt} of {LOCK_TRIES})",
                    m.description
                );
                tokio::time::sleep(LOCK_PAUSE).await;
                continue;
            }
            Err(e) if is_lock_timeout(&e) => bail!(
                "another session held a lock on a hubsync table each time it was tried ({LOCK_TRIES} tries of {} s; {e}); often a transaction left open after writing to hubsync.outbox: look for it in pg_stat_activity (state 'idle in transaction'), end it, and run `hubsync migrate` again",
                LOCK_WAIT.as_secs()
            ),
            Err(e) => return Err(e.into()),
        }
        record(&mut tx, m, started).await?;
        tx.commit().await?;
        return Ok(());
    }
}

/// Whether `e` is Postgres giving up on a lock (`lock_timeout`, SQLSTATE 55P03).
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

async fn record(conn: &mut PgConnection, m: &Migration, started: Instant) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO hubsync.schema_migrations (version, description, success, checksum,
                                                execution_time)
         VALUES ($1, $2, true, $3, $4)",
    )
    .bind(m.version)
    .bind(&*m.description)
    .bind(&*m.checksum)
    .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Earlier versions recorded their migrations in sqlx's `_sqlx_migrations`, the table an
/// application using sqlx keeps its own history in. Moves the rows that are hubsync's (same
/// version, description and checksum as an embedded migration) into hubsync's history, in one
/// transaction, and leaves every other row and the table itself alone.
async fn adopt_previous_history(conn: &mut PgConnection) -> anyhow::Result<()> {
    // Resolved through the search path, as sqlx resolves it; quoted and qualified as needed.
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut *conn)
        .await?;
    let Some(table) = table else {
        return Ok(());
    };
    let ours: Vec<&Migration> = up_migrations().collect();
    let mut tx = conn.begin().await?;
    // `table` is Postgres's own rendering of an existing relation's name.
    let moved = sqlx::query(&format!(
        "WITH ours AS (
             SELECT * FROM unnest($1::int8[], $2::text[], $3::bytea[]) AS o(version, description, checksum)
         ), moved AS (
             DELETE FROM {table} l USING ours
             WHERE l.version = ours.version AND l.description = ours.description
               AND l.checksum = ours.checksum
             RETURNING l.version, l.description, l.installed_on, l.success, l.checksum,
                       l.execution_time
         )
         INSERT INTO hubsync.schema_migrations (version, description, installed_on, success,
                                                checksum, execution_time)
         SELECT * FROM moved
         ON CONFLICT (version) DO NOTHING"
    ))
    .bind(ours.iter().map(|m| m.version).collect::<Vec<_>>())
    .bind(ours.iter().map(|m| m.description.to_string()).collect::<Vec<_>>())
    .bind(ours.iter().map(|m| m.checksum.to_vec()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .with_context(|| {
        format!(
            "cannot move hubsync's rows from {table} into hubsync.schema_migrations; run `hubsync migrate` as the role that migrated this database before"
        )
    })?;
    tx.commit().await?;
    if moved.rows_affected() > 0 {
        tracing::info!(
            rows = moved.rows_affected(),
            "moved hubsync's migration history from {table} to hubsync.schema_migrations"
        );
    }
    Ok(())
}

/// What to do when this role cannot see hubsync's history.
const GRANT_HINT: &str = "cannot read hubsync.schema_migrations as this role; give it its privileges with sql/grants.sql (-v worker=ROLE or -v operator=ROLE)";

/// The highest migration applied to this database, `None` when hubsync was never migrated
/// here (or only by a version that kept its history in `_sqlx_migrations`).
pub(crate) async fn latest_applied(pool: &PgPool) -> anyhow::Result<Option<i64>> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('hubsync.schema_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await
            .map_err(with_grant_hint)?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM hubsync.schema_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(with_grant_hint)
}

/// The error, with [`GRANT_HINT`] when it is a refused privilege (and only then: any other
/// failure says what it is).
fn with_grant_hint(e: sqlx::Error) -> anyhow::Error {
    let refused = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "42501");
    if refused {
        anyhow::Error::new(e).context(GRANT_HINT)
    } else {
        anyhow::Error::new(e).context("cannot read hubsync.schema_migrations")
    }
}
