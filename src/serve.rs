//! `seckill serve`: builds every stage from the config and runs them.
//!
//! Threads: `server.threads` public event loops (0 = one per core), each
//! with its own listener on the same port (`SO_REUSEPORT` when more than
//! one); one admin event loop; one worker; the catalog and its pub/sub
//! listener; the lookup thread (`/shop/result`); the drain thread.
//!
//! Shutdown (SIGTERM or SIGINT, or `Running::stop`): the loops stop
//! accepting, close idle connections and let busy ones finish briefly; when
//! the last loop is gone, so is the last queue producer, and the worker
//! answers every task still queued (a sale, or 1003 past its deadline) and
//! returns. Then the process exits 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::Admin;
use crate::auth::Signer;
use crate::blacklist::Blacklist;
use crate::breaker::Breaker;
use crate::bucket::Bucket;
use crate::catalog::{Catalog, Refresher};
use crate::clock::Clock;
use crate::config::{Config, SHOP_QUEUE};
use crate::deduct::Deducter;
use crate::event_loop::{EventLoop, LoopConfig};
use crate::hijack::Drain;
use crate::http::parse::Limits;
use crate::lookup::Lookup;
use crate::metrics::Metrics;
use crate::public::Public;
use crate::queue;
use crate::stock::Stock;
use crate::worker::Worker;

/// Listen backlog: a burst of new connections must not overflow it (the
/// default 128 costs clients 1 s SYN retries under a flash sale).
const BACKLOG: i32 = 4096;

/// A started server.
pub struct Running {
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    loops: Vec<JoinHandle<std::io::Result<()>>>,
    worker: JoinHandle<()>,
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

/// Descriptors beyond `max_connections` the process needs for itself:
/// listeners, Redis connections, hijacked sockets on their way to the
/// worker and the drain thread.
const FD_HEADROOM: u64 = 1024;

/// Raises the soft open-file limit as far as `max_connections` needs (never
/// past the hard limit). Many systems start processes at 1024, which would
/// refuse connections long before `server.max_connections`.
fn raise_fd_limit(max_connections: usize) {
    let want = (max_connections as u64).saturating_add(FD_HEADROOM);
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => log::warn!(
            "open-file limit is {got}, below server.max_connections + {FD_HEADROOM}: \
             connections past it will be refused (raise the hard limit, e.g. LimitNOFILE)"
        ),
        Ok(_) => {}
        Err(e) => log::warn!("could not raise the open-file limit: {e}"),
    }
}

/// Starts every thread; returns once the listeners are bound.
pub fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, String> {
    if config.auth.secret.is_empty() {
        return Err("auth.secret is empty: set a secret in the config file; the server refuses to start without one".into());
    }
    raise_fd_limit(config.server.max_connections);
    let metrics = Metrics::default();
    let stop = Arc::new(AtomicBool::new(false));
    let redis_timeout = config.redis.timeout();

    let stock = Stock::new(config.stock.nodes, config.stock.factor);
    let catalog = Arc::new(Catalog::default());
    let mut refresher = Refresher::new(
        &config.redis.url,
        redis_timeout,
        catalog.clone(),
        stock.clone(),
    )?;
    if !refresher.refresh() {
        log::warn!(
            "redis at {} does not answer yet; serving, and retrying every 500 ms",
            config.redis.url
        );
    }
    refresher
        .spawn(stop.clone())
        .map_err(|e| format!("catalog thread: {e}"))?;

    let blacklist = Blacklist::new();
    if let Some(path) = config.blacklist_path() {
        blacklist
            .watch(path, stop.clone())
            .map_err(|e| format!("blacklist thread: {e}"))?;
    }
    let breaker = Breaker::new(
        config.breaker.failures,
        Duration::from_millis(config.breaker.probe_ms),
    );

    let queue_cfg = config.shop_queue();
    let (producer, consumer) = queue::open(SHOP_QUEUE, &queue_cfg)?;
    let deducter =
        Deducter::new(&config.redis.url, redis_timeout).map_err(|e| format!("redis.url: {e}"))?;
    let worker = Worker::new(
        consumer,
        Bucket::new(queue_cfg.rate, queue_cfg.burst, clock.now()),
        deducter,
        clock.clone(),
        config.server.request_timeout(),
        breaker.clone(),
        metrics.clone(),
    );
    let worker = std::thread::Builder::new()
        .name("seckill-worker".into())
        .spawn(move || worker.run())
        .map_err(|e| format!("worker thread: {e}"))?;

    let lookup = Lookup::start(&config.redis.url, redis_timeout)?;
    let drain = Drain::start().map_err(|e| format!("drain thread: {e}"))?;
    let signer = Signer::new(config.auth.secret.as_bytes());
    let loop_config = LoopConfig {
        limits: Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_body_bytes: config.server.max_body_bytes,
        },
        read_timeout: config.server.read_timeout(),
        keepalive_timeout: config.server.keepalive_timeout(),
        max_connections: config.server.max_connections,
    };
    let open = Arc::new(AtomicUsize::new(0));

    let threads = match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
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

    let mut loops = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let service = Public {
            signer: signer.clone(),
            catalog: catalog.clone(),
            stock: stock.clone(),
            queue: producer.clone(),
            lookup: lookup.clone(),
            breaker: breaker.clone(),
            blacklist: blacklist.clone(),
            metrics: metrics.clone(),
        };
        let ev = EventLoop::new(
            l,
            service,
            loop_config.clone(),
            open.clone(),
            clock.clone(),
            drain.clone(),
            stop.clone(),
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
    // The loops hold the only producers now: when they end, the queue closes.
    drop(producer);

    let admin = Admin::new(
        config.admin.key.clone(),
        &config.redis.url,
        redis_timeout,
        clock.clone(),
        metrics.clone(),
    )?;
    let admin_loop = EventLoop::new(
        admin_listener,
        admin,
        loop_config,
        Arc::new(AtomicUsize::new(0)),
        clock.clone(),
        drain,
        stop.clone(),
        metrics,
    )
    .map_err(|e| format!("admin loop: {e}"))?;
    loops.push(
        std::thread::Builder::new()
            .name("seckill-admin".into())
            .spawn(move || admin_loop.run())
            .map_err(|e| format!("admin thread: {e}"))?,
    );

    Ok(Running {
        public_addr,
        admin_addr,
        stop,
        loops,
        worker,
    })
}

impl Running {
    /// The flag that stops the server when set (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Asks every loop to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for the loops, then for the worker to answer every queued task.
    pub fn wait(self) -> Result<(), String> {
        let mut result = Ok(());
        for handle in self.loops {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(format!("event loop failed: {e}")),
                Err(_) => result = Err("event loop panicked".to_string()),
            }
        }
        if self.worker.join().is_err() {
            result = Err("worker panicked".to_string());
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
