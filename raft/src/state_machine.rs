//! The state machine of one group: applies commands to the data column family, keeps the
//! catalog, builds and installs snapshots.
//!
//! Invariants:
//! - applying an entry (or a run of consecutive blind writes, which read nothing) writes its
//!   data changes and the new applied log id in one atomic RocksDB batch, so after a crash
//!   the data is exactly that of some applied prefix; clients are answered after the write;
//! - applied writes need no sync: the log entries they come from are durable, and an
//!   applied state lost in a crash is re-applied from the log (the WAL recovers a
//!   consistent prefix, and a purge is always written after the applies it relies on);
//! - a snapshot is a point-in-time view of the group's key range whose applied id and
//!   membership are read from the same view, so its data and its applied id agree, and
//!   the live DB is flushed up to it before it is returned (the log is never purged past
//!   the flushed applied index, [`crate::flushed_applied`]); see [`crate::snapshot_store`];
//! - installing a received snapshot is redone from its file after a crash (a marker is
//!   kept in `raft_meta` until the install's final synced batch).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::{Stream, TryStreamExt};
use kho_engine::crypto::{LogCipher, MasterKey};
use kho_engine::keys::{self, TenantId};
use kho_engine::{value, Cf, Engine};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use crate::access;
use crate::audit;
use crate::catalog::{self, Catalog, TableMeta};
use crate::codec;
use crate::command::{AppError, CasOutcome, CellOp, CellWrite, Command, NewTenantKeys, Outcome, Replacement, Response};
use crate::flushed_applied::FlushedApplied;
use crate::keyring::{self, Job, KeyRecord, KeyState, TenantKeys};
use crate::load;
use crate::log_store::{meta_key, GroupLog};
use crate::shard::{Epoch, Replica, ShardDesc, ShardState};
use crate::snapshot::{SnapshotData, SnapshotReader, INSTALLING_FILE};
use crate::snapshot_store::{self, Snapshot};
use crate::{GroupId, KeyRange, LogId, SnapshotMeta, StoredMembership, TypeConfig};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// What a group is: the meta group (catalog and shard map) or a data shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Meta,
    Data,
}

/// The part of a group's state that request handlers read: the engine, the catalog (the
/// meta group's) and the shard state (a data shard's).
pub struct SmState {
    pub group: GroupId,
    pub kind: GroupKind,
    pub engine: Engine,
    /// The meta group's catalog and shard map; empty in a data shard.
    pub catalog: RwLock<Catalog>,
    /// A data shard's descriptor and dropped tables; None in the meta group.
    shard: RwLock<Option<ShardState>>,
    /// Bumped after every applied change of the catalog or of the shard state (and after a
    /// snapshot install), for whoever follows them (the node's group registry).
    changes: tokio::sync::watch::Sender<u64>,
    /// The group's key range in the data column family, as stored in `raft_meta` (tag
    /// `RANGE`; the whole key space when none is). Changed by a snapshot install (and by
    /// splits and merges to come), while readers are excluded.
    pub(crate) range: RwLock<KeyRange>,
    /// The highest applied index known durable in RocksDB: the group's log is never purged
    /// past it ([`crate::flushed_applied`]).
    pub(crate) flushed_applied: Arc<FlushedApplied>,
    /// The cluster's master key, when this node has one ([encryption] config).
    pub master: Option<Arc<MasterKey>>,
    /// The log key derived from the master key: seals snapshot chunks.
    pub log_cipher: Option<LogCipher>,
    /// Readers (and snapshot builds) hold it shared while they take their point-in-time
    /// view (or make a point read); a snapshot install holds it exclusively from its first
    /// batch to its last, so no reader ever sees a half-installed group
    /// ([`SmState::read_gate`]).
    install_gate: Arc<tokio::sync::RwLock<()>>,
    /// The node's group registry: told which groups this group's apply changed (a data
    /// shard: its own range by a split, a merge or a snapshot install, and the group its
    /// batch created or removed; the meta group: the shards whose descriptor it recorded),
    /// so that it opens and retires groups and indexes their ranges. Shared by every group
    /// of the node.
    pub(crate) registry_hints: Arc<crate::registry_hints::RegistryHints>,
    /// Bytes of cells written by applied writes since the shard's size was last measured
    /// after a flush ([`crate::shard_size`]): what RocksDB's size estimate, which counts
    /// only SST files, may be missing. A hint, not replicated state.
    pub(crate) written_bytes: std::sync::atomic::AtomicU64,
    /// Whether the shard's data changed (writes, deletes, a cleared table, a split or
    /// merge) since the size checker last looked at it.
    pub(crate) size_changed: std::sync::atomic::AtomicBool,
    /// Whether an entry whose apply reads stored cells (a condition, a re-encryption step:
    /// anything but a blind write, an SST run, a blank or membership entry) was applied
    /// since the last flush made before an SST run. Such an entry, replayed after a crash
    /// on top of a later run's cells (durable once ingested), could decide otherwise; so a
    /// run is ingested only once the entries before it are durable, and this tells when a
    /// flush is needed for that (a bulk load of runs only flushes once).
    pub(crate) unflushed_reads: std::sync::atomic::AtomicBool,
    /// When the group opened here or last split or merged: automatic merges wait
    /// `sharding.split_merge_interval_ms` after it. A hint, not replicated state.
    pub(crate) reshaped_at: std::sync::Mutex<std::time::Instant>,
}

impl SmState {
    /// Records that the shard's range changed (a split or merge applied): its size is
    /// measured again, and it is not merged automatically for a while.
    fn reshaped(&self) {
        *self.reshaped_at.lock().expect("reshaped_at lock poisoned") = std::time::Instant::now();
        self.size_changed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until no snapshot install is running and keeps one from starting while the
    /// guard lives. A reader takes its engine snapshot (or makes its point read) under it;
    /// it may drop the guard once it has its snapshot.
    pub async fn read_gate(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.install_gate.clone().read_owned().await
    }

    /// [`SmState::read_gate`] for a thread outside the async runtime (a read or scan pool).
    pub fn blocking_read_gate(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.install_gate.blocking_read()
    }

    /// The group's key range in the data column family.
    pub fn range(&self) -> KeyRange {
        self.range.read().expect("range lock poisoned").clone()
    }

    /// Whether the group's key range holds `key` (without a copy of the range).
    pub fn holds(&self, key: &[u8]) -> bool {
        self.range.read().expect("range lock poisoned").contains(key)
    }

    /// A data shard's `conf_ver` and whether its descriptor lists `node` as a replica
    /// (without a copy of the state); None for the meta group.
    pub fn replica_of(&self, node: u64) -> Option<(u64, bool)> {
        let st = self.shard.read().expect("shard state lock poisoned");
        st.as_ref().map(|s| (s.desc.epoch.conf_ver, s.desc.replicas.iter().any(|r| r.node == node)))
    }

    /// The group's flushed applied index, which its log store checks every purge against
    /// ([`crate::log_store::LogStore::with_purge_bound`]).
    pub fn flushed_applied(&self) -> Arc<FlushedApplied> {
        self.flushed_applied.clone()
    }

    pub fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().expect("catalog lock poisoned")
    }

    /// Whether this data shard has cleared table `table` after a `DropTable` (its reads and
    /// writes are refused from then on).
    pub fn is_dropped(&self, table: kho_engine::keys::TableId) -> bool {
        self.shard.read().expect("shard state lock poisoned").as_ref().is_some_and(|s| s.dropped_tables.contains(&table))
    }

    /// A data shard's state (None for the meta group).
    pub fn shard(&self) -> Option<ShardState> {
        self.shard.read().expect("shard state lock poisoned").clone()
    }

