//! The Kafka source against a real broker (Tansu over TCP), started by scripts/test.sh and
//! named by WARROOM_KAFKA_BROKERS. Random topic and group names; short group timeouts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use warroom_engine::Config;
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::kafka::{open_engine, KafkaConfig, KafkaSource};
use warroom_model::Limits;
use warroom_tests::kafka::{brokers, create_topic, produce, produce_unkeyed, unique};

fn kafka_cfg(topic: &str, group: &str, state: &std::path::Path) -> KafkaConfig {
    let mut props = BTreeMap::new();
    props.insert("session.timeout.ms".into(), "6000".into());
    props.insert("max.poll.interval.ms".into(), "7000".into());
    KafkaConfig {
        brokers: brokers(),
        topic: topic.into(),
        group: group.into(),
        state_dir: state.to_path_buf(),
        checkpoint_interval: Duration::from_millis(500),
        properties: props,
        ..KafkaConfig::default()
    }
}

fn input(events: u64, seed: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed,
        merchant_change_share: 0.0,
        duplicate_share: 0.02,
        resend_share: 0.01,
        late_share: 0.02,
        bad_share: 0.01,
        ..GenConfig::default()
    };
    write_night(cfg, events, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    buf
}

#[test]
fn a_consumer_group_counts_exactly_what_replay_counts_and_dead_letters_the_bad() {
    let buf = input(20_000, 21);
    let lines = warroom_tests::lines(&buf);
    let topic = unique("events");
    create_topic(&topic, 4);
    produce(&topic, &lines);

    let state = tempfile::tempdir().unwrap();
    let group = unique("group");
    let kcfg = kafka_cfg(&topic, &group, state.path());
    let (engine, positions) = open_engine(Config::default(), &kcfg).unwrap();
    let engine = Arc::new(engine);
    let source = Arc::new(KafkaSource::new(engine.clone(), positions, kcfg.clone(), Limits::default()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (source, stop) = (source.clone(), stop.clone());
        std::thread::spawn(move || source.run(&stop))
    };
    let started = Instant::now();
    while source.stats.messages.load(Ordering::Relaxed) < lines.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "consumed {} of {} messages in 90 s",
            source.stats.messages.load(Ordering::Relaxed),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    assert!(source.stats.assignments.load(Ordering::Relaxed) > 0, "the rebalance callback set the start offsets");

    let (snap, _) = engine.publish();
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, "kafka source, 4 partitions");

    // What the broker recorded: the group's committed offset of every partition is one past
    // the last message the broker holds there. (Read back independently: Tansu reports the
    // base offset of the last record batch as the high watermark, so that is no reference.)
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut all = TopicPartitionList::new();
    for p in 0..4 {
        all.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    reader.assign(&all).unwrap();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut read = 0usize;
    let started = Instant::now();
    while read < lines.len() && started.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            read += 1;
            let e = last.entry(m.partition()).or_insert(-1);
            *e = (*e).max(m.offset());
        }
    }
    assert_eq!(read, lines.len(), "messages the broker holds");
    let check: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = check.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for e in committed.elements() {
        assert_eq!(e.offset(), Offset::Offset(last[&e.partition()] + 1), "partition {} committed", e.partition());
    }

    // Every rejected message is in the DLQ, with its reason and origin.
    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "7000")
        .create()
        .unwrap();
    dlq.subscribe(&[&kcfg.dlq()]).unwrap();
    let mut reasons = BTreeMap::new();
    let started = Instant::now();
    while (reasons.values().sum::<u64>()) < snap.totals.rejected && started.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let h = m.headers().expect("dead letters carry headers");
            let get = |k: &str| {
                h.iter().find(|x| x.key == k).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).to_string())
            };
            assert_eq!(get("warroom-source-topic").as_deref(), Some(topic.as_str()));
            assert!(get("warroom-source-offset").is_some() && get("warroom-source-partition").is_some());
            *reasons.entry(get("warroom-reason").unwrap()).or_insert(0u64) += 1;
        }
    }
    let want_reasons: BTreeMap<String, u64> = snap.rejections.clone().into_iter().collect();
    assert_eq!(reasons, want_reasons, "dead letters by reason");
    assert!(snap.totals.rejected > 0);
}

