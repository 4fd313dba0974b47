//! The promotion's memory: per-minute history in an embedded SQLite database.
//!
//! The engine hands out, with every checkpoint, what each shard counted per minute since the
//! previous one ([`warroom_engine::history`]); [`Store::write`] adds it to the database in one
//! transaction, before the checkpoint is persisted. A batch is keyed by its shard's line and
//! number: batch `n` of a line written again (its state restored from the checkpoint before
//! it, after a crash or a failed checkpoint write) undoes the stored batches `n` and later of
//! that line, whose events are applied again; so no minute is lost or counted twice.
//!
//! Tables (`sqlite3 FILE .schema`):
//! - `names(kind, name, id)`: venue (1), slot (2), merchant (3), channel (4) names;
//! - `pairs(id, slot, merchant, venue)`: the (slot, merchant) pairs money is counted by;
//! - `minutes(kind, id, minute, gmv, ...)`: one row per scope and minute of event time with
//!   the twelve additive metrics; kind 0 site (id 0), 1 venue, 3 channel;
//! - `pair_minutes(block, minute, body)`: the same twelve metrics of the pairs `block * 256`
//!   to `block * 256 + 255` in one minute, one entry per pair with activity (see
//!   [`encode_block`]): 20,000 slots' minutes are ~80 rows, not 20,000. A slot's or a
//!   merchant's minute is the sum of its pairs';
//! - `sketches(kind, id, minute, metric, hll)`: the minute's uv, ipv_uv and buyers sketches,
//!   site and venues (unions give any range's distinct count);
//! - `batches(part, seq, body)`: the last [`KEEP_BATCHES`] batches of each shard line, to replace;
//! - `journal(at_ms, kind, body)`: alerts (firing, resolved, acknowledged) and rule changes;
//! - hour rollups ([`Store::roll_up`]): each closed hour's sums and sketch unions, as rows of
//!   kind `k + HOUR` in `minutes` and `sketches` and as `pair_hours` blocks, keyed by the
//!   hour's first minute. A range's whole hours are read from them (a three-week range reads
//!   504 hours, not 30,240 minutes); `meta` `rolled` holds the hours rolled up
//!   (`FROM..UNTIL`, minutes), and a write to a minute of those hours (a late event, an
//!   undone batch) goes to its hour too, so an hour always equals the sum of its minutes.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use warroom_engine::history::{Counts, HistoryBatch, MinuteRows, MinuteSketch, COUNTS, DISTINCT, SITE_P, VENUE_P};
use warroom_engine::hll::Hll;

pub mod projection;
pub mod query;
pub mod report;

pub use query::{Metric, Query, Scope, Series, SlotSteps};

const NONE: u32 = u32::MAX;

/// Batches kept per shard line for replacement: a state restored from a checkpoint up to
/// this many checkpoints old (5 minutes at the default 5 s) still counts once.
pub const KEEP_BATCHES: i64 = 64;

/// Scope kinds of the `minutes` and `sketches` tables.
pub const SITE: i64 = 0;
pub const VENUE: i64 = 1;
pub const PAIR: i64 = 2;
pub const CHANNEL: i64 = 3;
/// A merchant's numbers in a channel (its slots' events through that channel); `id` is a
/// `merchant_channels` row.
pub const MERCHANT_CHANNEL: i64 = 4;
/// Added to a kind: the hour rollup of that kind's rows and sketches (`minute` = the hour's
/// first minute).
pub const HOUR: i64 = 10;
/// Minutes after an hour's end before it is rolled up (later events still go to it, through
/// the write).
const ROLL_AFTER: i64 = 15;
/// Hours rolled up by one write at most: a database of weeks opened by this version for the
/// first time catches up a day per write, not all in the checkpoint that comes first.
const ROLL_MAX_HOURS: i64 = 24;

/// Name kinds of the `names` table.
const N_VENUE: i64 = 1;
const N_SLOT: i64 = 2;
const N_MERCHANT: i64 = 3;
const N_CHANNEL: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "history database {path}: {source}; check the path and the disk, or move the file away to start a new history"
    )]
    Open { path: String, source: rusqlite::Error },
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "history database: a stored value does not decode ({0}); was the file written by another warroom version?"
    )]
    Decode(String),
    #[error("{0}")]
    Query(String),
}

pub type Result<T> = std::result::Result<T, HistoryError>;

/// What one [`Store::write`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub minutes: u64,
    pub rows: u64,
    pub sketches: u64,
    /// Stored batches undone because a batch of the same number or earlier came again (a
    /// restart from a checkpoint older than them).
    pub replaced: u64,
    /// Batches older than every kept batch of their line: not written.
    pub stale: u64,
    /// Hours rolled up after the write.
    pub hours: u64,
}

impl std::ops::AddAssign for WriteStats {
    fn add_assign(&mut self, o: WriteStats) {
        self.minutes += o.minutes;
        self.rows += o.rows;
        self.sketches += o.sketches;
        self.replaced += o.replaced;
        self.stale += o.stale;
        self.hours += o.hours;
    }
}

