//! One shard of engine state: everything about the users routed to it.
//!
//! A shard has one writer at a time (the engine holds it behind a mutex that only writers and
//! the publisher take) so its state is plain memory: no atomics on the hot path. Routing by
//! user puts every delivery of an event (same user), every payment of an order (an order has
//! one buyer) and every distinct-count of a user in the same shard, so de-duplication is
//! shard-local and the shards' distinct counts are over disjoint users: they add up.
//!
//! Per event: two hash probes (event id; order id for payments), a few sketch and counter
//! updates, and an append to the window rings. No allocation once the rings and sets have
//! reached their steady-state sizes.
//!
//! Slot state is kept per (slot, merchant) pair: a slot's money belongs to the merchant named
//! on each event (contract v1.1, 商品更换), and a slot's numbers are the sum of its pairs.
//! Money is summed in `u128`: with every amount at most 10^12 cents, no number of events a
//! `u64` counter can count can overflow it.
//!
//! Time: the watermarks that move the windows never pass the caller's cap (the wall clock, for
//! a live source), so one producer whose clock runs ahead cannot move everybody's windows; the
//! sketches' 32-bit clocks are relative to a per-shard epoch that follows the data forwards,
//! so no single event (a first one far in the past) can fix it.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use warroom_model::EventKind;

use crate::dedupe::GenSet;
use crate::history::{new_lineage, ShardHistory};
use crate::hll::Hll;
use crate::intern::NONE;
use crate::mem::keep_half_free;
use crate::sketches::{Distinct, Sketches};
use crate::window::{Record, Ring};

/// An event reduced to what the engine needs: fixed size (96 bytes), no borrowed strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// xxh3-128 of `event_id`.
    pub id: u128,
    /// xxh3-128 of `order_id` (0 if none).
    pub order: u128,
    /// xxh3-64 of `user_id`: routing, sketches, buyers.
    pub user: u64,
    pub ts: i64,
    /// Position in the input (line number, or offset): breaks ties of "newest event", and
    /// names the message when the engine refuses it.
    pub seq: u64,
    pub amount: u64,
    pub coupon: u64,
    pub slot: u32,
    pub venue: u32,
    pub merchant: u32,
    /// The (slot, merchant) pair the slot's numbers of this event go to (`NONE`: no slot).
    pub pair: u32,
    pub channel: u32,
    pub kind: EventKind,
    /// The ordered stream the event came from (a Kafka partition; 0 for a file). Lateness is
    /// judged against the event's own lane, so a lane consumed behind the others (catch-up
    /// after downtime) is not mistaken for hours-late data.
    pub lane: u16,
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    BeyondHorizon,
}

/// Shard-independent settings, resolved once.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub dedupe_horizon: i64,
    pub order_horizon: i64,
    /// Reported windows (ms).
    pub windows: Vec<i64>,
    pub race_window: i64,
    pub phases: Vec<(i64, i64)>,
    pub plan_range: Option<(i64, i64)>,
    /// Count per minute for the history ([`crate::history`]); off for a replay that keeps none.
    pub history: bool,
}

impl Ctx {
    fn longest(&self) -> i64 {
        self.windows.iter().copied().max().unwrap_or(0)
    }
}

/// How many names of each kind a restored state has (what its indices may point at).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NameCounts {
    pub venues: usize,
    pub slots: usize,
    pub merchants: usize,
    pub channels: usize,
    pub pairs: usize,
}

/// The clock of one batch: the wall clock when it was applied, and the cap on watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock ms (lane idleness).
    pub now: i64,
    /// Watermarks never move past this: the wall clock for a live source (an event stamped
    /// ahead of it counts, but moves no window ahead of everybody else's data), `i64::MAX` for
    /// a replay in event time.
    pub cap: i64,
}

impl Clock {
    /// Event time only: watermarks follow the events (replays, tests).
    pub const EVENT_TIME: Clock = Clock { now: 0, cap: i64::MAX };
}

/// 2^32 ms (49.7 days) is what the sketches' u32 clocks span; the epoch sits this far behind
/// the newest event when it is (re)set, leaving the rest of the span ahead of it.
const EPOCH_LEAD_MS: i64 = 24 * 86_400_000;
/// When an event comes this close to the top of the span, the epoch moves forward.
const EPOCH_MARGIN_MS: i64 = 2 * 86_400_000;
const SPAN_MS: i64 = 1 << 32;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PayRec {
    ms: u16,
    venue: u32,
    pair: u32,
    amount: u64,
}

impl Record for PayRec {
    fn ms(&self) -> u16 {
        self.ms
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TrafficRec {
    pair: u32,
    ms: u16,
    click: bool,
}

impl Record for TrafficRec {
    fn ms(&self) -> u16 {
        self.ms
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SlotPayRec {
    pair: u32,
    ms: u16,
    amount: u64,
    user: u64,
}

impl Record for SlotPayRec {
    fn ms(&self) -> u16 {
        self.ms
    }
}

/// Money in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyAgg {
    pub gmv: u128,
    pub orders: u64,
}

impl MoneyAgg {
    #[inline]
    fn add(&mut self, amount: u64) {
        self.gmv += amount as u128;
        self.orders += 1;
    }

    #[inline]
    fn sub(&mut self, amount: u64) {
        self.gmv -= amount as u128;
        self.orders -= 1;
    }

    pub fn merge(&mut self, o: &MoneyAgg) {
        self.gmv += o.gmv;
        self.orders += o.orders;
    }
}

/// A pair's (or a slot's) numbers in one race window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairWin {
    pub gmv: u128,
    pub orders: u64,
    pub impressions: u64,
    pub clicks: u64,
}

impl PairWin {
    pub fn merge(&mut self, o: &PairWin) {
        self.gmv += o.gmv;
        self.orders += o.orders;
        self.impressions += o.impressions;
        self.clicks += o.clicks;
    }
}

/// A pair's cumulative numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairCum {
    /// An accepted event named this pair.
    pub seen: bool,
    pub gmv: u128,
    pub orders: u64,
    pub impressions: u64,
    pub clicks: u64,
}

impl PairCum {
    pub fn merge(&mut self, o: &PairCum) {
        self.seen |= o.seen;
        self.gmv += o.gmv;
        self.orders += o.orders;
        self.impressions += o.impressions;
        self.clicks += o.clicks;
    }
}

/// What a shard knows of a slot beyond its pairs' numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMeta {
    /// The merchant of the slot's newest event (by `ts`, ties: later in the input), and that
    /// event's (ts, seq).
    pub merchant: u32,
    pub merchant_at: (i64, u64),
    /// Distinct buyers of the slot in the race window and the double race window (exact).
    pub buyers: [u64; 2],
}

