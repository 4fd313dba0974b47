//! `warroom`: a thin command-line wrapper; the logic lives in the library (`warroom::node`
//! wires a running node) and the crates under it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use warroom_engine::Engine;
use warroom_ingest::sim::SimConfig;
use warroom_ingest::{gen, ChunkProcessor};

use warroom::node::{self, write_json_atomically, Ended, NodeSpec, SourceKind};
use warroom::settings::Settings;

#[derive(Parser, Debug)]
#[command(name = "warroom", version, about = "Real-time monitor for big e-commerce promotions (大促作战室)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Read an event file (JSON Lines) as fast as possible and write the final snapshot.
    Replay {
        /// Events, one JSON object per line (EVENTS.md).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the snapshot (SNAPSHOT.md).
        #[arg(long)]
        snapshot_out: PathBuf,
        /// Rejected lines as JSON Lines: line number, reason, field, detail, raw text.
        #[arg(long)]
        rejects_out: Option<PathBuf>,
        /// Configuration file (defaults: the embedded config/warroom.toml).
        #[arg(long, env = "WARROOM_CONFIG")]
        config: Option<PathBuf>,
        /// No progress lines on stderr.
        #[arg(long)]
        quiet: bool,
        /// Also write the per-minute history to this new SQLite file (for `warroom review`).
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Run the monitor on a live source (default: the embedded Double-11 simulator).
    Run(RunOpts),
    /// Generate a Double-11-shaped event file with duplicates, re-sent payments, late and bad lines.
    Gen(GenOpts),
    /// Check a configuration file and print every problem found.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the effective configuration (the embedded defaults with --config merged over
    /// them) and where each value came from; `run --print-config` adds flags and environment.
    Config {
        #[arg(long, env = "WARROOM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load test: produce contract events to a Kafka topic at a target rate and shape.
    Loadgen(LoadgenOpts),
    /// Rehearsal (演练): replay a recorded event file through Kafka at N x speed, times moved to now.
    Rehearse(RehearseOpts),
    /// The 复盘 review report from the history database: report.html (self-contained, inline
    /// SVG, printable), report.json and one CSV per table.
    Review(ReviewOpts),
}

#[derive(clap::Args, Debug)]
struct ReviewOpts {
    /// The history database (default: `[history] path`, else `<kafka.state_dir>/history.db`).
    #[arg(long, env = "WARROOM_HISTORY")]
    history: Option<PathBuf>,
    /// Where the report goes (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Start of the range: RFC 3339 (2026-11-11T00:00:00+08:00) or ms since the epoch.
    /// Default: the plan's start, else the first stored minute.
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// The promotion stored in the database under this plan name (its whole range).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    promotion: Option<String>,
    /// A merchant's own report (商家复盘): its slots, funnel and races only.
    #[arg(long)]
    merchant: Option<String>,
    /// The previous promotion's history database (uplift and the gap's decomposition);
    /// default `[history] previous`.
    #[arg(long)]
    previous: Option<PathBuf>,
    /// An ordinary day (or any baseline range) in this database, for the uplift.
    #[arg(long, requires = "baseline_to")]
    baseline_from: Option<String>,
    #[arg(long, requires = "baseline_from")]
    baseline_to: Option<String>,
    /// The clock the report prints, e.g. +08:00 (default: the one recorded in the history,
    /// `[history] utc_offset` of the monitor or replay that wrote it).
    #[arg(long, allow_hyphen_values = true)]
    utc_offset: Option<String>,
    /// The promotion's present, as --from (default: this machine's clock). A range that ends
    /// after it is not over yet: the curves stop at the last stored minute and a phase in
    /// progress is measured by its elapsed part. A simulated or rehearsed night runs on its
    /// own clock: give its event time, or `end` to take the range as over.
    #[arg(long)]
    now: Option<String>,
    #[arg(long, env = "WARROOM_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LoadShape {
    /// --rate events/s throughout (--rate 0: as fast as possible).
    Steady,
    /// From --from-rate up to --rate, linearly.
    Ramp,
    /// The Double-11 night squeezed into --seconds: warm-up ramp to --rate, the midnight
    /// spike at --peak x --rate, decay into the official sale.
    Double11,
}

/// `warroom loadgen`'s options.
#[derive(clap::Args, Debug)]
struct LoadgenOpts {
    /// Bootstrap servers.
    #[arg(long, env = "WARROOM_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, env = "WARROOM_TOPIC", default_value = "warroom-loadtest")]
    topic: String,
    #[arg(long, value_enum, default_value_t = LoadShape::Steady)]
    profile: LoadShape,
    /// Events per second (the base rate of double11, the final rate of ramp).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Ramp: the starting rate.
    #[arg(long, default_value_t = 0.0)]
    from_rate: f64,
    /// Double11: the midnight spike, as a multiple of --rate.
    #[arg(long, default_value_t = 8.0)]
    peak: f64,
    /// Length of the run.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Producing threads (each with its own generator; one shared producer).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Goes into every event and order id (default: the start time), so runs never collide.
    #[arg(long)]
    run_id: Option<String>,
    #[arg(long, default_value = "main,digital,beauty,food", value_delimiter = ',')]
    venues: Vec<String>,
    #[arg(long, default_value_t = 8)]
    slots_per_venue: usize,
    #[arg(long, default_value_t = 20)]
    merchants: usize,
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    /// Zipf exponent of slot popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Shares of the noise: exact re-deliveries, re-sent payments, late events, malformed lines.
    #[arg(long, default_value_t = 0.01)]
    duplicate_share: f64,
    #[arg(long, default_value_t = 0.003)]
    resend_share: f64,
    #[arg(long, default_value_t = 0.01)]
    late_share: f64,
    /// How late a late event is, at most.
    #[arg(long, default_value = "90s", value_parser = humantime_serde::re::humantime::parse_duration)]
    late_max: Duration,
    #[arg(long, default_value_t = 0.001)]
    bad_share: f64,
    /// Extra librdkafka producer settings, e.g. --producer-prop compression.type=lz4.
    #[arg(long = "producer-prop")]
    producer_props: Vec<String>,
    /// Generate and drop the events (no Kafka): measures the generator's own cost.
    #[arg(long)]
    dry_run: bool,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
    /// Write the report as JSON here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// `warroom rehearse`'s options.
#[derive(clap::Args, Debug)]
struct RehearseOpts {
    /// The recorded events (JSON Lines in arrival order), e.g. last year's night.
    #[arg(long)]
    input: PathBuf,
    /// Event time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Added to every ts (default: so the recording ends when the replay ends, rounded down
    /// to a minute). Give the monitor the same value: --rehearsal-shift-ms.
    #[arg(long, allow_hyphen_values = true)]
    shift_ms: Option<i64>,
    #[arg(long, env = "WARROOM_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Never the live topic: a rehearsal has its own.
    #[arg(long, default_value = "warroom-rehearsal")]
    topic: String,
    /// Print the schedule and the monitor's command, produce nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long = "producer-prop")]
    producer_props: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    Night,
    Flat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// The embedded simulator of a Double-11 night.
    Sim,
    /// An event file played once (then the monitor keeps serving its state).
    File,
    /// A Kafka topic, in a consumer group, counting exactly once across restarts.
    Kafka,
    /// Scale-out: an ingest worker (a consumer-group member whose per-partition state lives in
    /// --state-store and is published as partials; serves health and metrics).
    Worker,
    /// Scale-out: an API node (merges the workers' partials; serves the API and the screen).
    Partials,
}

/// `warroom run`'s options.
#[derive(clap::Args, Debug)]
struct RunOpts {
    #[arg(long, value_enum, default_value_t = Source::Sim, env = "WARROOM_SOURCE")]
    source: Source,
    /// For --source file: the events to play.
    #[arg(long)]
    input: Option<PathBuf>,
    #[arg(long, env = "WARROOM_CONFIG")]
    config: Option<PathBuf>,
    /// Stop after this long (e.g. "30s"); default: until interrupted.
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: Option<Duration>,
    /// Simulator: event time runs this many times faster than real time.
    #[arg(long)]
    speed: Option<f64>,
    /// Simulator: events per second at base intensity.
    #[arg(long)]
    rate: Option<f64>,
    /// Kafka: bootstrap servers (also `[kafka] brokers`).
    #[arg(long, env = "WARROOM_BROKERS")]
    brokers: Option<String>,
    /// Kafka: the events topic.
    #[arg(long, env = "WARROOM_TOPIC")]
    topic: Option<String>,
    /// Kafka: the consumer group (instances sharing it split the partitions).
    #[arg(long, env = "WARROOM_GROUP")]
    group: Option<String>,
    /// Kafka: where checkpoints (state + offsets) are kept; one per instance.
    #[arg(long, env = "WARROOM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Workers: the shared state store (a directory every worker can read).
    #[arg(long, env = "WARROOM_STATE_STORE")]
    state_store: Option<PathBuf>,
    /// Workers and API nodes: the partials topic (default `<topic>.partials`).
    #[arg(long, env = "WARROOM_PARTIALS_TOPIC")]
    partials_topic: Option<String>,
    /// Write the snapshot here every second (atomically), and on exit.
    #[arg(long)]
    snapshot_out: Option<PathBuf>,
    /// The history database (SQLite; also `[history] path`). Default: `<state_dir>/history.db`
    /// for Kafka, in memory for the simulator and a file.
    #[arg(long, env = "WARROOM_HISTORY")]
    history: Option<PathBuf>,
    /// Where the API and the screen listen (port 0: any free port, printed at start).
    #[arg(long, env = "WARROOM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Tokens and roles (TOML, see config/auth.demo.toml); default: the demo tokens.
    #[arg(long, env = "WARROOM_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Rehearsal (演练): the events are a recording replayed by `warroom rehearse` with their
    /// times moved by this many ms. The plan's phases move by the same amount, every snapshot,
    /// alert, metric and summary line is tagged, the screens show a banner, and the consumer
    /// group and state dir default to separate rehearsal ones (`<group>-rehearsal`,
    /// `<state_dir>/rehearsal`), so the live group's offsets and state are never touched.
    #[arg(long, allow_hyphen_values = true)]
    rehearsal_shift_ms: Option<i64>,
    /// Rehearsal: the replay speed, for the banner.
    #[arg(long, default_value_t = 1.0)]
    rehearsal_speed: f64,
    /// Print the effective configuration (with flags and environment applied) and where each
    /// value came from, then exit.
    #[arg(long)]
    print_config: bool,
}

/// Where a flag's value came from: its environment variable if that is set to it, else the flag.
fn flag_origin(flag: &str, env: &str, value: &str) -> String {
    match std::env::var(env) {
        Ok(v) if v == value => format!("environment {env}"),
        _ => format!("flag {flag}"),
    }
}

/// Pins glibc's allocator thresholds, unless the operator set `GLIBC_TUNABLES` for malloc.
///
/// By default glibc raises its mmap threshold to the size of the largest block freed so far
/// (up to 32 MiB), after which the checkpoint's multi-megabyte buffers and a catch-up's batches
/// are carved from the heap arenas and stay resident after they are freed. Measured (a monitor
/// at 2k events/s with 1-minute horizons, frozen for 60 s, BENCHMARKS.md §6): 53.6 MB before
/// the freeze and 67.0 MB after the catch-up with the defaults; 34.6 and 37.7 MB with blocks
/// from 256 KiB up always mmapped (returned when freed) and heap tops above 1 MiB trimmed.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        // SAFETY: mallopt only sets allocator parameters; it is called once, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). `WARROOM_LOG_FORMAT=json`: one JSON
/// object per line (timestamp, level, target, fields, span), for a log shipper collecting the
/// logs of many nodes; anything else: human-readable text. With `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set (e.g. `http://collector:4318`), spans also go to that OpenTelemetry collector over
/// OTLP/HTTP (consume, apply, partial publish, merge, publish, push; the partial's trace
/// context travels in its Kafka headers, so a trace follows an event's partial from a worker
/// into every API node), filtered by `WARROOM_OTLP_FILTER` (default: debug for warroom's
/// crates); the service name is `OTEL_SERVICE_NAME` (default `warroom`). Returns the tracer
/// provider to flush at exit.
fn init_logs() -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = std::env::var("WARROOM_LOG_FORMAT");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format.as_deref() {
        Ok("json") => fmt.json().with_current_span(true).with_filter(filter).boxed(),
        _ => fmt.with_filter(filter).boxed(),
    };
    let (otel, provider) = match otlp() {
        Ok(Some((layer, provider))) => (Some(layer), Some(provider)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("warning: spans are not exported over OTLP: {e} (check OTEL_EXPORTER_OTLP_ENDPOINT)");
            (None, None)
        }
    };
    let mut layers = vec![fmt];
    layers.extend(otel);
    tracing_subscriber::registry().with(layers).init();
    if let Ok(other) = format {
        if other != "json" && other != "text" {
            tracing::warn!(format = other, "WARROOM_LOG_FORMAT is json or text; logging as text");
        }
    }
    provider
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The OTLP span layer, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn otlp() -> anyhow::Result<Option<(BoxedLayer, opentelemetry_sdk::trace::SdkTracerProvider)>> {
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::Layer;
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "warroom".into());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(name).build())
        .build();
    let filter = std::env::var("WARROOM_OTLP_FILTER")
        .unwrap_or_else(|_| "warn,warroom=debug,warroom_ingest=debug,warroom_api=debug,warroom_engine=debug".into());
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("warroom"))
        .with_filter(tracing_subscriber::EnvFilter::new(filter))
        .boxed();
    Ok(Some((layer, provider)))
}

