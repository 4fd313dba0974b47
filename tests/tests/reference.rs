//! The engine against the naive reference on generated streams with duplicates, re-sent
//! payments, late and malformed lines, out-of-order times and merchant changes: a large one
//! (crossing chunk boundaries, both shards busy) and many small random ones (proptest).

use proptest::prelude::*;
use warroom_engine::Config;
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::{assert_matches_reference, lines, reference, replay_bytes};

const WINDOWS: [i64; 3] = [60_000, 300_000, 3_600_000];

#[test]
fn large_generated_stream_matches_reference() {
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed: 7,
        users: 20_000,
        duplicate_share: 0.02,
        resend_share: 0.01,
        late_share: 0.03,
        late_max_ms: 400_000,
        bad_share: 0.005,
        merchant_change_share: 0.01,
        ..GenConfig::default()
    };
    write_night(cfg, 150_000, 1_794_312_000_000, 2 * 3_600_000, &mut buf).unwrap();
    assert!(buf.len() > 4 << 20, "the stream must cross the pipeline's 4 MiB chunks");
    let (snap, rejected) = replay_bytes(&buf, Config::default());
    let want = reference(&lines(&buf), &WINDOWS, 300_000);
    assert_matches_reference(&snap, &want, "generated stream, seed 7");
    assert_eq!(rejected.len() as u64, want.totals.rejected);
    assert!(snap.counters.resent_pays > 0 && snap.totals.duplicates > 0 && snap.counters.late > 0);
}

/// One random event line. Users own their orders (an order's payments come from its buyer).
/// The arguments are the proptest tuple's fields, one each.
#[allow(clippy::too_many_arguments)]
fn event_line(id: u32, kind: u8, ts: i64, user: u8, slot: Option<u8>, merchant: u8, order: u8, amount: u32) -> String {
    let kind = ["impression", "click", "favorite", "cart", "order", "pay", "refund"][kind as usize % 7];
    let mut s = format!(r#"{{"event_id":"e{id}","type":"{kind}","ts":{ts},"user_id":"u{user}""#);
    if let Some(sl) = slot {
        let venue = ["main", "digital", "beauty"][sl as usize % 3];
        s += &format!(r#","venue":"{venue}","slot":"{venue}-{sl}","merchant_id":"m{merchant}""#);
    }
    if matches!(kind, "order" | "pay" | "refund") {
        s += &format!(r#","order_id":"o{user}-{order}","amount_cents":{amount}"#);
    }
    s + "}"
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let ev = (0u8..7, -400_000i64..400_000, 0u8..40, prop::option::of(0u8..9), 0u8..4, 0u8..6, 0u32..100_000);
    (prop::collection::vec(ev, 1..400), prop::collection::vec(any::<u16>(), 0..40), any::<u64>()).prop_map(
        |(events, dups, seed)| {
            // Times drift forward with jumps back (late events); some lines repeat exactly.
            let base = 1_794_312_000_000i64;
            let mut out: Vec<String> = Vec::new();
            let mut clock = base;
            for (i, (kind, jitter, user, slot, merchant, order, amount)) in events.into_iter().enumerate() {
                // Times on a 250 ms grid, so events land exactly on window edges
                // (ts == as_of - L) all the time: the off-by-one cases.
                clock += (seed as i64 >> (i % 40)).rem_euclid(12) * 250;
                let ts = (clock + if i % 4 == 0 { jitter / 250 * 250 } else { 0 }).max(0);
                let kind = if kind == 5 || kind == 4 { kind } else { kind % 4 };
                out.push(event_line(i as u32, kind, ts, user, slot, merchant, order, amount));
            }
            for d in dups {
                if !out.is_empty() {
                    let k = d as usize % out.len();
                    let at = (d as usize * 7) % (out.len() + 1);
                    let line = out[k].clone();
                    out.insert(at.max(k + 1).min(out.len()), line);
                }
            }
            if seed % 5 == 0 {
                out.insert((seed as usize / 5) % (out.len() + 1), r#"{"event_id":"bad","type":"pay"}"#.into());
            }
            out.join("\n").into_bytes()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_streams_match_reference(input in stream()) {
        let (snap, _) = replay_bytes(&input, Config::default());
        let want = reference(&lines(&input), &WINDOWS, 300_000);
        let d = warroom_tests::differences(&snap, &want);
        prop_assert!(d.is_empty(), "{} differences:\n  {}\ninput:\n{}", d.len(), d.join("\n  "), String::from_utf8_lossy(&input));
    }
}