    /// The group's key range in the data column family, `[start, end)`: the system
    /// tenant's for the meta group, the descriptor's for a data shard.
    pub fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let r = self.range.read().expect("range lock poisoned");
        (r.start.clone(), r.end.clone().unwrap_or_else(|| crate::key_range::PAST_EVERY_DATA_KEY.to_vec()))
    }

    /// Follows the group's changes ([`SmState::changes`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Resolves a table and a family (empty = first family).
    pub fn resolve(&self, tenant: &str, table: &str) -> Result<TableMeta, AppError> {
        self.catalog().table(tenant, table).cloned()
    }

    /// Counts the values of a tenant by key version, at one point in time. Returns the
    /// applied index of that point, values per key version, and plaintext values. Blocks
    /// while a snapshot install runs: call it off the async runtime.
    pub fn key_usage(&self, tenant: TenantId) -> io::Result<(u64, std::collections::BTreeMap<u32, u64>, u64)> {
        let gate = self.blocking_read_gate();
        let snap = self.engine.snapshot();
        drop(gate);
        let applied = match snap.get(Cf::RaftMeta, &meta_key::key(self.group, meta_key::APPLIED)).map_err(io_err)? {
            None => 0,
            Some(b) => codec::decode_opt_log_id(&b).map_err(io_err)?.map(|l| l.index).unwrap_or(0),
        };
        let (tenant_start, tenant_end) = tenant_range(tenant);
        let (range_start, range_end) = self.bounds();
        let (start, end) = (tenant_start.max(range_start), tenant_end.min(range_end));
        let mut per_version = std::collections::BTreeMap::new();
        let mut plain = 0u64;
        snap.for_each(Cf::Data, &start, Some(&end), |k, v| {
            match value::inspect(k, v)? {
                value::Stored::Plain(_) => plain += 1,
                value::Stored::Sealed { key_version } => *per_version.entry(key_version).or_insert(0u64) += 1,
            }
            Ok(true)
        })
        .map_err(io_err)?;
        Ok((applied, per_version, plain))
    }

    /// The applied log id and membership, as stored.
    pub fn applied_state(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        read_applied_state(&self.engine, self.group)
    }

    /// CRC-32 over every replicated key and value of the group, in key order, at one point
    /// in time, with the applied index of that point. Returns (applied index, crc, keys).
    /// Blocks while a snapshot install runs: call it off the async runtime.
    pub fn checksum(&self) -> io::Result<(u64, u32, u64)> {
        let gate = self.blocking_read_gate();
        let snap = self.engine.snapshot();
        drop(gate);
        // The applied id and the range of the same point in time as the data.
        let (applied, _, range) = snapshot_store::read_group_state(self.group, |k| snap.get(Cf::RaftMeta, k))?;
        let mut h = crc32fast::Hasher::new();
        let mut n = 0u64;
        snap.for_each(Cf::Data, &range.start, range.end(), |k, v| {
            h.update(&(k.len() as u32).to_be_bytes());
            h.update(k);
            h.update(&(v.len() as u32).to_be_bytes());
            h.update(v);
            n += 1;
            Ok(true)
        })
        .map_err(io_err)?;
        Ok((applied.map(|l| l.index).unwrap_or(0), h.finalize(), n))
    }
}

pub struct StateMachine {
    state: Arc<SmState>,
    /// The group's Raft log: synced up to an entry before its applied index is recorded.
    log: GroupLog,
    snapshot_dir: PathBuf,
    snapshot_chunk_bytes: usize,
}

