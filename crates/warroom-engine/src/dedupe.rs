//! Bounded de-duplication by 128-bit fingerprints (xxh3-128 of the id: a false match among a
//! billion ids has probability ~1e-21, so counts stay exact in practice).
//!
//! Memory is bounded by event time: the sets are split into generations of `horizon / 7`
//! and a generation is dropped (its set cleared and reused) once every lane of the shard is
//! more than `horizon` past it. The engine refuses events older than their own lane's
//! watermark minus the event-id horizon (`beyond_dedupe_horizon`), so nothing it accepts can
//! slip past a forgotten id. A re-sent `pay` for an order paid more than `order_horizon` earlier *is* counted again;
//! the horizon must cover the promotion (default 24 h).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of 128-bit fingerprints: open addressing with linear probing over a power-of-two
/// array of the fingerprints themselves (0 marks a free slot; the fingerprint 0 is kept
/// aside). The fingerprints are uniform hashes, so their low bits are the home slot.
///
/// Why not a `HashSet`: on a dense night the sets hold millions of ids, far beyond the caches,
/// and each insert waits on a cache miss. Here the caller knows the slot an event will touch
/// before it gets there and prefetches it ([`FpTable::prefetch`]) a few events ahead; a
/// general map does not expose that.
#[derive(Debug, Default)]
pub struct FpTable {
    slots: Vec<u128>,
    /// Fingerprints held, 0 included.
    len: usize,
    zero: bool,
}

impl FpTable {
    #[inline(always)]
    fn home(&self, k: u128) -> usize {
        (k as u64 as usize) & (self.slots.len() - 1)
    }

    /// Where `fp` (non-zero) is: `Ok(slot)`, or `Err(the free slot that ends its run)`. The
    /// table must have slots.
    #[inline(always)]
    fn probe(&self, fp: u128) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(fp);
        loop {
            match self.slots[i] {
                s if s == fp => return Ok(i),
                0 => return Err(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Inserts `fp`; false if it was there.
    #[inline]
    pub fn insert(&mut self, fp: u128) -> bool {
        if fp == 0 {
            let new = !self.zero;
            self.zero = true;
            self.len += usize::from(new);
            return new;
        }
        // At most 3/4 full: linear probing stays within a cache line or two.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        match self.probe(fp) {
            Ok(_) => false,
            Err(free) => {
                self.slots[free] = fp;
                self.len += 1;
                true
            }
        }
    }

    #[inline]
    pub fn contains(&self, fp: u128) -> bool {
        if fp == 0 || self.slots.is_empty() {
            return fp == 0 && self.zero;
        }
        self.probe(fp).is_ok()
    }

    /// Asks the CPU to bring `fp`'s home slot into the cache (a hint: no effect on the set).
    #[inline(always)]
    pub fn prefetch(&self, fp: u128) {
        if !self.slots.is_empty() {
            crate::mem::prefetch(&self.slots[self.home(fp)]);
        }
    }

    #[cold]
    #[allow(clippy::slow_vector_initialization)] // deliberately: see below
    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(64);
        // Zeroed by writing, not `vec![0; cap]`: calloc's fresh pages would be mapped to the
        // shared zero page on the first probe (a read) and copied on the first insert, each
        // copy a TLB shootdown across the writer threads (measured: 0.7 s of system time on
        // the dense night).
        let mut slots = Vec::with_capacity(cap);
        slots.resize(cap, 0);
        let old = std::mem::replace(&mut self.slots, slots);
        self.len = usize::from(self.zero);
        for k in old.into_iter().filter(|&k| k != 0) {
            self.insert(k);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Empties the set, keeping its memory.
    pub fn clear(&mut self) {
        self.slots.fill(0);
        self.len = 0;
        self.zero = false;
    }

    pub fn allocation_size(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u128>()
    }

    fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.zero.then_some(0).into_iter().chain(self.slots.iter().copied().filter(|&k| k != 0))
    }
}

/// A sequence of fingerprints, as checkpoints have always held them.
impl Serialize for FpTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len))?;
        for fp in self.iter() {
            seq.serialize_element(&fp)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for FpTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fps = Vec::<u128>::deserialize(d)?;
        let mut t = FpTable::default();
        for fp in fps {
            t.insert(fp);
        }
        Ok(t)
    }
}

/// Fingerprints split into event-time generations of `horizon / 7`, kept until
/// [`GenSet::evict_before`] is told that no lane can still need them. A generation is a set of
/// its own, so a lagging lane (a partition consumed behind the others) still finds the
/// generations of its own times; memory grows only while lanes are that far apart.
#[derive(Debug, Serialize, Deserialize)]
pub struct GenSet {
    width: i64,
    gens: std::collections::BTreeMap<i64, FpTable>,
    /// Emptied generations, kept for reuse (capacity only).
    #[serde(skip, default)]
    spare: Vec<FpTable>,
    /// Ids per evicted generation, smoothed: a set far larger (a traffic spike's generation)
    /// is freed rather than kept as a spare at the spike's size.
    #[serde(skip, default)]
    typical: usize,
    /// Ids of times before this may have been forgotten (the start of the oldest generation
    /// kept after an eviction; `i64::MIN` before any).
    frontier: i64,
}

impl GenSet {
    pub fn new(horizon_ms: i64) -> Self {
        GenSet {
            width: (horizon_ms / 7).max(1),
            gens: Default::default(),
            spare: Vec::new(),
            typical: 0,
            frontier: i64::MIN,
        }
    }

