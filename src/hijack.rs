//! Stage 5 of 8: the hand-over: a connection leaves the event loop.
//!
//! A request that may win (a sale attempt holding its `Lease`) or that
//! needs Redis to be answered (`/shop/result`) is not answered on the loop:
//! the service returns `Answer::Hijack(claim)`, and the loop calls
//! `hand_over` with the connection. That one function is the seam this
//! project teaches.
//!
//! # The hand-over contract
//!
//! A socket has exactly one owner at a time. While it is registered with an
//! event loop's `Poll`, the loop owns it. The loop takes the connection out
//! of its slab (its buffers and deadline go with it) and `hand_over`:
//!
//! 1. deregisters the socket from its `Poll` (mio's `Registry::deregister`:
//!    after it returns, that poll delivers no more events for the socket);
//! 2. turns it into a plain `std::net::TcpStream` (still non-blocking) and
//!    moves it, with its `Slot` (it still counts against
//!    `max_connections`) and whatever response bytes the loop had not yet
//!    flushed (earlier pipelined answers, which must reach the client
//!    first), into a `Hijacked`;
//! 3. builds what the claim asks for: a `Task` (attempt, lease, arrival
//!    instant) for the worker, or a `Question` for the lookup thread. The
//!    loop pushes it on the bounded fan-in queue (or the lookup inbox); a
//!    full one is answered 1004 at once, the lease given back first.
//!
//! Bytes the client pipelined after the hijacked request are not read
//! (SPEC §2: the client resends them on a new connection); the answer says
//! `Connection: close`.
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
//! In: a connection and its claim. Out: a `Task` for the queue, or a
//! `Question` for the lookup thread, each owning the socket.
//! Never: touches a queue or a thread's inbox, or answers twice.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::Instant;

use mio::Registry;

use crate::attempt::Attempt;
use crate::codes::Code;
use crate::conn::{Conn, Slot};
use crate::http::response::{self, Extra};
use crate::linger::Linger;
use crate::stock::Lease;

/// What a hijacking request claims its connection for.
#[derive(Debug)]
pub enum Claim {
    /// A sale attempt, for the queue.
    Sale {
        /// The checked attempt.
        attempt: Attempt,
        /// Its unit of memory stock.
        lease: Lease,
    },
    /// A `/shop/result` question, for the lookup thread.
    Result {
        /// Event id (checked).
        event_id: String,
        /// Goods id (checked).
        goods_id: String,
        /// Uid from the token.
        uid: String,
    },
}

/// What the hand-over built: what the loop passes on.
#[derive(Debug)]
pub(crate) enum Handed {
    /// For the queue to the worker.
    Sale(Task),
    /// For the lookup thread.
    Result(Question),
}

/// The hand-over (see the contract above): takes `conn` off the poll behind
/// `registry`, makes it a plain socket owed one answer, and builds what its
/// claim asks for. `pipelined` says the loop had read bytes past the
/// claimed request; `at` and `unix_s` are the loop's now for the turn that
/// read it (the queue deadline counts from `at`).
pub(crate) fn hand_over(
    registry: &Registry,
    conn: Conn,
    claim: Claim,
    pipelined: bool,
    linger: &Linger,
    at: Instant,
    unix_s: u64,
) -> Handed {
    let Conn {
        mut stream,
        mut bufs,
        slot,
        registered,
        ..
    } = conn;
    // Deregister first; then the socket is ours to move. A connection
    // claimed on its first turn, inside `accept`, was never registered.
    if registered {
        if let Err(e) = registry.deregister(&mut stream) {
            // Cannot happen for a registered socket; were it to, the poll
            // could report a stale token for a slot reused later, which the
            // loop tolerates (a spurious event), so going on is safe.
            log::debug!("deregister before hijack failed: {e}");
        }
    }
    let conn = Hijacked::new(
        TcpStream::from(stream),
        slot,
        bufs.take_out(),
        pipelined,
        linger.clone(),
        unix_s,
    );
    match claim {
        Claim::Sale { attempt, lease } => Handed::Sale(Task {
            lease,
            conn,
            attempt,
            arrived_at: at,
        }),
        Claim::Result {
            event_id,
            goods_id,
            uid,
        } => Handed::Result(Question {
            conn,
            event_id,
            goods_id,
            uid,
            arrived_at: at,
        }),
    }
}

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
    // When it left the loop: the `Date` of an answer given by `Drop`.
    handed_unix_s: u64,
}

impl Hijacked {
    /// Takes a deregistered socket, its slot, the bytes the loop still owed
    /// it, whether the client had sent more than the hijacked request, and
    /// the unix second of the hand-over.
    pub fn new(
        stream: TcpStream,
        slot: Slot,
        out: Vec<u8>,
        pipelined: bool,
        linger: Linger,
        handed_unix_s: u64,
    ) -> Self {
        Hijacked {
            socket: Some((stream, slot)),
            out,
            pipelined,
            linger,
            handed_unix_s,
        }
    }

    /// Answers with `Connection: close`, then closes. `date` is the `Date`
    /// header, from the answering thread's `DateCache`.
    pub(crate) fn answer(mut self, code: Code, data: Option<&str>, date: &str) {
        self.respond(code, data, date);
    }

    fn respond(&mut self, code: Code, data: Option<&str>, date: &str) {
        let Some((stream, slot)) = self.socket.take() else {
            return;
        };
        let mut out = std::mem::take(&mut self.out);
        response::write_json(&mut out, code, data, false, date, Extra::None);
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
            let date = response::date_text(self.handed_unix_s);
            self.respond(Code::RedisError, None, &date);
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

/// A `/shop/result` question on its way to the lookup thread.
#[derive(Debug)]
pub struct Question {
    /// The connection, owed the answer.
    pub(crate) conn: Hijacked,
    /// Event id (checked).
    pub(crate) event_id: String,
    /// Goods id (checked).
    pub(crate) goods_id: String,
    /// The asking uid (from the token).
    pub(crate) uid: String,
    /// When the request was complete on the loop.
    pub(crate) arrived_at: Instant,
}
