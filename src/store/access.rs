//! The one door to Redis: a single server or a Redis Cluster, the same
//! calls (SPEC §3, §5 `redis.nodes`).
//!
//! Every Redis user — the deducter, the lookup thread, the catalog, the
//! admin service, the sink, `seckill check` — holds a [`Redis`] and asks it
//! `query` (one command) or `round_trip` (a pipeline). On a single server
//! that is one [`LazyConn`]. On a cluster it is one `LazyConn` per master
//! and the slot map (`CLUSTER SLOTS`): each command goes to the master
//! serving its key's slot, a pipeline is split per master, written to
//! every master first and then read, all against one deadline. All keys of
//! a goods share the hash tag `{E:G}`, so each deduct is still one atomic
//! script on one master; a pipeline across goods is not atomic as a whole,
//! and never was.
//!
//! Redirections: a `MOVED` or `ASK` reply means the command did not run,
//! so it is sent once more to the node the reply names (after `ASKING` for
//! `ASK`), within the same deadline, and a `MOVED` has the map read again
//! before the next trip. A node that fails at the connection level also
//! has the map read again (at most every `REREAD_EVERY`), so a promoted
//! replica is found; the node asked is one that has not failed, seeds last.
//!
//! Why not redis-rs's own `ClusterConnection`: the deducter needs what it
//! cannot give — one deadline for a whole pipeline (it waits per reply, and
//! retries 16 times by default), whether a failed command was sent at all
//! (`TripError::NotSent` vs `Lost`), and the identity of the connection
//! that failed, to kill it before trusting `HGET buyers` (see `deduct`).
//! The cluster feature still serves the tests, as an independent reader.
//!
//! One master that stops answering must not cost the others' commands:
//! the masters that failed most recently are written to and read from
//! last, and a master read after the deadline still gives what it already
//! sent (`READ_GRACE`).
//!
//! Transactions (`watch`, `exec_watched`, `round_trip_at`) never follow a
//! redirection: a `MOVED` inside `MULTI` aborts the `EXEC`, and sending
//! the command again outside it would run it unwatched. A `WATCH` holds on
//! one connection only, so `exec_watched` refuses to run when the
//! connection it was sent on is gone or the slot moved.
//!
//! Invariants: a command is sent to one node at most twice (once more
//! only after a redirection, which says it did not run); no call outlives
//! `redis.timeout_ms` (plus `READ_GRACE` per master); keyless commands
//! (`PUBLISH`, `CLIENT`, `CONFIG`) go to the first node unless a node is
//! named.

use std::time::{Duration, Instant};

use redis::{
    Arg, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisError, RedisResult, ServerErrorKind, Value,
};

use crate::store::conn::{timed_out, ClientId, LazyConn, TripError};

/// Slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// How often at most the slot map is read again after a node failed.
const REREAD_EVERY: Duration = Duration::from_secs(1);

/// A master read after the trip's deadline still gets this long, so the
/// replies already in its socket are not lost to another master's delay.
const READ_GRACE: Duration = Duration::from_millis(2);

/// A `WATCH` sent: where, and on which connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watched {
    node: usize,
    generation: u64,
}

/// Where Redis is: `redis.url`, or the cluster's seed nodes
/// (`redis.nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One server (`redis.url`).
    Single(String),
    /// A Redis Cluster, known by some of its nodes (`redis.nodes`).
    Cluster(Vec<String>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Single(url) => f.write_str(url),
            Endpoint::Cluster(nodes) => write!(f, "redis cluster {}", nodes.join(",")),
        }
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Endpoint::Single(url.to_string())
    }
}

