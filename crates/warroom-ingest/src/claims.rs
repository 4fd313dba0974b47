//! Alerts sent once by several API nodes, through Kafka and without a leader: each node that
//! wants to send an alert change appends a *claim* (alert id, state, node, nonce) to
//! `<partials topic>.alerts` (one partition: one order for everybody) and reads the topic back
//! to its own claim. For each alert, the first claim of a state it was not in before (a
//! transition) names the sender of that transition; later claims of the same state (another
//! node, or a node restarted mid-alert) are not. Every node reads the same log, so they agree,
//! and exactly one sends. A node that cannot get an answer in time sends anyway (better twice
//! than never).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::kafka::{KafkaConfig, KafkaSourceError};

/// What the log says so far: per alert, its state and which node's claim made the transition;
/// the nonces of this node's claims read back.
#[derive(Default)]
struct Log {
    alerts: HashMap<String, (String, u64)>,
    seen: HashMap<u64, (String, u64)>,
}

pub struct KafkaClaims {
    topic: String,
    node: u64,
    producer: ThreadedProducer<DefaultProducerContext>,
    log: Arc<(Mutex<Log>, Condvar)>,
    wait: Duration,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl KafkaClaims {
    /// Starts reading the claims topic from its beginning (a node that starts mid-alert must
    /// know which alerts are firing and who sent them).
    pub fn start(cfg: &KafkaConfig) -> Result<Arc<KafkaClaims>, KafkaSourceError> {
        let topic = format!("{}.alerts", cfg.partials());
        let node = warroom_status::node_id();
        let mut pc = cfg.client_config(&cfg.brokers)?;
        pc.set("linger.ms", "0");
        let producer: ThreadedProducer<DefaultProducerContext> = pc.create()?;
        let mut cc = cfg.client_config(&cfg.brokers)?;
        cc.set("group.id", format!("warroom-claims-{node:x}"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20");
        let consumer: BaseConsumer = cc.create()?;
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let claims = Arc::new(KafkaClaims {
            topic: topic.clone(),
            node,
            producer,
            log: log.clone(),
            wait: Duration::from_secs(5),
        });
        std::thread::Builder::new()
            .name("alert-claims".into())
            .spawn(move || {
                // The topic appears with the first claim of any node.
                assign_from_beginning(&consumer, &topic, Duration::from_millis(200));
                loop {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
                    let Some(text) = m.payload().and_then(|p| std::str::from_utf8(p).ok()) else { continue };
                    // id \t state \t node \t nonce
                    let f: Vec<&str> = text.split('\t').collect();
                    let [id, state, who, nonce] = f[..] else { continue };
                    let (Ok(who), Ok(nonce)) = (u64::from_str_radix(who, 16), nonce.parse::<u64>()) else { continue };
                    let (lock, cv) = &*log;
                    let mut l = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let e = l.alerts.entry(id.to_string()).or_insert_with(|| (String::new(), 0));
                    if e.0 != state {
                        *e = (state.to_string(), who);
                    }
                    let owner = e.clone();
                    l.seen.insert(nonce, owner);
                    cv.notify_all();
                }
            })
            .expect("spawn the alert-claims thread");
        Ok(claims)
    }
}

/// Assigns partition 0 of `topic` from its beginning, once the topic exists (retrying every
/// `every`): the log topics (claims, rules) appear with their first record.
pub(crate) fn assign_from_beginning(consumer: &BaseConsumer, topic: &str, every: Duration) {
    loop {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(topic, 0, Offset::Beginning);
        let exists = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .is_ok_and(|md| md.topics().iter().any(|t| t.name() == topic && !t.partitions().is_empty()));
        if exists && consumer.assign(&tpl).is_ok() {
            return;
        }
        std::thread::sleep(every);
    }
}

impl warroom_status::AlertClaims for KafkaClaims {
    fn claim(&self, id: &str, state: &str) -> bool {
        let nonce = now_ns();
        let body = format!("{id}\t{state}\t{:x}\t{nonce}", self.node);
        if self.producer.send(BaseRecord::<str, str>::to(&self.topic).partition(0).key(id).payload(&body)).is_err() {
            tracing::warn!(alert = id, "alert claim not queued; sending the alert from this node");
            return true;
        }
        let _ = self.producer.flush(Duration::from_secs(2));
        let (lock, cv) = &*self.log;
        let deadline = Instant::now() + self.wait;
        let mut l = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((s, owner)) = l.seen.remove(&nonce) {
                return s == state && owner == self.node;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(alert = id, "alert claim not read back in time; sending the alert from this node");
                return true;
            }
            l = cv.wait_timeout(l, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}
