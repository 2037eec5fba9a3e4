//! P3: the pipeline's capacity against an unthrottled simulator (ingest against the bare
//! claim-and-delete SQL, then sync), and P7 from the same run: the WAL each of the two writes
//! per event.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::Args;
use crate::harness::{
    Rig, Running, is_2xx, load_outbox, mean_inputs, pct, rate, secs, table, upserts,
};

/// The claim statement of `db::ingest::claim_outbox`, run bare for P3's yardstick.
const BARE_CLAIM: &str = "DELETE FROM hubsync.outbox o
     WHERE o.id = ANY (ARRAY(
         SELECT id FROM hubsync.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
     RETURNING o.id AS seq, o.event_id, o.object_type, o.object_key,
               o.properties::text AS properties, o.occurred_at, o.company_key";

/// With `BENCH_WAL_DETAIL=1`: what the WAL between two positions holds, by record type
/// (`pg_walinspect`, a contrib extension), largest first.
async fn wal_detail(pool: &PgPool, what: &str, from: i64, to: i64) -> anyhow::Result<()> {
    if std::env::var_os("BENCH_WAL_DETAIL").is_none() {
        return Ok(());
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(pool)
        .await?;
    // Only flushed WAL can be read: end the segment (after the measured range).
    sqlx::query("SELECT pg_switch_wal()").execute(pool).await?;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT \"resource_manager/record_type\", count, record_size, fpi_size
         FROM pg_get_wal_stats(('0/0'::pg_lsn + $1::numeric), ('0/0'::pg_lsn + $2::numeric), true)
         WHERE count > 0 ORDER BY combined_size DESC LIMIT 12",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(kind, count, record, fpi)| {
            vec![kind, count.to_string(), record.to_string(), fpi.to_string()]
        })
        .collect();
    table(
        &format!("WAL of {what}, by record type"),
        &[
            "record type",
            "records",
            "record bytes",
            "full-page image bytes",
        ],
        &rows,
    );
    Ok(())
}

/// The WAL insert position, in bytes.
pub async fn wal_position(pool: &PgPool) -> anyhow::Result<i64> {
    let (lsn,): (i64,) =
        sqlx::query_as("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
            .fetch_one(pool)
            .await?;
    Ok(lsn)
}

fn verdict(ratio: f64) -> String {
    if ratio >= 0.7 {
        "meets ≥ 70 %".into()
    } else {
        "MISSES ≥ 70 %".into()
    }
}

/// The bare claim, one transaction per chunk, until the outbox is empty: rows claimed.
pub async fn bare_loop(pool: &PgPool, chunk: usize) -> anyhow::Result<usize> {
    let mut claimed = 0usize;
    loop {
        let mut tx = pool.begin().await?;
        let rows = sqlx::query(BARE_CLAIM)
            .bind(i64::try_from(chunk)?)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if rows.is_empty() {
            return Ok(claimed);
        }
        claimed += rows.len();
    }
}

pub async fn run(args: &Args, base_url: &str) -> anyhow::Result<()> {
    let events = args.events;
    let contacts = args.contacts();
    let rig = Rig::start(base_url, "p3", 0, 10_000, 10_000).await?;
    let db = &rig.db;
    let chunk = rig.config.worker.ingest_chunk;
    println!(
        "## P3: pipeline capacity, {events} events over {contacts} contacts\n\n\
         Unthrottled simulator (requests_per_window 0, log_bodies off); requests_per_10s = 10000. \
         The outbox is loaded with one INSERT ... SELECT FROM generate_series (then VACUUM \
         ANALYZE), once for the bare SQL loop and again, after TRUNCATE, for the worker. \
         Bare: the worker's claim statement (same CTE, same RETURNING) alone, one \
         transaction per chunk of {chunk} (= ingest_chunk), by one client, then (after TRUNCATE \
         and the same load) by two side by side. Ingest: `Worker::ingest_once` until it \
         returns 0 (through a backlog it claims the next chunk while one folds: two \
         transactions in flight). Sync: `Worker::run` (concurrency {}) until no object is dirty.\n",
        rig.config.worker.concurrency
    );

    let load_bare = load_outbox(&db.pool, events, contacts).await?;
    eprintln!(
        "p3: outbox loaded in {} s; bare claim loop",
        secs(load_bare)
    );
    let wal_bare_start = wal_position(&db.pool).await?;
    let started = Instant::now();
    let bare_rows = bare_loop(&db.pool, chunk).await?;
    let bare = started.elapsed();
    let wal_bare_end = wal_position(&db.pool).await?;
    let wal_bare = wal_bare_end - wal_bare_start;
    wal_detail(&db.pool, "the bare claim", wal_bare_start, wal_bare_end).await?;

    // Ingest keeps up to two transactions in flight through a backlog (one folding, the next
    // claimed), so the bare claim is measured with two clients as well.
    sqlx::query("TRUNCATE hubsync.outbox")
        .execute(&db.pool)
        .await?;
    load_outbox(&db.pool, events, contacts).await?;
    eprintln!("p3: outbox loaded again; bare claim, two clients");
    let started = Instant::now();
    let (a, b) = tokio::try_join!(bare_loop(&db.pool, chunk), bare_loop(&db.pool, chunk))?;
    let (bare2_rows, bare2) = (a + b, started.elapsed());

    sqlx::query("TRUNCATE hubsync.outbox")
        .execute(&db.pool)
        .await?;
    let load_ingest = load_outbox(&db.pool, events, contacts).await?;
    eprintln!("p3: outbox loaded again in {} s; ingest", secs(load_ingest));
    let w = rig.worker().await?;
    let wal_ingest_start = wal_position(&db.pool).await?;
    let started = Instant::now();
    let (mut ingested, mut refused) = (0usize, 0usize);
    loop {
        let done = w.ingest_once().await?;
        if done.claimed == 0 {
            break;
        }
        ingested += done.claimed;
        refused += done.refused;
    }
    let ingest = started.elapsed();
    let wal_ingest_end = wal_position(&db.pool).await?;
    let wal_ingest = wal_ingest_end - wal_ingest_start;
    wal_detail(&db.pool, "ingest", wal_ingest_start, wal_ingest_end).await?;
    let (objects_bytes, objects_rows): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('hubsync.objects'), (SELECT count(*) FROM hubsync.objects)",
    )
    .fetch_one(&db.pool)
    .await?;
    let (ledger_bytes,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('hubsync.ledger')")
        .fetch_one(&db.pool)
        .await?;
    let dirty = db.dirty().await?;
    eprintln!("p3: {ingested} events ingested into {dirty} dirty objects; sync");

    rig.sim.reset_requests();
    let started = Instant::now();
    let mut running = Running::default();
    running.spawn(w.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if db.dirty().await? == 0 || running.any_finished() {
            break;
        }
    }
    let sync = started.elapsed();
    running.stop().await?;
    let written = db
        .count("SELECT count(*) FROM hubsync.objects WHERE synced_at IS NOT NULL")
        .await?;
    let written = usize::try_from(written)?;
    let requests = rig.sim.requests();
    let ups = upserts(&requests);
    let failed = ups.iter().filter(|r| !is_2xx(r)).count();
    let dlq = db.count("SELECT count(*) FROM hubsync.dlq").await?;

    let per_event = |wal: i64, rows: usize| wal as f64 / rows.max(1) as f64;
    let (bare_wal, ingest_wal) = (
        per_event(wal_bare, bare_rows),
        per_event(wal_ingest, ingested),
    );
    table(
        "P7 results, WAL written per event (target: ingest ≤ 2 × bare); sizes after ingest",
        &["measure", "value", "notes"],
        &[
            vec![
                "bare claim-and-delete".into(),
                format!("{bare_wal:.0} B"),
                "pg_current_wal_insert_lsn() before and after".into(),
            ],
            vec![
                "ingest (Worker::ingest_once)".into(),
                format!("{ingest_wal:.0} B"),
                format!("{:.1} × bare", ingest_wal / bare_wal.max(1.0)),
            ],
            vec![
                "hubsync.objects per object".into(),
                format!("{:.0} B", objects_bytes as f64 / objects_rows.max(1) as f64),
                format!(
                    "{} MB for {objects_rows} objects",
                    objects_bytes / 1_000_000
                ),
            ],
            vec![
                "hubsync.ledger".into(),
                format!("{} MB", ledger_bytes / 1_000_000),
                format!("{ingested} event ids"),
            ],
        ],
    );
    let ingest_rate = ingested as f64 / ingest.as_secs_f64();
    let ratio = ingest_rate / (bare_rows as f64 / bare.as_secs_f64());
    let ratio2 = ingest_rate / (bare2_rows as f64 / bare2.as_secs_f64());
    table(
        &format!(
            "P3 results ({events} events, {contacts} contacts; target: ingest ≥ 70 % of bare)"
        ),
        &["phase", "rows", "seconds", "per second", "notes"],
        &[
            vec![
                "outbox load (INSERT ... SELECT, VACUUM ANALYZE)".into(),
                events.to_string(),
                secs(load_ingest),
                rate(events, load_ingest),
                "producer side, not a target".into(),
            ],
            vec![
                "bare claim-and-delete SQL".into(),
                bare_rows.to_string(),
                secs(bare),
                rate(bare_rows, bare),
                format!("chunks of {chunk}"),
            ],
            vec![
                "bare claim-and-delete SQL, two clients".into(),
                bare2_rows.to_string(),
                secs(bare2),
                rate(bare2_rows, bare2),
                format!("chunks of {chunk}, two loops side by side"),
            ],
            vec![
                "ingest (Worker::ingest_once)".into(),
                ingested.to_string(),
                secs(ingest),
                rate(ingested, ingest),
                format!("{refused} refused; {dirty} objects dirty after"),
            ],
            vec![
                "ingest / bare".into(),
                String::new(),
                String::new(),
                pct(ratio),
                verdict(ratio),
            ],
            vec![
                "ingest / bare, two clients".into(),
                String::new(),
                String::new(),
                pct(ratio2),
                verdict(ratio2),
            ],
            vec![
                "sync (Worker::run) objects".into(),
                written.to_string(),
                secs(sync),
                rate(written, sync),
                format!(
                    "{} upserts ({failed} non-2xx), {:.1} inputs each; {dlq} DLQ rows",
                    ups.len(),
                    mean_inputs(&ups)
                ),
            ],
        ],
    );
    drop(w);
    crate::p7_checkpoint::run(&rig, contacts).await?;
    rig.finish().await
}
