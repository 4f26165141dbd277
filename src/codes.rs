//! Beside the path: the SPEC §2 code table, and nothing else.
//!
//! Every answer the server gives is one `Code`; this file is the only place
//! that knows its number, HTTP status, `msg` and headers, and the only place
//! that maps a cause to one. Stages keep their own enums (why a request was
//! refused, what the script decided) and say nothing of codes; the
//! `From` impls at the bottom turn each into the `Code` a client sees.

use crate::attempt::BadAttempt;
use crate::auth::AuthError;
use crate::http::parse::HttpError;
use crate::limits::Limited;
use crate::orders::stream::Unpersisted;
use crate::route::RouteError;
use crate::stock::NoLease;
use crate::store::deduct::{DeductError, DeductOutcome, Resolved};

/// One row of the SPEC's code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 0 / 200: success (a win, a read, an admin call).
    Ok,
    /// 1001 / 200: sold out.
    NoStock,
    /// 1002 / 503: Redis failed, is unreachable, or the breaker is open.
    RedisError,
    /// 1003 / 503: waited in the queue past `request_timeout_ms`.
    QueueTimeout,
    /// 1004 / 503: queue full, or this user's attempt is still queued.
    Busy,
    /// 1005 / 200: this user already won this goods.
    AlreadyPurchased,
    /// 1006 / 200: before `start_at`.
    NotStarted,
    /// 1007 / 200: at or after `end_at`.
    Ended,
    /// 4000 / 400: malformed HTTP, body, JSON or ids.
    BadRequest,
    /// 4001 / 401: token missing, malformed, badly signed or expired.
    Unauthorized,
    /// 4003 / 403: uid on the blacklist.
    Blocked,
    /// 4004 / 404: unknown path, event or goods.
    NotFound,
    /// 4005 / 405: known path, wrong method.
    MethodNotAllowed,
    /// 4008 / 408: the whole request did not arrive in `read_timeout_ms`.
    ReadTimeout,
    /// 4013 / 413: body over `max_body_bytes`.
    PayloadTooLarge,
    /// 4031 / 431: head over `max_header_bytes`.
    HeaderTooLarge,
    /// 503 with code 1002: `/readyz` while Redis does not answer.
    NotReady,
    /// 4009 / 409: `DELETE` of an event whose orders are not all in
    /// PostgreSQL yet.
    NotPersisted,
    /// 4029 / 429: over `limits.per_user_per_s` or `limits.per_ip_per_s`.
    TooManyRequests,
}

impl Code {
    /// Every code, for tables and tests. INVARIANT: in declaration order,
    /// so `code as usize` is a code's place here (a test checks).
    pub(crate) const ALL: [Code; 19] = [
        Code::Ok,
        Code::NoStock,
        Code::RedisError,
        Code::QueueTimeout,
        Code::Busy,
        Code::AlreadyPurchased,
        Code::NotStarted,
        Code::Ended,
        Code::BadRequest,
        Code::Unauthorized,
        Code::Blocked,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::ReadTimeout,
        Code::PayloadTooLarge,
        Code::HeaderTooLarge,
        Code::NotReady,
        Code::NotPersisted,
        Code::TooManyRequests,
    ];

    /// The `code` field of the JSON body.
    pub(crate) fn number(self) -> u16 {
        match self {
            Code::Ok => 0,
            Code::NoStock => 1001,
            Code::RedisError | Code::NotReady => 1002,
            Code::QueueTimeout => 1003,
            Code::Busy => 1004,
            Code::AlreadyPurchased => 1005,
            Code::NotStarted => 1006,
            Code::Ended => 1007,
            Code::BadRequest => 4000,
            Code::Unauthorized => 4001,
            Code::Blocked => 4003,
            Code::NotFound => 4004,
            Code::MethodNotAllowed => 4005,
            Code::ReadTimeout => 4008,
            Code::PayloadTooLarge => 4013,
            Code::HeaderTooLarge => 4031,
            Code::NotPersisted => 4009,
            Code::TooManyRequests => 4029,
        }
    }

