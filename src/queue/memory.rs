//! The `"memory"` queue backend: a bounded `crossbeam-channel`.
//!
//! Many producers (the event loops), one consumer (the worker); FIFO.

use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::hijack::Task;
use crate::queue::{Consumer, Popped, Producer};

/// The loops' end.
#[derive(Debug, Clone)]
pub(crate) struct MemoryProducer(Sender<Task>);

/// The worker's end.
#[derive(Debug)]
pub(crate) struct MemoryConsumer(Receiver<Task>);

/// A queue holding at most `size` tasks.
pub(crate) fn channel(size: usize) -> (MemoryProducer, MemoryConsumer) {
    let (tx, rx) = bounded(size);
    (MemoryProducer(tx), MemoryConsumer(rx))
}

impl Producer for MemoryProducer {
    #[allow(clippy::result_large_err)]
    fn try_push(&self, task: Task) -> Result<(), Task> {
        self.0.try_send(task).map_err(|e| match e {
            TrySendError::Full(t) | TrySendError::Disconnected(t) => t,
        })
    }

    fn depth(&self) -> usize {
        self.0.len()
    }

    fn is_full(&self) -> bool {
        self.0.is_full()
    }
}

impl Consumer for MemoryConsumer {
    fn pop(&self, wait: Duration) -> Popped {
        match self.0.recv_timeout(wait) {
            Ok(t) => Popped::Task(t),
            Err(RecvTimeoutError::Timeout) => Popped::Empty,
            Err(RecvTimeoutError::Disconnected) => Popped::Closed,
        }
    }
}
