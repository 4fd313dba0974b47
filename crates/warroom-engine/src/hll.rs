//! Distinct-count sketches.
//!
//! [`SlidingHll`] is a HyperLogLog whose every register keeps the pairs (rank, newest time)
//! that can still be the register's maximum for some window: the "sliding HyperLogLog" of
//! Chabchoub & Hébrail. The distinct count over *any* window `(start, now]` is the estimate
//! over registers `max{rank : time > start}`: one sketch answers the 1-min, 5-min and 1-h
//! windows at millisecond precision, in fixed memory (32 bytes a register: at 2^14 registers it
//! stays in cache; a dense rank x time table was 2 MiB a sketch and cost two DRAM misses per
//! event), and merges with another. No crate offers this, which is why it is hand-written.
//! [`Hll`] is the plain one-byte-per-register sketch for counts since start.
//!
//! [`BucketHll`] is a ring of plain HyperLogLogs per time bucket, used where a window must
//! also *end* in the past (the previous window of the first-formula decomposition).
//!
//! Both estimate with Ertl's improved estimator ("New cardinality estimation algorithms for
//! HyperLogLog sketches", 2017), which needs no bias tables and is accurate from 0 upwards.

use serde::{Deserialize, Serialize};

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

// Exact comparisons are the point: the series stop when an addition no longer changes the sum.
#[allow(clippy::float_cmp)]
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

#[allow(clippy::float_cmp)]
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

/// Pairs kept per register of a [`SlidingHll`].
pub const LPFM: usize = 6;

/// One register of a sliding sketch: its "list of possible future maxima", newest first,
/// ranks strictly increasing towards the past (an older pair survives only with a higher
/// rank). 32 bytes: half a cache line.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C, align(32))]
struct Reg {
    ts: [u32; LPFM],
    /// 0 = empty slot (ranks start at 1).
    rank: [u8; LPFM],
}

impl Reg {
    #[inline]
    fn insert(&mut self, rank: u8, t: u32) {
        // Fast paths for the common in-order case (t at least as new as the newest pair).
        if self.rank[0] == 0 {
            self.rank[0] = rank;
            self.ts[0] = t;
            return;
        }
        if t >= self.ts[0] {
            if rank == self.rank[0] {
                self.ts[0] = t;
                return;
            }
            if rank < self.rank[0] {
                self.rank.copy_within(0..LPFM - 1, 1);
                self.ts.copy_within(0..LPFM - 1, 1);
                self.rank[0] = rank;
                self.ts[0] = t;
                return;
            }
        }
        self.insert_general(rank, t);
    }

    fn insert_general(&mut self, rank: u8, t: u32) {
        let mut out = Reg::default();
        let mut n = 0;
        let mut placed = false;
        for i in 0..LPFM {
            let (r, ts) = (self.rank[i], self.ts[i]);
            if r == 0 {
                break;
            }
            if r >= rank && ts >= t {
                return; // dominated: an entry at least as new with at least this rank
            }
            if ts > t {
                // Newer (with a lower rank): stays ahead of the new pair.
                out.rank[n] = r;
                out.ts[n] = ts;
                n += 1;
            } else {
                if !placed {
                    out.rank[n] = rank;
                    out.ts[n] = t;
                    n += 1;
                    placed = true;
                }
                if r > rank && n < LPFM {
                    out.rank[n] = r;
                    out.ts[n] = ts;
                    n += 1;
                }
            }
        }
        if !placed && n < LPFM {
            out.rank[n] = rank;
            out.ts[n] = t;
        }
        *self = out;
    }

    /// Highest rank seen at a time `> start`.
    #[inline]
    fn rank_since(&self, start: u32) -> usize {
        let mut best = 0;
        for i in 0..LPFM {
            if self.rank[i] == 0 || self.ts[i] <= start {
                break;
            }
            best = self.rank[i] as usize;
        }
        best
    }
}

