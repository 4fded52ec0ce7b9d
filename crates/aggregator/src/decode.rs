//! Decoding a Kafka message into samples, by its `content-type` header.

use tally_model::validate::Rejection;
use tally_model::wire::{Decoded, Encoding};
use tally_model::{RejectReason, Sample};

/// The samples of one message, or why the whole message is unusable.
///
/// A message without a `content-type` header is read as JSON when it starts with `{`
/// (hand-written exporters often send no headers); anything else needs the header.
/// The samples go to `decoded`, filled into `spare` ones where there are any (see
/// [`Encoding::decode_reusing`]); the encoding read is returned.
pub fn decode_message(
    content_type: Option<&str>,
    payload: &[u8],
    spare: &mut Vec<Sample>,
    decoded: &mut Vec<Decoded>,
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
    encoding.decode_reusing(payload, spare, decoded)?;
    Ok(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_content_types_are_named() {
        let rejection = decode_message(Some("text/csv"), b"a,b", &mut Vec::new(), &mut Vec::new())
            .expect_err("csv");
        assert_eq!(rejection.reason, RejectReason::UnknownEncoding);
        assert!(rejection.detail.contains("text/csv"));
        assert!(decode_message(None, b"\x00\x01", &mut Vec::new(), &mut Vec::new()).is_err());
        let mut decoded = Vec::new();
        assert_eq!(
            decode_message(None, b"  \n", &mut Vec::new(), &mut decoded).map(|_| ()),
            Err(Rejection::new(
                RejectReason::UnknownEncoding,
                "the message has no content-type header and is not JSON"
            ))
        );
    }
}
