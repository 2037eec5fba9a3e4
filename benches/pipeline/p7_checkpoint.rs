//! P7 after a checkpoint: the WAL per event of the bare claim and of ingest when the ledger
//! already holds a stretch of processed ids, measured right after a `CHECKPOINT`, once with
//! random event ids and once with time-ordered ones. Run inside P3, on its synced objects.
//!
//! After a checkpoint, the first change to each page writes the whole page to the WAL. A
//! random id lands on any page of the ledger's index, a time-ordered one at its end: this is
//! where the producer's choice of ids shows.

use sqlx::PgPool;

use crate::harness::{EventIds, Rig, load_outbox_with, table};
use crate::p3_ingest::{bare_loop, wal_position};

/// Ids the ledger holds before each measurement.
const LEDGER_IDS: i64 = 2_000_000;
/// Events claimed in each measurement.
const EVENTS: usize = 20_000;

/// Empties the outbox and the ledger, then fills the ledger with `LEDGER_IDS` ids of the
/// given kind, processed over the past week (time-ordered ids carry their processing time).
async fn fill_ledger(pool: &PgPool, ids: EventIds) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE hubsync.outbox, hubsync.ledger")
        .execute(pool)
        .await?;
    let id = match ids {
        EventIds::Random => "gen_random_uuid()",
        EventIds::TimeOrdered => "hubsync.new_event_id(t)",
    };
    sqlx::query(&format!(
        "INSERT INTO hubsync.ledger (event_id, processed_at)
         SELECT {id}, t
         FROM (SELECT now() - interval '7 days' + g * (interval '7 days' / $1) AS t
               FROM generate_series(1, $1) AS g) AS s"
    ))
    .bind(LEDGER_IDS)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE hubsync.ledger")
        .execute(pool)
        .await?;
    Ok(())
}

/// Loads the outbox, checkpoints, and returns the WAL position.
async fn load_and_checkpoint(pool: &PgPool, contacts: usize, ids: EventIds) -> anyhow::Result<i64> {
    sqlx::query("TRUNCATE hubsync.outbox").execute(pool).await?;
    load_outbox_with(pool, EVENTS, contacts, ids).await?;
    sqlx::query("CHECKPOINT").execute(pool).await?;
    wal_position(pool).await
}

pub async fn run(rig: &Rig, contacts: usize) -> anyhow::Result<()> {
    let pool = &rig.db.pool;
    // The bare claim once more through sessions set up as the worker's are (they compress the
    // WAL's page images where the role may), for a like-for-like yardstick.
    let like_worker = rig.db.worker_pool(&rig.config).await?;
    let chunk = rig.config.worker.ingest_chunk;
    let w = rig.worker().await?;
    let mut rows = Vec::new();
    for ids in [EventIds::Random, EventIds::TimeOrdered] {
        eprintln!("p7: ledger of {LEDGER_IDS} ids ({})", ids.sql());
        fill_ledger(pool, ids).await?;

        let start = load_and_checkpoint(pool, contacts, ids).await?;
        let claimed = bare_loop(pool, chunk).await?;
        let bare = (wal_position(pool).await? - start) as f64 / claimed.max(1) as f64;

        let start = load_and_checkpoint(pool, contacts, ids).await?;
        let claimed = bare_loop(&like_worker, chunk).await?;
        let bare_compressed = (wal_position(pool).await? - start) as f64 / claimed.max(1) as f64;

        let start = load_and_checkpoint(pool, contacts, ids).await?;
        let mut ingested = 0usize;
        loop {
            let done = w.ingest_once().await?;
            if done.claimed == 0 {
                break;
            }
            ingested += done.claimed;
        }
        let ingest = (wal_position(pool).await? - start) as f64 / ingested.max(1) as f64;
        let compression: String = sqlx::query_scalar("SELECT current_setting('wal_compression')")
            .fetch_one(&like_worker)
            .await?;
        rows.push(vec![
            format!("`{}`", ids.sql()),
            format!("{bare:.0} B"),
            format!("{bare_compressed:.0} B (wal_compression {compression})"),
            format!("{ingest:.0} B"),
            format!("{:.1} ×", ingest / bare.max(1.0)),
            format!("{:.1} ×", ingest / bare_compressed.max(1.0)),
        ]);
    }
    table(
        &format!(
            "P7 after a checkpoint: WAL per event, {EVENTS} events over {contacts} contacts, \
             the ledger holding {LEDGER_IDS} ids"
        ),
        &[
            "event ids",
            "bare claim",
            "bare claim, worker's session settings",
            "ingest",
            "ingest / bare",
            "ingest / bare with the worker's settings",
        ],
        &rows,
    );
    Ok(())
}
