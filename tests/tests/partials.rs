//! Partials: the state of input partitions, each held by its own engine (as ingest workers
//! hold them), published as partials, carried as bytes and merged by a reader (an API node)
//! give the reference's numbers: money and counts exact, distinct counts within 2%. Buyers
//! are the hard case: pays are keyed by `order_id`, so one buyer's pays land on several
//! partitions and the partitions' buyer counts must not be added up. Also: a partition that
//! moves to a new owner (checkpoint, restore elsewhere, a new generation) counts once; its
//! former owner's late partials are ignored; a lost partial waits for the next full one.

use std::sync::Arc;

use warroom_engine::partial::{Absorbed, Partial, PartialWriter};
use warroom_engine::{Config, Engine, Snapshot};
use warroom_ingest::ChunkProcessor;
use warroom_model::Limits;
use warroom_tests::{differences, lines, reference, replay_bytes};

const WINDOWS: [i64; 3] = [60_000, 300_000, 3_600_000];
const PARTITIONS: usize = 12;

fn night(seed: u64, events: u64) -> Vec<u8> {
    warroom_tests::noisy_night(seed, events)
}

/// The partition a contract v1.1 producer sends a line to: `order`, `pay` and `refund` keyed by
/// `order_id`, everything else by `user_id`; a line without its key spreads by its bytes.
fn partition_of(line: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    let field = match v["type"].as_str() {
        Some("order" | "pay" | "refund") => "order_id",
        _ => "user_id",
    };
    let key = v[field].as_str().map_or(line.to_vec(), |s| s.as_bytes().to_vec());
    (xxhash_rust::xxh3::xxh3_64(&key) % PARTITIONS as u64) as usize
}

/// One ingest worker's partition: its engine (one shard, as the partition is applied in
/// order by one thread), the partial writer and where it stands in the partition.
struct Owner {
    engine: Arc<Engine>,
    writer: PartialWriter,
    next: usize,
}

fn cfg() -> Config {
    let mut c = Config::default();
    c.engine.shards = 1;
    c
}

fn feed(o: &mut Owner, part: &[&[u8]], upto: usize) {
    let upto = upto.min(part.len());
    if upto <= o.next {
        return;
    }
    let mut chunk = Vec::new();
    for l in &part[o.next..upto] {
        chunk.extend_from_slice(l);
        chunk.push(b'\n');
    }
    // Line numbers are the partition's offsets: all a worker knows of the input's order.
    ChunkProcessor::new(o.engine.clone(), Limits::default()).process(&chunk, o.next as u64 + 1);
    o.next = upto;
}

/// A partial through the wire format.
fn wire(p: Partial) -> Partial {
    Partial::decode(&p.encode()).expect("a partial decodes")
}

fn publish(o: &mut Owner, as_of: i64, full: bool) -> Partial {
    // Workers bring their windows to a common clock (the newest event time seen), as one
    // engine's shards are brought to its watermark before a publish.
    o.engine.observe_watermark(as_of);
    wire(o.engine.partial(&mut o.writer, o.next as i64, full))
}

/// The lines by partition, and an owner (generation 1) for each partition.
fn split<'a>(all: &[&'a [u8]]) -> (Vec<Vec<&'a [u8]>>, Vec<Owner>) {
    let mut parts: Vec<Vec<&[u8]>> = vec![Vec::new(); PARTITIONS];
    for l in all {
        parts[partition_of(l)].push(l);
    }
    let owners = (0..PARTITIONS)
        .map(|p| Owner {
            engine: Arc::new(Engine::new(cfg())),
            writer: PartialWriter::new(format!("events/{p}"), 1),
            next: 0,
        })
        .collect();
    (parts, owners)
}

fn newest(o: &[Owner]) -> i64 {
    o.iter().map(|o| o.engine.watermark()).max().unwrap_or(i64::MIN)
}

