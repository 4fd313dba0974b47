//! `GET /api/v1/history` and `GET /api/v1/history/journal`: the promotion's memory, scoped
//! like everything else (a merchant's token counts only its own slots' pairs).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use warroom_history::{HistoryDb, HistoryError, Metric, Scope};

use crate::auth::Caller;
use crate::{lock, now_ms, ApiError, AppState, Role};

type Shared = Arc<AppState>;

/// Points a series has at most when no step is asked for: a day in minutes.
const DEFAULT_POINTS: i64 = 1440;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    metric: Option<String>,
    scope: Option<String>,
    name: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    /// `previous`: the previous promotion's database (`[history] previous`).
    promotion: Option<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", msg)
}

/// A time: ms since the epoch, or RFC 3339 (`2026-11-11T00:00:00+08:00`).
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("time `{s}`: ms since the epoch or RFC 3339 ({e})"))
}

fn parse_step(s: &str) -> Result<i64, String> {
    humantime_serde::re::humantime::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|e| format!("step `{s}`: a duration such as 1m, 5m, 1h ({e})"))
}

fn db_error(e: HistoryError) -> ApiError {
    match e {
        HistoryError::Query(m) => bad(m),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "history_unavailable", e.to_string()),
    }
}

/// The merchant a caller's history is held to: its own for a merchant token (a merchant token
/// without a merchant id is refused, not widened), none for ops and admins.
fn held_to(caller: &Caller, what: &str) -> Result<Option<String>, ApiError> {
    match caller.role {
        Role::Merchant => caller.own_merchant().map(|m| Some(m.to_string())).ok_or_else(|| ApiError::forbidden(what)),
        _ => Ok(None),
    }
}

impl AppState {
    fn history_db(&self, promotion: Option<&str>) -> Result<Arc<HistoryDb>, ApiError> {
        let (db, what) = match promotion {
            None | Some("" | "current") => (self.history.clone(), "this promotion's history ([history] path)"),
            Some("previous") => (self.previous.clone(), "a previous promotion ([history] previous)"),
            Some(p) => return Err(bad(format!("promotion `{p}`: current or previous"))),
        };
        db.ok_or_else(|| ApiError::not_found(format!("this monitor keeps no {what}")))
    }
}

