//! The node `warroom run` starts, wired in one place and runnable in-process: the engine
//! (restored from its checkpoint for Kafka), a source on its own thread, the API server, the
//! publish loop, the config and auth watchers, and the watch over the parts (a dead part
//! ends the node, for its supervisor to restart it). The CLI only turns flags into a
//! [`NodeSpec`], installs the Ctrl-C handler and maps [`Ended`] to an exit code.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use warroom_engine::history::{HistorySink, HistoryWriter};
use warroom_engine::snapshot::Rehearsal;
use warroom_engine::{Engine, Snapshot};
use warroom_ingest::kafka::KafkaConfig;
use warroom_ingest::sim::{Night, SimConfig};
use warroom_ingest::ChunkProcessor;

use crate::settings::Settings;

/// Where a node's events come from.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// The embedded Double-11 simulator (its own clock).
    Sim,
    /// An event file played once; the node then keeps serving its state.
    File(PathBuf),
    /// A Kafka topic in a consumer group, counting exactly once across restarts.
    Kafka,
    /// An ingest worker: a member of the consumer group whose state is kept per partition in
    /// the shared state store and published as partials; it serves health and metrics only.
    Worker,
    /// An API node: merges the workers' partials and serves the view; no state of its own.
    Partials,
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Sim => "sim",
            SourceKind::File(_) => "file",
            SourceKind::Kafka => "kafka",
            SourceKind::Worker => "worker",
            SourceKind::Partials => "partials",
        }
    }
}

/// Everything a node needs, resolved (flags, environment and files already merged).
#[derive(Debug)]
pub struct NodeSpec {
    pub source: SourceKind,
    pub settings: Settings,
    /// The Kafka settings in force (flags applied; a rehearsal's own group and state dir).
    pub kafka: KafkaConfig,
    /// The simulator's configuration (for `SourceKind::Sim`).
    pub sim: SimConfig,
    pub listen: SocketAddr,
    /// Tokens and roles; `None`: the demo tokens (loopback only).
    pub auth_file: Option<PathBuf>,
    /// The config file, watched for alert-rule changes.
    pub config_path: Option<PathBuf>,
    /// Stop after this long; `None`: until `stop`.
    pub duration: Option<Duration>,
    /// Where the snapshot is written every second and at the end.
    pub snapshot_out: Option<PathBuf>,
    pub rehearsal: Option<Rehearsal>,
}

/// How a node ended.
#[derive(Debug)]
pub enum Ended {
    /// Stopped as asked (or its source was done): the final snapshot.
    Done(Arc<Snapshot>),
    /// A part died; the node stopped so that its supervisor restarts it from its checkpoint.
    PartDied { part: String, why: String },
}

