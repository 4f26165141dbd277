//! The sliding stock-number lock (SPEC §3.1, `deduct.strategy =
//! "sliding-lock"`): what a failure between its steps leaves behind is
//! repaired, so no unit is lost: numbers counted by attempts that never
//! finished (a node killed between `INCR` and `EXEC`) and the locks they
//! held. The concurrency and give-back tests run with this strategy too
//! (`tests/concurrency.rs`, `tests/giveback.rs`).

mod support;

use seckill::config::Strategy;
use support::{config, RedisServer, Seckill};

fn node(redis: &RedisServer) -> Seckill {
    let mut c = config(redis);
    c.deduct.strategy = Strategy::SlidingLock;
    Seckill::start_ready(&c)
}

fn locks(redis: &RedisServer) -> Vec<String> {
    redis.cmd(&["KEYS", "seckill:{e1:g1}:lock:*"])
}

#[test]
fn a_sale_keeps_the_books_and_leaves_no_lock() {
    let redis = RedisServer::with_e1(&[("g1", 3)]);
    let s = node(&redis);
    for i in 0..3 {
        let r = s.client().buy(&format!("u{i}"), "e1", "g1");
        r.assert(200, 0, "ok", "close");
        let order: Option<String> =
            redis.cmd(&["HGET", "seckill:{e1:g1}:buyers", &format!("u{i}")]);
        assert_eq!(r.json()["data"]["order_id"].as_str(), order.as_deref());
        assert_eq!(r.json()["data"]["stock_left"], 2 - i);
    }
    s.client()
        .buy("late", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
    s.client()
        .buy("u0", "e1", "g1")
        .assert(200, 1005, "already purchased", "keep-alive");
    assert_eq!(redis.hlen_buyers("e1", "g1"), 3);
    assert_eq!(redis.xlen_orders("e1", "g1"), 3);
    let used: Option<i64> = redis.cmd(&["GET", "seckill:{e1:g1}:used"]);
    assert_eq!(used, Some(3), "the strategy's count: one number per sale");
    assert!(locks(&redis).is_empty(), "{:?}", locks(&redis));
}

#[test]
fn numbers_and_locks_left_by_dead_attempts_strand_no_stock() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    // A node died mid-sale: its numbers stay counted (far past the stock)
    // and the locks on numbers 1 to 3 stay held for a minute.
    let _: () = redis.cmd(&["SET", "seckill:{e1:g1}:used", "1000"]);
    for n in 1..=3 {
        let _: () = redis.cmd(&[
            "SET",
            &format!("seckill:{{e1:g1}}:lock:{n}"),
            "dead",
            "PX",
            "60000",
        ]);
    }
    let s = node(&redis);
    for i in 0..5 {
        s.client()
            .buy(&format!("u{i}"), "e1", "g1")
            .assert(200, 0, "ok", "close");
    }
    s.client()
        .buy("late", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
    assert_eq!(redis.stock("e1", "g1"), Some(0));
    assert_eq!(redis.hlen_buyers("e1", "g1"), 5);
    assert_eq!(redis.xlen_orders("e1", "g1"), 5);
    // Only the dead attempts' locks are left, until they expire.
    let mut left = locks(&redis);
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}");
}

#[test]
fn a_reset_and_a_delete_remove_the_count_and_the_locks() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    let s = node(&redis);
    s.client()
        .buy("u0", "e1", "g1")
        .assert(200, 0, "ok", "close");
    let _: () = redis.cmd(&["SET", "seckill:{e1:g1}:lock:4", "dead", "PX", "60000"]);
    let event = r#"{"event_id":"e1","name":"e","start_at":0,"end_at":4102444800,"goods":[{"goods_id":"g1","name":"g","price_cents":1,"stock":5}],"reset":true}"#;
    s.admin("POST", "/admin/events", Some(event))
        .assert(200, 0, "ok", "keep-alive");
    let used: Option<i64> = redis.cmd(&["GET", "seckill:{e1:g1}:used"]);
    assert_eq!(used, None);
    assert!(locks(&redis).is_empty());
    let _: () = redis.cmd(&["SET", "seckill:{e1:g1}:lock:2", "dead", "PX", "60000"]);
    let _: () = redis.cmd(&["SET", "seckill:{e1:g1}:used", "7"]);
    s.admin("DELETE", "/admin/events/e1", None)
        .assert(200, 0, "ok", "keep-alive");
    let used: Option<i64> = redis.cmd(&["GET", "seckill:{e1:g1}:used"]);
    assert_eq!(used, None);
    assert!(locks(&redis).is_empty());
}
