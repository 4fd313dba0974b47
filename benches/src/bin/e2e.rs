//! `e2e`: the end-to-end bench. Event produced to Kafka -> the WebSocket frame that includes it.
//!
//! Usage: `e2e --brokers HOST:PORT --warroom PATH [--rate 20000] [--seconds 60] [--clients 100]
//!         [--profile steady|ramp|double11] [--peak 8] [--threads 2] [--slo-p99-ms 1000]
//!         [--broker-pid PID] [--json-out FILE] [--monitor-config FILE] [--every 5]
//!         [--search [--search-start 10000] [--search-factor 1.5] [--search-max 400000]]
//!         [--probe-every-ms 10] [--loadgen-prop linger.ms=200 ...]`
//!
//! One run: it creates a 4-partition topic, starts the real monitor (`warroom run --source
//! kafka`) and connects `--clients` WebSocket clients, then runs the real load generator
//! (`warroom loadgen`, a child process, so its CPU is measured apart) at `--rate` with the
//! `--profile` shape. Every 10 ms the bench itself produces a *probe*: a click of one user on
//! the slot `probe-000`, which every client follows (`{"subscribe": {"slots": ["probe-000"]}}`:
//! screens are pushed the top of each race and the slots they follow). One user means one partition, so the probes stay in order, and a frame
//! showing `clicks = k` on that slot includes probes 1..k. Each client takes a probe's latency
//! as the moment the first frame showing it arrived minus the moment the probe was handed to
//! the producer. The latencies of all clients go into one HDR histogram.
//!
//! Long runs on Tansu: its in-memory store keeps every produced batch as an object and lists
//! them on each fetch, so its CPU grows with the number of batches held (measured: a full
//! core after 15 minutes at 2k events/s with 5 ms linger and a probe every 10 ms), and it has
//! no retention (DeleteRecords is `todo!()` in its store, which panics). The soak therefore
//! produces fewer, larger batches (`--loadgen-prop linger.ms=1000 --probe-every-ms 500`); see
//! BENCHMARKS.md.
//!
//! Measured besides: consumer lag over time (from the monitor's `/metrics`), the rates
//! produced and consumed, and the CPU of every part: the broker (`--broker-pid`), the load
//! generator, the bench's own clients, and the monitor split by thread (Kafka client, decode
//! and apply, publish, WebSocket fan-out). Prints a table and one JSON line; exits 2 when p99
//! misses `--slo-p99-ms` or probes went missing.
//!
//! `--search`: the capacity search. Steps of `--seconds` each (a fresh topic and a fresh
//! monitor per step), the rate multiplied by `--search-factor` from `--search-start` until
//! the SLO breaks, then one step half-way back. Reports the last rate that held and what broke:
//! the part that ran out of CPU (a single-threaded part at a full core, or the machine's
//! cores all busy, named by the biggest user), the load generator falling short, or lag.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warroom_ingest::produce::{thread_cpu, usage};

