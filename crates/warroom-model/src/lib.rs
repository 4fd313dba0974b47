//! The event contract v1.1 (`shared/contract/EVENTS.md`) as Rust types.
//!
//! Data path: raw bytes of one message (a Kafka payload or one line of a replay file) go
//! through [`decode`], which either borrows an [`Event`] from those bytes (no allocation
//! unless a string carries JSON escapes) or returns a [`Rejection`] naming the [`Reason`] and
//! the field. Rejections are counted per reason with [`RejectCounts`].
//!
//! - [`event`]: the event types and the decoder.
//! - [`reject`]: rejection reasons, their stable names, and per-reason counters.

pub mod event;
mod flat;
pub mod reject;

pub use event::{decode, Event, EventKind, Limits, Str};
pub use reject::{Reason, RejectCounts, Rejection};

/// Largest `amount_cents` the contract allows (10^12 cents).
pub const MAX_AMOUNT_CENTS: u64 = 1_000_000_000_000;
/// Longest id or name (`event_id`, `user_id`, `venue`, `slot`, `item_id`, `merchant_id`,
/// `channel`, `order_id`) in bytes (contract v1.1).
pub const MAX_ID_BYTES: usize = 128;
