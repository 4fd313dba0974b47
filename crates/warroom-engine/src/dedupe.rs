//! Bounded de-duplication by 128-bit fingerprints (xxh3-128 of the id: a false match among a
//! billion ids has probability ~1e-21, so counts stay exact in practice).
//!
//! Memory is bounded by event time: the sets are split into generations of `horizon / 7`
//! and a generation is dropped (its set cleared and reused) once every lane of the shard is
//! more than `horizon` past it. The engine refuses events older than their own lane's
//! watermark minus the event-id horizon (`beyond_dedupe_horizon`), so nothing it accepts can
//! slip past a forgotten id. A re-sent `pay` for an order paid more than `order_horizon` earlier *is* counted again;
//! the horizon must cover the promotion (default 24 h).

use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashSet;
use serde::{Deserialize, Serialize};

/// The fingerprints are already uniform hashes: use their low bits as the hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64 ^ (v >> 64) as u64;
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub type FpSet = HashSet<u128, BuildHasherDefault<IdHasher>>;

/// Fingerprints split into event-time generations of `horizon / 7`, kept until
/// [`GenSet::evict_before`] is told that no lane can still need them. A generation is a set of
/// its own, so a lagging lane (a partition consumed behind the others) still finds the
/// generations of its own times; memory grows only while lanes are that far apart.
#[derive(Debug, Serialize, Deserialize)]
pub struct GenSet {
    width: i64,
    gens: std::collections::BTreeMap<i64, FpSet>,
    /// Emptied generations, kept for reuse (capacity only).
    #[serde(skip, default)]
    spare: Vec<FpSet>,
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

    /// True if `fp` is in any kept generation.
    pub fn contains_any(&self, fp: u128) -> bool {
        self.gens.values().any(|g| g.contains(&fp))
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
