//! Stage 6 of 8: the one worker that turns queued attempts into sales.
//!
//! In: `Task`s from the queue's `Consumer`. Out: one HTTP answer per task,
//! written to its socket, which is then closed; a sale and its order in Redis.
//!
//! For each task, in queue order:
//! 1. wait for a token from the bucket (`rate`/s, `burst`; 0 = unlimited);
//!    a task whose wait (queue plus token) passes `request_timeout_ms` gets
//!    1003 instead: no token spent, its stock given back;
//! 2. run the deduct, pipelined: after the first task, every task already
//!    queued that has a token waiting (up to `MAX_BATCH`) joins it, and the
//!    batch's scripts go to Redis in one round trip, each still atomic and
//!    answered on its own;
//! 3. the outcome settles the lease and picks the answer:
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

use crate::attempt::Attempt;
use crate::breaker::Breaker;
use crate::bucket::Bucket;
use crate::clock::Clock;
use crate::codes::Code;
use crate::deduct::{DeductError, DeductOutcome, Deducter};
use crate::hijack::Task;
use crate::metrics::Metrics;
use crate::queue::{Consumer, Popped};

/// Tasks sent to Redis in one round trip at most.
pub const MAX_BATCH: usize = 64;

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
                Popped::Task(task) => self.serve_batch(task),
                Popped::Empty => {}
                Popped::Closed => return,
            }
        }
    }

    /// Gathers `first` and as many more queued tasks as the bucket has
    /// tokens for right now (at most `MAX_BATCH`), then serves them with one
    /// Redis round trip. Only the first task may wait for a token; the others
    /// join only if a token is already there, so pacing is unchanged.
    fn serve_batch(&mut self, first: Task) {
        let mut ready = Vec::with_capacity(MAX_BATCH);
        ready.extend(self.pace(first));
        while ready.len() < MAX_BATCH && self.bucket.available(self.clock.now()) > 0 {
            match self.consumer.pop(Duration::ZERO) {
                Popped::Task(task) => ready.extend(self.pace(task)),
                Popped::Empty | Popped::Closed => break,
            }
        }
        if !ready.is_empty() {
            self.deduct_and_answer(ready);
        }
    }

    /// Takes this task's token, waiting if need be; a task whose wait (queue
    /// plus token) passes `request_timeout_ms` is answered 1003 instead, no
    /// token spent, its stock given back (the lease's drop).
    fn pace(&mut self, task: Task) -> Option<Task> {
        let deadline = task.arrived_at + self.request_timeout;
        loop {
            let now = self.clock.now();
            if now > deadline {
                self.metrics.count_sale(Code::QueueTimeout);
                let Task { conn, lease, .. } = task;
                drop(lease);
                conn.answer(Code::QueueTimeout, None);
                return None;
            }
            match self.bucket.try_take(now) {
                Ok(()) => {
                    self.metrics.token_spent();
                    return Some(task);
                }
                Err(wait) => {
                    std::thread::sleep(wait.min(deadline - now + Duration::from_millis(1)))
                }
            }
        }
    }

    fn deduct_and_answer(&mut self, batch: Vec<Task>) {
        let started = self.clock.now();
        if !self.breaker.try_call(started) {
            // Open, and this batch is not the probe: no Redis call, stock back.
            for task in batch {
                self.answer_failed(task);
            }
            return;
        }
        let attempts: Vec<&Attempt> = batch.iter().map(|t| &t.attempt).collect();
        let results = self.deducter.deduct_many(&attempts, self.clock.unix_ms());
        let done = self.clock.now();
        self.breaker.record(results.is_ok(), done);
        self.metrics
            .redis_round_trip(done.saturating_duration_since(started));
        match results {
            Ok(results) => {
                for (task, result) in batch.into_iter().zip(results) {
                    self.answer(task, result);
                }
            }
            Err(e) => {
                log::debug!("deduct round trip failed: {e:?}");
                for task in batch {
                    self.answer_failed(task);
                }
            }
        }
    }

    fn answer_failed(&mut self, task: Task) {
        let Task { conn, lease, .. } = task;
        drop(lease);
        self.metrics.count_sale(Code::RedisError);
        conn.answer(Code::RedisError, None);
    }

    /// Settles the lease by the outcome and answers.
    fn answer(&mut self, task: Task, result: Result<DeductOutcome, DeductError>) {
        let Task {
            conn,
            attempt,
            lease,
            ..
        } = task;
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
