//! The worker: `run_once` does one unit of each kind of work; `run` only decides when to call
//! the steps again, with ingest, several sync loops and upkeep running side by side.

pub(crate) mod associate;
pub(crate) mod ingest;
pub(crate) mod sync;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, FixedOffset, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::core::portal::PortalZone;
use crate::core::vocabulary::ObjectType;
use crate::db;
use crate::hubspot::{HubSpotClient, Outcome};
use crate::ratelimit::Limiter;
pub(crate) use sync::SyncReport;

/// A random unit in [0, 1] for retry jitter (injected so tests can fix it).
pub(crate) type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Everything a worker step needs.
pub struct Worker {
    /// The database.
    pub(crate) pool: PgPool,
    /// Validated config.
    pub(crate) config: Arc<Config>,
    /// HubSpot.
    pub(crate) client: HubSpotClient,
    /// The shared rate limiter.
    pub(crate) limiter: Limiter,
    /// Jitter source.
    pub(crate) jitter: Jitter,
    /// This worker's metrics and readiness.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// The portal's offset from UTC (its daily limit resets at its midnight); `None` when it
    /// could not be read: a daily pause then lasts an hour, and the next request probes.
    pub(crate) portal: Option<PortalZone>,
    /// The last ingest claimed a full chunk: more is waiting, so syncing can wait a moment
    /// and send fuller, fewer batches.
    backlog: AtomicBool,
    /// This worker's row in `hubsync.workers`.
    id: Uuid,
    /// The generation of this worker's declarations (rolling deploys).
    registered: db::generations::Registered,
    /// The newer generation this worker stands aside for, as last seen (for the log: the
    /// database decides, in the statements that take work).
    newer: std::sync::Mutex<Option<db::generations::Newer>>,
    /// New events were announced (`NOTIFY hubsync`): the ingest loop looks.
    events: Notify,
    /// Objects became dirty: the sync loops look.
    dirty: Notify,
    /// A replay was asked for or objects were written (associations may be due).
    upkeep: Notify,
    /// The LISTEN connection was made again: the one holding the waiting slots may have been
    /// cut too, which nothing else would tell.
    reconnected: Notify,
}

/// How often a running worker tells the others it is alive (they count it gone after
/// `db::generations::ALIVE_SECS`).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The channel the outbox and DLQ triggers notify.
const CHANNEL: &str = "hubsync";

/// Most chunks one [`Worker::ingest_once`] takes through a backlog: enough for claiming and
/// folding to overlap, few enough that a stop or a newer config is seen within about a second.
const PIPELINED_CHUNKS: usize = 4;

/// What one `run_once` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    /// Outbox rows consumed.
    pub ingested: usize,
    /// Events dead-lettered at ingest.
    pub refused: usize,
    /// Sync results, contacts and companies together.
    pub sync: SyncReport,
    /// Association pairs handled (made, retried or given up on).
    pub associated: usize,
    /// Dead-letter rows replayed (events folded again, objects queued again).
    pub replayed: usize,
}

impl Step {
    /// Adds another step's counts to this one.
    pub(crate) fn add(&mut self, other: &Step) {
        self.ingested += other.ingested;
        self.refused += other.refused;
        self.sync.add(&other.sync);
        self.associated += other.associated;
        self.replayed += other.replayed;
    }

    /// Nothing was done and nothing is waiting that a step could do now.
    pub(crate) fn is_idle(&self) -> bool {
        self.ingested == 0 && self.sync.leased == 0 && self.associated == 0 && self.replayed == 0
    }
}

impl Worker {
    /// This worker's metrics and readiness.
    pub fn telemetry(&self) -> &crate::telemetry::Telemetry {
        &self.telemetry
    }

    /// The portal's offset from UTC now, when its time zone could be read.
    pub fn portal(&self) -> Option<FixedOffset> {
        self.portal.map(|zone| zone.offset_at(Utc::now()))
    }

