//! The snapshot of SNAPSHOT.md: every view is built from it. Field names are the contract's;
//! fields beyond the contract are additions the contract allows ("more fields may be added").
//!
//! Money is `u128` cents: every amount is at most 10^12 cents, so sums of any number of events
//! a `u64` can count fit (JSON carries them as plain integers).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::PlanStatus;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Event time the snapshot stands at: the newest accepted `ts` (0 before any event).
    pub as_of_ms: i64,
    /// Wall-clock time (ms) this snapshot was published.
    pub published_at_ms: i64,
    /// Wall-clock time (ms) an accepted event was last applied: freshness of the pipeline,
    /// whatever the events' own times (0 before any event).
    pub last_event_at_ms: i64,
    pub totals: Totals,
    pub windows: Vec<WindowStats>,
    pub venues: Vec<VenueStats>,
    pub slots: Vec<SlotStats>,
    /// Every (slot, merchant) pair of the slots that more than one merchant (or none) named:
    /// a slot's money belongs to the merchant named on each event (contract v1.1, 商品更换),
    /// and a merchant's view takes its numbers from here for such slots. Empty when no slot
    /// changed hands.
    #[serde(default)]
    pub slot_merchants: Vec<SlotMerchantStats>,
    /// Traffic and money by channel (流量入口), since the start.
    #[serde(default)]
    pub channels: Vec<ChannelStats>,
    /// Funnel ratios since start.
    pub funnel: Funnel,
    /// First-formula decomposition of each window against the window before it.
    pub decomposition: Vec<Decomposition>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plan: Option<PlanStatus>,
    /// Rejected messages by reason.
    pub rejections: BTreeMap<String, u64>,
    pub counters: Counters,
    /// Present only in a rehearsal (演练): the data is a recorded night replayed with shifted
    /// times, not live trade. Every view shows it (the screen's banner).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rehearsal: Option<Rehearsal>,
}

impl Snapshot {
    /// The slot named `name`: a binary search (the slots are sorted by name).
    pub fn slot(&self, name: &str) -> Option<&SlotStats> {
        self.slots.binary_search_by(|s| s.slot.as_str().cmp(name)).ok().map(|i| &self.slots[i])
    }

    /// Whether `other` holds the same data, whatever its publish time: what tells a publish
    /// worth pushing from an idle tick, without copying either snapshot. The destructuring
    /// names every field, so a new field cannot be forgotten here.
    pub fn same_data(&self, other: &Snapshot) -> bool {
        let Snapshot {
            as_of_ms,
            published_at_ms: _,
            last_event_at_ms,
            totals,
            windows,
            venues,
            slots,
            slot_merchants,
            channels,
            funnel,
            decomposition,
            plan,
            rejections,
            counters,
            rehearsal,
        } = self;
        // Cheap scalars first: on a live night they differ and the comparison stops there.
        *as_of_ms == other.as_of_ms
            && *last_event_at_ms == other.last_event_at_ms
            && *totals == other.totals
            && *counters == other.counters
            && *windows == other.windows
            && *rejections == other.rejections
            && *funnel == other.funnel
            && *decomposition == other.decomposition
            && *plan == other.plan
            && *rehearsal == other.rehearsal
            && *channels == other.channels
            && *venues == other.venues
            && *slots == other.slots
            && *slot_merchants == other.slot_merchants
    }
}

