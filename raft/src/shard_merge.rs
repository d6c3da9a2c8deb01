//! Merging a data shard with its right-hand neighbour, on the left shard's leader
//! (docs/SHARDING.md, "Split and merge").
//!
//! [`RaftNode::merge_shard`] runs where the left shard (the target) leads; a node that does
//! not lead it hands the request there ([`MessageKind::MergeShard`]). The leader:
//!
//! 1. takes the target's read barrier and finds its replica of the right-hand neighbour
//!    (the source): same tenant, same replicas, no learner;
//! 2. proposes [`Command::PrepareMerge`] in the source's log (on its leader, wherever it
//!    is): from that entry on, the source takes no write;
//! 3. waits until every replica of the source has applied the prepare
//!    ([`MessageKind::WaitApplied`]), so that each can apply the commit at once;
//! 4. proposes [`Command::CommitMerge`] in the target's log: every replica extends the
//!    target over the source's range and removes the source's state in one batch; the
//!    node's registry retires the source's group;
//! 5. reports the merged shard to the meta group ([`Command::RecordShards`]); the node's
//!    driver reports it again if that is lost.
//!
//! A merge stopped between 2 and 4 (a crash, a replica behind, the target changed) is
//! finished by the target leader's size checker ([`finish_prepared_merges`]): it commits
//! while the target's epoch is the one the prepare recorded, and rolls the source back
//! ([`Command::RollbackMerge`]) only once the target's epoch has moved on **and**, after
//! the target's read barrier on its leader, the source's state is still on that node: no
//! commit was applied (the leader applies every committed entry before the barrier ends,
//! and a commit's apply removes the source's state) and none can apply any more. A commit
//! refused because the same merge committed already (proposed twice) is therefore never
//! rolled back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::type_config::async_runtime::WatchReceiver;

use crate::command::{AppError, Command, Outcome};
use crate::error::ProposeError;
use crate::network::{self, MessageKind};
use crate::node::{Group, RaftNode, PROPOSE_HOPS_MAX, PROPOSE_TIMEOUT_MS};
use crate::shard::{MergeState, ShardDesc};
use crate::{GroupId, META_GROUP};

/// Longest wait for one merge on the target's leader (prepare, catch-up, commit and
/// report), milliseconds.
pub const MERGE_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for every replica of the source to apply its prepare, milliseconds.
pub const MERGE_CATCH_UP_MS: u64 = 10_000;
/// Longest wait one [`MessageKind::WaitApplied`] message asks for, milliseconds.
pub const WAIT_APPLIED_MAX_MS: u64 = 10_000;
/// Pause before the next try of a request its target did not lead, times the tries so
/// far, milliseconds.
const HOP_PAUSE_MS: u64 = 100;
/// Longest wait of a merge request for the target's replica here to know a leader, ms.
const LEADER_WAIT_MS: u64 = 3_000;

/// A merge's result as the target's leader answers it: the merged descriptor, or why the
/// shards refused.
pub type MergeReply = Result<ShardDesc, AppError>;

