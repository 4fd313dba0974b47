//! The `warroom` library: what the `warroom` binary runs, callable in-process (tests).
//!
//! - [`settings`]: the configuration file, its embedded defaults and where each value came from.
//! - [`node`]: a running node (`warroom run`): engine, source, API, publisher, watchers.

pub mod node;
pub mod settings;
