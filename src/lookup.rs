//! Beside the path: `/shop/result`, answered off the loop.
//!
//! The answer lives in Redis (`buyers`), and the event loop never waits on
//! Redis, so a result request is hijacked like a sale (see `hijack`) and
//! answered by this thread with `Connection: close`. It has its own bounded
//! channel and Redis connection, so polling for results never waits behind
//! paced sales, and sales never wait behind reads.
//! Invariants: every request handed over is answered once: a full channel
//! is 1004 at once, a Redis failure 1002.

use std::time::Duration;

use crossbeam_channel::{bounded, Sender, TrySendError};

use crate::codes::Code;
use crate::deduct::Deducter;
use crate::hijack::Hijacked;

/// Result requests waiting for Redis at most.
const BACKLOG: usize = 4096;

/// One result question.
#[derive(Debug)]
pub struct Question {
    /// The connection, owed the answer.
    pub conn: Hijacked,
    /// Event id (checked).
    pub event_id: String,
    /// Goods id (checked).
    pub goods_id: String,
    /// The asking uid (from the token).
    pub uid: String,
}

/// The lookup thread's inbox.
#[derive(Debug, Clone)]
pub struct Lookup {
    tx: Sender<Question>,
}

impl Lookup {
    /// Starts the thread, with its own connection to `url`.
    pub fn start(url: &str, timeout: Duration) -> Result<Lookup, String> {
        let mut redis = Deducter::new(url, timeout).map_err(|e| format!("redis.url: {e}"))?;
        let (tx, rx) = bounded::<Question>(BACKLOG);
        std::thread::Builder::new()
            .name("seckill-lookup".into())
            .spawn(move || {
                for q in rx {
                    match redis.order_of(&q.event_id, &q.goods_id, &q.uid) {
                        Ok(Some(order_id)) => {
                            let data = serde_json::json!({"status": "won", "order_id": order_id});
                            q.conn.answer(Code::Ok, Some(&data.to_string()));
                        }
                        Ok(None) => q.conn.answer(Code::Ok, Some(r#"{"status":"none"}"#)),
                        Err(_) => q.conn.answer(Code::RedisError, None),
                    }
                }
            })
            .map_err(|e| format!("lookup thread: {e}"))?;
        Ok(Lookup { tx })
    }

    /// Hands a question over; a full inbox answers 1004 at once.
    pub fn ask(&self, q: Question) {
        if let Err(TrySendError::Full(q) | TrySendError::Disconnected(q)) = self.tx.try_send(q) {
            q.conn.answer_busy();
        }
    }
}
