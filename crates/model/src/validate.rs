//! What makes a sample usable, and the reason codes for the ones that are not.
//!
//! Every rejected sample is dead-lettered with one of these reasons; nothing is dropped
//! silently. The limits are generous physical bounds, not business rules: a VM cannot send
//! more than its NIC carries in a minute, and a counter beyond that is a bug upstream.

use std::fmt;

use crate::minute::Minute;
use crate::sample::Sample;

/// Why a sample (or a message carrying samples) could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The message did not decode as its declared encoding.
    Malformed,
    /// The message declared no encoding Tally knows.
    UnknownEncoding,
    /// A field is empty, too long, or out of its physical range.
    InvalidField,
    /// The minute lies further in the future than the allowed clock skew.
    FromFuture,
    /// The minute is older than the retention window.
    TooOld,
    /// Another sample with the same `(resource_id, minute)` but different values came first.
    Conflict,
    /// With a keyring: the message carries no host signature.
    Unsigned,
    /// With a keyring: the signature does not match the message, or names no known host.
    BadSignature,
    /// With a keyring: the signing host may not report this sample (another host's name
    /// in it, or a resource outside the host's inventory).
    NotPermitted,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Malformed,
        RejectReason::UnknownEncoding,
        RejectReason::InvalidField,
        RejectReason::FromFuture,
        RejectReason::TooOld,
        RejectReason::Conflict,
        RejectReason::Unsigned,
        RejectReason::BadSignature,
        RejectReason::NotPermitted,
    ];

    /// The code carried in the dead-letter header `tally-reason`.
    pub const fn code(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownEncoding => "unknown_encoding",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::FromFuture => "from_future",
            RejectReason::TooOld => "too_old",
            RejectReason::Conflict => "conflict",
            RejectReason::Unsigned => "unsigned",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::NotPermitted => "not_permitted",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected sample: the reason code and what exactly was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Physical bounds a sample must respect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationLimits {
    /// How far ahead of the aggregator's clock a minute may be (collector clock skew).
    pub max_future_minutes: i64,
    /// How far behind the aggregator's clock a minute may be (the retention window).
    pub retention_minutes: i64,
    /// Upper bound for each traffic counter in one minute.
    pub max_bytes_per_minute: u64,
    /// Upper bound for the occupied size of a stored thing.
    pub max_size_bytes: u64,
    pub max_gpus: u16,
    /// Upper bound for the length of every id and label.
    pub max_text_bytes: usize,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_future_minutes: default_max_future_minutes(),
            retention_minutes: default_retention_minutes(),
            max_bytes_per_minute: default_max_bytes_per_minute(),
            max_size_bytes: 1 << 50,
            max_gpus: 64,
            max_text_bytes: 256,
        }
    }
}

/// Five minutes: NTP-synchronised hosts are far closer; more means a broken clock.
const fn default_max_future_minutes() -> i64 {
    5
}

/// 62 days: H8 lets an invoice be issued 28 days after a month of up to 31 days ends, and
/// usage for that month must still land on it.
const fn default_retention_minutes() -> i64 {
    62 * 24 * 60
}

/// 1.6 TB: a 200 Gbit/s interface saturated for the whole minute (1.5 TB) plus headroom.
const fn default_max_bytes_per_minute() -> u64 {
    1_600_000_000_000
}

/// Checks one decoded sample against the limits, `now` being the validator's clock.
pub fn validate(sample: &Sample, limits: &ValidationLimits, now: Minute) -> Result<(), Rejection> {
    let texts = [
        ("host", sample.host.as_str()),
        ("account_id", sample.account_id.as_str()),
        ("resource_id", sample.resource_id.as_str()),
        ("sku", sample.sku.as_str()),
        ("zone", sample.zone.as_str()),
    ];
    for (field, value) in texts {
        check_text(format_args!("{field}"), value, limits, false)?;
    }
    for (key, value) in &sample.labels {
        check_text(format_args!("labels (key)"), key, limits, false)?;
        check_text(format_args!("labels.{key}"), value, limits, true)?;
    }
    let counters = [
        ("out_external_bytes", sample.out_external_bytes),
        ("out_internal_bytes", sample.out_internal_bytes),
        ("in_bytes", sample.in_bytes),
    ];
    for (field, value) in counters {
        if value > limits.max_bytes_per_minute {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!(
                    "{field} = {value} exceeds {} bytes in one minute",
                    limits.max_bytes_per_minute
                ),
            ));
        }
    }
    if sample.size_bytes > limits.max_size_bytes {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!(
                "size_bytes = {} exceeds {}",
                sample.size_bytes, limits.max_size_bytes
            ),
        ));
    }
    if sample.gpus > limits.max_gpus {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("gpus = {} exceeds {}", sample.gpus, limits.max_gpus),
        ));
    }
    let ahead = sample.minute.unix_minutes() - now.unix_minutes();
    if ahead > limits.max_future_minutes {
        return Err(Rejection::new(
            RejectReason::FromFuture,
            format!(
                "minute {} is {ahead} minutes ahead of {now} (allowed skew {} minutes)",
                sample.minute, limits.max_future_minutes
            ),
        ));
    }
    if -ahead > limits.retention_minutes {
        return Err(Rejection::new(
            RejectReason::TooOld,
            format!(
                "minute {} is older than the retention window of {} minutes before {now}",
                sample.minute, limits.retention_minutes
            ),
        ));
    }
    Ok(())
}

