//! Stock top-up mid-event (SPEC §2, `POST /admin/events/E/goods/G/stock`):
//! one script raises the goods' `stock` and `added` together, every figure
//! of its stock is the definition's plus `added`, and every node grows its
//! share and forgets its sold-out mark within a second. Three real server
//! processes on one real Redis; the stock key is sampled the whole time.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{check, config, one_of_three, RedisServer, Seckill};

const STOCK: i64 = 30;
const ADDED: i64 = 50;

/// Reads `stock`, `HLEN buyers` and `added` of e1/g1 in one transaction
/// until stopped, failing at the first instant the books show an oversell:
/// stock below 0, or more buyers than the stock had (definition plus
/// top-ups). Returns how many samples it took.
fn sample_books(redis: &RedisServer, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut conn = redis.conn();
    std::thread::spawn(move || {
        let mut samples = 0;
        while !stop.load(Ordering::Acquire) {
            let (left, buyers, added): (i64, i64, Option<i64>) = redis::pipe()
                .atomic()
                .get("seckill:{e1:g1}:stock")
                .hlen("seckill:{e1:g1}:buyers")
                .get("seckill:{e1:g1}:added")
                .query(&mut conn)
                .expect("sample");
            let stock = STOCK + added.unwrap_or(0);
            assert!(left >= 0, "stock key below 0: {left}");
            assert!(
                buyers <= stock && buyers + left == stock,
                "oversold: {buyers} buyers, {left} left, stock {stock}"
            );
            samples += 1;
        }
        samples
    })
}

/// Sells one attempt per fresh user `{prefix}{i}`, round robin over
/// `nodes`, and returns each answer's code.
fn buy_round_robin(nodes: &[&Seckill], prefix: &str, users: usize) -> Vec<i64> {
    (0..users)
        .map(|i| {
            let r = nodes[i % nodes.len()]
                .client()
                .buy(&format!("{prefix}{i}"), "e1", "g1");
            r.code()
        })
        .collect()
}

fn count(codes: &[i64], code: i64) -> usize {
    codes.iter().filter(|&&c| c == code).count()
}

