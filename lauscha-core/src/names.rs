//! S3 naming rules for buckets and object keys.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Longest object key S3 accepts, in bytes of UTF-8.
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

/// A bucket name that satisfies the S3 general-purpose bucket naming rules.
///
/// Bucket names are global across tenants, as in S3: two tenants cannot both own `backups`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketName(String);

impl BucketName {
    /// Validates `name` against the S3 rules: 3..=63 characters of lowercase letters,
    /// digits, `.` and `-`; starts and ends with a letter or digit; no `..`; not shaped like
    /// an IPv4 address; none of the reserved prefixes and suffixes.
    pub fn parse(name: &str) -> Result<BucketName, CoreError> {
        let invalid = || CoreError::InvalidBucketName(name.to_string());
        let bytes = name.as_bytes();
        if !(3..=63).contains(&bytes.len()) {
            return Err(invalid());
        }
        if !bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(invalid());
        }
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(invalid());
        }
        if name.contains("..") || name.contains(".-") || name.contains("-.") {
            return Err(invalid());
        }
        if looks_like_ipv4(name) {
            return Err(invalid());
        }
        const RESERVED_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
        const RESERVED_SUFFIXES: [&str; 4] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3"];
        if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
            || RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s))
        {
            return Err(invalid());
        }
        Ok(BucketName(name.to_string()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn looks_like_ipv4(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Validates an object key: 1..=1024 bytes of UTF-8 without NUL.
///
/// NUL is refused because it terminates the bucket name in metadata keys and cannot be
/// carried in S3's XML listings anyway.
pub fn validate_object_key(key: &str) -> Result<(), CoreError> {
    if key.is_empty() || key.len() > MAX_OBJECT_KEY_BYTES || key.contains('\0') {
        return Err(CoreError::InvalidObjectKey(key.chars().take(64).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "abc",
            "my-bucket",
            "backups.stadt-jena",
            "a1b2c3",
            &"a".repeat(63),
        ] {
            assert!(BucketName::parse(ok).is_ok(), "{ok} must be accepted");
        }
    }

    #[test]
    fn rejects_what_s3_rejects() {
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "my_bucket",
            "-bucket",
            "bucket-",
            "my..bucket",
            "my.-bucket",
            "192.168.5.4",
            "xn--bucket",
            "bucket-s3alias",
            "bucket--ol-s3",
            "with space",
            "ümlaut",
        ] {
            assert!(BucketName::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn object_keys() {
        assert!(validate_object_key("a/b/c.txt").is_ok());
        assert!(validate_object_key("").is_err());
        assert!(validate_object_key("a\0b").is_err());
        assert!(validate_object_key(&"k".repeat(1024)).is_ok());
        assert!(validate_object_key(&"k".repeat(1025)).is_err());
    }
}
