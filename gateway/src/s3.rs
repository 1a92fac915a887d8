//! The S3 operations, on top of s3s's DTOs and routing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::StreamExt;
use lauscha_core::config::DEFAULT_POLICY_NAME;
use lauscha_core::model::{ListObjectsQuery, MAX_PART_NUMBER, ObjectListing};
use lauscha_core::{
    AccessKeyId, Bucket, BucketName, ChecksumAlgorithm, ContentHeaders, ObjectVersion, Permission,
    StripeId, TenantId, UploadPart, WriteCondition, place,
};
use lauscha_proto::MetaErrorKind;
use s3s::checksum::ChecksumHasher;
use s3s::dto::{self, ETag, StreamingBlob, Timestamp};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use tracing::{info, warn};

use crate::GatewayError;
use crate::gateway::Inner;
use crate::meta_client::UploadName;
use crate::{policy, read, versioned, write};
use lauscha_core::versioning::{
    BucketSetting, BucketSettingKind, ListVersionsQuery, MetaQuery, MetaQueryReply,
    NULL_VERSION_ID, ObjectCommand, ObjectCommandReply, Retention, VersionAttrChange,
    VersionDetails, VersionEntry, VersioningState,
};

/// Sets the `checksum_*` fields of an s3s output (PutObjectOutput, Part, ...) from stored
/// checksums.
macro_rules! set_checksums {
    ($out:expr, $checksums:expr) => {
        for (alg, value) in $checksums {
            match alg {
                ChecksumAlgorithm::Crc32 => $out.checksum_crc32 = Some(value),
                ChecksumAlgorithm::Crc32c => $out.checksum_crc32c = Some(value),
                ChecksumAlgorithm::Crc64Nvme => $out.checksum_crc64nvme = Some(value),
                ChecksumAlgorithm::Sha1 => $out.checksum_sha1 = Some(value),
                ChecksumAlgorithm::Sha256 => $out.checksum_sha256 = Some(value),
            }
        }
    };
}

/// Request header of CreateBucket naming the placement policy (storage class) of the
/// bucket; response header of HeadBucket with the bucket's policy (`k+m/spread`).
pub const POLICY_HEADER: &str = "x-lauscha-policy";

/// Most keys one DeleteObjects request may name (as S3).
const MAX_DELETE_KEYS: usize = 1000;
/// Most keys one listing page returns (as S3).
const MAX_LIST_KEYS: i32 = 1000;

/// The S3 face of the gateway.
pub struct S3Gateway {
    pub(crate) inner: Arc<Inner>,
}

/// Who is asking.
struct Caller {
    tenant: TenantId,
    /// What a restricted key may do, by bucket; `None`: everything in its tenant.
    grants: Option<BTreeMap<BucketName, Permission>>,
}

impl Caller {
    /// Whether the key may do what `need` asks in `bucket` (tenant ownership is checked
    /// separately, by metadata).
    fn require(&self, bucket: &BucketName, need: Permission) -> S3Result<()> {
        match &self.grants {
            None => Ok(()),
            Some(grants) if grants.get(bucket).is_some_and(|p| *p >= need) => Ok(()),
            Some(_) => Err(s3_error!(
                AccessDenied,
                "this access key may not {} in bucket {bucket}",
                match need {
                    Permission::Read => "read",
                    Permission::Write => "write",
                    Permission::Owner => "manage the bucket",
                }
            )),
        }
    }
}

fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn timestamp_s(unix_s: i64) -> Option<Timestamp> {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .map(Timestamp::from)
}

fn unix_seconds(t: Timestamp) -> i64 {
    let t: time::OffsetDateTime = t.into();
    t.unix_timestamp()
}

/// `Content-Encoding` without the `aws-chunked` coding, which describes the upload, not
/// the object; `None` when nothing else remains.
fn without_aws_chunked(value: &str) -> Option<String> {
    let rest: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!rest.is_empty()).then(|| rest.join(", "))
}

fn bucket_name(name: &str) -> S3Result<BucketName> {
    BucketName::parse(name).map_err(|e| s3_error!(InvalidBucketName, "{e}"))
}

fn object_key(key: &str) -> S3Result<()> {
    lauscha_core::names::validate_object_key(key).map_err(|e| s3_error!(InvalidArgument, "{e}"))
}

/// Percent-encodes for `encoding-type=url` listings: everything but unreserved characters
/// and '/', so that '+' and ' ' survive clients that decode with unquote_plus.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encoder(encoding_type: &Option<dto::EncodingType>) -> S3Result<fn(&str) -> String> {
    match encoding_type.as_ref().map(|e| e.as_str()) {
        None => Ok(|s| s.to_string()),
        Some(e) if e.eq_ignore_ascii_case("url") => Ok(url_encode),
        Some(other) => Err(s3_error!(
            InvalidArgument,
            "invalid encoding type {other:?}"
        )),
    }
}

fn max_keys(requested: Option<i32>) -> S3Result<u32> {
    match requested {
        None => Ok(MAX_LIST_KEYS as u32),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok(n.min(MAX_LIST_KEYS) as u32),
    }
}

/// The checksum algorithms a PUT asks for: those with a value in a header, the declared
/// algorithm (header or trailer), each with the value the client sent if any.
struct RequestedChecksums {
    expected: BTreeMap<ChecksumAlgorithm, Option<String>>,
}

impl RequestedChecksums {
    fn hasher(&self) -> ChecksumHasher {
        let mut hasher = ChecksumHasher::default();
        for alg in self.expected.keys() {
            match alg {
                ChecksumAlgorithm::Crc32 => hasher.crc32 = Some(Default::default()),
                ChecksumAlgorithm::Crc32c => hasher.crc32c = Some(Default::default()),
                ChecksumAlgorithm::Crc64Nvme => hasher.crc64nvme = Some(Default::default()),
                ChecksumAlgorithm::Sha1 => hasher.sha1 = Some(Default::default()),
                ChecksumAlgorithm::Sha256 => hasher.sha256 = Some(Default::default()),
            }
        }
        hasher
    }
}

fn computed(checksum: &dto::Checksum, alg: ChecksumAlgorithm) -> Option<&String> {
    match alg {
        ChecksumAlgorithm::Crc32 => checksum.checksum_crc32.as_ref(),
        ChecksumAlgorithm::Crc32c => checksum.checksum_crc32c.as_ref(),
        ChecksumAlgorithm::Crc64Nvme => checksum.checksum_crc64nvme.as_ref(),
        ChecksumAlgorithm::Sha1 => checksum.checksum_sha1.as_ref(),
        ChecksumAlgorithm::Sha256 => checksum.checksum_sha256.as_ref(),
    }
}

fn header_name(alg: ChecksumAlgorithm) -> String {
    format!("x-amz-checksum-{}", alg.as_str().to_ascii_lowercase())
}

impl S3Gateway {
    async fn caller<T>(&self, req: &S3Request<T>) -> S3Result<Caller> {
        let credentials = req
            .credentials
            .as_ref()
            .ok_or_else(|| s3_error!(AccessDenied, "anonymous access is not allowed"))?;
        let entry = self
            .inner
            .key_entry(&AccessKeyId(credentials.access_key.clone()))
            .await?;
        Ok(Caller {
            tenant: entry.key.tenant,
            grants: entry.grants,
        })
    }

    /// Who is asking, for an operation bucket policies govern. A key of the owning tenant
    /// acts as itself (limited by its grants); another tenant's key or an anonymous
    /// request acts for the owner when the policy allows it, for this request only. An
    /// explicit Deny refuses everyone, the owner's keys included.
    async fn caller_for<T>(
        &self,
        req: &S3Request<T>,
        name: &BucketName,
        action: policy::Action,
        key: Option<&str>,
        need: Permission,
    ) -> S3Result<Caller> {
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        let own = match &principal {
            Some(id) => Some(self.inner.key_entry(&AccessKeyId(id.clone())).await?),
            None => None,
        };
        let view = self.inner.bucket_view(name).await?;
        let decision = match &view.settings.policy {
            None => policy::Decision::Silent,
            Some(text) => policy::BucketPolicy::parse(name, text)
                .map_err(|e| GatewayError::Internal(format!("stored policy of {name}: {e}")))?
                .evaluate(principal.as_deref(), action, name, key),
        };
        if decision == policy::Decision::Deny {
            return Err(s3_error!(
                AccessDenied,
                "the bucket policy of {name} denies {}",
                action.as_str()
            ));
        }
        if let Some(entry) = &own
            && entry.key.tenant == view.bucket.tenant
        {
            let caller = Caller {
                tenant: entry.key.tenant.clone(),
                grants: entry.grants.clone(),
            };
            caller.require(name, need)?;
            return Ok(caller);
        }
        if decision == policy::Decision::Allow {
            return Ok(Caller {
                tenant: view.bucket.tenant.clone(),
                grants: None,
            });
        }
        Err(match own {
            None => s3_error!(AccessDenied, "anonymous access is not allowed"),
            Some(_) => s3_error!(AccessDenied, "bucket {name} belongs to another tenant"),
        })
    }

