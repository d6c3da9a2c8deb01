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
use crate::shard::{ShardDesc, ShardState};
use crate::snapshot::{self, SnapshotData, SnapshotFile};
use crate::state_machine::{GroupKind, SmState, StateMachine};
use crate::{GroupId, NodeId, Raft, TypeConfig, META_GROUP};

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
    /// Most bytes of entries (encoded) one AppendEntries message carries: a longer run is
    /// sent in parts (each at least one entry), so that no message passes the gRPC message
    /// limit between nodes.
    pub append_bytes_max: u64,
    pub rpc_timeout_ms: u64,
    pub snapshot_timeout_ms: u64,
    /// Serve linearizable reads on followers (a read index from the leader, then the local
    /// apply wait) instead of forwarding them to the leader.
    pub follower_reads: bool,
    /// Automatic splits and merges ([`crate::shard_size`]).
    pub sharding: crate::shard_size::ShardingSettings,
    /// How long a data shard's leader waits with no new entry before it puts the shard to
    /// sleep ([`crate::sleep`]), milliseconds; 0: shards never sleep.
    pub sleep_after_idle_ms: u64,
}

/// Most voters of the meta group, count; further nodes follow it as learners
/// ([`Group::add_node`]).
pub const META_VOTERS_MAX: usize = 5;

/// Largest snapshot stream a node accepts from a peer, bytes.
pub const SNAPSHOT_RECEIVE_BYTES_MAX: u64 = 256 << 30;

