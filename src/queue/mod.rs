//! Stage 5 of 8 (the queue): hijacked tasks fan in from every event loop to
//! the one worker.
//!
//! In: `Task`s from the loops (`Producer`, many). Out: the same tasks, first
//! come first served, to the worker (`Consumer`, one).
//! Invariants: bounded: a push to a full queue fails at once and gives the
//! task back, so the caller answers 1004; the queue is FIFO; when every
//! producer is gone the consumer still gets every task left, then `Closed`.
//! The backend is picked by name (`queue.<name>.type`); the loops and the
//! worker only see these traits, so another backend needs no change there.
//! Never: blocks a producer.

pub(crate) mod memory;

use std::sync::Arc;
use std::time::Duration;

use crate::config::QueueConfig;
use crate::hijack::Task;

/// The loops' end of the queue.
pub trait Producer: Send + Sync {
    /// Enqueues, or gives the task back when the queue is full (by value:
    /// the caller still owes that connection its 1004).
    #[allow(clippy::result_large_err)]
    fn try_push(&self, task: Task) -> Result<(), Task>;
    /// Tasks waiting now.
    fn depth(&self) -> usize;
    /// Whether a push would fail now.
    fn is_full(&self) -> bool;
}

/// What a pop found.
#[derive(Debug)]
pub enum Popped {
    /// The next task.
    Task(Task),
    /// Nothing arrived within the wait.
    Empty,
    /// No producer is left and the queue is empty: the worker may stop.
    Closed,
}

/// The worker's end of the queue.
pub trait Consumer: Send {
    /// Waits up to `wait` for the next task.
    fn pop(&self, wait: Duration) -> Popped;
}

/// Both ends of a queue: the shared producer and the worker's consumer.
pub(crate) type Ends = (Arc<dyn Producer>, Box<dyn Consumer>);

/// Builds the backend `cfg.kind` names. The producer is shared by the loops;
/// dropping every clone of it closes the queue.
pub fn open(name: &str, cfg: &QueueConfig) -> Result<Ends, String> {
    match cfg.kind.as_str() {
        "memory" => {
            let (p, c) = memory::channel(cfg.size);
            Ok((Arc::new(p), Box::new(c)))
        }
        other => Err(format!(
            "queue.{name}.type: unknown queue type {other:?} (known: \"memory\")"
        )),
    }
}
