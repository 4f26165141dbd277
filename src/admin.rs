//! Beside the path: the admin listener (`admin.bind`).
//!
//! `POST /admin/events` creates or replaces an event; `GET /admin/events/E`
//! shows it with `stock` (the definition's plus top-ups), `stock_left` and
//! `sold`; `POST /admin/events/E/goods/G/stock` adds units to a goods
//! mid-event (`topup.lua`); `DELETE /admin/events/E` removes it and its
//! keys. With a sink configured the orders stay in PostgreSQL, the
//! system of record: `DELETE` first waits up to 5 s for the sink to
//! persist every order of the event (no entry left unacknowledged by its
//! group), and answers 4009 with nothing deleted when some are not
//! (`?force=true` deletes anyway and logs how many were not). Every
//! request needs `Authorization: Bearer <admin.key>`, compared in constant
//! time; an empty key refuses everything (4001).
//!
//! This service runs on its own event loop thread, so it may wait on Redis
//! (each call bounded by `redis.timeout_ms`) without stalling a public client.
//! After every change it publishes on `seckill:events:changed`; the catalog
//! of every node re-reads within 1 s either way.
//!
//! Stock is set only when its key does not exist yet, or when the body says
//! `"reset": true` (then that goods' buyers and orders are cleared too). A
//! goods the new definition drops loses its keys, as on `DELETE`. Each
//! time the stock key is set, the goods gets a new `epoch` in the stored
//! event JSON, which tells every node to recompute its share and forget its
//! buyers (SPEC §2).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::attempt::BadAttempt;
use crate::auth::AuthError;
use crate::catalog::event::{EventDef, GoodsDef, MAX_STOCK};
use crate::clock::Clock;
use crate::codes::Code;
use crate::http::parse::{query_param, Request};
use crate::metrics::{Metrics, RouteLabel};
use crate::orders::stream::{self, Goods, Unpersisted};
use crate::route::{self, Route, RouteError};
use crate::service::{Answer, Now, Reply, Service};
use crate::store::access::{Endpoint, Redis};
use crate::store::keys::valid_id;
use crate::store::keys::{self, GoodsKeys};
use crate::store::{RESET_SCRIPT, TOPUP_SCRIPT};

/// The admin listener's service.
pub(crate) struct Admin {
    key: String,
    conn: Redis,
    clock: std::sync::Arc<dyn Clock>,
    metrics: Metrics,
    // A sink is configured: orders outlive a `DELETE` in PostgreSQL.
    sink: bool,
}

#[derive(Deserialize)]
struct PutBody {
    #[serde(flatten)]
    def: EventDef,
    #[serde(default)]
    reset: bool,
}

/// Why an admin call failed: each a stage's own cause, so `codes.rs` maps
/// every one (and this file names no code but 0).
#[derive(Debug)]
enum Fail {
    /// No such admin route or method; also an event that is not there (a
    /// path that names nothing: 404).
    Route(RouteError),
    /// The bearer key is missing or wrong.
    Key(AuthError),
    /// A definition or an id that is not acceptable.
    Body(BadAttempt),
    /// Some of the event's orders are not in PostgreSQL yet (`DELETE`).
    Unpersisted(Unpersisted),
    /// Redis failed.
    Redis(redis::RedisError),
}

/// How long `DELETE` waits for the sink to persist the event's orders.
const DELETE_WAIT: Duration = Duration::from_secs(5);

/// An event that is not stored.
const NO_EVENT: Fail = Fail::Route(RouteError::NotFound);

impl Fail {
    /// The code a client sees (each cause's mapping is `codes.rs`'s).
    fn code(&self) -> Code {
        match self {
            Fail::Route(e) => Code::from(*e),
            Fail::Key(e) => Code::from(*e),
            Fail::Body(e) => Code::from(*e),
            Fail::Unpersisted(n) => Code::from(n),
            Fail::Redis(e) => Code::from(e),
        }
    }
}

impl From<redis::RedisError> for Fail {
    fn from(e: redis::RedisError) -> Self {
        Fail::Redis(e)
    }
}

type AdminResult = Result<Option<String>, Fail>;

