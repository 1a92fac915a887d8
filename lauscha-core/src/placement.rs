//! Placement: which storage node holds which shard of a stripe.
//!
//! Placement is a pure function of the stripe id, the policy and the cluster map, so any
//! role can compute it and two gateways agree. Nodes are ranked per stripe by weighted
//! rendezvous hashing (weight = capacity), which moves only the shards a new node wins when
//! one is added. Ranks are then taken greedily while keeping the failure domains balanced:
//! each next shard goes to the best-ranked node among the sites holding the fewest shards
//! of this stripe so far, and among those to the hosts holding the fewest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ClusterMap, NodeId, NodeInfo, StripeId};

/// The failure-domain level a policy spreads over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpreadLevel {
    /// Every shard on its own node (always required).
    Node,
    /// A stripe survives the loss of any one host.
    Host,
    /// A stripe survives the loss of any one site.
    Site,
}

impl SpreadLevel {
    /// Lower-case name used in config and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            SpreadLevel::Node => "node",
            SpreadLevel::Host => "host",
            SpreadLevel::Site => "site",
        }
    }
}

impl fmt::Display for SpreadLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a bucket's data is protected: k data shards, m parity shards, spread over a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlacementPolicy {
    /// k: data shards per stripe.
    pub n_data_shards: u8,
    /// m: parity shards per stripe; any m shards of a stripe may be lost.
    pub n_parity_shards: u8,
    /// The level whose single-domain loss every stripe must survive.
    pub spread: SpreadLevel,
}

impl PlacementPolicy {
    /// The default for a cluster of at least six nodes: 4+2, surviving any two nodes.
    pub const DEFAULT: PlacementPolicy = PlacementPolicy {
        n_data_shards: 4,
        n_parity_shards: 2,
        spread: SpreadLevel::Node,
    };

    /// k + m.
    pub fn n_shards(&self) -> usize {
        usize::from(self.n_data_shards) + usize::from(self.n_parity_shards)
    }

    /// Checks the numbers alone (the map is checked by [`place`]).
    pub fn validate(&self) -> Result<(), PlacementError> {
        if self.n_data_shards == 0 || self.n_shards() > crate::codec::MAX_SHARDS {
            return Err(PlacementError::InvalidPolicy(*self));
        }
        Ok(())
    }
}

impl fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{}/{}",
            self.n_data_shards, self.n_parity_shards, self.spread
        )
    }
}

/// Why a stripe could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer nodes accept shards than the stripe has shards.
    #[error(
        "policy {policy} needs {needed} nodes that accept shards, the cluster map has {available}"
    )]
    NotEnoughNodes {
        /// The policy asked for.
        policy: PlacementPolicy,
        /// k + m.
        needed: usize,
        /// Nodes in state up.
        available: usize,
    },
    /// The nodes exist, but not in enough failure domains to survive the loss of one.
    #[error(
        "policy {policy} puts {max_shards_in_one_domain} shards in one {level}, more than the {} parity shards can cover; add failure domains or pick a policy with more parity",
        policy.n_parity_shards
    )]
    CannotSpread {
        /// The policy asked for.
        policy: PlacementPolicy,
        /// Its spread level.
        level: SpreadLevel,
        /// The fullest domain's share of the stripe.
        max_shards_in_one_domain: usize,
    },
    /// k is zero or k + m exceeds what the codec supports.
    #[error("invalid placement policy {0}: need 1 <= k and k + m <= 255")]
    InvalidPolicy(PlacementPolicy),
}

/// The outcome of [`place`]: `nodes[shard_idx]` holds shard `shard_idx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// One node per shard, in shard order; all distinct.
    pub nodes: Vec<NodeId>,
}

/// Chooses k + m distinct nodes for `stripe_id`.
pub fn place(
    stripe_id: StripeId,
    policy: &PlacementPolicy,
    map: &ClusterMap,
) -> Result<Placement, PlacementError> {
    place_with(
        stripe_id,
        policy,
        map,
        &vec![None; policy.n_shards()],
        &BTreeSet::new(),
    )
}

