//! Test harness: a private `redis-server`, `seckill serve` child processes,
//! and a raw HTTP client. Real sockets and real processes only.
//!
//! - `RedisServer`: a free loopback port, its own temp dir, `--save ""`, ready
//!   when PING answers; killed and waited for by PID on drop. The free-port
//!   trick races with other tests, so start-up is retried on a bind failure.
//! - `Seckill`: the real binary with a config written to a temp dir; its
//!   ports come from the line it prints on stdout (it binds port 0).
//! - `Client`: one TCP connection with read and write timeouts, so a bug
//!   fails the test instead of hanging it.
//! - `pg::PgServer`, `haproxy::Haproxy`: a private PostgreSQL and a private
//!   haproxy (the shipped `deploy/haproxy.cfg`), each stopped by PID.
//! - `cluster::RedisCluster`: a private three-master Redis Cluster.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod cluster;

/// One `#[test]` per deduct strategy (SPEC §3.1) for each named function
/// `fn name(strategy: Strategy)`: `lua::name` and `sliding_lock::name`.
#[macro_export]
macro_rules! with_each_strategy {
    ($($name:ident),* $(,)?) => {
        mod lua {
            $(#[test]
            fn $name() {
                super::$name(seckill::config::Strategy::Lua)
            })*
        }
        mod sliding_lock {
            $(#[test]
            fn $name() {
                super::$name(seckill::config::Strategy::SlidingLock)
            })*
        }
    };
}
pub mod haproxy;
pub mod pg;

use seckill::client::{self, ReadError};
use seckill::config::{Config, QueueConfig, SHOP_QUEUE};

