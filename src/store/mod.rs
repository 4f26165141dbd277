//! The Redis access layer: everything that knows how seckill's state is
//! laid out in Redis and how to reach it.
//!
//! - [`keys`]: every key of SPEC §3, and the id syntax that keeps goods
//!   apart.
//! - [`access`]: the one door every caller uses, to a single server or a
//!   Redis Cluster (routing by the `{E:G}` hash tag, a pipeline split per
//!   master, redirections followed).
//! - [`conn`]: a connection to one server made on first use and made again
//!   after a failure; one deadline per round trip.
//! - [`breaker`]: the circuit breaker every Redis caller on the sale path
//!   shares.
//! - [`deduct`] (stage 7 of the request path) and `deduct.lua`: the sale,
//!   one atomic script per attempt; [`sliding`]: the course's sliding
//!   stock-number lock, the other strategy (`deduct.strategy`).
//! - `reset.lua` ([`RESET_SCRIPT`]): an admin reset, one atomic script that
//!   starts a goods' new sale with stream ids above its epoch.
//! - `topup.lua` ([`TOPUP_SCRIPT`]): an admin top-up, one atomic script that
//!   raises a goods' `stock` and `added` together.

pub(crate) mod access;
pub mod breaker;
pub(crate) mod conn;
pub mod deduct;
pub mod keys;
pub(crate) mod sliding;

/// The admin reset of one goods (`reset.lua`): sent with `EVAL`, as resets
/// are rare. Returns the epoch every new order's stream id is above.
pub(crate) const RESET_SCRIPT: &str = include_str!("reset.lua");

/// The admin top-up of one goods (`topup.lua`): sent with `EVAL`, as
/// top-ups are rare. Returns `{stock_left, added, sold}`.
pub(crate) const TOPUP_SCRIPT: &str = include_str!("topup.lua");

pub use access::Endpoint;
