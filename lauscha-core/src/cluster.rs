//! The cluster map: which storage nodes exist, where they stand in the failure-domain tree
//! (site > host > node), how much they hold, and whether they take new shards.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Lifecycle state of a storage node in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving; takes new shards.
    Up,
    /// Known to be unreachable; takes no new shards, its shards are read from parity.
    Down,
    /// Being emptied; serves reads, takes no new shards.
    Draining,
    /// Removed for good; nothing may point at it.
    Gone,
}

impl NodeState {
    /// Whether placement may put new shards on a node in this state.
    pub fn accepts_new_shards(self) -> bool {
        match self {
            NodeState::Up => true,
            NodeState::Down | NodeState::Draining | NodeState::Gone => false,
        }
    }

    /// Lower-case name used in the CLI, the admin API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
            NodeState::Gone => "gone",
        }
    }
}

/// One storage node as the map knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id, unique for the life of the cluster.
    pub id: NodeId,
    /// Failure domain, level 1: a data centre site (e.g. `site-a`).
    pub site: String,
    /// Failure domain, level 2: a machine within the site.
    pub host: String,
    /// gRPC address of the node's shard service, `host:port`.
    pub addr: String,
    /// Usable capacity in bytes; the placement weight.
    pub capacity_bytes: u64,
    /// Lifecycle state.
    pub state: NodeState,
}

/// All storage nodes, keyed by id. `epoch` grows by one with every change, so that a cached
/// copy can tell whether it is stale.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Incremented on every change of the map.
    pub epoch: u64,
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
}

impl ClusterMap {
    /// Adds a node or replaces the entry with the same id, bumping the epoch when anything
    /// changed. Returns whether it changed.
    pub fn upsert(&mut self, node: NodeInfo) -> bool {
        if self.nodes.get(&node.id) == Some(&node) {
            return false;
        }
        self.nodes.insert(node.id, node);
        self.epoch += 1;
        true
    }

    /// The node with this id, if the map has it.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Distinct sites that have at least one node accepting new shards.
    pub fn n_writable_sites(&self) -> usize {
        let mut sites: Vec<&str> = self
            .nodes
            .values()
            .filter(|n| n.state.accepts_new_shards())
            .map(|n| n.site.as_str())
            .collect();
        sites.sort_unstable();
        sites.dedup();
        sites.len()
    }
}
