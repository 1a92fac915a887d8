//! The versioned object model inside the state machine: installing a new version,
//! deletes with and without a version id, delete markers, null versions, Object Lock,
//! bucket settings and version attributes. Pure like `apply`: reads through [`KvRead`],
//! writes by pushing [`Mutation`]s.
//!
//! Invariants (checked by the tests below and by `query::list_versions`' readers):
//! - The object table holds a key's newest version when that is an object; every other
//!   version (older objects, delete markers) is in the version table under its creation
//!   index, newest first.
//! - When the object table has no entry for a key, the newest entry of its version table
//!   (if any) is a delete marker: removing a newer version promotes the next one.
//! - A key has at most one null version (current or not).
//! - No command removes a version that Object Lock protects; no retention is shortened
//!   against its mode.

use lauscha_core::versioning::{
    BucketSetting, BucketSettingKind, DAY_MS, MAX_RETENTION_MS, NULL_VERSION_ID, NoncurrentVersion,
    ObjectCommand, ObjectCommandReply, ObjectLockConfig, Retention, VersionAttrChange,
    VersionEntry, VersionExtras, VersionLock, VersioningHistory, VersioningState, validate_tags,
    version_id, version_seq,
};
use lauscha_core::{BucketName, ObjectVersion};
use serde::{Deserialize, Serialize};

use crate::apply::{StripeOwner, owned_bucket, read, retire};
use crate::command::MetaError;
use crate::keys::{self, AttrKind, SettingKind};
use crate::kv::{KvError, KvRead, Mutation};
use crate::value;

/// Which noncurrent version holds a stripe (the version-stripe index's value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionOwner {
    /// The bucket.
    pub bucket: BucketName,
    /// The object key.
    pub key: String,
    /// The version's creation index.
    pub seq: u64,
}

type Outcome<T> = Result<Result<T, MetaError>, KvError>;

fn put<T: Serialize>(out: &mut Vec<Mutation>, key: Vec<u8>, v: &T) {
    out.push(Mutation::Put(key, value::encode(v)));
}

/// The bucket's versioning history.
pub fn versioning(kv: &impl KvRead, bucket: &BucketName) -> Result<VersioningHistory, KvError> {
    Ok(read(kv, &keys::bucket_setting(bucket, SettingKind::Versioning))?.unwrap_or_default())
}

/// The bucket's Object Lock configuration, if Object Lock is enabled.
pub fn object_lock(
    kv: &impl KvRead,
    bucket: &BucketName,
) -> Result<Option<ObjectLockConfig>, KvError> {
    read(kv, &keys::bucket_setting(bucket, SettingKind::ObjectLock))
}

/// A version's lock state.
pub fn version_lock(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    seq: u64,
) -> Result<VersionLock, KvError> {
    Ok(read(kv, &keys::version_attr(bucket, key, seq, AttrKind::Lock))?.unwrap_or_default())
}

/// The creation index in a version id this cluster issued.
fn seq_of(version_id: &str) -> Result<u64, KvError> {
    version_seq(version_id).ok_or_else(|| KvError(format!("stored version id {version_id:?}")))
}

/// Moves the current object into the version table.
fn demote(
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    old: ObjectVersion,
    now_ms: u64,
) -> Result<(), KvError> {
    let seq = seq_of(&old.version_id)?;
    for stripe in old.stripes() {
        out.push(Mutation::Delete(keys::stripe_index(stripe.id)));
        put(
            out,
            keys::version_stripe(stripe.id),
            &VersionOwner {
                bucket: bucket.clone(),
                key: key.to_string(),
                seq,
            },
        );
    }
    put(
        out,
        keys::version(bucket, key, seq),
        &NoncurrentVersion {
            noncurrent_since_ms: now_ms,
            entry: VersionEntry::Object(old),
        },
    );
    Ok(())
}

