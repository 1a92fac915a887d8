//! Versioning, Object Lock and the other per-bucket and per-version settings: the types
//! every role shares and the pure rules that decide them.
//!
//! A version's id is the Raft log index that created it (`{index:020}`), so ids sort by
//! creation. Whether a version is the bucket's *null* version (S3's name for a version
//! written while versioning was off or suspended) is not stored with the version: it
//! follows from its creation index and the bucket's [`VersioningHistory`]. That keeps
//! `ObjectVersion` unchanged on disk and makes "enable versioning" a one-key write
//! however many objects the bucket holds.

use serde::{Deserialize, Serialize};

use crate::{BucketName, ObjectVersion, TenantId};

/// The version id S3 gives a version written while versioning was off or suspended.
pub const NULL_VERSION_ID: &str = "null";

/// How long a retention may be set into the future: 100 years, as S3 allows.
pub const MAX_RETENTION_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// The versioning state of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersioningState {
    /// Never enabled: every write replaces the null version.
    Unversioned,
    /// Every write adds a version; deletes add delete markers.
    Enabled,
    /// Writes replace the null version; older versions are kept.
    Suspended,
}

impl VersioningState {
    /// The S3 name (`Enabled`, `Suspended`); `None` for a bucket never versioned.
    pub fn s3_status(self) -> Option<&'static str> {
        match self {
            VersioningState::Unversioned => None,
            VersioningState::Enabled => Some("Enabled"),
            VersioningState::Suspended => Some("Suspended"),
        }
    }
}

/// The changes of a bucket's versioning state, by the log index they took effect at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersioningHistory {
    /// `(log index, new state)`, in increasing index order.
    pub changes: Vec<(u64, VersioningState)>,
}

impl VersioningHistory {
    /// The state for a write at `seq`.
    pub fn state_at(&self, seq: u64) -> VersioningState {
        self.changes
            .iter()
            .rev()
            .find(|(from, _)| *from <= seq)
            .map_or(VersioningState::Unversioned, |(_, state)| *state)
    }

    /// The state now.
    pub fn current(&self) -> VersioningState {
        self.changes
            .last()
            .map_or(VersioningState::Unversioned, |(_, s)| *s)
    }

    /// Whether the version created at `seq` is the null version of its key.
    pub fn is_null(&self, seq: u64) -> bool {
        self.state_at(seq) != VersioningState::Enabled
    }

    /// Records a change at `seq` (no entry when the state stays the same).
    pub fn set(&mut self, seq: u64, state: VersioningState) {
        assert!(
            self.changes.last().is_none_or(|(from, _)| *from < seq),
            "versioning changes are recorded in log order"
        );
        if self.current() != state {
            self.changes.push((seq, state));
        }
    }

    /// The id S3 shows for the version created at `seq`.
    pub fn s3_version_id(&self, seq: u64) -> String {
        if self.is_null(seq) {
            NULL_VERSION_ID.to_string()
        } else {
            version_id(seq)
        }
    }
}

/// The version id of the version created at log index `seq`.
pub fn version_id(seq: u64) -> String {
    format!("{seq:020}")
}

/// The creation index of a version id; `None` for ids this cluster never issued
/// (including `null`, which names a version by role, not by index).
pub fn version_seq(version_id: &str) -> Option<u64> {
    if version_id.len() != 20 || !version_id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version_id.parse().ok()
}

/// What a version of a key is.
// Most versions are objects: boxing them would cost an allocation each to save space
// on the rare delete marker.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionEntry {
    /// Object data.
    Object(ObjectVersion),
    /// A delete marker: the key reads as deleted while this is the newest version.
    DeleteMarker {
        /// Its id (a creation index, as for objects).
        version_id: String,
        /// When it was written, Unix ms.
        last_modified_ms: u64,
    },
}

impl VersionEntry {
    /// The internal version id.
    pub fn version_id(&self) -> &str {
        match self {
            VersionEntry::Object(v) => &v.version_id,
            VersionEntry::DeleteMarker { version_id, .. } => version_id,
        }
    }

