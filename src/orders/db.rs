//! The PostgreSQL side of the sink: the schema, and each batch written in
//! one transaction.
//!
//! In: `Order`s read from a goods' stream. Out: rows in `seckill_orders`,
//! `seckill_goods.sold` raised by the rows actually inserted, and orders
//! that clash with another order of the same uid kept in
//! `seckill_order_conflicts`.
//! Invariants: writing a batch twice changes nothing the second time (the
//! key is `(event_id, goods_id, order_id)`: a stream id is unique only
//! within its stream); a batch is all or nothing (one transaction), so the
//! caller acknowledges the entries only after `write` returned; a
//! conflicting order is never dropped silently.
//! Never: talks to Redis.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::Type;
use postgres::{Client, Config, NoTls, Statement, Transaction};

use crate::orders::stream::Order;

/// The schema version this build writes (`seckill_schema`).
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Version 1 of the schema (SPEC §9), as plain SQL. Every statement is
/// idempotent, so two sinks starting at once both succeed.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS seckill_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS seckill_orders (
    event_id text NOT NULL,
    goods_id text NOT NULL,
    order_id text NOT NULL,
    uid text NOT NULL,
    ts_ms bigint NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, goods_id, order_id),
    UNIQUE (event_id, goods_id, uid)
);
CREATE TABLE IF NOT EXISTS seckill_goods (
    event_id text NOT NULL,
    goods_id text NOT NULL,
    name text NOT NULL DEFAULT '',
    price_cents bigint NOT NULL DEFAULT 0,
    stock bigint NOT NULL DEFAULT 0,
    sold bigint NOT NULL DEFAULT 0,
    orders_after bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, goods_id)
);
CREATE TABLE IF NOT EXISTS seckill_order_conflicts (
    event_id text NOT NULL,
    goods_id text NOT NULL,
    order_id text NOT NULL,
    uid text NOT NULL,
    ts_ms bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS seckill_order_conflicts_once
    ON seckill_order_conflicts (event_id, goods_id, order_id);
INSERT INTO seckill_schema (version) VALUES (1) ON CONFLICT DO NOTHING;
";

/// The batch as five parallel arrays, for `unnest`.
const INPUT: &str =
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
    AS t(event_id, goods_id, order_id, uid, ts_ms)";

/// What writing a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Rows inserted now (the rest were there already).
    pub(crate) inserted: u64,
    /// Orders that clash with another order of the same uid, kept now.
    pub(crate) conflicts: u64,
}

/// A goods' row in `seckill_goods`, from its event definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoodsRow {
    /// The event.
    pub(crate) event_id: String,
    /// The goods.
    pub(crate) goods_id: String,
    /// Display name.
    pub(crate) name: String,
    /// Price in cents.
    pub(crate) price_cents: i64,
    /// Stock, with top-ups.
    pub(crate) stock: i64,
    /// The last reset's line (see `GoodsDef::orders_after`), 0 if none.
    pub(crate) orders_after: i64,
}

/// A PostgreSQL client with the sink's per-batch statements prepared
/// once: a batch then costs one round trip per statement, not two (parse,
/// then run).
pub(crate) struct Db {
    client: Client,
    /// The goods row, locked (made first if missing), and its reset line.
    lock: Statement,
    /// The batch in binary `COPY` format.
    copy: Statement,
    /// `sold` raised by the rows a batch inserted, and the reset line.
    raise: Statement,
}

