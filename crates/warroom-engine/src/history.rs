//! Per-minute history: what each shard counted in each minute of event time, site-wide and
//! per venue, (slot, merchant) pair and channel, with mergeable sketches of the minute's
//! distinct users (site and venues), handed out in batches to be stored
//! (`warroom-history`).
//!
//! A shard adds every accepted event to the rows of its minute, kept as *pending* until the
//! next batch is taken. A batch is taken together with the checkpoint, under the same shard
//! locks ([`crate::Engine::checkpoint_with_history`]): the checkpoint carries the shards with
//! their pending rows emptied and their batch number moved on, so a batch is exactly the
//! events applied between two checkpoints. The store writes the batch *before* the checkpoint
//! is persisted; after a crash in between, the restored state rebuilds batch `seq` from the
//! same positions and the store replaces its copy of that batch (counts are subtracted and
//! added again; sketches are unions, which never count a user twice). That is how a minute
//! is neither lost nor counted twice across kill -9 (`crates/warroom/tests/history.rs`).
//!
//! A late event (accepted up to the de-duplication horizon behind its lane) goes to its own
//! minute, so a minute's counts in the store grow until the horizon has passed; the store's
//! sum over minutes equals the snapshot's totals at every checkpoint.

use serde::{Deserialize, Serialize};

use crate::hll::Hll;
use crate::intern::NONE;
use crate::shard::{NameCounts, Prepared};

/// Precision of the site's per-minute sketches: standard error 0.8% for any range.
pub const SITE_P: u32 = 14;
/// Precision of the venues' per-minute sketches: standard error 0.8% (the "within 2%" of a
/// venue's range needs it: 12 gave 1.6%).
pub const VENUE_P: u32 = 14;

/// uv, ipv_uv, buyers.
pub const DISTINCT: [&str; 3] = ["uv", "ipv_uv", "buyers"];

/// What one scope counted in one minute. Money in cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub gmv: u64,
    pub paid_orders: u64,
    /// Paid orders that used a coupon, and the coupons' cents.
    pub coupons: u64,
    pub coupon_cents: u64,
    pub refunds: u64,
    pub refund_cents: u64,
    pub orders_placed: u64,
    pub order_cents: u64,
    pub favorites: u64,
    pub carts: u64,
    pub impressions: u64,
    pub clicks: u64,
}

/// The additive metrics, in [`Counts::values`] order (the store's column names).
pub const COUNTS: [&str; 12] = [
    "gmv",
    "paid_orders",
    "coupons",
    "coupon_cents",
    "refunds",
    "refund_cents",
    "orders_placed",
    "order_cents",
    "favorites",
    "carts",
    "impressions",
    "clicks",
];

impl Counts {
    pub fn values(&self) -> [u64; 12] {
        [
            self.gmv,
            self.paid_orders,
            self.coupons,
            self.coupon_cents,
            self.refunds,
            self.refund_cents,
            self.orders_placed,
            self.order_cents,
            self.favorites,
            self.carts,
            self.impressions,
            self.clicks,
        ]
    }

    pub fn from_values(v: [u64; 12]) -> Counts {
        let [gmv, paid_orders, coupons, coupon_cents, refunds, refund_cents, orders_placed, order_cents, favorites, carts, impressions, clicks] =
            v;
        Counts {
            gmv,
            paid_orders,
            coupons,
            coupon_cents,
            refunds,
            refund_cents,
            orders_placed,
            order_cents,
            favorites,
            carts,
            impressions,
            clicks,
        }
    }

    pub fn merge(&mut self, o: &Counts) {
        let mut v = self.values();
        for (a, b) in v.iter_mut().zip(o.values()) {
            *a += b;
        }
        *self = Counts::from_values(v);
    }
}

/// Rows by name index, dense lookup: `at[index]` is the row's position (`NONE`: no row).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rows {
    pub rows: Vec<(u32, Counts)>,
    /// Rebuilt from `rows` after a restore.
    #[serde(skip)]
    at: Vec<u32>,
}

impl Rows {
    /// Empty, sized like `like` (the minute before: a new minute's rows are mostly the same
    /// names; measured: growing them row by row was half of what history cost the engine).
    fn sized_like(like: &Rows) -> Rows {
        Rows { rows: Vec::with_capacity(like.rows.len()), at: vec![NONE; like.at.len()] }
    }

