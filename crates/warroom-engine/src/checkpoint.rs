//! Checkpoints: the whole engine state as one versioned, checksummed file, written atomically.
//!
//! Exactly-once counting across crashes rests on this. A source pauses, lets every event it
//! has taken be applied, and asks the engine for a checkpoint carrying the source's own
//! position (its `extra` bytes, e.g. Kafka offsets). On start, the engine is restored from the
//! newest checkpoint and the source resumes from the position stored in it. State and position
//! come from the same instant, so nothing is lost and nothing is counted twice.
//!
//! File layout: `MAGIC` (8 bytes), format version (u32 LE), payload length (u64 LE), xxh3-64
//! of the payload (u64 LE), then the payload in postcard (a maintained serde format with a
//! stable, documented wire format; bincode 1.3 is unmaintained, RUSTSEC-2025-0141). A torn or
//! altered file fails the checksum and is reported, never half-loaded. A file of another
//! [`FORMAT`] is refused with a message saying what to do; `tests/tests/checkpoint.rs` pins the
//! format with a golden file, so a layout change cannot ship without bumping it.
//!
//! The state directory is locked while a monitor uses it ([`StateDirLock`]): a second monitor
//! on the same directory refuses to start instead of overwriting the first one's checkpoints.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::race::RuleSpec;
use crate::shard::Shard;

pub const MAGIC: &[u8; 8] = b"WARROOM\x00";
/// Bumped whenever the state layout changes; older files are refused with a clear message.
/// 1: bincode (issues 1-5). 2: postcard; state per (slot, merchant), u128 money, per-shard
/// sketch clocks, minute series, channels; no shard count or phases in the shape.
/// 4: history minutes keep each merchant's channels.
pub const FORMAT: u32 = 4;
const HEADER: usize = 8 + 4 + 8 + 8;
pub const FILE_NAME: &str = "engine.checkpoint";

/// What starting over means, said wherever a checkpoint cannot be used.
const START_OVER: &str = "moving --state-dir aside (or pointing it at an empty directory) starts with an empty state that resumes at the consumer group's committed offsets: everything counted so far (totals, windows, de-duplication) is lost, and only events after those offsets are counted; to recount the topic from its beginning, use a new --group as well";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{0} is not a warroom checkpoint (bad magic): point --state-dir at this monitor's own state; {START_OVER}"
    )]
    NotACheckpoint(PathBuf),
    #[error("checkpoint format {found} is not the supported {FORMAT}: it was written by another warroom version; run that version to finish the promotion, or start over: {START_OVER}")]
    Format { found: u32 },
    #[error("checkpoint is damaged (checksum mismatch or truncated); it is replaced atomically, so this means disk corruption. Restore the file from a backup, or start over: {START_OVER}")]
    Damaged,
    #[error("checkpoint does not decode ({0}): restore the file from a backup, or start over: {START_OVER}")]
    Decode(String),
    #[error("checkpoint passed its checksum but is inconsistent ({0}): it was not written by this warroom build. Restore the file from a backup, or start over: {START_OVER}")]
    Invalid(String),
    #[error("checkpoint was written with other windows or horizons ({0}): set them back in the config to resume, or start over: {START_OVER}")]
    Shape(String),
    #[error("{dir} is in use by another warroom monitor (pid {pid}): each monitor needs its own --state-dir; stop the other one first")]
    Locked { dir: PathBuf, pid: String },
}

/// Settings that decide the layout of the state: a checkpoint restores only into the same.
/// (The shard count and the plan are not among them: a restore keeps the checkpoint's shards
/// and recomputes the plan's numbers.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub windows: Vec<i64>,
    pub race_window: i64,
    pub dedupe_horizon: i64,
    pub order_horizon: i64,
}

impl Shape {
    /// What differs, naming the config keys.
    pub fn differences(&self, configured: &Shape) -> String {
        let mut d = Vec::new();
        let secs = |v: &[i64]| v.iter().map(|ms| format!("{}s", ms / 1000)).collect::<Vec<_>>().join(", ");
        if self.windows != configured.windows {
            d.push(format!(
                "engine.windows: saved [{}], configured [{}]",
                secs(&self.windows),
                secs(&configured.windows)
            ));
        }
        if self.race_window != configured.race_window {
            d.push(format!(
                "race.window: saved {}s, configured {}s",
                self.race_window / 1000,
                configured.race_window / 1000
            ));
        }
        if self.dedupe_horizon != configured.dedupe_horizon {
            d.push(format!(
                "engine.dedupe_horizon: saved {}s, configured {}s",
                self.dedupe_horizon / 1000,
                configured.dedupe_horizon / 1000
            ));
        }
        if self.order_horizon != configured.order_horizon {
            d.push(format!(
                "engine.order_horizon: saved {}s, configured {}s",
                self.order_horizon / 1000,
                configured.order_horizon / 1000
            ));
        }
        d.join("; ")
    }
}