pub struct RaftNode {
    pub id: NodeId,
    pub addr: String,
    engine: Engine,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// What opening a group needs.
    opener: GroupOpener,
    /// Serializes the opening of groups by the registry.
    opening: tokio::sync::Mutex<()>,
    /// The ranges of this node's data groups, by start: routing by key
    /// ([`RaftNode::local_group_for`]). Rebuilt by the registry.
    ranges: crate::local_ranges::LocalRanges,
    /// Data shards opened here whose Raft state is not known to be initialized yet, with
    /// when they were opened ([`RaftNode::ensure_shard_groups`]).
    uninitialized: std::sync::Mutex<BTreeMap<GroupId, std::time::Instant>>,
    /// Which other nodes answer the liveness probe ([`crate::sleep`]).
    liveness: Arc<crate::sleep::Liveness>,
    /// Shards of the map a registry round left unopened (a local group still holds part of
    /// its range): the registry looks at them again soon.
    deferred: std::sync::Mutex<std::collections::BTreeSet<GroupId>>,
    /// Background tasks (the re-encryption and table-clearing driver, [`crate::key_jobs`];
    /// the group registry), stopped at shutdown.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Everything a group of this node is opened with.
struct GroupOpener {
    node_id: NodeId,
    engine: Engine,
    syncer: Arc<LogSyncer>,
    shared_log: Arc<kho_engine::shared_log::SharedLog>,
    snapshots_dir: PathBuf,
    settings: RaftSettings,
    transport: Arc<dyn Transport>,
    master: Option<Arc<MasterKey>>,
    /// Told by the groups' apply which groups changed ([`crate::registry_hints`]); the
    /// registry waits on them.
    registry_hints: Arc<crate::registry_hints::RegistryHints>,
}

impl GroupOpener {
    /// Opens group `id`; `asleep`: with its ticker stopped ([`crate::sleep`]).
    async fn open(&self, id: GroupId, kind: GroupKind, asleep: bool) -> Result<Group, RaftNodeError> {
        let dir = self.snapshots_dir.join(id.to_string());
        Group::open(
            self.node_id,
            id,
            kind,
            self.engine.clone(),
            self.syncer.clone(),
            self.shared_log.clone(),
            &dir,
            &self.settings,
            self.transport.clone(),
            self.master.clone(),
            self.registry_hints.clone(),
            asleep,
        )
        .await
    }
}

/// How long a replica of a new shard waits for the shard's first voter to start it before
/// it starts it itself, milliseconds.
const SHARD_INIT_FALLBACK_MS: u64 = 5_000;

/// How soon the group registry looks again at what its last round left pending (a group not
/// initialized yet, a shard deferred), milliseconds; after a failed round, it looks at
/// everything again this soon.
const REGISTRY_POLL_MS: u64 = 1_000;
/// How often the registry looks at every shard of the node and of the map even without a
/// change (a round otherwise looks only at the groups hinted, [`crate::registry_hints`]),
/// milliseconds.
const REGISTRY_FULL_ROUND_MS: u64 = 30_000;

/// One Raft group hosted on this node.
pub struct Group {
    pub id: GroupId,
    /// This node's id.
    pub(crate) node_id: NodeId,
    /// Whether the group sleeps, and what wakes it ([`crate::sleep`]).
    pub sleep: Arc<crate::sleep::Sleep>,
    /// How long after it woke a leader may still lack a quorum lease (the longest election
    /// timeout, openraft's lease), for [`Group::lease_for_write`].
    lease_window: Duration,
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
///
/// It looks at the log at most every [`SNAPSHOT_POLICY_POLL_MS`], and only after the
/// group's metrics changed: an idle group's policy costs nothing.
fn snapshot_policy(raft: Raft, logs_since_last: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut triggered: Option<(Option<u64>, std::time::Instant)> = None;
        let mut metrics = raft.metrics();
        loop {
            tokio::time::sleep(Duration::from_millis(SNAPSHOT_POLICY_POLL_MS)).await;
            if triggered.is_none() && metrics.changed().await.is_err() {
                return;
            }
            let m = metrics.borrow_watched().clone();
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
    /// Whether the group sleeps here ([`crate::sleep`]).
    pub asleep: bool,
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
        if engine.get(kho_engine::Cf::RaftMeta, &crate::log_store::meta_key::key(1, crate::log_store::meta_key::APPLIED))?.is_some()
            && crate::state_machine::read_shard_state(&engine, 1)?.is_none()
        {
            return Err(RaftNodeError::Raft(format!(
                "{} was written by a build before sharding (one Raft group 1 holding the catalog and every tenant); \
                 this build keeps the catalog in the meta group 0 and data in shards, and cannot open it: \
                 start from an empty data directory",
                data_dir.display()
            )));
        }
        let opener = GroupOpener {
            node_id: id,
            engine: engine.clone(),
            syncer,
            shared_log,
            snapshots_dir: data_dir.join("snapshots"),
            settings: settings.clone(),
            transport,
            master,
            registry_hints: Default::default(),
        };
        let node = Arc::new(RaftNode {
            id,
            addr,
            engine: engine.clone(),
            groups: RwLock::new(BTreeMap::new()),
            opener,
            opening: tokio::sync::Mutex::new(()),
            ranges: Default::default(),
            uninitialized: std::sync::Mutex::new(BTreeMap::new()),
            liveness: Arc::new(crate::sleep::Liveness::new(Duration::from_millis(settings.election_timeout_min_ms))),
            deferred: Default::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let meta = node.opener.open(META_GROUP, GroupKind::Meta, false).await?;
        node.groups.write().expect("groups lock").insert(META_GROUP, Arc::new(meta));
        remove_leftover_groups(&engine, &node.opener.shared_log, &node.opener.snapshots_dir)?;
        // The data groups open together: a merge's commit that a group re-applies at start
        // waits for another group of this node (the merge's source) to re-apply its
        // prepare, which it can only do once it is open too.
        let shards = local_shards(&engine)?;
        // They start asleep when shards sleep: the probe's first round wakes those whose
        // leader is not another node that answers ([`crate::sleep`]).
        let asleep = crate::sleep::enabled(settings.sleep_after_idle_ms);
        let opened = futures::future::join_all(shards.iter().map(|&shard| node.opener.open(shard, GroupKind::Data, asleep))).await;
        for (shard, g) in shards.into_iter().zip(opened) {
            let g = g?;
            node.groups.write().expect("groups lock").insert(shard, Arc::new(g));
            // Checked once by the registry: a replica created just before a crash may not
            // have been started yet.
            node.uninitialized.lock().expect("uninitialized lock").insert(shard, std::time::Instant::now());
        }
        node.reindex_ranges();
        let driver = crate::key_jobs::spawn(Arc::downgrade(&node));
        let registry = spawn_registry(Arc::downgrade(&node));
        let sizes = crate::shard_size::spawn(Arc::downgrade(&node), settings.sharding.clone());
        node.tasks.lock().expect("tasks lock").extend([driver, registry, sizes]);
        if asleep {
            let sleeper = crate::sleep::spawn_sleeper(Arc::downgrade(&node), settings.sleep_after_idle_ms);
            let probe = crate::sleep::spawn_probe(Arc::downgrade(&node), node.liveness.clone(), settings.heartbeat_interval_ms);
            node.tasks.lock().expect("tasks lock").extend([sleeper, probe]);
        }
        Ok(node)
    }

    /// Opens the group of every data shard this node holds state of (a split's new sibling,
    /// whose state the parent's apply wrote: it starts initialized) and of every shard of
    /// the map that has a replica on this node; initializes a tenant's first shard when new
    /// (epoch (1, 1)), never any other (a split's child elsewhere, a replica being added:
    /// their leader brings them up to date, by a snapshot). A first shard whose members'
    /// addresses are not known yet is initialized in a later round. Retires the groups of
    /// shards merged away. Then indexes the ranges of the node's data groups again.
    ///
    /// A full round: it reads every shard state of the node and looks at every shard of the
    /// map. The registry runs one every [`REGISTRY_FULL_ROUND_MS`]; between them it looks
    /// only at the groups the apply hinted ([`RaftNode::ensure_shard_group`]).
    pub async fn ensure_shard_groups(&self) -> Result<(), RaftNodeError> {
        self.registry_round(true, None).await
    }

    /// [`RaftNode::ensure_shard_groups`] for shard `id`, the groups the apply hinted since
    /// the last round ([`crate::registry_hints`]) and the ones earlier rounds left pending
    /// only: time proportional to those, not to the node's shards.
    pub async fn ensure_shard_group(&self, id: GroupId) -> Result<(), RaftNodeError> {
        self.registry_round(false, Some(id)).await
    }

    /// One registry round: over everything (`full`, or the hints ask for it), or over the
    /// hinted and pending groups and `also`.
    async fn registry_round(&self, full: bool, also: Option<GroupId>) -> Result<(), RaftNodeError> {
        let _one_at_a_time = self.opening.lock().await;
        let hinted = self.opener.registry_hints.take();
        let scope: Option<std::collections::BTreeSet<GroupId>> = match full || hinted.everything {
            false => {
                let mut ids = hinted.groups;
                ids.extend(also);
                ids.extend(self.uninitialized.lock().expect("uninitialized lock").keys().copied());
                ids.extend(std::mem::take(&mut *self.deferred.lock().expect("deferred lock")));
                ids.remove(&META_GROUP);
                Some(ids)
            }
            true => {
                self.deferred.lock().expect("deferred lock").clear();
                None
            }
        };
        let round = async {
            let stored: std::collections::BTreeSet<GroupId> = match &scope {
                None => local_shards(&self.engine)?.into_iter().collect(),
                Some(ids) => {
                    let mut stored = std::collections::BTreeSet::new();
                    for &id in ids {
                        if crate::state_machine::read_shard_state(&self.engine, id)?.is_some() {
                            stored.insert(id);
                        }
                    }
                    stored
                }
            };
            let retired = self.retire_merged_groups(&stored, scope.as_ref()).await;
            let opened = self.open_stored_groups(&stored).await;
            let from_map = self.open_groups_of_the_map(scope.as_ref()).await;
            match &scope {
                None => self.reindex_ranges(),
                Some(ids) => {
                    for &id in ids {
                        match self.group(id).filter(|g| g.state.kind == GroupKind::Data) {
                            Some(g) => self.ranges.set(id, g.state.range().start),
                            None => self.ranges.remove(id),
                        }
                    }
                }
            }
            retired.and(opened).and(from_map)
        };
        let result = round.await;
        if result.is_err() {
            // What this round was told may be lost with it: the next one looks at everything.
            self.opener.registry_hints.everything();
        }
        result
    }

    /// Retires every open data group whose shard state is gone from storage: the source of
    /// a merge whose commit applied here (`CommitMerge` removed its state in the target's
    /// batch). Looks at the groups of `scope` only, when given; `stored` holds the ones
    /// with a stored state among them. Makes that batch durable first (a flush), then stops
    /// the group and removes its Raft state, log stream and snapshot files.
    async fn retire_merged_groups(
        &self,
        stored: &std::collections::BTreeSet<GroupId>,
        scope: Option<&std::collections::BTreeSet<GroupId>>,
    ) -> Result<(), RaftNodeError> {
        let open: Vec<Arc<Group>> = match scope {
            None => self.groups.read().expect("groups lock").values().cloned().collect(),
            Some(ids) => ids.iter().filter_map(|&id| self.group(id)).collect(),
        };
        let gone: Vec<Arc<Group>> =
            open.into_iter().filter(|g| g.state.kind == GroupKind::Data && g.state.shard().is_some() && !stored.contains(&g.id)).collect();
        if gone.is_empty() {
            return Ok(());
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.flush_all()).await.map_err(|e| RaftNodeError::Raft(e.to_string()))??;
        for g in gone {
            self.groups.write().expect("groups lock").remove(&g.id);
            g.snapshot_policy.abort();
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "raft shutdown of a merged shard");
            }
            let (engine, log, id, dir) = (self.engine.clone(), self.opener.shared_log.clone(), g.id, g.snapshot_dir.clone());
            tokio::task::spawn_blocking(move || -> Result<(), RaftNodeError> {
                let mut batch = engine.batch();
                batch.delete_range(
                    kho_engine::Cf::RaftMeta,
                    &crate::log_store::meta_key::key(id, 0),
                    &crate::log_store::meta_key::key(id + 1, 0),
                );
                engine.write(batch, true)?;
                log.remove_stream(id)?;
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(group = id, dir = %dir.display(), error = %e, "could not remove a merged shard's snapshot files");
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| RaftNodeError::Raft(e.to_string()))??;
            self.uninitialized.lock().expect("uninitialized lock").remove(&g.id);
            tracing::info!(shard = g.id, "retired the group of a shard merged into its left neighbour");
        }
        Ok(())
    }

    /// Opens every data group with a stored shard state (`stored`) that is not open yet.
    async fn open_stored_groups(&self, stored: &std::collections::BTreeSet<GroupId>) -> Result<(), RaftNodeError> {
        for &id in stored {
            if self.group(id).is_some() {
                continue;
            }
            let g = Arc::new(self.opener.open(id, GroupKind::Data, false).await?);
            self.groups.write().expect("groups lock").insert(id, g.clone());
            tracing::info!(shard = id, range = %g.state.range(), "opened a data shard this node holds state of");
        }
        Ok(())
    }

    /// See [`RaftNode::ensure_shard_groups`]: the groups the shard map puts on this node.
    /// Looks at the shards of `scope` only, when given.
    async fn open_groups_of_the_map(&self, scope: Option<&std::collections::BTreeSet<GroupId>>) -> Result<(), RaftNodeError> {
        // The shards of the map on this node not open yet, or not known to be initialized.
        // (One lock at a time: the catalog's is taken last, alone.)
        let mut done: std::collections::HashSet<GroupId> = match scope {
            None => self.groups.read().expect("groups lock").keys().copied().collect(),
            Some(ids) => ids.iter().copied().filter(|&id| self.group(id).is_some()).collect(),
        };
        for id in self.uninitialized.lock().expect("uninitialized lock").keys() {
            done.remove(id);
        }
        let wanted: Vec<ShardDesc> = {
            let meta = self.meta();
            let cat = meta.state.catalog();
            let on_this_node = |d: &&ShardDesc| !done.contains(&d.id) && d.replicas.iter().any(|r| r.node == self.id);
            match scope {
                None => cat.shards.iter().filter(on_this_node).cloned().collect(),
                Some(ids) => ids.iter().filter_map(|&id| cat.shards.get(id)).filter(on_this_node).cloned().collect(),
            }
        };
        for desc in wanted {
            let g = match self.group(desc.id) {
                Some(g) => g,
                None => {
                    // A local replica still holding part of the range is one of the shard's
                    // ancestors that has not applied the split yet: it writes the shard's
                    // state when it does, or loses the range by a snapshot taken after it.
                    // Until then, ranges on this node never overlap.
                    if let Some(holder) = self.local_overlap(&desc.start, &desc.end) {
                        tracing::debug!(shard = desc.id, holder, "a local group still holds part of the shard's range; opening it later");
                        self.deferred.lock().expect("deferred lock").insert(desc.id);
                        continue;
                    }
                    let g = self.open_from_the_map(&desc).await?;
                    // Only a tenant's first shard is created by initializing it; any other
                    // shard has a leader already, which sends this replica what it lacks.
                    if desc.epoch == crate::shard::Epoch::INITIAL {
                        self.uninitialized.lock().expect("uninitialized lock").insert(desc.id, std::time::Instant::now());
                    }
                    g
                }
            };
            let Some(since) = self.uninitialized.lock().expect("uninitialized lock").get(&desc.id).copied() else { continue };
            if desc.epoch != crate::shard::Epoch::INITIAL
                || g.raft.is_initialized().await.map_err(|e| RaftNodeError::Raft(e.to_string()))?
            {
                self.uninitialized.lock().expect("uninitialized lock").remove(&desc.id);
                continue;
            }
            // One replica, the lowest-numbered voter, starts the group: the others receive
            // its log, so the first election has one candidate and the leader does not move
            // right after the shard's creation. Another replica starts it only if it is still
            // uninitialized after SHARD_INIT_FALLBACK_MS (the first one is down).
            let designated = desc.voters().min() == Some(self.id);
            if !designated && since.elapsed() < Duration::from_millis(SHARD_INIT_FALLBACK_MS) {
                continue;
            }
            let mut members = BTreeMap::new();
            for n in desc.voters() {
                let Some(addr) = self.node_addr(n) else {
                    tracing::warn!(shard = desc.id, node = n, "no address known for a replica's node; initializing later");
                    members.clear();
                    break;
                };
                members.insert(n, BasicNode { addr });
            }
            if !members.is_empty() {
                match g.raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(_)) => {
                        self.uninitialized.lock().expect("uninitialized lock").remove(&desc.id);
                    }
                    Err(e) => return Err(RaftNodeError::Raft(e.to_string())),
                }
            }
        }
        Ok(())
    }

