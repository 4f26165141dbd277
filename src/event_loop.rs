//! Stage 1 of 8: the event loop: accept, read, answer, time out, hand off.
//!
//! One `EventLoop` per thread, each with its own `Poll`, listener (the
//! public ones share a port through `SO_REUSEPORT`), connections and timers;
//! nothing here is shared between loops but the open-connection count, so
//! `server.threads` loops run side by side without locks.
//!
//! # Rules this loop keeps (mio's, made explicit)
//!
//! 1. **Edge-triggered: drain until `WouldBlock`.** A readable or writable
//!    event is reported once per change; the loop reads and writes until the
//!    socket says `WouldBlock`, or it would never hear of the rest. The one
//!    exception is backpressure: while more than `conn::OUT_HIGH` bytes wait
//!    for a client that is not reading, parsing stops; the writable event
//!    that follows a flush resumes it.
//! 2. **Spurious events are normal.** Every handler tolerates an event with
//!    nothing behind it (a read that `WouldBlock`s at once).
//! 3. **`Interrupted` retries; `WouldBlock` waits; reset, broken pipe and
//!    EOF close quietly.** A client leaving is not an error worth a log line.
//! 4. **Deregister before moving a socket out** (the hijack; see `hijack`).
//!    After `deregister` the poll reports nothing more for it, so the slot
//!    can be reused at once.
//! 5. **One bad connection never hurts another.** Every error closes only
//!    the connection it came from; nothing a client sends can panic the loop.
//! 6. **Every limit is enforced here or in the parser**: head and body size,
//!    header count, the read deadline (408), the keep-alive timeout, the
//!    unflushed-output bound, and `max_connections` (an accept beyond it is
//!    closed at once, which also empties the backlog: no busy loop).
//! 7. **Idle connections hold no buffers.** The loop lends its read and
//!    write buffers to the connection it drives and takes them back after,
//!    unless a half-read request or unsent bytes must stay with it.
//!
//! Never: waits on Redis or on any lock held by another thread for long.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::clock::Clock;
use crate::codes::Code;
use crate::conn::{Buffers, Conn, ReadOutcome, OUT_HIGH};
use crate::hijack::{Drain, Hijacked};
use crate::http::parse::{self, HttpError, Limits, Parsed};
use crate::http::response::DateCache;
use crate::metrics::{Metrics, RouteLabel};
use crate::service::{Handled, Now, Service};

const LISTENER: Token = Token(usize::MAX);
/// Longest sleep in `poll`: the timer sweep and the stop flag are checked
/// at least this often.
const TICK: Duration = Duration::from_millis(50);
/// After a stop, how long connections still busy with a request may finish.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Settings a loop runs with (from `[server]`).
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Parser limits.
    pub limits: Limits,
    /// `read_timeout_ms`.
    pub read_timeout: Duration,
    /// `keepalive_timeout_ms`.
    pub keepalive_timeout: Duration,
    /// `max_connections`, counted across every loop sharing `open`.
    pub max_connections: usize,
}

/// One event loop.
pub struct EventLoop<S: Service> {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    service: S,
    config: LoopConfig,
    // Open connections across all loops sharing it.
    open: Arc<AtomicUsize>,
    clock: Arc<dyn Clock>,
    date: DateCache,
    drain: Drain,
    stop: Arc<AtomicBool>,
    metrics: Metrics,
    // Whether the last accept failed (out of descriptors): logged once per
    // change, so an attack that exhausts descriptors does not flood the log.
    accept_failing: bool,
    // The buffers lent to the connection being driven (rule 7).
    spare_in: Vec<u8>,
    spare_out: Vec<u8>,
}

/// What `answer_buffered` did.
#[derive(Debug)]
pub enum Progress<C> {
    /// Nothing complete to answer: read more.
    Idle,
    /// Answered at least one request (or refused bad bytes): flush, go on.
    Answered,
    /// The service claimed the connection.
    Hijack(C),
}

