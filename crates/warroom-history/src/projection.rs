//! Projection (预测): the final GMV of the current phase and of the promotion, from what the
//! phase has made so far and the share of a phase's GMV usually made by this point of it.
//!
//! The share comes, in order of preference, from the previous promotion's phase of the same
//! kind (its cumulative curve, phase lengths scaled to this one's), from the plan's rhythm
//! (`expected_by`, hourly targets when given), or from a straight line. The band is the range
//! of the projections made the same way at each minute of the last hour: how much the
//! estimate has been moving. Money in integer cents; the share is a ratio (display only).

use serde::{Deserialize, Serialize};
use warroom_engine::plan::PlanConfig;

/// One phase of a plan, as the projection and the screen use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpan {
    /// warmup, official, encore.
    pub kind: String,
    pub name: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub target_cents: u64,
}

pub fn phases_of(plan: &PlanConfig) -> Vec<PhaseSpan> {
    plan.phases
        .iter()
        .map(|p| PhaseSpan {
            kind: serde_json::to_value(p.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            name: p.name.clone(),
            start_ms: p.start.as_millisecond(),
            end_ms: p.end.as_millisecond(),
            target_cents: p.target_gmv_cents,
        })
        .collect()
}

/// GMV per minute, (minute start ms, cents), ascending: cumulative sums by time.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    starts: Vec<i64>,
    /// cum[k] = sum of the first k minutes.
    cum: Vec<u64>,
}

impl Curve {
    pub fn new(points: &[(i64, u64)]) -> Curve {
        let mut c = Curve { starts: Vec::with_capacity(points.len()), cum: vec![0] };
        for &(t, v) in points {
            c.starts.push(t);
            c.cum.push(c.cum.last().copied().unwrap_or(0) + v);
        }
        c
    }

    /// GMV of the minutes that started before `t`.
    pub fn before(&self, t: i64) -> u64 {
        self.cum[self.starts.partition_point(|&s| s < t)]
    }

    pub fn between(&self, a: i64, b: i64) -> u64 {
        self.before(b).saturating_sub(self.before(a))
    }
}

/// The previous promotion: its phases and its GMV curve.
#[derive(Debug, Clone)]
pub struct Previous {
    pub phases: Vec<PhaseSpan>,
    pub curve: Curve,
}

impl Previous {
    /// Its phase matching `p` (same kind; the first one of that kind).
    fn phase_like(&self, p: &PhaseSpan) -> Option<&PhaseSpan> {
        self.phases.iter().find(|q| q.kind == p.kind)
    }