/// A stored batch's counts, to subtract when it is replaced.
#[derive(Debug, Serialize, Deserialize)]
struct Body(Vec<(i64, i64, i64, [u64; 12])>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_offsets_parse_and_print() {
        for (s, m, label) in [
            ("+08:00", 480, "UTC+8"),
            ("-05:30", -330, "UTC-5:30"),
            ("Z", 0, "UTC"),
            ("+00:00", 0, "UTC"),
            ("+14:00", 840, "UTC+14"),
            ("+05:45", 345, "UTC+5:45"),
        ] {
            assert_eq!(parse_utc_offset(s), Ok(m), "{s}");
            assert_eq!(utc_offset_label(m), label, "{s}");
        }
        for bad in ["", "8", "+8", "+08", "+0800", "08:00", "+15:00", "+14:30", "+08:60", "UTC+8", "+aa:00"] {
            assert!(parse_utc_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sketches_round_trip_sparse_and_dense() {
        for users in [0u64, 5, 3_000, 200_000] {
            let mut h = Hll::new(SITE_P);
            for u in 0..users {
                h.insert(xxhash_rust_free_hash(u));
            }
            let b = encode_hll(&h);
            assert_eq!(b[0], if users < 6_000 { 1 } else { 0 }, "{users} users");
            let back = decode_hll(&b, SITE_P).unwrap();
            assert_eq!(back.registers(), h.registers());
            assert_eq!(back.estimate(), h.estimate());
        }
        // Against a byte-by-byte encoding: values of every bit pattern, arrays of any length.
        let mut seed = 3u64;
        for (len, density) in [(1usize << SITE_P, 7u64), (1 << SITE_P, 2), (64, 3), (13, 2), (5, 1)] {
            let regs: Vec<u8> = (0..len)
                .map(|_| {
                    seed = xxhash_rust_free_hash(seed);
                    if seed.is_multiple_of(density) {
                        (seed >> 56) as u8 | 1
                    } else {
                        0
                    }
                })
                .collect();
            let set: Vec<(usize, u8)> = regs.iter().copied().enumerate().filter(|r| r.1 != 0).collect();
            let naive: Vec<u8> = if set.len() * 3 >= len {
                [&[0u8][..], &regs].concat()
            } else {
                let mut v = vec![1u8];
                for (i, r) in set {
                    v.extend_from_slice(&(i as u16).to_le_bytes());
                    v.push(r);
                }
                v
            };
            assert_eq!(encode_regs(&regs), naive, "{len} registers, 1 in {density} set");
        }
        // A small union through the sorted list: the same bytes as through the registers.
        let mut list = Vec::new();
        for round in 0..300u64 {
            let entries = |seed: &mut u64, n: u64| -> Vec<u32> {
                (0..n)
                    .map(|_| {
                        *seed = xxhash_rust_free_hash(*seed);
                        // Few registers, so that entries repeat; ranks 1..=51.
                        ((*seed % 700) as u32) << 8 | (1 + (*seed >> 32) % 51) as u32
                    })
                    .collect()
            };
            let (a, b) = (entries(&mut seed, round % 90), entries(&mut seed, (round * 7) % 130));
            let sk = [MinuteSketch::Sparse(a), MinuteSketch::Sparse(b)];
            let old = (round % 3 != 0).then(|| {
                let mut regs = vec![0u8; 1 << SITE_P];
                MinuteSketch::Sparse(entries(&mut seed, round % 200)).merge_into(&mut regs);
                encode_regs(&regs)
            });
            let mut regs = vec![0u8; 1 << SITE_P];
            if let Some(o) = &old {
                decode_regs_into(o, &mut regs).unwrap();
            }
            sk.iter().for_each(|h| h.merge_into(&mut regs));
            let small = union_small(old.as_deref(), &[&sk[0], &sk[1]], SITE_P, &mut list).unwrap();
            assert_eq!(small.as_deref(), Some(&encode_regs(&regs)[..]), "round {round}");
        }
        let dense = MinuteSketch::Dense(Hll::new(SITE_P));
        assert_eq!(union_small(None, &[&dense], SITE_P, &mut list).unwrap(), None, "a dense sketch: the registers");
        assert!(decode_hll(&[1, 0xff, 0xff, 3], 12).is_err(), "index beyond the registers");
        assert!(decode_hll(&[0, 1, 2], SITE_P).is_err(), "too few registers");
    }

    /// A block-minute decodes to what was encoded (zeros, negative and the largest counts
    /// too); a cut or disordered one is refused, not misread.
    #[test]
    fn pair_blocks_round_trip_and_refuse_what_is_cut() {
        let mut seed = 7u64;
        for n in [0usize, 1, 2, 17, 256] {
            let mut entries: Vec<(u8, [i64; 12])> = (0..n)
                .map(|k| {
                    let mut v = [0i64; 12];
                    for x in v.iter_mut() {
                        seed = xxhash_rust_free_hash(seed);
                        *x = match seed % 5 {
                            0 | 1 => 0,
                            2 => (seed >> 40) as i64,
                            3 => i64::MAX - (seed % 3) as i64,
                            _ => -((seed >> 50) as i64),
                        };
                    }
                    (k as u8, v)
                })
                .collect();
            entries.sort_by_key(|e| e.0);
            let b = encode_block(entries.iter().copied());
            assert_eq!(decode_block(&b).unwrap(), entries, "{n} pairs");
            if !b.is_empty() {
                assert!(decode_block(&b[..b.len() - 1]).is_err(), "{n} pairs cut short");
            }
        }
        let one = encode_block([(5u8, [1i64; 12])].into_iter());
        assert!(decode_block(&[one.clone(), one].concat()).is_err(), "the same pair twice");
        assert_eq!(encode_block([(3u8, [0i64; 12])].into_iter()).len(), 3, "a pair's zero minute: offset and mask");
    }

    /// Two shards' parts touching the same pair minutes, blocks apart, and an undone batch:
    /// what is read back is the naive sum of what is left.
    #[test]
    fn pair_minutes_sum_across_parts_blocks_and_undo() {
        use warroom_engine::history::{HistoryNames, PartBatch};
        let names = HistoryNames {
            venues: vec!["v".into()],
            slots: (0..600).map(|i| format!("s{i:03}")).collect(),
            merchants: vec!["m0".into(), "m1".into()],
            channels: vec![],
            pairs: (0..600).map(|i| (i, i % 2)).collect(),
            slot_venues: vec![0; 600],
        };
        let part = |part: u32, seq: u64, pairs: &[(u32, i64, u64)]| {
            let mut minutes: Vec<MinuteRows> = Vec::new();
            for &(p, minute, gmv) in pairs {
                let i = match minutes.iter().position(|m| m.minute == minute) {
                    Some(i) => i,
                    None => {
                        minutes.push(empty_minute(minute));
                        minutes.len() - 1
                    }
                };
                let m = &mut minutes[i];
                for c in [&mut m.site, m.pairs.get(p)] {
                    c.gmv += gmv;
                    c.paid_orders += 1;
                }
            }
            minutes.sort_by_key(|m| m.minute);
            PartBatch { lineage: 1, part, seq, minutes }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("h.db")).unwrap();
        let first = [(0u32, 10i64, 100u64), (1, 10, 7), (599, 10, 3), (300, 11, 5)];
        let second = [(0u32, 10i64, 1u64), (599, 10, 2), (0, 11, 9)];
        let b = |parts| HistoryBatch { parts, names: names.clone() };
        s.write(&b(vec![part(0, 0, &first), part(1, 0, &second)])).unwrap();
        // Shard 1's batch 1, then again (its checkpoint lost): counted once.
        let third = [(599u32, 12i64, 40u64)];
        s.write(&b(vec![part(1, 1, &third)])).unwrap();
        assert_eq!(s.write(&b(vec![part(1, 1, &third)])).unwrap().replaced, 1);
        let mut naive: HashMap<String, u64> = HashMap::new();
        for &(p, _, g) in first.iter().chain(&second).chain(&third) {
            *naive.entry(format!("s{p:03}")).or_default() += g;
        }
        let got: HashMap<String, u64> =
            s.by_slot(0, 13 * 60_000, None).unwrap().into_iter().map(|r| (r.name, r.counts.gmv)).collect();
        assert_eq!(got, naive);
        let m1: u64 = first.iter().chain(&second).chain(&third).filter(|r| r.0 % 2 == 1).map(|r| r.2).sum();
        let t = s.totals(&Scope::Merchant("m1".into()), None, 0, 13 * 60_000).unwrap();
        assert_eq!(t.counts.gmv, m1);
        let sub = s.totals(&Scope::Slot("s599".into()), None, 10 * 60_000, 11 * 60_000).unwrap();
        assert_eq!(sub.counts.gmv, 5, "minute 10 only");
        assert_eq!(s.row_counts().unwrap()[PAIR as usize], 6, "pair minutes with activity");
    }

    /// The spans of a range cover it exactly, in order; a span read from the rollups is whole
    /// hours inside the rolled ones, each hour inside one step.
    #[test]
    fn spans_cover_the_range_and_use_whole_rolled_hours_in_one_step() {
        let mut seed = 11u64;
        let mut next = |n: u64| {
            seed = xxhash_rust_free_hash(seed);
            (seed % n) as i64
        };
        let mut used_hours = 0;
        for _ in 0..5_000 {
            let from = next(600);
            let to = from + next(600);
            let step = [1, 7, 60, 120, 90, i64::MAX][next(6) as usize];
            let a = next(8) * 60;
            let rolled = (next(4) != 0).then_some((a, a + next(8) * 60));
            let sp = query::spans(from, to, step, rolled);
            let mut at = from;
            for x in &sp {
                assert_eq!(x.start, at, "{from}..{to} step {step} rolled {rolled:?}: {sp:?}");
                assert!(x.end > x.start);
                if x.hours {
                    used_hours += 1;
                    let (a, b) = rolled.unwrap();
                    assert!(x.start % 60 == 0 && x.end % 60 == 0 && a <= x.start && x.end <= b, "{sp:?}");
                    for h in (x.start..x.end).step_by(60) {
                        assert_eq!((h - from) / step, (h + 59 - from) / step, "an hour across two steps: {sp:?}");
                    }
                }
                at = x.end;
            }
            assert_eq!(at, to.max(from), "{from}..{to}: {sp:?}");
            // Every whole rolled hour in one step is read from its rollup.
            if let Some((a, b)) = rolled {
                for h in (a..b).step_by(60).filter(|&h| from <= h && h + 60 <= to) {
                    let one = (h - from) / step == (h + 59 - from) / step;
                    let read = sp.iter().any(|x| x.hours && x.start <= h && h < x.end);
                    assert_eq!(read, one, "hour {h} of {from}..{to} step {step} rolled {rolled:?}: {sp:?}");
                }
            }
        }
        assert!(used_hours > 300, "spans read from rollups: {used_hours}");
    }

    /// Hour rollups change no answer. Five hours of minutes in batches, with late minutes into
    /// hours already rolled up and a batch replaced after its hour was rolled up: every query
    /// (series of counts and distinct counts, totals, by slot, merchant, venue and channel, a
    /// race's slots over time) reads the same with the rollups as from the minutes alone, and
    /// the counts equal a naive sum of what was written.
    #[test]
    fn hour_rollups_answer_what_the_minutes_answer() {
        use warroom_engine::history::{HistoryNames, PartBatch};
        let names = HistoryNames {
            venues: vec!["v0".into(), "v1".into(), "v2".into()],
            slots: (0..600).map(|i| format!("s{i:03}")).collect(),
            merchants: (0..5).map(|i| format!("m{i}")).collect(),
            channels: vec!["app".into(), "search".into()],
            pairs: (0..600).map(|i| (i, i % 5)).collect(),
            slot_venues: (0..600).map(|i| i % 3).collect(),
        };
        let seed = std::cell::Cell::new(5u64);
        let rnd = |n: u64| {
            seed.set(xxhash_rust_free_hash(seed.get()));
            seed.get() % n
        };
        // Minutes since the epoch (2025-02).
        let t0 = 29_000_000i64;
        // A minute's rows, its events drawn at random.
        let minute_rows = |minute: i64| {
            let mut m = empty_minute(minute);
            for _ in 0..rnd(40) {
                let pair = rnd(600) as u32;
                let venue = pair % 3;
                let ch = rnd(2) as u32;
                let user = rnd(5_000);
                let paid = rnd(3) == 0;
                let gmv = if paid { 100 + rnd(10_000) } else { 0 };
                let f = |c: &mut Counts| {
                    c.clicks += 1;
                    c.gmv += gmv;
                    c.paid_orders += paid as u64;
                };
                f(&mut m.site);
                f(m.venues.get(venue));
                f(m.pairs.get(pair));
                f(m.channels.get(ch));
                if m.merchant_channels.len() <= ch as usize {
                    m.merchant_channels.resize_with(ch as usize + 1, Default::default);
                }
                f(m.merchant_channels[ch as usize].get(pair % 5));
                let metric = if paid { 2 } else { rnd(2) as usize };
                let h = xxhash_rust_free_hash(user);
                m.sketches.get_or_insert_with(Box::default)[metric].insert(h, SITE_P);
                let k = match m.venue_sketches.iter().position(|v| v.0 == venue) {
                    Some(k) => k,
                    None => {
                        m.venue_sketches.push((venue, Box::default()));
                        m.venue_sketches.len() - 1
                    }
                };
                m.venue_sketches[k].1[metric].insert(h, VENUE_P);
            }
            m
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut s = Store::open(&path).unwrap();
        let b = |parts: Vec<PartBatch>| HistoryBatch { parts, names: names.clone() };
        // Naive sums: (scope name, minute) -> (gmv, paid orders, clicks).
        let mut naive: HashMap<(String, i64), [u64; 3]> = HashMap::new();
        let add = |naive: &mut HashMap<(String, i64), [u64; 3]>, m: &MinuteRows, sign: i64| {
            let mut put = |k: String, c: &Counts| {
                let e = naive.entry((k, m.minute)).or_default();
                for (a, b) in e.iter_mut().zip([c.gmv, c.paid_orders, c.clicks]) {
                    *a = (*a as i64 + sign * b as i64) as u64;
                }
            };
            put("site".into(), &m.site);
            for (p, c) in &m.pairs.rows {
                put(format!("slot s{p:03}"), c);
                put(format!("merchant m{}", p % 5), c);
            }
            for (v, c) in &m.venues.rows {
                put(format!("venue v{v}"), c);
            }
            for (ch, c) in &m.channels.rows {
                put(format!("channel {}", names.channels[*ch as usize]), c);
            }
            for (ch, rows) in m.merchant_channels.iter().enumerate() {
                for (mi, c) in &rows.rows {
                    put(format!("merchant m{mi} channel {}", names.channels[ch]), c);
                }
            }
        };
        let mut replaced: Option<Vec<MinuteRows>> = None;
        for (seq, start) in (0..300i64).step_by(7).enumerate() {
            let mut minutes: Vec<MinuteRows> = (start..(start + 7).min(300)).map(|k| minute_rows(t0 + k)).collect();
            // A late minute, up to 40 minutes back (into an hour rolled up already).
            if start >= 40 && rnd(2) == 0 {
                minutes.insert(0, minute_rows(t0 + start - 1 - rnd(40) as i64));
                let first = minutes[0].minute;
                minutes.retain(|m| m.minute >= first);
                minutes.sort_by_key(|m| m.minute);
                minutes.dedup_by_key(|m| m.minute);
            }
            for m in &minutes {
                add(&mut naive, m, 1);
            }
            s.write(&b(vec![PartBatch { lineage: 1, part: 0, seq: seq as u64, minutes }])).unwrap();
            if start == 70 {
                // Shard 1's batch 0: minutes of the first hour, replaced below once rolled up.
                let old: Vec<MinuteRows> = (3..6).map(|k| minute_rows(t0 + k)).collect();
                for m in &old {
                    add(&mut naive, m, 1);
                }
                s.write(&b(vec![PartBatch { lineage: 1, part: 1, seq: 0, minutes: old.clone() }])).unwrap();
                replaced = Some(old);
            }
        }
        assert!(s.rolled.is_some_and(|(a, b)| a <= t0 && b >= t0 + 240), "rolled {:?}", s.rolled);
        // Shard 1's batch 0 again (its checkpoint lost), with other minutes.
        let again: Vec<MinuteRows> = (4..8).map(|k| minute_rows(t0 + k)).collect();
        for m in replaced.as_ref().unwrap() {
            add(&mut naive, m, -1);
        }
        for m in &again {
            add(&mut naive, m, 1);
        }
        assert_eq!(s.write(&b(vec![PartBatch { lineage: 1, part: 1, seq: 0, minutes: again }])).unwrap().replaced, 1);
        let hour_rows: i64 =
            s.conn.query_row("SELECT COUNT(*) FROM minutes WHERE kind >= ?1", [HOUR], |r| r.get(0)).unwrap();
        let hour_blocks: i64 = s.conn.query_row("SELECT COUNT(*) FROM pair_hours", [], |r| r.get(0)).unwrap();
        assert!(hour_rows > 20 && hour_blocks >= 12, "hour rows {hour_rows}, pair hours {hour_blocks}");

        let scopes = [
            Scope::Site,
            Scope::Venue("v1".into()),
            Scope::Channel("search".into()),
            Scope::Slot("s007".into()),
            Scope::Merchant("m3".into()),
        ];
        let ranges: Vec<(i64, i64, i64)> = vec![
            (t0, t0 + 300, 60),
            (t0, t0 + 300, 120),
            (t0 - 60, t0 + 400, 1440),
            (t0 + 3, t0 + 250, 60),
            (t0 + 60, t0 + 180, 7),
            (t0 + 17, t0 + 299, 1),
            (t0 + 120, t0 + 240, 30),
        ];
        let answers = |s: &Store| {
            let mut out: Vec<String> = Vec::new();
            for &(from, to, step) in &ranges {
                let (fm, tm) = (from * 60_000, to * 60_000);
                for scope in &scopes {
                    for metric in ["gmv", "paid_orders", "clicks", "uv", "ipv_uv", "buyers"] {
                        let q = Query {
                            metric: Metric::parse(metric).unwrap(),
                            scope: scope.clone(),
                            from_ms: fm,
                            to_ms: tm,
                            step_ms: step * 60_000,
                            merchant: None,
                        };
                        match s.series(&q) {
                            Ok(r) => out.push(format!("{scope:?} {metric} {from}..{to}/{step}: {:?}", r.points)),
                            Err(e) => out.push(format!("{scope:?} {metric}: {e}")),
                        }
                    }
                    out.push(format!(
                        "{scope:?} totals {from}..{to}: {:?}",
                        s.totals(scope, None, fm, tm).map(|t| (t.counts, t.distinct)).map_err(|e| e.to_string())
                    ));
                }
                let listed = |rows: Result<Vec<query::Row>>| {
                    rows.unwrap().into_iter().map(|r| (r.name, r.counts)).collect::<Vec<_>>()
                };
                out.push(format!("slots {:?}", listed(s.by_slot(fm, tm, None))));
                out.push(format!("merchant m2 slots {:?}", listed(s.by_slot(fm, tm, Some("m2")))));
                out.push(format!("merchants {:?}", listed(s.by_merchant(fm, tm))));
                for kind in [VENUE, CHANNEL] {
                    out.push(format!("{kind} {:?}", listed(s.by_name(kind, fm, tm))));
                }
                out.push(format!("m3 channels {:?}", listed(s.by_channel(fm, tm, Some("m3")))));
                let q = Query {
                    metric: Metric::parse("gmv").unwrap(),
                    scope: Scope::Channel("app".into()),
                    from_ms: fm,
                    to_ms: tm,
                    step_ms: step * 60_000,
                    merchant: Some("m1".into()),
                };
                out.push(format!("m1 app {:?}", s.series(&q).unwrap().points));
                out.push(format!("race {:?}", s.venue_slot_gmv("v2", fm, tm, step * 60_000, None).unwrap()));
                out.push(format!("m1 race {:?}", s.venue_slot_gmv("v2", fm, tm, step * 60_000, Some("m1")).unwrap()));
            }
            out
        };
        let rolled = answers(&s);
        // Counts against the naive sums.
        for &(from, to, _) in &ranges {
            for (scope, name) in [
                (Scope::Site, "site".to_string()),
                (Scope::Slot("s007".into()), "slot s007".into()),
                (Scope::Merchant("m3".into()), "merchant m3".into()),
                (Scope::Channel("search".into()), "channel search".into()),
                (Scope::Venue("v1".into()), "venue v1".into()),
            ] {
                let mut want = [0u64; 3];
                for m in from..to {
                    if let Some(v) = naive.get(&(name.clone(), m)) {
                        for (a, b) in want.iter_mut().zip(v) {
                            *a += b;
                        }
                    }
                }
                let c = s.totals(&scope, None, from * 60_000, to * 60_000).unwrap().counts;
                assert_eq!([c.gmv, c.paid_orders, c.clicks], want, "{name} {from}..{to}");
            }
            // A merchant's channels: one by one, and all of them in one read.
            let sum = |name: &str| {
                let mut want = [0u64; 3];
                for m in from..to {
                    if let Some(v) = naive.get(&(name.to_string(), m)) {
                        for (a, b) in want.iter_mut().zip(v) {
                            *a += b;
                        }
                    }
                }
                want
            };
            let all = s.by_channel(from * 60_000, to * 60_000, Some("m3")).unwrap();
            for ch in ["app", "search"] {
                let want = sum(&format!("merchant m3 channel {ch}"));
                let c = s.totals(&Scope::Channel(ch.into()), Some("m3"), from * 60_000, to * 60_000).unwrap().counts;
                assert_eq!([c.gmv, c.paid_orders, c.clicks], want, "m3 {ch} {from}..{to}");
                let row = all.iter().find(|r| r.name == ch).map(|r| r.counts).unwrap_or_default();
                assert_eq!([row.gmv, row.paid_orders, row.clicks], want, "m3 by channel {ch} {from}..{to}");
            }
        }
        // The same store read from its minutes only.
        s.conn.execute("DELETE FROM meta WHERE key = 'rolled'", []).unwrap();
        assert_eq!(s.rolled_hours().unwrap(), None);
        let minutes = answers(&s);
        assert_eq!(rolled.len(), minutes.len());
        for (a, b) in rolled.iter().zip(&minutes) {
            assert_eq!(a, b);
        }
    }

    /// A query reads one snapshot and holds nothing a write waits for: a write made while a
    /// read is open lands at once (the reader would wait forever for it otherwise), and the
    /// read still sees the database as it was when it started.
    #[test]
    fn a_long_read_does_not_hold_back_writes_and_sees_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(HistoryDb::open(Some(&dir.path().join("h.db"))).unwrap());
        db.with(|s| s.set_meta("k", "before")).unwrap();
        let (to_writer, written) = (std::sync::mpsc::channel::<()>(), std::sync::mpsc::channel::<()>());
        let writer = {
            let db = db.clone();
            let go = to_writer.1;
            let done = written.0;
            std::thread::spawn(move || {
                go.recv().unwrap();
                db.with(|s| s.set_meta("k", "after")).unwrap();
                done.send(()).unwrap();
            })
        };
        let seen = db.read(|s| {
            let first = s.meta("k").unwrap();
            to_writer.0.send(()).unwrap();
            written
                .1
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the write waited for the read to finish");
            (first, s.meta("k").unwrap())
        });
        writer.join().unwrap();
        assert_eq!(seen, (Some("before".into()), Some("before".into())), "one snapshot for the whole read");
        assert_eq!(db.read(|s| s.meta("k").unwrap()), Some("after".into()));
    }

    fn empty_minute(minute: i64) -> MinuteRows {
        MinuteRows {
            minute,
            site: Counts::default(),
            venues: Default::default(),
            pairs: Default::default(),
            channels: Default::default(),
            merchant_channels: vec![],
            sketches: None,
            venue_sketches: vec![],
        }
    }

    /// A 64-bit mix (splitmix64), so the test needs no hash crate.
    fn xxhash_rust_free_hash(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// An alert or a rule change, as kept in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub at_ms: i64,
    /// `alert` or `rule_change`.
    pub kind: String,
    pub body: serde_json::Value,
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// (name kind, name) -> id.
    ids: Ids,
    /// (slot id, merchant id or -1) -> pair id.
    pair_ids: HashMap<(i64, i64), i64>,
    /// (merchant id, channel id) -> `merchant_channels` id.
    mc_ids: HashMap<(i64, i64), i64>,
    /// Whether stored batches are kept to be undone (not for a replay's new file: its batches
    /// never come again).
    keep_undo: bool,
    /// The hours rolled up, `[from, until)` in minutes (`meta` `rolled`).
    rolled: Option<(i64, i64)>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names(kind INTEGER NOT NULL, name TEXT NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY(kind, name)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS names_id ON names(kind, id);
CREATE TABLE IF NOT EXISTS pairs(id INTEGER PRIMARY KEY, slot INTEGER NOT NULL, merchant INTEGER NOT NULL,
    venue INTEGER NOT NULL, UNIQUE(slot, merchant));
CREATE TABLE IF NOT EXISTS merchant_channels(id INTEGER PRIMARY KEY, merchant INTEGER NOT NULL,
    channel INTEGER NOT NULL, UNIQUE(merchant, channel));
CREATE TABLE IF NOT EXISTS minutes(kind INTEGER NOT NULL, id INTEGER NOT NULL, minute INTEGER NOT NULL,
    gmv INTEGER NOT NULL, paid_orders INTEGER NOT NULL, coupons INTEGER NOT NULL, coupon_cents INTEGER NOT NULL,
    refunds INTEGER NOT NULL, refund_cents INTEGER NOT NULL, orders_placed INTEGER NOT NULL,
    order_cents INTEGER NOT NULL, favorites INTEGER NOT NULL, carts INTEGER NOT NULL,
    impressions INTEGER NOT NULL, clicks INTEGER NOT NULL,
    PRIMARY KEY(kind, id, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pair_minutes(block INTEGER NOT NULL, minute INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY(block, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pair_hours(block INTEGER NOT NULL, minute INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY(block, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sketches(kind INTEGER NOT NULL, id INTEGER NOT NULL, minute INTEGER NOT NULL,
    metric INTEGER NOT NULL, hll BLOB NOT NULL, PRIMARY KEY(kind, id, minute, metric)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches(part TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY(part, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal(at_ms INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_at ON journal(at_ms);
";

/// UTC+8, the offset of the promotions warroom is made for, when none is configured.
pub const DEFAULT_UTC_OFFSET: i32 = 480;

/// `+08:00`, `-05:30`, `Z` -> minutes east of UTC.
pub fn parse_utc_offset(s: &str) -> std::result::Result<i32, String> {
    let bad = || format!("`{s}`: a UTC offset is +HH:MM or -HH:MM (+08:00 for China), or Z");
    if s == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 || h * 60 + m > 14 * 60 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// Minutes east of UTC -> `UTC+8`, `UTC-5:30`, `UTC`.
pub fn utc_offset_label(minutes: i32) -> String {
    let (sign, a) = (if minutes < 0 { '-' } else { '+' }, minutes.unsigned_abs());
    match (a / 60, a % 60) {
        (0, 0) => "UTC".into(),
        (h, 0) => format!("UTC{sign}{h}"),
        (h, m) => format!("UTC{sign}{h}:{m:02}"),
    }
}

impl Store {
    /// Opens (creating if needed) the history database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let err = |source| HistoryError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(err)?;
        // WAL: readers (the API, `warroom review`) never block the writer; FULL: a committed
        // batch is on disk before the checkpoint that follows it is.
        // 64 MiB of page cache: a batch touches the newest minutes' pages again and again
        // (measured: the default 2 MiB re-read them from the kernel for a third of a write).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA cache_size=-65536;",
        )
        .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // Every statement a write and the queries use stays prepared (the default 16 did not
        // hold them all: a replay spent 5% preparing the same statements again).
        conn.set_prepared_statement_cache_capacity(64);
        Store::on(conn)
    }

    /// For a database written in one go and thrown away if the writing stops (a replay's new
    /// file): commits do not wait for the disk (`synchronous=OFF`); the file is synced when
    /// it is closed. Never for a monitor's database, whose batches must be on disk before the
    /// checkpoint after them.
    /// Nor are its batches kept to be undone: a replay's batches never come again (no
    /// checkpoint is restored under it).
    pub fn bulk_load(&mut self) -> Result<()> {
        self.conn.execute_batch("PRAGMA synchronous=OFF;")?;
        self.keep_undo = false;
        Ok(())
    }

    /// Opens an existing database for reading only (a report from a copy of the file).
    pub fn open_read(path: &Path) -> Result<Store> {
        let err = |source| HistoryError::Open { path: path.display().to_string(), source };
        if !path.exists() {
            return Err(err(rusqlite::Error::InvalidPath(path.into())));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.execute_batch("PRAGMA busy_timeout=5000;").map_err(err)?;
        Store::on(conn)
    }

    /// A store on an open connection, its names and ids loaded.
    fn on(conn: Connection) -> Result<Store> {
        let mut s = Store {
            conn,
            ids: Ids::default(),
            pair_ids: HashMap::new(),
            mc_ids: HashMap::new(),
            keep_undo: true,
            rolled: None,
        };
        s.load_ids()?;
        Ok(s)
    }

    fn load_ids(&mut self) -> Result<()> {
        // Format 1 kept each pair's minute as a `minutes` row (kind 2); pairs are in
        // `pair_minutes` blocks since.
        let old: Option<i64> =
            self.conn.query_row("SELECT 1 FROM minutes WHERE kind = ?1 LIMIT 1", [PAIR], |r| r.get(0)).optional()?;
        if old.is_some() {
            return Err(HistoryError::Decode(
                "pair minutes stored as rows (history format 1, warroom before 2026-11-30); write the history again with this version (warroom replay --history NEW_FILE)".into(),
            ));
        }
        let mut st = self.conn.prepare("SELECT kind, name, id FROM names")?;
        let rows = st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        for r in rows {
            let (k, v) = r?;
            let (kind, name): (i64, String) = k;
            self.ids.insert(kind, name, v);
        }
        let mut st = self.conn.prepare("SELECT slot, merchant, id FROM pairs")?;
        let rows = st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        for r in rows {
            let (k, v) = r?;
            self.pair_ids.insert(k, v);
        }
        let mut st = self.conn.prepare("SELECT merchant, channel, id FROM merchant_channels")?;
        let rows = st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        for r in rows {
            let (k, v) = r?;
            self.mc_ids.insert(k, v);
        }
        self.rolled = self.rolled_hours()?;
        Ok(())
    }

    /// The hours rolled up, `[from, until)` in minutes, as stored.
    pub fn rolled_hours(&self) -> Result<Option<(i64, i64)>> {
        let Some(v) = self.meta("rolled")? else { return Ok(None) };
        let bad = || HistoryError::Decode(format!("meta rolled = {v:?}"));
        let (a, b) = v.split_once("..").ok_or_else(bad)?;
        let r = (a.parse::<i64>().map_err(|_| bad())?, b.parse::<i64>().map_err(|_| bad())?);
        if r.0 % 60 != 0 || r.1 % 60 != 0 || r.1 < r.0 {
            return Err(bad());
        }
        Ok(Some(r))
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The id of a name (`None`: never stored).
    pub fn name_id(&self, kind: i64, name: &str) -> Option<i64> {
        self.ids.get(kind, name).or_else(|| {
            // A reading connection's cache misses the names written since it was opened.
            self.conn
                .query_row("SELECT id FROM names WHERE kind = ?1 AND name = ?2", params![kind, name], |r| r.get(0))
                .ok()
        })
    }

    /// Writes a batch in one transaction (see the module doc). Safe to call with the same
    /// batch twice. Every part's rows (and the undone batches' rows) are summed first, so a
    /// row, a block of pairs or a sketch that several shards touched is written once.
    pub fn write(&mut self, batch: &HistoryBatch) -> Result<WriteStats> {
        let mut stats = WriteStats::default();
        let (keep_undo, rolled) = (self.keep_undo, self.rolled);
        let tx = self.conn.transaction()?;
        let mut ids = std::mem::take(&mut self.ids);
        let mut pair_ids = std::mem::take(&mut self.pair_ids);
        let mut mc_ids = std::mem::take(&mut self.mc_ids);
        let mut newest = i64::MIN;
        let r = (|| -> Result<()> {
            let mut namer = Namer {
                tx: &tx,
                ids: &mut ids,
                pair_ids: &mut pair_ids,
                mc_ids: &mut mc_ids,
                names: &batch.names,
                seen: Default::default(),
            };
            // What this write adds (and takes away); to rolled-up hours too.
            let mut deltas = Deltas { rolled, ..Default::default() };
            // (kind, id, minute, metric, sketch): what it unions.
            let mut unions: Vec<(i64, i64, i64, i64, &MinuteSketch)> = Vec::new();
            // Empty parts too: their numbers undo stored batches of a run that did not persist.
            for part in &batch.parts {
                let key = part.key();
                let seq = part.seq as i64;
                let first: Option<i64> = tx
                    .prepare_cached("SELECT MIN(seq) FROM batches WHERE part = ?1")?
                    .query_row([&key], |r| r.get(0))?;
                if first.is_some_and(|f| seq < f) {
                    if !part.minutes.is_empty() {
                        tracing::error!(part = %key, seq, oldest = first, "history batch older than every batch kept of its line: not written (a state restored from a checkpoint more than {KEEP_BATCHES} checkpoints old?); its minutes may be short");
                        stats.stale += 1;
                    }
                    continue;
                }
                // Batches numbered `seq` or later are of a run that did not persist its
                // checkpoint (this batch's state was restored from an earlier one): their
                // events come again, in this batch and the next ones. An empty batch says so
                // too (a restored state's first checkpoint may come before anything is applied
                // again: seen as doubled minutes when empty batches were not written).
                let later: Vec<(i64, Vec<u8>)> = {
                    let mut st =
                        tx.prepare_cached("SELECT seq, body FROM batches WHERE part = ?1 AND seq >= ?2 ORDER BY seq")?;
                    let rows = st.query_map(params![key, seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                for (_, body) in &later {
                    let old: Body = postcard::from_bytes(body).map_err(|e| HistoryError::Decode(e.to_string()))?;
                    for (kind, id, minute, v) in &old.0 {
                        deltas.add(*kind, *id, *minute, v, -1);
                    }
                    stats.replaced += 1;
                }
                if part.minutes.is_empty() {
                    if !later.is_empty() {
                        tx.execute("DELETE FROM batches WHERE part = ?1 AND seq >= ?2", params![key, seq])?;
                    }
                    continue;
                }
                if keep_undo {
                    tx.execute(
                        "DELETE FROM batches WHERE part = ?1 AND (seq >= ?2 OR seq < ?3)",
                        params![key, seq, seq - KEEP_BATCHES],
                    )?;
                }
                let mut body = Vec::new();
                for m in &part.minutes {
                    namer.rows(m, |kind, id, c| {
                        let v = c.values();
                        deltas.add(kind, id, m.minute, &v, 1);
                        stats.rows += 1;
                        if keep_undo {
                            body.push((kind, id, m.minute, v));
                        }
                    })?;
                    stats.minutes += 1;
                    newest = newest.max(m.minute);
                    // A minute of a rolled-up hour: its sketches go to the hour's too.
                    let hour = in_hours(rolled, m.minute);
                    let mut scoped: Vec<(i64, i64, &[MinuteSketch; 3])> = Vec::new();
                    if let Some(s) = &m.sketches {
                        scoped.push((SITE, 0, s));
                    }
                    for (v, s) in &m.venue_sketches {
                        scoped.push((VENUE, namer.name(N_VENUE, &batch.names.venues, *v)?, s));
                    }
                    for (kind, id, s) in scoped {
                        for (k, h) in s.iter().enumerate() {
                            unions.push((kind, id, m.minute, k as i64, h));
                            if let Some(hour) = hour {
                                unions.push((kind + HOUR, id, hour, k as i64, h));
                            }
                        }
                    }
                }
                if keep_undo {
                    let body = postcard::to_allocvec(&Body(body)).map_err(|e| HistoryError::Decode(e.to_string()))?;
                    tx.execute("INSERT INTO batches(part, seq, body) VALUES(?1, ?2, ?3)", params![key, seq, body])?;
                }
            }
            deltas.apply(&tx)?;
            stats.sketches = apply_unions(&tx, unions)?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                tx.commit()?;
                self.ids = ids;
                self.pair_ids = pair_ids;
                self.mc_ids = mc_ids;
                if newest > i64::MIN {
                    // The batch is stored whatever happens here: a roll-up that fails is tried
                    // again after the next write (queries read minutes meanwhile).
                    match self.roll_up(newest - ROLL_AFTER) {
                        Ok(n) => stats.hours = n,
                        Err(e) => {
                            tracing::error!(error = %e, "history hours not rolled up (queries of long ranges read minutes meanwhile); check the history database's disk")
                        }
                    }
                }
                Ok(stats)
            }
            Err(e) => {
                drop(tx);
                // The ids handed out inside the failed transaction were rolled back with it.
                self.ids.clear();
                self.pair_ids.clear();
                self.mc_ids.clear();
                self.load_ids()?;
                Err(e)
            }
        }
    }

    /// Adds an alert or a rule change to the journal.
    pub fn journal(&self, e: &JournalEntry) -> Result<()> {
        self.conn.execute(
            "INSERT INTO journal(at_ms, kind, body) VALUES(?1, ?2, ?3)",
            params![e.at_ms, e.kind, e.body.to_string()],
        )?;
        Ok(())
    }

    /// Journal entries of `kind` (all kinds if `None`) in `[from, to)`, oldest first.
    pub fn journal_entries(&self, kind: Option<&str>, from: i64, to: i64) -> Result<Vec<JournalEntry>> {
        let mut st = self.conn.prepare(
            "SELECT at_ms, kind, body FROM journal WHERE at_ms >= ?1 AND at_ms < ?2
             AND (?3 IS NULL OR kind = ?3) ORDER BY at_ms, rowid",
        )?;
        let rows = st.query_map(params![from, to, kind], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (at_ms, kind, body) = r?;
            let body = serde_json::from_str(&body).map_err(|e| HistoryError::Decode(e.to_string()))?;
            out.push(JournalEntry { at_ms, kind, body });
        }
        Ok(out)
    }

    /// Sets a value of the `meta` table (`plan`: the promotion's plan as JSON).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// The promotion's clock (`meta utc_offset`, minutes east of UTC, written from
    /// `[history] utc_offset`): the times the review and the screen print. UTC+8 when the
    /// history does not say (written before it was recorded).
    pub fn utc_offset(&self) -> Result<i32> {
        match self.meta("utc_offset")? {
            Some(v) => parse_utc_offset(&v).map_err(|e| HistoryError::Decode(format!("the stored utc_offset: {e}"))),
            None => Ok(DEFAULT_UTC_OFFSET),
        }
    }

    /// The plan stored with the history, if any.
    pub fn plan(&self) -> Result<Option<warroom_engine::plan::PlanConfig>> {
        match self.meta("plan")? {
            Some(v) => {
                serde_json::from_str(&v).map(Some).map_err(|e| HistoryError::Decode(format!("the stored plan: {e}")))
            }
            None => Ok(None),
        }
    }

    /// Site GMV per stored minute in `[from_ms, to_ms)`: (minute start ms, cents).
    pub fn gmv_minutes(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, u64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT minute, gmv FROM minutes WHERE kind = 0 AND id = 0 AND minute >= ?1 AND minute < ?2 ORDER BY minute",
        )?;
        let rows = st.query_map(params![from_ms.div_euclid(60_000), to_ms.div_euclid(60_000)], |r| {
            Ok((r.get::<_, i64>(0)? * 60_000, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The first and last stored minute (site rows), if any.
    pub fn bounds(&self) -> Result<Option<(i64, i64)>> {
        let r: (Option<i64>, Option<i64>) =
            // Two seeks (MIN and MAX together made SQLite read every site minute: 0.35 ms of
            // each curve request on a 7-day history).
            self.conn.query_row(
                "SELECT (SELECT minute FROM minutes WHERE kind = 0 AND id = 0 ORDER BY minute LIMIT 1),
                        (SELECT minute FROM minutes WHERE kind = 0 AND id = 0 ORDER BY minute DESC LIMIT 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
        Ok(r.0.zip(r.1))
    }

    /// Bytes the database takes (pages in use x page size).
    pub fn size_bytes(&self) -> Result<u64> {
        let (count, size): (i64, i64) = self.conn.query_row(
            "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((count * size) as u64)
    }

    /// Rolls up the hours that end by minute `through` and are not rolled up yet (a day of
    /// them at most), from the first stored minute's hour on: rows and pairs' blocks summed,
    /// sketches unioned, in one transaction with `meta` `rolled` (see the module doc).
    /// Returns the hours rolled up.
    pub fn roll_up(&mut self, through: i64) -> Result<u64> {
        let from = match self.rolled {
            Some((_, b)) => b,
            None => match self.bounds()? {
                Some((first, _)) => hour_of(first),
                None => return Ok(0),
            },
        };
        let until = hour_of(through).min(from + ROLL_MAX_HOURS * 60);
        if until <= from {
            return Ok(0);
        }
        let start = self.rolled.map_or(from, |r| r.0);
        let tx = self.conn.transaction()?;
        roll_up_hours(&tx, from, until)?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES('rolled', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [format!("{start}..{until}")],
        )?;
        tx.commit()?;
        self.rolled = Some((start, until));
        Ok(((until - from) / 60) as u64)
    }

    /// Rolls up every whole hour stored (the end of a replay: no later events come).
    pub fn roll_up_all(&mut self) -> Result<u64> {
        let Some((_, last)) = self.bounds()? else { return Ok(0) };
        let mut n = 0;
        loop {
            match self.roll_up(last + 1)? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    }

    /// pairs' minutes in the `pair_minutes` blocks.
    pub fn row_counts(&self) -> Result<[u64; 4]> {
        let mut out = [0u64; 4];
        let mut st = self.conn.prepare("SELECT body FROM pair_minutes")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let body = r.get_ref(0)?.as_blob().map_err(|e| HistoryError::Decode(e.to_string()))?;
            each_block_entry(body, |_, _| out[PAIR as usize] += 1)?;
        }
        let mut st = self.conn.prepare("SELECT kind, COUNT(*) FROM minutes GROUP BY kind")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for r in rows {
            let (k, n) = r?;
            if let Some(o) = out.get_mut(k as usize) {
                *o = n as u64;
            }
        }
        Ok(out)
    }
}

/// Pairs per row of `pair_minutes`.
pub const PAIR_BLOCK: i64 = 256;

/// The hour rollups of `[from, until)` (whole hours), from the minutes: replaces any there.
/// One range scan per scope, block and sketch series.
fn roll_up_hours(tx: &Transaction<'_>, from: i64, until: i64) -> Result<()> {
    let ids = |kind: i64| -> Result<Vec<i64>> {
        let mut st = tx.prepare_cached("SELECT id FROM names WHERE kind = ?1 ORDER BY id")?;
        let rows = st.query_map([kind], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    // Rows: summed by hour in SQL (the hour of a minute rounded down, negative ones too), one
    // statement per kind; `id IN (ids of the kind)` makes SQLite seek each id's range of
    // minutes instead of reading every minute of the kind the promotion has stored.
    let cols = COUNTS.join(", ");
    let sums = COUNTS.iter().map(|c| format!("SUM({c})")).collect::<Vec<_>>().join(", ");
    for (kind, ids) in [
        (SITE, "SELECT 0".to_string()),
        (VENUE, format!("SELECT id FROM names WHERE kind = {N_VENUE}")),
        (CHANNEL, format!("SELECT id FROM names WHERE kind = {N_CHANNEL}")),
        (MERCHANT_CHANNEL, "SELECT id FROM merchant_channels".to_string()),
    ] {
        tx.prepare_cached(&format!(
            "DELETE FROM minutes WHERE kind = ?1 AND id IN ({ids}) AND minute >= ?2 AND minute < ?3"
        ))?
        .execute(params![kind + HOUR, from, until])?;
        tx.prepare_cached(&format!(
            "INSERT INTO minutes(kind, id, minute, {cols})
             SELECT ?1, id, minute - ((minute % 60) + 60) % 60 AS hour, {sums} FROM minutes
             WHERE kind = ?2 AND id IN ({ids}) AND minute >= ?3 AND minute < ?4 GROUP BY id, hour"
        ))?
        .execute(params![kind + HOUR, kind, from, until])?;
    }
    // Pairs' blocks: each block's minutes, summed per hour and offset.
    let last: Option<i64> = tx.query_row("SELECT MAX(block) FROM pair_minutes", [], |r| r.get(0))?;
    let mut sums = (vec![[0i64; 12]; PAIR_BLOCK as usize], [false; PAIR_BLOCK as usize]);
    for block in 0..=last.unwrap_or(-1) {
        tx.prepare_cached("DELETE FROM pair_hours WHERE block = ?1 AND minute >= ?2 AND minute < ?3")?
            .execute(params![block, from, until])?;
        let mut st = tx.prepare_cached(
            "SELECT minute, body FROM pair_minutes WHERE block = ?1 AND minute >= ?2 AND minute < ?3 ORDER BY minute",
        )?;
        by_hour(
            st.query(params![block, from, until])?,
            &mut sums,
            |(sums, seen), body| {
                each_block_entry(body, |off, v| {
                    seen[off as usize] = true;
                    for (a, b) in sums[off as usize].iter_mut().zip(v) {
                        *a += b;
                    }
                })
            },
            |(sums, seen), hour| {
                let entries = (0..PAIR_BLOCK as usize).filter(|&k| seen[k]).map(|k| (k as u8, sums[k]));
                let body = encode_block(entries);
                sums.iter_mut().for_each(|v| *v = [0; 12]);
                seen.iter_mut().for_each(|x| *x = false);
                tx.prepare_cached("INSERT INTO pair_hours(block, minute, body) VALUES(?1, ?2, ?3)")?
                    .execute(params![block, hour, body])?;
                Ok(())
            },
        )?;
    }
    // Sketches of the site and the venues: unioned per hour and metric.
    let mut regs: Vec<u8> = Vec::new();
    let scopes = std::iter::once((SITE, 0)).chain(ids(N_VENUE)?.into_iter().map(|v| (VENUE, v)));
    for (kind, id) in scopes {
        tx.prepare_cached("DELETE FROM sketches WHERE kind = ?1 AND id = ?2 AND minute >= ?3 AND minute < ?4")?
            .execute(params![kind + HOUR, id, from, until])?;
        let p = if kind == SITE { SITE_P } else { VENUE_P };
        for metric in 0..DISTINCT.len() as i64 {
            regs.clear();
            regs.resize(1 << p, 0);
            let mut st = tx.prepare_cached(
                "SELECT minute, hll FROM sketches WHERE kind = ?1 AND id = ?2 AND minute >= ?3 AND minute < ?4
                 AND metric = ?5 ORDER BY minute",
            )?;
            by_hour(
                st.query(params![kind, id, from, until, metric])?,
                &mut regs,
                |regs, body| decode_regs_into(body, regs),
                |regs, hour| {
                    tx.prepare_cached(
                        "INSERT INTO sketches(kind, id, minute, metric, hll) VALUES(?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![kind + HOUR, id, hour, metric, encode_regs(regs)])?;
                    regs.iter_mut().for_each(|r| *r = 0);
                    Ok(())
                },
            )?;
        }
    }
    Ok(())
}

/// Folds rows `(minute, blob)` in minute order into `acc` with `add`, and hands each hour's
/// total to `flush(acc, first minute of the hour)` (which empties it) after its last row.
fn by_hour<S: ?Sized>(
    mut rows: rusqlite::Rows<'_>,
    acc: &mut S,
    mut add: impl FnMut(&mut S, &[u8]) -> Result<()>,
    mut flush: impl FnMut(&mut S, i64) -> Result<()>,
) -> Result<()> {
    let mut cur: Option<i64> = None;
    while let Some(r) = rows.next()? {
        let hour = hour_of(r.get(0)?);
        if let Some(h) = cur.filter(|&h| h != hour) {
            flush(acc, h)?;
        }
        cur = Some(hour);
        add(acc, r.get_ref(1)?.as_blob().map_err(|e| HistoryError::Decode(e.to_string()))?)?;
    }
    match cur {
        Some(h) => flush(acc, h),
        None => Ok(()),
    }
}

/// A pair's counts in a block-minute: (offset in the block, counts).
type PairEntry = (u8, [i64; 12]);

/// A write's counts, summed per row (site, venue, channel) and per block-minute of pairs,
/// before anything is written: a row or block several parts touch is written once.
#[derive(Default)]
struct Deltas {
    rows: hashbrown::HashMap<(i64, i64, i64), [i64; 12]>,
    /// (block, minute, hour rollup) -> (offset in the block, counts), unsorted, a pair
    /// possibly repeated.
    blocks: hashbrown::HashMap<(i64, i64, bool), Vec<PairEntry>>,
    /// The hours rolled up: a minute of theirs is added to its hour too.
    rolled: Option<(i64, i64)>,
}

/// The first minute of `minute`'s hour.
pub(crate) fn hour_of(minute: i64) -> i64 {
    minute.div_euclid(60) * 60
}

/// The first minute of `minute`'s hour if that hour is rolled up.
fn in_hours(rolled: Option<(i64, i64)>, minute: i64) -> Option<i64> {
    rolled.filter(|&(a, b)| a <= minute && minute < b).map(|_| hour_of(minute))
}

impl Deltas {
    fn add(&mut self, kind: i64, id: i64, minute: i64, v: &[u64; 12], sign: i64) {
        let v = v.map(|x| i64::try_from(x).unwrap_or(i64::MAX) * sign);
        let hour = in_hours(self.rolled, minute);
        if kind == PAIR {
            let block = id.div_euclid(PAIR_BLOCK);
            let e = ((id - block * PAIR_BLOCK) as u8, v);
            self.blocks.entry((block, minute, false)).or_default().push(e);
            if let Some(h) = hour {
                self.blocks.entry((block, h, true)).or_default().push(e);
            }
        } else {
            let mut add = |key| {
                let e = self.rows.entry(key).or_insert([0; 12]);
                for (a, b) in e.iter_mut().zip(v) {
                    *a += b;
                }
            };
            add((kind, id, minute));
            if let Some(h) = hour {
                add((kind + HOUR, id, h));
            }
        }
    }

    /// Writes the sums: rows to `minutes`, pairs to their `pair_minutes` blocks, in key
    /// order (consecutive writes land on the same or the next b-tree page). A row (an entry
    /// of a block) exists once anything was counted for it, zeros included.
    fn apply(self, tx: &Transaction<'_>) -> Result<()> {
        let mut rows: Vec<_> = self.rows.into_iter().filter(|(_, v)| v.iter().any(|&x| x != 0)).collect();
        rows.sort_unstable_by_key(|r| r.0);
        for ((kind, id, minute), v) in rows {
            add_row(tx, kind, id, minute, &v)?;
        }
        let mut blocks: Vec<_> = self.blocks.into_iter().collect();
        blocks.sort_unstable_by_key(|b| b.0);
        for ((block, minute, hour), mut entries) in blocks {
            entries.sort_unstable_by_key(|e| e.0);
            entries.dedup_by(|later, kept| {
                if later.0 != kept.0 {
                    return false;
                }
                for (a, b) in kept.1.iter_mut().zip(later.1) {
                    *a += b;
                }
                true
            });
            add_block(tx, hour, block, minute, &entries)?;
        }
        Ok(())
    }
}

/// The upsert of one `minutes` row, built once.
fn add_row_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let cols = COUNTS.join(", ");
        let vals = (4..16).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let set = COUNTS.iter().map(|c| format!("{c} = {c} + excluded.{c}")).collect::<Vec<_>>().join(", ");
        format!(
            "INSERT INTO minutes(kind, id, minute, {cols}) VALUES(?1, ?2, ?3, {vals})
             ON CONFLICT(kind, id, minute) DO UPDATE SET {set}"
        )
    })
}

/// Adds signed counts to one row.
fn add_row(tx: &Transaction<'_>, kind: i64, id: i64, minute: i64, s: &[i64; 12]) -> Result<()> {
    let mut st = tx.prepare_cached(add_row_sql())?;
    st.execute(params![kind, id, minute, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11]])?;
    Ok(())
}

/// Adds signed counts to pairs of one block-minute (of `pair_hours` if `hour`: `minute` is
/// the hour's first), `entries` by offset, each once.
fn add_block(tx: &Transaction<'_>, hour: bool, block: i64, minute: i64, entries: &[(u8, [i64; 12])]) -> Result<()> {
    let (select, upsert) = if hour {
        (
            "SELECT body FROM pair_hours WHERE block = ?1 AND minute = ?2",
            "INSERT INTO pair_hours(block, minute, body) VALUES(?1, ?2, ?3)
             ON CONFLICT(block, minute) DO UPDATE SET body = excluded.body",
        )
    } else {
        (
            "SELECT body FROM pair_minutes WHERE block = ?1 AND minute = ?2",
            "INSERT INTO pair_minutes(block, minute, body) VALUES(?1, ?2, ?3)
             ON CONFLICT(block, minute) DO UPDATE SET body = excluded.body",
        )
    };
    let old: Option<Vec<u8>> = tx.prepare_cached(select)?.query_row(params![block, minute], |r| r.get(0)).optional()?;
    let merged = match old {
        None => encode_block(entries.iter().copied()),
        Some(old) => {
            let mut cur = decode_block(&old)?;
            for &(off, v) in entries {
                match cur.binary_search_by_key(&off, |e| e.0) {
                    Ok(k) => {
                        for (a, b) in cur[k].1.iter_mut().zip(v) {
                            *a += b;
                        }
                    }
                    Err(k) => cur.insert(k, (off, v)),
                }
            }
            encode_block(cur.into_iter())
        }
    };
    tx.prepare_cached(upsert)?.execute(params![block, minute, merged])?;
    Ok(())
}

/// A block-minute's stored form: per pair, by offset: the offset (1 byte), a 12-bit mask of
/// its non-zero counts (2 bytes LE), and each non-zero count as a zigzag LEB128 varint. A
/// pair's quiet minute (a click) takes 4 bytes.
pub(crate) fn encode_block(entries: impl Iterator<Item = (u8, [i64; 12])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (off, v) in entries {
        out.push(off);
        let mask = v.iter().enumerate().fold(0u16, |m, (k, &x)| if x != 0 { m | 1 << k } else { m });
        out.extend_from_slice(&mask.to_le_bytes());
        for &x in v.iter().filter(|&&x| x != 0) {
            let mut z = ((x << 1) ^ (x >> 63)) as u64;
            while z >= 0x80 {
                out.push((z as u8) | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        }
    }
    out
}

pub(crate) fn decode_block(bytes: &[u8]) -> Result<Vec<(u8, [i64; 12])>> {
    let mut out = Vec::new();
    each_block_entry(bytes, |off, v| out.push((off, *v)))?;
    Ok(out)
}

/// Calls `f(offset, counts)` for each pair of a stored block-minute, in offset order.
pub(crate) fn each_block_entry(bytes: &[u8], mut f: impl FnMut(u8, &[i64; 12])) -> Result<()> {
    let bad = || HistoryError::Decode("a stored block of pair minutes is cut short or malformed".into());
    let mut i = 0;
    let mut prev: Option<u8> = None;
    while i < bytes.len() {
        let off = bytes[i];
        let mask = u16::from_le_bytes([*bytes.get(i + 1).ok_or_else(bad)?, *bytes.get(i + 2).ok_or_else(bad)?]);
        if mask >> 12 != 0 || prev.is_some_and(|p| p >= off) {
            return Err(bad());
        }
        prev = Some(off);
        i += 3;
        let mut v = [0i64; 12];
        for (k, x) in v.iter_mut().enumerate() {
            if mask & (1 << k) == 0 {
                continue;
            }
            let (mut z, mut shift) = (0u64, 0u32);
            loop {
                let b = *bytes.get(i).ok_or_else(bad)?;
                i += 1;
                if shift > 63 {
                    return Err(bad());
                }
                z |= ((b & 0x7f) as u64) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            *x = ((z >> 1) as i64) ^ -((z & 1) as i64);
        }
        f(off, &v);
    }
    Ok(())
}

/// Applies a write's sketches: each (scope, minute, metric) once, the union of every part's.
/// Returns how many were written.
fn apply_unions(tx: &Transaction<'_>, mut unions: Vec<(i64, i64, i64, i64, &MinuteSketch)>) -> Result<u64> {
    unions.sort_unstable_by_key(|u| (u.0, u.1, u.2, u.3));
    let mut written = 0;
    // One register array and one list for every union: no allocation per sketch.
    let (mut regs, mut small): (Vec<u8>, Vec<u32>) = (Vec::new(), Vec::new());
    let mut sketches: Vec<&MinuteSketch> = Vec::new();
    for group in unions.chunk_by(|a, b| (a.0, a.1, a.2, a.3) == (b.0, b.1, b.2, b.3)) {
        let (kind, id, minute, metric, _) = group[0];
        let p = if kind % HOUR == SITE { SITE_P } else { VENUE_P };
        sketches.clear();
        sketches.extend(group.iter().map(|u| u.4));
        let old: Option<Vec<u8>> = tx
            .prepare_cached("SELECT hll FROM sketches WHERE kind = ?1 AND id = ?2 AND minute = ?3 AND metric = ?4")?
            .query_row(params![kind, id, minute, metric], |r| r.get(0))
            .optional()?;
        let bytes = match union_small(old.as_deref(), &sketches, p, &mut small)? {
            Some(b) => b,
            None => {
                regs.clear();
                regs.resize(1 << p, 0);
                if let Some(old) = &old {
                    decode_regs_into(old, &mut regs)?;
                }
                for h in &sketches {
                    h.merge_into(&mut regs);
                }
                encode_regs(&regs)
            }
        };
        tx.prepare_cached(
            "INSERT INTO sketches(kind, id, minute, metric, hll) VALUES(?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(kind, id, minute, metric) DO UPDATE SET hll = excluded.hll",
        )?
        .execute(params![kind, id, minute, metric, bytes])?;
        written += 1;
    }
    Ok(written)
}

/// Unions of at most this many (register, rank) entries go through a sorted list, not the
/// register array: a quiet minute's sketch holds a few dozen, and zeroing and scanning 16 kB
/// for each was most of what a week-long night's writes cost.
const SMALL_UNION: usize = 512;

/// The stored form of the union of `old` (a stored sketch) and `sketches` when all are sparse
/// and hold at most [`SMALL_UNION`] entries in all (`None` otherwise): the same bytes as
/// through the registers ([`encode_regs`]), from the entries sorted, each register's largest
/// rank kept.
fn union_small(old: Option<&[u8]>, sketches: &[&MinuteSketch], p: u32, list: &mut Vec<u32>) -> Result<Option<Vec<u8>>> {
    let stored = match old.map(|o| o.split_first()) {
        None => &[][..],
        Some(Some((1, pairs))) if pairs.len() % 3 == 0 => pairs,
        _ => return Ok(None),
    };
    let mut n = stored.len() / 3;
    for s in sketches {
        match s {
            MinuteSketch::Sparse(v) => n += v.len(),
            MinuteSketch::Dense(_) => return Ok(None),
        }
    }
    // Never dense at this size (a third of the registers), but the format says so.
    if n > SMALL_UNION || n * 3 >= 1 << p {
        return Ok(None);
    }
    list.clear();
    for c in stored.chunks_exact(3) {
        let i = u16::from_le_bytes([c[0], c[1]]) as u32;
        if i >= 1 << p {
            return Err(HistoryError::Decode("a stored sketch: register index out of range".into()));
        }
        list.push(i << 8 | c[2] as u32);
    }
    for s in sketches {
        if let MinuteSketch::Sparse(v) = s {
            // Out of range: left out, as `merge_into` does.
            list.extend(v.iter().filter(|&&e| e >> 8 < 1 << p));
        }
    }
    list.sort_unstable();
    let mut out = Vec::with_capacity(1 + 3 * list.len());
    out.push(1);
    for (k, &e) in list.iter().enumerate() {
        // The last of a register's entries has its largest rank; a zero rank is no entry.
        if list.get(k + 1).is_some_and(|&next| next >> 8 == e >> 8) || e & 0xff == 0 {
            continue;
        }
        out.extend_from_slice(&((e >> 8) as u16).to_le_bytes());
        out.push(e as u8);
    }
    Ok(Some(out))
}

/// A sketch's stored form: tag 0 and the registers (dense), or tag 1 and (u16 index LE, u8
/// value) per non-zero register while fewer than a third are set (a quiet minute's sketch
/// takes a few hundred bytes). One pass each way: no serde (measured: the generic sparse
/// encoding was the writer's top cost).
#[cfg(test)]
pub(crate) fn encode_hll(h: &Hll) -> Vec<u8> {
    encode_regs(h.registers())
}

/// A mask with the high bit of each non-zero byte of `x` set.
#[inline]
fn nonzero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    (((x & LOW7) + LOW7) | x) & !LOW7
}

/// Tag 0 and the registers while a third or more are set, else tag 1 and (u16 index LE, u8
/// value) per set register, in index order. Eight registers at a time (a quiet minute's
/// sketch is mostly zero words; byte by byte, this was the writer's top cost).
fn encode_regs(regs: &[u8]) -> Vec<u8> {
    let (words, rest) = regs.as_chunks::<8>();
    let set = words.iter().map(|w| nonzero_bytes(u64::from_le_bytes(*w)).count_ones() as usize).sum::<usize>()
        + rest.iter().filter(|&&r| r != 0).count();
    if set * 3 >= regs.len() {
        let mut out = Vec::with_capacity(regs.len() + 1);
        out.push(0);
        out.extend_from_slice(regs);
        return out;
    }
    let mut out = Vec::with_capacity(1 + 3 * set);
    out.push(1);
    for (k, w) in words.iter().enumerate() {
        let w = u64::from_le_bytes(*w);
        let mut m = nonzero_bytes(w);
        while m != 0 {
            let b = m.trailing_zeros() as usize / 8;
            out.extend_from_slice(&((k * 8 + b) as u16).to_le_bytes());
            out.push((w >> (b * 8)) as u8);
            m &= m - 1;
        }
    }
    for (i, &r) in rest.iter().enumerate().filter(|&(_, &r)| r != 0) {
        out.extend_from_slice(&((words.len() * 8 + i) as u16).to_le_bytes());
        out.push(r);
    }
    out
}

pub(crate) fn decode_hll(bytes: &[u8], p: u32) -> Result<Hll> {
    Hll::from_registers(p, decode_regs(bytes, p)?).map_err(|e| HistoryError::Decode(format!("a stored sketch: {e}")))
}

/// A stored sketch's registers (a register's value is checked when it becomes an [`Hll`]).
fn decode_regs(bytes: &[u8], p: u32) -> Result<Vec<u8>> {
    let mut regs = vec![0u8; 1 << p];
    decode_regs_into(bytes, &mut regs)?;
    Ok(regs)
}

/// Takes the maximum of each register of a stored sketch into `regs` (its precision's size).
fn decode_regs_into(bytes: &[u8], regs: &mut [u8]) -> Result<()> {
    let bad = |why: &str| HistoryError::Decode(format!("a stored sketch: {why}"));
    match bytes.split_first() {
        Some((0, stored)) if stored.len() == regs.len() => {
            for (a, b) in regs.iter_mut().zip(stored) {
                *a = (*a).max(*b);
            }
        }
        Some((1, pairs)) if pairs.len() % 3 == 0 => {
            for c in pairs.chunks_exact(3) {
                let i = u16::from_le_bytes([c[0], c[1]]) as usize;
                let r = regs.get_mut(i).ok_or_else(|| bad("register index out of range"))?;
                *r = (*r).max(c[2]);
            }
        }
        _ => return Err(bad(&format!("not a sketch of {} registers", regs.len()))),
    }
    Ok(())
}

/// Name ids by kind (1..=4) and name, looked up by `&str` (no key built per lookup).
#[derive(Debug, Default)]
struct Ids([hashbrown::HashMap<String, i64>; 5]);

impl Ids {
    fn get(&self, kind: i64, name: &str) -> Option<i64> {
        self.0.get(kind as usize)?.get(name).copied()
    }

    fn insert(&mut self, kind: i64, name: String, id: i64) {
        if let Some(m) = self.0.get_mut(kind as usize) {
            m.insert(name, id);
        }
    }

    fn clear(&mut self) {
        self.0.iter_mut().for_each(|m| m.clear());
    }
}

/// Maps a batch's process-local name indices to the database's ids, adding new names.
struct Namer<'a> {
    tx: &'a Transaction<'a>,
    ids: &'a mut Ids,
    pair_ids: &'a mut HashMap<(i64, i64), i64>,
    mc_ids: &'a mut HashMap<(i64, i64), i64>,
    names: &'a warroom_engine::history::HistoryNames,
    /// This batch's indices already resolved, per name kind (1..=4) and for pairs (0).
    seen: [Vec<i64>; 5],
}

impl Namer<'_> {
    /// The id resolved for index `i` of `kind` (0: pairs) in this batch, if any.
    fn cached(&self, kind: usize, i: u32) -> Option<i64> {
        self.seen[kind].get(i as usize).copied().filter(|&id| id != i64::MIN)
    }

    fn remember(&mut self, kind: usize, i: u32, id: i64) {
        let v = &mut self.seen[kind];
        if v.len() <= i as usize {
            v.resize(i as usize + 1, i64::MIN);
        }
        v[i as usize] = id;
    }

    fn name(&mut self, kind: i64, table: &[String], i: u32) -> Result<i64> {
        if let Some(id) = self.cached(kind as usize, i) {
            return Ok(id);
        }
        let name =
            table.get(i as usize).ok_or_else(|| HistoryError::Decode(format!("name index {i} of kind {kind}")))?;
        if let Some(id) = self.ids.get(kind, name) {
            self.remember(kind as usize, i, id);
            return Ok(id);
        }
        let id: i64 = self
            .tx
            .prepare_cached("SELECT COALESCE(MAX(id), -1) + 1 FROM names WHERE kind = ?1")?
            .query_row([kind], |r| r.get(0))?;
        self.tx
            .prepare_cached("INSERT INTO names(kind, name, id) VALUES(?1, ?2, ?3)")?
            .execute(params![kind, name, id])?;
        self.ids.insert(kind, name.clone(), id);
        self.remember(kind as usize, i, id);
        Ok(id)
    }

    fn pair(&mut self, i: u32) -> Result<i64> {
        if let Some(id) = self.cached(0, i) {
            return Ok(id);
        }
        let id = self.new_pair(i)?;
        self.remember(0, i, id);
        Ok(id)
    }

    fn new_pair(&mut self, i: u32) -> Result<i64> {
        let names = self.names;
        let &(slot, merchant) =
            names.pairs.get(i as usize).ok_or_else(|| HistoryError::Decode(format!("pair index {i}")))?;
        let slot_id = self.name(N_SLOT, &names.slots, slot)?;
        let merchant_id = if merchant == NONE { -1 } else { self.name(N_MERCHANT, &names.merchants, merchant)? };
        if let Some(&id) = self.pair_ids.get(&(slot_id, merchant_id)) {
            return Ok(id);
        }
        let venue = names.slot_venues.get(slot as usize).copied().unwrap_or(NONE);
        let venue_id = if venue == NONE { -1 } else { self.name(N_VENUE, &names.venues, venue)? };
        self.tx.prepare_cached("INSERT INTO pairs(slot, merchant, venue) VALUES(?1, ?2, ?3)")?.execute(params![
            slot_id,
            merchant_id,
            venue_id
        ])?;
        let id = self.tx.last_insert_rowid();
        self.pair_ids.insert((slot_id, merchant_id), id);
        Ok(id)
    }

    /// The `merchant_channels` id of merchant index `m` in channel index `ch`.
    fn merchant_channel(&mut self, ch: u32, m: u32) -> Result<i64> {
        let names = self.names;
        let key = (self.name(N_MERCHANT, &names.merchants, m)?, self.name(N_CHANNEL, &names.channels, ch)?);
        if let Some(&id) = self.mc_ids.get(&key) {
            return Ok(id);
        }
        self.tx
            .prepare_cached("INSERT INTO merchant_channels(merchant, channel) VALUES(?1, ?2)")?
            .execute(params![key.0, key.1])?;
        let id = self.tx.last_insert_rowid();
        self.mc_ids.insert(key, id);
        Ok(id)
    }

    /// Calls `f(kind, database id, counts)` for each of the minute's rows.
    fn rows(&mut self, m: &MinuteRows, mut f: impl FnMut(i64, i64, &Counts)) -> Result<()> {
        let names = self.names;
        f(SITE, 0, &m.site);
        for (v, c) in &m.venues.rows {
            f(VENUE, self.name(N_VENUE, &names.venues, *v)?, c);
        }
        for (p, c) in &m.pairs.rows {
            f(PAIR, self.pair(*p)?, c);
        }
        for (ch, c) in &m.channels.rows {
            f(CHANNEL, self.name(N_CHANNEL, &names.channels, *ch)?, c);
        }
        for (ch, rows) in m.merchant_channels.iter().enumerate() {
            for (mi, c) in &rows.rows {
                f(MERCHANT_CHANNEL, self.merchant_channel(ch as u32, *mi)?, c);
            }
        }
        Ok(())
    }
}

/// Name kinds, for [`Store::name_id`].
pub mod kinds {
    pub const VENUE: i64 = super::N_VENUE;
    pub const SLOT: i64 = super::N_SLOT;
    pub const MERCHANT: i64 = super::N_MERCHANT;
    pub const CHANNEL: i64 = super::N_CHANNEL;
}

/// The metrics a history query can ask for.
pub fn metric_names() -> Vec<&'static str> {
    COUNTS.iter().chain(DISTINCT.iter()).copied().collect()
}

/// The store shared by the writer (checkpoints) and the readers (the API): one connection
/// behind a mutex (an in-memory database has no second connection; a query holds it for
/// milliseconds, a batch write as long, every few seconds).
#[derive(Debug)]
pub struct HistoryDb {
    store: std::sync::Mutex<Store>,
    /// A second connection for queries (a file database): a long query (a review of a
    /// 20,000-slot night takes seconds) reads its own snapshot (WAL) and never holds back the
    /// batch a checkpoint is waiting for.
    reader: Option<std::sync::Mutex<Store>>,
    pub path: Option<std::path::PathBuf>,
    pub writes: std::sync::atomic::AtomicU64,
    pub write_errors: std::sync::atomic::AtomicU64,
    pub rows_written: std::sync::atomic::AtomicU64,
    pub last_write_us: std::sync::atomic::AtomicU64,
}

impl HistoryDb {
    /// The database at `path`, or in memory (for a run without checkpoints: a replay, the
    /// simulator) if `None`.
    pub fn open(path: Option<&Path>) -> Result<HistoryDb> {
        let store = match path {
            Some(p) => Store::open(p)?,
            None => Store::open(Path::new(":memory:"))?,
        };
        let reader = match path {
            Some(p) => Some(std::sync::Mutex::new(Store::open_read(p)?)),
            None => None,
        };
        Ok(HistoryDb {
            store: std::sync::Mutex::new(store),
            reader,
            path: path.map(Path::to_path_buf),
            writes: Default::default(),
            write_errors: Default::default(),
            rows_written: Default::default(),
            last_write_us: Default::default(),
        })
    }

    /// An existing database, read only.
    pub fn open_read(path: &Path) -> Result<HistoryDb> {
        Ok(HistoryDb {
            store: std::sync::Mutex::new(Store::open_read(path)?),
            reader: None,
            path: Some(path.to_path_buf()),
            writes: Default::default(),
            write_errors: Default::default(),
            rows_written: Default::default(),
            last_write_us: Default::default(),
        })
    }

    /// Runs `f` with the store (writes go here).
    pub fn with<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs queries `f` on one consistent snapshot of the database (one read transaction), on
    /// the reading connection of a file database: writes go on meanwhile.
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let lock = self.reader.as_ref().unwrap_or(&self.store);
        let store = lock.lock().unwrap_or_else(|p| p.into_inner());
        // A deferred transaction takes its snapshot at the first read; if BEGIN fails (it
        // cannot while no transaction is open) the queries still run, each on its own.
        let txn = store.conn.execute_batch("BEGIN").is_ok();
        let r = f(&store);
        if txn {
            let _ = store.conn.execute_batch("COMMIT");
        }
        r
    }
}

impl warroom_engine::history::HistorySink for HistoryDb {
    fn store(&self, batch: &HistoryBatch) -> std::result::Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let t = std::time::Instant::now();
        match self.with(|s| s.write(batch)) {
            Ok(w) => {
                self.writes.fetch_add(1, Relaxed);
                self.rows_written.fetch_add(w.rows, Relaxed);
                self.last_write_us.store(t.elapsed().as_micros() as u64, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Relaxed);
                Err(e.to_string())
            }
        }
    }
}
