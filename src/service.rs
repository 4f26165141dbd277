//! What an event loop hands each complete request to, and what it gets back.
//!
//! The loop owns sockets, buffers and timers; a `Service` owns what the
//! answers mean. The public listener's service (`public`) answers most
//! requests at once and claims the connection for the rest (a hijack); the
//! admin listener's (`admin`) always answers.
//!
//! Every request ends in one `Answer`: written into the connection's
//! buffer (the connection stays open, or closes once it is flushed), or not
//! written because the connection is claimed (`Answer::Hijack`, which the
//! loop passes to `hijack::hand_over`). A service builds each written
//! answer as one `Reply`, counts its `code` and writes it with
//! `Reply::write`: one count and one write per request, at the end of
//! `handle`.

use std::time::Instant;

use crate::codes::Code;
use crate::hijack::Claim;
use crate::http::parse::Request;
use crate::http::response::{self, Canned, Extra};
use crate::route::RouteError;

/// The moment a request is handled, as the loop saw it.
#[derive(Debug, Clone, Copy)]
pub struct Now<'a> {
    /// Monotonic now (queue deadlines count from here).
    pub at: Instant,
    /// Unix seconds (token expiry, event windows).
    pub unix_s: u64,
    /// The `Date` header value.
    pub date: &'a str,
    /// This second's pre-encoded fixed answers.
    pub canned: &'a Canned,
    /// The server is stopping: every answer says `Connection: close`.
    pub stopping: bool,
}

/// What became of a request: the one answer type from the service to the
/// loop.
#[derive(Debug)]
pub enum Answer {
    /// Answered; the connection stays open for the next request.
    Open,
    /// Answered with `Connection: close`; the connection closes once the
    /// answer is flushed.
    Close,
    /// Not answered here: the connection leaves the loop with this claim
    /// (see `hijack`), and whoever takes it answers.
    Hijack(Claim),
}

/// A listener's request handler.
pub trait Service {
    /// Answers `req` into `out`, or claims the connection.
    fn handle(&mut self, req: &Request<'_>, now: Now<'_>, out: &mut Vec<u8>) -> Answer;
}

/// One answer written on the loop: its code, and what goes with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply<'a> {
    /// The SPEC code.
    pub(crate) code: Code,
    body: Body<'a>,
    extra: Extra,
}

#[derive(Debug, Clone, Copy)]
enum Body<'a> {
    /// `{"code":..,"msg":..,"data":<json or null>}`.
    Json(Option<&'a str>),
    /// Prometheus text (`/metrics`).
    Text(&'a str),
}

impl<'a> Reply<'a> {
    /// The code alone (`data` is `null`).
    pub(crate) fn code(code: impl Into<Code>) -> Self {
        Reply::json(code.into(), None)
    }

    /// The code with `data` (JSON text).
    pub(crate) fn json(code: Code, data: Option<&'a str>) -> Self {
        Reply {
            code,
            body: Body::Json(data),
            extra: Extra::None,
        }
    }

    /// No route: 404, or 405 with its `Allow` header.
    pub(crate) fn no_route(e: RouteError) -> Self {
        let extra = match e {
            RouteError::MethodNotAllowed(allow) => Extra::Allow(allow),
            RouteError::NotFound => Extra::None,
        };
        Reply {
            extra,
            ..Reply::code(e)
        }
    }

    /// 200 with a Prometheus text body.
    pub(crate) fn text(body: &'a str) -> Self {
        Reply {
            code: Code::Ok,
            body: Body::Text(body),
            extra: Extra::None,
        }
    }

    /// Writes the answer into `out` and says whether the connection stays
    /// open: it does when the client wants keep-alive and the code is not
    /// one the SPEC closes after (400, 408, 413, 431).
    pub(crate) fn write(self, out: &mut Vec<u8>, req: &Request<'_>, now: Now<'_>) -> Answer {
        let keep = req.keep_alive && !self.code.closes();
        match (self.body, self.extra) {
            // The common refusals: copied whole from this second's canned bytes.
            (Body::Json(None), Extra::None) => {
                out.extend_from_slice(now.canned.get(self.code, keep))
            }
            (Body::Json(data), extra) => {
                response::write_json(out, self.code, data, keep, now.date, extra)
            }
            (Body::Text(text), _) => response::write_raw(
                out,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                keep,
                now.date,
            ),
        }
        if keep {
            Answer::Open
        } else {
            Answer::Close
        }
    }
}
