//! Scale-out on the real broker, through real processes: ingest workers
//! (`warroom run --source worker`) in one consumer group, per-partition state in a shared store,
//! partials merged by API nodes (`warroom run --source partials`). Both API nodes must show the
//! naive reference's numbers (money and counts exact, distinct counts within 2%) on data with
//! duplicates, re-sent pays, late and bad events, keyed as contract v1.1 producers key them,
//! through: a worker killed with SIGKILL mid-stream, a worker joining mid-stream, a worker's
//! local disk wiped while it is down, an API node restarted mid-stream.
//! Needs the broker scripts/test.sh starts (WARROOM_KAFKA_BROKERS).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warroom_engine::Snapshot;
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{brokers, create_topic, files_starting, produce, unique, Running};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");
const PARTITIONS: i32 = 12;

struct Cluster {
    topic: String,
    group: String,
    dir: tempfile::TempDir,
    store: PathBuf,
    /// Bodies the alert webhook received.
    hooks: Bodies,
    /// OTLP/HTTP export requests (protobuf) the nodes sent.
    spans: Bodies,
    otlp_port: u16,
}

type Bodies = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// An HTTP receiver (the alert webhook, the OTLP collector): records each POST's body,
/// answers 200 (HTTP/1.1, keep-alive).
fn receiver() -> (u16, Bodies) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Bodies = Default::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    g.lock().unwrap().push(body);
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (port, got)
}

