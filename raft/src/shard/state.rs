//! [`ShardState`]: what a data shard's replica knows of itself — its descriptor (range,
//! epoch, replicas) and the tables dropped in its range. It is part of the replicated
//! state: written at the shard's creation, changed only by applied entries of the shard's
//! own log (in the same batch as their data), stored in `raft_meta` (tag 0x13) and carried
//! by the shard's snapshots. docs/FORMATS.md, "Shard state".

use std::collections::BTreeSet;

use kho_engine::keys::TableId;

use crate::codec::{self, DecodeError, Reader, Writer};
use crate::shard::ShardDesc;

/// Format versions of the record (inside a `raft_meta` frame): 1 without a merge in
/// progress field, 2 with it. Version 2 is written; both are read.
pub const SHARD_STATE_FORMAT_V1: u8 = 1;
pub const SHARD_STATE_FORMAT_V2: u8 = 2;

/// A merge this shard is the right-hand side (the source) of: its `PrepareMerge` applied at
/// `prepare_index`; from then on the shard takes no write, split or re-encryption step,
/// until the left shard `target` (at epoch `target_epoch` then) takes its range
/// (`CommitMerge`) or the merge is rolled back (`RollbackMerge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeState {
    pub target: u64,
    pub target_epoch: crate::shard::Epoch,
    pub prepare_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    pub desc: ShardDesc,
    /// Tables of the shard's tenant whose cells were cleared from the shard after a
    /// `DropTable`: a write to one of them is refused at apply.
    pub dropped_tables: BTreeSet<TableId>,
    /// Set while the shard is the source of a merge (docs/SHARDING.md, "Split and merge").
    pub merging: Option<MergeState>,
}

impl ShardState {
    pub fn new(desc: ShardDesc) -> ShardState {
        ShardState { desc, dropped_tables: BTreeSet::new(), merging: None }
    }

    /// `version u8 (2) | desc_len u32 | desc record | dropped count u32 | table id u32 … |
    /// merging u8 (0 or 1) [| target u64 | target conf_ver u64 | target version u64 |
    /// prepare_index u64]`, framed. Version 1 ends after the table ids.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(SHARD_STATE_FORMAT_V2);
        w.bytes(&self.desc.encode());
        w.u32(u32::try_from(self.dropped_tables.len()).expect("fewer than 2^32 tables"));
        for t in &self.dropped_tables {
            w.u32(*t);
        }
        match &self.merging {
            None => w.u8(0),
            Some(m) => {
                w.u8(1);
                w.u64(m.target);
                w.u64(m.target_epoch.conf_ver);
                w.u64(m.target_epoch.version);
                w.u64(m.prepare_index);
            }
        }
        codec::frame(1, &w.buf)
    }

    pub fn decode(stored: &[u8]) -> Result<ShardState, DecodeError> {
        let body = codec::unframe("shard state", 1, stored)?;
        let mut r = Reader::new(body, "shard state");
        let v = r.u8()?;
        if v != SHARD_STATE_FORMAT_V1 && v != SHARD_STATE_FORMAT_V2 {
            return Err(DecodeError { what: "shard state", reason: format!("unknown format version {v}") });
        }
        let desc = ShardDesc::decode(r.bytes()?)?;
        let n = r.u32()?;
        let mut dropped_tables = BTreeSet::new();
        for _ in 0..n {
            dropped_tables.insert(r.u32()?);
        }
        let merging = match (v, if v == SHARD_STATE_FORMAT_V1 { 0 } else { r.u8()? }) {
            (_, 0) => None,
            (_, 1) => Some(MergeState {
                target: r.u64()?,
                target_epoch: crate::shard::Epoch { conf_ver: r.u64()?, version: r.u64()? },
                prepare_index: r.u64()?,
            }),
            (_, other) => return Err(DecodeError { what: "shard state", reason: format!("merging flag {other} is neither 0 nor 1") }),
        };
        r.finish()?;
        Ok(ShardState { desc, dropped_tables, merging })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Epoch, Replica};

    #[test]
    fn round_trip_and_corruption_is_refused() {
        let (start, end) = crate::shard::tenant_range(4).unwrap();
        let desc = ShardDesc {
            id: 9,
            tenant: 4,
            start,
            end,
            replicas: vec![Replica::voter(1), Replica::voter(2)],
            epoch: Epoch { conf_ver: 3, version: 2 },
        };
        let mut s = ShardState::new(desc);
        s.dropped_tables.extend([7, 11]);
        assert_eq!(ShardState::decode(&s.encode()).unwrap(), s);
        s.merging = Some(MergeState { target: 8, target_epoch: Epoch { conf_ver: 3, version: 5 }, prepare_index: 77 });
        let bytes = s.encode();
        assert_eq!(ShardState::decode(&bytes).unwrap(), s);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(ShardState::decode(&bad).is_err(), "flipped byte {i} was not detected");
        }
    }
}
