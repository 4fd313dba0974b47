//! The API through the real router on a real socket: auth and roles, merchant scoping
//! (checked against the naive reference), rule hot-swap reaching the next push, reconnects,
//! and slow WebSocket clients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warroom_api::{AppState, Auth, Hub};
use warroom_engine::{Config, Engine};
use warroom_ingest::gen::{write_night, GenConfig};
use warroom_ingest::ChunkProcessor;
use warroom_model::Limits;

const OPS: &str = "demo-ops-token-0001";
const ADMIN: &str = "demo-admin-token-0001";
const MERCHANT: &str = "demo-merchant-m4-token";

struct Server {
    base: String,
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    state: Arc<AppState>,
    proc: ChunkProcessor,
}

impl Server {
    async fn start(cfg: Config) -> Server {
        Self::start_with(cfg, warroom_api::ApiConfig::default()).await
    }

    async fn start_with(cfg: Config, api: warroom_api::ApiConfig) -> Server {
        Self::start_shaped(cfg, |state| state.config = api).await
    }

    /// A server whose state `shape` completes before it serves.
    async fn start_shaped(cfg: Config, shape: impl FnOnce(&mut AppState)) -> Server {
        let engine = Arc::new(Engine::new(cfg));
        let hub = Arc::new(Hub::new());
        let mut state = AppState::new(engine.clone(), Auth::load(None).unwrap(), hub.clone(), None);
        shape(&mut state);
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(warroom_api::serve(listener, state.clone(), std::future::pending()));
        let proc = ChunkProcessor::new(engine.clone(), Limits::default());
        Server { base, engine, hub, state, proc }
    }

    /// Applies events and publishes, as the monitor's publish loop does.
    fn feed(&mut self, lines: &[u8]) {
        self.proc.process(lines, 1);
        self.publish();
    }

    fn publish(&self) {
        let (snap, changes) = self.engine.publish();
        self.state.on_publish(snap, changes);
    }