impl RaftNode {
    /// Merges data shard `shard` with its right-hand neighbour (the neighbour's range goes
    /// to `shard`, which keeps its id), on the shard's leader wherever it is (at most
    /// [`PROPOSE_HOPS_MAX`] tries as the leader moves). Returns the merged descriptor.
    pub async fn merge_shard(&self, shard: GroupId) -> Result<ShardDesc, ProposeError> {
        let mut last = None;
        for hop in 0..PROPOSE_HOPS_MAX {
            if hop > 0 {
                // The leader moved, or a new shard is still electing its first: a moment.
                tokio::time::sleep(Duration::from_millis(HOP_PAUSE_MS * hop as u64)).await;
            }
            let target = match self.group(shard).filter(|g| g.state.shard().is_some()) {
                Some(g) => {
                    g.wait_for_leader(Duration::from_millis(LEADER_WAIT_MS)).await;
                    if g.is_leader() {
                        return self.merge_here(&g).await;
                    }
                    match g.status_leader().filter(|l| *l != self.id).and_then(|l| g.member_addr(l).map(|a| (l, a))) {
                        Some(t) => t,
                        None => return Err(ProposeError::Unavailable(format!("shard {shard} has no leader yet"))),
                    }
                }
                None => {
                    let desc = self.meta().state.catalog().shards.get(shard).cloned();
                    let Some(desc) = desc else {
                        return Err(ProposeError::Rejected(AppError::not_found(format!("shard {shard} does not exist"))));
                    };
                    let replica = desc.voters().find_map(|n| self.node_addr(n).map(|a| (n, a)));
                    match replica {
                        Some(t) => t,
                        None => return Err(ProposeError::Unavailable(format!("no replica of shard {shard} is known"))),
                    }
                }
            };
            let timeout = Duration::from_millis(MERGE_TIMEOUT_MS);
            match self.transport().call(target.0, target.1, shard, MessageKind::MergeShard, Bytes::new(), timeout).await {
                Ok(reply) => match network::decode_reply::<MergeReply>("merge-shard", &reply) {
                    Ok(Ok(desc)) => return Ok(desc),
                    Ok(Err(refused)) => return Err(ProposeError::Rejected(refused)),
                    Err(e) => last = Some(ProposeError::Unavailable(format!("node {}: {e}", target.0))),
                },
                Err(e) => last = Some(ProposeError::Unavailable(e.to_string())),
            }
        }
        Err(last.unwrap_or_else(|| ProposeError::Unavailable(format!("shard {shard}: no leader reached"))))
    }

