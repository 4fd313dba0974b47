//! The contract's own samples: `valid.jsonl` must give `valid.snapshot.json` (money and counts
//! exact, distinct counts within 2%), and every line of `bad.jsonl` is rejected with its reason.

use serde_json::Value;
use warroom_engine::Config;
use warroom_tests::{assert_matches_reference, distinct_close, lines, reference, replay_bytes, samples_dir};

fn read(name: &str) -> Vec<u8> {
    let p = samples_dir().join(name);
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("cannot read {} ({e}); set WARROOM_SHARED to the shared/ folder", p.display()))
}

#[test]
fn valid_sample_reproduces_the_golden_snapshot() {
    let (snap, rejected) = replay_bytes(&read("valid.jsonl"), Config::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    let want: Value = serde_json::from_slice(&read("valid.snapshot.json")).unwrap();
    let got = serde_json::to_value(&*snap).unwrap();
    let mut problems = Vec::new();
    let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let distinct = ["uv", "ipv_uv", "buyers"];
    let mut check = |path: String, w: &Value, g: &Value, key: &str| {
        let ok = if distinct.contains(&key) {
            distinct_close(g.as_u64().unwrap_or(u64::MAX), w.as_u64().unwrap())
        } else if w.is_number() {
            // Exact: integers as integers, floats bit for bit.
            match (w.as_u64(), g.as_u64()) {
                (Some(a), Some(b)) => a == b,
                _ => n(w).to_bits() == n(g).to_bits(),
            }
        } else {
            w == g
        };
        if !ok {
            problems.push(format!("{path}: got {g}, want {w}"));
        }
    };
    check("as_of_ms".into(), &want["as_of_ms"], &got["as_of_ms"], "as_of_ms");
    for (k, w) in want["totals"].as_object().unwrap() {
        check(format!("totals.{k}"), w, &got["totals"][k], k);
    }
    for ww in want["windows"].as_array().unwrap() {
        let gw = got["windows"].as_array().unwrap().iter().find(|g| g["length_ms"] == ww["length_ms"]);
        let gw = gw.unwrap_or_else(|| panic!("window {} missing", ww["length_ms"]));
        for (k, w) in ww.as_object().unwrap() {
            check(format!("windows[{}].{k}", ww["length_ms"]), w, &gw[k], k);
        }
    }
    let wv = want["venues"].as_array().unwrap();
    assert_eq!(wv.len(), got["venues"].as_array().unwrap().len(), "number of venues");
    for (i, w) in wv.iter().enumerate() {
        let g = &got["venues"][i];
        for k in ["venue", "gmv_cents", "paid_orders"] {
            check(format!("venues[{i}].{k}"), &w[k], &g[k], k);
        }
        for k in ["window_ms", "rule"] {
            check(format!("venues[{i}].race.{k}"), &w["race"][k], &g["race"][k], k);
        }
        let wr = w["race"]["ranking"].as_array().unwrap();
        assert_eq!(wr.len(), g["race"]["ranking"].as_array().unwrap().len(), "ranking length of venue {i}");
        for (j, we) in wr.iter().enumerate() {
            for (k, x) in we.as_object().unwrap() {
                check(format!("venues[{i}].race.ranking[{j}].{k}"), x, &g["race"]["ranking"][j][k], k);
            }
        }
    }
    let ws = want["slots"].as_array().unwrap();
    assert_eq!(ws.len(), got["slots"].as_array().unwrap().len(), "number of slots");
    for (i, w) in ws.iter().enumerate() {
        for (k, x) in w.as_object().unwrap() {
            check(format!("slots[{i}].{k}"), x, &got["slots"][i][k], k);
        }
    }
    assert!(problems.is_empty(), "snapshot differs from valid.snapshot.json:\n  {}", problems.join("\n  "));
}

#[test]
fn valid_sample_matches_the_naive_reference() {
    let input = read("valid.jsonl");
    let (snap, _) = replay_bytes(&input, Config::default());
    let want = reference(&lines(&input), &[60_000, 300_000, 3_600_000], 300_000);
    assert_matches_reference(&snap, &want, "valid.jsonl");
}

#[test]
fn every_bad_line_is_rejected_with_its_reason() {
    let (snap, rejected) = replay_bytes(&read("bad.jsonl"), Config::default());
    let expected = [
        (1, "not_json", None),
        (2, "missing_field", Some("ts")),
        (3, "wrong_type", Some("event_id")),
        (4, "unknown_type", Some("type")),
        (5, "bad_amount", Some("amount_cents")),
        (6, "bad_amount", Some("amount_cents")),
        (7, "wrong_type", Some("ts")),
        (8, "not_json", None),
        (9, "not_object", None),
        (10, "bad_length", Some("event_id")),
        (11, "missing_field", Some("order_id")),
        (12, "bad_amount", Some("amount_cents")),
        (13, "wrong_type", Some("slot")),
        (14, "missing_field", Some("user_id")),
        (15, "not_json", None),
        (16, "not_object", None),
        (17, "bad_length", Some("event_id")),
    ];
    let got: Vec<(u64, &str, Option<&str>)> =
        rejected.iter().map(|r| (r.line, r.rejection.reason.as_str(), r.rejection.field)).collect();
    assert_eq!(got, expected.to_vec());
    assert_eq!(snap.totals.rejected, 17);
    assert_eq!(snap.totals.accepted + snap.totals.duplicates, 0);
    assert_eq!(snap.rejections.values().sum::<u64>(), 17);
    assert_eq!(snap.rejections["not_json"], 3);
}

#[test]
fn bad_lines_never_block_what_follows() {
    // Bad lines interleaved with the valid sample: the valid part counts exactly as alone.
    let valid = read("valid.jsonl");
    let bad = read("bad.jsonl");
    let bad_lines = lines(&bad);
    let mut mixed = Vec::new();
    for (i, l) in lines(&valid).iter().enumerate() {
        mixed.extend_from_slice(l);
        mixed.push(b'\n');
        if i % 90 == 0 {
            mixed.extend_from_slice(bad_lines[(i / 90) % bad_lines.len()]);
            mixed.push(b'\n');
        }
    }
    let (alone, _) = replay_bytes(&valid, Config::default());
    let (snap, rejected) = replay_bytes(&mixed, Config::default());
    assert_eq!(rejected.len() as u64, snap.totals.rejected);
    assert_eq!(snap.totals.rejected, lines(&valid).len().div_ceil(90) as u64);
    assert_eq!(snap.totals.gmv_cents, alone.totals.gmv_cents);
    assert_eq!(snap.totals.accepted, alone.totals.accepted);
    assert_eq!(snap.windows, alone.windows);
    assert_eq!(snap.slots, alone.slots);
}
