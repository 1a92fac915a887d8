//! The metadata service: an openraft voter whose log and state machine live in RocksDB.
//!
//! Architecture Invariant: the state machine's transition function ([`apply::apply`]) and
//! its reads ([`query`]) are pure functions over [`kv::KvRead`]; RocksDB is behind
//! `store`, openraft behind `node` and `network`. openraft types never leave this crate.
//!
//! Architecture Invariant: every change goes through the Raft log (`MetaNode::write`);
//! every read first confirms leadership through the leader lease or a read index
//! (`node::ensure_linearizable`), so a deposed leader never answers from stale state.

pub mod apply;
pub mod command;
pub mod keys;
pub mod kv;
mod network;
mod node;
pub mod query;
mod raft_types;
mod service;
#[cfg(feature = "sim")]
pub mod sim;
mod store;
pub mod value;
pub mod versions;
pub mod volumes;

pub use command::{MetaCommand, MetaError, MetaResponse, Proposal, RequestId};
pub use node::{MetaNode, MetaNodeOptions, MetaStatus};
pub use service::MetaServer;
