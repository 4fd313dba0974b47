//! The 复盘 review report: one self-contained HTML file (charts as inline SVG, no network,
//! printable to PDF) plus the same tables as CSV and JSON, built from the history database.
//!
//! Every number is read from the stored minutes (money and counts exact; distinct counts
//! from the union of the minutes' sketches), so the report of a range equals the events of
//! that range, whatever happened to the monitor meanwhile (`tests/tests/history.rs`).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use warroom_engine::history::Counts;
use warroom_engine::snapshot::decompose;

use crate::projection::{phases_of, PhaseSpan};
use crate::query::{Row, Scope, Totals};
use crate::{Metric, Query, Result, Store, VENUE};

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// `[from_ms, to_ms)`; default: the plan's range, else everything stored.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// A merchant's own report (商家复盘): its slots' numbers only.
    pub merchant: Option<String>,
    /// An ordinary day (or any baseline range) in the same database, for the uplift.
    pub baseline: Option<(i64, i64)>,
    /// The clock the report prints (minutes east of UTC); default: the history's own
    /// (`Store::utc_offset`).
    pub utc_offset_minutes: Option<i32>,
    /// The promotion's present (ms): a range that ends after it is not over yet, and what
    /// lies after the last stored minute has not happened. Default: the machine's clock; the
    /// API passes the monitor's event time (a simulation or a rehearsal has its own).
    pub now_ms: Option<i64>,
}

