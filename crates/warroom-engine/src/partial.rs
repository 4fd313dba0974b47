//! Partials: a part of the state (an engine, typically one input partition's on an ingest
//! worker) as a reader elsewhere (an API node) needs it to merge, and that reader.
//!
//! A [`Partial`] is what an engine's shards hand its own publisher ([`ShardDelta`]: the pairs
//! changed since the previous one, their slots, the venues, channels and scalar summary), plus
//! what only a reader in another process needs: the names its indices refer to (added since
//! the previous partial; indices are local to the writing process) and the registers of its
//! distinct-count sketches that changed ([`SketchDiff`]), because distinct counts of several
//! partitions must be read from the union of their sketches (a buyer's pays land on several
//! partitions), never added up. Partials after the first carry what changed; a *full* partial
//! (`seq` 0) carries everything, for readers that start, and after a partition moved.
//!
//! The reader is an [`Engine`] that applies partials ([`Engine::absorb`]) into a mirror per
//! part, re-sums what changed and publishes through the same merge as its own shards
//! ([`Engine::publish_parts`]): one merge path for shards and nodes. Partials of a part are
//! applied in `seq` order within a `generation`; a gap waits for the next full partial; a
//! partial of an older generation (a former owner of a moved partition) is ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{lock, Engine};
use crate::intern::NONE;
use crate::race::RankChange;
use crate::shard::{Merged, ShardDelta, ShardSummary};
use crate::sketches::{Distinct, SketchDiff, Sketches};
use crate::snapshot::Snapshot;

/// Names a partial's indices refer to that the reader has not had yet: the writer's tables
/// from the given index on (all of them in a full partial).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNames {
    pub venues_from: u32,
    pub venues: Vec<String>,
    pub slots_from: u32,
    pub slots: Vec<String>,
    pub merchants_from: u32,
    pub merchants: Vec<String>,
    pub channels_from: u32,
    pub channels: Vec<String>,
    pub pairs_from: u32,
    /// (slot, merchant) in the writer's indices.
    pub pairs: Vec<(u32, u32)>,
    /// Slots whose venue became known: (slot, venue) in the writer's indices.
    pub slot_venues: Vec<(u32, u32)>,
}

/// One shard of the writing engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardPartial {
    pub delta: ShardDelta,
    pub sketches: SketchDiff,
}

/// A part's state for a reader in another process (see the module doc).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Partial {
    /// The part's name (`topic/partition` on an ingest worker).
    pub part: String,
    /// Grows each time the part's state is taken over (a partition moved to a new owner).
    pub generation: u64,
    /// 0: a full partial; then one more per partial of the generation.
    pub seq: u64,
    /// The writer's position in its input (the partition's next offset), for readers.
    pub position: i64,
    pub watermark: i64,
    pub last_event_at: i64,
    /// Lines its decoder rejected, by reason (absolute counts).
    pub rejects: Vec<(String, u64)>,
    pub slot_venue_conflicts: u64,
    pub names: NewNames,
    pub shards: Vec<ShardPartial>,
}

impl Partial {
    pub fn is_full(&self) -> bool {
        self.seq == 0
    }

    /// The bytes on the wire (postcard, like checkpoints).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a partial serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Partial, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("not a partial: {e}"))
    }
}

/// The writer's side of a part: what its reader has been sent so far.
#[derive(Debug)]
pub struct PartialWriter {
    part: String,
    generation: u64,
    next_seq: u64,
    sent: [usize; 5],
    slot_venues: Vec<u32>,
    shadows: Vec<Sketches>,
}

impl PartialWriter {
    pub fn new(part: impl Into<String>, generation: u64) -> Self {
        PartialWriter {
            part: part.into(),
            generation,
            next_seq: 0,
            sent: [0; 5],
            slot_venues: Vec::new(),
            shadows: Vec::new(),
        }
    }

    pub fn part(&self) -> &str {
        &self.part
    }

    /// The next partial is full (the previous one may not have reached the readers).
    pub fn restart(&mut self) {
        self.next_seq = 0;
    }
}

