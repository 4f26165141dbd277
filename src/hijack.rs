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
//!    moves it, with its `Slot` (it still counts against
//!    `max_connections`) and whatever response bytes the loop had not yet
//!    flushed (earlier pipelined answers, which must reach the client
//!    first), into a `Hijacked`;
//! 3. forgets the connection: its slot in the loop, buffers and deadline
//!    are gone. Bytes the client pipelined after the hijacked request are
//!    not read (SPEC §2: the client resends them on a new connection); the
//!    answer says `Connection: close`.
//!
//! From then on the `Hijacked` owns the socket: nobody `try_clone`s it or
//! shares it in an `Arc`. It is answered exactly once, with
//! `Connection: close`, and then closed. If it is dropped unanswered (a
//! worker bug, a shutdown path nobody thought of) its `Drop` answers 1002:
//! a client is never left without a response.
//!
//! Writing never blocks the writer: the answer is written non-blocking. The
//! socket is then closed at once, unless the client has not taken the whole
//! answer yet or has sent bytes nobody read: closing then would send a TCP
//! reset that can destroy the answer, so the socket goes to the `Linger`
//! thread, which writes the rest and closes gently (see `linger`).
//!
//! In: a deregistered socket, its slot, its unflushed bytes, the claim
//! (attempt and lease). Out: a `Task` for the queue.
//! Never: touches a `Poll`, or answers twice.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Instant, SystemTime};

use crate::attempt::Attempt;
use crate::codes::Code;
use crate::conn::Slot;
use crate::http::response::{self, Extra};
use crate::linger::Linger;
use crate::stock::Lease;

/// A connection taken off the event loop, owed exactly one answer.
#[derive(Debug)]
pub struct Hijacked {
    // INVARIANT: Some until answered; `Drop` answers 1002 when still Some.
    socket: Option<(TcpStream, Slot)>,
    out: Vec<u8>,
    // The loop had read bytes past the hijacked request: the client
    // pipelined, and may still be sending.
    pipelined: bool,
    linger: Linger,
}

impl Hijacked {
    /// Takes a deregistered socket, its slot, the bytes the loop still owed
    /// it, and whether the client had sent more than the hijacked request.
    pub fn new(
        stream: TcpStream,
        slot: Slot,
        out: Vec<u8>,
        pipelined: bool,
        linger: Linger,
    ) -> Self {
        Hijacked {
            socket: Some((stream, slot)),
            out,
            pipelined,
            linger,
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
        let Some((stream, slot)) = self.socket.take() else {
            return;
        };
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut out = std::mem::take(&mut self.out);
        response::write_json(&mut out, code, data, false, &date, extra);
        match write_nonblocking(&stream, &out) {
            Ok(n) if n == out.len() && !self.pipelined && !unread_input(&stream) => {
                // Answered, and closing sends no reset: the common case.
                drop((stream, slot));
            }
            Ok(n) => self.linger.hand(stream, slot, out, n),
            // The client is gone (reset, broken pipe): nothing to answer.
            Err(_) => {}
        }
    }
}

impl Drop for Hijacked {
    fn drop(&mut self) {
        if self.socket.is_some() {
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

/// Whether the client sent bytes nobody read (closing now would reset).
/// A peek, so nothing is consumed; EOF and errors say no.
fn unread_input(stream: &TcpStream) -> bool {
    matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0)
}

/// A sale on its way to the worker: the connection, what it asks, when it
/// arrived, and the unit of memory stock it holds.
///
/// Field order matters: fields drop in declaration order, so a task
/// dropped unanswered (a path nobody thought of) gives its unit back
/// before its connection answers 1002, as every answer does.
#[derive(Debug)]
pub struct Task {
    /// The memory unit it holds; given back unless committed.
    pub lease: Lease,
    /// The connection, owed one answer.
    pub conn: Hijacked,
    /// What it asks for.
    pub attempt: Attempt,
    /// When the request was complete on the loop; the queue deadline counts
    /// from here.
    pub arrived_at: Instant,
}
