//! The Redis side of the sink: each goods' `orders` stream, read through
//! the consumer group `seckill-sink`.
//!
//! In: a goods' stream key, this sink's consumer name. Out: `Order`s (the
//! stream entry id is the order id), entries that cannot be orders, and the
//! acknowledgements, claims and scans the sink asks for.
//! Invariants: one stream per command (Redis Cluster refuses multi-slot
//! reads); the group is created at id `0`, never `$`, so a group made after
//! sales still delivers them; nothing here writes an order or deletes an
//! entry: the stream stays the record, `XACK` only moves the group.
//! Never: talks to PostgreSQL.

use redis::{ErrorKind, RedisError, Value};

use crate::store::access::Redis;
use crate::store::keys::valid_id;

/// The consumer group every sink joins (SPEC §3).
pub(crate) const GROUP: &str = "seckill-sink";

/// One sale, as its stream entry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    /// The stream entry id.
    pub(crate) order_id: String,
    /// The buyer.
    pub(crate) uid: String,
    /// The event.
    pub(crate) event_id: String,
    /// The goods.
    pub(crate) goods_id: String,
    /// When it sold, unix milliseconds.
    pub(crate) ts_ms: i64,
}

/// What one read of a stream found.
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// Entries that are orders of this goods.
    pub(crate) orders: Vec<Order>,
    /// Entries that are not (a missing or bad field, another goods' ids):
    /// id and why.
    pub(crate) malformed: Vec<(String, &'static str)>,
    /// Pending ids whose entries were deleted from the stream since they
    /// were delivered (an admin reset or delete).
    pub(crate) deleted: Vec<String>,
}

impl Read {
    /// Every id read, to acknowledge once handled.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.orders
            .iter()
            .map(|o| o.order_id.as_str())
            .chain(self.malformed.iter().map(|(id, _)| id.as_str()))
            .chain(self.deleted.iter().map(String::as_str))
    }

    /// Whether nothing was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.malformed.is_empty() && self.deleted.is_empty()
    }
}

/// Orders in Redis not yet acknowledged by the sink's group, so not
/// known to be in PostgreSQL (why an admin `DELETE` waits or refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unpersisted(pub(crate) u64);

/// One goods' stream, as the sink sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Goods {
    /// The event.
    pub(crate) event_id: String,
    /// The goods.
    pub(crate) goods_id: String,
    /// Its `orders` stream key.
    pub(crate) key: String,
}

/// Makes the group on `key` at id `0`. An existing group is left as it
/// is. A stream that does not exist yet (no sale) is an error: making it
/// here could bring back the key of a goods deleted a moment ago.
pub(crate) fn ensure_group(conn: &mut Redis, key: &str) -> redis::RedisResult<()> {
    let made = conn.query::<()>(
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0"),
    );
    match made {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Whether `e` says the group (or its stream) is gone: Redis restarted
/// without its data, was flushed, or the goods was reset or deleted.
pub(crate) fn is_no_group(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Reads up to `count` entries for `consumer`: its own pending ones first
/// (delivered before, never acknowledged: a crash between reading and
/// `XACK`), then new ones.
pub(crate) fn read(
    conn: &mut Redis,
    goods: &Goods,
    consumer: &str,
    count: usize,
) -> redis::RedisResult<Read> {
    let pending = read_from(conn, goods, consumer, count, "0")?;
    if !pending.is_empty() {
        return Ok(pending);
    }
    read_from(conn, goods, consumer, count, ">")
}

/// Reads up to `count` new entries only (never delivered to anyone):
/// what the sink reads ahead while its pending batch is being written.
pub(crate) fn read_new(
    conn: &mut Redis,
    goods: &Goods,
    consumer: &str,
    count: usize,
) -> redis::RedisResult<Read> {
    read_from(conn, goods, consumer, count, ">")
}

fn read_from(
    conn: &mut Redis,
    goods: &Goods,
    consumer: &str,
    count: usize,
    from: &str,
) -> redis::RedisResult<Read> {
    let reply = conn.query::<Value>(
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&goods.key)
            .arg(from),
    )?;
    // Nil: nothing new. Else [[key, [entry, ...]]].
    let entries = match reply {
        Value::Nil => return Ok(Read::default()),
        Value::Array(streams) => streams
            .into_iter()
            .next()
            .and_then(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .ok_or_else(|| bad_reply("XREADGROUP"))?,
        _ => return Err(bad_reply("XREADGROUP")),
    };
    Ok(parse_entries(goods, entries))
}

/// Takes over entries pending longer than `idle_ms` at any consumer (a
/// sink that died holding them), up to `count`. They become this
/// consumer's pending entries, which `read` returns first.
pub(crate) fn claim(
    conn: &mut Redis,
    goods: &Goods,
    consumer: &str,
    idle_ms: u64,
    count: usize,
) -> redis::RedisResult<Read> {
    let reply = conn.query::<Value>(
        redis::cmd("XAUTOCLAIM")
            .arg(&goods.key)
            .arg(GROUP)
            .arg(consumer)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count),
    )?;
    // [next cursor, [entry, ...], [deleted id, ...]] (the last since Redis 7).
    let Value::Array(parts) = reply else {
        return Err(bad_reply("XAUTOCLAIM"));
    };
    let mut parts = parts.into_iter().skip(1);
    let entries = parts.next().ok_or_else(|| bad_reply("XAUTOCLAIM"))?;
    let mut read = parse_entries(goods, entries);
    if let Some(Value::Array(ids)) = parts.next() {
        // Redis 7 drops these from the group as it answers: say so.
        read.deleted.extend(ids.iter().filter_map(text));
    }
    Ok(read)
}

/// Acknowledges `ids`: handled, whether written or refused.
pub(crate) fn ack<'a>(
    conn: &mut Redis,
    goods: &Goods,
    ids: impl Iterator<Item = &'a str>,
) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(&goods.key).arg(GROUP);
    let mut any = false;
    for id in ids {
        cmd.arg(id);
        any = true;
    }
    if !any {
        return Ok(());
    }
    conn.query::<i64>(&cmd).map(drop)
}

