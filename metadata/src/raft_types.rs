//! openraft's type configuration. Architecture Invariant: openraft appears in this crate
//! only; nothing outside sees a Raft type.

use std::fs::File;
use std::path::PathBuf;

use crate::command::{MetaResponse, Proposal};

openraft::declare_raft_types!(
    /// The metadata group's Raft types: commands and responses are ours, node ids are u64,
    /// a node is known by its advertised gRPC address.
    pub TypeConfig:
        D = Proposal,
        R = MetaResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

use openraft::type_config::alias as a;

/// A log position.
pub type LogId = a::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = a::VoteOf<TypeConfig>;
/// A log entry.
pub type Entry = a::EntryOf<TypeConfig>;
/// Membership as stored.
pub type StoredMembership = a::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = a::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its meta and its file.
pub type Snapshot = a::SnapshotOf<TypeConfig, SnapshotFile>;
/// A snapshot of the simulation's in-memory state machine: its meta and encoded pairs.
#[cfg(any(test, feature = "sim"))]
pub type MemSnapshot = a::SnapshotOf<TypeConfig, Vec<u8>>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;

/// A snapshot's data: an open file and where it lives. The open handle keeps the content
/// readable even if a newer snapshot replaces the path meanwhile.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Where the content is (a received snapshot lives in a temporary file until installed).
    pub path: PathBuf,
    /// The open file.
    pub file: File,
}
