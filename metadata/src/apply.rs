//! The state machine's transition function: pure, deterministic, no RocksDB in sight.
//!
//! `apply` reads the current state through [`KvRead`] and returns the response and the
//! mutations; the caller writes them atomically together with the applied log id. The same
//! log applied to the same state gives the same mutations on every voter.

use lauscha_core::model::{MAX_PART_NUMBER, MIN_PART_BYTES};
use lauscha_core::model::{ObjectData, Stripe};
use lauscha_core::{
    AccessKey, Bucket, BucketName, ClusterMap, MultipartUpload, ObjectVersion, Tenant, UploadPart,
    WriteCondition,
};
use serde::{Deserialize, Serialize};

use crate::command::{MetaCommand, MetaError, MetaResponse, Proposal};
use crate::keys;
use crate::kv::{KvError, KvRead, Mutation};
use crate::value;
use crate::versions;
use lauscha_core::versioning::{
    ObjectCommand, ObjectCommandReply, ObjectLockConfig, VersionExtras, VersioningHistory,
    VersioningState, version_id,
};

/// Which object's current version holds a stripe (the stripe index's value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeOwner {
    /// The bucket.
    pub bucket: BucketName,
    /// The object key.
    pub key: String,
}

/// Stripes no committed version references any more, waiting for garbage collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GarbageRecord {
    /// Where the record came from (bucket/key), for logs.
    pub origin: String,
    /// The stripes and where their shards are.
    pub stripes: Vec<Stripe>,
}

/// How long the response to a request id is remembered: a client retrying later than this
/// may see its write applied twice. Retries happen within seconds of a failover.
pub const REQUEST_RETENTION_MS: u64 = 10 * 60 * 1000;
/// Request records pruned at most per applied entry: more than one entry adds, so a backlog
/// drains, and few enough that pruning never stalls apply.
const PRUNE_PER_ENTRY: usize = 64;

/// A remembered response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RequestRecord {
    time_ms: u64,
    response: MetaResponse,
}

/// Applies a log entry: a request seen before gets its remembered response and changes
/// nothing; otherwise the command is applied and, with a request id, its response kept.
/// Old request records are pruned a few at a time.
pub fn apply_proposal(
    kv: &impl KvRead,
    proposal: &Proposal,
    log_index: u64,
) -> Result<(MetaResponse, Vec<Mutation>), KvError> {
    if let Some(id) = proposal.request_id
        && let Some(record) = read::<RequestRecord>(kv, &keys::request(id.client, id.seq))?
    {
        return Ok((record.response, Vec::new()));
    }
    let (response, mut out) = apply(kv, &proposal.command, log_index)?;
    if let Some(id) = proposal.request_id {
        put(
            &mut out,
            keys::request(id.client, id.seq),
            &RequestRecord {
                time_ms: proposal.now_ms,
                response: response.clone(),
            },
        );
        out.push(Mutation::Put(
            keys::request_by_time(proposal.now_ms, id.client, id.seq),
            Vec::new(),
        ));
    }
    // Prune from where the last pruning stopped: the deleted keys before it would
    // otherwise be scanned (as tombstones) again by every entry.
    let (table_start, _) = keys::table_range(keys::Table::RequestByTime);
    let start = kv
        .get(&keys::request_prune_cursor())?
        .unwrap_or(table_start);
    let end = keys::request_by_time_before(proposal.now_ms.saturating_sub(REQUEST_RETENTION_MS));
    let mut expired = Vec::new();
    kv.scan(&start, &end, &mut |k, _| {
        expired.push(k.to_vec());
        expired.len() < PRUNE_PER_ENTRY
    })?;
    if let Some(last) = expired.last() {
        out.push(Mutation::Put(keys::request_prune_cursor(), last.clone()));
    }
    for key in expired {
        let (_, client, seq) = keys::parse_request_by_time(&key)
            .ok_or_else(|| KvError(format!("bad request index key {}", hex_key(&key))))?;
        out.push(Mutation::Delete(keys::request(client, seq)));
        out.push(Mutation::Delete(key));
    }
    Ok((response, out))
}

/// Applies `cmd`, the entry at `log_index`, to the state readable through `kv`.
pub fn apply(
    kv: &impl KvRead,
    cmd: &MetaCommand,
    log_index: u64,
) -> Result<(MetaResponse, Vec<Mutation>), KvError> {
    let mut out = Vec::new();
    let response = match apply_inner(kv, cmd, log_index, &mut out)? {
        Ok(response) => response,
        Err(refusal) => {
            // A refused command changes nothing, whatever it had staged.
            out.clear();
            MetaResponse::Refused(refusal)
        }
    };
    Ok((response, out))
}

/// Reads and decodes a value; a value that does not decode is a storage failure.
pub fn read<T: serde::de::DeserializeOwned>(
    kv: &impl KvRead,
    key: &[u8],
) -> Result<Option<T>, KvError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(bytes) => value::decode(&bytes)
            .map(Some)
            .map_err(|e| KvError(format!("key {}: {e}", hex_key(key)))),
    }
}

fn hex_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn put<T: Serialize>(out: &mut Vec<Mutation>, key: Vec<u8>, v: &T) {
    out.push(Mutation::Put(key, value::encode(v)));
}

/// The bucket, if it exists and `tenant` owns it.
pub fn owned_bucket(
    kv: &impl KvRead,
    name: &lauscha_core::BucketName,
    tenant: &lauscha_core::TenantId,
) -> Result<Result<Bucket, MetaError>, KvError> {
    Ok(match read::<Bucket>(kv, &keys::bucket(name))? {
        Some(bucket) if bucket.tenant == *tenant => Ok(bucket),
        Some(_) => Err(MetaError::AccessDenied(name.to_string())),
        None => Err(MetaError::NoSuchBucket(name.to_string())),
    })
}

/// Retires a version that is no longer current: its stripes go to the garbage table
/// (deleted after the grace period) and out of the stripe index and the repair queue.
pub(crate) fn retire(
    out: &mut Vec<Mutation>,
    old: &ObjectVersion,
    origin: String,
    now_ms: u64,
    log_index: u64,
) {
    for stripe in old.stripes() {
        out.push(Mutation::Delete(keys::stripe_index(stripe.id)));
        out.push(Mutation::Delete(keys::version_stripe(stripe.id)));
        for shard_idx in 0..stripe.shards.len() {
            out.push(Mutation::Delete(keys::repair(stripe.id, shard_idx as u8)));
        }
    }
    collect_stripes(out, old.stripes().to_vec(), origin, now_ms, log_index);
}

/// Checks a conditional write against the key's current version. Decided in `apply`, in
/// log order: of two racing conditional writers exactly one sees the state its condition
/// asks for.
fn check_condition(
    condition: &WriteCondition,
    current: Option<&ObjectVersion>,
    bucket: &BucketName,
    key: &str,
) -> Result<(), MetaError> {
    match (condition, current) {
        (WriteCondition::IfNoneMatchAny, Some(old)) => Err(MetaError::PreconditionFailed(format!(
            "{bucket}/{key} exists (ETag {})",
            old.etag
        ))),
        (WriteCondition::IfMatch(_), None) => Err(MetaError::NoSuchKey {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }),
        (WriteCondition::IfMatch(etag), Some(old)) if old.etag != *etag => {
            Err(MetaError::PreconditionFailed(format!(
                "{bucket}/{key} has ETag {}, not {etag}",
                old.etag
            )))
        }
        _ => Ok(()),
    }
}

/// Puts `stripes` into one garbage record of this entry.
pub(crate) fn collect_stripes(
    out: &mut Vec<Mutation>,
    stripes: Vec<Stripe>,
    origin: String,
    now_ms: u64,
    log_index: u64,
) {
    if stripes.is_empty() {
        return;
    }
    let key = keys::garbage(now_ms, log_index);
    for stripe in &stripes {
        out.push(Mutation::Put(keys::garbage_stripe(stripe.id), key.clone()));
    }
    put(out, key, &GarbageRecord { origin, stripes });
}

/// The parts of an upload, in part-number order.
fn parts_of(kv: &impl KvRead, upload_id: &str) -> Result<Vec<UploadPart>, KvError> {
    Ok(crate::query::list_parts(kv, upload_id, 0, MAX_PART_NUMBER as usize)?.0)
}

/// Removes an upload's records: the upload, its parts, their stripes' part index.
fn drop_upload(
    out: &mut Vec<Mutation>,
    bucket: &BucketName,
    key: &str,
    upload_id: &str,
    parts: &[UploadPart],
) {
    for part in parts {
        for stripe in part.version.stripes() {
            out.push(Mutation::Delete(keys::part_stripe(stripe.id)));
        }
        out.push(Mutation::Delete(keys::part(upload_id, part.part_number)));
    }
    out.push(Mutation::Delete(keys::upload(bucket, key, upload_id)));
    out.push(Mutation::Delete(keys::upload_extras(upload_id)));
}

/// Lock and tags of a PutObject that carries none (the older command variants).
const NO_EXTRAS: VersionExtras = VersionExtras {
    retention: None,
    legal_hold: false,
    tags: None,
};

/// The arguments of a PutObject, whichever command variant carried them.
struct PutArgs<'a> {
    bucket: &'a BucketName,
    tenant: &'a lauscha_core::TenantId,
    key: &'a String,
    version: &'a ObjectVersion,
    now_ms: u64,
    missing: &'a [(lauscha_core::StripeId, u8)],
    condition: Option<&'a WriteCondition>,
    extras: &'a VersionExtras,
}

/// Checks Object Lock headers against the bucket (for an upload that starts now and
/// completes later: the completion checks again).
fn check_extras(
    kv: &impl KvRead,
    bucket: &BucketName,
    extras: &VersionExtras,
) -> Result<Result<(), MetaError>, KvError> {
    if (extras.retention.is_some() || extras.legal_hold)
        && versions::object_lock(kv, bucket)?.is_none()
    {
        return Ok(Err(MetaError::InvalidRequest(format!(
            "bucket {bucket} has no Object Lock configuration; retention and legal hold need one"
        ))));
    }
    Ok(Ok(()))
}

fn put_object(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    put: PutArgs<'_>,
    log_index: u64,
) -> Result<Result<MetaResponse, MetaError>, KvError> {
    let PutArgs {
        bucket,
        tenant,
        key,
        version,
        now_ms,
        missing,
        condition,
        extras,
    } = put;
    if let Err(e) = owned_bucket(kv, bucket, tenant)? {
        return Ok(Err(e));
    }
    if let Err(e) = lauscha_core::names::validate_object_key(key) {
        return Ok(Err(MetaError::InvalidArgument(e.to_string())));
    }
    if let Some(condition) = condition {
        let current = read::<ObjectVersion>(kv, &keys::object(bucket, key))?;
        if let Err(e) = check_condition(condition, current.as_ref(), bucket, key) {
            return Ok(Err(e));
        }
    }
    let version = ObjectVersion {
        version_id: version_id(log_index),
        last_modified_ms: now_ms,
        ..version.clone()
    };
    for (stripe_id, shard_idx) in missing {
        if !version.stripes().iter().any(|s| s.id == *stripe_id) {
            return Ok(Err(MetaError::InvalidArgument(format!(
                "missing shard {stripe_id}.{shard_idx} is not in the version"
            ))));
        }
        out.push(Mutation::Put(
            keys::repair(*stripe_id, *shard_idx),
            value::encode(&now_ms),
        ));
    }
    Ok(
        versions::install(kv, out, bucket, key, version, extras, now_ms, log_index)?.map(
            |version_id| MetaResponse::ObjectPut {
                version_id,
                last_modified_ms: now_ms,
            },
        ),
    )
}

