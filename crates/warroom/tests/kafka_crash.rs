//! `kill -9` of a `warroom run --source kafka` half-way, then a restart on the same state
//! directory: the final numbers equal the reference exactly (nothing lost, nothing twice).
//! Needs the broker that scripts/test.sh starts (WARROOM_KAFKA_BROKERS).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{create_topic, produce, start_monitor, unique, wait_for_read, Running};

fn start(topic: &str, group: &str, dir: &Path) -> Running {
    start_monitor(env!("CARGO_BIN_EXE_warroom"), topic, dir, &["--group", group])
}

fn wait_for(dir: &Path, n: u64, what: &str) {
    wait_for_read(dir, n, what)
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
        format!(
            "{}[kafka]\ncheckpoint_interval = \"3s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
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
