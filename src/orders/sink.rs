//! The sink thread: every goods' `orders` stream into PostgreSQL, exactly
//! once (SPEC §9).
//!
//! One thread, one Redis connection, one PostgreSQL client (used by a
//! short-lived scoped thread while the next batch is read). Each pass:
//! 0. every `MEASURE`, set the lag gauge (before anything touches
//!    PostgreSQL, so an outage of it shows as lag rising);
//! 1. every second, learn the goods from `seckill:events`, make the group
//!    on each stream that exists (at id `0`), and bring `seckill_goods` up
//!    to date with the definitions; a goods with no stream yet (nothing
//!    sold) is looked at every 50 ms, so its first orders do not wait a
//!    second;
//! 2. every `claim_idle_ms / 2`, take over entries pending longer than
//!    `claim_idle_ms` at another consumer (a sink that died);
//! 3. for each goods, read this consumer's pending entries first, then new
//!    ones (at most `sink.batch`, one stream per read), write them in one
//!    transaction, and `XACK` them only after `COMMIT`; on a backlog, while
//!    one batch is written the last one is acknowledged and the next (new
//!    entries only) is read, up to `DRAIN_TURN` batches before the next
//!    goods' turn;
//! 4. every `reconcile_s`, the compensation scan: each stream's delivered
//!    entries that are neither pending nor in PostgreSQL are written (and
//!    counted as repaired), and `sold` is set to the row count.
//!
//! Exactly once, step by step: an entry is acknowledged only after its
//! transaction committed, so a crash before `XACK` leaves it pending and it
//! is read again (by this consumer on restart, or claimed by another); the
//! insert is idempotent on `(event_id, goods_id, order_id)`, so writing it
//! again changes nothing and `sold` rises only by rows really inserted. A
//! group that disappeared (Redis flushed, or restarted without its data) is
//! made again at `0` and replays harmlessly. What the group itself lost
//! (an entry acknowledged but never written, a database restored from an
//! older backup) the compensation scan finds.
//!
//! Failures: PostgreSQL or Redis down is retried with backoff (100 ms
//! doubling to 5 s), logged once per outage and counted in
//! `seckill_sink_retries_total`; the sale never waits for the sink. A
//! malformed entry is logged, counted, acknowledged and skipped; it never
//! blocks the entries behind it.
//! Never: writes to a stream or deletes an entry; runs on an event loop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::catalog::event::EventDef;
use crate::config::SinkConfig;
use crate::metrics::Metrics;
use crate::orders::db::{self, Db, GoodsRow};
use crate::orders::stream::{self, Goods, Read};
use crate::store::access::Redis;
use crate::store::keys::{self, GoodsKeys};
use crate::store::Endpoint;

/// How often the goods are learnt again from `seckill:events`.
const DISCOVER: Duration = Duration::from_secs(1);
/// How often goods with no stream yet (no sale so far) are looked at
/// again: a sale's first orders must not wait for the next discovery.
const WAITING: Duration = Duration::from_millis(50);
/// How often the lag is measured.
const MEASURE: Duration = Duration::from_millis(250);
/// Batches of one goods written in a row before the next goods' turn.
const DRAIN_TURN: usize = 16;
/// Pause when no stream had anything new.
const IDLE: Duration = Duration::from_millis(20);
/// Pause after a pass that wrote all it found, none of it a full batch:
/// orders trickling in during a sale are gathered for this long into one
/// transaction rather than written a few at a time, which costs the sale
/// (it shares the cores) a fraction: measured with `scripts/sink-lag.sh`,
/// sell-outs ran 12% slower with a sink writing every few milliseconds, and
/// within noise with this. The last sale still lands within about this plus
/// one write.
const LINGER: Duration = Duration::from_millis(100);
/// First pause after a failure; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connect timeout for PostgreSQL.
const PG_CONNECT: Duration = Duration::from_secs(2);

/// What a sink needs to start.
#[derive(Debug, Clone)]
pub struct SinkSetup {
    /// `redis.url`, or `redis.nodes` on a Redis Cluster.
    pub redis: Endpoint,
    /// `redis.timeout_ms`.
    pub redis_timeout: Duration,
    /// `[sink]`.
    pub config: SinkConfig,
    /// The consumer name, stable for this node across restarts.
    pub name: String,
}

