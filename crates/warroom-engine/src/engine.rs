//! The engine: shards, routing, publishing snapshots.
//!
//! Writers (any number of threads) call [`Engine::prepare`] (hashing and name interning, no
//! shard involved) and then [`Engine::apply`] or [`Engine::apply_shard`]. Each shard is a
//! `Mutex<Shard>` taken only by writers and by the publisher; it is uncontended when each
//! thread owns its shard (the replay pipeline) and briefly contended otherwise.
//!
//! Readers never touch a shard: [`Engine::publish`] merges the shards' summaries into an
//! immutable [`Snapshot`] and swaps it into an `ArcSwap`; [`Engine::snapshot`] is a wait-free
//! load of the newest one. Rule changes swap an `ArcSwap` too and apply from the next publish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use warroom_model::{Event, Reason, RejectCounts, Rejection};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::config::Config;
use crate::intern::{Interner, NameCache, SlotInterner, NONE};
use crate::race::{self, RaceInputs, RankChange, Rule, RuleSpec};
use crate::shard::{Ctx, Outcome, Prepared, Shard, ShardCounters, ShardSummary, SlotWin};
use crate::snapshot::{
    decompose, Counters, Funnel, MoneyWindow, Race, RankEntry, SlotStats, Snapshot, Totals, VenueStats, WindowStats,
};

const DAY_MS: i64 = 86_400_000;

fn wall_ms() -> i64 {
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

#[derive(Debug, Default)]
struct PublishState {
    /// Venue -> slot names in the last published order.
    previous: BTreeMap<String, Vec<String>>,
}

#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    shards: Box<[Mutex<Shard>]>,
    ctx: OnceLock<Ctx>,
    venues: Interner,
    slots: SlotInterner,
    merchants: Interner,
    rejects: RejectCounts,
    watermark: AtomicI64,
    last_event_at: AtomicI64,
    rules: ArcSwap<RuleSet>,
    named_rules: BTreeMap<String, RuleSpec>,
    published: ArcSwap<Snapshot>,
    publish_state: Mutex<PublishState>,
    publishes: AtomicU64,
}

