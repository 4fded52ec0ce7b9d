//! A fast reader for the plain form of a JSON sample: one flat object whose keys are the
//! sample's fields, strings without escapes, unsigned integers, minutes written as
//! `YYYY-MM-DDTHH:MM:00Z` and labels as an object of strings, which is what collectors
//! send. It fills a sample whose buffers are reused, instead of allocating every text.
//!
//! Anything else (an escape, another way of writing a time, an unknown, missing or
//! repeated field, a number that is not a plain unsigned integer, trailing text) is not
//! read here: the caller then reads the line with `serde_json`, which accepts what is
//! valid and names what is not. So this reader never decides what is valid; it only
//! takes a short cut for lines that are.

use std::collections::BTreeMap;

use crate::minute::Minute;
use crate::sample::{ResourceKind, ResourceState, Sample};

/// Each field's key as it is written, quotes and colon included, in the order of their
/// bits in the `seen` mask; the first eight are required.
const KEYS: [&str; 14] = [
    "\"minute\":",
    "\"host\":",
    "\"account_id\":",
    "\"resource_id\":",
    "\"kind\":",
    "\"sku\":",
    "\"zone\":",
    "\"state\":",
    "\"gpus\":",
    "\"out_external_bytes\":",
    "\"out_internal_bytes\":",
    "\"in_bytes\":",
    "\"size_bytes\":",
    "\"labels\":",
];
const REQUIRED: u16 = 0xff;

/// Labels a sample has at most for the short cut; more are left to `serde_json`.
const MAX_LABELS: usize = 16;

/// Fills `sample` from `line` if the line has the plain form; `false` if it has not (the
/// sample then holds a mix of old and new values and must be filled again).
pub(crate) fn read_plain_sample(line: &[u8], sample: &mut Sample) -> bool {
    // One check of the whole line (by SIMD: most of a line is ASCII, which `std` checks
    // a word at a time); every string in it is then a slice of valid UTF-8.
    let Ok(text) = simdutf8::basic::from_utf8(line) else {
        return false;
    };
    read(&mut Cursor { text, at: 0 }, sample).is_some()
}

fn read(cursor: &mut Cursor<'_>, sample: &mut Sample) -> Option<()> {
    sample.gpus = 0;
    sample.out_external_bytes = 0;
    sample.out_internal_bytes = 0;
    sample.in_bytes = 0;
    sample.size_bytes = 0;
    let mut labels_seen = false;
    cursor.expect(b'{')?;
    let mut seen = 0u16;
    let mut expected = 0;
    loop {
        // Collectors write the fields in this order, without spaces: try the next one
        // first, as one comparison of its key, quotes and colon.
        let field = match KEYS.get(expected) {
            Some(key) if cursor.eat_text(key) => expected,
            _ => {
                let name = cursor.string()?;
                cursor.expect(b':')?;
                KEYS.iter().position(|key| key_name(key) == name)?
            }
        };
        expected = field + 1;
        let bit = 1u16 << field;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match field {
            0 => sample.minute = plain_minute(cursor.string()?)?,
            1 => cursor.string()?.clone_into(&mut sample.host),
            2 => cursor.string()?.clone_into(&mut sample.account_id),
            3 => cursor.string()?.clone_into(&mut sample.resource_id),
            4 => sample.kind = ResourceKind::parse(cursor.string()?)?,
            5 => cursor.string()?.clone_into(&mut sample.sku),
            6 => cursor.string()?.clone_into(&mut sample.zone),
            7 => sample.state = ResourceState::parse(cursor.string()?)?,
            8 => sample.gpus = u16::try_from(cursor.number()?).ok()?,
            9 => sample.out_external_bytes = cursor.number()?,
            10 => sample.out_internal_bytes = cursor.number()?,
            11 => sample.in_bytes = cursor.number()?,
            12 => sample.size_bytes = cursor.number()?,
            _ => {
                read_labels(cursor, &mut sample.labels)?;
                labels_seen = true;
            }
        }
        if cursor.eat(b'}') {
            break;
        }
        cursor.expect(b',')?;
    }
    if !labels_seen {
        sample.labels.clear();
    }
    cursor.whitespace();
    (cursor.at == cursor.text.len() && seen & REQUIRED == REQUIRED).then_some(())
}

/// A field's name: its key without quotes and colon.
fn key_name(key: &str) -> &str {
    &key[1..key.len() - 2]
}

