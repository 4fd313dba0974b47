//! Test support: an independent, naive implementation of the contracts, and comparisons that
//! say exactly what differs.
//!
//! The reference shares no code with the engine: it parses with `serde_json::Value`, checks
//! the rules of EVENTS.md by hand, keeps every accepted event in memory, de-duplicates with
//! `HashSet<String>` and computes windows, distinct counts (exact sets) and races by brute
//! force at the end. It is slow on purpose and obviously right.

pub mod kafka;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use warroom_engine::snapshot::{MoneyWindow, RankEntry, SlotStats, Snapshot, WindowStats};

#[derive(Debug, Clone)]
struct Ev {
    kind: String,
    ts: i64,
    user: String,
    venue: Option<String>,
    slot: Option<String>,
    merchant: Option<String>,
    order: Option<String>,
    amount: u64,
    coupon: u64,
    /// For `pay`: the first payment of its order (adds GMV).
    counted: bool,
}

/// Is this line a valid event per EVENTS.md? (Returns the parsed event.)
fn validate(line: &[u8]) -> Option<Ev> {
    if line.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    let o = v.as_object()?;
    let id_ok = |k: &str| o.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty() && s.len() <= 128);
    if !id_ok("event_id") || !id_ok("user_id") {
        return None;
    }
    let kind = o.get("type")?.as_str()?.to_string();
    if !["impression", "click", "favorite", "cart", "order", "pay", "refund"].contains(&kind.as_str()) {
        return None;
    }
    let ts = o.get("ts")?;
    if !ts.is_i64() && !ts.is_u64() {
        return None;
    }
    let ts = ts.as_i64()?;
    if ts < 0 {
        return None;
    }
    let opt_str = |k: &str| -> Result<Option<String>, ()> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(()),
        }
    };
    let venue = opt_str("venue").ok()?;
    let slot = opt_str("slot").ok()?;
    let merchant = opt_str("merchant_id").ok()?;
    let order = opt_str("order_id").ok()?;
    opt_str("item_id").ok()?;
    opt_str("channel").ok()?;
    let money = |k: &str, max: u64| -> Result<Option<u64>, ()> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(n) if n.is_u64() && n.as_u64().unwrap() <= max => Ok(n.as_u64()),
            _ => Err(()),
        }
    };
    let amount = money("amount_cents", 1_000_000_000_000).ok()?;
    let coupon = money("coupon_cents", u64::MAX).ok()?;
    if ["order", "pay", "refund"].contains(&kind.as_str()) && (order.is_none() || amount.is_none()) {
        return None;
    }
    Some(Ev {
        kind,
        ts,
        user: o["user_id"].as_str()?.to_string(),
        venue,
        slot,
        merchant,
        order,
        amount: amount.unwrap_or(0),
        coupon: coupon.unwrap_or(0),
        counted: false,
    })
}

