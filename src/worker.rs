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
//! 3. the outcome settles the lease, then picks the answer:
//!    won -> commit, 0 with `order_id` and `stock_left`; no stock -> the
//!    share drops to 0 (and the other nodes are told), 1001; already
//!    purchased -> 1005; not found -> 4004; Redis failed -> 1002. Every
//!    outcome but "won" and "no stock" gives the unit back.
//! 4. a round trip that failed after the scripts were sent leaves the
//!    outcome unknown: those tasks, with the server each script may still
//!    run on and the connections that failed, go to the resolver
//!    (`resolve`), which asks Redis on its own connection whether each uid
//!    is in `buyers`, retrying until the task's deadline, and answers 0
//!    with the order when it is, 1002 when it is not or Redis never
//!    answered. On one Redis the worker runs it inline, before its next
//!    batch; on a Redis Cluster it is a thread of its own, and the worker
//!    goes on selling the goods of the masters that answer.
//!
//! While the breaker is open, tasks already queued get 1002 without a Redis
//! call, except the one probe per `probe_ms`; every call's outcome is
//! recorded, so a good probe closes it. An error that belongs to one goods
//! (a wrong-type key) does not feed the breaker: it is counted in
//! `seckill_deduct_errors_total` and logged once per goods until it heals.
//!
//! Invariants: every task popped is answered exactly once (`Hijacked` answers
//! 1002 if dropped); a task's lease is settled before its answer is written,
//! so a client that retries at once sees the unit back; the worker never
//! blocks on a client (answers are written non-blocking, the rest goes to
//! the linger thread); when the queue closes (shutdown), every task still in
//! it is answered before `run` returns.
//! Never: reaches back into an event loop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt::Attempt;
use crate::bucket::Bucket;
use crate::clock::Clock;
use crate::codes::Code;
use crate::hijack::Task;
use crate::http::response::DateCache;
use crate::metrics::Metrics;
use crate::queue::{Consumer, Popped};
use crate::resolve::{Job, ResolveThread};
use crate::shutdown::Shutdown;
use crate::store::breaker::{Breaker, Lane};
use crate::store::conn::ClientId;
use crate::store::deduct::{DeductError, DeductOutcome, Deducter};

/// Tasks sent to Redis in one round trip at most.
pub(crate) const MAX_BATCH: usize = 64;

/// The worker and everything it owns.
pub struct Worker {
    consumer: Box<dyn Consumer>,
    bucket: Bucket,
    deducter: Deducter,
    clock: Arc<dyn Clock>,
    request_timeout: Duration,
    breaker: Breaker,
    metrics: Metrics,
    shutdown: Shutdown,
    // Goods whose last deduct failed on a bad key: logged once until healed.
    broken: HashSet<(String, String)>,
    // The answers' `Date`, formatted once per second.
    date: DateCache,
    // Where unknown outcomes go: the resolve thread's inbox (a cluster),
    // or the resolver itself, run inline (one Redis).
    resolve: Resolve,
}