    /// A worker over these parts, with random jitter.
    pub async fn new(
        pool: PgPool,
        config: Arc<Config>,
        client: HubSpotClient,
    ) -> anyhow::Result<Worker> {
        let limiter = Limiter::configured(pool.clone(), &config.hubspot)
            .await
            .context("failed to set up the shared rate limiter")?;
        let setup = crate::setup::Setup::new(client.clone(), Some(limiter.clone()));
        // A refused token is the sync loops' to report (and halt on).
        let portal = match crate::setup::portal_zone(&setup).await {
            Ok(zone) => zone,
            Err(e) => {
                tracing::warn!(
                    "cannot read the portal's time zone ({}); after a daily 429, hubsync tries again once an hour",
                    crate::telemetry::chain(&e)
                );
                None
            }
        };
        Worker::in_portal(pool, config, client, limiter, portal).await
    }

    /// A worker for a portal whose time zone was read already (`None`: it could not be), with
    /// the shared `limiter` that reading took its permit from.
    pub(crate) async fn in_portal(
        pool: PgPool,
        config: Arc<Config>,
        client: HubSpotClient,
        limiter: Limiter,
        portal: Option<PortalZone>,
    ) -> anyhow::Result<Worker> {
        let limiter = limiter.with_day(portal, config.hubspot.daily_budget);
        let id = Uuid::new_v4();
        let declared = config.declarations();
        let registered =
            db::generations::register(&pool, id, &declared.canonical, &declared.properties)
                .await
                .context("failed to register this worker's config generation")?;
        tracing::info!(
            generation = registered.generation,
            "running with config generation {}",
            registered.generation
        );
        Ok(Worker {
            pool,
            config,
            client,
            limiter,
            portal,
            jitter: Arc::new(rand::random::<f64>),
            telemetry: crate::telemetry::Telemetry::new(),
            backlog: AtomicBool::new(false),
            id,
            registered,
            newer: std::sync::Mutex::new(None),
            events: Notify::new(),
            dirty: Notify::new(),
            upkeep: Notify::new(),
            reconnected: Notify::new(),
        })
    }

    /// The generation of this worker's declarations.
    pub fn generation(&self) -> i64 {
        self.registered.generation
    }

    /// Tells the other workers this one is alive, and notes whether a newer generation runs.
    pub async fn heartbeat(&self) -> anyhow::Result<Option<db::generations::Newer>> {
        let newer = db::generations::heartbeat(&self.pool, self.id, &self.registered)
            .await
            .context("failed to record this worker's heartbeat")?;
        self.note_newer(newer.clone());
        Ok(newer)
    }

    /// Logs each change between working and standing aside for a newer generation.
    fn note_newer(&self, newer: Option<db::generations::Newer>) {
        let Ok(mut last) = self.newer.lock() else {
            return;
        };
        match (&*last, &newer) {
            (None, Some(n)) => tracing::warn!(
                generation = self.registered.generation,
                newer = n.generation,
                "{} worker(s) run a newer hubsync.toml (generation {}, this one is {}): this worker takes no work until they stop. Finish the rollout by stopping this worker",
                n.workers,
                n.generation,
                self.registered.generation
            ),
            (Some(_), None) => tracing::info!(
                generation = self.registered.generation,
                "no worker with a newer config is running any more: taking work again"
            ),
            _ => {}
        }
        self.telemetry.set_standing_aside(newer.is_some());
        *last = newer;
    }

    /// Reports to `telemetry` (the one `hubsync run` serves) instead of a registry of its own.
    pub(crate) fn with_telemetry(mut self, telemetry: crate::telemetry::Telemetry) -> Worker {
        self.telemetry = telemetry;
        self
    }

    /// Now, in the portal's time zone (UTC when unknown).
    pub(crate) fn portal_now(&self) -> DateTime<FixedOffset> {
        crate::core::portal::now_in(self.portal)
    }

    /// A daily 429 waits for the portal's midnight; when the portal's time zone is unknown, an
    /// hour at most, after which the next request probes whether the day has turned.
    pub(crate) fn daily_wait(&self, outcome: Outcome) -> Outcome {
        outcome.daily_wait(self.portal.is_some())
    }

