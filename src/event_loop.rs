//! Stage 1 of 8: the event loop: accept, read, answer, time out, hand off.
//!
//! One `EventLoop` per thread, each with its own `Poll`, listener (the
//! public ones share a port through `SO_REUSEPORT`), connections and timers;
//! nothing here is shared between loops but the connection count (`Slots`),
//! so `server.threads` loops run side by side without locks.
//!
//! # Rules this loop keeps (mio's, made explicit)
//!
//! 1. **Edge-triggered: drain until `WouldBlock`, or remember.** A readable
//!    or writable event is reported once per change; the loop reads and
//!    writes until the socket says `WouldBlock`, or it would never hear of
//!    the rest. Two exceptions, each remembered so nothing is lost: while
//!    more than `conn::OUT_HIGH` bytes wait for a client that is not
//!    reading, parsing stops and the writable event that follows a flush
//!    resumes it; and a connection that used up its turn (rule 8) goes on
//!    the ready list and is driven again next turn.
//! 2. **Spurious events are normal.** Every handler tolerates an event with
//!    nothing behind it (a read that `WouldBlock`s at once).
//! 3. **`Interrupted` retries; `WouldBlock` waits; reset, broken pipe and
//!    EOF close quietly.** A client leaving is not an error worth a log line.
//! 4. **Deregister before moving a socket out.** A claimed connection
//!    leaves the slab and goes to `hijack::hand_over`, which deregisters
//!    it before it makes it a plain socket. After `deregister`
//!    the poll reports nothing more for it, so the slot can be reused at
//!    once.
//! 5. **One bad connection never hurts another.** Every error closes only
//!    the connection it came from; nothing a client sends can panic the loop.
//! 6. **Every limit is enforced here or in the parser**: head and body size,
//!    header count, the read deadline (408), the keep-alive timeout, the
//!    unflushed-output bound, and `max_connections` (counted by `Slots`
//!    over every client socket the process holds, hijacked ones too; an
//!    accept beyond it is closed at once, which also empties the backlog:
//!    no busy loop). An accept that fails for lack of descriptors is tried
//!    again on a timer, since the edge-triggered listener would not report
//!    the connections already waiting.
//! 7. **Idle connections hold no buffers.** The loop lends its read and
//!    write buffers to the connection it drives and takes them back after,
//!    unless a half-read request or unsent bytes must stay with it.
//! 8. **No connection holds the loop.** One turn of a connection is at
//!    most `TURN_WORK` reads and answers, and one turn of the listener at
//!    most `ACCEPT_TURN` accepts; what is left waits for the next turn,
//!    after every other ready connection had its own, the timers were swept
//!    and the stop flag was read. A client pipelining without end gets its
//!    fair share, not the loop.
//!
//! # Stopping
//!
//! When the stop flag is seen the loop accepts what waits in the backlog,
//! closes its listener and reads every connection once. From then on it
//! answers every complete request it has read, the last of them with
//! `Connection: close`. An idle connection that was already served is
//! closed at once; one that has sent nothing yet gets `FRESH_GRACE` to send
//! its request; one in the middle of a request gets `STOP_GRACE`.
//!
//! Never: waits on Redis or on any lock held by another thread for long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::clock::Clock;
use crate::codes::Code;
use crate::conn::{Buffers, Conn, ReadOutcome, Slots, OUT_HIGH};
use crate::hijack::{self, Claim, Handed, Task};
use crate::http::parse::{self, Limits, Parsed};
use crate::http::response::DateCache;
use crate::linger::Linger;
use crate::lookup::Lookup;
use crate::metrics::{Metrics, RouteLabel};
use crate::queue::Producer;
use crate::service::{Answer, Now, Service};
use crate::shutdown::Shutdown;

const LISTENER: Token = Token(usize::MAX);
/// Longest sleep in `poll`: the timer sweep and the stop flag are checked
/// at least this often.
const TICK: Duration = Duration::from_millis(50);
/// Reads and answers one connection gets per turn (rule 8). Far above what
/// one request-at-a-time client needs (two reads, one answer), so the
/// common path never notices it.
pub const TURN_WORK: usize = 32;
/// Accepts per turn of the listener (rule 8).
const ACCEPT_TURN: usize = 128;
/// After an accept failed for lack of descriptors, try again this soon.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// After a stop, how long connections still busy with a request may finish.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// After a stop, how long a connection that has sent nothing yet may take
/// to send its request (SPEC §6.3: at least 100 ms).
const FRESH_GRACE: Duration = Duration::from_millis(500);