/// The snapshot the contracts call for, computed naively. `lines` are the input messages in
/// order; windows and the race window in ms.
pub fn reference(lines: &[&[u8]], windows: &[i64], race_window: i64) -> Snapshot {
    let mut ids = HashSet::new();
    let mut paid = HashSet::new();
    let mut acc: Vec<Ev> = Vec::new();
    let (mut rejected, mut duplicates) = (0u64, 0u64);
    for line in lines {
        let Some(mut ev) = validate(line) else {
            rejected += 1;
            continue;
        };
        let v: Value = serde_json::from_slice(line).unwrap();
        let id = v["event_id"].as_str().unwrap().to_string();
        if !ids.insert(id) {
            duplicates += 1;
            continue;
        }
        if ev.kind == "pay" {
            ev.counted = paid.insert(ev.order.clone().unwrap());
        }
        acc.push(ev);
    }
    let as_of = acc.iter().map(|e| e.ts).max().unwrap_or(0);
    let pays: Vec<&Ev> = acc.iter().filter(|e| e.counted).collect();
    let distinct = |kind: &str, lo: i64| -> u64 {
        acc.iter()
            .filter(|e| e.ts > lo && (e.kind == kind && (kind != "pay" || e.counted)))
            .map(|e| e.user.as_str())
            .collect::<HashSet<_>>()
            .len() as u64
    };
    let mut s = Snapshot { as_of_ms: as_of, ..Default::default() };
    let t = &mut s.totals;
    t.gmv_cents = pays.iter().map(|e| e.amount).sum();
    t.paid_orders = pays.len() as u64;
    t.coupon_cents = pays.iter().map(|e| e.coupon).sum();
    t.refund_cents = acc.iter().filter(|e| e.kind == "refund").map(|e| e.amount).sum();
    t.refunds = acc.iter().filter(|e| e.kind == "refund").count() as u64;
    t.uv = distinct("impression", i64::MIN);
    t.ipv_uv = distinct("click", i64::MIN);
    t.buyers = distinct("pay", i64::MIN);
    t.accepted = acc.len() as u64;
    t.rejected = rejected;
    t.duplicates = duplicates;
    let count = |k: &str| acc.iter().filter(|e| e.kind == k).count() as u64;
    t.impressions = count("impression");
    t.clicks = count("click");
    t.favorites = count("favorite");
    t.carts = count("cart");
    t.orders_placed = count("order");
    t.order_cents = acc.iter().filter(|e| e.kind == "order").map(|e| e.amount).sum();
    for &l in windows {
        let lo = as_of - l;
        let inw: Vec<&&Ev> = pays.iter().filter(|e| e.ts > lo && e.ts <= as_of).collect();
        s.windows.push(WindowStats {
            length_ms: l,
            gmv_cents: inw.iter().map(|e| e.amount).sum(),
            paid_orders: inw.len() as u64,
            uv: distinct("impression", lo),
            ipv_uv: distinct("click", lo),
            buyers: distinct("pay", lo),
        });
    }
    // Slots: venue = first venue seen with the slot; merchant = newest event's (ts, then input order).
    let mut slot_venue: HashMap<String, String> = HashMap::new();
    let mut slots: BTreeMap<String, (SlotStats, (i64, usize))> = BTreeMap::new();
    for (k, e) in acc.iter().enumerate() {
        let Some(name) = &e.slot else { continue };
        let venue = slot_venue.entry(name.clone()).or_insert_with(|| e.venue.clone().unwrap_or_default()).clone();
        let (st, at) = slots
            .entry(name.clone())
            .or_insert_with(|| (SlotStats { slot: name.clone(), venue, ..Default::default() }, (i64::MIN, 0)));
        match e.kind.as_str() {
            "impression" => st.impressions += 1,
            "click" => st.clicks += 1,
            "pay" if e.counted => {
                st.gmv_cents += e.amount;
                st.paid_orders += 1;
            }
            _ => {}
        }
        if let Some(m) = &e.merchant {
            if (e.ts, k) >= *at {
                st.merchant_id = m.clone();
                *at = (e.ts, k);
            }
        }
    }
    s.slots = slots.values().map(|(st, _)| st.clone()).collect();
    let money = |keep: &dyn Fn(&Ev) -> bool| -> Vec<MoneyWindow> {
        windows
            .iter()
            .map(|&l| {
                let w: Vec<&&Ev> = pays.iter().filter(|e| keep(e) && e.ts > as_of - l && e.ts <= as_of).collect();
                MoneyWindow { length_ms: l, gmv_cents: w.iter().map(|e| e.amount).sum(), paid_orders: w.len() as u64 }
            })
            .collect()
    };
    for st in &mut s.slots {
        st.windows = money(&|e: &Ev| e.slot.as_deref() == Some(st.slot.as_str()));
    }
    let venue_of = |e: &Ev| -> Option<String> {
        match &e.slot {
            Some(sl) => Some(slot_venue[sl].clone()),
            None => e.venue.clone(),
        }
    };
    // Venues: GMV by the slot's venue when the event names a slot, else by its own venue.
    let mut venues: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &acc {
        if let Some(v) = venue_of(e).filter(|v| !v.is_empty()) {
            let x = venues.entry(v).or_default();
            if e.counted {
                x.0 += e.amount;
                x.1 += 1;
            }
        }
    }
    let lo = as_of - race_window;
    for (venue, (gmv, orders)) in venues {
        let mut ranking: Vec<RankEntry> = s
            .slots
            .iter()
            .filter(|st| st.venue == venue)
            .map(|st| {
                let mine = |e: &&Ev| e.slot.as_deref() == Some(st.slot.as_str()) && e.ts > lo && e.ts <= as_of;
                let w: Vec<&Ev> = acc.iter().filter(mine).collect();
                let g: u64 = w.iter().filter(|e| e.counted).map(|e| e.amount).sum();
                RankEntry {
                    rank: 0,
                    slot: st.slot.clone(),
                    score: g as f64,
                    gmv_cents: g,
                    paid_orders: w.iter().filter(|e| e.counted).count() as u64,
                    impressions: w.iter().filter(|e| e.kind == "impression").count() as u64,
                    clicks: w.iter().filter(|e| e.kind == "click").count() as u64,
                    buyers: w.iter().filter(|e| e.counted).map(|e| &e.user).collect::<HashSet<_>>().len() as u64,
                    prev_gmv_cents: acc
                        .iter()
                        .filter(|e| {
                            e.counted
                                && e.slot.as_deref() == Some(st.slot.as_str())
                                && e.ts > lo - race_window
                                && e.ts <= lo
                        })
                        .map(|e| e.amount)
                        .sum(),
                    merchant_id: st.merchant_id.clone(),
                }
            })
            .collect();
        ranking.sort_by(|a, b| b.gmv_cents.cmp(&a.gmv_cents).then_with(|| a.slot.cmp(&b.slot)));
        for (k, r) in ranking.iter_mut().enumerate() {
            r.rank = k as u32 + 1;
        }
        let windows = money(&|e: &Ev| venue_of(e).as_deref() == Some(venue.as_str()));
        let mut vs = warroom_engine::snapshot::VenueStats {
            venue,
            gmv_cents: gmv,
            paid_orders: orders,
            windows,
            ..Default::default()
        };
        vs.race.window_ms = race_window;
        vs.race.rule = "gmv".into();
        vs.race.ranking = ranking;
        s.venues.push(vs);
    }
    s
}