    /// Opens the group of shard `desc` that the map puts on this node, writing its state
    /// and range from the map first if this node has none.
    async fn open_from_the_map(&self, desc: &ShardDesc) -> Result<Arc<Group>, RaftNodeError> {
        let key = crate::log_store::meta_key::key(desc.id, crate::log_store::meta_key::SHARD_STATE);
        if crate::state_machine::read_shard_state(&self.engine, desc.id)?.is_none() {
            // The shard's range and state, written together before the group exists.
            let range = crate::KeyRange::new(desc.start.clone(), Some(desc.end.clone()));
            let mut batch = self.engine.batch();
            batch.put(kho_engine::Cf::RaftMeta, &key, &ShardState::new(desc.clone()).encode());
            batch.put(
                kho_engine::Cf::RaftMeta,
                &crate::log_store::meta_key::key(desc.id, crate::log_store::meta_key::RANGE),
                &crate::codec::encode_key_range(&range),
            );
            self.engine.write(batch, true)?;
        }
        let g = Arc::new(self.opener.open(desc.id, GroupKind::Data, false).await?);
        self.groups.write().expect("groups lock").insert(desc.id, g.clone());
        tracing::info!(shard = desc.id, range = %desc, "opened a data shard the shard map puts here");
        Ok(g)
    }

