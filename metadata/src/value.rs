//! Encoding of state-machine values and Raft log entries: a format version byte, then
//! postcard. Postcard is compact and fast but not self-describing, so the version byte is
//! what lets a later release change a type: it bumps the version and keeps a decoder for
//! the old one. Golden files in `testdata/` pin each version.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The current format version.
pub const FORMAT_V1: u8 = 1;

/// A value that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable value: {0}")]
pub struct DecodeError(pub String);

/// Encodes with the current version.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Serialising our own in-memory types to a Vec cannot fail: postcard fails only on
    // unsupported serde features (which we do not use) or a full buffer (a Vec grows).
    postcard::to_io(value, &mut out).expect("postcard encodes our types");
    out
}

/// Decodes a value of any version this release reads.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| DecodeError(e.to_string()))
        }
        Some((version, _)) => Err(DecodeError(format!("unknown format version {version}"))),
        None => Err(DecodeError("empty value".into())),
    }
}

/// Decodes a value's leading fields into `T`, ignoring what follows (postcard is
/// positional: a struct whose fields are a prefix of the stored type's fields reads them).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::take_from_bytes(rest)
            .map(|(value, _rest)| value)
            .map_err(|e| DecodeError(e.to_string())),
        Some((version, _)) => Err(DecodeError(format!("unknown format version {version}"))),
        None => Err(DecodeError("empty value".into())),
    }
}
