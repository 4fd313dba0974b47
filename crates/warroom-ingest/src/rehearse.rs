//! `warroom rehearse` (演练): a recorded event file replayed through Kafka at N x speed, its
//! event times moved so the night runs again now.
//!
//! - **Timing**: lines go out in file order (the order they arrived on the night). The file's
//!   arrival clock at line i is the newest `ts` up to it, `m_i`; line i is sent `(m_i - m_0) /
//!   speed` after the start, so a late event goes out when it arrived, keeping its late time.
//! - **Shift**: every `ts` gets `shift_ms` added; by default the shift puts the recording's
//!   end at the moment the replay ends (at 1x: its start at now), rounded down to a whole
//!   minute. Event time then never runs ahead of the wall clock. Give the same shift to the
//!   monitor (`warroom run --rehearsal-shift-ms`) and it moves the plan's phases by it, so
//!   phase, pace and targets run as on the night.
//! - **Exact**: only the digits of the top-level `ts` change; every other byte of a line is
//!   kept, and a malformed line goes out as it was (the monitor rejects it as it did then).
//! - **Tagged**: every message carries the Kafka header `warroom-rehearsal`.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::produce::{usage, EventProducer};

/// The Kafka header every rehearsal message carries.
pub const HEADER: &str = "warroom-rehearsal";

