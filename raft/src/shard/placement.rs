//! Pure placement decisions: which nodes get a new shard's replicas, which shards to merge.
//! Deterministic (ties broken by id), so every meta replica that runs them agrees; the
//! placement loop on the meta leader (not written yet) feeds them the cluster's state.

use std::collections::{BTreeMap, BTreeSet};

use crate::shard::desc::{ShardId, REPLICAS_MAX};
use crate::shard::error::ShardError;
use crate::shard::map::ShardMap;
use crate::NodeId;

/// Chooses `n` nodes for a new shard's replicas: the `n` nodes holding the fewest replicas,
/// ties broken by the lowest node id, returned in that order (fewest first). `nodes` lists
/// each candidate node once with the number of replicas it holds.
///
/// Refused if `n` is 0 or above [`REPLICAS_MAX`], if a node is listed twice or is node 0,
/// or if fewer than `n` nodes are listed. Zones are not considered yet.
pub fn choose_replicas(nodes: &[(NodeId, usize)], n: usize) -> Result<Vec<NodeId>, ShardError> {
    let refuse = |reason: String| ShardError::Placement { wanted: n, reason };
    if n == 0 || n > REPLICAS_MAX {
        return Err(refuse(format!("a shard has 1 to {REPLICAS_MAX} replicas")));
    }
    let mut seen = BTreeSet::new();
    for &(node, _) in nodes {
        if node == 0 {
            return Err(refuse("node id 0 is not a node".to_owned()));
        }
        if !seen.insert(node) {
            return Err(refuse(format!("node {node} is listed twice")));
        }
    }
    if nodes.len() < n {
        return Err(refuse(format!("only {} nodes are available", nodes.len())));
    }
    let mut ranked: Vec<(usize, NodeId)> = nodes.iter().map(|&(node, held)| (held, node)).collect();
    ranked.sort_unstable();
    let chosen: Vec<NodeId> = ranked.into_iter().take(n).map(|(_, node)| node).collect();
    assert_eq!(chosen.len(), n, "placement chose the wrong number of nodes");
    Ok(chosen)
}

/// Pairs of adjacent shards to merge, left to right in key order: `(left, right)` where
/// `left`'s range ends where `right`'s starts, both belong to one tenant, have the same
/// replica set (nodes and roles), both have a known size in `sizes`, and together hold
/// fewer than `threshold_bytes` bytes. No shard is in two pairs (a greedy scan: a pair is
/// taken as soon as it qualifies). Shards without a size are never merged.
pub fn choose_merge_candidates(map: &ShardMap, sizes: &BTreeMap<ShardId, u64>, threshold_bytes: u64) -> Vec<(ShardId, ShardId)> {
    let mut pairs = Vec::new();
    let mut shards = map.iter().peekable();
    while let Some(left) = shards.next() {
        let Some(right) = shards.peek() else { break };
        let (Some(&left_bytes), Some(&right_bytes)) = (sizes.get(&left.id), sizes.get(&right.id)) else {
            continue;
        };
        let small = left_bytes.saturating_add(right_bytes) < threshold_bytes;
        if small && left.tenant == right.tenant && left.end == right.start && left.same_replica_set(right) {
            pairs.push((left.id, right.id));
            shards.next();
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::desc::Replica;
    use kho_engine::keys::table_prefix;

    #[test]
    fn fewest_replicas_first_ties_by_id() {
        let nodes = [(4, 10), (2, 3), (9, 3), (1, 7), (3, 0)];
        assert_eq!(choose_replicas(&nodes, 3), Ok(vec![3, 2, 9]));
        assert_eq!(choose_replicas(&nodes, 1), Ok(vec![3]));
        assert_eq!(choose_replicas(&nodes, 5), Ok(vec![3, 2, 9, 1, 4]));
        for (nodes, n, reason) in [
            (&nodes[..], 6, "only 5 nodes"),
            (&nodes[..], 0, "1 to 7"),
            (&nodes[..], 8, "1 to 7"),
            (&[(1, 0), (1, 2)][..], 1, "listed twice"),
            (&[(0, 0)][..], 1, "node id 0"),
        ] {
            let err = choose_replicas(nodes, n).expect_err(reason).to_string();
            assert!(err.contains(reason), "{err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn merge_candidates_are_small_adjacent_alike_and_disjoint() {
        let voters = |nodes: &[u64]| nodes.iter().copied().map(Replica::voter).collect::<Vec<_>>();
        let mut map = ShardMap::new();
        map.create_tenant_shard(1, 5, voters(&[1, 2, 3])).expect("created");
        map.create_tenant_shard(2, 6, voters(&[1, 2, 3])).expect("created");
        // Tenant 5: shards 1, 10, 11, 12, 13 in key order.
        for (at, id) in [(4, 13), (3, 12), (2, 11), (1, 10)] {
            map.split(1, &table_prefix(5, at), id).expect("split");
        }
        map.set_replicas(13, voters(&[1, 2, 4])).expect("moved");
        let sizes = BTreeMap::from([(1, 10), (10, 10), (11, 10), (12, 10), (13, 10), (2, 10)]);
        // 1+10, then 11+12; 13 has other replicas; 13 and 2 are of different tenants.
        assert_eq!(choose_merge_candidates(&map, &sizes, 21), vec![(1, 10), (11, 12)]);
        assert_eq!(choose_merge_candidates(&map, &sizes, 20), vec![]);
        // An unknown size is never merged.
        let partial = BTreeMap::from([(1, 10), (11, 10), (12, 10)]);
        assert_eq!(choose_merge_candidates(&map, &partial, 100), vec![(11, 12)]);
        let huge = BTreeMap::from([(1, u64::MAX), (10, u64::MAX)]);
        assert_eq!(choose_merge_candidates(&map, &huge, u64::MAX), vec![]);
        assert_eq!(choose_merge_candidates(&ShardMap::new(), &sizes, 100), vec![]);
        // Every pair is a merge the map accepts.
        for (left, right) in choose_merge_candidates(&map, &sizes, 100) {
            map.merge(left, right).expect("merge");
        }
        assert_eq!(map.len(), 4);
    }
}
