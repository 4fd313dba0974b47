//! `warroom loadgen`: contract events to a Kafka topic at a target rate, for load tests.
//!
//! - **Shapes**: steady, a linear ramp, or the Double-11 night (warm-up ramp, the midnight spike
//!   at `peak` times the base rate, decay into the official sale) squeezed into the run.
//! - **Content** comes from [`crate::gen::Generator`]: venues and slots with Zipf popularity,
//!   the funnel, duplicates, re-sent payments, late and malformed lines in configurable shares.
//! - **Threads**: each producing thread has its own generator (seed + thread index, ids
//!   prefixed with the run id and the thread), and takes every `threads`-th event of the
//!   schedule, so the total is exact whatever the thread count. All share one producer.
//! - **Reproducible**: the same seed, run id and thread count give every thread the same
//!   sequence of events; only their `ts` (the wall clock when produced) differ.
//! - **Honest**: it counts what the broker acknowledged, how far it fell behind its own
//!   schedule and how much CPU it used, so a load test can tell a slow generator from a slow
//!   monitor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::gen::{night_intensity_peak, GenConfig, Generator};
use crate::produce::{usage, EventProducer};

/// The traffic shape over the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// `rate` events/s throughout; a rate of 0 means as fast as possible.
    Steady,
    /// From `from` events/s up to `rate` events/s, linearly.
    Ramp { from: f64 },
    /// The Double-11 night with base rate `rate` and the midnight spike at `peak` x base.
    Double11 { peak: f64 },
}

/// The number of events due by each moment of the run: the integral of the rate, tabulated.
#[derive(Debug, Clone)]
pub struct Schedule {
    shape: Shape,
    rate: f64,
    seconds: f64,
    /// Cumulative events at the start of each step.
    cum: Vec<f64>,
    total: u64,
}

const STEPS: usize = 8192;

impl Schedule {
    pub fn new(shape: Shape, rate: f64, seconds: f64) -> Schedule {
        let mut s = Schedule { shape, rate, seconds, cum: Vec::with_capacity(STEPS + 1), total: 0 };
        let dt = seconds / STEPS as f64;
        let mut acc = 0.0;
        s.cum.push(0.0);
        for k in 0..STEPS {
            acc += s.rate_at((k as f64 + 0.5) * dt) * dt;
            s.cum.push(acc);
        }
        s.total = if s.unlimited() { u64::MAX } else { acc.round() as u64 };
        s
    }

    /// As fast as possible (steady at rate 0).
    pub fn unlimited(&self) -> bool {
        self.shape == Shape::Steady && self.rate <= 0.0
    }

    /// The target rate (events/s) `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        let u = (t / self.seconds).clamp(0.0, 1.0);
        match self.shape {
            Shape::Steady => self.rate,
            Shape::Ramp { from } => from + (self.rate - from) * u,
            Shape::Double11 { peak } => self.rate * night_intensity_peak(u.min(0.999_999), peak),
        }
    }

    /// The highest target rate of the run.
    pub fn peak_rate(&self) -> f64 {
        (0..=1000).map(|k| self.rate_at(k as f64 / 1000.0 * self.seconds)).fold(0.0, f64::max)
    }

    /// Events due by `t` seconds into the run (all of them from the end on).
    pub fn due(&self, t: f64) -> u64 {
        if self.unlimited() {
            return u64::MAX;
        }
        if t >= self.seconds {
            return self.total;
        }
        let x = (t.max(0.0) / self.seconds) * STEPS as f64;
        let k = (x as usize).min(STEPS - 1);
        let v = self.cum[k] + (self.cum[k + 1] - self.cum[k]) * (x - k as f64);
        (v.round() as u64).min(self.total)
    }

    /// Events in the whole run (`u64::MAX` when unlimited).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Of the first `due` events of the schedule, how many are thread `i`'s of `n` (it takes
/// events `i`, `i + n`, `i + 2n`, ...).
pub fn thread_share(due: u64, i: usize, n: usize) -> u64 {
    let (i, n) = (i as u64, n as u64);
    if due == u64::MAX {
        return u64::MAX;
    }
    (due + n - 1 - i) / n
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub gen: GenConfig,
    pub shape: Shape,
    /// Events per second (the base rate for Double-11; the final one for a ramp).
    pub rate: f64,
    pub seconds: f64,
    pub threads: usize,
    /// Goes into every id, so runs on one topic never repeat ids.
    pub run_id: String,
    /// Seconds between progress lines on stderr (0: none).
    pub progress_every: f64,
}

