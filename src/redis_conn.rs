//! Beside the path: a Redis connection made on first use and made again
//! after a failure.
//!
//! Every Redis call has `redis.timeout_ms` for connect, read and write, so
//! a Redis that hangs is a failure, not a stall. After a failure at the
//! connection level (refused, reset, timed out) the connection's state is
//! unknown, so it is dropped and the next call connects anew; an error
//! reply from the server leaves it usable. The worker's deducter, the
//! lookup thread, the catalog and the admin service each own one.

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
}

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
        })
    }

    /// The connection, connecting first if there is none.
    pub fn get(&mut self) -> RedisResult<&mut Connection> {
        match self.conn {
            Some(ref mut c) => Ok(c),
            None => Ok(self.conn.insert(connect(&self.client, self.timeout)?)),
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
        if !matches!(e.kind(), ErrorKind::Server(_)) {
            self.conn = None;
        }
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
