//! No undersell (SPEC §4): a node whose memory share has been empty for a
//! second while Redis still has stock takes a new share, so the whole stock
//! sells whenever buyers keep coming to any live node: when the traffic is
//! skewed, and when a node dies with its share in hand. Three real server
//! processes on one real Redis, `stock.factor = 1.0` (exact shares: without
//! the refill, each node could sell a third and no more).

mod support;

use std::time::Duration;

use support::{eventually, one_of_three, RedisServer, Seckill};

const STOCK: i64 = 9;

/// Sends fresh users to `nodes[route(i)]`, one attempt at a time, until
/// Redis has no stock left; returns the wins. Every answer is a win or
/// "no stock".
fn buy_until_sold_out(
    redis: &RedisServer,
    nodes: &[&Seckill],
    route: impl Fn(usize) -> usize,
) -> i64 {
    let mut wins = 0;
    let mut i = 0;
    eventually(Duration::from_secs(30), "the whole stock sold", || {
        let r = nodes[route(i)].client().buy(&format!("u{i}"), "e1", "g1");
        i += 1;
        match r.json()["code"].as_i64() {
            Some(0) => wins += 1,
            Some(1001) => {}
            other => panic!("attempt {i}: code {other:?}: {r:?}"),
        }
        redis.stock("e1", "g1") == Some(0)
    });
    wins
}

fn assert_sold_exactly(redis: &RedisServer, wins: i64) {
    assert_eq!(wins, STOCK, "wins seen by the clients");
    assert_eq!(redis.stock("e1", "g1"), Some(0));
    assert_eq!(redis.hlen_buyers("e1", "g1"), STOCK);
    assert_eq!(redis.xlen_orders("e1", "g1"), STOCK);
}

#[test]
fn skewed_traffic_sells_the_whole_stock() {
    let redis = RedisServer::with_e1(&[("g1", STOCK)]);
    let (a, b, _c) = (
        one_of_three(&redis),
        one_of_three(&redis),
        one_of_three(&redis),
    );
    // 9 of every 10 attempts to a, one to b, none to c: without the refill
    // c's three units would never sell.
    let wins = buy_until_sold_out(&redis, &[&a, &b], |i| usize::from(i % 10 == 0));
    assert_sold_exactly(&redis, wins);
    // Sold out in Redis: a's share stays empty, answered from memory.
    let r = a.client().buy("late", "e1", "g1");
    assert_eq!(r.json()["code"].as_i64(), Some(1001));
    assert!(
        a.metrics()
            .contains("seckill_stock_share{event=\"e1\",goods=\"g1\"} 0"),
        "{}",
        a.metrics()
    );
}

#[test]
fn a_node_killed_with_its_share_in_hand_strands_nothing() {
    let redis = RedisServer::with_e1(&[("g1", STOCK)]);
    let (a, b, doomed) = (
        one_of_three(&redis),
        one_of_three(&redis),
        one_of_three(&redis),
    );
    // The doomed node sells one of its three units, then dies (SIGKILL)
    // holding the other two.
    let r = doomed.client().buy("first", "e1", "g1");
    assert_eq!(r.json()["code"].as_i64(), Some(0), "{r:?}");
    drop(doomed);
    let wins = buy_until_sold_out(&redis, &[&a, &b], |i| i % 2);
    assert_sold_exactly(&redis, wins + 1);
}
