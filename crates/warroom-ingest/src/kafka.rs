//! The Kafka source: a consumer group over all partitions of a topic, counting exactly once
//! across crashes and rebalances.
//!
//! How exactly-once works here:
//! - offsets are never stored or committed automatically; the source keeps, per partition,
//!   the next offset its engine state covers (its *position*);
//! - a checkpoint is the engine state together with those positions (one atomic file in
//!   `--state-dir`), written every `checkpoint_interval`, on partition revoke and on shutdown.
//!   Only after the checkpoint is on disk are the positions committed to the group;
//! - on start the engine is restored from the checkpoint, and each assigned partition resumes
//!   at `max(own position, committed offset)`: its own position after a crash (the checkpoint
//!   may be newer than the last commit), the committed offset when another member consumed
//!   that partition meanwhile (those events are in that member's state, not this one's).
//!
//! State and partitions: each member's state holds the events of the partitions it consumed,
//! up to its positions. When a partition moves, its earlier events stay in the old member's
//! state and later ones go to the new member: the group's merged state counts each event once.
//! De-duplication is per member, so a re-delivery of an event that moved with its partition is
//! not recognised by the new owner; keying partitions by user keeps re-deliveries together
//! (the design for state that moves with its partition is in deploy/README.md).
//!
//! Rejected messages go to `<topic>.dlq` with the original bytes and headers saying why and
//! where from, and are flushed before the positions past them are committed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use warroom_engine::{checkpoint, Config, Engine};
use warroom_model::Limits;

use crate::pipeline::ChunkProcessor;

/// Settings of the Kafka source (`[kafka]` in the config file, or flags).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Where checkpoints are written; one directory per monitor instance.
    pub state_dir: PathBuf,
    /// How often the state and positions are checkpointed and committed.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Messages applied per batch at most.
    pub batch_max: usize,
    /// Dead-letter topic; default `<topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// Any librdkafka property, passed through (e.g. `session.timeout.ms`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "warroom.events".into(),
            group: "warroom".into(),
            state_dir: PathBuf::from("state"),
            checkpoint_interval: Duration::from_secs(5),
            batch_max: 20_000,
            dlq_topic: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn dlq(&self) -> String {
        self.dlq_topic.clone().unwrap_or_else(|| format!("{}.dlq", self.topic))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("the checkpoint in {dir} is for topic `{found}`, not `{wanted}`: use another --state-dir per topic")]
    OtherTopic { dir: PathBuf, found: String, wanted: String },
}

/// What a checkpoint records of the source: the next offset the state covers, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub topic: String,
    pub next: BTreeMap<i32, i64>,
}

/// Builds the engine: restored from `state_dir` when a checkpoint is there, else fresh.
pub fn open_engine(cfg: Config, kafka: &KafkaConfig) -> Result<(Engine, Positions), KafkaSourceError> {
    match checkpoint::read(&kafka.state_dir)? {
        None => Ok((Engine::new(cfg), Positions { topic: kafka.topic.clone(), next: BTreeMap::new() })),
        Some((bytes, path)) => {
            let (engine, extra) = Engine::restore(cfg, &bytes, &path)?;
            let pos: Positions = serde_json::from_slice(&extra).unwrap_or_default();
            if pos.topic != kafka.topic {
                return Err(KafkaSourceError::OtherTopic {
                    dir: kafka.state_dir.clone(),
                    found: pos.topic,
                    wanted: kafka.topic.clone(),
                });
            }
            tracing::info!(path = %path.display(), partitions = pos.next.len(), "restored engine state from checkpoint");
            Ok((engine, pos))
        }
    }
}

/// Health of the source, for logs now and `/readyz` and metrics once the API exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Starting = 0,
    Ok = 1,
    /// The broker is unreachable or erroring: the monitor serves its last state and retries.
    Degraded = 2,
}

/// Counters of the source.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub messages: AtomicU64,
    pub rejected: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Partition assignments received (each sets the partitions' start offsets).
    pub assignments: AtomicU64,
    pub last_checkpoint_ms: AtomicU64,
    pub last_checkpoint_duration_us: AtomicU64,
    health: AtomicU8,
}

impl SourceStats {
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Ok,
            2 => Health::Degraded,
            _ => Health::Starting,
        }
    }

    fn set_health(&self, h: Health) {
        let old = self.health.swap(h as u8, Ordering::Relaxed);
        if old != h as u8 {
            match h {
                Health::Degraded => tracing::warn!(
                    "kafka source degraded: serving the last state and retrying; check that the brokers are reachable"
                ),
                Health::Ok => tracing::info!("kafka source healthy"),
                Health::Starting => {}
            }
        }
    }
}

/// Messages taken from the consumer but not yet applied, with their origin. Payloads and
/// keys are copied into one reused arena: no allocation per message.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    meta: Vec<Taken>,
}

struct Taken {
    payload: std::ops::Range<usize>,
    key: Option<std::ops::Range<usize>>,
    partition: i32,
    offset: i64,
}

struct Inner {
    proc: ChunkProcessor,
    pending: Pending,
    positions: Positions,
    last_checkpoint: Instant,
}

