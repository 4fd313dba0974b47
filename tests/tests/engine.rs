//! Engine behaviour beyond the sample files: the de-duplication horizon, rule hot-swap, rank
//! changes with hysteresis, the plan's pace, and memory that stays bounded.

use std::time::Duration;

use warroom_engine::plan::{PhaseConfig, PhaseKind, PlanConfig};
use warroom_engine::race::Input;
use warroom_engine::{Config, Engine, RuleSpec};
use warroom_ingest::gen::{GenConfig, Generator};
use warroom_model::Limits;

const T0: i64 = 1_794_312_000_000;

fn feed(engine: &Engine, lines: &[String]) {
    let mut cache = warroom_engine::intern::NameCache::default();
    let evs: Vec<_> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| engine.decode_prepare(l.as_bytes(), i as u64, &Limits::default(), &mut cache).ok())
        .collect();
    engine.apply(&evs);
}

fn pay(id: &str, ts: i64, user: &str, slot: &str, order: &str, amount: u64) -> String {
    let venue = slot.split('-').next().unwrap();
    format!(
        r#"{{"event_id":"{id}","type":"pay","ts":{ts},"user_id":"{user}","venue":"{venue}","slot":"{slot}","merchant_id":"m-{slot}","order_id":"{order}","amount_cents":{amount}}}"#
    )
}