/// Relative error allowed on distinct counts by the contract, with one unit of slack for
/// counts under 50 (where 2% is less than one user; the sketch's linear counting is then off by
/// at most one on a register collision).
pub fn distinct_close(got: u64, want: u64) -> bool {
    let diff = got.abs_diff(want) as f64;
    diff <= (want as f64 * 0.02).max(1.0)
}

/// Compares an engine snapshot with the reference: money and counts exactly, distinct counts
/// within 2%. Returns every difference found, described for a person.
pub fn differences(got: &Snapshot, want: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    macro_rules! exact {
        ($what:expr, $a:expr, $b:expr) => {
            if $a != $b {
                d.push(format!("{}: engine {:?} != reference {:?}", $what, $a, $b));
            }
        };
    }
    macro_rules! close {
        ($what:expr, $a:expr, $b:expr) => {
            if !distinct_close($a, $b) {
                d.push(format!("{}: engine {} not within 2% of reference {}", $what, $a, $b));
            }
        };
    }
    exact!("as_of_ms", got.as_of_ms, want.as_of_ms);
    let (g, w) = (&got.totals, &want.totals);
    exact!("totals.gmv_cents", g.gmv_cents, w.gmv_cents);
    exact!("totals.paid_orders", g.paid_orders, w.paid_orders);
    exact!("totals.refund_cents", g.refund_cents, w.refund_cents);
    exact!("totals.accepted", g.accepted, w.accepted);
    exact!("totals.rejected", g.rejected, w.rejected);
    exact!("totals.duplicates", g.duplicates, w.duplicates);
    exact!("totals.impressions", g.impressions, w.impressions);
    exact!("totals.clicks", g.clicks, w.clicks);
    exact!("totals.favorites", g.favorites, w.favorites);
    exact!("totals.carts", g.carts, w.carts);
    exact!("totals.orders_placed", g.orders_placed, w.orders_placed);
    exact!("totals.order_cents", g.order_cents, w.order_cents);
    exact!("totals.coupon_cents", g.coupon_cents, w.coupon_cents);
    close!("totals.uv", g.uv, w.uv);
    close!("totals.ipv_uv", g.ipv_uv, w.ipv_uv);
    close!("totals.buyers", g.buyers, w.buyers);
    for ww in &want.windows {
        match got.windows.iter().find(|x| x.length_ms == ww.length_ms) {
            None => d.push(format!("window {} ms missing", ww.length_ms)),
            Some(gw) => {
                exact!(format!("window {} gmv_cents", ww.length_ms), gw.gmv_cents, ww.gmv_cents);
                exact!(format!("window {} paid_orders", ww.length_ms), gw.paid_orders, ww.paid_orders);
                close!(format!("window {} uv", ww.length_ms), gw.uv, ww.uv);
                close!(format!("window {} ipv_uv", ww.length_ms), gw.ipv_uv, ww.ipv_uv);
                close!(format!("window {} buyers", ww.length_ms), gw.buyers, ww.buyers);
            }
        }
    }
    exact!("slots", got.slots, want.slots);
    let gv: Vec<&str> = got.venues.iter().map(|v| v.venue.as_str()).collect();
    let wv: Vec<&str> = want.venues.iter().map(|v| v.venue.as_str()).collect();
    exact!("venue names", gv, wv);
    for (a, b) in got.venues.iter().zip(&want.venues) {
        exact!(format!("venue {} gmv_cents", b.venue), a.gmv_cents, b.gmv_cents);
        exact!(format!("venue {} paid_orders", b.venue), a.paid_orders, b.paid_orders);
        exact!(format!("venue {} race.window_ms", b.venue), a.race.window_ms, b.race.window_ms);
        exact!(format!("venue {} windows", b.venue), a.windows, b.windows);
        let key = |r: &RankEntry| {
            (
                r.rank,
                r.slot.clone(),
                r.gmv_cents,
                r.paid_orders,
                r.impressions,
                r.clicks,
                r.buyers,
                r.prev_gmv_cents,
                r.merchant_id.clone(),
            )
        };
        let ra: Vec<_> = a.race.ranking.iter().map(key).collect();
        let rb: Vec<_> = b.race.ranking.iter().map(key).collect();
        exact!(format!("venue {} ranking", b.venue), ra, rb);
    }
    d
}

