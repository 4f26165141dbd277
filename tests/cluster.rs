//! The same sale on a Redis Cluster (SPEC §6.8, `redis.nodes`): a
//! three-master cluster started by the test, goods spread over every
//! master, three `seckill serve` nodes behind the shipped haproxy recipe,
//! a `SCRIPT FLUSH` on every master mid-sale, the sink carrying the orders
//! of all three masters into PostgreSQL; and a master paused mid-sale.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use support::cluster::RedisCluster;
use support::haproxy::Haproxy;
use support::pg::PgServer;
use support::{check, cluster_config, eventually, token, Client, Seckill};

/// One attempt on a fresh connection: (status, body), or None when the
/// connection failed or closed without an answer.
fn try_buy(addr: std::net::SocketAddr, uid: &str, goods: &str) -> Option<(u16, Vec<u8>)> {
    let mut c = Client::try_connect(addr)?;
    let body = format!(r#"{{"event_id":"e1","goods_id":"{goods}"}}"#);
    c.try_send(&support::raw(
        "PUT",
        "/shop/cart/add",
        Some(&format!("Bearer {}", token(uid))),
        Some(&body),
        "",
    ))?;
    let r = c.try_read()?;
    Some((r.status, r.body))
}

fn json_of(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!("not JSON: {:?}", String::from_utf8_lossy(body));
    })
}

fn eval_calls(node: &support::cluster::ClusterNode) -> u64 {
    RedisCluster::calls(node, "eval")
}

