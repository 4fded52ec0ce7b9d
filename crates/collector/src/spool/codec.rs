//! The payload of a sample record: one [`Sample`] in a compact binary form of the spool's own.
//!
//! The fields in the order `Sample` declares them. Integers are LEB128 varints (the minute,
//! which is signed, zigzagged first); strings are a varint byte length and their UTF-8;
//! the kind and the state are one byte each, their position in [`ResourceKind::ALL`] and
//! [`ResourceState::ALL`]; labels are a varint count and then key and value of each, in key
//! order. A server sample of the simulator takes about 60 bytes, against about 330 as JSON.
//!
//! Decoding checks everything a payload can get wrong (its end, varint length, UTF-8,
//! indexes, ranges, bytes left over) and says which field was wrong: a payload whose
//! checksum passed but which is no sample is reported and skipped, never a panic.

use std::collections::BTreeMap;

use tally_model::{Minute, ResourceKind, ResourceState, Sample};

/// Why a payload is not a sample.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the payload ends inside {field}")]
    Truncated { field: &'static str },
    #[error("{field} is a varint longer than 64 bits")]
    VarintTooLong { field: &'static str },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("kind index {0} names no resource kind")]
    UnknownKind(u8),
    #[error("state index {0} names no resource state")]
    UnknownState(u8),
    #[error("gpus {0} does not fit 16 bits")]
    GpusOutOfRange(u64),
    #[error("{0} bytes follow the sample")]
    TrailingBytes(usize),
}

/// Appends the payload of `sample` to `out`.
pub(crate) fn encode_sample(sample: &Sample, out: &mut Vec<u8>) {
    put_varint(out, zigzag(sample.minute.unix_minutes()));
    put_str(out, &sample.host);
    put_str(out, &sample.account_id);
    put_str(out, &sample.resource_id);
    out.push(kind_index(sample.kind));
    put_str(out, &sample.sku);
    put_str(out, &sample.zone);
    out.push(sample.state.index() as u8);
    put_varint(out, u64::from(sample.gpus));
    put_varint(out, sample.out_external_bytes);
    put_varint(out, sample.out_internal_bytes);
    put_varint(out, sample.in_bytes);
    put_varint(out, sample.size_bytes);
    put_varint(out, sample.labels.len() as u64);
    for (key, value) in &sample.labels {
        put_str(out, key);
        put_str(out, value);
    }
}

/// The sample a payload holds.
pub(crate) fn decode_sample(payload: &[u8]) -> Result<Sample, DecodeError> {
    let mut input = Input { bytes: payload };
    let minute = Minute::from_unix_minutes(unzigzag(input.varint("minute")?));
    let host = input.string("host")?;
    let account_id = input.string("account_id")?;
    let resource_id = input.string("resource_id")?;
    let kind_byte = input.byte("kind")?;
    let kind = *ResourceKind::ALL
        .get(usize::from(kind_byte))
        .ok_or(DecodeError::UnknownKind(kind_byte))?;
    let sku = input.string("sku")?;
    let zone = input.string("zone")?;
    let state_byte = input.byte("state")?;
    let state = *ResourceState::ALL
        .get(usize::from(state_byte))
        .ok_or(DecodeError::UnknownState(state_byte))?;
    let gpus_wide = input.varint("gpus")?;
    let gpus = u16::try_from(gpus_wide).map_err(|_| DecodeError::GpusOutOfRange(gpus_wide))?;
    let out_external_bytes = input.varint("out_external_bytes")?;
    let out_internal_bytes = input.varint("out_internal_bytes")?;
    let in_bytes = input.varint("in_bytes")?;
    let size_bytes = input.varint("size_bytes")?;
    let label_count = input.varint("labels")?;
    let mut labels = BTreeMap::new();
    // No allocation from the count: a damaged count runs into the payload's end instead.
    for _ in 0..label_count {
        let key = input.string("label key")?;
        let value = input.string("label value")?;
        labels.insert(key, value);
    }
    if !input.bytes.is_empty() {
        return Err(DecodeError::TrailingBytes(input.bytes.len()));
    }
    Ok(Sample {
        minute,
        host,
        account_id,
        resource_id,
        kind,
        sku,
        zone,
        state,
        gpus,
        out_external_bytes,
        out_internal_bytes,
        in_bytes,
        size_bytes,
        labels,
    })
}

fn kind_index(kind: ResourceKind) -> u8 {
    let position = ResourceKind::ALL.iter().position(|listed| *listed == kind);
    debug_assert!(position.is_some(), "ResourceKind::ALL lists every kind");
    position.unwrap_or_default() as u8
}

const fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

const fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// The unread rest of a payload.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or(DecodeError::Truncated { field })?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(field)?;
            // The tenth byte holds bit 63 only.
            if shift == 63 && byte > 1 {
                return Err(DecodeError::VarintTooLong { field });
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong { field })
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let length = self.varint(field)?;
        let length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= self.bytes.len())
            .ok_or(DecodeError::Truncated { field })?;
        let (text, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        let text = std::str::from_utf8(text).map_err(|_| DecodeError::NotUtf8 { field })?;
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_sample() -> impl Strategy<Value = Sample> {
        (
            (
                any::<i64>(),
                ".*",
                ".*",
                ".*",
                0..ResourceKind::ALL.len(),
                ".*",
                ".*",
            ),
            (0..ResourceState::COUNT, any::<u16>(), any::<[u64; 4]>()),
            proptest::collection::btree_map(".*", ".*", 0..4),
        )
            .prop_map(
                |(
                    (minute, host, account_id, resource_id, kind, sku, zone),
                    (state, gpus, meters),
                    labels,
                )| Sample {
                    minute: Minute::from_unix_minutes(minute),
                    host,
                    account_id,
                    resource_id,
                    kind: ResourceKind::ALL[kind],
                    sku,
                    zone,
                    state: ResourceState::ALL[state],
                    gpus,
                    out_external_bytes: meters[0],
                    out_internal_bytes: meters[1],
                    in_bytes: meters[2],
                    size_bytes: meters[3],
                    labels,
                },
            )
    }

    proptest! {
        #[test]
        fn every_sample_survives_the_round_trip(sample in arbitrary_sample()) {
            let mut payload = Vec::new();
            encode_sample(&sample, &mut payload);
            prop_assert_eq!(decode_sample(&payload), Ok(sample));
        }

        #[test]
        fn any_bytes_decode_to_a_sample_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Must not panic; when it is a sample, encoding it gives the same bytes back
            // (the form is canonical apart from label order and duplicates).
            if let Ok(sample) = decode_sample(&bytes) {
                let mut again = Vec::new();
                encode_sample(&sample, &mut again);
                prop_assert_eq!(decode_sample(&again), Ok(sample));
            }
        }

        #[test]
        fn every_cut_short_payload_is_refused(sample in arbitrary_sample(), cut in any::<prop::sample::Index>()) {
            let mut payload = Vec::new();
            encode_sample(&sample, &mut payload);
            let length = cut.index(payload.len());
            prop_assert!(decode_sample(&payload[..length]).is_err());
        }
    }

    #[test]
    fn each_damage_names_its_field() {
        let sample = Sample {
            minute: Minute::from_unix_minutes(29_000_000),
            host: "hv-1".into(),
            account_id: "acct".into(),
            resource_id: "vm-1".into(),
            kind: ResourceKind::GpuServer,
            sku: "gx11".into(),
            zone: "fsn1".into(),
            state: ResourceState::Frozen,
            gpus: 2,
            out_external_bytes: 1,
            out_internal_bytes: 2,
            in_bytes: 3,
            size_bytes: 4,
            labels: [("os".to_owned(), "linux".to_owned())].into(),
        };
        let mut payload = Vec::new();
        encode_sample(&sample, &mut payload);
        // minute (4 bytes) + "hv-1" + "acct" + "vm-1" (5 bytes each) = 19: the kind.
        let kind_at = 19;
        assert_eq!(payload[kind_at], 1);
        let mut bad_kind = payload.clone();
        bad_kind[kind_at] = 6;
        assert_eq!(decode_sample(&bad_kind), Err(DecodeError::UnknownKind(6)));
        let mut bad_host = payload.clone();
        bad_host[5] = 0xff;
        assert_eq!(
            decode_sample(&bad_host),
            Err(DecodeError::NotUtf8 { field: "host" })
        );
        let mut trailing = payload.clone();
        trailing.push(0);
        assert_eq!(decode_sample(&trailing), Err(DecodeError::TrailingBytes(1)));
        let too_long = [0xffu8; 11];
        assert_eq!(
            decode_sample(&too_long),
            Err(DecodeError::VarintTooLong { field: "minute" })
        );
    }
}