/// This machine's host name (for consumer names), or `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// What a pass (or one goods' turn in it) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Found {
    /// Nothing new.
    Nothing,
    /// Orders, all written: the stream is caught up.
    Some,
    /// More than one turn could write: go again at once.
    Backlog,
}

/// Why a pass stopped early.
#[derive(Debug)]
enum Failure {
    Redis(redis::RedisError),
    Pg(String),
}

fn pg_failed(e: postgres::Error) -> Failure {
    Failure::Pg(db::explain(&e))
}

/// The sink and everything it owns.
pub struct Sink {
    redis: Redis,
    pg: Option<Db>,
    setup: SinkSetup,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    goods: Vec<Goods>,
    // Known goods whose stream does not exist yet (nothing sold).
    waiting: Vec<Goods>,
    waited_at: Option<Instant>,
    // The goods rows as the definitions say, from the last discovery.
    defs: Vec<GoodsRow>,
    // The goods rows last written to `seckill_goods`, to write only changes.
    rows: HashMap<(String, String), GoodsRow>,
    // Set when `defs` may differ from what PostgreSQL has.
    rows_dirty: bool,
    discovered_at: Option<Instant>,
    claimed_at: Option<Instant>,
    reconciled_at: Option<Instant>,
    measured_at: Option<Instant>,
    // The lag last measured (what the gauge shows).
    lag: u64,
    // Goods whose key is bad (a wrong-type stream): skipped, logged once.
    broken: HashSet<String>,
    // Set while an outage lasts, so it is logged once.
    pg_down: bool,
    redis_down: bool,
}

impl Sink {
    /// A sink; nothing is read until `run`.
    pub fn new(setup: SinkSetup, metrics: Metrics, stop: Arc<AtomicBool>) -> Result<Self, String> {
        let redis =
            Redis::open(&setup.redis, setup.redis_timeout).map_err(|e| format!("redis: {e}"))?;
        setup
            .config
            .url
            .parse::<postgres::Config>()
            .map_err(|e| format!("sink.url: {e}"))?;
        Ok(Sink {
            redis,
            pg: None,
            setup,
            metrics,
            stop,
            goods: Vec::new(),
            waiting: Vec::new(),
            waited_at: None,
            defs: Vec::new(),
            rows: HashMap::new(),
            rows_dirty: false,
            discovered_at: None,
            claimed_at: None,
            reconciled_at: None,
            measured_at: None,
            lag: 0,
            broken: HashSet::new(),
            pg_down: false,
            redis_down: false,
        })
    }

