//! Horse races (赛马): scoring slots of a venue over the race window and ranking them.
//!
//! The built-in rule `gmv` scores a slot by its GMV in the race window (SNAPSHOT.md). A
//! composite rule scores by a weighted sum of inputs, each min-max normalised to [0, 1] over
//! the venue's slots, so weights mean "share of the decision" whatever the units. The `*_rise`
//! and `gmv_growth` inputs compare the race window with the window before it, which is how
//! operators express "whoever's combined data rises most in the same period ranks first".

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// One input of a composite rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// GMV in the race window.
    Gmv,
    /// Paid orders in the race window.
    PaidOrders,
    /// Distinct paying users in the race window (exact).
    Buyers,
    Impressions,
    Clicks,
    /// clicks / impressions.
    Ctr,
    /// paid orders / clicks.
    Conversion,
    /// GMV minus GMV of the previous window (cents; may be negative).
    GmvRise,
    /// (GMV - previous GMV) / max(previous GMV, 1 yuan).
    GmvGrowth,
    /// Paid orders minus those of the previous window.
    OrdersRise,
    /// Clicks minus those of the previous window.
    ClicksRise,
}

/// A composite rule as written in config or sent by an admin.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Input -> weight (>= 0, at least one > 0).
    pub weights: BTreeMap<Input, f64>,
    /// What the rule is for, shown to operators.
    #[serde(default)]
    pub description: String,
}

impl RuleSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.is_empty() {
            return Err("weights: give at least one input, e.g. { gmv = 0.7, gmv_rise = 0.3 }".into());
        }
        for (k, w) in &self.weights {
            if !w.is_finite() || *w < 0.0 {
                return Err(format!("weights.{k:?}: must be a finite number >= 0, got {w}"));
            }
        }
        if self.weights.values().all(|w| *w == 0.0) {
            return Err("weights: at least one weight must be > 0".into());
        }
        Ok(())
    }
}

/// A rule in force.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Gmv,
    Composite(RuleSpec),
}

/// A slot's numbers over the race window and the window before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaceInputs {
    pub gmv: u128,
    pub paid_orders: u64,
    pub buyers: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub prev_gmv: u128,
    pub prev_orders: u64,
    pub prev_clicks: u64,
}

impl RaceInputs {
    pub fn value(&self, input: Input) -> f64 {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        match input {
            Input::Gmv => self.gmv as f64,
            Input::PaidOrders => self.paid_orders as f64,
            Input::Buyers => self.buyers as f64,
            Input::Impressions => self.impressions as f64,
            Input::Clicks => self.clicks as f64,
            Input::Ctr => ratio(self.clicks, self.impressions),
            Input::Conversion => ratio(self.paid_orders, self.clicks),
            Input::GmvRise => self.gmv as f64 - self.prev_gmv as f64,
            Input::GmvGrowth => (self.gmv as f64 - self.prev_gmv as f64) / (self.prev_gmv.max(100) as f64),
            Input::OrdersRise => self.paid_orders as f64 - self.prev_orders as f64,
            Input::ClicksRise => self.clicks as f64 - self.prev_clicks as f64,
        }
    }
}

/// One input of the rule in force for a venue, and how it was scaled: a slot's points from
/// it are `weight * (value - lo) / (hi - lo)` (nothing when `hi <= lo`: every slot scored the
/// same), or `weight * value` when unscaled (the `gmv` rule, whose score is GMV in cents).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RuleTerm {
    pub input: Input,
    pub weight: f64,
    /// The lowest and highest value of the input among the venue's slots (None: unscaled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lo: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<f64>,
}

impl RuleTerm {
    /// The points a slot with these inputs gets from this term.
    pub fn points(&self, slot: &RaceInputs) -> f64 {
        let v = slot.value(self.input);
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) if hi > lo => self.weight * (v - lo) / (hi - lo),
            (Some(_), Some(_)) => 0.0,
            _ => self.weight * v,
        }
    }
}