/// The tag of a rehearsal run: a recorded night replayed through Kafka with its event times
/// (and the plan's phases) moved by `shift_ms`, at `speed` times real time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rehearsal {
    /// What the screens show, e.g. "REHEARSAL 演练 — not live data".
    pub label: String,
    /// Added to every recorded event time and to the plan's phases.
    pub shift_ms: i64,
    /// Replay speed (event time per real time), as given to `warroom rehearse`.
    pub speed: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub refund_cents: u128,
    pub uv: u64,
    pub ipv_uv: u64,
    pub buyers: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub favorites: u64,
    pub carts: u64,
    /// `order` events (placed, not yet paid) and their amount.
    pub orders_placed: u64,
    pub order_cents: u128,
    pub refunds: u64,
    /// Coupon subsidy on counted payments.
    pub coupon_cents: u128,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStats {
    pub length_ms: i64,
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub uv: u64,
    pub ipv_uv: u64,
    pub buyers: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VenueStats {
    pub venue: String,
    pub gmv_cents: u128,
    pub paid_orders: u64,
    /// Money of this venue in each reported window.
    pub windows: Vec<MoneyWindow>,
    pub uv: u64,
    pub ipv_uv: u64,
    pub buyers: u64,
    pub race: Race,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Race {
    pub window_ms: i64,
    pub rule: String,
    /// The rule's inputs, weights and the ranges that scaled them in this ranking: how each
    /// score is made (a merchant's gap to the slot above is split along them).
    #[serde(default)]
    pub terms: Vec<crate::race::RuleTerm>,
    pub ranking: Vec<RankEntry>,
    /// `race.merchant_gap` when this ranking was made: whether merchant views show gaps.
    #[serde(skip)]
    pub merchant_gap: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankEntry {
    pub rank: u32,
    pub slot: String,
    pub score: f64,
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub buyers: u64,
    /// GMV of the window before the race window (growth rules compare against it).
    pub prev_gmv_cents: u128,
    /// Paid orders and clicks of the window before the race window (`*_rise` rules).
    #[serde(default)]
    pub prev_paid_orders: u64,
    #[serde(default)]
    pub prev_clicks: u64,
    pub merchant_id: String,
}

impl RankEntry {
    /// The rule inputs this entry was scored from.
    pub fn inputs(&self) -> crate::race::RaceInputs {
        crate::race::RaceInputs {
            gmv: self.gmv_cents,
            paid_orders: self.paid_orders,
            buyers: self.buyers,
            impressions: self.impressions,
            clicks: self.clicks,
            prev_gmv: self.prev_gmv_cents,
            prev_orders: self.prev_paid_orders,
            prev_clicks: self.prev_clicks,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStats {
    pub slot: String,
    pub venue: String,
    pub merchant_id: String,
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    /// Money of this slot in each reported window.
    pub windows: Vec<MoneyWindow>,
}

/// One merchant's part of a slot that more than one merchant named: cumulative numbers, money
/// per window and the race window, all from the events naming this merchant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMerchantStats {
    pub slot: String,
    /// Empty for the slot's events that named no merchant.
    pub merchant_id: String,
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub windows: Vec<MoneyWindow>,
    /// This merchant's numbers in the race window (and the window before, for growth).
    pub race: PairRace,
}

/// A (slot, merchant) pair's numbers in the race window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRace {
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub prev_gmv_cents: u128,
}

/// Traffic and money that came in through one channel (流量入口).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub channel: String,
    pub impressions: u64,
    pub clicks: u64,
    pub paid_orders: u64,
    pub gmv_cents: u128,
}

/// Money in one sliding window (per venue, per slot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyWindow {
    pub length_ms: i64,
    pub gmv_cents: u128,
    pub paid_orders: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    /// IPV_UV / UV (浏览转化率).
    pub browse_conversion: f64,
    /// buyers / IPV_UV (购买转化率).
    pub purchase_conversion: f64,
    /// buyers / UV.
    pub conversion: f64,
    /// GMV / buyers (客单价), cents rounded down.
    pub aov_cents: u128,
}

impl Funnel {
    pub fn of(gmv: u128, uv: u64, ipv_uv: u64, buyers: u64) -> Funnel {
        let r = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Funnel {
            browse_conversion: r(ipv_uv, uv),
            purchase_conversion: r(buyers, ipv_uv),
            conversion: r(buyers, uv),
            aov_cents: gmv.checked_div(buyers as u128).unwrap_or(0),
        }
    }
}

/// One period of the first formula GMV = UV x conversion x AOV.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FormulaPeriod {
    pub gmv_cents: u128,
    pub uv: u64,
    pub buyers: u64,
    pub conversion: f64,
    pub aov_cents: u128,
}

/// How much of the GMV change between two adjacent windows came from each factor.
/// `traffic_cents + conversion_cents + aov_cents == delta_gmv_cents`, exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decomposition {
    pub length_ms: i64,
    pub current: FormulaPeriod,
    pub previous: FormulaPeriod,
    pub delta_gmv_cents: i128,
    pub traffic_cents: i128,
    pub conversion_cents: i128,
    pub aov_cents: i128,
    /// The factor that moved GMV most: "traffic", "conversion", "aov" or "none".
    pub main_factor: String,
}

