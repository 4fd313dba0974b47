//! Bad input through the real binary: every rejection, whoever makes it (the decoder or the
//! engine), reaches `--rejects-out` with its reason; a flood of unique names costs bounded
//! memory (nothing of a refused event is kept).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use warroom_ingest::gen::{write_night, GenConfig};

const T0: i64 = 1_794_312_000_000;

fn replay(input: &PathBuf, dir: &std::path::Path, rejects: bool) -> (warroom_engine::Snapshot, u64, PathBuf) {
    let snap = dir.join(format!("{}.snapshot.json", input.file_name().unwrap().to_string_lossy()));
    let rej = dir.join(format!("{}.rejects.jsonl", input.file_name().unwrap().to_string_lossy()));
    let mut args: Vec<&OsStr> = vec!["replay".as_ref(), "--quiet".as_ref(), "--input".as_ref(), input.as_ref()];
    args.extend(["--snapshot-out".as_ref(), snap.as_os_str()]);
    if rejects {
        args.extend(["--rejects-out".as_ref(), rej.as_os_str()]);
    }
    // WARROOM_TEST_BIN runs these checks against another build (e.g. to see them fail on an
    // older one).
    let bin = std::env::var("WARROOM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_warroom").to_string());
    let (status, rss_kb) = warroom_tests::run_measuring_rss(&bin, &args);
    assert!(status.success(), "replay of {} failed: {status:?}", input.display());
    (serde_json::from_slice(&std::fs::read(&snap).unwrap()).unwrap(), rss_kb, rej)
}

