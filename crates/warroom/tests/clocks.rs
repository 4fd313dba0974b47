//! Producers' clocks against the real binary and the real broker: the future bound follows
//! the wall clock however long the monitor has been up, and a producer with a wrong clock
//! (hours ahead or behind, one event or all of its events, even a partition's first event)
//! costs only its own events: refused with a reason, counted, dead-lettered, while everybody
//! else's data is counted and sits in the right windows.
//! Needs the broker that scripts/test.sh starts (WARROOM_KAFKA_BROKERS).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use warroom_tests::kafka::{create_topic, produce_now, read_dead_letters, start_monitor, unique, wait_for_read};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");
const HOUR: i64 = 3_600_000;

fn now_ms() -> i64 {
    warroom_ingest::now_ms()
}

/// Short group timeouts (the shipped session timeout makes joins slow on Tansu) and the
/// reference's race ranking; `extra` is added.
fn config(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("warroom.toml"),
        format!(
            "{}{extra}\n[kafka]\ncheckpoint_interval = \"1s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
}

fn snapshot(dir: &Path) -> warroom_engine::Snapshot {
    serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).unwrap()).unwrap()
}

/// An event line of `kind` at `ts` (pays carry an order and an amount).
fn event(id: &str, kind: &str, ts: i64, user: &str, slot: usize) -> String {
    let money = if matches!(kind, "pay" | "order") {
        format!(r#","order_id":"o-{id}","amount_cents":{}"#, 1000 + slot * 7)
    } else {
        String::new()
    };
    format!(
        r#"{{"event_id":"{id}","type":"{kind}","ts":{ts},"user_id":"{user}","venue":"main","slot":"main-{:03}","merchant_id":"m-{}","channel":"search"{money}}}"#,
        slot % 8,
        slot % 3
    )
}

fn waited_until_assigned(dir: &Path, what: &str) {
    // The monitor's first snapshot file appears once it runs; give the group time to join.
    let started = std::time::Instant::now();
    while !dir.join("snapshot.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "{what}: the monitor never wrote a snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_future_bound_follows_the_wall_clock_of_a_monitor_up_longer_than_it() {
    let topic = unique("clock-bound");
    create_topic(&topic, 2);
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), "[limits]\nmax_future = \"3s\"\n");
    let _m = start_monitor(BIN, &topic, dir.path(), &["--group", &unique("g")]);
    waited_until_assigned(dir.path(), "bound");
    // Up for longer than the allowance (a bound frozen at start would now refuse the present).
    std::thread::sleep(Duration::from_secs(6));
    let now = now_ms();
    let mut lines: Vec<String> =
        (0..300).map(|i| event(&format!("e{i}"), "click", now + i, &format!("u{i}"), i as usize)).collect();
    lines.push(event("ahead", "pay", now + HOUR, "u-ahead", 1));
    let bytes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    produce_now(&topic, &bytes);
    wait_for_read(dir.path(), 301, "bound");
    std::thread::sleep(Duration::from_millis(1500));
    let snap = snapshot(dir.path());
    assert_eq!(snap.totals.accepted, 300, "events of now are taken: {:?}", snap.rejections);
    assert_eq!(snap.rejections, BTreeMap::from([("ts_in_future".to_string(), 1)]));
    let letters = read_dead_letters(&format!("{topic}.dlq"), 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason(), "ts_in_future");
    assert!(letters[0].headers["warroom-detail"].contains("ahead of the monitor's clock"), "{:?}", letters[0].headers);
}

#[test]
fn a_producer_with_a_wrong_clock_costs_only_its_own_events() {
    let topic = unique("clock-skew");
    create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), ""); // the shipped allowance (2 minutes) and horizons
    let _m = start_monitor(BIN, &topic, dir.path(), &["--group", &unique("g")]);
    waited_until_assigned(dir.path(), "skew");
    let now = now_ms();
    let mut good: Vec<String> = Vec::new();
    let mut bad: Vec<(String, &str)> = Vec::new();
    // A partition's very first event from a clock two months behind.
    bad.push((event("far-past", "pay", now - 60 * 24 * HOUR, "u-past", 2), "beyond_dedupe_horizon"));
    // Warm-up traffic ten minutes ago (late but inside every horizon) from other users.
    for i in 0..400usize {
        good.push(event(&format!("w{i}"), "impression", now - 600_000 + i as i64, &format!("early-{i}"), i));
    }
    for i in 0..2000usize {
        let ts = now - 30_000 + i as i64 * 10; // the last 30 s
        let kind = ["impression", "impression", "click", "pay"][i % 4];
        good.push(event(&format!("g{i}"), kind, ts, &format!("live-{}", i % 700), i));
        if i == 500 {
            // One valid pay stamped three hours ahead (a wrong clock), inside what a day's
            // allowance would have let through.
            bad.push((event("one-ahead", "pay", now + 3 * HOUR, "u-ahead", 3), "ts_in_future"));
        }
        if i % 100 == 7 {
            // A producer whose every event is hours ahead, and one whose every event is hours behind.
            bad.push((event(&format!("ahead-{i}"), kind, now + 5 * HOUR, &format!("skewed-{i}"), i), "ts_in_future"));
            bad.push((
                event(&format!("behind-{i}"), kind, now - 4 * HOUR, &format!("skewed-{i}"), i),
                "beyond_dedupe_horizon",
            ));
        }
    }
    // Interleave: the bad lines go out among the good ones, the far-past one first.
    let mut all: Vec<&[u8]> = vec![bad[0].0.as_bytes()];
    let per = good.len() / bad.len();
    for (k, chunk) in good.chunks(per).enumerate() {
        all.extend(chunk.iter().map(|l| l.as_bytes()));
        if let Some((b, _)) = bad.get(k + 1) {
            all.push(b.as_bytes());
        }
    }
    all.extend(bad.iter().skip(good.chunks(per).count() + 1).map(|(b, _)| b.as_bytes()));
    assert_eq!(all.len(), good.len() + bad.len());
    produce_now(&topic, &all);
    wait_for_read(dir.path(), all.len() as u64, "skew");
    std::thread::sleep(Duration::from_millis(1500));
    let snap = snapshot(dir.path());
    // Everybody else's data, exactly, in the right windows (as_of is the newest good event).
    let good_lines: Vec<&[u8]> = good.iter().map(|l| l.as_bytes()).collect();
    let mut want = warroom_tests::reference(&good_lines, &[60_000, 300_000, 3_600_000], 300_000);
    want.totals.rejected = bad.len() as u64;
    warroom_tests::assert_matches_reference(&snap, &want, "a wrong clock among good producers");
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for (_, r) in &bad {
        *reasons.entry(r.to_string()).or_default() += 1;
    }
    assert_eq!(snap.rejections, reasons, "each wrong clock refused with its reason");
    // And kept for inspection: every one in the dead-letter topic with that reason.
    let letters = read_dead_letters(&format!("{topic}.dlq"), bad.len() as u64);
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for l in &letters {
        *got.entry(l.reason().to_string()).or_default() += 1;
    }
    assert_eq!(got, reasons, "dead letters by reason");
    let w1 = snap.windows.iter().find(|w| w.length_ms == 60_000).unwrap();
    assert!(w1.paid_orders >= 450, "the 1-minute window holds the live pays: {w1:?}");
}
