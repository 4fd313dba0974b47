//! Names to dense indices, shared by all shards so their per-slot arrays line up when merged.
//!
//! The hot path only reads (`DashMap::get`, a shard read lock for a few nanoseconds); a new
//! name takes the write path once. The name lists behind an `RwLock` are read only when a
//! snapshot is published, never by API readers (they get the published snapshot).
//!
//! Every table has a limit. A name past it is **refused**, not stored: the event naming it is
//! rejected with its reason (`too_many_slots`, ...) and nothing of it is kept, so a flood of
//! unique names (a buggy producer, a fuzzer) cannot grow the process. Lookups never insert;
//! [`Names::resolve`] checks every name of an event before it registers any of them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use warroom_model::Reason;

/// Index meaning "none" (no slot, no venue, no merchant, no channel).
pub const NONE: u32 = u32::MAX;

type Fast = hashbrown::DefaultHashBuilder;

/// Bytes a name costs beyond its text: its `Arc<str>` header and list entry, and the map's
/// key, value and control byte (estimated at the map's 7/8 load).
const PER_NAME: u64 = 16 + 16 + 16 + 8 + 2;

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// One table of names with a cardinality limit.
#[derive(Debug)]
pub struct Interner {
    map: DashMap<Arc<str>, u32, Fast>,
    names: RwLock<Vec<Arc<str>>>,
    /// Names registered (read without the lock, so a flood is refused without taking it).
    len: AtomicUsize,
    limit: usize,
    /// Bytes of the names and their table entries (memory accounting).
    bytes: AtomicU64,
}

impl Interner {
    pub fn new(limit: usize) -> Self {
        Interner {
            map: DashMap::with_hasher(Fast::default()),
            names: RwLock::new(Vec::new()),
            len: AtomicUsize::new(0),
            limit,
            bytes: AtomicU64::new(0),
        }
    }

    /// The index of a registered name.
    #[inline]
    pub fn get(&self, name: &str) -> Option<u32> {
        self.map.get(name).map(|i| *i)
    }

    /// Whether one more name fits (racy by design: [`Interner::get_or_insert`] decides).
    #[inline]
    pub fn has_room(&self) -> bool {
        self.len.load(Ordering::Relaxed) < self.limit
    }

    /// The index of `name`, registering it if new; `None` past the limit (nothing stored).
    pub fn get_or_insert(&self, name: &str) -> Option<u32> {
        if let Some(i) = self.get(name) {
            return Some(i);
        }
        self.insert_slow(name)
    }

    #[cold]
    fn insert_slow(&self, name: &str) -> Option<u32> {
        if !self.has_room() {
            return None;
        }
        let mut names = write(&self.names);
        if let Some(i) = self.get(name) {
            return Some(i); // registered meanwhile by another thread
        }
        if names.len() >= self.limit {
            return None;
        }
        let arc: Arc<str> = Arc::from(name);
        let i = names.len() as u32;
        names.push(arc.clone());
        self.map.insert(arc, i);
        self.len.store(names.len(), Ordering::Relaxed);
        self.bytes.fetch_add(name.len() as u64 + PER_NAME, Ordering::Relaxed);
        Some(i)
    }

