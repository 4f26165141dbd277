//! The reject path allocates nothing per request (issue 4): a counting
//! global allocator around the in-process bytes-in -> bytes-out step
//! (`event_loop::answer_buffered` with the public service, no socket).
//!
//! The allocator counts per thread, so nothing another thread does can
//! blur the count. `GlobalAlloc` is an unsafe trait: this file is the one
//! place in the project that allows `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use seckill::auth::Signer;
use seckill::catalog::event::EventDef;
use seckill::config::LimitsConfig;
use seckill::conn::Buffers;
use seckill::event_loop::answer_buffered;
use seckill::http::parse::Limits;
use seckill::http::response::DateCache;
use seckill::metrics::Metrics;
use seckill::public::Public;
use seckill::service::{Answer, Now};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // try_with: the allocator may run while this thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is passed straight to the system allocator with the
// caller's own arguments; counting touches only a const thread-local Cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const SECRET: &[u8] = b"alloc-secret";
const NOW_UNIX_S: u64 = 1_800_000_000;

/// Allocations made answering 1000 rounds of eight pipelined requests,
/// each of which the loop answers alone, after three rounds of warm-up.
/// With `limits`, the answers may be 4029 instead; there are eight still.
fn allocations_per_1000_rounds(limits: Option<&LimitsConfig>) -> usize {
    let defs: Vec<EventDef> = serde_json::from_str(
        r#"[{"event_id":"e1","goods":[{"goods_id":"g0","stock":0},{"goods_id":"g1","stock":5}]},
            {"event_id":"later","start_at":4000000000,"goods":[{"goods_id":"g1","stock":5}]}]"#,
    )
    .expect("events");
    let (service, _consumer) = Public::in_memory(SECRET, &defs, &[0, 5, 5]).expect("service");
    let mut service = match limits {
        Some(limits) => service.with_limits(limits),
        None => service,
    };
    let metrics = Metrics::default();
    let limits = Limits {
        max_header_bytes: 8192,
        max_body_bytes: 4096,
    };
    let token = Signer::new(SECRET).mint("alice", 4_102_444_800);
    let cart = |auth: &str, body: &str| {
        format!("PUT /shop/cart/add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    // Pipelined: every answer the loop gives on its own, keep-alive.
    let input = [
        cart(&token, r#"{"event_id":"e1","goods_id":"g0"}"#), // 1001 from memory
        cart(&token, r#"{"event_id":"later","goods_id":"g1"}"#), // 1006
        cart(&token, r#"{"event_id":"e1","goods_id":"nope"}"#), // 4004
        cart("alice.1.00", r#"{"event_id":"e1","goods_id":"g0"}"#), // 4001
        "GET /healthz HTTP/1.1\r\n\r\n".to_string(),
        "GET /readyz HTTP/1.1\r\n\r\n".to_string(),
        "GET /nope HTTP/1.1\r\n\r\n".to_string(),
        "DELETE /healthz HTTP/1.1\r\n\r\n".to_string(),
    ]
    .concat()
    .into_bytes();
    let requests = 8;

    let mut bufs = Buffers::new(Instant::now());
    let mut date = DateCache::new(0);
    let mut round = |bufs: &mut Buffers, unix_s: u64| {
        bufs.inbuf.extend_from_slice(&input);
        let (date, canned) = date.stamp(unix_s);
        let now = Now {
            at: Instant::now(),
            unix_s,
            date,
            canned,
            stopping: false,
        };
        let progress = answer_buffered(bufs, &mut service, &limits, now, &metrics, &mut {
            usize::MAX
        });
        assert!(matches!(progress, Answer::Open), "{progress:?}");
        assert!(bufs.unparsed().is_empty() && !bufs.closing);
        let answers = bufs.out.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
        assert_eq!(answers, requests);
        // As if flushed to the socket.
        bufs.out.clear();
        bufs.out_pos = 0;
    };
    // Warm up: buffers grow to their working size once.
    for i in 0..3 {
        round(&mut bufs, NOW_UNIX_S + i);
    }
    let before = allocations();
    for i in 0..1000 {
        // A new second every round: the Date header is re-formatted too.
        round(&mut bufs, NOW_UNIX_S + 10 + i);
    }
    allocations() - before
}

#[test]
fn loop_answered_requests_allocate_nothing_per_request() {
    let used = allocations_per_1000_rounds(None);
    assert_eq!(used, 0, "{used} allocations for 8000 requests");
}

/// Issue 11: the limits answer from memory without allocating once a key
/// is known: a uid and an address let through (rates that never refuse
/// here), a uid refused, an address refused.
#[test]
fn limits_allocate_nothing_per_request_once_a_key_is_known() {
    let config = |user, ip, burst| LimitsConfig {
        per_user_per_s: user,
        per_ip_per_s: ip,
        burst,
        trust_forwarded_for: false,
    };
    for (what, limits) in [
        ("allowed", config(1_000_000, 1_000_000, 1_000_000)),
        ("uid refused", config(1, 0, 1)),
        ("address refused", config(0, 1, 1)),
    ] {
        let used = allocations_per_1000_rounds(Some(&limits));
        assert_eq!(used, 0, "{what}: {used} allocations for 8000 requests");
    }
}
