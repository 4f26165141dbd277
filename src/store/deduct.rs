//! Stage 7 of 8: the Redis Lua deduct (SPEC §3).
//!
//! In: a batch of `Attempt`s and the sale's `ts_ms`. Out: one
//! `Result<DeductOutcome, DeductError>` per attempt, in order.
//! Invariants: one `EVALSHA` per attempt, pipelined per batch; only a
//! NOSCRIPT reply falls back to `EVAL` with the full script (after `SCRIPT
//! FLUSH` or on a fresh Redis); the script's SHA1 is computed once, at
//! start. The connection is an `access::Redis`: every call has the
//! `redis.timeout_ms` timeout, a failed connection is made anew, and on a
//! Redis Cluster each attempt goes to the master of its goods' slot (the
//! batch split per master; a NOSCRIPT answer falls back per master, as
//! each has its own script cache).
//!
//! # Knowing whether a sale happened
//!
//! A round trip that fails after the scripts were sent (a timeout, a reset)
//! leaves each attempt's outcome unknown: Redis may have run the script, or
//! may still run it when it gets to the bytes already in its socket. Such an
//! attempt is `DeductError::Unknown`, naming the server its script was
//! last written to, and the worker's resolve thread asks a [`Resolver`]
//! before answering it. The resolver works on its own connection and first
//! kills the failed ones on that server (`CLIENT KILL ID .. ADDR ..`, read
//! with `CLIENT INFO` when they were made, handed over by `take_dead`):
//! after the kill, nothing those connections sent can still run, so `HGET
//! buyers uid` is the truth. On a cluster each attempt waits only for the
//! kills on its own server, so a master that is down holds up only its own. Only when Redis cannot be reached before
//! the attempt's deadline is the outcome left unknown (README, "What is not
//! done yet").
//!
//! Never: knows of HTTP, sockets or the memory share.

use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use sha1::{Digest, Sha1};

use crate::attempt::Attempt;
use crate::config::Strategy;
use crate::store::access::{Endpoint, Redis, Route};
use crate::store::conn::{refused_for_good, ClientId, TripError};
use crate::store::keys::{self, GoodsKeys};
use crate::store::sliding::SlidingLock;

/// Failed connections the resolver remembers to kill, at most.
const MAX_DEAD: usize = 256;

/// The script, kept in its own file so it reads and diffs as Lua.
pub const SCRIPT: &str = include_str!("deduct.lua");

/// What the script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeductOutcome {
    /// Sold: the order's stream id, and the stock left after it.
    Won {
        /// The `orders` stream entry id.
        order_id: String,
        /// Stock left in Redis after this sale.
        stock_left: i64,
    },
    /// The uid is already in `buyers` (-2).
    AlreadyPurchased,
    /// The stock key is missing (-3).
    NotFound,
    /// The stock is 0 (-1).
    NoStock,
}

/// Why an attempt has no `DeductOutcome`.
#[derive(Debug)]
pub enum DeductError {
    /// Nothing reached Redis (it refused the connection): the script did
    /// not run.
    Unreachable(RedisError),
    /// The round trip failed after the script was sent: it may have run,
    /// or may still run, on `node` (`host:port`, where it was last
    /// written). Ask a `Resolver` before answering.
    Unknown {
        /// The server the script may still run on.
        node: String,
    },
    /// Redis answered an error for this attempt: the script refused a
    /// wrong-type key or a stock that is not an integer (checked before its
    /// first write, so nothing was written), or Redis refused to run it.
    Script(RedisError),
    /// A reply of a shape the script never returns.
    Reply,
    /// The sliding lock (`store::sliding`) kept starting over until the
    /// batch's deadline: other nodes' sales fired its watch, or its
    /// numbers were all held. Redis works: not a failure of Redis.
    Contended,
}

impl DeductError {
    /// Whether this error belongs to one goods (a bad key), not to Redis as
    /// a whole: such errors are counted per goods and do not feed the
    /// breaker, so one broken goods never stops the sale of the others.
    pub fn is_goods_specific(&self) -> bool {
        match self {
            DeductError::Script(e) => {
                e.code() == Some("WRONGTYPE") || e.detail().is_some_and(|d| d.contains("seckill:"))
            }
            DeductError::Reply => true,
            DeductError::Unreachable(_) | DeductError::Unknown { .. } | DeductError::Contended => {
                false
            }
        }
    }

