//! Events and the strict decoder.
//!
//! The decoder walks the JSON object once with serde_json, borrowing strings from the input
//! (a [`Str`] owns its text only when the JSON string holds escapes). Each field is checked as
//! it is read, so the first problem found names its field; required fields are checked after
//! the object closes. Unknown fields are skipped without being materialised.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::reject::{Reason, Rejection};
use crate::{MAX_AMOUNT_CENTS, MAX_ID_BYTES};

/// The seven event types of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventKind {
    Impression,
    Click,
    Favorite,
    Cart,
    Order,
    Pay,
    Refund,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Impression,
        EventKind::Click,
        EventKind::Favorite,
        EventKind::Cart,
        EventKind::Order,
        EventKind::Pay,
        EventKind::Refund,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "impression" => EventKind::Impression,
            "click" => EventKind::Click,
            "favorite" => EventKind::Favorite,
            "cart" => EventKind::Cart,
            "order" => EventKind::Order,
            "pay" => EventKind::Pay,
            "refund" => EventKind::Refund,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::Favorite => "favorite",
            EventKind::Cart => "cart",
            EventKind::Order => "order",
            EventKind::Pay => "pay",
            EventKind::Refund => "refund",
        }
    }

    /// `order`, `pay` and `refund` carry an order and an amount.
    pub fn needs_order(self) -> bool {
        matches!(self, EventKind::Order | EventKind::Pay | EventKind::Refund)
    }
}

/// A string borrowed from the message when possible.
pub type Str<'a> = Cow<'a, str>;

/// One valid event, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub event_id: Str<'a>,
    pub kind: EventKind,
    pub ts: i64,
    pub user_id: Str<'a>,
    pub venue: Option<Str<'a>>,
    pub slot: Option<Str<'a>>,
    pub item_id: Option<Str<'a>>,
    pub merchant_id: Option<Str<'a>>,
    pub channel: Option<Str<'a>>,
    pub order_id: Option<Str<'a>>,
    pub amount_cents: Option<u64>,
    pub coupon_cents: Option<u64>,
}

/// Limits applied while decoding. They are configuration, not contract: the contract says
/// "oversized message" without a number, and lets a monitor refuse events stamped further
/// ahead of its own wall clock than an allowance (EVENTS.md v1.1), so that one producer's
/// wrong clock costs only its own events.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages longer than this many bytes are rejected as `too_large` without parsing.
    pub max_message_bytes: usize,
    /// How far ahead of the wall clock `ts` may be; `None`: no bound (the embedded simulator,
    /// whose clock is its own, and tests). Applied through [`Limits::at`].
    pub max_future_ms: Option<i64>,
    /// The bound in force: `ts` above it is rejected as `ts_in_future`. [`Limits::at`] sets
    /// it from the wall clock at the moment a batch is read, so it follows the clock for as
    /// long as the monitor runs (weeks, from the 预热 on).
    pub max_ts_ms: i64,
    /// `ts` below this is rejected as `beyond_dedupe_horizon`: set per message by a source
    /// that knows when the message was sent (Kafka's message timestamp minus the dedupe
    /// horizon, see [`Limits::sent_at`]), so an event stamped far in the past is refused even
    /// when it is the first one a partition delivers.
    pub min_ts_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: 64 * 1024, max_future_ms: None, max_ts_ms: i64::MAX, min_ts_ms: i64::MIN }
    }
}

impl Limits {
    /// Limits whose future bound is `max_future_ms` past the wall clock at the time of use.
    pub fn with_future_allowance(max_message_bytes: usize, max_future_ms: i64) -> Self {
        Limits { max_message_bytes, max_future_ms: Some(max_future_ms), max_ts_ms: i64::MAX, min_ts_ms: i64::MIN }
    }

    /// These limits for a message sent at `sent_ms` (its Kafka timestamp; negative: unknown)
    /// by a producer whose events older than `horizon_ms` before that cannot be checked for
    /// re-deliveries.
    #[inline]
    pub fn sent_at(&self, sent_ms: i64, horizon_ms: i64) -> Limits {
        let min_ts_ms = if sent_ms < 0 { i64::MIN } else { sent_ms.saturating_sub(horizon_ms) };
        Limits { min_ts_ms, ..*self }
    }

