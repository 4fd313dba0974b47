//! The load-test tools through the real binary and a real broker (scripts/test.sh starts it,
//! WARROOM_KAFKA_BROKERS names it): `warroom loadgen` produces exactly what it reports, with
//! ids that never collide across threads or runs, and the monitor counts it as the naive
//! reference does; `warroom rehearse` replays a recorded night shifted, byte for byte, never
//! ahead of the wall clock and tagged, and a monitor in rehearsal mode reports the night's own
//! numbers, phases and pace at the shifted times, tagged everywhere.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{consume_all, create_topic, files_starting, start_monitor, unique, wait_for_read};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");

fn short_group_timeouts(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("warroom.toml"),
        format!(
            "{}{extra}\n[kafka]\ncheckpoint_interval = \"2s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn stop(mut child: warroom_tests::kafka::Running) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success(), "the monitor stops cleanly on SIGTERM");
}

fn event_id(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("event_id")?.as_str().map(str::to_owned)
}

#[test]
fn loadgen_produces_what_it_reports_and_the_monitor_counts_it_exactly() {
    let topic = unique("loadgen");
    create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], json: &str| {
        let out = Command::new(BIN)
            .args(["loadgen", "--brokers", &warroom_tests::kafka::brokers(), "--topic", &topic, "--progress", "1"])
            .args(args)
            .arg("--json-out")
            .arg(dir.path().join(json))
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "loadgen {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        json_file(&dir.path().join(json))
    };
    // Two runs on one topic: steady with three threads, then a ramp.
    let a = run(
        &[
            "--rate",
            "4000",
            "--seconds",
            "3",
            "--threads",
            "3",
            "--seed",
            "9",
            "--run-id",
            "a",
            "--bad-share",
            "0.01",
            "--duplicate-share",
            "0.02",
        ],
        "a.json",
    );
    let b = run(
        &[
            "--profile",
            "ramp",
            "--from-rate",
            "1000",
            "--rate",
            "3000",
            "--seconds",
            "2",
            "--seed",
            "9",
            "--run-id",
            "b",
        ],
        "b.json",
    );
    // The schedule's totals, exactly: 4000/s x 3 s, and the ramp's mean 2000/s x 2 s.
    assert_eq!(a["events"], 12_000, "{a}");
    assert_eq!(b["events"], 4_000, "{b}");
    for r in [&a, &b] {
        assert_eq!(r["delivered"], r["events"], "every event acknowledged: {r}");
        assert_eq!(r["failed"], 0);
        assert!(r["cpu_s"].as_f64().unwrap() > 0.0, "own CPU measured: {r}");
    }

    // Read back independently.
    let msgs = consume_all(&topic, 4, 16_000);
    assert_eq!(msgs.len(), 16_000);
    let mut by_id: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut bad, mut repeats) = (0, 0);
    for m in &msgs {
        match event_id(&m.payload) {
            Some(id) if id != "x" => {
                // Same id, same bytes: only exact re-deliveries share an id, across threads and runs.
                if let Some(prev) = by_id.insert(id.clone(), m.payload.clone()) {
                    assert_eq!(prev, m.payload, "two different events share the id {id}");
                    repeats += 1;
                }
                assert!(id.starts_with("e-a.") || id.starts_with("e-b."), "the run id is in every id: {id}");
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                // Contract v1.1: order, pay and refund by order_id, the rest by user_id.
                let key = match v["type"].as_str() {
                    Some("order" | "pay" | "refund") => v["order_id"].as_str(),
                    _ => v["user_id"].as_str(),
                };
                assert_eq!(m.key.as_deref(), key.map(str::as_bytes), "keyed as contract v1.1 says: {v}");
            }
            _ => bad += 1,
        }
    }
    // The configured shares, within binomial noise (12,000 x 1% = 120 bad, 240 repeats).
    assert!((60..=260).contains(&bad), "bad lines: {bad}");
    assert!((150..=400).contains(&repeats), "re-deliveries: {repeats}");
    let threads: std::collections::BTreeSet<&str> =
        by_id.keys().filter_map(|id| id.strip_prefix("e-a.")).filter_map(|r| r.split('.').next()).collect();
    assert_eq!(threads.len(), 3, "three producing threads: {threads:?}");

    // The monitor over Kafka against the naive reference over what was read back.
    short_group_timeouts(dir.path(), "");
    let mon = start_monitor(BIN, &topic, dir.path(), &["--group", &unique("lg-group")]);
    wait_for_read(dir.path(), 16_000, "the monitor reading loadgen's events");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop(mon);
    let snap: warroom_engine::Snapshot = serde_json::from_value(json_file(&dir.path().join("snapshot.json"))).unwrap();
    let lines: Vec<&[u8]> = msgs.iter().map(|m| m.payload.as_slice()).collect();
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    assert_eq!(snap.totals.rejected, bad as u64);
    assert_eq!(snap.totals.duplicates, repeats as u64);
    let (g, w) = (&snap.totals, &want.totals);
    assert_eq!((g.gmv_cents, g.paid_orders, g.accepted), (w.gmv_cents, w.paid_orders, w.accepted));
}

