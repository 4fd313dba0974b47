//! The live API and the war-room screen (axum): REST reads, race-rule changes with an audit
//! trail, WebSocket push, Prometheus metrics, and the screen itself at `/`.
//!
//! Every endpoint but `/healthz` and `/readyz` needs `Authorization: Bearer TOKEN` (the
//! WebSocket may instead offer the token as a subprotocol `bearer.TOKEN`; never in the URL,
//! which proxies log).
//! The screen's page at `/` holds no data and loads without a token; it takes the token from
//! the URL fragment (never sent to the server) and uses it for the WebSocket.

pub mod alerts;
pub mod auth;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod net;
/// What a caller may see of a snapshot (built beside the snapshot, in the engine).
pub use warroom_engine::views as scope;
pub mod webhook;
mod ws;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use warroom_engine::{Engine, RuleSpec};
pub use warroom_status::{AlertClaims, IngestStatus, RuleLog};

pub use auth::{Auth, Caller, Role};
pub use hub::Hub;
use scope::{merchant_view, venue_view, Scope};

/// What feeds the engine, as far as readiness, lag and metrics go: `None` for a source with
/// nothing to report (the embedded simulator, a file).
pub type Source = Option<Arc<dyn IngestStatus>>;

/// A race-rule change, as kept in the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// When it was made (wall clock).
    pub at_ms: i64,
    /// The event time the monitor stood at then (the night's clock, which the history and
    /// the review's curve are on: a simulated, replayed or rehearsed night runs on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_ms: Option<i64>,
    /// The caller's name from the auth file (never its token).
    pub by: String,
    pub action: String,
    pub venue: String,
    pub old_rule: String,
    pub new_rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<RuleSpec>,
}

/// A rule change in the rule log: who made it and what.
#[derive(Debug, Serialize, Deserialize)]
struct RuleRecord {
    node: u64,
    nonce: u64,
    entry: AuditEntry,
}

/// Alert changes waiting for the webhook at most; beyond, new ones are dropped and counted
/// (`warroom_alert_webhook_dropped_total`): a webhook that is down must not grow the monitor.
pub const WEBHOOK_QUEUE: usize = 1024;