#[test]
fn three_nodes_on_a_redis_cluster_sell_exactly_through_a_script_flush_and_persist_every_order() {
    const STOCK: i64 = 40;
    const USERS: usize = 2400;
    const REPEATS: usize = 600;
    const THREADS: usize = 100;
    let cluster = RedisCluster::start();
    // Six goods, two on each master, as the cluster itself says.
    let goods = cluster.goods_on_every_master("e1", 2);
    let owners: HashSet<u16> = goods
        .iter()
        .map(|g| cluster.node_of(&format!("seckill:{{e1:{g}}}:stock")).port)
        .collect();
    assert_eq!(owners.len(), 3, "the goods cover every master");
    let stock: Vec<(&str, i64)> = goods.iter().map(|g| (g.as_str(), STOCK)).collect();
    cluster.seed("e1", &stock);

    let pg = PgServer::start();
    let mut c = cluster_config(&cluster);
    c.stock.nodes = 3;
    c.stock.factor = 1.5;
    c.sink.url = pg.database("cluster");
    c.sink.batch = 100;
    let nodes: Vec<Seckill> = (0..3).map(|_| Seckill::start_ready(&c)).collect();
    let lb = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());

    // User i wants goods i % 6; the repeats come back for the same goods.
    let attempts: Vec<(String, String)> = (0..USERS)
        .chain((0..REPEATS).map(|i| (i * 7) % USERS))
        .map(|u| (format!("u{u}"), goods[u % goods.len()].clone()))
        .collect();
    let attempts = Arc::new(attempts);
    let results = Arc::new(Mutex::new(Vec::new()));
    let wins_so_far = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (attempts, results, barrier, wins_so_far) = (
                attempts.clone(),
                results.clone(),
                barrier.clone(),
                wins_so_far.clone(),
            );
            let addr = lb.addr;
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::new();
                for i in (t..attempts.len()).step_by(THREADS) {
                    let (uid, goods) = &attempts[i];
                    let answer = try_buy(addr, uid, goods);
                    if let Some((_, body)) = &answer {
                        if json_of(body)["code"] == 0 {
                            wins_so_far.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    mine.push((uid.clone(), goods.clone(), answer));
                }
                results.lock().unwrap().extend(mine);
            })
        })
        .collect();
    // A quarter into the sale, every master forgets the deduct script: the
    // rest of the sale runs through the NOSCRIPT fallback, master by master.
    let evals_before: Vec<u64> = cluster.nodes.iter().map(eval_calls).collect();
    barrier.wait();
    let quarter = (STOCK as usize * goods.len()) / 4;
    eventually(
        Duration::from_secs(60),
        "a quarter of the stock sold",
        || wins_so_far.load(Ordering::Relaxed) >= quarter,
    );
    for n in &cluster.nodes {
        let _: () = n.cmd(&["SCRIPT", "FLUSH"]);
    }
    let flushed_at = wins_so_far.load(Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(
        flushed_at < STOCK as usize * goods.len(),
        "the flush came mid-sale ({flushed_at} wins before it)"
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        assert!(
            eval_calls(n) > evals_before[i],
            "master {} ran the script by EVAL after the flush",
            n.port
        );
    }

    let results = results.lock().unwrap();
    assert_eq!(results.len(), USERS + REPEATS);
    let mut wins: HashMap<(String, String), String> = HashMap::new();
    let mut codes: HashMap<i64, usize> = HashMap::new();
    for (uid, goods, answer) in results.iter() {
        let (status, body) = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{uid}'s attempt on {goods} got no answer"));
        let v = json_of(body);
        let code = v["code"].as_i64().expect("code");
        *codes.entry(code).or_default() += 1;
        match code {
            0 => {
                assert_eq!(*status, 200);
                let order = v["data"]["order_id"].as_str().expect("order_id");
                let again = wins.insert((goods.clone(), uid.clone()), order.to_string());
                assert!(again.is_none(), "{uid} won {goods} twice");
            }
            1001 | 1005 => assert_eq!(*status, 200),
            1004 => assert_eq!(*status, 503),
            other => panic!("unexpected code {other}: {v}"),
        }
    }
    eprintln!("codes: {codes:?}; script flushed after {flushed_at} wins");
    for g in &goods {
        let won: Vec<_> = wins.iter().filter(|((goods, _), _)| goods == g).collect();
        assert_eq!(won.len() as i64, STOCK, "wins of {g} seen by clients");
        assert_eq!(cluster.hlen_buyers("e1", g), STOCK, "HLEN buyers of {g}");
        assert_eq!(cluster.xlen_orders("e1", g), STOCK, "XLEN orders of {g}");
        assert_eq!(cluster.stock("e1", g), Some(0), "stock of {g}");
        for ((_, uid), order) in won {
            let stored: Option<String> =
                cluster.cmd(&["HGET", &format!("seckill:{{e1:{g}}}:buyers"), uid]);
            assert_eq!(
                stored.as_deref(),
                Some(order.as_str()),
                "{uid}'s order of {g}"
            );
        }
    }

    // Every master's orders reach PostgreSQL, once each.
    let total = STOCK * goods.len() as i64;
    let mut db = pg.client("cluster");
    let count = |db: &mut postgres::Client, sql: &str| -> i64 {
        db.query_one(sql, &[]).map(|r| r.get(0)).unwrap_or(-1)
    };
    eventually(Duration::from_secs(30), "every order in PostgreSQL", || {
        count(&mut db, "SELECT count(*) FROM seckill_orders") == total
    });
    assert_eq!(
        count(
            &mut db,
            "SELECT count(DISTINCT (goods_id, uid)) FROM seckill_orders"
        ),
        total,
        "nobody twice"
    );
    for ((g, uid), order) in &wins {
        let row = db
            .query_one(
                "SELECT order_id FROM seckill_orders WHERE goods_id = $1 AND uid = $2",
                &[g, uid],
            )
            .expect("a row for every win");
        assert_eq!(&row.get::<_, String>(0), order);
    }
    let (code, out) = check(&c, &["--wait", "10"]);
    assert_eq!(code, 0, "seckill check: {out}");
    assert!(out.contains("the books balance"), "{out}");
    println!("seckill check after the sale on a Redis Cluster:\n{out}");

    // Every order persisted: DELETE removes the keys on every master (one
    // transaction per goods' slot), then the event.
    let auth = format!("Bearer {}", support::ADMIN_KEY);
    let r = nodes[0]
        .admin_client()
        .request("DELETE", "/admin/events/e1", Some(&auth), None);
    assert_eq!((r.status, r.code()), (200, 0), "DELETE: {:?}", r.json());
    for g in &goods {
        for part in ["stock", "buyers", "orders", "reset"] {
            let key = format!("seckill:{{e1:{g}}}:{part}");
            let n: i64 = cluster.node_of(&key).cmd(&["EXISTS", &key]);
            assert_eq!(n, 0, "{key} deleted");
        }
    }
    let e1: Option<String> = cluster.cmd(&["HGET", "seckill:events", "e1"]);
    assert_eq!(e1, None, "the event deleted");
}