    #[inline]
    pub fn get(&mut self, i: u32) -> &mut Counts {
        let n = i as usize;
        if self.at.len() <= n {
            self.grow(n + 1);
        }
        let k = self.at[n];
        let k = if k == NONE {
            self.at[n] = self.rows.len() as u32;
            self.rows.push((i, Counts::default()));
            self.rows.len() - 1
        } else {
            k as usize
        };
        &mut self.rows[k].1
    }

    #[cold]
    fn grow(&mut self, n: usize) {
        let rebuild = self.at.is_empty() && !self.rows.is_empty();
        self.at.resize(n.max(self.rows.iter().map(|r| r.0 as usize + 1).max().unwrap_or(0)), NONE);
        if rebuild {
            for (k, r) in self.rows.iter().enumerate() {
                self.at[r.0 as usize] = k as u32;
            }
        }
    }

    /// Drops the lookup index (rebuilt if a row is wanted again): a minute's index is as long
    /// as the names (80 kB at 20,000 slots), and a week-long night's replay keeps thousands
    /// of minutes pending.
    fn release_index(&mut self) {
        self.at = Vec::new();
    }

    fn check(&self, n: usize, what: &str) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        if self.rows.iter().any(|r| r.0 as usize >= n || !seen.insert(r.0)) {
            return Err(format!("history: a {what} row out of range or twice"));
        }
        Ok(())
    }
}

/// One minute of one shard's batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MinuteRows {
    /// Minutes since the Unix epoch (event time).
    pub minute: i64,
    pub site: Counts,
    pub venues: Rows,
    pub pairs: Rows,
    pub channels: Rows,
    /// A merchant's numbers by channel (its 流量入口): `merchant_channels[channel]`, rows by
    /// merchant index. Slot events naming a merchant and a channel.
    pub merchant_channels: Vec<Rows>,
    /// uv, ipv_uv, buyers of the minute, site-wide ([`SITE_P`]).
    pub sketches: Option<Box<[MinuteSketch; 3]>>,
    /// The same per venue ([`VENUE_P`]).
    pub venue_sketches: Vec<(u32, Box<[MinuteSketch; 3]>)>,
}

/// A minute's sketch: the (register, rank) pairs inserted, while few, else the registers. A
/// quiet minute costs what it saw, not 16 KiB (measured on a sparse night: the dense
/// sketches of 722 minutes were 350 MB allocated and zeroed per replay).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MinuteSketch {
    /// `(index << 8) | rank`, unsorted, possibly repeated.
    Sparse(Vec<u32>),
    Dense(Hll),
}

impl Default for MinuteSketch {
    fn default() -> Self {
        MinuteSketch::Sparse(Vec::new())
    }
}

impl MinuteSketch {
    #[inline]
    pub fn insert(&mut self, hash: u64, p: u32) {
        match self {
            MinuteSketch::Sparse(v) => {
                let (idx, rank) = crate::hll::index_rank(hash, p);
                v.push(((idx as u32) << 8) | rank as u32);
                // Past a quarter of the registers (4 bytes each), dense is smaller.
                if v.len() >= 1 << (p - 2) {
                    *self = MinuteSketch::Dense(self.to_hll(p));
                }
            }
            MinuteSketch::Dense(h) => h.insert(hash),
        }
    }

    /// Takes the maximum of each register into `regs` (a precision-`p` sketch's).
    pub fn merge_into(&self, regs: &mut [u8]) {
        match self {
            MinuteSketch::Sparse(v) => {
                for &e in v {
                    if let Some(r) = regs.get_mut((e >> 8) as usize) {
                        *r = (*r).max((e & 0xff) as u8);
                    }
                }
            }
            MinuteSketch::Dense(h) => {
                for (a, b) in regs.iter_mut().zip(h.registers()) {
                    *a = (*a).max(*b);
                }
            }
        }
    }

    pub fn to_hll(&self, p: u32) -> Hll {
        let mut regs = vec![0u8; 1 << p];
        self.merge_into(&mut regs);
        Hll::from_registers(p, regs).unwrap_or_else(|_| Hll::new(p))
    }

    fn check(&self, p: u32) -> Result<(), String> {
        match self {
            MinuteSketch::Sparse(v) => {
                if v.iter().any(|&e| (e >> 8) as usize >= 1 << p || (e & 0xff) > 64 - p + 1) {
                    return Err("history: a sketch entry out of range".into());
                }
                Ok(())
            }
            MinuteSketch::Dense(h) => h.check(p),
        }
    }
}

