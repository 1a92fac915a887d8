//! Reads of the state machine: pure functions over [`KvRead`].

use lauscha_core::model::{ListObjectsQuery, ObjectListing, ObjectSummary, Stripe};
use lauscha_core::{
    AccessKey, AccessKeyId, Bucket, BucketName, ClusterMap, MultipartUpload, ObjectVersion,
    Permission, PlacementPolicy, StripeId, TenantId, UploadPart,
};
use serde::Deserialize;

use crate::apply::{GarbageRecord, StripeOwner, read};
use crate::keys::SettingKind;
use crate::keys::{self, Table};
use crate::kv::{KvError, KvRead};
use crate::value;
use crate::versions::{self, VersionOwner};
use lauscha_core::versioning::{
    BucketSettings, LifecycleRule, ListVersionsQuery, NoncurrentVersion, VersionEntry,
    VersionListing, VersionView, version_seq,
};

/// An access key by id.
pub fn get_access_key(kv: &impl KvRead, id: &AccessKeyId) -> Result<Option<AccessKey>, KvError> {
    read(kv, &keys::access_key(id))
}

/// A bucket by name.
pub fn get_bucket(kv: &impl KvRead, name: &BucketName) -> Result<Option<Bucket>, KvError> {
    read(kv, &keys::bucket(name))
}

/// Whether a tenant exists.
pub fn tenant_exists(kv: &impl KvRead, id: &TenantId) -> Result<bool, KvError> {
    Ok(kv.get(&keys::tenant(id))?.is_some())
}

/// The buckets of a tenant, by name.
pub fn list_buckets(kv: &impl KvRead, tenant: &TenantId) -> Result<Vec<Bucket>, KvError> {
    let prefix = keys::tenant_buckets_prefix(tenant);
    let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
    let mut names = Vec::new();
    let mut bad_key = None;
    kv.scan(&prefix, &end, &mut |k, _| {
        match std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|s| BucketName::parse(s).ok())
        {
            Some(name) => names.push(name),
            None => bad_key = Some(k.to_vec()),
        }
        bad_key.is_none()
    })?;
    if let Some(k) = bad_key {
        return Err(KvError(format!("bad bucket index key {k:?}")));
    }
    let mut buckets = Vec::with_capacity(names.len());
    for name in names {
        let bucket = get_bucket(kv, &name)?
            .ok_or_else(|| KvError(format!("bucket index names missing bucket {name}")))?;
        buckets.push(bucket);
    }
    Ok(buckets)
}

/// The current version of an object.
pub fn get_object(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
) -> Result<Option<ObjectVersion>, KvError> {
    read(kv, &keys::object(bucket, key))
}

/// The cluster map (empty before any node registered).
pub fn cluster_map(kv: &impl KvRead) -> Result<ClusterMap, KvError> {
    Ok(read(kv, &keys::cluster_map())?.unwrap_or_default())
}

/// A stripe as maintenance sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeEntry {
    /// What holds it, for logs: `bucket/key` or `volume NAME extent N`.
    pub owner: String,
    /// The stripe and its shard locations.
    pub stripe: Stripe,
    /// The policy of the object's bucket.
    pub policy: PlacementPolicy,
}

/// Where a stripe's version is.
enum Holder {
    /// A volume's extent or journal entry (the reference count).
    Volume,
    Current(StripeOwner),
    Noncurrent(VersionOwner),
}

/// Up to `limit` entries of one stripe index after `after`, in stripe-id order.
fn scan_index<T: serde::de::DeserializeOwned>(
    kv: &impl KvRead,
    table: Table,
    key_of: fn(StripeId) -> Vec<u8>,
    after: Option<StripeId>,
    limit: usize,
) -> Result<Vec<(StripeId, T)>, KvError> {
    let (table_start, end) = keys::table_range(table);
    let start = match after {
        Some(id) => {
            let mut k = key_of(id);
            k.push(0);
            k
        }
        None => table_start,
    };
    let mut index = Vec::new();
    let mut error = None;
    kv.scan(&start, &end, &mut |k, v| {
        match (keys::parse_stripe_index(k), value::decode::<T>(v)) {
            (Some(id), Ok(owner)) => index.push((id, owner)),
            _ => error = Some(KvError(format!("bad stripe index entry {k:?}"))),
        }
        error.is_none() && index.len() < limit
    })?;
    match error {
        Some(e) => Err(e),
        None => Ok(index),
    }
}

