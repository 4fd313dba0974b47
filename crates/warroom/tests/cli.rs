//! The `warroom` binary itself, as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warroom"))
}

fn samples() -> PathBuf {
    std::env::var_os("WARROOM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("contract/samples")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warroom-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn show(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn replay_writes_the_contract_snapshot() {
    let snap = tmp("valid.json");
    let out = bin()
        .args(["replay", "--input"])
        .arg(samples().join("valid.jsonl"))
        .arg("--snapshot-out")
        .arg(&snap)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&snap).unwrap()).unwrap();
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(samples().join("valid.snapshot.json")).unwrap()).unwrap();
    for k in ["gmv_cents", "paid_orders", "refund_cents", "accepted", "rejected", "duplicates"] {
        assert_eq!(got["totals"][k], want["totals"][k], "totals.{k}\n{}", show(&out));
    }
    assert_eq!(got["as_of_ms"], want["as_of_ms"]);
    // The contract's fields of every slot (the snapshot may add more, SNAPSHOT.md allows it).
    let slots = want["slots"].as_array().unwrap();
    assert_eq!(slots.len(), got["slots"].as_array().unwrap().len());
    for (w, g) in slots.iter().zip(got["slots"].as_array().unwrap()) {
        for (k, v) in w.as_object().unwrap() {
            assert_eq!(&g[k], v, "slot {} field {k}", w["slot"]);
        }
    }
}

#[test]
fn replay_keeps_every_rejected_line_with_its_reason() {
    let (snap, rej) = (tmp("bad.json"), tmp("bad.rejects.jsonl"));
    let out = bin()
        .args(["replay", "--quiet", "--input"])
        .arg(samples().join("bad.jsonl"))
        .arg("--snapshot-out")
        .arg(&snap)
        .arg("--rejects-out")
        .arg(&rej)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = std::fs::read_to_string(&rej).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 17);
    assert!(lines.iter().all(|l| l["reason"].is_string() && l["message"].is_string() && l["raw"].is_string()));
    assert_eq!(lines[12]["reason"], "wrong_type");
    assert_eq!(lines[12]["field"], "slot");
}