impl Default for SlotMeta {
    fn default() -> Self {
        SlotMeta { merchant: NONE, merchant_at: (i64::MIN, 0), buyers: [0; 2] }
    }
}

/// A pair's state in a shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PairState {
    slot: u32,
    cum: PairCum,
    /// Race window and double race window.
    win: [PairWin; 2],
    /// Money per site window length ([L0, 2*L0, L1, 2*L1, ...]); empty until its first pay.
    money: Vec<MoneyAgg>,
    /// Changed since the shard's last delta (then it is in `Shard::dirty`).
    #[serde(skip)]
    dirty: bool,
}

/// Marks pair `i` changed since the last delta: one flag test per change.
#[inline]
fn touch(p: &mut PairState, dirty: &mut Vec<u32>, i: u32) {
    if !p.dirty {
        p.dirty = true;
        dirty.push(i);
    }
}

/// Which race windows a (slot, buyer) is counted in, and their newest payment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BuyerMark {
    latest: i64,
    mask: u8,
}

#[derive(Debug, Serialize, Deserialize)]
struct VenueState {
    seen: bool,
    gmv: u128,
    orders: u64,
    /// Money per site window length; empty until its first pay.
    money: Vec<MoneyAgg>,
    /// uv, ipv_uv, buyers since start (precision 12: standard error 1.6%; venue-level
    /// numbers are not in the contract and must stay cache-resident).
    sketches: Option<Box<[Hll; 3]>>,
}

/// Traffic and money that came in through one channel (流量入口), since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAgg {
    pub impressions: u64,
    pub clicks: u64,
    pub paid_orders: u64,
    pub gmv: u128,
}

impl ChannelAgg {
    pub fn merge(&mut self, o: &ChannelAgg) {
        self.impressions += o.impressions;
        self.clicks += o.clicks;
        self.paid_orders += o.paid_orders;
        self.gmv += o.gmv;
    }
}

/// Cumulative counters of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounters {
    pub accepted: u64,
    pub duplicates: u64,
    pub beyond_horizon: u64,
    pub late: u64,
    pub too_late: u64,
    pub resent_pays: u64,
    pub gmv: u128,
    pub paid_orders: u64,
    pub refunds: u64,
    pub refund_cents: u128,
    pub impressions: u64,
    pub clicks: u64,
    pub favorites: u64,
    pub carts: u64,
    pub orders_placed: u64,
    pub order_cents: u128,
    pub coupon_cents: u128,
}

impl ShardCounters {
    pub fn add(&mut self, o: &ShardCounters) {
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.beyond_horizon += o.beyond_horizon;
        self.late += o.late;
        self.too_late += o.too_late;
        self.resent_pays += o.resent_pays;
        self.gmv += o.gmv;
        self.paid_orders += o.paid_orders;
        self.refunds += o.refunds;
        self.refund_cents += o.refund_cents;
        self.impressions += o.impressions;
        self.clicks += o.clicks;
        self.favorites += o.favorites;
        self.carts += o.carts;
        self.orders_placed += o.orders_placed;
        self.order_cents += o.order_cents;
        self.coupon_cents += o.coupon_cents;
    }
}

/// Marks a lane given up (see [`Shard::retire_lane`]).
const RETIRED: i64 = i64::MAX;
/// Marks a lane open but without events yet (see [`Shard::open_lane`]): below every time.
const OPEN: i64 = i64::MIN + 1;
/// A lane not seen at all.
pub(crate) const UNSEEN: i64 = i64::MIN;

/// One input lane (a partition) as this shard saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Lane {
    /// Newest accepted `ts` (capped), or one of `UNSEEN`, `OPEN`, `RETIRED`.
    wm: i64,
    /// Declared idle by its source (caught up and silent, see [`Shard::set_idle`]) and not
    /// delivered since: it holds back no eviction.
    idle: bool,
}

impl Lane {
    fn has_time(&self) -> bool {
        self.wm != UNSEEN && self.wm != OPEN && self.wm != RETIRED
    }
}

fn venue_sketches() -> Box<[Hll; 3]> {
    Box::new([Hll::new(12), Hll::new(12), Hll::new(12)])
}

const UV: usize = 0;
const IPV: usize = 1;
const BUYERS: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct Shard {
    wm: i64,
    lanes: Vec<Lane>,
    pub c: ShardCounters,
    ids: GenSet,
    orders: GenSet,
    /// Site payments; windows [L0, 2*L0, L1, 2*L1, ...].
    site_ring: Ring<PayRec>,
    site: Vec<MoneyAgg>,
    /// Slot traffic and payments; windows [race, 2*race].
    traffic_ring: Ring<TrafficRec>,
    pay_ring: Ring<SlotPayRec>,
    pairs: Vec<PairState>,
    slots: Vec<SlotMeta>,
    buyer_marks: HashMap<(u32, u64), BuyerMark>,
    venues: Vec<VenueState>,
    channels: Vec<ChannelAgg>,
    /// The distinct-count sketches (uv, ipv, buyers).
    pub(crate) sk: Sketches,
    /// GMV and paid orders per minute of event time: the phases' and the plan's numbers are
    /// sums over it, so a changed plan is recomputed from it (see [`Shard::replan`]).
    minutes: BTreeMap<i64, MoneyAgg>,
    phase_gmv: Vec<u128>,
    plan_gmv: u128,
    /// What was counted per minute since the last checkpoint ([`crate::history`]).
    pub(crate) hist: ShardHistory,
    /// Pairs changed since the last delta (each once: `PairState::dirty`).
    #[serde(skip)]
    dirty: Vec<u32>,
    /// The next delta carries every pair: a new or restored shard, whose reader has nothing.
    #[serde(skip, default = "yes")]
    all_dirty: bool,
    /// Slot buyers changed since the last delta, kept only for a reader of partials.
    #[serde(skip)]
    touched_buyers: Option<Vec<(u32, u64)>>,
}

