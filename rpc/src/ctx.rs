//! What every service handler shares: the node, the limits, the peer channels, and the
//! routing of a request to the Raft leader.

use std::sync::Arc;
use std::time::Duration;

use kho_proto::v1::admin_client::AdminClient;
use kho_proto::v1::data_client::DataClient;
use kho_raft::command::Outcome;
use kho_raft::{Command, Group, ProposeError, RaftNode};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::channels::Channels;
use crate::config::Limits;
use crate::pool::BlockingPool;
use crate::status;

/// Metadata key set on a request forwarded by a node to the leader. A forwarded request
/// that reaches a non-leader is answered UNAVAILABLE instead of being forwarded again (a
/// linearizable read is first tried there as a follower read).
pub const FORWARDED: &str = "kho-forwarded";

pub struct Ctx {
    pub node: Arc<RaftNode>,
    pub limits: Limits,
    pub channels: Arc<Channels>,
    pub proposal_timeout: Duration,
    /// Client reads that need the disk (`limits.read_threads`).
    pub reads: Arc<BlockingPool>,
    /// Scans (`limits.scan_threads`).
    pub scans: Arc<BlockingPool>,
}

/// Where a request is served.
pub enum Leader<T> {
    /// Served here (this node is the leader, or a follower that may serve the read).
    Here(T),
    /// Forward to the leader at this address.
    There(String),
}

pub fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

pub fn forwarded_request<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    req.set_timeout(timeout);
    req
}

impl Ctx {
    pub fn group(&self) -> Arc<Group> {
        self.node.data_group()
    }

    fn route<T>(&self, e: ProposeError, forwarded: bool) -> Result<Leader<T>, Status> {
        match e {
            ProposeError::ForwardToLeader { leader_id: Some(id), leader_addr: Some(addr) } if !forwarded && id != self.node.id => {
                Ok(Leader::There(addr))
            }
            ProposeError::ForwardToLeader { .. } if forwarded => {
                Err(Status::unavailable("the leader changed while the request was forwarded; retry"))
            }
            other => Err(status::propose_error(other)),
        }
    }

    /// Proposes a command on the leader, waiting at most `raft.proposal_timeout_ms`.
    pub async fn propose(&self, cmd: Command, forwarded: bool) -> Result<Leader<kho_raft::Response>, Status> {
        let g = self.group();
        match tokio::time::timeout(self.proposal_timeout, g.propose(cmd)).await {
            Err(_) => Err(Status::unavailable(format!(
                "not committed within {} ms (raft.proposal_timeout_ms): no quorum reachable; the write may or may not be applied",
                self.proposal_timeout.as_millis()
            ))),
            Ok(Ok(r)) => Ok(Leader::Here(r)),
            Ok(Err(e)) => self.route(e, forwarded),
        }
    }

    /// Waits until a linearizable read can be served from this node's state.
    pub async fn read_barrier(&self, forwarded: bool) -> Result<Leader<()>, Status> {
        let g = self.group();
        match tokio::time::timeout(self.proposal_timeout, g.read_barrier()).await {
            Err(_) => Err(Status::unavailable(format!(
                "leadership not confirmed within {} ms (raft.proposal_timeout_ms): no quorum reachable",
                self.proposal_timeout.as_millis()
            ))),
            Ok(Ok(())) => Ok(Leader::Here(())),
            Ok(Err(e)) => self.route(e, forwarded),
        }
    }

    /// `read_barrier` for a read that asked for `consistency` (the proto enum's number):
    /// a STALE read is served from this node's state at once, without the leader.
    pub async fn read_barrier_for(&self, consistency: i32, forwarded: bool) -> Result<Leader<()>, Status> {
        match kho_proto::v1::ReadConsistency::try_from(consistency) {
            Ok(kho_proto::v1::ReadConsistency::Linearizable) => self.read_barrier(forwarded).await,
            Ok(kho_proto::v1::ReadConsistency::Stale) => Ok(Leader::Here(())),
            Err(_) => Err(Status::invalid_argument(format!(
                "consistency: unknown value {consistency}; use 0 (READ_CONSISTENCY_LINEARIZABLE) or 1 (READ_CONSISTENCY_STALE)"
            ))),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.channels.get(addr).map_err(Status::unavailable)
    }

    pub fn data_client(&self, addr: &str) -> Result<DataClient<Channel>, Status> {
        let n = self.limits.grpc_message_bytes_max as usize;
        Ok(DataClient::new(self.channel(addr)?).max_decoding_message_size(n).max_encoding_message_size(n))
    }

    pub fn admin_client(&self, addr: &str) -> Result<AdminClient<Channel>, Status> {
        let n = self.limits.grpc_message_bytes_max as usize;
        Ok(AdminClient::new(self.channel(addr)?).max_decoding_message_size(n).max_encoding_message_size(n))
    }

    /// Timeout for a forwarded request: the leader's own wait plus a margin.
    pub fn forward_timeout(&self) -> Duration {
        self.proposal_timeout * 2
    }
}

/// What an applied write reported.
pub struct Written {
    pub revision: u64,
    pub existed: bool,
    pub cas: Option<kho_raft::command::CasOutcome>,
}

pub fn written(r: kho_raft::Response) -> Result<Written, Status> {
    match r.outcome {
        Outcome::Written { existed, cas } => Ok(Written { revision: r.revision, existed, cas }),
        Outcome::Done | Outcome::Job { .. } => Ok(Written { revision: r.revision, existed: false, cas: None }),
        Outcome::Rejected(e) => Err(status::app_error(e)),
    }
}

/// Forwards a unary request to the leader and returns its answer as ours.
#[macro_export]
macro_rules! forward {
    ($ctx:expr, $client:ident, $addr:expr, $method:ident, $msg:expr) => {{
        let mut client = $ctx.$client(&$addr)?;
        client.$method($crate::ctx::forwarded_request($msg, $ctx.forward_timeout())).await
    }};
}
