//! Authentication against access keys in metadata, and the checks s3s leaves to us.

use std::sync::Arc;

use lauscha_core::AccessKeyId;
use lauscha_proto::MetaErrorKind;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};

use crate::GatewayError;
use crate::gateway::Inner;

/// s3s's secret-key lookup, backed by metadata.
pub struct MetaAuth {
    pub(crate) inner: Arc<Inner>,
}

#[async_trait::async_trait]
impl S3Auth for MetaAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self
            .inner
            .access_key(&AccessKeyId(access_key.to_string()))
            .await
        {
            Ok(key) => Ok(SecretKey::from(key.secret)),
            Err(GatewayError::Meta {
                kind: MetaErrorKind::NoSuchAccessKey,
                ..
            }) => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS access key Id you provided does not exist in our records."
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// What the outer HTTP layer refuses before s3s sees a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Signature version 2 is off.
    SigV2,
    /// Signed for another region.
    WrongRegion {
        /// The region in the credential scope.
        got: String,
    },
    /// A presigned URL valid for longer than S3 allows (7 days), or with an expiry that is
    /// not a number of seconds.
    BadExpiry {
        /// The `X-Amz-Expires` value.
        got: String,
    },
}

/// The longest validity of a presigned URL, seconds (S3's limit: 7 days).
pub const MAX_PRESIGNED_EXPIRY_S: u64 = 7 * 24 * 3600;

/// Looks at the credential scope (`Credential=AK/DATE/REGION/s3/aws4_request`, in the
/// Authorization header or the `X-Amz-Credential` query parameter) and the signature
/// version. Pure, so it is unit-tested without HTTP.
pub fn precheck(
    authorization: Option<&str>,
    query: Option<&str>,
    region: &str,
) -> Result<(), Refusal> {
    if let Some(auth) = authorization {
        if auth.starts_with("AWS ") {
            return Err(Refusal::SigV2);
        }
        if let Some(scope) = auth
            .split("Credential=")
            .nth(1)
            .map(|rest| rest.split([',', ' ']).next().unwrap_or(""))
        {
            check_scope(scope, region)?;
        }
    }
    if let Some(query) = query {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == "Signature" || name == "AWSAccessKeyId" {
                return Err(Refusal::SigV2);
            }
            if name == "X-Amz-Credential" {
                let decoded = percent_decode(value);
                check_scope(&decoded, region)?;
            }
            if name == "X-Amz-Expires"
                && !value
                    .parse::<u64>()
                    .is_ok_and(|s| (1..=MAX_PRESIGNED_EXPIRY_S).contains(&s))
            {
                return Err(Refusal::BadExpiry {
                    got: value.to_string(),
                });
            }
        }
    }
    Ok(())
}

fn check_scope(scope: &str, region: &str) -> Result<(), Refusal> {
    // AK/DATE/REGION/SERVICE/aws4_request; the access key itself may not contain '/'.
    let parts: Vec<&str> = scope.split('/').collect();
    if parts.len() == 5 && parts[2] != region {
        return Err(Refusal::WrongRegion {
            got: parts[2].to_string(),
        });
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lets anonymous requests through s3s to the operations a bucket policy can grant, whose
/// handlers ask the policy (`caller_for`); every other operation refuses them here.
pub struct PolicyAccess;

/// Operations a bucket policy may open to anonymous requests.
const POLICY_OPERATIONS: [&str; 6] = [
    "GetObject",
    "HeadObject",
    "PutObject",
    "DeleteObject",
    "ListObjects",
    "ListObjectsV2",
];

#[async_trait::async_trait]
impl s3s::access::S3Access for PolicyAccess {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        if cx.credentials().is_some() || POLICY_OPERATIONS.contains(&cx.s3_op().name()) {
            Ok(())
        } else {
            Err(s3s::s3_error!(
                AccessDenied,
                "anonymous access is not allowed"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_and_version_checks() {
        let v4 = "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=ab";
        assert_eq!(precheck(Some(v4), None, "us-east-1"), Ok(()));
        assert_eq!(
            precheck(Some(v4), None, "eu-central-1"),
            Err(Refusal::WrongRegion {
                got: "us-east-1".into()
            })
        );
        assert_eq!(
            precheck(Some("AWS AK:sig"), None, "us-east-1"),
            Err(Refusal::SigV2)
        );
        assert_eq!(
            precheck(
                None,
                Some("AWSAccessKeyId=AK&Signature=x&Expires=1"),
                "us-east-1"
            ),
            Err(Refusal::SigV2)
        );
        let presigned = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20260101%2Feu-west-1%2Fs3%2Faws4_request";
        assert_eq!(
            precheck(None, Some(presigned), "us-east-1"),
            Err(Refusal::WrongRegion {
                got: "eu-west-1".into()
            })
        );
        assert_eq!(precheck(None, Some("list-type=2"), "us-east-1"), Ok(()));
        let expiring = |s: &str| {
            precheck(
                None,
                Some(&format!(
                    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={s}"
                )),
                "us-east-1",
            )
        };
        assert_eq!(expiring("604800"), Ok(()));
        assert_eq!(expiring("1"), Ok(()));
        for bad in ["604801", "0", "-5", "soon", ""] {
            assert_eq!(
                expiring(bad),
                Err(Refusal::BadExpiry { got: bad.into() }),
                "{bad:?}"
            );
        }
        assert_eq!(precheck(None, Some("%"), "us-east-1"), Ok(()));
    }
}