/// Runs a node until `stop` is set, `spec.duration` has passed, the simulator's night ends or
/// a part dies. `on_listening` is called once the API listens, with its address.
pub fn run(spec: NodeSpec, stop: Arc<AtomicBool>, on_listening: impl FnOnce(SocketAddr)) -> anyhow::Result<Ended> {
    let NodeSpec {
        source,
        mut settings,
        kafka: kcfg,
        sim: sim_cfg,
        listen,
        auth_file,
        config_path,
        duration,
        snapshot_out,
        rehearsal,
    } = spec;
    let night = Night::starting_now(&sim_cfg);
    if matches!(source, SourceKind::Sim) && settings.plan.is_none() {
        settings.plan = Some(night.plan(&sim_cfg));
    }
    if let (Some(r), Some(p)) = (&rehearsal, &settings.plan) {
        // A rehearsal's events have their times moved: the plan's phases move with them.
        settings.plan = Some(p.shifted(r.shift_ms).map_err(|e| anyhow::anyhow!(e))?);
    }
    let sim = matches!(source, SourceKind::Sim);
    let mut engine_cfg = settings.engine_config();
    engine_cfg.rehearsal = rehearsal.clone();
    // Live events: watermarks stop at the wall clock, so a producer whose clock runs ahead
    // (inside limits.max_future) cannot move everybody's windows.
    engine_cfg.live = matches!(source, SourceKind::Kafka | SourceKind::Worker);
    // One monitor per state directory: a second one would overwrite the first one's
    // checkpoints. Held until the process ends (the kernel drops it even on kill -9).
    let _state_lock = match source {
        SourceKind::Kafka => Some(warroom_engine::checkpoint::StateDirLock::acquire(&kcfg.state_dir)?),
        _ => None,
    };
    let (engine, positions) = match source {
        SourceKind::Kafka => {
            let (e, p) = warroom_ingest::kafka::open_engine(engine_cfg.clone(), &kcfg)
                .with_context(|| format!("opening the state in {}", kcfg.state_dir.display()))?;
            (Arc::new(e), Some(p))
        }
        // A worker's engines are its partitions' (the node's own stays empty); an API node's
        // holds what it merged.
        _ => (Arc::new(Engine::new(engine_cfg.clone())), None),
    };
    let parts = warroom_ingest::parts::Parts::new();
    let kafka_backed = matches!(source, SourceKind::Kafka);
    let mut proc = ChunkProcessor::new(engine.clone(), settings.limits());
    if matches!(source, SourceKind::Sim) {
        // The simulator's clock is its own (a night played faster than real time).
        proc = ChunkProcessor::new(engine.clone(), warroom_model::Limits::default());
    }
    let kafka = match (&source, positions) {
        (SourceKind::Kafka, Some(p)) => Some(Arc::new(
            warroom_ingest::kafka::KafkaSource::new(engine.clone(), p, kcfg.clone(), settings.limits())
                .context("starting the Kafka consumer (check --brokers and the [kafka] security settings)")?,
        )),
        _ => None,
    };
    let worker = match source {
        SourceKind::Worker => Some(Arc::new(
            warroom_ingest::worker::Worker::new(engine_cfg, kcfg.clone(), settings.limits())
                .context("starting the ingest worker (check --brokers, --state-store and the [kafka] settings)")?,
        )),
        _ => None,
    };
    let partials = match source {
        SourceKind::Partials => Some(Arc::new(
            warroom_ingest::partials::PartialsSource::new(engine.clone(), kcfg.clone())
                .context("starting the partials reader (check --brokers and the [kafka] settings)")?,
        )),
        _ => None,
    };
    if auth_file.is_none() && !listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve the demo tokens on {}: they are public. Pass --auth-file with your own tokens (see config/auth.demo.toml for the format), or listen on loopback",
            listen
        );
    }
    let auth = warroom_api::Auth::load(auth_file.as_deref())?;
    let hub = Arc::new(warroom_api::Hub::new());
    // The API sees the source only through its status (readiness, lag, metrics).
    let api_source: warroom_api::Source = match (&kafka, &worker, &partials) {
        (Some(k), _, _) => Some(k.clone() as Arc<dyn warroom_api::IngestStatus>),
        (_, Some(w), _) => Some(w.clone() as Arc<dyn warroom_api::IngestStatus>),
        (_, _, Some(p)) => Some(p.clone() as Arc<dyn warroom_api::IngestStatus>),
        _ => None,
    };
    let merging = partials.is_some();
    let history = open_history(&source, &settings, &kcfg)?;
    let writer = history.clone().map(|db| Arc::new(HistoryWriter::new(db as Arc<dyn HistorySink>)));
    if let (Some(k), Some(w)) = (&kafka, &writer) {
        k.set_history(w.clone());
    }
    let mut state = warroom_api::AppState::new(engine.clone(), auth, hub, api_source);
    if let Some(db) = &history {
        if let Some(plan) = &settings.plan {
            // The plan goes with the history: a later promotion aligns its curve by it.
            db.with(|s| s.set_meta("plan", &serde_json::to_string(plan).expect("a plan serialises")))?;
        }
        // So is its clock: the review of a copy prints the times the war room saw.
        db.with(|s| s.set_meta("utc_offset", &settings.history.utc_offset))?;
        state.set_history(db.clone());
    }
    if !settings.history.previous.is_empty() {
        let p = PathBuf::from(&settings.history.previous);
        let db = warroom_history::HistoryDb::open_read(&p).with_context(|| {
            format!("opening the previous promotion's history ([history] previous = {})", p.display())
        })?;
        state.previous = Some(Arc::new(db));
    }
    state.stale_after_ms = settings.api.stale_after.as_millis() as i64;
    state.parts = parts.clone();
    state.config = settings.api.clone();
    if merging {
        // Several API nodes evaluate the same alerts: the webhook hears each change once.
        let claims = warroom_ingest::claims::KafkaClaims::start(&kcfg).context("starting the alert claims")?;
        state.claims = Some(claims as Arc<dyn warroom_api::AlertClaims>);
    }
    // Several API nodes rank the races each: a rule change goes through a log they all read.
    let rules = match merging {
        true => Some(warroom_ingest::rules_log::KafkaRules::start(&kcfg).context("starting the rule log")?),
        false => None,
    };
    if let Some(r) = &rules {
        state.rule_log = Some(r.clone() as Arc<dyn warroom_api::RuleLog>);
    }
    let api = Arc::new(state);
    if let Some(r) = &rules {
        let api = Arc::downgrade(&api);
        r.apply_with(Box::new(move |body| {
            if let Some(api) = api.upgrade() {
                api.rule_change_from_log(body);
            }
        }));
    }
    api.reload_alerts(settings.alerts.clone())
        .map_err(|e| anyhow::anyhow!("invalid alert rules:\n  - {}", e.join("\n  - ")))?;
    if let Some(path) = config_path.clone() {
        watch_alert_rules(path, api.clone(), stop.clone());
    }
    if let Some(path) = auth_file.clone() {
        watch_auth_file(path, api.clone(), stop.clone());
    }
    let server = serve_api(listen, api.clone(), stop.clone(), parts.clone())?;
    on_listening(server.addr);
    tracing::info!(
        source = source.name(),
        shards = engine.shard_count(),
        listen = %server.addr,
        "warroom running; one summary line per second; stop with Ctrl-C"
    );
    let feeder = {
        let (stop, parts) = (stop.clone(), parts.clone());
        std::thread::Builder::new().name("source".into()).spawn(move || -> anyhow::Result<()> {
            let guard = parts.start("source");
            match source {
                SourceKind::Kafka => {
                    if let Some(k) = kafka {
                        k.run_with(&stop, &parts);
                    }
                }
                SourceKind::Worker => {
                    if let Some(w) = worker {
                        w.run(&stop);
                    }
                }
                SourceKind::Partials => {
                    if let Some(p) = partials {
                        p.run(&stop);
                    }
                }
                SourceKind::Sim => {
                    warroom_ingest::sim::run(&sim_cfg, night, &mut proc, &stop);
                }
                SourceKind::File(path) => {
                    let f = File::open(&path).with_context(|| format!("cannot open --input {}", path.display()))?;
                    let size = f.metadata().ok().map(|m| m.len());
                    let st = warroom_ingest::replay(f, size, &mut proc, |_| Ok(()), |_| {})?;
                    tracing::info!(lines = st.lines, "input file played; serving its final state");
                }
            }
            guard.finished();
            Ok(())
        })?
    };
    // A source without checkpoints stores its minutes every `[history] interval`; an API node
    // reads the workers' from the history topic.
    let periodic = match (&writer, &history, kafka_backed, merging) {
        (_, Some(db), _, true) => Some(read_history_topic(&kcfg, db.clone(), stop.clone())?),
        (Some(w), _, false, false) => {
            Some(store_history_every(settings.history.interval, engine.clone(), w.clone(), stop.clone()))
        }
        _ => None,
    };
    let tag = if rehearsal.is_some() { "[演练 REHEARSAL] " } else { "" };
    let publisher = {
        let (stop, parts, engine, api, out) =
            (stop.clone(), parts.clone(), engine.clone(), api.clone(), snapshot_out.clone());
        std::thread::Builder::new().name("publisher".into()).spawn(move || {
            let guard = parts.start("publisher");
            let mut last_line = Instant::now();
            let mut moves = 0usize;
            let every = api.config.publish_interval;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // A fixed rate: a slow tick delays the next one; missed ticks are not made up.
                next = (next + every).max(Instant::now());
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                warroom_ingest::parts::fault::hit("publisher");
                // Lock-free: the shards' writers answer with deltas (see Engine::publish_live);
                // an API node publishes what it merged of the partials.
                let publish = tracing::debug_span!("publish", merging).entered();
                let (snap, changes) = if merging { engine.publish_parts() } else { engine.publish_live(PUBLISH_WAIT) };
                drop(publish);
                moves += changes.len();
                for c in &changes {
                    tracing::debug!(venue = %c.venue, slot = %c.slot, from = ?c.from, to = c.to, "race: rank change");
                }
                let push = tracing::debug_span!("push", changes = changes.len()).entered();
                api.on_publish(snap.clone(), changes);
                drop(push);
                if last_line.elapsed() >= Duration::from_secs(1) {
                    last_line = Instant::now();
                    println!("{tag}{} | rank moves {moves}", summary_line(&snap));
                    moves = 0;
                    if let Some(p) = &out {
                        if let Err(e) = write_json_atomically(p, &snap) {
                            tracing::warn!(error = %e, "could not write --snapshot-out");
                        }
                    }
                }
            }
            guard.finished();
        })?
    };
    // The main thread watches the parts: a dead one stops the monitor, non-zero, within
    // seconds (/readyz says why meanwhile), for its supervisor to restart it.
    let started = Instant::now();
    let dead = loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(d) = parts.dead() {
            break Some(d);
        }
        if stop.load(Ordering::Relaxed) && feeder.is_finished() {
            break None;
        }
        if feeder.is_finished() && sim {
            break None;
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break None;
        }
    };
    if let Some((part, why)) = dead {
        tracing::error!(part, reason = %why, "a part of the monitor died: stopping (exit code 70) so that the supervisor restarts it from its last checkpoint");
        // Long enough for a prober to see /readyz at 503; then the source stops (its final
        // checkpoint is refused if the applier died mid-batch) and the process exits.
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !feeder.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(Ended::PartDied { part, why });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.join();
    server.stop();
    match feeder.join() {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the source thread panicked; see the log above"),
    }
    if let Some(t) = periodic {
        let _ = t.join();
    }
    let (snap, _) = if merging { engine.publish_parts() } else { engine.publish() };
    println!("{tag}{}", summary_line(&snap));
    if let Some(p) = &snapshot_out {
        write_json_atomically(p, &snap)?;
    }
    Ok(Ended::Done(snap))
}