    /// Whether this says Redis failed (the breaker counts it): not a bad
    /// key of one goods, and not the sliding lock's contention.
    pub fn is_redis_failure(&self) -> bool {
        !self.is_goods_specific() && !matches!(self, DeductError::Contended)
    }
}

/// What `resolve` found for one attempt whose outcome was unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The uid is in `buyers`: the sale stands.
    Won {
        /// Its order id (`HGET buyers uid`).
        order_id: String,
        /// The stock left now.
        stock_left: i64,
    },
    /// The uid is not in `buyers`, and nothing sent on the failed
    /// connection can run any more.
    NotSold,
}

/// A Redis connection that runs the deduct. One per worker thread.
pub struct Deducter {
    conn: Redis,
    // Some: the sliding stock-number lock instead of the script.
    sliding: Option<SlidingLock>,
    // The resolver's own connection, never the one that failed; taken by
    // the worker's resolve thread.
    resolver: Option<Resolver>,
    // INVARIANT: lowercase hex SHA1 of SCRIPT.
    sha: String,
}

/// Finds out what became of attempts whose outcome is unknown (see the
/// module docs), on its own connection.
pub(crate) struct Resolver {
    redis: Redis,
    // Connections of the deducter's dropped after a failure, not yet known
    // dead: each with its server.
    dead: Vec<(String, ClientId)>,
}

impl std::fmt::Debug for Deducter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deducter")
            .field("sha", &self.sha)
            .field("conn", &self.conn)
            .finish()
    }
}

/// The SHA1 Redis names a script by.
pub fn script_sha(script: &str) -> String {
    hex::encode(Sha1::digest(script.as_bytes()))
}

impl Deducter {
    /// A deducter for `endpoint` (a `redis.url`, or `Endpoint::Cluster`);
    /// it connects on first use.
    pub fn new(endpoint: impl Into<Endpoint>, timeout: Duration) -> Result<Self, RedisError> {
        let endpoint = endpoint.into();
        Ok(Deducter {
            conn: Redis::open(&endpoint, timeout)?.tracking_client_id(),
            sliding: None,
            resolver: Some(Resolver {
                redis: Redis::open(&endpoint, timeout)?,
                dead: Vec::new(),
            }),
            sha: script_sha(SCRIPT),
        })
    }

    /// The same deducter with `strategy`; `request_timeout` bounds an
    /// attempt's life, and so a sliding lock's.
    pub fn with_strategy(mut self, strategy: Strategy, request_timeout: Duration) -> Self {
        self.sliding = match strategy {
            Strategy::Lua => None,
            Strategy::SlidingLock => Some(SlidingLock {
                lock_ttl: request_timeout,
            }),
        };
        self
    }

    /// Runs the deduct for every attempt in one round trip (a pipeline of
    /// `EVALSHA`s), in order. Each script is atomic on its own; one failing
    /// (a wrong-type key, say) does not undo or hide the others' sales, so
    /// every attempt gets its own result. Attempts answered NOSCRIPT are sent
    /// again as `EVAL` (the script did not run for them); if that second
    /// round trip fails, only those become `Unknown`: the first trip's
    /// results stand.
    ///
    /// The whole batch takes at most `redis.timeout_ms`, and ends by
    /// `until` if that comes first (see `shutdown::TRIP_GRACE`).
    pub fn deduct_many(
        &mut self,
        attempts: &[&Attempt],
        ts_ms: u64,
        until: Option<Instant>,
    ) -> Vec<Result<DeductOutcome, DeductError>> {
        if let Some(sliding) = self.sliding {
            // One at a time, each to its end (see `store::sliding`), the
            // whole batch within one `redis.timeout_ms` as a script batch
            // is: once a trip times out, the rest are not tried.
            let batch = Instant::now() + self.conn.timeout();
            let until = Some(until.map_or(batch, |u| u.min(batch)));
            return attempts
                .iter()
                .map(|a| sliding.deduct(&mut self.conn, a, ts_ms, until))
                .collect();
        }
        let keys: Vec<GoodsKeys> = attempts
            .iter()
            .map(|a| GoodsKeys::new(&a.event_id, &a.goods_id))
            .collect();
        let mut pipe = redis::pipe();
        for (a, k) in attempts.iter().zip(&keys) {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.sha);
            add_args(&mut cmd, k, a, ts_ms);
            pipe.add_command(cmd);
        }
        let mut results: Vec<Result<DeductOutcome, DeductError>> = self
            .conn
            .round_trip_traced(&pipe, until)
            .into_iter()
            .map(|(reply, node)| to_result(reply, node))
            .collect();
        let noscript: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(r, Err(DeductError::Script(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
            })
            .map(|(i, _)| i)
            .collect();
        if !noscript.is_empty() {
            let mut eval = redis::pipe();
            for &i in &noscript {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SCRIPT);
                add_args(&mut cmd, &keys[i], attempts[i], ts_ms);
                eval.add_command(cmd);
            }
            let replies = self.conn.round_trip_traced(&eval, until);
            for (i, (reply, node)) in noscript.into_iter().zip(replies) {
                results[i] = to_result(reply, node);
            }
        }
        results
    }

    /// Whether Redis is a cluster: several servers, one of which may stall
    /// while the others sell.
    pub(crate) fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The resolver, for the thread that resolves (once).
    pub(crate) fn take_resolver(&mut self) -> Option<Resolver> {
        self.resolver.take()
    }

    /// The identities of the deducter's connections dropped after a
    /// failure, for the resolver to kill: handed over with the attempts
    /// whose outcome they left unknown.
    pub(crate) fn take_dead(&mut self) -> Vec<(String, ClientId)> {
        self.conn.take_dead()
    }

    /// Tells every node that this goods sold out (SPEC §3 channel).
    pub(crate) fn publish_sold_out(
        &mut self,
        event_id: &str,
        goods_id: &str,
    ) -> Result<(), RedisError> {
        let msg =
            serde_json::json!({"kind": "sold_out", "event_id": event_id, "goods_id": goods_id});
        self.conn
            .query::<Value>(
                redis::cmd("PUBLISH")
                    .arg(keys::CHANGED)
                    .arg(msg.to_string()),
            )
            .map(drop)
    }
}

