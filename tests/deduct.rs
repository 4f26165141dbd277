//! Stage 7 against a real Redis (issue 4): the pipelined deduct answers
//! each attempt on its own, falls back to EVAL on NOSCRIPT inside a batch,
//! and a failing script does not hide its neighbours' sales; the worker
//! sends queued attempts in one round trip.

mod support;

use std::time::Duration;

use seckill::attempt::Attempt;
use seckill::store::deduct::{script_sha, DeductOutcome, Deducter, SCRIPT};
use support::{
    buy_bytes, config, eventually, hold_worker, metric_value, release_worker, RedisServer, Seckill,
    FAR,
};

fn attempt(uid: &str, goods: &str) -> Attempt {
    Attempt {
        uid: uid.into(),
        event_id: "e1".into(),
        goods_id: goods.into(),
    }
}

#[test]
fn batch_answers_each_attempt_and_falls_back_to_eval() {
    let redis = RedisServer::with_e1(&[("g1", 3), ("g0", 0), ("bad", 5)]);
    let _: () = redis.cmd(&["SET", "seckill:{e1:bad}:buyers", "not a hash"]);
    let _: () = redis.cmd(&["SCRIPT", "FLUSH"]);
    let mut d = Deducter::new(redis.url(), Duration::from_secs(5)).expect("deducter");
    let batch = [
        attempt("a", "g1"),
        attempt("b", "bad"),
        attempt("a", "g1"),
        attempt("c", "g1"),
        attempt("d", "g0"),
        attempt("e", "missing"),
        attempt("f", "g1"),
        attempt("g", "g1"),
    ];
    let refs: Vec<&Attempt> = batch.iter().collect();
    let results = d.deduct_many(&refs, 1, None);
    let got: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(DeductOutcome::Won { stock_left, .. }) => format!("won {stock_left}"),
            Ok(other) => format!("{other:?}"),
            Err(_) => "error".into(),
        })
        .collect();
    assert_eq!(
        got,
        [
            "won 2",
            "error",
            "AlreadyPurchased",
            "won 1",
            "NoStock",
            "NotFound",
            "won 0",
            "NoStock"
        ]
    );
    let loaded: Vec<i64> = redis.cmd(&["SCRIPT", "EXISTS", &script_sha(SCRIPT)]);
    assert_eq!(loaded, vec![1], "EVAL loaded the script");
    assert_eq!(redis.hlen_buyers("e1", "g1"), 3);
    assert_eq!(redis.xlen_orders("e1", "g1"), 3);
    assert_eq!(redis.stock("e1", "g1"), Some(0));
}

/// Issue 7 (2), SPEC §3: the script checks every key (types, an integer
/// stock) before its first write, so a bad key is an error with nothing
/// written, never a unit gone without its order.
#[test]
fn bad_keys_fail_the_script_before_any_write() {
    let redis = RedisServer::start();
    redis.seed(
        "e1",
        &[
            ("orders", 5),
            ("buyers", 5),
            ("float", 5),
            ("huge", 5),
            ("full", 5),
            ("zero", 5),
        ],
        0,
        FAR,
    );
    let _: () = redis.cmd(&["SET", "seckill:{e1:orders}:orders", "x"]);
    let _: () = redis.cmd(&["SET", "seckill:{e1:buyers}:buyers", "x"]);
    let _: () = redis.cmd(&["SET", "seckill:{e1:float}:stock", "4.5"]);
    let _: () = redis.cmd(&["SET", "seckill:{e1:huge}:stock", "99999999999999999999"]);
    // Lua reads "05" as 5; Redis's DECR refuses it.
    let _: () = redis.cmd(&["SET", "seckill:{e1:zero}:stock", "05"]);
    // A stream whose last id is the largest: no XADD * can follow it.
    let _: String = redis.cmd(&[
        "XADD",
        "seckill:{e1:full}:orders",
        "18446744073709551615-18446744073709551615",
        "uid",
        "x",
    ]);
    let _: i64 = redis.cmd(&["DEL", "seckill:{e1:stock}:stock"]);
    let _: i64 = redis.cmd(&["HSET", "seckill:{e1:stock}:stock", "f", "v"]);
    let mut d = Deducter::new(redis.url(), Duration::from_secs(5)).expect("deducter");
    let batch = [
        attempt("a", "orders"),
        attempt("a", "buyers"),
        attempt("a", "float"),
        attempt("a", "huge"),
        attempt("a", "stock"),
        attempt("a", "full"),
        attempt("a", "zero"),
    ];
    let refs: Vec<&Attempt> = batch.iter().collect();
    for (r, a) in d.deduct_many(&refs, 1, None).iter().zip(&batch) {
        match r {
            Err(e) => assert!(e.is_goods_specific(), "{}: {e:?}", a.goods_id),
            Ok(o) => panic!("{}: {o:?}", a.goods_id),
        }
    }
    assert_eq!(redis.stock("e1", "orders"), Some(5));
    assert_eq!(redis.stock("e1", "buyers"), Some(5));
    assert_eq!(redis.stock("e1", "full"), Some(5));
    assert_eq!(redis.xlen_orders("e1", "full"), 1);
    let float: String = redis.cmd(&["GET", "seckill:{e1:float}:stock"]);
    assert_eq!(float, "4.5");
    for g in ["orders", "float", "huge", "stock", "full", "zero"] {
        assert_eq!(redis.hlen_buyers("e1", g), 0, "{g}");
    }
    for g in ["buyers", "float", "huge", "stock", "zero"] {
        assert_eq!(redis.xlen_orders("e1", g), 0, "{g}");
    }
}

#[test]
fn worker_sends_queued_attempts_in_one_round_trip() {
    let redis = RedisServer::with_e1(&[("g1", 20)]);
    let mut c = config(&redis);
    c.redis.timeout_ms = 20_000; // the held round trip waits out the pause
    let s = Seckill::start_ready(&c);
    let mut first = hold_worker(&redis, &s, "u0", "g1");
    let mut rest: Vec<_> = (1..=9)
        .map(|i| {
            let mut c = s.client();
            c.send(&buy_bytes(&format!("u{i}"), "e1", "g1", ""));
            c
        })
        .collect();
    // Every attempt is in the worker's batch or in the queue (some may
    // have joined u0's batch as it was sent).
    eventually(Duration::from_secs(5), "all ten attempts arrive", || {
        let m = s.metrics();
        let value = |name: &str| metric_value(&m, name);
        value("seckill_tokens_spent_total") + value("seckill_queue_depth") == 10.0
    });
    release_worker(&redis);
    first.read().assert(200, 0, "ok", "close");
    for c in &mut rest {
        c.read().assert(200, 0, "ok", "close");
    }
    // u0's round trip, then one for everything queued behind it.
    let trips = s.metric("seckill_redis_round_trip_seconds_count");
    assert!(
        (1.0..=2.0).contains(&trips),
        "10 attempts took {trips} round trips"
    );
    assert_eq!(redis.hlen_buyers("e1", "g1"), 10);
}
