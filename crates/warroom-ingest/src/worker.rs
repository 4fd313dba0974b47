//! The ingest worker (`warroom run --source worker`): one member of the consumer group, whose
//! state is kept **per input partition** and moves with it.
//!
//! - Each assigned partition has an engine of its own (one shard: a partition is applied in
//!   order by one thread). Contract v1.1 keys re-deliveries and re-sent pays to one partition,
//!   so de-duplication is partition-local and a partition's state is a unit.
//! - A partition's state is checkpointed (with its position and generation) to the **state
//!   store**, a directory every worker reads, every `checkpoint_interval` and when the
//!   partition is revoked; then its offset is committed. The committed offset never runs ahead
//!   of the stored state.
//! - A partition assigned to this worker resumes from the store: the state and the position
//!   it covers (nothing stored: from the partition's beginning). It gets a new *generation*
//!   (above the stored one and the wall clock in ms), so readers drop whatever its former
//!   owner still publishes. A crash after the last checkpoint loses nothing: the new owner
//!   re-applies from the stored position into the stored state, and its first (full) partial
//!   replaces everything the crashed owner had published.
//! - Every `partial_interval` each partition's [`Partial`] (what changed) goes to the partials
//!   topic, keyed by `topic/partition`; every `full_partial_interval` a full one. The API nodes
//!   merge them ([`crate::partials`]).
//! - Windows of all partitions are brought to one clock before each round of partials (as an
//!   engine brings its shards to its watermark before a publish): the newest event time of any
//!   worker. Each worker writes its own to the small `<partials topic>.clock` topic with every
//!   round and reads the others' from it, so a worker whose partitions are quieter does not
//!   leave stale events in its windows (Kafka carries it; no RPC between workers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use warroom_engine::partial::PartialWriter;
use warroom_engine::{checkpoint, Config, Engine};
use warroom_model::{Limits, Rejection};
use warroom_status::Exposition;
use warroom_status::Kind::{Counter, Gauge};

use crate::dlq::{DeadLetters, Letter};
use crate::kafka::{KafkaConfig, KafkaSourceError};
use crate::pipeline::ChunkProcessor;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where each partition's state is kept for any worker to restore: `<dir>/<topic>/<partition>/`
/// holding one checkpoint file (written atomically).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// What a partition's checkpoint stores beside the engine state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PartitionPosition {
    /// The next offset the state does not cover.
    pub next: i64,
    pub generation: u64,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    fn dir_of(&self, topic: &str, partition: i32) -> PathBuf {
        self.dir.join(topic).join(partition.to_string())
    }

    pub fn put(&self, topic: &str, partition: i32, bytes: &[u8]) -> Result<PathBuf, checkpoint::CheckpointError> {
        checkpoint::write_atomically(&self.dir_of(topic, partition), bytes)
    }

    pub fn get(&self, topic: &str, partition: i32) -> Result<Option<(Vec<u8>, PathBuf)>, checkpoint::CheckpointError> {
        checkpoint::read(&self.dir_of(topic, partition))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// A partition this worker holds.
struct Owned {
    engine: Arc<Engine>,
    proc: ChunkProcessor,
    writer: PartialWriter,
    pos: PartitionPosition,
    /// The position of its last checkpoint in the store, and a hash of its bytes.
    saved: i64,
    digest: u64,
    last_full: Instant,
    /// History batches taken with checkpoints that were not published yet: sent first next
    /// time; the state is not stored until they are.
    history: Vec<warroom_engine::history::HistoryBatch>,
}

/// Counters of a worker, for `/metrics`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub messages: AtomicU64,
    pub rejected: AtomicU64,
    pub partials: AtomicU64,
    pub partial_bytes: AtomicU64,
    pub full_partials: AtomicU64,
    pub partials_dropped: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    pub restores: AtomicU64,
    /// Time spent restoring partitions from the store, µs (all restores).
    pub restore_us: AtomicU64,
    pub assignments: AtomicU64,
}

