//! The checkpoint loader: whatever the bytes of `engine.checkpoint`, restoring either refuses
//! them with an error or gives an engine that publishes, takes events, and checkpoints to bytes
//! that restore to the same state. The first byte picks the framing: odd, the rest is a payload
//! sealed with a valid header and hash (random bytes never pass the hash, so this is what
//! reaches the payload decoder); even, the rest is the file as read from disk.
#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use warroom_engine::{checkpoint, Config, Engine};
use warroom_model::{decode, Limits};

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.engine.shards = 1;
    cfg.engine.windows = vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(3600)];
    cfg
}

const EVENTS: [&str; 3] = [
    r#"{"event_id":"f-1","type":"click","ts":1794312300000,"user_id":"u-1","venue":"main","slot":"main-000","item_id":"i-1","merchant_id":"m-0","channel":"search"}"#,
    r#"{"event_id":"f-2","type":"pay","ts":1794312301000,"user_id":"u-1","venue":"main","slot":"main-000","item_id":"i-1","merchant_id":"m-0","channel":"search","order_id":"o-f-2","amount_cents":1999}"#,
    r#"{"event_id":"f-3","type":"impression","ts":1794312302000,"user_id":"u-2","venue":"food","slot":"food-001","item_id":"i-2","merchant_id":"m-9","channel":"feed"}"#,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 1 { checkpoint::seal(rest) } else { rest.to_vec() };
    let Ok((engine, extra)) = Engine::restore(config(), &bytes, Path::new("fuzz")) else { return };
    let before = engine.publish().0;
    let again = engine.checkpoint(&extra);
    let (twin, extra2) =
        Engine::restore(config(), &again, Path::new("fuzz-again")).expect("a written checkpoint restores");
    assert_eq!(extra, extra2);
    let twin_snap = twin.publish().0;
    // The state, not how it is allocated: `state_bytes` counts capacity (a restored set is
    // sized to its contents; spare sets are not saved), so it may differ across a restore.
    let strip = |s: &warroom_engine::Snapshot| {
        let mut s = warroom_engine::Snapshot { published_at_ms: 0, ..s.clone() };
        s.counters.state_bytes = 0;
        s
    };
    assert!(strip(&before) == strip(&twin_snap), "checkpoint -> restore changed the state");
    let batch: Vec<_> = EVENTS
        .iter()
        .enumerate()
        .filter_map(|(i, l)| engine.prepare(&decode(l.as_bytes(), &Limits::default()).unwrap(), i as u64).ok())
        .collect();
    engine.apply(&batch);
    let _ = engine.publish();
});
