//! History: what the engine hands out per minute with its checkpoints, stored in SQLite
//! (`warroom-history`) and read back, equals the naive reference over the same events, for
//! every scope, over the whole night and over a sub-range; distinct counts within 2%. A batch
//! written twice (a restart between storing it and persisting the checkpoint) counts once.

use std::sync::Arc;

use warroom_engine::history::COUNTS;
use warroom_engine::{Config, Engine};
use warroom_history::{Metric, Query, Scope, Store};
use warroom_ingest::ChunkProcessor;
use warroom_model::Limits;
use warroom_tests::{distinct_close, lines, reference_history, stored_totals, RefHistory};

const START: i64 = 1_794_312_000_000;

fn night(seed: u64, events: u64) -> Vec<u8> {
    warroom_tests::noisy_night(seed, events)
}

/// A noisy night stored into a new database in chunks of `chunk` lines: its naive reference,
/// the store, and the directory that holds the file (dropped with it).
fn stored_night(seed: u64, events: u64, chunk: usize) -> (RefHistory, Store, tempfile::TempDir) {
    let buf = night(seed, events);
    let all = lines(&buf);
    let want = reference_history(&all);
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = store_night(&all, chunk, usize::MAX, &dir.path().join("h.db"));
    (want, store, dir)
}

/// Feeds `lines` in chunks, storing a history batch after each (as a checkpoint would);
/// the batch after chunk `again` is written twice.
fn store_night(all: &[&[u8]], chunk: usize, again: usize, db: &std::path::Path) -> (Arc<Engine>, Store) {
    let mut cfg = Config::default();
    cfg.engine.shards = 2;
    let engine = Arc::new(Engine::new(cfg));
    let mut store = Store::open(db).unwrap();
    let mut proc = ChunkProcessor::new(engine.clone(), Limits::default());
    for (k, part) in all.chunks(chunk).enumerate() {
        let mut buf = Vec::new();
        for l in part {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        proc.process(&buf, (k * chunk) as u64 + 1);
        let batch = engine.take_history();
        store.write(&batch).unwrap();
        if k == again {
            let w = store.write(&batch).unwrap();
            assert_eq!(w.replaced, 2, "both shards' batches replaced, not added");
        }
    }
    (engine, store)
}

fn check_range(store: &Store, want: &RefHistory, from: i64, to: i64, what: &str) -> usize {
    let mut checked = 0;
    for (kind, name) in want.scopes() {
        let got = stored_totals(store, &kind, &name, from * 60_000, to * 60_000).unwrap();
        let w = want.sum(&kind, &name, from, to);
        assert_eq!(got.counts.values(), w, "{what}: {kind} {name:?}: store vs reference ({COUNTS:?})");
        if kind == "site" || kind == "venue" {
            let d = got.distinct.expect("site and venues have distinct counts");
            for (k, got) in d.iter().enumerate() {
                let w = want.distinct(&kind, &name, k, from, to);
                assert!(distinct_close(*got, w), "{what}: {kind} {name:?} distinct #{k}: {got} vs {w}");
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn stored_history_equals_the_reference_for_every_scope_whole_night_and_a_sub_range() {
    let buf = night(14, 60_000);
    let all = lines(&buf);
    let want = reference_history(&all);
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = store_night(&all, 7_000, 3, &dir.path().join("history.db"));

    let first = START / 60_000;
    let last = want.counts.keys().map(|k| k.2).max().unwrap();
    // The night's closed hours are rolled up, so the whole night reads them (and its edges
    // minutes): the same numbers as the reference.
    let rolled = store.rolled_hours().unwrap();
    assert!(
        rolled.is_some_and(|(a, b)| a <= first && b - a >= 120),
        "hours rolled up: {rolled:?} (night from minute {first} to {last})"
    );
    let n = check_range(&store, &want, first - 10, last + 1, "whole night");
    assert!(n > 40, "scopes checked: {n}");
    check_range(&store, &want, first + 31, first + 77, "minutes 31..77");

    // The history adds up to the snapshot's totals.
    let (snap, _) = engine.publish();
    let site = store.totals(&Scope::Site, None, 0, i64::MAX / 2).unwrap();
    assert_eq!(site.counts.gmv as u128, snap.totals.gmv_cents);
    assert_eq!(site.counts.paid_orders, snap.totals.paid_orders);

    // A series: per 5 minutes, each step the reference's sum of its minutes.
    let q = Query {
        metric: Metric::parse("gmv").unwrap(),
        scope: Scope::Site,
        from_ms: first * 60_000,
        to_ms: (first + 120) * 60_000,
        step_ms: 300_000,
        merchant: None,
    };
    let s = store.series(&q).unwrap();
    assert_eq!(s.points.len(), 24);
    for (k, (at, v)) in s.points.iter().enumerate() {
        let m = first + 5 * k as i64;
        assert_eq!(*at, m * 60_000);
        assert_eq!(*v, want.sum("site", "", m, m + 5)[0], "gmv of minutes {m}..{}", m + 5);
    }
    // UV per 10 minutes is the union of those minutes, not their sum.
    let q = Query { metric: Metric::parse("uv").unwrap(), step_ms: 600_000, ..q };
    let s = store.series(&q).unwrap();
    for (k, (_, v)) in s.points.iter().enumerate() {
        let m = first + 10 * k as i64;
        let w = want.distinct("site", "", 0, m, m + 10);
        assert!(distinct_close(*v, w), "uv of minutes {m}..{}: {v} vs {w}", m + 10);
    }
}

#[test]
fn a_merchant_sees_only_its_own_pairs() {
    let (want, store, _dir) = stored_night(15, 20_000, 20_000);
    let merchants: Vec<String> =
        want.scopes().into_iter().filter(|(k, _)| k == "merchant").map(|(_, n)| n).take(3).collect();
    assert!(merchants.len() == 3);
    let m = &merchants[0];
    let whole = |scope: &Scope, merchant: Option<&str>| store.totals(scope, merchant, 0, i64::MAX / 2).unwrap().counts;
    // Site-wide through a merchant's eyes is that merchant's own numbers.
    assert_eq!(whole(&Scope::Site, Some(m)).values(), want.sum("merchant", m, i64::MIN, i64::MAX));
    // Another merchant's scope gives nothing.
    assert_eq!(whole(&Scope::Merchant(merchants[1].clone()), Some(m)).values(), [0; 12]);
    // Distinct counts are not kept per merchant: refused, not answered with the site's.
    let q = Query {
        metric: Metric::parse("uv").unwrap(),
        scope: Scope::Site,
        from_ms: START,
        to_ms: START + 3_600_000,
        step_ms: 60_000,
        merchant: Some(m.clone()),
    };
    assert!(store.series(&q).is_err());
}

/// A monitor stores batches 1 and 2 but never persists the checkpoints after them (a failing
/// disk, then kill -9): restored from checkpoint 1, it applies those events again, and the
/// history counts them once, also when the restored state's first checkpoint comes before it
/// has applied anything (an empty batch; the clean-clone CI once caught doubled minutes there).
#[test]
fn batches_of_a_run_whose_checkpoints_were_lost_are_undone_when_their_events_come_again() {
    let buf = night(16, 24_000);
    let all = lines(&buf);
    let want = reference_history(&all);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("h.db")).unwrap();
    let mut cfg = Config::default();
    cfg.engine.shards = 2;
    let chunks: Vec<Vec<u8>> =
        all.chunks(6_000).map(|c| c.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()).collect();
    let feed = |e: &Arc<Engine>, k: usize| {
        ChunkProcessor::new(e.clone(), Limits::default()).process(&chunks[k], (k * 6_000) as u64 + 1);
    };
    let first = Arc::new(Engine::new(cfg.clone()));
    feed(&first, 0);
    let (persisted, b) = first.checkpoint_with_history(b"");
    store.write(&b).unwrap();
    for k in [1, 2] {
        feed(&first, k);
        let (_lost, b) = first.checkpoint_with_history(b"");
        store.write(&b).unwrap();
    }
    drop(first);
    let (again, _) = Engine::restore(cfg, &persisted, "ckpt".as_ref()).unwrap();
    let again = Arc::new(again);
    // Its first checkpoint comes before anything is applied again (an empty batch 1): that
    // alone undoes the stored batches 1 and 2 of both shards, whose events come again.
    let (_, empty) = again.checkpoint_with_history(b"");
    assert!(empty.is_empty());
    assert_eq!(store.write(&empty).unwrap().replaced, 4, "batches 1 and 2 of both shards undone");
    for k in 1..chunks.len() {
        feed(&again, k);
    }
    let (_, b) = again.checkpoint_with_history(b"");
    assert_eq!(store.write(&b).unwrap().replaced, 0);
    let start = START / 60_000;
    check_range(&store, &want, start - 10, start + 200, "after the lost checkpoints");
}

mod report {
    use super::*;
    use warroom_history::report::{build, Cell, Report, ReportOptions};

    fn col(r: &Report, table: &str, row: usize, name: &str) -> Cell {
        let t = r.tables.iter().find(|t| t.name == table).unwrap_or_else(|| panic!("no table {table}"));
        let k = t.columns.iter().position(|c| c == name).unwrap_or_else(|| panic!("{table} has no {name}"));
        t.rows[row][k].clone()
    }

    fn num(c: Cell) -> u64 {
        match c {
            Cell::Int(v) => v as u64,
            Cell::Cents(c) => c.cents as u64,
            other => panic!("not a number: {other:?}"),
        }
    }

    fn rows(r: &Report, table: &str) -> usize {
        r.tables.iter().find(|t| t.name == table).unwrap().rows.len()
    }

    /// Every number of the report (the range's totals, phases, slots, channels, venues,
    /// merchants, coupons and refunds) equals the reference's sum over the same minutes.
    fn check(r: &Report, want: &RefHistory, from: i64, to: i64, what: &str) {
        let site = want.sum("site", "", from, to);
        assert_eq!(r.totals.values(), site, "{what}: totals");
        let d = r.distinct.unwrap();
        for (k, got) in d.iter().enumerate() {
            let w = want.distinct("site", "", k, from, to);
            assert!(distinct_close(*got, w), "{what}: distinct #{k} {got} vs {w}");
        }
        for (table, scope, key) in
            [("slots", "slot", "slot"), ("channels", "channel", "channel"), ("merchants", "merchant", "merchant")]
        {
            let n = rows(r, table);
            let expected =
                want.scopes().iter().filter(|(k, n)| k == scope && want.sum(k, n, from, to) != [0; 12]).count();
            assert_eq!(n, expected, "{what}: {table} rows");
            for i in 0..n {
                let Cell::Text(name) = col(r, table, i, key) else { panic!() };
                let w = want.sum(scope, &name, from, to);
                assert_eq!(num(col(r, table, i, "gmv")), w[0], "{what}: {table} {name} gmv");
                assert_eq!(num(col(r, table, i, "paid_orders")), w[1], "{what}: {table} {name} orders");
                assert_eq!(num(col(r, table, i, "impressions")), w[10], "{what}: {table} {name} impressions");
                assert_eq!(num(col(r, table, i, "clicks")), w[11], "{what}: {table} {name} clicks");
                if table == "merchants" {
                    assert_eq!(num(col(r, table, i, "orders_placed")), w[6], "{what}: {name} placed");
                }
            }
        }
        for i in 0..rows(r, "venues") {
            let Cell::Text(name) = col(r, "venues", i, "venue") else { panic!() };
            let w = want.sum("venue", &name, from, to);
            assert_eq!(num(col(r, "venues", i, "gmv")), w[0], "{what}: venue {name}");
            assert_eq!(num(col(r, "venues", i, "favorites")), w[8], "{what}: venue {name} favorites");
            let uv = num(col(r, "venues", i, "uv"));
            assert!(distinct_close(uv, want.distinct("venue", &name, 0, from, to)), "{what}: venue {name} uv {uv}");
        }
        for (i, p) in r.phases.iter().enumerate() {
            let w = want.sum("site", "", p.start_ms / 60_000, p.end_ms / 60_000);
            assert_eq!(num(col(r, "phases", i, "gmv")), w[0], "{what}: phase {}", p.name);
            assert_eq!(num(col(r, "coupons_refunds", i, "coupon_cents")), w[3], "{what}: phase {} coupons", p.name);
            assert_eq!(num(col(r, "coupons_refunds", i, "refund_cents")), w[5], "{what}: phase {} refunds", p.name);
        }
    }

    #[test]
    fn the_review_report_equals_the_reference_for_the_whole_night_and_a_sub_range() {
        let (want, store, _dir) = stored_night(17, 40_000, 10_000);
        // A plan of two phases over the night.
        let ts = |m: i64| jiff::Timestamp::from_millisecond(START + m * 60_000).unwrap();
        let plan = format!(
            "name = \"test\"\n[[phases]]\nkind = \"warmup\"\nname = \"w\"\nstart = \"{}\"\nend = \"{}\"\ntarget_gmv_cents = 1000000\n[[phases]]\nkind = \"official\"\nname = \"o\"\nstart = \"{}\"\nend = \"{}\"\ntarget_gmv_cents = 2000000\ntarget_uv = 5000\ntarget_buyers = 900\n",
            ts(0), ts(80), ts(80), ts(120)
        );
        let plan: warroom_engine::plan::PlanConfig = toml::from_str(&plan).unwrap();
        store.set_meta("plan", &serde_json::to_string(&plan).unwrap()).unwrap();
        let first = START / 60_000;

        let r = build(&store, None, &ReportOptions::default()).unwrap();
        assert_eq!((r.from_ms, r.to_ms), (START, START + 120 * 60_000));
        assert_eq!(r.phases.len(), 2);
        check(&r, &want, first, first + 120, "whole night");
        assert!(r.html().contains("┅ plan pace") && r.html().contains("┆ rule change"), "the legend");
        // The gap against the targets adds up.
        let gap = num(col(&r, "phase_gap", 0, "gap")) as i64;
        let parts: i64 = ["traffic", "conversion", "order_value"]
            .iter()
            .map(|c| match col(&r, "phase_gap", 0, c) {
                Cell::Cents(c) => c.cents,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(gap, parts);

        let opts = ReportOptions {
            from_ms: Some(START + 37 * 60_000),
            to_ms: Some(START + 101 * 60_000),
            ..Default::default()
        };
        let r = build(&store, None, &opts).unwrap();
        assert_eq!(r.phases.len(), 2, "both phases, clipped");
        check(&r, &want, first + 37, first + 101, "minutes 37..101");

        // A merchant's own report: its numbers only.
        let m = want.scopes().into_iter().find(|(k, _)| k == "merchant").unwrap().1;
        let r = build(&store, None, &ReportOptions { merchant: Some(m.clone()), ..Default::default() }).unwrap();
        assert_eq!(r.totals.values(), want.sum("merchant", &m, first, first + 120), "merchant {m}");
        assert!(r.tables.iter().all(|t| !["merchants", "venues", "alerts", "phase_gap"].contains(&t.name.as_str())));
        // Its phases: its own funnel per phase (the reference's sums), no progress towards the
        // site's targets (the plan sets them) and no site-wide distinct counts.
        let t = r.tables.iter().find(|t| t.name == "phases").unwrap();
        assert!(
            ["target_gmv", "progress", "uv", "buyers"].iter().all(|c| !t.columns.contains(&c.to_string())),
            "{:?}",
            t.columns
        );
        for (i, (a, b)) in [(0, 80), (80, 120)].into_iter().enumerate() {
            let w = want.sum("merchant", &m, first + a, first + b);
            for (c, k) in [("gmv", 0), ("paid_orders", 1), ("impressions", 10), ("clicks", 11)] {
                assert_eq!(num(col(&r, "phases", i, c)), w[k], "{m} phase {i} {c}");
            }
            assert!(w[0] > 0 && w[11] > 0);
            assert_eq!(
                col(&r, "phases", i, "aov"),
                Cell::Cents(warroom_history::report::CentsCell { cents: (w[0] / w[1]) as i64 })
            );
        }
        assert!(
            !r.html().contains("┅ plan pace") && !r.html().contains("┆ rule change"),
            "a legend of lines not drawn"
        );
        // Its channels: its slots' events through each, against the reference.
        let t = r.tables.iter().find(|t| t.name == "channels").expect("the merchant's channels");
        let mut mine: Vec<String> = want
            .scopes()
            .into_iter()
            .filter(|(k, n)| k == "merchant_channel" && n.starts_with(&format!("{m}/")))
            .map(|(_, n)| n[m.len() + 1..].to_string())
            .collect();
        mine.sort();
        let mut shown: Vec<String> = t
            .rows
            .iter()
            .map(|row| match &row[0] {
                Cell::Text(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        shown.sort();
        assert_eq!(shown, mine, "{m}'s channels");
        for (i, row) in t.rows.iter().enumerate() {
            let Cell::Text(ch) = &row[0] else { unreachable!() };
            let w = want.sum("merchant_channel", &format!("{m}/{ch}"), first, first + 120);
            for (c, k) in [("gmv", 0), ("paid_orders", 1), ("impressions", 10), ("clicks", 11)] {
                assert_eq!(num(col(&r, "channels", i, c)), w[k], "{m} {ch} {c}");
            }
        }
        let html = r.html();
        // Self-contained: charts inline, nothing fetched (the SVG namespace is a name, not a fetch).
        assert!(html.contains("<svg") && !html.contains("src=") && !html.contains("<link") && !html.contains("url("));
    }

    /// A merchant's review lists its races with its own money only: a slot that changed
    /// hands holds another merchant's GMV too. Before, an hour's leader was named with the
    /// slot's whole GMV whenever the slot had ever been the merchant's, and its climbers
    /// climbed by the whole slot's GMV: another merchant's sales through its eyes.
    #[test]
    fn a_merchants_race_rows_hold_its_own_money_only() {
        let (want, store, _dir) = stored_night(29, 40_000, 10_000);
        let first = START / 60_000;
        let opts = ReportOptions { from_ms: Some(START), to_ms: Some(START + 120 * 60_000), ..Default::default() };
        let hour = |k: i64| (first + 60 * k, first + 60 * (k + 1));
        let own =
            |m: &str, slot: &str, k: i64| want.sum("merchant_slot", &format!("{m}/{slot}"), hour(k).0, hour(k).1)[0];
        let merchants: Vec<String> =
            want.scopes().into_iter().filter(|(k, _)| k == "merchant").map(|(_, n)| n).collect();
        // The site's leaders (ops' report, checked against the reference slot sums) that
        // another merchant also sold on in that hour: none of their merchants may see them.
        let site = build(&store, None, &opts).unwrap();
        let races = site.tables.iter().find(|t| t.name == "races").unwrap();
        let mut shared = 0;
        for row in races.rows.iter().filter(|r| r[1] == Cell::Text("leader".into())) {
            let (Cell::Text(slot), Cell::Time(at)) = (&row[3], &row[2]) else { panic!("{row:?}") };
            let k = (at.ms - START) / 3_600_000;
            assert_eq!(num(row[4].clone()), want.sum("slot", slot, hour(k).0, hour(k).1)[0], "{slot} hour {k}");
            let sellers = merchants.iter().filter(|m| own(m, slot, k) > 0).count();
            shared += usize::from(sellers >= 2);
        }
        assert!(shared > 0, "the night has a leader two merchants sold on: the case under test");
        let mut hidden = 0;
        for m in &merchants {
            let r = build(&store, None, &ReportOptions { merchant: Some(m.clone()), ..opts.clone() }).unwrap();
            let t = r.tables.iter().find(|t| t.name == "races").unwrap();
            for row in &t.rows {
                let Cell::Text(slot) = &row[3] else { panic!("{row:?}") };
                match &row[1] {
                    Cell::Text(w) if w == "leader" => {
                        let Cell::Time(at) = &row[2] else { panic!("{row:?}") };
                        let k = (at.ms - START) / 3_600_000;
                        let whole = want.sum("slot", slot, hour(k).0, hour(k).1)[0];
                        assert_eq!(
                            (num(row[4].clone()), whole),
                            (own(m, slot, k), own(m, slot, k)),
                            "{m}: leader {slot} hour {k}"
                        );
                    }
                    Cell::Text(w) if w == "climber" => {
                        assert_eq!(
                            num(row[4].clone()) as i64,
                            own(m, slot, 1) as i64 - own(m, slot, 0) as i64,
                            "{m}: climber {slot}"
                        );
                    }
                    Cell::Text(w) if w == "top seller" => {
                        assert_eq!(
                            num(row[4].clone()),
                            want.sum("merchant_slot", &format!("{m}/{slot}"), first, first + 120)[0],
                            "{m}: {slot}"
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
            hidden += races
                .rows
                .iter()
                .filter(|row| row[1] == Cell::Text("leader".into()))
                .filter(|row| {
                    let (Cell::Text(slot), Cell::Time(at)) = (&row[3], &row[2]) else { unreachable!() };
                    let k = (at.ms - START) / 3_600_000;
                    own(m, slot, k) > 0 && own(m, slot, k) < num(row[4].clone())
                })
                .count();
        }
        assert!(hidden > 0, "a leader some merchant sold on in part, not shown to it");
    }

    /// A review mid-promotion measures a phase by what has happened. Uplift (提升): GMV per
    /// hour of each phase against the previous promotion's same phase and an ordinary day,
    /// equal to the reference's sums: over the whole phase once it is over; over the elapsed
    /// part of the phase in progress against the same part of last time's (a rate over the
    /// phase's whole length counted the hours to come as hours without sales); no rate for a
    /// phase not begun. The projection's error: against the phase's GMV once it is over; none
    /// while it is in progress (its GMV so far against a projection of its end is no error).
    #[test]
    fn a_phase_in_progress_is_measured_by_what_has_happened() {
        let ts = |m: i64| jiff::Timestamp::from_millisecond(START + m * 60_000).unwrap();
        let plan = format!(
            "name = \"test\"\n[[phases]]\nkind = \"warmup\"\nstart = \"{}\"\nend = \"{}\"\n[[phases]]\nkind = \"official\"\nstart = \"{}\"\nend = \"{}\"\n[[phases]]\nkind = \"encore\"\nstart = \"{}\"\nend = \"{}\"\n",
            ts(0), ts(80), ts(80), ts(120), ts(120), ts(150)
        );
        let plan: warroom_engine::plan::PlanConfig = toml::from_str(&plan).unwrap();
        let plan = serde_json::to_string(&plan).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Last time: another night over the same plan.
        let prev_buf = night(23, 30_000);
        let prev_all = lines(&prev_buf);
        let was = reference_history(&prev_all);
        let (_, prev) = store_night(&prev_all, 10_000, usize::MAX, &dir.path().join("prev.db"));
        prev.set_meta("plan", &plan).unwrap();
        // This time, stored until minute 100 (the official phase in progress); the events
        // after it have not happened yet.
        let buf = night(17, 40_000);
        let now: Vec<&[u8]> = lines(&buf)
            .into_iter()
            .filter(|l| {
                serde_json::from_slice::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["ts"].as_i64())
                    .is_none_or(|t| t < START + 100 * 60_000)
            })
            .collect();
        let want = reference_history(&now);
        let (_, store) = store_night(&now, 10_000, usize::MAX, &dir.path().join("h.db"));
        store.set_meta("plan", &plan).unwrap();
        let first = START / 60_000;
        let until = want.counts.keys().map(|k| k.2).max().unwrap() + 1 - first;
        assert!(until > 85 && until <= 100, "stored until minute {until}");
        let per_hour = |gmv: u64, minutes: i64| gmv as i64 * 60 / minutes;
        let opts = ReportOptions {
            baseline: Some((START + 10 * 60_000, START + 40 * 60_000)),
            now_ms: Some(START + 100 * 60_000),
            ..Default::default()
        };
        let r = build(&store, Some(&prev), &opts).unwrap();
        let ordinary = per_hour(want.sum("site", "", first + 10, first + 40)[0], 30);
        let rate = |row: usize, column: &str| match col(&r, "uplift", row, column) {
            Cell::Cents(c) => Some(c.cents),
            Cell::Empty => None,
            other => panic!("{other:?}"),
        };
        // Whole warm-up: both nights' 80 minutes.
        let w = per_hour(want.sum("site", "", first, first + 80)[0], 80);
        let wp = per_hour(was.sum("site", "", first, first + 80)[0], 80);
        assert_eq!((rate(0, "gmv_per_hour"), rate(0, "previous_gmv_per_hour")), (Some(w), Some(wp)), "warm-up");
        // Official, in progress: its minutes so far against the same minutes last time.
        let o = per_hour(want.sum("site", "", first + 80, first + until)[0], until - 80);
        let op = per_hour(was.sum("site", "", first + 80, first + until)[0], until - 80);
        assert_eq!((rate(1, "gmv_per_hour"), rate(1, "previous_gmv_per_hour")), (Some(o), Some(op)), "official");
        let Cell::Ratio(vs) = col(&r, "uplift", 1, "vs_previous") else { panic!("no ratio") };
        assert!((vs - (o as f64 / op as f64 - 1.0)).abs() < 1e-3, "vs previous {vs}");
        // The first-formula split: the warm-up against last time's whole warm-up, the
        // official phase so far against the same minutes last time, none for the encore.
        assert_eq!(rows(&r, "phase_gap"), 2, "no split for a phase not begun");
        let gap = |row: usize| match col(&r, "phase_gap", row, "gap") {
            Cell::Cents(c) => c.cents,
            other => panic!("{other:?}"),
        };
        let whole = |h: &RefHistory, a: i64, b: i64| h.sum("site", "", first + a, first + b)[0] as i64;
        assert_eq!(gap(0), whole(&want, 0, 80) - whole(&was, 0, 80), "warm-up gap");
        assert_eq!(gap(1), whole(&want, 80, until) - whole(&was, 80, until), "official gap so far");
        assert_eq!(col(&r, "phase_gap", 1, "basis"), Cell::Text("previous promotion (same elapsed part)".into()));
        // Encore, not begun: no rate, no numbers against its targets (not a progress of 0%).
        assert_eq!((rate(2, "gmv_per_hour"), rate(2, "previous_gmv_per_hour")), (None, None), "encore");
        for c in ["gmv", "progress", "uv", "buyers"] {
            assert_eq!(col(&r, "phases", 2, c), Cell::Empty, "encore {c}");
        }
        assert_eq!(num(col(&r, "phases", 0, "gmv")), want.sum("site", "", first, first + 80)[0]);
        for c in ["gmv", "paid_orders", "coupon_orders", "refunds", "refund_cents"] {
            assert_eq!(col(&r, "coupons_refunds", 2, c), Cell::Empty, "encore {c}");
        }
        assert_eq!(num(col(&r, "coupons_refunds", 0, "refund_cents")), want.sum("site", "", first, first + 80)[5]);
        let note = |r: &warroom_history::report::Report, t: &str| {
            r.tables.iter().find(|x| x.name == t).unwrap().note.clone().unwrap_or_default()
        };
        assert_eq!(note(&r, "phase_gap"), "1 phase(s) not begun yet");
        assert_eq!(note(&r, "uplift"), "", "previous and ordinary day given");
        // Without a previous promotion or an ordinary day, the tables say why they are empty
        // and what to configure (the plan has no traffic targets to split against).
        let alone = build(&store, None, &ReportOptions { baseline: None, ..opts.clone() }).unwrap();
        assert_eq!(rows(&alone, "phase_gap"), 0);
        assert!(note(&alone, "phase_gap").starts_with("2 phase(s) not split: the plan sets no target_uv and target_buyers for them, and no previous promotion is configured"), "{}", note(&alone, "phase_gap"));
        assert!(
            note(&alone, "uplift").contains("no previous promotion")
                && note(&alone, "uplift").contains("--baseline-from")
        );
        assert!(alone.html().contains("no previous promotion is configured"));
        for row in 0..3 {
            assert_eq!(rate(row, "ordinary_gmv_per_hour"), Some(ordinary), "ordinary day, row {row}");
        }
        // The projection, journaled in the warm-up's first hour and in the official phase.
        for (minute, projected) in [(30, 2_000_000u64), (31, 1), (90, 5_000_000)] {
            let body =
                serde_json::json!({ "phase_projected_cents": projected, "phase_low_cents": 1, "phase_high_cents": 2 });
            store
                .journal(&warroom_history::JournalEntry {
                    at_ms: START + minute * 60_000,
                    kind: "projection".into(),
                    body,
                })
                .unwrap();
        }
        let r = build(&store, Some(&prev), &opts).unwrap();
        assert_eq!(rows(&r, "projection"), 2, "one a hour");
        let actual = want.sum("site", "", first, first + 80)[0];
        assert_eq!(num(col(&r, "projection", 0, "actual")), actual, "the warm-up is over");
        let Cell::Ratio(e) = col(&r, "projection", 0, "error") else { panic!("no error") };
        assert!((e - (2_000_000.0 / actual as f64 - 1.0)).abs() < 1e-9, "error {e}");
        assert_eq!(num(col(&r, "projection", 1, "projected")), 5_000_000);
        assert!(matches!(col(&r, "projection", 1, "actual"), Cell::Empty), "the official phase is not over");
        assert!(matches!(col(&r, "projection", 1, "error"), Cell::Empty));
        // Once the night is over (its last 20 minutes had no events), the official phase is
        // measured whole: its 40 minutes, its GMV against the projection.
        let r = build(&store, Some(&prev), &ReportOptions { now_ms: Some(START + 200 * 60_000), ..opts }).unwrap();
        let o = want.sum("site", "", first + 80, first + 120)[0];
        assert_eq!(num(col(&r, "uplift", 1, "gmv_per_hour")), (o as i64 * 60 / 40) as u64, "official, whole");
        assert_eq!(num(col(&r, "projection", 1, "actual")), o, "official, over");
    }

    /// A review asked before the range is over (mid-promotion): the steps after the last
    /// stored minute have not happened. The curve stops before the last stored minute and the
    /// CSV leaves the later steps' numbers empty; before, they were drawn and written as
    /// zeros, a fall to nothing "as if sales had stopped". Written steps equal the reference.
    #[test]
    fn a_review_of_a_range_not_over_yet_draws_no_fall_to_zero() {
        let (want, store, dir) = stored_night(9, 6_000, 10_000);
        let last = want.counts.keys().map(|k| k.2).max().unwrap();
        let until = (last + 1) * 60_000;
        // From a minute in, 15 hours past the data: steps of several minutes, the last one
        // stored only in part.
        let first = START + 60_000;
        let opts = ReportOptions {
            from_ms: Some(first),
            to_ms: Some(until + 900 * 60_000),
            now_ms: Some(until + 30_000),
            ..Default::default()
        };
        let r = build(&store, None, &opts).unwrap();
        assert_eq!(r.stored_until_ms, Some(until));
        let step = r.step_ms;
        // Drawn: the steps that end before the last stored minute (a monitor still writing
        // has it in part). Written: every step that began before the end.
        let whole = (0..).take_while(|k| first + (k + 1) * step <= until - 60_000).count();
        let started = (0..).take_while(|k| first + k * step < until).count();
        assert!(step > 60_000 && started > whole, "a step stored in part: step {step}, {whole}, {started}");
        assert!(started < r.gmv.len(), "the range goes past the data");
        // The chart: the GMV line has a point per whole step stored, no more.
        let html = r.html();
        let line = html.split("stroke='#e8a400'").nth(1).expect("the GMV line");
        let points = line.split("points='").nth(1).unwrap().split('\'').next().unwrap();
        assert_eq!(points.split(' ').count(), whole, "points of the GMV line");
        assert!(html.contains("stored until "), "the page says where the stored minutes end");
        // The CSV: numbers for the steps that began before the end, equal to the reference;
        // none after it (the plan's pace column is the plan's, empty without one).
        let out = dir.path().join("r");
        r.write(&out).unwrap();
        let curve = std::fs::read_to_string(out.join("curve.csv")).unwrap();
        let rows: Vec<Vec<&str>> = curve.lines().skip(1).map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), r.gmv.len());
        for (k, row) in rows.iter().enumerate() {
            let from = (first + k as i64 * step) / 60_000;
            if k < started {
                let w = want.sum("site", "", from, from + step / 60_000)[0];
                assert_eq!(row[1], w.to_string(), "step {k}: gmv against the reference");
            } else {
                assert_eq!((row[1], row[3]), ("", ""), "step {k} after the stored minutes: {row:?}");
            }
        }
        // A range inside the data, and the same range once it is over (the night's last
        // minutes had no events: they did not happen), draw every step.
        let inside = ReportOptions { from_ms: Some(START), to_ms: Some(until - 60_000), ..opts.clone() };
        let over = ReportOptions { now_ms: Some(until + 900 * 60_000), ..opts };
        for o in [inside, over] {
            let r = build(&store, None, &o).unwrap();
            assert_eq!(r.stored_until_ms, None);
            let html = r.html();
            let line = html.split("stroke='#e8a400'").nth(1).unwrap();
            let points = line.split("points='").nth(1).unwrap().split('\'').next().unwrap();
            assert_eq!(points.split(' ').count(), r.gmv.len());
            assert!(!html.contains("stored until "));
        }
    }

    /// The report prints the promotion's clock: the one recorded with the history (UTC+8 when
    /// none is), or the one asked for. The night starts at 2026-11-10 20:00 +08:00.
    #[test]
    fn the_review_prints_times_on_the_promotions_clock() {
        let buf = night(5, 2_000);
        let all = lines(&buf);
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store_night(&all, 10_000, usize::MAX, &dir.path().join("h.db"));
        let opts = ReportOptions { from_ms: Some(START), to_ms: Some(START + 120 * 60_000), ..Default::default() };
        let page = |r: &warroom_history::report::Report, out: &std::path::Path| {
            r.write(out).unwrap();
            let curve = std::fs::read_to_string(out.join("curve.csv")).unwrap();
            (r.html(), curve.lines().nth(1).unwrap().split(',').next().unwrap().to_string())
        };
        let (html, first) = page(&build(&store, None, &opts).unwrap(), &dir.path().join("a"));
        assert!(html.contains("2026-11-10 20:00 — 2026-11-10 22:00 (UTC+8)"), "unrecorded: UTC+8");
        assert_eq!(first, "2026-11-10 20:00");
        store.set_meta("utc_offset", "Z").unwrap();
        let (html, first) = page(&build(&store, None, &opts).unwrap(), &dir.path().join("b"));
        assert!(html.contains("2026-11-10 12:00 — 2026-11-10 14:00 (UTC)"), "recorded Z");
        assert_eq!(first, "2026-11-10 12:00");
        let asked = ReportOptions { utc_offset_minutes: Some(-330), ..opts };
        let (html, first) = page(&build(&store, None, &asked).unwrap(), &dir.path().join("c"));
        assert!(html.contains("2026-11-10 06:30 — 2026-11-10 08:30 (UTC-5:30)"), "asked -05:30");
        assert_eq!(first, "2026-11-10 06:30");
    }
}
