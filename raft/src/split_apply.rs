//! Applying a data shard's [`Command::Split`](crate::Command::Split): what one entry of the
//! parent's log writes, in the batch that records it as applied, on every replica alike
//! (docs/FORMATS.md, "A split's apply batch").
//!
//! The parent (the left side) keeps its id and becomes `[start, at)`; the child (the right
//! side) `[at, end)` gets the new id. Both get the parent's `conf_ver`, replicas and dropped
//! tables and `version + 1`. No data is copied: the child's keys are where they were, in
//! the node's one RocksDB. The child's Raft state starts as a **snapshot point at index 0**
//! ([`child_initial_log_id`]): applied log id and last purged log id both that log id, its
//! membership the parent's at that log id, no vote, no entry. openraft opens such a group
//! as initialized (it has a last log id) and its voters elect a leader as in any group; a
//! replica without this state (one that caught up with the parent by a snapshot taken after
//! the split) can only get the child's state from a snapshot of the child, since the
//! child's log holds nothing at or below index 0 (docs/SHARDING.md, "Split and merge").

use std::io;

use kho_engine::{Cf, Engine};

use crate::codec;
use crate::command::AppError;
use crate::log_store::meta_key;
use crate::shard::{is_valid_split_point, printable_key, Epoch, ShardDesc, ShardState};
use crate::{GroupId, KeyRange, LogId, StoredMembership};

/// The log id a child shard's Raft state starts at (applied, purged, membership's): term
/// 0, node 0, index 0, the same on every replica. No real entry has it: a group's first
/// entry is a membership entry of node `n` (term 0, node `n`, index 0) or, in a child, an
/// entry at index 1 or above.
pub fn child_initial_log_id() -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 0, node_id: 0 }, 0)
}

/// What a split applied: the parent's new state and range, and the child's descriptor.
#[derive(Debug)]
pub(crate) struct SplitApplied {
    pub left: ShardState,
    pub left_range: KeyRange,
    pub right: ShardDesc,
}

/// Checks a split of shard `group` (state `st`, membership `membership` as applied) and
/// writes it into `batch`: the parent's shard state and range, and, unless this node holds
/// the child's state already, the child's shard state, range and initial Raft state. A
/// refusal (`Err(AppError)`) writes nothing: a stale route (`WrongShard`), or an invalid
/// split (`InvalidArgument`: a point that is no boundary strictly inside the range, a bad
/// id; `FailedPrecondition`: a replica change in progress).
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute_split(
    engine: &Engine,
    group: GroupId,
    st: &ShardState,
    membership: &StoredMembership,
    shard: u64,
    epoch: u64,
    at: Vec<u8>,
    new_id: u64,
    batch: &mut kho_engine::WriteBatch,
) -> io::Result<Result<SplitApplied, AppError>> {
    let parent = &st.desc;
    if shard != group || epoch != parent.epoch.version {
        return Ok(Err(AppError::wrong_shard(format!(
            "a split was routed to shard {group} at version {epoch} with a stale route: the shard is now {parent}"
        ))));
    }
    if let Some(m) = &st.merging {
        return Ok(Err(AppError::wrong_shard(format!("shard {group} is merging into shard {}: it takes no split; retry", m.target))));
    }
    if new_id == 0 || new_id == group {
        return Ok(Err(AppError::invalid(format!("new_id: {new_id} cannot be the id of shard {group}'s new sibling"))));
    }
    if let Err(reason) = is_valid_split_point(parent, &at) {
        return Ok(Err(AppError::invalid(format!("at: {} is no split point of shard {group}: {reason}", printable_key(&at)))));
    }
    if membership.membership().get_joint_config().len() != 1 {
        return Ok(Err(AppError::failed_precondition(format!(
            "shard {group} is changing its replicas (a joint configuration); split it once that is done"
        ))));
    }
    let Some(version) = parent.epoch.version.checked_add(1) else {
        return Ok(Err(AppError::invalid(format!("shard {group}'s epoch version is exhausted"))));
    };
    let epoch = Epoch { conf_ver: parent.epoch.conf_ver, version };
    let left = ShardState {
        desc: ShardDesc { end: at.clone(), epoch, ..parent.clone() },
        dropped_tables: st.dropped_tables.clone(),
        merging: None,
    };
    let right = ShardState {
        desc: ShardDesc { id: new_id, start: at.clone(), epoch, ..parent.clone() },
        dropped_tables: st.dropped_tables.clone(),
        merging: None,
    };
    // A split point lies strictly inside the range: both sides are non-empty and meet at it.
    assert!(parent.start < at && at < parent.end, "split point outside shard {group}'s range");
    assert!(left.desc.validate().is_ok() && right.desc.validate().is_ok(), "the sides of shard {group}'s split are invalid");
    let left_range = KeyRange::new(left.desc.start.clone(), Some(left.desc.end.clone()));
    let right_range = KeyRange::new(right.desc.start.clone(), Some(right.desc.end.clone()));

    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &left.encode());
    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::RANGE), &codec::encode_key_range(&left_range));

    // The child's state may be here already: this replica of the parent is applying the
    // split late, after it got the child (from the shard map) and a snapshot of it. The
    // child has moved on since: its state is left as it is. A shard's start never changes,
    // so a child found here with another start is another shard: a bug.
    let existing = crate::state_machine::read_shard_state(engine, new_id)?;
    if let Some(child) = &existing {
        assert_eq!(child.desc.start, at, "shard {new_id} exists on this node with another start than the split of shard {group} gives it");
    } else {
        let initial = child_initial_log_id();
        let stored = StoredMembership::new(Some(initial), membership.membership().clone());
        batch.put(Cf::RaftMeta, &meta_key::key(new_id, meta_key::SHARD_STATE), &right.encode());
        batch.put(Cf::RaftMeta, &meta_key::key(new_id, meta_key::RANGE), &codec::encode_key_range(&right_range));
        batch.put(Cf::RaftMeta, &meta_key::key(new_id, meta_key::APPLIED), &codec::encode_opt_log_id(Some(&initial)));
        batch.put(Cf::RaftMeta, &meta_key::key(new_id, meta_key::MEMBERSHIP), &codec::encode_stored_membership(&stored));
        batch.put(Cf::RaftMeta, &meta_key::key(new_id, meta_key::LAST_PURGED), &codec::encode_opt_log_id(Some(&initial)));
    }
    tracing::info!(
        shard = group,
        child = new_id,
        at = %printable_key(&at),
        version,
        child_existed = existing.is_some(),
        "split applied"
    );
    Ok(Ok(SplitApplied { left, left_range, right: right.desc }))
}