    /// A data group of this node, serving, whose range meets `[start, end)`.
    fn local_overlap(&self, start: &[u8], end: &[u8]) -> Option<GroupId> {
        let groups: Vec<Arc<Group>> = self.groups.read().expect("groups lock").values().cloned().collect();
        groups
            .iter()
            .filter(|g| g.state.kind == GroupKind::Data)
            .find(|g| {
                let (s, e) = g.state.bounds();
                s.as_slice() < end && start < e.as_slice() && self.serves(g)
            })
            .map(|g| g.id)
    }

    /// Indexes the ranges of the node's data groups again ([`RaftNode::local_group_for`]).
    fn reindex_ranges(&self) {
        let groups: Vec<Arc<Group>> = self.groups.read().expect("groups lock").values().cloned().collect();
        self.ranges.rebuild(groups.iter().filter(|g| g.state.kind == GroupKind::Data).map(|g| (g.state.range(), g.id)));
    }

    /// This node's replica of the data shard whose range holds `key`, by the groups' own
    /// ranges (not the shard map, which learns of a split after it applied here); None when
    /// this node holds no replica serving it (none, or one removed from its shard).
    pub fn local_group_for(&self, key: &[u8]) -> Option<Arc<Group>> {
        self.ranges.candidates(key).into_iter().filter_map(|id| self.group(id)).find(|g| g.state.holds(key) && self.serves(g))
    }

    /// This node's data group whose range starts at `start`, if it serves it.
    pub fn local_group_starting_at(&self, start: &[u8]) -> Option<Arc<Group>> {
        self.ranges.starting_at(start).and_then(|id| self.group(id)).filter(|g| g.state.range().start == start && self.serves(g))
    }

    /// Whether this node's replica of data group `g` is one its shard still has: its own
    /// descriptor lists this node, and the shard map's, when it is as new in `conf_ver`,
    /// does too. A replica removed from its shard gets no new entries, so it serves nothing.
    pub fn serves(&self, g: &Group) -> bool {
        let Some((conf_ver, listed)) = g.state.replica_of(self.id) else { return false };
        if !listed {
            return false;
        }
        let meta = self.meta();
        let cat = meta.state.catalog();
        match cat.shards.get(g.id) {
            Some(d) if d.epoch.conf_ver >= conf_ver => d.replicas.iter().any(|r| r.node == self.id),
            _ => true,
        }
    }

