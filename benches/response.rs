//! Stage 8: encoding the answers the loop gives most.
#![allow(missing_docs)] // criterion_group! generates an undocumented fn
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use seckill::codes::Code;
use seckill::http::response::{write_json, DateCache, Extra};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("response");
    g.throughput(Throughput::Elements(1));
    let date = "Sun, 22 Nov 2026 03:00:00 GMT";
    g.bench_function("no_stock", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(512),
            |out| write_json(out, black_box(Code::NoStock), None, true, date, Extra::None),
            BatchSize::SmallInput,
        )
    });
    let data = r#"{"order_id":"1795318212677-0","stock_left":9999}"#;
    g.bench_function("won", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(512),
            |out| {
                write_json(
                    out,
                    Code::Ok,
                    Some(black_box(data)),
                    false,
                    date,
                    Extra::None,
                )
            },
            BatchSize::SmallInput,
        )
    });
    let mut cache = DateCache::new(0);
    let mut s = 1_800_000_000u64;
    g.bench_function("date_new_second", |b| {
        b.iter(|| {
            s += 1;
            black_box(cache.get(s).len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