/// Chooses nodes for the shards `fixed` leaves open (`None`); shards with `Some(node)` stay
/// where they are and count towards their domains' loads. Nodes in `exclude`, nodes that
/// do not accept shards and nodes already holding a shard of the stripe are never chosen.
/// The spread rule is checked over the whole stripe. Used by writers (nothing fixed), by
/// degraded writes (unreachable nodes excluded) and by repair (healthy shards fixed).
pub fn place_with(
    stripe_id: StripeId,
    policy: &PlacementPolicy,
    map: &ClusterMap,
    fixed: &[Option<NodeId>],
    exclude: &BTreeSet<NodeId>,
) -> Result<Placement, PlacementError> {
    place_inner(stripe_id, policy, map, fixed, exclude, &BTreeSet::new())
}

/// Like [`place`], but nodes in `avoid` (unreachable or full just now) get shards only
/// when there are not enough other nodes: a writer then stores what it can and leaves the
/// rest to repair, instead of failing while enough healthy nodes exist.
pub fn place_avoiding(
    stripe_id: StripeId,
    policy: &PlacementPolicy,
    map: &ClusterMap,
    avoid: &BTreeSet<NodeId>,
) -> Result<Placement, PlacementError> {
    place_inner(
        stripe_id,
        policy,
        map,
        &vec![None; policy.n_shards()],
        &BTreeSet::new(),
        avoid,
    )
}

fn place_inner(
    stripe_id: StripeId,
    policy: &PlacementPolicy,
    map: &ClusterMap,
    fixed: &[Option<NodeId>],
    exclude: &BTreeSet<NodeId>,
    avoid: &BTreeSet<NodeId>,
) -> Result<Placement, PlacementError> {
    policy.validate()?;
    assert_eq!(fixed.len(), policy.n_shards(), "one entry per shard");
    let kept: BTreeSet<NodeId> = fixed.iter().flatten().copied().collect();
    let needed = fixed.iter().filter(|f| f.is_none()).count();
    let mut ranked: Vec<(&NodeInfo, f64)> = map
        .nodes
        .values()
        .filter(|n| n.state.accepts_new_shards())
        .filter(|n| !exclude.contains(&n.id) && !kept.contains(&n.id))
        .map(|n| (n, rendezvous_score(stripe_id, n)))
        .collect();
    if ranked.len() < needed {
        return Err(PlacementError::NotEnoughNodes {
            policy: *policy,
            needed: policy.n_shards(),
            available: ranked.len() + kept.len(),
        });
    }
    // Best score first; ties (astronomically rare) broken by node id for determinism.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));

    let mut shards_per_site: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shards_per_host: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for node in kept.iter().filter_map(|id| map.node(*id)) {
        *shards_per_site.entry(node.site.as_str()).or_default() += 1;
        *shards_per_host
            .entry((node.site.as_str(), node.host.as_str()))
            .or_default() += 1;
    }
    let mut taken = vec![false; ranked.len()];
    let mut nodes: Vec<NodeId> = Vec::with_capacity(fixed.len());
    for slot in fixed {
        if let Some(node) = slot {
            nodes.push(*node);
            continue;
        }
        // The first node in rank order with the least-loaded (site, host) wins; avoided
        // nodes only when nothing else is left.
        let mut best: Option<(usize, (bool, usize, usize))> = None;
        for (idx, (node, _)) in ranked.iter().enumerate() {
            if taken[idx] {
                continue;
            }
            let load = (
                avoid.contains(&node.id),
                shards_per_site
                    .get(node.site.as_str())
                    .copied()
                    .unwrap_or(0),
                shards_per_host
                    .get(&(node.site.as_str(), node.host.as_str()))
                    .copied()
                    .unwrap_or(0),
            );
            if best.is_none_or(|(_, best_load)| load < best_load) {
                best = Some((idx, load));
            }
        }
        let (idx, _) = best.expect("ranked has at least `needed` nodes");
        taken[idx] = true;
        let node = ranked[idx].0;
        *shards_per_site.entry(node.site.as_str()).or_default() += 1;
        *shards_per_host
            .entry((node.site.as_str(), node.host.as_str()))
            .or_default() += 1;
        nodes.push(node.id);
    }

    let max_shards_in_one_domain = match policy.spread {
        SpreadLevel::Node => 1,
        SpreadLevel::Host => shards_per_host.values().copied().max().unwrap_or(0),
        SpreadLevel::Site => shards_per_site.values().copied().max().unwrap_or(0),
    };
    if policy.spread != SpreadLevel::Node
        && max_shards_in_one_domain > usize::from(policy.n_parity_shards)
    {
        return Err(PlacementError::CannotSpread {
            policy: *policy,
            level: policy.spread,
            max_shards_in_one_domain,
        });
    }
    debug_assert_eq!(nodes.len(), fixed.len());
    Ok(Placement { nodes })
}

