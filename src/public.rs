//! Stages 3 to 5 on the public listener: route, authenticate, validate,
//! pre-check memory stock, and answer or hijack.
//!
//! In: a complete request from the event loop. Out: an answer written into
//! the connection's buffer (everything the loop can answer alone), or a claim
//! on the connection: a sale attempt holding a `Lease` (to the queue), or a
//! result question (to the lookup thread).
//!
//! Order of checks for a cart-add, cheapest and least revealing first:
//! route (404/405) -> token (4001) -> blacklist (4003) -> body and ids
//! (4000) -> event and goods (4004) -> window (1006/1007) -> memory stock
//! (1001, 1005, 1004) -> breaker open (1002) -> queue full (1004) -> hijack.
//! "No stock" known from memory is answered even while Redis is down. Everything before the hijack keeps the
//! connection open (unless the SPEC closes after the code, or the client
//! asked to close).
//! Never: waits on Redis; the loop thread only reads memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt::{self, Attempt};
use crate::auth::{valid_id, Signer};
use crate::blacklist::Blacklist;
use crate::breaker::Breaker;
use crate::catalog::{Catalog, EventDef, Snapshot};
use crate::clock::SystemClock;
use crate::codes::Code;
use crate::config::QueueConfig;
use crate::conn::Slots;
use crate::hijack::{Hijacked, Task};
use crate::http::parse::{query_param, Request};
use crate::http::response::{self, Extra};
use crate::lookup::{Lookup, Question};
use crate::metrics::{Metrics, RouteLabel};
use crate::queue::{self, Consumer, Producer};
use crate::route::{self, Route, RouteError};
use crate::service::{reply, Handled, Now, Service};
use crate::shutdown::Shutdown;
use crate::stock::{Lease, Stock, Take};

/// What a public request claims the connection for.
#[derive(Debug)]
pub enum Claim {
    /// A sale attempt, for the queue.
    Sale {
        /// The checked attempt.
        attempt: Attempt,
        /// Its unit of memory stock.
        lease: Lease,
        /// When it arrived.
        arrived_at: Instant,
    },
    /// A `/shop/result` question, for the lookup thread.
    Result {
        /// Event id.
        event_id: String,
        /// Goods id.
        goods_id: String,
        /// Uid from the token.
        uid: String,
        /// When it arrived.
        arrived_at: Instant,
    },
}

/// The public listener's service. One per event loop; the handles inside are
/// shared.
pub struct Public {
    /// Token checker.
    pub signer: Signer,
    /// Events and goods.
    pub catalog: Arc<Catalog>,
    /// Memory stock.
    pub stock: Stock,
    /// The hijack queue.
    pub queue: Arc<dyn Producer>,
    /// The `/shop/result` thread.
    pub lookup: Lookup,
    /// Redis circuit breaker (shared with the worker).
    pub breaker: Breaker,
    /// Blocked uids.
    pub blacklist: Blacklist,
    /// Counters.
    pub metrics: Metrics,
    /// The client connections the process holds (for `/metrics`).
    pub slots: Slots,
}

fn label(route: &Result<Route<'_>, RouteError>) -> RouteLabel {
    match route {
        Ok(Route::CartAdd) => RouteLabel::CartAdd,
        Ok(Route::Result) => RouteLabel::Result,
        Ok(Route::EventList) => RouteLabel::EventList,
        Ok(Route::EventInfo) => RouteLabel::EventInfo,
        Ok(Route::Healthz) => RouteLabel::Healthz,
        Ok(Route::Readyz) => RouteLabel::Readyz,
        Ok(Route::Metrics) => RouteLabel::Metrics,
        _ => RouteLabel::None,
    }
}

/// A refusal the loop gives on its own: the code and any extra header.
type Answer = (Code, Extra);

