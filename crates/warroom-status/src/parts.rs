//! The monitor's long-running parts (source, applier, publisher, API server, webhook sender)
//! and whether each is alive, so that a dead one is noticed: `/readyz` turns 503 and the
//! process exits non-zero within seconds, for its supervisor (`Restart=always`) to start it
//! again from its last checkpoint. A monitor that keeps serving stale state with a dead
//! ingest is worse than one that restarts.
//!
//! Each part holds a [`PartGuard`] for as long as it runs: dropped without
//! [`PartGuard::finished`] (a panic unwinding through it, or an early return), the part is
//! recorded as dead with the reason (the panic's message, captured by a panic hook).
//!
//! [`fault`] injects panics into named parts (`WARROOM_FAULT=applier:3`): chaos testing
//! through the real binary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What became of a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartState {
    Running,
    /// Ended as it should (its work was done, or the monitor is stopping).
    Finished,
    /// Ended on its own: the reason.
    Died(String),
}

/// The registry of parts.
#[derive(Debug, Default)]
pub struct Parts {
    states: Mutex<BTreeMap<String, PartState>>,
    any_dead: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The newest panic message of each thread (set by the hook [`Parts::new`] installs).
fn panics() -> &'static Mutex<BTreeMap<String, String>> {
    static P: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

impl Parts {
    /// A registry; installs (once per process) a panic hook that records each panic's message
    /// and place under its thread's name, then calls the previous hook (which prints it).
    pub fn new() -> Arc<Parts> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
                lock(panics()).insert(thread, format!("panicked{at}: {msg}"));
                previous(info);
            }));
        });
        Arc::new(Parts::default())
    }

    /// Registers a part as running; it is dead if the guard drops before
    /// [`PartGuard::finished`].
    pub fn start(self: &Arc<Self>, name: &str) -> PartGuard {
        lock(&self.states).insert(name.to_string(), PartState::Running);
        PartGuard { parts: self.clone(), name: name.to_string(), done: false }
    }

    /// Records that `name` died (for parts that are not a thread of their own, such as an
    /// async task whose join handle reported a panic).
    pub fn died(&self, name: &str, why: String) {
        tracing::error!(part = name, reason = %why, "a part of the monitor died; the monitor stops so that its supervisor restarts it");
        lock(&self.states).insert(name.to_string(), PartState::Died(why));
        self.any_dead.store(true, Ordering::SeqCst);
    }

    /// The first dead part and why, if any.
    pub fn dead(&self) -> Option<(String, String)> {
        if !self.any_dead.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.states).iter().find_map(|(n, s)| match s {
            PartState::Died(why) => Some((n.clone(), why.clone())),
            _ => None,
        })
    }

    pub fn state(&self, name: &str) -> Option<PartState> {
        lock(&self.states).get(name).cloned()
    }
}

/// Held by a running part.
#[derive(Debug)]
pub struct PartGuard {
    parts: Arc<Parts>,
    name: String,
    done: bool,
}

impl PartGuard {
    /// The part ended as it should.
    pub fn finished(mut self) {
        self.done = true;
        lock(&self.parts.states).insert(self.name.clone(), PartState::Finished);
    }
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let why = if std::thread::panicking() {
            lock(panics()).get(&thread).cloned().unwrap_or_else(|| "panicked".into())
        } else {
            "stopped unexpectedly".into()
        };
        self.parts.died(&self.name, why);
    }
}

/// Injected faults, for chaos tests through the real binary: `WARROOM_FAULT=PART:N` makes
/// part PART panic at its N-th [`fault::hit`] (its N-th batch, publish, delivery...).
/// Several are separated by commas. Unset in production: one relaxed load per hit.
pub mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Fault {
        part: String,
        at: u64,
        hits: AtomicU64,
    }

    fn faults() -> &'static [Fault] {
        static F: OnceLock<Vec<Fault>> = OnceLock::new();
        F.get_or_init(|| {
            std::env::var("WARROOM_FAULT")
                .unwrap_or_default()
                .split(',')
                .filter_map(|f| {
                    let (part, at) = f.trim().split_once(':')?;
                    Some(Fault { part: part.to_string(), at: at.parse().ok()?, hits: AtomicU64::new(0) })
                })
                .collect()
        })
    }

    /// Counts a hit of `part`; panics at the configured one.
    #[inline]
    pub fn hit(part: &str) {
        for f in faults() {
            if f.part == part && f.hits.fetch_add(1, Ordering::Relaxed) + 1 == f.at {
                panic!("injected fault (WARROOM_FAULT) in the {part}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_panics_is_dead_with_its_message() {
        let parts = Parts::new();
        let p = parts.clone();
        let h = std::thread::Builder::new()
            .name("t-applier".into())
            .spawn(move || {
                let _g = p.start("applier");
                panic!("boom");
            })
            .unwrap();
        assert!(h.join().is_err());
        let (name, why) = parts.dead().unwrap();
        assert_eq!(name, "applier");
        assert!(why.contains("boom") && why.contains("parts.rs"), "{why}");
        let g = parts.start("publisher");
        g.finished();
        assert_eq!(parts.state("publisher"), Some(PartState::Finished));
    }
}