fn yes() -> bool {
    true
}

/// What a shard hands the publisher ([`Shard::delta`]): its scalar summary, the pairs that
/// changed since its previous delta with their slots' state, and its venues and channels (a
/// few, whole). Immutable once sent; built by the shard's writer, so the publisher never takes
/// the shard's lock. Values are absolute, not increments: a reader that applies deltas in
/// order holds the shard's tables as of the last one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardDelta {
    /// The watermark the shard's windows were brought to.
    pub as_of: i64,
    pub summary: ShardSummary,
    /// Changed pairs and, per pair, its numbers (`windows` money entries per pair) and its
    /// slot's state.
    pub pairs: Vec<u32>,
    pub pair_cum: Vec<PairCum>,
    pub pair_win: Vec<[PairWin; 2]>,
    pub pair_money: Vec<MoneyAgg>,
    pub slots: Vec<(u32, SlotMeta)>,
    pub venues: Vec<VenueSum>,
    pub venue_money: Vec<MoneyAgg>,
    pub channels: Vec<ChannelAgg>,
    /// For a reader merging several partitions (whose buyers overlap): (slot, user hash,
    /// newest pay) of the slot buyers changed since the previous delta, when the shard tracks
    /// them ([`Shard::track_buyers`]); all of them in a full one.
    pub buyers: Vec<(u32, u64, i64)>,
}

/// Per-pair, per-slot, per-venue and per-channel numbers, dense by index: the publisher keeps
/// one per shard (the shard's tables as of its last [`ShardDelta`]) and one for their sum.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// Reported windows.
    pub windows: usize,
    pub pair_cum: Vec<PairCum>,
    /// Race window and double race window.
    pub pair_win: Vec<[PairWin; 2]>,
    /// Money in each reported window, `windows` entries per pair.
    pub pair_money: Vec<MoneyAgg>,
    pub slots: Vec<SlotMeta>,
    pub venues: Vec<VenueSum>,
    /// Money in each reported window, `windows` entries per venue.
    pub venue_money: Vec<MoneyAgg>,
    pub channels: Vec<ChannelAgg>,
}

impl Merged {
    /// Takes in a shard's delta (this is that shard's mirror); the pairs and slots it changed
    /// are appended to `pairs` and `slots`.
    pub fn apply(&mut self, d: &ShardDelta, pairs: &mut Vec<u32>, slots: &mut Vec<u32>) {
        let nw = self.windows;
        if let Some(&top) = d.pairs.iter().max() {
            let n = top as usize + 1;
            grow(&mut self.pair_cum, n, PairCum::default());
            grow(&mut self.pair_win, n, [PairWin::default(); 2]);
            grow(&mut self.pair_money, n * nw, MoneyAgg::default());
        }
        for (k, &i) in d.pairs.iter().enumerate() {
            let i = i as usize;
            self.pair_cum[i] = d.pair_cum[k];
            self.pair_win[i] = d.pair_win[k];
            self.pair_money[i * nw..(i + 1) * nw].copy_from_slice(&d.pair_money[k * nw..(k + 1) * nw]);
        }
        pairs.extend_from_slice(&d.pairs);
        for &(slot, meta) in &d.slots {
            grow(&mut self.slots, slot as usize + 1, SlotMeta::default());
            self.slots[slot as usize] = meta;
            slots.push(slot);
        }
        self.venues.clone_from(&d.venues);
        self.venue_money.clone_from(&d.venue_money);
        self.channels.clone_from(&d.channels);
    }

    /// Makes this (the sum) the sum of `parts` (the shards' mirrors) at the given pairs and
    /// slots, and at every venue and channel. Cost: what changed, times the shard count.
    pub fn resum(&mut self, parts: &[Merged], pairs: &[u32], slots: &[u32]) {
        let nw = self.windows;
        let top = |v: &[u32]| v.iter().max().map_or(0, |&t| t as usize + 1);
        let (np, ns) = (top(pairs), top(slots));
        grow(&mut self.pair_cum, np, PairCum::default());
        grow(&mut self.pair_win, np, [PairWin::default(); 2]);
        grow(&mut self.pair_money, np * nw, MoneyAgg::default());
        grow(&mut self.slots, ns, SlotMeta::default());
        let mut money = vec![MoneyAgg::default(); nw];
        for &i in pairs {
            let i = i as usize;
            let (mut cum, mut win) = (PairCum::default(), [PairWin::default(); 2]);
            money.fill(MoneyAgg::default());
            for m in parts {
                if let Some(c) = m.pair_cum.get(i) {
                    cum.merge(c);
                    win[0].merge(&m.pair_win[i][0]);
                    win[1].merge(&m.pair_win[i][1]);
                    for (a, b) in money.iter_mut().zip(&m.pair_money[i * nw..(i + 1) * nw]) {
                        a.merge(b);
                    }
                }
            }
            self.pair_cum[i] = cum;
            self.pair_win[i] = win;
            self.pair_money[i * nw..(i + 1) * nw].copy_from_slice(&money);
        }
        for &i in slots {
            let i = i as usize;
            let mut a = SlotMeta::default();
            for b in parts.iter().filter_map(|m| m.slots.get(i)) {
                a.buyers[0] += b.buyers[0];
                a.buyers[1] += b.buyers[1];
                if b.merchant != NONE && b.merchant_at >= a.merchant_at {
                    a.merchant = b.merchant;
                    a.merchant_at = b.merchant_at;
                }
            }
            self.slots[i] = a;
        }
        let nv = parts.iter().map(|m| m.venues.len()).max().unwrap_or(0);
        self.venues = vec![VenueSum::default(); nv];
        self.venue_money = vec![MoneyAgg::default(); nv * nw];
        let nc = parts.iter().map(|m| m.channels.len()).max().unwrap_or(0);
        self.channels = vec![ChannelAgg::default(); nc];
        for m in parts {
            for (a, v) in self.venues.iter_mut().zip(&m.venues) {
                a.seen |= v.seen;
                a.gmv += v.gmv;
                a.orders += v.orders;
                for (d, x) in a.distinct.iter_mut().zip(v.distinct) {
                    *d += x;
                }
            }
            for (a, x) in self.venue_money.iter_mut().zip(&m.venue_money) {
                a.merge(x);
            }
            for (a, b) in self.channels.iter_mut().zip(&m.channels) {
                a.merge(b);
            }
        }
    }
}

