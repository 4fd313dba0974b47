//! The chaos test: the real binary and a real broker under steady live load (events stamped
//! with the wall clock, paced as they happen), through every fault of the hardening issue in
//! one run:
//!
//! - a producer whose clock is 3 h ahead and one 3 h behind;
//! - a burst of events that each name a new venue, slot, merchant and channel (128 bytes);
//! - a dead-letter topic that cannot be written for the first ~80 s;
//! - the broker paused (SIGSTOP) for 20 s;
//! - the monitor paused (SIGSTOP) for 20 s;
//! - one `kill -9` with an immediate restart (as `Restart=always` does), timed;
//! - one restart on fewer CPUs (`taskset -c 0`).
//!
//! At the end: every message was read once (accepted + rejected + duplicates = produced);
//! every rejection is in the dead-letter topic with its reason and the snapshot's rejections
//! by reason agree; nothing of the main stream was refused; the snapshot equals the naive
//! reference over the events the monitor kept exactly; the monitor's RSS stayed bounded.
//! The figures it prints are in RELIABILITY.md.
//! Needs Tansu (WARROOM_TANSU) and `taskset` (util-linux), as scripts/test.sh provides.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warroom_ingest::gen::{write_flat, GenConfig};
use warroom_tests::kafka::{
    free_port, http_get, metric, read_dead_letters_until_idle, read_so_far, sent_time, unique, PrivateBroker, Running,
};
use warroom_tests::rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use warroom_tests::rdkafka::ClientConfig;

const BIN: &str = env!("CARGO_BIN_EXE_warroom");
const OPS: &str = "demo-ops-token-0001";
const RATE: u64 = 400;
const LOAD_SECONDS: u64 = 190;
const HOUR: i64 = 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {pid}");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_string()))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `warroom run --source kafka` on a fixed port (the screen's URL survives restarts), through
/// `launcher` (e.g. `taskset -c 0`); its stdout and log go to `out-N.txt` / `log-N.txt`.
fn launch(launcher: &[&str], n: u32, brokers: &str, topic: &str, group: &str, dir: &Path, port: u16) -> Running {
    let mut c = match launcher.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.args(["run", "--source", "kafka", "--brokers", brokers, "--topic", topic, "--group", group])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--snapshot-out")
        .arg(dir.join("snapshot.json"))
        .arg("--config")
        .arg(dir.join("warroom.toml"))
        .stdout(Stdio::from(std::fs::File::create(dir.join(format!("out-{n}.txt"))).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("log-{n}.txt"))).unwrap()))
        .spawn()
        .map(Running)
        .expect("start warroom")
}

/// Sends each line when the wall clock reaches its `ts` (lines without one at once), keyed as
/// contract v1.1 says, its message time its `ts`: a live producer with a right clock.
fn paced_producer(
    brokers: String,
    topic: String,
    lines: Vec<Vec<u8>>,
    sent: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "20")
            .set("message.timeout.ms", "600000")
            .create()
            .expect("producer");
        for l in &lines {
            let ts = sent_time(l);
            if let Some(ts) = ts {
                loop {
                    let wait = ts - now_ms();
                    if wait <= 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(wait.min(50) as u64));
                }
            }
            send(&producer, &topic, l, ts);
        }
        producer.flush(Duration::from_secs(300)).expect("flush the main stream");
        sent.store(true, Ordering::SeqCst);
    })
}

fn send(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, line: &[u8], ts: Option<i64>) {
    let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(line);
    if let Some(k) = warroom_ingest::produce::partition_key(line) {
        rec = rec.key(k);
    }
    if let Some(ts) = ts {
        rec = rec.timestamp(ts);
    }
    let mut rec = Some(rec);
    while let Some(r) = rec.take() {
        if let Err((_, r)) = producer.send(r) {
            std::thread::sleep(Duration::from_millis(5));
            rec = Some(r);
        }
    }
}

/// Produces `lines` now, each message stamped with its event's `ts` (the producer's clock).
fn produce_stamped(brokers: &str, topic: &str, lines: &[Vec<u8>]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().unwrap();
    for l in lines {
        send(&producer, topic, l, sent_time(l));
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// Pays from a producer whose clock is `skew_ms` off: valid in every other respect.
fn skewed_pays(n: usize, skew_ms: i64, tag: &str) -> Vec<Vec<u8>> {
    let ts = now_ms() + skew_ms;
    (0..n)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({
                "event_id": format!("e-skew-{tag}-{i}"), "type": "pay", "ts": ts + i as i64,
                "user_id": format!("u-skew-{tag}-{i}"), "venue": "main", "slot": "main-000",
                "item_id": "i-main-000", "merchant_id": "m-0", "channel": "search",
                "order_id": format!("o-skew-{tag}-{i}"), "amount_cents": 10_000 + i as u64, "coupon_cents": 0
            }))
            .unwrap()
        })
        .collect()
}

