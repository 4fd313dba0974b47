//! Exact sliding windows at millisecond precision.
//!
//! The contract's windows are `(as_of - L, as_of]` to the millisecond, so per-second sums alone
//! cannot be exact at the trailing edge (seen on the golden sample). A [`Ring`] therefore keeps
//! the compact records of the last `max(L)` of event time in one bucket per second, and the
//! caller keeps a running aggregate per window length:
//!
//! - on insert, the record is added to every window whose edge it is past;
//! - on [`Ring::advance`] to a newer watermark, every record whose `ts` the edge of a window
//!   has just passed is handed back once for that window, to be subtracted.
//!
//! Both are O(1) amortised per record and window length; a window's value is read in O(1).
//! Only the bucket straddling an edge needs its records in millisecond order; it is sorted
//! lazily (records of a second mostly arrive in order, so usually there is nothing to do).
//! Expiry goes by `ts` range `(old edge, new edge]`, so a late record that was never added
//! to a window (its `ts` was already behind the edge) is never subtracted from it either.
//! Buckets behind the longest window are recycled: memory is bounded by the records of one
//! longest window, and in steady state no allocation happens.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A record kept for expiry. `ms` is the millisecond within its second.
pub trait Record: Copy {
    fn ms(&self) -> u16;
}

#[derive(Debug, Serialize, Deserialize)]
struct Bucket<T> {
    recs: Vec<T>,
    sorted: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Ring<T> {
    lengths: Vec<i64>,
    longest: i64,
    /// Watermark up to which expiry has been applied.
    applied: i64,
    base_sec: i64,
    buckets: VecDeque<Bucket<T>>,
    /// Recycled buffers: capacity only, nothing to save.
    #[serde(skip, default = "Vec::new")]
    pool: Vec<Vec<T>>,
    /// Records per recycled bucket, smoothed over about 16 seconds: recycled buffers are
    /// sized by it (see `advance`), so the pool keeps neither a spike's size nor the slow
    /// creep of buffers doubling one by one on busier seconds.
    #[serde(skip, default)]
    typical: usize,
}

/// Capacity for a second of `t` records: 4 standard deviations of a Poisson count above it.
fn headroom(t: usize) -> usize {
    t + 4 * isqrt(t) + 4
}

fn isqrt(t: usize) -> usize {
    (t as f64).sqrt() as usize
}

/// Start value of `applied`: nothing expired yet.
const NEVER: i64 = i64::MIN / 4;

impl<T: Record> Ring<T> {
    /// `lengths` in ms (whole seconds), any order; indices into it name the windows.
    pub fn new(lengths: Vec<i64>) -> Self {
        let longest = lengths.iter().copied().max().unwrap_or(0);
        Ring { lengths, longest, applied: NEVER, base_sec: 0, buckets: VecDeque::new(), pool: Vec::new(), typical: 0 }
    }

    /// That a restored ring has the window `lengths` of `Ring::new(lengths)`, that every
    /// record lies in its second, and that its buckets start where expiry left them (so an
    /// insert never has to fill a gap of years). `check_rec` checks each record's indices.
    pub(crate) fn check(
        &self,
        lengths: &[i64],
        mut check_rec: impl FnMut(&T) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.lengths != lengths || self.longest != lengths.iter().copied().max().unwrap_or(0) {
            return Err(format!("window ring: lengths {:?}, not {lengths:?}", self.lengths));
        }
        if !self.buckets.is_empty()
            && self.applied != NEVER
            && self.base_sec * 1000 <= self.applied - self.longest - 1000
        {
            return Err("window ring: buckets behind the longest window".into());
        }
        if self.base_sec.checked_add(self.buckets.len() as i64).and_then(|s| s.checked_mul(1000)).is_none() {
            return Err("window ring: seconds out of range".into());
        }
        for b in &self.buckets {
            for r in &b.recs {
                if r.ms() > 999 {
                    return Err("window ring: a record's millisecond out of range".into());
                }
                check_rec(r)?;
            }
        }
        Ok(())
    }

    pub fn lengths(&self) -> &[i64] {
        &self.lengths
    }

    pub fn applied(&self) -> i64 {
        self.applied
    }

