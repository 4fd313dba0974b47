//! The API node's source (`warroom run --source partials`): reads the workers' partials from
//! the partials topic and merges them into its engine ([`Engine::absorb`]); the node's
//! publisher publishes the merge ([`Engine::publish_parts`]). An API node holds no state of its
//! own: one that starts reads the topic from twice `full_partial_interval` ago, so every part's
//! latest full partial is among what it reads, and has the whole view within seconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use warroom_engine::partial::{Absorbed, Partial};
use warroom_engine::Engine;
use warroom_status::Exposition;
use warroom_status::Kind::{Counter, Gauge};

use crate::kafka::{KafkaConfig, KafkaSourceError};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Counters of an API node's reading, for `/metrics`.
#[derive(Debug, Default)]
pub struct PartialsStats {
    pub applied: AtomicU64,
    pub stale: AtomicU64,
    pub gaps: AtomicU64,
    pub invalid: AtomicU64,
    pub bytes: AtomicU64,
    /// Wall-clock ms when the reader first reached the end of the topic (0: not yet).
    pub caught_up_ms: AtomicU64,
    /// The hop of live partials: from the worker producing one to this node taking it in
    /// (ms; sum and count of those read after catching up, and the largest).
    pub delay_ms_sum: AtomicU64,
    pub delay_count: AtomicU64,
    pub delay_ms_max: AtomicU64,
}

/// A running partials reader.
pub struct PartialsSource {
    consumer: BaseConsumer,
    engine: Arc<Engine>,
    cfg: KafkaConfig,
    pub stats: Arc<PartialsStats>,
    /// Where the reader must get to before the node is ready: (partition, end at start).
    targets: Mutex<Vec<(i32, i64)>>,
    started: Instant,
}

impl PartialsSource {
    pub fn new(engine: Arc<Engine>, cfg: KafkaConfig) -> Result<Self, KafkaSourceError> {
        let mut cc = cfg.client_config(&cfg.brokers)?;
        // No group: every API node reads every partial; nothing is committed.
        cc.set("group.id", format!("warroom-api-{}-{}", std::process::id(), now_ms()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "50")
            .set("fetch.queue.backoff.ms", "10")
            .set("receive.message.max.bytes", (128 << 20).to_string())
            .set("fetch.message.max.bytes", (64 << 20).to_string());
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: BaseConsumer = cc.create()?;
        Ok(PartialsSource {
            consumer,
            engine,
            cfg,
            stats: Arc::new(PartialsStats::default()),
            targets: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    /// Assigns every partition of the partials topic from twice the full-partial interval ago
    /// (from the beginning where the broker cannot look offsets up by time). Retries until the
    /// topic exists (the workers create it with their first partial).
    fn assign(&self, stop: &AtomicBool) -> bool {
        let topic = self.cfg.partials();
        while !stop.load(Ordering::Relaxed) {
            let parts: Vec<i32> = match self.consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                Ok(md) => md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, topic, "cannot read the partials topic's metadata; retrying");
                    Vec::new()
                }
            };
            if parts.is_empty() {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            let since = now_ms() - 2 * self.cfg.full_partial_interval.as_millis() as i64;
            let mut by_time = TopicPartitionList::new();
            for &p in &parts {
                let _ = by_time.add_partition_offset(&topic, p, Offset::Offset(since));
            }
            let starts = self.consumer.offsets_for_times(by_time, Duration::from_secs(5)).ok();
            let mut tpl = TopicPartitionList::new();
            let mut targets = Vec::new();
            for &p in &parts {
                let start = starts
                    .as_ref()
                    .and_then(|s| s.find_partition(&topic, p))
                    .map(|e| e.offset())
                    .filter(|o| matches!(o, Offset::Offset(_) | Offset::End))
                    .unwrap_or(Offset::Beginning);
                let _ = tpl.add_partition_offset(&topic, p, start);
                let end = self.consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)).map_or(0, |(_, hi)| hi);
                targets.push((p, end));
                tracing::info!(partition = p, start = ?start, end, "reading partials");
            }
            *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = targets;
            if let Err(e) = self.consumer.assign(&tpl) {
                tracing::warn!(error = %e, "cannot assign the partials topic; retrying");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            return true;
        }
        false
    }

    /// Reads and merges partials until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        if !self.assign(stop) {
            return;
        }
        let topic = self.cfg.partials();
        let mut reached: Vec<(i32, i64)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(msg) = self.consumer.poll(Duration::from_millis(100)) else {
                self.check_caught_up(&reached);
                continue;
            };
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "error reading partials");
                    continue;
                }
            };
            if self.stats.caught_up_ms.load(Ordering::Relaxed) != 0 {
                if let Some(sent) = m.timestamp().to_millis() {
                    let d = (now_ms() - sent).max(0) as u64;
                    self.stats.delay_ms_sum.fetch_add(d, Ordering::Relaxed);
                    self.stats.delay_count.fetch_add(1, Ordering::Relaxed);
                    self.stats.delay_ms_max.fetch_max(d, Ordering::Relaxed);
                }
            }
            let bytes = m.payload().unwrap_or_default();
            self.stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let span = tracing::debug_span!("partial_merge", topic = %topic, offset = m.offset());
            let parent = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == crate::trace::HEADER)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            if let Some(tp) = parent {
                crate::trace::follow(&span, &tp);
            }
            let _span = span.entered();
            match Partial::decode(bytes).and_then(|p| self.engine.absorb(&p)) {
                Ok(Absorbed::Applied) => self.stats.applied.fetch_add(1, Ordering::Relaxed),
                Ok(Absorbed::Stale) => self.stats.stale.fetch_add(1, Ordering::Relaxed),
                Ok(Absorbed::Gap) => self.stats.gaps.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, offset = m.offset(), "a partial refused (a worker of another configuration or version?)");
                    self.stats.invalid.fetch_add(1, Ordering::Relaxed)
                }
            };
            match reached.iter_mut().find(|(p, _)| *p == m.partition()) {
                Some(r) => r.1 = m.offset() + 1,
                None => reached.push((m.partition(), m.offset() + 1)),
            }
            self.check_caught_up(&reached);
        }
    }

    fn check_caught_up(&self, reached: &[(i32, i64)]) {
        if self.stats.caught_up_ms.load(Ordering::Relaxed) != 0 {
            return;
        }
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let done = targets.iter().all(|&(p, end)| end == 0 || reached.iter().any(|&(q, at)| q == p && at >= end));
        if done {
            self.stats.caught_up_ms.store(now_ms() as u64, Ordering::Relaxed);
            tracing::info!(
                took_ms = self.started.elapsed().as_millis() as u64,
                parts = self.engine.parts_status().len(),
                "partials read up to the end of the topic: the view is whole"
            );
        }
    }
}

