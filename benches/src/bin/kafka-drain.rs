//! `kafka-drain BROKERS [EVENTS]`: the Kafka issue's speed bar. Pre-fills a 4-partition topic
//! with generated events, then drains it twice in one run:
//! 1. a bare rdkafka consumer that only reads the messages (assigned partitions, no work);
//! 2. the monitor's Kafka source (consumer group, decode, engine, DLQ, checkpoints).
//!
//! Each is timed from its first message to its last, so the group join is not counted.
//! Prints both rates, the ratio and each one's CPU time per message (this process only; the
//! broker's is not included) as one JSON line. Extra consumer properties for experiments:
//! `DRAIN_PROPS=key=value,...`; the monitor's batch size: `DRAIN_BATCH=N`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use warroom_engine::{Config, Engine};
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::kafka::{KafkaConfig, KafkaSource, Positions};
use warroom_model::Limits;

fn main() {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().expect("usage: kafka-drain BROKERS [EVENTS]");
    let events: u64 = args.next().map_or(400_000, |n| n.parse().expect("EVENTS is a number"));
    let mut buf = Vec::new();
    write_night(GenConfig::default(), events, 1_794_312_000_000, 6 * 3_600_000, &mut buf).unwrap();
    let lines: Vec<&[u8]> = warroom_ingest::pipeline::split_lines(&buf).collect();
    let topic = format!("drain-{}", std::process::id());
    std::env::set_var("WARROOM_KAFKA_BROKERS", &brokers);
    warroom_benches::create_topic(&brokers, &topic, 4);
    let t = Instant::now();
    warroom_tests_free::produce(&brokers, &topic, &lines);
    eprintln!("produced {} messages in {:.1} s", lines.len(), t.elapsed().as_secs_f64());
    let n = lines.len() as u64;

    // 1. Bare consumer.
    let bare: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bare-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    bare.assign(&tpl).unwrap();
    let (mut read, mut bytes, mut first) = (0u64, 0usize, None);
    let mut bare_cpu0 = 0.0;
    while read < n {
        if let Some(Ok(m)) = bare.poll(Duration::from_millis(100)) {
            if first.is_none() {
                first = Some(Instant::now());
                bare_cpu0 = cpu_s();
            }
            bytes += m.payload().map_or(0, <[u8]>::len);
            read += 1;
        }
    }
    let bare_s = first.unwrap().elapsed().as_secs_f64();
    let bare_cpu = cpu_s() - bare_cpu0;
    drop(bare);

    // 2. The monitor's source.
    let state = std::env::temp_dir().join(format!("warroom-drain-{}", std::process::id()));
    let mut props = std::collections::BTreeMap::new();
    props.insert("session.timeout.ms".to_string(), "6000".to_string());
    props.insert("max.poll.interval.ms".to_string(), "7000".to_string());
    for kv in std::env::var("DRAIN_PROPS").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap();
        props.insert(k.to_string(), v.to_string());
    }
    let kcfg = KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        group: format!("monitor-{}", std::process::id()),
        state_dir: state.clone(),
        properties: props,
        batch_max: std::env::var("DRAIN_BATCH").map_or(20_000, |b| b.parse().unwrap()),
        ..KafkaConfig::default()
    };
    let engine = Arc::new(Engine::new(Config::default()));
    let source = Arc::new(
        KafkaSource::new(
            engine.clone(),
            Positions { topic: topic.clone(), ..Positions::default() },
            kcfg,
            Limits::default(),
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (s, stop) = (source.clone(), stop.clone());
        std::thread::spawn(move || s.run(&stop))
    };
    while source.stats.messages.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let first = Instant::now();
    let cpu0 = cpu_s();
    while source.stats.messages.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    let monitor_s = first.elapsed().as_secs_f64();
    let monitor_cpu = cpu_s() - cpu0;
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    let _ = std::fs::remove_dir_all(&state);
    let (bare_rate, mon_rate) = (n as f64 / bare_s, n as f64 / monitor_s);
    println!(
        "{{\"messages\":{n},\"bytes\":{bytes},\"bare_seconds\":{bare_s:.3},\"bare_per_s\":{bare_rate:.0},\"monitor_seconds\":{monitor_s:.3},\"monitor_per_s\":{mon_rate:.0},\"monitor_over_bare\":{:.3},\"bare_cpu_us_per_msg\":{:.2},\"monitor_cpu_us_per_msg\":{:.2},\"accepted\":{}}}",
        mon_rate / bare_rate,
        bare_cpu * 1e6 / n as f64,
        monitor_cpu * 1e6 / n as f64,
        engine.publish().0.totals.accepted
    );
}

fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Producing, without the test crate.
mod warroom_tests_free {
    use std::time::Duration;

    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    pub fn produce(brokers: &str, topic: &str, lines: &[&[u8]]) {
        let p: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().unwrap();
        for l in lines {
            // Sent at the event's own time: a recorded night produced as if live.
            let ts = serde_json::from_slice::<serde_json::Value>(l).ok().and_then(|v| v["ts"].as_i64());
            let mut rec = BaseRecord::<(), [u8]>::to(topic).payload(*l);
            if let Some(ts) = ts.filter(|t| *t >= 0) {
                rec = rec.timestamp(ts);
            }
            let mut rec = Some(rec);
            while let Some(r) = rec.take() {
                if let Err((_, r)) = p.send(r) {
                    std::thread::sleep(Duration::from_millis(2));
                    rec = Some(r);
                }
            }
        }
        p.flush(Duration::from_secs(60)).unwrap();
    }
}
