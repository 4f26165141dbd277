//! Stage 5 of 8: the connection leaves the event loop.
//!
//! # The hand-over contract
//!
//! A socket has exactly one owner at a time. While it is registered with an
//! event loop's `Poll`, the loop owns it. To hijack, the loop:
//!
//! 1. deregisters the socket from its `Poll` (mio's `Registry::deregister`:
//!    after it returns, that poll delivers no more events for the socket);
//! 2. turns it into a plain `std::net::TcpStream` (still non-blocking) and
//!    moves it, with whatever response bytes the loop had not yet flushed
//!    (earlier pipelined answers, which must reach the client first), into a
//!    `Hijacked`;
//! 3. forgets the connection: its slot, buffers and deadline are gone. Any
//!    bytes the client pipelined after the hijacked request are dropped; the
//!    answer says `Connection: close`.
//!
//! From then on the `Hijacked` owns the socket: nobody `try_clone`s it or
//! shares it in an `Arc`. It is answered exactly once, with
//! `Connection: close`, and then closed. If it is dropped unanswered (a
//! worker bug, a shutdown path nobody thought of) its `Drop` answers 1002:
//! a client is never left without a response.
//!
//! Writing never blocks the writer: the answer is written non-blocking; if
//! the client's socket buffer is full (it stopped reading), the rest goes to
//! the `Drain` thread, which finishes it with a deadline or gives up.
//!
//! In: a deregistered socket, its unflushed bytes, the claim (attempt and
//! lease). Out: a `Task` for the queue.
//! Never: touches a `Poll`, or answers twice.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Sender, TrySendError};

use crate::attempt::Attempt;
use crate::codes::Code;
use crate::http::response::{self, Extra};
use crate::stock::Lease;

/// How long the drain thread waits on one client that does not read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections waiting for the drain thread at most; past that, they close.
const DRAIN_BACKLOG: usize = 1024;

/// A connection taken off the event loop, owed exactly one answer.
#[derive(Debug)]
pub struct Hijacked {
    // INVARIANT: Some until answered; `Drop` answers 1002 when still Some.
    stream: Option<TcpStream>,
    out: Vec<u8>,
    drain: Drain,
}

impl Hijacked {
    /// Takes a deregistered socket and the bytes the loop still owed it.
    pub fn new(stream: TcpStream, out: Vec<u8>, drain: Drain) -> Self {
        Hijacked {
            stream: Some(stream),
            out,
            drain,
        }
    }

    /// Answers with `Connection: close`, then closes.
    pub fn answer(mut self, code: Code, data: Option<&str>) {
        self.respond(code, data, Extra::None);
    }

    /// Answers 1004 with `Retry-After: 1`, then closes.
    pub fn answer_busy(mut self) {
        self.respond(Code::Busy, None, Extra::RetryAfter);
    }

    fn respond(&mut self, code: Code, data: Option<&str>, extra: Extra) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut out = std::mem::take(&mut self.out);
        response::write_json(&mut out, code, data, false, &date, extra);
        match write_nonblocking(&stream, &out) {
            Ok(n) if n == out.len() => close(stream),
            Ok(n) => self.drain.finish(stream, out, n),
            // The client is gone (reset, broken pipe): nothing to answer.
            Err(_) => {}
        }
    }
}

impl Drop for Hijacked {
    fn drop(&mut self) {
        if self.stream.is_some() {
            self.respond(Code::RedisError, None, Extra::None);
        }
    }
}

/// Writes what the socket takes now; stops at `WouldBlock`.
fn write_nonblocking(mut stream: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match stream.write(&buf[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Closes the socket: the kernel sends the FIN after the queued answer.
/// (A `shutdown(Write)` first would cost a syscall and change nothing: it
/// neither flushes more nor prevents the reset a close with unread input
/// sends.)
fn close(stream: TcpStream) {
    drop(stream);
}

/// A sale on its way to the worker: the connection, what it asks, when it
/// arrived, and the unit of memory stock it holds.
#[derive(Debug)]
pub struct Task {
    /// The connection, owed one answer.
    pub conn: Hijacked,
    /// What it asks for.
    pub attempt: Attempt,
    /// When the request was complete on the loop; the queue deadline counts
    /// from here.
    pub arrived_at: Instant,
    /// The memory unit it holds; given back unless committed.
    pub lease: Lease,
}

/// The thread that finishes answers a client would not take at once.
#[derive(Debug, Clone)]
pub struct Drain {
    tx: Sender<(TcpStream, Vec<u8>, usize)>,
}

impl Drain {
    /// Starts the drain thread.
    pub fn start() -> std::io::Result<Drain> {
        let (tx, rx) = bounded::<(TcpStream, Vec<u8>, usize)>(DRAIN_BACKLOG);
        std::thread::Builder::new()
            .name("seckill-drain".into())
            .spawn(move || {
                for (stream, out, done) in rx {
                    finish_blocking(stream, &out[done..]);
                }
            })?;
        Ok(Drain { tx })
    }

    /// Hands over a socket whose answer is written up to `done`.
    fn finish(&self, stream: TcpStream, out: Vec<u8>, done: usize) {
        match self.tx.try_send((stream, out, done)) {
            Ok(()) => {}
            // Too many clients that do not read: close this one unanswered
            // rather than let them hold memory or the worker.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn finish_blocking(stream: TcpStream, rest: &[u8]) {
    let ok = stream.set_nonblocking(false).is_ok()
        && stream.set_write_timeout(Some(DRAIN_TIMEOUT)).is_ok();
    if ok && (&stream).write_all(rest).is_ok() {
        close(stream);
    }
}