/// Events that each name a new venue, slot, merchant and channel, 128 bytes each.
fn unique_names(n: usize) -> Vec<Vec<u8>> {
    let ts = now_ms();
    (0..n)
        .map(|i| {
            let name = |what: &str| format!("{what}-{i:0>w$}", w = 128 - what.len() - 1);
            let mut e = serde_json::json!({
                "event_id": format!("e-flood-{i}"), "type": if i % 3 == 2 { "pay" } else { "click" }, "ts": ts + (i as i64 % 1000),
                "user_id": format!("u-flood-{i}"), "venue": name("venue"), "slot": name("slot"),
                "item_id": format!("i-flood-{i}"), "merchant_id": name("merchant"), "channel": name("channel")
            });
            if i % 3 == 2 {
                e["order_id"] = format!("o-flood-{i}").into();
                e["amount_cents"] = 5_000.into();
                e["coupon_cents"] = 0.into();
            }
            serde_json::to_vec(&e).unwrap()
        })
        .collect()
}

/// Messages read so far, as the running monitor's API says (the snapshot file lags up to 1 s).
/// (0 while it does not answer.)
fn read_live(base: &str) -> u64 {
    let (code, body) = http_get(base, "/api/v1/snapshot", Some(OPS), Duration::from_secs(5));
    if code != 200 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    ["accepted", "rejected", "duplicates"].iter().map(|k| v["totals"][k].as_u64().unwrap()).sum()
}

/// Seconds from `since` until the monitor at `base` counts past `pre` messages read.
/// The restored state can be ahead of the last count the old process published: only messages
/// read after the restart count, so it waits past whichever is higher.
fn until_counting_past(base: &str, pre: u64, since: Instant) -> f64 {
    let mut first = 0;
    while first == 0 {
        assert!(since.elapsed() < Duration::from_secs(120), "the restarted monitor never answered");
        first = read_live(base);
        std::thread::sleep(Duration::from_millis(20));
    }
    let pre = pre.max(first);
    while read_live(base) <= pre {
        assert!(since.elapsed() < Duration::from_secs(120), "the restarted monitor never counted past {pre}");
        std::thread::sleep(Duration::from_millis(50));
    }
    since.elapsed().as_secs_f64()
}