impl Admin {
    /// An admin service with bearer `key`, talking to Redis at `endpoint`.
    pub(crate) fn new(
        key: String,
        endpoint: &Endpoint,
        timeout: Duration,
        clock: std::sync::Arc<dyn Clock>,
        metrics: Metrics,
        sink: bool,
    ) -> Result<Self, String> {
        Ok(Admin {
            key,
            conn: Redis::open(endpoint, timeout).map_err(|e| format!("redis: {e}"))?,
            clock,
            metrics,
            sink,
        })
    }

    fn authorize(&self, req: &Request<'_>) -> Result<(), Fail> {
        let header = req.authorization.ok_or(Fail::Key(AuthError::Missing))?;
        let token = header
            .strip_prefix(b"Bearer ")
            .ok_or(Fail::Key(AuthError::Malformed))?;
        if self.key.is_empty() || !bool::from(token.ct_eq(self.key.as_bytes())) {
            return Err(Fail::Key(AuthError::BadSignature));
        }
        Ok(())
    }

    fn stored(&mut self, event_id: &str) -> Result<Option<EventDef>, Fail> {
        let raw: Option<Vec<u8>> = self
            .conn
            .query(redis::cmd("HGET").arg(keys::EVENTS).arg(event_id))?;
        Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }

    fn put(&mut self, body: &[u8]) -> AdminResult {
        let PutBody { mut def, reset } =
            serde_json::from_slice(body).map_err(|_| Fail::Body(BadAttempt))?;
        def.check().map_err(|_| Fail::Body(BadAttempt))?;
        let old_goods: Vec<GoodsDef> = self
            .stored(&def.event_id)?
            .map(|old| old.goods)
            .unwrap_or_default();
        let old_epochs: HashMap<&str, u64> = old_goods
            .iter()
            .map(|g| (g.goods_id.as_str(), g.epoch))
            .collect();
        // A goods dropped from the definition loses its keys, as on DELETE
        // (SPEC §2): re-created later, it must not inherit old stock or
        // buyers.
        let dropped: Vec<&GoodsDef> = old_goods
            .iter()
            .filter(|g| !def.goods.iter().any(|n| n.goods_id == g.goods_id))
            .collect();
        // A new epoch is newer than every epoch the event had, even within
        // one millisecond; a goods re-created after a drop gets a fresh one
        // too, so a node that never saw the drop still sees the change.
        let floor = old_goods.iter().map(|g| g.epoch + 1).max().unwrap_or(0);
        let now_ms = self.clock.unix_ms().max(floor);
        // Dropped goods go first, and only once their orders are persisted
        // (4009, nothing changed, when they are not), as on DELETE. Until
        // the new definition is stored a moment later, an attempt on them
        // finds no stock key: 4004.
        if !dropped.is_empty() {
            let ids: Vec<&str> = dropped.iter().map(|g| g.goods_id.as_str()).collect();
            self.remove(&def.event_id, &ids, false, false)?;
        }
        let conn = &mut self.conn;
        for g in &mut def.goods {
            let k = GoodsKeys::new(&def.event_id, &g.goods_id);
            let old = old_goods.iter().find(|o| o.goods_id == g.goods_id);
            if reset {
                // One script: the old sale's keys go, the new stream starts
                // above the returned epoch (see reset.lua), so the sink can
                // tell the two sales' orders apart.
                let epoch: u64 = conn.query(
                    redis::cmd("EVAL")
                        .arg(RESET_SCRIPT)
                        .arg(6)
                        .arg(&k.stock)
                        .arg(&k.buyers)
                        .arg(&k.orders)
                        .arg(&k.reset)
                        .arg(&k.added)
                        .arg(&k.used)
                        .arg(g.stock)
                        .arg(now_ms),
                )?;
                drop_locks(conn, &k);
                g.epoch = epoch;
                g.orders_after = epoch;
                continue;
            }
            let set: Option<String> =
                conn.query(redis::cmd("SET").arg(&k.stock).arg(g.stock).arg("NX"))?;
            g.epoch = if set.is_some() {
                // A new sale: no top-ups yet (a stray `added` left by hand
                // would count in its stock).
                conn.query::<()>(redis::cmd("DEL").arg(&k.added))?;
                now_ms
            } else {
                old_epochs.get(g.goods_id.as_str()).copied().unwrap_or(0)
            };
            g.orders_after = old.map_or(0, |o| o.orders_after);
        }
        let json = serde_json::to_string(&def).map_err(|_| Fail::Body(BadAttempt))?;
        conn.query::<()>(
            redis::cmd("HSET")
                .arg(keys::EVENTS)
                .arg(&def.event_id)
                .arg(&json),
        )?;
        publish(conn, "put", &def.event_id)?;
        self.get(&def.event_id)
    }

