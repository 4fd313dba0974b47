//! The promotion plan: phases (预热 warm-up, 正式 official, 返场 encore) with GMV targets,
//! and where the promotion stands against them at the watermark.
//!
//! "Expected by now" follows the hourly target curve when one is given (operators plan the
//! midnight spike hour by hour), else a straight line through each phase. All money is
//! integer cents; interpolation uses u128 so it cannot overflow or round through floats.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// 预热: warm-up, carts and favourites build up.
    Warmup,
    /// 正式 / 爆发: the official sale, starting with the midnight spike.
    Official,
    /// 返场: the encore.
    Encore,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    pub kind: PhaseKind,
    /// Display name, e.g. "预热".
    #[serde(default)]
    pub name: String,
    /// RFC 3339 with offset, e.g. "2026-11-10T20:00:00+08:00".
    pub start: Timestamp,
    pub end: Timestamp,
    /// GMV target of this phase, cents.
    #[serde(default)]
    pub target_gmv_cents: u64,
    /// Optional traffic and buyer targets (0: none): with them, the review splits the gap to
    /// the GMV target into traffic, conversion and order value (the first formula).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_uv: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_buyers: u64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub name: String,
    /// Phases in time order, not overlapping.
    pub phases: Vec<PhaseConfig>,
    /// Total target; defaults to the sum of the phase targets.
    #[serde(default)]
    pub target_gmv_cents: Option<u64>,
    /// Optional cumulative-free hourly targets from the first phase's start, hour by hour.
    /// When given, "expected by now" follows this curve instead of straight lines.
    #[serde(default)]
    pub hourly_target_gmv_cents: Vec<u64>,
}

