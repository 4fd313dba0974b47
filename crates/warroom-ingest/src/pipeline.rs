//! The decode-and-apply pipeline shared by every newline-delimited source.
//!
//! A chunk of lines is cut into parts at line boundaries; the parts are decoded in parallel
//! (rayon), each into a reusable buffer of fixed-size [`Prepared`] events; then every shard
//! applies its events from all parts *in part order*, shards in parallel. Input order is thus
//! kept per shard (per user), so replay is deterministic whatever the thread timing, and both
//! cores work in both phases. The buffers are reused: no allocation per event.
//!
//! Every rejection comes back to the caller, whoever made it: the decoder's (bad input, a
//! clock too far ahead, a name past a limit) and the engine's while applying (a time it cannot
//! check for re-deliveries). The future bound on `ts` is taken from the wall clock once per
//! chunk or batch ([`Limits::now`]), so it follows the clock for as long as the monitor runs.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use warroom_engine::intern::NameCache;
use warroom_engine::mem::recycle;
use warroom_engine::{Engine, Prepared, Refusal};
use warroom_model::{Limits, Rejection};

/// A message the decoder refused, kept for inspection (the file equivalent of a DLQ).
#[derive(Debug, Clone)]
pub struct RejectedLine {
    /// 1-based line number in the input.
    pub line: u64,
    pub rejection: Rejection,
    pub raw: Vec<u8>,
}

#[derive(Debug, Default)]
struct Part {
    /// Decoded events, already routed: `by_shard[s]` holds shard `s`'s, in input order.
    by_shard: Vec<Vec<Prepared>>,
    names: NameCache,
    rejected: Vec<RejectedLine>,
    /// Lines read (a replay's part), and the number of the line before its first: the
    /// decoders number lines from their part's start, in parallel, and the parts' bases are
    /// summed after (no serial pass over the chunk to count lines first).
    lines: u64,
    base: u64,
}

impl Part {
    fn reset(&mut self, shards: usize) {
        self.by_shard.resize_with(shards, Vec::new);
        self.by_shard.iter_mut().for_each(recycle);
        recycle(&mut self.rejected);
        self.lines = 0;
        self.base = 0;
    }

    #[inline]
    /// Decodes one message and routes it to its shard. A rejection is kept when `keep` gives
    /// its number, with a copy of the bytes if asked (counts are kept by the engine anyway).
    fn take(&mut self, engine: &Engine, limits: &Limits, msg: &[u8], seq: u64, lane: u16, keep: Option<(u64, bool)>) {
        match engine.decode_prepare(msg, seq, limits, &mut self.names) {
            Ok(mut p) => {
                p.lane = lane;
                self.by_shard[engine.shard_of(&p)].push(p);
            }
            Err(rejection) => {
                if let Some((line, copy)) = keep {
                    let raw = if copy { msg.to_vec() } else { Vec::new() };
                    self.rejected.push(RejectedLine { line, rejection, raw });
                }
            }
        }
    }
}

/// Decodes and applies chunks of newline-delimited messages.
#[derive(Debug)]
pub struct ChunkProcessor {
    engine: Arc<Engine>,
    limits: Limits,
    parts: Vec<Part>,
    /// Per shard, the events it refused in the last apply (reused buffers).
    refused: Vec<Vec<Refusal>>,
    /// Keep rejected lines' bytes (replay's `--rejects-out`); counts are kept regardless.
    pub keep_rejected: bool,
}

/// What one chunk held.
#[derive(Debug, Default)]
pub struct ChunkResult {
    pub lines: u64,
    pub rejected: Vec<RejectedLine>,
}

impl ChunkProcessor {
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Self {
        let n = rayon::current_num_threads().max(1) * 4;
        let refused = (0..engine.shard_count()).map(|_| Vec::new()).collect();
        ChunkProcessor {
            engine,
            limits,
            parts: (0..n).map(|_| Part::default()).collect(),
            refused,
            keep_rejected: false,
        }
    }

