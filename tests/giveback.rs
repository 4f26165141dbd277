//! SPEC §4: a memory pre-deduct that does not become a sale is given back
//! (issue 2). Each test sizes the node's share so that a missing give-back
//! turns a later win into 1001.
//!
//! `CLIENT PAUSE <ms> WRITE` holds every script on the Redis (it takes
//! effect before the command returns) until `CLIENT UNPAUSE`, which keeps
//! the worker busy on one deduct for exactly as long as a test needs: the
//! state is set up through readiness checks on `/metrics`, then released.
//!
//! Every test runs with both deduct strategies (SPEC §3.1): `lua::*` and
//! `sliding_lock::*`.

mod support;

use std::time::Duration;

use seckill::config::{Config, Strategy};
use support::{buy_bytes, config, hold_worker, release_worker, shop, Client, RedisServer, Seckill};

/// The test config, with Redis calls that wait out `hold_worker`'s pause.
fn held(redis: &RedisServer, strategy: Strategy) -> Config {
    let mut c = config(redis);
    c.deduct.strategy = strategy;
    c.redis.timeout_ms = 20_000;
    c
}

/// `held`, with one token at a time: right after an attempt takes it
/// there is none to spare, so the next ones wait in the queue instead of
/// joining its batch.
fn paced(redis: &RedisServer, strategy: Strategy) -> Config {
    let mut c = held(redis, strategy);
    shop(&mut c).rate = 20;
    shop(&mut c).burst = 1;
    c
}

/// Waits until `/metrics` shows `line` (a readiness check, not a sleep).
fn wait_metric(s: &Seckill, line: &str) {
    s.wait_metric(line, Duration::from_secs(5));
}

fn already_purchased_from_redis_gives_the_unit_back(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 2)]);
    let s = Seckill::start_ready(&held(&redis, strategy));
    // Bought elsewhere: Redis knows, this node does not.
    let _: i64 = redis.cmd(&["HSET", "seckill:{e1:g1}:buyers", "x", "1-0"]);
    let mut c = s.client();
    let r = c.buy("x", "e1", "g1");
    r.assert(200, 1005, "already purchased", "close");
    // Share 2: both must still win.
    s.client()
        .buy("u1", "e1", "g1")
        .assert(200, 0, "ok", "close");
    s.client()
        .buy("u2", "e1", "g1")
        .assert(200, 0, "ok", "close");
    // And the node now answers x from memory, keeping the connection.
    s.client()
        .buy("x", "e1", "g1")
        .assert(200, 1005, "already purchased", "keep-alive");
}

fn redis_error_gives_the_unit_back(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 1)]);
    let s = Seckill::start_ready(&held(&redis, strategy));
    // A buyers key of the wrong type makes the script fail inside Redis.
    let _: () = redis.cmd(&["SET", "seckill:{e1:g1}:buyers", "not a hash"]);
    s.client()
        .buy("u1", "e1", "g1")
        .assert(503, 1002, "redis error", "close");
    let _: i64 = redis.cmd(&["DEL", "seckill:{e1:g1}:buyers"]);
    // Share 1: the failed attempt's unit must be back for this win.
    s.client()
        .buy("u2", "e1", "g1")
        .assert(200, 0, "ok", "close");
}

fn queue_timeout_answers_1003_and_gives_the_unit_back(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 3)]);
    // One token at a time: right after u1 takes it there is none to spare, so u2 and
    // u3 cannot join u1's batch; they wait in the queue.
    let mut c = paced(&redis, strategy);
    c.server.request_timeout_ms = 200;
    let s = Seckill::start_ready(&c);
    // u1 is in the worker, held; only then do u2 and u3 queue (sent
    // earlier, they could join u1's batch and not wait in the queue).
    let mut u1 = hold_worker(&redis, &s, "u1", "g1");
    let mut waiting: Vec<Client> = ["u2", "u3"]
        .iter()
        .map(|uid| {
            let mut c = s.client();
            c.send(&buy_bytes(uid, "e1", "g1", ""));
            c
        })
        .collect();
    wait_metric(&s, "seckill_queue_depth 2");
    // Let them grow older than request_timeout_ms while queued.
    std::thread::sleep(Duration::from_millis(300));
    release_worker(&redis);
    u1.read().assert(200, 0, "ok", "close");
    for c in &mut waiting {
        c.read().assert(503, 1003, "request timeout", "close");
    }
    // Share 3, one sold: two units are back.
    s.client()
        .buy("u4", "e1", "g1")
        .assert(200, 0, "ok", "close");
    s.client()
        .buy("u5", "e1", "g1")
        .assert(200, 0, "ok", "close");
    assert_eq!(redis.stock("e1", "g1"), Some(0));
}

