//! The two encodings of samples on Kafka, told apart by the `content-type` header.
//!
//! - **JSON** (`application/vnd.tally.sample.v1+json`): one sample per line (NDJSON); a
//!   message may hold one line or many. For interoperability: any exporter can write it.
//! - **Arrow** (`application/vnd.tally.sample.v1+arrow`): an Arrow IPC stream of record
//!   batches with the columns of [`sample_arrow_schema`]. The compact default of Tally's
//!   own collector.
//!
//! Decoding keeps good data: a bad line or row is returned as its own error, with its
//! position, next to the samples that decoded.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, TimestampSecondArray, UInt16Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::flat_json::read_plain_sample;
use crate::minute::Minute;
use crate::sample::{ResourceKind, ResourceState, Sample, labels_from_text, labels_to_text};
use crate::validate::{RejectReason, Rejection};

/// The Kafka header that names a message's encoding.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// How a message's samples are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    Arrow,
}

impl Encoding {
    pub const fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/vnd.tally.sample.v1+json",
            Encoding::Arrow => "application/vnd.tally.sample.v1+arrow",
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        [Encoding::Json, Encoding::Arrow]
            .into_iter()
            .find(|encoding| encoding.content_type() == content_type)
    }

    pub fn encode(self, samples: &[Sample]) -> Result<Vec<u8>, ArrowError> {
        match self {
            Encoding::Json => Ok(encode_json(samples)),
            Encoding::Arrow => encode_arrow(samples),
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Result<Vec<Decoded>, Rejection> {
        let mut decoded = DecodedItems::default();
        self.decode_into(bytes, &mut decoded)?;
        Ok(decoded.into_vec())
    }

    /// [`Self::decode`] into `decoded` (cleared first), whose samples are refilled in
    /// place: a consumer decoding message after message reuses their buffers instead of
    /// allocating per sample and per message.
    pub fn decode_into(self, bytes: &[u8], decoded: &mut DecodedItems) -> Result<(), Rejection> {
        decoded.clear();
        match self {
            Encoding::Json => {
                decode_json_into(bytes, decoded);
                Ok(())
            }
            Encoding::Arrow => decode_arrow_into(bytes, decoded),
        }
    }
}

/// The items of one message (samples, or why a line or row could not be read), decoded
/// into samples that are kept from message to message: each is refilled in place, so
/// its texts keep their buffers and no sample is moved. (Samples are a few hundred bytes;
/// moving each out of a pool, into the message's items and back cost more than filling
/// it.) It keeps as many samples as the largest message had: a few thousand for the
/// collector's messages, a few hundred for a backfill's blocks.
#[derive(Debug, Default)]
pub struct DecodedItems {
    /// Every sample filled so far; the first `filled` are this message's.
    samples: Vec<Sample>,
    filled: usize,
    /// In message order: the index of the item's sample, or its error.
    items: Vec<Result<usize, ItemError>>,
}

impl DecodedItems {
    pub fn clear(&mut self) {
        self.items.clear();
        self.filled = 0;
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items in message order.
    pub fn iter(&self) -> impl Iterator<Item = Result<&Sample, &ItemError>> {
        self.items
            .iter()
            .map(|item| item.as_ref().map(|&index| &self.samples[index]))
    }

    pub fn into_vec(mut self) -> Vec<Decoded> {
        self.items
            .into_iter()
            .map(|item| {
                item.map(|index| std::mem::replace(&mut self.samples[index], blank_sample()))
            })
            .collect()
    }

    /// Decodes one NDJSON line, numbered `number` in errors: by the short cut for the
    /// plain form collectors write (see `flat_json`), else by `serde_json`, which also
    /// names what is wrong.
    pub fn push_json_line(&mut self, line: &[u8], number: usize) {
        if read_plain_sample(line, self.next_sample()) {
            self.items.push(Ok(self.filled - 1));
            return;
        }
        match serde_json::from_slice::<Sample>(line) {
            Ok(sample) => {
                self.samples[self.filled - 1] = sample;
                self.items.push(Ok(self.filled - 1));
            }
            Err(error) => {
                // The sample is left to be refilled by the next item.
                self.filled -= 1;
                self.items.push(Err(ItemError {
                    unit: "line",
                    position: number,
                    rejection: Rejection::new(RejectReason::Malformed, error.to_string()),
                    raw: line.to_vec(),
                }));
            }
        }
    }

    /// The next sample to fill, holding whatever it held before (the caller overwrites
    /// every field). It counts as filled; the caller pushes its item.
    fn next_sample(&mut self) -> &mut Sample {
        if self.filled == self.samples.len() {
            self.samples.push(blank_sample());
        }
        self.filled += 1;
        &mut self.samples[self.filled - 1]
    }
}

/// One sample of a message, or why it could not be read.
pub type Decoded = Result<Sample, ItemError>;

/// A line (JSON) or row (Arrow) of a message that did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{unit} {position}: {rejection}")]
pub struct ItemError {
    pub unit: &'static str,
    /// 1-based line number or 0-based row index, as editors and Arrow count them.
    pub position: usize,
    pub rejection: Rejection,
    /// The line's own bytes for JSON; empty for Arrow rows (the message is kept whole).
    pub raw: Vec<u8>,
}

/// Samples as NDJSON: one line per sample, each ending in `\n`.
pub fn encode_json(samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 256);
    for sample in samples {
        // Serialising a Sample cannot fail: every field is a string, number or string map.
        if serde_json::to_writer(&mut out, sample).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// Reads NDJSON samples; blank lines are skipped, each bad line becomes an [`ItemError`].
pub fn decode_json(bytes: &[u8]) -> Vec<Decoded> {
    let mut decoded = DecodedItems::default();
    decode_json_into(bytes, &mut decoded);
    decoded.into_vec()
}

/// [`decode_json`] into `decoded`, line by line ([`DecodedItems::push_json_line`]).
pub fn decode_json_into(bytes: &[u8], decoded: &mut DecodedItems) {
    for (index, line) in json_lines(bytes) {
        decoded.push_json_line(line, index + 1);
    }
}

/// The non-blank lines of NDJSON `bytes` with their 0-based line index: the items
/// [`decode_json_into`] decodes, in its order (item `k` is the `k`-th of these).
pub fn json_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    lines(bytes)
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

/// The lines of `bytes` without their `\n`, like `split` on it, found by `memchr`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', bytes)
        .chain(std::iter::once(bytes.len()))
        .map(move |end| {
            let line = &bytes[start..end];
            start = end + 1;
            line
        })
}

/// A sample to be filled: every field is overwritten before it is used.
fn blank_sample() -> Sample {
    Sample {
        minute: Minute::from_unix_minutes(0),
        host: String::new(),
        account_id: String::new(),
        resource_id: String::new(),
        kind: ResourceKind::Server,
        sku: String::new(),
        zone: String::new(),
        state: ResourceState::Running,
        gpus: 0,
        out_external_bytes: 0,
        out_internal_bytes: 0,
        in_bytes: 0,
        size_bytes: 0,
        labels: BTreeMap::new(),
    }
}

static SAMPLE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let bytes = |name: &str| Field::new(name, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        Field::new(
            "minute",
            DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
            false,
        ),
        text("host"),
        text("account_id"),
        text("resource_id"),
        text("kind"),
        text("sku"),
        text("zone"),
        text("state"),
        Field::new("gpus", DataType::UInt16, false),
        bytes("out_external_bytes"),
        bytes("out_internal_bytes"),
        bytes("in_bytes"),
        bytes("size_bytes"),
        text("labels"),
    ]))
});

