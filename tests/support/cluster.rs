//! A private Redis Cluster: three masters (`redis-server --cluster-enabled
//! yes`) on free loopback ports, joined by `redis-cli --cluster create`,
//! ready when every node says `cluster_state:ok` and agrees on who serves
//! each slot; each server killed by PID on drop.
//!
//! The test reads the cluster with redis-rs's own `ClusterClient`, which
//! routes by itself: an independent check of the server's routing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, FAR, IO_TIMEOUT};

/// A cluster node's port, with its bus port (port + 10000) free too, both
/// below the ephemeral range (32768+), so no outgoing connection takes the
/// bus port between this check and the server's bind.
fn free_cluster_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        let port = 20_000 + (h.finish() % 2_700) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// One master.
pub struct ClusterNode {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl ClusterNode {
    fn spawn(dir: &Path) -> Option<ClusterNode> {
        let port = free_cluster_port();
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            // The masters that are up keep serving their slots while one
            // is paused (a test without replicas).
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None; // the port was taken meanwhile
            }
            if super::ping(port) {
                return Some(ClusterNode { child, port, dir });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection to this node alone.
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let conn = client
            .get_connection_with_timeout(IO_TIMEOUT)
            .expect("redis connection");
        conn.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        conn
    }

    /// Runs one command on this node alone.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis {} {args:?}: {e}", self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // A node a test stopped (SIGSTOP) is killed all the same.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-master Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let mut tries = 0;
            let node = loop {
                tries += 1;
                if let Some(n) = ClusterNode::spawn(dir.path()) {
                    break n;
                }
                assert!(tries < 5, "a cluster node did not start");
            };
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        eventually(Duration::from_secs(30), "the cluster is ok", || {
            cluster.nodes.iter().all(|n| {
                let info: String = n.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
            }) && cluster.agree()
        });
        cluster
    }

    /// Every node names the same master for one slot of each master.
    fn agree(&self) -> bool {
        let seen: Vec<Vec<u16>> = self
            .nodes
            .iter()
            .map(|n| (0..3).map(|i| self.owner_port_by(n, i * 5461)).collect())
            .collect();
        seen.windows(2).all(|w| w[0] == w[1])
    }

    fn owner_port_by(&self, asked: &ClusterNode, slot: u16) -> u16 {
        let slots: redis::Value = asked.cmd(&["CLUSTER", "SLOTS"]);
        let redis::Value::Array(ranges) = slots else {
            return 0;
        };
        for r in ranges {
            let redis::Value::Array(parts) = r else {
                continue;
            };
            if let [redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(m), ..] =
                parts.as_slice()
            {
                if (*a..=*b).contains(&i64::from(slot)) {
                    if let Some(redis::Value::Int(p)) = m.get(1) {
                        return *p as u16;
                    }
                }
            }
        }
        0
    }

    /// The seed list for `redis.nodes`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The node serving `key`, as the cluster itself says
    /// (`CLUSTER KEYSLOT`, then `CLUSTER SLOTS`).
    pub fn node_of(&self, key: &str) -> &ClusterNode {
        let slot: i64 = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]);
        let port = self.owner_port_by(&self.nodes[0], slot as u16);
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// Runs one command, routed by redis-rs's cluster client.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::cluster::ClusterClient::builder(self.urls())
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            .build()
            .expect("cluster client");
        let mut conn = client.get_connection().expect("cluster connection");
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut conn)
            .unwrap_or_else(|e| panic!("redis cluster {args:?}: {e}"))
    }

    /// As `RedisServer::seed`: stock keys and the event JSON, the way
    /// other tools write them.
    pub fn seed(&self, event_id: &str, goods: &[(&str, i64)]) {
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
        let event = serde_json::json!({"event_id": event_id, "name": "test", "start_at": 0, "end_at": FAR, "goods": list});
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

    /// Goods ids, `per_node` of them served by each master, found by
    /// trying names: the test's goods cover every master.
    pub fn goods_on_every_master(&self, event_id: &str, per_node: usize) -> Vec<String> {
        let mut picked: Vec<Vec<String>> = vec![Vec::new(); self.nodes.len()];
        for i in 0.. {
            if picked.iter().all(|p| p.len() == per_node) {
                break;
            }
            let g = format!("g{i}");
            let owner = self
                .node_of(&format!("seckill:{{{event_id}:{g}}}:stock"))
                .port;
            let at = self
                .nodes
                .iter()
                .position(|n| n.port == owner)
                .expect("owner is a node");
            if picked[at].len() < per_node {
                picked[at].push(g);
            }
        }
        // Interleaved, so goods i % 3 are on three different masters.
        (0..per_node)
            .flat_map(|k| picked.iter().map(move |p| p[k].clone()))
            .collect()
    }

    /// A node's cluster id (`CLUSTER MYID`).
    pub fn id_of(&self, node: &ClusterNode) -> String {
        node.cmd(&["CLUSTER", "MYID"])
    }

    /// Starts moving `key`'s slot to `to` and moves every key of it there,
    /// leaving the slot in its migrating state: its old master now answers
    /// `ASK` for those keys. Returns the slot.
    pub fn move_keys_of(&self, key: &str, to: &ClusterNode) -> u16 {
        let from = self.node_of(key);
        assert_ne!(from.port, to.port, "the slot is already there");
        let slot: i64 = from.cmd(&["CLUSTER", "KEYSLOT", key]);
        let slot_s = slot.to_string();
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        let _: () = to.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        let _: () = from.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        let keys: Vec<String> = from.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "1000"]);
        assert!(!keys.is_empty(), "keys in slot {slot}");
        let port = to.port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let _: () = from.cmd(&args);
        slot as u16
    }

    /// Ends the move of `slot` to `to`: every node is told its new owner,
    /// so the old master answers `MOVED`.
    pub fn finish_move(&self, slot: u16, to: &ClusterNode) {
        let to_id = self.id_of(to);
        let slot_s = slot.to_string();
        // The new owner first, as redis-cli --cluster does.
        let _: () = to.cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        for n in self.nodes.iter().filter(|n| n.port != to.port) {
            let _: () = n.cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
    }

    /// `cmdstat_<name>` calls on one node (`INFO commandstats`).
    pub fn calls(node: &ClusterNode, name: &str) -> u64 {
        let info: String = node.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{name}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}
