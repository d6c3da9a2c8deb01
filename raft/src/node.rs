//! A node: one RocksDB engine, one WAL syncer, and a map of Raft groups.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kho_engine::crypto::MasterKey;
use kho_engine::{Engine, EngineOptions};
use openraft::errors::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};

use crate::command::{AppError, Command, Response};
use crate::error::{ProposeError, RaftNodeError};
use crate::log_store::{LogStore, LogSyncer};
use crate::network::{self, MessageKind, NetworkFactory, Transport};
use crate::read_batch::ReadBatcher;
use crate::snapshot::{self, SnapshotData, SnapshotFile};
use crate::state_machine::{SmState, StateMachine};
use crate::{GroupId, NodeId, Raft, TypeConfig, DATA_GROUP};

/// Raft settings of a node (the `[raft]` section of the config; units in the names).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub logs_to_keep_after_snapshot: u64,
    pub snapshot_chunk_bytes: u64,
    pub append_entries_max: u64,
    pub rpc_timeout_ms: u64,
    pub snapshot_timeout_ms: u64,
    /// Serve linearizable reads on followers (a read index from the leader, then the local
    /// apply wait) instead of forwarding them to the leader.
    pub follower_reads: bool,
}

/// Largest snapshot stream a node accepts from a peer, bytes.
pub const SNAPSHOT_RECEIVE_BYTES_MAX: u64 = 256 << 30;

pub struct RaftNode {
    pub id: NodeId,
    pub addr: String,
    engine: Engine,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// The background re-encryption driver ([`crate::key_jobs`]), stopped at shutdown.
    key_jobs: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One Raft group hosted on this node.
pub struct Group {
    pub id: GroupId,
    /// This node's id.
    node_id: NodeId,
    pub raft: Raft,
    pub state: Arc<SmState>,
    log: LogStore,
    /// Linearizable read barriers while this node leads, shared by concurrent readers.
    reads: Arc<ReadBatcher>,
    /// Follower read rounds (`raft.follower_reads`), shared the same way; None when off.
    follower_reads: Option<Arc<ReadBatcher>>,
    /// Counters of [`GroupStatus::follower_reads`] and [`GroupStatus::follower_reads_forwarded`].
    follower_reads_served: AtomicU64,
    follower_reads_forwarded: AtomicU64,
    /// Where received snapshot streams are written (`snapshots/<group>/`).
    snapshot_dir: PathBuf,
    /// The snapshot policy's task ([`snapshot_policy`]), stopped at shutdown.
    snapshot_policy: tokio::task::JoinHandle<()>,
}

/// How often a group's snapshot policy looks at its log, milliseconds.
const SNAPSHOT_POLICY_POLL_MS: u64 = 200;
/// How long the policy waits for a triggered snapshot before it may trigger again, ms.
const SNAPSHOT_BUILD_WAIT_MS: u64 = 60_000;

/// Builds a snapshot once `logs_since_last` entries were applied since the last one. A
/// snapshot is a point-in-time view of the group (and a flush shared by every group), so
/// its cost does not grow with the data set; only sending one to a follower reads the
/// whole group. Each build lets openraft purge the log up to it, less
/// `logs_to_keep_after_snapshot`.
fn snapshot_policy(raft: Raft, logs_since_last: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut triggered: Option<(Option<u64>, std::time::Instant)> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(SNAPSHOT_POLICY_POLL_MS)).await;
            let m = raft.metrics().borrow_watched().clone();
            if m.state == ServerState::Shutdown {
                return;
            }
            let snap = m.snapshot.map(|l| l.index);
            if let Some((at, when)) = triggered {
                if snap == at && when.elapsed() < Duration::from_millis(SNAPSHOT_BUILD_WAIT_MS) {
                    continue; // still building
                }
                triggered = None;
            }
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            let since = applied.saturating_sub(snap.unwrap_or(0));
            if since >= logs_since_last {
                if let Err(e) = raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "could not trigger a snapshot");
                    return;
                }
                triggered = Some((snap, std::time::Instant::now()));
            }
        }
    })
}