    /// Inserts a record at `ts`, calling `add(i)` for every window `i` it falls in now.
    /// Returns false when it is too late for every window (and so is not kept).
    #[inline]
    pub fn insert(&mut self, ts: i64, rec: T, mut add: impl FnMut(usize)) -> bool {
        let mut any = false;
        for (i, &len) in self.lengths.iter().enumerate() {
            if ts > self.applied - len {
                add(i);
                any = true;
            }
        }
        if !any {
            return false;
        }
        let sec = ts.div_euclid(1000);
        if self.buckets.is_empty() {
            self.base_sec = sec;
        }
        if sec < self.base_sec {
            // Older than the oldest kept bucket but inside a window: only possible before the
            // first advance. Extend the ring backwards.
            for _ in sec..self.base_sec {
                self.buckets.push_front(Bucket { recs: Vec::new(), sorted: true });
            }
            self.base_sec = sec;
        }
        let idx = (sec - self.base_sec) as usize;
        while self.buckets.len() <= idx {
            let recs = self.pool.pop().unwrap_or_else(|| {
                // A new buffer (the ring is still filling): sized like the recycled ones
                // will be, from the second before, so it does not double its way up.
                let last = self.buckets.back().map_or(0, |b| b.recs.len());
                Vec::with_capacity(if last < 16 { 0 } else { headroom(last) })
            });
            self.buckets.push_back(Bucket { recs, sorted: true });
        }
        let b = &mut self.buckets[idx];
        if let Some(last) = b.recs.last() {
            if rec.ms() < last.ms() {
                b.sorted = false;
            }
        }
        b.recs.push(rec);
        true
    }

    /// Moves the watermark to `wm`, calling `expire(i, rec)` for each record leaving window `i`.
    pub fn advance(&mut self, wm: i64, mut expire: impl FnMut(usize, &T)) {
        if wm <= self.applied {
            return;
        }
        let old = self.applied;
        for (i, &len) in self.lengths.iter().enumerate() {
            let lo = old - len; // exclusive: records with ts <= lo were never in or already left
            let hi = wm - len; // inclusive
            if self.buckets.is_empty() || hi < self.base_sec * 1000 {
                continue;
            }
            let first_sec = (lo + 1).div_euclid(1000).max(self.base_sec);
            let last_sec = hi.div_euclid(1000).min(self.base_sec + self.buckets.len() as i64 - 1);
            let mut sec = first_sec;
            while sec <= last_sec {
                let b = &mut self.buckets[(sec - self.base_sec) as usize];
                let b_lo = sec * 1000;
                let b_hi = b_lo + 999;
                if lo < b_lo && hi >= b_hi {
                    for r in &b.recs {
                        expire(i, r);
                    }
                } else {
                    if !b.sorted {
                        b.recs.sort_by_key(|r| r.ms());
                        b.sorted = true;
                    }
                    let from = if lo >= b_lo { (lo - b_lo + 1) as u16 } else { 0 };
                    let to = if hi <= b_hi { (hi - b_lo) as u16 } else { 999 };
                    let a = b.recs.partition_point(|r| r.ms() < from);
                    let z = b.recs.partition_point(|r| r.ms() <= to);
                    for r in &b.recs[a..z] {
                        expire(i, r);
                    }
                }
                sec += 1;
            }
        }
        self.applied = wm;
        // Recycle buckets wholly behind the longest window.
        while let Some(front) = self.buckets.front() {
            let _ = front;
            if self.base_sec * 1000 + 999 > wm - self.longest {
                break;
            }
            let mut b = self.buckets.pop_front().expect("front exists");
            let n = b.recs.len();
            self.typical = if self.typical == 0 { n } else { (self.typical * 15 + n) / 16 };
            b.recs.clear();
            // A recycled buffer above 3x the typical second (+ 16) is shrunk, so a spike's
            // buffers return to the traffic's size. For busy seconds (16 records or more) one
            // below the typical second + 2 standard deviations (Poisson: 2 sqrt(t)) is grown
            // to + 4 standard deviations: steady traffic then (almost) never grows a buffer,
            // so the pool does not creep upwards one doubling at a time over the hours.
            // Sparse seconds keep Vec's own growth: a fixed slack on each of the thousands of
            // one-second buckets of a 2-hour ring would cost more than any creep.
            let (t, cap) = (self.typical, b.recs.capacity());
            if cap > 3 * t + 16 || (t >= 16 && cap < t + 2 * isqrt(t)) {
                b.recs.shrink_to(0);
                b.recs.reserve_exact(headroom(t));
            }
            if b.recs.capacity() > 0 {
                self.pool.push(b.recs);
            }
            self.base_sec += 1;
        }
    }

