//! Splitting a data shard on request, on its leader (docs/SHARDING.md, "Split and merge"),
//! and reporting splits to the meta group.
//!
//! [`RaftNode::split_shard`] runs where the shard leads (a node that does not lead it hands
//! the request to the leader, [`MessageKind::SplitShard`]): it chooses the split point (the
//! one asked for, or the middle key of the shard), takes a new shard id from the meta group
//! ([`Command::AllocShardIds`]), proposes [`Command::Split`] in the shard's own log, opens
//! the new sibling here and lets it elect this node, then reports both descriptors to the
//! meta group ([`Command::RecordSplit`]). A lost report is made again by the node's driver
//! ([`split_report`], called by [`crate::key_jobs`]), so the shard map converges.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kho_engine::Cf;

use crate::command::{AppError, Command, Outcome};
use crate::error::ProposeError;
use crate::network::{self, MessageKind};
use crate::node::{Group, RaftNode, PROPOSE_HOPS_MAX, PROPOSE_TIMEOUT_MS};
use crate::shard::{choose_split_point, is_valid_split_point, printable_key, ShardDesc};
use crate::state_machine::SmState;
use crate::{GroupId, META_GROUP};

/// Longest wait for one split on the shard's leader (the middle key's scan, the id, the
/// split's commit and the report), milliseconds.
pub const SPLIT_TIMEOUT_MS: u64 = 30_000;
/// Most keys the choice of a middle key reads, count: a shard holding more is split at the
/// middle of its first `SPLIT_MIDDLE_SCAN_KEYS_MAX` keys.
pub const SPLIT_MIDDLE_SCAN_KEYS_MAX: usize = 4_000_000;
/// Pause before the next try of a request its target did not lead, times the tries so
/// far, milliseconds.
const HOP_PAUSE_MS: u64 = 100;
/// Longest wait of a split request for the shard's replica here to know a leader, ms.
const LEADER_WAIT_MS: u64 = 3_000;
/// Longest wait for the new sibling's group to open on the leader, milliseconds.
const SIBLING_OPEN_WAIT_MS: u64 = 5_000;

/// A split asked of a shard's leader by another node: the point (None: the middle).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SplitRequest {
    pub at: Option<Vec<u8>>,
}

/// A split's result as the leader answers it: both descriptors, or why the shard refused.
pub type SplitReply = Result<(ShardDesc, ShardDesc), AppError>;

