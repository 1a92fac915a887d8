//! Key layout of the state machine.
//!
//! ```text
//! [partition: u16 BE][table: u8][table-specific bytes]
//! ```
//! Every key starts with a partition id (0 today) so that the keyspace can later be split
//! into several Raft groups by key range without rewriting any key. Within a partition
//! keys are ordered so that the reads we need are range scans; in particular objects sort
//! by (bucket, key) in UTF-8 byte order, the order S3 lists them in, and a listing with a
//! prefix is one seek plus a scan.

use lauscha_core::{AccessKeyId, BucketName, StripeId, TenantId};

/// The partition all keys live in until the keyspace is split.
pub const PARTITION: u16 = 0;

/// Tables, one byte each. Never renumber: the numbers are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Table {
    /// Tenant id -> Tenant.
    Tenant = 1,
    /// Access key id -> AccessKey.
    AccessKey = 2,
    /// Bucket name -> Bucket.
    Bucket = 3,
    /// (tenant, bucket name) -> empty: the buckets of a tenant, for ListBuckets.
    TenantBucket = 4,
    /// (bucket, object key) -> ObjectVersion (the current version).
    Object = 5,
    /// The cluster map, one key.
    ClusterMap = 6,
    /// (time ms, log index) -> stripes that no version references any more.
    Garbage = 7,
    /// (client, seq) -> the response to a request, for exactly-once retries.
    Request = 8,
    /// (time ms, client, seq) -> empty: request records by age, for pruning.
    RequestByTime = 9,
    /// One key: the age-index key pruning continues after (everything before it is
    /// deleted; scanning from the table start would wade through their tombstones).
    RequestPruneCursor = 10,
    /// Stripe id -> the object whose current version holds it.
    StripeIndex = 11,
    /// (stripe id, shard idx) -> time: shards known to need a rebuild (a degraded write,
    /// a corrupt read), repaired before the next full scan finds them.
    RepairQueue = 12,
    /// Stripe id -> the garbage record holding it: a stripe waiting for GC is still known.
    GarbageStripe = 13,
    /// (bucket, object key, upload id) -> MultipartUpload: uploads in progress.
    Upload = 14,
    /// (upload id, part number) -> UploadPart.
    Part = 15,
    /// Stripe id -> upload id: the stripe of an uploaded part is known, not an orphan.
    PartStripe = 16,
    /// (access key id, bucket) -> Permission: what a restricted key may do.
    KeyGrant = 17,
    /// (bucket, object key, creation index) -> NoncurrentVersion: every version of a key
    /// but the current object, newest first within a key.
    Version = 18,
    /// Stripe id -> VersionOwner: the noncurrent version holding a stripe.
    VersionStripe = 19,
    /// (bucket, setting kind) -> the setting (versioning history, Object Lock, tags, CORS,
    /// policy, lifecycle).
    BucketSetting = 20,
    /// (bucket, object key, creation index, kind) -> a version's lock or tags.
    VersionAttr = 21,
    /// Upload id -> VersionExtras given when the upload started.
    UploadExtras = 22,
    /// Volume name -> Volume.
    Volume = 23,
    /// (volume, extent index) -> Extent.
    VolumeExtent = 24,
    /// (volume, sequence number) -> JournalEntry not merged yet.
    VolumeJournal = 25,
    /// Stripe id -> u32: how many extent and journal records (of volumes, snapshots and
    /// clones) reference the stripe.
    VolumeStripe = 26,
    /// (stripe id, volume, kind, extent index or sequence number) -> empty: the records
    /// that reference a volume stripe, so that moving a shard updates every one.
    VolumeStripeHolder = 27,
    /// (volume, sequence number) -> u64: where a journal entry written in a batch starts
    /// in its data (the batch); absent for an entry whose data is its own.
    VolumeJournalSlice = 28,
    /// (volume, sequence number) -> empty: the journal entry is settled (every shard of
    /// its stripes was durable, at the volume's redundancy, when it was recorded).
    VolumeJournalSettled = 29,
}

