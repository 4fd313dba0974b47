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
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use warroom_engine::history::HistoryWriter;
use warroom_engine::mem::recycle;
use warroom_engine::{checkpoint, Config, Engine};
use warroom_model::{Limits, Reason, Rejection};

use crate::dlq::{DeadLetters, Letter};
use crate::parts::Parts;
use crate::pipeline::ChunkProcessor;
use warroom_status::Exposition;
use warroom_status::Kind::{Counter, Gauge};

/// Settings of the Kafka source (`[kafka]` in the config file, or flags). Secrets are never
/// in it: passwords are read from the files it names (see [`KafkaConfig::client_config`]).
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
    /// Brokers of the dead-letter topic, when it lives on another cluster; default `brokers`.
    pub dlq_brokers: Option<String>,
    /// librdkafka properties of the dead-letter producer only (e.g. `message.timeout.ms`).
    pub dlq_properties: BTreeMap<String, String>,
    /// Undelivered dead letters kept in memory at most: beyond it consumption pauses until the
    /// dead-letter topic takes them (a letter is the message plus a few hundred bytes).
    pub dlq_max_pending: usize,
    /// This member's static group membership id (`group.instance.id`, KIP-345): stable across
    /// restarts of the same monitor, unique in the group. Default: `warroom-<host>-<hash of the
    /// state dir>` (one monitor per state dir). Set it when the monitor moves between hosts
    /// with its state (a StatefulSet's pod name); `""` for dynamic membership.
    pub instance_id: Option<String>,
    /// How long the group waits for a silent member before giving its partitions to others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `plaintext`, `ssl` (TLS), `sasl_plaintext` or `sasl_ssl` (TLS with SASL).
    pub security_protocol: String,
    /// PEM file of the CA(s) that signed the brokers' certificates (default: the system's).
    pub ssl_ca_file: Option<PathBuf>,
    /// This client's certificate and key (PEM), when the brokers require client certificates.
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    /// A file holding the key's password (its contents are never logged).
    pub ssl_key_password_file: Option<PathBuf>,
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512` or `PLAIN`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// A file holding the SASL password (its contents are never logged).
    pub sasl_password_file: Option<PathBuf>,
    /// Any librdkafka property, passed through (e.g. `session.timeout.ms`).
    pub properties: BTreeMap<String, String>,
    /// Ingest workers and API nodes (`--source worker`, `--source partials`): the topic the
    /// workers publish their partitions' partials to; default `<topic>.partials`.
    pub partials_topic: Option<String>,
    /// How often a worker publishes what changed in each of its partitions.
    #[serde(with = "humantime_serde")]
    pub partial_interval: Duration,
    /// How often a worker publishes each partition's whole state (what an API node that
    /// starts needs; it reads the partials topic from twice this long ago).
    #[serde(with = "humantime_serde")]
    pub full_partial_interval: Duration,
    /// Ingest workers: the state store every worker can read (a shared directory: a network
    /// file system, or one directory for all workers of one machine), where each partition's
    /// state is checkpointed and restored from when the partition moves.
    pub state_store: Option<PathBuf>,
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
            dlq_brokers: None,
            dlq_properties: BTreeMap::new(),
            dlq_max_pending: 100_000,
            instance_id: None,
            session_timeout: Duration::from_secs(6),
            security_protocol: "plaintext".into(),
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            ssl_key_password_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            properties: BTreeMap::new(),
            partials_topic: None,
            partial_interval: Duration::from_millis(250),
            full_partial_interval: Duration::from_secs(5),
            state_store: None,
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
        if self.session_timeout < Duration::from_secs(1) {
            errs.push("kafka.session_timeout must be at least 1s (brokers refuse below their group.min.session.timeout.ms, 6s by default)".to_string());
        }
        let proto = self.security_protocol.to_ascii_lowercase();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&proto.as_str()) {
            errs.push(format!(
                "kafka.security_protocol `{}`: use plaintext, ssl, sasl_plaintext or sasl_ssl",
                self.security_protocol
            ));
        }
        let sasl = proto.starts_with("sasl");
        if sasl && (self.sasl_mechanism.is_none() || self.sasl_username.is_none() || self.sasl_password_file.is_none())
        {
            errs.push("kafka.security_protocol is SASL: set sasl_mechanism (e.g. \"SCRAM-SHA-512\"), sasl_username and sasl_password_file".to_string());
        }
        if let Some(m) = &self.sasl_mechanism {
            if !["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"].contains(&m.to_ascii_uppercase().as_str()) {
                errs.push(format!("kafka.sasl_mechanism `{m}`: use SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN"));
            }
        }
        for (k, v) in self.properties.iter().chain(&self.dlq_properties) {
            if k.contains("password") || k.contains("sasl.jaas") {
                let _ = v;
                errs.push(format!(
                    "kafka properties `{k}`: put secrets in files (sasl_password_file, ssl_key_password_file), not in the config"
                ));
            }
        }
        if self.partial_interval < Duration::from_millis(20) || self.partial_interval > Duration::from_secs(10) {
            errs.push("kafka.partial_interval must be between 20ms and 10s".to_string());
        }
        if self.full_partial_interval < self.partial_interval {
            errs.push("kafka.full_partial_interval must be at least kafka.partial_interval".to_string());
        }
        if self.dlq_max_pending == 0 {
            errs.push("kafka.dlq_max_pending must be above 0".to_string());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// This member's `group.instance.id`: `instance_id`, else one derived from the host and
    /// the state directory (stable across restarts of the same monitor; one monitor per state
    /// directory, a lock makes sure). `None` when `instance_id = ""`: dynamic membership.
    pub fn instance_id(&self) -> Option<String> {
        if let Some(id) = &self.instance_id {
            return (!id.is_empty()).then(|| id.clone());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let dir = std::fs::canonicalize(&self.state_dir).unwrap_or_else(|_| self.state_dir.clone());
        let hash = xxhash_rust::xxh3::xxh3_64(dir.to_string_lossy().as_bytes());
        Some(format!("warroom-{host}-{:08x}", hash as u32))
    }

    /// A librdkafka configuration for `brokers` with the transport security of `[kafka]`.
    /// Secrets are read from their files here and handed to librdkafka only: they are never
    /// logged, nor in any error (which names the file).
    pub fn client_config(&self, brokers: &str) -> Result<ClientConfig, KafkaSourceError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers).set("security.protocol", self.security_protocol.to_ascii_lowercase());
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(p) = &self.ssl_ca_file {
            c.set("ssl.ca.location", path(p));
        }
        if let Some(p) = &self.ssl_cert_file {
            c.set("ssl.certificate.location", path(p));
        }
        if let Some(p) = &self.ssl_key_file {
            c.set("ssl.key.location", path(p));
        }
        let secret = |what: &str, p: &PathBuf| -> Result<String, KafkaSourceError> {
            std::fs::read_to_string(p).map(|s| s.trim_end_matches(['\n', '\r']).to_string()).map_err(|e| {
                KafkaSourceError::Config(format!(
                    "cannot read {what} {}: {e} (check the path and its permissions)",
                    p.display()
                ))
            })
        };
        if let Some(p) = &self.ssl_key_password_file {
            c.set("ssl.key.password", secret("ssl_key_password_file", p)?);
        }
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanisms", m.to_ascii_uppercase());
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password_file {
            c.set("sasl.password", secret("sasl_password_file", p)?);
        }
        Ok(c)
    }

    pub fn partials(&self) -> String {
        self.partials_topic.clone().unwrap_or_else(|| format!("{}.partials", self.topic))
    }

    /// A consumer in `group` with offsets managed by warroom (never auto-committed), eager
    /// range assignment and the group and fetch timings every group member here uses (the
    /// single-process source and the ingest workers).
    pub fn group_consumer_config(&self) -> Result<ClientConfig, KafkaSourceError> {
        let mut cc = self.client_config(&self.brokers)?;
        cc.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", self.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.session_timeout.as_millis() / 6).max(100).to_string())
            // librdkafka's default (1 s) idles the fetcher for a whole second whenever its
            // queue is full, which a monitor busy applying a batch often lets happen: drain
            // rate 0.38-0.47 of a bare consumer with it, 0.54-0.74 with 10 ms (BENCHMARKS.md).
            .set("fetch.queue.backoff.ms", "10")
            // How long the broker may hold a fetch with no new data. Kafka answers as soon as
            // one byte is there; Tansu was seen holding fetches of a 4-partition topic for about
            // 2 s at 2k events/s with the 500 ms default (frames 1-2 s late). 100 ms costs an
            // idle consumer ten small requests a second.
            .set("fetch.wait.max.ms", "100");
        Ok(cc)
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
    #[error("[kafka] {0}")]
    Config(String),
}

/// What a checkpoint records of the source: the next offset the state covers, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub topic: String,
    pub next: BTreeMap<i32, i64>,
    /// Dead letters not delivered when partitions had to be given up (see [`crate::dlq`]);
    /// sent again when the checkpoint is restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<Letter>,
}

/// Builds the engine: restored from `state_dir` when a checkpoint is there, else fresh.
pub fn open_engine(cfg: Config, kafka: &KafkaConfig) -> Result<(Engine, Positions), KafkaSourceError> {
    match checkpoint::read(&kafka.state_dir)? {
        None => Ok((Engine::new(cfg), Positions { topic: kafka.topic.clone(), ..Positions::default() })),
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
    /// What is wrong with the dead-letter path (see [`crate::dlq::DeadLetters::problem`]).
    dlq_problem: Mutex<Option<String>>,
    pub checkpoints: AtomicU64,
    /// Partition assignments received (each sets the partitions' start offsets).
    pub assignments: AtomicU64,
    /// Assigned partitions currently idle (caught up and silent).
    pub idle_partitions: AtomicU64,
    pub last_checkpoint_ms: AtomicU64,
    pub last_checkpoint_duration_us: AtomicU64,
    health: AtomicU8,
    /// The last client error (broker unreachable, TLS handshake, authentication), for `/readyz`.
    last_error: Mutex<Option<String>>,
    /// Messages per second over the last measuring period, times 1000.
    rate_milli: AtomicU64,
    /// Per partition, the end of its log (high watermark) from librdkafka's statistics.
    ends: Mutex<BTreeMap<i32, i64>>,
    /// Where each batch's apply time goes (the API's metrics registry), once it is known.
    batch_apply: std::sync::OnceLock<metrics::Histogram>,
}

impl SourceStats {
    /// Records each batch's decode-and-apply time into `h` from now on.
    pub fn set_batch_histogram(&self, h: metrics::Histogram) {
        let _ = self.batch_apply.set(h);
    }

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

    /// The last error the Kafka client reported, if any since the source was last healthy.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Records an error: the client's own reports (`specific`: TLS handshake, authentication,
    /// connection refused) are kept over the poll's summaries ("all brokers down").
    fn failed(&self, error: String, specific: bool) {
        let mut last = lock(&self.last_error);
        if specific || last.is_none() {
            *last = Some(error);
        }
        drop(last);
        self.set_health(Health::Degraded);
    }

    fn set_health(&self, h: Health) {
        let old = self.health.swap(h as u8, Ordering::Relaxed);
        if old != h as u8 {
            match h {
                Health::Degraded => tracing::warn!(
                    "kafka source degraded: serving the last state and retrying; check that the brokers are reachable"
                ),
                Health::Ok => {
                    *lock(&self.last_error) = None;
                    tracing::info!("kafka source healthy")
                }
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

/// How long the applier thread waits for a batch before it answers the publisher's pending
/// request for deltas itself: well inside the publisher's wait (`PUBLISH_WAIT`, 50 ms).
const IDLE_SERVICE: Duration = Duration::from_millis(10);

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
/// inside `poll`). Lock order: `feed`, then `inner`; the applier takes only `inner`. No lock is
/// held across a wait for the broker: the dead-letter outbox never waits, and a checkpoint
/// waits for dead letters with no lock taken.
struct Shared {
    engine: Arc<Engine>,
    cfg: KafkaConfig,
    dlq: DeadLetters,
    feed: Mutex<Feed>,
    inner: Mutex<Inner>,
    stats: Arc<SourceStats>,
    /// The applier died mid-batch: the engine may hold part of a batch that no position
    /// covers, so nothing is applied or checkpointed any more; the process exits and restarts
    /// from the last checkpoint.
    poisoned: AtomicBool,
    /// The history database, written with every checkpoint, before it is persisted.
    history: Mutex<Option<Arc<HistoryWriter>>>,
}

/// Why a checkpoint is taken: what to do when dead letters are still on their way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Every `checkpoint_interval`: skip it (the next one comes soon).
    Interval,
    /// Partitions are given up: write the undelivered letters into the checkpoint instead,
    /// or the new owner would count this member's events again.
    Revoke,
    /// Stopping: skip it (a restart replays from the previous one and rejects again).
    Shutdown,
}

/// Marks the source poisoned if the applier thread unwinds.
struct PoisonOnPanic<'a>(&'a AtomicBool);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
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
        if feed.pending.meta.is_empty() || self.poisoned.load(Ordering::SeqCst) {
            return;
        }
        let Some(tx) = &feed.to_applier else {
            self.flush(&mut lock(&self.inner), &mut feed.pending);
            return;
        };
        let fresh = feed.spare.as_ref().and_then(|r| r.try_recv().ok()).unwrap_or_default();
        let batch = std::mem::replace(&mut feed.pending, fresh);
        if tx.send(Job::Batch(batch)).is_err() {
            // The applier is gone: it panicked, possibly half-way through a batch. Applying
            // more here would let positions (and commits) pass events it never applied.
            self.poisoned.store(true, Ordering::SeqCst);
            tracing::error!("the applier thread is gone; nothing more is applied or checkpointed");
        }
    }

    /// Returns once every message taken so far is applied (or the applier is gone).
    fn settle(&self, feed: &mut Feed) {
        self.hand_over(feed);
        if let Some(tx) = &feed.to_applier {
            let (ack, done) = sync_channel(1);
            if tx.send(Job::Barrier(ack)).is_err() || done.recv().is_err() {
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The applier thread: applies batches in the order they were taken.
    fn apply_batches(&self, jobs: Receiver<Job>, spare: std::sync::mpsc::Sender<Pending>) {
        let _poison = PoisonOnPanic(&self.poisoned);
        loop {
            // Idle: answer the publisher's request for deltas (this thread is the writer).
            let job = match jobs.recv_timeout(IDLE_SERVICE) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.engine.service();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match job {
                Job::Batch(mut batch) => {
                    // (A fault here: a batch taken from Kafka that is never applied.)
                    crate::parts::fault::hit("applier");
                    self.flush(&mut lock(&self.inner), &mut batch);
                    let _ = spare.send(batch);
                }
                Job::Barrier(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    }

    /// Applies the pending messages, hands the rejected ones to the dead-letter outbox (which
    /// never waits), advances positions.
    fn flush(&self, inner: &mut Inner, pending: &mut Pending) {
        let Inner { proc, positions } = inner;
        if pending.meta.is_empty() {
            return;
        }
        let _span = tracing::debug_span!("kafka_batch", messages = pending.meta.len()).entered();
        let started = Instant::now();
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
        if let Some(h) = self.stats.batch_apply.get() {
            h.record(started.elapsed().as_secs_f64());
        }
        rejected.extend(decoded.into_iter().map(|r| (taken[r.line as usize], r.rejection)));
        self.stats.messages.fetch_add(meta.len() as u64, Ordering::Relaxed);
        self.stats.rejected.fetch_add(rejected.len() as u64, Ordering::Relaxed);
        for (i, rejection) in rejected {
            let Taken { payload, key, partition, offset, .. } = &pending.meta[i];
            let headers = crate::dlq::rejection_headers(&rejection, &self.cfg.topic, *partition, *offset);
            self.dlq.send(Letter {
                payload: pending.bytes[payload.clone()].to_vec(),
                key: key.as_ref().map(|k| pending.bytes[k.clone()].to_vec()),
                headers,
                partition: *partition,
                offset: *offset,
            });
        }
        for m in &pending.meta {
            positions.next.insert(m.partition, m.offset + 1);
        }
        // Cleared for reuse; after a catch-up burst, back to about twice a batch's size.
        recycle(&mut pending.bytes);
        recycle(&mut pending.meta);
    }

    /// Applies everything taken, makes sure its dead letters are delivered, writes a
    /// checkpoint with the positions, then commits them to the group. Returns whether it did.
    fn checkpoint(&self, consumer: &BaseConsumer<Ctx>, why: Why) -> bool {
        if self.poisoned.load(Ordering::SeqCst) {
            tracing::error!(
                ?why,
                "no checkpoint: the applier died; the last checkpoint stays (a restart resumes there)"
            );
            return false;
        }
        // Nothing new is taken meanwhile: the poll loop (and the rebalance callback, inside
        // poll) is the caller.
        let mut positions = {
            let mut feed = lock(&self.feed);
            self.settle(&mut feed);
            feed.last_checkpoint = Instant::now();
            lock(&self.inner).positions.clone()
        };
        if self.poisoned.load(Ordering::SeqCst) {
            return false;
        }
        // Dead letters first, with no lock held: the applier, the publisher and /metrics go on.
        let before = self.dlq.next_id();
        let wait = if why == Why::Interval { Duration::from_secs(2) } else { Duration::from_secs(10) };
        if !self.dlq.wait_delivered(before, wait) {
            if why != Why::Revoke {
                tracing::warn!(
                    ?why,
                    pending = self.dlq.pending(),
                    "checkpoint skipped: dead letters not delivered yet; offsets are not committed past them"
                );
                return false;
            }
            positions.dead_letters = self.dlq.undelivered(before);
            tracing::warn!(
                letters = positions.dead_letters.len(),
                "giving partitions up with dead letters undelivered: they are kept in the checkpoint and sent again after a restart"
            );
        }
        let started = Instant::now();
        let extra = serde_json::to_vec(&positions).expect("positions serialise");
        let history = lock(&self.history).clone();
        let bytes = match history {
            Some(h) => {
                // The minutes counted since the last checkpoint are stored first: a checkpoint
                // persisted without them would lose them (see warroom_engine::history).
                let (bytes, batch) = self.engine.checkpoint_with_history(&extra);
                if let Err(e) = h.write(batch) {
                    tracing::error!(error = %e, retained = h.retained(), "history not written; no checkpoint until it is (offsets are not committed past the previous one). Check the history database's disk");
                    return false;
                }
                bytes
            }
            None => self.engine.checkpoint(&extra),
        };
        match checkpoint::write_atomically(&self.cfg.state_dir, &bytes) {
            Ok(path) => {
                let took = started.elapsed();
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.stats.last_checkpoint_ms.store(now_ms() as u64, Ordering::Relaxed);
                self.stats.last_checkpoint_duration_us.store(took.as_micros() as u64, Ordering::Relaxed);
                tracing::debug!(?why, path = %path.display(), bytes = bytes.len(), took_ms = took.as_millis() as u64, "checkpoint written");
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; offsets are not committed past the previous one. Check free space and permissions of --state-dir");
                return false;
            }
        }
        let mut tpl = TopicPartitionList::new();
        let assigned = consumer.assignment().unwrap_or_default();
        for e in assigned.elements_for_topic(&self.cfg.topic) {
            if let Some(&next) = positions.next.get(&e.partition()) {
                let _ = tpl.add_partition_offset(&self.cfg.topic, e.partition(), Offset::Offset(next));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "offset commit failed; the checkpoint stays authoritative and the commit is retried at the next one");
            }
        }
        true
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
        // "All brokers down" follows the reason (TLS, authentication, refused): keep the reason.
        let summary = error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
        self.stats.failed(format!("{error}: {reason}"), !summary);
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
                shared.checkpoint(consumer, Why::Revoke);
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
        mut positions: Positions,
        cfg: KafkaConfig,
        limits: Limits,
    ) -> Result<Self, KafkaSourceError> {
        let stats = Arc::new(SourceStats::default());
        let mut cc = cfg.group_consumer_config()?;
        cc
            // Partition ends for the lag metric and idleness (the `stats` callback).
            .set("statistics.interval.ms", "1000");
        // Static membership (KIP-345): a monitor restarted under the same instance id gets its
        // partitions back at once, instead of waiting out its old self's session.
        if let Some(id) = cfg.instance_id() {
            cc.set("group.instance.id", id);
        }
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let ctx = Ctx { shared: Mutex::new(None), stats: stats.clone() };
        let consumer: BaseConsumer<Ctx> = cc.create_with_context(ctx)?;
        let dlq_brokers = cfg.dlq_brokers.clone().unwrap_or_else(|| cfg.brokers.clone());
        let mut pc = cfg.client_config(&dlq_brokers)?;
        for (k, v) in &cfg.dlq_properties {
            pc.set(k, v);
        }
        let dlq = DeadLetters::new(pc, &cfg.dlq())?;
        // Dead letters a previous run had to leave in its checkpoint: sent again.
        let saved = std::mem::take(&mut positions.dead_letters);
        if !saved.is_empty() {
            tracing::info!(letters = saved.len(), "sending again the dead letters kept in the checkpoint");
        }
        for l in saved {
            dlq.send(l);
        }
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
            poisoned: AtomicBool::new(false),
            history: Mutex::new(None),
        });
        *consumer.context().shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
        consumer.subscribe(&[&shared.cfg.topic])?;
        Ok(KafkaSource { consumer, shared, stats })
    }

    /// Writes the engine's per-minute history to `writer` with every checkpoint.
    pub fn set_history(&self, writer: Arc<HistoryWriter>) {
        *lock(&self.shared.history) = Some(writer);
    }

    /// Consumes until `stop` is set, then checkpoints and commits once more.
    pub fn run(&self, stop: &AtomicBool) {
        self.run_with(stop, &Parts::new())
    }

    /// [`KafkaSource::run`], registering the applier thread in `parts`: if it dies, the source
    /// stops applying and checkpointing (see [`Shared::hand_over`]) and `parts` says so.
    pub fn run_with(&self, stop: &AtomicBool, parts: &Arc<Parts>) {
        let (jobs_tx, jobs) = sync_channel::<Job>(1);
        let (spare_tx, spare) = channel();
        {
            let mut feed = lock(&self.shared.feed);
            feed.to_applier = Some(jobs_tx);
            feed.spare = Some(spare);
        }
        /// Closes the applier's channel however the poll loop ends (a panic included), so that
        /// the scope below can join it.
        struct CloseApplier<'a>(&'a Shared);
        impl Drop for CloseApplier<'_> {
            fn drop(&mut self) {
                let mut feed = lock(&self.0.feed);
                feed.to_applier = None;
                feed.spare = None;
            }
        }
        std::thread::scope(|scope| {
            let guard = parts.start("applier");
            let applier = std::thread::Builder::new()
                .name("warroom-apply".into())
                .spawn_scoped(scope, move || {
                    self.shared.apply_batches(jobs, spare_tx);
                    guard.finished();
                })
                .expect("spawn the applier thread");
            let close = CloseApplier(&self.shared);
            self.poll_until(stop);
            {
                let mut feed = lock(&self.shared.feed);
                self.shared.settle(&mut feed);
            }
            drop(close);
            if applier.join().is_err() {
                tracing::error!("the applier thread panicked; no checkpoint covers what it was applying");
            }
        });
        self.shared.checkpoint(&self.consumer, Why::Shutdown);
        self.shared.dlq.flush(Duration::from_secs(5));
    }

    fn poll_until(&self, stop: &AtomicBool) {
        let batch_max = self.shared.cfg.batch_max.max(1);
        let mut rate_since = (Instant::now(), self.stats.messages.load(Ordering::Relaxed));
        let mut idle = Idleness::default();
        let mut paused = false;
        while !stop.load(Ordering::Relaxed) && !self.shared.poisoned.load(Ordering::SeqCst) {
            crate::parts::fault::hit("source");
            self.shared.dlq.pump();
            if idle.checked.elapsed() >= Duration::from_secs(1) {
                self.update_idle_partitions(&mut idle);
                self.watch_dead_letters();
                paused = self.pause_for_dead_letters(paused);
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
                        self.stats.failed(e.to_string(), false);
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
            if due && !self.shared.checkpoint(&self.consumer, Why::Interval) {
                // Try again in a second rather than at once (the dead letters are on their way).
                let mut feed = lock(&self.shared.feed);
                let back = self.shared.cfg.checkpoint_interval.saturating_sub(Duration::from_secs(1));
                feed.last_checkpoint = Instant::now() - back;
            }
        }
    }

    /// Logs when the dead-letter path starts failing (with what to fix) and when it recovers.
    fn watch_dead_letters(&self) {
        let problem = self.shared.dlq.problem();
        let mut last = lock(&self.stats.dlq_problem);
        match (&*last, &problem) {
            (None, Some(p)) => tracing::error!("{p}"),
            (Some(_), None) => tracing::info!(
                delivered = self.shared.dlq.stats.delivered.load(Ordering::Relaxed),
                "the dead-letter topic takes messages again; every dead letter kept was delivered"
            ),
            _ => {}
        }
        *last = problem;
    }

    /// Stops fetching while more than `dlq_max_pending` dead letters wait (memory stays bounded
    /// however long the dead-letter topic fails), and starts again below half of it. The group
    /// membership is kept: poll goes on, paused partitions deliver nothing.
    fn pause_for_dead_letters(&self, paused: bool) -> bool {
        let pending = self.shared.dlq.pending();
        let max = self.shared.cfg.dlq_max_pending;
        let assigned = self.consumer.assignment().unwrap_or_default();
        if !paused && pending > max {
            tracing::error!(
                pending,
                max,
                "too many undelivered dead letters: consumption paused until the dead-letter topic takes them"
            );
            let _ = self.consumer.pause(&assigned);
            return true;
        }
        if paused && pending <= max / 2 {
            tracing::info!(pending, "consumption resumed");
            let _ = self.consumer.resume(&assigned);
            return false;
        }
        paused
    }

    /// What is wrong with the dead-letter path, if anything (for `/readyz` and `/metrics`).
    pub fn dead_letter_problem(&self) -> Option<String> {
        lock(&self.stats.dlq_problem).clone()
    }

    /// The dead-letter outbox's counters.
    pub fn dead_letters(&self) -> &crate::dlq::DlqStats {
        &self.shared.dlq.stats
    }

    /// Dead letters not delivered yet.
    pub fn dead_letters_pending(&self) -> usize {
        self.shared.dlq.pending()
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

/// What the API knows of the Kafka source: readiness, lag and metrics, through the small
/// interface of `warroom-status` (the API does not depend on this crate).
impl warroom_status::IngestStatus for KafkaSource {
    fn not_ready(&self) -> Option<String> {
        match self.stats.health() {
            Health::Ok => {}
            Health::Starting => return Some("kafka source starting: waiting for the group assignment".into()),
            Health::Degraded => {
                let why = self.stats.last_error().unwrap_or_else(|| "brokers unreachable".into());
                return Some(format!(
                    "kafka source degraded ({why}); serving the last state and retrying. Check kafka.brokers, \
                     kafka.security_protocol and the ssl_*/sasl_* settings"
                ));
            }
        }
        self.dead_letter_problem().map(|p| format!("degraded: {p}"))
    }

    fn lag(&self) -> Option<u64> {
        let positions = self.positions();
        let ends = self.stats.partition_ends();
        if ends.is_empty() {
            return None;
        }
        Some(ends.iter().map(|(p, end)| (end - positions.next.get(p).copied().unwrap_or(0)).max(0) as u64).sum())
    }

    fn expose_metrics(&self, p: &Exposition, now: i64) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        p.one("kafka_messages_total", Counter, "Messages consumed and applied.", r(&s.messages));
        p.one("kafka_rejected_total", Counter, "Messages rejected by the decoder.", r(&s.rejected));
        let d = self.dead_letters();
        p.one(
            "kafka_dead_lettered_total",
            Counter,
            "Dead letters the broker confirmed (delivery reports, not sends).",
            r(&d.delivered),
        );
        p.one(
            "kafka_dlq_failed_attempts_total",
            Counter,
            "Dead-letter delivery attempts that failed (each letter is retried until delivered).",
            r(&d.failed_attempts),
        );
        p.one(
            "kafka_dlq_pending",
            Gauge,
            "Dead letters not delivered yet (kept in memory).",
            self.dead_letters_pending(),
        );
        p.one(
            "kafka_dlq_healthy",
            Gauge,
            "0 while the dead-letter topic does not take messages (checkpoints and commits wait).",
            u8::from(self.dead_letter_problem().is_none()),
        );
        p.one("kafka_checkpoints_total", Counter, "Checkpoints written.", r(&s.checkpoints));
        p.one("kafka_assignments_total", Counter, "Partition assignments received.", r(&s.assignments));
        p.one(
            "kafka_idle_partitions",
            Gauge,
            "Assigned partitions caught up and silent (they hold back no eviction).",
            r(&s.idle_partitions),
        );
        p.one("kafka_health", Gauge, "0 starting, 1 ok, 2 degraded.", s.health() as u8);
        let last = r(&s.last_checkpoint_ms) as i64;
        let ckpt_age = if last > 0 { (now - last).max(0) as f64 / 1000.0 } else { -1.0 };
        p.one("kafka_checkpoint_age_seconds", Gauge, "Seconds since the last checkpoint (-1: none yet).", ckpt_age);
        p.one(
            "kafka_checkpoint_duration_seconds",
            Gauge,
            "Duration of the last checkpoint (write and fsync).",
            r(&s.last_checkpoint_duration_us) as f64 / 1e6,
        );
        p.one("kafka_consume_rate", Gauge, "Messages per second over the last few seconds.", s.rate());
        let positions = self.positions();
        let ends = s.partition_ends();
        p.head("kafka_partition_position", Gauge, "Next offset the state covers, per partition.");
        for (part, next) in &positions.next {
            p.labelled("kafka_partition_position", Gauge, &[("partition", part.to_string())], *next);
        }
        p.head("kafka_partition_lag", Gauge, "Messages behind the partition's end (from librdkafka statistics).");
        for (part, end) in &ends {
            let pos = positions.next.get(part).copied().unwrap_or(0);
            p.labelled("kafka_partition_lag", Gauge, &[("partition", part.to_string())], (end - pos).max(0));
        }
    }

    fn set_batch_histogram(&self, h: metrics::Histogram) {
        self.stats.set_batch_histogram(h);
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
