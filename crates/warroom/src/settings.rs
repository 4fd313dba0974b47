//! The binary's configuration file: the engine's tables plus `[limits]`, `[sim]`, `[kafka]`,
//! `[api]` and `[alerts]`.
//!
//! Layering, lowest first: the embedded `config/warroom.toml` (the one source of defaults: it
//! names every key, a test checks that) <- `--config FILE` merged into it **key by key**
//! (tables merge recursively; any other value, arrays included, replaces the default whole)
//! <- environment (`WARROOM_*`, through clap) <- command-line flags. `warroom config`
//! (or `run --print-config`) prints the effective configuration with where each value came
//! from.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use warroom_engine::config::{Config, EngineConfig, RaceConfig};
use warroom_engine::plan::PlanConfig;

/// The defaults shipped in the binary.
pub const EMBEDDED: &str = include_str!("../../../config/warroom.toml");
const EMBEDDED_NAME: &str = "embedded config/warroom.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub engine: EngineConfig,
    pub race: RaceConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanConfig>,
    pub limits: LimitsConfig,
    pub sim: SimSettings,
    /// The Kafka source (`run --source kafka`).
    pub kafka: warroom_ingest::kafka::KafkaConfig,
    /// The HTTP API and WebSocket: connection caps and timeouts.
    pub api: warroom_api::ApiConfig,
    /// Alert rules (reloaded when the --config file changes).
    pub alerts: warroom_api::alerts::AlertsConfig,
    /// The promotion's history database.
    pub history: HistorySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// The SQLite file; "" = `<kafka.state_dir>/history.db` for a Kafka monitor, in memory for
    /// the simulator and a file.
    pub path: String,
    /// How often a source without checkpoints (the simulator, a file) stores its minutes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A previous promotion's history database, read only; "" = none.
    pub previous: String,
    /// The promotion's clock (+HH:MM): the screen's curve and the review print times at
    /// this offset, whatever the browser's or the machine's time zone.
    pub utc_offset: String,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            path: String::new(),
            interval: Duration::from_secs(1),
            previous: String::new(),
            utc_offset: "+08:00".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages above this size are rejected as `too_large`.
    pub max_message_bytes: usize,
    /// Events stamped further ahead of the monitor's wall clock (at the moment they are read)
    /// are rejected as `ts_in_future`. See config/warroom.toml for why minutes.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_message_bytes: 64 * 1024, max_future: Duration::from_secs(120) }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// Events per second (real time) at the night's base intensity.
    pub base_rate: f64,
    /// Event time runs this many times faster than real time during the night.
    pub speed: f64,
    #[serde(with = "humantime_serde")]
    pub night: Duration,
    pub seed: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings { base_rate: 1500.0, speed: 60.0, night: Duration::from_secs(6 * 3600), seed: 11 }
    }
}

/// Where each value of the effective configuration came from, by dotted key.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    table: toml::Table,
    from: BTreeMap<String, String>,
}

/// Values never printed (they are paths to secrets, not secrets; but a user may put a secret
/// straight into `[kafka.properties]`).
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "sasl.jaas", "private"].iter().any(|s| k.contains(s))
        && !k.ends_with("_file")
        && !k.ends_with(".location")
}

/// `over` merged into `base` key by key; records in `from` which leaves `over` set.
fn merge(base: &mut toml::Table, over: toml::Table, prefix: &str, origin: &str, from: &mut BTreeMap<String, String>) {
    for (k, v) in over {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &key, origin, from),
            (_, v) => {
                mark(&v, &key, origin, from);
                base.insert(k, v);
            }
        }
    }
}

/// Records `origin` for every leaf under `v`.
fn mark(v: &toml::Value, key: &str, origin: &str, from: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            from.retain(|k, _| !(k == key || k.starts_with(&format!("{key}."))));
            for (k, v) in t {
                mark(v, &format!("{key}.{k}"), origin, from);
            }
        }
        _ => {
            from.retain(|k, _| !k.starts_with(&format!("{key}.")));
            from.insert(key.to_string(), origin.to_string());
        }
    }
}

