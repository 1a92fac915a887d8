//! Throughput of the erasure codec and of shard hashing, next to memcpy measured in the
//! same run as the reference (this machine is shared; compare ratios, not absolutes).
//!
//! Run: `cargo bench -p lauscha-benches --bench codec`. Criterion prints GiB/s per case.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lauscha_benches::pseudo_random_bytes;
use lauscha_core::{ErasureCodec, ShardDigest};

const SHARD_BYTES: usize = 1 << 20;

fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("reference");
    let src = pseudo_random_bytes(1, 4 * SHARD_BYTES);
    let mut dst = vec![0u8; src.len()];
    group.throughput(Throughput::Bytes(src.len() as u64));
    group.bench_function("memcpy_4MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (k, m) in [(4usize, 2usize), (8, 3)] {
        let codec = ErasureCodec::new(k, m).unwrap();
        let data: Vec<Vec<u8>> = (0..k)
            .map(|i| pseudo_random_bytes(i as u64 + 10, SHARD_BYTES))
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        // Throughput counts the data bytes encoded, as a PUT sees it.
        group.throughput(Throughput::Bytes((k * SHARD_BYTES) as u64));
        group.bench_with_input(
            BenchmarkId::new("rs", format!("{k}+{m}")),
            &refs,
            |b, refs| b.iter(|| black_box(codec.encode_parity(black_box(refs)).unwrap())),
        );
    }
    group.finish();
}

fn reconstruct(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconstruct");
    for (k, m) in [(4usize, 2usize), (8, 3)] {
        let codec = ErasureCodec::new(k, m).unwrap();
        let stripe = pseudo_random_bytes(3, k * SHARD_BYTES);
        let shards = codec.encode_stripe(&stripe);
        group.throughput(Throughput::Bytes((k * SHARD_BYTES) as u64));
        // The worst case a read meets: m data shards lost.
        group.bench_function(
            BenchmarkId::new("rs_lose_m_data", format!("{k}+{m}")),
            |b| {
                b.iter_batched(
                    || {
                        let mut partial: Vec<Option<Vec<u8>>> =
                            shards.iter().cloned().map(Some).collect();
                        for lost in partial.iter_mut().take(m) {
                            *lost = None;
                        }
                        partial
                    },
                    |mut partial| {
                        codec.reconstruct(&mut partial, false).unwrap();
                        black_box(partial)
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    let shard = pseudo_random_bytes(5, SHARD_BYTES);
    group.throughput(Throughput::Bytes(SHARD_BYTES as u64));
    group.bench_function("blake3_1MiB", |b| {
        b.iter(|| black_box(blake3::hash(black_box(&shard))))
    });
    group.bench_function("shard_digest_1MiB", |b| {
        b.iter(|| black_box(ShardDigest::of(black_box(&shard))))
    });
    group.finish();
}

criterion_group!(benches, memcpy, encode, reconstruct, hashing);
criterion_main!(benches);
