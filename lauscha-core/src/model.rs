//! The metadata model: what the metadata service stores and every role reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AccessKeyId, BucketName, NodeId, PlacementPolicy, ShardDigest, StripeId, TenantId};

/// A tenant (a town, a district): the unit of isolation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
}

/// An S3 credential.
///
/// The secret is stored as is: SigV4 needs it to recompute signatures, so it cannot be
/// hashed. Metadata is therefore as sensitive as the keys themselves.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// Public id.
    pub id: AccessKeyId,
    /// The secret.
    pub secret: String,
    /// The tenant this key acts for.
    pub tenant: TenantId,
    /// An administrator key may use the admin API.
    pub is_admin: bool,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("is_admin", &self.is_admin)
            .finish()
    }
}

/// A bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Its globally unique name.
    pub name: BucketName,
    /// The owning tenant.
    pub tenant: TenantId,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// How objects written to it are protected.
    pub policy: PlacementPolicy,
}

/// Where one shard of a stripe lives and what it must hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLocation {
    /// The node holding it.
    pub node: NodeId,
    /// Its digest (see `checksum`).
    pub digest: ShardDigest,
}

/// One stripe of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    /// Its id.
    pub id: StripeId,
    /// Object bytes in this stripe (before padding).
    pub len_bytes: u64,
    /// `shards[shard_idx]`: k data shards, then m parity shards.
    pub shards: Vec<ShardLocation>,
}

/// Where an object version's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectData {
    /// Small objects live in the metadata entry itself.
    Inline(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Erasure-coded stripes on storage nodes.
    Striped {
        /// k.
        n_data_shards: u8,
        /// m.
        n_parity_shards: u8,
        /// The stripes in object order.
        stripes: Vec<Stripe>,
    },
}

/// A checksum algorithm of the S3 `x-amz-checksum-*` family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChecksumAlgorithm {
    /// CRC-32 (IEEE).
    Crc32,
    /// CRC-32C (Castagnoli).
    Crc32c,
    /// CRC-64/NVME.
    Crc64Nvme,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl ChecksumAlgorithm {
    /// The name S3 uses in headers (`x-amz-checksum-<lowercase>`) and XML.
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }
}

/// Standard HTTP headers S3 stores with an object and returns on GET and HEAD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentHeaders {
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Encoding`, without the `aws-chunked` transfer coding.
    pub content_encoding: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Expires`, Unix seconds.
    pub expires_unix_s: Option<i64>,
}

/// One committed version of an object.
///
/// What an access key may do in one bucket. A key with no grants at all may do
/// everything in its tenant's buckets; a key with grants only what they say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// List and read objects.
    Read,
    /// Also write and delete objects, and run multipart uploads.
    Write,
    /// Also delete the bucket.
    Owner,
}

impl Permission {
    /// Lower-case name used in the CLI and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Owner => "owner",
        }
    }

    /// The permission named `s` (`read`, `write`, `owner`).
    pub fn parse(s: &str) -> Option<Permission> {
        [Permission::Read, Permission::Write, Permission::Owner]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// The smallest part of a multipart upload other than the last, bytes (as S3).
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// The highest part number (as S3).
pub const MAX_PART_NUMBER: u32 = 10_000;

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartUpload {
    /// Its id, assigned by metadata.
    pub upload_id: String,
    /// The object key it will complete.
    pub key: String,
    /// The tenant that started it.
    pub tenant: TenantId,
    /// When it started, Unix ms.
    pub initiated_ms: u64,
    /// What the completed object carries: content headers, user metadata (its data, size
    /// and ETag are placeholders).
    pub template: ObjectVersion,
}

/// One uploaded part, stored like a version: size, ETag (MD5 of the part), checksums,
/// stripes. Parts are always erasure-coded, never inline, so that they concatenate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPart {
    /// 1 ..= 10,000.
    pub part_number: u32,
    /// The part's bytes and what describes them.
    pub version: ObjectVersion,
}

/// A precondition on replacing an object, checked atomically with the write
/// (conditional PUT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteCondition {
    /// `If-None-Match: *`: only if the key has no current version.
    IfNoneMatchAny,
    /// `If-Match: "etag"`: only if the current version has this ETag (without quotes).
    IfMatch(String),
}

/// Field order is part of the metadata format: listings decode the first four fields alone
/// (postcard is positional), so they stay first and in this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// Unique per write; lets a later writer tell versions apart.
    pub version_id: String,
    /// Object length in bytes.
    pub size_bytes: u64,
    /// The ETag without quotes: hex MD5 of the body for a single PUT.
    pub etag: String,
    /// Commit time, Unix milliseconds.
    pub last_modified_ms: u64,
    /// `Content-Type` as given on PUT.
    pub content_type: Option<String>,
    /// The other standard headers stored with the object and returned on GET and HEAD.
    pub headers: ContentHeaders,
    /// `x-amz-meta-*` headers, names lower-case without the prefix.
    pub user_metadata: BTreeMap<String, String>,
    /// Verified checksums, base64 as S3 prints them.
    pub checksums: BTreeMap<ChecksumAlgorithm, String>,
    /// The bytes, or where they are.
    pub data: ObjectData,
}

impl ObjectVersion {
    /// All stripes of this version (none for inline data).
    pub fn stripes(&self) -> &[Stripe] {
        self.data.stripes()
    }
}

impl ObjectData {
    /// Its stripes (none for inline data).
    pub fn stripes(&self) -> &[Stripe] {
        match self {
            ObjectData::Inline(_) => &[],
            ObjectData::Striped { stripes, .. } => stripes,
        }
    }
}

/// An entry of a listing: the key and the parts of its current version a listing shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    /// The object key.
    pub key: String,
    /// Length in bytes.
    pub size_bytes: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Unix milliseconds.
    pub last_modified_ms: u64,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectListing {
    /// Objects in key order.
    pub objects: Vec<ObjectSummary>,
    /// Common prefixes (with a delimiter), in order.
    pub common_prefixes: Vec<String>,
    /// Whether more entries follow.
    pub is_truncated: bool,
    /// Where the next page starts (exclusive): the last key or prefix of this page.
    pub next_marker: Option<String>,
}

/// Parameters of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListObjectsQuery {
    /// The bucket.
    pub bucket: BucketName,
    /// Only keys starting with this.
    pub prefix: String,
    /// Roll keys up to the first occurrence of this after the prefix.
    pub delimiter: Option<String>,
    /// Start strictly after this key (or prefix).
    pub start_after: Option<String>,
    /// At most this many objects plus common prefixes.
    pub max_keys: u32,
}

/// Serde adapter that writes `Vec<u8>` as bytes in compact formats.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}