#[test]
fn a_top_up_after_a_sell_out_sells_exactly_the_units_added_on_every_node() {
    let redis = RedisServer::with_e1(&[("g1", STOCK)]);
    let (a, b, c) = (
        one_of_three(&redis),
        one_of_three(&redis),
        one_of_three(&redis),
    );
    let nodes = [&a, &b, &c];
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_books(&redis, stop.clone());

    // Sold out on every node: 10 each, then "no stock" from memory.
    let codes = buy_round_robin(&nodes, "first", 33);
    assert_eq!(count(&codes, 0), STOCK as usize, "{codes:?}");
    assert_eq!(count(&codes, 1001), 3, "{codes:?}");
    for n in nodes {
        n.wait_metric(
            "seckill_stock_share{event=\"e1\",goods=\"g1\"} 0",
            Duration::from_secs(2),
        );
    }

    let r = a.admin(
        "POST",
        "/admin/events/e1/goods/g1/stock",
        Some(&format!(r#"{{"add":{ADDED}}}"#)),
    );
    r.assert(200, 0, "ok", "keep-alive");
    let data = &r.json()["data"];
    assert_eq!(data["goods_id"], "g1");
    assert_eq!(data["stock"], STOCK + ADDED);
    assert_eq!(data["stock_left"], ADDED);
    assert_eq!(data["sold"], STOCK);

    // Within a second every node's share grew by ceil(50 × 1.0 / 3).
    for n in nodes {
        n.wait_metric(
            "seckill_stock_share{event=\"e1\",goods=\"g1\"} 17",
            Duration::from_secs(1),
        );
    }
    // The next 50 distinct users win wherever they land, then it is sold
    // out again.
    let codes = buy_round_robin(&nodes, "next", ADDED as usize);
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
    let codes = buy_round_robin(&nodes, "late", 6);
    assert!(codes.iter().all(|&c| c == 1001), "{codes:?}");

    stop.store(true, Ordering::Release);
    let samples = sampler.join().expect("the books never showed an oversell");
    eprintln!("{samples} samples of the books, none oversold");
    assert!(samples > 0);
    let total = STOCK + ADDED;
    assert_eq!(redis.stock("e1", "g1"), Some(0));
    assert_eq!(redis.hlen_buyers("e1", "g1"), total);
    assert_eq!(redis.xlen_orders("e1", "g1"), total);
    let g = &a.admin("GET", "/admin/events/e1", None).json()["data"]["goods"][0];
    assert_eq!(
        (
            g["stock"].as_i64(),
            g["stock_left"].as_i64(),
            g["sold"].as_i64()
        ),
        (Some(total), Some(0), Some(total))
    );
    let (code, out) = check(&config(&redis), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(" {total} ")),
        "stock with top-ups: {out}"
    );
}

#[test]
fn a_top_up_refuses_bad_bodies_and_unknown_goods_and_a_reset_forgets_it() {
    let redis = RedisServer::with_e1(&[("g1", 5)]);
    let s = Seckill::start_ready(&config(&redis));
    let path = "/admin/events/e1/goods/g1/stock";
    for bad in [
        r#"{"add":0}"#,
        r#"{"add":-1}"#,
        r#"{"add":1.5}"#,
        r#"{"add":"3"}"#,
        r#"{"add":1,"more":2}"#,
        r#"{}"#,
        r#"[1]"#,
        "add=1",
        r#"{"add":1000000000000000}"#,
    ] {
        s.admin("POST", path, Some(bad))
            .assert(400, 4000, "bad request", "close");
    }
    for unknown in [
        "/admin/events/e1/goods/nope/stock",
        "/admin/events/nope/goods/g1/stock",
    ] {
        s.admin("POST", unknown, Some(r#"{"add":1}"#))
            .assert(404, 4004, "not found", "keep-alive");
    }
    let r = s.admin("GET", path, None);
    r.assert(405, 4005, "method not allowed", "keep-alive");
    assert_eq!(r.header("allow"), Some("POST"));
    let wrong_key =
        s.admin_client()
            .request("POST", path, Some("Bearer nope"), Some(r#"{"add":1}"#));
    wrong_key.assert(401, 4001, "unauthorized", "keep-alive");
    assert_eq!(redis.stock("e1", "g1"), Some(5), "nothing was added");

    // Past the largest stock the deduct takes (15 digits): refused, and
    // nothing written.
    let r = s.admin("POST", path, Some(r#"{"add":999999999999999}"#));
    r.assert(400, 4000, "bad request", "close");
    assert_eq!(redis.stock("e1", "g1"), Some(5));

    s.admin("POST", path, Some(r#"{"add":3}"#))
        .assert(200, 0, "ok", "keep-alive");
    let added: Option<i64> = redis.cmd(&["GET", "seckill:{e1:g1}:added"]);
    assert_eq!((redis.stock("e1", "g1"), added), (Some(8), Some(3)));

    // A reset starts the goods' sale again from its definition.
    let event = r#"{"event_id":"e1","name":"e","start_at":0,"end_at":4102444800,"goods":[{"goods_id":"g1","name":"g","price_cents":1,"stock":5}],"reset":true}"#;
    s.admin("POST", "/admin/events", Some(event))
        .assert(200, 0, "ok", "keep-alive");
    let added: Option<i64> = redis.cmd(&["GET", "seckill:{e1:g1}:added"]);
    assert_eq!((redis.stock("e1", "g1"), added), (Some(5), None));
    let g = &s.admin("GET", "/admin/events/e1", None).json()["data"]["goods"][0];
    assert_eq!(g["stock"], 5);

    // DELETE takes the top-ups with the goods.
    s.admin("POST", path, Some(r#"{"add":2}"#))
        .assert(200, 0, "ok", "keep-alive");
    s.admin("DELETE", "/admin/events/e1", None)
        .assert(200, 0, "ok", "keep-alive");
    let added: Option<i64> = redis.cmd(&["GET", "seckill:{e1:g1}:added"]);
    assert_eq!(added, None);
}
