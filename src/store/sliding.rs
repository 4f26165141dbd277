//! Stage 7, the other way (SPEC §3.1 `deduct.strategy = "sliding-lock"`):
//! the Lottery course's sliding stock-number lock, kept for comparison and
//! teaching. The default, `deduct.lua`, does a sale in one atomic script;
//! this does it in three round trips of plain commands, and shows what it
//! takes to keep every guarantee when steps can fail in between.
//!
//! One attempt, in three round trips to the goods' master:
//! 1. **A number.** `MULTI` `HEXISTS buyers uid`, `GET stock`, `HLEN
//!    buyers`, `INCR used` `EXEC`: the used count hands out stock number
//!    n, read together with what it is checked against — the goods' stock
//!    is `stock + HLEN buyers` (every sale moves one unit from one to the
//!    other in one transaction, so their sum is the stock, top-ups
//!    included). Already bought: 1005; `stock` at 0: 1001; no stock key:
//!    4004 — each giving the number back (`DECR used`).
//! 2. **The number's lock, and a watch.** `WATCH stock buyers orders`, `SET
//!    lock:n uid NX PX ttl`, and again `GET stock`, `HEXISTS buyers uid`,
//!    `XINFO STREAM orders` (the last order id, and the proof that the
//!    stream is a stream), in one trip. A lock already held means another
//!    attempt has number n (a number given back and handed out again, or
//!    a dead attempt's): this one keeps the count and tries the next.
//! 3. **The record.** `MULTI` `DECR stock`, `XADD orders <id>`, `HSET buyers
//!    uid <id>`, `DEL lock:n` `EXEC`, sent only on the connection that holds
//!    the watch. The order id is chosen here (above the stream's last id:
//!    within the watch nobody else can append), because a transaction
//!    cannot feed one command's reply into the next as the script does.
//!
//! # What can go wrong between the steps, and the repair
//!
//! - Anything that changed `stock`, `buyers` or `orders` between the watch
//!   and `EXEC` (another sale, a top-up, a reset) makes `EXEC` do nothing:
//!   the lock is released, the number given back, and the attempt starts
//!   over, until the batch's deadline (one `redis.timeout_ms` for the
//!   whole batch, as for the script); then it is answered 1002
//!   (`DeductError::Contended`, which the breaker does not count: Redis
//!   works). The watch is what makes the record safe: no oversell and one
//!   per user hold whatever the numbers say, across any number of nodes.
//! - The numbers are a pre-filter, as in the course, and may drift: a node
//!   killed between `INCR` and `EXEC`, or a trip that failed midway, leaves
//!   its number counted. The drift is repaired where it shows: a number
//!   above the stock while `stock` is still above 0 means numbers were
//!   lost (or are in flight elsewhere), so `used` is set back to what was
//!   sold and the attempt tries again — never a 1001 while units are left
//!   (no undersell). Numbers handed out twice meanwhile meet at the lock
//!   (step 2) or at the watch (step 3). A lock left by a dead attempt
//!   expires (`PX` `request_timeout_ms`, by when its attempt is answered);
//!   until then its number is skipped (kept counted, so the next try gets
//!   the next number).
//! - A watch that could not be followed by its `EXEC` (the time was up,
//!   the slot moved) is ended with `UNWATCH` on its connection, so it
//!   cannot abort a later transaction there.
//! - A trip that fails after `EXEC` was sent leaves the outcome unknown,
//!   as for the script: `DeductError::Unknown`, resolved by `HGET buyers`.
//! - A wrong-type key or a stock that is not an integer is found by the
//!   reads of steps 1 and 2, before `EXEC`; a key's type cannot change
//!   under the watch without `EXEC` doing nothing. So no unit goes without
//!   its order here either.
//!
//! Keys beyond the script's: `seckill:{E:G}:used` (the count) and
//! `seckill:{E:G}:lock:N` (SPEC §3); a reset and a `DELETE` remove both.
//! Never: batches (attempts go one at a time: each waits for its replies).

use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, Value};

use crate::attempt::Attempt;
use crate::catalog::event::stock_number;
use crate::store::access::Redis;
use crate::store::conn::TripError;
use crate::store::deduct::{DeductError, DeductOutcome};
use crate::store::keys::GoodsKeys;

/// The strategy's state: how long a lock lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlidingLock {
    /// `PX` of every lock: `request_timeout_ms`, the longest an attempt
    /// lives, so a dead attempt's lock is gone when its answer is due.
    pub(crate) lock_ttl: Duration,
}

/// What step 1 read.
struct Number {
    n: i64,
    bought: bool,
    stock: Option<i64>,
    sold: i64,
}

