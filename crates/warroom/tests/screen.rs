//! The screen in a real headless Chromium (Debian's `chromium`, installed by scripts/test.sh),
//! driven over the DevTools protocol, against the real binary: the GMV counter must carry the
//! API's exact `totals.gmv_cents`. Screenshots go to target/test-artifacts/.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts the monitor on a generated event file; returns it and the screen's base URL.
fn start_monitor(dir: &std::path::Path, extra: &[&str]) -> (Killed, String) {
    let input = dir.join("night.jsonl");
    let st = Command::new(env!("CARGO_BIN_EXE_warroom"))
        .args(["gen", "--events", "60000", "--seed", "3", "--out"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_warroom"))
            .args(["run", "--source", "file", "--listen", "127.0.0.1:0", "--input"])
            .arg(&input)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the monitor exited before printing its URL");
        if let Some(rest) = line.strip_prefix("screen (ops):") {
            let url = rest.trim();
            let base = url.split("/#").next().unwrap().to_string();
            // Keep draining stdout so the monitor never blocks on a full pipe.
            std::thread::spawn(move || for _ in out.lines() {});
            return (child, base);
        }
    }
}

/// Starts headless Chromium with a DevTools port; returns it and the page's DevTools socket.
fn start_chromium(dir: &std::path::Path) -> (Killed, String) {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh").arg("-c").arg(format!("command -v {b}")).output().is_ok_and(|o| o.status.success())
        })
        .expect("no chromium: run the tests with scripts/test.sh, which installs Debian's chromium");
    let mut child = Killed(
        Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1920,1080",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.join("chromium").display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = BufReader::new(child.0.stderr.take().unwrap());
    let mut browser_ws = None;
    for line in err.lines() {
        let line = line.unwrap();
        if let Some(i) = line.find("ws://") {
            browser_ws = Some(line[i..].trim().to_string());
            break;
        }
    }
    let browser_ws = browser_ws.expect("chromium did not print its DevTools address");
    let port = browser_ws.trim_start_matches("ws://127.0.0.1:").split('/').next().unwrap().to_string();
    (child, port)
}

struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    id: u64,
}