/// A rule set at runtime (hot-swapped rules survive a restart).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRule {
    pub venue: String,
    pub name: String,
    /// None for the built-in `gmv` rule.
    pub spec: Option<RuleSpec>,
}

/// The checkpoint payload. Written as `Image<&Shard, &[u8]>` straight from the locked
/// shards, read back as `Image<Shard, Vec<u8>>`: one field list for both directions.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Image<S, E> {
    pub shape: Shape,
    pub watermark: i64,
    pub last_event_at: i64,
    pub venues: Vec<String>,
    pub slots: Vec<String>,
    pub slot_venues: Vec<u32>,
    pub merchants: Vec<String>,
    pub channels: Vec<String>,
    pub pairs: Vec<(u32, u32)>,
    pub slot_venue_conflicts: u64,
    pub rejects: Vec<(String, u64)>,
    pub rules: Vec<SavedRule>,
    pub shards: Vec<S>,
    pub extra: E,
}

/// What restoring reads.
pub(crate) type Loaded = Image<Shard, Vec<u8>>;

/// Most shards a checkpoint may have (far above any machine's CPUs; the engine allocates per shard).
pub(crate) const MAX_SHARDS: usize = 4096;

impl Loaded {
    /// Everything the engine will index by, checked before any of it is used: the name tables
    /// (unique names; each slot's venue and each pair's slot and merchant among them) and
    /// every shard (see [`crate::shard::Shard::check`]). A payload that passed the checksum
    /// but was not written by this build is refused with [`CheckpointError::Invalid`].
    pub(crate) fn check(&self, cx: &crate::shard::Ctx) -> Result<(), CheckpointError> {
        let bad = |why: String| Err(CheckpointError::Invalid(why));
        if self.shards.is_empty() || self.shards.len() > MAX_SHARDS {
            return bad(format!("{} shards", self.shards.len()));
        }
        for (what, names) in
            [("venue", &self.venues), ("slot", &self.slots), ("merchant", &self.merchants), ("channel", &self.channels)]
        {
            let mut seen = std::collections::HashSet::with_capacity(names.len());
            if let Some(n) = names.iter().find(|n| !seen.insert(n.as_str())) {
                return bad(format!("{what} {n:?} twice"));
            }
        }
        if self.slot_venues.len() != self.slots.len() {
            return bad("slot venues and slots differ in number".into());
        }
        let within = |i: u32, n: usize| i == crate::intern::NONE || (i as usize) < n;
        if !self.slot_venues.iter().all(|&v| within(v, self.venues.len())) {
            return bad("a slot's venue out of range".into());
        }
        let mut pairs = std::collections::HashSet::with_capacity(self.pairs.len());
        for &(slot, merchant) in &self.pairs {
            if (slot as usize) >= self.slots.len()
                || !within(merchant, self.merchants.len())
                || !pairs.insert((slot, merchant))
            {
                return bad(format!("pair ({slot}, {merchant}) out of range or twice"));
            }
        }
        let n = crate::shard::NameCounts {
            venues: self.venues.len(),
            slots: self.slots.len(),
            merchants: self.merchants.len(),
            channels: self.channels.len(),
            pairs: self.pairs.len(),
        };
        for (i, s) in self.shards.iter().enumerate() {
            s.check(cx, &n).or_else(|why| bad(format!("shard {i}: {why}")))?;
        }
        Ok(())
    }
}