/// A reply the steps never expect, or a key of the goods that is bad:
/// the goods' own problem (`is_goods_specific`), as for the script.
fn bad_reply(what: &str) -> DeductError {
    DeductError::Script(RedisError::from((
        ErrorKind::Parse,
        "sliding-lock",
        format!("seckill: {what}"),
    )))
}

/// A reply that is an integer (`INCR`, `HLEN`, `HEXISTS`, `DECR`).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// `GET stock`: absent, or an integer as the script takes one.
fn stock_of(v: &Value, key: &str) -> Result<Option<i64>, DeductError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(stock_number)
            .map(Some)
            .ok_or_else(|| bad_reply(&format!("{key} is not an integer"))),
        _ => Err(bad_reply("GET stock")),
    }
}

/// The order id for a sale at `ts_ms` in a stream whose last id is
/// `last` (`ms-seq`): above it, as `XADD *` would choose. None when the
/// last id is the largest there is (XADD would refuse any).
fn next_id(last: Option<(u64, u64)>, ts_ms: u64) -> Option<String> {
    match last {
        Some((ms, seq)) if ms >= ts_ms => match seq.checked_add(1) {
            Some(seq) => Some(format!("{ms}-{seq}")),
            None => ms.checked_add(1).map(|ms| format!("{ms}-0")),
        },
        _ => Some(format!("{ts_ms}-0")),
    }
}