/// Up to `limit` stripes of stored versions (current and noncurrent) after `after`, in
/// stripe-id order.
pub fn list_stripes(
    kv: &impl KvRead,
    after: Option<StripeId>,
    limit: usize,
) -> Result<Vec<StripeEntry>, KvError> {
    let mut index: Vec<(StripeId, Holder)> =
        scan_index::<StripeOwner>(kv, Table::StripeIndex, keys::stripe_index, after, limit)?
            .into_iter()
            .map(|(id, o)| (id, Holder::Current(o)))
            .chain(
                scan_index::<VersionOwner>(
                    kv,
                    Table::VersionStripe,
                    keys::version_stripe,
                    after,
                    limit,
                )?
                .into_iter()
                .map(|(id, o)| (id, Holder::Noncurrent(o))),
            )
            .chain(
                scan_index::<u32>(kv, Table::VolumeStripe, keys::volume_stripe, after, limit)?
                    .into_iter()
                    .map(|(id, _)| (id, Holder::Volume)),
            )
            .collect();
    index.sort_by_key(|(id, _)| *id);
    index.truncate(limit);
    let mut versions: std::collections::HashMap<(BucketName, String, Option<u64>), ObjectVersion> =
        std::collections::HashMap::new();
    let mut policies: std::collections::HashMap<BucketName, PlacementPolicy> =
        std::collections::HashMap::new();
    let mut out = Vec::with_capacity(index.len());
    for (id, holder) in index {
        let (owner, seq) = match holder {
            Holder::Volume => {
                if let Some((label, stripe, policy)) = crate::volumes::maintained_stripe(kv, id)? {
                    out.push(StripeEntry {
                        owner: label,
                        stripe,
                        policy,
                    });
                }
                continue;
            }
            Holder::Current(o) => (o, None),
            Holder::Noncurrent(v) => (
                StripeOwner {
                    bucket: v.bucket,
                    key: v.key,
                },
                Some(v.seq),
            ),
        };
        let name = (owner.bucket.clone(), owner.key.clone(), seq);
        if !versions.contains_key(&name) {
            let version = match seq {
                None => get_object(kv, &owner.bucket, &owner.key)?,
                Some(seq) => {
                    read::<NoncurrentVersion>(kv, &keys::version(&owner.bucket, &owner.key, seq))?
                        .and_then(|v| match v.entry {
                            VersionEntry::Object(o) => Some(o),
                            VersionEntry::DeleteMarker { .. } => None,
                        })
                }
            }
            .ok_or_else(|| {
                KvError(format!(
                    "stripe {id} indexed under missing version {}/{} {seq:?}",
                    owner.bucket, owner.key
                ))
            })?;
            versions.insert(name.clone(), version);
        }
        let policy = match policies.get(&owner.bucket) {
            Some(p) => *p,
            None => {
                let bucket = get_bucket(kv, &owner.bucket)?
                    .ok_or_else(|| KvError(format!("object in missing bucket {}", owner.bucket)))?;
                policies.insert(owner.bucket.clone(), bucket.policy);
                bucket.policy
            }
        };
        let stripe = versions[&name]
            .stripes()
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| KvError(format!("stripe {id} indexed but not in its version")))?;
        out.push(StripeEntry {
            owner: format!("{}/{}", owner.bucket, owner.key),
            stripe,
            policy,
        });
    }
    Ok(out)
}

/// Every setting of a bucket.
pub fn bucket_settings(kv: &impl KvRead, bucket: &BucketName) -> Result<BucketSettings, KvError> {
    let get = |kind| keys::bucket_setting(bucket, kind);
    Ok(BucketSettings {
        versioning: read(kv, &get(SettingKind::Versioning))?.unwrap_or_default(),
        object_lock: read(kv, &get(SettingKind::ObjectLock))?,
        tags: read(kv, &get(SettingKind::Tags))?,
        cors: read(kv, &get(SettingKind::Cors))?,
        policy: read(kv, &get(SettingKind::Policy))?,
        lifecycle: read(kv, &get(SettingKind::Lifecycle))?,
    })
}

