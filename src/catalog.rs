//! Beside the path: events and goods, Redis -> memory.
//!
//! In: `seckill:events` (event JSON by id) and each goods' stock key, read by
//! a background thread; any message on `seckill:events:changed` makes it
//! read again at once, and it re-reads every `REFRESH` anyway, so a lost
//! message heals and every node learns of a change within 1 s (SPEC §2).
//! Out: an immutable `Snapshot` the event loops read without waiting (one
//! `Arc` clone under a read lock), with every public read answer pre-encoded;
//! and `Stock` told what exists (`learn`, `retain`).
//! Invariants: the snapshot is replaced whole, never edited in place; a
//! failed read keeps the last good snapshot and marks the node not ready.
//! One bad key costs only what it belongs to (SPEC §6.3): an event whose
//! JSON does not parse, or a goods whose stock key has the wrong type or is
//! not an integer, is left out of the snapshot (so it answers 4004), logged
//! once when it turns bad and once when it heals, and counted in
//! `seckill_catalog_skipped`; every other event and goods stays live.
//! Never: runs on an event loop thread.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::auth::valid_id;
use crate::keys::{self, GoodsKeys};
use crate::metrics::Metrics;
use crate::redis_conn::{connect, LazyConn};
use crate::stock::Stock;

/// How often the catalog is re-read even without a pub/sub message.
pub const REFRESH: Duration = Duration::from_millis(500);

/// An event as stored in `seckill:events` (and posted to the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventDef {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub event_id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Sales open at this unix second.
    #[serde(default)]
    pub start_at: u64,
    /// Sales close at this unix second (exclusive).
    #[serde(default = "far_future")]
    pub end_at: u64,
    /// The goods on sale.
    #[serde(default)]
    pub goods: Vec<GoodsDef>,
}

fn far_future() -> u64 {
    u64::MAX
}

/// One goods of an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GoodsDef {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub goods_id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Price in cents.
    #[serde(default)]
    pub price_cents: u64,
    /// Stock the admin set.
    #[serde(default)]
    pub stock: i64,
    /// When (unix ms) the admin API last set this goods' stock key. Nodes
    /// recompute their share and forget their buyers when it changes (an
    /// admin `reset`); 0 for events written by other tools.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl EventDef {
    /// Checks ids and values; the reason is for logs and admin errors.
    pub fn check(&self) -> Result<(), &'static str> {
        if !valid_id(self.event_id.as_bytes()) {
            return Err("event_id");
        }
        if self.end_at < self.start_at {
            return Err("end_at before start_at");
        }
        let mut seen = HashSet::new();
        for g in &self.goods {
            if !valid_id(g.goods_id.as_bytes()) {
                return Err("goods_id");
            }
            if !seen.insert(g.goods_id.as_str()) {
                return Err("goods_id repeated");
            }
            if g.stock < 0 {
                return Err("stock below 0");
            }
            if g.stock > MAX_STOCK {
                return Err("stock above 15 digits");
            }
        }
        Ok(())
    }
}

/// What the loop needs of one event to serve an attempt, plus its answer.
#[derive(Debug, Clone)]
pub struct EventView {
    /// Sales open at this unix second.
    pub start_at: u64,
    /// Sales close at this unix second.
    pub end_at: u64,
    /// Its goods ids.
    pub goods: Vec<String>,
    /// `data` of `/event/info`, pre-encoded.
    pub json: String,
}

impl EventView {
    /// Whether the event has this goods.
    pub fn has_goods(&self, goods_id: &str) -> bool {
        self.goods.iter().any(|g| g == goods_id)
    }
}

/// The catalog at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Events by id.
    pub events: BTreeMap<String, EventView>,
    /// `data` of `/event/list`, pre-encoded.
    pub list_json: String,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            events: BTreeMap::new(),
            list_json: r#"{"events":[]}"#.to_string(),
        }
    }
}

/// Shared handle: the current snapshot and whether Redis answered lately.
#[derive(Debug, Default)]
pub struct Catalog {
    snap: RwLock<Arc<Snapshot>>,
    ready: AtomicBool,
}

impl Catalog {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().clone()
    }

    /// Whether the last read of Redis succeeded (`/readyz`).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Publishes a new snapshot to every reader.
    pub fn replace(&self, snap: Snapshot) {
        *self.snap.write() = Arc::new(snap);
    }

    fn set_ready(&self, ready: bool) {
        if self.ready.swap(ready, Ordering::AcqRel) != ready {
            if ready {
                log::info!("redis answers: catalog loaded");
            } else {
                log::warn!("redis does not answer: keeping the last catalog");
            }
        }
    }
}

/// Public shape of one goods in `/event/list` and `/event/info`.
#[derive(Serialize)]
struct GoodsOut<'a> {
    goods_id: &'a str,
    name: &'a str,
    price_cents: u64,
    stock_left: i64,
}

