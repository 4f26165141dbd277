//! Stages 3 and 4 on the public listener: route, authenticate, validate,
//! pre-check memory stock, and answer or claim the connection.
//!
//! In: a complete request from the event loop. Out: one `Answer`: a
//! `Reply` written into the connection's buffer and counted (everything the
//! loop can answer alone), or `Answer::Hijack` with a `Claim`: a sale
//! attempt holding a `Lease`, or a result question. The hand-over itself is
//! `hijack.rs`; this file never touches a socket.
//!
//! Order of checks for a cart-add, cheapest and least revealing first:
//! client IP limit (4029, every route but the probes) -> route (404/405) -> token (4001)
//! -> uid limit (4029) -> blacklist (4003) -> body and ids
//! (4000) -> event and goods (4004) -> window (1006/1007) -> memory stock
//! (1001, 1005, 1004) -> breaker open (1002) -> queue full (1004) -> claim.
//! Each check says why it refused (its own error type), and `codes.rs`
//! says which code that is. "No stock" known from memory is answered even
//! while Redis is down. Every answer keeps the connection open (unless the
//! SPEC closes after the code, or the client asked to close).
//! Never: waits on Redis; the loop thread only reads memory.

use std::sync::Arc;

use crate::attempt::{self, Attempt};
use crate::auth::{AuthError, Signer};
use crate::blacklist::Blacklist;
use crate::catalog::snapshot::{Catalog, Snapshot};
use crate::codes::Code;
use crate::conn::Slots;
use crate::hijack::Claim;
use crate::http::parse::{query_param, Request};
use crate::limits::Limiter;
use crate::metrics::{Metrics, RouteLabel};
use crate::queue::Producer;
use crate::route::{self, Route, RouteError};
use crate::service::{Answer, Now, Reply, Service};
use crate::stock::Stock;
use crate::store::breaker::Breaker;
use crate::store::keys::valid_id;

/// The public listener's service. One per event loop; the handles inside are
/// shared.
pub struct Public {
    /// Token checker.
    pub(crate) signer: Signer,
    /// Events and goods.
    pub(crate) catalog: Arc<Catalog>,
    /// Memory stock.
    pub(crate) stock: Stock,
    /// The hijack queue (only looked at: a full queue is 1004 here).
    pub(crate) queue: Arc<dyn Producer>,
    /// Redis circuit breaker (shared with the worker).
    pub(crate) breaker: Breaker,
    /// Blocked uids.
    pub blacklist: Blacklist,
    /// Counters.
    pub metrics: Metrics,
    /// The client connections the process holds (for `/metrics`).
    pub(crate) slots: Slots,
    /// Limits against scalpers (shared by every loop).
    pub(crate) limiter: Arc<Limiter>,
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

impl Public {
    fn cart_add(&self, req: &Request<'_>, now: Now<'_>) -> Result<Claim, Code> {
        let uid = self.verify(req, now)?;
        self.limiter.user(uid, now.at)?;
        if self.blacklist.contains(uid) {
            return Err(Code::Blocked);
        }
        let (event_id, goods_id) = attempt::parse_ids(req.body)?;
        let snap = self.catalog.snapshot();
        let event = snap
            .events
            .get(event_id)
            .filter(|e| e.has_goods(goods_id))
            .ok_or(Code::NotFound)?;
        if now.unix_s < event.start_at {
            return Err(Code::NotStarted);
        }
        if now.unix_s >= event.end_at {
            return Err(Code::Ended);
        }
        let lease = self.stock.try_take(event_id, goods_id, uid)?;
        // Each refusal below drops the lease, which gives the unit back.
        if !self
            .breaker
            .admit(self.breaker.lane(event_id, goods_id), now.at)
        {
            return Err(Code::RedisError);
        }
        if self.queue.is_full() {
            return Err(Code::Busy);
        }
        Ok(Claim::Sale {
            attempt: Attempt {
                uid: uid.to_string(),
                event_id: event_id.to_string(),
                goods_id: goods_id.to_string(),
            },
            lease,
        })
    }

    fn verify<'r>(&self, req: &Request<'r>, now: Now<'_>) -> Result<&'r str, Code> {
        let header = req.authorization.ok_or(AuthError::Missing)?;
        Ok(self.signer.verify(header, now.unix_s)?)
    }

    fn result(&self, req: &Request<'_>, now: Now<'_>) -> Result<Claim, Code> {
        let uid = self.verify(req, now)?;
        let (event_id, goods_id) = ids_from_query(req.query).ok_or(Code::BadRequest)?;
        let known = self
            .catalog
            .snapshot()
            .events
            .get(event_id)
            .is_some_and(|e| e.has_goods(goods_id));
        if !known {
            return Err(Code::NotFound);
        }
        // Like a sale: while Redis is known down, say so at once rather
        // than queue a question that would wait out a timeout.
        if !self
            .breaker
            .admit(self.breaker.lane(event_id, goods_id), now.at)
        {
            return Err(Code::RedisError);
        }
        Ok(Claim::Result {
            event_id: event_id.to_string(),
            goods_id: goods_id.to_string(),
            uid: uid.to_string(),
        })
    }

