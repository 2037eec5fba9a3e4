//! Reconciling hubsync.toml with a populated portal: what people set up in HubSpot is kept
//! exactly, and names hubsync must not write into are refused, naming the property and why.

use hubspot_sim::{SimConfig, Simulator};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{CONFIG, client_for, parse_config};

async fn sim() -> Simulator {
    Simulator::start(SimConfig::default()).await.unwrap()
}

/// The error `ensure` gives for `config`, and that `plan` (what `check` prints) lists it too.
async fn refused(sim: &Simulator, config: &str) -> String {
    let config = parse_config(config);
    let client = client_for(sim, &config);
    let plan = hubsync::reconcile::plan(&client.clone().into(), &config)
        .await
        .unwrap();
    assert!(!plan.mismatches.is_empty(), "check must report a mismatch");
    let err = hubsync::reconcile::ensure(&client.clone().into(), &config)
        .await
        .expect_err("start must be refused");
    format!("{err:#}")
}

#[sqlx::test(migrations = false)]
async fn adding_options_keeps_every_existing_option_exactly(pool: PgPool) {
    let sim = sim().await;
    let existing = json!([
        {"label": "Pro plan", "value": "pro", "displayOrder": 3, "hidden": false, "description": "paying"},
        {"label": "Legacy", "value": "legacy", "displayOrder": 7, "hidden": true, "description": "retired 2024"},
        {"label": "Free plan", "value": "free", "displayOrder": 1, "hidden": false, "description": ""}
    ]);
    sim.define_property(
        "contacts",
        json!({"name": "current_plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
               "groupName": "contactinformation", "options": existing}),
    );
    let config = parse_config(CONFIG);
    hubsync::reconcile::ensure(&client_for(&sim, &config).into(), &config)
        .await
        .unwrap();
    let options = sim.property("contacts", "current_plan").unwrap()["options"].clone();
    let options = options.as_array().unwrap();
    assert_eq!(options.len(), 4, "{options:?}");
    assert_eq!(&options[..3], existing.as_array().unwrap().as_slice());
    assert_eq!(options[3]["value"], "enterprise");
    assert_eq!(options[3]["label"], "enterprise");
    assert_eq!(options[3]["displayOrder"], 8, "after every existing one");
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn names_hubspot_defines_calculates_or_makes_read_only_are_refused(pool: PgPool) {
    let sim = sim().await;
    for (name, why) in [
        ("company", "defined by HubSpot"),
        ("lifecyclestage", "defined by HubSpot"),
        ("total_revenue", "calculated by HubSpot"),
        ("hs_additional_emails", ""),
    ] {
        let text = format!("{CONFIG}\n[contacts.properties.{name}]\ntype = \"string\"\n");
        if name.starts_with("hs_") {
            // Refused by the config itself, before HubSpot is asked.
            assert!(hubsync::config::Config::parse("hubsync.toml".as_ref(), &text).is_err());
            continue;
        }
        let err = refused(&sim, &text).await;
        assert!(
            err.contains(&format!("\"{name}\"")) && err.contains(why),
            "{err}"
        );
        assert!(err.contains("line"), "names the line: {err}");
    }
    let text = CONFIG.replace(
        "[companies.properties.seats]",
        "[companies.properties.annualrevenue]\ntype = \"number\"\nmerge = \"set\"\n\n[companies.properties.seats]",
    );
    let err = refused(&sim, &text).await;
    assert!(
        err.contains("\"annualrevenue\"") && err.contains("defined by HubSpot"),
        "{err}"
    );
    // A read-only custom property.
    sim.define_property(
        "contacts",
        json!({"name": "total_sessions", "label": "S", "type": "number", "fieldType": "number",
               "groupName": "contactinformation",
               "modificationMetadata": {"archivable": true, "readOnlyDefinition": false, "readOnlyValue": true}}),
    );
    let err = refused(&sim, CONFIG).await;
    assert!(
        err.contains("\"total_sessions\"") && err.contains("read-only"),
        "{err}"
    );
    assert!(
        sim.requests().iter().all(|r| r.method == "GET"),
        "nothing in the portal is changed"
    );
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn an_archived_property_of_that_name_is_refused_with_the_fix(pool: PgPool) {
    let sim = sim().await;
    let config = parse_config(CONFIG);
    hubsync::reconcile::ensure(&client_for(&sim, &config).into(), &config)
        .await
        .unwrap();
    assert!(sim.archive_property("contacts", "total_sessions"));
    let err = refused(&sim, CONFIG).await;
    assert!(
        err.contains("\"total_sessions\"")
            && err.contains("archived")
            && err.contains("restore it in HubSpot")
            && err.contains("pick another name"),
        "{err}"
    );
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn a_name_a_sensitive_property_holds_is_refused(pool: PgPool) {
    // Each level is listed only with its own dataSensitivity, so the plain list shows neither.
    for level in ["sensitive", "highly_sensitive"] {
        let sim = sim().await;
        sim.define_property(
            "contacts",
            json!({"name": "current_plan", "label": "Plan", "type": "string",
                   "fieldType": "text", "groupName": "contactinformation",
                   "dataSensitivity": level}),
        );
        let err = refused(&sim, CONFIG).await;
        assert!(
            err.contains("\"current_plan\"")
                && err.contains("sensitive")
                && err.contains("pick another name"),
            "{level}: {err}"
        );
    }
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn start_up_rides_out_a_portal_migration_and_a_burst_of_5xx(pool: PgPool) {
    use hubspot_sim::Fault;
    let sim = sim().await;
    let status = |status, retry_after_secs| Fault::Status {
        status,
        retry_after_secs,
    };
    sim.script_setup(vec![
        status(477, Some(1)),
        status(503, None),
        status(500, None),
    ]);
    let config = parse_config(CONFIG);
    hubsync::reconcile::ensure(&client_for(&sim, &config).into(), &config)
        .await
        .expect("start-up waits as told and goes on");
    let statuses: Vec<u16> = sim.requests().iter().take(4).map(|r| r.status).collect();
    assert_eq!(statuses, [477, 503, 500, 200]);
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.method == "POST" && r.status == 201),
        "the properties are created"
    );
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn a_multi_select_declared_against_a_single_select_is_refused(pool: PgPool) {
    let sim = sim().await;
    let text = CONFIG.replace(
        "options = [\"free\", \"pro\", \"enterprise\"]",
        "options = [\"free\", \"pro\", \"enterprise\"]\nmultiple = true",
    );
    let config = parse_config(CONFIG);
    hubsync::reconcile::ensure(&client_for(&sim, &config).into(), &config)
        .await
        .unwrap();
    let err = refused(&sim, &text).await;
    assert!(
        err.contains("\"current_plan\"") && err.contains("fieldType \"select\""),
        "{err}"
    );
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn bool_properties_are_created_with_yes_and_no(pool: PgPool) {
    let sim = sim().await;
    let config = parse_config(CONFIG);
    hubsync::reconcile::ensure(&client_for(&sim, &config).into(), &config)
        .await
        .unwrap();
    let created: Vec<Value> = sim
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.body.as_ref().is_some_and(|b| b["name"] == "used_reports")
        })
        .filter_map(|r| r.body)
        .collect();
    assert_eq!(created.len(), 1);
    let options = created[0]["options"].as_array().unwrap();
    assert_eq!(options[0]["label"], "Yes");
    assert_eq!(options[0]["value"], "true");
    assert_eq!(options[1]["label"], "No");
    assert_eq!(options[1]["value"], "false");
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn a_property_created_meanwhile_is_read_back_and_compared(pool: PgPool) {
    let sim = sim().await;
    let config = parse_config(CONFIG);
    let client = client_for(&sim, &config);
    let plan = hubsync::reconcile::plan(&client.clone().into(), &config)
        .await
        .unwrap();
    // Someone creates it between the read and the create, with another type.
    sim.define_property(
        "contacts",
        json!({"name": "total_sessions", "label": "S", "type": "string", "fieldType": "text",
               "groupName": "contactinformation"}),
    );
    let err = hubsync::reconcile::apply(&client.clone().into(), &config, &plan)
        .await
        .expect_err("a clash found on 409 refuses start");
    let err = format!("{err:#}");
    assert!(
        err.contains("\"total_sessions\"") && err.contains("\"string\" in HubSpot but \"number\""),
        "{err}"
    );
    // The same with the declared type is fine.
    let sim = self::sim().await;
    let client = client_for(&sim, &config);
    let plan = hubsync::reconcile::plan(&client.clone().into(), &config)
        .await
        .unwrap();
    hubsync::reconcile::ensure(&client_for(&sim, &config).into(), &config)
        .await
        .unwrap();
    hubsync::reconcile::apply(&client.clone().into(), &config, &plan)
        .await
        .expect("409s for matching properties are fine");
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn a_429_during_start_up_pauses_every_worker(pool: PgPool) {
    let sim = SimConfig {
        requests_per_window: 3,
        window: std::time::Duration::from_millis(500),
        ..SimConfig::default()
    };
    // The worker's own limit is the configured 100: only HubSpot's 429 can slow it here.
    let h = crate::harness::Harness::with(pool, CONFIG, sim).await;
    h.setup().await;
    assert!(h.sim.requests().iter().any(|r| r.status == 429));
    let reason: Option<String> =
        sqlx::query_scalar("SELECT pause_reason FROM hubsync.limiter WHERE name = 'hubspot'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert!(
        reason.is_some_and(|r| r.contains("TEN_SECONDLY_ROLLING")),
        "the pause is shared through the limiter row"
    );
    assert!(h.sim.property("contacts", "total_sessions").is_some());
}
