//! `seckill serve`: builds every stage from the config and runs them.
//!
//! Threads: `server.threads` public event loops (0 = one per core), each
//! with its own listener on the same port (`SO_REUSEPORT` when more than
//! one); one admin event loop; one worker; the catalog and its pub/sub
//! listener; the lookup thread (`/shop/result`); the linger thread.
//!
//! Shutdown (SIGTERM or SIGINT, or `Running::stop`; see `shutdown`): the
//! loops stop accepting, answer what they already read, give fresh
//! connections a short grace and busy ones a longer one, then end. With the
//! last loop gone, so are the last queue producer and the last lookup
//! sender: the worker answers every task still queued (a sale, or 1003 past
//! its deadline) and the lookup thread every question, then both return;
//! then the linger thread closes what it still holds. `wait` joins them all
//! in that order, so the process exits 0 only when every request it read
//! has its answer.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::Admin;
use crate::auth::Signer;
use crate::blacklist::Blacklist;
use crate::bucket::Bucket;
use crate::catalog::refresh::Refresher;
use crate::catalog::snapshot::Catalog;
use crate::clock::Clock;
use crate::config::{Config, SHOP_QUEUE};
use crate::conn::Slots;
use crate::event_loop::{EventLoop, LoopConfig, Outlets};
use crate::http::parse::Limits;
use crate::limits::Limiter;
use crate::linger::Linger;
use crate::lookup::Lookup;
use crate::metrics::Metrics;
use crate::orders::sink::{host_name, Sink, SinkSetup};
use crate::public::Public;
use crate::queue;
use crate::shutdown::Shutdown;
use crate::stock::Stock;
use crate::store::breaker::Breaker;
use crate::store::deduct::Deducter;
use crate::worker::Worker;

/// How long a stop waits for the sink's batch in hand.
const SINK_STOP: Duration = Duration::from_millis(500);

/// Listen backlog: a burst of new connections must not overflow it (the
/// default 128 costs clients 1 s SYN retries under a flash sale).
const BACKLOG: i32 = 4096;

/// A started server.
pub(crate) struct Running {
    /// Where the public listener is bound.
    pub(crate) public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub(crate) admin_addr: SocketAddr,
    shutdown: Shutdown,
    loops: Vec<JoinHandle<std::io::Result<()>>>,
    // Joined after the loops, in this order (see the module doc).
    answerers: Vec<(&'static str, JoinHandle<()>)>,
}

fn listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Connections the admin listener holds at most: it serves operators and
/// their scripts, and must never eat into the public listener's share of
/// descriptors.
const ADMIN_CONNECTIONS: usize = 32;

/// Descriptors the process needs besides client sockets: a listener and a
/// poll per loop, the admin connections, Redis connections (worker and its
/// resolver, lookup, catalog, pub/sub, admin), the linger thread's poll,
/// standard streams and the blacklist file, with room to spare.
fn fd_reserve(threads: usize) -> u64 {
    64 + ADMIN_CONNECTIONS as u64 + 2 * threads as u64
}

/// Raises the soft open-file limit as far as `max_connections` needs (never
/// past the hard limit), and returns the `max_connections` that fits:
/// many systems start processes at 1024 descriptors, and a server that
/// accepted past its limit would fail its own accepts and Redis connects.
fn fit_max_connections(max_connections: usize, threads: usize) -> usize {
    let reserve = fd_reserve(threads);
    let want = (max_connections as u64).saturating_add(reserve);
    let soft = match rlimit::increase_nofile_limit(want) {
        Ok(got) => got,
        Err(e) => {
            log::warn!("could not raise the open-file limit: {e}");
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _)) => soft,
                Err(_) => return max_connections,
            }
        }
    };
    if soft >= want {
        return max_connections;
    }
    let fits = usize::try_from(soft.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1);
    log::warn!(
        "server.max_connections = {max_connections} does not fit the open-file limit of {soft} \
         ({reserve} kept for listeners, Redis and admin): using max_connections = {fits}; \
         raise the hard limit (e.g. LimitNOFILE) to allow more"
    );
    fits
}

