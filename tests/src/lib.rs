//! Test support: an independent, naive implementation of the contracts, and comparisons that
//! say exactly what differs.
//!
//! The reference shares no code with the engine: it parses with `serde_json::Value`, checks
//! the rules of EVENTS.md by hand, keeps every accepted event in memory, de-duplicates with
//! `HashSet<String>` and computes windows, distinct counts (exact sets) and races by brute
//! force at the end. It is slow on purpose and obviously right.

pub mod kafka;
/// The Kafka client the helpers take (`ClientConfig` for [`kafka::produce_configured`]).
pub use rdkafka;
pub mod sasl;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use warroom_engine::snapshot::{
    ChannelStats, MoneyWindow, PairRace, RankEntry, SlotMerchantStats, SlotStats, Snapshot, WindowStats,
};

#[derive(Debug, Clone)]
struct Ev {
    kind: String,
    ts: i64,
    user: String,
    venue: Option<String>,
    slot: Option<String>,
    merchant: Option<String>,
    channel: Option<String>,
    order: Option<String>,
    amount: u128,
    coupon: u128,
    /// For `pay`: the first payment of its order (adds GMV).
    counted: bool,
}

/// Is this line a valid event per EVENTS.md (v1.1)? (Returns the parsed event.) No bound on
/// `ts` here: tests that check the monitor's clock allowance leave out the events they expect
/// it to refuse, and say so.
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
    // Names are 1..128 bytes too (v1.1).
    let opt_str = |k: &str| -> Result<Option<String>, ()> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Ok(Some(s.clone())),
            _ => Err(()),
        }
    };
    let venue = opt_str("venue").ok()?;
    let slot = opt_str("slot").ok()?;
    let merchant = opt_str("merchant_id").ok()?;
    let order = opt_str("order_id").ok()?;
    opt_str("item_id").ok()?;
    let channel = opt_str("channel").ok()?;
    let money = |k: &str, max: u64| -> Result<Option<u64>, ()> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(n) if n.is_u64() && n.as_u64().unwrap() <= max => Ok(n.as_u64()),
            _ => Err(()),
        }
    };
    let amount = money("amount_cents", 1_000_000_000_000).ok()?;
    let coupon = money("coupon_cents", 1_000_000_000_000).ok()?;
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
        channel,
        order,
        amount: amount.unwrap_or(0) as u128,
        coupon: coupon.unwrap_or(0) as u128,
        counted: false,
    })
}

/// Whether a line is a valid event per EVENTS.md v1.1 (the reference's own check).
pub fn is_valid(line: &[u8]) -> bool {
    validate(line).is_some()
}

/// The accepted events of `lines` in order (invalid and duplicate ones left out, each `pay`
/// marked when it is its order's first), with the numbers of rejected and duplicate lines.
fn accept(lines: &[&[u8]]) -> (Vec<Ev>, u64, u64) {
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
    (acc, rejected, duplicates)
}