/// The history database of this node: a Kafka monitor's beside its checkpoints (or at
/// `[history] path`); a simulator's, a file's and an API node's in memory unless a path is
/// given; workers keep none (they publish on the history topic).
fn open_history(
    source: &SourceKind,
    settings: &Settings,
    kcfg: &KafkaConfig,
) -> anyhow::Result<Option<Arc<warroom_history::HistoryDb>>> {
    let configured = (!settings.history.path.is_empty()).then(|| PathBuf::from(&settings.history.path));
    let path = match source {
        // A worker publishes its partitions' minutes on the history topic; it keeps no database.
        SourceKind::Worker => return Ok(None),
        SourceKind::Kafka => Some(configured.unwrap_or_else(|| kcfg.state_dir.join("history.db"))),
        // An API node reads the history topic into its own database (in memory unless a path is
        // given: then a restart reads on from where it was).
        SourceKind::Sim | SourceKind::File(_) | SourceKind::Partials => configured,
    };
    let db = warroom_history::HistoryDb::open(path.as_deref())
        .context("opening the history database ([history] path, --history)")?;
    if matches!(source, SourceKind::Sim | SourceKind::File(_)) && path.is_some() {
        // No checkpoint: the run starts from nothing, so stored minutes would be counted again.
        anyhow::ensure!(
            db.with(|s| s.bounds())?.is_none(),
            "the history database {} already holds minutes, and a {} run starts from nothing: they would be counted twice. Move it away or give another --history",
            path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            source.name()
        );
    }
    if let Some(p) = &path {
        tracing::info!(path = %p.display(), "history database open");
    }
    Ok(Some(Arc::new(db)))
}