/// State shared by the poll loop and the rebalance callback (which runs inside `poll`).
struct Shared {
    engine: Arc<Engine>,
    cfg: KafkaConfig,
    dlq: ThreadedProducer<DefaultProducerContext>,
    inner: Mutex<Inner>,
    stats: Arc<SourceStats>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Shared {
    /// Applies the pending messages, dead-letters the rejected ones, advances positions.
    fn flush(&self, inner: &mut Inner) {
        let Inner { proc, pending, positions, .. } = inner;
        if pending.meta.is_empty() {
            return;
        }
        let msgs: Vec<&[u8]> = pending.meta.iter().map(|m| &pending.bytes[m.payload.clone()]).collect();
        let seqs: Vec<u64> = pending.meta.iter().map(|m| m.offset as u64).collect();
        let lanes: Vec<u16> = pending.meta.iter().map(|m| m.partition as u16).collect();
        let rejected = proc.process_messages(&msgs, &seqs, &lanes);
        self.stats.messages.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        self.stats.rejected.fetch_add(rejected.len() as u64, Ordering::Relaxed);
        let dlq = self.cfg.dlq();
        for r in rejected {
            let Taken { payload, key, partition, offset } = &pending.meta[r.line as usize];
            let (p, o) = (partition.to_string(), offset.to_string());
            let at = now_ms().to_string();
            let detail = r.rejection.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "warroom-reason", value: Some(r.rejection.reason.as_str()) })
                .insert(Header { key: "warroom-field", value: Some(r.rejection.field.unwrap_or("")) })
                .insert(Header { key: "warroom-detail", value: Some(detail.as_str()) })
                .insert(Header { key: "warroom-source-topic", value: Some(self.cfg.topic.as_str()) })
                .insert(Header { key: "warroom-source-partition", value: Some(p.as_str()) })
                .insert(Header { key: "warroom-source-offset", value: Some(o.as_str()) })
                .insert(Header { key: "warroom-rejected-at-ms", value: Some(at.as_str()) });
            let mut record =
                BaseRecord::<[u8], [u8]>::to(&dlq).payload(&pending.bytes[payload.clone()]).headers(headers);
            if let Some(k) = key {
                record = record.key(&pending.bytes[k.clone()]);
            }
            let mut record = Some(record);
            while let Some(rec) = record.take() {
                match self.dlq.send(rec) {
                    Ok(()) => {
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), rec)) => {
                        std::thread::sleep(Duration::from_millis(5));
                        record = Some(rec);
                    }
                    Err((e, _)) => {
                        tracing::error!(error = %e, partition, offset, "could not dead-letter a rejected message; it is counted in rejections")
                    }
                }
            }
        }
        for m in &pending.meta {
            positions.next.insert(m.partition, m.offset + 1);
        }
        pending.bytes.clear();
        pending.meta.clear();
    }

    /// Flushes, writes a checkpoint with the positions, then commits them to the group.
    fn checkpoint(&self, consumer: &BaseConsumer<Ctx>, inner: &mut Inner, why: &str) {
        self.flush(inner);
        let started = Instant::now();
        // Dead letters must be durable before the positions past them are.
        if let Err(e) = self.dlq.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "dead-letter queue not flushed; keeping the previous checkpoint");
            return;
        }
        let extra = serde_json::to_vec(&inner.positions).expect("positions serialise");
        let bytes = self.engine.checkpoint(&extra);
        match checkpoint::write_atomically(&self.cfg.state_dir, &bytes) {
            Ok(path) => {
                let took = started.elapsed();
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.stats.last_checkpoint_ms.store(now_ms() as u64, Ordering::Relaxed);
                self.stats.last_checkpoint_duration_us.store(took.as_micros() as u64, Ordering::Relaxed);
                tracing::debug!(why, path = %path.display(), bytes = bytes.len(), took_ms = took.as_millis() as u64, "checkpoint written");
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; offsets are not committed past the previous one. Check free space and permissions of --state-dir");
                return;
            }
        }
        inner.last_checkpoint = Instant::now();
        let mut tpl = TopicPartitionList::new();
        let assigned = consumer.assignment().unwrap_or_default();
        for e in assigned.elements_for_topic(&self.cfg.topic) {
            if let Some(&next) = inner.positions.next.get(&e.partition()) {
                let _ = tpl.add_partition_offset(&self.cfg.topic, e.partition(), Offset::Offset(next));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "offset commit failed; the checkpoint stays authoritative and the commit is retried at the next one");
            }
        }
    }
}