impl Resolver {
    /// Connections to kill before trusting what Redis says of the
    /// attempts they carried.
    pub(crate) fn learn_dead(&mut self, dead: Vec<(String, ClientId)>) {
        for d in dead {
            if !self.dead.contains(&d) {
                if self.dead.len() == MAX_DEAD {
                    // Only while a server stays unreachable through many
                    // reconnects; the oldest's attempts are long answered.
                    let (node, old) = self.dead.remove(0);
                    log::warn!(
                        "forgetting failed redis connection {} on {node} unkilled: more than {MAX_DEAD} wait",
                        old.id
                    );
                }
                self.dead.push(d);
            }
        }
    }

    /// For each attempt (with the server its script may still run on), in
    /// one round trip: first `CLIENT KILL` of every dead connection to
    /// those servers, so that nothing they sent can still run, then `HGET
    /// buyers uid` and `GET stock`. None for an attempt not known yet (its
    /// server's kills or its lookup failed): the caller asks again until
    /// the attempt's deadline.
    pub(crate) fn resolve(
        &mut self,
        attempts: &[(&Attempt, &str)],
        until: Option<Instant>,
    ) -> Vec<Option<Resolved>> {
        let dead: Vec<(String, ClientId)> = self
            .dead
            .iter()
            .filter(|(node, _)| attempts.iter().any(|(_, n)| n == node))
            .cloned()
            .collect();
        let mut cmds = Vec::with_capacity(dead.len() + 2 * attempts.len());
        for (_, d) in &dead {
            // Both filters must match: after a Redis restart an id alone
            // could name another client.
            let mut kill = redis::cmd("CLIENT");
            kill.arg("KILL")
                .arg("ID")
                .arg(d.id)
                .arg("ADDR")
                .arg(&d.addr);
            cmds.push(kill);
        }
        for (a, _) in attempts {
            let k = GoodsKeys::new(&a.event_id, &a.goods_id);
            let mut hget = redis::cmd("HGET");
            hget.arg(&k.buyers).arg(&a.uid);
            let mut get = redis::cmd("GET");
            get.arg(&k.stock);
            cmds.push(hget);
            cmds.push(get);
        }
        // Each kill to the server its connection was to, written before
        // any lookup there (a lookup redirected elsewhere goes in a second
        // round, after every kill's reply).
        let routed: Vec<(&redis::Cmd, Route<'_>)> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| match dead.get(i) {
                Some((node, _)) => (c, Route::Node(node.as_str())),
                None => (c, Route::Auto),
            })
            .collect();
        let replies = self.redis.round_trip_routed(&routed, until);
        let (kills, lookups) = replies.split_at(dead.len().min(replies.len()));
        // Servers whose dead connections may still be alive.
        let mut unsure: Vec<&str> = Vec::new();
        for ((node, d), kill) in dead.iter().zip(kills) {
            match kill {
                // The count killed: 1 now, 0 when it was already gone.
                // Either way nothing more of it runs.
                Ok(Ok(_)) => self.dead.retain(|x| x.0 != *node || x.1 != *d),
                // CLIENT KILL renamed or not permitted: the old window stays
                // open; say so, and do not ask again. Any other refusal
                // (busy, loading) may pass: ask again.
                Ok(Err(e)) if refused_for_good(e) => {
                    log::warn!(
                        "could not kill failed redis connection {} on {node}: {e}; an unknown outcome may still turn into a sale",
                        d.id
                    );
                    self.dead.retain(|x| x.0 != *node || x.1 != *d);
                }
                Ok(Err(_)) | Err(_) => unsure.push(node.as_str()),
            }
        }
        attempts
            .iter()
            .enumerate()
            .map(|(i, (_, node))| {
                if unsure.contains(node) {
                    return None;
                }
                let buyer = lookups.get(2 * i)?;
                let stock = lookups.get(2 * i + 1);
                match buyer {
                    Ok(Ok(Value::Nil)) => Some(Resolved::NotSold),
                    Ok(Ok(Value::BulkString(b))) => Some(Resolved::Won {
                        order_id: String::from_utf8_lossy(b.as_slice()).into_owned(),
                        stock_left: match stock {
                            Some(Ok(Ok(Value::BulkString(s)))) => std::str::from_utf8(s.as_slice())
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0),
                            _ => 0,
                        },
                    }),
                    _ => None,
                }
            })
            .collect()
    }
}