    /// The engine this processor feeds.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Decodes and applies the whole lines of `chunk` now (a trailing line without `\n`
    /// counts as a line); `first_line` is the 1-based number of the first one.
    ///
    /// Two phases: all parts decode in parallel, then every shard applies them. (Applying one
    /// chunk while decoding the next was measured 9% slower: the phases then fight over the
    /// caches. See BENCHMARKS.md.)
    pub fn process(&mut self, chunk: &[u8], first_line: u64) -> ChunkResult {
        let limits = self.limits.now();
        let (mut res, used) =
            decode_into(&self.engine, &limits, self.keep_rejected, &mut self.parts, chunk, first_line);
        apply_parts(&self.engine, &self.parts[..used], &mut self.refused);
        if self.refused.iter().any(|r| !r.is_empty()) {
            // Refused while applying: numbered by line; their text is found in one pass.
            let mut late: Vec<(u64, Rejection)> = Vec::new();
            for r in self.refused.iter_mut().flat_map(|v| v.drain(..)) {
                late.push((r.seq, Rejection::new(r.reason, Some("ts"))));
            }
            if self.keep_rejected {
                late.sort_by_key(|(line, _)| *line);
                let mut want = late.into_iter().peekable();
                for (line, text) in (first_line..).zip(split_lines(chunk)) {
                    while want.peek().is_some_and(|(l, _)| *l == line) {
                        let (_, rejection) = want.next().expect("peeked");
                        res.rejected.push(RejectedLine { line, rejection, raw: text.to_vec() });
                    }
                    if want.peek().is_none() {
                        break;
                    }
                }
                res.rejected.sort_by_key(|r| r.line);
            }
        }
        res
    }
}

impl ChunkProcessor {
    /// Decodes and applies a batch of separate messages (Kafka payloads: one event each, which
    /// may legally contain newlines). `seqs[i]` orders ties of message `i` (its offset);
    /// `sent[i]` is when it was sent (its Kafka timestamp, negative if unknown): an event
    /// stamped more than the dedupe horizon before that is refused (a producer clock behind,
    /// caught even on a partition's first event). A rejected message comes back with `line` =
    /// its index in `msgs`.
    pub fn process_messages(&mut self, msgs: &[&[u8]], seqs: &[u64], lanes: &[u16], sent: &[i64]) -> Vec<RejectedLine> {
        debug_assert!(msgs.len() == seqs.len() && msgs.len() == lanes.len() && msgs.len() == sent.len());
        let limits = self.limits.now();
        let horizon = self.engine.config().engine.dedupe_horizon.as_millis() as i64;
        let (engine, limits, keep) = (&*self.engine, &limits, self.keep_rejected);
        let n = self.parts.len().min(msgs.len().max(1));
        let per = msgs.len().div_ceil(n).max(1);
        let shards = engine.shard_count();
        self.parts[..n].par_iter_mut().enumerate().for_each(|(k, part)| {
            part.reset(shards);
            let lo = (k * per).min(msgs.len());
            let hi = ((k + 1) * per).min(msgs.len());
            for i in lo..hi {
                // A rejection is numbered by its index; no raw copy: the caller holds the bytes.
                let limits = limits.sent_at(sent[i], horizon);
                part.take(engine, &limits, msgs[i], seqs[i], lanes[i], keep.then_some((i as u64, false)));
            }
        });
        apply_parts(engine, &self.parts[..n], &mut self.refused);
        let mut out: Vec<RejectedLine> = self.parts[..n].iter_mut().flat_map(|p| p.rejected.drain(..)).collect();
        if self.refused.iter().any(|r| !r.is_empty()) {
            // Refused while applying: back to the message's index through (lane, seq), which
            // names a Kafka message uniquely (partition, offset).
            let index: std::collections::HashMap<(u16, u64), usize> =
                lanes.iter().zip(seqs).enumerate().map(|(i, (&l, &s))| ((l, s), i)).collect();
            for r in self.refused.iter_mut().flat_map(|v| v.drain(..)) {
                if let Some(&i) = index.get(&(r.lane, r.seq)) {
                    out.push(RejectedLine {
                        line: i as u64,
                        rejection: Rejection::new(r.reason, Some("ts")),
                        raw: Vec::new(),
                    });
                }
            }
        }
        out
    }
}

