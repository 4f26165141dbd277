//! Beside the path: a Redis connection made on first use and made again
//! after a failure.
//!
//! Every Redis call has `redis.timeout_ms` for connect, read and write, so
//! a Redis that hangs is a failure, not a stall. After a failure at the
//! connection level (refused, reset, timed out) the connection's state is
//! unknown, so it is dropped and the next call connects anew; an error
//! reply from the server leaves it usable. The worker's deducter, the
//! lookup thread, the catalog and the admin service each own one.
//!
//! A connection that tracks its client id (`tracking_client_id`: the
//! deducter's) asks `CLIENT ID` when it is made and remembers the ids of
//! the connections it dropped after a failure, so the deducter can kill
//! them on the server before trusting what Redis says of their attempts.

use std::time::Duration;

use redis::{Connection, ErrorKind, RedisError, RedisResult};

/// Opens a connection with the timeout applied to connect, read and write.
pub fn connect(client: &redis::Client, timeout: Duration) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// One connection, connected lazily.
pub struct LazyConn {
    client: redis::Client,
    timeout: Duration,
    // INVARIANT: None after a connection-level failure, until the next get.
    conn: Option<Connection>,
    track_id: bool,
    // The server's id of `conn`, when tracked and known.
    id: Option<i64>,
    // Ids of connections dropped after a failure, not yet known dead on
    // the server. INVARIANT: at most `MAX_DEAD` (the oldest go first).
    dead: Vec<i64>,
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
    /// For `url`; nothing connects until `get`.
    pub fn open(url: &str, timeout: Duration) -> RedisResult<Self> {
        Ok(LazyConn {
            client: redis::Client::open(url)?,
            timeout,
            conn: None,
            track_id: false,
            id: None,
            dead: Vec::new(),
        })
    }

    /// Asks `CLIENT ID` of every connection it makes, and remembers the ids
    /// of those it drops after a failure (`dead_ids`).
    pub fn tracking_client_id(mut self) -> Self {
        self.track_id = true;
        self
    }

    /// The connection, connecting first if there is none.
    pub fn get(&mut self) -> RedisResult<&mut Connection> {
        if self.conn.is_none() {
            let mut conn = connect(&self.client, self.timeout)?;
            if self.track_id {
                // A server that refuses CLIENT ID (renamed, not permitted)
                // leaves the id unknown; a connection failure is a failure.
                self.id = match redis::cmd("CLIENT").arg("ID").query::<i64>(&mut conn) {
                    Ok(id) => Some(id),
                    Err(e) if matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) => {
                        None
                    }
                    Err(e) => return Err(e),
                };
            }
            self.conn = Some(conn);
        }
        match self.conn {
            Some(ref mut c) => Ok(c),
            None => Err(RedisError::from((ErrorKind::Io, "not connected"))),
        }
    }

    /// Passes `result` through, forgetting the connection if it failed at
    /// the connection level.
    pub fn settle<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    /// Forgets the connection unless `e` is an error reply from the server.
    pub fn failed(&mut self, e: &RedisError) {
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

    /// Ids of connections dropped after a failure that may still be alive
    /// on the server (tracked connections only).
    pub fn dead_ids(&self) -> &[i64] {
        &self.dead
    }

    /// `id` is known gone on the server.
    pub fn forget_dead(&mut self, id: i64) {
        self.dead.retain(|d| *d != id);
    }

    /// The client (for connections with a life of their own: pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The timeout every call has.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