/// The Arrow schema of a binary sample batch (sample v1). `labels` holds the canonical
/// label text of [`crate::sample::labels_to_text`].
pub fn sample_arrow_schema() -> SchemaRef {
    SAMPLE_SCHEMA.clone()
}

/// Samples as one Arrow IPC stream holding one record batch.
pub fn encode_arrow(samples: &[Sample]) -> Result<Vec<u8>, ArrowError> {
    let batch = samples_to_batch(samples)?;
    let mut writer =
        StreamWriter::try_new(Vec::with_capacity(samples.len() * 96), &batch.schema())?;
    writer.write(&batch)?;
    writer.finish()?;
    writer.into_inner()
}

/// Samples as a record batch of [`sample_arrow_schema`].
pub fn samples_to_batch(samples: &[Sample]) -> Result<RecordBatch, ArrowError> {
    let strings = |field: fn(&Sample) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(samples.iter().map(field)))
    };
    let counters = |field: fn(&Sample) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(samples.iter().map(field)))
    };
    let minutes = TimestampSecondArray::from_iter_values(
        samples
            .iter()
            .map(|sample| sample.minute.unix_minutes() * 60),
    )
    .with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(minutes),
        strings(|s| &s.host),
        strings(|s| &s.account_id),
        strings(|s| &s.resource_id),
        strings(|s| s.kind.as_str()),
        strings(|s| &s.sku),
        strings(|s| &s.zone),
        strings(|s| s.state.as_str()),
        Arc::new(UInt16Array::from_iter_values(
            samples.iter().map(|s| s.gpus),
        )),
        counters(|s| s.out_external_bytes),
        counters(|s| s.out_internal_bytes),
        counters(|s| s.in_bytes),
        counters(|s| s.size_bytes),
        Arc::new(StringArray::from_iter_values(
            samples.iter().map(|sample| labels_to_text(&sample.labels)),
        )),
    ];
    RecordBatch::try_new(sample_arrow_schema(), columns)
}

