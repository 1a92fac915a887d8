//! The contract every [`ShardStore`] must keep, as one suite that runs against each
//! implementation (as TiKV and openraft do for their storage traits).

use bytes::Bytes;
use lauscha_core::checksum::SHARD_BLOCK_BYTES;
use lauscha_core::{ShardDigest, ShardId, StripeId};

use crate::{BlockReader, ShardError, ShardStore, ShardWriter};

fn shard_id(n: u128) -> ShardId {
    ShardId {
        stripe_id: StripeId(n),
        shard_idx: (n % 7) as u8,
    }
}

/// Writes `data` as shard `n` in pieces of 10,000 bytes; panics with context on failure.
pub async fn must_put(store: &impl ShardStore, n: u128, data: &[u8]) -> ShardId {
    let id = shard_id(n);
    let mut writer = store
        .create(id, data.len() as u64, ShardDigest::of(data))
        .await
        .unwrap_or_else(|e| panic!("create shard {id}: {e}"));
    for piece in data.chunks(10_000) {
        writer
            .write(Bytes::copy_from_slice(piece))
            .await
            .unwrap_or_else(|e| panic!("write shard {id}: {e}"));
    }
    writer
        .commit()
        .await
        .unwrap_or_else(|e| panic!("commit shard {id}: {e}"));
    id
}

/// Reads blocks of `id` covering `[offset, offset + len)`; returns the first block index and
/// the concatenated blocks. An unchecked read of the same range must give the same.
pub async fn must_read(
    store: &impl ShardStore,
    id: ShardId,
    offset: u64,
    len: u64,
) -> (u64, Vec<u8>) {
    let checked = drain(
        id,
        store
            .open(id, offset, len)
            .await
            .unwrap_or_else(|e| panic!("open shard {id}: {e}")),
    )
    .await;
    let unchecked = drain(
        id,
        store
            .open_unchecked(id, offset, len)
            .await
            .unwrap_or_else(|e| panic!("open shard {id} unchecked: {e}")),
    )
    .await;
    assert_eq!(
        checked, unchecked,
        "checked and unchecked reads of {id} differ"
    );
    checked
}

async fn drain(id: ShardId, mut reader: impl BlockReader) -> (u64, Vec<u8>) {
    let first = reader.first_block_idx();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block().await {
        out.extend_from_slice(&block.unwrap_or_else(|e| panic!("read shard {id}: {e}")));
    }
    (first, out)
}

