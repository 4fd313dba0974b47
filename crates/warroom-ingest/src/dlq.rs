//! The dead-letter topic: every message the monitor rejects goes there with headers saying
//! why and where from, and nothing is ever lost on the way.
//!
//! A rejected message becomes a [`Letter`] in an outbox, owned there until its delivery report
//! says the broker has it. Sending never waits: a full local queue or a failing broker leaves
//! the letter in the outbox, retried with backoff by [`DeadLetters::pump`] (called by the poll
//! loop). No lock is held across any wait: the outbox lock covers a map update, nothing more,
//! so the applier, the publisher and `/metrics` never wait for the dead-letter path.
//!
//! The source consults the outbox before it checkpoints: a checkpoint (and so a commit) never
//! covers a rejected message whose dead letter is not delivered ([`DeadLetters::wait_delivered`]);
//! while the topic fails, checkpoints are skipped and the monitor reports itself degraded with
//! what to fix ([`DeadLetters::problem`]). A crash then replays from the last checkpoint and
//! rejects (and dead-letters) the same messages again: nothing lost, counts exact. The one
//! exception is giving partitions up in a rebalance, where skipping the checkpoint would let the
//! new owner count this member's events again: there the undelivered letters are written into
//! the checkpoint instead ([`DeadLetters::undelivered`]), and sent again after a restart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};

/// One rejected message on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    /// `warroom-reason`, `warroom-field`, ... (see the Kafka source).
    pub headers: Vec<(String, String)>,
    /// Where it came from.
    pub partition: i32,
    pub offset: i64,
}

/// A letter not yet delivered.
#[derive(Debug)]
struct Pending {
    letter: Letter,
    /// When it was first handed over.
    since: Instant,
    /// In librdkafka's hands now (a delivery report will come).
    in_flight: bool,
    /// Not to be tried again before this.
    next_try: Instant,
    attempts: u32,
}

#[derive(Debug, Default)]
struct Outbox {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// Ids to send (again), oldest first.
    queue: VecDeque<u64>,
    /// The newest delivery error and when.
    last_error: Option<(Instant, String)>,
}

/// Counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct DlqStats {
    /// Letters the broker confirmed.
    pub delivered: AtomicU64,
    /// Delivery attempts that failed (each letter is retried until it is delivered).
    pub failed_attempts: AtomicU64,
}

struct DlqContext {
    outbox: Arc<Mutex<Outbox>>,
    stats: Arc<DlqStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((250u64 << attempts.min(5)).min(5_000))
}

