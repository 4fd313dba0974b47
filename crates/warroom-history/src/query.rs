//! Reading the history: a metric over a range in steps, totals of a range, and breakdowns.

use std::collections::HashMap;

use rusqlite::params;
use serde::Serialize;
use warroom_engine::history::{Counts, COUNTS, DISTINCT, SITE_P, VENUE_P};
use warroom_engine::hll::Hll;

use crate::{
    decode_hll, each_block_entry, kinds, HistoryError, Result, Store, CHANNEL, HOUR, MERCHANT_CHANNEL, PAIR_BLOCK,
    SITE, VENUE,
};

/// At most this many points per answer.
pub const MAX_POINTS: i64 = 20_000;

/// What a query is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Scope {
    Site,
    Venue(String),
    Slot(String),
    Merchant(String),
    Channel(String),
}

impl Scope {
    /// `site`, or `venue`/`slot`/`merchant`/`channel` with a name.
    pub fn parse(kind: &str, name: Option<&str>) -> std::result::Result<Scope, String> {
        let named = |f: fn(String) -> Scope| {
            name.filter(|n| !n.is_empty())
                .map(|n| f(n.to_string()))
                .ok_or_else(|| format!("scope `{kind}` needs a name"))
        };
        match kind {
            "" | "site" => Ok(Scope::Site),
            "venue" => named(Scope::Venue),
            "slot" => named(Scope::Slot),
            "merchant" => named(Scope::Merchant),
            "channel" => named(Scope::Channel),
            _ => Err(format!("unknown scope `{kind}`: one of site, venue, slot, merchant, channel")),
        }
    }
}

/// An additive metric (a column of `minutes`) or a distinct count (from the sketches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Count(usize),
    Distinct(usize),
}

impl Metric {
    pub fn parse(s: &str) -> std::result::Result<Metric, String> {
        if let Some(i) = COUNTS.iter().position(|c| *c == s) {
            return Ok(Metric::Count(i));
        }
        if let Some(i) = DISTINCT.iter().position(|c| *c == s) {
            return Ok(Metric::Distinct(i));
        }
        Err(format!("unknown metric `{s}`: one of {}", crate::metric_names().join(", ")))
    }

    pub fn name(&self) -> &'static str {
        match *self {
            Metric::Count(i) => COUNTS[i],
            Metric::Distinct(i) => DISTINCT[i],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Query {
    pub metric: Metric,
    pub scope: Scope,
    /// `[from_ms, to_ms)`, whole minutes (rounded down).
    pub from_ms: i64,
    pub to_ms: i64,
    /// A whole number of minutes.
    pub step_ms: i64,
    /// Counts only this merchant's pairs (a merchant's token).
    pub merchant: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub metric: &'static str,
    pub scope: Scope,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    /// (start of the step in ms, value): every step of the range, zeros included.
    pub points: Vec<(i64, u64)>,
}

/// A range's numbers of one scope.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub counts: Counts,
    /// uv, ipv_uv, buyers (site and venues only).
    pub distinct: Option<[u64; 3]>,
}

/// One name's numbers over a range (a slot, a venue, a channel, a merchant).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    /// The slot's venue (slots only).
    pub venue: Option<String>,
    pub counts: Counts,
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

/// Where a scope's counts are stored.
enum Source {
    /// One row per minute of `minutes` (kind, id).
    Rows(i64, i64),
    /// The sum of these pairs (`pair_minutes`).
    Pairs(Vec<i64>),
}

/// What is known of a stored pair.
/// A slot's GMV per step ([`Store::venue_slot_gmv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSteps {
    pub slot: String,
    /// Every merchant's pairs.
    pub gmv: Vec<u64>,
    /// The asking merchant's pairs (all of them without one).
    pub own: Vec<u64>,
}

#[derive(Debug, Clone)]
struct PairInfo {
    id: i64,
    slot: i64,
    merchant: i64,
    slot_name: String,
    venue_name: Option<String>,
    merchant_name: Option<String>,
}

/// A part of a range read from one resolution: `[start, end)` in minutes, from the hour
/// rollups if `hours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: i64,
    pub end: i64,
    pub hours: bool,
}