/// A venue's numbers, summed over shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueSum {
    pub seen: bool,
    pub gmv: u128,
    pub orders: u64,
    /// uv, ipv_uv, buyers (over disjoint users: the shards' estimates add up).
    pub distinct: [u64; 3],
}

/// Grows `v` to at least `n` entries, by an eighth more than needed rather than doubling: these
/// tables are indexed by name and live as long as the process (a doubling would leave up to
/// half of a 20,000-slot table unused, and briefly hold old and new copies).
fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        if v.capacity() < n {
            v.reserve_exact(n + n / 8 - v.len());
        }
        v.resize(n, fill);
    }
}

/// The scalar part of a shard, as of one watermark.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardSummary {
    pub wm: i64,
    pub c: ShardCounters,
    /// Per reported window: (current, previous) money.
    pub windows: Vec<(MoneyAgg, MoneyAgg)>,
    /// Distinct counts (this shard's own sketches).
    pub distinct: Distinct,
    pub phase_gmv: Vec<u128>,
    pub plan_gmv: u128,
    pub dedupe_ids: u64,
    pub dedupe_orders: u64,
    pub window_records: u64,
    pub buyer_marks: u64,
    /// Bytes allocated by the tables that grow with events (dedupe sets, window records,
    /// buyer marks, the minute series); the rest of a shard is fixed by the configuration.
    pub state_bytes: u64,
}

impl Shard {
    pub fn new(cx: &Ctx) -> Self {
        let site_lengths = cx.windows.iter().flat_map(|&l| [l, 2 * l]).collect::<Vec<_>>();
        let race = vec![cx.race_window, 2 * cx.race_window];
        Shard {
            wm: i64::MIN,
            lanes: Vec::new(),
            c: ShardCounters::default(),
            ids: GenSet::new(cx.dedupe_horizon),
            orders: GenSet::new(cx.order_horizon),
            site: vec![MoneyAgg::default(); site_lengths.len()],
            site_ring: Ring::new(site_lengths),
            traffic_ring: Ring::new(race.clone()),
            pay_ring: Ring::new(race),
            pairs: Vec::new(),
            slots: Vec::new(),
            buyer_marks: HashMap::new(),
            venues: Vec::new(),
            channels: Vec::new(),
            sk: Sketches::new(cx),
            minutes: BTreeMap::new(),
            phase_gmv: vec![0; cx.phases.len()],
            plan_gmv: 0,
            hist: ShardHistory::new(new_lineage()),
            dirty: Vec::new(),
            all_dirty: true,
            touched_buyers: None,
        }
    }

    /// That a shard read from a checkpoint has the layout [`Shard::new`] gives for `cx` and
    /// points only at names and entries that exist: everything the code indexes by or divides
    /// by is checked, so a payload that passed the checksum without having been written by
    /// this build is refused instead of panicking later. (The numbers themselves are trusted:
    /// the checksum vouches for them.)
    pub(crate) fn check(&self, cx: &Ctx, n: &NameCounts) -> Result<(), String> {
        let fresh = Shard::new(cx);
        self.ids.check(cx.dedupe_horizon)?;
        self.orders.check(cx.order_horizon)?;
        let site_len = fresh.site.len();
        if self.site.len() != site_len {
            return Err(format!("site windows: {}, not {site_len}", self.site.len()));
        }
        let money_ok = |m: &[MoneyAgg]| m.is_empty() || m.len() == site_len;
        if self.pairs.len() > n.pairs || self.slots.len() > n.slots || self.venues.len() > n.venues {
            return Err("more pairs, slots or venues than names".into());
        }
        if self.channels.len() > n.channels {
            return Err("more channels than names".into());
        }
        for p in &self.pairs {
            if !money_ok(&p.money) || (p.slot != NONE && p.slot as usize >= n.slots) {
                return Err("a pair's windows or slot out of range".into());
            }
        }
        if self.slots.iter().any(|s| s.merchant != NONE && s.merchant as usize >= n.merchants) {
            return Err("a slot's merchant out of range".into());
        }
        for v in &self.venues {
            if !money_ok(&v.money) {
                return Err("a venue's windows out of range".into());
            }
            for h in v.sketches.iter().flat_map(|b| b.iter()) {
                h.check(12)?;
            }
        }
        if self.buyer_marks.keys().any(|&(slot, _)| slot as usize >= self.slots.len()) {
            return Err("a buyer mark's slot out of range".into());
        }
        self.sk.check(cx)?;
        let (pairs, venues) = (&self.pairs, &self.venues);
        let pair_money = |i: u32| pairs.get(i as usize).is_none_or(|p| p.money.len() == site_len);
        self.site_ring.check(fresh.site_ring.lengths(), |r| {
            let venue_ok = venues.get(r.venue as usize).is_none_or(|v| v.money.len() == site_len);
            if venue_ok && pair_money(r.pair) {
                Ok(())
            } else {
                Err("a payment's venue or pair without windows".into())
            }
        })?;
        let known = |pair: u32| {
            if (pair as usize) < pairs.len() {
                Ok(())
            } else {
                Err("a record's pair out of range".to_string())
            }
        };
        self.traffic_ring.check(fresh.traffic_ring.lengths(), |r| known(r.pair))?;
        self.pay_ring.check(fresh.pay_ring.lengths(), |r| known(r.pair))?;
        self.hist.check(n)
    }

    fn pair_mut(&mut self, pair: u32, slot: u32) -> &mut PairState {
        let i = pair as usize;
        let empty = PairState {
            slot: NONE,
            cum: PairCum::default(),
            win: [PairWin::default(); 2],
            money: Vec::new(),
            dirty: false,
        };
        grow(&mut self.pairs, i + 1, empty);
        let p = &mut self.pairs[i];
        p.slot = slot;
        touch(p, &mut self.dirty, pair);
        p
    }

