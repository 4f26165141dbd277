//! Stage 2: parsing a realistic cart-add and a keep-alive read.
#![allow(missing_docs)] // criterion_group! generates an undocumented fn
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill::http::parse::{parse, Limits};

const CART_ADD: &[u8] = b"PUT /shop/cart/add HTTP/1.1\r\nHost: seckill.example\r\nUser-Agent: wrk\r\nAccept: */*\r\nAuthorization: Bearer u12345.1800000000.0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\r\nContent-Type: application/json\r\nContent-Length: 34\r\n\r\n{\"event_id\":\"e1\",\"goods_id\":\"g1\"}";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: seckill.example\r\n\r\n";
const LIMITS: Limits = Limits {
    max_header_bytes: 8192,
    max_body_bytes: 4096,
};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, input) in [("cart_add", CART_ADD), ("healthz", HEALTHZ)] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(parse(black_box(input), &LIMITS)).is_ok())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