/// `last-generated-id` from `XINFO STREAM`'s reply (a flat map in RESP2).
fn last_id(v: &Value) -> Option<(u64, u64)> {
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let at = items.iter().position(|i| match i {
        Value::BulkString(b) => b == b"last-generated-id",
        Value::SimpleString(s) => s == "last-generated-id",
        _ => false,
    });
    let id = match items.get(at? + 1)? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl SlidingLock {
    /// One attempt, to the end: a sale, a refusal, or why not. It starts
    /// over until `until` (the batch's deadline): then `Contended` when it
    /// did reach Redis, `Unreachable` when there was no time left to try.
    pub(crate) fn deduct(
        &self,
        redis: &mut Redis,
        a: &Attempt,
        ts_ms: u64,
        until: Option<Instant>,
    ) -> Result<DeductOutcome, DeductError> {
        let k = GoodsKeys::new(&a.event_id, &a.goods_id);
        let mut tried = false;
        loop {
            if until.is_some_and(|u| Instant::now() >= u) {
                return Err(if tried {
                    DeductError::Contended
                } else {
                    DeductError::Unreachable(RedisError::from((
                        ErrorKind::Io,
                        "sliding-lock: the batch's time was up",
                    )))
                });
            }
            tried = true;
            let Some(num) = self.take_number(redis, &k, &a.uid, until)? else {
                continue; // a stray watch aborted the EXEC: again
            };
            let Some(stock) = num.stock else {
                // No such goods (deleted, say): the count goes too.
                let _ = redis.query_at::<()>(k.stock.as_bytes(), redis::cmd("DEL").arg(&k.used));
                return Ok(DeductOutcome::NotFound);
            };
            if num.bought {
                give_back(redis, &k, None, until);
                return Ok(DeductOutcome::AlreadyPurchased);
            }
            if stock <= 0 {
                give_back(redis, &k, None, until);
                return Ok(DeductOutcome::NoStock);
            }
            if num.n > stock + num.sold {
                // Over the stock while units are left: numbers were lost
                // (or are in flight elsewhere). Count from what was sold,
                // and try again.
                log::debug!(
                    "{}: number {} over the stock with {stock} left: used set back to {}",
                    k.used,
                    num.n,
                    num.sold
                );
                let _ = redis.query_at::<()>(
                    k.stock.as_bytes(),
                    redis::cmd("SET").arg(&k.used).arg(num.sold),
                );
                continue;
            }
            if let Some(outcome) = self.record(redis, &k, a, num.n, ts_ms, until)? {
                return Ok(outcome);
            }
        }
    }

    /// Step 1: a number, with what it is checked against. None: the
    /// `EXEC` did nothing (a watch left on the connection fired).
    fn take_number(
        &self,
        redis: &mut Redis,
        k: &GoodsKeys,
        uid: &str,
        until: Option<Instant>,
    ) -> Result<Option<Number>, DeductError> {
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI")
            .cmd("HEXISTS")
            .arg(&k.buyers)
            .arg(uid)
            .cmd("GET")
            .arg(&k.stock)
            .cmd("HLEN")
            .arg(&k.buyers)
            .cmd("INCR")
            .arg(&k.used)
            .cmd("EXEC");
        // Nothing is recorded in this step: a failed trip sold nothing,
        // whatever it did to the count (a drift the next attempts repair).
        let replies = redis
            .round_trip_at(k.stock.as_bytes(), &pipe, until)
            .map_err(|e| DeductError::Unreachable(e.into()))?;
        let exec = match replies.last() {
            Some(Ok(Value::Array(items))) if items.len() == 4 => items.clone(),
            Some(Ok(Value::Nil)) => return Ok(None),
            Some(Ok(_)) | None => return Err(bad_reply("EXEC")),
            Some(Err(e)) => return Err(DeductError::Script(e.clone())),
        };
        // A wrong-type key fails its own command inside EXEC.
        for item in &exec {
            if let Value::ServerError(e) = item {
                return Err(DeductError::Script(RedisError::from(e.clone())));
            }
        }
        Ok(Some(Number {
            bought: int(&exec[0]).ok_or_else(|| bad_reply("HEXISTS"))? == 1,
            stock: stock_of(&exec[1], &k.stock)?,
            sold: int(&exec[2]).ok_or_else(|| bad_reply("HLEN"))?,
            n: int(&exec[3]).ok_or_else(|| bad_reply("INCR used"))?,
        }))
    }

    /// Steps 2 and 3: the lock and the watch, then the record. None: start
    /// over (the number was taken, or the watch fired).
    fn record(
        &self,
        redis: &mut Redis,
        k: &GoodsKeys,
        a: &Attempt,
        n: i64,
        ts_ms: u64,
        until: Option<Instant>,
    ) -> Result<Option<DeductOutcome>, DeductError> {
        let lock = format!("{}:{n}", k.lock_prefix);
        let mut then = redis::pipe();
        then.cmd("SET")
            .arg(&lock)
            .arg(&a.uid)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis().max(1) as u64)
            .cmd("GET")
            .arg(&k.stock)
            .cmd("HEXISTS")
            .arg(&k.buyers)
            .arg(&a.uid)
            .cmd("XINFO")
            .arg("STREAM")
            .arg(&k.orders);
        let watched: [&[u8]; 3] = [k.stock.as_bytes(), k.buyers.as_bytes(), k.orders.as_bytes()];
        let (watch, replies) = match redis.watch_and(&watched, &then, until) {
            Ok(w) => w,
            // Nothing recorded: at worst a lock that expires and a count
            // that drifts, both repaired.
            Err(e) => {
                give_back(redis, k, Some(&lock), until);
                return Err(DeductError::Unreachable(e.into()));
            }
        };
        let [locked, stock, bought, info] = &replies[..] else {
            give_back(redis, k, Some(&lock), until);
            return Err(bad_reply("WATCH replies"));
        };
        let unwatch = |redis: &mut Redis, lock: Option<&str>| {
            redis.unwatch(watch);
            give_back(redis, k, lock, until);
        };
        match locked {
            Ok(Value::Okay) => {}
            // Another attempt holds number n (or a dead one did): the
            // number stays counted, so the next try gets the one after it
            // rather than this one again; any drift is repaired above.
            Ok(Value::Nil) => {
                redis.unwatch(watch);
                return Ok(None);
            }
            Ok(_) => {
                unwatch(redis, Some(&lock));
                return Err(bad_reply("SET NX"));
            }
            Err(e) => {
                unwatch(redis, None);
                return Err(DeductError::Script(e.clone()));
            }
        }
        let (stock, bought, last) = match under_watch(stock, bought, info, &k.stock) {
            Ok(c) => (c.stock, c.bought, c.last),
            // The goods is gone since step 1 (a DELETE).
            Err(None) => {
                unwatch(redis, Some(&lock));
                return Ok(Some(DeductOutcome::NotFound));
            }
            Err(Some(e)) => {
                unwatch(redis, Some(&lock));
                return Err(e);
            }
        };
        if bought {
            unwatch(redis, Some(&lock));
            return Ok(Some(DeductOutcome::AlreadyPurchased));
        }
        if stock <= 0 {
            unwatch(redis, Some(&lock));
            return Ok(Some(DeductOutcome::NoStock));
        }
        let Some(id) = next_id(last, ts_ms) else {
            unwatch(redis, Some(&lock));
            return Err(bad_reply("the stream's last id is the largest there is"));
        };
        let mut tx = redis::pipe();
        tx.cmd("MULTI")
            .cmd("DECR")
            .arg(&k.stock)
            .cmd("XADD")
            .arg(&k.orders)
            .arg(&id)
            .arg("uid")
            .arg(&a.uid)
            .arg("event_id")
            .arg(&a.event_id)
            .arg("goods_id")
            .arg(&a.goods_id)
            .arg("ts_ms")
            .arg(ts_ms)
            .cmd("HSET")
            .arg(&k.buyers)
            .arg(&a.uid)
            .arg(&id)
            .cmd("DEL")
            .arg(&lock)
            .cmd("EXEC");
        let node = redis.watched_node(&watch);
        match redis.exec_watched(watch, k.stock.as_bytes(), &tx, until) {
            Ok(replies) => match replies.last() {
                // The watch fired: nothing was recorded. Start over.
                Some(Ok(Value::Nil)) => {
                    give_back(redis, k, Some(&lock), until);
                    Ok(None)
                }
                Some(Ok(Value::Array(items))) => match items.first().and_then(int) {
                    Some(stock_left) => Ok(Some(DeductOutcome::Won {
                        order_id: id,
                        stock_left,
                    })),
                    None => Err(DeductError::Reply),
                },
                // EXECABORT: refused while queueing (out of memory, say):
                // nothing ran.
                Some(Err(e)) if e.code() == Some("EXECABORT") => {
                    give_back(redis, k, Some(&lock), until);
                    Err(DeductError::Script(e.clone()))
                }
                // A command failed inside EXEC, and the others ran (a
                // transaction does not roll back): ask `buyers`, as for a
                // lost reply. Not expected: every key was checked under
                // the watch.
                Some(Err(_)) => Err(DeductError::Unknown { node }),
                _ => Err(DeductError::Reply),
            },
            // Nothing was sent (the slot moved, the time was up, or the
            // watch's connection is gone): end the watch where it was.
            Err(TripError::NotSent(_)) => {
                redis.unwatch(watch);
                give_back(redis, k, Some(&lock), until);
                Ok(None)
            }
            // EXEC may have run: ask `buyers` (the resolver), as for the
            // script. The lock expires; the count is repaired if need be.
            Err(TripError::Lost(_)) => Err(DeductError::Unknown { node }),
        }
    }
}

