//! The history endpoints through the real router on a real socket: a merchant's token sees
//! its own numbers only (history, curve, review), the journal is for ops, and the curve
//! aligns the previous promotion by phase: last year's night with the same events, a year
//! earlier, is drawn exactly on this year's, and the projection made from its shape is the
//! phase's exact total.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use warroom_api::{AppState, Auth, Hub};
use warroom_engine::history::HistorySink;
use warroom_engine::{Config, Engine};
use warroom_history::HistoryDb;
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::ChunkProcessor;
use warroom_model::Limits;
use warroom_tests::{lines, reference_history};

const OPS: &str = "demo-ops-token-0001";
const MERCHANT: &str = "demo-merchant-m4-token";
const START: i64 = 1_794_312_000_000;
/// Last year's night: 364 days earlier (whole minutes).
const YEAR: i64 = 364 * 86_400_000;

fn plan(shift: i64) -> warroom_engine::plan::PlanConfig {
    let ts = |m: i64| jiff::Timestamp::from_millisecond(START - shift + m * 60_000).unwrap();
    let text = format!(
        "name = \"d11\"\n[[phases]]\nkind = \"warmup\"\nname = \"w\"\nstart = \"{}\"\nend = \"{}\"\ntarget_gmv_cents = 5000000\n[[phases]]\nkind = \"official\"\nname = \"o\"\nstart = \"{}\"\nend = \"{}\"\ntarget_gmv_cents = 9000000\n",
        ts(0),
        ts(60),
        ts(60),
        ts(180)
    );
    toml::from_str(&text).unwrap()
}

/// The events of `buf` with their times moved back by `by` ms.
fn shifted(buf: &[u8], by: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines(buf) {
        match serde_json::from_slice::<Value>(l) {
            Ok(mut v) if v["ts"].is_i64() => {
                v["ts"] = Value::from(v["ts"].as_i64().unwrap() - by);
                out.extend_from_slice(v.to_string().as_bytes());
            }
            _ => out.extend_from_slice(l),
        }
        out.push(b'\n');
    }
    out
}

/// An engine fed with `buf`, its minutes stored into `db` (with `plan` stored beside them).
fn fed(buf: &[u8], cfg: Config, db: &HistoryDb, plan: &warroom_engine::plan::PlanConfig) -> Arc<Engine> {
    let engine = Arc::new(Engine::new(cfg));
    ChunkProcessor::new(engine.clone(), Limits::default()).process(buf, 1);
    db.store(&engine.take_history()).unwrap();
    db.with(|s| s.set_meta("plan", &serde_json::to_string(plan).unwrap())).unwrap();
    engine
}

