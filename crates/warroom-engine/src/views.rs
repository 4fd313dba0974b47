//! What a caller may see of a snapshot. A merchant gets the document cut down to its own
//! slots (SNAPSHOT.md): its slots, totals and windows summed from them, and its slots' places
//! in each race. Nothing names or measures another merchant: a slot that changed hands
//! (商品更换) counts for each merchant only the events that named it. Site-wide figures (site totals,
//! funnel, decomposition, plan, rejections) all measure other merchants, so they are left out.
//! A subscription narrows further to one venue. (Here, beside the snapshot, so that every
//! view is built from it in one place, and so that the fuzz targets reach it without the API's
//! network stack.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::race::{self, Input, RaceGap};
use crate::snapshot::{MoneyWindow, Race, RankEntry, SlotMerchantStats, SlotStats};
use crate::{RankChange, Snapshot};

/// What a client asked to see (it can only narrow what its role allows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// Set for merchant callers (from the token, not from the client).
    pub merchant: Option<String>,
    pub venue: Option<String>,
    /// Slots the screen follows beyond the top of each race (sorted, no repeats).
    pub slots: Vec<String>,
}

impl Scope {
    /// The scope a caller starts with: a merchant caller (`own`, the merchant id of its token)
    /// is held to its own merchant; others see everything.
    pub fn of(own: Option<&str>, venue: Option<String>) -> Scope {
        Scope { merchant: own.map(str::to_string), venue, slots: Vec::new() }
    }

    /// The scope a subscription asks for. A merchant caller keeps its own merchant whatever it
    /// asks; others may narrow to one merchant's cut.
    pub fn subscribed(own: Option<&str>, sub: Subscription) -> Scope {
        let mut scope = Scope::of(own, sub.venue);
        if scope.merchant.is_none() {
            scope.merchant = sub.merchant;
        }
        let mut slots = sub.slots;
        slots.sort();
        slots.dedup();
        scope.slots = slots;
        scope
    }
}

/// What a screen asks for over its WebSocket: `{"subscribe": {"venue": "NAME", "merchant":
/// "ID", "slots": ["SLOT", ...]}}`, all optional (absent: everything its role allows; slots:
/// the slots it follows besides the top of each race, at most [`MAX_SUBSCRIBED_SLOTS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub venue: Option<String>,
    pub merchant: Option<String>,
    #[serde(default)]
    pub slots: Vec<String>,
}

/// Slots one subscription may follow.
pub const MAX_SUBSCRIBED_SLOTS: usize = 200;

/// Entries of each race an ops screen is pushed (the screen shows six; the REST snapshot has
/// every one). Rank changes below it are pushed only for followed slots.
pub const SCREEN_RACE_TOP: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    subscribe: Subscription,
}

/// What the server answers a client message it cannot take.
pub const SUBSCRIBE_HELP: &str = r#"send {"subscribe": {"venue": "NAME", "merchant": "ID", "slots": ["SLOT", ...]}} (all optional; names are 1..128 bytes; at most 200 slots)"#;

