//! The WebSocket subscribe message, from the bytes a client sends to the frame it gets: parsing
//! never panics, a merchant is held to its own merchant whatever it asks, and the views built
//! for the resulting scope never show another merchant's slots or money.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warroom_engine::views::{merchant_view, parse_subscription, venue_view, Scope};
use warroom_engine::Snapshot;

/// A snapshot with several merchants, venues and a slot that changed hands (fuzz/snapshot.json,
/// written by the engine from a generated night).
fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| serde_json::from_str(include_str!("../snapshot.json")).expect("fuzz/snapshot.json"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(sub) = parse_subscription(text) else { return };
    let snap = snapshot();
    let own = "m-4";
    let scope = Scope::subscribed(Some(own), sub.clone());
    assert_eq!(scope.merchant.as_deref(), Some(own), "a merchant left its own scope");
    assert_eq!(scope.venue, sub.venue);
    let view = merchant_view(snap, own, scope.venue.as_deref());
    let json = serde_json::to_string(&view).unwrap();
    let others = snap
        .slot_merchants
        .iter()
        .map(|p| p.merchant_id.as_str())
        .chain(snap.slots.iter().map(|s| s.merchant_id.as_str()));
    for m in others.filter(|m| *m != own && !m.is_empty()) {
        assert!(!json.contains(&format!("\"{m}\"")), "merchant {own}'s view names {m}");
    }
    for s in &view.slots {
        assert!(
            snap.slots.iter().any(|x| x.slot == s.slot && x.merchant_id == own)
                || snap.slot_merchants.iter().any(|p| p.slot == s.slot && p.merchant_id == own),
            "slot {} in {own}'s view is not one of its slots",
            s.slot
        );
    }
    let ops = Scope::subscribed(None, sub);
    if let Some(v) = &ops.venue {
        let cut = venue_view(snap, v);
        assert!(cut.slots.iter().all(|s| &s.venue == v));
        let _ = serde_json::to_string(&cut).unwrap();
    }
    if let Some(m) = &ops.merchant {
        let _ = serde_json::to_string(&merchant_view(snap, m, ops.venue.as_deref())).unwrap();
    }
});
