//! Beside the path: `/shop/result`, answered off the loop.
//!
//! The answer lives in Redis (`buyers`), and the event loop never waits on
//! Redis, so a result request is hijacked like a sale (see `hijack`) and
//! answered by this thread with `Connection: close`. It has its own bounded
//! channel and Redis connection, so polling for results never waits behind
//! paced sales, and sales never wait behind reads.
//!
//! Like the worker, it answers in batches: every question waiting when it
//! wakes (up to `MAX_BATCH`) is asked in one pipelined round trip, so a
//! Redis that hangs costs each waiting question one `redis.timeout_ms`, not
//! one per question ahead of it. It shares the worker's breaker: its
//! failures count, and while the breaker is open the event loop answers
//! 1002 itself and questions already queued get 1002 without a call. A
//! question older than `request_timeout_ms` gets 1003.
//!
//! Invariants: every question handed over is answered once: a full channel
//! is 1004 at once, a Redis failure 1002; on shutdown the thread answers
//! every question still queued, then ends (`serve` waits for it).
//! Never: writes to Redis.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use redis::Value;

use crate::clock::Clock;
use crate::codes::Code;
use crate::hijack::Question;
use crate::http::response::DateCache;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::access::{Endpoint, Redis};
use crate::store::breaker::{Breaker, Lane};
use crate::store::keys::GoodsKeys;

/// Result requests waiting for Redis at most.
const BACKLOG: usize = 4096;
/// Questions asked in one round trip at most.
const MAX_BATCH: usize = 256;

/// The lookup thread's inbox.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    tx: Sender<Question>,
    metrics: Metrics,
}

/// What the lookup thread needs besides its inbox.
struct Asker {
    conn: Redis,
    clock: Arc<dyn Clock>,
    request_timeout: Duration,
    breaker: Breaker,
    shutdown: Shutdown,
    metrics: Metrics,
    date: DateCache,
}

impl Lookup {
    /// Starts the thread, with its own connection to `endpoint`. The handle ends
    /// once every `Lookup` clone is dropped and the inbox is answered.
    pub(crate) fn start(
        endpoint: &Endpoint,
        timeout: Duration,
        request_timeout: Duration,
        breaker: Breaker,
        clock: Arc<dyn Clock>,
        shutdown: Shutdown,
        metrics: Metrics,
    ) -> Result<(Lookup, JoinHandle<()>), String> {
        let asker = Asker {
            conn: Redis::open(endpoint, timeout).map_err(|e| format!("redis: {e}"))?,
            request_timeout,
            breaker,
            date: DateCache::new(clock.unix_s()),
            clock,
            shutdown,
            metrics: metrics.clone(),
        };
        let (tx, rx) = bounded::<Question>(BACKLOG);
        let handle = std::thread::Builder::new()
            .name("seckill-lookup".into())
            .spawn(move || asker.run(rx))
            .map_err(|e| format!("lookup thread: {e}"))?;
        Ok((Lookup { tx, metrics }, handle))
    }

    /// Hands a question over; a full inbox answers 1004 at once (`date` is
    /// the asking loop's `Date`).
    pub(crate) fn ask(&self, q: Question, date: &str) {
        // Counted before the send, so the thread's -1 never comes first.
        self.metrics.lookups_waiting(1);
        if let Err(TrySendError::Full(q) | TrySendError::Disconnected(q)) = self.tx.try_send(q) {
            self.metrics.lookups_waiting(-1);
            q.conn.answer(Code::Busy, None, date);
        }
    }
}

impl Asker {
    fn run(mut self, rx: Receiver<Question>) {
        // `recv` fails only once every sender is gone and the inbox is empty.
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            self.answer(batch);
        }
    }

    fn answer(&mut self, batch: Vec<Question>) {
        let n = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        self.answer_batch(batch);
        self.metrics.lookups_waiting(-n);
    }

    fn answer_batch(&mut self, batch: Vec<Question>) {
        let now = self.clock.now();
        let (late, batch): (Vec<Question>, Vec<Question>) = batch.into_iter().partition(|q| {
            now > self
                .shutdown
                .deadline(q.arrived_at, self.request_timeout, now)
        });
        let date = self.date.get(self.clock.unix_s());
        for q in late {
            q.conn.answer(Code::QueueTimeout, None, date);
        }
        if batch.is_empty() {
            return;
        }
        // Each breaker lane asked once; an open one's questions go only
        // as its probe.
        let mut lanes: Vec<(Lane, bool)> = Vec::new();
        let mut go = Vec::with_capacity(batch.len());
        for q in batch {
            let lane = self.breaker.lane(&q.event_id, &q.goods_id);
            let allowed = match lanes.iter().find(|(l, _)| *l == lane) {
                Some(&(_, allowed)) => allowed,
                None => {
                    let allowed = self.breaker.try_call(lane, now);
                    lanes.push((lane, allowed));
                    allowed
                }
            };
            if allowed {
                go.push((lane, q));
            } else {
                q.conn.answer(Code::RedisError, None, date);
            }
        }
        if go.is_empty() {
            return;
        }
        let (q_lanes, batch): (Vec<Lane>, Vec<Question>) = go.into_iter().unzip();
        let until = self.shutdown.trip_deadline(self.request_timeout, now);
        let found = self.orders_of(&batch, until);
        let done = self.clock.now();
        for &(lane, _) in lanes.iter().filter(|(_, allowed)| *allowed) {
            let ok = q_lanes
                .iter()
                .zip(&found)
                .filter(|(l, _)| **l == lane)
                .all(|(_, r)| !matches!(r, Found::Failed));
            self.breaker.record(lane, ok, done);
        }
        let date = self.date.get(self.clock.unix_s());
        for (q, order) in batch.into_iter().zip(found) {
            match order {
                Found::Order(Some(order_id)) => {
                    let data = serde_json::json!({"status": "won", "order_id": order_id});
                    q.conn.answer(Code::Ok, Some(&data.to_string()), date);
                }
                Found::Order(None) => q.conn.answer(Code::Ok, Some(r#"{"status":"none"}"#), date),
                Found::BadKey | Found::Failed => q.conn.answer(Code::RedisError, None, date),
            }
        }
    }

    /// `HGET buyers uid` for every question, in one round trip. A per-key
    /// error (a wrong-type `buyers`) fails only its own question; on a
    /// Redis Cluster, a master that does not answer fails only the
    /// questions on its goods.
    fn orders_of(&mut self, batch: &[Question], until: Option<Instant>) -> Vec<Found> {
        let mut pipe = redis::pipe();
        for q in batch {
            pipe.cmd("HGET")
                .arg(GoodsKeys::new(&q.event_id, &q.goods_id).buyers)
                .arg(&q.uid);
        }
        self.conn
            .round_trip_each(&pipe, until)
            .into_iter()
            .map(|r| match r {
                Ok(Ok(Value::Nil)) => Found::Order(None),
                Ok(Ok(Value::BulkString(b))) => {
                    String::from_utf8(b).map_or(Found::BadKey, |o| Found::Order(Some(o)))
                }
                Ok(_) => Found::BadKey,
                Err(e) => {
                    log::debug!("result lookup failed: {e:?}");
                    Found::Failed
                }
            })
            .collect()
    }
}

/// What Redis said of one question.
enum Found {
    /// The uid's order id in `buyers`, or none.
    Order(Option<String>),
    /// An answer of the wrong shape (a wrong-type `buyers`): this goods'
    /// problem, not the breaker's.
    BadKey,
    /// The round trip failed for it.
    Failed,
}