async fn get(base: &str, path: &str, token: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_see_their_own_history_and_last_year_is_aligned_by_phase() {
    let mut buf = Vec::new();
    let g = GenConfig { seed: 41, merchant_change_share: 0.02, ..GenConfig::default() };
    write_night(g, 30_000, START, 2 * 3_600_000, &mut buf).unwrap();
    let want = reference_history(&lines(&buf));
    let mut cfg = Config::default();
    cfg.engine.shards = 2;
    cfg.plan = Some(plan(0));
    let db = Arc::new(HistoryDb::open(None).unwrap());
    let engine = fed(&buf, cfg.clone(), &db, &plan(0));
    let prev = HistoryDb::open(None).unwrap();
    let mut prev_cfg = cfg.clone();
    prev_cfg.plan = Some(plan(YEAR));
    fed(&shifted(&buf, YEAR), prev_cfg, &prev, &plan(YEAR));

    let mut state = AppState::new(engine.clone(), Auth::load(None).unwrap(), Arc::new(Hub::new()), None);
    state.set_history(db.clone());
    state.previous = Some(Arc::new(prev));
    let state = Arc::new(state);
    let (snap, changes) = engine.publish();
    state.on_publish(snap.clone(), changes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(warroom_api::serve(listener, state.clone(), std::future::pending()));

    // A merchant's token: its own pairs, whatever the scope it asks for.
    let (first, last) = (START / 60_000, START / 60_000 + 121);
    let whole = format!("from={}&to={}&step={}m", first * 60_000, last * 60_000, last - first);
    let mine = want.sum("merchant", "m-4", first, last);
    assert!(mine[0] > 0);
    let (s, v) = get(&base, &format!("/api/v1/history?metric=gmv&{whole}"), MERCHANT).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["points"][0][1].as_u64(), Some(mine[0]), "site-wide through a merchant's eyes is its own");
    let (_, v) = get(&base, &format!("/api/v1/history?metric=gmv&scope=merchant&name=m-8&{whole}"), MERCHANT).await;
    assert_eq!(v["points"][0][1].as_u64(), Some(0), "another merchant's history is empty to it: {v}");
    let (_, v) = get(&base, &format!("/api/v1/history?metric=gmv&scope=venue&name=main&{whole}"), MERCHANT).await;
    assert!(v["points"][0][1].as_u64().unwrap() <= mine[0], "a venue through its eyes: its own part");
    // Its channels: its slots' events through each channel (the naive reference's).
    let channels: Vec<String> = want
        .scopes()
        .into_iter()
        .filter(|(k, n)| k == "merchant_channel" && n.starts_with("m-4/"))
        .map(|(_, n)| n["m-4/".len()..].to_string())
        .collect();
    assert!(channels.len() >= 3, "{channels:?}");
    for ch in &channels {
        for metric in ["gmv", "clicks", "impressions"] {
            let k = warroom_engine::history::COUNTS.iter().position(|c| *c == metric).unwrap();
            let (s, v) =
                get(&base, &format!("/api/v1/history?metric={metric}&scope=channel&name={ch}&{whole}"), MERCHANT).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let mine = want.sum("merchant_channel", &format!("m-4/{ch}"), first, last)[k];
            assert_eq!(v["points"][0][1].as_u64(), Some(mine), "m-4's {metric} through {ch}");
            let site = want.sum("channel", ch, first, last)[k];
            assert!(mine <= site && (metric != "impressions" || mine < site), "{ch}: its own part of the channel");
        }
    }
    let (s, v) = get(&base, &format!("/api/v1/history?metric=uv&{whole}"), MERCHANT).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, c) = get(&base, "/api/v1/history/curve", MERCHANT).await;
    assert!(c.get("pace").is_none() && c.get("previous").is_none() && c.get("projection").is_none(), "{c}");
    // The screen's channel panel for it: its own channels over the curve's range.
    let (a, b) = (c["from_ms"].as_i64().unwrap() / 60_000, c["to_ms"].as_i64().unwrap() / 60_000);
    let mut got: Vec<(String, u64)> = c["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["channel"].as_str().unwrap().to_string(), x["gmv_cents"].as_u64().unwrap()))
        .collect();
    got.sort();
    let mut expected: Vec<(String, u64)> = channels
        .iter()
        .map(|ch| (ch.clone(), want.sum("merchant_channel", &format!("m-4/{ch}"), a, b)[0]))
        .filter(|x| want.sum("merchant_channel", &format!("m-4/{}", x.0), a, b) != [0; 12])
        .collect();
    expected.sort();
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "the curve's channels for m-4 over {a}..{b}");
    let (s, r) = get(&base, "/api/v1/review?format=json", MERCHANT).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["totals"]["gmv"].as_u64(), Some(mine[0]), "the merchant's review is its own");
    let names: Vec<&str> = r["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"merchants") && !names.contains(&"venues"), "{names:?}");
    // Its channels table: its own GMV per channel, every channel it sold through.
    let t = r["tables"].as_array().unwrap().iter().find(|t| t["name"] == "channels").expect("its channels");
    let gmv_col = t["columns"].as_array().unwrap().iter().position(|c| c == "gmv").unwrap();
    let mut shown: Vec<(String, u64)> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().to_string(), row[gmv_col]["cents"].as_u64().unwrap()))
        .collect();
    shown.sort();
    let mut expected: Vec<(String, u64)> = channels
        .iter()
        .map(|ch| (ch.clone(), want.sum("merchant_channel", &format!("m-4/{ch}"), first, last)[0]))
        .collect();
    expected.sort();
    assert_eq!(shown, expected, "the merchant's channels in its review");
    let (s, _) = get(&base, "/api/v1/history/journal", MERCHANT).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Ops: last year's curve, aligned by phase, lies exactly on this year's (same events).
    let (_, c) = get(&base, "/api/v1/history/curve?range=promotion", OPS).await;
    let actual = c["actual"].as_array().unwrap();
    let previous = c["previous"].as_array().unwrap();
    assert_eq!(actual.len(), previous.len());
    let total: u64 = actual.iter().map(|p| p[1].as_u64().unwrap()).sum();
    assert_eq!(total, want.sum("site", "", first, last)[0]);
    for (a, p) in actual.iter().zip(previous) {
        assert_eq!(a[0], p[0]);
        assert_eq!(a[1], p[1], "step {}: this year {} vs last year aligned {}", a[0], a[1], p[1]);
    }
    // The projection from last year's shape is the phase's exact final total (the same
    // events: what was still to come last year is what came this year).
    let p = &c["projection"];
    assert_eq!(p["basis"], "previous", "{p}");
    assert_eq!(p["phase"], "official");
    let official = want.sum("site", "", first + 60, first + 180)[0];
    assert_eq!(p["phase_projected_cents"].as_u64(), Some(official), "{p}");
    // Leading indicators per venue and the merchants with the most unpaid orders, over the
    // range, are the reference's.
    for v in c["venues"].as_array().unwrap() {
        let w = want.sum("venue", v["venue"].as_str().unwrap(), first, last);
        assert_eq!((v["favorites"].as_u64(), v["carts"].as_u64()), (Some(w[8]), Some(w[9])), "{v}");
    }
    let unpaid = c["unpaid"].as_array().unwrap();
    assert!(!unpaid.is_empty());
    for u in unpaid {
        let w = want.sum("merchant", u["merchant"].as_str().unwrap(), first, last);
        assert_eq!(u["unpaid"].as_u64(), Some(w[6].saturating_sub(w[1])), "{u}");
    }
    let (_, mc) = get(&base, "/api/v1/history/curve?range=promotion", MERCHANT).await;
    assert_eq!(mc["unpaid"].as_array().unwrap().len(), 1, "a merchant's unpaid: its own only");
    assert_eq!(mc["unpaid"][0]["unpaid"].as_u64(), Some(mine[6].saturating_sub(mine[1])));
    assert!(mc.get("venues").is_none());
    // Once per minute of event time it went into the journal.
    let (_, j) = get(&base, "/api/v1/history/journal?kind=projection", OPS).await;
    assert_eq!(j.as_array().unwrap().len(), 1, "{j}");
}

