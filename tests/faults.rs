//! Faults (issue 3): Redis stopping, hanging and coming back; sold out on
//! one node reaching the others; the blacklist file; a client hanging up
//! while its task waits.

mod support;

use seckill::config::Strategy;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{
    buy_bytes, config, eventually, hold_worker, release_worker, shop, RedisServer, Seckill, FAR,
};

#[test]
fn redis_down_opens_the_breaker_and_sales_resume_when_it_is_back() {
    let mut redis = RedisServer::with_e1(&[("g1", 10)]);
    let mut c = config(&redis);
    c.breaker.failures = 3;
    c.breaker.probe_ms = 300;
    let s = Seckill::start_ready(&c);
    let text = |s: &Seckill| s.metrics();
    redis.stop();

    // Failures in a row, answered by the worker (hijacked: close).
    for uid in ["a1", "a2", "a3"] {
        s.client()
            .buy(uid, "e1", "g1")
            .assert(503, 1002, "redis error", "close");
    }
    assert!(text(&s).contains("seckill_breaker_open 1"), "{}", text(&s));
    // Open: refused on the event loop, connection kept.
    let mut c = s.client();
    c.buy("a4", "e1", "g1")
        .assert(503, 1002, "redis error", "keep-alive");
    c.get("/healthz", None).assert(200, 0, "ok", "keep-alive");
    eventually(Duration::from_secs(2), "/readyz turns 503", || {
        s.client().get("/readyz", None).status == 503
    });
    s.client()
        .get("/readyz", None)
        .assert(503, 1002, "redis error", "keep-alive");

    // Back, empty (no persistence): the same stock again.
    redis.restart();
    redis.seed("e1", &[("g1", 10)], 0, FAR);
    let mut n = 0;
    eventually(Duration::from_secs(5), "sales resume", || {
        n += 1;
        s.client().buy(&format!("r{n}"), "e1", "g1").code() == 0
    });
    assert!(text(&s).contains("seckill_breaker_open 0"));
    // Every unit the failed attempts took came back: 9 more sell.
    for i in 0..9 {
        s.client()
            .buy(&format!("w{i}"), "e1", "g1")
            .assert(200, 0, "ok", "close");
    }
    assert_eq!(redis.stock("e1", "g1"), Some(0));
}

fn hanging_redis_is_a_failure_not_a_stall(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 10)]);
    let mut c = config(&redis);
    c.redis.timeout_ms = 200;
    c.deduct.strategy = strategy;
    let s = Seckill::start_ready(&c);
    let _: () = redis.cmd(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    s.client()
        .buy("a", "e1", "g1")
        .assert(503, 1002, "redis error", "close");
    // Issue 7 (4): the 1002 is the truth: the script that timed out does
    // not run once Redis resumes (the worker resolved the outcome, killing
    // the connection it was sent on, before answering).
    let _: () = redis.cmd(&["CLIENT", "UNPAUSE"]);
    let _: String = redis.cmd(&["PING"]);
    assert_eq!(redis.hlen_buyers("e1", "g1"), 0);
    assert_eq!(redis.stock("e1", "g1"), Some(10));
}

