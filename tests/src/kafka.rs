//! Helpers for tests against the real broker that scripts/test.sh starts.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

pub fn brokers() -> String {
    std::env::var("WARROOM_KAFKA_BROKERS")
        .expect("WARROOM_KAFKA_BROKERS is not set: run the tests with scripts/test.sh, which starts a broker")
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{n}", std::process::id())
}

pub fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let rt = block_on(
        admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()),
    );
    for r in rt.expect("create_topics") {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Polls the admin client's future to completion (the tests need no async runtime otherwise;
/// rdkafka completes it from its own thread, so polling with a no-op waker suffices).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Produces every line, keyed by its user (so a user's events share a partition).
pub fn produce(topic: &str, lines: &[&[u8]]) {
    produce_with(&brokers(), topic, lines, true)
}

/// Like [`produce`], to the given brokers.
pub fn produce_to(brokers: &str, topic: &str, lines: &[&[u8]]) {
    produce_with(brokers, topic, lines, true)
}

/// Produces every line without a key: events (and re-deliveries) spread over partitions.
pub fn produce_unkeyed(topic: &str, lines: &[&[u8]]) {
    produce_with(&brokers(), topic, lines, false)
}

fn produce_with(brokers: &str, topic: &str, lines: &[&[u8]], keyed: bool) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().expect("producer");
    for l in lines {
        let key = serde_json::from_slice::<serde_json::Value>(l)
            .ok()
            .filter(|_| keyed)
            .and_then(|v| v.get("user_id").and_then(|u| u.as_str()).map(str::to_owned));
        let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(*l);
        if let Some(k) = &key {
            rec = rec.key(k.as_str());
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
