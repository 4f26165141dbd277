//! What an event loop hands each complete request to.
//!
//! The loop owns sockets, buffers and timers; a `Service` owns what the
//! answers mean. The public listener's service (`public`) answers most
//! requests at once and claims the connection for the rest (a hijack); the
//! admin listener's (`admin`) always answers.
//! Invariants: `handle` writes at most one response into `out`, and says
//! whether the connection stays open; a claim is always followed by exactly
//! one `hijack` call with the connection, already off the loop.

use std::time::Instant;

use crate::codes::Code;
use crate::hijack::Hijacked;
use crate::http::parse::Request;
use crate::http::response::{self, Canned, Extra};

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

/// What became of one request.
#[derive(Debug)]
pub enum Handled<C> {
    /// Answered; keep reading this connection.
    KeepOpen,
    /// Answered; close once the answer is written.
    Close,
    /// Not answered: the service wants the connection itself.
    Hijack(C),
}

/// A listener's request handler.
pub trait Service {
    /// What a hijacking answer carries to `hijack`.
    type Claim;
    /// Answers `req` into `out`, or claims the connection.
    fn handle(
        &mut self,
        req: &Request<'_>,
        now: Now<'_>,
        out: &mut Vec<u8>,
    ) -> Handled<Self::Claim>;
    /// Receives the claimed connection, now off the loop.
    fn hijack(&mut self, conn: Hijacked, claim: Self::Claim);
}

/// Writes a JSON answer and says whether the connection stays open: it does
/// when the client wants keep-alive and the code is not one the SPEC closes
/// after (400, 408, 413, 431).
pub fn reply<C>(
    out: &mut Vec<u8>,
    req: &Request<'_>,
    now: Now<'_>,
    code: Code,
    data: Option<&str>,
    extra: Extra,
) -> Handled<C> {
    let keep = req.keep_alive && !code.closes();
    match (data, extra) {
        (None, Extra::None) => out.extend_from_slice(now.canned.get(code, keep)),
        _ => response::write_json(out, code, data, keep, now.date, extra),
    }
    if keep {
        Handled::KeepOpen
    } else {
        Handled::Close
    }
}