    /// An interner holding `names` at their indices (restoring a checkpoint).
    pub fn from_names(limit: usize, names: &[String]) -> Self {
        let i = Interner::new(limit.max(names.len()));
        for n in names {
            i.insert_slow(n);
        }
        Interner { limit, ..i }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All names, index order.
    pub fn names(&self) -> Vec<Arc<str>> {
        read(&self.names).clone()
    }

    /// The names from index `from` on.
    pub fn names_from(&self, from: usize) -> Vec<String> {
        read(&self.names).get(from..).unwrap_or(&[]).iter().map(|n| n.to_string()).collect()
    }

    /// Bytes held for the names (texts, list and map entries).
    pub fn allocated_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// (slot, merchant) pairs: the money of a slot belongs to the merchant named on each event
/// (contract v1.1, 商品更换), so slot state is kept per pair and a slot's numbers are the sum
/// of its pairs. A slot usually has one pair; one that changed merchant has two or three.
#[derive(Debug)]
pub struct PairInterner {
    map: DashMap<(u32, u32), u32, Fast>,
    pairs: RwLock<Vec<(u32, u32)>>,
    len: AtomicUsize,
    limit: usize,
}

impl PairInterner {
    pub fn new(limit: usize) -> Self {
        PairInterner {
            map: DashMap::with_hasher(Fast::default()),
            pairs: RwLock::new(Vec::new()),
            len: AtomicUsize::new(0),
            limit,
        }
    }

    #[inline]
    pub fn get(&self, slot: u32, merchant: u32) -> Option<u32> {
        self.map.get(&(slot, merchant)).map(|i| *i)
    }

    #[inline]
    pub fn has_room(&self) -> bool {
        self.len.load(Ordering::Relaxed) < self.limit
    }

    pub fn get_or_insert(&self, slot: u32, merchant: u32) -> Option<u32> {
        if let Some(i) = self.get(slot, merchant) {
            return Some(i);
        }
        if !self.has_room() {
            return None;
        }
        let mut pairs = write(&self.pairs);
        if let Some(i) = self.get(slot, merchant) {
            return Some(i);
        }
        if pairs.len() >= self.limit {
            return None;
        }
        let i = pairs.len() as u32;
        pairs.push((slot, merchant));
        self.map.insert((slot, merchant), i);
        self.len.store(pairs.len(), Ordering::Relaxed);
        Some(i)
    }

    pub fn from_pairs(limit: usize, pairs: &[(u32, u32)]) -> Self {
        let p = PairInterner::new(limit.max(pairs.len()));
        for &(s, m) in pairs {
            p.get_or_insert(s, m);
        }
        PairInterner { limit, ..p }
    }

    /// All pairs, index order.
    pub fn pairs(&self) -> Vec<(u32, u32)> {
        read(&self.pairs).clone()
    }

    /// The pairs from index `from` on.
    pub fn pairs_from(&self, from: usize) -> Vec<(u32, u32)> {
        read(&self.pairs).get(from..).unwrap_or(&[]).to_vec()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn allocated_bytes(&self) -> u64 {
        (self.len() * (8 + 8 + 4 + 4 + 2)) as u64
    }
}

/// Slots additionally remember the venue they were first seen on: a slot is unique across
/// venues (EVENTS.md), so later events naming another venue for it are counted as conflicts
/// and attributed to the first venue.
#[derive(Debug)]
pub struct SlotInterner {
    pub names: Interner,
    venues: RwLock<Vec<u32>>,
    pub venue_conflicts: AtomicU64,
}

impl SlotInterner {
    pub fn new(limit: usize) -> Self {
        SlotInterner {
            names: Interner::new(limit),
            venues: RwLock::new(Vec::new()),
            venue_conflicts: AtomicU64::new(0),
        }
    }

    /// The slot's venue, recording `venue` as it if the slot has none yet.
    pub(crate) fn venue_of(&self, idx: u32, venue: u32) -> u32 {
        let known = read(&self.venues).get(idx as usize).copied();
        match known {
            Some(v) if v != NONE || venue == NONE => v,
            _ => {
                let mut vs = write(&self.venues);
                while vs.len() <= idx as usize {
                    vs.push(NONE);
                }
                if vs[idx as usize] == NONE {
                    vs[idx as usize] = venue;
                }
                vs[idx as usize]
            }
        }
    }

    /// Restores names, their venues and the conflict counter from a checkpoint.
    pub fn from_parts(limit: usize, names: &[String], venues: Vec<u32>, conflicts: u64) -> Self {
        SlotInterner {
            names: Interner::from_names(limit, names),
            venues: RwLock::new(venues),
            venue_conflicts: AtomicU64::new(conflicts),
        }
    }

    pub fn venues(&self) -> Vec<u32> {
        read(&self.venues).clone()
    }

    /// The index of slot `name`, registering it with `venue` if new (the first venue known
    /// for a slot stays its venue); `None` past the limit. For names that were accepted
    /// elsewhere (a partial's), so conflicts are not counted again.
    pub fn intern(&self, name: &str, venue: u32) -> Option<u32> {
        let idx = self.names.get_or_insert(name)?;
        self.venue_of(idx, venue);
        Some(idx)
    }
}

/// Every name table of the engine, with its limits.
#[derive(Debug)]
pub struct Names {
    pub venues: Interner,
    pub slots: SlotInterner,
    pub merchants: Interner,
    pub channels: Interner,
    pub pairs: PairInterner,
}

/// The indices of an event's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub venue: u32,
    pub slot: u32,
    pub merchant: u32,
    pub channel: u32,
    /// The (slot, merchant) pair; `NONE` without a slot.
    pub pair: u32,
}

impl Names {
    pub fn bytes(&self) -> u64 {
        self.venues.allocated_bytes()
            + self.slots.names.allocated_bytes()
            + self.merchants.allocated_bytes()
            + self.channels.allocated_bytes()
            + self.pairs.allocated_bytes()
            + (self.slots.venues().capacity() * 4) as u64
    }

    /// Indices of an event's names, registering new ones; the reason of the first table that
    /// is full. A merchant counts only on slot events (its money is per slot; nothing else of
    /// it is kept). Every name is checked before any is registered, so a refused event leaves
    /// nothing behind (two threads racing for the last place can each register one name, which
    /// still counts against the limit).
    pub fn resolve(
        &self,
        venue: Option<&str>,
        slot: Option<&str>,
        merchant: Option<&str>,
        channel: Option<&str>,
    ) -> Result<Resolved, Reason> {
        let merchant = if slot.is_some() { merchant } else { None };
        let known = |t: &Interner, n: Option<&str>, why: Reason| -> Result<(), Reason> {
            match n {
                Some(n) if t.get(n).is_none() && !t.has_room() => Err(why),
                _ => Ok(()),
            }
        };
        known(&self.venues, venue, Reason::TooManyVenues)?;
        known(&self.slots.names, slot, Reason::TooManySlots)?;
        known(&self.merchants, merchant, Reason::TooManyMerchants)?;
        known(&self.channels, channel, Reason::TooManyChannels)?;
        let intern = |t: &Interner, n: Option<&str>, why: Reason| -> Result<u32, Reason> {
            n.map_or(Ok(NONE), |n| t.get_or_insert(n).ok_or(why))
        };
        let v = intern(&self.venues, venue, Reason::TooManyVenues)?;
        let (slot, venue) = match slot {
            None => (NONE, v),
            Some(s) => {
                // A new pair is the last thing that can be refused: check it before the slot
                // and merchant are registered.
                let new_pair = match (self.slots.names.get(s), merchant.map(|m| self.merchants.get(m))) {
                    (None, _) | (Some(_), Some(None)) => true,
                    (Some(s), Some(Some(m))) => self.pairs.get(s, m).is_none(),
                    (Some(s), None) => self.pairs.get(s, NONE).is_none(),
                };
                if new_pair && !self.pairs.has_room() {
                    return Err(Reason::TooManySlotMerchants);
                }
                let idx = intern(&self.slots.names, Some(s), Reason::TooManySlots)?;
                let sv = self.slots.venue_of(idx, v);
                if v != NONE && sv != v {
                    self.slots.venue_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                (idx, sv)
            }
        };
        let merchant = intern(&self.merchants, merchant, Reason::TooManyMerchants)?;
        let channel = intern(&self.channels, channel, Reason::TooManyChannels)?;
        let pair = if slot == NONE {
            NONE
        } else {
            self.pairs.get_or_insert(slot, merchant).ok_or(Reason::TooManySlotMerchants)?
        };
        Ok(Resolved { venue, slot, merchant, channel, pair })
    }
}

/// A writer thread's own cache of resolved names: a hit costs one hash probe, no atomics.
/// Only names that were accepted are cached (refusals are not: a flood of refused names must
/// not grow it), so its size is bounded by the limits. Indices never change once given.
#[derive(Debug, Default)]
pub struct NameCache {
    venues: FewNames,
    /// slot -> (slot index, the slot's venue, the merchant last seen on it and their pair):
    /// a slot keeps its merchant for long stretches, so the pair comes with the slot's probe.
    slots: hashbrown::HashMap<Box<str>, (u32, u32, u32, u32)>,
    merchants: hashbrown::HashMap<Box<str>, u32>,
    channels: FewNames,
    /// (slot, merchant) -> pair
    pairs: hashbrown::HashMap<(u32, u32), u32>,
}

/// Names of which a night has a handful (venues, channels): the first few are found by a
/// linear scan, which beats hashing a short string; any beyond go to a map.
#[derive(Debug, Default)]
struct FewNames {
    few: Vec<(Box<str>, u32)>,
    more: hashbrown::HashMap<Box<str>, u32>,
}

impl FewNames {
    const FEW: usize = 8;

    #[inline]
    fn get(&self, n: &str) -> Option<&u32> {
        match self.few.iter().find(|(k, _)| **k == *n) {
            Some((_, v)) => Some(v),
            None if self.few.len() < Self::FEW => None,
            None => self.more.get(n),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.few.len() + self.more.len()
    }

    fn insert(&mut self, n: Box<str>, v: u32) {
        if let Some(e) = self.few.iter_mut().find(|(k, _)| *k == n) {
            e.1 = v;
        } else if self.few.len() < Self::FEW {
            self.few.push((n, v));
        } else {
            self.more.insert(n, v);
        }
    }
}

impl NameCache {
    /// [`Names::resolve`] through the cache.
    #[inline]
    pub fn resolve(
        &mut self,
        names: &Names,
        venue: Option<&str>,
        slot: Option<&str>,
        merchant: Option<&str>,
        channel: Option<&str>,
    ) -> Result<Resolved, Reason> {
        let merchant = if slot.is_some() { merchant } else { None };
        let v = match venue {
            None => Some(NONE),
            Some(n) => self.venues.get(n).copied(),
        };
        let s = match slot {
            None => Some((NONE, NONE, NONE, NONE)),
            Some(n) => self.slots.get(n).copied(),
        };
        let m = match merchant {
            None => Some(NONE),
            Some(n) => self.merchants.get(n).copied(),
        };
        let c = match channel {
            None => Some(NONE),
            Some(n) => self.channels.get(n).copied(),
        };
        if let (Some(v), Some((s, sv, last_m, last_pair)), Some(m), Some(c)) = (v, s, m, c) {
            let pair = if s == NONE || m == last_m {
                Some(last_pair)
            } else {
                let pair = self.pairs.get(&(s, m)).copied();
                if let (Some(p), Some(n)) = (pair, slot) {
                    if let Some(e) = self.slots.get_mut(n) {
                        (e.2, e.3) = (m, p);
                    }
                }
                pair
            };
            if let Some(pair) = pair {
                // The slot's venue is its first one; a different venue on the event is a
                // conflict, counted on every event that has one.
                let venue = if s == NONE { v } else { sv };
                if s != NONE && v != NONE && sv != v {
                    names.slots.venue_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                if s == NONE || sv != NONE || v == NONE {
                    return Ok(Resolved { venue, slot: s, merchant: m, channel: c, pair });
                }
            }
        }
        let r = names.resolve(venue, slot, merchant, channel)?;
        if let Some(n) = venue {
            self.venues.insert(n.into(), names.venues.get(n).unwrap_or(r.venue));
        }
        if let Some(n) = slot {
            self.slots.insert(n.into(), (r.slot, r.venue, r.merchant, r.pair));
            self.pairs.insert((r.slot, r.merchant), r.pair);
        }
        if let Some(n) = merchant {
            self.merchants.insert(n.into(), r.merchant);
        }
        if let Some(n) = channel {
            self.channels.insert(n.into(), r.channel);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(limit: usize) -> Names {
        Names {
            venues: Interner::new(limit),
            slots: SlotInterner::new(limit),
            merchants: Interner::new(limit),
            channels: Interner::new(limit),
            pairs: PairInterner::new(limit),
        }
    }

    #[test]
    fn past_the_limit_nothing_is_kept() {
        let n = names(2);
        let mut cache = NameCache::default();
        assert!(cache.resolve(&n, Some("v1"), Some("s1"), Some("m1"), Some("c1")).is_ok());
        assert!(cache.resolve(&n, Some("v2"), Some("s2"), Some("m1"), Some("c2")).is_ok());
        let bytes = n.bytes();
        for k in 0..1000 {
            let v = format!("v-new-{k}");
            assert_eq!(cache.resolve(&n, Some(&v), None, None, None), Err(Reason::TooManyVenues));
            let s = format!("s-new-{k}");
            assert_eq!(cache.resolve(&n, Some("v1"), Some(&s), None, None), Err(Reason::TooManySlots));
            let c = format!("c-new-{k}");
            assert_eq!(cache.resolve(&n, None, None, None, Some(&c)), Err(Reason::TooManyChannels));
        }
        assert_eq!(n.bytes(), bytes, "refused names leave nothing in the tables");
        assert_eq!(cache.venues.len() + cache.slots.len() + cache.channels.len(), 6, "nor in the cache");
        // A refused event registers none of its names, not even those that would still fit.
        let n = names(1);
        n.venues.get_or_insert("full");
        assert_eq!(n.resolve(Some("other"), Some("s"), Some("m"), Some("c")), Err(Reason::TooManyVenues));
        assert!(n.slots.names.is_empty() && n.merchants.is_empty() && n.channels.is_empty());
    }

    #[test]
    fn pairs_follow_the_merchant_named_on_each_event() {
        let n = names(10);
        let a = n.resolve(Some("v"), Some("s"), Some("m-4"), None).unwrap();
        let b = n.resolve(Some("v"), Some("s"), Some("m-8"), None).unwrap();
        let c = n.resolve(Some("v"), Some("s"), None, None).unwrap();
        assert_eq!((a.slot, b.slot, c.slot), (0, 0, 0));
        assert_eq!((a.pair, b.pair, c.pair), (0, 1, 2));
        assert_eq!(n.pairs.pairs(), vec![(0, 0), (0, 1), (0, NONE)]);
        // A merchant without a slot is not kept.
        assert_eq!(n.resolve(None, None, Some("m-99"), None).unwrap().merchant, NONE);
        assert_eq!(n.merchants.len(), 2);
    }

    #[test]
    fn a_slot_keeps_its_first_venue() {
        let n = names(10);
        let mut cache = NameCache::default();
        let a = cache.resolve(&n, Some("main"), Some("s"), None, None).unwrap();
        let b = cache.resolve(&n, Some("digital"), Some("s"), None, None).unwrap();
        assert_eq!(a.venue, b.venue);
        assert_eq!(n.slots.venue_conflicts.load(Ordering::Relaxed), 1);
    }
}