/// Sends SIGSTOP or SIGCONT.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_paused_master_costs_only_its_own_goods_and_everything_sells_after_it_returns() {
    const STOCK: i64 = 30;
    let cluster = RedisCluster::start();
    let mut goods = cluster.goods_on_every_master("e1", 1);
    // The master to pause serves a goods but not `seckill:events` (a
    // master holding the catalog itself down makes every node unready,
    // as one Redis down does).
    let events_at = cluster.node_of("seckill:events").port;
    let at = |g: &str| cluster.node_of(&format!("seckill:{{e1:{g}}}:stock")).port;
    let k = goods
        .iter()
        .position(|g| at(g) != events_at)
        .expect("a goods off the events' master");
    goods.swap(0, k);
    let stock: Vec<(&str, i64)> = goods.iter().map(|g| (g.as_str(), STOCK)).collect();
    cluster.seed("e1", &stock);
    let mut c = cluster_config(&cluster);
    c.redis.timeout_ms = 300;
    c.server.request_timeout_ms = 1000;
    c.breaker.failures = 3;
    c.breaker.probe_ms = 300;
    let s = Seckill::start_ready(&c);
    let mut wins: HashMap<(String, String), String> = HashMap::new();
    let mut buy = |uid: &str, g: &str| -> (i64, Duration) {
        let started = Instant::now();
        let r = Client::connect(s.addr).buy(uid, "e1", g);
        let took = started.elapsed();
        if r.code() == 0 {
            let order = r.json()["data"]["order_id"]
                .as_str()
                .expect("order")
                .to_string();
            wins.insert((g.to_string(), uid.to_string()), order);
        }
        (r.code(), took)
    };
    let ready = |s: &Seckill| {
        Client::connect(s.addr)
            .request("GET", "/readyz", None, None)
            .status
    };
    // Every master sells before the pause.
    for g in &goods {
        assert_eq!(buy(&format!("before-{g}"), g).0, 0);
    }

    let paused = cluster.node_of(&format!("seckill:{{e1:{}}}:stock", goods[0]));
    // (Should an assertion fail while it is stopped, the cluster's drop
    // still kills it: SIGKILL ends a stopped process.)
    signal(paused.pid(), "-STOP");
    // Its goods: 1002, never a hang. A script sent before the master
    // stopped may still run, so the worker asks for the uid until the
    // attempt's request_timeout_ms (SPEC §4 1002), then gives up: about
    // timeout_ms + request_timeout_ms at most; once its breaker is open
    // (SPEC §7; one per hash slot on a cluster), at once.
    let bound = Duration::from_millis(c.redis.timeout_ms + c.server.request_timeout_ms + 700);
    let mut took_ms = Vec::new();
    for i in 0..6 {
        let (code, took) = buy(&format!("paused-{i}"), &goods[0]);
        assert_eq!(code, 1002, "attempt {i} on the paused master's goods");
        assert!(took <= bound, "attempt {i} took {took:?} (bound {bound:?})");
        took_ms.push(took.as_millis());
    }
    eprintln!("1002s on the paused master's goods, ms each: {took_ms:?}");
    s.wait_metric("seckill_breaker_open 1", Duration::from_secs(5));
    // The other masters' goods sell on, and the node stays ready (the
    // catalog keeps the paused master's goods as last read) — while the
    // paused goods is still being tried: every probe of its breaker is a
    // script lost, whose outcome is asked for up to request_timeout_ms,
    // beside the worker, not in its way.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pressure = {
        let (stop, addr, g) = (stop.clone(), s.addr, goods[0].clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                codes.push(
                    Client::connect(addr)
                        .buy(&format!("still-{i}"), "e1", &g)
                        .code(),
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            codes
        })
    };
    let mut during = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    // A healthy goods waits at most for the one round trip ahead of it,
    // which a probe of the paused goods stretches to timeout_ms; never for
    // the asking about a lost script (up to request_timeout_ms).
    let healthy_bound = Duration::from_millis(2 * c.redis.timeout_ms + 50);
    // Long enough for several probes (probe_ms 300) and their lookups.
    while started.elapsed() < Duration::from_millis(2500) {
        for g in &goods[1..] {
            let (code, took) = buy(&format!("during-{i}-{g}"), g);
            assert_eq!(code, 0, "{g} on a healthy master, attempt {i}");
            assert!(
                took <= healthy_bound,
                "{g}: {took:?} (bound {healthy_bound:?})"
            );
            during.push(took.as_millis());
        }
        assert_eq!(ready(&s), 200, "/readyz while one master is paused");
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let pressed = pressure.join().expect("pressure thread");
    assert!(
        pressed.iter().all(|&c| c == 1002),
        "the paused goods: {pressed:?}"
    );
    eprintln!(
        "the other masters' goods meanwhile, ms each: {during:?}; {} more attempts on the paused goods, all 1002",
        pressed.len()
    );

    signal(paused.pid(), "-CONT");
    // Within a probe or two, every goods sells again.
    let back = Instant::now();
    for g in &goods {
        let mut n = 0;
        eventually(Duration::from_secs(10), &format!("{g} sells again"), || {
            n += 1;
            buy(&format!("after-{n}-{g}"), g).0 == 0
        });
    }
    eprintln!("every goods sold again {:?} after SIGCONT", back.elapsed());
    s.wait_metric("seckill_breaker_open 0", Duration::from_secs(5));

    // The books: every unit sold is one buyer and one order, every win a
    // client saw is in buyers with its order id. (An attempt answered 1002
    // whose script the stopped master ran on waking is a sale the client
    // was not told of — the case SPEC §4 names; /shop/result shows it.)
    for g in &goods {
        let left = cluster.stock("e1", g).expect("stock key");
        assert_eq!(
            cluster.hlen_buyers("e1", g),
            STOCK - left,
            "HLEN buyers of {g}"
        );
        assert_eq!(
            cluster.xlen_orders("e1", g),
            STOCK - left,
            "XLEN orders of {g}"
        );
    }
    for ((g, uid), order) in &wins {
        let stored: Option<String> =
            cluster.cmd(&["HGET", &format!("seckill:{{e1:{g}}}:buyers"), uid]);
        assert_eq!(
            stored.as_deref(),
            Some(order.as_str()),
            "{uid}'s order of {g}"
        );
    }
}

