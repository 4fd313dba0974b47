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
use std::sync::mpsc::{channel, sync_channel, Receiver, SendError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use warroom_engine::mem::recycle;
use warroom_engine::{checkpoint, Config, Engine};
use warroom_model::{Limits, Reason, Rejection};

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
    /// A partition caught up with its log end that delivers nothing for this long is idle:
    /// it stops holding back the eviction of old event ids (as Flink's `withIdleness`). A
    /// partition that is merely behind (a catch-up delivering other partitions first) is never
    /// idle. If an idle one delivers again, its events older than what was evicted meanwhile
    /// are refused as `beyond_dedupe_horizon`: never counted twice.
    #[serde(with = "humantime_serde")]
    pub idle_partition_after: Duration,
    /// Dead-letter topic; default `<topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// Any librdkafka property, passed through (e.g. `session.timeout.ms`).
    pub properties: BTreeMap<String, String>,
    /// This monitor runs a rehearsal (`warroom run --rehearsal-shift-ms`). A live one
    /// rejects messages carrying the rehearsal header as `rehearsal_on_live`.
    #[serde(skip)]
    pub rehearsal: bool,
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
            idle_partition_after: Duration::from_secs(30),
            dlq_topic: None,
            properties: BTreeMap::new(),
            rehearsal: false,
        }
    }
}

impl KafkaConfig {
    /// Every problem, each saying what to fix.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.checkpoint_interval.is_zero() {
            errs.push("kafka.checkpoint_interval must be above 0".to_string());
        }
        if self.batch_max == 0 {
            errs.push("kafka.batch_max must be above 0".to_string());
        }
        if self.idle_partition_after.is_zero() {
            errs.push("kafka.idle_partition_after must be above 0, e.g. \"30s\"".to_string());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

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
    /// Assigned partitions currently idle (caught up and silent).
    pub idle_partitions: AtomicU64,
    pub last_checkpoint_ms: AtomicU64,
    pub last_checkpoint_duration_us: AtomicU64,
    health: AtomicU8,
    /// Messages per second over the last measuring period, times 1000.
    rate_milli: AtomicU64,
    /// Per partition, the end of its log (high watermark) from librdkafka's statistics.
    ends: Mutex<BTreeMap<i32, i64>>,
}

