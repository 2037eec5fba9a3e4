//! How producers know whether a worker waits for a notification. A NOTIFY makes every notifying
//! commit in the database take one lock in turn, across its flush to disk, so producers notify
//! only while some worker waits (migration 0010, `docs/ARCHITECTURE.md` §3, "Waking").
//!
//! A worker with nothing to ingest holds a shared advisory lock on each of [`SLOTS`] slots of
//! class [`CLASS`], on a connection of its own. A producer tries an exclusive lock for its
//! transaction on one slot: if the try fails, a worker holds or waits for that slot and the
//! producer notifies; if it succeeds, the producer keeps the slot until its commit, and a
//! worker going idle waits for that commit before it looks at the outbox once more. Workers
//! never wait for each other here (shared locks), and producers never wait at all (they try).

use sqlx::{ConnectOptions, PgConnection, PgPool};

/// The advisory lock class of the slots: "hubs" in ASCII.
pub const CLASS: i32 = 0x6875_6273;

/// How many slots producers spread over (by transaction id), so that two producers rarely
/// meet on one.
pub const SLOTS: i32 = 64;

/// A connection of its own for holding the slots, made with the pool's settings but without
/// its timeouts: taking the slots waits for producers' transactions, however long they run.
pub async fn connect(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = pool.connect_options().connect().await?;
    sqlx::query("SET lock_timeout = 0")
        .execute(&mut conn)
        .await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Takes every slot, shared, for this session: returns once every producer that took a slot
/// without notifying has ended. Locks: session advisory locks (`CLASS`, 0..`SLOTS`), shared,
/// waiting as long as those producers run (the connection has no lock timeout).
pub async fn hold_slots(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    each_slot(conn, "pg_advisory_lock_shared").await
}

/// Lets go of the slots [`hold_slots`] took. Locks: releases them.
pub async fn release_slots(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    each_slot(conn, "pg_advisory_unlock_shared").await
}

/// Calls `function` (an advisory lock function) on every slot, in one statement.
async fn each_slot(conn: &mut PgConnection, function: &str) -> Result<(), sqlx::Error> {
    let sql = format!("SELECT count({function}($1, s)) FROM generate_series(0, $2 - 1) s");
    sqlx::query(&sql)
        .bind(CLASS)
        .bind(SLOTS)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Whether the connection holding the slots still answers (if it was dropped, so were the
/// slots). Locks nothing.
pub async fn still_there(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await.map(|_| ())
}
