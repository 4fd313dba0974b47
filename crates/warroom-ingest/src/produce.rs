//! Producing events to Kafka for `warroom loadgen` and `warroom rehearse`: one librdkafka
//! producer shared by the producing threads, with delivery reports counted, and the CPU and
//! memory of a process read from `/proc` (loadgen measures its own overhead with it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// Delivery reports, counted.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// The newest delivery error, for the progress line.
    pub last_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = self.last_error.lock() {
                    *g = Some(e.to_string());
                }
            }
        }
    }
}

/// A producer for event lines, keyed as contract v1.1 says ([`partition_key`]: `order`, `pay`
/// and `refund` by `order_id`, the rest by `user_id`), waiting while librdkafka's queue is
/// full.
pub struct EventProducer {
    inner: ThreadedProducer<Deliveries>,
    topic: String,
    /// Times `send` found the local queue full and waited (the broker is not keeping up).
    pub queue_full_waits: AtomicU64,
    headers: Option<OwnedHeaders>,
}

impl EventProducer {
    /// `props`: extra librdkafka settings (`key=value`), applied last.
    pub fn new(brokers: &str, topic: &str, props: &[(String, String)]) -> Result<EventProducer, KafkaError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "120000");
        for (k, v) in props {
            cfg.set(k, v);
        }
        let inner = cfg.create_with_context(Deliveries::default())?;
        Ok(EventProducer { inner, topic: topic.to_string(), queue_full_waits: AtomicU64::new(0), headers: None })
    }

    /// Every message also carries these headers (a rehearsal tags its messages).
    pub fn with_header(mut self, key: &str, value: &str) -> Self {
        let h = self.headers.take().unwrap_or_default();
        self.headers = Some(h.insert(rdkafka::message::Header { key, value: Some(value) }));
        self
    }

    /// Sends one line (without its `\n`), keyed by [`partition_key`]. Waits while the local
    /// queue is full; returns an error only for a non-retriable one.
    pub fn send(&self, line: &[u8]) -> Result<(), KafkaError> {
        self.send_at(line, None)
    }

    /// [`EventProducer::send`] with the message's timestamp set to `sent_ms` (a rehearsal sends
    /// each line with the time it arrives at in the replayed night; default: now).
    pub fn send_at(&self, line: &[u8], sent_ms: Option<i64>) -> Result<(), KafkaError> {
        let mut rec = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(line);
        if let Some(k) = partition_key(line) {
            rec = rec.key(k);
        }
        if let Some(t) = sent_ms {
            rec = rec.timestamp(t);
        }
        if let Some(h) = &self.headers {
            rec = rec.headers(h.clone());
        }
        let mut rec = Some(rec);
        while let Some(r) = rec.take() {
            match self.inner.send(r) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                    rec = Some(r);
                }
                Err((e, _)) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn deliveries(&self) -> &Deliveries {
        self.inner.context()
    }

    /// Messages handed over and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

/// The `user_id` of an event line, found without parsing.
pub fn user_key(line: &[u8]) -> Option<&[u8]> {
    string_field(line, b"\"user_id\":\"")
}

/// The Kafka key contract v1.1 gives an event line, found without parsing: its `order_id`
/// for `order`, `pay` and `refund` (every payment of an order on one partition), its
/// `user_id` otherwise (every re-delivery of an event on one partition).
pub fn partition_key(line: &[u8]) -> Option<&[u8]> {
    let money = [&b"\"type\":\"pay\""[..], b"\"type\":\"order\"", b"\"type\":\"refund\""];
    if money.iter().any(|t| memchr::memmem::find(line, t).is_some()) {
        if let Some(o) = string_field(line, b"\"order_id\":\"") {
            return Some(o);
        }
    }
    user_key(line)
}

fn string_field<'a>(line: &'a [u8], pat: &[u8]) -> Option<&'a [u8]> {
    let i = memchr::memmem::find(line, pat)? + pat.len();
    let end = memchr::memchr(b'"', &line[i..])?;
    Some(&line[i..i + end])
}

/// CPU seconds (user + system) and resident memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    pub rss_mb: f64,
}

/// [`Usage`] of process `pid` (`None`: this process); zeros when it cannot be read.
pub fn usage(pid: Option<u32>) -> Usage {
    let dir = pid.map_or("/proc/self".to_string(), |p| format!("/proc/{p}"));
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    Usage { cpu_s: stat_cpu_s(&stat), rss_mb: rss_kb / 1024.0 }
}

/// CPU seconds of each thread of `pid`, by thread name (threads of one name summed).
pub fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in dir.flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default().trim().to_string();
        let cpu = stat_cpu_s(&std::fs::read_to_string(p.join("stat")).unwrap_or_default());
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += cpu,
            None => out.push((name, cpu)),
        }
    }
    out
}

/// utime + stime of a `/proc/.../stat` line, in seconds (the kernel's USER_HZ is 100).
fn stat_cpu_s(stat: &str) -> f64 {
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Parses `key=value` producer settings.
pub fn parse_props(kv: &[String]) -> Result<Vec<(String, String)>, String> {
    kv.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--producer-prop {s:?}: expected key=value, e.g. compression.type=lz4")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_key_is_the_user_id() {
        assert_eq!(user_key(br#"{"event_id":"e","user_id":"u-42","ts":1}"#), Some(&b"u-42"[..]));
        assert_eq!(user_key(b"not json"), None);
    }

    #[test]
    fn own_usage_is_readable() {
        let u = usage(None);
        assert!(u.rss_mb > 0.0);
        assert!(!thread_cpu(std::process::id()).is_empty());
    }
}