impl ClientContext for DlqContext {
    fn error(&self, error: KafkaError, reason: &str) {
        lock(&self.outbox).last_error = Some((Instant::now(), format!("{error} ({reason})")));
    }
}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, id: usize) {
        let mut o = lock(&self.outbox);
        let id = id as u64;
        match r {
            Ok(_) => {
                if o.pending.remove(&id).is_some() {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err((e, _)) => {
                self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                o.last_error = Some((Instant::now(), e.to_string()));
                if let Some(p) = o.pending.get_mut(&id) {
                    p.in_flight = false;
                    p.attempts += 1;
                    p.next_try = Instant::now() + backoff(p.attempts);
                    o.queue.push_back(id);
                }
            }
        }
    }
}

/// The headers of a dead letter: why the message was rejected and where it came from (a
/// consumer of the dead letters can drop a rare repeat after a crash by the source position).
pub fn rejection_headers(
    rejection: &warroom_model::Rejection,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<(String, String)> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    vec![
        ("warroom-reason".to_string(), rejection.reason.as_str().to_string()),
        ("warroom-field".to_string(), rejection.field.unwrap_or("").to_string()),
        ("warroom-detail".to_string(), rejection.to_string()),
        ("warroom-source-topic".to_string(), topic.to_string()),
        ("warroom-source-partition".to_string(), partition.to_string()),
        ("warroom-source-offset".to_string(), offset.to_string()),
        ("warroom-rejected-at-ms".to_string(), now.to_string()),
    ]
}

/// The dead-letter producer and its outbox.
pub struct DeadLetters {
    producer: ThreadedProducer<DlqContext>,
    outbox: Arc<Mutex<Outbox>>,
    pub topic: String,
    pub stats: Arc<DlqStats>,
}

impl DeadLetters {
    /// A producer for `topic` with `cfg` (bootstrap servers, security). Each attempt is given
    /// `message.timeout.ms` (10 s unless `cfg` says otherwise) before it counts as failed and
    /// is retried from the outbox.
    pub fn new(mut cfg: ClientConfig, topic: &str) -> Result<DeadLetters, KafkaError> {
        if cfg.get("message.timeout.ms").is_none() {
            cfg.set("message.timeout.ms", "10000");
        }
        if cfg.get("linger.ms").is_none() {
            cfg.set("linger.ms", "5");
        }
        let outbox = Arc::new(Mutex::new(Outbox::default()));
        let stats = Arc::new(DlqStats::default());
        let producer = cfg.create_with_context(DlqContext { outbox: outbox.clone(), stats: stats.clone() })?;
        Ok(DeadLetters { producer, outbox, topic: topic.to_string(), stats })
    }

    /// Takes a letter and tries to hand it to librdkafka at once; never waits. Returns its id
    /// (ids increase: everything handed over so far is at most the last one).
    pub fn send(&self, letter: Letter) -> u64 {
        let mut o = lock(&self.outbox);
        let id = o.next_id;
        o.next_id += 1;
        let now = Instant::now();
        o.pending.insert(id, Pending { letter, since: now, in_flight: false, next_try: now, attempts: 0 });
        self.try_send(&mut o, id);
        id
    }

    /// The id the next letter will get: every letter before it was handed over.
    pub fn next_id(&self) -> u64 {
        lock(&self.outbox).next_id
    }

    /// Hands letter `id` to librdkafka; back to the queue if it will not take it now.
    fn try_send(&self, o: &mut Outbox, id: u64) {
        let Some(p) = o.pending.get(&id) else { return };
        let l = &p.letter;
        let mut headers = OwnedHeaders::new_with_capacity(l.headers.len());
        for (k, v) in &l.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut rec = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.topic, id as usize)
            .payload(&l.payload)
            .headers(headers);
        if let Some(k) = &l.key {
            rec = rec.key(k);
        }
        let result = self.producer.send(rec).map_err(|(e, _)| e);
        let failure = match &result {
            Err(e) if !matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => Some(e.to_string()),
            _ => None,
        };
        if let Some(e) = failure {
            // A full local queue is librdkafka keeping up; anything else is a failure.
            self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            o.last_error = Some((Instant::now(), e));
        }
        let p = o.pending.get_mut(&id).expect("present");
        if result.is_ok() {
            p.in_flight = true;
        } else {
            p.attempts += 1;
            p.next_try = Instant::now() + backoff(p.attempts.min(1));
            o.queue.push_back(id);
        }
    }

    /// Sends again what is due (letters the local queue refused, or whose delivery failed).
    /// Cheap when there is nothing to do; called by the poll loop on every turn.
    pub fn pump(&self) {
        let mut o = lock(&self.outbox);
        let now = Instant::now();
        for _ in 0..o.queue.len().min(10_000) {
            let Some(id) = o.queue.pop_front() else { break };
            match o.pending.get(&id) {
                None => continue,
                Some(p) if p.in_flight => continue,
                Some(p) if p.next_try > now => {
                    o.queue.push_back(id);
                    continue;
                }
                Some(_) => self.try_send(&mut o, id),
            }
        }
    }

    /// Letters not delivered yet.
    pub fn pending(&self) -> usize {
        lock(&self.outbox).pending.len()
    }

    /// Waits (holding no lock of the caller's) until every letter with an id below `before` is
    /// delivered, at most `timeout`; true if they are.
    pub fn wait_delivered(&self, before: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = lock(&self.outbox).pending.keys().next().is_none_or(|&id| id >= before);
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.pump();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Copies of the undelivered letters with ids below `before` (to write into a checkpoint).
    pub fn undelivered(&self, before: u64) -> Vec<Letter> {
        lock(&self.outbox).pending.range(..before).map(|(_, p)| p.letter.clone()).collect()
    }

    /// What is wrong with the dead-letter path, if anything, said so that an operator knows
    /// what to fix: letters waiting for more than 5 s, or a failure while some wait.
    pub fn problem(&self) -> Option<String> {
        let o = lock(&self.outbox);
        let (&_, oldest) = o.pending.iter().next()?;
        let age = oldest.since.elapsed();
        let failing = o.last_error.as_ref().filter(|(at, _)| at.elapsed() < Duration::from_secs(30));
        if age < Duration::from_secs(5) && failing.is_none() {
            return None;
        }
        let why = failing.map_or_else(|| "no delivery report yet".to_string(), |(_, e)| e.clone());
        Some(format!(
            "dead-letter topic `{}` is not taking messages ({why}); {} dead letters are kept in memory, the oldest for {} s, and offsets are not committed past them: check that the topic exists and is writable (brokers, ACLs, kafka.dlq_brokers)",
            self.topic,
            o.pending.len(),
            age.as_secs()
        ))
    }

    /// Waits for librdkafka to hand over what it holds (at shutdown), at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(0) < backoff(3));
        assert_eq!(backoff(50), Duration::from_millis(5_000));
    }
}