/// Starts every thread; returns once the listeners are bound.
pub(crate) fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, String> {
    if config.auth.secret.is_empty() {
        return Err("auth.secret is empty: set a secret in the config file; the server refuses to start without one".into());
    }
    let threads = match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let max_connections = fit_max_connections(config.server.max_connections, threads);
    let metrics = Metrics::default();
    let shutdown = Shutdown::new();
    let redis_timeout = config.redis.timeout();
    let request_timeout = config.server.request_timeout();
    if redis_timeout > request_timeout {
        // A round trip already under way at SIGTERM keeps its whole
        // timeout (see `shutdown`); trips begun after it are capped.
        log::warn!(
            "redis.timeout_ms ({} ms) is above server.request_timeout_ms ({} ms): a stop may take up to redis.timeout_ms + 1 s instead of request_timeout_ms + 1 s",
            redis_timeout.as_millis(),
            request_timeout.as_millis()
        );
    }

    let stock = Stock::new(config.stock.nodes, config.stock.factor);
    let catalog = Arc::new(Catalog::default());
    let endpoint = config.redis.endpoint();
    let mut refresher = Refresher::new(
        &endpoint,
        redis_timeout,
        catalog.clone(),
        stock.clone(),
        metrics.clone(),
    )?;
    if !refresher.refresh() {
        log::warn!(
            "redis at {} does not answer yet; serving, and retrying every 500 ms",
            endpoint
        );
    }
    refresher
        .spawn(shutdown.flag())
        .map_err(|e| format!("catalog thread: {e}"))?;

    let blacklist = Blacklist::new();
    if let Some(path) = config.blacklist_path() {
        blacklist
            .watch(path, shutdown.flag())
            .map_err(|e| format!("blacklist thread: {e}"))?;
    }
    // One breaker on a single Redis; one per hash slot on a cluster, so
    // a master that stops answering stops only its own goods.
    let probe_every = Duration::from_millis(config.breaker.probe_ms);
    let breaker = if config.redis.nodes.is_empty() {
        Breaker::new(config.breaker.failures, probe_every)
    } else {
        Breaker::per_slot(config.breaker.failures, probe_every)
    };

    let queue_cfg = config.shop_queue();
    let (producer, consumer) = queue::open(SHOP_QUEUE, &queue_cfg)?;
    let deducter = Deducter::new(endpoint.clone(), redis_timeout)
        .map_err(|e| format!("redis: {e}"))?
        .with_strategy(config.deduct.strategy, request_timeout);
    let worker = Worker::new(
        consumer,
        Bucket::new(queue_cfg.rate, queue_cfg.burst, clock.now()),
        deducter,
        clock.clone(),
        request_timeout,
        breaker.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let worker = std::thread::Builder::new()
        .name("seckill-worker".into())
        .spawn(move || worker.run())
        .map_err(|e| format!("worker thread: {e}"))?;

    let (lookup, lookup_thread) = Lookup::start(
        &endpoint,
        redis_timeout,
        request_timeout,
        breaker.clone(),
        clock.clone(),
        shutdown.clone(),
        metrics.clone(),
    )?;
    let (linger, linger_thread) = Linger::start().map_err(|e| format!("linger thread: {e}"))?;
    let signer = Signer::new(config.auth.secret.as_bytes());
    let loop_config = LoopConfig {
        limits: Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_body_bytes: config.server.max_body_bytes,
        },
        read_timeout: config.server.read_timeout(),
        keepalive_timeout: config.server.keepalive_timeout(),
    };
    let slots = Slots::new(max_connections);
    let first = listener(config.server.bind, threads > 1)
        .map_err(|e| format!("server.bind {}: {e}", config.server.bind))?;
    let public_addr = first
        .local_addr()
        .map_err(|e| format!("server.bind: {e}"))?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(
            listener(public_addr, true).map_err(|e| format!("server.bind {public_addr}: {e}"))?,
        );
    }
    let admin_listener = listener(config.admin.bind, false)
        .map_err(|e| format!("admin.bind {}: {e}", config.admin.bind))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| format!("admin.bind: {e}"))?;

    let outlets = Outlets {
        queue: producer.clone(),
        lookup,
    };
    // One table per limit for the whole node, shared by every loop.
    let limiter = Arc::new(Limiter::new(&config.limits, metrics.clone()));
    let mut loops = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let service = Public {
            signer: signer.clone(),
            catalog: catalog.clone(),
            stock: stock.clone(),
            queue: producer.clone(),
            breaker: breaker.clone(),
            blacklist: blacklist.clone(),
            metrics: metrics.clone(),
            slots: slots.clone(),
            limiter: limiter.clone(),
        };
        let ev = EventLoop::new(
            l,
            service,
            Some(outlets.clone()),
            linger.clone(),
            loop_config.clone(),
            slots.clone(),
            clock.clone(),
            shutdown.clone(),
            metrics.clone(),
        )
        .map_err(|e| format!("event loop: {e}"))?;
        loops.push(
            std::thread::Builder::new()
                .name(format!("seckill-loop-{i}"))
                .spawn(move || ev.run())
                .map_err(|e| format!("event loop thread: {e}"))?,
        );
    }
    // The loops hold the only producers and lookup senders now: when they
    // end, the queue and the lookup inbox close.
    drop(producer);
    drop(outlets);

    let metrics_for_sink = metrics.clone();
    let admin = Admin::new(
        config.admin.key.clone(),
        &endpoint,
        redis_timeout,
        clock.clone(),
        metrics.clone(),
        !config.sink.url.is_empty(),
    )?;
    let admin_loop = EventLoop::new(
        admin_listener,
        admin,
        None,
        linger,
        loop_config,
        Slots::new(ADMIN_CONNECTIONS),
        clock.clone(),
        shutdown.clone(),
        metrics,
    )
    .map_err(|e| format!("admin loop: {e}"))?;
    loops.push(
        std::thread::Builder::new()
            .name("seckill-admin".into())
            .spawn(move || admin_loop.run())
            .map_err(|e| format!("admin thread: {e}"))?,
    );

    // The orders sink (SPEC §9): its own thread and connections, so the
    // sale never waits for it; it stops with the same flag.
    let mut answerers = vec![
        ("worker", worker),
        ("lookup", lookup_thread),
        ("linger", linger_thread),
    ];
    if !config.sink.url.is_empty() {
        let setup = SinkSetup {
            redis: endpoint.clone(),
            redis_timeout,
            config: config.sink.clone(),
            name: format!("{}:{}", host_name(), public_addr.port()),
        };
        let sink = Sink::new(setup, metrics_for_sink, shutdown.flag())?
            .spawn()
            .map_err(|e| format!("sink thread: {e}"))?;
        answerers.push(("sink", sink));
    }

    Ok(Running {
        public_addr,
        admin_addr,
        shutdown,
        loops,
        answerers,
    })
}

