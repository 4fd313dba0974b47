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

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use warroom_model::EventKind;

use crate::dedupe::GenSet;
use crate::hll::{BucketHll, Hll, SlidingHll, SLIDING_P};
use crate::intern::NONE;
use crate::mem::keep_half_free;
use crate::window::{Record, Ring};

/// An event reduced to what the engine needs: fixed size, no borrowed strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// xxh3-128 of `event_id`.
    pub id: u128,
    /// xxh3-128 of `order_id` (0 if none).
    pub order: u128,
    /// xxh3-64 of `user_id`: routing, sketches, buyers.
    pub user: u64,
    pub ts: i64,
    /// Position in the input (line number, or offset): breaks ties of "newest event".
    pub seq: u64,
    pub amount: u64,
    pub coupon: u64,
    pub slot: u32,
    pub venue: u32,
    pub merchant: u32,
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
    pub epoch: i64,
    pub dedupe_horizon: i64,
    pub order_horizon: i64,
    /// Reported windows (ms).
    pub windows: Vec<i64>,
    pub race_window: i64,
    pub phases: Vec<(i64, i64)>,
    pub plan_range: Option<(i64, i64)>,
}

impl Ctx {
    #[inline]
    fn rel(&self, ts: i64) -> u32 {
        (ts - self.epoch).clamp(1, u32::MAX as i64) as u32
    }

    fn longest(&self) -> i64 {
        self.windows.iter().copied().max().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PayRec {
    ms: u16,
    venue: u32,
    slot: u32,
    amount: u64,
}

impl Record for PayRec {
    fn ms(&self) -> u16 {
        self.ms
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TrafficRec {
    slot: u32,
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
    slot: u32,
    ms: u16,
    amount: u64,
    user: u64,
}

impl Record for SlotPayRec {
    fn ms(&self) -> u16 {
        self.ms
    }
}

/// Site money in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyAgg {
    pub gmv: u64,
    pub orders: u64,
}

/// A slot's numbers in one race window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotWin {
    pub gmv: u64,
    pub orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub buyers: u64,
}

/// A slot's cumulative numbers and its newest merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCum {
    pub seen: bool,
    pub gmv: u64,
    pub orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub merchant: u32,
    pub merchant_at: (i64, u64),
}

impl Default for SlotCum {
    fn default() -> Self {
        SlotCum {
            seen: false,
            gmv: 0,
            orders: 0,
            impressions: 0,
            clicks: 0,
            merchant: NONE,
            merchant_at: (i64::MIN, 0),
        }
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
    gmv: u64,
    orders: u64,
    /// uv, ipv_uv, buyers since start (precision 12: standard error 1.6%; venue-level
    /// numbers are not in the contract and must stay cache-resident).
    sketches: Option<Box<[Hll; 3]>>,
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
    pub gmv: u64,
    pub paid_orders: u64,
    pub refunds: u64,
    pub refund_cents: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub favorites: u64,
    pub carts: u64,
    pub orders_placed: u64,
    pub order_cents: u64,
    pub coupon_cents: u64,
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

fn venue_sketches() -> Box<[Hll; 3]> {
    Box::new([Hll::new(12), Hll::new(12), Hll::new(12)])
}

const UV: usize = 0;
const IPV: usize = 1;
const BUYERS: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct Shard {
    wm: i64,
    /// Newest accepted `ts` per lane (`i64::MIN`: not seen; `RETIRED`: given up).
    lanes: Vec<i64>,
    pub c: ShardCounters,
    ids: GenSet,
    orders: GenSet,
    /// Site payments; windows [L0, 2*L0, L1, 2*L1, ...].
    site_ring: Ring<PayRec>,
    site: Vec<MoneyAgg>,
    /// The same windows per venue and per slot (money only: payments are few).
    venue_money: Vec<Vec<MoneyAgg>>,
    slot_money: Vec<Vec<MoneyAgg>>,
    /// Slot traffic and payments; windows [race, 2*race].
    traffic_ring: Ring<TrafficRec>,
    pay_ring: Ring<SlotPayRec>,
    slot_win: Vec<[SlotWin; 2]>,
    slot_cum: Vec<SlotCum>,
    buyer_marks: HashMap<(u32, u64), BuyerMark>,
    venues: Vec<VenueState>,
    sketches: [SlidingHll; 3],
    totals: [Hll; 3],
    /// Per reported window: uv, ipv, buyers per bucket of L/30, for the previous window.
    prev_sketches: Vec<[BucketHll; 3]>,
    phase_gmv: Vec<u64>,
    plan_gmv: u64,
}

/// The mergeable part of a shard, as of one watermark.
#[derive(Debug, Clone, Default)]
pub struct ShardSummary {
    pub wm: i64,
    pub c: ShardCounters,
    /// Per reported window: (current, previous) money.
    pub windows: Vec<(MoneyAgg, MoneyAgg)>,
    /// Distinct [uv, ipv, buyers] since start and per reported window.
    pub distinct_total: [u64; 3],
    pub distinct_windows: Vec<[u64; 3]>,
    /// Per reported window: distinct [uv, buyers] in the current and previous window, from
    /// the bucketed sketches (for the decomposition).
    pub formula: Vec<([u64; 2], [u64; 2])>,
    pub slot_cum: Vec<SlotCum>,
    /// Race window and double race window.
    pub slot_win: Vec<[SlotWin; 2]>,
    /// Per venue: seen, gmv, orders, [uv, ipv, buyers].
    pub venues: Vec<(bool, u64, u64, [u64; 3])>,
    /// Per venue and per slot: money in each reported window.
    pub venue_windows: Vec<Vec<MoneyAgg>>,
    pub slot_windows: Vec<Vec<MoneyAgg>>,
    pub phase_gmv: Vec<u64>,
    pub plan_gmv: u64,
    pub dedupe_ids: u64,
    pub dedupe_orders: u64,
    pub window_records: u64,
    pub buyer_marks: u64,
    /// Bytes allocated by the tables that grow with events (dedupe sets, window records,
    /// buyer marks); the rest of a shard is fixed by the configuration.
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
            venue_money: Vec::new(),
            slot_money: Vec::new(),
            site_ring: Ring::new(site_lengths),
            traffic_ring: Ring::new(race.clone()),
            pay_ring: Ring::new(race),
            slot_win: Vec::new(),
            slot_cum: Vec::new(),
            buyer_marks: HashMap::new(),
            venues: Vec::new(),
            sketches: [SlidingHll::new(), SlidingHll::new(), SlidingHll::new()],
            totals: [Hll::new(SLIDING_P), Hll::new(SLIDING_P), Hll::new(SLIDING_P)],
            prev_sketches: cx
                .windows
                .iter()
                .map(|&l| {
                    // 30 buckets per window: the previous window's edges are rounded to L/30.
                    let w = (l / 30).max(1);
                    [BucketHll::new(w, 61), BucketHll::new(w, 61), BucketHll::new(w, 61)]
                })
                .collect(),
            phase_gmv: vec![0; cx.phases.len()],
            plan_gmv: 0,
        }
    }