    /// These limits for messages read at wall-clock time `now_ms`.
    #[inline]
    pub fn at(&self, now_ms: i64) -> Limits {
        let max_ts_ms = self.max_future_ms.map_or(i64::MAX, |f| now_ms.saturating_add(f));
        Limits { max_ts_ms, ..*self }
    }

    /// These limits for messages read now (one clock read; call it once per batch).
    pub fn now(&self) -> Limits {
        if self.max_future_ms.is_none() {
            return *self;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.at(now)
    }
}

/// Decodes and validates one message.
#[inline]
pub fn decode<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Event<'a>, Rejection> {
    decode_with(bytes, limits, true)
}

/// [`decode`] without its fast path (every message through serde_json): what tests and the
/// fuzz target hold the fast path to.
#[doc(hidden)]
pub fn decode_general<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Event<'a>, Rejection> {
    decode_with(bytes, limits, false)
}

#[inline(always)]
fn decode_with<'a>(bytes: &'a [u8], limits: &Limits, fast: bool) -> Result<Event<'a>, Rejection> {
    if bytes.len() > limits.max_message_bytes {
        return Err(Rejection::new(Reason::TooLarge, None).with_detail(format!(
            "{} bytes > {}",
            bytes.len(),
            limits.max_message_bytes
        )));
    }
    // One UTF-8 check of the whole message lets serde_json read it as `str` and skip its
    // per-string validation (measurably faster than `from_slice`); simdutf8 checks at memory
    // speed, std only words the error of an invalid message.
    let text = match simdutf8::basic::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => {
            let e = std::str::from_utf8(bytes).err().map(|e| e.to_string()).unwrap_or_default();
            return Err(Rejection::new(Reason::NotJson, None).with_detail(e));
        }
    };
    let mut raw = RawEvent::default();
    if !fast || crate::flat::read(text, &mut raw).is_none() {
        raw = read_general(text)?;
    }
    raw.validate(limits)
}

/// The general path: serde_json reads any JSON and the visitor names what is wrong.
fn read_general(text: &str) -> Result<RawEvent<'_>, Rejection> {
    let failure: Cell<Option<(Reason, Option<&'static str>)>> = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    // The visitor fills `raw` in place: the event is built once, not moved through serde's
    // return values (those moves showed up as 5% memmove in profiles).
    let mut raw = RawEvent::default();
    if let Err(e) = de.deserialize_any(EventVisitor { failure: &failure, raw: &mut raw }) {
        return Err(classify(e, failure.get()));
    }
    if let Err(e) = de.end() {
        return Err(Rejection::new(Reason::NotJson, None).with_detail(e.to_string()));
    }
    Ok(raw)
}

fn classify(e: serde_json::Error, noted: Option<(Reason, Option<&'static str>)>) -> Rejection {
    if let Some((reason, field)) = noted {
        return Rejection::new(reason, field);
    }
    match e.classify() {
        serde_json::error::Category::Data => Rejection::new(Reason::NotObject, None).with_detail(e.to_string()),
        _ => Rejection::new(Reason::NotJson, None).with_detail(e.to_string()),
    }
}

/// Fields as read, before the cross-field checks.
#[derive(Default)]
pub(crate) struct RawEvent<'a> {
    pub(crate) event_id: Option<Str<'a>>,
    pub(crate) kind: Option<Str<'a>>,
    pub(crate) ts: Option<i64>,
    pub(crate) user_id: Option<Str<'a>>,
    pub(crate) venue: Option<Str<'a>>,
    pub(crate) slot: Option<Str<'a>>,
    pub(crate) item_id: Option<Str<'a>>,
    pub(crate) merchant_id: Option<Str<'a>>,
    pub(crate) channel: Option<Str<'a>>,
    pub(crate) order_id: Option<Str<'a>>,
    pub(crate) amount_cents: Option<u64>,
    pub(crate) coupon_cents: Option<u64>,
}