/// Where a public loop passes what the hand-over built: the fan-in queue to
/// the worker, and the lookup thread's inbox.
#[derive(Clone)]
pub(crate) struct Outlets {
    /// The queue to the worker.
    pub(crate) queue: Arc<dyn Producer>,
    /// The `/shop/result` thread.
    pub(crate) lookup: Lookup,
}

/// Settings a loop runs with (from `[server]`).
#[derive(Debug, Clone)]
pub(crate) struct LoopConfig {
    /// Parser limits.
    pub(crate) limits: Limits,
    /// `read_timeout_ms`.
    pub(crate) read_timeout: Duration,
    /// `keepalive_timeout_ms`.
    pub(crate) keepalive_timeout: Duration,
}

/// One event loop.
pub(crate) struct EventLoop<S: Service> {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    service: S,
    config: LoopConfig,
    // Client sockets held across the process, against max_connections.
    slots: Slots,
    clock: Arc<dyn Clock>,
    date: DateCache,
    // Where claimed connections go once handed over; None on a loop whose
    // service never claims (admin).
    outlets: Option<Outlets>,
    // Finishes the answers of hijacked sockets a slow client did not take.
    linger: Linger,
    shutdown: Shutdown,
    metrics: Metrics,
    // Whether the last accept failed (out of descriptors): logged once per
    // change, so an attack that exhausts descriptors does not flood the log.
    accept_failing: bool,
    // When to try accepting again after such a failure.
    accept_retry_at: Option<Instant>,
    // The listener used up its turn with connections still waiting.
    accept_more: bool,
    // Connections that used up their turn with work left (rule 8), and the
    // list being served this turn (kept to reuse its allocation).
    ready: Vec<usize>,
    serving: Vec<usize>,
    // Counts loop turns, from 1; see `Conn::ready_turn`.
    turn: u64,
    // When this loop saw the stop flag.
    stopping_since: Option<Instant>,
    // The buffers lent to the connection being driven (rule 7).
    spare_in: Vec<u8>,
    spare_out: Vec<u8>,
}

/// The loop's bytes-in -> bytes-out step, without a socket: answers every
/// complete request buffered in `bufs`, in order, into `bufs.out`, each
/// answer (a bad request's too) taking one unit of `budget`, so a caller
/// sees it answered something when the budget went down. Stops at a partial
/// request, at a close (a bad request is answered with its 4xx and
/// `Connection: close`; `bufs.closing` is set), at a hijack, when the
/// budget is spent, or while more than `OUT_HIGH` bytes wait to be flushed.
/// While `now.stopping`, the answer to the last complete request in the
/// buffer closes the connection.
///
/// Returns `Answer::Hijack` with the request consumed, `Answer::Close` once
/// the connection is closing, else `Answer::Open`.
pub fn answer_buffered<S: Service>(
    bufs: &mut Buffers,
    service: &mut S,
    limits: &Limits,
    now: Now<'_>,
    metrics: &Metrics,
    budget: &mut usize,
) -> Answer {
    while *budget > 0
        && !bufs.closing
        && bufs.pending_out() <= OUT_HIGH
        && !bufs.unparsed().is_empty()
    {
        let Buffers {
            inbuf,
            read_start,
            out,
            peer: bufs_peer,
            ..
        } = &mut *bufs;
        let bufs_peer = *bufs_peer;
        let (answer, len) = match parse::parse(&inbuf[*read_start..], limits) {
            Ok(Parsed::Partial) => break,
            Ok(Parsed::Complete { mut request, len }) => {
                *budget -= 1;
                request.peer = bufs_peer;
                // Stopping: every request already read is answered, and
                // the last complete one says `Connection: close`.
                if now.stopping {
                    let next = &inbuf[*read_start + len..];
                    let more = matches!(parse::parse(next, limits), Ok(Parsed::Complete { .. }));
                    request.keep_alive &= more;
                }
                (service.handle(&request, now, out), len)
            }
            Err(e) => {
                *budget -= 1;
                let code = Code::from(e);
                metrics.count(RouteLabel::None, code);
                out.extend_from_slice(now.canned.get(code, false));
                bufs.closing = true;
                return Answer::Close;
            }
        };
        bufs.consume(len, now.at);
        match answer {
            Answer::Open => {}
            Answer::Close => bufs.closing = true,
            Answer::Hijack(claim) => return Answer::Hijack(claim),
        }
    }
    if bufs.closing {
        Answer::Close
    } else {
        Answer::Open
    }
}