/// What step 2 read under the watch.
struct UnderWatch {
    stock: i64,
    bought: bool,
    // The stream's last id; None: no stream yet.
    last: Option<(u64, u64)>,
}

/// Err(None): the stock key is gone (the goods was deleted).
fn under_watch(
    stock: &redis::RedisResult<Value>,
    bought: &redis::RedisResult<Value>,
    info: &redis::RedisResult<Value>,
    stock_key: &str,
) -> Result<UnderWatch, Option<DeductError>> {
    let stock = match stock {
        Ok(v) => stock_of(v, stock_key)?.ok_or(None)?,
        Err(e) => return Err(Some(DeductError::Script(e.clone()))),
    };
    let bought = match bought {
        Ok(v) => int(v).ok_or_else(|| bad_reply("HEXISTS"))? == 1,
        Err(e) => return Err(Some(DeductError::Script(e.clone()))),
    };
    let last = match info {
        Ok(v) => Some(last_id(v).ok_or_else(|| bad_reply("XINFO STREAM"))?),
        // No stream yet: any id above 0-0.
        Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => None,
        Err(e) => return Err(Some(DeductError::Script(e.clone()))),
    };
    Ok(UnderWatch {
        stock,
        bought,
        last,
    })
}

/// Best effort, by `until`: the number back (`DECR used`) and `lock`
/// released. A failure here only leaves a drift the next attempts repair,
/// or a lock that expires.
fn give_back(redis: &mut Redis, k: &GoodsKeys, lock: Option<&str>, until: Option<Instant>) {
    let mut pipe = redis::pipe();
    pipe.cmd("DECR").arg(&k.used);
    if let Some(lock) = lock {
        pipe.cmd("DEL").arg(lock);
    }
    // Within the batch's deadline too: with Redis hanging, the give-back
    // is the drift the next attempts repair, not a second timeout.
    if let Err(e) = redis.round_trip_at(k.stock.as_bytes(), &pipe, until) {
        log::debug!("sliding-lock: giving back {}: {e:?}", k.used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_go_above_the_last_one() {
        assert_eq!(next_id(None, 1000).as_deref(), Some("1000-0"));
        assert_eq!(next_id(Some((999, 4)), 1000).as_deref(), Some("1000-0"));
        assert_eq!(next_id(Some((1000, 4)), 1000).as_deref(), Some("1000-5"));
        assert_eq!(next_id(Some((2000, 0)), 1000).as_deref(), Some("2000-1"));
        assert_eq!(
            next_id(Some((2000, u64::MAX)), 1000).as_deref(),
            Some("2001-0")
        );
        assert_eq!(next_id(Some((u64::MAX, u64::MAX)), 1000), None);
    }

    #[test]
    fn the_last_id_is_read_from_xinfo() {
        let reply = Value::Array(vec![
            Value::BulkString(b"length".to_vec()),
            Value::Int(3),
            Value::BulkString(b"last-generated-id".to_vec()),
            Value::BulkString(b"1700000000000-7".to_vec()),
        ]);
        assert_eq!(last_id(&reply), Some((1_700_000_000_000, 7)));
        assert_eq!(last_id(&Value::Nil), None);
    }
}