/// Runs the whole contract against `store`, which must be empty.
pub async fn check_shard_store(store: &impl ShardStore) {
    assert_eq!(store.usage().n_shards, 0, "the suite needs an empty store");

    // Round trip of shards around the block size.
    for (n, len) in [
        (1u128, 0usize),
        (2, 1),
        (3, 65_535),
        (4, 65_536),
        (5, 65_537),
        (6, 300_000),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + n as usize) as u8).collect();
        let id = must_put(store, n, &data).await;
        let (first, whole) = must_read(store, id, 0, 0).await;
        assert_eq!(first, 0);
        assert_eq!(whole, data, "shard of {len} bytes");
    }
    assert_eq!(store.usage().n_shards, 6);

    // Ranges return exactly the covering blocks.
    let data: Vec<u8> = (0..300_000usize).map(|i| (i * 13 + 6) as u8).collect();
    let id = shard_id(6);
    let block = SHARD_BLOCK_BYTES as usize;
    let (first, bytes) = must_read(store, id, block as u64 + 5, 10).await;
    assert_eq!(first, 1);
    assert_eq!(bytes, data[block..2 * block]);
    let (first, bytes) = must_read(store, id, block as u64 - 1, 2).await;
    assert_eq!(first, 0);
    assert_eq!(bytes, data[..2 * block]);
    let (first, bytes) = must_read(store, id, 299_999, 1).await;
    assert_eq!(first, 4);
    assert_eq!(bytes, data[4 * block..]);
    assert!(matches!(
        store.open(id, 299_999, 2).await.err(),
        Some(ShardError::InvalidRequest(_))
    ));
    assert!(matches!(
        store.open(id, u64::MAX, 2).await.err(),
        Some(ShardError::InvalidRequest(_))
    ));

    // An unchecked block read returns the block as stored, with the checked header.
    let (header, bytes) = store.read_block_unchecked(id, 4).await.unwrap();
    assert_eq!(header.shard_len_bytes, 300_000);
    assert_eq!(header.block_hashes.len(), 5);
    assert_eq!(bytes, data[4 * block..]);
    assert!(lauscha_core::checksum::verify_block(
        &bytes,
        &header.block_hashes[4]
    ));
    assert!(matches!(
        store.read_block_unchecked(id, 5).await.err(),
        Some(ShardError::InvalidRequest(_))
    ));
    assert!(matches!(
        store.read_block_unchecked(shard_id(99), 0).await.err(),
        Some(ShardError::NotFound(_))
    ));

    // Immutability: an existing id cannot be written again.
    assert!(matches!(
        store.create(id, 1, ShardDigest::of(&[0])).await.err(),
        Some(ShardError::AlreadyExists(_))
    ));

    // A wrong digest, a short or a long body are refused and leave nothing visible.
    let bad_id = shard_id(100);
    let mut writer = store
        .create(bad_id, 4, ShardDigest::of(b"abcd"))
        .await
        .unwrap();
    writer.write(Bytes::from_static(b"abce")).await.unwrap();
    assert!(matches!(
        writer.commit().await,
        Err(ShardError::Rejected { .. })
    ));
    let mut writer = store
        .create(bad_id, 4, ShardDigest::of(b"abcd"))
        .await
        .unwrap();
    writer.write(Bytes::from_static(b"abc")).await.unwrap();
    assert!(matches!(
        writer.commit().await,
        Err(ShardError::Rejected { .. })
    ));
    let mut writer = store
        .create(bad_id, 4, ShardDigest::of(b"abcd"))
        .await
        .unwrap();
    assert!(matches!(
        writer.write(Bytes::from_static(b"abcde")).await,
        Err(ShardError::Rejected { .. })
    ));
    drop(writer);
    // An abandoned writer leaves nothing either.
    let mut writer = store
        .create(bad_id, 4, ShardDigest::of(b"abcd"))
        .await
        .unwrap();
    writer.write(Bytes::from_static(b"ab")).await.unwrap();
    drop(writer);
    assert!(matches!(
        store.open(bad_id, 0, 0).await.err(),
        Some(ShardError::NotFound(_))
    ));
    assert_eq!(store.usage().n_shards, 6);

    // The id is still free after the failures.
    must_put(store, 100, b"abcd").await;

    // Delete is idempotent.
    assert!(store.delete(bad_id).await.unwrap());
    assert!(!store.delete(bad_id).await.unwrap());
    assert!(matches!(
        store.open(bad_id, 0, 0).await.err(),
        Some(ShardError::NotFound(_))
    ));
    assert_eq!(store.usage().n_shards, 6);

    // Listing: every shard once, in id order, in pages.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(after, 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id);
        listed.extend(page.into_iter().map(|e| e.id));
    }
    let mut want: Vec<ShardId> = (1..=6).map(shard_id).collect();
    want.sort();
    assert_eq!(listed, want);

    // Verification passes on a good shard, and quarantine leaves it in service (it
    // takes out only what is corrupt: each store's own tests damage one); a shard that
    // is not there is not quarantined either.
    store.verify(shard_id(6)).await.unwrap();
    assert!(!store.quarantine(shard_id(6)).await.unwrap());
    store.verify(shard_id(6)).await.unwrap();
    assert!(!store.quarantine(shard_id(99)).await.unwrap());
    assert_eq!(store.usage().n_shards, 6);

    // Oversized shards are refused up front.
    assert!(matches!(
        store
            .create(
                shard_id(101),
                crate::MAX_SHARD_BYTES + 1,
                ShardDigest::of(&[])
            )
            .await
            .err(),
        Some(ShardError::InvalidRequest(_))
    ));
}
