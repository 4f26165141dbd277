//! Stage 4: the memory pre-check, sold out (the reject path) and a lease
//! taken and given back (the path to the queue).
#![allow(missing_docs)] // criterion_group! generates an undocumented fn
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill::stock::{NoLease, Stock};

fn bench(c: &mut Criterion) {
    let stock = Stock::new(1, 1.0);
    let now = std::time::Instant::now();
    stock.learn("e1", "sold", 0, 0, 1, now);
    stock.learn("e1", "open", 1_000_000, 0, 1, now);
    let mut g = c.benchmark_group("stock");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sold_out", |b| {
        b.iter(|| {
            matches!(
                stock.try_take(black_box("e1"), black_box("sold"), black_box("u123456")),
                Err(NoLease::NoStock)
            )
        })
    });
    g.bench_function("lease_and_give_back", |b| {
        b.iter(
            || match stock.try_take("e1", "open", black_box("u123456")) {
                Ok(lease) => drop(black_box(lease)),
                other => panic!("{other:?}"),
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