    /// Answers a [`MessageKind::MergeShard`] message: merges `shard` with its right-hand
    /// neighbour if this node leads it, else says so.
    pub(crate) async fn handle_merge(&self, shard: GroupId, payload: &[u8]) -> Result<Bytes, String> {
        if !payload.is_empty() {
            return Err(format!("merge-shard: {} payload bytes, expected none", payload.len()));
        }
        let g = self.group(shard).filter(|g| g.is_leader()).ok_or_else(|| format!("node {} does not lead shard {shard}", self.id))?;
        let r = match tokio::time::timeout(Duration::from_millis(MERGE_TIMEOUT_MS), self.merge_here(&g)).await {
            Ok(Ok(desc)) => Ok(Ok(desc)),
            Ok(Err(ProposeError::Rejected(e))) => Ok(Err(e)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the merge of shard {shard} was not done within {MERGE_TIMEOUT_MS} ms")),
        };
        Ok(network::encode_reply::<MergeReply>(r))
    }

    /// The merge on this node, the target's leader.
    pub(crate) async fn merge_here(&self, g: &Arc<Group>) -> Result<ShardDesc, ProposeError> {
        let shard = g.id;
        g.read_barrier().await?;
        let st = g.state.shard().ok_or_else(|| ProposeError::Unavailable(format!("group {shard} is not a data shard")))?;
        if st.merging.is_some() {
            return Err(ProposeError::Rejected(AppError::failed_precondition(format!(
                "shard {shard} is itself merging into its left neighbour"
            ))));
        }
        let target = st.desc;
        let (_, tenant_end) = crate::shard::tenant_range(target.tenant).expect("a valid tenant");
        if target.end == tenant_end {
            return Err(ProposeError::Rejected(AppError::failed_precondition(format!(
                "shard {shard} is the last shard of its tenant: there is no shard to its right to merge with"
            ))));
        }
        let source = self.local_group_starting_at(&target.end).and_then(|r| r.state.shard()).ok_or_else(|| {
            ProposeError::Unavailable(format!("node {} holds no replica of the shard to the right of shard {shard} yet; retry", self.id))
        })?;
        let src = source.desc.clone();
        if src.tenant != target.tenant
            || !src.same_replica_set(&target)
            || target.replicas.iter().any(|r| r.role != crate::shard::desc::ReplicaRole::Voter)
        {
            return Err(ProposeError::Rejected(AppError::failed_precondition(format!(
                "shard {shard} ({target}) and shard {} ({src}) do not have the same voters and no learner: \
                 shards merge only on the same replicas (move a replica first)",
                src.id
            ))));
        }
        let index = match &source.merging {
            Some(MergeState { target: t, target_epoch, prepare_index }) if *t == shard && *target_epoch == target.epoch => *prepare_index,
            Some(m) => {
                return Err(ProposeError::Rejected(AppError::failed_precondition(format!(
                    "shard {} is merging into shard {} already",
                    src.id, m.target
                ))))
            }
            None => {
                let prepare = Command::PrepareMerge {
                    shard: src.id,
                    epoch: src.epoch.version,
                    target: shard,
                    target_epoch: target.epoch,
                    voters: target.voters().collect(),
                };
                match self.propose_anywhere(src.id, prepare).await?.outcome {
                    Outcome::MergePrepared { index } => index,
                    Outcome::Rejected(e) => return Err(ProposeError::Rejected(e)),
                    other => return Err(ProposeError::Unavailable(format!("shard {} answered a prepare with {other:?}", src.id))),
                }
            }
        };
        self.commit_prepared(g, &target, &src, index).await
    }

    /// Steps 3 to 5 of a merge prepared at `index` (see the module doc); rolls the source
    /// back when the target refuses the commit as stale (its epoch moved on: no commit can
    /// apply any more).
    async fn commit_prepared(&self, g: &Arc<Group>, target: &ShardDesc, src: &ShardDesc, index: u64) -> Result<ShardDesc, ProposeError> {
        self.wait_applied_everywhere(src, index).await?;
        let commit = Command::CommitMerge { shard: target.id, epoch: target.epoch, source: src.clone(), prepare_index: index };
        let merged = match g.propose(commit).await?.outcome {
            Outcome::Merged { desc } => desc,
            Outcome::Rejected(e) => {
                if e.kind == crate::command::AppErrorKind::WrongShard {
                    // The target moved on: by this merge's own commit (proposed twice, by
                    // the request and the size checker), or by another change.
                    if let Some(merged) = self.rollback_if_uncommitted(g, src.id, target.epoch).await? {
                        return Ok(merged);
                    }
                }
                return Err(ProposeError::Rejected(e));
            }
            other => return Err(ProposeError::Unavailable(format!("shard {} answered a merge with {other:?}", target.id))),
        };
        let report = Command::RecordShards { pieces: vec![merged.clone()] };
        match tokio::time::timeout(Duration::from_millis(PROPOSE_TIMEOUT_MS), self.propose_anywhere(META_GROUP, report)).await {
            Ok(Ok(r)) if !matches!(r.outcome, Outcome::Rejected(_)) => {}
            other => {
                tracing::info!(shard = target.id, outcome = ?other.map(|r| r.map(|r| r.outcome)), "the merge is not in the shard map yet")
            }
        }
        tracing::info!(shard = target.id, source = src.id, merged = %merged, "merged a shard");
        Ok(merged)
    }

    /// Rolls back the prepared merge of `source` into `g` (this node leads `g`) when no
    /// `CommitMerge` of it was applied nor can be: after `g`'s read barrier this node has
    /// applied every committed entry of `g`, so if the source's state is still here no
    /// commit was committed, and `g`'s epoch differing from `target_epoch` means none can
    /// ever apply (epochs only grow). Returns the target's descriptor when the commit was
    /// applied (the source's state is gone here): nothing to roll back.
    async fn rollback_if_uncommitted(
        &self,
        g: &Arc<Group>,
        source: GroupId,
        target_epoch: crate::shard::Epoch,
    ) -> Result<Option<ShardDesc>, ProposeError> {
        g.read_barrier().await?;
        let now = g.state.shard().map(|s| s.desc).ok_or_else(|| ProposeError::Unavailable(format!("group {} has no shard state", g.id)))?;
        let engine = g.state.engine.clone();
        let source_here = tokio::task::spawn_blocking(move || crate::state_machine::read_shard_state(&engine, source))
            .await
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        if source_here.is_none() {
            return Ok(Some(now)); // the commit applied here: merged
        }
        if now.epoch == target_epoch {
            return Ok(None); // a commit may still apply: no rollback
        }
        let rollback = Command::RollbackMerge { shard: source, target_epoch };
        if let Err(e) = self.propose_anywhere(source, rollback).await {
            tracing::info!(source, error = %e, "rolling back a merge: not done yet (the size checker retries)");
        }
        Ok(None)
    }

    /// Waits until every voter of `src` has applied `index` (at most [`MERGE_CATCH_UP_MS`]).
    async fn wait_applied_everywhere(&self, src: &ShardDesc, index: u64) -> Result<(), ProposeError> {
        let wait = Duration::from_millis(MERGE_CATCH_UP_MS);
        for n in src.voters() {
            let applied = if n == self.id {
                match self.group(src.id) {
                    Some(r) => wait_applied(&r, index, wait).await,
                    None => 0,
                }
            } else {
                let Some(addr) = self.node_addr(n) else {
                    return Err(ProposeError::Unavailable(format!("no address known for node {n}, a replica of shard {}", src.id)));
                };
                let payload = network::encode(&(index, MERGE_CATCH_UP_MS));
                let reply = self.transport().call(n, addr, src.id, MessageKind::WaitApplied, payload, wait + Duration::from_secs(1)).await;
                match reply.map_err(|e| e.to_string()).and_then(|b| network::decode_reply::<u64>("wait-applied", &b)) {
                    Ok(applied) => applied,
                    Err(e) => return Err(ProposeError::Unavailable(format!("node {n}'s replica of shard {}: {e}", src.id))),
                }
            };
            if applied < index {
                return Err(ProposeError::Unavailable(format!(
                    "node {n}'s replica of shard {} has applied {applied}, not yet the merge's prepare at {index}; \
                     the merge is finished later",
                    src.id
                )));
            }
        }
        Ok(())
    }
}

/// Waits up to `wait` for group `g` here to apply `index`; returns its applied index then.
pub(crate) async fn wait_applied(g: &Group, index: u64, wait: Duration) -> u64 {
    let applied = || g.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
    let deadline = tokio::time::Instant::now() + wait;
    let mut metrics = g.raft.metrics();
    while applied() < index {
        if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
            break;
        }
    }
    applied()
}

