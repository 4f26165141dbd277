//! Beside the path: a connection to one Redis server, made on first use
//! and made again after a failure. The access layer (`access::Redis`)
//! holds one per server it talks to; nothing else uses this directly.
//!
//! Every Redis call has `redis.timeout_ms` for connect, read and write, so
//! a Redis that hangs is a failure, not a stall. After a failure at the
//! connection level (refused, reset, timed out) the connection's state is
//! unknown, so it is dropped and the next call connects anew; an error
//! reply from the server leaves it usable.
//!
//! Commands are written with `send` and their replies read with `read`,
//! both against one deadline for the *whole* trip. redis-rs's own
//! `Pipeline::query` waits the read timeout for each reply in turn, even
//! after one timed out, so a hanging Redis would cost a batch of 64 deducts
//! 64 timeouts; and the split lets the access layer write to every cluster
//! master before it waits for any.
//!
//! A connection that tracks its identity (`tracking_client_id`: the
//! deducter's) asks `CLIENT INFO` when it is made and remembers the
//! identity of the connections it dropped after a failure, so the deducter
//! can kill them on the server before trusting what Redis says of their
//! attempts. The identity is the client id *and* the address Redis sees:
//! ids start again from 1 when Redis restarts, and an id alone could then
//! name another client.

use std::time::{Duration, Instant};

use redis::{Connection, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};

/// Opens a connection with the timeout applied to connect, read and write.
pub(crate) fn connect(client: &redis::Client, timeout: Duration) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// One connection, connected lazily.
pub(crate) struct LazyConn {
    client: redis::Client,
    timeout: Duration,
    // INVARIANT: None after a connection-level failure, until the next get.
    conn: Option<Connection>,
    track_id: bool,
    // Who `conn` is on the server, when tracked and known.
    id: Option<ClientId>,
    // Connections dropped after a failure, not yet known dead on the
    // server. INVARIANT: at most `MAX_DEAD` (the oldest go first).
    dead: Vec<ClientId>,
    // INVARIANT: the read timeout set on `conn` now.
    read_timeout: Duration,
    // INVARIANT: the write timeout set on `conn` now.
    write_timeout: Duration,
    // Connections made so far: a `WATCH` holds only on the connection it
    // was sent on, and this tells whether that is still the one.
    generation: u64,
}

/// How a round trip failed.
#[derive(Debug, Clone)]
pub(crate) enum TripError {
    /// Connecting failed: nothing was sent.
    NotSent(RedisError),
    /// The commands were sent (maybe in part) and their replies did not
    /// all come back in time: what they did is unknown.
    Lost(RedisError),
}

impl From<TripError> for RedisError {
    fn from(e: TripError) -> Self {
        match e {
            TripError::NotSent(e) | TripError::Lost(e) => e,
        }
    }
}

/// Re-arm the read timeout only when it is this far off the time left, so
/// a fast round trip makes no extra system call.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Whether a server's error reply to a `CLIENT` command will be the same
/// next time: the command is unknown, renamed away or not permitted. Any
/// other (BUSY, LOADING, ...) may pass.
pub(crate) fn refused_for_good(e: &RedisError) -> bool {
    match e.code() {
        Some("NOPERM") => true,
        Some("ERR") => e
            .detail()
            .is_some_and(|d| d.to_ascii_lowercase().contains("unknown")),
        _ => false,
    }
}

/// A connection as the server knows it: `CLIENT KILL ID <id> ADDR <addr>`
/// names it and no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientId {
    /// The server's client id.
    pub(crate) id: u64,
    /// The client's address as the server sees it (`ip:port`).
    pub(crate) addr: String,
}

impl ClientId {
    /// From a `CLIENT INFO` line (`id=7 addr=127.0.0.1:5000 ...`).
    pub(crate) fn parse(info: &str) -> Option<ClientId> {
        let field = |name: &str| {
            info.split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        Some(ClientId {
            id: field("id")?.parse().ok()?,
            addr: field("addr")?.to_string(),
        })
    }
}

pub(crate) fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis round trip timed out",
    ))
}

/// Failed connections remembered for killing at most.
const MAX_DEAD: usize = 16;

