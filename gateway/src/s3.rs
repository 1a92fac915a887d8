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
use crate::{read, write};

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
        self.owned_bucket(caller, &name, Permission::Read).await?;
        let source = self
            .inner
            .meta
            .get_object(&name, &caller.tenant, key)
            .await?;
        if let Some(v) = version_id
            && **v != *source.version_id
        {
            return Err(s3_error!(
                NoSuchVersion,
                "only the current version can be copied (versioning is not enabled)"
            ));
        }
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

/// Settles the shards of a write by the outcome of its metadata commit: kept when it
/// committed, and also when the outcome is unknown (metadata unavailable mid-commit:
/// deleting them could destroy a committed object; GC reclaims them if it did not);
/// deleted when metadata refused.
fn settle<T>(result: Result<T, GatewayError>, uncommitted: write::Uncommitted) -> S3Result<T> {
    match result {
        Ok(value) => {
            uncommitted.commit();
            Ok(value)
        }
        Err(
            e @ GatewayError::Meta {
                kind:
                    MetaErrorKind::Unavailable | MetaErrorKind::Internal | MetaErrorKind::NotLeader,
                ..
            },
        ) => {
            uncommitted.commit();
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
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
        && md5 != written.md5
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
        if input.object_lock_enabled_for_bucket == Some(true) {
            return Err(s3_error!(
                NotImplemented,
                "Object Lock is not available yet on this Lauscha version"
            ));
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
        let map = self.inner.nodes.cluster_map().await?;
        if let Err(e) = place(StripeId(0), &policy, &map) {
            return Err(s3_error!(
                InvalidArgument,
                "placement policy {policy_name:?} ({policy}) cannot be met by this cluster: {e}"
            ));
        }
        self.inner
            .meta
            .create_bucket(&name, &caller.tenant, policy)
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
        let caller = self.caller(&req).await?;
        let S3Request {
            input,
            trailing_headers,
            ..
        } = req;
        let name = bucket_name(&input.bucket)?;
        object_key(&input.key)?;
        let condition = write_condition(&input.if_match, &input.if_none_match)?;
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

        let etag = hex::encode(written.md5);
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
        settle(
            self.inner
                .meta
                .put_object(
                    &name,
                    &caller.tenant,
                    &input.key,
                    version,
                    &missing,
                    condition.as_ref(),
                )
                .await,
            uncommitted,
        )?;
        let mut output = dto::PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
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
        if input.sse_customer_key.is_some()
            || input.copy_source_sse_customer_key.is_some()
            || input.object_lock_mode.is_some()
            || input.object_lock_legal_hold_status.is_some()
        {
            return Err(s3_error!(
                NotImplemented,
                "encryption keys and Object Lock are not available on this Lauscha version"
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
        let etag = hex::encode(written.md5);
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
        let (_, last_modified_ms) = settle(
            self.inner
                .meta
                .put_object(
                    &dest_name,
                    &caller.tenant,
                    &input.key,
                    version,
                    &missing,
                    None,
                )
                .await,
            uncommitted,
        )?;
        let mut result = dto::CopyObjectResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(last_modified_ms)),
            ..Default::default()
        };
        set_checksums!(result, checksums);
        Ok(S3Response::new(dto::CopyObjectOutput {
            copy_object_result: Some(result),
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
        if input.sse_customer_key.is_some()
            || input.object_lock_mode.is_some()
            || input.object_lock_legal_hold_status.is_some()
        {
            return Err(s3_error!(
                NotImplemented,
                "encryption keys and Object Lock are not available on this Lauscha version"
            ));
        }
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
        let etag = hex::encode(written.md5);
        self.check_upload_time(started, "the part")?;
        let part = uploaded_part(part_number, written, etag.clone(), checksums.clone());
        settle(self.inner.meta.put_part(&upload, part).await, uncommitted)?;
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
        let etag = hex::encode(written.md5);
        let part = uploaded_part(part_number, written, etag.clone(), BTreeMap::new());
        let last_modified_ms = settle(self.inner.meta.put_part(&upload, part).await, uncommitted)?;
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
        self.inner
            .meta
            .complete_upload(&upload, &parts, &etag, condition.as_ref())
            .await?;
        info!(bucket = %name, key = %input.key, upload_id = %input.upload_id, n_parts = parts.len(), "multipart upload completed");
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(etag)),
            location: Some(format!("/{name}/{}", input.key)),
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
        if input.delimiter.as_deref().is_some_and(|d| !d.is_empty()) {
            return Err(s3_error!(
                NotImplemented,
                "ListMultipartUploads with a delimiter is not available yet on this Lauscha version"
            ));
        }
        self.owned_bucket(&caller, &name, Permission::Read).await?;
        let max_uploads = input.max_uploads.unwrap_or(1000).clamp(1, 1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = input
            .key_marker
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(|k| (k, input.upload_id_marker.as_deref().unwrap_or("")));
        let (uploads, truncated) = self
            .inner
            .meta
            .list_uploads(&name, &caller.tenant, &prefix, after, max_uploads as u32)
            .await?;
        let last = uploads.last().map(|u| (u.key.clone(), u.upload_id.clone()));
        Ok(S3Response::new(dto::ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max_uploads),
            is_truncated: Some(truncated),
            next_key_marker: truncated.then(|| last.clone().map(|l| l.0)).flatten(),
            next_upload_id_marker: truncated.then(|| last.map(|l| l.1)).flatten(),
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
        self.owned_bucket(&caller, &name, Permission::Read).await?;
        let version = self
            .inner
            .meta
            .get_object(&name, &caller.tenant, &input.key)
            .await?;
        if let Some(v) = &input.version_id
            && *v != version.version_id
        {
            return Err(s3_error!(
                NoSuchVersion,
                "only the current version exists (versioning is not enabled)"
            ));
        }
        let wants = |attr: &str| input.object_attributes.iter().any(|a| a.as_str() == attr);
        let mut output = dto::GetObjectAttributesOutput {
            last_modified: Some(timestamp(version.last_modified_ms)),
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
                checksum_type: Some(dto::ChecksumType::from_static(
                    dto::ChecksumType::FULL_OBJECT,
                )),
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
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Read)?;
        if input.part_number.is_some() || input.version_id.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "partNumber and versionId are not available yet on this Lauscha version"
            ));
        }
        let version = self
            .inner
            .meta
            .get_object(&name, &caller.tenant, &input.key)
            .await?;
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
            ..Default::default()
        };
        if with_checksums {
            for (alg, value) in &version.checksums {
                let value = Some(value.clone());
                match alg {
                    ChecksumAlgorithm::Crc32 => output.checksum_crc32 = value,
                    ChecksumAlgorithm::Crc32c => output.checksum_crc32c = value,
                    ChecksumAlgorithm::Crc64Nvme => output.checksum_crc64nvme = value,
                    ChecksumAlgorithm::Sha1 => output.checksum_sha1 = value,
                    ChecksumAlgorithm::Sha256 => output.checksum_sha256 = value,
                }
            }
        }
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Read)?;
        if input.part_number.is_some() || input.version_id.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "partNumber and versionId are not available yet on this Lauscha version"
            ));
        }
        let version = self
            .inner
            .meta
            .get_object(&name, &caller.tenant, &input.key)
            .await?;
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
            ..Default::default()
        };
        if input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str().eq_ignore_ascii_case("enabled"))
        {
            for (alg, value) in &version.checksums {
                let value = Some(value.clone());
                match alg {
                    ChecksumAlgorithm::Crc32 => output.checksum_crc32 = value,
                    ChecksumAlgorithm::Crc32c => output.checksum_crc32c = value,
                    ChecksumAlgorithm::Crc64Nvme => output.checksum_crc64nvme = value,
                    ChecksumAlgorithm::Sha1 => output.checksum_sha1 = value,
                    ChecksumAlgorithm::Sha256 => output.checksum_sha256 = value,
                }
            }
        }
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Write)?;
        if input.version_id.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "versionId is not available yet on this Lauscha version"
            ));
        }
        self.inner
            .meta
            .delete_object(&name, &caller.tenant, &input.key)
            .await?;
        Ok(S3Response::new(dto::DeleteObjectOutput::default()))
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
        let quiet = input.delete.quiet.unwrap_or(false);
        let inner = self.inner.clone();
        let tenant = caller.tenant;
        let results: Vec<(String, Result<(), GatewayError>)> = futures::stream::iter(objects)
            .map(|object| {
                let (inner, name, tenant) = (inner.clone(), name.clone(), tenant.clone());
                async move {
                    let result = if object.version_id.is_some() {
                        Err(GatewayError::NotImplemented("versionId".into()))
                    } else {
                        inner
                            .meta
                            .delete_object(&name, &tenant, &object.key)
                            .await
                            .map(|_| ())
                    };
                    (object.key, result)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, result) in results {
            match result {
                Ok(()) => {
                    if !quiet {
                        deleted.push(dto::DeletedObject {
                            key: Some(key),
                            ..Default::default()
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
                        version_id: None,
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
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Read)?;
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
        let caller = self.caller(&req).await?;
        let input = req.input;
        let name = bucket_name(&input.bucket)?;
        caller.require(&name, Permission::Read)?;
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