/// The settings of a bucket, one key each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum SettingKind {
    /// VersioningHistory.
    Versioning = 1,
    /// ObjectLockConfig.
    ObjectLock = 2,
    /// Bucket tags.
    Tags = 3,
    /// CORS rules.
    Cors = 4,
    /// Bucket policy (JSON text).
    Policy = 5,
    /// Lifecycle rules.
    Lifecycle = 6,
}

/// Attributes of a version, one key each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AttrKind {
    /// VersionLock.
    Lock = 1,
    /// Tags.
    Tags = 2,
}

/// Separates a bucket name from what follows. Bucket names and object keys never contain
/// NUL, so the separator keeps (bucket, key) order equal to byte order.
const SEP: u8 = 0;

fn table_prefix(table: Table) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    key.extend_from_slice(&PARTITION.to_be_bytes());
    key.push(table as u8);
    key
}

/// All keys of one table: `[start, end)`.
pub fn table_range(table: Table) -> (Vec<u8>, Vec<u8>) {
    let start = table_prefix(table);
    let mut end = start.clone();
    *end.last_mut().expect("non-empty") += 1;
    (start, end)
}

/// Key of a tenant.
pub fn tenant(id: &TenantId) -> Vec<u8> {
    let mut key = table_prefix(Table::Tenant);
    key.extend_from_slice(id.0.as_bytes());
    key
}

/// Key of an access key.
pub fn access_key(id: &AccessKeyId) -> Vec<u8> {
    let mut key = table_prefix(Table::AccessKey);
    key.extend_from_slice(id.0.as_bytes());
    key
}

/// Key of a bucket.
pub fn bucket(name: &BucketName) -> Vec<u8> {
    let mut key = table_prefix(Table::Bucket);
    key.extend_from_slice(name.as_str().as_bytes());
    key
}

/// Index key: a bucket of a tenant.
pub fn tenant_bucket(tenant: &TenantId, name: &BucketName) -> Vec<u8> {
    let mut key = tenant_buckets_prefix(tenant);
    key.extend_from_slice(name.as_str().as_bytes());
    key
}

/// Prefix of all index keys of a tenant's buckets.
pub fn tenant_buckets_prefix(tenant: &TenantId) -> Vec<u8> {
    let mut key = table_prefix(Table::TenantBucket);
    key.extend_from_slice(tenant.0.as_bytes());
    key.push(SEP);
    key
}

/// Prefix of all objects of a bucket.
pub fn bucket_objects_prefix(bucket: &BucketName) -> Vec<u8> {
    let mut key = table_prefix(Table::Object);
    key.extend_from_slice(bucket.as_str().as_bytes());
    key.push(SEP);
    key
}

/// Key of an object.
pub fn object(bucket: &BucketName, object_key: &str) -> Vec<u8> {
    let mut key = bucket_objects_prefix(bucket);
    key.extend_from_slice(object_key.as_bytes());
    key
}

/// The cluster map's key.
pub fn cluster_map() -> Vec<u8> {
    table_prefix(Table::ClusterMap)
}

/// Key of a garbage record.
pub fn garbage(time_ms: u64, log_index: u64) -> Vec<u8> {
    let mut key = table_prefix(Table::Garbage);
    key.extend_from_slice(&time_ms.to_be_bytes());
    key.extend_from_slice(&log_index.to_be_bytes());
    key
}