/// What [`Engine::absorb`] did with a partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    Applied,
    /// From an older generation than the reader holds (a former owner): ignored.
    Stale,
    /// Not the next of its generation: ignored until the part's next full partial.
    Gap,
}

/// A part as the reader holds it.
#[derive(Debug, Default)]
struct PartIn {
    generation: u64,
    /// The last partial applied (`None`: waiting for a full one).
    seq: Option<u64>,
    /// The part's shards' places in [`Parts`]' flat tables.
    subs: Vec<usize>,
    map: NameMap,
    watermark: i64,
    last_event_at: i64,
    position: i64,
    rejects: Vec<(String, u64)>,
    conflicts: u64,
}

/// A writer's name indices -> the reader's.
#[derive(Debug, Default)]
struct NameMap {
    venues: Vec<u32>,
    slots: Vec<u32>,
    merchants: Vec<u32>,
    channels: Vec<u32>,
    pairs: Vec<u32>,
}

impl NameMap {
    fn get(v: &[u32], i: u32) -> u32 {
        if i == NONE {
            NONE
        } else {
            v.get(i as usize).copied().unwrap_or(NONE)
        }
    }
}

/// Everything a reader of partials keeps (inside its [`Engine`]).
#[derive(Debug, Default)]
pub struct Parts {
    index: HashMap<String, usize>,
    parts: Vec<PartIn>,
    /// Per shard of every part, flat: its tables (in the reader's indices), summary, and its
    /// bucketed sketches' bucket numbers as last learnt.
    mirrors: Vec<Merged>,
    summaries: Vec<Option<(i64, ShardSummary)>>,
    held: Vec<Vec<[Vec<i64>; 3]>>,
    /// The union of every part's sketches.
    union: Option<Sketches>,
    sum: Merged,
    pending_pairs: Vec<u32>,
    pending_slots: Vec<u32>,
    /// Slot buyers of every part: (slot, user hash) -> newest pay. Kept as the maximum over
    /// parts: a part's former owner had the same partition's events, so what it sent is also
    /// in its new owner's state (the union is exact whoever sent a mark).
    buyers: HashMap<(u32, u64), i64>,
    /// Partials ignored, and names refused by the reader's limits.
    pub stale: u64,
    pub gaps: u64,
    pub refused_names: u64,
}

/// Where one part stands, for `/metrics` and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartStatus {
    pub part: String,
    pub generation: u64,
    pub seq: Option<u64>,
    pub position: i64,
    pub watermark: i64,
}

impl Engine {
    /// This engine's state as a partial for a reader elsewhere: what changed since the
    /// writer's previous partial, or everything when `full` (or first). `position` is the
    /// caller's position in its input, carried along. The engine must not also publish
    /// itself ([`Engine::publish`], [`Engine::publish_live`]): both take the shards' changes.
    pub fn partial(&self, w: &mut PartialWriter, position: i64, full: bool) -> Partial {
        let n = self.shards.len();
        let full = full || w.next_seq == 0 || w.shadows.len() != n;
        if full {
            w.next_seq = 0;
            w.sent = [0; 5];
            w.slot_venues.clear();
            w.shadows = (0..n).map(|_| Sketches::new(&self.cx)).collect();
        }
        let as_of = self.watermark();
        let shards = (0..n)
            .map(|s| {
                let mut shard = lock(&self.shards[s]);
                shard.track_buyers();
                if full {
                    shard.mark_all_dirty();
                }
                let delta = shard.delta_with(as_of, &self.cx, false);
                ShardPartial { delta, sketches: shard.sk.diff_into(&mut w.shadows[s]) }
            })
            .collect();
        // Names after the shards: every index the deltas hold is among them.
        let nm = &self.names;
        let mut names = NewNames {
            venues_from: w.sent[0] as u32,
            venues: nm.venues.names_from(w.sent[0]),
            slots_from: w.sent[1] as u32,
            slots: nm.slots.names.names_from(w.sent[1]),
            merchants_from: w.sent[2] as u32,
            merchants: nm.merchants.names_from(w.sent[2]),
            channels_from: w.sent[3] as u32,
            channels: nm.channels.names_from(w.sent[3]),
            pairs_from: w.sent[4] as u32,
            pairs: nm.pairs.pairs_from(w.sent[4]),
            slot_venues: Vec::new(),
        };
        w.sent[0] += names.venues.len();
        w.sent[1] += names.slots.len();
        w.sent[2] += names.merchants.len();
        w.sent[3] += names.channels.len();
        w.sent[4] += names.pairs.len();
        let venues = nm.slots.venues();
        for (i, &v) in venues.iter().enumerate() {
            if v != NONE && w.slot_venues.get(i) != Some(&v) {
                names.slot_venues.push((i as u32, v));
            }
        }
        w.slot_venues = venues;
        let p = Partial {
            part: w.part.clone(),
            generation: w.generation,
            seq: w.next_seq,
            position,
            watermark: as_of,
            last_event_at: self.last_event_at.load(Ordering::Relaxed),
            rejects: self.rejects.nonzero().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            slot_venue_conflicts: nm.slots.venue_conflicts.load(Ordering::Relaxed),
            names,
            shards,
        };
        w.next_seq += 1;
        p
    }

