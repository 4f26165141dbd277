//! The refresh threads: Redis -> the catalog, on every change and every
//! `REFRESH`.
//!
//! The refresh thread reads `seckill:events` and each goods' stock key,
//! builds a `Snapshot` and publishes it; the pub/sub thread listens on
//! `seckill:events:changed` and pokes it to read again at once. It re-reads
//! every `REFRESH` anyway, so a lost message heals and every node learns of
//! a change within 1 s (SPEC §2).
//!
//! One bad key costs only what it belongs to (SPEC §6.3): an event whose
//! JSON does not parse, or a goods whose stock key has the wrong type or is
//! not an integer, is left out of the snapshot (so it answers 4004), logged
//! once when it turns bad and once when it heals, and counted in
//! `seckill_catalog_skipped`; every other event and goods stays live. A
//! failed read keeps the last good snapshot and marks the node not ready.
//! Never: runs on an event loop thread.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};

use crate::catalog::event::{stock_number, EventDef};
use crate::catalog::snapshot::{Catalog, GoodsRead, Snapshot};
use crate::metrics::Metrics;
use crate::stock::Stock;
use crate::store::access::{keeps_data, Endpoint, Redis, Reply};
use crate::store::conn::connect;
use crate::store::keys::{self, GoodsKeys};

/// How often the catalog is re-read even without a pub/sub message.
pub(crate) const REFRESH: Duration = Duration::from_millis(500);

/// Stock left per goods as last read: shown for a goods whose Redis
/// Cluster master did not answer this time.
type LastLeft = HashMap<(String, String), i64>;

/// Reads everything once and builds a snapshot, telling `stock` as it goes.
/// The keys it had to skip are put in `bad`, each with why. On a Redis
/// Cluster a master that does not answer costs only its goods' fresh
/// figures (they keep `last`, and their shares stay as they are); when no
/// goods could be read, the read failed, as it does on one Redis when any
/// goods could not be.
fn read(
    conn: &mut Redis,
    stock: &Stock,
    bad: &mut BTreeMap<String, String>,
    last: &mut LastLeft,
) -> redis::RedisResult<Snapshot> {
    let raw = conn.query::<BTreeMap<String, Vec<u8>>>(redis::cmd("HGETALL").arg(keys::EVENTS))?;
    let mut defs: Vec<EventDef> = Vec::with_capacity(raw.len());
    for (id, json) in raw {
        match serde_json::from_slice::<EventDef>(&json) {
            Ok(def) if def.event_id == id && def.check().is_ok() => defs.push(def),
            _ => {
                bad.insert(format!("{} {id}", keys::EVENTS), "not a valid event".into());
            }
        }
    }
    // One goods' key of the wrong type fails only its own reply. Its
    // `added` and `stock` share a slot, so they come from one master;
    // `added` first: a top-up between the two reads then shows as stock
    // now and growth at the next read, never as growth cut back to the
    // stock from before it.
    let mut pipe = redis::pipe();
    for def in &defs {
        for g in &def.goods {
            let k = GoodsKeys::new(&def.event_id, &g.goods_id);
            pipe.cmd("GET").arg(&k.added).cmd("GET").arg(&k.stock);
        }
    }
    let replies = if pipe.is_empty() {
        Vec::new()
    } else {
        conn.round_trip_each(&pipe, None)
    };
    // On one Redis a trip that failed for any goods failed: the read
    // failed. On a cluster it failed when no goods could be read at all.
    if let Some(Err(e)) = replies.iter().find(|r| r.is_err()) {
        let read = replies.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        if !conn.is_cluster() || read == 0 {
            return Err(e.clone().into());
        }
    }
    let mut replies = replies.into_iter();
    let mut stocks = Vec::new();
    for def in &mut defs {
        let event_id = def.event_id.clone();
        def.goods.retain(|g| {
            let k = GoodsKeys::new(&event_id, &g.goods_id);
            let id = (event_id.clone(), g.goods_id.clone());
            let (added, left) = (replies.next(), replies.next());
            // Its master did not answer: not a bad key; as last known.
            if matches!(left, Some(Err(_))) || matches!(added, Some(Err(_))) {
                let left = last.get(&id).copied().unwrap_or(0);
                stocks.push(GoodsRead {
                    left,
                    added: 0,
                    fresh: false,
                });
                return true;
            }
            // A goods without a stock key has none left (the deduct
            // answers it "not found"); without an `added` key, no top-ups.
            let read = stock_key(left)
                .map_err(|why| (&k.stock, why))
                .and_then(|left| {
                    let added = stock_key(added).map_err(|why| (&k.added, why))?;
                    Ok((left, added))
                });
            match read {
                Ok((left, added)) => {
                    let left = left.max(0);
                    last.insert(id, left);
                    stocks.push(GoodsRead {
                        left,
                        added,
                        fresh: true,
                    });
                    true
                }
                Err((key, why)) => {
                    bad.insert(key.clone(), why);
                    false
                }
            }
        });
    }
    last.retain(|(e, g), _| {
        defs.iter()
            .any(|d| &d.event_id == e && d.goods.iter().any(|x| &x.goods_id == g))
    });
    Ok(Snapshot::build_read(&defs, stocks, stock, Instant::now()))
}

/// One counter key's reply (`stock`, `added`): absent is 0; anything but
/// an integer the deduct script takes is a bad key, with why.
fn stock_key(reply: Option<Reply>) -> Result<i64, String> {
    match reply {
        Some(Ok(Ok(redis::Value::Nil))) => Ok(0),
        Some(Ok(Ok(redis::Value::BulkString(b)))) => std::str::from_utf8(&b)
            .ok()
            .and_then(stock_number)
            .ok_or_else(|| "not an integer".to_string()),
        Some(Ok(Ok(other))) => Err(format!("unexpected reply {other:?}")),
        Some(Ok(Err(e))) => Err(e.to_string()),
        Some(Err(e)) => Err(format!("{e:?}")),
        None => Err("no reply".to_string()),
    }
}

