//! The snapshot file, format version 1.
//!
//! ```text
//! "LSNAP\0\0" + version byte (1)
//! u32 LE meta length, meta (value::encode of SnapshotMeta)
//! records: u32 LE key length, key, u32 LE value length, value   (in key order)
//! u32 LE 0xFFFF_FFFF end marker, u64 LE record count,
//! 32 bytes blake3 of everything before these 32 bytes
//! ```
//! A snapshot is the whole `sm` column family plus the log position it reflects. The
//! trailing hash lets a receiver reject a damaged or truncated transfer before it touches
//! its state.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::raft_types::SnapshotMeta;
use crate::value;

const MAGIC: [u8; 7] = *b"LSNAP\0\0";
/// The version this release writes.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;
const END_MARKER: u32 = u32::MAX;
/// Longest key or value a snapshot may hold; larger lengths mean a damaged file.
const MAX_RECORD_PART_BYTES: u32 = 64 << 20;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Writes a snapshot to `file` from `(key, value)` pairs in key order.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    n_records: u64,
}

impl SnapshotWriter {
    /// Starts a snapshot of `meta` into a new file at `path`.
    pub fn create(path: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            n_records: 0,
        };
        let meta_bytes = value::encode(meta);
        writer.put(&MAGIC)?;
        writer.put(&[SNAPSHOT_FORMAT_VERSION])?;
        writer.put(&(meta_bytes.len() as u32).to_le_bytes())?;
        writer.put(&meta_bytes)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    /// Appends one pair.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)?;
        self.n_records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs.
    pub fn finish(mut self) -> io::Result<u64> {
        self.put(&END_MARKER.to_le_bytes())?;
        let n = self.n_records;
        self.put(&n.to_le_bytes())?;
        let hash = *self.hasher.finalize().as_bytes();
        self.out.write_all(&hash)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(n)
    }
}

/// Reads the meta from the start of a snapshot file.
pub fn read_meta(file: &mut File) -> io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut head = [0u8; 12];
    reader.read_exact(&mut head)?;
    if head[..7] != MAGIC {
        return Err(invalid("not a snapshot file"));
    }
    if head[7] != SNAPSHOT_FORMAT_VERSION {
        return Err(invalid(format!(
            "unknown snapshot format version {}",
            head[7]
        )));
    }
    let meta_len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if meta_len > MAX_RECORD_PART_BYTES {
        return Err(invalid("snapshot meta too long"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    reader.read_exact(&mut meta)?;
    value::decode(&meta).map_err(|e| invalid(e.to_string()))
}

/// Checks the whole file against its trailing hash and calls `visit` for each record.
/// With `visit` doing nothing this is a pure integrity check; a failure midway leaves
/// whatever `visit` did, so callers verify first and load second.
pub fn read_records(
    file: &mut File,
    visit: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<(SnapshotMeta, u64)> {
    let meta = read_meta(file)?;
    file.seek(SeekFrom::Start(0))?;
    let mut reader = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
    };
    let mut head = [0u8; 12];
    reader.read_exact(&mut head)?;
    let meta_len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    let mut skip = vec![0u8; meta_len as usize];
    reader.read_exact(&mut skip)?;
    let mut n_records = 0u64;
    loop {
        let key_len = reader.read_u32()?;
        if key_len == END_MARKER {
            break;
        }
        let key = reader.read_part(key_len)?;
        let value_len = reader.read_u32()?;
        let value = reader.read_part(value_len)?;
        visit(key, value)?;
        n_records += 1;
    }
    let mut count = [0u8; 8];
    reader.read_exact(&mut count)?;
    if u64::from_le_bytes(count) != n_records {
        return Err(invalid("snapshot record count mismatch"));
    }
    let expected = *reader.hasher.finalize().as_bytes();
    let mut stored = [0u8; 32];
    reader.inner.read_exact(&mut stored)?;
    if stored != expected {
        return Err(invalid("snapshot hash mismatch"));
    }
    let mut rest = [0u8; 1];
    if reader.inner.read(&mut rest)? != 0 {
        return Err(invalid("bytes after the snapshot trailer"));
    }
    Ok((meta, n_records))
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("snapshot truncated")
            } else {
                e
            }
        })?;
        self.hasher.update(buf);
        Ok(())
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_part(&mut self, len: u32) -> io::Result<Vec<u8>> {
        if len > MAX_RECORD_PART_BYTES {
            return Err(invalid("snapshot record too long"));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta::default()
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = SnapshotWriter::create(&path, &meta()).unwrap();
        for i in 0..1000u32 {
            w.record(&i.to_be_bytes(), &vec![i as u8; (i % 50) as usize])
                .unwrap();
        }
        assert_eq!(w.finish().unwrap(), 1000);
        let mut seen = 0;
        let (_, n) = read_records(&mut File::open(&path).unwrap(), &mut |k, v| {
            let i = u32::from_be_bytes(k.try_into().unwrap());
            assert_eq!(v, vec![i as u8; (i % 50) as usize]);
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, seen), (1000, 1000));

        let good = std::fs::read(&path).unwrap();
        for (i, cut) in [(0usize, good.len() - 1), (1, good.len() / 2), (2, 20)] {
            let damaged = dir.path().join(format!("cut{i}"));
            std::fs::write(&damaged, &good[..cut]).unwrap();
            assert!(read_records(&mut File::open(&damaged).unwrap(), &mut |_, _| Ok(())).is_err());
        }
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        let damaged = dir.path().join("flip");
        std::fs::write(&damaged, &flipped).unwrap();
        assert!(read_records(&mut File::open(&damaged).unwrap(), &mut |_, _| Ok(())).is_err());
    }
}