    /// `/event/info?event_id=E`: the event's pre-encoded JSON.
    fn event_info<'s>(snap: &'s Snapshot, req: &Request<'_>) -> Reply<'s> {
        match query_param(req.query, "event_id") {
            Some(id) if valid_id(id.as_bytes()) => match snap.events.get(id) {
                Some(view) => Reply::json(Code::Ok, Some(view.json.as_str())),
                None => Reply::code(Code::NotFound),
            },
            _ => Reply::code(Code::BadRequest),
        }
    }

    /// `/metrics`: every counter, then each goods' memory share.
    fn metrics_text(&self) -> String {
        let mut body = self.metrics.render(
            self.queue.depth(),
            self.breaker.is_open(),
            self.slots.held(),
        );
        self.stock.write_metrics(&mut body);
        body
    }
}

fn ids_from_query(query: &str) -> Option<(&str, &str)> {
    let e = query_param(query, "event_id")?;
    let g = query_param(query, "goods_id")?;
    (valid_id(e.as_bytes()) && valid_id(g.as_bytes())).then_some((e, g))
}

impl Service for Public {
    fn handle(&mut self, req: &Request<'_>, now: Now<'_>, out: &mut Vec<u8>) -> Answer {
        let route = route::public(req.method, req.path);
        let label = label(&route);
        // Every route counts against the client's IP, before any work,
        // except the probes: a balancer's health checks come from its own
        // address, and a probe refused would take a healthy node out.
        let probe = matches!(route, Ok(Route::Healthz | Route::Readyz));
        let limited = if probe {
            Ok(())
        } else {
            self.limiter.ip(req.peer, req.forwarded_for, now.at)
        };
        if let Err(limited) = limited {
            let reply = Reply::code(Code::from(limited));
            self.metrics.count(label, reply.code);
            return reply.write(out, req, now);
        }
        // What a reply borrows its body from lives out here, past the match.
        let (snap, text);
        let reply = match route {
            Err(e) => Reply::no_route(e),
            Ok(Route::CartAdd) => match self.cart_add(req, now) {
                Ok(claim) => return Answer::Hijack(claim),
                Err(code) => Reply::code(code),
            },
            Ok(Route::Result) => match self.result(req, now) {
                Ok(claim) => return Answer::Hijack(claim),
                Err(code) => Reply::code(code),
            },
            // Reads are written straight from the snapshot's pre-encoded JSON.
            Ok(Route::EventList) => {
                snap = self.catalog.snapshot();
                Reply::json(Code::Ok, Some(&snap.list_json))
            }
            Ok(Route::EventInfo) => {
                snap = self.catalog.snapshot();
                Public::event_info(&snap, req)
            }
            Ok(Route::Healthz) => Reply::code(Code::Ok),
            Ok(Route::Readyz) if self.catalog.ready() => Reply::code(Code::Ok),
            Ok(Route::Readyz) => Reply::code(Code::NotReady),
            Ok(Route::Metrics) => {
                text = self.metrics_text();
                Reply::text(&text)
            }
            // `route::public` gives no admin routes.
            Ok(_) => Reply::code(Code::NotFound),
        };
        self.metrics.count(label, reply.code);
        reply.write(out, req, now)
    }
}

/// The test fixture: built for unit tests and with the `testing` feature
/// only.
#[cfg(any(test, feature = "testing"))]
mod fixture {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Public;
    use crate::auth::Signer;
    use crate::blacklist::Blacklist;
    use crate::catalog::event::EventDef;
    use crate::catalog::snapshot::{Catalog, Snapshot};
    use crate::config::QueueConfig;
    use crate::conn::Slots;
    use crate::metrics::Metrics;
    use crate::queue::{self, Consumer};
    use crate::stock::Stock;
    use crate::store::breaker::Breaker;

    impl Public {
        /// A test fixture (the `testing` feature): a service over in-memory
        /// state only: no Redis is contacted and no socket is needed, for the
        /// fuzz target, the benches and the allocation test. `defs` are the events, `stocks` each goods' stock
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
            catalog.replace(Snapshot::build(
                defs,
                stocks.iter().copied(),
                &stock,
                std::time::Instant::now(),
            ));
            let (queue, consumer) = queue::open("shop", &QueueConfig::default())?;
            let service = Public {
                signer: Signer::new(secret),
                catalog,
                stock,
                queue,
                breaker: Breaker::new(5, Duration::from_secs(1)),
                blacklist: Blacklist::new(),
                metrics: Metrics::default(),
                slots: Slots::new(usize::MAX),
                limiter: Arc::new(crate::limits::Limiter::new(
                    &crate::config::LimitsConfig::default(),
                    Metrics::default(),
                )),
            };
            Ok((service, consumer))
        }

        /// The same service with `limits` on (its own counters).
        pub fn with_limits(mut self, limits: &crate::config::LimitsConfig) -> Public {
            self.limiter = Arc::new(crate::limits::Limiter::new(limits, Metrics::default()));
            self
        }
    }
}
