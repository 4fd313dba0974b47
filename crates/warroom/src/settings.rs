//! The binary's configuration file: the engine's tables plus `[limits]` and `[sim]`.
//! Layering: built-in defaults <- the embedded `config/warroom.toml` <- `--config FILE`
//! <- environment (`WARROOM_*`, through clap) <- command-line flags.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use warroom_engine::config::{Config, EngineConfig, RaceConfig};
use warroom_engine::plan::PlanConfig;

/// The defaults shipped in the binary.
pub const EMBEDDED: &str = include_str!("../../../config/warroom.toml");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub engine: EngineConfig,
    pub race: RaceConfig,
    pub plan: Option<PlanConfig>,
    pub limits: LimitsConfig,
    pub sim: SimSettings,
    /// The Kafka source (`run --source kafka`).
    pub kafka: warroom_ingest::kafka::KafkaConfig,
    /// Alert rules (reloaded when the --config file changes).
    pub alerts: warroom_api::alerts::AlertsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages above this size are rejected as `too_large`.
    pub max_message_bytes: usize,
    /// Events further ahead of the wall clock are rejected as `ts_out_of_range`.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_message_bytes: 64 * 1024, max_future: Duration::from_secs(86_400) }
    }
}

#[derive(Debug, Clone, Deserialize)]
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

impl Settings {
    /// Reads the embedded defaults or `path`, and validates everything at once.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read config file {} (check the path given to --config)", p.display())
                })?,
                p.display().to_string(),
            ),
            None => (EMBEDDED.to_string(), "the embedded config/warroom.toml".to_string()),
        };
        let s: Settings = toml::from_str(&text).with_context(|| format!("invalid config in {origin}"))?;
        let mut errs = s.engine_config().validate().err().unwrap_or_default();
        errs.extend(s.alerts.validate().err().unwrap_or_default());
        if !errs.is_empty() {
            bail!("invalid config in {origin}:\n  - {}", errs.join("\n  - "));
        }
        if s.sim.speed < 1.0 || s.sim.base_rate <= 0.0 {
            bail!("invalid config in {origin}: sim.speed must be >= 1 and sim.base_rate > 0");
        }
        Ok(s)
    }

    pub fn engine_config(&self) -> Config {
        Config { engine: self.engine.clone(), race: self.race.clone(), plan: self.plan.clone(), rehearsal: None }
    }

    pub fn limits(&self) -> warroom_model::Limits {
        warroom_model::Limits::with_future_skew(
            self.limits.max_message_bytes,
            self.limits.max_future.as_millis() as i64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid() {
        Settings::load(None).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = std::env::temp_dir().join(format!("warroom-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(
            &p,
            "[engine]\nwindows=[\"1m\"]\ndedupe_horizon=\"10s\"\n[race]\ndefault_rule=\"nope\"\nhysteresis=2.0\n",
        )
        .unwrap();
        let err = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(err.contains("dedupe_horizon") && err.contains("nope") && err.contains("hysteresis"), "{err}");
        std::fs::write(&p, "[engine]\nwindowz=[]\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(err.contains("windowz"), "{err}");
    }
}
