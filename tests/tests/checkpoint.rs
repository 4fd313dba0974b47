//! Checkpoints: stop anywhere, restore, continue: the result equals an uninterrupted run, to
//! the last field (sketches included). Damaged or foreign files are refused with a reason.

use std::sync::Arc;

use warroom_engine::checkpoint::{self, CheckpointError};
use warroom_engine::{Config, Engine, Snapshot};
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::ChunkProcessor;
use warroom_model::Limits;

fn input() -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed: 5,
        resend_share: 0.01,
        duplicate_share: 0.02,
        late_share: 0.02,
        bad_share: 0.003,
        ..GenConfig::default()
    };
    write_night(cfg, 60_000, 1_794_312_000_000, 2 * 3_600_000, &mut buf).unwrap();
    buf
}

fn feed(engine: &Arc<Engine>, lines: &[&[u8]], first_line: u64) {
    let mut proc = ChunkProcessor::new(engine.clone(), Limits::default());
    let mut chunk = Vec::new();
    for l in lines {
        chunk.extend_from_slice(l);
        chunk.push(b'\n');
    }
    proc.process(&chunk, first_line);
}

/// The snapshot without its wall-clock stamps.
fn state(s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    v.as_object_mut().unwrap().remove("published_at_ms");
    v.as_object_mut().unwrap().remove("last_event_at_ms");
    // What the state allocates depends on its history (a restored table is sized to fit);
    // the state itself does not.
    v["counters"].as_object_mut().unwrap().remove("state_bytes");
    v
}

/// Paths where two JSON values differ, for a readable failure.
fn diff(a: &serde_json::Value, b: &serde_json::Value, path: String, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                diff(
                    x.get(k).unwrap_or(&serde_json::Value::Null),
                    y.get(k).unwrap_or(&serde_json::Value::Null),
                    format!("{path}.{k}"),
                    out,
                );
            }
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

#[test]
fn restore_and_continue_equals_an_uninterrupted_run() {
    let buf = input();
    let lines = warroom_tests::lines(&buf);
    let whole = Arc::new(Engine::new(Config::default()));
    feed(&whole, &lines, 1);
    let (want, _) = whole.publish();
    for cut in [1, 7_777, 30_000, lines.len() - 1] {
        let first = Arc::new(Engine::new(Config::default()));
        feed(&first, &lines[..cut], 1);
        let bytes = first.checkpoint(format!("offset={cut}").as_bytes());
        drop(first);
        let (restored, extra) = Engine::restore(Config::default(), &bytes, "mem".as_ref()).unwrap();
        assert_eq!(extra, format!("offset={cut}").into_bytes());
        let restored = Arc::new(restored);
        feed(&restored, &lines[cut..], cut as u64 + 1);
        let (got, _) = restored.publish();
        let mut d = Vec::new();
        diff(&state(&got), &state(&want), String::new(), &mut d);
        assert!(
            d.is_empty(),
            "cut at line {cut}: restored run differs in {} places:\n  {}",
            d.len(),
            d.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }
}

#[test]
fn files_are_written_atomically_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    assert!(checkpoint::read(dir.path()).unwrap().is_none());
    let engine = Arc::new(Engine::new(Config::default()));
    let buf = input();
    feed(&engine, &warroom_tests::lines(&buf)[..5_000], 1);
    let bytes = engine.checkpoint(b"pos");
    let path = checkpoint::write_atomically(dir.path(), &bytes).unwrap();
    let (read, p) = checkpoint::read(dir.path()).unwrap().unwrap();
    assert_eq!((read.len(), p), (bytes.len(), path.clone()));
    assert!(!dir.path().join("engine.checkpoint.tmp").exists());

    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 1;
    assert!(matches!(Engine::restore(Config::default(), &damaged, &path), Err(CheckpointError::Damaged)));
    assert!(matches!(
        Engine::restore(Config::default(), &bytes[..bytes.len() - 9], &path),
        Err(CheckpointError::Damaged)
    ));
    assert!(matches!(
        Engine::restore(Config::default(), b"hello world, not ours", &path),
        Err(CheckpointError::NotACheckpoint(_))
    ));

    let mut other = Config::default();
    other.engine.windows.pop();
    let err = Engine::restore(other, &bytes, &path).unwrap_err();
    assert!(matches!(err, CheckpointError::Shape(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("engine.windows: saved [60s, 300s, 3600s], configured [60s, 300s]"),
        "names what differs: {msg}"
    );
    // It tells the truth about starting over: an empty state resumes at the group's offsets.
    assert!(msg.contains("committed offsets") && msg.contains("lost"), "{msg}");
}

#[test]
fn a_hot_swapped_rule_survives_a_restore() {
    let mut cfg = Config::default();
    cfg.race.rules.insert(
        "clicks".into(),
        warroom_engine::RuleSpec {
            weights: [(warroom_engine::race::Input::Clicks, 1.0)].into_iter().collect(),
            description: String::new(),
        },
    );
    let engine = Engine::new(cfg.clone());
    engine.set_rule("main", "clicks", None).unwrap();
    let (restored, _) = Engine::restore(cfg, &engine.checkpoint(b""), "mem".as_ref()).unwrap();
    assert_eq!(restored.rule_of("main"), "clicks");
    assert_eq!(restored.rule_of("digital"), "gmv");
}
