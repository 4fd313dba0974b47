//! `e2e`: the end-to-end bench. Event produced to Kafka -> the WebSocket frame that includes it.
//!
//! Usage: `e2e --brokers HOST:PORT --warroom PATH [--rate 20000] [--seconds 60] [--clients 100]
//!         [--slo-p99-ms 1000] [--json-out FILE]`
//!
//! It creates a 4-partition topic, starts the real monitor (`warroom run --source kafka`) as a
//! child process, connects `--clients` WebSocket clients, and produces generated events
//! (duplicates, re-sent payments, late and bad ones included) at `--rate`, their event times
//! following the wall clock. Every 10 ms it also produces a *probe*: a click of one user on
//! the slot `probe-000`. One user means one partition, so the probes stay in order. A frame
//! showing `clicks = k` on that slot therefore includes probes 1..k. Each client takes a
//! probe's latency as the moment the first frame showing it arrived, minus the moment the
//! probe was handed to the producer. These latencies go into an HDR histogram across all
//! clients.
//!
//! `--monitor-config FILE` runs the monitor with another config (e.g. the soak's shorter
//! horizons, `benches/soak.toml`); `--every N` sets the progress interval (RSS, CPU, lag).
//!
//! Reports p50/p90/p99/p99.9/max, the achieved produce and consume rates, frames and bytes
//! received, and the monitor's RSS and CPU. Prints a table and one JSON line. Exits 2 when
//! p99 misses `--slo-p99-ms`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warroom_ingest::gen::{write_flat, GenConfig};

struct Args {
    brokers: String,
    warroom: String,
    rate: u64,
    seconds: u64,
    clients: usize,
    slo_p99_ms: u64,
    json_out: Option<String>,
    /// The monitor's config (default: the shipped one); group timeouts are appended.
    monitor_config: Option<String>,
    /// Seconds between progress lines (RSS, lag, frames).
    every: u64,
}

fn args() -> Args {
    let mut a = Args {
        brokers: String::new(),
        warroom: "target/release/warroom".into(),
        rate: 20_000,
        seconds: 60,
        clients: 100,
        slo_p99_ms: 1000,
        json_out: None,
        monitor_config: None,
        every: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--brokers" => a.brokers = v(),
            "--warroom" => a.warroom = v(),
            "--rate" => a.rate = v().parse().expect("--rate N"),
            "--seconds" => a.seconds = v().parse().expect("--seconds N"),
            "--clients" => a.clients = v().parse().expect("--clients N"),
            "--slo-p99-ms" => a.slo_p99_ms = v().parse().expect("--slo-p99-ms N"),
            "--json-out" => a.json_out = Some(v()),
            "--monitor-config" => a.monitor_config = Some(v()),
            "--every" => a.every = v().parse().expect("--every SECONDS"),
            other => panic!("unknown argument {other}; see the doc comment of benches/src/bin/e2e.rs"),
        }
    }
    assert!(!a.brokers.is_empty(), "--brokers HOST:PORT is required (scripts/bench-e2e.sh starts a broker)");
    a
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

/// (RSS in MB, CPU seconds) of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (rss_kb / 1024.0, (ticks(11) + ticks(12)) / 100.0)
}