    fn slot_mut(&mut self, slot: u32) -> &mut SlotMeta {
        let i = slot as usize;
        grow(&mut self.slots, i + 1, SlotMeta::default());
        &mut self.slots[i]
    }

    fn venue_mut(&mut self, venue: u32) -> &mut VenueState {
        let i = venue as usize;
        while self.venues.len() <= i {
            self.venues.push(VenueState { seen: false, gmv: 0, orders: 0, money: Vec::new(), sketches: None });
        }
        let v = &mut self.venues[i];
        v.seen = true;
        v
    }

    fn channel_mut(&mut self, channel: u32) -> &mut ChannelAgg {
        let i = channel as usize;
        grow(&mut self.channels, i + 1, ChannelAgg::default());
        &mut self.channels[i]
    }

    fn lane_mut(&mut self, lane: u16) -> &mut Lane {
        let l = lane as usize;
        if self.lanes.len() <= l {
            self.lanes.resize(l + 1, Lane { wm: UNSEEN, idle: false });
        }
        &mut self.lanes[l]
    }

    /// The sketches' clock for `ts`, moving the epoch forwards when `ts` nears the top of the
    /// 32-bit span (every kept time is shifted back by as much; times that fall below the new
    /// epoch become "long ago", which they are: more than 24 days before the newest event).
    #[inline]
    fn rel(&mut self, ts: i64) -> u32 {
        if self.sk.epoch == UNSEEN || ts - self.sk.epoch >= SPAN_MS - EPOCH_MARGIN_MS {
            self.rebase(ts);
        }
        (ts - self.sk.epoch).clamp(1, u32::MAX as i64) as u32
    }

    #[cold]
    fn rebase(&mut self, ts: i64) {
        let epoch = ts.div_euclid(DAY_MS) * DAY_MS - EPOCH_LEAD_MS;
        if self.sk.epoch != UNSEEN {
            let by = epoch - self.sk.epoch;
            for s in &mut self.sk.sliding {
                s.shift_back(by.clamp(0, u32::MAX as i64) as u32);
            }
        }
        self.sk.epoch = epoch;
    }

