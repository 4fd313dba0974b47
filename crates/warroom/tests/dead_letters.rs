//! The dead-letter path against real brokers: a dead-letter topic that cannot be written, then
//! can. Nothing blocks meanwhile (the API and /metrics answer, valid events keep counting),
//! nothing is committed past a dead letter the broker has not confirmed, the monitor says it is
//! degraded and what to fix, and once the topic takes messages every dead letter arrives.
//! Needs the broker that scripts/test.sh starts (WARROOM_KAFKA_BROKERS) and Tansu (WARROOM_TANSU).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{
    committed, consume_all, create_topic, free_port, http_get, metric, monitor_url, produce, read_dead_letters_from,
    start_monitor, unique, wait_for_read, wait_until, PrivateBroker,
};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");
const OPS: &str = "demo-ops-token-0001";

#[test]
fn a_dead_letter_topic_that_fails_then_recovers_loses_nothing_and_blocks_nothing() {
    let dlq_port = free_port(); // nothing listens there yet: the dead-letter topic cannot be written
    let topic = unique("dlq-fails");
    let group = unique("dlq-group");
    create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("warroom.toml"),
        format!(
            "{}[kafka]\ncheckpoint_interval = \"1s\"\ndlq_brokers = \"127.0.0.1:{dlq_port}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"30000\"\n[kafka.dlq_properties]\n\"message.timeout.ms\" = \"3000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
    let _mon = start_monitor(BIN, &topic, dir.path(), &["--group", &group]);
    let base = monitor_url(dir.path());
    let mut buf = Vec::new();
    let g = GenConfig { seed: 61, bad_share: 0.03, merchant_change_share: 0.0, ..GenConfig::default() };
    write_night(g, 6_000, 1_794_312_000_000, 1_800_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    produce(&topic, &lines);
    wait_for_read(dir.path(), lines.len() as u64, "every message read while the dead-letter topic fails");

    // Where the bad messages sit, read back from the broker.
    let msgs = consume_all(&topic, 4, lines.len());
    let mut first_bad: BTreeMap<i32, i64> = BTreeMap::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &msgs {
        let o = offsets.entry(m.partition).or_insert(0);
        if !warroom_tests::is_valid(&m.payload) {
            first_bad.entry(m.partition).or_insert(*o);
        }
        *o += 1;
        ends.insert(m.partition, *o);
    }
    let bad: u64 = msgs.iter().filter(|m| !warroom_tests::is_valid(&m.payload)).count() as u64;
    assert!(bad > 50, "the input has bad lines: {bad}");

    // While it fails: everything answers, nothing is confirmed, nothing committed past them.
    wait_until("the monitor reports the dead-letter topic failing", 30, || {
        http_get(&base, "/readyz", None, Duration::from_secs(3)).0 == 503
    });
    let t0 = Instant::now();
    let mut checks = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        let (code, text) = http_get(&base, "/metrics", Some(OPS), Duration::from_secs(3));
        assert_eq!(code, 200, "/metrics keeps answering while the dead-letter topic fails");
        assert_eq!(metric(&text, "warroom_kafka_dead_lettered_total"), Some(0.0), "nothing confirmed: none counted");
        assert_eq!(metric(&text, "warroom_kafka_dlq_pending"), Some(bad as f64), "every dead letter kept");
        assert_eq!(metric(&text, "warroom_kafka_dlq_healthy"), Some(0.0));
        let (code, snap) = http_get(&base, "/api/v1/snapshot", Some(OPS), Duration::from_secs(3));
        assert_eq!(code, 200, "the API keeps answering");
        assert!(snap.contains("\"accepted\""));
        checks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(checks >= 6);
    let (code, why) = http_get(&base, "/readyz", None, Duration::from_secs(3));
    assert_eq!(code, 503, "degraded: {why}");
    assert!(why.contains("dead-letter topic") && why.contains("kafka.dlq_brokers"), "says what to fix: {why}");
    let c = committed(&group, &topic, 4);
    for (p, bad_at) in &first_bad {
        let at = c.get(p).copied().unwrap_or(0);
        assert!(at <= *bad_at, "partition {p}: committed {at}, past the undelivered dead letter at offset {bad_at}");
    }
    let log = warroom_tests::kafka::files_starting(dir.path(), "log-");
    assert!(log.contains("is not taking messages"), "the log says what is wrong:\n{log}");

    // The dead-letter topic comes up: every letter arrives, the monitor is ready, commits advance.
    let dlq_broker = PrivateBroker::start_on(dlq_port, dlq_port, &[]);
    wait_until("every dead letter delivered", 90, || {
        let (_, text) = http_get(&base, "/metrics", Some(OPS), Duration::from_secs(3));
        metric(&text, "warroom_kafka_dlq_pending") == Some(0.0)
    });
    wait_until("ready again", 30, || http_get(&base, "/readyz", None, Duration::from_secs(3)).0 == 200);
    let (_, text) = http_get(&base, "/metrics", Some(OPS), Duration::from_secs(3));
    assert_eq!(metric(&text, "warroom_kafka_dead_lettered_total"), Some(bad as f64), "deliveries counted");
    let letters = read_dead_letters_from(&format!("127.0.0.1:{}", dlq_broker.port), &format!("{topic}.dlq"), bad);
    assert_eq!(letters.len() as u64, bad, "every dead letter is in the dead-letter topic");
    let mut payloads: Vec<Vec<u8>> = letters.iter().map(|l| l.payload.clone()).collect();
    let mut want: Vec<Vec<u8>> =
        msgs.iter().filter(|m| !warroom_tests::is_valid(&m.payload)).map(|m| m.payload.clone()).collect();
    payloads.sort();
    want.sort();
    assert_eq!(payloads, want, "the dead letters are the bad messages, each once");
    wait_until("commits up to every partition's end", 30, || committed(&group, &topic, 4) == ends);

    // And the numbers are exact.
    let snap: warroom_engine::Snapshot =
        serde_json::from_slice(&std::fs::read(dir.path().join("snapshot.json")).unwrap()).unwrap();
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, "through a failing dead-letter topic");
}