    /// When it was written.
    pub fn last_modified_ms(&self) -> u64 {
        match self {
            VersionEntry::Object(v) => v.last_modified_ms,
            VersionEntry::DeleteMarker {
                last_modified_ms, ..
            } => *last_modified_ms,
        }
    }
}

/// A version that is not the current object: kept in the version table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoncurrentVersion {
    /// When a newer version replaced it, Unix ms (lifecycle's noncurrent days count from
    /// here); for a delete marker that is still the newest version, when it was written.
    pub noncurrent_since_ms: u64,
    /// The version.
    pub entry: VersionEntry,
}

/// One version as a listing or a versioned read returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// The object key.
    pub key: String,
    /// The id S3 shows (`null` for the null version).
    pub s3_version_id: String,
    /// Whether this is the newest version of its key.
    pub is_latest: bool,
    /// The version.
    pub entry: VersionEntry,
}

/// One page of ListObjectVersions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionListing {
    /// Versions, by key, newest first within a key.
    pub versions: Vec<VersionView>,
    /// Common prefixes (with a delimiter), in order.
    pub common_prefixes: Vec<String>,
    /// Whether more follow.
    pub is_truncated: bool,
    /// Key marker of the next page.
    pub next_key_marker: Option<String>,
    /// Version-id marker of the next page (S3 form).
    pub next_version_id_marker: Option<String>,
}

/// Object Lock retention modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetentionMode {
    /// Users with the bypass permission may shorten or remove it.
    Governance,
    /// Nobody shortens or removes it before it ends, the administrator included.
    Compliance,
}

impl RetentionMode {
    /// The S3 name.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionMode::Governance => "GOVERNANCE",
            RetentionMode::Compliance => "COMPLIANCE",
        }
    }

    /// The mode named `s` as S3 spells it.
    pub fn parse(s: &str) -> Option<RetentionMode> {
        match s {
            "GOVERNANCE" => Some(RetentionMode::Governance),
            "COMPLIANCE" => Some(RetentionMode::Compliance),
            _ => None,
        }
    }
}

/// A retention on one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Its mode.
    pub mode: RetentionMode,
    /// Until when, Unix ms.
    pub until_ms: u64,
}

/// A bucket's Object Lock configuration (the bucket has Object Lock enabled when one is
/// stored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLockConfig {
    /// Retention given to new versions that do not ask for one: mode and days.
    pub default_retention: Option<(RetentionMode, u32)>,
}

/// The lock state of one version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionLock {
    /// Its retention, if any (an expired one may linger; it no longer protects).
    pub retention: Option<Retention>,
    /// Legal hold: protects until removed, whatever the retention says.
    pub legal_hold: bool,
}

/// Why a version may not be removed or its retention changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockRefusal {
    /// A legal hold is on.
    #[error("version is under legal hold")]
    LegalHold,
    /// Compliance retention until the given time.
    #[error("version is locked in COMPLIANCE mode until {until_ms} ms")]
    Compliance {
        /// Unix ms.
        until_ms: u64,
    },
    /// Governance retention, and the request does not bypass it.
    #[error(
        "version is locked in GOVERNANCE mode until {until_ms} ms; bypass requires x-amz-bypass-governance-retention and the bypass permission"
    )]
    Governance {
        /// Unix ms.
        until_ms: u64,
    },
}

