//! Distinct-count sketches.
//!
//! [`SlidingHll`] is a HyperLogLog whose every register keeps, for each possible rank, the
//! newest time it was hit (the "sliding HyperLogLog" idea of Chabchoub & Hébrail, in its
//! simplest dense form). The distinct count over *any* window `(start, now]` is then the
//! estimate over registers `max{rank : newest[rank] > start}`: one sketch answers the total,
//! the 1-min, 5-min and 1-h windows at millisecond precision, in fixed memory, and merges with
//! another by element-wise max. No crate offers this, which is why it is hand-written.
//!
//! [`BucketHll`] is a ring of plain HyperLogLogs per time bucket, used where a window must
//! also *end* in the past (the previous window of the first-formula decomposition).
//!
//! Both estimate with Ertl's improved estimator ("New cardinality estimation algorithms for
//! HyperLogLog sketches", 2017), which needs no bias tables and is accurate from 0 upwards.

/// Precision of the sliding sketches: 2^14 registers, standard error 0.81%.
pub const SLIDING_P: u32 = 14;
/// Ranks above this are stored as this (probability 2^-31 per insert: never, in practice).
pub const MAX_RANK: usize = 32;

/// Register index and rank (1-based) of a 64-bit hash at precision `p`.
#[inline]
pub fn index_rank(hash: u64, p: u32) -> (usize, usize) {
    let idx = (hash >> (64 - p)) as usize;
    let rest = (hash << p) | (1u64 << (p - 1));
    (idx, rest.leading_zeros() as usize + 1)
}

/// Ertl's improved raw estimator from a histogram of register values (0..=q+1).
pub fn estimate_from_histogram(hist: &[u32], p: u32) -> f64 {
    let m = (1u64 << p) as f64;
    let q = 64 - p as usize;
    let top = hist.get(q + 1).copied().unwrap_or(0) as f64;
    let mut z = m * tau(1.0 - top / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + hist.get(k).copied().unwrap_or(0) as f64);
    }
    z += m * sigma(hist[0] as f64 / m);
    let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
    alpha_inf * m * m / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let prev = z;
        z += x * y;
        y += y;
        if z == prev {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let prev = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z == prev {
            return z / 3.0;
        }
    }
}

/// Sliding-window HyperLogLog. Times are u32 milliseconds since the engine's epoch, 0 meaning
/// "never"; 2^32 ms is 49 days, longer than any promotion.
#[derive(Clone)]
pub struct SlidingHll {
    /// `newest[reg * MAX_RANK + rank - 1]`.
    newest: Box<[u32]>,
}

impl std::fmt::Debug for SlidingHll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingHll").finish_non_exhaustive()
    }
}

impl Default for SlidingHll {
    fn default() -> Self {
        Self::new()
    }
}

impl SlidingHll {
    pub fn new() -> Self {
        SlidingHll { newest: vec![0u32; (1usize << SLIDING_P) * MAX_RANK].into_boxed_slice() }
    }

    #[inline]
    pub fn insert(&mut self, hash: u64, t: u32) {
        let (idx, rank) = index_rank(hash, SLIDING_P);
        let cell = &mut self.newest[idx * MAX_RANK + rank.min(MAX_RANK) - 1];
        if *cell < t {
            *cell = t;
        }
    }

    /// Distinct count of items seen at a time `> start` (0 = everything), one per start.
    pub fn estimate(&self, starts: &[u32]) -> Vec<u64> {
        let q = 64 - SLIDING_P as usize;
        let mut hists = vec![vec![0u32; q + 2]; starts.len()];
        for reg in self.newest.chunks_exact(MAX_RANK) {
            for (k, &start) in starts.iter().enumerate() {
                let rank = reg.iter().rposition(|&t| t > start).map_or(0, |r| r + 1);
                hists[k][rank] += 1;
            }
        }
        hists.iter().map(|h| estimate_from_histogram(h, SLIDING_P).round() as u64).collect()
    }

    /// Element-wise max: the sketch of the union.
    pub fn merge(&mut self, other: &SlidingHll) {
        for (a, b) in self.newest.iter_mut().zip(other.newest.iter()) {
            *a = (*a).max(*b);
        }
    }
}

/// Precision of the bucketed sketches (decomposition only): standard error 1.6%.
pub const BUCKET_P: u32 = 12;

/// A ring of plain HyperLogLogs, one per `width_ms` bucket, covering `buckets` buckets.
#[derive(Clone)]
pub struct BucketHll {
    width_ms: i64,
    /// Bucket number held by each ring position (-1: empty).
    held: Box<[i64]>,
    regs: Box<[u8]>,
}

