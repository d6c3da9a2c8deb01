//! `LocateShards`: where keys and row ranges are served, for clients that route requests
//! to shard leaders themselves (docs/API.md).
//!
//! Answered from this node's own knowledge, without asking another node: the descriptor of
//! its own replica whose range holds the key when it has one and it is not older than the
//! shard map's ([`freshest`]; the map learns of a split after the replicas apply it), else
//! the shard map's; the leader as this node's replica knows it. So the answer may be stale;
//! a request routed by a stale answer gets a typed stale-route error ([`crate::route`]).

use std::collections::BTreeMap;

use kho_engine::keys;
use kho_proto::v1 as pb;
use kho_raft::catalog::TableMeta;
use kho_raft::shard::{Boundary, ReplicaRole, ShardDesc};
use tonic::Status;

use crate::ctx::Ctx;
use crate::route::{RouteError, StaleRoute};

/// Most keys one `LocateShards` request may name, count.
pub const LOCATE_KEYS_MAX: usize = 1_000;
/// Most shards one `LocateShards` answer lists for a range, count (and the default of
/// `range.limit`).
pub const LOCATE_RANGE_SHARDS_MAX: usize = 1_000;

/// The newer of two descriptors of the shard holding a key: this node's replica's own
/// (`local`) and the shard map's (`map`). The local one unless the map's holds the key too
/// and the local one is behind it in either epoch counter (a replica that has not applied a
/// split or replica change the map already shows).
pub fn freshest(local: Option<ShardDesc>, map: Option<&ShardDesc>, key: &[u8]) -> Option<ShardDesc> {
    match (local, map) {
        (Some(l), Some(m)) if m.contains(key) && l.epoch.is_stale_against(&m.epoch) => Some(m.clone()),
        (Some(l), _) => Some(l),
        (None, m) => m.filter(|m| m.contains(key)).cloned(),
    }
}

/// The part of the range `[start, end)` inside table `table` of tenant `tenant`, as row keys
/// `[start_row, end_row)`: empty `start_row` when the range starts at or before the table's
/// first row, empty `end_row` when it ends at or past its last. A shard's ends are tenant,
/// table or row boundaries, so an end strictly inside the table is a row boundary.
pub fn row_bounds(start: &[u8], end: &[u8], tenant: u32, table: u32) -> (Vec<u8>, Vec<u8>) {
    let table_start = keys::table_prefix(tenant, table);
    let table_end = keys::prefix_end(&table_start).expect("a table prefix has an end");
    let row_at = |k: &[u8]| match Boundary::parse(k) {
        Some(Boundary::Row { tenant: t, table: tb, row }) if t == tenant && tb == table => row,
        _ => Vec::new(),
    };
    let start_row = if start <= table_start.as_slice() { Vec::new() } else { row_at(start) };
    let end_row = if end >= table_end.as_slice() { Vec::new() } else { row_at(end) };
    (start_row, end_row)
}

/// The descriptor of the shard holding storage key `key`, as this node knows it
/// ([`freshest`]); the typed `shard-not-found` when it knows none.
fn shard_of(ctx: &Ctx, key: &[u8]) -> Result<ShardDesc, Status> {
    let local = ctx.node.local_group_for(key).and_then(|g| g.state.shard()).map(|s| s.desc);
    let meta = ctx.meta();
    let cat = meta.state.catalog();
    freshest(local, cat.shards.lookup(key), key).ok_or_else(|| {
        RouteError::new(StaleRoute::ShardNotFound).status(format!(
            "no shard holds key {} in node {}'s shard map (its tenant is being created?); retry",
            kho_raft::shard::printable_key(key),
            ctx.node.id
        ))
    })
}

/// The record of one shard, with its leader as this node knows it.
fn location(ctx: &Ctx, meta: &TableMeta, d: &ShardDesc) -> pb::ShardLocation {
    let (start_row, end_row) = row_bounds(&d.start, &d.end, meta.tenant_id, meta.id);
    let leader = ctx.node.group(d.id).filter(|g| ctx.node.serves(g)).and_then(|g| g.status_leader());
    pb::ShardLocation {
        id: d.id,
        epoch_conf_ver: d.epoch.conf_ver,
        epoch_version: d.epoch.version,
        start: kho_raft::shard::printable_key(&d.start),
        end: kho_raft::shard::printable_key(&d.end),
        start_row,
        end_row,
        replicas: d
            .replicas
            .iter()
            .map(|r| pb::ShardReplica { node_id: r.node, address: ctx.client_addr_of(r.node), learner: r.role == ReplicaRole::Learner })
            .collect(),
        leader_id: leader.unwrap_or(0),
        leader_address: leader.map(|l| ctx.client_addr_of(l)).unwrap_or_default(),
    }
}

