//! Stage 7 of 8: the Redis Lua deduct (SPEC §3).
//!
//! In: an `Attempt` and the sale's `ts_ms`. Out: a `DeductOutcome`, or a
//! `DeductError` the worker answers 1002 (and counts for the breaker).
//! Invariants: one `EVALSHA` per attempt, pipelined per batch; only a
//! NOSCRIPT reply falls back to `EVAL` with the full script (after `SCRIPT
//! FLUSH` or on a fresh Redis); the script's SHA1 is computed once, at
//! start. The connection is a `redis_conn::LazyConn`: every call has the
//! `redis.timeout_ms` timeout, and a failed connection is made anew.
//! Never: knows of HTTP, sockets or the memory share.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use sha1::{Digest, Sha1};

use crate::attempt::Attempt;
use crate::keys::{self, GoodsKeys};
use crate::redis_conn::LazyConn;

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

/// Redis failed, timed out, or answered something the script never returns.
#[derive(Debug)]
pub enum DeductError {
    /// A connection, timeout or server error.
    Redis(RedisError),
    /// A reply of the wrong shape.
    Reply,
}

impl From<RedisError> for DeductError {
    fn from(e: RedisError) -> Self {
        DeductError::Redis(e)
    }
}

/// A Redis connection that runs the deduct. One per worker thread.
pub struct Deducter {
    conn: LazyConn,
    // INVARIANT: lowercase hex SHA1 of SCRIPT.
    sha: String,
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
    /// A deducter for `url`; it connects on first use.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        Ok(Deducter {
            conn: LazyConn::open(url, timeout)?,
            sha: script_sha(SCRIPT),
        })
    }

    /// Runs one command (see `LazyConn` for what a failure does).
    fn run(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let result = cmd.query::<Value>(self.conn.get()?);
        self.conn.settle(result)
    }

    /// Runs the deduct for every attempt in one round trip (a pipeline of
    /// `EVALSHA`s), in order. Each script is atomic on its own; one failing
    /// (a wrong-type key, say) does not undo or hide the others' sales, so
    /// every attempt gets its own result. Attempts answered NOSCRIPT are sent
    /// again as `EVAL` (the script did not run for them). `Err` means the
    /// round trip itself failed: nothing is known of any attempt.
    pub fn deduct_many(
        &mut self,
        attempts: &[&Attempt],
        ts_ms: u64,
    ) -> Result<Vec<Result<DeductOutcome, DeductError>>, DeductError> {
        let keys: Vec<GoodsKeys> = attempts
            .iter()
            .map(|a| GoodsKeys::new(&a.event_id, &a.goods_id))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (a, k) in attempts.iter().zip(&keys) {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.sha);
            add_args(&mut cmd, k, a, ts_ms);
            pipe.add_command(cmd);
        }
        let mut replies = self.run_pipe(&pipe)?;
        let noscript: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)))
            .map(|(i, _)| i)
            .collect();
        if !noscript.is_empty() {
            let mut eval = redis::pipe();
            eval.ignore_errors();
            for &i in &noscript {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SCRIPT);
                add_args(&mut cmd, &keys[i], attempts[i], ts_ms);
                eval.add_command(cmd);
            }
            for (i, reply) in noscript.into_iter().zip(self.run_pipe(&eval)?) {
                replies[i] = reply;
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.map_err(DeductError::Redis).and_then(outcome))
            .collect())
    }

    fn run_pipe(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<redis::RedisResult<Value>>, RedisError> {
        let result = pipe.query::<Vec<redis::RedisResult<Value>>>(self.conn.get()?);
        self.conn.settle(result)
    }

    /// Tells every node that this goods sold out (SPEC §3 channel).
    pub fn publish_sold_out(&mut self, event_id: &str, goods_id: &str) -> Result<(), RedisError> {
        let msg =
            serde_json::json!({"kind": "sold_out", "event_id": event_id, "goods_id": goods_id});
        self.run(
            redis::cmd("PUBLISH")
                .arg(keys::CHANGED)
                .arg(msg.to_string()),
        )
        .map(drop)
    }

    /// `HGET buyers uid`: the uid's order id, if it won (`/shop/result`).
    pub fn order_of(
        &mut self,
        event_id: &str,
        goods_id: &str,
        uid: &str,
    ) -> Result<Option<String>, DeductError> {
        let keys = GoodsKeys::new(event_id, goods_id);
        match self.run(redis::cmd("HGET").arg(&keys.buyers).arg(uid))? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| DeductError::Reply),
            _ => Err(DeductError::Reply),
        }
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
