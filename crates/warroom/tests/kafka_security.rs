//! Kafka over TLS and SASL, through the binary. TLS: a broker reached only through a TLS
//! terminator that requires client certificates (mutual TLS); the monitor's client key is
//! encrypted and its password is in a file. The numbers are exact, dead letters go out over
//! TLS too, and the password reaches no log. A monitor that does not trust the broker's
//! certificate is degraded and says why. SASL: through a SCRAM-SHA-512 front that knows one user,
//! the monitor authenticates and counts exactly, and a wrong password is refused, degraded and
//! reported; Tansu's own `--authentication` refuses an unknown user the same way. The password
//! never reaches a log.
//!
//! (Tansu accepts `--cert`/`--key` but never performs a TLS handshake, hence the terminator in
//! `warroom_tests::tls`; and with its memory storage no SCRAM user can be created, hence the
//! SCRAM front in `warroom_tests::sasl`.)
//! Needs Tansu (WARROOM_TANSU) and `openssl`, as scripts/test.sh provides.

use std::time::Duration;

use warroom_ingest::gen::{write_night, GenConfig};
use warroom_tests::kafka::{
    files_starting, free_port, http_get, metric, monitor_url, produce_configured, start_monitor_on, unique,
    wait_for_read, wait_until, PrivateBroker,
};
use warroom_tests::rdkafka::ClientConfig;
use warroom_tests::sasl::ScramTerminator;
use warroom_tests::tls::{Pki, TlsTerminator};

const BIN: &str = env!("CARGO_BIN_EXE_warroom");
const OPS: &str = "demo-ops-token-0001";

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

/// The monitor's TLS settings, trusting `ca`.
fn tls_settings(pki: &Pki, ca: &std::path::Path) -> String {
    format!(
        "security_protocol = \"ssl\"\nssl_ca_file = \"{}\"\nssl_cert_file = \"{}\"\nssl_key_file = \"{}\"\nssl_key_password_file = \"{}\"\n",
        toml_path(ca),
        toml_path(&pki.client_cert),
        toml_path(&pki.client_key),
        toml_path(&pki.client_key_password)
    )
}

fn write_config(dir: &std::path::Path, kafka: &str) {
    std::fs::write(
        dir.join("warroom.toml"),
        format!(
            "{}[kafka]\ncheckpoint_interval = \"1s\"\n{kafka}[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n",
            warroom_tests::kafka::REFERENCE_RACES
        ),
    )
    .unwrap();
}

/// Every log and stdout line the monitor wrote, and its effective configuration as printed.
fn everything_said(dir: &std::path::Path, base: &str) -> String {
    let mut all = files_starting(dir, "log-") + &files_starting(dir, "out-");
    all += &http_get(base, "/metrics", Some(OPS), Duration::from_secs(3)).1;
    all
}

/// A night with bad lines, produced through `pc` (the broker advertises only the secured
/// port, so the test's producer speaks its protocol too). Returns the lines and the bad count.
fn produce_night(pc: ClientConfig, topic: &str, seed: u64) -> (Vec<Vec<u8>>, f64) {
    let mut buf = Vec::new();
    let g = GenConfig { seed, bad_share: 0.02, merchant_change_share: 0.0, ..GenConfig::default() };
    write_night(g, 5_000, 1_794_312_000_000, 1_800_000, &mut buf).unwrap();
    let lines: Vec<Vec<u8>> = warroom_tests::lines(&buf).iter().map(|l| l.to_vec()).collect();
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
    let bad = refs.iter().filter(|l| !warroom_tests::is_valid(l)).count() as f64;
    assert!(bad > 20.0, "the input has bad lines: {bad}");
    produce_configured(pc, topic, &refs, true);
    (lines, bad)
}