fn add_args(cmd: &mut redis::Cmd, keys: &GoodsKeys, a: &Attempt, ts_ms: u64) {
    cmd.arg(3)
        .arg(&keys.stock)
        .arg(&keys.buyers)
        .arg(&keys.orders)
        .arg(&a.uid)
        .arg(&a.event_id)
        .arg(&a.goods_id)
        .arg(ts_ms);
}

/// One reply of the pipeline, and the server it was last written to ->
/// the attempt's result.
fn to_result(
    reply: Result<redis::RedisResult<Value>, TripError>,
    node: Option<String>,
) -> Result<DeductOutcome, DeductError> {
    match reply {
        Ok(reply) => reply.map_err(DeductError::Script).and_then(outcome),
        Err(TripError::NotSent(e)) => Err(DeductError::Unreachable(e)),
        Err(TripError::Lost(e)) => {
            log::debug!("deduct round trip failed after sending: {e}");
            Err(DeductError::Unknown {
                node: node.unwrap_or_default(),
            })
        }
    }
}

/// The script's reply -> `DeductOutcome`.
fn outcome(reply: Value) -> Result<DeductOutcome, DeductError> {
    match reply {
        Value::Int(-1) => Ok(DeductOutcome::NoStock),
        Value::Int(-2) => Ok(DeductOutcome::AlreadyPurchased),
        Value::Int(-3) => Ok(DeductOutcome::NotFound),
        Value::Array(items) => match items.as_slice() {
            [Value::Int(left), Value::BulkString(id)] => Ok(DeductOutcome::Won {
                order_id: String::from_utf8(id.clone()).map_err(|_| DeductError::Reply)?,
                stock_left: *left,
            }),
            _ => Err(DeductError::Reply),
        },
        _ => Err(DeductError::Reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_sha_is_sha1_hex() {
        assert_eq!(script_sha(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(script_sha(SCRIPT).len(), 40);
    }

    #[test]
    fn replies_map_to_outcomes() {
        assert_eq!(outcome(Value::Int(-1)).ok(), Some(DeductOutcome::NoStock));
        assert_eq!(
            outcome(Value::Int(-2)).ok(),
            Some(DeductOutcome::AlreadyPurchased)
        );
        assert_eq!(outcome(Value::Int(-3)).ok(), Some(DeductOutcome::NotFound));
        let won = Value::Array(vec![Value::Int(7), Value::BulkString(b"1-0".to_vec())]);
        assert_eq!(
            outcome(won).ok(),
            Some(DeductOutcome::Won {
                order_id: "1-0".into(),
                stock_left: 7
            })
        );
        assert!(outcome(Value::Int(5)).is_err());
        assert!(outcome(Value::Nil).is_err());
        assert!(outcome(Value::Array(vec![Value::Int(7)])).is_err());
    }
}
