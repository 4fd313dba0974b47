//! Sources of events for the engine.
//!
//! Data path: bytes of newline-delimited messages -> [`pipeline::ChunkProcessor`] (parallel
//! decode into fixed-size events, then per-shard ordered apply) -> [`warroom_engine::Engine`].
//!
//! - [`pipeline`]: the chunk processor and [`pipeline::replay`] for files.
//! - [`gen`]: a deterministic generator of Double-11-shaped traffic with noise.
//! - [`sim`]: the embedded simulator that plays a compressed night in real time.
//!
//! The Kafka source comes with its own issue and will feed the same processor.

pub mod gen;
pub mod kafka;
pub mod pipeline;
pub mod sim;

pub use pipeline::{replay, ChunkProcessor, RejectedLine, ReplayStats};