/// Key of a remembered request.
pub fn request(client: u64, seq: u64) -> Vec<u8> {
    let mut key = table_prefix(Table::Request);
    key.extend_from_slice(&client.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Key of a request in the age index.
pub fn request_by_time(time_ms: u64, client: u64, seq: u64) -> Vec<u8> {
    let mut key = table_prefix(Table::RequestByTime);
    key.extend_from_slice(&time_ms.to_be_bytes());
    key.extend_from_slice(&client.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The age-index key of everything older than `time_ms` ends before this.
pub fn request_by_time_before(time_ms: u64) -> Vec<u8> {
    let mut key = table_prefix(Table::RequestByTime);
    key.extend_from_slice(&time_ms.to_be_bytes());
    key
}

/// Prefix of the uploads in progress of a bucket.
pub fn bucket_uploads_prefix(bucket: &BucketName) -> Vec<u8> {
    let mut key = table_prefix(Table::Upload);
    key.extend_from_slice(bucket.as_str().as_bytes());
    key.push(SEP);
    key
}

/// Key of an upload in progress.
pub fn upload(bucket: &BucketName, object_key: &str, upload_id: &str) -> Vec<u8> {
    let mut key = bucket_uploads_prefix(bucket);
    key.extend_from_slice(object_key.as_bytes());
    key.push(SEP);
    key.extend_from_slice(upload_id.as_bytes());
    key
}

/// Prefix of the parts of an upload.
pub fn parts_prefix(upload_id: &str) -> Vec<u8> {
    let mut key = table_prefix(Table::Part);
    key.extend_from_slice(upload_id.as_bytes());
    key.push(SEP);
    key
}

/// Key of a part.
pub fn part(upload_id: &str, part_number: u32) -> Vec<u8> {
    let mut key = parts_prefix(upload_id);
    key.extend_from_slice(&part_number.to_be_bytes());
    key
}

/// Prefix of an access key's grants.
pub fn key_grants_prefix(id: &AccessKeyId) -> Vec<u8> {
    let mut key = table_prefix(Table::KeyGrant);
    key.extend_from_slice(id.0.as_bytes());
    key.push(SEP);
    key
}

/// Key of one grant.
pub fn key_grant(id: &AccessKeyId, bucket: &BucketName) -> Vec<u8> {
    let mut key = key_grants_prefix(id);
    key.extend_from_slice(bucket.as_str().as_bytes());
    key
}

/// Prefix of all versions of all keys of a bucket in the version table.
pub fn bucket_versions_prefix(bucket: &BucketName) -> Vec<u8> {
    let mut key = table_prefix(Table::Version);
    key.extend_from_slice(bucket.as_str().as_bytes());
    key.push(SEP);
    key
}

/// Prefix of the noncurrent versions of one key.
pub fn key_versions_prefix(bucket: &BucketName, object_key: &str) -> Vec<u8> {
    let mut key = bucket_versions_prefix(bucket);
    key.extend_from_slice(object_key.as_bytes());
    key.push(SEP);
    key
}

/// Key of a noncurrent version: newer versions sort first.
pub fn version(bucket: &BucketName, object_key: &str, seq: u64) -> Vec<u8> {
    let mut key = key_versions_prefix(bucket, object_key);
    key.extend_from_slice(&(!seq).to_be_bytes());
    key
}

/// (object key, creation index) of a version-table key of `bucket`.
pub fn parse_version(bucket: &BucketName, key: &[u8]) -> Option<(String, u64)> {
    let rest = key.strip_prefix(bucket_versions_prefix(bucket).as_slice())?;
    if rest.len() < 9 || rest[rest.len() - 9] != SEP {
        return None;
    }
    let (name, tail) = rest.split_at(rest.len() - 9);
    let seq = !u64::from_be_bytes(tail[1..].try_into().ok()?);
    Some((String::from_utf8(name.to_vec()).ok()?, seq))
}

/// Key of a noncurrent version's stripe.
pub fn version_stripe(stripe: StripeId) -> Vec<u8> {
    let mut key = table_prefix(Table::VersionStripe);
    key.extend_from_slice(&stripe.to_bytes());
    key
}

/// Key of a bucket setting.
pub fn bucket_setting(bucket: &BucketName, kind: SettingKind) -> Vec<u8> {
    let mut key = bucket_settings_prefix(bucket);
    key.push(kind as u8);
    key
}

/// Prefix of a bucket's settings.
pub fn bucket_settings_prefix(bucket: &BucketName) -> Vec<u8> {
    let mut key = table_prefix(Table::BucketSetting);
    key.extend_from_slice(bucket.as_str().as_bytes());
    key.push(SEP);
    key
}

/// Prefix of one version's attributes.
pub fn version_attrs_prefix(bucket: &BucketName, object_key: &str, seq: u64) -> Vec<u8> {
    let mut key = table_prefix(Table::VersionAttr);
    key.extend_from_slice(bucket.as_str().as_bytes());
    key.push(SEP);
    key.extend_from_slice(object_key.as_bytes());
    key.push(SEP);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Key of one attribute of a version.
pub fn version_attr(bucket: &BucketName, object_key: &str, seq: u64, kind: AttrKind) -> Vec<u8> {
    let mut key = version_attrs_prefix(bucket, object_key, seq);
    key.push(kind as u8);
    key
}

/// Key of the extras of an upload.
pub fn upload_extras(upload_id: &str) -> Vec<u8> {
    let mut key = table_prefix(Table::UploadExtras);
    key.extend_from_slice(upload_id.as_bytes());
    key
}

/// Key of a volume.
pub fn volume(name: &str) -> Vec<u8> {
    let mut key = table_prefix(Table::Volume);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Prefix of a volume's records in `table`, each keyed by (volume, u64).
fn volume_records_prefix(table: Table, name: &str) -> Vec<u8> {
    let mut key = table_prefix(table);
    key.extend_from_slice(name.as_bytes());
    key.push(SEP);
    key
}

/// Key of a volume's record `n` in `table`.
fn volume_record(table: Table, name: &str, n: u64) -> Vec<u8> {
    let mut key = volume_records_prefix(table, name);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Prefix of a volume's extents.
pub fn volume_extents_prefix(name: &str) -> Vec<u8> {
    volume_records_prefix(Table::VolumeExtent, name)
}

/// Key of one extent.
pub fn volume_extent(name: &str, idx: u64) -> Vec<u8> {
    volume_record(Table::VolumeExtent, name, idx)
}

/// Prefix of a volume's journal.
pub fn volume_journal_prefix(name: &str) -> Vec<u8> {
    volume_records_prefix(Table::VolumeJournal, name)
}

/// Key of one journal entry.
pub fn volume_journal(name: &str, seq: u64) -> Vec<u8> {
    volume_record(Table::VolumeJournal, name, seq)
}

/// Prefix of a volume's journal slice records.
pub fn volume_journal_slices_prefix(name: &str) -> Vec<u8> {
    volume_records_prefix(Table::VolumeJournalSlice, name)
}

/// Key of a journal entry's slice record.
pub fn volume_journal_slice(name: &str, seq: u64) -> Vec<u8> {
    volume_record(Table::VolumeJournalSlice, name, seq)
}

/// Prefix of a volume's settled marks.
pub fn volume_journal_settled_prefix(name: &str) -> Vec<u8> {
    volume_records_prefix(Table::VolumeJournalSettled, name)
}

/// Key of a journal entry's settled mark.
pub fn volume_journal_settled(name: &str, seq: u64) -> Vec<u8> {
    volume_record(Table::VolumeJournalSettled, name, seq)
}

/// The trailing u64 of an extent or journal key.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// Key of a volume stripe's index entry.
pub fn volume_stripe(stripe: StripeId) -> Vec<u8> {
    let mut key = table_prefix(Table::VolumeStripe);
    key.extend_from_slice(&stripe.to_bytes());
    key
}

/// What a volume stripe holder record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderKind {
    /// An extent (by index).
    Extent = 1,
    /// A journal entry (by sequence number).
    Journal = 2,
}

/// Prefix of the holders of one volume stripe.
pub fn volume_stripe_holders_prefix(stripe: StripeId) -> Vec<u8> {
    let mut key = table_prefix(Table::VolumeStripeHolder);
    key.extend_from_slice(&stripe.to_bytes());
    key
}

/// Key of one holder of a volume stripe.
pub fn volume_stripe_holder(stripe: StripeId, volume: &str, kind: HolderKind, n: u64) -> Vec<u8> {
    let mut key = volume_stripe_holders_prefix(stripe);
    key.extend_from_slice(volume.as_bytes());
    key.push(SEP);
    key.push(kind as u8);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// (volume, kind, n) of a holder key.
pub fn parse_volume_stripe_holder(key: &[u8]) -> Option<(String, HolderKind, u64)> {
    let rest = key.get(3 + 16..)?;
    if rest.len() < 10 || rest[rest.len() - 10] != SEP {
        return None;
    }
    let (name, tail) = rest.split_at(rest.len() - 10);
    let kind = match tail[1] {
        1 => HolderKind::Extent,
        2 => HolderKind::Journal,
        _ => return None,
    };
    let n = u64::from_be_bytes(tail[2..].try_into().ok()?);
    Some((String::from_utf8(name.to_vec()).ok()?, kind, n))
}

/// Key of a part's stripe.
pub fn part_stripe(stripe: StripeId) -> Vec<u8> {
    let mut key = table_prefix(Table::PartStripe);
    key.extend_from_slice(&stripe.to_bytes());
    key
}

/// Key of a stripe's index entry.
pub fn stripe_index(stripe: StripeId) -> Vec<u8> {
    let mut key = table_prefix(Table::StripeIndex);
    key.extend_from_slice(&stripe.to_bytes());
    key
}

/// The stripe id of an index key.
pub fn parse_stripe_index(key: &[u8]) -> Option<StripeId> {
    StripeId::from_slice(key.get(3..)?)
}

/// Key of a garbage stripe's index entry.
pub fn garbage_stripe(stripe: StripeId) -> Vec<u8> {
    let mut key = table_prefix(Table::GarbageStripe);
    key.extend_from_slice(&stripe.to_bytes());
    key
}

/// Key of a repair-queue entry.
pub fn repair(stripe: StripeId, shard_idx: u8) -> Vec<u8> {
    let mut key = table_prefix(Table::RepairQueue);
    key.extend_from_slice(&stripe.to_bytes());
    key.push(shard_idx);
    key
}

/// (stripe, shard idx) of a repair-queue key.
pub fn parse_repair(key: &[u8]) -> Option<(StripeId, u8)> {
    let rest = key.get(3..)?;
    if rest.len() != 17 {
        return None;
    }
    Some((StripeId::from_slice(&rest[..16])?, rest[16]))
}

/// The prune cursor's key.
pub fn request_prune_cursor() -> Vec<u8> {
    table_prefix(Table::RequestPruneCursor)
}

/// Splits an age-index key into (time ms, client, seq).
pub fn parse_request_by_time(key: &[u8]) -> Option<(u64, u64, u64)> {
    let rest = key.get(3..)?;
    if rest.len() != 24 {
        return None;
    }
    let n = |i: usize| u64::from_be_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
    Some((n(0), n(8), n(16)))
}

/// The smallest key greater than every key that starts with `prefix`, or `None` if no
/// such key exists (all bytes 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_sort_by_bucket_then_key_bytes() {
        let a = BucketName::parse("aaa").unwrap();
        let ab = BucketName::parse("aaab").unwrap();
        // "aaa" + any key sorts before bucket "aaab", thanks to the NUL separator.
        assert!(object(&a, "zzzz") < object(&ab, ""));
        assert!(object(&a, "a/b") < object(&a, "a0"));
        assert!(object(&a, "a") < object(&a, "a\u{1}"));
        assert!(object(&a, "Z") < object(&a, "a"));
    }

    #[test]
    fn versions_sort_by_key_then_newest_first_and_parse_back() {
        let b = BucketName::parse("bbb").unwrap();
        assert!(version(&b, "a", 10) < version(&b, "a", 9));
        assert!(version(&b, "a", 1) < version(&b, "a/", 100));
        assert!(version(&b, "a", 1) < version(&b, "a\u{1}", 100));
        assert_eq!(
            parse_version(&b, &version(&b, "x/y", 77)),
            Some(("x/y".to_string(), 77))
        );
    }

    #[test]
    fn keys_start_with_the_partition() {
        let key = bucket(&BucketName::parse("abc").unwrap());
        assert_eq!(&key[..2], &PARTITION.to_be_bytes());
        assert_eq!(key[2], Table::Bucket as u8);
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