    /// Adds or removes a replica of data shard `shard`, on the shard's leader wherever it is
    /// (this node's replica, or a replica named by the shard map), then reports the new
    /// descriptor to the meta group. An added node becomes a learner, catches up (from a
    /// snapshot of the shard if its log was purged), then a voter.
    pub async fn change_replicas(&self, shard: GroupId, change: ReplicaChange) -> Result<ShardDesc, ProposeError> {
        let mut last = None;
        for _ in 0..PROPOSE_HOPS_MAX {
            let target = match self.group(shard) {
                Some(g) if g.is_leader() => {
                    let r = match &change {
                        ReplicaChange::Add { node, addr } => g.add_node(*node, addr.clone()).await,
                        ReplicaChange::Remove { node } => g.remove_node(*node).await,
                    };
                    match r {
                        Ok(_) => {
                            let desc = g
                                .state
                                .shard()
                                .map(|s| s.desc)
                                .ok_or_else(|| ProposeError::Unavailable(format!("group {shard} is not a data shard")))?;
                            if let Err(e) = self.propose_anywhere(META_GROUP, Command::UpdateShard { desc: desc.clone() }).await {
                                // The leader's driver reports it again ([`crate::key_jobs`]).
                                tracing::info!(shard, error = %e, "could not report the shard's new replicas yet");
                            }
                            return Ok(desc);
                        }
                        Err(ProposeError::ForwardToLeader { leader_id: Some(l), leader_addr: Some(a) }) if l != self.id => (l, a),
                        Err(e) => return Err(e),
                    }
                }
                Some(g) => match g.status_leader().filter(|l| *l != self.id).and_then(|l| g.member_addr(l).map(|a| (l, a))) {
                    Some(t) => t,
                    None => return Err(ProposeError::Unavailable(format!("shard {shard} has no leader yet"))),
                },
                None => {
                    let desc = self.meta().state.catalog().shards.get(shard).cloned();
                    match desc.and_then(|d| d.voters().find_map(|n| self.node_addr(n).map(|a| (n, a)))) {
                        Some(t) => t,
                        None => return Err(ProposeError::Unavailable(format!("no replica of shard {shard} is known"))),
                    }
                }
            };
            let timeout = Duration::from_millis(CHANGE_REPLICAS_TIMEOUT_MS);
            let payload = network::encode(&change);
            match self.opener.transport.call(target.0, target.1, shard, MessageKind::ChangeReplicas, payload, timeout).await {
                Ok(reply) => match network::decode_reply::<ShardDesc>("change-replicas", &reply) {
                    Ok(d) => return Ok(d),
                    Err(e) => last = Some(ProposeError::Unavailable(format!("node {}: {e}", target.0))),
                },
                Err(e) => last = Some(ProposeError::Unavailable(e.to_string())),
            }
        }
        Err(last.unwrap_or_else(|| ProposeError::Unavailable(format!("shard {shard}: no leader reached"))))
    }

    /// The address of a node of the cluster (a member of the meta group).
    pub fn node_addr(&self, id: NodeId) -> Option<String> {
        if id == self.id {
            return Some(self.addr.clone());
        }
        self.meta().member_addr(id)
    }

    /// Proposes `cmd` to `group`'s leader, wherever it is: here if this node leads it, else
    /// through the peer connection to the leader (at most [`PROPOSE_HOPS_MAX`] tries, as
    /// the leader moves).
    pub async fn propose_anywhere(&self, group: GroupId, cmd: Command) -> Result<Response, ProposeError> {
        let Some(g) = self.group(group) else {
            // No replica here: hand it to each replica the shard map names until one leads.
            let desc = self.meta().state.catalog().shards.get(group).cloned();
            let targets: Vec<(NodeId, String)> =
                desc.iter().flat_map(|d| d.voters()).filter_map(|n| self.node_addr(n).map(|a| (n, a))).collect();
            let mut last = ProposeError::Unavailable(format!("no replica of group {group} is known"));
            for (n, addr) in targets {
                let timeout = Duration::from_millis(self.opener.settings.rpc_timeout_ms.max(PROPOSE_TIMEOUT_MS));
                match self.opener.transport.call(n, addr, group, MessageKind::Propose, Bytes::from(cmd.encode()), timeout).await {
                    Ok(reply) => match network::decode_reply::<Response>("propose", &reply) {
                        Ok(r) => return Ok(r),
                        Err(e) => last = ProposeError::Unavailable(format!("node {n}: {e}")),
                    },
                    Err(e) => last = ProposeError::Unavailable(e.to_string()),
                }
            }
            return Err(last);
        };
        let mut last = None;
        for _ in 0..PROPOSE_HOPS_MAX {
            match g.propose(cmd.clone()).await {
                Err(ProposeError::ForwardToLeader { leader_id: Some(l), leader_addr: Some(addr) }) if l != self.id => {
                    let payload = Bytes::from(cmd.encode());
                    let timeout = Duration::from_millis(self.opener.settings.rpc_timeout_ms.max(PROPOSE_TIMEOUT_MS));
                    match self.opener.transport.call(l, addr, group, MessageKind::Propose, payload, timeout).await {
                        Ok(reply) => match network::decode_reply::<Response>("propose", &reply) {
                            Ok(r) => return Ok(r),
                            Err(e) => last = Some(ProposeError::Unavailable(format!("node {l}: {e}"))),
                        },
                        Err(e) => last = Some(ProposeError::Unavailable(e.to_string())),
                    }
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ProposeError::Unavailable(format!("group {group}: no leader reached"))))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The node's transport to its peers.
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.opener.transport
    }

    /// The ids of the groups this node holds.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.read().expect("groups lock").keys().copied().collect()
    }

    pub fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().expect("groups lock").get(&id).cloned()
    }

    /// The node's data groups.
    pub fn data_groups(&self) -> Vec<Arc<Group>> {
        self.groups.read().expect("groups lock").values().filter(|g| g.state.kind == GroupKind::Data).cloned().collect()
    }