/// `[from, to)` as spans: a whole hour that is rolled up (`rolled`) and falls in one step of
/// `step` minutes counted from `from` is read from its rollup, the rest from the minutes.
/// (Results are the same either way: an hour's rollup is the sum, or union, of its minutes.)
pub(crate) fn spans(from: i64, to: i64, step: i64, rolled: Option<(i64, i64)>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    if to <= from {
        return out;
    }
    let mut push = |start: i64, end: i64, hours: bool| match out.last_mut() {
        Some(l) if l.hours == hours && l.end == start => l.end = end,
        _ => out.push(Span { start, end, hours }),
    };
    let Some((a, b)) = rolled.filter(|&(a, b)| a < b && from < b && a < to) else {
        push(from, to, false);
        return out;
    };
    let step = step.max(1);
    // Minutes before the first whole hour of the rolled ones in the range.
    let first = crate::hour_of(from.max(a));
    let first = if first < from { first + 60 } else { first };
    let mut m = from;
    if first > m {
        push(m, first.min(to), false);
        m = first.min(to);
    }
    while m + 60 <= to.min(b) {
        let whole = (m - from).div_euclid(step) == (m + 59 - from).div_euclid(step);
        push(m, m + 60, whole);
        m += 60;
    }
    if m < to {
        push(m, to, false);
    }
    out
}

impl Store {
    /// The spans of `[from, to)` in steps of `step` minutes (see [`spans`]), with the hours
    /// rolled up as of this read.
    pub(crate) fn spans(&self, from: i64, to: i64, step: i64) -> Result<Vec<Span>> {
        Ok(spans(from, to, step, self.rolled_hours()?))
    }

    /// Where the scope's counts are (of merchant `merchant`'s pairs only, if given). `None`:
    /// the name was never stored (nothing counted).
    fn source(&self, scope: &Scope, merchant: Option<&str>) -> Result<Option<Source>> {
        let id = |kind, name: &str| self.name_id(kind, name);
        let own = match merchant {
            Some(m) => match id(kinds::MERCHANT, m) {
                Some(i) => Some(i),
                None => return Ok(None),
            },
            None => None,
        };
        let pairs = |filter: &str, args: Vec<i64>| -> Result<Option<Source>> {
            let mut st = self.conn().prepare_cached(&format!("SELECT id FROM pairs WHERE {filter} ORDER BY id"))?;
            let ids = st.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
            Ok(Some(Source::Pairs(ids.collect::<rusqlite::Result<_>>()?)))
        };
        match (scope, own) {
            (Scope::Site, None) => Ok(Some(Source::Rows(SITE, 0))),
            (Scope::Venue(v), None) => Ok(id(kinds::VENUE, v).map(|i| Source::Rows(VENUE, i))),
            (Scope::Channel(c), None) => Ok(id(kinds::CHANNEL, c).map(|i| Source::Rows(CHANNEL, i))),
            (Scope::Slot(s), own) => match (id(kinds::SLOT, s), own) {
                (Some(i), None) => pairs("slot = ?1", vec![i]),
                (Some(i), Some(m)) => pairs("slot = ?1 AND merchant = ?2", vec![i, m]),
                (None, _) => Ok(None),
            },
            (Scope::Merchant(m), own) => match id(kinds::MERCHANT, m) {
                Some(i) if own.is_none_or(|o| o == i) => pairs("merchant = ?1", vec![i]),
                _ => Ok(None),
            },
            (Scope::Site, Some(m)) => pairs("merchant = ?1", vec![m]),
            (Scope::Venue(v), Some(m)) => match id(kinds::VENUE, v) {
                Some(i) => pairs("venue = ?1 AND merchant = ?2", vec![i, m]),
                None => Ok(None),
            },
            (Scope::Channel(c), Some(m)) => {
                let Some(c) = id(kinds::CHANNEL, c) else { return Ok(None) };
                let mut st = self
                    .conn()
                    .prepare_cached("SELECT id FROM merchant_channels WHERE merchant = ?1 AND channel = ?2")?;
                Ok(rusqlite::OptionalExtension::optional(st.query_row([m, c], |r| r.get(0)))?
                    .map(|i| Source::Rows(MERCHANT_CHANNEL, i)))
            }
        }
    }