impl PlanConfig {
    /// The same plan with every phase moved by `ms` (a rehearsal replays a recorded night
    /// with its event times moved by the same amount, so phases and pace line up).
    pub fn shifted(&self, ms: i64) -> Result<PlanConfig, String> {
        let mv = |t: Timestamp| {
            t.checked_add(jiff::SignedDuration::from_millis(ms))
                .map_err(|e| format!("plan: shifting {t} by {ms} ms: {e}"))
        };
        let mut p = self.clone();
        for ph in &mut p.phases {
            ph.start = mv(ph.start)?;
            ph.end = mv(ph.end)?;
        }
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.phases.is_empty() {
            errs.push("plan.phases: give at least one phase".to_string());
        }
        for (i, p) in self.phases.iter().enumerate() {
            if p.end <= p.start {
                errs.push(format!("plan.phases[{i}]: end must be after start"));
            }
            if i > 0 && p.start < self.phases[i - 1].end {
                errs.push(format!("plan.phases[{i}]: starts before the previous phase ends"));
            }
            // GMV per phase is recomputed from per-minute sums when a restored monitor runs a
            // changed plan: exact only on whole minutes.
            for (what, t) in [("start", p.start), ("end", p.end)] {
                if t.as_millisecond().rem_euclid(60_000) != 0 {
                    errs.push(format!("plan.phases[{i}].{what} ({t}) must be on a whole minute"));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    pub fn start_ms(&self) -> i64 {
        self.phases.first().map_or(0, |p| p.start.as_millisecond())
    }

    pub fn end_ms(&self) -> i64 {
        self.phases.last().map_or(0, |p| p.end.as_millisecond())
    }

    pub fn total_target(&self) -> u128 {
        self.target_gmv_cents.map_or_else(|| self.phases.iter().map(|p| p.target_gmv_cents as u128).sum(), u128::from)
    }

    /// Phase bounds in ms, for the hot path.
    pub fn bounds(&self) -> Vec<(i64, i64)> {
        self.phases.iter().map(|p| (p.start.as_millisecond(), p.end.as_millisecond())).collect()
    }

    /// Target expected to be reached by `now`.
    pub fn expected_by(&self, now: i64) -> u128 {
        if !self.hourly_target_gmv_cents.is_empty() {
            let start = self.start_ms();
            let mut sum = 0u128;
            for (h, &t) in self.hourly_target_gmv_cents.iter().enumerate() {
                let s = start + h as i64 * 3_600_000;
                sum += interpolate(t, s, s + 3_600_000, now);
            }
            return sum;
        }
        let phases: u128 = self.phases.iter().map(|p| phase_expected(p, now)).sum();
        let sum_targets: u128 = self.phases.iter().map(|p| p.target_gmv_cents as u128).sum();
        match self.target_gmv_cents {
            // A total without phase targets: one straight line over the whole plan.
            Some(total) if sum_targets == 0 => interpolate(total, self.start_ms(), self.end_ms(), now),
            _ => phases,
        }
    }

    /// Index of the phase containing `now`.
    pub fn phase_at(&self, now: i64) -> Option<usize> {
        self.phases.iter().position(|p| p.start.as_millisecond() <= now && now < p.end.as_millisecond())
    }
}

fn phase_expected(p: &PhaseConfig, now: i64) -> u128 {
    interpolate(p.target_gmv_cents, p.start.as_millisecond(), p.end.as_millisecond(), now)
}

/// `target * (now - start) / (end - start)`, clamped to [0, target], in integers.
pub fn interpolate(target: u64, start: i64, end: i64, now: i64) -> u128 {
    let target = target as u128;
    if now <= start || end <= start {
        return if end <= start && now >= end { target } else { 0 };
    }
    if now >= end {
        return target;
    }
    (target * (now - start) as u128) / (end - start) as u128
}

/// Where the promotion stands, as reported in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanStatus {
    pub name: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Kind of the phase in progress at `as_of_ms`: warmup/official/encore, or before/between/after.
    pub phase: String,
    pub phase_name: String,
    pub target_gmv_cents: u128,
    /// GMV paid inside the plan's time range.
    pub gmv_cents: u128,
    pub expected_by_now_cents: u128,
    /// gmv - expected (negative: behind target).
    pub ahead_cents: i128,
    /// gmv / target.
    pub progress: f64,
    /// gmv / expected by now (1.0 = on pace).
    pub pace: f64,
    pub phases: Vec<PhaseStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStatus {
    pub kind: PhaseKind,
    pub name: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub target_gmv_cents: u64,
    pub gmv_cents: u128,
    pub expected_by_now_cents: u128,
    pub progress: f64,
}

fn ratio(a: u128, b: u128) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl PlanConfig {
    /// The plan's status at `now`, given GMV per phase and inside the plan range.
    pub fn status(&self, now: i64, phase_gmv: &[u128], plan_gmv: u128) -> PlanStatus {
        let target = self.total_target();
        let expected = self.expected_by(now);
        let (phase, phase_name) = match self.phase_at(now) {
            Some(i) => (kind_name(self.phases[i].kind).to_string(), self.phases[i].name.clone()),
            None if now < self.start_ms() => ("before".into(), String::new()),
            None if now >= self.end_ms() => ("after".into(), String::new()),
            None => ("between".into(), String::new()),
        };
        PlanStatus {
            name: self.name.clone(),
            start_ms: self.start_ms(),
            end_ms: self.end_ms(),
            phase,
            phase_name,
            target_gmv_cents: target,
            gmv_cents: plan_gmv,
            expected_by_now_cents: expected,
            ahead_cents: plan_gmv as i128 - expected as i128,
            progress: ratio(plan_gmv, target),
            pace: ratio(plan_gmv, expected),
            phases: self
                .phases
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let gmv = phase_gmv.get(i).copied().unwrap_or(0);
                    PhaseStatus {
                        kind: p.kind,
                        name: p.name.clone(),
                        start_ms: p.start.as_millisecond(),
                        end_ms: p.end.as_millisecond(),
                        target_gmv_cents: p.target_gmv_cents,
                        gmv_cents: gmv,
                        expected_by_now_cents: phase_expected(p, now),
                        progress: ratio(gmv, p.target_gmv_cents as u128),
                    }
                })
                .collect(),
        }
    }
}

fn kind_name(k: PhaseKind) -> &'static str {
    match k {
        PhaseKind::Warmup => "warmup",
        PhaseKind::Official => "official",
        PhaseKind::Encore => "encore",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    fn plan() -> PlanConfig {
        PlanConfig {
            name: "t".into(),
            phases: vec![
                PhaseConfig {
                    kind: PhaseKind::Warmup,
                    name: "预热".into(),
                    start: ts(0),
                    end: ts(1000),
                    target_gmv_cents: 100,
                    target_uv: 0,
                    target_buyers: 0,
                },
                PhaseConfig {
                    kind: PhaseKind::Official,
                    name: "正式".into(),
                    start: ts(1000),
                    end: ts(2000),
                    target_gmv_cents: 900,
                    target_uv: 0,
                    target_buyers: 0,
                },
            ],
            target_gmv_cents: None,
            hourly_target_gmv_cents: vec![],
        }
    }

    #[test]
    fn linear_pace_through_phases() {
        let p = plan();
        assert_eq!(p.expected_by(-5), 0);
        assert_eq!(p.expected_by(500), 50);
        assert_eq!(p.expected_by(1500), 100 + 450);
        assert_eq!(p.expected_by(9999), 1000);
        let s = p.status(1500, &[100, 300], 400);
        assert_eq!(s.phase, "official");
        assert_eq!(s.ahead_cents, 400 - 550);
        assert_eq!(s.target_gmv_cents, 1000);
    }

    #[test]
    fn hourly_curve_overrides_lines() {
        let mut p = plan();
        p.hourly_target_gmv_cents = vec![10, 1000];
        assert_eq!(p.expected_by(1_800_000), 5);
        assert_eq!(p.expected_by(3_600_000 + 360_000), 10 + 100);
    }

    #[test]
    fn validation_names_each_problem() {
        let mut p = plan();
        p.phases[1].start = ts(500);
        p.phases[1].end = ts(400);
        // end before start, overlap, and the five bounds off whole minutes
        let errs = p.validate().unwrap_err();
        assert_eq!(errs.len(), 2 + 3, "{errs:?}");
        let mut ok = plan();
        for (i, ph) in ok.phases.iter_mut().enumerate() {
            ph.start = ts(i as i64 * 60_000);
            ph.end = ts((i as i64 + 1) * 60_000);
        }
        assert!(ok.validate().is_ok());
    }
}