    /// Applies a partial of another engine (this one is a reader: an API node). Errors are
    /// partials that do not fit this engine's layout (another configuration's windows) or
    /// that are damaged; nothing of such a partial is applied.
    pub fn absorb(&self, p: &Partial) -> Result<Absorbed, String> {
        let nw = self.cx.windows.len();
        for s in &p.shards {
            let d = &s.delta;
            let n = d.pairs.len();
            if d.pair_cum.len() != n || d.pair_win.len() != n || d.pair_money.len() != n * nw {
                return Err(format!("partial of {}: pair tables of another shape", p.part));
            }
            if d.venue_money.len() != d.venues.len() * nw
                || d.summary.windows.len() != nw
                || d.summary.distinct.windows.len() != nw
                || d.summary.distinct.formula.len() != nw
                || d.summary.phase_gmv.len() != self.cx.phases.len()
            {
                return Err(format!("partial of {}: windows or phases of another configuration", p.part));
            }
        }
        let mut guard = lock(&self.parts);
        let st = &mut *guard;
        let k = match st.index.get(&p.part) {
            Some(&k) => k,
            None => {
                st.parts.push(PartIn { generation: p.generation, ..PartIn::default() });
                st.index.insert(p.part.clone(), st.parts.len() - 1);
                st.parts.len() - 1
            }
        };
        let part = &mut st.parts[k];
        if p.generation < part.generation {
            st.stale += 1;
            return Ok(Absorbed::Stale);
        }
        if p.generation > part.generation {
            part.generation = p.generation;
            part.seq = None;
        }
        if p.is_full() {
            part.seq = None;
            part.map = NameMap::default();
            while part.subs.len() < p.shards.len() {
                st.mirrors.push(Merged { windows: nw, ..Merged::default() });
                st.summaries.push(None);
                st.held.push(Vec::new());
                part.subs.push(st.mirrors.len() - 1);
            }
            for &i in &part.subs {
                // Everything the part's previous state held is re-summed without it.
                let m = std::mem::replace(&mut st.mirrors[i], Merged { windows: nw, ..Merged::default() });
                st.pending_pairs.extend(0..m.pair_cum.len() as u32);
                st.pending_slots.extend(0..m.slots.len() as u32);
                st.summaries[i] = None;
                st.held[i].clear();
            }
        } else if part.seq != Some(p.seq.wrapping_sub(1)) || part.subs.len() != p.shards.len() {
            part.seq = None;
            st.gaps += 1;
            return Ok(Absorbed::Gap);
        }
        st.refused_names += map_names(self, &mut part.map, &p.names)?;
        let map = &part.map;
        for (s, &i) in p.shards.iter().zip(&part.subs) {
            let d = translate(&s.delta, map, nw);
            st.mirrors[i].apply(&d, &mut st.pending_pairs, &mut st.pending_slots);
            for &(slot, user, latest) in &s.delta.buyers {
                let slot = NameMap::get(&map.slots, slot);
                if slot != NONE {
                    let t = st.buyers.entry((slot, user)).or_insert(latest);
                    *t = (*t).max(latest);
                }
            }
            st.summaries[i] = Some((d.as_of, d.summary));
            let union = st.union.get_or_insert_with(|| Sketches::new(&self.cx));
            union.absorb(&s.sketches, &mut st.held[i])?;
        }
        part.seq = Some(p.seq);
        part.watermark = p.watermark;
        part.last_event_at = p.last_event_at;
        part.position = p.position;
        part.rejects.clone_from(&p.rejects);
        part.conflicts = p.slot_venue_conflicts;
        Ok(Absorbed::Applied)
    }