/// A monitor configured with `kafka` settings reads the night exactly: every message, every
/// dead letter delivered, ready, and the snapshot equal to the reference. Returns it and its URL.
fn counts_exactly(
    brokers: &str,
    topic: &str,
    dir: &std::path::Path,
    kafka: &str,
    (lines, bad): &(Vec<Vec<u8>>, f64),
    how: &str,
) -> (warroom_tests::kafka::Running, String) {
    write_config(dir, kafka);
    let mon = start_monitor_on(BIN, brokers, topic, dir, &["--group", &unique("sec-g")], &[]);
    let base = monitor_url(dir);
    wait_for_read(dir, lines.len() as u64, &format!("every message read {how}"));
    wait_until(&format!("every dead letter delivered {how}"), 60, || {
        let (_, text) = http_get(&base, "/metrics", Some(OPS), Duration::from_secs(3));
        metric(&text, "warroom_kafka_dead_lettered_total") == Some(*bad)
    });
    wait_until(&format!("ready {how}"), 30, || http_get(&base, "/readyz", None, Duration::from_secs(3)).0 == 200);
    // The snapshot file is written every second: wait for one taken after the last message.
    std::thread::sleep(Duration::from_millis(2_500));
    let snap: warroom_engine::Snapshot =
        serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).unwrap()).unwrap();
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
    let want = warroom_tests::reference(&refs, &[60_000, 300_000, 3_600_000], 300_000);
    warroom_tests::assert_matches_reference(&snap, &want, how);
    (mon, base)
}

/// A monitor configured with `kafka` settings the broker refuses: degraded, and /readyz says
/// why. Returns the reason and the URL.
fn refused(
    brokers: &str,
    topic: &str,
    dir: &std::path::Path,
    kafka: &str,
    what: &str,
) -> (warroom_tests::kafka::Running, String, String) {
    write_config(dir, kafka);
    let mon = start_monitor_on(BIN, brokers, topic, dir, &["--group", &unique("sec-g")], &[]);
    let base = monitor_url(dir);
    let mut why = String::new();
    wait_until(&format!("{what} reported in /readyz"), 30, || {
        let (code, text) = http_get(&base, "/readyz", None, Duration::from_secs(3));
        why = text;
        code == 503 && why.contains("degraded")
    });
    eprintln!("{what}, {why}");
    (mon, base, why)
}

#[test]
fn tls_with_client_certificates_counts_exactly_and_a_wrong_ca_is_degraded() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path());
    let tls_port = free_port();
    let broker = PrivateBroker::start(tls_port);
    let tls = TlsTerminator::start(tls_port, broker.port, pki.server_config(true));
    let topic = unique("tls");
    broker.create_topic(&topic, 4);
    let brokers = format!("127.0.0.1:{tls_port}");
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &brokers)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", pki.ca.display().to_string())
        .set("ssl.certificate.location", pki.client_cert.display().to_string())
        .set("ssl.key.location", pki.client_key.display().to_string())
        .set("ssl.key.password", &pki.password);
    let night = produce_night(pc, &topic, 83);

    let dir = tempfile::tempdir().unwrap();
    let settings = tls_settings(&pki, &pki.ca);
    let (mon, base) = counts_exactly(&brokers, &topic, dir.path(), &settings, &night, "over mutual TLS");
    let ok = tls.handshakes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(ok >= 2, "the monitor's consumer and dead-letter producer both went through TLS: {ok} handshakes");
    let said = everything_said(dir.path(), &base);
    assert!(!said.contains(&pki.password), "the key's password reached a log or /metrics");
    // The effective configuration names the password file, never the password.
    let cfg = std::process::Command::new(BIN)
        .args(["config", "--config"])
        .arg(dir.path().join("warroom.toml"))
        .output()
        .expect("warroom config");
    let shown = String::from_utf8_lossy(&cfg.stdout).to_string() + &String::from_utf8_lossy(&cfg.stderr);
    assert!(cfg.status.success(), "warroom config: {shown}");
    assert!(shown.contains("client.key.password") && !shown.contains(&pki.password), "{shown}");
    drop(mon);

    // A monitor that trusts another CA refuses the broker's certificate: degraded, and says why.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path());
    let refused_before = tls.refused.load(std::sync::atomic::Ordering::Relaxed);
    let dir2 = tempfile::tempdir().unwrap();
    let settings = tls_settings(&pki, &other.ca);
    let (_mon2, base2, why) = refused(&brokers, &topic, dir2.path(), &settings, "wrong CA");
    assert!(why.contains("SSL") || why.contains("certificate"), "/readyz says the TLS handshake failed: {why}");
    assert!(why.contains("ssl_"), "/readyz says what to check: {why}");
    assert!(tls.refused.load(std::sync::atomic::Ordering::Relaxed) > refused_before, "the handshake was refused");
    let (_, text) = http_get(&base2, "/metrics", Some(OPS), Duration::from_secs(3));
    assert_eq!(metric(&text, "warroom_kafka_messages_total"), Some(0.0), "nothing read from an untrusted broker");
    let log = files_starting(dir2.path(), "log-");
    assert!(log.contains("certificate verify failed") || log.contains("SSL handshake failed"), "{log}");
    assert!(!everything_said(dir2.path(), &base2).contains(&pki.password), "the password reached a log");
}

