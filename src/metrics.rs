//! Beside the path: counters for `GET /metrics` (Prometheus text format).
//!
//! Every counter is a fixed atomic, indexed by enums known at compile time,
//! so counting costs one relaxed add and never allocates or locks: the
//! event loop counts every answer it gives.
//! Names carry the `seckill_` prefix and their unit (`_total`, `_seconds`).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::codes::Code;
use crate::limits::Limited;

/// The route label of a counted answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteLabel {
    /// `/shop/cart/add`, answered on the loop.
    CartAdd,
    /// `/shop/result`.
    Result,
    /// `/event/list`.
    EventList,
    /// `/event/info`.
    EventInfo,
    /// `/healthz`.
    Healthz,
    /// `/readyz`.
    Readyz,
    /// `/metrics`.
    Metrics,
    /// The admin listener.
    Admin,
    /// No route: bad HTTP, unknown path, timeouts.
    None,
}

const ROUTES: [(RouteLabel, &str); 9] = [
    (RouteLabel::CartAdd, "cart_add"),
    (RouteLabel::Result, "result"),
    (RouteLabel::EventList, "event_list"),
    (RouteLabel::EventInfo, "event_info"),
    (RouteLabel::Healthz, "healthz"),
    (RouteLabel::Readyz, "readyz"),
    (RouteLabel::Metrics, "metrics"),
    (RouteLabel::Admin, "admin"),
    (RouteLabel::None, "none"),
];

const CODES: usize = Code::ALL.len();

/// Upper bounds of the Redis round-trip histogram, in seconds.
const RTT_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug)]
struct Inner {
    // INVARIANT: indexed [route position in ROUTES][code position in Code::ALL].
    answers: [[AtomicU64; CODES]; 9],
    // Answers the worker wrote, by code position.
    sales: [AtomicU64; CODES],
    tokens: AtomicU64,
    rtt_buckets: [AtomicU64; RTT_BUCKETS.len()],
    rtt_count: AtomicU64,
    rtt_sum_us: AtomicU64,
    deduct_errors: AtomicU64,
    unresolved: AtomicU64,
    catalog_skipped: AtomicI64,
    lookups_waiting: AtomicI64,
    // -1 until read, then 1 or 0.
    redis_keeps_data: AtomicI64,
    // Requests refused by a limit: [user, ip]; and new keys let through
    // unremembered because their set was full of refused keys.
    limited: [AtomicU64; 2],
    limit_overflow: [AtomicU64; 2],
    sink: SinkCounters,
}

/// The sink's numbers (SPEC §7), shown once a sink runs in this process.
#[derive(Debug, Default)]
struct SinkCounters {
    on: std::sync::atomic::AtomicBool,
    persisted: AtomicU64,
    lag: AtomicU64,
    retries: AtomicU64,
    repaired: AtomicU64,
    conflicts: AtomicU64,
    malformed: AtomicU64,
}

/// Shared handle to every counter.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Arc::new(Inner {
            answers: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            sales: std::array::from_fn(|_| AtomicU64::new(0)),
            tokens: AtomicU64::new(0),
            rtt_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            rtt_count: AtomicU64::new(0),
            rtt_sum_us: AtomicU64::new(0),
            deduct_errors: AtomicU64::new(0),
            unresolved: AtomicU64::new(0),
            catalog_skipped: AtomicI64::new(0),
            lookups_waiting: AtomicI64::new(0),
            redis_keeps_data: AtomicI64::new(-1),
            limited: std::array::from_fn(|_| AtomicU64::new(0)),
            limit_overflow: std::array::from_fn(|_| AtomicU64::new(0)),
            sink: SinkCounters::default(),
        }))
    }
}

fn code_index(code: Code) -> usize {
    // `Code as usize` is its place in `Code::ALL` (an invariant of codes.rs,
    // checked by its tests), so counting needs no search.
    code as usize
}

fn route_index(route: RouteLabel) -> usize {
    ROUTES
        .iter()
        .position(|(r, _)| *r == route)
        .unwrap_or(ROUTES.len() - 1)
}