impl Db {
    /// The client, for the statements run once in a while.
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Connects to `url` with `timeout` to connect, and makes sure the schema
/// is there. A database whose schema is newer than this build refuses: an
/// older sink must not write into tables it does not know.
pub(crate) fn connect(url: &str, timeout: Duration) -> Result<Db, String> {
    let mut client = open(url, timeout)?;
    // Sinks starting together would race on the catalog (two CREATE TABLE
    // IF NOT EXISTS can still clash): one at a time, under a lock that
    // ends with the transaction.
    let mut tx = client.transaction().map_err(|e| explain(&e))?;
    // (And without the "already exists, skipping" notices in the log.)
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock(7326545500)",
    )
    .and_then(|()| tx.batch_execute(SCHEMA_V1))
    .map_err(|e| format!("schema: {}", explain(&e)))?;
    tx.commit().map_err(|e| explain(&e))?;
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM seckill_schema", &[])
        .map_err(|e| format!("schema: {}", explain(&e)))?
        .get(0);
    if let Some(v) = version.filter(|v| *v > SCHEMA_VERSION) {
        return Err(format!(
            "schema version {v} is newer than this build's {SCHEMA_VERSION}"
        ));
    }
    let mut prepare = |sql: &str| client.prepare(sql).map_err(|e| explain(&e));
    // An upsert, not SELECT ... FOR UPDATE: a goods row not there yet (a
    // database restored from before the goods) is made and locked too,
    // rather than read as "no lock, line 0".
    let lock = prepare(
        "INSERT INTO seckill_goods (event_id, goods_id) VALUES ($1, $2)
         ON CONFLICT (event_id, goods_id) DO UPDATE SET sold = seckill_goods.sold
         RETURNING orders_after",
    )?;
    let copy = prepare(
        "COPY seckill_orders (event_id, goods_id, order_id, uid, ts_ms) FROM STDIN (FORMAT binary)",
    )?;
    let raise = prepare(
        "INSERT INTO seckill_goods (event_id, goods_id, sold) VALUES ($1, $2, $3)
         ON CONFLICT (event_id, goods_id) DO UPDATE SET sold = seckill_goods.sold + EXCLUDED.sold
         RETURNING orders_after",
    )?;
    Ok(Db {
        client,
        lock,
        copy,
        raise,
    })
}

/// Writes `orders` (all of one goods or not: each row carries its ids) in
/// one transaction: inserts the new ones, raises each goods' `sold` by the
/// rows it got, and keeps orders whose uid already has another order.
///
/// The common case, a batch seen for the first time, is one `COPY`. `COPY`
/// is all or nothing: on the first key already there (a replayed order, a
/// second order of one uid) it fails as a whole, the transaction is rolled
/// back, and the batch goes the careful way (`INSERT ... ON CONFLICT DO
/// NOTHING`), as does a batch with orders below a reset's line. Measured
/// here (1000 orders a batch): the write 6.8 ms instead of 9.7 ms, as the
/// insert pays a speculative insertion on both unique keys for every row;
/// 5.5 ms once the statements were prepared once, the savepoint gone and
/// the goods row locked by the raise itself (four round trips: BEGIN, the
/// raise, the COPY, COMMIT). Binary or text format made no difference;
/// binary needs no escaping.
pub(crate) fn write(db: &mut Db, orders: &[Order]) -> Result<Written, postgres::Error> {
    if orders.is_empty() {
        return Ok(Written::default());
    }
    if let Some(written) = write_fresh(db, orders)? {
        return Ok(written);
    }
    let mut tx = db.client.transaction()?;
    let written = write_careful(&mut tx, &db.lock, &db.raise, orders)?;
    tx.commit()?;
    Ok(written)
}

/// Connects, without touching the schema (`seckill check` reads only).
/// No call waits forever: a lock held by a stalled sink, a hung server or a
/// half-open connection is an error after a while, and the sink retries.
pub(crate) fn open(url: &str, timeout: Duration) -> Result<Client, String> {
    let mut config: Config = url.parse().map_err(|e| format!("{e}"))?;
    config
        .connect_timeout(timeout)
        .tcp_user_timeout(Duration::from_secs(30))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .options("-c lock_timeout=10000 -c statement_timeout=60000");
    config.connect(NoTls).map_err(|e| explain(&e))
}

/// The millisecond part of a stream id.
fn id_ms(order_id: &str) -> u64 {
    order_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Each goods' reset line (0 if none), in key order.
type Floors<'a> = BTreeMap<(&'a str, &'a str), u64>;

/// Locks the goods rows of `orders` and reads their reset lines: orders of
/// the sale before a reset are never written once the reset is known here.
/// The lock (an exclusive row lock, the upsert's: the batch raises `sold`
/// anyway, and two sinks holding a shared lock while each waits to update
/// would deadlock) is taken before any row is written and in key order, so
/// two sinks never wait on each other's rows; and a reset (`upsert_goods`, same lock)
/// waits for this batch and then deletes what it wrote below the line, or
/// runs first and this batch sees the new line.
fn lock_goods<'a>(
    tx: &mut Transaction<'_>,
    lock: &Statement,
    orders: &'a [Order],
) -> Result<Floors<'a>, postgres::Error> {
    let mut floors: Floors<'a> = orders
        .iter()
        .map(|o| ((o.event_id.as_str(), o.goods_id.as_str()), 0))
        .collect();
    for (key, floor) in floors.iter_mut() {
        let line: i64 = tx.query_one(lock, &[&key.0, &key.1])?.get(0);
        *floor = line.max(0) as u64;
    }
    Ok(floors)
}

