//! Every Redis key of SPEC §3, built in one place, and the id syntax that
//! keeps them apart.
//!
//! All keys of one goods share the hash tag `{E:G}`, so the deduct's three
//! keys land in one slot on Redis Cluster too. Every id (uid, event, goods)
//! passes `valid_id` (`[A-Za-z0-9_-]{1,64}`) where it enters: the token
//! (auth), the body (attempt), the admin's definition and the stored event
//! (catalog). So no id can carry `{`, `}` or `:` and forge another goods'
//! tag.

/// True when `id` matches `[A-Za-z0-9_-]{1,64}` (uids, event and goods ids).
pub fn valid_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Hash of event_id → event JSON.
pub(crate) const EVENTS: &str = "seckill:events";

/// Pub/sub channel: a message on every admin change and every sell-out.
pub(crate) const CHANGED: &str = "seckill:events:changed";

/// The keys of one goods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoodsKeys {
    /// String: remaining stock, never below 0.
    pub(crate) stock: String,
    /// Hash: uid → order_id.
    pub(crate) buyers: String,
    /// Stream: one entry per sale; the entry id is the order_id.
    pub(crate) orders: String,
    /// String: units added by top-ups (absent: 0); cleared by a reset.
    pub(crate) added: String,
    /// String: stock numbers handed out (`deduct.strategy =
    /// "sliding-lock"` only, `store::sliding`); cleared by a reset.
    pub(crate) used: String,
    /// `lock:N` of stock number N is this, `:`, N (sliding-lock only).
    pub(crate) lock_prefix: String,
    /// String: the last reset's line E (ms), written by the reset script
    /// in the same step as the new stream: every order of the sale since
    /// has a stream id above E-0. Absent: never reset. Not in SPEC §3's
    /// table: the sink reads it to learn of a reset before the event's new
    /// definition (see `orders::sink`).
    pub(crate) reset: String,
}

impl GoodsKeys {
    /// The keys of goods `goods_id` in event `event_id`.
    pub(crate) fn new(event_id: &str, goods_id: &str) -> Self {
        let tag = format!("seckill:{{{event_id}:{goods_id}}}");
        GoodsKeys {
            stock: format!("{tag}:stock"),
            buyers: format!("{tag}:buyers"),
            orders: format!("{tag}:orders"),
            added: format!("{tag}:added"),
            used: format!("{tag}:used"),
            lock_prefix: format!("{tag}:lock"),
            reset: format!("{tag}:reset"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goods_keys_share_the_hash_tag() {
        let k = GoodsKeys::new("e1", "g1");
        assert_eq!(k.stock, "seckill:{e1:g1}:stock");
        assert_eq!(k.buyers, "seckill:{e1:g1}:buyers");
        assert_eq!(k.orders, "seckill:{e1:g1}:orders");
        assert_eq!(k.added, "seckill:{e1:g1}:added");
    }

    #[test]
    fn ids_follow_the_spec_pattern() {
        assert!(valid_id(b"e1"));
        assert!(valid_id(b"A-z_09"));
        assert!(valid_id("x".repeat(64).as_bytes()));
        for bad in [
            &b""[..],
            b"a:b",
            b"a{b",
            b"a}b",
            b"a#",
            b"a*",
            b"a b",
            b"\xc3\xa9",
            "x".repeat(65).as_bytes(),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
