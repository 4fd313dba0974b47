//! `/metrics` in the Prometheus text format: ingest, engine, API and WebSocket, through the
//! `metrics` facade and its Prometheus exporter. Each monitor (each [`crate::AppState`]) has
//! its own recorder, so that monitors in one process (the tests) keep their numbers apart.
//!
//! Two kinds of metric: values that already live in atomics and in the published snapshot are
//! set when `/metrics` is read (one line each in [`render`]); the costs of the night's work
//! are histograms recorded where the work happens ([`Registry`]): a publish and its parts,
//! frame sizes, a Kafka batch's apply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{describe_histogram, histogram, Histogram, Unit};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use warroom_status::Exposition;
use warroom_status::Kind::{Counter, Gauge};

use crate::{now_ms, ApiError, AppState};

/// Seconds: 100 us to 10 s.
const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Bytes of a frame: 1 kB to 8 MB.
const BYTES: &[f64] = &[1e3, 4e3, 16e3, 32e3, 64e3, 128e3, 512e3, 2e6, 8e6];
/// Pairs changed in a publish: 1 to 100,000.
const COUNT: &[f64] = &[1.0, 10.0, 100.0, 1e3, 1e4, 1e5];

/// A monitor's recorder and the histograms recorded into it from the threads that do the work.
pub struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// A whole publish tick: engine publish (wait, merge, ranking and snapshot), alerts, hub.
    pub tick: Histogram,
    /// The engine's publish: waiting for the shards' deltas, folding them in (merge), ranking
    /// and building the snapshot.
    pub publish: Histogram,
    pub publish_wait: Histogram,
    pub publish_merge: Histogram,
    pub publish_rank_build: Histogram,
    /// Pairs the shards' deltas carried in a publish.
    pub changed_pairs: Histogram,
    /// Bytes of the full screen frame of each publish pushed.
    pub frame_bytes: Histogram,
    /// A Kafka batch's decode and apply, in the applier thread.
    pub batch_apply: Histogram,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let buckets = |b: PrometheusBuilder, suffix: &str, v: &[f64]| {
            b.set_buckets_for_metric(Matcher::Suffix(suffix.into()), v).expect("buckets are not empty")
        };
        let b = buckets(PrometheusBuilder::new(), "_seconds", SECONDS);
        let b = buckets(b, "_bytes", BYTES);
        let b = buckets(b, "_pairs", COUNT);
        let recorder = b.build_recorder();
        let handle = recorder.handle();
        let h = |name: &'static str, unit: Unit, help: &'static str| {
            ::metrics::with_local_recorder(&recorder, || {
                describe_histogram!(name, unit, help);
                histogram!(name)
            })
        };
        Registry {
            tick: h("warroom_publish_tick_seconds", Unit::Seconds, "A publish tick: engine publish, alerts, frames."),
            publish: h(
                "warroom_publish_seconds",
                Unit::Seconds,
                "The engine's publish: wait, merge, ranking, snapshot.",
            ),
            publish_wait: h(
                "warroom_publish_wait_seconds",
                Unit::Seconds,
                "Waiting for the shards' writers to hand over their deltas.",
            ),
            publish_merge: h(
                "warroom_publish_merge_seconds",
                Unit::Seconds,
                "Folding the shards' deltas in and re-summing what changed.",
            ),
            publish_rank_build: h(
                "warroom_publish_rank_build_seconds",
                Unit::Seconds,
                "Ranking the races and building the snapshot.",
            ),
            changed_pairs: h(
                "warroom_publish_changed_pairs",
                Unit::Count,
                "(Slot, merchant) pairs changed in a publish.",
            ),
            frame_bytes: h("warroom_ws_frame_bytes", Unit::Bytes, "Bytes of the full screen frame of each publish."),
            batch_apply: h(
                "warroom_kafka_batch_apply_seconds",
                Unit::Seconds,
                "A Kafka batch's decode and apply (applier thread).",
            ),
            recorder,
            handle,
        }
    }
}

/// Records a duration into a histogram, in seconds.
pub fn seconds(h: &Histogram, d: Duration) {
    h.record(d.as_secs_f64());
}

#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub auth_failures: AtomicU64,
}