/// Chain-substitution decomposition (traffic, then conversion, then order value). With
/// G = UV * (B/UV) * (G/B) the three effects telescope to G1 - G0; the first two are rounded to
/// cents and the order-value effect takes the remainder, so the sum stays exact. The change
/// and the effects are `i128` (GMV is `u128`); the effects are computed in `f64` (no overflow,
/// relative rounding 2^-53) and clamped into `i128` before the exact remainder is taken.
pub fn decompose(length_ms: i64, cur: (u128, u64, u64), prev: (u128, u64, u64)) -> Decomposition {
    let period = |(g, uv, b): (u128, u64, u64)| FormulaPeriod {
        gmv_cents: g,
        uv,
        buyers: b,
        conversion: if uv == 0 { 0.0 } else { b as f64 / uv as f64 },
        aov_cents: g.checked_div(b as u128).unwrap_or(0),
    };
    let (u1, b1) = (cur.1 as f64, cur.2 as f64);
    let (g0, u0, b0) = (prev.0 as f64, prev.1 as f64, prev.2 as f64);
    // Both are below 2^127 (sums of u64 counts of amounts <= 10^12): the difference fits.
    let delta = cur.0 as i128 - prev.0 as i128;
    let (traffic, conversion) = if prev.2 == 0 || prev.1 == 0 {
        // No buyers (or no traffic) before: the whole change is new conversion.
        (0i128, delta)
    } else {
        let t = (u1 - u0) * g0 / u0;
        let c = (b1 - u1 * b0 / u0) * g0 / b0;
        // Each effect is bounded by the GMVs involved; `as` saturates, never wraps.
        (t.round() as i128, c.round() as i128)
    };
    let aov = delta - traffic - conversion;
    let main_factor = [("traffic", traffic), ("conversion", conversion), ("aov", aov)]
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .max_by_key(|(_, v)| v.unsigned_abs())
        .map_or("none", |(n, _)| n)
        .to_string();
    Decomposition {
        length_ms,
        current: period(cur),
        previous: period(prev),
        delta_gmv_cents: delta,
        traffic_cents: traffic,
        conversion_cents: conversion,
        aov_cents: aov,
        main_factor,
    }
}

/// Counters that explain the totals: what arrived late, what was re-sent, what overflowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Accepted events older than the watermark of their shard when they arrived.
    pub late: u64,
    /// Accepted events too late for every window (counted in totals only).
    pub too_late_for_windows: u64,
    /// `pay` events for an order already paid: accepted, no GMV added.
    pub resent_pays: u64,
    /// Events naming a slot with another venue than the slot was first seen on.
    pub slot_venue_conflicts: u64,
    /// Ids currently remembered for de-duplication (event ids, paid orders).
    pub dedupe_ids: u64,
    pub dedupe_orders: u64,
    /// Records kept for exact windows.
    pub window_records: u64,
    /// (slot, buyer) pairs remembered to count each race window's buyers once.
    #[serde(default)]
    pub buyer_marks: u64,
    /// Bytes allocated by the state that grows with events (dedupe sets, window records,
    /// buyer marks, the minute series) and by the name tables (bounded by the engine's
    /// `max_*` limits): the part of RSS the input controls.
    #[serde(default)]
    pub state_bytes: u64,
    /// Of which the name tables (venues, slots, merchants, channels, slot-merchant pairs).
    #[serde(default)]
    pub names_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposition_sums_exactly() {
        for (cur, prev) in [
            ((1_000_000, 1000, 50), (800_000, 900, 40)),
            ((10, 3, 1), (999_999, 7, 3)),
            ((5_000, 100, 5), (0, 0, 0)),
            ((0, 0, 0), (5_000, 100, 5)),
            // Beyond any u64: the widths hold.
            ((u64::MAX as u128 * 1_000, 1_000_000, 900_000), (u64::MAX as u128 * 3, 2, 1)),
        ] {
            let d = decompose(60_000, cur, prev);
            assert_eq!(d.traffic_cents + d.conversion_cents + d.aov_cents, d.delta_gmv_cents, "{d:?}");
        }
    }

    #[test]
    fn pure_traffic_change_is_attributed_to_traffic() {
        // Twice the visitors, same conversion and order value.
        let d = decompose(60_000, (2_000, 200, 20), (1_000, 100, 10));
        assert_eq!(d.traffic_cents, 1_000);
        assert_eq!(d.conversion_cents, 0);
        assert_eq!(d.aov_cents, 0);
        assert_eq!(d.main_factor, "traffic");
    }

    #[test]
    fn pure_order_value_change_is_attributed_to_aov() {
        let d = decompose(60_000, (1_500, 100, 10), (1_000, 100, 10));
        assert_eq!((d.traffic_cents, d.conversion_cents, d.aov_cents), (0, 0, 500));
    }
}