impl warroom_status::IngestStatus for PartialsSource {
    fn not_ready(&self) -> Option<String> {
        (self.stats.caught_up_ms.load(Ordering::Relaxed) == 0)
            .then(|| format!("reading the partials topic {} up to its end", self.cfg.partials()))
    }

    fn lag(&self) -> Option<u64> {
        None
    }

    fn expose_metrics(&self, p: &Exposition, now: i64) {
        let s = &self.stats;
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        p.one("partials_applied_total", Counter, "Partials merged.", c(&s.applied));
        p.one("partials_stale_total", Counter, "Partials of a former owner, ignored.", c(&s.stale));
        p.one("partials_gaps_total", Counter, "Partials out of sequence (the part waits for a full one).", c(&s.gaps));
        p.one("partials_invalid_total", Counter, "Partials refused as damaged or of another layout.", c(&s.invalid));
        p.one("partials_bytes_total", Counter, "Bytes of partials read.", c(&s.bytes));
        let n = c(&s.delay_count);
        let mean = if n > 0 { c(&s.delay_ms_sum) as f64 / n as f64 } else { 0.0 };
        p.one(
            "partials_delay_ms_mean",
            Gauge,
            "Mean time from a worker producing a partial to this node reading it.",
            mean,
        );
        p.one(
            "partials_delay_ms_max",
            Gauge,
            "Largest time from a worker producing a partial to this node reading it.",
            c(&s.delay_ms_max),
        );
        let parts = self.engine.parts_status();
        p.one("partials_parts", Gauge, "Parts (input partitions) merged.", parts.len());
        p.head("partials_part_watermark_lag_ms", Gauge, "Event time of the newest part minus this part's.");
        let newest = parts.iter().map(|x| x.watermark).max().unwrap_or(0);
        for x in &parts {
            p.labelled(
                "partials_part_watermark_lag_ms",
                Gauge,
                &[("part", x.part.clone())],
                (newest - x.watermark).max(0),
            );
        }
        p.head("partials_part_position", Gauge, "Input offset a part's partial covers.");
        for x in &parts {
            p.labelled("partials_part_position", Gauge, &[("part", x.part.clone())], x.position);
        }
        let _ = now;
    }

    fn set_batch_histogram(&self, _h: metrics::Histogram) {}
}
