//! Criterion benches of the hot path: decode (against the decode floor), engine apply,
//! snapshot publishing, and a whole 4 MiB chunk through the parallel pipeline.
//!
//! Run: `cargo bench -p warroom-benches`. Numbers and the ratios that matter are in
//! BENCHMARKS.md; the whole-file replay-vs-floor bar is measured by `scripts/bench-replay.sh`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use warroom_engine::intern::NameCache;
use warroom_engine::{Config, Engine, Prepared};
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::pipeline::split_lines;
use warroom_ingest::ChunkProcessor;
use warroom_model::Limits;

const START: i64 = 1_794_312_000_000;

/// One parameter set of the input.
struct Input {
    name: &'static str,
    lines: u64,
    slots_per_venue: usize,
}

fn generate(p: &Input) -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = GenConfig { slots_per_venue: p.slots_per_venue, users: 100_000, ..GenConfig::default() };
    write_night(cfg, p.lines, START, 3_600_000, &mut buf).unwrap();
    buf
}

fn prepared(engine: &Engine, buf: &[u8]) -> Vec<Prepared> {
    let mut cache = NameCache::default();
    split_lines(buf)
        .enumerate()
        .filter_map(|(i, l)| engine.decode_prepare(l, i as u64, &Limits::default(), &mut cache).ok())
        .collect()
}

fn decode(c: &mut Criterion) {
    let input = generate(&Input { name: "night", lines: 20_000, slots_per_venue: 8 });
    let lines: Vec<&[u8]> = split_lines(&input).collect();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("warroom_decode", |b| {
        b.iter(|| {
            let mut ok = 0u64;
            for l in &lines {
                ok += warroom_model::decode(l, &Limits::default()).is_ok() as u64;
            }
            ok
        })
    });
    g.bench_function("floor_serde_derive", |b| {
        b.iter(|| {
            let mut r = warroom_benches::FloorResult::default();
            for l in &lines {
                warroom_benches::floor_line(l, &mut r);
            }
            r
        })
    });
    let engine = Engine::new(Config::default());
    g.bench_function("warroom_decode_prepare", |b| {
        let mut cache = NameCache::default();
        b.iter(|| {
            let mut ok = 0u64;
            for (i, l) in lines.iter().enumerate() {
                ok += engine.decode_prepare(l, i as u64, &Limits::default(), &mut cache).is_ok() as u64;
            }
            ok
        })
    });
    g.finish();
}

fn engine_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_apply");
    for p in [
        Input { name: "32_slots", lines: 50_000, slots_per_venue: 8 },
        Input { name: "2000_slots", lines: 50_000, slots_per_venue: 500 },
        Input { name: "20000_slots", lines: 50_000, slots_per_venue: 5_000 },
    ] {
        let input = generate(&p);
        let template = Engine::new(Config::default());
        let evs = prepared(&template, &input);
        g.throughput(Throughput::Elements(evs.len() as u64));
        g.bench_with_input(BenchmarkId::new("one_thread", p.name), &evs, |b, evs| {
            b.iter_batched(
                || {
                    let e = Engine::new(Config::default());
                    // Same names in the same order: indices match the template's.
                    let _ = prepared(&e, &input);
                    e
                },
                |e| {
                    e.apply(evs);
                    e
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_publish");
    for p in [
        Input { name: "32_slots", lines: 100_000, slots_per_venue: 8 },
        Input { name: "2000_slots", lines: 100_000, slots_per_venue: 500 },
        Input { name: "20000_slots", lines: 100_000, slots_per_venue: 5_000 },
    ] {
        let input = generate(&p);
        let engine = Engine::new(Config::default());
        let evs = prepared(&engine, &input);
        engine.apply(&evs);
        let (s, _) = engine.publish();
        g.throughput(Throughput::Elements(s.slots.len() as u64));
        g.bench_function(BenchmarkId::new("publish", p.name), |b| b.iter(|| engine.publish()));
        g.bench_function(BenchmarkId::new("read", p.name), |b| b.iter(|| engine.snapshot()));
    }
    g.finish();
}

fn checkpoint(c: &mut Criterion) {
    let input = generate(&Input { name: "night", lines: 200_000, slots_per_venue: 8 });
    let engine = Engine::new(Config::default());
    engine.apply(&prepared(&engine, &input));
    let bytes = engine.checkpoint(b"");
    eprintln!("checkpoint of 200k events: {} bytes", bytes.len());
    let mut g = c.benchmark_group("checkpoint");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode_200k_events", |b| b.iter(|| engine.checkpoint(b"")));
    g.bench_function("restore_200k_events", |b| {
        b.iter(|| Engine::restore(Config::default(), &bytes, "bench".as_ref()).expect("restores"))
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let input = generate(&Input { name: "chunk", lines: 24_000, slots_per_venue: 8 });
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(24_000));
    g.bench_function("chunk_4MiB_decode_and_apply", |b| {
        b.iter_batched(
            || ChunkProcessor::new(Arc::new(Engine::new(Config::default())), Limits::default()),
            |mut p| {
                p.process(&input, 1);
                p
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = decode, engine_apply, snapshot, checkpoint, pipeline
}
criterion_main!(benches);
