//! `kill -9` of a `warroom run --source kafka` half-way, then a restart on the same state
//! directory: the final numbers equal the reference exactly (nothing lost, nothing twice).
//! Needs the broker that scripts/test.sh starts (WARROOM_KAFKA_BROKERS).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{brokers, create_topic, produce, unique};

fn start(topic: &str, group: &str, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warroom"))
        .args([
            "run",
            "--source",
            "kafka",
            "--listen",
            "127.0.0.1:0",
            "--brokers",
            &brokers(),
            "--topic",
            topic,
            "--group",
            group,
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--snapshot-out")
        .arg(dir.join("snapshot.json"))
        .arg("--config")
        .arg(dir.join("warroom.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("log-{}.txt", unique("run")))).unwrap()))
        .spawn()
        .expect("start warroom")
}

/// Messages the running monitor has read (accepted + rejected + duplicates), per its snapshot.
fn read_so_far(dir: &Path) -> u64 {
    let Ok(b) = std::fs::read(dir.join("snapshot.json")) else { return 0 };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else { return 0 };
    let t = &v["totals"];
    ["accepted", "rejected", "duplicates"].iter().map(|k| t[k].as_u64().unwrap_or(0)).sum()
}

fn wait_for(dir: &Path, n: u64, what: &str) {
    let started = Instant::now();
    while read_so_far(dir) < n {
        let logs: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("log-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what}: read {} of {n} in 90 s; logs:\n{}",
            read_so_far(dir),
            logs.join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_dash_nine_half_way_then_restart_counts_exactly() {
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed: 9,
        merchant_change_share: 0.0,
        duplicate_share: 0.02,
        resend_share: 0.01,
        bad_share: 0.005,
        ..GenConfig::default()
    };
    write_night(cfg, 40_000, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    let q = lines.len() / 4;
    let topic = unique("crash");
    let group = unique("crash-group");
    create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("warroom.toml"),
        "[kafka]\ncheckpoint_interval = \"3s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
    )
    .unwrap();

    produce(&topic, &lines[..q]);
    let mut first = start(&topic, &group, dir.path());
    wait_for(dir.path(), q as u64, "first quarter");
    let state = dir.path().join("state/engine.checkpoint");
    let started = Instant::now();
    while !state.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "no checkpoint written in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Applied but not yet checkpointed work at the moment of the kill.
    produce(&topic, &lines[q..2 * q]);
    wait_for(dir.path(), 2 * q as u64, "second quarter");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    produce(&topic, &lines[2 * q..]);
    let mut second = start(&topic, &group, dir.path());
    wait_for(dir.path(), lines.len() as u64, "after restart");
    // Let a few more publishes pass: a double count would push the numbers past the reference.
    std::thread::sleep(Duration::from_millis(2_500));
    let pid = second.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "graceful stop on SIGTERM: {status:?}");

    let snap: warroom_engine::Snapshot =
        serde_json::from_slice(&std::fs::read(dir.path().join("snapshot.json")).unwrap()).unwrap();
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, "kafka, kill -9 half-way and restart");
}
