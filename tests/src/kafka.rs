//! Helpers for tests against the real broker that scripts/test.sh starts.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Config lines that make a monitor rank races the way the naive reference does (strictly by
/// GMV): a test's `--config` file is merged into the embedded one, which damps races with
/// hysteresis and gives the `digital` venue a composite rule.
pub const REFERENCE_RACES: &str = "[race]\nhysteresis = 0.0\n[race.venues]\ndigital = \"gmv\"\n";

pub fn brokers() -> String {
    std::env::var("WARROOM_KAFKA_BROKERS")
        .expect("WARROOM_KAFKA_BROKERS is not set: run the tests with scripts/test.sh, which starts a broker")
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{n}", std::process::id())
}

pub fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let rt = block_on(
        admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()),
    );
    for r in rt.expect("create_topics") {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Polls the admin client's future to completion (the tests need no async runtime otherwise;
/// rdkafka completes it from its own thread, so polling with a no-op waker suffices).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Produces every line, keyed by its user (so a user's events share a partition).
pub fn produce(topic: &str, lines: &[&[u8]]) {
    produce_with(&brokers(), topic, lines, true)
}

/// Like [`produce`], to the given brokers.
pub fn produce_to(brokers: &str, topic: &str, lines: &[&[u8]]) {
    produce_with(brokers, topic, lines, true)
}

/// Produces every line without a key: events (and re-deliveries) spread over partitions.
pub fn produce_unkeyed(topic: &str, lines: &[&[u8]]) {
    produce_with(&brokers(), topic, lines, false)
}

/// Produces `lines` as a live producer does: keyed as contract v1.1 says, each message's time
/// the wall clock when it is sent (whatever the event's `ts` says).
pub fn produce_now(topic: &str, lines: &[&[u8]]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("linger.ms", "5").create().expect("producer");
    for l in lines {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(*l);
        if let Some(k) = warroom_ingest::produce::partition_key(l) {
            rec = rec.key(k);
        }
        let mut rec = Some(rec);
        while let Some(r) = rec.take() {
            if let Err((_, r)) = producer.send(r) {
                std::thread::sleep(Duration::from_millis(5));
                rec = Some(r);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A message read back from a dead-letter topic: its headers (as text) and payload.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub headers: std::collections::BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    pub fn reason(&self) -> &str {
        self.headers.get("warroom-reason").map_or("", String::as_str)
    }
}

/// Reads `n` messages of the dead-letter topic `dlq` from its beginning (at most 60 s).
pub fn read_dead_letters(dlq: &str, n: u64) -> Vec<DeadLetter> {
    read_dead_letters_from(&brokers(), dlq, n)
}

/// [`read_dead_letters`] from the given brokers.
pub fn read_dead_letters_from(brokers: &str, dlq: &str, n: u64) -> Vec<DeadLetter> {
    let consumer = dead_letter_reader(brokers, dlq);
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    while (out.len() as u64) < n && started.elapsed() < Duration::from_secs(60) {
        out.extend(next_dead_letter(&consumer));
    }
    out
}

/// Reads the dead-letter topic `dlq` from its beginning until nothing new has come for
/// `idle` (at most 120 s): for when the count is not known in advance (a crash can send a
/// letter twice; its `warroom-source-partition`/`-offset` headers tell the copies apart).
pub fn read_dead_letters_until_idle(brokers: &str, dlq: &str, idle: Duration) -> Vec<DeadLetter> {
    let consumer = dead_letter_reader(brokers, dlq);
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    while last.elapsed() < idle && started.elapsed() < Duration::from_secs(120) {
        if let Some(letter) = next_dead_letter(&consumer) {
            out.push(letter);
            last = std::time::Instant::now();
        }
    }
    out
}

/// A consumer of `dlq` from its beginning, in a group of its own.
fn dead_letter_reader(brokers: &str, dlq: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "7000")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq]).unwrap();
    consumer
}

/// The next dead letter within 200 ms, if any.
fn next_dead_letter(consumer: &rdkafka::consumer::BaseConsumer) -> Option<DeadLetter> {
    use rdkafka::message::{Headers, Message};
    let m = consumer.poll(Duration::from_millis(200))?.ok()?;
    let h = m.headers().expect("dead letters carry headers");
    let headers =
        h.iter().filter_map(|x| x.value.map(|v| (x.key.to_string(), String::from_utf8_lossy(v).to_string()))).collect();
    Some(DeadLetter { headers, payload: m.payload().unwrap_or_default().to_vec() })
}

/// Produces `lines`, keyed as contract v1.1 says (unless `keyed` is false), each message
/// stamped with its event's `ts` as the time it was sent: a recorded night produced as if live
/// (the monitor refuses events stamped far behind their message's time).
fn produce_with(brokers: &str, topic: &str, lines: &[&[u8]], keyed: bool) {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    produce_configured(cfg, topic, lines, keyed)
}

/// Produces every line (keyed as contract v1.1 says if `keyed`, message time = `ts`) with a
/// producer made from `cfg` (brokers, TLS, SASL: whatever the test needs).
pub fn produce_configured(mut cfg: ClientConfig, topic: &str, lines: &[&[u8]], keyed: bool) {
    let producer: ThreadedProducer<DefaultProducerContext> = cfg.set("linger.ms", "5").create().expect("producer");
    for l in lines {
        let key = warroom_ingest::produce::partition_key(l).filter(|_| keyed);
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(*l);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(ts) = sent_time(l) {
            rec = rec.timestamp(ts);
        }
        let mut rec = Some(rec);
        while let Some(r) = rec.take() {
            if let Err((_, r)) = producer.send(r) {
                std::thread::sleep(Duration::from_millis(5));
                rec = Some(r);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The `ts` of an event line, as the time its message is sent (none for lines without one).
pub fn sent_time(line: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(line).ok()?.get("ts")?.as_i64().filter(|t| *t >= 0)
}

/// A child process that is killed when dropped: a test that fails half-way leaves no monitor
/// running behind it. Derefs to the [`std::process::Child`].
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `warroom run --source kafka` (the binary at `bin`) on `topic` with `dir` holding its
/// config (`warroom.toml`), state, snapshot file (`snapshot.json`, written every second),
/// stdout (`out-*.txt`) and log (`log-*.txt`); `extra` arguments are added.
pub fn start_monitor(bin: &str, topic: &str, dir: &std::path::Path, extra: &[&str]) -> Running {
    start_monitor_env(bin, topic, dir, extra, &[])
}

/// [`start_monitor`] with environment variables set for the monitor only.
pub fn start_monitor_env(
    bin: &str,
    topic: &str,
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    start_monitor_on(bin, &brokers(), topic, dir, extra, env)
}

/// [`start_monitor_env`] reading from `brokers` (a private broker, a TLS terminator).
pub fn start_monitor_on(
    bin: &str,
    brokers: &str,
    topic: &str,
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    use std::process::{Command, Stdio};
    let tag = unique("run");
    Command::new(bin)
        .envs(env.iter().copied())
        .args(["run", "--source", "kafka", "--listen", "127.0.0.1:0", "--brokers", brokers, "--topic", topic])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--snapshot-out")
        .arg(dir.join("snapshot.json"))
        .arg("--config")
        .arg(dir.join("warroom.toml"))
        .args(extra)
        .stdout(Stdio::from(std::fs::File::create(dir.join(format!("out-{tag}.txt"))).expect("stdout file")))
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("log-{tag}.txt"))).expect("log file")))
        .spawn()
        .map(Running)
        .expect("start warroom")
}

/// Messages the running monitor has read (accepted + rejected + duplicates), per its snapshot.
pub fn read_so_far(dir: &std::path::Path) -> u64 {
    let Ok(b) = std::fs::read(dir.join("snapshot.json")) else { return 0 };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else { return 0 };
    let t = &v["totals"];
    ["accepted", "rejected", "duplicates"].iter().map(|k| t[k].as_u64().unwrap_or(0)).sum()
}

/// The text of the files in `dir` whose names start with `prefix` (the monitors' logs).
pub fn files_starting(dir: &std::path::Path, prefix: &str) -> String {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.join("\n---\n")
}

/// Waits (at most 90 s) until the monitor writing into `dir` has read `n` messages.
pub fn wait_for_read(dir: &std::path::Path, n: u64, what: &str) {
    let started = std::time::Instant::now();
    while read_so_far(dir) < n {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what}: read {} of {n} in 90 s; logs:\n{}",
            read_so_far(dir),
            files_starting(dir, "log-")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One message as read back from the broker.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The message's CreateTime (ms): when the producer was handed it.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads partitions `0..partitions` of `topic` from the start until `n` messages are in
/// (at most 60 s), in partition then offset order.
pub fn consume_all(topic: &str, partitions: i32, n: usize) -> Vec<Consumed> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(n);
    let started = std::time::Instant::now();
    while out.len() < n {
        assert!(started.elapsed() < Duration::from_secs(60), "read {} of {n} messages of {topic} in 60 s", out.len());
        let Some(m) = c.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("consume");
        let headers = m
            .headers()
            .map(|h| h.iter().map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        out.push(Consumed {
            partition: m.partition(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            timestamp_ms: m.timestamp().to_millis(),
            headers,
        });
    }
    out.sort_by_key(|m| m.partition);
    out
}

/// A free TCP port on loopback (free when asked; tests bind it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Tansu binary that scripts/test.sh installed.
pub fn tansu() -> String {
    std::env::var("WARROOM_TANSU").expect("WARROOM_TANSU is not set: run the tests with scripts/test.sh")
}

/// A private broker, for tests that stop, pause or replace it: it listens on its own port and
/// advertises `advertised` (the port of whatever clients connect through: itself, a relay, a
/// TLS terminator).
pub struct PrivateBroker {
    pub child: std::process::Child,
    pub port: u16,
}

impl PrivateBroker {
    /// A broker listening on a new free port, advertising `advertised`.
    pub fn start(advertised: u16) -> PrivateBroker {
        Self::start_on(free_port(), advertised, &[])
    }

    /// A broker listening on `port`, advertising `advertised`, with `extra` arguments.
    pub fn start_on(port: u16, advertised: u16, extra: &[&str]) -> PrivateBroker {
        let child = std::process::Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "private broker did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateBroker { child, port }
    }

    /// Creates a topic on this broker directly (with Tansu's own CLI).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = std::process::Command::new(tansu())
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .expect("tansu topic create");
        assert!(out.status.success(), "tansu topic create: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(self) {
        drop(self);
    }
}

/// A test that fails half-way must not leave its broker running.
impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base URL (`http://127.0.0.1:PORT`) of the monitor writing into `dir`, from the screen
/// URL it prints (at most 30 s).
pub fn monitor_url(dir: &std::path::Path) -> String {
    let started = std::time::Instant::now();
    loop {
        let out = files_starting(dir, "out-");
        if let Some(u) = out.lines().find_map(|l| l.strip_prefix("screen (ops):")) {
            return u.trim().split("/#").next().unwrap().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the monitor printed no URL; logs:\n{}",
            files_starting(dir, "log-")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `path` of `base` with a bearer token (none: no header): (status, body). Times out after
/// `timeout`, returning status 0.
pub fn http_get(base: &str, path: &str, token: Option<&str>, timeout: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(timeout));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    if s.read_to_string(&mut text).is_err() {
        return (0, text);
    }
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of metric `name` (exact series, labels included) in a Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The group's committed offset of partitions `0..partitions` of `topic` (0: none), as the
/// broker records them.
pub fn committed(group: &str, topic: &str, partitions: i32) -> std::collections::BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { 0 })).collect()
}

/// Waits until `done`, polling every 200 ms; fails the test after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < std::time::Duration::from_secs(secs), "{what}: not reached in {secs} s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