    /// Bytes the record buffers hold allocated, kept and recycled (for memory accounting).
    pub fn allocated_bytes(&self) -> u64 {
        let recs: usize =
            self.buckets.iter().map(|b| b.recs.capacity()).chain(self.pool.iter().map(Vec::capacity)).sum();
        (recs * std::mem::size_of::<T>()) as u64
    }

    /// Records currently kept (for memory accounting).
    pub fn kept(&self) -> usize {
        self.buckets.iter().map(|b| b.recs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug)]
    struct R {
        ts: i64,
        v: u64,
    }
    impl Record for R {
        fn ms(&self) -> u16 {
            self.ts.rem_euclid(1000) as u16
        }
    }

    /// Runs events through a ring and a naive filter; both must agree at every step.
    fn check(events: &[(i64, u64)], lengths: &[i64]) {
        let mut ring = Ring::<R>::new(lengths.to_vec());
        let mut sums = vec![0u64; lengths.len()];
        let mut wm = i64::MIN;
        let mut kept: Vec<(i64, u64)> = Vec::new();
        for &(ts, v) in events {
            if ts > wm {
                wm = ts;
                ring.advance(wm, |i, r| sums[i] -= r.v);
            }
            let applied = ring.applied();
            ring.insert(ts, R { ts, v }, |i| sums[i] += v);
            // Naive: a late event counts in window i iff ts > wm - L at arrival.
            if ts > applied - lengths.iter().max().unwrap() {
                kept.push((ts, v));
            }
            for (i, &len) in lengths.iter().enumerate() {
                let naive: u64 = events_in(&kept, wm - len, wm, applied - len);
                assert_eq!(sums[i], naive, "window {len} at wm {wm}");
            }
        }
    }

    fn events_in(kept: &[(i64, u64)], lo: i64, hi: i64, _edge: i64) -> u64 {
        kept.iter().filter(|(t, _)| *t > lo && *t <= hi).map(|(_, v)| v).sum()
    }

    #[test]
    fn in_order_and_late_events() {
        let ev = vec![
            (1_000, 1),
            (1_500, 2),
            (2_999, 4),
            (2_000, 8),
            (61_000, 16),
            (61_001, 32),
            (1_600, 64),
            (120_500, 128),
        ];
        check(&ev, &[60_000, 5_000]);
    }

    #[test]
    fn a_spike_does_not_leave_its_buffers_behind() {
        // A 10 s window at 100 records/s, a 10 s spike at 10,000/s, then 100/s again.
        let mut ring = Ring::<R>::new(vec![10_000]);
        let mut ts = 0i64;
        let mut run = |ring: &mut Ring<R>, secs: i64, per_sec: i64| {
            for _ in 0..secs {
                for k in 0..per_sec {
                    let t = ts + k * 1000 / per_sec;
                    ring.insert(t, R { ts: t, v: 1 }, |_| {});
                }
                ts += 1000;
                ring.advance(ts - 1, |_, _| {});
            }
            ring.allocated_bytes()
        };
        let before = run(&mut ring, 60, 100);
        let spike = run(&mut ring, 10, 10_000);
        let after = run(&mut ring, 120, 100);
        assert!(spike > 20 * before, "the spike's records are kept while in the window: {before} -> {spike}");
        assert!(after <= 3 * before, "after the spike the buffers shrink back: {before} -> {spike} -> {after}");
    }

    proptest! {
        #[test]
        fn matches_naive(mut ev in prop::collection::vec((0i64..200_000, 1u64..1000), 1..300), jitter in 0i64..5_000) {
            // Mostly increasing times with late arrivals.
            ev.sort_by_key(|e| e.0);
            for (k, e) in ev.iter_mut().enumerate() {
                if k % 3 == 0 { e.0 = (e.0 - jitter).max(0); }
            }
            check(&ev, &[1_000, 7_000, 60_000]);
        }
    }
}
