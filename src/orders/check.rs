//! `seckill check`: the books of an event, side by side, and the checks of
//! SPEC §6 (1, 2, 6) that prove they balance.
//!
//! In: an event (and optionally one goods), Redis, and PostgreSQL when a
//! sink is configured. Out: a `Books` report; the caller prints it (table
//! or JSON) and exits 0 when it balances, 1 when it does not, 2 when the
//! books could not be read (`Err`).
//! Per goods: stock (the definition's plus top-ups), `stock_left`, sold (their
//! difference), `HLEN buyers`, `XLEN orders`, orders not yet acknowledged
//! by the sink's group, and rows in PostgreSQL. Checks: the counts agree
//! and sold is within the stock; every order's uid is in `buyers` with that
//! order id, and no uid has two orders; with a sink, every order is a row,
//! every row is an order (same uid), and `seckill_goods.sold` is the row
//! count.
//! Never: writes anything.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::event::EventDef;
use crate::config::Config;
use crate::orders::db;
use crate::orders::stream::{self, Goods};
use crate::store::access::Redis;
use crate::store::keys::{self, GoodsKeys};

/// One goods' books.
#[derive(Debug, Clone, Serialize)]
pub struct GoodsBooks {
    /// The goods.
    pub goods_id: String,
    /// Stock in the event definition plus top-ups.
    pub stock: i64,
    /// `stock` key now.
    pub stock_left: i64,
    /// `stock - stock_left`.
    pub sold: i64,
    /// `HLEN buyers`.
    pub buyers: i64,
    /// `XLEN orders`.
    pub orders: i64,
    /// Orders not yet acknowledged by the sink's group.
    pub unpersisted: u64,
    /// Rows in `seckill_orders` (with a sink).
    pub rows: Option<i64>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Books {
    /// The event.
    pub event_id: String,
    /// Each goods.
    pub goods: Vec<GoodsBooks>,
    /// What does not balance, one line each; empty when it all does.
    pub problems: Vec<String>,
}

impl Books {
    /// Whether the books balance.
    pub fn balance(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "event {}\n{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10}\n",
            self.event_id,
            "goods",
            "stock",
            "stock_left",
            "sold",
            "buyers",
            "orders",
            "unpersisted",
            "rows"
        );
        for g in &self.goods {
            let rows = g.rows.map_or("-".to_string(), |r| r.to_string());
            s.push_str(&format!(
                "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10}\n",
                g.goods_id, g.stock, g.stock_left, g.sold, g.buyers, g.orders, g.unpersisted, rows
            ));
        }
        if self.balance() {
            s.push_str("the books balance\n");
        } else {
            s.push_str("the books do not balance:\n");
            for p in &self.problems {
                s.push_str(&format!("- {p}\n"));
            }
        }
        s
    }
}

