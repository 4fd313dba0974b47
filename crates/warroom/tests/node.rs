//! The node `warroom run` starts, run in-process through the library (`warroom::node`): a
//! file source, the API on a free port, the publisher and the parts' watch, stopped by its
//! flag. Its final snapshot equals a replay of the same file, and its API serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use warroom::node::{self, Ended, NodeSpec, SourceKind};
use warroom::settings::Settings;
use warroom_tests::kafka::http_get;

#[test]
fn a_node_runs_in_process_and_ends_with_the_replay_of_its_file() {
    let file = warroom_tests::samples_dir().join("valid.jsonl");
    let settings = Settings::load(None).unwrap();
    let (want, _) = warroom_tests::replay_bytes(&std::fs::read(&file).unwrap(), settings.engine_config());
    let spec = NodeSpec {
        source: SourceKind::File(file),
        kafka: settings.kafka.clone(),
        sim: warroom_ingest::sim::SimConfig::default(),
        settings,
        listen: "127.0.0.1:0".parse().unwrap(),
        auth_file: None,
        config_path: None,
        duration: None,
        snapshot_out: None,
        rehearsal: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let node = {
        let stop = stop.clone();
        std::thread::spawn(move || node::run(spec, stop, move |addr| tx.send(addr).unwrap()))
    };
    let base = format!("http://{}", rx.recv_timeout(Duration::from_secs(20)).expect("the node listens"));
    // The API serves the file's state once it is played and published.
    let token = Some("demo-ops-token-0001");
    let started = Instant::now();
    let served: serde_json::Value = loop {
        let (status, body) = http_get(&base, "/api/v1/snapshot", token, Duration::from_secs(5));
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["totals"]["accepted"].as_u64() == Some(want.totals.accepted) {
                break v;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the node never served the file's state");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(served["totals"]["gmv_cents"].as_u64(), Some(want.totals.gmv_cents as u64));
    assert_eq!(http_get(&base, "/readyz", None, Duration::from_secs(5)).0, 200);
    assert_eq!(http_get(&base, "/api/v1/snapshot", None, Duration::from_secs(5)).0, 401, "a token is required");
    stop.store(true, Ordering::Relaxed);
    let Ended::Done(got) = node.join().unwrap().unwrap() else { panic!("a part died") };
    let diffs = warroom_tests::differences(&got, &want);
    assert!(diffs.is_empty(), "the node's final snapshot differs from the replay: {diffs:#?}");
    assert!(got.totals.accepted > 0 && got.totals.gmv_cents > 0);
}