impl Running {
    /// The flag that stops the server when set (signal handlers set it).
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.flag()
    }

    /// Waits for the loops, then for the worker, the lookup thread and the
    /// linger thread to answer and close everything they hold.
    pub(crate) fn wait(self) -> Result<(), String> {
        let mut result = Ok(());
        for handle in self.loops {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(format!("event loop failed: {e}")),
                Err(_) => result = Err("event loop panicked".to_string()),
            }
        }
        for (name, handle) in self.answerers {
            if name == "sink" {
                // The sink finishes the batch in hand, but a PostgreSQL that
                // hangs must not hold the exit: past SINK_STOP it is left to
                // end with the process. Nothing is lost: what it had not
                // acknowledged stays pending in Redis and is written again.
                let until = std::time::Instant::now() + SINK_STOP;
                while !handle.is_finished() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !handle.is_finished() {
                    log::warn!("sink: still busy at exit; its batch stays pending in Redis");
                    continue;
                }
            }
            if handle.join().is_err() {
                result = Err(format!("{name} thread panicked"));
            }
        }
        result
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down as the module doc says.
pub fn run(config: Config, clock: Arc<dyn Clock>) -> Result<(), String> {
    let running = start(config, clock)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, running.stop_flag())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    // One line on stdout, for people and for tests that bind port 0.
    println!(
        "seckill: listening on http://{} (admin http://{})",
        running.public_addr, running.admin_addr
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    log::info!(
        "listening on {} (admin {})",
        running.public_addr,
        running.admin_addr
    );
    let result = running.wait();
    log::info!("stopped");
    result
}
