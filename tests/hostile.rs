//! Hostile input is normal input (issue 3, SPEC §6.5): a battery of
//! malformed and hostile requests, each on its own connection with its
//! expected outcome, each followed by a normal request that must still be
//! served; slow clients; thousands of idle connections; `max_connections`.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use seckill::config::Config;
use support::{
    config, eventually, now_s, raw, shop, token, token_exp, Client, RedisServer, Seckill, SECRET,
};

/// What a hostile request must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This status and code; `close` says whether the server then closes.
    Answer(u16, i64, bool),
    /// The server closes without an answer.
    Closed,
}
use Want::*;

/// The test config with small head and body limits, for the battery.
fn small(redis: &RedisServer) -> Config {
    let mut c = config(redis);
    c.server.max_header_bytes = 1024;
    c.server.max_body_bytes = 256;
    c
}

fn cart(auth: &str, body: &str) -> Vec<u8> {
    raw("PUT", "/shop/cart/add", Some(auth), Some(body), "")
}

fn non_utf8_body(bearer: &str) -> Vec<u8> {
    let body = b"{\"event_id\":\"e\xff\xfe\",\"goods_id\":\"g0\"}";
    let mut bytes = format!(
        "PUT /shop/cart/add HTTP/1.1\r\nAuthorization: {bearer}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn battery() -> Vec<(&'static str, Vec<u8>, Want)> {
    let bearer = format!("Bearer {}", token("alice"));
    let ok_body = r#"{"event_id":"e1","goods_id":"g0"}"#;
    let sig = token("alice")
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let exp = now_s() + 60;
    let ids = |e: &str, g: &str| {
        cart(
            &bearer,
            &format!(r#"{{"event_id":"{e}","goods_id":"{g}"}}"#),
        )
    };
    vec![
        ("garbage line", b"hello world\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("binary junk", vec![0, 1, 2, 3, 255, 254, b'\r', b'\n', b'\r', b'\n'], Answer(400, 4000, true)),
        ("http2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("request line without target", b"GET\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("request line with extra field", b"GET /healthz HTTP/1.1 x\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("unknown version", b"GET /healthz HTTP/9.9\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("version 2", b"GET /healthz HTTP/2\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("lowercase method", b"get /healthz HTTP/1.1\r\n\r\n".to_vec(), Answer(405, 4005, false)),
        ("unknown method", b"BREW /healthz HTTP/1.1\r\n\r\n".to_vec(), Answer(405, 4005, false)),
        ("absolute uri", b"GET http://x/healthz HTTP/1.1\r\n\r\n".to_vec(), Answer(404, 4004, false)),
        ("path traversal", b"GET /../healthz HTTP/1.1\r\n\r\n".to_vec(), Answer(404, 4004, false)),
        ("nul in path", b"GET /heal\0thz HTTP/1.1\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("non-utf8 path", b"GET /\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("nul in header value", b"GET /healthz HTTP/1.1\r\nX: a\0b\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("non-utf8 header value", b"GET /healthz HTTP/1.1\r\nX: \xff\xfe\r\n\r\n".to_vec(), Answer(200, 0, false)),
        ("header without colon", b"GET /healthz HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("space before colon", b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("oversize head", raw("GET", "/healthz", None, None, &format!("X: {}\r\n", "a".repeat(2000))), Answer(431, 4031, true)),
        ("thousands of headers", raw("GET", "/healthz", None, None, &"A: b\r\n".repeat(3000)), Answer(431, 4031, true)),
        ("too many small headers", raw("GET", "/healthz", None, None, &"A: b\r\n".repeat(60)), Answer(431, 4031, true)),
        ("oversize body", cart(&bearer, &"x".repeat(300)), Answer(413, 4013, true)),
        ("content-length over limit", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec(), Answer(413, 4013, true)),
        ("conflicting content-length", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), Answer(400, 4000, true)),
        ("non-numeric content-length", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("negative content-length", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("signed content-length", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}".to_vec(), Answer(400, 4000, true)),
        ("content-length list", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}".to_vec(), Answer(400, 4000, true)),
        ("huge content-length", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("chunked", b"PUT /shop/cart/add HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("chunked and length", b"PUT /shop/cart/add HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}".to_vec(), Answer(400, 4000, true)),
        ("body cut short then eof", b"PUT /shop/cart/add HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"event".to_vec(), Closed),
        ("empty body", cart(&bearer, ""), Answer(400, 4000, true)),
        ("invalid json", cart(&bearer, "{event_id:e1}"), Answer(400, 4000, true)),
        ("json array", cart(&bearer, r#"["e1","g0"]"#), Answer(400, 4000, true)),
        ("json numbers", cart(&bearer, r#"{"event_id":1,"goods_id":2}"#), Answer(400, 4000, true)),
        ("json nulls", cart(&bearer, r#"{"event_id":null,"goods_id":"g0"}"#), Answer(400, 4000, true)),
        ("non-utf8 json", non_utf8_body(&bearer), Answer(400, 4000, true)),
        ("id with colon", ids("e1:x", "g0"), Answer(400, 4000, true)),
        ("id with braces", ids("e1", "{g0}"), Answer(400, 4000, true)),
        ("id with hash", ids("e1", "g#0"), Answer(400, 4000, true)),
        ("id with star", ids("*", "g0"), Answer(400, 4000, true)),
        ("id with space", ids("e 1", "g0"), Answer(400, 4000, true)),
        ("id over 64 bytes", ids(&"e".repeat(65), "g0"), Answer(400, 4000, true)),
        ("query id with colon", b"GET /event/info?event_id=e1:x HTTP/1.1\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("query id percent-encoded", b"GET /event/info?event_id=%65%31 HTTP/1.1\r\n\r\n".to_vec(), Answer(400, 4000, true)),
        ("token with two fields", cart(&format!("Bearer alice.{exp}"), ok_body), Answer(401, 4001, false)),
        ("token with four fields", cart(&format!("Bearer al.ice.{exp}.{sig}"), ok_body), Answer(401, 4001, false)),
        ("token with a wrong signature", cart(&format!("Bearer {}", seckill::auth::Signer::new(b"x").mint("alice", exp)), ok_body), Answer(401, 4001, false)),
        ("token with another uid", cart(&format!("Bearer mallory.{exp}.{sig}"), ok_body), Answer(401, 4001, false)),
        ("token in uppercase hex", cart(&format!("Bearer {}", token("alice").to_uppercase()), ok_body), Answer(401, 4001, false)),
        ("expired token", cart(&format!("Bearer {}", token_exp("alice", now_s() - 5)), ok_body), Answer(401, 4001, false)),
        ("bearer without token", cart("Bearer ", ok_body), Answer(401, 4001, false)),
        ("two authorization headers", raw("PUT", "/shop/cart/add", Some(&bearer), Some(ok_body), &format!("Authorization: {bearer}\r\n")), Answer(400, 4000, true)),
        ("secret as token", cart(&format!("Bearer {SECRET}"), ok_body), Answer(401, 4001, false)),
    ]
}

#[test]
fn hostile_battery_gets_its_4xx_or_a_close_and_harms_no_one() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let s = Seckill::start_ready(&small(&redis));
    let cases = battery();
    assert!(cases.len() >= 40, "the battery has {} cases", cases.len());
    for (name, bytes, want) in cases {
        let mut c = s.client();
        c.send(&bytes);
        if matches!(want, Closed) {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        match (want, c.try_read()) {
            (Closed, None) => {}
            (Answer(status, code, close), Some(r)) => {
                let j = r.json();
                assert_eq!(
                    (r.status, j["code"].as_i64()),
                    (status, Some(code)),
                    "{name}: {j}"
                );
                let conn = if close { "close" } else { "keep-alive" };
                assert_eq!(r.header("connection"), Some(conn), "{name}");
                if close {
                    assert!(c.try_read().is_none(), "{name}: closed after the answer");
                }
            }
            (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
        }
        // And a normal client is still served.
        s.client()
            .buy("bob", "e1", "g0")
            .assert(200, 1001, "no stock", "keep-alive");
    }
}

#[test]
fn garbage_after_a_good_request_answers_both_then_closes() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let s = Seckill::start_ready(&small(&redis));
    let mut c = s.client();
    let mut bytes = raw("GET", "/healthz", None, None, "");
    bytes.extend_from_slice(b"\x16\x03\x01 not http\r\n\r\n");
    c.send(&bytes);
    c.read().assert(200, 0, "ok", "keep-alive");
    c.read().assert(400, 4000, "bad request", "close");
    assert!(c.try_read().is_none());
}

#[test]
fn trickled_request_gets_408_at_the_read_timeout() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let mut c = small(&redis);
    c.server.read_timeout_ms = 400;
    let s = Seckill::start_ready(&c);
    let mut c = s.client();
    // Be the slow client: one byte every 50 ms, never finishing the head.
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaa" {
        if c.stream.write_all(&[*b]).is_err() {
            break; // the server already answered and closed
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.read().assert(408, 4008, "request timeout", "close");
    assert!(c.try_read().is_none());
    s.client()
        .get("/healthz", None)
        .assert(200, 0, "ok", "keep-alive");
}

#[test]
fn thousands_of_idle_connections_do_not_stop_others() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let s = Seckill::start_ready(&small(&redis));
    let idle: Vec<Client> = (0..3000).map(|_| s.client()).collect();
    // Half of them have sent half a request.
    let mut idle = idle;
    for c in idle.iter_mut().step_by(2) {
        c.send(b"GET /healthz HTTP/1.1\r\n");
    }
    let mut c = s.client();
    for _ in 0..20 {
        c.buy("bob", "e1", "g0")
            .assert(200, 1001, "no stock", "keep-alive");
    }
    // The loops take a bounded number of accepts per turn (no connection
    // or listener holds a loop), so the count may trail the connects.
    eventually(
        Duration::from_secs(5),
        "the server holds the 3000 idle connections",
        || s.metric("seckill_open_connections") > 3000.0,
    );
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is 14th, stime 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

#[test]
fn connections_over_max_are_closed_without_busy_looping() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let mut c = small(&redis);
    c.server.max_connections = 10;
    let s = Seckill::start_ready(&c);
    let mut held = vec![s.sole_client()];
    held.extend((0..9).map(|_| s.client()));
    for c in &mut held {
        c.get("/healthz", None).assert(200, 0, "ok", "keep-alive");
    }
    let mut refused: Vec<Client> = (0..200).map(|_| s.client()).collect();
    for c in &mut refused {
        c.send(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(
            c.try_read().is_none(),
            "over max_connections: closed unanswered"
        );
    }
    // Hold the server at its limit for a second: a loop that spun on accept
    // would burn a core; idle, it uses next to nothing.
    let before = cpu_ticks(s.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(s.pid()) - before;
    assert!(
        used < 30,
        "server used {used} ticks (1/100 s) while idle at its limit"
    );
    for c in &mut held {
        c.get("/healthz", None).assert(200, 0, "ok", "keep-alive");
    }
}

fn limits_line(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn start_up_raises_a_low_open_file_limit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    let mut c = config(&redis);
    c.server.max_connections = 5000;
    std::fs::write(&path, toml::to_string(&c).expect("toml")).expect("write config");
    // Started the way many systems start services: a soft limit of 256.
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {} serve --config {}",
            env!("CARGO_BIN_EXE_seckill"),
            path.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("start line");
    let limits = limits_line(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on"), "{line}");
    // "Max open files  <soft>  <hard>  files"
    let nums: Vec<u64> = limits
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (soft, hard) = (nums[0], nums[1]);
    assert!(
        soft >= hard.min(5000),
        "soft limit {soft} (hard {hard}) after start-up: {limits}"
    );
    assert!(soft > 256);
}

/// A client that pipelines `path` without end on one connection and reads
/// every answer; the count of bytes it has read, and its threads.
struct Hog {
    read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn start(addr: std::net::SocketAddr, path: &str) -> Hog {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        for t in [
            stream.set_write_timeout(Some(Duration::from_secs(5))),
            stream.set_read_timeout(Some(Duration::from_secs(5))),
        ] {
            t.expect("timeout");
        }
        let mut reader = stream.try_clone().expect("clone");
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = read.clone();
        let reading = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut writer = stream;
        let batch = format!("GET {path} HTTP/1.1\r\nHost: hog\r\n\r\n").repeat(200);
        let writing =
            std::thread::spawn(move || while writer.write_all(batch.as_bytes()).is_ok() {});
        Hog {
            read,
            threads: vec![reading, writing],
        }
    }

    /// Waits until it has been served `bytes`.
    fn wait_served(&self, bytes: usize) {
        eventually(Duration::from_secs(5), "the hog is served", || {
            self.read.load(std::sync::atomic::Ordering::Relaxed) >= bytes
        });
    }

    /// Waits for its threads (they end when the server closes).
    fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Issue 7 (1): one client pipelining `GET /metrics` back to back (and
/// reading the answers) used to hold its event loop for seconds: another
/// client's `/healthz` waited 0.2-8 s and SIGTERM took up to 9 s. A loop
/// now serves a bounded share of one connection per turn. The second hog
/// pipelines small answers, so it uses up its turn rather than filling its
/// socket: it must be served once per turn, not once per copy of itself on
/// the ready list (a copy more each turn would double its share every turn).
#[test]
fn pipelining_hog_cannot_hold_a_loop() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    // One loop: the hogs and the others share it.
    let mut c = small(&redis);
    c.server.threads = 1;
    c.server.request_timeout_ms = 1000;
    let s = Seckill::start_ready(&c);
    let hogs = [
        Hog::start(s.addr, "/metrics"),
        Hog::start(s.addr, "/healthz"),
    ];
    for hog in &hogs {
        hog.wait_served(1 << 20);
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        s.client()
            .get("/healthz", None)
            .assert(200, 0, "ok", "keep-alive");
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest /healthz beside the hogs: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a /healthz waited {slowest:?} behind the hogs"
    );
    let started = Instant::now();
    let code = s.terminate();
    let took = started.elapsed();
    eprintln!("SIGTERM to exit with the hogs running: {took:?}");
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_millis(2000),
        "exit took {took:?}, more than request_timeout_ms + 1 s"
    );
    for hog in hogs {
        hog.join();
    }
}

/// Issue 7 (8): sockets taken off the loop (queued, in the worker) used
/// not to count against `max_connections`, so the process could pass its
/// own limit. Every client socket the process holds now counts.
#[test]
fn hijacked_connections_count_against_max_connections() {
    let redis = RedisServer::with_e1(&[("g1", 10)]);
    let mut c = config(&redis);
    c.server.max_connections = 4;
    c.redis.timeout_ms = 20_000;
    shop(&mut c).rate = 20;
    shop(&mut c).burst = 1;
    let s = Seckill::start_ready(&c);
    // Three sockets off the loops: one held in the worker, two queued.
    let mut held = vec![support::hold_worker(&redis, &s, "u0", "g1")];
    for uid in ["u1", "u2"] {
        let mut c = s.client();
        c.send(&support::buy_bytes(uid, "e1", "g1", ""));
        held.push(c);
    }
    s.wait_metric("seckill_queue_depth 2", Duration::from_secs(5));
    // The fourth connection fits (once the /metrics connections above are
    // closed on the server's side too) ...
    let mut fourth = None;
    eventually(
        Duration::from_secs(5),
        "room for a fourth connection",
        || {
            let mut c = s.client();
            c.send(b"GET /metrics HTTP/1.1\r\n\r\n");
            let Some(r) = c.try_read() else {
                return false;
            };
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let alone = support::metric_value(&text, "seckill_open_connections") == 4.0;
            if alone {
                fourth = Some(c);
            }
            alone
        },
    );
    let mut fourth = fourth.expect("the fourth connection");
    // ... a fifth does not: the hijacked three hold their slots.
    let mut fifth = s.client();
    fifth.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(
        fifth.try_read().is_none(),
        "a fifth connection was served past max_connections = 4"
    );
    fourth
        .get("/healthz", None)
        .assert(200, 0, "ok", "keep-alive");
    support::release_worker(&redis);
    for c in &mut held {
        c.read().assert(200, 0, "ok", "close");
    }
}

/// The lowest descriptor number `pid` has free.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap_or(0)
}

/// The test config with one loop.
fn one_loop(redis: &RedisServer) -> Config {
    let mut c = config(redis);
    c.server.threads = 1;
    c
}

/// A `seckill serve` child with stderr piped into a channel of lines.
fn serve_logging(
    config: &Config,
    shell_prefix: &str,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::net::SocketAddr,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(config).expect("toml")).expect("write config");
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{shell_prefix}exec {} serve --config {}",
            env!("CARGO_BIN_EXE_seckill"),
            path.display()
        ))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("start line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, rx, addr, dir)
}

/// Waits for a log line containing `needle`.
fn wait_log(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {needle:?}"),
        }
    }
}

/// Issue 7 (8): after an accept failed for lack of descriptors, the
/// edge-triggered listener never reported the connections already in the
/// backlog: they waited until a new one arrived (17 clients unserved 5 s
/// after descriptors were free). A timer now tries again.
#[test]
fn accept_retries_after_running_out_of_descriptors() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let (mut child, log, addr, _dir) = serve_logging(&one_loop(&redis), "");
    let pid = child.id();
    let limits = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("limits");
    let (mut soft_before, mut hard_before) = (0, 0);
    // No descriptor may be made: every new one would be at or past this.
    let soft = lowest_free_fd(pid);
    rlimit::prlimit(
        pid as i32,
        rlimit::Resource::NOFILE,
        Some((soft, limits.1)),
        Some((&mut soft_before, &mut hard_before)),
    )
    .expect("lower the server's limit");
    let mut waiting: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.send(b"GET /healthz HTTP/1.1\r\n\r\n");
            c
        })
        .collect();
    wait_log(&log, "accept failed");
    rlimit::prlimit(
        pid as i32,
        rlimit::Resource::NOFILE,
        Some((soft_before, hard_before)),
        None,
    )
    .expect("restore the server's limit");
    // No new connection arrives: only a retry serves them.
    for c in &mut waiting {
        c.read().assert(200, 0, "ok", "keep-alive");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Issue 7 (8): with `max_connections` past what the open-file limit
/// fits, idle connections alone made the process run out of descriptors.
/// Start-up now warns and clamps `max_connections` to what fits.
#[test]
fn max_connections_is_clamped_to_the_open_file_limit() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let (mut child, log, addr, _dir) = serve_logging(
        &{
            let mut c = one_loop(&redis);
            c.server.max_connections = 100_000;
            c
        },
        "ulimit -n 256 && ",
    );
    let line = wait_log(&log, "does not fit the open-file limit");
    let fits: usize = line
        .split("using max_connections = ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no clamped value in {line:?}"));
    assert!(fits > 0 && fits < 256, "{line}");
    // Exactly `fits` connections are served; the next is closed at once,
    // and the process never ran out of descriptors.
    let mut held: Vec<Client> = (0..fits).map(|_| Client::connect(addr)).collect();
    for c in &mut held {
        c.get("/healthz", None).assert(200, 0, "ok", "keep-alive");
    }
    let mut over = Client::connect(addr);
    over.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(over.try_read().is_none(), "served past the clamped limit");
    assert!(log.try_iter().all(|l| !l.contains("accept failed")));
    let _ = child.kill();
    let _ = child.wait();
}