impl Settings {
    /// The embedded defaults with `path` merged over them, validated (every problem at once).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        Ok(Self::load_with_origins(path)?.0)
    }

    /// [`Settings::load`], and where each value came from.
    pub fn load_with_origins(path: Option<&Path>) -> anyhow::Result<(Settings, Origins)> {
        let mut table: toml::Table = toml::from_str(EMBEDDED).context("the embedded config/warroom.toml")?;
        let mut from = BTreeMap::new();
        mark(&toml::Value::Table(table.clone()), "", EMBEDDED_NAME, &mut from);
        let from: BTreeMap<String, String> =
            from.into_iter().map(|(k, v)| (k.trim_start_matches('.').to_string(), v)).collect();
        let mut origins = Origins { table: toml::Table::new(), from };
        let origin = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read config file {} (check the path given to --config)", p.display())
                })?;
                let user: toml::Table =
                    toml::from_str(&text).with_context(|| format!("invalid config in {}", p.display()))?;
                merge(&mut table, user, "", &p.display().to_string(), &mut origins.from);
                p.display().to_string()
            }
            None => EMBEDDED_NAME.to_string(),
        };
        let s: Settings = Settings::deserialize(toml::Value::Table(table.clone()))
            .with_context(|| format!("invalid config in {origin}"))?;
        let mut errs = s.engine_config().validate().err().unwrap_or_default();
        errs.extend(s.alerts.validate().err().unwrap_or_default());
        errs.extend(s.kafka.validate().err().unwrap_or_default());
        errs.extend(s.api.validate().err().unwrap_or_default());
        if let Err(e) = warroom_history::parse_utc_offset(&s.history.utc_offset) {
            errs.push(format!("history.utc_offset {e}"));
        }
        if s.sim.speed < 1.0 || s.sim.base_rate <= 0.0 {
            errs.push("sim.speed must be >= 1 and sim.base_rate > 0".into());
        }
        if s.limits.max_future.is_zero() {
            errs.push("limits.max_future must be above 0, e.g. \"2m\"".into());
        }
        if !errs.is_empty() {
            bail!("invalid config in {origin}:\n  - {}", errs.join("\n  - "));
        }
        origins.table = table;
        Ok((s, origins))
    }

    pub fn engine_config(&self) -> Config {
        Config {
            engine: self.engine.clone(),
            race: self.race.clone(),
            plan: self.plan.clone(),
            rehearsal: None,
            live: false,
        }
    }

    pub fn limits(&self) -> warroom_model::Limits {
        warroom_model::Limits::with_future_allowance(
            self.limits.max_message_bytes,
            self.limits.max_future.as_millis() as i64,
        )
    }
}