/// Parses a client's WebSocket text message. Names are those of the contract (1..128 bytes),
/// so a longer or empty one cannot name anything and is refused.
pub fn parse_subscription(text: &str) -> Result<Subscription, &'static str> {
    let m: ClientMessage = serde_json::from_str(text).map_err(|_| SUBSCRIBE_HELP)?;
    let ok = |n: &Option<String>| n.as_ref().is_none_or(|n| (1..=warroom_model::MAX_ID_BYTES).contains(&n.len()));
    let slots_ok = m.subscribe.slots.len() <= MAX_SUBSCRIBED_SLOTS
        && m.subscribe.slots.iter().all(|n| (1..=warroom_model::MAX_ID_BYTES).contains(&n.len()));
    if ok(&m.subscribe.venue) && ok(&m.subscribe.merchant) && slots_ok {
        Ok(m.subscribe)
    } else {
        Err(SUBSCRIBE_HELP)
    }
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
    pub rehearsal: Option<crate::snapshot::Rehearsal>,
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
    /// The rule's inputs and weights (not the ranges that scaled them: those measure other
    /// merchants' slots).
    pub weights: Vec<RuleWeight>,
    /// Only the slots this merchant holds now, with their true ranks.
    pub ranking: Vec<MerchantRankEntry>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RuleWeight {
    pub input: Input,
    pub weight: f64,
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
    /// How far the slot is behind the slot ranked above it and what that is made of, in the
    /// rule's points (null for the leader, and when the score is null). The slot above is
    /// not named: only the distance to it is shown.
    pub gap: Option<RaceGap>,
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
    let entry = |race: &Race, e: &RankEntry| -> MerchantRankEntry {
        // The slot above: the ranking is in rank order, rank r at index r - 1.
        let above = (e.rank as usize).checked_sub(2).and_then(|k| race.ranking.get(k));
        let gap = above
            .filter(|_| race.merchant_gap && !race.terms.is_empty())
            .map(|a| race::gap(&race.terms, a.rank, &a.inputs(), &e.inputs()));
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
            gap,
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
                    gap: own.gap.clone().filter(|_| alone),
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
                v.race.ranking.iter().filter(|e| e.merchant_id == merchant).map(|e| entry(&v.race, e)).collect();
            let has_slots = slots.iter().any(|s| s.venue == v.venue);
            (has_slots || !ranking.is_empty()).then(|| MerchantVenue {
                venue: v.venue.clone(),
                race: MerchantRace {
                    window_ms: v.race.window_ms,
                    rule: v.race.rule.clone(),
                    weights: v.race.terms.iter().map(|t| RuleWeight { input: t.input, weight: t.weight }).collect(),
                    ranking,
                },
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
    let kept: std::collections::HashSet<&str> = s.slots.iter().map(|x| x.slot.as_str()).collect();
    s.slot_merchants.retain(|p| kept.contains(p.slot.as_str()));
    s
}

/// Slots in a screen frame's top sellers.
pub const TOP_SELLERS: usize = 7;

/// What an ops screen is pushed: the snapshot cut to what a screen shows. Site totals,
/// windows, funnel, decomposition, plan, rejections, counters and channels whole; each venue
/// with the top [`SCREEN_RACE_TOP`] of its race (`race.ranked` says how many there are); of
/// the slots, only those the screen follows. The REST snapshot keeps everything, including
/// `slot_merchants`, the per-(slot, merchant) table that merchant views are cut from. A frame
/// so costs what a screen shows, not the number of slots: the whole snapshot is 5.9 MB at
/// 20,000 slots.
#[derive(Serialize)]
pub struct ScreenFrame<'a> {
    as_of_ms: i64,
    published_at_ms: i64,
    last_event_at_ms: i64,
    totals: &'a crate::snapshot::Totals,
    windows: &'a [crate::snapshot::WindowStats],
    venues: Vec<ScreenVenue<'a>>,
    slots: Vec<&'a SlotStats>,
    /// Slots in the snapshot (the REST snapshot lists them).
    slots_total: usize,
    /// The [`TOP_SELLERS`] slots with the most GMV since the start (累计 top sellers).
    top_sellers: Vec<&'a SlotStats>,
    channels: &'a [crate::snapshot::ChannelStats],
    funnel: &'a crate::snapshot::Funnel,
    decomposition: &'a [crate::snapshot::Decomposition],
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a crate::plan::PlanStatus>,
    rejections: &'a BTreeMap<String, u64>,
    counters: &'a crate::snapshot::Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    rehearsal: Option<&'a crate::snapshot::Rehearsal>,
}

/// A venue on a screen: its numbers and the top of its race.
#[derive(Serialize)]
pub struct ScreenVenue<'a> {
    venue: &'a str,
    gmv_cents: u128,
    paid_orders: u64,
    windows: &'a [MoneyWindow],
    uv: u64,
    ipv_uv: u64,
    buyers: u64,
    race: ScreenRace<'a>,
}

#[derive(Serialize)]
pub struct ScreenRace<'a> {
    window_ms: i64,
    rule: &'a str,
    terms: &'a [crate::race::RuleTerm],
    ranking: &'a [RankEntry],
    /// Slots in the whole ranking.
    ranked: usize,
}