fn apply_inner(
    kv: &impl KvRead,
    cmd: &MetaCommand,
    log_index: u64,
    out: &mut Vec<Mutation>,
) -> Result<Result<MetaResponse, MetaError>, KvError> {
    Ok(Ok(match cmd {
        MetaCommand::CreateTenant { id, now_ms } => {
            let key = keys::tenant(id);
            if kv.get(&key)?.is_some() {
                return Ok(Err(MetaError::TenantAlreadyExists(id.to_string())));
            }
            let tenant = Tenant {
                id: id.clone(),
                created_ms: *now_ms,
            };
            put(out, key, &tenant);
            MetaResponse::Tenant(tenant)
        }
        MetaCommand::CreateAccessKey { key, now_ms } => {
            if kv.get(&keys::tenant(&key.tenant))?.is_none() {
                return Ok(Err(MetaError::NoSuchTenant(key.tenant.to_string())));
            }
            let db_key = keys::access_key(&key.id);
            if kv.get(&db_key)?.is_some() {
                return Ok(Err(MetaError::AccessKeyAlreadyExists(key.id.to_string())));
            }
            let key = AccessKey {
                created_ms: *now_ms,
                ..key.clone()
            };
            put(out, db_key, &key);
            MetaResponse::AccessKey(key)
        }
        MetaCommand::CreateBucket {
            name,
            tenant,
            policy,
            now_ms,
        }
        | MetaCommand::CreateBucketWith {
            name,
            tenant,
            policy,
            now_ms,
            ..
        } => {
            if kv.get(&keys::tenant(tenant))?.is_none() {
                return Ok(Err(MetaError::NoSuchTenant(tenant.to_string())));
            }
            if let Some(existing) = read::<Bucket>(kv, &keys::bucket(name))? {
                return Ok(Err(if existing.tenant == *tenant {
                    MetaError::BucketAlreadyOwnedByYou(name.to_string())
                } else {
                    MetaError::BucketAlreadyExists(name.to_string())
                }));
            }
            let bucket = Bucket {
                name: name.clone(),
                tenant: tenant.clone(),
                created_ms: *now_ms,
                policy: *policy,
            };
            put(out, keys::bucket(name), &bucket);
            out.push(Mutation::Put(keys::tenant_bucket(tenant, name), Vec::new()));
            if let MetaCommand::CreateBucketWith {
                object_lock: true, ..
            } = cmd
            {
                let mut history = VersioningHistory::default();
                history.set(log_index, VersioningState::Enabled);
                put(
                    out,
                    keys::bucket_setting(name, keys::SettingKind::Versioning),
                    &history,
                );
                put(
                    out,
                    keys::bucket_setting(name, keys::SettingKind::ObjectLock),
                    &ObjectLockConfig::default(),
                );
            }
            MetaResponse::Bucket(bucket)
        }
        MetaCommand::DeleteBucket { name, tenant } => {
            if let Err(e) = owned_bucket(kv, name, tenant)? {
                return Ok(Err(e));
            }
            let prefix = keys::bucket_objects_prefix(name);
            let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
            let mut has_objects = false;
            kv.scan(&prefix, &end, &mut |_, _| {
                has_objects = true;
                false
            })?;
            if has_objects || versions::has_versions(kv, name)? {
                return Ok(Err(MetaError::BucketNotEmpty(name.to_string())));
            }
            let prefix = keys::bucket_uploads_prefix(name);
            let end = keys::prefix_end(&prefix).expect("prefix ends in NUL");
            let mut has_uploads = false;
            kv.scan(&prefix, &end, &mut |_, _| {
                has_uploads = true;
                false
            })?;
            if has_uploads {
                return Ok(Err(MetaError::BucketNotEmpty(format!(
                    "{name} has multipart uploads in progress; abort them first"
                ))));
            }
            versions::drop_settings(kv, out, name)?;
            out.push(Mutation::Delete(keys::bucket(name)));
            out.push(Mutation::Delete(keys::tenant_bucket(tenant, name)));
            MetaResponse::BucketDeleted
        }
        MetaCommand::PutObject {
            bucket,
            tenant,
            key,
            version,
            now_ms,
            missing,
        }
        | MetaCommand::PutObjectIf {
            bucket,
            tenant,
            key,
            version,
            now_ms,
            missing,
            ..
        }
        | MetaCommand::PutObjectWith {
            bucket,
            tenant,
            key,
            version,
            now_ms,
            missing,
            ..
        } => {
            let (condition, extras) = match cmd {
                MetaCommand::PutObjectIf { condition, .. } => (Some(condition), &NO_EXTRAS),
                MetaCommand::PutObjectWith {
                    condition, extras, ..
                } => (condition.as_ref(), extras),
                _ => (None, &NO_EXTRAS),
            };
            let put = PutArgs {
                bucket,
                tenant,
                key,
                version,
                now_ms: *now_ms,
                missing,
                condition,
                extras,
            };
            match put_object(kv, out, put, log_index)? {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            }
        }
        MetaCommand::Object { command, now_ms } => {
            match versions::apply_object_command(kv, out, command, *now_ms, log_index)? {
                Ok(reply) => MetaResponse::Object(reply),
                Err(e) => return Ok(Err(e)),
            }
        }
        MetaCommand::CreateUpload {
            bucket,
            tenant,
            key,
            template,
            now_ms,
        }
        | MetaCommand::CreateUploadWith {
            bucket,
            tenant,
            key,
            template,
            now_ms,
            ..
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            if let Err(e) = lauscha_core::names::validate_object_key(key) {
                return Ok(Err(MetaError::InvalidArgument(e.to_string())));
            }
            let upload_id = format!("{log_index:020}");
            let upload = MultipartUpload {
                upload_id: upload_id.clone(),
                key: key.clone(),
                tenant: tenant.clone(),
                initiated_ms: *now_ms,
                template: (**template).clone(),
            };
            if let MetaCommand::CreateUploadWith { extras, .. } = cmd {
                if let Err(e) = check_extras(kv, bucket, extras)? {
                    return Ok(Err(e));
                }
                if *extras != VersionExtras::default() {
                    put(out, keys::upload_extras(&upload_id), extras);
                }
            }
            put(out, keys::upload(bucket, key, &upload_id), &upload);
            MetaResponse::UploadCreated { upload_id }
        }
        MetaCommand::PutPart {
            bucket,
            tenant,
            key,
            upload_id,
            part,
            now_ms,
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            if read::<MultipartUpload>(kv, &keys::upload(bucket, key, upload_id))?.is_none() {
                return Ok(Err(MetaError::NoSuchUpload(upload_id.clone())));
            }
            if !(1..=MAX_PART_NUMBER).contains(&part.part_number) {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "part number {} is not in 1..={MAX_PART_NUMBER}",
                    part.part_number
                ))));
            }
            if matches!(part.version.data, ObjectData::Inline(_)) {
                return Ok(Err(MetaError::InvalidArgument(
                    "a part's bytes must be erasure-coded, not inline".into(),
                )));
            }
            let part_key = keys::part(upload_id, part.part_number);
            // A part uploaded again replaces the earlier one, whose stripes become garbage.
            if let Some(old) = read::<UploadPart>(kv, &part_key)? {
                for stripe in old.version.stripes() {
                    out.push(Mutation::Delete(keys::part_stripe(stripe.id)));
                }
                collect_stripes(
                    out,
                    old.version.stripes().to_vec(),
                    format!(
                        "{bucket}/{key} upload {upload_id} part {}",
                        part.part_number
                    ),
                    *now_ms,
                    log_index,
                );
            }
            let mut part = (**part).clone();
            part.version.last_modified_ms = *now_ms;
            for stripe in part.version.stripes() {
                put(out, keys::part_stripe(stripe.id), upload_id);
            }
            put(out, part_key, &part);
            MetaResponse::PartPut {
                last_modified_ms: *now_ms,
            }
        }
        MetaCommand::CompleteUpload {
            bucket,
            tenant,
            key,
            upload_id,
            parts: listed,
            etag,
            now_ms,
            condition,
        }
        | MetaCommand::CompleteUploadWith {
            bucket,
            tenant,
            key,
            upload_id,
            parts: listed,
            etag,
            now_ms,
            condition,
            ..
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            let Some(upload) = read::<MultipartUpload>(kv, &keys::upload(bucket, key, upload_id))?
            else {
                return Ok(Err(MetaError::NoSuchUpload(upload_id.clone())));
            };
            if listed.is_empty() {
                return Ok(Err(MetaError::InvalidArgument(
                    "a completed upload lists at least one part".into(),
                )));
            }
            if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Ok(Err(MetaError::InvalidPartOrder(
                    "parts must be listed in ascending part-number order".into(),
                )));
            }
            let uploaded = parts_of(kv, upload_id)?;
            let mut chosen = Vec::with_capacity(listed.len());
            for (i, (number, listed_etag)) in listed.iter().enumerate() {
                let Some(part) = uploaded.iter().find(|p| p.part_number == *number) else {
                    return Ok(Err(MetaError::InvalidPart(format!(
                        "part {number} was not uploaded"
                    ))));
                };
                if part.version.etag != listed_etag.trim_matches('"') {
                    return Ok(Err(MetaError::InvalidPart(format!(
                        "part {number} has ETag {}, not {listed_etag}",
                        part.version.etag
                    ))));
                }
                if i + 1 < listed.len() && part.version.size_bytes < MIN_PART_BYTES {
                    return Ok(Err(MetaError::EntityTooSmall(format!(
                        "part {number} has {} bytes; every part but the last needs {MIN_PART_BYTES}",
                        part.version.size_bytes
                    ))));
                }
                chosen.push(part);
            }
            let (n_data_shards, n_parity_shards) = match &chosen[0].version.data {
                ObjectData::Striped {
                    n_data_shards,
                    n_parity_shards,
                    ..
                } => (*n_data_shards, *n_parity_shards),
                ObjectData::Inline(_) => {
                    return Ok(Err(MetaError::Internal("an inline part".into())));
                }
            };
            let mut stripes = Vec::new();
            for part in &chosen {
                match &part.version.data {
                    ObjectData::Striped {
                        n_data_shards: k,
                        n_parity_shards: m,
                        stripes: s,
                    } if (*k, *m) == (n_data_shards, n_parity_shards) => {
                        stripes.extend(s.iter().cloned())
                    }
                    _ => {
                        return Ok(Err(MetaError::InvalidPart(format!(
                            "part {} is stored under another policy",
                            part.part_number
                        ))));
                    }
                }
            }
            let object_key = keys::object(bucket, key);
            let current = read::<ObjectVersion>(kv, &object_key)?;
            if let Some(condition) = condition
                && let Err(e) = check_condition(condition, current.as_ref(), bucket, key)
            {
                return Ok(Err(e));
            }
            let extras: VersionExtras =
                read(kv, &keys::upload_extras(upload_id))?.unwrap_or_default();
            let mut checksums = std::collections::BTreeMap::new();
            if let MetaCommand::CompleteUploadWith { checksums: c, .. } = cmd {
                // The composite was computed from part checksums read before this entry;
                // a part uploaded again since would make it wrong.
                for part in &chosen {
                    let given = c.parts.iter().find(|(n, _)| *n == part.part_number);
                    for alg in c.composite.keys() {
                        let stored = part.version.checksums.get(alg);
                        if stored.is_none() || given.and_then(|(_, g)| g.get(alg)) != stored {
                            return Ok(Err(MetaError::InvalidPart(format!(
                                "part {} changed or lacks its {} checksum",
                                part.part_number,
                                alg.as_str()
                            ))));
                        }
                    }
                }
                checksums = c.composite.clone();
            }
            // Parts uploaded but not listed are garbage.
            let unused: Vec<Stripe> = uploaded
                .iter()
                .filter(|p| !listed.iter().any(|(n, _)| *n == p.part_number))
                .flat_map(|p| p.version.stripes().to_vec())
                .collect();
            // One garbage record per entry: `retire` may have used this entry's key.
            collect_stripes(
                out,
                unused,
                format!("{bucket}/{key} upload {upload_id} unused parts"),
                *now_ms + 1,
                log_index,
            );
            drop_upload(out, bucket, key, upload_id, &uploaded);
            let version_id = format!("{log_index:020}");
            let version = ObjectVersion {
                version_id: version_id.clone(),
                size_bytes: chosen.iter().map(|p| p.version.size_bytes).sum(),
                etag: etag.clone(),
                last_modified_ms: *now_ms,
                checksums,
                data: ObjectData::Striped {
                    n_data_shards,
                    n_parity_shards,
                    stripes,
                },
                ..upload.template
            };
            match versions::install(kv, out, bucket, key, version, &extras, *now_ms, log_index)? {
                Ok(s3_version_id) => MetaResponse::ObjectPut {
                    version_id: s3_version_id,
                    last_modified_ms: *now_ms,
                },
                Err(e) => return Ok(Err(e)),
            }
        }
        MetaCommand::GrantKey {
            key,
            bucket,
            permission,
        } => {
            let Some(access_key) = read::<AccessKey>(kv, &keys::access_key(key))? else {
                return Ok(Err(MetaError::NoSuchAccessKey(key.to_string())));
            };
            if let Err(e) = owned_bucket(kv, bucket, &access_key.tenant)? {
                return Ok(Err(e));
            }
            // Once limited, a key stays limited: revoking its last grant leaves it with
            // nothing, not with everything.
            put(out, keys::key_grants_prefix(key), &true);
            let grant_key = keys::key_grant(key, bucket);
            match permission {
                Some(p) => put(out, grant_key, p),
                None => out.push(Mutation::Delete(grant_key)),
            }
            MetaResponse::Granted
        }
        MetaCommand::AbortUpload {
            bucket,
            tenant,
            key,
            upload_id,
            now_ms,
        } => {
            if let Err(e) = owned_bucket(kv, bucket, tenant)? {
                return Ok(Err(e));
            }
            if read::<MultipartUpload>(kv, &keys::upload(bucket, key, upload_id))?.is_none() {
                return Ok(Err(MetaError::NoSuchUpload(upload_id.clone())));
            }
            let parts = parts_of(kv, upload_id)?;
            collect_stripes(
                out,
                parts
                    .iter()
                    .flat_map(|p| p.version.stripes().to_vec())
                    .collect(),
                format!("{bucket}/{key} upload {upload_id} aborted"),
                *now_ms,
                log_index,
            );
            drop_upload(out, bucket, key, upload_id, &parts);
            MetaResponse::UploadAborted
        }
        MetaCommand::DeleteObject {
            bucket,
            tenant,
            key,
            now_ms,
        } => {
            let command = ObjectCommand::Delete {
                bucket: bucket.clone(),
                tenant: tenant.clone(),
                key: key.clone(),
                version_id: None,
                bypass_governance: false,
                if_current: None,
            };
            match versions::apply_object_command(kv, out, &command, *now_ms, log_index)? {
                Ok(ObjectCommandReply::Deleted { version_id, .. }) => MetaResponse::ObjectDeleted {
                    existed: version_id.is_some(),
                },
                Ok(other) => {
                    return Ok(Err(MetaError::Internal(format!(
                        "delete answered {other:?}"
                    ))));
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        MetaCommand::UpsertNode { node } => {
            let mut map: ClusterMap = read(kv, &keys::cluster_map())?.unwrap_or_default();
            let mut node = node.clone();
            // A node registering again (a restart, a new address) keeps the lifecycle
            // state operators gave it: a draining node stays draining.
            if let Some(existing) = map.node(node.id) {
                node.state = existing.state;
            }
            if map.upsert(node) {
                put(out, keys::cluster_map(), &map);
            }
            MetaResponse::NodeUpserted { epoch: map.epoch }
        }
        MetaCommand::MoveShard {
            stripe_id,
            shard_idx,
            from,
            to,
        } => {
            let edit = |data: &mut ObjectData| -> Result<Result<(), MetaError>, KvError> {
                let ObjectData::Striped { stripes, .. } = data else {
                    return Err(KvError(format!(
                        "stripe index names inline data ({stripe_id})"
                    )));
                };
                let stripe = stripes
                    .iter_mut()
                    .find(|s| s.id == *stripe_id)
                    .ok_or_else(|| KvError(format!("stripe {stripe_id} not in its version")))?;
                let Some(shard) = stripe.shards.get(usize::from(*shard_idx)) else {
                    return Ok(Err(MetaError::InvalidArgument(format!(
                        "no shard {shard_idx} in stripe {stripe_id}"
                    ))));
                };
                if shard.node != *from {
                    return Ok(Err(MetaError::Conflict(format!(
                        "shard {stripe_id}.{shard_idx} is on {}, not {from}",
                        shard.node
                    ))));
                }
                if stripe.shards.iter().any(|s| s.node == *to) && from != to {
                    return Ok(Err(MetaError::Conflict(format!(
                        "stripe {stripe_id} already has a shard on {to}"
                    ))));
                }
                stripe.shards[usize::from(*shard_idx)].node = *to;
                Ok(Ok(()))
            };
            if let Some(owner) = read::<StripeOwner>(kv, &keys::stripe_index(*stripe_id))? {
                let object_key = keys::object(&owner.bucket, &owner.key);
                let Some(mut version) = read::<ObjectVersion>(kv, &object_key)? else {
                    return Err(KvError(format!(
                        "stripe index names missing object {}/{}",
                        owner.bucket, owner.key
                    )));
                };
                if let Err(e) = edit(&mut version.data)? {
                    return Ok(Err(e));
                }
                put(out, object_key, &version);
            } else if let Some(owner) =
                read::<versions::VersionOwner>(kv, &keys::version_stripe(*stripe_id))?
            {
                if let Err(e) =
                    versions::move_noncurrent_shard(kv, out, &owner, |v| edit(&mut v.data))?
                {
                    return Ok(Err(e));
                }
            } else if kv.get(&keys::volume_stripe(*stripe_id))?.is_some() {
                if let Err(e) = crate::volumes::edit_stripe(kv, out, *stripe_id, &edit)? {
                    return Ok(Err(e));
                }
            } else {
                return Ok(Err(MetaError::Conflict(format!(
                    "stripe {stripe_id} is no longer part of a version"
                ))));
            }
            out.push(Mutation::Delete(keys::repair(*stripe_id, *shard_idx)));
            MetaResponse::Maintained
        }
        MetaCommand::ClearRepair {
            stripe_id,
            shard_idx,
        } => {
            out.push(Mutation::Delete(keys::repair(*stripe_id, *shard_idx)));
            MetaResponse::Maintained
        }
        MetaCommand::DropGarbage { key } => {
            let (start, end) = keys::table_range(keys::Table::Garbage);
            if key.as_slice() < start.as_slice() || key.as_slice() >= end.as_slice() {
                return Ok(Err(MetaError::InvalidArgument("not a garbage key".into())));
            }
            if let Some(record) = read::<GarbageRecord>(kv, key)? {
                for stripe in &record.stripes {
                    // Only index entries that name this record: a newer record listing
                    // the stripe keeps its own (`collect_stripes` overwrote it).
                    let index = keys::garbage_stripe(stripe.id);
                    if kv.get(&index)?.as_deref() == Some(key.as_slice()) {
                        out.push(Mutation::Delete(index));
                    }
                }
                out.push(Mutation::Delete(key.clone()));
            }
            MetaResponse::Maintained
        }
        MetaCommand::SetNodeState { node, state } => {
            let mut map: ClusterMap = read(kv, &keys::cluster_map())?.unwrap_or_default();
            let Some(mut info) = map.node(*node).cloned() else {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "no node {node} in the cluster map"
                ))));
            };
            info.state = *state;
            if map.upsert(info) {
                put(out, keys::cluster_map(), &map);
            }
            MetaResponse::NodeUpserted { epoch: map.epoch }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemKv;
    use crate::query;
    use lauscha_core::{
        AccessKeyId, BucketName, NodeId, PlacementPolicy, ShardDigest, ShardLocation, StripeId,
        TenantId,
    };

    /// A state machine in memory, applying commands at increasing log indexes.
    struct Sm {
        kv: MemKv,
        next_index: u64,
    }

    impl Sm {
        fn new() -> Sm {
            Sm {
                kv: MemKv::default(),
                next_index: 1,
            }
        }

        fn run(&mut self, cmd: MetaCommand) -> MetaResponse {
            let (response, mutations) = apply(&self.kv, &cmd, self.next_index).unwrap();
            if matches!(response, MetaResponse::Refused(_)) {
                assert!(mutations.is_empty(), "a refusal must not change state");
            }
            self.kv.write(mutations);
            self.next_index += 1;
            response
        }
    }

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn bucket(s: &str) -> BucketName {
        BucketName::parse(s).unwrap()
    }

    fn striped(n_bytes: u64, stripe: u128) -> ObjectVersion {
        ObjectVersion {
            version_id: String::new(),
            size_bytes: n_bytes,
            etag: "e".into(),
            last_modified_ms: 0,
            content_type: None,
            headers: Default::default(),
            user_metadata: Default::default(),
            checksums: Default::default(),
            data: ObjectData::Striped {
                n_data_shards: 1,
                n_parity_shards: 0,
                stripes: vec![Stripe {
                    id: StripeId(stripe),
                    len_bytes: n_bytes,
                    shards: vec![ShardLocation {
                        node: NodeId(1),
                        digest: ShardDigest([0; 32]),
                    }],
                }],
            },
        }
    }

    /// The reference count of a volume stripe (`None`: no volume references it).
    fn count_of(sm: &Sm, stripe: u128) -> Option<u32> {
        read::<u32>(&sm.kv, &keys::volume_stripe(StripeId(stripe))).unwrap()
    }

    /// The stripes of the first 10 garbage records: those deletes freed.
    fn garbage_stripe_ids(sm: &Sm) -> Vec<StripeId> {
        query::garbage(&sm.kv, 10)
            .unwrap()
            .iter()
            .flat_map(|g| g.stripes.iter().map(|s| s.id))
            .collect()
    }

    fn setup() -> Sm {
        let mut sm = Sm::new();
        for t in ["jena", "gera"] {
            sm.run(MetaCommand::CreateTenant {
                id: tenant(t),
                now_ms: 1,
            });
        }
        let r = sm.run(MetaCommand::CreateBucket {
            name: bucket("files"),
            tenant: tenant("jena"),
            policy: PlacementPolicy::DEFAULT,
            now_ms: 2,
        });
        assert!(matches!(r, MetaResponse::Bucket(_)));
        sm
    }

    fn put(sm: &mut Sm, t: &str, b: &str, key: &str, version: ObjectVersion) -> MetaResponse {
        sm.run(MetaCommand::PutObject {
            bucket: bucket(b),
            tenant: tenant(t),
            key: key.into(),
            version: Box::new(version),
            now_ms: 10,
            missing: Vec::new(),
        })
    }

    fn put_if(sm: &mut Sm, key: &str, etag: &str, condition: WriteCondition) -> MetaResponse {
        let version = ObjectVersion {
            etag: etag.into(),
            ..striped(10, u128::from(sm.next_index))
        };
        sm.run(MetaCommand::PutObjectIf {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: key.into(),
            version: Box::new(version),
            now_ms: 10,
            missing: Vec::new(),
            condition,
        })
    }

    fn part(number: u32, n_bytes: u64, stripe: u128, etag: &str) -> Box<UploadPart> {
        Box::new(UploadPart {
            part_number: number,
            version: ObjectVersion {
                etag: etag.into(),
                ..striped(n_bytes, stripe)
            },
        })
    }

    #[test]
    fn a_multipart_upload_completes_from_its_listed_parts() {
        let mut sm = setup();
        let MetaResponse::UploadCreated { upload_id } = sm.run(MetaCommand::CreateUpload {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "big".into(),
            template: Box::new(ObjectVersion {
                content_type: Some("text/plain".into()),
                ..striped(0, 0)
            }),
            now_ms: 20,
        }) else {
            panic!("no upload");
        };
        let put_part = |sm: &mut Sm, p: Box<UploadPart>| {
            sm.run(MetaCommand::PutPart {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "big".into(),
                upload_id: upload_id.clone(),
                part: p,
                now_ms: 21,
            })
        };
        let mib = 1 << 20;
        for p in [
            part(1, 6 * mib, 101, "a"),
            part(2, mib, 102, "b"),
            part(3, 6 * mib, 103, "c"),
            part(2, 6 * mib, 202, "b2"), // replaces part 2
        ] {
            assert!(matches!(put_part(&mut sm, p), MetaResponse::PartPut { .. }));
        }
        let (parts, more) = query::list_parts(&sm.kv, &upload_id, 0, 10).unwrap();
        assert_eq!(
            parts.iter().map(|p| p.part_number).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(!more);
        assert!(query::stripes_known(&sm.kv, &[StripeId(101)]).unwrap()[0]);
        let complete = |sm: &mut Sm, parts: &[(u32, &str)]| {
            sm.run(MetaCommand::CompleteUpload {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "big".into(),
                upload_id: upload_id.clone(),
                parts: parts.iter().map(|(n, e)| (*n, e.to_string())).collect(),
                etag: "md5s-2".into(),
                now_ms: 30,
                condition: None,
            })
        };
        let refused = |r: MetaResponse| match r {
            MetaResponse::Refused(e) => e,
            other => panic!("not refused: {other:?}"),
        };
        assert!(matches!(
            refused(complete(&mut sm, &[(3, "c"), (1, "a")])),
            MetaError::InvalidPartOrder(_)
        ));
        assert!(matches!(
            refused(complete(&mut sm, &[(1, "a"), (2, "b")])),
            MetaError::InvalidPart(_)
        ));
        assert!(matches!(
            refused(complete(&mut sm, &[(1, "a"), (4, "d")])),
            MetaError::InvalidPart(_)
        ));
        put_part(&mut sm, part(4, mib, 104, "d"));
        put_part(&mut sm, part(5, mib, 105, "e"));
        assert!(matches!(
            refused(complete(&mut sm, &[(4, "d"), (5, "e")])),
            MetaError::EntityTooSmall(_)
        ));
        let done = complete(&mut sm, &[(1, "\"a\""), (2, "b2"), (5, "e")]);
        assert!(matches!(done, MetaResponse::ObjectPut { .. }), "{done:?}");
        let v = query::get_object(&sm.kv, &bucket("files"), "big")
            .unwrap()
            .unwrap();
        assert_eq!(v.size_bytes, 13 * mib);
        assert_eq!(v.etag, "md5s-2");
        assert_eq!(v.content_type.as_deref(), Some("text/plain"));
        let ids: Vec<u128> = v.stripes().iter().map(|s| s.id.0).collect();
        assert_eq!(ids, [101, 202, 105]);
        // Unlisted and replaced parts are garbage; the upload is gone.
        let known =
            query::stripes_known(&sm.kv, &[StripeId(102), StripeId(103), StripeId(104)]).unwrap();
        assert_eq!(
            known,
            [true, true, true],
            "garbage stripes stay known until collected"
        );
        let garbage = query::garbage_before(&sm.kv, u64::MAX, 10).unwrap();
        let collected: Vec<u128> = garbage
            .iter()
            .flat_map(|(_, g)| g.stripes.iter().map(|s| s.id.0))
            .collect();
        for id in [102, 103, 104] {
            assert!(collected.contains(&id), "{id} not garbage: {collected:?}");
        }
        assert!(matches!(
            refused(complete(&mut sm, &[(1, "a")])),
            MetaError::NoSuchUpload(_)
        ));
        assert!(
            query::get_upload(&sm.kv, &bucket("files"), "big", &upload_id)
                .unwrap()
                .is_none()
        );
        assert!(
            query::list_parts(&sm.kv, &upload_id, 0, 10)
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn an_aborted_upload_leaves_garbage_and_no_trace() {
        let mut sm = setup();
        let MetaResponse::UploadCreated { upload_id } = sm.run(MetaCommand::CreateUpload {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "k".into(),
            template: Box::new(striped(0, 0)),
            now_ms: 20,
        }) else {
            panic!("no upload");
        };
        let (uploads, _) = query::list_uploads(&sm.kv, &bucket("files"), "", None, 10).unwrap();
        assert_eq!(uploads.len(), 1);
        // Paging: after this upload, or after every upload of its key, nothing is left.
        let next = |after| query::list_uploads(&sm.kv, &bucket("files"), "", Some(after), 10);
        assert!(next(("k", upload_id.as_str())).unwrap().0.is_empty());
        assert!(next(("k", "")).unwrap().0.is_empty());
        assert_eq!(next(("j", "")).unwrap().0.len(), 1);
        // Started at 20: stale for a cut-off after it, not at it.
        let stale = query::stale_uploads(&sm.kv, 21, 10).unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0, bucket("files"));
        assert_eq!(stale[0].1.upload_id, upload_id);
        assert!(query::stale_uploads(&sm.kv, 20, 10).unwrap().is_empty());
        let abort = |sm: &mut Sm| {
            sm.run(MetaCommand::AbortUpload {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "k".into(),
                upload_id: upload_id.clone(),
                now_ms: 40,
            })
        };
        sm.run(MetaCommand::PutPart {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "k".into(),
            upload_id: upload_id.clone(),
            part: part(1, 10, 301, "x"),
            now_ms: 21,
        });
        // The bucket cannot go while the upload is open.
        let r = sm.run(MetaCommand::DeleteBucket {
            name: bucket("files"),
            tenant: tenant("jena"),
        });
        assert!(
            matches!(r, MetaResponse::Refused(MetaError::BucketNotEmpty(_))),
            "{r:?}"
        );
        assert_eq!(abort(&mut sm), MetaResponse::UploadAborted);
        assert!(matches!(
            abort(&mut sm),
            MetaResponse::Refused(MetaError::NoSuchUpload(_))
        ));
        let (uploads, _) = query::list_uploads(&sm.kv, &bucket("files"), "", None, 10).unwrap();
        assert!(uploads.is_empty());
        let garbage = query::garbage_before(&sm.kv, u64::MAX, 10).unwrap();
        assert_eq!(garbage.len(), 1);
        assert_eq!(garbage[0].1.stripes[0].id, StripeId(301));
    }

    #[test]
    fn conditional_puts_are_decided_in_log_order() {
        let mut sm = setup();
        let refused_412 =
            |r: &MetaResponse| matches!(r, MetaResponse::Refused(MetaError::PreconditionFailed(_)));
        // Two writers race If-None-Match: * on a new key: the first entry wins.
        let first = put_if(&mut sm, "k", "a", WriteCondition::IfNoneMatchAny);
        let second = put_if(&mut sm, "k", "b", WriteCondition::IfNoneMatchAny);
        assert!(matches!(first, MetaResponse::ObjectPut { .. }), "{first:?}");
        assert!(refused_412(&second), "{second:?}");
        let etag_of = |sm: &Sm| {
            query::get_object(&sm.kv, &bucket("files"), "k")
                .unwrap()
                .unwrap()
                .etag
        };
        assert_eq!(etag_of(&sm), "a");
        // If-Match: only against the current ETag; two writers matching "a" race, one wins.
        let stale = put_if(&mut sm, "k", "c", WriteCondition::IfMatch("x".into()));
        assert!(refused_412(&stale), "{stale:?}");
        let won = put_if(&mut sm, "k", "c", WriteCondition::IfMatch("a".into()));
        let lost = put_if(&mut sm, "k", "d", WriteCondition::IfMatch("a".into()));
        assert!(matches!(won, MetaResponse::ObjectPut { .. }), "{won:?}");
        assert!(refused_412(&lost), "{lost:?}");
        assert_eq!(etag_of(&sm), "c");
        // If-Match on a key that does not exist.
        let absent = put_if(&mut sm, "nope", "e", WriteCondition::IfMatch("a".into()));
        assert!(
            matches!(absent, MetaResponse::Refused(MetaError::NoSuchKey { .. })),
            "{absent:?}"
        );
    }

    #[test]
    fn bucket_names_are_global_and_ownership_is_reported() {
        let mut sm = setup();
        let again = |sm: &mut Sm, t: &str| {
            sm.run(MetaCommand::CreateBucket {
                name: bucket("files"),
                tenant: tenant(t),
                policy: PlacementPolicy::DEFAULT,
                now_ms: 3,
            })
        };
        assert_eq!(
            again(&mut sm, "jena"),
            MetaResponse::Refused(MetaError::BucketAlreadyOwnedByYou("files".into()))
        );
        assert_eq!(
            again(&mut sm, "gera"),
            MetaResponse::Refused(MetaError::BucketAlreadyExists("files".into()))
        );
        let names: Vec<String> = query::list_buckets(&sm.kv, &tenant("jena"))
            .unwrap()
            .into_iter()
            .map(|b| b.name.to_string())
            .collect();
        assert_eq!(names, ["files"]);
        assert!(
            query::list_buckets(&sm.kv, &tenant("gera"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn another_tenant_cannot_write_read_or_delete() {
        let mut sm = setup();
        assert_eq!(
            put(&mut sm, "gera", "files", "k", striped(1, 1)),
            MetaResponse::Refused(MetaError::AccessDenied("files".into()))
        );
        assert_eq!(
            sm.run(MetaCommand::DeleteBucket {
                name: bucket("files"),
                tenant: tenant("gera")
            }),
            MetaResponse::Refused(MetaError::AccessDenied("files".into()))
        );
        assert!(
            query::get_bucket(&sm.kv, &bucket("files"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn overwrite_and_delete_queue_the_old_stripes_as_garbage() {
        let mut sm = setup();
        let r = put(&mut sm, "jena", "files", "k", striped(5, 1));
        let MetaResponse::ObjectPut { version_id, .. } = r else {
            panic!("{r:?}")
        };
        put(&mut sm, "jena", "files", "k", striped(6, 2));
        let current = query::get_object(&sm.kv, &bucket("files"), "k")
            .unwrap()
            .unwrap();
        assert_eq!(current.size_bytes, 6);
        assert_ne!(current.version_id, version_id);
        assert_eq!(
            sm.run(MetaCommand::DeleteObject {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "k".into(),
                now_ms: 20
            }),
            MetaResponse::ObjectDeleted { existed: true }
        );
        let garbage = query::garbage(&sm.kv, 100).unwrap();
        let stripes: Vec<u128> = garbage
            .iter()
            .flat_map(|g| g.stripes.iter().map(|s| s.id.0))
            .collect();
        assert_eq!(stripes, [1, 2]);
        assert_eq!(
            sm.run(MetaCommand::DeleteObject {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "k".into(),
                now_ms: 21
            }),
            MetaResponse::ObjectDeleted { existed: false }
        );
    }

    #[test]
    fn only_empty_buckets_are_deleted() {
        let mut sm = setup();
        put(&mut sm, "jena", "files", "k", striped(5, 1));
        let delete = |sm: &mut Sm| {
            sm.run(MetaCommand::DeleteBucket {
                name: bucket("files"),
                tenant: tenant("jena"),
            })
        };
        assert_eq!(
            delete(&mut sm),
            MetaResponse::Refused(MetaError::BucketNotEmpty("files".into()))
        );
        sm.run(MetaCommand::DeleteObject {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "k".into(),
            now_ms: 20,
        });
        assert_eq!(delete(&mut sm), MetaResponse::BucketDeleted);
        assert!(
            query::get_bucket(&sm.kv, &bucket("files"))
                .unwrap()
                .is_none()
        );
        assert!(
            query::list_buckets(&sm.kv, &tenant("jena"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn keys_need_an_existing_tenant_and_a_free_id() {
        let mut sm = setup();
        let key = |t: &str| AccessKey {
            id: AccessKeyId("AK1".into()),
            secret: "secretsecret".into(),
            tenant: tenant(t),
            is_admin: false,
            created_ms: 0,
        };
        assert_eq!(
            sm.run(MetaCommand::CreateAccessKey {
                key: key("nowhere"),
                now_ms: 5
            }),
            MetaResponse::Refused(MetaError::NoSuchTenant("nowhere".into()))
        );
        assert!(matches!(
            sm.run(MetaCommand::CreateAccessKey {
                key: key("jena"),
                now_ms: 5
            }),
            MetaResponse::AccessKey(AccessKey { created_ms: 5, .. })
        ));
        assert_eq!(
            sm.run(MetaCommand::CreateAccessKey {
                key: key("gera"),
                now_ms: 6
            }),
            MetaResponse::Refused(MetaError::AccessKeyAlreadyExists("AK1".into()))
        );
        let stored = query::get_access_key(&sm.kv, &AccessKeyId("AK1".into()))
            .unwrap()
            .unwrap();
        assert_eq!(stored.tenant, tenant("jena"));
    }

    #[test]
    fn a_retried_request_is_applied_once_and_forgotten_after_retention() {
        let mut sm = setup();
        let id = crate::command::RequestId { client: 7, seq: 1 };
        let proposal = |now_ms: u64, key: &str| Proposal {
            request_id: Some(id),
            now_ms,
            command: MetaCommand::PutObject {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: key.into(),
                version: Box::new(striped(1, 1)),
                now_ms,
                missing: Vec::new(),
            },
        };
        let run = |sm: &mut Sm, p: Proposal| {
            let (response, mutations) = apply_proposal(&sm.kv, &p, sm.next_index).unwrap();
            sm.kv.write(mutations);
            sm.next_index += 1;
            response
        };
        let first = run(&mut sm, proposal(1_000, "a"));
        // The retry (even if it named another key by mistake) gets the first answer and
        // changes nothing: only "a" exists.
        let again = run(&mut sm, proposal(2_000, "b"));
        assert_eq!(first, again);
        assert!(
            query::get_object(&sm.kv, &bucket("files"), "b")
                .unwrap()
                .is_none()
        );
        // Past the retention, entries by other requests prune the record.
        let later = Proposal {
            request_id: Some(crate::command::RequestId { client: 8, seq: 1 }),
            now_ms: 1_000 + REQUEST_RETENTION_MS + 1,
            command: MetaCommand::DeleteObject {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "zzz".into(),
                now_ms: 0,
            },
        };
        run(&mut sm, later);
        assert!(sm.kv.get(&keys::request(7, 1)).unwrap().is_none());
        assert!(sm.kv.get(&keys::request(8, 1)).unwrap().is_some());
        // The next pruning starts after what was pruned, not at the table start.
        assert_eq!(
            sm.kv.get(&keys::request_prune_cursor()).unwrap(),
            Some(keys::request_by_time(1_000, 7, 1))
        );
    }

    #[test]
    fn registering_again_keeps_the_node_state() {
        let mut sm = Sm::new();
        let node = |addr: &str, state| lauscha_core::NodeInfo {
            id: NodeId(3),
            site: "a".into(),
            host: "h".into(),
            addr: addr.into(),
            capacity_bytes: 1,
            state,
        };
        let mut map = ClusterMap::default();
        map.upsert(node("x:1", lauscha_core::NodeState::Draining));
        sm.kv.write(vec![Mutation::Put(
            keys::cluster_map(),
            value::encode(&map),
        )]);
        let r = sm.run(MetaCommand::UpsertNode {
            node: node("x:2", lauscha_core::NodeState::Up),
        });
        assert_eq!(r, MetaResponse::NodeUpserted { epoch: 2 });
        let map = query::cluster_map(&sm.kv).unwrap();
        let stored = map.node(NodeId(3)).unwrap();
        assert_eq!(stored.addr, "x:2");
        assert_eq!(stored.state, lauscha_core::NodeState::Draining);
    }

    #[test]
    fn applying_the_same_log_twice_gives_the_same_state() {
        let log = |sm: &mut Sm| {
            let mut sm2 = setup();
            for i in 0..50u128 {
                put(
                    &mut sm2,
                    "jena",
                    "files",
                    &format!("k{}", i % 7),
                    striped(i as u64 + 1, i),
                );
            }
            *sm = sm2;
        };
        let (mut a, mut b) = (Sm::new(), Sm::new());
        log(&mut a);
        log(&mut b);
        assert_eq!(a.kv, b.kv);
    }

    // ---- versioning and Object Lock ----

    fn obj(sm: &mut Sm, command: ObjectCommand) -> Result<ObjectCommandReply, MetaError> {
        match sm.run(MetaCommand::Object {
            command,
            now_ms: 1_000,
        }) {
            MetaResponse::Object(r) => Ok(r),
            MetaResponse::Refused(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn set_versioning(
        sm: &mut Sm,
        state: VersioningState,
    ) -> Result<ObjectCommandReply, MetaError> {
        obj(
            sm,
            ObjectCommand::PutBucketSetting {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                setting: lauscha_core::versioning::BucketSetting::Versioning(state),
            },
        )
    }

    fn delete(
        sm: &mut Sm,
        key: &str,
        version_id: Option<&str>,
        bypass: bool,
    ) -> Result<ObjectCommandReply, MetaError> {
        obj(
            sm,
            ObjectCommand::Delete {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: key.into(),
                version_id: version_id.map(str::to_string),
                bypass_governance: bypass,
                if_current: None,
            },
        )
    }

    fn put_v(sm: &mut Sm, key: &str, stripe: u128) -> String {
        match put(sm, "jena", "files", key, striped(10, stripe)) {
            MetaResponse::ObjectPut { version_id, .. } => version_id,
            other => panic!("put refused: {other:?}"),
        }
    }

    fn listing(sm: &Sm, max_keys: u32) -> Vec<(String, String, bool, bool)> {
        let q = lauscha_core::versioning::ListVersionsQuery {
            bucket: bucket("files"),
            prefix: String::new(),
            delimiter: None,
            key_marker: None,
            version_id_marker: None,
            max_keys,
        };
        query::list_versions(&sm.kv, &q)
            .unwrap()
            .versions
            .into_iter()
            .map(|v| {
                let marker = matches!(
                    v.entry,
                    lauscha_core::versioning::VersionEntry::DeleteMarker { .. }
                );
                (v.key, v.s3_version_id, v.is_latest, marker)
            })
            .collect()
    }

    /// Checks the model's invariants for `key`: no object entry means the newest noncurrent
    /// entry is a delete marker; at most one null version; every stripe of every version
    /// indexed exactly once.
    fn check_invariants(sm: &Sm, key: &str) {
        let b = bucket("files");
        let current = query::get_object(&sm.kv, &b, key).unwrap();
        let older = versions::noncurrent(&sm.kv, &b, key, usize::MAX).unwrap();
        if current.is_none()
            && let Some((_, newest)) = older.first()
        {
            assert!(matches!(
                newest.entry,
                lauscha_core::versioning::VersionEntry::DeleteMarker { .. }
            ));
        }
        let history = versions::versioning(&sm.kv, &b).unwrap();
        let mut seqs: Vec<u64> = older.iter().map(|(s, _)| *s).collect();
        if let Some(c) = &current {
            let seq = lauscha_core::versioning::version_seq(&c.version_id).unwrap();
            assert!(seqs.iter().all(|s| *s < seq), "current is newest");
            seqs.push(seq);
            for stripe in c.stripes() {
                assert!(sm.kv.get(&keys::stripe_index(stripe.id)).unwrap().is_some());
                assert!(
                    sm.kv
                        .get(&keys::version_stripe(stripe.id))
                        .unwrap()
                        .is_none()
                );
            }
        }
        assert!(
            seqs.iter().filter(|s| history.is_null(**s)).count() <= 1,
            "one null version"
        );
        for (_, v) in &older {
            if let lauscha_core::versioning::VersionEntry::Object(o) = &v.entry {
                for stripe in o.stripes() {
                    assert!(sm.kv.get(&keys::stripe_index(stripe.id)).unwrap().is_none());
                    assert!(
                        sm.kv
                            .get(&keys::version_stripe(stripe.id))
                            .unwrap()
                            .is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn versioned_puts_keep_every_version_and_deletes_add_markers() {
        let mut sm = setup();
        let v0 = put_v(&mut sm, "k", 100);
        assert_eq!(v0, "null", "an unversioned bucket writes the null version");
        set_versioning(&mut sm, VersioningState::Enabled).unwrap();
        let v1 = put_v(&mut sm, "k", 101);
        let v2 = put_v(&mut sm, "k", 102);
        check_invariants(&sm, "k");
        let ObjectCommandReply::Deleted {
            version_id: Some(marker),
            delete_marker: true,
        } = delete(&mut sm, "k", None, false).unwrap()
        else {
            panic!("no delete marker")
        };
        check_invariants(&sm, "k");
        assert!(
            query::get_object(&sm.kv, &bucket("files"), "k")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            listing(&sm, 100),
            vec![
                ("k".into(), marker.clone(), true, true),
                ("k".into(), v2.clone(), false, false),
                ("k".into(), v1.clone(), false, false),
                ("k".into(), "null".into(), false, false),
            ]
        );
        // Removing the marker brings v2 back as the current object.
        delete(&mut sm, "k", Some(&marker), false).unwrap();
        check_invariants(&sm, "k");
        let current = query::get_object(&sm.kv, &bucket("files"), "k")
            .unwrap()
            .unwrap();
        assert_eq!(current.version_id, v2);
        // Removing the current version promotes the next; removing the null one by name.
        delete(&mut sm, "k", Some(&v2), false).unwrap();
        check_invariants(&sm, "k");
        assert_eq!(
            query::get_object(&sm.kv, &bucket("files"), "k")
                .unwrap()
                .unwrap()
                .version_id,
            v1
        );
        delete(&mut sm, "k", Some("null"), false).unwrap();
        check_invariants(&sm, "k");
        assert_eq!(
            listing(&sm, 100),
            vec![("k".into(), v1.clone(), true, false)]
        );
        // The retired stripes are garbage, the live one is not.
        let known = query::stripes_known(&sm.kv, &[StripeId(101)]).unwrap();
        assert_eq!(known, vec![true]);
        let bucket_not_empty = sm.run(MetaCommand::DeleteBucket {
            name: bucket("files"),
            tenant: tenant("jena"),
        });
        assert!(matches!(
            bucket_not_empty,
            MetaResponse::Refused(MetaError::BucketNotEmpty(_))
        ));
    }

    #[test]
    fn suspended_versioning_replaces_only_the_null_version() {
        let mut sm = setup();
        set_versioning(&mut sm, VersioningState::Enabled).unwrap();
        let v1 = put_v(&mut sm, "k", 1);
        set_versioning(&mut sm, VersioningState::Suspended).unwrap();
        assert_eq!(put_v(&mut sm, "k", 2), "null");
        assert_eq!(put_v(&mut sm, "k", 3), "null");
        check_invariants(&sm, "k");
        assert_eq!(
            listing(&sm, 100),
            vec![
                ("k".into(), "null".into(), true, false),
                ("k".into(), v1.clone(), false, false)
            ]
        );
        // A delete in a suspended bucket puts a null delete marker in place of the null
        // version.
        let r = delete(&mut sm, "k", None, false).unwrap();
        assert_eq!(
            r,
            ObjectCommandReply::Deleted {
                version_id: Some("null".into()),
                delete_marker: true
            }
        );
        check_invariants(&sm, "k");
        assert_eq!(
            listing(&sm, 100),
            vec![
                ("k".into(), "null".into(), true, true),
                ("k".into(), v1, false, false)
            ]
        );
        // Stripe 2 was replaced by 3, 3 by the marker: both garbage now.
        assert_eq!(
            query::stripes_known(&sm.kv, &[StripeId(1)]).unwrap(),
            vec![true]
        );
    }

    #[test]
    fn version_listing_pages_through_keys_and_versions() {
        let mut sm = setup();
        set_versioning(&mut sm, VersioningState::Enabled).unwrap();
        let mut expected = Vec::new();
        for key in ["a", "b/1", "b/2", "c"] {
            let mut ids = Vec::new();
            for i in 0..3 {
                let stripe = u128::from(sm.next_index) * 10 + i;
                ids.push(put_v(&mut sm, key, stripe));
            }
            for (i, id) in ids.into_iter().rev().enumerate() {
                expected.push((key.to_string(), id, i == 0, false));
            }
        }
        assert_eq!(listing(&sm, 1000), expected);
        // Pages of every size give the same sequence.
        for page in 1..=5u32 {
            let mut got = Vec::new();
            let (mut km, mut vm) = (None, None);
            loop {
                let q = lauscha_core::versioning::ListVersionsQuery {
                    bucket: bucket("files"),
                    prefix: String::new(),
                    delimiter: None,
                    key_marker: km.clone(),
                    version_id_marker: vm.clone(),
                    max_keys: page,
                };
                let l = query::list_versions(&sm.kv, &q).unwrap();
                assert!(l.versions.len() <= page as usize);
                got.extend(
                    l.versions
                        .into_iter()
                        .map(|v| (v.key, v.s3_version_id, v.is_latest, false)),
                );
                if !l.is_truncated {
                    break;
                }
                km = l.next_key_marker;
                vm = l.next_version_id_marker;
            }
            assert_eq!(got, expected, "page size {page}");
        }
        // A delimiter rolls b/ up into one prefix.
        let q = lauscha_core::versioning::ListVersionsQuery {
            bucket: bucket("files"),
            prefix: String::new(),
            delimiter: Some("/".into()),
            key_marker: None,
            version_id_marker: None,
            max_keys: 1000,
        };
        let l = query::list_versions(&sm.kv, &q).unwrap();
        assert_eq!(l.common_prefixes, vec!["b/".to_string()]);
        assert_eq!(l.versions.len(), 6);
    }

    fn locked_bucket() -> Sm {
        let mut sm = Sm::new();
        sm.run(MetaCommand::CreateTenant {
            id: tenant("jena"),
            now_ms: 1,
        });
        let r = sm.run(MetaCommand::CreateBucketWith {
            name: bucket("files"),
            tenant: tenant("jena"),
            policy: PlacementPolicy::DEFAULT,
            now_ms: 2,
            object_lock: true,
        });
        assert!(matches!(r, MetaResponse::Bucket(_)));
        sm
    }

    fn put_locked(
        sm: &mut Sm,
        key: &str,
        stripe: u128,
        mode: lauscha_core::versioning::RetentionMode,
        until_ms: u64,
    ) -> String {
        let r = sm.run(MetaCommand::PutObjectWith {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: key.into(),
            version: Box::new(striped(10, stripe)),
            now_ms: 10,
            missing: Vec::new(),
            condition: None,
            extras: VersionExtras {
                retention: Some(lauscha_core::versioning::Retention { mode, until_ms }),
                ..Default::default()
            },
        });
        match r {
            MetaResponse::ObjectPut { version_id, .. } => version_id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compliance_locked_versions_survive_every_delete_until_they_expire() {
        use lauscha_core::versioning::{Retention, RetentionMode, VersionAttrChange};
        let mut sm = locked_bucket();
        let v = put_locked(&mut sm, "k", 1, RetentionMode::Compliance, 5_000);
        // Suspending versioning is refused under Object Lock.
        assert!(matches!(
            set_versioning(&mut sm, VersioningState::Suspended),
            Err(MetaError::InvalidBucketState(_))
        ));
        // A plain delete only adds a marker; the version stays.
        delete(&mut sm, "k", None, false).unwrap();
        for bypass in [false, true] {
            assert!(matches!(
                delete(&mut sm, "k", Some(&v), bypass),
                Err(MetaError::ObjectLocked(_))
            ));
        }
        let shorten = |until_ms| ObjectCommand::SetVersionAttr {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "k".into(),
            version_id: Some(v.clone()),
            change: VersionAttrChange::Retention(Some(Retention {
                mode: RetentionMode::Compliance,
                until_ms,
            })),
            bypass_governance: true,
        };
        assert!(matches!(
            obj(&mut sm, shorten(2_000)),
            Err(MetaError::ObjectLocked(_))
        ));
        obj(&mut sm, shorten(9_000)).unwrap();
        // The version's stripes are still referenced.
        assert_eq!(
            query::stripes_known(&sm.kv, &[StripeId(1)]).unwrap(),
            vec![true]
        );
        // After the date (commands carry now = 1 000 ms; apply at a later time):
        let late = MetaCommand::Object {
            command: ObjectCommand::Delete {
                bucket: bucket("files"),
                tenant: tenant("jena"),
                key: "k".into(),
                version_id: Some(v.clone()),
                bypass_governance: false,
                if_current: None,
            },
            now_ms: 9_001,
        };
        assert!(matches!(sm.run(late), MetaResponse::Object(_)));
    }

    #[test]
    fn governance_yields_to_bypass_and_legal_hold_to_nothing() {
        use lauscha_core::versioning::{RetentionMode, VersionAttrChange};
        let mut sm = locked_bucket();
        let v = put_locked(&mut sm, "k", 1, RetentionMode::Governance, 5_000);
        assert!(matches!(
            delete(&mut sm, "k", Some(&v), false),
            Err(MetaError::ObjectLocked(_))
        ));
        let hold = |on| ObjectCommand::SetVersionAttr {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "k".into(),
            version_id: None,
            change: VersionAttrChange::LegalHold(on),
            bypass_governance: false,
        };
        obj(&mut sm, hold(true)).unwrap();
        assert!(matches!(
            delete(&mut sm, "k", Some(&v), true),
            Err(MetaError::ObjectLocked(_))
        ));
        obj(&mut sm, hold(false)).unwrap();
        delete(&mut sm, "k", Some(&v), true).unwrap();
        assert!(
            query::get_object(&sm.kv, &bucket("files"), "k")
                .unwrap()
                .is_none()
        );
        // Lock headers on a bucket without Object Lock are refused.
        let mut plain = setup();
        let r = plain.run(MetaCommand::PutObjectWith {
            bucket: bucket("files"),
            tenant: tenant("jena"),
            key: "k".into(),
            version: Box::new(striped(10, 9)),
            now_ms: 10,
            missing: Vec::new(),
            condition: None,
            extras: VersionExtras {
                legal_hold: true,
                ..Default::default()
            },
        });
        assert!(matches!(
            r,
            MetaResponse::Refused(MetaError::InvalidRequest(_))
        ));
    }

    #[test]
    fn noncurrent_shards_can_be_moved_by_maintenance() {
        let mut sm = setup();
        set_versioning(&mut sm, VersioningState::Enabled).unwrap();
        put_v(&mut sm, "k", 1);
        put_v(&mut sm, "k", 2);
        let stripes = query::list_stripes(&sm.kv, None, 10).unwrap();
        assert_eq!(
            stripes.len(),
            2,
            "current and noncurrent stripes are maintained"
        );
        let r = sm.run(MetaCommand::MoveShard {
            stripe_id: StripeId(1),
            shard_idx: 0,
            from: NodeId(1),
            to: NodeId(2),
        });
        assert_eq!(r, MetaResponse::Maintained);
        let stripes = query::list_stripes(&sm.kv, None, 10).unwrap();
        assert_eq!(stripes[0].stripe.shards[0].node, NodeId(2));
    }

    // ---- block volumes ----

    fn vol(
        sm: &mut Sm,
        now_ms: u64,
        cmd: lauscha_core::volume::VolumeCommand,
    ) -> Result<lauscha_core::volume::VolumeReply, MetaError> {
        match sm.run(MetaCommand::Object {
            command: ObjectCommand::Volume(cmd),
            now_ms,
        }) {
            MetaResponse::Object(ObjectCommandReply::Volume(r)) => Ok(r),
            MetaResponse::Refused(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn one_writer_per_volume_and_a_stale_one_is_fenced() {
        use lauscha_core::volume::{VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        vol(
            &mut sm,
            0,
            V::Create {
                name: "disk".into(),
                tenant: tenant("jena"),
                size_bytes: 1 << 30,
                policy: PlacementPolicy::DEFAULT,
            },
        )
        .unwrap();
        let acquire = |holder: &str| V::Acquire {
            name: "disk".into(),
            tenant: tenant("jena"),
            holder: holder.into(),
            ttl_ms: 10_000,
        };
        let Ok(VolumeReply::Leased { epoch: first }) = vol(&mut sm, 1_000, acquire("host-a"))
        else {
            panic!("first attach refused")
        };
        // A second host is refused while the lease is live.
        assert!(matches!(
            vol(&mut sm, 5_000, acquire("host-b")),
            Err(MetaError::Conflict(_))
        ));
        let append = |epoch: u64| zeros_at_0("disk", epoch);
        assert!(matches!(
            vol(&mut sm, 5_000, append(first)),
            Ok(VolumeReply::Appended { first_seq: 1 })
        ));
        // The lease lapses; host-b takes over with a higher epoch.
        let Ok(VolumeReply::Leased { epoch: second }) = vol(&mut sm, 20_000, acquire("host-b"))
        else {
            panic!("takeover refused")
        };
        assert!(second > first);
        // host-a comes back: every write and swap it tries is fenced.
        assert!(matches!(
            vol(&mut sm, 21_000, append(first)),
            Err(MetaError::Fenced(_))
        ));
        let merge = |epoch: u64| V::Merge {
            name: "disk".into(),
            epoch,
            extent: 0,
            data: None,
            merged: vec![1],
        };
        assert!(matches!(
            vol(&mut sm, 21_000, merge(first)),
            Err(MetaError::Fenced(_))
        ));
        assert!(matches!(
            vol(
                &mut sm,
                21_000,
                V::Renew {
                    name: "disk".into(),
                    epoch: first,
                    ttl_ms: 1
                }
            ),
            Err(MetaError::Fenced(_))
        ));
        // host-b merges host-a's acknowledged entry.
        vol(&mut sm, 21_000, merge(second)).unwrap();
        let state = crate::volumes::state(&sm.kv, "disk").unwrap().unwrap();
        assert!(state.journal.is_empty());
        // A live lease blocks deletion; a released one does not.
        assert!(matches!(
            vol(
                &mut sm,
                22_000,
                V::Delete {
                    name: "disk".into(),
                    tenant: tenant("jena")
                }
            ),
            Err(MetaError::Conflict(_))
        ));
        vol(
            &mut sm,
            22_000,
            V::Release {
                name: "disk".into(),
                epoch: second,
            },
        )
        .unwrap();
        vol(
            &mut sm,
            22_000,
            V::Delete {
                name: "disk".into(),
                tenant: tenant("jena"),
            },
        )
        .unwrap();
        assert!(crate::volumes::state(&sm.kv, "disk").unwrap().is_none());
    }

    /// A volume deleted and made again under its name is another volume: the server that
    /// held the old one (fenced out when its lease lapsed) holds no epoch of the new one.
    /// Every volume used to start at epoch 0, so the new one's first lease was epoch 1
    /// again, and the old holder's renewals and appends under epoch 1 were taken.
    #[test]
    fn a_volume_made_again_under_its_name_fences_the_old_holder() {
        use lauscha_core::volume::{VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let create = || V::Create {
            name: "disk".into(),
            tenant: tenant("jena"),
            size_bytes: 1 << 30,
            policy: PlacementPolicy::DEFAULT,
        };
        let acquire = |holder: &str| V::Acquire {
            name: "disk".into(),
            tenant: tenant("jena"),
            holder: holder.into(),
            ttl_ms: 10_000,
        };
        vol(&mut sm, 0, create()).unwrap();
        let Ok(VolumeReply::Leased { epoch: old }) = vol(&mut sm, 1_000, acquire("host-a")) else {
            panic!("attach refused")
        };
        // host-a is cut off; its lease lapses; the volume is deleted and made again, and
        // host-b attaches the new one.
        vol(
            &mut sm,
            20_000,
            V::Delete {
                name: "disk".into(),
                tenant: tenant("jena"),
            },
        )
        .unwrap();
        vol(&mut sm, 20_000, create()).unwrap();
        let Ok(VolumeReply::Leased { epoch: new }) = vol(&mut sm, 21_000, acquire("host-b")) else {
            panic!("attach refused")
        };
        assert_ne!(new, old);
        // host-a comes back: nothing it sends under its old epoch is taken.
        let renew = V::Renew {
            name: "disk".into(),
            epoch: old,
            ttl_ms: 10_000,
        };
        assert!(matches!(
            vol(&mut sm, 22_000, renew),
            Err(MetaError::Fenced(_))
        ));
        assert!(matches!(
            vol(&mut sm, 22_000, zeros_at_0("disk", old)),
            Err(MetaError::Fenced(_))
        ));
        assert!(matches!(
            vol(
                &mut sm,
                22_000,
                V::Release {
                    name: "disk".into(),
                    epoch: old
                }
            ),
            Err(MetaError::Fenced(_))
        ));
        assert!(matches!(
            vol(&mut sm, 22_000, zeros_at_0("disk", new)),
            Ok(VolumeReply::Appended { first_seq: 1 })
        ));
    }

    /// Commands a correct gateway never sends are refused rather than applied: a lease
    /// on a snapshot or a resize of one (snapshots are read-only), a merge listing an
    /// entry twice (its stripes' references would drop twice, and a snapshot's stripes
    /// become garbage), a merge into an extent past the end, a lease of more than
    /// `MAX_LEASE_TTL_MS`, a journal entry whose end overflows, bytes for an entry that
    /// are not its length (appended or rewritten).
    #[test]
    fn volume_commands_that_would_break_an_invariant_are_refused() {
        use lauscha_core::volume::{VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let epoch = leased_volume(&mut sm, "vm");
        assert!(matches!(
            vol(&mut sm, 0, zeros_at_0("vm", epoch)),
            Ok(VolumeReply::Appended { first_seq: 1 })
        ));
        vol(
            &mut sm,
            0,
            V::Snapshot {
                name: "vm".into(),
                tenant: tenant("jena"),
                snapshot: "monday".into(),
            },
        )
        .unwrap();
        let invalid =
            |r: Result<VolumeReply, MetaError>| matches!(r, Err(MetaError::InvalidArgument(_)));
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Acquire {
                name: "vm@monday".into(),
                tenant: tenant("jena"),
                holder: "h".into(),
                ttl_ms: 10_000,
            }
        )));
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Resize {
                name: "vm@monday".into(),
                tenant: tenant("jena"),
                size_bytes: 16 << 20,
            }
        )));
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Merge {
                name: "vm".into(),
                epoch,
                extent: 0,
                data: None,
                merged: vec![1, 1],
            }
        )));
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Merge {
                name: "vm".into(),
                epoch,
                extent: 2, // the volume is 8 MiB: extents 0 and 1
                data: Some(ObjectData::Inline(vec![1; 4096])),
                merged: vec![],
            }
        )));
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Renew {
                name: "vm".into(),
                epoch,
                ttl_ms: u64::MAX,
            }
        )));
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Append {
                name: "vm".into(),
                epoch,
                entries: vec![lauscha_core::volume::JournalEntry {
                    epoch,
                    offset: u64::MAX - 10,
                    len: 100,
                    data: None,
                }],
            }
        )));
        // Bytes that are not exactly the entry's length, appended or rewritten.
        let entry_with = |len: u64, data: ObjectData| lauscha_core::volume::JournalEntry {
            epoch,
            offset: 4096,
            len,
            data: Some(data),
        };
        for data in [ObjectData::Inline(vec![1; 100]), striped(8192, 8).data] {
            assert!(invalid(vol(
                &mut sm,
                0,
                V::Append {
                    name: "vm".into(),
                    epoch,
                    entries: vec![entry_with(4096, data)],
                }
            )));
        }
        let Ok(VolumeReply::Appended {
            first_seq: striped_seq,
        }) = vol(
            &mut sm,
            0,
            V::Append {
                name: "vm".into(),
                epoch,
                entries: vec![entry_with(4096, striped(4096, 7).data)],
            },
        )
        else {
            panic!("append refused")
        };
        assert!(invalid(vol(
            &mut sm,
            0,
            V::Rewrite {
                name: "vm".into(),
                epoch,
                seq: striped_seq,
                data: striped(2048, 9).data,
            }
        )));
        // Nothing of that changed the volume or its snapshot.
        let state = crate::volumes::state(&sm.kv, "vm").unwrap().unwrap();
        assert_eq!(state.journal.len(), 2);
        assert_eq!(
            state.journal[1],
            (striped_seq, entry_with(4096, striped(4096, 7).data)),
            "not rewritten"
        );
        let snapshot = crate::volumes::state(&sm.kv, "vm@monday").unwrap().unwrap();
        assert_eq!(snapshot.volume.size_bytes, 8 << 20);
        assert!(snapshot.volume.lease.is_none());
        // The merge listing the entry once goes through.
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "vm".into(),
                epoch,
                extent: 0,
                data: None,
                merged: vec![1],
            },
        )
        .unwrap();
    }

    /// A stripe whose last reference went is garbage, and its shards are deleted when its
    /// record comes due, whatever references it by then: a command that would reference
    /// it again (here a merge adopting the stripes a lost-answer `Rewrite` had already
    /// replaced) is refused and changes nothing.
    #[test]
    fn a_stripe_released_as_garbage_is_never_referenced_again() {
        use lauscha_core::volume::VolumeCommand as V;
        let mut sm = setup();
        let (epoch, seq) = entry_rewritten(&mut sm, "g", 90, 91);
        assert!(garbage_stripe_ids(&sm).contains(&StripeId(90)));
        let merge_with = |stripe: u128| V::Merge {
            name: "g".into(),
            epoch,
            extent: 0,
            data: Some(striped(4096, stripe).data),
            merged: vec![seq],
        };
        assert!(matches!(
            vol(&mut sm, 0, merge_with(90)),
            Err(MetaError::Conflict(_))
        ));
        let state = crate::volumes::state(&sm.kv, "g").unwrap().unwrap();
        assert!(state.extents.is_empty());
        assert_eq!(state.journal.len(), 1);
        assert_eq!(count_of(&sm, 90), None);
        // A merge with stripes of its own goes through, and frees the rewritten ones.
        vol(&mut sm, 0, merge_with(92)).unwrap();
        assert_eq!(count_of(&sm, 92), Some(1));
        assert!(garbage_stripe_ids(&sm).contains(&StripeId(91)));
    }

    /// Garbage collection deletes a stripe's shards only for the garbage record that holds
    /// it: nothing references the stripe and no newer record lists it. Dropping a record
    /// removes only the index entries that name it, so a newer record's entry (and with
    /// it the refusal to reference the stripe again) stays.
    #[test]
    fn garbage_collection_deletes_a_stripe_only_for_the_record_that_holds_it() {
        let mut sm = setup();
        entry_rewritten(&mut sm, "g", 95, 96);
        let index = keys::garbage_stripe(StripeId(95));
        let holder = sm.kv.get(&index).unwrap().expect("95 is garbage");
        let ids = [StripeId(95), StripeId(96)];
        assert_eq!(query::stripes_known(&sm.kv, &ids).unwrap(), [true, true]);
        // 96 is the entry's; 95 goes with its record, and with no other.
        assert_eq!(
            query::stripes_collectable(&sm.kv, &holder, &ids).unwrap(),
            [true, false]
        );
        let older = keys::garbage(0, 0);
        assert_eq!(
            query::stripes_collectable(&sm.kv, &older, &ids[..1]).unwrap(),
            [false]
        );
        // An older record that lists 95 too (state a bug could leave) is dropped without
        // taking the index entry of the record that holds 95.
        let record = GarbageRecord {
            origin: "older".into(),
            stripes: vec![striped(4096, 95).data.stripes()[0].clone()],
        };
        sm.kv
            .write(vec![Mutation::Put(older.clone(), value::encode(&record))]);
        sm.run(MetaCommand::DropGarbage { key: older });
        assert_eq!(sm.kv.get(&index).unwrap(), Some(holder.clone()));
        sm.run(MetaCommand::DropGarbage { key: holder });
        assert_eq!(sm.kv.get(&index).unwrap(), None);
        assert_eq!(query::stripes_known(&sm.kv, &ids).unwrap(), [false, true]);
    }

    #[test]
    fn volume_stripes_are_known_until_replaced_and_volumes_only_grow() {
        use lauscha_core::volume::{JournalEntry, VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        vol(
            &mut sm,
            0,
            V::Create {
                name: "d".into(),
                tenant: tenant("jena"),
                size_bytes: 8 << 20,
                policy: PlacementPolicy::DEFAULT,
            },
        )
        .unwrap();
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Create {
                    name: "d".into(),
                    tenant: tenant("jena"),
                    size_bytes: 8 << 20,
                    policy: PlacementPolicy::DEFAULT
                }
            ),
            Err(MetaError::VolumeExists(_))
        ));
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Resize {
                    name: "d".into(),
                    tenant: tenant("jena"),
                    size_bytes: 4 << 20
                }
            ),
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Resize {
                    name: "d".into(),
                    tenant: tenant("gera"),
                    size_bytes: 16 << 20
                }
            ),
            Err(MetaError::AccessDenied(_))
        ));
        let Ok(VolumeReply::Leased { epoch }) = vol(
            &mut sm,
            0,
            V::Acquire {
                name: "d".into(),
                tenant: tenant("jena"),
                holder: "h".into(),
                ttl_ms: 10_000,
            },
        ) else {
            panic!()
        };
        let journal = striped(4096, 77).data;
        vol(
            &mut sm,
            0,
            V::Append {
                name: "d".into(),
                epoch,
                entries: vec![JournalEntry {
                    epoch,
                    offset: 0,
                    len: 4096,
                    data: Some(journal),
                }],
            },
        )
        .unwrap();
        assert_eq!(
            query::stripes_known(&sm.kv, &[StripeId(77)]).unwrap(),
            vec![true]
        );
        // Past the end is refused.
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Append {
                    name: "d".into(),
                    epoch,
                    entries: vec![JournalEntry {
                        epoch,
                        offset: 8 << 20,
                        len: 4096,
                        data: None
                    }]
                }
            ),
            Err(MetaError::InvalidArgument(_))
        ));
        let extent = striped(4 << 20, 88).data;
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "d".into(),
                epoch,
                extent: 0,
                data: Some(extent),
                merged: vec![1],
            },
        )
        .unwrap();
        // The journal stripe is garbage now (known through the garbage table), the extent live.
        let garbage = query::garbage(&sm.kv, 10).unwrap();
        assert!(
            garbage
                .iter()
                .any(|g| g.stripes.iter().any(|s| s.id == StripeId(77)))
        );
        assert!(
            sm.kv
                .get(&keys::volume_stripe(StripeId(88)))
                .unwrap()
                .is_some()
        );
        assert!(
            sm.kv
                .get(&keys::volume_stripe(StripeId(77)))
                .unwrap()
                .is_none()
        );
        // A merge that adopts a journal entry's stripes as the extent: they move from the
        // entry to the extent and stay live; only the old extent becomes garbage.
        let Ok(VolumeReply::Appended { first_seq }) = vol(
            &mut sm,
            0,
            V::Append {
                name: "d".into(),
                epoch,
                entries: vec![JournalEntry {
                    epoch,
                    offset: 0,
                    len: 4 << 20,
                    data: Some(striped(4 << 20, 99).data),
                }],
            },
        ) else {
            panic!()
        };
        // Repair moves one of its shards meanwhile; the writer's copy of the stripe list
        // still names the old node.
        let stale = striped(4 << 20, 99).data;
        let ObjectData::Striped { stripes: old, .. } = &stale else {
            panic!()
        };
        let from = old[0].shards[0].node;
        assert_eq!(
            sm.run(MetaCommand::MoveShard {
                stripe_id: StripeId(99),
                shard_idx: 0,
                from,
                to: NodeId(42),
            }),
            MetaResponse::Maintained
        );
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "d".into(),
                epoch,
                extent: 0,
                data: Some(stale),
                merged: vec![first_seq],
            },
        )
        .unwrap();
        let state = crate::volumes::state(&sm.kv, "d").unwrap().unwrap();
        let ObjectData::Striped { stripes, .. } = &state.extents[0].1.data else {
            panic!()
        };
        assert_eq!(
            stripes[0].shards[0].node,
            NodeId(42),
            "adopted as it is now"
        );
        let garbage = garbage_stripe_ids(&sm);
        assert!(garbage.contains(&StripeId(88)), "{garbage:?}");
        assert!(!garbage.contains(&StripeId(99)), "{garbage:?}");
        assert_eq!(
            read::<u32>(&sm.kv, &keys::volume_stripe(StripeId(99))).unwrap(),
            Some(1)
        );
    }

    /// A new 8 MiB volume of jena, leased by holder "h": its epoch.
    /// An `Append` of one 4 KiB zero write at offset 0 of `name`, under `epoch`.
    fn zeros_at_0(name: &str, epoch: u64) -> lauscha_core::volume::VolumeCommand {
        lauscha_core::volume::VolumeCommand::Append {
            name: name.into(),
            epoch,
            entries: vec![lauscha_core::volume::JournalEntry {
                epoch,
                offset: 0,
                len: 4096,
                data: None,
            }],
        }
    }

    /// A leased volume `name` with one journal entry at 0 stored as stripe `old`, then
    /// rewritten as stripe `new` (so `old` is garbage): the epoch and the entry's seq.
    fn entry_rewritten(sm: &mut Sm, name: &str, old: u128, new: u128) -> (u64, u64) {
        use lauscha_core::volume::{JournalEntry, VolumeCommand as V, VolumeReply};
        let epoch = leased_volume(sm, name);
        let append = V::Append {
            name: name.into(),
            epoch,
            entries: vec![JournalEntry {
                epoch,
                offset: 0,
                len: 4096,
                data: Some(striped(4096, old).data),
            }],
        };
        let Ok(VolumeReply::Appended { first_seq: seq }) = vol(sm, 0, append) else {
            panic!("append refused")
        };
        let rewrite = V::Rewrite {
            name: name.into(),
            epoch,
            seq,
            data: striped(4096, new).data,
        };
        vol(sm, 0, rewrite).unwrap();
        (epoch, seq)
    }

    fn leased_volume(sm: &mut Sm, name: &str) -> u64 {
        use lauscha_core::volume::{VolumeCommand as V, VolumeReply};
        vol(
            sm,
            0,
            V::Create {
                name: name.into(),
                tenant: tenant("jena"),
                size_bytes: 8 << 20,
                policy: PlacementPolicy::DEFAULT,
            },
        )
        .unwrap();
        let Ok(VolumeReply::Leased { epoch }) = vol(
            sm,
            0,
            V::Acquire {
                name: name.into(),
                tenant: tenant("jena"),
                holder: "h".into(),
                ttl_ms: 10_000,
            },
        ) else {
            panic!()
        };
        epoch
    }

    #[test]
    fn a_new_epoch_fences_the_holders_own_commands_still_in_flight() {
        use lauscha_core::volume::{VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let first = leased_volume(&mut sm, "disk");
        let append = |epoch: u64| zeros_at_0("disk", epoch);
        let new_epoch = |epoch: u64| V::NewEpoch {
            name: "disk".into(),
            epoch,
            ttl_ms: 10_000,
        };
        let Ok(VolumeReply::Leased { epoch: second }) = vol(&mut sm, 1_000, new_epoch(first))
        else {
            panic!("new epoch refused")
        };
        assert!(second > first);
        // A command sent under the old epoch (a reply the holder never saw) lands late.
        assert!(matches!(
            vol(&mut sm, 2_000, append(first)),
            Err(MetaError::Fenced(_))
        ));
        assert!(matches!(
            vol(&mut sm, 2_000, new_epoch(first)),
            Err(MetaError::Fenced(_))
        ));
        vol(&mut sm, 2_000, append(second)).unwrap();
        // The lease is still the holder's, renewed by the new epoch: others wait.
        assert!(matches!(
            vol(
                &mut sm,
                10_500,
                V::Acquire {
                    name: "disk".into(),
                    tenant: tenant("jena"),
                    holder: "other".into(),
                    ttl_ms: 10_000,
                }
            ),
            Err(MetaError::Conflict(_))
        ));
        let state = crate::volumes::state(&sm.kv, "disk").unwrap().unwrap();
        assert_eq!(state.journal.len(), 1);
        assert_eq!(state.volume.lease.unwrap().epoch, second);
    }

    /// How many keys the state machine holds under `prefix`.
    fn keys_under(sm: &Sm, prefix: &[u8]) -> usize {
        let mut n = 0;
        sm.kv
            .scan(prefix, &keys::prefix_end(prefix).unwrap(), &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        n
    }

    #[test]
    fn a_batch_is_referenced_once_per_entry_and_sliced() {
        use lauscha_core::volume::{BatchedWrite, VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let epoch = leased_volume(&mut sm, "b");
        let batch = |writes: Vec<BatchedWrite>, data: ObjectData| V::AppendBatch {
            name: "b".into(),
            epoch,
            data,
            writes,
        };
        let w = |offset: u64, at: u64| BatchedWrite {
            offset,
            len: 4096,
            at,
        };
        // Slices past the batch's end, inline bytes, or no writes are refused.
        for bad in [
            batch(vec![w(0, 0), w(4096, 4096)], striped(4096, 50).data),
            batch(vec![w(0, 0)], ObjectData::Inline(vec![1; 4096])),
            batch(vec![], striped(4096, 50).data),
            batch(vec![w(8 << 20, 0)], striped(4096, 50).data),
        ] {
            assert!(
                matches!(vol(&mut sm, 0, bad), Err(MetaError::InvalidArgument(_))),
                "refused"
            );
        }
        let Ok(VolumeReply::Appended { first_seq }) = vol(
            &mut sm,
            0,
            batch(vec![w(0, 0), w(5 << 20, 4096)], striped(8192, 51).data),
        ) else {
            panic!()
        };
        let count = |sm: &Sm| read::<u32>(&sm.kv, &keys::volume_stripe(StripeId(51))).unwrap();
        assert_eq!(count(&sm), Some(2), "one reference per entry");
        let state = crate::volumes::state(&sm.kv, "b").unwrap().unwrap();
        assert_eq!(state.journal.len(), 2);
        assert_eq!(state.slices, vec![(first_seq, 0), (first_seq + 1, 4096)]);
        // A snapshot copies the slices with the entries.
        vol(
            &mut sm,
            0,
            V::Snapshot {
                name: "b".into(),
                tenant: tenant("jena"),
                snapshot: "s".into(),
            },
        )
        .unwrap();
        let snap = crate::volumes::state(&sm.kv, "b@s").unwrap().unwrap();
        assert_eq!(snap.slices, state.slices);
        assert_eq!(count(&sm), Some(4));
        // A merge never adopts a batch's stripes as an extent: they hold other bytes too.
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Merge {
                    name: "b".into(),
                    epoch,
                    extent: 0,
                    data: Some(striped(8192, 51).data),
                    merged: vec![first_seq],
                },
            ),
            Err(MetaError::InvalidArgument(_))
        ));
        // Merging one entry drops its reference and its slice; the batch stays live.
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "b".into(),
                epoch,
                extent: 0,
                data: Some(striped(4 << 20, 52).data),
                merged: vec![first_seq],
            },
        )
        .unwrap();
        assert_eq!(count(&sm), Some(3));
        // Rewriting the other gives it its own stripes and no slice.
        vol(
            &mut sm,
            0,
            V::Rewrite {
                name: "b".into(),
                epoch,
                seq: first_seq + 1,
                data: striped(4096, 53).data,
            },
        )
        .unwrap();
        assert_eq!(count(&sm), Some(2), "the snapshot's two entries");
        let state = crate::volumes::state(&sm.kv, "b").unwrap().unwrap();
        assert!(state.slices.is_empty(), "{:?}", state.slices);
        // Deleting the snapshot frees the batch.
        vol(
            &mut sm,
            0,
            V::Delete {
                name: "b@s".into(),
                tenant: tenant("jena"),
            },
        )
        .unwrap();
        assert_eq!(count(&sm), None);
        let garbage = garbage_stripe_ids(&sm);
        assert!(garbage.contains(&StripeId(51)), "{garbage:?}");
        assert!(crate::volumes::state(&sm.kv, "b@s").unwrap().is_none());
        assert_eq!(
            keys_under(&sm, &keys::volume_journal_slices_prefix("b@s")),
            0,
            "the snapshot's slices are deleted with it"
        );
    }

    /// An entry is marked settled when its command says every shard was durable
    /// (`AppendSettled`, `AppendSettledBatch`), by a spill or a rewrite, and only then;
    /// the mark goes with the entry (merge, delete) and is copied with it (snapshot).
    #[test]
    fn settled_marks_follow_their_entries() {
        use lauscha_core::volume::{BatchedWrite, JournalEntry, VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let epoch = leased_volume(&mut sm, "m");
        let w = |offset: u64, at: u64| BatchedWrite {
            offset,
            len: 4096,
            at,
        };
        let appended = |reply: Result<VolumeReply, MetaError>| match reply {
            Ok(VolumeReply::Appended { first_seq }) => first_seq,
            other => panic!("{other:?}"),
        };
        let settled_batch = appended(vol(
            &mut sm,
            0,
            V::AppendSettledBatch {
                name: "m".into(),
                epoch,
                data: striped(8192, 70).data,
                writes: vec![w(0, 0), w(5 << 20, 4096)],
            },
        ));
        let short_batch = appended(vol(
            &mut sm,
            0,
            V::AppendBatch {
                name: "m".into(),
                epoch,
                data: striped(4096, 71).data,
                writes: vec![w(8192, 0)],
            },
        ));
        let entry = |offset: u64, data: ObjectData| JournalEntry {
            epoch,
            offset,
            len: 4096,
            data: Some(data),
        };
        let settled_own = appended(vol(
            &mut sm,
            0,
            V::AppendSettled {
                name: "m".into(),
                epoch,
                entries: vec![
                    entry(1 << 20, ObjectData::Inline(vec![1; 4096])),
                    entry(2 << 20, striped(4096, 72).data),
                ],
            },
        ));
        let short_own = appended(vol(
            &mut sm,
            0,
            V::Append {
                name: "m".into(),
                epoch,
                entries: vec![entry(3 << 20, striped(4096, 73).data)],
            },
        ));
        let settled = |sm: &Sm, name: &str| {
            crate::volumes::state(&sm.kv, name)
                .unwrap()
                .unwrap()
                .settled
        };
        assert_eq!(
            settled(&sm, "m"),
            vec![settled_batch, settled_batch + 1, settled_own + 1],
            "inline entries need no mark; short ones get none"
        );
        vol(
            &mut sm,
            0,
            V::Rewrite {
                name: "m".into(),
                epoch,
                seq: short_batch,
                data: striped(4096, 74).data,
            },
        )
        .unwrap();
        vol(
            &mut sm,
            0,
            V::Snapshot {
                name: "m".into(),
                tenant: tenant("jena"),
                snapshot: "s".into(),
            },
        )
        .unwrap();
        let marked = vec![
            settled_batch,
            settled_batch + 1,
            short_batch,
            settled_own + 1,
        ];
        assert_eq!(settled(&sm, "m"), marked, "a rewrite is settled");
        assert_eq!(settled(&sm, "m@s"), marked, "a snapshot copies the marks");
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "m".into(),
                epoch,
                extent: 0,
                data: Some(striped(4 << 20, 75).data),
                merged: vec![settled_batch, short_batch],
            },
        )
        .unwrap();
        assert_eq!(settled(&sm, "m"), vec![settled_batch + 1, settled_own + 1]);
        assert!(!settled(&sm, "m").contains(&short_own));
        vol(
            &mut sm,
            0,
            V::Delete {
                name: "m@s".into(),
                tenant: tenant("jena"),
            },
        )
        .unwrap();
        assert_eq!(
            keys_under(&sm, &keys::volume_journal_settled_prefix("m@s")),
            0,
            "the snapshot's marks are deleted with it"
        );
    }

    #[test]
    fn a_spill_turns_inline_entries_into_slices_in_place() {
        use lauscha_core::volume::{JournalEntry, SpilledEntry, VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let epoch = leased_volume(&mut sm, "s");
        let inline = |offset: u64, byte: u8| JournalEntry {
            epoch,
            offset,
            len: 4096,
            data: Some(ObjectData::Inline(vec![byte; 4096])),
        };
        let zeros = JournalEntry {
            epoch,
            offset: 8192,
            len: 4096,
            data: None,
        };
        let Ok(VolumeReply::Appended { first_seq }) = vol(
            &mut sm,
            0,
            V::Append {
                name: "s".into(),
                epoch,
                entries: vec![inline(0, 1), inline(4096, 2), zeros],
            },
        ) else {
            panic!()
        };
        let (a, b, z) = (first_seq, first_seq + 1, first_seq + 2);
        let spill = |epoch: u64, data: ObjectData, entries: &[(u64, u64)]| V::Spill {
            name: "s".into(),
            epoch,
            data,
            entries: entries
                .iter()
                .map(|&(seq, at)| SpilledEntry { seq, at })
                .collect(),
        };
        let before = crate::volumes::state(&sm.kv, "s").unwrap().unwrap();
        // Entries that are not inline (zeros), unknown or named twice: the holder's view
        // is not metadata's.
        for bad in [
            spill(epoch, striped(8192, 60).data, &[(a, 0), (z, 4096)]),
            spill(epoch, striped(8192, 60).data, &[(a, 0), (z + 1, 4096)]),
            spill(epoch, striped(8192, 60).data, &[(a, 0), (a, 4096)]),
        ] {
            let r = vol(&mut sm, 0, bad);
            assert!(matches!(r, Err(MetaError::Conflict(_))), "{r:?}");
        }
        // Slices past the end, inline bytes, nothing to spill.
        for bad in [
            spill(epoch, striped(8192, 60).data, &[(a, 0), (b, 4097)]),
            spill(epoch, ObjectData::Inline(vec![0; 8192]), &[(a, 0)]),
            spill(epoch, striped(8192, 60).data, &[]),
        ] {
            let r = vol(&mut sm, 0, bad);
            assert!(matches!(r, Err(MetaError::InvalidArgument(_))), "{r:?}");
        }
        let r = vol(
            &mut sm,
            0,
            spill(epoch - 1, striped(8192, 60).data, &[(a, 0)]),
        );
        assert!(matches!(r, Err(MetaError::Fenced(_))), "{r:?}");
        assert_eq!(
            crate::volumes::state(&sm.kv, "s").unwrap().unwrap(),
            before,
            "a refused spill changes nothing"
        );

        // The entries keep their sequence numbers and ranges; their bytes are slices now.
        vol(
            &mut sm,
            0,
            spill(epoch, striped(8192, 60).data, &[(b, 0), (a, 4096)]),
        )
        .unwrap();
        let count = |sm: &Sm| read::<u32>(&sm.kv, &keys::volume_stripe(StripeId(60))).unwrap();
        assert_eq!(count(&sm), Some(2), "one reference per entry");
        let state = crate::volumes::state(&sm.kv, "s").unwrap().unwrap();
        assert_eq!(state.slices, vec![(a, 4096), (b, 0)]);
        assert_eq!(state.settled, vec![a, b], "a spill is settled");
        let seqs: Vec<u64> = state.journal.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, vec![a, b, z]);
        for (seq, entry) in &state.journal {
            let old = &before.journal.iter().find(|(s, _)| s == seq).unwrap().1;
            assert_eq!((entry.offset, entry.len), (old.offset, old.len));
            if *seq == z {
                assert_eq!(entry.data, None);
            } else {
                assert_eq!(entry.data, Some(striped(8192, 60).data));
            }
        }
        // Once spilled, never again: a lost answer sent twice is refused.
        let r = vol(&mut sm, 0, spill(epoch, striped(4096, 61).data, &[(a, 0)]));
        assert!(matches!(r, Err(MetaError::Conflict(_))), "{r:?}");
        // The next append takes the next sequence number.
        let Ok(VolumeReply::Appended { first_seq: next }) = vol(
            &mut sm,
            0,
            V::Append {
                name: "s".into(),
                epoch,
                entries: vec![inline(0, 3)],
            },
        ) else {
            panic!()
        };
        assert_eq!(next, z + 1);
        // Merging the extent drops both references: the spill's stripes become garbage.
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "s".into(),
                epoch,
                extent: 0,
                data: Some(striped(4 << 20, 62).data),
                merged: vec![a, b, z, next],
            },
        )
        .unwrap();
        assert_eq!(count(&sm), None);
        let garbage = garbage_stripe_ids(&sm);
        assert!(garbage.contains(&StripeId(60)), "{garbage:?}");
        let state = crate::volumes::state(&sm.kv, "s").unwrap().unwrap();
        assert!(state.journal.is_empty() && state.slices.is_empty());
    }

    #[test]
    fn snapshots_and_clones_share_stripes_until_nothing_references_them() {
        use lauscha_core::volume::{JournalEntry, VolumeCommand as V, VolumeReply};
        let mut sm = setup();
        let epoch = leased_volume(&mut sm, "vm");
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "vm".into(),
                epoch,
                extent: 0,
                data: Some(striped(4 << 20, 1).data),
                merged: vec![],
            },
        )
        .unwrap();
        vol(
            &mut sm,
            0,
            V::Append {
                name: "vm".into(),
                epoch,
                entries: vec![JournalEntry {
                    epoch,
                    offset: 0,
                    len: 4096,
                    data: Some(striped(4096, 2).data),
                }],
            },
        )
        .unwrap();
        // The snapshot has the extent and the journal entry, sharing their stripes.
        vol(
            &mut sm,
            0,
            V::Snapshot {
                name: "vm".into(),
                tenant: tenant("jena"),
                snapshot: "monday".into(),
            },
        )
        .unwrap();
        let snap = crate::volumes::state(&sm.kv, "vm@monday").unwrap().unwrap();
        assert!(snap.volume.read_only);
        assert_eq!((snap.extents.len(), snap.journal.len()), (1, 1));
        // The volume moves on: its merge replaces extent 0 and drops the entry, but the
        // snapshot still holds the old stripes, so nothing becomes garbage.
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "vm".into(),
                epoch,
                extent: 0,
                data: Some(striped(4 << 20, 3).data),
                merged: vec![1],
            },
        )
        .unwrap();
        let in_garbage = |sm: &Sm, id: u128| {
            query::garbage(&sm.kv, 100)
                .unwrap()
                .iter()
                .any(|g| g.stripes.iter().any(|s| s.id == StripeId(id)))
        };
        assert!(!in_garbage(&sm, 1) && !in_garbage(&sm, 2));
        // A clone of the snapshot shares them too; a clone of a volume is refused.
        vol(
            &mut sm,
            0,
            V::Clone {
                name: "vm2".into(),
                tenant: tenant("jena"),
                snapshot: "vm@monday".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Clone {
                    name: "vm3".into(),
                    tenant: tenant("jena"),
                    snapshot: "vm".into()
                }
            ),
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Snapshot {
                    name: "vm".into(),
                    tenant: tenant("gera"),
                    snapshot: "x".into()
                }
            ),
            Err(MetaError::AccessDenied(_))
        ));
        // Snapshots are read-only.
        assert!(matches!(
            vol(
                &mut sm,
                0,
                V::Acquire {
                    name: "vm@monday".into(),
                    tenant: tenant("jena"),
                    holder: "h".into(),
                    ttl_ms: 1
                }
            )
            .and_then(|r| match r {
                VolumeReply::Leased { epoch } => vol(
                    &mut sm,
                    0,
                    V::Append {
                        name: "vm@monday".into(),
                        epoch,
                        entries: vec![JournalEntry {
                            epoch,
                            offset: 0,
                            len: 4096,
                            data: None
                        }]
                    }
                ),
                other => Ok(other),
            }),
            Err(MetaError::InvalidArgument(_))
        ));
        // Deleting the snapshot frees nothing the clone holds; deleting the clone too
        // frees the old stripes.
        vol(
            &mut sm,
            100_000,
            V::Delete {
                name: "vm@monday".into(),
                tenant: tenant("jena"),
            },
        )
        .unwrap();
        assert!(!in_garbage(&sm, 1) && !in_garbage(&sm, 2));
        vol(
            &mut sm,
            100_000,
            V::Delete {
                name: "vm2".into(),
                tenant: tenant("jena"),
            },
        )
        .unwrap();
        assert!(in_garbage(&sm, 1) && in_garbage(&sm, 2));
        assert!(!in_garbage(&sm, 3), "the volume's current extent stays");
    }

    #[test]
    fn maintenance_sees_volume_stripes_and_moves_them_in_every_record() {
        use lauscha_core::volume::VolumeCommand as V;
        let mut sm = setup();
        let epoch = leased_volume(&mut sm, "vm");
        vol(
            &mut sm,
            0,
            V::Merge {
                name: "vm".into(),
                epoch,
                extent: 1,
                data: Some(striped(4 << 20, 5).data),
                merged: vec![],
            },
        )
        .unwrap();
        vol(
            &mut sm,
            0,
            V::Snapshot {
                name: "vm".into(),
                tenant: tenant("jena"),
                snapshot: "s".into(),
            },
        )
        .unwrap();
        let listed = query::list_stripes(&sm.kv, None, 10).unwrap();
        assert_eq!(listed.len(), 1, "one stripe, shared");
        assert_eq!(listed[0].stripe.id, StripeId(5));
        assert!(
            listed[0].owner.starts_with("volume vm"),
            "{}",
            listed[0].owner
        );
        // Repair moves the shard: both the volume's and the snapshot's record follow.
        let r = sm.run(MetaCommand::MoveShard {
            stripe_id: StripeId(5),
            shard_idx: 0,
            from: NodeId(1),
            to: NodeId(9),
        });
        assert_eq!(r, MetaResponse::Maintained);
        for name in ["vm", "vm@s"] {
            let state = crate::volumes::state(&sm.kv, name).unwrap().unwrap();
            let ObjectData::Striped { stripes, .. } = &state.extents[0].1.data else {
                panic!()
            };
            assert_eq!(stripes[0].shards[0].node, NodeId(9), "{name}");
        }
        // A move from where the shard no longer is, is refused.
        let r = sm.run(MetaCommand::MoveShard {
            stripe_id: StripeId(5),
            shard_idx: 0,
            from: NodeId(1),
            to: NodeId(8),
        });
        assert!(matches!(r, MetaResponse::Refused(MetaError::Conflict(_))));
    }
}
