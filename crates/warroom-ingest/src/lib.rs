//! Sources of events for the engine.
//!
//! Data path: bytes of newline-delimited messages -> [`pipeline::ChunkProcessor`] (parallel
//! decode into fixed-size events, then per-shard ordered apply) -> [`warroom_engine::Engine`].
//!
//! - [`pipeline`]: the chunk processor and [`pipeline::replay`] for files.
//! - [`gen`]: a deterministic generator of Double-11-shaped traffic with noise.
//! - [`sim`]: the embedded simulator that plays a compressed night in real time.
//!
//! - [`kafka`]: the Kafka source (consumer group, checkpoints, exactly-once counting), with
//!   [`dlq`], the dead-letter outbox that never blocks it and never loses a letter.
//! - [`parts`] (from `warroom-status`): the monitor's long-running parts, whether each is
//!   alive, and injected faults.
//! - [`loadgen`], [`rehearse`], [`produce`]: the producing side for load tests and rehearsals.

pub mod claims;
pub mod dlq;
pub mod gen;
pub mod history_topic;
pub mod kafka;
pub mod loadgen;
pub mod partials;
pub mod pipeline;
pub mod produce;
pub mod rehearse;
pub mod rules_log;
pub mod sim;
pub mod trace;
pub mod worker;

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub use warroom_status::parts;

pub use pipeline::{replay, ChunkProcessor, RejectedLine, ReplayStats};

/// Names the worker threads that decode and apply events (rayon's global pool) `wr-engine-N`,
/// so per-thread CPU (`top -H`, the e2e bench) tells them from the publisher and the API.
/// Call once at start, before any event is processed; later calls do nothing.
pub fn name_engine_threads() {
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("wr-engine-{i}")).build_global();
}