/// Keeps the catalog and the stock table in step with Redis.
pub(crate) struct Refresher {
    conn: Redis,
    catalog: Arc<Catalog>,
    stock: Stock,
    metrics: Metrics,
    // The keys the last good read skipped, each with why (logged once).
    bad: BTreeMap<String, String>,
    // Whether Redis' persistence settings were read (once per process).
    persistence_known: bool,
    last: LastLeft,
}

impl Refresher {
    /// A refresher for `endpoint`; nothing is read until `refresh`.
    pub(crate) fn new(
        endpoint: &Endpoint,
        timeout: Duration,
        catalog: Arc<Catalog>,
        stock: Stock,
        metrics: Metrics,
    ) -> Result<Self, String> {
        Ok(Refresher {
            conn: Redis::open(endpoint, timeout).map_err(|e| format!("redis: {e}"))?,
            catalog,
            stock,
            metrics,
            bad: BTreeMap::new(),
            persistence_known: false,
            last: HashMap::new(),
        })
    }

    /// Reads Redis once and publishes the snapshot; false when Redis failed.
    pub(crate) fn refresh(&mut self) -> bool {
        let mut bad = BTreeMap::new();
        match read(&mut self.conn, &self.stock, &mut bad, &mut self.last) {
            Ok(snap) => {
                self.catalog.replace(snap);
                self.catalog.set_ready(true);
                self.note_bad(bad);
                self.check_persistence();
                true
            }
            // Redis answers, but `seckill:events` itself is unreadable (a
            // wrong type): keep serving the last catalog; Redis is up.
            Err(e)
                if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) =>
            {
                self.catalog.set_ready(true);
                bad.insert(keys::EVENTS.to_string(), e.to_string());
                self.note_bad(bad);
                true
            }
            Err(e) => {
                log::debug!("catalog read failed: {e}");
                self.catalog.set_ready(false);
                false
            }
        }
    }

    /// The first time Redis answers: reads whether it keeps data on disk
    /// (SPEC §3), warns once when it does not, and sets
    /// `seckill_redis_keeps_data`. (This thread reads Redis in the
    /// background anyway, so the check costs the loops nothing.)
    fn check_persistence(&mut self) {
        if self.persistence_known {
            return;
        }
        match keeps_data(&mut self.conn) {
            Ok(keeps) => {
                self.persistence_known = true;
                self.metrics.redis_keeps_data(keeps);
                if !keeps {
                    log::warn!(
                        "redis keeps nothing on disk (appendonly no, no save rules): a Redis crash loses every sale not yet in PostgreSQL; turn on appendonly"
                    );
                }
            }
            Err(e) => {
                // CONFIG renamed or refused (managed Redis): cannot tell.
                self.persistence_known = true;
                log::info!("cannot read redis persistence settings ({e}); not checked");
            }
        }
    }

    /// Logs keys that turned bad or healed since the last read (once each),
    /// and counts the bad ones.
    fn note_bad(&mut self, bad: BTreeMap<String, String>) {
        for (key, why) in &bad {
            if !self.bad.contains_key(key) {
                log::warn!("catalog: skipping {key}: {why}; the rest of the catalog stays live");
            }
        }
        let healed: BTreeSet<&String> = self.bad.keys().filter(|k| !bad.contains_key(*k)).collect();
        for key in healed {
            log::info!("catalog: {key} reads again");
        }
        self.metrics.catalog_skipped(bad.len());
        self.bad = bad;
    }

    /// Runs in the background until `stop`: re-reads every `REFRESH`, and at
    /// once when the pub/sub thread hears of a change.
    pub(crate) fn spawn(mut self, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let (tx, rx) = bounded::<()>(1);
        let clients = self.conn.subscribe_clients();
        let timeout = self.conn.timeout();
        let sub_stop = stop.clone();
        std::thread::Builder::new()
            .name("seckill-pubsub".into())
            .spawn(move || listen(clients, timeout, tx, sub_stop))?;
        std::thread::Builder::new()
            .name("seckill-catalog".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    self.refresh();
                    // A message, or REFRESH without one: read again.
                    let _ = rx.recv_timeout(REFRESH);
                }
            })?;
        Ok(())
    }
}

/// Subscribes to the change channel and pokes the refresher on each message;
/// reconnects with a growing pause (up to 5 s) when Redis is away. On a
/// cluster any node hears what is published on any other, so a node that
/// fails is left for the next one in `clients`.
fn listen(clients: Vec<redis::Client>, timeout: Duration, poke: Sender<()>, stop: Arc<AtomicBool>) {
    let mut pause = Duration::from_millis(100);
    let mut next = 0;
    while !stop.load(Ordering::Acquire) {
        let Some(client) = clients.get(next % clients.len().max(1)) else {
            return;
        };
        next += 1;
        let mut conn = match connect(client, timeout) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut pubsub = conn.as_pubsub();
        if pubsub.subscribe(keys::CHANGED).is_err()
            || pubsub
                .set_read_timeout(Some(Duration::from_secs(1)))
                .is_err()
        {
            continue;
        }
        pause = Duration::from_millis(100);
        // Anything may have changed while we were not listening.
        let _ = poke.try_send(());
        while !stop.load(Ordering::Acquire) {
            match pubsub.get_message() {
                Ok(_) => {
                    let _ = poke.try_send(());
                }
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}