impl<'a> RawEvent<'a> {
    fn validate(self, limits: &Limits) -> Result<Event<'a>, Rejection> {
        let missing = |f| Rejection::new(Reason::MissingField, Some(f));
        let event_id = self.event_id.ok_or_else(|| missing("event_id"))?;
        check_id(&event_id, "event_id")?;
        let kind_s = self.kind.ok_or_else(|| missing("type"))?;
        let kind = EventKind::parse(&kind_s).ok_or_else(|| {
            let shown: String = kind_s.chars().take(32).collect();
            Rejection::new(Reason::UnknownType, Some("type")).with_detail(shown)
        })?;
        let ts = self.ts.ok_or_else(|| missing("ts"))?;
        if ts < 0 {
            return Err(Rejection::new(Reason::TsOutOfRange, Some("ts")).with_detail(ts.to_string()));
        }
        if ts < limits.min_ts_ms {
            return Err(Rejection::new(Reason::BeyondDedupeHorizon, Some("ts")).with_detail(format!(
                "ts {ts} is older than {} (when its message was sent, minus the de-duplication horizon): check the producer's clock",
                limits.min_ts_ms
            )));
        }
        if ts > limits.max_ts_ms {
            let ahead = ts.saturating_sub(limits.max_ts_ms.saturating_sub(limits.max_future_ms.unwrap_or(0)));
            return Err(Rejection::new(Reason::TsInFuture, Some("ts")).with_detail(format!(
                "ts {ts} is {ahead} ms ahead of the monitor's clock; the allowance is {} ms",
                limits.max_future_ms.unwrap_or(0)
            )));
        }
        let user_id = self.user_id.ok_or_else(|| missing("user_id"))?;
        check_id(&user_id, "user_id")?;
        // One branch for the usual case (every name in bounds); the field is found after.
        let fits = |v: &Option<Str<'_>>| v.as_ref().is_none_or(|s| id_fits(s));
        if !(fits(&self.venue)
            & fits(&self.slot)
            & fits(&self.item_id)
            & fits(&self.merchant_id)
            & fits(&self.channel)
            & fits(&self.order_id))
        {
            for (v, f) in [
                (&self.venue, "venue"),
                (&self.slot, "slot"),
                (&self.item_id, "item_id"),
                (&self.merchant_id, "merchant_id"),
                (&self.channel, "channel"),
                (&self.order_id, "order_id"),
            ] {
                if let Some(v) = v {
                    check_id(v, f)?;
                }
            }
        }
        if kind.needs_order() {
            if self.order_id.is_none() {
                return Err(missing("order_id"));
            }
            if self.amount_cents.is_none() {
                return Err(missing("amount_cents"));
            }
        }
        Ok(Event {
            event_id,
            kind,
            ts,
            user_id,
            venue: self.venue,
            slot: self.slot,
            item_id: self.item_id,
            merchant_id: self.merchant_id,
            channel: self.channel,
            order_id: self.order_id,
            amount_cents: self.amount_cents,
            coupon_cents: self.coupon_cents,
        })
    }
}

/// Ids and names: 1..=128 bytes (contract v1.1; names were unbounded in v1, which let a flood
/// of long unique names grow the interner).
#[inline(always)]
fn id_fits(s: &str) -> bool {
    s.len().wrapping_sub(1) < MAX_ID_BYTES
}

#[inline(always)]
fn check_id(s: &str, field: &'static str) -> Result<(), Rejection> {
    if id_fits(s) {
        Ok(())
    } else {
        Err(bad_length(s.len(), field))
    }
}

#[cold]
#[inline(never)]
fn bad_length(len: usize, field: &'static str) -> Rejection {
    Rejection::new(Reason::BadLength, Some(field)).with_detail(format!("{len} bytes"))
}

type Noted<'f> = &'f Cell<Option<(Reason, Option<&'static str>)>>;

struct EventVisitor<'f, 'r, 'de> {
    failure: Noted<'f>,
    raw: &'r mut RawEvent<'de>,
}

impl<'f, 'r, 'de> EventVisitor<'f, 'r, 'de> {
    fn not_object<E: de::Error>(&self) -> E {
        self.failure.set(Some((Reason::NotObject, None)));
        E::custom("not an object")
    }
}

macro_rules! not_object {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _v: $t) -> Result<Self::Value, E> { Err(self.not_object()) })*
    };
}

