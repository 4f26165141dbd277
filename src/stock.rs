//! Stage 4 of 8: the node's memory share of each goods' stock (SPEC §4).
//!
//! In: a checked attempt (event, goods, uid). Out: a `Lease` (the request
//! may win and goes on to the queue) or `NoLease`, why not, which the event
//! loop answers at once: `NoStock` (1001), `AlreadyPurchased` (1005),
//! `Queued` (1004), `Unknown` (4004) (the codes are `codes.rs`'s).
//!
//! Invariants:
//! - a share never goes below zero: taking is a compare-and-swap that stops
//!   at zero, so "no stock" costs nothing to give back;
//! - every `Lease` ends exactly once: `commit` (a sale), `already_bought`
//!   (Redis says the uid bought before: the unit goes back, the uid is
//!   remembered), `sold_out` (Redis said no stock: the share drops to zero)
//!   or drop (anything else: the unit goes back and the uid leaves the
//!   queued list);
//! - a uid this node sold to, or whose attempt is still queued, never takes
//!   from the share again;
//! - no undersell: a share seen empty at every re-read for `REFILL_AFTER`
//!   while Redis still has stock that none of this node's queued attempts
//!   holds (another node died with its share, or the traffic went here)
//!   takes a new one from that stock; a goods Redis has sold out stays
//!   answered from memory.
//!
//! Never: calls Redis. `catalog` tells it what exists (`learn`, `retain`);
//! `worker` tells it how a lease ended.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

/// How long a share must have been seen empty, while Redis still has stock,
/// before it is refilled (SPEC §4). The second keeps the shares exact in
/// the first moments of a sale, when every node's share runs out at once.
pub(crate) const REFILL_AFTER: Duration = Duration::from_secs(1);

/// `ceil(stock × factor / nodes)`, never more than `stock`, never below 0.
pub(crate) fn share_of(stock: i64, nodes: u64, factor: f64) -> i64 {
    if stock <= 0 {
        return 0;
    }
    let share = (stock as f64 * factor / nodes.max(1) as f64).ceil();
    // f64 -> i64 saturates; a NaN (factor is checked at start) would give 0.
    (share as i64).clamp(0, stock)
}

/// event_id -> goods_id -> share.
type Shares = HashMap<String, HashMap<String, Arc<Share>>>;

/// Why `try_take` gave no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLease {
    /// 1001: the share is used up.
    NoStock,
    /// 1005: this node already sold this goods to this uid.
    AlreadyPurchased,
    /// 1004: this uid's earlier attempt is still queued.
    Queued,
    /// 4004: this node knows no such goods.
    Unknown,
}

/// Every goods' share on this node. Cheap to clone: a handle to shared state.
#[derive(Debug, Clone)]
pub struct Stock {
    nodes: u64,
    factor: f64,
    // event_id -> goods_id -> share. The lock is taken for reading on every
    // attempt and for writing only when the catalog adds or resets goods.
    goods: Arc<RwLock<Shares>>,
}

#[derive(Debug)]
struct Share {
    // INVARIANT: never below 0; only changed through `Stock` and `Lease`.
    left: AtomicI64,
    // The goods' `added` key (units of top-ups) as last read.
    added: AtomicI64,
    // How many top-ups grew this share (wraps; compared for equality).
    topups: AtomicU32,
    // The catalog's `epoch` of the stock this share was computed from; a new
    // epoch (an admin reset) replaces the share and its user lists.
    epoch: u64,
    users: Mutex<Users>,
    // When a re-read first saw the share empty while Redis had stock (None:
    // not seen so). Only `learn` uses it.
    empty_since: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Users {
    sold: HashSet<String>,
    queued: HashSet<String>,
}

impl Stock {
    /// An empty table for `nodes` nodes and over-provisioning `factor`.
    pub fn new(nodes: u64, factor: f64) -> Self {
        Stock {
            nodes,
            factor,
            goods: Arc::default(),
        }
    }

    fn share(&self, event_id: &str, goods_id: &str) -> Option<Arc<Share>> {
        self.goods.read().get(event_id)?.get(goods_id).cloned()
    }

