//! Reading the history: a metric over a range in steps, totals of a range, and breakdowns.

use rusqlite::params;
use serde::Serialize;
use warroom_engine::history::{Counts, COUNTS, DISTINCT, SITE_P, VENUE_P};
use warroom_engine::hll::Hll;

use crate::{decode_hll, kinds, HistoryError, Result, Store, CHANNEL, PAIR, SITE, VENUE};

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

impl Store {
    /// Resolves a scope to the SQL that yields (minute, value of column `col`) for it, and its
    /// parameters. `None`: the name was never stored (nothing counted).
    fn scope_sql(&self, scope: &Scope, merchant: Option<&str>, cols: &[&str]) -> Result<Option<(String, Vec<i64>)>> {
        let plain = cols.join(", ");
        let summed = cols.iter().map(|c| format!("SUM(m.{c})")).collect::<Vec<_>>().join(", ");
        let id = |kind, name: &str| self.name_id(kind, name);
        let own = match merchant {
            Some(m) => match id(kinds::MERCHANT, m) {
                Some(i) => Some(i),
                None => return Ok(None),
            },
            None => None,
        };
        let direct = |kind: i64, i: i64| {
            (format!("SELECT minute, {plain} FROM minutes WHERE kind = {kind} AND id = ?1 AND minute >= ?2 AND minute < ?3 ORDER BY minute"), vec![i])
        };
        let pairs = |filter: &str, args: Vec<i64>| {
            let n = args.len();
            (
                format!(
                    "SELECT m.minute, {summed} FROM minutes m JOIN pairs p ON m.kind = {PAIR} AND m.id = p.id
                     WHERE {filter} AND m.minute >= ?{} AND m.minute < ?{} GROUP BY m.minute ORDER BY m.minute",
                    n + 1,
                    n + 2
                ),
                args,
            )
        };
        Ok(Some(match (scope, own) {
            (Scope::Site, None) => direct(SITE, 0),
            (Scope::Venue(v), None) => match id(kinds::VENUE, v) {
                Some(i) => direct(VENUE, i),
                None => return Ok(None),
            },
            (Scope::Channel(c), None) => match id(kinds::CHANNEL, c) {
                Some(i) => direct(CHANNEL, i),
                None => return Ok(None),
            },
            (Scope::Slot(s), own) => match (id(kinds::SLOT, s), own) {
                (Some(i), None) => pairs("p.slot = ?1", vec![i]),
                (Some(i), Some(m)) => pairs("p.slot = ?1 AND p.merchant = ?2", vec![i, m]),
                (None, _) => return Ok(None),
            },
            (Scope::Merchant(m), own) => match id(kinds::MERCHANT, m) {
                Some(i) if own.is_none_or(|o| o == i) => pairs("p.merchant = ?1", vec![i]),
                _ => return Ok(None),
            },
            (Scope::Site, Some(m)) => pairs("p.merchant = ?1", vec![m]),
            (Scope::Venue(v), Some(m)) => match id(kinds::VENUE, v) {
                Some(i) => pairs("p.venue = ?1 AND p.merchant = ?2", vec![i, m]),
                None => return Ok(None),
            },
            (Scope::Channel(_), Some(_)) => {
                return Err(HistoryError::Query("channels are not kept per merchant".into()));
            }
        }))
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
                if let Some((sql, args)) = self.scope_sql(&q.scope, q.merchant.as_deref(), &[COUNTS[c]])? {
                    let mut all: Vec<i64> = args;
                    all.extend([from, to]);
                    let mut st = self.conn().prepare_cached(&sql)?;
                    let rows = st.query_map(rusqlite::params_from_iter(all), |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })?;
                    for r in rows {
                        let (m, v) = r?;
                        points[((m - from) / step) as usize].1 += v.max(0) as u64;
                    }
                }
            }
            Metric::Distinct(d) => {
                let mut acc: Vec<Option<Hll>> = vec![None; n as usize];
                self.each_sketch(&q.scope, q.merchant.as_deref(), d, from, to, |m, h| {
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

    /// Calls `f(minute, sketch)` for each stored sketch of the scope's distinct `metric`.
    fn each_sketch(
        &self,
        scope: &Scope,
        merchant: Option<&str>,
        metric: usize,
        from: i64,
        to: i64,
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
        let rows = st.query_map(params![kind, id, metric as i64, from, to], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for r in rows {
            let (m, b) = r?;
            f(m, decode_hll(&b, p)?);
        }
        Ok(())
    }

    /// The scope's numbers over `[from_ms, to_ms)`: counts summed, distinct counts from the
    /// union of the minutes' sketches (site and venues).
    pub fn totals(&self, scope: &Scope, merchant: Option<&str>, from_ms: i64, to_ms: i64) -> Result<Totals> {
        let (from, to) = (minute_of(from_ms), minute_of(to_ms));
        let mut v = [0u64; 12];
        // One query for the twelve sums.
        if let Some((sql, mut args)) = self.scope_sql(scope, merchant, &COUNTS)? {
            args.extend([from, to]);
            let mut st = self.conn().prepare_cached(&sql)?;
            let mut rows = st.query(rusqlite::params_from_iter(args))?;
            while let Some(r) = rows.next()? {
                for (k, out) in v.iter_mut().enumerate() {
                    *out += r.get::<_, Option<i64>>(1 + k)?.unwrap_or(0).max(0) as u64;
                }
            }
        }
        let distinct = match (scope, merchant) {
            (Scope::Site | Scope::Venue(_), None) => {
                let mut d = [0u64; 3];
                for (k, out) in d.iter_mut().enumerate() {
                    let mut u: Option<Hll> = None;
                    self.each_sketch(scope, None, k, from, to, |_, h| match &mut u {
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
    /// GMV first.
    pub fn by_slot(&self, from_ms: i64, to_ms: i64, merchant: Option<&str>) -> Result<Vec<Row>> {
        let own = match merchant {
            Some(m) => match self.name_id(kinds::MERCHANT, m) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            None => -2,
        };
        let sums = COUNTS.iter().map(|c| format!("SUM(m.{c})")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT s.name, v.name, {sums} FROM minutes m JOIN pairs p ON m.kind = {PAIR} AND m.id = p.id
             JOIN names s ON s.kind = {} AND s.id = p.slot
             LEFT JOIN names v ON v.kind = {} AND v.id = p.venue
             WHERE m.minute >= ?1 AND m.minute < ?2 AND (?3 = -2 OR p.merchant = ?3)
             GROUP BY p.slot ORDER BY SUM(m.gmv) DESC, s.name",
            kinds::SLOT,
            kinds::VENUE
        );
        self.rows(&sql, params![minute_of(from_ms), minute_of(to_ms), own])
    }

    /// Every venue's (kind VENUE) or channel's (kind CHANNEL) numbers over the range.
    pub fn by_name(&self, kind: i64, from_ms: i64, to_ms: i64) -> Result<Vec<Row>> {
        let name_kind = if kind == CHANNEL { kinds::CHANNEL } else { kinds::VENUE };
        let sums = COUNTS.iter().map(|c| format!("SUM(m.{c})")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT n.name, NULL, {sums} FROM minutes m JOIN names n ON n.kind = {name_kind} AND n.id = m.id
             WHERE m.kind = {kind} AND m.minute >= ?1 AND m.minute < ?2
             GROUP BY m.id ORDER BY SUM(m.gmv) DESC, n.name"
        );
        self.rows(&sql, params![minute_of(from_ms), minute_of(to_ms)])
    }

    /// Every merchant's numbers over the range (its pairs'), biggest GMV first.
    pub fn by_merchant(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Row>> {
        let sums = COUNTS.iter().map(|c| format!("SUM(m.{c})")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT n.name, NULL, {sums} FROM minutes m JOIN pairs p ON m.kind = {PAIR} AND m.id = p.id
             JOIN names n ON n.kind = {} AND n.id = p.merchant
             WHERE m.minute >= ?1 AND m.minute < ?2 GROUP BY p.merchant ORDER BY SUM(m.gmv) DESC, n.name",
            kinds::MERCHANT
        );
        self.rows(&sql, params![minute_of(from_ms), minute_of(to_ms)])
    }

    fn rows(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Row>> {
        let mut st = self.conn().prepare_cached(sql)?;
        let rows = st.query_map(args, |r| {
            let mut v = [0u64; 12];
            for (k, x) in v.iter_mut().enumerate() {
                *x = r.get::<_, i64>(2 + k)?.max(0) as u64;
            }
            Ok(Row { name: r.get(0)?, venue: r.get(1)?, counts: Counts::from_values(v) })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Per slot of `venue`, its GMV per step over the range: the race's leaders over time.
    pub fn venue_slot_gmv(
        &self,
        venue: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(String, Vec<u64>)>> {
        let Some(v) = self.name_id(kinds::VENUE, venue) else { return Ok(Vec::new()) };
        let (from, to, step) = (minute_of(from_ms), minute_of(to_ms), (step_ms / 60_000).max(1));
        let n = ((to - from + step - 1) / step).max(0) as usize;
        let sql = format!(
            "SELECT s.name, m.minute, SUM(m.gmv) FROM minutes m JOIN pairs p ON m.kind = {PAIR} AND m.id = p.id
             JOIN names s ON s.kind = {} AND s.id = p.slot
             WHERE p.venue = ?1 AND m.minute >= ?2 AND m.minute < ?3 GROUP BY p.slot, m.minute ORDER BY s.name",
            kinds::SLOT
        );
        let mut st = self.conn().prepare_cached(&sql)?;
        let rows = st.query_map(params![v, from, to], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })?;
        let mut out: Vec<(String, Vec<u64>)> = Vec::new();
        for r in rows {
            let (slot, m, g) = r?;
            if out.last().is_none_or(|(s, _)| *s != slot) {
                out.push((slot, vec![0; n]));
            }
            out.last_mut().expect("pushed").1[((m - from) / step) as usize] += g.max(0) as u64;
        }
        Ok(out)
    }

    /// The names of one kind.
    pub fn names(&self, kind: i64) -> Result<Vec<String>> {
        let mut st = self.conn().prepare_cached("SELECT name FROM names WHERE kind = ?1 ORDER BY name")?;
        let rows = st.query_map([kind], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}
