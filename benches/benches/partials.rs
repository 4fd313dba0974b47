//! Criterion benches of the scale-out merge (issue 13): what an API node pays for a tick, and
//! what a moved partition costs to restore.
//!
//! - `api_node_tick/<p>_partitions/<n>_slots`: the night's input split over `p` partitions as
//!   contract v1.1 producers split it (traffic by user, pays by order), one engine each (as
//!   workers hold them); per tick every partition applies its share of 1,250 new events
//!   (untimed) and publishes a partial (timed: the writer's side), the partials go through
//!   their bytes, and one API node absorbs them all and publishes (timed). Printed after each:
//!   partial bytes per event of the tick.
//! - `restore/<n>_slots`: restoring one partition's state (of 12) from its checkpoint bytes,
//!   what a worker taking over a moved partition does; its size is printed.
//!
//! Run: `cargo bench -p warroom-benches --bench partials`; results in BENCHMARKS.md §13.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use warroom_engine::intern::NameCache;
use warroom_engine::partial::{Partial, PartialWriter};
use warroom_engine::{Config, Engine, Prepared};
use warroom_ingest::gen::{write_flat, GenConfig};
use warroom_ingest::pipeline::split_lines;
use warroom_model::Limits;

const START: i64 = 1_794_312_000_000;
const TICK: usize = 1_250;
const TICKS: usize = 200;
const PRELOAD: u64 = 200_000;

fn partition_of(line: &[u8], n: usize) -> usize {
    let key = warroom_ingest::produce::partition_key(line).unwrap_or(line);
    (xxhash_rust::xxh3::xxh3_64(key) % n as u64) as usize
}

struct Split {
    engines: Vec<Arc<Engine>>,
    writers: Vec<PartialWriter>,
    /// Per tick, per partition: its events.
    ticks: Vec<Vec<Vec<Prepared>>>,
}

fn cfg() -> Config {
    let mut c = Config::default();
    c.engine.shards = 1;
    c
}

fn split(slots_per_venue: usize, partitions: usize) -> Split {
    let gen =
        |prefix: &str| GenConfig { slots_per_venue, users: 200_000, id_prefix: prefix.into(), ..GenConfig::default() };
    let mut preload = Vec::new();
    write_flat(gen("p"), PRELOAD, START, 3_600_000, &mut preload).unwrap();
    let mut later = Vec::new();
    let n = (TICK * TICKS) as u64;
    write_flat(gen("t"), n, START + 3_600_000, n as i64 / 5, &mut later).unwrap();
    let engines: Vec<Arc<Engine>> = (0..partitions).map(|_| Arc::new(Engine::new(cfg()))).collect();
    let mut caches: Vec<NameCache> = (0..partitions).map(|_| NameCache::default()).collect();
    let mut prep = |l: &[u8], seq: u64| -> Option<(usize, Prepared)> {
        let p = partition_of(l, partitions);
        engines[p].decode_prepare(l, seq, &Limits::default(), &mut caches[p]).ok().map(|e| (p, e))
    };
    let mut pre: Vec<Vec<Prepared>> = vec![Vec::new(); partitions];
    for (i, l) in split_lines(&preload).enumerate() {
        if let Some((p, e)) = prep(l, i as u64) {
            pre[p].push(e);
        }
    }
    let lines: Vec<&[u8]> = split_lines(&later).collect();
    let ticks = lines
        .chunks(TICK)
        .enumerate()
        .map(|(t, chunk)| {
            let mut per: Vec<Vec<Prepared>> = vec![Vec::new(); partitions];
            for (i, l) in chunk.iter().enumerate() {
                if let Some((p, e)) = prep(l, PRELOAD + (t * TICK + i) as u64) {
                    per[p].push(e);
                }
            }
            per
        })
        .collect();
    for (e, evs) in engines.iter().zip(&pre) {
        e.apply(evs);
    }
    let writers = (0..partitions).map(|p| PartialWriter::new(format!("events/{p}"), 1)).collect();
    Split { engines, writers, ticks }
}

fn api_node_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("api_node_tick");
    g.sample_size(20);
    for slots_per_venue in [8usize, 500, 5_000] {
        for partitions in [4usize, 12, 48] {
            let slots = slots_per_venue * GenConfig::default().venues.len();
            let id = BenchmarkId::new(format!("{partitions}_partitions"), format!("{slots}_slots"));
            let mut s = split(slots_per_venue, partitions);
            let reader = Engine::new(Config::default());
            // The reader starts from full partials, as a started API node does.
            for (e, w) in s.engines.iter().zip(s.writers.iter_mut()) {
                reader.absorb(&Partial::decode(&e.partial(w, 0, true).encode()).unwrap()).unwrap();
            }
            reader.publish_parts();
            let mut t = 0usize;
            let (mut bytes, mut events, mut write_ns) = (0u64, 0u64, 0u128);
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut spent = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        let tick = &s.ticks[t % s.ticks.len()];
                        t += 1;
                        let mut wire = Vec::with_capacity(partitions);
                        for ((e, w), evs) in s.engines.iter().zip(s.writers.iter_mut()).zip(tick) {
                            e.apply(evs);
                            events += evs.len() as u64;
                            let started = std::time::Instant::now();
                            let bytes_out = e.partial(w, 0, false).encode();
                            write_ns += started.elapsed().as_nanos();
                            bytes += bytes_out.len() as u64;
                            wire.push(bytes_out);
                        }
                        let started = std::time::Instant::now();
                        for b in &wire {
                            reader.absorb(&Partial::decode(b).unwrap()).unwrap();
                        }
                        reader.publish_parts();
                        spent += started.elapsed();
                    }
                    spent
                })
            });
            println!(
                "    {partitions} partitions, {slots} slots: partials {:.1} bytes/event; writers {:.0} µs per tick (all partitions)",
                bytes as f64 / events.max(1) as f64,
                write_ns as f64 / 1e3 / (t.max(1) as f64)
            );
        }
    }
    g.finish();
}

fn restore(c: &mut Criterion) {
    let mut g = c.benchmark_group("restore");
    g.sample_size(20);
    for slots_per_venue in [8usize, 5_000] {
        let s = split(slots_per_venue, 12);
        for evs in &s.ticks[..s.ticks.len() / 2] {
            for (e, part) in s.engines.iter().zip(evs) {
                e.apply(part);
            }
        }
        let bytes = s.engines[0].checkpoint(b"{}");
        let slots = slots_per_venue * GenConfig::default().venues.len();
        println!("    one partition of 12 at {slots} slots: checkpoint {} bytes", bytes.len());
        g.bench_function(format!("{slots}_slots"), |b| {
            b.iter(|| Engine::restore(cfg(), &bytes, std::path::Path::new("bench")).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = api_node_tick, restore
}
criterion_main!(benches);
