//! History through the real binary and a real broker: `kill -9` twice mid-stream (with
//! minutes counted since the last checkpoint each time), restarts on the same state
//! directory, and at the end `GET /api/v1/history` equals the naive reference minute by
//! minute and scope by scope: no minute lost, none counted twice. A rule change made before a
//! kill is still in the audit trail after it, and `warroom review` reports the same numbers.
//! Needs the broker that scripts/test.sh starts (WARROOM_KAFKA_BROKERS).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{
    create_topic, http_get, monitor_url, produce, start_monitor, unique, wait_for_read, Running,
};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");
const OPS: &str = "demo-ops-token-0001";

fn start(topic: &str, group: &str, dir: &Path) -> Running {
    // Each run prints its URL into a new out-*.txt: remove the old ones first.
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("out-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    start_monitor(BIN, topic, dir, &["--group", group])
}

fn kill9(r: &mut Running) {
    r.kill().unwrap();
    r.wait().unwrap();
}

#[test]
fn history_survives_kill_dash_nine_without_a_gap_or_a_double_minute() {
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed: 12,
        merchant_change_share: 0.01,
        duplicate_share: 0.02,
        resend_share: 0.01,
        late_share: 0.02,
        bad_share: 0.005,
        ..GenConfig::default()
    };
    write_night(cfg, 40_000, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    let n = lines.len();
    let topic = unique("history");
    let group = unique("history-group");
    create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("warroom.toml"),
        format!(
            "{}[kafka]\ncheckpoint_interval = \"1s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
    let db = dir.path().join("state/history.db");

    let q = n / 3;
    produce(&topic, &lines[..q]);
    let mut first = start(&topic, &group, dir.path());
    wait_for_read(dir.path(), q as u64, "first third");
    let base = monitor_url(dir.path());
    let (status, body) = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        let body = r#"{"rule": "efficiency"}"#;
        write!(s, "PUT /api/v1/venues/main/rule HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer demo-admin-token-0001\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        (t.split_whitespace().nth(1).unwrap_or("").to_string(), t)
    };
    assert_eq!(status, "200", "{body}");
    let started = Instant::now();
    while !db.exists() || !dir.path().join("state/engine.checkpoint").exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "no history or checkpoint in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Minutes counted since the last checkpoint at the moment of each kill.
    produce(&topic, &lines[q..2 * q]);
    wait_for_read(dir.path(), 2 * q as u64, "second third");
    kill9(&mut first);
    let mut second = start(&topic, &group, dir.path());
    produce(&topic, &lines[2 * q..n - 2_000]);
    wait_for_read(dir.path(), (n - 2_000) as u64, "after the first restart");
    kill9(&mut second);
    produce(&topic, &lines[n - 2_000..]);
    let mut third = start(&topic, &group, dir.path());
    wait_for_read(dir.path(), n as u64, "after the second restart");
    let base = monitor_url(dir.path());

    // History is written with each checkpoint (1 s): within a few seconds it is whole.
    let want = warroom_tests::reference_history(&lines);
    let started = Instant::now();
    loop {
        let d = warroom_tests::history_differences(&base, OPS, &want);
        if d.is_empty() {
            eprintln!("history equals the reference {:?} after everything was read", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} differences, first:\n{}",
            d.len(),
            d[..d.len().min(20)].join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The rule change made before the first kill is still in the audit trail.
    let (_, audit) = http_get(&base, "/api/v1/audit", Some(OPS), Duration::from_secs(10));
    assert!(audit.contains("efficiency"), "audit after two kills: {audit}");
    let (_, journal) = http_get(&base, "/api/v1/history/journal?kind=rule_change", Some(OPS), Duration::from_secs(10));
    assert_eq!(journal.matches("efficiency").count(), 1, "{journal}");

    Command::new("kill").args(["-TERM", &third.id().to_string()]).status().unwrap();
    assert!(third.wait().unwrap().success());
    // The review, from the database on disk, says the same.
    let out = dir.path().join("review");
    warroom_tests::run_review(BIN, &db, &out, &[]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let site = want.sum("site", "", i64::MIN, i64::MAX);
    assert_eq!(report["totals"]["gmv"].as_u64(), Some(site[0]), "review GMV");
    assert_eq!(report["totals"]["impressions"].as_u64(), Some(site[10]), "review impressions");
}

/// `warroom replay --history` (a new database, written while the replay goes on, without
/// waiting for the disk on each commit) stores what the naive reference counts: every minute
/// of the site, and every venue, slot, merchant, channel and merchant's channel over the night.
#[test]
fn a_replay_stores_the_reference_history() {
    use warroom_history::{Scope, Store};
    let dir = tempfile::tempdir().unwrap();
    let buf = warroom_tests::noisy_night(41, 200_000);
    let input = dir.path().join("night.jsonl");
    std::fs::write(&input, &buf).unwrap();
    let db = dir.path().join("h.db");
    let st = Command::new(BIN)
        .args(["replay", "--quiet", "--input"])
        .arg(&input)
        .arg("--snapshot-out")
        .arg(dir.path().join("s.json"))
        .arg("--history")
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success());
    let lines = warroom_tests::lines(&buf);
    let want = warroom_tests::reference_history(&lines);
    let store = Store::open_read(&db).unwrap();
    let mut differences = Vec::new();
    let (first, last) =
        (want.counts.keys().map(|k| k.2).min().unwrap(), want.counts.keys().map(|k| k.2).max().unwrap());
    for m in first..=last {
        let got = store.totals(&Scope::Site, None, m * 60_000, (m + 1) * 60_000).unwrap().counts.values();
        if got != want.sum("site", "", m, m + 1) {
            differences.push(format!("site minute {m}: {got:?} vs {:?}", want.sum("site", "", m, m + 1)));
        }
    }
    let named: std::collections::BTreeSet<(String, String)> =
        want.counts.keys().filter(|k| k.0 != "site").map(|k| (k.0.clone(), k.1.clone())).collect();
    for (kind, name) in &named {
        let got = warroom_tests::stored_totals(&store, kind, name, i64::MIN / 4, i64::MAX / 4).unwrap().counts.values();
        let w = want.sum(kind, name, i64::MIN, i64::MAX);
        if got != w {
            differences.push(format!("{kind} {name}: {got:?} vs {w:?}"));
        }
    }
    assert!(named.len() > 50, "the night names {} scopes", named.len());
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    // The review of a range an hour past the night: not over at `--now` inside it (the
    // curves stop at the stored minutes), over with `--now end`.
    let until = (last + 1) * 60_000;
    for (now, want_until) in [(format!("{}", until + 1), Some(until)), ("end".to_string(), None)] {
        let out = dir.path().join(format!("review-{now}"));
        let (from, to) = ((first * 60_000).to_string(), (until + 3_600_000).to_string());
        warroom_tests::run_review(BIN, &db, &out, &["--from", &from, "--to", &to, "--now", &now]);
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(r["stored_until_ms"].as_i64(), want_until, "--now {now}");
    }
}
