//! `hubsync migrate` as a guest in the application's database: its history lives in
//! `hubsync.schema_migrations`, an application's sqlx history (`_sqlx_migrations`) is never
//! touched except to move hubsync's own rows out of it, and concurrent runs take turns.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::harness::{database_url, hubsync, stderr, tempdir};

/// `hubsync args` on this test's database.
fn on(pool: &PgPool, args: &[&str]) -> Output {
    hubsync(args, None, &[("DATABASE_URL", &database_url(pool))])
}

/// Every relation outside the system schemas and `hubsync`, as `schema.name`.
async fn foreign_relations(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'hubsync')
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The rows of the application's sqlx history, in full.
async fn app_history(pool: &PgPool) -> Vec<(i64, String, String, bool, Vec<u8>, i64)> {
    sqlx::query_as(
        "SELECT version, description, installed_on::text, success, checksum, execution_time
         FROM public._sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn hubsync_history(pool: &PgPool) -> Vec<(i64, String, Vec<u8>)> {
    sqlx::query_as(
        "SELECT version, description, checksum FROM hubsync.schema_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// hubsync's history with when each migration was applied.
async fn history_with_times(pool: &PgPool) -> Vec<(i64, String, Vec<u8>, String)> {
    sqlx::query_as(
        "SELECT version, description, checksum, installed_on::text FROM hubsync.schema_migrations
         ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every relation and function in schema `hubsync`, with its oid: an object dropped and
/// created again gets a new one.
async fn hubsync_objects(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT c.relname::text, c.oid::int8 FROM pg_class c
         WHERE c.relnamespace = 'hubsync'::regnamespace
         UNION ALL
         SELECT p.proname::text, p.oid::int8 FROM pg_proc p
         WHERE p.pronamespace = 'hubsync'::regnamespace
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// An application's migrations directory, as sqlx's CLI and `migrate!` read it.
fn app_migrations(files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = tempdir();
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).unwrap();
    }
    dir
}

async fn run_sqlx(dir: &Path, pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    Migrator::new(dir).await.unwrap().run(pool).await
}

fn embedded() -> Vec<(i64, String, Vec<u8>)> {
    hubsync::db::MIGRATOR
        .iter()
        .map(|m| (m.version, m.description.to_string(), m.checksum.to_vec()))
        .collect()
}

/// What the previous hubsync did: sqlx's migrator with migration 1, recording into
/// `_sqlx_migrations` beside the application's rows.
pub async fn previous_layout(pool: &PgPool) {
    let old = tempdir();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_hubsync.sql"),
        old.join("0001_hubsync.sql"),
    )
    .unwrap();
    let mut old_hubsync = Migrator::new(old.as_path()).await.unwrap();
    // It saw the application's rows as its own missing ones; that is what it had to be told.
    old_hubsync.set_ignore_missing(true);
    old_hubsync.run(pool).await.unwrap();
}

/// The application numbers its first migration 1 too: the worst case for a shared history.
const APP_FIRST: (&str, &str) = (
    "0001_users.sql",
    "CREATE TABLE public.users (id bigserial PRIMARY KEY, email text NOT NULL);",
);
const APP_SECOND: (&str, &str) = (
    "0002_users_name.sql",
    "ALTER TABLE public.users ADD COLUMN name text;",
);

#[sqlx::test(migrations = false)]
async fn migrating_twice_from_an_empty_database_is_harmless_and_stays_in_its_schema(pool: PgPool) {
    // Really empty: nothing of hubsync's, nothing of anyone else's.
    let schema: Option<String> = sqlx::query_scalar("SELECT to_regnamespace('hubsync')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(schema, None, "the database starts without schema hubsync");
    assert_eq!(foreign_relations(&pool).await, Vec::<String>::new());

    let out = on(&pool, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        hubsync_history(&pool).await,
        embedded(),
        "the first run applies every migration"
    );
    let first = history_with_times(&pool).await;
    let objects = hubsync_objects(&pool).await;

    let out = on(&pool, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        history_with_times(&pool).await,
        first,
        "the second run applies nothing again"
    );
    assert_eq!(
        hubsync_objects(&pool).await,
        objects,
        "the second run creates and replaces nothing"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'hubsync'
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "configs",
            "dlq",
            "ledger",
            "limiter",
            "objects",
            "outbox",
            "schema_migrations",
            "workers"
        ]
    );
    assert_eq!(foreign_relations(&pool).await, Vec::<String>::new());
    assert_eq!(hubsync_history(&pool).await, embedded());
    let out = on(&pool, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[sqlx::test(migrations = false)]
async fn an_application_migrated_first_keeps_its_history_and_its_migrator_stays_happy(
    pool: PgPool,
) {
    let app = app_migrations(&[APP_FIRST]);
    run_sqlx(&app, &pool).await.unwrap();
    let before = app_history(&pool).await;
    let out = on(&pool, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        app_history(&pool).await,
        before,
        "the app's rows are untouched"
    );
    assert_eq!(hubsync_history(&pool).await, embedded());
    // The application's migrator runs again, then with a new migration of its own.
    run_sqlx(&app, &pool).await.unwrap();
    std::fs::write(app.join(APP_SECOND.0), APP_SECOND.1).unwrap();
    run_sqlx(&app, &pool).await.unwrap();
    assert_eq!(app_history(&pool).await.len(), 2);
    hubsync::db::migrate(&pool).await.unwrap();
    assert_eq!(hubsync_history(&pool).await, embedded());
}

#[sqlx::test(migrations = false)]
async fn an_application_migrating_after_hubsync_finds_only_its_own_history(pool: PgPool) {
    hubsync::db::migrate(&pool).await.unwrap();
    assert!(
        foreign_relations(&pool).await.is_empty(),
        "no _sqlx_migrations"
    );
    let app = app_migrations(&[APP_FIRST, APP_SECOND]);
    run_sqlx(&app, &pool).await.unwrap();
    let versions: Vec<i64> = app_history(&pool).await.iter().map(|r| r.0).collect();
    assert_eq!(versions, [1, 2]);
    hubsync::db::migrate(&pool).await.unwrap();
    run_sqlx(&app, &pool).await.unwrap();
    assert_eq!(hubsync_history(&pool).await, embedded());
}

#[sqlx::test(migrations = false)]
async fn an_install_of_the_previous_layout_is_moved_to_its_own_history(pool: PgPool) {
    // The previous hubsync: sqlx's migrator with migration 1 only, sharing the application's
    // `_sqlx_migrations` (the application numbering by timestamp, as that required).
    let app = app_migrations(&[(
        "20240101000000_users.sql",
        "CREATE TABLE public.users (id bigserial PRIMARY KEY);",
    )]);
    run_sqlx(&app, &pool).await.unwrap();
    previous_layout(&pool).await;
    assert!(
        run_sqlx(&app, &pool).await.is_err(),
        "the application's migrator refuses hubsync's row"
    );
    let (installed_on,): (String,) =
        sqlx::query_as("SELECT installed_on::text FROM _sqlx_migrations WHERE version = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let app_rows: Vec<_> = app_history(&pool)
        .await
        .into_iter()
        .filter(|r| r.0 != 1)
        .collect();

    let out = on(&pool, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("run `hubsync migrate` first"));
    let out = on(&pool, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    assert_eq!(
        app_history(&pool).await,
        app_rows,
        "only hubsync's row left"
    );
    assert_eq!(hubsync_history(&pool).await, embedded());
    let (moved,): (String,) = sqlx::query_as(
        "SELECT installed_on::text FROM hubsync.schema_migrations WHERE version = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(moved, installed_on, "moved as it was, not applied again");
    // The application's own migrator now sees only its own history, without being told.
    run_sqlx(&app, &pool).await.unwrap();
    let out = on(&pool, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[sqlx::test(migrations = false)]
async fn deploys_migrating_at_once_take_turns(pool: PgPool) {
    let url = database_url(&pool);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || hubsync(&["migrate"], None, &[("DATABASE_URL", &url)]))
        })
        .collect();
    for run in runs {
        let out = run.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(hubsync_history(&pool).await, embedded());

    // While another session holds the lock, a migration waits for it.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(hubsync::db::migrations::LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { hubsync::db::migrate(&pool).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "migrate waits for the lock");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(hubsync::db::migrations::LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    waiting.await.unwrap().unwrap();
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "released at the end");
}

#[sqlx::test(migrations = false)]
async fn a_changed_or_unknown_migration_in_the_history_is_refused(pool: PgPool) {
    hubsync::db::migrate(&pool).await.unwrap();
    sqlx::query("UPDATE hubsync.schema_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&pool)
        .await
        .unwrap();
    let err = format!("{:#}", hubsync::db::migrate(&pool).await.unwrap_err());
    assert!(
        err.contains("migration 1 (hubsync) differs") && err.contains("migrations/"),
        "{err}"
    );
    sqlx::query("UPDATE hubsync.schema_migrations SET checksum = $1 WHERE version = 1;")
        .bind(embedded()[0].2.clone())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO hubsync.schema_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = format!("{:#}", hubsync::db::migrate(&pool).await.unwrap_err());
    assert!(err.contains("a newer hubsync migrated it"), "{err}");
}

/// Upgrading an outbox whose ids came from a serial's sequence: ids go on from where the
/// sequence stood (rows already numbered, ids drawn and not used), from an identity column.
#[sqlx::test(migrations = false)]
async fn the_outbox_ids_go_on_from_the_old_sequence_after_the_upgrade(pool: PgPool) {
    previous_layout(&pool).await;
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key)
         SELECT gen_random_uuid(), 'contact', 'u' || i || '@acme.com' FROM generate_series(1, 3) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Ids drawn by transactions that rolled back leave gaps; the next id is after them.
    sqlx::query("SELECT setval('hubsync.outbox_id_seq', 40)")
        .execute(&pool)
        .await
        .unwrap();
    let out = on(&pool, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let identity: String = sqlx::query_scalar(
        "SELECT is_identity FROM information_schema.columns
         WHERE table_schema = 'hubsync' AND table_name = 'outbox' AND column_name = 'id'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(identity, "YES");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key)
         VALUES (gen_random_uuid(), 'contact', 'v@acme.com') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(id, 41);
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM hubsync.outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        ids,
        [1, 2, 3, 41],
        "the rows before the upgrade keep their ids"
    );
}

/// An upgrade that needs a lock on the outbox while the application holds a transaction open on
/// it (here: an insert not yet committed) gives way instead of queueing every later insert
/// behind it: the application keeps inserting, and `migrate` stops after a few tries saying
/// what holds it up. Run again once that transaction is over, it finishes.
#[sqlx::test(migrations = false)]
async fn an_upgrade_gives_way_to_an_open_transaction_on_the_outbox(pool: PgPool) {
    previous_layout(&pool).await;
    let insert = "INSERT INTO hubsync.outbox (event_id, object_type, object_key)
                  VALUES (gen_random_uuid(), 'contact', 'app@acme.com')";
    let mut open = pool.begin().await.unwrap();
    sqlx::query(insert).execute(&mut *open).await.unwrap();

    let url = database_url(&pool);
    let migrate = tokio::spawn({
        let url = url.clone();
        async move {
            crate::harness::hubsync_beside(&["migrate"], None, &[("DATABASE_URL", &url)]).await
        }
    });
    // The application goes on inserting while the upgrade waits for its turn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), sqlx::query(insert).execute(&pool))
            .await
            .expect("an insert is not held up behind the upgrade")
            .unwrap();
    }
    let out = migrate.await.unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("idle in transaction") && err.contains("nothing of it was applied"),
        "{err}"
    );
    open.commit().await.unwrap();

    let out = on(&pool, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(hubsync_history(&pool).await, embedded());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 4);
}
