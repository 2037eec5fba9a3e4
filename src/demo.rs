//! `hubsync demo`: the whole path on one machine with only Postgres. It recreates a
//! `hubsync_demo` database, starts the simulator in-process, writes the example config,
//! enqueues sample events through `hubsync.enqueue`, drains them with a worker, and prints what
//! the simulator now holds, checked against what the events imply.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, TimeZone, Utc};
use hubspot_sim::{SimConfig, Simulator};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, Env};
use crate::core::vocabulary::ObjectType;
use crate::db;
use crate::db::producer::{NewEvent, enqueue};
use crate::hubspot::{HubSpotClient, Paths};
use crate::table;
use crate::worker::Worker;

const DEMO_DB: &str = "hubsync_demo";
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];

/// A tiny deterministic generator, so every demo (and benchmark) run uses the same events.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number in `0..n`.
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }
}

#[derive(Default)]
struct Expected {
    sessions: i64,
    last_active: Option<DateTime<Utc>>,
    plan: Option<(DateTime<Utc>, i64, String)>,
}

async fn recreate_database(url: &str) -> anyhow::Result<PgConnectOptions> {
    let admin = db::connect_options(url)?;
    let mut conn = admin.connect().await.with_context(|| {
        format!(
            "cannot connect to Postgres at {}; start it or set DATABASE_URL",
            db::describe(&admin)
        )
    })?;
    db::recreate_database(&mut conn, DEMO_DB).await?;
    conn.close().await.ok();
    Ok(admin.database(DEMO_DB))
}