struct Shared {
    cfg: KafkaConfig,
    engine_cfg: Config,
    limits: Limits,
    store: StateStore,
    dlq: DeadLetters,
    owned: Mutex<BTreeMap<i32, Owned>>,
    /// Revoked partitions, kept until the next assignment: given back unchanged (nobody
    /// stored a newer state meanwhile), they need no restore.
    parked: Mutex<BTreeMap<i32, Owned>>,
    stats: Arc<WorkerStats>,
    history: crate::history_topic::HistoryProducer,
}

impl Shared {
    fn part_name(&self, partition: i32) -> String {
        format!("{}/{partition}", self.cfg.topic)
    }

    /// The partition's state from the store, or a new one; `None` with the reason logged
    /// when the stored state cannot be read (the partition is then not consumed: counting it
    /// from scratch would lose the night so far).
    fn take_over(&self, partition: i32) -> Option<Owned> {
        let started = Instant::now();
        let generation_floor = now_ms().max(0) as u64;
        let stored = match self.store.get(&self.cfg.topic, partition) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(partition, error = %e, "cannot read the partition's stored state; not consuming it (check the state store's mount and permissions)");
                return None;
            }
        };
        let (engine, pos) = match stored {
            None => {
                (Engine::new(self.engine_cfg.clone()), PartitionPosition { next: -1, generation: generation_floor })
            }
            Some((bytes, path)) => match Engine::restore(self.engine_cfg.clone(), &bytes, &path) {
                Ok((engine, extra)) => match serde_json::from_slice::<PartitionPosition>(&extra) {
                    Ok(p) => {
                        let us = started.elapsed().as_micros() as u64;
                        self.stats.restores.fetch_add(1, Ordering::Relaxed);
                        self.stats.restore_us.fetch_add(us, Ordering::Relaxed);
                        tracing::info!(
                            partition,
                            next = p.next,
                            bytes = bytes.len(),
                            took_ms = us / 1000,
                            "partition state restored from the store"
                        );
                        (
                            engine,
                            PartitionPosition { next: p.next, generation: (p.generation + 1).max(generation_floor) },
                        )
                    }
                    Err(e) => {
                        tracing::error!(partition, path = %path.display(), error = %e, "the stored state has no readable position; not consuming the partition");
                        return None;
                    }
                },
                Err(e) => {
                    tracing::error!(partition, path = %path.display(), error = %e, "the stored state cannot be restored; not consuming the partition");
                    return None;
                }
            },
        };
        let engine = Arc::new(engine);
        let mut proc = ChunkProcessor::new(engine.clone(), self.limits);
        proc.keep_rejected = true;
        Some(Owned {
            writer: PartialWriter::new(self.part_name(partition), pos.generation),
            engine,
            proc,
            saved: pos.next,
            digest: 0,
            pos,
            last_full: Instant::now(),
            history: Vec::new(),
        })
    }

    /// Stores the partition's state; true when it is in the store.
    fn checkpoint(&self, partition: i32, o: &mut Owned) -> bool {
        if o.saved == o.pos.next {
            return true;
        }
        let extra = serde_json::to_vec(&o.pos).expect("a position serialises");
        // The minutes counted since the last checkpoint go to the history topic first: a
        // state stored without them would lose them (see crate::history_topic).
        let (bytes, batch) = o.engine.checkpoint_with_history(&extra);
        // Empty batches too: a restored state's batch numbers undo what a former owner stored
        // and never persisted the state of.
        o.history.push(batch);
        let key = self.part_name(partition);
        while let Some(b) = o.history.first() {
            if let Err(e) = self.history.send(&key, b) {
                self.stats.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition, error = %e, pending = o.history.len(), "history not published; the partition's state is not stored until it is (check the brokers)");
                return false;
            }
            o.history.remove(0);
        }
        match self.store.put(&self.cfg.topic, partition, &bytes) {
            Ok(_) => {
                o.saved = o.pos.next;
                o.digest = xxhash_rust::xxh3::xxh3_64(&bytes);
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.stats.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition, error = %e, "partition checkpoint failed; its offset is not committed past the previous one. Check the state store's free space and permissions");
                false
            }
        }
    }

    /// Checkpoints every partition held, waits for their dead letters, commits their offsets.
    fn checkpoint_all(&self, consumer: &BaseConsumer<Ctx>, owned: &mut BTreeMap<i32, Owned>) {
        let before = self.dlq.next_id();
        if !self.dlq.wait_delivered(before, Duration::from_secs(2)) {
            tracing::warn!("checkpoint skipped: dead letters not delivered yet");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, o) in owned.iter_mut() {
            if self.checkpoint(p, o) && o.saved >= 0 {
                let _ = tpl.add_partition_offset(&self.cfg.topic, p, Offset::Offset(o.saved));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "offset commit failed; the store stays authoritative");
            }
        }
    }

    /// Applies messages of one partition; rejected ones go to the dead-letter topic.
    fn apply(&self, o: &mut Owned, partition: i32, msgs: &[BorrowedMessage<'_>]) {
        let _span = tracing::debug_span!("apply", partition, messages = msgs.len()).entered();
        let payloads: Vec<&[u8]> = msgs.iter().map(|m| m.payload().unwrap_or_default()).collect();
        let seqs: Vec<u64> = msgs.iter().map(|m| m.offset() as u64).collect();
        let lanes = vec![0u16; msgs.len()];
        let sent: Vec<i64> = msgs.iter().map(|m| m.timestamp().to_millis().unwrap_or(-1)).collect();
        let rejected = o.proc.process_messages(&payloads, &seqs, &lanes, &sent);
        self.stats.messages.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        self.stats.rejected.fetch_add(rejected.len() as u64, Ordering::Relaxed);
        for r in rejected {
            let m = &msgs[r.line as usize];
            self.dead_letter(m, partition, r.rejection);
        }
        if let Some(m) = msgs.last() {
            o.pos.next = m.offset() + 1;
        }
    }

    fn dead_letter(&self, m: &BorrowedMessage<'_>, partition: i32, rejection: Rejection) {
        let headers = crate::dlq::rejection_headers(&rejection, &self.cfg.topic, partition, m.offset());
        self.dlq.send(Letter {
            payload: m.payload().unwrap_or_default().to_vec(),
            key: m.key().map(|k| k.to_vec()),
            headers,
            partition,
            offset: m.offset(),
        });
    }
}