impl StateMachine {
    /// Opens the state machine of `group`, finishing a snapshot install that a crash
    /// interrupted. `registry_hints` are the node's registry's ([`SmState`]; fresh
    /// ones where no registry listens).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        group: GroupId,
        kind: GroupKind,
        engine: Engine,
        log: GroupLog,
        snapshot_dir: PathBuf,
        snapshot_chunk_bytes: usize,
        master: Option<Arc<MasterKey>>,
        registry_hints: Arc<crate::registry_hints::RegistryHints>,
    ) -> io::Result<Self> {
        let installing = engine.get(Cf::RaftMeta, &meta_key::key(group, meta_key::INSTALLING_SNAPSHOT)).map_err(io_err)?.is_some();
        snapshot_store::prepare_dir(&snapshot_dir, installing)?;
        let log_cipher = master.as_ref().map(|m| m.log_cipher());
        let shard = match kind {
            GroupKind::Meta => None,
            // A node creates a shard's state with its replica; a group opened without one
            // (tests of the storage layer) applies no data command.
            GroupKind::Data => read_shard_state(&engine, group)?,
        };
        let range = match kind {
            // The meta group owns the system tenant's range, stored at its first open.
            GroupKind::Meta => {
                let range = KeyRange::new(tenant_range(keys::SYSTEM_TENANT).0, Some(tenant_range(keys::SYSTEM_TENANT).1));
                if snapshot_store::read_range(&engine, group)? != range {
                    let mut b = engine.batch();
                    b.put(Cf::RaftMeta, &meta_key::key(group, meta_key::RANGE), &codec::encode_key_range(&range));
                    engine.write(b, true).map_err(io_err)?;
                }
                range
            }
            GroupKind::Data => snapshot_store::read_range(&engine, group)?,
        };
        let state = Arc::new(SmState {
            group,
            kind,
            engine,
            catalog: RwLock::new(Catalog::default()),
            shard: RwLock::new(shard),
            changes: tokio::sync::watch::channel(0).0,
            range: RwLock::new(range),
            flushed_applied: Arc::new(FlushedApplied::new(None)),
            master,
            log_cipher,
            install_gate: Arc::new(tokio::sync::RwLock::new(())),
            registry_hints,
            written_bytes: std::sync::atomic::AtomicU64::new(0),
            size_changed: std::sync::atomic::AtomicBool::new(true),
            unflushed_reads: std::sync::atomic::AtomicBool::new(true),
            reshaped_at: std::sync::Mutex::new(std::time::Instant::now()),
        });
        let sm = StateMachine { state, log, snapshot_dir, snapshot_chunk_bytes };
        // Nothing reads yet: the node serves no request before its groups are open.
        let gate = sm.state.install_gate.clone();
        if installing {
            let path = sm.installing_path();
            tracing::warn!(group, path = %path.display(), "finishing a snapshot install interrupted by a crash");
            let meta = SnapshotReader::open(&path, sm.state.log_cipher.as_ref())?.meta();
            let exclusive = gate.try_write().map_err(|_| io_err("a reader holds the install gate while the group opens"))?;
            snapshot_store::install_from(&sm.state, &path, &meta, &exclusive)?;
        }
        // The applied state found at open is made durable (one flush for every group the
        // node opens) and is the group's first flushed applied index.
        let view = {
            let _shared = gate.try_read().map_err(|_| io_err("the install gate is held while the group opens"))?;
            sm.state.engine.owned_snapshot()
        };
        snapshot_store::snapshot_of_view(&sm.state, view, snapshot_chunk_bytes)?;
        sm.reload_catalog()?;
        Ok(sm)
    }

    pub fn state(&self) -> Arc<SmState> {
        self.state.clone()
    }

    /// Applies `entries` as committed entries with no client waiting, in order, and returns
    /// their responses: for tests of the apply (openraft's responders cannot be made outside
    /// it). Blocking.
    pub fn apply_and_collect(&self, entries: Vec<crate::Entry>) -> io::Result<Vec<Response>> {
        let mut responses = Vec::with_capacity(entries.len());
        self.apply_entries(entries.into_iter().map(|e| (e, None)).collect(), Some(&mut responses))?;
        Ok(responses)
    }

    /// Applies committed entries, in order (on a blocking thread: see `apply`); with
    /// `collected`, also returns every entry's response there.
    fn apply_entries(&self, entries: Vec<EntryResponder<TypeConfig>>, mut collected: Option<&mut Vec<Response>>) -> io::Result<()> {
        let group = self.state.group;
        // Consecutive blind writes (they read nothing, so they need not see each other) and
        // blank or membership entries share one RocksDB batch; their clients are answered
        // once it is written. Any other command first writes what is pending, then is
        // applied alone, as it may read what the entries before it wrote.
        let mut pending = PendingApply::new(&self.state.engine);
        for (entry, responder) in entries {
            let index = entry.log_id.index;
            let blind = match &entry.payload {
                EntryPayload::Blank => true,
                // A data shard records its replicas with the membership: applied alone.
                EntryPayload::Membership(_) => self.state.kind == GroupKind::Meta,
                EntryPayload::Normal(cmd) => is_blind_write(cmd),
            };
            if !blind {
                pending.flush(&self.state, &self.log)?;
            }
            if matches!(&entry.payload, EntryPayload::Normal(cmd) if !blind && !matches!(cmd, Command::IngestSst(_))) {
                self.state.unflushed_reads.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let mut change = None;
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Membership(m) => {
                    if let Some(mut st) = self.state.shard() {
                        // The descriptor follows the membership: every membership entry
                        // (each of a joint change's two included) is one conf_ver.
                        let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
                        let replicas: Vec<Replica> = m
                            .nodes()
                            .map(|(id, _)| if voters.contains(id) { Replica::voter(*id) } else { Replica::learner(*id) })
                            .collect();
                        // The first membership entry (the shard's creation) names the replicas
                        // the descriptor already has: only a change raises conf_ver.
                        let mut sorted = st.desc.replicas.clone();
                        sorted.sort_unstable();
                        if sorted != replicas {
                            st.desc.replicas = replicas;
                            st.desc.epoch.conf_ver += 1;
                            pending.batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &st.encode());
                            change = Some(CatalogChange::ShardState(st));
                        }
                    }
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    pending.batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::MEMBERSHIP), &codec::encode_stored_membership(&stored));
                    Outcome::Done
                }
                EntryPayload::Normal(cmd) if blind => {
                    let before = pending.batch.len();
                    let (outcome, c) = self.execute(cmd, index, &mut pending.batch)?;
                    // A blind write is refused before it writes anything (unknown table or
                    // family), so the shared batch holds nothing of it.
                    debug_assert!(!matches!(outcome, Outcome::Rejected(_)) || pending.batch.len() == before);
                    debug_assert!(c.is_none(), "a blind write changes no catalog");
                    outcome
                }
                EntryPayload::Normal(cmd) => {
                    let mut batch = self.state.engine.batch();
                    // A rejected audited command keeps its audit record.
                    let audited = matches!(cmd, Command::Audited { .. });
                    let (outcome, c) = self.execute(cmd, index, &mut batch)?;
                    if matches!(outcome, Outcome::Rejected(_)) && !audited {
                        // Nothing of a rejected command is written, only the applied index.
                        batch = self.state.engine.batch();
                    }
                    pending.batch = batch;
                    change = c;
                    outcome
                }
            };
            pending.last = Some(entry.log_id);
            if let Some(c) = collected.as_deref_mut() {
                c.push(Response { revision: index, outcome: outcome.clone() });
            }
            if let Some(r) = responder {
                pending.replies.push((r, Response { revision: index, outcome }));
            }
            if !blind || pending.is_full() {
                pending.flush(&self.state, &self.log)?;
            }
            if let Some(c) = change {
                self.apply_catalog_change(c);
            }
            // Answered only once what they changed is visible in memory too: a client that
            // created a table finds it in its next request.
            pending.answer();
        }
        pending.flush(&self.state, &self.log)?;
        pending.answer();
        Ok(())
    }

    /// Another handle on the same state machine (its state, log and files), for work moved
    /// to a blocking thread.
    fn handle(&self) -> StateMachine {
        StateMachine {
            state: self.state.clone(),
            log: self.log.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
        }
    }

    fn installing_path(&self) -> PathBuf {
        self.snapshot_dir.join(INSTALLING_FILE)
    }

    /// Reads the catalog (meta group) or the shard state (data shard) from storage again.
    fn reload_catalog(&self) -> io::Result<()> {
        match self.state.kind {
            GroupKind::Meta => {
                let cat = Catalog::load(&self.state.engine, self.state.master.as_deref()).map_err(io_err)?;
                *self.state.catalog.write().expect("catalog lock poisoned") = cat;
                self.state.registry_hints.everything();
            }
            GroupKind::Data => {
                let st = read_shard_state(&self.state.engine, self.state.group)?;
                *self.state.shard.write().expect("shard state lock poisoned") = st;
            }
        }
        self.state.changed();
        Ok(())
    }

    /// Applies one command into `batch`; returns the outcome and a catalog change to make
    /// visible once the batch is written.
    fn execute(&self, cmd: Command, revision: u64, batch: &mut kho_engine::WriteBatch) -> io::Result<(Outcome, Option<CatalogChange>)> {
        let data_command = cmd.is_data_command();
        match (self.state.kind, data_command) {
            (GroupKind::Data, true) => return self.execute_data(cmd, revision, batch),
            (GroupKind::Meta, false) => {}
            (kind, _) => {
                return Ok((
                    Outcome::Rejected(AppError::wrong_shard(format!("`{cmd}` reached group {} ({kind:?})", self.state.group))),
                    None,
                ))
            }
        }
        let engine = &self.state.engine;
        match cmd {
            Command::Audited { record, cmd } => {
                if cmd.is_data_command() || matches!(*cmd, Command::Audit { .. } | Command::Audited { .. }) {
                    return Ok((Outcome::Rejected(AppError::invalid("an audited command must be a catalog command")), None));
                }
                let (outcome, change) = self.execute(*cmd, revision, batch)?;
                let result = match &outcome {
                    Outcome::Rejected(e) => {
                        // Nothing of a rejected command is written, only its record.
                        *batch = engine.batch();
                        format!("rejected: {}", e.message)
                    }
                    _ => "done".to_string(),
                };
                let head = self.state.catalog().audit_head;
                let (seq, entry, head) = head.append(revision, record, result);
                batch.put_value(&audit::entry_key(seq), &entry.encode());
                batch.put_value(&catalog::counter_key(audit::AUDIT_HEAD), &head.encode());
                let audit = CatalogChange::AuditHead(head);
                let change = match change {
                    Some(c) => CatalogChange::Many(vec![c, audit]),
                    None => audit,
                };
                Ok((outcome, Some(change)))
            }
            Command::Audit { records } => {
                if records.len() > audit::AUDIT_RECORDS_PER_COMMAND_MAX
                    || records.iter().any(|r| r.len() > audit::AUDIT_RECORD_BYTES_MAX || audit::Record::decode(r).is_err())
                {
                    return Ok((Outcome::Rejected(AppError::invalid("audit: too many, oversized or malformed records")), None));
                }
                let mut head = self.state.catalog().audit_head;
                for r in records {
                    let (seq, entry, next) = head.append(revision, r.into_vec(), String::new());
                    batch.put_value(&audit::entry_key(seq), &entry.encode());
                    head = next;
                }
                batch.put_value(&catalog::counter_key(audit::AUDIT_HEAD), &head.encode());
                Ok((Outcome::Done, Some(CatalogChange::AuditHead(head))))
            }
            cmd => self.execute_catalog(cmd, revision, batch),
        }
    }

    /// A catalog command of the meta group ([`StateMachine::execute`]).
    fn execute_catalog(
        &self,
        cmd: Command,
        revision: u64,
        batch: &mut kho_engine::WriteBatch,
    ) -> io::Result<(Outcome, Option<CatalogChange>)> {
        let engine = &self.state.engine;
        let cat = self.state.catalog();
        match cmd {
            Command::CreateTenant { name, keys, replicas } => {
                if let Err(e) = catalog::check_name("tenant", &name) {
                    return Ok((Outcome::Rejected(e), None));
                }
                if cat.tenants.contains_key(&name) {
                    return Ok((Outcome::Rejected(AppError::already_exists(format!("tenant `{name}` already exists"))), None));
                }
                let id = next_id(engine, batch, catalog::NEXT_TENANT_ID)?;
                let shard_id = next_ids64(engine, batch, catalog::NEXT_SHARD_ID, 1)?;
                let Some((start, end)) = crate::shard::tenant_range(id) else {
                    return Err(io_err("tenant id space exhausted"));
                };
                let desc = ShardDesc {
                    id: shard_id,
                    tenant: id,
                    start,
                    end,
                    replicas: replicas.iter().map(|n| Replica::voter(*n)).collect(),
                    epoch: Epoch::INITIAL,
                };
                if let Err(e) = desc.validate() {
                    return Ok((Outcome::Rejected(AppError::invalid(format!("tenant `{name}`'s first shard: {e}"))), None));
                }
                if cat.shards.get(shard_id).is_some() || cat.shards.shards_of_tenant(id).next().is_some() {
                    // The counters never hand out an id twice: stored state contradicting them
                    // is refused here, on every replica alike, rather than applied.
                    return Err(io_err(format!("catalog counters are behind the shard map (shard {shard_id}, tenant {id})")));
                }
                batch.put_value(&catalog::shard_key(shard_id), &desc.encode());
                batch.put_value(&catalog::tenant_key(&name), &catalog::encode_tenant_record(id, keys.is_some()));
                let tenant_keys = match keys {
                    None => None,
                    Some(NewTenantKeys { master_key_id, hash_key, data_key }) => {
                        let mut records = std::collections::BTreeMap::new();
                        for (version, wrapped) in [(keyring::HASH_KEY_VERSION, hash_key), (1, data_key)] {
                            let rec = KeyRecord { state: KeyState::Current, created_revision: revision, master_key_id, wrapped };
                            batch.put_value(&keyring::key_record_key(id, version), &rec.encode());
                            records.insert(version, rec);
                        }
                        Some(self.unwrap_keys(&name, id, true, &records)?)
                    }
                };
                Ok((Outcome::Done, Some(CatalogChange::Tenant(name, id, tenant_keys, desc))))
            }
            Command::RotateKey { tenant, version, master_key_id, data_key, hash_key } => {
                let Some(&tenant_id) = cat.tenants.get(&tenant) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` does not exist"))), None));
                };
                let old = cat.keys.get(&tenant_id).map(|k| (**k).clone());
                let latest = old.as_ref().map(TenantKeys::latest_version).unwrap_or(0);
                if version != latest + 1 {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "tenant `{tenant}`: key version {version} was proposed but the latest is {latest} (a concurrent rotation); retry"
                        ))),
                        None,
                    ));
                }
                let mut records = self.key_records(tenant_id)?;
                for rec in records.iter_mut().filter(|(v, r)| **v != keyring::HASH_KEY_VERSION && r.state == KeyState::Current) {
                    rec.1.state = KeyState::Retired;
                    batch.put_value(&keyring::key_record_key(tenant_id, *rec.0), &rec.1.encode());
                }
                let new = KeyRecord { state: KeyState::Current, created_revision: revision, master_key_id, wrapped: data_key };
                batch.put_value(&keyring::key_record_key(tenant_id, version), &new.encode());
                records.insert(version, new);
                if let Some(wrapped) = hash_key.filter(|_| !records.contains_key(&keyring::HASH_KEY_VERSION)) {
                    let rec = KeyRecord { state: KeyState::Current, created_revision: revision, master_key_id, wrapped };
                    batch.put_value(&keyring::key_record_key(tenant_id, keyring::HASH_KEY_VERSION), &rec.encode());
                    records.insert(keyring::HASH_KEY_VERSION, rec);
                }
                let created_encrypted = old.as_ref().is_some_and(|k| k.created_encrypted);
                let keys = self.unwrap_keys(&tenant, tenant_id, created_encrypted, &records)?;
                Ok((Outcome::Done, Some(CatalogChange::Keys(tenant_id, keys))))
            }
            Command::StartReencrypt { tenant } => {
                let Some(&tenant_id) = cat.tenants.get(&tenant) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` does not exist"))), None));
                };
                let Some(target) = cat.keys.get(&tenant_id).and_then(|k| k.current().map(|(v, _)| v)) else {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "tenant `{tenant}` is not encrypted: `kho keys rotate` gives it a key first"
                        ))),
                        None,
                    ));
                };
                let resumed = cat.jobs.get(&tenant_id).filter(|j| !j.done && j.target == target).cloned();
                let job = resumed.clone().unwrap_or(Job { target, ..Default::default() });
                batch.put_value(&keyring::job_key(tenant_id), &job.encode());
                Ok((Outcome::Job { target, resumed: resumed.is_some() }, Some(CatalogChange::Job(tenant_id, job))))
            }
            Command::JobProgress { tenant, target, cursor, next_cursor, visited, rewritten } => {
                let Some(&tenant_id) = cat.tenants.get(&tenant) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` does not exist"))), None));
                };
                let mut job = match cat.jobs.get(&tenant_id) {
                    Some(j) if !j.done && j.target == target && j.cursor == cursor => j.clone(),
                    _ => {
                        return Ok((
                            Outcome::Rejected(AppError::failed_precondition(format!(
                                "tenant `{tenant}`: no unfinished re-encryption to version {target} at this cursor"
                            ))),
                            None,
                        ))
                    }
                };
                job.visited += visited;
                job.rewritten += rewritten;
                job.done = next_cursor.is_empty();
                job.cursor = next_cursor;
                batch.put_value(&keyring::job_key(tenant_id), &job.encode());
                Ok((Outcome::Job { target, resumed: true }, Some(CatalogChange::Job(tenant_id, job))))
            }
            Command::UpdateShard { desc } => match cat.shards.check_report(&desc) {
                Ok(true) => {
                    batch.put_value(&catalog::shard_key(desc.id), &desc.encode());
                    Ok((Outcome::Done, Some(CatalogChange::Shard(desc))))
                }
                Ok(false) => Ok((Outcome::Done, None)),
                Err(e) => Ok((Outcome::Rejected(AppError::invalid(e.to_string())), None)),
            },
            Command::RecordSplit { pieces } => match cat.shards.check_split(&pieces) {
                Ok(true) => {
                    for p in &pieces {
                        batch.put_value(&catalog::shard_key(p.id), &p.encode());
                    }
                    Ok((Outcome::Done, Some(CatalogChange::Split(pieces))))
                }
                Ok(false) => Ok((Outcome::Done, None)),
                Err(e) => Ok((Outcome::Rejected(e.into()), None)),
            },
            Command::RecordShards { pieces } => match cat.shards.check_tiling(&pieces) {
                Ok(true) => {
                    let (start, end) = (&pieces[0].start, &pieces[pieces.len() - 1].end);
                    for gone in cat.shards.covering(start, end).iter().filter(|c| !pieces.iter().any(|p| p.id == c.id)) {
                        batch.delete(Cf::Data, &catalog::shard_key(gone.id));
                    }
                    for p in &pieces {
                        batch.put_value(&catalog::shard_key(p.id), &p.encode());
                    }
                    Ok((Outcome::Done, Some(CatalogChange::Tiling(pieces))))
                }
                Ok(false) => Ok((Outcome::Done, None)),
                Err(e) => Ok((Outcome::Rejected(e.into()), None)),
            },
            Command::AllocShardIds { count } => {
                if count == 0 || count > crate::command::SHARD_IDS_ALLOC_MAX {
                    return Ok((
                        Outcome::Rejected(AppError::invalid(format!(
                            "count: {count} shard ids asked for; 1 to {} at a time",
                            crate::command::SHARD_IDS_ALLOC_MAX
                        ))),
                        None,
                    ));
                }
                let first = next_ids64(engine, batch, catalog::NEXT_SHARD_ID, count)?;
                Ok((Outcome::ShardIds { first, count }, None))
            }
            Command::DestroyKey { tenant, version } => {
                let Some(&tenant_id) = cat.tenants.get(&tenant) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` does not exist"))), None));
                };
                let Some(keys) = cat.keys.get(&tenant_id) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` has no keys"))), None));
                };
                let refuse = |why: String| Ok((Outcome::Rejected(AppError::failed_precondition(why)), None));
                match keys.versions.get(&version).map(|v| v.state) {
                    None => {
                        return Ok((
                            Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` has no key version {version}"))),
                            None,
                        ))
                    }
                    Some(KeyState::Destroyed) => return refuse(format!("tenant `{tenant}` key version {version} is already destroyed")),
                    Some(KeyState::Current) => return refuse(format!("tenant `{tenant}` key version {version} is current; rotate first")),
                    Some(KeyState::Retired) => {}
                }
                if cat.jobs.get(&tenant_id).is_some_and(|j| !j.done && j.target == version) {
                    return refuse(format!("tenant `{tenant}`: a re-encryption to key version {version} is still running"));
                }
                let mut records = self.key_records(tenant_id)?;
                let rec = records.get_mut(&version).ok_or_else(|| io_err("key version in memory but not stored"))?;
                rec.state = KeyState::Destroyed;
                rec.wrapped.clear();
                batch.put_value(&keyring::key_record_key(tenant_id, version), &rec.encode());
                let keys = self.unwrap_keys(&tenant, tenant_id, keys.created_encrypted, &records)?;
                Ok((Outcome::Done, Some(CatalogChange::Keys(tenant_id, keys))))
            }
            Command::CreateTable { tenant, name, families, hashed_row_keys } => {
                let Some(&tenant_id) = cat.tenants.get(&tenant) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("tenant `{tenant}` does not exist"))), None));
                };
                if let Err(e) = check_table(&name, &families) {
                    return Ok((Outcome::Rejected(e), None));
                }
                if cat.tables.contains_key(&(tenant.clone(), name.clone())) {
                    return Ok((Outcome::Rejected(AppError::already_exists(format!("table `{tenant}/{name}` already exists"))), None));
                }
                if hashed_row_keys && cat.keys.get(&tenant_id).is_none_or(|k| k.hasher.is_none()) {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "hashed_row_keys: tenant `{tenant}` is not encrypted, and hashed row keys need its hashing key"
                        ))),
                        None,
                    ));
                }
                let id = next_id(engine, batch, catalog::NEXT_TABLE_ID)?;
                let meta = TableMeta { tenant, tenant_id, name, id, families, hashed_row_keys };
                batch.put_value(&catalog::table_key(tenant_id, &meta.name), &meta.encode());
                Ok((Outcome::Done, Some(CatalogChange::CreateTable(meta))))
            }
            Command::DropTable { tenant, name } => {
                let meta = match cat.table(&tenant, &name) {
                    Ok(m) => m.clone(),
                    Err(e) => return Ok((Outcome::Rejected(e), None)),
                };
                batch.delete(Cf::Data, &catalog::table_key(meta.tenant_id, &name));
                batch.put_value(&catalog::dropped_table_key(meta.tenant_id, meta.id), b"");
                Ok((Outcome::Done, Some(CatalogChange::DropTable(tenant, name, meta.tenant_id, meta.id))))
            }
            Command::CreateGrant { grant } => self.execute(Command::AddGrant { grant: grant.into() }, revision, batch),
            Command::AddGrant { grant } => {
                if let Err(e) = grant.check() {
                    return Ok((Outcome::Rejected(e), None));
                }
                if !cat.tenants.contains_key(&grant.tenant) {
                    return Ok((
                        Outcome::Rejected(AppError::not_found(format!("grant.tenant: tenant `{}` does not exist", grant.tenant))),
                        None,
                    ));
                }
                if !grant.table.is_empty() {
                    let meta = match cat.table(&grant.tenant, &grant.table) {
                        Ok(m) => m,
                        Err(e) => return Ok((Outcome::Rejected(AppError::not_found(format!("grant.table: {}", e.message))), None)),
                    };
                    if !grant.family.is_empty() && meta.family_id(&grant.family).is_none() {
                        return Ok((
                            Outcome::Rejected(AppError::not_found(format!(
                                "grant.family: column family `{}` does not exist in table `{}/{}`",
                                grant.family, grant.tenant, grant.table
                            ))),
                            None,
                        ));
                    }
                }
                if cat.access.grants.len() >= access::GRANTS_MAX {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "the cluster holds {} grants, the limit (GRANTS_MAX): revoke some first",
                            access::GRANTS_MAX
                        ))),
                        None,
                    ));
                }
                if cat.access.grant_count_of(&grant.principal) >= access::GRANTS_PER_PRINCIPAL_MAX {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "principal `{}` holds {} grants, the limit (GRANTS_PER_PRINCIPAL_MAX): revoke some, or grant a wider scope",
                            grant.principal,
                            access::GRANTS_PER_PRINCIPAL_MAX
                        ))),
                        None,
                    ));
                }
                let id = next_ids64(engine, batch, access::NEXT_GRANT_ID, 1)?;
                let grant = access::Grant { id, version: revision, ..grant };
                batch.put_value(&access::grant_key(id), &grant.encode());
                Ok((Outcome::Granted { id }, Some(CatalogChange::Grant(grant))))
            }
            Command::RevokeGrant { id } => {
                if !cat.access.grants.contains_key(&id) {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("grant {id} does not exist"))), None));
                }
                batch.delete(Cf::Data, &access::grant_key(id));
                Ok((Outcome::Done, Some(CatalogChange::RevokeGrant(id))))
            }
            Command::CreateToken { token } => {
                if let Err(e) = access::check_principal("principal", &token.principal) {
                    return Ok((Outcome::Rejected(e), None));
                }
                if !access::is_token_id(&token.id) || token.note.len() > access::TOKEN_NOTE_BYTES_MAX {
                    return Ok((Outcome::Rejected(AppError::invalid("token: malformed id or note")), None));
                }
                if cat.access.tokens.contains_key(&token.id) {
                    return Ok((Outcome::Rejected(AppError::already_exists(format!("token {} exists", token.id))), None));
                }
                if cat.access.tokens.len() >= access::TOKENS_MAX {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "the cluster holds {} tokens, the limit (TOKENS_MAX)",
                            access::TOKENS_MAX
                        ))),
                        None,
                    ));
                }
                batch.put_value(&access::token_key(&token.id), &token.encode());
                Ok((Outcome::Done, Some(CatalogChange::Token(token))))
            }
            Command::RevokeToken { id } => {
                let Some(t) = cat.access.tokens.get(&id) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("token {id} does not exist"))), None));
                };
                let t = access::Token { revoked: true, ..t.clone() };
                batch.put_value(&access::token_key(&id), &t.encode());
                Ok((Outcome::Done, Some(CatalogChange::Token(t))))
            }
            Command::OpenSession { session } => {
                if let Err(e) = session.check() {
                    return Ok((Outcome::Rejected(e), None));
                }
                if cat.access.sessions.contains_key(&session.id) {
                    return Ok((Outcome::Rejected(AppError::already_exists(format!("access session {} exists", session.id))), None));
                }
                let now = session.opened_at_ms;
                let limit = cat.access.session_limit(
                    &session.principal,
                    now,
                    &session.tenant,
                    &session.table,
                    &session.family,
                    &session.qualifiers,
                );
                let Some(limit) = limit else {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "principal `{}` holds no live grant that requires an access session and covers {}",
                            session.principal,
                            session.scope()
                        ))),
                        None,
                    ));
                };
                let asked = session.expires_at_ms - session.opened_at_ms;
                if asked > limit {
                    return Ok((
                        Outcome::Rejected(AppError::invalid(format!(
                            "duration_ms: {asked} ms exceeds the {limit} ms its grant allows (session_duration_max_ms)"
                        ))),
                        None,
                    ));
                }
                if cat.access.open_sessions_of(&session.principal, now) >= access::SESSIONS_PER_PRINCIPAL_MAX {
                    return Ok((
                        Outcome::Rejected(AppError::failed_precondition(format!(
                            "principal `{}` has {} access sessions open, the limit (SESSIONS_PER_PRINCIPAL_MAX): close some first",
                            session.principal,
                            access::SESSIONS_PER_PRINCIPAL_MAX
                        ))),
                        None,
                    ));
                }
                let mut changes = Vec::new();
                if cat.access.sessions.len() >= access::SESSIONS_MAX {
                    let gone = cat.access.sessions_to_prune(now, access::SESSIONS_MAX - 1);
                    if gone.is_empty() {
                        return Ok((
                            Outcome::Rejected(AppError::failed_precondition(format!(
                                "{} access sessions are open, the limit (SESSIONS_MAX): close some first",
                                access::SESSIONS_MAX
                            ))),
                            None,
                        ));
                    }
                    for id in &gone {
                        batch.delete(Cf::Data, &access::session_key(id));
                    }
                    changes.push(CatalogChange::SessionsPruned(gone));
                }
                let session = access::Session { version: revision, ..session };
                batch.put_value(&access::session_key(&session.id), &session.encode());
                changes.push(CatalogChange::Session(session));
                Ok((Outcome::Done, Some(CatalogChange::Many(changes))))
            }
            Command::CloseSession { id, closed_at_ms, closed_by } => {
                let Some(s) = cat.access.sessions.get(&id) else {
                    return Ok((Outcome::Rejected(AppError::not_found(format!("access session {id} does not exist"))), None));
                };
                if s.closed_at_ms != 0 {
                    return Ok((Outcome::Rejected(AppError::failed_precondition(format!("access session {id} is already closed"))), None));
                }
                let s = access::Session { closed_at_ms: closed_at_ms.max(1), closed_by, ..s.clone() };
                batch.put_value(&access::session_key(&id), &s.encode());
                Ok((Outcome::Done, Some(CatalogChange::Session(s))))
            }
            Command::PutLoadJob { job, op, by_admin } => Ok((self.put_load_job(job, op, by_admin, batch)?, None)),
            Command::Write(_)
            | Command::IngestSst(_)
            | Command::ClearTable { .. }
            | Command::Reseal { .. }
            | Command::Split { .. }
            | Command::PrepareMerge { .. }
            | Command::CommitMerge { .. }
            | Command::RollbackMerge { .. } => {
                unreachable!("dispatched to execute_data")
            }
            Command::Audit { .. } | Command::Audited { .. } => unreachable!("dispatched in execute"),
        }
    }

    /// Applies a [`Command::PutLoadJob`] (meta group; applied alone, so the engine holds
    /// every entry before it).
    fn put_load_job(
        &self,
        mut job: load::LoadJob,
        op: load::LoadJobOp,
        by_admin: bool,
        batch: &mut kho_engine::WriteBatch,
    ) -> io::Result<Outcome> {
        use load::LoadJobOp;
        if let Err(e) = job.check() {
            return Ok(Outcome::Rejected(e));
        }
        let engine = &self.state.engine;
        let key = load::job_key(&job.id);
        let old = match engine.get_value(&key).map_err(io_err)? {
            Some(v) => Some(load::LoadJob::decode(&v).map_err(|e| io_err(kho_engine::Error::Corruption { what: e }))?),
            None => None,
        };
        let count_key = crate::catalog::counter_key(load::LOAD_JOBS_COUNTER);
        let count = match engine.get_value(&count_key).map_err(io_err)? {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| io_err(kho_engine::Error::Corruption { what: "load job counter is not 8 bytes".into() }))?,
            ),
            None => 0,
        };
        let rejected = |e: AppError| Ok(Outcome::Rejected(e));
        match (op, old) {
            (LoadJobOp::Create, Some(_)) => return rejected(AppError::already_exists(format!("load job `{}` exists", job.id))),
            (LoadJobOp::Create, None) => {
                if count >= load::LOAD_JOBS_MAX {
                    return rejected(AppError::failed_precondition(format!(
                        "the cluster keeps {count} load jobs, the limit (LOAD_JOBS_MAX): forget finished ones with `kho load forget`"
                    )));
                }
                job.created_at_ms = job.updated_at_ms;
                batch.put_value(&count_key, &(count + 1).to_be_bytes());
            }
            (_, None) => return rejected(AppError::not_found(format!("load job `{}` does not exist", job.id))),
            // Only its owner (or a cluster admin) runs, resumes or forgets a job; to anyone
            // else it does not exist.
            (_, Some(old)) if old.owner != job.owner && !by_admin => {
                return rejected(AppError::not_found(format!("load job `{}` does not exist (or is another principal's)", job.id)))
            }
            (_, Some(old)) if (old.tenant.as_str(), old.table.as_str()) != (job.tenant.as_str(), job.table.as_str()) => {
                return rejected(AppError::invalid(format!(
                    "load job `{}` loads {}/{}, not {}/{}",
                    job.id, old.tenant, old.table, job.tenant, job.table
                )));
            }
            (LoadJobOp::Update, Some(old)) if old.run != job.run => {
                return rejected(AppError::failed_precondition(format!(
                    "load job `{}` was taken over by another run ({}, at {} ms since the epoch): this loader stops",
                    job.id, old.run, old.updated_at_ms
                )));
            }
            (LoadJobOp::Delete, Some(_)) => {
                batch.delete(kho_engine::Cf::Data, &key);
                batch.put_value(&count_key, &count.saturating_sub(1).to_be_bytes());
                return Ok(Outcome::Done);
            }
            (LoadJobOp::Takeover | LoadJobOp::Update, Some(old)) => {
                // What a job loads is fixed when it is created: a takeover or an update
                // changes its run, state, checkpoint and summary only.
                job.owner = old.owner;
                job.created_at_ms = old.created_at_ms;
                job.spec = old.spec;
            }
        }
        batch.put_value(&key, &job.encode());
        Ok(Outcome::Done)
    }

    /// Applies a data shard's command: only after checking that it was routed to this
    /// shard, at its current epoch, for keys in its range.
    fn execute_data(&self, cmd: Command, index: u64, batch: &mut kho_engine::WriteBatch) -> io::Result<(Outcome, Option<CatalogChange>)> {
        let engine = &self.state.engine;
        let guard = self.state.shard.read().expect("shard state lock poisoned");
        let group = self.state.group;
        let Some(st) = guard.as_ref() else {
            return Ok((Outcome::Rejected(AppError::wrong_shard(format!("group {group} has no shard state"))), None));
        };
        let stale = |what: &str| {
            Ok((
                Outcome::Rejected(AppError::wrong_shard(format!(
                    "{what} was routed to shard {group} with a stale route: the shard is now {}",
                    st.desc
                ))),
                None,
            ))
        };
        // A write or run for a table dropped since it was proposed.
        let dropped = |what: &str, tenant: u32, table: u32| {
            Ok((
                Outcome::Rejected(AppError::not_found(format!(
                    "the table (id {tenant}/{table}) was dropped while the {what} was in flight; nothing was written"
                ))),
                None,
            ))
        };
        if let Some(m) = &st.merging {
            // A merge's source takes nothing that changes its data or range.
            if matches!(
                cmd,
                Command::Write(_) | Command::IngestSst(_) | Command::ClearTable { .. } | Command::Reseal { .. } | Command::Split { .. }
            ) {
                return Ok((
                    Outcome::Rejected(AppError::wrong_shard(format!(
                        "shard {group} is merging into shard {}: `{cmd}` is refused; it is routed again once the merge is done",
                        m.target
                    ))),
                    None,
                ));
            }
        }
        match cmd {
            Command::Write(w) => {
                if w.shard != group || w.epoch != st.desc.epoch.version || !crate::cells::within(&w, &st.desc.start, &st.desc.end) {
                    return stale("a write");
                }
                if st.dropped_tables.contains(&w.table) || w.tenant != st.desc.tenant {
                    return dropped("write", w.tenant, w.table);
                }
                if let Err(e) = crate::cells::check_in_table(&w) {
                    return Ok((Outcome::Rejected(e), None));
                }
                drop(guard);
                let written: usize = w
                    .ops
                    .iter()
                    .map(|op| match op {
                        CellOp::Put { key, stored } => key.len() + stored.len(),
                        _ => 0,
                    })
                    .sum();
                self.state.written_bytes.fetch_add(written as u64, std::sync::atomic::Ordering::Relaxed);
                self.state.size_changed.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok((execute_write(engine, w, batch)?, None))
            }
            Command::IngestSst(run) => {
                if run.shard != group || run.epoch != st.desc.epoch.version || !st.desc.contains(&run.first) || !st.desc.contains(&run.last)
                {
                    return stale("an SST run");
                }
                if st.dropped_tables.contains(&run.table) || run.tenant != st.desc.tenant {
                    return dropped("SST run", run.tenant, run.table);
                }
                let prefix = keys::table_prefix(run.tenant, run.table);
                if !run.first.starts_with(&prefix) || !run.last.starts_with(&prefix) {
                    return Ok((
                        Outcome::Rejected(AppError::invalid(format!(
                            "an SST run for table {}/{} holds keys outside the table",
                            run.tenant, run.table
                        ))),
                        None,
                    ));
                }
                if let Err(why) = crate::ingest::check(&run) {
                    return Ok((Outcome::Rejected(AppError::invalid(format!("{why}; nothing was written"))), None));
                }
                drop(guard);
                // Entries before this one that read stored cells are made durable first:
                // after a crash none is replayed on top of the ingested cells (durable once
                // ingested) to decide otherwise. Blind writes and runs replayed there write
                // the same cells, and this run, replayed after them, is again on top.
                if self.state.unflushed_reads.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    engine.flush_all().map_err(io_err)?;
                }
                if let Err(why) = crate::ingest::ingest(engine, &run)? {
                    return Ok((Outcome::Rejected(AppError::invalid(format!("{why}; nothing was written"))), None));
                }
                self.state.written_bytes.fetch_add(run.bytes, std::sync::atomic::Ordering::Relaxed);
                self.state.size_changed.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok((Outcome::Written { existed: false, cas: None }, None))
            }
            Command::ClearTable { shard, tenant, table } => {
                if shard != group || tenant != st.desc.tenant {
                    return stale("a clear-table");
                }
                if st.dropped_tables.contains(&table) {
                    return Ok((Outcome::Done, None));
                }
                let prefix = keys::table_prefix(tenant, table);
                let end = keys::prefix_end(&prefix).expect("a table prefix is never all 0xff");
                let (start, end) = (prefix.max(st.desc.start.clone()), end.min(st.desc.end.clone()));
                if start < end {
                    batch.delete_range(Cf::Data, &start, &end);
                }
                self.state.size_changed.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut next = st.clone();
                next.dropped_tables.insert(table);
                batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &next.encode());
                Ok((Outcome::Done, Some(CatalogChange::ShardState(next))))
            }
            Command::Reseal { shard, epoch, replacements } => {
                if shard != group || epoch != st.desc.epoch.version {
                    return stale("a re-encryption step");
                }
                for Replacement { key, old, .. } in &replacements {
                    if !st.desc.contains(key) {
                        return stale("a re-encryption step");
                    }
                    if engine.get(Cf::Data, key).map_err(io_err)?.as_deref() != Some(old.as_slice()) {
                        return Ok((
                            Outcome::Rejected(AppError::failed_precondition(
                                "a value changed after the re-encryption step read it; the step is prepared again",
                            )),
                            None,
                        ));
                    }
                }
                for Replacement { key, new, .. } in replacements {
                    batch.put(Cf::Data, &key, &new);
                }
                Ok((Outcome::Done, None))
            }
            Command::Split { shard, epoch, at, new_id } => {
                let membership = read_applied_state(engine, group)?.1;
                match crate::split_apply::execute_split(engine, group, st, &membership, shard, epoch, at, new_id, batch)? {
                    Ok(s) => Ok((
                        Outcome::Split { left: s.left.desc.clone(), right: s.right.clone() },
                        Some(CatalogChange::Reshaped(s.left, s.left_range, s.right.id)),
                    )),
                    Err(e) => Ok((Outcome::Rejected(e), None)),
                }
            }
            Command::PrepareMerge { shard, epoch, target, target_epoch, voters } => {
                if shard != group || epoch != st.desc.epoch.version {
                    return stale("a merge's prepare");
                }
                let membership = read_applied_state(engine, group)?.1;
                match crate::merge_apply::check_prepare(group, st, &membership, target, target_epoch, &voters) {
                    Err(e) => Ok((Outcome::Rejected(e), None)),
                    Ok(Some(prepared_at)) => Ok((Outcome::MergePrepared { index: prepared_at }, None)),
                    Ok(None) => {
                        let mut next = st.clone();
                        next.merging = Some(crate::shard::MergeState { target, target_epoch, prepare_index: index });
                        batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &next.encode());
                        tracing::info!(shard = group, target, index, "a merge's prepare applied: the shard takes no more writes");
                        Ok((Outcome::MergePrepared { index }, Some(CatalogChange::ShardState(next))))
                    }
                }
            }
            Command::CommitMerge { shard, epoch, source, prepare_index } => {
                if shard != group || epoch != st.desc.epoch {
                    return stale("a merge's commit");
                }
                let st = st.clone();
                drop(guard);
                match crate::merge_apply::execute_commit(engine, group, &st, &source, prepare_index, batch)? {
                    Ok((merged, range)) => {
                        Ok((Outcome::Merged { desc: merged.desc.clone() }, Some(CatalogChange::Reshaped(merged, range, source.id))))
                    }
                    Err(e) => Ok((Outcome::Rejected(e), None)),
                }
            }
            Command::RollbackMerge { shard, target_epoch } => {
                if shard != group {
                    return stale("a merge's rollback");
                }
                match &st.merging {
                    Some(m) if m.target_epoch == target_epoch => {
                        let mut next = st.clone();
                        next.merging = None;
                        batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &next.encode());
                        tracing::info!(shard = group, target = m.target, "a merge was rolled back: the shard takes writes again");
                        Ok((Outcome::Done, Some(CatalogChange::ShardState(next))))
                    }
                    _ => Ok((Outcome::Done, None)),
                }
            }
            other => Ok((Outcome::Rejected(AppError::wrong_shard(format!("`{other}` reached data shard {group}"))), None)),
        }
    }

    /// The stored key records of a tenant, by version.
    fn key_records(&self, tenant: TenantId) -> io::Result<std::collections::BTreeMap<u32, KeyRecord>> {
        let row = tenant.to_be_bytes();
        let (start, end) = keys::row_range(keys::SYSTEM_TENANT, keyring::SYS_TENANT_KEYS, b"", None, &row);
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in self.state.engine.scan_values(&start, &end, usize::MAX).map_err(io_err)? {
            let dk = keys::decode_data_key(&k).map_err(io_err)?;
            let version = dk.row.get(4..8).ok_or_else(|| io_err("key record row too short"))?;
            out.insert(u32::from_be_bytes(version.try_into().expect("4 bytes")), KeyRecord::decode(&v).map_err(io_err)?);
        }
        Ok(out)
    }

    /// Unwraps a tenant's keys. Failing is fatal for this node (an io error stops the
    /// group): it cannot apply the tenant's writes without them, and must not diverge.
    fn unwrap_keys(
        &self,
        tenant: &str,
        id: TenantId,
        created_encrypted: bool,
        records: &std::collections::BTreeMap<u32, KeyRecord>,
    ) -> io::Result<TenantKeys> {
        keyring::unwrap_tenant(self.state.master.as_deref(), tenant, id, created_encrypted, records).map_err(|e| {
            tracing::error!(error = %e, "cannot unwrap a tenant key; this node stops applying");
            io_err(e)
        })
    }

    fn apply_catalog_change(&self, change: CatalogChange) {
        let mut cat = self.state.catalog.write().expect("catalog lock poisoned");
        // The shards whose descriptor in the map changed: the node's registry looks at them.
        let mut recorded: Vec<GroupId> = Vec::new();
        match change {
            CatalogChange::Tenant(name, id, keys, desc) => {
                cat.tenants.insert(name, id);
                if let Some(k) = keys {
                    cat.keys.insert(id, Arc::new(k));
                }
                recorded.push(desc.id);
                if let Err(e) = cat.shards.create_tenant_shard(desc.id, desc.tenant, desc.replicas) {
                    // Checked before the batch was written: a failure here is a bug.
                    panic!("tenant {id}'s first shard, checked before, was refused: {e}");
                }
            }
            CatalogChange::Shard(desc) => {
                let id = desc.id;
                recorded.push(id);
                if let Err(e) = cat.shards.record_report(desc) {
                    panic!("shard {id}'s report, checked before, was refused: {e}");
                }
            }
            CatalogChange::Tiling(pieces) => {
                recorded.extend(pieces.iter().map(|p| p.id));
                if let Err(e) = cat.shards.record_tiling(&pieces) {
                    panic!("shard {}'s report, checked before, was refused: {e}", pieces[0].id);
                }
            }
            CatalogChange::Split(pieces) => {
                recorded.extend(pieces.iter().map(|p| p.id));
                if let Err(e) = cat.shards.record_split(&pieces) {
                    panic!("shard {}'s split report, checked before, was refused: {e}", pieces[0].id);
                }
            }
            CatalogChange::ShardState(st) => {
                drop(cat);
                *self.state.shard.write().expect("shard state lock poisoned") = Some(st);
                self.state.changed();
                return;
            }
            CatalogChange::Reshaped(st, range, other) => {
                drop(cat);
                {
                    // Readers take their view under the gate: none sees the state and the
                    // range of two different epochs.
                    let _readers_excluded = self.state.install_gate.blocking_write();
                    *self.state.shard.write().expect("shard state lock poisoned") = Some(st);
                    *self.state.range.write().expect("range lock poisoned") = range;
                }
                self.state.reshaped();
                self.state.changed();
                // The node's registry opens a split's new sibling, or retires a merge's
                // source ([`crate::node::RaftNode::ensure_shard_groups`]).
                self.state.registry_hints.groups([self.state.group, other]);
                return;
            }
            CatalogChange::Keys(id, keys) => {
                cat.keys.insert(id, Arc::new(keys));
            }
            CatalogChange::Job(id, job) => {
                cat.jobs.insert(id, job);
            }
            CatalogChange::CreateTable(meta) => cat.insert_table(meta),
            CatalogChange::Grant(g) => cat.access.insert_grant(g),
            CatalogChange::AuditHead(h) => cat.audit_head = h,
            CatalogChange::Many(changes) => {
                drop(cat);
                for c in changes {
                    self.apply_catalog_change(c);
                }
                return;
            }
            CatalogChange::RevokeGrant(id) => {
                cat.access.remove_grant(id);
            }
            CatalogChange::Token(t) => {
                cat.access.tokens.insert(t.id.clone(), t);
            }
            CatalogChange::Session(session) => {
                cat.access.sessions.insert(session.id.clone(), session);
            }
            CatalogChange::SessionsPruned(ids) => {
                for id in ids {
                    cat.access.sessions.remove(&id);
                }
            }
            CatalogChange::DropTable(tenant, name, tenant_id, table_id) => {
                cat.remove_table(&tenant, &name);
                cat.dropped_tables.insert((tenant_id, table_id));
            }
        }
        drop(cat);
        if !recorded.is_empty() {
            self.state.registry_hints.groups(recorded);
        }
        self.state.changed();
    }
}

