//! Beside the path: the linger thread, which ends hijacked connections
//! gently.
//!
//! Whoever answers a hijacked connection (the worker, the lookup thread,
//! or the event loop itself for a 1004 when the queue or the inbox is
//! full) writes the answer non-blocking and, most of the time, closes the
//! socket at once. Two cases would make that close hurt the client, and those
//! sockets come here instead:
//!
//! - **The client has not taken the whole answer yet** (its receive window
//!   is full: it pipelined answers it has not read). The rest is written
//!   here, with a deadline, so no answering thread ever waits on a client.
//! - **The client sent bytes the server never read** (requests pipelined
//!   behind the hijacked one, which SPEC §2 says are not read). Closing a
//!   socket with unread input makes the kernel send a TCP reset, which
//!   throws away whatever of the answer is still unsent or unacknowledged.
//!   So this thread makes a *lingering close*: it stops writing
//!   (`shutdown(Write)`: the client sees the end of the answer), then reads
//!   and discards input until the client closes or `LINGER` passes, then
//!   closes.
//!
//! Every socket here still holds its `Slot`, so it counts against
//! `max_connections` until it is closed.
//!
//! Invariants: a socket is held at most `WRITE_TIMEOUT + LINGER`; the
//! inbox is bounded (a full inbox closes the socket at once: the old
//! behaviour, never a wait); once every sender is gone (shutdown) what is
//! left gets at most `STOP_LINGER` more, then the thread ends.
//! Never: writes anything but the rest of an answer it was given.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown as Direction;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::conn::Slot;

/// How long a client that does not read gets to take the rest of its answer.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long input is discarded after the answer, at most (SPEC §2: 1 s).
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// At shutdown, what is still lingering gets this much more at most.
pub(crate) const STOP_LINGER: Duration = Duration::from_millis(200);
/// Sockets waiting to be taken in at most; past that, they close at once.
const INBOX: usize = 1024;
/// How often the thread looks at its inbox and deadlines while it holds
/// sockets (it blocks on the inbox while it holds none).
const TICK: Duration = Duration::from_millis(10);

/// A socket handed over: the answer, how much of it is written, and when.
#[derive(Debug)]
struct Handover {
    stream: std::net::TcpStream,
    slot: Slot,
    out: Vec<u8>,
    done: usize,
}

/// The linger thread's inbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Linger {
    tx: Sender<Handover>,
}

impl Linger {
    /// Starts the thread. It ends, and the handle with it, once every
    /// `Linger` clone is dropped and what it holds is closed.
    pub fn start() -> std::io::Result<(Linger, JoinHandle<()>)> {
        let (tx, rx) = bounded::<Handover>(INBOX);
        let poll = Poll::new()?;
        let handle = std::thread::Builder::new()
            .name("seckill-linger".into())
            .spawn(move || Lingering::new(poll).run(rx))?;
        Ok((Linger { tx }, handle))
    }

    /// Takes a non-blocking socket whose answer `out` is written up to
    /// `done`: writes the rest, then closes it lingering. A full inbox
    /// closes it now instead.
    pub(crate) fn hand(&self, stream: std::net::TcpStream, slot: Slot, out: Vec<u8>, done: usize) {
        let handover = Handover {
            stream,
            slot,
            out,
            done,
        };
        match self.tx.try_send(handover) {
            Ok(()) => {}
            // Dropping the handover closes the socket and frees its slot.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One socket on its way out.
struct Entry {
    stream: TcpStream,
    // Held until the socket closes (dropped with the entry).
    _slot: Slot,
    out: Vec<u8>,
    // INVARIANT: done <= out.len().
    done: usize,
    // INVARIANT: true once done == out.len() and the write side is shut.
    shut: bool,
    deadline: Instant,
}

/// The thread's state: its own poll, and the sockets it holds.
struct Lingering {
    poll: Poll,
    entries: Slab<Entry>,
    scratch: Vec<u8>,
    // Set once the inbox is disconnected: no deadline passes this.
    stop_by: Option<Instant>,
}

impl Lingering {
    fn new(poll: Poll) -> Self {
        Lingering {
            poll,
            entries: Slab::new(),
            scratch: vec![0; 16 * 1024],
            stop_by: None,
        }
    }

    fn run(mut self, rx: Receiver<Handover>) {
        let mut events = Events::with_capacity(256);
        loop {
            // Take in what arrived; with nothing held, wait for it.
            if self.entries.is_empty() && self.stop_by.is_none() {
                match rx.recv_timeout(Duration::from_secs(3600)) {
                    Ok(h) => self.take(h),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(h) => self.take(h),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if self.stop_by.is_none() {
                            let by = Instant::now() + STOP_LINGER;
                            self.stop_by = Some(by);
                            for (_, e) in self.entries.iter_mut() {
                                e.deadline = e.deadline.min(by);
                            }
                        }
                        break;
                    }
                }
            }
            if self.entries.is_empty() && self.stop_by.is_some() {
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::warn!("linger poll failed: {e}; closing what it holds");
                    return;
                }
            }
            for event in events.iter() {
                self.advance(event.token().0);
            }
            let now = Instant::now();
            self.entries.retain(|_, e| e.deadline > now);
        }
    }

    fn take(&mut self, h: Handover) {
        let deadline = self.cap(Instant::now() + WRITE_TIMEOUT);
        let entry = self.entries.vacant_entry();
        let key = entry.key();
        let mut stream = TcpStream::from_std(h.stream);
        let registered = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            return; // the socket closes here; nothing better to do
        }
        entry.insert(Entry {
            stream,
            _slot: h.slot,
            out: h.out,
            done: h.done,
            shut: false,
            deadline,
        });
        // Edge-triggered: what is ready now was reported at register; act
        // on it at once rather than wait a tick.
        self.advance(key);
    }

    /// A deadline, no later than the stop allows.
    fn cap(&self, deadline: Instant) -> Instant {
        self.stop_by.map_or(deadline, |by| deadline.min(by))
    }

    /// Writes what is left of the answer, then discards input; closes the
    /// socket when the client is done, or on any error.
    fn advance(&mut self, key: usize) {
        let linger_until = self.cap(Instant::now() + LINGER);
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let keep = match write_rest(e, linger_until) {
            Step::Wait => true,
            Step::Close => false,
            Step::Done => discard(&mut e.stream, &mut self.scratch),
        };
        if !keep {
            // Closing its only descriptor removes it from the poll too.
            self.entries.remove(key);
        }
    }
}

enum Step {
    Wait,
    Done,
    Close,
}

/// Writes until the answer is out, `WouldBlock`, or an error. Once it is
/// out, shuts the write side (the client reads the end of the answer) and
/// the linger deadline starts.
fn write_rest(e: &mut Entry, linger_until: Instant) -> Step {
    if e.shut {
        return Step::Done;
    }
    while e.done < e.out.len() {
        match e.stream.write(&e.out[e.done..]) {
            Ok(0) => return Step::Close,
            Ok(n) => e.done += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(_) => return Step::Close,
        }
    }
    e.out = Vec::new();
    e.done = 0;
    e.shut = true;
    e.deadline = linger_until;
    if e.stream.shutdown(Direction::Write).is_err() {
        return Step::Close;
    }
    Step::Done
}

/// Reads and drops input until `WouldBlock` (keep) or EOF / error (close).
fn discard(stream: &mut TcpStream, scratch: &mut [u8]) -> bool {
    loop {
        match stream.read(scratch) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}