    /// Calls `f(minute, counts)` for each stored minute of the source in `[from, to)`, in no
    /// particular order (a minute of several pairs once per pair); a whole hour in one step of
    /// `step` minutes may come as one call for its first minute (its rollup).
    fn each_minute(
        &self,
        src: &Source,
        from: i64,
        to: i64,
        step: i64,
        mut f: impl FnMut(i64, &[i64; 12]),
    ) -> Result<()> {
        match src {
            Source::Rows(kind, id) => {
                let cols = COUNTS.join(", ");
                let mut st = self.conn().prepare_cached(&format!(
                    "SELECT minute, {cols} FROM minutes WHERE kind = ?1 AND id = ?2 AND minute >= ?3 AND minute < ?4"
                ))?;
                for sp in self.spans(from, to, step)? {
                    let kind = if sp.hours { kind + HOUR } else { *kind };
                    let mut rows = st.query(params![kind, id, sp.start, sp.end])?;
                    while let Some(r) = rows.next()? {
                        let mut v = [0i64; 12];
                        for (k, x) in v.iter_mut().enumerate() {
                            *x = r.get(1 + k)?;
                        }
                        f(r.get(0)?, &v);
                    }
                }
                Ok(())
            }
            Source::Pairs(ids) => self.each_pair_minute(Some(ids), from, to, step, |m, _, v| f(m, v)),
        }
    }