/// The consumer context: partitions are checkpointed to the store before they are given up,
/// and restored from it (or taken back from the parked ones) when assigned.
struct Ctx {
    shared: Mutex<Option<Arc<Shared>>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let Some(shared) = lock(&self.shared).clone() else { return };
        let topic = shared.cfg.topic.clone();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                shared.stats.assignments.fetch_add(1, Ordering::Relaxed);
                let mut owned = lock(&shared.owned);
                let mut parked = std::mem::take(&mut *lock(&shared.parked));
                let mut take = TopicPartitionList::new();
                for e in tpl.elements_for_topic(&topic) {
                    let p = e.partition();
                    // Taken back unchanged when nobody stored a newer state meanwhile; a new
                    // generation either way (another worker may have published meanwhile).
                    let stored =
                        shared.store.get(&topic, p).ok().flatten().map(|(b, _)| xxhash_rust::xxh3::xxh3_64(&b));
                    let back =
                        parked.remove(&p).filter(|o| stored == Some(o.digest) || (stored.is_none() && o.saved < 0));
                    let o = match back {
                        Some(mut o) => {
                            o.pos.generation = (o.pos.generation + 1).max(now_ms() as u64);
                            o.writer = PartialWriter::new(shared.part_name(p), o.pos.generation);
                            Some(o)
                        }
                        None => shared.take_over(p),
                    };
                    let Some(o) = o else { continue };
                    let start = if o.pos.next >= 0 { Offset::Offset(o.pos.next) } else { Offset::Beginning };
                    tracing::info!(partition = p, start = ?start, generation = o.pos.generation, "partition assigned");
                    let _ = take.add_partition_offset(&topic, p, start);
                    owned.insert(p, o);
                }
                if let Err(e) = consumer.assign(&take) {
                    tracing::error!(error = %e, "could not take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked: storing their state before giving them up"
                );
                let mut owned = lock(&shared.owned);
                shared.checkpoint_all(consumer, &mut owned);
                let mut parked = lock(&shared.parked);
                for e in tpl.elements_for_topic(&topic) {
                    if let Some(o) = owned.remove(&e.partition()) {
                        parked.insert(e.partition(), o);
                    }
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

/// A running ingest worker.
pub struct Worker {
    consumer: BaseConsumer<Ctx>,
    producer: ThreadedProducer<DefaultProducerContext>,
    /// Reads the other workers' clocks (see the module doc).
    clock: BaseConsumer,
    /// The newest event time any worker reported.
    global_wm: std::sync::atomic::AtomicI64,
    shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
}

impl Worker {
    /// Connects (lazily) and subscribes. `cfg.state_store` must be set.
    pub fn new(mut engine_cfg: Config, cfg: KafkaConfig, limits: Limits) -> Result<Self, KafkaSourceError> {
        // One shard per partition engine: a partition is applied in order by one thread.
        engine_cfg.engine.shards = 1;
        let store = StateStore::new(cfg.state_store.clone().ok_or_else(|| {
            KafkaSourceError::Config(
                "a worker needs kafka.state_store (--state-store): a directory every worker can read".into(),
            )
        })?);
        let stats = Arc::new(WorkerStats::default());
        let mut cc = cfg.group_consumer_config()?;
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: BaseConsumer<Ctx> = cc.create_with_context(Ctx { shared: Mutex::new(None) })?;
        let mut pc = cfg.client_config(&cfg.brokers)?;
        pc.set("linger.ms", "5").set("message.max.bytes", (64 << 20).to_string());
        let producer: ThreadedProducer<DefaultProducerContext> = pc.create()?;
        let mut dc = cfg.client_config(cfg.dlq_brokers.as_deref().unwrap_or(&cfg.brokers))?;
        for (k, v) in &cfg.dlq_properties {
            dc.set(k, v);
        }
        let dlq = DeadLetters::new(dc, &cfg.dlq())?;
        let mut kc = cfg.client_config(&cfg.brokers)?;
        kc.set("group.id", format!("warroom-clock-{}-{}", std::process::id(), now_ms()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50");
        let clock: BaseConsumer = kc.create()?;
        let shared = Arc::new(Shared {
            engine_cfg,
            limits,
            store,
            dlq,
            owned: Mutex::new(BTreeMap::new()),
            parked: Mutex::new(BTreeMap::new()),
            stats: stats.clone(),
            history: crate::history_topic::HistoryProducer::new(&cfg)?,
            cfg,
        });
        *lock(&consumer.context().shared) = Some(shared.clone());
        consumer.subscribe(&[&shared.cfg.topic])?;
        Ok(Worker { consumer, producer, clock, global_wm: std::sync::atomic::AtomicI64::new(i64::MIN), shared, stats })
    }

    /// Consumes, applies and publishes partials until `stop`; then stores every partition's
    /// state, publishes full partials and leaves the group.
    pub fn run(&self, stop: &AtomicBool) {
        let cfg = &self.shared.cfg;
        let mut last_partials = Instant::now();
        let mut clock_assigned = (false, Instant::now() - Duration::from_secs(1));
        let mut last_checkpoint = Instant::now();
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            batch.clear();
            let mut wait = Duration::from_millis(20);
            while batch.len() < cfg.batch_max {
                match self.consumer.poll(wait) {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka poll error");
                        break;
                    }
                    None => break,
                }
                wait = Duration::ZERO;
            }
            if !batch.is_empty() {
                let _consume = tracing::debug_span!("consume", messages = batch.len()).entered();
                let mut owned = lock(&self.shared.owned);
                let mut by_partition: BTreeMap<i32, Vec<BorrowedMessage<'_>>> = BTreeMap::new();
                for m in batch.drain(..) {
                    by_partition.entry(m.partition()).or_default().push(m);
                }
                for (p, msgs) in by_partition {
                    match owned.get_mut(&p) {
                        Some(o) => self.shared.apply(o, p, &msgs),
                        // Not ours (revoked between fetch and poll): its new owner reads it.
                        None => {
                            tracing::debug!(partition = p, n = msgs.len(), "messages of a partition not held; skipped")
                        }
                    }
                }
            }
            self.read_clock(&mut clock_assigned);
            if last_partials.elapsed() >= cfg.partial_interval {
                last_partials = Instant::now();
                self.publish_partials(false);
            }
            if last_checkpoint.elapsed() >= cfg.checkpoint_interval {
                last_checkpoint = Instant::now();
                let mut owned = lock(&self.shared.owned);
                self.shared.checkpoint_all(&self.consumer, &mut owned);
            }
        }
        {
            let mut owned = lock(&self.shared.owned);
            self.shared.checkpoint_all(&self.consumer, &mut owned);
        }
        self.publish_partials(true);
        let _ = self.producer.flush(Duration::from_secs(5));
        self.shared.dlq.flush(Duration::from_secs(5));
        self.consumer.unsubscribe();
    }

    /// One partial per partition held (full ones when due, or `all_full`).
    fn publish_partials(&self, all_full: bool) {
        let mut owned = lock(&self.shared.owned);
        let own = owned.values().map(|o| o.engine.watermark()).max().unwrap_or(i64::MIN);
        let topic = self.shared.cfg.partials();
        if own != i64::MIN {
            let t = own.to_le_bytes();
            let _ = self.producer.send(BaseRecord::<[u8], [u8]>::to(&self.clock_topic()).partition(0).payload(&t));
        }
        let as_of = own.max(self.global_wm.load(Ordering::Relaxed));
        for o in owned.values_mut() {
            let full = all_full || o.last_full.elapsed() >= self.shared.cfg.full_partial_interval;
            if full {
                o.last_full = Instant::now();
            }
            o.engine.observe_watermark(as_of);
            let span = tracing::debug_span!("partial_publish", part = o.writer.part(), full).entered();
            let p = o.engine.partial(&mut o.writer, o.pos.next, full);
            let bytes = p.encode();
            let parent = crate::trace::traceparent(&span);
            drop(span);
            let mut record = BaseRecord::<str, [u8]>::to(&topic).key(o.writer.part()).payload(&bytes);
            if let Some(tp) = &parent {
                record =
                    record.headers(OwnedHeaders::new().insert(Header { key: crate::trace::HEADER, value: Some(tp) }));
            }
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.partials.fetch_add(1, Ordering::Relaxed);
                    self.stats.partial_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if p.is_full() {
                        self.stats.full_partials.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err((e, _)) => {
                    // Readers see a gap and wait for the next full partial: send one next.
                    self.stats.partials_dropped.fetch_add(1, Ordering::Relaxed);
                    o.writer.restart();
                    tracing::warn!(error = %e, "a partial could not be queued; the next one is full");
                }
            }
        }
    }

    fn clock_topic(&self) -> String {
        format!("{}.clock", self.shared.cfg.partials())
    }

    /// Takes in the other workers' clocks (never waits); assigns the clock topic from its end
    /// once it exists.
    fn read_clock(&self, (assigned, tried): &mut (bool, Instant)) {
        if !*assigned {
            if tried.elapsed() < Duration::from_secs(1) {
                return;
            }
            *tried = Instant::now();
            let topic = self.clock_topic();
            let exists = self
                .clock
                .fetch_metadata(Some(&topic), Duration::from_millis(500))
                .is_ok_and(|md| md.topics().iter().any(|t| t.name() == topic && !t.partitions().is_empty()));
            if !exists {
                return;
            }
            let mut tpl = TopicPartitionList::new();
            // A little history: the clocks of the last rounds, not only what comes next.
            let start = self
                .clock
                .fetch_watermarks(&topic, 0, Duration::from_millis(500))
                .map_or(Offset::End, |(lo, hi)| Offset::Offset((hi - 64).max(lo)));
            let _ = tpl.add_partition_offset(&topic, 0, start);
            *assigned = self.clock.assign(&tpl).is_ok();
            return;
        }
        while let Some(Ok(m)) = self.clock.poll(Duration::ZERO) {
            if let Some(b) = m.payload().and_then(|p| <[u8; 8]>::try_from(p).ok()) {
                self.global_wm.fetch_max(i64::from_le_bytes(b), Ordering::Relaxed);
            }
        }
    }

    /// The partitions held: (partition, next offset, generation, watermark, state bytes).
    pub fn partitions(&self) -> Vec<(i32, i64, u64, i64)> {
        lock(&self.shared.owned).iter().map(|(&p, o)| (p, o.pos.next, o.pos.generation, o.engine.watermark())).collect()
    }
}

impl warroom_status::IngestStatus for Worker {
    fn not_ready(&self) -> Option<String> {
        None
    }

    fn lag(&self) -> Option<u64> {
        None
    }

    fn expose_metrics(&self, p: &Exposition, _now: i64) {
        let s = &self.stats;
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        p.one("worker_messages_total", Counter, "Messages consumed by this worker.", c(&s.messages));
        p.one("worker_rejected_total", Counter, "Messages rejected by this worker.", c(&s.rejected));
        p.one("worker_partials_total", Counter, "Partials published.", c(&s.partials));
        p.one("worker_partial_bytes_total", Counter, "Bytes of partials published.", c(&s.partial_bytes));
        p.one("worker_full_partials_total", Counter, "Full partials published.", c(&s.full_partials));
        p.one("worker_partials_dropped_total", Counter, "Partials that could not be queued.", c(&s.partials_dropped));
        p.one("worker_checkpoints_total", Counter, "Partition states stored.", c(&s.checkpoints));
        p.one("worker_checkpoint_failures_total", Counter, "Partition states not stored.", c(&s.checkpoint_failures));
        p.one("worker_restores_total", Counter, "Partition states restored from the store.", c(&s.restores));
        p.one(
            "worker_restore_seconds_total",
            Gauge,
            "Time spent restoring partition states.",
            c(&s.restore_us) as f64 / 1e6,
        );
        p.one("worker_assignments_total", Counter, "Partition assignments received.", c(&s.assignments));
        let held = self.partitions();
        p.head("worker_partition_position", Gauge, "Next offset a held partition's state does not cover.");
        for &(part, next, _, _) in &held {
            p.labelled("worker_partition_position", Gauge, &[("partition", part.to_string())], next);
        }
        p.head("worker_partition_generation", Gauge, "Generation of a held partition.");
        for &(part, _, generation, _) in &held {
            p.labelled("worker_partition_generation", Gauge, &[("partition", part.to_string())], generation);
        }
        p.head("worker_partition_watermark_ms", Gauge, "Event-time watermark of a held partition.");
        for &(part, _, _, wm) in &held {
            p.labelled("worker_partition_watermark_ms", Gauge, &[("partition", part.to_string())], wm);
        }
    }

    fn set_batch_histogram(&self, _h: metrics::Histogram) {}
}
