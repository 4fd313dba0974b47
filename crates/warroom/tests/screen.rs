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