pub struct AppState {
    pub engine: Arc<Engine>,
    /// The tokens in force (replaced whole when the auth file changes).
    auth: arc_swap::ArcSwap<Auth>,
    pub hub: Arc<Hub>,
    pub source: Source,
    pub audit: Mutex<VecDeque<AuditEntry>>,
    pub started: Instant,
    pub http: metrics::HttpStats,
    /// Data older than this (wall clock since the last applied event) is stale.
    pub stale_after_ms: i64,
    pub alerts: Mutex<alerts::AlertEngine>,
    webhook_tx: tokio::sync::mpsc::Sender<alerts::Alert>,
    webhook_rx: Mutex<Option<tokio::sync::mpsc::Receiver<alerts::Alert>>>,
    pub webhook_stats: metrics::WebhookStats,
    /// The monitor's own metrics recorder and histograms.
    pub metrics: metrics::Registry,
    /// The monitor's parts and whether each is alive (`/readyz`).
    pub parts: Arc<warroom_status::parts::Parts>,
    /// Connection caps and timeouts.
    pub config: ApiConfig,
    /// Several API nodes: which one sends each alert change to the webhook (`None`: this one).
    pub claims: Option<Arc<dyn warroom_status::AlertClaims>>,
    /// Several API nodes: the log their rule changes go through (`None`: this node alone).
    pub rule_log: Option<Arc<dyn warroom_status::RuleLog>>,
    /// Names this process in the rule log (its own changes are journaled when made).
    rule_node: u64,
    /// This process's changes read back from the rule log (and so in force), by nonce.
    rules_applied: Mutex<std::collections::HashSet<u64>>,
    /// The promotion's history (per-minute numbers, alerts, rule changes), if kept.
    pub history: Option<Arc<warroom_history::HistoryDb>>,
    /// A previous promotion's history, read only (its curve beside this one's). Set before the
    /// state is shared: its curve is read once, at the first use.
    pub previous: Option<Arc<warroom_history::HistoryDb>>,
    /// The previous promotion's plan and GMV curve, read from `previous` once (it is a past
    /// promotion's file: it does not change; every screen's curve, every 5 s, and every
    /// projection read all its minutes again: 2.6 ms a request for a 7-day promotion).
    previous_curve: std::sync::OnceLock<Option<Arc<warroom_history::projection::Previous>>>,
    /// What the site curve computed, until the history changes.
    curve_cache: history::CurveCache,
    /// The event-time minute of the last projection kept in the journal.
    projected_minute: std::sync::atomic::AtomicI64,
    /// WebSocket connections open, in all and per token (by the token's digest).
    pub(crate) ws_open: Mutex<std::collections::HashMap<[u8; 32], usize>>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, auth: Auth, hub: Arc<Hub>, source: Source) -> AppState {
        let (webhook_tx, webhook_rx) = tokio::sync::mpsc::channel(WEBHOOK_QUEUE);
        let registry = metrics::Registry::new();
        if let Some(source) = &source {
            source.set_batch_histogram(registry.batch_apply.clone());
        }
        AppState {
            alerts: Mutex::default(),
            webhook_tx,
            webhook_rx: Mutex::new(Some(webhook_rx)),
            webhook_stats: metrics::WebhookStats::default(),
            claims: None,
            metrics: registry,
            engine,
            auth: arc_swap::ArcSwap::from_pointee(auth),
            hub,
            source,
            audit: Mutex::default(),
            started: Instant::now(),
            http: metrics::HttpStats::default(),
            stale_after_ms: 10_000,
            parts: warroom_status::parts::Parts::new(),
            config: ApiConfig::default(),
            history: None,
            previous: None,
            previous_curve: std::sync::OnceLock::new(),
            curve_cache: Default::default(),
            projected_minute: std::sync::atomic::AtomicI64::new(i64::MIN),
            rule_log: None,
            rules_applied: Mutex::default(),
            rule_node: warroom_status::node_id(),
            ws_open: Mutex::default(),
        }
    }

    /// Keeps alerts and rule changes in `db` from now on, and takes the rule changes it holds
    /// into the audit trail (a restart keeps them).
    pub fn set_history(&mut self, db: Arc<warroom_history::HistoryDb>) {
        match db.with(|s| s.journal_entries(Some("rule_change"), 0, i64::MAX)) {
            Ok(entries) => {
                let mut audit = lock(&self.audit);
                for e in entries {
                    if let Ok(a) = serde_json::from_value::<AuditEntry>(e.body) {
                        audit.push_back(a);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the rule changes kept in the history database"),
        }
        self.history = Some(db);
    }

    /// Adds an entry to the history journal, if there is one (a failure is logged: the journal
    /// never stops the monitor). `at_ms` is on the night's clock (event time), like the
    /// history it is read beside; the body keeps the wall-clock times (fired, acknowledged).
    fn journal(&self, kind: &str, at_ms: i64, body: serde_json::Value) {
        if let Some(db) = &self.history {
            let e = warroom_history::JournalEntry { at_ms, kind: kind.into(), body };
            if let Err(err) = db.with(|s| s.journal(&e)) {
                tracing::warn!(error = %err, kind, "could not keep an entry in the history journal");
            }
        }
    }

    /// A change read from the rule log (every node's, in the log's order): put in force, and
    /// journaled and added to the audit trail unless this process made it or it is there
    /// already (a restarted node reads the whole log again).
    pub fn rule_change_from_log(&self, body: &str) {
        let rec: RuleRecord = match serde_json::from_str(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "a rule-log record that does not decode: skipped");
                return;
            }
        };
        let e = rec.entry;
        if let Err(err) = self.engine.set_rule(&e.venue, &e.new_rule, e.weights.clone()) {
            tracing::error!(error = %err, venue = %e.venue, rule = %e.new_rule, "a rule change from the log not taken here; this node ranks that venue by another rule");
            return;
        }
        if rec.node == self.rule_node {
            lock(&self.rules_applied).insert(rec.nonce);
            return;
        }
        if lock(&self.audit).contains(&e) {
            return;
        }
        self.keep_rule_change(&e, "race rule changed (on another API node)");
    }

    /// Logs a rule change, adds it to the audit trail (the newest 10,000) and journals it.
    fn keep_rule_change(&self, e: &AuditEntry, what: &str) {
        tracing::info!(target: "audit", by = %e.by, venue = %e.venue, old = %e.old_rule, new = %e.new_rule, "{what}");
        self.journal("rule_change", e.event_ms.unwrap_or(e.at_ms), serde_json::to_value(e).unwrap_or_default());
        let mut audit = lock(&self.audit);
        audit.push_back(e.clone());
        while audit.len() > 10_000 {
            audit.pop_front();
        }
    }

    /// Puts new tokens in force (the auth file changed): from the next request on, a revoked
    /// token is refused. Open WebSocket connections keep the caller they were opened with.
    pub fn replace_auth(&self, auth: Auth) {
        self.auth.store(Arc::new(auth));
    }
}