/// Sliding-window HyperLogLog (see the module doc). Times are u32 milliseconds since the
/// engine's epoch, 0 meaning "never"; 2^32 ms is 49 days, longer than any promotion.
///
/// Each register keeps at most [`LPFM`] pairs; when a seventh would be needed the oldest (the
/// highest rank) is dropped, which can only lower estimates of windows reaching back before
/// it. Six pairs hold a register's records of well over a million distinct items per hour
/// per shard; totals since start use a plain [`Hll`] beside it, which never drops anything.
///
/// Checkpoints hold only the registers in use (see [`sparse`]).
#[derive(Clone, Serialize, Deserialize)]
pub struct SlidingHll {
    #[serde(with = "sparse::regs")]
    regs: Box<[Reg]>,
    p: u32,
}

impl std::fmt::Debug for SlidingHll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingHll").field("p", &self.p).finish_non_exhaustive()
    }
}

impl Default for SlidingHll {
    fn default() -> Self {
        Self::new()
    }
}

impl SlidingHll {
    pub fn new() -> Self {
        Self::with_precision(SLIDING_P)
    }

    pub fn with_precision(p: u32) -> Self {
        SlidingHll { regs: vec![Reg::default(); 1usize << p].into_boxed_slice(), p }
    }

    #[inline]
    pub fn insert(&mut self, hash: u64, t: u32) {
        let (idx, rank) = index_rank(hash, self.p);
        self.regs[idx].insert(rank.min(MAX_RANK) as u8, t);
    }

    /// Asks the CPU for the register [`SlidingHll::insert`] of `hash` will touch (the
    /// registers, 512 KiB a sketch, miss the caches on a busy night).
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        crate::mem::prefetch(&self.regs[index_rank(hash, self.p).0]);
    }

    /// Distinct count of items seen at a time `> start` (0 = everything kept), one per start.
    pub fn estimate(&self, starts: &[u32]) -> Vec<u64> {
        let q = 64 - self.p as usize;
        let mut hists = vec![vec![0u32; q + 2]; starts.len()];
        for reg in self.regs.iter() {
            for (k, &start) in starts.iter().enumerate() {
                hists[k][reg.rank_since(start)] += 1;
            }
        }
        hists.iter().map(|h| estimate_from_histogram(h, self.p).round() as u64).collect()
    }

    /// The registers that differ from `shadow` (a copy of this sketch as a reader last got
    /// it), which is brought up to date: what a partial carries of the sketch. An insert
    /// changes at most one register, so a diff costs what was inserted since.
    pub fn diff_into(&self, shadow: &mut SlidingHll) -> SlidingDiff {
        SlidingDiff(diff_into(&self.regs, &mut shadow.regs))
    }

    /// Takes another sketch's changed registers into this union (see [`SlidingHll::merge`]);
    /// their times are `shift` ms later on this sketch's clock (its epoch is earlier). Exact
    /// for the union: registers only ever gain pairs that are facts about inserts, and what a
    /// writer dropped was dominated. Cost: the registers carried.
    pub fn absorb(&mut self, d: &SlidingDiff, shift: i64) -> Result<(), String> {
        let top = (MAX_RANK as u8).min((64 - self.p + 1) as u8);
        if d.0.iter().any(|(i, r)| *i as usize >= self.regs.len() || r.rank.iter().any(|&x| x > top)) {
            return Err("sliding sketch diff: a register or rank out of range".into());
        }
        for (i, r) in &d.0 {
            let reg = &mut self.regs[*i as usize];
            for k in 0..LPFM {
                if r.rank[k] == 0 {
                    break;
                }
                let t = if r.ts[k] == 0 { 0 } else { (r.ts[k] as i64 + shift).clamp(1, u32::MAX as i64) as u32 };
                reg.insert(r.rank[k], t);
            }
        }
        Ok(())
    }

    /// Moves every kept time `by` ms later (the clock's epoch moved back by as much).
    pub fn shift_forward(&mut self, by: u32) {
        for reg in self.regs.iter_mut() {
            for i in 0..LPFM {
                if reg.rank[i] == 0 {
                    break;
                }
                if reg.ts[i] != 0 {
                    reg.ts[i] = reg.ts[i].saturating_add(by);
                }
            }
        }
    }

    /// Moves every kept time `by` ms into the past (the clock's epoch moved forwards by as
    /// much). Times that would go below 0 become 0, "before every window": rank order within a
    /// register is kept, since subtraction and saturation are monotone.
    pub fn shift_back(&mut self, by: u32) {
        for reg in self.regs.iter_mut() {
            for i in 0..LPFM {
                if reg.rank[i] == 0 {
                    break;
                }
                reg.ts[i] = reg.ts[i].saturating_sub(by);
            }
        }
    }

    /// That a restored sketch has precision `p`, its register count, and ranks an estimate can
    /// hold (a checkpoint's content is checked before use, see `checkpoint::check`).
    pub(crate) fn check(&self, p: u32) -> Result<(), String> {
        if self.p != p || self.regs.len() != 1usize << p {
            return Err(format!("sliding sketch: precision {} with {} registers, not {p}", self.p, self.regs.len()));
        }
        let top = (MAX_RANK as u8).min((64 - p + 1) as u8);
        if self.regs.iter().any(|r| r.rank.iter().any(|&x| x > top)) {
            return Err("sliding sketch: a rank out of range".into());
        }
        Ok(())
    }

    /// The sketch of the union (same precision).
    pub fn merge(&mut self, other: &SlidingHll) {
        assert_eq!(self.p, other.p, "merging sketches of different precision");
        for (a, b) in self.regs.iter_mut().zip(other.regs.iter()) {
            for i in 0..LPFM {
                if b.rank[i] != 0 {
                    a.insert(b.rank[i], b.ts[i]);
                }
            }
        }
    }
}