/// An object of strings into `labels`. When its keys are the ones `labels` already holds
/// (a refilled sample of the same kind of resource), only the values are overwritten,
/// which allocates nothing; otherwise the map is rebuilt.
fn read_labels(cursor: &mut Cursor<'_>, labels: &mut BTreeMap<String, String>) -> Option<()> {
    let mut read: [(&str, &str); MAX_LABELS] = [("", ""); MAX_LABELS];
    let mut count = 0;
    cursor.expect(b'{')?;
    if !cursor.eat(b'}') {
        loop {
            let name = cursor.string()?;
            cursor.expect(b':')?;
            let value = cursor.string()?;
            *read.get_mut(count)? = (name, value);
            count += 1;
            if cursor.eat(b'}') {
                break;
            }
            cursor.expect(b',')?;
        }
    }
    let read = &read[..count];
    // Strictly ascending names are distinct, so the same count and names means the same
    // set of keys (`serde_json` writes a map in this order).
    let same_keys = labels.len() == read.len()
        && read.windows(2).all(|pair| pair[0].0 < pair[1].0)
        && labels.keys().zip(read).all(|(key, (name, _))| key == name);
    if same_keys {
        for (value, (_, new)) in labels.values_mut().zip(read) {
            (*new).clone_into(value);
        }
    } else {
        labels.clear();
        for (name, value) in read {
            // A repeated name keeps its last value, as `serde_json` does.
            labels.insert((*name).to_owned(), (*value).to_owned());
        }
    }
    Some(())
}