#[derive(Debug, Default)]
pub struct WebhookStats {
    pub sent: AtomicU64,
    pub retries: AtomicU64,
    pub failed: AtomicU64,
    /// Alert changes dropped because the webhook's queue was full.
    pub dropped: AtomicU64,
    /// Alert changes another API node claimed (and sends).
    pub claimed_elsewhere: AtomicU64,
}

pub(crate) async fn count_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    st.http.requests.fetch_add(1, Ordering::Relaxed);
    if resp.status().is_client_error() {
        st.http.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if resp.status().is_server_error() {
        st.http.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

pub(crate) async fn handler(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if !caller.can_read_all() {
        return Err(ApiError::forbidden("read metrics (ops or admin)"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&st)).into_response())
}

pub fn render(st: &AppState) -> String {
    ::metrics::with_local_recorder(&st.metrics.recorder, || set_values(st));
    st.metrics.handle.run_upkeep();
    st.metrics.handle.render()
}

fn set_values(st: &AppState) {
    let p = Exposition;
    let snap = st.engine.snapshot();
    let now = now_ms();
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    p.one("uptime_seconds", Gauge, "Seconds since the monitor started.", st.started.elapsed().as_secs());
    p.one(
        "parts_dead",
        Gauge,
        "1 when a part of the monitor died (it is exiting for its supervisor to restart it).",
        u8::from(st.parts.dead().is_some()),
    );
    p.one(
        "rehearsal",
        Gauge,
        "1 during a rehearsal (演练): every number here is replayed data, not live trade.",
        u8::from(st.engine.config().rehearsal.is_some()),
    );
    // Engine.
    let t = &snap.totals;
    p.one("gmv_cents_total", Counter, "GMV since the start, in cents (exact).", t.gmv_cents);
    p.one("paid_orders_total", Counter, "Paid orders since the start.", t.paid_orders);
    p.one("events_accepted_total", Counter, "Events accepted.", t.accepted);
    p.one("events_duplicate_total", Counter, "Duplicate events dropped.", t.duplicates);
    p.head("events_rejected_total", Counter, "Events rejected, by reason.");
    for (reason, n) in &snap.rejections {
        p.labelled("events_rejected_total", Counter, &[("reason", reason.clone())], *n);
    }
    p.one("events_late_total", Counter, "Accepted events older than their shard's watermark.", snap.counters.late);
    p.one("resent_pays_total", Counter, "Re-sent payments (accepted, no GMV).", snap.counters.resent_pays);
    p.one("dedupe_ids", Gauge, "Event ids remembered for de-duplication.", snap.counters.dedupe_ids);
    p.one("window_records", Gauge, "Records kept for exact windows.", snap.counters.window_records);
    p.one(
        "buyer_marks",
        Gauge,
        "(slot, buyer) pairs kept to count race-window buyers once.",
        snap.counters.buyer_marks,
    );
    p.one(
        "state_bytes",
        Gauge,
        "Bytes allocated by the event-driven state (dedupe sets, window records, buyer marks).",
        snap.counters.state_bytes,
    );
    p.one("publishes_total", Counter, "Snapshots published.", st.engine.publishes());
    p.one("event_time_ms", Gauge, "Event time the snapshot stands at (as_of_ms).", snap.as_of_ms);
    let age = if snap.last_event_at_ms > 0 { (now - snap.last_event_at_ms).max(0) } else { -1 };
    p.one("data_age_ms", Gauge, "Wall-clock ms since an event was last applied (-1: none yet).", age);
    p.one(
        "data_stale",
        Gauge,
        "1 when the data is older than the staleness limit.",
        u8::from(age < 0 || age > st.stale_after_ms),
    );
    // Ingest: the source describes its own.
    if let Some(source) = &st.source {
        source.expose_metrics(&p, now);
    }
    // API and WebSocket.
    let h = &st.hub.stats;
    p.one("http_requests_total", Counter, "HTTP requests served.", r(&st.http.requests));
    p.one("http_client_errors_total", Counter, "Responses 4xx.", r(&st.http.client_errors));
    p.one("http_server_errors_total", Counter, "Responses 5xx.", r(&st.http.server_errors));
    p.one("auth_failures_total", Counter, "Requests without a valid token.", r(&st.http.auth_failures));
    p.one("ws_clients", Gauge, "WebSocket clients connected.", r(&h.clients));
    p.one("ws_connections_total", Counter, "WebSocket connections accepted.", r(&h.connections));
    p.head("ws_refused_total", Counter, "WebSocket connections refused, by the cap that refused them.");
    p.labelled("ws_refused_total", Counter, &[("cap", "server".into())], r(&h.refused_global));
    p.labelled("ws_refused_total", Counter, &[("cap", "token".into())], r(&h.refused_per_token));
    p.one("ws_frames_published_total", Counter, "Snapshot frames published.", r(&h.frames_published));
    p.one("ws_frames_sent_total", Counter, "Snapshot frames sent (all clients).", r(&h.frames_sent));
    p.one("ws_frames_skipped_total", Counter, "Frames slow clients skipped to get the newest.", r(&h.frames_skipped));
    p.one("ws_events_sent_total", Counter, "Race-change and alert messages sent.", r(&h.events_sent));
    p.one("ws_events_lagged_total", Counter, "Events slow clients missed.", r(&h.events_lagged));
    p.one("ws_send_timeouts_total", Counter, "Clients dropped for not reading.", r(&h.send_timeouts));
    p.one("ws_bytes_sent_total", Counter, "Bytes of text frames sent.", r(&h.bytes_sent));
    p.one("ws_last_frame_bytes", Gauge, "Size of the last full snapshot frame.", r(&h.last_frame_bytes));
    // Alerts.
    let (stats, active) = {
        let a = st.alerts.lock().unwrap_or_else(|p| p.into_inner());
        let active: Vec<(String, String)> = a
            .list()
            .into_iter()
            .filter(|x| x.state != crate::alerts::State::Resolved)
            .map(|x| (format!("{:?}", x.state).to_lowercase(), format!("{:?}", x.severity).to_lowercase()))
            .collect();
        (a.stats, active)
    };
    p.one("alert_evaluations_total", Counter, "Alert rule evaluations (one per publish).", stats.evaluations);
    p.one("alert_suppressed_total", Counter, "Business rule evaluations held back by stale data.", stats.suppressed);
    p.one("alerts_fired_total", Counter, "Alerts that fired.", stats.fired);
    p.one(
        "alert_cooldown_suppressed_total",
        Counter,
        "Rank changes of a slot inside its rule's cooldown (no new alert).",
        stats.cooldown_suppressed,
    );
    p.one("alerts_resolved_total", Counter, "Alerts that resolved.", stats.resolved);
    p.head("alerts_active", Gauge, "Pending and firing alerts.");
    for state in ["pending", "firing"] {
        for sev in ["info", "warning", "critical"] {
            let n = active.iter().filter(|(a, b)| a == state && b == sev).count();
            p.labelled("alerts_active", Gauge, &[("state", state.into()), ("severity", sev.into())], n);
        }
    }
    p.one("alert_webhook_sent_total", Counter, "Alert webhook deliveries.", r(&st.webhook_stats.sent));
    p.one("alert_webhook_retries_total", Counter, "Alert webhook retries.", r(&st.webhook_stats.retries));
    p.one("alert_webhook_failed_total", Counter, "Alert webhook deliveries given up.", r(&st.webhook_stats.failed));
    p.one(
        "alert_webhook_claimed_elsewhere_total",
        Counter,
        "Alert changes another API node sends (several nodes evaluate the same alerts).",
        r(&st.webhook_stats.claimed_elsewhere),
    );
    p.one(
        "alert_webhook_dropped_total",
        Counter,
        "Alert changes dropped because the webhook's queue was full.",
        r(&st.webhook_stats.dropped),
    );
    if let Some(h) = &st.history {
        p.one("history_writes_total", Counter, "History batches stored.", r(&h.writes));
        p.one(
            "history_write_errors_total",
            Counter,
            "History batches the database refused (retried; no checkpoint meanwhile).",
            r(&h.write_errors),
        );
        p.one("history_rows_written_total", Counter, "Per-minute rows written.", r(&h.rows_written));
        p.one("history_last_write_us", Gauge, "Duration of the last batch write, µs.", r(&h.last_write_us));
        if let Ok(bytes) = h.read(|s| s.size_bytes()) {
            p.one("history_database_bytes", Gauge, "Size of the history database.", bytes);
        }
    }
}