#[test]
fn a_goods_whose_slot_moves_mid_sale_sells_on_through_ask_and_moved() {
    const STOCK: i64 = 150;
    let cluster = RedisCluster::start();
    let g = cluster.goods_on_every_master("e1", 1)[0].clone();
    cluster.seed("e1", &[(&g, STOCK)]);
    let key = format!("seckill:{{e1:{g}}}:stock");
    let from = cluster.node_of(&key).port;
    let to = cluster
        .nodes
        .iter()
        .find(|n| n.port != from)
        .expect("another master");
    let s = Seckill::start_ready(&cluster_config(&cluster));
    let mut wins: HashMap<String, String> = HashMap::new();
    let mut buy = |uid: String| -> i64 {
        let r = Client::connect(s.addr).buy(&uid, "e1", &g);
        if r.code() == 0 {
            let order = r.json()["data"]["order_id"]
                .as_str()
                .expect("order")
                .to_string();
            assert!(wins.insert(uid, order).is_none(), "a uid won twice");
        }
        r.code()
    };
    for i in 0..40 {
        assert_eq!(buy(format!("a{i}")), 0, "before the move, a{i}");
    }
    // Mid-move: the keys are on the new master, the old one answers ASK.
    let asking_before = RedisCluster::calls(to, "asking");
    let slot = cluster.move_keys_of(&key, to);
    for i in 0..40 {
        assert_eq!(buy(format!("b{i}")), 0, "while the slot migrates, b{i}");
    }
    assert!(
        RedisCluster::calls(to, "asking") > asking_before,
        "the new master was asked with ASKING"
    );
    // Moved: the old master answers MOVED; the map is read again.
    cluster.finish_move(slot, to);
    let mut codes: HashMap<i64, usize> = HashMap::new();
    for i in 0..120 {
        *codes.entry(buy(format!("c{i}"))).or_default() += 1;
    }
    assert_eq!(codes.get(&0), Some(&70), "after the move: {codes:?}");
    assert_eq!(codes.get(&1001), Some(&50), "then sold out: {codes:?}");
    assert_eq!(wins.len() as i64, STOCK);
    let on = |port: u16| -> i64 {
        let n = cluster.nodes.iter().find(|n| n.port == port).expect("node");
        n.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
    };
    assert_eq!(on(from), 0, "nothing left on the old master");
    assert!(on(to.port) >= 3, "stock, buyers and orders on the new one");
    assert_eq!(cluster.hlen_buyers("e1", &g), STOCK);
    assert_eq!(cluster.xlen_orders("e1", &g), STOCK);
    assert_eq!(cluster.stock("e1", &g), Some(0));
    for (uid, order) in &wins {
        let stored: Option<String> =
            cluster.cmd(&["HGET", &format!("seckill:{{e1:{g}}}:buyers"), uid]);
        assert_eq!(stored.as_deref(), Some(order.as_str()), "{uid}'s order");
    }
}