fn sasl_settings(password_file: &std::path::Path) -> String {
    format!(
        "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"warroom\"\nsasl_password_file = \"{}\"\n",
        toml_path(password_file)
    )
}

#[test]
fn sasl_scram_authenticates_and_counts_exactly_and_a_wrong_password_is_degraded() {
    let sasl_port = free_port();
    let broker = PrivateBroker::start(sasl_port);
    let password = format!("scram-{}-right", std::process::id());
    let front = ScramTerminator::start(sasl_port, broker.port, "warroom", &password);
    let topic = unique("scram");
    broker.create_topic(&topic, 4);
    let brokers = format!("127.0.0.1:{sasl_port}");
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &brokers)
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "warroom")
        .set("sasl.password", &password);
    let night = produce_night(pc, &topic, 89);
    let producers = front.authenticated.load(std::sync::atomic::Ordering::Relaxed);
    assert!(producers >= 1, "the test's producer authenticated");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sasl.password"), &password).unwrap();
    let settings = sasl_settings(&dir.path().join("sasl.password"));
    let (mon, base) = counts_exactly(&brokers, &topic, dir.path(), &settings, &night, "over SASL SCRAM-SHA-512");
    let authed = front.authenticated.load(std::sync::atomic::Ordering::Relaxed) - producers;
    assert!(authed >= 2, "the monitor's consumer and dead-letter producer both authenticated: {authed}");
    assert_eq!(front.refused.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(!everything_said(dir.path(), &base).contains(&password), "the SASL password reached a log");
    drop(mon);

    // The same monitor with a wrong password: refused by the front, degraded, and says why.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = format!("scram-{}-wrong", std::process::id());
    std::fs::write(dir2.path().join("sasl.password"), &wrong).unwrap();
    let settings = sasl_settings(&dir2.path().join("sasl.password"));
    let (_mon2, base2, why) = refused(&brokers, &topic, dir2.path(), &settings, "wrong password");
    assert!(why.contains("SASL") || why.contains("uthentication"), "/readyz says authentication failed: {why}");
    assert!(why.contains("sasl_"), "/readyz says what to check: {why}");
    assert!(front.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the front refused the proof");
    let (_, text) = http_get(&base2, "/metrics", Some(OPS), Duration::from_secs(3));
    assert_eq!(metric(&text, "warroom_kafka_messages_total"), Some(0.0), "nothing read without authenticating");
    assert!(!everything_said(dir2.path(), &base2).contains(&wrong), "the wrong password reached a log");
}

#[test]
fn sasl_scram_refused_by_the_broker_is_degraded_and_never_logs_the_password() {
    let port = free_port();
    let _broker = PrivateBroker::start_on(port, port, &["--authentication"]);
    let topic = unique("sasl");
    let dir = tempfile::tempdir().unwrap();
    let password = format!("scram-{}-secret", std::process::id());
    std::fs::write(dir.path().join("sasl.password"), &password).unwrap();
    let settings = sasl_settings(&dir.path().join("sasl.password"));
    let brokers = format!("127.0.0.1:{port}");
    let (_mon, base, why) = refused(&brokers, &topic, dir.path(), &settings, "unknown SCRAM user");
    assert!(why.contains("SASL") || why.contains("uthentication"), "/readyz says authentication failed: {why}");
    assert!(why.contains("sasl_"), "/readyz says what to check: {why}");
    let log = files_starting(dir.path(), "log-");
    assert!(log.contains("SASL") && log.contains("SCRAM"), "the log shows the SCRAM exchange:\n{log}");
    assert!(!everything_said(dir.path(), &base).contains(&password), "the SASL password reached a log");
}