/// A table cell: money in cents, counts, ratios, text, times (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Int(i64),
    Cents(CentsCell),
    Ratio(f64),
    Text(String),
    Time(TimeCell),
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CentsCell {
    pub cents: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeCell {
    pub ms: i64,
}

fn cents(v: impl TryInto<i64>) -> Cell {
    Cell::Cents(CentsCell { cents: v.try_into().unwrap_or(i64::MAX) })
}

fn int(v: impl TryInto<i64>) -> Cell {
    Cell::Int(v.try_into().unwrap_or(i64::MAX))
}

fn ratio(a: u64, b: u64) -> Cell {
    if b == 0 {
        Cell::Empty
    } else {
        Cell::Ratio(a as f64 / b as f64)
    }
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn time(ms: i64) -> Cell {
    Cell::Time(TimeCell { ms })
}

/// The funnel's cells: gmv, paid_orders, impressions, clicks, ctr (clicks / impressions),
/// conversion (paid orders / clicks).
fn funnel(c: &Counts) -> [Cell; 6] {
    [
        cents(c.gmv),
        int(c.paid_orders),
        int(c.impressions),
        int(c.clicks),
        ratio(c.clicks, c.impressions),
        ratio(c.paid_orders, c.clicks),
    ]
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// File name of its CSV (`<name>.csv`) and key in the JSON.
    pub name: String,
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// Rows shown in the HTML (the CSV and the JSON have them all).
    #[serde(skip)]
    pub show: usize,
    /// What the table cannot say, and what to configure for it (empty columns or no rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Table {
    fn new(name: &str, title: &str, columns: &[&str]) -> Table {
        Table {
            name: name.into(),
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            show: 30,
            note: None,
        }
    }
}

/// A mark on the curve: a rule change or an alert.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub at_ms: i64,
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub merchant: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    pub phases: Vec<PhaseSpan>,
    /// GMV per step, and the plan's pace per step.
    pub gmv: Vec<(i64, u64)>,
    pub pace: Vec<(i64, u64)>,
    /// UV per step (site), or impressions per step (a merchant).
    pub traffic: Vec<(i64, u64)>,
    pub traffic_metric: String,
    pub marks: Vec<Mark>,
    /// The range's totals.
    pub totals: Counts,
    pub distinct: Option<[u64; 3]>,
    pub tables: Vec<Table>,
    /// Times are printed at this offset (minutes east of UTC): the promotion's clock.
    pub utc_offset_minutes: i32,
    /// While the range is not over (`ReportOptions::now_ms` before its end): the end of the
    /// last minute stored (any scope). The steps after it have not happened yet: they are not
    /// drawn and their curve cells are empty, instead of a fall to zero "as if sales stopped".
    /// `None` once the range is over (a night whose last minutes had no events is drawn
    /// whole) or when nothing is stored.
    pub stored_until_ms: Option<i64>,
}

/// Steps a report's charts have at most.
const CHART_POINTS: i64 = 600;

/// Builds the report. `previous`: the previous promotion's database (uplift, decomposition
/// when the plan has no traffic targets).
pub fn build(store: &Store, previous: Option<&Store>, opts: &ReportOptions) -> Result<Report> {
    let plan = store.plan()?;
    let bounds = store.bounds()?.map(|(a, b)| (a * 60_000, (b + 1) * 60_000));
    let (from, to) = match (opts.from_ms, opts.to_ms, &plan, bounds) {
        (Some(f), Some(t), _, _) => (f, t),
        (f, t, Some(p), _) if !p.phases.is_empty() => (f.unwrap_or(p.start_ms()), t.unwrap_or(p.end_ms())),
        (f, t, _, Some((a, b))) => (f.unwrap_or(a), t.unwrap_or(b)),
        (f, t, _, None) => (f.unwrap_or(0), t.unwrap_or(60_000)),
    };
    let (from, to) = (from.div_euclid(60_000) * 60_000, to.div_euclid(60_000) * 60_000);
    let to = to.max(from + 60_000);
    let m = opts.merchant.as_deref();
    let now = opts.now_ms.unwrap_or_else(|| jiff::Timestamp::now().as_millisecond());
    let stored_until = bounds.map(|b| b.1).filter(|_| now < to);
    let all_phases = plan.as_ref().map(phases_of).unwrap_or_default();
    // Phases clipped to the range; without a plan, the range is one "phase".
    let mut phases: Vec<PhaseSpan> = all_phases
        .iter()
        .filter(|p| p.start_ms < to && p.end_ms > from)
        .map(|p| PhaseSpan { start_ms: p.start_ms.max(from), end_ms: p.end_ms.min(to), ..p.clone() })
        .collect();
    if phases.is_empty() {
        phases.push(PhaseSpan {
            kind: "range".into(),
            name: "range".into(),
            start_ms: from,
            end_ms: to,
            target_cents: 0,
        });
    }
    let span_min = (to - from) / 60_000;
    let step = ((span_min + CHART_POINTS - 1) / CHART_POINTS).max(1) * 60_000;
    let series = |metric: &str| -> Result<Vec<(i64, u64)>> {
        let q = Query {
            metric: Metric::parse(metric).expect("known metric"),
            scope: Scope::Site,
            from_ms: from,
            to_ms: to,
            step_ms: step,
            merchant: opts.merchant.clone(),
        };
        Ok(store.series(&q)?.points)
    };
    let gmv = series("gmv")?;
    let traffic_metric = if m.is_some() { "impressions" } else { "uv" };
    let traffic = series(traffic_metric)?;
    let pace = match (&plan, m) {
        (Some(p), None) => {
            gmv.iter().map(|&(t, _)| (t, p.expected_by(t + step).saturating_sub(p.expected_by(t)) as u64)).collect()
        }
        _ => Vec::new(),
    };
    let mut marks = Vec::new();
    if m.is_none() {
        for e in store.journal_entries(None, from, to)? {
            let b = &e.body;
            match e.kind.as_str() {
                "rule_change" => marks.push(Mark {
                    at_ms: e.at_ms,
                    kind: "rule".into(),
                    text: format!(
                        "{}: {} → {}",
                        b["venue"].as_str().unwrap_or(""),
                        b["old_rule"].as_str().unwrap_or(""),
                        b["new_rule"].as_str().unwrap_or("")
                    ),
                }),
                // Where it fired on the night's clock (the journal's time; the body's times
                // are the wall clock's, days apart in a rehearsal).
                "alert" if b["state"] == "firing" && b["acked_at_ms"].is_null() => marks.push(Mark {
                    at_ms: e.at_ms,
                    kind: "alert".into(),
                    text: b["title"].as_str().unwrap_or("").to_string(),
                }),
                _ => {}
            }
        }
    }
    let whole = store.totals(&Scope::Site, m, from, to)?;
    let (phase_t, gap_t) = phase_tables(store, previous, &phases, m, stored_until)?;
    let mut tables = vec![phase_t];
    if m.is_none() {
        // A merchant's has no rows: the split needs the site's traffic and buyers.
        tables.push(gap_t);
        tables.push(uplift_table(store, previous, &phases, opts.baseline, stored_until)?);
    }
    let slots = store.by_slot(from, to, m)?;
    tables.push(race_table(store, &slots, from, to, m)?);
    tables.push(slot_table(slots));
    // A merchant's channels are its slots' events through each channel.
    tables.push(channel_table(store.by_channel(from, to, m)?));
    if m.is_none() {
        tables.push(venue_table(store, from, to)?);
        tables.push(merchant_table(store.by_merchant(from, to)?));
    }
    tables.push(money_table(store, &phases, m, stored_until)?);
    if m.is_none() {
        tables.push(alert_table(store, from, to)?);
        tables.push(projection_table(store, &all_phases, from, to, stored_until)?);
    }
    let title = match (&plan, m) {
        (Some(p), Some(m)) => format!("{} · 商家复盘 {m}", p.name),
        (Some(p), None) => format!("{} · 复盘", p.name),
        (None, Some(m)) => format!("商家复盘 {m}"),
        (None, None) => "复盘 review".to_string(),
    };
    Ok(Report {
        title,
        merchant: opts.merchant.clone(),
        from_ms: from,
        to_ms: to,
        step_ms: step,
        phases,
        gmv,
        pace,
        traffic,
        traffic_metric: traffic_metric.into(),
        marks,
        totals: whole.counts,
        distinct: whole.distinct,
        tables,
        utc_offset_minutes: match opts.utc_offset_minutes {
            Some(o) => o,
            None => store.utc_offset()?,
        },
        stored_until_ms: stored_until,
    })
}

/// How far phase `p` has run: its end, or the end of the stored minutes while the range is
/// not over (`stored_until`). At or before its start: the phase has not begun.
fn run_until(p: &PhaseSpan, stored_until: Option<i64>) -> i64 {
    stored_until.map_or(p.end_ms, |u| p.end_ms.min(u))
}

/// The end of the part of last time's phase `q` as long as phase `p` has run by `end`
/// (aligned by time since the start of the phase).
fn same_part(q: &PhaseSpan, p: &PhaseSpan, end: i64) -> i64 {
    q.end_ms.min(q.start_ms + (end - p.start_ms))
}

/// Each phase against its targets, and the first-formula split of its gap. A phase in
/// progress (past `stored_until`, while the range is not over) is split against the same
/// elapsed part of the previous promotion's phase, or against its whole targets (said in the
/// basis); a phase not begun has no split.
fn phase_tables(
    store: &Store,
    previous: Option<&Store>,
    phases: &[PhaseSpan],
    m: Option<&str>,
    stored_until: Option<i64>,
) -> Result<(Table, Table)> {
    let mut t = match m {
        None => Table::new(
            "phases",
            "阶段 vs 目标 · each phase against its targets",
            &["phase", "from", "to", "gmv", "target_gmv", "progress", "uv", "target_uv", "buyers", "conversion", "aov"],
        ),
        // The plan's targets and the distinct counts are the site's: a merchant gets its own
        // funnel per phase instead (its slots' impressions, clicks and paid orders).
        Some(_) => Table::new(
            "phases",
            "阶段 · each phase: the merchant's slots' funnel (conversion = paid orders / clicks)",
            &["phase", "from", "to", "gmv", "paid_orders", "impressions", "clicks", "ctr", "conversion", "aov"],
        ),
    };
    let mut g = Table::new(
        "phase_gap",
        "差距拆解 · the gap of each phase split by the first formula (GMV = UV × conversion × order value): against the plan's traffic and buyer targets, else the previous promotion's phase",
        &["phase", "basis", "gap", "traffic", "conversion", "order_value"],
    );
    let prev_phases = match previous {
        Some(p) => p.plan()?.map(|pl| phases_of(&pl)).unwrap_or_default(),
        None => Vec::new(),
    };
    let plan = store.plan()?;
    let (mut not_begun, mut unsplit) = (0, 0);
    for p in phases {
        let tot = store.totals(&Scope::Site, m, p.start_ms, p.end_ms)?;
        let c = tot.counts;
        let [uv, _, buyers] = tot.distinct.unwrap_or([0; 3]);
        let cfg = plan.as_ref().and_then(|pl| {
            pl.phases.iter().find(|q| q.start.as_millisecond() <= p.start_ms && p.end_ms <= q.end.as_millisecond())
        });
        let (target_uv, target_buyers) = cfg.map_or((0, 0), |q| (q.target_uv, q.target_buyers));
        // The gap, against the targets when the plan sets traffic and buyers, else against
        // the previous promotion's phase of the same kind.
        let end = run_until(p, stored_until);
        let in_progress = end < p.end_ms;
        let base: Option<(&str, (u128, u64, u64))> = if m.is_some() || tot.distinct.is_none() || end <= p.start_ms {
            None
        } else if target_uv > 0 && target_buyers > 0 {
            let what = if in_progress { "target (whole phase; in progress)" } else { "target" };
            Some((what, (p.target_cents as u128, target_uv, target_buyers)))
        } else {
            match (previous, prev_phases.iter().find(|q| q.kind == p.kind)) {
                (Some(ps), Some(q)) => {
                    let q_end = same_part(q, p, end);
                    let pt = ps.totals(&Scope::Site, None, q.start_ms, q_end)?;
                    let [pu, _, pb] = pt.distinct.unwrap_or([0; 3]);
                    let what =
                        if in_progress { "previous promotion (same elapsed part)" } else { "previous promotion" };
                    Some((what, (pt.counts.gmv as u128, pu, pb)))
                }
                _ => None,
            }
        };
        // A phase not begun has targets and no numbers (not a progress of 0.00%).
        let begun = end > p.start_ms;
        not_begun += usize::from(!begun);
        if m.is_some() {
            let name = text(if p.name.is_empty() { &p.kind } else { &p.name });
            let mut row = vec![name, time(p.start_ms), time(p.end_ms)];
            if begun {
                row.extend(funnel(&c));
                row.push(c.gmv.checked_div(c.paid_orders).map_or(Cell::Empty, cents));
            } else {
                row.extend(vec![Cell::Empty; 7]);
            }
            t.rows.push(row);
            continue;
        }
        let distinct = tot.distinct.is_some() && begun;
        let row = vec![
            text(if p.name.is_empty() { &p.kind } else { &p.name }),
            time(p.start_ms),
            time(p.end_ms),
            if begun { cents(c.gmv) } else { Cell::Empty },
            if p.target_cents > 0 { cents(p.target_cents) } else { Cell::Empty },
            if begun { ratio(c.gmv, p.target_cents) } else { Cell::Empty },
            if distinct { int(uv) } else { Cell::Empty },
            if target_uv > 0 { int(target_uv) } else { Cell::Empty },
            if distinct { int(buyers) } else { Cell::Empty },
            ratio(buyers, uv),
            c.gmv.checked_div(buyers).map_or(Cell::Empty, cents),
        ];
        unsplit += usize::from(begun && base.is_none());
        t.rows.push(row);
        if let Some((what, b)) = base {
            let d = decompose(p.end_ms - p.start_ms, (c.gmv as u128, uv, buyers), b);
            g.rows.push(vec![
                text(if p.name.is_empty() { &p.kind } else { &p.name }),
                text(what),
                cents(d.delta_gmv_cents),
                cents(d.traffic_cents),
                cents(d.conversion_cents),
                cents(d.aov_cents),
            ]);
        }
    }
    if not_begun > 0 {
        let what = if m.is_none() { ": their targets only" } else { "" };
        t.note = Some(format!("{not_begun} phase(s) not begun yet{what}"));
    }
    let mut why = Vec::new();
    if unsplit > 0 {
        why.push(format!(
            "{unsplit} phase(s) not split: the plan sets no target_uv and target_buyers for them, and {}",
            match (previous, prev_phases.is_empty()) {
                (None, _) => NO_PREVIOUS,
                (Some(_), true) => NO_PREVIOUS_PLAN,
                (Some(_), false) => "the previous promotion has no phase of that kind",
            }
        ));
    }
    if not_begun > 0 {
        why.push(format!("{not_begun} phase(s) not begun yet"));
    }
    if !why.is_empty() {
        g.note = Some(why.join("; "));
    }
    Ok((t, g))
}

/// Why there is nothing to compare with last time.
const NO_PREVIOUS: &str =
    "no previous promotion is configured (`[history] previous`, or `warroom review --previous FILE`)";
const NO_PREVIOUS_PLAN: &str = "the previous promotion's history stores no plan, so its phases are unknown (write it with its plan in the config: `warroom replay --config FILE --history DB`)";

/// GMV per hour of each phase against the previous promotion's and an ordinary day's. A phase
/// in progress (it goes past `stored_until`, the end of the last stored minute while the range
/// is not over) is measured over its elapsed part, against the same part of the previous
/// promotion's phase (aligned by time since the start, as the screen's curve); a phase not
/// begun has no rate.
fn uplift_table(
    store: &Store,
    previous: Option<&Store>,
    phases: &[PhaseSpan],
    baseline: Option<(i64, i64)>,
    stored_until: Option<i64>,
) -> Result<Table> {
    let mut t = Table::new(
        "uplift",
        "提升 · uplift: GMV per hour against the previous promotion's same phase and an ordinary day",
        &["phase", "gmv_per_hour", "previous_gmv_per_hour", "vs_previous", "ordinary_gmv_per_hour", "vs_ordinary"],
    );
    let per_hour = |gmv: u64, a: i64, b: i64| gmv as u128 * 3_600_000 / (b - a).max(60_000) as u128;
    let ordinary = match baseline {
        Some((a, b)) => Some(per_hour(store.totals(&Scope::Site, None, a, b)?.counts.gmv, a, b)),
        None => None,
    };
    let prev_phases = match previous {
        Some(p) => p.plan()?.map(|pl| phases_of(&pl)).unwrap_or_default(),
        None => Vec::new(),
    };
    for p in phases {
        let name = text(if p.name.is_empty() { &p.kind } else { &p.name });
        let end = run_until(p, stored_until);
        if end <= p.start_ms {
            t.rows.push(vec![
                name,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                ordinary.map_or(Cell::Empty, cents),
                Cell::Empty,
            ]);
            continue;
        }
        let now = per_hour(store.totals(&Scope::Site, None, p.start_ms, end)?.counts.gmv, p.start_ms, end);
        let prev = match (previous, prev_phases.iter().find(|q| q.kind == p.kind)) {
            (Some(ps), Some(q)) => {
                let q_end = same_part(q, p, end);
                Some(per_hour(ps.totals(&Scope::Site, None, q.start_ms, q_end)?.counts.gmv, q.start_ms, q_end))
            }
            _ => None,
        };
        let vs = |b: Option<u128>| match b {
            Some(b) if b > 0 => Cell::Ratio(now as f64 / b as f64 - 1.0),
            _ => Cell::Empty,
        };
        t.rows.push(vec![
            name,
            cents(now),
            prev.map_or(Cell::Empty, cents),
            vs(prev),
            ordinary.map_or(Cell::Empty, cents),
            vs(ordinary),
        ]);
    }
    let mut why = Vec::new();
    if previous.is_none() {
        why.push(NO_PREVIOUS.to_string());
    } else if prev_phases.is_empty() {
        why.push(NO_PREVIOUS_PLAN.to_string());
    }
    if baseline.is_none() {
        why.push("no ordinary day is given (`warroom review --baseline-from T --baseline-to T`)".to_string());
    }
    if !why.is_empty() {
        t.note = Some(why.join("; "));
    }
    Ok(t)
}

fn race_table(store: &Store, slots: &[Row], from: i64, to: i64, m: Option<&str>) -> Result<Table> {
    let mut t = Table::new(
        "races",
        "赛马 · per race: top sellers, biggest climbers (last hour against the hour before), leaders over time, rule changes",
        &["venue", "what", "place", "slot", "gmv", "detail"],
    );
    t.show = 200;
    let mut venues: Vec<String> = slots.iter().filter_map(|s| s.venue.clone()).collect();
    venues.sort();
    venues.dedup();
    let own: std::collections::HashSet<&str> = slots.iter().map(|s| s.name.as_str()).collect();
    let hour = 3_600_000;
    for v in &venues {
        let in_venue: Vec<&Row> = slots.iter().filter(|s| s.venue.as_deref() == Some(v.as_str())).collect();
        for (k, s) in in_venue.iter().take(5).enumerate() {
            t.rows.push(vec![
                text(v),
                text("top seller"),
                int(k as i64 + 1),
                text(&s.name),
                cents(s.counts.gmv),
                Cell::Empty,
            ]);
        }
        // Per slot of the venue, GMV per hour: climbers and the leader of each hour. A
        // merchant's report climbs by its own pairs' GMV, and names an hour's leader only
        // when the leader is its slot and all of that hour's GMV on it was its own (a slot
        // that changed hands holds another merchant's money).
        let by_hour = store.venue_slot_gmv(v, from, to, hour, m)?;
        let n = by_hour.first().map_or(0, |s| s.gmv.len());
        if n >= 2 {
            let mut climb: Vec<(&str, i64)> = by_hour
                .iter()
                .filter(|s| m.is_none() || own.contains(s.slot.as_str()))
                .map(|s| (s.slot.as_str(), s.own[n - 1] as i64 - s.own[n - 2] as i64))
                .filter(|&(_, d)| d > 0)
                .collect();
            climb.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (k, (s, d)) in climb.iter().take(3).enumerate() {
                t.rows.push(vec![
                    text(v),
                    text("climber"),
                    int(k as i64 + 1),
                    text(*s),
                    cents(*d),
                    text("GMV last hour − hour before"),
                ]);
            }
        }
        for k in 0..n {
            let lead = by_hour
                .iter()
                .filter(|s| s.gmv[k] > 0)
                .max_by(|a, b| a.gmv[k].cmp(&b.gmv[k]).then(b.slot.cmp(&a.slot)));
            if let Some(s) = lead {
                if m.is_none() || (own.contains(s.slot.as_str()) && s.own[k] == s.gmv[k]) {
                    t.rows.push(vec![
                        text(v),
                        text("leader"),
                        time(from + k as i64 * hour),
                        text(&s.slot),
                        cents(s.gmv[k]),
                        text("hour's top GMV"),
                    ]);
                }
            }
        }
        if m.is_none() {
            for e in store.journal_entries(Some("rule_change"), from, to)? {
                if e.body["venue"].as_str() == Some(v.as_str()) {
                    let d = format!(
                        "{} → {} by {}",
                        e.body["old_rule"].as_str().unwrap_or(""),
                        e.body["new_rule"].as_str().unwrap_or(""),
                        e.body["by"].as_str().unwrap_or("")
                    );
                    t.rows.push(vec![text(v), text("rule change"), time(e.at_ms), Cell::Empty, Cell::Empty, text(d)]);
                }
            }
        }
    }
    Ok(t)
}

fn slot_table(rows: Vec<Row>) -> Table {
    let mut t = Table::new(
        "slots",
        "坑位 · slots by GMV, with CTR (clicks / impressions) and conversion (paid orders / clicks)",
        &["slot", "venue", "gmv", "paid_orders", "impressions", "clicks", "ctr", "conversion", "favorites", "carts"],
    );
    for r in rows {
        let c = r.counts;
        let mut row = vec![text(&r.name), text(r.venue.unwrap_or_default())];
        row.extend(funnel(&c));
        row.extend([int(c.favorites), int(c.carts)]);
        t.rows.push(row);
    }
    t
}

fn channel_table(rows: Vec<Row>) -> Table {
    let mut t = Table::new(
        "channels",
        "流量入口 · channels (banners, search, feed, ...) by GMV, with CTR and conversion",
        &["channel", "gmv", "paid_orders", "impressions", "clicks", "ctr", "conversion"],
    );
    for r in rows {
        let c = r.counts;
        let mut row = vec![text(&r.name)];
        row.extend(funnel(&c));
        t.rows.push(row);
    }
    t
}

fn venue_table(store: &Store, from: i64, to: i64) -> Result<Table> {
    let mut t = Table::new(
        "venues",
        "会场 · venues: GMV, leading indicators (favorites, carts) and distinct visitors",
        &["venue", "gmv", "paid_orders", "favorites", "carts", "uv", "buyers"],
    );
    for r in store.by_name(VENUE, from, to)? {
        let d: Totals = store.totals(&Scope::Venue(r.name.clone()), None, from, to)?;
        let [uv, _, b] = d.distinct.unwrap_or([0; 3]);
        let c = r.counts;
        t.rows.push(vec![
            text(&r.name),
            cents(c.gmv),
            int(c.paid_orders),
            int(c.favorites),
            int(c.carts),
            int(uv),
            int(b),
        ]);
    }
    Ok(t)
}

fn merchant_table(rows: Vec<Row>) -> Table {
    let mut t = Table::new(
        "merchants",
        "商家 · merchants by GMV, with orders placed but unpaid (拍下未付) and their slots' traffic",
        &["merchant", "gmv", "paid_orders", "orders_placed", "unpaid", "refunds", "impressions", "clicks"],
    );
    for r in rows {
        let c = r.counts;
        t.rows.push(vec![
            text(&r.name),
            cents(c.gmv),
            int(c.paid_orders),
            int(c.orders_placed),
            int(c.orders_placed.saturating_sub(c.paid_orders)),
            int(c.refunds),
            // A merchant seen but selling nothing is a row of zeros without these.
            int(c.impressions),
            int(c.clicks),
        ]);
    }
    t
}

fn money_table(store: &Store, phases: &[PhaseSpan], m: Option<&str>, stored_until: Option<i64>) -> Result<Table> {
    let mut t = Table::new(
        "coupons_refunds",
        "优惠券与退款 · coupons and refunds by phase",
        &[
            "phase",
            "gmv",
            "paid_orders",
            "coupon_orders",
            "coupon_cents",
            "coupon_share",
            "refunds",
            "refund_cents",
            "refund_rate",
        ],
    );
    for p in phases {
        let name = text(if p.name.is_empty() { &p.kind } else { &p.name });
        if run_until(p, stored_until) <= p.start_ms {
            // Not begun: no numbers (not zeros).
            t.rows.push([vec![name], vec![Cell::Empty; 8]].concat());
            continue;
        }
        let c = store.totals(&Scope::Site, m, p.start_ms, p.end_ms)?.counts;
        t.rows.push(vec![
            name,
            cents(c.gmv),
            int(c.paid_orders),
            int(c.coupons),
            cents(c.coupon_cents),
            ratio(c.coupon_cents, c.gmv),
            int(c.refunds),
            cents(c.refund_cents),
            ratio(c.refund_cents, c.gmv),
        ]);
    }
    Ok(t)
}

fn alert_table(store: &Store, from: i64, to: i64) -> Result<Table> {
    let mut t = Table::new(
        "alerts",
        "告警 · alert timeline with time to acknowledge",
        &[
            "alert",
            "title",
            "severity",
            "fired_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "seconds_to_ack",
        ],
    );
    t.show = 100;
    // Each firing (an alert id fires again after it resolved, with another `fired_at_ms`):
    // its times on the night's clock (the journal's `at_ms`: the history's event time), the
    // seconds to acknowledge on the wall clock (how long people took, in a rehearsal too).
    struct Firing {
        id: String,
        fired_wall: i64,
        fired: i64,
        acked: Option<i64>,
        resolved: Option<i64>,
        body: serde_json::Value,
    }
    let mut by: Vec<Firing> = Vec::new();
    for e in store.journal_entries(Some("alert"), from - 86_400_000, to)? {
        let b = &e.body;
        let id = b["id"].as_str().unwrap_or("").to_string();
        let fired_wall = b["fired_at_ms"].as_i64().unwrap_or(e.at_ms);
        let f = match by.iter_mut().find(|f| f.id == id && f.fired_wall == fired_wall) {
            Some(f) => f,
            // A firing whose first entry is not its firing began before the day looked back.
            None if b["state"] != "firing" || !b["acked_at_ms"].is_null() => continue,
            None => {
                by.push(Firing { id, fired_wall, fired: e.at_ms, acked: None, resolved: None, body: b.clone() });
                by.last_mut().unwrap()
            }
        };
        if f.acked.is_none() && !b["acked_at_ms"].is_null() {
            f.acked = Some(e.at_ms);
        }
        if b["state"] == "resolved" {
            f.resolved = Some(e.at_ms);
        }
        f.body = e.body;
    }
    for f in by.into_iter().filter(|f| from <= f.fired && f.fired < to) {
        let b = &f.body;
        t.rows.push(vec![
            text(f.id),
            text(b["title"].as_str().unwrap_or("")),
            text(b["severity"].as_str().unwrap_or("")),
            time(f.fired),
            f.acked.map_or(Cell::Empty, time),
            text(b["acked_by"].as_str().unwrap_or("")),
            f.resolved.map_or(Cell::Empty, time),
            b["acked_at_ms"].as_i64().map_or(Cell::Empty, |a| int((a - f.fired_wall) / 1000)),
        ]);
    }
    Ok(t)
}

/// The projection journaled each hour against what its phase made. A phase still in progress
/// (it goes past `stored_until`, the end of the last stored minute while the range is not
/// over) has made nothing final yet: no actual and no error (its GMV so far against a
/// projection of its end read as an error of +200% in the middle of a phase).
fn projection_table(
    store: &Store,
    phases: &[PhaseSpan],
    from: i64,
    to: i64,
    stored_until: Option<i64>,
) -> Result<Table> {
    let mut t = Table::new(
        "projection",
        "预测误差 · the projection of each phase's GMV, hour by hour, against what the phase made",
        &["at", "phase", "projected", "low", "high", "actual", "error"],
    );
    t.show = 200;
    let mut last_hour = i64::MIN;
    for e in store.journal_entries(Some("projection"), from, to)? {
        let hour = e.at_ms.div_euclid(3_600_000);
        if hour == last_hour {
            continue;
        }
        last_hour = hour;
        let b = &e.body;
        let Some(p) = phases.iter().find(|p| p.start_ms <= e.at_ms && e.at_ms < p.end_ms) else { continue };
        let actual = match stored_until {
            Some(u) if u < p.end_ms => None,
            _ => Some(store.totals(&Scope::Site, None, p.start_ms, p.end_ms)?.counts.gmv),
        };
        let projected = b["phase_projected_cents"].as_u64().unwrap_or(0);
        t.rows.push(vec![
            time(e.at_ms),
            text(if p.name.is_empty() { &p.kind } else { &p.name }),
            cents(projected),
            cents(b["phase_low_cents"].as_u64().unwrap_or(0)),
            cents(b["phase_high_cents"].as_u64().unwrap_or(0)),
            actual.map_or(Cell::Empty, cents),
            match actual {
                Some(a) if a > 0 => Cell::Ratio(projected as f64 / a as f64 - 1.0),
                _ => Cell::Empty,
            },
        ]);
    }
    Ok(t)
}

fn fmt_time(ms: i64, utc_offset_minutes: i32) -> String {
    let off = jiff::tz::Offset::from_seconds(utc_offset_minutes * 60).unwrap_or(jiff::tz::Offset::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::fixed(off)).strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn yuan(c: i64) -> String {
    let neg = c < 0;
    let c = c.unsigned_abs();
    let s = (c / 100).to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{}¥{out}.{:02}", if neg { "−" } else { "" }, c % 100)
}

impl Cell {
    fn html(&self, off: i32) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Cents(c) => yuan(c.cents),
            Cell::Ratio(r) => format!("{:.2}%", r * 100.0),
            Cell::Text(s) => esc(s),
            Cell::Time(t) => fmt_time(t.ms, off),
            Cell::Empty => String::new(),
        }
    }

    fn csv(&self, off: i32) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Cents(c) => c.cents.to_string(),
            Cell::Ratio(r) => format!("{r:.6}"),
            Cell::Text(s) => {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.clone()
                }
            }
            Cell::Time(t) => fmt_time(t.ms, off),
            Cell::Empty => String::new(),
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line chart as inline SVG: phase bands, lines, marks.
/// A chart line: its points, its colour, dashed or not.
type Line<'a> = (&'a [(i64, u64)], &'a str, bool);