/// Lines of a buffer (as the pipeline splits them: `\n`, optional `\r`).
pub fn lines(buf: &[u8]) -> Vec<&[u8]> {
    warroom_ingest::pipeline::split_lines(buf).collect()
}

/// `shared/contract/samples`, beside the project root (override with `WARROOM_SHARED`).
pub fn samples_dir() -> std::path::PathBuf {
    let shared = std::env::var_os("WARROOM_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("contract/samples")
}

/// Replays `input` through the real pipeline (reader thread, parallel decode, sharded apply)
/// and publishes. Returns the snapshot and the rejected lines.
pub fn replay_bytes(
    input: &[u8],
    cfg: warroom_engine::Config,
) -> (std::sync::Arc<Snapshot>, Vec<warroom_ingest::RejectedLine>) {
    let engine = std::sync::Arc::new(warroom_engine::Engine::new(cfg));
    let mut proc = warroom_ingest::ChunkProcessor::new(engine.clone(), warroom_model::Limits::default());
    proc.keep_rejected = true;
    let mut rejected = Vec::new();
    warroom_ingest::replay(
        std::io::Cursor::new(input.to_vec()),
        None,
        &mut proc,
        |r| {
            rejected.push(r);
            Ok(())
        },
        |_| {},
    )
    .expect("replay of an in-memory buffer");
    let (snap, _) = engine.publish();
    (snap, rejected)
}

/// Panics with every difference, and where to look, if the engine and the reference disagree.
pub fn assert_matches_reference(got: &Snapshot, want: &Snapshot, what: &str) {
    let d = differences(got, want);
    assert!(
        d.is_empty(),
        "{what}: the engine disagrees with the naive reference in {} places:\n  {}",
        d.len(),
        d.iter().take(30).cloned().collect::<Vec<_>>().join("\n  ")
    );
}
