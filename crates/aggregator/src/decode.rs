//! Decoding a Kafka message into samples, by its `content-type` header.

use tally_model::RejectReason;
use tally_model::validate::Rejection;
use tally_model::wire::{DecodedItems, Encoding};

/// The samples of one message, or why the whole message is unusable.
///
/// A message without a `content-type` header is read as JSON when it starts with `{`
/// (hand-written exporters often send no headers); anything else needs the header.
/// The samples go to `decoded`, refilled in place (see [`Encoding::decode_into`]); the
/// encoding read is returned.
pub fn decode_message(
    content_type: Option<&str>,
    payload: &[u8],
    decoded: &mut DecodedItems,
) -> Result<Encoding, Rejection> {
    let encoding = match content_type {
        Some(content_type) => Encoding::from_content_type(content_type).ok_or_else(|| {
            Rejection::new(
                RejectReason::UnknownEncoding,
                format!(
                    "content-type '{content_type}' is neither '{}' nor '{}'",
                    Encoding::Json.content_type(),
                    Encoding::Arrow.content_type()
                ),
            )
        })?,
        None if payload.trim_ascii_start().starts_with(b"{") => Encoding::Json,
        None => {
            return Err(Rejection::new(
                RejectReason::UnknownEncoding,
                "the message has no content-type header and is not JSON",
            ));
        }
    };
    encoding.decode_into(payload, decoded)?;
    Ok(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_content_types_are_named() {
        let mut decoded = DecodedItems::default();
        let rejection = decode_message(Some("text/csv"), b"a,b", &mut decoded).expect_err("csv");
        assert_eq!(rejection.reason, RejectReason::UnknownEncoding);
        assert!(rejection.detail.contains("text/csv"));
        assert!(decode_message(None, b"\x00\x01", &mut decoded).is_err());
        assert_eq!(
            decode_message(None, b"  \n", &mut decoded).map(|_| ()),
            Err(Rejection::new(
                RejectReason::UnknownEncoding,
                "the message has no content-type header and is not JSON"
            ))
        );
    }
}