/// Finds the top-level `"ts": <integer>` of a JSON object line: the byte range of the integer
/// and its value. `None` when the line is not an object with such a member.
pub fn find_ts(line: &[u8]) -> Option<(usize, usize, i64)> {
    let mut i = 0;
    let n = line.len();
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    while i < n && ws(line[i]) {
        i += 1;
    }
    if i >= n || line[i] != b'{' {
        return None;
    }
    let mut depth = 0usize;
    while i < n {
        match line[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < n && line[i] != b'"' {
                    i += if line[i] == b'\\' { 2 } else { 1 };
                }
                let key = line.get(start..i)?;
                i += 1;
                if depth == 1 && key == b"ts" {
                    let mut j = i;
                    while j < n && ws(line[j]) {
                        j += 1;
                    }
                    if j < n && line[j] == b':' {
                        j += 1;
                        while j < n && ws(line[j]) {
                            j += 1;
                        }
                        let s = j;
                        while j < n && line[j].is_ascii_digit() {
                            j += 1;
                        }
                        let end_ok = j < n && (ws(line[j]) || line[j] == b',' || line[j] == b'}');
                        if j > s && end_ok {
                            let v: i64 = std::str::from_utf8(&line[s..j]).ok()?.parse().ok()?;
                            return Some((s, j, v));
                        }
                        return None;
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `line` with its top-level `ts` moved by `shift_ms` into `out`; the line unchanged when it
/// has no such `ts` or the result would be negative. Returns the new `ts`.
pub fn shift_line(line: &[u8], shift_ms: i64, out: &mut Vec<u8>) -> Option<i64> {
    out.clear();
    match find_ts(line) {
        Some((s, e, v)) if v.checked_add(shift_ms).is_some_and(|t| t >= 0) => {
            let t = v + shift_ms;
            out.extend_from_slice(&line[..s]);
            out.extend_from_slice(t.to_string().as_bytes());
            out.extend_from_slice(&line[e..]);
            Some(t)
        }
        _ => {
            out.extend_from_slice(line);
            None
        }
    }
}

/// What a recording holds: its lines and the span of its arrival clock.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recording {
    pub lines: u64,
    /// `ts` of the first line that has one, and the newest `ts`.
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Calls `f` with every non-empty line (without its `\n`) until input ends or `f` says stop.
fn each_line(input: impl Read, mut f: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let l = line.strip_suffix(b"\n").unwrap_or(&line);
        if !l.is_empty() && !f(l) {
            return Ok(());
        }
    }
}

/// Reads a recording once to learn its span.
pub fn scan(input: impl Read) -> std::io::Result<Recording> {
    let mut rec = Recording { lines: 0, first_ms: i64::MIN, last_ms: i64::MIN };
    each_line(input, |l| {
        rec.lines += 1;
        if let Some((_, _, ts)) = find_ts(l) {
            if rec.first_ms == i64::MIN {
                rec.first_ms = ts;
            }
            rec.last_ms = rec.last_ms.max(ts);
        }
        true
    })?;
    Ok(rec)
}

/// The default shift: the recording ends (in event time) when its replay at `speed` started
/// at `start_ms` ends, rounded down to a whole minute.
pub fn default_shift(rec: &Recording, speed: f64, start_ms: i64) -> i64 {
    let len = rec.last_ms - rec.first_ms;
    let end = start_ms + (len as f64 / speed.max(1e-9)) as i64;
    (end - rec.last_ms).div_euclid(60_000) * 60_000
}

/// The rehearsal's report.
#[derive(Debug, Clone, Serialize)]
pub struct RehearseReport {
    pub lines: u64,
    pub shifted: u64,
    pub unshifted: u64,
    pub shift_ms: i64,
    pub speed: f64,
    pub seconds: f64,
    pub delivered: u64,
    pub failed: u64,
    pub cpu_s: f64,
}

/// Plays the recording into `producer`. `progress` is called about every 5 s with (lines
/// sent, event time now reached after the shift).
pub fn play(
    input: impl Read,
    rec: &Recording,
    shift_ms: i64,
    speed: f64,
    producer: &EventProducer,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64, i64),
) -> std::io::Result<RehearseReport> {
    let cpu0 = usage(None).cpu_s;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut clock = rec.first_ms;
    let mut rep = RehearseReport {
        lines: 0,
        shifted: 0,
        unshifted: 0,
        shift_ms,
        speed,
        seconds: 0.0,
        delivered: 0,
        failed: 0,
        cpu_s: 0.0,
    };
    let mut out = Vec::with_capacity(1024);
    each_line(input, |l| {
        match shift_line(l, shift_ms, &mut out) {
            Some(t) => {
                rep.shifted += 1;
                clock = clock.max(t - shift_ms);
            }
            None => rep.unshifted += 1,
        }
        // Due at (clock - first) / speed after the start, and never ahead of the wall clock.
        let due = Duration::from_secs_f64(((clock - rec.first_ms).max(0) as f64 / speed.max(1e-9)) / 1000.0);
        let wall_due = clock + shift_ms;
        loop {
            let ahead = wall_due - crate::now_ms();
            let early = due.saturating_sub(started.elapsed());
            if early.is_zero() && ahead <= 0 {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let wait = early.max(Duration::from_millis(ahead.max(0) as u64)).min(Duration::from_millis(50));
            std::thread::sleep(wait);
        }
        // The message's own time is when the line arrives in the replayed night, so the
        // monitor's checks against message time see the recording as it was.
        if let Err(e) = producer.send_at(&out, Some(clock + shift_ms)) {
            rep.failed += 1;
            tracing::warn!(error = %e, "rehearse: the producer refused a message");
        }
        rep.lines += 1;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            progress(rep.lines, clock + shift_ms);
        }
        !stop.load(Ordering::Relaxed)
    })?;
    if let Err(e) = producer.flush(Duration::from_secs(60)) {
        tracing::warn!(error = %e, "rehearse: not every message was acknowledged within 60 s");
    }
    let d = producer.deliveries();
    rep.delivered = d.delivered.load(Ordering::Relaxed);
    rep.failed += d.failed.load(Ordering::Relaxed);
    rep.seconds = started.elapsed().as_secs_f64();
    rep.cpu_s = usage(None).cpu_s - cpu0;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_top_level_ts_digits_change() {
        let mut out = Vec::new();
        let l = br#"{"event_id":"e-1","type":"click","ts":1000,"user_id":"u-1"}"#;
        assert_eq!(shift_line(l, 500, &mut out), Some(1500));
        assert_eq!(out, br#"{"event_id":"e-1","type":"click","ts":1500,"user_id":"u-1"}"#);
        // Spaces, a nested "ts", a "ts" inside a string value, escaped quotes.
        let l = br#"{ "x": {"ts": 5}, "note": "\"ts\":7", "ts" : 1000 }"#;
        assert_eq!(shift_line(l, -1000, &mut out), Some(0));
        assert_eq!(out, br#"{ "x": {"ts": 5}, "note": "\"ts\":7", "ts" : 0 }"#);
        // Not shifted: no ts, a string ts, a fractional one, not an object, a negative result.
        for l in [
            &br#"{"event_id":"x","type":"pay"}"#[..],
            br#"{"ts":"yesterday"}"#,
            br#"{"ts":12.5}"#,
            b"not json",
            br#"[1,2]"#,
            br#"{"ts":10}"#,
        ] {
            assert_eq!(shift_line(l, -20, &mut out), None, "{}", String::from_utf8_lossy(l));
            assert_eq!(out, l);
        }
    }

    #[test]
    fn the_default_shift_ends_the_recording_when_the_replay_ends() {
        let rec = Recording { lines: 10, first_ms: 1_000_000, last_ms: 1_000_000 + 3_600_000 };
        let start = 1_800_000_000_000;
        let s = default_shift(&rec, 60.0, start);
        // One hour at 60x takes one minute; the end lands on or just before start + 1 min.
        let end = rec.last_ms + s;
        assert!(end <= start + 60_000 && end > start + 60_000 - 60_000, "{end}");
        assert_eq!(s % 60_000, 0);
        // At 1x the start lands within a minute before now.
        let s1 = default_shift(&rec, 1.0, start);
        assert!(rec.first_ms + s1 <= start && rec.first_ms + s1 > start - 60_000);
    }
}