/// Entries after `after` (exclusive; `"-"` for the start), up to `count`:
/// the compensation scan's view of the stream, whatever the group says.
pub(crate) fn range(
    conn: &mut Redis,
    goods: &Goods,
    after: &str,
    count: usize,
) -> redis::RedisResult<Read> {
    let start = if after == "-" {
        "-".to_string()
    } else {
        format!("({after}")
    };
    let reply = conn.query::<Value>(
        redis::cmd("XRANGE")
            .arg(&goods.key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count),
    )?;
    Ok(parse_entries(goods, reply))
}

/// The sink's group on one stream, as `XINFO GROUPS` shows it.
struct GroupInfo {
    /// Delivered, not yet acknowledged.
    pending: i64,
    /// Never delivered; None when Redis cannot tell (entries deleted
    /// mid-way).
    lag: Option<i64>,
    /// The last entry delivered (`0-0`: none yet).
    last_delivered: String,
}

/// The sink's group on `goods`' stream; None when the stream or the group
/// does not exist.
fn group_info(conn: &mut Redis, goods: &Goods) -> redis::RedisResult<Option<GroupInfo>> {
    let reply = conn.query::<Value>(redis::cmd("XINFO").arg("GROUPS").arg(&goods.key));
    let reply = match reply {
        Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => return Ok(None),
        other => other?,
    };
    let Value::Array(groups) = reply else {
        return Err(bad_reply("XINFO"));
    };
    for group in groups {
        let fields = match group {
            Value::Array(f) => f,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let field = |name: &str| {
            fields
                .chunks_exact(2)
                .find(|kv| text(&kv[0]).as_deref() == Some(name))
                .map(|kv| &kv[1])
        };
        if field("name").and_then(text).as_deref() != Some(GROUP) {
            continue;
        }
        return Ok(Some(GroupInfo {
            pending: field("pending").and_then(int).unwrap_or(0),
            lag: field("lag").and_then(int),
            last_delivered: field("last-delivered-id")
                .and_then(text)
                .unwrap_or_else(|| "0-0".into()),
        }));
    }
    Ok(None)
}

/// How many entries of the stream are not yet acknowledged by the group:
/// pending (delivered, not acknowledged) plus lag (never delivered).
/// No group yet (no sink ran since the first sale): every entry counts
/// (`XLEN`, 0 when there is no stream).
pub(crate) fn unpersisted(conn: &mut Redis, goods: &Goods) -> redis::RedisResult<u64> {
    let Some(info) = group_info(conn, goods)? else {
        let len = conn.query::<u64>(redis::cmd("XLEN").arg(&goods.key));
        return len;
    };
    // With no lag figure, count the whole stream after the group's last
    // delivered entry, which the next reads bring down.
    let lag = match info.lag {
        Some(lag) => lag,
        None => after(conn, goods, &info.last_delivered)?,
    };
    Ok((info.pending + lag).max(0) as u64)
}

/// Entries after `last` (exclusive), counted a page at a time so no reply
/// holds the whole stream.
fn after(conn: &mut Redis, goods: &Goods, last: &str) -> redis::RedisResult<i64> {
    const PAGE: usize = 1000;
    let mut from = last.to_string();
    let mut n = 0;
    loop {
        let Value::Array(entries) = conn.query::<Value>(
            redis::cmd("XRANGE")
                .arg(&goods.key)
                .arg(format!("({from}"))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE),
        )?
        else {
            return Ok(n);
        };
        n += entries.len() as i64;
        let last_id = match entries.last() {
            Some(Value::Array(entry)) => entry.first().and_then(text),
            _ => None,
        };
        match last_id {
            Some(id) if entries.len() == PAGE => from = id,
            _ => return Ok(n),
        }
    }
}