#[test]
fn twelve_partitions_merged_from_partials_match_the_reference_through_a_move_and_a_lost_partial() {
    let buf = night(11, 120_000);
    let all = lines(&buf);
    let (parts, mut owners) = split(&all);
    let reader = Engine::new(Config::default());
    let rounds = 8;
    let mut bytes = 0usize;
    let mut partials = 0usize;
    for r in 1..=rounds {
        for (p, o) in owners.iter_mut().enumerate() {
            feed(o, &parts[p], parts[p].len() * r / rounds);
        }
        let as_of = newest(&owners);
        for (p, o) in owners.iter_mut().enumerate() {
            let part = publish(o, as_of, false);
            bytes += part.encode().len();
            partials += 1;
            if r == 3 && p == 5 {
                continue; // lost on the way: the next ones wait for a full partial
            }
            let got = reader.absorb(&part).expect("a partial of the same configuration");
            let want = if r == 4 && p == 5 { Absorbed::Gap } else { Absorbed::Applied };
            assert_eq!(got, want, "round {r}, partition {p}");
        }
        if r == 4 {
            // Partition 5's owner sends a full partial (as it does every few seconds).
            let full = publish(&mut owners[5], as_of, true);
            assert!(full.is_full());
            assert_eq!(reader.absorb(&full).unwrap(), Absorbed::Applied);
            // Partition 3 moves: its owner stops here; the new owner restores its checkpoint
            // (on another machine: nothing but the bytes) under generation 2.
            let bytes = owners[3].engine.checkpoint(&(owners[3].next as u64).to_le_bytes());
            let (engine, extra) = Engine::restore(cfg(), &bytes, std::path::Path::new("p3")).unwrap();
            let next = u64::from_le_bytes(extra.try_into().unwrap()) as usize;
            let mut old = std::mem::replace(
                &mut owners[3],
                Owner { engine: Arc::new(engine), writer: PartialWriter::new("events/3", 2), next },
            );
            let first = publish(&mut owners[3], as_of, false);
            assert!(first.is_full(), "a new owner's first partial is full");
            assert_eq!(reader.absorb(&first).unwrap(), Absorbed::Applied);
            // The former owner, not yet told, applies a few more of its events and publishes:
            // ignored, so nothing it applies after the move counts twice.
            let upto = old.next + 50;
            feed(&mut old, &parts[3], upto);
            assert_eq!(reader.absorb(&publish(&mut old, as_of, false)).unwrap(), Absorbed::Stale);
        }
        reader.publish_parts();
    }
    let (snap, _) = reader.publish_parts();
    let want = reference(&all, &WINDOWS, 300_000);
    let d = differences(&snap, &want);
    assert!(d.is_empty(), "merged partials differ from the reference:\n{}", d.join("\n"));
    assert!(snap.counters.resent_pays > 0 && snap.totals.duplicates > 0 && snap.totals.rejected > 0);

    // Buyers are not partition-disjoint here: adding the partitions' own counts would be wrong.
    let added: u64 = owners
        .iter()
        .map(|o| {
            o.engine.publish();
            o.engine.snapshot().totals.buyers
        })
        .sum();
    assert!(
        added > want.totals.buyers * 102 / 100,
        "the data must make buyers overlap across partitions (added {added}, distinct {})",
        want.totals.buyers
    );
    // And one process reading the whole stream agrees.
    let (single, _) = replay_bytes(&buf, Config::default());
    assert!(differences(&snap, &single).is_empty());
    assert_eq!(snap.rejections, single.rejections);
    eprintln!(
        "{partials} partials, {bytes} bytes for {} lines: {:.1} bytes a line",
        all.len(),
        bytes as f64 / all.len() as f64
    );
}