impl Origins {
    /// Records that `key` was set to `value` by `origin` (an environment variable or a flag).
    pub fn set(&mut self, key: &str, value: toml::Value, origin: &str) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut t = &mut self.table;
        for p in parts {
            t = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a table");
        }
        t.insert(last.to_string(), value);
        self.from.insert(key.to_string(), origin.to_string());
    }

    /// The effective configuration as TOML, each value followed by where it came from.
    /// Secret-looking values are replaced by `"<redacted>"`.
    pub fn render(&self) -> String {
        let mut out = String::from("# the effective configuration; `# from:` says where each value came from\n");
        self.render_table(&self.table, "", &mut out);
        out
    }

    fn render_table(&self, t: &toml::Table, prefix: &str, out: &mut String) {
        use std::fmt::Write;
        let (tables, values): (Vec<_>, Vec<_>) = t.iter().partition(|(_, v)| v.is_table());
        if !values.is_empty() && !prefix.is_empty() {
            let _ = writeln!(out, "\n[{prefix}]");
        }
        for (k, v) in values {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            let shown = if is_secret(k) { toml::Value::String("<redacted>".into()) } else { v.clone() };
            let origin = self.from.get(&key).map_or("built-in default", String::as_str);
            let name = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                k.clone()
            } else {
                format!("{k:?}")
            };
            let _ = writeln!(out, "{name} = {shown}   # from: {origin}");
        }
        for (k, v) in tables {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if let toml::Value::Table(sub) = v {
                if sub.is_empty() {
                    let origin = self.from.get(&key).map_or(EMBEDDED_NAME, String::as_str);
                    let _ = writeln!(out, "\n[{key}]   # empty; from: {origin}");
                }
                self.render_table(sub, &key, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn embedded_config_is_valid() {
        Settings::load(None).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "bad.toml",
            "[engine]\nwindows=[\"1m\"]\ndedupe_horizon=\"10s\"\n[race]\ndefault_rule=\"nope\"\nhysteresis=2.0\n",
        );
        let err = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(err.contains("dedupe_horizon") && err.contains("nope") && err.contains("hysteresis"), "{err}");
        let p = write(dir.path(), "typo.toml", "[engine]\nwindowz=[]\n");
        let err = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(err.contains("windowz"), "{err}");
    }

    #[test]
    fn a_user_file_overrides_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "one.toml", "[engine]\nmax_slots = 7\n");
        let (s, o) = Settings::load_with_origins(Some(&p)).unwrap();
        let embedded = Settings::load(None).unwrap();
        assert_eq!(s.engine.max_slots, 7);
        // Everything else is the embedded file's, not the Rust Default's.
        assert_eq!(s.race.hysteresis.to_bits(), embedded.race.hysteresis.to_bits());
        assert!(s.race.hysteresis > 0.0, "the embedded file damps races");
        assert_eq!(s.race.rules.keys().collect::<Vec<_>>(), embedded.race.rules.keys().collect::<Vec<_>>());
        assert_eq!(s.alerts.rules.len(), embedded.alerts.rules.len());
        assert!(!s.alerts.rules.is_empty());
        assert_eq!(s.engine.windows, embedded.engine.windows);
        let shown = o.render();
        assert!(shown.contains(&format!("max_slots = 7   # from: {}", p.display())), "{shown}");
        assert!(shown.contains("max_venues = 512   # from: embedded config/warroom.toml"), "{shown}");
    }

    #[test]
    fn the_embedded_file_names_every_key() {
        // Every key the settings have is written in the embedded file, so the Rust defaults
        // never decide anything for the binary: one source of defaults.
        let embedded: toml::Table = toml::from_str(EMBEDDED).unwrap();
        let loaded = toml::Table::try_from(Settings::load(None).unwrap()).unwrap();
        fn missing(have: &toml::Table, want: &toml::Table, prefix: &str, out: &mut Vec<String>) {
            for (k, v) in want {
                let key = format!("{prefix}{k}");
                match (have.get(k), v) {
                    (None, _) => out.push(key),
                    // Maps of data (rules, venues, properties): their entries are not keys.
                    (Some(_), _)
                        if ["race.rules", "race.venues", "kafka.properties", "kafka.dlq_properties"]
                            .contains(&key.as_str()) => {}
                    (Some(toml::Value::Table(h)), toml::Value::Table(w)) => missing(h, w, &format!("{key}."), out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        missing(&embedded, &loaded, "", &mut out);
        assert!(out.is_empty(), "keys with only a Rust default; write them in config/warroom.toml: {out:?}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        // Passwords belong in files: refused in the config, without repeating them.
        let p = write(dir.path(), "s.toml", "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n");
        let err = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(err.contains("put secrets in files") && !err.contains("hunter2"), "{err}");
        // Other secret-looking values are redacted when the configuration is printed.
        let p = write(dir.path(), "t.toml", "[kafka.properties]\n\"sasl.oauthbearer.client.secret\" = \"hunter3\"\n");
        let (_, o) = Settings::load_with_origins(Some(&p)).unwrap();
        let shown = o.render();
        assert!(!shown.contains("hunter3") && shown.contains("<redacted>"), "{shown}");
    }
}