    /// Prefetches what [`Shard::apply`] of `ev` will touch at random: its id-set slot (a pay's
    /// order slots) and its distinct-count register. On a dense night the id sets are far
    /// larger than the caches and the sliding sketches' registers miss too; the writer asks a
    /// few events ahead.
    #[inline]
    pub fn prefetch(&self, ev: &Prepared) {
        self.ids.prefetch_at(ev.id, ev.ts);
        match ev.kind {
            EventKind::Impression => self.sk.sliding[UV].prefetch(ev.user),
            EventKind::Click => self.sk.sliding[IPV].prefetch(ev.user),
            EventKind::Pay => {
                self.orders.prefetch_any(ev.order);
                self.sk.sliding[BUYERS].prefetch(ev.user);
            }
            _ => {}
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, ev: &Prepared, cx: &Ctx, clock: Clock) -> Outcome {
        let lane = *self.lane_mut(ev.lane);
        if (lane.has_time() && ev.ts <= lane.wm.saturating_sub(cx.dedupe_horizon)) || ev.ts < self.ids.frontier() {
            // Older than its lane's horizon, or than ids this shard has already forgotten (a
            // lane that went idle and came back): it cannot be checked for a re-delivery.
            self.c.beyond_horizon += 1;
            self.lanes[ev.lane as usize].idle = false;
            return Outcome::BeyondHorizon;
        }
        if !self.ids.insert_at(ev.id, ev.ts) {
            self.c.duplicates += 1;
            self.lanes[ev.lane as usize].idle = false;
            return Outcome::Duplicate;
        }
        self.c.accepted += 1;
        // An event stamped ahead of the cap counts, but moves no watermark past it.
        let t_wm = ev.ts.min(clock.cap);
        self.lanes[ev.lane as usize] = Lane { wm: if lane.has_time() { lane.wm.max(t_wm) } else { t_wm }, idle: false };
        if ev.ts < self.wm {
            self.c.late += 1;
            if ev.ts <= self.wm - cx.longest() {
                self.c.too_late += 1;
            }
        } else if t_wm.div_euclid(1000) != self.wm.div_euclid(1000) {
            // Expire lazily, once per new second: the insert rule tolerates a lagging ring.
            self.advance(t_wm);
            self.evict_ids(cx);
        }
        self.wm = self.wm.max(t_wm);

        let ms = ev.ts.rem_euclid(1000) as u16;
        let t = self.rel(ev.ts);
        if ev.pair != NONE {
            self.pair_mut(ev.pair, ev.slot).cum.seen = true;
            let meta = self.slot_mut(ev.slot);
            if ev.merchant != NONE && (ev.ts, ev.seq) >= meta.merchant_at {
                meta.merchant = ev.merchant;
                meta.merchant_at = (ev.ts, ev.seq);
            }
        }
        if ev.venue != NONE {
            self.venue_mut(ev.venue);
        }
        match ev.kind {
            EventKind::Impression | EventKind::Click => {
                let click = ev.kind == EventKind::Click;
                let metric = if click { IPV } else { UV };
                if click {
                    self.c.clicks += 1;
                } else {
                    self.c.impressions += 1;
                }
                self.sk.sliding[metric].insert(ev.user, t);
                self.sk.totals[metric].insert(ev.user);
                if cx.history {
                    let h = self.hist.at(ev.ts);
                    h.add(ev, |c| if click { c.clicks += 1 } else { c.impressions += 1 });
                    h.distinct(ev, metric);
                }
                for p in &mut self.sk.prev {
                    p[if click { 1 } else { 0 }].insert(ev.user, ev.ts);
                }
                if ev.venue != NONE {
                    let v = self.venue_mut(ev.venue);
                    v.sketches.get_or_insert_with(venue_sketches)[metric].insert(ev.user);
                }
                if ev.channel != NONE {
                    let ch = self.channel_mut(ev.channel);
                    if click {
                        ch.clicks += 1;
                    } else {
                        ch.impressions += 1;
                    }
                }
                if ev.pair != NONE {
                    let p = &mut self.pairs[ev.pair as usize];
                    if click {
                        p.cum.clicks += 1;
                    } else {
                        p.cum.impressions += 1;
                    }
                    let win = &mut p.win;
                    self.traffic_ring.insert(ev.ts, TrafficRec { pair: ev.pair, ms, click }, |w| {
                        if click {
                            win[w].clicks += 1;
                        } else {
                            win[w].impressions += 1;
                        }
                    });
                }
            }
            EventKind::Favorite => {
                self.c.favorites += 1;
                if cx.history {
                    self.hist.at(ev.ts).add(ev, |c| c.favorites += 1);
                }
            }
            EventKind::Cart => {
                self.c.carts += 1;
                if cx.history {
                    self.hist.at(ev.ts).add(ev, |c| c.carts += 1);
                }
            }
            EventKind::Order => {
                self.c.orders_placed += 1;
                self.c.order_cents += ev.amount as u128;
                if cx.history {
                    self.hist.at(ev.ts).add(ev, |c| {
                        c.orders_placed += 1;
                        c.order_cents += ev.amount;
                    });
                }
            }
            EventKind::Refund => {
                self.c.refunds += 1;
                self.c.refund_cents += ev.amount as u128;
                if cx.history {
                    self.hist.at(ev.ts).add(ev, |c| {
                        c.refunds += 1;
                        c.refund_cents += ev.amount;
                    });
                }
            }
            EventKind::Pay => self.apply_pay(ev, cx, ms, t),
        }
        Outcome::Accepted
    }

    fn apply_pay(&mut self, ev: &Prepared, cx: &Ctx, ms: u16, t: u32) {
        if self.orders.contains_any(ev.order) || !self.orders.insert_at(ev.order, ev.ts) {
            self.c.resent_pays += 1;
            return;
        }
        let amount = ev.amount;
        self.c.gmv += amount as u128;
        self.c.paid_orders += 1;
        self.c.coupon_cents += ev.coupon as u128;
        self.minutes.entry(ev.ts.div_euclid(60_000)).or_default().add(amount);
        if cx.history {
            let h = self.hist.at(ev.ts);
            h.add(ev, |c| {
                c.gmv += amount;
                c.paid_orders += 1;
                c.coupons += (ev.coupon > 0) as u64;
                c.coupon_cents += ev.coupon;
            });
            h.distinct(ev, BUYERS);
        }
        self.sk.sliding[BUYERS].insert(ev.user, t);
        self.sk.totals[BUYERS].insert(ev.user);
        for p in &mut self.sk.prev {
            p[2].insert(ev.user, ev.ts);
        }
        if ev.channel != NONE {
            let ch = self.channel_mut(ev.channel);
            ch.paid_orders += 1;
            ch.gmv += amount as u128;
        }
        let n = self.site.len();
        if ev.venue != NONE {
            let v = self.venue_mut(ev.venue);
            v.gmv += amount as u128;
            v.orders += 1;
            v.sketches.get_or_insert_with(venue_sketches)[BUYERS].insert(ev.user);
            if v.money.is_empty() {
                v.money = vec![MoneyAgg::default(); n];
            }
        }
        if ev.pair != NONE {
            let p = &mut self.pairs[ev.pair as usize];
            if p.money.is_empty() {
                p.money = vec![MoneyAgg::default(); n];
            }
            p.cum.gmv += amount as u128;
            p.cum.orders += 1;
        }
        let (site, venues, pairs) = (&mut self.site, &mut self.venues, &mut self.pairs);
        self.site_ring.insert(ev.ts, PayRec { ms, venue: ev.venue, pair: ev.pair, amount }, |w| {
            site[w].add(amount);
            if let Some(v) = venues.get_mut(ev.venue as usize) {
                v.money[w].add(amount);
            }
            if let Some(p) = pairs.get_mut(ev.pair as usize) {
                p.money[w].add(amount);
            }
        });
        if let Some(i) = cx.phases.iter().position(|&(s, e)| s <= ev.ts && ev.ts < e) {
            self.phase_gmv[i] += amount as u128;
        }
        if cx.plan_range.is_some_and(|(s, e)| s <= ev.ts && ev.ts < e) {
            self.plan_gmv += amount as u128;
        }
        if ev.pair != NONE {
            let key = (ev.slot, ev.user);
            keep_half_free(&mut self.buyer_marks);
            let mark = self.buyer_marks.entry(key).or_insert(BuyerMark { latest: ev.ts, mask: 0 });
            mark.latest = mark.latest.max(ev.ts);
            if let Some(t) = &mut self.touched_buyers {
                t.push(key);
            }
            let win = &mut self.pairs[ev.pair as usize].win;
            let buyers = &mut self.slots[ev.slot as usize].buyers;
            self.pay_ring.insert(ev.ts, SlotPayRec { pair: ev.pair, ms, amount, user: ev.user }, |w| {
                win[w].gmv += amount as u128;
                win[w].orders += 1;
                if mark.mask & (1 << w) == 0 {
                    mark.mask |= 1 << w;
                    buyers[w] += 1;
                }
            });
            if mark.mask == 0 {
                self.buyer_marks.remove(&key);
            }
        }
    }

    /// Forgets ids no active lane can still see again: those more than the horizon behind the
    /// slowest lane. A lane its source declared idle (caught up, nothing to deliver: a quiet
    /// partition) holds nothing back; should it deliver again, anything older than what was
    /// forgotten meanwhile is refused (`ids.frontier()` in [`Shard::apply`]).
    fn evict_ids(&mut self, cx: &Ctx) {
        let active = |l: &&Lane| l.wm != RETIRED && l.wm != UNSEEN && !l.idle;
        let Some(low) = self.lanes.iter().filter(active).map(|l| l.wm).min() else { return };
        if low == OPEN {
            return; // a lane just assigned: wait for its first events (or for it to go idle)
        }
        self.ids.evict_before(low.saturating_sub(cx.dedupe_horizon));
        self.orders.evict_before(low.saturating_sub(cx.order_horizon));
    }

    /// Marks `lane` idle (its source found it caught up and silent) or not. A delivery on it
    /// clears the mark by itself.
    pub fn set_idle(&mut self, lane: u16, idle: bool) {
        self.lane_mut(lane).idle = idle;
    }

    /// Declares `lane` open before its first event (a partition just assigned): until it has
    /// delivered or been declared idle, it holds back the eviction of old ids, so that a re-delivery
    /// arriving on it late still finds its original, whichever lane that came through.
    pub fn open_lane(&mut self, lane: u16) {
        let l = self.lane_mut(lane);
        if l.wm == UNSEEN || l.wm == RETIRED {
            *l = Lane { wm: OPEN, idle: false };
        }
    }

    /// Stops waiting for `lane` (its partition went to another member): it no longer holds
    /// back the eviction of old ids. It comes back by itself if events arrive on it again.
    pub fn retire_lane(&mut self, lane: u16) {
        if let Some(l) = self.lanes.get_mut(lane as usize) {
            l.wm = RETIRED;
        }
    }

    /// Expires window records up to `wm`.
    fn advance(&mut self, wm: i64) {
        let (site, venues, pairs, dirty) = (&mut self.site, &mut self.venues, &mut self.pairs, &mut self.dirty);
        self.site_ring.advance(wm, |w, r| {
            site[w].sub(r.amount);
            if let Some(v) = venues.get_mut(r.venue as usize) {
                v.money[w].sub(r.amount);
            }
            if let Some(p) = pairs.get_mut(r.pair as usize) {
                p.money[w].sub(r.amount);
                touch(p, dirty, r.pair);
            }
        });
        self.traffic_ring.advance(wm, |w, r| {
            let p = &mut pairs[r.pair as usize];
            touch(p, dirty, r.pair);
            let s = &mut p.win[w];
            if r.click {
                s.clicks -= 1;
            } else {
                s.impressions -= 1;
            }
        });
        let edges: [i64; 2] = [wm - self.pay_ring.lengths()[0], wm - self.pay_ring.lengths()[1]];
        let (marks, slots) = (&mut self.buyer_marks, &mut self.slots);
        self.pay_ring.advance(wm, |w, r| {
            let p = &mut pairs[r.pair as usize];
            touch(p, dirty, r.pair);
            p.win[w].gmv -= r.amount as u128;
            p.win[w].orders -= 1;
            let key = (p.slot, r.user);
            if let Some(m) = marks.get_mut(&key) {
                if m.mask & (1 << w) != 0 && m.latest <= edges[w] {
                    m.mask &= !(1 << w);
                    slots[p.slot as usize].buyers[w] -= 1;
                }
                if m.mask == 0 {
                    marks.remove(&key);
                }
            }
        });
    }

    /// Makes the next delta carry every pair (a reader starting from nothing), and every
    /// slot buyer if they are tracked.
    pub fn mark_all_dirty(&mut self) {
        self.all_dirty = true;
        if let Some(t) = &mut self.touched_buyers {
            t.clear();
            t.extend(self.buyer_marks.keys().copied());
        }
    }

    /// Keeps the slot buyers changed between deltas for a reader elsewhere: a partition's
    /// buyers overlap other partitions' (pays are keyed by order), so their per-slot counts
    /// cannot be added up; the reader counts the union ([`crate::partial`]).
    pub fn track_buyers(&mut self) {
        if self.touched_buyers.is_none() {
            self.touched_buyers = Some(self.buyer_marks.keys().copied().collect());
        }
    }

    /// Brings the windows to `as_of` and hands out what changed since the previous delta (see
    /// [`ShardDelta`]). Cost: the changed pairs, the venues and channels, and the summary's
    /// sketch estimates; not the shard's slot count.
    pub fn delta(&mut self, as_of: i64, cx: &Ctx) -> ShardDelta {
        self.delta_with(as_of, cx, true)
    }

    /// [`Shard::delta`], with the summary's distinct counts left at zero unless `distinct`:
    /// a reader of partials counts them from the union of the sketches, and estimating a
    /// shard's own is most of a delta's cost.
    pub fn delta_with(&mut self, as_of: i64, cx: &Ctx, distinct: bool) -> ShardDelta {
        let summary = self.summarize_with(as_of, cx, distinct);
        let nw = cx.windows.len();
        let mut d = ShardDelta { as_of, summary, ..ShardDelta::default() };
        if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            self.dirty.extend((0..self.pairs.len() as u32).filter(|&i| self.pairs[i as usize].slot != NONE));
        }
        d.pairs = std::mem::take(&mut self.dirty);
        d.pair_cum.reserve_exact(d.pairs.len());
        d.pair_win.reserve_exact(d.pairs.len());
        d.pair_money.reserve_exact(d.pairs.len() * nw);
        d.slots.reserve_exact(d.pairs.len());
        for &i in &d.pairs {
            let p = &mut self.pairs[i as usize];
            p.dirty = false;
            d.pair_cum.push(p.cum);
            d.pair_win.push(p.win);
            // Current windows only: the money vector holds [L0, 2*L0, L1, 2*L1, ...].
            let money = p.money.iter().step_by(2).copied().chain(std::iter::repeat(MoneyAgg::default()));
            d.pair_money.extend(money.take(nw));
            d.slots.push((p.slot, self.slots.get(p.slot as usize).copied().unwrap_or_default()));
        }
        d.venues = self
            .venues
            .iter()
            .map(|v| {
                let mut distinct = [0; 3];
                if let Some(s) = &v.sketches {
                    for (d, h) in distinct.iter_mut().zip(s.iter()) {
                        *d = h.estimate();
                    }
                }
                VenueSum { seen: v.seen, gmv: v.gmv, orders: v.orders, distinct }
            })
            .collect();
        for v in &self.venues {
            let money = v.money.iter().step_by(2).copied().chain(std::iter::repeat(MoneyAgg::default()));
            d.venue_money.extend(money.take(nw));
        }
        d.channels = self.channels.clone();
        if let Some(t) = &mut self.touched_buyers {
            t.sort_unstable();
            t.dedup();
            let marks = &self.buyer_marks;
            d.buyers = t.drain(..).filter_map(|k| marks.get(&k).map(|m| (k.0, k.1, m.latest))).collect();
        }
        d
    }