/// Applies a resolved write into `batch`: its condition first (on stored bytes), then its
/// changes. Reads nothing but the condition's cell and, for a write of exactly one delete,
/// whether that cell existed.
fn execute_write(engine: &Engine, w: CellWrite, batch: &mut kho_engine::WriteBatch) -> io::Result<Outcome> {
    let mut cas = None;
    if let Some(c) = w.condition {
        let current = engine.get(Cf::Data, &c.key).map_err(io_err)?;
        let succeeded = current == c.expected;
        if !succeeded {
            return Ok(Outcome::Written { existed: current.is_some(), cas: Some(CasOutcome { succeeded, current }) });
        }
        cas = Some(CasOutcome { succeeded, current });
    }
    let single_delete = w.ops.len() == 1 && matches!(w.ops[0], CellOp::Delete { .. });
    let mut existed = false;
    for op in w.ops {
        match op {
            CellOp::Put { key, stored } => batch.put(Cf::Data, &key, &stored),
            CellOp::Delete { key } => {
                if single_delete {
                    existed = engine.get(Cf::Data, &key).map_err(io_err)?.is_some();
                }
                batch.delete(Cf::Data, &key);
            }
            CellOp::DeleteRange { start, end } => batch.delete_range(Cf::Data, &start, &end),
        }
    }
    Ok(Outcome::Written { existed, cas })
}