impl MinuteRows {
    fn new(minute: i64) -> Self {
        MinuteRows {
            minute,
            site: Counts::default(),
            venues: Rows::default(),
            pairs: Rows::default(),
            channels: Rows::default(),
            merchant_channels: Vec::new(),
            sketches: None,
            venue_sketches: Vec::new(),
        }
    }

    fn release_index(&mut self) {
        self.venues.release_index();
        self.pairs.release_index();
        self.channels.release_index();
        self.merchant_channels.iter_mut().for_each(Rows::release_index);
    }

    fn sized_like(minute: i64, like: &MinuteRows) -> Self {
        MinuteRows {
            venues: Rows::sized_like(&like.venues),
            pairs: Rows::sized_like(&like.pairs),
            channels: Rows::sized_like(&like.channels),
            merchant_channels: like.merchant_channels.iter().map(Rows::sized_like).collect(),
            ..MinuteRows::new(minute)
        }
    }

    /// Adds to the site and to the event's venue, pair and channel.
    #[inline]
    pub(crate) fn add(&mut self, ev: &Prepared, f: impl Fn(&mut Counts)) {
        f(&mut self.site);
        if ev.venue != NONE {
            f(self.venues.get(ev.venue));
        }
        if ev.pair != NONE {
            f(self.pairs.get(ev.pair));
        }
        if ev.channel != NONE {
            f(self.channels.get(ev.channel));
            // A merchant's numbers are its slots' (as its pairs'): slot events only.
            if ev.pair != NONE && ev.merchant != NONE {
                let c = ev.channel as usize;
                if self.merchant_channels.len() <= c {
                    self.merchant_channels.resize_with(c + 1, Rows::default);
                }
                f(self.merchant_channels[c].get(ev.merchant));
            }
        }
    }

    /// Notes the event's user as distinct `metric` (0 uv, 1 ipv_uv, 2 buyers).
    #[inline]
    pub(crate) fn distinct(&mut self, ev: &Prepared, metric: usize) {
        let site = self.sketches.get_or_insert_with(Box::default);
        site[metric].insert(ev.user, SITE_P);
        if ev.venue != NONE {
            let v = match self.venue_sketches.iter().position(|(i, _)| *i == ev.venue) {
                Some(k) => k,
                None => {
                    self.venue_sketches.push((ev.venue, Box::default()));
                    self.venue_sketches.len() - 1
                }
            };
            self.venue_sketches[v].1[metric].insert(ev.user, VENUE_P);
        }
    }
}

/// A shard's history state, saved in its checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardHistory {
    /// Names this shard's line of batches: a fresh state (no checkpoint) starts a new line, so
    /// its batch numbers never collide with an older state's in the store.
    pub lineage: u64,
    /// Number of the batch being gathered.
    pub seq: u64,
    /// Minutes with something counted since the last batch, ascending (events come mostly in
    /// time order: the newest minute is found first).
    pub pending: Vec<MinuteRows>,
}

impl ShardHistory {
    pub fn new(lineage: u64) -> Self {
        ShardHistory { lineage, seq: 0, pending: Vec::new() }
    }

    #[inline]
    pub(crate) fn at(&mut self, ts: i64) -> &mut MinuteRows {
        let m = ts.div_euclid(60_000);
        let mut i = self.pending.len();
        while i > 0 && self.pending[i - 1].minute > m {
            i -= 1;
        }
        if i == 0 || self.pending[i - 1].minute != m {
            let newest = i == self.pending.len();
            let fresh = match self.pending.last() {
                // A new newest minute: sized like the one before it.
                Some(last) if newest => MinuteRows::sized_like(m, last),
                _ => MinuteRows::new(m),
            };
            if newest && self.pending.len() >= 2 {
                // Two minutes behind now: its late events are few, its index not worth keeping.
                let k = self.pending.len() - 2;
                self.pending[k].release_index();
            }
            self.pending.insert(i, fresh);
            i += 1;
        }
        &mut self.pending[i - 1]
    }