    fn get(&mut self, event_id: &str) -> AdminResult {
        let def = self.stored(event_id)?.ok_or(NO_EVENT)?;
        let mut pipe = redis::pipe();
        for g in &def.goods {
            let k = GoodsKeys::new(&def.event_id, &g.goods_id);
            pipe.get(&k.stock).hlen(&k.buyers).get(&k.added);
        }
        let counts: Vec<(Option<i64>, i64, Option<i64>)> = if def.goods.is_empty() {
            Vec::new()
        } else {
            self.conn.query_pipe(&pipe)?
        };
        let goods: Vec<serde_json::Value> = def
            .goods
            .iter()
            .zip(counts)
            .map(|(g, (left, sold, added))| goods_json(g, added.unwrap_or(0), left, sold))
            .collect();
        let data = serde_json::json!({
            "event_id": def.event_id, "name": def.name,
            "start_at": def.start_at, "end_at": def.end_at, "goods": goods,
        });
        Ok(Some(data.to_string()))
    }

    /// Adds `{"add": n}` units to a goods mid-event (SPEC §2): one script
    /// raises its `stock` and `added` together; every node grows its share
    /// on its next re-read, which the published change makes at once.
    fn top_up(&mut self, event_id: &str, goods_id: &str, body: &[u8]) -> AdminResult {
        // An object with `add` alone, a positive integer the deduct script
        // takes (a derived struct would also take `[n]`).
        let body: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|_| Fail::Body(BadAttempt))?;
        let add = match (body.len(), body.get("add").and_then(|n| n.as_u64())) {
            (1, Some(n)) if (1..=MAX_STOCK as u64).contains(&n) => n,
            _ => return Err(Fail::Body(BadAttempt)),
        };
        let def = self.stored(event_id)?.ok_or(NO_EVENT)?;
        let g = def
            .goods
            .iter()
            .find(|g| g.goods_id == goods_id)
            .ok_or(NO_EVENT)?;
        let k = GoodsKeys::new(event_id, goods_id);
        let reply: redis::Value = self.conn.query(
            redis::cmd("EVAL")
                .arg(TOPUP_SCRIPT)
                .arg(3)
                .arg(&k.stock)
                .arg(&k.added)
                .arg(&k.buyers)
                .arg(add)
                .arg(MAX_STOCK),
        )?;
        let (left, added, sold): (i64, i64, i64) = match reply {
            // No stock key: the goods is defined but has no sale.
            redis::Value::Int(-3) => return Err(NO_EVENT),
            // The stock would pass what the deduct script takes.
            redis::Value::Int(-4) => return Err(Fail::Body(BadAttempt)),
            other => redis::from_redis_value(other).map_err(redis::RedisError::from)?,
        };
        let msg = serde_json::json!({"kind": "stock", "event_id": event_id, "goods_id": goods_id});
        self.conn.query::<()>(
            redis::cmd("PUBLISH")
                .arg(keys::CHANGED)
                .arg(msg.to_string()),
        )?;
        log::info!("admin: {event_id}/{goods_id} topped up by {add}: {left} left");
        Ok(Some(goods_json(g, added, Some(left), sold).to_string()))
    }

    /// Orders in `streams` not yet acknowledged by the sink's group.
    fn unpersisted(&mut self, streams: &[Goods]) -> Result<u64, Fail> {
        let mut n = 0;
        for s in streams {
            n += stream::unpersisted(&mut self.conn, s)?;
        }
        Ok(n)
    }

    /// With a sink, the orders stay in PostgreSQL: `DELETE` removes the
    /// event's keys once every order is persisted (see `remove`).
    fn delete(&mut self, event_id: &str, force: bool) -> AdminResult {
        let def = self.stored(event_id)?.ok_or(NO_EVENT)?;
        let goods: Vec<&str> = def.goods.iter().map(|g| g.goods_id.as_str()).collect();
        self.remove(event_id, &goods, true, force)?;
        publish(&mut self.conn, "delete", event_id)?;
        Ok(None)
    }

    /// Deletes the keys of `goods` of `event_id` (and the event itself when
    /// `with_event`). With a sink, first waits up to `DELETE_WAIT` for
    /// their orders to be persisted (acknowledged by the sink's group) and
    /// refuses with nothing deleted when some are not, unless `force`.
    /// The event keeps selling meanwhile: the streams are watched from the
    /// last check to the delete, and a sale in between aborts the delete
    /// and checks again, so no order sold after the check is deleted
    /// unpersisted. On one Redis that is one transaction for every goods;
    /// on a Redis Cluster one per slot (a transaction stays in one), so a
    /// 4009 there may come after the goods of other slots, every order of
    /// theirs persisted, were deleted; the event itself goes last, so the
    /// `DELETE` can be sent again.
    fn remove(
        &mut self,
        event_id: &str,
        goods: &[&str],
        with_event: bool,
        force: bool,
    ) -> Result<(), Fail> {
        let streams: Vec<Goods> = goods
            .iter()
            .map(|g| Goods {
                event_id: event_id.to_string(),
                goods_id: g.to_string(),
                key: GoodsKeys::new(event_id, g).orders,
            })
            .collect();
        let until = std::time::Instant::now() + DELETE_WAIT;
        // Every goods persisted first, so that a refusal deletes nothing.
        while self.sink {
            let left = self.unpersisted(&streams)?;
            if left == 0 {
                break;
            }
            if force {
                log::warn!(
                    "admin: event {event_id} deleted with force: {left} orders were not persisted"
                );
                break;
            }
            if std::time::Instant::now() >= until {
                return Err(Fail::Unpersisted(Unpersisted(left)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // One transaction per group of goods that may share one: all of
        // them on one Redis (so a refusal still deletes nothing); on a
        // cluster the goods of one slot (a transaction stays in a slot).
        let mut groups: Vec<(u16, Vec<&Goods>)> = Vec::new();
        for s in &streams {
            let g = self.conn.txn_group(s.key.as_bytes());
            match groups.iter_mut().find(|(k, _)| *k == g) {
                Some((_, list)) => list.push(s),
                None => groups.push((g, vec![s])),
            }
        }
        let watching = self.sink && !force;
        // The event goes in the same transaction as its goods when it can
        // (always on one Redis): a failure then leaves all or nothing.
        let events_group = self.conn.txn_group(keys::EVENTS.as_bytes());
        let mut event_deleted = !with_event;
        for (g, group) in &groups {
            let with_hdel = !event_deleted && *g == events_group;
            let keys: Vec<&[u8]> = group.iter().map(|s| s.key.as_bytes()).collect();
            let at = keys[0];
            loop {
                // WATCH, the check and MULTI/EXEC go to the master of the
                // group's slot; EXEC runs only on the connection that
                // holds the WATCH (`exec_watched`).
                let watched = if watching {
                    let watched = self.conn.watch(&keys)?;
                    let mut left = 0;
                    for s in group {
                        left += stream::unpersisted(&mut self.conn, s)?;
                    }
                    if left > 0 {
                        self.conn.query_at::<()>(at, &redis::cmd("UNWATCH"))?;
                        if std::time::Instant::now() >= until {
                            return Err(Fail::Unpersisted(Unpersisted(left)));
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Some(watched)
                } else {
                    None
                };
                let mut pipe = redis::pipe();
                pipe.cmd("MULTI");
                for s in group {
                    let k = GoodsKeys::new(event_id, &s.goods_id);
                    pipe.del(&k.stock)
                        .del(&k.buyers)
                        .del(&k.orders)
                        .del(&k.reset)
                        .del(&k.added)
                        .del(&k.used);
                }
                if with_hdel {
                    pipe.hdel(keys::EVENTS, event_id);
                }
                pipe.cmd("EXEC");
                let replies = match watched {
                    Some(w) => self.conn.exec_watched(w, at, &pipe, None),
                    None => self.conn.round_trip_at(at, &pipe, None),
                }
                .map_err(redis::RedisError::from)?;
                match replies.last() {
                    // Nil: a watched stream changed (a sale); check again.
                    Some(Ok(redis::Value::Nil)) => continue,
                    Some(Ok(_)) => {
                        event_deleted |= with_hdel;
                        break;
                    }
                    Some(Err(e)) => return Err(Fail::Redis(e.clone())),
                    None => {
                        return Err(Fail::Redis(redis::RedisError::from((
                            redis::ErrorKind::Parse,
                            "no EXEC reply",
                        ))))
                    }
                }
            }
        }
        for s in &streams {
            drop_locks(&mut self.conn, &GoodsKeys::new(event_id, &s.goods_id));
        }
        if !event_deleted {
            self.conn
                .query::<()>(redis::cmd("HDEL").arg(keys::EVENTS).arg(event_id))?;
        }
        Ok(())
    }
}

/// Removes the sliding-lock strategy's `lock:N` keys of a goods (SPEC
/// §3.1): a `SCAN` of its master for the goods' lock prefix, then `DEL`.
/// Locks live only while an attempt is in flight (and expire), so there
/// are few; a script could not name them in advance. Best effort: the
/// change itself is done, and a lock left expires (`request_timeout_ms`).
fn drop_locks(conn: &mut Redis, k: &GoodsKeys) {
    if let Err(e) = scan_and_delete(conn, k) {
        log::warn!(
            "admin: removing {}:* failed ({e}); they expire by themselves",
            k.lock_prefix
        );
    }
}

fn scan_and_delete(conn: &mut Redis, k: &GoodsKeys) -> redis::RedisResult<()> {
    let at = k.stock.as_bytes();
    let pattern = format!("{}:*", k.lock_prefix);
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = conn.query_at(
            at,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000),
        )?;
        if !found.is_empty() {
            conn.query_at::<()>(at, redis::cmd("DEL").arg(&found))?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// One goods as the admin sees it: its stock is the definition's plus the
/// units `added` by top-ups (SPEC §2).
fn goods_json(g: &GoodsDef, added: i64, left: Option<i64>, sold: i64) -> serde_json::Value {
    serde_json::json!({
        "goods_id": g.goods_id, "name": g.name, "price_cents": g.price_cents,
        "stock": g.stock.saturating_add(added), "stock_left": left.unwrap_or(0).max(0),
        "sold": sold,
    })
}

fn publish(conn: &mut Redis, kind: &str, event_id: &str) -> redis::RedisResult<()> {
    let msg = serde_json::json!({"kind": kind, "event_id": event_id}).to_string();
    conn.query(redis::cmd("PUBLISH").arg(keys::CHANGED).arg(msg))
}

impl Admin {
    /// Route, key, then the call; the key is checked before anything else
    /// is looked at.
    fn serve(&mut self, req: &Request<'_>) -> AdminResult {
        let route = route::admin(req.method, req.path).map_err(Fail::Route)?;
        self.authorize(req)?;
        match route {
            Route::AdminPut => self.put(req.body),
            Route::AdminGet(id) if valid_id(id.as_bytes()) => self.get(id),
            Route::AdminTopUp(id, goods)
                if valid_id(id.as_bytes()) && valid_id(goods.as_bytes()) =>
            {
                self.top_up(id, goods, req.body)
            }
            Route::AdminDelete(id) if valid_id(id.as_bytes()) => {
                let force = query_param(req.query, "force") == Some("true");
                self.delete(id, force)
            }
            _ => Err(Fail::Body(BadAttempt)),
        }
    }
}

impl Service for Admin {
    fn handle(&mut self, req: &Request<'_>, now: Now<'_>, out: &mut Vec<u8>) -> Answer {
        let result = self.serve(req);
        let reply = match &result {
            Ok(data) => Reply::json(Code::Ok, data.as_deref()),
            Err(Fail::Route(e)) => Reply::no_route(*e),
            Err(fail) => {
                if let Fail::Redis(e) = fail {
                    log::warn!("admin: redis failed: {e}");
                }
                Reply::code(fail.code())
            }
        };
        self.metrics.count(RouteLabel::Admin, reply.code);
        reply.write(out, req, now)
    }
}