/// Most entries applied in one RocksDB batch, count.
const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
/// A shared apply batch is written once it holds this many bytes.
const APPLY_BATCH_BYTES_MAX: usize = 4 << 20;

/// Whether applying `cmd` reads nothing from the engine: an unconditional write other than
/// a single delete (which reads whether the cell existed).
fn is_blind_write(cmd: &Command) -> bool {
    match cmd {
        Command::Write(CellWrite { condition: None, ops, .. }) => !(ops.len() == 1 && matches!(ops[0], CellOp::Delete { .. })),
        _ => false,
    }
}

/// Applied entries not yet written: their data, the last log id, the answers to send (of
/// entries not yet written, and of entries written but not yet answered).
struct PendingApply {
    batch: kho_engine::WriteBatch,
    last: Option<LogId>,
    replies: Vec<(openraft::storage::ApplyResponder<TypeConfig>, Response)>,
    written: Vec<(openraft::storage::ApplyResponder<TypeConfig>, Response)>,
}

impl PendingApply {
    fn new(engine: &Engine) -> Self {
        PendingApply { batch: engine.batch(), last: None, replies: Vec::new(), written: Vec::new() }
    }

    fn is_full(&self) -> bool {
        self.replies.len() >= APPLY_BATCH_ENTRIES_MAX || self.batch.size_bytes() >= APPLY_BATCH_BYTES_MAX
    }