impl<'de, 'f, 'r> Visitor<'de> for EventVisitor<'f, 'r, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    not_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.not_object())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(self.not_object())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let raw = self.raw;
        let fail = self.failure;
        while let Some(key) = map.next_key_seed(StrSeed { failure: fail, field: "(key)" })? {
            macro_rules! set {
                ($slot:expr, $name:literal, $seed:expr) => {{
                    if $slot.is_some() {
                        fail.set(Some((Reason::DuplicateField, Some($name))));
                        return Err(de::Error::custom("duplicate field"));
                    }
                    $slot = map.next_value_seed($seed)?;
                }};
            }
            match &*key {
                "event_id" => set!(raw.event_id, "event_id", OptSeed(StrSeed { failure: fail, field: "event_id" })),
                "type" => set!(raw.kind, "type", OptSeed(StrSeed { failure: fail, field: "type" })),
                "ts" => set!(raw.ts, "ts", OptSeed(TsSeed { failure: fail })),
                "user_id" => set!(raw.user_id, "user_id", OptSeed(StrSeed { failure: fail, field: "user_id" })),
                "venue" => set!(raw.venue, "venue", OptSeed(StrSeed { failure: fail, field: "venue" })),
                "slot" => set!(raw.slot, "slot", OptSeed(StrSeed { failure: fail, field: "slot" })),
                "item_id" => set!(raw.item_id, "item_id", OptSeed(StrSeed { failure: fail, field: "item_id" })),
                "merchant_id" => {
                    set!(raw.merchant_id, "merchant_id", OptSeed(StrSeed { failure: fail, field: "merchant_id" }))
                }
                "channel" => set!(raw.channel, "channel", OptSeed(StrSeed { failure: fail, field: "channel" })),
                "order_id" => set!(raw.order_id, "order_id", OptSeed(StrSeed { failure: fail, field: "order_id" })),
                "amount_cents" => {
                    set!(
                        raw.amount_cents,
                        "amount_cents",
                        OptSeed(AmountSeed { failure: fail, field: "amount_cents", max: MAX_AMOUNT_CENTS })
                    )
                }
                "coupon_cents" => {
                    set!(
                        raw.coupon_cents,
                        "coupon_cents",
                        OptSeed(AmountSeed { failure: fail, field: "coupon_cents", max: MAX_AMOUNT_CENTS })
                    )
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// `null` for a field means absent: the checks after the object report it as missing.
struct OptSeed<S>(S);

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for OptSeed<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(OptVisitor(self.0))
    }
}

struct OptVisitor<S>(S);

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for OptVisitor<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

#[derive(Clone, Copy)]
struct StrSeed<'f> {
    failure: Noted<'f>,
    field: &'static str,
}

impl<'de, 'f> DeserializeSeed<'de> for StrSeed<'f> {
    type Value = Str<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'f> StrSeed<'f> {
    fn wrong<E: de::Error>(&self) -> E {
        self.failure.set(Some((Reason::WrongType, Some(self.field))));
        E::custom("expected a string")
    }
}

impl<'de, 'f> Visitor<'de> for StrSeed<'f> {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }

    not_string!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.wrong())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _s: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong())
    }

    fn visit_map<A: MapAccess<'de>>(self, _m: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong())
    }
}

macro_rules! not_string {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _v: $t) -> Result<Self::Value, E> { Err(self.wrong()) })*
    };
}
use not_string;

/// The visits that make a numeric field the wrong type (strings, booleans, containers).
macro_rules! numeric_wrong_types {
    ($v:ty) => {
        fn visit_str<E: de::Error>(self, _v: &str) -> Result<$v, E> {
            Err(self.fail(Reason::WrongType))
        }

        fn visit_bool<E: de::Error>(self, _v: bool) -> Result<$v, E> {
            Err(self.fail(Reason::WrongType))
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, _s: A) -> Result<$v, A::Error> {
            Err(self.fail(Reason::WrongType))
        }

        fn visit_map<A: MapAccess<'de>>(self, _m: A) -> Result<$v, A::Error> {
            Err(self.fail(Reason::WrongType))
        }
    };
}

/// `ts`: an integer; floats and strings are the wrong type.
#[derive(Clone, Copy)]
struct TsSeed<'f> {
    failure: Noted<'f>,
}

impl<'de, 'f> DeserializeSeed<'de> for TsSeed<'f> {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'f> TsSeed<'f> {
    fn fail<E: de::Error>(&self, reason: Reason) -> E {
        self.failure.set(Some((reason, Some("ts"))));
        E::custom("bad ts")
    }
}

impl<'de, 'f> Visitor<'de> for TsSeed<'f> {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer timestamp in ms")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| self.fail(Reason::TsOutOfRange))
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<i64, E> {
        Err(self.fail(Reason::WrongType))
    }