/// The end-to-end bench: loadgen -> Kafka -> the monitor -> WebSocket clients, with probe
/// events whose latency to the first frame showing them goes into an HDR histogram.
#[derive(Parser, Debug)]
#[command(
    name = "e2e",
    about = "End-to-end bench: loadgen -> Kafka -> the monitor -> WebSocket clients; p99 of probe latency against an SLO (exit 2 when missed). See the doc comment of benches/src/bin/e2e.rs and BENCHMARKS.md"
)]
struct Args {
    /// Bootstrap servers of the broker (scripts/bench-e2e.sh starts one).
    #[arg(long)]
    brokers: String,
    /// Load shape: steady, ramp or double11.
    #[arg(long, default_value = "steady")]
    profile: String,
    /// double11: the midnight spike, times the base rate.
    #[arg(long, default_value_t = 8.0)]
    peak: f64,
    /// loadgen's producing threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The broker's pid, to measure its CPU and RSS.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Capacity search: raise the rate step by step until the SLO breaks.
    #[arg(long)]
    search: bool,
    #[arg(long, default_value_t = 10_000)]
    search_start: u64,
    #[arg(long, default_value_t = 1.5)]
    search_factor: f64,
    #[arg(long, default_value_t = 400_000)]
    search_max: u64,
    /// Milliseconds between probes.
    #[arg(long, default_value_t = 10)]
    probe_every_ms: u64,
    /// Extra producer settings passed to loadgen (`--producer-prop`), e.g. linger.ms=200.
    #[arg(long = "loadgen-prop")]
    loadgen_props: Vec<String>,
    /// The warroom binary to bench.
    #[arg(long, default_value = "target/release/warroom")]
    warroom: String,
    /// Events per second (the base rate of a shaped profile).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Seconds of load (per step when searching).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// WebSocket clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// The latency SLO: exits 2 when p99 misses it.
    #[arg(long, default_value_t = 1000)]
    slo_p99_ms: u64,
    /// Write the report (JSON) here too.
    #[arg(long)]
    json_out: Option<String>,
    /// The monitor's config (default: the shipped one); group timeouts are added.
    #[arg(long)]
    monitor_config: Option<String>,
    /// Seconds between progress lines (RSS, lag, frames).
    #[arg(long, default_value_t = 5)]
    every: u64,
    /// loadgen's slots per venue (4 venues; default loadgen's 8): 5000 for the shipped
    /// max_slots of 20,000.
    #[arg(long)]
    slots_per_venue: Option<usize>,
    /// Scale-out shape: this many ingest workers (`--source worker`, one shared state store)
    /// and `--api-nodes` API nodes (`--source partials`) instead of one monitor; the clients
    /// are spread over the API nodes. 0: one monitor (`--source kafka`).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[arg(long, default_value_t = 2)]
    api_nodes: usize,
    /// Partitions of the events topic (default 4 for one monitor, 12 for the scale-out shape).
    #[arg(long)]
    partitions: Option<i32>,
}