/// A plain HyperLogLog (one byte per register): distinct counts since start.
#[derive(Clone, Serialize, Deserialize)]
pub struct Hll {
    #[serde(with = "sparse::bytes")]
    regs: Box<[u8]>,
    p: u32,
}

impl std::fmt::Debug for Hll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hll").field("p", &self.p).finish_non_exhaustive()
    }
}

impl Hll {
    pub fn new(p: u32) -> Self {
        Hll { regs: vec![0u8; 1usize << p].into_boxed_slice(), p }
    }

    #[inline]
    pub fn insert(&mut self, hash: u64) {
        let (idx, rank) = index_rank(hash, self.p);
        let r = &mut self.regs[idx];
        *r = (*r).max(rank as u8);
    }

    pub fn precision(&self) -> u32 {
        self.p
    }

    /// The registers (one byte each), for a compact encoding of one's own.
    pub fn registers(&self) -> &[u8] {
        &self.regs
    }

    /// A sketch from registers written by [`Hll::registers`]; refused if their number or
    /// values do not fit precision `p`.
    pub fn from_registers(p: u32, regs: Vec<u8>) -> Result<Hll, String> {
        let h = Hll { regs: regs.into_boxed_slice(), p };
        h.check(p)?;
        Ok(h)
    }

    pub fn estimate(&self) -> u64 {
        let mut hist = vec![0u32; 64 - self.p as usize + 2];
        for &r in self.regs.iter() {
            hist[r as usize] += 1;
        }
        estimate_from_histogram(&hist, self.p).round() as u64
    }

    /// See [`SlidingHll::diff_into`].
    pub fn diff_into(&self, shadow: &mut Hll) -> ByteDiff {
        ByteDiff(diff_into(&self.regs, &mut shadow.regs))
    }

    /// Takes another sketch's changed registers into this union (register-wise maximum).
    pub fn absorb(&mut self, d: &ByteDiff) -> Result<(), String> {
        check_diff(&d.0, self.regs.len(), self.p)?;
        for &(i, v) in &d.0 {
            let r = &mut self.regs[i as usize];
            *r = (*r).max(v);
        }
        Ok(())
    }

    /// See [`SlidingHll::check`].
    pub(crate) fn check(&self, p: u32) -> Result<(), String> {
        if self.p != p || self.regs.len() != 1usize << p {
            return Err(format!("sketch: precision {} with {} registers, not {p}", self.p, self.regs.len()));
        }
        check_bytes(&self.regs, p, "sketch")
    }

    pub fn merge(&mut self, other: &Hll) {
        for (a, b) in self.regs.iter_mut().zip(other.regs.iter()) {
            *a = (*a).max(*b);
        }
    }
}

