//! Beside the path: SPEC §5 as typed structs.
//!
//! In: the TOML text of `config.toml` (or `--config PATH` / `SECKILL_CONFIG`).
//! Out: a `Config` whose sections are handed by value to each stage at start.
//! Invariants: every key is optional and defaults to the SPEC's value; an
//! unknown key or a wrong type is refused, and the message names the key
//! (`server.threads: invalid type ...`) and the file.
//! Never: read at request time; there are no globals.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listener and HTTP limits.
    pub server: ServerConfig,
    /// `[admin]`: the admin listener.
    pub admin: AdminConfig,
    /// `[auth]`: token secret.
    pub auth: AuthConfig,
    /// `[redis]`: where stock lives.
    pub redis: RedisConfig,
    /// `[breaker]`: Redis circuit breaker.
    pub breaker: BreakerConfig,
    /// `[queue.<name>]`: hijack queues by name; the sale path uses `shop`.
    pub queue: BTreeMap<String, QueueConfig>,
    /// `[stock]`: the memory share formula.
    pub stock: StockConfig,
    /// `[blacklist]`: uids answered 4003.
    pub blacklist: BlacklistConfig,
    /// `[limits]`: per-uid and per-IP rates (4029).
    pub limits: LimitsConfig,
    /// `[deduct]`: how the worker deducts (SPEC §3.1).
    pub deduct: DeductConfig,
    /// `[sink]`: orders from Redis into PostgreSQL (SPEC §9).
    pub sink: SinkConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener address.
    pub bind: SocketAddr,
    /// Event-loop threads; 0 = one per core.
    pub threads: usize,
    /// Open connections at most, across all loops.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// A whole request must arrive within this.
    pub read_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout_ms: u64,
    /// Longest wait in the hijack queue.
    pub request_timeout_ms: u64,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin listener address.
    pub bind: SocketAddr,
    /// Bearer key; empty refuses every admin request.
    pub key: String,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC-SHA256 key of user tokens; empty refuses to start.
    pub secret: String,
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Redis Cluster seed nodes (SPEC §5), `redis://host:port` each;
    /// non-empty: cluster mode, and `url` is not used.
    pub nodes: Vec<String>,
    /// Connect, read and write timeout of every Redis call.
    pub timeout_ms: u64,
}

/// `[breaker]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Redis failures in a row that open the breaker.
    pub failures: u32,
    /// While open, one attempt is let through this often.
    pub probe_ms: u64,
}

/// `[queue.<name>]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Backend name; only `"memory"` exists.
    #[serde(rename = "type")]
    pub kind: String,
    /// Bound of the fan-in queue.
    pub size: usize,
    /// Tokens per second the worker spends; 0 = unlimited.
    pub rate: u64,
    /// Tokens the bucket holds at most.
    pub burst: u64,
}

/// `[stock]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StockConfig {
    /// Nodes sharing the stock.
    pub nodes: u64,
    /// Over-provisioning factor of each node's share.
    pub factor: f64,
}

/// `[blacklist]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BlacklistConfig {
    /// One uid a line; empty = no blacklist.
    pub file: String,
}

/// `[limits]` (SPEC §5): token buckets against scalpers; 0 = off.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Cart-add attempts per uid per second on this node.
    pub per_user_per_s: u64,
    /// Requests per client IP per second on this node's public listener.
    pub per_ip_per_s: u64,
    /// Bucket depth: this many requests at once, then the rate.
    pub burst: u64,
    /// The client IP is the last `X-Forwarded-For` address.
    pub trust_forwarded_for: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_user_per_s: 0,
            per_ip_per_s: 0,
            burst: 5,
            trust_forwarded_for: false,
        }
    }
}

/// `[deduct]` (SPEC §3.1).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DeductConfig {
    /// `"lua"` (the default) or `"sliding-lock"`.
    pub strategy: Strategy,
}

/// How the worker deducts.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One atomic script per attempt, pipelined (`deduct.lua`).
    #[default]
    Lua,
    /// The course's sliding stock-number lock (`store::sliding`).
    SlidingLock,
}