impl std::fmt::Debug for LazyConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyConn")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl LazyConn {
    /// For the server `info` names; nothing connects until first use.
    pub(crate) fn new(info: ConnectionInfo, timeout: Duration) -> RedisResult<Self> {
        // No `CLIENT SETINFO` on connect: redis-rs sends it as a pipeline of
        // two commands and waits the timeout for each reply, so a hanging
        // Redis would cost every new connection two timeouts. (AUTH and
        // SELECT from the URL are still sent.)
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        Ok(LazyConn {
            client: redis::Client::open(info)?,
            timeout,
            conn: None,
            track_id: false,
            id: None,
            dead: Vec::new(),
            read_timeout: timeout,
            write_timeout: timeout,
            generation: 0,
        })
    }

    /// Asks `CLIENT INFO` of every connection it makes, and remembers who
    /// those it drops after a failure were (`dead_ids`).
    pub(crate) fn tracking_client_id(mut self) -> Self {
        self.track_id = true;
        self
    }

    fn connected(&mut self) -> RedisResult<&mut Connection> {
        self.conn
            .as_mut()
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "not connected")))
    }

    /// The connection; a new one must be made within `within`.
    fn get_within(&mut self, within: Duration) -> RedisResult<()> {
        if self.conn.is_none() {
            let within = within.min(self.timeout);
            let deadline = Instant::now() + within;
            let mut conn = connect(&self.client, within)?;
            self.read_timeout = within;
            self.write_timeout = within;
            self.generation += 1;
            if self.track_id {
                // Connecting and asking share the one allowance.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                conn.set_read_timeout(Some(left))?;
                self.read_timeout = left;
                // A server that refuses CLIENT INFO for good (before 6.2,
                // renamed, not permitted) leaves the identity unknown; any
                // other failure (busy, loading, I/O) fails the connect, so
                // no tracked connection goes without an identity by chance.
                self.id = match redis::cmd("CLIENT").arg("INFO").query::<String>(&mut conn) {
                    Ok(info) => ClientId::parse(&info),
                    Err(e) if refused_for_good(&e) => None,
                    Err(e) => return Err(e),
                };
            }
            self.conn = Some(conn);
        }
        Ok(())
    }

    /// Connects if needed and writes `packed` (one or more commands),
    /// all by `deadline`. `NotSent`: nothing was written (connecting
    /// failed or the time was up); `Lost`: the write failed part-way, so
    /// some commands may have reached Redis. Either way a failed connection
    /// is dropped.
    pub(crate) fn send(&mut self, packed: &[u8], deadline: Instant) -> Result<(), TripError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TripError::NotSent(timed_out()));
        }
        if let Err(e) = self.get_within(left) {
            self.failed(&e);
            return Err(TripError::NotSent(e));
        }
        // The write has the time left too: a Redis that stops reading
        // must not hold the trip past its deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TripError::NotSent(timed_out()));
        }
        if self.write_timeout < left || self.write_timeout > left + TIMEOUT_SLACK {
            let set = self
                .connected()
                .and_then(|conn| conn.set_write_timeout(Some(left)));
            self.settle(set).map_err(TripError::NotSent)?;
            self.write_timeout = left;
        }
        let sent = self
            .connected()
            .and_then(|conn| conn.send_packed_command(packed));
        self.settle(sent).map_err(TripError::Lost)
    }

    /// Reads `n` replies, in order, by `deadline`. Each reply is its own
    /// result (an error reply fails only its command). The first reply that
    /// does not come in time ends the read: the replies read so far are
    /// returned with the error, and the connection is dropped.
    pub(crate) fn read(
        &mut self,
        n: usize,
        deadline: Instant,
    ) -> (Vec<RedisResult<Value>>, Option<RedisError>) {
        let mut replies = Vec::with_capacity(n);
        while replies.len() < n {
            match self.read_one(deadline) {
                Ok(reply) => replies.push(reply.extract_error()),
                Err(e) => {
                    self.failed(&e);
                    return (replies, Some(e));
                }
            }
        }
        (replies, None)
    }

    fn read_one(&mut self, deadline: Instant) -> RedisResult<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        // Too long could overshoot the deadline; too short would fail a
        // reply that still had time.
        if self.read_timeout < left || self.read_timeout > left + TIMEOUT_SLACK {
            self.connected()?.set_read_timeout(Some(left))?;
            self.read_timeout = left;
        }
        self.connected()?.recv_response()
    }

    /// Passes `result` through, forgetting the connection if it failed at
    /// the connection level.
    fn settle<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    /// Forgets the connection unless `e` is an error reply from the server.
    fn failed(&mut self, e: &RedisError) {
        if matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
            return;
        }
        if self.conn.take().is_some() {
            if let Some(id) = self.id.take() {
                if self.dead.len() == MAX_DEAD {
                    self.dead.remove(0);
                }
                self.dead.push(id);
            }
        }
    }

    /// Takes every dead connection's identity (the caller kills them).
    pub(crate) fn take_dead(&mut self) -> Vec<ClientId> {
        std::mem::take(&mut self.dead)
    }

    /// Forgets every dead connection: the server no longer serves slots,
    /// so nothing they sent can become a sale.
    pub(crate) fn clear_dead(&mut self) {
        self.dead.clear();
    }

    /// Which connection this is (see `generation`), or None when there is
    /// none now.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.conn.as_ref().map(|_| self.generation)
    }

    /// The client (for connections with a life of their own: pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_comes_from_client_info() {
        let info = "id=42 addr=127.0.0.1:51234 laddr=127.0.0.1:6379 fd=8 name= age=0";
        assert_eq!(
            ClientId::parse(info),
            Some(ClientId {
                id: 42,
                addr: "127.0.0.1:51234".into()
            })
        );
        assert_eq!(ClientId::parse("addr=1.2.3.4:5"), None);
        assert_eq!(ClientId::parse("id=x addr=1.2.3.4:5"), None);
    }
}