/// Registers of a plain sketch hold ranks up to 64 - p + 1 (the estimate's histogram size).
fn check_bytes(regs: &[u8], p: u32, what: &str) -> Result<(), String> {
    if regs.iter().any(|&r| r as u32 > 64 - p + 1) {
        return Err(format!("{what}: a register out of range"));
    }
    Ok(())
}

/// Precision of the bucketed sketches (decomposition only): standard error 2.3%. A bucket is
/// cleared when the ring wraps onto it; 2 KiB keeps that cheap.
pub const BUCKET_P: u32 = 11;

/// A ring of plain HyperLogLogs, one per `width_ms` bucket, covering `buckets` buckets.
#[derive(Clone, Serialize, Deserialize)]
pub struct BucketHll {
    width_ms: i64,
    /// The bucket of the previous insert and its time range: skips a division per insert.
    last: (i64, i64, i64),
    /// Bucket number held by each ring position (-1: empty).
    held: Box<[i64]>,
    #[serde(with = "sparse::bytes")]
    regs: Box<[u8]>,
}

impl std::fmt::Debug for BucketHll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketHll").field("width_ms", &self.width_ms).finish_non_exhaustive()
    }
}

impl BucketHll {
    /// That a restored ring has the shape `new(width_ms, buckets)` gives (see [`SlidingHll::check`]).
    pub(crate) fn check(&self, width_ms: i64, buckets: usize) -> Result<(), String> {
        if self.width_ms != width_ms.max(1) || self.held.len() != buckets || self.regs.len() != buckets << BUCKET_P {
            return Err(format!(
                "bucketed sketch: width {} ms, {} buckets, {} registers; expected {width_ms} ms, {buckets}",
                self.width_ms,
                self.held.len(),
                self.regs.len()
            ));
        }
        check_bytes(&self.regs, BUCKET_P, "bucketed sketch")
    }

    pub fn new(width_ms: i64, buckets: usize) -> Self {
        let m = 1usize << BUCKET_P;
        BucketHll {
            width_ms: width_ms.max(1),
            last: (i64::MIN, i64::MIN, i64::MIN),
            held: vec![-1; buckets].into_boxed_slice(),
            regs: vec![0; buckets * m].into_boxed_slice(),
        }
    }

    #[inline]
    pub fn insert(&mut self, hash: u64, ts: i64) {
        let b = if ts >= self.last.1 && ts < self.last.2 {
            self.last.0
        } else {
            let b = ts.div_euclid(self.width_ms);
            self.last = (b, b * self.width_ms, (b + 1) * self.width_ms);
            b
        };
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

impl BucketHll {
    /// See [`SlidingHll::diff_into`]. The ring's bucket numbers go whole when one moved, and a
    /// bucket that moved goes whole (a reader's union must not keep the old bucket's values).
    pub fn diff_into(&self, shadow: &mut BucketHll) -> BucketDiff {
        let m = 1usize << BUCKET_P;
        let mut regs = Vec::new();
        for pos in 0..self.held.len() {
            let (new, old) = (&self.regs[pos * m..(pos + 1) * m], &mut shadow.regs[pos * m..(pos + 1) * m]);
            let moved = self.held[pos] != shadow.held[pos];
            for (k, (a, b)) in new.iter().zip(old.iter_mut()).enumerate() {
                if a != b || (moved && *a != 0) {
                    *b = *a;
                    regs.push(((pos * m + k) as u32, *a));
                }
            }
        }
        let held = (self.held != shadow.held).then(|| self.held.to_vec());
        shadow.held.clone_from(&self.held);
        BucketDiff { held, regs: ByteDiff(regs) }
    }

    /// Takes another ring's diff into this union ring. `part_held` is the other ring's bucket
    /// numbers as this reader last learnt them (-1: none). Per ring position the newer bucket
    /// wins (as in a ring: an older one is gone), equal ones merge register-wise.
    pub fn absorb(&mut self, d: &BucketDiff, part_held: &mut Vec<i64>) -> Result<(), String> {
        let n = self.held.len();
        if part_held.len() != n {
            *part_held = vec![-1; n];
        }
        if let Some(held) = &d.held {
            if held.len() != n {
                return Err("bucketed sketch diff: ring size".into());
            }
            part_held.copy_from_slice(held);
        }
        check_diff(&d.regs.0, self.regs.len(), BUCKET_P)?;
        let m = 1usize << BUCKET_P;
        for (pos, (&theirs, ours)) in part_held.iter().zip(self.held.iter_mut()).enumerate() {
            if theirs > *ours {
                *ours = theirs;
                self.regs[pos * m..(pos + 1) * m].fill(0);
            }
        }
        for &(i, v) in &d.regs.0 {
            let pos = i as usize / m;
            if part_held[pos] == self.held[pos] {
                let r = &mut self.regs[i as usize];
                *r = (*r).max(v);
            }
        }
        Ok(())
    }
}

/// Changed registers of a [`SlidingHll`] (see [`SlidingHll::diff_into`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingDiff(Vec<(u32, Reg)>);

impl std::fmt::Debug for Reg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reg").field("ts", &self.ts).field("rank", &self.rank).finish()
    }
}