/// An API node's history: the workers' batches from the history topic, into `db`; the next
/// offset of each partition is kept in the database.
fn read_history_topic(
    kcfg: &KafkaConfig,
    db: Arc<warroom_history::HistoryDb>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let reader = warroom_ingest::history_topic::HistoryReader::new(kcfg, db.clone() as Arc<dyn HistorySink>)
        .context("starting the history topic reader")?;
    Ok(std::thread::Builder::new().name("history".into()).spawn(move || {
        let key = |p: i32| format!("history_topic_offset/{p}");
        let from = |p: i32| db.with(|s| s.meta(&key(p))).ok().flatten().and_then(|v| v.parse().ok());
        let done = |p: i32, next: i64| {
            if let Err(e) = db.with(|s| s.set_meta(&key(p), &next.to_string())) {
                tracing::warn!(error = %e, "could not keep the history topic's offset (it is read again after a restart)");
            }
        };
        reader.run(&stop, &from, &done);
    })?)
}

/// Stores the engine's minutes every `every` until `stop`, and once more at the end.
fn store_history_every(
    every: Duration,
    engine: Arc<Engine>,
    writer: Arc<HistoryWriter>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("history".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                let done = stop.load(Ordering::Relaxed);
                if done || last.elapsed() >= every {
                    last = Instant::now();
                    if let Err(e) = writer.write(engine.take_history()) {
                        tracing::error!(error = %e, retained = writer.retained(), "history not written; retried at the next interval");
                    }
                }
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .expect("spawn the history thread")
}

/// How long a publish waits for the shards' writers to answer with their deltas: more than a
/// batch takes and than the Kafka applier's idle service (10 ms); shards still silent after it
/// are idle, and the publisher answers for them if their lock is free.
const PUBLISH_WAIT: Duration = Duration::from_millis(50);

/// The API server, on its own tokio runtime thread.
struct ApiServer {
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_api(
    listen: std::net::SocketAddr,
    state: Arc<warroom_api::AppState>,
    stop: Arc<AtomicBool>,
    parts: Arc<warroom_ingest::parts::Parts>,
) -> anyhow::Result<ApiServer> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api")
        .enable_all()
        .build()
        .context("starting the API runtime")?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(listen)).with_context(|| {
        format!("cannot listen on {listen}: is another monitor running? Pass --listen 127.0.0.1:PORT")
    })?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("api".into()).spawn(move || {
        let guard = parts.start("API server");
        let shutdown = async move {
            let _ = rx.await;
        };
        match rt.block_on(warroom_api::serve(listener, state, shutdown)) {
            Ok(()) => guard.finished(),
            Err(e) => {
                tracing::error!(error = %e, "the API server stopped; the monitor stops too");
                stop.store(true, Ordering::Relaxed);
                drop(guard);
            }
        }
        rt.shutdown_timeout(Duration::from_secs(2));
    })?;
    Ok(ApiServer { addr, shutdown: Some(tx), thread: Some(thread) })
}

