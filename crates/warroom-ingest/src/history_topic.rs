//! History across workers and API nodes: each worker publishes, with every checkpoint of a
//! partition and before storing it, the minutes the partition counted since the previous one
//! (a [`HistoryBatch`]) on `<partials>.history`, keyed by the partition; every API node reads
//! that topic into its own history database. So all API nodes serve the same history,
//! derived from what Kafka holds, whichever of them was up at the time.
//!
//! A batch is numbered in its partition's state, which moves with the partition: a worker
//! killed after publishing batch `n` and before storing the state leaves the new owner to
//! rebuild batch `n` from the stored state, and the database replaces the first copy (see
//! `warroom_history`). Reading a batch twice (an API node restarted from older offsets) is
//! harmless for the same reason.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use warroom_engine::history::{HistoryBatch, HistoryNames, HistorySink, PartBatch};

use crate::kafka::{KafkaConfig, KafkaSourceError};

/// The wire form of a batch (postcard).
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    parts: Vec<PartBatch>,
    names: HistoryNames,
}

/// [`Wire`] borrowed: the same bytes without copying the batch.
#[derive(serde::Serialize)]
struct WireRef<'a> {
    parts: &'a [PartBatch],
    names: &'a HistoryNames,
}

pub fn encode(b: &HistoryBatch) -> Vec<u8> {
    postcard::to_allocvec(&WireRef { parts: &b.parts, names: &b.names }).expect("a batch serialises")
}

pub fn decode(bytes: &[u8]) -> Result<HistoryBatch, String> {
    let w: Wire = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    Ok(HistoryBatch { parts: w.parts, names: w.names })
}

/// The topic: `<partials>.history`.
pub fn topic(cfg: &KafkaConfig) -> String {
    format!("{}.history", cfg.partials())
}

#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            tracing::warn!(error = %e, "a history batch was not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A worker's side: publishes batches and waits until the brokers have them.
pub struct HistoryProducer {
    producer: BaseProducer<Deliveries>,
    topic: String,
}

impl HistoryProducer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaSourceError> {
        let mut pc = cfg.client_config(&cfg.brokers)?;
        pc.set("message.max.bytes", (64 << 20).to_string()).set("acks", "all").set("enable.idempotence", "true");
        Ok(HistoryProducer { producer: pc.create_with_context(Deliveries::default())?, topic: topic(cfg) })
    }

    /// Publishes `batch` under `key` and waits for the brokers to have it.
    pub fn send(&self, key: &str, batch: &HistoryBatch) -> Result<(), String> {
        let bytes = encode(batch);
        let before = self.producer.context().failed.load(Ordering::Relaxed);
        self.producer
            .send(BaseRecord::<str, [u8]>::to(&self.topic).key(key).payload(&bytes))
            .map_err(|(e, _)| format!("history batch not queued: {e}"))?;
        self.producer.flush(Duration::from_secs(10)).map_err(|e| format!("history batch not delivered: {e}"))?;
        if self.producer.context().failed.load(Ordering::Relaxed) != before {
            return Err("history batch not delivered (see the warning above)".into());
        }
        Ok(())
    }
}

/// Counters of an API node's history reader.
#[derive(Debug, Default)]
pub struct HistoryReaderStats {
    pub batches: AtomicU64,
    pub failed: AtomicU64,
}

/// An API node's side: reads every batch from the beginning (or from the offsets its
/// database kept) into the database.
pub struct HistoryReader {
    consumer: BaseConsumer,
    topic: String,
    sink: Arc<dyn HistorySink>,
    pub stats: Arc<HistoryReaderStats>,
}

impl HistoryReader {
    pub fn new(cfg: &KafkaConfig, sink: Arc<dyn HistorySink>) -> Result<Self, KafkaSourceError> {
        let mut cc = cfg.client_config(&cfg.brokers)?;
        cc.set("group.id", format!("warroom-history-{}-{}", std::process::id(), crate::now_ms()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.message.max.bytes", (64 << 20).to_string())
            .set("fetch.wait.max.ms", "100");
        Ok(HistoryReader { consumer: cc.create()?, topic: topic(cfg), sink, stats: Arc::default() })
    }

    /// Reads until `stop`, waiting for the topic to exist. `from` gives the next offset per
    /// partition kept from an earlier run; `done(partition, next)` is told what was stored.
    pub fn run(&self, stop: &AtomicBool, from: &dyn Fn(i32) -> Option<i64>, done: &dyn Fn(i32, i64)) {
        let mut assigned = 0usize;
        // A partition whose batch could not be stored keeps its offset where it was: a restart
        // reads the batch again.
        let mut failed: std::collections::HashSet<i32> = std::collections::HashSet::new();
        let mut last_check = std::time::Instant::now() - Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) {
            // New partitions (the topic appearing, or growing) are picked up every few seconds.
            if last_check.elapsed() >= Duration::from_secs(5) {
                last_check = std::time::Instant::now();
                if let Ok(md) = self.consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5)) {
                    let n = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == self.topic && t.error().is_none())
                        .map_or(0, |t| t.partitions().len());
                    if n > assigned {
                        let mut tpl = TopicPartitionList::new();
                        for p in 0..n as i32 {
                            let at = from(p).map_or(Offset::Beginning, Offset::Offset);
                            let _ = tpl.add_partition_offset(&self.topic, p, at);
                        }
                        match self.consumer.assign(&tpl) {
                            Ok(()) => assigned = n,
                            Err(e) => tracing::warn!(error = %e, "cannot assign the history topic; retrying"),
                        }
                    }
                }
            }
            if assigned == 0 {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let Some(msg) = self.consumer.poll(Duration::from_millis(200)) else { continue };
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "error reading the history topic");
                    continue;
                }
            };
            let r = decode(m.payload().unwrap_or_default()).and_then(|b| self.sink.store(&b));
            match r {
                Ok(()) => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    if !failed.contains(&m.partition()) {
                        done(m.partition(), m.offset() + 1);
                    }
                }
                Err(e) => {
                    failed.insert(m.partition());
                    // Never skipped silently: counted, logged; the batch is read again after
                    // a restart (its offset was not kept).
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, partition = m.partition(), offset = m.offset(), "a history batch was not stored; fix the database (disk?) and restart the node to read it again");
                }
            }
        }
    }
}