/// What a merchant's token must see (SNAPSHOT.md, contract v1.1), computed naively from the
/// events naming that merchant: its slots (those with an event naming it) with the numbers of
/// those events, totals and windows summed from them, and its places in each race (slots it
/// holds now, i.e. whose newest event named it) with its own race-window numbers; the slot's
/// score and buyers only when its numbers there are all its own. As JSON, in the shape of the
/// API's merchant view, without its wall-clock fields.
pub fn reference_merchant(lines: &[&[u8]], windows: &[i64], race_window: i64, merchant: &str) -> Value {
    let full = reference(lines, windows, race_window);
    let (acc, _, _) = accept(lines);
    let as_of = full.as_of_ms;
    let mine = |e: &Ev, slot: &str| e.slot.as_deref() == Some(slot) && e.merchant.as_deref() == Some(merchant);
    let money = |slot: &str, lo: i64, hi: i64| -> (u128, u64) {
        let w: Vec<&Ev> = acc.iter().filter(|e| mine(e, slot) && e.counted && e.ts > lo && e.ts <= hi).collect();
        (w.iter().map(|e| e.amount).sum(), w.len() as u64)
    };
    let count = |slot: &str, k: &str, lo: i64, hi: i64| {
        acc.iter().filter(|e| mine(e, slot) && e.kind == k && e.ts > lo && e.ts <= hi).count() as u64
    };
    let mut slots = Vec::new();
    let (mut tg, mut to, mut ti, mut tc) = (0u128, 0u64, 0u64, 0u64);
    let mut tw: Vec<(u128, u64)> = vec![(0, 0); windows.len()];
    for st in &full.slots {
        if !acc.iter().any(|e| mine(e, &st.slot)) {
            continue;
        }
        let (g, o) = money(&st.slot, i64::MIN, i64::MAX);
        let (i, c) = (count(&st.slot, "impression", i64::MIN, i64::MAX), count(&st.slot, "click", i64::MIN, i64::MAX));
        let ws: Vec<Value> = windows
            .iter()
            .enumerate()
            .map(|(k, &l)| {
                let (g, o) = money(&st.slot, as_of - l, as_of);
                tw[k].0 += g;
                tw[k].1 += o;
                serde_json::json!({ "length_ms": l, "gmv_cents": g as u64, "paid_orders": o })
            })
            .collect();
        (tg, to, ti, tc) = (tg + g, to + o, ti + i, tc + c);
        slots.push(serde_json::json!({
            "slot": st.slot, "venue": st.venue, "merchant_id": merchant, "gmv_cents": g as u64,
            "paid_orders": o, "impressions": i, "clicks": c, "windows": ws,
        }));
    }
    let lo = as_of - race_window;
    let mut venues = Vec::new();
    for v in &full.venues {
        let ranking: Vec<Value> = v
            .race
            .ranking
            .iter()
            .filter(|e| e.merchant_id == merchant)
            .map(|e| {
                let (g, o) = money(&e.slot, lo, as_of);
                let (i, c) = (count(&e.slot, "impression", lo, as_of), count(&e.slot, "click", lo, as_of));
                let prev = money(&e.slot, lo - race_window, lo).0;
                let alone = (g, o, i, c, prev) == (e.gmv_cents, e.paid_orders, e.impressions, e.clicks, e.prev_gmv_cents);
                // The gap to the slot above under the gmv rule: its race-window GMV minus this one's.
                let gap = match (alone, (e.rank as usize).checked_sub(2).map(|k| &v.race.ranking[k])) {
                    (true, Some(above)) => {
                        let d = above.gmv_cents as f64 - e.gmv_cents as f64;
                        serde_json::json!({"to_rank": above.rank, "points": d, "parts": [{"input": "gmv", "weight": 1.0, "points": d}]})
                    }
                    _ => Value::Null,
                };
                serde_json::json!({
                    "rank": e.rank, "slot": e.slot, "score": if alone { serde_json::json!(e.score) } else { Value::Null },
                    "gmv_cents": g as u64, "paid_orders": o, "impressions": i, "clicks": c,
                    "buyers": if alone { serde_json::json!(e.buyers) } else { Value::Null },
                    "prev_gmv_cents": prev as u64, "merchant_id": merchant, "gap": gap,
                })
            })
            .collect();
        let has_slots = slots.iter().any(|s| s["venue"] == v.venue.as_str());
        if has_slots || !ranking.is_empty() {
            venues.push(serde_json::json!({
                "venue": v.venue,
                "race": { "window_ms": v.race.window_ms, "rule": v.race.rule, "ranking": ranking,
                          "weights": [{"input": "gmv", "weight": 1.0}] },
            }));
        }
    }
    serde_json::json!({
        "as_of_ms": as_of,
        "merchant_id": merchant,
        "totals": { "gmv_cents": tg as u64, "paid_orders": to, "impressions": ti, "clicks": tc, "slots": slots.len() },
        "windows": windows.iter().zip(&tw).map(|(&l, &(g, o))| serde_json::json!({ "length_ms": l, "gmv_cents": g as u64, "paid_orders": o })).collect::<Vec<_>>(),
        "venues": venues,
        "slots": slots,
    })
}