impl From<&String> for Endpoint {
    fn from(url: &String) -> Self {
        Endpoint::Single(url.clone())
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Self {
        Endpoint::Single(url)
    }
}

/// Where one command of a trip goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// To the master serving the command's own key (keyless: the first
    /// node).
    Auto,
    /// To the master serving this key: commands that must share a
    /// connection with a keyed one (`UNWATCH`, `MULTI`, `EXEC`).
    Key(&'a [u8]),
    /// To this node (`host:port`, as `dead_ids` names it).
    Node(&'a str),
}

/// One reply of a trip: the command's own result, or why the trip failed
/// for it.
pub(crate) type Reply = Result<RedisResult<Value>, TripError>;

struct Node {
    // `host:port`, as the cluster names it.
    addr: String,
    conn: LazyConn,
    // When the connection last failed (the map is read elsewhere first).
    failed_at: Option<Instant>,
}

struct SlotMap {
    // Template for a node's connection: the first seed's settings
    // (password, user) with the node's address.
    template: ConnectionInfo,
    // INVARIANT: empty while never read, else `SLOTS` long; each entry an
    // index into `Redis::nodes`, or None where no master serves the slot.
    owner: Vec<Option<u16>>,
    // The map should be read again before the next trip.
    stale: bool,
    read_at: Option<Instant>,
}

/// The access layer; see the module docs.
pub(crate) struct Redis {
    // INVARIANT: single mode: exactly one; cluster: the seeds first, then
    // every master the map named. Never shrinks (a node's dead connection
    // identities live here).
    nodes: Vec<Node>,
    cluster: Option<SlotMap>,
    timeout: Duration,
    track_id: bool,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("cluster", &self.cluster.is_some())
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.addr).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => other.to_string(),
    }
}

/// The key a command acts on, for routing: where the commands seckill
/// sends keep it. None: a keyless command.
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(b) => Some(b),
        _ => None, // a cursor: never a key
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" => {
            let _script = args.next()?;
            match args.next()? {
                b"0" => None,
                _ => args.next(),
            }
        }
        b"XREADGROUP" | b"XREAD" => {
            // XREADGROUP GROUP <group> <consumer> ...: a consumer may be
            // called "streams".
            let skip = if name.as_slice() == b"XREADGROUP" {
                3
            } else {
                0
            };
            let mut args = args
                .skip(skip)
                .skip_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"));
            args.next()?;
            args.next()
        }
        b"XINFO" | b"XGROUP" => {
            args.next()?;
            args.next()
        }
        b"PUBLISH" | b"CLIENT" | b"CONFIG" | b"SCRIPT" | b"CLUSTER" | b"PING" | b"INFO"
        | b"MULTI" | b"EXEC" | b"UNWATCH" | b"DISCARD" | b"ASKING" => None,
        _ => args.next(),
    }
}

/// The cluster slot of `key`: CRC16 of its hash tag (the part inside the
/// first `{...}`, when not empty), else of the whole key, mod 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % SLOTS
}

fn is_redirect(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::Moved) | ErrorKind::Server(ServerErrorKind::Ask)
    )
}

/// `CLUSTER SLOTS` -> (start, end, master `host:port`) per range. An
/// empty host means the node that answered (`asked`).
fn parse_slots(reply: Value, asked: &str) -> RedisResult<Vec<(u16, u16, String)>> {
    let bad = || RedisError::from((ErrorKind::Parse, "CLUSTER SLOTS reply"));
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad());
        };
        let [Value::Int(start), Value::Int(end), Value::Array(master), ..] = parts.as_slice()
        else {
            return Err(bad());
        };
        let (host, port) = match master.as_slice() {
            [Value::BulkString(h), Value::Int(p), ..] => (String::from_utf8_lossy(h), *p),
            [Value::SimpleString(h), Value::Int(p), ..] => (h.as_str().into(), *p),
            _ => return Err(bad()),
        };
        let host = if host.is_empty() || host == "?" {
            asked_host.into()
        } else {
            host
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            return Err(bad());
        };
        if start > end || end >= SLOTS {
            return Err(bad());
        }
        out.push((start, end, format!("{host}:{port}")));
    }
    Ok(out)
}

