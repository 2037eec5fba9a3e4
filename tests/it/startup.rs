//! Start-up refusals, through the real binary: every config mistake exits non-zero with a
//! message naming the key and the fix, and nothing is consumed.

use hubspot_sim::{SimConfig, Simulator};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{CONFIG, database_url, enqueue_at, hubsync, stderr};

/// Runs `check` with a config and a token against nothing reachable: a config refusal must come
/// before any connection is tried.
fn refused(config: &str) -> String {
    let out = hubsync(
        &["check"],
        Some(config),
        &[
            ("HUBSPOT_ACCESS_TOKEN", "t"),
            ("HUBSPOT_BASE_URL", "http://127.0.0.1:9"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn a_missing_config_file_is_refused_with_where_to_put_it() {
    let out = hubsync(&["check"], None, &[("HUBSPOT_ACCESS_TOKEN", "t")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("missing.toml") && err.contains("HUBSYNC_CONFIG"),
        "{err}"
    );
}

#[test]
fn each_config_mistake_is_refused_naming_the_key_and_the_fix() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "[hubspot]\nrequests_per_10s = 100\nrate_limit = 5\n",
            "unknown key",
            &["rate_limit", "line 3"],
        ),
        (
            "[contacts.properties.plan]\ntype = \"enum\"\n",
            "bad type name",
            &[
                "\"enum\"",
                "line 2",
                "string, number, bool, date, datetime, enumeration",
            ],
        ),
        (
            "[contacts.properties.hs_plan]\ntype = \"string\"\n",
            "hs_ prefix",
            &["hs_plan", "line 1", "rename"],
        ),
        (
            "[contacts.properties.Plan]\ntype = \"string\"\n",
            "upper case",
            &["\"Plan\"", "lower-case"],
        ),
        (
            "[contacts.properties.plan]\ntype = \"enumeration\"\n",
            "enumeration without options",
            &["plan", "options = ["],
        ),
        (
            "[contacts.properties.plan]\ntype = \"string\"\nmerge = \"increment\"\n",
            "merge does not fit type",
            &["plan", "line 3", "increment works only on number"],
        ),
        (
            "[contacts.properties.seen]\ntype = \"bool\"\nmerge = \"max\"\n",
            "max on bool",
            &["seen", "max and min work only on number, date and datetime"],
        ),
        (
            "[contacts.properties.n]\ntype = \"number\"\nmerge = \"sum\"\n",
            "unknown merge rule",
            &["\"sum\"", "set, set_once, increment, max, min"],
        ),
        (
            "[hubspot]\nrequests_per_10s = \"fast\"\n",
            "wrong value type",
            &["requests_per_10s", "line 2"],
        ),
        (
            "[hubspot]\napi_version = \"v4\"\n",
            "unknown api version",
            &["api_version", "\"2026-03\"", "\"v3\""],
        ),
        (
            "[companies]\n",
            "companies without id_property",
            &["id_property", "line 1"],
        ),
        (
            "[contacts.properties.seen]\ntype = \"datetime\"\nmerge = \"max\"\n\n[companies.properties.seats]\ntype = \"number\"\n",
            "companies opened by a sub-table, without id_property",
            &["id_property", "line 5"],
        ),
        (
            &format!(
                "[contacts.properties.{}]\ntype = \"string\"\n",
                "x".repeat(100)
            ),
            "name too long",
            &["1 to 99 characters"],
        ),
        ("[hubspot\n", "malformed TOML", &["line 1"]),
    ];
    for (config, what, expected) in cases {
        let err = refused(config);
        for e in *expected {
            assert!(err.contains(e), "{what}: expected {e:?} in: {err}");
        }
    }
}

#[test]
fn a_missing_token_is_refused_before_anything_runs() {
    let out = hubsync(&["run"], Some(CONFIG), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("HUBSPOT_ACCESS_TOKEN") && err.contains("private app"),
        "{err}"
    );
}

#[test]
fn a_base_url_that_is_not_an_http_url_is_refused_before_any_request() {
    for (base, problem) in [
        ("not a url", "not an absolute URL"),
        ("ftp://api.hubapi.com", "scheme \"ftp\""),
        ("https://user:hunter2@", "empty host"),
    ] {
        let out = hubsync(
            &["check"],
            Some(CONFIG),
            &[("HUBSPOT_ACCESS_TOKEN", "t"), ("HUBSPOT_BASE_URL", base)],
        );
        assert_eq!(out.status.code(), Some(2), "{base}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("HUBSPOT_BASE_URL") && err.contains(problem),
            "{base}: {err}"
        );
        assert!(
            !err.contains("unreachable") && !err.contains("hunter2"),
            "{err}"
        );
    }
}

#[test]
fn a_rust_log_that_is_not_a_filter_is_said_not_ignored() {
    let out = hubsync(
        &["check"],
        Some(CONFIG),
        &[
            ("RUST_LOG", "hubsync=loud"),
            ("HUBSPOT_ACCESS_TOKEN", "t"),
            ("HUBSPOT_BASE_URL", "not a url"),
        ],
    );
    let err = stderr(&out);
    assert!(
        err.contains("RUST_LOG=\"hubsync=loud\" is not a log filter"),
        "{err}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_property_of_another_type_in_hubspot_refuses_start_and_consumes_nothing(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.define_property(
        "contacts",
        json!({"name": "current_plan", "label": "Plan", "type": "string", "fieldType": "text",
               "groupName": "contactinformation"}),
    );
    enqueue_at(
        &pool,
        "contact",
        "a@acme.com",
        json!({"total_sessions": 1}),
        chrono::Utc::now(),
    )
    .await;
    let url = database_url(&pool);
    let base = sim.base_url();
    let envs = [
        ("HUBSPOT_ACCESS_TOKEN", "sim-token"),
        ("HUBSPOT_BASE_URL", base.as_str()),
        ("DATABASE_URL", url.as_str()),
    ];
    let run = tokio::task::spawn_blocking({
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move || {
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (
                hubsync(&["run", "--until-idle"], Some(CONFIG), &envs),
                hubsync(&["check"], Some(CONFIG), &envs),
            )
        }
    });
    let (run, check) = run.await.unwrap();
    assert_ne!(run.status.code(), Some(0));
    let err = stderr(&run);
    let line = CONFIG
        .lines()
        .position(|l| l.trim() == "[contacts.properties.current_plan]")
        .unwrap()
        + 1;
    assert!(
        err.contains("\"current_plan\" is \"string\" in HubSpot but \"enumeration\"")
            && err.contains(&format!("(line {line})")),
        "{err}"
    );
    // The file named is the one in use.
    assert!(
        err.contains("/hubsync.toml does not match the portal's property definitions"),
        "{err}"
    );
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("MISMATCH"));
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM hubsync.outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waiting, 1, "nothing is consumed");
    assert!(
        sim.requests()
            .iter()
            .all(|r| !r.path.ends_with("/batch/upsert"))
    );
}