    /// Writes the data and the applied log id in one batch; their clients are answered by
    /// [`PendingApply::answer`], once the in-memory state reflects the batch too.
    fn flush(&mut self, state: &SmState, log: &GroupLog) -> io::Result<()> {
        let Some(last) = self.last.take() else { return Ok(()) };
        // A follower may apply entries the leader committed before its own copy is synced.
        // Any RocksDB flush may persist the applied index written here, so the log must hold
        // those entries durably first; usually the log syncer has done so already.
        if let Err(e) = log.sync_upto(last.index) {
            crate::fatal::storage_failure(&format!("sync of the Raft log in {} before an apply", log.dir().display()), &e);
        }
        let mut batch = std::mem::replace(&mut self.batch, state.engine.batch());
        batch.put(Cf::RaftMeta, &meta_key::key(state.group, meta_key::APPLIED), &codec::encode_opt_log_id(Some(&last)));
        // Without the WAL: the entries are durable in the Raft log. A crash before the next
        // flush (atomic across column families) rolls data and applied index back together,
        // to a state the log can be re-applied on: the log keeps every entry after the last
        // snapshot (a synced file), and the snapshot flushes before it is returned.
        if let Err(e) = state.engine.write_unlogged(batch) {
            // Replicas must apply every entry identically: one that cannot write its batch
            // stops rather than skip it or diverge.
            crate::fatal::storage_failure(&format!("apply batch of group {} up to index {}", state.group, last.index), &e);
        }
        self.written.append(&mut self.replies);
        Ok(())
    }