    /// The data groups of this node that are awake ([`crate::sleep`]): what the periodic
    /// tasks look at, so that ten thousand sleeping shards cost them one atomic load each.
    pub fn awake_data_groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .read()
            .expect("groups lock")
            .values()
            .filter(|g| g.state.kind == GroupKind::Data && !g.sleep.is_asleep())
            .cloned()
            .collect()
    }

    /// The node's Raft settings.
    pub(crate) fn settings(&self) -> &RaftSettings {
        &self.opener.settings
    }

    /// The meta group (catalog, shard map), opened with the node.
    pub fn meta(&self) -> Arc<Group> {
        self.group(META_GROUP).expect("the meta group is opened with the node")
    }

    fn group_or_err(&self, id: GroupId) -> Result<Arc<Group>, RaftNodeError> {
        self.group(id).ok_or(RaftNodeError::UnknownGroup(id))
    }

    /// Initializes a new cluster with `members` if this node has no Raft state yet.
    /// Returns whether it did. Every member of a new cluster may call it with the same list.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<bool, RaftNodeError> {
        let g = self.meta();
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

    /// Serves one request/response Raft message from a peer. `sender`: the node the
    /// connection's certificate names (None without TLS); a vote, pre-vote or
    /// append-entries request must be that node's own (its vote's node).
    pub async fn handle_call(
        &self,
        group: GroupId,
        kind: MessageKind,
        payload: &[u8],
        sender: Option<NodeId>,
    ) -> Result<Bytes, RaftNodeError> {
        if kind == MessageKind::Probe {
            return Ok(crate::sleep::answer_probe());
        }
        let g = self.group_or_err(group)?;
        Ok(match kind {
            MessageKind::Probe => crate::sleep::answer_probe(),
            MessageKind::Sleep => {
                let req = network::decode("sleep", payload).map_err(RaftNodeError::BadMessage)?;
                network::encode_reply(crate::sleep::answer_sleep(&g, req))
            }
            MessageKind::AppendEntries => {
                let req: openraft::raft::AppendEntriesRequest<TypeConfig> =
                    network::decode("append-entries", payload).map_err(RaftNodeError::BadMessage)?;
                check_sender("append-entries", sender, req.vote.leader_id().node_id)?;
                network::encode_reply(g.raft.append_entries(req).await.map_err(|e| e.to_string()))
            }
            MessageKind::Vote => {
                let req: openraft::raft::VoteRequest<TypeConfig> = network::decode("vote", payload).map_err(RaftNodeError::BadMessage)?;
                check_sender("vote", sender, req.vote.leader_id().node_id)?;
                // An election is under way: this replica takes part, awake.
                g.sleep.wake("a vote request");
                network::encode_reply(g.raft.vote(req).await.map_err(|e| e.to_string()))
            }
            MessageKind::PreVote => {
                let req: openraft::raft::VoteRequest<TypeConfig> =
                    network::decode("pre-vote", payload).map_err(RaftNodeError::BadMessage)?;
                check_sender("pre-vote", sender, req.vote.leader_id().node_id)?;
                if let Some(refusal) = crate::sleep::refuse_pre_vote(&self.liveness, &g, &req) {
                    return Ok(network::encode_reply::<openraft::raft::VoteResponse<TypeConfig>>(Ok(refusal)));
                }
                g.sleep.wake("a Pre-Vote request");
                network::encode_reply(g.raft.pre_vote(req).await.map_err(|e| e.to_string()))
            }
            MessageKind::ReadIndex => {
                if !payload.is_empty() {
                    return Err(RaftNodeError::BadMessage(format!("read-index: {} payload bytes, expected none", payload.len())));
                }
                network::encode_reply(crate::read_batch::answer_read_index(&g.raft).await)
            }
            MessageKind::Propose => {
                let cmd = Command::decode(payload).map_err(|e| RaftNodeError::BadMessage(e.to_string()))?;
                // Proposed here only if this node leads the group: never forwarded again.
                let r = match tokio::time::timeout(Duration::from_millis(PROPOSE_TIMEOUT_MS), g.propose(cmd)).await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("not committed within {PROPOSE_TIMEOUT_MS} ms")),
                };
                network::encode_reply(r)
            }
            MessageKind::SplitShard => match self.handle_split(group, payload).await {
                Ok(reply) => reply,
                Err(refused) => network::encode_reply::<crate::shard_split::SplitReply>(Err(refused)),
            },
            MessageKind::MergeShard => match self.handle_merge(group, payload).await {
                Ok(reply) => reply,
                Err(refused) => network::encode_reply::<crate::shard_merge::MergeReply>(Err(refused)),
            },
            MessageKind::WaitApplied => {
                let (index, wait_ms): (u64, u64) = network::decode("wait-applied", payload).map_err(RaftNodeError::BadMessage)?;
                let wait = Duration::from_millis(wait_ms.min(crate::shard_merge::WAIT_APPLIED_MAX_MS));
                network::encode_reply::<u64>(Ok(crate::shard_merge::wait_applied(&g, index, wait).await))
            }
            MessageKind::ChangeReplicas => {
                let change: ReplicaChange = network::decode("change-replicas", payload).map_err(RaftNodeError::BadMessage)?;
                if !g.is_leader() {
                    return Ok(network::encode_reply::<ShardDesc>(Err(format!("node {} does not lead shard {group}", self.id))));
                }
                let r = match tokio::time::timeout(Duration::from_millis(CHANGE_REPLICAS_TIMEOUT_MS), self.change_replicas(group, change))
                    .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("not done within {CHANGE_REPLICAS_TIMEOUT_MS} ms")),
                };
                network::encode_reply(r)
            }
        })
    }

    /// Receives a snapshot stream into a durable file, then installs it.
    pub async fn receive_snapshot<S, E>(
        &self,
        group: GroupId,
        header: &[u8],
        mut chunks: S,
        sender: Option<NodeId>,
    ) -> Result<Bytes, RaftNodeError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let g = self.group_or_err(group)?;
        g.sleep.wake("a snapshot");
        let (vote, meta) = network::decode_snapshot_header(header).map_err(RaftNodeError::BadMessage)?;
        check_sender("snapshot", sender, vote.leader_id().node_id)?;
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
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
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
        kind: GroupKind,
        engine: Engine,
        syncer: Arc<LogSyncer>,
        shared_log: Arc<kho_engine::shared_log::SharedLog>,
        snapshot_dir: &Path,
        s: &RaftSettings,
        transport: Arc<dyn Transport>,
        master: Option<Arc<MasterKey>>,
        registry_hints: Arc<crate::registry_hints::RegistryHints>,
        asleep: bool,
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
        let sm = StateMachine::open(
            id,
            kind,
            engine,
            log.group_log(),
            snapshot_dir.to_path_buf(),
            s.snapshot_chunk_bytes as usize,
            master,
            registry_hints,
        )?;
        let state = sm.state();
        // The purge rule: the log is never purged past the state machine's flushed applied index.
        let sleep = Arc::new(crate::sleep::Sleep::new(id));
        let log = log.with_purge_bound(state.flushed_applied()).with_sleep(sleep.clone());
        let follower_transport = transport.clone();
        let net = NetworkFactory {
            group: id,
            transport,
            rpc_timeout: Duration::from_millis(s.rpc_timeout_ms),
            snapshot_timeout: Duration::from_millis(s.snapshot_timeout_ms),
            snapshot_chunk_bytes: s.snapshot_chunk_bytes as usize,
            append_bytes_max: s.append_bytes_max as usize,
        };
        let raft = Raft::new(node_id, config, net, log.clone(), sm).await.map_err(|e| RaftNodeError::Raft(e.to_string()))?;
        sleep.attach(raft.clone());
        if asleep {
            sleep.try_sleep(sleep.activity());
        }
        let policy = snapshot_policy(raft.clone(), s.snapshot_logs_since_last);
        let reads = ReadBatcher::new(raft.clone());
        // The meta group always serves reads on followers: a node resolves names in its own
        // copy of the catalog, and brings it up to date with a follower read when a name is
        // missing (`raft.follower_reads` is about data reads).
        let follower_reads = (s.follower_reads || kind == GroupKind::Meta)
            .then(|| ReadBatcher::follower(raft.clone(), follower_transport, id, Duration::from_millis(s.rpc_timeout_ms)));
        Ok(Group {
            id,
            node_id,
            sleep,
            lease_window: Duration::from_millis(s.election_timeout_max_ms),
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
        self.lease_for_write().await;
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

    /// Before a write on a leader that sleeps or just woke: wakes it and confirms its
    /// leadership with one heartbeat round. openraft refuses writes on a leader whose
    /// quorum lease has expired (`ForwardReason::LeaseExpired`, with no leader named), and a
    /// sleeping leader sends no heartbeats that would renew it ([`crate::sleep`]). A
    /// follower is not woken: its election timer would fire at once.
    async fn lease_for_write(&self) {
        if self.sleep.asleep_within(self.lease_window) && self.is_leader() {
            self.sleep.wake("a write");
            // Its outcome does not matter: the write that follows reports any failure.
            let _ = self.reads.barrier().await;
        }
    }

    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<Vec<NodeId>, ProposeError> {
        self.lease_for_write().await;
        // Not openraft's blocking add_learner: its wait has no bound of its own, and it
        // counts a learner as caught up while the log is short, whether it has anything or
        // not. Promoting such a node would make a voter of one that is down, unreachable,
        // or refused for its certificate.
        self.raft.add_learner(id, BasicNode { addr: addr.clone() }, false).await.map_err(write_error)?;
        let voters: BTreeSet<NodeId> = self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
        if voters.contains(&id) || voters.len() >= META_VOTERS_MAX {
            // Beyond META_VOTERS_MAX voters a node follows the group as a learner: every
            // node has the catalog and the shard map, quorums stay small.
            return Ok(voters.into_iter().collect());
        }
        let me = self.node_id;
        let waited = self
            .raft
            .wait(Some(Duration::from_millis(LEARNER_CATCH_UP_WAIT_MS)))
            .metrics(
                |m| {
                    // Leadership lost: stop waiting, the check below says so.
                    if m.current_leader != Some(me) {
                        return true;
                    }
                    let Some(repl) = &m.replication else { return false };
                    let matched = match repl.get(&id) {
                        Some(Some(l)) => l.index,
                        _ => return false,
                    };
                    m.last_log_index.unwrap_or(0).saturating_sub(matched) <= LEARNER_LAG_MAX
                },
                "the new learner caught up",
            )
            .await;
        match waited {
            Ok(m) if m.current_leader != Some(me) => {
                return Err(ProposeError::ForwardToLeader { leader_id: m.current_leader, leader_addr: None });
            }
            Ok(_) => {}
            Err(_) => {
                return Err(ProposeError::Unavailable(format!(
                    "node {id} at {addr} did not catch up within {LEARNER_CATCH_UP_WAIT_MS} ms (is it running, reachable there, \
                     with a certificate of the cluster's CA?); it stays a learner: remove it with RemoveNode, or fix it and add it \
                     again"
                )));
            }
        }
        let r = self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map_err(write_error)?;
        Ok(r.membership.map(|m| m.voter_ids().collect()).unwrap_or_default())
    }

    /// Removes a node from the voters and the learners. A voter that leaves while learners
    /// follow is replaced by one of them (the lowest id), promoted first.
    pub async fn remove_node(&self, id: NodeId) -> Result<Vec<NodeId>, ProposeError> {
        self.lease_for_write().await;
        let (voters, learners): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
            let m = self.raft.metrics().borrow_watched().membership_config.membership().clone();
            (m.voter_ids().collect(), m.learner_ids().collect())
        };
        if learners.contains(&id) {
            let r = self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await.map_err(write_error)?;
            return Ok(r.membership.map(|m| m.voter_ids().collect()).unwrap_or_default());
        }
        if voters.contains(&id) {
            if let Some(&promoted) = learners.iter().next() {
                self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([promoted])), false).await.map_err(write_error)?;
            }
        }
        let r = self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await.map_err(write_error)?;
        Ok(r.membership.map(|m| m.voter_ids().collect()).unwrap_or_default())
    }

    /// Waits at most `limit` until this replica knows a leader (a group just created, or
    /// between elections); returns it, or None.
    pub async fn wait_for_leader(&self, limit: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let known = async {
            loop {
                if let Some(l) = rx.borrow_watched().current_leader {
                    return Some(l);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(limit, known).await.ok().flatten()
    }

    /// The group's leader, as far as this node knows.
    pub fn status_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The group's leader as far as this replica knows, or else the node its committed
    /// vote names: the leader it followed before it restarted (a replica that restarts
    /// knows no current leader until it hears one).
    pub fn last_known_leader(&self) -> Option<NodeId> {
        use openraft::vote::RaftLeaderId;
        let m = self.raft.metrics().borrow_watched().clone();
        m.current_leader.or_else(|| m.vote.is_committed().then(|| *m.vote.leader_id().node_id()))
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
            asleep: self.sleep.is_asleep(),
        }
    }

    /// The members of the group (voters and learners) with their addresses.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let members = m.membership().nodes().map(|(n, node)| (*n, node.addr.clone())).collect();
        members
    }

    /// The address of a member, if it is in the membership.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let addr = m.membership().nodes().find(|(n, _)| **n == id).map(|(_, node)| node.addr.clone());
        addr
    }
}