    /// Hands out the pending rows as batch `seq` and starts the next one.
    pub fn take(&mut self, part: u32) -> PartBatch {
        let mut minutes = std::mem::take(&mut self.pending);
        // The store reads the rows only.
        minutes.iter_mut().for_each(MinuteRows::release_index);
        let b = PartBatch { lineage: self.lineage, part, seq: self.seq, minutes };
        self.seq += 1;
        b
    }

    pub(crate) fn check(&self, n: &NameCounts) -> Result<(), String> {
        if self.pending.windows(2).any(|w| w[0].minute >= w[1].minute) {
            return Err("history: pending minutes out of order".into());
        }
        for m in &self.pending {
            m.venues.check(n.venues, "venue")?;
            m.pairs.check(n.pairs, "pair")?;
            m.channels.check(n.channels, "channel")?;
            if m.merchant_channels.len() > n.channels {
                return Err("history: a merchant's channel out of range".into());
            }
            for r in &m.merchant_channels {
                r.check(n.merchants, "merchant's channel")?;
            }
            for h in m.sketches.iter().flat_map(|s| s.iter()) {
                h.check(SITE_P)?;
            }
            for (v, s) in &m.venue_sketches {
                if *v as usize >= n.venues {
                    return Err("history: a venue sketch out of range".into());
                }
                for h in s.iter() {
                    h.check(VENUE_P)?;
                }
            }
        }
        Ok(())
    }
}

/// A new lineage number: the wall clock's nanoseconds mixed with the process id.
pub fn new_lineage() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    xxhash_rust::xxh3::xxh3_64(&[t.to_le_bytes(), (std::process::id() as u64).to_le_bytes()].concat())
}

/// One shard's batch: the events it applied between two checkpoints, by minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartBatch {
    pub lineage: u64,
    /// The shard's index.
    pub part: u32,
    pub seq: u64,
    pub minutes: Vec<MinuteRows>,
}

impl PartBatch {
    /// The store's key of this batch's line.
    pub fn key(&self) -> String {
        format!("{:016x}/{}", self.lineage, self.part)
    }
}

/// The names the batches' indices point at, as of the batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryNames {
    pub venues: Vec<String>,
    pub slots: Vec<String>,
    pub merchants: Vec<String>,
    pub channels: Vec<String>,
    /// (slot, merchant) per pair; merchant `NONE` for none.
    pub pairs: Vec<(u32, u32)>,
    /// The venue of each slot (`NONE` for none).
    pub slot_venues: Vec<u32>,
}

/// Every shard's batch, with the names they use.
#[derive(Debug, Clone, Default)]
pub struct HistoryBatch {
    pub parts: Vec<PartBatch>,
    pub names: HistoryNames,
}

impl HistoryBatch {
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.minutes.is_empty())
    }
}

/// Where batches are stored (the history database).
pub trait HistorySink: Send + Sync {
    /// Stores the batch durably, or says why not.
    fn store(&self, batch: &HistoryBatch) -> Result<(), String>;
}

/// Writes batches in order, keeping the ones the sink refused to write first next time: a
/// checkpoint may only be persisted once every batch before it is stored.
pub struct HistoryWriter {
    sink: std::sync::Arc<dyn HistorySink>,
    retained: std::sync::Mutex<Vec<HistoryBatch>>,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter").finish_non_exhaustive()
    }
}

/// Batches kept in memory at most while the database refuses them; beyond, the oldest are
/// dropped with an error (their checkpoints were never persisted: a restart rebuilds them).
const MAX_RETAINED: usize = 720;

impl HistoryWriter {
    pub fn new(sink: std::sync::Arc<dyn HistorySink>) -> Self {
        HistoryWriter { sink, retained: std::sync::Mutex::new(Vec::new()) }
    }

    /// Stores `batch` after any retained ones. `Ok`: all stored; `Err`: the sink's reason, and
    /// the unstored batches kept for the next call.
    pub fn write(&self, batch: HistoryBatch) -> Result<(), String> {
        let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        // Empty batches too: their numbers matter (see `warroom_history::Store::write`).
        retained.push(batch);
        while let Some(b) = retained.first() {
            if let Err(e) = self.sink.store(b) {
                if retained.len() > MAX_RETAINED {
                    retained.remove(0);
                    tracing::error!("history batches retained beyond {MAX_RETAINED}: the oldest dropped");
                }
                return Err(e);
            }
            retained.remove(0);
        }
        Ok(())
    }

    /// Batches waiting for the database.
    pub fn retained(&self) -> usize {
        self.retained.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