#[test]
fn under_load_through_every_fault_nothing_is_lost_or_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let broker = PrivateBroker::start_on(broker_port, broker_port, &[]);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let dlq_port = free_port(); // nothing there until the dead-letter broker starts
    let topic = unique("chaos");
    let group = unique("chaos-g");
    broker.create_topic(&topic, 4);
    std::fs::write(
        dir.path().join("warroom.toml"),
        format!(
            "{}[engine]\nmax_venues = 64\nmax_channels = 32\n[kafka]\ncheckpoint_interval = \"1s\"\ndlq_brokers = \"127.0.0.1:{dlq_port}\"\n[kafka.dlq_properties]\n\"message.timeout.ms\" = \"3000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    // The main stream: live events at a steady rate, 0.2% malformed, duplicates and re-sent pays.
    let start = now_ms() + 3_000;
    let g = GenConfig { seed: 2026, bad_share: 0.002, late_max_ms: 20_000, ..GenConfig::default() };
    let mut buf = Vec::new();
    write_flat(g, RATE * LOAD_SECONDS, start, LOAD_SECONDS as i64 * 1000, &mut buf).unwrap();
    let main: Vec<Vec<u8>> = warroom_tests::lines(&buf).iter().map(|l| l.to_vec()).collect();

    let mut runs = 0;
    let mut mon = launch(&[], runs, &brokers, &topic, &group, dir.path(), port);
    let sent = Arc::new(AtomicBool::new(false));
    let producer = paced_producer(brokers.clone(), topic.clone(), main.clone(), sent.clone());
    let t0 = Instant::now();
    let mut peak_rss = 0u64;
    let mut tick = |mon: &Running| {
        peak_rss = peak_rss.max(rss_kb(mon.id()));
        std::thread::sleep(Duration::from_millis(250));
    };
    let at = |s: u64| Duration::from_secs(s);
    let mut fig: Vec<String> = Vec::new();

    while t0.elapsed() < at(10) {
        tick(&mon);
    }
    // A producer 3 h ahead and one 3 h behind.
    let ahead = skewed_pays(200, 3 * HOUR, "ahead");
    let behind = skewed_pays(200, -3 * HOUR, "behind");
    produce_stamped(&brokers, &topic, &ahead);
    produce_stamped(&brokers, &topic, &behind);
    while t0.elapsed() < at(15) {
        tick(&mon);
    }
    // A burst of unique names.
    let flood = unique_names(3_000);
    produce_stamped(&brokers, &topic, &flood);
    while t0.elapsed() < at(20) {
        tick(&mon);
    }
    // The broker stops for 20 s.
    signal(broker.pid(), "-STOP");
    while t0.elapsed() < at(40) {
        tick(&mon);
    }
    signal(broker.pid(), "-CONT");
    fig.push("broker paused 20 s (SIGSTOP) at t=20 s".into());
    fig.push("monitor paused 20 s (SIGSTOP) at t=50 s".into());
    while t0.elapsed() < at(50) {
        tick(&mon);
    }
    // The monitor stops for 20 s.
    signal(mon.id(), "-STOP");
    while t0.elapsed() < at(70) {
        tick(&mon);
    }
    signal(mon.id(), "-CONT");
    let (code, why) = http_get(&base, "/readyz", None, Duration::from_secs(5));
    assert_eq!(code, 503, "the dead-letter topic still fails: not ready ({why})");
    assert!(why.contains("dead-letter"), "{why}");
    while t0.elapsed() < at(80) {
        tick(&mon);
    }
    // The dead-letter topic comes up after ~80 s of failing.
    let dlq_broker = PrivateBroker::start_on(dlq_port, dlq_port, &[]);
    while t0.elapsed() < at(95) {
        tick(&mon);
    }
    // kill -9 and an immediate restart.
    let pre = read_live(&base);
    mon.kill().unwrap();
    mon.wait().unwrap();
    let killed = Instant::now();
    runs += 1;
    mon = launch(&[], runs, &brokers, &topic, &group, dir.path(), port);
    let back = until_counting_past(&base, pre, killed);
    fig.push(format!("kill -9 at t=95 s with {pre} messages read: counting past them again {back:.1} s later"));
    while t0.elapsed() < at(130) {
        tick(&mon);
    }
    // A restart on fewer CPUs (a graceful stop, as a rescheduled machine drains).
    let pre = read_live(&base);
    signal(mon.id(), "-TERM");
    let stopped = Instant::now();
    assert!(mon.wait().unwrap().success(), "a graceful stop exits 0");
    runs += 1;
    mon = launch(&["taskset", "-c", "0"], runs, &brokers, &topic, &group, dir.path(), port);
    let back_small = until_counting_past(&base, pre, stopped);
    fig.push(format!("stopped at t=130 s, restarted on 1 CPU (taskset -c 0): counting again {back_small:.1} s later"));

    // The end of the load; everything read and every dead letter delivered.
    while !sent.load(Ordering::SeqCst) {
        tick(&mon);
    }
    producer.join().unwrap();
    let total = (main.len() + ahead.len() + behind.len() + flood.len()) as u64;
    let settle = Instant::now();
    loop {
        peak_rss = peak_rss.max(rss_kb(mon.id()));
        let (_, m) = http_get(&base, "/metrics", Some(OPS), Duration::from_secs(3));
        if read_so_far(dir.path()) >= total && metric(&m, "warroom_kafka_dlq_pending") == Some(0.0) {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "read {} of {total}; logs:\n{}",
            read_so_far(dir.path()),
            warroom_tests::kafka::files_starting(dir.path(), "log-")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (code, why) = http_get(&base, "/readyz", None, Duration::from_secs(3));
    assert_eq!(code, 200, "ready at the end: {why}");
    std::thread::sleep(Duration::from_millis(2_500)); // a snapshot file taken after the last message
    let snap: warroom_engine::Snapshot =
        serde_json::from_slice(&std::fs::read(dir.path().join("snapshot.json")).unwrap()).unwrap();
    let t = &snap.totals;
    assert_eq!(t.accepted + t.rejected + t.duplicates, total, "every message read exactly once");

    // Every rejection is a dead letter (a crash can send one twice: its source offset tells).
    let letters =
        read_dead_letters_until_idle(&format!("127.0.0.1:{dlq_port}"), &format!("{topic}.dlq"), Duration::from_secs(5));
    let mut by_origin: BTreeMap<(String, String), &warroom_tests::kafka::DeadLetter> = BTreeMap::new();
    for l in &letters {
        let k = (l.headers["warroom-source-partition"].clone(), l.headers["warroom-source-offset"].clone());
        if let Some(old) = by_origin.insert(k, l) {
            assert_eq!(old.payload, l.payload, "two different dead letters for one message");
        }
    }
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for l in by_origin.values() {
        *reasons.entry(l.reason().to_string()).or_default() += 1;
    }
    assert_eq!(by_origin.len() as u64, t.rejected, "one dead letter per rejection: {reasons:?}");
    assert_eq!(reasons, snap.rejections, "the dead letters' reasons are the snapshot's rejections");

    // Whose they are: the skewed producers lost their own events, the flood its excess, the main
    // stream only its malformed lines.
    let dead: HashMap<&[u8], &str> = by_origin.values().map(|l| (l.payload.as_slice(), l.reason())).collect();
    let ahead_refused: Vec<&str> = ahead.iter().filter_map(|l| dead.get(l.as_slice()).copied()).collect();
    assert_eq!(ahead_refused.len(), ahead.len(), "every event of the clock 3 h ahead is refused");
    assert!(ahead_refused.iter().all(|r| *r == "ts_in_future"), "{ahead_refused:?}");
    let behind_refused: Vec<&str> = behind.iter().filter_map(|l| dead.get(l.as_slice()).copied()).collect();
    assert_eq!(behind_refused.len(), behind.len(), "every event of the clock 3 h behind is refused");
    assert!(behind_refused.iter().all(|r| *r == "beyond_dedupe_horizon"), "{behind_refused:?}");
    let flood_refused: Vec<&str> = flood.iter().filter_map(|l| dead.get(l.as_slice()).copied()).collect();
    assert!(flood_refused.iter().all(|r| r.starts_with("too_many_")), "{flood_refused:?}");
    assert!(flood_refused.len() >= flood.len() - 64, "the flood beyond the limits is refused: {}", flood_refused.len());
    let main_set: HashSet<&[u8]> = main.iter().map(|l| l.as_slice()).collect();
    for (p, r) in &dead {
        if main_set.contains(p) {
            assert!(
                !warroom_tests::is_valid(p),
                "a valid main-stream event was refused ({r}): {}",
                String::from_utf8_lossy(p)
            );
        }
    }
    let malformed = main.iter().filter(|l| !warroom_tests::is_valid(l)).count();
    assert!(malformed > 50, "the main stream has malformed lines: {malformed}");

    // The numbers: exactly the naive reference over what the monitor kept.
    let engine_refused: HashSet<&[u8]> =
        ahead.iter().chain(&behind).chain(&flood).map(|l| l.as_slice()).filter(|l| dead.contains_key(l)).collect();
    let kept: Vec<&[u8]> = main
        .iter()
        .chain(&ahead)
        .chain(&behind)
        .chain(&flood)
        .map(|l| l.as_slice())
        .filter(|l| !engine_refused.contains(l))
        .collect();
    let mut want = warroom_tests::reference(&kept, &[60_000, 300_000, 3_600_000], 300_000);
    want.totals.rejected += engine_refused.len() as u64;
    warroom_tests::assert_matches_reference(&snap, &want, "after the chaos");

    // Memory stayed bounded.
    let peak_mb = peak_rss / 1024;
    assert!(peak_mb < 400, "the monitor's RSS peaked at {peak_mb} MB");
    drop(dlq_broker);
    let _ = mon.kill();
    let _ = mon.wait();
    eprintln!("chaos figures:");
    eprintln!("  load: {} main events at {RATE}/s for {LOAD_SECONDS} s ({malformed} malformed), {} of a clock 3 h ahead, {} 3 h behind, {} unique-name events; {total} messages", main.len(), ahead.len(), behind.len(), flood.len());
    eprintln!("  dead-letter topic unwritable for the first ~80 s, then up");
    for f in &fig {
        eprintln!("  {f}");
    }
    eprintln!("  rejections: {reasons:?}; dead letters read {} (distinct sources {})", letters.len(), by_origin.len());
    eprintln!("  accepted {} rejected {} duplicates {}; snapshot == reference", t.accepted, t.rejected, t.duplicates);
    eprintln!("  monitor peak RSS {peak_mb} MB");
}