/// A member as the local node sees it.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// A group's state on this node.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub node_id: NodeId,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub last_log_index: u64,
    pub first_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
    /// Linearizable reads this node served as a follower since it started (follower reads).
    pub follower_reads: u64,
    /// Linearizable reads this node, as a follower, handed to the leader instead since it
    /// started: it was too far behind, or the leader it asked had changed.
    pub follower_reads_forwarded: u64,
}

impl RaftNode {
    /// Opens the node's storage under `data_dir` and starts its groups.
    pub async fn open(
        id: NodeId,
        addr: String,
        data_dir: &Path,
        settings: &RaftSettings,
        transport: Arc<dyn Transport>,
        master: Option<Arc<MasterKey>>,
    ) -> Result<Arc<RaftNode>, RaftNodeError> {
        std::fs::create_dir_all(data_dir)?;
        let engine = Engine::open(&data_dir.join("db"), &EngineOptions::default())?;
        let shared_log = crate::log_store::open_shared_log(&engine, &data_dir.join(crate::log_store::SHARED_LOG_DIR))?;
        crate::log_store::migrate_group_segment_logs(&engine, &data_dir.join(crate::log_store::LEGACY_GROUP_LOGS_DIR), &shared_log)?;
        let syncer = LogSyncer::start();
        let node = Arc::new(RaftNode {
            id,
            addr,
            engine: engine.clone(),
            groups: RwLock::new(BTreeMap::new()),
            key_jobs: std::sync::Mutex::new(None),
        });
        let snapshot_dir = data_dir.join("snapshots").join(DATA_GROUP.to_string());
        let group = Group::open(id, DATA_GROUP, engine, syncer, shared_log, &snapshot_dir, settings, transport, master).await?;
        node.groups.write().expect("groups lock").insert(DATA_GROUP, Arc::new(group));
        let driver = crate::key_jobs::spawn(Arc::downgrade(&node));
        *node.key_jobs.lock().expect("key jobs lock") = Some(driver);
        Ok(node)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The ids of the groups this node holds.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.read().expect("groups lock").keys().copied().collect()
    }