/// A Raft request must be the request of the node its connection's certificate names
/// (`sender`): its vote names the candidate or the leader that sends it.
fn check_sender(what: &str, sender: Option<NodeId>, claimed: NodeId) -> Result<(), RaftNodeError> {
    match sender {
        Some(s) if s != claimed => {
            Err(RaftNodeError::Forbidden(format!("{what}: the request is node {claimed}'s, the connection's certificate is node {s}'s")))
        }
        _ => Ok(()),
    }
}

/// A change of a data shard's replicas ([`RaftNode::change_replicas`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ReplicaChange {
    Add { node: NodeId, addr: String },
    Remove { node: NodeId },
}

/// Longest wait for a new learner to catch up before it is made a voter, milliseconds;
/// past it the change fails and the node stays a learner.
pub const LEARNER_CATCH_UP_WAIT_MS: u64 = 30_000;
/// A learner this many entries or fewer behind the leader's last log has caught up.
pub const LEARNER_LAG_MAX: u64 = 1_000;

/// Longest wait for one replica change (a learner catching up included), milliseconds.
pub const CHANGE_REPLICAS_TIMEOUT_MS: u64 = 60_000;

/// Most leaders [`RaftNode::propose_anywhere`] tries in turn, count.
pub const PROPOSE_HOPS_MAX: usize = 3;
/// Longest wait for a proposal sent to another node's leader, milliseconds.
pub const PROPOSE_TIMEOUT_MS: u64 = 10_000;