    /// Where each part read so far stands.
    pub fn parts_status(&self) -> Vec<PartStatus> {
        let st = lock(&self.parts);
        let mut v: Vec<PartStatus> = st
            .index
            .iter()
            .map(|(name, &k)| {
                let p = &st.parts[k];
                PartStatus {
                    part: name.clone(),
                    generation: p.generation,
                    seq: p.seq,
                    position: p.position,
                    watermark: p.watermark,
                }
            })
            .collect();
        v.sort_by(|a, b| a.part.cmp(&b.part));
        v
    }

    /// Publishes the merge of the partials absorbed so far, through the same merge as an
    /// engine's own shards; distinct counts from the union of the parts' sketches.
    pub fn publish_parts(&self) -> (Arc<Snapshot>, Vec<RankChange>) {
        let mut guard = lock(&self.parts);
        let st = &mut *guard;
        let mut state = lock(&self.publish_state);
        let (mut pairs, mut slots) = (std::mem::take(&mut st.pending_pairs), std::mem::take(&mut st.pending_slots));
        pairs.sort_unstable();
        pairs.dedup();
        slots.sort_unstable();
        slots.dedup();
        st.sum.windows = self.cx.windows.len();
        st.sum.resum(&st.mirrors, &pairs, &slots);
        let as_of = st.summaries.iter().flatten().map(|&(a, _)| a).max().unwrap_or(i64::MIN);
        count_slot_buyers(st, as_of, self.cx.race_window);
        let last = st.parts.iter().map(|p| p.last_event_at).max().unwrap_or(0);
        self.last_event_at.store(last, Ordering::Relaxed);
        self.observe_watermark(as_of);
        let (mut snap, changes) = if as_of == i64::MIN {
            (self.empty_snapshot(), Vec::new())
        } else {
            let sums: Vec<ShardSummary> = st.summaries.iter().flatten().map(|(_, s)| s.clone()).collect();
            let distinct =
                st.union.as_ref().map_or(Distinct::zero(self.cx.windows.len()), |u| u.distinct(as_of, &self.cx));
            self.merge(as_of, &sums, &distinct, &st.sum, &mut state)
        };
        let mut rejections = BTreeMap::new();
        for (k, v) in st.parts.iter().flat_map(|p| &p.rejects) {
            *rejections.entry(k.clone()).or_insert(0) += v;
        }
        snap.totals.rejected = rejections.values().sum();
        snap.rejections = rejections;
        snap.counters.slot_venue_conflicts = st.parts.iter().map(|p| p.conflicts).sum();
        let snap = Arc::new(snap);
        self.published.store(snap.clone());
        self.publishes.fetch_add(1, Ordering::Relaxed);
        (snap, changes)
    }
}

/// Each slot's distinct buyers in the race window and the double race window, from the union
/// of the parts' marks: a buyer is in a window when its newest pay on the slot is (as a shard
/// counts them); marks older than both windows are forgotten. Cost: the marks held.
fn count_slot_buyers(st: &mut Parts, as_of: i64, race: i64) {
    if as_of == i64::MIN {
        return;
    }
    let (cut1, cut2) = (as_of - race, as_of - 2 * race);
    st.buyers.retain(|_, &mut latest| latest > cut2);
    for m in st.sum.slots.iter_mut() {
        m.buyers = [0; 2];
    }
    for (&(slot, _), &latest) in &st.buyers {
        if let Some(m) = st.sum.slots.get_mut(slot as usize) {
            m.buyers[1] += 1;
            if latest > cut1 {
                m.buyers[0] += 1;
            }
        }
    }
}

