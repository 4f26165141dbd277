//! Stages 2-4 and 8 together: the whole in-process reject path, bytes in ->
//! bytes out (`event_loop::answer_buffered` with the public service), for a
//! sold-out cart-add on a keep-alive connection.
#![allow(missing_docs)] // criterion_group! generates an undocumented fn
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill::auth::Signer;
use seckill::catalog::event::EventDef;
use seckill::conn::Buffers;
use seckill::event_loop::answer_buffered;
use seckill::http::parse::Limits;
use seckill::http::response::DateCache;
use seckill::metrics::Metrics;
use seckill::public::Public;
use seckill::service::Now;

fn bench(c: &mut Criterion) {
    let secret = b"bench-secret";
    let defs: Vec<EventDef> =
        serde_json::from_str(r#"[{"event_id":"e1","goods":[{"goods_id":"g0","stock":0}]}]"#)
            .expect("events");
    let (mut service, _consumer) = Public::in_memory(secret, &defs, &[0]).expect("service");
    let token = Signer::new(secret).mint("u123456", 4_102_444_800);
    let body = r#"{"event_id":"e1","goods_id":"g0"}"#;
    let request = format!(
        "PUT /shop/cart/add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let metrics = Metrics::default();
    let limits = Limits {
        max_header_bytes: 8192,
        max_body_bytes: 4096,
    };
    let mut bufs = Buffers::new(Instant::now());
    let mut date = DateCache::new(1_800_000_000);
    let mut g = c.benchmark_group("reject");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sold_out_cart_add", |b| {
        b.iter(|| {
            bufs.inbuf.extend_from_slice(&request);
            let (date, canned) = date.stamp(1_800_000_000);
            let now = Now {
                at: Instant::now(),
                unix_s: 1_800_000_000,
                date,
                canned,
                stopping: false,
            };
            black_box(answer_buffered(
                &mut bufs,
                &mut service,
                &limits,
                now,
                &metrics,
                &mut { usize::MAX },
            ));
            bufs.out.clear();
            bufs.out_pos = 0;
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