    /// Calls `f(minute, pair id, counts)` for each stored minute of the pairs `ids` (sorted;
    /// every pair if `None`) in `[from, to)`: one range scan per block of pairs and span (a
    /// whole hour in one step of `step` minutes may come from its rollup, as its first minute).
    fn each_pair_minute(
        &self,
        ids: Option<&[i64]>,
        from: i64,
        to: i64,
        step: i64,
        mut f: impl FnMut(i64, i64, &[i64; 12]),
    ) -> Result<()> {
        let blocks: Vec<i64> = match ids {
            Some(ids) => {
                let mut b: Vec<i64> = ids.iter().map(|i| i.div_euclid(PAIR_BLOCK)).collect();
                b.dedup();
                b
            }
            None => {
                let last: Option<i64> =
                    self.conn().query_row("SELECT MAX(block) FROM pair_minutes", [], |r| r.get(0))?;
                (0..=last.unwrap_or(-1)).collect()
            }
        };
        let spans = self.spans(from, to, step)?;
        let mut minutes = self.conn().prepare_cached(
            "SELECT minute, body FROM pair_minutes WHERE block = ?1 AND minute >= ?2 AND minute < ?3",
        )?;
        let mut hours = self
            .conn()
            .prepare_cached("SELECT minute, body FROM pair_hours WHERE block = ?1 AND minute >= ?2 AND minute < ?3")?;
        for block in blocks {
            for sp in &spans {
                let st = if sp.hours { &mut hours } else { &mut minutes };
                let mut rows = st.query(params![block, sp.start, sp.end])?;
                while let Some(r) = rows.next()? {
                    let minute: i64 = r.get(0)?;
                    let body = r.get_ref(1)?.as_blob().map_err(|e| HistoryError::Decode(e.to_string()))?;
                    each_block_entry(body, |off, v| {
                        let id = block * PAIR_BLOCK + off as i64;
                        if ids.is_none_or(|ids| ids.binary_search(&id).is_ok()) {
                            f(minute, id, v);
                        }
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The stored pairs (of merchant id `merchant` only, if given; of venue id `venue` only,
    /// if given) with their names, by id.
    fn pair_infos(&self, merchant: Option<i64>, venue: Option<i64>) -> Result<Vec<PairInfo>> {
        let mut st = self.conn().prepare_cached(&format!(
            "SELECT p.id, p.slot, p.merchant, s.name, v.name, m.name FROM pairs p
             JOIN names s ON s.kind = {} AND s.id = p.slot
             LEFT JOIN names v ON v.kind = {} AND v.id = p.venue
             LEFT JOIN names m ON m.kind = {} AND m.id = p.merchant
             WHERE (?1 IS NULL OR p.merchant = ?1) AND (?2 IS NULL OR p.venue = ?2) ORDER BY p.id",
            kinds::SLOT,
            kinds::VENUE,
            kinds::MERCHANT
        ))?;
        let rows = st.query_map(params![merchant, venue], |r| {
            Ok(PairInfo {
                id: r.get(0)?,
                slot: r.get(1)?,
                merchant: r.get(2)?,
                slot_name: r.get(3)?,
                venue_name: r.get(4)?,
                merchant_name: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The metric over the range in steps.
    pub fn series(&self, q: &Query) -> Result<Series> {
        if q.step_ms < 60_000 || q.step_ms % 60_000 != 0 {
            return Err(HistoryError::Query(format!("step {} ms: a whole number of minutes, at least one", q.step_ms)));
        }
        let (from, to) = (minute_of(q.from_ms), minute_of(q.to_ms));
        if to <= from {
            return Err(HistoryError::Query("empty range: `to` must be after `from`".into()));
        }
        let step = q.step_ms / 60_000;
        let n = (to - from + step - 1) / step;
        if n > MAX_POINTS {
            return Err(HistoryError::Query(format!("{n} points: at most {MAX_POINTS}; use a longer step")));
        }
        let mut points: Vec<(i64, u64)> = (0..n).map(|k| ((from + k * step) * 60_000, 0)).collect();
        match q.metric {
            Metric::Count(c) => {
                if let Some(src) = self.source(&q.scope, q.merchant.as_deref())? {
                    let mut sums = vec![0i64; n as usize];
                    self.each_minute(&src, from, to, step, |m, v| sums[((m - from) / step) as usize] += v[c])?;
                    for (p, s) in points.iter_mut().zip(sums) {
                        p.1 = s.max(0) as u64;
                    }
                }
            }
            Metric::Distinct(d) => {
                let mut acc: Vec<Option<Hll>> = vec![None; n as usize];
                self.each_sketch(&q.scope, q.merchant.as_deref(), d, from, to, step, |m, h| {
                    let slot = &mut acc[((m - from) / step) as usize];
                    match slot {
                        Some(a) => a.merge(&h),
                        None => *slot = Some(h),
                    }
                })?;
                for (p, h) in points.iter_mut().zip(acc) {
                    p.1 = h.map_or(0, |h| h.estimate());
                }
            }
        }
        Ok(Series {
            metric: q.metric.name(),
            scope: q.scope.clone(),
            from_ms: from * 60_000,
            to_ms: to * 60_000,
            step_ms: q.step_ms,
            points,
        })
    }

    /// Calls `f(minute, sketch)` for each stored sketch of the scope's distinct `metric` (a
    /// whole hour in one step of `step` minutes may come as its rollup, for its first minute).
    #[allow(clippy::too_many_arguments)]
    fn each_sketch(
        &self,
        scope: &Scope,
        merchant: Option<&str>,
        metric: usize,
        from: i64,
        to: i64,
        step: i64,
        mut f: impl FnMut(i64, Hll),
    ) -> Result<()> {
        let (kind, id, p) = match (scope, merchant) {
            (Scope::Site, None) => (SITE, 0, SITE_P),
            (Scope::Venue(v), None) => match self.name_id(kinds::VENUE, v) {
                Some(i) => (VENUE, i, VENUE_P),
                None => return Ok(()),
            },
            _ => {
                return Err(HistoryError::Query(format!(
                    "{} is kept per minute for the site and for venues only (sketches per slot, merchant and channel would cost more than the counts): use scope=site or venue, or a count such as paid_orders",
                    DISTINCT[metric]
                )))
            }
        };
        let mut st = self.conn().prepare_cached(
            "SELECT minute, hll FROM sketches WHERE kind = ?1 AND id = ?2 AND metric = ?3 AND minute >= ?4 AND minute < ?5",
        )?;
        for sp in self.spans(from, to, step)? {
            let kind = if sp.hours { kind + HOUR } else { kind };
            let mut rows = st.query(params![kind, id, metric as i64, sp.start, sp.end])?;
            while let Some(r) = rows.next()? {
                let body = r.get_ref(1)?.as_blob().map_err(|e| HistoryError::Decode(e.to_string()))?;
                f(r.get(0)?, decode_hll(body, p)?);
            }
        }
        Ok(())
    }

    /// The scope's numbers over `[from_ms, to_ms)`: counts summed, distinct counts from the
    /// union of the minutes' sketches (site and venues).
    pub fn totals(&self, scope: &Scope, merchant: Option<&str>, from_ms: i64, to_ms: i64) -> Result<Totals> {
        let (from, to) = (minute_of(from_ms), minute_of(to_ms));
        let mut sums = [0i64; 12];
        if let Some(src) = self.source(scope, merchant)? {
            self.each_minute(&src, from, to, i64::MAX, |_, v| {
                for (a, b) in sums.iter_mut().zip(v) {
                    *a += b;
                }
            })?;
        }
        let v = sums.map(|x| x.max(0) as u64);
        let distinct = match (scope, merchant) {
            (Scope::Site | Scope::Venue(_), None) => {
                let mut d = [0u64; 3];
                for (k, out) in d.iter_mut().enumerate() {
                    let mut u: Option<Hll> = None;
                    self.each_sketch(scope, None, k, from, to, i64::MAX, |_, h| match &mut u {
                        Some(a) => a.merge(&h),
                        None => u = Some(h),
                    })?;
                    *out = u.map_or(0, |h| h.estimate());
                }
                Some(d)
            }
            _ => None,
        };
        Ok(Totals { counts: Counts::from_values(v), distinct })
    }

    /// Every slot's numbers over the range (of one merchant's pairs if `merchant`), biggest
    /// GMV first (then by name).
    pub fn by_slot(&self, from_ms: i64, to_ms: i64, merchant: Option<&str>) -> Result<Vec<Row>> {
        let own = match merchant {
            Some(m) => match self.name_id(kinds::MERCHANT, m) {
                Some(i) => Some(i),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let infos = self.pair_infos(own, None)?;
        self.grouped(&infos, from_ms, to_ms, |p| Some((p.slot, p.slot_name.clone(), p.venue_name.clone())))
    }

    /// Every merchant's numbers over the range (its pairs'), biggest GMV first (then by name).
    pub fn by_merchant(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Row>> {
        let infos = self.pair_infos(None, None)?;
        self.grouped(&infos, from_ms, to_ms, |p| p.merchant_name.clone().map(|n| (p.merchant, n, None)))
    }

    /// The pairs' numbers over the range summed by `key(pair)` (group id, name, venue; `None`:
    /// left out), groups with a stored minute in the range only, biggest GMV first.
    fn grouped(
        &self,
        infos: &[PairInfo],
        from_ms: i64,
        to_ms: i64,
        key: impl Fn(&PairInfo) -> Option<(i64, String, Option<String>)>,
    ) -> Result<Vec<Row>> {
        let ids: Vec<i64> = infos.iter().map(|p| p.id).collect();
        let mut groups: HashMap<i64, (String, Option<String>, [i64; 12])> = HashMap::new();
        let by_id: HashMap<i64, &PairInfo> = infos.iter().map(|p| (p.id, p)).collect();
        self.each_pair_minute(Some(&ids), minute_of(from_ms), minute_of(to_ms), i64::MAX, |_, id, v| {
            let Some((g, name, venue)) = by_id.get(&id).and_then(|p| key(p)) else { return };
            let e = groups.entry(g).or_insert_with(|| (name, venue, [0; 12]));
            for (a, b) in e.2.iter_mut().zip(v) {
                *a += b;
            }
        })?;
        let mut out: Vec<(i64, Row)> = groups
            .into_values()
            .map(|(name, venue, v)| {
                (v[0], Row { name, venue, counts: Counts::from_values(v.map(|x| x.max(0) as u64)) })
            })
            .collect();
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Every venue's (kind VENUE) or channel's (kind CHANNEL) numbers over the range.
    pub fn by_name(&self, kind: i64, from_ms: i64, to_ms: i64) -> Result<Vec<Row>> {
        self.by_name_of(kind, from_ms, to_ms, None)
    }

    /// Every channel's numbers over the range, of merchant `merchant`'s slots only if given.
    pub fn by_channel(&self, from_ms: i64, to_ms: i64, merchant: Option<&str>) -> Result<Vec<Row>> {
        match merchant {
            None => self.by_name_of(CHANNEL, from_ms, to_ms, None),
            Some(m) => match self.name_id(kinds::MERCHANT, m) {
                Some(id) => self.by_name_of(MERCHANT_CHANNEL, from_ms, to_ms, Some(id)),
                None => Ok(Vec::new()),
            },
        }
    }

    fn by_name_of(&self, kind: i64, from_ms: i64, to_ms: i64, merchant: Option<i64>) -> Result<Vec<Row>> {
        let sums = COUNTS.iter().map(|c| format!("SUM(m.{c})")).collect::<Vec<_>>().join(", ");
        // `m.id IN (...)`: SQLite seeks each id's range of minutes (without it, it read every
        // row of the kind the promotion has stored, for each span).
        let sql = match kind {
            MERCHANT_CHANNEL => format!(
                "SELECT n.name, {sums} FROM minutes m JOIN merchant_channels mc ON mc.id = m.id
                 JOIN names n ON n.kind = {} AND n.id = mc.channel
                 WHERE m.kind = ?1 AND m.id IN (SELECT id FROM merchant_channels WHERE merchant = ?4)
                 AND m.minute >= ?2 AND m.minute < ?3 GROUP BY m.id",
                kinds::CHANNEL
            ),
            _ => {
                let names = if kind == CHANNEL { kinds::CHANNEL } else { kinds::VENUE };
                format!(
                    "SELECT n.name, {sums} FROM minutes m JOIN names n ON n.kind = {names} AND n.id = m.id
                     WHERE m.kind = ?1 AND m.id IN (SELECT id FROM names WHERE kind = {names})
                     AND m.minute >= ?2 AND m.minute < ?3 AND ?4 IS NULL GROUP BY m.id"
                )
            }
        };
        let mut st = self.conn().prepare_cached(&sql)?;
        // Summed per span (minutes, hour rollups), then across them.
        let mut by: HashMap<String, [i64; 12]> = HashMap::new();
        for sp in self.spans(minute_of(from_ms), minute_of(to_ms), i64::MAX)? {
            let k = if sp.hours { kind + HOUR } else { kind };
            let mut rows = st.query(params![k, sp.start, sp.end, merchant])?;
            while let Some(r) = rows.next()? {
                let e = by.entry(r.get(0)?).or_insert([0; 12]);
                for (j, x) in e.iter_mut().enumerate() {
                    *x += r.get::<_, i64>(1 + j)?;
                }
            }
        }
        let mut out: Vec<(i64, Row)> = by
            .into_iter()
            .map(|(name, v)| (v[0], Row { name, venue: None, counts: Counts::from_values(v.map(|x| x.max(0) as u64)) }))
            .collect();
        // Biggest GMV first, then by name (byte order, as SQLite's).
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Per slot of `venue` (by name), its GMV per step over the range: the race's leaders over
    /// time. Slots with a stored minute in the range only. Each slot's `own` steps are the
    /// part of its GMV that `merchant`'s pairs made (all of it without a merchant): a slot
    /// that changed hands holds another merchant's money too.
    pub fn venue_slot_gmv(
        &self,
        venue: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
        merchant: Option<&str>,
    ) -> Result<Vec<SlotSteps>> {
        let Some(v) = self.name_id(kinds::VENUE, venue) else { return Ok(Vec::new()) };
        // A merchant never stored owns no part of any slot.
        let m = merchant.map(|m| self.name_id(kinds::MERCHANT, m).unwrap_or(i64::MIN));
        let (from, to, step) = (minute_of(from_ms), minute_of(to_ms), (step_ms / 60_000).max(1));
        let n = ((to - from + step - 1) / step).max(0) as usize;
        let infos = self.pair_infos(None, Some(v))?;
        let ids: Vec<i64> = infos.iter().map(|p| p.id).collect();
        let by_id: HashMap<i64, &PairInfo> = infos.iter().map(|p| (p.id, p)).collect();
        let mut slots: HashMap<i64, (String, Vec<i64>, Vec<i64>)> = HashMap::new();
        self.each_pair_minute(Some(&ids), from, to, step, |minute, id, c| {
            let Some(p) = by_id.get(&id) else { return };
            let e = slots.entry(p.slot).or_insert_with(|| (p.slot_name.clone(), vec![0; n], vec![0; n]));
            let k = ((minute - from) / step) as usize;
            e.1[k] += c[0];
            if m.is_none_or(|m| m == p.merchant) {
                e.2[k] += c[0];
            }
        })?;
        let steps = |g: Vec<i64>| g.into_iter().map(|x| x.max(0) as u64).collect();
        let mut out: Vec<SlotSteps> =
            slots.into_values().map(|(slot, gmv, own)| SlotSteps { slot, gmv: steps(gmv), own: steps(own) }).collect();
        out.sort_by(|a, b| a.slot.cmp(&b.slot));
        Ok(out)
    }

    /// The names of one kind.
    pub fn names(&self, kind: i64) -> Result<Vec<String>> {
        let mut st = self.conn().prepare_cached("SELECT name FROM names WHERE kind = ?1 ORDER BY name")?;
        let rows = st.query_map([kind], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}