/// Whether `o` is at or above its goods' reset line.
fn after_line(floors: &Floors<'_>, o: &Order) -> bool {
    let floor = floors
        .get(&(o.event_id.as_str(), o.goods_id.as_str()))
        .copied()
        .unwrap_or(0);
    id_ms(&o.order_id) >= floor
}

/// The batch as one `COPY`, in its own transaction; None (rolled back)
/// when it needs the careful way. The goods rows come first, as in the
/// careful way and a reset (see `lock_goods`): each is locked by raising its
/// `sold` as if every order goes in, which also reads its reset line; the
/// rollback undoes the raise when they do not.
fn write_fresh(db: &mut Db, orders: &[Order]) -> Result<Option<Written>, postgres::Error> {
    let mut per_goods: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for o in orders {
        *per_goods
            .entry((o.event_id.as_str(), o.goods_id.as_str()))
            .or_default() += 1;
    }
    let mut tx = db.client.transaction()?;
    let mut floors = Floors::new();
    for ((event_id, goods_id), n) in per_goods {
        let line: i64 = tx.query_one(&db.raise, &[&event_id, &goods_id, &n])?.get(0);
        floors.insert((event_id, goods_id), line.max(0) as u64);
    }
    if !orders.iter().all(|o| after_line(&floors, o)) {
        return Ok(None); // dropping `tx` rolls it back
    }
    let inserted = match copy_rows(&mut tx, &db.copy, orders) {
        Ok(n) => n,
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
        Err(e) => return Err(e),
    };
    tx.commit()?;
    Ok(Some(Written {
        inserted,
        conflicts: 0,
    }))
}

/// The rows in `COPY`'s binary format: no text to escape or parse.
fn copy_rows(
    tx: &mut Transaction<'_>,
    copy: &Statement,
    orders: &[Order],
) -> Result<u64, postgres::Error> {
    let writer = tx.copy_in(copy)?;
    let mut w = BinaryCopyInWriter::new(
        writer,
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
    );
    for o in orders {
        w.write(&[&o.event_id, &o.goods_id, &o.order_id, &o.uid, &o.ts_ms])?;
    }
    w.finish()
}

/// A replay, a second order of one uid, or orders below a reset's line:
/// every row on its own terms.
fn write_careful(
    tx: &mut Transaction<'_>,
    lock: &Statement,
    raise: &Statement,
    orders: &[Order],
) -> Result<Written, postgres::Error> {
    let floors = lock_goods(tx, lock, orders)?;
    let kept: Vec<&Order> = orders.iter().filter(|o| after_line(&floors, o)).collect();
    if kept.len() < orders.len() {
        log::info!(
            "sink: {} orders of a sale since reset not written",
            orders.len() - kept.len()
        );
    }
    if kept.is_empty() {
        return Ok(Written::default());
    }
    let cols = Columns::of(&kept);
    let params = cols.params();
    // ON CONFLICT with no target: a replayed order (same key) and a second
    // order of one uid (the unique uid) are both skipped here; the second
    // kind is found below and kept.
    let inserted = tx.query(
        &format!(
            "WITH ins AS (
                INSERT INTO seckill_orders (event_id, goods_id, order_id, uid, ts_ms)
                {INPUT}
                ON CONFLICT DO NOTHING
                RETURNING event_id, goods_id)
             SELECT event_id, goods_id, count(*) FROM ins GROUP BY event_id, goods_id
             ORDER BY event_id, goods_id"
        ),
        &params,
    )?;
    let mut total = 0;
    for row in &inserted {
        let (event_id, goods_id, n): (&str, &str, i64) = (row.get(0), row.get(1), row.get(2));
        tx.execute(raise, &[&event_id, &goods_id, &n])?;
        total += n.max(0) as u64;
    }
    // Every row went in: none can clash (the common case, one query less).
    if total == kept.len() as u64 {
        return Ok(Written {
            inserted: total,
            conflicts: 0,
        });
    }
    let conflicts = tx.query(
        &format!(
            "INSERT INTO seckill_order_conflicts (event_id, goods_id, order_id, uid, ts_ms)
             SELECT i.event_id, i.goods_id, i.order_id, i.uid, i.ts_ms
             FROM ({INPUT}) i
             JOIN seckill_orders o
               ON o.event_id = i.event_id AND o.goods_id = i.goods_id
              AND o.uid = i.uid AND o.order_id <> i.order_id
             ON CONFLICT DO NOTHING
             RETURNING event_id, goods_id, order_id, uid"
        ),
        &params,
    )?;
    for row in &conflicts {
        let (e, g, id, uid): (&str, &str, &str, &str) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        log::error!(
            "order {e}/{g}/{id}: uid {uid} already has another order; kept in seckill_order_conflicts"
        );
    }
    Ok(Written {
        inserted: total,
        conflicts: conflicts.len() as u64,
    })
}

