//! What the API needs to know of the rest of a node, and nothing more.
//!
//! The API crate serves readiness, `/metrics` and lag for whatever feeds the engine, but must
//! not depend on a source (Kafka today; on a node that only merges other nodes' partials, no
//! source at all). A source describes itself through [`IngestStatus`]; the node's long-running
//! parts register in [`parts::Parts`]. Both the API and the sources depend on this crate only.
//!
//! - [`parts`]: the node's long-running parts, whether each is alive, and injected faults.
//! - [`Exposition`]: how a value read at scrape time becomes a Prometheus metric (one line
//!   each), shared by the API's own metrics and a source's.

pub mod parts;

use metrics::{counter, describe_counter, describe_gauge, gauge, Histogram};

/// What a source of events tells the API about itself.
pub trait IngestStatus: Send + Sync {
    /// Why the node is not ready because of its source (brokers unreachable, a dead-letter
    /// topic that takes nothing, still waiting for an assignment), as a sentence that says
    /// what to do; `None` when the source is fine.
    fn not_ready(&self) -> Option<String>;

    /// Messages behind the ends of the source's partitions, when it knows them.
    fn lag(&self) -> Option<u64>;

    /// Sets the source's metrics into the current recorder (the API calls this inside its
    /// own recorder when `/metrics` is read), through [`Exposition`].
    fn expose_metrics(&self, out: &Exposition, now_ms: i64);

    /// Where to record the time each applied batch took (a histogram of the API's registry).
    fn set_batch_histogram(&self, h: Histogram);
}

/// Which node tells the webhook of an alert change, when several nodes (API nodes merging
/// the same partials) evaluate the same alerts: without it, each would send each change.
pub trait AlertClaims: Send + Sync {
    /// Whether this node sends the change of alert `id` to `state`; may wait (a few seconds
    /// at most) for the other nodes' claims. Every node must get the same answer for the same
    /// change, and exactly one of them `true`.
    fn claim(&self, id: &str, state: &str) -> bool;
}

/// Names this process among several nodes (the alert claims, the rule log): the wall clock's
/// nanoseconds mixed with the process id.
pub fn node_id() -> u64 {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    ns ^ ((std::process::id() as u64) << 32)
}

/// Race-rule changes shared by several API nodes (each ranks the races itself): a log every
/// node reads in order and applies, so that all rank by the same rule, a restarted node too.
pub trait RuleLog: Send + Sync {
    /// Appends a change (`venue` is the record's key, `body` JSON). `Err`: not appended, with
    /// why (the change must then not be made on this node alone).
    fn append(&self, venue: &str, body: &str) -> Result<(), String>;
}

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A value as Prometheus takes it.
pub trait Value {
    fn f64(self) -> f64;
}
macro_rules! value {
    ($($t:ty),*) => {$(impl Value for $t { fn f64(self) -> f64 { self as f64 } })*};
}
value!(u8, u64, u128, i64, usize, f64);

/// Sets values read at scrape time into the current recorder, named `warroom_<name>`. Counts
/// kept elsewhere (atomics, the snapshot) are exposed as counters set to their absolute value.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exposition;

impl Exposition {
    /// Describes a metric (its help line), once before its labelled values.
    pub fn head(&self, name: &str, kind: Kind, help: &'static str) {
        let name = format!("warroom_{name}");
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
        }
    }

    /// A metric without labels: described and set.
    pub fn one(&self, name: &str, kind: Kind, help: &'static str, v: impl Value) {
        self.head(name, kind, help);
        self.labelled(name, kind, &[], v);
    }

    /// One labelled value of a metric described with [`Exposition::head`].
    pub fn labelled(&self, name: &str, kind: Kind, labels: &[(&'static str, String)], v: impl Value) {
        let name = format!("warroom_{name}");
        let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
        match kind {
            Kind::Counter => counter!(name, labels).absolute(v.f64() as u64),
            Kind::Gauge => gauge!(name, labels).set(v.f64()),
        }
    }
}