    /// Takes one unit for `uid`, or says why not.
    pub fn try_take(&self, event_id: &str, goods_id: &str, uid: &str) -> Result<Lease, NoLease> {
        let Some(share) = self.share(event_id, goods_id) else {
            return Err(NoLease::Unknown);
        };
        let mut users = share.users.lock();
        if users.sold.contains(uid) {
            return Err(NoLease::AlreadyPurchased);
        }
        if users.queued.contains(uid) {
            return Err(NoLease::Queued);
        }
        let took = share
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then(|| n - 1)
            });
        if took.is_err() {
            return Err(NoLease::NoStock);
        }
        users.queued.insert(uid.to_string());
        drop(users);
        let topups = share.topups.load(Ordering::Acquire);
        Ok(Lease {
            share,
            uid: uid.to_string(),
            topups,
            ended: false,
        })
    }

    /// Tells the table that goods exists with `redis_stock` left and
    /// `added` units of top-ups, as of stock `epoch`, read at `now`. New
    /// goods, or a new epoch, get a fresh share; otherwise a top-up seen
    /// since the last read grows the share by its part of the units added
    /// (`top_up`), the share is lowered to what Redis still has (a sell-out
    /// elsewhere reaches this node this way even if its pub/sub message was
    /// lost), and a share that has stayed empty while Redis kept stock is
    /// refilled (see `refill`).
    pub fn learn(
        &self,
        event_id: &str,
        goods_id: &str,
        redis_stock: i64,
        added: i64,
        epoch: u64,
        now: Instant,
    ) {
        if let Some(share) = self.share(event_id, goods_id) {
            if share.epoch == epoch {
                self.top_up(&share, added, (event_id, goods_id));
                share.left.fetch_min(redis_stock.max(0), Ordering::AcqRel);
                self.refill(&share, redis_stock, now);
                return;
            }
        }
        let fresh = Arc::new(Share {
            left: AtomicI64::new(share_of(redis_stock, self.nodes, self.factor)),
            added: AtomicI64::new(added),
            topups: AtomicU32::new(0),
            epoch,
            users: Mutex::default(),
            empty_since: Mutex::new(None),
        });
        self.goods
            .write()
            .entry(event_id.to_string())
            .or_default()
            .insert(goods_id.to_string(), fresh);
    }

    /// A top-up (SPEC §2): `added` grew by n since the last read, so the
    /// share grows by `ceil(n × factor / nodes)`; a share at 0 (the node's
    /// sold-out mark) opens again. Only this refresh thread writes `added`.
    fn top_up(&self, share: &Share, added: i64, (event_id, goods_id): (&str, &str)) {
        let before = share.added.swap(added, Ordering::AcqRel);
        if added <= before {
            return;
        }
        let grow = share_of(added - before, self.nodes, self.factor);
        share.topups.fetch_add(1, Ordering::AcqRel);
        share.left.fetch_add(grow, Ordering::AcqRel);
        *share.empty_since.lock() = None;
        log::info!(
            "stock: {event_id}/{goods_id} topped up by {}: this node's share grows by {grow}",
            added - before
        );
    }

    /// No undersell (SPEC §4): a share seen empty at every re-read for
    /// `REFILL_AFTER` while Redis has stock beyond what this node's queued
    /// attempts may still take gets a new share of that stock. The check
    /// runs at each re-read (every 500 ms), so "empty for a second" is
    /// "empty at the re-reads of a second"; a unit given back in between
    /// that was taken again before the next re-read is not seen, which only
    /// delays nothing: the share was in use. Shares stay a pre-filter:
    /// Redis decides every sale, so a refill can over-admit (answered 1001
    /// by Redis) but never oversell.
    fn refill(&self, share: &Share, redis_stock: i64, now: Instant) {
        let mut since = share.empty_since.lock();
        // Attempts queued here hold units Redis still counts: not stranded.
        let stranded = redis_stock - share.users.lock().queued.len() as i64;
        if share.left.load(Ordering::Acquire) > 0 || stranded <= 0 {
            *since = None;
            return;
        }
        let Some(first) = *since else {
            *since = Some(now);
            return;
        };
        if now.saturating_duration_since(first) < REFILL_AFTER {
            return;
        }
        let fresh = share_of(stranded, self.nodes, self.factor);
        // Only an empty share: a unit given back since the load stays.
        if share
            .left
            .compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *since = None;
            log::info!("stock: share empty for {REFILL_AFTER:?} while Redis has {redis_stock} left: a new share of {fresh}");
        }
    }

    /// Forgets every goods for which `keep(event_id, goods_id)` is false.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut goods = self.goods.write();
        for (event_id, by_goods) in goods.iter_mut() {
            by_goods.retain(|goods_id, _| keep(event_id, goods_id));
        }
        goods.retain(|_, by_goods| !by_goods.is_empty());
    }

    /// Appends `seckill_stock_share{event,goods}` gauges for `/metrics`.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP seckill_stock_share This node's memory share left, by goods.\n");
        out.push_str("# TYPE seckill_stock_share gauge\n");
        for (event_id, by_goods) in self.goods.read().iter() {
            for (goods_id, share) in by_goods {
                let left = share.left.load(Ordering::Acquire);
                let _ = writeln!(
                    out,
                    "seckill_stock_share{{event=\"{event_id}\",goods=\"{goods_id}\"}} {left}"
                );
            }
        }
    }

    /// What is left of this node's share, if it knows the goods (tests).
    #[cfg(test)]
    pub(crate) fn left(&self, event_id: &str, goods_id: &str) -> Option<i64> {
        Some(self.share(event_id, goods_id)?.left.load(Ordering::Acquire))
    }
}

