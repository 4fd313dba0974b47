//! `/metrics` in the Prometheus text format: ingest, engine, API and WebSocket. The values
//! already live in atomics and the published snapshot, so the exposition is written directly.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{now_ms, ApiError, AppState, Source};

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

struct Prom(String);

impl Prom {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP warroom_{name} {help}\n# TYPE warroom_{name} {kind}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "warroom_{name} {v}");
    }
    fn labelled(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "warroom_{name}{{{labels}}} {v}");
    }
}

pub(crate) async fn handler(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if !caller.can_read_all() {
        return Err(ApiError::forbidden("read metrics (ops or admin)"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&st)).into_response())
}

pub fn render(st: &AppState) -> String {
    let mut p = Prom(String::with_capacity(8 << 10));
    let snap = st.engine.snapshot();
    let now = now_ms();
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    p.one("uptime_seconds", "gauge", "Seconds since the monitor started.", st.started.elapsed().as_secs());
    p.one(
        "parts_dead",
        "gauge",
        "1 when a part of the monitor died (it is exiting for its supervisor to restart it).",
        u8::from(st.parts.dead().is_some()),
    );
    p.one(
        "rehearsal",
        "gauge",
        "1 during a rehearsal (演练): every number here is replayed data, not live trade.",
        u8::from(st.engine.config().rehearsal.is_some()),
    );
    // Engine.
    let t = &snap.totals;
    p.one("gmv_cents_total", "counter", "GMV since the start, in cents (exact).", t.gmv_cents);
    p.one("paid_orders_total", "counter", "Paid orders since the start.", t.paid_orders);
    p.one("events_accepted_total", "counter", "Events accepted.", t.accepted);
    p.one("events_duplicate_total", "counter", "Duplicate events dropped.", t.duplicates);
    p.head("events_rejected_total", "counter", "Events rejected, by reason.");
    for (reason, n) in &snap.rejections {
        p.labelled("events_rejected_total", &format!("reason=\"{reason}\""), n);
    }
    p.one("events_late_total", "counter", "Accepted events older than their shard's watermark.", snap.counters.late);
    p.one("resent_pays_total", "counter", "Re-sent payments (accepted, no GMV).", snap.counters.resent_pays);
    p.one("dedupe_ids", "gauge", "Event ids remembered for de-duplication.", snap.counters.dedupe_ids);
    p.one("window_records", "gauge", "Records kept for exact windows.", snap.counters.window_records);
    p.one(
        "buyer_marks",
        "gauge",
        "(slot, buyer) pairs kept to count race-window buyers once.",
        snap.counters.buyer_marks,
    );
    p.one(
        "state_bytes",
        "gauge",
        "Bytes allocated by the event-driven state (dedupe sets, window records, buyer marks).",
        snap.counters.state_bytes,
    );
    p.one("publishes_total", "counter", "Snapshots published.", st.engine.publishes());
    p.one("event_time_ms", "gauge", "Event time the snapshot stands at (as_of_ms).", snap.as_of_ms);
    let age = if snap.last_event_at_ms > 0 { (now - snap.last_event_at_ms).max(0) } else { -1 };
    p.one("data_age_ms", "gauge", "Wall-clock ms since an event was last applied (-1: none yet).", age);
    p.one(
        "data_stale",
        "gauge",
        "1 when the data is older than the staleness limit.",
        u8::from(age < 0 || age > st.stale_after_ms),
    );
    // Ingest.
    if let Source::Kafka(k) = &st.source {
        let s = &k.stats;
        p.one("kafka_messages_total", "counter", "Messages consumed and applied.", r(&s.messages));
        p.one("kafka_rejected_total", "counter", "Messages rejected by the decoder.", r(&s.rejected));
        let d = k.dead_letters();
        p.one(
            "kafka_dead_lettered_total",
            "counter",
            "Dead letters the broker confirmed (delivery reports, not sends).",
            r(&d.delivered),
        );
        p.one(
            "kafka_dlq_failed_attempts_total",
            "counter",
            "Dead-letter delivery attempts that failed (each letter is retried until delivered).",
            r(&d.failed_attempts),
        );
        p.one(
            "kafka_dlq_pending",
            "gauge",
            "Dead letters not delivered yet (kept in memory).",
            k.dead_letters_pending(),
        );
        p.one(
            "kafka_dlq_healthy",
            "gauge",
            "0 while the dead-letter topic does not take messages (checkpoints and commits wait).",
            u8::from(k.dead_letter_problem().is_none()),
        );
        p.one("kafka_checkpoints_total", "counter", "Checkpoints written.", r(&s.checkpoints));
        p.one("kafka_assignments_total", "counter", "Partition assignments received.", r(&s.assignments));
        p.one(
            "kafka_idle_partitions",
            "gauge",
            "Assigned partitions caught up and silent (they hold back no eviction).",
            r(&s.idle_partitions),
        );
        p.one("kafka_health", "gauge", "0 starting, 1 ok, 2 degraded.", s.health() as u8);
        let last = r(&s.last_checkpoint_ms) as i64;
        let ckpt_age = if last > 0 { (now - last).max(0) as f64 / 1000.0 } else { -1.0 };
        p.one("kafka_checkpoint_age_seconds", "gauge", "Seconds since the last checkpoint (-1: none yet).", ckpt_age);
        p.one(
            "kafka_checkpoint_duration_seconds",
            "gauge",
            "Duration of the last checkpoint (write and fsync).",
            r(&s.last_checkpoint_duration_us) as f64 / 1e6,
        );
        p.one("kafka_consume_rate", "gauge", "Messages per second over the last few seconds.", s.rate());
        let positions = k.positions();
        let ends = s.partition_ends();
        p.head("kafka_partition_position", "gauge", "Next offset the state covers, per partition.");
        for (part, next) in &positions.next {
            p.labelled("kafka_partition_position", &format!("partition=\"{part}\""), next);
        }
        p.head("kafka_partition_lag", "gauge", "Messages behind the partition's end (from librdkafka statistics).");
        for (part, end) in &ends {
            let pos = positions.next.get(part).copied().unwrap_or(0);
            p.labelled("kafka_partition_lag", &format!("partition=\"{part}\""), (end - pos).max(0));
        }
    }
    // API and WebSocket.
    let h = &st.hub.stats;
    p.one("http_requests_total", "counter", "HTTP requests served.", r(&st.http.requests));
    p.one("http_client_errors_total", "counter", "Responses 4xx.", r(&st.http.client_errors));
    p.one("http_server_errors_total", "counter", "Responses 5xx.", r(&st.http.server_errors));
    p.one("auth_failures_total", "counter", "Requests without a valid token.", r(&st.http.auth_failures));
    p.one("ws_clients", "gauge", "WebSocket clients connected.", r(&h.clients));
    p.one("ws_connections_total", "counter", "WebSocket connections accepted.", r(&h.connections));
    p.head("ws_refused_total", "counter", "WebSocket connections refused, by the cap that refused them.");
    p.labelled("ws_refused_total", "cap=\"server\"", r(&h.refused_global));
    p.labelled("ws_refused_total", "cap=\"token\"", r(&h.refused_per_token));
    p.one("ws_frames_published_total", "counter", "Snapshot frames published.", r(&h.frames_published));
    p.one("ws_frames_sent_total", "counter", "Snapshot frames sent (all clients).", r(&h.frames_sent));
    p.one("ws_frames_skipped_total", "counter", "Frames slow clients skipped to get the newest.", r(&h.frames_skipped));
    p.one("ws_events_sent_total", "counter", "Race-change and alert messages sent.", r(&h.events_sent));
    p.one("ws_events_lagged_total", "counter", "Events slow clients missed.", r(&h.events_lagged));
    p.one("ws_send_timeouts_total", "counter", "Clients dropped for not reading.", r(&h.send_timeouts));
    p.one("ws_bytes_sent_total", "counter", "Bytes of text frames sent.", r(&h.bytes_sent));
    p.one("ws_last_frame_bytes", "gauge", "Size of the last full snapshot frame.", r(&h.last_frame_bytes));
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
    p.one("alert_evaluations_total", "counter", "Alert rule evaluations (one per publish).", stats.evaluations);
    p.one("alert_suppressed_total", "counter", "Business rule evaluations held back by stale data.", stats.suppressed);
    p.one("alerts_fired_total", "counter", "Alerts that fired.", stats.fired);
    p.one("alerts_resolved_total", "counter", "Alerts that resolved.", stats.resolved);
    p.head("alerts_active", "gauge", "Pending and firing alerts.");
    for state in ["pending", "firing"] {
        for sev in ["info", "warning", "critical"] {
            let n = active.iter().filter(|(a, b)| a == state && b == sev).count();
            p.labelled("alerts_active", &format!("state=\"{state}\",severity=\"{sev}\""), n);
        }
    }
    p.one("alert_webhook_sent_total", "counter", "Alert webhook deliveries.", r(&st.webhook_stats.sent));
    p.one("alert_webhook_retries_total", "counter", "Alert webhook retries.", r(&st.webhook_stats.retries));
    p.one("alert_webhook_failed_total", "counter", "Alert webhook deliveries given up.", r(&st.webhook_stats.failed));
    p.one(
        "alert_webhook_dropped_total",
        "counter",
        "Alert changes dropped because the webhook's queue was full.",
        r(&st.webhook_stats.dropped),
    );
    p.0
}