impl SourceStats {
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Ok,
            2 => Health::Degraded,
            _ => Health::Starting,
        }
    }

    /// Messages applied per second, measured over the last second or so.
    pub fn rate(&self) -> f64 {
        self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Each partition's log end, as of librdkafka's last statistics (every second). Lag is
    /// this minus the position. (Tansu reports the base offset of the last batch as the high
    /// watermark, so there lag reads slightly low.)
    pub fn partition_ends(&self) -> BTreeMap<i32, i64> {
        self.ends.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

impl Pending {
    fn take(&mut self, m: &BorrowedMessage<'_>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(m.payload().unwrap_or_default());
        let payload = start..self.bytes.len();
        let key = m.key().map(|k| {
            let s = self.bytes.len();
            self.bytes.extend_from_slice(k);
            s..self.bytes.len()
        });
        let rehearsal = m.headers().is_some_and(|h| h.iter().any(|h| h.key == crate::rehearse::HEADER));
        let sent = m.timestamp().to_millis().unwrap_or(-1);
        self.meta.push(Taken { payload, key, partition: m.partition(), offset: m.offset(), sent, rehearsal });
    }
}

struct Taken {
    payload: std::ops::Range<usize>,
    key: Option<std::ops::Range<usize>>,
    partition: i32,
    offset: i64,
    /// The message's timestamp (CreateTime or LogAppendTime, ms; -1: none).
    sent: i64,
    /// Carries the `warroom-rehearsal` header.
    rehearsal: bool,
}

/// The applying side: the engine's decode-and-apply pipeline and the positions it covers.
struct Inner {
    proc: ChunkProcessor,
    positions: Positions,
}

/// What travels from the poll thread to the applier thread.
enum Job {
    Batch(Pending),
    /// Answered once every batch sent before it is applied.
    Barrier(SyncSender<()>),
}

/// The poll thread's side. Polling and applying overlap: while the applier thread decodes
/// and applies one batch, the poll thread fills the next, so librdkafka's queue keeps
/// draining (measured: applying in the poll thread left the fetcher idle half of the time).
struct Feed {
    pending: Pending,
    /// To the applier thread while `run` runs; without it batches are applied in place.
    to_applier: Option<SyncSender<Job>>,
    /// Applied batches' buffers, back for reuse: no allocation per batch once warm.
    spare: Option<Receiver<Pending>>,
    last_checkpoint: Instant,
}

/// State shared by the poll loop, the applier thread and the rebalance callback (which runs
/// inside `poll`). Lock order: `feed`, then `inner`; the applier takes only `inner`.
struct Shared {
    engine: Arc<Engine>,
    cfg: KafkaConfig,
    dlq: ThreadedProducer<DefaultProducerContext>,
    feed: Mutex<Feed>,
    inner: Mutex<Inner>,
    stats: Arc<SourceStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Shared {
    /// Sends the messages taken so far to the applier (or applies them here when it is not
    /// running).
    fn hand_over(&self, feed: &mut Feed) {
        if feed.pending.meta.is_empty() {
            return;
        }
        let Some(tx) = &feed.to_applier else {
            self.flush(&mut lock(&self.inner), &mut feed.pending);
            return;
        };
        let fresh = feed.spare.as_ref().and_then(|r| r.try_recv().ok()).unwrap_or_default();
        let batch = std::mem::replace(&mut feed.pending, fresh);
        if let Err(SendError(Job::Batch(mut batch))) = tx.send(Job::Batch(batch)) {
            // The applier is gone (it panicked): apply here rather than lose the batch.
            self.flush(&mut lock(&self.inner), &mut batch);
        }
    }

    /// Returns once every message taken so far is applied.
    fn settle(&self, feed: &mut Feed) {
        self.hand_over(feed);
        if let Some(tx) = &feed.to_applier {
            let (ack, done) = sync_channel(1);
            if tx.send(Job::Barrier(ack)).is_ok() {
                let _ = done.recv();
            }
        }
    }

    /// The applier thread: applies batches in the order they were taken.
    fn apply_batches(&self, jobs: Receiver<Job>, spare: std::sync::mpsc::Sender<Pending>) {
        for job in jobs {
            match job {
                Job::Batch(mut batch) => {
                    self.flush(&mut lock(&self.inner), &mut batch);
                    let _ = spare.send(batch);
                }
                Job::Barrier(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    }

    /// Applies the pending messages, dead-letters the rejected ones, advances positions.
    fn flush(&self, inner: &mut Inner, pending: &mut Pending) {
        let Inner { proc, positions } = inner;
        if pending.meta.is_empty() {
            return;
        }
        let _span = tracing::debug_span!("kafka_batch", messages = pending.meta.len()).entered();
        // A live monitor refuses a rehearsal's messages before decoding them.
        let refuse = |m: &Taken| m.rehearsal && !self.cfg.rehearsal;
        let mut rejected = Vec::new();
        let mut taken: Vec<usize> = Vec::with_capacity(pending.meta.len());
        for (i, m) in pending.meta.iter().enumerate() {
            if refuse(m) {
                self.engine.record_rejection(Reason::RehearsalOnLive);
                rejected.push((i, Rejection::new(Reason::RehearsalOnLive, None)));
            } else {
                taken.push(i);
            }
        }
        let meta = &pending.meta;
        let msgs: Vec<&[u8]> = taken.iter().map(|&i| &pending.bytes[meta[i].payload.clone()]).collect();
        let seqs: Vec<u64> = taken.iter().map(|&i| meta[i].offset as u64).collect();
        let lanes: Vec<u16> = taken.iter().map(|&i| meta[i].partition as u16).collect();
        let sent: Vec<i64> = taken.iter().map(|&i| meta[i].sent).collect();
        let decoded = proc.process_messages(&msgs, &seqs, &lanes, &sent);
        rejected.extend(decoded.into_iter().map(|r| (taken[r.line as usize], r.rejection)));
        self.stats.messages.fetch_add(meta.len() as u64, Ordering::Relaxed);
        self.stats.rejected.fetch_add(rejected.len() as u64, Ordering::Relaxed);
        let dlq = self.cfg.dlq();
        for (i, rejection) in rejected {
            let Taken { payload, key, partition, offset, .. } = &pending.meta[i];
            let (p, o) = (partition.to_string(), offset.to_string());
            let at = now_ms().to_string();
            let detail = rejection.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "warroom-reason", value: Some(rejection.reason.as_str()) })
                .insert(Header { key: "warroom-field", value: Some(rejection.field.unwrap_or("")) })
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
        // Cleared for reuse; after a catch-up burst, back to about twice a batch's size.
        recycle(&mut pending.bytes);
        recycle(&mut pending.meta);
    }

    /// Applies everything taken, writes a checkpoint with the positions, then commits them to
    /// the group.
    fn checkpoint(&self, consumer: &BaseConsumer<Ctx>, why: &str) {
        let mut feed = lock(&self.feed);
        self.settle(&mut feed);
        feed.last_checkpoint = Instant::now();
        let inner = lock(&self.inner);
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
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.stats.ends.lock().unwrap_or_else(|p| p.into_inner());
        ends.clear();
        for topic in statistics.topics.values() {
            for (p, part) in &topic.partitions {
                // librdkafka lists an internal partition -1; only assigned ones have an end.
                if *p >= 0 && part.hi_offset >= 0 {
                    ends.insert(*p, part.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        self.stats.set_health(Health::Degraded);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let Some(shared) = lock(&self.shared).clone() else { return };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut feed = lock(&shared.feed);
                shared.settle(&mut feed);
                let mut inner = lock(&shared.inner);
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
                shared.checkpoint(consumer, "revoke");
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

/// What the poll loop knows of each partition's deliveries, for idleness.
struct Idleness {
    /// When each partition last delivered a message.
    last: BTreeMap<i32, Instant>,
    /// Partitions declared idle to the engine.
    idle: BTreeMap<i32, bool>,
    checked: Instant,
    /// When polling started: a partition is not idle before it had the time to deliver.
    since: Instant,
}

impl Default for Idleness {
    fn default() -> Self {
        Idleness { last: BTreeMap::new(), idle: BTreeMap::new(), checked: Instant::now(), since: Instant::now() }
    }
}

impl Idleness {
    #[inline]
    fn delivered(&mut self, partition: i32) {
        match self.last.get_mut(&partition) {
            Some(t) => *t = Instant::now(),
            None => {
                self.last.insert(partition, Instant::now());
            }
        }
        // The engine clears its own mark when the lane delivers.
        if let Some(i) = self.idle.get_mut(&partition) {
            *i = false;
        }
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
            .set("partition.assignment.strategy", "range")
            // librdkafka's default (1 s) idles the fetcher for a whole second whenever its
            // queue is full, which a monitor busy applying a batch often lets happen: drain
            // rate 0.38-0.47 of a bare consumer with it, 0.54-0.74 with 10 ms (BENCHMARKS.md).
            .set("fetch.queue.backoff.ms", "10")
            // How long the broker may hold a fetch with no new data. Kafka answers as soon as
            // one byte is there; Tansu was seen holding fetches of a 4-partition topic for about
            // 2 s at 2k events/s with the 500 ms default (frames 1-2 s late). 100 ms costs an
            // idle consumer ten small requests a second.
            .set("fetch.wait.max.ms", "100")
            // Partition ends for the lag metric (the `stats` callback).
            .set("statistics.interval.ms", "1000");
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
            feed: Mutex::new(Feed {
                pending: Pending::default(),
                to_applier: None,
                spare: None,
                last_checkpoint: Instant::now(),
            }),
            inner: Mutex::new(Inner { proc, positions }),
            stats: stats.clone(),
            cfg,
        });
        *consumer.context().shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
        consumer.subscribe(&[&shared.cfg.topic])?;
        Ok(KafkaSource { consumer, shared, stats })
    }

    /// Consumes until `stop` is set, then checkpoints and commits once more.
    pub fn run(&self, stop: &AtomicBool) {
        let (jobs_tx, jobs) = sync_channel::<Job>(1);
        let (spare_tx, spare) = channel();
        {
            let mut feed = lock(&self.shared.feed);
            feed.to_applier = Some(jobs_tx);
            feed.spare = Some(spare);
        }
        std::thread::scope(|scope| {
            let applier = std::thread::Builder::new()
                .name("warroom-apply".into())
                .spawn_scoped(scope, || self.shared.apply_batches(jobs, spare_tx))
                .expect("spawn the applier thread");
            self.poll_until(stop);
            let mut feed = lock(&self.shared.feed);
            self.shared.settle(&mut feed);
            feed.to_applier = None;
            feed.spare = None;
            drop(feed);
            if applier.join().is_err() {
                tracing::error!("the applier thread panicked; its batch was applied in the poll thread instead");
            }
        });
        self.shared.checkpoint(&self.consumer, "shutdown");
    }

    fn poll_until(&self, stop: &AtomicBool) {
        let batch_max = self.shared.cfg.batch_max.max(1);
        let mut rate_since = (Instant::now(), self.stats.messages.load(Ordering::Relaxed));
        let mut idle = Idleness::default();
        while !stop.load(Ordering::Relaxed) {
            if idle.checked.elapsed() >= Duration::from_secs(1) {
                self.update_idle_partitions(&mut idle);
            }
            let elapsed = rate_since.0.elapsed();
            if elapsed >= Duration::from_secs(1) {
                let now = self.stats.messages.load(Ordering::Relaxed);
                let rate = (now - rate_since.1) as f64 / elapsed.as_secs_f64();
                self.stats.rate_milli.store((rate * 1000.0) as u64, Ordering::Relaxed);
                rate_since = (Instant::now(), now);
            }
            let deadline = Instant::now() + Duration::from_millis(50);
            let mut taken = 0usize;
            while taken < batch_max {
                // The clock is read every 64 messages: once per message was measurable.
                if taken.is_multiple_of(64) && Instant::now() >= deadline {
                    break;
                }
                match self.consumer.poll(Duration::from_millis(20)) {
                    None => {
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    Some(Ok(m)) => {
                        idle.delivered(m.partition());
                        lock(&self.shared.feed).pending.take(&m);
                        taken += 1;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka poll error; retrying");
                        self.stats.set_health(Health::Degraded);
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                }
            }
            if taken > 0 {
                self.stats.set_health(Health::Ok);
            }
            let due = {
                let mut feed = lock(&self.shared.feed);
                self.shared.hand_over(&mut feed);
                feed.last_checkpoint.elapsed() >= self.shared.cfg.checkpoint_interval
            };
            if due {
                self.shared.checkpoint(&self.consumer, "interval");
            }
        }
    }

    /// Declares idle the assigned partitions that are caught up with their log end and have
    /// delivered nothing for `idle_partition_after`; and active again those that delivered.
    fn update_idle_partitions(&self, idle: &mut Idleness) {
        idle.checked = Instant::now();
        let after = self.shared.cfg.idle_partition_after;
        let ends = self.stats.partition_ends();
        let positions = self.positions();
        let assigned = self.consumer.assignment().unwrap_or_default();
        let mut changes = Vec::new();
        for e in assigned.elements_for_topic(&self.shared.cfg.topic) {
            let p = e.partition();
            let caught_up = match (positions.next.get(&p), ends.get(&p)) {
                (Some(&pos), Some(&end)) => pos >= end,
                (None, Some(&end)) => end <= 0,
                _ => false,
            };
            let quiet = idle.last.get(&p).is_none_or(|t| t.elapsed() >= after) && idle.since.elapsed() >= after;
            let now_idle = caught_up && quiet;
            if idle.idle.get(&p).copied().unwrap_or(false) != now_idle {
                idle.idle.insert(p, now_idle);
                changes.push((p as u16, now_idle));
                tracing::debug!(partition = p, idle = now_idle, "partition idleness changed");
            }
        }
        if !changes.is_empty() {
            self.shared.engine.set_idle_lanes(&changes);
        }
        self.stats.idle_partitions.store(idle.idle.values().filter(|&&i| i).count() as u64, Ordering::Relaxed);
    }

    /// The positions the engine state covers now.
    pub fn positions(&self) -> Positions {
        lock(&self.shared.inner).positions.clone()
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