/// `field` is only formatted for an error: this runs for every text of every sample.
fn check_text(
    field: fmt::Arguments<'_>,
    value: &str,
    limits: &ValidationLimits,
    empty_allowed: bool,
) -> Result<(), Rejection> {
    if value.is_empty() && !empty_allowed {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{field} is empty"),
        ));
    }
    if value.len() > limits.max_text_bytes {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!(
                "{field} is {} bytes long (at most {})",
                value.len(),
                limits.max_text_bytes
            ),
        ));
    }
    // Most ids are printable ASCII, which one byte scan shows; other text is checked by
    // character (C1 control characters are two bytes in UTF-8).
    let control = !printable_ascii(value.as_bytes()) && value.chars().any(char::is_control);
    if control {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

/// Whether every byte is printable ASCII (0x20 to 0x7e), eight bytes at a time: this
/// runs for every text of every sample, and most are short ids.
fn printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut outside = 0;
    for word in &mut words {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let word = u64::from_ne_bytes(eight);
        // A high bit where some byte is below 0x20, and where some byte is above 0x7e
        // (adding 1 carries 0x7f into the high bit); the bit tricks of "Bit Twiddling
        // Hacks", exact for whether any byte is.
        let below = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let above = (word.wrapping_add(ONES) | word) & HIGHS;
        outside |= below | above;
    }
    outside == 0
        && words
            .remainder()
            .iter()
            .all(|byte| (0x20..0x7f).contains(byte))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{ResourceKind, ResourceState};

    #[test]
    fn printable_ascii_is_told_exactly_at_every_position() {
        for length in 0..20 {
            for position in 0..length {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; length];
                    text[position] = byte;
                    assert_eq!(
                        printable_ascii(&text),
                        (0x20..0x7f).contains(&byte),
                        "byte {byte:#x} at {position} of {length}"
                    );
                }
            }
        }
        // Neighbours that borrow from each other do not hide one another.
        assert!(!printable_ascii(b"\x1f\x20\x20\x20\x20\x20\x20\x20"));
        assert!(!printable_ascii(b"\x20\x7f\x00\x7e\x20\x20\x20\x20"));
        assert!(printable_ascii(b"\x20\x7e\x20\x7e\x20\x7e\x20\x7e"));
    }

    fn sample() -> Sample {
        Sample {
            minute: "2026-10-01T10:00:00Z".parse().expect("minute"),
            host: "hv-1".into(),
            account_id: "acme".into(),
            resource_id: "vm-1".into(),
            kind: ResourceKind::Server,
            sku: "cx22".into(),
            zone: "fsn1".into(),
            state: ResourceState::Running,
            gpus: 0,
            out_external_bytes: 10,
            out_internal_bytes: 0,
            in_bytes: 0,
            size_bytes: 0,
            labels: Default::default(),
        }
    }

    fn now() -> Minute {
        "2026-10-01T10:01:00Z".parse().expect("minute")
    }

    #[test]
    fn a_plain_sample_is_valid() {
        assert_eq!(
            validate(&sample(), &ValidationLimits::default(), now()),
            Ok(())
        );
    }

    #[test]
    fn each_bound_names_its_field() {
        let limits = ValidationLimits::default();
        let mut empty_account = sample();
        empty_account.account_id.clear();
        let rejection = validate(&empty_account, &limits, now()).expect_err("empty");
        assert_eq!(rejection.reason, RejectReason::InvalidField);
        assert!(rejection.detail.contains("account_id"), "{rejection}");

        let mut flood = sample();
        flood.in_bytes = u64::MAX;
        let rejection = validate(&flood, &limits, now()).expect_err("too many bytes");
        assert!(rejection.detail.contains("in_bytes"), "{rejection}");

        let mut future = sample();
        future.minute = now().plus(6);
        assert_eq!(
            validate(&future, &limits, now()).map_err(|r| r.reason),
            Err(RejectReason::FromFuture)
        );

        let mut old = sample();
        old.minute = now().plus(-limits.retention_minutes - 1);
        assert_eq!(
            validate(&old, &limits, now()).map_err(|r| r.reason),
            Err(RejectReason::TooOld)
        );
    }

    #[test]
    fn reason_codes_round_trip() {
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::parse(reason.code()), Some(reason));
        }
    }
}
