//! seckill: a flash-sale HTTP/1.1 endpoint on `mio` + `httparse` that sells
//! exactly the stock, at most once per user, and answers every request.
//!
//! # The request path
//!
//! ```text
//! client --TCP---> event_loop -> http/parse -> route + auth -> stock
//!                    ^                                           |
//!                    +-- errors, reads, "no stock": answered ----+ may win
//!                        on the loop, connection kept alive      v
//! closed <- http/response <- deduct.lua <- worker <- queue/ <- hijack
//!                            (Redis)      (bucket)    (full: 1004)
//! ```
//!
//! # Layout (in path order)
//!
//! - [`event_loop`] 1: mio `Poll`: accept, read, write, timers; sole owner of
//!   registered sockets. [`conn`]: one connection's buffers and deadlines.
//! - [`http::parse`] 2: bytes -> `Partial` | `Complete(Request)` | `HttpError`.
//! - [`route`], [`auth`], [`attempt`] 3: method + path -> `Route`; token
//!   verify; body -> checked `Attempt`. [`public`] runs these in order.
//! - [`stock`] 4: the node's memory share: `try_take` -> `Lease`.
//! - [`hijack`], [`queue`] 5: the connection leaves the loop as a `Task` on
//!   the bounded fan-in queue.
//! - [`worker`], [`bucket`] 6: paced by the token bucket, 1003 when expired.
//! - [`deduct`] 7: the Lua deduct (`deduct.lua`) -> `DeductOutcome`.
//! - [`http::response`] 8: `Code` + JSON -> bytes, written to the socket.
//!
//! Beside the path: [`codes`] (the SPEC's code table), [`config`],
//! [`breaker`] (Redis circuit breaker), [`blacklist`] (4003),
//! [`clock`], [`keys`] (every Redis key), [`redis_conn`] (a Redis connection
//! made on first use, remade after a failure), [`catalog`] (events, Redis ->
//! memory), [`admin`], [`lookup`] (`/shop/result`), [`metrics`],
//! [`service`] (what a loop hands requests to), [`linger`] (finishes slow
//! answers and closes hijacked sockets without a reset), [`shutdown`] (the
//! stop flag and the deadlines it caps), [`serve`] (wiring),
//! [`bench`](mod@bench) (the load generator: the client side, not the server).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod attempt;
pub mod auth;
pub mod bucket;
pub mod conn;
pub mod event_loop;
pub mod hijack;
pub mod http;
pub mod public;
pub mod queue;
pub mod route;
pub mod stock;
pub mod worker;

pub mod admin;
pub mod blacklist;
pub mod catalog;
pub mod client;
pub mod clock;
pub mod codes;
pub mod config;
pub mod linger;
pub mod lookup;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod store;