/// The id of the last entry the group delivered (None: no stream, no
/// group, or nothing delivered yet).
pub(crate) fn last_delivered(
    conn: &mut Redis,
    goods: &Goods,
) -> redis::RedisResult<Option<String>> {
    Ok(group_info(conn, goods)?
        .map(|g| g.last_delivered)
        .filter(|id| id != "0-0"))
}

/// The ids pending in the group, at any consumer (delivered, not yet
/// acknowledged: in flight, not lost).
pub(crate) fn pending_ids(
    conn: &mut Redis,
    goods: &Goods,
) -> redis::RedisResult<std::collections::HashSet<String>> {
    const PAGE: usize = 1000;
    let mut ids = std::collections::HashSet::new();
    let mut start = "-".to_string();
    loop {
        let Value::Array(rows) = conn.query::<Value>(
            redis::cmd("XPENDING")
                .arg(&goods.key)
                .arg(GROUP)
                .arg(&start)
                .arg("+")
                .arg(PAGE),
        )?
        else {
            return Ok(ids);
        };
        let n = rows.len();
        let mut last = None;
        for row in rows {
            if let Value::Array(parts) = row {
                if let Some(id) = parts.first().and_then(text) {
                    last = Some(id.clone());
                    ids.insert(id);
                }
            }
        }
        match last {
            Some(id) if n == PAGE => start = format!("({id}"),
            _ => return Ok(ids),
        }
    }
}

/// Whether stream id `a` is at or before `b` (ids are `<ms>-<seq>`).
pub(crate) fn id_at_most(a: &str, b: &str) -> bool {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a) <= parts(b)
}

/// Splits a list of stream entries into orders, malformed entries and
/// deleted ids (`[id, nil]`, as a pending read returns them).
fn parse_entries(goods: &Goods, entries: Value) -> Read {
    let mut read = Read::default();
    let Value::Array(entries) = entries else {
        return read;
    };
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop();
        let Some(id) = parts.pop().as_ref().and_then(text) else {
            continue;
        };
        match fields {
            None | Some(Value::Nil) => read.deleted.push(id),
            Some(fields) => match order(goods, &id, &fields) {
                Ok(order) => read.orders.push(order),
                Err(why) => read.malformed.push((id, why)),
            },
        }
    }
    read
}

/// An entry's fields as an order of `goods`, or why it is not one.
fn order(goods: &Goods, id: &str, fields: &Value) -> Result<Order, &'static str> {
    let Value::Array(kv) = fields else {
        return Err("fields are not a list");
    };
    let field = |name: &str| {
        kv.chunks(2)
            .find(|pair| pair.len() == 2 && text(&pair[0]).as_deref() == Some(name))
            .and_then(|pair| text(&pair[1]))
    };
    let uid = field("uid").ok_or("no uid")?;
    let event_id = field("event_id").ok_or("no event_id")?;
    let goods_id = field("goods_id").ok_or("no goods_id")?;
    let ts_ms = field("ts_ms")
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or("no integer ts_ms")?;
    if event_id != goods.event_id || goods_id != goods.goods_id {
        return Err("another goods' ids");
    }
    // The deduct writes only checked uids; anything else was written by
    // hand, and would fail a COPY for every batch it is in.
    if !valid_id(uid.as_bytes()) {
        return Err("uid is not [A-Za-z0-9_-]{1,64}");
    }
    Ok(Order {
        order_id: id.to_string(),
        uid,
        event_id,
        goods_id,
        ts_ms,
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn bad_reply(command: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected reply", command.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn entries_become_orders_or_are_named_malformed_or_deleted() {
        let goods = Goods {
            event_id: "e1".into(),
            goods_id: "g1".into(),
            key: "k".into(),
        };
        let good = [
            ("uid", "u1"),
            ("event_id", "e1"),
            ("goods_id", "g1"),
            ("ts_ms", "7"),
        ];
        let entries = Value::Array(vec![
            entry("1-0", &good),
            entry(
                "2-0",
                &[("uid", "u2"), ("event_id", "e1"), ("goods_id", "g1")],
            ),
            entry(
                "3-0",
                &[
                    ("uid", "u3"),
                    ("event_id", "e1"),
                    ("goods_id", "g2"),
                    ("ts_ms", "1"),
                ],
            ),
            Value::Array(vec![bulk("4-0"), Value::Nil]),
        ]);
        let read = parse_entries(&goods, entries);
        assert_eq!(read.orders.len(), 1);
        assert_eq!(read.orders[0].order_id, "1-0");
        assert_eq!(read.orders[0].ts_ms, 7);
        assert_eq!(
            read.malformed,
            vec![
                ("2-0".to_string(), "no integer ts_ms"),
                ("3-0".to_string(), "another goods' ids")
            ]
        );
        assert_eq!(read.deleted, vec!["4-0".to_string()]);
        assert_eq!(read.ids().count(), 4);
    }

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(id_at_most("9-0", "10-0"));
        assert!(id_at_most("10-2", "10-10"));
        assert!(id_at_most("10-10", "10-10"));
        assert!(!id_at_most("11-0", "10-99"));
    }
}