/// Reads the books of `event_id` (every goods, or only `only`), first
/// giving the sink up to `wait` to persist what is pending.
pub fn check(
    config: &Config,
    event_id: &str,
    only: Option<&str>,
    wait: Duration,
) -> Result<Books, String> {
    let timeout = config.redis.timeout().max(Duration::from_secs(2));
    let mut redis =
        Redis::open(&config.redis.endpoint(), timeout).map_err(|e| format!("redis: {e}"))?;
    let raw: Option<Vec<u8>> = redis
        .query(redis::cmd("HGET").arg(keys::EVENTS).arg(event_id))
        .map_err(|e| format!("redis: {e}"))?;
    let raw = raw.ok_or_else(|| format!("event {event_id} is not in {}", keys::EVENTS))?;
    let def: EventDef =
        serde_json::from_slice(&raw).map_err(|e| format!("event {event_id}: {e}"))?;
    let goods: Vec<(&str, i64)> = def
        .goods
        .iter()
        .filter(|g| only.is_none_or(|o| o == g.goods_id))
        .map(|g| (g.goods_id.as_str(), g.stock))
        .collect();
    if goods.is_empty() {
        return Err(format!(
            "event {event_id} has no goods {}",
            only.unwrap_or("")
        ));
    }
    let streams: Vec<Goods> = goods
        .iter()
        .map(|(g, _)| Goods {
            event_id: event_id.to_string(),
            goods_id: g.to_string(),
            key: GoodsKeys::new(event_id, g).orders,
        })
        .collect();
    let sink = !config.sink.url.is_empty();
    // Give the sink its time: every order acknowledged by its group.
    let until = Instant::now() + wait;
    if sink {
        while Instant::now() < until {
            let mut left = 0;
            for s in &streams {
                left += stream::unpersisted(&mut redis, s).map_err(|e| format!("redis: {e}"))?;
            }
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut pg = if sink {
        Some(db::open(&config.sink.url, timeout).map_err(|e| format!("postgres: {e}"))?)
    } else {
        None
    };
    let mut books = Books {
        event_id: event_id.to_string(),
        goods: Vec::new(),
        problems: Vec::new(),
    };
    for ((_, stock), s) in goods.iter().zip(&streams) {
        let b = goods_books(&mut redis, pg.as_mut(), s, *stock, &mut books.problems)?;
        books.goods.push(b);
    }
    Ok(books)
}

fn goods_books(
    redis: &mut Redis,
    pg: Option<&mut postgres::Client>,
    s: &Goods,
    stock: i64,
    problems: &mut Vec<String>,
) -> Result<GoodsBooks, String> {
    let k = GoodsKeys::new(&s.event_id, &s.goods_id);
    let r = |e: redis::RedisError| format!("redis: {e}");
    // The stock is the definition's plus top-ups (SPEC §8); read in one
    // pipeline with what it is checked against.
    let (added, left, buyers_map): (Option<i64>, Option<i64>, HashMap<String, String>) = redis
        .query_pipe(redis::pipe().get(&k.added).get(&k.stock).hgetall(&k.buyers))
        .map_err(r)?;
    let stock = stock.saturating_add(added.unwrap_or(0));
    let stock_left = left.unwrap_or(0);
    // The whole stream, in pages.
    let mut orders = Vec::new();
    let mut after = "-".to_string();
    loop {
        let page = stream::range(redis, s, &after, 1000).map_err(r)?;
        let Some(last) = page.ids().last().map(str::to_string) else {
            break;
        };
        for (id, why) in &page.malformed {
            problems.push(format!(
                "{}: entry {id} is not an order ({why})",
                s.goods_id
            ));
        }
        orders.extend(page.orders);
        after = last;
    }
    let xlen = redis
        .query::<i64>(redis::cmd("XLEN").arg(&k.orders))
        .map_err(r)?;
    let unpersisted = stream::unpersisted(redis, s).map_err(r)?;
    let g = &s.goods_id;
    let sold = stock - stock_left;
    let buyers = buyers_map.len() as i64;
    if stock_left < 0 || sold < 0 {
        problems.push(format!(
            "{g}: stock_left {stock_left} is outside 0..={stock}"
        ));
    }
    if buyers != sold || xlen != sold {
        problems.push(format!(
            "{g}: sold {sold} (stock {stock} - left {stock_left}), buyers {buyers} and orders {xlen} differ"
        ));
    }
    let mut uids = HashSet::new();
    for o in &orders {
        if !uids.insert(o.uid.as_str()) {
            problems.push(format!("{g}: uid {} has two orders", o.uid));
        }
        match buyers_map.get(&o.uid) {
            Some(id) if *id == o.order_id => {}
            Some(id) => problems.push(format!(
                "{g}: order {} of uid {} but buyers says {id}",
                o.order_id, o.uid
            )),
            None => problems.push(format!(
                "{g}: order {} of uid {} whose uid is not in buyers",
                o.order_id, o.uid
            )),
        }
    }
    for (uid, id) in &buyers_map {
        if !uids.contains(uid.as_str()) {
            problems.push(format!(
                "{g}: buyer {uid} (order {id}) has no order in the stream"
            ));
        }
    }
    let mut rows = None;
    if let Some(pg) = pg {
        let p = |e: postgres::Error| format!("postgres: {}", db::explain(&e));
        let stored = pg
            .query(
                "SELECT order_id, uid FROM seckill_orders WHERE event_id = $1 AND goods_id = $2",
                &[&s.event_id, &s.goods_id],
            )
            .map_err(p)?;
        let stored: HashMap<String, String> = stored.iter().map(|r| (r.get(0), r.get(1))).collect();
        rows = Some(stored.len() as i64);
        if unpersisted > 0 {
            problems.push(format!(
                "{g}: {unpersisted} orders not yet persisted by the sink"
            ));
        }
        for o in &orders {
            match stored.get(&o.order_id) {
                Some(uid) if *uid == o.uid => {}
                Some(uid) => problems.push(format!(
                    "{g}: row {} has uid {uid}, the stream says {}",
                    o.order_id, o.uid
                )),
                None if unpersisted == 0 => {
                    problems.push(format!("{g}: order {} is not in PostgreSQL", o.order_id))
                }
                None => {}
            }
        }
        let ids: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
        for id in stored.keys() {
            if !ids.contains(id.as_str()) {
                problems.push(format!("{g}: row {id} is not an order in the stream"));
            }
        }
        let counted: Option<i64> = pg
            .query_opt(
                "SELECT sold FROM seckill_goods WHERE event_id = $1 AND goods_id = $2",
                &[&s.event_id, &s.goods_id],
            )
            .map_err(p)?
            .map(|r| r.get(0));
        if counted.unwrap_or(0) != stored.len() as i64 {
            problems.push(format!(
                "{g}: seckill_goods.sold {} but {} rows",
                counted.unwrap_or(0),
                stored.len()
            ));
        }
    }
    Ok(GoodsBooks {
        goods_id: s.goods_id.clone(),
        stock,
        stock_left,
        sold,
        buyers,
        orders: xlen,
        unpersisted,
        rows,
    })
}
