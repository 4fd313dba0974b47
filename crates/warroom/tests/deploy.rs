//! deploy/: what can be checked without Docker or a cluster. Every YAML file parses; every
//! command line the Dockerfile, the compose file and the Kubernetes manifests give the binary
//! is accepted by it (`--print-config` parses the flags and the config, then exits); the
//! configuration they carry passes `check-config`; the token files they mount load.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

const BIN: &str = env!("CARGO_BIN_EXE_warroom");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display())))
        .collect();
    assert!(!docs.is_empty(), "{} is empty", path.display());
    docs
}

use serde::Deserialize;

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().expect("an argument is a string").to_string()).collect())
        .unwrap_or_default()
}

/// Runs the binary with `args` (paths inside the image mapped to files here), asking it to
/// print its configuration instead of running: fails the test if it refuses them.
fn accepts(args: &[String], env: &[(String, String)], config: &Path, what: &str) {
    let mut args: Vec<String> = args
        .iter()
        .map(|a| if a == "/etc/warroom/warroom.toml" { config.display().to_string() } else { a.clone() })
        .collect();
    let help = args.first().is_some_and(|c| c == "run");
    if help {
        args.push("--print-config".into());
    }
    let out = Command::new(BIN).args(&args).envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: `warroom {}` refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_config(path: &Path, what: &str) {
    let out = Command::new(BIN).arg("check-config").arg("--config").arg(path).output().unwrap();
    assert!(out.status.success(), "{what}: check-config: {}", String::from_utf8_lossy(&out.stderr));
}

fn auth_loads(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("auth.toml");
    std::fs::write(&p, text).unwrap();
    let a = warroom_api::Auth::load(Some(&p)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!a.is_empty(), "{what}: no tokens");
}

#[test]
fn the_dockerfile_command_is_accepted() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let cmd = text.lines().find_map(|l| l.strip_prefix("CMD ")).expect("a CMD line");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/warroom.toml");
    accepts(&args, &[], &config, "Dockerfile CMD");
    assert!(text.contains("COPY config/warroom.toml /etc/warroom/warroom.toml"));
}

#[test]
fn the_compose_file_parses_and_its_command_lines_are_accepted() {
    let compose = &docs(&deploy().join("compose.yml"))[0];
    let services = compose["services"].as_mapping().expect("services");
    assert!(services.contains_key("kafka") && services.contains_key("worker") && services.contains_key("api"));
    let kraft = compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str().unwrap();
    assert!(kraft.contains("controller"), "Kafka in KRaft mode");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/warroom.toml");
    let mut roles = Vec::new();
    for (name, svc) in services {
        let Some(cmd) = svc.get("command") else { continue };
        let env: Vec<(String, String)> = svc["environment"]
            .as_mapping()
            .map(|m| {
                m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string())).collect()
            })
            .unwrap_or_default();
        let args = strings(cmd);
        accepts(&args, &env, &config, &format!("compose service {}", name.as_str().unwrap()));
        roles.push(args[2].clone());
    }
    roles.sort();
    assert_eq!(roles, ["partials", "worker"]);
    auth_loads(&std::fs::read_to_string(deploy().join("auth.example.toml")).unwrap(), "deploy/auth.example.toml");
}

#[test]
fn the_kubernetes_manifests_parse_and_what_they_carry_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = Vec::new();
    let mut config = None;
    let mut containers = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("k8s")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in &files {
        for d in docs(f) {
            let kind = d["kind"].as_str().expect("kind").to_string();
            match kind.as_str() {
                "ConfigMap" => {
                    let p = dir.path().join("warroom.toml");
                    std::fs::write(&p, d["data"]["warroom.toml"].as_str().unwrap()).unwrap();
                    check_config(&p, "ConfigMap warroom-config");
                    config = Some(p);
                }
                "Secret" => auth_loads(d["stringData"]["auth.toml"].as_str().unwrap(), "Secret warroom-auth"),
                "Deployment" | "StatefulSet" => {
                    for c in d["spec"]["template"]["spec"]["containers"].as_sequence().unwrap() {
                        for probe in ["livenessProbe", "readinessProbe"] {
                            let path = c[probe]["httpGet"]["path"].as_str();
                            assert!(matches!(path, Some("/healthz" | "/readyz")), "{kind}: {probe} on {path:?}");
                        }
                        containers.push((d["metadata"]["name"].as_str().unwrap().to_string(), strings(&c["args"])));
                    }
                }
                _ => {}
            }
            kinds.push(kind);
        }
    }
    for want in ["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim"] {
        assert!(kinds.iter().any(|k| k == want), "deploy/k8s has a {want}");
    }
    let config = config.expect("a ConfigMap with warroom.toml");
    assert_eq!(containers.len(), 2, "workers and API nodes");
    for (name, args) in &containers {
        accepts(args, &[], &config, &format!("Deployment {name}"));
    }
}

#[test]
fn every_role_has_help() {
    for args in [&["--help"][..], &["run", "--help"], &["check-config", "--help"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success());
    }
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in ["worker", "partials", "--state-store", "--partials-topic"] {
        assert!(help.contains(s), "run --help mentions {s}");
    }
}