    /// Answers the clients of the entries written so far.
    fn answer(&mut self) {
        for (r, resp) in self.written.drain(..) {
            r.send(resp);
        }
    }
}

/// A change of the in-memory state made visible once its batch is written: of the
/// catalog (meta group) or of the shard state (data shard).
enum CatalogChange {
    Tenant(String, u32, Option<TenantKeys>, ShardDesc),
    Keys(TenantId, TenantKeys),
    Job(TenantId, Job),
    CreateTable(TableMeta),
    DropTable(String, String, TenantId, kho_engine::keys::TableId),
    Shard(ShardDesc),
    ShardState(ShardState),
    /// A data shard's range changed: a split (its left side; the child's state is stored
    /// only) or a merge (the neighbour's state is removed from storage, its group retired
    /// by the registry). Its new state and range, and the id of the other group (the
    /// child, or the neighbour).
    Reshaped(ShardState, KeyRange, GroupId),
    /// The meta group recorded a split report in the shard map.
    Split(Vec<ShardDesc>),
    /// The meta group recorded a report of the shards tiling a range (a merge).
    Tiling(Vec<ShardDesc>),
    Grant(access::Grant),
    RevokeGrant(u64),
    Token(access::Token),
    Session(access::Session),
    /// Ended access sessions removed to stay within SESSIONS_MAX.
    SessionsPruned(Vec<String>),
    AuditHead(audit::Head),
    /// Several changes, in order (a catalog command and its audit record).
    Many(Vec<CatalogChange>),
}