/// `YYYY-MM-DDTHH:MM:00Z`, a real date and time; anything else is left to `serde_json`.
fn plain_minute(text: &str) -> Option<Minute> {
    let bytes = text.as_bytes();
    if bytes.len() != 20
        || [
            bytes[4], bytes[7], bytes[10], bytes[13], bytes[16], bytes[19],
        ] != *b"--T::Z"
        || &bytes[17..19] != b"00"
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes[range].iter().try_fold(0u32, |value, byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute) = (number(11..13)?, number(14..16)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
    Some(Minute::from_unix_minutes(
        days * 24 * 60 + i64::from(hour * 60 + minute),
    ))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`): a few multiplications instead of a calendar library's checks,
/// once per line.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The length of a string's text up to its closing quote: the position of the first
/// quote, backslash or control character (`None` if there is none). Eight bytes at a
/// time: in each word, a byte is flagged when it equals a quote or a backslash, or is
/// below 0x20; the lowest flag is exact (a false flag can only sit above a true one,
/// from the borrow of the subtraction), and words are read little-endian, so it is the
/// first such byte.
fn string_length(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let flags = |word: u64| {
        let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
        zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
    };
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut words {
        let mut eight = [0; 8];
        eight.copy_from_slice(chunk);
        let flagged = flags(u64::from_le_bytes(eight));
        if flagged != 0 {
            return Some(at + flagged.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|byte| matches!(byte, b'"' | b'\\') || *byte < 0x20)
        .map(|position| at + position)
}

/// A position in a line already known to be UTF-8.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.rest().first() {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        // Collectors write no whitespace: look for the byte first.
        if self.rest().first() != Some(&byte) {
            self.whitespace();
        }
        if self.rest().first() == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Takes `text` if it comes next, exactly (no whitespace skipped). Compared eight
    /// bytes at a time inline: a call to `memcmp` for each key of each line cost more.
    fn eat_text(&mut self, text: &str) -> bool {
        let text = text.as_bytes();
        let Some(next) = self.rest().get(..text.len()) else {
            return false;
        };
        let (mut ours, mut theirs) = (next.chunks_exact(8), text.chunks_exact(8));
        let word = |chunk: &[u8]| {
            let mut eight = [0; 8];
            eight.copy_from_slice(chunk);
            u64::from_ne_bytes(eight)
        };
        let same = ours
            .by_ref()
            .zip(theirs.by_ref())
            .all(|(a, b)| word(a) == word(b))
            && ours
                .remainder()
                .iter()
                .zip(theirs.remainder())
                .all(|(a, b)| a == b);
        if same {
            self.at += text.len();
        }
        same
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let length = string_length(self.rest())?;
        let start = self.at;
        if self.rest()[length] != b'"' {
            return None;
        }
        self.at += length + 1;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        self.text.get(start..start + length)
    }

    /// An unsigned integer as JSON writes one: no sign, fraction, exponent or leading zero.
    fn number(&mut self) -> Option<u64> {
        if !self.rest().first().is_some_and(u8::is_ascii_digit) {
            self.whitespace();
        }
        let rest = self.rest();
        let digits = rest
            .iter()
            .position(|byte| !byte.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0
            || (digits > 1 && rest[0] == b'0')
            || matches!(rest.get(digits), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        let add_digit = |value: u64, byte: &u8| value * 10 + u64::from(byte - b'0');
        // Nineteen digits stay below 10^19 < 2^64; only longer numbers need checking.
        let value = if digits <= 19 {
            rest[..digits].iter().fold(0, add_digit)
        } else {
            rest[..digits].iter().try_fold(0u64, |value, byte| {
                value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
            })?
        };
        self.at += digits;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_json;
    use crate::wire::tests::arbitrary_sample;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    /// What `serde_json` alone makes of a line, and what the short cut makes of it.
    fn both(line: &str) -> (Option<Sample>, Option<Sample>) {
        let serde = serde_json::from_str::<Sample>(line).ok();
        let mut sample = serde_json::from_str::<Sample>(
            r#"{"minute":"2000-01-01T00:00:00Z","host":"old","account_id":"old","resource_id":"old","kind":"ip","sku":"old","zone":"old","state":"active","gpus":9,"out_external_bytes":9,"in_bytes":9,"labels":{"old":"x"}}"#,
        )
        .expect("a sample to reuse");
        let fast = read_plain_sample(line.as_bytes(), &mut sample).then_some(sample);
        (serde, fast)
    }

    proptest! {
        #[test]
        fn what_the_short_cut_reads_serde_json_reads_alike(sample in arbitrary_sample()) {
            let line = String::from_utf8(encode_json(std::slice::from_ref(&sample))).expect("utf-8");
            let (serde, fast) = both(line.trim_end());
            prop_assert_eq!(serde.as_ref(), Some(&sample));
            if let Some(fast) = fast {
                prop_assert_eq!(&fast, &sample);
            }
            // Texts without escapes and times in the plain form take the short cut.
            let plain = !line.contains('\\') && (0..=99_999_999).contains(&sample.minute.unix_minutes())
                && sample.minute.to_datetime().format("%Y").to_string().len() == 4;
            if plain {
                prop_assert!(both(line.trim_end()).1.is_some(), "{line}");
            }
        }
    }

    proptest! {
        /// A sample refilled line after line (labels overwritten in place or rebuilt)
        /// ends up as the last line says, whatever it held before.
        #[test]
        fn a_refilled_sample_is_what_its_last_line_says(
            samples in proptest::collection::vec(arbitrary_sample(), 1..6),
        ) {
            let mut refilled = samples[0].clone();
            for sample in &samples {
                let line = String::from_utf8(encode_json(std::slice::from_ref(sample))).expect("utf-8");
                if read_plain_sample(line.trim_end().as_bytes(), &mut refilled) {
                    prop_assert_eq!(&refilled, sample);
                }
            }
        }
    }

    #[test]
    fn labels_are_read_as_serde_json_reads_them_into_any_refilled_sample() {
        let plain = r#"{"minute":"2026-10-01T10:07:00Z","host":"hv-1","account_id":"a","resource_id":"vm-1","kind":"server","sku":"cx22","zone":"fsn1","state":"running","labels":LABELS}"#;
        let before = ["{}", r#"{"os":"debian"}"#, r#"{"a":"1","os":"x"}"#];
        let after = [
            "{}",
            r#"{"os":"ubuntu"}"#,
            r#"{"os":"ubuntu","os":"rocky"}"#,
            r#"{"os":"1","a":"2"}"#,
            r#"{"a":"","os":"y"}"#,
        ];
        for old in before {
            for new in after {
                let mut sample: Sample =
                    serde_json::from_str(&plain.replace("LABELS", old)).expect("sample");
                let line = plain.replace("LABELS", new);
                let serde: Sample = serde_json::from_str(&line).expect("sample");
                assert!(read_plain_sample(line.as_bytes(), &mut sample), "{line}");
                assert_eq!(sample.labels, serde.labels, "{old} then {new}");
            }
        }
    }

    #[test]
    fn plain_minutes_are_the_calendars() {
        let years = (0..=3)
            .chain(1896..=1904)
            .chain(1968..=2104)
            .chain(9996..=9999);
        for year in years {
            for month in 0..=13 {
                for day in 0..=32 {
                    let text = format!("{year:04}-{month:02}-{day:02}T23:59:00Z");
                    let expected = NaiveDate::from_ymd_opt(year, month, day).map(|date| {
                        let at = date.and_hms_opt(23, 59, 0).expect("time").and_utc();
                        Minute::from_unix_minutes(at.timestamp().div_euclid(60))
                    });
                    assert_eq!(plain_minute(&text), expected, "{text}");
                }
            }
        }
        for wrong in [
            "2026-10-01T24:00:00Z",
            "2026-10-01T10:60:00Z",
            "2026-10-01T1a:00:00Z",
        ] {
            assert_eq!(plain_minute(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn numbers_are_exact_up_to_the_largest_u64_and_refused_beyond() {
        for (text, expected) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("9999999999999999999", Some(9_999_999_999_999_999_999)),
            ("10000000000000000000", Some(10_000_000_000_000_000_000)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("99999999999999999999", None),
            ("184467440737095516150", None),
            ("007", None),
            ("1.0", None),
            ("1e3", None),
            ("-1", None),
            ("", None),
        ] {
            let line = format!("{text}}}");
            let mut cursor = Cursor { text: &line, at: 0 };
            assert_eq!(cursor.number(), expected, "{text}");
            if expected.is_some() {
                assert_eq!(cursor.rest(), b"}", "{text}");
            }
        }
    }

    #[test]
    fn a_string_ends_at_its_first_quote_backslash_or_control_character() {
        let stops = [b'"', b'\\', 0x00, 0x01, 0x1f];
        let others = [
            b'a', b' ', b'!', b'#', b'[', b']', 0x20, 0x21, 0x7f, 0x80, 0xc3, 0xff,
        ];
        for length in 0..20 {
            for &other in &others {
                let text = vec![other; length];
                assert_eq!(string_length(&text), None);
                for &stop in &stops {
                    for at in 0..length {
                        let mut text = text.clone();
                        text[at] = stop;
                        // Whatever follows the first stop, even another stop.
                        for (after, byte) in text.iter_mut().enumerate().skip(at + 1) {
                            *byte = stops[after % stops.len()];
                        }
                        assert_eq!(string_length(&text), Some(at), "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn lines_off_the_plain_form_are_left_to_serde_json() {
        let plain = r#"{"minute":"2026-10-01T10:07:00Z","host":"hv-1","account_id":"a","resource_id":"vm-1","kind":"server","sku":"cx22","zone":"fsn1","state":"running"}"#;
        let (serde, fast) = both(plain);
        assert!(serde.is_some() && fast == serde, "{fast:?}");
        assert_eq!(
            fast.map(|sample| (sample.gpus, sample.in_bytes, sample.labels.len())),
            Some((0, 0, 0))
        );
        let variants = [
            // Valid, but not plain: serde_json reads them.
            plain.replace("10:07:00Z", "12:07:00+02:00"),
            plain.replace("\"vm-1\"", "\"vm-\\u0031\""),
            plain.replace(",\"sku\"", " ,\n\t\"sku\""),
            // Invalid: serde_json names what is wrong.
            plain.replace("10:07:00Z", "10:07:30Z"),
            plain.replace("2026-10-01", "2026-02-30"),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"gpus\":70000",
            ),
            plain.replace("\"state\":\"running\"", "\"state\":\"running\",\"gpus\":01"),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"in_bytes\":-1",
            ),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"in_bytes\":1.5",
            ),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"in_bytes\":18446744073709551616",
            ),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"colour\":\"red\"",
            ),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"sku\":\"cx32\"",
            ),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"labels\":{\"os\":1}",
            ),
            plain.replace(
                "\"state\":\"running\"",
                "\"state\":\"running\",\"labels\":null",
            ),
            plain.replace(",\"zone\":\"fsn1\"", ""),
            plain.replace("\"server\"", "\"teapot\""),
            format!("{plain} x"),
            format!("{plain}}}"),
            plain.replace("\"hv-1\"", "\"hv-\u{1}\""),
        ];
        for line in &variants {
            let (serde, fast) = both(line);
            assert!(
                fast.is_none() || fast == serde,
                "{line}: {fast:?} but serde_json: {serde:?}"
            );
        }
        // The ones that are valid and plain in spirit but not in form still parse.
        assert!(both(&variants[0]).0.is_some() && both(&variants[1]).0.is_some());
        // Whitespace between tokens is plain JSON: the short cut takes it.
        assert!(both(&variants[2]).1.is_some());
        // Labels written in any key order come out as the same map.
        let labelled = plain.replace(
            "\"state\":\"running\"",
            "\"state\":\"running\",\"labels\":{\"b\":\"2\",\"a\":\"1\"}",
        );
        let (serde, fast) = both(&labelled);
        assert_eq!(fast, serde);
    }
}