impl Cluster {
    fn new(prefix: &str) -> Cluster {
        let topic = unique(prefix);
        create_topic(&topic, PARTITIONS);
        let dir = tempfile::tempdir().unwrap();
        let (hook_port, hooks) = receiver();
        let (otlp_port, spans) = receiver();
        // Dynamic membership (Tansu never expires a static member that does not come back);
        // short group timeouts; partials 4 times a second, a full one every 2 s.
        std::fs::write(
            dir.path().join("warroom.toml"),
            format!(
                "{}[kafka]\ninstance_id = \"\"\ncheckpoint_interval = \"1s\"\npartial_interval = \"250ms\"\nfull_partial_interval = \"2s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"4000\"\n\"max.poll.interval.ms\" = \"5000\"\n[alerts]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n[[alerts.rules]]\nname = \"any-gmv\"\nkind = \"threshold\"\nmetric = \"gmv_cents\"\nwindow = \"1h\"\nfire = 0.0\n",
                warroom_tests::kafka::REFERENCE_RACES
            ),
        )
        .unwrap();
        let store = dir.path().join("store");
        Cluster { topic, group: unique("workers"), dir, store, hooks, spans, otlp_port }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self, name: &str, role: &str) -> Running {
        let local = self.path(&format!("local-{name}"));
        std::fs::create_dir_all(&local).unwrap();
        Command::new(BIN)
            .args(["run", "--source", role, "--listen", "127.0.0.1:0", "--brokers", &brokers()])
            .args(["--topic", &self.topic, "--group", &self.group])
            .arg("--config")
            .arg(self.path("warroom.toml"))
            .arg("--state-dir")
            .arg(&local)
            .arg("--state-store")
            .arg(&self.store)
            .arg("--snapshot-out")
            .arg(self.path(&format!("{name}.json")))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", self.otlp_port))
            .env("OTEL_SERVICE_NAME", format!("warroom-{name}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "500")
            .stdout(Stdio::from(std::fs::File::create(self.path(&format!("out-{name}.txt"))).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(self.path(&format!("log-{name}.txt"))).unwrap()))
            .spawn()
            .map(Running)
            .expect("start warroom")
    }

    /// The API node's base URL, from the screen address it printed.
    fn try_base(&self, name: &str) -> Option<String> {
        let out = std::fs::read_to_string(self.path(&format!("out-{name}.txt"))).ok()?;
        let line = out.lines().find_map(|l| l.strip_prefix("screen (ops):"))?;
        Some(line.trim().split("/#").next()?.to_string())
    }

    fn base(&self, name: &str) -> String {
        self.try_base(name).unwrap_or_else(|| panic!("{name} printed no screen address"))
    }

    fn snapshot(&self, name: &str) -> Option<Snapshot> {
        serde_json::from_slice(&std::fs::read(self.path(&format!("{name}.json"))).ok()?).ok()
    }

    /// Messages an API node's view covers (accepted + rejected + duplicates).
    fn read(&self, name: &str) -> u64 {
        self.snapshot(name).map_or(0, |s| s.totals.accepted + s.totals.rejected + s.totals.duplicates)
    }

    fn wait_read(&self, names: &[&str], n: u64, what: &str) {
        let started = Instant::now();
        while names.iter().any(|x| self.read(x) != n) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{what}: API nodes read {:?} of {n} in 120 s; logs:\n{}",
                names.iter().map(|x| self.read(x)).collect::<Vec<_>>(),
                files_starting(self.dir.path(), "log-")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn night(seed: u64, events: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = GenConfig {
        seed,
        users: 5_000,
        merchant_change_share: 0.0,
        duplicate_share: 0.02,
        resend_share: 0.02,
        late_share: 0.02,
        bad_share: 0.005,
        ..GenConfig::default()
    };
    write_night(cfg, events, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    buf
}

fn kill9(r: &mut Running) {
    r.kill().unwrap(); // SIGKILL
    r.wait().unwrap();
}

/// Every API node's view equals the reference within 10 s of having read everything: the
/// workers bring their windows to one clock (the newest event time of any of them) with their
/// next partials.
fn check(c: &Cluster, names: &[&str], lines: &[&[u8]], what: &str) {
    let want = warroom_tests::reference(lines, &[60_000, 300_000, 3_600_000], 300_000);
    for n in names {
        let started = Instant::now();
        loop {
            let snap = c.snapshot(n).unwrap();
            let d = warroom_tests::differences(&snap, &want);
            if d.is_empty() {
                eprintln!("{what}: API node {n} equals the reference after {:?}", started.elapsed());
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{what}, API node {n}:\n{}", d.join("\n"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn stored_partitions(store: &Path, topic: &str) -> usize {
    std::fs::read_dir(store.join(topic)).map_or(0, |d| d.count())
}

#[test]
fn three_workers_two_api_nodes_match_the_reference_through_kill_join_wipe_and_restart() {
    let buf = night(21, 48_000);
    let lines = warroom_tests::lines(&buf);
    let n = lines.len();
    let q = n / 4;
    let c = Cluster::new("scaleout");
    let mut w1 = c.start("w1", "worker");
    let _w2 = c.start("w2", "worker");
    let mut w3 = c.start("w3", "worker");
    let _a1 = c.start("a1", "partials");
    let mut a2 = c.start("a2", "partials");

    // 1. The first quarter, read by three workers, merged by both API nodes.
    produce(&c.topic, &lines[..q]);
    c.wait_read(&["a1", "a2"], q as u64, "first quarter");
    check(&c, &["a1", "a2"], &lines[..q], "three workers");
    let wait = Instant::now();
    while stored_partitions(&c.store, &c.topic) < PARTITIONS as usize {
        assert!(wait.elapsed() < Duration::from_secs(30), "every partition's state stored");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. A worker killed mid-stream, with events applied since its last checkpoint: its
    // partitions are counted again by their new owners from the store (nothing lost, nothing
    // twice; re-sent pays of orders paid before the move are caught because de-duplication
    // moved with the partition).
    let h = q + q / 2;
    produce(&c.topic, &lines[q..h]);
    c.wait_read(&["a1", "a2"], h as u64, "second quarter, first half");
    kill9(&mut w1);
    let killed = Instant::now();
    produce(&c.topic, &lines[h..2 * q]);
    c.wait_read(&["a1", "a2"], 2 * q as u64, "second quarter after kill -9 of a worker");
    let took = killed.elapsed();
    eprintln!("a killed worker's partitions counted again within {took:?} (session timeout 4 s)");
    assert!(took < Duration::from_secs(10), "counted again in {took:?}");
    check(&c, &["a1", "a2"], &lines[..2 * q], "after kill -9 of a worker");

    // 3. A fourth worker joins and another worker's local disk is wiped while it is down, both
    // mid-stream.
    kill9(&mut w3);
    std::fs::remove_dir_all(c.path("local-w3")).unwrap();
    let _w4 = c.start("w4", "worker");
    produce(&c.topic, &lines[2 * q..3 * q]);
    let _w3 = c.start("w3", "worker");
    c.wait_read(&["a1", "a2"], 3 * q as u64, "third quarter (a join, a wiped disk)");
    check(&c, &["a1", "a2"], &lines[..3 * q], "after a join and a wiped disk");

    // 4. An API node restarted: it rebuilds the whole view from Kafka alone, then follows.
    kill9(&mut a2);
    let _ = std::fs::remove_file(c.path("a2.json"));
    let restarted = Instant::now();
    let mut a2 = c.start("a2", "partials");
    c.wait_read(&["a2"], 3 * q as u64, "a restarted API node");
    eprintln!("a restarted API node had the whole view within {:?} (process start included)", restarted.elapsed());
    check(&c, &["a2"], &lines[..3 * q], "a restarted API node");
    produce(&c.topic, &lines[3 * q..]);
    c.wait_read(&["a1", "a2"], n as u64, "everything");
    std::thread::sleep(Duration::from_secs(2));
    check(&c, &["a1", "a2"], &lines, "end of stream");
    // Both API nodes (and the restarted one) evaluate the same alert; the webhook heard of its
    // firing once.
    let hooks: Vec<String> = c.hooks.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    let fired = hooks.iter().filter(|b| b.contains("\"any-gmv") && b.contains("\"firing\"")).count();
    assert_eq!(fired, 1, "the webhook heard of the alert's firing once: {hooks:?}");
    // Both API nodes serve the same history, derived from the workers' batches on Kafka (the
    // restarted one read them all again), equal to the reference minute by minute and scope
    // by scope, through the kill -9, the join and the wiped disk.
    let want = warroom_tests::reference_history(&lines);
    for name in ["a1", "a2"] {
        let base = c.base(name);
        let started = Instant::now();
        loop {
            let d = warroom_tests::history_differences(&base, "demo-ops-token-0001", &want);
            if d.is_empty() {
                eprintln!("API node {name}: history equals the reference after {:?}", started.elapsed());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "API node {name}: {} history differences, first:\n{}",
                d.len(),
                d[..d.len().min(20)].join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    spans_follow_partials_across_nodes(&c);
    let snap = c.snapshot("a1").unwrap();
    assert!(snap.counters.resent_pays > 0 && snap.totals.duplicates > 0 && snap.totals.rejected > 0);
    a_rule_change_reaches_every_api_node(&c, &mut a2);
}

/// A race-rule change made on one API node is in force at once there and soon on the other
/// (each ranks the races), both keep it in their audit trail and history journal once, and
/// an API node restarted afterwards ranks by it too (it reads the rule log again).
fn a_rule_change_reaches_every_api_node(c: &Cluster, a2: &mut Running) {
    const ADMIN: &str = "demo-admin-token-0001";
    let rule = |base: &str| {
        let (status, body) =
            warroom_tests::kafka::http_get(base, "/api/v1/venues/digital/rule", Some(ADMIN), Duration::from_secs(5));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["rule"].as_str().unwrap_or("").to_string()
    };
    let changes = |base: &str| -> usize {
        let (_, audit) = warroom_tests::kafka::http_get(base, "/api/v1/audit", Some(ADMIN), Duration::from_secs(5));
        let (_, journal) = warroom_tests::kafka::http_get(
            base,
            "/api/v1/history/journal?kind=rule_change",
            Some(ADMIN),
            Duration::from_secs(5),
        );
        let (a, j) = (audit.matches("\"shared-rule\"").count(), journal.matches("shared-rule").count());
        assert_eq!(a.min(1), j.min(1), "audit {audit} vs journal {journal}");
        a
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !f() {
            assert!(started.elapsed() < Duration::from_secs(20), "{what} within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{what} after {:?}", started.elapsed());
    };
    let (b1, b2) = (c.base("a1"), c.base("a2"));
    assert_eq!(rule(&b2), "gmv");
    let (status, body) = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(b1.trim_start_matches("http://")).unwrap();
        let body = r#"{"rule": "shared-rule", "weights": {"gmv": 0.5, "gmv_rise": 0.5}}"#;
        write!(s, "PUT /api/v1/venues/digital/rule HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        (t.split_whitespace().nth(1).unwrap_or("").to_string(), t)
    };
    assert_eq!(status, "200", "{body}");
    assert_eq!(rule(&b1), "shared-rule", "in force on the node that made it when it answers");
    wait_for("the rule change in force on the other API node", &|| rule(&b2) == "shared-rule");
    wait_for("the rule change journaled on both", &|| changes(&b1) == 1 && changes(&b2) == 1);
    // What the screens get: both nodes' snapshots rank the venue by it.
    let ranked_by = |name: &str| -> Option<String> {
        let s = c.snapshot(name)?;
        Some(s.venues.iter().find(|v| v.venue == "digital")?.race.rule.clone())
    };
    wait_for("both snapshots ranked by the new rule", &|| {
        ranked_by("a1").as_deref() == Some("shared-rule") && ranked_by("a2").as_deref() == Some("shared-rule")
    });
    // The other API node restarted: it takes the change from the log again, and keeps it once.
    kill9(a2);
    let _ = std::fs::remove_file(c.path("out-a2.txt"));
    *a2 = c.start("a2", "partials");
    let b2 = {
        let started = Instant::now();
        loop {
            if let Some(b) = c.try_base("a2") {
                break b;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the restarted API node listens");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the rule in force on the restarted API node", &|| rule(&b2) == "shared-rule");
    wait_for("its snapshot ranked by it", &|| ranked_by("a2").as_deref() == Some("shared-rule"));
    wait_for("the rule change in its audit trail", &|| changes(&b2) == 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(changes(&b2), 1, "kept once");
}

/// The nodes exported their spans over OTLP, and a trace follows a partial from the worker
/// that published it into an API node that merged it (same trace, parent = the worker's span).
fn spans_follow_partials_across_nodes(c: &Cluster) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    std::thread::sleep(Duration::from_secs(1));
    let mut spans = Vec::new(); // (service, name, trace id, span id, parent span id)
    for body in c.spans.lock().unwrap().iter() {
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP/HTTP protobuf export");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push((service.clone(), s.name, s.trace_id, s.span_id, s.parent_span_id));
            }
        }
    }
    let names: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.1.as_str()).collect();
    for want in ["consume", "apply", "partial_publish", "partial_merge", "publish", "push"] {
        assert!(names.contains(want), "span {want} exported; got {names:?}");
    }
    let published: std::collections::HashMap<&[u8], &str> =
        spans.iter().filter(|s| s.1 == "partial_publish").map(|s| (s.3.as_slice(), s.0.as_str())).collect();
    let followed = spans
        .iter()
        .filter(|s| s.1 == "partial_merge" && s.0.contains("warroom-a"))
        .filter(|s| published.get(s.4.as_slice()).is_some_and(|svc| svc.contains("warroom-w")))
        .count();
    eprintln!(
        "{} spans exported; {followed} partial merges on API nodes are children of a worker's publish",
        spans.len()
    );
    assert!(followed > 0, "a merge on an API node has a worker's partial_publish as its parent");
}