pub(crate) async fn history(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let db = st.history_db(p.promotion.as_deref())?;
    let metric = Metric::parse(p.metric.as_deref().unwrap_or("gmv")).map_err(bad)?;
    let scope = Scope::parse(p.scope.as_deref().unwrap_or("site"), p.name.as_deref()).map_err(bad)?;
    let merchant = held_to(&caller, "read history")?;
    let to = p.to.as_deref().map(parse_time).transpose().map_err(bad)?;
    let task = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        db.read(|s| {
            // Default: up to the last stored minute (event time may run ahead of the wall
            // clock in a simulation, or far behind it in a review).
            let bounds = s.bounds().map_err(db_error)?;
            let to = match to {
                Some(t) => t,
                None => bounds.map_or(now_ms() + 60_000, |(_, last)| (last + 1) * 60_000),
            };
            let from = match &p.from {
                Some(f) => parse_time(f).map_err(bad)?,
                None => bounds.map_or(to - 3_600_000, |(first, _)| first * 60_000),
            };
            let span = (to - from).max(60_000);
            let step = match &p.step {
                Some(st) => parse_step(st).map_err(bad)?,
                None => ((span / 60_000 + DEFAULT_POINTS - 1) / DEFAULT_POINTS).max(1) * 60_000,
            };
            let q = warroom_history::Query { metric, scope, from_ms: from, to_ms: to, step_ms: step, merchant };
            let series = s.series(&q).map_err(db_error)?;
            let mut v = serde_json::to_value(&series).expect("a series serialises");
            // Up to where minutes are stored: the rest of the current minute is in the live
            // snapshot (batches are written with each checkpoint, every few seconds).
            v["stored_until_ms"] = serde_json::json!(bounds.map(|(_, last)| (last + 1) * 60_000));
            Ok(v)
        })
    });
    let v = task.await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JournalParams {
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// Alerts and rule changes as kept in the history database (ops and admins).
pub(crate) async fn journal(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<JournalParams>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if !caller.can_read_all() {
        return Err(ApiError::forbidden("read the alert and rule-change journal"));
    }
    let db = st.history_db(None)?;
    let from = p.from.as_deref().map(parse_time).transpose().map_err(bad)?.unwrap_or(0);
    let to = p.to.as_deref().map(parse_time).transpose().map_err(bad)?.unwrap_or(i64::MAX);
    let kind = p.kind.clone();
    let entries = tokio::task::spawn_blocking(move || db.read(|s| s.journal_entries(kind.as_deref(), from, to)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(db_error)?;
    Ok(Json(entries).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CurveParams {
    /// `phase` (the current one, default), `promotion` (the plan's whole range) or `all`
    /// (everything stored).
    range: Option<String>,
}

/// Points a curve has at most: about one per 1.5 pixels of the screen's chart.
const CURVE_POINTS: i64 = 720;

/// The screen's curve from history: GMV per step over the range, the plan's pace per step,
/// the previous promotion's curve aligned by time since the start of each phase, the phases
/// and the projection. A merchant's token gets its own GMV only.
pub(crate) async fn curve(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<CurveParams>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let merchant = held_to(&caller, "read history")?;
    let db = st.history_db(None)?;
    let range = p.range.unwrap_or_else(|| "phase".into());
    if !["phase", "promotion", "all"].contains(&range.as_str()) {
        return Err(bad(format!("range `{range}`: phase, promotion or all")));
    }
    let st2 = st.clone();
    let v = tokio::task::spawn_blocking(move || st2.curve_at(&db, &range, merchant))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(v).into_response())
}

impl AppState {
    /// "Now" in event time: the screens' snapshot's (the newest published; a simulation or a
    /// rehearsal runs on its own clock), else the wall clock.
    pub(crate) fn event_now(&self) -> i64 {
        let s = &self.hub.latest().snap;
        if s.as_of_ms > 0 {
            s.as_of_ms
        } else {
            now_ms()
        }
    }

    /// The previous promotion's plan and GMV curve, if configured and stored with a plan;
    /// read once.
    fn previous_curve(&self) -> Option<Arc<warroom_history::projection::Previous>> {
        self.previous_curve
            .get_or_init(|| {
                let db = self.previous.as_ref()?;
                db.read(|s| {
                    let plan = s.plan().ok()??;
                    let pts = s.gmv_minutes(i64::MIN / 4, i64::MAX / 4).ok()?;
                    Some(Arc::new(warroom_history::projection::Previous {
                        phases: warroom_history::projection::phases_of(&plan),
                        curve: warroom_history::projection::Curve::new(&pts),
                    }))
                })
            })
            .clone()
    }

    /// The projection at event time `now` (site-wide; `None` without a plan or too early).
    pub fn projection(&self, now: i64) -> Option<warroom_history::projection::Projection> {
        let stored_until = self.history.as_ref()?.read(|s| s.bounds()).ok()??.1;
        self.projection_until(now, (stored_until + 1) * 60_000)
    }

    /// The projection at `now`, with minutes stored up to `stored_until_ms`.
    fn projection_until(&self, now: i64, stored_until_ms: i64) -> Option<warroom_history::projection::Projection> {
        let plan = self.engine.config().plan.clone()?;
        let now = now.min(stored_until_ms);
        let pts = self.history.as_ref()?.read(|s| s.gmv_minutes(plan.start_ms(), now)).ok()?;
        self.project(&plan, now, &pts)
    }

    /// The projection at `now` (no later than the stored minutes) from the GMV minutes since
    /// the plan's start.
    fn project(
        &self,
        plan: &warroom_engine::plan::PlanConfig,
        now: i64,
        pts: &[(i64, u64)],
    ) -> Option<warroom_history::projection::Projection> {
        let prev = self.previous_curve();
        warroom_history::projection::project(now, plan, &warroom_history::projection::Curve::new(pts), prev.as_deref())
    }

    fn curve_at(&self, db: &HistoryDb, range: &str, merchant: Option<String>) -> Result<serde_json::Value, ApiError> {
        use warroom_history::projection::phases_of;
        let now = self.event_now();
        let plan = self.engine.config().plan.clone();
        let phases = plan.as_ref().map(phases_of).unwrap_or_default();
        // Everything from one read transaction: a checkpoint's batch landing between two reads
        // would give a curve one minute longer than the `stored_until_ms` beside it (its last
        // step drawn in part, a dip), or tables of another moment than the curve.
        let snapshot = db
            .read(|s| {
                let writes = db.writes.load(std::sync::atomic::Ordering::Relaxed);
                let stored = s.bounds()?.map(|(a, b)| (a * 60_000, (b + 1) * 60_000));
                let current = phases.iter().find(|p| p.start_ms <= now && now < p.end_ms);
                let (from, to) = match (range, current, &plan) {
                    ("phase", Some(p), _) => (p.start_ms, p.end_ms),
                    ("phase" | "promotion", _, Some(pl)) if !pl.phases.is_empty() => (pl.start_ms(), pl.end_ms()),
                    _ => stored.unwrap_or((now - 3_600_000, now + 60_000)),
                };
                let span_min = ((to - from) / 60_000).max(1);
                let step = ((span_min + CURVE_POINTS - 1) / CURVE_POINTS).max(1) * 60_000;
                let q = warroom_history::Query {
                    metric: Metric::Count(0),
                    scope: Scope::Site,
                    from_ms: from,
                    to_ms: to,
                    step_ms: step,
                    merchant: merchant.clone(),
                };
                let tables = match &merchant {
                    Some(m) => CurveTables::Merchant(
                        s.totals(&Scope::Site, Some(m), from, to)?,
                        s.by_channel(from, to, Some(m))?,
                    ),
                    // The same until the next batch is written (the count of writes is in the key).
                    None => CurveTables::Site(self.curve_cache.tables.get_or((writes, from, to), || {
                        Ok::<_, HistoryError>(Arc::new((
                            s.by_name(warroom_history::VENUE, from, to)?,
                            s.by_merchant(from, to)?,
                        )))
                    })?),
                };
                // The projection, from the minutes stored (later ones are not in yet): the same
                // for every request in a minute of event time until the next batch is written.
                let projection = match (&plan, stored, &merchant) {
                    (Some(pl), Some((_, until)), None) => {
                        let at = now.min(until);
                        let phase = phases.iter().position(|p| p.start_ms <= at && at < p.end_ms);
                        let key = (writes, at.div_euclid(60_000), phase.map_or(-1, |i| i as i64));
                        self.curve_cache.projection.get_or(key, || {
                            Ok::<_, HistoryError>(self.project(pl, at, &s.gmv_minutes(pl.start_ms(), at)?))
                        })?
                    }
                    _ => None,
                };
                Ok::<_, HistoryError>(CurveRead {
                    stored,
                    step,
                    actual: s.series(&q)?,
                    utc_offset: s.utc_offset()?,
                    tables,
                    projection,
                })
            })
            .map_err(db_error)?;
        let CurveRead { stored, step, actual, utc_offset, tables, projection } = snapshot;
        let mut out = serde_json::json!({
            "range": range,
            "from_ms": actual.from_ms,
            "to_ms": actual.to_ms,
            "step_ms": step,
            "now_ms": now,
            "stored_until_ms": stored.map(|s| s.1),
            // The promotion's clock, minutes east of UTC: the screen prints times at it.
            "utc_offset_minutes": utc_offset,
            "phases": phases,
            "actual": actual.points,
        });
        let tables = match tables {
            CurveTables::Merchant(c, channels) => {
                let m = merchant.as_deref().unwrap_or_default();
                // The plan, the previous promotion and the projection are site-wide numbers; a
                // merchant gets its own orders placed but unpaid (拍下未付).
                let c = c.counts;
                // Its channels (流量入口) over the range: its slots' events through each.
                out["channels"] = serde_json::json!(channels
                .iter()
                .map(|r| serde_json::json!({"channel": r.name, "gmv_cents": r.counts.gmv, "impressions": r.counts.impressions, "clicks": r.counts.clicks, "paid_orders": r.counts.paid_orders}))
                .collect::<Vec<_>>());
                out["unpaid"] = serde_json::json!([{
                    "merchant": m, "orders_placed": c.orders_placed, "paid_orders": c.paid_orders,
                    "unpaid": c.orders_placed.saturating_sub(c.paid_orders),
                }]);
                return Ok(out);
            }
            CurveTables::Site(t) => t,
        };
        let (venues, merchants) = (&tables.0, &tables.1);
        // Leading indicators per venue (预热 builds up favorites and carts) and the merchants
        // with the most orders placed but unpaid, over the range.
        out["venues"] = serde_json::json!(venues
            .iter()
            .map(|r| serde_json::json!({"venue": r.name, "favorites": r.counts.favorites, "carts": r.counts.carts, "gmv_cents": r.counts.gmv}))
            .collect::<Vec<_>>());
        let mut unpaid: Vec<_> = merchants
            .iter()
            .map(|r| (r.counts.orders_placed.saturating_sub(r.counts.paid_orders), r))
            .filter(|(u, _)| *u > 0)
            .collect();
        unpaid.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.name.cmp(&b.1.name)));
        out["unpaid"] = serde_json::json!(unpaid
            .iter()
            .take(10)
            .map(|(u, r)| serde_json::json!({"merchant": r.name, "orders_placed": r.counts.orders_placed, "paid_orders": r.counts.paid_orders, "unpaid": u}))
            .collect::<Vec<_>>());
        let steps: Vec<i64> = actual.points.iter().map(|p| p.0).collect();
        if let Some(pl) = &plan {
            let pace: Vec<(i64, u64)> =
                steps.iter().map(|&t| (t, pl.expected_by(t + step).saturating_sub(pl.expected_by(t)) as u64)).collect();
            out["pace"] = serde_json::json!(pace);
        }
        if let Some(prev) = self.previous_curve() {
            // Aligned by time since the start of each phase: a step of this promotion's phase
            // takes the same fraction of the previous promotion's phase of the same kind.
            let aligned: Vec<(i64, Option<u64>)> = steps
                .iter()
                .map(|&t| {
                    let p = phases.iter().find(|p| p.start_ms <= t && t < p.end_ms)?;
                    let q = prev.phases.iter().find(|q| q.kind == p.kind)?;
                    let map = |x: i64| {
                        q.start_ms
                            + (((x - p.start_ms) as i128 * (q.end_ms - q.start_ms) as i128)
                                / (p.end_ms - p.start_ms).max(1) as i128) as i64
                    };
                    Some((t, prev.curve.between(map(t), map((t + step).min(p.end_ms)))))
                })
                .map(|x| x.map_or((0, None), |(t, v)| (t, Some(v))))
                .collect();
            let aligned: Vec<_> = steps.iter().zip(aligned).map(|(&t, (_, v))| (t, v)).collect();
            out["previous"] = serde_json::json!(aligned);
        }
        out["projection"] = serde_json::json!(projection);
        Ok(out)
    }
}

/// What the curve reads of the history, in one read transaction.
struct CurveRead {
    stored: Option<(i64, i64)>,
    step: i64,
    actual: warroom_history::Series,
    utc_offset: i32,
    tables: CurveTables,
    /// The projection (site-wide curves only).
    projection: Option<warroom_history::projection::Projection>,
}

enum CurveTables {
    /// A merchant's totals and channels over the range.
    Merchant(warroom_history::query::Totals, Vec<warroom_history::query::Row>),
    /// Venues and merchants over the range.
    Site(Arc<SiteTables>),
}

type SiteTables = (Vec<warroom_history::query::Row>, Vec<warroom_history::query::Row>);

/// What the site curve computed, kept until the history changes: every ops screen asks for
/// the curve every 5 s, and at 20,000 slots over a 7-day range the venue and merchant tables
/// cost 40-100 ms a request and the projection's minutes a few ms; they change only when a
/// batch is written (the count of writes is part of each key).
#[derive(Debug, Default)]
pub(crate) struct CurveCache {
    /// By (writes, from, to).
    tables: Recent<(u64, i64, i64), Arc<SiteTables>>,
    /// By (writes, minute of event time, phase).
    projection: Recent<(u64, i64, i64), Option<warroom_history::projection::Projection>>,
}

/// The last few values computed, by key (ranges asked by different screens: phase, promotion,
/// all).
#[derive(Debug)]
pub(crate) struct Recent<K, V>(std::sync::Mutex<std::collections::VecDeque<(K, V)>>);

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent(std::sync::Mutex::new(std::collections::VecDeque::new()))
    }
}