/// The data shards this node holds: every group with a stored shard state.
/// Removes what a crash left of groups retired here (the source of a merge whose commit
/// was durable when the node stopped, before its registry removed the group): a log stream
/// without a shard state, and its Raft state in `raft_meta`.
fn remove_leftover_groups(engine: &Engine, log: &kho_engine::shared_log::SharedLog, snapshots_dir: &Path) -> Result<(), RaftNodeError> {
    let shards: std::collections::BTreeSet<GroupId> = local_shards(engine)?.into_iter().collect();
    for id in log.streams() {
        if id == META_GROUP || shards.contains(&id) {
            continue;
        }
        tracing::info!(group = id, "removing the log and Raft state of a group retired before the node stopped");
        let mut batch = engine.batch();
        batch.delete_range(kho_engine::Cf::RaftMeta, &crate::log_store::meta_key::key(id, 0), &crate::log_store::meta_key::key(id + 1, 0));
        engine.write(batch, true)?;
        log.remove_stream(id)?;
        let _ = std::fs::remove_dir_all(snapshots_dir.join(id.to_string()));
    }
    Ok(())
}

fn local_shards(engine: &Engine) -> Result<Vec<GroupId>, RaftNodeError> {
    let mut out = Vec::new();
    engine.snapshot().for_each(kho_engine::Cf::RaftMeta, &[], None, |k, _| {
        if k.len() == 9 && k[8] == crate::log_store::meta_key::SHARD_STATE {
            out.push(u64::from_be_bytes(k[..8].try_into().expect("8 bytes")));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Starts the group registry: opens the groups of this node's shards as the shard map
/// names them, retires merged ones and indexes ranges: after every hint of the groups'
/// apply (over the groups hinted), [`REGISTRY_POLL_MS`] after a round that left something
/// pending, and over everything every [`REGISTRY_FULL_ROUND_MS`].
fn spawn_registry(node: std::sync::Weak<RaftNode>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(hints) = node.upgrade().map(|n| n.opener.registry_hints.clone()) else {
            return;
        };
        let mut next_full = tokio::time::Instant::now();
        loop {
            let Some(n) = node.upgrade() else { return };
            let full = tokio::time::Instant::now() >= next_full;
            let started = std::time::Instant::now();
            let failed = n.registry_round(full, None).await.map_err(|e| {
                tracing::warn!(error = %e, "could not open the groups of this node's shards; retrying");
            });
            tracing::debug!(full, took_ms = started.elapsed().as_millis() as u64, "registry round");
            if full {
                next_full = tokio::time::Instant::now() + Duration::from_millis(REGISTRY_FULL_ROUND_MS);
            }
            // Something left to do (a failure, a shard not opened or not initialized yet):
            // look again soon (a failed round asked its successor to look at everything).
            let pending = failed.is_err()
                || !n.deferred.lock().expect("deferred lock").is_empty()
                || !n.uninitialized.lock().expect("uninitialized lock").is_empty();
            drop(n);
            let wait_until =
                if pending { next_full.min(tokio::time::Instant::now() + Duration::from_millis(REGISTRY_POLL_MS)) } else { next_full };
            // A hint (a group's apply changed a shard), the poll, or the full round's time.
            tokio::select! {
                _ = hints.changed() => {}
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    })
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) if f.reason == openraft::errors::ForwardReason::LeaseExpired => {
            ProposeError::Unavailable(
                "this node leads the group but has not heard from a quorum of it within its lease; nothing was written".into(),
            )
        }
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