/// Starts against a portal whose `current_plan` has `options`; returns the simulator and the
/// options it then holds, as (value, label).
async fn start_with_plan_options(options: serde_json::Value) -> (Simulator, Vec<(String, String)>) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.define_property(
        "contacts",
        json!({"name": "current_plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
               "groupName": "contactinformation", "options": options}),
    );
    let config = crate::harness::parse_config(CONFIG);
    let client = crate::harness::client_for(&sim, &config);
    hubsync::reconcile::ensure(&client.into(), &config)
        .await
        .unwrap();
    let plan = sim.property("contacts", "current_plan").unwrap();
    let held = plan["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let text = |k: &str| o[k].as_str().unwrap().to_string();
            (text("value"), text("label"))
        })
        .collect();
    (sim, held)
}

#[sqlx::test(migrations = false)]
async fn start_up_creates_missing_properties_and_adds_missing_options(pool: PgPool) {
    let (sim, options) = start_with_plan_options(json!([
        {"label": "Legacy", "value": "legacy", "displayOrder": 0, "hidden": false},
        {"label": "Pro", "value": "pro", "displayOrder": 1, "hidden": false}
    ]))
    .await;
    let values: Vec<&str> = options.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(
        values,
        vec!["legacy", "pro", "free", "enterprise"],
        "the union, old ones kept"
    );
    let sessions = sim.property("contacts", "total_sessions").expect("created");
    assert_eq!(sessions["type"], "number");
    assert_eq!(sessions["groupName"], "product_signals");
    assert_eq!(
        sim.property("contacts", "last_active_at").unwrap()["type"],
        "datetime"
    );
    // A second start has nothing left to do.
    let config = crate::harness::parse_config(CONFIG);
    let client = crate::harness::client_for(&sim, &config);
    let again = hubsync::reconcile::plan(&client.into(), &config)
        .await
        .unwrap();
    assert!(
        again.create.is_empty() && again.add_options.is_empty() && again.create_groups.is_empty()
    );
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn the_v3_api_edition_uses_the_older_paths(pool: PgPool) {
    let text = CONFIG.replace("[hubspot]", "[hubspot]\napi_version = \"v3\"");
    let h = crate::harness::Harness::with(pool, &text, SimConfig::default()).await;
    h.setup().await;
    h.enqueue("v3@acme.com", json!({"total_sessions": 1})).await;
    h.drain().await;
    assert_eq!(
        h.prop("v3@acme.com", "total_sessions").as_deref(),
        Some("1")
    );
    let paths: Vec<String> = h.sim.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().all(|p| p.starts_with("/crm/v3/")
            || p.starts_with("/crm/v4/")
            || p == "/account-info/v3/details"),
        "{paths:?}"
    );
    assert!(paths.contains(&"/crm/v3/objects/contacts/batch/upsert".to_string()));
}