fn click(id: &str, ts: i64, user: &str, slot: &str) -> String {
    let venue = slot.split('-').next().unwrap();
    format!(r#"{{"event_id":"{id}","type":"click","ts":{ts},"user_id":"{user}","venue":"{venue}","slot":"{slot}"}}"#)
}

#[test]
fn events_beyond_the_dedupe_horizon_are_refused_and_counted() {
    let mut cfg = Config::default();
    cfg.engine.dedupe_horizon = Duration::from_secs(3600);
    let engine = Engine::new(cfg);
    let user = "u-1"; // one user: one shard, one watermark
    feed(&engine, &[pay("a", T0 + 7_200_000, user, "main-1", "o1", 100)]);
    feed(
        &engine,
        &[
            pay("b", T0 + 3_600_001, user, "main-1", "o2", 10), // 59m59.999s late: inside, counted
            pay("c", T0 + 3_600_000, user, "main-1", "o3", 1),  // exactly 1 h late: refused
            pay("d", T0, user, "main-1", "o4", 1),              // 2 h late: refused
        ],
    );
    let (s, _) = engine.publish();
    assert_eq!(s.totals.gmv_cents, 110);
    assert_eq!(s.totals.accepted, 2);
    assert_eq!(s.totals.rejected, 2);
    assert_eq!(s.rejections["beyond_dedupe_horizon"], 2);
    assert_eq!(s.counters.late, 1);
}

#[test]
fn a_duplicate_inside_the_horizon_never_counts_twice() {
    let engine = Engine::new(Config::default());
    let p = pay("same", T0, "u-9", "main-1", "o1", 500);
    feed(&engine, &[p.clone(), click("c1", T0 + 3_000_000, "u-9", "main-1"), p.clone()]);
    // Re-sent payment: new event id, same order, later time.
    feed(&engine, &[pay("again", T0 + 3_100_000, "u-9", "main-1", "o1", 500)]);
    let (s, _) = engine.publish();
    assert_eq!((s.totals.gmv_cents, s.totals.paid_orders, s.totals.duplicates, s.counters.resent_pays), (500, 1, 1, 1));
    assert_eq!(s.totals.accepted, 3);
}

fn two_slot_engine(hysteresis: f64) -> Engine {
    let mut cfg = Config::default();
    cfg.race.hysteresis = hysteresis;
    cfg.race.rules.insert(
        "clicks".into(),
        RuleSpec { weights: [(Input::Clicks, 1.0)].into_iter().collect(), description: "most clicked".into() },
    );
    Engine::new(cfg)
}

fn ranking(engine: &Engine, venue: &str) -> (String, Vec<String>) {
    let (s, _) = engine.publish();
    let v = s.venues.iter().find(|v| v.venue == venue).expect("venue");
    (v.race.rule.clone(), v.race.ranking.iter().map(|r| r.slot.clone()).collect())
}

#[test]
fn rule_hot_swap_changes_the_next_ranking_and_is_reported() {
    let engine = two_slot_engine(0.0);
    // main-a: more GMV; main-b: more clicks.
    let mut lines = vec![pay("p1", T0, "u1", "main-a", "o1", 9_000), pay("p2", T0, "u2", "main-b", "o2", 100)];
    for i in 0..5 {
        lines.push(click(&format!("c{i}"), T0 + i, &format!("u{i}"), "main-b"));
    }
    feed(&engine, &lines);
    assert_eq!(ranking(&engine, "main"), ("gmv".into(), vec!["main-a".into(), "main-b".into()]));
    let change = engine.set_rule("main", "clicks", None).unwrap();
    assert_eq!((change.old_rule.as_str(), change.new_rule.as_str()), ("gmv", "clicks"));
    assert_eq!(ranking(&engine, "main"), ("clicks".into(), vec!["main-b".into(), "main-a".into()]));
    // An ad-hoc rule sent with its weights is validated.
    let bad = RuleSpec { weights: [(Input::Gmv, -1.0)].into_iter().collect(), description: String::new() };
    assert!(engine.set_rule("main", "neg", Some(bad)).is_err());
    assert!(engine.set_rule("main", "no-such-rule", None).is_err());
    assert_eq!(engine.rule_of("main"), "clicks");
}

#[test]
fn rank_changes_are_reported_and_hysteresis_damps_near_ties() {
    for (h, expect_change) in [(0.0, true), (0.1, false)] {
        let engine = two_slot_engine(h);
        feed(&engine, &[pay("p1", T0, "u1", "main-a", "o1", 10_000), pay("p2", T0 + 1, "u2", "main-b", "o2", 9_900)]);
        let (_, first) = engine.publish();
        assert!(first.is_empty(), "no previous ranking, no change events");
        // main-b overtakes by 5% (10,400 vs 10,000).
        feed(&engine, &[pay("p3", T0 + 2, "u3", "main-b", "o3", 500)]);
        let (_, changes) = engine.publish();
        let moved: Vec<_> = changes.iter().map(|c| (c.slot.as_str(), c.from, c.to)).collect();
        if expect_change {
            assert_eq!(moved, vec![("main-b", Some(2), 1), ("main-a", Some(1), 2)]);
        } else {
            assert!(moved.is_empty(), "inside a 10% margin nothing moves: {moved:?}");
        }
    }
}

#[test]
fn plan_phase_and_pace_in_the_snapshot() {
    let ts = |ms| jiff::Timestamp::from_millisecond(ms).unwrap();
    let cfg = Config {
        plan: Some(PlanConfig {
            name: "t".into(),
            phases: vec![
                PhaseConfig {
                    kind: PhaseKind::Warmup,
                    name: "预热".into(),
                    start: ts(T0),
                    end: ts(T0 + 1_000_000),
                    target_gmv_cents: 1_000,
                    target_uv: 0,
                    target_buyers: 0,
                },
                PhaseConfig {
                    kind: PhaseKind::Official,
                    name: "正式".into(),
                    start: ts(T0 + 1_000_000),
                    end: ts(T0 + 2_000_000),
                    target_gmv_cents: 9_000,
                    target_uv: 0,
                    target_buyers: 0,
                },
            ],
            target_gmv_cents: None,
            hourly_target_gmv_cents: vec![],
        }),
        ..Config::default()
    };
    let engine = Engine::new(cfg);
    feed(
        &engine,
        &[pay("p1", T0 + 10, "u1", "main-a", "o1", 800), pay("p2", T0 + 1_500_000, "u2", "main-a", "o2", 3_000)],
    );
    let (s, _) = engine.publish();
    let p = s.plan.as_ref().unwrap();
    assert_eq!(p.phase, "official");
    assert_eq!(p.target_gmv_cents, 10_000);
    assert_eq!(p.expected_by_now_cents, 1_000 + 4_500);
    assert_eq!(p.gmv_cents, 3_800);
    assert_eq!(p.ahead_cents, 3_800 - 5_500);
    assert_eq!(p.phases[0].gmv_cents, 800);
    assert_eq!(p.phases[1].gmv_cents, 3_000);
}

#[test]
fn memory_stays_bounded_over_a_long_stream() {
    // Four hours of traffic at a steady rate with a 10-minute dedupe horizon: the records
    // kept for windows and the ids kept for dedupe stop growing once the horizons are full.
    let mut cfg = Config::default();
    cfg.engine.windows = vec![Duration::from_secs(60), Duration::from_secs(300)];
    cfg.engine.dedupe_horizon = Duration::from_secs(600);
    cfg.engine.order_horizon = Duration::from_secs(600);
    let engine = Engine::new(cfg);
    let mut samples = Vec::new();
    let mut id = 0u64;
    for minute in 0..240i64 {
        let mut lines = Vec::new();
        for k in 0..600i64 {
            id += 1;
            let ts = T0 + minute * 60_000 + k * 100;
            let slot = format!("main-{}", k % 20);
            lines.push(if k % 10 == 0 {
                pay(&format!("e{id}"), ts, &format!("u{}", k % 300), &slot, &format!("o{id}"), 100)
            } else {
                click(&format!("e{id}"), ts, &format!("u{}", k % 300), &slot)
            });
        }
        feed(&engine, &lines);
        if minute % 30 == 29 {
            let (s, _) = engine.publish();
            samples.push((s.counters.window_records, s.counters.dedupe_ids, s.counters.dedupe_orders));
        }
    }
    let (first, rest) = samples.split_first().unwrap();
    for s in rest {
        // Generations turn over in steps of horizon/7: allow that much wobble, no growth.
        assert!(s.0 <= first.0 * 11 / 10 && s.1 <= first.1 * 13 / 10 && s.2 <= first.2 * 13 / 10, "{samples:?}");
    }
    assert!(first.1 < 14_000, "ids kept should be about 10 minutes' worth (6,000): {first:?}");
}

#[test]
fn state_bytes_stay_flat_over_an_hour_of_the_soak_traffic() {
    // The one-hour soak (benches/soak.toml; BENCHMARKS.md §6) in event time, without Kafka:
    // loadgen's two generators at 2,000 events/s, 2 shards, windows up to 10 min, dedupe and
    // order horizons 10 min, a publish every 250 ms. Once the longest horizon (twice the
    // 10-minute window) is full, the allocated state may not grow by more than 2%. Before the
    // buyer-marks fix it stepped by 1.1 MB twice, at 3,120 and 3,240 s (3.7%).
    let mut cfg = Config::default();
    cfg.engine.windows = vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(600)];
    cfg.engine.dedupe_horizon = Duration::from_secs(600);
    cfg.engine.order_horizon = Duration::from_secs(600);
    cfg.engine.shards = 2;
    let engine = Engine::new(cfg);
    let mut gens: Vec<Generator> = (0..2)
        .map(|i| {
            Generator::new(GenConfig {
                seed: 5 + i,
                users: 200_000,
                id_prefix: format!("r.{i}."),
                ..Default::default()
            })
        })
        .collect();
    let mut cache = warroom_engine::intern::NameCache::default();
    let (mut buf, mut seq, mut samples) = (Vec::new(), 0u64, Vec::new());
    for sec in 0..3600i64 {
        for q in 0..4 {
            buf.clear();
            for k in 0..500i64 {
                gens[(k % 2) as usize].emit(T0 + sec * 1000 + q * 250 + k / 2, &mut buf);
            }
            let evs: Vec<_> = buf
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    seq += 1;
                    engine.decode_prepare(l, seq, &Limits::default(), &mut cache).ok()
                })
                .collect();
            engine.apply(&evs);
            let (s, _) = engine.publish();
            if q == 3 && sec % 60 == 59 {
                samples.push((sec + 1, s.counters.state_bytes, s.counters.buyer_marks));
            }
        }
    }
    let warm: Vec<_> = samples.iter().filter(|s| s.0 >= 1200).collect();
    let lo = warm.iter().map(|s| s.1).min().unwrap();
    let hi = warm.iter().map(|s| s.1).max().unwrap();
    eprintln!("state bytes after warm-up: {lo}..{hi} ({:.2}%)", (hi - lo) as f64 * 100.0 / lo as f64);
    assert!(hi as f64 <= lo as f64 * 1.02, "state bytes after warm-up {lo}..{hi}: {samples:?}");
    let marks_hi = warm.iter().map(|s| s.2).max().unwrap();
    let marks_lo = warm.iter().map(|s| s.2).min().unwrap();
    assert!(marks_hi <= marks_lo * 11 / 10, "buyer marks follow the traffic, not the clock: {samples:?}");
}