/// Decodes `chunk` into `parts`, in parallel; returns the result and how many parts hold it.
fn decode_into(
    engine: &Engine,
    limits: &Limits,
    keep: bool,
    parts: &mut [Part],
    chunk: &[u8],
    first_line: u64,
) -> (ChunkResult, usize) {
    if chunk.is_empty() {
        return (ChunkResult::default(), 0);
    }
    // Cut at line boundaries into up to parts.len() ranges.
    let n = parts.len();
    let mut ranges = Vec::with_capacity(n);
    let mut start = 0usize;
    for k in 1..=n {
        if start >= chunk.len() {
            break;
        }
        let mut end = if k == n { chunk.len() } else { (chunk.len() * k / n).max(start) };
        if end < chunk.len() {
            end = match memchr::memchr(b'\n', &chunk[end..]) {
                Some(p) => end + p + 1,
                None => chunk.len(),
            };
        }
        ranges.push((start, end));
        start = end;
    }
    let shards = engine.shard_count();
    parts[..ranges.len()].par_iter_mut().zip(ranges.par_iter()).for_each(|(part, &(s, e))| {
        part.reset(shards);
        for (seq, msg) in (0..).zip(split_lines(&chunk[s..e])) {
            part.take(engine, limits, msg, seq, 0, keep.then_some((seq, true)));
            part.lines = seq + 1;
        }
    });
    let mut line = first_line;
    let mut rejected = Vec::new();
    for part in &mut parts[..ranges.len()] {
        part.base = line;
        line += part.lines;
        if keep {
            rejected.extend(part.rejected.drain(..).map(|r| RejectedLine { line: r.line + part.base, ..r }));
        }
    }
    (ChunkResult { lines: line - first_line, rejected }, ranges.len())
}

/// Every shard applies its events from all parts in part order; shards in parallel. What a
/// shard refuses goes to `refused[s]`.
fn apply_parts(engine: &Engine, parts: &[Part], refused: &mut [Vec<Refusal>]) {
    if parts.is_empty() {
        return;
    }
    refused.par_iter_mut().enumerate().for_each(|(s, out)| {
        for part in parts {
            engine.apply_routed(s, &part.by_shard[s], part.base, out);
        }
    });
}

/// Lines of a chunk: split at `\n`, a trailing `\r` dropped, the final piece only if non-empty.
pub fn split_lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// Progress of a long replay.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bytes: u64,
    pub total_bytes: Option<u64>,
    pub lines: u64,
    pub elapsed: Duration,
}

/// Statistics of a finished replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayStats {
    pub bytes: u64,
    pub lines: u64,
    pub elapsed: Duration,
}

const CHUNK: usize = 4 << 20;