impl<K: PartialEq, V: Clone> Recent<K, V> {
    const KEEP: usize = 4;

    /// The value for `key`, computed by `f` (outside the lock) when not kept.
    fn get_or<E>(&self, key: K, f: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some((_, v)) = lock(&self.0).iter().find(|(k, _)| *k == key) {
            return Ok(v.clone());
        }
        let v = f()?;
        let mut kept = lock(&self.0);
        if kept.len() >= Self::KEEP {
            kept.pop_front();
        }
        kept.push_back((key, v.clone()));
        Ok(v)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewParams {
    from: Option<String>,
    to: Option<String>,
    /// `json` for the report's tables as JSON; default the HTML page.
    format: Option<String>,
}

/// The 复盘 review report of a range, as `warroom review` writes it: ops and admins get the
/// whole promotion's, a merchant's token its own 商家复盘.
pub(crate) async fn review(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<ReviewParams>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let merchant = held_to(&caller, "read the review")?;
    let db = st.history_db(None)?;
    let prev = st.previous.clone();
    let opts = warroom_history::report::ReportOptions {
        from_ms: p.from.as_deref().map(parse_time).transpose().map_err(bad)?,
        to_ms: p.to.as_deref().map(parse_time).transpose().map_err(bad)?,
        merchant,
        baseline: None,
        utc_offset_minutes: None,
        // The monitor's present: a simulation or a rehearsal runs on its own clock.
        now_ms: Some(st.event_now()),
    };
    let json = match p.format.as_deref() {
        None | Some("html") => false,
        Some("json") => true,
        Some(f) => return Err(bad(format!("format `{f}`: html or json"))),
    };
    let report = tokio::task::spawn_blocking(move || {
        db.read(|s| match &prev {
            Some(pdb) => pdb.read(|ps| warroom_history::report::build(s, Some(ps), &opts)),
            None => warroom_history::report::build(s, None, &opts),
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(db_error)?;
    Ok(if json { Json(report).into_response() } else { axum::response::Html(report.html()).into_response() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../assets/openapi.json")).unwrap();
        let src = include_str!("lib.rs");
        let mut routes = 0;
        for part in src.split(".route(\"").skip(1) {
            let path = &part[..part.find('"').unwrap()];
            if path == "/" || path == "/api/v1/openapi.json" {
                continue;
            }
            routes += 1;
            assert!(doc["paths"].get(path).is_some(), "{path} is served but not in assets/openapi.json");
        }
        assert!(routes >= 14, "routes found: {routes}");
    }

    #[test]
    fn times_are_ms_or_rfc3339() {
        assert_eq!(super::parse_time("1794312000000"), Ok(1_794_312_000_000));
        assert_eq!(super::parse_time("2026-11-10T20:00:00+08:00"), Ok(1_794_312_000_000));
        assert!(super::parse_time("yesterday").is_err());
    }
}