impl VersionLock {
    /// Whether the version may be removed at `now_ms`.
    pub fn check_removal(&self, now_ms: u64, bypass_governance: bool) -> Result<(), LockRefusal> {
        if self.legal_hold {
            return Err(LockRefusal::LegalHold);
        }
        match self.retention {
            Some(r) if r.until_ms > now_ms => match r.mode {
                RetentionMode::Compliance => Err(LockRefusal::Compliance {
                    until_ms: r.until_ms,
                }),
                RetentionMode::Governance if !bypass_governance => Err(LockRefusal::Governance {
                    until_ms: r.until_ms,
                }),
                RetentionMode::Governance => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Whether the retention may become `new` at `now_ms`: an active COMPLIANCE retention
    /// may only be extended (same mode, later date); an active GOVERNANCE retention may be
    /// extended or changed to COMPLIANCE freely, anything else only with the bypass.
    pub fn check_retention_change(
        &self,
        new: Option<Retention>,
        now_ms: u64,
        bypass_governance: bool,
    ) -> Result<(), LockRefusal> {
        let Some(old) = self.retention.filter(|r| r.until_ms > now_ms) else {
            return Ok(());
        };
        let extends = |mode_ok: bool| new.is_some_and(|n| mode_ok && n.until_ms >= old.until_ms);
        match old.mode {
            RetentionMode::Compliance => {
                if extends(new.is_some_and(|n| n.mode == RetentionMode::Compliance)) {
                    Ok(())
                } else {
                    Err(LockRefusal::Compliance {
                        until_ms: old.until_ms,
                    })
                }
            }
            RetentionMode::Governance => {
                if extends(true) || bypass_governance {
                    Ok(())
                } else {
                    Err(LockRefusal::Governance {
                        until_ms: old.until_ms,
                    })
                }
            }
        }
    }
}

/// What a new version carries besides its bytes: lock and tags given on PUT, copy or
/// multipart creation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionExtras {
    /// Retention asked for in headers (else the bucket default applies).
    pub retention: Option<Retention>,
    /// Legal hold asked for in headers.
    pub legal_hold: bool,
    /// Tags (`x-amz-tagging`).
    pub tags: Option<Vec<(String, String)>>,
}

/// Checks an S3 tag set: at most `max` tags, keys 1..=128 and values 0..=256 characters,
/// keys unique.
pub fn validate_tags(tags: &[(String, String)], max: usize) -> Result<(), String> {
    if tags.len() > max {
        return Err(format!("{} tags; at most {max} are allowed", tags.len()));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(format!("tag key {k:?} must have 1 to 128 characters"));
        }
        if v.chars().count() > 256 {
            return Err(format!("tag value of {k:?} has more than 256 characters"));
        }
        if tags[..i].iter().any(|(other, _)| other == k) {
            return Err(format!("tag key {k:?} appears twice"));
        }
    }
    Ok(())
}

/// A CORS rule of a bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsRule {
    /// Origins, `*` wildcards allowed (at most one each).
    pub allowed_origins: Vec<String>,
    /// Methods: GET, PUT, POST, DELETE, HEAD.
    pub allowed_methods: Vec<String>,
    /// Request headers allowed in preflight, `*` wildcards allowed.
    pub allowed_headers: Vec<String>,
    /// Response headers exposed to the browser.
    pub expose_headers: Vec<String>,
    /// Preflight cache time, seconds.
    pub max_age_s: Option<i32>,
}

/// Whether `pattern` (with at most one `*`) matches `value`, case-insensitively for
/// headers (the caller lower-cases both) and exactly for origins.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            value.len() >= head.len() + tail.len()
                && value.starts_with(head)
                && value.ends_with(tail)
        }
    }
}

impl CorsRule {
    /// Whether this rule allows a request from `origin` with `method` and, for a
    /// preflight, the `request_headers` (lower-case).
    pub fn allows(&self, origin: &str, method: &str, request_headers: &[String]) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| wildcard_match(o, origin))
            && self.allowed_methods.iter().any(|m| m == method)
            && request_headers.iter().all(|h| {
                self.allowed_headers
                    .iter()
                    .any(|a| wildcard_match(&a.to_ascii_lowercase(), h))
            })
    }
}

/// A lifecycle rule (the subset Lauscha runs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRule {
    /// Its id, for the operator.
    pub id: Option<String>,
    /// Whether it runs.
    pub enabled: bool,
    /// Only keys with this prefix.
    pub prefix: String,
    /// Expire current versions this many days after they were written.
    pub expiration_days: Option<u32>,
    /// Remove delete markers that no longer hide any version.
    pub expired_object_delete_marker: bool,
    /// Remove noncurrent versions this many days after they became noncurrent.
    pub noncurrent_days: Option<u32>,
    /// Abort multipart uploads this many days after they started.
    pub abort_incomplete_upload_days: Option<u32>,
}