/// Buckets with lifecycle rules, with their owners.
pub fn lifecycle_buckets(
    kv: &impl KvRead,
) -> Result<Vec<(BucketName, TenantId, Vec<LifecycleRule>)>, KvError> {
    let (start, end) = keys::table_range(Table::BucketSetting);
    let mut found = Vec::new();
    let mut error = None;
    kv.scan(&start, &end, &mut |k, v| {
        let rest = &k[3..];
        if rest.last() != Some(&(SettingKind::Lifecycle as u8)) || rest.len() < 2 {
            return true;
        }
        let name = &rest[..rest.len() - 2];
        match (
            std::str::from_utf8(name)
                .ok()
                .and_then(|n| BucketName::parse(n).ok()),
            value::decode::<Vec<LifecycleRule>>(v),
        ) {
            (Some(name), Ok(rules)) => found.push((name, rules)),
            _ => error = Some(KvError(format!("bad lifecycle setting {k:?}"))),
        }
        error.is_none()
    })?;
    if let Some(e) = error {
        return Err(e);
    }
    let mut out = Vec::with_capacity(found.len());
    for (name, rules) in found {
        if let Some(bucket) = get_bucket(kv, &name)? {
            out.push((name, bucket.tenant, rules));
        }
    }
    Ok(out)
}

/// Where a versions listing continues: lower bounds in the object and version tables.
struct VersionCursor {
    object_from: Vec<u8>,
    version_from: Vec<u8>,
}

/// The first key at or after `from` in a table whose keys are `base` + object key (+ more
/// for the version table), below `end`.
fn next_key(
    kv: &impl KvRead,
    from: &[u8],
    end: &[u8],
    base_len: usize,
    versions: bool,
) -> Result<Option<String>, KvError> {
    let mut found = None;
    kv.scan(from, end, &mut |k, _| {
        let rest = &k[base_len..];
        let name = if versions && rest.len() >= 9 {
            &rest[..rest.len() - 9]
        } else {
            rest
        };
        found = Some(String::from_utf8_lossy(name).into_owned());
        false
    })?;
    Ok(found)
}

