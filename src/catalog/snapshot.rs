//! The snapshot handle: the catalog at one moment, as the event loops read
//! it.
//!
//! A `Snapshot` holds what the loop needs of each event (window, goods) and
//! every public read answer pre-encoded (`/event/list`, `/event/info`).
//! `Catalog` is the shared handle: the loops take the current snapshot (one
//! `Arc` clone under a read lock, never a wait on Redis) and read
//! readiness; the refresh thread replaces it whole.
//! Invariants: a snapshot is never edited in place; building one tells
//! `Stock` of every goods and forgets the goods that are gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use serde::Serialize;

use crate::catalog::event::EventDef;
use crate::stock::Stock;

/// What the loop needs of one event to serve an attempt, plus its answer.
#[derive(Debug, Clone)]
pub(crate) struct EventView {
    /// Sales open at this unix second.
    pub(crate) start_at: u64,
    /// Sales close at this unix second.
    pub(crate) end_at: u64,
    /// Its goods ids.
    pub(crate) goods: Vec<String>,
    /// `data` of `/event/info`, pre-encoded.
    pub(crate) json: String,
}

impl EventView {
    /// Whether the event has this goods.
    pub(crate) fn has_goods(&self, goods_id: &str) -> bool {
        self.goods.iter().any(|g| g == goods_id)
    }
}

/// The catalog at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Events by id.
    pub(crate) events: BTreeMap<String, EventView>,
    /// `data` of `/event/list`, pre-encoded.
    pub(crate) list_json: String,
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
pub(crate) struct Catalog {
    snap: RwLock<Arc<Snapshot>>,
    ready: AtomicBool,
}

impl Catalog {
    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().clone()
    }

    /// Whether the last read of Redis succeeded (`/readyz`).
    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Publishes a new snapshot to every reader.
    pub(crate) fn replace(&self, snap: Snapshot) {
        *self.snap.write() = Arc::new(snap);
    }

    /// Records whether the last read of Redis succeeded, logging changes.
    pub(super) fn set_ready(&self, ready: bool) {
        if self.ready.swap(ready, Ordering::AcqRel) != ready {
            if ready {
                log::info!("redis answers: catalog loaded");
            } else {
                log::warn!("redis does not answer: keeping the last catalog");
            }
        }
    }
}

/// What a catalog read found of one goods.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GoodsRead {
    /// Its `stock` key: units left.
    pub(crate) left: i64,
    /// Its `added` key: units of top-ups (absent: 0).
    pub(crate) added: i64,
    /// Read just now; false: its master did not answer, `left` is as last
    /// read.
    pub(crate) fresh: bool,
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

impl Snapshot {
    /// Builds a snapshot from event definitions and each goods' stock left
    /// (in definition order), telling `stock` of every goods as it goes and
    /// forgetting the goods that are gone. Pure but for `stock`: no Redis.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn build(
        defs: &[EventDef],
        stocks: impl IntoIterator<Item = i64>,
        stock: &Stock,
        now: Instant,
    ) -> Snapshot {
        let reads = stocks.into_iter().map(|left| GoodsRead {
            left,
            added: 0,
            fresh: true,
        });
        Self::build_read(defs, reads, stock, now)
    }

    /// As `build`, from what was read of each goods: one not read (its
    /// Redis Cluster master did not answer) is shown as last known and not
    /// told to `stock`, so no share is recomputed from it.
    pub(crate) fn build_read(
        defs: &[EventDef],
        stocks: impl IntoIterator<Item = GoodsRead>,
        stock: &Stock,
        now: Instant,
    ) -> Snapshot {
        let mut stocks = stocks.into_iter();
        let mut events = BTreeMap::new();
        let mut list = Vec::with_capacity(defs.len());
        for def in defs {
            let mut goods_out = Vec::with_capacity(def.goods.len());
            for g in &def.goods {
                let GoodsRead { left, added, fresh } = stocks.next().unwrap_or(GoodsRead {
                    left: 0,
                    added: 0,
                    fresh: true,
                });
                if fresh {
                    stock.learn(&def.event_id, &g.goods_id, left, added, g.epoch, now);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_pre_encodes_reads_and_tells_stock() {
        let def: EventDef = serde_json::from_str(
            r#"{"event_id":"e1","name":"n","start_at":5,"end_at":9,"goods":[{"goods_id":"g1","stock":10},{"goods_id":"g2","stock":3}]}"#,
        )
        .unwrap();
        let stock = Stock::new(1, 1.0);
        stock.learn("old", "gone", 5, 0, 0, Instant::now());
        let snap = Snapshot::build(&[def], [7, 0], &stock, Instant::now());
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
}