#[test]
fn a_reader_that_starts_late_catches_up_from_full_partials_alone() {
    let buf = night(12, 30_000);
    let all = lines(&buf);
    let (parts, mut owners) = split(&all);
    for (p, o) in owners.iter_mut().enumerate() {
        feed(o, &parts[p], parts[p].len() / 2);
        publish(o, i64::MIN, false); // to a reader that is not there
    }
    for (p, o) in owners.iter_mut().enumerate() {
        feed(o, &parts[p], parts[p].len());
    }
    let as_of = newest(&owners);
    let reader = Engine::new(Config::default());
    for o in owners.iter_mut() {
        // A delta alone is no use to a new reader ...
        assert_eq!(reader.absorb(&publish(o, as_of, false)).unwrap(), Absorbed::Gap);
    }
    for o in owners.iter_mut() {
        // ... a full partial is all it needs.
        assert_eq!(reader.absorb(&publish(o, as_of, true)).unwrap(), Absorbed::Applied);
    }
    let (snap, _): (Arc<Snapshot>, _) = reader.publish_parts();
    let want = reference(&all, &WINDOWS, 300_000);
    let d = differences(&snap, &want);
    assert!(d.is_empty(), "{}", d.join("\n"));
}

#[test]
fn a_buyer_paying_one_slot_through_two_partitions_counts_once_in_its_race() {
    // Two orders of one user on one slot: keyed by order_id, they land on two partitions.
    let ts = 1_794_312_000_000i64;
    let pay = |id: &str, order: &str, t: i64| {
        format!(
            r#"{{"event_id":"{id}","type":"pay","ts":{t},"user_id":"u1","order_id":"{order}","amount_cents":1000,"venue":"main","slot":"main-001","merchant_id":"m-1"}}"#
        )
    };
    let lines = [pay("e1", "o1", ts), pay("e2", "o2", ts + 1000)];
    let reader = Engine::new(Config::default());
    for (p, l) in lines.iter().enumerate() {
        let mut o = Owner {
            engine: Arc::new(Engine::new(cfg())),
            writer: PartialWriter::new(format!("events/{p}"), 1),
            next: 0,
        };
        feed(&mut o, &[l.as_bytes()], 1);
        assert_eq!(reader.absorb(&publish(&mut o, ts + 1000, false)).unwrap(), Absorbed::Applied);
    }
    let (snap, _) = reader.publish_parts();
    let race = &snap.venues[0].race.ranking[0];
    assert_eq!((race.slot.as_str(), race.paid_orders, race.buyers), ("main-001", 2, 1));
    assert_eq!(snap.totals.buyers, 1);
    let all: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let d = differences(&snap, &reference(&all, &WINDOWS, 300_000));
    assert!(d.is_empty(), "{}", d.join("\n"));
}

#[test]
fn a_pay_sent_again_after_its_partition_moved_counts_once() {
    // Order o1 is paid on its partition; the partition moves (checkpoint, restore on the new
    // owner, a new generation); the producer sends the pay again (a new event id, as a retry
    // after a timeout does). De-duplication moved with the partition: it counts once.
    let ts = 1_794_312_000_000i64;
    let pay = |id: &str, t: i64| {
        format!(
            r#"{{"event_id":"{id}","type":"pay","ts":{t},"user_id":"u1","order_id":"o1","amount_cents":1000,"venue":"main","slot":"main-001","merchant_id":"m-1"}}"#
        )
    };
    let (first, again) = (pay("e1", ts), pay("e2", ts + 5_000));
    let reader = Engine::new(Config::default());
    let mut old = Owner { engine: Arc::new(Engine::new(cfg())), writer: PartialWriter::new("events/0", 1), next: 0 };
    feed(&mut old, &[first.as_bytes()], 1);
    assert_eq!(reader.absorb(&publish(&mut old, ts, false)).unwrap(), Absorbed::Applied);
    let bytes = old.engine.checkpoint(&1u64.to_le_bytes());
    let (engine, _) = Engine::restore(cfg(), &bytes, std::path::Path::new("p0")).unwrap();
    let mut new = Owner { engine: Arc::new(engine), writer: PartialWriter::new("events/0", 2), next: 1 };
    feed(&mut new, &[first.as_bytes(), again.as_bytes()], 2);
    assert_eq!(reader.absorb(&publish(&mut new, ts + 5_000, false)).unwrap(), Absorbed::Applied);
    let (snap, _) = reader.publish_parts();
    assert_eq!((snap.totals.gmv_cents, snap.totals.paid_orders), (1000, 1), "paid once");
    assert_eq!(snap.counters.resent_pays, 1, "the pay sent again is counted as such");
}
