//! Faults (issue 3): Redis stopping, hanging and coming back; sold out on
//! one node reaching the others; the blacklist file; a client hanging up
//! while its task waits.

mod support;

use std::time::{Duration, Instant};

use support::{buy_bytes, config, hold_worker, release_worker, RedisServer, Seckill};

const FAR: u64 = 4_102_444_800;

fn start(redis: &RedisServer, server: &str, extra: &str) -> Seckill {
    let text = config(redis, server, "rate = 0", "nodes = 1\nfactor = 1.0") + extra;
    let s = Seckill::start(&text);
    assert!(s.wait_for_event("e1", Duration::from_secs(3)));
    s
}

#[test]
fn redis_down_opens_the_breaker_and_sales_resume_when_it_is_back() {
    let mut redis = RedisServer::start();
    redis.seed("e1", &[("g1", 10)], 0, FAR);
    let s = start(&redis, "", "[breaker]\nfailures = 3\nprobe_ms = 300\n");
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
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.client().get("/readyz", None).status != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.client()
        .get("/readyz", None)
        .assert(503, 1002, "redis error", "keep-alive");

    // Back, empty (no persistence): the same stock again.
    redis.restart();
    redis.seed("e1", &[("g1", 10)], 0, FAR);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    loop {
        n += 1;
        if s.client().buy(&format!("r{n}"), "e1", "g1").code() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "sales never resumed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(text(&s).contains("seckill_breaker_open 0"));
    // Every unit the failed attempts took came back: 9 more sell.
    for i in 0..9 {
        s.client()
            .buy(&format!("w{i}"), "e1", "g1")
            .assert(200, 0, "ok", "close");
    }
    assert_eq!(redis.stock("e1", "g1"), Some(0));
}

#[test]
fn hanging_redis_is_a_failure_not_a_stall() {
    let redis = RedisServer::start();
    redis.seed("e1", &[("g1", 10)], 0, FAR);
    let text = config(&redis, "", "rate = 0", "nodes = 1\nfactor = 1.0")
        .replace("[redis]\n", "[redis]\ntimeout_ms = 200\n");
    let s = Seckill::start(&text);
    assert!(s.wait_for_event("e1", Duration::from_secs(3)));
    let _: () = redis.cmd(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    s.client()
        .buy("a", "e1", "g1")
        .assert(503, 1002, "redis error", "close");
}

#[test]
fn sold_out_on_one_node_is_sold_out_on_the_other_within_a_second() {
    let redis = RedisServer::start();
    redis.seed("e1", &[("g1", 2)], 0, FAR);
    // nodes 2, factor 2: each node's share is the whole stock (2).
    let node = || {
        let s = Seckill::start(&config(&redis, "", "rate = 0", "nodes = 2\nfactor = 2.0"));
        assert!(s.wait_for_event("e1", Duration::from_secs(3)));
        s
    };
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
    assert!(
        b.wait_metric(
            "seckill_stock_share{event=\"e1\",goods=\"g1\"} 0",
            Duration::from_secs(1)
        ),
        "node b's share reached 0 within 1 s"
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
    let redis = RedisServer::start();
    redis.seed("e1", &[("g0", 0)], 0, FAR);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blacklist.txt");
    // Missing at start: treated as empty.
    let s = start(
        &redis,
        "",
        &format!("[blacklist]\nfile = \"{}\"\n", path.display()),
    );
    s.client()
        .buy("bot", "e1", "g0")
        .assert(200, 1001, "no stock", "keep-alive");

    let until = |want: i64| {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let code = s.client().buy("bot", "e1", "g0").code();
            if code == want {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    std::fs::write(&path, "# bots\nbot\nother-bot\n").expect("write blacklist");
    assert!(until(4003), "the new file is used within 1 s");
    s.client()
        .buy("bot", "e1", "g0")
        .assert(403, 4003, "blocked", "keep-alive");
    s.client()
        .buy("human", "e1", "g0")
        .assert(200, 1001, "no stock", "keep-alive");
    std::fs::write(&path, "other-bot\n").expect("rewrite blacklist");
    assert!(until(1001), "a removed uid is unblocked within 1 s");
    std::fs::remove_file(&path).expect("remove blacklist");
    s.client().buy("other-bot", "e1", "g0");
    let deadline = Instant::now() + Duration::from_secs(1);
    while s.client().buy("other-bot", "e1", "g0").code() != 1001 {
        assert!(
            Instant::now() < deadline,
            "a removed file counts as empty within 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn client_hanging_up_while_queued_keeps_its_sale() {
    let redis = RedisServer::start();
    redis.seed("e1", &[("g1", 5)], 0, FAR);
    // Redis calls may wait out the pause below. One token: u2 cannot join
    // u1's batch, it waits in the queue.
    let text = config(
        &redis,
        "",
        "rate = 20\nburst = 1",
        "nodes = 1\nfactor = 1.0",
    )
    .replace("[redis]\n", "[redis]\ntimeout_ms = 20000\n");
    let s = Seckill::start(&text);
    assert!(s.wait_for_event("e1", Duration::from_secs(3)));
    let mut u1 = hold_worker(&redis, &s, "u1", "g1");
    let mut u2 = s.client();
    u2.send(&buy_bytes("u2", "e1", "g1", ""));
    assert!(s.wait_metric("seckill_queue_depth 1", Duration::from_secs(5)));
    drop(u2); // hangs up while queued
    release_worker(&redis);

    u1.read().assert(200, 0, "ok", "close");
    // The worker went on with u2's sale: the order stands and shows.
    assert!(s.wait_metric("seckill_queue_depth 0", Duration::from_secs(5)));
    assert!(s.wait_metric(
        "seckill_worker_responses_total{code=\"0\"} 2",
        Duration::from_secs(5)
    ));
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