/// One shard to move for balance or because its node is leaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardMove {
    /// Which shard of the stripe.
    pub shard_idx: usize,
    /// Where it is.
    pub from: NodeId,
    /// Where placement wants it.
    pub to: NodeId,
}

/// The moves that bring a stripe from `current` (one node per shard) to where placement
/// puts it with today's map. Shards already on a node placement chooses stay, so adding a
/// node moves only the shards it wins, and a draining or gone node loses all of its shards.
/// `Ok(vec![])` when nothing needs to move.
pub fn rebalance_moves(
    stripe_id: StripeId,
    policy: &PlacementPolicy,
    map: &ClusterMap,
    current: &[NodeId],
) -> Result<Vec<ShardMove>, PlacementError> {
    let desired = place(stripe_id, policy, map)?;
    let desired_set: BTreeSet<NodeId> = desired.nodes.iter().copied().collect();
    let kept: BTreeSet<NodeId> = current
        .iter()
        .copied()
        .filter(|n| desired_set.contains(n))
        .collect();
    let mut free = desired.nodes.iter().copied().filter(|n| !kept.contains(n));
    let mut moves = Vec::new();
    for (shard_idx, &from) in current.iter().enumerate() {
        if !desired_set.contains(&from) {
            let to = free
                .next()
                .expect("as many free desired nodes as shards to move");
            moves.push(ShardMove {
                shard_idx,
                from,
                to,
            });
        }
    }
    Ok(moves)
}