fn full_queue_answers_1004_and_gives_the_unit_back(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 4)]);
    // One token at a time: u2 cannot join u1's batch, it waits in the queue (size 1).
    let mut c = paced(&redis, strategy);
    shop(&mut c).size = 1;
    let s = Seckill::start_ready(&c);
    let mut u1 = hold_worker(&redis, &s, "u1", "g1");
    let mut u2 = s.client();
    u2.send(&buy_bytes("u2", "e1", "g1", ""));
    wait_metric(&s, "seckill_queue_depth 1"); // u2 fills the queue
    let mut u3 = s.client();
    let r = u3.buy("u3", "e1", "g1");
    r.assert(503, 1004, "busy", "keep-alive");
    assert_eq!(r.header("retry-after"), Some("1"));
    // u2 again while its first attempt is queued: 1004 from memory.
    let r = s.client().buy("u2", "e1", "g1");
    r.assert(503, 1004, "busy", "keep-alive");
    assert_eq!(r.header("retry-after"), Some("1"));

    release_worker(&redis);
    u1.read().assert(200, 0, "ok", "close");
    u2.read().assert(200, 0, "ok", "close");
    // Share 4, two sold, u3's unit back: two more wins.
    s.client()
        .buy("u4", "e1", "g1")
        .assert(200, 0, "ok", "close");
    s.client()
        .buy("u5", "e1", "g1")
        .assert(200, 0, "ok", "close");
    assert_eq!(redis.stock("e1", "g1"), Some(0));
}

/// Issue 7 (2): with `orders` of the wrong type, the script used to
/// `DECR` before its `XADD` failed, and Redis does not roll a script back:
/// five buyers got 1002 each while the stock went 5 -> 0 with no buyer and
/// no order. The script now checks every key before its first write, the
/// error is counted, and it does not open the breaker for other goods.
fn wrong_type_orders_key_burns_no_stock(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 5), ("g2", 5)]);
    let s = Seckill::start_ready(&held(&redis, strategy));
    let _: () = redis.cmd(&["SET", "seckill:{e1:g1}:orders", "not a stream"]);
    for i in 0..5 {
        s.client()
            .buy(&format!("u{i}"), "e1", "g1")
            .assert(503, 1002, "redis error", "close");
    }
    assert_eq!(redis.stock("e1", "g1"), Some(5), "no unit burnt");
    assert_eq!(redis.hlen_buyers("e1", "g1"), 0);
    let kind: String = redis.cmd(&["TYPE", "seckill:{e1:g1}:orders"]);
    assert_eq!(kind, "string", "nothing written to the bad key");
    assert_eq!(s.metric("seckill_deduct_errors_total"), 5.0);
    // One broken goods does not stop the others: the breaker stays closed.
    assert_eq!(s.metric("seckill_breaker_open"), 0.0);
    s.client()
        .buy("other", "e1", "g2")
        .assert(200, 0, "ok", "close");
    // Fixed, the goods sells its whole stock: every unit came back.
    let _: i64 = redis.cmd(&["DEL", "seckill:{e1:g1}:orders"]);
    for i in 0..5 {
        s.client()
            .buy(&format!("w{i}"), "e1", "g1")
            .assert(200, 0, "ok", "close");
    }
    assert_eq!(redis.stock("e1", "g1"), Some(0));
    assert_eq!(redis.xlen_orders("e1", "g1"), 5);
}

crate::with_each_strategy!(
    already_purchased_from_redis_gives_the_unit_back,
    redis_error_gives_the_unit_back,
    queue_timeout_answers_1003_and_gives_the_unit_back,
    full_queue_answers_1004_and_gives_the_unit_back,
    wrong_type_orders_key_burns_no_stock
);