    pub fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().expect("groups lock").get(&id).cloned()
    }

    pub fn data_group(&self) -> Arc<Group> {
        self.group(DATA_GROUP).expect("the data group is opened with the node")
    }

    fn group_or_err(&self, id: GroupId) -> Result<Arc<Group>, RaftNodeError> {
        self.group(id).ok_or(RaftNodeError::UnknownGroup(id))
    }

    /// Initializes a new cluster with `members` if this node has no Raft state yet.
    /// Returns whether it did. Every member of a new cluster may call it with the same list.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<bool, RaftNodeError> {
        let g = self.data_group();
        if g.raft.is_initialized().await.map_err(|e| RaftNodeError::Raft(e.to_string()))? {
            return Ok(false);
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode { addr: a.clone() })).collect();
        match g.raft.initialize(nodes).await {
            Ok(()) => Ok(true),
            // Another member's initialization reached us first: fine.
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "not initializing: the cluster already has state");
                Ok(false)
            }
            Err(e) => Err(RaftNodeError::Raft(e.to_string())),
        }
    }

    /// Serves one request/response Raft message from a peer.
    pub async fn handle_call(&self, group: GroupId, kind: MessageKind, payload: &[u8]) -> Result<Bytes, RaftNodeError> {
        let g = self.group_or_err(group)?;
        Ok(match kind {
            MessageKind::AppendEntries => {
                let req = network::decode("append-entries", payload).map_err(RaftNodeError::BadMessage)?;
                network::encode_reply(g.raft.append_entries(req).await.map_err(|e| e.to_string()))
            }
            MessageKind::Vote => {
                let req = network::decode("vote", payload).map_err(RaftNodeError::BadMessage)?;
                network::encode_reply(g.raft.vote(req).await.map_err(|e| e.to_string()))
            }
            MessageKind::ReadIndex => {
                if !payload.is_empty() {
                    return Err(RaftNodeError::BadMessage(format!("read-index: {} payload bytes, expected none", payload.len())));
                }
                network::encode_reply(crate::read_batch::answer_read_index(&g.raft).await)
            }
        })
    }

    /// Receives a snapshot stream into a durable file, then installs it.
    pub async fn receive_snapshot<S, E>(&self, group: GroupId, header: &[u8], mut chunks: S) -> Result<Bytes, RaftNodeError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let g = self.group_or_err(group)?;
        let (vote, meta) = network::decode_snapshot_header(header).map_err(RaftNodeError::BadMessage)?;
        static INCOMING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = INCOMING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = g.snapshot_dir.join(format!("incoming-{}-{n}.tmp", std::process::id()));
        let mut file = tokio::fs::File::create(&path).await?;
        let mut received = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| RaftNodeError::BadMessage(format!("snapshot stream broke: {e}")))?;
            received += chunk.len() as u64;
            if received > SNAPSHOT_RECEIVE_BYTES_MAX {
                return Err(RaftNodeError::BadMessage(format!("snapshot exceeds {SNAPSHOT_RECEIVE_BYTES_MAX} bytes")));
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        }
        file.sync_all().await?;
        drop(file);
        // Verify the whole stream before touching the state machine.
        let check = path.clone();
        let cipher = g.state.log_cipher.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut r = snapshot::SnapshotReader::open(&check, cipher.as_ref())?;
            while r.next_chunk()?.is_some() {}
            Ok(())
        })
        .await
        .map_err(|e| RaftNodeError::Raft(e.to_string()))??;
        let file = std::fs::File::open(&path)?;
        let snapshot =
            openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: SnapshotData::Stream(SnapshotFile { path, file }) };
        let resp = g.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string());
        Ok(network::encode_reply(resp))
    }

    /// Stops every group, makes all writes durable and stops the engine's background
    /// work. The process should exit right after (see `Engine::prepare_for_exit`).
    pub async fn shutdown(&self) {
        if let Some(driver) = self.key_jobs.lock().expect("key jobs lock").take() {
            driver.abort();
        }
        let groups: Vec<_> = self.groups.read().expect("groups lock").values().cloned().collect();
        for g in groups {
            g.snapshot_policy.abort();
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "raft shutdown");
            }
        }
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || engine.prepare_for_exit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not sync the WAL at shutdown"),
            Err(e) => tracing::error!(error = %e, "shutdown task failed"),
        }
    }
}

