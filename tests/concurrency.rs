//! SPEC §6.1 and §6.2 under load: three server processes on one Redis
//! (issue 2). Stock 100; 2000 distinct users plus 1000 repeat attempts from
//! 100 client threads, each request on a new connection, spread across the
//! nodes. Wins seen = HLEN buyers = XLEN orders = 100, stock 0, nobody wins
//! twice, every request answered. With both deduct strategies (SPEC §3.1).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use seckill::config::Strategy;
use support::{config, Client, RedisServer, Seckill, ADMIN_KEY, FAR};

const STOCK: i64 = 100;
const USERS: usize = 2000;
const REPEATS: usize = 1000;
const THREADS: usize = 100;

/// One of three nodes sharing `redis` (SPEC §4: nodes 3, factor 1.5).
fn node_config(redis: &RedisServer, strategy: Strategy) -> seckill::config::Config {
    let mut c = config(redis);
    c.deduct.strategy = strategy;
    c.stock.nodes = 3;
    c.stock.factor = 1.5;
    c
}

fn three_nodes_sell_exactly_the_stock_once_per_user(strategy: Strategy) {
    let redis = RedisServer::with_e1(&[("g1", STOCK)]);
    let nodes: Vec<Seckill> = (0..3)
        .map(|_| Seckill::start_ready(&node_config(&redis, strategy)))
        .collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();

    // Request i is user i for the first USERS, then repeats of earlier users.
    let uids: Vec<String> = (0..USERS)
        .map(|i| format!("u{i}"))
        .chain((0..REPEATS).map(|i| format!("u{}", (i * 7) % USERS)))
        .collect();
    let uids = Arc::new(uids);
    let results = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (uids, results, barrier, addrs) = (
                uids.clone(),
                results.clone(),
                barrier.clone(),
                addrs.clone(),
            );
            std::thread::spawn(move || {
                // Each thread opens its first connection before the barrier,
                // so all THREADS connections are open at once.
                let mut first = Some(Client::connect(addrs[t % 3]));
                barrier.wait();
                let mut mine = Vec::new();
                for i in (t..uids.len()).step_by(THREADS) {
                    let mut c = first
                        .take()
                        .unwrap_or_else(|| Client::connect(addrs[i % 3]));
                    let r = c.buy(&uids[i], "e1", "g1");
                    mine.push((uids[i].clone(), r.status, r.json()));
                }
                results.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let results = results.lock().unwrap();
    assert_eq!(results.len(), USERS + REPEATS, "every request answered");

    let mut wins: HashMap<String, String> = HashMap::new();
    let mut codes: HashMap<i64, usize> = HashMap::new();
    for (uid, status, body) in results.iter() {
        let code = body["code"].as_i64().expect("code");
        *codes.entry(code).or_default() += 1;
        match code {
            0 => {
                assert_eq!(*status, 200);
                let order = body["data"]["order_id"]
                    .as_str()
                    .expect("order_id")
                    .to_string();
                assert!(wins.insert(uid.clone(), order).is_none(), "{uid} won twice");
            }
            1001 | 1005 => assert_eq!(*status, 200),
            1004 => assert_eq!(*status, 503),
            other => panic!("unexpected code {other}: {body}"),
        }
    }
    eprintln!("codes: {codes:?}");
    assert_eq!(wins.len() as i64, STOCK, "wins seen by clients");
    assert_eq!(redis.hlen_buyers("e1", "g1"), STOCK);
    assert_eq!(redis.xlen_orders("e1", "g1"), STOCK);
    assert_eq!(redis.stock("e1", "g1"), Some(0));
    for (uid, order) in &wins {
        let stored: Option<String> = redis.cmd(&["HGET", "seckill:{e1:g1}:buyers", uid]);
        assert_eq!(stored.as_deref(), Some(order.as_str()), "order of {uid}");
    }
}

#[test]
fn admin_change_on_one_node_reaches_another_within_a_second() {
    let redis = RedisServer::with_e1(&[("g1", 1)]);
    let a = Seckill::start_ready(&node_config(&redis, Strategy::Lua));
    let b = Seckill::start_ready(&node_config(&redis, Strategy::Lua));
    let def = &format!(
        r#"{{"event_id":"e9","name":"n","start_at":0,"end_at":{FAR},"goods":[{{"goods_id":"g1","stock":2}}]}}"#
    );
    let r = a.admin_client().request(
        "POST",
        "/admin/events",
        Some(&format!("Bearer {ADMIN_KEY}")),
        Some(def),
    );
    r.assert(200, 0, "ok", "keep-alive");
    // Node b learns of e9 within 1 s.
    b.wait_for_event("e9", Duration::from_secs(1));
}

crate::with_each_strategy!(three_nodes_sell_exactly_the_stock_once_per_user);