/// The consumer context: rebalances checkpoint before giving partitions up and set start
/// offsets when receiving them.
struct Ctx {
    shared: Mutex<Option<Arc<Shared>>>,
    stats: Arc<SourceStats>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        self.stats.set_health(Health::Degraded);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let Some(shared) = self.shared.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return };
        let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.stats.assignments.fetch_add(1, Ordering::Relaxed);
                let committed = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)).ok();
                let topic = shared.cfg.topic.clone();
                for e in tpl.clone().elements_for_topic(&topic) {
                    let p = e.partition();
                    let mine = inner.positions.next.get(&p).copied();
                    let theirs =
                        committed.as_ref().and_then(|c| c.find_partition(&topic, p)).and_then(|x| match x.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    let start = start_offset(mine, theirs);
                    if let Offset::Offset(o) = start {
                        inner.positions.next.insert(p, o);
                    }
                    let _ = tpl.set_partition_offset(&topic, p, start);
                    tracing::info!(partition = p, own = ?mine, committed = ?theirs, start = ?start, "partition assigned");
                }
                let lanes: Vec<u16> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition() as u16).collect();
                shared.engine.open_lanes(&lanes);
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "could not take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "partitions revoked: checkpointing before giving them up");
                shared.checkpoint(consumer, &mut inner, "revoke");
                for e in tpl.elements_for_topic(&shared.cfg.topic) {
                    shared.engine.retire_lane(e.partition() as u16);
                }
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment until the next one");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Where an assigned partition starts: this member's own position (its checkpoint may be
/// newer than the last commit, after a crash between the two) or the group's committed offset
/// (another member consumed the partition meanwhile: those events are in its state), whichever
/// is further; the beginning when neither exists.
pub fn start_offset(own: Option<i64>, committed: Option<i64>) -> Offset {
    match (own, committed) {
        (Some(a), Some(b)) => Offset::Offset(a.max(b)),
        (Some(a), None) | (None, Some(a)) => Offset::Offset(a),
        (None, None) => Offset::Beginning,
    }
}

/// A running Kafka source.
pub struct KafkaSource {
    consumer: BaseConsumer<Ctx>,
    shared: Arc<Shared>,
    pub stats: Arc<SourceStats>,
}

impl KafkaSource {
    /// Connects (lazily: an unreachable broker is retried, not fatal) and subscribes.
    pub fn new(
        engine: Arc<Engine>,
        positions: Positions,
        cfg: KafkaConfig,
        limits: Limits,
    ) -> Result<Self, KafkaSourceError> {
        let stats = Arc::new(SourceStats::default());
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let ctx = Ctx { shared: Mutex::new(None), stats: stats.clone() };
        let consumer: BaseConsumer<Ctx> = cc.create_with_context(ctx)?;
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &cfg.brokers).set("linger.ms", "5");
        let dlq: ThreadedProducer<DefaultProducerContext> = pc.create()?;
        let mut proc = ChunkProcessor::new(engine.clone(), limits);
        proc.keep_rejected = true;
        let shared = Arc::new(Shared {
            engine,
            dlq,
            inner: Mutex::new(Inner { proc, pending: Pending::default(), positions, last_checkpoint: Instant::now() }),
            stats: stats.clone(),
            cfg,
        });
        *consumer.context().shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
        consumer.subscribe(&[&shared.cfg.topic])?;
        Ok(KafkaSource { consumer, shared, stats })
    }

    /// Consumes until `stop` is set, then checkpoints and commits once more.
    pub fn run(&self, stop: &AtomicBool) {
        let batch_max = self.shared.cfg.batch_max.max(1);
        while !stop.load(Ordering::Relaxed) {
            let deadline = Instant::now() + Duration::from_millis(50);
            let mut taken = 0usize;
            while taken < batch_max && Instant::now() < deadline {
                match self.consumer.poll(Duration::from_millis(20)) {
                    None => continue,
                    Some(Ok(m)) => {
                        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
                        let p = &mut inner.pending;
                        let start = p.bytes.len();
                        p.bytes.extend_from_slice(m.payload().unwrap_or_default());
                        let payload = start..p.bytes.len();
                        let key = m.key().map(|k| {
                            let s = p.bytes.len();
                            p.bytes.extend_from_slice(k);
                            s..p.bytes.len()
                        });
                        p.meta.push(Taken { payload, key, partition: m.partition(), offset: m.offset() });
                        taken += 1;
                        self.stats.set_health(Health::Ok);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka poll error; retrying");
                        self.stats.set_health(Health::Degraded);
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                }
            }
            let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.flush(&mut inner);
            if inner.last_checkpoint.elapsed() >= self.shared.cfg.checkpoint_interval {
                self.shared.checkpoint(&self.consumer, &mut inner, "interval");
            }
        }
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.checkpoint(&self.consumer, &mut inner, "shutdown");
    }

    /// The positions the engine state covers now.
    pub fn positions(&self) -> Positions {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner()).positions.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_starts_at_the_further_of_own_position_and_commit() {
        // Crash after the checkpoint, before the commit: own position is newer.
        assert_eq!(start_offset(Some(120), Some(100)), Offset::Offset(120));
        // Another member consumed the partition meanwhile: its commit is newer.
        assert_eq!(start_offset(Some(100), Some(150)), Offset::Offset(150));
        assert_eq!(start_offset(None, Some(7)), Offset::Offset(7));
        assert_eq!(start_offset(Some(7), None), Offset::Offset(7));
        assert_eq!(start_offset(None, None), Offset::Beginning);
    }
}
