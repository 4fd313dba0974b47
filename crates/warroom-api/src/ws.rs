//! `/api/v1/stream`: a full snapshot on connect, then every newly published state, plus
//! `race_change` and `alert` messages. Clients may narrow what they get by sending
//! `{"subscribe": {"venue": "main"}}`, `{"subscribe": {"merchant": "m-4"}}` (ops and admin),
//! or `{"subscribe": {}}` to widen again; a merchant's scope is fixed by its token.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

/// Bytes tungstenite reads from a client socket at a time.
const WS_READ_BUFFER: usize = 4096;

use crate::scope::{parse_subscription, Scope};
use crate::{bearer, scope_for, ApiError, AppState, Caller};

const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(15);
const PONG_WITHIN: Duration = Duration::from_secs(45);

#[derive(Deserialize)]
pub(crate) struct StreamQuery {
    venue: Option<String>,
}

/// Holds one WebSocket connection's place in the caps; gives it back when dropped.
struct Slot {
    st: Arc<AppState>,
    key: [u8; 32],
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.st.ws_open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Takes a place for `caller` under the global and per-token caps, or says why not.
fn take_slot(st: &Arc<AppState>, caller: &Caller) -> Result<Slot, ApiError> {
    let mut open = st.ws_open.lock().unwrap_or_else(|p| p.into_inner());
    let total: usize = open.values().sum();
    let cfg = &st.config;
    if total >= cfg.max_connections {
        st.hub.stats.refused_global.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("the server has {total} WebSocket connections, its limit (api.max_connections); try again later"),
        ));
    }
    let mine = open.get(&caller.key).copied().unwrap_or(0);
    if mine >= cfg.max_connections_per_token {
        st.hub.stats.refused_per_token.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections_for_token",
            format!(
                "this token already has {mine} WebSocket connections, its limit (api.max_connections_per_token); close some, or give each screen its own token"
            ),
        ));
    }
    *open.entry(caller.key).or_default() += 1;
    Ok(Slot { st: st.clone(), key: caller.key })
}

pub(crate) async fn upgrade(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The token: the Authorization header, else a `bearer.TOKEN` subprotocol (a browser
    // cannot set headers on a WebSocket). Not in the URL: URLs end up in proxies' logs.
    let offered: Vec<String> = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let token = bearer(&headers)
        .map(str::to_string)
        .or_else(|| offered.iter().find_map(|p| p.strip_prefix("bearer.").map(str::to_string)));
    let caller = st.authorize(token.as_deref())?;
    let slot = take_slot(&st, &caller)?;
    let venue = q.venue;
    let max = st.config.ws_max_message_bytes;
    // A small read buffer: clients send only short subscriptions, and tungstenite zeroes the
    // whole buffer each time the socket is polled for reading, which the client loop does on
    // every frame and event it sends (the default 128 KiB was a quarter of the monitor's CPU at
    // 20,000 slots).
    let ws = ws.read_buffer_size(WS_READ_BUFFER);
    Ok(ws.protocols(["warroom.v1"]).max_message_size(max).max_frame_size(max).on_upgrade(move |socket| async move {
        client(socket, st, caller, venue).await;
        drop(slot);
    }))
}

async fn client(socket: WebSocket, st: Arc<AppState>, caller: Caller, venue: Option<String>) {
    let stats = &st.hub.stats;
    stats.clients.fetch_add(1, Ordering::Relaxed);
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut scope = scope_for(&caller, venue);
    let (mut tx, mut rx) = socket.split();
    let (mut frames, mut events) = st.hub.subscribe();
    frames.mark_changed(); // the newest state at once
    let mut last_seq = 0u64;
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_pong = Instant::now();
    loop {
        let out = tokio::select! {
            changed = frames.changed() => {
                if changed.is_err() { break; }
                let frame = frames.borrow_and_update().clone();
                if last_seq > 0 && frame.seq > last_seq + 1 {
                    stats.frames_skipped.fetch_add(frame.seq - last_seq - 1, Ordering::Relaxed);
                }
                last_seq = frame.seq;
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                Message::Text(frame.encoded(&scope))
            }
            ev = events.recv() => match ev {
                Ok(ev) if ev.visible(&scope) => {
                    stats.events_sent.fetch_add(1, Ordering::Relaxed);
                    Message::Text(ev.encoded().clone())
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => { stats.events_lagged.fetch_add(n, Ordering::Relaxed); continue }
                Err(RecvError::Closed) => break,
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_WITHIN { break; }
                Message::Ping(Default::default())
            }
            msg = rx.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Pong(_))) => { last_pong = Instant::now(); continue }
                Some(Ok(Message::Text(t))) => match parse_subscription(&t) {
                    Ok(sub) => {
                        scope = Scope::subscribed(caller.own_merchant(), sub);
                        frames.mark_changed(); // the newest state in the new scope
                        continue
                    }
                    Err(help) => Message::Text(serde_json::json!({"type": "error", "message": help}).to_string().into()),
                },
                Some(Ok(_)) => continue,
            },
        };
        let len = match &out {
            Message::Text(t) => t.len() as u64,
            _ => 0,
        };
        match tokio::time::timeout(SEND_TIMEOUT, tx.send(out)).await {
            Ok(Ok(())) => {
                stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
            Ok(Err(_)) => break,
            Err(_) => {
                stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    stats.clients.fetch_sub(1, Ordering::Relaxed);
}