impl Public {
    fn cart_add(&self, req: &Request<'_>, now: Now<'_>) -> Result<Claim, Answer> {
        let plain = |code| (code, Extra::None);
        let uid = self.verify(req, now)?;
        if self.blacklist.contains(uid) {
            return Err(plain(Code::Blocked));
        }
        let (event_id, goods_id) =
            attempt::parse_ids(req.body).map_err(|_| plain(Code::BadRequest))?;
        let snap = self.catalog.snapshot();
        let event = snap
            .events
            .get(event_id)
            .filter(|e| e.has_goods(goods_id))
            .ok_or(plain(Code::NotFound))?;
        if now.unix_s < event.start_at {
            return Err(plain(Code::NotStarted));
        }
        if now.unix_s >= event.end_at {
            return Err(plain(Code::Ended));
        }
        let lease = match self.stock.try_take(event_id, goods_id, uid) {
            Take::Lease(lease) => lease,
            Take::NoStock => return Err(plain(Code::NoStock)),
            Take::AlreadyPurchased => return Err(plain(Code::AlreadyPurchased)),
            Take::Queued => return Err((Code::Busy, Extra::RetryAfter)),
            Take::Unknown => return Err(plain(Code::NotFound)),
        };
        // Each refusal below drops the lease, which gives the unit back.
        if !self.breaker.admit(now.at) {
            return Err(plain(Code::RedisError));
        }
        if self.queue.is_full() {
            return Err((Code::Busy, Extra::RetryAfter));
        }
        Ok(Claim::Sale {
            attempt: Attempt {
                uid: uid.to_string(),
                event_id: event_id.to_string(),
                goods_id: goods_id.to_string(),
            },
            lease,
            arrived_at: now.at,
        })
    }

    fn verify<'r>(&self, req: &Request<'r>, now: Now<'_>) -> Result<&'r str, Answer> {
        let header = req.authorization.ok_or((Code::Unauthorized, Extra::None))?;
        self.signer
            .verify(header, now.unix_s)
            .map_err(|_| (Code::Unauthorized, Extra::None))
    }

    fn result(&self, req: &Request<'_>, now: Now<'_>) -> Result<Claim, Answer> {
        let uid = self.verify(req, now)?;
        let (event_id, goods_id) =
            ids_from_query(req.query).ok_or((Code::BadRequest, Extra::None))?;
        let known = self
            .catalog
            .snapshot()
            .events
            .get(event_id)
            .is_some_and(|e| e.has_goods(goods_id));
        if !known {
            return Err((Code::NotFound, Extra::None));
        }
        // Like a sale: while Redis is known down, say so at once rather
        // than queue a question that would wait out a timeout.
        if !self.breaker.admit(now.at) {
            return Err((Code::RedisError, Extra::None));
        }
        Ok(Claim::Result {
            event_id: event_id.to_string(),
            goods_id: goods_id.to_string(),
            uid: uid.to_string(),
            arrived_at: now.at,
        })
    }
}

impl Public {
    /// A service over in-memory state only: no Redis is contacted and no
    /// socket is needed, for the fuzz target, the benches and the
    /// allocation test. `defs` are the events, `stocks` each goods' stock
    /// left in definition order (the share is the whole of it: one node,
    /// factor 1). Also returns the queue's consumer, which must be kept for
    /// the queue to stay open.
    pub fn in_memory(
        secret: &[u8],
        defs: &[EventDef],
        stocks: &[i64],
    ) -> Result<(Public, Box<dyn Consumer>), String> {
        let stock = Stock::new(1, 1.0);
        let catalog = Arc::new(Catalog::default());
        catalog.replace(Snapshot::build(defs, stocks.iter().copied(), &stock));
        let (queue, consumer) = queue::open("shop", &QueueConfig::default())?;
        let breaker = Breaker::new(5, Duration::from_secs(1));
        // Never asked: in-memory users do not hand connections over. Its
        // thread ends when the service is dropped.
        let (lookup, _thread) = Lookup::start(
            "redis://127.0.0.1:1/",
            Duration::from_millis(10),
            Duration::from_secs(1),
            breaker.clone(),
            Arc::new(SystemClock),
            Shutdown::new(),
            Metrics::default(),
        )?;
        let service = Public {
            signer: Signer::new(secret),
            catalog,
            stock,
            queue,
            lookup,
            breaker,
            blacklist: Blacklist::new(),
            metrics: Metrics::default(),
            slots: Slots::new(usize::MAX),
        };
        Ok((service, consumer))
    }
}