impl std::fmt::Debug for BucketHll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketHll").field("width_ms", &self.width_ms).finish_non_exhaustive()
    }
}

impl BucketHll {
    pub fn new(width_ms: i64, buckets: usize) -> Self {
        let m = 1usize << BUCKET_P;
        BucketHll {
            width_ms: width_ms.max(1),
            held: vec![-1; buckets].into_boxed_slice(),
            regs: vec![0; buckets * m].into_boxed_slice(),
        }
    }

    #[inline]
    pub fn insert(&mut self, hash: u64, ts: i64) {
        let b = ts.div_euclid(self.width_ms);
        let n = self.held.len() as i64;
        let pos = b.rem_euclid(n) as usize;
        let m = 1usize << BUCKET_P;
        if self.held[pos] != b {
            if self.held[pos] > b {
                return; // older than the ring covers
            }
            self.held[pos] = b;
            self.regs[pos * m..(pos + 1) * m].fill(0);
        }
        let (idx, rank) = index_rank(hash, BUCKET_P);
        let r = &mut self.regs[pos * m + idx];
        *r = (*r).max(rank as u8);
    }

    /// Distinct count over buckets whose range lies in `(start, end]`, rounded to buckets.
    pub fn estimate(&self, start: i64, end: i64) -> u64 {
        let first = start.div_euclid(self.width_ms) + 1;
        let last = end.div_euclid(self.width_ms);
        let m = 1usize << BUCKET_P;
        let mut merged = vec![0u8; m];
        for (pos, &b) in self.held.iter().enumerate() {
            if b >= first && b <= last {
                for (x, y) in merged.iter_mut().zip(&self.regs[pos * m..(pos + 1) * m]) {
                    *x = (*x).max(*y);
                }
            }
        }
        let mut hist = vec![0u32; 64 - BUCKET_P as usize + 2];
        for &r in &merged {
            hist[r as usize] += 1;
        }
        estimate_from_histogram(&hist, BUCKET_P).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn estimates_within_two_percent_across_ranges() {
        for &n in &[0u64, 1, 10, 100, 1_000, 10_000, 40_000, 100_000, 1_000_000] {
            let mut s = SlidingHll::new();
            for i in 0..n {
                s.insert(h(i), 10);
            }
            let e = s.estimate(&[0])[0] as f64;
            let err = if n == 0 { e } else { (e - n as f64).abs() / n as f64 };
            assert!(err <= 0.02, "n={n} estimate={e} err={err}");
        }
    }

    #[test]
    fn windows_see_only_recent_items() {
        let mut s = SlidingHll::new();
        for i in 0..5_000 {
            s.insert(h(i), 100); // old
        }
        for i in 5_000..8_000 {
            s.insert(h(i), 200); // recent
        }
        for i in 0..1_000 {
            s.insert(h(i), 300); // old users coming back
        }
        let e = s.estimate(&[0, 150, 250]);
        let close = |a: u64, b: u64| ((a as f64 - b as f64).abs() / b as f64) <= 0.02;
        assert!(close(e[0], 8_000), "{e:?}");
        assert!(close(e[1], 4_000), "{e:?}");
        assert!(close(e[2], 1_000), "{e:?}");
    }

    #[test]
    fn merge_is_union() {
        let mut a = SlidingHll::new();
        let mut b = SlidingHll::new();
        for i in 0..6_000 {
            a.insert(h(i), 5);
        }
        for i in 3_000..9_000 {
            b.insert(h(i), 7);
        }
        a.merge(&b);
        let e = a.estimate(&[0, 6])[..].to_vec();
        assert!((e[0] as f64 - 9_000.0).abs() / 9_000.0 <= 0.02, "{e:?}");
        assert!((e[1] as f64 - 6_000.0).abs() / 6_000.0 <= 0.02, "{e:?}");
    }

    #[test]
    fn bucket_ring_counts_a_past_window() {
        let mut b = BucketHll::new(1000, 10);
        for i in 0..2_000 {
            b.insert(h(i), 1_500); // bucket 1
        }
        for i in 1_000..4_000 {
            b.insert(h(i), 2_500); // bucket 2
        }
        let prev = b.estimate(999, 1_999) as f64;
        let cur = b.estimate(1_999, 2_999) as f64;
        assert!((prev - 2_000.0).abs() / 2_000.0 < 0.05, "{prev}");
        assert!((cur - 3_000.0).abs() / 3_000.0 < 0.05, "{cur}");
        // Overwriting the ring drops the oldest bucket.
        b.insert(h(1), 11_500);
        assert_eq!(b.estimate(999, 1_999), 0);
    }
}
