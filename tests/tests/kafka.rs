//! The Kafka source against a real broker (Tansu over TCP), started by scripts/test.sh and
//! named by WARROOM_KAFKA_BROKERS. Random topic and group names; short group timeouts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use warroom_engine::Config;
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::kafka::{open_engine, KafkaConfig, KafkaSource};
use warroom_model::Limits;
use warroom_tests::kafka::{brokers, create_topic, produce, produce_unkeyed, read_dead_letters, unique, PrivateBroker};

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
    // The source's metrics as /metrics exposes them: per-partition positions and lag (from
    // librdkafka's statistics, every second), checkpoints, health.
    let state = warroom_api::AppState::new(
        engine.clone(),
        warroom_api::Auth::load(None).unwrap(),
        Arc::new(warroom_api::Hub::new()),
        Some(source.clone() as Arc<dyn warroom_api::IngestStatus>),
    );
    let started = Instant::now();
    while source.stats.partition_ends().len() < 4 || source.stats.last_checkpoint_ms.load(Ordering::Relaxed) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "no partition ends or checkpoint: {:?}", source.stats);
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = warroom_api::metrics::render(&state);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let positions: i64 =
        (0..4).map(|p| value(&format!("warroom_kafka_partition_position{{partition=\"{p}\"}} ")) as i64).sum();
    assert_eq!(positions, lines.len() as i64, "positions end every partition");
    for p in 0..4 {
        assert_eq!(value(&format!("warroom_kafka_partition_lag{{partition=\"{p}\"}} ")) as i64, 0, "all consumed");
    }
    assert_eq!(value("warroom_kafka_messages_total ") as u64, lines.len() as u64);
    assert_eq!(value("warroom_kafka_health ") as u8, 1);
    assert!(value("warroom_kafka_checkpoint_age_seconds ") >= 0.0);
    assert!(value("warroom_kafka_checkpoints_total ") >= 1.0);
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
    let mut reasons = BTreeMap::new();
    for letter in read_dead_letters(&kcfg.dlq(), snap.totals.rejected) {
        let get = |k: &str| letter.headers.get(k).map(String::as_str);
        assert_eq!(get("warroom-source-topic"), Some(topic.as_str()));
        assert!(get("warroom-source-offset").is_some() && get("warroom-source-partition").is_some());
        *reasons.entry(get("warroom-reason").unwrap().to_string()).or_insert(0u64) += 1;
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

    // Dynamic membership: A leaves for good, and Tansu (unlike Kafka) never expires a static
    // member that does not come back, so its partitions would never reach B.
    let dynamic =
        |d: &std::path::Path| KafkaConfig { instance_id: Some(String::new()), ..kafka_cfg(&topic, &group, d) };
    let a = Member::start(dynamic(da.path()));
    let b = Member::start(dynamic(db.path()));
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
    assert_eq!(sa.totals.gmv_cents + sb.totals.gmv_cents, want.totals.gmv_cents, "GMV");
    assert_eq!(t(|x| x.paid_orders), want.totals.paid_orders);
    assert_eq!(t(|x| x.accepted), want.totals.accepted);
    assert_eq!(t(|x| x.rejected), want.totals.rejected);
    assert_eq!(t(|x| x.impressions), want.totals.impressions);
    assert_eq!(sa.totals.refund_cents + sb.totals.refund_cents, want.totals.refund_cents);
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

/// A TCP relay on a fixed port in front of the current broker. `cut` drops every connection
/// and refuses new ones (the broker is gone for the clients); `point_to` sends new
/// connections to a broker.
struct Relay {
    port: u16,
    backend: Arc<std::sync::Mutex<Option<u16>>>,
    conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start() -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend: Arc<std::sync::Mutex<Option<u16>>> = Arc::default();
        let conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (b, c) = (backend.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(port) = *b.lock().unwrap() else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else { continue };
                let mut conns = c.lock().unwrap();
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, backend, conns }
    }

    fn point_to(&self, broker: &PrivateBroker) {
        *self.backend.lock().unwrap() = Some(broker.port);
    }

    fn cut(&self) {
        *self.backend.lock().unwrap() = None;
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The broker is unreachable when the monitor starts, then reachable, then lost mid-run for a
/// while, then back: the monitor starts anyway and says it is degraded, keeps serving its last
/// state through the outage, reconnects by itself and ends with exactly the reference's
/// totals and windows: nothing lost, nothing counted twice.
#[test]
fn a_broker_unreachable_at_start_and_lost_mid_run_degrades_then_resumes_exactly() {
    let relay = Relay::start();
    let addr = format!("127.0.0.1:{}", relay.port);
    let topic = unique("outage");
    let broker = PrivateBroker::start(relay.port);
    broker.create_topic(&topic, 4);
    let buf = input(6_000, 43);
    let lines = warroom_tests::lines(&buf);
    let half = lines.len() / 2;
    relay.point_to(&broker);
    warroom_tests::kafka::produce_to(&addr, &topic, &lines[..half]);
    relay.cut();

    let state = tempfile::tempdir().unwrap();
    let mut kcfg = kafka_cfg(&topic, &unique("outage-group"), state.path());
    kcfg.brokers = addr.clone();
    kcfg.properties.insert("reconnect.backoff.max.ms".into(), "1000".into());
    let member = Member::start(kcfg);
    wait_until("degraded while the broker is unreachable at start", || {
        member.source.stats.health() == warroom_ingest::kafka::Health::Degraded
    });
    assert_eq!(member.read(), 0);

    relay.point_to(&broker);
    wait_until("first half read once the broker is reachable", || member.read() >= half as u64);
    wait_until("healthy", || member.source.stats.health() == warroom_ingest::kafka::Health::Ok);
    let before = member.engine.publish().0.totals;

    relay.cut();
    wait_until("degraded when the broker is lost", || {
        member.source.stats.health() == warroom_ingest::kafka::Health::Degraded
    });
    // Still serving the last state, a while into the outage.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(member.engine.publish().0.totals, before);

    relay.point_to(&broker);
    warroom_tests::kafka::produce_to(&addr, &topic, &lines[half..]);
    wait_until("second half read after the outage", || member.read() >= lines.len() as u64);
    wait_until("healthy again", || member.source.stats.health() == warroom_ingest::kafka::Health::Ok);
    // A little longer: a double read would show as more messages than were produced.
    std::thread::sleep(Duration::from_secs(1));
    let (engine, _, read) = member.stop();
    assert_eq!(read, lines.len() as u64, "each message read once");
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&engine.publish().0, &want, "across the outages");
    broker.kill();
}

/// Blocked upstream: the broker dies and a new, empty one comes up at the same address (here
/// with the topic created on it before clients can reach it). librdkafka 2.12.1 (bundled by
/// rdkafka-sys 4.10, the newest on crates.io) then segfaults in its own thread: a Fetch reply
/// carrying leader-change tags for a topic with a zero topic id makes
/// `rd_kafka_handle_Fetch_metadata_update` queue a metadata update with a NULL topic name,
/// and `rd_kafka_metadata_update_op` -> `rd_kafka_metadata_cache_find` -> `strcmp(NULL)`
/// crashes (rdkafka_fetcher.c passes `NULL` as the name; the family of
/// confluentinc/librdkafka#4907 and #5280). A restarted Kafka broker keeps its topics and ids,
/// which the test above covers (outage, same broker back). Until fixed, run the monitor under
/// a supervisor (deploy/): a crash loses and double-counts nothing
/// (crates/warroom/tests/kafka_crash.rs). Run it with `--ignored` to see the crash.
#[test]
#[ignore = "librdkafka 2.12.1 segfaults (strcmp on a NULL topic name) when a new empty broker replaces the old; see the doc comment"]
fn a_broker_lost_and_replaced_does_not_crash_or_wedge_the_monitor() {
    let relay = Relay::start();
    let addr = format!("127.0.0.1:{}", relay.port);
    let topic = unique("outage");
    let broker = PrivateBroker::start(relay.port);
    broker.create_topic(&topic, 4);
    relay.point_to(&broker);
    let first = input(3_000, 41);
    let first_lines = warroom_tests::lines(&first);
    warroom_tests::kafka::produce_to(&addr, &topic, &first_lines);

    let state = tempfile::tempdir().unwrap();
    let mut kcfg = kafka_cfg(&topic, &unique("outage-group"), state.path());
    kcfg.brokers = addr.clone();
    kcfg.properties.insert("reconnect.backoff.max.ms".into(), "1000".into());
    let member = Member::start(kcfg);
    wait_until("first events read", || member.read() >= first_lines.len() as u64);
    let before = member.engine.publish().0.totals;
    let positions = member.source.positions();

    relay.cut();
    broker.kill();
    wait_until("the source reports itself degraded", || {
        member.source.stats.health() == warroom_ingest::kafka::Health::Degraded
    });
    // Still serving the last state, a while into the outage.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(member.engine.publish().0.totals, before);

    let broker = PrivateBroker::start(relay.port);
    broker.create_topic(&topic, 4);
    relay.point_to(&broker);
    // Fewer new events per partition than the old positions: each partition's old position is
    // past the new log's end, so the consumer resets to the new log's start and reads it all.
    // (Other event ids than the first batch: the generator numbers them from 0 each time.)
    let second_text = String::from_utf8(input(400, 42)).unwrap().replace("\"e-", "\"second-e-");
    let second_lines: Vec<&[u8]> = second_text.lines().map(str::as_bytes).collect();
    let smallest_old = positions.next.values().min().copied().unwrap_or(0);
    assert!(second_lines.len() / 4 * 2 < smallest_old as usize, "old positions {positions:?}");
    warroom_tests::kafka::produce_to(&addr, &topic, &second_lines);
    wait_until("events of the new broker read", || member.read() >= (first_lines.len() + second_lines.len()) as u64);
    wait_until("healthy again", || member.source.stats.health() == warroom_ingest::kafka::Health::Ok);
    let (engine, _, read) = member.stop();
    assert_eq!(read, (first_lines.len() + second_lines.len()) as u64);
    let mut both = first_lines.clone();
    both.extend(&second_lines);
    let want = warroom_tests::reference(&both, &[60_000, 300_000, 3_600_000], 300_000);
    assert_eq!(engine.publish().0.totals.gmv_cents, want.totals.gmv_cents, "GMV of both brokers' events");
    assert_eq!(engine.publish().0.totals.accepted, want.totals.accepted);
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

/// Produces `lines` with the `warroom-rehearsal` header, as `warroom rehearse` does.
fn produce_rehearsal(topic: &str, lines: &[&[u8]]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    for l in lines {
        let headers = OwnedHeaders::new().insert(Header { key: warroom_ingest::rehearse::HEADER, value: Some("60") });
        let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(*l).headers(headers);
        if let Some(ts) = warroom_tests::kafka::sent_time(l) {
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
    producer.flush(Duration::from_secs(30)).expect("flush");
}

#[test]
fn a_live_monitor_refuses_a_rehearsals_messages_and_a_rehearsal_monitor_takes_them() {
    // A live stream, then a rehearsal's messages (other ids, tagged) on the same topic: the
    // mistake the guard is for (a rehearsal pointed at the live topic).
    let live_buf = input(3_000, 31);
    let live = warroom_tests::lines(&live_buf);
    let mut reh_buf = Vec::new();
    let cfg = GenConfig { seed: 32, merchant_change_share: 0.0, id_prefix: "reh.".into(), ..GenConfig::default() };
    write_night(cfg, 1_000, 1_794_312_000_000, 3_600_000, &mut reh_buf).unwrap();
    let rehearsal = warroom_tests::lines(&reh_buf);
    let topic = unique("guard");
    create_topic(&topic, 1);
    produce(&topic, &live);
    produce_rehearsal(&topic, &rehearsal);
    let all = live.len() + rehearsal.len();

    // Live: counts exactly the live stream; every rehearsal message is a counted rejection
    // with its reason, dead-lettered.
    let state = tempfile::tempdir().unwrap();
    let kcfg = kafka_cfg(&topic, &unique("live"), state.path());
    let member = Member::start(kcfg.clone());
    wait_until("all read by the live monitor", || member.read() >= all as u64);
    let (engine, _, _) = member.stop();
    let (snap, _) = engine.publish();
    let mut want = warroom_tests::reference(&live, &[60_000, 300_000, 3_600_000], 300_000);
    want.totals.rejected += rehearsal.len() as u64;
    warroom_tests::assert_matches_reference(&snap, &want, "live monitor, rehearsal messages refused");
    assert_eq!(snap.rejections.get("rehearsal_on_live"), Some(&(rehearsal.len() as u64)), "{:?}", snap.rejections);
    let letters = read_dead_letters(&kcfg.dlq(), snap.totals.rejected);
    let seen = letters.len();
    let mut payloads: Vec<Vec<u8>> = letters
        .into_iter()
        .filter(|l| l.headers.get("warroom-reason").map(String::as_str) == Some("rehearsal_on_live"))
        .map(|l| l.payload)
        .collect();
    // Dead letters are keyed like their originals, so they spread over the DLQ's partitions:
    // compare as sorted lists.
    let mut want_payloads: Vec<Vec<u8>> = rehearsal.iter().map(|l| l.to_vec()).collect();
    want_payloads.sort();
    payloads.sort();
    let missing = want_payloads.iter().filter(|p| payloads.binary_search(p).is_err()).count();
    assert_eq!(
        (payloads.len(), missing),
        (want_payloads.len(), 0),
        "every rehearsal message is in the DLQ as sent (seen {seen} dead letters)"
    );
    assert_eq!(payloads, want_payloads);

    // A rehearsal monitor on the same topic takes both (the live ones carry no header; its
    // tagging is tested elsewhere): nothing refused.
    let state = tempfile::tempdir().unwrap();
    let mut kcfg = kafka_cfg(&topic, &unique("rehearsal"), state.path());
    kcfg.rehearsal = true;
    let member = Member::start(kcfg);
    wait_until("all read by the rehearsal monitor", || member.read() >= all as u64);
    let (engine, _, _) = member.stop();
    let (snap, _) = engine.publish();
    let both: Vec<&[u8]> = live.iter().chain(&rehearsal).copied().collect();
    let want = warroom_tests::reference(&both, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, "rehearsal monitor");
    assert!(!snap.rejections.contains_key("rehearsal_on_live"), "{:?}", snap.rejections);
}

/// Produces `lines` to partition `partition_of(i)` of `topic`, stamped with their `ts`.
fn produce_to_partitions(topic: &str, lines: &[&[u8]], partition_of: impl Fn(usize) -> i32) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("linger.ms", "5").create().expect("producer");
    for (i, l) in lines.iter().enumerate() {
        let mut rec = BaseRecord::<(), [u8]>::to(topic).payload(*l).partition(partition_of(i));
        if let Some(ts) = warroom_tests::kafka::sent_time(l) {
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
    producer.flush(Duration::from_secs(30)).expect("flush");
}

#[test]
fn an_idle_partition_holds_back_neither_eviction_nor_windows() {
    // Four partitions; the events only ever go to three. The fourth is assigned and silent, as
    // a partition of a quiet producer is on the night. Horizons of a minute, so that ten
    // minutes of event time would keep every id if the silent partition held eviction back.
    let mut buf = Vec::new();
    let gcfg = GenConfig { seed: 8, late_share: 0.0, resend_share: 0.0, bad_share: 0.0, ..GenConfig::default() };
    warroom_ingest::gen::write_flat(gcfg, 24_000, 1_794_312_000_000, 600_000, &mut buf).unwrap();
    // Then some more traffic after the rest is in (the engine evicts when its watermark
    // moves on).
    for k in 0..30 {
        let ts = 1_794_312_600_000i64 + k * 100;
        buf.extend_from_slice(
            format!(r#"{{"event_id":"tail-{k}","type":"impression","ts":{ts},"user_id":"t{k}"}}"#).as_bytes(),
        );
        buf.push(b'\n');
    }
    let lines = warroom_tests::lines(&buf);
    let topic = unique("idle");
    create_topic(&topic, 4);
    let mut cfg = Config::default();
    cfg.engine.windows = vec![Duration::from_secs(30)];
    cfg.engine.dedupe_horizon = Duration::from_secs(60);
    cfg.engine.order_horizon = Duration::from_secs(60);
    cfg.race.window = Duration::from_secs(30);
    let state = tempfile::tempdir().unwrap();
    let mut kcfg = kafka_cfg(&topic, &unique("group"), state.path());
    kcfg.idle_partition_after = Duration::from_secs(2);

    let (engine, positions) = open_engine(cfg, &kcfg).unwrap();
    let engine = Arc::new(engine);
    let source = Arc::new(KafkaSource::new(engine.clone(), positions, kcfg, Limits::default()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (source, stop) = (source.clone(), stop.clone());
        std::thread::spawn(move || source.run(&stop))
    };
    // The busy partitions deliver all along, a slice every 150 ms (as live ones do); the fourth
    // is assigned and never delivers, and is declared idle once caught up and silent for 2 s.
    let tail = lines.len() - 30;
    for (k, chunk) in lines[..tail].chunks(600).enumerate() {
        produce_to_partitions(&topic, chunk, |i| ((i + k * 600) % 3) as i32);
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_until("the stream", || source.stats.messages.load(Ordering::Relaxed) >= tail as u64);
    assert!(source.stats.idle_partitions.load(Ordering::Relaxed) >= 1, "partition 3 is idle");
    produce_to_partitions(&topic, &lines[tail..], |i| (i % 3) as i32);
    wait_until("everything", || source.stats.messages.load(Ordering::Relaxed) >= lines.len() as u64);
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    let (snap, _) = engine.publish();
    // About a minute of ids of a ten-minute stream (40 events a second), not all of them.
    assert!(
        snap.counters.dedupe_ids < 4_000,
        "ids are evicted although partition 3 never delivers: {} kept of {}",
        snap.counters.dedupe_ids,
        lines.len()
    );
    let want = warroom_tests::reference(&lines, &[30_000], 30_000);
    warroom_tests::assert_matches_reference(&snap, &want, "three busy partitions and an idle one");
}