#[test]
fn a_first_event_far_in_the_past_fixes_no_clock() {
    // A replay whose first line comes from a clock two months behind (a replay has no message
    // times to check it against, so it is counted), then an hour of ordinary traffic: the
    // distinct counts of every window must still follow the ordinary traffic's time.
    let mut lines = vec![click("past", T0 - 60 * 86_400_000, "u-past", "main-001")];
    let mut g = Generator::new(GenConfig { seed: 5, duplicate_share: 0.0, bad_share: 0.0, ..GenConfig::default() });
    let mut buf = Vec::new();
    for i in 0..30_000i64 {
        g.emit(T0 + i * 120, &mut buf);
    }
    lines.extend(String::from_utf8(buf).unwrap().lines().map(str::to_string));
    let engine = Engine::new(Config::default());
    feed(&engine, &lines);
    let (snap, _) = engine.publish();
    let bytes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let want = warroom_tests::reference(&bytes, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, "a first event two months in the past");
    let w1 = &snap.windows[0];
    assert!(w1.uv < snap.totals.uv / 10, "the 1-minute window counts only its minute: {w1:?} vs {:?}", snap.totals);
}

#[test]
fn money_past_what_a_u64_holds_stays_exact() {
    // 20 million payments at the contract's largest amount (10^12 cents) are 2 x 10^19 cents,
    // past u64::MAX (1.8 x 10^19): every sum must still be exact, and nothing may panic.
    let mut cfg = Config::default();
    cfg.engine.windows = vec![Duration::from_secs(60)];
    cfg.engine.dedupe_horizon = Duration::from_secs(60);
    cfg.engine.order_horizon = Duration::from_secs(60);
    cfg.race.window = Duration::from_secs(60);
    let engine = Engine::new(cfg);
    let max = warroom_model::MAX_AMOUNT_CENTS;
    let template = warroom_model::decode(
        br#"{"event_id":"e","type":"pay","ts":1,"user_id":"u","venue":"main","slot":"main-001","merchant_id":"m-1","order_id":"o","amount_cents":1000000000000,"coupon_cents":1000000000000}"#,
        &Limits::default(),
    )
    .unwrap();
    let base = engine.prepare(&template, 0).unwrap();
    let n: u64 = 20_000_000;
    let per_ms = 400; // 400 pays per millisecond of event time: 50 s in all
    let mut batch = Vec::with_capacity(1 << 16);
    for i in 0..n {
        let mut p = base;
        // Fingerprints as the engine makes them (xxh3-128 of the ids).
        p.id = xxhash_rust::xxh3::xxh3_128(format!("e{i}").as_bytes());
        p.order = xxhash_rust::xxh3::xxh3_128(format!("o{i}").as_bytes());
        p.user = xxhash_rust::xxh3::xxh3_64(&(i % 100_000).to_le_bytes());
        p.ts = T0 + (i / per_ms) as i64;
        p.seq = i;
        batch.push(p);
        if batch.len() == batch.capacity() {
            engine.apply(&batch);
            batch.clear();
        }
    }
    engine.apply(&batch);
    let (snap, _) = engine.publish();
    let want = n as u128 * max as u128;
    assert!(want > u64::MAX as u128);
    assert_eq!(snap.totals.gmv_cents, want);
    assert_eq!(snap.totals.coupon_cents, want);
    assert_eq!(snap.totals.paid_orders, n);
    assert_eq!(snap.windows[0].gmv_cents, want, "all of it is inside the 1-minute window");
    assert_eq!(snap.slots[0].gmv_cents, want);
    assert_eq!(snap.venues[0].gmv_cents, want);
    assert_eq!(snap.venues[0].race.ranking[0].gmv_cents, want);
    assert_eq!(snap.channels.len(), 0);
    let d = &snap.decomposition[0];
    assert_eq!(d.delta_gmv_cents, want as i128);
    assert_eq!(d.traffic_cents + d.conversion_cents + d.aov_cents, d.delta_gmv_cents);
    assert_eq!(snap.funnel.aov_cents, want / snap.totals.buyers as u128);
}

