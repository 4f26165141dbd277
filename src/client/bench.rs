//! `seckill bench`: the load generator (SPEC §8).
//!
//! Mints one token per user (`<prefix>0` .. `<prefix>(N-1)`) with the
//! server's secret, then drives `concurrency` connections, one thread each:
//! request *i* is user *i mod N* buying the goods. Default: one request per
//! connection (`Connection: close`), every user a new client, as the hijack
//! path needs; `--keepalive` reuses a connection until the server closes it.
//! Latency runs from the connect (close mode) or the first byte written
//! (keep-alive) to the last byte of the answer.
//!
//! Prints progress every second on stderr, then a table (or `--json`):
//! requests/s, latency p50/p99/p99.9/max, the count of each code and HTTP
//! status, errors by kind, and whether the wins stayed within the stock the
//! server showed before the run. Exits non-zero if they did not.
//! Never: used by the server; it only speaks HTTP to one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Signer;
use crate::client::report::{self, RunInfo, Sample};
use crate::client::{self, ReadError};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `http://HOST:PORT`.
    pub url: String,
    /// Event id.
    pub event: String,
    /// Goods id.
    pub goods: String,
    /// Distinct users.
    pub users: usize,
    /// Connections in flight.
    pub concurrency: usize,
    /// Requests in all (default: one per user).
    pub requests: Option<usize>,
    /// Stop after this long, whatever is left.
    pub duration: Option<Duration>,
    /// Reuse connections.
    pub keepalive: bool,
    /// Per-request read/write timeout.
    pub timeout: Duration,
    /// Uid prefix.
    pub prefix: String,
    /// Token secret.
    pub secret: String,
    /// Print JSON instead of the table.
    pub json: bool,
    /// Also write the run as an HTML page here (`report`).
    pub report: Option<std::path::PathBuf>,
}

/// One thread's tally.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    codes: BTreeMap<i64, u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    // Every answer with its time, kept only for `--report`.
    samples: Vec<Sample>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.codes {
            *self.codes.entry(k).or_default() += v;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.samples.extend(other.samples);
    }
}

fn addr_of(url: &str) -> Result<SocketAddr, String> {
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url}: give http://HOST:PORT"))?;
    let host = host.trim_end_matches('/');
    host.to_socket_addrs()
        .map_err(|e| format!("--url {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url}: no address"))
}

/// Reads one response; returns (status, code in the JSON body, server closes).
fn read_answer(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, i64, bool), &'static str> {
    buf.clear();
    let resp = client::read(stream, buf).map_err(|e| match e {
        ReadError::Malformed => "bad response",
        ReadError::Closed => "closed early",
        ReadError::Timeout => "timeout",
        ReadError::Reset => "reset",
    })?;
    let code = resp.code().ok_or("bad response")?;
    Ok((resp.status, code, resp.closes()))
}