/// Makes the newest remaining noncurrent version current if it is an object. `removed` is
/// a version this command deletes (its delete is staged, not yet visible in `kv`).
fn promote(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    removed: u64,
) -> Result<(), KvError> {
    let Some((seq, next)) = noncurrent(kv, bucket, key, 2)?
        .into_iter()
        .find(|(seq, _)| *seq != removed)
    else {
        return Ok(());
    };
    if let VersionEntry::Object(version) = next.entry {
        out.push(Mutation::Delete(keys::version(bucket, key, seq)));
        let owner = StripeOwner {
            bucket: bucket.clone(),
            key: key.to_string(),
        };
        for stripe in version.stripes() {
            out.push(Mutation::Delete(keys::version_stripe(stripe.id)));
            put(out, keys::stripe_index(stripe.id), &owner);
        }
        put(out, keys::object(bucket, key), &version);
    }
    Ok(())
}

/// Up to `limit` noncurrent versions of a key, newest first, with their creation indexes.
pub fn noncurrent(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    limit: usize,
) -> Result<Vec<(u64, NoncurrentVersion)>, KvError> {
    let prefix = keys::key_versions_prefix(bucket, key);
    let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
    let mut found = Vec::new();
    let mut error = None;
    kv.scan(&prefix, &end, &mut |k, v| {
        match (
            keys::parse_version(bucket, k),
            value::decode::<NoncurrentVersion>(v),
        ) {
            (Some((_, seq)), Ok(version)) => found.push((seq, version)),
            _ => error = Some(KvError(format!("bad version entry {k:?}"))),
        }
        error.is_none() && found.len() < limit
    })?;
    match error {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// The creation indexes of a key's noncurrent null versions (at most one, by invariant).
fn noncurrent_nulls(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    history: &VersioningHistory,
) -> Result<Vec<(u64, NoncurrentVersion)>, KvError> {
    Ok(noncurrent(kv, bucket, key, usize::MAX)?
        .into_iter()
        .filter(|(seq, _)| history.is_null(*seq))
        .collect())
}

/// Drops a version's attributes.
fn drop_attrs(out: &mut Vec<Mutation>, bucket: &BucketName, key: &str, seq: u64) {
    out.push(Mutation::Delete(keys::version_attr(
        bucket,
        key,
        seq,
        AttrKind::Lock,
    )));
    out.push(Mutation::Delete(keys::version_attr(
        bucket,
        key,
        seq,
        AttrKind::Tags,
    )));
}

/// Refuses if Object Lock protects the version.
fn check_removable(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    seq: u64,
    now_ms: u64,
    bypass_governance: bool,
) -> Outcome<()> {
    Ok(version_lock(kv, bucket, key, seq)?
        .check_removal(now_ms, bypass_governance)
        .map_err(|e| {
            MetaError::ObjectLocked(format!("{bucket}/{key} version {}: {e}", version_id(seq)))
        }))
}

/// Removes a noncurrent version for good (lock already checked).
fn remove_noncurrent(
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    seq: u64,
    version: &NoncurrentVersion,
    now_ms: u64,
    log_index: u64,
) {
    out.push(Mutation::Delete(keys::version(bucket, key, seq)));
    drop_attrs(out, bucket, key, seq);
    if let VersionEntry::Object(object) = &version.entry {
        retire(out, object, format!("{bucket}/{key}"), now_ms, log_index);
    }
}

/// Makes room for a new current version (object or delete marker) written at `log_index`:
/// the old current object is retired if it is the null version and the new one is null
/// too, else kept as noncurrent; a new null version also replaces a noncurrent null one.
/// Returns the bucket's versioning history.
fn make_room(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    now_ms: u64,
    log_index: u64,
) -> Outcome<VersioningHistory> {
    let history = versioning(kv, bucket)?;
    let new_is_null = history.is_null(log_index);
    if let Some(old) = read::<ObjectVersion>(kv, &keys::object(bucket, key))? {
        let old_seq = seq_of(&old.version_id)?;
        if new_is_null && history.is_null(old_seq) {
            if let Err(e) = check_removable(kv, bucket, key, old_seq, now_ms, false)? {
                return Ok(Err(e));
            }
            retire(out, &old, format!("{bucket}/{key}"), now_ms, log_index);
            drop_attrs(out, bucket, key, old_seq);
        } else {
            demote(out, bucket, key, old, now_ms)?;
        }
        out.push(Mutation::Delete(keys::object(bucket, key)));
    }
    if new_is_null {
        for (seq, version) in noncurrent_nulls(kv, bucket, key, &history)? {
            if let Err(e) = check_removable(kv, bucket, key, seq, now_ms, false)? {
                return Ok(Err(e));
            }
            remove_noncurrent(out, bucket, key, seq, &version, now_ms, log_index);
        }
    }
    Ok(Ok(history))
}

/// Makes `version` (with its id and time set) the key's current object, with the lock
/// and tags asked for or defaulted. Returns the S3 version id.
#[allow(clippy::too_many_arguments)]
pub fn install(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    version: ObjectVersion,
    extras: &VersionExtras,
    now_ms: u64,
    log_index: u64,
) -> Outcome<String> {
    debug_assert_eq!(version.version_id, version_id(log_index));
    let lock_config = object_lock(kv, bucket)?;
    let retention = match (extras.retention, &lock_config) {
        (Some(r), Some(_)) => {
            if let Err(e) = check_retain_until(r, now_ms) {
                return Ok(Err(e));
            }
            Some(r)
        }
        (None, Some(cfg)) => cfg.default_retention.map(|(mode, days)| Retention {
            mode,
            until_ms: now_ms + u64::from(days) * DAY_MS,
        }),
        (Some(_), None) => return Ok(Err(no_lock_configuration(bucket))),
        (None, None) => None,
    };
    if extras.legal_hold && lock_config.is_none() {
        return Ok(Err(no_lock_configuration(bucket)));
    }
    if let Some(tags) = &extras.tags
        && let Err(e) = validate_tags(tags, 10)
    {
        return Ok(Err(MetaError::InvalidArgument(e)));
    }
    let history = match make_room(kv, out, bucket, key, now_ms, log_index)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let owner = StripeOwner {
        bucket: bucket.clone(),
        key: key.to_string(),
    };
    for stripe in version.stripes() {
        put(out, keys::stripe_index(stripe.id), &owner);
    }
    if retention.is_some() || extras.legal_hold {
        put(
            out,
            keys::version_attr(bucket, key, log_index, AttrKind::Lock),
            &VersionLock {
                retention,
                legal_hold: extras.legal_hold,
            },
        );
    }
    if let Some(tags) = extras.tags.as_ref().filter(|t| !t.is_empty()) {
        put(
            out,
            keys::version_attr(bucket, key, log_index, AttrKind::Tags),
            tags,
        );
    }
    put(out, keys::object(bucket, key), &version);
    Ok(Ok(history.s3_version_id(log_index)))
}

fn no_lock_configuration(bucket: &BucketName) -> MetaError {
    MetaError::InvalidRequest(format!(
        "bucket {bucket} has no Object Lock configuration; retention and legal hold need one"
    ))
}

fn check_retain_until(r: Retention, now_ms: u64) -> Result<(), MetaError> {
    if r.until_ms <= now_ms {
        return Err(MetaError::InvalidArgument(
            "the retain-until date must be in the future".into(),
        ));
    }
    if r.until_ms - now_ms > MAX_RETENTION_MS {
        return Err(MetaError::InvalidArgument(
            "the retain-until date is more than 100 years ahead".into(),
        ));
    }
    Ok(())
}

/// Where a version named by an S3 version id is.
enum Found {
    Current(ObjectVersion),
    Noncurrent(u64, NoncurrentVersion),
}

/// Finds a version by its S3 id (`null` or an issued id).
fn find(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    s3_id: &str,
    history: &VersioningHistory,
) -> Outcome<Option<Found>> {
    let current = read::<ObjectVersion>(kv, &keys::object(bucket, key))?;
    if s3_id == NULL_VERSION_ID {
        if let Some(c) = current
            && history.is_null(seq_of(&c.version_id)?)
        {
            return Ok(Ok(Some(Found::Current(c))));
        }
        return Ok(Ok(noncurrent_nulls(kv, bucket, key, history)?
            .into_iter()
            .next()
            .map(|(seq, v)| Found::Noncurrent(seq, v))));
    }
    let Some(seq) = version_seq(s3_id) else {
        return Ok(Err(MetaError::InvalidArgument(format!(
            "invalid version id {s3_id:?}"
        ))));
    };
    if let Some(c) = current
        && c.version_id == s3_id
    {
        return Ok(Ok(Some(Found::Current(c))));
    }
    Ok(Ok(read::<NoncurrentVersion>(
        kv,
        &keys::version(bucket, key, seq),
    )?
    .map(|v| Found::Noncurrent(seq, v))))
}

/// A version with its S3 id, lock and tags, for reads.
pub fn details(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    s3_id: Option<&str>,
) -> Outcome<Option<lauscha_core::versioning::VersionDetails>> {
    let history = versioning(kv, bucket)?;
    let (entry, is_latest) = match s3_id {
        Some(id) => match find(kv, bucket, key, id, &history)? {
            Err(e) => return Ok(Err(e)),
            Ok(None) => return Ok(Ok(None)),
            Ok(Some(Found::Current(v))) => (VersionEntry::Object(v), true),
            Ok(Some(Found::Noncurrent(seq, v))) => {
                let latest = read::<ObjectVersion>(kv, &keys::object(bucket, key))?.is_none()
                    && noncurrent(kv, bucket, key, 1)?.first().map(|(s, _)| *s) == Some(seq);
                (v.entry, latest)
            }
        },
        None => match read::<ObjectVersion>(kv, &keys::object(bucket, key))? {
            Some(v) => (VersionEntry::Object(v), true),
            None => match noncurrent(kv, bucket, key, 1)?.into_iter().next() {
                Some((_, v)) => (v.entry, true),
                None => return Ok(Ok(None)),
            },
        },
    };
    let seq = seq_of(entry.version_id())?;
    let lock = version_lock(kv, bucket, key, seq)?;
    let tags = read(kv, &keys::version_attr(bucket, key, seq, AttrKind::Tags))?.unwrap_or_default();
    Ok(Ok(Some(lauscha_core::versioning::VersionDetails {
        view: lauscha_core::versioning::VersionView {
            key: key.to_string(),
            s3_version_id: history.s3_version_id(seq),
            is_latest,
            entry,
        },
        lock,
        tags,
    })))
}

/// Applies an [`ObjectCommand`].
pub fn apply_object_command(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    command: &ObjectCommand,
    now_ms: u64,
    log_index: u64,
) -> Outcome<ObjectCommandReply> {
    match command {
        ObjectCommand::PutBucketSetting {
            bucket,
            tenant,
            setting,
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            Ok(
                put_setting(kv, out, bucket, setting, log_index)?
                    .map(|()| ObjectCommandReply::Done),
            )
        }
        ObjectCommand::DeleteBucketSetting {
            bucket,
            tenant,
            kind,
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            let kind = match kind {
                BucketSettingKind::Versioning | BucketSettingKind::ObjectLock => {
                    return Ok(Err(MetaError::InvalidBucketState(
                        "versioning and Object Lock cannot be removed from a bucket".into(),
                    )));
                }
                BucketSettingKind::Tags => SettingKind::Tags,
                BucketSettingKind::Cors => SettingKind::Cors,
                BucketSettingKind::Policy => SettingKind::Policy,
                BucketSettingKind::Lifecycle => SettingKind::Lifecycle,
            };
            out.push(Mutation::Delete(keys::bucket_setting(bucket, kind)));
            Ok(Ok(ObjectCommandReply::Done))
        }
        ObjectCommand::Delete {
            bucket,
            tenant,
            key,
            version_id,
            bypass_governance,
            if_current,
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            if let Some(expected) = if_current {
                let current = read::<ObjectVersion>(kv, &keys::object(bucket, key))?;
                if current.as_ref().map(|c| c.version_id.as_str()) != Some(expected.as_str()) {
                    return Ok(Err(MetaError::Conflict(format!(
                        "{bucket}/{key}: current version is no longer {expected}"
                    ))));
                }
            }
            match version_id {
                None => delete_current(kv, out, bucket, key, now_ms, log_index),
                Some(id) => delete_version(
                    kv,
                    out,
                    bucket,
                    key,
                    id,
                    *bypass_governance,
                    now_ms,
                    log_index,
                ),
            }
        }
        ObjectCommand::Volume(v) => Ok(crate::volumes::apply_volume_command(
            kv, out, v, now_ms, log_index,
        )?
        .map(ObjectCommandReply::Volume)),
        ObjectCommand::SetVersionAttr {
            bucket,
            tenant,
            key,
            version_id,
            change,
            bypass_governance,
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            set_attr(
                kv,
                out,
                bucket,
                key,
                version_id.as_deref(),
                change,
                *bypass_governance,
                now_ms,
            )
        }
    }
}

fn put_setting(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    setting: &BucketSetting,
    log_index: u64,
) -> Outcome<()> {
    match setting {
        BucketSetting::Versioning(state) => {
            if *state == VersioningState::Unversioned {
                return Ok(Err(MetaError::InvalidArgument(
                    "versioning can be Enabled or Suspended, not turned off".into(),
                )));
            }
            if *state == VersioningState::Suspended && object_lock(kv, bucket)?.is_some() {
                return Ok(Err(MetaError::InvalidBucketState(format!(
                    "bucket {bucket} has Object Lock: versioning cannot be suspended"
                ))));
            }
            let mut history = versioning(kv, bucket)?;
            history.set(log_index, *state);
            put(
                out,
                keys::bucket_setting(bucket, SettingKind::Versioning),
                &history,
            );
        }
        BucketSetting::ObjectLock(config) => {
            if versioning(kv, bucket)?.current() != VersioningState::Enabled {
                return Ok(Err(MetaError::InvalidBucketState(format!(
                    "bucket {bucket}: enable versioning before Object Lock"
                ))));
            }
            if let Some((_, days)) = config.default_retention
                && (days == 0 || u64::from(days) * DAY_MS > MAX_RETENTION_MS)
            {
                return Ok(Err(MetaError::InvalidArgument(
                    "default retention must be 1 day to 100 years".into(),
                )));
            }
            put(
                out,
                keys::bucket_setting(bucket, SettingKind::ObjectLock),
                config,
            );
        }
        BucketSetting::Tags(tags) => {
            if let Err(e) = validate_tags(tags, 50) {
                return Ok(Err(MetaError::InvalidArgument(e)));
            }
            put(out, keys::bucket_setting(bucket, SettingKind::Tags), tags);
        }
        BucketSetting::Cors(rules) => {
            if rules.is_empty() || rules.len() > 100 {
                return Ok(Err(MetaError::InvalidArgument(
                    "a CORS configuration has 1 to 100 rules".into(),
                )));
            }
            put(out, keys::bucket_setting(bucket, SettingKind::Cors), rules);
        }
        BucketSetting::Policy(text) => {
            put(out, keys::bucket_setting(bucket, SettingKind::Policy), text);
        }
        BucketSetting::Lifecycle(rules) => {
            if rules.is_empty() || rules.len() > 1000 {
                return Ok(Err(MetaError::InvalidArgument(
                    "a lifecycle configuration has 1 to 1000 rules".into(),
                )));
            }
            put(
                out,
                keys::bucket_setting(bucket, SettingKind::Lifecycle),
                rules,
            );
        }
    }
    Ok(Ok(()))
}

/// DeleteObject without a version id.
fn delete_current(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    now_ms: u64,
    log_index: u64,
) -> Outcome<ObjectCommandReply> {
    let existed = kv.get(&keys::object(bucket, key))?.is_some();
    let history = match make_room(kv, out, bucket, key, now_ms, log_index)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if history.current() == VersioningState::Unversioned {
        return Ok(Ok(ObjectCommandReply::Deleted {
            version_id: existed.then(|| NULL_VERSION_ID.to_string()),
            delete_marker: false,
        }));
    }
    put(
        out,
        keys::version(bucket, key, log_index),
        &NoncurrentVersion {
            noncurrent_since_ms: now_ms,
            entry: VersionEntry::DeleteMarker {
                version_id: version_id(log_index),
                last_modified_ms: now_ms,
            },
        },
    );
    Ok(Ok(ObjectCommandReply::Deleted {
        version_id: Some(history.s3_version_id(log_index)),
        delete_marker: true,
    }))
}

/// DeleteObject with a version id: removes that version for good.
#[allow(clippy::too_many_arguments)]
fn delete_version(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    s3_id: &str,
    bypass_governance: bool,
    now_ms: u64,
    log_index: u64,
) -> Outcome<ObjectCommandReply> {
    let history = versioning(kv, bucket)?;
    let found = match find(kv, bucket, key, s3_id, &history)? {
        Err(e) => return Ok(Err(e)),
        // S3 answers a delete of a version that does not exist with success.
        Ok(None) => {
            return Ok(Ok(ObjectCommandReply::Deleted {
                version_id: Some(s3_id.to_string()),
                delete_marker: false,
            }));
        }
        Ok(Some(found)) => found,
    };
    match found {
        Found::Current(object) => {
            let seq = seq_of(&object.version_id)?;
            if let Err(e) = check_removable(kv, bucket, key, seq, now_ms, bypass_governance)? {
                return Ok(Err(e));
            }
            retire(out, &object, format!("{bucket}/{key}"), now_ms, log_index);
            drop_attrs(out, bucket, key, seq);
            out.push(Mutation::Delete(keys::object(bucket, key)));
            promote(kv, out, bucket, key, seq)?;
            Ok(Ok(ObjectCommandReply::Deleted {
                version_id: Some(history.s3_version_id(seq)),
                delete_marker: false,
            }))
        }
        Found::Noncurrent(seq, version) => {
            let is_marker = matches!(version.entry, VersionEntry::DeleteMarker { .. });
            if !is_marker
                && let Err(e) = check_removable(kv, bucket, key, seq, now_ms, bypass_governance)?
            {
                return Ok(Err(e));
            }
            let newest = kv.get(&keys::object(bucket, key))?.is_none()
                && noncurrent(kv, bucket, key, 1)?.first().map(|(s, _)| *s) == Some(seq);
            remove_noncurrent(out, bucket, key, seq, &version, now_ms, log_index);
            if newest {
                promote(kv, out, bucket, key, seq)?;
            }
            Ok(Ok(ObjectCommandReply::Deleted {
                version_id: Some(history.s3_version_id(seq)),
                delete_marker: is_marker,
            }))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn set_attr(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    s3_id: Option<&str>,
    change: &VersionAttrChange,
    bypass_governance: bool,
    now_ms: u64,
) -> Outcome<ObjectCommandReply> {
    let history = versioning(kv, bucket)?;
    let entry = match s3_id {
        None => read::<ObjectVersion>(kv, &keys::object(bucket, key))?.map(VersionEntry::Object),
        Some(id) => match find(kv, bucket, key, id, &history)? {
            Err(e) => return Ok(Err(e)),
            Ok(found) => found.map(|f| match f {
                Found::Current(v) => VersionEntry::Object(v),
                Found::Noncurrent(_, v) => v.entry,
            }),
        },
    };
    let seq = match entry {
        None if s3_id.is_some() => {
            return Ok(Err(MetaError::NoSuchVersion(format!(
                "{bucket}/{key} has no version {}",
                s3_id.unwrap_or_default()
            ))));
        }
        None => {
            return Ok(Err(MetaError::NoSuchKey {
                bucket: bucket.to_string(),
                key: key.to_string(),
            }));
        }
        Some(VersionEntry::DeleteMarker { .. }) => {
            return Ok(Err(MetaError::MethodNotAllowed(
                "the version is a delete marker".into(),
            )));
        }
        Some(VersionEntry::Object(v)) => seq_of(&v.version_id)?,
    };
    let lock_key = keys::version_attr(bucket, key, seq, AttrKind::Lock);
    match change {
        VersionAttrChange::Retention(new) => {
            if object_lock(kv, bucket)?.is_none() {
                return Ok(Err(no_lock_configuration(bucket)));
            }
            if let Some(r) = new
                && let Err(e) = check_retain_until(*r, now_ms)
            {
                return Ok(Err(e));
            }
            let mut lock = version_lock(kv, bucket, key, seq)?;
            if let Err(e) = lock.check_retention_change(*new, now_ms, bypass_governance) {
                return Ok(Err(MetaError::ObjectLocked(format!("{bucket}/{key}: {e}"))));
            }
            lock.retention = *new;
            put(out, lock_key, &lock);
        }
        VersionAttrChange::LegalHold(on) => {
            if object_lock(kv, bucket)?.is_none() {
                return Ok(Err(no_lock_configuration(bucket)));
            }
            let mut lock = version_lock(kv, bucket, key, seq)?;
            lock.legal_hold = *on;
            put(out, lock_key, &lock);
        }
        VersionAttrChange::Tags(tags) => {
            let tags_key = keys::version_attr(bucket, key, seq, AttrKind::Tags);
            match tags {
                Some(tags) => {
                    if let Err(e) = validate_tags(tags, 10) {
                        return Ok(Err(MetaError::InvalidArgument(e)));
                    }
                    put(out, tags_key, tags);
                }
                None => out.push(Mutation::Delete(tags_key)),
            }
        }
    }
    Ok(Ok(ObjectCommandReply::Done))
}

/// Whether a bucket holds any version (current or not).
pub fn has_versions(kv: &impl KvRead, bucket: &BucketName) -> Result<bool, KvError> {
    let prefix = keys::bucket_versions_prefix(bucket);
    let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
    let mut any = false;
    kv.scan(&prefix, &end, &mut |_, _| {
        any = true;
        false
    })?;
    Ok(any)
}

/// Removes every setting of a deleted bucket, so that a bucket created later under the
/// same name starts clean.
pub fn drop_settings(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
) -> Result<(), KvError> {
    let prefix = keys::bucket_settings_prefix(bucket);
    let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
    kv.scan(&prefix, &end, &mut |k, _| {
        out.push(Mutation::Delete(k.to_vec()));
        true
    })
}

/// Moves a shard of a noncurrent version (compare and set on its node).
pub fn move_noncurrent_shard(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    owner: &VersionOwner,
    edit: impl FnOnce(&mut ObjectVersion) -> Outcome<()>,
) -> Outcome<()> {
    let key = keys::version(&owner.bucket, &owner.key, owner.seq);
    let Some(mut version) = read::<NoncurrentVersion>(kv, &key)? else {
        return Err(KvError(format!(
            "version stripe index names missing version {}/{}@{}",
            owner.bucket, owner.key, owner.seq
        )));
    };
    let VersionEntry::Object(object) = &mut version.entry else {
        return Err(KvError("version stripe index names a delete marker".into()));
    };
    if let Err(e) = edit(object)? {
        return Ok(Err(e));
    }
    put(out, key, &version);
    Ok(Ok(()))
}