#[derive(Serialize)]
struct EventOut<'a> {
    event_id: &'a str,
    name: &'a str,
    start_at: u64,
    end_at: u64,
    goods: Vec<GoodsOut<'a>>,
}

/// Reads everything once and builds a snapshot, telling `stock` as it goes.
/// The keys it had to skip are put in `bad`, each with why.
fn read(
    conn: &mut LazyConn,
    stock: &Stock,
    bad: &mut BTreeMap<String, String>,
) -> redis::RedisResult<Snapshot> {
    let raw = redis::cmd("HGETALL")
        .arg(keys::EVENTS)
        .query::<BTreeMap<String, Vec<u8>>>(conn.get()?);
    let raw = conn.settle(raw)?;
    let mut defs: Vec<EventDef> = Vec::with_capacity(raw.len());
    for (id, json) in raw {
        match serde_json::from_slice::<EventDef>(&json) {
            Ok(def) if def.event_id == id && def.check().is_ok() => defs.push(def),
            _ => {
                bad.insert(format!("{} {id}", keys::EVENTS), "not a valid event".into());
            }
        }
    }
    // One goods' stock key of the wrong type fails only its own reply.
    let mut pipe = redis::pipe();
    for def in &defs {
        for g in &def.goods {
            pipe.cmd("GET")
                .arg(GoodsKeys::new(&def.event_id, &g.goods_id).stock);
        }
    }
    let replies = if pipe.is_empty() {
        Vec::new()
    } else {
        conn.round_trip(&pipe, None)
            .map_err(redis::RedisError::from)?
    };
    let mut replies = replies.into_iter();
    let mut stocks = Vec::new();
    for def in &mut defs {
        let event_id = def.event_id.clone();
        def.goods.retain(|g| {
            let key = GoodsKeys::new(&event_id, &g.goods_id).stock;
            let left = match replies.next() {
                // A goods without a stock key has none left (the deduct
                // answers it "not found").
                Some(Ok(redis::Value::Nil)) => Ok(0),
                Some(Ok(redis::Value::BulkString(b))) => std::str::from_utf8(&b)
                    .ok()
                    .and_then(stock_number)
                    .ok_or_else(|| "stock is not an integer".to_string()),
                Some(Ok(other)) => Err(format!("unexpected reply {other:?}")),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no reply".to_string()),
            };
            match left {
                Ok(left) => {
                    stocks.push(left.max(0));
                    true
                }
                Err(why) => {
                    bad.insert(key, why);
                    false
                }
            }
        });
    }
    Ok(Snapshot::build(&defs, stocks, stock))
}

/// The largest stock the deduct script takes (15 digits: exact in Lua).
pub const MAX_STOCK: i64 = 999_999_999_999_999;

/// A stock value as the deduct script accepts it (`deduct.lua`): an
/// integer written the way Redis writes one (no sign but "-", no leading
/// zero), at most 15 digits. "05" parses as a number in Rust but not in
/// Redis, so a goods the script would refuse is skipped here too.
pub fn stock_number(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = s == "0"
        || (!digits.is_empty()
            && digits.len() <= 15
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| s.parse().ok()).flatten()
}

impl Snapshot {
    /// Builds a snapshot from event definitions and each goods' stock left
    /// (in definition order), telling `stock` of every goods as it goes and
    /// forgetting the goods that are gone. Pure but for `stock`: no Redis.
    pub fn build(
        defs: &[EventDef],
        stocks: impl IntoIterator<Item = i64>,
        stock: &Stock,
    ) -> Snapshot {
        let mut stocks = stocks.into_iter();
        let mut events = BTreeMap::new();
        let mut list = Vec::with_capacity(defs.len());
        for def in defs {
            let mut goods_out = Vec::with_capacity(def.goods.len());
            for g in &def.goods {
                let left = stocks.next().unwrap_or(0);
                stock.learn(&def.event_id, &g.goods_id, left, g.epoch);
                goods_out.push(GoodsOut {
                    goods_id: &g.goods_id,
                    name: &g.name,
                    price_cents: g.price_cents,
                    stock_left: left,
                });
            }
            let out = EventOut {
                event_id: &def.event_id,
                name: &def.name,
                start_at: def.start_at,
                end_at: def.end_at,
                goods: goods_out,
            };
            let json = serde_json::to_string(&out).unwrap_or_else(|_| "null".into());
            list.push(out);
            events.insert(
                def.event_id.clone(),
                EventView {
                    start_at: def.start_at,
                    end_at: def.end_at,
                    goods: def.goods.iter().map(|g| g.goods_id.clone()).collect(),
                    json,
                },
            );
        }
        let list_json = serde_json::json!({ "events": list }).to_string();
        stock.retain(|e, g| events.get(e).is_some_and(|v: &EventView| v.has_goods(g)));
        Snapshot { events, list_json }
    }
}