/// Reads an Arrow IPC stream of sample batches. A stream that does not parse, or whose
/// schema is not sample v1, is rejected whole; a row with an unknown kind or state or an
/// unaligned minute is rejected alone.
pub fn decode_arrow(bytes: &[u8]) -> Result<Vec<Decoded>, Rejection> {
    let mut decoded = DecodedItems::default();
    decode_arrow_into(bytes, &mut decoded)?;
    Ok(decoded.into_vec())
}

fn decode_arrow_into(bytes: &[u8], decoded: &mut DecodedItems) -> Result<(), Rejection> {
    // arrow-ipc trusts parts of a message it should check: a schema message without its
    // fields makes it unwrap a None (found by fuzzing, arrow-ipc 59). One bad message must
    // be dead-lettered, not crash the aggregator that would read it again after every
    // restart. Decoding touches nothing but `decoded`, which a panic leaves cleared.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_arrow_stream(bytes, decoded)
    }));
    outcome.unwrap_or_else(|panic| {
        decoded.clear();
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Rejection::new(
            RejectReason::Malformed,
            format!("the Arrow IPC reader failed on this message: {message}"),
        ))
    })
}

/// Checks an IPC stream's framing before arrow-ipc reads it: each message's metadata and
/// body must lie within `bytes`. arrow-ipc allocates a message's metadata and body at
/// the lengths the stream declares before reading them, so a few bytes declaring a
/// 16 GB body would take 16 GB (found by fuzzing, arrow-ipc 59). Where the framing ends
/// early, arrow-ipc's own reading reports it.
fn check_ipc_framing(bytes: &[u8]) -> Result<(), String> {
    const CONTINUATION: i32 = -1;
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|word| i32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    };
    let mut at = 0;
    loop {
        let Some(mut length) = word(at) else {
            return Ok(());
        };
        at += 4;
        if length == CONTINUATION {
            let Some(after_marker) = word(at) else {
                return Ok(());
            };
            length = after_marker;
            at += 4;
        }
        if length == 0 {
            return Ok(()); // the end-of-stream marker
        }
        let metadata = usize::try_from(length)
            .ok()
            .and_then(|length| bytes.get(at..at.checked_add(length)?))
            .ok_or_else(|| {
                format!(
                    "a message at byte {at} declares {length} bytes of metadata; {} remain",
                    bytes.len() - at
                )
            })?;
        let message = arrow::ipc::root_as_message(metadata)
            .map_err(|error| format!("the message metadata at byte {at}: {error}"))?;
        at += metadata.len();
        let body = message.bodyLength();
        match usize::try_from(body) {
            Ok(body) if body <= bytes.len() - at => at += body,
            _ => {
                return Err(format!(
                    "a message at byte {at} declares a body of {body} bytes; {} remain",
                    bytes.len() - at
                ));
            }
        }
    }
}