/// Changed registers of a byte sketch ([`Hll`], [`BucketHll`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteDiff(Vec<(u32, u8)>);

/// Changed buckets and registers of a [`BucketHll`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDiff {
    held: Option<Vec<i64>>,
    regs: ByteDiff,
}

impl SlidingDiff {
    /// Registers carried.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `(index, value)` of each register of `new` that differs from `shadow`, which is updated.
fn diff_into<T: Copy + PartialEq>(new: &[T], shadow: &mut [T]) -> Vec<(u32, T)> {
    assert_eq!(new.len(), shadow.len(), "a diff against a sketch of another shape");
    let mut out = Vec::new();
    for (i, (a, b)) in new.iter().zip(shadow.iter_mut()).enumerate() {
        if a != b {
            *b = *a;
            out.push((i as u32, *a));
        }
    }
    out
}

/// That a byte diff's registers exist and hold ranks a sketch of precision `p` can.
fn check_diff(d: &[(u32, u8)], len: usize, p: u32) -> Result<(), String> {
    if d.iter().any(|&(i, v)| i as usize >= len || v as u32 > 64 - p + 1) {
        return Err("sketch diff: a register or rank out of range".into());
    }
    Ok(())
}

/// Sketches as checkpoints hold them: only what is in use. A sketch of a small shard, or of
/// a window that has not filled yet, is mostly empty registers; written densely, a shard's
/// sketches were over a megabyte whatever it held.
mod sparse {
    use serde::de::Deserializer;
    use serde::ser::{SerializeSeq, Serializer};
    use serde::{Deserialize, Serialize};

    /// More registers than any sketch here has (2^14 sliding, 61 x 2^11 bucketed): a count
    /// beyond is a damaged checkpoint, refused before allocating it.
    const MAX_REGISTERS: usize = 1 << 20;

    /// Registers of a sliding sketch: (index, register) for those in use, with the total count.
    pub mod regs {
        use super::*;
        use crate::hll::Reg;

