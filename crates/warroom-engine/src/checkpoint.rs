//! Checkpoints: the whole engine state as one versioned, checksummed file, written atomically.
//!
//! Exactly-once counting across crashes rests on this. A source pauses, lets every event it
//! has taken be applied, and asks the engine for a checkpoint carrying the source's own
//! position (its `extra` bytes, e.g. Kafka offsets). On start, the engine is restored from the
//! newest checkpoint and the source resumes from the position stored in it. State and position
//! come from the same instant, so nothing is lost and nothing is counted twice.
//!
//! File layout: `MAGIC` (8 bytes), format version (u32 LE), payload length (u64 LE), xxh3-64
//! of the payload (u64 LE), then the bincode payload. A torn or altered file fails the
//! checksum and is reported, never half-loaded.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::race::RuleSpec;
use crate::shard::Shard;

pub const MAGIC: &[u8; 8] = b"WARROOM\x00";
/// Bumped whenever the state layout changes; older files are refused with a clear message.
pub const FORMAT: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 8;
pub const FILE_NAME: &str = "engine.checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a warroom checkpoint (bad magic); move it away or point --state-dir elsewhere")]
    NotACheckpoint(PathBuf),
    #[error("checkpoint format {found} is not the supported {FORMAT}; start with an empty --state-dir (state is rebuilt from the source)")]
    Format { found: u32 },
    #[error("checkpoint is damaged (checksum mismatch or truncated); the previous one was replaced atomically, so this means disk corruption: remove it to start over")]
    Damaged,
    #[error("checkpoint does not decode: {0}")]
    Decode(String),
    #[error("checkpoint was written with a different engine shape ({0}); restore with the same [engine] and [race] windows, shards and horizons, or start with an empty --state-dir")]
    Shape(String),
}

/// Settings that decide the layout of the state: a checkpoint restores only into the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub shards: usize,
    pub windows: Vec<i64>,
    pub race_window: i64,
    pub dedupe_horizon: i64,
    pub order_horizon: i64,
    pub phases: Vec<(i64, i64)>,
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
    pub epoch: Option<i64>,
    pub watermark: i64,
    pub last_event_at: i64,
    pub venues: Vec<String>,
    pub slots: Vec<String>,
    pub slot_venues: Vec<u32>,
    pub merchants: Vec<String>,
    pub overflow: [u64; 4],
    pub rejects: Vec<(String, u64)>,
    pub rules: Vec<SavedRule>,
    pub shards: Vec<S>,
    pub extra: E,
}

/// What restoring reads.
pub(crate) type Loaded = Image<Shard, Vec<u8>>;

/// The checkpoint bytes, built in one buffer of the exact size (the state is tens of MB at
/// long horizons: no second copy of it, even for a moment).
pub(crate) fn encode(image: &Image<&Shard, &[u8]>) -> Vec<u8> {
    let len = bincode::serialized_size(image).expect("engine state serialises") as usize;
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    bincode::serialize_into(&mut out, image).expect("engine state serialises");
    debug_assert_eq!(out.len(), HEADER + len);
    let hash = xxhash_rust::xxh3::xxh3_64(&out[HEADER..]);
    out[HEADER - 8..HEADER].copy_from_slice(&hash.to_le_bytes());
    out
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
    bincode::deserialize(payload).map_err(|e| CheckpointError::Decode(e.to_string()))
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
