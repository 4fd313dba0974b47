//! What a caller may see of a snapshot. A merchant gets the document cut down to its own
//! slots (SNAPSHOT.md): its slots, totals and windows summed from them, and its slots' places
//! in each race. Nothing names or measures another merchant: a slot that changed hands
//! (商品更换) counts for each merchant only the events that named it. Site-wide figures (site totals,
//! funnel, decomposition, plan, rejections) all measure other merchants, so they are left out.
//! A subscription narrows further to one venue.

use std::collections::BTreeMap;

use serde::Serialize;
use warroom_engine::snapshot::{MoneyWindow, RankEntry, SlotMerchantStats, SlotStats};
use warroom_engine::{RankChange, Snapshot};

/// What a client asked to see (it can only narrow what its role allows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// Set for merchant callers (from the token, not from the client).
    pub merchant: Option<String>,
    pub venue: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MerchantSnapshot {
    pub as_of_ms: i64,
    pub published_at_ms: i64,
    pub last_event_at_ms: i64,
    pub merchant_id: String,
    pub totals: MerchantTotals,
    pub windows: Vec<MoneyWindow>,
    pub venues: Vec<MerchantVenue>,
    pub slots: Vec<SlotStats>,
    /// The rehearsal tag, as in the full snapshot (merchants see the banner too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<warroom_engine::snapshot::Rehearsal>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MerchantTotals {
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub slots: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MerchantVenue {
    pub venue: String,
    pub race: MerchantRace,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MerchantRace {
    pub window_ms: i64,
    pub rule: String,
    /// Only the slots this merchant holds now, with their true ranks.
    pub ranking: Vec<MerchantRankEntry>,
}

/// A merchant's slot in a race: its place, and the numbers of the merchant's own events in
/// the race window. For a slot that changed hands inside the window, the slot's score and
/// buyers measure the other merchant's events too, so they are left out (`null`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MerchantRankEntry {
    pub rank: u32,
    pub slot: String,
    pub score: Option<f64>,
    pub gmv_cents: u128,
    pub paid_orders: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub buyers: Option<u64>,
    pub prev_gmv_cents: u128,
    pub merchant_id: String,
}

/// The merchant's cut of a snapshot. Every number comes from events naming the merchant
/// (contract v1.1): a slot that changed hands contributes only this merchant's part of it.
pub fn merchant_view(snap: &Snapshot, merchant: &str, venue: Option<&str>) -> MerchantSnapshot {
    let in_venue = |v: &str| venue.is_none_or(|want| want == v);
    // Slots several merchants named: this merchant's part of each.
    let mut shared: BTreeMap<&str, Option<&SlotMerchantStats>> = BTreeMap::new();
    for p in &snap.slot_merchants {
        let e = shared.entry(p.slot.as_str()).or_default();
        if p.merchant_id == merchant {
            *e = Some(p);
        }
    }
    let mut slots: Vec<SlotStats> = Vec::new();
    for s in snap.slots.iter().filter(|s| in_venue(&s.venue)) {
        match shared.get(s.slot.as_str()) {
            Some(Some(p)) => slots.push(SlotStats {
                slot: s.slot.clone(),
                venue: s.venue.clone(),
                merchant_id: merchant.to_string(),
                gmv_cents: p.gmv_cents,
                paid_orders: p.paid_orders,
                impressions: p.impressions,
                clicks: p.clicks,
                windows: p.windows.clone(),
            }),
            Some(None) => {}
            None if s.merchant_id == merchant => slots.push(s.clone()),
            None => {}
        }
    }
    let mut totals = MerchantTotals::default();
    let mut windows: Vec<MoneyWindow> =
        snap.windows.iter().map(|w| MoneyWindow { length_ms: w.length_ms, ..Default::default() }).collect();
    for s in &slots {
        totals.gmv_cents += s.gmv_cents;
        totals.paid_orders += s.paid_orders;
        totals.impressions += s.impressions;
        totals.clicks += s.clicks;
        totals.slots += 1;
        for w in &s.windows {
            if let Some(t) = windows.iter_mut().find(|t| t.length_ms == w.length_ms) {
                t.gmv_cents += w.gmv_cents;
                t.paid_orders += w.paid_orders;
            }
        }
    }
    let entry = |e: &RankEntry| -> MerchantRankEntry {
        let own = MerchantRankEntry {
            rank: e.rank,
            slot: e.slot.clone(),
            score: Some(e.score),
            gmv_cents: e.gmv_cents,
            paid_orders: e.paid_orders,
            impressions: e.impressions,
            clicks: e.clicks,
            buyers: Some(e.buyers),
            prev_gmv_cents: e.prev_gmv_cents,
            merchant_id: e.merchant_id.clone(),
        };
        match shared.get(e.slot.as_str()) {
            None => own,
            Some(p) => {
                let r = p.map(|p| p.race).unwrap_or_default();
                let alone = (r.gmv_cents, r.paid_orders, r.impressions, r.clicks, r.prev_gmv_cents)
                    == (e.gmv_cents, e.paid_orders, e.impressions, e.clicks, e.prev_gmv_cents);
                MerchantRankEntry {
                    score: own.score.filter(|_| alone),
                    buyers: own.buyers.filter(|_| alone),
                    gmv_cents: r.gmv_cents,
                    paid_orders: r.paid_orders,
                    impressions: r.impressions,
                    clicks: r.clicks,
                    prev_gmv_cents: r.prev_gmv_cents,
                    ..own
                }
            }
        }
    };
    let venues = snap
        .venues
        .iter()
        .filter(|v| in_venue(&v.venue))
        .filter_map(|v| {
            let ranking: Vec<MerchantRankEntry> =
                v.race.ranking.iter().filter(|e| e.merchant_id == merchant).map(entry).collect();
            let has_slots = slots.iter().any(|s| s.venue == v.venue);
            (has_slots || !ranking.is_empty()).then(|| MerchantVenue {
                venue: v.venue.clone(),
                race: MerchantRace { window_ms: v.race.window_ms, rule: v.race.rule.clone(), ranking },
            })
        })
        .collect();
    MerchantSnapshot {
        as_of_ms: snap.as_of_ms,
        published_at_ms: snap.published_at_ms,
        last_event_at_ms: snap.last_event_at_ms,
        merchant_id: merchant.to_string(),
        totals,
        windows,
        venues,
        slots,
        rehearsal: snap.rehearsal.clone(),
    }
}

/// An ops view narrowed to one venue: that venue's entry and slots; site-wide parts stay.
pub fn venue_view(snap: &Snapshot, venue: &str) -> Snapshot {
    let mut s = snap.clone();
    s.venues.retain(|v| v.venue == venue);
    s.slots.retain(|x| x.venue == venue);
    s
}

/// Whether a rank change may be shown in a scope. Rank changes carry no merchant, so the
/// snapshot they came with says whose slot it is.
pub fn change_visible(change: &RankChange, scope: &Scope, snap: &Snapshot) -> bool {
    if scope.venue.as_deref().is_some_and(|v| v != change.venue) {
        return false;
    }
    match &scope.merchant {
        None => true,
        Some(m) => snap.slots.iter().any(|s| s.slot == change.slot && &s.merchant_id == m),
    }
}