        pub fn serialize<S: Serializer>(regs: &[Reg], s: S) -> Result<S::Ok, S::Error> {
            let used = regs.iter().filter(|r| r.rank[0] != 0).count();
            let mut seq = s.serialize_seq(Some(used + 1))?;
            seq.serialize_element(&Entry::Len(regs.len() as u32))?;
            for (i, r) in regs.iter().enumerate().filter(|(_, r)| r.rank[0] != 0) {
                seq.serialize_element(&Entry::Reg(i as u32, *r))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[Reg]>, D::Error> {
            let entries = Vec::<Entry>::deserialize(d)?;
            let mut regs: Vec<Reg> = Vec::new();
            for e in entries {
                match e {
                    Entry::Len(n) if n as usize > MAX_REGISTERS => {
                        return Err(serde::de::Error::custom("register count out of range"))
                    }
                    Entry::Len(n) => regs = vec![Reg::default(); n as usize],
                    Entry::Reg(i, r) => {
                        let slot =
                            regs.get_mut(i as usize).ok_or_else(|| serde::de::Error::custom("register index"))?;
                        *slot = r;
                    }
                }
            }
            Ok(regs.into_boxed_slice())
        }

        #[derive(Serialize, Deserialize)]
        enum Entry {
            Len(u32),
            Reg(u32, Reg),
        }
    }

    /// Byte registers: dense when at least a third are set, else (index, value) pairs.
    pub mod bytes {
        use super::*;

        #[derive(Serialize, Deserialize)]
        enum Repr {
            Dense(Vec<u8>),
            Sparse(u32, Vec<(u32, u8)>),
        }

        pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
            let set = b.iter().filter(|&&x| x != 0).count();
            if set * 3 >= b.len() {
                return Repr::Dense(b.to_vec()).serialize(s);
            }
            let pairs = b.iter().enumerate().filter(|(_, &x)| x != 0).map(|(i, &x)| (i as u32, x)).collect();
            Repr::Sparse(b.len() as u32, pairs).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u8]>, D::Error> {
            Ok(match Repr::deserialize(d)? {
                Repr::Dense(v) => v.into_boxed_slice(),
                Repr::Sparse(n, _) if n as usize > MAX_REGISTERS => {
                    return Err(serde::de::Error::custom("register count out of range"))
                }
                Repr::Sparse(n, pairs) => {
                    let mut v = vec![0u8; n as usize];
                    for (i, x) in pairs {
                        *v.get_mut(i as usize).ok_or_else(|| serde::de::Error::custom("register index"))? = x;
                    }
                    v.into_boxed_slice()
                }
            })
        }
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
    fn plain_hll_within_two_percent() {
        for &n in &[0u64, 10, 1_000, 100_000, 1_000_000] {
            let mut s = Hll::new(SLIDING_P);
            for i in 0..n {
                s.insert(h(i));
            }
            let e = s.estimate() as f64;
            let err = if n == 0 { e } else { (e - n as f64).abs() / n as f64 };
            assert!(err <= 0.02, "n={n} estimate={e}");
        }
    }

    #[test]
    fn lpfm_keeps_what_a_dense_table_would_answer() {
        // Random (rank, time) inserts into one register, out of order; compare every window
        // start with a naive max over all inserts.
        let mut reg = Reg::default();
        let mut all = Vec::new();
        let mut x = 12345u64;
        for k in 0..200u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let rank = 1 + ((x >> 33).trailing_zeros().min(9)) as u8;
            let t = k * 10 + ((x >> 50) % 40) as u32; // mostly increasing, some late
            reg.insert(rank, t);
            all.push((rank, t));
            let newest = all.iter().map(|a| a.1).max().unwrap();
            for start in (0..newest).step_by(7) {
                let naive = all.iter().filter(|a| a.1 > start).map(|a| a.0 as usize).max().unwrap_or(0);
                // Six pairs may drop the oldest record; it only ever lowers old windows.
                let got = reg.rank_since(start);
                assert!(got <= naive);
                if start + 300 >= newest {
                    assert_eq!(got, naive, "start {start} newest {newest}");
                }
            }
        }
    }

