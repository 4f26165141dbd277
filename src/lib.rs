//! seckill: a flash-sale HTTP/1.1 endpoint on `mio` + `httparse` that sells
//! exactly the stock, at most once per user, and answers every request.
//!
//! # The request path
//!
//! ```text
//! client --TCP---> event_loop -> http/parse -> public (route, auth, attempt) -> stock
//!                    ^                                                             |
//!                    +-- errors, reads, "no stock": answered on the loop ----------+ may win
//!                        (service::Reply), connection kept alive                   v
//! closed <- http/response <- store/deduct.lua <- worker <- queue/ <- hijack::hand_over
//!                            (Redis)            (bucket)   (full: 1004)
//! ```
//!
//! One attempt, socket to answer, file by file (each module's doc says what
//! comes in, what goes out, and what it never does):
//!
//! 1. [`event_loop`], [`conn`]: mio `Poll` per thread: accept, read, write,
//!    timers; sole owner of registered sockets. `answer_buffered` is its
//!    bytes-in -> bytes-out step.
//! 2. [`http::parse`]: bytes -> `Partial` | `Complete(Request)` | `HttpError`.
//! 3. [`service`]: what the loop hands a request to, and the one `Answer`
//!    it gets back (written, or `Hijack` with a claim). [`public`] runs the
//!    checks in order: [`route`] (404/405), [`auth`] (token, 4001), the
//!    blacklist (4003), [`attempt`] (body and ids, 4000), event and goods
//!    (4004), the event window (1006/1007).
//! 4. [`stock`]: the node's memory share: `try_take` -> `Lease` or `NoLease`
//!    (1001, 1005, 1004); then the breaker (1002) and a full queue (1004)
//!    can still refuse, and the lease goes back.
//! 5. [`hijack`]: `hand_over` deregisters the socket, makes it a `Hijacked`
//!    owed one answer and builds the `Task`; the loop pushes it on the
//!    bounded fan-in [`queue`] (a `/shop/result` question goes to
//!    [`lookup`] the same way).
//! 6. [`worker`], [`bucket`]: one worker, paced by the token bucket; 1003
//!    past `request_timeout_ms`; [`resolve`] answers, beside it, the
//!    attempts whose round trip failed after their scripts were sent.
//! 7. [`store::deduct`] and `store/deduct.lua`: the atomic sale in Redis ->
//!    `DeductOutcome`.
//! 8. [`http::response`]: `Code` + JSON -> bytes, written to the socket;
//!    [`linger`] finishes the answers a slow client did not take at once.
//!
//! Every cause (an `HttpError`, a `NoLease`, a `DeductOutcome`, ...) becomes
//! a client's code in one place: [`codes`].
//!
//! # Where things live
//!
//! The rule, for what comes next: **a stage of the request path is a file
//! at the top of `src/`** (or in `http/` and `queue/`, as today; stage 7,
//! the deduct, is the one stage that lives with its concern, in `store/`,
//! because it is a Redis script); **a concern beside the path that needs
//! more than one file gets its own folder**; the wiring and the vocabulary
//! every stage shares stay at the top.
//!
//! - [`store`]: the Redis access layer: keys and id syntax, one door to a
//!   single Redis or a Redis Cluster, connections, the breaker, the deduct
//!   script.
//! - [`catalog`]: events and goods: the model admin shares, the snapshot
//!   the loops read, the refresh threads.
//! - [`client`]: the client side: the load generator and the one HTTP
//!   response reader the tests and examples share.
//! - [`orders`]: orders leave Redis: the stream side, the PostgreSQL side,
//!   the sink thread that joins them, and `seckill check`.
//! - [`limits`]: limits against scalpers (4029): a token bucket per uid and
//!   per client IP, in a fixed-size table.
//! - Beside the path, one file each: [`admin`] (the admin listener),
//!   [`lookup`] (`/shop/result`, answered off the loop), [`blacklist`].
//! - The process: [`serve`] (wiring), [`config`], [`shutdown`] (the stop
//!   flag and the deadlines it caps), and the shared vocabulary [`codes`],
//!   [`clock`], [`metrics`].
#![forbid(unsafe_code)]
// The map links crate-private modules too: the docs are built with
// `--document-private-items` (scripts/test.sh), where every link resolves.
#![allow(rustdoc::private_intra_doc_links)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

// 1. The event loop and one connection's state.
pub mod conn;
pub mod event_loop;
// 2 and 8. HTTP bytes in, HTTP bytes out.
pub mod http;
// 3. What the loop hands a request to, and the one answer it gets back.
pub mod service;
// 3. The public listener's service: runs route, auth and attempt in order.
pub mod public;
// 3. Routing, identity, validation.
pub mod attempt;
pub mod auth;
pub(crate) mod route;
// 4. The memory share.
pub mod stock;
// 5. The hand-over, and the queue.
pub mod hijack;
pub mod queue;
// 6. The worker and its pacing; beside it, the thread that answers the
// attempts whose outcome a failed round trip left unknown.
pub mod bucket;
pub(crate) mod resolve;
pub mod worker;
// 7 lives in store/ (store::deduct). After 8: slow answers, closed gently.
pub mod linger;

// Beside the path: one folder per concern.
pub mod catalog;
pub mod client;
pub mod orders;
pub mod store;
// Beside the path: one file each.
pub(crate) mod admin;
pub(crate) mod blacklist;
pub mod limits;
pub(crate) mod lookup;

// The process: wiring, configuration, the stop, and the shared vocabulary.
pub mod config;
pub mod serve;
pub mod shutdown;
// The vocabulary every stage shares.
pub mod clock;
pub mod codes;
pub mod metrics;