impl Redis {
    /// For `endpoint`; nothing connects until the first call.
    pub(crate) fn open(endpoint: &Endpoint, timeout: Duration) -> RedisResult<Self> {
        match endpoint {
            Endpoint::Single(url) => {
                let info = url.as_str().into_connection_info()?;
                Ok(Redis {
                    nodes: vec![Node {
                        addr: addr_of(&info),
                        conn: LazyConn::new(info, timeout)?,
                        failed_at: None,
                    }],
                    cluster: None,
                    timeout,
                    track_id: false,
                })
            }
            Endpoint::Cluster(seeds) => {
                let mut nodes = Vec::with_capacity(seeds.len());
                for seed in seeds {
                    let info = seed.as_str().into_connection_info()?;
                    nodes.push(Node {
                        addr: addr_of(&info),
                        conn: LazyConn::new(info, timeout)?,
                        failed_at: None,
                    });
                }
                let template = seeds
                    .first()
                    .ok_or_else(|| RedisError::from((ErrorKind::InvalidClientConfig, "no seed")))?
                    .as_str()
                    .into_connection_info()?;
                Ok(Redis {
                    nodes,
                    cluster: Some(SlotMap {
                        template,
                        owner: Vec::new(),
                        stale: false,
                        read_at: None,
                    }),
                    timeout,
                    track_id: false,
                })
            }
        }
    }

    /// Every connection asks `CLIENT INFO` when made and remembers who it
    /// was once dropped after a failure (`dead_ids`): the deducter's.
    pub(crate) fn tracking_client_id(mut self) -> Self {
        self.track_id = true;
        self.nodes = self
            .nodes
            .into_iter()
            .map(|n| Node {
                conn: n.conn.tracking_client_id(),
                ..n
            })
            .collect();
        self
    }

    /// The timeout every call has.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ends `watched`'s watch on the node it was sent to, when that
    /// connection is still the one (a dropped connection took it along).
    pub(crate) fn unwatch(&mut self, watched: Watched) {
        if self.nodes[watched.node].conn.generation() != Some(watched.generation) {
            return;
        }
        let addr = self.nodes[watched.node].addr.clone();
        let cmd = redis::cmd("UNWATCH");
        let deadline = self.deadline(None);
        let _ = self.trip(&[(&cmd, Route::Node(addr.as_str()))], deadline, false);
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Clients to subscribe with (pub/sub): on a cluster a message
    /// published on any node reaches subscribers on every node, so any
    /// one will do; the caller moves on to the next when one fails.
    pub(crate) fn subscribe_clients(&self) -> Vec<redis::Client> {
        self.nodes.iter().map(|n| n.conn.client().clone()).collect()
    }

    /// Runs one command where its key lives, within `redis.timeout_ms`.
    pub(crate) fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        self.query_routed(cmd, Route::Auto)
    }

    /// Runs one command on the master serving `key` (for commands that
    /// must follow a keyed one on the same connection).
    pub(crate) fn query_at<T: FromRedisValue>(&mut self, key: &[u8], cmd: &Cmd) -> RedisResult<T> {
        self.query_routed(cmd, Route::Key(key))
    }

    fn query_routed<T: FromRedisValue>(&mut self, cmd: &Cmd, route: Route<'_>) -> RedisResult<T> {
        let deadline = Instant::now() + self.timeout;
        let reply = self
            .trip(&[(cmd, route)], deadline, true)
            .pop()
            .unwrap_or_else(|| Err(TripError::NotSent(timed_out())));
        let value = reply.map_err(RedisError::from)??;
        Ok(redis::from_redis_value(value)?)
    }