/// The shard context of `cfg` with the sketch epoch `epoch`.
fn base_ctx(cfg: &Config, epoch: i64) -> Ctx {
    let plan = cfg.plan.as_ref();
    Ctx {
        epoch,
        dedupe_horizon: cfg.engine.dedupe_horizon.as_millis() as i64,
        order_horizon: cfg.engine.order_horizon.as_millis() as i64,
        windows: cfg.engine.windows.iter().map(|d| d.as_millis() as i64).collect(),
        race_window: cfg.race.window.as_millis() as i64,
        phases: plan.map(|p| p.bounds()).unwrap_or_default(),
        plan_range: plan.map(|p| (p.start_ms(), p.end_ms())),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard leaves it consistent enough to keep serving: every update
    // is a handful of additions. Keep going rather than poison the whole monitor.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Builds an engine; `cfg` must have passed [`Config::validate`].
    pub fn new(cfg: Config) -> Self {
        let n = if cfg.engine.shards == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.engine.shards
        };
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
        let base = base_ctx(&cfg, 0);
        Engine {
            shards: (0..n).map(|_| Mutex::new(Shard::new(&base))).collect(),
            ctx: OnceLock::new(),
            venues: Interner::new(cfg.engine.max_venues),
            slots: SlotInterner::new(cfg.engine.max_slots),
            merchants: Interner::new(cfg.engine.max_merchants),
            rejects: RejectCounts::default(),
            watermark: AtomicI64::new(i64::MIN),
            last_event_at: AtomicI64::new(0),
            rules: ArcSwap::from_pointee(rules),
            named_rules: cfg.race.rules.clone(),
            published: ArcSwap::from_pointee(Snapshot::default()),
            publish_state: Mutex::new(PublishState::default()),
            publishes: AtomicU64::new(0),
            cfg,
        }
    }

    /// The context, fixing the sketch epoch on first use.
    fn ctx_for(&self, ts: i64) -> &Ctx {
        self.ctx.get_or_init(|| {
            let epoch = self.cfg.engine.epoch_ms.unwrap_or_else(|| ts.div_euclid(DAY_MS) * DAY_MS - 7 * DAY_MS);
            base_ctx(&self.cfg, epoch)
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Reduces a decoded event to its fixed-size form. Any thread; no shard lock.
    pub fn prepare(&self, ev: &Event<'_>, seq: u64) -> Prepared {
        self.prepare_cached(ev, seq, &mut NameCache::default())
    }

    /// [`Engine::prepare`] with the calling thread's own name cache (the hot path).
    pub fn prepare_cached(&self, ev: &Event<'_>, seq: u64, cache: &mut NameCache) -> Prepared {
        self.ctx_for(ev.ts);
        let venue = ev.venue.as_deref().map_or(NONE, |v| cache.venue(&self.venues, v));
        let (slot, venue) = match ev.slot.as_deref() {
            Some(s) => cache.slot(&self.slots, s, venue),
            None => (NONE, venue),
        };
        let merchant = ev.merchant_id.as_deref().map_or(NONE, |m| cache.merchant(&self.merchants, m));
        Prepared {
            id: xxh3_128(ev.event_id.as_bytes()),
            order: ev.order_id.as_deref().map_or(0, |o| xxh3_128(o.as_bytes())),
            user: xxh3_64(ev.user_id.as_bytes()),
            ts: ev.ts,
            seq,
            amount: ev.amount_cents.unwrap_or(0),
            coupon: ev.coupon_cents.unwrap_or(0),
            slot,
            venue,
            merchant,
            kind: ev.kind,
            lane: 0,
        }
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
            Ok(ev) => Ok(self.prepare_cached(&ev, seq, cache)),
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

    /// Applies a batch from any thread; events of one shard keep their batch order.
    pub fn apply(&self, batch: &[Prepared]) {
        for s in 0..self.shards.len() {
            self.apply_shard(s, batch);
        }
    }

    /// Applies the events of `batch` that belong to shard `s`, in order.
    pub fn apply_shard(&self, s: usize, batch: &[Prepared]) {
        self.apply_filtered(s, batch.iter().filter(|e| self.shard_of(e) == s));
    }

    /// Applies `batch`, all of whose events the caller has routed to shard `s` with
    /// [`Engine::shard_of`] (the pipeline does so while decoding).
    pub fn apply_routed(&self, s: usize, batch: &[Prepared]) {
        debug_assert!(batch.iter().all(|e| self.shard_of(e) == s), "events routed to the wrong shard");
        self.apply_filtered(s, batch.iter());
    }

    fn apply_filtered<'a>(&self, s: usize, mut events: impl Iterator<Item = &'a Prepared>) {
        let Some(first) = events.next() else { return };
        let cx = self.ctx_for(first.ts);
        let mut shard = lock(&self.shards[s]);
        let mut newest = i64::MIN;
        for ev in std::iter::once(first).chain(events) {
            match shard.apply(ev, cx) {
                Outcome::Accepted => newest = newest.max(ev.ts),
                Outcome::Duplicate => {}
                Outcome::BeyondHorizon => self.rejects.add(Reason::BeyondDedupeHorizon, 1),
            }
        }
        drop(shard);
        if newest != i64::MIN {
            self.watermark.fetch_max(newest, Ordering::Relaxed);
            self.last_event_at.fetch_max(wall_ms(), Ordering::Relaxed);
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
        let new = match spec {
            Some(spec) => {
                spec.validate().map_err(|reason| EngineError::InvalidRule { venue: venue.into(), reason })?;
                (name.to_string(), Rule::Composite(spec))
            }
            None if name == "gmv" => ("gmv".to_string(), Rule::Gmv),
            None => match self.named_rules.get(name) {
                Some(spec) => (name.to_string(), Rule::Composite(spec.clone())),
                None => return Err(EngineError::UnknownRule(name.into())),
            },
        };
        let mut old_name = String::new();
        self.rules.rcu(|cur| {
            let mut next = (**cur).clone();
            old_name = next.venues.get(venue).unwrap_or(&next.default_rule).0.clone();
            next.venues.insert(venue.to_string(), new.clone());
            next
        });
        Ok(RuleChange { venue: venue.into(), old_rule: old_name, new_rule: name.into() })
    }

    /// Name of the rule in force for `venue`.
    pub fn rule_of(&self, venue: &str) -> String {
        let rules = self.rules.load();
        rules.venues.get(venue).unwrap_or(&rules.default_rule).0.clone()
    }

    fn shape(&self) -> crate::checkpoint::Shape {
        let base = base_ctx(&self.cfg, 0);
        crate::checkpoint::Shape {
            shards: self.shards.len(),
            windows: base.windows,
            race_window: base.race_window,
            dedupe_horizon: base.dedupe_horizon,
            order_horizon: base.order_horizon,
            phases: base.phases,
        }
    }

    /// The whole state as checkpoint bytes, with the caller's position (`extra`, e.g. source
    /// offsets) stored alongside. All shards are locked for the copy: call it when no events
    /// are in flight, so that the state and the position describe the same instant.
    pub fn checkpoint(&self, extra: &[u8]) -> Vec<u8> {
        let guards: Vec<_> = self.shards.iter().map(|s| lock(s)).collect();
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
        let image = crate::checkpoint::Image {
            shape: self.shape(),
            epoch: self.ctx.get().map(|c| c.epoch),
            watermark: self.watermark(),
            last_event_at: self.last_event_at.load(Ordering::Relaxed),
            venues: names(&self.venues),
            slots: names(&self.slots.names),
            slot_venues: self.slots.venues(),
            merchants: names(&self.merchants),
            overflow: [
                self.venues.overflow.load(Ordering::Relaxed),
                self.slots.names.overflow.load(Ordering::Relaxed),
                self.merchants.overflow.load(Ordering::Relaxed),
                self.slots.venue_conflicts.load(Ordering::Relaxed),
            ],
            rejects: self.rejects.nonzero().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            rules: saved,
            shards: guards.iter().map(|g| &**g).collect(),
            extra,
        };
        crate::checkpoint::encode(&image)
    }

    /// An engine restored from checkpoint bytes (read from `path`, named in errors), and the
    /// caller's position stored with it. `cfg` must give the same shape (shards, windows,
    /// horizons, phases); rules changed at runtime are restored over `cfg`'s.
    pub fn restore(
        cfg: Config,
        bytes: &[u8],
        path: &std::path::Path,
    ) -> Result<(Engine, Vec<u8>), crate::checkpoint::CheckpointError> {
        let image = crate::checkpoint::decode(bytes, path)?;
        let fresh = Engine::new(cfg);
        let shape = fresh.shape();
        if image.shape != shape || image.shards.len() != shape.shards {
            return Err(crate::checkpoint::CheckpointError::Shape(format!(
                "saved {:?}, configured {:?}",
                image.shape, shape
            )));
        }
        let e = &fresh.cfg.engine;
        let (max_venues, max_slots, max_merchants) = (e.max_venues, e.max_slots, e.max_merchants);
        let [vo, so, mo, conflicts] = image.overflow;
        let engine = Engine {
            shards: image.shards.into_iter().map(Mutex::new).collect(),
            venues: Interner::from_names(max_venues, &image.venues, vo),
            slots: SlotInterner::from_parts(max_slots, &image.slots, image.slot_venues, so, conflicts),
            merchants: Interner::from_names(max_merchants, &image.merchants, mo),
            watermark: AtomicI64::new(image.watermark),
            last_event_at: AtomicI64::new(image.last_event_at),
            ..fresh
        };
        if let Some(epoch) = image.epoch {
            let _ = engine.ctx.set(base_ctx(&engine.cfg, epoch));
        }
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

    /// Merges all shards at the global watermark into a new snapshot, stores it for readers
    /// and returns it with the rank changes since the previous publish.
    pub fn publish(&self) -> (Arc<Snapshot>, Vec<RankChange>) {
        let mut state = lock(&self.publish_state);
        let as_of = self.watermark();
        let Some(cx) = self.ctx.get() else {
            let snap = Arc::new(self.empty_snapshot());
            self.published.store(snap.clone());
            return (snap, Vec::new());
        };
        let sums: Vec<ShardSummary> = self.shards.iter().map(|s| lock(s).summarize(as_of, cx)).collect();
        let (snap, changes) = self.merge(as_of, cx, &sums, &mut state);
        let snap = Arc::new(snap);
        self.published.store(snap.clone());
        self.publishes.fetch_add(1, Ordering::Relaxed);
        (snap, changes)
    }

    fn empty_snapshot(&self) -> Snapshot {
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
        s
    }

    fn merge(
        &self,
        as_of: i64,
        cx: &Ctx,
        sums: &[ShardSummary],
        state: &mut PublishState,
    ) -> (Snapshot, Vec<RankChange>) {
        let mut c = ShardCounters::default();
        for s in sums {
            c.add(&s.c);
        }
        let sum3 = |f: &dyn Fn(&ShardSummary) -> [u64; 3]| {
            sums.iter().fold([0u64; 3], |a, s| {
                let b = f(s);
                [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
            })
        };
        let dt = sum3(&|s| s.distinct_total);
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
            let (mut cur, mut prev) = ((0u64, 0u64), (0u64, 0u64));
            for s in sums {
                cur.0 += s.windows[k].0.gmv;
                cur.1 += s.windows[k].0.orders;
                prev.0 += s.windows[k].1.gmv;
                prev.1 += s.windows[k].1.orders;
            }
            let d = sum3(&|s| s.distinct_windows[k]);
            windows.push(WindowStats {
                length_ms: len,
                gmv_cents: cur.0,
                paid_orders: cur.1,
                uv: d[0],
                ipv_uv: d[1],
                buyers: d[2],
            });
            let f = sums.iter().fold(([0u64; 2], [0u64; 2]), |a, s| {
                let (c2, p2) = s.formula[k];
                ([a.0[0] + c2[0], a.0[1] + c2[1]], [a.1[0] + p2[0], a.1[1] + p2[1]])
            });
            decomposition.push(decompose(len, (cur.0, f.0[0], f.0[1]), (prev.0, f.1[0], f.1[1])));
        }

        // Slots and venues.
        let slot_names = self.slots.names.names();
        let slot_venues = self.slots.venues();
        let venue_names = self.venues.names();
        let merchant_names = self.merchants.names();
        let name_of = |names: &[Arc<str>], i: u32| -> String {
            if i == NONE {
                String::new()
            } else {
                names.get(i as usize).map(|s| s.to_string()).unwrap_or_default()
            }
        };
        let n_slots = slot_names.len();
        let mut cum = vec![crate::shard::SlotCum::default(); n_slots];
        let mut win = vec![[SlotWin::default(); 2]; n_slots];
        for s in sums {
            for (i, sc) in s.slot_cum.iter().enumerate().take(n_slots) {
                let m = &mut cum[i];
                m.seen |= sc.seen;
                m.gmv += sc.gmv;
                m.orders += sc.orders;
                m.impressions += sc.impressions;
                m.clicks += sc.clicks;
                if sc.merchant != NONE && sc.merchant_at >= m.merchant_at {
                    m.merchant = sc.merchant;
                    m.merchant_at = sc.merchant_at;
                }
            }
            for (i, sw) in s.slot_win.iter().enumerate().take(n_slots) {
                for w in 0..2 {
                    let t = &mut win[i][w];
                    t.gmv += sw[w].gmv;
                    t.orders += sw[w].orders;
                    t.impressions += sw[w].impressions;
                    t.clicks += sw[w].clicks;
                    t.buyers += sw[w].buyers;
                }
            }
        }
        let money = |tables: &dyn Fn(&ShardSummary) -> Option<&Vec<crate::shard::MoneyAgg>>| -> Vec<MoneyWindow> {
            cx.windows
                .iter()
                .enumerate()
                .map(|(k, &len)| {
                    let mut m = MoneyWindow { length_ms: len, ..Default::default() };
                    for t in sums.iter().filter_map(tables) {
                        m.gmv_cents += t[k].gmv;
                        m.paid_orders += t[k].orders;
                    }
                    m
                })
                .collect()
        };
        let mut slots: Vec<SlotStats> = (0..n_slots)
            .filter(|&i| cum[i].seen)
            .map(|i| SlotStats {
                windows: money(&|s: &ShardSummary| s.slot_windows.get(i)),
                slot: slot_names[i].to_string(),
                venue: name_of(&venue_names, slot_venues.get(i).copied().unwrap_or(NONE)),
                merchant_id: name_of(&merchant_names, cum[i].merchant),
                gmv_cents: cum[i].gmv,
                paid_orders: cum[i].orders,
                impressions: cum[i].impressions,
                clicks: cum[i].clicks,
            })
            .collect();
        slots.sort_by(|a, b| a.slot.cmp(&b.slot));

        let rules = self.rules.load();
        let mut changes = Vec::new();
        let mut venues = Vec::new();
        for (vi, vname) in venue_names.iter().enumerate() {
            let (mut seen, mut gmv, mut orders, mut d) = (false, 0, 0, [0u64; 3]);
            for s in sums {
                if let Some(v) = s.venues.get(vi) {
                    seen |= v.0;
                    gmv += v.1;
                    orders += v.2;
                    for (a, b) in d.iter_mut().zip(v.3) {
                        *a += b;
                    }
                }
            }
            let members: Vec<usize> =
                (0..n_slots).filter(|&i| cum[i].seen && slot_venues.get(i).copied() == Some(vi as u32)).collect();
            if !seen && members.is_empty() {
                continue;
            }
            let (rule_name, rule) = rules.venues.get(&**vname).unwrap_or(&rules.default_rule);
            let inputs: Vec<RaceInputs> = members
                .iter()
                .map(|&i| {
                    let (r, rr) = (win[i][0], win[i][1]);
                    RaceInputs {
                        gmv: r.gmv,
                        paid_orders: r.orders,
                        buyers: r.buyers,
                        impressions: r.impressions,
                        clicks: r.clicks,
                        prev_gmv: rr.gmv - r.gmv,
                        prev_orders: rr.orders - r.orders,
                        prev_clicks: rr.clicks - r.clicks,
                    }
                })
                .collect();
            let scores = race::scores(rule, &inputs);
            let mut order: Vec<(String, f64)> =
                members.iter().zip(&scores).map(|(&i, &s)| (slot_names[i].to_string(), s)).collect();
            let prev = state.previous.get(&**vname).cloned().unwrap_or_default();
            race::rank(&mut order, &prev, self.cfg.race.hysteresis);
            let by_name: BTreeMap<&str, usize> =
                members.iter().enumerate().map(|(k, &i)| (&*slot_names[i], k)).collect();
            let ranking: Vec<RankEntry> = order
                .iter()
                .enumerate()
                .map(|(r, (name, score))| {
                    let k = by_name[name.as_str()];
                    let i = members[k];
                    let inp = &inputs[k];
                    RankEntry {
                        rank: r as u32 + 1,
                        slot: name.clone(),
                        score: *score,
                        gmv_cents: inp.gmv,
                        paid_orders: inp.paid_orders,
                        impressions: inp.impressions,
                        clicks: inp.clicks,
                        buyers: inp.buyers,
                        prev_gmv_cents: inp.prev_gmv,
                        merchant_id: name_of(&merchant_names, cum[i].merchant),
                    }
                })
                .collect();
            if !prev.is_empty() {
                for e in &ranking {
                    let from = prev.iter().position(|p| *p == e.slot).map(|p| p as u32 + 1);
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
            state.previous.insert(vname.to_string(), order.into_iter().map(|(n, _)| n).collect());
            venues.push(VenueStats {
                windows: money(&|s: &ShardSummary| s.venue_windows.get(vi)),
                venue: vname.to_string(),
                gmv_cents: gmv,
                paid_orders: orders,
                uv: d[0],
                ipv_uv: d[1],
                buyers: d[2],
                race: Race { window_ms: cx.race_window, rule: rule_name.clone(), ranking },
            });
        }
        venues.sort_by(|a, b| a.venue.cmp(&b.venue));

        let plan = self.cfg.plan.as_ref().map(|p| {
            let mut phase_gmv = vec![0u64; p.phases.len()];
            let mut plan_gmv = 0;
            for s in sums {
                for (a, b) in phase_gmv.iter_mut().zip(&s.phase_gmv) {
                    *a += b;
                }
                plan_gmv += s.plan_gmv;
            }
            p.status(as_of, &phase_gmv, plan_gmv)
        });
        let counters = Counters {
            late: c.late,
            too_late_for_windows: c.too_late,
            resent_pays: c.resent_pays,
            slot_overflow: self.slots.names.overflow.load(Ordering::Relaxed),
            venue_overflow: self.venues.overflow.load(Ordering::Relaxed),
            merchant_overflow: self.merchants.overflow.load(Ordering::Relaxed),
            slot_venue_conflicts: self.slots.venue_conflicts.load(Ordering::Relaxed),
            dedupe_ids: sums.iter().map(|s| s.dedupe_ids).sum(),
            dedupe_orders: sums.iter().map(|s| s.dedupe_orders).sum(),
            window_records: sums.iter().map(|s| s.window_records).sum(),
            buyer_marks: sums.iter().map(|s| s.buyer_marks).sum(),
            state_bytes: sums.iter().map(|s| s.state_bytes).sum(),
        };
        let snap = Snapshot {
            as_of_ms: if as_of == i64::MIN { 0 } else { as_of },
            published_at_ms: wall_ms(),
            last_event_at_ms: self.last_event_at.load(Ordering::Relaxed),
            totals,
            windows,
            venues,
            slots,
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
