//! `decode-floor FILE`: times the plain single-threaded serde_json loop (the speed bar's
//! baseline) over a file and prints one JSON line with the result and the wall time.

use std::io::BufReader;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: decode-floor FILE");
    let f = std::fs::File::open(&path)?;
    let t = Instant::now();
    let r = warroom_benches::floor_sum(BufReader::with_capacity(1 << 20, f))?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "{{\"lines\":{},\"valid\":{},\"paid_cents\":{},\"seconds\":{:.3},\"lines_per_s\":{:.0}}}",
        r.lines,
        r.valid,
        r.paid_cents,
        s,
        r.lines as f64 / s
    );
    Ok(())
}