impl RaftNode {
    /// Splits data shard `shard` at `at` (a split point of its range), or, without one, at
    /// the middle of its keys ([`choose_split_point`]), on the shard's leader wherever it is
    /// (at most [`PROPOSE_HOPS_MAX`] tries as the leader moves). Returns the shard's new
    /// descriptor (the left side, same id) and its new sibling's.
    pub async fn split_shard(&self, shard: GroupId, at: Option<Vec<u8>>) -> Result<(ShardDesc, ShardDesc), ProposeError> {
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
                        return self.split_here(&g, at).await;
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
            let payload = network::encode(&SplitRequest { at: at.clone() });
            let timeout = Duration::from_millis(SPLIT_TIMEOUT_MS);
            match self.transport().call(target.0, target.1, shard, MessageKind::SplitShard, payload, timeout).await {
                Ok(reply) => match network::decode_reply::<SplitReply>("split-shard", &reply) {
                    Ok(Ok(sides)) => return Ok(sides),
                    Ok(Err(refused)) => return Err(ProposeError::Rejected(refused)),
                    Err(e) => last = Some(ProposeError::Unavailable(format!("node {}: {e}", target.0))),
                },
                Err(e) => last = Some(ProposeError::Unavailable(e.to_string())),
            }
        }
        Err(last.unwrap_or_else(|| ProposeError::Unavailable(format!("shard {shard}: no leader reached"))))
    }

    /// Answers a [`MessageKind::SplitShard`] message: splits `shard` if this node leads it,
    /// else says so (the sender tries the leader it names next).
    pub(crate) async fn handle_split(&self, shard: GroupId, payload: &[u8]) -> Result<Bytes, String> {
        let req: SplitRequest = network::decode("split-shard", payload)?;
        let g = self.group(shard).filter(|g| g.is_leader()).ok_or_else(|| format!("node {} does not lead shard {shard}", self.id))?;
        let r = match tokio::time::timeout(Duration::from_millis(SPLIT_TIMEOUT_MS), self.split_here(&g, req.at)).await {
            Ok(Ok(sides)) => Ok(Ok(sides)),
            Ok(Err(ProposeError::Rejected(e))) => Ok(Err(e)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the split of shard {shard} was not done within {SPLIT_TIMEOUT_MS} ms")),
        };
        Ok(network::encode_reply::<SplitReply>(r))
    }

    /// The split on this node, the shard's leader.
    async fn split_here(&self, g: &Arc<Group>, at: Option<Vec<u8>>) -> Result<(ShardDesc, ShardDesc), ProposeError> {
        let shard = g.id;
        // Up to date with every split and replica change committed before the request.
        g.read_barrier().await?;
        let desc =
            g.state.shard().map(|s| s.desc).ok_or_else(|| ProposeError::Unavailable(format!("group {shard} is not a data shard")))?;
        let at = match at {
            Some(at) => {
                is_valid_split_point(&desc, &at).map_err(|reason| {
                    ProposeError::Rejected(AppError::invalid(format!(
                        "at: {} is no split point of shard {shard} [{}, {}): {reason}",
                        printable_key(&at),
                        printable_key(&desc.start),
                        printable_key(&desc.end)
                    )))
                })?;
                at
            }
            None => {
                let state = g.state.clone();
                let middle = tokio::task::spawn_blocking(move || middle_key(&state))
                    .await
                    .map_err(|e| ProposeError::Unavailable(e.to_string()))?
                    .map_err(|e| ProposeError::Unavailable(format!("reading shard {shard}'s keys: {e}")))?;
                middle.as_deref().and_then(|m| choose_split_point(&desc, m)).ok_or_else(|| {
                    ProposeError::Rejected(AppError::failed_precondition(format!(
                        "shard {shard} has no split point: it holds {} (a shard is split between rows); give one with `at`",
                        if middle.is_none() { "no key" } else { "a single row" }
                    )))
                })?
            }
        };
        let new_id = match self.propose_anywhere(META_GROUP, Command::AllocShardIds { count: 1 }).await?.outcome {
            Outcome::ShardIds { first, .. } => first,
            Outcome::Rejected(e) => return Err(ProposeError::Rejected(e)),
            other => return Err(ProposeError::Unavailable(format!("the meta group answered an id allocation with {other:?}"))),
        };
        let split = Command::Split { shard, epoch: desc.epoch.version, at, new_id };
        let (left, right) = match g.propose(split).await?.outcome {
            Outcome::Split { left, right } => (left, right),
            Outcome::Rejected(e) => return Err(ProposeError::Rejected(e)),
            other => return Err(ProposeError::Unavailable(format!("shard {shard} answered a split with {other:?}"))),
        };
        // The sibling's group opens here (the registry would too) and this node stands for
        // its leader first: the shard's leader stays the leader of both sides.
        if let Err(e) = self.open_sibling(new_id).await {
            tracing::info!(shard, child = new_id, error = %e, "the new shard has not opened here yet; its replicas elect a leader");
        }
        // The fail point `split-report-lost` drops this report, as a crash right here would:
        // the driver's report must bring the shard map up to date.
        #[cfg(feature = "failpoints")]
        let report_lost = (|| {
            fail::fail_point!("split-report-lost", |_| true);
            false
        })();
        #[cfg(not(feature = "failpoints"))]
        let report_lost = false;
        let report = Command::RecordSplit { pieces: vec![left.clone(), right.clone()] };
        if !report_lost {
            match tokio::time::timeout(Duration::from_millis(PROPOSE_TIMEOUT_MS), self.propose_anywhere(META_GROUP, report)).await {
                Ok(Ok(r)) if !matches!(r.outcome, Outcome::Rejected(_)) => {}
                // The driver reports it again ([`split_report`]).
                other => {
                    tracing::info!(shard, child = new_id, outcome = ?other.map(|r| r.map(|r| r.outcome)), "the split is not in the shard map yet")
                }
            }
        }
        tracing::info!(shard, child = new_id, left = %left, right = %right, "split a shard");
        Ok((left, right))
    }

    /// Opens the new sibling's group here, if its registry has not, and has this node run
    /// for its leader.
    async fn open_sibling(&self, id: GroupId) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SIBLING_OPEN_WAIT_MS);
        let g = loop {
            if let Some(g) = self.group(id) {
                break g;
            }
            self.ensure_shard_group(id).await.map_err(|e| e.to_string())?;
            if tokio::time::Instant::now() > deadline {
                return Err(format!("not open after {SIBLING_OPEN_WAIT_MS} ms"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if g.status_leader().is_none() {
            g.sleep.wake("a new shard's first election");
            g.raft.trigger().elect(true).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The report the shard map needs about local data shard `g` when the map is behind it (a
/// split it has not recorded: the map's `version` below the shard's): the descriptors that
/// now tile the map's range of the shard, as this node's replicas know them. None when the
/// map is up to date, does not know the shard (its parent's report comes first), or this
/// node lacks a replica of a piece.
pub(crate) fn split_report(node: &RaftNode, g: &Group) -> Option<Command> {
    let st = g.state.shard()?;
    let recorded = node.meta().state.catalog().shards.get(g.id).cloned()?;
    if recorded.epoch.version >= st.desc.epoch.version || recorded.start != st.desc.start {
        return None;
    }
    let mut pieces = vec![st.desc];
    while pieces.last().expect("one piece").end < recorded.end {
        if pieces.len() == crate::shard::map::SPLIT_REPORT_PIECES_MAX {
            return None;
        }
        let at = pieces.last().expect("one piece").end.clone();
        let next = node.local_group_starting_at(&at)?.state.shard()?.desc;
        pieces.push(next);
    }
    (pieces.last().expect("one piece").end == recorded.end).then_some(Command::RecordSplit { pieces })
}

/// The middle key of the group's range, at one point in time: the key halfway through its
/// first [`SPLIT_MIDDLE_SCAN_KEYS_MAX`] keys; None when it holds none. Reads every key of
/// the range twice (counting, then to the middle). Blocking.
fn middle_key(state: &SmState) -> std::io::Result<Option<Vec<u8>>> {
    let snap = {
        let _gate = state.blocking_read_gate();
        state.engine.snapshot()
    };
    let (start, end) = state.bounds();
    let mut count = 0usize;
    snap.for_each(Cf::Data, &start, Some(&end), |_, _| {
        count += 1;
        Ok(count < SPLIT_MIDDLE_SCAN_KEYS_MAX)
    })
    .map_err(std::io::Error::other)?;
    if count == 0 {
        return Ok(None);
    }
    let mut seen = 0usize;
    let mut middle = None;
    snap.for_each(Cf::Data, &start, Some(&end), |k, _| {
        if seen == count / 2 {
            middle = Some(k.to_vec());
            return Ok(false);
        }
        seen += 1;
        Ok(true)
    })
    .map_err(std::io::Error::other)?;
    Ok(middle)
}