/// The loop's bytes-in -> bytes-out step, without a socket: answers every
/// complete request buffered in `bufs`, in order, into `bufs.out`. Stops at
/// a partial request, at a close (a bad request is answered with its 4xx and
/// `Connection: close`), at a hijack, or while more than `OUT_HIGH` bytes
/// wait to be flushed.
pub fn answer_buffered<S: Service>(
    bufs: &mut Buffers,
    service: &mut S,
    limits: &Limits,
    now: Now<'_>,
    metrics: &Metrics,
) -> Progress<S::Claim> {
    let mut progress = Progress::Idle;
    while !bufs.closing && bufs.pending_out() <= OUT_HIGH && !bufs.unparsed().is_empty() {
        let Buffers {
            inbuf,
            read_start,
            out,
            ..
        } = &mut *bufs;
        let parsed = parse::parse(&inbuf[*read_start..], limits);
        let (handled, len) = match parsed {
            Ok(Parsed::Partial) => break,
            Ok(Parsed::Complete { request, len }) => (service.handle(&request, now, out), len),
            Err(e) => {
                let code = match e {
                    HttpError::Malformed => Code::BadRequest,
                    HttpError::HeadTooLarge => Code::HeaderTooLarge,
                    HttpError::BodyTooLarge => Code::PayloadTooLarge,
                };
                metrics.count(RouteLabel::None, code);
                out.extend_from_slice(now.canned.get(code, false));
                bufs.closing = true;
                return Progress::Answered;
            }
        };
        progress = Progress::Answered;
        match handled {
            Handled::KeepOpen => bufs.consume(len, now.at),
            Handled::Close => {
                bufs.consume(len, now.at);
                bufs.closing = true;
            }
            Handled::Hijack(claim) => return Progress::Hijack(claim),
        }
    }
    progress
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

/// What to do with a connection after driving it.
enum Next<C> {
    Keep,
    Close,
    Hijack(C),
}

impl<S: Service> EventLoop<S> {
    /// A loop serving `listener` with `service`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut listener: TcpListener,
        service: S,
        config: LoopConfig,
        open: Arc<AtomicUsize>,
        clock: Arc<dyn Clock>,
        drain: Drain,
        stop: Arc<AtomicBool>,
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
            open,
            clock,
            date,
            drain,
            stop,
            metrics,
            accept_failing: false,
            spare_in: Vec::with_capacity(2 * crate::conn::READ_CHUNK),
            spare_out: Vec::with_capacity(2 * crate::conn::READ_CHUNK),
        })
    }

    /// Serves until the stop flag is set and in-flight requests are done.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut swept_at = self.clock.now();
        let mut stopping_since: Option<Instant> = None;
        loop {
            match self.poll.poll(&mut events, Some(TICK)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(key) => self.drive(key),
                }
            }
            let now = self.clock.now();
            if now.saturating_duration_since(swept_at) >= TICK {
                swept_at = now;
                self.sweep(now);
            }
            if self.stop.load(Ordering::Acquire) {
                let since = *stopping_since.get_or_insert_with(|| {
                    self.begin_stop();
                    now
                });
                if self.conns.is_empty() || now.saturating_duration_since(since) >= STOP_GRACE {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.close(key);
                    }
                    return Ok(());
                }
            }
        }
    }

    fn now(&mut self) -> (Instant, u64) {
        (self.clock.now(), self.clock.unix_s())
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if std::mem::take(&mut self.accept_failing) {
                        log::info!("accepting connections again");
                    }
                    let open = self.open.fetch_add(1, Ordering::AcqRel);
                    if open >= self.config.max_connections {
                        // Accepting and closing empties the backlog; leaving
                        // it there would wake us again at once, forever.
                        self.open.fetch_sub(1, Ordering::AcqRel);
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let key = self.conns.insert(Conn::new(stream, self.clock.now()));
                    self.metrics.connections(1);
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
                        if registered.is_err() {
                            self.close(key);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and the like: the next accept
                    // event retries. Returning (not retrying now) keeps the
                    // loop from spinning while nothing can be accepted.
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        log::warn!("accept failed: {e}; retrying on the next connection");
                    }
                    return;
                }
            }
        }
    }

    /// Reads, answers and writes until the socket would block.
    fn drive(&mut self, key: usize) {
        self.lend(key);
        let next = self.step(key);
        // Keep: a half-read request and unsent bytes stay with the
        // connection. Hijack: unsent bytes travel with the task. Close: none.
        match next {
            Next::Keep => self.reclaim(key, true, true),
            Next::Hijack(_) => self.reclaim(key, false, true),
            Next::Close => self.reclaim(key, false, false),
        }
        match next {
            Next::Keep => {}
            Next::Close => self.close(key),
            Next::Hijack(claim) => self.hijack(key, claim),
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

    fn step(&mut self, key: usize) -> Next<S::Claim> {
        let (now, unix_s) = self.now();
        let limits = self.config.limits;
        let (date, canned) = self.date.stamp(unix_s);
        let Some(conn) = self.conns.get_mut(key) else {
            return Next::Keep;
        };
        loop {
            if conn.flush(now).is_err() {
                return Next::Close;
            }
            let b = &conn.bufs;
            if b.closing || b.peer_closed {
                // Nothing more will be parsed: close once everything is out.
                return if b.pending_out() == 0 {
                    Next::Close
                } else {
                    Next::Keep
                };
            }
            if b.pending_out() > OUT_HIGH {
                return Next::Keep; // rule 1: resume on the writable event
            }
            let at = Now {
                at: now,
                unix_s,
                date,
                canned,
            };
            match answer_buffered(
                &mut conn.bufs,
                &mut self.service,
                &limits,
                at,
                &self.metrics,
            ) {
                Progress::Hijack(claim) => return Next::Hijack(claim),
                Progress::Answered => continue, // flush before reading more
                Progress::Idle => {}
            }
            match conn.read_some(now) {
                ReadOutcome::Data => {}
                ReadOutcome::WouldBlock => return Next::Keep,
                ReadOutcome::Eof => conn.bufs.peer_closed = true,
                ReadOutcome::Failed => return Next::Close,
            }
        }
    }

    fn hijack(&mut self, key: usize, claim: S::Claim) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        // Rule 4: deregister first; then the socket is ours to move.
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections(-1);
        let out = conn.bufs.take_out();
        let stream = std::net::TcpStream::from(conn.stream);
        self.service
            .hijack(Hijacked::new(stream, out, self.drain.clone()), claim);
    }

    fn close(&mut self, key: usize) {
        // No `deregister`: closing the socket's only descriptor removes it
        // from epoll, and the syscall is a measurable share of the close
        // path. (A hijack still deregisters: that socket lives on.)
        if self.conns.try_remove(key).is_some() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.connections(-1);
        }
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

    /// Stops accepting and closes every idle connection; the rest may finish
    /// within `STOP_GRACE`. A request that already reached this host is not
    /// dropped: the backlog is accepted and every connection read once
    /// first, so bytes waiting in the kernel are answered (or hijacked)
    /// before "idle" is judged.
    fn begin_stop(&mut self) {
        self.accept();
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drive(key);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.bufs.unparsed().is_empty() && c.bufs.pending_out() == 0)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close(key);
        }
    }
}
