//! A dead part (source, applier, publisher, webhook sender) is noticed: /readyz turns 503 with
//! why, and the process exits non-zero (70) within seconds, for its supervisor to restart it.
//! The restart counts exactly: an applier that died half-way through a batch never let a
//! checkpoint or commit cover it. Faults are injected through WARROOM_FAULT, in the real binary
//! against the real broker (WARROOM_KAFKA_BROKERS).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{
    create_topic, http_get, monitor_url, produce, start_monitor, start_monitor_env, unique, wait_for_read,
};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");

fn config(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("warroom.toml"),
        format!(
            "{}[kafka]\ncheckpoint_interval = \"1s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"30000\"\n{extra}",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
}

/// Injects `fault` into a monitor fed `lines`, checks it dies as it should, restarts it
/// without the fault and checks the numbers are exact.
fn dies_and_restarts_exactly(part: &str, fault: &str, extra: &str) {
    let mut buf = Vec::new();
    let g = GenConfig { seed: 71, merchant_change_share: 0.0, ..GenConfig::default() };
    write_night(g, 12_000, 1_794_312_000_000, 1_800_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    let q = lines.len() / 4;
    let topic = unique("dead");
    let group = unique("dead-group");
    create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), extra);
    produce(&topic, &lines[..q]);
    let mut mon = start_monitor_env(BIN, &topic, dir.path(), &["--group", &group], &[("WARROOM_FAULT", fault)]);
    let base = monitor_url(dir.path());
    // Events keep coming, a slice every 100 ms (each a batch of its own), until it dies.
    let mut slices = lines[q..2 * q].chunks(100);
    // /readyz says why while the monitor winds down, and the process exits 70 within seconds.
    let started = Instant::now();
    let mut said = None;
    let mut last_slice = Instant::now();
    let status = loop {
        if let Some(st) = mon.try_wait().unwrap() {
            break st;
        }
        if last_slice.elapsed() >= Duration::from_millis(100) {
            if let Some(slice) = slices.next() {
                produce(&topic, slice);
            }
            last_slice = Instant::now();
        }
        let (code, body) = http_get(&base, "/readyz", None, Duration::from_secs(1));
        if code == 503 && body.contains("died") {
            said.get_or_insert((started.elapsed(), body));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{part}: the monitor did not exit after the injected fault; logs:\n{}",
            warroom_tests::kafka::files_starting(dir.path(), "log-")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = warroom_tests::kafka::files_starting(dir.path(), "log-");
    assert_eq!(status.code(), Some(70), "{part}: exit status {status:?}; logs:\n{logs}");
    let (_, body) = said.unwrap_or_else(|| panic!("{part}: /readyz never said 503 before the exit; logs:\n{logs}"));
    assert!(body.contains(part) && body.contains("injected fault"), "{part}: {body}");
    assert!(logs.contains("a part of the monitor died"), "{logs}");
    // The supervisor's restart, without the fault: the rest of the stream, counted exactly.
    for slice in slices {
        produce(&topic, slice);
    }
    produce(&topic, &lines[2 * q..]);
    let mut again = start_monitor(BIN, &topic, dir.path(), &["--group", &group]);
    wait_for_read(dir.path(), lines.len() as u64, "after the restart");
    std::thread::sleep(Duration::from_millis(2_500));
    Command::new("kill").args(["-TERM", &again.id().to_string()]).status().unwrap();
    assert!(again.wait().unwrap().success());
    let snap: warroom_engine::Snapshot =
        serde_json::from_slice(&std::fs::read(dir.path().join("snapshot.json")).unwrap()).unwrap();
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, &format!("{part} died, then a restart"));
}

#[test]
fn a_panicking_applier_stops_the_monitor_and_commits_nothing_it_did_not_apply() {
    // At its third batch, which it took and never applies: nothing may commit past it.
    dies_and_restarts_exactly("applier", "applier:3", "");
}

#[test]
fn a_dead_source_stops_the_monitor() {
    dies_and_restarts_exactly("source", "source:60", "");
}

#[test]
fn a_dead_publisher_stops_the_monitor() {
    dies_and_restarts_exactly("publisher", "publisher:12", "");
}

#[test]
fn a_dead_webhook_sender_stops_the_monitor() {
    // An alert that fires as soon as there is GMV, sent to a webhook: the sender dies at its
    // first alert (before sending: nothing needs to listen there).
    let port = warroom_tests::kafka::free_port();
    let extra = format!(
        "[alerts]\nwebhook = \"http://127.0.0.1:{port}/hook\"\n[[alerts.rules]]\nname = \"any-gmv\"\nkind = \"threshold\"\nmetric = \"gmv_cents\"\nwindow = \"1h\"\nfire = 0.0\n"
    );
    dies_and_restarts_exactly("webhook sender", "webhook:1", &extra);
}