/// A merchant sees how far each of its slots is behind the slot above and what that gap is made
/// of, input by input; checked against the rule worked out by hand, and nothing of the slot
/// above is named or given in its own units but the distance.
#[test]
fn a_merchant_sees_its_gap_to_the_slot_above_split_by_the_rules_inputs() {
    let mut cfg = Config::default();
    cfg.race.hysteresis = 0.0;
    let weights = [(Input::Gmv, 0.6), (Input::Clicks, 0.3), (Input::ClicksRise, 0.1)];
    cfg.race
        .rules
        .insert("mix".into(), RuleSpec { weights: weights.into_iter().collect(), description: String::new() });
    cfg.race.venues.insert("main".into(), "mix".into());
    let mut off = cfg.clone();
    off.race.merchant_gap = false;
    let engine = Engine::new(cfg);
    // Traffic names the slot's merchant too (contract v1.1: traffic belongs to the merchant named).
    let click = |id: &str, ts: i64, user: &str, slot: &str| {
        click(id, ts, user, slot).replace("\"}", &format!("\",\"merchant_id\":\"m-{slot}\"}}"))
    };
    // The window before the race window (T0, T0+5m], then the race window (T0+5m, T0+10m].
    let mut lines = vec![click("b0", T0 + 100_000, "u1", "main-b")];
    lines.extend((0..4).map(|i| click(&format!("c0{i}"), T0 + 100_000 + i, "u1", "main-c")));
    lines.push(pay("pa", T0 + 400_000, "u1", "main-a", "oa", 9_000));
    lines.push(pay("pb", T0 + 400_000, "u1", "main-b", "ob", 6_000));
    lines.push(pay("pc", T0 + 400_000, "u1", "main-c", "oc", 1_000));
    for (slot, n) in [("main-a", 2), ("main-b", 6), ("main-c", 4)] {
        lines.extend((0..n).map(|i| click(&format!("{slot}-{i}"), T0 + 500_000 + i, "u1", slot)));
    }
    lines.push(click("last", T0 + 600_000, "u1", "side-x"));
    feed(&engine, &lines);
    let (s, _) = engine.publish();
    // By hand: gmv 9000/6000/1000 -> 1, 0.625, 0; clicks 2/6/4 -> 0, 1, 0.5; clicks rise
    // 2/5/0 -> 0.4, 1, 0. Scores a 0.64, b 0.775, c 0.15: b, a, c.
    let order: Vec<&str> = s.venues[0].race.ranking.iter().map(|e| e.slot.as_str()).collect();
    assert_eq!(order[..3], ["main-b", "main-a", "main-c"]);
    let gap_of = |merchant: &str| {
        let v = warroom_engine::views::merchant_view(&s, merchant, None);
        let e = &v.venues.iter().find(|x| x.venue == "main").unwrap().race.ranking[0];
        let json = serde_json::to_string(&v).unwrap();
        for other in ["main-a", "main-b", "main-c"].iter().filter(|o| !merchant.ends_with(*o)) {
            assert!(!json.contains(other), "{merchant}'s view names {other}: {json}");
        }
        assert!(!json.contains("\"lo\"") && !json.contains("\"hi\""), "ranges measure other slots: {json}");
        let w: Vec<(Input, f64)> = v.venues[0].race.weights.iter().map(|w| (w.input, w.weight)).collect();
        assert_eq!(w, weights);
        (e.rank, e.gap.clone())
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let check = |merchant: &str, rank: u32, points: f64, parts: [f64; 3]| {
        let (r, gap) = gap_of(merchant);
        assert_eq!(r, rank, "{merchant}");
        let gap = gap.unwrap_or_else(|| panic!("{merchant}: no gap"));
        assert_eq!(gap.to_rank, rank - 1);
        assert!(close(gap.points, points), "{merchant}: {} vs {points}", gap.points);
        let got: Vec<(Input, f64)> = gap.parts.iter().map(|p| (p.input, p.points)).collect();
        for ((i, p), (wi, want)) in got.iter().zip(weights.iter().map(|w| w.0).zip(parts)) {
            assert!(*i == wi && close(*p, want), "{merchant}: {i:?} {p} vs {wi:?} {want}");
        }
        // The gap is the distance between the two scores of the full ranking.
        let full = &s.venues[0].race.ranking;
        assert!(close(gap.points, full[rank as usize - 2].score - full[rank as usize - 1].score));
    };
    check("m-main-a", 2, 0.135, [-0.225, 0.3, 0.06]);
    check("m-main-c", 3, 0.49, [0.6, -0.15, 0.04]);
    assert_eq!(gap_of("m-main-b"), (1, None), "the leader has no slot above");
    // Under the gmv rule the gap is GMV in cents, exactly.
    engine.set_rule("main", "gmv", None).unwrap();
    let (s, _) = engine.publish();
    let v = warroom_engine::views::merchant_view(&s, "m-main-b", None);
    let gap = v.venues[0].race.ranking[0].gap.clone().unwrap();
    assert_eq!((gap.to_rank, gap.points, gap.parts.len(), gap.parts[0].input), (1, 3_000.0, 1, Input::Gmv));
    // `race.merchant_gap = false`: the same night shows no merchant a gap.
    let engine = Engine::new(off);
    feed(&engine, &lines);
    let (s, _) = engine.publish();
    for m in ["m-main-a", "m-main-b", "m-main-c"] {
        let v = warroom_engine::views::merchant_view(&s, m, None);
        let e = &v.venues.iter().find(|x| x.venue == "main").unwrap().race.ranking[0];
        assert_eq!(e.gap, None, "{m}");
    }
}
