//! Checkpoints: stop anywhere, restore, continue: the result equals an uninterrupted run, to
//! the last field (sketches included), also on another shard count or under a changed plan.
//! Damaged or foreign files are refused with a reason; the format is pinned by a golden file;
//! a state directory takes one monitor.

use std::sync::Arc;
use std::time::Duration;

use warroom_engine::checkpoint::{self, CheckpointError};
use warroom_engine::plan::{PhaseConfig, PhaseKind, PlanConfig};
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

/// Feeds `lines` in two halves with a checkpoint between, restoring with `cfg`; returns the
/// snapshot and the restored shard count.
fn restored_run(written: Config, restored_with: Config, lines: &[&[u8]]) -> (Arc<Snapshot>, usize) {
    let half = lines.len() / 2;
    let first = Arc::new(Engine::new(written));
    feed(&first, &lines[..half], 1);
    let bytes = first.checkpoint(b"");
    drop(first);
    let (restored, _) = Engine::restore(restored_with, &bytes, "mem".as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let restored = Arc::new(restored);
    feed(&restored, &lines[half..], half as u64 + 1);
    let n = restored.shard_count();
    (restored.publish().0, n)
}

fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    let mut d = Vec::new();
    diff(&state(got), &state(want), String::new(), &mut d);
    assert!(
        d.is_empty(),
        "{what}: differs in {} places:\n  {}",
        d.len(),
        d.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn a_checkpoint_restores_on_a_machine_with_fewer_cpus() {
    // Written by two shards (two CPUs, shards = 0); restored where the configuration or the
    // machine says otherwise: the state keeps its two shards, and nothing changes.
    let buf = input();
    let lines = warroom_tests::lines(&buf);
    let mut two = Config::default();
    two.engine.shards = 2;
    let whole = Arc::new(Engine::new(two.clone()));
    feed(&whole, &lines, 1);
    let (want, _) = whole.publish();
    for shards in [1, 0, 3] {
        let mut cfg = Config::default();
        cfg.engine.shards = shards;
        let (got, n) = restored_run(two.clone(), cfg, &lines);
        assert_eq!(n, 2, "the checkpoint's shard count is kept (configured {shards})");
        assert_same(&got, &want, &format!("restored with engine.shards = {shards}"));
    }
}

fn plan(phases: &[(&str, i64, i64, u64)]) -> PlanConfig {
    let t = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap();
    PlanConfig {
        name: "t".into(),
        phases: phases
            .iter()
            .map(|&(kind, s, e, target)| PhaseConfig {
                kind: match kind {
                    "warmup" => PhaseKind::Warmup,
                    "official" => PhaseKind::Official,
                    _ => PhaseKind::Encore,
                },
                name: kind.into(),
                start: t(s),
                end: t(e),
                target_gmv_cents: target,
                target_uv: 0,
                target_buyers: 0,
            })
            .collect(),
        target_gmv_cents: None,
        hourly_target_gmv_cents: vec![],
    }
}

#[test]
fn a_changed_plan_keeps_the_state_and_recomputes_its_numbers() {
    let (t0, m) = (1_794_312_000_000i64, 60_000i64);
    let a = Config {
        plan: Some(plan(&[("warmup", t0, t0 + 40 * m, 1_000_000), ("official", t0 + 40 * m, t0 + 120 * m, 9_000_000)])),
        ..Config::default()
    };
    let b = Config {
        plan: Some(plan(&[
            ("warmup", t0 - 60 * m, t0 + 60 * m, 2_000_000),
            ("official", t0 + 60 * m, t0 + 90 * m, 5_000_000),
            ("encore", t0 + 90 * m, t0 + 100 * m, 500_000),
        ])),
        ..Config::default()
    };
    assert!(a.validate().is_ok() && b.validate().is_ok());
    let buf = input();
    let lines = warroom_tests::lines(&buf);
    let fresh = Arc::new(Engine::new(b.clone()));
    feed(&fresh, &lines, 1);
    let (want, _) = fresh.publish();
    let (got, _) = restored_run(a, b, &lines);
    let (gp, wp) = (got.plan.as_ref().unwrap(), want.plan.as_ref().unwrap());
    assert_eq!(gp.phases.len(), 3);
    assert!(wp.phases.iter().all(|p| p.gmv_cents > 0), "every phase of the new plan has money: {wp:?}");
    assert_same(&got, &want, "restored under a changed plan");
}

#[test]
fn a_state_directory_takes_one_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let first = checkpoint::StateDirLock::acquire(dir.path()).unwrap();
    let err = checkpoint::StateDirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&std::process::id().to_string()) && msg.contains("its own --state-dir"), "{msg}");
    drop(first);
    checkpoint::StateDirLock::acquire(dir.path()).expect("free again once the first one is gone");
}

/// The checkpoint format this build writes. A change of the state's layout must bump
/// `checkpoint::FORMAT` (older files are then refused with a clear message) and regenerate the
/// golden file: `WARROOM_WRITE_GOLDEN=1 cargo test --release -p warroom-tests --test checkpoint`.
const PINNED_FORMAT: u32 = 4;

fn golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/checkpoint-format-{PINNED_FORMAT}.bin"))
}

fn golden_input() -> (Config, Vec<u8>) {
    let mut cfg = Config::default();
    cfg.engine.shards = 1;
    cfg.engine.windows = vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(3600)];
    let mut buf = Vec::new();
    let g = GenConfig { seed: 2, merchant_change_share: 0.05, ..GenConfig::default() };
    write_night(g, 600, 1_794_312_000_000, 600_000, &mut buf).unwrap();
    (cfg, buf)
}

#[test]
fn the_checkpoint_format_is_pinned_by_a_golden_file() {
    assert_eq!(
        checkpoint::FORMAT,
        PINNED_FORMAT,
        "checkpoint::FORMAT changed: regenerate the golden file (see PINNED_FORMAT) and pin the new number"
    );
    let (cfg, buf) = golden_input();
    let lines = warroom_tests::lines(&buf);
    let fresh = Arc::new(Engine::new(cfg.clone()));
    feed(&fresh, &lines, 1);
    if std::env::var_os("WARROOM_WRITE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_path().parent().unwrap()).unwrap();
        std::fs::write(golden_path(), fresh.checkpoint(b"golden")).unwrap();
    }
    let bytes = std::fs::read(golden_path()).unwrap_or_else(|e| panic!("{}: {e}", golden_path().display()));
    let (restored, extra) = Engine::restore(cfg, &bytes, &golden_path()).unwrap_or_else(|e| {
        panic!("the golden checkpoint no longer restores ({e}): the layout changed without a new checkpoint::FORMAT")
    });
    assert_eq!(extra, b"golden");
    assert_same(
        &restored.publish().0,
        &fresh.publish().0,
        "the golden checkpoint restores to another state: the layout changed without a new checkpoint::FORMAT",
    );
    // An older format is refused with a message that says what to do.
    let mut old = bytes.clone();
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    let err = Engine::restore(Config::default(), &old, "x".as_ref()).unwrap_err();
    assert!(matches!(err, CheckpointError::Format { found: 1 }), "{err}");
    assert!(err.to_string().contains("another warroom version"), "{err}");
}