    #[test]
    fn sketches_round_trip_sparsely() {
        let mut s = SlidingHll::new();
        let mut plain = Hll::new(SLIDING_P);
        let mut b = BucketHll::new(1000, 61);
        for i in 0..500 {
            s.insert(h(i), 10 + i as u32);
            plain.insert(h(i));
            b.insert(h(i), 5_000 + i as i64);
        }
        let (sb, hb, bb) = (
            postcard::to_allocvec(&s).unwrap(),
            postcard::to_allocvec(&plain).unwrap(),
            postcard::to_allocvec(&b).unwrap(),
        );
        assert!(sb.len() < 20_000 && hb.len() < 2_000 && bb.len() < 4_000, "{} {} {}", sb.len(), hb.len(), bb.len());
        let s2: SlidingHll = postcard::from_bytes(&sb).unwrap();
        let h2: Hll = postcard::from_bytes(&hb).unwrap();
        let b2: BucketHll = postcard::from_bytes(&bb).unwrap();
        assert_eq!(s2.estimate(&[0, 100, 400]), s.estimate(&[0, 100, 400]));
        assert_eq!(h2.estimate(), plain.estimate());
        assert_eq!(b2.estimate(4_999, 6_000), b.estimate(4_999, 6_000));
        // Full sketches stay dense (and exact).
        let mut full = Hll::new(10);
        for i in 0..100_000 {
            full.insert(h(i));
        }
        let f2: Hll = postcard::from_bytes(&postcard::to_allocvec(&full).unwrap()).unwrap();
        assert_eq!(f2.estimate(), full.estimate());
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

    /// An API node's union, fed diffs taken at random moments from four writers (one of them
    /// on a clock whose epoch is a day later), reads like the union of the writers' final
    /// sketches, for every window; bucket rings rotate meanwhile.
    #[test]
    fn a_union_fed_by_diffs_equals_the_union_of_the_final_sketches() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        const DAY: i64 = 86_400_000;
        let (mut parts, mut shadows) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            parts.push((SlidingHll::new(), Hll::new(SLIDING_P), BucketHll::new(2_000, 61)));
            shadows.push((SlidingHll::new(), Hll::new(SLIDING_P), BucketHll::new(2_000, 61)));
        }
        let mut union = (SlidingHll::new(), Hll::new(SLIDING_P), BucketHll::new(2_000, 61));
        let mut held: Vec<Vec<i64>> = vec![Vec::new(); 4];
        // Writer 3's sliding clock starts a day later than the others' (and the union's).
        let epoch = |k: usize| if k == 3 { DAY } else { 0 };
        for step in 0..40_000u64 {
            let k = rng.gen_range(0..4usize);
            let ts = 2 * DAY + step as i64 * 5; // 200 s of inserts
            let item = h(rng.gen_range(0..30_000u64));
            parts[k].0.insert(item, (ts - epoch(k)) as u32);
            parts[k].1.insert(item);
            parts[k].2.insert(item, ts);
            if rng.gen_range(0..500) == 0 || step == 39_999 {
                for j in 0..4 {
                    union.0.absorb(&parts[j].0.diff_into(&mut shadows[j].0), epoch(j)).unwrap();
                    union.1.absorb(&parts[j].1.diff_into(&mut shadows[j].1)).unwrap();
                    union.2.absorb(&parts[j].2.diff_into(&mut shadows[j].2), &mut held[j]).unwrap();
                }
            }
        }
        let now = 2 * DAY + 200_000;
        for len in [10_000i64, 60_000, 150_000, 400_000] {
            let start = |k: usize| (now - len - epoch(k)).max(0) as u32;
            // The reference: per register, the highest rank any writer saw in the window.
            let mut hist = vec![0u32; 64 - SLIDING_P as usize + 2];
            for i in 0..1usize << SLIDING_P {
                hist[(0..4).map(|k| parts[k].0.regs[i].rank_since(start(k))).max().unwrap()] += 1;
            }
            let from_parts = estimate_from_histogram(&hist, SLIDING_P).round() as u64;
            assert_eq!(union.0.estimate(&[start(0)]), vec![from_parts], "sliding, last {len} ms");
            // Rings: the registers of every writer's buckets inside the window.
            let (first, last, m) = ((now - len).div_euclid(2_000) + 1, now.div_euclid(2_000), 1usize << BUCKET_P);
            let mut merged = vec![0u8; m];
            for p in &parts {
                for (pos, &b) in p.2.held.iter().enumerate().filter(|(_, &b)| b >= first && b <= last) {
                    let _ = b;
                    for (x, y) in merged.iter_mut().zip(&p.2.regs[pos * m..(pos + 1) * m]) {
                        *x = (*x).max(*y);
                    }
                }
            }
            let mut hist = vec![0u32; 64 - BUCKET_P as usize + 2];
            merged.iter().for_each(|&r| hist[r as usize] += 1);
            let rings = estimate_from_histogram(&hist, BUCKET_P).round() as u64;
            assert_eq!(union.2.estimate(now - len, now), rings, "buckets, {len} ms");
        }
        let mut all = parts[0].1.clone();
        for p in &parts[1..] {
            all.merge(&p.1);
        }
        assert_eq!(union.1.estimate(), all.estimate());
        assert!(union.1.estimate() > 20_000, "the data fills the sketches: {}", union.1.estimate());
    }
}