/// Keeps the catalog and the stock table in step with Redis.
pub struct Refresher {
    conn: LazyConn,
    catalog: Arc<Catalog>,
    stock: Stock,
    metrics: Metrics,
    // The keys the last good read skipped, each with why (logged once).
    bad: BTreeMap<String, String>,
}

impl Refresher {
    /// A refresher for `url`; nothing is read until `refresh`.
    pub fn new(
        url: &str,
        timeout: Duration,
        catalog: Arc<Catalog>,
        stock: Stock,
        metrics: Metrics,
    ) -> Result<Self, String> {
        Ok(Refresher {
            conn: LazyConn::open(url, timeout).map_err(|e| format!("redis.url: {e}"))?,
            catalog,
            stock,
            metrics,
            bad: BTreeMap::new(),
        })
    }

    /// Reads Redis once and publishes the snapshot; false when Redis failed.
    pub fn refresh(&mut self) -> bool {
        let mut bad = BTreeMap::new();
        match read(&mut self.conn, &self.stock, &mut bad) {
            Ok(snap) => {
                self.catalog.replace(snap);
                self.catalog.set_ready(true);
                self.note_bad(bad);
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
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let (tx, rx) = bounded::<()>(1);
        let client = self.conn.client().clone();
        let timeout = self.conn.timeout();
        let sub_stop = stop.clone();
        std::thread::Builder::new()
            .name("seckill-pubsub".into())
            .spawn(move || listen(client, timeout, tx, sub_stop))?;
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
/// reconnects with a growing pause (up to 5 s) when Redis is away.
fn listen(client: redis::Client, timeout: Duration, poke: Sender<()>, stop: Arc<AtomicBool>) {
    let mut pause = Duration::from_millis(100);
    while !stop.load(Ordering::Acquire) {
        let mut conn = match connect(&client, timeout) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_from_other_tools_parses() {
        let json = r#"{"event_id":"e1","name":"bench","start_at":0,"end_at":4102444800,"goods":[{"goods_id":"g0","name":"sold out","price_cents":100,"stock":0}]}"#;
        let def: EventDef = serde_json::from_str(json).unwrap();
        assert_eq!(def.goods[0].epoch, 0);
        assert!(def.check().is_ok());
        // Epoch 0 is not written back, so the stored shape stays the SPEC's.
        assert_eq!(serde_json::to_string(&def).unwrap(), json);
    }

    #[test]
    fn snapshot_pre_encodes_reads_and_tells_stock() {
        let def: EventDef = serde_json::from_str(
            r#"{"event_id":"e1","name":"n","start_at":5,"end_at":9,"goods":[{"goods_id":"g1","stock":10},{"goods_id":"g2","stock":3}]}"#,
        )
        .unwrap();
        let stock = Stock::new(1, 1.0);
        stock.learn("old", "gone", 5, 0);
        let snap = Snapshot::build(&[def], [7, 0], &stock);
        let view = &snap.events["e1"];
        assert_eq!((view.start_at, view.end_at), (5, 9));
        assert!(view.has_goods("g2") && !view.has_goods("g3"));
        let info: serde_json::Value = serde_json::from_str(&view.json).unwrap();
        assert_eq!(info["goods"][0]["stock_left"], 7);
        let list: serde_json::Value = serde_json::from_str(&snap.list_json).unwrap();
        assert_eq!(list["events"][0], info);
        assert_eq!(stock.left("e1", "g1"), Some(7));
        assert_eq!(stock.left("e1", "g2"), Some(0));
        assert_eq!(
            stock.left("old", "gone"),
            None,
            "goods no longer listed are forgotten"
        );
    }

    #[test]
    fn stock_numbers_are_read_as_redis_writes_them() {
        for (text, want) in [
            ("0", Some(0)),
            ("5", Some(5)),
            ("-3", Some(-3)),
            ("999999999999999", Some(999_999_999_999_999)),
            ("05", None),
            ("-0", None),
            ("+5", None),
            (" 5", None),
            ("4.5", None),
            ("", None),
            ("-", None),
            ("1000000000000000", None),
        ] {
            assert_eq!(stock_number(text), want, "{text:?}");
        }
    }

    #[test]
    fn bad_definitions_are_refused() {
        let mut def: EventDef =
            serde_json::from_str(r#"{"event_id":"e1","goods":[{"goods_id":"g1","stock":1}]}"#)
                .unwrap();
        assert!(def.check().is_ok());
        def.goods.push(def.goods[0].clone());
        assert_eq!(def.check(), Err("goods_id repeated"));
        def.goods.pop();
        def.goods[0].stock = -1;
        assert_eq!(def.check(), Err("stock below 0"));
        def.goods[0].stock = MAX_STOCK + 1;
        assert_eq!(def.check(), Err("stock above 15 digits"));
        def.goods[0].stock = 1;
        def.event_id = "e:1".into();
        assert_eq!(def.check(), Err("event_id"));
    }
}