/// The answer for `stored_rows` (the requested keys as stored: hashed for a table with
/// hashed row keys) and the storage range `range` (`[start, end)` and the most shards to
/// list), the request already checked.
pub fn answer(
    ctx: &Ctx,
    meta: &TableMeta,
    stored_rows: &[Vec<u8>],
    range: Option<(Vec<u8>, Vec<u8>, usize)>,
) -> Result<pb::LocateShardsResponse, Status> {
    let mut shards: BTreeMap<u64, ShardDesc> = BTreeMap::new();
    let mut keep = |d: ShardDesc| -> u64 {
        let id = d.id;
        match shards.get(&id) {
            Some(had) if !had.epoch.is_stale_against(&d.epoch) => {}
            _ => {
                shards.insert(id, d);
            }
        }
        id
    };
    let mut key_shard_ids = Vec::with_capacity(stored_rows.len());
    for row in stored_rows {
        let key = keys::row_prefix(meta.tenant_id, meta.id, row);
        key_shard_ids.push(keep(shard_of(ctx, &key)?));
    }
    let mut range_shard_ids = Vec::new();
    let mut range_resume_row = Vec::new();
    if let Some((start, end, limit)) = range {
        let mut at = start;
        while at < end {
            if range_shard_ids.len() == limit {
                range_resume_row = match Boundary::parse(&at) {
                    Some(Boundary::Row { row, .. }) => row,
                    _ => {
                        return Err(crate::status::internal(format!(
                            "a shard ends at {}, inside a table but not at a row",
                            kho_raft::shard::printable_key(&at)
                        )))
                    }
                };
                break;
            }
            let d = shard_of(ctx, &at)?;
            if d.end <= at {
                return Err(crate::status::internal(format!("shard {} ends before the key it holds", d.id)));
            }
            at = d.end.clone();
            // A shard that ends at the table's first row boundary holds no row of it.
            if !matches!(Boundary::parse(&d.end), Some(Boundary::Row { ref row, .. }) if row.is_empty()) {
                range_shard_ids.push(keep(d));
            }
        }
    }
    let mut listed: Vec<&ShardDesc> = shards.values().collect();
    listed.sort_by(|a, b| a.start.cmp(&b.start));
    Ok(pb::LocateShardsResponse {
        shards: listed.into_iter().map(|d| location(ctx, meta, d)).collect(),
        key_shard_ids,
        range_shard_ids,
        range_resume_row,
        node_id: ctx.node.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_raft::shard::{Epoch, Replica};

    fn desc(id: u64, start: &[u8], end: &[u8], conf_ver: u64, version: u64) -> ShardDesc {
        ShardDesc {
            id,
            tenant: 5,
            start: start.to_vec(),
            end: end.to_vec(),
            replicas: vec![Replica::voter(1)],
            epoch: Epoch { conf_ver, version },
        }
    }

    #[test]
    fn a_row_range_inside_a_table_is_read_from_the_shard_boundaries() {
        let (t, tb) = (5, 3);
        let table = keys::table_prefix(t, tb);
        let next_table = keys::table_prefix(t, tb + 1);
        let row = |r: &[u8]| keys::row_prefix(t, tb, r);
        // The whole tenant: the whole table.
        assert_eq!(row_bounds(&5u32.to_be_bytes(), &6u32.to_be_bytes(), t, tb), (vec![], vec![]));
        assert_eq!(row_bounds(&table, &next_table, t, tb), (vec![], vec![]));
        assert_eq!(row_bounds(&table, &row(b"m"), t, tb), (vec![], b"m".to_vec()));
        assert_eq!(row_bounds(&row(b"m"), &row(b"t\x00z"), t, tb), (b"m".to_vec(), b"t\x00z".to_vec()));
        assert_eq!(row_bounds(&row(b"t"), &6u32.to_be_bytes(), t, tb), (b"t".to_vec(), vec![]));
        // A boundary of another table of the tenant lies outside this one.
        assert_eq!(row_bounds(&keys::row_prefix(t, 2, b"x"), &row(b"c"), t, tb), (vec![], b"c".to_vec()));
        assert_eq!(row_bounds(&row(b"c"), &keys::row_prefix(t, 4, b"x"), t, tb), (b"c".to_vec(), vec![]));
    }

    #[test]
    fn the_newer_descriptor_of_a_key_wins() {
        let key = keys::row_prefix(5, 3, b"k");
        let wide = desc(7, &5u32.to_be_bytes(), &6u32.to_be_bytes(), 1, 1);
        let left = desc(7, &5u32.to_be_bytes(), &keys::row_prefix(5, 3, b"m"), 1, 2);
        // A replica that has not applied the split the map shows: the map's.
        assert_eq!(freshest(Some(wide.clone()), Some(&left), &key), Some(left.clone()));
        // A split applied here and not reported yet: the replica's.
        assert_eq!(freshest(Some(left.clone()), Some(&wide), &key), Some(left.clone()));
        // A replica change applied here and not reported yet: the replica's.
        let moved = desc(7, &5u32.to_be_bytes(), &6u32.to_be_bytes(), 2, 1);
        assert_eq!(freshest(Some(moved.clone()), Some(&wide), &key), Some(moved));
        // No replica here: the map's, if it holds the key.
        assert_eq!(freshest(None, Some(&wide), &key), Some(wide.clone()));
        let right = desc(8, &keys::row_prefix(5, 3, b"m"), &6u32.to_be_bytes(), 1, 2);
        assert_eq!(freshest(None, Some(&right), &key), None);
        // A newer map entry that does not hold the key does not replace the replica's.
        assert_eq!(freshest(Some(left.clone()), Some(&right), &key), Some(left));
        assert_eq!(freshest(None, None, &key), None);
    }
}