#[test]
fn errors_say_what_to_do() {
    let out = bin().args(["replay", "--input", "/no/such/file", "--snapshot-out", "/tmp/x.json"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open --input /no/such/file"), "{}", show(&out));
    let cfg = tmp("bad.toml");
    std::fs::write(&cfg, "[race]\ndefault_rule = \"nope\"\nhysteresis = 3.0\n").unwrap();
    let out = bin().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope") && err.contains("hysteresis"), "{}", show(&out));
}

#[test]
fn run_with_the_embedded_simulator_reports_live_numbers() {
    let out = bin().args(["run", "--duration", "3s", "--rate", "3000", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(stdout.lines().count() >= 2, "one summary line per second\n{}", show(&out));
    assert!(last.contains("GMV ¥") && last.contains("phase=warmup"), "{}", show(&out));
    assert!(!last.contains("accepted=0 "), "the simulator should have produced events\n{}", show(&out));
}

/// GET `path` from the monitor with the demo ops token, without an HTTP client crate.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer demo-ops-token-0001\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Starts `cmd` (a `warroom run`) and returns it with the address of the URL it prints on the
/// line starting with `prefix`; the rest of its output is drained.
fn started(cmd: &mut Command, prefix: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().expect("warroom run");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "no URL printed");
        if let Some(rest) = line.strip_prefix(prefix) {
            break rest.trim().trim_start_matches("http://").split('/').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in out.lines() {});
    (child, addr)
}

#[test]
fn alert_rules_are_reloaded_when_the_config_file_changes() {
    let cfg = tmp("reload.toml");
    let base =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/warroom.toml")).unwrap();
    std::fs::write(&cfg, &base).unwrap();
    let (mut child, addr) = started(
        bin().args(["run", "--rate", "2000", "--duration", "60s", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg),
        "screen (ops):",
    );
    let has_rule = |name: &str| http_get(&addr, "/api/v1/alerts").contains(&format!("\"rule\":\"{name}\""));
    // A rule that fires at once on any GMV, added to the running monitor's config file.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!has_rule("any-gmv"));
    // First an invalid version: refused, nothing changes.
    std::fs::write(&cfg, format!("{base}\n[[alerts.rules]]\nname = \"any-gmv\"\nkind = \"threshold\"\nfire = 0.0\n"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(!has_rule("any-gmv"), "an invalid rule (no metric, no window) must not load");
    std::fs::write(
        &cfg,
        format!("{base}\n[[alerts.rules]]\nname = \"any-gmv\"\nkind = \"threshold\"\nmetric = \"gmv_cents\"\nwindow = \"1h\"\nfire = 0.0\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    while !has_rule("any-gmv") {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the new rule never fired");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_config_file_overrides_key_by_key_and_the_effective_config_says_where_from() {
    let cfg = tmp("one-key.toml");
    std::fs::write(&cfg, "[engine]\nmax_slots = 7\n").unwrap();
    let out = bin().args(["config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("max_slots = 7   # from: {}", cfg.display())), "{text}");
    // Everything else keeps the embedded defaults (not Rust's: the races stay damped, the
    // alert rules stay), and says so.
    assert!(text.contains("hysteresis = 0.05   # from: embedded config/warroom.toml"), "{text}");
    assert!(text.contains("name = \"pace-behind\""), "{text}");
    // Flags and environment on top, named as such.
    let out = bin()
        .args(["run", "--print-config", "--source", "kafka", "--topic", "t-flag", "--config"])
        .arg(&cfg)
        .env("WARROOM_BROKERS", "10.0.0.9:9093")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("topic = \"t-flag\"   # from: flag --topic"), "{text}");
    assert!(text.contains("brokers = \"10.0.0.9:9093\"   # from: environment WARROOM_BROKERS"), "{text}");
    assert!(text.contains("max_slots = 7"), "{text}");
}

#[test]
fn a_second_monitor_on_the_same_state_dir_refuses_to_start() {
    let dir = tmp("shared-state");
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        let mut c = bin();
        c.args(["run", "--source", "kafka", "--brokers", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut first = run().spawn().unwrap();
    let started = std::time::Instant::now();
    while !dir.join("LOCK").exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the first monitor never took its state dir");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = run().output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        err.contains("in use by another warroom monitor") && err.contains(&format!("pid {}", first.id())),
        "{}",
        show(&out)
    );
}

#[test]
fn the_demo_tokens_are_refused_beyond_loopback() {
    let out = bin().args(["run", "--listen", "0.0.0.0:0", "--duration", "5s"]).output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("demo tokens") && err.contains("--auth-file"), "{}", show(&out));
}

#[test]
fn the_auth_file_is_reloaded_when_it_changes() {
    let auth = tmp("auth-reload.toml");
    let token = |name: &str, t: &str| format!("[[tokens]]\ntoken = \"{t}\"\nrole = \"ops\"\nname = \"{name}\"\n");
    std::fs::write(&auth, token("a", "token-a-0123456789") + &token("b", "token-b-0123456789")).unwrap();
    let (mut child, addr) = started(
        bin().args(["run", "--rate", "500", "--duration", "60s", "--listen", "127.0.0.1:0", "--auth-file"]).arg(&auth),
        "screen: ",
    );
    let status = |t: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET /api/v1/snapshot HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    assert_eq!(status("token-b-0123456789"), "200");
    // Revoke b: no restart needed.
    std::fs::write(&auth, token("a", "token-a-0123456789")).unwrap();
    let started = std::time::Instant::now();
    while status("token-b-0123456789") != "401" {
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "the revoked token still works");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(status("token-a-0123456789"), "200");
    // An invalid file is refused and the tokens in force stay.
    std::fs::write(&auth, "[[tokens]]\ntoken = \"short\"\nrole = \"ops\"\n").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(status("token-a-0123456789"), "200");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn logs_are_json_lines_on_request() {
    let out = bin()
        .args(["run", "--duration", "2s", "--listen", "127.0.0.1:0"])
        .env("WARROOM_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("warroom running"))),
        "no start line among {} JSON lines",
        lines.len()
    );
    // Text otherwise: the same start line is not JSON.
    let out = bin()
        .args(["run", "--duration", "1s", "--listen", "127.0.0.1:0"])
        .env_remove("WARROOM_LOG_FORMAT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err
        .lines()
        .any(|l| l.contains("warroom running") && serde_json::from_str::<serde_json::Value>(l).is_err()));
}
