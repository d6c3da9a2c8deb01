//! Applying a merge's entries (docs/SHARDING.md, "Split and merge"; docs/FORMATS.md, "A
//! merge's apply batches"): `PrepareMerge` in the right-hand shard (the source), then
//! `CommitMerge` in the left-hand one (the target). No data moves: both shards have the same
//! replicas, so every replica of the target holds the source's keys in the node's one
//! RocksDB, as of the source's `PrepareMerge` (the source takes no write after it).
//!
//! The commit's apply waits until this node's replica of the source has applied the
//! prepare (the merge's driver checked that every replica had before it proposed the
//! commit, so the wait is short: a replica that restarted in between re-applies its log).
//! Then one batch extends the target's range and state and removes the source's state;
//! the node's registry retires the source's group (its Raft state and log stream).

use std::collections::BTreeSet;
use std::io;
use std::time::{Duration, Instant};

use kho_engine::{Cf, Engine};

use crate::codec;
use crate::command::AppError;
use crate::log_store::meta_key;
use crate::shard::{Epoch, ShardDesc, ShardState};
use crate::{GroupId, KeyRange, StoredMembership};

/// Longest wait of a commit's apply for this node's replica of the source to apply the
/// prepare, milliseconds. Past it the apply fails and the node stops applying the target
/// (an I/O error: restarting the node retries), rather than extend the target over a
/// range whose data it does not have.
pub const MERGE_SOURCE_WAIT_MS: u64 = 60_000;
/// How often that wait looks at the source's applied index, milliseconds.
const MERGE_SOURCE_POLL_MS: u64 = 5;

/// Checks a `PrepareMerge` of shard `group` (state `st`, membership as applied): Ok(None)
/// to prepare it now; Ok(Some(index)) when the same merge was prepared already (at that
/// index: a repeated proposal); Err when the shard cannot be a source now.
pub(crate) fn check_prepare(
    group: GroupId,
    st: &ShardState,
    membership: &StoredMembership,
    target: u64,
    target_epoch: Epoch,
    voters: &[u64],
) -> Result<Option<u64>, AppError> {
    if let Some(m) = &st.merging {
        if m.target == target && m.target_epoch == target_epoch {
            return Ok(Some(m.prepare_index));
        }
        return Err(AppError::failed_precondition(format!("shard {group} is merging into shard {} already", m.target)));
    }
    if target == group || target == 0 {
        return Err(AppError::invalid(format!("target: shard {target} cannot take shard {group}'s range")));
    }
    let m = membership.membership();
    if m.get_joint_config().len() != 1 {
        return Err(AppError::failed_precondition(format!(
            "shard {group} is changing its replicas (a joint configuration); merge it once that is done"
        )));
    }
    let ours: BTreeSet<u64> = m.voter_ids().collect();
    let learners = m.learner_ids().count();
    let theirs: BTreeSet<u64> = voters.iter().copied().collect();
    if learners > 0 || ours != theirs {
        return Err(AppError::failed_precondition(format!(
            "shard {group} has voters {ours:?} and {learners} learners, shard {target} voters {theirs:?}: \
             shards merge only on the same replicas"
        )));
    }
    Ok(None)
}

/// Checks and writes a `CommitMerge` of `source` into shard `group` (state `st`) into
/// `batch`, after waiting for this node's replica of the source to apply its prepare at
/// `prepare_index`. Returns the target's new state and range, or why the commit is refused
/// (writing nothing). An I/O error when the source's replica here does not reach the
/// prepare within [`MERGE_SOURCE_WAIT_MS`].
pub(crate) fn execute_commit(
    engine: &Engine,
    group: GroupId,
    st: &ShardState,
    source: &ShardDesc,
    prepare_index: u64,
    batch: &mut kho_engine::WriteBatch,
) -> io::Result<Result<(ShardState, KeyRange), AppError>> {
    let target = &st.desc;
    if st.merging.is_some() {
        return Ok(Err(AppError::failed_precondition(format!("shard {group} is itself merging into another shard"))));
    }
    if source.id == group || source.tenant != target.tenant || source.start != target.end {
        return Ok(Err(AppError::invalid(format!(
            "source: shard {} is not the right-hand neighbour of shard {group} ({target})",
            source.id
        ))));
    }
    if !source.same_replica_set(target) {
        return Ok(Err(AppError::failed_precondition(format!(
            "shard {} and shard {group} have different replicas: shards merge only on the same replicas",
            source.id
        ))));
    }
    let source_state = wait_for_source(engine, group, source.id, prepare_index)?;
    if source_state.desc.start != source.start || source_state.desc.end != source.end {
        // The prepare froze the source's range: a different one here is a bug.
        return Err(io::Error::other(format!(
            "shard {}'s replica here spans {} while the merge into shard {group} was prepared for {}",
            source.id, source_state.desc, source
        )));
    }
    let version = target.epoch.version.max(source.epoch.version).checked_add(1);
    let Some(version) = version else {
        return Ok(Err(AppError::invalid(format!("shard {group}'s epoch version is exhausted"))));
    };
    let epoch = Epoch { conf_ver: target.epoch.conf_ver.max(source.epoch.conf_ver), version };
    let merged = ShardState {
        desc: ShardDesc { end: source.end.clone(), epoch, ..target.clone() },
        // A table counts as cleared only where both sides cleared it; the node's driver
        // clears the rest of a dropped table over the whole merged range.
        dropped_tables: st.dropped_tables.intersection(&source_state.dropped_tables).copied().collect(),
        merging: None,
    };
    assert!(merged.desc.validate().is_ok(), "the merge of shard {} into {group} is invalid", source.id);
    assert!(merged.desc.start == target.start && merged.desc.end > target.end, "a merge extends the target to the right");
    let range = KeyRange::new(merged.desc.start.clone(), Some(merged.desc.end.clone()));
    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &merged.encode());
    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::RANGE), &codec::encode_key_range(&range));
    // The source's state goes with the same batch: a restart never opens it again. Its
    // remaining Raft state and log stream are removed when the registry retires its group.
    batch.delete(Cf::RaftMeta, &meta_key::key(source.id, meta_key::SHARD_STATE));
    batch.delete(Cf::RaftMeta, &meta_key::key(source.id, meta_key::RANGE));
    tracing::info!(shard = group, source = source.id, merged = %merged.desc, "merge applied");
    Ok(Ok((merged, range)))
}

/// Waits until this node's replica of `source` has a shard state and has applied
/// `prepare_index`; returns that state. Blocking (the apply runs on a blocking thread).
fn wait_for_source(engine: &Engine, group: GroupId, source: GroupId, prepare_index: u64) -> io::Result<ShardState> {
    let started = Instant::now();
    let mut logged = started;
    loop {
        let state = crate::state_machine::read_shard_state(engine, source)?;
        let applied = crate::state_machine::read_applied_state(engine, source)?.0.map_or(0, |l| l.index);
        if let Some(state) = state.filter(|_| applied >= prepare_index) {
            return Ok(state);
        }
        if started.elapsed() > Duration::from_millis(MERGE_SOURCE_WAIT_MS) {
            return Err(io::Error::other(format!(
                "shard {group} cannot apply the merge of shard {source}: this node's replica of shard {source} \
                 has applied index {applied}, not the prepare at {prepare_index}, after {MERGE_SOURCE_WAIT_MS} ms"
            )));
        }
        if logged.elapsed() > Duration::from_secs(5) {
            tracing::warn!(shard = group, source, applied, prepare_index, "a merge's commit waits for the source's replica here");
            logged = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(MERGE_SOURCE_POLL_MS));
    }
}
