//! The worker alone, with its queue kept full: deducts per second.
//!
//! Fills the memory queue with `--tasks` real hijacked connections (loopback
//! pairs: the server side becomes the task's socket) holding attempts by
//! distinct users, closes the queue, then times `Worker::run` (rate 0,
//! pipelined batches) until every task is answered. `scripts/bench.sh` sets
//! it beside `redis-benchmark -P 16` running the same script.
//!
//! `cargo run --release --example worker_alone -- --redis redis://127.0.0.1:6379/ --goods w --rounds 4`
//! (the goods `e1`/`<goods>` must have stock for every task). `--goods a,b,c`
//! spreads the tasks over several goods in turn; `--cluster` reads `--redis`
//! as a comma-separated list of Redis Cluster seed nodes (`redis.nodes`).

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill::attempt::Attempt;
use seckill::bucket::Bucket;
use seckill::clock::{Clock, SystemClock};
use seckill::config::QueueConfig;
use seckill::config::Strategy;
use seckill::conn::Slots;
use seckill::hijack::{Hijacked, Task};
use seckill::linger::Linger;
use seckill::metrics::Metrics;
use seckill::queue;
use seckill::shutdown::Shutdown;
use seckill::stock::Stock;
use seckill::store::breaker::Breaker;
use seckill::store::deduct::Deducter;
use seckill::store::Endpoint;
use seckill::worker::Worker;

/// The worker alone, with its queue kept full.
#[derive(clap::Parser)]
struct Args {
    /// Redis holding `seckill:{e1:<goods>}:stock` (with `--cluster`: the
    /// cluster's seed nodes, comma-separated).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// `--redis` is a Redis Cluster.
    #[arg(long)]
    cluster: bool,
    /// Goods of event e1 to sell, comma-separated, taken in turn; their
    /// stock must cover every task.
    #[arg(long, default_value = "w")]
    goods: String,
    /// Tasks queued per round.
    #[arg(long, default_value_t = 5000)]
    tasks: usize,
    /// Rounds.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// `lua` or `sliding-lock` (SPEC §3.1).
    #[arg(long, default_value = "lua")]
    strategy: String,
    /// Uid prefix: several of these against one goods need their own.
    #[arg(long, default_value = "w")]
    prefix: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        redis,
        cluster,
        goods,
        tasks,
        rounds,
        strategy,
        prefix,
    } = clap::Parser::parse();
    let strategy = match strategy.as_str() {
        "lua" => Strategy::Lua,
        "sliding-lock" => Strategy::SlidingLock,
        other => return Err(format!("--strategy {other}: lua or sliding-lock").into()),
    };
    let endpoint = if cluster {
        Endpoint::Cluster(redis.split(',').map(str::to_string).collect())
    } else {
        Endpoint::Single(redis)
    };
    let goods: Vec<String> = goods.split(',').map(str::to_string).collect();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stock = Stock::new(1, 1.0);
    for g in &goods {
        stock.learn("e1", g, i64::MAX / 2, 0, 1, std::time::Instant::now());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (linger, _linger_thread) = Linger::start()?;
    let slots = Slots::new(usize::MAX);
    let (mut total, mut took) = (0usize, Duration::ZERO);
    for round in 0..rounds {
        let cfg = QueueConfig {
            size: tasks,
            rate: 0,
            ..QueueConfig::default()
        };
        let (producer, consumer) = queue::open("shop", &cfg)?;
        let mut clients = Vec::with_capacity(tasks);
        for i in 0..tasks {
            clients.push(TcpStream::connect(addr)?);
            let (server_side, _) = listener.accept()?;
            server_side.set_nonblocking(true)?;
            let uid = format!("{prefix}{round}x{i}");
            let g = &goods[i % goods.len()];
            let Ok(lease) = stock.try_take("e1", g, &uid) else {
                return Err("no lease: the memory share ran out".into());
            };
            let task = Task {
                conn: Hijacked::new(
                    server_side,
                    slots.try_take().ok_or("no slot")?,
                    Vec::new(),
                    false,
                    linger.clone(),
                    clock.unix_s(),
                ),
                attempt: Attempt {
                    uid,
                    event_id: "e1".into(),
                    goods_id: g.clone(),
                },
                arrived_at: clock.now(),
                lease,
            };
            if producer.try_push(task).is_err() {
                return Err("queue full".into());
            }
        }
        drop(producer); // the worker stops once the queue is empty
        let deducter = Deducter::new(endpoint.clone(), Duration::from_secs(5))?
            .with_strategy(strategy, Duration::from_secs(3600));
        let metrics = Metrics::default();
        let worker = Worker::new(
            consumer,
            Bucket::new(0, 1, clock.now()),
            deducter,
            clock.clone(),
            Duration::from_secs(3600),
            Breaker::new(1000, Duration::from_secs(1)),
            metrics.clone(),
            Shutdown::new(),
        );
        let started = Instant::now();
        worker.run();
        let elapsed = started.elapsed();
        let won = metrics.render(0, false, 0);
        let wins = won
            .lines()
            .find_map(|l| l.strip_prefix("seckill_worker_responses_total{code=\"0\"} "))
            .unwrap_or("0");
        let field = |name: &str| {
            won.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        eprintln!(
            "round {round}: {tasks} tasks in {:.3} s, {wins} sold; {} round trips, {:.3} s in Redis",
            elapsed.as_secs_f64(),
            field("seckill_redis_round_trip_seconds_count"),
            field("seckill_redis_round_trip_seconds_sum"),
        );
        total += tasks;
        took += elapsed;
        drop(clients);
    }
    println!(
        "WORKER tasks={total} elapsed_s={:.3} deducts_per_s={:.0}",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    Ok(())
}
