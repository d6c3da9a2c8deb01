use crate::{AppError, NodeId};

/// Why a node could not start or serve a Raft message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftNodeError {
    #[error("storage: {0}")]
    Storage(#[from] kho_engine::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft group {0} is not hosted on this node")]
    UnknownGroup(crate::GroupId),
    #[error("bad raft message: {0}")]
    BadMessage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The message is not the sender's to send (another node's vote).
    #[error("{0}")]
    Forbidden(String),
}

/// Why a proposal or a linearizable read did not complete here.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; the request should go to the leader (if known).
    #[error("not the leader; leader is {leader_id:?} at {leader_addr:?}")]
    ForwardToLeader { leader_id: Option<NodeId>, leader_addr: Option<String> },
    /// No quorum, or the group is shutting down: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request is valid but cannot be done (e.g. an impossible membership change).
    #[error("{0}")]
    Rejected(AppError),
}