/// One page of ListObjectVersions: keys in order, each key's versions newest first (the
/// current object, then the version table), common prefixes rolled up with a delimiter.
/// Each step costs a seek per table, so a page costs O(page size) seeks however many
/// versions or keys the bucket holds.
pub fn list_versions(kv: &impl KvRead, q: &ListVersionsQuery) -> Result<VersionListing, KvError> {
    let mut listing = VersionListing::default();
    let max = q.max_keys as usize;
    if max == 0 {
        return Ok(listing);
    }
    let history = versions::versioning(kv, &q.bucket)?;
    let object_base = keys::bucket_objects_prefix(&q.bucket);
    let version_base = keys::bucket_versions_prefix(&q.bucket);
    let with_prefix = |base: &[u8]| {
        let mut k = base.to_vec();
        k.extend_from_slice(q.prefix.as_bytes());
        k
    };
    let object_end = keys::prefix_end(&with_prefix(&object_base)).expect("NUL in prefix");
    let version_end = keys::prefix_end(&with_prefix(&version_base)).expect("NUL in prefix");
    let join = |base: &[u8], tail: &[u8]| {
        let mut k = base.to_vec();
        k.extend_from_slice(tail);
        k
    };
    let delimiter = q.delimiter.as_deref().filter(|d| !d.is_empty());
    let after_key = |key: &str| VersionCursor {
        object_from: join(&object_base, &[key.as_bytes(), &[0]].concat()),
        version_from: join(&version_base, &[key.as_bytes(), &[1]].concat()),
    };
    let mut cursor = VersionCursor {
        object_from: with_prefix(&object_base),
        version_from: with_prefix(&version_base),
    };
    // A page that ended inside a key continues with that key's next version.
    let mut resume: Option<(String, String)> = None;
    if let Some(marker) = &q.key_marker {
        let next = match &q.version_id_marker {
            Some(v) => {
                resume = Some((marker.clone(), v.clone()));
                VersionCursor {
                    object_from: join(&object_base, marker.as_bytes()),
                    version_from: join(&version_base, marker.as_bytes()),
                }
            }
            None if delimiter.is_some_and(|d| marker.ends_with(d)) => VersionCursor {
                object_from: keys::prefix_end(&join(&object_base, marker.as_bytes()))
                    .expect("NUL in prefix"),
                version_from: keys::prefix_end(&join(&version_base, marker.as_bytes()))
                    .expect("NUL in prefix"),
            },
            None => after_key(marker),
        };
        cursor.object_from = cursor.object_from.max(next.object_from);
        cursor.version_from = cursor.version_from.max(next.version_from);
    }
    let mut n = 0usize;
    loop {
        let a = next_key(
            kv,
            &cursor.object_from,
            &object_end,
            object_base.len(),
            false,
        )?;
        let b = next_key(
            kv,
            &cursor.version_from,
            &version_end,
            version_base.len(),
            true,
        )?;
        let key = match (a, b) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (Some(a), Some(b)) => a.min(b),
        };
        if let Some(d) = delimiter
            && let Some(pos) = key[q.prefix.len()..].find(d)
        {
            let common = &key[..q.prefix.len() + pos + d.len()];
            if n == max {
                listing.is_truncated = true;
                break;
            }
            listing.common_prefixes.push(common.to_string());
            listing.next_key_marker = Some(common.to_string());
            listing.next_version_id_marker = None;
            n += 1;
            cursor = VersionCursor {
                object_from: keys::prefix_end(&join(&object_base, common.as_bytes()))
                    .expect("NUL in prefix"),
                version_from: keys::prefix_end(&join(&version_base, common.as_bytes()))
                    .expect("NUL in prefix"),
            };
            continue;
        }
        // This key's versions, newest first, skipping those up to a resume marker.
        let current = get_object(kv, &q.bucket, &key)?;
        let mut skip_until = resume.take().filter(|(k, _)| *k == key).map(|(_, v)| v);
        let mut entries: Vec<(u64, VersionEntry)> = Vec::new();
        if let Some(c) = current {
            let seq = version_seq(&c.version_id)
                .ok_or_else(|| KvError(format!("stored version id {:?}", c.version_id)))?;
            entries.push((seq, VersionEntry::Object(c)));
        }
        let mut version_from = keys::key_versions_prefix(&q.bucket, &key);
        // Only the first version of a key, in full, is its latest.
        let mut seeked = false;
        if let Some(marker) = &skip_until
            && let Some(seq) = version_seq(marker)
            && entries.first().is_none_or(|(s, _)| *s != seq)
        {
            // Seek straight behind the marker version.
            entries.clear();
            let mut from = keys::version(&q.bucket, &key, seq);
            from.push(0);
            version_from = from;
            skip_until = None;
            seeked = true;
        }
        let version_to =
            keys::prefix_end(&keys::key_versions_prefix(&q.bucket, &key)).expect("NUL in prefix");
        let mut stop = false;
        let mut position = usize::from(seeked);
        let mut emit = |seq: u64, entry: VersionEntry, listing: &mut VersionListing| -> bool {
            let s3_id = history.s3_version_id(seq);
            let is_latest = position == 0;
            position += 1;
            if let Some(marker) = &skip_until {
                if *marker == s3_id {
                    skip_until = None;
                }
                return true;
            }
            if n == max {
                listing.is_truncated = true;
                stop = true;
                return false;
            }
            listing.next_key_marker = Some(key.clone());
            listing.next_version_id_marker = Some(s3_id.clone());
            listing.versions.push(VersionView {
                key: key.clone(),
                s3_version_id: s3_id,
                is_latest,
                entry,
            });
            n += 1;
            true
        };
        let mut go_on = true;
        for (seq, entry) in entries {
            go_on = emit(seq, entry, &mut listing);
        }
        if go_on {
            let mut error = None;
            kv.scan(&version_from, &version_to, &mut |k, v| match (
                keys::parse_version(&q.bucket, k),
                value::decode::<NoncurrentVersion>(v),
            ) {
                (Some((_, seq)), Ok(nv)) => emit(seq, nv.entry, &mut listing),
                _ => {
                    error = Some(KvError(format!("bad version entry {k:?}")));
                    false
                }
            })?;
            if let Some(e) = error {
                return Err(e);
            }
        }
        if stop {
            break;
        }
        cursor = after_key(&key);
    }
    if !listing.is_truncated {
        listing.next_key_marker = None;
        listing.next_version_id_marker = None;
    }
    Ok(listing)
}

/// Queued repairs, oldest stripe id first.
pub fn list_repairs(kv: &impl KvRead, limit: usize) -> Result<Vec<(StripeId, u8)>, KvError> {
    let (start, end) = keys::table_range(Table::RepairQueue);
    let mut out = Vec::new();
    kv.scan(&start, &end, &mut |k, _| {
        if let Some(entry) = keys::parse_repair(k) {
            out.push(entry);
        }
        out.len() < limit
    })?;
    Ok(out)
}

/// Whether each stripe is referenced by a current version or waits in a garbage record.
pub fn stripes_known(kv: &impl KvRead, ids: &[StripeId]) -> Result<Vec<bool>, KvError> {
    ids.iter()
        .map(|id| Ok(referenced(kv, *id)? || kv.get(&keys::garbage_stripe(*id))?.is_some()))
        .collect()
}