fn main() {
    tune_allocator();
    let otlp = init_logs();
    let cli = Cli::parse();
    warroom_ingest::name_engine_threads();
    let res = match cli.cmd {
        Cmd::Replay { input, snapshot_out, rejects_out, config, quiet, history } => {
            replay(&input, &snapshot_out, rejects_out.as_deref(), config.as_deref(), quiet, history.as_deref())
        }
        Cmd::Run(opts) => run(opts),
        Cmd::Gen(o) => generate(o),
        Cmd::CheckConfig { config } => Settings::load(Some(&config)).map(|_| println!("{}: ok", config.display())),
        Cmd::Config { config } => {
            Settings::load_with_origins(config.as_deref()).map(|(_, origins)| print!("{}", origins.render()))
        }
        Cmd::Loadgen(o) => loadgen(o),
        Cmd::Rehearse(o) => rehearse(o),
        Cmd::Review(o) => review(o),
    };
    if let Some(p) = otlp {
        // The spans still in the batch go out before the process ends.
        let _ = p.shutdown();
    }
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn replay(
    input: &Path,
    out: &Path,
    rejects: Option<&Path>,
    config: Option<&Path>,
    quiet: bool,
    history: Option<&Path>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let mut engine_cfg = settings.engine_config();
    // Minutes are counted only for a replay that stores them.
    engine_cfg.engine.keep_history = history.is_some();
    let writer = match history {
        Some(h) => {
            anyhow::ensure!(
                !h.exists(),
                "--history {} exists: a replay writes a new history (move the file away or choose another path)",
                h.display()
            );
            let mut store = warroom_history::Store::open(h)?;
            // A replay's database is new and refused if it exists: a replay that stops leaves
            // an incomplete file either way, so commits need not wait for the disk.
            store.bulk_load()?;
            if let Some(plan) = &settings.plan {
                store.set_meta("plan", &serde_json::to_string(plan)?)?;
            }
            store.set_meta("utc_offset", &settings.history.utc_offset)?;
            // Batches are stored on a thread of their own while the replay goes on; at most two
            // wait for it (a week-long night's replay outran the writer: 860 MB of batches).
            let (tx, rx) = std::sync::mpsc::sync_channel::<warroom_engine::history::HistoryBatch>(2);
            let t = std::thread::Builder::new().name("wr-history".into()).spawn(
                move || -> anyhow::Result<warroom_history::WriteStats> {
                    let mut total = warroom_history::WriteStats::default();
                    for b in rx {
                        total += store.write(&b)?;
                    }
                    // No later events: every whole hour can be rolled up.
                    total.hours += store.roll_up_all()?;
                    Ok(total)
                },
            )?;
            Some((tx, t))
        }
        None => None,
    };
    let engine = Arc::new(Engine::new(engine_cfg));
    let file = File::open(input).with_context(|| format!("cannot open --input {}", input.display()))?;
    let size = file.metadata().ok().map(|m| m.len());
    let mut proc = ChunkProcessor::new(engine.clone(), settings.limits());
    proc.keep_rejected = rejects.is_some();
    let mut rejects_w = match rejects {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create --rejects-out {}", p.display()))?,
        )),
        None => None,
    };
    let (mut last_history, mut last_print) = (std::time::Instant::now(), std::time::Instant::now());
    let stats = warroom_ingest::replay(
        file,
        size,
        &mut proc,
        |r| {
            if let Some(w) = rejects_w.as_mut() {
                let line = serde_json::json!({
                    "line": r.line,
                    "reason": r.rejection.reason.as_str(),
                    "field": r.rejection.field,
                    "message": r.rejection.to_string(),
                    "raw": String::from_utf8_lossy(&r.raw),
                });
                serde_json::to_writer(&mut *w, &line)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        },
        |p| {
            // History to the writer thread every 250 ms, so that it is written while the
            // replay goes on (once a second, a one-second replay wrote most of it at the end;
            // every 100 ms, minutes split across more batches cost the 20,000-slot night more
            // upserts: BENCHMARKS §14).
            if let Some((tx, _)) = &writer {
                if last_history.elapsed() >= std::time::Duration::from_millis(250) {
                    last_history = std::time::Instant::now();
                    let _ = tx.send(engine.take_history());
                }
            }
            if !quiet && last_print.elapsed() >= std::time::Duration::from_secs(1) {
                last_print = std::time::Instant::now();
                let pct = p
                    .total_bytes
                    .map(|t| format!("{:5.1}% ", 100.0 * p.bytes as f64 / t.max(1) as f64))
                    .unwrap_or_default();
                eprintln!(
                    "replay: {pct}{:.0} MB, {} lines, {:.0}k lines/s",
                    p.bytes as f64 / 1e6,
                    p.lines,
                    p.lines as f64 / p.elapsed.as_secs_f64() / 1e3
                );
            }
        },
    )
    .with_context(|| format!("reading {}", input.display()))?;
    if let Some(mut w) = rejects_w {
        w.flush()?;
    }
    let (snap, _) = engine.publish();
    write_json_atomically(out, &snap)?;
    if let (Some((tx, t)), Some(h)) = (writer, history) {
        let _ = tx.send(engine.take_history());
        drop(tx);
        let w = t.join().map_err(|_| anyhow::anyhow!("the history writer panicked"))??;
        if !quiet {
            eprintln!(
                "replay: history: {} minute batches, {} rows, {} sketches, {} hours rolled up in {}",
                w.minutes,
                w.rows,
                w.sketches,
                w.hours,
                h.display()
            );
        }
    }
    let t = &snap.totals;
    if !quiet {
        eprintln!(
            "replay: done: {} lines in {:.2}s ({:.0}k lines/s): accepted {}, rejected {}, duplicates {}; GMV {} cents; snapshot in {}",
            stats.lines,
            stats.elapsed.as_secs_f64(),
            stats.lines as f64 / stats.elapsed.as_secs_f64().max(1e-9) / 1e3,
            t.accepted,
            t.rejected,
            t.duplicates,
            t.gmv_cents,
            out.display()
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct GenOpts {
    #[arg(long)]
    out: PathBuf,
    /// Number of events (lines).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Event-time span of the night.
    #[arg(long, default_value = "6h", value_parser = humantime_serde::re::humantime::parse_duration)]
    span: Duration,
    /// Start of the night, ms since the epoch (default: 2026-11-10 20:00 +08:00).
    #[arg(long, default_value_t = 1_794_312_000_000)]
    start_ms: i64,
    /// Distinct users.
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    /// Traffic shape: the Double-11 night, or a steady rate (memory and soak runs).
    #[arg(long, value_enum, default_value_t = Profile::Night)]
    profile: Profile,
    /// Slots per venue (4 venues): 8 gives the 32 slots of the replay bench, 100 the 400 of
    /// its dense night.
    #[arg(long, default_value_t = 8)]
    slots_per_venue: usize,
}

fn generate(o: GenOpts) -> anyhow::Result<()> {
    let GenOpts { out, events, seed, span, start_ms, users, profile, slots_per_venue } = o;
    anyhow::ensure!(slots_per_venue > 0, "--slots-per-venue must be at least 1");
    let out = out.as_path();
    let f = BufWriter::new(File::create(out).with_context(|| format!("cannot create --out {}", out.display()))?);
    let cfg = gen::GenConfig { seed, users, slots_per_venue, ..Default::default() };
    let span = span.as_millis() as i64;
    let n = match profile {
        Profile::Night => gen::write_night(cfg, events, start_ms, span, f)?,
        Profile::Flat => gen::write_flat(cfg, events, start_ms, span, f)?,
    };
    eprintln!("gen: wrote {n} lines to {}", out.display());
    Ok(())
}

fn run(o: RunOpts) -> anyhow::Result<()> {
    let RunOpts { source, input, config, duration, speed, rate, .. } = o;
    let (mut settings, mut origins) = Settings::load_with_origins(config.as_deref())?;
    let mut kcfg = settings.kafka.clone();
    let mut flag = |key: &str, flag: &str, env: &str, v: &str| {
        origins.set(key, toml::Value::String(v.to_string()), &flag_origin(flag, env, v));
    };
    if let Some(b) = o.brokers {
        flag("kafka.brokers", "--brokers", "WARROOM_BROKERS", &b);
        kcfg.brokers = b;
    }
    if let Some(t) = o.topic {
        flag("kafka.topic", "--topic", "WARROOM_TOPIC", &t);
        kcfg.topic = t;
    }
    if let Some(g) = &o.group {
        flag("kafka.group", "--group", "WARROOM_GROUP", g);
        kcfg.group = g.clone();
    }
    if let Some(d) = &o.state_dir {
        flag("kafka.state_dir", "--state-dir", "WARROOM_STATE_DIR", &d.display().to_string());
        kcfg.state_dir = d.clone();
    }
    if let Some(d) = &o.state_store {
        flag("kafka.state_store", "--state-store", "WARROOM_STATE_STORE", &d.display().to_string());
        kcfg.state_store = Some(d.clone());
    }
    if let Some(t) = &o.partials_topic {
        flag("kafka.partials_topic", "--partials-topic", "WARROOM_PARTIALS_TOPIC", t);
        kcfg.partials_topic = Some(t.clone());
    }
    if let Some(h) = &o.history {
        flag("history.path", "--history", "WARROOM_HISTORY", &h.display().to_string());
        settings.history.path = h.display().to_string();
    }
    if o.print_config {
        print!("{}", origins.render());
        return Ok(());
    }
    let sim_cfg = SimConfig {
        gen: gen::GenConfig { seed: settings.sim.seed, ..Default::default() },
        base_rate: rate.unwrap_or(settings.sim.base_rate),
        speed: speed.unwrap_or(settings.sim.speed).max(1.0),
        night: settings.sim.night,
    };
    let rehearsal = o.rehearsal_shift_ms.map(|shift_ms| warroom_engine::snapshot::Rehearsal {
        label: "演练 REHEARSAL: a recorded night replayed with shifted times, not live trade".into(),
        shift_ms,
        speed: o.rehearsal_speed,
    });
    kcfg.rehearsal = rehearsal.is_some();
    if let Some(r) = &rehearsal {
        if o.group.is_none() {
            kcfg.group = format!("{}-rehearsal", kcfg.group);
        }
        if o.state_dir.is_none() {
            kcfg.state_dir = kcfg.state_dir.join("rehearsal");
        }
        tracing::warn!(
            shift_ms = r.shift_ms,
            speed = r.speed,
            group = %kcfg.group,
            state_dir = %kcfg.state_dir.display(),
            "REHEARSAL (演练): replayed data; every report is tagged"
        );
    }
    let source = match source {
        Source::Sim => SourceKind::Sim,
        Source::File => SourceKind::File(input.context("--source file needs --input FILE")?),
        Source::Kafka => SourceKind::Kafka,
        Source::Worker => SourceKind::Worker,
        Source::Partials => SourceKind::Partials,
    };
    let demo = o.auth_file.is_none();
    let spec = NodeSpec {
        source,
        settings,
        kafka: kcfg,
        sim: sim_cfg,
        listen: o.listen,
        auth_file: o.auth_file,
        config_path: config,
        duration,
        snapshot_out: o.snapshot_out,
        rehearsal,
    };
    let stop = stop_on_ctrl_c("stopping: writing a final checkpoint (press Ctrl-C again to exit at once)")?;
    let ended = node::run(spec, stop, |addr| {
        let base = format!("http://{addr}");
        if demo {
            println!("screen (ops):      {base}/#token=demo-ops-token-0001");
            println!("screen (merchant): {base}/#token=demo-merchant-m4-token");
            println!("API:               curl -H 'Authorization: Bearer demo-ops-token-0001' {base}/api/v1/snapshot");
            println!("(demo tokens from config/auth.demo.toml, loopback only; use --auth-file for your own)");
        } else {
            println!("screen: {base}/#token=YOUR_TOKEN   API: {base}/api/v1/openapi.json");
        }
    })?;
    if let Ended::PartDied { part, why } = ended {
        eprintln!("error: the {part} died ({why}); exiting for the supervisor to restart the monitor");
        std::process::exit(70);
    }
    Ok(())
}

/// A time flag: RFC 3339 or ms since the epoch.
fn time_flag(name: &str, v: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| anyhow::anyhow!("{name} `{v}`: RFC 3339 (2026-11-11T00:00:00+08:00) or ms since the epoch ({e})"))
}

fn review(o: ReviewOpts) -> anyhow::Result<()> {
    let settings = Settings::load(o.config.as_deref())?;
    let path = o.history.clone().unwrap_or_else(|| {
        if settings.history.path.is_empty() {
            settings.kafka.state_dir.join("history.db")
        } else {
            PathBuf::from(&settings.history.path)
        }
    });
    let started = std::time::Instant::now();
    let store = warroom_history::Store::open_read(&path)
        .with_context(|| format!("opening the history database {} (give --history FILE)", path.display()))?;
    let previous_path = o
        .previous
        .clone()
        .or_else(|| (!settings.history.previous.is_empty()).then(|| PathBuf::from(&settings.history.previous)));
    let previous = match &previous_path {
        Some(p) => Some(
            warroom_history::Store::open_read(p)
                .with_context(|| format!("opening the previous promotion's history {}", p.display()))?,
        ),
        None => None,
    };
    let mut opts = warroom_history::report::ReportOptions {
        from_ms: o.from.as_deref().map(|v| time_flag("--from", v)).transpose()?,
        to_ms: o.to.as_deref().map(|v| time_flag("--to", v)).transpose()?,
        merchant: o.merchant.clone(),
        baseline: None,
        utc_offset_minutes: o
            .utc_offset
            .as_deref()
            .map(warroom_history::parse_utc_offset)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--utc-offset {e}"))?,
        // Default: the machine's clock (a range that ends later is not over yet).
        now_ms: match o.now.as_deref() {
            None => None,
            Some("end") => Some(i64::MAX),
            Some(v) => Some(time_flag("--now", v)?),
        },
    };
    if let (Some(a), Some(b)) = (&o.baseline_from, &o.baseline_to) {
        opts.baseline = Some((time_flag("--baseline-from", a)?, time_flag("--baseline-to", b)?));
    }
    if let Some(name) = &o.promotion {
        let plan = store.plan()?.context("this history database stores no plan: give --from and --to")?;
        anyhow::ensure!(&plan.name == name, "this history database holds the promotion `{}`, not `{name}`", plan.name);
        opts.from_ms = Some(plan.start_ms());
        opts.to_ms = Some(plan.end_ms());
    }
    let report = warroom_history::report::build(&store, previous.as_ref(), &opts)?;
    let files = report.write(&o.out).with_context(|| format!("writing the report into {}", o.out.display()))?;
    eprintln!(
        "review: {} ({} minutes) in {:.2}s: {}",
        report.title,
        (report.to_ms - report.from_ms) / 60_000,
        started.elapsed().as_secs_f64(),
        o.out.join("report.html").display()
    );
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

fn loadgen(o: LoadgenOpts) -> anyhow::Result<()> {
    use warroom_ingest::loadgen::{self, LoadConfig, Shape};
    anyhow::ensure!(o.seconds > 0.0, "--seconds must be above 0");
    anyhow::ensure!(o.rate >= 0.0 && o.from_rate >= 0.0, "rates cannot be negative");
    anyhow::ensure!(!o.venues.is_empty() && o.slots_per_venue > 0, "give at least one venue and one slot per venue");
    let shape = match o.profile {
        LoadShape::Steady => Shape::Steady,
        LoadShape::Ramp => Shape::Ramp { from: o.from_rate },
        LoadShape::Double11 => Shape::Double11 { peak: o.peak },
    };
    let cfg = LoadConfig {
        gen: gen::GenConfig {
            seed: o.seed,
            venues: o.venues.clone(),
            slots_per_venue: o.slots_per_venue,
            merchants: o.merchants.max(1),
            users: o.users.max(1),
            zipf: o.zipf,
            duplicate_share: o.duplicate_share,
            resend_share: o.resend_share,
            late_share: o.late_share,
            late_max_ms: o.late_max.as_millis() as i64,
            bad_share: o.bad_share,
            ..Default::default()
        },
        shape,
        rate: o.rate,
        seconds: o.seconds,
        threads: o.threads.max(1),
        run_id: o.run_id.clone().unwrap_or_else(|| format!("r{}", warroom_ingest::now_ms())),
        progress_every: o.progress,
    };
    let producer = if o.dry_run {
        None
    } else {
        let props = warroom_ingest::produce::parse_props(&o.producer_props).map_err(anyhow::Error::msg)?;
        Some(Arc::new(
            warroom_ingest::produce::EventProducer::new(&o.brokers, &o.topic, &props)
                .with_context(|| format!("creating the producer for {} (check --brokers)", o.brokers))?,
        ))
    };
    let sched = loadgen::Schedule::new(shape, o.rate, o.seconds);
    eprintln!(
        "loadgen: {} to {} topic {}: {:?} at {} events/s (peak {:.0}/s) for {} s, {} threads, seed {}, run id {}",
        if o.dry_run { "dry run (nothing sent)" } else { "producing" },
        o.brokers,
        o.topic,
        o.profile,
        o.rate,
        sched.peak_rate(),
        o.seconds,
        cfg.threads,
        o.seed,
        cfg.run_id
    );
    let stop = stop_on_ctrl_c("stopping: flushing what was produced (press Ctrl-C again to exit at once)")?;
    let r = loadgen::run(&cfg, producer, &stop);
    println!(
        "loadgen: {} events in {:.1} s = {:.0}/s (target {} /s, peak {:.0}/s); delivered {}, failed {}, queue-full waits {}, most behind schedule {}; own CPU {:.1} s = {:.2} cores, {:.2} µs/event, RSS {:.0} MB",
        r.events,
        r.seconds,
        r.rate_achieved,
        r.rate_target,
        r.rate_peak_target,
        r.delivered,
        r.failed,
        r.queue_full_waits,
        r.max_behind,
        r.cpu_s,
        r.cores,
        r.cpu_us_per_event,
        r.rss_mb
    );
    let json = serde_json::to_string(&r)?;
    println!("{json}");
    if let Some(p) = &o.json_out {
        std::fs::write(p, &json).with_context(|| format!("cannot write --json-out {}", p.display()))?;
    }
    anyhow::ensure!(r.failed == 0, "{} messages were not delivered; check the broker and the topic", r.failed);
    Ok(())
}

fn rehearse(o: RehearseOpts) -> anyhow::Result<()> {
    use warroom_ingest::rehearse;
    anyhow::ensure!(o.speed > 0.0, "--speed must be above 0");
    let open = || File::open(&o.input).with_context(|| format!("cannot open --input {}", o.input.display()));
    let rec = rehearse::scan(open()?).with_context(|| format!("reading {}", o.input.display()))?;
    anyhow::ensure!(rec.first_ms != i64::MIN, "{} has no event with a ts; is it an event file?", o.input.display());
    let start = warroom_ingest::now_ms();
    let shift = o.shift_ms.unwrap_or_else(|| rehearse::default_shift(&rec, o.speed, start));
    let len_s = (rec.last_ms - rec.first_ms) as f64 / 1000.0;
    let at = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    eprintln!(
        "rehearse: {} lines, recorded {} .. {} ({:.0} s), at {}x: about {:.0} s; shift {} ms: event times {} .. {}",
        rec.lines,
        at(rec.first_ms),
        at(rec.last_ms),
        len_s,
        o.speed,
        len_s / o.speed,
        shift,
        at(rec.first_ms + shift),
        at(rec.last_ms + shift)
    );
    println!(
        "monitor: warroom run --source kafka --brokers {} --topic {} --rehearsal-shift-ms {shift} --rehearsal-speed {}",
        o.brokers, o.topic, o.speed
    );
    if o.dry_run {
        return Ok(());
    }
    let props = warroom_ingest::produce::parse_props(&o.producer_props).map_err(anyhow::Error::msg)?;
    let producer = warroom_ingest::produce::EventProducer::new(&o.brokers, &o.topic, &props)
        .with_context(|| format!("creating the producer for {} (check --brokers)", o.brokers))?
        .with_header(rehearse::HEADER, &format!("shift_ms={shift};speed={}", o.speed));
    let stop = stop_on_ctrl_c("stopping the rehearsal (press Ctrl-C again to exit at once)")?;
    let total = rec.lines.max(1);
    let r = rehearse::play(open()?, &rec, shift, o.speed, &producer, &stop, |n, t| {
        eprintln!("rehearse: {:5.1}% ({n} lines), event time {}", 100.0 * n as f64 / total as f64, at(t))
    })?;
    println!(
        "rehearse: {} lines in {:.1} s ({} with ts moved, {} sent as recorded); delivered {}, failed {}; own CPU {:.1} s",
        r.lines, r.seconds, r.shifted, r.unshifted, r.delivered, r.failed, r.cpu_s
    );
    println!("{}", serde_json::to_string(&r)?);
    anyhow::ensure!(r.failed == 0, "{} messages were not delivered; check the broker and the topic", r.failed);
    Ok(())
}

/// A stop flag for Ctrl-C / SIGTERM: the first signal sets it (and prints `what`, so the user
/// knows a clean stop is under way); a second one exits at once.
fn stop_on_ctrl_c(what: &'static str) -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("{what}");
    })
    .context("installing the signal handler")?;
    Ok(stop)
}
