//! The hot path: exact sliding windows, distinct counts, de-duplication, horse races and the
//! promotion plan, kept in user-sharded state and published as immutable snapshots.
//!
//! Data path:
//! 1. a source decodes a message ([`warroom_model::decode`]) and [`Engine::prepare`]s it into a
//!    fixed-size [`Prepared`] (fingerprints, user hash, interned slot/venue/merchant);
//! 2. [`Engine::apply`] routes it by user to a [`shard::Shard`], which de-duplicates it
//!    ([`dedupe`]), counts it, feeds the sketches ([`hll`]) and the window rings ([`window`]);
//! 3. [`Engine::publish`] brings every shard to the global watermark, merges their summaries,
//!    ranks each venue's slots ([`race`]), places the promotion on its [`plan`] and stores the
//!    resulting [`Snapshot`] for readers ([`Engine::snapshot`]).
//!
//! Modules: [`config`] (settings), [`intern`] (names to indices), [`snapshot`] (the reported
//! document and the first-formula decomposition), [`views`] (what each caller may see of it).

pub mod checkpoint;
pub mod config;
pub mod dedupe;
pub mod engine;
pub mod history;
pub mod hll;
pub mod intern;
pub mod mem;
pub mod partial;
pub mod plan;
pub mod race;
pub mod shard;
pub mod sketches;
pub mod snapshot;
pub mod views;
pub mod window;

pub use config::{Config, EngineConfig, RaceConfig};
pub use engine::{Engine, EngineError, PublishCost, Refusal, RuleChange};
pub use race::{RankChange, RuleSpec};
pub use shard::{Clock, Prepared};
pub use snapshot::{Snapshot, VenueStats};