/// For every data shard this node leads whose right-hand neighbour here is prepared to
/// merge into it: commits the merge while this shard's epoch is the one the prepare
/// recorded, else rolls the neighbour back (no commit can apply any more). Called by the
/// size checker ([`crate::shard_size`]) for pairs it saw prepared in its previous round
/// too, so that a merge in progress is left to finish.
pub(crate) async fn finish_prepared_merges(node: &RaftNode, seen_before: &[(GroupId, GroupId)]) -> Vec<(GroupId, GroupId)> {
    let mut seen = Vec::new();
    for id in node.group_ids() {
        let Some(g) = node.group(id).filter(|g| g.state.kind == crate::GroupKind::Data && g.is_leader()) else { continue };
        let Some(target) = g.state.shard().map(|s| s.desc) else { continue };
        let Some(src) = node.local_group_starting_at(&target.end).and_then(|r| r.state.shard()) else { continue };
        let Some(m) = src.merging.clone().filter(|m| m.target == id) else { continue };
        seen.push((id, src.desc.id));
        if !seen_before.contains(&(id, src.desc.id)) {
            continue;
        }
        let step = async {
            g.read_barrier().await?;
            let now = g.state.shard().map(|s| s.desc).ok_or_else(|| ProposeError::Unavailable("no shard state".into()))?;
            if now.end != src.desc.start {
                return Ok(()); // merged already: the source's replicas retire
            }
            if now.epoch == m.target_epoch {
                node.commit_prepared(&g, &now, &src.desc, m.prepare_index).await.map(|_| ())
            } else {
                node.rollback_if_uncommitted(&g, src.desc.id, m.target_epoch).await.map(|_| ())
            }
        };
        match tokio::time::timeout(Duration::from_millis(MERGE_TIMEOUT_MS), step).await {
            Ok(Ok(())) => tracing::info!(shard = id, source = src.desc.id, "finished a merge left prepared"),
            Ok(Err(e)) => tracing::info!(shard = id, source = src.desc.id, error = %e, "a merge left prepared is not finished yet"),
            Err(_) => tracing::info!(shard = id, source = src.desc.id, "a merge left prepared is not finished yet (timeout)"),
        }
    }
    seen
}