    fn total(&self, p: &PhaseSpan) -> Option<u64> {
        self.phase_like(p).map(|q| self.curve.between(q.start_ms, q.end_ms)).filter(|&t| t > 0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    pub at_ms: i64,
    pub phase: String,
    pub phase_name: String,
    /// `previous`, `plan` or `linear`: where the phase's usual shape came from.
    pub basis: String,
    /// Share of the phase's GMV usually made by now.
    pub share: f64,
    pub phase_actual_cents: u64,
    pub phase_target_cents: u64,
    pub phase_projected_cents: u64,
    pub phase_low_cents: u64,
    pub phase_high_cents: u64,
    pub promotion_target_cents: u64,
    pub promotion_projected_cents: u64,
    pub promotion_low_cents: u64,
    pub promotion_high_cents: u64,
}

/// Below this share, a projection would multiply noise: none is made.
const MIN_SHARE: f64 = 0.02;

/// The projection at `now`, or `None` before the first phase or too early in a phase.
pub fn project(now: i64, plan: &PlanConfig, actual: &Curve, previous: Option<&Previous>) -> Option<Projection> {
    let phases = phases_of(plan);
    let i = phases.iter().position(|p| p.start_ms <= now && now < p.end_ms)?;
    let p = &phases[i];
    let prev = previous.filter(|pr| pr.total(p).is_some());
    let basis = if prev.is_some() {
        "previous"
    } else if p.target_cents > 0 {
        "plan"
    } else {
        "linear"
    };
    // The share as a fraction of integers (numerator, denominator): projections are exact.
    let share = |t: i64| -> (u128, u128) {
        let (el, len) = ((t - p.start_ms).max(0), (p.end_ms - p.start_ms).max(1));
        match (prev, basis) {
            (Some(pr), _) => {
                let q = pr.phase_like(p).expect("total() found it");
                let t2 = q.start_ms + ((el as i128 * (q.end_ms - q.start_ms) as i128) / len as i128) as i64;
                (pr.curve.between(q.start_ms, t2) as u128, pr.total(p).unwrap_or(1) as u128)
            }
            (None, "plan") => {
                (plan.expected_by(t).saturating_sub(plan.expected_by(p.start_ms)), p.target_cents as u128)
            }
            _ => (el as u128, len as u128),
        }
    };
    let at = |t: i64| -> Option<u64> {
        let (n, d) = share(t);
        let n = n.min(d);
        (n as f64 >= MIN_SHARE * d as f64 && n > 0).then(|| (actual.between(p.start_ms, t) as u128 * d / n) as u64)
    };
    // Whole minutes only: the current one is still filling.
    let now_m = now.div_euclid(60_000) * 60_000;
    let center = at(now_m)?;
    let (mut low, mut high) = (center, center);
    for k in 1..=60 {
        let t = now_m - k * 60_000;
        if t <= p.start_ms {
            break;
        }
        if let Some(v) = at(t) {
            low = low.min(v);
            high = high.max(v);
        }
    }
    let done: u64 = phases[..i].iter().map(|q| actual.between(q.start_ms, q.end_ms)).sum();
    // Phases to come, scaled by how this one compares with its usual total.
    let later = |scale: u64| -> u64 {
        phases[i + 1..]
            .iter()
            .map(|q| match (prev.and_then(|pr| pr.total(q)), prev.and_then(|pr| pr.total(p))) {
                (Some(qt), Some(pt)) => (qt as u128 * scale as u128 / pt as u128) as u64,
                _ if p.target_cents > 0 => (q.target_cents as u128 * scale as u128 / p.target_cents as u128) as u64,
                _ => q.target_cents,
            })
            .sum()
    };
    let phase_actual = actual.between(p.start_ms, now_m);
    Some(Projection {
        at_ms: now_m,
        phase: p.kind.clone(),
        phase_name: p.name.clone(),
        basis: basis.into(),
        share: {
            let (n, d) = share(now_m);
            n as f64 / d.max(1) as f64
        },
        phase_actual_cents: phase_actual,
        phase_target_cents: p.target_cents,
        phase_projected_cents: center,
        phase_low_cents: low,
        phase_high_cents: high,
        promotion_target_cents: plan.total_target() as u64,
        promotion_projected_cents: done + center + later(center),
        promotion_low_cents: done + low + later(low),
        promotion_high_cents: done + high + later(high),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(phases: &[(&str, i64, i64, u64)]) -> PlanConfig {
        let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap();
        let toml = phases
            .iter()
            .map(|(k, s, e, t)| {
                format!(
                    "[[phases]]\nkind = \"{k}\"\nstart = \"{}\"\nend = \"{}\"\ntarget_gmv_cents = {t}\n",
                    ts(*s),
                    ts(*e)
                )
            })
            .collect::<String>();
        toml::from_str(&format!("name = \"t\"\n{toml}")).unwrap()
    }

    const H: i64 = 3_600_000;

    #[test]
    fn a_phase_on_the_previous_promotions_shape_projects_its_total() {
        // Previous: 1,000 per minute for the first hour, 3,000 per minute for the second.
        let prev_pts: Vec<(i64, u64)> = (0..120).map(|m| (m * 60_000, if m < 60 { 1000 } else { 3000 })).collect();
        let prev = Previous { phases: phases_of(&plan(&[("official", 0, 2 * H, 0)])), curve: Curve::new(&prev_pts) };
        // This year: the same shape at twice the level, 30 minutes in.
        let start = 100 * H;
        let p = plan(&[
            ("official", start, start + 2 * H, 10_000_000),
            ("encore", start + 2 * H, start + 3 * H, 5_000_000),
        ]);
        let cur: Vec<(i64, u64)> = (0..30).map(|m| (start + m * 60_000, 2000)).collect();
        let pr = project(start + 30 * 60_000 + 5_000, &p, &Curve::new(&cur), Some(&prev)).unwrap();
        assert_eq!(pr.basis, "previous");
        // Previous phase total 240,000; by minute 30 it had 30,000 (1/8): 60,000 x 8.
        assert_eq!(pr.phase_actual_cents, 60_000);
        assert_eq!(pr.phase_projected_cents, 480_000);
        // The shape held all along: no band.
        assert_eq!((pr.phase_low_cents, pr.phase_high_cents), (480_000, 480_000));
        // The encore has no previous phase: its target scaled by this phase's target ratio.
        assert_eq!(pr.promotion_projected_cents, 480_000 + 480_000 * 5 / 10);
    }

    #[test]
    fn without_a_previous_promotion_the_plan_rhythm_is_the_shape() {
        let start = 50 * H;
        let p = plan(&[("official", start, start + 4 * H, 4_000_000)]);
        // Straight-line plan: a quarter expected after an hour; made 1,500,000 in it.
        let cur: Vec<(i64, u64)> = (0..60).map(|m| (start + m * 60_000, 25_000)).collect();
        let pr = project(start + H, &p, &Curve::new(&cur), None).unwrap();
        assert_eq!(pr.basis, "plan");
        assert_eq!(pr.phase_projected_cents, 6_000_000);
        assert!(project(start - 1, &p, &Curve::new(&cur), None).is_none(), "before the plan: none");
    }
}
