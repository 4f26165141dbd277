//! Fuzz target: the event loop's bytes-in -> bytes-out path.
//!
//! Any bytes a client sends are fed to `event_loop::answer_buffered` with
//! the real public service (an in-memory catalog, stock, queue, breaker and
//! blacklist; no Redis, no socket). Whatever comes out must be a sequence of
//! complete HTTP/1.1 responses, each with a `Content-Length` that matches its
//! body and, for JSON, a body with `code` and `msg`; nothing may panic.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use seckill::catalog::event::EventDef;
use seckill::conn::Buffers;
use seckill::event_loop::{answer_buffered, TURN_WORK};
use seckill::http::parse::Limits;
use seckill::http::response::DateCache;
use seckill::metrics::Metrics;
use seckill::public::Public;
use seckill::queue::Consumer;
use seckill::service::{Answer, Now};

/// Seeds in `fuzz/seeds/` carry tokens signed with this secret that expire
/// at 4102444800; the harness's clock is fixed before that.
const SECRET: &[u8] = b"fuzz-secret";
const NOW_UNIX_S: u64 = 1_800_000_000;

struct Harness {
    service: Public,
    metrics: Metrics,
    limits: Limits,
    date: DateCache,
    // Kept so the queue stays open; tasks never reach it (claims are dropped).
    _consumer: Box<dyn Consumer>,
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        let defs: Vec<EventDef> = serde_json::from_str(
            r#"[{"event_id":"e1","name":"e","start_at":0,"end_at":4102444800,
                 "goods":[{"goods_id":"g0","stock":0},{"goods_id":"g1","stock":1000000}]},
                {"event_id":"later","start_at":4000000000,"goods":[{"goods_id":"g1","stock":5}]},
                {"event_id":"over","start_at":0,"end_at":1,"goods":[{"goods_id":"g1","stock":5}]}]"#,
        )
        .expect("harness events parse");
        let (service, consumer) =
            Public::in_memory(SECRET, &defs, &[0, 1_000_000, 5, 5]).expect("in-memory service");
        service.blacklist.set_from_text("bot\n");
        Mutex::new(Harness {
            metrics: service.metrics.clone(),
            service,
            limits: Limits {
                max_header_bytes: 8192,
                max_body_bytes: 4096,
            },
            date: DateCache::new(NOW_UNIX_S),
            _consumer: consumer,
        })
    })
}

/// Every byte of `out` belongs to a complete, well-formed response.
fn check(mut out: &[u8]) {
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("incomplete or bad response head: {other:?}"),
        };
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).expect("ASCII header"))
        };
        let len: usize = header("content-length")
            .expect("Content-Length")
            .parse()
            .expect("numeric");
        let body = &out[head..head + len];
        if header("content-type") == Some("application/json") {
            let v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
            assert!(v["code"].is_u64() && v["msg"].is_string(), "{v}");
            let closes = matches!(v["code"].as_u64(), Some(4000 | 4008 | 4013 | 4031));
            assert!(
                !closes || header("connection") == Some("close"),
                "SPEC closes after {v}"
            );
        }
        out = &out[head + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = harness().lock().unwrap_or_else(|e| e.into_inner());
    let h = &mut *guard;
    let (date, canned) = h.date.stamp(NOW_UNIX_S);
    let now = Now {
        at: Instant::now(),
        unix_s: NOW_UNIX_S,
        date,
        canned,
        stopping: false,
    };
    let mut bufs = Buffers::new(now.at);
    bufs.inbuf.extend_from_slice(data);
    loop {
        let mut budget = TURN_WORK;
        let answer = answer_buffered(
            &mut bufs,
            &mut h.service,
            &h.limits,
            now,
            &h.metrics,
            &mut budget,
        );
        check(&bufs.out);
        // As if flushed to the socket.
        bufs.out.clear();
        bufs.out_pos = 0;
        match answer {
            // Answered something and still open: go on with what is left.
            Answer::Open if budget < TURN_WORK => continue,
            _ => break, // partial, closing, or hijacked (the claim's lease goes back)
        }
    }
});