/// A bucket setting, as the S3 configuration calls set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketSetting {
    /// PutBucketVersioning.
    Versioning(VersioningState),
    /// PutObjectLockConfiguration.
    ObjectLock(ObjectLockConfig),
    /// PutBucketTagging.
    Tags(Vec<(String, String)>),
    /// PutBucketCors.
    Cors(Vec<CorsRule>),
    /// PutBucketPolicy: the policy document, checked by the gateway before it is stored.
    Policy(String),
    /// PutBucketLifecycleConfiguration.
    Lifecycle(Vec<LifecycleRule>),
}

/// Which bucket setting (for deletes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketSettingKind {
    /// Versioning (cannot be deleted, only suspended).
    Versioning,
    /// Object Lock (cannot be deleted).
    ObjectLock,
    /// Bucket tags.
    Tags,
    /// CORS.
    Cors,
    /// Policy.
    Policy,
    /// Lifecycle.
    Lifecycle,
}

/// Every setting of a bucket, as reads see them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSettings {
    /// Versioning changes.
    pub versioning: VersioningHistory,
    /// Object Lock, when enabled.
    pub object_lock: Option<ObjectLockConfig>,
    /// Bucket tags, when set.
    pub tags: Option<Vec<(String, String)>>,
    /// CORS rules, when set.
    pub cors: Option<Vec<CorsRule>>,
    /// The bucket policy document, when set.
    pub policy: Option<String>,
    /// Lifecycle rules, when set.
    pub lifecycle: Option<Vec<LifecycleRule>>,
}

/// A change to one version's attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionAttrChange {
    /// PutObjectRetention (`None` removes a governance retention, with the bypass).
    Retention(Option<Retention>),
    /// PutObjectLegalHold.
    LegalHold(bool),
    /// PutObjectTagging (`None`: DeleteObjectTagging).
    Tags(Option<Vec<(String, String)>>),
}

/// Commands of the versioned object model, carried by the metadata service's generic
/// `Execute` call in the state machine's own encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectCommand {
    /// Set a bucket setting.
    PutBucketSetting {
        /// The bucket.
        bucket: BucketName,
        /// The tenant owning it.
        tenant: TenantId,
        /// The setting.
        setting: BucketSetting,
    },
    /// Remove a bucket setting.
    DeleteBucketSetting {
        /// The bucket.
        bucket: BucketName,
        /// The tenant owning it.
        tenant: TenantId,
        /// Which.
        kind: BucketSettingKind,
    },
    /// DeleteObject: without a version id it removes the null version or adds a delete
    /// marker, as the bucket's versioning says; with one it removes that version for good.
    Delete {
        /// The bucket.
        bucket: BucketName,
        /// The tenant owning it.
        tenant: TenantId,
        /// The key.
        key: String,
        /// `null`, or a version id.
        version_id: Option<String>,
        /// The caller asked to bypass GOVERNANCE retention and may.
        bypass_governance: bool,
        /// Only if the key's current object is this version (lifecycle's compare-and-set).
        if_current: Option<String>,
    },
    /// Change a version's retention, legal hold or tags.
    SetVersionAttr {
        /// The bucket.
        bucket: BucketName,
        /// The tenant owning it.
        tenant: TenantId,
        /// The key.
        key: String,
        /// The version (`None`: the current object).
        version_id: Option<String>,
        /// The change.
        change: VersionAttrChange,
        /// The caller asked to bypass GOVERNANCE retention and may.
        bypass_governance: bool,
    },
    /// A block-volume command.
    Volume(crate::volume::VolumeCommand),
}

/// What an `ObjectCommand` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectCommandReply {
    /// A setting or attribute changed.
    Done,
    /// A delete.
    Deleted {
        /// The version removed or the delete marker added (S3 form), if any.
        version_id: Option<String>,
        /// Whether that version is a delete marker.
        delete_marker: bool,
    },
    /// What a volume command answers.
    Volume(crate::volume::VolumeReply),
}

