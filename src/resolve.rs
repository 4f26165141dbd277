//! Beside the path: the resolve thread, which answers the attempts whose
//! deduct outcome is unknown (SPEC §4, 1002).
//!
//! In: from the worker, tasks whose round trip failed after their scripts
//! were sent, each with the server its script may still run on, and the
//! identities of the connections that failed. Out: one answer per task —
//! 0 with its order when its uid is in `buyers`, 1002 when it is not, or
//! when its deadline (`request_timeout_ms` since it arrived) passes before
//! Redis could be asked.
//!
//! On a Redis Cluster it runs beside the worker rather than in it: asking
//! takes up to a timeout per try while a server does not answer, and the
//! worker must go on selling the goods of the servers that do (a master
//! paused costs only its own goods). On one Redis nothing could sell
//! meanwhile, so the worker resolves inline (`resolve_now`): it takes no
//! more tasks until the unknown ones are answered, answers stay in queue
//! order, and the breaker hears the failures as they come.
//!
//! Invariants: every task handed over is answered exactly once, its lease
//! settled first (commit for a sale, given back otherwise); the dead
//! connections on a task's server are killed before its `HGET buyers` is
//! trusted (see `store::deduct`); when the worker stops handing over, the
//! thread answers what it holds and ends.
//! Never: runs a deduct.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::clock::Clock;
use crate::codes::Code;
use crate::hijack::Task;
use crate::http::response::DateCache;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::breaker::{Breaker, Lane};
use crate::store::conn::ClientId;
use crate::store::deduct::{Resolved, Resolver};

/// Pause between two tries while some outcome is still unknown.
const RESOLVE_PAUSE: Duration = Duration::from_millis(50);

/// What the worker hands over.
pub(crate) struct Job {
    /// Each task with the server (`host:port`) its script may still run on.
    pub(crate) tasks: Vec<(Task, String)>,
    /// The deducter's connections dropped since the last job: to kill.
    pub(crate) dead: Vec<(String, ClientId)>,
}

/// The thread's state.
pub(crate) struct ResolveThread {
    pub(crate) resolver: Resolver,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) request_timeout: Duration,
    pub(crate) breaker: Breaker,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: Shutdown,
    pub(crate) date: DateCache,
}

impl ResolveThread {
    /// Answers every task of every job until the worker hangs up and
    /// nothing is left.
    pub(crate) fn run(mut self, jobs: Receiver<Job>) {
        let mut pending: Vec<(Task, String)> = Vec::new();
        loop {
            if pending.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.take(job, &mut pending),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.take(job, &mut pending);
            }
            pending = self.try_once(pending);
            if !pending.is_empty() {
                match jobs.recv_timeout(RESOLVE_PAUSE) {
                    Ok(job) => self.take(job, &mut pending),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(RESOLVE_PAUSE),
                }
            }
        }
    }

    /// Answers every task of `job` before returning, asking again every
    /// `RESOLVE_PAUSE` until each is known or past its deadline: on one
    /// Redis the worker resolves inline, as nothing else could sell meanwhile
    /// and answers stay in queue order.
    pub(crate) fn resolve_now(&mut self, job: Job) {
        let mut pending = Vec::new();
        self.take(job, &mut pending);
        loop {
            pending = self.try_once(pending);
            if pending.is_empty() {
                return;
            }
            std::thread::sleep(RESOLVE_PAUSE);
        }
    }

    fn take(&mut self, job: Job, pending: &mut Vec<(Task, String)>) {
        self.resolver.learn_dead(job.dead);
        pending.extend(job.tasks);
    }

    fn deadline(&self, task: &Task) -> Instant {
        self.shutdown
            .deadline(task.arrived_at, self.request_timeout, self.clock.now())
    }

    /// One round trip for everything pending; returns what is still
    /// unknown. Tasks past their deadline are answered 1002 first: the one
    /// case where a sale may stand unannounced (`/shop/result` shows it).
    fn try_once(&mut self, pending: Vec<(Task, String)>) -> Vec<(Task, String)> {
        let now = self.clock.now();
        let (late, waiting): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(t, _)| now > self.deadline(t));
        for (task, _) in late {
            self.metrics.unresolved();
            self.finish(task, false, Code::RedisError, None);
        }
        if waiting.is_empty() {
            return waiting;
        }
        let attempts: Vec<_> = waiting
            .iter()
            .map(|(t, node)| (&t.attempt, node.as_str()))
            .collect();
        let until = self.shutdown.trip_deadline(self.request_timeout, now);
        let found = self.resolver.resolve(&attempts, until);
        // Each lane's breaker hears whether its attempts could be asked.
        let done = self.clock.now();
        let lanes: Vec<Lane> = waiting
            .iter()
            .map(|(t, _)| self.breaker.lane(&t.attempt.event_id, &t.attempt.goods_id))
            .collect();
        let mut seen: Vec<Lane> = Vec::new();
        for &lane in &lanes {
            if !seen.contains(&lane) {
                seen.push(lane);
                let ok = lanes
                    .iter()
                    .zip(&found)
                    .filter(|(l, _)| **l == lane)
                    .all(|(_, f)| f.is_some());
                self.breaker.record(lane, ok, done);
            }
        }
        let mut still = Vec::new();
        for ((task, node), found) in waiting.into_iter().zip(found) {
            match found {
                Some(Resolved::Won {
                    order_id,
                    stock_left,
                }) => {
                    let data = serde_json::json!({"order_id": order_id, "stock_left": stock_left})
                        .to_string();
                    self.finish(task, true, Code::Ok, Some(&data));
                }
                Some(Resolved::NotSold) => self.finish(task, false, Code::RedisError, None),
                None => still.push((task, node)),
            }
        }
        still
    }

    /// Settles the lease (kept for a sale, else given back), counts the
    /// answer, then writes it: in that order, so a client retrying the
    /// moment it reads its answer finds the unit already back.
    fn finish(&mut self, task: Task, sold: bool, code: Code, data: Option<&str>) {
        let Task { conn, lease, .. } = task;
        if sold {
            lease.commit();
        } else {
            drop(lease);
        }
        self.metrics.count_sale(code);
        conn.answer(code, data, self.date.get(self.clock.unix_s()));
    }
}