/// Runs a member of the group on its own engine and state directory.
struct Member {
    engine: Arc<warroom_engine::Engine>,
    source: Arc<KafkaSource>,
    stop: Arc<AtomicBool>,
    runner: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    fn start(kcfg: KafkaConfig) -> Member {
        let (engine, positions) = open_engine(Config::default(), &kcfg).unwrap();
        let engine = Arc::new(engine);
        let source = Arc::new(KafkaSource::new(engine.clone(), positions, kcfg, Limits::default()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let (source, stop) = (source.clone(), stop.clone());
            Some(std::thread::spawn(move || source.run(&stop)))
        };
        Member { engine, source, stop, runner }
    }

    fn read(&self) -> u64 {
        self.source.stats.messages.load(Ordering::Relaxed)
    }

    /// Stops cleanly (final checkpoint and commit), then leaves the group. Returns the
    /// engine, the final positions and how many messages this member read.
    fn stop(mut self) -> (Arc<warroom_engine::Engine>, warroom_ingest::kafka::Positions, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.runner.take().unwrap().join().unwrap();
        let (positions, read) = (self.source.positions(), self.read());
        (self.engine, positions, read)
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(90), "{what}: not reached in 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_members_one_stopped_nothing_lost_or_counted_twice() {
    // No duplicates or re-sent payments here: de-duplication is per member, so a re-delivery
    // whose original was counted before its partition moved would count again (a documented
    // limit until state moves with its partition).
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed: 33,
        merchant_change_share: 0.0,
        duplicate_share: 0.0,
        resend_share: 0.0,
        bad_share: 0.005,
        ..GenConfig::default()
    };
    write_night(cfg, 20_000, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    let half = lines.len() / 2;
    let topic = unique("members");
    let group = unique("members-group");
    create_topic(&topic, 4);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let a = Member::start(kafka_cfg(&topic, &group, da.path()));
    let b = Member::start(kafka_cfg(&topic, &group, db.path()));
    produce(&topic, &lines[..half]);
    wait_until("first half read by the group", || a.read() + b.read() >= half as u64);
    let (engine_a, pos_a, read_a) = a.stop();
    produce(&topic, &lines[half..]);
    wait_until("second half read by the remaining member", || read_a + b.read() >= lines.len() as u64);
    // A little longer: a double read would show as more messages than were produced.
    std::thread::sleep(Duration::from_secs(2));
    let (engine_b, pos_b, read_b) = b.stop();
    assert_eq!(read_a + read_b, lines.len() as u64, "messages read by the group: each exactly once");

    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    // The group's merged state equals the reference, money and counts: sums over members,
    // with every member's windows brought to the group's watermark first.
    let group_wm = engine_a.watermark().max(engine_b.watermark());
    engine_a.observe_watermark(group_wm);
    engine_b.observe_watermark(group_wm);
    let (sa, _) = engine_a.publish();
    let (sb, _) = engine_b.publish();
    assert_eq!(sa.as_of_ms, want.as_of_ms);
    let t = |f: fn(&warroom_engine::snapshot::Totals) -> u64| f(&sa.totals) + f(&sb.totals);
    assert_eq!(t(|x| x.gmv_cents), want.totals.gmv_cents, "GMV");
    assert_eq!(t(|x| x.paid_orders), want.totals.paid_orders);
    assert_eq!(t(|x| x.accepted), want.totals.accepted);
    assert_eq!(t(|x| x.rejected), want.totals.rejected);
    assert_eq!(t(|x| x.impressions), want.totals.impressions);
    assert_eq!(t(|x| x.refund_cents), want.totals.refund_cents);
    for (k, w) in want.windows.iter().enumerate() {
        assert_eq!(sa.windows[k].gmv_cents + sb.windows[k].gmv_cents, w.gmv_cents, "window {}", w.length_ms);
    }
    // And through what was recorded: A's last checkpoint holds A's final positions, and B's
    // positions (committed to the group) end every partition: they add up to all messages.
    let (_, ckpt_a) = open_engine(Config::default(), &kafka_cfg(&topic, &group, da.path())).unwrap();
    assert_eq!(ckpt_a, pos_a, "A's last checkpoint holds A's final positions");
    assert_eq!(pos_b.next.len(), 4, "B ended up with every partition: {pos_b:?}");
    assert_eq!(pos_b.next.values().sum::<i64>(), lines.len() as i64, "{pos_b:?}");
}

/// A private broker on a fixed port, for tests that stop and restart it.
struct PrivateBroker {
    child: std::process::Child,
}

impl PrivateBroker {
    fn start(port: u16) -> PrivateBroker {
        let bin = std::env::var("WARROOM_TANSU").expect("WARROOM_TANSU is not set: run the tests with scripts/test.sh");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "private broker did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateBroker { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocked upstream: with the broker killed and a new empty Tansu started on the same port,
/// librdkafka 2.12.1 (bundled by rdkafka-sys 4.10) segfaults in its own thread while updating
/// its metadata cache (rd_kafka_metadata_update_op -> rd_kafka_metadata_cache_find -> strcmp),
/// the family of confluentinc/librdkafka#4907 and #5280. Run it with `--ignored` to see it.
/// Until fixed, run the monitor under a supervisor: a crash loses and double-counts nothing
/// (see crates/warroom/tests/kafka_crash.rs), so a restart recovers exactly.
#[test]
#[ignore = "librdkafka 2.12.1 segfaults on this broker replacement (metadata cache); see the doc comment"]
fn a_broker_lost_and_replaced_does_not_crash_or_wedge_the_monitor() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let broker = PrivateBroker::start(port);
    let topic = unique("outage");
    let first = input(3_000, 41);
    let first_lines = warroom_tests::lines(&first);
    let produce_here = |lines: &[&[u8]]| {
        let producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", &addr).set("linger.ms", "5").create().unwrap();
        for l in lines {
            let mut rec = Some(rdkafka::producer::BaseRecord::<str, [u8]>::to(&topic).payload(*l));
            while let Some(r) = rec.take() {
                if let Err((_, r)) = producer.send(r) {
                    std::thread::sleep(Duration::from_millis(5));
                    rec = Some(r);
                }
            }
        }
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    };
    produce_here(&first_lines);

    let state = tempfile::tempdir().unwrap();
    let mut kcfg = kafka_cfg(&topic, &unique("outage-group"), state.path());
    kcfg.brokers = addr.clone();
    kcfg.properties.insert("reconnect.backoff.max.ms".into(), "1000".into());
    let member = Member::start(kcfg);
    wait_until("first events read", || member.read() >= first_lines.len() as u64);
    let before = member.engine.publish().0.totals;

    broker.kill();
    wait_until("the source reports itself degraded", || {
        member.source.stats.health() == warroom_ingest::kafka::Health::Degraded
    });
    // Still serving the last state.
    assert_eq!(member.engine.publish().0.totals, before);

    // A new, empty broker on the same address; new events arrive on it.
    let broker = PrivateBroker::start(port);
    // Other event ids than the first batch (the generator numbers them from 0 each time).
    let second_text = String::from_utf8(input(2_000, 42)).unwrap().replace("\"e-", "\"second-e-");
    let second_lines: Vec<&[u8]> = second_text.lines().map(str::as_bytes).collect();
    produce_here(&second_lines);
    wait_until("events of the new broker read", || member.read() >= (first_lines.len() + second_lines.len()) as u64);
    assert_eq!(member.source.stats.health(), warroom_ingest::kafka::Health::Ok);
    let (engine, _, read) = member.stop();
    assert_eq!(read, (first_lines.len() + second_lines.len()) as u64);
    assert!(engine.publish().0.totals.accepted > before.accepted);
    broker.kill();
}

#[test]
fn re_deliveries_on_other_partitions_are_still_caught() {
    // Unkeyed: an event and its exact re-delivery may sit in different partitions, delivered
    // at different times. (No re-sent payments: which delivery counts first would then depend
    // on partition timing, and with it the window a payment falls in.)
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed: 77,
        merchant_change_share: 0.0,
        duplicate_share: 0.05,
        resend_share: 0.0,
        ..GenConfig::default()
    };
    write_night(cfg, 30_000, 1_794_312_000_000, 6 * 3_600_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    let topic = unique("unkeyed");
    create_topic(&topic, 4);
    produce_unkeyed(&topic, &lines);
    let state = tempfile::tempdir().unwrap();
    let member = Member::start(kafka_cfg(&topic, &unique("unkeyed-group"), state.path()));
    wait_until("all read", || member.read() >= lines.len() as u64);
    let (engine, _, read) = member.stop();
    assert_eq!(read, lines.len() as u64);
    let (snap, _) = engine.publish();
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, "unkeyed partitions");
}