    async fn post(&self, path: &str, token: &str) -> (StatusCode, String) {
        let r = reqwest::Client::new().post(self.url(path)).bearer_auth(token).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.base)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = reqwest::Client::new().get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn put(&self, path: &str, token: &str, body: &str) -> (StatusCode, String) {
        let r =
            reqwest::Client::new().put(self.url(path)).bearer_auth(token).body(body.to_string()).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn ws(&self, token: &str, query: &str) -> Ws {
        let mut req = format!("ws://{}/api/v1/stream{query}", self.base).into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", format!("warroom.v1, bearer.{token}").parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket upgrade");
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "warroom.v1");
        ws
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message of a given type (pings and other types are skipped).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no `{kind}` message within 10 s"))
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

fn night(events: u64, seed: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = GenConfig { seed, merchant_change_share: 0.0, ..GenConfig::default() };
    write_night(cfg, events, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_are_enforced_with_errors_that_say_what_to_do() {
    let mut s = Server::start(Config::default()).await;
    s.feed(&night(2_000, 1));
    // Health checks need no token.
    assert_eq!(s.get("/healthz", None).await.0, StatusCode::OK);
    assert_eq!(s.get("/readyz", None).await.0, StatusCode::OK);
    // Everything else does.
    for path in ["/api/v1/snapshot", "/metrics", "/api/v1/venues/main/race", "/api/v1/audit", "/api/v1/openapi.json"] {
        let (code, body) = s.get(path, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert!(v["message"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
        assert_eq!(s.get(path, Some("not-a-known-token-at-all")).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (code, _) = s.get("/api/v1/snapshot", Some(OPS)).await;
    assert_eq!(code, StatusCode::OK);
    // A WebSocket without a token is refused before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/stream", s.base)).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    // Role checks.
    assert_eq!(s.get("/metrics", Some("demo-merchant-m4-token")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get("/api/v1/audit", Some("demo-merchant-m4-token")).await.0, StatusCode::FORBIDDEN);
    let (code, metrics) = s.get("/metrics", Some(OPS)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(metrics.contains("warroom_gmv_cents_total"), "{metrics}");
    let (code, body) = s.put("/api/v1/venues/main/rule", OPS, r#"{"rule":"gmv"}"#).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    // Validation: 400 with what to fix; nothing changed, nothing audited.
    for bad in [r#"{"rule":"x","weights":{"gmv":-1}}"#, r#"{"rule":"nope"}"#, r#"{"weights":{}}"#, "not json"] {
        let (code, body) = s.put("/api/v1/venues/main/rule", ADMIN, bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(s.engine.rule_of("main"), "gmv");
    let (code, body) = s.put("/api/v1/venues/main/rule", ADMIN, r#"{"rule":"by-clicks","weights":{"clicks":1}}"#).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(s.engine.rule_of("main"), "by-clicks");
    let (_, audit) = s.get("/api/v1/audit", Some(OPS)).await;
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit.as_array().unwrap().len(), 1);
    let e = &audit[0];
    assert_eq!((e["by"].as_str(), e["venue"].as_str()), (Some("demo-admin"), Some("main")));
    assert_eq!((e["old_rule"].as_str(), e["new_rule"].as_str()), (Some("gmv"), Some("by-clicks")));
    assert!(e["at_ms"].as_i64().unwrap() > 0);
    assert!(!audit.to_string().contains(ADMIN), "the audit trail must not hold tokens");
    // Unknown endpoints: JSON 404 naming the API description.
    let (code, body) = s.get("/api/v1/nope", Some(OPS)).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("openapi"), "{body}");
}

/// A night where slots change merchant (商品更换): 5% of slot events name another merchant,
/// and slot main-000 goes from m-4 to m-8 outright half-way.
fn night_with_merchant_changes() -> Vec<u8> {
    let mut buf = Vec::new();
    let cfg = GenConfig { seed: 77, merchant_change_share: 0.05, ..GenConfig::default() };
    write_night(cfg, 20_000, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let n = text.lines().count();
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let l = if l.contains(r#""slot":"main-000""#) {
                let m = if i < n / 2 { "m-4" } else { "m-8" };
                let at = l.find(r#""merchant_id":""#).map(|p| p + 15);
                match at {
                    Some(p) => {
                        let end = p + l[p..].find('"').unwrap();
                        format!("{}{}{}", &l[..p], m, &l[end..])
                    }
                    None => l.to_string(),
                }
            } else {
                l.to_string()
            };
            l + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_sees_the_money_of_events_naming_it_when_slots_change_hands() {
    let buf = night_with_merchant_changes();
    let mut s = Server::start(Config::default()).await;
    s.feed(&buf);
    let lines = warroom_tests::lines(&buf);
    let full = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    assert!(
        full.slot_merchants.iter().any(|p| p.slot == "main-000" && p.merchant_id == "m-4"),
        "the test needs main-000 shared"
    );
    assert!(full.slot_merchants.len() > 40, "many slots changed hands: {}", full.slot_merchants.len());
    for (m, token) in [("m-4", MERCHANT), ("m-8", "demo-merchant-m8-token")] {
        let want = warroom_tests::reference_merchant(&lines, &[60_000, 300_000, 3_600_000], 300_000, m);
        let (code, body) = s.get("/api/v1/snapshot", Some(token)).await;
        assert_eq!(code, StatusCode::OK);
        let mut got: Value = serde_json::from_str(&body).unwrap();
        let o = got.as_object_mut().unwrap();
        o.remove("published_at_ms");
        o.remove("last_event_at_ms");
        assert_eq!(got, want, "merchant {m}: the view differs from the naive per-event reference");
        // main-000 as this merchant sees it: only its own events' money.
        let (_, slot) = s.get("/api/v1/slots/main-000", Some(token)).await;
        let slot: Value = serde_json::from_str(&slot).unwrap();
        let mine = want["slots"].as_array().unwrap().iter().find(|x| x["slot"] == "main-000").unwrap();
        assert_eq!(slot["slot"], *mine, "merchant {m}: /slots/main-000");
        let whole = full.slots.iter().find(|x| x.slot == "main-000").unwrap();
        assert!(mine["gmv_cents"].as_u64().unwrap() as u128 != whole.gmv_cents, "the slot's whole GMV is not theirs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_sees_only_its_own_slots_and_numbers() {
    let buf = night(20_000, 5);
    let mut s = Server::start(Config::default()).await;
    s.feed(&buf);
    let lines = warroom_tests::lines(&buf);
    let want = warroom_tests::reference(&lines, &[60_000, 300_000, 3_600_000], 300_000);
    let merchants: BTreeSet<&str> = want.slots.iter().map(|x| x.merchant_id.as_str()).collect();
    assert!(merchants.len() >= 3, "the test needs several merchants: {merchants:?}");
    assert!(merchants.contains("m-4"), "{merchants:?}");
    let (ops_code, full) = s.get("/api/v1/snapshot", Some(OPS)).await;
    assert_eq!(ops_code, StatusCode::OK);
    let full: Value = serde_json::from_str(&full).unwrap();

    let (code, body) = s.get("/api/v1/snapshot", Some("demo-merchant-m4-token")).await;
    assert_eq!(code, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    // Its own slots, exactly those of the reference, with the reference's numbers.
    let own: Vec<_> = want.slots.iter().filter(|x| x.merchant_id == "m-4").collect();
    let got: BTreeSet<&str> = v["slots"].as_array().unwrap().iter().map(|x| x["slot"].as_str().unwrap()).collect();
    assert_eq!(got, own.iter().map(|x| x.slot.as_str()).collect::<BTreeSet<_>>());
    assert_eq!(v["totals"]["gmv_cents"].as_u64().unwrap() as u128, own.iter().map(|x| x.gmv_cents).sum::<u128>());
    assert_eq!(v["totals"]["paid_orders"].as_u64().unwrap(), own.iter().map(|x| x.paid_orders).sum::<u64>());
    assert_eq!(v["totals"]["clicks"].as_u64().unwrap(), own.iter().map(|x| x.clicks).sum::<u64>());
    for w in v["windows"].as_array().unwrap() {
        let len = w["length_ms"].as_i64().unwrap();
        let sum: u128 =
            own.iter().flat_map(|x| x.windows.iter()).filter(|x| x.length_ms == len).map(|x| x.gmv_cents).sum();
        assert_eq!(w["gmv_cents"].as_u64().unwrap() as u128, sum, "window {len}");
    }
    // Its places in each race: its own entries, at the ranks the full ranking gives them.
    for venue in v["venues"].as_array().unwrap() {
        let name = venue["venue"].as_str().unwrap();
        let full_rank =
            &full["venues"].as_array().unwrap().iter().find(|x| x["venue"] == name).unwrap()["race"]["ranking"];
        for e in venue["race"]["ranking"].as_array().unwrap() {
            assert_eq!(e["merchant_id"], "m-4");
            let theirs = full_rank.as_array().unwrap().iter().find(|x| x["slot"] == e["slot"]).unwrap();
            assert_eq!(theirs["rank"], e["rank"]);
        }
    }
    // Nothing that names another merchant or its slots, nor the site's totals.
    for other in want.slots.iter().filter(|x| x.merchant_id != "m-4") {
        assert!(!body.contains(&format!("\"{}\"", other.slot)), "another merchant's slot {} leaked", other.slot);
        assert!(!body.contains(&format!("\"{}\"", other.merchant_id)), "merchant {} named", other.merchant_id);
    }
    assert!(!body.contains(&format!(":{},", want.totals.gmv_cents)), "the site's GMV leaked");
    assert!(v.get("funnel").is_none() && v.get("decomposition").is_none() && v.get("rejections").is_none());
    // Per-slot and per-race endpoints: another merchant's slot is not found; its own is.
    let theirs = want.slots.iter().find(|x| x.merchant_id != "m-4").unwrap();
    assert_eq!(
        s.get(&format!("/api/v1/slots/{}", theirs.slot), Some("demo-merchant-m4-token")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get(&format!("/api/v1/slots/{}", own[0].slot), Some("demo-merchant-m4-token")).await.0,
        StatusCode::OK
    );
    let (_, race) = s.get(&format!("/api/v1/venues/{}/race", own[0].venue), Some("demo-merchant-m4-token")).await;
    for other in want.slots.iter().filter(|x| x.merchant_id != "m-4") {
        assert!(!race.contains(&format!("\"{}\"", other.slot)), "race leaked {}", other.slot);
    }
    // The WebSocket gives a merchant the same cut, and no other merchant's rank changes.
    let mut ws = s.ws("demo-merchant-m4-token", "").await;
    let first = next_of(&mut ws, "snapshot").await;
    assert_eq!(first["data"], v);
    s.feed(&night(3_000, 6));
    let next = next_of(&mut ws, "snapshot").await;
    let text = next.to_string();
    assert_eq!(next["data"]["merchant_id"], "m-4");
    for x in next["data"]["slots"].as_array().unwrap() {
        assert_eq!(x["merchant_id"], "m-4", "{text}");
    }
}

/// An API node of several, whose rule log (Kafka's `<partials>.rules`) does not answer: a rule
/// change is refused with 503 `rule_log_unavailable` and made nowhere, this node included (no
/// node may rank by a rule the others never heard of), and nothing is audited. The log is the
/// real Kafka producer, pointed at a port where no broker listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_the_rule_log_refuses_is_made_nowhere() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let kcfg = warroom_ingest::kafka::KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic: "orders".into(),
        ..Default::default()
    };
    let log = warroom_ingest::rules_log::KafkaRules::start(&kcfg).unwrap();
    log.apply_with(Box::new(|_| panic!("nothing can be read from a log nobody stored")));
    let mut s = Server::start_shaped(Config::default(), |st| st.rule_log = Some(log.clone())).await;
    s.feed(&night(5_000, 9));
    let rule_before = s.engine.rule_of("main");
    let started = std::time::Instant::now();
    let (code, body) = s.put("/api/v1/venues/main/rule", ADMIN, r#"{"rule":"by-clicks","weights":{"clicks":1}}"#).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "rule_log_unavailable", "{body}");
    assert!(v["message"].as_str().unwrap().contains("unchanged on every node"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30), "answered in {:?}", started.elapsed());
    assert_eq!(s.engine.rule_of("main"), rule_before, "the rule is unchanged here");
    s.publish();
    let (code, snap) = s.get("/api/v1/snapshot", Some(OPS)).await;
    assert_eq!(code, StatusCode::OK);
    let snap: Value = serde_json::from_str(&snap).unwrap();
    let main = snap["venues"].as_array().unwrap().iter().find(|x| x["venue"] == "main").unwrap().clone();
    assert_eq!(main["race"]["rule"], rule_before.as_str(), "the race still ranks by the old rule");
    let (code, audit) = s.get("/api/v1/audit", Some(ADMIN)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(audit.trim(), "[]", "nothing audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_reorders_the_race_in_the_next_push_and_reconnects_get_a_fresh_snapshot() {
    let mut s = Server::start(Config::default()).await;
    s.feed(&night(20_000, 9));
    let mut ws = s.ws(OPS, "").await;
    let first = next_of(&mut ws, "snapshot").await;
    let ranking = |v: &Value| -> Vec<(String, u64)> {
        let main = v["data"]["venues"].as_array().unwrap().iter().find(|x| x["venue"] == "main").unwrap();
        main["race"]["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["slot"].as_str().unwrap().to_string(), e["clicks"].as_u64().unwrap()))
            .collect()
    };
    let before = ranking(&first);
    assert!(before.len() >= 3);
    assert!(first.get("rehearsal").is_none() && first["data"].get("rehearsal").is_none(), "live data is not tagged");
    let (code, body) = s.put("/api/v1/venues/main/rule", ADMIN, r#"{"rule":"by-clicks","weights":{"clicks":1}}"#).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    s.publish();
    let next = next_of(&mut ws, "snapshot").await;
    assert_eq!(next["seq"].as_u64().unwrap(), first["seq"].as_u64().unwrap() + 1, "the very next push");
    let main = next["data"]["venues"].as_array().unwrap().iter().find(|x| x["venue"] == "main").unwrap().clone();
    assert_eq!(main["race"]["rule"], "by-clicks");
    // Ranked by clicks in the race window (highest first, ties by slot): computed here from the
    // entries' own numbers.
    let after = ranking(&next);
    let mut expected = after.clone();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(after, expected);
    assert_ne!(
        before.iter().map(|x| &x.0).collect::<Vec<_>>(),
        after.iter().map(|x| &x.0).collect::<Vec<_>>(),
        "the order changed"
    );
    // Rank changes are pushed too.
    let change = next_of(&mut ws, "race_change").await;
    assert_eq!(change["data"]["venue"], "main");
    // Reconnect: the first message is the newest state at once.
    drop(ws);
    let mut again = s.ws(OPS, "").await;
    let fresh = next_of(&mut again, "snapshot").await;
    assert_eq!(fresh["seq"], next["seq"]);
    assert_eq!(fresh["data"], next["data"]);
    // A venue subscription narrows to that venue.
    again.send(Message::Text(r#"{"subscribe":{"venue":"main"}}"#.into())).await.unwrap();
    let narrowed = next_of(&mut again, "snapshot").await;
    let venues: Vec<&str> =
        narrowed["data"]["venues"].as_array().unwrap().iter().map(|v| v["venue"].as_str().unwrap()).collect();
    assert_eq!(venues, ["main"]);
    // Ops may narrow to one merchant's cut.
    again.send(Message::Text(r#"{"subscribe":{"merchant":"m-4"}}"#.into())).await.unwrap();
    let cut = next_of(&mut again, "snapshot").await;
    assert_eq!(cut["data"]["merchant_id"], "m-4");
    assert!(cut["data"]["slots"].as_array().unwrap().iter().all(|x| x["merchant_id"] == "m-4"));
}

/// What an ops screen should be pushed, cut here from the REST snapshot: no per-pair table, the
/// top 20 of each race with the ranking's length, only the followed slots and their count, and
/// the top sellers.
fn expected_screen_frame(mut rest: Value, follow: &[&str]) -> Value {
    let o = rest.as_object_mut().unwrap();
    o.remove("slot_merchants");
    let slots = o.remove("slots").unwrap();
    let all = slots.as_array().unwrap();
    o.insert("slots_total".into(), json!(all.len()));
    // Cumulative top sellers: the 7 with the most GMV (ties: by name, as the snapshot lists them).
    let mut sellers: Vec<Value> = all.iter().filter(|x| x["gmv_cents"].as_u64().unwrap() > 0).cloned().collect();
    sellers.sort_by(|a, b| b["gmv_cents"].as_u64().cmp(&a["gmv_cents"].as_u64()));
    sellers.truncate(7);
    o.insert("top_sellers".into(), Value::Array(sellers));
    let followed: Vec<Value> = all.iter().filter(|x| follow.contains(&x["slot"].as_str().unwrap())).cloned().collect();
    o.insert("slots".into(), Value::Array(followed));
    for v in o["venues"].as_array_mut().unwrap() {
        let race = v["race"].as_object_mut().unwrap();
        let ranking = race["ranking"].as_array().unwrap().clone();
        race.insert("ranked".into(), json!(ranking.len()));
        race.insert("ranking".into(), Value::Array(ranking.into_iter().take(20).collect()));
    }
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screens_are_pushed_what_they_show_and_rest_keeps_the_whole_snapshot() {
    // Slots that change hands fill `slot_merchants`; the REST snapshot keeps it and every slot,
    // the ops screen's frames carry the top of each race and the slots they follow.
    let mut s = Server::start(Config::default()).await;
    s.feed(&night_with_merchant_changes());
    let (code, body) = s.get("/api/v1/snapshot", Some(OPS)).await;
    assert_eq!(code, StatusCode::OK);
    let rest: Value = serde_json::from_str(&body).unwrap();
    assert!(rest["slot_merchants"].as_array().unwrap().len() > 10, "the stream has slots that changed hands");
    let mut ws = s.ws(OPS, "").await;
    let frame = next_of(&mut ws, "snapshot").await;
    assert_eq!(frame["data"], expected_screen_frame(rest.clone(), &[]));
    eprintln!(
        "frame {} bytes of data; REST {} bytes",
        serde_json::to_string(&frame["data"]).unwrap().len(),
        body.len()
    );
    // Following two slots adds exactly those.
    ws.send(Message::Text(r#"{"subscribe":{"slots":["main-003","food-001","main-003"]}}"#.into())).await.unwrap();
    let followed = next_of(&mut ws, "snapshot").await;
    assert_eq!(followed["data"], expected_screen_frame(rest, &["main-003", "food-001"]));
    // A venue's screen: the same cut of the REST venue view.
    ws.send(Message::Text(r#"{"subscribe":{"venue":"main","slots":["main-001"]}}"#.into())).await.unwrap();
    let narrowed = next_of(&mut ws, "snapshot").await;
    let (_, body) = s.get("/api/v1/snapshot?venue=main", Some(OPS)).await;
    let rest: Value = serde_json::from_str(&body).unwrap();
    let pairs = rest["slot_merchants"].as_array().unwrap();
    assert!(pairs.iter().all(|p| p["slot"].as_str().unwrap().starts_with("main-")), "{pairs:?}");
    assert_eq!(narrowed["data"], expected_screen_frame(rest, &["main-001"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_twenty_thousand_slots_a_screen_frame_stays_under_64_kb() {
    // The shipped max_slots: 20,000 slots in 4 venues, each paid for once (distinct amounts,
    // so the races have a strict order).
    let mut s = Server::start(Config::default()).await;
    let t0 = 1_794_312_000_000i64;
    let venues = ["main", "beauty", "food", "digital"];
    let mut lines = String::new();
    for i in 0..20_000u64 {
        let (v, ts) = (venues[(i % 4) as usize], t0 + (i as i64) * 3);
        lines += &format!(
            concat!(
                r#"{{"event_id":"c-{i}","type":"click","ts":{ts},"user_id":"u-{i}","venue":"{v}","slot":"s-{i:05}","item_id":"i-{i}","merchant_id":"m-{m}"}}"#,
                "\n",
                r#"{{"event_id":"p-{i}","type":"pay","ts":{ts},"user_id":"u-{i}","venue":"{v}","slot":"s-{i:05}","item_id":"i-{i}","merchant_id":"m-{m}","order_id":"o-{i}","amount_cents":{a}}}"#,
                "\n"
            ),
            i = i,
            ts = ts,
            v = v,
            m = i % 100,
            a = 1_000 + i
        );
    }
    s.feed(lines.as_bytes());
    let (_, body) = s.get("/api/v1/snapshot", Some(OPS)).await;
    let rest: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rest["slots"].as_array().unwrap().len(), 20_000, "{:?}", rest["rejections"]);
    let mut ws = s.ws(OPS, "").await;
    ws.send(Message::Text(r#"{"subscribe":{"slots":["s-00007","s-19999"]}}"#.into())).await.unwrap();
    let mut frame = next_of(&mut ws, "snapshot").await;
    if frame["data"]["slots"].as_array().unwrap().is_empty() {
        frame = next_of(&mut ws, "snapshot").await; // the one sent before the subscription
    }
    let bytes = serde_json::to_string(&frame).unwrap().len();
    eprintln!("at 20,000 slots: screen frame {bytes} bytes, REST snapshot {} bytes", body.len());
    assert!(bytes < 64 * 1024, "a screen frame of {bytes} bytes");
    assert!(body.len() > 1 << 20, "the REST snapshot keeps everything: {} bytes", body.len());
    assert_eq!(frame["data"], expected_screen_frame(rest.clone(), &["s-00007", "s-19999"]));
    let main = rest["venues"].as_array().unwrap().iter().find(|v| v["venue"] == "main").unwrap();
    assert_eq!(main["race"]["ranking"][0]["slot"], "s-19996", "the best-paid slot of main leads its race");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_rehearsal_every_pushed_message_and_every_view_is_tagged() {
    let tag = warroom_engine::snapshot::Rehearsal { label: "drill".into(), shift_ms: 3_600_000, speed: 60.0 };
    let mut s = Server::start(Config { rehearsal: Some(tag), ..Config::default() }).await;
    s.feed(&night(20_000, 9));
    let mut ws = s.ws(OPS, "").await;
    let first = next_of(&mut ws, "snapshot").await;
    assert_eq!(first["rehearsal"], true, "the envelope");
    assert_eq!(first["data"]["rehearsal"]["shift_ms"], 3_600_000, "the snapshot");
    let (code, body) = s.put("/api/v1/venues/main/rule", ADMIN, r#"{"rule":"by-clicks","weights":{"clicks":1}}"#).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    s.publish();
    let change = next_of(&mut ws, "race_change").await;
    assert_eq!(change["rehearsal"], true, "rank changes too");
    let mut m = s.ws(MERCHANT, "").await;
    let cut = next_of(&mut m, "snapshot").await;
    assert_eq!((&cut["rehearsal"], &cut["data"]["rehearsal"]["speed"]), (&json!(true), &json!(60.0)), "merchants too");
    let (code, body) = s.get("/api/v1/snapshot", Some(MERCHANT)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("\"rehearsal\""), "the REST views too: {body:.200}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_skips_to_the_newest_state_and_never_holds_up_the_others() {
    let mut s = Server::start(Config::default()).await;
    // 200 slots a venue, the slow client following 200 of them: frames of tens of kB.
    let mut buf = Vec::new();
    let cfg = GenConfig { seed: 13, slots_per_venue: 200, merchant_change_share: 0.0, ..GenConfig::default() };
    write_night(cfg, 40_000, 1_794_312_000_000, 3_600_000, &mut buf).unwrap();
    let lines = warroom_tests::lines(&buf);
    s.feed(&buf[..lines[..100].iter().map(|l| l.len() + 1).sum()]);
    // The slow client connects and then reads nothing for a while.
    let mut slow = s.ws(OPS, "").await;
    let follow: Vec<String> = (0..200).map(|i| format!("\"main-{i:03}\"")).collect();
    slow.send(Message::Text(format!(r#"{{"subscribe":{{"slots":[{}]}}}}"#, follow.join(",")).into())).await.unwrap();
    let mut fast = s.ws(OPS, "").await;
    let fast_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let v = next_of(&mut fast, "snapshot").await;
            let seq = v["seq"].as_u64().unwrap();
            seqs.push(seq);
            if v["data"]["totals"]["accepted"].as_u64().unwrap()
                + v["data"]["totals"]["rejected"].as_u64().unwrap()
                + v["data"]["totals"]["duplicates"].as_u64().unwrap()
                >= 40_000
            {
                return seqs;
            }
        }
    });
    // 400 publishes of frames of tens of kB: megabytes the slow client does not read.
    let mut at = lines[..100].iter().map(|l| l.len() + 1).sum::<usize>();
    for chunk in lines[100..].chunks(100) {
        let len: usize = chunk.iter().map(|l| l.len() + 1).sum();
        s.feed(&buf[at..at + len]);
        at += len;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let published = s.hub.latest().seq;
    let seqs = tokio::time::timeout(Duration::from_secs(20), fast_reader)
        .await
        .expect("the fast client got the final state while the slow one read nothing")
        .unwrap();
    assert_eq!(*seqs.last().unwrap(), published);
    // Now the slow client reads: it gets to the newest state without every frame in between.
    let mut got = 0u64;
    loop {
        let v = next_of(&mut slow, "snapshot").await;
        got += 1;
        if v["seq"].as_u64().unwrap() == published {
            break;
        }
    }
    assert!(got < published, "the slow client skipped frames: got {got} of {published}");
    assert!(s.hub.stats.frames_skipped.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let (_, metrics) = s.get("/metrics", Some(OPS)).await;
    let skipped = metrics.lines().find(|l| l.starts_with("warroom_ws_frames_skipped_total ")).unwrap();
    assert_ne!(skipped, "warroom_ws_frames_skipped_total 0");
}

/// A snapshot whose 1-minute GMV is `gmv` and whose last event was applied at `fresh_at`.
fn shaped(seq: i64, gmv: u128, fresh_at: i64) -> Arc<warroom_engine::Snapshot> {
    let mut s = warroom_engine::Snapshot {
        as_of_ms: 1_000_000 + seq,
        published_at_ms: fresh_at,
        last_event_at_ms: fresh_at,
        ..Default::default()
    };
    s.windows.push(warroom_engine::snapshot::WindowStats { length_ms: 60_000, gmv_cents: gmv, ..Default::default() });
    Arc::new(s)
}

fn alert_rules() -> warroom_api::alerts::AlertsConfig {
    toml::from_str(
        r#"
        [[rules]]
        name = "gmv-1m-low"
        kind = "threshold"
        metric = "gmv_cents"
        window = "1m"
        below = true
        fire = 1000.0
        clear = 2000.0
        pending = "10s"
        severity = "critical"

        [[rules]]
        name = "stale"
        kind = "freshness"
        fire = 10000.0
        clear = 3000.0
        "#,
    )
    .unwrap()
}

/// Alert messages received within `wait` (their `data`).
async fn alerts_within(ws: &mut Ws, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "alert" {
                out.push(v["data"].clone());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_goes_pending_firing_resolved_without_flapping_and_can_be_acknowledged() {
    let s = Server::start(Config::default()).await;
    s.state.reload_alerts(alert_rules()).unwrap();
    let mut ws = s.ws(OPS, "").await;
    let _ = next_of(&mut ws, "snapshot").await;
    let t0 = 1_800_000_000_000i64;
    let at = |sec: i64| t0 + sec * 1000;
    let mut seq = 0;
    let mut publish = |gmv: u128, sec: i64| {
        seq += 1;
        s.state.on_publish_at(shaped(seq, gmv, at(sec)), Vec::new(), at(sec));
    };
    publish(5_000, 0); // fine
    publish(500, 1); // breach: pending
    publish(1_500, 5); // back above fire before the pending period: dropped, no message
    publish(500, 6); // pending again
    publish(500, 12); // held 6 s of 10: still pending
    publish(500, 16); // held 10 s: firing
                      // A noisy signal that keeps crossing the fire level but never reaches the clear level.
    let mut rng = 12345u64;
    for k in 17..60 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        publish(600 + ((rng >> 33) % 1_300) as u128, k); // 600..1899: above and below fire, below clear
    }
    let got = alerts_within(&mut ws, Duration::from_secs(2)).await;
    let states: Vec<&str> = got.iter().map(|a| a["state"].as_str().unwrap()).collect();
    // The first pending is withdrawn (resolved without having fired) when the value recovers.
    assert_eq!(states, ["pending", "resolved", "pending", "firing"], "{got:?}");
    assert!(got[1]["fired_at_ms"].is_null());
    assert_eq!(got[3]["id"], "gmv-1m-low:site");
    assert_eq!(got[3]["since_ms"].as_i64(), Some(at(6)));
    assert_eq!(got[3]["fired_at_ms"].as_i64(), Some(at(16)));

    // Acknowledge: admin only; the change is pushed; the alert stays firing.
    assert_eq!(s.post("/api/v1/alerts/gmv-1m-low:site/ack", OPS).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.post("/api/v1/alerts/nope:site/ack", ADMIN).await.0, StatusCode::NOT_FOUND);
    let (code, body) = s.post("/api/v1/alerts/gmv-1m-low:site/ack", ADMIN).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let acked = alerts_within(&mut ws, Duration::from_secs(1)).await;
    assert_eq!(acked.len(), 1);
    assert_eq!((acked[0]["state"].as_str(), acked[0]["acked_by"].as_str()), (Some("firing"), Some("demo-admin")));

    // Clears only at the clear level.
    publish(2_100, 61);
    let got = alerts_within(&mut ws, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["state"], "resolved");
    assert_eq!(got[0]["resolved_at_ms"].as_i64(), Some(at(61)));
    let (_, list) = s.get("/api/v1/alerts", Some(OPS)).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["state"], "resolved");
    // Merchants see no site-wide alerts.
    let (_, mine) = s.get("/api/v1/alerts", Some("demo-merchant-m4-token")).await;
    assert_eq!(mine, "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_data_fires_and_holds_back_the_business_alerts_it_would_cause() {
    let s = Server::start(Config::default()).await;
    s.state.reload_alerts(alert_rules()).unwrap();
    let t0 = 1_800_000_000_000i64;
    // The pipeline stops at t0: the last event stays at t0 while the wall clock runs on, and
    // the 1-minute GMV looks low.
    for sec in [0, 5, 12, 20, 30, 40] {
        s.state.on_publish_at(shaped(1, 100, t0), Vec::new(), t0 + sec * 1000);
    }
    let (_, list) = s.get("/api/v1/alerts", Some(OPS)).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    // The first evaluation (data 0 s old) saw the low GMV and started it pending; once the
    // data went stale the pending alert was withdrawn and the rule held: it never fired.
    assert!(ids.contains(&"stale:site"), "{list}");
    // (Withdrawn alerts are not kept in the list's history.)
    assert!(!ids.contains(&"gmv-1m-low:site"), "{list}");
    let (_, metrics) = s.get("/metrics", Some(OPS)).await;
    let suppressed = metrics.lines().find(|l| l.starts_with("warroom_alert_suppressed_total ")).unwrap();
    assert_ne!(suppressed, "warroom_alert_suppressed_total 0", "{metrics}");
    // Data flows again: stale resolves, and the business rule runs (and fires) again.
    for sec in [41, 46, 52] {
        s.state.on_publish_at(shaped(2 + sec, 100, t0 + sec * 1000), Vec::new(), t0 + sec * 1000);
    }
    let (_, list) = s.get("/api/v1/alerts", Some(OPS)).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    let state_of = |id: &str| list.as_array().unwrap().iter().find(|a| a["id"] == id).map(|a| a["state"].clone());
    assert_eq!(state_of("stale:site"), Some(Value::from("resolved")), "{list}");
    assert_eq!(state_of("gmv-1m-low:site"), Some(Value::from("firing")), "{list}");
    // Its pending period restarted when the data flowed again (41 s), so it fired at 52 s.
    let low = list.as_array().unwrap().iter().find(|a| a["id"] == "gmv-1m-low:site" && a["state"] == "firing").unwrap();
    assert_eq!(low["since_ms"].as_i64(), Some(t0 + 41_000), "{list}");
    assert_eq!(low["fired_at_ms"].as_i64(), Some(t0 + 52_000), "{list}");
}

/// A webhook receiver that answers 500 to the first `failures` requests, then 200; returns the
/// JSON bodies it accepted.
async fn flaky_receiver(failures: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = 0usize;
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            seen += 1;
            let status = if seen <= failures { "500 Internal Server Error" } else { "200 OK" };
            let _ = sock
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
            if seen > failures {
                let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap());
            }
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_hears_fired_and_resolved_alerts_with_retries() {
    let s = Server::start(Config::default()).await;
    let (url, mut received) = flaky_receiver(2).await;
    let mut rules = alert_rules();
    rules.webhook = Some(url);
    s.state.reload_alerts(rules).unwrap();
    let t0 = 1_800_000_000_000i64;
    let mut seq = 0;
    for (sec, gmv) in [(0, 500), (3, 5_000), (4, 500), (15, 500), (20, 5_000)] {
        seq += 1;
        s.state.on_publish_at(shaped(seq, gmv, t0 + sec * 1000), Vec::new(), t0 + sec * 1000);
    }
    // Withdrawn pending (0-3 s) and the pending at 4 s are not sent; firing at 15 s and its
    // resolution at 20 s are, in order, the first one after two failed attempts.
    let mut got = Vec::new();
    while got.len() < 2 {
        let v =
            tokio::time::timeout(Duration::from_secs(10), received.recv()).await.expect("webhook delivery").unwrap();
        got.push(v);
    }
    assert_eq!((got[0]["id"].as_str(), got[0]["state"].as_str()), (Some("gmv-1m-low:site"), Some("firing")));
    assert_eq!(got[1]["state"], "resolved");
    assert!(tokio::time::timeout(Duration::from_millis(500), received.recv()).await.is_err(), "nothing else sent");
    let (_, metrics) = s.get("/metrics", Some(OPS)).await;
    assert!(metrics.contains("warroom_alert_webhook_retries_total 2"), "{metrics}");
    assert!(metrics.contains("warroom_alert_webhook_sent_total 2"), "{metrics}");
}

/// A WebSocket handshake with `token` as subprotocol: the HTTP status it ended with (101 when
/// it opened) and the socket when it did.
async fn ws_try(base: &str, token: &str, query: &str) -> (u16, Option<Ws>) {
    let mut req = format!("ws://{base}/api/v1/stream{query}").into_client_request().unwrap();
    if !token.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", format!("warroom.v1, bearer.{token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => (resp.status().as_u16(), Some(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("handshake: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_capped_in_all_and_per_token_with_clear_refusals() {
    let api = warroom_api::ApiConfig { max_connections: 3, max_connections_per_token: 2, ..Default::default() };
    let s = Server::start_with(Config::default(), api).await;
    let (a, wa) = ws_try(&s.base, OPS, "").await;
    let (b, _wb) = ws_try(&s.base, OPS, "").await;
    assert_eq!((a, b), (101, 101));
    let (c, _) = ws_try(&s.base, OPS, "").await;
    assert_eq!(c, 429, "a third connection for one token");
    let (d, _wd) = ws_try(&s.base, ADMIN, "").await;
    assert_eq!(d, 101, "another token still gets in");
    let (e, _) = ws_try(&s.base, MERCHANT, "").await;
    assert_eq!(e, 503, "the server's cap");
    let (_, metrics) = s.get("/metrics", Some(OPS)).await;
    assert!(metrics.contains("warroom_ws_refused_total{cap=\"token\"} 1"), "{metrics}");
    assert!(metrics.contains("warroom_ws_refused_total{cap=\"server\"} 1"), "{metrics}");
    // A closed connection gives its place back.
    drop(wa);
    let started = std::time::Instant::now();
    loop {
        let (f, _wf) = ws_try(&s.base, OPS, "").await;
        if f == 101 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the place never came back: {f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_message_over_the_cap_closes_its_connection_and_the_token_is_not_taken_from_the_url() {
    let s = Server::start(Config::default()).await;
    let mut ws = s.ws(OPS, "").await;
    let _ = next_of(&mut ws, "snapshot").await;
    ws.send(Message::Text(format!("{{\"subscribe\":{{\"venue\":\"{}\"}}}}", "v".repeat(10_000)).into())).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "a 10 KB message (cap 4 KiB) ends the connection");
    // Others are unaffected.
    let mut other = s.ws(OPS, "").await;
    let _ = next_of(&mut other, "snapshot").await;
    // A token in the URL is not a token: proxies log URLs.
    let (code, _) = ws_try(&s.base, "", &format!("?token={OPS}")).await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = warroom_api::ApiConfig { idle_timeout: Duration::from_secs(1), ..Default::default() };
    let s = Server::start_with(Config::default(), api).await;
    for first in [&b""[..], b"GET /api/v1/snapshot HTTP/1.1\r\nHost: x\r\n"] {
        let mut c = tokio::net::TcpStream::connect(&s.base).await.unwrap();
        c.write_all(first).await.unwrap();
        let mut buf = [0u8; 256];
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.expect("closed within 10 s");
        assert!(matches!(r, Ok(0) | Err(_)), "closed, not answered: {r:?}");
        assert!(t.elapsed() >= Duration::from_millis(900), "not before the idle timeout");
    }
    // A live client is not idle.
    let (code, _) = s.get("/api/v1/snapshot", Some(OPS)).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_sent_over_https_signed_and_never_redirected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = warroom_tests::tls::Pki::new(dir.path());
    let ok = warroom_tests::tls::HttpsReceiver::start(pki.server_config(false), |_| "200 OK");
    let moved = warroom_tests::tls::HttpsReceiver::start(pki.server_config(false), |p| {
        if p == "/hook" {
            "302 Found\r\nLocation: /elsewhere"
        } else {
            "200 OK"
        }
    });
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, "s3cr3t-for-hmac\n").unwrap();
    let s = Server::start(Config::default()).await;
    let rules = |url: String| -> warroom_api::alerts::AlertsConfig {
        toml::from_str(&format!(
            "webhook = \"{url}\"\nwebhook_secret_file = \"{}\"\nwebhook_ca_file = \"{}\"\n[[rules]]\nname = \"any-gmv\"\nkind = \"threshold\"\nmetric = \"gmv_cents\"\nwindow = \"1m\"\nfire = 0.0\n",
            secret.display(),
            pki.ca.display()
        ))
        .unwrap()
    };
    s.state.reload_alerts(rules(format!("https://127.0.0.1:{}/hook", ok.port))).unwrap();
    let now = warroom_api::now_ms();
    s.state.on_publish_at(shaped(1, 5_000, now), Vec::new(), now);
    let started = std::time::Instant::now();
    while ok.received().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no webhook request over HTTPS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = ok.received()[0].clone();
    assert_eq!(r.path, "/hook");
    let ts = r.header("X-Warroom-Timestamp").expect("timestamp header");
    let sig = r.header("X-Warroom-Signature").expect("signature header");
    // Checked independently: openssl's HMAC of "TIMESTAMP.BODY" under the secret.
    let mut signed = ts.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&r.body);
    let msg = dir.path().join("signed");
    std::fs::write(&msg, &signed).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", "s3cr3t-for-hmac"])
        .arg(&msg)
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&out.stdout).split_whitespace().last().unwrap().to_string();
    assert_eq!(sig, format!("sha256={want}"));
    let alert: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(alert["rule"], "any-gmv");
    // A redirect is not followed: the webhook counts a failure, the target is never asked.
    s.state.reload_alerts(rules(format!("https://127.0.0.1:{}/hook", moved.port))).unwrap();
    s.state.on_publish_at(shaped(2, 0, now + 1_000), Vec::new(), now + 1_000); // resolves
    let started = std::time::Instant::now();
    while s.state.webhook_stats.retries.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the redirect was not counted as a failure");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved.received().iter().all(|r| r.path == "/hook"), "the redirect was followed: {:?}", moved.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_hangs_cannot_grow_the_monitor() {
    // The webhook accepts connections and never answers; more alert changes come than its
    // queue holds: the rest are dropped and counted, nothing blocks the publish.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hang.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((c, _)) = hang.accept().await {
                held.push(c);
            }
        }
    });
    let s = Server::start(Config::default()).await;
    s.state
        .reload_alerts(
            toml::from_str(&format!(
                "webhook = \"http://127.0.0.1:{port}/hook\"\n[[rules]]\nname = \"moves\"\nkind = \"rank_change\"\nfire = 0.0\npending = \"1h\"\n"
            ))
            .unwrap(),
        )
        .unwrap();
    let now = warroom_api::now_ms();
    let n = warroom_api::WEBHOOK_QUEUE + 200;
    let changes: Vec<warroom_engine::RankChange> = (0..n)
        .map(|i| warroom_engine::RankChange {
            venue: "main".into(),
            slot: format!("s-{i}"),
            from: Some(2),
            to: 1,
            as_of_ms: 1,
        })
        .collect();
    let t = std::time::Instant::now();
    s.state.on_publish_at(shaped(1, 1, now), changes, now);
    assert!(t.elapsed() < Duration::from_secs(2), "publishing never waits for the webhook");
    let dropped = s.state.webhook_stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (199..=200).contains(&dropped),
        "{n} alert changes, a queue of {}: {dropped} dropped",
        warroom_api::WEBHOOK_QUEUE
    );
    let (_, metrics) = s.get("/metrics", Some(OPS)).await;
    assert!(metrics.contains(&format!("warroom_alert_webhook_dropped_total {dropped}")), "{metrics}");
}
