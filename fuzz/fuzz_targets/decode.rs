//! `decode` against serde_json: whatever the bytes, decoding never panics, is deterministic,
//! and an accepted event is exactly what a general JSON parser reads in the same bytes, within
//! the contract's bounds (names 1..128 bytes, money 0..10^12, ts within the limits).
//! A rejection names a known reason. The decoder's fast path (flat objects of plain values)
//! gives exactly what its general path (serde_json alone) gives: the same event or the same
//! reason and field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warroom_model::event::decode_general;
use warroom_model::{decode, Limits, Reason, MAX_AMOUNT_CENTS, MAX_ID_BYTES};

fuzz_target!(|data: &[u8]| {
    // As the Kafka source uses them: a clock allowance and a message time (minus the horizon).
    let now = 1_794_312_000_000;
    let kafka = Limits::with_future_allowance(4096, 120_000).at(now).sent_at(now - 60_000, 3_600_000);
    for limits in [Limits::default(), kafka] {
        let first = decode(data, &limits);
        let again = decode(data, &limits);
        match (&first, &again) {
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            (Err(a), Err(b)) => assert_eq!(a.reason, b.reason),
            _ => panic!("decode is not deterministic"),
        }
        match (&first, &decode_general(data, &limits)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "fast and general paths differ"),
            (Err(a), Err(b)) => assert_eq!((a.reason, a.field), (b.reason, b.field), "fast and general paths differ"),
            (a, b) => panic!("fast path {a:?}, general path {b:?}"),
        }
        match first {
            Err(r) => assert_eq!(Reason::from_name(r.reason.as_str()), Some(r.reason), "{r}"),
            Ok(e) => {
                assert!(data.len() <= limits.max_message_bytes);
                let v: Value = match serde_json::from_slice(data) {
                    Ok(v) => v,
                    // JSON numbers have no range (RFC 8259); serde_json refuses floats beyond
                    // f64, which an ignored unknown field may hold.
                    Err(err) if err.to_string().starts_with("number out of range") => continue,
                    // RFC 8259's grammar allows any \uXXXX, lone surrogates included (§8.2);
                    // serde_json refuses them. In a field the monitor reads, its decoder (also
                    // serde_json's) refuses them too, so an accepted event has them only in an
                    // ignored field.
                    Err(err) if err.to_string().contains("hex escape") || err.to_string().contains("surrogate") => {
                        continue
                    }
                    Err(err) => panic!("an accepted event is not JSON to serde_json: {err}"),
                };
                let o = v.as_object().expect("an accepted event is an object");
                let text = |k: &str| o.get(k).and_then(Value::as_str);
                assert_eq!(text("event_id"), Some(&*e.event_id));
                assert_eq!(text("user_id"), Some(&*e.user_id));
                assert_eq!(text("type"), Some(e.kind.as_str()));
                assert_eq!(o.get("ts").and_then(Value::as_i64), Some(e.ts));
                assert!(e.ts >= 0 && e.ts <= limits.max_ts_ms && e.ts >= limits.min_ts_ms, "ts {}", e.ts);
                for (k, got) in [
                    ("venue", &e.venue),
                    ("slot", &e.slot),
                    ("item_id", &e.item_id),
                    ("merchant_id", &e.merchant_id),
                    ("channel", &e.channel),
                    ("order_id", &e.order_id),
                ] {
                    assert_eq!(text(k), got.as_deref(), "{k}");
                }
                let names = [e.venue.as_ref(), e.slot.as_ref(), e.item_id.as_ref(), e.merchant_id.as_ref()];
                let more = [e.channel.as_ref(), e.order_id.as_ref(), Some(&e.event_id), Some(&e.user_id)];
                for n in names.into_iter().chain(more).flatten() {
                    assert!((1..=MAX_ID_BYTES).contains(&n.len()), "name of {} bytes accepted", n.len());
                }
                for (k, got) in [("amount_cents", e.amount_cents), ("coupon_cents", e.coupon_cents)] {
                    assert_eq!(o.get(k).and_then(Value::as_u64), got, "{k}");
                    assert!(got.is_none_or(|c| c <= MAX_AMOUNT_CENTS), "{k} {got:?}");
                }
            }
        }
    }
});
