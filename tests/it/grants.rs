//! `sql/grants.sql` applied with psql, as an administrator would: each role can do what its
//! job needs and is refused the rest.

use std::process::Command;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::harness::{CONFIG, Harness, hubsync_beside, psql_output, stderr};

/// Login roles of this test only (roles are shared by every database of the server, and tests
/// run in parallel), dropped when the test ends, passed or failed.
struct Roles {
    producer: String,
    worker: String,
    operator: String,
    admin_url: String,
}

impl Roles {
    async fn create(pool: &PgPool) -> Roles {
        let tag = &Uuid::new_v4().simple().to_string()[..12];
        let roles = Roles {
            producer: format!("hs_{tag}_producer"),
            worker: format!("hs_{tag}_worker"),
            operator: format!("hs_{tag}_operator"),
            admin_url: url_as(pool, "postgres"),
        };
        for role in roles.all() {
            sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
                .execute(pool)
                .await
                .unwrap();
        }
        roles
    }

    fn all(&self) -> [&str; 3] {
        [&self.producer, &self.worker, &self.operator]
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let names = self.all().join(", ");
        // Synchronous, so that it also runs while a failed test unwinds.
        let dropped = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-c")
            .arg(format!("DROP OWNED BY {names}"))
            .arg("-c")
            .arg(format!("DROP ROLE {names}"))
            .output();
        if !dropped.is_ok_and(|o| o.status.success()) {
            eprintln!("could not drop the test roles {names}");
        }
    }
}

/// This test's database as `role` (the server trusts local logins).
fn url_as(pool: &PgPool, role: &str) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{role}@{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

async fn pool_as(pool: &PgPool, role: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone().username(role))
        .await
        .unwrap()
}

/// Runs sql/grants.sql with these psql variables; returns (success, stderr).
fn grants(pool: &PgPool, vars: &[(&str, &str)]) -> (bool, String) {
    let out = psql_output(pool, "sql/grants.sql", vars);
    (out.status.success(), stderr(&out))
}

fn grant_all(pool: &PgPool, roles: &Roles) {
    let (ok, err) = grants(
        pool,
        &[
            ("producer", &roles.producer),
            ("worker", &roles.worker),
            ("operator", &roles.operator),
        ],
    );
    assert!(ok, "{err}");
}

/// Runs `sql` as the pool's role and expects "permission denied".
async fn refused(pool: &PgPool, sql: &str) {
    match sqlx::query(sql).execute(pool).await {
        Err(e) => assert!(e.to_string().contains("permission denied"), "{sql}: {e}"),
        Ok(_) => panic!("allowed, but must be refused: {sql}"),
    }
}

async fn enqueue(pool: &PgPool, id: Uuid, key: &str, props: serde_json::Value) -> bool {
    sqlx::query_scalar("SELECT hubsync.enqueue($1, 'contact', $2, $3::jsonb)")
        .bind(id)
        .bind(key)
        .bind(props.to_string())
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn insert(pool: &PgPool, id: Uuid, key: &str) -> u64 {
    sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at)
         VALUES ($1, 'contact', $2, '{\"total_sessions\": 1}', $3)",
    )
    .bind(id)
    .bind(key)
    .bind(Utc::now())
    .execute(pool)
    .await
    .unwrap()
    .rows_affected()
}