/// The generator of thread `i`: its own seed and id prefix.
pub fn thread_generator(cfg: &LoadConfig, i: usize) -> Generator {
    Generator::new(GenConfig {
        seed: cfg.gen.seed.wrapping_add(i as u64),
        id_prefix: format!("{}{}.{i}.", cfg.gen.id_prefix, cfg.run_id),
        ..cfg.gen.clone()
    })
}

/// The final report (printed as a table and one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub shape: String,
    pub rate_target: f64,
    pub rate_peak_target: f64,
    pub seconds: f64,
    pub threads: usize,
    pub events: u64,
    pub rate_achieved: f64,
    /// Acknowledged by the broker / failed for good (0 in a dry run).
    pub delivered: u64,
    pub failed: u64,
    /// How often the producer's local queue was full (the broker was behind).
    pub queue_full_waits: u64,
    /// The most events the run was behind its schedule at a progress check.
    pub max_behind: u64,
    /// Loadgen's own CPU: seconds, cores used on average, and microseconds per event.
    pub cpu_s: f64,
    pub cores: f64,
    pub cpu_us_per_event: f64,
    pub rss_mb: f64,
    pub dry_run: bool,
}

/// Runs the load: `producer` None is a dry run (events generated and dropped: the
/// generator's own cost). Stops early when `stop` is set.
pub fn run(cfg: &LoadConfig, producer: Option<Arc<EventProducer>>, stop: &AtomicBool) -> LoadReport {
    let threads = cfg.threads.max(1);
    let sched = Arc::new(Schedule::new(cfg.shape, cfg.rate, cfg.seconds));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
    let failed_sends = Arc::new(AtomicU64::new(0));
    let cpu0 = usage(None).cpu_s;
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for i in 0..threads {
        let (sched, sent, producer, done, failed_sends) =
            (sched.clone(), sent.clone(), producer.clone(), done.clone(), failed_sends.clone());
        let mut gen = thread_generator(cfg, i);
        let seconds = cfg.seconds;
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || {
                    let mut buf = Vec::with_capacity(64 * 1024);
                    let mut mine = 0u64;
                    loop {
                        let t = started.elapsed().as_secs_f64();
                        let over = t >= seconds || done.load(Ordering::Relaxed);
                        let due = thread_share(sched.due(t), i, threads);
                        if mine >= due {
                            if over {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        // A batch at one wall-clock time: at most 2 ms worth at 1M events/s.
                        let n = (due - mine).min(2048);
                        let ts = crate::now_ms();
                        buf.clear();
                        for _ in 0..n {
                            gen.emit(ts, &mut buf);
                        }
                        if let Some(p) = &producer {
                            for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                                if let Err(e) = p.send(line) {
                                    failed_sends.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(error = %e, "loadgen: the producer refused a message");
                                }
                            }
                        } else {
                            std::hint::black_box(&buf);
                        }
                        mine += n;
                        sent[i].store(mine, Ordering::Relaxed);
                        if over && sched.unlimited() {
                            break;
                        }
                    }
                })
                .expect("spawning a loadgen thread"),
        );
    }
    let total_sent = || sent.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>();
    let mut max_behind = 0u64;
    let (mut last_t, mut last_n) = (0.0f64, 0u64);
    let mut next_report = cfg.progress_every;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if stop.load(Ordering::Relaxed) {
            done.store(true, Ordering::Relaxed);
        }
        let t = started.elapsed().as_secs_f64();
        let n = total_sent();
        if !sched.unlimited() && t < cfg.seconds {
            max_behind = max_behind.max(sched.due(t).saturating_sub(n));
        }
        if cfg.progress_every > 0.0 && t >= next_report {
            next_report += cfg.progress_every;
            let cpu = usage(None).cpu_s - cpu0;
            let (delivered, failed, in_flight) = producer.as_ref().map_or((0, 0, 0), |p| {
                let d = p.deliveries();
                (d.delivered.load(Ordering::Relaxed), d.failed.load(Ordering::Relaxed), p.in_flight())
            });
            let behind = if sched.unlimited() { 0 } else { sched.due(t).saturating_sub(n) };
            eprintln!(
                "loadgen {t:>6.0}/{:.0} s  target {:>7.0}/s  achieved {:>7.0}/s  sent {n}  delivered {delivered}  failed {failed}  in flight {in_flight}  behind {behind}  cpu {:.2} cores",
                cfg.seconds,
                if sched.unlimited() { f64::INFINITY } else { sched.rate_at(t) },
                (n - last_n) as f64 / (t - last_t).max(1e-9),
                cpu / t.max(1e-9),
            );
            (last_t, last_n) = (t, n);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(p) = &producer {
        if let Err(e) = p.flush(Duration::from_secs(60)) {
            tracing::warn!(error = %e, "loadgen: not every message was acknowledged within 60 s");
        }
    }
    let u = usage(None);
    let cpu = u.cpu_s - cpu0;
    let events = total_sent();
    let (delivered, failed, waits) = producer.as_ref().map_or((0, 0, 0), |p| {
        let d = p.deliveries();
        (
            d.delivered.load(Ordering::Relaxed),
            d.failed.load(Ordering::Relaxed) + failed_sends.load(Ordering::Relaxed),
            p.queue_full_waits.load(Ordering::Relaxed),
        )
    });
    LoadReport {
        shape: match cfg.shape {
            Shape::Steady => "steady".into(),
            Shape::Ramp { from } => format!("ramp from {from}/s"),
            Shape::Double11 { peak } => format!("double11 (peak {peak}x)"),
        },
        rate_target: cfg.rate,
        rate_peak_target: if sched.unlimited() { 0.0 } else { sched.peak_rate() },
        seconds: elapsed,
        threads,
        events,
        rate_achieved: events as f64 / cfg.seconds.min(elapsed).max(1e-9),
        delivered,
        failed,
        queue_full_waits: waits,
        max_behind,
        cpu_s: cpu,
        cores: cpu / elapsed.max(1e-9),
        cpu_us_per_event: cpu * 1e6 / events.max(1) as f64,
        rss_mb: u.rss_mb,
        dry_run: producer.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_and_ramp_totals_are_the_integral() {
        assert_eq!(Schedule::new(Shape::Steady, 2000.0, 30.0).total(), 60_000);
        // From 1000/s to 3000/s over 10 s: the mean 2000/s times 10 s.
        let r = Schedule::new(Shape::Ramp { from: 1000.0 }, 3000.0, 10.0);
        assert_eq!(r.total(), 20_000);
        // Half-way: 1000*5 + 200*25/2... = 5000 + 2500.
        assert_eq!(r.due(5.0), 7_500);
        assert_eq!(r.due(10.0), 20_000);
        assert_eq!(r.due(0.0), 0);
    }

    #[test]
    fn double11_spikes_at_midnight() {
        let s = Schedule::new(Shape::Double11 { peak: 8.0 }, 1000.0, 300.0);
        let midnight = 200.0;
        assert!((s.rate_at(midnight + 0.01) / 1000.0 - 8.0).abs() < 0.1, "{}", s.rate_at(midnight + 0.01));
        assert!((s.rate_at(0.0) - 300.0).abs() < 1.0);
        assert!(s.peak_rate() > 7.5 * 1000.0);
        // Due is monotone and ends at the total.
        let mut prev = 0;
        for k in 0..=3000 {
            let d = s.due(k as f64 / 10.0);
            assert!(d >= prev);
            prev = d;
        }
        assert_eq!(prev, s.total());
    }

    #[test]
    fn thread_shares_add_up_to_the_schedule() {
        for due in [0u64, 1, 2, 3, 7, 1000, 1001] {
            for n in 1..6 {
                let sum: u64 = (0..n).map(|i| thread_share(due, i, n)).sum();
                assert_eq!(sum, due, "due {due}, {n} threads");
            }
        }
    }

    #[test]
    fn threads_never_share_an_id_and_a_seed_repeats_its_lines() {
        let cfg = LoadConfig {
            gen: GenConfig::default(),
            shape: Shape::Steady,
            rate: 1.0,
            seconds: 1.0,
            threads: 3,
            run_id: "r1".into(),
            progress_every: 0.0,
        };
        let lines = |i: usize| {
            let mut g = thread_generator(&cfg, i);
            let mut buf = Vec::new();
            for _ in 0..5000 {
                g.emit(1_000, &mut buf);
            }
            buf
        };
        assert_eq!(lines(1), lines(1));
        let mut ids = std::collections::HashSet::new();
        let mut dup_lines = 0;
        for i in 0..3 {
            let b = lines(i);
            let mut seen_here = std::collections::HashSet::new();
            for l in b.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                let s = std::str::from_utf8(l).unwrap();
                let Some(at) = s.find("\"event_id\":\"") else { continue };
                let id = s[at + 12..].split('"').next().unwrap().to_string();
                if !seen_here.insert(id.clone()) {
                    dup_lines += 1; // the generator's own deliberate re-deliveries
                    continue;
                }
                if id != "x" {
                    assert!(ids.insert(id.clone()), "id {id} from thread {i} was made by another thread");
                }
            }
        }
        assert!(dup_lines > 0);
    }
}
