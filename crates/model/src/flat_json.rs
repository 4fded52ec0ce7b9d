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

use chrono::NaiveDate;

use crate::minute::Minute;
use crate::sample::{ResourceKind, ResourceState, Sample};

/// Fields in the order of their bits in the `seen` mask; the first eight are required.
const FIELDS: [&str; 14] = [
    "minute",
    "host",
    "account_id",
    "resource_id",
    "kind",
    "sku",
    "zone",
    "state",
    "gpus",
    "out_external_bytes",
    "out_internal_bytes",
    "in_bytes",
    "size_bytes",
    "labels",
];
const REQUIRED: u16 = 0xff;

/// Fills `sample` from `line` if the line has the plain form; `false` if it has not (the
/// sample then holds a mix of old and new values and must be filled again).
pub(crate) fn read_plain_sample(line: &[u8], sample: &mut Sample) -> bool {
    read(&mut Cursor { bytes: line, at: 0 }, sample).is_some()
}

fn read(cursor: &mut Cursor<'_>, sample: &mut Sample) -> Option<()> {
    sample.gpus = 0;
    sample.out_external_bytes = 0;
    sample.out_internal_bytes = 0;
    sample.in_bytes = 0;
    sample.size_bytes = 0;
    sample.labels.clear();
    cursor.expect(b'{')?;
    let mut seen = 0u16;
    let mut expected = 0;
    loop {
        let key = cursor.string()?;
        cursor.expect(b':')?;
        // Collectors write the fields in this order: try the next one first.
        let field = match FIELDS.get(expected) {
            Some(name) if *name == key => expected,
            _ => FIELDS.iter().position(|name| *name == key)?,
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
                cursor.expect(b'{')?;
                if !cursor.eat(b'}') {
                    loop {
                        let name = cursor.string()?;
                        cursor.expect(b':')?;
                        let value = cursor.string()?;
                        sample.labels.insert(name.to_owned(), value.to_owned());
                        if cursor.eat(b'}') {
                            break;
                        }
                        cursor.expect(b',')?;
                    }
                }
            }
        }
        if cursor.eat(b'}') {
            break;
        }
        cursor.expect(b',')?;
    }
    cursor.whitespace();
    (cursor.at == cursor.bytes.len() && seen & REQUIRED == REQUIRED).then_some(())
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
    let year = i32::try_from(number(0..4)?).ok()?;
    let at = NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)?
        .and_hms_opt(number(11..13)?, number(14..16)?, 0)?
        .and_utc();
    Some(Minute::from_unix_minutes(at.timestamp().div_euclid(60)))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.whitespace();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// A string without escapes or control characters, in valid UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let rest = &self.bytes[self.at..];
        let length = rest
            .iter()
            .position(|byte| matches!(byte, b'"' | b'\\') || *byte < 0x20)?;
        if rest[length] != b'"' {
            return None;
        }
        self.at += length + 1;
        std::str::from_utf8(&rest[..length]).ok()
    }

    /// An unsigned integer as JSON writes one: no sign, fraction, exponent or leading zero.
    fn number(&mut self) -> Option<u64> {
        self.whitespace();
        let rest = &self.bytes[self.at..];
        let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
        if digits == 0
            || (digits > 1 && rest[0] == b'0')
            || matches!(rest.get(digits), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        let value = rest[..digits].iter().try_fold(0u64, |value, byte| {
            value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
        })?;
        self.at += digits;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_json;
    use crate::wire::tests::arbitrary_sample;
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
