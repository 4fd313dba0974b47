//! The distinct-count sketches of a part of the state (a shard, or an input partition's
//! state on a worker), their diffs and their union.
//!
//! Within one process the shards split the users, so their estimates add up. Across input
//! partitions they do not: contract v1.1 keys traffic by `user_id` (UV and IPV users are
//! partition-disjoint) but pays by `order_id`, so one buyer's pays land on several partitions.
//! Distinct counts are therefore always read from the *union* of the parts' sketches
//! ([`Sketches::distinct`]), which is exact for disjoint parts and for overlapping ones alike.
//! A reader (an API node) keeps a copy of each part's sketches, brought up to date by diffs
//! ([`Sketches::diff_into`]): an insert changes at most one register of each sketch, so a diff
//! costs what was inserted since the previous one, not the sketches' size.

use serde::{Deserialize, Serialize};

use crate::hll::{BucketDiff, BucketHll, ByteDiff, Hll, SlidingDiff, SlidingHll, SLIDING_P};
use crate::shard::{Ctx, UNSEEN};

/// Buckets of a previous-window ring: 30 per window, two windows and one spare.
const PREV_BUCKETS: usize = 61;

/// uv, ipv_uv and buyers: since the start, sliding over the reported windows, and bucketed for
/// the previous window of the first-formula decomposition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sketches {
    /// Base of the sliding sketches' 32-bit millisecond clocks (`UNSEEN` before the first
    /// event).
    pub(crate) epoch: i64,
    pub(crate) sliding: [SlidingHll; 3],
    pub(crate) totals: [Hll; 3],
    /// Per reported window: uv, ipv, buyers per bucket of L/30, for the previous window.
    pub(crate) prev: Vec<[BucketHll; 3]>,
}

/// Distinct counts read from sketches as of one watermark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distinct {
    /// uv, ipv_uv, buyers since the start.
    pub total: [u64; 3],
    /// The same per reported window.
    pub windows: Vec<[u64; 3]>,
    /// Per reported window: [uv, buyers] in the current and in the previous window.
    pub formula: Vec<([u64; 2], [u64; 2])>,
}

impl Distinct {
    /// Nothing counted, for `windows` reported windows.
    pub fn zero(windows: usize) -> Distinct {
        Distinct { total: [0; 3], windows: vec![[0; 3]; windows], formula: vec![([0; 2], [0; 2]); windows] }
    }

    /// The sum of the shards' own counts: right when they count disjoint sets (the shards of
    /// one engine split the users), as they do within a process.
    pub fn sum(sums: &[crate::shard::ShardSummary]) -> Distinct {
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        let mut d = Distinct::zero(sums.first().map_or(0, |s| s.distinct.windows.len()));
        for s in sums {
            add(&mut d.total, &s.distinct.total);
            for (a, b) in d.windows.iter_mut().zip(&s.distinct.windows) {
                add(a, b);
            }
            for (a, b) in d.formula.iter_mut().zip(&s.distinct.formula) {
                add(&mut a.0, &b.0);
                add(&mut a.1, &b.1);
            }
        }
        d
    }
}

/// What changed in a part's [`Sketches`] since a reader's copy (see [`Sketches::diff_into`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchDiff {
    epoch: i64,
    sliding: Vec<SlidingDiff>,
    totals: Vec<ByteDiff>,
    prev: Vec<Vec<BucketDiff>>,
}

impl SketchDiff {
    /// Sliding registers carried (the bulk of a diff).
    pub fn sliding_registers(&self) -> usize {
        self.sliding.iter().map(|d| d.len()).sum()
    }
}

fn prev_width(l: i64) -> i64 {
    // 30 buckets per window: the previous window's edges are rounded to L/30.
    (l / 30).max(1)
}

impl Sketches {
    pub fn new(cx: &Ctx) -> Self {
        let ring = |l: i64| BucketHll::new(prev_width(l), PREV_BUCKETS);
        Sketches {
            epoch: UNSEEN,
            sliding: [SlidingHll::new(), SlidingHll::new(), SlidingHll::new()],
            totals: [Hll::new(SLIDING_P), Hll::new(SLIDING_P), Hll::new(SLIDING_P)],
            prev: cx.windows.iter().map(|&l| [ring(l), ring(l), ring(l)]).collect(),
        }
    }