/// `check`, or a worker starting, with a token HubSpot refuses (a typo, a secret not rolled out
/// yet) fails by itself: it does not pause the running workers, whose token may be fine, and its
/// message names where the requests went.
#[sqlx::test(migrations = false)]
async fn a_process_starting_with_a_refused_token_pauses_no_worker(pool: PgPool) {
    crate::harness::migrate(&pool).await;
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let url = database_url(&pool);
    let base = sim.base_url();
    let envs = [
        ("HUBSPOT_ACCESS_TOKEN", "sim-tokn"),
        ("HUBSPOT_BASE_URL", base.as_str()),
        ("DATABASE_URL", url.as_str()),
    ];
    for args in [&["check"][..], &["run", "--until-idle"], &["run"]] {
        sim.reset_requests();
        let out = crate::harness::hubsync_beside(args, Some(CONFIG), &envs).await;
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("refused the access token") && err.contains(&base),
            "{args:?}: {err}"
        );
        assert!(!sim.requests().is_empty(), "{args:?} reached HubSpot");
        let paused: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM hubsync.limiter WHERE paused_until > clock_timestamp()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(paused, 0, "{args:?}: no pause for the workers: {err}");
    }
}

/// HubSpot wants each option's label once, as its value: an option hubsync adds takes its
/// value as label unless another option already has that label.
#[sqlx::test(migrations = false)]
async fn an_added_option_gets_a_label_no_other_option_has(pool: PgPool) {
    let (_sim, options) = start_with_plan_options(json!([
        {"label": "free", "value": "free_tier", "displayOrder": 0, "hidden": false},
        {"label": "pro", "value": "pro", "displayOrder": 1, "hidden": false}
    ]))
    .await;
    let options: Vec<(&str, &str)> = options
        .iter()
        .map(|(v, l)| (v.as_str(), l.as_str()))
        .collect();
    assert_eq!(
        options,
        vec![
            ("free_tier", "free"),
            ("pro", "pro"),
            ("free", "free (2)"),
            ("enterprise", "enterprise")
        ]
    );
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn a_database_mistake_is_named_with_its_cause(pool: PgPool) {
    // A database that does not exist: waiting cannot help, so the answer comes at once and
    // gives Postgres's reason.
    let url = database_url(&pool);
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = format!("{base}/hubsync_no_such_database");
    let out = hubsync(
        &["status"],
        Some(CONFIG),
        &[("DATABASE_URL", missing.as_str())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("hubsync_no_such_database") && err.contains("does not exist"),
        "{err}"
    );

    // A database without the schema: the message says which one.
    let out = hubsync(&["status"], Some(CONFIG), &[("DATABASE_URL", url.as_str())]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let name = url.rsplit('/').next().unwrap();
    assert!(
        err.contains("schema is missing") && err.contains(name),
        "{err}"
    );
}

#[sqlx::test(migrations = false)]
async fn errors_a_pooler_in_transaction_mode_causes_say_what_hubsync_needs(pool: PgPool) {
    // A statement prepared twice on one server connection: what sessions sharing connections
    // through a pooler in transaction mode run into.
    let twice =
        sqlx::raw_sql("PREPARE hubsync_twice AS SELECT 1; PREPARE hubsync_twice AS SELECT 1")
            .execute(&pool)
            .await
            .unwrap_err();
    let e = anyhow::Error::new(twice).context("cannot read hubsync.schema_migrations");
    let hint = hubsync::db::pooler_hint(&e).expect("a pooler's error is recognised");
    assert!(hint.contains("pool_mode = session"), "{hint}");
    // Any other database error says only what it is.
    let other = sqlx::query("SELECT 1 / 0")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(hubsync::db::pooler_hint(&anyhow::Error::new(other)).is_none());
}