/// One unit of a share, held by an attempt on its way to Redis.
///
/// Ends as `commit` (sold), `already_bought` (unit back, uid remembered),
/// `sold_out` (Redis has none: the share drops to zero) or, when dropped,
/// gives its unit back. The drop is the last line of
/// "nothing lost": a task dropped on any path returns its stock.
#[derive(Debug)]
pub struct Lease {
    share: Arc<Share>,
    uid: String,
    // The share's top-ups when the lease was taken: a "no stock" from
    // before a later top-up must not close the share the top-up opened.
    topups: u32,
    // INVARIANT: true once commit or sold_out ran; Drop then does nothing.
    ended: bool,
}

impl Lease {
    /// The sale went through: keep the unit, remember the buyer.
    pub(crate) fn commit(mut self) {
        self.ended = true;
        let mut users = self.share.users.lock();
        users.queued.remove(&self.uid);
        users.sold.insert(std::mem::take(&mut self.uid));
    }

    /// Redis says this uid already bought (on another node, or before a
    /// restart): give the unit back, and answer 1005 from memory next time.
    pub(crate) fn already_bought(mut self) {
        self.ended = true;
        let mut users = self.share.users.lock();
        users.queued.remove(&self.uid);
        users.sold.insert(std::mem::take(&mut self.uid));
        drop(users);
        self.share.left.fetch_add(1, Ordering::AcqRel);
    }