/// Interns a partial's new names into the reader's tables; the count refused by its limits
/// (their numbers are left out, as the writer's own limits would have).
fn map_names(e: &Engine, map: &mut NameMap, n: &NewNames) -> Result<u64, String> {
    let lens = [map.venues.len(), map.slots.len(), map.merchants.len(), map.channels.len(), map.pairs.len()];
    let froms = [n.venues_from, n.slots_from, n.merchants_from, n.channels_from, n.pairs_from];
    if lens.iter().zip(froms).any(|(&l, f)| l != f as usize) {
        return Err("a partial's names do not follow the ones before".into());
    }
    let nm = &e.names;
    let mut refused = 0;
    let mut ok = |i: Option<u32>| {
        refused += i.is_none() as u64;
        i.unwrap_or(NONE)
    };
    map.venues.extend(n.venues.iter().map(|s| nm.venues.get_or_insert(s)).map(&mut ok).collect::<Vec<_>>());
    map.slots.extend(n.slots.iter().map(|s| nm.slots.intern(s, NONE)).map(&mut ok).collect::<Vec<_>>());
    map.merchants.extend(n.merchants.iter().map(|s| nm.merchants.get_or_insert(s)).map(&mut ok).collect::<Vec<_>>());
    map.channels.extend(n.channels.iter().map(|s| nm.channels.get_or_insert(s)).map(&mut ok).collect::<Vec<_>>());
    for &(s, m) in &n.pairs {
        let (s, m) = (NameMap::get(&map.slots, s), NameMap::get(&map.merchants, m));
        let i = if s == NONE { None } else { nm.pairs.get_or_insert(s, m) };
        map.pairs.push(ok(i));
    }
    for &(s, v) in &n.slot_venues {
        let (s, v) = (NameMap::get(&map.slots, s), NameMap::get(&map.venues, v));
        if s != NONE && v != NONE {
            nm.slots.venue_of(s, v);
        }
    }
    Ok(refused)
}

/// A writer's delta in the reader's indices (entries whose names the reader refused are left
/// out).
fn translate(d: &ShardDelta, map: &NameMap, nw: usize) -> ShardDelta {
    let mut out = ShardDelta { as_of: d.as_of, summary: d.summary.clone(), ..ShardDelta::default() };
    for (k, &i) in d.pairs.iter().enumerate() {
        let to = NameMap::get(&map.pairs, i);
        if to == NONE {
            continue;
        }
        out.pairs.push(to);
        out.pair_cum.push(d.pair_cum[k]);
        out.pair_win.push(d.pair_win[k]);
        out.pair_money.extend_from_slice(&d.pair_money[k * nw..(k + 1) * nw]);
    }
    for &(slot, mut meta) in &d.slots {
        let to = NameMap::get(&map.slots, slot);
        if to != NONE {
            meta.merchant = NameMap::get(&map.merchants, meta.merchant);
            out.slots.push((to, meta));
        }
    }
    let top = |v: &[u32], n: usize| v.iter().take(n).filter(|&&i| i != NONE).max().map_or(0, |&i| i as usize + 1);
    let nv = top(&map.venues, d.venues.len());
    out.venues = vec![Default::default(); nv];
    out.venue_money = vec![Default::default(); nv * nw];
    for (k, v) in d.venues.iter().enumerate() {
        let to = NameMap::get(&map.venues, k as u32);
        if to != NONE {
            let to = to as usize;
            out.venues[to] = *v;
            out.venue_money[to * nw..(to + 1) * nw].copy_from_slice(&d.venue_money[k * nw..(k + 1) * nw]);
        }
    }
    out.channels = vec![Default::default(); top(&map.channels, d.channels.len())];
    for (k, c) in d.channels.iter().enumerate() {
        let to = NameMap::get(&map.channels, k as u32);
        if to != NONE {
            out.channels[to as usize] = *c;
        }
    }
    out
}
