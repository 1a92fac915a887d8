//! Conversions between the S3 messages of versioning, Object Lock, tagging, CORS and
//! lifecycle and the core types metadata stores. Pure: no I/O, each function checks what
//! S3 would refuse and says why.

use std::time::{Duration, UNIX_EPOCH};

use lauscha_core::versioning::{
    CorsRule, LifecycleRule, ObjectLockConfig, Retention, RetentionMode, VersionExtras, VersionLock,
};
use s3s::dto::{self, Timestamp};
use s3s::{S3Result, s3_error};

/// Most tags on an object (as S3).
pub const MAX_OBJECT_TAGS: usize = 10;

/// Unix ms of an S3 timestamp (dates before 1970 count as 0: always in the past).
pub fn timestamp_ms(t: &Timestamp) -> u64 {
    let t: time::OffsetDateTime = t.clone().into();
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// An S3 timestamp of Unix ms.
pub fn ms_timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The retention mode S3 names.
pub fn retention_mode(mode: &str) -> S3Result<RetentionMode> {
    RetentionMode::parse(mode).ok_or_else(|| {
        s3_error!(
            InvalidArgument,
            "unknown Object Lock mode {mode:?}; use GOVERNANCE or COMPLIANCE"
        )
    })
}

/// Lock and tags of a new version from its request headers.
pub fn extras_from_headers(
    mode: Option<&dto::ObjectLockMode>,
    retain_until: Option<&Timestamp>,
    legal_hold: Option<&dto::ObjectLockLegalHoldStatus>,
    tagging: Option<&str>,
) -> S3Result<VersionExtras> {
    let retention = match (mode, retain_until) {
        (None, None) => None,
        (Some(mode), Some(until)) => Some(Retention {
            mode: retention_mode(mode.as_str())?,
            until_ms: timestamp_ms(until),
        }),
        _ => {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-object-lock-mode and x-amz-object-lock-retain-until-date go together"
            ));
        }
    };
    let legal_hold = match legal_hold.map(|h| h.as_str()) {
        None | Some("OFF") => false,
        Some("ON") => true,
        Some(other) => {
            return Err(s3_error!(
                InvalidArgument,
                "legal hold status {other:?}: use ON or OFF"
            ));
        }
    };
    let tags = tagging.map(parse_tagging_header).transpose()?;
    Ok(VersionExtras {
        retention,
        legal_hold,
        tags,
    })
}

/// Parses `x-amz-tagging` (`k1=v1&k2=v2`, URL-encoded).
pub fn parse_tagging_header(header: &str) -> S3Result<Vec<(String, String)>> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        urlencoding_decode(&s)
            .ok_or_else(|| s3_error!(InvalidArgument, "x-amz-tagging is not URL-encoded"))
    };
    let mut tags = Vec::new();
    for pair in header.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        tags.push((decode(k)?, decode(v)?));
    }
    lauscha_core::versioning::validate_tags(&tags, MAX_OBJECT_TAGS)
        .map_err(|e| s3_error!(InvalidTag, "{e}"))?;
    Ok(tags)
}

fn urlencoding_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Tags of an S3 tag set, checked.
pub fn tags_from_dto(set: &dto::TagSet, max: usize) -> S3Result<Vec<(String, String)>> {
    let tags: Vec<(String, String)> = set
        .iter()
        .map(|t| {
            (
                t.key.clone().unwrap_or_default(),
                t.value.clone().unwrap_or_default(),
            )
        })
        .collect();
    lauscha_core::versioning::validate_tags(&tags, max)
        .map_err(|e| s3_error!(InvalidTag, "{e}"))?;
    Ok(tags)
}