    fn slot_mut(&mut self, slot: u32) -> usize {
        let i = slot as usize;
        if self.slot_cum.len() <= i {
            self.slot_cum.resize(i + 1, SlotCum::default());
            self.slot_win.resize(i + 1, [SlotWin::default(); 2]);
        }
        i
    }

    fn venue_mut(&mut self, venue: u32) -> &mut VenueState {
        let i = venue as usize;
        while self.venues.len() <= i {
            self.venues.push(VenueState { seen: false, gmv: 0, orders: 0, sketches: None });
        }
        let v = &mut self.venues[i];
        v.seen = true;
        v
    }

    /// Applies one event.
    pub fn apply(&mut self, ev: &Prepared, cx: &Ctx) -> Outcome {
        let lane = ev.lane as usize;
        if self.lanes.len() <= lane {
            self.lanes.resize(lane + 1, i64::MIN);
        }
        let lane_wm = self.lanes[lane];
        if lane_wm != i64::MIN && lane_wm != RETIRED && ev.ts <= lane_wm.saturating_sub(cx.dedupe_horizon) {
            self.c.beyond_horizon += 1;
            return Outcome::BeyondHorizon;
        }
        if !self.ids.insert_at(ev.id, ev.ts) {
            self.c.duplicates += 1;
            return Outcome::Duplicate;
        }
        self.c.accepted += 1;
        self.lanes[lane] = if lane_wm == RETIRED { ev.ts } else { lane_wm.max(ev.ts) };
        if ev.ts < self.wm {
            self.c.late += 1;
            if ev.ts <= self.wm - cx.longest() {
                self.c.too_late += 1;
            }
        } else if ev.ts.div_euclid(1000) != self.wm.div_euclid(1000) {
            // Expire lazily, once per new second: the insert rule tolerates a lagging ring.
            self.advance(ev.ts);
            self.evict_ids(cx);
        }
        self.wm = self.wm.max(ev.ts);

        let ms = ev.ts.rem_euclid(1000) as u16;
        let t = cx.rel(ev.ts);
        let has_slot = ev.slot != NONE;
        if has_slot {
            let i = self.slot_mut(ev.slot);
            let cum = &mut self.slot_cum[i];
            cum.seen = true;
            if ev.merchant != NONE && (ev.ts, ev.seq) >= cum.merchant_at {
                cum.merchant = ev.merchant;
                cum.merchant_at = (ev.ts, ev.seq);
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
                self.sketches[metric].insert(ev.user, t);
                self.totals[metric].insert(ev.user);
                for p in &mut self.prev_sketches {
                    p[if click { 1 } else { 0 }].insert(ev.user, ev.ts);
                }
                if ev.venue != NONE {
                    let v = self.venue_mut(ev.venue);
                    v.sketches.get_or_insert_with(venue_sketches)[metric].insert(ev.user);
                }
                if has_slot {
                    let i = ev.slot as usize;
                    let cum = &mut self.slot_cum[i];
                    if click {
                        cum.clicks += 1;
                    } else {
                        cum.impressions += 1;
                    }
                    let win = &mut self.slot_win[i];
                    self.traffic_ring.insert(ev.ts, TrafficRec { slot: ev.slot, ms, click }, |w| {
                        if click {
                            win[w].clicks += 1;
                        } else {
                            win[w].impressions += 1;
                        }
                    });
                }
            }
            EventKind::Favorite => self.c.favorites += 1,
            EventKind::Cart => self.c.carts += 1,
            EventKind::Order => {
                self.c.orders_placed += 1;
                self.c.order_cents += ev.amount;
            }
            EventKind::Refund => {
                self.c.refunds += 1;
                self.c.refund_cents += ev.amount;
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
        self.c.gmv += amount;
        self.c.paid_orders += 1;
        self.c.coupon_cents += ev.coupon;
        self.sketches[BUYERS].insert(ev.user, t);
        self.totals[BUYERS].insert(ev.user);
        for p in &mut self.prev_sketches {
            p[2].insert(ev.user, ev.ts);
        }
        let n = self.site.len();
        for (table, i) in [(&mut self.venue_money, ev.venue), (&mut self.slot_money, ev.slot)] {
            if i != NONE && table.len() <= i as usize {
                table.resize(i as usize + 1, vec![MoneyAgg::default(); n]);
            }
        }
        let (site, venues, slots) = (&mut self.site, &mut self.venue_money, &mut self.slot_money);
        self.site_ring.insert(ev.ts, PayRec { ms, venue: ev.venue, slot: ev.slot, amount }, |w| {
            for m in [
                Some(&mut site[w]),
                venues.get_mut(ev.venue as usize).map(|v| &mut v[w]),
                slots.get_mut(ev.slot as usize).map(|v| &mut v[w]),
            ]
            .into_iter()
            .flatten()
            {
                m.gmv += amount;
                m.orders += 1;
            }
        });
        if let Some(i) = cx.phases.iter().position(|&(s, e)| s <= ev.ts && ev.ts < e) {
            self.phase_gmv[i] += amount;
        }
        if cx.plan_range.is_some_and(|(s, e)| s <= ev.ts && ev.ts < e) {
            self.plan_gmv += amount;
        }
        if ev.venue != NONE {
            let v = self.venue_mut(ev.venue);
            v.gmv += amount;
            v.orders += 1;
            v.sketches.get_or_insert_with(venue_sketches)[BUYERS].insert(ev.user);
        }
        if ev.slot != NONE {
            let i = ev.slot as usize;
            let cum = &mut self.slot_cum[i];
            cum.gmv += amount;
            cum.orders += 1;
            let key = (ev.slot, ev.user);
            keep_half_free(&mut self.buyer_marks);
            let mark = self.buyer_marks.entry(key).or_insert(BuyerMark { latest: ev.ts, mask: 0 });
            mark.latest = mark.latest.max(ev.ts);
            let win = &mut self.slot_win[i];
            self.pay_ring.insert(ev.ts, SlotPayRec { slot: ev.slot, ms, amount, user: ev.user }, |w| {
                win[w].gmv += amount;
                win[w].orders += 1;
                if mark.mask & (1 << w) == 0 {
                    mark.mask |= 1 << w;
                    win[w].buyers += 1;
                }
            });
            if mark.mask == 0 {
                self.buyer_marks.remove(&key);
            }
        }
    }

    /// Forgets ids no lane can still see again: those more than the horizon behind the slowest
    /// active lane.
    fn evict_ids(&mut self, cx: &Ctx) {
        let Some(low) = self.lanes.iter().copied().filter(|&w| w != i64::MIN && w != RETIRED).min() else { return };
        self.ids.evict_before(low.saturating_sub(cx.dedupe_horizon));
        self.orders.evict_before(low.saturating_sub(cx.order_horizon));
    }

    /// Declares `lane` open before its first event (a partition just assigned): until it has
    /// delivered, it holds back the eviction of old ids, so that a re-delivery arriving on it
    /// late still finds its original, whichever lane that came through.
    pub fn open_lane(&mut self, lane: u16) {
        let l = lane as usize;
        if self.lanes.len() <= l {
            self.lanes.resize(l + 1, i64::MIN);
        }
        if self.lanes[l] == i64::MIN || self.lanes[l] == RETIRED {
            self.lanes[l] = OPEN;
        }
    }

    /// Stops waiting for `lane` (its partition went to another member): it no longer holds
    /// back the eviction of old ids. It comes back by itself if events arrive on it again.
    pub fn retire_lane(&mut self, lane: u16) {
        if let Some(w) = self.lanes.get_mut(lane as usize) {
            *w = RETIRED;
        }
    }

    /// Expires window records up to `wm`.
    fn advance(&mut self, wm: i64) {
        let (site, venues, slots) = (&mut self.site, &mut self.venue_money, &mut self.slot_money);
        self.site_ring.advance(wm, |w, r| {
            for m in [
                Some(&mut site[w]),
                venues.get_mut(r.venue as usize).map(|v| &mut v[w]),
                slots.get_mut(r.slot as usize).map(|v| &mut v[w]),
            ]
            .into_iter()
            .flatten()
            {
                m.gmv -= r.amount;
                m.orders -= 1;
            }
        });
        let slot_win = &mut self.slot_win;
        self.traffic_ring.advance(wm, |w, r| {
            let s = &mut slot_win[r.slot as usize][w];
            if r.click {
                s.clicks -= 1;
            } else {
                s.impressions -= 1;
            }
        });
        let edges: Vec<i64> = self.pay_ring.lengths().iter().map(|l| wm - l).collect();
        let marks = &mut self.buyer_marks;
        self.pay_ring.advance(wm, |w, r| {
            let s = &mut slot_win[r.slot as usize][w];
            s.gmv -= r.amount;
            s.orders -= 1;
            let key = (r.slot, r.user);
            if let Some(m) = marks.get_mut(&key) {
                if m.mask & (1 << w) != 0 && m.latest <= edges[w] {
                    m.mask &= !(1 << w);
                    s.buyers -= 1;
                }
                if m.mask == 0 {
                    marks.remove(&key);
                }
            }
        });
    }

    /// Brings the windows to `as_of` (the global watermark, >= this shard's) and reads out
    /// the mergeable summary. Cost: O(slots + venues + sketch registers), not O(events).
    pub fn summarize(&mut self, as_of: i64, cx: &Ctx) -> ShardSummary {
        if as_of != i64::MIN {
            self.advance(as_of);
        }
        let rel = |t: i64| if t <= cx.epoch { 0 } else { cx.rel(t) };
        let starts: Vec<u32> = cx.windows.iter().map(|&l| rel(as_of - l)).collect();
        let est: Vec<Vec<u64>> = self.sketches.iter().map(|s| s.estimate(&starts)).collect();
        let distinct_total = [self.totals[UV].estimate(), self.totals[IPV].estimate(), self.totals[BUYERS].estimate()];
        let distinct_windows = (0..cx.windows.len()).map(|k| [est[UV][k], est[IPV][k], est[BUYERS][k]]).collect();
        let formula = cx
            .windows
            .iter()
            .zip(&self.prev_sketches)
            .map(|(&l, p)| {
                (
                    [p[0].estimate(as_of - l, as_of), p[2].estimate(as_of - l, as_of)],
                    [p[0].estimate(as_of - 2 * l, as_of - l), p[2].estimate(as_of - 2 * l, as_of - l)],
                )
            })
            .collect();
        let windows = (0..cx.windows.len())
            .map(|k| {
                let cur = self.site[2 * k];
                let both = self.site[2 * k + 1];
                (cur, MoneyAgg { gmv: both.gmv - cur.gmv, orders: both.orders - cur.orders })
            })
            .collect();
        let venues = self
            .venues
            .iter()
            .map(|v| {
                let d = v.sketches.as_ref().map_or([0; 3], |s| [s[0].estimate(), s[1].estimate(), s[2].estimate()]);
                (v.seen, v.gmv, v.orders, d)
            })
            .collect();
        ShardSummary {
            wm: self.wm,
            c: self.c,
            windows,
            distinct_total,
            distinct_windows,
            formula,
            slot_cum: self.slot_cum.clone(),
            slot_win: self.slot_win.clone(),
            venue_windows: self.venue_money.iter().map(|v| v.iter().step_by(2).copied().collect()).collect(),
            slot_windows: self.slot_money.iter().map(|v| v.iter().step_by(2).copied().collect()).collect(),
            venues,
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
                + self.buyer_marks.allocation_size() as u64,
        }
    }
}