/// `[sink]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// PostgreSQL URL; empty = no sink.
    pub url: String,
    /// Orders per transaction at most.
    pub batch: usize,
    /// An order pending this long at a dead consumer is claimed by another.
    pub claim_idle_ms: u64,
    /// How often the compensation scan runs.
    pub reconcile_s: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            url: String::new(),
            batch: 1000,
            claim_idle_ms: 30_000,
            reconcile_s: 60,
        }
    }
}

impl SinkConfig {
    /// `claim_idle_ms`.
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }

    /// `reconcile_s`.
    pub fn reconcile_every(&self) -> Duration {
        Duration::from_secs(self.reconcile_s)
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut queue = BTreeMap::new();
        queue.insert(SHOP_QUEUE.to_string(), QueueConfig::default());
        Config {
            server: ServerConfig::default(),
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            redis: RedisConfig::default(),
            breaker: BreakerConfig::default(),
            queue,
            stock: StockConfig::default(),
            blacklist: BlacklistConfig::default(),
            limits: LimitsConfig::default(),
            deduct: DeductConfig::default(),
            sink: SinkConfig::default(),
        }
    }
}

/// The queue the sale path uses: `[queue.shop]`.
pub const SHOP_QUEUE: &str = "shop";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: 0,
            max_connections: 100_000,
            max_header_bytes: 8192,
            max_body_bytes: 4096,
            read_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            request_timeout_ms: 5000,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            key: String::new(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".to_string(),
            nodes: Vec::new(),
            timeout_ms: 500,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            probe_ms: 1000,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            kind: "memory".to_string(),
            size: 10_000,
            rate: 5000,
            burst: 100,
        }
    }
}

impl Default for StockConfig {
    fn default() -> Self {
        StockConfig {
            nodes: 1,
            factor: 1.5,
        }
    }
}

impl ServerConfig {
    /// `read_timeout_ms` as a `Duration`.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
    /// `keepalive_timeout_ms` as a `Duration`.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }
    /// `request_timeout_ms` as a `Duration`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl RedisConfig {
    /// `timeout_ms` as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Where Redis is: the cluster when `nodes` is set, else `url`.
    pub fn endpoint(&self) -> crate::store::Endpoint {
        if self.nodes.is_empty() {
            crate::store::Endpoint::Single(self.url.clone())
        } else {
            crate::store::Endpoint::Cluster(self.nodes.clone())
        }
    }
}