/// A line damaged the ways a fuzzer or a buggy producer damages them.
fn mutate(line: &str, rng: &mut rand::rngs::SmallRng) -> String {
    match rng.gen_range(0..6) {
        0 => line[..rng.gen_range(0..line.len())].to_string(),
        1 => {
            let mut b = line.as_bytes().to_vec();
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
            if b[i] == b'\n' || b[i] == b'\r' {
                b[i] = b'#'; // one line stays one line
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        2 => line.replacen(r#""venue":""#, &format!(r#""venue":"{}"#, "v".repeat(130)), 1),
        3 => line.replacen(r#""ts":"#, r#""ts":1,"ts":"#, 1),
        4 => line.replacen(r#""user_id":""#, r#""user_id":"","x":""#, 1),
        _ => line.replacen(r#""type":""#, r#""type":"x"#, 1),
    }
}

#[test]
fn every_rejection_reaches_rejects_out_whoever_made_it() {
    let dir = tempfile::tempdir().unwrap();
    // 200k lines: 10% of events up to 3 hours late (many behind the 1-hour de-duplication
    // horizon: the engine refuses those), 1% malformed by the generator, 3% damaged here.
    let cfg =
        GenConfig { seed: 21, late_share: 0.1, late_max_ms: 3 * 3_600_000, bad_share: 0.01, ..GenConfig::default() };
    let mut buf = Vec::new();
    write_night(cfg, 200_000, T0, 6 * 3_600_000, &mut buf).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let lines: Vec<String> = String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| if rng.gen_bool(0.03) { mutate(l, &mut rng) } else { l.to_string() })
        .collect();
    let input = dir.path().join("fuzzed.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (snap, _, rej) = replay(&input, dir.path(), true);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let text = std::fs::read_to_string(&rej).unwrap();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *reasons.entry(v["reason"].as_str().unwrap().to_string()).or_default() += 1;
        let n = v["line"].as_u64().unwrap();
        assert!(seen.insert(n), "line {n} rejected twice");
        let raw = lines[n as usize - 1].as_str();
        assert_eq!(v["raw"].as_str().unwrap(), String::from_utf8_lossy(raw.as_bytes()), "line {n}: the raw text");
    }
    assert_eq!(reasons, snap.rejections, "--rejects-out by reason vs the snapshot's rejections");
    assert_eq!(seen.len() as u64, snap.totals.rejected, "every rejection is in --rejects-out");
    assert!(
        reasons.get("beyond_dedupe_horizon").copied().unwrap_or(0) > 1_000,
        "the file exercises the engine's refusals: {reasons:?}"
    );
    assert_eq!(snap.totals.accepted + snap.totals.rejected + snap.totals.duplicates, lines.len() as u64);
}

/// An event line naming the given names.
fn named(i: u64, venue: &str, slot: &str, merchant: &str, channel: &str) -> String {
    let kind = if i.is_multiple_of(5) { "pay" } else { "impression" };
    let money = if kind == "pay" { format!(r#","order_id":"o{i}","amount_cents":1999"#) } else { String::new() };
    format!(
        r#"{{"event_id":"f{i}","type":"{kind}","ts":{},"user_id":"u{}","venue":"{venue}","slot":"{slot}","merchant_id":"{merchant}","channel":"{channel}"{money}}}"#,
        T0 + i as i64 * 20,
        i % 50_000
    )
}

#[test]
fn a_flood_of_unique_names_stays_within_twice_a_normal_streams_memory() {
    let dir = tempfile::tempdir().unwrap();
    let n = 400_000u64;
    let normal = dir.path().join("normal.jsonl");
    let mut buf = Vec::new();
    write_night(GenConfig { seed: 3, ..GenConfig::default() }, n, T0, 2 * 3_600_000, &mut buf).unwrap();
    std::fs::write(&normal, &buf).unwrap();
    // The same number of events, each naming names never seen before, up to the contract's
    // 128 bytes: in turn a new venue, slot, merchant, channel, and all four at once.
    let flood = dir.path().join("flood.jsonl");
    let long = |what: &str, i: u64| format!("{what}-{i:0>110}");
    let mut text = String::with_capacity(n as usize * 700);
    for i in 0..n {
        let line = match i % 5 {
            0 => named(i, &long("venue", i), "main-001", "m-1", "search"),
            1 => named(i, "main", &long("slot", i), "m-1", "search"),
            2 => named(i, "main", "main-001", &long("merchant", i), "search"),
            3 => named(i, "main", "main-001", "m-1", &long("channel", i)),
            _ => named(i, &long("venue", i), &long("slot", i), &long("merchant", i), &long("channel", i)),
        };
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&flood, &text).unwrap();
    let (normal_snap, normal_kb, _) = replay(&normal, dir.path(), false);
    let (snap, flood_kb, _) = replay(&flood, dir.path(), true);
    println!("peak RSS: normal stream {normal_kb} KiB, flood of unique names {flood_kb} KiB");
    assert!(normal_snap.totals.accepted > 0);
    assert!(normal_kb < 200 << 10, "a normal stream of 400k events peaks far below 200 MiB: {normal_kb} KiB");
    assert!(
        flood_kb <= 2 * normal_kb,
        "a flood of unique names must stay within twice a normal stream's memory: {flood_kb} KiB vs {normal_kb} KiB"
    );
    // Refused past the limits, with their reasons; what was kept is what the limits allow.
    // (New slots and new merchants also need new (slot, merchant) pairs: whichever table fills
    // first refuses them.)
    for r in ["too_many_venues", "too_many_channels", "too_many_slot_merchants"] {
        assert!(snap.rejections.get(r).copied().unwrap_or(0) > 10_000, "{r}: {:?}", snap.rejections);
    }
    assert!(
        snap.rejections.keys().all(|r| r.starts_with("too_many_")),
        "only the limits refuse: {:?}",
        snap.rejections
    );
    assert_eq!(snap.totals.accepted + snap.totals.rejected + snap.totals.duplicates, n);
    assert!(snap.venues.len() <= 512 && snap.slots.len() <= 20_000 && snap.channels.len() <= 256);
    // The name tables are accounted for, and bounded by the limits x 128 bytes.
    assert!(snap.counters.names_bytes > 0 && snap.counters.names_bytes < 40 << 20, "{:?}", snap.counters);
}