/// The frame of an ops screen following `slots` (sorted, as in [`Scope`]), narrowed to one
/// venue if `venue` is given (as [`venue_view`] narrows the REST snapshot, without copying it).
pub fn screen_frame<'a>(snap: &'a Snapshot, venue: Option<&str>, slots: &[String]) -> ScreenFrame<'a> {
    // Destructured so that a field added to the snapshot fails to compile here until it is
    // placed (or left out) on purpose.
    let Snapshot {
        as_of_ms,
        published_at_ms,
        last_event_at_ms,
        totals,
        windows,
        venues,
        slots: all_slots,
        slot_merchants: _,
        channels,
        funnel,
        decomposition,
        plan,
        rejections,
        counters,
        rehearsal,
    } = snap;
    let venues = venues
        .iter()
        .filter(|v| venue.is_none_or(|n| n == v.venue))
        .map(|v| ScreenVenue {
            venue: &v.venue,
            gmv_cents: v.gmv_cents,
            paid_orders: v.paid_orders,
            windows: &v.windows,
            uv: v.uv,
            ipv_uv: v.ipv_uv,
            buyers: v.buyers,
            race: ScreenRace {
                window_ms: v.race.window_ms,
                rule: &v.race.rule,
                terms: &v.race.terms,
                ranking: &v.race.ranking[..v.race.ranking.len().min(SCREEN_RACE_TOP)],
                ranked: v.race.ranking.len(),
            },
        })
        .collect();
    // The snapshot's slots are sorted by name: each followed slot is a lookup.
    let in_scope = |s: &SlotStats| venue.is_none_or(|n| n == s.venue);
    let followed = slots.iter().filter_map(|f| snap.slot(f)).filter(|s| in_scope(s)).collect();
    let slots_total = if venue.is_none() { all_slots.len() } else { all_slots.iter().filter(|s| in_scope(s)).count() };
    // One pass keeping the best few: no copy of the slot list.
    let mut top_sellers: Vec<&SlotStats> = Vec::with_capacity(TOP_SELLERS + 1);
    for s in all_slots.iter().filter(|s| in_scope(s) && s.gmv_cents > 0) {
        if top_sellers.len() == TOP_SELLERS && top_sellers[TOP_SELLERS - 1].gmv_cents >= s.gmv_cents {
            continue;
        }
        let at = top_sellers.partition_point(|t| t.gmv_cents >= s.gmv_cents);
        top_sellers.insert(at, s);
        top_sellers.truncate(TOP_SELLERS);
    }
    ScreenFrame {
        top_sellers,
        as_of_ms: *as_of_ms,
        published_at_ms: *published_at_ms,
        last_event_at_ms: *last_event_at_ms,
        totals,
        windows,
        venues,
        slots: followed,
        slots_total,
        channels,
        funnel,
        decomposition,
        plan: plan.as_ref(),
        rejections,
        counters,
        rehearsal: rehearsal.as_ref(),
    }
}

