//! Fan-out of published snapshots and events to WebSocket clients.
//!
//! Each publish becomes one [`Frame`] in a `watch` channel: a client always takes the newest
//! frame, so a slow client skips straight to the newest state (the skipped frames are
//! counted) and never holds up ingest or other clients. A frame is encoded once per scope
//! (all, one venue, one merchant, ...), on first use, and the bytes are shared by every client
//! of that scope. Rank changes and alerts go through a `broadcast` channel, encoded once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use warroom_engine::{RankChange, Snapshot};

use crate::scope::{change_visible, merchant_view, screen_frame, Scope};

/// One published state.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub snap: Arc<Snapshot>,
    encoded: Mutex<HashMap<Scope, Utf8Bytes>>,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: u64,
    data: &'a T,
    /// Every message of a rehearsal (演练) says so, not only the snapshot inside it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rehearsal: bool,
}

fn envelope<T: Serialize>(kind: &str, seq: u64, data: &T, rehearsal: bool) -> Utf8Bytes {
    serde_json::to_string(&Envelope { kind, seq, data, rehearsal }).expect("frames serialise").into()
}

impl Frame {
    /// The frame as the clients of `scope` get it, encoded once per scope.
    pub fn encoded(&self, scope: &Scope) -> Utf8Bytes {
        let mut cache = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = cache.get(scope) {
            return b.clone();
        }
        let r = self.snap.rehearsal.is_some();
        let bytes = match (&scope.merchant, &scope.venue) {
            (Some(m), v) => envelope("snapshot", self.seq, &merchant_view(&self.snap, m, v.as_deref()), r),
            (None, v) => envelope("snapshot", self.seq, &screen_frame(&self.snap, v.as_deref(), &scope.slots), r),
        };
        cache.insert(scope.clone(), bytes.clone());
        bytes
    }
}

/// A pushed event other than a snapshot.
#[derive(Debug)]
pub enum Event {
    RaceChange { change: RankChange, snap: Arc<Snapshot>, encoded: Utf8Bytes },
    Alert { merchant: Option<String>, venue: Option<String>, encoded: Utf8Bytes },
}

impl Event {
    pub fn visible(&self, scope: &Scope) -> bool {
        match self {
            Event::RaceChange { change, snap, .. } => change_visible(change, scope, snap),
            Event::Alert { merchant, venue, .. } => {
                (scope.merchant.is_none() || scope.merchant == *merchant)
                    && (scope.venue.is_none() || venue.is_none() || scope.venue == *venue)
            }
        }
    }

    pub fn encoded(&self) -> &Utf8Bytes {
        match self {
            Event::RaceChange { encoded, .. } | Event::Alert { encoded, .. } => encoded,
        }
    }
}

/// Counters of the push side, for `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    pub clients: AtomicU64,
    pub connections: AtomicU64,
    pub frames_published: AtomicU64,
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Frames a client never got because a newer one was ready when it could take one.
    pub frames_skipped: AtomicU64,
    /// Events a client missed because it fell behind the event buffer.
    pub events_lagged: AtomicU64,
    pub events_sent: AtomicU64,
    /// Clients dropped because a send did not complete within the send timeout.
    pub send_timeouts: AtomicU64,
    /// Bytes of the last full (unscoped) snapshot frame.
    pub last_frame_bytes: AtomicU64,
    /// Connections refused: the server's cap, a token's cap.
    pub refused_global: AtomicU64,
    pub refused_per_token: AtomicU64,
}

#[derive(Debug)]
pub struct Hub {
    frames: watch::Sender<Arc<Frame>>,
    events: broadcast::Sender<Arc<Event>>,
    pub stats: HubStats,
    seq: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        let first = Arc::new(Frame { seq: 0, snap: Arc::new(Snapshot::default()), encoded: Mutex::default() });
        Hub {
            frames: watch::channel(first).0,
            events: broadcast::channel(1024).0,
            stats: HubStats::default(),
            seq: AtomicU64::new(0),
        }
    }

    /// Offers a newly published snapshot and its rank changes to the clients. A snapshot
    /// equal to the last one (but for its publish time) is not pushed again. Returns the bytes
    /// of the full screen frame when one was pushed.
    pub fn publish(&self, snap: Arc<Snapshot>, changes: Vec<RankChange>) -> Option<usize> {
        let mut pushed = None;
        let unchanged = {
            let cur = self.frames.borrow();
            cur.seq > 0 && cur.snap.same_data(&snap)
        };
        if !unchanged {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let frame = Arc::new(Frame { seq, snap: snap.clone(), encoded: Mutex::default() });
            let full = frame.encoded(&Scope::default());
            self.stats.last_frame_bytes.store(full.len() as u64, Ordering::Relaxed);
            pushed = Some(full.len());
            self.stats.frames_published.fetch_add(1, Ordering::Relaxed);
            self.frames.send_replace(frame);
        }
        for change in changes {
            let seq = self.seq.load(Ordering::Relaxed);
            let encoded = envelope("race_change", seq, &change, snap.rehearsal.is_some());
            let _ = self.events.send(Arc::new(Event::RaceChange { change, snap: snap.clone(), encoded }));
        }
        pushed
    }

    /// Pushes an alert (any serialisable alert document) to the clients allowed to see it.
    pub fn alert<T: Serialize>(&self, alert: &T, merchant: Option<String>, venue: Option<String>, rehearsal: bool) {
        let encoded = envelope("alert", self.seq.load(Ordering::Relaxed), alert, rehearsal);
        let _ = self.events.send(Arc::new(Event::Alert { merchant, venue, encoded }));
    }

    pub fn latest(&self) -> Arc<Frame> {
        self.frames.borrow().clone()
    }

    pub fn subscribe(&self) -> (watch::Receiver<Arc<Frame>>, broadcast::Receiver<Arc<Event>>) {
        (self.frames.subscribe(), self.events.subscribe())
    }
}