#[sqlx::test(migrations = false)]
async fn the_producer_can_enqueue_and_insert_and_nothing_else(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let roles = Roles::create(&pool).await;
    let (ok, err) = grants(&pool, &[]);
    assert!(!ok && err.contains("no role given"), "{err}");
    // Safe to repeat.
    grant_all(&pool, &roles);
    grant_all(&pool, &roles);
    let producer = pool_as(&pool, &roles.producer).await;

    let id = Uuid::new_v4();
    assert!(enqueue(&producer, id, "p@acme.com", json!({"total_sessions": 1})).await);
    assert!(!enqueue(&producer, id, "p@acme.com", json!({"total_sessions": 1})).await);
    // A time-ordered id from the schema's helper.
    let ordered: bool = sqlx::query_scalar(
        "SELECT hubsync.enqueue(event_id => hubsync.new_event_id(), object_type => 'contact',
                                object_key => 'o@acme.com', properties => '{}')",
    )
    .fetch_one(&producer)
    .await
    .expect("the producer can draw a new event id");
    assert!(ordered);
    let plain = Uuid::new_v4();
    assert_eq!(insert(&producer, plain, "q@acme.com").await, 1);
    assert_eq!(insert(&producer, plain, "q@acme.com").await, 0, "known id");
    assert_eq!(insert(&producer, id, "p@acme.com").await, 0, "known id");
    // NULL where enqueue takes a default: the same default, not a failed transaction.
    let nulls = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, properties, occurred_at,
                                     company_key)
         VALUES ($1, 'contact', 'n@acme.com', NULL, NULL, NULL)",
    )
    .bind(nulls)
    .execute(&producer)
    .await
    .expect("NULLs take enqueue's defaults");
    assert_eq!(inserted.rows_affected(), 1);
    let (properties, age): (String, f64) = sqlx::query_as(
        "SELECT properties::text, extract(epoch FROM now() - occurred_at)::float8
         FROM hubsync.outbox WHERE event_id = $1",
    )
    .bind(nulls)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(properties, "{}");
    assert!((0.0..60.0).contains(&age), "occurred_at {age} s ago");
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waiting, 4);

    for sql in [
        "SELECT * FROM hubsync.outbox",
        "SELECT count(*) FROM hubsync.outbox",
        "SELECT * FROM hubsync.objects",
        "SELECT * FROM hubsync.dlq",
        "SELECT * FROM hubsync.ledger",
        "SELECT * FROM hubsync.limiter",
        "SELECT * FROM hubsync.schema_migrations",
        "DELETE FROM hubsync.outbox",
        "UPDATE hubsync.outbox SET properties = '{}'",
        "INSERT INTO hubsync.outbox (id, event_id, object_type, object_key)
         VALUES (1, gen_random_uuid(), 'contact', 'r@acme.com')",
        // The mark that spares enqueue's rows the trigger: a producer cannot skip the check.
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key, via_enqueue)
         VALUES (gen_random_uuid(), 'contact', 'r@acme.com', true)",
        "INSERT INTO hubsync.dlq (kind, object_type, object_key, payload, error_category, error_message)
         VALUES ('event', 'contact', 'x', '{}', 'x', 'x')",
        "INSERT INTO hubsync.ledger (event_id) VALUES (gen_random_uuid())",
        "SELECT hubsync.outbox_skip_known()",
        "SELECT nextval(pg_get_serial_sequence('hubsync.outbox', 'id'))",
        "CREATE TABLE hubsync.mine (id int)",
    ] {
        refused(&producer, sql).await;
    }
    producer.close().await;
    drop(roles);
}