    /// The HTTP status line's code and reason.
    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            Code::Ok | Code::NoStock | Code::AlreadyPurchased | Code::NotStarted | Code::Ended => {
                (200, "OK")
            }
            Code::RedisError | Code::QueueTimeout | Code::Busy | Code::NotReady => {
                (503, "Service Unavailable")
            }
            Code::BadRequest => (400, "Bad Request"),
            Code::Unauthorized => (401, "Unauthorized"),
            Code::Blocked => (403, "Forbidden"),
            Code::NotFound => (404, "Not Found"),
            Code::MethodNotAllowed => (405, "Method Not Allowed"),
            Code::ReadTimeout => (408, "Request Timeout"),
            Code::PayloadTooLarge => (413, "Payload Too Large"),
            Code::HeaderTooLarge => (431, "Request Header Fields Too Large"),
            Code::NotPersisted => (409, "Conflict"),
            Code::TooManyRequests => (429, "Too Many Requests"),
        }
    }

    /// The `msg` field of the JSON body.
    pub(crate) fn msg(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::NoStock => "no stock",
            Code::RedisError | Code::NotReady => "redis error",
            Code::QueueTimeout => "request timeout",
            Code::Busy => "busy",
            Code::AlreadyPurchased => "already purchased",
            Code::NotStarted => "event not started",
            Code::Ended => "event ended",
            Code::BadRequest => "bad request",
            Code::Unauthorized => "unauthorized",
            Code::Blocked => "blocked",
            Code::NotFound => "not found",
            Code::MethodNotAllowed => "method not allowed",
            Code::ReadTimeout => "request timeout",
            Code::PayloadTooLarge => "payload too large",
            Code::HeaderTooLarge => "request header fields too large",
            Code::NotPersisted => "orders not persisted",
            Code::TooManyRequests => "too many requests",
        }
    }

    /// SPEC §2: these carry `Retry-After: 1` (1004 and 4029: try again in
    /// a second).
    pub(crate) fn retry_after(self) -> bool {
        matches!(self, Code::Busy | Code::TooManyRequests)
    }

    /// SPEC §2: after these the server answers `Connection: close` and closes.
    pub(crate) fn closes(self) -> bool {
        matches!(
            self,
            Code::BadRequest | Code::ReadTimeout | Code::PayloadTooLarge | Code::HeaderTooLarge
        )
    }
}

// # Causes -> codes

/// Stage 2: bytes that are not an acceptable request.
impl From<HttpError> for Code {
    fn from(e: HttpError) -> Code {
        match e {
            HttpError::Malformed => Code::BadRequest,
            HttpError::HeadTooLarge => Code::HeaderTooLarge,
            HttpError::BodyTooLarge => Code::PayloadTooLarge,
        }
    }
}

/// Stage 3: no route (the 405's `Allow` header comes with the error).
impl From<RouteError> for Code {
    fn from(e: RouteError) -> Code {
        match e {
            RouteError::NotFound => Code::NotFound,
            RouteError::MethodNotAllowed(_) => Code::MethodNotAllowed,
        }
    }
}

/// Beside stage 3: a limit against scalpers refused it, whichever.
impl From<Limited> for Code {
    fn from(_: Limited) -> Code {
        Code::TooManyRequests
    }
}

/// Stage 3: every refused token is the same 4001, whatever was wrong.
impl From<AuthError> for Code {
    fn from(_: AuthError) -> Code {
        Code::Unauthorized
    }
}

/// Stage 3: a body or an id that is not acceptable.
impl From<BadAttempt> for Code {
    fn from(_: BadAttempt) -> Code {
        Code::BadRequest
    }
}

/// Stage 4: why the memory share gave no lease.
impl From<NoLease> for Code {
    fn from(n: NoLease) -> Code {
        match n {
            NoLease::NoStock => Code::NoStock,
            NoLease::AlreadyPurchased => Code::AlreadyPurchased,
            NoLease::Queued => Code::Busy,
            NoLease::Unknown => Code::NotFound,
        }
    }
}

/// Stage 7: what the deduct script decided.
impl From<&DeductOutcome> for Code {
    fn from(o: &DeductOutcome) -> Code {
        match o {
            DeductOutcome::Won { .. } => Code::Ok,
            DeductOutcome::NoStock => Code::NoStock,
            DeductOutcome::AlreadyPurchased => Code::AlreadyPurchased,
            DeductOutcome::NotFound => Code::NotFound,
        }
    }
}

/// Stage 7: the deduct failed (an unknown outcome is resolved first).
impl From<&DeductError> for Code {
    fn from(_: &DeductError) -> Code {
        Code::RedisError
    }
}