/// An S3 tag set.
pub fn tags_to_dto(tags: &[(String, String)]) -> dto::TagSet {
    tags.iter()
        .map(|(k, v)| dto::Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

/// The core Object Lock configuration of an S3 one.
pub fn lock_config_from_dto(config: &dto::ObjectLockConfiguration) -> S3Result<ObjectLockConfig> {
    if config
        .object_lock_enabled
        .as_ref()
        .is_none_or(|e| e.as_str() != "Enabled")
    {
        return Err(s3_error!(
            MalformedXML,
            "ObjectLockEnabled must be Enabled (Object Lock cannot be turned off)"
        ));
    }
    let default_retention = match config
        .rule
        .as_ref()
        .and_then(|r| r.default_retention.as_ref())
    {
        None => None,
        Some(d) => {
            let mode = retention_mode(
                d.mode
                    .as_ref()
                    .ok_or_else(|| s3_error!(MalformedXML, "DefaultRetention needs a Mode"))?
                    .as_str(),
            )?;
            let days = match (d.days, d.years) {
                (Some(days), None) if days > 0 => days as u32,
                (None, Some(years)) if years > 0 => (years as u32).saturating_mul(365),
                _ => {
                    return Err(s3_error!(
                        MalformedXML,
                        "DefaultRetention needs a positive Days or Years, not both"
                    ));
                }
            };
            Some((mode, days))
        }
    };
    Ok(ObjectLockConfig { default_retention })
}

/// The S3 form of an Object Lock configuration.
pub fn lock_config_to_dto(config: &ObjectLockConfig) -> dto::ObjectLockConfiguration {
    dto::ObjectLockConfiguration {
        object_lock_enabled: Some(dto::ObjectLockEnabled::from_static(
            dto::ObjectLockEnabled::ENABLED,
        )),
        rule: config
            .default_retention
            .map(|(mode, days)| dto::ObjectLockRule {
                default_retention: Some(dto::DefaultRetention {
                    days: Some(days as i32),
                    mode: Some(dto::ObjectLockRetentionMode::from(
                        mode.as_str().to_string(),
                    )),
                    years: None,
                }),
            }),
    }
}

/// The S3 retention of a version's lock, if it has one.
pub fn retention_to_dto(lock: &VersionLock) -> Option<dto::ObjectLockRetention> {
    lock.retention.map(|r| dto::ObjectLockRetention {
        mode: Some(dto::ObjectLockRetentionMode::from(
            r.mode.as_str().to_string(),
        )),
        retain_until_date: Some(ms_timestamp(r.until_ms)),
    })
}

/// CORS rules of an S3 configuration.
pub fn cors_from_dto(config: &dto::CORSConfiguration) -> S3Result<Vec<CorsRule>> {
    const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "HEAD"];
    config
        .cors_rules
        .iter()
        .map(|r| {
            if let Some(m) = r
                .allowed_methods
                .iter()
                .find(|m| !METHODS.contains(&m.as_str()))
            {
                return Err(s3_error!(
                    InvalidRequest,
                    "unsupported CORS method {m:?}; use GET, PUT, POST, DELETE or HEAD"
                ));
            }
            let wildcards = |list: &[String]| list.iter().any(|s| s.matches('*').count() > 1);
            if wildcards(&r.allowed_origins) || r.allowed_headers.as_deref().is_some_and(wildcards)
            {
                return Err(s3_error!(
                    InvalidRequest,
                    "a CORS origin or header may contain at most one wildcard"
                ));
            }
            Ok(CorsRule {
                allowed_origins: r.allowed_origins.clone(),
                allowed_methods: r.allowed_methods.clone(),
                allowed_headers: r.allowed_headers.clone().unwrap_or_default(),
                expose_headers: r.expose_headers.clone().unwrap_or_default(),
                max_age_s: r.max_age_seconds,
            })
        })
        .collect()
}

/// The S3 form of CORS rules.
pub fn cors_to_dto(rules: &[CorsRule]) -> dto::CORSRules {
    rules
        .iter()
        .map(|r| dto::CORSRule {
            allowed_headers: (!r.allowed_headers.is_empty()).then(|| r.allowed_headers.clone()),
            allowed_methods: r.allowed_methods.clone(),
            allowed_origins: r.allowed_origins.clone(),
            expose_headers: (!r.expose_headers.is_empty()).then(|| r.expose_headers.clone()),
            id: None,
            max_age_seconds: r.max_age_s,
        })
        .collect()
}

fn positive_days(days: Option<i32>, what: &str) -> S3Result<Option<u32>> {
    match days {
        None => Ok(None),
        Some(d) if d > 0 => Ok(Some(d as u32)),
        Some(d) => Err(s3_error!(
            InvalidArgument,
            "{what} must be a positive number of days, not {d}"
        )),
    }
}

/// Lifecycle rules of an S3 configuration (expiration, noncurrent expiration, delete
/// marker cleanup, aborting uploads; transitions have nowhere to go here).
pub fn lifecycle_from_dto(
    config: &dto::BucketLifecycleConfiguration,
) -> S3Result<Vec<LifecycleRule>> {
    config
        .rules
        .iter()
        .map(|r| {
            if r.transitions.as_ref().is_some_and(|t| !t.is_empty())
                || r.noncurrent_version_transitions
                    .as_ref()
                    .is_some_and(|t| !t.is_empty())
            {
                return Err(s3_error!(
                    NotImplemented,
                    "lifecycle transitions are not supported: Lauscha has one storage class per bucket"
                ));
            }
            let filter = r.filter.as_ref();
            if filter.is_some_and(|f| {
                f.and.is_some()
                    || f.tag.is_some()
                    || f.object_size_greater_than.is_some()
                    || f.object_size_less_than.is_some()
            }) {
                return Err(s3_error!(
                    NotImplemented,
                    "lifecycle filters by tag or size are not supported; filter by Prefix"
                ));
            }
            let prefix = filter
                .and_then(|f| f.prefix.clone())
                .or_else(|| r.prefix.clone())
                .unwrap_or_default();
            let expiration = r.expiration.as_ref();
            if expiration.is_some_and(|e| e.date.is_some()) {
                return Err(s3_error!(
                    NotImplemented,
                    "lifecycle expiration by Date is not supported; use Days"
                ));
            }
            let rule = LifecycleRule {
                id: r.id.clone(),
                enabled: r.status.as_str() == "Enabled",
                prefix,
                expiration_days: positive_days(expiration.and_then(|e| e.days), "Expiration Days")?,
                expired_object_delete_marker: expiration
                    .and_then(|e| e.expired_object_delete_marker)
                    .unwrap_or(false),
                noncurrent_days: positive_days(
                    r.noncurrent_version_expiration
                        .as_ref()
                        .and_then(|n| n.noncurrent_days),
                    "NoncurrentDays",
                )?,
                abort_incomplete_upload_days: positive_days(
                    r.abort_incomplete_multipart_upload
                        .as_ref()
                        .and_then(|a| a.days_after_initiation),
                    "DaysAfterInitiation",
                )?,
            };
            if rule.expiration_days.is_none()
                && !rule.expired_object_delete_marker
                && rule.noncurrent_days.is_none()
                && rule.abort_incomplete_upload_days.is_none()
            {
                return Err(s3_error!(
                    MalformedXML,
                    "a lifecycle rule needs at least one action"
                ));
            }
            Ok(rule)
        })
        .collect()
}

/// The S3 form of lifecycle rules.
pub fn lifecycle_to_dto(rules: &[LifecycleRule]) -> dto::LifecycleRules {
    rules
        .iter()
        .map(|r| dto::LifecycleRule {
            id: r.id.clone(),
            status: dto::ExpirationStatus::from(
                if r.enabled { "Enabled" } else { "Disabled" }.to_string(),
            ),
            filter: Some(dto::LifecycleRuleFilter {
                prefix: Some(r.prefix.clone()),
                ..Default::default()
            }),
            expiration: (r.expiration_days.is_some() || r.expired_object_delete_marker).then(
                || dto::LifecycleExpiration {
                    days: r.expiration_days.map(|d| d as i32),
                    expired_object_delete_marker: r.expired_object_delete_marker.then_some(true),
                    ..Default::default()
                },
            ),
            noncurrent_version_expiration: r.noncurrent_days.map(|d| {
                dto::NoncurrentVersionExpiration {
                    noncurrent_days: Some(d as i32),
                    ..Default::default()
                }
            }),
            abort_incomplete_multipart_upload: r.abort_incomplete_upload_days.map(|d| {
                dto::AbortIncompleteMultipartUpload {
                    days_after_initiation: Some(d as i32),
                }
            }),
            noncurrent_version_transitions: None,
            prefix: None,
            transitions: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_header_decodes_pairs() {
        let tags = parse_tagging_header("a=1&b%20c=x%2By&empty=").unwrap();
        assert_eq!(
            tags,
            vec![
                ("a".into(), "1".into()),
                ("b c".into(), "x+y".into()),
                ("empty".into(), "".into())
            ]
        );
        assert!(parse_tagging_header("a=1&a=2").is_err());
        assert!(parse_tagging_header("a=%zz").is_err());
    }

    #[test]
    fn lock_headers_go_together() {
        let mode = dto::ObjectLockMode::from("COMPLIANCE".to_string());
        assert!(extras_from_headers(Some(&mode), None, None, None).is_err());
        let until = ms_timestamp(5_000);
        let e = extras_from_headers(Some(&mode), Some(&until), None, None).unwrap();
        assert_eq!(
            e.retention,
            Some(Retention {
                mode: RetentionMode::Compliance,
                until_ms: 5_000
            })
        );
    }
}