    /// That a restored set has the generation width of `horizon_ms` (see `checkpoint::check`).
    pub(crate) fn check(&self, horizon_ms: i64) -> Result<(), String> {
        let want = (horizon_ms / 7).max(1);
        if self.width != want {
            return Err(format!("id set: generations of {} ms, not {want}", self.width));
        }
        Ok(())
    }

    /// Inserts `fp` in the generation of `ts`; false if it was there (a duplicate).
    pub fn insert_at(&mut self, fp: u128, ts: i64) -> bool {
        let n = ts.div_euclid(self.width);
        let spare = &mut self.spare;
        self.gens.entry(n).or_insert_with(|| spare.pop().unwrap_or_default()).insert(fp)
    }

    /// Prefetches where [`GenSet::insert_at`] of `fp` at `ts` will look.
    #[inline]
    pub fn prefetch_at(&self, fp: u128, ts: i64) {
        if let Some(g) = self.gens.get(&ts.div_euclid(self.width)) {
            g.prefetch(fp);
        }
    }

    /// Prefetches where [`GenSet::contains_any`] of `fp` will look.
    #[inline]
    pub fn prefetch_any(&self, fp: u128) {
        self.gens.values().for_each(|g| g.prefetch(fp));
    }

    /// True if `fp` is in any kept generation.
    pub fn contains_any(&self, fp: u128) -> bool {
        self.gens.values().any(|g| g.contains(fp))
    }

    /// Times before this may have lost their ids to eviction: an event older than it cannot
    /// be checked for a re-delivery.
    #[inline]
    pub fn frontier(&self) -> i64 {
        self.frontier
    }

    /// Drops the generations wholly before `ts` (their sets are cleared and reused).
    pub fn evict_before(&mut self, ts: i64) {
        let keep_from = ts.div_euclid(self.width);
        self.frontier = self.frontier.max(keep_from.saturating_mul(self.width));
        while let Some(entry) = self.gens.first_entry() {
            if *entry.key() >= keep_from {
                break;
            }
            let mut set = entry.remove();
            self.typical = (self.typical * 3 + set.len()) / 4;
            set.clear();
            if self.spare.len() < 4 && set.capacity() <= 4 * self.typical + 1024 {
                self.spare.push(set);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.gens.values().map(|g| g.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the sets hold allocated (kept and spare), for memory accounting.
    pub fn allocated_bytes(&self) -> u64 {
        self.gens.values().chain(&self.spare).map(|g| g.allocation_size() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table against a `HashSet` over inserts, lookups, growth, clearing and a serde
    /// round trip (the checkpoint's format: a sequence of fingerprints, as before).
    #[test]
    fn the_table_is_a_set() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(200), |(ops in proptest::collection::vec((0u8..4, 0u128..300), 0..3000))| {
            let mut t = FpTable::default();
            let mut naive = std::collections::HashSet::new();
            for (op, v) in ops {
                // Small values collide in the low bits (long probe runs); 0 is a legal id.
                let fp = if op == 3 { v << 64 } else { v };
                match op {
                    0 | 3 => prop_assert_eq!(t.insert(fp), naive.insert(fp)),
                    1 => prop_assert_eq!(t.contains(fp), naive.contains(&fp)),
                    _ if v == 7 => {
                        t.clear();
                        naive.clear();
                    }
                    _ => t.prefetch(fp),
                }
                prop_assert_eq!(t.len(), naive.len());
            }
            let bytes = postcard::to_allocvec(&t).unwrap();
            let back: FpTable = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.len(), naive.len());
            prop_assert!(naive.iter().all(|&fp| back.contains(fp)));
            let old: std::collections::HashSet<u128> = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(old, naive, "the same bytes a HashSet wrote and reads");
        });
    }

    #[test]
    fn duplicates_within_a_generation_are_found() {
        let mut s = GenSet::new(7_000);
        assert!(s.insert_at(1, 100));
        assert!(!s.insert_at(1, 100));
        assert!(s.insert_at(2, 100));
        assert!(s.contains_any(2));
        assert!(!s.contains_any(3));
    }

    #[test]
    fn generations_live_until_evicted() {
        let mut s = GenSet::new(7_000); // width 1000
        assert!(s.insert_at(1, 500));
        assert!(s.insert_at(2, 9_500));
        assert!(s.contains_any(1), "kept until evicted, however far apart");
        s.evict_before(1_000);
        assert!(!s.contains_any(1) && s.contains_any(2));
        assert_eq!(s.frontier(), 1_000, "ids before the evicted generation's end may be gone");
        assert!(s.insert_at(1, 500), "an evicted generation starts afresh");
    }

    #[test]
    fn a_spike_generation_is_not_kept_as_a_spare() {
        let mut s = GenSet::new(7_000); // generations of 1 s
        let mut id = 0u128;
        let mut run = |s: &mut GenSet, from: i64, gens: i64, per_gen: u128| {
            for g in from..from + gens {
                for _ in 0..per_gen {
                    id += 1;
                    s.insert_at(id.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835), g * 1000);
                }
                s.evict_before((g - 7) * 1000);
            }
            s.allocated_bytes()
        };
        let before = run(&mut s, 0, 30, 100);
        let spike = run(&mut s, 30, 1, 100_000);
        let after = run(&mut s, 31, 30, 100);
        assert!(spike > 100 * before, "{before} -> {spike}");
        assert!(after <= 2 * before, "the spike's set is freed once evicted: {before} -> {spike} -> {after}");
    }
}