impl Page {
    /// A new tab showing `url`.
    async fn open(port: &str, url: &str) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{port}/json/new?{url}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(target["webSocketDebuggerUrl"].as_str().unwrap()).await.unwrap();
        Page { ws, id: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let id = self.id;
        self.ws
            .send(Message::Text(json!({"id": id, "method": method, "params": params}).to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await.unwrap().unwrap().unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true})).await["result"]["value"]
            .clone()
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

async fn api_snapshot(base: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/snapshot"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_screen_shows_the_api_gmv_exactly_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_monitor, base) = start_monitor(dir.path(), &[]);
    let (_chromium, port) = start_chromium(dir.path());
    for (token, name, what) in [
        ("demo-ops-token-0001", "screen-ops.png", "ops"),
        ("demo-merchant-m4-token", "screen-merchant-m4.png", "merchant"),
    ] {
        // A tab on the same origin first (the DevTools `new` endpoint drops URL fragments),
        // then a same-site navigation to the screen with its token in the fragment.
        let mut page = Page::open(&port, &format!("{base}/healthz")).await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page.call("Page.navigate", json!({"url": format!("{base}/#token={token}")})).await;
        let started = Instant::now();
        let mut seen = String::new();
        let (shown, api) = loop {
            if started.elapsed() > Duration::from_secs(60) {
                let status = page.eval("document.getElementById('status').textContent").await;
                panic!("{what}: the screen never showed the API's GMV; last seen {seen}; screen status {status}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let shown = page.eval("document.querySelector('[data-testid=gmv-total]').dataset.value").await;
            let api = api_snapshot(&base, token).await;
            // Wait until the whole file is in (the totals stop moving), then compare exactly.
            let full = api_snapshot(&base, "demo-ops-token-0001").await;
            let t = &full["totals"];
            let read =
                t["accepted"].as_u64().unwrap() + t["rejected"].as_u64().unwrap() + t["duplicates"].as_u64().unwrap();
            let shown = shown.as_str().unwrap_or("").to_string();
            seen = format!("screen {shown:?}, api {}, read {read}", api["totals"]["gmv_cents"]);
            if read == 60_000 && shown.parse::<u64>().ok() == api["totals"]["gmv_cents"].as_u64() {
                break (shown, api);
            }
        };
        assert!(api["totals"]["gmv_cents"].as_u64().unwrap() > 0, "{what}: {api}");
        assert_eq!(shown.parse::<u64>().ok(), api["totals"]["gmv_cents"].as_u64());
        let banner = page.eval("getComputedStyle(document.getElementById('banner')).display").await;
        assert_eq!(banner, "none", "{what}: no rehearsal banner on live data");
        if what == "merchant" {
            let label = page.eval("document.getElementById('gmv-label').textContent").await;
            assert!(label.as_str().unwrap().contains("m-4"), "{label}");
            // Each race row shows the slot's gap to the slot above, as the API gives it.
            let cells = page
                .eval("[...document.querySelectorAll('[data-gap]')].map(td => td.dataset.slot + '=' + td.dataset.gap).join(' ')")
                .await;
            let cells = cells.as_str().unwrap().to_string();
            let mut gaps = 0;
            for cell in cells.split_whitespace() {
                let (slot, shown) = cell.split_once('=').unwrap();
                let entry = api["venues"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v["race"]["ranking"].as_array().unwrap())
                    .find(|e| e["slot"] == slot)
                    .unwrap_or_else(|| panic!("the screen shows {slot}, not in the merchant's races"));
                match entry["gap"]["points"].as_f64() {
                    Some(p) => {
                        gaps += 1;
                        assert_eq!(shown.parse::<f64>().ok(), Some(p), "{slot}: gap on the screen {shown}, API {p}");
                    }
                    None => assert_eq!(shown, "", "{slot}: the API has no gap"),
                }
            }
            assert!(gaps > 0, "no gap shown: {cells}");
        }
        // The 复盘 button: in the header, on the wall; the report it opens is the one this
        // token may see (a merchant: its own 商家复盘).
        let fits = page
            .eval("(() => { const r = document.getElementById('review-btn').getBoundingClientRect(); return r.width > 0 && r.left >= 0 && r.right <= 1920 && r.bottom <= 64; })()")
            .await;
        assert_eq!(fits, Value::Bool(true), "{what}: the review button on the wall");
        let report = page
            .call(
                "Runtime.evaluate",
                json!({"expression": "reviewHtml().then(h => h.slice(0, 600))", "awaitPromise": true, "returnByValue": true}),
            )
            .await["result"]["value"]
            .as_str()
            .unwrap_or("")
            .to_string();
        match what {
            "merchant" => assert!(report.contains("商家复盘 m-4"), "{what}: {report}"),
            _ => assert!(report.contains("复盘") && !report.contains("商家复盘"), "{what}: {report}"),
        }
        // A click opens it in a new tab (the operator's way to it: the API wants the token
        // in a header a plain link cannot carry).
        page.call(
            "Runtime.evaluate",
            json!({"expression": "document.getElementById('review-btn').click()", "userGesture": true}),
        )
        .await;
        // The report's title (no plan here: "复盘 review"; a merchant's "商家复盘 m-4").
        let want_title = if what == "merchant" { "商家复盘 m-4" } else { "复盘 review" };
        let started = Instant::now();
        loop {
            let targets = page.call("Target.getTargets", json!({})).await;
            let titles: Vec<String> = targets["targetInfos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["title"].as_str().unwrap_or("").to_string())
                .collect();
            if titles.iter().any(|t| t.contains(want_title)) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{what}: no tab titled {want_title:?}: {titles:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if what == "ops" {
            // A rank move shows on its row only where it ended: the first row moved up to its
            // rank (▲1), the second moved on to a rank the board does not show yet (a board
            // drawn again from the frame before the move, on a page turn): no arrow. Before,
            // it showed ▼5 beside a rank it had left.
            let arrows = page
                .eval(
                    "(() => {
                    const named = () => [...document.querySelectorAll('#races tr')].filter(r => r.querySelector('td.name'));
                    const [a, b] = named().slice(0, 2).map(r => ({slot: r.querySelector('td.name').textContent, rank: +r.cells[0].textContent}));
                    const venue = s => last.venues.find(v => v.race.ranking.some(e => e.slot === s)).venue;
                    rankMoves[venue(a.slot) + '/' + a.slot] = {venue: venue(a.slot), slot: a.slot, from: a.rank + 1, to: a.rank, at: Date.now()};
                    rankMoves[venue(b.slot) + '/' + b.slot] = {venue: venue(b.slot), slot: b.slot, from: b.rank, to: b.rank + 5, at: Date.now()};
                    renderRaces(last);
                    const arrow = s => { const r = named().find(r => r.querySelector('td.name').textContent === s); return r.cells[r.cells.length - 1].textContent; };
                    return arrow(a.slot) + '|' + arrow(b.slot);
                })()",
                )
                .await;
            assert_eq!(arrows.as_str(), Some("▲1|"), "rank-move arrows");
        }
        tokio::time::sleep(Duration::from_millis(800)).await; // let the curve and races draw
        let shot = page.screenshot(name).await;
        eprintln!("{what} screenshot: {}", shot.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_shows_its_banner_on_every_screen() {
    let dir = tempfile::tempdir().unwrap();
    let (_monitor, base) = start_monitor(dir.path(), &["--rehearsal-shift-ms", "0", "--rehearsal-speed", "60"]);
    let (_chromium, port) = start_chromium(dir.path());
    for (token, what) in [("demo-ops-token-0001", "ops"), ("demo-merchant-m4-token", "merchant")] {
        let mut page = Page::open(&port, &format!("{base}/healthz")).await;
        page.call("Page.navigate", json!({"url": format!("{base}/#token={token}")})).await;
        let started = Instant::now();
        loop {
            let shown = page.eval("getComputedStyle(document.getElementById('banner')).display").await;
            let text = page.eval("document.getElementById('banner').textContent").await;
            let text = text.as_str().unwrap_or("");
            if shown != "none" && text.contains("演练") && text.contains("60x") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{what}: no rehearsal banner: {shown} {text:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let snap = api_snapshot(&base, token).await;
        assert_eq!(snap["rehearsal"]["speed"], 60.0, "{what}: the API's snapshot is tagged too");
        if what == "ops" {
            page.call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            eprintln!("rehearsal screenshot: {}", page.screenshot("screen-rehearsal.png").await.display());
        }
    }
}

/// A plan over the generated night (2026-11-10 20:00 +08:00, 6 hours): warm-up then the
/// official sale, so the curve has phases, a pace line and a projection.
const NIGHT_PLAN: &str = "[plan]\nname = \"Double 11 test\"\n[[plan.phases]]\nkind = \"warmup\"\nname = \"预热\"\nstart = \"2026-11-10T20:00:00+08:00\"\nend = \"2026-11-11T00:00:00+08:00\"\ntarget_gmv_cents = 20000000\n[[plan.phases]]\nkind = \"official\"\nname = \"正式\"\nstart = \"2026-11-11T00:00:00+08:00\"\nend = \"2026-11-11T02:00:00+08:00\"\ntarget_gmv_cents = 30000000\n[[alerts.rules]]\nname = \"any-gmv\"\nkind = \"threshold\"\nmetric = \"gmv_cents\"\nwindow = \"1h\"\nfire = 0.0\n";

async fn api_get(base: &str, path: &str, token: &str) -> Value {
    reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// After a reload the curve is drawn from history: its data points are exactly what
/// `GET /api/v1/history` answers for the same range and step, whatever the page saw before;
/// the active alerts are back too. The review report renders in the same browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_the_curve_is_the_history_and_the_report_renders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plan.toml"), NIGHT_PLAN).unwrap();
    let db = dir.path().join("history.db");
    let (_monitor, base) = start_monitor(
        dir.path(),
        &["--config", dir.path().join("plan.toml").to_str().unwrap(), "--history", db.to_str().unwrap()],
    );
    let (_chromium, port) = start_chromium(dir.path());
    let ops = "demo-ops-token-0001";
    // Everything read and stored (the file source stores every second).
    let started = Instant::now();
    loop {
        let t = &api_snapshot(&base, ops).await["totals"];
        let read =
            t["accepted"].as_u64().unwrap() + t["rejected"].as_u64().unwrap() + t["duplicates"].as_u64().unwrap();
        let h = api_get(&base, "/api/v1/history?step=360m&from=1794312000000&to=1794333600000", ops).await;
        if read == 60_000 && h["points"][0][1].as_u64() == t["gmv_cents"].as_u64() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "history never caught up: {h}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut page = Page::open(&port, &format!("{base}/healthz")).await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    // A browser far from the war room: the screen still prints the promotion's clock (+08:00).
    page.call("Emulation.setTimezoneOverride", json!({"timezoneId": "America/New_York"})).await;
    page.call("Page.navigate", json!({"url": format!("{base}/#token={ops}")})).await;
    let curve_of = |v: Value| -> Option<(Value, String)> {
        let s = v.as_str()?;
        let c: Value = serde_json::from_str(s).ok()?;
        let q = c["q"].as_str()?.to_string();
        (c["points"].as_array()?.len() > 10).then(|| (c["points"].clone(), q))
    };
    let read_curve = "JSON.stringify({points: JSON.parse(document.getElementById('curve').dataset.points || '[]'), q: `from=${document.getElementById('curve').dataset.from}&to=${document.getElementById('curve').dataset.to}&step=${document.getElementById('curve').dataset.step / 60000}m`})";
    for round in ["first load", "after a reload"] {
        if round == "after a reload" {
            page.call("Page.reload", json!({})).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let started = Instant::now();
        let (points, q) = loop {
            if let Some(c) = curve_of(page.eval(read_curve).await) {
                break c;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{round}: no curve drawn");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let h = api_get(&base, &format!("/api/v1/history?metric=gmv&{q}"), ops).await;
        assert_eq!(points, h["points"], "{round}: the curve's points are the history's ({q})");
        let total: u64 = points.as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert!(total > 0, "{round}: an empty curve");
        let axis = page
            .eval("(c => JSON.stringify([+c.dataset.from, +c.dataset.to, c.dataset.axis]))(document.getElementById('curve'))")
            .await;
        let (from, to, shown): (i64, i64, String) = serde_json::from_str(axis.as_str().unwrap()).unwrap();
        let at8 = |ms: i64| {
            let z =
                jiff::Timestamp::from_millisecond(ms).unwrap().to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(8)));
            format!("{}/{} {:02}:{:02}", z.month(), z.day(), z.hour(), z.minute())
        };
        assert_eq!(shown, format!("{} – {}", at8(from), at8(to)), "{round}: the curve's times at +08:00");
        // The line stops at the last whole step: the one "now" is in, or the last one stored
        // in part, would be drawn as a dip (the curve drawn again with those moved).
        let step: i64 =
            page.eval("document.getElementById('curve').dataset.step").await.as_str().unwrap().parse().unwrap();
        for (now, stored, want) in [
            (5 * step + 1_234, 9 * step, 5 * step),
            (9 * step, 3 * step + 10, 3 * step),
            (4 * step, 4 * step, 4 * step),
        ] {
            let drawn = page
                .eval(&format!("(() => {{ const keep = curve; curve = {{...keep, now_ms: keep.from_ms + {now}, stored_until_ms: keep.from_ms + {stored}}}; drawCurve(); const d = document.getElementById('curve').dataset.drawnUntil; curve = keep; drawCurve(); return d; }})()"))
                .await;
            assert_eq!(
                drawn.as_str().and_then(|d| d.parse::<i64>().ok()),
                Some(from + want),
                "{round}: now +{now}, stored +{stored}"
            );
        }
        // Active alerts: the screen lists what the server holds (none lost by the reload).
        let alerts = api_get(&base, "/api/v1/alerts", ops).await;
        let fired = alerts.as_array().unwrap().iter().filter(|a| !a["fired_at_ms"].is_null()).count();
        assert!(fired >= 1, "{round}: the test's alert rule fired: {alerts}");
        let started = Instant::now();
        loop {
            let shown =
                page.eval("document.querySelectorAll('#alerts > div:not(.label)').length").await.as_u64().unwrap_or(0);
            if shown as usize >= fired.min(50) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{round}: {shown} alerts shown, {fired} fired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The projection is shown beside the targets.
    let proj = page.eval("document.getElementById('proj-phase').dataset.value").await;
    let curve = api_get(&base, "/api/v1/history/curve", ops).await;
    if let Some(p) = curve["projection"]["phase_projected_cents"].as_u64() {
        assert_eq!(proj.as_str().and_then(|s| s.parse::<u64>().ok()), Some(p), "projection shown");
    }
    // Nothing runs past the wall's edge at 1920x1080: every panel's content fits its box.
    let overflow = page
        .eval("[...document.querySelectorAll('.panel')].filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.id).join(',')")
        .await;
    assert_eq!(overflow, "", "panels whose content is cut off at the right");
    // Names may end in an ellipsis; numbers never.
    let clipped = page
        .eval("[...document.querySelectorAll('td:not(.name)')].filter(td => td.textContent.trim() && td.scrollWidth > td.clientWidth + 1).map(td => td.textContent).slice(0, 5).join('|')")
        .await;
    assert_eq!(clipped, "", "numbers cut off at 1920x1080");
    let bottom = page
        .eval("Math.max(...[...document.querySelectorAll('.panel')].map(p => p.getBoundingClientRect().bottom))")
        .await;
    assert!(bottom.as_f64().unwrap() <= 1080.0, "panels end below the screen: {bottom}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("screenshot: {}", page.screenshot("screen-history.png").await.display());
    page.eval("document.querySelector('#range-tabs button[data-range=promotion]').click()").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eprintln!("screenshot: {}", page.screenshot("screen-history-promotion.png").await.display());

    // The 复盘 report, from the database the monitor writes, in the browser.
    let out = dir.path().join("review");
    warroom_tests::run_review(env!("CARGO_BIN_EXE_warroom"), &db, &out, &[]);
    let mut page = Page::open(&port, &format!("file://{}", out.join("report.html").display())).await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1200, "height": 2400, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    let started = Instant::now();
    loop {
        let svgs = page.eval("document.querySelectorAll('svg polyline').length").await.as_u64().unwrap_or(0);
        let tables = page.eval("document.querySelectorAll('table').length").await.as_u64().unwrap_or(0);
        if svgs >= 3 && tables >= 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the report did not render: {svgs} lines, {tables} tables"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gmv = api_snapshot(&base, ops).await["totals"]["gmv_cents"].as_u64().unwrap();
    let text = page.eval("document.body.innerText").await;
    let yuan = format!("{}", gmv / 100);
    let shown: String =
        text.as_str().unwrap().chars().filter(|c| c.is_ascii_digit() || *c == '¥' || *c == '.').collect();
    assert!(shown.contains(&format!("¥{yuan}.{:02}", gmv % 100)), "the report shows the GMV {gmv}");
    eprintln!("report screenshot: {}", page.screenshot("review-report.png").await.display());
}