#[sqlx::test(migrations = false)]
async fn the_worker_runs_the_pipeline_and_the_operator_reads_and_replays_the_dlq(pool: PgPool) {
    let h = Harness::new(pool.clone()).await;
    let roles = Roles::create(&pool).await;
    grant_all(&pool, &roles);
    let worker = pool_as(&pool, &roles.worker).await;
    let tables_without_worker: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'hubsync' AND c.relkind IN ('r', 'p')
           AND NOT has_table_privilege($1, c.oid, 'SELECT')",
    )
    .bind(&roles.worker)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        tables_without_worker.is_empty(),
        "sql/grants.sql gives the worker nothing on {tables_without_worker:?}; add what it needs"
    );

    let producer = pool_as(&pool, &roles.producer).await;
    let done = Uuid::new_v4();
    enqueue(&producer, done, "w@acme.com", json!({"total_sessions": 3})).await;
    insert(&producer, Uuid::new_v4(), "w@acme.com").await;
    enqueue(
        &producer,
        Uuid::new_v4(),
        "bad@acme.com",
        json!({"nope": 1}),
    )
    .await;

    let base = h.sim.base_url();
    let as_worker = url_as(&pool, &roles.worker);
    let run = async |args: &[&str], url: &str| {
        let envs = [
            ("DATABASE_URL", url),
            ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
            ("HUBSPOT_BASE_URL", base.as_str()),
        ];
        hubsync_beside(args, Some(CONFIG), &envs).await
    };
    let out = run(&["run", "--until-idle"], &as_worker).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(h.prop("w@acme.com", "total_sessions").as_deref(), Some("4"));
    assert_eq!(h.count("dlq").await, 1);
    // The ledger answers the producer through the trigger and enqueue, which it cannot read.
    assert!(!enqueue(&producer, done, "w@acme.com", json!({"total_sessions": 3})).await);
    assert_eq!(insert(&producer, done, "w@acme.com").await, 0);
    for args in [&["status"][..], &["dlq", "list"], &["dlq", "summary"]] {
        let out = run(args, &as_worker).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    refused(&worker, "CREATE TABLE public.mine (id int)").await;
    refused(&worker, "CREATE TABLE hubsync.mine (id int)").await;
    refused(&worker, "DELETE FROM hubsync.schema_migrations").await;
    refused(&worker, "INSERT INTO hubsync.outbox (event_id, object_type, object_key) VALUES (gen_random_uuid(), 'contact', 'x')").await;
    let out = run(&["migrate"], &as_worker).await;
    assert_ne!(out.status.code(), Some(0), "the worker cannot migrate");

    let as_operator = url_as(&pool, &roles.operator);
    let operator = pool_as(&pool, &roles.operator).await;
    for args in [
        &["status"][..],
        &["dlq", "summary"],
        &["dlq", "list"],
        &["dlq", "retry", "--all"],
        &["dlq", "purge", "--older-than", "30"],
    ] {
        let out = run(args, &as_operator).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let id: i64 = sqlx::query_scalar("SELECT id FROM hubsync.dlq")
        .fetch_one(&pool)
        .await
        .unwrap();
    let out = run(&["dlq", "show", &id.to_string()], &as_operator).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("nope"));
    let out = run(&["dlq", "discard", &id.to_string()], &as_operator).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(h.count("dlq").await, 0);
    for sql in [
        "SELECT * FROM hubsync.outbox",
        "SELECT state FROM hubsync.objects",
        "SELECT * FROM hubsync.ledger",
        "UPDATE hubsync.dlq SET payload = '{}'",
        "INSERT INTO hubsync.outbox (event_id, object_type, object_key) VALUES (gen_random_uuid(), 'contact', 'x')",
        "DELETE FROM hubsync.outbox",
    ] {
        refused(&operator, sql).await;
    }
    for p in [producer, worker, operator] {
        p.close().await;
    }
    drop(roles);
}