/// Weighted rendezvous score: `weight / -ln(u)` with `u` uniform in (0, 1) drawn from a hash
/// of (stripe, node). The node with the highest score wins; a node's chance of winning is
/// proportional to its weight. `libm` keeps the float math bit-identical on every machine.
fn rendezvous_score(stripe_id: StripeId, node: &NodeInfo) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"lauscha-placement-v1");
    hasher.update(&stripe_id.to_bytes());
    hasher.update(&node.id.0.to_be_bytes());
    let digest = hasher.finalize();
    let bits = u64::from_be_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    // 53 random bits, shifted off zero so that ln(u) < 0 is finite.
    let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let weight = node.capacity_bytes.max(1) as f64;
    weight / -libm::log(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeState;
    use proptest::prelude::*;

    fn map_of(layout: &[(usize, usize)]) -> ClusterMap {
        // layout[site] = (hosts, nodes per host)
        let mut map = ClusterMap::default();
        let mut next = 1;
        for (site_idx, &(n_hosts, n_nodes)) in layout.iter().enumerate() {
            for host_idx in 0..n_hosts {
                for _ in 0..n_nodes {
                    map.upsert(NodeInfo {
                        id: NodeId(next),
                        site: format!("site-{site_idx}"),
                        host: format!("host-{host_idx}"),
                        addr: format!("127.0.0.1:{}", 7000 + next),
                        capacity_bytes: 1 << 40,
                        state: NodeState::Up,
                    });
                    next += 1;
                }
            }
        }
        map
    }

    fn policy(k: u8, m: u8, spread: SpreadLevel) -> PlacementPolicy {
        PlacementPolicy {
            n_data_shards: k,
            n_parity_shards: m,
            spread,
        }
    }

    #[test]
    fn dev_layout_puts_three_shards_in_each_site() {
        let map = map_of(&[(3, 1), (3, 1)]);
        for s in 0..100u128 {
            let placement = place(StripeId(s), &PlacementPolicy::DEFAULT, &map).unwrap();
            let in_site_0 = placement
                .nodes
                .iter()
                .filter(|id| map.node(**id).unwrap().site == "site-0")
                .count();
            assert_eq!(in_site_0, 3);
        }
    }

    #[test]
    fn site_policy_is_refused_when_a_site_would_hold_more_than_m() {
        let map = map_of(&[(3, 1), (3, 1)]);
        let err = place(StripeId(1), &policy(4, 2, SpreadLevel::Site), &map).unwrap_err();
        assert!(matches!(
            err,
            PlacementError::CannotSpread {
                max_shards_in_one_domain: 3,
                ..
            }
        ));
        assert!(place(StripeId(1), &policy(2, 2, SpreadLevel::Site), &map).is_ok());
    }

    #[test]
    fn too_few_nodes_is_an_error_not_a_panic() {
        let mut map = map_of(&[(3, 1), (3, 1)]);
        for id in [1, 2] {
            let mut node = map.node(NodeId(id)).unwrap().clone();
            node.state = NodeState::Down;
            map.upsert(node);
        }
        let err = place(StripeId(9), &PlacementPolicy::DEFAULT, &map).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NotEnoughNodes {
                policy: PlacementPolicy::DEFAULT,
                needed: 6,
                available: 4
            }
        );
    }

    #[test]
    fn adding_a_node_moves_few_shards() {
        let before = map_of(&[(4, 1), (4, 1)]);
        let mut after = before.clone();
        after.upsert(NodeInfo {
            id: NodeId(100),
            site: "site-0".into(),
            host: "host-9".into(),
            addr: "127.0.0.1:1".into(),
            capacity_bytes: 1 << 40,
            state: NodeState::Up,
        });
        let n_stripes = 2000u128;
        let mut moved = 0usize;
        for s in 0..n_stripes {
            let a = place(StripeId(s), &PlacementPolicy::DEFAULT, &before).unwrap();
            let b = place(StripeId(s), &PlacementPolicy::DEFAULT, &after).unwrap();
            let b_set: std::collections::BTreeSet<_> = b.nodes.iter().collect();
            moved += a.nodes.iter().filter(|n| !b_set.contains(n)).count();
        }
        // The new node should end up with about 3/5 of site 0's shards share: each site
        // holds 3 shards of every stripe over 5 nodes, so it wins ~3/5 of stripes once.
        // Anything near the ideal is fine; a full reshuffle would move ~3 per stripe.
        let moved_per_stripe = moved as f64 / n_stripes as f64;
        assert!(
            moved_per_stripe < 0.75,
            "moved {moved_per_stripe} shards per stripe"
        );
    }

    #[test]
    fn repair_keeps_healthy_shards_and_avoids_excluded_nodes() {
        let map = map_of(&[(3, 1), (3, 1)]);
        let placement = place(StripeId(5), &PlacementPolicy::DEFAULT, &map).unwrap();
        let mut fixed: Vec<Option<NodeId>> = placement.nodes.iter().copied().map(Some).collect();
        let lost = fixed[2].take().unwrap();
        // Only the lost node could take it, and it is excluded: nowhere to go.
        let exclude = BTreeSet::from([lost]);
        assert!(matches!(
            place_with(
                StripeId(5),
                &PlacementPolicy::DEFAULT,
                &map,
                &fixed,
                &exclude
            ),
            Err(PlacementError::NotEnoughNodes { .. })
        ));
        // With a seventh node it goes there.
        let mut bigger = map.clone();
        bigger.upsert(NodeInfo {
            id: NodeId(7),
            site: "site-1".into(),
            host: "host-7".into(),
            addr: "x".into(),
            capacity_bytes: 1 << 40,
            state: NodeState::Up,
        });
        let repaired = place_with(
            StripeId(5),
            &PlacementPolicy::DEFAULT,
            &bigger,
            &fixed,
            &exclude,
        )
        .unwrap();
        for (i, node) in repaired.nodes.iter().enumerate() {
            if i == 2 {
                assert_eq!(*node, NodeId(7));
            } else {
                assert_eq!(Some(*node), fixed[i]);
            }
        }
    }

    #[test]
    fn avoided_nodes_are_used_only_when_needed() {
        let map = map_of(&[(4, 1), (3, 1)]);
        let avoid = BTreeSet::from([NodeId(1), NodeId(2)]);
        for s in 0..50u128 {
            let p = place_avoiding(StripeId(s), &PlacementPolicy::DEFAULT, &map, &avoid).unwrap();
            // 7 nodes, 2 avoided, 6 shards: exactly one avoided node is used.
            let n_avoided = p.nodes.iter().filter(|n| avoid.contains(n)).count();
            assert_eq!(n_avoided, 1, "stripe {s}: {:?}", p.nodes);
        }
    }

    #[test]
    fn a_draining_node_loses_every_shard() {
        let mut map = map_of(&[(4, 1), (4, 1)]);
        let mut node = map.node(NodeId(3)).unwrap().clone();
        let before: Vec<Vec<NodeId>> = (0..200u128)
            .map(|s| {
                place(StripeId(s), &PlacementPolicy::DEFAULT, &map)
                    .unwrap()
                    .nodes
            })
            .collect();
        node.state = NodeState::Draining;
        map.upsert(node);
        for (s, current) in before.iter().enumerate() {
            let moves = rebalance_moves(
                StripeId(s as u128),
                &PlacementPolicy::DEFAULT,
                &map,
                current,
            )
            .unwrap();
            let holds = current.contains(&NodeId(3));
            assert_eq!(moves.len(), usize::from(holds), "stripe {s}");
            for m in moves {
                assert_eq!(m.from, NodeId(3));
                assert!(!current.contains(&m.to));
            }
        }
    }

    fn arb_map() -> impl Strategy<Value = ClusterMap> {
        prop::collection::vec((1usize..4, 1usize..3), 1..4).prop_map(|layout| map_of(&layout))
    }

    proptest! {
        #[test]
        fn placement_is_distinct_deterministic_and_balanced(
            map in arb_map(),
            stripe in any::<u128>(),
            k in 1u8..6,
            m in 0u8..4,
        ) {
            let policy = policy(k, m, SpreadLevel::Node);
            match place(StripeId(stripe), &policy, &map) {
                Err(PlacementError::NotEnoughNodes { needed, available, .. }) => {
                    prop_assert!(available < needed);
                    prop_assert_eq!(available, map.nodes.len());
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
                Ok(placement) => {
                    prop_assert_eq!(placement.nodes.len(), policy.n_shards());
                    let mut distinct = placement.nodes.clone();
                    distinct.sort();
                    distinct.dedup();
                    prop_assert_eq!(distinct.len(), placement.nodes.len(), "two shards on one node");
                    let again = place(StripeId(stripe), &policy, &map).unwrap();
                    prop_assert_eq!(&again, &placement);
                    // Sites are balanced as far as their node counts allow: a site holds
                    // fewer than the fullest site's count minus one only when it is full.
                    let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
                    let mut nodes_per_site: BTreeMap<&str, usize> = BTreeMap::new();
                    for n in map.nodes.values() {
                        *nodes_per_site.entry(&n.site).or_default() += 1;
                        per_site.entry(&n.site).or_default();
                    }
                    for id in &placement.nodes {
                        *per_site.get_mut(map.node(*id).unwrap().site.as_str()).unwrap() += 1;
                    }
                    let max = per_site.values().copied().max().unwrap();
                    for (site, count) in &per_site {
                        prop_assert!(
                            *count + 1 >= max || *count == nodes_per_site[site],
                            "site {} holds {} while another holds {}", site, count, max
                        );
                    }
                }
            }
        }

        #[test]
        fn rebalance_after_adding_a_node_reaches_the_placement(
            map in arb_map(),
            stripe in any::<u128>(),
            k in 1u8..5,
            m in 0u8..3,
        ) {
            let policy = policy(k, m, SpreadLevel::Node);
            let Ok(before) = place(StripeId(stripe), &policy, &map) else { return Ok(()); };
            let mut after = map.clone();
            after.upsert(NodeInfo {
                id: NodeId(999),
                site: "site-0".into(),
                host: "new-host".into(),
                addr: "x".into(),
                capacity_bytes: 1 << 41,
                state: NodeState::Up,
            });
            let moves = rebalance_moves(StripeId(stripe), &policy, &after, &before.nodes).unwrap();
            let mut nodes = before.nodes.clone();
            for mv in &moves {
                prop_assert_eq!(nodes[mv.shard_idx], mv.from);
                nodes[mv.shard_idx] = mv.to;
            }
            let mut got = nodes.clone();
            got.sort();
            got.dedup();
            prop_assert_eq!(got.len(), nodes.len(), "two shards on one node after moves");
            let mut want = place(StripeId(stripe), &policy, &after).unwrap().nodes;
            want.sort();
            let mut have = nodes;
            have.sort();
            prop_assert_eq!(have, want);
            // At most the shards the new node wins move: one here.
            prop_assert!(moves.len() <= 1);
        }

        #[test]
        fn site_spread_never_exceeds_parity_per_site(
            map in arb_map(),
            stripe in any::<u128>(),
            k in 1u8..5,
            m in 1u8..4,
        ) {
            let policy = policy(k, m, SpreadLevel::Site);
            if let Ok(placement) = place(StripeId(stripe), &policy, &map) {
                let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
                for id in &placement.nodes {
                    *per_site.entry(map.node(*id).unwrap().site.as_str()).or_default() += 1;
                }
                prop_assert!(per_site.values().all(|c| *c <= usize::from(m)));
            }
        }
    }
}