/// Every socket read or write in a test gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const SECRET: &str = "test-secret";
pub const ADMIN_KEY: &str = "test-admin-key";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private redis-server.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    // Keeps an AOF (fsync always) in its dir, reloaded on `restart`.
    aof: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A server that keeps its data in an AOF, so `restart` brings it back.
    pub fn start_with_aof() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = Self::spawn(dir.path(), port, aof) {
                return RedisServer {
                    child,
                    port,
                    dir,
                    aof,
                };
            }
        }
        panic!("redis-server did not start; log:\n{}", read_log(dir.path()));
    }

    fn spawn(dir: &Path, port: u16, aof: bool) -> Option<Child> {
        let (appendonly, fsync) = if aof {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                appendonly,
                "--appendfsync",
                fsync,
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None; // exited: most likely the port was taken
            }
            if ping(port) {
                return Some(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Restarts on the same port (after `stop`): empty, or with what its AOF
    /// kept.
    pub fn restart(&mut self) {
        let child = Self::spawn(self.dir.path(), self.port, self.aof).unwrap_or_else(|| {
            panic!(
                "redis-server did not restart; log:\n{}",
                read_log(self.dir.path())
            )
        });
        self.child = child;
    }

    /// Stops it (SIGKILL) and waits.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let conn = client
            .get_connection_with_timeout(IO_TIMEOUT)
            .expect("redis connection");
        conn.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        conn
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// A server with event e1 holding `goods` (id, stock), open from 0 to
    /// `FAR`.
    pub fn with_e1(goods: &[(&str, i64)]) -> RedisServer {
        let redis = RedisServer::start();
        redis.seed("e1", goods, 0, FAR);
        redis
    }

    /// Writes an event the way other tools do (SPEC §3): stock keys and the
    /// event JSON, without going through the admin API.
    pub fn seed(&self, event_id: &str, goods: &[(&str, i64)], start_at: u64, end_at: u64) {
        let mut list = Vec::new();
        for (g, stock) in goods {
            let _: () = self.cmd(&[
                "SET",
                &format!("seckill:{{{event_id}:{g}}}:stock"),
                &stock.to_string(),
            ]);
            list.push(
                serde_json::json!({"goods_id": g, "name": g, "price_cents": 100, "stock": stock}),
            );
        }
        let event = serde_json::json!({"event_id": event_id, "name": "test", "start_at": start_at, "end_at": end_at, "goods": list});
        let _: () = self.cmd(&["HSET", "seckill:events", event_id, &event.to_string()]);
        let _: i64 = self.cmd(&["PUBLISH", "seckill:events:changed", "seeded"]);
    }

    pub fn stock(&self, e: &str, g: &str) -> Option<i64> {
        self.cmd(&["GET", &format!("seckill:{{{e}:{g}}}:stock")])
    }

    pub fn hlen_buyers(&self, e: &str, g: &str) -> i64 {
        self.cmd(&["HLEN", &format!("seckill:{{{e}:{g}}}:buyers")])
    }

    pub fn xlen_orders(&self, e: &str, g: &str) -> i64 {
        self.cmd(&["XLEN", &format!("seckill:{{{e}:{g}}}:orders")])
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `seckill serve` child process.
pub struct Seckill {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

/// Far in the future: the `end_at` of events that do not end in a test.
pub const FAR: u64 = 4_102_444_800;

/// The config every test server starts from, as the server's own typed
/// `Config`: both listeners on loopback port 0, this harness's secret and
/// admin key, `redis`, two loops, an unpaced queue (rate 0) and one node
/// holding the whole stock (nodes 1, factor 1). A test changes the fields
/// it cares about; `Seckill::start` writes it out as TOML.
pub fn config(redis: &RedisServer) -> Config {
    let mut c = base_config();
    c.redis.url = redis.url();
    c
}

/// As `config`, on a Redis Cluster (`redis.nodes`).
pub fn cluster_config(cluster: &cluster::RedisCluster) -> Config {
    let mut c = base_config();
    c.redis.nodes = cluster.urls();
    c
}

/// Runs `seckill check --event e1 ARGS` with `config`: exit code, and
/// stdout then stderr.
pub fn check(config: &Config, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(config).expect("toml")).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args(["check", "--event", "e1", "--config"])
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("seckill check runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn base_config() -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".parse().expect("addr");
    c.server.threads = 2;
    c.admin.bind = "127.0.0.1:0".parse().expect("addr");
    c.admin.key = ADMIN_KEY.to_string();
    c.auth.secret = SECRET.to_string();
    shop(&mut c).rate = 0;
    c.stock.nodes = 1;
    c.stock.factor = 1.0;
    c
}

/// One of three nodes sharing `redis`, shares exact (`factor` 1.0 is the
/// test default): `ceil(stock / 3)` each.
pub fn one_of_three(redis: &RedisServer) -> Seckill {
    let mut c = config(redis);
    c.stock.nodes = 3;
    Seckill::start_ready(&c)
}

/// The `[queue.shop]` section of `c`.
pub fn shop(c: &mut Config) -> &mut QueueConfig {
    c.queue.entry(SHOP_QUEUE.to_string()).or_default()
}

/// Polls `ready` (every 5 ms) until it says true; fails the test, naming
/// `what`, after `within`. The one way tests wait: for a state, never for
/// a time.
pub fn eventually(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Seckill {
    /// Starts, and waits until it serves event e1.
    pub fn start_ready(config: &Config) -> Seckill {
        let s = Seckill::start(config);
        s.wait_for_event("e1", Duration::from_secs(3));
        s
    }

    /// Starts `seckill serve` with `config`.
    pub fn start(config: &Config) -> Seckill {
        Seckill::start_text(&toml::to_string(config).expect("config as TOML"))
    }

    /// Starts `seckill serve` with a config file holding `config_text`.
    pub fn start_text(config_text: &str) -> Seckill {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config_text).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_seckill"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn seckill");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(IO_TIMEOUT).unwrap_or_default();
        let addrs: Vec<SocketAddr> = line
            .split("http://")
            .skip(1)
            .filter_map(|s| s.split([' ', ')', '\n']).next())
            .filter_map(|s| s.parse().ok())
            .collect();
        if addrs.len() != 2 {
            let _ = child.kill();
            panic!("seckill did not start: printed {line:?}");
        }
        Seckill {
            child,
            addr: addrs[0],
            admin: addrs[1],
            dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A keep-alive connection that is, once this returns, the only client
    /// connection the server holds. Connections opened and closed before
    /// (by `start_ready`, say) are closed on the server's side only when it
    /// next reads them, so a test that counts against `max_connections`
    /// right away would race with them.
    pub fn sole_client(&self) -> Client {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let mut c = self.client();
            c.send(&raw("GET", "/metrics", None, None, ""));
            // Refused (the server is still full of closed connections):
            // try again.
            while let Some(r) = c.try_read() {
                let text = String::from_utf8_lossy(&r.body).into_owned();
                if metric_value(&text, "seckill_open_connections") == 1.0 {
                    return c;
                }
                assert!(
                    Instant::now() < deadline,
                    "the server never held this connection alone"
                );
                std::thread::sleep(Duration::from_millis(5));
                c.send(&raw("GET", "/metrics", None, None, ""));
            }
            assert!(Instant::now() < deadline, "no connection was accepted");
        }
    }

    pub fn admin_client(&self) -> Client {
        Client::connect(self.admin)
    }

    /// One admin call with the right key.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let auth = format!("Bearer {ADMIN_KEY}");
        self.admin_client().request(method, path, Some(&auth), body)
    }

    /// Waits until `/event/info` shows the event; fails after `within`.
    pub fn wait_for_event(&self, event_id: &str, within: Duration) {
        let path = format!("/event/info?event_id={event_id}");
        eventually(
            within,
            &format!("the server shows event {event_id}"),
            || self.client().get(&path, None).code() == 0,
        );
    }

    /// The `/metrics` text.
    /// The `/metrics` text. A test near `max_connections` may find its
    /// connection closed unanswered while the server has not yet seen the
    /// previous scrape's close (its slot is still held): that is retried.
    pub fn metrics(&self) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let mut c = self.client();
            c.send(&raw("GET", "/metrics", None, None, ""));
            if let Some(r) = c.try_read() {
                return String::from_utf8_lossy(&r.body).into_owned();
            }
            assert!(Instant::now() < deadline, "/metrics never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The value of metric `name` (full name, labels included); 0 if absent.
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name)
    }

    /// Waits until a line of `/metrics` equals `line`; fails after
    /// `within`, showing the metrics.
    pub fn wait_metric(&self, line: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let text = self.metrics();
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no line {line:?} in /metrics within {within:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit, returning its status code.
    pub fn terminate(self) -> Option<i32> {
        self.sigterm();
        self.wait_exit()
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit, returning its status code.
    pub fn wait_exit(mut self) -> Option<i32> {
        let status = self.child.wait().ok()?;
        status.code()
    }
}

impl Drop for Seckill {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Holds the worker on one attempt: pauses every script on `redis` (for
/// 15 s at most, should the test fail first), sends `uid`'s attempt for
/// e1/`goods` and waits until `/metrics` shows the worker took its token.
/// The worker then waits on Redis until `release_worker`. Returns the
/// attempt's connection, whose answer comes after the release. May be used
/// again on the same server once released.
pub fn hold_worker(redis: &RedisServer, s: &Seckill, uid: &str, goods: &str) -> Client {
    let spent = s.metric("seckill_tokens_spent_total");
    let _: () = redis.cmd(&["CLIENT", "PAUSE", "15000", "WRITE"]);
    let mut c = s.client();
    c.send(&buy_bytes(uid, "e1", goods, ""));
    s.wait_metric(
        &format!("seckill_tokens_spent_total {}", spent + 1.0),
        Duration::from_secs(5),
    );
    c
}

/// Lets the worker held by `hold_worker` go on.
pub fn release_worker(redis: &RedisServer) {
    let _: () = redis.cmd(&["CLIENT", "UNPAUSE"]);
}

/// The value of metric `name` (full name, labels included) in a
/// `/metrics` text; 0 if absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A user token, minted the way `seckill token` does.
pub fn token(uid: &str) -> String {
    token_exp(uid, now_s() + 3600)
}

pub fn token_exp(uid: &str, exp: u64) -> String {
    seckill::auth::Signer::new(SECRET.as_bytes()).mint(uid, exp)
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<&client::Response<'_>> for Response {
    fn from(r: &client::Response<'_>) -> Self {
        Response {
            status: r.status,
            headers: r
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: r.body.to_vec(),
        }
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn code(&self) -> i64 {
        self.json()["code"].as_i64().expect("code")
    }

    /// Asserts status, code, msg and the Connection header at once.
    pub fn assert(&self, status: u16, code: i64, msg: &str, connection: &str) {
        let j = self.json();
        assert_eq!(
            (
                self.status,
                j["code"].as_i64(),
                j["msg"].as_str(),
                self.header("connection")
            ),
            (status, Some(code), Some(msg), Some(connection)),
            "response: {self:?} body {j}"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// One client connection with timeouts.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// A client on a connected stream (with the test's read timeout).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A connection, or None when it cannot be made.
    pub fn try_connect(addr: SocketAddr) -> Option<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
        Some(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `bytes`; None when the connection is gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> Option<()> {
        self.stream.write_all(bytes).ok()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Reads one response; None if the server closed first. Read with
    /// the crate's own reader (`seckill::client`), kept as owned parts.
    pub fn try_read(&mut self) -> Option<Response> {
        let (resp, len) = match client::read(&mut self.stream, &mut self.buf) {
            Ok(r) => (Response::from(&r), r.len),
            Err(ReadError::Closed | ReadError::Reset) => return None,
            Err(e) => panic!("read response: {e:?}"),
        };
        self.buf.drain(..len);
        Some(resp)
    }

    pub fn read(&mut self) -> Response {
        self.try_read()
            .expect("a response before the server closed")
    }

    /// True when the server has closed the connection (EOF, or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
            || matches!(self.stream.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        self.send(&raw(method, path, auth, body, ""));
        self.read()
    }

    pub fn get(&mut self, path: &str, auth: Option<&str>) -> Response {
        self.request("GET", path, auth, None)
    }

    /// `PUT /shop/cart/add` for `uid` (token minted here).
    pub fn buy(&mut self, uid: &str, event_id: &str, goods_id: &str) -> Response {
        let body = format!(r#"{{"event_id":"{event_id}","goods_id":"{goods_id}"}}"#);
        self.request(
            "PUT",
            "/shop/cart/add",
            Some(&format!("Bearer {}", token(uid))),
            Some(&body),
        )
    }
}

/// A request's bytes; `extra` is more header lines, each ending in \r\n.
pub fn raw(
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
    extra: &str,
) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}");
    if let Some(a) = auth {
        s.push_str(&format!("Authorization: {a}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "PUT" || method == "POST" {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// A cart-add request's bytes for `uid`.
pub fn buy_bytes(uid: &str, event_id: &str, goods_id: &str, extra: &str) -> Vec<u8> {
    let body = format!(r#"{{"event_id":"{event_id}","goods_id":"{goods_id}"}}"#);
    raw(
        "PUT",
        "/shop/cart/add",
        Some(&format!("Bearer {}", token(uid))),
        Some(&body),
        extra,
    )
}

/// A `seckill sink` child process.
pub struct SinkProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl SinkProcess {
    /// Starts `seckill sink --name NAME` with `config`.
    pub fn start(config: &Config, name: &str) -> SinkProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml::to_string(config).expect("config as TOML")).expect("write");
        let child = Command::new(env!("CARGO_BIN_EXE_seckill"))
            .arg("sink")
            .arg("--config")
            .arg(&path)
            .args(["--name", name])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn seckill sink");
        SinkProcess { child, _dir: dir }
    }

    /// SIGKILL: no batch finished, nothing acknowledged after this.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