/// Issue 11 on a Redis Cluster: a top-up's one script raises `stock` and
/// `added` of a goods on whichever master holds its slot; the node sees it
/// (the catalog reads both per master) and sells exactly the units added.
#[test]
fn a_top_up_on_every_master_sells_exactly_the_units_added() {
    let cluster = RedisCluster::start();
    let goods = cluster.goods_on_every_master("e1", 1);
    let stock: Vec<(&str, i64)> = goods.iter().map(|g| (g.as_str(), 2)).collect();
    cluster.seed("e1", &stock);
    let s = Seckill::start_ready(&cluster_config(&cluster));
    for g in &goods {
        let path = format!("/admin/events/e1/goods/{g}/stock");
        let r = s.admin("POST", &path, Some(r#"{"add":3}"#));
        r.assert(200, 0, "ok", "keep-alive");
        assert_eq!(r.json()["data"]["stock"], 5, "{g}");
        let added: Option<i64> = cluster.cmd(&["GET", &format!("seckill:{{e1:{g}}}:added")]);
        assert_eq!((cluster.stock("e1", g), added), (Some(5), Some(3)), "{g}");
    }
    for g in &goods {
        let share = format!("seckill_stock_share{{event=\"e1\",goods=\"{g}\"}} 5");
        s.wait_metric(&share, Duration::from_secs(1));
        let codes: Vec<i64> = (0..6)
            .map(|i| s.client().buy(&format!("u{i}"), "e1", g).code())
            .collect();
        assert_eq!(codes, [0, 0, 0, 0, 0, 1001], "{g}");
        assert_eq!(cluster.hlen_buyers("e1", g), 5);
        assert_eq!(cluster.xlen_orders("e1", g), 5);
    }
    let (code, out) = check(&cluster_config(&cluster), &[]);
    assert_eq!(code, 0, "{out}");
}

/// Issue 11: the sliding stock-number lock on a Redis Cluster: its
/// transactions and watches go to the master of each goods' slot.
#[test]
fn the_sliding_lock_sells_exactly_on_every_master() {
    let cluster = RedisCluster::start();
    let goods = cluster.goods_on_every_master("e1", 1);
    let stock: Vec<(&str, i64)> = goods.iter().map(|g| (g.as_str(), 3)).collect();
    cluster.seed("e1", &stock);
    let mut c = cluster_config(&cluster);
    c.deduct.strategy = seckill::config::Strategy::SlidingLock;
    let s = Seckill::start_ready(&c);
    for g in &goods {
        let codes: Vec<i64> = (0..4)
            .map(|i| s.client().buy(&format!("u{i}"), "e1", g).code())
            .collect();
        assert_eq!(codes, [0, 0, 0, 1001], "{g}");
        assert_eq!(cluster.hlen_buyers("e1", g), 3);
        assert_eq!(cluster.xlen_orders("e1", g), 3);
        assert_eq!(cluster.stock("e1", g), Some(0));
    }
    let (code, out) = check(&c, &[]);
    assert_eq!(code, 0, "{out}");
}