    /// Recomputes the phases' and the plan's GMV from the minute series, for a plan that may
    /// differ from the one the events were applied under (a restore after the plan changed).
    /// Exact when the phase bounds are whole minutes (the plan's validation requires it).
    pub fn replan(&mut self, cx: &Ctx) {
        let sum = |s: i64, e: i64| -> u128 {
            self.minutes.range(s.div_euclid(60_000)..e.div_euclid(60_000)).map(|(_, m)| m.gmv).sum()
        };
        self.phase_gmv = cx.phases.iter().map(|&(s, e)| sum(s, e)).collect();
        self.plan_gmv = cx.plan_range.map_or(0, |(s, e)| sum(s, e));
    }

    /// Brings the windows to `as_of` (the global watermark, >= this shard's) and reads out
    /// the mergeable summary. Cost: O(slots + venues + sketch registers), not O(events).
    pub fn summarize(&mut self, as_of: i64, cx: &Ctx) -> ShardSummary {
        self.summarize_with(as_of, cx, true)
    }

    fn summarize_with(&mut self, as_of: i64, cx: &Ctx, distinct: bool) -> ShardSummary {
        if as_of != i64::MIN {
            self.advance(as_of);
        }
        let distinct = if distinct { self.sk.distinct(as_of, cx) } else { Distinct::zero(cx.windows.len()) };
        let windows = (0..cx.windows.len())
            .map(|k| {
                let cur = self.site[2 * k];
                let both = self.site[2 * k + 1];
                (cur, MoneyAgg { gmv: both.gmv - cur.gmv, orders: both.orders - cur.orders })
            })
            .collect();
        ShardSummary {
            wm: self.wm,
            c: self.c,
            windows,
            distinct,
            phase_gmv: self.phase_gmv.clone(),
            plan_gmv: self.plan_gmv,
            dedupe_ids: self.ids.len() as u64,
            dedupe_orders: self.orders.len() as u64,
            window_records: (self.site_ring.kept() + self.traffic_ring.kept() + self.pay_ring.kept()) as u64,
            buyer_marks: self.buyer_marks.len() as u64,
            state_bytes: self.ids.allocated_bytes()
                + self.orders.allocated_bytes()
                + self.site_ring.allocated_bytes()
                + self.traffic_ring.allocated_bytes()
                + self.pay_ring.allocated_bytes()
                + self.buyer_marks.allocation_size() as u64
                + (self.minutes.len() * (8 + std::mem::size_of::<MoneyAgg>() + 16)) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Ctx {
        Ctx {
            dedupe_horizon: 3_600_000,
            order_horizon: 3_600_000,
            windows: vec![60_000],
            race_window: 60_000,
            phases: vec![],
            plan_range: None,
            history: true,
        }
    }

    fn ev(id: u128, ts: i64, lane: u16) -> Prepared {
        Prepared {
            id,
            order: 0,
            user: xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()),
            ts,
            seq: id as u64,
            amount: 0,
            coupon: 0,
            slot: NONE,
            venue: NONE,
            merchant: NONE,
            pair: NONE,
            channel: NONE,
            kind: EventKind::Impression,
            lane,
        }
    }

    #[test]
    fn prepared_stays_96_bytes() {
        assert_eq!(std::mem::size_of::<Prepared>(), 96);
    }

    #[test]
    fn an_event_ahead_of_the_cap_moves_no_window() {
        let cx = cx();
        let mut s = Shard::new(&cx);
        let now = 1_800_000_000_000;
        let clock = Clock { now, cap: now };
        for k in 0..50 {
            let mut e = ev(k, now - 50_000 + k as i64 * 1000, 0);
            e.kind = EventKind::Pay;
            e.order = k + 1;
            e.amount = 100;
            s.apply(&e, &cx, clock);
        }
        // One pay stamped 90 s ahead (inside a 2-minute allowance).
        let mut f = ev(1000, now + 90_000, 0);
        (f.kind, f.order, f.amount) = (EventKind::Pay, 9999, 7);
        assert_eq!(s.apply(&f, &cx, clock), Outcome::Accepted);
        let sum = s.summarize(now, &cx);
        assert_eq!(sum.windows[0].0.gmv, 50 * 100 + 7, "the 1-minute window still holds the live pays");
        assert_eq!(s.wm, now, "the watermark stopped at the wall clock");
    }

    #[test]
    fn the_sketch_clock_is_not_fixed_by_a_first_event_far_in_the_past() {
        let cx = cx();
        let mut s = Shard::new(&cx);
        s.apply(&ev(1, 5, 0), &cx, Clock::EVENT_TIME); // 1970
        let now = 1_800_000_000_000;
        for k in 0..1000u128 {
            s.apply(&ev(10 + k, now - 30_000 + k as i64, 1), &cx, Clock::EVENT_TIME);
        }
        let sum = s.summarize(now, &cx);
        let uv = sum.distinct.windows[0][UV];
        assert!((980..=1020).contains(&uv), "1-minute UV {uv}, want ~1000");
    }

    #[test]
    fn an_idle_lane_stops_holding_back_eviction_and_cannot_sneak_in_old_events() {
        let mut cx = cx();
        cx.dedupe_horizon = 70_000; // generations of 10 s
        let mut s = Shard::new(&cx);
        let t0 = 1_800_000_000_000;
        s.open_lane(1); // assigned, never delivers
        for k in 0..600u128 {
            s.apply(&ev(k, t0 + k as i64 * 1000, 0), &cx, Clock::EVENT_TIME);
        }
        assert_eq!(s.ids.len(), 600, "an open lane holds eviction back until declared idle");
        s.set_idle(1, true); // its source found it caught up and silent
        for k in 600..1200u128 {
            s.apply(&ev(k, t0 + k as i64 * 1000, 0), &cx, Clock::EVENT_TIME);
        }
        assert!(s.ids.len() < 200, "an idle lane must not keep every id: {}", s.ids.len());
        // Lane 1 wakes up with a re-delivery of an event forgotten long ago: refused.
        assert_eq!(s.apply(&ev(3, t0 + 3000, 1), &cx, Clock::EVENT_TIME), Outcome::BeyondHorizon);
        // ... while a fresh event on it is taken, and it holds eviction back again.
        assert_eq!(s.apply(&ev(5000, t0 + 1_199_500, 1), &cx, Clock::EVENT_TIME), Outcome::Accepted);
        assert!(!s.lanes[1].idle);
    }
}
