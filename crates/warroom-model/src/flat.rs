//! The decoder's fast path: the shape nearly every producer sends, read in one forward scan.
//!
//! A message that is one flat object whose values are strings without escapes, plain
//! non-negative integers or `null` is read here without serde_json's generic machinery. On
//! anything else (an escape, a control character, a float, an exponent, a sign, a leading
//! zero, a boolean, a nested value, a field given twice, an amount out of bounds, a syntax
//! error) it gives up and [`crate::decode`] reads the message again with serde_json from the
//! start, which then finds the same event or names the rejection. So the fast path only ever
//! accepts what the general path would read identically: `tests::the_fast_path_reads_what_serde_reads`
//! (proptest) and the `decode` fuzz target hold it to that.

use std::borrow::Cow;

use crate::event::RawEvent;
use crate::MAX_AMOUNT_CENTS;

/// Reads `text` into `raw` (which must start empty); `None` means "not the simple shape":
/// `raw` is then in an unspecified state and the caller starts again with serde_json.
#[inline]
pub(crate) fn read<'a>(text: &'a str, raw: &mut RawEvent<'a>) -> Option<()> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = ws(b, i + 1);
    if *b.get(i)? == b'}' {
        return end(b, i + 1);
    }
    loop {
        if *b.get(i)? != b'"' {
            return None;
        }
        let (ks, ke) = string(b, i + 1)?;
        i = ws(b, ke + 1);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, i + 1);
        let key = &b[ks..ke];
        let v = value(b, i)?;
        i = v.end;
        // `set` mirrors the general path: a field whose value was `null` may come again (it
        // counts as absent); a field given twice with a value is left to that path to reject.
        macro_rules! set {
            ($slot:expr, $read:expr) => {{
                if $slot.is_some() {
                    return None;
                }
                $slot = $read;
            }};
        }
        match key {
            b"event_id" => set!(raw.event_id, text_of(text, &v)?),
            b"type" => set!(raw.kind, text_of(text, &v)?),
            b"ts" => set!(raw.ts, int_of(&v)?.map(|n| n as i64)),
            b"user_id" => set!(raw.user_id, text_of(text, &v)?),
            b"venue" => set!(raw.venue, text_of(text, &v)?),
            b"slot" => set!(raw.slot, text_of(text, &v)?),
            b"item_id" => set!(raw.item_id, text_of(text, &v)?),
            b"merchant_id" => set!(raw.merchant_id, text_of(text, &v)?),
            b"channel" => set!(raw.channel, text_of(text, &v)?),
            b"order_id" => set!(raw.order_id, text_of(text, &v)?),
            b"amount_cents" => set!(raw.amount_cents, amount(int_of(&v)?)?),
            b"coupon_cents" => set!(raw.coupon_cents, amount(int_of(&v)?)?),
            _ => {}
        }
        i = ws(b, i);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return end(b, i + 1),
            _ => return None,
        }
    }
}

/// A string field's value: `Some(None)` for `null`, `None` (give up) for a number.
#[inline(always)]
fn text_of<'a>(text: &'a str, v: &Value) -> Option<Option<Cow<'a, str>>> {
    match v.kind {
        Kind::Null => Some(None),
        Kind::Str => Some(Some(Cow::Borrowed(&text[v.start..v.stop]))),
        Kind::Int(_) => None,
    }
}

/// A numeric field's value: `Some(None)` for `null`, `None` (give up) for a string.
#[inline(always)]
fn int_of(v: &Value) -> Option<Option<u64>> {
    match v.kind {
        Kind::Null => Some(None),
        Kind::Int(n) => Some(Some(n)),
        Kind::Str => None,
    }
}