#[sqlx::test(migrations = false)]
async fn a_role_that_could_insert_before_the_upgrade_keeps_calling_enqueue(pool: PgPool) {
    crate::migrations::previous_layout(&pool).await;
    let roles = Roles::create(&pool).await;
    for sql in [
        format!("GRANT USAGE ON SCHEMA hubsync TO {}", roles.producer),
        format!(
            "GRANT SELECT, INSERT ON hubsync.outbox TO {}",
            roles.producer
        ),
        format!("GRANT SELECT ON hubsync.ledger TO {}", roles.producer),
        format!(
            "GRANT USAGE ON SEQUENCE hubsync.outbox_id_seq TO {}",
            roles.producer
        ),
        // Another role that can see the schema, to show that calling is no longer for everyone.
        format!("GRANT USAGE ON SCHEMA hubsync TO {}", roles.worker),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    crate::harness::migrate(&pool).await;
    let producer = pool_as(&pool, &roles.producer).await;
    assert!(enqueue(&producer, Uuid::new_v4(), "u@acme.com", json!({})).await);
    let worker = pool_as(&pool, &roles.worker).await;
    refused(
        &worker,
        "SELECT hubsync.enqueue(gen_random_uuid(), 'contact', 'x', '{}')",
    )
    .await;
    producer.close().await;
    worker.close().await;
    drop(roles);
}

#[sqlx::test(migrations = false)]
async fn a_migrating_role_that_cannot_read_the_applications_history_migrates_again(pool: PgPool) {
    let app = crate::harness::tempdir();
    std::fs::write(app.join("0001_users.sql"), "CREATE TABLE users (id int);").unwrap();
    sqlx::migrate::Migrator::new(app.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let roles = Roles::create(&pool).await;
    // The worker role stands in for an owner of its own, with no rights on the app's tables.
    let owner = &roles.worker;
    sqlx::query(&format!(
        "DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO {owner}', current_database()); END $$"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let as_owner = url_as(&pool, owner);
    for _ in 0..2 {
        let out = hubsync_beside(&["migrate"], None, &[("DATABASE_URL", &as_owner)]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let owns: String = sqlx::query_scalar(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'hubsync'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(&owns, owner);
    sqlx::query(&format!(
        "DO $$ BEGIN EXECUTE format('REVOKE CREATE ON DATABASE %I FROM {owner}', current_database()); END $$"
    ))
    .execute(&pool)
    .await
    .unwrap();
    drop(roles);
}

/// The producer functions run as the schema's owner, so whatever they call must be what they
/// mean whatever the caller's `search_path` (their own fixed search path sees to it). A
/// producer puts a schema of its own, holding look-alikes of every function, operator and type
/// their bodies use, before pg_catalog; each look-alike fails loudly if reached. A worker waits,
/// so that the notifying branches run too, and enqueue is given NULLs, so that its defaults for
/// them run.
#[sqlx::test(migrations = false)]
async fn a_producers_search_path_cannot_reach_into_the_producer_functions(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let roles = Roles::create(&pool).await;
    grant_all(&pool, &roles);
    sqlx::query(&format!(
        "CREATE SCHEMA lookalike AUTHORIZATION {}",
        roles.producer
    ))
    .execute(&pool)
    .await
    .unwrap();
    // An id in the ledger, so that its checks compare ids rather than meet an empty table.
    sqlx::query("INSERT INTO hubsync.ledger (event_id) VALUES ($1)")
        .bind(Uuid::from_u128(99))
        .execute(&pool)
        .await
        .unwrap();
    let mut waiting = hubsync::db::wake::connect(&pool).await.unwrap();
    hubsync::db::wake::hold_slots(&mut waiting).await.unwrap();

    let producer = pool_as(&pool, &roles.producer).await;
    let mut conn = producer.acquire().await.unwrap();
    sqlx::raw_sql(
        r#"
        CREATE FUNCTION lookalike.reached(what text) RETURNS boolean LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'reached through the search path: %', what; END $$;
        CREATE FUNCTION lookalike.now() RETURNS timestamptz LANGUAGE sql AS
            $$ SELECT CASE WHEN lookalike.reached('now') THEN pg_catalog.now() END $$;
        CREATE FUNCTION lookalike.current_setting(text, boolean) RETURNS text LANGUAGE sql AS
            $$ SELECT CASE WHEN lookalike.reached('current_setting') THEN '' END $$;
        CREATE FUNCTION lookalike.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS
            $$ SELECT CASE WHEN lookalike.reached('set_config') THEN '' END $$;
        CREATE FUNCTION lookalike.txid_current() RETURNS bigint LANGUAGE sql AS
            $$ SELECT CASE WHEN lookalike.reached('txid_current') THEN 0::bigint END $$;
        CREATE FUNCTION lookalike.pg_try_advisory_xact_lock(integer, integer) RETURNS boolean
            LANGUAGE sql AS $$ SELECT lookalike.reached('pg_try_advisory_xact_lock') $$;
        CREATE FUNCTION lookalike.pg_notify(text, text) RETURNS void LANGUAGE sql AS
            $$ SELECT CASE WHEN lookalike.reached('pg_notify') THEN NULL::void END $$;
        CREATE FUNCTION lookalike.uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE sql AS
            $$ SELECT lookalike.reached('= on uuid') $$;
        CREATE OPERATOR lookalike.= (LEFTARG = uuid, RIGHTARG = uuid,
            FUNCTION = lookalike.uuid_eq);
        CREATE FUNCTION lookalike.text_op(text, text) RETURNS boolean LANGUAGE sql AS
            $$ SELECT lookalike.reached('an operator on text') $$;
        CREATE OPERATOR lookalike.= (LEFTARG = text, RIGHTARG = text,
            FUNCTION = lookalike.text_op);
        CREATE OPERATOR lookalike.<> (LEFTARG = text, RIGHTARG = text,
            FUNCTION = lookalike.text_op);
        CREATE FUNCTION lookalike.int8_mod(bigint, integer) RETURNS bigint LANGUAGE sql AS
            $$ SELECT CASE WHEN lookalike.reached('%') THEN 0::bigint END $$;
        CREATE OPERATOR lookalike.% (LEFTARG = bigint, RIGHTARG = integer,
            FUNCTION = lookalike.int8_mod);
        CREATE FUNCTION lookalike.int4_gt(integer, integer) RETURNS boolean LANGUAGE sql AS
            $$ SELECT lookalike.reached('> on integer') $$;
        CREATE OPERATOR lookalike.> (LEFTARG = integer, RIGHTARG = integer,
            FUNCTION = lookalike.int4_gt);
        CREATE TYPE lookalike.jsonb AS (reached text);
        SET search_path = lookalike, pg_catalog;
        -- Set, so that comparisons with it are made rather than skipped as NULL.
        SET hubsync.notify = 'on';
        "#,
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // The look-alikes are what this session's own unqualified names reach.
    let own = sqlx::query("SELECT pg_try_advisory_xact_lock(1, 1)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert!(
        own.to_string().contains("reached through the search path"),
        "{own}"
    );

    for round in ["new", "known"] {
        let id = Uuid::from_u128(1);
        let queued: bool = sqlx::query_scalar(
            "SELECT hubsync.enqueue(event_id => $1, object_type => 'contact',
                                    object_key => 'p@acme.com', properties => NULL,
                                    occurred_at => NULL)",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("enqueue, {round} id: {e}"));
        assert_eq!(queued, round == "new", "enqueue, {round} id");
        let inserted = sqlx::query(
            "INSERT INTO hubsync.outbox (event_id, object_type, object_key)
             VALUES ('00000000-0000-0000-0000-000000000002', 'contact', 'q@acme.com')",
        )
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("plain INSERT, {round} id: {e}"))
        .rows_affected();
        assert_eq!(
            inserted,
            u64::from(round == "new"),
            "plain INSERT, {round} id"
        );
    }
    // properties may be left out, like occurred_at and company_key.
    let queued: bool = sqlx::query_scalar(
        "SELECT hubsync.enqueue(event_id => '00000000-0000-0000-0000-000000000003',
                                object_type => 'contact', object_key => 'r@acme.com',
                                company_key => 'acct_1')",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("enqueue without properties: {e}"));
    assert!(queued);
    let waiting_rows: Vec<(Uuid, serde_json::Value)> =
        sqlx::query_as("SELECT event_id, properties FROM hubsync.outbox ORDER BY event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        waiting_rows,
        [
            (Uuid::from_u128(1), json!({})),
            (Uuid::from_u128(2), json!({})),
            (Uuid::from_u128(3), json!({}))
        ]
    );
    drop(conn);
    producer.close().await;
    drop(waiting);
    drop(roles);
}

/// A second copy of an `event_id` sent while the first one's transaction is still open, as the
/// producer role: `enqueue` waits and answers `false`; `INSERT ... ON CONFLICT DO NOTHING` waits
/// and inserts nothing; a bare `INSERT` waits and fails with `unique_violation`. One row either
/// way.
#[sqlx::test(migrations = false)]
async fn a_copy_sent_while_the_first_is_uncommitted_waits_for_it(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let roles = Roles::create(&pool).await;
    grant_all(&pool, &roles);
    let producer = pool_as(&pool, &roles.producer).await;
    const ON_CONFLICT: &str = "INSERT INTO hubsync.outbox (event_id, object_type, object_key)
         VALUES ($1, 'contact', 'c@acme.com') ON CONFLICT DO NOTHING";
    const BARE: &str = "INSERT INTO hubsync.outbox (event_id, object_type, object_key)
         VALUES ($1, 'contact', 'c@acme.com')";
    for (first_by_enqueue, second) in [
        (true, "enqueue"),
        (false, "enqueue"),
        (true, ON_CONFLICT),
        (false, ON_CONFLICT),
        (true, BARE),
        (false, BARE),
    ] {
        let id = Uuid::new_v4();
        let mut first = producer.begin().await.unwrap();
        if first_by_enqueue {
            let queued: bool =
                sqlx::query_scalar("SELECT hubsync.enqueue($1, 'contact', 'c@acme.com', '{}')")
                    .bind(id)
                    .fetch_one(&mut *first)
                    .await
                    .unwrap();
            assert!(queued);
        } else {
            sqlx::query(BARE)
                .bind(id)
                .execute(&mut *first)
                .await
                .unwrap();
        }
        let copy = tokio::spawn({
            let producer = producer.clone();
            async move {
                if second == "enqueue" {
                    sqlx::query_scalar::<_, bool>(
                        "SELECT hubsync.enqueue($1, 'contact', 'c@acme.com', '{}')",
                    )
                    .bind(id)
                    .fetch_one(&producer)
                    .await
                    .map(u64::from)
                } else {
                    sqlx::query(second)
                        .bind(id)
                        .execute(&producer)
                        .await
                        .map(|r| r.rows_affected())
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !copy.is_finished(),
            "the copy waits for the first transaction"
        );
        first.commit().await.unwrap();
        let answer = copy.await.unwrap();
        let case = format!("first by enqueue: {first_by_enqueue}, then {second}");
        if second == BARE {
            let e = answer.expect_err(&case);
            let db = e.as_database_error().expect("a database error");
            assert_eq!(db.code().as_deref(), Some("23505"), "{case}: {e}");
            assert_eq!(db.constraint(), Some("outbox_event_id"), "{case}: {e}");
        } else {
            assert_eq!(answer.expect(&case), 0, "{case}: nothing queued twice");
        }
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM hubsync.outbox WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 1, "{case}");
    }
    producer.close().await;
    drop(roles);
}

/// The worker's sessions compress the WAL's page images when the role may set that, and
/// connect all the same when it may not.
#[sqlx::test(migrations = false)]
async fn a_worker_role_compresses_its_wal_only_where_it_may(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let roles = Roles::create(&pool).await;
    let config = crate::harness::parse_config(CONFIG);
    let compression = || async {
        let worker = hubsync::db::connect_worker(&url_as(&pool, &roles.worker), 1, &config.worker)
            .await
            .expect("the worker connects either way");
        let shown: String = sqlx::query_scalar("SELECT current_setting('wal_compression')")
            .fetch_one(&worker)
            .await
            .unwrap();
        worker.close().await;
        shown
    };
    assert_eq!(compression().await, "off");
    sqlx::query(&format!(
        "GRANT SET ON PARAMETER wal_compression TO {}",
        roles.worker
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(compression().await, "pglz");
    sqlx::query(&format!(
        "REVOKE SET ON PARAMETER wal_compression FROM {}",
        roles.worker
    ))
    .execute(&pool)
    .await
    .unwrap();
    drop(roles);
}