/// Calls `changed` on a thread of its own whenever `path`'s modification time changes
/// (checked every 2 s), until `stop`.
fn watch_file(thread: &str, path: PathBuf, stop: Arc<AtomicBool>, mut changed: impl FnMut(&Path) + Send + 'static) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let _ = std::thread::Builder::new().name(thread.into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(2));
            let now = modified(&path);
            if now != seen {
                seen = now;
                changed(&path);
            }
        }
    });
}

/// Reloads the auth file when it changes: a revoked token stops working without a restart.
/// An invalid file is refused, with the reason logged, and the tokens in force stay.
fn watch_auth_file(path: PathBuf, api: Arc<warroom_api::AppState>, stop: Arc<AtomicBool>) {
    watch_file("auth-watch", path, stop, move |path| match warroom_api::Auth::load(Some(path)) {
        Ok(a) => {
            let n = a.len();
            api.replace_auth(a);
            tracing::info!(path = %path.display(), tokens = n, "auth file reloaded");
        }
        Err(e) => tracing::error!(error = %e, "auth file not reloaded; the tokens in force stay"),
    });
}

/// Reloads the alert rules when the config file changes. Invalid rules are refused, with every
/// problem logged, and the previous rules stay in force.
fn watch_alert_rules(path: PathBuf, api: Arc<warroom_api::AppState>, stop: Arc<AtomicBool>) {
    watch_file("config-watch", path, stop, move |path| match Settings::load(Some(path)) {
        Ok(s) => match api.reload_alerts(s.alerts) {
            Ok(()) => tracing::info!(path = %path.display(), "alert rules reloaded"),
            Err(e) => tracing::error!(problems = %e.join("; "), "alert rules not reloaded; the previous ones stay"),
        },
        Err(e) => tracing::error!(error = %format!("{e:#}"), "config not reloaded; the previous alert rules stay"),
    });
}