/// The terms of `rule` over one venue's slots: the inputs with a weight > 0, with the ranges
/// that scale them.
pub fn terms(rule: &Rule, slots: &[RaceInputs]) -> Vec<RuleTerm> {
    match rule {
        Rule::Gmv => vec![RuleTerm { input: Input::Gmv, weight: 1.0, lo: None, hi: None }],
        Rule::Composite(spec) => spec
            .weights
            .iter()
            .filter(|(_, &w)| w != 0.0)
            .map(|(&input, &weight)| {
                let (lo, hi) = slots
                    .iter()
                    .map(|s| s.value(input))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
                RuleTerm { input, weight, lo: Some(lo), hi: Some(hi) }
            })
            .collect(),
    }
}

/// Scores of all slots of one venue under `rule` (the `gmv` rule's single unscaled term
/// gives each slot `0.0 + 1.0 * gmv`, its GMV exactly).
pub fn scores(rule: &Rule, slots: &[RaceInputs]) -> Vec<f64> {
    scores_by(&terms(rule, slots), slots)
}

/// Scores of slots under the given terms (the sum of each term's points, in the terms' order).
pub fn scores_by(terms: &[RuleTerm], slots: &[RaceInputs]) -> Vec<f64> {
    let mut out = vec![0.0; slots.len()];
    for t in terms {
        for (o, s) in out.iter_mut().zip(slots) {
            *o += t.points(s);
        }
    }
    out
}

/// How far a slot is from the slot ranked above it, and what that distance is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaceGap {
    /// The rank of the slot above.
    pub to_rank: u32,
    /// Its score minus this slot's score, in the rule's points (the `gmv` rule: cents of GMV
    /// in the race window). Negative when race hysteresis still keeps the slot above in place.
    pub points: f64,
    /// The gap input by input: each term's points above minus here; they sum to `points`.
    pub parts: Vec<GapPart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GapPart {
    pub input: Input,
    pub weight: f64,
    pub points: f64,
}

/// The gap of `own` to `above` under `terms` (those the venue was ranked with).
pub fn gap(terms: &[RuleTerm], to_rank: u32, above: &RaceInputs, own: &RaceInputs) -> RaceGap {
    let parts: Vec<GapPart> = terms
        .iter()
        .map(|t| GapPart { input: t.input, weight: t.weight, points: t.points(above) - t.points(own) })
        .collect();
    RaceGap { to_rank, points: parts.iter().map(|p| p.points).sum(), parts }
}

/// Orders entries (slot name, score) highest score first, ties by slot name.
///
/// With `hysteresis` h > 0 and a previous order, the previous order is the starting point and
/// a slot moves above its neighbour only when its score beats the neighbour's by more than
/// h (relative): near-equal slots keep their places instead of flapping on noise. h = 0
/// gives the strict order whatever the start.
pub fn rank(entries: &mut [(String, f64)], previous: &[String], hysteresis: f64) {
    rank_by(entries, previous, hysteresis, |a, b| a.cmp(b));
}