/// Reads newline-delimited messages from `input` to the end, feeding `proc`, and calls
/// `on_progress` after each chunk. A reader thread
/// fills buffers while the previous one is decoded. Lines longer than the message limit are
/// never buffered whole: they are cut off and rejected as `too_large` by the decoder.
pub fn replay(
    mut input: impl Read + Send,
    total_bytes: Option<u64>,
    proc: &mut ChunkProcessor,
    mut on_rejected: impl FnMut(RejectedLine) -> io::Result<()>,
    mut on_progress: impl FnMut(Progress),
) -> io::Result<ReplayStats> {
    let started = Instant::now();
    let max_line = proc.limits.max_message_bytes + 1;
    let (full_tx, full_rx) = crossbeam_channel::bounded::<io::Result<(Vec<u8>, usize, usize)>>(2);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(4);
    for _ in 0..3 {
        let _ = empty_tx.send(Vec::new());
    }
    let mut stats = ReplayStats::default();
    let mut line = 1u64;
    std::thread::scope(|scope| -> io::Result<()> {
        scope.spawn(move || {
            // Each buffer is zeroed once (at its first use) and then read into directly:
            // `filled` bytes of it are data; the tail of a partial line moves to the next one.
            let size = CHUNK + max_line + 1;
            let mut carry: Vec<u8> = Vec::new();
            let mut skipping = false;
            loop {
                let Ok(mut buf) = empty_rx.recv() else { return };
                if buf.len() < size {
                    buf.resize(size, 0);
                }
                let mut filled = carry.len();
                buf[..filled].copy_from_slice(&carry);
                carry.clear();
                let mut eof = false;
                while filled < CHUNK {
                    match input.read(&mut buf[filled..CHUNK]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(k) => filled += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = full_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let mut start = 0;
                if skipping {
                    // Inside an over-long line: drop bytes up to its end.
                    match memchr::memchr(b'\n', &buf[..filled]) {
                        Some(p) => {
                            start = p + 1;
                            skipping = false;
                        }
                        None => start = filled,
                    }
                }
                let mut end = filled;
                if !eof {
                    end = memchr::memrchr(b'\n', &buf[start..filled]).map_or(start, |p| start + p + 1);
                    carry.extend_from_slice(&buf[end..filled]);
                    if carry.len() > max_line {
                        // Keep a too-large prefix so the decoder rejects it with its reason
                        // (and counts it once), then skip the rest of that line.
                        buf[end..end + max_line].copy_from_slice(&carry[..max_line]);
                        buf[end + max_line] = b'\n';
                        end += max_line + 1;
                        carry.clear();
                        skipping = true;
                    }
                }
                if full_tx.send(Ok((buf, start, end))).is_err() || eof {
                    return;
                }
            }
        });
        // Owned here so that an early error return drops them and unblocks the reader.
        let (full_rx, empty_tx) = (full_rx, empty_tx);
        for msg in full_rx.iter() {
            let (buf, start, end) = msg?;
            stats.bytes += (end - start) as u64;
            let res = proc.process(&buf[start..end], line);
            line += res.lines;
            stats.lines += res.lines;
            for r in res.rejected {
                on_rejected(r)?;
            }
            let _ = empty_tx.send(buf);
            // After every chunk (4 MiB): the caller throttles what it prints, and may hand
            // work on (a replay's history batches) while the next chunks are decoded.
            on_progress(Progress { bytes: stats.bytes, total_bytes, lines: stats.lines, elapsed: started.elapsed() });
        }
        Ok(())
    })?;
    stats.elapsed = started.elapsed();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warroom_engine::{Config, Engine};

    fn ev(id: u32) -> String {
        format!(
            r#"{{"event_id":"e{id}","type":"pay","ts":{},"user_id":"u{id}","order_id":"o{id}","amount_cents":100}}"#,
            1_000 + id
        )
    }

    #[test]
    fn an_over_long_line_across_chunks_is_rejected_once_and_the_rest_flows() {
        let mut input = String::new();
        for i in 0..1000 {
            input += &ev(i);
            input.push('\n');
        }
        input += &"x".repeat(10 << 20); // 10 MiB without a newline: spans three chunks
        input.push('\n');
        for i in 1000..2000 {
            input += &ev(i);
            input.push('\n');
        }
        input += &ev(2000); // last line without a newline
        let engine = Arc::new(Engine::new(Config::default()));
        let mut proc = ChunkProcessor::new(engine.clone(), Limits::default());
        proc.keep_rejected = true;
        let mut rejected = Vec::new();
        let keep = |r| {
            rejected.push(r);
            Ok(())
        };
        let stats = replay(std::io::Cursor::new(input.into_bytes()), None, &mut proc, keep, |_| {}).unwrap();
        let (snap, _) = engine.publish();
        assert_eq!(snap.totals.accepted, 2001);
        assert_eq!(snap.totals.gmv_cents, 200_100);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].rejection.reason, warroom_model::Reason::TooLarge);
        assert_eq!(rejected[0].line, 1001);
        assert_eq!(stats.lines, 2002);
    }

    #[test]
    fn lines_are_split_at_newlines() {
        for (buf, n) in [(&b""[..], 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"a\n\nb\n", 3), (b"a\r\nb\r\n", 2)] {
            assert_eq!(split_lines(buf).count() as u64, n, "{buf:?}");
        }
        assert_eq!(split_lines(b"a\r\nb").collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
    }
}