/// Stage 7: what asking after an unknown outcome found.
impl From<&Resolved> for Code {
    fn from(r: &Resolved) -> Code {
        match r {
            Resolved::Won { .. } => Code::Ok,
            // Not sold, and nothing sent can run any more: Redis failed.
            Resolved::NotSold => Code::RedisError,
        }
    }
}

/// Beside the path: an event's orders are not all in PostgreSQL yet.
impl From<&Unpersisted> for Code {
    fn from(_: &Unpersisted) -> Code {
        Code::NotPersisted
    }
}

/// Beside the path: a Redis call failed (the admin listener's; the sale's
/// own failures are `DeductError`s).
impl From<&redis::RedisError> for Code {
    fn from(_: &redis::RedisError) -> Code {
        Code::RedisError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_matches_the_spec_table() {
        let table: [(Code, u16, u16, &str); 19] = [
            (Code::Ok, 0, 200, "ok"),
            (Code::NoStock, 1001, 200, "no stock"),
            (Code::RedisError, 1002, 503, "redis error"),
            (Code::QueueTimeout, 1003, 503, "request timeout"),
            (Code::Busy, 1004, 503, "busy"),
            (Code::AlreadyPurchased, 1005, 200, "already purchased"),
            (Code::NotStarted, 1006, 200, "event not started"),
            (Code::Ended, 1007, 200, "event ended"),
            (Code::BadRequest, 4000, 400, "bad request"),
            (Code::Unauthorized, 4001, 401, "unauthorized"),
            (Code::Blocked, 4003, 403, "blocked"),
            (Code::NotFound, 4004, 404, "not found"),
            (Code::MethodNotAllowed, 4005, 405, "method not allowed"),
            (Code::ReadTimeout, 4008, 408, "request timeout"),
            (Code::PayloadTooLarge, 4013, 413, "payload too large"),
            (
                Code::HeaderTooLarge,
                4031,
                431,
                "request header fields too large",
            ),
            (Code::NotReady, 1002, 503, "redis error"),
            (Code::NotPersisted, 4009, 409, "orders not persisted"),
            (Code::TooManyRequests, 4029, 429, "too many requests"),
        ];
        for (code, number, status, msg) in table {
            assert_eq!(code.number(), number, "{code:?}");
            assert_eq!(code.status().0, status, "{code:?}");
            assert_eq!(code.msg(), msg, "{code:?}");
        }
        assert_eq!(Code::ALL.len(), table.len());
    }

    #[test]
    fn code_as_usize_is_its_place_in_all() {
        // metrics and the canned answers index arrays by `code as usize`.
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?}");
        }
    }

    #[test]
    fn every_cause_maps_to_its_spec_code() {
        let causes = [
            (Code::from(HttpError::Malformed), Code::BadRequest),
            (Code::from(HttpError::HeadTooLarge), Code::HeaderTooLarge),
            (Code::from(HttpError::BodyTooLarge), Code::PayloadTooLarge),
            (Code::from(RouteError::NotFound), Code::NotFound),
            (
                Code::from(RouteError::MethodNotAllowed("GET")),
                Code::MethodNotAllowed,
            ),
            (Code::from(AuthError::Missing), Code::Unauthorized),
            (Code::from(AuthError::Expired), Code::Unauthorized),
            (Code::from(BadAttempt), Code::BadRequest),
            (Code::from(NoLease::NoStock), Code::NoStock),
            (
                Code::from(NoLease::AlreadyPurchased),
                Code::AlreadyPurchased,
            ),
            (Code::from(NoLease::Queued), Code::Busy),
            (Code::from(NoLease::Unknown), Code::NotFound),
            (Code::from(&DeductOutcome::NoStock), Code::NoStock),
            (Code::from(&DeductOutcome::NotFound), Code::NotFound),
            (
                Code::from(&DeductError::Unknown {
                    node: "127.0.0.1:6379".into(),
                }),
                Code::RedisError,
            ),
            (Code::from(&Resolved::NotSold), Code::RedisError),
        ];
        for (i, (got, want)) in causes.into_iter().enumerate() {
            assert_eq!(got, want, "cause #{i}");
        }
        assert!(Code::Busy.retry_after());
        assert!(Code::TooManyRequests.retry_after());
        assert_eq!(Code::ALL.iter().filter(|c| c.retry_after()).count(), 2);
    }
}
