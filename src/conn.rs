//! Stage 1 of 8 (state): one connection on an event loop.
//!
//! Holds the socket, the bytes read but not yet parsed, the answers written
//! but not yet flushed, and the deadline that applies now:
//! - a request has begun but is not complete: `began_at + read_timeout`
//!   (then 408 and close);
//! - answers wait to be flushed: last progress `+ read_timeout` (then close:
//!   the client stopped reading);
//! - idle keep-alive: last activity `+ keepalive_timeout` (then close).
//!
//! Invariants: `read_start <= inbuf.len()` and `out_pos <= out.len()`; the
//! read buffer holds at most one partial request plus one read chunk,
//! because it is only read into when parsing wants more; answers stop being
//! produced while more than `OUT_HIGH` bytes wait to be flushed, so a client
//! that pipelines without reading holds a bounded buffer.
//!
//! Every client socket the process holds carries a `Slot`, one unit of
//! `server.max_connections`: taken at accept, it travels with the socket
//! through a hijack (queue, worker, lookup, linger) and is given back only
//! when the socket is closed. So the count is every client descriptor the
//! process holds, wherever it is, and the limit (clamped at start to what
//! the open-file limit fits) is never passed.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

/// Bytes read from the socket per `read` call.
pub(crate) const READ_CHUNK: usize = 4096;
/// Unflushed answer bytes past which the connection stops parsing.
pub(crate) const OUT_HIGH: usize = 64 * 1024;

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// New bytes are in `inbuf`.
    Data,
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed its side (EOF).
    Eof,
    /// Reset, or another error: close.
    Failed,
}

/// The connection count shared by every holder of a client socket (and
/// shown as `seckill_open_connections`). Cheap to clone: a handle to
/// shared state.
#[derive(Debug, Clone)]
pub struct Slots(Arc<SlotsInner>);

#[derive(Debug)]
struct SlotsInner {
    // INVARIANT: the number of live `Slot`s of this `Slots`, at most `max`.
    held: AtomicUsize,
    max: usize,
}

impl Slots {
    /// At most `max` slots at once.
    pub fn new(max: usize) -> Self {
        Slots(Arc::new(SlotsInner {
            held: AtomicUsize::new(0),
            max,
        }))
    }

