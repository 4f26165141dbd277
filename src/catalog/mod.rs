//! Beside the path: events and goods, Redis -> memory.
//!
//! - [`event`](mod@event): the model (`EventDef`, `GoodsDef`) that the admin
//!   listener writes and the refresh thread reads, with its checks.
//! - [`snapshot`](mod@snapshot): `Catalog`, the handle the event loops read
//!   without waiting, and the `Snapshot` it holds.
//! - [`refresh`](mod@refresh): the threads that keep the snapshot and the
//!   memory stock in step with Redis.

pub mod event;
pub(crate) mod refresh;
pub(crate) mod snapshot;