/// Review of issue 11: the sliding lock ran a batch's attempts one after
/// the other, each with a fresh timeout, so with Redis hanging a batch of
/// n took n timeouts and answers came long past `request_timeout_ms`. A
/// whole batch now takes one timeout, as the script's does: every attempt
/// is answered 1002 well within the request timeout.
fn hanging_redis_answers_every_queued_attempt_within_the_request_timeout(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", 20)]);
    let mut c = config(&redis);
    c.redis.timeout_ms = 300;
    c.server.request_timeout_ms = 2500;
    c.breaker.failures = 1000;
    c.deduct.strategy = strategy;
    let s = Seckill::start_ready(&c);
    let _: () = redis.cmd(&["CLIENT", "PAUSE", "8000", "WRITE"]);
    let addr = s.addr;
    let buyers: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let r = support::Client::connect(addr).buy(&format!("u{i}"), "e1", "g1");
                (r, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for b in buyers {
        let (r, took) = b.join().expect("buyer");
        r.assert(503, 1002, "redis error", "close");
        slowest = slowest.max(took);
    }
    eprintln!("slowest of 12 attempts with Redis hanging: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(2500),
        "an attempt was answered after {slowest:?}, past request_timeout_ms"
    );
    let _: () = redis.cmd(&["CLIENT", "UNPAUSE"]);
    let _: String = redis.cmd(&["PING"]);
    assert_eq!(redis.hlen_buyers("e1", "g1"), 0);
    assert_eq!(redis.stock("e1", "g1"), Some(20));
}

crate::with_each_strategy!(
    hanging_redis_is_a_failure_not_a_stall,
    hanging_redis_answers_every_queued_attempt_within_the_request_timeout
);

#[test]
fn sold_out_on_one_node_is_sold_out_on_the_other_within_a_second() {
    let redis = RedisServer::with_e1(&[("g1", 2)]);
    // nodes 2, factor 2: each node's share is the whole stock (2).
    let mut c = config(&redis);
    c.stock.nodes = 2;
    c.stock.factor = 2.0;
    let node = || Seckill::start_ready(&c);
    let (a, b) = (node(), node());
    a.client()
        .buy("u1", "e1", "g1")
        .assert(200, 0, "ok", "close");
    b.client()
        .buy("u2", "e1", "g1")
        .assert(200, 0, "ok", "close");
    // Node a still has share, tries Redis, learns it is sold out.
    a.client()
        .buy("u3", "e1", "g1")
        .assert(200, 1001, "no stock", "close");
    // Node b's share reaches 0 within 1 s.
    b.wait_metric(
        "seckill_stock_share{event=\"e1\",goods=\"g1\"} 0",
        Duration::from_secs(1),
    );
    // From memory now: keep-alive, and no token spent on b for it.
    let spent = b
        .metrics()
        .lines()
        .find(|l| l.starts_with("seckill_tokens_spent_total"))
        .map(String::from);
    b.client()
        .buy("u4", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
    let after = b
        .metrics()
        .lines()
        .find(|l| l.starts_with("seckill_tokens_spent_total"))
        .map(String::from);
    assert_eq!(spent, after);
}

#[test]
fn blacklisted_uid_gets_403_and_the_file_reloads_within_a_second() {
    let redis = RedisServer::with_e1(&[("g0", 0)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blacklist.txt");
    // Missing at start: treated as empty.
    let mut c = config(&redis);
    c.blacklist.file = path.display().to_string();
    let s = Seckill::start_ready(&c);
    s.client()
        .buy("bot", "e1", "g0")
        .assert(200, 1001, "no stock", "keep-alive");

    let s = &s;
    let bot_gets = |want: i64| move || s.client().buy("bot", "e1", "g0").code() == want;
    std::fs::write(&path, "# bots\nbot\nother-bot\n").expect("write blacklist");
    eventually(
        Duration::from_secs(1),
        "the new file is used within 1 s",
        bot_gets(4003),
    );
    s.client()
        .buy("bot", "e1", "g0")
        .assert(403, 4003, "blocked", "keep-alive");
    s.client()
        .buy("human", "e1", "g0")
        .assert(200, 1001, "no stock", "keep-alive");
    std::fs::write(&path, "other-bot\n").expect("rewrite blacklist");
    eventually(
        Duration::from_secs(1),
        "a removed uid is unblocked within 1 s",
        bot_gets(1001),
    );
    std::fs::remove_file(&path).expect("remove blacklist");
    s.client().buy("other-bot", "e1", "g0");
    eventually(
        Duration::from_secs(1),
        "a removed file counts as empty within 1 s",
        || s.client().buy("other-bot", "e1", "g0").code() == 1001,
    );
}

#[test]
fn client_hanging_up_while_queued_keeps_its_sale() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    // Redis calls may wait out the pause below. One token: u2 cannot join
    // u1's batch, it waits in the queue.
    let mut c = config(&redis);
    c.redis.timeout_ms = 20_000;
    shop(&mut c).rate = 20;
    shop(&mut c).burst = 1;
    let s = Seckill::start_ready(&c);
    let mut u1 = hold_worker(&redis, &s, "u1", "g1");
    let mut u2 = s.client();
    u2.send(&buy_bytes("u2", "e1", "g1", ""));
    s.wait_metric("seckill_queue_depth 1", Duration::from_secs(5));
    drop(u2); // hangs up while queued
    release_worker(&redis);

    u1.read().assert(200, 0, "ok", "close");
    // The worker went on with u2's sale: the order stands and shows.
    s.wait_metric("seckill_queue_depth 0", Duration::from_secs(5));
    s.wait_metric(
        "seckill_worker_responses_total{code=\"0\"} 2",
        Duration::from_secs(5),
    );
    let auth = format!("Bearer {}", support::token("u2"));
    let r = s
        .client()
        .get("/shop/result?event_id=e1&goods_id=g1", Some(&auth));
    assert_eq!(r.json()["data"]["status"], "won");
    assert_eq!(redis.hlen_buyers("e1", "g1"), 2);
    s.client()
        .get("/healthz", None)
        .assert(200, 0, "ok", "keep-alive");
}

/// Runs a script that keeps Redis busy for `ms` (nothing else is served
/// meanwhile) on a thread of its own; returns once Redis is busy.
fn keep_redis_busy(redis: &RedisServer, ms: u64) -> std::thread::JoinHandle<()> {
    let mut conn = redis.conn();
    let busy = std::thread::spawn(move || {
        let script = "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] \
                      while true do t = redis.call('TIME') \
                      if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) * 1000 then break end end \
                      return 1";
        let _: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(ms)
            .query(&mut conn);
    });
    // Busy means a PING on another connection gets no answer (a raw one:
    // a client library's connection set-up would itself wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut probe =
            std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
        probe
            .set_read_timeout(Some(Duration::from_millis(30)))
            .expect("timeout");
        probe.write_all(b"PING\r\n").expect("ping");
        let mut pong = [0u8; 7];
        if probe.read_exact(&mut pong).is_err() {
            return busy;
        }
        assert!(Instant::now() < deadline, "redis never got busy");
    }
}

/// Issue 7 (4): Redis busy past `timeout_ms` (a long script of another
/// client) made the worker's round trip time out, and it answered 1002,
/// but its EVALSHA was already in Redis's socket and ran: the buyer was in
/// `buyers` and a retry got 1005. An unknown outcome is now resolved by
/// asking Redis before answering; whatever the answer, it is the truth.
#[test]
fn redis_busy_past_the_timeout_never_hides_a_sale() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    let mut c = config(&redis);
    c.server.request_timeout_ms = 3000;
    c.redis.timeout_ms = 200;
    c.breaker.failures = 1000;
    let s = Seckill::start_ready(&c);
    // The worker's connection exists, so the next attempt is sent on it.
    s.client()
        .buy("u0", "e1", "g1")
        .assert(200, 0, "ok", "close");
    let busy = keep_redis_busy(&redis, 800);
    let r = s.client().buy("u1", "e1", "g1");
    busy.join().expect("busy script");
    let order: Option<String> = redis.cmd(&["HGET", "seckill:{e1:g1}:buyers", "u1"]);
    eprintln!(
        "answer {} ({}), buyers has u1: {order:?}",
        r.code(),
        r.status
    );
    match order {
        Some(order) => {
            r.assert(200, 0, "ok", "close");
            assert_eq!(r.json()["data"]["order_id"], order.as_str());
        }
        None => r.assert(503, 1002, "redis error", "close"),
    }
    let sold = redis.hlen_buyers("e1", "g1");
    assert_eq!(redis.xlen_orders("e1", "g1"), sold);
    assert_eq!(redis.stock("e1", "g1"), Some(5 - sold));
}

/// Issue 7 (5): with Redis hanging, `/shop/result` lookups were asked one
/// at a time: the n-th waited n x `timeout_ms` (12 lookups, 1 s timeout:
/// the last answered after 12 s). They are now asked in one round trip per
/// batch: the first batch, then one more for all that came meanwhile.
#[test]
fn result_lookups_while_redis_hangs_wait_one_timeout_not_one_each() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    // A breaker that never opens here: this test is about the batches.
    let mut c = config(&redis);
    c.redis.timeout_ms = 1000;
    c.breaker.failures = 1000;
    let s = Seckill::start_ready(&c);
    // PAUSE ALL holds every command, CLIENT UNPAUSE too: it ends on its
    // own, after the test (which kills the server first).
    let _: () = redis.cmd(&["CLIENT", "PAUSE", "8000", "ALL"]);
    let addr = s.addr;
    let askers: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = support::Client::connect(addr);
                let auth = format!("Bearer {}", support::token(&format!("u{i}")));
                let started = Instant::now();
                let r = c.get("/shop/result?event_id=e1&goods_id=g1", Some(&auth));
                (r, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for a in askers {
        let (r, took) = a.join().expect("asker");
        r.assert(503, 1002, "redis error", "close");
        slowest = slowest.max(took);
    }
    eprintln!("slowest of 12 lookups with Redis hanging: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(6),
        "a lookup waited {slowest:?}: asked one at a time?"
    );
}

/// Issue 7 (5): lookups feed the breaker like sales, and while it is open
/// the event loop answers them 1002 at once, keeping the connection.
#[test]
fn result_lookups_open_the_breaker_and_are_refused_on_the_loop() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    let mut c = config(&redis);
    c.redis.timeout_ms = 300;
    c.breaker.failures = 1;
    c.breaker.probe_ms = 60_000;
    let s = Seckill::start_ready(&c);
    let _: () = redis.cmd(&["CLIENT", "PAUSE", "5000", "ALL"]);
    let auth = format!("Bearer {}", support::token("u1"));
    let path = "/shop/result?event_id=e1&goods_id=g1";
    s.client()
        .get(path, Some(&auth))
        .assert(503, 1002, "redis error", "close");
    let mut c = s.client();
    c.get(path, Some(&auth))
        .assert(503, 1002, "redis error", "keep-alive");
    c.get("/healthz", None).assert(200, 0, "ok", "keep-alive");
}

