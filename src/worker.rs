//! Stage 6 of 8: the one worker that turns queued attempts into sales.
//!
//! In: `Task`s from the queue's `Consumer`. Out: one HTTP answer per task,
//! written to its socket, which is then closed; a sale and its order in Redis.
//!
//! For each task, in queue order:
//! 1. wait for a token from the bucket (`rate`/s, `burst`; 0 = unlimited);
//!    a task whose wait (queue plus token) passes `request_timeout_ms` gets
//!    1003 instead: no token spent, its stock given back;
//! 3. run the deduct; the outcome settles the lease and picks the answer:
//!    won -> commit, 0 with `order_id` and `stock_left`; no stock -> the
//!    share drops to 0 (and the other nodes are told), 1001; already
//!    purchased -> 1005; not found -> 4004; Redis failed -> 1002. Every
//!    outcome but "won" and "no stock" gives the unit back (the lease's drop).
//!
//! While the breaker is open, tasks already queued get 1002 without a Redis
//! call, except the one probe per `probe_ms`; every call's outcome is
//! recorded, so a good probe closes it.
//!
//! Invariants: every task popped is answered exactly once (`Hijacked` answers
//! 1002 if dropped); the worker never blocks on a client (answers are written
//! non-blocking, the rest goes to the drain thread); when the queue closes
//! (shutdown), every task still in it is answered before `run` returns.
//! Never: reaches back into an event loop.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::Breaker;
use crate::bucket::Bucket;
use crate::clock::Clock;
use crate::codes::Code;
use crate::deduct::{DeductOutcome, Deducter};
use crate::hijack::Task;
use crate::metrics::Metrics;
use crate::queue::{Consumer, Popped};

/// The worker and everything it owns.
pub struct Worker {
    consumer: Box<dyn Consumer>,
    bucket: Bucket,
    deducter: Deducter,
    clock: Arc<dyn Clock>,
    request_timeout: Duration,
    breaker: Breaker,
    metrics: Metrics,
}

impl Worker {
    /// A worker draining `consumer`, paced by `bucket`.
    pub fn new(
        consumer: Box<dyn Consumer>,
        bucket: Bucket,
        deducter: Deducter,
        clock: Arc<dyn Clock>,
        request_timeout: Duration,
        breaker: Breaker,
        metrics: Metrics,
    ) -> Self {
        Worker {
            consumer,
            bucket,
            deducter,
            clock,
            request_timeout,
            breaker,
            metrics,
        }
    }

    /// Serves tasks until the queue is closed and empty.
    pub fn run(mut self) {
        loop {
            match self.consumer.pop(Duration::from_millis(200)) {
                Popped::Task(task) => self.serve(task),
                Popped::Empty => {}
                Popped::Closed => return,
            }
        }
    }

    fn serve(&mut self, task: Task) {
        let Task {
            conn,
            attempt,
            arrived_at,
            lease,
        } = task;
        // Waiting for a token is waiting too: the deadline is checked before
        // each wait, and a task never sleeps past it.
        let deadline = arrived_at + self.request_timeout;
        loop {
            let now = self.clock.now();
            if now > deadline {
                drop(lease);
                self.metrics.count_sale(Code::QueueTimeout);
                return conn.answer(Code::QueueTimeout, None);
            }
            match self.bucket.try_take(now) {
                Ok(()) => break,
                Err(wait) => {
                    std::thread::sleep(wait.min(deadline - now + Duration::from_millis(1)))
                }
            }
        }
        self.metrics.token_spent();
        let started = self.clock.now();
        if !self.breaker.try_call(started) {
            // Open, and this is not the probe: no Redis call, stock back.
            drop(lease);
            self.metrics.count_sale(Code::RedisError);
            return conn.answer(Code::RedisError, None);
        }
        let result = self.deducter.deduct(&attempt, self.clock.unix_ms());
        let done = self.clock.now();
        self.breaker.record(result.is_ok(), done);
        self.metrics
            .redis_round_trip(done.saturating_duration_since(started));
        let code = match result {
            Ok(DeductOutcome::Won {
                order_id,
                stock_left,
            }) => {
                lease.commit();
                let data =
                    serde_json::json!({"order_id": order_id, "stock_left": stock_left}).to_string();
                self.metrics.count_sale(Code::Ok);
                return conn.answer(Code::Ok, Some(&data));
            }
            Ok(DeductOutcome::NoStock) => {
                if lease.sold_out() {
                    // Best effort: the catalog's periodic re-read heals a lost message.
                    if let Err(e) = self
                        .deducter
                        .publish_sold_out(&attempt.event_id, &attempt.goods_id)
                    {
                        log::debug!("publish sold-out failed: {e}");
                    }
                }
                Code::NoStock
            }
            Ok(DeductOutcome::AlreadyPurchased) => {
                lease.already_bought();
                Code::AlreadyPurchased
            }
            Ok(DeductOutcome::NotFound) => Code::NotFound,
            Err(e) => {
                log::debug!("deduct failed: {e:?}");
                Code::RedisError
            }
        };
        self.metrics.count_sale(code);
        conn.answer(code, None);
    }
}