/// Whether a rank change may be shown in a scope. Rank changes carry no merchant, so the
/// snapshot they came with says whose slot it is.
pub fn change_visible(change: &RankChange, scope: &Scope, snap: &Snapshot) -> bool {
    if scope.venue.as_deref().is_some_and(|v| v != change.venue) {
        return false;
    }
    match &scope.merchant {
        // An ops screen sees the top of each race, and the slots it follows.
        None => {
            let top = SCREEN_RACE_TOP as u32;
            change.to <= top || change.from.is_some_and(|f| f <= top) || scope.slots.binary_search(&change.slot).is_ok()
        }
        // A lookup, not a scan per change and client.
        Some(m) => snap.slot(&change.slot).is_some_and(|s| &s.merchant_id == m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(venue: Option<&str>, merchant: Option<&str>) -> Subscription {
        Subscription { venue: venue.map(Into::into), merchant: merchant.map(Into::into), slots: Vec::new() }
    }

    #[test]
    fn subscriptions_parse_as_documented_and_refuse_the_rest() {
        assert_eq!(parse_subscription(r#"{"subscribe": {"venue": "main"}}"#), Ok(sub(Some("main"), None)));
        assert_eq!(parse_subscription(r#"{"subscribe": {"merchant": "m-4"}}"#), Ok(sub(None, Some("m-4"))));
        assert_eq!(parse_subscription(r#"{"subscribe": {}}"#), Ok(sub(None, None)));
        let followed = parse_subscription(r#"{"subscribe": {"slots": ["main-007", "food-001"]}}"#).unwrap();
        assert_eq!(followed.slots, ["main-007", "food-001"]);
        let long = format!(r#"{{"subscribe": {{"venue": "{}"}}}}"#, "v".repeat(129));
        let long_slot = format!(r#"{{"subscribe": {{"slots": ["{}"]}}}}"#, "s".repeat(129));
        let too_many = format!(
            r#"{{"subscribe": {{"slots": [{}]}}}}"#,
            (0..=MAX_SUBSCRIBED_SLOTS).map(|i| format!("\"s-{i}\"")).collect::<Vec<_>>().join(",")
        );
        let bad_slots = [r#"{"subscribe": {"slots": [""]}}"#, r#"{"subscribe": {"slots": "main-007"}}"#];
        for bad in ["{}", "[]", "", r#"{"subscribe": {"venue": ""}}"#, r#"{"subscribe": {"shop": "x"}}"#, &long]
            .into_iter()
            .chain(bad_slots)
            .chain([long_slot.as_str(), too_many.as_str()])
        {
            assert_eq!(parse_subscription(bad), Err(SUBSCRIBE_HELP), "{bad}");
        }
    }

    #[test]
    fn a_merchant_keeps_its_own_scope_whatever_it_asks() {
        let s = Scope::subscribed(Some("m-4"), sub(Some("main"), Some("m-9")));
        assert_eq!(s, Scope { merchant: Some("m-4".into()), venue: Some("main".into()), slots: Vec::new() });
        let ops = Scope::subscribed(None, sub(None, Some("m-9")));
        assert_eq!(ops, Scope { merchant: Some("m-9".into()), venue: None, slots: Vec::new() });
    }

    #[test]
    fn an_ops_screen_hears_rank_changes_at_the_top_and_of_the_slots_it_follows() {
        let snap = Snapshot::default();
        let change = |slot: &str, from: Option<u32>, to: u32| RankChange {
            venue: "main".into(),
            slot: slot.into(),
            from,
            to,
            as_of_ms: 0,
        };
        let mut follow = sub(None, None);
        follow.slots = vec!["s-9".into(), "s-1".into(), "s-9".into()];
        let ops = Scope::subscribed(None, follow);
        assert_eq!(ops.slots, ["s-1", "s-9"], "sorted, no repeats");
        let top = SCREEN_RACE_TOP as u32;
        assert!(change_visible(&change("s-5", Some(top + 1), top), &ops, &snap), "into the top");
        assert!(change_visible(&change("s-5", Some(top), top + 1), &ops, &snap), "out of the top");
        assert!(change_visible(&change("s-5", None, 1), &ops, &snap), "new, at the top");
        assert!(!change_visible(&change("s-5", Some(400), 399), &ops, &snap), "the long tail");
        assert!(!change_visible(&change("s-5", None, 400), &ops, &snap), "new in the long tail");
        assert!(change_visible(&change("s-9", Some(400), 399), &ops, &snap), "a followed slot");
        let other_venue = Scope::subscribed(None, Subscription { venue: Some("food".into()), ..sub(None, None) });
        assert!(!change_visible(&change("s-5", None, 1), &other_venue, &snap), "another venue");
    }
}
