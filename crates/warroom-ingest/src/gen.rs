//! A deterministic generator of contract events shaped like a Double-11 night.
//!
//! Used by the embedded simulator (`warroom run`), by `warroom gen` (files for replay and
//! benches) and by the tests. Same seed, same lines. What it makes:
//! - traffic through venues and slots with Zipf popularity, and some without a venue;
//! - a funnel: impressions -> clicks -> favourites/carts -> orders -> payments (-> refunds);
//! - the noise the monitor must survive: exact re-deliveries of recent events, payments
//!   re-sent with a new event id and a later time, late events, malformed lines.

use std::collections::VecDeque;
use std::io::Write;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// What to generate. Shares are probabilities per emitted event.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub venues: Vec<String>,
    pub slots_per_venue: usize,
    pub merchants: usize,
    pub users: u64,
    /// Zipf exponent of slot popularity.
    pub zipf: f64,
    /// Share of traffic that came through no venue (search, direct).
    pub no_venue_share: f64,
    /// Exact re-delivery of a recent line.
    pub duplicate_share: f64,
    /// A paid order's `pay` sent again with a new event id.
    pub resend_share: f64,
    /// Events whose `ts` is moved back by up to `late_max_ms`.
    pub late_share: f64,
    pub late_max_ms: i64,
    /// Malformed lines.
    pub bad_share: f64,
    /// Share of slot events that name another merchant than the slot's usual one.
    pub merchant_change_share: f64,
    /// Put into every event and order id (`e-{prefix}{n}`), so that several generators
    /// (loadgen's threads, or two loadgen runs on one topic) never repeat an id.
    pub id_prefix: String,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 11,
            venues: ["main", "digital", "beauty", "food"].iter().map(|s| s.to_string()).collect(),
            slots_per_venue: 8,
            merchants: 20,
            users: 50_000,
            zipf: 1.1,
            no_venue_share: 0.1,
            duplicate_share: 0.01,
            resend_share: 0.003,
            late_share: 0.01,
            late_max_ms: 90_000,
            bad_share: 0.001,
            merchant_change_share: 0.001,
            id_prefix: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    order: u64,
    user: u64,
    slot: Option<usize>,
    amount: u64,
    ts: i64,
}

/// The generator state.
#[derive(Debug)]
pub struct Generator {
    cfg: GenConfig,
    rng: SmallRng,
    zipf: Zipf<f64>,
    slots: Vec<(String, String, usize)>, // (slot, venue, merchant)
    next_id: u64,
    next_order: u64,
    pending: VecDeque<Pending>,
    paid: VecDeque<Pending>,
    recent: VecDeque<Vec<u8>>,
    line: Vec<u8>,
}

const CHANNELS: [&str; 5] = ["search", "push", "banner", "live", "feed"];