fn svg_chart(r: &Report, lines: &[Line<'_>], unit: &str, marks: bool) -> String {
    let (w, h) = (1100.0f64, 260.0f64);
    let (l, b) = (70.0, 24.0);
    let span = (r.to_ms - r.from_ms).max(1) as f64;
    let max = lines.iter().flat_map(|(p, _, _)| p.iter().map(|x| x.1)).max().unwrap_or(0).max(1) as f64 * 1.1;
    let x = |t: i64| l + (t - r.from_ms) as f64 / span * (w - l - 10.0);
    let y = |v: u64| h - b - v as f64 / max * (h - b - 12.0);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}'>");
    for (i, p) in r.phases.iter().enumerate() {
        let fill = ["#eef3ff", "#fff0f0", "#effaf3"][i % 3];
        let _ = write!(
            s,
            "<rect x='{:.1}' y='0' width='{:.1}' height='{}' fill='{fill}'/>",
            x(p.start_ms),
            x(p.end_ms) - x(p.start_ms),
            h - b
        );
        let _ =
            write!(s, "<text x='{:.1}' y='12' font-size='11' fill='#667'>{}</text>", x(p.start_ms) + 3.0, esc(&p.name));
    }
    let _ = write!(s, "<line x1='{l}' y1='{}' x2='{}' y2='{}' stroke='#99a'/>", h - b, w - 10.0, h - b);
    let label = if unit == "cents" { yuan(max as i64) } else { format!("{}", max as u64) };
    let _ = write!(s, "<text x='0' y='12' font-size='11' fill='#667'>{}</text>", esc(&label));
    let _ = write!(
        s,
        "<text x='{l}' y='{}' font-size='11' fill='#667'>{}</text>",
        h - 6.0,
        fmt_time(r.from_ms, r.utc_offset_minutes)
    );
    let _ = write!(
        s,
        "<text x='{}' y='{}' font-size='11' fill='#667' text-anchor='end'>{}</text>",
        w - 10.0,
        h - 6.0,
        fmt_time(r.to_ms, r.utc_offset_minutes)
    );
    for (pts, color, dashed) in lines {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t + r.step_ms / 2), y(v))).collect();
        let dash = if *dashed { " stroke-dasharray='6 5'" } else { "" };
        let _ =
            write!(s, "<polyline fill='none' stroke='{color}' stroke-width='1.6'{dash} points='{}'/>", path.join(" "));
    }
    if marks {
        for m in &r.marks {
            let color = if m.kind == "rule" { "#7a3cff" } else { "#e03131" };
            let _ = write!(
                s,
                "<line x1='{0:.1}' y1='0' x2='{0:.1}' y2='{1}' stroke='{color}' stroke-dasharray='2 3'><title>{2}</title></line>",
                x(m.at_ms),
                h - b,
                esc(&format!("{} {}", fmt_time(m.at_ms, r.utc_offset_minutes), m.text))
            );
        }
    }
    s.push_str("</svg>");
    s
}

