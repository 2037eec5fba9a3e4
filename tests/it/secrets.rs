//! Secrets never printed: every command, its help, its errors and its logs at `trace` run with a
//! sentinel access token and a sentinel database password, and neither appears in any output
//! nor in the dead-letter table.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hubspot_sim::{SimConfig, Simulator};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{CONFIG, command, enqueue_at};

const TOKEN: &str = "pat-na1-SENTINEL-TOKEN-7f3a";
const PASSWORD: &str = "SENTINELPW";

fn assert_clean(what: &str, stdout: &[u8], stderr: &[u8]) {
    for (stream, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        let text = String::from_utf8_lossy(bytes);
        for sentinel in [TOKEN, "SENTINEL-TOKEN", PASSWORD] {
            assert!(
                !text.contains(sentinel),
                "{what}: {stream} shows {sentinel}:\n{text}"
            );
        }
    }
}

/// `hubsync args` with the sentinel token, `RUST_LOG=trace` and this database URL; fails the
/// test if the output shows a sentinel.
fn run_blocking(args: &[&str], database_url: &str, base_url: &str) -> Output {
    let envs = [
        ("HUBSPOT_ACCESS_TOKEN", TOKEN),
        ("DATABASE_URL", database_url),
        ("HUBSPOT_BASE_URL", base_url),
        ("RUST_LOG", "trace"),
    ];
    let out = command(args, Some(CONFIG), &envs)
        .output()
        .expect("the hubsync binary runs");
    assert_clean(&format!("hubsync {args:?}"), &out.stdout, &out.stderr);
    out
}

/// `run_blocking` off the test's runtime, so that the in-process simulator can answer.
async fn run(args: &[&str], database_url: &str, base_url: &str) -> Output {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (args, url, base) = (owned(args), database_url.to_string(), base_url.to_string());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_blocking(&args, &url, &base)
    })
    .await
    .unwrap()
}

/// This test's database, with the sentinel password (local logins are trusted, so it is never
/// checked) in the user info or as a query parameter.
fn reachable_urls(pool: &PgPool) -> [String; 2] {
    let o = pool.connect_options();
    let (host, port, db) = (
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres"),
    );
    let user = o.get_username();
    [
        format!("postgres://{user}:{PASSWORD}@{host}:{port}/{db}"),
        format!(
            "postgres://{user}@{host}:{port}/{db}?password={PASSWORD}&sslpassword={PASSWORD}&application_name=hubsync"
        ),
    ]
}

const UNREACHABLE: [&str; 3] = [
    "postgres://u:SENTINELPW@127.0.0.1:1/db",
    "postgres://u@127.0.0.1:1/db?password=SENTINELPW",
    "postgres://u@127.0.0.1:1/db?sslpassword=SENTINELPW&passwd=SENTINELPW",
];

#[sqlx::test(migrations = false)]
async fn no_command_prints_the_token_or_the_database_password(pool: PgPool) {
    let sim = Simulator::start(SimConfig {
        token: TOKEN.into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let base = sim.base_url();
    let nowhere = "http://127.0.0.1:9";

    for help in [
        &["--help"][..],
        &["--version"],
        &["migrate", "--help"],
        &["check", "--help"],
        &["run", "--help"],
        &["status", "--help"],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "retry", "--help"],
        &["dlq", "purge", "--help"],
        &["simulator", "--help"],
        &["demo", "--help"],
    ] {
        let out = run(help, UNREACHABLE[0], nowhere).await;
        assert_eq!(out.status.code(), Some(0), "{help:?}");
    }

    // The database cannot be reached: every command that needs it fails, saying where it went.
    // All at once: each waits out the pool's acquire timeout.
    let mut unreachable = Vec::new();
    for url in UNREACHABLE {
        for args in [
            &["migrate"][..],
            &["status"],
            &["dlq", "list"],
            &["dlq", "purge", "--older-than", "30"],
            &["run", "--until-idle"],
            &["demo", "--events", "1"],
        ] {
            unreachable.push(std::thread::spawn(move || {
                let out = run_blocking(args, url, nowhere);
                assert_eq!(out.status.code(), Some(1), "{args:?} with {url}");
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("127.0.0.1:1"), "{args:?}: {err}");
            }));
        }
    }
    for done in unreachable {
        done.join().unwrap();
    }

    // HubSpot cannot be reached, then refuses the token, then accepts it.
    assert_eq!(
        run(&["check"], UNREACHABLE[0], nowhere).await.status.code(),
        Some(1)
    );
    sim.set_token("another-token");
    assert_eq!(
        run(&["check"], UNREACHABLE[0], &base).await.status.code(),
        Some(1)
    );
    sim.set_token(TOKEN);
    let checked = run(&["check"], UNREACHABLE[0], &base).await;
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // The whole path with the password in the URL, a refused event included.
    let [in_userinfo, in_query] = reachable_urls(&pool);
    for url in [&in_userinfo, &in_query] {
        let out = run(&["migrate"], url, &base).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (key, props) in [
        ("s@acme.com", json!({"total_sessions": 2})),
        ("s@acme.com", json!({"nope": 1})),
    ] {
        enqueue_at(&pool, "contact", key, props, chrono::Utc::now()).await;
    }
    for url in [&in_userinfo, &in_query] {
        for args in [
            &["run", "--until-idle"][..],
            &["status"],
            &["dlq", "list"],
            &["dlq", "retry", "--all"],
        ] {
            let out = run(args, url, &base).await;
            assert_eq!(out.status.code(), Some(0), "{args:?}");
        }
    }
    assert!(sim.contact("s@acme.com").is_some());
    // A revoked token: syncing halts and says so, without the token.
    enqueue_at(
        &pool,
        "contact",
        "t@acme.com",
        json!({"total_sessions": 1}),
        chrono::Utc::now(),
    )
    .await;
    sim.set_token("another-token");
    let out = run(&["run", "--until-idle"], &in_userinfo, &base).await;
    assert_eq!(out.status.code(), Some(1));

    let stored: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(d::text, ' '), '') || (SELECT coalesce(string_agg(l::text, ' '), '') FROM hubsync.limiter l)
         FROM hubsync.dlq d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(stored.contains("nope"), "the refused event is there");
    assert_clean("hubsync.dlq and hubsync.limiter", stored.as_bytes(), b"");
}

#[tokio::test]
async fn the_simulator_never_prints_the_token_it_accepts() {
    let mut child = command(
        &["simulator", "--port", "0"],
        None,
        &[("HUBSPOT_ACCESS_TOKEN", TOKEN), ("RUST_LOG", "trace")],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("the simulator starts");
    let (lines, received) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let base = loop {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .expect("the simulator says where it listens");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // reqwest asks for a TLS crypto provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for token in [TOKEN, "wrong"] {
        let reply = http
            .get(format!("{base}/crm/properties/2026-03/contacts"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16() == 200, token == TOKEN);
        assert_clean("a simulator reply", &reply.bytes().await.unwrap(), b"");
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let stderr = reader.join().unwrap();
    assert!(
        stderr.contains("from --token or HUBSPOT_ACCESS_TOKEN"),
        "{stderr}"
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_clean("hubsync simulator", stdout.as_bytes(), stderr.as_bytes());
}
