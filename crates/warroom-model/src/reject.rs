//! Why a message was rejected, with a stable snake_case name per reason: the names are used as
//! metric labels, DLQ headers and snapshot keys, so they never change once released.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// One reason a message is not a valid event. Order is the order of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not parseable as JSON (syntax error, truncated, invalid UTF-8, trailing bytes).
    NotJson,
    /// Valid JSON but not an object (array, null, number, string).
    NotObject,
    /// A required field is absent (or null).
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// `event_id` / `user_id` empty or longer than 128 bytes.
    BadLength,
    /// `type` is not one of the seven event types.
    UnknownType,
    /// `amount_cents` / `coupon_cents` negative, fractional, or above 10^12.
    BadAmount,
    /// The message is larger than the configured maximum.
    TooLarge,
    /// `ts` negative or beyond what an `i64` of milliseconds holds.
    TsOutOfRange,
    /// The same field appears twice in one object.
    DuplicateField,
    /// Older than the de-duplication horizon: it cannot be checked against earlier
    /// deliveries, so it is refused rather than risk counting it twice.
    BeyondDedupeHorizon,
    /// A rehearsal's message (it carries the `warroom-rehearsal` Kafka header that
    /// `warroom rehearse` puts on every message) reached a live monitor: a recording with
    /// shifted times must never be counted as the night's data.
    RehearsalOnLive,
    /// `ts` is further ahead of the monitor's wall clock (at the moment the message was
    /// read) than `limits.max_future` allows: the producer's clock is wrong, and the event
    /// would otherwise move every window ahead of everybody else's data.
    TsInFuture,
    /// The event names a venue beyond `engine.max_venues` distinct venues.
    TooManyVenues,
    /// The event names a slot beyond `engine.max_slots` distinct slots.
    TooManySlots,
    /// The event names a merchant beyond `engine.max_merchants` distinct merchants on slots.
    TooManyMerchants,
    /// The event names a channel beyond `engine.max_channels` distinct channels.
    TooManyChannels,
    /// The event names a (slot, merchant) pair beyond `engine.max_slot_merchants` pairs: slots
    /// changed merchant (商品更换) far more often than a promotion does.
    TooManySlotMerchants,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
        Reason::NotJson,
        Reason::NotObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::BadLength,
        Reason::UnknownType,
        Reason::BadAmount,
        Reason::TooLarge,
        Reason::TsOutOfRange,
        Reason::DuplicateField,
        Reason::BeyondDedupeHorizon,
        Reason::RehearsalOnLive,
        Reason::TsInFuture,
        Reason::TooManyVenues,
        Reason::TooManySlots,
        Reason::TooManyMerchants,
        Reason::TooManyChannels,
        Reason::TooManySlotMerchants,
    ];

    /// The stable name used in metrics, DLQ headers and snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotJson => "not_json",
            Reason::NotObject => "not_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::BadLength => "bad_length",
            Reason::UnknownType => "unknown_type",
            Reason::BadAmount => "bad_amount",
            Reason::TooLarge => "too_large",
            Reason::TsOutOfRange => "ts_out_of_range",
            Reason::DuplicateField => "duplicate_field",
            Reason::BeyondDedupeHorizon => "beyond_dedupe_horizon",
            Reason::RehearsalOnLive => "rehearsal_on_live",
            Reason::TsInFuture => "ts_in_future",
            Reason::TooManyVenues => "too_many_venues",
            Reason::TooManySlots => "too_many_slots",
            Reason::TooManyMerchants => "too_many_merchants",
            Reason::TooManyChannels => "too_many_channels",
            Reason::TooManySlotMerchants => "too_many_slot_merchants",
        }
    }

    /// The reason with this stable name.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message: the reason, the field it concerns (if any) and, for syntax errors,
/// the parser's own words. Built only on the error path, so the `String` is no hot-path cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub field: Option<&'static str>,
    pub detail: Option<String>,
}

impl Rejection {
    pub fn new(reason: Reason, field: Option<&'static str>) -> Self {
        Rejection { reason, field, detail: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.reason, self.field) {
            (Reason::NotJson, _) => "the message is not valid JSON".to_string(),
            (Reason::NotObject, _) => "the message must be a JSON object".to_string(),
            (Reason::MissingField, Some(f)) => format!("required field `{f}` is missing"),
            (Reason::WrongType, Some(f)) => format!("field `{f}` has the wrong type"),
            (Reason::BadLength, Some(f)) => format!("field `{f}` must be 1..=128 bytes (contract v1.1)"),
            (Reason::UnknownType, _) => {
                "`type` is not one of impression, click, favorite, cart, order, pay, refund".to_string()
            }
            (Reason::BadAmount, Some(f)) => format!("field `{f}` must be an integer number of cents in 0..=10^12"),
            (Reason::TooLarge, _) => "the message exceeds the maximum message size".to_string(),
            (Reason::TsOutOfRange, _) => "`ts` must be a non-negative integer of milliseconds".to_string(),
            (Reason::TsInFuture, _) => {
                "`ts` is further ahead of the monitor's clock than limits.max_future allows: check the producer's clock".to_string()
            }
            (Reason::TooManyVenues, _) => "more distinct venues than engine.max_venues; raise it if they are real".to_string(),
            (Reason::TooManySlots, _) => "more distinct slots than engine.max_slots; raise it if they are real".to_string(),
            (Reason::TooManyMerchants, _) => {
                "more distinct merchants on slots than engine.max_merchants; raise it if they are real".to_string()
            }
            (Reason::TooManyChannels, _) => {
                "more distinct channels than engine.max_channels; raise it if they are real".to_string()
            }
            (Reason::TooManySlotMerchants, _) => {
                "more (slot, merchant) pairs than engine.max_slot_merchants; raise it if slots really change hands that often".to_string()
            }
            (Reason::DuplicateField, Some(f)) => format!("field `{f}` appears twice"),
            (Reason::BeyondDedupeHorizon, _) => "`ts` is older than the de-duplication horizon".to_string(),
            (Reason::RehearsalOnLive, _) => {
                "a rehearsal message (warroom-rehearsal header) on a live monitor: rehearse on a topic of its own, read by `warroom run --rehearsal-shift-ms`".to_string()
            }
            (r, None) => r.as_str().to_string(),
        };
        write!(f, "{}: {what}", self.reason)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Thread-safe counters, one per [`Reason`].
#[derive(Debug, Default)]
pub struct RejectCounts {
    counts: [AtomicU64; Reason::ALL.len()],
}

impl RejectCounts {
    pub fn add(&self, reason: Reason, n: u64) {
        self.counts[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        Reason::ALL.iter().map(|r| self.get(*r)).sum()
    }

    /// Non-zero counters by name, in reason order.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL.iter().map(|r| (r.as_str(), self.get(*r))).filter(|(_, n)| *n > 0).collect()
    }
}