fn args() -> Args {
    Args::parse()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The probe count in a frame: `clicks` of slot `probe-000`, found without parsing the frame.
fn probe_clicks(frame: &str) -> Option<u64> {
    let at = frame.find("\"slot\":\"probe-000\",\"venue\"")?;
    let rest = &frame[at..];
    let c = rest.find("\"clicks\":")? + "\"clicks\":".len();
    let digits: String = rest[c..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn main() {
    let a = args();
    if !a.search {
        let r = step(&a, a.rate);
        print_step(&a, &r);
        println!("{r}");
        if let Some(p) = &a.json_out {
            std::fs::write(p, r.to_string()).unwrap();
        }
        if let Some(why) = r["failed"].as_str() {
            eprintln!("FAIL: {why}");
            std::process::exit(2);
        }
        return;
    }
    // The capacity search.
    let mut steps: Vec<Value> = Vec::new();
    let (mut held, mut broke): (Option<u64>, Option<Value>) = (None, None);
    let mut rate = a.search_start;
    while rate <= a.search_max {
        eprintln!("\n=== capacity search: {rate} events/s for {} s ===", a.seconds);
        let r = step(&a, rate);
        print_step(&a, &r);
        steps.push(r.clone());
        if r["failed"].is_null() {
            held = Some(rate);
            rate = (rate as f64 * a.search_factor).round() as u64;
        } else {
            broke = Some(r);
            break;
        }
    }
    // One step half-way between the last rate that held and the first that broke.
    if let (Some(h), Some(b)) = (held, broke.clone()) {
        let mid = (h + b["rate_target"].as_u64().unwrap_or(h)) / 2;
        if mid > h {
            eprintln!("\n=== capacity search: {mid} events/s for {} s (half-way) ===", a.seconds);
            let r = step(&a, mid);
            print_step(&a, &r);
            steps.push(r.clone());
            if r["failed"].is_null() {
                held = Some(mid);
            } else {
                broke = Some(r);
            }
        }
    }
    println!("\ncapacity search ({} s per step, {} clients, SLO p99 <= {} ms):", a.seconds, a.clients, a.slo_p99_ms);
    println!(
        "  {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | verdict",
        "target",
        "produced",
        "consumed",
        "p99 ms",
        "max lag",
        "skipped",
        "broker",
        "kafka",
        "apply",
        "publ.",
        "fanout",
        "loadg",
        "total"
    );
    for r in &steps {
        let c = &r["cpu_cores"];
        println!(
            "  {:>8} {:>9.0} {:>9.0} {:>8.0} {:>8.0} {:>8.0} | {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} | {}",
            r["rate_target"],
            r["rate_produced"].as_f64().unwrap_or(0.0),
            r["consumed_per_s"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            r["lag_max"].as_f64().unwrap_or(0.0),
            r["server"]["frames_skipped"].as_f64().unwrap_or(0.0),
            c["broker"].as_f64().unwrap_or(0.0),
            c["monitor_kafka_client"].as_f64().unwrap_or(0.0),
            c["monitor_decode_apply"].as_f64().unwrap_or(0.0),
            c["monitor_publish"].as_f64().unwrap_or(0.0),
            c["monitor_fanout"].as_f64().unwrap_or(0.0),
            c["loadgen"].as_f64().unwrap_or(0.0),
            c["total"].as_f64().unwrap_or(0.0),
            r["failed"].as_str().unwrap_or("held"),
        );
    }
    let summary = json!({
        "last_held_events_per_s": held,
        "broke_at_events_per_s": broke.as_ref().map(|b| b["rate_target"].clone()),
        "bottleneck": broke.as_ref().map(|b| b["bottleneck"].clone()),
        "steps": steps,
    });
    match (&held, &broke) {
        (Some(h), Some(b)) => println!(
            "  => held up to {h} events/s; broke at {} events/s: {}\n     bottleneck: {}\n     CPU per event at the break (µs): {}",
            b["rate_target"],
            b["failed"].as_str().unwrap_or(""),
            b["bottleneck"].as_str().unwrap_or(""),
            b["cpu_us_per_event"]
        ),
        (Some(h), None) => println!("  => held at every step up to {h} events/s (--search-max {})", a.search_max),
        (None, _) => println!("  => the first step ({} events/s) already broke; start lower", a.search_start),
    }
    println!("{summary}");
    if let Some(p) = &a.json_out {
        std::fs::write(p, summary.to_string()).unwrap();
    }
}

/// CPU seconds of the monitor by part, from its threads' names.
fn monitor_parts(pid: u32) -> [f64; 5] {
    let mut parts = [0.0; 5]; // kafka client, decode+apply, publish, fan-out, other
    for (name, cpu) in thread_cpu(pid) {
        let k = match name.as_str() {
            n if n.starts_with("rdk:") || n == "source" || n == "producer pollin" => 0,
            n if n == "warroom-apply" || n.starts_with("wr-engine-") => 1,
            // The publish loop's thread ("warroom" in builds before issue 11).
            "publisher" | "warroom" => 2,
            "api" => 3,
            _ => 4,
        };
        parts[k] += cpu;
    }
    parts
}

/// `config` with `lines` added to its `[kafka.properties]` table (TOML refuses a second header
/// of the same table, so the lines go under the existing one if there is one).
fn with_kafka_properties(config: &str, lines: &str) -> String {
    const HEADER: &str = "[kafka.properties]\n";
    match config.find(HEADER) {
        Some(at) => format!("{}{HEADER}{lines}{}", &config[..at], &config[at + HEADER.len()..]),
        None => format!("{config}\n{HEADER}{lines}"),
    }
}

/// A bench in the making: monitor, clients, load and probes for one rate. Returns the report.
fn step(a: &Args, rate: u64) -> Value {
    let run = format!("{}-{}", std::process::id(), now_ms());
    let topic = format!("e2e-{run}");
    let partitions = a.partitions.unwrap_or(if a.workers > 0 { 12 } else { 4 });
    warroom_benches::create_topic(&a.brokers, &topic, partitions);

    // The monitor, or the workers and API nodes.
    let state = std::env::temp_dir().join(format!("warroom-e2e-{run}"));
    // The shipped config plus short group timeouts (Tansu joins a group only after them; older
    // configs, for A/B runs against earlier builds, do not set the session timeout).
    let config = std::env::temp_dir().join(format!("warroom-e2e-{run}.toml"));
    let base = match &a.monitor_config {
        Some(p) => std::fs::read_to_string(p).unwrap_or_else(|e| panic!("--monitor-config {p}: {e}")),
        None => include_str!("../../../config/warroom.toml").to_string(),
    };
    let mut text =
        with_kafka_properties(&base, "\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n");
    if a.workers > 0 {
        // Dynamic membership: workers come and go; their state is in the shared store.
        text = text.replacen("[kafka]\n", "[kafka]\ninstance_id = \"\"\n", 1);
    }
    std::fs::write(&config, text).unwrap();
    let group = format!("e2e-{run}");
    let node = |role: &str, name: &str| -> (Monitor, String) {
        let mut child = Command::new(&a.warroom)
            .args(["run", "--source", role, "--listen", "127.0.0.1:0", "--brokers", &a.brokers, "--topic", &topic])
            .arg("--config")
            .arg(&config)
            .args(["--group", &group, "--state-dir"])
            .arg(state.join(name))
            // Only workers take it (builds from before the scale-out issue have no such flag).
            .args(if role == "worker" { vec!["--state-store".into(), state.join("store")] } else { vec![] })
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; build it with cargo build --release", a.warroom));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let monitor = Monitor(child);
        let base = loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "{name} exited before printing its URL");
            if let Some(rest) = line.strip_prefix("screen (ops):") {
                break rest.trim().split("/#").next().unwrap().trim_start_matches("http://").to_string();
            }
        };
        let show = std::env::var_os("E2E_MONITOR_LINES").is_some();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if show {
                    eprintln!("{tag}: {l}");
                }
            }
        });
        (monitor, base)
    };
    let (mut nodes, mut screens, mut consumers) = (Vec::new(), Vec::new(), Vec::new());
    let joined = Instant::now();
    if a.workers == 0 {
        let (m, base) = node("kafka", "monitor");
        eprintln!("monitor pid {} at {base}; topic {topic}; waiting for its partitions", m.0.id());
        nodes.push(m);
        screens.push(base.clone());
        consumers.push(base);
    } else {
        for w in 0..a.workers {
            let (m, base) = node("worker", &format!("worker-{w}"));
            eprintln!("worker {w} pid {} at {base}", m.0.id());
            nodes.push(m);
            consumers.push(base);
        }
        for k in 0..a.api_nodes.max(1) {
            let (m, base) = node("partials", &format!("api-{k}"));
            eprintln!("API node {k} pid {} at {base}", m.0.id());
            nodes.push(m);
            screens.push(base);
        }
    }
    let (assigned, consumed_metric) = if a.workers == 0 {
        ("warroom_kafka_assignments_total", "warroom_kafka_messages_total")
    } else {
        ("warroom_worker_assignments_total", "warroom_worker_messages_total")
    };
    while consumers.iter().any(|b| metric(b, assigned).unwrap_or(0.0) < 1.0) {
        assert!(joined.elapsed() < Duration::from_secs(60), "partitions not assigned within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("partitions assigned after {:.1} s", joined.elapsed().as_secs_f64());
    let pids: Vec<u32> = nodes.iter().map(|m| m.0.id()).collect();
    let pid = pids[0];
    let base = screens[0].clone();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Probe k (1-based) was handed to the producer at sent_us[k - 1] (µs since t0).
    let sent_us: Arc<Mutex<Vec<u64>>> = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap()));
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    for c in 0..a.clients {
        let (base, sent_us, hist, frames, bytes, connected, done) = (
            screens[c % screens.len()].clone(),
            sent_us.clone(),
            hist.clone(),
            frames.clone(),
            bytes.clone(),
            connected.clone(),
            done.clone(),
        );
        rt.spawn(async move {
            let mut req = format!("ws://{base}/api/v1/stream").into_client_request().unwrap();
            req.headers_mut().insert("authorization", "Bearer demo-ops-token-0001".parse().unwrap());
            let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
                Ok(x) => x,
                Err(e) => panic!("client {c}: {e}"),
            };
            // Screens are pushed the top of each race and the slots they follow: follow the probe's.
            let follow = r#"{"subscribe":{"slots":["probe-000"]}}"#;
            if let Err(e) = ws.send(Message::Text(follow.into())).await {
                panic!("client {c}: subscribing: {e}");
            }
            connected.fetch_add(1, Ordering::Relaxed);
            let mut seen = 0u64;
            while let Some(Ok(msg)) = ws.next().await {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let Message::Text(t) = msg else { continue };
                frames.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                let Some(k) = probe_clicks(&t) else { continue };
                if k > seen {
                    let now = t0.elapsed().as_micros() as u64;
                    let sent = sent_us.lock().unwrap();
                    let mut h = hist.lock().unwrap();
                    for i in seen..k.min(sent.len() as u64) {
                        let _ = h.record(now.saturating_sub(sent[i as usize]).max(1));
                    }
                    seen = k;
                }
            }
        });
    }
    while connected.load(Ordering::Relaxed) < a.clients as u64 {
        std::thread::sleep(Duration::from_millis(20));
    }

    // The load: `warroom loadgen` as a child process.
    let lg_json = std::env::temp_dir().join(format!("warroom-e2e-{run}-loadgen.json"));
    let mut lg = Command::new(&a.warroom)
        .args(["loadgen", "--brokers", &a.brokers, "--topic", &topic, "--profile", &a.profile])
        .args(["--rate", &rate.to_string(), "--seconds", &a.seconds.to_string()])
        .args(["--threads", &a.threads.to_string(), "--peak", &a.peak.to_string(), "--seed", "5"])
        .args(["--run-id", &run, "--progress", "0", "--json-out"])
        .arg(&lg_json)
        .args(a.loadgen_props.iter().flat_map(|p| ["--producer-prop", p.as_str()]))
        .args(a.slots_per_venue.iter().flat_map(|n| ["--slots-per-venue".to_string(), n.to_string()]))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} loadgen: {e}", a.warroom));
    let lg_pid = lg.id();
    eprintln!(
        "{} WebSocket clients connected; loadgen pid {lg_pid}: {} at {rate} events/s for {} s",
        a.clients, a.profile, a.seconds
    );

    // Probes: one every 10 ms, from this process.
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", &a.brokers).set("linger.ms", "2").create().unwrap();
    let started = Instant::now();
    let (mut probe, mut last_report, mut last_lag) = (0u64, Instant::now(), Instant::now());
    let broker0 = a.broker_pid.map(|p| usage(Some(p)).cpu_s).unwrap_or(0.0);
    let all_usage =
        |pids: &[u32]| pids.iter().map(|&p| usage(Some(p))).fold((0.0, 0.0), |(c, r), u| (c + u.cpu_s, r + u.rss_mb));
    let all_parts = |pids: &[u32]| {
        pids.iter().map(|&p| monitor_parts(p)).fold([0.0; 5], |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        })
    };
    let mon0 = usage(Some(pid));
    let (cpu0, _) = all_usage(&pids);
    let parts0 = all_parts(&pids);
    let self0 = usage(None).cpu_s;
    let (mut rss_max, mut lag_max, mut lags) = (mon0.rss_mb, 0f64, Vec::<(u64, f64)>::new());
    let (mut lg_cpu, mut loadgen_done) = (0.0f64, false);
    while started.elapsed() < Duration::from_secs(a.seconds) || !loadgen_done {
        probe += 1;
        let ts = now_ms();
        let body = format!(
            r#"{{"event_id":"probe-{run}-{probe}","type":"click","ts":{ts},"user_id":"probe-user","venue":"main","slot":"probe-000","item_id":"i-probe","merchant_id":"m-probe"}}"#
        );
        sent_us.lock().unwrap().push(t0.elapsed().as_micros() as u64);
        let mut rec = Some(BaseRecord::<str, str>::to(&topic).payload(&body).key("probe-user"));
        while let Some(r) = rec.take() {
            if let Err((_, r)) = producer.send(r) {
                std::thread::sleep(Duration::from_millis(1));
                rec = Some(r);
            }
        }
        if !loadgen_done {
            let c = usage(Some(lg_pid)).cpu_s;
            lg_cpu = lg_cpu.max(c);
            loadgen_done = lg.try_wait().ok().flatten().is_some();
        }
        if last_lag.elapsed() >= Duration::from_secs(1) {
            last_lag = Instant::now();
            let lag: f64 = metrics_text(&consumers[0])
                .lines()
                .filter(|l| l.starts_with("warroom_kafka_partition_lag{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            lag_max = lag_max.max(lag);
            lags.push((started.elapsed().as_secs(), lag));
        }
        if last_report.elapsed() >= Duration::from_secs(a.every) {
            last_report = Instant::now();
            let m = usage(Some(pid));
            rss_max = rss_max.max(m.rss_mb);
            let lag = lags.last().map_or(0.0, |l| l.1);
            let t = started.elapsed().as_secs();
            let broker = a.broker_pid.map(|p| {
                let u = usage(Some(p));
                format!("; broker CPU {:.1} s, RSS {:.0} MB", u.cpu_s - broker0, u.rss_mb)
            });
            let p99 = hist.lock().unwrap().value_at_quantile(0.99) as f64 / 1000.0;
            eprintln!(
                "{t:>5} s: {probe} probes; monitor RSS {:.1} MB, CPU {:.1} s; lag {lag:.0}; loadgen CPU {lg_cpu:.1} s{}; frames received {}; p99 so far {p99:.0} ms",
                m.rss_mb,
                m.cpu_s,
                broker.unwrap_or_default(),
                frames.load(Ordering::Relaxed),
            );
        }
        std::thread::sleep(Duration::from_millis(a.probe_every_ms.max(1)));
        if started.elapsed() > Duration::from_secs(a.seconds + 120) {
            eprintln!("loadgen did not finish 120 s after its end; stopping it");
            let _ = lg.kill();
        }
    }
    let produce_s = started.elapsed().as_secs_f64();
    let _ = lg.wait();
    producer.flush(Duration::from_secs(30)).unwrap();
    // Let the last probes arrive.
    std::thread::sleep(Duration::from_secs(3));
    let mon1 = usage(Some(pid));
    let (cpu1, rss_all) = all_usage(&pids);
    let parts1 = all_parts(&pids);
    let broker_cpu = a.broker_pid.map(|p| usage(Some(p)).cpu_s - broker0);
    let self_cpu = usage(None).cpu_s - self0;
    rss_max = rss_max.max(mon1.rss_mb);
    done.store(true, Ordering::Relaxed);
    let consumed: u64 = consumers.iter().map(|b| metric(b, consumed_metric).unwrap_or(0.0) as u64).sum();
    let sum = |n: &str| screens.iter().map(|b| metric(b, n).unwrap_or(0.0)).sum::<f64>();
    let server = json!({
        "ws_clients_at_end": sum("warroom_ws_clients"),
        "frames_published": sum("warroom_ws_frames_published_total"),
        "frames_sent": sum("warroom_ws_frames_sent_total"),
        "frames_skipped": sum("warroom_ws_frames_skipped_total"),
        "send_timeouts": sum("warroom_ws_send_timeouts_total"),
        "last_frame_bytes": metric(&base, "warroom_ws_last_frame_bytes").unwrap_or(-1.0),
    });
    // The scale-out shape's extra hop: partials, worker -> Kafka -> API node.
    let scale_out = (a.workers > 0).then(|| {
        let partial_bytes: f64 = consumers.iter().map(|b| metric(b, "warroom_worker_partial_bytes_total").unwrap_or(0.0)).sum();
        let n = screens.len() as f64;
        json!({
            "workers": a.workers,
            "api_nodes": screens.len(),
            "partitions": partitions,
            "partial_bytes": partial_bytes,
            "partial_bytes_per_event": partial_bytes / (consumed.max(1) as f64),
            "partials_hop_ms_mean": sum("warroom_partials_delay_ms_mean") / n,
            "partials_hop_ms_max": screens.iter().map(|b| metric(b, "warroom_partials_delay_ms_max").unwrap_or(0.0)).fold(0.0, f64::max),
            "rss_mb_all_nodes": rss_all,
        })
    });
    drop(nodes);
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&config);
    warroom_benches::delete_topic(&a.brokers, &topic);
    let mut lg_report = String::new();
    if let Ok(mut f) = std::fs::File::open(&lg_json) {
        let _ = f.read_to_string(&mut lg_report);
    }
    let _ = std::fs::remove_file(&lg_json);
    let lg_report: Value = serde_json::from_str(&lg_report).unwrap_or(Value::Null);

    let h = hist.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let probes_expected = probe * a.clients as u64;
    // Cores while the load ran (CPU over the whole step, which adds only the short drain).
    let cores = |s: f64| s / produce_s;
    let part = |k: usize| cores(parts1[k] - parts0[k]);
    let _ = mon0;
    let mon_cores = cores(cpu1 - cpu0);
    let lg_cores = lg_report["cpu_s"].as_f64().map_or(cores(lg_cpu), cores);
    let broker_cores = broker_cpu.map(cores);
    let clients_cores = cores(self_cpu);
    let total = mon_cores + lg_cores + broker_cores.unwrap_or(0.0) + clients_cores;
    let produced = lg_report["events"].as_u64().unwrap_or(0);
    let rate_produced = lg_report["rate_achieved"].as_f64().unwrap_or(0.0).round();
    let mut r = json!({
        "profile": a.profile,
        "rate_target": rate,
        "rate_produced": rate_produced,
        "events_produced": produced,
        "consumed_per_s": (consumed as f64 / produce_s).round(),
        "messages_consumed": consumed,
        "clients": a.clients,
        "probes": probe,
        "latencies_recorded": h.len(),
        "latencies_expected": probes_expected,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0 },
        "lag_max": lag_max,
        "lag_over_time": lags,
        "frames_received": frames.load(Ordering::Relaxed),
        "mb_received": bytes.load(Ordering::Relaxed) as f64 / 1e6,
        "monitor_rss_mb": { "start": mon0.rss_mb, "end": mon1.rss_mb, "max": rss_max },
        "cpu_cores": {
            "monitor": mon_cores,
            "monitor_kafka_client": part(0),
            "monitor_decode_apply": part(1),
            "monitor_publish": part(2),
            "monitor_fanout": part(3),
            "monitor_other": part(4),
            "broker": broker_cores,
            "loadgen": lg_cores,
            "bench_clients": clients_cores,
            "total": total,
        },
        // CPU per event (µs), each part: what must shrink, or move to other cores, for more.
        "cpu_us_per_event": {
            "monitor": mon_cores * 1e6 / rate_produced.max(1.0),
            "broker": broker_cores.map(|b| b * 1e6 / rate_produced.max(1.0)),
            "loadgen": lg_cores * 1e6 / rate_produced.max(1.0),
            "bench_clients": clients_cores * 1e6 / rate_produced.max(1.0),
        },
        "loadgen": lg_report,
        "slo_p99_ms": a.slo_p99_ms,
        "server": server,
        "scale_out": scale_out,
    });
    // The verdict, and when it failed, what ran out.
    let failed = if h.len() < probes_expected * 9 / 10 {
        Some(format!("only {} of {} probe arrivals were seen", h.len(), probes_expected))
    } else if ms(0.99) > a.slo_p99_ms as f64 {
        Some(format!("p99 {:.0} ms > SLO {} ms", ms(0.99), a.slo_p99_ms))
    } else if a.profile == "steady" && rate_produced < 0.97 * rate as f64 {
        Some(format!("the load generator reached only {rate_produced} of {rate} events/s"))
    } else if lg_report["max_behind"].as_f64().unwrap_or(0.0) > rate as f64 {
        Some(format!("the load generator fell {} events behind its schedule", lg_report["max_behind"]))
    } else {
        None
    };
    if let Some(f) = &failed {
        let cores_avail = std::thread::available_parallelism().map_or(2.0, |n| n.get() as f64);
        let singles = [
            ("the Kafka client (poll thread and librdkafka)", part(0)),
            ("the publisher (snapshot merge, alerts, frame encoding)", part(2)),
        ];
        let busiest_single = singles.iter().cloned().fold(("", 0.0), |b, x| if x.1 > b.1 { x } else { b });
        let users = [
            ("the broker", broker_cores.unwrap_or(0.0)),
            ("the monitor's Kafka client", part(0)),
            ("the monitor's decode + apply", part(1)),
            ("the monitor's publisher", part(2)),
            ("the monitor's WebSocket fan-out", part(3)),
            ("the load generator", lg_cores),
            ("the bench's own WebSocket clients", clients_cores),
        ];
        let biggest = users.iter().cloned().fold(("", 0.0), |b, x| if x.1 > b.1 { x } else { b });
        let skipped = r["server"]["frames_skipped"].as_f64().unwrap_or(0.0);
        let why = if busiest_single.1 >= 0.9 {
            format!("{} at {:.2} of one core (single-threaded)", busiest_single.0, busiest_single.1)
        } else if broker_cores.unwrap_or(0.0) >= 0.9 && biggest.0 == "the broker" {
            format!(
                "the broker at {:.2} cores, more than any other part (total {total:.2} of {cores_avail:.0} cores)",
                broker_cores.unwrap_or(0.0)
            )
        } else if total >= 0.9 * cores_avail {
            format!(
                "CPU: all {cores_avail:.0} cores busy ({total:.2}); the biggest user is {} at {:.2} cores",
                biggest.0, biggest.1
            )
        } else if f.contains("load generator") {
            format!(
                "the producing side: loadgen reached {rate_produced}/s at {lg_cores:.2} cores, broker at {:.2}",
                broker_cores.unwrap_or(-1.0)
            )
        } else if skipped > 0.0 || part(3) >= 0.9 {
            format!("WebSocket fan-out: {skipped} frames skipped, fan-out at {:.2} cores", part(3))
        } else if lag_max > rate as f64 {
            format!("consumption: lag reached {lag_max:.0} messages (more than a second of input)")
        } else {
            format!("none found saturated (total {total:.2} cores); latency from pacing, see lag over time")
        };
        r["bottleneck"] = json!(why);
        r["failed"] = json!(f);
    }
    r
}