/// The key range of every value of a tenant: `[tenant u32 BE, tenant + 1 u32 BE)`.
pub fn tenant_range(tenant: TenantId) -> (Vec<u8>, Vec<u8>) {
    let start = tenant.to_be_bytes().to_vec();
    let end = keys::prefix_end(&start).unwrap_or_else(|| vec![0xff; 5]);
    (start, end)
}

fn check_table(name: &str, families: &[String]) -> Result<(), AppError> {
    catalog::check_name("table", name)?;
    if families.is_empty() {
        return Err(AppError::invalid("families: a table needs at least one column family"));
    }
    if families.len() > catalog::FAMILIES_PER_TABLE_MAX {
        return Err(AppError::invalid(format!(
            "families: {} families exceed the limit of {}",
            families.len(),
            catalog::FAMILIES_PER_TABLE_MAX
        )));
    }
    for (i, f) in families.iter().enumerate() {
        catalog::check_name("family", f)?;
        if families[..i].contains(f) {
            return Err(AppError::invalid(format!("families: `{f}` is declared twice")));
        }
    }
    Ok(())
}

/// Reads a 64-bit catalog id counter and moves it `count` ids on (ids start at 1); returns
/// the first of the `count` ids handed out.
fn next_ids64(engine: &Engine, batch: &mut kho_engine::WriteBatch, name: &[u8], count: u64) -> io::Result<u64> {
    assert!(count >= 1, "at least one id is handed out");
    let key = catalog::counter_key(name);
    let id = match engine.get_value(&key).map_err(io_err)? {
        None => 1,
        Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| io_err("catalog counter is not 8 bytes"))?),
    };
    let next = id.checked_add(count).ok_or_else(|| io_err("catalog id space exhausted"))?;
    batch.put_value(&key, &next.to_be_bytes());
    Ok(id)
}

/// A data shard's stored [`ShardState`], if it has one.
pub fn read_shard_state(engine: &Engine, group: GroupId) -> io::Result<Option<ShardState>> {
    match engine.get(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE)).map_err(io_err)? {
        None => Ok(None),
        Some(b) => Ok(Some(ShardState::decode(&b).map_err(io_err)?)),
    }
}

/// Reads and bumps a catalog id counter (ids start at 1).
fn next_id(engine: &Engine, batch: &mut kho_engine::WriteBatch, name: &[u8]) -> io::Result<u32> {
    let key = catalog::counter_key(name);
    let id = match engine.get_value(&key).map_err(io_err)? {
        None => 1,
        Some(b) => u32::from_be_bytes(b.as_slice().try_into().map_err(|_| io_err("catalog counter is not 4 bytes"))?),
    };
    // u32::MAX is reserved by the key format (kho_engine::keys::TABLE_ID_MAX).
    if id > kho_engine::keys::TABLE_ID_MAX {
        return Err(io_err("catalog id space exhausted"));
    }
    let next = id + 1;
    batch.put_value(&key, &next.to_be_bytes());
    Ok(id)
}

/// The applied log id and membership of `group` stored in `engine`.
pub(crate) fn read_applied_state(engine: &Engine, group: GroupId) -> io::Result<(Option<LogId>, StoredMembership)> {
    let applied = match engine.get(Cf::RaftMeta, &meta_key::key(group, meta_key::APPLIED)).map_err(io_err)? {
        None => None,
        Some(b) => codec::decode_opt_log_id(&b).map_err(io_err)?,
    };
    let membership = match engine.get(Cf::RaftMeta, &meta_key::key(group, meta_key::MEMBERSHIP)).map_err(io_err)? {
        None => StoredMembership::default(),
        Some(b) => codec::decode_stored_membership(&b).map_err(io_err)?,
    };
    Ok((applied, membership))
}

/// Builds a group's snapshots: point-in-time views ([`crate::snapshot_store::build`]).
pub struct SnapshotBuilder {
    state: Arc<SmState>,
    chunk_bytes: usize,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = self.state.clone();
        let chunk_bytes = self.chunk_bytes;
        // A RocksDB flush may run: on a blocking thread.
        tokio::task::spawn_blocking(move || snapshot_store::build(&state, chunk_bytes)).await.map_err(io_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.state.applied_state()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // The entries are in memory (openraft hands over one bounded batch); their apply is
        // disk work (RocksDB writes, a log sync) and runs on a blocking thread, never on an
        // async worker that other groups and the network need.
        let mut batch = Vec::new();
        while let Some(e) = entries.try_next().await? {
            batch.push(e);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let sm = self.handle();
        tokio::task::spawn_blocking(move || sm.apply_entries(batch, None)).await.map_err(io_err)?
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { state: self.state.clone(), chunk_bytes: self.snapshot_chunk_bytes }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let this_meta = meta.clone();
        let sm = self.handle();
        // Putting the stream in place, the synced marker write and the install are disk
        // work: on a blocking thread.
        tokio::task::spawn_blocking(move || {
            let installing = snapshot_store::stage_for_install(&sm.snapshot_dir, &this_meta, snapshot)?;
            let mut marker = sm.state.engine.batch();
            marker.put(Cf::RaftMeta, &meta_key::key(sm.state.group, meta_key::INSTALLING_SNAPSHOT), b"1");
            sm.state.engine.write(marker, true).map_err(io_err)?;
            // Readers wait from the first batch to the last (which records the applied index).
            let gate = sm.state.install_gate.clone();
            let exclusive = gate.blocking_write();
            // Once its first batch is written the group's data is half replaced: a failure
            // from there on stops the node (the marker makes the restart redo the install),
            // so that no reader, not even a stale one, ever sees that state.
            if let Err(e) = snapshot_store::install_from(&sm.state, &installing, &this_meta, &exclusive) {
                crate::fatal::storage_failure(&format!("install of a snapshot into group {}", sm.state.group), &e);
            }
            let reloaded = sm.reload_catalog();
            drop(exclusive);
            // The range may have changed: the registry indexes it again.
            sm.state.registry_hints.groups([sm.state.group]);
            reloaded
        })
        .await
        .map_err(io_err)?
    }

    /// A fresh view of the group at its applied state (None when nothing was ever applied):
    /// see [`crate::snapshot_store::current_snapshot`] for why openraft allows it.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (state, chunk_bytes) = (self.state.clone(), self.snapshot_chunk_bytes);
        tokio::task::spawn_blocking(move || snapshot_store::current_snapshot(&state, chunk_bytes)).await.map_err(io_err)?
    }
}