/// Parameters of ListObjectVersions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListVersionsQuery {
    /// The bucket.
    pub bucket: BucketName,
    /// Only keys starting with this.
    pub prefix: String,
    /// Roll keys up to the first occurrence of this after the prefix.
    pub delimiter: Option<String>,
    /// Start after this key (or, with `version_id_marker`, after that version of it).
    pub key_marker: Option<String>,
    /// Start after this version (S3 form) of `key_marker`.
    pub version_id_marker: Option<String>,
    /// At most this many versions plus common prefixes.
    pub max_keys: u32,
}

/// One version with its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDetails {
    /// The version.
    pub view: VersionView,
    /// Its lock state.
    pub lock: VersionLock,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

/// Reads of the versioned object model, carried by the generic `Query` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaQuery {
    /// Every setting of a bucket.
    BucketSettings {
        /// The bucket.
        bucket: BucketName,
    },
    /// One version (`None`: the newest, which may be a delete marker).
    Version {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
        /// `null`, an id, or `None`.
        version_id: Option<String>,
    },
    /// ListObjectVersions.
    ListVersions(ListVersionsQuery),
    /// Buckets with lifecycle rules, for the lifecycle job.
    LifecycleBuckets,
    /// A volume with its extents and journal.
    VolumeState {
        /// Its name.
        name: String,
    },
    /// The volumes of a tenant, or of all tenants.
    ListVolumes {
        /// The tenant (`None`: all).
        tenant: Option<TenantId>,
    },
}

/// What a `MetaQuery` answers (one at a time; its size does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaQueryReply {
    /// Settings.
    BucketSettings(BucketSettings),
    /// A version, or none.
    Version(Option<VersionDetails>),
    /// A listing page.
    Versions(VersionListing),
    /// (bucket, owner, rules).
    LifecycleBuckets(Vec<(BucketName, TenantId, Vec<LifecycleRule>)>),
    /// A volume, if it exists.
    VolumeState(Option<crate::volume::VolumeState>),
    /// Volumes.
    Volumes(Vec<crate::volume::Volume>),
}

/// The checksums of a completed multipart object: for every algorithm all its parts
/// carry, S3's composite (the algorithm over the parts' raw checksums, then `-<parts>`),
/// with the part checksums it was computed from, which the state machine compares with
/// the stored parts at completion.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositeChecksums {
    /// Algorithm -> composite value (base64, `-N` suffix).
    pub composite: std::collections::BTreeMap<crate::ChecksumAlgorithm, String>,
    /// Part number -> the part checksums used.
    pub parts: Vec<(
        u32,
        std::collections::BTreeMap<crate::ChecksumAlgorithm, String>,
    )>,
}