    /// Streams a request body into the store and checks it against Content-MD5 and the
    /// declared checksums (headers or aws-chunked trailers); returns what was written, its
    /// uncommitted shards and the checksums to store. A mismatch is BadDigest, and the
    /// dropped `Uncommitted` deletes the shards.
    async fn write_verified(
        &self,
        upload: UploadedBody<'_>,
        policy: lauscha_core::PlacementPolicy,
        storage: write::Storage,
    ) -> S3Result<(
        write::WrittenBody,
        write::Uncommitted,
        BTreeMap<ChecksumAlgorithm, String>,
    )> {
        let content_md5 = decode_content_md5(upload.content_md5)?;
        let mut requested = requested_checksums(upload.checksums, upload.checksum_algorithm)?;
        let declared = upload
            .content_length
            .map(|n| {
                u64::try_from(n).map_err(|_| s3_error!(InvalidArgument, "negative Content-Length"))
            })
            .transpose()?;
        let body = upload.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        });
        let (written, uncommitted) = write::write_body(
            &self.inner,
            policy,
            body,
            declared,
            requested.hasher(),
            storage,
        )
        .await?;
        // Trailers arrive after the body; they carry the checksum in aws-chunked uploads.
        let checksums = verify_written(
            &mut requested,
            upload.trailers.and_then(|t| t.take()),
            content_md5,
            &written,
        )?;
        Ok((written, uncommitted, checksums))
    }

    /// Refuses to commit an upload that has run for half the orphan grace period: shards
    /// older than that which nothing references are deleted, so it may already have lost
    /// its first stripes.
    fn check_upload_time(&self, started: std::time::Instant, what: &str) -> S3Result<()> {
        let max_put = Duration::from_secs(self.inner.config.maintenance.orphan_grace_s / 2);
        if started.elapsed() > max_put {
            return Err(s3_error!(
                RequestTimeout,
                "{what} took longer than {} s; send large objects as smaller parts",
                max_put.as_secs()
            ));
        }
        Ok(())
    }

    /// The object a copy reads: the caller's, current, and meeting the copy-source
    /// conditions ([if-match, if-none-match], [if-unmodified-since, if-modified-since]).
    async fn copy_source(
        &self,
        caller: &Caller,
        copy_source: &dto::CopySource,
        etags: [&Option<dto::ETagCondition>; 2],
        times: [&Option<Timestamp>; 2],
    ) -> S3Result<(BucketName, String, ObjectVersion)> {
        let dto::CopySource::Bucket {
            bucket,
            key,
            version_id,
        } = copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copy sources are bucket/key; access points do not exist here"
            ));
        };
        let name = bucket_name(bucket)?;
        let source = match version_id {
            None => {
                self.owned_bucket(caller, &name, Permission::Read).await?;
                self.inner
                    .meta
                    .get_object(&name, &caller.tenant, key)
                    .await?
            }
            Some(v) => {
                let details = self
                    .version_details(caller, &name, key, Some(v), Permission::Read)
                    .await?;
                match object_of(details, true) {
                    Ok(object) => object,
                    Err(_) => {
                        return Err(s3_error!(
                            InvalidRequest,
                            "the copy source version is a delete marker"
                        ));
                    }
                }
            }
        };
        check_copy_conditions(&source, etags[0], times[0], etags[1], times[1])?;
        Ok((name, key.to_string(), source))
    }

    /// The bucket, if the caller's tenant owns it.
    async fn owned_bucket(
        &self,
        caller: &Caller,
        name: &BucketName,
        need: Permission,
    ) -> S3Result<Bucket> {
        caller.require(name, need)?;
        let bucket = self.inner.meta.get_bucket(name).await?;
        if bucket.tenant != caller.tenant {
            return Err(s3_error!(
                AccessDenied,
                "bucket {name} belongs to another tenant"
            ));
        }
        Ok(bucket)
    }

    /// A version by S3 version id (`None`: the newest, maybe a delete marker), in a
    /// bucket of the caller's tenant.
    async fn version_details(
        &self,
        caller: &Caller,
        name: &BucketName,
        key: &str,
        version_id: Option<&str>,
        need: Permission,
    ) -> S3Result<VersionDetails> {
        self.owned_bucket(caller, name, need).await?;
        match self.inner.meta.version(name, key, version_id).await? {
            Some(d) => Ok(d),
            None if version_id.is_some() => Err(s3_error!(
                NoSuchVersion,
                "{name}/{key} has no version {}",
                version_id.unwrap_or_default()
            )),
            None => Err(s3_error!(NoSuchKey, "{name}/{key} does not exist")),
        }
    }

    /// S3's composite checksums of a multipart object: for each algorithm every listed
    /// part was stored with, the algorithm over the parts' raw checksums in order, with
    /// `-<parts>`. A part checksum the client lists must match the stored one
    /// (InvalidPart otherwise).
    async fn composite_checksums(
        &self,
        upload: &UploadName<'_>,
        listed: &[(u32, Vec<(ChecksumAlgorithm, String)>)],
    ) -> S3Result<lauscha_core::versioning::CompositeChecksums> {
        let (stored, _) = self
            .inner
            .meta
            .list_parts(upload, 0, MAX_PART_NUMBER)
            .await?;
        let mut parts = Vec::with_capacity(listed.len());
        for (number, given) in listed {
            let Some(part) = stored.iter().find(|p| p.part_number == *number) else {
                return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
            };
            for (alg, value) in given {
                if part.version.checksums.get(alg) != Some(value) {
                    return Err(s3_error!(
                        InvalidPart,
                        "part {number}: the listed {} checksum is not the stored one",
                        alg.as_str()
                    ));
                }
            }
            parts.push((*number, part.version.checksums.clone()));
        }
        let mut composite = BTreeMap::new();
        let all_algs = [
            ChecksumAlgorithm::Crc32,
            ChecksumAlgorithm::Crc32c,
            ChecksumAlgorithm::Crc64Nvme,
            ChecksumAlgorithm::Sha1,
            ChecksumAlgorithm::Sha256,
        ];
        for alg in all_algs {
            if parts.is_empty() || !parts.iter().all(|(_, c)| c.contains_key(&alg)) {
                continue;
            }
            let requested = RequestedChecksums {
                expected: [(alg, None)].into_iter().collect(),
            };
            let mut hasher = requested.hasher();
            for (_, c) in &parts {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(&c[&alg])
                    .map_err(|e| GatewayError::Internal(format!("stored checksum: {e}")))?;
                hasher.update(&raw);
            }
            let value = computed(&hasher.finalize(), alg)
                .cloned()
                .ok_or_else(|| GatewayError::Internal("composite not computed".into()))?;
            composite.insert(alg, format!("{value}-{}", parts.len()));
        }
        Ok(lauscha_core::versioning::CompositeChecksums { composite, parts })
    }

    /// A bucket's settings, the caller's tenant owning it.
    async fn settings(
        &self,
        caller: &Caller,
        name: &BucketName,
        need: Permission,
    ) -> S3Result<lauscha_core::versioning::BucketSettings> {
        self.owned_bucket(caller, name, need).await?;
        Ok(self.inner.meta.bucket_settings(name).await?)
    }

    async fn put_setting(
        &self,
        caller: &Caller,
        name: &BucketName,
        setting: BucketSetting,
    ) -> S3Result<()> {
        caller.require(name, Permission::Owner)?;
        self.inner
            .meta
            .execute(&ObjectCommand::PutBucketSetting {
                bucket: name.clone(),
                tenant: caller.tenant.clone(),
                setting,
            })
            .await?;
        self.inner.forget_settings(name);
        Ok(())
    }

    async fn delete_setting(
        &self,
        caller: &Caller,
        name: &BucketName,
        kind: BucketSettingKind,
    ) -> S3Result<()> {
        caller.require(name, Permission::Owner)?;
        self.inner
            .meta
            .execute(&ObjectCommand::DeleteBucketSetting {
                bucket: name.clone(),
                tenant: caller.tenant.clone(),
                kind,
            })
            .await?;
        self.inner.forget_settings(name);
        Ok(())
    }

    async fn set_attr(
        &self,
        caller: &Caller,
        name: &BucketName,
        key: String,
        version_id: Option<String>,
        change: VersionAttrChange,
        bypass_governance: bool,
    ) -> S3Result<()> {
        self.inner
            .meta
            .execute(&ObjectCommand::SetVersionAttr {
                bucket: name.clone(),
                tenant: caller.tenant.clone(),
                key,
                version_id,
                change,
                bypass_governance,
            })
            .await?;
        Ok(())
    }

    fn listing_query(
        bucket: BucketName,
        prefix: Option<String>,
        delimiter: Option<String>,
        start_after: Option<String>,
        max_keys: u32,
    ) -> ListObjectsQuery {
        ListObjectsQuery {
            bucket,
            prefix: prefix.unwrap_or_default(),
            delimiter: delimiter.filter(|d| !d.is_empty()),
            start_after: start_after.filter(|s| !s.is_empty()),
            max_keys,
        }
    }

    fn contents(listing: &ObjectListing, encode: fn(&str) -> String) -> Vec<dto::Object> {
        listing
            .objects
            .iter()
            .map(|o| dto::Object {
                key: Some(encode(&o.key)),
                size: Some(o.size_bytes as i64),
                e_tag: Some(ETag::Strong(o.etag.clone())),
                last_modified: Some(timestamp(o.last_modified_ms)),
                storage_class: Some(dto::ObjectStorageClass::from_static(
                    dto::ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect()
    }

    fn prefixes(listing: &ObjectListing, encode: fn(&str) -> String) -> Vec<dto::CommonPrefix> {
        listing
            .common_prefixes
            .iter()
            .map(|p| dto::CommonPrefix {
                prefix: Some(encode(p)),
            })
            .collect()
    }
}

/// COMPOSITE for a multipart object's checksums (`value-N`), FULL_OBJECT otherwise.
fn checksum_type(checksums: &BTreeMap<ChecksumAlgorithm, String>) -> Option<dto::ChecksumType> {
    let composite = checksums.values().next()?.contains('-');
    Some(dto::ChecksumType::from_static(if composite {
        dto::ChecksumType::COMPOSITE
    } else {
        dto::ChecksumType::FULL_OBJECT
    }))
}

/// The version id to show in a response: none for the null version (as S3 does in
/// buckets that were never versioned).
fn shown_version_id(id: String) -> Option<String> {
    (id != NULL_VERSION_ID && !id.is_empty()).then_some(id)
}

/// The object of a version; a delete marker answers as S3 does: 404 NoSuchKey when the
/// newest version was asked for, 405 MethodNotAllowed when it was asked for by id, with
/// `x-amz-delete-marker: true` either way.
fn object_of(details: VersionDetails, by_id: bool) -> S3Result<ObjectVersion> {
    match details.view.entry {
        VersionEntry::Object(mut v) => {
            v.version_id = details.view.s3_version_id;
            Ok(v)
        }
        VersionEntry::DeleteMarker { .. } => {
            let mut e = if by_id {
                s3_error!(MethodNotAllowed, "the version is a delete marker")
            } else {
                s3_error!(
                    NoSuchKey,
                    "the newest version of the key is a delete marker"
                )
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "x-amz-delete-marker",
                http::HeaderValue::from_static("true"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&details.view.s3_version_id) {
                headers.insert("x-amz-version-id", v);
            }
            e.set_headers(headers);
            Err(e)
        }
    }
}

/// Sets the Object Lock headers of a GET or HEAD response from a version's lock.
macro_rules! set_lock_headers {
    ($output:expr, $lock:expr) => {{
        let lock: &lauscha_core::versioning::VersionLock = &$lock;
        if let Some(r) = lock.retention {
            $output.object_lock_mode = Some(dto::ObjectLockMode::from(r.mode.as_str().to_string()));
            $output.object_lock_retain_until_date = Some(versioned::ms_timestamp(r.until_ms));
        }
        if lock.legal_hold {
            $output.object_lock_legal_hold_status = Some(
                dto::ObjectLockLegalHoldStatus::from_static(dto::ObjectLockLegalHoldStatus::ON),
            );
        }
    }};
}

/// Parses `x-amz-copy-source-range: bytes=first-last` (both given, inside the object).
fn copy_source_range(text: &str, size_bytes: u64) -> S3Result<std::ops::Range<u64>> {
    let parsed = text
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match parsed {
        Some((first, last)) if first <= last && last < size_bytes => Ok(first..last + 1),
        Some(_) => Err(s3_error!(
            InvalidRange,
            "the copy-source range {text} is not inside the {size_bytes}-byte source"
        )),
        None => Err(s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )),
    }
}

/// A request body and what it declares about itself (PutObject, UploadPart).
struct UploadedBody<'a> {
    body: Option<StreamingBlob>,
    content_length: Option<i64>,
    content_md5: &'a Option<String>,
    checksums: [(ChecksumAlgorithm, &'a Option<String>); 5],
    checksum_algorithm: &'a Option<dto::ChecksumAlgorithm>,
    trailers: Option<s3s::TrailingHeaders>,
}

/// A part as metadata stores it: the written bytes with their ETag and checksums.
fn uploaded_part(
    part_number: u32,
    written: write::WrittenBody,
    etag: String,
    checksums: BTreeMap<ChecksumAlgorithm, String>,
) -> UploadPart {
    UploadPart {
        part_number,
        version: ObjectVersion {
            version_id: String::new(),
            size_bytes: written.size_bytes,
            etag,
            last_modified_ms: 0,
            content_type: None,
            headers: ContentHeaders::default(),
            user_metadata: BTreeMap::new(),
            checksums,
            data: written.data,
        },
    }
}

/// Decodes a Content-MD5 header.
fn decode_content_md5(value: &Option<String>) -> S3Result<Option<[u8; 16]>> {
    match value {
        None => Ok(None),
        Some(text) => Ok(Some(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or(GatewayError::InvalidDigest)?,
        )),
    }
}

/// The checksums a request declares (values in headers, or an algorithm whose value comes
/// in a trailer).
fn requested_checksums<'a>(
    values: impl IntoIterator<Item = (ChecksumAlgorithm, &'a Option<String>)>,
    algorithm: &Option<dto::ChecksumAlgorithm>,
) -> S3Result<RequestedChecksums> {
    let mut requested = RequestedChecksums {
        expected: BTreeMap::new(),
    };
    for (alg, value) in values {
        if let Some(v) = value {
            requested.expected.insert(alg, Some(v.clone()));
        }
    }
    if let Some(alg) = algorithm {
        let alg = lauscha_proto::checksum_algorithm(&alg.as_str().to_ascii_uppercase())
            .ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "unknown checksum algorithm {}",
                    alg.as_str()
                )
            })?;
        requested.expected.entry(alg).or_insert(None);
    }
    Ok(requested)
}

/// Checks a written body against Content-MD5 and the declared checksums (header or
/// trailer values); returns the checksums to store. A mismatch is BadDigest.
fn verify_written(
    requested: &mut RequestedChecksums,
    trailers: Option<http::HeaderMap>,
    content_md5: Option<[u8; 16]>,
    written: &write::WrittenBody,
) -> S3Result<BTreeMap<ChecksumAlgorithm, String>> {
    if let Some(trailers) = trailers {
        for (alg, expected) in requested.expected.iter_mut() {
            if let Some(value) = trailers.get(header_name(*alg)) {
                let value = value
                    .to_str()
                    .map_err(|_| s3_error!(InvalidArgument, "trailer is not ASCII"))?;
                *expected = Some(value.to_string());
            }
        }
    }
    if let Some(md5) = content_md5
        && Some(md5) != written.md5
    {
        return Err(GatewayError::BadDigest(
            "the Content-MD5 you specified did not match what we received".into(),
        )
        .into());
    }
    let mut checksums = BTreeMap::new();
    for (alg, expected) in &requested.expected {
        let got = computed(&written.checksums, *alg)
            .ok_or_else(|| GatewayError::Internal(format!("{} not computed", alg.as_str())))?;
        if let Some(expected) = expected
            && expected != got
        {
            return Err(GatewayError::BadDigest(format!(
                "the {} you specified did not match the calculated checksum",
                alg.as_str()
            ))
            .into());
        }
        checksums.insert(*alg, got.clone());
    }
    Ok(checksums)
}

/// The precondition of a conditional PUT. S3 supports `If-None-Match: *` and `If-Match`
/// with an ETag, not both at once.
fn write_condition(
    if_match: &Option<dto::ETagCondition>,
    if_none_match: &Option<dto::ETagCondition>,
) -> S3Result<Option<WriteCondition>> {
    match (if_match, if_none_match) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidArgument,
            "If-Match and If-None-Match cannot be combined on a PUT"
        )),
        (None, Some(c)) if c.is_any() => Ok(Some(WriteCondition::IfNoneMatchAny)),
        (None, Some(_)) => Err(s3_error!(
            NotImplemented,
            "If-None-Match on a PUT supports only *"
        )),
        (Some(c), None) => match c.as_etag() {
            Some(etag) => Ok(Some(WriteCondition::IfMatch(etag.value().to_string()))),
            None => Err(s3_error!(
                NotImplemented,
                "If-Match on a PUT needs an ETag, not *"
            )),
        },
    }
}