/// A night whose event time is not the wall clock's (a recorded night played through the
/// monitor weeks later, the simulator, a rehearsal at N times speed): the history, the curve
/// and the review are on the night's clock (event time), so its alerts and rule changes must
/// be too. Before, the journal kept them at the wall clock's time: such a night's alert
/// timeline was empty (its alerts fell weeks after the range) and its marks stood where the
/// wall clock did, not the curve. The seconds to acknowledge stay the wall clock's: how long
/// people took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsals_alerts_and_rule_changes_are_on_the_nights_clock() {
    let mut buf = Vec::new();
    write_night(GenConfig { seed: 7, ..GenConfig::default() }, 5_000, START, 2 * 3_600_000, &mut buf).unwrap();
    let cfg = Config { plan: Some(plan(0)), ..Config::default() };
    let db = Arc::new(HistoryDb::open(None).unwrap());
    let engine = fed(&buf, cfg, &db, &plan(0));
    let mut state = AppState::new(engine.clone(), Auth::load(None).unwrap(), Arc::new(Hub::new()), None);
    state.set_history(db.clone());
    let state = Arc::new(state);
    state
        .reload_alerts(
            toml::from_str(
                "[[rules]]\nname = \"gmv-1m-low\"\nkind = \"threshold\"\nmetric = \"gmv_cents\"\nwindow = \"1m\"\nbelow = true\nfire = 1000.0\nclear = 2000.0\npending = \"10s\"\nseverity = \"critical\"\n",
            )
            .unwrap(),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(warroom_api::serve(listener, state.clone(), std::future::pending()));
    // The night's clock half an hour in; the wall clock weeks later (now).
    let night = START + 30 * 60_000;
    let wall = warroom_api::now_ms() - 60_000;
    assert!(wall - night > 7 * 86_400_000);
    let (real, _) = engine.publish();
    let publish = |sec: i64, gmv: u128| {
        let mut s = (*real).clone();
        s.as_of_ms = night + sec * 1000;
        (s.published_at_ms, s.last_event_at_ms) = (wall + sec * 1000, wall + sec * 1000);
        s.windows.iter_mut().filter(|w| w.length_ms == 60_000).for_each(|w| w.gmv_cents = gmv);
        state.on_publish_at(Arc::new(s), Vec::new(), wall + sec * 1000);
    };
    publish(0, 500); // pending
    publish(12, 500); // held 12 s: firing
    let client = reqwest::Client::new();
    let admin = "demo-admin-token-0001";
    let r = client
        .put(format!("{base}/api/v1/venues/main/rule"))
        .bearer_auth(admin)
        .body(r#"{"rule":"by-clicks","weights":{"clicks":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = client.post(format!("{base}/api/v1/alerts/gmv-1m-low:site/ack")).bearer_auth(admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    publish(20, 2_500); // resolved
    let (_, alerts) = get(&base, "/api/v1/alerts", OPS).await;
    let a = &alerts[0];
    assert_eq!((a["state"].as_str(), a["fired_at_ms"].as_i64()), (Some("resolved"), Some(wall + 12_000)), "{alerts}");
    let to_ack = (a["acked_at_ms"].as_i64().unwrap() - a["fired_at_ms"].as_i64().unwrap()) / 1000;
    assert!(to_ack >= 48, "acknowledged about a minute after it fired (wall clock): {to_ack} s");

    let (s, r) = get(&base, "/api/v1/review?format=json", OPS).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let t = r["tables"].as_array().unwrap().iter().find(|t| t["name"] == "alerts").expect("the alert timeline");
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "the rehearsal's alert, in the night's range: {t}");
    let cell = |c: &str| &rows[0][t["columns"].as_array().unwrap().iter().position(|x| x == c).unwrap()];
    assert_eq!(cell("alert"), "gmv-1m-low:site");
    assert_eq!(cell("fired_at")["ms"].as_i64(), Some(night + 12_000), "fired on the night's clock");
    assert_eq!(
        cell("acknowledged_at")["ms"].as_i64(),
        Some(night + 12_000),
        "acknowledged while the night stood there"
    );
    assert_eq!(cell("resolved_at")["ms"].as_i64(), Some(night + 20_000));
    assert_eq!(cell("seconds_to_ack").as_i64(), Some(to_ack), "people's seconds, on the wall clock");
    let marks: Vec<(i64, &str)> = r["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["at_ms"].as_i64().unwrap(), m["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(marks, [(night + 12_000, "alert"), (night + 12_000, "rule")], "marked where the curve stood");
    // The journal's range and the audit trail say the night's time too.
    let (_, j) =
        get(&base, &format!("/api/v1/history/journal?kind=rule_change&from={night}&to={}", night + 60_000), OPS).await;
    assert_eq!(j.as_array().map(Vec::len), Some(1), "{j}");
    let (_, audit) = get(&base, "/api/v1/audit", OPS).await;
    assert_eq!(audit[0]["event_ms"].as_i64(), Some(night + 12_000), "{audit}");
    assert!((audit[0]["at_ms"].as_i64().unwrap() - warroom_api::now_ms()).abs() < 60_000, "made now: {audit}");
}

/// The site curve's tables and projection are kept between requests (every ops screen asks
/// every 5 s) but only until the next batch is written: asked again after a write, the same
/// range answers the new numbers (the reference's), not the kept ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curve_answers_what_was_written_since_it_was_last_asked() {
    let mut buf = Vec::new();
    write_night(GenConfig { seed: 3, ..GenConfig::default() }, 20_000, START, 2 * 3_600_000, &mut buf).unwrap();
    let all = lines(&buf);
    let (first, second) = all.split_at(all.len() / 2);
    let join = |ls: &[&[u8]]| ls.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect::<Vec<u8>>();
    let cfg = Config { plan: Some(plan(0)), ..Config::default() };
    let db = Arc::new(HistoryDb::open(None).unwrap());
    let engine = fed(&join(first), cfg, &db, &plan(0));
    let mut state = AppState::new(engine.clone(), Auth::load(None).unwrap(), Arc::new(Hub::new()), None);
    state.set_history(db.clone());
    let state = Arc::new(state);
    let (snap, changes) = engine.publish();
    state.on_publish(snap, changes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(warroom_api::serve(listener, state.clone(), std::future::pending()));
    let (a, b) = (START / 60_000, (START + 180 * 60_000) / 60_000);
    let check = |c: &Value, want: &warroom_tests::RefHistory, what: &str| {
        for v in c["venues"].as_array().unwrap() {
            let w = want.sum("venue", v["venue"].as_str().unwrap(), a, b);
            assert_eq!((v["favorites"].as_u64(), v["gmv_cents"].as_u64()), (Some(w[8]), Some(w[0])), "{what}: {v}");
        }
        let total: u64 = c["actual"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(total, want.sum("site", "", a, b)[0], "{what}");
    };
    let (_, c) = get(&base, "/api/v1/history/curve?range=promotion", OPS).await;
    check(&c, &reference_history(first), "first half");
    let (_, again) = get(&base, "/api/v1/history/curve?range=promotion", OPS).await;
    assert_eq!(again["venues"], c["venues"], "kept between writes");
    // The second half arrives and is written: the same range, new numbers.
    ChunkProcessor::new(engine.clone(), Limits::default()).process(&join(second), first.len() as u64 + 1);
    db.store(&engine.take_history()).unwrap();
    let (_, c) = get(&base, "/api/v1/history/curve?range=promotion", OPS).await;
    check(&c, &reference_history(&all), "whole night");
}
