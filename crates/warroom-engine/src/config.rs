//! Engine configuration: the `[engine]`, `[race]` and `[plan]` tables of `config/*.toml`.
//!
//! Every struct denies unknown fields so a typo in a config file is an error at start, not a
//! setting silently ignored during the promotion.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::PlanConfig;
use crate::race::RuleSpec;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Sliding windows reported in `windows[]`, ending at the watermark. Each also gets a
    /// "previous window" of the same length for the first-formula decomposition.
    #[serde(with = "humantime_serde_vec")]
    pub windows: Vec<Duration>,
    /// Number of state shards; events are routed by user so a user's events, orders and
    /// distinct counts live in one shard. 0 means one per CPU.
    pub shards: usize,
    /// How far back in event time `event_id`s are remembered for de-duplication. Events
    /// older than the watermark minus this are rejected as `beyond_dedupe_horizon` rather
    /// than risk counting a re-delivery twice. Memory: about 27 bytes per event inside it.
    #[serde(with = "humantime_serde")]
    pub dedupe_horizon: Duration,
    /// How far back in event time paid `order_id`s are remembered, so a re-sent `pay` never
    /// adds GMV twice. Memory: about 27 bytes per paid order inside it.
    #[serde(with = "humantime_serde")]
    pub order_horizon: Duration,
    /// At most this many distinct slots are kept. An event naming a further slot is rejected
    /// as `too_many_slots` and nothing of it is kept: memory stays bounded whatever names the
    /// producers send.
    pub max_slots: usize,
    /// At most this many distinct venues (`too_many_venues` beyond).
    pub max_venues: usize,
    /// At most this many distinct merchants named on slot events (`too_many_merchants`).
    pub max_merchants: usize,
    /// At most this many distinct channels (`too_many_channels`).
    pub max_channels: usize,
    /// At most this many (slot, merchant) pairs: a slot's money is kept per merchant named on
    /// its events (商品更换), so a slot that changed hands has several
    /// (`too_many_slot_merchants` beyond).
    pub max_slot_merchants: usize,
    /// Count per minute for the history database (see `[history]`). `warroom replay` turns it
    /// off unless given `--history`.
    pub keep_history: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            windows: vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(3600)],
            shards: 0,
            dedupe_horizon: Duration::from_secs(3600),
            order_horizon: Duration::from_secs(24 * 3600),
            max_slots: 20_000,
            max_venues: 512,
            max_merchants: 25_000,
            max_channels: 256,
            max_slot_merchants: 25_000,
            keep_history: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaceConfig {
    /// The race window: slots are compared on their data over this window ending at the
    /// watermark (and growth rules against the window before it).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Rule for venues not named in `venues`.
    pub default_rule: String,
    /// Relative margin a challenger must beat the slot above it by to overtake it (0.05 =
    /// 5%); damps flapping between near-equal slots. 0 ranks strictly by score (the contract's
    /// order).
    pub hysteresis: f64,
    /// Named rules besides the built-in `gmv`.
    pub rules: BTreeMap<String, RuleSpec>,
    /// Venue -> rule name.
    pub venues: BTreeMap<String, String>,
    /// Whether a merchant sees its slots' gap to the slot ranked above (a distance in the
    /// rule's points, the slot above unnamed). Off where a platform's rules forbid telling a
    /// merchant anything derived from another merchant's numbers.
    pub merchant_gap: bool,
}

impl Default for RaceConfig {
    fn default() -> Self {
        RaceConfig {
            window: Duration::from_secs(300),
            default_rule: "gmv".into(),
            hysteresis: 0.0,
            rules: BTreeMap::new(),
            venues: BTreeMap::new(),
            merchant_gap: true,
        }
    }
}

/// Everything the engine needs.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineConfig,
    pub race: RaceConfig,
    pub plan: Option<PlanConfig>,
    /// Set in a rehearsal: every snapshot carries this tag.
    pub rehearsal: Option<crate::snapshot::Rehearsal>,
    /// The events come from a live source (Kafka): watermarks never move past the wall clock,
    /// so a producer whose clock runs ahead (within `limits.max_future`) moves no window.
    /// Replays run in event time (false).
    #[serde(skip)]
    pub live: bool,
}

impl Config {
    /// Checks everything at once and returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.engine.windows.is_empty() {
            errs.push("engine.windows: give at least one window, e.g. [\"1m\", \"5m\"]".into());
        }
        for w in &self.engine.windows {
            if w.as_millis() == 0 || !w.as_millis().is_multiple_of(1000) {
                errs.push(format!("engine.windows: {w:?} must be a whole number of seconds > 0"));
            }
        }
        let longest = self.engine.windows.iter().max().copied().unwrap_or_default();
        if self.engine.dedupe_horizon < longest {
            errs.push(format!(
                "engine.dedupe_horizon ({:?}) must be at least the longest window ({longest:?}), or late events inside that window would be refused",
                self.engine.dedupe_horizon
            ));
        }
        if self.engine.order_horizon < self.engine.dedupe_horizon {
            errs.push("engine.order_horizon must be at least engine.dedupe_horizon".into());
        }
        for (name, v) in [
            ("max_slots", self.engine.max_slots),
            ("max_venues", self.engine.max_venues),
            ("max_merchants", self.engine.max_merchants),
            ("max_channels", self.engine.max_channels),
            ("max_slot_merchants", self.engine.max_slot_merchants),
        ] {
            if v == 0 || v >= u32::MAX as usize {
                errs.push(format!("engine.{name} must be between 1 and {}", u32::MAX - 1));
            }
        }
        if self.race.window.as_millis() == 0 || !self.race.window.as_millis().is_multiple_of(1000) {
            errs.push("race.window must be a whole number of seconds > 0".into());
        }
        if !(0.0..1.0).contains(&self.race.hysteresis) {
            errs.push(format!("race.hysteresis must be in [0, 1), got {}", self.race.hysteresis));
        }
        for (name, rule) in &self.race.rules {
            if name == "gmv" {
                errs.push("race.rules: `gmv` is built in and cannot be redefined".into());
            }
            if let Err(e) = rule.validate() {
                errs.push(format!("race.rules.{name}: {e}"));
            }
        }
        let known = |r: &str| r == "gmv" || self.race.rules.contains_key(r);
        if !known(&self.race.default_rule) {
            errs.push(format!("race.default_rule: no rule named `{}`", self.race.default_rule));
        }
        for (venue, rule) in &self.race.venues {
            if !known(rule) {
                errs.push(format!("race.venues.{venue}: no rule named `{rule}`"));
            }
        }
        if let Some(plan) = &self.plan {
            errs.extend(plan.validate().err().unwrap_or_default());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// humantime for a list of durations: `["1m", "5m", "1h"]`.
mod humantime_serde_vec {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| humantime_serde::re::humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| humantime_serde::re::humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}
