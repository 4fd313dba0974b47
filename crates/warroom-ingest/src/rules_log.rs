//! Race-rule changes shared by the API nodes through Kafka: a change made on any node is
//! appended to `<partials topic>.rules` (one partition: one order for everybody) and every
//! node reads that topic from its beginning and applies each change in order. So every node
//! ranks by the same rule (two changes made at once on two nodes end as the later one in the
//! log, everywhere), a node that starts or restarts takes every change made before it, and
//! every node journals every change in its history.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::kafka::{KafkaConfig, KafkaSourceError};

/// What a node does with each change read from the log, in order.
pub type Apply = Box<dyn Fn(&str) + Send + Sync>;

/// Tells the appending request whether its change was delivered.
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<std::sync::mpsc::SyncSender<Result<(), String>>>;
    fn delivery(&self, r: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        let _ = ack.send(r.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

pub struct KafkaRules {
    topic: String,
    producer: ThreadedProducer<Acks>,
    apply: Arc<OnceLock<Apply>>,
}

impl KafkaRules {
    /// Connects to the rules topic; reading starts once [`KafkaRules::apply_with`] is called
    /// (from the beginning: nothing is missed).
    pub fn start(cfg: &KafkaConfig) -> Result<Arc<KafkaRules>, KafkaSourceError> {
        let topic = format!("{}.rules", cfg.partials());
        let mut pc = cfg.client_config(&cfg.brokers)?;
        pc.set("linger.ms", "0");
        let producer: ThreadedProducer<Acks> = pc.create_with_context(Acks)?;
        let mut cc = cfg.client_config(&cfg.brokers)?;
        cc.set("group.id", format!("warroom-rules-{:x}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50");
        let consumer: BaseConsumer = cc.create()?;
        let apply: Arc<OnceLock<Apply>> = Arc::default();
        let rules = Arc::new(KafkaRules { topic: topic.clone(), producer, apply: apply.clone() });
        std::thread::Builder::new()
            .name("rules-log".into())
            .spawn(move || {
                let apply = loop {
                    match apply.get() {
                        Some(f) => break f,
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                // The topic appears with the first change made on any node.
                crate::claims::assign_from_beginning(&consumer, &topic, Duration::from_millis(500));
                loop {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => match m.payload().map(std::str::from_utf8) {
                            Some(Ok(text)) => apply(text),
                            _ => tracing::warn!(offset = m.offset(), "a rules-log record that is not text: skipped"),
                        },
                        Some(Err(e)) => tracing::warn!(error = %e, "reading the rules log; retrying"),
                        None => {}
                    }
                }
            })
            .expect("spawn the rules-log thread");
        Ok(rules)
    }

    /// Starts applying the log's changes with `f`, from the first one.
    pub fn apply_with(&self, f: Apply) {
        let _ = self.apply.set(f);
    }
}

impl warroom_status::RuleLog for KafkaRules {
    fn append(&self, venue: &str, body: &str) -> Result<(), String> {
        let (ack, acked) = std::sync::mpsc::sync_channel(1);
        self.producer
            .send(BaseRecord::with_opaque_to(&self.topic, Box::new(ack)).partition(0).key(venue).payload(body))
            .map_err(|(e, _)| format!("queueing the rule change for the other API nodes: {e}"))?;
        match acked.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => r.map_err(|e| format!("the rule change was not stored in Kafka ({}): {e}", self.topic)),
            Err(_) => Err(format!("no answer from Kafka in 10 s for the rule change ({})", self.topic)),
        }
    }
}
