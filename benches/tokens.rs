//! Outcome-token cost on the request path: minting happens on every routed
//! response (target well under 2 µs), verifying on every feedback event.

use abgate::outcomes::token::TokenKeys;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn tokens(c: &mut Criterion) {
    let keys =
        TokenKeys::parse("k1:0123456789abcdef0123456789abcdef,k2:fedcba9876543210fedcba9876543210")
            .unwrap();
    c.bench_function("token_mint", |b| {
        b.iter(|| {
            keys.mint(
                black_box("sentiment-analysis"),
                black_box("canary"),
                black_box(42),
                black_box(1_764_300_000_000),
                false,
            )
        })
    });
    let token = keys.mint("sentiment-analysis", "canary", 42, 1_764_300_000_000, false);
    c.bench_function("token_verify", |b| {
        b.iter(|| keys.verify(black_box(&token)).unwrap())
    });
}

criterion_group!(benches, tokens);
criterion_main!(benches);