/// Asks the server for the goods' stock before the run.
fn stock_before(addr: SocketAddr, cfg: &BenchConfig) -> Option<i64> {
    let mut s = TcpStream::connect_timeout(&addr, cfg.timeout).ok()?;
    s.set_read_timeout(Some(cfg.timeout)).ok()?;
    let req = format!(
        "GET /event/info?event_id={} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
        cfg.event
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let resp = client::read(&mut s, &mut buf).ok()?;
    let v: serde_json::Value = serde_json::from_slice(resp.body).ok()?;
    v["data"]["goods"]
        .as_array()?
        .iter()
        .find(|g| g["goods_id"] == cfg.goods.as_str())?["stock_left"]
        .as_i64()
}

/// Runs the benchmark and prints its report. Err if wins exceeded the stock.
pub fn run(cfg: BenchConfig) -> Result<(), String> {
    let addr = addr_of(&cfg.url)?;
    if cfg.users == 0 || cfg.concurrency == 0 {
        return Err("--users and --concurrency must be at least 1".into());
    }
    let signer = Signer::new(cfg.secret.as_bytes());
    let exp = crate::clock::Clock::unix_s(&crate::clock::SystemClock) + 86_400;
    let body = format!(
        r#"{{"event_id":"{}","goods_id":"{}"}}"#,
        cfg.event, cfg.goods
    );
    let connection = if cfg.keepalive { "keep-alive" } else { "close" };
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..cfg.users)
            .map(|i| {
                let token = signer.mint(&format!("{}{i}", cfg.prefix), exp);
                format!(
                    "PUT /shop/cart/add HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect(),
    );
    let stock = stock_before(addr, &cfg);
    let total = cfg.requests.unwrap_or(cfg.users);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();

    let threads: Vec<_> = (0..cfg.concurrency.min(total.max(1)))
        .map(|_| {
            let (requests, next, done, stop, tally, cfg) = (
                requests.clone(),
                next.clone(),
                done.clone(),
                stop.clone(),
                tally.clone(),
                cfg.clone(),
            );
            std::thread::spawn(move || {
                let mut mine = Tally::default();
                let mut conn: Option<TcpStream> = None;
                let mut buf = Vec::with_capacity(1024);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t0 = Instant::now();
                    let mut stream = match conn.take() {
                        Some(s) => s,
                        None => match TcpStream::connect_timeout(&addr, cfg.timeout) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(cfg.timeout));
                                let _ = s.set_write_timeout(Some(cfg.timeout));
                                s
                            }
                            Err(_) => {
                                *mine.errors.entry("connect").or_default() += 1;
                                done.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        },
                    };
                    let request = &requests[i % requests.len()];
                    let result = stream
                        .write_all(request)
                        .map_err(|_| "write")
                        .and_then(|()| read_answer(&mut stream, &mut buf));
                    let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    if cfg.report.is_some() {
                        let at_ms = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
                        let code = result.as_ref().map_or(report::ERROR, |(_, code, _)| *code);
                        mine.samples.push(Sample {
                            at_ms,
                            latency_us: us,
                            code,
                        });
                    }
                    match result {
                        Ok((status, code, close)) => {
                            mine.latencies_us.push(us);
                            *mine.codes.entry(code).or_default() += 1;
                            *mine.statuses.entry(status).or_default() += 1;
                            if cfg.keepalive && !close {
                                conn = Some(stream);
                            }
                        }
                        Err(kind) => *mine.errors.entry(kind).or_default() += 1,
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut t) = tally.lock() {
                    t.merge(mine);
                }
            })
        })
        .collect();

    // Progress, and the --duration bound.
    let mut last = 0;
    while done.load(Ordering::Relaxed) < total && threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let elapsed = started.elapsed();
        if cfg.duration.is_some_and(|d| elapsed >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if elapsed.as_secs() > last {
            last = elapsed.as_secs();
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "[{last:>4} s] {n} responses, {:.0} req/s",
                n as f64 / elapsed.as_secs_f64()
            );
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed();
    let mut t = match Arc::try_unwrap(tally) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => std::mem::take(&mut *shared.lock().map_err(|_| "tally poisoned")?),
    };
    t.latencies_us.sort_unstable();
    if let Some(path) = &cfg.report {
        let info = RunInfo {
            title: format!(
                "{} · event {} · goods {} · {} users · {} connections · {}",
                cfg.url,
                cfg.event,
                cfg.goods,
                cfg.users,
                cfg.concurrency,
                if cfg.keepalive {
                    "keep-alive"
                } else {
                    "one request per connection"
                }
            ),
            elapsed,
            stock_before: stock,
        };
        std::fs::write(path, report::render(&info, &t.samples))
            .map_err(|e| format!("--report {}: {e}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    print_report(&cfg, &t, elapsed, stock)
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

fn print_report(
    cfg: &BenchConfig,
    t: &Tally,
    elapsed: Duration,
    stock: Option<i64>,
) -> Result<(), String> {
    let responses = t.latencies_us.len();
    let rps = responses as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p99, p999) = (
        percentile_ms(&t.latencies_us, 0.50),
        percentile_ms(&t.latencies_us, 0.99),
        percentile_ms(&t.latencies_us, 0.999),
    );
    let max = t
        .latencies_us
        .last()
        .map_or(0.0, |us| f64::from(*us) / 1000.0);
    let wins = t.codes.get(&0).copied().unwrap_or(0) as i64;
    let errors: u64 = t.errors.values().sum();
    let within = stock.map(|s| wins <= s);
    if cfg.json {
        let v = serde_json::json!({
            "url": cfg.url, "event": cfg.event, "goods": cfg.goods, "users": cfg.users,
            "concurrency": cfg.concurrency, "keepalive": cfg.keepalive,
            "responses": responses, "elapsed_s": elapsed.as_secs_f64(), "rps": rps,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": max,
            "codes": t.codes.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "http": t.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "errors": t.errors, "wins": wins, "stock_before": stock, "wins_within_stock": within,
        });
        println!("{v}");
    } else {
        let join = |m: Vec<String>| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.join("  ")
            }
        };
        println!(
            "seckill bench: {responses} responses from {} (event {}, goods {}), {} users, {} connections, {}",
            cfg.url,
            cfg.event,
            cfg.goods,
            cfg.users,
            cfg.concurrency,
            if cfg.keepalive { "keep-alive" } else { "one request per connection" }
        );
        println!("  elapsed      {:.3} s", elapsed.as_secs_f64());
        println!("  requests/s   {rps:.0}");
        println!("  latency ms   p50 {p50:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}");
        println!(
            "  codes        {}",
            join(t.codes.iter().map(|(k, v)| format!("{k}: {v}")).collect())
        );
        println!(
            "  http         {}",
            join(
                t.statuses
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect()
            )
        );
        println!(
            "  errors       {errors} {}",
            join(t.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect())
        );
        match stock {
            Some(s) => println!(
                "  wins         {wins} <= stock {s} before the run: {}",
                if wins <= s { "ok" } else { "FAILED" }
            ),
            None => println!("  wins         {wins} (stock before the run unknown)"),
        }
    }
    if within == Some(false) {
        return Err(format!(
            "{wins} wins exceed the stock of {}",
            stock.unwrap_or(0)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_ceiling_rank() {
        let us: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 500.0);
        assert_eq!(percentile_ms(&us, 0.99), 990.0);
        assert_eq!(percentile_ms(&us, 0.999), 999.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn url_must_be_http_host_port() {
        assert_eq!(
            addr_of("http://127.0.0.1:8080/").ok(),
            "127.0.0.1:8080".parse().ok()
        );
        assert!(addr_of("127.0.0.1:8080").is_err());
    }
}