impl AppState {
    /// Pushes a newly published snapshot and its rank changes, and evaluates the alert rules
    /// on it (at wall-clock time now).
    pub fn on_publish(&self, snap: Arc<warroom_engine::Snapshot>, changes: Vec<warroom_engine::RankChange>) {
        self.on_publish_at(snap, changes, now_ms());
    }

    /// [`Self::on_publish`] at a given wall-clock time (tests drive the alert clock with it).
    pub fn on_publish_at(
        &self,
        snap: Arc<warroom_engine::Snapshot>,
        changes: Vec<warroom_engine::RankChange>,
        now: i64,
    ) {
        let t = Instant::now();
        let cost = self.engine.last_publish_cost();
        let m = &self.metrics;
        metrics::seconds(&m.publish, cost.wait + cost.fold + cost.build);
        metrics::seconds(&m.publish_wait, cost.wait);
        metrics::seconds(&m.publish_merge, cost.fold);
        metrics::seconds(&m.publish_rank_build, cost.build);
        m.changed_pairs.record(cost.changed_pairs as f64);
        let lag = self.ingest_lag();
        let as_of = snap.as_of_ms;
        let changed = lock(&self.alerts).evaluate(&snap, &changes, now, lag);
        if let Some(bytes) = self.hub.publish(snap, changes) {
            m.frame_bytes.record(bytes as f64);
        }
        for a in changed {
            tracing::info!(target: "alert", id = %a.id, state = ?a.state, severity = ?a.severity, value = a.value, "{}", a.message);
            if a.fired_at_ms.is_some() {
                let at = if as_of > 0 { as_of } else { now };
                self.journal("alert", at, serde_json::to_value(&a).unwrap_or_default());
            }
            self.hub.alert(&a, a.merchant_id.clone(), a.venue.clone(), a.rehearsal);
            // The webhook hears of alerts that fired and of their end, not of pending ones.
            if a.fired_at_ms.is_some() && lock(&self.alerts).config().webhook.is_some() {
                match self.webhook_tx.try_send(a) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(a)) => {
                        self.webhook_stats.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(alert = %a.id, queue = WEBHOOK_QUEUE, "alert webhook queue full (the webhook is down or slow); alert change dropped for the webhook (still on the screens and in /api/v1/alerts)");
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        self.keep_projection(as_of);
        metrics::seconds(&m.tick, cost.wait + cost.fold + cost.build + t.elapsed());
    }

    /// Once per minute of event time, the projection goes into the journal: the review
    /// reports how far it was off at each hour.
    fn keep_projection(&self, as_of: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.history.is_none() || as_of <= 0 {
            return;
        }
        let minute = as_of.div_euclid(60_000);
        if self.projected_minute.swap(minute, Relaxed) == minute {
            return;
        }
        if let Some(p) = self.projection(as_of) {
            self.journal("projection", p.at_ms, serde_json::to_value(&p).unwrap_or_default());
        }
    }

    /// New alert rules (hot reload); invalid ones are refused with every problem listed.
    pub fn reload_alerts(&self, cfg: alerts::AlertsConfig) -> Result<(), Vec<String>> {
        cfg.validate()?;
        lock(&self.alerts).reload(cfg);
        Ok(())
    }

    /// Messages behind the source's partitions' ends, when it knows them (Kafka).
    pub fn ingest_lag(&self) -> Option<u64> {
        self.source.as_ref()?.lag()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An error as the API returns it: a status and a JSON body whose message says what to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` with a token from the auth file (--auth-file)",
        )
    }
    fn forbidden(what: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this token's role may not {what}"))
    }
    fn not_found(what: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl AppState {
    fn authorize(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        let caller = token.and_then(|t| self.auth.load().check(t));
        match caller {
            Some(c) => Ok(c),
            None => {
                self.http.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(ApiError::unauthorized())
            }
        }
    }

    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.authorize(bearer(headers))
    }
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(screen))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::handler))
        .route("/api/v1/snapshot", get(snapshot))
        .route("/api/v1/venues/{venue}/race", get(race))
        .route("/api/v1/venues/{venue}/rule", put(put_rule).get(get_rule))
        .route("/api/v1/slots/{slot}", get(slot))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/{id}/ack", post(ack_alert))
        .route("/api/v1/history", get(history::history))
        .route("/api/v1/history/journal", get(history::journal))
        .route("/api/v1/history/curve", get(history::curve))
        .route("/api/v1/review", get(history::review))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stream", get(ws::upgrade))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/v1/openapi.json".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::count_requests))
        .with_state(state)
}

/// Serves until `shutdown` completes: connections idle for `api.idle_timeout` are closed,
/// requests taking longer than `api.request_timeout` are answered 408. The webhook sender runs
/// beside it; if it dies, `parts` says so.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(rx) = lock(&state.webhook_rx).take() {
        let task = tokio::spawn(webhook::run(state.clone(), rx));
        let parts = state.parts.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await {
                if e.is_panic() {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    parts.died("webhook sender", format!("panicked: {msg}"));
                }
            }
        });
    }
    let idle = state.config.idle_timeout;
    let app = router(state.clone()).layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.config.request_timeout,
    ));
    axum::serve(net::IdleTimeoutListener::new(listener, idle), app).with_graceful_shutdown(shutdown).await
}

async fn list_alerts(State(st): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let mut list = lock(&st.alerts).list();
    if caller.role == Role::Merchant {
        // A merchant sees the alerts about its own slots only.
        list.retain(|a| a.merchant_id.is_some() && a.merchant_id == caller.merchant_id);
    }
    Ok(Json(list).into_response())
}

async fn ack_alert(State(st): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("acknowledge alerts (admin only)"));
    }
    let acked = lock(&st.alerts).acknowledge(&id, &caller.name, now_ms());
    match acked {
        Some(a) => {
            tracing::info!(target: "audit", by = %caller.name, alert = %a.id, "alert acknowledged");
            let at = st.event_now();
            st.journal("alert", at, serde_json::to_value(&a).unwrap_or_default());
            st.hub.alert(&a, a.merchant_id.clone(), a.venue.clone(), a.rehearsal);
            Ok(Json(a).into_response())
        }
        None => Err(ApiError::not_found(format!("no active alert `{id}`; GET /api/v1/alerts lists them"))),
    }
}

async fn screen() -> Html<&'static str> {
    Html(include_str!("../assets/screen.html"))
}

async fn openapi(State(st): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    st.caller(&headers)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], include_str!("../assets/openapi.json")).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when a snapshot has been published, every part is alive and the source is not
/// degraded (brokers unreachable, or a dead-letter topic that does not take messages).
async fn readyz(State(st): State<Shared>) -> Response {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response();
    if let Some((part, why)) = st.parts.dead() {
        return unavailable(format!(
            "the {part} died ({why}); the monitor is exiting so that its supervisor restarts it from its last checkpoint"
        ));
    }
    if st.engine.publishes() == 0 {
        return unavailable("nothing published yet".into());
    }
    if let Some(why) = st.source.as_ref().and_then(|s| s.not_ready()) {
        return unavailable(why);
    }
    (StatusCode::OK, "ready\n").into_response()
}

#[derive(Deserialize)]
struct VenueQuery {
    venue: Option<String>,
}

async fn snapshot(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<VenueQuery>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let snap = st.engine.snapshot();
    Ok(match (&caller.merchant_id, caller.role) {
        (Some(m), Role::Merchant) => Json(merchant_view(&snap, m, q.venue.as_deref())).into_response(),
        _ => match q.venue {
            Some(v) => Json(venue_view(&snap, &v)).into_response(),
            None => Json(&*snap).into_response(),
        },
    })
}

async fn race(State(st): State<Shared>, headers: HeaderMap, Path(venue): Path<String>) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let snap = st.engine.snapshot();
    let v = snap.venues.iter().find(|v| v.venue == venue);
    match (&caller.merchant_id, v) {
        (_, None) => {
            Err(ApiError::not_found(format!("no venue `{venue}` has been seen; GET /api/v1/snapshot lists them")))
        }
        (Some(m), Some(_)) => {
            let view = merchant_view(&snap, m, Some(&venue));
            match view.venues.into_iter().next() {
                Some(mv) => Ok(Json(mv).into_response()),
                None => Err(ApiError::not_found(format!("merchant {m} has no slot in venue `{venue}`"))),
            }
        }
        (None, Some(v)) => Ok(Json(serde_json::json!({ "venue": v.venue, "race": v.race })).into_response()),
    }
}

async fn slot(State(st): State<Shared>, headers: HeaderMap, Path(slot): Path<String>) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let snap = st.engine.snapshot();
    // A merchant asking for another merchant's slot gets the same answer as for a slot that
    // does not exist: its existence is not revealed. For a slot that changed hands, a
    // merchant sees its own part of it (the events that named it).
    let not_found = || ApiError::not_found(format!("no slot `{slot}` visible to this token"));
    if let (Role::Merchant, Some(m)) = (caller.role, &caller.merchant_id) {
        let view = merchant_view(&snap, m, None);
        let s = view.slots.iter().find(|s| s.slot == slot).ok_or_else(not_found)?;
        let place = view.venues.iter().find(|v| v.venue == s.venue).and_then(|v| {
            v.race
                .ranking
                .iter()
                .find(|e| e.slot == slot)
                .map(|e| serde_json::json!({ "rule": v.race.rule, "entry": e }))
        });
        return Ok(Json(serde_json::json!({ "as_of_ms": snap.as_of_ms, "slot": s, "race": place })).into_response());
    }
    let s = snap.slots.iter().find(|s| s.slot == slot).ok_or_else(not_found)?;
    let place = snap
        .venues
        .iter()
        .find(|v| v.venue == s.venue)
        .and_then(|v| v.race.ranking.iter().find(|e| e.slot == slot).map(|e| (v.race.rule.clone(), e.clone())));
    Ok(Json(serde_json::json!({
        "as_of_ms": snap.as_of_ms,
        "slot": s,
        "race": place.map(|(rule, e)| serde_json::json!({ "rule": rule, "entry": e })),
    }))
    .into_response())
}

async fn get_rule(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(venue): Path<String>,
) -> Result<Response, ApiError> {
    st.caller(&headers)?;
    Ok(Json(serde_json::json!({ "venue": venue, "rule": st.engine.rule_of(&venue) })).into_response())
}

/// Body of `PUT /api/v1/venues/{venue}/rule`: a named rule, or a composite rule's weights.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    rule: String,
    #[serde(default)]
    weights: Option<std::collections::BTreeMap<warroom_engine::race::Input, f64>>,
    #[serde(default)]
    description: String,
}

async fn put_rule(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(venue): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("change race rules (admin only)"));
    }
    let body: RuleBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_rule",
            format!("{e}; send {{\"rule\": \"gmv\"}}, a rule named in [race.rules], or {{\"rule\": \"my-rule\", \"weights\": {{\"gmv\": 0.7, \"gmv_rise\": 0.3}}}}"),
        )
    })?;
    let spec = body.weights.map(|weights| RuleSpec { weights, description: body.description });
    let invalid =
        |e: warroom_engine::EngineError| ApiError::new(StatusCode::BAD_REQUEST, "invalid_rule", e.to_string());
    st.engine.check_rule(&venue, &body.rule, spec.clone()).map_err(invalid)?;
    let entry = AuditEntry {
        at_ms: now_ms(),
        event_ms: Some(st.event_now()),
        by: caller.name.clone(),
        action: "set_rule".into(),
        venue: venue.clone(),
        old_rule: st.engine.rule_of(&venue),
        new_rule: body.rule.clone(),
        weights: spec.clone(),
    };
    if let Some(log) = &st.rule_log {
        // Through the log: every API node, this one too, puts it in force in the log's order
        // (two changes made at once end as the later one everywhere).
        static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rec =
            serde_json::to_string(&RuleRecord { node: st.rule_node, nonce, entry: entry.clone() }).unwrap_or_default();
        if let Err(e) = log.append(&venue, &rec) {
            tracing::error!(error = %e, venue = %venue, "race rule not changed: the other API nodes could not be told");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rule_log_unavailable",
                format!("{e}; the rule is unchanged on every node: try again when Kafka answers"),
            ));
        }
        // Answer once this node has it in force too (read your own write).
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !lock(&st.rules_applied).remove(&nonce) {
            if Instant::now() > deadline {
                tracing::warn!(venue = %venue, "rule change stored in the log but not read back in 5 s; it takes effect here when it is");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    } else {
        st.engine.set_rule(&venue, &body.rule, spec).map_err(invalid)?;
    }
    st.keep_rule_change(&entry, "race rule changed");
    Ok(Json(entry).into_response())
}

async fn audit(State(st): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if !caller.can_read_all() {
        return Err(ApiError::forbidden("read the audit trail"));
    }
    let entries: Vec<AuditEntry> = st.audit.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    Ok(Json(entries).into_response())
}

/// The scope a caller may see, narrowed by what it asked for.
pub fn scope_for(caller: &Caller, venue: Option<String>) -> Scope {
    Scope::of(caller.own_merchant(), venue)
}

/// `[api]`: what one client may take of the server, and how long the server waits for it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// WebSocket connections at most, all tokens together; one more is refused (503, counted).
    pub max_connections: usize,
    /// WebSocket connections at most per token (a leaked token cannot take them all; 429).
    pub max_connections_per_token: usize,
    /// Largest message a WebSocket client may send (subscriptions are a few dozen bytes).
    pub ws_max_message_bytes: usize,
    /// A request (headers read to response written) taking longer is answered 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: std::time::Duration,
    /// An HTTP connection that sends no request for this long is closed (also the time a
    /// client has to send a request's headers).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: std::time::Duration,
    /// Data older than this (wall clock since the last applied event) is stale.
    #[serde(with = "humantime_serde")]
    pub stale_after: std::time::Duration,
    /// How often a snapshot is published and pushed (ticks at a fixed rate; a tick that takes
    /// longer delays the next, none piles up). The floor under the screens' latency.
    #[serde(with = "humantime_serde")]
    pub publish_interval: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_connections: 2000,
            max_connections_per_token: 100,
            ws_max_message_bytes: 4096,
            request_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            stale_after: std::time::Duration::from_secs(10),
            publish_interval: std::time::Duration::from_millis(250),
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.max_connections == 0 || self.max_connections_per_token == 0 {
            errs.push("api.max_connections and api.max_connections_per_token must be above 0".to_string());
        }
        if !(std::time::Duration::from_millis(50)..=std::time::Duration::from_secs(10)).contains(&self.publish_interval)
        {
            errs.push(
                "api.publish_interval must be between 50ms and 10s (e.g. \"250ms\", or \"100ms\" for 10 a second)"
                    .to_string(),
            );
        }
        if !(64..=1 << 20).contains(&self.ws_max_message_bytes) {
            errs.push("api.ws_max_message_bytes must be between 64 and 1048576".to_string());
        }
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("stale_after", self.stale_after),
        ] {
            if d.is_zero() {
                errs.push(format!("api.{name} must be above 0"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}