/// Runs the demo end to end.
pub(crate) async fn run(env: &Env, events: usize, contacts: usize) -> anyhow::Result<()> {
    let contacts = contacts.clamp(1, 10_000);
    outln!("hubsync demo");
    outln!(
        "1. database: recreating \"{DEMO_DB}\" on {}",
        db::redact(env.database_url.expose())
    );
    let options = recreate_database(env.database_url.expose()).await?;
    // Where to look afterwards: the demo database, without the password.
    let demo_url = db::describe(&options);
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .context("cannot connect to the demo database")?;
    db::migrate(&pool).await?;

    let sim = Simulator::start(SimConfig::default())
        .await
        .context("cannot start the HubSpot simulator on a loopback port")?;
    outln!(
        "2. HubSpot simulator: {} (100 requests per 10 s)",
        sim.base_url()
    );

    let dir = std::env::temp_dir().join("hubsync-demo");
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("hubsync.toml");
    std::fs::write(&config_path, include_str!("../hubsync.example.toml"))?;
    let config = Arc::new(Config::load(&config_path)?);
    outln!("3. config: {}", config_path.display());

    // Sample events, through the producer interface, in a few transactions.
    let mut rng = Lcg(7);
    let base = Utc
        .with_ymd_and_hms(2026, 11, 26, 9, 0, 0)
        .single()
        .context("demo start time")?;
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut tx = pool.begin().await?;
    for n in 0..events {
        let c = rng.next(contacts);
        let email = format!("user{c:03}@example.com");
        // Producers send keys as they have them; hubsync trims and lower-cases emails.
        let key = if n % 5 == 0 {
            format!(" User{c:03}@Example.COM")
        } else {
            email.clone()
        };
        let at = base + ChronoDuration::seconds(rng.next(8 * 3600) as i64);
        let exp = expected.entry(email).or_default();
        let mut props = json!({
            "total_sessions": 1,
            "last_active_at": at.to_rfc3339_opts(SecondsFormat::Secs, true),
        });
        exp.sessions += 1;
        exp.last_active = exp.last_active.max(Some(at));
        if rng.next(4) == 0 {
            let plan = PLANS[rng.next(PLANS.len())];
            props["current_plan"] = json!(plan);
            let seq = n as i64;
            if exp
                .plan
                .as_ref()
                .is_none_or(|(t, s, _)| (at, seq) > (*t, *s))
            {
                exp.plan = Some((at, seq, plan.to_string()));
            }
        }
        if rng.next(10) == 0 {
            props["used_reports"] = json!(true);
        }
        if c.is_multiple_of(7) {
            props["trial_started_on"] = json!("2026-11-01");
        }
        let company = format!("acct_{}", c % 8);
        let event = NewEvent {
            // Time-ordered ids, as the README asks of producers: the ledger's index then grows
            // at its end.
            event_id: Uuid::now_v7(),
            object_type: ObjectType::Contact,
            object_key: &key,
            properties: &props,
            occurred_at: Some(at),
            company_key: Some(&company),
        };
        enqueue(&mut tx, &event).await?;
        if n % 100 == 99 {
            tx.commit().await?;
            tx = pool.begin().await?;
        }
    }
    for a in 0..8 {
        let key = format!("acct_{a}");
        let props = json!({"seats": 5 + a * 3});
        let event = NewEvent {
            event_id: Uuid::now_v7(),
            object_type: ObjectType::Company,
            object_key: &key,
            properties: &props,
            occurred_at: None,
            company_key: None,
        };
        enqueue(&mut tx, &event).await?;
    }
    // One event that cannot be valid, to show where such events go.
    let invalid = json!({"current_plan": "platinum"});
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        object_type: ObjectType::Contact,
        object_key: "user000@example.com",
        properties: &invalid,
        occurred_at: None,
        company_key: None,
    };
    enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    outln!(
        "4. enqueued {events} contact events for {} contacts, 8 company events, and 1 invalid event",
        expected.len()
    );

    let client = HubSpotClient::new(
        &sim.base_url(),
        "sim-token",
        Paths::new(config.hubspot.api_version),
        config.hubspot.request_timeout,
    )?;
    let plan = crate::reconcile::ensure(&client.clone().into(), &config).await?;
    outln!(
        "5. start-up: created {} properties and {} property groups in the portal",
        plan.create.len(),
        plan.create_groups.len()
    );
    let worker = Worker::new(pool.clone(), config.clone(), client).await?;
    let started = std::time::Instant::now();
    let step = worker.run_until_idle(&CancellationToken::new()).await?;
    outln!(
        "6. worker drained the outbox in {:.1} s: {} events folded, {} objects written",
        started.elapsed().as_secs_f64(),
        step.ingested - step.refused,
        step.sync.written
    );

    let props = [
        "total_sessions",
        "last_active_at",
        "current_plan",
        "trial_started_on",
        "used_reports",
    ];
    let mut columns = vec!["email".to_string()];
    columns.extend(props.iter().map(|p| p.to_string()));
    columns.push("matches events".into());
    let mut rows = Vec::new();
    let mut mismatches = 0;
    for (email, exp) in &expected {
        let record = sim.contact(email);
        let get = |p: &str| {
            record
                .as_ref()
                .and_then(|r| r.properties.get(p).cloned())
                .unwrap_or_default()
        };
        let ok = get("total_sessions") == exp.sessions.to_string()
            && Some(get("last_active_at"))
                == exp
                    .last_active
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            && exp
                .plan
                .as_ref()
                .is_none_or(|(_, _, p)| *p == get("current_plan"));
        if !ok {
            mismatches += 1;
        }
        let mut row = vec![email.clone()];
        row.extend(props.iter().map(|p| get(p)));
        row.push(if ok { "yes".into() } else { "NO".into() });
        rows.push(row);
    }
    outln!("\nContacts in HubSpot (simulator):");
    out!("{}", table::render(&columns, &rows));

    let mut company_rows = Vec::new();
    let associations = sim.associations();
    for record in sim.records("companies") {
        let linked = associations
            .iter()
            .filter(|(_, co)| *co == record.id)
            .count();
        company_rows.push(vec![
            record
                .properties
                .get("product_account_id")
                .cloned()
                .unwrap_or_default(),
            record.properties.get("seats").cloned().unwrap_or_default(),
            linked.to_string(),
        ]);
    }
    company_rows.sort();
    outln!("\nCompanies in HubSpot (simulator):");
    out!(
        "{}",
        table::render(
            &[
                "product_account_id".into(),
                "seats".into(),
                "associated contacts".into()
            ],
            &company_rows
        )
    );

    let requests = sim.requests();
    let upserts: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/batch/upsert"))
        .collect();
    let inputs: usize = upserts.iter().map(|r| r.inputs).sum();
    let dlq = db::dlq::reasons(&pool).await?;
    outln!(
        "\nRequests made to HubSpot: {} in all, {} batch upserts carrying {inputs} inputs",
        requests.len(),
        upserts.len()
    );
    outln!(
        "Events per batch request: {:.1} ({} events enqueued)",
        (events + 8) as f64 / upserts.len().max(1) as f64,
        events + 9
    );
    outln!("Dead-letter rows (hubsync.dlq): {}", dlq.len());
    for reason in &dlq {
        outln!("  [{}] {}", reason.category, reason.message);
    }
    sim.shutdown().await;
    pool.close().await;
    if mismatches > 0 {
        anyhow::bail!("{mismatches} contacts in the simulator do not match their events");
    }
    outln!(
        "\nEvery contact matches its events. Inspect the data with: psql {demo_url} -c 'SELECT * FROM hubsync.objects'"
    );
    Ok(())
}