    /// Sends every command of `pipe` (which must not be `atomic`), each
    /// where its key lives, and reads every reply, the whole trip within
    /// `redis.timeout_ms` and no later than `until`. Each reply is its own
    /// result (an error reply fails only its command); any command whose
    /// reply did not come fails the whole trip.
    pub(crate) fn round_trip(
        &mut self,
        pipe: &Pipeline,
        until: Option<Instant>,
    ) -> Result<Vec<RedisResult<Value>>, TripError> {
        let mut out = Vec::with_capacity(pipe.len());
        let mut failed: Option<TripError> = None;
        for reply in self.round_trip_each(pipe, until) {
            match reply {
                Ok(r) => out.push(r),
                // Lost says more than NotSent: something may have run.
                Err(e @ TripError::Lost(_)) => failed = Some(e),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A pipeline read as one value, like redis-rs's `Pipeline::query`:
    /// the first error reply fails it all.
    pub(crate) fn query_pipe<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> RedisResult<T> {
        let replies = self.round_trip(pipe, None)?;
        let values = replies.into_iter().collect::<RedisResult<Vec<Value>>>()?;
        Ok(redis::from_redis_value(Value::Array(values))?)
    }

    /// As `round_trip`, but one outcome per command: on a cluster one
    /// master failing fails only the commands sent to it.
    pub(crate) fn round_trip_each(
        &mut self,
        pipe: &Pipeline,
        until: Option<Instant>,
    ) -> Vec<Reply> {
        let cmds: Vec<(&Cmd, Route<'_>)> = pipe.cmd_iter().map(|c| (c, Route::Auto)).collect();
        let deadline = self.deadline(until);
        self.trip(&cmds, deadline, true)
    }

    /// As `round_trip_each`, with the address of the node each command was
    /// last written to: where a command whose reply was lost may still run
    /// (after an `ASK`, not the slot's owner in the map).
    pub(crate) fn round_trip_traced(
        &mut self,
        pipe: &Pipeline,
        until: Option<Instant>,
    ) -> Vec<(Reply, Option<String>)> {
        let cmds: Vec<(&Cmd, Route<'_>)> = pipe.cmd_iter().map(|c| (c, Route::Auto)).collect();
        let deadline = self.deadline(until);
        let (out, sent_to) = self.trip_traced(&cmds, deadline, true);
        out.into_iter()
            .zip(sent_to)
            .map(|(r, n)| (r, n.map(|n| self.nodes[n].addr.clone())))
            .collect()
    }

    /// Takes the identities of the connections dropped after a failure
    /// (tracked connections only), each with its node: whoever takes them
    /// must kill them before trusting what Redis says of what they sent.
    pub(crate) fn take_dead(&mut self) -> Vec<(String, ClientId)> {
        let mut all = Vec::new();
        for n in &mut self.nodes {
            for id in n.conn.take_dead() {
                all.push((n.addr.clone(), id));
            }
        }
        all
    }

    /// As `round_trip`, every command to the master serving `key`, on one
    /// connection, in order (`MULTI` ... `EXEC`); no redirection followed.
    pub(crate) fn round_trip_at(
        &mut self,
        key: &[u8],
        pipe: &Pipeline,
        until: Option<Instant>,
    ) -> Result<Vec<RedisResult<Value>>, TripError> {
        let cmds: Vec<(&Cmd, Route<'_>)> = pipe.cmd_iter().map(|c| (c, Route::Key(key))).collect();
        let deadline = self.deadline(until);
        self.trip(&cmds, deadline, false).into_iter().collect()
    }

    /// `WATCH` of every key in `keys`, which must share one slot on a
    /// cluster (a transaction's keys do), sent to the master serving it.
    pub(crate) fn watch(&mut self, keys: &[&[u8]]) -> RedisResult<Watched> {
        self.watch_and(keys, &redis::pipe(), None)
            .map(|(watched, _)| watched)
            .map_err(RedisError::from)
    }

    /// As `watch`, with `then` sent right behind the `WATCH` on the same
    /// connection, in the same round trip, no later than `until`: one
    /// outcome for each command of `then`.
    pub(crate) fn watch_and(
        &mut self,
        keys: &[&[u8]],
        then: &Pipeline,
        until: Option<Instant>,
    ) -> Result<(Watched, Vec<RedisResult<Value>>), TripError> {
        let Some(first) = keys.first() else {
            return Err(TripError::NotSent(RedisError::from((
                ErrorKind::Client,
                "WATCH of no key",
            ))));
        };
        let mut watch = redis::cmd("WATCH");
        for k in keys {
            watch.arg(*k);
        }
        let deadline = self.deadline(until);
        let node = self
            .node_for(&watch, Route::Key(first), deadline)
            .map_err(TripError::NotSent)?;
        let mut cmds: Vec<(&Cmd, Route<'_>)> = vec![(&watch, Route::Key(first))];
        cmds.extend(then.cmd_iter().map(|c| (c, Route::Key(first))));
        let mut replies = self
            .trip(&cmds, deadline, false)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        match replies.next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(TripError::NotSent(e)),
            None => return Err(TripError::NotSent(timed_out())),
        }
        let generation = self.nodes[node].conn.generation().ok_or_else(|| {
            TripError::NotSent(RedisError::from((ErrorKind::Io, "WATCH connection lost")))
        })?;
        Ok((Watched { node, generation }, replies.collect()))
    }

    /// The server `watched` was sent to (`host:port`).
    pub(crate) fn watched_node(&self, watched: &Watched) -> String {
        self.nodes[watched.node].addr.clone()
    }

    /// Runs `pipe` (`MULTI` ... `EXEC`) where `watched` was sent, and only
    /// when that connection is still the one (else nothing is sent and
    /// the watch is reported lost). No redirection followed.
    pub(crate) fn exec_watched(
        &mut self,
        watched: Watched,
        key: &[u8],
        pipe: &Pipeline,
        until: Option<Instant>,
    ) -> Result<Vec<RedisResult<Value>>, TripError> {
        let deadline = self.deadline(until);
        let lost = || TripError::NotSent(RedisError::from((ErrorKind::Io, "the WATCH was lost")));
        let mut first = pipe.cmd_iter();
        let Some(cmd) = first.next() else {
            return Ok(Vec::new());
        };
        let node = self
            .node_for(cmd, Route::Key(key), deadline)
            .map_err(TripError::NotSent)?;
        if node != watched.node || self.nodes[node].conn.generation() != Some(watched.generation) {
            return Err(lost());
        }
        let cmds: Vec<(&Cmd, Route<'_>)> = pipe.cmd_iter().map(|c| (c, Route::Key(key))).collect();
        self.trip(&cmds, deadline, false).into_iter().collect()
    }

    /// Keys that may share a transaction have the same group: all keys
    /// on one server; on a cluster, the keys of one slot.
    pub(crate) fn txn_group(&self, key: &[u8]) -> u16 {
        match self.cluster {
            None => 0,
            Some(_) => slot(key),
        }
    }

    /// One outcome per command, each sent where its route says.
    pub(crate) fn round_trip_routed(
        &mut self,
        cmds: &[(&Cmd, Route<'_>)],
        until: Option<Instant>,
    ) -> Vec<Reply> {
        let deadline = self.deadline(until);
        self.trip(cmds, deadline, true)
    }

    /// `cmd` on every master (every node, on a single server: the one),
    /// each with its address.
    pub(crate) fn on_every_master(&mut self, cmd: &Cmd) -> Vec<(String, Reply)> {
        let deadline = self.deadline(None);
        let masters: Vec<String> = match &self.cluster {
            None => vec![self.nodes[0].addr.clone()],
            Some(_) => {
                if let Err(e) = self.ensure_map(deadline) {
                    return vec![(String::new(), Err(TripError::NotSent(e)))];
                }
                self.masters()
                    .into_iter()
                    .map(|i| self.nodes[i].addr.clone())
                    .collect()
            }
        };
        let cmds: Vec<(&Cmd, Route<'_>)> = masters
            .iter()
            .map(|a| (cmd, Route::Node(a.as_str())))
            .collect();
        let replies = self.trip(&cmds, deadline, true);
        masters.into_iter().zip(replies).collect()
    }

    fn deadline(&self, until: Option<Instant>) -> Instant {
        let deadline = Instant::now() + self.timeout;
        until.map_or(deadline, |u| deadline.min(u))
    }

    /// Indices of the nodes that serve slots now.
    fn masters(&self) -> Vec<usize> {
        let mut masters: Vec<usize> = self
            .cluster
            .iter()
            .flat_map(|m| m.owner.iter().flatten().map(|&i| usize::from(i)))
            .collect();
        masters.sort_unstable();
        masters.dedup();
        masters
    }

    /// The node for `addr`, added (with the seeds' settings) if new.
    fn node_at(&mut self, addr: &str) -> RedisResult<usize> {
        if let Some(i) = self.nodes.iter().position(|n| n.addr == addr) {
            return Ok(i);
        }
        let Some(map) = &self.cluster else {
            return Ok(0);
        };
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| RedisError::from((ErrorKind::Parse, "node address")))?;
        let info = map
            .template
            .clone()
            .set_addr(ConnectionAddr::Tcp(host, port));
        let mut conn = LazyConn::new(info, self.timeout)?;
        if self.track_id {
            conn = conn.tracking_client_id();
        }
        self.nodes.push(Node {
            addr: addr.to_string(),
            conn,
            failed_at: None,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Reads the slot map when it was never read, or is stale and was not
    /// read in the last `REREAD_EVERY` (a stale map that cannot be read
    /// again stays in use).
    fn ensure_map(&mut self, deadline: Instant) -> RedisResult<()> {
        let Some(map) = &self.cluster else {
            return Ok(());
        };
        let never = map.owner.is_empty();
        let due = map.stale && map.read_at.is_none_or(|at| at.elapsed() >= REREAD_EVERY);
        if !never && !due {
            return Ok(());
        }
        match self.read_map(deadline) {
            Ok(()) => Ok(()),
            Err(e) if never => Err(e),
            Err(e) => {
                log::debug!("redis cluster: slot map not read again: {e}");
                Ok(())
            }
        }
    }

    /// `CLUSTER SLOTS` from the first node that answers: nodes that have
    /// not failed first, the seeds among them, then the rest.
    fn read_map(&mut self, deadline: Instant) -> RedisResult<()> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        // None sorts first: nodes that never failed, then the longest ago.
        order.sort_by_key(|&i| self.nodes[i].failed_at);
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let mut last = RedisError::from((ErrorKind::Io, "no redis cluster node to ask"));
        if let Some(map) = &mut self.cluster {
            map.read_at = Some(Instant::now());
        }
        for i in order {
            if Instant::now() >= deadline {
                break;
            }
            let reply = self.trip_on(i, &[(&cmd, false)], deadline).pop();
            let ranges = match reply {
                Some(Ok(Ok(v))) => parse_slots(v, &self.nodes[i].addr),
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(e.into()),
                None => Err(timed_out()),
            };
            match ranges {
                Ok(ranges) => return self.apply_map(ranges),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn apply_map(&mut self, ranges: Vec<(u16, u16, String)>) -> RedisResult<()> {
        let mut owner = vec![None; usize::from(SLOTS)];
        for (start, end, addr) in ranges {
            let i = u16::try_from(self.node_at(&addr)?)
                .map_err(|_| RedisError::from((ErrorKind::Parse, "too many nodes")))?;
            for slot in &mut owner[usize::from(start)..=usize::from(end)] {
                *slot = Some(i);
            }
        }
        if let Some(map) = &mut self.cluster {
            map.owner = owner;
            map.stale = false;
        }
        // A node that serves no slot cannot run a script that sells (a
        // replica refuses writes): what its dead connections sent is moot.
        let masters = self.masters();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if !masters.contains(&i) {
                n.conn.clear_dead();
            }
        }
        Ok(())
    }

    fn mark_stale(&mut self) {
        if let Some(map) = &mut self.cluster {
            map.stale = true;
        }
    }

    /// The node a command goes to.
    fn node_for(&mut self, cmd: &Cmd, route: Route<'_>, deadline: Instant) -> RedisResult<usize> {
        if self.cluster.is_none() {
            return Ok(0);
        }
        let key = match route {
            Route::Node(addr) => return self.node_at(addr),
            Route::Key(key) => Some(key),
            Route::Auto => key_of(cmd),
        };
        self.ensure_map(deadline)?;
        let owner = self.cluster.as_ref().map_or(&[][..], |m| &m.owner[..]);
        let found = match key {
            Some(key) => owner.get(usize::from(slot(key))).copied().flatten(),
            None => owner.iter().flatten().next().copied(),
        };
        found.map(usize::from).ok_or_else(|| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "no master serves the slot",
            ))
        })
    }

    /// Sends each command to its node (every node's share written before
    /// any is read), then, when `follow`, follows redirections once.
    fn trip(&mut self, cmds: &[(&Cmd, Route<'_>)], deadline: Instant, follow: bool) -> Vec<Reply> {
        self.trip_traced(cmds, deadline, follow).0
    }

    /// As `trip`, with the node each command was last written to (None:
    /// never written): where a command whose reply was lost may still run.
    fn trip_traced(
        &mut self,
        cmds: &[(&Cmd, Route<'_>)],
        deadline: Instant,
        follow: bool,
    ) -> (Vec<Reply>, Vec<Option<usize>>) {
        let mut out: Vec<Option<Reply>> = (0..cmds.len()).map(|_| None).collect();
        let mut sent_to: Vec<Option<usize>> = vec![None; cmds.len()];
        // node -> (item, after ASKING)
        let mut plan: Vec<(usize, Vec<(usize, bool)>)> = Vec::new();
        for (i, (cmd, route)) in cmds.iter().enumerate() {
            match self.node_for(cmd, *route, deadline) {
                Ok(n) => push_plan(&mut plan, n, i, false),
                Err(e) => out[i] = Some(Err(TripError::NotSent(e))),
            }
        }
        self.run_plan(cmds, &mut plan, deadline, &mut out, &mut sent_to);
        if self.cluster.is_some() {
            let mut again: Vec<(usize, Vec<(usize, bool)>)> = Vec::new();
            for (i, reply) in out.iter().enumerate() {
                let Some(Ok(Err(e))) = reply else { continue };
                if !is_redirect(e) {
                    continue;
                }
                let ask = e.kind() == ErrorKind::Server(ServerErrorKind::Ask);
                if !ask {
                    // Read the map again even when not following (a
                    // transaction), so the next try goes the right way.
                    self.mark_stale();
                }
                if !follow {
                    continue;
                }
                let Some((addr, _)) = e.redirect_node() else {
                    continue;
                };
                let addr = addr.to_string();
                if let Ok(n) = self.node_at(&addr) {
                    push_plan(&mut again, n, i, ask);
                }
            }
            if !again.is_empty() {
                self.run_plan(cmds, &mut again, deadline, &mut out, &mut sent_to);
            }
        }
        let out = out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TripError::NotSent(timed_out()))))
            .collect();
        (out, sent_to)
    }

    fn run_plan(
        &mut self,
        cmds: &[(&Cmd, Route<'_>)],
        plan: &mut [(usize, Vec<(usize, bool)>)],
        deadline: Instant,
        out: &mut [Option<Reply>],
        sent_to: &mut [Option<usize>],
    ) {
        // The masters that failed last go last (None sorts first).
        plan.sort_by_key(|(node, _)| self.nodes[*node].failed_at);
        let mut sent = Vec::with_capacity(plan.len());
        for (node, items) in plan.iter() {
            let mut packed = Vec::new();
            let mut replies = 0;
            for &(i, asking) in items {
                if asking {
                    redis::cmd("ASKING").write_packed_command(&mut packed);
                    replies += 1;
                }
                cmds[i].0.write_packed_command(&mut packed);
                replies += 1;
            }
            let result = self.nodes[*node].conn.send(&packed, deadline);
            if !matches!(result, Err(TripError::NotSent(_))) {
                for &(i, _) in items {
                    sent_to[i] = Some(*node);
                }
            }
            match result {
                Ok(()) => sent.push((*node, items, replies)),
                Err(e) => {
                    self.node_failed(*node);
                    for &(i, _) in items {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for (node, items, replies) in sent {
            let until = deadline.max(Instant::now() + READ_GRACE);
            let (got, err) = self.nodes[node].conn.read(replies, until);
            let mut got = got.into_iter();
            for &(i, asking) in items.iter() {
                if asking {
                    got.next();
                }
                out[i] = Some(match got.next() {
                    Some(reply) => Ok(reply),
                    None => Err(TripError::Lost(err.clone().unwrap_or_else(timed_out))),
                });
            }
            if err.is_some() {
                self.node_failed(node);
            }
        }
    }

    /// The trip of `cmds` to node `i` alone (reading the map).
    fn trip_on(&mut self, i: usize, cmds: &[(&Cmd, bool)], deadline: Instant) -> Vec<Reply> {
        let mut out: Vec<Option<Reply>> = (0..cmds.len()).map(|_| None).collect();
        let items: Vec<(usize, bool)> = (0..cmds.len()).map(|j| (j, cmds[j].1)).collect();
        let routed: Vec<(&Cmd, Route<'_>)> = cmds.iter().map(|(c, _)| (*c, Route::Auto)).collect();
        let mut sent_to = vec![None; cmds.len()];
        self.run_plan(&routed, &mut [(i, items)], deadline, &mut out, &mut sent_to);
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TripError::NotSent(timed_out()))))
            .collect()
    }

    fn node_failed(&mut self, i: usize) {
        self.nodes[i].failed_at = Some(Instant::now());
        self.mark_stale();
    }
}

fn push_plan(plan: &mut Vec<(usize, Vec<(usize, bool)>)>, node: usize, item: usize, ask: bool) {
    match plan.iter_mut().find(|(n, _)| *n == node) {
        Some((_, items)) => items.push((item, ask)),
        None => plan.push((node, vec![(item, ask)])),
    }
}

/// Whether Redis keeps its data on disk (SPEC §3): AOF on, or RDB saves
/// configured — on every master of a cluster. Redis is the ledger of the
/// sale; with neither, a crash loses every sale the sink has not carried
/// to PostgreSQL yet.
pub(crate) fn keeps_data(redis: &mut Redis) -> RedisResult<bool> {
    let mut aof = redis::cmd("CONFIG");
    aof.arg("GET").arg("appendonly");
    let mut save = redis::cmd("CONFIG");
    save.arg("GET").arg("save");
    let aofs = redis.on_every_master(&aof);
    let saves = redis.on_every_master(&save);
    if aofs.len() != saves.len() {
        return Err(RedisError::from((ErrorKind::Io, "the masters changed")));
    }
    for ((_, aof), (_, save)) in aofs.into_iter().zip(saves) {
        let aof: Vec<String> = redis::from_redis_value(aof??)?;
        let save: Vec<String> = redis::from_redis_value(save??)?;
        let aof_on = aof.get(1).is_some_and(|v| v == "yes");
        let saves = save.get(1).is_some_and(|v| !v.trim().is_empty());
        if !(aof_on || saves) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Known values (CLUSTER KEYSLOT): "foo" 12182, "{user1000}.following"
        // = "user1000" 3443.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"user1000"), 3443);
        // An empty tag hashes the whole key.
        assert_eq!(
            slot(b"{}foo"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}foo") % SLOTS
        );
        // Every key of a goods shares one slot.
        let k = crate::store::keys::GoodsKeys::new("e", "g");
        assert_eq!(slot(k.stock.as_bytes()), slot(k.orders.as_bytes()));
        assert_eq!(slot(k.stock.as_bytes()), slot(k.buyers.as_bytes()));
        assert_eq!(slot(k.stock.as_bytes()), slot(k.reset.as_bytes()));
    }

    #[test]
    fn keys_are_found_where_each_command_keeps_them() {
        let mut c = redis::cmd("EVALSHA");
        c.arg("sha").arg(3).arg("k1").arg("k2");
        assert_eq!(key_of(&c), Some(&b"k1"[..]));
        let mut c = redis::cmd("EVAL");
        c.arg("return 1").arg(0);
        assert_eq!(key_of(&c), None);
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(5);
        c.arg("STREAMS").arg("s").arg(">");
        assert_eq!(key_of(&c), Some(&b"s"[..]));
        let mut c = redis::cmd("XINFO");
        c.arg("GROUPS").arg("s");
        assert_eq!(key_of(&c), Some(&b"s"[..]));
        let mut c = redis::cmd("hget");
        c.arg("h").arg("f");
        assert_eq!(key_of(&c), Some(&b"h"[..]));
        let mut c = redis::cmd("PUBLISH");
        c.arg("chan").arg("m");
        assert_eq!(key_of(&c), None);
        let mut c = redis::cmd("CLIENT");
        c.arg("KILL").arg("ID").arg(3);
        assert_eq!(key_of(&c), None);
    }

    #[test]
    fn cluster_slots_replies_parse() {
        let node = |h: &str, p| Value::Array(vec![Value::BulkString(h.into()), Value::Int(p)]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        assert_eq!(
            parse_slots(reply, "10.0.0.1:7001").ok(),
            Some(vec![
                (0, 5460, "127.0.0.1:7000".to_string()),
                (5461, 16383, "10.0.0.1:7001".to_string())
            ])
        );
        let bad = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16384),
            node("h", 1),
        ])]);
        assert!(parse_slots(bad, "h:1").is_err());
        assert!(parse_slots(Value::Nil, "h:1").is_err());
    }
}
