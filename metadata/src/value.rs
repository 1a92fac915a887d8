//! Encoding of state-machine values and Raft log entries: a format version byte, then
//! postcard. Postcard is compact and fast but not self-describing, so the version byte is
//! what lets a later release change a type: it bumps the version and keeps a decoder for
//! the old one. Golden files in `testdata/` pin each version.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The current format version.
pub const FORMAT_V1: u8 = 1;

/// A value that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable value: {0}")]
pub struct DecodeError(pub String);

/// Encodes with the current version.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Serialising our own in-memory types to a Vec cannot fail: postcard fails only on
    // unsupported serde features (which we do not use) or a full buffer (a Vec grows).
    postcard::to_io(value, &mut out).expect("postcard encodes our types");
    out
}

/// Decodes a value of any version this release reads.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| DecodeError(e.to_string()))
        }
        Some((version, _)) => Err(DecodeError(format!("unknown format version {version}"))),
        None => Err(DecodeError("empty value".into())),
    }
}

/// Decodes a value's leading fields into `T`, ignoring what follows (postcard is
/// positional: a struct whose fields are a prefix of the stored type's fields reads them).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::take_from_bytes(rest)
            .map(|(value, _rest)| value)
            .map_err(|e| DecodeError(e.to_string())),
        Some((version, _)) => Err(DecodeError(format!("unknown format version {version}"))),
        None => Err(DecodeError("empty value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{MetaCommand, Proposal, RequestId};
    use lauscha_core::versioning::ObjectCommand;
    use lauscha_core::volume::{
        BatchedWrite, Extent, JournalEntry, Lease, SpilledEntry, Volume, VolumeCommand,
    };
    use lauscha_core::{
        NodeId, ObjectData, PlacementPolicy, ShardDigest, ShardLocation, Stripe, StripeId, TenantId,
    };

    /// The golden encodings, `name hex` per line.
    const GOLDEN_V1: &str = include_str!("../testdata/format_v1.txt");

    fn stripes() -> ObjectData {
        ObjectData::Striped {
            n_data_shards: 2,
            n_parity_shards: 1,
            stripes: vec![Stripe {
                id: StripeId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
                len_bytes: 8192,
                shards: (0..3)
                    .map(|i| ShardLocation {
                        node: NodeId(i + 1),
                        digest: ShardDigest([i as u8; 32]),
                    })
                    .collect(),
            }],
        }
    }

    fn volume_command(command: VolumeCommand) -> Vec<u8> {
        encode(&Proposal {
            request_id: Some(RequestId { client: 7, seq: 9 }),
            now_ms: 1_700_000_000_000,
            command: MetaCommand::Object {
                command: ObjectCommand::Volume(command),
                now_ms: 1_700_000_000_000,
            },
        })
    }

    /// What Raft logs and state machines on disk hold, in a sample of each volume record
    /// and command: postcard is positional, so a reordered field or enum variant would
    /// make old data decode wrong (or not at all). A change here needs a new format
    /// version and a decoder for the old one, not new golden bytes.
    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let name = "vm-1".to_string();
        vec![
            (
                "volume",
                encode(&Volume {
                    name: name.clone(),
                    tenant: TenantId("stadt-jena".into()),
                    size_bytes: 10 << 30,
                    extent_bytes: 4 << 20,
                    policy: PlacementPolicy::DEFAULT,
                    created_ms: 1_700_000_000_000,
                    epoch: 3,
                    lease: Some(Lease {
                        holder: "gw-1".into(),
                        epoch: 3,
                        expires_ms: 1_700_000_010_000,
                    }),
                    next_seq: 42,
                    read_only: false,
                }),
            ),
            (
                "journal_entry",
                encode(&JournalEntry {
                    epoch: 3,
                    offset: 4096,
                    len: 8192,
                    data: Some(stripes()),
                }),
            ),
            (
                "journal_entry_inline",
                encode(&JournalEntry {
                    epoch: 3,
                    offset: 0,
                    len: 4,
                    data: Some(ObjectData::Inline(vec![1, 2, 3, 4])),
                }),
            ),
            ("extent", encode(&Extent { data: stripes() })),
            ("journal_slice", encode(&4096u64)),
            (
                "command_append",
                volume_command(VolumeCommand::Append {
                    name: name.clone(),
                    epoch: 3,
                    entries: vec![JournalEntry {
                        epoch: 3,
                        offset: 0,
                        len: 4096,
                        data: None,
                    }],
                }),
            ),
            (
                "command_merge",
                volume_command(VolumeCommand::Merge {
                    name: name.clone(),
                    epoch: 3,
                    extent: 2,
                    data: Some(stripes()),
                    merged: vec![5, 6],
                }),
            ),
            (
                "command_rewrite",
                volume_command(VolumeCommand::Rewrite {
                    name: name.clone(),
                    epoch: 3,
                    seq: 5,
                    data: stripes(),
                }),
            ),
            (
                "command_append_batch",
                volume_command(VolumeCommand::AppendBatch {
                    name: name.clone(),
                    epoch: 3,
                    data: stripes(),
                    writes: vec![
                        BatchedWrite {
                            offset: 0,
                            len: 4096,
                            at: 0,
                        },
                        BatchedWrite {
                            offset: 1 << 20,
                            len: 4096,
                            at: 4096,
                        },
                    ],
                }),
            ),
            (
                "command_spill",
                volume_command(VolumeCommand::Spill {
                    name: name.clone(),
                    epoch: 3,
                    data: stripes(),
                    entries: vec![
                        SpilledEntry { seq: 5, at: 0 },
                        SpilledEntry { seq: 7, at: 4096 },
                    ],
                }),
            ),
            (
                "command_append_settled",
                volume_command(VolumeCommand::AppendSettled {
                    name: name.clone(),
                    epoch: 3,
                    entries: vec![JournalEntry {
                        epoch: 3,
                        offset: 4096,
                        len: 8192,
                        data: Some(stripes()),
                    }],
                }),
            ),
            (
                "command_append_settled_batch",
                volume_command(VolumeCommand::AppendSettledBatch {
                    name: name.clone(),
                    epoch: 3,
                    data: stripes(),
                    writes: vec![BatchedWrite {
                        offset: 0,
                        len: 4096,
                        at: 0,
                    }],
                }),
            ),
            ("journal_settled", encode(&())),
            (
                "command_new_epoch",
                volume_command(VolumeCommand::NewEpoch {
                    name,
                    epoch: 3,
                    ttl_ms: 10_000,
                }),
            ),
        ]
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn format_v1_encodings_do_not_change() {
        let golden: std::collections::BTreeMap<&str, &str> = GOLDEN_V1
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_once(' ').expect("`name hex` lines"))
            .collect();
        let samples = samples();
        let mut missing = String::new();
        for (name, bytes) in &samples {
            match golden.get(name) {
                Some(hex_golden) => assert_eq!(
                    hex(bytes),
                    *hex_golden,
                    "{name}: the encoding changed; old logs and state would decode wrong"
                ),
                None => missing.push_str(&format!("{name} {}\n", hex(bytes))),
            }
        }
        assert!(
            missing.is_empty(),
            "new samples: add these lines to metadata/testdata/format_v1.txt:\n{missing}"
        );
        for (name, bytes) in samples {
            // And they decode back (a sample that does not round-trip pins nothing).
            match name {
                "volume" => drop(decode::<Volume>(&bytes).unwrap()),
                "journal_entry" | "journal_entry_inline" => {
                    drop(decode::<JournalEntry>(&bytes).unwrap())
                }
                "extent" => drop(decode::<Extent>(&bytes).unwrap()),
                "journal_slice" => assert_eq!(decode::<u64>(&bytes).unwrap(), 4096),
                "journal_settled" => decode::<()>(&bytes).unwrap(),
                _ => drop(decode::<Proposal>(&bytes).unwrap()),
            }
        }
    }
}
