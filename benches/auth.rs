//! Stage 3: verifying a token (HMAC-SHA256, constant-time compare).
#![allow(missing_docs)] // criterion_group! generates an undocumented fn
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill::auth::Signer;

fn bench(c: &mut Criterion) {
    let signer = Signer::new(b"bench-secret-of-a-realistic-length-0123456789");
    let header = format!("Bearer {}", signer.mint("u123456", 4_102_444_800));
    let bad = header.replace("u123456", "u654321");
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_ok", |b| {
        b.iter(|| black_box(signer.verify(black_box(header.as_bytes()), 1_800_000_000)).is_ok())
    });
    g.bench_function("verify_bad_signature", |b| {
        b.iter(|| black_box(signer.verify(black_box(bad.as_bytes()), 1_800_000_000)).is_err())
    });
    g.bench_function("mint", |b| {
        b.iter(|| black_box(signer.mint(black_box("u123456"), 4_102_444_800)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