    /// Runs the sink on its own thread until `stop`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("seckill-sink".into())
            .spawn(move || self.run())
    }

    /// Runs until `stop` is set; the batch in hand is finished first.
    pub fn run(mut self) {
        self.metrics.sink_on();
        log::info!(
            "sink {}: orders from {} into PostgreSQL",
            self.setup.name,
            self.setup.redis
        );
        let mut backoff = MIN_BACKOFF;
        while !self.stopped() {
            match self.pass() {
                Ok(found) => {
                    backoff = MIN_BACKOFF;
                    match found {
                        Found::Nothing => self.pause(IDLE),
                        Found::Some => self.pause(LINGER),
                        Found::Backlog => {}
                    }
                }
                Err(failure) => {
                    self.metrics.sink_retry();
                    self.note(failure);
                    self.pause(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps `d`, waking early for the stop.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    /// Logs a failure once per outage, and drops the connection it came
    /// from so the next try connects anew.
    fn note(&mut self, failure: Failure) {
        match failure {
            Failure::Pg(e) => {
                self.pg = None;
                if !std::mem::replace(&mut self.pg_down, true) {
                    log::warn!("sink: PostgreSQL failed: {e}; retrying with backoff, sales go on");
                }
            }
            Failure::Redis(e) => {
                if !std::mem::replace(&mut self.redis_down, true) {
                    log::warn!("sink: Redis failed: {e}; retrying with backoff");
                }
            }
        }
    }

    /// One round over every goods.
    fn pass(&mut self) -> Result<Found, Failure> {
        let now = Instant::now();
        if !self.waiting.is_empty() && due(self.waited_at, WAITING, now) {
            if self.any_waiting_stream()? {
                self.discovered_at = None;
            }
            self.waited_at = Some(now);
        }
        if due(self.discovered_at, DISCOVER, now) {
            self.discover()?;
            self.discovered_at = Some(now);
        }
        // Measured before anything touches PostgreSQL, so an outage of it
        // (also one since the start) shows as lag rising.
        if due(self.measured_at, MEASURE, now) {
            self.measure()?;
            self.measured_at = Some(now);
        }
        if self.rows_dirty {
            self.write_goods_rows()?;
        }
        let claim_every = (self.setup.config.claim_idle() / 2).max(Duration::from_millis(10));
        if due(self.claimed_at, claim_every, now) {
            self.claim_all()?;
            self.claimed_at = Some(now);
        }
        let mut found = Found::Nothing;
        for goods in self.goods.clone() {
            if self.stopped() {
                // SIGTERM: no scan or measure after the batch in hand.
                return Ok(found);
            }
            found = found.max(self.drain(&goods)?);
        }
        // The first scan waits one period: a starting sink has its backlog
        // to read first.
        if self.reconciled_at.is_none() {
            self.reconciled_at = Some(now);
        }
        if due(self.reconciled_at, self.setup.config.reconcile_every(), now) {
            self.reconcile()?;
            self.reconciled_at = Some(now);
        }
        if found == Found::Nothing {
            // Caught up: say so at once rather than at the next tick.
            self.measure()?;
            self.measured_at = Some(now);
        }
        Ok(found)
    }

    /// The PostgreSQL client, connecting (and making the schema) first if
    /// there is none.
    fn pg(&mut self) -> Result<&mut Db, Failure> {
        let client = match self.pg.take() {
            Some(client) => client,
            None => {
                let client =
                    db::connect(&self.setup.config.url, PG_CONNECT).map_err(Failure::Pg)?;
                if std::mem::take(&mut self.pg_down) {
                    log::info!("sink: PostgreSQL answers again");
                }
                // Goods rows may have changed while it was away.
                self.rows.clear();
                self.rows_dirty = true;
                client
            }
        };
        Ok(self.pg.insert(client))
    }

    fn redis_ok(&mut self) {
        if std::mem::take(&mut self.redis_down) {
            log::info!("sink: Redis answers again");
        }
    }

    /// Learns the goods from `seckill:events` and makes the group on each
    /// stream that exists (Redis only: `write_goods_rows` takes the rows
    /// to PostgreSQL).
    fn discover(&mut self) -> Result<(), Failure> {
        let raw = self
            .redis
            .query::<HashMap<String, Vec<u8>>>(redis::cmd("HGETALL").arg(keys::EVENTS))
            .map_err(Failure::Redis)?;
        let mut goods = Vec::new();
        let mut rows = Vec::new();
        for (id, json) in raw {
            let Ok(def) = serde_json::from_slice::<EventDef>(&json) else {
                continue; // the catalog logs bad events
            };
            if def.event_id != id || def.check().is_err() {
                continue;
            }
            for g in &def.goods {
                goods.push(Goods {
                    event_id: def.event_id.clone(),
                    goods_id: g.goods_id.clone(),
                    key: GoodsKeys::new(&def.event_id, &g.goods_id).orders,
                });
                rows.push(GoodsRow {
                    event_id: def.event_id.clone(),
                    goods_id: g.goods_id.clone(),
                    name: g.name.clone(),
                    price_cents: i64::try_from(g.price_cents).unwrap_or(i64::MAX),
                    stock: g.stock,
                    orders_after: i64::try_from(g.orders_after).unwrap_or(i64::MAX),
                });
            }
        }
        // `seckill_goods.stock` is the definition's plus top-ups (SPEC §2).
        if !rows.is_empty() {
            let mut pipe = redis::pipe();
            for r in &rows {
                pipe.get(GoodsKeys::new(&r.event_id, &r.goods_id).added);
            }
            for (row, reply) in rows.iter_mut().zip(self.redis.round_trip_each(&pipe, None)) {
                let added = match reply {
                    Ok(Ok(v)) => redis::from_redis_value::<Option<i64>>(v).ok().flatten(),
                    // A bad key (a wrong type): the definition's stock.
                    Ok(Err(_)) => None,
                    Err(e) => return Err(Failure::Redis(e.into())),
                };
                row.stock = row.stock.saturating_add(added.unwrap_or(0));
            }
        }
        goods.sort_by(|a, b| a.key.cmp(&b.key));
        let mut ready = Vec::with_capacity(goods.len());
        let mut waiting = Vec::new();
        let mut broken = HashSet::new();
        for g in goods {
            match stream::ensure_group(&mut self.redis, &g.key) {
                Ok(()) => ready.push(g),
                // No sale made the stream yet: it is looked for every
                // WAITING, and its group made once it is there (still at
                // id 0: the first orders are in it).
                Err(e) if is_no_stream(&e) => waiting.push(g),
                // Redis itself failed: the whole pass waits.
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    return Err(Failure::Redis(e))
                }
                // One goods' key is bad (a wrong type): it costs only that
                // goods, logged once until it heals (SPEC §6.3).
                Err(e) => {
                    if !self.broken.contains(&g.key) {
                        log::warn!("sink: skipping {}: {e}", g.key);
                    }
                    broken.insert(g.key);
                }
            }
        }
        for key in self.broken.difference(&broken) {
            log::info!("sink: {key} reads again");
        }
        self.broken = broken;
        self.redis_ok();
        self.goods = ready;
        self.waiting = waiting;
        self.defs = rows;
        self.rows_dirty = true;
        Ok(())
    }

    /// A reset's line, from the goods' own `reset` key (the reset script
    /// writes it in the same step as the new stream), taken to PostgreSQL
    /// before the orders just read are written. The event's new definition
    /// says the same, but comes with the next discovery, up to a second
    /// later; meanwhile a buyer of the old sale who buys again would find
    /// their old row and their new order would land among the conflicts.
    /// One GET per turn of a goods that has orders.
    fn learn_reset(&mut self, goods: &Goods) -> Result<(), Failure> {
        let key = GoodsKeys::new(&goods.event_id, &goods.goods_id).reset;
        let line = self.redis.query::<Option<i64>>(redis::cmd("GET").arg(&key));
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            // Not a number (written by hand): the definition's line holds.
            Err(e) if !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) => {
                return Ok(())
            }
            Err(e) => return Err(Failure::Redis(e)),
        };
        let id = (goods.event_id.clone(), goods.goods_id.clone());
        let known = self.rows.get(&id).or_else(|| {
            self.defs
                .iter()
                .find(|r| r.event_id == id.0 && r.goods_id == id.1)
        });
        let Some(known) = known else {
            return Ok(()); // not a goods of a definition: never written
        };
        if known.orders_after >= line {
            return Ok(());
        }
        let mut row = known.clone();
        row.orders_after = line;
        db::upsert_goods(self.pg()?.client(), &row).map_err(pg_failed)?;
        self.rows.insert(id, row);
        Ok(())
    }

    /// Whether a stream appeared for some waiting goods (one round trip
    /// for all of them).
    fn any_waiting_stream(&mut self) -> Result<bool, Failure> {
        let mut pipe = redis::pipe();
        for g in &self.waiting {
            pipe.cmd("EXISTS").arg(&g.key);
        }
        let found = self
            .redis
            .query_pipe::<Vec<bool>>(&pipe)
            .map_err(Failure::Redis)?;
        Ok(found.contains(&true))
    }

    /// Brings `seckill_goods` up to date with the definitions (only the
    /// rows that changed), a reset included: before any batch of theirs.
    fn write_goods_rows(&mut self) -> Result<(), Failure> {
        for i in 0..self.defs.len() {
            let mut row = self.defs[i].clone();
            let key = (row.event_id.clone(), row.goods_id.clone());
            // A line learnt from the reset key stays, should the
            // definition not carry it (yet).
            if let Some(known) = self.rows.get(&key) {
                row.orders_after = row.orders_after.max(known.orders_after);
                if *known == row {
                    continue;
                }
            }
            db::upsert_goods(self.pg()?.client(), &row).map_err(pg_failed)?;
            self.rows.insert(key, row);
        }
        self.rows_dirty = false;
        Ok(())
    }

    /// Reads one goods' orders and writes them, a turn of up to
    /// `DRAIN_TURN` batches.
    fn drain(&mut self, goods: &Goods) -> Result<Found, Failure> {
        let batch = self.setup.config.batch;
        let read = match stream::read(&mut self.redis, goods, &self.setup.name, batch) {
            Ok(read) => read,
            Err(e) if stream::is_no_group(&e) => {
                // Redis lost the group (flushed, restarted without data, a
                // reset): learn again, which makes it at 0; the replay is
                // harmless.
                self.discovered_at = None;
                return Ok(Found::Backlog);
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(Failure::Redis(e))
            }
            // This goods' key went bad since discovery (a wrong type): the
            // next discovery sets it aside; the other goods go on.
            Err(_) => {
                self.discovered_at = None;
                return Ok(Found::Nothing);
            }
        };
        self.redis_ok();
        if read.is_empty() {
            return Ok(Found::Nothing);
        }
        if self.lag == 0 {
            // The gauge says caught up, measured when it was: new orders
            // came since, and it must not read 0 while they are written.
            self.measure()?;
            self.measured_at = Some(Instant::now());
        }
        self.learn_reset(goods)?;
        let mut read = read;
        // A backlog: while PostgreSQL writes one batch, the last one's XACK
        // goes out and the next batch is read from Redis (new entries only:
        // the one being written is still pending here). Up to DRAIN_TURN
        // batches, then the other goods get their turn.
        let mut committed: Option<Read> = None;
        let mut failed = None;
        let mut found = Found::Some;
        for turn in 0..DRAIN_TURN {
            // A full batch says more are likely waiting.
            let full = read.ids().count() >= batch;
            if full && turn + 1 == DRAIN_TURN {
                found = Found::Backlog; // the turn ends with more to write
            }
            let prefetch = full && turn + 1 < DRAIN_TURN;
            let (written, acked, next) =
                self.write_while_reading(goods, &read, committed.as_ref(), prefetch)?;
            // Counted by the rows it inserted: a batch written again
            // after a failure inserts none.
            self.metrics.sink_persisted(written.inserted);
            self.metrics.sink_conflicts(written.conflicts);
            acked.map_err(Failure::Redis)?;
            // What the acknowledged batch skipped is told once: a batch
            // read again after a failed XACK is not counted twice.
            if let Some(done) = committed.take() {
                self.note_skipped(goods, &done);
            }
            // Acknowledged only after COMMIT (with the next write, or
            // below): a crash before leaves them pending.
            committed = Some(read);
            if self.stopped() {
                // SIGTERM: the batch in hand is done; one read ahead stays
                // pending and comes first next time.
                break;
            }
            match next {
                Some(Ok(next)) if !next.is_empty() => read = next,
                Some(Err(e)) if !stream::is_no_group(&e) => {
                    failed = Some(e);
                    break;
                }
                _ => break,
            }
        }
        if let Some(done) = committed {
            stream::ack(&mut self.redis, goods, done.ids()).map_err(Failure::Redis)?;
            self.note_skipped(goods, &done);
        }
        match failed {
            Some(e) => Err(Failure::Redis(e)),
            None => Ok(found),
        }
    }

    /// Writes `read` to PostgreSQL on a scoped thread while this one
    /// acknowledges `committed` (a batch whose transaction committed) and
    /// reads the goods' next new entries (when `prefetch`). A failed write
    /// leaves its batch and the one read ahead pending: they are read again.
    #[allow(clippy::type_complexity)]
    fn write_while_reading(
        &mut self,
        goods: &Goods,
        read: &Read,
        committed: Option<&Read>,
        prefetch: bool,
    ) -> Result<
        (
            db::Written,
            redis::RedisResult<()>,
            Option<redis::RedisResult<Read>>,
        ),
        Failure,
    > {
        self.pg()?;
        // Never acknowledge what was not written: no client is a failure.
        let mut client = self
            .pg
            .take()
            .ok_or_else(|| Failure::Pg("no PostgreSQL client".into()))?;
        let redis = &mut self.redis;
        let (name, batch) = (&self.setup.name, self.setup.config.batch);
        let (written, acked, next) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let written = db::write(&mut client, &read.orders);
                (written, client)
            });
            let acked = match committed {
                Some(done) => stream::ack(redis, goods, done.ids()),
                None => Ok(()),
            };
            let next = prefetch.then(|| stream::read_new(redis, goods, name, batch));
            (writer.join(), acked, next)
        });
        let written = match written {
            Ok((written, client)) => {
                self.pg = Some(client);
                written.map_err(pg_failed)?
            }
            // The writer panicked (a bug): a fresh client next time.
            Err(_) => return Err(Failure::Pg("the PostgreSQL writer panicked".into())),
        };
        Ok((written, acked, next))
    }

    /// Logs and counts what a read found that is not written.
    fn note_skipped(&mut self, goods: &Goods, read: &Read) {
        for (id, why) in &read.malformed {
            log::warn!(
                "sink: {} entry {id} is not an order ({why}); skipped",
                goods.key
            );
        }
        self.metrics.sink_malformed(read.malformed.len() as u64);
        for id in &read.deleted {
            log::warn!(
                "sink: {} entry {id} was deleted before it was persisted (a reset or delete)",
                goods.key
            );
        }
    }

    /// Takes over entries idle too long at other consumers.
    fn claim_all(&mut self) -> Result<(), Failure> {
        let (idle, batch) = (self.setup.config.claim_idle_ms, self.setup.config.batch);
        for goods in self.goods.clone() {
            match stream::claim(&mut self.redis, &goods, &self.setup.name, idle, batch) {
                Ok(read) => {
                    for id in &read.deleted {
                        log::warn!(
                            "sink: {} entry {id} was deleted while pending (a reset or delete)",
                            goods.key
                        );
                    }
                    // The claimed entries are now this consumer's pending
                    // ones: the next read brings them first.
                }
                Err(e) if stream::is_no_group(&e) => self.discovered_at = None,
                Err(e) => return Err(Failure::Redis(e)),
            }
        }
        Ok(())
    }

    /// The compensation scan (see the module doc).
    fn reconcile(&mut self) -> Result<(), Failure> {
        let batch = self.setup.config.batch;
        for goods in self.goods.clone() {
            let Some(delivered) =
                stream::last_delivered(&mut self.redis, &goods).map_err(Failure::Redis)?
            else {
                continue;
            };
            let pending: HashSet<String> =
                stream::pending_ids(&mut self.redis, &goods).map_err(Failure::Redis)?;
            let stored = db::order_ids(self.pg()?.client(), &goods.event_id, &goods.goods_id)
                .map_err(pg_failed)?;
            let mut after = "-".to_string();
            let mut repaired = 0;
            loop {
                let read = stream::range(&mut self.redis, &goods, &after, batch)
                    .map_err(Failure::Redis)?;
                let Some(last) = read.ids().last().map(str::to_string) else {
                    break;
                };
                let missing: Vec<_> = read
                    .orders
                    .into_iter()
                    .filter(|o| {
                        stream::id_at_most(&o.order_id, &delivered)
                            && !pending.contains(&o.order_id)
                            && !stored.contains(&o.order_id)
                    })
                    .collect();
                if !missing.is_empty() {
                    let written = db::write(self.pg()?, &missing).map_err(pg_failed)?;
                    repaired += written.inserted;
                    self.metrics.sink_conflicts(written.conflicts);
                }
                if !stream::id_at_most(&last, &delivered) {
                    break;
                }
                after = last;
            }
            if repaired > 0 {
                log::warn!(
                    "sink: the compensation scan wrote {repaired} orders of {} that PostgreSQL did not have",
                    goods.key
                );
                self.metrics.sink_repaired(repaired);
            }
            db::recount(self.pg()?.client(), &goods.event_id, &goods.goods_id)
                .map_err(pg_failed)?;
        }
        Ok(())
    }

    /// Sets the lag gauge: entries not yet acknowledged, every goods.
    fn measure(&mut self) -> Result<(), Failure> {
        let mut lag = 0;
        for goods in self.goods.clone() {
            match stream::unpersisted(&mut self.redis, &goods) {
                Ok(n) => lag += n,
                Err(e) if stream::is_no_group(&e) => self.discovered_at = None,
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    return Err(Failure::Redis(e))
                }
                // A goods gone bad since discovery: the next discovery
                // says so; the others are still measured.
                Err(_) => self.discovered_at = None,
            }
        }
        self.lag = lag;
        self.metrics.sink_lag(lag);
        Ok(())
    }
}

/// Whether a thing last done at `last` is due again after `every`.
fn due(last: Option<Instant>, every: Duration, now: Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= every)
}

/// `XGROUP CREATE` on a key that does not exist (no sale yet).
fn is_no_stream(e: &redis::RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.contains("requires the key to exist"))
}
