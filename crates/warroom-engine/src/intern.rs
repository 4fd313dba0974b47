//! Names to dense indices, shared by all shards so their per-slot arrays line up when merged.
//!
//! The hot path only reads (`DashMap::get`, a shard read lock for a few nanoseconds); a new
//! name takes the write path once. The name lists behind an `RwLock` are read only when a
//! snapshot is published, never by API readers (they get the published snapshot).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

/// Index meaning "none" (no slot, no venue, no merchant, or over the cardinality limit).
pub const NONE: u32 = u32::MAX;

type Fast = hashbrown::DefaultHashBuilder;

#[derive(Debug)]
pub struct Interner {
    map: DashMap<Box<str>, u32, Fast>,
    names: RwLock<Vec<Arc<str>>>,
    limit: usize,
    /// Names refused because the limit was reached (events still count elsewhere).
    pub overflow: AtomicU64,
}

impl Interner {
    pub fn new(limit: usize) -> Self {
        Interner {
            map: DashMap::with_hasher(Fast::default()),
            names: RwLock::new(Vec::new()),
            limit,
            overflow: AtomicU64::new(0),
        }
    }

    /// The index of `name`, registering it if new; `NONE` past the limit.
    pub fn get_or_insert(&self, name: &str) -> u32 {
        if let Some(i) = self.map.get(name) {
            return *i;
        }
        self.insert_slow(name)
    }

    #[cold]
    fn insert_slow(&self, name: &str) -> u32 {
        // The entry API serialises concurrent first sightings of the same name.
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        *self.map.entry(name.into()).or_insert_with(|| {
            if names.len() >= self.limit {
                self.overflow.fetch_add(1, Ordering::Relaxed);
                return NONE;
            }
            names.push(Arc::from(name));
            (names.len() - 1) as u32
        })
    }

    /// An interner holding `names` at their indices (restoring a checkpoint).
    pub fn from_names(limit: usize, names: &[String], overflow: u64) -> Self {
        let i = Interner::new(limit);
        {
            let mut list = i.names.write().unwrap_or_else(|p| p.into_inner());
            for (k, n) in names.iter().enumerate() {
                i.map.insert(n.as_str().into(), k as u32);
                list.push(Arc::from(n.as_str()));
            }
        }
        i.overflow.store(overflow, Ordering::Relaxed);
        i
    }

    pub fn len(&self) -> usize {
        self.names.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All names, index order.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
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

    pub fn get_or_insert(&self, slot: &str, venue: u32) -> (u32, u32) {
        let idx = self.names.get_or_insert(slot);
        if idx == NONE {
            return (NONE, venue);
        }
        let known = self.venues.read().unwrap_or_else(|p| p.into_inner()).get(idx as usize).copied();
        let v = match known {
            Some(v) if v != NONE || venue == NONE => v,
            _ => {
                let mut vs = self.venues.write().unwrap_or_else(|p| p.into_inner());
                while vs.len() <= idx as usize {
                    vs.push(NONE);
                }
                if vs[idx as usize] == NONE {
                    vs[idx as usize] = venue;
                }
                vs[idx as usize]
            }
        };
        if venue != NONE && v != venue {
            self.venue_conflicts.fetch_add(1, Ordering::Relaxed);
        }
        (idx, v)
    }

    /// Restores names, their venues and the counters from a checkpoint.
    pub fn from_parts(limit: usize, names: &[String], venues: Vec<u32>, overflow: u64, conflicts: u64) -> Self {
        SlotInterner {
            names: Interner::from_names(limit, names, overflow),
            venues: RwLock::new(venues),
            venue_conflicts: AtomicU64::new(conflicts),
        }
    }

    pub fn venues(&self) -> Vec<u32> {
        self.venues.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A writer thread's own cache of interned names: a hit costs one hash probe, no atomics.
/// Indices never change once given, so entries never go stale.
#[derive(Debug, Default)]
pub struct NameCache {
    venues: hashbrown::HashMap<Box<str>, u32>,
    slots: hashbrown::HashMap<Box<str>, (u32, u32)>,
    merchants: hashbrown::HashMap<Box<str>, u32>,
}

impl NameCache {
    pub fn venue(&mut self, names: &Interner, v: &str) -> u32 {
        if let Some(&i) = self.venues.get(v) {
            return i;
        }
        let i = names.get_or_insert(v);
        self.venues.insert(v.into(), i);
        i
    }

    pub fn merchant(&mut self, names: &Interner, m: &str) -> u32 {
        if let Some(&i) = self.merchants.get(m) {
            return i;
        }
        let i = names.get_or_insert(m);
        self.merchants.insert(m.into(), i);
        i
    }

    /// (slot, the slot's venue); a venue conflict is counted by the interner on every event.
    pub fn slot(&mut self, slots: &SlotInterner, s: &str, venue: u32) -> (u32, u32) {
        if let Some(&(i, v)) = self.slots.get(s) {
            if v != NONE || venue == NONE {
                if venue != NONE && v != venue {
                    slots.venue_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                return (i, v);
            }
        }
        let r = slots.get_or_insert(s, venue);
        self.slots.insert(s.into(), r);
        r
    }
}