    /// A 429: every worker waits `wait` (not an attempt against anything).
    pub(crate) async fn pause_everyone(&self, wait: Duration, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(
            wait_ms = wait.as_millis() as u64,
            "{reason}; pausing every worker"
        );
        Ok(self.limiter.pause(wait, reason).await?)
    }

    /// A 401/403, or a request HubSpot would refuse whatever it held (404, a company key
    /// property that is not unique): every worker stops sending until the next probe; nothing
    /// is consumed.
    pub(crate) async fn halt(&self, status: u16, reason: &str) -> anyhow::Result<()> {
        let probe = self.config.worker.auth_probe_interval;
        // Each sync loop meets the refusal: one error line per halt, not one per loop.
        if self.telemetry.halted() {
            tracing::debug!(status, "{reason}; still halted");
        } else {
            tracing::error!(
                status,
                "{reason}. Syncing is halted; nothing is consumed or dead-lettered; retrying in {probe:?}"
            );
        }
        self.telemetry.set_halted(reason);
        // `halted:` tells `hubsync status` a halt from a 429's pause.
        Ok(self
            .limiter
            .pause(probe, &format!("halted: {reason}"))
            .await?)
    }

    /// How long a request that got no answer may still be carried out: its gateway gives up
    /// well within four of our timeouts. Objects are written once more, and associations tried
    /// again, only after it.
    pub(crate) fn settle(&self) -> Duration {
        self.client.timeout() * crate::config::SETTLE_TIMEOUTS
    }

    /// The longest an object's tries in a row can take: each waits at most the backoff's cap
    /// (longer only when HubSpot asks) and a request's settling.
    pub(crate) fn round(&self) -> Duration {
        let tries = u32::try_from(self.config.worker.max_attempts.max(1)).unwrap_or(u32::MAX);
        (crate::core::retry::CAP + self.settle()).saturating_mul(tries)
    }

    /// Replaces the jitter source (tests).
    pub fn with_jitter(mut self, jitter: Jitter) -> Worker {
        self.jitter = jitter;
        self
    }

    /// Ingests one chunk of the outbox or, while chunks come full (a backlog), up to
    /// [`PIPELINED_CHUNKS`] of them, each in its own transaction. The next chunk is claimed
    /// while the one before it is folded, so the database claims while this process folds;
    /// the folds themselves, and so the object locks, stay one at a time, in claim order.
    pub async fn ingest_once(&self) -> anyhow::Result<ingest::Ingested> {
        let chunk = self.config.worker.ingest_chunk;
        let generation = self.generation();
        let claim = || ingest::claim(self.pool.clone(), chunk, generation);
        let mut total = ingest::Ingested::default();
        let mut started = Instant::now();
        let mut claimed = claim().await;
        for round in 1..=PIPELINED_CHUNKS {
            let full = claimed.as_ref().is_ok_and(ingest::Claimed::backlog);
            // Claimed in a task of its own, so it goes on while this one folds; if this fold
            // fails, the task's transaction rolls back when it ends.
            let next =
                (full && round < PIPELINED_CHUNKS).then(|| (Instant::now(), tokio::spawn(claim())));
            let fold = async { ingest::fold_claimed(&self.config, claimed?).await };
            let done = match self.telemetry.ingest(started, fold).await {
                Ok(done) => done,
                // Chunks already committed count; the failure shows again at the next look.
                Err(e) if total.claimed > 0 => {
                    tracing::warn!(
                        "ingest stopped part way through the backlog, after {} events: {}; \
                         the chunk that failed was rolled back and is taken again at the next look",
                        total.claimed,
                        crate::telemetry::chain(&e)
                    );
                    break;
                }
                Err(e) => return Err(e),
            };
            self.backlog.store(done.backlog, Ordering::Relaxed);
            if done.newer.is_some() {
                self.note_newer(done.newer.clone());
            }
            total.add(done);
            let Some((at, task)) = next else { break };
            started = at;
            claimed = task
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the ingest claim task failed: {e}")));
        }
        Ok(total)
    }