fn read_arrow_stream(bytes: &[u8], decoded: &mut DecodedItems) -> Result<(), Rejection> {
    let malformed = |error: ArrowError| Rejection::new(RejectReason::Malformed, error.to_string());
    check_ipc_framing(bytes).map_err(|detail| Rejection::new(RejectReason::Malformed, detail))?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(malformed)?;
    for batch in reader {
        let batch = batch.map_err(malformed)?;
        check_schema(&batch)?;
        decode_batch(&batch, decoded.len(), decoded)?;
    }
    Ok(())
}

fn check_schema(batch: &RecordBatch) -> Result<(), Rejection> {
    let expected = sample_arrow_schema();
    for field in expected.fields() {
        let Ok(found) = batch.schema().field_with_name(field.name()).cloned() else {
            return Err(Rejection::new(
                RejectReason::Malformed,
                format!("arrow batch has no column '{}'", field.name()),
            ));
        };
        if found.data_type() != field.data_type() {
            return Err(Rejection::new(
                RejectReason::Malformed,
                format!(
                    "arrow column '{}' is {}, sample v1 wants {}",
                    field.name(),
                    found.data_type(),
                    field.data_type()
                ),
            ));
        }
    }
    Ok(())
}

fn decode_batch(
    batch: &RecordBatch,
    first_row: usize,
    decoded: &mut DecodedItems,
) -> Result<(), Rejection> {
    let column = |name: &str| -> Result<&ArrayRef, Rejection> {
        batch.column_by_name(name).ok_or_else(|| {
            Rejection::new(
                RejectReason::Malformed,
                format!("arrow batch has no column '{name}'"),
            )
        })
    };
    fn typed<'a, T: 'static>(array: &'a ArrayRef, name: &str) -> Result<&'a T, Rejection> {
        array.as_any().downcast_ref::<T>().ok_or_else(|| {
            Rejection::new(
                RejectReason::Malformed,
                format!("arrow column '{name}' has an unexpected type"),
            )
        })
    }
    let text = |name: &str| -> Result<&StringArray, Rejection> { typed(column(name)?, name) };
    let counter = |name: &str| -> Result<&UInt64Array, Rejection> { typed(column(name)?, name) };

    let minutes: &TimestampSecondArray = typed(column("minute")?, "minute")?;
    let (host, account, resource, kind, sku, zone, state, labels) = (
        text("host")?,
        text("account_id")?,
        text("resource_id")?,
        text("kind")?,
        text("sku")?,
        text("zone")?,
        text("state")?,
        text("labels")?,
    );
    let gpus: &UInt16Array = typed(column("gpus")?, "gpus")?;
    let (out_external, out_internal, inbound, size) = (
        counter("out_external_bytes")?,
        counter("out_internal_bytes")?,
        counter("in_bytes")?,
        counter("size_bytes")?,
    );
    let nullable: [&dyn Array; 14] = [
        minutes,
        host,
        account,
        resource,
        kind,
        sku,
        zone,
        state,
        gpus,
        out_external,
        out_internal,
        inbound,
        size,
        labels,
    ];
    let mut previous_labels: Option<(&str, BTreeMap<String, String>)> = None;
    for row in 0..batch.num_rows() {
        let row_error = |detail: String| ItemError {
            unit: "row",
            position: first_row + row,
            rejection: Rejection::new(RejectReason::InvalidField, detail),
            raw: Vec::new(),
        };
        if let Some(index) = nullable.iter().position(|array| array.is_null(row)) {
            let name = sample_arrow_schema().field(index).name().clone();
            decoded
                .items
                .push(Err(row_error(format!("{name} is null"))));
            continue;
        }
        let seconds = minutes.value(row);
        if seconds.rem_euclid(60) != 0 {
            decoded.items.push(Err(row_error(format!(
                "minute {seconds} (unix seconds) is not at the start of a minute"
            ))));
            continue;
        }
        // JSON writes minutes in RFC 3339, which has four-digit years: a minute beyond
        // them would read in Arrow but not in JSON (found by fuzzing).
        let minute = Minute::from_unix_minutes(seconds.div_euclid(60));
        if !(Minute::FIRST_WRITABLE..=Minute::LAST_WRITABLE).contains(&minute) {
            decoded.items.push(Err(row_error(format!(
                "minute {seconds} (unix seconds) lies outside the years 0000 to 9999"
            ))));
            continue;
        }
        let Some(kind_value) = ResourceKind::parse(kind.value(row)) else {
            decoded.items.push(Err(row_error(format!(
                "kind '{}' is not a known resource kind",
                kind.value(row)
            ))));
            continue;
        };
        let Some(state_value) = ResourceState::parse(state.value(row)) else {
            decoded.items.push(Err(row_error(format!(
                "state '{}' is not a known state",
                state.value(row)
            ))));
            continue;
        };
        // A host's rows mostly repeat a few label sets: parse each run of them once.
        let labels_text = labels.value(row);
        let labels_value = match &previous_labels {
            Some((text, map)) if *text == labels_text => map.clone(),
            _ => match labels_from_text(labels_text) {
                Ok(map) => {
                    previous_labels = Some((labels_text, map.clone()));
                    map
                }
                Err(error) => {
                    decoded.items.push(Err(row_error(format!(
                        "labels are not a JSON object of strings: {error}"
                    ))));
                    continue;
                }
            },
        };
        let sample = decoded.next_sample();
        // Every field is set: a refilled sample keeps nothing of its last use but buffers.
        sample.minute = minute;
        host.value(row).clone_into(&mut sample.host);
        account.value(row).clone_into(&mut sample.account_id);
        resource.value(row).clone_into(&mut sample.resource_id);
        sample.kind = kind_value;
        sku.value(row).clone_into(&mut sample.sku);
        zone.value(row).clone_into(&mut sample.zone);
        sample.state = state_value;
        sample.gpus = gpus.value(row);
        sample.out_external_bytes = out_external.value(row);
        sample.out_internal_bytes = out_internal.value(row);
        sample.in_bytes = inbound.value(row);
        sample.size_bytes = size.value(row);
        sample.labels = labels_value;
        decoded.items.push(Ok(decoded.filled - 1));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Samples with texts that need escaping in JSON now and then, and minutes before the
    /// epoch too.
    pub(crate) fn arbitrary_sample() -> impl Strategy<Value = Sample> {
        (
            -1_000_000i64..100_000_000,
            "[a-zA-Z0-9 ._ä\"\\\\-]{1,12}",
            "[a-z0-9-]{1,12}",
            0usize..ResourceKind::ALL.len(),
            0usize..ResourceState::COUNT,
            any::<u16>(),
            any::<[u64; 4]>(),
            proptest::collection::btree_map("[a-z]{1,5}", "[a-z0-9 é]{0,5}", 0..3),
        )
            .prop_map(
                |(minute, account, resource, kind, state, gpus, bytes, labels)| Sample {
                    minute: Minute::from_unix_minutes(minute),
                    host: "hv-1".into(),
                    account_id: account,
                    resource_id: resource,
                    kind: ResourceKind::ALL[kind],
                    sku: "sku".into(),
                    zone: "zone".into(),
                    state: ResourceState::ALL[state],
                    gpus,
                    out_external_bytes: bytes[0],
                    out_internal_bytes: bytes[1],
                    in_bytes: bytes[2],
                    size_bytes: bytes[3],
                    labels,
                },
            )
    }

    proptest! {
        #[test]
        fn both_encodings_round_trip(samples in proptest::collection::vec(arbitrary_sample(), 0..20)) {
            for encoding in [Encoding::Json, Encoding::Arrow] {
                let bytes = encoding.encode(&samples).expect("encode");
                let decoded: Vec<Sample> = encoding
                    .decode(&bytes)
                    .expect("decode")
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .expect("every item decodes");
                prop_assert_eq!(&decoded, &samples);
            }
        }
    }

    proptest! {
        /// Messages decoded one after another into the same items (samples refilled in
        /// place, good and bad lines, both encodings) come out as each decoded alone.
        #[test]
        fn refilled_items_are_what_each_message_decodes_to_alone(
            messages in proptest::collection::vec(
                (proptest::collection::vec((arbitrary_sample(), 0..5u8), 0..8), any::<bool>()),
                1..5,
            ),
        ) {
            let mut decoded = DecodedItems::default();
            for (samples, arrow) in messages {
                let bytes = if arrow {
                    let samples: Vec<Sample> = samples.into_iter().map(|(sample, _)| sample).collect();
                    encode_arrow(&samples).expect("encode")
                } else {
                    // Every fifth line or so is broken.
                    let mut bytes = Vec::new();
                    for (sample, fate) in samples {
                        let line = encode_json(std::slice::from_ref(&sample));
                        if fate == 0 {
                            bytes.extend_from_slice(&line[..line.len() / 2]);
                            bytes.push(b'\n');
                        } else {
                            bytes.extend_from_slice(&line);
                        }
                    }
                    bytes
                };
                let encoding = if arrow { Encoding::Arrow } else { Encoding::Json };
                let alone = encoding.decode(&bytes).expect("decode");
                encoding.decode_into(&bytes, &mut decoded).expect("decode");
                let refilled: Vec<Decoded> = decoded
                    .iter()
                    .map(|item| item.cloned().map_err(Clone::clone))
                    .collect();
                prop_assert_eq!(refilled, alone);
            }
        }
    }

    #[test]
    fn a_bad_json_line_is_reported_and_the_good_ones_kept() {
        let good = r#"{"minute":"2026-10-01T00:00:00Z","host":"h","account_id":"a","resource_id":"r","kind":"ip","sku":"ipv4","zone":"z","state":"active"}"#;
        let bad = r#"{"minute":"2026-10-01T00:00:00Z","host":"h"}"#;
        let message = format!("{good}\n{bad}\n\n{good}\n");
        let decoded = decode_json(message.as_bytes());
        assert_eq!(decoded.len(), 3);
        assert!(decoded[0].is_ok() && decoded[2].is_ok());
        let error = decoded[1].as_ref().expect_err("second line is bad");
        assert_eq!(error.position, 2);
        assert!(error.rejection.detail.contains("account_id"), "{error}");
        assert_eq!(error.raw, bad.as_bytes());
    }

    #[test]
    fn unknown_kinds_and_states_are_rejected_by_name() {
        let line = r#"{"minute":"2026-10-01T00:00:00Z","host":"h","account_id":"a","resource_id":"r","kind":"toaster","sku":"s","zone":"z","state":"active"}"#;
        let decoded = decode_json(line.as_bytes());
        let error = decoded[0].as_ref().expect_err("unknown kind");
        assert!(error.rejection.detail.contains("toaster"), "{error}");
    }

    #[test]
    fn garbage_is_not_an_arrow_stream() {
        let rejection = decode_arrow(b"not arrow at all").expect_err("garbage");
        assert_eq!(rejection.reason, RejectReason::Malformed);
    }
}