/// Size of the last checkpoint written, to size the next one's buffer: the state is tens of
/// MB at long horizons, and growing a buffer by doubling would copy it several times.
static LAST_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The checkpoint bytes.
pub(crate) fn encode(image: &Image<&Shard, &[u8]>) -> Vec<u8> {
    use std::sync::atomic::Ordering::Relaxed;
    let hint = LAST_LEN.load(Relaxed);
    let mut out = Vec::with_capacity(HEADER + hint + hint / 16 + 4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    let mut out = postcard::to_extend(image, out).expect("engine state serialises");
    let len = out.len() - HEADER;
    LAST_LEN.store(len, Relaxed);
    let hash = xxhash_rust::xxh3::xxh3_64(&out[HEADER..]);
    out[12..20].copy_from_slice(&(len as u64).to_le_bytes());
    out[HEADER - 8..HEADER].copy_from_slice(&hash.to_le_bytes());
    out
}

/// `payload` framed as a checkpoint of this format (header, length, hash): how the fuzz target
/// reaches the payload decoder past the hash check, which random bytes never pass.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of checkpoint bytes (after the header), unchecked: for the fuzz corpus.
pub fn payload(bytes: &[u8]) -> &[u8] {
    bytes.get(HEADER..).unwrap_or_default()
}

pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Loaded, CheckpointError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(CheckpointError::NotACheckpoint(path.to_path_buf()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let found = u32_at(8);
    if found != FORMAT {
        return Err(CheckpointError::Format { found });
    }
    let len = u64_at(12) as usize;
    let payload = &bytes[HEADER..];
    if payload.len() != len || xxhash_rust::xxh3::xxh3_64(payload) != u64_at(20) {
        return Err(CheckpointError::Damaged);
    }
    postcard::from_bytes(payload).map_err(|e| CheckpointError::Decode(e.to_string()))
}

/// An exclusive lock on a state directory, held for as long as the value lives (an advisory
/// `flock` on `LOCK` inside it, released by the kernel when the process dies, even by
/// `kill -9`). The file holds the owner's pid, for the message a second monitor prints.
#[derive(Debug)]
pub struct StateDirLock {
    _file: File,
}

impl StateDirLock {
    pub fn acquire(dir: &Path) -> Result<StateDirLock, CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("LOCK");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                return Err(CheckpointError::Locked {
                    dir: dir.to_path_buf(),
                    pid: if pid.is_empty() { "?".into() } else { pid },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(CheckpointError::Io { path, source: e }),
        }
        file.set_len(0).map_err(io(&path))?;
        write!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(StateDirLock { _file: file })
    }
}

/// Writes `bytes` as `dir/engine.checkpoint`: to a temporary file, fsync, rename over the old
/// one, fsync the directory. A crash at any moment leaves either the old or the new file.
pub fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<PathBuf, CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let dst = dir.join(FILE_NAME);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(io(&dst))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(dst)
}

/// Reads `dir/engine.checkpoint` if there is one.
pub fn read(dir: &Path) -> Result<Option<(Vec<u8>, PathBuf)>, CheckpointError> {
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(b) => Ok(Some((b, path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Engine};

    const LINES: [&str; 3] = [
        r#"{"event_id":"a","type":"click","ts":1794312300000,"user_id":"u-1","venue":"main","slot":"main-000","item_id":"i","merchant_id":"m-0","channel":"search"}"#,
        r#"{"event_id":"b","type":"pay","ts":1794312301000,"user_id":"u-1","venue":"main","slot":"main-000","item_id":"i","merchant_id":"m-0","channel":"search","order_id":"o-1","amount_cents":1999}"#,
        r#"{"event_id":"c","type":"click","ts":1794312302000,"user_id":"u-2","venue":"food","slot":"food-001","item_id":"i","merchant_id":"m-9","channel":"feed"}"#,
    ];

    fn saved() -> (Config, Vec<u8>) {
        let mut cfg = Config::default();
        cfg.engine.shards = 2;
        let e = Engine::new(cfg.clone());
        let limits = warroom_model::Limits::default();
        let batch: Vec<_> = LINES
            .iter()
            .enumerate()
            .map(|(i, l)| e.prepare(&warroom_model::decode(l.as_bytes(), &limits).unwrap(), i as u64).unwrap())
            .collect();
        e.apply(&batch);
        e.publish();
        (cfg, e.checkpoint(b"x"))
    }

    type Mutation = Box<dyn Fn(&mut Loaded)>;

    /// A payload that passes the checksum but points past its own tables is refused with a
    /// reason, not restored into an engine that would panic on its first publish.
    #[test]
    fn inconsistent_payloads_behind_a_valid_checksum_are_refused() {
        let (cfg, bytes) = saved();
        assert!(Engine::restore(cfg.clone(), &bytes, "ok".as_ref()).is_ok());
        let image = || decode(&bytes, "x".as_ref()).unwrap();
        let mutations: [(&str, Mutation); 6] = [
            ("venue \"main\" twice", Box::new(|i| i.venues.push("main".into()))),
            (
                "slot venues and slots differ",
                Box::new(|i| {
                    i.slot_venues.pop();
                }),
            ),
            ("a slot's venue out of range", Box::new(|i| i.slot_venues[0] = 7)),
            ("pair (9, 0) out of range", Box::new(|i| i.pairs.push((9, 0)))),
            ("0 shards", Box::new(|i| i.shards.clear())),
            (
                "more pairs, slots or venues than names",
                Box::new(|i| {
                    i.pairs.clear();
                }),
            ),
        ];
        for (why, mutate) in mutations {
            let mut img = image();
            mutate(&mut img);
            let sealed = seal(&postcard::to_allocvec(&img).unwrap());
            let Err(err) = Engine::restore(cfg.clone(), &sealed, "x".as_ref()) else { panic!("restored: {why}") };
            assert!(matches!(err, CheckpointError::Invalid(_)), "{why}: {err}");
            assert!(err.to_string().contains(why) || why == "0 shards", "{why}: {err}");
        }
    }
}
