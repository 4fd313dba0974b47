//! Criterion benches of the publish side at 32, 2,000 and 20,000 slots (issue 12):
//!
//! - `publish_tick/<n>_slots`: one publish tick after a tick's worth of new events (1,250
//!   events: 5k events/s at 4 publishes a second), as the monitor's publisher thread does it:
//!   `Engine::publish` and the hub's publish (the screen frame encoded once). Only the tick is
//!   timed, not the events' apply.
//! - `applier_batch/<n>_slots/{alone,publisher_10hz}`: an applier's batch of 1,250 events, with
//!   no publisher, with the live publisher publishing ten times a second on the same engine
//!   (`Engine::publish_live`: the applier hands deltas over, no lock), and with a publisher
//!   that takes each shard's lock instead (`Engine::publish`). Criterion reports the means;
//!   the tails (p99, p99.9, max, from an HDR histogram) are printed after each.
//!
//! Run: `cargo bench -p warroom-benches --bench publish`; results in BENCHMARKS.md §12.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use warroom_api::hub::Hub;
use warroom_engine::intern::NameCache;
use warroom_engine::{Config, Engine, Prepared};
use warroom_ingest::gen::{write_flat, GenConfig};
use warroom_ingest::pipeline::split_lines;
use warroom_model::Limits;

const START: i64 = 1_794_312_000_000;
/// Events in one tick: 5k events/s, published every 250 ms.
const TICK: usize = 1_250;
/// Ticks generated ahead (fewer are valid: the generator's junk lines and duplicates); the
/// engine is rebuilt (untimed) when they run out.
const TICKS: usize = 400;
/// Events before the first tick, spread over an hour so that the windows hold a night's state.
const PRELOAD: u64 = 200_000;

/// A night's input at one slot count: the preload and the ticks, as lines.
struct Night {
    slots_per_venue: usize,
    preload: Vec<u8>,
    ticks: Vec<u8>,
}

impl Night {
    fn new(slots_per_venue: usize) -> Night {
        let cfg = |prefix: &str| GenConfig {
            slots_per_venue,
            users: 200_000,
            id_prefix: prefix.into(),
            ..GenConfig::default()
        };
        let mut preload = Vec::new();
        write_flat(cfg("p"), PRELOAD, START, 3_600_000, &mut preload).unwrap();
        let mut ticks = Vec::new();
        let n = (TICK * TICKS) as u64;
        // 5k events/s of event time, right after the preload.
        write_flat(cfg("t"), n, START + 3_600_000, n as i64 / 5, &mut ticks).unwrap();
        Night { slots_per_venue, preload, ticks }
    }

    /// A fresh engine holding the preload, and the ticks' events prepared against its names.
    fn engine(&self) -> (Arc<Engine>, Vec<Prepared>) {
        let engine = Engine::new(Config::default());
        let mut cache = NameCache::default();
        let mut prepare = |buf: &[u8], first: u64| -> Vec<Prepared> {
            split_lines(buf)
                .enumerate()
                .filter_map(|(i, l)| engine.decode_prepare(l, first + i as u64, &Limits::default(), &mut cache).ok())
                .collect()
        };
        let pre = prepare(&self.preload, 0);
        let ticks = prepare(&self.ticks, PRELOAD);
        engine.apply(&pre);
        (Arc::new(engine), ticks)
    }

    fn name(&self) -> String {
        format!("{}_slots", self.slots_per_venue * GenConfig::default().venues.len())
    }
}

/// Routes a tick's events to their shards, as the pipeline does while decoding.
fn routed(engine: &Engine, evs: &[Prepared]) -> Vec<Vec<Prepared>> {
    let mut by = vec![Vec::new(); engine.shard_count()];
    for e in evs {
        by[engine.shard_of(e)].push(*e);
    }
    by
}

fn publish_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_tick");
    for spv in [8, 500, 5_000] {
        let night = Night::new(spv);
        let (mut engine, mut evs) = night.engine();
        let mut hub = Hub::new();
        let mut next = 0;
        g.bench_function(BenchmarkId::from_parameter(night.name()), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if (next + 1) * TICK > evs.len() {
                        (engine, evs) = night.engine();
                        hub = Hub::new();
                        next = 0;
                    }
                    engine.apply(&evs[next * TICK..(next + 1) * TICK]);
                    next += 1;
                    let t = Instant::now();
                    let (snap, changes) = engine.publish();
                    hub.publish(snap, changes);
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publisher {
    None,
    Live,
    Locking,
}

fn applier_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("applier_batch");
    for spv in [500, 5_000] {
        let night = Night::new(spv);
        // No publisher; the live publisher (lock-free: the applier answers with deltas); a
        // publisher that takes each shard's lock to read it (Engine::publish, as before).
        for kind in [Publisher::None, Publisher::Live, Publisher::Locking] {
            let with_publisher = kind != Publisher::None;
            let (mut engine, mut evs) = night.engine();
            let mut next = 0;
            let stop = Arc::new(AtomicBool::new(false));
            let shared = Arc::new(std::sync::Mutex::new(engine.clone()));
            let publisher = with_publisher.then(|| {
                let (stop, shared) = (stop.clone(), shared.clone());
                std::thread::spawn(move || {
                    let hub = Hub::new();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        let e = shared.lock().unwrap().clone();
                        let (snap, changes) = if kind == Publisher::Live {
                            e.publish_live(Duration::from_millis(50))
                        } else {
                            e.publish()
                        };
                        hub.publish(snap, changes);
                    }
                })
            });
            let label = match kind {
                Publisher::None => "alone",
                Publisher::Live => "publisher_10hz",
                Publisher::Locking => "locking_publisher_10hz",
            };
            // Criterion reports means; a publisher that held an applier up shows in the tail.
            let mut tail = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            g.bench_function(BenchmarkId::new(night.name(), label), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        if (next + 1) * TICK > evs.len() {
                            (engine, evs) = night.engine();
                            *shared.lock().unwrap() = engine.clone();
                            next = 0;
                        }
                        let by = routed(&engine, &evs[next * TICK..(next + 1) * TICK]);
                        next += 1;
                        let mut refused = Vec::new();
                        let t = Instant::now();
                        for (s, batch) in by.iter().enumerate() {
                            engine.apply_routed(s, batch, 0, &mut refused);
                        }
                        let took = t.elapsed();
                        tail.saturating_record(took.as_nanos() as u64);
                        spent += took;
                    }
                    spent
                })
            });
            let us = |q: f64| tail.value_at_quantile(q) as f64 / 1e3;
            println!(
                "applier_batch/{}/{label}: batches {}, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
                night.name(),
                tail.len(),
                us(0.5),
                us(0.99),
                us(0.999),
                tail.max() as f64 / 1e3
            );
            stop.store(true, Ordering::Relaxed);
            if let Some(p) = publisher {
                p.join().unwrap();
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = publish_tick, applier_batch
}
criterion_main!(benches);
