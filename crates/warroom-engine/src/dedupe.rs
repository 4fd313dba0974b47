//! Bounded de-duplication by 128-bit fingerprints (xxh3-128 of the id: a false match among a
//! billion ids has probability ~1e-21, so counts stay exact in practice).
//!
//! Memory is bounded by event time: the sets are split into generations of `horizon / 7`
//! and a generation is recycled (cleared, capacity kept: no allocation in steady state) once
//! it is wholly older than `watermark - horizon`. The engine refuses events older than the
//! event-id horizon (`beyond_dedupe_horizon`), so nothing it accepts can slip past a forgotten
//! id. A re-sent `pay` for an order paid more than `order_horizon` earlier *is* counted again;
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

const GENERATIONS: usize = 9; // covers horizon/7 * 7 plus the partial ones at both ends

#[derive(Debug, Serialize, Deserialize)]
struct Gen {
    number: i64,
    set: FpSet,
}

/// Fingerprints split into event-time generations.
#[derive(Debug, Serialize, Deserialize)]
pub struct GenSet {
    width: i64,
    gens: Vec<Gen>,
}

impl GenSet {
    pub fn new(horizon_ms: i64) -> Self {
        let width = (horizon_ms / 7).max(1);
        GenSet { width, gens: (0..GENERATIONS).map(|_| Gen { number: i64::MIN, set: FpSet::default() }).collect() }
    }

    fn slot(&mut self, ts: i64) -> Option<&mut FpSet> {
        let n = ts.div_euclid(self.width);
        let g = &mut self.gens[n.rem_euclid(GENERATIONS as i64) as usize];
        if g.number < n {
            g.number = n;
            g.set.clear();
        } else if g.number > n {
            return None;
        }
        Some(&mut g.set)
    }

    /// Inserts `fp` in the generation of `ts`; false if it was there (a duplicate) or if that
    /// generation is no longer kept (the caller refuses such events beforehand).
    pub fn insert_at(&mut self, fp: u128, ts: i64) -> bool {
        self.slot(ts).is_some_and(|s| s.insert(fp))
    }

    /// True if `fp` is in any kept generation.
    pub fn contains_any(&self, fp: u128) -> bool {
        self.gens.iter().any(|g| g.number != i64::MIN && g.set.contains(&fp))
    }

    pub fn len(&self) -> usize {
        self.gens.iter().map(|g| g.set.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn old_generations_are_recycled() {
        let mut s = GenSet::new(7_000); // width 1000, 9 generations
        assert!(s.insert_at(1, 500));
        assert!(s.insert_at(2, 9_500)); // generation 9 reuses the slot of generation 0
        assert!(!s.contains_any(1));
        assert!(!s.insert_at(3, 500), "a recycled generation refuses its old times");
    }
}