/// Milliseconds in a day.
pub const DAY_MS: u64 = 24 * 3600 * 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_written_outside_enabled_periods_are_null() {
        let mut h = VersioningHistory::default();
        assert!(h.is_null(5));
        h.set(10, VersioningState::Enabled);
        h.set(20, VersioningState::Suspended);
        h.set(30, VersioningState::Enabled);
        assert!(h.is_null(9));
        assert!(!h.is_null(10));
        assert!(!h.is_null(19));
        assert!(h.is_null(20));
        assert!(h.is_null(29));
        assert!(!h.is_null(31));
        assert_eq!(h.s3_version_id(25), "null");
        assert_eq!(h.s3_version_id(31), version_id(31));
        // Setting the same state again records nothing.
        h.set(40, VersioningState::Enabled);
        assert_eq!(h.changes.len(), 3);
    }

    #[test]
    fn version_ids_round_trip_and_null_is_not_an_index() {
        assert_eq!(version_seq(&version_id(42)), Some(42));
        assert_eq!(version_seq("null"), None);
        assert_eq!(version_seq("42"), None);
        assert_eq!(version_seq("0000000000000000004x"), None);
    }

    fn ret(mode: RetentionMode, until_ms: u64) -> Option<Retention> {
        Some(Retention { mode, until_ms })
    }

    #[test]
    fn compliance_is_never_shortened_or_removed_before_it_ends() {
        let lock = VersionLock {
            retention: ret(RetentionMode::Compliance, 1000),
            legal_hold: false,
        };
        assert!(lock.check_removal(999, true).is_err());
        assert!(lock.check_removal(1000, false).is_ok());
        assert!(
            lock.check_retention_change(ret(RetentionMode::Compliance, 999), 0, true)
                .is_err()
        );
        assert!(
            lock.check_retention_change(ret(RetentionMode::Governance, 5000), 0, true)
                .is_err()
        );
        assert!(lock.check_retention_change(None, 0, true).is_err());
        assert!(
            lock.check_retention_change(ret(RetentionMode::Compliance, 2000), 0, false)
                .is_ok()
        );
        // Once it has ended, anything goes.
        assert!(lock.check_retention_change(None, 1000, false).is_ok());
    }

    #[test]
    fn governance_yields_to_the_bypass_only() {
        let lock = VersionLock {
            retention: ret(RetentionMode::Governance, 1000),
            legal_hold: false,
        };
        assert!(lock.check_removal(10, false).is_err());
        assert!(lock.check_removal(10, true).is_ok());
        assert!(lock.check_retention_change(None, 10, false).is_err());
        assert!(lock.check_retention_change(None, 10, true).is_ok());
        assert!(
            lock.check_retention_change(ret(RetentionMode::Compliance, 1000), 10, false)
                .is_ok()
        );
    }

    #[test]
    fn legal_hold_blocks_removal_even_with_bypass() {
        let lock = VersionLock {
            retention: None,
            legal_hold: true,
        };
        assert_eq!(lock.check_removal(0, true), Err(LockRefusal::LegalHold));
    }

    #[test]
    fn tag_rules() {
        let t = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(validate_tags(&[t("a", "1"), t("b", "")], 10).is_ok());
        assert!(validate_tags(&[t("a", "1"), t("a", "2")], 10).is_err());
        assert!(validate_tags(&[t("", "1")], 10).is_err());
        assert!(validate_tags(&[t("a", "1"), t("b", "2")], 1).is_err());
    }

    #[test]
    fn cors_wildcards() {
        assert!(wildcard_match("*", "https://x"));
        assert!(wildcard_match(
            "https://*.example.org",
            "https://a.example.org"
        ));
        assert!(!wildcard_match(
            "https://*.example.org",
            "https://example.org"
        ));
        let rule = CorsRule {
            allowed_origins: vec!["https://app.example".into()],
            allowed_methods: vec!["GET".into(), "PUT".into()],
            allowed_headers: vec!["x-amz-*".into(), "Content-Type".into()],
            ..Default::default()
        };
        assert!(rule.allows("https://app.example", "PUT", &["content-type".into()]));
        assert!(rule.allows("https://app.example", "GET", &["x-amz-date".into()]));
        assert!(!rule.allows("https://app.example", "DELETE", &[]));
        assert!(!rule.allows("https://evil.example", "GET", &[]));
        assert!(!rule.allows("https://app.example", "GET", &["authorization".into()]));
    }

    proptest! {
        /// The state at any index is the last change at or before it.
        #[test]
        fn state_at_is_the_last_change_before(
            steps in proptest::collection::vec((1u64..50, 0u8..3), 0..10),
            probe in 0u64..600,
        ) {
            let mut h = VersioningHistory::default();
            let mut seq = 0;
            let mut naive: Vec<(u64, VersioningState)> = Vec::new();
            for (gap, s) in steps {
                seq += gap;
                let state = [VersioningState::Unversioned, VersioningState::Enabled, VersioningState::Suspended][s as usize];
                h.set(seq, state);
                naive.push((seq, state));
            }
            let expected = naive.iter().rev().find(|(f, _)| *f <= probe).map_or(VersioningState::Unversioned, |(_, s)| *s);
            prop_assert_eq!(h.state_at(probe), expected);
        }
    }
}