    /// Syncs one batch of `kind`.
    pub async fn sync_once(
        &self,
        kind: ObjectType,
        cancel: &CancellationToken,
    ) -> anyhow::Result<SyncReport> {
        let batch = sync::sync_once(self, kind, cancel);
        self.telemetry.batch(kind, batch).await
    }

    /// Replays due dead-letter rows: events are folded again, objects queued for sync.
    /// Returns how many rows were replayed.
    pub(crate) async fn replay_once(&self) -> anyhow::Result<usize> {
        let events = ingest::replay_due_events(&self.pool, &self.config, self.generation()).await?;
        let objects = db::dlq::requeue_due_objects(&self.pool, 500, self.round()).await?;
        Ok(events.accepted + events.refused + usize::try_from(objects).unwrap_or(usize::MAX))
    }

    /// Upkeep: replay due DLQ rows and make pending contact→company associations.
    pub(crate) async fn upkeep_once(&self, cancel: &CancellationToken) -> anyhow::Result<usize> {
        if self.replay_once().await? > 0 {
            self.dirty.notify_waiters();
        }
        self.associate_once(cancel).await
    }

    /// One unit of every kind of work: replay due DLQ rows, ingest a chunk, sync a batch of
    /// each type, make pending associations.
    pub(crate) async fn run_once(&self, cancel: &CancellationToken) -> anyhow::Result<Step> {
        let replayed = self.replay_once().await?;
        let done = self.ingest_once().await?;
        // Events put back for a locked object are not consumed: they count once folded.
        let ingested = done.claimed - done.deferred;
        let mut step = Step {
            ingested,
            refused: done.refused,
            replayed,
            ..Step::default()
        };
        if ingested > 0 && self.backlog.load(Ordering::Relaxed) {
            // Fold the whole backlog first: many events per object collapse into one input.
            return Ok(step);
        }
        for kind in [ObjectType::Company, ObjectType::Contact] {
            let r = self.sync_once(kind, cancel).await?;
            step.sync.add(&r);
        }
        step.associated = self.associate_once(cancel).await?;
        Ok(step)
    }