    /// One slot, or None when `max` are held.
    pub fn try_take(&self) -> Option<Slot> {
        let inner = &self.0;
        inner
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    /// Slots held now.
    pub(crate) fn held(&self) -> usize {
        self.0.held.load(Ordering::Acquire)
    }
}

/// One unit of `max_connections`, held as long as its socket is open;
/// dropping it gives the unit back.
#[derive(Debug)]
pub struct Slot(Slots);

impl Drop for Slot {
    fn drop(&mut self) {
        (self.0).0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection: its socket, its buffers and its slot.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The socket, registered with the loop's poll.
    pub(crate) stream: TcpStream,
    /// Everything but the socket.
    pub(crate) bufs: Buffers,
    /// Its unit of `max_connections`.
    pub(crate) slot: Slot,
    /// Registered with the loop's poll (not yet, while its first turn runs
    /// inside `accept`).
    pub(crate) registered: bool,
    /// The loop turn in which it is due from the ready list (it used up
    /// its last turn with work left), or 0. INVARIANT: the connection is on
    /// the ready list at most once, and driven at most once per turn.
    pub(crate) ready_turn: u64,
}

/// A connection's bytes and timers, without its socket: what the
/// bytes-in -> bytes-out path works on (and what a fuzzer can drive).
#[derive(Debug)]
pub struct Buffers {
    /// Bytes read; the unparsed part starts at `read_start`.
    pub inbuf: Vec<u8>,
    /// Start of the first unparsed byte in `inbuf`.
    pub(crate) read_start: usize,
    /// Answers; the unflushed part starts at `out_pos`.
    pub out: Vec<u8>,
    /// Start of the first unflushed byte in `out`.
    pub out_pos: usize,
    /// When the request now in progress sent its first byte.
    pub(crate) began_at: Option<Instant>,
    /// Last time bytes moved either way.
    pub(crate) active_at: Instant,
    /// Close once `out` is flushed.
    pub closing: bool,
    /// The peer sent EOF: answer what is buffered, then close.
    pub(crate) peer_closed: bool,
    /// At least one request was answered on this connection. At a stop, a
    /// connection that has sent nothing yet gets a grace to send its
    /// request; an idle one that was served is closed at once.
    pub(crate) served: bool,
    /// The peer's address (the per-IP limit's key); unspecified where there
    /// is no socket (fuzzing, benches).
    pub(crate) peer: std::net::IpAddr,
}

impl Buffers {
    /// Empty buffers.
    pub fn new(now: Instant) -> Self {
        Buffers {
            inbuf: Vec::new(),
            read_start: 0,
            out: Vec::new(),
            out_pos: 0,
            began_at: None,
            active_at: now,
            closing: false,
            peer_closed: false,
            served: false,
            peer: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// Unparsed bytes.
    pub fn unparsed(&self) -> &[u8] {
        &self.inbuf[self.read_start..]
    }

    /// Unflushed answer bytes.
    pub(crate) fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Marks `len` parsed bytes as used; the next request, if any, begins now.
    pub(crate) fn consume(&mut self, len: usize, now: Instant) {
        self.served = true;
        self.read_start += len;
        if self.read_start >= self.inbuf.len() {
            self.inbuf.clear();
            self.read_start = 0;
            self.began_at = None;
        } else {
            self.began_at = Some(now);
        }
    }

    /// The unflushed answer bytes, taken (for a hijack).
    pub(crate) fn take_out(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.drain(..self.out_pos);
        self.out_pos = 0;
        out
    }

    /// When this connection must be dealt with, and whether a request is
    /// half-read then (408) rather than idle or stalled (plain close).
    pub(crate) fn deadline(
        &self,
        read_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> (Instant, bool) {
        if let Some(began) = self.began_at.filter(|_| !self.unparsed().is_empty()) {
            (began + read_timeout, true)
        } else if self.pending_out() > 0 {
            (self.active_at + read_timeout, false)
        } else {
            (self.active_at + keepalive_timeout, false)
        }
    }
}

impl Conn {
    /// A fresh connection.
    pub(crate) fn new(stream: TcpStream, peer: std::net::IpAddr, slot: Slot, now: Instant) -> Self {
        let mut bufs = Buffers::new(now);
        bufs.peer = peer;
        Conn {
            stream,
            bufs,
            slot,
            registered: false,
            ready_turn: 0,
        }
    }

    /// Reads one chunk (retrying `Interrupted`).
    pub(crate) fn read_some(&mut self, now: Instant) -> ReadOutcome {
        let b = &mut self.bufs;
        if b.read_start > 0 {
            b.inbuf.drain(..b.read_start);
            b.read_start = 0;
        }
        let len = b.inbuf.len();
        b.inbuf.resize(len + READ_CHUNK, 0);
        loop {
            match self.stream.read(&mut b.inbuf[len..]) {
                Ok(0) => {
                    b.inbuf.truncate(len);
                    return ReadOutcome::Eof;
                }
                Ok(n) => {
                    b.inbuf.truncate(len + n);
                    b.active_at = now;
                    if len == 0 {
                        b.began_at = Some(now);
                    }
                    return ReadOutcome::Data;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    b.inbuf.truncate(len);
                    return if e.kind() == ErrorKind::WouldBlock {
                        ReadOutcome::WouldBlock
                    } else {
                        ReadOutcome::Failed
                    };
                }
            }
        }
    }

    /// Writes what the socket takes. Err means the peer is gone.
    pub(crate) fn flush(&mut self, now: Instant) -> std::io::Result<()> {
        let b = &mut self.bufs;
        while b.out_pos < b.out.len() {
            match self.stream.write(&b.out[b.out_pos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    b.out_pos += n;
                    b.active_at = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        b.out.clear();
        b.out_pos = 0;
        Ok(())
    }
}
