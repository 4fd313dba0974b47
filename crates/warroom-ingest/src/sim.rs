//! The embedded simulator: a Double-11 night played in real time, compressed, so a new user
//! sees the monitor work with no Kafka (`warroom run`).
//!
//! The night (warm-up, the midnight spike, the official sale and the encore) is laid in the
//! past so that, played at `speed` times real time, its event times never run ahead of the
//! wall clock; once it is over the simulator carries on in real time at the encore's pace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use warroom_engine::plan::{PhaseConfig, PhaseKind, PlanConfig};

use crate::gen::{night_intensity, GenConfig, Generator};
use crate::pipeline::ChunkProcessor;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub gen: GenConfig,
    /// Events per second (real time) at intensity 1; the spike reaches about 8x.
    pub base_rate: f64,
    /// Event time runs this many times faster than real time during the night.
    pub speed: f64,
    /// Length of the night in event time.
    pub night: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { gen: GenConfig::default(), base_rate: 1500.0, speed: 60.0, night: Duration::from_secs(6 * 3600) }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Where the simulated night lies in event time.
#[derive(Debug, Clone, Copy)]
pub struct Night {
    pub start_ms: i64,
    pub len_ms: i64,
}

impl Night {
    /// A night that, played at `speed`x from now, ends when event time catches up with now.
    pub fn starting_now(cfg: &SimConfig) -> Night {
        let len_ms = cfg.night.as_millis() as i64;
        let lead = (len_ms as f64 * (1.0 - 1.0 / cfg.speed.max(1.0))) as i64;
        // Round down to a whole minute so that the phases print nicely.
        let start = (now_ms() - lead).div_euclid(60_000) * 60_000;
        Night { start_ms: start, len_ms }
    }

    /// The promotion plan of the simulated night: warm-up for the first two thirds, the
    /// official sale from "midnight" for one sixth, then the encore; targets sized to the
    /// simulator's expected GMV so that pace hovers around 100%.
    pub fn plan(&self, cfg: &SimConfig) -> PlanConfig {
        let at =
            |u: f64| Timestamp::from_millisecond(self.start_ms + (u * self.len_ms as f64) as i64).expect("valid time");
        // Expected GMV per event: about 3.1% of events are first payments of ~45,000 cents.
        let per_event = 0.031 * 45_000.0;
        let events = |a: f64, b: f64| {
            let steps = 200;
            (0..steps).map(|k| night_intensity(a + (b - a) * (k as f64 + 0.5) / steps as f64)).sum::<f64>()
                / steps as f64
                * (b - a)
                * self.len_ms as f64
                / 1000.0
                * cfg.base_rate
                / cfg.speed
        };
        let target = |a: f64, b: f64| (events(a, b) * per_event) as u64;
        let phase = |kind, name: &str, a: f64, b: f64| PhaseConfig {
            kind,
            name: name.into(),
            start: at(a),
            end: at(b),
            target_gmv_cents: target(a, b),
            target_uv: 0,
            target_buyers: 0,
        };
        PlanConfig {
            name: "Double 11 (simulated night)".into(),
            phases: vec![
                phase(PhaseKind::Warmup, "预热 warm-up", 0.0, 2.0 / 3.0),
                phase(PhaseKind::Official, "正式 official", 2.0 / 3.0, 5.0 / 6.0),
                phase(PhaseKind::Encore, "返场 encore", 5.0 / 6.0, 1.0),
            ],
            target_gmv_cents: None,
            // Hour by hour (of event time) along the traffic curve, so pace reads ~100% on a
            // normal night instead of lagging behind a straight line through the ramp.
            hourly_target_gmv_cents: {
                let hours = (self.len_ms as f64 / 3_600_000.0).ceil() as usize;
                let h = 3_600_000.0 / self.len_ms as f64;
                (0..hours).map(|k| target(k as f64 * h, ((k + 1) as f64 * h).min(1.0))).collect()
            },
        }
    }
}

/// Plays the night into `proc` until `stop` is set. Returns the number of lines produced.
pub fn run(cfg: &SimConfig, night: Night, proc: &mut ChunkProcessor, stop: &AtomicBool) -> u64 {
    let mut gen = Generator::new(cfg.gen.clone());
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut line = 1u64;
    let mut sim_prev = night.start_ms;
    let mut owed = 0.0f64;
    let tick = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let real = started.elapsed().as_secs_f64();
        let in_night = night.start_ms + (real * 1000.0 * cfg.speed) as i64;
        let end = night.start_ms + night.len_ms;
        let (sim_now, u) = if in_night < end {
            (in_night, (in_night - night.start_ms) as f64 / night.len_ms as f64)
        } else {
            (now_ms().max(end), 0.999)
        };
        if sim_now <= sim_prev {
            continue;
        }
        let real_dt = tick.as_secs_f64();
        owed += cfg.base_rate * night_intensity(u) * real_dt;
        let n = owed.floor() as u64;
        owed -= n as f64;
        buf.clear();
        let span = (sim_now - sim_prev).max(1);
        for k in 0..n {
            let ts = sim_prev + (k as i64 * span) / n.max(1) as i64;
            gen.emit(ts, &mut buf);
        }
        sim_prev = sim_now;
        let res = proc.process(&buf, line);
        line += res.lines;
    }
    line - 1
}
