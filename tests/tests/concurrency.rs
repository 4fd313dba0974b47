//! Several writer threads hammer one engine while another thread publishes and reads
//! snapshots. Readers must see consistent, monotone totals while writers run, and the end
//! state must equal a single-threaded run of the same events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use warroom_engine::{Config, Engine, Prepared};
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_model::Limits;
use warroom_tests::{distinct_close, lines};

fn prepared(engine: &Engine, input: &[u8]) -> Vec<Prepared> {
    let mut cache = warroom_engine::intern::NameCache::default();
    lines(input)
        .iter()
        .enumerate()
        .filter_map(|(i, l)| engine.decode_prepare(l, i as u64 + 1, &Limits::default(), &mut cache).ok())
        .collect()
}

/// A generated night of 120,000 events, and the snapshot of one thread applying it all.
fn night_and_one_thread_snapshot(cfg: GenConfig) -> (Vec<u8>, Arc<warroom_engine::Snapshot>) {
    let mut input = Vec::new();
    write_night(cfg, 120_000, 1_794_312_000_000, 3_600_000, &mut input).unwrap();
    let sequential = Engine::new(Config::default());
    sequential.apply(&prepared(&sequential, &input));
    let (want, _) = sequential.publish();
    (input, want)
}

#[test]
fn writers_and_readers_at_once() {
    // No re-sent payments: which delivery of an order counts would then depend on thread
    // timing (its amount would not, its event time could).
    let cfg = GenConfig { seed: 3, resend_share: 0.0, duplicate_share: 0.03, late_share: 0.02, ..GenConfig::default() };
    let (input, want) = night_and_one_thread_snapshot(cfg);

    let engine = Arc::new(Engine::new(Config::default()));
    let evs = Arc::new(prepared(&engine, &input));
    let writers = 4;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (engine, done) = (engine.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = (0u128, 0u64, 0u64);
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (snap, _) = engine.publish();
                let t = &snap.totals;
                let now = (t.gmv_cents, t.accepted, t.duplicates);
                assert!(
                    now.0 >= last.0 && now.1 >= last.1 && now.2 >= last.2,
                    "totals went backwards: {last:?} -> {now:?}"
                );
                let slot_gmv: u128 = snap.slots.iter().map(|s| s.gmv_cents).sum();
                assert!(slot_gmv <= t.gmv_cents, "slots hold more GMV than the total");
                for w in &snap.windows {
                    assert!(w.gmv_cents <= t.gmv_cents, "window {} holds more than the total", w.length_ms);
                }
                last = now;
                reads += 1;
                // The wait-free read path, between publishes.
                let _ = engine.snapshot();
            }
            reads
        })
    };
    // Each writer takes every n-th batch of 500: batches of one user interleave across threads.
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (engine, evs) = (engine.clone(), evs.clone());
            std::thread::spawn(move || {
                for (k, batch) in evs.chunks(500).enumerate() {
                    if k % writers == w {
                        engine.apply(batch);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer panicked");
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader panicked");
    assert!(reads > 1, "the reader should have published while writers ran");
    let (got, _) = engine.publish();

    let (g, w) = (&got.totals, &want.totals);
    assert_eq!(
        (g.gmv_cents, g.paid_orders, g.accepted, g.duplicates),
        (w.gmv_cents, w.paid_orders, w.accepted, w.duplicates)
    );
    assert_eq!(
        (g.impressions, g.clicks, g.refund_cents, g.order_cents),
        (w.impressions, w.clicks, w.refund_cents, w.order_cents)
    );
    assert_eq!(got.as_of_ms, want.as_of_ms);
    assert_eq!(got.slots, want.slots, "slot totals and newest merchants");
    for (a, b) in got.windows.iter().zip(&want.windows) {
        assert_eq!((a.length_ms, a.gmv_cents, a.paid_orders), (b.length_ms, b.gmv_cents, b.paid_orders));
        assert!(distinct_close(a.uv, b.uv) && distinct_close(a.buyers, b.buyers), "{a:?} vs {b:?}");
    }
    for (a, b) in got.venues.iter().zip(&want.venues) {
        let key = |v: &warroom_engine::snapshot::VenueStats| {
            v.race
                .ranking
                .iter()
                .map(|r| (r.slot.clone(), r.gmv_cents, r.impressions, r.clicks, r.buyers))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(a), key(b), "race of {}", b.venue);
    }
}

/// The live publisher folds the shards' deltas in as writers run: what it shows at the end
/// (after the writers stop, answering for the idle shards itself) equals one publish of the
/// same events applied by one thread, slot by slot, pair by pair, venue by venue. A delta
/// that dropped a change, or a sum that kept a stale one, shows here.
#[test]
fn the_live_publisher_folds_deltas_into_the_same_snapshot() {
    let cfg = GenConfig { seed: 4, resend_share: 0.0, merchant_change_share: 0.05, ..GenConfig::default() };
    let (input, want) = night_and_one_thread_snapshot(cfg);

    let engine = Arc::new(Engine::new(Config::default()));
    let evs = prepared(&engine, &input);
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (engine, done) = (engine.clone(), done.clone());
        std::thread::spawn(move || {
            let mut publishes = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (snap, _) = engine.publish_live(std::time::Duration::from_millis(50));
                let slot_gmv: u128 = snap.slots.iter().map(|s| s.gmv_cents).sum();
                assert!(slot_gmv <= snap.totals.gmv_cents, "slots hold more GMV than the total");
                publishes += 1;
            }
            publishes
        })
    };
    // One writer, batch by batch, as a source's applier does.
    for batch in evs.chunks(700) {
        engine.apply(batch);
    }
    done.store(true, Ordering::Relaxed);
    let publishes = publisher.join().expect("publisher panicked");
    assert!(publishes > 1, "the publisher should have published while the writer ran");
    // Nothing writes now: the publisher answers for every shard itself.
    let (got, _) = engine.publish_live(std::time::Duration::from_millis(5));
    assert_eq!(got.as_of_ms, want.as_of_ms);
    assert_eq!(got.totals, want.totals);
    assert_eq!(got.slots, want.slots, "slots");
    assert_eq!(got.slot_merchants, want.slot_merchants, "(slot, merchant) pairs");
    assert_eq!(got.channels, want.channels, "channels");
    assert_eq!(got.venues.len(), want.venues.len());
    for (a, b) in got.venues.iter().zip(&want.venues) {
        assert_eq!(
            (&a.venue, a.gmv_cents, a.paid_orders, &a.windows),
            (&b.venue, b.gmv_cents, b.paid_orders, &b.windows)
        );
        let numbers = |v: &warroom_engine::VenueStats| -> Vec<(String, u128, u64, u64, u64)> {
            let mut r: Vec<_> = v
                .race
                .ranking
                .iter()
                .map(|e| (e.slot.clone(), e.gmv_cents, e.paid_orders, e.clicks, e.buyers))
                .collect();
            r.sort();
            r
        };
        assert_eq!(numbers(a), numbers(b), "race numbers of {}", a.venue);
    }
    for (a, b) in got.windows.iter().zip(&want.windows) {
        assert_eq!((a.length_ms, a.gmv_cents, a.paid_orders), (b.length_ms, b.gmv_cents, b.paid_orders));
    }
}