#[test]
fn a_rehearsal_replays_a_recorded_night_shifted_and_tagged() {
    // The recording: a 2-hour night from 2026-11-10 20:00 +08:00.
    let start = 1_794_312_000_000i64;
    let mut buf = Vec::new();
    let cfg = GenConfig { seed: 21, merchant_change_share: 0.0, bad_share: 0.005, ..GenConfig::default() };
    write_night(cfg, 12_000, start, 2 * 3_600_000, &mut buf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("night.jsonl");
    std::fs::write(&rec, &buf).unwrap();
    let plan = r#"
[plan]
name = "rehearsed night"
[[plan.phases]]
kind = "warmup"
name = "预热"
start = "2026-11-10T20:00:00+08:00"
end = "2026-11-10T21:20:00+08:00"
target_gmv_cents = 30000000
[[plan.phases]]
kind = "official"
name = "正式"
start = "2026-11-10T21:20:00+08:00"
end = "2026-11-10T21:40:00+08:00"
target_gmv_cents = 40000000
[[plan.phases]]
kind = "encore"
name = "返场"
start = "2026-11-10T21:40:00+08:00"
end = "2026-11-10T22:00:00+08:00"
target_gmv_cents = 10000000
"#;
    short_group_timeouts(dir.path(), plan);

    // The reference: the recording replayed as it was, with the plan as it was.
    let ref_out = dir.path().join("reference.json");
    let st = Command::new(BIN)
        .args(["replay", "--quiet", "--input"])
        .arg(&rec)
        .arg("--config")
        .arg(dir.path().join("warroom.toml"))
        .arg("--snapshot-out")
        .arg(&ref_out)
        .status()
        .unwrap();
    assert!(st.success());
    let replayed: warroom_engine::Snapshot = serde_json::from_value(json_file(&ref_out)).unwrap();

    // Rehearse at 720x: the two hours in about ten seconds.
    let topic = unique("rehearsal");
    create_topic(&topic, 4);
    let out = Command::new(BIN)
        .args(["rehearse", "--speed", "720", "--brokers", &warroom_tests::kafka::brokers(), "--topic", &topic])
        .arg("--input")
        .arg(&rec)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "rehearse: {text}");
    let shift: i64 = text
        .lines()
        .find_map(|l| l.split("--rehearsal-shift-ms ").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("rehearse prints the monitor's command with the shift: {text}"));
    assert_eq!(shift % 60_000, 0, "a whole number of minutes");
    let now = warroom_ingest::now_ms();
    assert!(start + shift > now - 3 * 3_600_000 && start + shift <= now, "moved to now: {shift}");

    // What went through Kafka: every original line, only its ts moved; tagged; never ahead.
    let lines = warroom_tests::lines(&buf);
    let msgs = consume_all(&topic, 4, lines.len());
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for m in &msgs {
        assert!(m.headers.iter().any(|(k, _)| k == "warroom-rehearsal"), "tagged with the header");
        let mut back = Vec::new();
        match warroom_ingest::rehearse::shift_line(&m.payload, -shift, &mut back) {
            Some(_) => {
                let (_, _, ts) = warroom_ingest::rehearse::find_ts(&m.payload).unwrap();
                let at = m.timestamp_ms.expect("CreateTime");
                assert!(ts <= at, "event time {ts} ran ahead of the wall clock {at}");
                sent.push(back);
            }
            None => sent.push(m.payload.clone()),
        }
    }
    let mut want_lines: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
    want_lines.sort();
    sent.sort();
    assert!(want_lines == sent, "the replayed lines, ts moved back, are the recording byte for byte");

    // The monitor in rehearsal mode.
    let mon = start_monitor(
        BIN,
        &topic,
        dir.path(),
        &[
            "--rehearsal-shift-ms",
            &shift.to_string(),
            "--rehearsal-speed",
            "720",
            "--group",
            &unique("rehearsal-group"),
        ],
    );
    wait_for_read(dir.path(), lines.len() as u64, "the rehearsal monitor");
    let out_text = || files_starting(dir.path(), "out-");
    let started = std::time::Instant::now();
    while !out_text().contains("screen (ops):") {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "no URL printed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let base = out_text()
        .lines()
        .find_map(|l| l.strip_prefix("screen (ops):"))
        .map(|s| s.trim().split("/#").next().unwrap().to_string())
        .unwrap();
    let metrics = {
        use std::io::{Read, Write};
        let host = base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer demo-ops-token-0001\r\n\r\n")
            .unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        t
    };
    assert!(metrics.lines().any(|l| l == "warroom_rehearsal 1"), "tagged in /metrics");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop(mon);
    let log = files_starting(dir.path(), "log-");
    assert!(log.contains("REHEARSAL"), "the log says it is a rehearsal");
    assert!(out_text().lines().filter(|l| l.starts_with("GMV")).count() == 0, "every summary line is tagged");

    let snap: warroom_engine::Snapshot = serde_json::from_value(json_file(&dir.path().join("snapshot.json"))).unwrap();
    let tag = snap.rehearsal.as_ref().expect("the snapshot is tagged");
    assert_eq!((tag.shift_ms, tag.speed.to_bits()), (shift, 720f64.to_bits()));
    // The night's numbers at the shifted time: against the naive reference ...
    let mut want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    want.as_of_ms += shift;
    warroom_tests::assert_matches_reference(&snap, &want, "rehearsal vs the recording's reference");
    // ... and the plan: the same phase, progress and pace as on the night, phases moved.
    let (p, q) = (snap.plan.as_ref().unwrap(), replayed.plan.as_ref().unwrap());
    assert_eq!((&p.phase, &p.phase_name), (&q.phase, &q.phase_name));
    assert_eq!(p.start_ms, q.start_ms + shift);
    assert_eq!(p.expected_by_now_cents, q.expected_by_now_cents);
    assert_eq!(
        p.phases.iter().map(|x| x.start_ms - shift).collect::<Vec<_>>(),
        q.phases.iter().map(|x| x.start_ms).collect::<Vec<_>>()
    );
    assert_eq!(snap.totals.gmv_cents, replayed.totals.gmv_cents);
    assert_eq!(p.pace.to_bits(), q.pace.to_bits(), "pace computed from the same exact cents");
}