impl Report {
    /// While the range is not over and goes past the stored minutes: where the stored ones end.
    fn cut(&self) -> Option<i64> {
        self.stored_until_ms.filter(|&u| u < self.to_ms)
    }

    /// The steps of a curve to draw: every one, or, when the range goes past the stored
    /// minutes, the steps that end before the last stored minute (a monitor still writing
    /// has that minute in part: drawn, it is a dip at the present; the screen's curve stops
    /// there too).
    fn drawn<'a>(&self, pts: &'a [(i64, u64)]) -> &'a [(i64, u64)] {
        match self.cut() {
            Some(u) => &pts[..pts.partition_point(|&(t, _)| t + self.step_ms <= u - 60_000)],
            None => pts,
        }
    }

    /// The self-contained HTML page.
    pub fn html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><title>{0}</title><style>
body{{font-family:'Noto Sans CJK SC','PingFang SC',Arial,sans-serif;color:#1b1f2a;margin:24px 32px;max-width:1120px}}
h1{{font-size:26px;margin:0 0 4px}} h2{{font-size:18px;margin:26px 0 8px;border-bottom:2px solid #dde}}
.meta{{color:#667;font-size:13px}} table{{border-collapse:collapse;font-size:12.5px;width:100%}}
td,th{{padding:3px 6px;border-bottom:1px solid #eef;text-align:right;white-space:nowrap}} th{{color:#556;font-weight:600}}
td:first-child,th:first-child{{text-align:left}} .kpi{{display:flex;gap:28px;font-size:15px;margin:12px 0}} .kpi b{{font-size:20px}}
.legend span{{margin-right:18px;font-size:12px}} @media print{{h2{{break-after:avoid}} table{{break-inside:auto}}}}
</style></head><body><h1>{0}</h1><div class='meta'>{1} — {2} ({4}) · {3} minutes · generated by warroom review from the history database</div>",
            esc(&self.title),
            fmt_time(self.from_ms, self.utc_offset_minutes),
            fmt_time(self.to_ms, self.utc_offset_minutes),
            (self.to_ms - self.from_ms) / 60_000,
            crate::utc_offset_label(self.utc_offset_minutes)
        );
        if let Some(u) = self.cut() {
            let _ = write!(
                s,
                "<div class='meta'>stored until {}: the rest of the range has not happened yet (or was not recorded); the curves stop before the last minute stored</div>",
                fmt_time(u, self.utc_offset_minutes)
            );
        }
        let c = &self.totals;
        let _ = write!(
            s,
            "<div class='kpi'><span>GMV <b>{}</b></span><span>paid orders <b>{}</b></span>",
            yuan(c.gmv as i64),
            c.paid_orders
        );
        if let Some([uv, ipv, buyers]) = self.distinct {
            let _ = write!(
                s,
                "<span>UV <b>{uv}</b></span><span>IPV_UV <b>{ipv}</b></span><span>buyers <b>{buyers}</b></span>"
            );
        }
        let _ = write!(s, "<span>refunds <b>{}</b></span></div>", yuan(c.refund_cents as i64));
        s.push_str("<h2>1. 流量与成交曲线 · the curve by phase against the planned rhythm</h2>");
        s.push_str("<div class='legend'><span style='color:#e8a400'>━ GMV per step</span>");
        if !self.pace.is_empty() {
            s.push_str("<span style='color:#3b6fe0'>┅ plan pace</span>");
        }
        if self.merchant.is_none() {
            s.push_str("<span style='color:#7a3cff'>┆ rule change</span><span style='color:#e03131'>┆ alert</span>");
        }
        s.push_str("</div>");
        s.push_str(&svg_chart(
            self,
            &[(&self.pace, "#3b6fe0", true), (self.drawn(&self.gmv), "#e8a400", false)],
            "cents",
            true,
        ));
        let _ = write!(
            s,
            "<div class='legend'><span style='color:#2b9348'>━ {} per step</span></div>",
            esc(&self.traffic_metric)
        );
        s.push_str(&svg_chart(self, &[(self.drawn(&self.traffic), "#2b9348", false)], "count", false));
        for (k, t) in self.tables.iter().enumerate() {
            let _ = write!(s, "<h2>{}. {}</h2><table><tr>", k + 2, esc(&t.title));
            for c in &t.columns {
                let _ = write!(s, "<th>{}</th>", esc(c));
            }
            s.push_str("</tr>");
            for row in t.rows.iter().take(t.show) {
                s.push_str("<tr>");
                for c in row {
                    let _ = write!(s, "<td>{}</td>", c.html(self.utc_offset_minutes));
                }
                s.push_str("</tr>");
            }
            s.push_str("</table>");
            if t.rows.len() > t.show {
                let _ = write!(
                    s,
                    "<div class='meta'>{} of {} rows shown; all in {}.csv</div>",
                    t.show,
                    t.rows.len(),
                    t.name
                );
            }
            if let Some(note) = &t.note {
                let _ = write!(s, "<div class='meta'>{}</div>", esc(note));
            } else if t.rows.is_empty() {
                s.push_str("<div class='meta'>nothing in this range</div>");
            }
        }
        s.push_str("</body></html>\n");
        s
    }

    /// Writes `report.html`, `report.json` and one CSV per table into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut out = Vec::new();
        let mut put = |name: String, body: String| -> std::io::Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, body)?;
            out.push(p);
            Ok(())
        };
        put("report.html".into(), self.html())?;
        put("report.json".into(), serde_json::to_string_pretty(self).map_err(std::io::Error::other)?)?;
        let mut curve = String::from("step_start,gmv_cents,pace_cents,traffic\n");
        for (k, (t, g)) in self.gmv.iter().enumerate() {
            let pace = self.pace.get(k).map(|p| p.1.to_string()).unwrap_or_default();
            let tr = self.traffic.get(k).map(|p| p.1).unwrap_or(0);
            let when = fmt_time(*t, self.utc_offset_minutes);
            // A step after the last stored minute has no numbers yet, not zeros.
            let _ = match self.cut() {
                Some(u) if *t >= u => writeln!(curve, "{when},,{pace},"),
                _ => writeln!(curve, "{when},{g},{pace},{tr}"),
            };
        }
        put("curve.csv".into(), curve)?;
        for t in &self.tables {
            let mut csv = t.columns.join(",");
            csv.push('\n');
            for row in &t.rows {
                csv.push_str(&row.iter().map(|c| c.csv(self.utc_offset_minutes)).collect::<Vec<_>>().join(","));
                csv.push('\n');
            }
            put(format!("{}.csv", t.name), csv)?;
        }
        Ok(out)
    }
}