impl Group {
    // Replaced by a group registry with the shard work (docs/SHARDING.md).
    #[allow(clippy::too_many_arguments)]
    async fn open(
        node_id: NodeId,
        id: GroupId,
        engine: Engine,
        syncer: Arc<LogSyncer>,
        shared_log: Arc<kho_engine::shared_log::SharedLog>,
        snapshot_dir: &Path,
        s: &RaftSettings,
        transport: Arc<dyn Transport>,
        master: Option<Arc<MasterKey>>,
    ) -> Result<Group, RaftNodeError> {
        // The state machine readies `snapshot_dir` (leftovers of interrupted transfers and
        // of the previous build's snapshot files are removed there).
        let config = openraft::Config {
            cluster_name: "kho".to_string(),
            heartbeat_interval: s.heartbeat_interval_ms,
            election_timeout_min: s.election_timeout_min_ms,
            election_timeout_max: s.election_timeout_max_ms,
            install_snapshot_timeout: s.snapshot_timeout_ms,
            max_payload_entries: s.append_entries_max,
            // Kho's own policy (`snapshot_policy`) triggers snapshots.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: s.logs_to_keep_after_snapshot,
            snapshot_max_chunk_size: s.snapshot_chunk_bytes,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| RaftNodeError::Raft(e.to_string()))?);
        let log = LogStore::open(id, engine.clone(), shared_log, syncer, master.as_ref().map(|m| m.log_cipher()))?;
        let sm = StateMachine::open(id, engine, log.group_log(), snapshot_dir.to_path_buf(), s.snapshot_chunk_bytes as usize, master)?;
        let state = sm.state();
        // The purge rule: the log is never purged past the state machine's flushed applied index.
        let log = log.with_purge_bound(state.flushed_applied());
        let follower_transport = transport.clone();
        let net = NetworkFactory {
            group: id,
            transport,
            rpc_timeout: Duration::from_millis(s.rpc_timeout_ms),
            snapshot_timeout: Duration::from_millis(s.snapshot_timeout_ms),
            snapshot_chunk_bytes: s.snapshot_chunk_bytes as usize,
        };
        let raft = Raft::new(node_id, config, net, log.clone(), sm).await.map_err(|e| RaftNodeError::Raft(e.to_string()))?;
        let policy = snapshot_policy(raft.clone(), s.snapshot_logs_since_last);
        let reads = ReadBatcher::new(raft.clone());
        let follower_reads =
            s.follower_reads.then(|| ReadBatcher::follower(raft.clone(), follower_transport, id, Duration::from_millis(s.rpc_timeout_ms)));
        Ok(Group {
            id,
            node_id,
            raft,
            state,
            log,
            reads,
            follower_reads,
            follower_reads_served: AtomicU64::new(0),
            follower_reads_forwarded: AtomicU64::new(0),
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshot_policy: policy,
        })
    }

    /// Proposes a command and waits until it is applied here (the leader).
    pub async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(e) => Err(write_error(e)),
        }
    }

    /// Returns once this node's state machine reflects every write acknowledged before the
    /// call (ReadIndex: the leader confirms its leadership with a quorum; concurrent calls
    /// share one confirmation, [`crate::read_batch`]).
    ///
    /// On a follower with `raft.follower_reads`, the read is served here: the leader
    /// confirms its leadership and answers its read index (one request shared by the
    /// concurrent readers of a round), and this node waits until it has applied that far.
    /// `ForwardToLeader` then means the read should go to the leader after all: follower
    /// reads are off, the leader gave no read index, or this node is more than
    /// [`crate::read_batch::FOLLOWER_READ_APPLY_WAIT_MS`] behind.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        match &self.follower_reads {
            Some(follower) if !self.is_leader() => {
                let r = follower.barrier().await;
                let counter = match &r {
                    Ok(()) => &self.follower_reads_served,
                    // Only what the caller can forward.
                    Err(ProposeError::ForwardToLeader { leader_id: Some(l), leader_addr: Some(_) }) if *l != self.node_id => {
                        &self.follower_reads_forwarded
                    }
                    Err(_) => return r,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                r
            }
            _ => self.reads.barrier().await,
        }
    }

    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<Vec<NodeId>, ProposeError> {
        self.raft.add_learner(id, BasicNode { addr }, true).await.map_err(write_error)?;
        let r = self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map_err(write_error)?;
        Ok(r.membership.map(|m| m.voter_ids().collect()).unwrap_or_default())
    }

    /// Removes a node from the voters and the learners.
    pub async fn remove_node(&self, id: NodeId) -> Result<Vec<NodeId>, ProposeError> {
        let r = self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await.map_err(write_error)?;
        Ok(r.membership.map(|m| m.voter_ids().collect()).unwrap_or_default())
    }

    /// Whether this node is the group's leader, as far as it knows.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members =
            membership.nodes().map(|(id, n)| MemberStatus { id: *id, addr: n.addr.clone(), voter: voters.contains(id) }).collect();
        GroupStatus {
            node_id: m.id,
            role,
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            first_log_index: self.log.first_index().ok().flatten().unwrap_or(0),
            commit_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
            follower_reads: self.follower_reads_served.load(Ordering::Relaxed),
            follower_reads_forwarded: self.follower_reads_forwarded.load(Ordering::Relaxed),
        }
    }

    /// The address of a member, if it is in the membership.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let addr = m.membership().nodes().find(|(n, _)| **n == id).map(|(_, node)| node.addr.clone());
        addr
    }
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ProposeError::ForwardToLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            ProposeError::Unavailable("the leader changed before the write was committed; it was not applied".into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ProposeError::Rejected(AppError::invalid(e.to_string())),
        RaftError::APIError(e) => ProposeError::Unavailable(e.to_string()),
        RaftError::Fatal(f) => ProposeError::Unavailable(format!("raft stopped: {f}")),
    }
}