const BAD: [&str; 8] = [
    "not json at all",
    r#"{"event_id":"x","type":"pay"}"#,
    r#"{"event_id":"x","type":"teleport","ts":1,"user_id":"u"}"#,
    r#"{"event_id":"x","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":-5}"#,
    r#"{"event_id":"x","type":"pay","ts":1,"user_id":"u","order_id":"o","amount_cents":12.5}"#,
    r#"[1,2,3]"#,
    r#"{"event_id":"x","type":"click","ts":"yesterday","user_id":"u"}"#,
    r#"{"event_id":"x","type":"click","ts":1,"user_id":"u""#,
];

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let mut slots = Vec::new();
        for v in &cfg.venues {
            for k in 0..cfg.slots_per_venue {
                let merchant = (slots.len() * 7 + k) % cfg.merchants.max(1);
                slots.push((format!("{v}-{k:03}"), v.clone(), merchant));
            }
        }
        let n = slots.len().max(1) as f64;
        Generator {
            rng: SmallRng::seed_from_u64(cfg.seed),
            zipf: Zipf::new(n as u64, cfg.zipf).expect("valid zipf"),
            slots,
            next_id: 0,
            next_order: 0,
            pending: VecDeque::new(),
            paid: VecDeque::new(),
            recent: VecDeque::new(),
            line: Vec::with_capacity(512),
            cfg,
        }
    }

    /// Emits one or more lines (each ending in `\n`) for an event at `ts` into `out`; returns
    /// how many lines.
    pub fn emit(&mut self, ts: i64, out: &mut Vec<u8>) -> usize {
        let r: f64 = self.rng.gen();
        let c = &self.cfg;
        if r < c.bad_share {
            let b = BAD[self.rng.gen_range(0..BAD.len())];
            out.extend_from_slice(b.as_bytes());
            out.push(b'\n');
            return 1;
        }
        if r < c.bad_share + c.duplicate_share && !self.recent.is_empty() {
            let k = self.rng.gen_range(0..self.recent.len());
            out.extend_from_slice(&self.recent[k]);
            return 1;
        }
        if r < c.bad_share + c.duplicate_share + c.resend_share && !self.paid.is_empty() {
            let k = self.rng.gen_range(0..self.paid.len());
            let p = self.paid[k].clone();
            let at = ts.max(p.ts);
            self.write_event("pay", at, p.user, p.slot, Some((p.order, p.amount)));
            return self.flush(out);
        }
        let mut ts = ts;
        if self.rng.gen::<f64>() < c.late_share {
            ts = (ts - self.rng.gen_range(0..=c.late_max_ms)).max(0);
        }
        let kind: f64 = self.rng.gen();
        if kind < 0.035 && !self.pending.is_empty() {
            // Pay a pending order (most orders get paid).
            let k = self.rng.gen_range(0..self.pending.len().min(64));
            let p = self.pending.remove(k).expect("index in range");
            let at = ts.max(p.ts);
            self.write_event("pay", at, p.user, p.slot, Some((p.order, p.amount)));
            self.paid.push_back(Pending { ts: at, ..p });
            if self.paid.len() > 4096 {
                self.paid.pop_front();
            }
            return self.flush(out);
        }
        if kind < 0.037 && !self.paid.is_empty() {
            let k = self.rng.gen_range(0..self.paid.len());
            let p = self.paid[k].clone();
            let refund = p.amount / 2;
            self.write_event("refund", ts.max(p.ts), p.user, p.slot, Some((p.order, refund)));
            return self.flush(out);
        }
        let user = self.rng.gen_range(0..c.users);
        let slot = if self.rng.gen::<f64>() < c.no_venue_share {
            None
        } else {
            Some(self.zipf.sample(&mut self.rng) as usize - 1)
        };
        let (name, order) = match kind {
            k if k < 0.075 => {
                let amount = self.rng.gen_range(990..=89_900) as u64;
                let order = self.next_order;
                self.next_order += 1;
                self.pending.push_back(Pending { order, user, slot, amount, ts });
                if self.pending.len() > 4096 {
                    self.pending.pop_front();
                }
                ("order", Some((order, amount)))
            }
            k if k < 0.11 => ("cart", None),
            k if k < 0.13 => ("favorite", None),
            k if k < 0.30 => ("click", None),
            _ => ("impression", None),
        };
        self.write_event(name, ts, user, slot, order);
        self.flush(out)
    }

    fn write_event(&mut self, kind: &str, ts: i64, user: u64, slot: Option<usize>, order: Option<(u64, u64)>) {
        let id = self.next_id;
        self.next_id += 1;
        let l = &mut self.line;
        l.clear();
        let pre = &self.cfg.id_prefix;
        let _ = write!(l, r#"{{"event_id":"e-{pre}{id}","type":"{kind}","ts":{ts},"user_id":"u-{user}""#);
        if let Some(s) = slot {
            let (name, venue, mut merchant) = self.slots[s].clone();
            if self.rng.gen::<f64>() < self.cfg.merchant_change_share {
                merchant = self.rng.gen_range(0..self.cfg.merchants.max(1));
            }
            let _ =
                write!(l, r#","venue":"{venue}","slot":"{name}","item_id":"i-{name}","merchant_id":"m-{merchant}""#);
        }
        let ch = CHANNELS[(user % CHANNELS.len() as u64) as usize];
        let _ = write!(l, r#","channel":"{ch}""#);
        if let Some((o, amount)) = order {
            let _ = write!(l, r#","order_id":"o-{pre}{o}","amount_cents":{amount}"#);
            if amount % 7 == 0 {
                let _ = write!(l, r#","coupon_cents":{}"#, amount / 10);
            }
        }
        l.extend_from_slice(b"}\n");
    }

    fn flush(&mut self, out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(&self.line);
        if self.recent.len() >= 256 {
            let mut old = self.recent.pop_front().expect("non-empty");
            old.clear();
            old.extend_from_slice(&self.line);
            self.recent.push_back(old);
        } else {
            self.recent.push_back(self.line.clone());
        }
        1
    }
}

/// Relative traffic of a Double-11 night at position `u` in [0, 1): a warm-up ramp over the
/// first two thirds, the midnight spike (about 8x) decaying into the official sale, and a
/// calmer encore.
pub fn night_intensity(u: f64) -> f64 {
    intensity(u, 6.8)
}

/// [`night_intensity`] with the midnight spike reaching `peak` times the base rate (at least
/// 1.5; the night's own is 8.3).
pub fn night_intensity_peak(u: f64, peak: f64) -> f64 {
    intensity(u, (peak - 1.5).max(0.0))
}

fn intensity(u: f64, spike: f64) -> f64 {
    let midnight = 2.0 / 3.0;
    if u < midnight {
        0.3 + 0.7 * (u / midnight)
    } else {
        let after = u - midnight;
        1.2 + spike * (-after * 40.0).exp() + 0.3 * (-after * 4.0).exp()
    }
}

/// Event times for `n` events spread over `[start, start + span)` following the night's
/// intensity (inverse of its cumulative distribution, tabulated), in increasing order.
pub fn night_times(n: u64, start: i64, span_ms: i64) -> impl Iterator<Item = i64> {
    const STEPS: usize = 4096;
    let mut cdf = Vec::with_capacity(STEPS + 1);
    let mut acc = 0.0;
    cdf.push(0.0);
    for k in 0..STEPS {
        acc += night_intensity((k as f64 + 0.5) / STEPS as f64);
        cdf.push(acc);
    }
    let total = acc;
    let mut step = 0usize;
    (0..n).map(move |i| {
        let target = (i as f64 + 0.5) / n as f64 * total;
        while step + 1 < STEPS && cdf[step + 1] < target {
            step += 1;
        }
        let within = (target - cdf[step]) / (cdf[step + 1] - cdf[step]).max(f64::MIN_POSITIVE);
        let u = (step as f64 + within.clamp(0.0, 1.0)) / STEPS as f64;
        start + (u * span_ms as f64) as i64
    })
}

/// Writes `n` generated events (plus the noise lines) over a night of `span_ms` from `start`.
pub fn write_night(cfg: GenConfig, n: u64, start: i64, span_ms: i64, out: impl Write) -> std::io::Result<u64> {
    write_times(cfg, night_times(n, start, span_ms), out)
}

/// Writes `n` events at a steady rate over `span_ms` (for memory and soak measurements).
pub fn write_flat(cfg: GenConfig, n: u64, start: i64, span_ms: i64, out: impl Write) -> std::io::Result<u64> {
    write_times(cfg, (0..n).map(move |i| start + (i as i128 * span_ms as i128 / n.max(1) as i128) as i64), out)
}

fn write_times(cfg: GenConfig, times: impl Iterator<Item = i64>, mut out: impl Write) -> std::io::Result<u64> {
    let mut g = Generator::new(cfg);
    let mut buf = Vec::with_capacity(1 << 20);
    let mut lines = 0u64;
    for ts in times {
        lines += g.emit(ts, &mut buf) as u64;
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_lines() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_night(GenConfig::default(), 2_000, 1_762_790_400_000, 3_600_000, &mut a).unwrap();
        write_night(GenConfig::default(), 2_000, 1_762_790_400_000, 3_600_000, &mut b).unwrap();
        assert_eq!(a, b);
        let lines = a.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(lines, 2_000);
    }

    #[test]
    fn night_times_are_ordered_and_spiky() {
        let t: Vec<i64> = night_times(100_000, 0, 6_000).collect();
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        let per = |a: i64, b: i64| t.iter().filter(|&&x| x >= a && x < b).count();
        // The minute after midnight is several times busier than the first minute.
        assert!(per(4_000, 4_100) > 4 * per(0, 100));
    }
}