/// An error with the server's own message when there is one (the
/// `Display` of a server error is only "db error").
pub(crate) fn explain(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Creates or updates a goods' row from its definition (its `sold` is
/// left as the sink counted it). When the definition carries a reset this
/// database has not seen (`orders_after` above the row's), the reset is
/// applied here, in the same transaction: the goods' orders below the line
/// (and their conflicts) are deleted and `sold` recounted. Running it again
/// changes nothing, so every sink may, and one that was away when the
/// reset came applies it when it is back.
pub(crate) fn upsert_goods(client: &mut Client, g: &GoodsRow) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "INSERT INTO seckill_goods (event_id, goods_id, name, price_cents, stock)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (event_id, goods_id) DO UPDATE
         SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents, stock = EXCLUDED.stock",
        &[&g.event_id, &g.goods_id, &g.name, &g.price_cents, &g.stock],
    )?;
    let line: i64 = tx
        .query_one(
            "SELECT orders_after FROM seckill_goods WHERE event_id = $1 AND goods_id = $2 FOR UPDATE",
            &[&g.event_id, &g.goods_id],
        )?
        .get(0);
    if g.orders_after > line {
        for table in ["seckill_orders", "seckill_order_conflicts"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE event_id = $1 AND goods_id = $2
                     AND split_part(order_id, '-', 1)::bigint < $3"
                ),
                &[&g.event_id, &g.goods_id, &g.orders_after],
            )?;
        }
        tx.execute(
            "UPDATE seckill_goods SET orders_after = $3,
             sold = (SELECT count(*) FROM seckill_orders WHERE event_id = $1 AND goods_id = $2)
             WHERE event_id = $1 AND goods_id = $2",
            &[&g.event_id, &g.goods_id, &g.orders_after],
        )?;
        log::info!(
            "sink: {}/{} was reset: orders before {}-0 removed from PostgreSQL",
            g.event_id,
            g.goods_id,
            g.orders_after
        );
    }
    tx.commit()
}

/// The order ids PostgreSQL holds for one goods.
pub(crate) fn order_ids(
    client: &mut Client,
    event_id: &str,
    goods_id: &str,
) -> Result<HashSet<String>, postgres::Error> {
    let rows = client.query(
        "SELECT order_id FROM seckill_orders WHERE event_id = $1 AND goods_id = $2",
        &[&event_id, &goods_id],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Sets a goods' `sold` to its row count (the compensation scan's last
/// step).
pub(crate) fn recount(
    client: &mut Client,
    event_id: &str,
    goods_id: &str,
) -> Result<(), postgres::Error> {
    // Lock first, count after: a count taken before waiting for another
    // sink's batch to commit would be short by that batch.
    let mut tx = client.transaction()?;
    tx.execute(
        "INSERT INTO seckill_goods (event_id, goods_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&event_id, &goods_id],
    )?;
    tx.execute(
        "SELECT 1 FROM seckill_goods WHERE event_id = $1 AND goods_id = $2 FOR UPDATE",
        &[&event_id, &goods_id],
    )?;
    tx.execute(
        "UPDATE seckill_goods
         SET sold = (SELECT count(*) FROM seckill_orders WHERE event_id = $1 AND goods_id = $2)
         WHERE event_id = $1 AND goods_id = $2",
        &[&event_id, &goods_id],
    )?;
    tx.commit()
}

/// A batch as parallel columns.
struct Columns {
    event_id: Vec<String>,
    goods_id: Vec<String>,
    order_id: Vec<String>,
    uid: Vec<String>,
    ts_ms: Vec<i64>,
}

impl Columns {
    fn of(orders: &[&Order]) -> Self {
        Columns {
            event_id: orders.iter().map(|o| o.event_id.clone()).collect(),
            goods_id: orders.iter().map(|o| o.goods_id.clone()).collect(),
            order_id: orders.iter().map(|o| o.order_id.clone()).collect(),
            uid: orders.iter().map(|o| o.uid.clone()).collect(),
            ts_ms: orders.iter().map(|o| o.ts_ms).collect(),
        }
    }

    fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 5] {
        [
            &self.event_id,
            &self.goods_id,
            &self.order_id,
            &self.uid,
            &self.ts_ms,
        ]
    }
}