/// Empties `buf`, keeps the larger allocation of the two as `spare`, and
/// leaves `buf` with none.
fn give_back(spare: &mut Vec<u8>, buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > spare.capacity() {
        std::mem::swap(buf, spare);
    }
    *buf = Vec::new();
}

impl<S: Service> EventLoop<S> {
    /// A loop serving `listener` with `service`, passing claimed
    /// connections to `outlets`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mut listener: TcpListener,
        service: S,
        outlets: Option<Outlets>,
        linger: Linger,
        config: LoopConfig,
        slots: Slots,
        clock: Arc<dyn Clock>,
        shutdown: Shutdown,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let date = DateCache::new(clock.unix_s());
        Ok(EventLoop {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            service,
            config,
            slots,
            clock,
            date,
            outlets,
            linger,
            shutdown,
            metrics,
            accept_failing: false,
            accept_retry_at: None,
            accept_more: false,
            ready: Vec::new(),
            serving: Vec::new(),
            turn: 0,
            stopping_since: None,
            spare_in: Vec::with_capacity(2 * crate::conn::READ_CHUNK),
            spare_out: Vec::with_capacity(2 * crate::conn::READ_CHUNK),
        })
    }

    /// Serves until the stop flag is set and in-flight requests are done.
    pub(crate) fn run(mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut swept_at = self.clock.now();
        loop {
            self.turn += 1;
            // What the last turn left is due now (`serving`); what this turn
            // leaves goes on `ready`, for the next.
            std::mem::swap(&mut self.ready, &mut self.serving);
            // Work left from the last turn: look at the sockets, don't sleep.
            let timeout = if self.serving.is_empty() && !self.accept_more {
                TICK
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(ACCEPT_TURN),
                    // One due from the ready list is driven there, once.
                    Token(key) if self.due(key) => {}
                    Token(key) => self.drive(key),
                }
            }
            // Rule 8: each connection that used up its last turn gets one
            // more now, after everyone the poll reported.
            let mut serving = std::mem::take(&mut self.serving);
            for key in serving.drain(..) {
                // A slot reused since it was listed is not due: skip it.
                if self.due(key) {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.ready_turn = 0;
                    }
                    self.drive(key);
                }
            }
            self.serving = serving;
            let now = self.clock.now();
            if self.accept_more || self.accept_retry_at.is_some_and(|at| now >= at) {
                self.accept(ACCEPT_TURN);
            }
            if now.saturating_duration_since(swept_at) >= TICK {
                swept_at = now;
                self.sweep(now);
            }
            if self.shutdown.requested() {
                let since = match self.stopping_since {
                    Some(since) => since,
                    None => {
                        self.shutdown.since(now);
                        self.stopping_since = Some(now);
                        self.begin_stop();
                        now
                    }
                };
                self.stop_sweep(now, since);
                if self.conns.is_empty() {
                    return Ok(());
                }
            }
        }
    }

    /// Whether `key` is due from the ready list this turn.
    fn due(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.ready_turn == self.turn)
    }

    /// Accepts up to `limit` connections (rule 8), answering what each
    /// sent with it.
    fn accept(&mut self, limit: usize) {
        self.accept_more = false;
        self.accept_retry_at = None;
        for _ in 0..limit {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut self.accept_failing) {
                        log::info!("accepting connections again");
                    }
                    // At max_connections: accepting and closing empties the
                    // backlog; leaving it there would wake us again at
                    // once, forever.
                    let Some(slot) = self.slots.try_take() else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let key =
                        self.conns
                            .insert(Conn::new(stream, peer.ip(), slot, self.clock.now()));
                    // The request usually arrived with the connection: answer
                    // it now, and register only a connection that stays open.
                    // A connection answered and closed at once never costs an
                    // epoll_ctl. Nothing is missed: an edge-triggered ADD
                    // reports the readiness that is already there.
                    self.drive(key);
                    if let Some(conn) = self.conns.get_mut(key) {
                        let registered = self.poll.registry().register(
                            &mut conn.stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                        match registered {
                            Ok(()) => conn.registered = true,
                            Err(_) => self.close(key),
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // Interrupted, or a client that reset before we took it.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors and the like. The connections
                    // stay in the backlog, and the edge-triggered listener
                    // will not report them again until a new one arrives:
                    // a timer tries again (rule 6).
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        log::warn!(
                            "accept failed: {e}; retrying every {} ms",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    self.accept_retry_at = Some(self.clock.now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
        self.accept_more = true;
    }

    /// Reads, answers and writes until the socket would block, or the turn
    /// is used up; then keeps, closes or hands over the connection.
    fn drive(&mut self, key: usize) {
        let (at, unix_s) = (self.clock.now(), self.clock.unix_s());
        self.lend(key);
        match self.step(key, at, unix_s) {
            // A half-read request and unsent bytes stay with the connection.
            Answer::Open => self.reclaim(key, true, true),
            Answer::Close => {
                self.reclaim(key, false, false);
                self.close(key);
            }
            // Unsent answers travel with it; bytes pipelined behind the
            // request are not read, only noted (read before `reclaim` takes
            // the read buffer back).
            Answer::Hijack(claim) => {
                let pipelined = self
                    .conns
                    .get(key)
                    .is_some_and(|c| !c.bufs.unparsed().is_empty());
                self.reclaim(key, false, true);
                self.hand_over(key, claim, pipelined, at, unix_s);
            }
        }
    }

    /// Rule 7: a connection borrows the loop's buffers while it is driven.
    /// An idle keep-alive connection then holds no buffer at all (its
    /// memory is its small `Conn`), and the buffers' capacity is reused from
    /// one connection to the next, so answering allocates nothing.
    fn lend(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let b = &mut conn.bufs;
            if b.inbuf.capacity() == 0 {
                std::mem::swap(&mut b.inbuf, &mut self.spare_in);
            }
            if b.out.capacity() == 0 {
                std::mem::swap(&mut b.out, &mut self.spare_out);
            }
        }
    }

    /// Takes the buffers back unless the connection must keep their bytes:
    /// a half-read request (`keep_partial`) or unsent answers
    /// (`keep_pending`). A connection that keeps one keeps that buffer (the
    /// loop grows a new one when it next needs it); afterwards the larger of
    /// the two returns to the loop and the other is freed, so an idle
    /// connection always ends with none.
    fn reclaim(&mut self, key: usize, keep_partial: bool, keep_pending: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let b = &mut conn.bufs;
        if !keep_partial || b.unparsed().is_empty() {
            b.read_start = 0;
            give_back(&mut self.spare_in, &mut b.inbuf);
        }
        if !keep_pending || b.pending_out() == 0 {
            b.out_pos = 0;
            give_back(&mut self.spare_out, &mut b.out);
        }
    }

    fn step(&mut self, key: usize, at: Instant, unix_s: u64) -> Answer {
        let limits = self.config.limits;
        let stopping = self.stopping_since.is_some();
        let (date, canned) = self.date.stamp(unix_s);
        let Some(conn) = self.conns.get_mut(key) else {
            return Answer::Open;
        };
        let mut budget = TURN_WORK;
        loop {
            if conn.flush(at).is_err() {
                return Answer::Close;
            }
            let b = &conn.bufs;
            if b.closing || b.peer_closed {
                // Nothing more will be parsed: close once everything is out.
                return if b.pending_out() == 0 {
                    Answer::Close
                } else {
                    Answer::Open
                };
            }
            if b.pending_out() > OUT_HIGH {
                return Answer::Open; // rule 1: resume on the writable event
            }
            if budget == 0 {
                // Rule 8: due again next turn, and listed once.
                let due = self.turn + 1;
                if conn.ready_turn != due {
                    conn.ready_turn = due;
                    self.ready.push(key);
                }
                return Answer::Open;
            }
            let now = Now {
                at,
                unix_s,
                date,
                canned,
                stopping,
            };
            let before = budget;
            let answer = answer_buffered(
                &mut conn.bufs,
                &mut self.service,
                &limits,
                now,
                &self.metrics,
                &mut budget,
            );
            match answer {
                Answer::Hijack(claim) => return Answer::Hijack(claim),
                // Answered something: flush it before reading more.
                Answer::Open | Answer::Close if budget < before => continue,
                Answer::Open | Answer::Close => {}
            }
            budget = budget.saturating_sub(1);
            match conn.read_some(at) {
                ReadOutcome::Data => {}
                ReadOutcome::WouldBlock => return Answer::Open,
                ReadOutcome::Eof => conn.bufs.peer_closed = true,
                ReadOutcome::Failed => return Answer::Close,
            }
        }
    }

    /// Takes the connection out of the loop and gives it to the hand-over
    /// (`hijack::hand_over`), then passes on what that built: a sale to the
    /// queue, a result question to the lookup thread; a full one is
    /// answered 1004 at once, the lease given back first.
    fn hand_over(&mut self, key: usize, claim: Claim, pipelined: bool, at: Instant, unix_s: u64) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        let registry = self.poll.registry();
        let handed = hijack::hand_over(registry, conn, claim, pipelined, &self.linger, at, unix_s);
        let Some(outlets) = &self.outlets else {
            // Only a service that never claims (admin) runs without
            // outlets. Were one to claim, dropping what was handed over
            // gives its lease back and answers 1002: still one answer.
            log::error!("a connection was claimed on a loop with nowhere to pass it");
            return;
        };
        let date = self.date.get(unix_s);
        match handed {
            Handed::Sale(task) => {
                if let Err(task) = outlets.queue.try_push(task) {
                    // Another loop filled the queue since the service
                    // looked: still 1004 at once, the unit given back
                    // before the answer.
                    let Task { conn, lease, .. } = task;
                    drop(lease);
                    self.metrics.count(RouteLabel::CartAdd, Code::Busy);
                    conn.answer(Code::Busy, None, date);
                }
            }
            Handed::Result(question) => outlets.lookup.ask(question, date),
        }
    }

    fn close(&mut self, key: usize) {
        // No `deregister`: closing the socket's only descriptor removes it
        // from epoll, and the syscall is a measurable share of the close
        // path. (A hijack still deregisters: that socket lives on.) The
        // connection's slot goes back as it drops.
        drop(self.conns.try_remove(key));
    }

    /// Closes what is past its deadline: a half-read request gets 408 first.
    fn sweep(&mut self, now: Instant) {
        let (read_timeout, keepalive) = (self.config.read_timeout, self.config.keepalive_timeout);
        let unix_s = self.clock.unix_s();
        let canned = self.date.stamp(unix_s).1;
        let mut expired = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let (deadline, half_read) = conn.bufs.deadline(read_timeout, keepalive);
            if now < deadline {
                continue;
            }
            if half_read && !conn.bufs.closing {
                self.metrics.count(RouteLabel::None, Code::ReadTimeout);
                conn.bufs
                    .out
                    .extend_from_slice(canned.get(Code::ReadTimeout, false));
                let _ = conn.flush(now);
            }
            expired.push(key);
        }
        for key in expired {
            self.close(key);
        }
    }

    /// Stops accepting. A request that already reached this host is not
    /// dropped: the backlog is accepted and every connection read once
    /// first, so bytes waiting in the kernel are answered (or hijacked)
    /// before anything is judged idle (`stop_sweep`).
    fn begin_stop(&mut self) {
        self.accept(usize::MAX);
        if let Some(mut listener) = self.listener.take() {
            // The listener closes as it drops here; deregistering first
            // only keeps the poll from reporting it once more.
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_more = false;
        self.accept_retry_at = None;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drive(key);
        }
    }

    /// While stopping, each turn: closes idle connections that were served
    /// (keep-alive between requests), fresh ones that sent nothing within
    /// `FRESH_GRACE`, and everything left after `STOP_GRACE`. Answers
    /// during the stop say `Connection: close`, so served connections leave
    /// on their own.
    fn stop_sweep(&mut self, now: Instant, since: Instant) {
        let all = now.saturating_duration_since(since) >= STOP_GRACE;
        let fresh_too = now.saturating_duration_since(since) >= FRESH_GRACE;
        let done: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let idle = c.bufs.unparsed().is_empty() && c.bufs.pending_out() == 0;
                all || (idle && (c.bufs.served || fresh_too))
            })
            .map(|(k, _)| k)
            .collect();
        for key in done {
            self.close(key);
        }
    }
}