fn user_key(line: &[u8]) -> Option<&[u8]> {
    let pat = b"\"user_id\":\"";
    let i = line.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let end = line[i..].iter().position(|&b| b == b'"')?;
    Some(&line[i..i + end])
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
    let run = format!("{}-{}", std::process::id(), now_ms());
    let topic = format!("e2e-{run}");
    warroom_benches::create_topic(&a.brokers, &topic, 4);

    // The monitor.
    let state = std::env::temp_dir().join(format!("warroom-e2e-{run}"));
    // The shipped config plus short group timeouts (Tansu joins a group only after them).
    let config = std::env::temp_dir().join(format!("warroom-e2e-{run}.toml"));
    std::fs::write(
        &config,
        format!(
            "{}\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
            match &a.monitor_config {
                Some(p) => std::fs::read_to_string(p).unwrap_or_else(|e| panic!("--monitor-config {p}: {e}")),
                None => include_str!("../../../config/warroom.toml").to_string(),
            }
        ),
    )
    .unwrap();
    let mut child = Command::new(&a.warroom)
        .args(["run", "--source", "kafka", "--listen", "127.0.0.1:0", "--brokers", &a.brokers, "--topic", &topic])
        .arg("--config")
        .arg(&config)
        .args(["--group", &format!("e2e-{run}"), "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; build it with cargo build --release", a.warroom));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let monitor = Monitor(child);
    let base = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the monitor exited before printing its URL");
        if let Some(rest) = line.strip_prefix("screen (ops):") {
            break rest.trim().split("/#").next().unwrap().trim_start_matches("http://").to_string();
        }
    };
    let show = std::env::var_os("E2E_MONITOR_LINES").is_some();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if show {
                eprintln!("monitor: {l}");
            }
        }
    });
    let pid = monitor.0.id();
    eprintln!("monitor pid {pid} at {base}; topic {topic}; waiting for its partitions");
    let joined = Instant::now();
    while metric(&base, "warroom_kafka_assignments_total").unwrap_or(0.0) < 1.0 {
        assert!(joined.elapsed() < Duration::from_secs(60), "the monitor got no partitions within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("partitions assigned after {:.1} s", joined.elapsed().as_secs_f64());

    // Events: a steady stream whose event times follow the wall clock from now on.
    let total = a.rate * a.seconds;
    let start_ms = now_ms() + 3_000;
    let mut buf = Vec::new();
    write_flat(GenConfig { seed: 5, ..GenConfig::default() }, total, start_ms, a.seconds as i64 * 1000, &mut buf)
        .unwrap();
    let lines: Vec<&[u8]> = warroom_ingest::pipeline::split_lines(&buf).collect();

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
            base.clone(),
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
    eprintln!("{} WebSocket clients connected; producing {} events/s for {} s", a.clients, a.rate, a.seconds);

    // Produce: every 10 ms, the events due by then and one probe.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    while now_ms() < start_ms {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let (mut next, mut probe, mut last_report) = (0usize, 0u64, Instant::now());
    let (rss0, cpu0) = proc_usage(pid);
    let mut rss_max = rss0;
    while next < lines.len() {
        let due = ((started.elapsed().as_secs_f64() * a.rate as f64) as usize).min(lines.len());
        while next < due {
            let l = lines[next];
            let mut rec = BaseRecord::<[u8], [u8]>::to(&topic).payload(l);
            if let Some(k) = user_key(l) {
                rec = rec.key(k);
            }
            let mut rec = Some(rec);
            while let Some(r) = rec.take() {
                if let Err((_, r)) = producer.send(r) {
                    std::thread::sleep(Duration::from_millis(1));
                    rec = Some(r);
                }
            }
            next += 1;
        }
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
        if last_report.elapsed() >= Duration::from_secs(a.every) {
            last_report = Instant::now();
            let (rss, cpu) = proc_usage(pid);
            rss_max = rss_max.max(rss);
            let lag: f64 = metrics_text(&base)
                .lines()
                .filter(|l| l.starts_with("warroom_kafka_partition_lag{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let p99 = hist.lock().unwrap().value_at_quantile(0.99) as f64 / 1000.0;
            eprintln!(
                "{:>5.0} s: produced {next} events, {probe} probes; monitor RSS {rss:.1} MB, CPU {cpu:.1} s; lag {lag:.0}; frames received {}; p99 so far {p99:.0} ms",
                started.elapsed().as_secs_f64(),
                frames.load(Ordering::Relaxed),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let produce_s = started.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30)).unwrap();
    // Let the last probes arrive.
    std::thread::sleep(Duration::from_secs(3));
    let (rss_end, cpu_end) = proc_usage(pid);
    rss_max = rss_max.max(rss_end);
    done.store(true, Ordering::Relaxed);
    let consumed: u64 = metric(&base, "warroom_kafka_messages_total").unwrap_or(0.0) as u64;
    let m = |n: &str| metric(&base, n).unwrap_or(-1.0);
    let server = serde_json::json!({
        "ws_clients_at_end": m("warroom_ws_clients"),
        "frames_published": m("warroom_ws_frames_published_total"),
        "frames_sent": m("warroom_ws_frames_sent_total"),
        "frames_skipped": m("warroom_ws_frames_skipped_total"),
        "send_timeouts": m("warroom_ws_send_timeouts_total"),
        "last_frame_bytes": m("warroom_ws_last_frame_bytes"),
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(monitor);
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&config);

    let h = hist.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let probes_expected = probe * a.clients as u64;
    let report = serde_json::json!({
        "rate_target": a.rate,
        "rate_produced": (next as f64 / produce_s).round(),
        "consumed_per_s": (consumed as f64 / elapsed).round(),
        "messages_consumed": consumed,
        "clients": a.clients,
        "probes": probe,
        "latencies_recorded": h.len(),
        "latencies_expected": probes_expected,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0 },
        "frames_received": frames.load(Ordering::Relaxed),
        "mb_received": bytes.load(Ordering::Relaxed) as f64 / 1e6,
        "monitor_rss_mb": { "start": rss0, "end": rss_end, "max": rss_max },
        "monitor_cpu_cores": (cpu_end - cpu0) / elapsed,
        "slo_p99_ms": a.slo_p99_ms,
        "server": server,
    });
    println!("\nend-to-end: produce -> Kafka -> monitor -> WebSocket frame ({} clients)", a.clients);
    println!(
        "  rate         target {} /s, produced {:.0} /s, consumed {:.0} /s",
        a.rate, report["rate_produced"], report["consumed_per_s"]
    );
    println!(
        "  latency ms   p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}   ({} of {} probe arrivals)",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        h.len(),
        probes_expected
    );
    println!("  frames       {} received, {:.1} MB", report["frames_received"], report["mb_received"]);
    println!("  server side  {server}");
    println!(
        "  monitor      RSS {rss0:.0} -> {rss_end:.0} MB (max {rss_max:.0}), CPU {:.2} cores",
        (cpu_end - cpu0) / elapsed
    );
    println!("{report}");
    if let Some(p) = &a.json_out {
        std::fs::write(p, report.to_string()).unwrap();
    }
    if h.len() < probes_expected * 9 / 10 {
        eprintln!("FAIL: only {} of {} probe arrivals were seen", h.len(), probes_expected);
        std::process::exit(2);
    }
    if ms(0.99) > a.slo_p99_ms as f64 {
        eprintln!("FAIL: p99 {:.1} ms misses the SLO of {} ms", ms(0.99), a.slo_p99_ms);
        std::process::exit(2);
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
