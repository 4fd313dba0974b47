//! Keeping memory flat: buffers and tables that are reused must not stay at the size of the
//! largest burst they ever held, nor grow at a moment set by the clock rather than the load.
//!
//! Measured in the one-hour soak (BENCHMARKS.md §6): a reused table doubled 53 minutes in
//! (see [`keep_half_free`]), and after a 15 s stall the catch-up batches left the recycled
//! buffers at their burst size for good (see [`recycle`]).

use std::hash::{BuildHasher, Hash};

use hashbrown::HashMap;

/// Below this many bytes a reused buffer is never shrunk: not worth a reallocation.
pub const SHRINK_FLOOR_BYTES: usize = 1 << 20;

/// Clears a buffer for reuse. When it held less than a quarter of its capacity and that
/// capacity is above [`SHRINK_FLOOR_BYTES`], its capacity also goes back to twice what it held
/// (at least the floor). A burst (a catch-up after a stall, the midnight spike) therefore
/// leaves no lasting mark once batches are small again, while a buffer used at a steady size
/// is never reallocated.
pub fn recycle<T>(v: &mut Vec<T>) {
    let size = std::mem::size_of::<T>().max(1);
    let shrink = v.capacity() * size > SHRINK_FLOOR_BYTES && v.len() * 4 < v.capacity();
    let keep = (v.len() * 2).max(SHRINK_FLOOR_BYTES / size);
    v.clear();
    if shrink {
        v.shrink_to(keep);
    }
}

/// Keeps a table whose entries come and go all the time (the buyer marks) at most half full,
/// doubling it as soon as it reaches half.
///
/// hashbrown marks a removed entry's bucket as a tombstone whenever its probe group was ever
/// full; tombstones use up the room left, and when that runs out the table is rehashed in
/// place only if it is at most half full, else it doubles. A table holding between half and
/// 7/8 of its buckets under churn therefore doubles sooner or later, at a moment set by how
/// fast tombstones pile up: in the one-hour soak that was 53 and 55 minutes in, 2 MB each
/// (one per shard), long after the state had stopped growing. Doubling at half instead moves
/// that growth to where the live count grows (the warm-up), and a table at most half full is
/// always rehashed in place afterwards: its size then follows the peak count, never the clock.
pub fn keep_half_free<K: Eq + Hash, V, S: BuildHasher>(m: &mut HashMap<K, V, S>) {
    // Buckets from the allocation: data (buckets x entry, padded to 16) + control bytes
    // (buckets + 16); the division can only overshoot by the padding, well under a bucket.
    let entry = std::mem::size_of::<(K, V)>() + 1;
    let buckets = m.allocation_size().saturating_sub(16) / entry;
    let full = match buckets {
        0 => 0,
        b => {
            let b = 1usize << (usize::BITS - 1 - b.leading_zeros());
            if b < 8 {
                b - 1
            } else {
                b / 8 * 7
            }
        }
    };
    if m.len() >= full / 2 {
        // More than the room left (tombstones included), so hashbrown really resizes: to the
        // next power of two above len + full, which is twice the buckets.
        m.reserve(full.max(m.len()).max(8));
    }
}

/// A prefetch hint for the cache line holding `r`.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it reads no memory architecturally and
    // cannot fault. SSE is part of the x86_64 baseline, so the target feature is present.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Live keys in a FIFO: each step inserts a new key and removes the oldest, so the count
    /// stays at `live` (like the buyer marks at a steady rate). Returns the allocation after
    /// warm-up and at the end, and the highest fill seen.
    fn churn(live: usize, steps: usize, guard: bool) -> (usize, usize, f64) {
        let mut m: HashMap<u64, u64> = HashMap::new();
        let key = |i: usize| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut after_warmup = 0;
        let mut fill: f64 = 0.0;
        for i in 0..live + steps {
            if guard {
                keep_half_free(&mut m);
            }
            m.insert(key(i), i as u64);
            if i >= live {
                m.remove(&key(i - live));
            }
            if i == live {
                after_warmup = m.allocation_size();
            }
            if i > live {
                let buckets = m.allocation_size() / 17;
                fill = fill.max(m.len() as f64 / buckets as f64);
            }
        }
        (after_warmup, m.allocation_size(), fill)
    }

    #[test]
    fn a_churning_table_between_half_and_full_doubles_late_unless_kept_half_free() {
        // 18,000 live keys sit between half (14,336) and all (28,672) of a 32,768-bucket
        // table's room: the situation of each shard's buyer marks in the one-hour soak.
        let (warm, end, _) = churn(18_000, 600_000, false);
        assert!(end > warm, "without the guard, tombstones make the table double after warm-up ({warm} -> {end})");
        let (warm, end, fill) = churn(18_000, 600_000, true);
        assert_eq!(warm, end, "with the guard the table keeps its size after warm-up");
        assert!(fill <= 0.5 + 1e-9, "and is never more than half full ({fill})");
    }

    #[test]
    fn a_recycled_buffer_shrinks_after_a_burst_and_keeps_a_steady_size() {
        let floor = SHRINK_FLOOR_BYTES / 8;
        // Steady: the same size every time, above the floor: never reallocated.
        let mut v: Vec<u64> = Vec::new();
        v.extend(0..3 * floor as u64);
        let cap = v.capacity();
        for _ in 0..10 {
            recycle(&mut v);
            assert!(v.is_empty());
            v.extend(0..3 * floor as u64);
        }
        assert_eq!(v.capacity(), cap);
        // A burst of 40x, then small batches: back to twice a small batch (the floor here).
        recycle(&mut v);
        v.extend(0..40 * floor as u64);
        recycle(&mut v);
        assert!(v.capacity() >= 40 * floor, "a buffer the burst filled is kept: {}", v.capacity());
        v.extend(0..100);
        recycle(&mut v);
        assert!(v.capacity() < 2 * floor, "after the burst: {} (floor {floor})", v.capacity());
        // Small buffers keep their capacity.
        let mut s: Vec<u64> = Vec::with_capacity(floor / 2);
        s.push(1);
        recycle(&mut s);
        assert_eq!((s.len(), s.capacity() >= floor / 2), (0, true));
    }
}
