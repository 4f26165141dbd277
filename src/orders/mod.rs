//! Beside the path: orders leave Redis. Each goods' `orders` stream,
//! written in the same atomic script as the sale, is the message queue;
//! the sink carries every entry into PostgreSQL exactly once (SPEC §9).
//!
//! - [`stream`]: the Redis side: the consumer group `seckill-sink`, reads
//!   (own pending first), acknowledgements, claims, scans.
//! - [`db`]: the PostgreSQL side: the schema, and a batch in one
//!   idempotent transaction.
//! - [`sink`]: the thread that joins the two, with the compensation scan.
//! - [`check`]: `seckill check`, the books side by side and whether they
//!   balance.

pub mod check;
pub mod db;
pub mod sink;
pub mod stream;