impl Metrics {
    /// Counts an answer the event loop gave.
    pub(crate) fn count(&self, route: RouteLabel, code: Code) {
        self.0.answers[route_index(route)][code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer the worker gave.
    pub(crate) fn count_sale(&self, code: Code) {
        self.0.sales[code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one token spent by the worker.
    pub(crate) fn token_spent(&self) {
        self.0.tokens.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one deduct round trip.
    pub(crate) fn redis_round_trip(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in RTT_BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.0.rtt_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0.rtt_count.fetch_add(1, Ordering::Relaxed);
        self.0
            .rtt_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a deduct the script refused for a bad key of its goods.
    pub(crate) fn deduct_error(&self) {
        self.0.deduct_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attempt whose outcome was still unknown at its deadline.
    pub(crate) fn unresolved(&self) {
        self.0.unresolved.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many events and goods the last catalog read skipped.
    pub(crate) fn catalog_skipped(&self, n: usize) {
        self.0
            .catalog_skipped
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// A `/shop/result` question was handed to the lookup thread (+1) or
    /// answered by it (-1).
    pub(crate) fn lookups_waiting(&self, delta: i64) {
        self.0.lookups_waiting.fetch_add(delta, Ordering::Relaxed);
    }

    /// Whether Redis keeps its data on disk, once read.
    pub(crate) fn redis_keeps_data(&self, keeps: bool) {
        self.0
            .redis_keeps_data
            .store(i64::from(keeps), Ordering::Relaxed);
    }

    /// A request a limit refused (4029).
    pub(crate) fn limited(&self, which: Limited) {
        self.0.limited[which as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A new key a limit let through unremembered (its set held only
    /// recently refused keys).
    pub(crate) fn limit_overflow(&self, which: Limited) {
        self.0.limit_overflow[which as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A sink runs in this process: its numbers are shown.
    pub(crate) fn sink_on(&self) {
        self.0.sink.on.store(true, Ordering::Relaxed);
    }

    /// Rows a sink inserted into PostgreSQL.
    pub(crate) fn sink_persisted(&self, n: u64) {
        self.0.sink.persisted.fetch_add(n, Ordering::Relaxed);
    }

    /// Orders in the streams not yet in PostgreSQL, as last measured.
    pub(crate) fn sink_lag(&self, n: u64) {
        self.0.sink.lag.store(n, Ordering::Relaxed);
    }

    /// A write or read the sink will try again (PostgreSQL or Redis failed).
    pub(crate) fn sink_retry(&self) {
        self.0.sink.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Rows the compensation scan wrote that the stream had and PostgreSQL
    /// did not.
    pub(crate) fn sink_repaired(&self, n: u64) {
        self.0.sink.repaired.fetch_add(n, Ordering::Relaxed);
    }

    /// Orders kept in `seckill_order_conflicts`.
    pub(crate) fn sink_conflicts(&self, n: u64) {
        self.0.sink.conflicts.fetch_add(n, Ordering::Relaxed);
    }

    /// Stream entries that are not orders, skipped.
    pub(crate) fn sink_malformed(&self, n: u64) {
        self.0.sink.malformed.fetch_add(n, Ordering::Relaxed);
    }

    /// The exposition text; the queue depth, the breaker state and the
    /// open connections are read by the caller, who owns those handles.
    pub fn render(
        &self,
        queue_depth: usize,
        breaker_open: bool,
        open_connections: usize,
    ) -> String {
        let m = &self.0;
        let mut s = String::with_capacity(4096);
        s.push_str(
            "# HELP seckill_responses_total Answers given on the event loop, by route and code.\n",
        );
        s.push_str("# TYPE seckill_responses_total counter\n");
        for (ri, (_, route)) in ROUTES.iter().enumerate() {
            for (ci, code) in Code::ALL.iter().enumerate() {
                let n = m.answers[ri][ci].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        s,
                        "seckill_responses_total{{route=\"{route}\",code=\"{}\"}} {n}",
                        code.number()
                    );
                }
            }
        }
        s.push_str("# HELP seckill_worker_responses_total Answers the worker wrote to hijacked connections, by code.\n");
        s.push_str("# TYPE seckill_worker_responses_total counter\n");
        for (ci, code) in Code::ALL.iter().enumerate() {
            let n = m.sales[ci].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    s,
                    "seckill_worker_responses_total{{code=\"{}\"}} {n}",
                    code.number()
                );
            }
        }
        scalar(
            &mut s,
            "seckill_queue_depth",
            "gauge",
            "Tasks waiting in the hijack queue.",
            queue_depth,
        );
        scalar(
            &mut s,
            "seckill_lookups_waiting",
            "gauge",
            "/shop/result questions handed to the lookup thread and not yet answered.",
            m.lookups_waiting.load(Ordering::Relaxed),
        );
        scalar(
            &mut s,
            "seckill_tokens_spent_total",
            "counter",
            "Tokens the worker took from its bucket.",
            m.tokens.load(Ordering::Relaxed),
        );
        scalar(
            &mut s,
            "seckill_open_connections",
            "gauge",
            "Client connections the process holds: on the event loops and hijacked (queued, answering, lingering).",
            open_connections,
        );
        s.push_str(
            "# HELP seckill_redis_round_trip_seconds Deduct round trips seen by the worker.\n",
        );
        s.push_str("# TYPE seckill_redis_round_trip_seconds histogram\n");
        for (i, bound) in RTT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "seckill_redis_round_trip_seconds_bucket{{le=\"{bound}\"}} {}",
                m.rtt_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = m.rtt_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "seckill_redis_round_trip_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "seckill_redis_round_trip_seconds_sum {}",
            m.rtt_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "seckill_redis_round_trip_seconds_count {count}");
        scalar(
            &mut s,
            "seckill_deduct_errors_total",
            "counter",
            "Deducts the script refused because a key of the goods is bad (wrong type, stock not an integer); nothing was written.",
            m.deduct_errors.load(Ordering::Relaxed),
        );
        scalar(
            &mut s,
            "seckill_deduct_unresolved_total",
            "counter",
            "Attempts answered 1002 whose outcome Redis could not be asked before their deadline.",
            m.unresolved.load(Ordering::Relaxed),
        );
        scalar(
            &mut s,
            "seckill_catalog_skipped",
            "gauge",
            "Events and goods the last catalog read skipped for a bad key (bad JSON, wrong type).",
            m.catalog_skipped.load(Ordering::Relaxed),
        );
        scalar(
            &mut s,
            "seckill_breaker_open",
            "gauge",
            "1 while the Redis circuit breaker is open.",
            u8::from(breaker_open),
        );
        let keeps = m.redis_keeps_data.load(Ordering::Relaxed);
        if keeps >= 0 {
            scalar(
                &mut s,
                "seckill_redis_keeps_data",
                "gauge",
                "1 when Redis has AOF or RDB saves on, else 0 (a crash then loses the sales not yet in PostgreSQL).",
                keeps,
            );
        }
        for (name, help, values) in [
            (
                "seckill_limited_total",
                "Requests answered 4029 by a limit against scalpers, by key (user: per_user_per_s, ip: per_ip_per_s).",
                &m.limited,
            ),
            (
                "seckill_limit_overflow_total",
                "New keys a limit let through unremembered: every slot of their set held a key refused in the last second.",
                &m.limit_overflow,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, key) in ["user", "ip"].iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{name}{{key=\"{key}\"}} {}",
                    values[i].load(Ordering::Relaxed)
                );
            }
        }
        let k = &m.sink;
        if k.on.load(Ordering::Relaxed) {
            for (name, kind, help, value) in [
                (
                    "seckill_sink_persisted_total",
                    "counter",
                    "Orders the sink inserted into PostgreSQL.",
                    &k.persisted,
                ),
                (
                    "seckill_sink_lag_orders",
                    "gauge",
                    "Orders in the streams not yet in PostgreSQL (pending or not yet read).",
                    &k.lag,
                ),
                (
                    "seckill_sink_retries_total",
                    "counter",
                    "Sink reads and writes tried again after PostgreSQL or Redis failed.",
                    &k.retries,
                ),
                (
                    "seckill_sink_repaired_total",
                    "counter",
                    "Orders the compensation scan found in a stream and not in PostgreSQL, and wrote.",
                    &k.repaired,
                ),
                (
                    "seckill_sink_conflicts_total",
                    "counter",
                    "Orders kept in seckill_order_conflicts: another order of the same uid and goods exists.",
                    &k.conflicts,
                ),
                (
                    "seckill_sink_malformed_total",
                    "counter",
                    "Stream entries that are not orders (a missing or bad field), skipped.",
                    &k.malformed,
                ),
            ] {
                scalar(&mut s, name, kind, help, value.load(Ordering::Relaxed));
            }
        }
        s
    }
}

/// Appends one unlabelled metric with its `HELP` and `TYPE` lines.
fn scalar(s: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        s,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}