/// Money within the contract's bounds, or give up (the general path names `bad_amount`).
#[inline]
fn amount(v: Option<u64>) -> Option<Option<u64>> {
    match v {
        Some(n) if n > MAX_AMOUNT_CENTS => None,
        v => Some(v),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Null,
    Str,
    /// A plain integer of at most 18 digits (fits `i64` and `u64`).
    Int(u64),
}

struct Value {
    kind: Kind,
    /// The string's contents (for `Str`).
    start: usize,
    stop: usize,
    /// Just past the value.
    end: usize,
}

#[inline(always)]
fn value(b: &[u8], i: usize) -> Option<Value> {
    match *b.get(i)? {
        b'"' => {
            let (start, stop) = string(b, i + 1)?;
            Some(Value { kind: Kind::Str, start, stop, end: stop + 1 })
        }
        b'n' => (b.get(i..i + 4)? == b"null").then_some(Value { kind: Kind::Null, start: 0, stop: 0, end: i + 4 }),
        b'0' => match b.get(i + 1) {
            // "0" alone; "01", "0.5", "0e1" are left to the general path.
            Some(b'0'..=b'9' | b'.' | b'e' | b'E') => None,
            _ => Some(Value { kind: Kind::Int(0), start: 0, stop: 0, end: i + 1 }),
        },
        b'1'..=b'9' => {
            let mut n = 0u64;
            let mut j = i;
            while let Some(&d) = b.get(j) {
                if !d.is_ascii_digit() {
                    break;
                }
                n = n * 10 + u64::from(d - b'0');
                j += 1;
                if j - i > 18 {
                    return None;
                }
            }
            if matches!(b.get(j), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            Some(Value { kind: Kind::Int(n), start: 0, stop: 0, end: j })
        }
        _ => None,
    }
}

/// The contents of a string starting at `i` (just past its opening quote): `(i, closing
/// quote)`, or `None` if it holds an escape or a control character before its end.
#[inline(always)]
fn string(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    // Eight bytes at a time: stop at the first word holding `"`, `\` or a byte below 0x20.
    while let Some(w) = b.get(j..j + 8) {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if has_special(w) {
            break;
        }
        j += 8;
    }
    loop {
        match *b.get(j)? {
            b'"' => return Some((i, j)),
            b'\\' | 0..=0x1f => return None,
            _ => j += 1,
        }
    }
}

/// Whether any byte of `w` is `"`, `\` or below 0x20 (the usual "has zero byte" bit trick:
/// exact for the bytes it flags first, which is all the caller needs to stop scanning).
#[inline(always)]
fn has_special(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (quote | backslash | control) != 0
}

#[inline(always)]
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Only whitespace may follow the object.
#[inline]
fn end(b: &[u8], i: usize) -> Option<()> {
    (ws(b, i) == b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::event::{decode, decode_general};
    use crate::Limits;

    fn key() -> impl Strategy<Value = String> {
        const KNOWN: [&str; 12] = [
            "event_id",
            "type",
            "ts",
            "user_id",
            "venue",
            "slot",
            "item_id",
            "merchant_id",
            "channel",
            "order_id",
            "amount_cents",
            "coupon_cents",
        ];
        prop_oneof![
            8 => proptest::sample::select(&KNOWN[..]).prop_map(|k| format!("\"{k}\"")),
            1 => proptest::sample::select(&["\"extra\"", "\"\"", "\"ts\\u0000\"", "\"t\\u0073\"", "\"Type\"", "ts", "\"é\""][..])
                .prop_map(str::to_owned),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        const ODD: [&str; 38] = [
            "0",
            "00",
            "01",
            "-0",
            "-1",
            "1.5",
            "1e3",
            "1E3",
            "0.0",
            "0e1",
            "123456789012345678",
            "1234567890123456789",
            "99999999999999999999",
            "1000000000000",
            "1000000000001",
            "1794312000000",
            "null",
            "nul",
            "true",
            "false",
            "[]",
            "[1,2]",
            "{}",
            "{\"a\":[1]}",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\ud800\"",
            "\"tab\there\"",
            "\"é用\"",
            "\"pay\"",
            "\"click\"",
            "\"impression\"",
            "\"order\"",
            "\"refund\"",
            "\"fly\"",
            "\"unterminated",
            "\"x\\\"",
        ];
        prop_oneof![
            3 => "[a-z0-9_-]{0,20}".prop_map(|s| format!("\"{s}\"")),
            2 => (0u64..2_000_000_000_000).prop_map(|n| n.to_string()),
            1 => "[ -~é用\u{1}]{0,12}".prop_map(|s| format!("\"{s}\"")),
            3 => proptest::sample::select(&ODD[..]).prop_map(str::to_owned),
        ]
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r")]
    }

    /// Flat-ish objects around the shape producers send, with every kind of deviation.
    fn message() -> impl Strategy<Value = String> {
        let member =
            (ws(), key(), ws(), prop_oneof![20 => Just(":"), 1 => Just(""), 1 => Just("=")], ws(), value(), ws());
        (
            ws(),
            proptest::collection::vec(member, 0..14),
            ws(),
            prop_oneof![20 => Just(""), 1 => Just(" x"), 1 => Just("}")],
            any::<prop::sample::Index>(),
            0..10u8,
        )
            .prop_map(|(lead, members, trail, junk, cut, cut_odds)| {
                let body: Vec<String> =
                    members.into_iter().map(|(a, k, b, colon, c, v, d)| format!("{a}{k}{b}{colon}{c}{v}{d}")).collect();
                let mut m = format!("{lead}{{{}}}{trail}{junk}", body.join(","));
                if cut_odds == 0 {
                    // Cut anywhere (at a character boundary): a truncated message.
                    let at = cut.index(m.len() + 1);
                    let at = (0..=at).rev().find(|&i| m.is_char_boundary(i)).unwrap_or(0);
                    m.truncate(at);
                }
                m
            })
    }

    /// Mostly valid events of every type, with fields in any order.
    fn event() -> impl Strategy<Value = String> {
        const KINDS: [&str; 7] = ["impression", "click", "favorite", "cart", "order", "pay", "refund"];
        (
            proptest::sample::select(&KINDS[..]),
            0u64..2_000_000_000_000,
            "[a-z0-9-]{1,12}",
            proptest::option::of("[a-z0-9-]{0,10}"),
            proptest::option::of(0u64..1_000_000_000_001),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(kind, ts, id, name, amount, rot)| {
                let mut fields = vec![
                    format!("\"event_id\":\"e-{id}\""),
                    format!("\"type\":\"{kind}\""),
                    format!("\"ts\":{ts}"),
                    format!("\"user_id\":\"u-{id}\""),
                ];
                if let Some(n) = name {
                    fields.push(format!("\"venue\":\"{n}\""));
                    fields.push(format!("\"order_id\":\"o-{n}\""));
                }
                if let Some(a) = amount {
                    fields.push(format!("\"amount_cents\":{a}"));
                }
                let r = rot.index(fields.len());
                fields.rotate_left(r);
                format!("{{{}}}", fields.join(","))
            })
    }

    fn same(m: &str) -> Result<(), TestCaseError> {
        for limits in [Limits::default(), Limits::default().at(1_794_312_000_000)] {
            let fast = decode(m.as_bytes(), &limits);
            let general = decode_general(m.as_bytes(), &limits);
            match (&fast, &general) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", m),
                (Err(a), Err(b)) => prop_assert_eq!((a.reason, a.field), (b.reason, b.field), "{}", m),
                _ => prop_assert!(false, "fast {:?} vs general {:?} on {}", fast, general, m),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn the_fast_path_reads_what_serde_reads(m in message()) {
            same(&m)?;
        }

        #[test]
        fn valid_events_read_alike_on_both_paths(m in event()) {
            same(&m)?;
        }
    }

    #[test]
    fn the_usual_shapes_take_the_fast_path() {
        let mut raw = Default::default();
        let line = r#"{"event_id":"e-1","type":"pay","ts":1794312000001,"user_id":"u-1","venue":"main","slot":"main-001","item_id":"i-1","merchant_id":"m-1","channel":"feed","order_id":"o-1","amount_cents":1999,"coupon_cents":0}"#;
        assert!(super::read(line, &mut raw).is_some());
        assert_eq!(raw.amount_cents, Some(1999));
        assert_eq!(raw.ts, Some(1_794_312_000_001));
        assert_eq!(raw.merchant_id.as_deref(), Some("m-1"));
        for odd in [
            r#"{"event_id":"e\"1"}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":-1}"#,
            r#"{"ts":01}"#,
            r#"{"x":true}"#,
            r#"{"x":{}}"#,
            r#"{"event_id":"a","event_id":"b"}"#,
            r#"{"amount_cents":1000000000001}"#,
            r#"{"a":1} x"#,
            r#"{"a":1"#,
            "{\"a\":\"\u{1}\"}",
        ] {
            assert!(super::read(odd, &mut Default::default()).is_none(), "{odd}");
        }
    }

    #[test]
    fn the_word_scan_finds_every_stop_byte() {
        for stop in [b'"', b'\\', 0u8, 0x1f] {
            for at in 0..8 {
                let mut w = *b"abcdefgh";
                w[at] = stop;
                assert!(super::has_special(u64::from_le_bytes(w)), "{stop} at {at}");
            }
        }
        assert!(!super::has_special(u64::from_le_bytes(*b"a-Z ~\x7f\xc3\xa9")));
    }
}