    /// Redis has no stock left: drop the share to zero. Returns true when
    /// this call is what emptied a non-empty share (then the node just
    /// learned of the sell-out, and tells the others). A top-up seen since
    /// the lease was taken makes the "no stock" old news: the share stays
    /// open (the unit, which Redis never had, stays spent).
    pub(crate) fn sold_out(mut self) -> bool {
        self.ended = true;
        self.share.users.lock().queued.remove(&self.uid);
        if self.share.topups.load(Ordering::Acquire) != self.topups {
            return false;
        }
        self.share.left.swap(0, Ordering::AcqRel) > 0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.share.users.lock().queued.remove(&self.uid);
        self.share.left.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_formula_follows_the_seed_example() {
        assert_eq!(share_of(1000, 5, 1.5), 300);
        assert_eq!(share_of(1000, 1, 1.5), 1000);
        assert_eq!(share_of(10, 3, 1.5), 5);
        assert_eq!(share_of(1, 5, 1.5), 1);
        assert_eq!(share_of(100, 3, 1.0), 34);
        assert_eq!(share_of(0, 1, 1.5), 0);
        assert_eq!(share_of(-4, 1, 1.5), 0);
    }

    fn one_goods(stock: i64) -> Stock {
        let s = Stock::new(1, 1.0);
        s.learn("e", "g", stock, 0, 1, Instant::now());
        s
    }

    #[test]
    fn share_never_goes_below_zero() {
        let s = one_goods(2);
        let a = s.try_take("e", "g", "a");
        let b = s.try_take("e", "g", "b");
        assert!(matches!((&a, &b), (Ok(_), Ok(_))));
        for uid in ["c", "d", "e"] {
            assert!(matches!(s.try_take("e", "g", uid), Err(NoLease::NoStock)));
        }
        assert_eq!(s.left("e", "g"), Some(0));
    }

    #[test]
    fn dropped_lease_gives_back_and_unqueues() {
        let s = one_goods(1);
        let Ok(lease) = s.try_take("e", "g", "a") else {
            panic!()
        };
        assert!(matches!(s.try_take("e", "g", "a"), Err(NoLease::Queued)));
        assert_eq!(s.left("e", "g"), Some(0));
        drop(lease);
        assert_eq!(s.left("e", "g"), Some(1));
        assert!(s.try_take("e", "g", "a").is_ok());
    }

    #[test]
    fn committed_lease_keeps_the_unit_and_remembers_the_buyer() {
        let s = one_goods(5);
        let Ok(lease) = s.try_take("e", "g", "a") else {
            panic!()
        };
        lease.commit();
        assert_eq!(s.left("e", "g"), Some(4));
        assert!(matches!(
            s.try_take("e", "g", "a"),
            Err(NoLease::AlreadyPurchased)
        ));
        assert_eq!(s.left("e", "g"), Some(4));
    }

    #[test]
    fn already_bought_gives_back_and_remembers() {
        let s = one_goods(5);
        let Ok(lease) = s.try_take("e", "g", "a") else {
            panic!()
        };
        lease.already_bought();
        assert_eq!(s.left("e", "g"), Some(5));
        assert!(matches!(
            s.try_take("e", "g", "a"),
            Err(NoLease::AlreadyPurchased)
        ));
    }

    #[test]
    fn sold_out_lease_empties_the_share_once() {
        let s = one_goods(5);
        let Ok(a) = s.try_take("e", "g", "a") else {
            panic!()
        };
        let Ok(b) = s.try_take("e", "g", "b") else {
            panic!()
        };
        assert!(a.sold_out());
        assert!(!b.sold_out());
        assert_eq!(s.left("e", "g"), Some(0));
    }

    #[test]
    fn unknown_goods_is_unknown() {
        let s = one_goods(5);
        assert!(matches!(s.try_take("e", "x", "a"), Err(NoLease::Unknown)));
        assert!(matches!(s.try_take("x", "g", "a"), Err(NoLease::Unknown)));
    }

    #[test]
    fn learn_lowers_to_redis_and_resets_on_new_epoch() {
        let s = one_goods(10);
        let Ok(l) = s.try_take("e", "g", "a") else {
            panic!()
        };
        l.commit();
        let now = Instant::now();
        s.learn("e", "g", 3, 0, 1, now);
        assert_eq!(s.left("e", "g"), Some(3));
        s.learn("e", "g", 50, 0, 1, now);
        assert_eq!(
            s.left("e", "g"),
            Some(3),
            "same epoch never raises the share"
        );
        s.learn("e", "g", 50, 0, 2, now);
        assert_eq!(s.left("e", "g"), Some(50));
        assert!(s.try_take("e", "g", "a").is_ok(), "reset forgets buyers");
    }

    /// Takes every unit of e/g's share for fresh uids, committing each.
    fn sell_share(s: &Stock, prefix: &str) -> usize {
        let mut sold = 0;
        while let Ok(lease) = s.try_take("e", "g", &format!("{prefix}{sold}")) {
            lease.commit();
            sold += 1;
        }
        sold
    }

    #[test]
    fn an_empty_share_refills_after_a_second_while_redis_has_stock() {
        // SPEC §4's case: 300 stock, 3 nodes, factor 1: this node's share
        // is 100, and all the traffic comes here.
        let s = Stock::new(3, 1.0);
        let t0 = Instant::now();
        s.learn("e", "g", 300, 0, 1, t0);
        assert_eq!(sell_share(&s, "a"), 100);
        // Seen empty with 200 left in Redis: not yet (the first second of a
        // sale keeps shares exact), and not at 999 ms either.
        s.learn("e", "g", 200, 0, 1, t0);
        s.learn("e", "g", 200, 0, 1, t0 + Duration::from_millis(500));
        s.learn("e", "g", 200, 0, 1, t0 + Duration::from_millis(999));
        assert_eq!(s.left("e", "g"), Some(0));
        // A second: ceil(200 × 1.0 / 3).
        s.learn("e", "g", 200, 0, 1, t0 + REFILL_AFTER);
        assert_eq!(s.left("e", "g"), Some(67));
        assert!(
            matches!(s.try_take("e", "g", "a0"), Err(NoLease::AlreadyPurchased)),
            "buyers are kept"
        );
        assert_eq!(sell_share(&s, "b"), 67);
    }

    #[test]
    fn a_share_is_not_refilled_when_redis_is_sold_out_or_its_stock_is_queued_here() {
        let s = Stock::new(1, 1.0);
        let t0 = Instant::now();
        s.learn("e", "g", 2, 0, 1, t0);
        let Ok(a) = s.try_take("e", "g", "a") else {
            panic!()
        };
        let Ok(b) = s.try_take("e", "g", "b") else {
            panic!()
        };
        // Both units are queued here: Redis still counts them, but they are
        // not stranded.
        for ms in [0, 600, 1200, 5000] {
            s.learn("e", "g", 2, 0, 1, t0 + Duration::from_millis(ms));
        }
        assert_eq!(s.left("e", "g"), Some(0));
        a.commit();
        b.commit();
        // Truly sold out: answered from memory for good.
        for ms in [6000, 7000, 9000] {
            s.learn("e", "g", 0, 0, 1, t0 + Duration::from_millis(ms));
        }
        assert_eq!(s.left("e", "g"), Some(0));
    }

    #[test]
    fn a_share_seen_non_empty_starts_the_second_again() {
        let s = Stock::new(1, 1.0);
        let t0 = Instant::now();
        s.learn("e", "g", 1, 0, 1, t0);
        let Ok(a) = s.try_take("e", "g", "a") else {
            panic!()
        };
        s.learn("e", "g", 5, 0, 1, t0); // empty; Redis has 5 (a top-up, say)
        drop(a); // the unit comes back: not empty any more
        s.learn("e", "g", 5, 0, 1, t0 + Duration::from_millis(600));
        let Ok(a) = s.try_take("e", "g", "a") else {
            panic!()
        };
        a.commit();
        s.learn("e", "g", 4, 0, 1, t0 + Duration::from_millis(1200));
        assert_eq!(
            s.left("e", "g"),
            Some(0),
            "empty since 1200 ms, not since 0"
        );
        s.learn("e", "g", 4, 0, 1, t0 + Duration::from_millis(2200));
        assert_eq!(s.left("e", "g"), Some(4));
    }

    #[test]
    fn a_top_up_grows_the_share_and_opens_a_sold_out_one() {
        // SPEC §2's case: sold out on 3 nodes, then 50 added, factor 1.0:
        // each node's share grows by ceil(50 / 3) = 17.
        let s = Stock::new(3, 1.0);
        let t0 = Instant::now();
        s.learn("e", "g", 300, 0, 1, t0);
        assert_eq!(sell_share(&s, "a"), 100);
        s.learn("e", "g", 0, 0, 1, t0);
        s.learn("e", "g", 50, 50, 1, t0 + Duration::from_millis(100));
        assert_eq!(s.left("e", "g"), Some(17));
        assert!(
            matches!(s.try_take("e", "g", "a0"), Err(NoLease::AlreadyPurchased)),
            "buyers are kept"
        );
        // The same `added` read again grows nothing.
        s.learn("e", "g", 50, 50, 1, t0 + Duration::from_millis(600));
        assert_eq!(s.left("e", "g"), Some(17));
        // The share is lowered to what Redis has, as always.
        s.learn("e", "g", 5, 50, 1, t0 + Duration::from_millis(900));
        assert_eq!(s.left("e", "g"), Some(5));
    }

    #[test]
    fn a_no_stock_from_before_a_top_up_does_not_close_the_share() {
        let s = Stock::new(1, 1.0);
        let t0 = Instant::now();
        s.learn("e", "g", 1, 0, 1, t0);
        let Ok(lease) = s.try_take("e", "g", "a") else {
            panic!()
        };
        // The top-up is read while the attempt is on its way to Redis,
        // which then says "no stock" (it ran before the top-up).
        s.learn("e", "g", 10, 10, 1, t0 + Duration::from_millis(100));
        assert_eq!(s.left("e", "g"), Some(10));
        assert!(!lease.sold_out(), "old news: not a sell-out");
        assert_eq!(s.left("e", "g"), Some(10), "the share stays open");
        let Ok(lease) = s.try_take("e", "g", "a") else {
            panic!("the uid is not queued any more")
        };
        assert!(lease.sold_out(), "a no-stock after the top-up closes it");
        assert_eq!(s.left("e", "g"), Some(0));
    }

    #[test]
    fn retain_forgets_removed_goods() {
        let s = one_goods(10);
        s.learn("e", "h", 10, 0, 1, Instant::now());
        s.retain(|_, g| g == "h");
        assert_eq!(s.left("e", "g"), None);
        assert_eq!(s.left("e", "h"), Some(10));
    }
}