    /// That sketches read from a checkpoint or a partial have the shape [`Sketches::new`]
    /// gives for `cx`.
    pub(crate) fn check(&self, cx: &Ctx) -> Result<(), String> {
        for h in &self.sliding {
            h.check(SLIDING_P)?;
        }
        for h in &self.totals {
            h.check(SLIDING_P)?;
        }
        if self.prev.len() != cx.windows.len() {
            return Err("previous-window sketches out of range".into());
        }
        for (hs, &l) in self.prev.iter().zip(&cx.windows) {
            for h in hs {
                h.check(prev_width(l), PREV_BUCKETS)?;
            }
        }
        Ok(())
    }

    /// The distinct counts as of `as_of` (the global watermark): of one shard's sketches, or
    /// of an API node's union of every partition's.
    pub fn distinct(&self, as_of: i64, cx: &Ctx) -> Distinct {
        let nw = cx.windows.len();
        if self.epoch == UNSEEN {
            return Distinct::zero(nw);
        }
        // Before any event (`as_of` unknown) every window is empty.
        let rel = |t: i64| if t <= self.epoch { 0 } else { (t - self.epoch).min(u32::MAX as i64) as u32 };
        let starts: Vec<u32> = cx
            .windows
            .iter()
            .map(|&l| if as_of == i64::MIN { u32::MAX } else { rel(as_of.saturating_sub(l)) })
            .collect();
        let est: Vec<Vec<u64>> = self.sliding.iter().map(|h| h.estimate(&starts)).collect();
        Distinct {
            total: [self.totals[0].estimate(), self.totals[1].estimate(), self.totals[2].estimate()],
            windows: (0..nw).map(|k| [est[0][k], est[1][k], est[2][k]]).collect(),
            formula: cx
                .windows
                .iter()
                .zip(&self.prev)
                .map(|(&l, p)| {
                    let (a, b) = (as_of.saturating_sub(l), as_of.saturating_sub(2 * l));
                    ([p[0].estimate(a, as_of), p[2].estimate(a, as_of)], [p[0].estimate(b, a), p[2].estimate(b, a)])
                })
                .collect(),
        }
    }

    /// What differs from `shadow` (a reader's copy, brought up to date).
    pub fn diff_into(&self, shadow: &mut Sketches) -> SketchDiff {
        shadow.epoch = self.epoch;
        SketchDiff {
            epoch: self.epoch,
            sliding: self.sliding.iter().zip(shadow.sliding.iter_mut()).map(|(a, b)| a.diff_into(b)).collect(),
            totals: self.totals.iter().zip(shadow.totals.iter_mut()).map(|(a, b)| a.diff_into(b)).collect(),
            prev: self
                .prev
                .iter()
                .zip(shadow.prev.iter_mut())
                .map(|(a, b)| a.iter().zip(b.iter_mut()).map(|(x, y)| x.diff_into(y)).collect())
                .collect(),
        }
    }

    /// Takes a part's diff into these sketches, the union of every part's (an API node keeps
    /// one union, not a copy per part: a diff only adds facts, so the union costs what the
    /// diffs carry and reads like one sketch, however many parts there are). `held` is the
    /// part's bucket numbers as last learnt (see [`BucketHll::absorb`]). A part's sketches
    /// replaced by its new owner's need nothing removed: they hold facts about the same
    /// partition's events.
    pub fn absorb(&mut self, d: &SketchDiff, held: &mut Vec<[Vec<i64>; 3]>) -> Result<(), String> {
        if d.sliding.len() != 3 || d.totals.len() != 3 || d.prev.len() != self.prev.len() {
            return Err("sketch diff of another shape".into());
        }
        if d.prev.iter().any(|xs| xs.len() != 3) {
            return Err("sketch diff of another shape".into());
        }
        if d.epoch != UNSEEN {
            // One clock for the union: the earliest epoch of any part.
            if self.epoch == UNSEEN {
                self.epoch = d.epoch;
            } else if d.epoch < self.epoch {
                let by = (self.epoch - d.epoch).min(u32::MAX as i64) as u32;
                for h in &mut self.sliding {
                    h.shift_forward(by);
                }
                self.epoch = d.epoch;
            }
            let shift = d.epoch - self.epoch;
            for (h, x) in self.sliding.iter_mut().zip(&d.sliding) {
                h.absorb(x, shift)?;
            }
        }
        for (h, x) in self.totals.iter_mut().zip(&d.totals) {
            h.absorb(x)?;
        }
        if held.len() != self.prev.len() {
            *held = vec![Default::default(); self.prev.len()];
        }
        for ((hs, xs), ph) in self.prev.iter_mut().zip(&d.prev).zip(held.iter_mut()) {
            for ((h, x), p) in hs.iter_mut().zip(xs).zip(ph.iter_mut()) {
                h.absorb(x, p)?;
            }
        }
        Ok(())
    }
}