/// Why a configuration could not be used. The message names the file and,
/// where there is one, the key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        Config::parse(&text)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            // toml's own message carries the line and a caret; keep its first
            // useful line so the key and the cause stand together.
            let inner = e.inner().message().to_string();
            if key == "." || key.is_empty() {
                ConfigError(inner)
            } else {
                ConfigError(format!("{key}: {inner}"))
            }
        })?;
        config.check()?;
        Ok(config)
    }

    /// Range checks serde cannot express (SPEC §5): every number has a
    /// floor that keeps the server working (a timeout of 0 would make every
    /// Redis call fail at once) and a ceiling that keeps time arithmetic
    /// and allocations sane, and the message names the key and the range.
    fn check(&self) -> Result<(), ConfigError> {
        const HOUR_MS: u64 = 3_600_000;
        const DAY_MS: u64 = 24 * HOUR_MS;
        let s = &self.server;
        let b = &self.breaker;
        let mut ranges: Vec<(String, u64, u64, u64)> = vec![
            ("server.threads".into(), s.threads as u64, 0, 1024),
            (
                "server.max_connections".into(),
                s.max_connections as u64,
                1,
                10_000_000,
            ),
            (
                "server.max_header_bytes".into(),
                s.max_header_bytes as u64,
                64,
                1 << 20,
            ),
            (
                "server.max_body_bytes".into(),
                s.max_body_bytes as u64,
                64,
                1 << 20,
            ),
            (
                "server.read_timeout_ms".into(),
                s.read_timeout_ms,
                1,
                HOUR_MS,
            ),
            (
                "server.keepalive_timeout_ms".into(),
                s.keepalive_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "server.request_timeout_ms".into(),
                s.request_timeout_ms,
                1,
                HOUR_MS,
            ),
            ("redis.timeout_ms".into(), self.redis.timeout_ms, 1, HOUR_MS),
            (
                "breaker.failures".into(),
                u64::from(b.failures),
                1,
                1_000_000,
            ),
            ("breaker.probe_ms".into(), b.probe_ms, 1, HOUR_MS),
            ("stock.nodes".into(), self.stock.nodes, 1, 100_000),
            ("sink.batch".into(), self.sink.batch as u64, 1, 100_000),
            (
                "sink.claim_idle_ms".into(),
                self.sink.claim_idle_ms,
                1,
                DAY_MS,
            ),
            ("sink.reconcile_s".into(), self.sink.reconcile_s, 1, 86_400),
            (
                "limits.per_user_per_s".into(),
                self.limits.per_user_per_s,
                0,
                1_000_000,
            ),
            (
                "limits.per_ip_per_s".into(),
                self.limits.per_ip_per_s,
                0,
                1_000_000,
            ),
            ("limits.burst".into(), self.limits.burst, 1, 1_000_000),
        ];
        for (name, q) in &self.queue {
            ranges.push((format!("queue.{name}.size"), q.size as u64, 1, 10_000_000));
            ranges.push((format!("queue.{name}.rate"), q.rate, 0, 100_000_000));
            ranges.push((format!("queue.{name}.burst"), q.burst, 1, 100_000_000));
        }
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError(format!(
                    "{key}: {value} is out of range (allowed: {min} to {max})"
                )));
            }
        }
        for node in &self.redis.nodes {
            use redis::IntoConnectionInfo;
            let info = node
                .as_str()
                .into_connection_info()
                .map_err(|e| ConfigError(format!("redis.nodes: {node}: {e}")))?;
            if !matches!(info.addr(), redis::ConnectionAddr::Tcp(..)) {
                return Err(ConfigError(format!(
                    "redis.nodes: {node}: a cluster node is redis://host:port"
                )));
            }
            if info.redis_settings().db() != 0 {
                return Err(ConfigError(format!(
                    "redis.nodes: {node}: a Redis Cluster has only database 0"
                )));
            }
        }
        let factor = self.stock.factor;
        if !(factor.is_finite() && (1.0..=1000.0).contains(&factor)) {
            return Err(ConfigError(format!(
                "stock.factor: {factor} is out of range (allowed: 1.0 to 1000.0)"
            )));
        }
        Ok(())
    }

    /// The `[queue.shop]` section (its defaults when the file has none).
    pub fn shop_queue(&self) -> QueueConfig {
        self.queue.get(SHOP_QUEUE).cloned().unwrap_or_default()
    }

    /// `[blacklist] file`, when set.
    pub fn blacklist_path(&self) -> Option<PathBuf> {
        (!self.blacklist.file.is_empty()).then(|| PathBuf::from(&self.blacklist.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_spec_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.bind.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.bind.to_string(), "127.0.0.1:8081");
        assert_eq!(c.server.request_timeout_ms, 5000);
        assert_eq!(c.shop_queue().rate, 5000);
        assert_eq!(c.breaker.failures, 5);
    }

    #[test]
    fn the_shipped_config_toml_is_the_defaults() {
        let text = include_str!("../config.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_refused_naming_it() {
        let e = Config::parse("[server]\nthreadz = 2\n").unwrap_err().0;
        assert!(e.contains("threadz"), "{e}");
        assert!(e.starts_with("server"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused_naming_it() {
        let e = Config::parse("[serverr]\nthreads = 2\n").unwrap_err().0;
        assert!(e.contains("serverr"), "{e}");
    }

    #[test]
    fn wrong_type_is_refused_naming_the_key() {
        let e = Config::parse("[server]\nthreads = \"four\"\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("server.threads"), "{e}");
        let e = Config::parse("[queue.shop]\nrate = -1\n").unwrap_err().0;
        assert!(e.starts_with("queue.shop.rate"), "{e}");
        let e = Config::parse("[server]\nbind = \"nowhere\"\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("server.bind"), "{e}");
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let c = Config::parse("[queue.shop]\nrate = 0\n").unwrap();
        let q = c.shop_queue();
        assert_eq!(
            (q.rate, q.size, q.burst, q.kind.as_str()),
            (0, 10_000, 100, "memory")
        );
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_key() {
        // Issue 7 (9): `redis.timeout_ms = 0` used to start a server that
        // never reached Redis. Every numeric key is range-checked.
        let table = [
            ("[server]\nthreads = 5000", "server.threads"),
            ("[server]\nmax_connections = 0", "server.max_connections"),
            ("[server]\nmax_header_bytes = 10", "server.max_header_bytes"),
            ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
            ("[server]\nread_timeout_ms = 0", "server.read_timeout_ms"),
            (
                "[server]\nkeepalive_timeout_ms = 0",
                "server.keepalive_timeout_ms",
            ),
            (
                "[server]\nrequest_timeout_ms = 0",
                "server.request_timeout_ms",
            ),
            (
                "[server]\nrequest_timeout_ms = 9223372036854775807",
                "server.request_timeout_ms",
            ),
            ("[redis]\ntimeout_ms = 0", "redis.timeout_ms"),
            ("[breaker]\nfailures = 0", "breaker.failures"),
            ("[breaker]\nprobe_ms = 0", "breaker.probe_ms"),
            ("[stock]\nnodes = 0", "stock.nodes"),
            ("[stock]\nfactor = 0.5", "stock.factor"),
            ("[stock]\nfactor = nan", "stock.factor"),
            ("[queue.shop]\nsize = 0", "queue.shop.size"),
            ("[queue.shop]\nburst = 0", "queue.shop.burst"),
            ("[queue.other]\nsize = 0", "queue.other.size"),
        ];
        for (text, key) in table {
            let e = Config::parse(text).unwrap_err().0;
            assert!(e.starts_with(key), "{text:?}: {e}");
            assert!(e.contains("out of range"), "{text:?}: {e}");
        }
        // The edges themselves are allowed.
        let c = Config::parse(
            "[redis]\ntimeout_ms = 1\n[stock]\nfactor = 1.0\n[queue.shop]\nrate = 0\n",
        )
        .unwrap();
        assert_eq!(c.redis.timeout_ms, 1);
    }

    #[test]
    fn redis_nodes_choose_cluster_mode_and_must_be_tcp_urls_of_db_0() {
        let c = Config::parse("[redis]\nnodes = []\n").unwrap();
        assert_eq!(
            c.redis.endpoint(),
            crate::store::Endpoint::Single(c.redis.url.clone())
        );
        let c = Config::parse(
            "[redis]\nnodes = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.redis.endpoint(),
            crate::store::Endpoint::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        for bad in [
            "nope",
            "redis://127.0.0.1:7000/3",
            "redis+unix:///tmp/r.sock",
        ] {
            let e = Config::parse(&format!("[redis]\nnodes = [\"{bad}\"]\n"))
                .unwrap_err()
                .0;
            assert!(e.starts_with("redis.nodes: "), "{bad}: {e}");
        }
    }

    #[test]
    fn a_config_written_out_reads_back_the_same() {
        // Tests build a `Config` in Rust and hand the server its TOML.
        let mut c = Config::default();
        c.server.threads = 3;
        c.stock.factor = 1.25;
        c.queue.insert("other".into(), QueueConfig::default());
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn missing_file_is_refused_naming_the_file() {
        let e = Config::load(Path::new("/nonexistent/seckill.toml"))
            .unwrap_err()
            .0;
        assert!(e.contains("/nonexistent/seckill.toml"), "{e}");
    }
}