impl Worker {
    /// A worker draining `consumer`, paced by `bucket`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: Box<dyn Consumer>,
        bucket: Bucket,
        deducter: Deducter,
        clock: Arc<dyn Clock>,
        request_timeout: Duration,
        breaker: Breaker,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        Worker {
            consumer,
            bucket,
            deducter,
            clock,
            request_timeout,
            breaker,
            metrics,
            shutdown,
            broken: HashSet::new(),
            date: DateCache::new(0),
            resolve: Resolve::None,
        }
    }

    /// Serves tasks until the queue is closed and empty, and every unknown
    /// outcome handed over is answered.
    pub fn run(mut self) {
        let Some(resolver) = self.deducter.take_resolver() else {
            return self.serve();
        };
        let thread = ResolveThread {
            resolver,
            clock: self.clock.clone(),
            request_timeout: self.request_timeout,
            breaker: self.breaker.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            date: DateCache::new(0),
        };
        if !self.deducter.is_cluster() {
            self.resolve = Resolve::Inline(Box::new(thread));
            return self.serve();
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        std::thread::scope(|scope| {
            match std::thread::Builder::new()
                .name("seckill-resolve".into())
                .spawn_scoped(scope, move || thread.run(rx))
            {
                Ok(_) => self.resolve = Resolve::Thread(tx),
                Err(e) => {
                    log::error!("resolve thread: {e}; unknown outcomes are answered 1002 at once")
                }
            }
            // The resolve thread ends once it has answered what it holds and
            // the worker hangs up, also when serving panics: the scope waits
            // for it before the panic goes on.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve()));
            self.resolve = Resolve::None;
            if let Err(panic) = served {
                std::panic::resume_unwind(panic);
            }
        });
    }

    /// Serves tasks until the queue is closed and empty.
    fn serve(&mut self) {
        loop {
            match self.consumer.pop(Duration::from_millis(200)) {
                Popped::Task(task) => self.serve_batch(task),
                Popped::Empty => {}
                Popped::Closed => return,
            }
        }
    }

    fn deadline(&self, task: &Task) -> Instant {
        self.shutdown
            .deadline(task.arrived_at, self.request_timeout, self.clock.now())
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
    /// plus token) passes its deadline is answered 1003 instead, no token
    /// spent, its stock given back.
    fn pace(&mut self, task: Task) -> Option<Task> {
        loop {
            let now = self.clock.now();
            let deadline = self.deadline(&task);
            if now > deadline {
                self.finish(task, Settle::GiveBack, Code::QueueTimeout, None);
                return None;
            }
            match self.bucket.try_take(now) {
                Ok(()) => {
                    self.metrics.token_spent();
                    return Some(task);
                }
                // Short sleeps while stopping, so the capped deadline is met.
                Err(wait) => std::thread::sleep(
                    wait.min(deadline - now + Duration::from_millis(1))
                        .min(Duration::from_millis(50)),
                ),
            }
        }
    }

    fn deduct_and_answer(&mut self, batch: Vec<Task>) {
        let started = self.clock.now();
        // Each breaker lane in the batch is asked once: while open, its
        // tasks go to Redis only as its probe.
        let mut lanes: Vec<(Lane, bool)> = Vec::new();
        let mut go = Vec::with_capacity(batch.len());
        for task in batch {
            let lane = self
                .breaker
                .lane(&task.attempt.event_id, &task.attempt.goods_id);
            let allowed = match lanes.iter().find(|(l, _)| *l == lane) {
                Some(&(_, allowed)) => allowed,
                None => {
                    let allowed = self.breaker.try_call(lane, started);
                    lanes.push((lane, allowed));
                    allowed
                }
            };
            if allowed {
                go.push((lane, task));
            } else {
                // Open, and not the probe: no Redis call, stock back.
                self.finish(task, Settle::GiveBack, Code::RedisError, None);
            }
        }
        if go.is_empty() {
            return;
        }
        let (task_lanes, batch): (Vec<Lane>, Vec<Task>) = go.into_iter().unzip();
        let attempts: Vec<&Attempt> = batch.iter().map(|t| &t.attempt).collect();
        let until = self.shutdown.trip_deadline(self.request_timeout, started);
        let results = self
            .deducter
            .deduct_many(&attempts, self.clock.unix_ms(), until);
        // Taken before any answer: a sold-out publish may reconnect and drop
        // connections too, and the deducter keeps only the newest few.
        let dead = self.deducter.take_dead();
        let done = self.clock.now();
        // A lane's Redis failed when its trip failed or Redis refused work
        // for reasons of its own (busy, loading); a bad key of one goods is
        // that goods' problem, not the breaker's, and the sliding lock's
        // contention is the sale's, not Redis'.
        for &(lane, _) in lanes.iter().filter(|(_, allowed)| *allowed) {
            let ok = task_lanes
                .iter()
                .zip(&results)
                .filter(|(l, _)| **l == lane)
                .all(|(_, r)| !matches!(r, Err(e) if e.is_redis_failure()));
            self.breaker.record(lane, ok, done);
        }
        self.metrics
            .redis_round_trip(done.saturating_duration_since(started));
        let mut unknown = Vec::new();
        for (task, result) in batch.into_iter().zip(results) {
            match result {
                Err(DeductError::Unknown { node }) => unknown.push((task, node)),
                result => self.answer(task, result),
            }
        }
        // A dead connection with no unknown outcome carried nothing that
        // matters: no need to kill it.
        if !unknown.is_empty() {
            self.hand_to_resolve(unknown, dead);
        }
    }

    /// Settles the lease by the outcome, then answers.
    fn answer(&mut self, task: Task, result: Result<DeductOutcome, DeductError>) {
        let bad_goods = matches!(result, Err(ref e) if e.is_goods_specific());
        if !bad_goods && !self.broken.is_empty() {
            let goods = (task.attempt.event_id.clone(), task.attempt.goods_id.clone());
            if self.broken.remove(&goods) {
                log::info!("goods {}/{}: deducts work again", goods.0, goods.1);
            }
        }
        let code = match &result {
            Ok(outcome) => Code::from(outcome),
            Err(e) => Code::from(e),
        };
        match result {
            Ok(DeductOutcome::Won {
                order_id,
                stock_left,
            }) => {
                let data =
                    serde_json::json!({"order_id": order_id, "stock_left": stock_left}).to_string();
                self.finish(task, Settle::Commit, code, Some(&data));
            }
            Ok(DeductOutcome::NoStock) => self.finish(task, Settle::SoldOut, code, None),
            Ok(DeductOutcome::AlreadyPurchased) => {
                self.finish(task, Settle::AlreadyBought, code, None)
            }
            Ok(DeductOutcome::NotFound) => self.finish(task, Settle::GiveBack, code, None),
            Err(e) => {
                if bad_goods {
                    self.metrics.deduct_error();
                    let goods = (task.attempt.event_id.clone(), task.attempt.goods_id.clone());
                    if self.broken.insert(goods) {
                        let a = &task.attempt;
                        log::warn!(
                            "goods {}/{}: the deduct script refused it ({e:?}); answering 1002 until its keys are fixed",
                            a.event_id,
                            a.goods_id
                        );
                    }
                } else {
                    log::debug!("deduct failed: {e:?}");
                }
                self.finish(task, Settle::GiveBack, code, None)
            }
        }
    }

    /// Hands tasks whose outcome is unknown to the resolve thread, with
    /// the connections that failed. Without one (it could not start), they
    /// are answered 1002 at once: the case `/shop/result` exists for.
    fn hand_to_resolve(&mut self, tasks: Vec<(Task, String)>, dead: Vec<(String, ClientId)>) {
        let job = Job { tasks, dead };
        let job = match &mut self.resolve {
            Resolve::Inline(resolver) => return resolver.resolve_now(job),
            Resolve::Thread(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            },
            Resolve::None => job,
        };
        for (task, _) in job.tasks {
            self.metrics.unresolved();
            self.finish(task, Settle::GiveBack, Code::RedisError, None);
        }
    }

    /// Settles the task's lease as `settle` says, counts the answer, then
    /// writes it: in that order, so a client retrying the moment it reads
    /// its answer finds the unit already back.
    fn finish(&mut self, task: Task, settle: Settle, code: Code, data: Option<&str>) {
        let Task {
            conn,
            lease,
            attempt,
            ..
        } = task;
        match settle {
            Settle::Commit => lease.commit(),
            Settle::AlreadyBought => lease.already_bought(),
            Settle::GiveBack => drop(lease),
            Settle::SoldOut => {
                if lease.sold_out() {
                    // Best effort: the catalog's periodic re-read heals a
                    // lost message.
                    if let Err(e) = self
                        .deducter
                        .publish_sold_out(&attempt.event_id, &attempt.goods_id)
                    {
                        log::debug!("publish sold-out failed: {e}");
                    }
                }
            }
        }
        self.metrics.count_sale(code);
        conn.answer(code, data, self.date.get(self.clock.unix_s()));
    }
}

/// Where the worker hands unknown outcomes (see `resolve`).
enum Resolve {
    /// Nowhere: answered 1002 at once (no resolver could be made).
    None,
    /// Resolved inline before the next batch (one Redis).
    Inline(Box<ResolveThread>),
    /// To the resolve thread (a Redis Cluster).
    Thread(crossbeam_channel::Sender<Job>),
}

/// How a task's lease ends before its answer is written.
enum Settle {
    /// A sale: keep the unit.
    Commit,
    /// Redis says the uid already bought: unit back, uid remembered.
    AlreadyBought,
    /// Anything else: the unit goes back.
    GiveBack,
    /// Redis has no stock: the share drops to 0 (and the nodes are told
    /// when this is news).
    SoldOut,
}