/// Issue 7 (6): one goods' stock key of the wrong type failed the whole
/// catalog read: `/readyz` 503, new events 4004, every `stock_left`
/// stale. Now the bad goods (and an event with bad JSON) is skipped,
/// logged once and counted; the rest stays live.
#[test]
fn one_bad_key_costs_only_its_goods() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    redis.seed("e2", &[("g1", 5)], 0, FAR);
    let s = Seckill::start_ready(&config(&redis));
    s.wait_for_event("e2", Duration::from_secs(3));
    let _: i64 = redis.cmd(&["DEL", "seckill:{e2:g1}:stock"]);
    let _: i64 = redis.cmd(&["HSET", "seckill:{e2:g1}:stock", "a", "b"]);
    let _: i64 = redis.cmd(&["HSET", "seckill:events", "e9", "{not json"]);
    s.wait_metric("seckill_catalog_skipped 2", Duration::from_secs(2));
    s.client()
        .get("/readyz", None)
        .assert(200, 0, "ok", "keep-alive");
    s.client()
        .buy("u1", "e2", "g1")
        .assert(404, 4004, "not found", "keep-alive");
    // The rest is live: a new event appears, a sale shows in stock_left.
    redis.seed("e3", &[("g1", 5)], 0, FAR);
    s.wait_for_event("e3", Duration::from_secs(1));
    s.client()
        .buy("u1", "e1", "g1")
        .assert(200, 0, "ok", "close");
    eventually(
        Duration::from_secs(1),
        "e1's stock_left shows the sale",
        || {
            let r = s.client().get("/event/info?event_id=e1", None);
            r.json()["data"]["goods"][0]["stock_left"] == 4
        },
    );
    // Fixed, the goods is back.
    let _: i64 = redis.cmd(&["DEL", "seckill:{e2:g1}:stock"]);
    let _: () = redis.cmd(&["SET", "seckill:{e2:g1}:stock", "5"]);
    s.wait_metric("seckill_catalog_skipped 1", Duration::from_secs(1));
    s.client()
        .buy("u1", "e2", "g1")
        .assert(200, 0, "ok", "close");
}

/// Second review of issue 10: the deducter asks `CLIENT INFO` of each
/// connection it makes, so it can kill a failed one before trusting what
/// Redis says of its attempts. A server that forbids `CLIENT` for good
/// (ACL, renamed) must still sell, with the identity unknown; any other
/// refusal (busy, loading) fails the connect instead, so it is told apart.
#[test]
fn redis_that_forbids_client_commands_still_sells() {
    let redis = RedisServer::with_e1(&[("g1", 2)]);
    let _: () = redis.cmd(&["ACL", "SETUSER", "default", "-client"]);
    let refused = redis::cmd("CLIENT")
        .arg("INFO")
        .query::<String>(&mut redis.conn())
        .expect_err("CLIENT is forbidden now");
    assert_eq!(refused.code(), Some("NOPERM"), "{refused}");
    let s = Seckill::start_ready(&config(&redis));
    s.client()
        .buy("u1", "e1", "g1")
        .assert(200, 0, "ok", "close");
    s.client()
        .buy("u1", "e1", "g1")
        .assert(200, 1005, "already purchased", "keep-alive");
    assert_eq!(redis.hlen_buyers("e1", "g1"), 1);
}
