//! The event model: an event and its goods as the admin API takes them and
//! `seckill:events` stores them, and the checks every definition passes
//! before it is stored or served.
//!
//! Shared by the admin listener (which writes definitions) and the refresh
//! thread (which reads them back). Pure: no Redis, no clock.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::store::keys::valid_id;

/// An event as stored in `seckill:events` (and posted to the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventDef {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub(crate) event_id: String,
    /// Display name.
    #[serde(default)]
    pub(crate) name: String,
    /// Sales open at this unix second.
    #[serde(default)]
    pub(crate) start_at: u64,
    /// Sales close at this unix second (exclusive).
    #[serde(default = "far_future")]
    pub(crate) end_at: u64,
    /// The goods on sale.
    #[serde(default)]
    pub(crate) goods: Vec<GoodsDef>,
}

fn far_future() -> u64 {
    u64::MAX
}

/// One goods of an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct GoodsDef {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub(crate) goods_id: String,
    /// Display name.
    #[serde(default)]
    pub(crate) name: String,
    /// Price in cents.
    #[serde(default)]
    pub(crate) price_cents: u64,
    /// Stock the admin set.
    #[serde(default)]
    pub(crate) stock: i64,
    /// When (unix ms) the admin API last set this goods' stock key. Nodes
    /// recompute their share and forget their buyers when it changes (an
    /// admin `reset`); 0 for events written by other tools.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) epoch: u64,
    /// Set by an admin reset (unix ms): every order of the current sale
    /// has a stream id above `<orders_after>-0`, every order of the sale
    /// before the reset one below it. The sink keeps no order below it, so
    /// no pre-reset order reaches PostgreSQL after the reset. 0: never
    /// reset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) orders_after: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl EventDef {
    /// Checks ids and values; the reason is for logs and admin errors.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if !valid_id(self.event_id.as_bytes()) {
            return Err("event_id");
        }
        if self.end_at < self.start_at {
            return Err("end_at before start_at");
        }
        let mut seen = HashSet::new();
        for g in &self.goods {
            if !valid_id(g.goods_id.as_bytes()) {
                return Err("goods_id");
            }
            if !seen.insert(g.goods_id.as_str()) {
                return Err("goods_id repeated");
            }
            if g.stock < 0 {
                return Err("stock below 0");
            }
            if g.stock > MAX_STOCK {
                return Err("stock above 15 digits");
            }
        }
        Ok(())
    }
}

/// The largest stock the deduct script takes (15 digits: exact in Lua).
pub(crate) const MAX_STOCK: i64 = 999_999_999_999_999;

/// A stock value as the deduct script accepts it (`deduct.lua`): an
/// integer written the way Redis writes one (no sign but "-", no leading
/// zero), at most 15 digits. "05" parses as a number in Rust but not in
/// Redis, so a goods the script would refuse is skipped here too.
pub(crate) fn stock_number(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = s == "0"
        || (!digits.is_empty()
            && digits.len() <= 15
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_from_other_tools_parses() {
        let json = r#"{"event_id":"e1","name":"bench","start_at":0,"end_at":4102444800,"goods":[{"goods_id":"g0","name":"sold out","price_cents":100,"stock":0}]}"#;
        let def: EventDef = serde_json::from_str(json).unwrap();
        assert_eq!(def.goods[0].epoch, 0);
        assert!(def.check().is_ok());
        // Epoch 0 is not written back, so the stored shape stays the SPEC's.
        assert_eq!(serde_json::to_string(&def).unwrap(), json);
    }

    #[test]
    fn stock_numbers_are_read_as_redis_writes_them() {
        for (text, want) in [
            ("0", Some(0)),
            ("5", Some(5)),
            ("-3", Some(-3)),
            ("999999999999999", Some(999_999_999_999_999)),
            ("05", None),
            ("-0", None),
            ("+5", None),
            (" 5", None),
            ("4.5", None),
            ("", None),
            ("-", None),
            ("1000000000000000", None),
        ] {
            assert_eq!(stock_number(text), want, "{text:?}");
        }
    }

    #[test]
    fn bad_definitions_are_refused() {
        let mut def: EventDef =
            serde_json::from_str(r#"{"event_id":"e1","goods":[{"goods_id":"g1","stock":1}]}"#)
                .unwrap();
        assert!(def.check().is_ok());
        def.goods.push(def.goods[0].clone());
        assert_eq!(def.check(), Err("goods_id repeated"));
        def.goods.pop();
        def.goods[0].stock = -1;
        assert_eq!(def.check(), Err("stock below 0"));
        def.goods[0].stock = MAX_STOCK + 1;
        assert_eq!(def.check(), Err("stock above 15 digits"));
        def.goods[0].stock = 1;
        def.event_id = "e:1".into();
        assert_eq!(def.check(), Err("event_id"));
    }
}