/// Evaluates CopyObject's `x-amz-copy-source-if-*` conditions; every failure is 412.
/// As S3 documents: a matching If-Match overrides a failing If-Unmodified-Since, and a
/// passing If-None-Match overrides a failing If-Modified-Since.
fn check_copy_conditions(
    source: &ObjectVersion,
    if_match: &Option<dto::ETagCondition>,
    if_unmodified_since: &Option<Timestamp>,
    if_none_match: &Option<dto::ETagCondition>,
    if_modified_since: &Option<Timestamp>,
) -> S3Result<()> {
    match check_conditions(
        source,
        if_match,
        if_unmodified_since,
        if_none_match,
        if_modified_since,
    ) {
        Err(e) if *e.code() == S3ErrorCode::NotModified => Err(s3_error!(
            PreconditionFailed,
            "the copy source was not modified as x-amz-copy-source-if-none-match or -if-modified-since ask"
        )),
        other => other,
    }
}

/// Evaluates GET/HEAD conditions (RFC 9110 order: If-Match, If-Unmodified-Since,
/// If-None-Match, If-Modified-Since).
fn check_conditions(
    version: &ObjectVersion,
    if_match: &Option<dto::ETagCondition>,
    if_unmodified_since: &Option<Timestamp>,
    if_none_match: &Option<dto::ETagCondition>,
    if_modified_since: &Option<Timestamp>,
) -> S3Result<()> {
    let matches = |c: &dto::ETagCondition| {
        c.is_any() || c.as_etag().is_some_and(|e| e.value() == version.etag)
    };
    // HTTP dates have whole seconds.
    let modified_s = version.last_modified_ms / 1000;
    let secs = |t: &Timestamp| {
        let t: time::OffsetDateTime = t.clone().into();
        t.unix_timestamp().max(0) as u64
    };
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(PreconditionFailed, "If-Match did not match"));
        }
    } else if let Some(t) = if_unmodified_since
        && modified_s > secs(t)
    {
        return Err(s3_error!(
            PreconditionFailed,
            "modified since If-Unmodified-Since"
        ));
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified_s <= secs(t)
    {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

#[async_trait::async_trait]
impl S3 for S3Gateway {
    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        if caller.grants.is_some() {
            return Err(s3_error!(
                AccessDenied,
                "this access key is limited to the buckets granted to it and may not create buckets"
            ));
        }
        if let Some(constraint) = input
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            && !constraint.as_str().is_empty()
            && constraint.as_str() != self.inner.config.region
        {
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("IllegalLocationConstraintException".into()),
                format!(
                    "this endpoint serves region {}, not {}",
                    self.inner.config.region,
                    constraint.as_str()
                ),
            );
            e.set_status_code(http::StatusCode::BAD_REQUEST);
            return Err(e);
        }
        let policy_name = match req.headers.get(POLICY_HEADER) {
            None => DEFAULT_POLICY_NAME,
            Some(value) => value
                .to_str()
                .map_err(|_| s3_error!(InvalidArgument, "{POLICY_HEADER} is not ASCII"))?,
        };
        let Some(policy) = self.inner.config.named_policy(policy_name) else {
            return Err(s3_error!(
                InvalidArgument,
                "no placement policy {policy_name:?}; this cluster has {}",
                self.inner.config.policy_names().join(", ")
            ));
        };
        // Refuse a bucket whose objects could not be written now.
        let map = self.inner.nodes.current_cluster_map().await?;
        if let Err(e) = place(StripeId(0), &policy, &map) {
            return Err(s3_error!(
                InvalidArgument,
                "placement policy {policy_name:?} ({policy}) cannot be met by this cluster: {e}"
            ));
        }
        self.inner
            .meta
            .create_bucket(
                &name,
                &caller.tenant,
                policy,
                input.object_lock_enabled_for_bucket == Some(true),
            )
            .await?;
        info!(bucket = %name, tenant = %caller.tenant, policy = %policy, "bucket created");
        Ok(S3Response::new(dto::CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn list_buckets(
        &self,
        req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        let caller = self.caller(&req).await?;
        let mut buckets = self.inner.meta.list_buckets(&caller.tenant).await?;
        if let Some(grants) = &caller.grants {
            buckets.retain(|b| grants.contains_key(&b.name));
        }
        let prefix = req.input.prefix.unwrap_or_default();
        Ok(S3Response::new(dto::ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .filter(|b| b.name.as_str().starts_with(&prefix))
                    .map(|b| dto::Bucket {
                        name: Some(b.name.to_string()),
                        creation_date: Some(timestamp(b.created_ms)),
                        bucket_region: Some(self.inner.config.region.clone()),
                    })
                    .collect(),
            ),
            owner: Some(dto::Owner {
                id: Some(caller.tenant.to_string()),
                display_name: Some(caller.tenant.to_string()),
            }),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let bucket = self.owned_bucket(&caller, &name, Permission::Read).await?;
        let mut response = S3Response::new(dto::HeadBucketOutput {
            bucket_region: Some(self.inner.config.region.clone()),
            ..Default::default()
        });
        if let Ok(value) = http::HeaderValue::from_str(&bucket.policy.to_string()) {
            response.headers.insert(POLICY_HEADER, value);
        }
        Ok(response)
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<dto::GetBucketLocationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        self.owned_bucket(&caller, &name, Permission::Read).await?;
        // S3 reports us-east-1 as an empty constraint.
        let region = &self.inner.config.region;
        Ok(S3Response::new(dto::GetBucketLocationOutput {
            location_constraint: (region != "us-east-1")
                .then(|| dto::BucketLocationConstraint::from(region.clone())),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<dto::DeleteBucketInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        caller.require(&name, Permission::Owner)?;
        self.inner.meta.delete_bucket(&name, &caller.tenant).await?;
        info!(bucket = %name, tenant = %caller.tenant, "bucket deleted");
        Ok(S3Response::new(dto::DeleteBucketOutput {}))
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let started = std::time::Instant::now();
        let name = bucket_name(&req.input.bucket)?;
        let caller = self
            .caller_for(
                &req,
                &name,
                policy::Action::PutObject,
                Some(&req.input.key),
                Permission::Write,
            )
            .await?;
        let S3Request {
            input,
            trailing_headers,
            ..
        } = req;
        object_key(&input.key)?;
        let condition = write_condition(&input.if_match, &input.if_none_match)?;
        let extras = versioned::extras_from_headers(
            input.object_lock_mode.as_ref(),
            input.object_lock_retain_until_date.as_ref(),
            input.object_lock_legal_hold_status.as_ref(),
            input.tagging.as_deref(),
        )?;
        let bucket = self.owned_bucket(&caller, &name, Permission::Write).await?;
        if let Some(condition) = &condition {
            // Fail before the body is stored when the answer is already clear; the state
            // machine decides again, atomically, at the commit.
            let current = match self
                .inner
                .meta
                .get_object(&name, &caller.tenant, &input.key)
                .await
            {
                Ok(v) => Some(v),
                Err(GatewayError::Meta {
                    kind: MetaErrorKind::NoSuchKey,
                    ..
                }) => None,
                Err(e) => return Err(e.into()),
            };
            match (condition, &current) {
                (WriteCondition::IfNoneMatchAny, Some(_)) => {
                    return Err(s3_error!(
                        PreconditionFailed,
                        "the key exists (If-None-Match: *)"
                    ));
                }
                (WriteCondition::IfMatch(_), None) => {
                    return Err(s3_error!(NoSuchKey, "no object to match (If-Match)"));
                }
                (WriteCondition::IfMatch(etag), Some(v)) if v.etag != *etag => {
                    return Err(s3_error!(PreconditionFailed, "If-Match did not match"));
                }
                _ => {}
            }
        }

        let (written, uncommitted, checksums) = self
            .write_verified(
                UploadedBody {
                    body: input.body,
                    content_length: input.content_length,
                    content_md5: &input.content_md5,
                    checksums: [
                        (ChecksumAlgorithm::Crc32, &input.checksum_crc32),
                        (ChecksumAlgorithm::Crc32c, &input.checksum_crc32c),
                        (ChecksumAlgorithm::Crc64Nvme, &input.checksum_crc64nvme),
                        (ChecksumAlgorithm::Sha1, &input.checksum_sha1),
                        (ChecksumAlgorithm::Sha256, &input.checksum_sha256),
                    ],
                    checksum_algorithm: &input.checksum_algorithm,
                    trailers: trailing_headers,
                },
                bucket.policy,
                write::Storage::InlineWhenSmall,
            )
            .await?;

        let etag = hex::encode(written.md5.expect("object bodies are hashed"));
        let missing = written.missing.clone();
        let version = ObjectVersion {
            version_id: String::new(),
            size_bytes: written.size_bytes,
            etag: etag.clone(),
            last_modified_ms: 0,
            content_type: input.content_type.clone(),
            headers: ContentHeaders {
                cache_control: input.cache_control.clone(),
                content_disposition: input.content_disposition.clone(),
                content_encoding: input
                    .content_encoding
                    .as_deref()
                    .and_then(without_aws_chunked),
                content_language: input.content_language.clone(),
                expires_unix_s: input.expires.clone().map(unix_seconds),
            },
            user_metadata: input.metadata.unwrap_or_default().into_iter().collect(),
            checksums: checksums.clone(),
            data: written.data,
        };
        self.check_upload_time(started, "the upload")?;
        let (version_id, _) = uncommitted
            .settle(self.inner.meta.put_object(
                &name,
                &caller.tenant,
                &input.key,
                version,
                &missing,
                condition.as_ref(),
                &extras,
            ))
            .await?;
        let mut output = dto::PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            version_id: shown_version_id(version_id),
            ..Default::default()
        };
        set_checksums!(output, checksums);
        Ok(S3Response::new(output))
    }

    async fn copy_object(
        &self,
        req: S3Request<dto::CopyObjectInput>,
    ) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let dest_name = bucket_name(&input.bucket)?;
        object_key(&input.key)?;
        if input.sse_customer_key.is_some() || input.copy_source_sse_customer_key.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "customer-provided encryption keys are not available on this Lauscha version"
            ));
        }
        let (src_name, src_key, source) = self
            .copy_source(
                &caller,
                &input.copy_source,
                [
                    &input.copy_source_if_match,
                    &input.copy_source_if_none_match,
                ],
                [
                    &input.copy_source_if_unmodified_since,
                    &input.copy_source_if_modified_since,
                ],
            )
            .await?;
        let dest = self
            .owned_bucket(&caller, &dest_name, Permission::Write)
            .await?;
        let replace = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
            None | Some("COPY") => false,
            Some("REPLACE") => true,
            Some(other) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "unknown metadata directive {other}: COPY or REPLACE"
                ));
            }
        };
        let mut extras = versioned::extras_from_headers(
            input.object_lock_mode.as_ref(),
            input.object_lock_retain_until_date.as_ref(),
            input.object_lock_legal_hold_status.as_ref(),
            None,
        )?;
        extras.tags = match input.tagging_directive.as_ref().map(|d| d.as_str()) {
            Some("REPLACE") => Some(
                input
                    .tagging
                    .as_deref()
                    .map(versioned::parse_tagging_header)
                    .transpose()?
                    .unwrap_or_default(),
            ),
            None | Some("COPY") => {
                let tags = self
                    .inner
                    .meta
                    .version(&src_name, &src_key, Some(&source.version_id))
                    .await?
                    .map(|d| d.tags)
                    .unwrap_or_default();
                (!tags.is_empty()).then_some(tags)
            }
            Some(other) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "unknown tagging directive {other}: COPY or REPLACE"
                ));
            }
        };
        if src_name == dest_name && src_key == input.key && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }

        // The source's checksums are recomputed on the way through: they vouch for the
        // copy as they did for the original.
        let source_values: Vec<(ChecksumAlgorithm, Option<String>)> = source
            .checksums
            .iter()
            .map(|(alg, value)| (*alg, Some(value.clone())))
            .collect();
        let requested = requested_checksums(
            source_values.iter().map(|(alg, v)| (*alg, v)),
            &input.checksum_algorithm,
        )?;
        let stream = read::open_range(&self.inner, &source, 0..source.size_bytes).await?;
        let (written, uncommitted) = write::write_body(
            &self.inner,
            dest.policy,
            StreamingBlob::wrap(stream),
            Some(source.size_bytes),
            requested.hasher(),
            write::Storage::InlineWhenSmall,
        )
        .await?;
        let etag = hex::encode(written.md5.expect("object bodies are hashed"));
        if written.size_bytes != source.size_bytes {
            return Err(GatewayError::Internal(format!(
                "the copy of {src_name}/{src_key} has {} bytes, the source {}",
                written.size_bytes, source.size_bytes
            ))
            .into());
        }
        let mut checksums = BTreeMap::new();
        for (alg, expected) in &requested.expected {
            let got = computed(&written.checksums, *alg)
                .ok_or_else(|| GatewayError::Internal(format!("{} not computed", alg.as_str())))?;
            if expected.as_ref().is_some_and(|e| e != got) {
                return Err(GatewayError::Internal(format!(
                    "the copy of {src_name}/{src_key} does not match the source's {}",
                    alg.as_str()
                ))
                .into());
            }
            checksums.insert(*alg, got.clone());
        }
        let (content_type, headers, user_metadata) = if replace {
            (
                input.content_type.clone(),
                ContentHeaders {
                    cache_control: input.cache_control.clone(),
                    content_disposition: input.content_disposition.clone(),
                    content_encoding: input
                        .content_encoding
                        .as_deref()
                        .and_then(without_aws_chunked),
                    content_language: input.content_language.clone(),
                    expires_unix_s: input.expires.clone().map(unix_seconds),
                },
                input
                    .metadata
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            )
        } else {
            (
                source.content_type.clone(),
                source.headers.clone(),
                source.user_metadata.clone(),
            )
        };
        let missing = written.missing.clone();
        let version = ObjectVersion {
            version_id: String::new(),
            size_bytes: written.size_bytes,
            etag: etag.clone(),
            last_modified_ms: 0,
            content_type,
            headers,
            user_metadata,
            checksums: checksums.clone(),
            data: written.data,
        };
        let source_version_id = source.version_id.clone();
        let (version_id, last_modified_ms) = uncommitted
            .settle(self.inner.meta.put_object(
                &dest_name,
                &caller.tenant,
                &input.key,
                version,
                &missing,
                None,
                &extras,
            ))
            .await?;
        let mut result = dto::CopyObjectResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(last_modified_ms)),
            ..Default::default()
        };
        set_checksums!(result, checksums);
        Ok(S3Response::new(dto::CopyObjectOutput {
            copy_object_result: Some(result),
            version_id: shown_version_id(version_id),
            copy_source_version_id: shown_version_id(source_version_id),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        object_key(&input.key)?;
        if input.sse_customer_key.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "customer-provided encryption keys are not available on this Lauscha version"
            ));
        }
        let extras = versioned::extras_from_headers(
            input.object_lock_mode.as_ref(),
            input.object_lock_retain_until_date.as_ref(),
            input.object_lock_legal_hold_status.as_ref(),
            input.tagging.as_deref(),
        )?;
        self.owned_bucket(&caller, &name, Permission::Write).await?;
        let template = ObjectVersion {
            version_id: String::new(),
            size_bytes: 0,
            etag: String::new(),
            last_modified_ms: 0,
            content_type: input.content_type.clone(),
            headers: ContentHeaders {
                cache_control: input.cache_control.clone(),
                content_disposition: input.content_disposition.clone(),
                content_encoding: input
                    .content_encoding
                    .as_deref()
                    .and_then(without_aws_chunked),
                content_language: input.content_language.clone(),
                expires_unix_s: input.expires.clone().map(unix_seconds),
            },
            user_metadata: input.metadata.unwrap_or_default().into_iter().collect(),
            checksums: BTreeMap::new(),
            data: lauscha_core::ObjectData::Inline(Vec::new()),
        };
        let upload_id = self
            .inner
            .meta
            .create_upload(
                &UploadName {
                    bucket: &name,
                    tenant: &caller.tenant,
                    key: &input.key,
                    upload_id: "",
                },
                template,
                &extras,
            )
            .await?;
        info!(bucket = %name, key = %input.key, upload_id = %upload_id, "multipart upload started");
        Ok(S3Response::new(dto::CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        let started = std::time::Instant::now();
        let caller = self.caller(&req).await?;
        let S3Request {
            input,
            trailing_headers,
            ..
        } = req;
        let name = bucket_name(&input.bucket)?;
        if input.sse_customer_key.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "encryption keys are not available on this Lauscha version"
            ));
        }
        let part_number = u32::try_from(input.part_number)
            .ok()
            .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
            .ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
                )
            })?;
        let bucket = self.owned_bucket(&caller, &name, Permission::Write).await?;
        let upload = UploadName {
            bucket: &name,
            tenant: &caller.tenant,
            key: &input.key,
            upload_id: &input.upload_id,
        };
        // Before the body is stored: the upload must exist.
        self.inner.meta.get_upload(&upload).await?;
        let (written, uncommitted, checksums) = self
            .write_verified(
                UploadedBody {
                    body: input.body,
                    content_length: input.content_length,
                    content_md5: &input.content_md5,
                    checksums: [
                        (ChecksumAlgorithm::Crc32, &input.checksum_crc32),
                        (ChecksumAlgorithm::Crc32c, &input.checksum_crc32c),
                        (ChecksumAlgorithm::Crc64Nvme, &input.checksum_crc64nvme),
                        (ChecksumAlgorithm::Sha1, &input.checksum_sha1),
                        (ChecksumAlgorithm::Sha256, &input.checksum_sha256),
                    ],
                    checksum_algorithm: &input.checksum_algorithm,
                    trailers: trailing_headers,
                },
                bucket.policy,
                write::Storage::Striped,
            )
            .await?;
        let etag = hex::encode(written.md5.expect("object bodies are hashed"));
        self.check_upload_time(started, "the part")?;
        let part = uploaded_part(part_number, written, etag.clone(), checksums.clone());
        uncommitted
            .settle(self.inner.meta.put_part(&upload, part))
            .await?;
        let mut output = dto::UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        };
        set_checksums!(output, checksums);
        Ok(S3Response::new(output))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<dto::UploadPartCopyInput>,
    ) -> S3Result<S3Response<dto::UploadPartCopyOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        if input.sse_customer_key.is_some() || input.copy_source_sse_customer_key.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "encryption keys are not available on this Lauscha version"
            ));
        }
        let part_number = u32::try_from(input.part_number)
            .ok()
            .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
            .ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
                )
            })?;
        let (_, _, source) = self
            .copy_source(
                &caller,
                &input.copy_source,
                [
                    &input.copy_source_if_match,
                    &input.copy_source_if_none_match,
                ],
                [
                    &input.copy_source_if_unmodified_since,
                    &input.copy_source_if_modified_since,
                ],
            )
            .await?;
        let bucket = self.owned_bucket(&caller, &name, Permission::Write).await?;
        let upload = UploadName {
            bucket: &name,
            tenant: &caller.tenant,
            key: &input.key,
            upload_id: &input.upload_id,
        };
        self.inner.meta.get_upload(&upload).await?;
        let range = match &input.copy_source_range {
            None => 0..source.size_bytes,
            Some(text) => copy_source_range(text, source.size_bytes)?,
        };
        let len = range.end - range.start;
        let stream = read::open_range(&self.inner, &source, range).await?;
        let (written, uncommitted) = write::write_body(
            &self.inner,
            bucket.policy,
            StreamingBlob::wrap(stream),
            Some(len),
            ChecksumHasher::default(),
            write::Storage::Striped,
        )
        .await?;
        let etag = hex::encode(written.md5.expect("object bodies are hashed"));
        let part = uploaded_part(part_number, written, etag.clone(), BTreeMap::new());
        let last_modified_ms = uncommitted
            .settle(self.inner.meta.put_part(&upload, part))
            .await?;
        Ok(S3Response::new(dto::UploadPartCopyOutput {
            copy_part_result: Some(dto::CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let condition = write_condition(&input.if_match, &input.if_none_match)?;
        self.owned_bucket(&caller, &name, Permission::Write).await?;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if listed.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "the request lists no parts; list at least one"
            ));
        }
        let mut parts = Vec::with_capacity(listed.len());
        let mut md5s = Vec::with_capacity(listed.len() * 16);
        // Part checksums the client lists must be those the parts were stored with.
        let mut client_checksums: Vec<(u32, Vec<(ChecksumAlgorithm, String)>)> = Vec::new();
        for p in &listed {
            let (Some(number), Some(etag)) = (p.part_number, p.e_tag.as_ref()) else {
                return Err(s3_error!(
                    MalformedXML,
                    "every part needs PartNumber and ETag"
                ));
            };
            let number = u32::try_from(number)
                .map_err(|_| s3_error!(InvalidPart, "part number {number} is not valid"))?;
            let etag = etag.value().to_string();
            let md5 = hex::decode(&etag)
                .ok()
                .filter(|b| b.len() == 16)
                .ok_or_else(|| s3_error!(InvalidPart, "part {number}: ETag {etag} was not ours"))?;
            md5s.extend_from_slice(&md5);
            parts.push((number, etag));
            let given: Vec<(ChecksumAlgorithm, String)> = [
                (ChecksumAlgorithm::Crc32, &p.checksum_crc32),
                (ChecksumAlgorithm::Crc32c, &p.checksum_crc32c),
                (ChecksumAlgorithm::Crc64Nvme, &p.checksum_crc64nvme),
                (ChecksumAlgorithm::Sha1, &p.checksum_sha1),
                (ChecksumAlgorithm::Sha256, &p.checksum_sha256),
            ]
            .into_iter()
            .filter_map(|(alg, v)| v.clone().map(|v| (alg, v)))
            .collect();
            client_checksums.push((number, given));
        }
        let etag = format!(
            "{}-{}",
            hex::encode(<md5::Md5 as md5::Digest>::digest(&md5s)),
            parts.len()
        );
        let upload = UploadName {
            bucket: &name,
            tenant: &caller.tenant,
            key: &input.key,
            upload_id: &input.upload_id,
        };
        let checksums = self.composite_checksums(&upload, &client_checksums).await?;
        let (version_id, _) = self
            .inner
            .meta
            .complete_upload(&upload, &parts, &etag, condition.as_ref(), &checksums)
            .await?;
        info!(bucket = %name, key = %input.key, upload_id = %input.upload_id, n_parts = parts.len(), "multipart upload completed");
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(etag)),
            location: Some(format!("/{name}/{}", input.key)),
            version_id: shown_version_id(version_id),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        self.owned_bucket(&caller, &name, Permission::Write).await?;
        self.inner
            .meta
            .abort_upload(&UploadName {
                bucket: &name,
                tenant: &caller.tenant,
                key: &input.key,
                upload_id: &input.upload_id,
            })
            .await?;
        Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<dto::ListPartsInput>,
    ) -> S3Result<S3Response<dto::ListPartsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        self.owned_bucket(&caller, &name, Permission::Read).await?;
        let max_parts = input.max_parts.unwrap_or(1000).clamp(1, 1000);
        let after = u32::try_from(input.part_number_marker.unwrap_or(0)).unwrap_or(0);
        let (parts, truncated) = self
            .inner
            .meta
            .list_parts(
                &UploadName {
                    bucket: &name,
                    tenant: &caller.tenant,
                    key: &input.key,
                    upload_id: &input.upload_id,
                },
                after,
                max_parts as u32,
            )
            .await?;
        let next = parts.last().map(|p| p.part_number as i32);
        Ok(S3Response::new(dto::ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max_parts),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| {
                        let mut part = dto::Part {
                            part_number: Some(p.part_number as i32),
                            e_tag: Some(ETag::Strong(p.version.etag.clone())),
                            size: Some(p.version.size_bytes as i64),
                            last_modified: Some(timestamp(p.version.last_modified_ms)),
                            ..Default::default()
                        };
                        set_checksums!(part, p.version.checksums);
                        part
                    })
                    .collect(),
            ),
            storage_class: Some(dto::StorageClass::from_static(dto::StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<dto::ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<dto::ListMultipartUploadsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        self.owned_bucket(&caller, &name, Permission::Read).await?;
        let max_uploads = input.max_uploads.unwrap_or(1000).clamp(1, 1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        // Past every key that starts with `p` (no key has a char above U+10FFFF).
        let past = |p: &str| (format!("{p}\u{10FFFF}"), String::new());
        let mut after: Option<(String, String)> = match input.key_marker.as_deref() {
            Some(k) if !k.is_empty() => Some(match &delimiter {
                Some(d) if k.ends_with(d.as_str()) => past(k),
                _ => (
                    k.to_string(),
                    input.upload_id_marker.clone().unwrap_or_default(),
                ),
            }),
            _ => None,
        };
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut last: Option<(String, String)> = None;
        'pages: loop {
            let (page, more) = self
                .inner
                .meta
                .list_uploads(
                    &name,
                    &caller.tenant,
                    &prefix,
                    after.as_ref().map(|(k, u)| (k.as_str(), u.as_str())),
                    max_uploads as u32,
                )
                .await?;
            after = page.last().map(|u| (u.key.clone(), u.upload_id.clone()));
            for u in page {
                if let Some(common) = prefixes.last()
                    && u.key.starts_with(common.as_str())
                {
                    continue;
                }
                if uploads.len() + prefixes.len() == max_uploads as usize {
                    truncated = true;
                    break 'pages;
                }
                let rolled = delimiter.as_deref().and_then(|d| {
                    u.key[prefix.len()..]
                        .find(d)
                        .map(|i| u.key[..prefix.len() + i + d.len()].to_string())
                });
                match rolled {
                    Some(common) => {
                        last = Some((common.clone(), String::new()));
                        prefixes.push(common);
                    }
                    None => {
                        last = Some((u.key.clone(), u.upload_id.clone()));
                        uploads.push(u);
                    }
                }
            }
            if !more {
                break;
            }
        }
        Ok(S3Response::new(dto::ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max_uploads),
            is_truncated: Some(truncated),
            next_key_marker: truncated.then(|| last.clone().map(|l| l.0)).flatten(),
            next_upload_id_marker: truncated
                .then(|| last.map(|l| l.1).filter(|u| !u.is_empty()))
                .flatten(),
            delimiter: input.delimiter,
            common_prefixes: (!prefixes.is_empty()).then(|| {
                prefixes
                    .into_iter()
                    .map(|p| dto::CommonPrefix { prefix: Some(p) })
                    .collect()
            }),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|u| dto::MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: Some(timestamp(u.initiated_ms)),
                        storage_class: Some(dto::StorageClass::from_static(
                            dto::StorageClass::STANDARD,
                        )),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<dto::GetObjectAttributesInput>,
    ) -> S3Result<S3Response<dto::GetObjectAttributesOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let details = self
            .version_details(
                &caller,
                &name,
                &input.key,
                input.version_id.as_deref(),
                Permission::Read,
            )
            .await?;
        let version = object_of(details, input.version_id.is_some())?;
        let wants = |attr: &str| input.object_attributes.iter().any(|a| a.as_str() == attr);
        let mut output = dto::GetObjectAttributesOutput {
            last_modified: Some(timestamp(version.last_modified_ms)),
            version_id: shown_version_id(version.version_id.clone()),
            ..Default::default()
        };
        if wants(dto::ObjectAttributes::ETAG) {
            output.e_tag = Some(ETag::Strong(version.etag.clone()));
        }
        if wants(dto::ObjectAttributes::OBJECT_SIZE) {
            output.object_size = Some(version.size_bytes as i64);
        }
        if wants(dto::ObjectAttributes::STORAGE_CLASS) {
            output.storage_class =
                Some(dto::StorageClass::from_static(dto::StorageClass::STANDARD));
        }
        if wants(dto::ObjectAttributes::CHECKSUM) && !version.checksums.is_empty() {
            let mut checksum = dto::Checksum {
                checksum_type: checksum_type(&version.checksums),
                ..Default::default()
            };
            set_checksums!(checksum, version.checksums.clone());
            output.checksum = Some(checksum);
        }
        // A multipart object keeps its part count in its ETag (`md5-N`); the parts'
        // boundaries are not kept once it is complete.
        if wants(dto::ObjectAttributes::OBJECT_PARTS)
            && let Some(n) = version
                .etag
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<i32>().ok())
        {
            output.object_parts = Some(dto::GetObjectAttributesParts {
                total_parts_count: Some(n),
                ..Default::default()
            });
        }
        Ok(S3Response::new(output))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let name = bucket_name(&req.input.bucket)?;
        let caller = self
            .caller_for(
                &req,
                &name,
                policy::Action::GetObject,
                Some(&req.input.key),
                Permission::Read,
            )
            .await?;
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "partNumber is not available yet on this Lauscha version"
            ));
        }
        let (version, details) = match &input.version_id {
            None => (
                self.inner
                    .meta
                    .get_object(&name, &caller.tenant, &input.key)
                    .await?,
                None,
            ),
            Some(v) => {
                let d = self
                    .version_details(&caller, &name, &input.key, Some(v), Permission::Read)
                    .await?;
                (object_of(d.clone(), true)?, Some(d))
            }
        };
        check_conditions(
            &version,
            &input.if_match,
            &input.if_unmodified_since,
            &input.if_none_match,
            &input.if_modified_since,
        )?;
        let size = version.size_bytes;
        let (range, content_range) = match input.range {
            None => (0..size, None),
            Some(r) => {
                let range = r.check(size)?;
                let header = format!("bytes {}-{}/{size}", range.start, range.end - 1);
                (range, Some(header))
            }
        };
        let stream = read::open_range(&self.inner, &version, range.clone()).await?;
        let full = content_range.is_none();
        let with_checksums = full
            && input
                .checksum_mode
                .as_ref()
                .is_some_and(|m| m.as_str().eq_ignore_ascii_case("enabled"));
        let mut output = dto::GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some((range.end - range.start) as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(version.etag.clone())),
            last_modified: Some(timestamp(version.last_modified_ms)),
            content_type: version.content_type.clone(),
            cache_control: version.headers.cache_control.clone(),
            content_disposition: version.headers.content_disposition.clone(),
            content_encoding: version.headers.content_encoding.clone(),
            content_language: version.headers.content_language.clone(),
            expires: version.headers.expires_unix_s.and_then(timestamp_s),
            metadata: (!version.user_metadata.is_empty())
                .then(|| version.user_metadata.clone().into_iter().collect()),
            version_id: shown_version_id(version.version_id.clone()),
            ..Default::default()
        };
        if let Some(d) = &details {
            output.tag_count = (!d.tags.is_empty()).then_some(d.tags.len() as i32);
            set_lock_headers!(output, d.lock);
        }
        if with_checksums {
            set_checksums!(output, version.checksums.clone());
            output.checksum_type = checksum_type(&version.checksums);
        }
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let name = bucket_name(&req.input.bucket)?;
        let caller = self
            .caller_for(
                &req,
                &name,
                policy::Action::GetObject,
                Some(&req.input.key),
                Permission::Read,
            )
            .await?;
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "partNumber is not available yet on this Lauscha version"
            ));
        }
        let details = self
            .version_details(
                &caller,
                &name,
                &input.key,
                input.version_id.as_deref(),
                Permission::Read,
            )
            .await?;
        let lock = details.lock;
        let version = object_of(details, input.version_id.is_some())?;
        check_conditions(
            &version,
            &input.if_match,
            &input.if_unmodified_since,
            &input.if_none_match,
            &input.if_modified_since,
        )?;
        let mut output = dto::HeadObjectOutput {
            content_length: Some(version.size_bytes as i64),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(version.etag.clone())),
            last_modified: Some(timestamp(version.last_modified_ms)),
            content_type: version.content_type.clone(),
            cache_control: version.headers.cache_control.clone(),
            content_disposition: version.headers.content_disposition.clone(),
            content_encoding: version.headers.content_encoding.clone(),
            content_language: version.headers.content_language.clone(),
            expires: version.headers.expires_unix_s.and_then(timestamp_s),
            metadata: (!version.user_metadata.is_empty())
                .then(|| version.user_metadata.clone().into_iter().collect()),
            version_id: shown_version_id(version.version_id.clone()),
            ..Default::default()
        };
        set_lock_headers!(output, lock);
        if input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str().eq_ignore_ascii_case("enabled"))
        {
            set_checksums!(output, version.checksums.clone());
            output.checksum_type = checksum_type(&version.checksums);
        }
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let name = bucket_name(&req.input.bucket)?;
        let caller = self
            .caller_for(
                &req,
                &name,
                policy::Action::DeleteObject,
                Some(&req.input.key),
                Permission::Write,
            )
            .await?;
        let input = req.input;
        let bypass = input.bypass_governance_retention == Some(true);
        if bypass {
            caller.require(&name, Permission::Owner)?;
        }
        let reply = self
            .inner
            .meta
            .execute(&ObjectCommand::Delete {
                bucket: name,
                tenant: caller.tenant,
                key: input.key,
                version_id: input.version_id,
                bypass_governance: bypass,
                if_current: None,
            })
            .await?;
        let ObjectCommandReply::Deleted {
            version_id,
            delete_marker,
        } = reply
        else {
            return Err(GatewayError::Internal(format!("delete answered {reply:?}")).into());
        };
        Ok(S3Response::new(dto::DeleteObjectOutput {
            delete_marker: delete_marker.then_some(true),
            version_id: version_id.and_then(shown_version_id),
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let objects = input.delete.objects;
        if objects.len() > MAX_DELETE_KEYS {
            return Err(s3_error!(
                MalformedXML,
                "at most {MAX_DELETE_KEYS} keys per DeleteObjects request"
            ));
        }
        self.owned_bucket(&caller, &name, Permission::Write).await?;
        let bypass = input.bypass_governance_retention == Some(true);
        if bypass {
            caller.require(&name, Permission::Owner)?;
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let inner = self.inner.clone();
        let tenant = caller.tenant;
        type Outcome = Result<ObjectCommandReply, GatewayError>;
        let results: Vec<(String, Option<String>, Outcome)> = futures::stream::iter(objects)
            .map(|object| {
                let (inner, name, tenant) = (inner.clone(), name.clone(), tenant.clone());
                async move {
                    let result = inner
                        .meta
                        .execute(&ObjectCommand::Delete {
                            bucket: name,
                            tenant,
                            key: object.key.clone(),
                            version_id: object.version_id.clone(),
                            bypass_governance: bypass,
                            if_current: None,
                        })
                        .await;
                    (object.key, object.version_id, result)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, asked_version, result) in results {
            match result {
                Ok(reply) => {
                    if !quiet {
                        let (version_id, delete_marker) = match reply {
                            ObjectCommandReply::Deleted {
                                version_id,
                                delete_marker,
                            } => (version_id.and_then(shown_version_id), delete_marker),
                            ObjectCommandReply::Done | ObjectCommandReply::Volume(_) => {
                                (None, false)
                            }
                        };
                        // A delete that created a marker names it; a delete of a version
                        // names that version.
                        let created_marker = asked_version.is_none() && delete_marker;
                        deleted.push(dto::DeletedObject {
                            key: Some(key),
                            delete_marker: delete_marker.then_some(true),
                            delete_marker_version_id: if created_marker {
                                version_id.clone()
                            } else {
                                None
                            },
                            version_id: if created_marker { None } else { version_id },
                        });
                    }
                }
                Err(e) => {
                    warn!(bucket = %name, object_key = %key, error = %e, "delete in DeleteObjects failed");
                    let s3: S3Error = e.into();
                    errors.push(dto::Error {
                        code: Some(s3.code().as_str().to_string()),
                        key: Some(key),
                        message: s3.message().map(str::to_string),
                        version_id: asked_version,
                    });
                }
            }
        }
        Ok(S3Response::new(dto::DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let name = bucket_name(&req.input.bucket)?;
        let caller = self
            .caller_for(
                &req,
                &name,
                policy::Action::ListBucket,
                None,
                Permission::Read,
            )
            .await?;
        let input = req.input;
        let encode = encoder(&input.encoding_type)?;
        let max = max_keys(input.max_keys)?;
        let start_after = match &input.continuation_token {
            Some(token) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        s3_error!(InvalidArgument, "the continuation token is not valid")
                    })?,
            ),
            None => input.start_after.clone(),
        };
        let query = Self::listing_query(
            name.clone(),
            input.prefix.clone(),
            input.delimiter.clone(),
            start_after,
            max,
        );
        let listing = self.inner.meta.list_objects(&caller.tenant, query).await?;
        let contents = Self::contents(&listing, encode);
        let prefixes = Self::prefixes(&listing, encode);
        Ok(S3Response::new(dto::ListObjectsV2Output {
            name: Some(name.to_string()),
            prefix: Some(encode(input.prefix.as_deref().unwrap_or(""))),
            delimiter: input.delimiter.as_deref().map(encode),
            max_keys: Some(max as i32),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            continuation_token: input.continuation_token,
            next_continuation_token: listing
                .next_marker
                .as_ref()
                .map(|m| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m)),
            is_truncated: Some(listing.is_truncated),
            start_after: input.start_after.as_deref().map(encode),
            encoding_type: input.encoding_type,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        let name = bucket_name(&req.input.bucket)?;
        let caller = self
            .caller_for(
                &req,
                &name,
                policy::Action::ListBucket,
                None,
                Permission::Read,
            )
            .await?;
        let input = req.input;
        let encode = encoder(&input.encoding_type)?;
        let max = max_keys(input.max_keys)?;
        let query = Self::listing_query(
            name.clone(),
            input.prefix.clone(),
            input.delimiter.clone(),
            input.marker.clone(),
            max,
        );
        let listing = self.inner.meta.list_objects(&caller.tenant, query).await?;
        Ok(S3Response::new(dto::ListObjectsOutput {
            name: Some(name.to_string()),
            prefix: Some(encode(input.prefix.as_deref().unwrap_or(""))),
            delimiter: input.delimiter.as_deref().map(encode),
            marker: Some(encode(input.marker.as_deref().unwrap_or(""))),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.is_truncated),
            next_marker: listing.next_marker.as_deref().map(encode),
            encoding_type: input.encoding_type,
            contents: Some(Self::contents(&listing, encode)),
            common_prefixes: Some(Self::prefixes(&listing, encode)),
            ..Default::default()
        }))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<dto::PutBucketVersioningInput>,
    ) -> S3Result<S3Response<dto::PutBucketVersioningOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Owner)?;
        if input
            .versioning_configuration
            .mfa_delete
            .as_ref()
            .is_some_and(|m| m.as_str() == "Enabled")
        {
            return Err(s3_error!(NotImplemented, "MFA delete is not supported"));
        }
        let state = match input
            .versioning_configuration
            .status
            .as_ref()
            .map(|s| s.as_str())
        {
            Some("Enabled") => VersioningState::Enabled,
            Some("Suspended") => VersioningState::Suspended,
            other => {
                return Err(s3_error!(
                    MalformedXML,
                    "versioning Status must be Enabled or Suspended, not {other:?}"
                ));
            }
        };
        self.put_setting(&caller, &name, BucketSetting::Versioning(state))
            .await?;
        info!(bucket = %name, state = ?state, "bucket versioning changed");
        Ok(S3Response::new(dto::PutBucketVersioningOutput {}))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<dto::GetBucketVersioningInput>,
    ) -> S3Result<S3Response<dto::GetBucketVersioningOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Read).await?;
        Ok(S3Response::new(dto::GetBucketVersioningOutput {
            status: settings
                .versioning
                .current()
                .s3_status()
                .map(|s| dto::BucketVersioningStatus::from(s.to_string())),
            mfa_delete: None,
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<dto::ListObjectVersionsInput>,
    ) -> S3Result<S3Response<dto::ListObjectVersionsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        self.owned_bucket(&caller, &name, Permission::Read).await?;
        let encode = encoder(&input.encoding_type)?;
        let max = max_keys(input.max_keys)?;
        if input.version_id_marker.is_some() && input.key_marker.is_none() {
            return Err(s3_error!(
                InvalidArgument,
                "a version-id-marker needs a key-marker"
            ));
        }
        let query = MetaQuery::ListVersions(ListVersionsQuery {
            bucket: name.clone(),
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
            key_marker: input.key_marker.clone().filter(|k| !k.is_empty()),
            version_id_marker: input.version_id_marker.clone().filter(|v| !v.is_empty()),
            max_keys: max,
        });
        let MetaQueryReply::Versions(listing) = self.inner.meta.query(&query).await? else {
            return Err(GatewayError::Internal("ListVersions answered otherwise".into()).into());
        };
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        for v in listing.versions {
            match v.entry {
                VersionEntry::Object(o) => versions.push(dto::ObjectVersion {
                    key: Some(encode(&v.key)),
                    version_id: Some(v.s3_version_id),
                    is_latest: Some(v.is_latest),
                    e_tag: Some(ETag::Strong(o.etag)),
                    size: Some(o.size_bytes as i64),
                    last_modified: Some(timestamp(o.last_modified_ms)),
                    storage_class: Some(dto::ObjectVersionStorageClass::from_static(
                        dto::ObjectVersionStorageClass::STANDARD,
                    )),
                    ..Default::default()
                }),
                VersionEntry::DeleteMarker {
                    last_modified_ms, ..
                } => markers.push(dto::DeleteMarkerEntry {
                    key: Some(encode(&v.key)),
                    version_id: Some(v.s3_version_id),
                    is_latest: Some(v.is_latest),
                    last_modified: Some(timestamp(last_modified_ms)),
                    owner: None,
                }),
            }
        }
        Ok(S3Response::new(dto::ListObjectVersionsOutput {
            name: Some(name.to_string()),
            prefix: Some(encode(input.prefix.as_deref().unwrap_or(""))),
            delimiter: input.delimiter.as_deref().map(encode),
            key_marker: input.key_marker.as_deref().map(encode),
            version_id_marker: input.version_id_marker,
            max_keys: Some(max as i32),
            is_truncated: Some(listing.is_truncated),
            next_key_marker: listing.next_key_marker.as_deref().map(encode),
            next_version_id_marker: listing.next_version_id_marker,
            encoding_type: input.encoding_type,
            versions: Some(versions),
            delete_markers: Some(markers),
            common_prefixes: Some(
                listing
                    .common_prefixes
                    .iter()
                    .map(|p| dto::CommonPrefix {
                        prefix: Some(encode(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn put_object_lock_configuration(
        &self,
        req: S3Request<dto::PutObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<dto::PutObjectLockConfigurationOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Owner)?;
        let config = input
            .object_lock_configuration
            .as_ref()
            .ok_or_else(|| s3_error!(MalformedXML, "ObjectLockConfiguration is missing"))?;
        let config = versioned::lock_config_from_dto(config)?;
        self.put_setting(&caller, &name, BucketSetting::ObjectLock(config))
            .await?;
        Ok(S3Response::new(
            dto::PutObjectLockConfigurationOutput::default(),
        ))
    }

    async fn get_object_lock_configuration(
        &self,
        req: S3Request<dto::GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<dto::GetObjectLockConfigurationOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Read).await?;
        let config = settings.object_lock.ok_or_else(|| {
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("ObjectLockConfigurationNotFoundError".into()),
                "Object Lock configuration does not exist for this bucket",
            );
            e.set_status_code(http::StatusCode::NOT_FOUND);
            e
        })?;
        Ok(S3Response::new(dto::GetObjectLockConfigurationOutput {
            object_lock_configuration: Some(versioned::lock_config_to_dto(&config)),
        }))
    }

    async fn put_object_retention(
        &self,
        req: S3Request<dto::PutObjectRetentionInput>,
    ) -> S3Result<S3Response<dto::PutObjectRetentionOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Write)?;
        let bypass = input.bypass_governance_retention == Some(true);
        if bypass {
            caller.require(&name, Permission::Owner)?;
        }
        let retention = match &input.retention {
            Some(dto::ObjectLockRetention {
                mode: Some(mode),
                retain_until_date: Some(until),
            }) => Some(Retention {
                mode: versioned::retention_mode(mode.as_str())?,
                until_ms: versioned::timestamp_ms(until),
            }),
            Some(dto::ObjectLockRetention {
                mode: None,
                retain_until_date: None,
            })
            | None => None,
            Some(_) => {
                return Err(s3_error!(
                    MalformedXML,
                    "Retention needs both Mode and RetainUntilDate"
                ));
            }
        };
        self.set_attr(
            &caller,
            &name,
            input.key,
            input.version_id,
            VersionAttrChange::Retention(retention),
            bypass,
        )
        .await?;
        Ok(S3Response::new(dto::PutObjectRetentionOutput::default()))
    }

    async fn get_object_retention(
        &self,
        req: S3Request<dto::GetObjectRetentionInput>,
    ) -> S3Result<S3Response<dto::GetObjectRetentionOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let details = self
            .version_details(
                &caller,
                &name,
                &input.key,
                input.version_id.as_deref(),
                Permission::Read,
            )
            .await?;
        let lock = details.lock;
        object_of(details, input.version_id.is_some())?;
        let retention = versioned::retention_to_dto(&lock).ok_or_else(|| {
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("NoSuchObjectLockConfiguration".into()),
                "the object has no retention",
            );
            e.set_status_code(http::StatusCode::NOT_FOUND);
            e
        })?;
        Ok(S3Response::new(dto::GetObjectRetentionOutput {
            retention: Some(retention),
        }))
    }

    async fn put_object_legal_hold(
        &self,
        req: S3Request<dto::PutObjectLegalHoldInput>,
    ) -> S3Result<S3Response<dto::PutObjectLegalHoldOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Write)?;
        let on = match input
            .legal_hold
            .as_ref()
            .and_then(|h| h.status.as_ref())
            .map(|s| s.as_str())
        {
            Some("ON") => true,
            Some("OFF") => false,
            other => {
                return Err(s3_error!(
                    MalformedXML,
                    "LegalHold Status must be ON or OFF, not {other:?}"
                ));
            }
        };
        self.set_attr(
            &caller,
            &name,
            input.key,
            input.version_id,
            VersionAttrChange::LegalHold(on),
            false,
        )
        .await?;
        Ok(S3Response::new(dto::PutObjectLegalHoldOutput::default()))
    }

    async fn get_object_legal_hold(
        &self,
        req: S3Request<dto::GetObjectLegalHoldInput>,
    ) -> S3Result<S3Response<dto::GetObjectLegalHoldOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Read).await?;
        if settings.object_lock.is_none() {
            return Err(s3_error!(
                InvalidRequest,
                "bucket {name} has no Object Lock configuration"
            ));
        }
        let details = self
            .version_details(
                &caller,
                &name,
                &input.key,
                input.version_id.as_deref(),
                Permission::Read,
            )
            .await?;
        let on = details.lock.legal_hold;
        object_of(details, input.version_id.is_some())?;
        Ok(S3Response::new(dto::GetObjectLegalHoldOutput {
            legal_hold: Some(dto::ObjectLockLegalHold {
                status: Some(dto::ObjectLockLegalHoldStatus::from(
                    if on { "ON" } else { "OFF" }.to_string(),
                )),
            }),
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<dto::PutObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::PutObjectTaggingOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Write)?;
        let tags = versioned::tags_from_dto(&input.tagging.tag_set, versioned::MAX_OBJECT_TAGS)?;
        let version_id = input.version_id.clone();
        self.set_attr(
            &caller,
            &name,
            input.key,
            input.version_id,
            VersionAttrChange::Tags(Some(tags)),
            false,
        )
        .await?;
        Ok(S3Response::new(dto::PutObjectTaggingOutput {
            version_id: version_id.and_then(shown_version_id),
        }))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<dto::GetObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::GetObjectTaggingOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let details = self
            .version_details(
                &caller,
                &name,
                &input.key,
                input.version_id.as_deref(),
                Permission::Read,
            )
            .await?;
        let tags = versioned::tags_to_dto(&details.tags);
        let version = object_of(details, input.version_id.is_some())?;
        Ok(S3Response::new(dto::GetObjectTaggingOutput {
            tag_set: tags,
            version_id: shown_version_id(version.version_id),
        }))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<dto::DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectTaggingOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Write)?;
        let version_id = input.version_id.clone();
        self.set_attr(
            &caller,
            &name,
            input.key,
            input.version_id,
            VersionAttrChange::Tags(None),
            false,
        )
        .await?;
        Ok(S3Response::new(dto::DeleteObjectTaggingOutput {
            version_id: version_id.and_then(shown_version_id),
        }))
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<dto::PutBucketTaggingInput>,
    ) -> S3Result<S3Response<dto::PutBucketTaggingOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Owner)?;
        let tags = versioned::tags_from_dto(&input.tagging.tag_set, 50)?;
        self.put_setting(&caller, &name, BucketSetting::Tags(tags))
            .await?;
        Ok(S3Response::new(dto::PutBucketTaggingOutput {}))
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<dto::GetBucketTaggingInput>,
    ) -> S3Result<S3Response<dto::GetBucketTaggingOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Read).await?;
        let tags = settings
            .tags
            .ok_or_else(|| s3_error!(NoSuchTagSet, "bucket {name} has no tags"))?;
        Ok(S3Response::new(dto::GetBucketTaggingOutput {
            tag_set: versioned::tags_to_dto(&tags),
        }))
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<dto::DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketTaggingOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        caller.require(&name, Permission::Owner)?;
        self.delete_setting(&caller, &name, BucketSettingKind::Tags)
            .await?;
        Ok(S3Response::new(dto::DeleteBucketTaggingOutput {}))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<dto::PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<dto::PutBucketLifecycleConfigurationOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let config = input
            .lifecycle_configuration
            .as_ref()
            .ok_or_else(|| s3_error!(MalformedXML, "LifecycleConfiguration is missing"))?;
        let rules = versioned::lifecycle_from_dto(config)?;
        self.put_setting(&caller, &name, BucketSetting::Lifecycle(rules))
            .await?;
        Ok(S3Response::new(
            dto::PutBucketLifecycleConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<dto::GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLifecycleConfigurationOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Read).await?;
        let rules = settings.lifecycle.ok_or_else(|| {
            s3_error!(
                NoSuchLifecycleConfiguration,
                "bucket {name} has no lifecycle rules"
            )
        })?;
        Ok(S3Response::new(
            dto::GetBucketLifecycleConfigurationOutput {
                rules: Some(versioned::lifecycle_to_dto(&rules)),
                ..Default::default()
            },
        ))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<dto::DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketLifecycleOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        self.delete_setting(&caller, &name, BucketSettingKind::Lifecycle)
            .await?;
        Ok(S3Response::new(dto::DeleteBucketLifecycleOutput {}))
    }

    async fn put_bucket_cors(
        &self,
        req: S3Request<dto::PutBucketCorsInput>,
    ) -> S3Result<S3Response<dto::PutBucketCorsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        let rules = versioned::cors_from_dto(&input.cors_configuration)?;
        self.put_setting(&caller, &name, BucketSetting::Cors(rules))
            .await?;
        Ok(S3Response::new(dto::PutBucketCorsOutput {}))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<dto::GetBucketCorsInput>,
    ) -> S3Result<S3Response<dto::GetBucketCorsOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Read).await?;
        let rules = settings.cors.ok_or_else(|| {
            s3_error!(
                NoSuchCORSConfiguration,
                "bucket {name} has no CORS configuration"
            )
        })?;
        Ok(S3Response::new(dto::GetBucketCorsOutput {
            cors_rules: Some(versioned::cors_to_dto(&rules)),
        }))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<dto::DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketCorsOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        self.delete_setting(&caller, &name, BucketSettingKind::Cors)
            .await?;
        Ok(S3Response::new(dto::DeleteBucketCorsOutput {}))
    }

    async fn put_bucket_policy(
        &self,
        req: S3Request<dto::PutBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::PutBucketPolicyOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Owner)?;
        policy::BucketPolicy::parse(&name, &input.policy)
            .map_err(|e| s3_error!(MalformedPolicy, "{e}"))?;
        self.put_setting(&caller, &name, BucketSetting::Policy(input.policy))
            .await?;
        info!(bucket = %name, "bucket policy set");
        Ok(S3Response::new(dto::PutBucketPolicyOutput {}))
    }

    async fn get_bucket_policy(
        &self,
        req: S3Request<dto::GetBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::GetBucketPolicyOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        let settings = self.settings(&caller, &name, Permission::Owner).await?;
        let policy = settings
            .policy
            .ok_or_else(|| s3_error!(NoSuchBucketPolicy, "bucket {name} has no policy"))?;
        Ok(S3Response::new(dto::GetBucketPolicyOutput {
            policy: Some(policy),
        }))
    }

    async fn delete_bucket_policy(
        &self,
        req: S3Request<dto::DeleteBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketPolicyOutput>> {
        let caller = self.caller(&req).await?;
        let name = bucket_name(&req.input.bucket)?;
        self.delete_setting(&caller, &name, BucketSettingKind::Policy)
            .await?;
        Ok(S3Response::new(dto::DeleteBucketPolicyOutput {}))
    }

    /// Browser uploads (HTML form POST with a SigV4 policy): s3s checks the policy's
    /// signature, expiry and conditions; the object is then written as a PutObject.
    async fn post_object(
        &self,
        req: S3Request<dto::PostObjectInput>,
    ) -> S3Result<S3Response<dto::PostObjectOutput>> {
        if req.input.key.contains("${filename}") {
            // S3 would put the uploaded file's name here; s3s does not hand it over, and
            // storing the literal would surprise everyone.
            return Err(s3_error!(
                InvalidArgument,
                "the ${{filename}} key variable is not supported; name the key in the form"
            ));
        }
        let put = req.map_input(|p| dto::PutObjectInput {
            body: p.body,
            bucket: p.bucket,
            key: p.key,
            cache_control: p.cache_control,
            checksum_algorithm: p.checksum_algorithm,
            checksum_crc32: p.checksum_crc32,
            checksum_crc32c: p.checksum_crc32c,
            checksum_crc64nvme: p.checksum_crc64nvme,
            checksum_sha1: p.checksum_sha1,
            checksum_sha256: p.checksum_sha256,
            content_disposition: p.content_disposition,
            content_encoding: p.content_encoding,
            content_language: p.content_language,
            content_length: p.content_length,
            content_md5: p.content_md5,
            content_type: p.content_type,
            expires: p.expires,
            if_match: p.if_match,
            if_none_match: p.if_none_match,
            metadata: p.metadata,
            object_lock_legal_hold_status: p.object_lock_legal_hold_status,
            object_lock_mode: p.object_lock_mode,
            object_lock_retain_until_date: p.object_lock_retain_until_date,
            tagging: p.tagging,
            ..Default::default()
        });
        let out = self.put_object(put).await?.output;
        Ok(S3Response::new(dto::PostObjectOutput {
            e_tag: out.e_tag,
            checksum_crc32: out.checksum_crc32,
            checksum_crc32c: out.checksum_crc32c,
            checksum_crc64nvme: out.checksum_crc64nvme,
            checksum_sha1: out.checksum_sha1,
            checksum_sha256: out.checksum_sha256,
            version_id: out.version_id,
            ..Default::default()
        }))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_slashes_and_escapes_plus_and_space() {
        assert_eq!(url_encode("a/b c+d%é"), "a/b%20c%2Bd%25%C3%A9");
    }

    #[test]
    fn aws_chunked_is_not_stored_as_content_encoding() {
        assert_eq!(without_aws_chunked("aws-chunked"), None);
        assert_eq!(without_aws_chunked("gzip,aws-chunked"), Some("gzip".into()));
        assert_eq!(
            without_aws_chunked("aws-chunked, gzip"),
            Some("gzip".into())
        );
        assert_eq!(without_aws_chunked("br"), Some("br".into()));
    }

    #[test]
    fn max_keys_defaults_and_clamps() {
        assert_eq!(max_keys(None).unwrap(), 1000);
        assert_eq!(max_keys(Some(5000)).unwrap(), 1000);
        assert_eq!(max_keys(Some(0)).unwrap(), 0);
        assert!(max_keys(Some(-1)).is_err());
    }
}