/// Writes the snapshot to `path` atomically (a temporary file, fsync, rename).
pub fn write_json_atomically(path: &Path, snap: &Snapshot) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = BufWriter::new(
        File::create(&tmp).with_context(|| format!("cannot create {} (does its directory exist?)", tmp.display()))?,
    );
    serde_json::to_writer_pretty(&mut f, snap)?;
    f.write_all(b"\n")?;
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Cents as yuan with thousands separators: `¥1,234.56`.
pub fn yuan(cents: u128) -> String {
    let s = (cents / 100).to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    format!("¥{out}.{:02}", cents % 100)
}

/// One line per second: what the screen will show once the API exists.
pub fn summary_line(s: &Snapshot) -> String {
    let t = &s.totals;
    let w = |len: i64| s.windows.iter().find(|w| w.length_ms == len).map_or(0, |w| w.gmv_cents);
    let plan = s
        .plan
        .as_ref()
        .map(|p| format!(" phase={} pace={:.0}% progress={:.1}%", p.phase, p.pace * 100.0, p.progress * 100.0))
        .unwrap_or_default();
    let leaders: Vec<String> =
        s.venues.iter().filter_map(|v| v.race.ranking.first().map(|e| format!("{}:{}", v.venue, e.slot))).collect();
    let age = if s.last_event_at_ms > 0 {
        format!("{:.1}s", (s.published_at_ms - s.last_event_at_ms).max(0) as f64 / 1000.0)
    } else {
        "-".into()
    };
    format!(
        "GMV {} (1m {}, 5m {}) orders={} uv={} buyers={} conv={:.2}% aov={} | accepted={} rejected={} dup={} resent={} late={}{} | leaders {} | last event {} ago",
        yuan(t.gmv_cents),
        yuan(w(60_000)),
        yuan(w(300_000)),
        t.paid_orders,
        t.uv,
        t.buyers,
        s.funnel.conversion * 100.0,
        yuan(s.funnel.aov_cents),
        t.accepted,
        t.rejected,
        t.duplicates,
        s.counters.resent_pays,
        s.counters.late,
        plan,
        leaders.join(" "),
        age,
    )
}
