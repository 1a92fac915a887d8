//! Signing of admin API requests: HMAC-SHA256 with the admin key's secret over the method,
//! path with query, a Unix timestamp and the SHA-256 of the body. The secret never travels;
//! a captured request is useless after the allowed clock skew.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Header carrying the signing time, Unix seconds.
pub const DATE_HEADER: &str = "x-lauscha-date";
/// Scheme name in the Authorization header.
pub const SCHEME: &str = "Lauscha-HMAC-SHA256";
/// Largest accepted difference between the signing time and the server's clock.
pub const MAX_SKEW_SECS: u64 = 300;

fn string_to_sign(method: &str, path_and_query: &str, unix_secs: u64, body: &[u8]) -> String {
    format!(
        "{SCHEME}\n{method}\n{path_and_query}\n{unix_secs}\n{}",
        hex::encode(Sha256::digest(body))
    )
}

/// The Authorization header value for a request.
pub fn authorization(
    key_id: &str,
    secret: &str,
    method: &str,
    path_and_query: &str,
    unix_secs: u64,
    body: &[u8],
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign(method, path_and_query, unix_secs, body).as_bytes());
    format!(
        "{SCHEME} Credential={key_id}, Signature={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The key id an Authorization header names, if it is of our scheme.
pub fn key_id(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix(SCHEME)?
        .trim_start()
        .strip_prefix("Credential=")?
        .split(',')
        .next()
}

/// Checks an Authorization header against the secret; compares in constant time.
pub fn verify(
    authorization: &str,
    secret: &str,
    method: &str,
    path_and_query: &str,
    unix_secs: u64,
    now_unix_secs: u64,
    body: &[u8],
) -> bool {
    if unix_secs.abs_diff(now_unix_secs) > MAX_SKEW_SECS {
        return false;
    }
    let Some(signature) = authorization
        .split("Signature=")
        .nth(1)
        .and_then(|s| hex::decode(s.trim()).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign(method, path_and_query, unix_secs, body).as_bytes());
    mac.verify_slice(&signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_request_and_time() {
        let auth = authorization("AK", "secret", "GET", "/v1/status", 1000, b"");
        assert_eq!(key_id(&auth), Some("AK"));
        assert!(verify(
            &auth,
            "secret",
            "GET",
            "/v1/status",
            1000,
            1100,
            b""
        ));
        assert!(!verify(
            &auth,
            "other",
            "GET",
            "/v1/status",
            1000,
            1100,
            b""
        ));
        assert!(!verify(
            &auth,
            "secret",
            "POST",
            "/v1/status",
            1000,
            1100,
            b""
        ));
        assert!(!verify(
            &auth,
            "secret",
            "GET",
            "/v1/status?x",
            1000,
            1100,
            b""
        ));
        assert!(!verify(
            &auth,
            "secret",
            "GET",
            "/v1/status",
            1000,
            1100,
            b"x"
        ));
        assert!(!verify(
            &auth,
            "secret",
            "GET",
            "/v1/status",
            1000,
            2000,
            b""
        ));
        assert!(!verify(
            "garbage",
            "secret",
            "GET",
            "/v1/status",
            1000,
            1000,
            b""
        ));
    }
}
