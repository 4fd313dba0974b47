//! The engine: shards, routing, publishing snapshots.
//!
//! Writers (any number of threads) call [`Engine::prepare`] (hashing and name interning, no
//! shard involved) and then [`Engine::apply`] or [`Engine::apply_routed`]. Each shard is a
//! `Mutex<Shard>` taken by its writers: uncontended when one thread writes a shard at a time
//! (the pipelines do).
//!
//! The live publisher never takes a shard's lock ([`Engine::publish_live`]). It raises a
//! request (an atomic counter); each shard's writer answers at the end of its next batch (or
//! when idle, [`Engine::service`]) with an immutable [`ShardDelta`] of what changed since its
//! last one, through a bounded single-producer channel. The publisher folds the deltas into its
//! own copy of each shard's tables and re-sums only what changed. A shard whose writer has not
//! answered within the wait (nothing is writing it) is answered for by the publisher with a
//! `try_lock`, which never waits either. Readers never touch a shard: the snapshot is swapped
//! into an `ArcSwap`; [`Engine::snapshot`] is a wait-free load of the newest one. Rule changes
//! swap an `ArcSwap` too and apply from the next publish.
//!
//! Refusals: an event the engine refuses after decoding (a name past a cardinality limit, a
//! time it cannot check for re-deliveries) is counted by reason *and* handed back to the
//! caller ([`Refusal`]), which keeps it for inspection like any decoder rejection
//! (`--rejects-out`, the dead-letter topic).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use warroom_model::{Event, Reason, RejectCounts, Rejection};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::config::Config;
use crate::intern::{Interner, NameCache, Names, PairInterner, SlotInterner, NONE};
use crate::race::{self, RaceInputs, RankChange, Rule, RuleSpec};
use crate::shard::{
    Clock, Ctx, Merged, MoneyAgg, Outcome, PairCum, PairWin, Prepared, Shard, ShardCounters, ShardDelta, ShardSummary,
};
use crate::sketches::Distinct;
use crate::snapshot::{
    decompose, ChannelStats, Counters, Funnel, MoneyWindow, PairRace, Race, RankEntry, SlotMerchantStats, SlotStats,
    Snapshot, Totals, VenueStats, WindowStats,
};

pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Rules in force: venue -> rule, plus the default.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub default_rule: (String, Rule),
    pub venues: BTreeMap<String, (String, Rule)>,
}

/// A rule change, for the audit trail.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleChange {
    pub venue: String,
    pub old_rule: String,
    pub new_rule: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid rule for venue `{venue}`: {reason}")]
    InvalidRule { venue: String, reason: String },
    #[error("no rule named `{0}`; define it under [race.rules] or send its weights")]
    UnknownRule(String),
}

/// An event the engine refused while applying it: its position in the input (`seq`: line
/// number or offset), its lane (partition) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub seq: u64,
    pub lane: u16,
    pub reason: Reason,
}

#[derive(Debug, Default)]
pub(crate) struct PublishState {
    /// Venue -> slots (indices) in the last published order.
    previous: BTreeMap<String, Vec<u32>>,
    /// Every interned slot, sorted by name.
    by_name: Vec<u32>,
    /// Per slot, scratch for one venue's ranking: its place among the venue's members and its
    /// previous rank.
    member_at: Vec<u32>,
    prev_rank: Vec<u32>,
    /// Each shard's tables as of its last delta, and their sum.
    mirrors: Vec<Merged>,
    sum: Merged,
    /// Each shard's last delta's watermark and summary.
    summaries: Vec<Option<(i64, ShardSummary)>>,
    /// Pairs and slots folded in since the sum was last brought up to date.
    pending_pairs: Vec<u32>,
    pending_slots: Vec<u32>,
}

/// Grows a scratch table to `n` entries (zeros).
fn grow_to(v: &mut Vec<u32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0);
    }
}

/// Where a shard's writer leaves its deltas for the publisher.
#[derive(Debug)]
struct Mailbox {
    tx: crossbeam_channel::Sender<ShardDelta>,
    rx: crossbeam_channel::Receiver<ShardDelta>,
    /// The newest request the shard has answered (written by its writer only).
    answered: AtomicU64,
}

impl Mailbox {
    fn new() -> Mailbox {
        let (tx, rx) = crossbeam_channel::bounded(MAILBOX_DELTAS);
        Mailbox { tx, rx, answered: AtomicU64::new(0) }
    }
}

/// Deltas a shard may leave unread: a writer that finds its mailbox full keeps its changes for
/// the next request (values are absolute: nothing is lost by waiting).
const MAILBOX_DELTAS: usize = 4;

/// What a publish cost, for `/metrics`: where the time of a tick goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishCost {
    /// Waiting for the shards' writers to answer.
    pub wait: std::time::Duration,
    /// Folding the deltas in and re-summing what changed.
    pub fold: std::time::Duration,
    /// Ranking and building the snapshot.
    pub build: std::time::Duration,
    /// Pairs the deltas carried.
    pub changed_pairs: u64,
    /// Shards the publisher answered for (idle writers).
    pub answered_for: u64,
}