    numeric_wrong_types!(i64);
}

/// Money: a non-negative integer of cents up to 10^12. Fractions and negatives are
/// `bad_amount`; strings, booleans and containers are `wrong_type`.
#[derive(Clone, Copy)]
struct AmountSeed<'f> {
    failure: Noted<'f>,
    field: &'static str,
    /// 10^12 for both (contract v1.1 bounds `coupon_cents` like `amount_cents`).
    max: u64,
}

impl<'de, 'f> DeserializeSeed<'de> for AmountSeed<'f> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'f> AmountSeed<'f> {
    fn fail<E: de::Error>(&self, reason: Reason) -> E {
        self.failure.set(Some((reason, Some(self.field))));
        E::custom("bad amount")
    }
}

impl<'de, 'f> Visitor<'de> for AmountSeed<'f> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer amount of cents")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if v > self.max {
            return Err(self.fail(Reason::BadAmount));
        }
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        if v < 0 {
            return Err(self.fail(Reason::BadAmount));
        }
        self.visit_u64(v as u64)
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<u64, E> {
        Err(self.fail(Reason::BadAmount))
    }

    numeric_wrong_types!(u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(line: &str) -> (Reason, Option<&'static str>) {
        let r = decode(line.as_bytes(), &Limits::default()).unwrap_err();
        (r.reason, r.field)
    }

    #[test]
    fn decodes_a_full_pay_borrowing_strings() {
        let line = r#"{"event_id":"e-1","type":"pay","ts":1762790400000,"user_id":"u-1","venue":"main","slot":"main-001","merchant_id":"m-1","order_id":"o-1","amount_cents":1999,"coupon_cents":100,"extra":{"a":[1,2]}}"#;
        let e = decode(line.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(e.kind, EventKind::Pay);
        assert_eq!(e.amount_cents, Some(1999));
        assert_eq!(e.coupon_cents, Some(100));
        assert!(matches!(e.event_id, Cow::Borrowed("e-1")));
        assert_eq!(e.slot.as_deref(), Some("main-001"));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let e = decode(br#"{"event_id":"e\"1","type":"click","ts":1,"user_id":"\u7528\u6237"}"#, &Limits::default())
            .unwrap();
        assert_eq!(e.event_id, "e\"1");
        assert_eq!(e.user_id, "用户");
    }

    #[test]
    fn each_reason_is_named() {
        assert_eq!(reason("nope").0, Reason::NotJson);
        assert_eq!(reason("[1]").0, Reason::NotObject);
        assert_eq!(reason("null").0, Reason::NotObject);
        assert_eq!(reason("\"s\"").0, Reason::NotObject);
        assert_eq!(reason(r#"{"event_id":"a","type":"click","ts":1}"#), (Reason::MissingField, Some("user_id")));
        assert_eq!(
            reason(r#"{"event_id":"a","type":"click","ts":1,"user_id":null}"#),
            (Reason::MissingField, Some("user_id"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","type":"click","ts":"1","user_id":"u"}"#),
            (Reason::WrongType, Some("ts"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","type":"click","ts":1.5,"user_id":"u"}"#),
            (Reason::WrongType, Some("ts"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","type":"click","ts":-1,"user_id":"u"}"#),
            (Reason::TsOutOfRange, Some("ts"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","type":"click","ts":1,"user_id":""}"#),
            (Reason::BadLength, Some("user_id"))
        );
        assert_eq!(reason(r#"{"event_id":"a","type":"fly","ts":1,"user_id":"u"}"#).0, Reason::UnknownType);
        assert_eq!(reason(r#"{"event_id":"a","type":3,"ts":1,"user_id":"u"}"#), (Reason::WrongType, Some("type")));
        assert_eq!(
            reason(r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":1000000000001}"#),
            (Reason::BadAmount, Some("amount_cents"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":"5"}"#),
            (Reason::WrongType, Some("amount_cents"))
        );
        assert_eq!(
            reason(
                r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":5,"coupon_cents":-1}"#
            ),
            (Reason::BadAmount, Some("coupon_cents"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","amount_cents":5}"#),
            (Reason::MissingField, Some("order_id"))
        );
        assert_eq!(
            reason(r#"{"event_id":"a","event_id":"b","type":"click","ts":1,"user_id":"u"}"#),
            (Reason::DuplicateField, Some("event_id"))
        );
        assert_eq!(reason(r#"{"event_id":"a","type":"click","ts":1,"user_id":"u"} x"#).0, Reason::NotJson);
        assert_eq!(reason(r#"{"event_id":"a","type":"click","ts":1,"user_id":"u""#).0, Reason::NotJson);
        let big = format!(r#"{{"event_id":"a","type":"click","ts":1,"user_id":"u","pad":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(reason(&big).0, Reason::TooLarge);
    }

    #[test]
    fn amount_bounds_are_inclusive() {
        let ok = r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":1000000000000}"#;
        assert_eq!(decode(ok.as_bytes(), &Limits::default()).unwrap().amount_cents, Some(MAX_AMOUNT_CENTS));
        let zero = r#"{"event_id":"a","type":"refund","ts":0,"user_id":"u","order_id":"o","amount_cents":0}"#;
        assert_eq!(decode(zero.as_bytes(), &Limits::default()).unwrap().amount_cents, Some(0));
    }

    #[test]
    fn future_ts_is_rejected_against_the_clock_of_the_moment() {
        let limits = Limits::with_future_allowance(64 * 1024, 500);
        let ev = br#"{"event_id":"a","type":"click","ts":1001,"user_id":"u"}"#;
        let r = decode(ev, &limits.at(500)).unwrap_err();
        assert_eq!((r.reason, r.field), (Reason::TsInFuture, Some("ts")));
        assert!(r.to_string().contains("501 ms ahead"), "{r}");
        // The same limits a little later: the bound moved with the clock.
        assert!(decode(ev, &limits.at(501)).is_ok());
        assert!(decode(ev, &Limits::default()).is_ok(), "no allowance: no bound");
    }

    #[test]
    fn an_event_far_behind_its_message_time_is_refused() {
        let ev = br#"{"event_id":"a","type":"click","ts":1000,"user_id":"u"}"#;
        let r = decode(ev, &Limits::default().sent_at(3_601_001, 3_600_000)).unwrap_err();
        assert_eq!(r.reason, Reason::BeyondDedupeHorizon);
        assert!(decode(ev, &Limits::default().sent_at(3_601_000, 3_600_000)).is_ok());
        assert!(decode(ev, &Limits::default().sent_at(-1, 3_600_000)).is_ok(), "no message time: no bound");
    }

    #[test]
    fn names_are_one_to_128_bytes() {
        let long = "n".repeat(129);
        for field in ["venue", "slot", "item_id", "merchant_id", "channel", "order_id"] {
            let line = format!(r#"{{"event_id":"a","type":"click","ts":1,"user_id":"u","{field}":"{long}"}}"#);
            assert_eq!(reason(&line), (Reason::BadLength, Some(field)), "{field}");
            let line = format!(r#"{{"event_id":"a","type":"click","ts":1,"user_id":"u","{field}":""}}"#);
            assert_eq!(reason(&line), (Reason::BadLength, Some(field)), "{field} empty");
            let ok =
                format!(r#"{{"event_id":"a","type":"click","ts":1,"user_id":"u","{field}":"{}"}}"#, "n".repeat(128));
            assert!(decode(ok.as_bytes(), &Limits::default()).is_ok(), "{field} of 128 bytes");
        }
    }

    #[test]
    fn coupon_is_bounded_like_amount() {
        let over = r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":5,"coupon_cents":1000000000001}"#;
        assert_eq!(reason(over), (Reason::BadAmount, Some("coupon_cents")));
        let max = r#"{"event_id":"a","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":5,"coupon_cents":1000000000000}"#;
        assert_eq!(decode(max.as_bytes(), &Limits::default()).unwrap().coupon_cents, Some(MAX_AMOUNT_CENTS));
    }

    #[test]
    fn invalid_utf8_is_not_json() {
        let r =
            decode(b"{\"event_id\":\"\xff\xfe\",\"type\":\"click\",\"ts\":1,\"user_id\":\"u\"}", &Limits::default())
                .unwrap_err();
        assert_eq!(r.reason, Reason::NotJson);
    }
}