/// Whether the shards of each stripe may be deleted for the garbage record `garbage_key`:
/// nothing keeps the stripe (a current version, an upload's part, a volume's extent or
/// journal entry), and no newer garbage record lists it (whose grace period it then
/// waits out).
pub fn stripes_collectable(
    kv: &impl KvRead,
    garbage_key: &[u8],
    ids: &[StripeId],
) -> Result<Vec<bool>, KvError> {
    ids.iter()
        .map(|id| {
            let record = kv.get(&keys::garbage_stripe(*id))?;
            Ok(!referenced(kv, *id)? && record.as_deref().is_none_or(|r| r == garbage_key))
        })
        .collect()
}

fn referenced(kv: &impl KvRead, id: StripeId) -> Result<bool, KvError> {
    Ok(kv.get(&keys::stripe_index(id))?.is_some()
        || kv.get(&keys::version_stripe(id))?.is_some()
        || kv.get(&keys::volume_stripe(id))?.is_some()
        || kv.get(&keys::part_stripe(id))?.is_some())
}

/// Garbage records created before `older_than_ms`, oldest first, with their keys.
pub fn garbage_before(
    kv: &impl KvRead,
    older_than_ms: u64,
    limit: usize,
) -> Result<Vec<(Vec<u8>, GarbageRecord)>, KvError> {
    let (start, _) = keys::table_range(Table::Garbage);
    let end = keys::garbage(older_than_ms, 0);
    let mut out = Vec::new();
    let mut error = None;
    kv.scan(&start, &end, &mut |k, v| {
        match value::decode(v) {
            Ok(r) => out.push((k.to_vec(), r)),
            Err(e) => error = Some(KvError(e.to_string())),
        }
        error.is_none() && out.len() < limit
    })?;
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The oldest `limit` garbage records.
pub fn garbage(kv: &impl KvRead, limit: usize) -> Result<Vec<GarbageRecord>, KvError> {
    let (start, end) = keys::table_range(Table::Garbage);
    let mut records = Vec::new();
    let mut error = None;
    kv.scan(&start, &end, &mut |_, v| {
        match value::decode(v) {
            Ok(r) => records.push(r),
            Err(e) => error = Some(KvError(e.to_string())),
        }
        error.is_none() && records.len() < limit
    })?;
    match error {
        Some(e) => Err(e),
        None => Ok(records),
    }
}

/// The leading fields of an encoded [`ObjectVersion`]: postcard is positional, so a
/// listing decodes these without touching the stripe list behind them.
#[derive(Deserialize)]
struct VersionHead {
    _version_id: String,
    size_bytes: u64,
    etag: String,
    last_modified_ms: u64,
}

fn summary(key: &str, bytes: &[u8]) -> Result<ObjectSummary, KvError> {
    let head: VersionHead =
        value::decode_prefix(bytes).map_err(|e| KvError(format!("object {key}: {e}")))?;
    Ok(ObjectSummary {
        key: key.to_string(),
        size_bytes: head.size_bytes,
        etag: head.etag,
        last_modified_ms: head.last_modified_ms,
    })
}

/// One page of a listing, with S3's semantics: keys in UTF-8 byte order, starting strictly
/// after `start_after`; with a delimiter, keys that contain it after the prefix are rolled
/// up into common prefixes, each counted once against `max_keys`. A common prefix at or
/// before `start_after` is not repeated, so a page that ended on a common prefix continues
/// behind all of its keys.
pub fn list_objects(kv: &impl KvRead, q: &ListObjectsQuery) -> Result<ObjectListing, KvError> {
    let mut listing = ObjectListing::default();
    let max_keys = q.max_keys as usize;
    if max_keys == 0 {
        return Ok(listing);
    }
    let base = keys::bucket_objects_prefix(&q.bucket);
    let mut scan_prefix = base.clone();
    scan_prefix.extend_from_slice(q.prefix.as_bytes());
    let end = keys::prefix_end(&scan_prefix).expect("bucket prefix contains a NUL byte");
    let mut start = scan_prefix.clone();
    if let Some(after) = &q.start_after {
        // The successor of `after`: no key contains NUL, so after + NUL is the next key.
        let mut successor = base.clone();
        successor.extend_from_slice(after.as_bytes());
        successor.push(0);
        start = start.max(successor);
    }
    let delimiter = q.delimiter.as_deref().filter(|d| !d.is_empty());
    let mut n_emitted = 0usize;
    let mut last_emitted: Option<String> = None;
    let mut error: Option<KvError> = None;
    loop {
        let mut seek_to: Option<Vec<u8>> = None;
        kv.scan(&start, &end, &mut |k, v| {
            let Ok(key) = std::str::from_utf8(&k[base.len()..]) else {
                error = Some(KvError(format!("object key is not UTF-8: {k:?}")));
                return false;
            };
            let rolled_up = delimiter.and_then(|d| {
                key[q.prefix.len()..]
                    .find(d)
                    .map(|pos| &key[..q.prefix.len() + pos + d.len()])
            });
            if let Some(common_prefix) = rolled_up {
                // Every key under this prefix is covered by it: continue behind them all.
                // 0xFF never occurs in UTF-8, so prefix + 0xFF is past every such key.
                let mut past = base.clone();
                past.extend_from_slice(common_prefix.as_bytes());
                past.push(0xFF);
                seek_to = Some(past);
                if q.start_after
                    .as_deref()
                    .is_some_and(|after| common_prefix <= after)
                {
                    return false;
                }
                if n_emitted == max_keys {
                    listing.is_truncated = true;
                    seek_to = None;
                    return false;
                }
                listing.common_prefixes.push(common_prefix.to_string());
                last_emitted = Some(common_prefix.to_string());
                n_emitted += 1;
                return false;
            }
            if n_emitted == max_keys {
                listing.is_truncated = true;
                return false;
            }
            match summary(key, v) {
                Ok(s) => listing.objects.push(s),
                Err(e) => {
                    error = Some(e);
                    return false;
                }
            }
            last_emitted = Some(key.to_string());
            n_emitted += 1;
            true
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        match seek_to {
            Some(next) if next < end => start = next,
            _ => break,
        }
    }
    if listing.is_truncated {
        listing.next_marker = last_emitted;
    }
    Ok(listing)
}

/// An upload in progress.
pub fn get_upload(
    kv: &impl KvRead,
    bucket: &BucketName,
    key: &str,
    upload_id: &str,
) -> Result<Option<MultipartUpload>, KvError> {
    read(kv, &keys::upload(bucket, key, upload_id))
}

/// Up to `limit` parts of an upload with numbers above `after`, and whether more follow.
pub fn list_parts(
    kv: &impl KvRead,
    upload_id: &str,
    after: u32,
    limit: usize,
) -> Result<(Vec<UploadPart>, bool), KvError> {
    let prefix = keys::parts_prefix(upload_id);
    let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
    let start = keys::part(upload_id, after.saturating_add(1));
    let mut parts = Vec::new();
    let mut more = false;
    let mut failure = None;
    kv.scan(&start, &end, &mut |_, v| {
        if parts.len() == limit {
            more = true;
            return false;
        }
        match value::decode::<UploadPart>(v) {
            Ok(p) => {
                parts.push(p);
                true
            }
            Err(e) => {
                failure = Some(KvError(format!("part of upload {upload_id}: {e}")));
                false
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok((parts, more)),
    }
}

/// Up to `limit` uploads in progress of a bucket whose keys start with `prefix`, after
/// (key, upload id) `after` (an empty upload id: after every upload of that key), in
/// (key, upload id) order, and whether more follow.
pub fn list_uploads(
    kv: &impl KvRead,
    bucket: &BucketName,
    prefix: &str,
    after: Option<(&str, &str)>,
    limit: usize,
) -> Result<(Vec<MultipartUpload>, bool), KvError> {
    let bucket_prefix = keys::bucket_uploads_prefix(bucket);
    let end = keys::prefix_end(&bucket_prefix).expect("prefix ends in NUL");
    let start = match after {
        // Keys after this one (as S3: a key marker without an upload-id marker).
        Some((key, "")) => {
            let mut k = bucket_prefix.clone();
            k.extend_from_slice(key.as_bytes());
            k.push(1);
            k
        }
        // Just after that upload.
        Some((key, upload_id)) => {
            let mut k = keys::upload(bucket, key, upload_id);
            k.push(0);
            k
        }
        None => {
            let mut k = bucket_prefix.clone();
            k.extend_from_slice(prefix.as_bytes());
            k
        }
    };
    let mut uploads = Vec::new();
    let mut more = false;
    let mut failure = None;
    kv.scan(
        &start,
        &end,
        &mut |_, v| match value::decode::<MultipartUpload>(v) {
            Ok(u) if !u.key.starts_with(prefix) => u.key.as_str() < prefix,
            Ok(u) => {
                if uploads.len() == limit {
                    more = true;
                    return false;
                }
                uploads.push(u);
                true
            }
            Err(e) => {
                failure = Some(KvError(format!("upload in {bucket}: {e}")));
                false
            }
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok((uploads, more)),
    }
}

/// Up to `limit` uploads of any bucket that started before `started_before_ms`, with
/// their buckets.
pub fn stale_uploads(
    kv: &impl KvRead,
    started_before_ms: u64,
    limit: usize,
) -> Result<Vec<(BucketName, MultipartUpload)>, KvError> {
    let (start, end) = keys::table_range(Table::Upload);
    let mut found = Vec::new();
    let mut failure = None;
    kv.scan(&start, &end, &mut |k, v| {
        let bucket = k
            .get(start.len()..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|b| BucketName::parse(b).ok());
        match (bucket, value::decode::<MultipartUpload>(v)) {
            (Some(bucket), Ok(u)) => {
                if u.initiated_ms < started_before_ms {
                    found.push((bucket, u));
                }
                found.len() < limit
            }
            (_, Err(e)) => {
                failure = Some(KvError(format!("upload: {e}")));
                false
            }
            (None, _) => {
                failure = Some(KvError("upload key without a bucket".into()));
                false
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// The grants of an access key by bucket, if it is limited (it ever had a grant);
/// `None` for a key that may do everything in its tenant's buckets.
pub fn key_grants(
    kv: &impl KvRead,
    id: &AccessKeyId,
) -> Result<Option<Vec<(BucketName, Permission)>>, KvError> {
    let prefix = keys::key_grants_prefix(id);
    if kv.get(&prefix)?.is_none() {
        return Ok(None);
    }
    let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
    let mut grants = Vec::new();
    let mut failure = None;
    kv.scan(&prefix, &end, &mut |k, v| {
        if k.len() == prefix.len() {
            return true; // the "limited" marker
        }
        let bucket = std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|b| BucketName::parse(b).ok());
        match (bucket, value::decode::<Permission>(v)) {
            (Some(b), Ok(p)) => {
                grants.push((b, p));
                true
            }
            _ => {
                failure = Some(KvError(format!("grant of key {id}: undecodable")));
                false
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(Some(grants)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemKv;
    use lauscha_core::model::ObjectData;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn version(size: u64) -> ObjectVersion {
        ObjectVersion {
            version_id: "v".into(),
            size_bytes: size,
            etag: format!("etag{size}"),
            last_modified_ms: 7,
            content_type: None,
            headers: Default::default(),
            user_metadata: Default::default(),
            checksums: Default::default(),
            data: ObjectData::Inline(vec![0; size as usize]),
        }
    }

    fn kv_with(bucket: &BucketName, keys_: &[&str]) -> MemKv {
        let mut kv = MemKv::default();
        for (i, k) in keys_.iter().enumerate() {
            kv.map
                .insert(keys::object(bucket, k), value::encode(&version(i as u64)));
        }
        // A neighbouring bucket whose keys must never leak into listings.
        let other = BucketName::parse(&format!("{}x", bucket.as_str())).unwrap();
        kv.map
            .insert(keys::object(&other, "a/leak"), value::encode(&version(0)));
        kv
    }

    fn query(
        bucket: &BucketName,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: u32,
    ) -> ListObjectsQuery {
        ListObjectsQuery {
            bucket: bucket.clone(),
            prefix: prefix.into(),
            delimiter: delimiter.map(Into::into),
            start_after: after.map(Into::into),
            max_keys: max,
        }
    }

    /// The reference: S3 listing semantics written the slow, obvious way.
    fn reference(all: &BTreeSet<String>, q: &ListObjectsQuery) -> (Vec<String>, Vec<String>, bool) {
        let mut entries: Vec<(String, bool)> = Vec::new(); // (name, is_prefix)
        for k in all.iter().filter(|k| k.starts_with(&q.prefix)) {
            let rolled = q.delimiter.as_deref().and_then(|d| {
                k[q.prefix.len()..]
                    .find(d)
                    .map(|p| k[..q.prefix.len() + p + d.len()].to_string())
            });
            let entry = match rolled {
                Some(cp) => (cp, true),
                None => (k.clone(), false),
            };
            if entries.last() != Some(&entry) && !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        let after = q.start_after.clone().unwrap_or_default();
        let entries: Vec<(String, bool)> = entries
            .into_iter()
            .filter(|(name, _)| q.start_after.is_none() || *name > after)
            .collect();
        let page: Vec<&(String, bool)> = entries.iter().take(q.max_keys as usize).collect();
        let truncated = entries.len() > q.max_keys as usize && q.max_keys > 0;
        (
            page.iter().filter(|e| !e.1).map(|e| e.0.clone()).collect(),
            page.iter().filter(|e| e.1).map(|e| e.0.clone()).collect(),
            truncated,
        )
    }

    #[test]
    fn prefix_delimiter_and_pages() {
        let b = BucketName::parse("bkt").unwrap();
        let kv = kv_with(&b, &["a/1", "a/2", "a/b/3", "b/1", "c", "d/"]);
        let l = list_objects(&kv, &query(&b, "", Some("/"), None, 1000)).unwrap();
        assert_eq!(l.common_prefixes, ["a/", "b/", "d/"]);
        assert_eq!(
            l.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert!(!l.is_truncated);

        let l = list_objects(&kv, &query(&b, "a/", Some("/"), None, 1000)).unwrap();
        assert_eq!(
            l.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        assert_eq!(l.common_prefixes, ["a/b/"]);

        // Page through with max 1: a/ then b/ then c then d/.
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let l = list_objects(&kv, &query(&b, "", Some("/"), after.as_deref(), 1)).unwrap();
            seen.extend(l.common_prefixes.clone());
            seen.extend(l.objects.iter().map(|o| o.key.clone()));
            if !l.is_truncated {
                break;
            }
            after = l.next_marker;
        }
        assert_eq!(seen, ["a/", "b/", "c", "d/"]);
        assert_eq!(
            list_objects(&kv, &query(&b, "", None, None, 0)).unwrap(),
            ObjectListing::default()
        );
    }

    #[test]
    fn sizes_and_etags_come_from_the_version_head() {
        let b = BucketName::parse("bkt").unwrap();
        let kv = kv_with(&b, &["x", "y"]);
        let l = list_objects(&kv, &query(&b, "", None, None, 10)).unwrap();
        assert_eq!(l.objects[1].size_bytes, 1);
        assert_eq!(l.objects[1].etag, "etag1");
        assert_eq!(l.objects[1].last_modified_ms, 7);
    }

    proptest! {
        #[test]
        fn listing_matches_the_reference(
            keys_ in prop::collection::btree_set("[ab/]{1,5}", 0..30),
            prefix in "[ab/]{0,2}",
            use_delimiter in any::<bool>(),
            after in prop::option::of("[ab/]{0,4}"),
            max in 0u32..6,
        ) {
            let b = BucketName::parse("bkt").unwrap();
            let refs: Vec<&str> = keys_.iter().map(String::as_str).collect();
            let kv = kv_with(&b, &refs);
            let q = query(&b, &prefix, use_delimiter.then_some("/"), after.as_deref(), max);
            let got = list_objects(&kv, &q).unwrap();
            let (objects, prefixes, truncated) = reference(&keys_, &q);
            prop_assert_eq!(got.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>(), objects);
            prop_assert_eq!(got.common_prefixes, prefixes);
            prop_assert_eq!(got.is_truncated, truncated);
        }

        #[test]
        fn paging_visits_every_entry_once(
            keys_ in prop::collection::btree_set("[ab/]{1,6}", 0..40),
            use_delimiter in any::<bool>(),
            max in 1u32..5,
        ) {
            let b = BucketName::parse("bkt").unwrap();
            let refs: Vec<&str> = keys_.iter().map(String::as_str).collect();
            let kv = kv_with(&b, &refs);
            let delimiter = use_delimiter.then_some("/");
            let full = list_objects(&kv, &query(&b, "", delimiter, None, 10_000)).unwrap();
            let mut after: Option<String> = None;
            let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
            for _ in 0..100 {
                let l = list_objects(&kv, &query(&b, "", delimiter, after.as_deref(), max)).unwrap();
                objects.extend(l.objects.into_iter().map(|o| o.key));
                prefixes.extend(l.common_prefixes);
                if !l.is_truncated { break; }
                after = l.next_marker;
            }
            prop_assert_eq!(objects, full.objects.into_iter().map(|o| o.key).collect::<Vec<_>>());
            prop_assert_eq!(prefixes, full.common_prefixes);
        }
    }
}