/// [`rank`] over any slot key (the engine ranks slot indices), ties broken by `by_name`.
pub fn rank_by<K: Clone + Eq + std::hash::Hash>(
    entries: &mut [(K, f64)],
    previous: &[K],
    hysteresis: f64,
    by_name: impl Fn(&K, &K) -> std::cmp::Ordering,
) {
    entries.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| by_name(&a.0, &b.0)));
    if hysteresis <= 0.0 || previous.is_empty() {
        return;
    }
    // Start from the previous order (new slots keep their strict place after the known ones).
    // Positions are looked up once per entry: O(n), not a scan of `previous` per comparison.
    let at: HashMap<&K, usize> = previous.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let mut keyed: Vec<(usize, usize)> =
        entries.iter().enumerate().map(|(k, e)| (at.get(&e.0).copied().unwrap_or(usize::MAX), k)).collect();
    keyed.sort_unstable();
    let strict: Vec<(K, f64)> = entries.to_vec();
    for (e, &(_, k)) in entries.iter_mut().zip(&keyed) {
        *e = strict[k].clone();
    }
    let beats = |a: &(K, f64), b: &(K, f64)| a.1 > b.1 + hysteresis * b.1.abs().max(f64::MIN_POSITIVE);
    // Insertion sort with the margin: not a total order, so no std sort (which may panic).
    for i in 1..entries.len() {
        let mut j = i;
        while j > 0 && beats(&entries[j], &entries[j - 1]) {
            entries.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// A slot's place changed between two published rankings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankChange {
    pub venue: String,
    pub slot: String,
    /// Previous rank (None: newly ranked).
    pub from: Option<u32>,
    pub to: u32,
    pub as_of_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    fn names(v: &[(String, f64)]) -> Vec<&str> {
        v.iter().map(|x| x.0.as_str()).collect()
    }

    #[test]
    fn strict_order_breaks_ties_by_slot() {
        let mut v = e(&[("b", 1.0), ("a", 1.0), ("c", 5.0)]);
        rank(&mut v, &[], 0.0);
        assert_eq!(names(&v), ["c", "a", "b"]);
    }

    #[test]
    fn hysteresis_keeps_near_equal_slots_in_place() {
        let prev = vec!["a".to_string(), "b".to_string()];
        let mut v = e(&[("a", 100.0), ("b", 104.0)]);
        rank(&mut v, &prev, 0.05);
        assert_eq!(names(&v), ["a", "b"], "4% is inside the 5% margin");
        let mut v = e(&[("a", 100.0), ("b", 106.0)]);
        rank(&mut v, &prev, 0.05);
        assert_eq!(names(&v), ["b", "a"], "6% overtakes");
    }

    /// The ranking as first written: a scan of `previous` per comparison (O(n^2 log n)).
    fn naive_rank(entries: &mut [(String, f64)], previous: &[String], hysteresis: f64) {
        entries.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if hysteresis <= 0.0 || previous.is_empty() {
            return;
        }
        let pos = |name: &str| previous.iter().position(|p| p == name).unwrap_or(usize::MAX);
        entries.sort_by_key(|e| pos(&e.0));
        let beats = |a: &(String, f64), b: &(String, f64)| a.1 > b.1 + hysteresis * b.1.abs().max(f64::MIN_POSITIVE);
        for i in 1..entries.len() {
            let mut j = i;
            while j > 0 && beats(&entries[j], &entries[j - 1]) {
                entries.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn ranking_matches_the_naive_ranking(
            scores in proptest::collection::vec(0u32..50, 0..60),
            previous in proptest::collection::vec(0usize..80, 0..60),
            h in proptest::sample::select(vec![0.0, 0.05, 0.5]),
        ) {
            let entries: Vec<(String, f64)> =
                scores.iter().enumerate().map(|(i, &s)| (format!("s-{i:02}"), s as f64)).collect();
            let mut seen = std::collections::HashSet::new();
            let previous: Vec<String> =
                previous.into_iter().filter(|p| seen.insert(*p)).map(|p| format!("s-{p:02}")).collect();
            let (mut a, mut b) = (entries.clone(), entries);
            rank(&mut a, &previous, h);
            naive_rank(&mut b, &previous, h);
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn composite_normalises_each_input() {
        let a = RaceInputs { gmv: 1000, clicks: 10, impressions: 100, ..Default::default() };
        let b = RaceInputs { gmv: 500, clicks: 50, impressions: 100, ..Default::default() };
        let spec = RuleSpec {
            weights: [(Input::Gmv, 0.4), (Input::Ctr, 0.6)].into_iter().collect(),
            description: String::new(),
        };
        let s = scores(&Rule::Composite(spec), &[a, b]);
        assert!((s[0] - 0.4).abs() < 1e-9 && (s[1] - 0.6).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = RuleSpec { weights: [(Input::Gmv, -1.0)].into_iter().collect(), description: String::new() };
        assert!(bad.validate().is_err());
        let zero = RuleSpec { weights: [(Input::Gmv, 0.0)].into_iter().collect(), description: String::new() };
        assert!(zero.validate().is_err());
    }
}