fn print_step(a: &Args, r: &Value) {
    let l = &r["latency_ms"];
    let c = &r["cpu_cores"];
    let f = |v: &Value| v.as_f64().unwrap_or(-1.0);
    println!("\nend-to-end: loadgen -> Kafka -> monitor -> WebSocket frame ({} clients, {})", a.clients, a.profile);
    println!(
        "  rate         target {} /s, produced {} /s, consumed {} /s; lag max {}",
        r["rate_target"], r["rate_produced"], r["consumed_per_s"], r["lag_max"]
    );
    println!(
        "  latency ms   p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}   ({} of {} probe arrivals)",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["p999"]),
        f(&l["max"]),
        r["latencies_recorded"],
        r["latencies_expected"]
    );
    println!("  frames       {} received, {:.1} MB", r["frames_received"], f(&r["mb_received"]));
    println!("  server side  {}", r["server"]);
    println!(
        "  CPU cores    monitor {:.2} (kafka client {:.2}, decode+apply {:.2}, publish {:.2}, fan-out {:.2}), broker {:.2}, loadgen {:.2}, bench clients {:.2}; total {:.2}",
        f(&c["monitor"]),
        f(&c["monitor_kafka_client"]),
        f(&c["monitor_decode_apply"]),
        f(&c["monitor_publish"]),
        f(&c["monitor_fanout"]),
        f(&c["broker"]),
        f(&c["loadgen"]),
        f(&c["bench_clients"]),
        f(&c["total"])
    );
    println!(
        "  monitor RSS  {:.0} -> {:.0} MB (max {:.0}); loadgen {:.2} µs/event",
        f(&r["monitor_rss_mb"]["start"]),
        f(&r["monitor_rss_mb"]["end"]),
        f(&r["monitor_rss_mb"]["max"]),
        f(&r["loadgen"]["cpu_us_per_event"])
    );
    if !r["scale_out"].is_null() {
        let so = &r["scale_out"];
        println!(
            "  scale-out    {} workers, {} API nodes, {} partitions; partials {:.1} bytes/event; hop worker -> API node mean {:.0} ms, max {:.0} ms",
            so["workers"], so["api_nodes"], so["partitions"], f(&so["partial_bytes_per_event"]), f(&so["partials_hop_ms_mean"]), f(&so["partials_hop_ms_max"])
        );
    }
    match r["failed"].as_str() {
        Some(why) => println!("  verdict      FAILED: {why}; bottleneck: {}", r["bottleneck"].as_str().unwrap_or("")),
        None => println!("  verdict      held (p99 <= {} ms)", a.slo_p99_ms),
    }
}

/// The monitor's /metrics text (empty when unreachable).
fn metrics_text(base: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(base) else { return String::new() };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {base}\r\nAuthorization: Bearer demo-ops-token-0001\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// One value from the monitor's /metrics.
fn metric(base: &str, name: &str) -> Option<f64> {
    metrics_text(base).lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}