fn ids_from_query(query: &str) -> Option<(&str, &str)> {
    let e = query_param(query, "event_id")?;
    let g = query_param(query, "goods_id")?;
    (valid_id(e.as_bytes()) && valid_id(g.as_bytes())).then_some((e, g))
}

impl Service for Public {
    type Claim = Claim;

    fn handle(&mut self, req: &Request<'_>, now: Now<'_>, out: &mut Vec<u8>) -> Handled<Claim> {
        let route = route::public(req.method, req.path);
        let lbl = label(&route);
        let (code, extra) = match route {
            Err(RouteError::NotFound) => (Code::NotFound, Extra::None),
            Err(RouteError::MethodNotAllowed(allow)) => {
                (Code::MethodNotAllowed, Extra::Allow(allow))
            }
            Ok(Route::CartAdd) => match self.cart_add(req, now) {
                Ok(claim) => return Handled::Hijack(claim),
                Err(answer) => answer,
            },
            Ok(Route::Result) => match self.result(req, now) {
                Ok(claim) => return Handled::Hijack(claim),
                Err(answer) => answer,
            },
            // Reads are written straight from the snapshot's pre-encoded JSON.
            Ok(Route::EventList) => {
                let snap = self.catalog.snapshot();
                self.metrics.count(lbl, Code::Ok);
                return reply(out, req, now, Code::Ok, Some(&snap.list_json), Extra::None);
            }
            Ok(Route::EventInfo) => {
                let snap = self.catalog.snapshot();
                let (code, data) = match query_param(req.query, "event_id") {
                    Some(id) if valid_id(id.as_bytes()) => match snap.events.get(id) {
                        Some(view) => (Code::Ok, Some(view.json.as_str())),
                        None => (Code::NotFound, None),
                    },
                    _ => (Code::BadRequest, None),
                };
                self.metrics.count(lbl, code);
                return reply(out, req, now, code, data, Extra::None);
            }
            Ok(Route::Healthz) => (Code::Ok, Extra::None),
            Ok(Route::Readyz) if self.catalog.ready() => (Code::Ok, Extra::None),
            Ok(Route::Readyz) => (Code::NotReady, Extra::None),
            Ok(Route::Metrics) => {
                self.metrics.count(lbl, Code::Ok);
                let mut body = self.metrics.render(
                    self.queue.depth(),
                    self.breaker.is_open(),
                    self.slots.held(),
                );
                self.stock.write_metrics(&mut body);
                response::write_raw(
                    out,
                    "text/plain; version=0.0.4",
                    body.as_bytes(),
                    req.keep_alive,
                    now.date,
                );
                return if req.keep_alive {
                    Handled::KeepOpen
                } else {
                    Handled::Close
                };
            }
            Ok(_) => (Code::NotFound, Extra::None),
        };
        self.metrics.count(lbl, code);
        reply(out, req, now, code, None, extra)
    }

    fn hijack(&mut self, conn: Hijacked, claim: Claim) {
        match claim {
            Claim::Sale {
                attempt,
                lease,
                arrived_at,
            } => {
                let task = Task {
                    conn,
                    attempt,
                    arrived_at,
                    lease,
                };
                if let Err(task) = self.queue.try_push(task) {
                    // Another loop filled the queue since the check: still
                    // 1004 at once, the unit given back before the answer.
                    let Task { conn, lease, .. } = task;
                    drop(lease);
                    self.metrics.count(RouteLabel::CartAdd, Code::Busy);
                    conn.answer_busy();
                }
            }
            Claim::Result {
                event_id,
                goods_id,
                uid,
                arrived_at,
            } => self.lookup.ask(Question {
                conn,
                event_id,
                goods_id,
                uid,
                arrived_at,
            }),
        }
    }
}