#[derive(Debug)]
pub struct Engine {
    pub(crate) cfg: Config,
    pub(crate) cx: Ctx,
    pub(crate) shards: Box<[Mutex<Shard>]>,
    pub(crate) names: Names,
    pub(crate) rejects: RejectCounts,
    pub(crate) watermark: AtomicI64,
    pub(crate) last_event_at: AtomicI64,
    rules: ArcSwap<RuleSet>,
    named_rules: BTreeMap<String, RuleSpec>,
    pub(crate) published: ArcSwap<Snapshot>,
    pub(crate) publish_state: Mutex<PublishState>,
    pub(crate) publishes: AtomicU64,
    /// One per shard.
    mail: Box<[Mailbox]>,
    /// The publisher's newest request for deltas.
    requested: AtomicU64,
    pub(crate) last_cost: Mutex<PublishCost>,
    /// What this engine has read of other engines' partials (an API node; see [`crate::partial`]).
    pub(crate) parts: Mutex<crate::partial::Parts>,
}

/// The shard context of `cfg`.
fn base_ctx(cfg: &Config) -> Ctx {
    let plan = cfg.plan.as_ref();
    Ctx {
        dedupe_horizon: cfg.engine.dedupe_horizon.as_millis() as i64,
        order_horizon: cfg.engine.order_horizon.as_millis() as i64,
        windows: cfg.engine.windows.iter().map(|d| d.as_millis() as i64).collect(),
        race_window: cfg.race.window.as_millis() as i64,
        phases: plan.map(|p| p.bounds()).unwrap_or_default(),
        plan_range: plan.map(|p| (p.start_ms(), p.end_ms())),
        history: cfg.engine.keep_history,
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard leaves it consistent enough to keep serving: every update
    // is a handful of additions. Keep going rather than poison the whole monitor; a source
    // whose applier panicked refuses to checkpoint (its state may be torn) and the process
    // exits, restarting from the last checkpoint.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The field a cardinality refusal is about.
fn field_of(r: Reason) -> Option<&'static str> {
    match r {
        Reason::TooManyVenues => Some("venue"),
        Reason::TooManySlots | Reason::TooManySlotMerchants => Some("slot"),
        Reason::TooManyMerchants => Some("merchant_id"),
        Reason::TooManyChannels => Some("channel"),
        _ => None,
    }
}

fn empty_names(cfg: &Config) -> Names {
    let e = &cfg.engine;
    Names {
        venues: Interner::new(e.max_venues),
        slots: SlotInterner::new(e.max_slots),
        merchants: Interner::new(e.max_merchants),
        channels: Interner::new(e.max_channels),
        pairs: PairInterner::new(e.max_slot_merchants),
    }
}

impl Engine {
    /// Builds an engine; `cfg` must have passed [`Config::validate`].
    pub fn new(cfg: Config) -> Self {
        let n = if cfg.engine.shards == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.engine.shards
        };
        Self::with_shards(cfg, n)
    }

    fn with_shards(cfg: Config, n: usize) -> Self {
        let resolve = |name: &str| -> (String, Rule) {
            if name == "gmv" {
                ("gmv".into(), Rule::Gmv)
            } else {
                let spec = cfg.race.rules.get(name).cloned().unwrap_or_else(|| panic!("rule `{name}` validated"));
                (name.into(), Rule::Composite(spec))
            }
        };
        let rules = RuleSet {
            default_rule: resolve(&cfg.race.default_rule),
            venues: cfg.race.venues.iter().map(|(v, r)| (v.clone(), resolve(r))).collect(),
        };
        let cx = base_ctx(&cfg);
        Engine {
            shards: (0..n.max(1)).map(|_| Mutex::new(Shard::new(&cx))).collect(),
            cx,
            names: empty_names(&cfg),
            rejects: RejectCounts::default(),
            watermark: AtomicI64::new(i64::MIN),
            last_event_at: AtomicI64::new(0),
            rules: ArcSwap::from_pointee(rules),
            named_rules: cfg.race.rules.clone(),
            published: ArcSwap::from_pointee(Snapshot::default()),
            publish_state: Mutex::new(PublishState::default()),
            publishes: AtomicU64::new(0),
            mail: (0..n.max(1)).map(|_| Mailbox::new()).collect(),
            requested: AtomicU64::new(0),
            last_cost: Mutex::new(PublishCost::default()),
            parts: Mutex::new(crate::partial::Parts::default()),
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The clock of a batch applied now: for a live source the watermarks stop at the wall
    /// clock (see [`Clock::cap`]); otherwise they follow the events.
    fn clock(&self) -> Clock {
        let now = wall_ms();
        Clock { now, cap: if self.cfg.live { now } else { i64::MAX } }
    }

    /// Reduces a decoded event to its fixed-size form. Any thread; no shard lock. A name
    /// past its table's limit refuses the event (counted by reason).
    pub fn prepare(&self, ev: &Event<'_>, seq: u64) -> Result<Prepared, Rejection> {
        self.prepare_cached(ev, seq, &mut NameCache::default())
    }

    /// [`Engine::prepare`] with the calling thread's own name cache (the hot path).
    pub fn prepare_cached(&self, ev: &Event<'_>, seq: u64, cache: &mut NameCache) -> Result<Prepared, Rejection> {
        let names = cache.resolve(
            &self.names,
            ev.venue.as_deref(),
            ev.slot.as_deref(),
            ev.merchant_id.as_deref(),
            ev.channel.as_deref(),
        );
        let r = match names {
            Ok(r) => r,
            Err(reason) => {
                self.rejects.add(reason, 1);
                return Err(Rejection::new(reason, field_of(reason)));
            }
        };
        Ok(Prepared {
            id: xxh3_128(ev.event_id.as_bytes()),
            order: ev.order_id.as_deref().map_or(0, |o| xxh3_128(o.as_bytes())),
            user: xxh3_64(ev.user_id.as_bytes()),
            ts: ev.ts,
            seq,
            amount: ev.amount_cents.unwrap_or(0),
            coupon: ev.coupon_cents.unwrap_or(0),
            slot: r.slot,
            venue: r.venue,
            merchant: r.merchant,
            pair: r.pair,
            channel: r.channel,
            kind: ev.kind,
            lane: 0,
        })
    }

    /// Decodes one message and prepares it, counting a rejection.
    pub fn decode_prepare(
        &self,
        bytes: &[u8],
        seq: u64,
        limits: &warroom_model::Limits,
        cache: &mut NameCache,
    ) -> Result<Prepared, Rejection> {
        match warroom_model::decode(bytes, limits) {
            Ok(ev) => self.prepare_cached(&ev, seq, cache),
            Err(r) => {
                self.rejects.add(r.reason, 1);
                Err(r)
            }
        }
    }

    /// Counts a rejection made outside the engine (e.g. a Kafka payload that never decoded).
    pub fn record_rejection(&self, reason: Reason) {
        self.rejects.add(reason, 1);
    }

    /// The shard that owns this event's user.
    #[inline]
    pub fn shard_of(&self, p: &Prepared) -> usize {
        // The sketches use the user hash's bits for register and rank; route by a bijective
        // remix (splitmix64's finaliser) so that a shard's users still fill every register.
        let mut z = p.user.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (((z >> 32) * self.shards.len() as u64) >> 32) as usize
    }

    /// Applies a batch from any thread; events of one shard keep their batch order. Refusals
    /// are counted only (tests and benches; sources use [`Engine::apply_routed`]).
    pub fn apply(&self, batch: &[Prepared]) {
        let mut refused = Vec::new();
        for s in 0..self.shards.len() {
            self.apply_filtered(s, batch, |e| self.shard_of(e) == s, 0, &mut refused);
        }
    }

    /// Applies `batch`, all of whose events the caller has routed to shard `s` with
    /// [`Engine::shard_of`] (the pipeline does so while decoding). Events the shard refuses
    /// are counted and appended to `refused`.
    /// `seq_base` is added to each event's `seq` (a replay's decoders number lines from the
    /// start of their part, before the parts' line counts are known).
    pub fn apply_routed(&self, s: usize, batch: &[Prepared], seq_base: u64, refused: &mut Vec<Refusal>) {
        debug_assert!(batch.iter().all(|e| self.shard_of(e) == s), "events routed to the wrong shard");
        self.apply_filtered(s, batch, |_| true, seq_base, refused);
    }

    /// Applies the events of `batch` that `mine` selects to shard `s`.
    fn apply_filtered(
        &self,
        s: usize,
        batch: &[Prepared],
        mine: impl Fn(&Prepared) -> bool,
        seq_base: u64,
        refused: &mut Vec<Refusal>,
    ) {
        /// How many events ahead the writer prefetches the id sets' slots (a miss to memory
        /// takes about as long as applying a couple of events).
        const AHEAD: usize = 4;
        if !batch.iter().any(&mine) {
            if self.asked(s) {
                self.answer(s, &mut lock(&self.shards[s]));
            }
            return;
        }
        let clock = self.clock();
        let mut shard = lock(&self.shards[s]);
        let mut newest = i64::MIN;
        for (k, ev) in batch.iter().enumerate() {
            if let Some(next) = batch.get(k + AHEAD).filter(|e| mine(e)) {
                shard.prefetch(next);
            }
            if !mine(ev) {
                continue;
            }
            let ev = &Prepared { seq: ev.seq + seq_base, ..*ev };
            match shard.apply(ev, &self.cx, clock) {
                Outcome::Accepted => newest = newest.max(ev.ts),
                Outcome::Duplicate => {}
                Outcome::BeyondHorizon => {
                    self.rejects.add(Reason::BeyondDedupeHorizon, 1);
                    refused.push(Refusal { seq: ev.seq, lane: ev.lane, reason: Reason::BeyondDedupeHorizon });
                }
            }
        }
        if newest != i64::MIN {
            self.watermark.fetch_max(newest.min(clock.cap), Ordering::Relaxed);
            self.last_event_at.fetch_max(clock.now, Ordering::Relaxed);
        }
        if self.asked(s) {
            self.answer(s, &mut shard);
        }
    }

    /// Whether the publisher waits for a delta from shard `s` (one atomic load).
    #[inline]
    fn asked(&self, s: usize) -> bool {
        self.mail[s].answered.load(Ordering::Relaxed) < self.requested.load(Ordering::Acquire)
    }

    /// Shard `s`'s writer (holding its lock) answers the publisher's newest request with a
    /// delta; with a full mailbox it keeps its changes for the next request.
    fn answer(&self, s: usize, shard: &mut Shard) {
        let want = self.requested.load(Ordering::Acquire);
        let mb = &self.mail[s];
        if mb.answered.load(Ordering::Relaxed) >= want || mb.tx.is_full() {
            return;
        }
        let d = shard.delta(self.watermark(), &self.cx);
        // This writer is the mailbox's only sender and found room: the send cannot fail.
        let _ = mb.tx.try_send(d);
        mb.answered.store(want, Ordering::Release);
    }

    /// Answers a pending publish request for every shard: for a source's thread (a writer)
    /// with nothing to apply, so that the publisher is not kept waiting by idle shards.
    pub fn service(&self) {
        for s in 0..self.shards.len() {
            if self.asked(s) {
                self.answer(s, &mut lock(&self.shards[s]));
            }
        }
    }

    /// Declares lanes (partitions just assigned) open before their first events; see
    /// [`crate::shard::Shard::open_lane`].
    pub fn open_lanes(&self, lanes: &[u16]) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            for &l in lanes {
                shard.open_lane(l);
            }
        }
    }

    /// Declares lanes idle (partitions caught up and silent for a while: they hold back no
    /// eviction of old ids) or active again; see [`crate::shard::Shard::set_idle`].
    pub fn set_idle_lanes(&self, lanes: &[(u16, bool)]) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            for &(l, idle) in lanes {
                shard.set_idle(l, idle);
            }
        }
    }

    /// Stops holding old de-dup ids for `lane` (a partition this member gave up).
    pub fn retire_lane(&self, lane: u16) {
        for s in self.shards.iter() {
            lock(s).retire_lane(lane);
        }
    }

    /// Moves the watermark to at least `ts`: the newest event time seen elsewhere (other
    /// members of a consumer group), so that this member's windows end where the group's do and
    /// its snapshot can be summed with theirs.
    pub fn observe_watermark(&self, ts: i64) {
        self.watermark.fetch_max(ts, Ordering::Relaxed);
    }

    /// Newest accepted event time (i64::MIN before any).
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }

    /// The newest published snapshot: a wait-free load, never blocks writers.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// How many snapshots have been published.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }

    /// Swaps the rule of one venue. `rule` is a named rule, or `spec` a new composite rule
    /// (validated). Takes effect from the next publish.
    pub fn set_rule(&self, venue: &str, name: &str, spec: Option<RuleSpec>) -> Result<RuleChange, EngineError> {
        let new = self.resolve_rule(venue, name, spec)?;
        let mut old_name = String::new();
        self.rules.rcu(|cur| {
            let mut next = (**cur).clone();
            old_name = next.venues.get(venue).unwrap_or(&next.default_rule).0.clone();
            next.venues.insert(venue.to_string(), new.clone());
            next
        });
        Ok(RuleChange { venue: venue.into(), old_rule: old_name, new_rule: name.into() })
    }

    /// Whether [`Engine::set_rule`] would take this rule (nothing changes).
    pub fn check_rule(&self, venue: &str, name: &str, spec: Option<RuleSpec>) -> Result<(), EngineError> {
        self.resolve_rule(venue, name, spec).map(|_| ())
    }

    fn resolve_rule(&self, venue: &str, name: &str, spec: Option<RuleSpec>) -> Result<(String, Rule), EngineError> {
        Ok(match spec {
            Some(spec) => {
                spec.validate().map_err(|reason| EngineError::InvalidRule { venue: venue.into(), reason })?;
                (name.to_string(), Rule::Composite(spec))
            }
            None if name == "gmv" => ("gmv".to_string(), Rule::Gmv),
            None => match self.named_rules.get(name) {
                Some(spec) => (name.to_string(), Rule::Composite(spec.clone())),
                None => return Err(EngineError::UnknownRule(name.into())),
            },
        })
    }

    /// Name of the rule in force for `venue`.
    pub fn rule_of(&self, venue: &str) -> String {
        let rules = self.rules.load();
        rules.venues.get(venue).unwrap_or(&rules.default_rule).0.clone()
    }

    fn shape(&self) -> crate::checkpoint::Shape {
        crate::checkpoint::Shape {
            windows: self.cx.windows.clone(),
            race_window: self.cx.race_window,
            dedupe_horizon: self.cx.dedupe_horizon,
            order_horizon: self.cx.order_horizon,
        }
    }

    /// The whole state as checkpoint bytes, with the caller's position (`extra`, e.g. source
    /// offsets) stored alongside. All shards are locked for the copy: call it when no events
    /// are in flight, so that the state and the position describe the same instant.
    pub fn checkpoint(&self, extra: &[u8]) -> Vec<u8> {
        let guards: Vec<_> = self.shards.iter().map(|s| lock(s)).collect();
        self.encode_checkpoint(&guards, extra)
    }

    /// The checkpoint bytes and the history batch of every shard, taken under the same locks:
    /// the checkpoint's shards start their next batch. Store the batch first, then persist the
    /// checkpoint (see [`crate::history`]).
    pub fn checkpoint_with_history(&self, extra: &[u8]) -> (Vec<u8>, crate::history::HistoryBatch) {
        let mut guards: Vec<_> = self.shards.iter().map(|s| lock(s)).collect();
        let batch = self.take_batch(&mut guards);
        (self.encode_checkpoint(&guards, extra), batch)
    }

    /// The history batch of every shard, for a source without checkpoints (a file replay, the
    /// simulator): what was counted since the previous one.
    pub fn take_history(&self) -> crate::history::HistoryBatch {
        let mut guards: Vec<_> = self.shards.iter().map(|s| lock(s)).collect();
        self.take_batch(&mut guards)
    }

    fn take_batch(&self, guards: &mut [MutexGuard<'_, Shard>]) -> crate::history::HistoryBatch {
        let parts: Vec<crate::history::PartBatch> =
            guards.iter_mut().enumerate().map(|(i, g)| g.hist.take(i as u32)).collect();
        if parts.iter().all(|p| p.minutes.is_empty()) {
            // Only the batch numbers: no names to carry.
            return crate::history::HistoryBatch { parts, names: Default::default() };
        }
        let n = &self.names;
        let names = |i: &Interner| i.names().iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let names = crate::history::HistoryNames {
            venues: names(&n.venues),
            slots: names(&n.slots.names),
            merchants: names(&n.merchants),
            channels: names(&n.channels),
            pairs: n.pairs.pairs(),
            slot_venues: n.slots.venues(),
        };
        crate::history::HistoryBatch { parts, names }
    }

    fn encode_checkpoint(&self, guards: &[MutexGuard<'_, Shard>], extra: &[u8]) -> Vec<u8> {
        let names = |i: &Interner| i.names().iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rules = self.rules.load();
        let saved = rules
            .venues
            .iter()
            .map(|(venue, (name, rule))| crate::checkpoint::SavedRule {
                venue: venue.clone(),
                name: name.clone(),
                spec: match rule {
                    Rule::Gmv => None,
                    Rule::Composite(s) => Some(s.clone()),
                },
            })
            .collect();
        let n = &self.names;
        let image = crate::checkpoint::Image {
            shape: self.shape(),
            watermark: self.watermark(),
            last_event_at: self.last_event_at.load(Ordering::Relaxed),
            venues: names(&n.venues),
            slots: names(&n.slots.names),
            slot_venues: n.slots.venues(),
            merchants: names(&n.merchants),
            channels: names(&n.channels),
            pairs: n.pairs.pairs(),
            slot_venue_conflicts: n.slots.venue_conflicts.load(Ordering::Relaxed),
            rejects: self.rejects.nonzero().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            rules: saved,
            shards: guards.iter().map(|g| &**g).collect(),
            extra,
        };
        crate::checkpoint::encode(&image)
    }

    /// An engine restored from checkpoint bytes (read from `path`, named in errors), and the
    /// caller's position stored with it. `cfg` must give the same windows and horizons (the
    /// layout of the state). The state keeps the checkpoint's shard count, whatever
    /// `engine.shards` and the machine's CPUs say, so a monitor moves to any machine; the plan
    /// may differ (phase and plan GMV are recomputed from the per-minute series); rules
    /// changed at runtime are restored over `cfg`'s.
    pub fn restore(
        cfg: Config,
        bytes: &[u8],
        path: &std::path::Path,
    ) -> Result<(Engine, Vec<u8>), crate::checkpoint::CheckpointError> {
        let image = crate::checkpoint::decode(bytes, path)?;
        if image.shards.is_empty() {
            return Err(crate::checkpoint::CheckpointError::Invalid("no shards".into()));
        }
        let fresh = Engine::with_shards(cfg, image.shards.len().min(crate::checkpoint::MAX_SHARDS));
        let shape = fresh.shape();
        if image.shape != shape {
            return Err(crate::checkpoint::CheckpointError::Shape(image.shape.differences(&shape)));
        }
        image.check(&fresh.cx)?;
        if fresh.cfg.engine.shards != 0 && fresh.cfg.engine.shards != image.shards.len() {
            tracing::warn!(
                configured = fresh.cfg.engine.shards,
                saved = image.shards.len(),
                "engine.shards differs from the checkpoint; keeping the checkpoint's shard count"
            );
        }
        let e = &fresh.cfg.engine;
        let names = Names {
            venues: Interner::from_names(e.max_venues, &image.venues),
            slots: SlotInterner::from_parts(e.max_slots, &image.slots, image.slot_venues, image.slot_venue_conflicts),
            merchants: Interner::from_names(e.max_merchants, &image.merchants),
            channels: Interner::from_names(e.max_channels, &image.channels),
            pairs: PairInterner::from_pairs(e.max_slot_merchants, &image.pairs),
        };
        let shards: Box<[Mutex<Shard>]> = image
            .shards
            .into_iter()
            .map(|mut s| {
                s.replan(&fresh.cx);
                Mutex::new(s)
            })
            .collect();
        let engine = Engine {
            shards,
            names,
            watermark: AtomicI64::new(image.watermark),
            last_event_at: AtomicI64::new(image.last_event_at),
            ..fresh
        };
        for (name, n) in image.rejects {
            if let Some(r) = Reason::from_name(&name) {
                engine.rejects.add(r, n);
            }
        }
        for r in image.rules {
            // Validated when first set; a rule that no longer validates keeps the configured one.
            let _ = engine.set_rule(&r.venue, &r.name, r.spec);
        }
        Ok((engine, image.extra))
    }

    /// Publishes with every shard's numbers as of now: the caller answers for each shard
    /// itself, under its lock (a final publish, tests, benches: nothing else is writing, or
    /// the writers may wait). Exact: every shard stands at one watermark.
    pub fn publish(&self) -> (Arc<Snapshot>, Vec<RankChange>) {
        let mut state = lock(&self.publish_state);
        let t = std::time::Instant::now();
        self.requested.fetch_add(1, Ordering::AcqRel);
        for s in 0..self.shards.len() {
            let mut shard = lock(&self.shards[s]);
            // Room for the answer: what an earlier request left unread is folded in first.
            self.fold(s, &mut state);
            self.answer(s, &mut shard);
        }
        let wait = t.elapsed();
        self.finish(&mut state, wait, 0)
    }

    /// The live publisher's publish: asks the shards' writers for their deltas, waits for
    /// them up to `wait` (a batch's time), and answers for the shards whose writers did not
    /// (idle: nothing writes them) only if their lock is free. Never waits on a shard's lock;
    /// a writer waits on the publisher only if it starts a batch on a shard while the publisher
    /// answers for it.
    pub fn publish_live(&self, wait: std::time::Duration) -> (Arc<Snapshot>, Vec<RankChange>) {
        let mut state = lock(&self.publish_state);
        let t = std::time::Instant::now();
        let want = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let answered = |s: usize| self.mail[s].answered.load(Ordering::Acquire) >= want;
        while !(0..self.shards.len()).all(answered) && t.elapsed() < wait {
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        let mut answered_for = 0;
        for s in (0..self.shards.len()).filter(|&s| !answered(s)) {
            if let Ok(mut shard) = self.shards[s].try_lock() {
                self.fold(s, &mut state);
                self.answer(s, &mut shard);
                answered_for += 1;
            }
        }
        let wait = t.elapsed();
        self.finish(&mut state, wait, answered_for)
    }

    /// What the last publish cost.
    pub fn last_publish_cost(&self) -> PublishCost {
        *lock(&self.last_cost)
    }

    /// Folds shard `s`'s unread deltas into its mirror, noting the pairs and slots changed.
    fn fold(&self, s: usize, state: &mut PublishState) {
        let n = self.shards.len();
        let nw = self.cx.windows.len();
        if state.mirrors.len() != n {
            state.mirrors = vec![Merged { windows: nw, ..Merged::default() }; n];
            state.summaries = vec![None; n];
            state.sum = Merged { windows: nw, ..Merged::default() };
        }
        while let Ok(d) = self.mail[s].rx.try_recv() {
            state.mirrors[s].apply(&d, &mut state.pending_pairs, &mut state.pending_slots);
            state.summaries[s] = Some((d.as_of, d.summary));
        }
    }

    /// Folds every shard's deltas in, re-sums what changed, builds and stores the snapshot.
    fn finish(
        &self,
        state: &mut PublishState,
        wait: std::time::Duration,
        answered_for: u64,
    ) -> (Arc<Snapshot>, Vec<RankChange>) {
        let t = std::time::Instant::now();
        for s in 0..self.shards.len() {
            self.fold(s, state);
        }
        let (mut pairs, mut slots) =
            (std::mem::take(&mut state.pending_pairs), std::mem::take(&mut state.pending_slots));
        pairs.sort_unstable();
        pairs.dedup();
        slots.sort_unstable();
        slots.dedup();
        state.sum.resum(&state.mirrors, &pairs, &slots);
        let fold = t.elapsed();
        let t = std::time::Instant::now();
        let as_of = self.watermark();
        let sums: Vec<ShardSummary> = state.summaries.iter().flatten().map(|(_, s)| s.clone()).collect();
        let snap_as_of = state.summaries.iter().flatten().map(|&(a, _)| a).max().unwrap_or(i64::MIN);
        let (snap, changes) = if as_of == i64::MIN || snap_as_of == i64::MIN {
            (self.empty_snapshot(), Vec::new())
        } else {
            let sum = std::mem::take(&mut state.sum);
            let distinct = Distinct::sum(&sums);
            let r = self.merge(snap_as_of, &sums, &distinct, &sum, state);
            state.sum = sum;
            r
        };
        let snap = Arc::new(snap);
        self.published.store(snap.clone());
        self.publishes.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_cost) =
            PublishCost { wait, fold, build: t.elapsed(), changed_pairs: pairs.len() as u64, answered_for };
        (snap, changes)
    }

    pub(crate) fn empty_snapshot(&self) -> Snapshot {
        let mut s =
            Snapshot { published_at_ms: wall_ms(), rehearsal: self.cfg.rehearsal.clone(), ..Snapshot::default() };
        s.totals.rejected = self.rejects.total();
        s.rejections = self.rejects.nonzero().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        s.windows = self
            .cfg
            .engine
            .windows
            .iter()
            .map(|d| WindowStats { length_ms: d.as_millis() as i64, ..Default::default() })
            .collect();
        s.counters.names_bytes = self.names.bytes();
        s.counters.state_bytes = s.counters.names_bytes;
        s
    }

    /// The snapshot of merged parts: `sums` their scalar summaries, `distinct` their distinct
    /// counts, `m` their tables summed. Shards of one engine and partials of many (an API node,
    /// [`crate::partial`]) are published through it alike.
    pub(crate) fn merge(
        &self,
        as_of: i64,
        sums: &[ShardSummary],
        distinct: &Distinct,
        m: &Merged,
        state: &mut PublishState,
    ) -> (Snapshot, Vec<RankChange>) {
        let cx = &self.cx;
        let mut c = ShardCounters::default();
        for s in sums {
            c.add(&s.c);
        }
        let dt = distinct.total;
        let totals = Totals {
            gmv_cents: c.gmv,
            paid_orders: c.paid_orders,
            refund_cents: c.refund_cents,
            uv: dt[0],
            ipv_uv: dt[1],
            buyers: dt[2],
            accepted: c.accepted,
            rejected: self.rejects.total(),
            duplicates: c.duplicates,
            impressions: c.impressions,
            clicks: c.clicks,
            favorites: c.favorites,
            carts: c.carts,
            orders_placed: c.orders_placed,
            order_cents: c.order_cents,
            refunds: c.refunds,
            coupon_cents: c.coupon_cents,
        };
        let mut windows = Vec::new();
        let mut decomposition = Vec::new();
        for (k, &len) in cx.windows.iter().enumerate() {
            let (mut cur, mut prev) = (MoneyAgg::default(), MoneyAgg::default());
            for s in sums {
                cur.merge(&s.windows[k].0);
                prev.merge(&s.windows[k].1);
            }
            let d = distinct.windows[k];
            windows.push(WindowStats {
                length_ms: len,
                gmv_cents: cur.gmv,
                paid_orders: cur.orders,
                uv: d[0],
                ipv_uv: d[1],
                buyers: d[2],
            });
            let f = distinct.formula[k];
            decomposition.push(decompose(len, (cur.gmv, f.0[0], f.0[1]), (prev.gmv, f.1[0], f.1[1])));
        }

        // Names.
        let slot_names = self.names.slots.names.names();
        let slot_venues = self.names.slots.venues();
        let venue_names = self.names.venues.names();
        let merchant_names = self.names.merchants.names();
        let channel_names = self.names.channels.names();
        let pairs = self.names.pairs.pairs();
        let name_of = |names: &[Arc<str>], i: u32| -> String {
            if i == NONE {
                String::new()
            } else {
                names.get(i as usize).map(|s| s.to_string()).unwrap_or_default()
            }
        };
        let nw = cx.windows.len();
        let money_windows = |per: &[MoneyAgg]| -> Vec<MoneyWindow> {
            cx.windows
                .iter()
                .enumerate()
                .map(|(k, &len)| {
                    let m = per.get(k).copied().unwrap_or_default();
                    MoneyWindow { length_ms: len, gmv_cents: m.gmv, paid_orders: m.orders }
                })
                .collect()
        };
        let pair_money = |p: usize| m.pair_money.get(p * nw..(p + 1) * nw).unwrap_or(&[]);

        // Slots as the sums of their pairs.
        let n_pairs = pairs.len().min(m.pair_cum.len());
        let n_slots = slot_names.len();
        let meta = |i: usize| m.slots.get(i).copied().unwrap_or_default();
        let mut slot_cum = vec![PairCum::default(); n_slots];
        let mut slot_win = vec![[PairWin::default(); 2]; n_slots];
        let mut slot_money = vec![MoneyAgg::default(); n_slots * nw];
        let mut slot_pairs: Vec<u8> = vec![0; n_slots];
        for (p, &(slot, _)) in pairs.iter().enumerate().take(n_pairs) {
            let i = slot as usize;
            if i >= n_slots || !m.pair_cum[p].seen {
                continue;
            }
            slot_cum[i].merge(&m.pair_cum[p]);
            slot_win[i][0].merge(&m.pair_win[p][0]);
            slot_win[i][1].merge(&m.pair_win[p][1]);
            for (a, b) in slot_money[i * nw..(i + 1) * nw].iter_mut().zip(pair_money(p)) {
                a.merge(b);
            }
            slot_pairs[i] = slot_pairs[i].saturating_add(1);
        }
        // Slots by name: the order of the names interned so far, kept from publish to publish
        // (a name's index never changes); only new names are sorted in.
        if state.by_name.len() < n_slots {
            state.by_name.extend(state.by_name.len() as u32..n_slots as u32);
            state.by_name.sort_by(|&a, &b| slot_names[a as usize].cmp(&slot_names[b as usize]));
        }
        let slots: Vec<SlotStats> = state
            .by_name
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| i < n_slots && slot_cum[i].seen)
            .map(|i| SlotStats {
                windows: money_windows(&slot_money[i * nw..(i + 1) * nw]),
                slot: slot_names[i].to_string(),
                venue: name_of(&venue_names, slot_venues.get(i).copied().unwrap_or(NONE)),
                merchant_id: name_of(&merchant_names, meta(i).merchant),
                gmv_cents: slot_cum[i].gmv,
                paid_orders: slot_cum[i].orders,
                impressions: slot_cum[i].impressions,
                clicks: slot_cum[i].clicks,
            })
            .collect();
        let mut slot_merchants: Vec<SlotMerchantStats> = (0..n_pairs)
            .filter(|&p| m.pair_cum[p].seen && slot_pairs.get(pairs[p].0 as usize).is_some_and(|&n| n > 1))
            .map(|p| {
                let (w, ww) = (m.pair_win[p][0], m.pair_win[p][1]);
                let c = &m.pair_cum[p];
                SlotMerchantStats {
                    slot: slot_names[pairs[p].0 as usize].to_string(),
                    merchant_id: name_of(&merchant_names, pairs[p].1),
                    gmv_cents: c.gmv,
                    paid_orders: c.orders,
                    impressions: c.impressions,
                    clicks: c.clicks,
                    windows: money_windows(pair_money(p)),
                    race: PairRace {
                        gmv_cents: w.gmv,
                        paid_orders: w.orders,
                        impressions: w.impressions,
                        clicks: w.clicks,
                        prev_gmv_cents: ww.gmv - w.gmv,
                    },
                }
            })
            .collect();
        slot_merchants.sort_by(|a, b| (&a.slot, &a.merchant_id).cmp(&(&b.slot, &b.merchant_id)));

        let rules = self.rules.load();
        let mut changes = Vec::new();
        let mut venues = Vec::new();
        // Each venue's slots, in one pass over the slots.
        let mut members_of: Vec<Vec<usize>> = vec![Vec::new(); venue_names.len()];
        for i in (0..n_slots).filter(|&i| slot_cum[i].seen) {
            if let Some(list) = slot_venues.get(i).and_then(|&v| members_of.get_mut(v as usize)) {
                list.push(i);
            }
        }
        for (vi, vname) in venue_names.iter().enumerate() {
            let v = m.venues.get(vi).copied().unwrap_or_default();
            let members = std::mem::take(&mut members_of[vi]);
            if !v.seen && members.is_empty() {
                continue;
            }
            let (rule_name, rule) = rules.venues.get(&**vname).unwrap_or(&rules.default_rule);
            let inputs: Vec<RaceInputs> = members
                .iter()
                .map(|&i| {
                    let (r, rr) = (slot_win[i][0], slot_win[i][1]);
                    RaceInputs {
                        gmv: r.gmv,
                        paid_orders: r.orders,
                        buyers: meta(i).buyers[0],
                        impressions: r.impressions,
                        clicks: r.clicks,
                        prev_gmv: rr.gmv - r.gmv,
                        prev_orders: rr.orders - r.orders,
                        prev_clicks: rr.clicks - r.clicks,
                    }
                })
                .collect();
            let terms = race::terms(rule, &inputs);
            let scores = race::scores_by(&terms, &inputs);
            // Ranked by slot index (names only break ties): no name is copied or hashed.
            let mut order: Vec<(u32, f64)> = members.iter().zip(&scores).map(|(&i, &s)| (i as u32, s)).collect();
            let prev = state.previous.remove(&**vname).unwrap_or_default();
            race::rank_by(&mut order, &prev, self.cfg.race.hysteresis, |&a, &b| {
                slot_names[a as usize].cmp(&slot_names[b as usize])
            });
            // Where each slot sits in `members` (and `inputs`), and its previous rank (0: none).
            grow_to(&mut state.member_at, n_slots);
            grow_to(&mut state.prev_rank, n_slots);
            for (k, &i) in members.iter().enumerate() {
                state.member_at[i] = k as u32;
            }
            for (r, &i) in prev.iter().enumerate() {
                if let Some(x) = state.prev_rank.get_mut(i as usize) {
                    *x = r as u32 + 1;
                }
            }
            let ranking: Vec<RankEntry> = order
                .iter()
                .enumerate()
                .map(|(r, &(i, score))| {
                    let i = i as usize;
                    let inp = &inputs[state.member_at[i] as usize];
                    RankEntry {
                        rank: r as u32 + 1,
                        slot: slot_names[i].to_string(),
                        score,
                        gmv_cents: inp.gmv,
                        paid_orders: inp.paid_orders,
                        impressions: inp.impressions,
                        clicks: inp.clicks,
                        buyers: inp.buyers,
                        prev_gmv_cents: inp.prev_gmv,
                        prev_paid_orders: inp.prev_orders,
                        prev_clicks: inp.prev_clicks,
                        merchant_id: name_of(&merchant_names, meta(i).merchant),
                    }
                })
                .collect();
            if !prev.is_empty() {
                for (e, &(i, _)) in ranking.iter().zip(&order) {
                    let from = Some(state.prev_rank[i as usize]).filter(|&r| r != 0);
                    if from != Some(e.rank) {
                        changes.push(RankChange {
                            venue: vname.to_string(),
                            slot: e.slot.clone(),
                            from,
                            to: e.rank,
                            as_of_ms: as_of,
                        });
                    }
                }
            }
            for &i in &prev {
                if let Some(x) = state.prev_rank.get_mut(i as usize) {
                    *x = 0;
                }
            }
            state.previous.insert(vname.to_string(), order.into_iter().map(|(i, _)| i).collect());
            venues.push(VenueStats {
                windows: money_windows(m.venue_money.get(vi * nw..(vi + 1) * nw).unwrap_or(&[])),
                venue: vname.to_string(),
                gmv_cents: v.gmv,
                paid_orders: v.orders,
                uv: v.distinct[0],
                ipv_uv: v.distinct[1],
                buyers: v.distinct[2],
                race: Race {
                    window_ms: cx.race_window,
                    rule: rule_name.clone(),
                    terms,
                    ranking,
                    merchant_gap: self.cfg.race.merchant_gap,
                },
            });
        }
        venues.sort_by(|a, b| a.venue.cmp(&b.venue));

        let ch = &m.channels;
        let mut channels: Vec<ChannelStats> = ch
            .iter()
            .zip(&channel_names)
            .map(|(a, n)| ChannelStats {
                channel: n.to_string(),
                impressions: a.impressions,
                clicks: a.clicks,
                paid_orders: a.paid_orders,
                gmv_cents: a.gmv,
            })
            .collect();
        channels.sort_by(|a, b| a.channel.cmp(&b.channel));

        let plan = self.cfg.plan.as_ref().map(|p| {
            let mut phase_gmv = vec![0u128; p.phases.len()];
            let mut plan_gmv = 0;
            for s in sums {
                for (a, b) in phase_gmv.iter_mut().zip(&s.phase_gmv) {
                    *a += b;
                }
                plan_gmv += s.plan_gmv;
            }
            p.status(as_of, &phase_gmv, plan_gmv)
        });
        let names_bytes = self.names.bytes();
        let counters = Counters {
            late: c.late,
            too_late_for_windows: c.too_late,
            resent_pays: c.resent_pays,
            slot_venue_conflicts: self.names.slots.venue_conflicts.load(Ordering::Relaxed),
            dedupe_ids: sums.iter().map(|s| s.dedupe_ids).sum(),
            dedupe_orders: sums.iter().map(|s| s.dedupe_orders).sum(),
            window_records: sums.iter().map(|s| s.window_records).sum(),
            buyer_marks: sums.iter().map(|s| s.buyer_marks).sum(),
            state_bytes: sums.iter().map(|s| s.state_bytes).sum::<u64>() + names_bytes,
            names_bytes,
        };
        let snap = Snapshot {
            as_of_ms: as_of,
            published_at_ms: wall_ms(),
            last_event_at_ms: self.last_event_at.load(Ordering::Relaxed),
            totals,
            windows,
            venues,
            slots,
            slot_merchants,
            channels,
            funnel: Funnel::of(c.gmv, dt[0], dt[1], dt[2]),
            decomposition,
            plan,
            rejections: self.rejects.nonzero().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            counters,
            rehearsal: self.cfg.rehearsal.clone(),
        };
        (snap, changes)
    }
}
