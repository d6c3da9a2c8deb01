//! Kho's Raft layer: the openraft type configuration, the RocksDB log store and state
//! machine (over `kho-engine`), streamed snapshots, and a node that hosts many Raft groups.
//!
//! This crate knows nothing of tonic: it defines the [`Transport`] trait that the `rpc`
//! crate implements, and it encodes every Raft message it sends as opaque bytes.

pub mod access;
pub mod audit;
pub mod catalog;
pub mod cells;
pub mod codec;
pub mod command;
mod error;
pub mod fatal;
pub mod flushed_applied;
pub mod ingest;
pub mod key_jobs;
pub mod key_range;
pub mod keyring;
pub mod load;
pub mod local_ranges;
pub mod log_store;
pub mod merge_apply;
pub mod network;
pub mod node;
pub mod read_batch;
pub mod registry_hints;
pub mod shard;
pub mod shard_merge;
pub mod shard_size;
pub mod shard_split;
pub mod sleep;
pub mod snapshot;
pub mod snapshot_store;
pub mod split_apply;
pub mod state_machine;

pub use cells::WriteOp;
pub use command::{AppError, AppErrorKind, CellOp, CellWrite, Command, Response};
pub use error::{ProposeError, RaftNodeError};
pub use key_range::KeyRange;
pub use network::{MessageKind, Transport, TransportError};
pub use node::{Group, GroupStatus, MemberStatus, RaftNode, RaftSettings};
pub use state_machine::GroupKind;

/// A node's id: unique in the cluster, never reused, > 0.
pub type NodeId = u64;
/// A Raft group's id: the meta group's ([`META_GROUP`]) or a data shard's (its shard id).
pub type GroupId = u64;

/// The meta group: the catalog and the shard map, on every node (docs/SHARDING.md).
pub const META_GROUP: GroupId = shard::META_SHARD;

openraft::declare_raft_types!(
    /// Kho's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