    /// Runs steps until nothing is left that can be done now (`--until-idle`). Objects
    /// waiting for a retry delay or a pause count as not doable now.
    pub async fn run_until_idle(&self, cancel: &CancellationToken) -> anyhow::Result<Step> {
        let mut total = Step::default();
        let mut outage = Streak::new("draining");
        if self.heartbeat().await?.is_some() {
            // Nothing is taken while a newer config runs; the log says why.
            return Ok(total);
        }
        loop {
            let step = match self.run_once(cancel).await {
                Ok(step) => {
                    outage.succeeded();
                    step
                }
                // The database restarting or a connection dropping costs a retry; a cron run
                // gives up only when the failures go on (about two and a half minutes).
                Err(e) if outage.failures < UNTIL_IDLE_RETRIES => {
                    let wait = outage.failed(&e);
                    nap(cancel, wait).await;
                    if cancel.is_cancelled() {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            total.add(&step);
            if step.sync.halted {
                anyhow::bail!(
                    "syncing halted: HubSpot refused the credentials or the company key property (see the log above); nothing was consumed"
                );
            }
            let only_released = step.ingested == 0
                && step.associated == 0
                && step.replayed == 0
                && step.sync.leased > 0
                && step.sync.leased == step.sync.released;
            if step.is_idle() || cancel.is_cancelled() || only_released {
                return Ok(total);
            }
        }
    }

    /// Associates synced contacts with their synced companies (`docs/hubspot-behaviour.md` §6).
    async fn associate_once(&self, cancel: &CancellationToken) -> anyhow::Result<usize> {
        associate::associate_once(self, cancel).await
    }

    /// Holds `LISTEN hubsync` on a connection of its own and passes each notification on:
    /// new events to the ingest loop, replays to upkeep. After (re)connecting, it wakes ingest
    /// once, since notifications sent meanwhile were missed. Returns only when the pool closes.
    async fn listen(&self, cancel: &CancellationToken) {
        let mut outage = Streak::new("listening for new events");
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    let e = anyhow::Error::new(e).context("cannot LISTEN for new events");
                    nap(cancel, outage.failed(&e)).await;
                    continue;
                }
            };
            outage.succeeded();
            self.events.notify_one();
            self.reconnected.notify_one();
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        self.events.notify_one();
                        if n.payload() == "dlq" {
                            self.upkeep.notify_one();
                        }
                    }
                    // The connection dropped and was made again: look now.
                    Ok(None) => {
                        self.events.notify_one();
                        self.reconnected.notify_one();
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        let e = anyhow::Error::new(e).context("lost the LISTEN connection");
                        nap(cancel, outage.failed(&e)).await;
                        break;
                    }
                }
            }
        }
    }

    /// While the ingest loop has nothing to do (`idle`), holds the waiting slots on a
    /// connection of its own, so that producers notify (`db::wake`). Taking them waits for the
    /// producers that enqueued without notifying; once they are held, ingest looks once more
    /// and finds those producers' rows. They are let go as soon as ingest has work again, so
    /// that producers do not notify a worker that is busy anyway.
    async fn hold_slots_while_idle(
        &self,
        mut idle: tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) {
        let mut outage = Streak::new("waiting for new events");
        // Kept between idle spells while it works; dropped (and made again) once it fails.
        let mut kept: Option<sqlx::PgConnection> = None;
        loop {
            if idle.wait_for(|idle| *idle).await.is_err() {
                return;
            }
            let held = async {
                let mut conn = match kept.take() {
                    Some(conn) => conn,
                    None => db::wake::connect(&self.pool).await?,
                };
                db::wake::hold_slots(&mut conn).await?;
                Ok::<_, sqlx::Error>(conn)
            };
            let mut conn = match held.await {
                Ok(conn) => conn,
                Err(e) => {
                    let e = anyhow::Error::new(e)
                        .context("cannot tell producers that this worker waits for new events");
                    nap(cancel, outage.failed(&e)).await;
                    continue;
                }
            };
            outage.succeeded();
            // Producers that committed without notifying: ingest looks once more.
            self.events.notify_one();
            // Held until ingest has work. A dropped connection lets the slots go without a
            // word, so it is checked now and then, and whenever the LISTEN connection had to
            // be made again; if it is gone, the slots are taken again on a new one.
            let alive = loop {
                tokio::select! {
                    busy = async { idle.wait_for(|idle| !*idle).await.map(|_| ()) } => {
                        if busy.is_err() {
                            return;
                        }
                        break true;
                    }
                    _ = async {
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.worker.idle_poll) => {}
                            _ = self.reconnected.notified() => {}
                        }
                    } => {
                        if db::wake::still_there(&mut conn).await.is_err() {
                            break false;
                        }
                    }
                }
            };
            if alive {
                match db::wake::release_slots(&mut conn).await {
                    Ok(()) => kept = Some(conn),
                    Err(e) => tracing::debug!("could not let go of the waiting slots: {e}"),
                }
            }
        }
    }

    /// The long-running worker: one ingest loop, `concurrency` sync loops, one upkeep loop,
    /// until `cancel` fires; each loop finishes the step in flight before returning.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let settings = &self.config.worker;
        // With LISTEN, idle loops sleep until told (events, dirty objects, replays) and look
        // on their own only every `idle_poll`; without it, they poll every `poll_interval`.
        let idle = if settings.listen {
            settings.idle_poll
        } else {
            settings.poll_interval
        };
        // New events and replays are announced; ingest and upkeep look on their own only as a
        // safety net. Sync's own look also catches retries coming due, so it looks more often.
        let announced = if settings.listen {
            settings.idle_poll * 3
        } else {
            settings.poll_interval
        };
        // Whether the ingest loop found nothing to do at its last look.
        let (idle_tx, idle_rx) = tokio::sync::watch::channel(false);
        if settings.listen {
            let w = self.clone();
            let stop = cancel.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = w.listen(&stop) => {}
                }
                Ok::<(), anyhow::Error>(())
            });
            let w = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = w.hold_slots_while_idle(idle_rx, &cancel) => {}
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        {
            let w = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let mut outage = Streak::new("ingest");
                let mut locked = Streak::new("ingest");
                while !cancel.is_cancelled() {
                    match w.ingest_once().await {
                        Ok(done) => {
                            outage.succeeded();
                            if done.deferred > 0 {
                                locked.note(format_args!(
                                    "{} events wait in the outbox: another session holds their objects' rows locked",
                                    done.deferred
                                ));
                            } else {
                                locked.succeeded();
                            }
                            if done.accepted > 0 {
                                w.dirty.notify_waiters();
                            }
                            // Nothing consumed (empty, or only events for locked objects).
                            if done.claimed == done.deferred {
                                idle_tx.send_if_modified(|idle| !std::mem::replace(idle, true));
                                wait_for(&w.events, &cancel, announced).await;
                            } else {
                                idle_tx.send_if_modified(|idle| std::mem::replace(idle, false));
                            }
                        }
                        Err(e) => {
                            let wait = outage.failed(&e);
                            nap(&cancel, wait).await;
                        }
                    }
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        for n in 0..self.config.worker.concurrency {
            let w = self.clone();
            let cancel = cancel.clone();
            // One loop looks on its own now and then; the others wait to be told, so an idle
            // worker costs the database next to nothing.
            let own_look = if n == 0 || !settings.listen {
                idle
            } else {
                Duration::from_secs(3600)
            };
            tasks.spawn(async move {
                let mut held_since: Option<Instant> = None;
                let mut outage = Streak::new("sync");
                // When the soonest object this loop scheduled (a retry, a write to repeat)
                // falls due: remembered across the busy steps that follow its scheduling.
                let mut due_at: Option<Instant> = None;
                while !cancel.is_cancelled() {
                    // Registered before the step, so a wake-up during it is not lost.
                    let told = w.dirty.notified();
                    tokio::pin!(told);
                    told.as_mut().enable();
                    // While a deep backlog is being folded, hold syncing briefly so that many
                    // events per object collapse into one input (never more than a second).
                    if w.backlog.load(Ordering::Relaxed) {
                        let since = *held_since.get_or_insert_with(Instant::now);
                        if since.elapsed() < Duration::from_secs(1) {
                            nap(&cancel, Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                    held_since = None;
                    // During a pause (429, bad credentials) leasing would only hand batches
                    // back; wait it out, waking now and then so a cleared pause is noticed.
                    match w.limiter.pause_remaining().await {
                        Ok(Some(wait)) => {
                            nap(&cancel, wait.min(Duration::from_secs(2))).await;
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let e = anyhow::Error::new(e).context("cannot read the shared limiter");
                            nap(&cancel, outage.failed(&e)).await;
                            continue;
                        }
                    }
                    let mut busy = false;
                    let mut failed = None;
                    let mut step = SyncReport::default();
                    // Alternate which type goes first so neither starves the other.
                    let kinds = if n % 2 == 0 {
                        [ObjectType::Contact, ObjectType::Company]
                    } else {
                        [ObjectType::Company, ObjectType::Contact]
                    };
                    for kind in kinds {
                        match w.sync_once(kind, &cancel).await {
                            Ok(r) => {
                                busy |= r.leased > 0 && r.released < r.leased;
                                step.add(&r);
                            }
                            Err(e) => failed = Some(e),
                        }
                    }
                    if step.written > 0 {
                        w.upkeep.notify_one();
                    }
                    if let Some(r) = step.retry_in {
                        let at = Instant::now() + r;
                        due_at = Some(due_at.map_or(at, |d| d.min(at)));
                    }
                    match failed {
                        Some(e) => nap(&cancel, outage.failed(&e)).await,
                        None if busy => {
                            outage.succeeded();
                            // More may be waiting: let the other loops help.
                            w.dirty.notify_waiters();
                        }
                        None => {
                            outage.succeeded();
                            let now = Instant::now();
                            // Kept until it has passed: a wake-up before then must not lose it.
                            due_at = due_at.filter(|d| *d > now);
                            let wait = due_at.map_or(own_look, |d| (d - now).min(own_look));
                            tokio::select! {
                                _ = cancel.cancelled() => {}
                                _ = &mut told => {}
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                    }
                }
                Ok(())
            });
        }
        {
            let w = self.clone();
            let cancel = cancel.clone();
            let upkeep_look = if settings.listen {
                announced
            } else {
                Duration::from_secs(1)
            };
            tasks.spawn(async move {
                let mut last_prune = Instant::now() - Duration::from_secs(3600);
                let mut outage = Streak::new("upkeep");
                while !cancel.is_cancelled() {
                    // A full batch of associations handled: more may be due, so the next
                    // round comes at once (the shared limiter paces the requests).
                    let more = match w.upkeep_once(&cancel).await {
                        Ok(handled) => {
                            outage.succeeded();
                            handled >= associate::BATCH
                        }
                        Err(e) => {
                            nap(&cancel, outage.failed(&e)).await;
                            continue;
                        }
                    };
                    if last_prune.elapsed() > Duration::from_secs(600) {
                        last_prune = Instant::now();
                        match db::retention::prune_ledger(&w.pool, w.config.worker.ledger_retention)
                            .await
                        {
                            Ok(n) if n > 0 => {
                                tracing::info!(removed = n, "pruned the delivered ledger")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!("ledger pruning failed: {e}"),
                        }
                    }
                    if !more {
                        wait_for(&w.upkeep, &cancel, upkeep_look).await;
                    }
                }
                Ok(())
            });
        }
        {
            // The heartbeat: the other workers see this one alive, and this one learns when a
            // newer config is rolled out (the statements that take work check it themselves).
            let w = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let mut outage = Streak::new("heartbeat");
                while !cancel.is_cancelled() {
                    match w.heartbeat().await {
                        Ok(_) => outage.succeeded(),
                        Err(e) => {
                            outage.failed(&e);
                        }
                    }
                    nap(&cancel, HEARTBEAT).await;
                }
                Ok(())
            });
        }
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done.context("a worker task panicked").and_then(|r| r) {
                result = Err(e);
            }
        }
        self.leave().await;
        result
    }

    /// Removes this worker's row from `hubsync.workers` as it stops, so that workers of an
    /// older config do not stand aside for one that no longer runs. A row left behind (the
    /// database unreachable) only counts as running for 30 s.
    pub async fn leave(&self) {
        if let Err(e) = db::generations::leave(&self.pool, self.id).await {
            tracing::debug!("could not remove this worker's row: {e}");
        }
    }
}

/// How many failed steps in a row `run_until_idle` rides out before it gives up.
const UNTIL_IDLE_RETRIES: u32 = 10;

/// Failures in a row of one loop: the first is logged as an error, the rest only counted, and
/// the recovery once; the wait before the next try grows with the streak.
struct Streak {
    what: &'static str,
    failures: u32,
}

impl Streak {
    fn new(what: &'static str) -> Streak {
        Streak { what, failures: 0 }
    }

    /// Records a failure; returns how long to wait before trying again.
    fn failed(&mut self, e: &anyhow::Error) -> Duration {
        if self.failures == 0 {
            tracing::error!(
                "{} failed: {}; retrying with growing delays (logged again when it works)",
                self.what,
                crate::telemetry::chain(e)
            );
        } else {
            tracing::debug!(
                failures = self.failures + 1,
                "{} failed again: {}",
                self.what,
                crate::telemetry::chain(e)
            );
        }
        self.failures += 1;
        crate::core::retry::outage_delay(self.failures)
    }

    /// Records a condition worth one warning per streak (not a failure: no wait).
    fn note(&mut self, what: std::fmt::Arguments<'_>) {
        if self.failures == 0 {
            tracing::warn!("{}: {what} (logged again when it clears)", self.what);
        }
        self.failures += 1;
    }

    /// Records a success, logging the end of a streak.
    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                "{} works again after {} failed tries",
                self.what,
                self.failures
            );
            self.failures = 0;
        }
    }
}

/// Waits until `told`, `cancel`, or `at_most` has passed.
async fn wait_for(told: &Notify, cancel: &CancellationToken, at_most: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = told.notified() => {}
        _ = tokio::time::sleep(at_most) => {}
    }
}

async fn nap(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