/// The snapshot the contracts call for, computed naively. `lines` are the input messages in
/// order; windows and the race window in ms.
pub fn reference(lines: &[&[u8]], windows: &[i64], race_window: i64) -> Snapshot {
    let (acc, rejected, duplicates) = accept(lines);
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
    // Channels: everything that came in through each one.
    let mut channels: BTreeMap<String, ChannelStats> = BTreeMap::new();
    for e in &acc {
        let Some(c) = &e.channel else { continue };
        let x = channels.entry(c.clone()).or_insert_with(|| ChannelStats { channel: c.clone(), ..Default::default() });
        match e.kind.as_str() {
            "impression" => x.impressions += 1,
            "click" => x.clicks += 1,
            "pay" if e.counted => {
                x.paid_orders += 1;
                x.gmv_cents += e.amount;
            }
            _ => {}
        }
    }
    s.channels = channels.into_values().collect();
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
    // Slots more than one merchant (or none) named: each merchant's part, from its own events.
    let lo_race = as_of - race_window;
    for st in &s.slots {
        let mine = |e: &&Ev| e.slot.as_deref() == Some(st.slot.as_str());
        let merchants: std::collections::BTreeSet<Option<String>> =
            acc.iter().filter(mine).map(|e| e.merchant.clone()).collect();
        if merchants.len() < 2 {
            continue;
        }
        for m in merchants {
            let of = |e: &&Ev| mine(e) && e.merchant == m;
            let evs: Vec<&Ev> = acc.iter().filter(of).collect();
            let paid = |lo: i64, hi: i64| -> (u128, u64) {
                let w: Vec<&&Ev> = evs.iter().filter(|e| e.counted && e.ts > lo && e.ts <= hi).collect();
                (w.iter().map(|e| e.amount).sum(), w.len() as u64)
            };
            let count = |k: &str, lo: i64, hi: i64| {
                evs.iter().filter(|e| e.kind == k && e.ts > lo && e.ts <= hi).count() as u64
            };
            let (rg, ro) = paid(lo_race, as_of);
            s.slot_merchants.push(SlotMerchantStats {
                slot: st.slot.clone(),
                merchant_id: m.clone().unwrap_or_default(),
                gmv_cents: paid(i64::MIN, i64::MAX).0,
                paid_orders: paid(i64::MIN, i64::MAX).1,
                impressions: count("impression", i64::MIN, i64::MAX),
                clicks: count("click", i64::MIN, i64::MAX),
                windows: money(&|e: &Ev| mine(&e) && e.merchant == m),
                race: PairRace {
                    gmv_cents: rg,
                    paid_orders: ro,
                    impressions: count("impression", lo_race, as_of),
                    clicks: count("click", lo_race, as_of),
                    prev_gmv_cents: paid(lo_race - race_window, lo_race).0,
                },
            });
        }
    }
    s.slot_merchants.sort_by(|a, b| (&a.slot, &a.merchant_id).cmp(&(&b.slot, &b.merchant_id)));
    let venue_of = |e: &Ev| -> Option<String> {
        match &e.slot {
            Some(sl) => Some(slot_venue[sl].clone()),
            None => e.venue.clone(),
        }
    };
    // Venues: GMV by the slot's venue when the event names a slot, else by its own venue.
    let mut venues: BTreeMap<String, (u128, u64)> = BTreeMap::new();
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
                let g: u128 = w.iter().filter(|e| e.counted).map(|e| e.amount).sum();
                let before = || {
                    acc.iter().filter(|e| {
                        e.slot.as_deref() == Some(st.slot.as_str()) && e.ts > lo - race_window && e.ts <= lo
                    })
                };
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
                    prev_paid_orders: before().filter(|e| e.counted).count() as u64,
                    prev_clicks: before().filter(|e| e.kind == "click").count() as u64,
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
        vs.race.terms = vec![warroom_engine::race::RuleTerm {
            input: warroom_engine::race::Input::Gmv,
            weight: 1.0,
            lo: None,
            hi: None,
        }];
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
    exact!("slot_merchants", got.slot_merchants, want.slot_merchants);
    exact!("channels", got.channels, want.channels);
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

/// Runs `program args` to its end and returns its exit status and peak resident memory (KiB).
///
/// Through GNU `time` (`/usr/bin/time`, Debian's `time`, which scripts/test.sh installs if
/// missing): a child forked straight from this (large, multi-threaded) test process carries
/// this process's pages in its peak until it execs; `time` forks it from its own small one.
pub fn run_measuring_rss(program: &str, args: &[&std::ffi::OsStr]) -> (std::process::ExitStatus, u64) {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let status = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(out.path())
        .arg(program)
        .args(args)
        .status()
        .expect("run /usr/bin/time (Debian's `time` package)");
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    let kb = text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from time: {text}"));
    (status, kb)
}

/// The per-minute history of `lines`, naively: for each (scope, name, minute of event time)
/// the twelve additive metrics of `warroom_engine::history::COUNTS`, and for the site and each
/// venue the sets of distinct users per minute (uv, ipv_uv, buyers). Scopes: `site` (name ""),
/// `venue` (events naming it), `slot` and `merchant` (events naming a slot, by the slot and by
/// the merchant named on the event), `channel`.
#[derive(Debug, Default)]
pub struct RefHistory {
    pub counts: BTreeMap<(String, String, i64), [u64; 12]>,
    pub users: BTreeMap<(String, String, i64, usize), HashSet<String>>,
}

impl RefHistory {
    /// The scope's counts over minutes `[from, to)`.
    pub fn sum(&self, scope: &str, name: &str, from: i64, to: i64) -> [u64; 12] {
        let mut out = [0u64; 12];
        for ((s, n, m), v) in &self.counts {
            if s == scope && n == name && (from..to).contains(m) {
                out.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
        }
        out
    }

    /// Distinct users of `metric` (0 uv, 1 ipv_uv, 2 buyers) over minutes `[from, to)`.
    pub fn distinct(&self, scope: &str, name: &str, metric: usize, from: i64, to: i64) -> u64 {
        let mut all = HashSet::new();
        for ((s, n, m, k), u) in &self.users {
            if s == scope && n == name && *k == metric && (from..to).contains(m) {
                all.extend(u.iter().cloned());
            }
        }
        all.len() as u64
    }

    /// The (scope, name) pairs seen.
    pub fn scopes(&self) -> Vec<(String, String)> {
        let set: std::collections::BTreeSet<_> = self.counts.keys().map(|(s, n, _)| (s.clone(), n.clone())).collect();
        set.into_iter().collect()
    }
}

/// What `store` holds for one of the reference's scopes over `[from_ms, to_ms)`: a merchant's
/// channel or slot (`merchant_channel`, `merchant_slot`, named "merchant/name") is the channel
/// or slot through that merchant's eyes, every other scope is asked by its own name.
pub fn stored_totals(
    store: &warroom_history::Store,
    kind: &str,
    name: &str,
    from_ms: i64,
    to_ms: i64,
) -> warroom_history::Result<warroom_history::query::Totals> {
    use warroom_history::Scope;
    match name.split_once('/') {
        Some((m, ch)) if kind == "merchant_channel" => {
            store.totals(&Scope::Channel(ch.into()), Some(m), from_ms, to_ms)
        }
        Some((m, slot)) if kind == "merchant_slot" => store.totals(&Scope::Slot(slot.into()), Some(m), from_ms, to_ms),
        _ => {
            let scope = Scope::parse(kind, Some(name)).map_err(warroom_history::HistoryError::Query)?;
            store.totals(&scope, None, from_ms, to_ms)
        }
    }
}

pub fn reference_history(lines: &[&[u8]]) -> RefHistory {
    let (events, _, _) = accept(lines);
    let mut h = RefHistory::default();
    for e in &events {
        if e.kind == "pay" && !e.counted {
            continue;
        }
        let a = e.amount as u64;
        let mut v = [0u64; 12];
        match e.kind.as_str() {
            "pay" => {
                v[0] = a;
                v[1] = 1;
                v[2] = (e.coupon > 0) as u64;
                v[3] = e.coupon as u64;
            }
            "refund" => (v[4], v[5]) = (1, a),
            "order" => (v[6], v[7]) = (1, a),
            "favorite" => v[8] = 1,
            "cart" => v[9] = 1,
            "impression" => v[10] = 1,
            "click" => v[11] = 1,
            _ => unreachable!(),
        }
        let minute = e.ts.div_euclid(60_000);
        let mut scopes = vec![("site".to_string(), String::new())];
        if let Some(x) = &e.venue {
            scopes.push(("venue".into(), x.clone()));
        }
        if let Some(s) = &e.slot {
            scopes.push(("slot".into(), s.clone()));
            if let Some(m) = &e.merchant {
                scopes.push(("merchant".into(), m.clone()));
                // A slot through its merchant's eyes (a slot that changed hands has several).
                scopes.push(("merchant_slot".into(), format!("{m}/{s}")));
                // A merchant's channels: its slots' events through each channel.
                if let Some(c) = &e.channel {
                    scopes.push(("merchant_channel".into(), format!("{m}/{c}")));
                }
            }
        }
        if let Some(c) = &e.channel {
            scopes.push(("channel".into(), c.clone()));
        }
        let metric = match e.kind.as_str() {
            "impression" => Some(0),
            "click" => Some(1),
            "pay" => Some(2),
            _ => None,
        };
        for (s, n) in scopes {
            if let Some(k) = metric.filter(|_| s == "site" || s == "venue") {
                h.users.entry((s.clone(), n.clone(), minute, k)).or_default().insert(e.user.clone());
            }
            let row = h.counts.entry((s, n, minute)).or_default();
            row.iter_mut().zip(v).for_each(|(x, y)| *x += y);
        }
    }
    h
}

/// What a monitor's `GET /api/v1/history` says against the reference, as differences: per
/// minute for the site (gmv, paid orders, impressions, clicks), and over the whole range for
/// every venue, slot, merchant and channel (all twelve counts) and the site's distinct counts
/// (within 2%). Empty: equal.
pub fn history_differences(base: &str, token: &str, want: &RefHistory) -> Vec<String> {
    let first = want.counts.keys().map(|k| k.2).min().unwrap_or(0);
    let last = want.counts.keys().map(|k| k.2).max().unwrap_or(0) + 1;
    let get = |q: String| -> Result<Value, String> {
        let (status, body) = kafka::http_get(base, &q, Some(token), std::time::Duration::from_secs(30));
        if status != 200 {
            return Err(format!("{q}: HTTP {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{q}: {e}"))
    };
    let mut d = Vec::new();
    let (from, to) = (first * 60_000, last * 60_000);
    for (k, metric) in [(0, "gmv"), (1, "paid_orders"), (10, "impressions"), (11, "clicks")] {
        match get(format!("/api/v1/history?metric={metric}&from={from}&to={to}&step=1m")) {
            Ok(v) => {
                for p in v["points"].as_array().into_iter().flatten() {
                    let m = p[0].as_i64().unwrap_or(0) / 60_000;
                    let got = p[1].as_u64().unwrap_or(u64::MAX);
                    let w = want.sum("site", "", m, m + 1)[k];
                    if got != w {
                        d.push(format!("site {metric} of minute {m}: history {got} != reference {w}"));
                    }
                }
            }
            Err(e) => d.push(e),
        }
    }
    let step = format!("{}m", last - first);
    // (A merchant's channels and slots are read with its token: tests/tests/history_api.rs.)
    for (scope, name) in want.scopes().into_iter().filter(|(k, _)| !k.starts_with("merchant_")) {
        for (k, metric) in warroom_engine::history::COUNTS.iter().enumerate() {
            let q =
                format!("/api/v1/history?metric={metric}&scope={scope}&name={name}&from={from}&to={to}&step={step}");
            match get(q) {
                Ok(v) => {
                    let got = v["points"][0][1].as_u64().unwrap_or(u64::MAX);
                    let w = want.sum(&scope, &name, first, last)[k];
                    if got != w {
                        d.push(format!("{scope} {name:?} {metric}: history {got} != reference {w}"));
                    }
                }
                Err(e) => d.push(e),
            }
        }
    }
    for (k, metric) in ["uv", "ipv_uv", "buyers"].iter().enumerate() {
        match get(format!("/api/v1/history?metric={metric}&from={from}&to={to}&step={step}")) {
            Ok(v) => {
                let got = v["points"][0][1].as_u64().unwrap_or(0);
                let w = want.distinct("site", "", k, first, last);
                if !distinct_close(got, w) {
                    d.push(format!("site {metric}: history {got} not within 2% of reference {w}"));
                }
            }
            Err(e) => d.push(e),
        }
    }
    d
}

/// A noisy 2-hour night from 2026-11-10 20:00 +08:00 (20,000 users): 2% exact re-deliveries,
/// 2% re-sent pays, 3% late events (up to 400 s), 0.5% bad lines, 1% slots changing hands.
pub fn noisy_night(seed: u64, events: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = warroom_ingest::gen::GenConfig {
        seed,
        users: 20_000,
        duplicate_share: 0.02,
        resend_share: 0.02,
        late_share: 0.03,
        late_max_ms: 400_000,
        bad_share: 0.005,
        merchant_change_share: 0.01,
        ..warroom_ingest::gen::GenConfig::default()
    };
    warroom_ingest::gen::write_night(cfg, events, 1_794_312_000_000, 2 * 3_600_000, &mut buf)
        .expect("a night in memory");
    buf
}

/// Runs `BIN review --history DB --out OUT` with `args` before them, and asserts it succeeded.
pub fn run_review(bin: &str, db: &std::path::Path, out: &std::path::Path, args: &[&str]) {
    let st = std::process::Command::new(bin)
        .arg("review")
        .args(args)
        .arg("--history")
        .arg(db)
        .arg("--out")
        .arg(out)
        .status()
        .expect("the warroom binary runs");
    assert!(st.success(), "warroom review {args:?} --out {}: {st}", out.display());
}
