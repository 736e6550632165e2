//! Mint and verify cost (criterion). `cargo bench -p screengate-token`.
//! Target: each under 1 µs median on the project machine (docs/performance.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use screengate_token::{Authority, Channel, DeviceKey, MonotonicClock};

fn bench(c: &mut Criterion) {
    let key = DeviceKey::from_bytes([42; 32]);
    let a = Authority::new(&key, Duration::from_secs(30), MonotonicClock::new())
        .unwrap_or_else(|e| unreachable!("{e}"));
    c.bench_function("mint", |b| {
        b.iter(|| black_box(a.mint(black_box(Channel::Display))))
    });
    let Ok(t) = a.mint(Channel::Display) else {
        return;
    };
    let t = t.token;
    c.bench_function("verify", |b| {
        b.iter(|| black_box(a.verify(black_box(t.expose_secret()), Channel::Display)))
    });
    c.bench_function("verify_reject_bad_mac", |b| {
        let mut bad = t.expose_secret().to_owned();
        bad.replace_range(80..81, if &bad[80..81] == "A" { "B" } else { "A" });
        b.iter(|| black_box(a.verify(black_box(&bad), Channel::Display)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
