//! A group's snapshots, as the state machine builds and installs them.
//!
//! **Built: a point-in-time view, nothing copied.** A snapshot of a group is a RocksDB
//! snapshot (a view of the whole engine at one sequence number) with the group's key range,
//! applied log id and membership read *from that view*: they are in the `raft_meta` column
//! family of the same DB, written in the same batches as the data, so meta and data are
//! exactly one point in time. Building one reads nothing of the data set and writes no
//! file; the stream a follower needs is written from the view only when one is sent
//! ([`crate::snapshot::SnapshotView::write_stream`]). Building also makes the live DB
//! durable up to the view (applies are written without the WAL): a flush, atomic across
//! column families, shared by every group through the engine's flush tracker
//! (`Engine::flush_through`), after which the group's flushed applied index
//! ([`crate::flushed_applied`]) is the view's applied index, and its log may be purged
//! that far.
//!
//! **The current snapshot is always a fresh view.** `get_current_snapshot` returns a new
//! view of the group at its current applied index, not the last one built (see
//! [`current_snapshot`] for why openraft allows it). So no snapshot is kept on disk: the
//! only files under `snapshots/<group>/` are a stream being received (`incoming-*.tmp`)
//! and a stream being installed ([`INSTALLING_FILE`]).
//!
//! **Installed: crash-safe, never seen half done.** A received stream is made durable,
//! the install marker is written to `raft_meta` (synced), then, with readers excluded by
//! the install gate, the snapshot's range (only it) is deleted, the records written, and the applied id, membership and range
//! written with the marker's deletion in one synced batch. A crash in between leaves the
//! marker and the stream: the install is redone when the group opens.

use std::io;
use std::path::{Path, PathBuf};

use kho_engine::{value, Cf, Engine, OwnedSnapshot};

use crate::codec;
use crate::key_range::PAST_EVERY_DATA_KEY;
use crate::log_store::meta_key;
use crate::snapshot::{self, SnapshotData, SnapshotHeader, SnapshotReader, SnapshotView, INSTALLING_FILE};
use crate::state_machine::SmState;
use crate::{GroupId, KeyRange, LogId, SnapshotMeta, StoredMembership, TypeConfig};

pub(crate) type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Most bytes of snapshot records written to RocksDB in one batch during an install.
const INSTALL_BATCH_BYTES_MAX: usize = 4 << 20;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn data_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Readies a group's snapshot directory: creates it and removes what an earlier run left
/// (transfers interrupted by a crash, `*.tmp`) and what the previous build kept
/// (checkpoint directories `snap-*.ckpt/` and stream files `snap-*.kho`: the live DB holds
/// their data). `installing` says whether an install is to be redone: otherwise a leftover
/// [`INSTALLING_FILE`] (its install finished, the crash came before its removal) goes too.
pub(crate) fn prepare_dir(dir: &Path, installing: bool) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = name.ends_with(".tmp")
            || (name.starts_with("snap-") && (name.ends_with(".ckpt") || name.ends_with(".kho")))
            || (name == INSTALLING_FILE && !installing);
        if !stale {
            continue;
        }
        let p = e.path();
        let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        match removed {
            Ok(()) => tracing::info!(path = %p.display(), "removed a snapshot file the node no longer needs"),
            Err(err) => tracing::warn!(path = %p.display(), error = %err, "could not remove an old snapshot file"),
        }
    }
    Ok(())
}

/// The group's applied log id, membership and key range as `get` reads them from
/// `raft_meta` (the live DB or a view of it). A group with no range stored has the whole
/// key space.
pub(crate) fn read_group_state(
    group: GroupId,
    get: impl Fn(&[u8]) -> kho_engine::Result<Option<Vec<u8>>>,
) -> io::Result<(Option<LogId>, StoredMembership, KeyRange)> {
    let read = |tag: u8| get(&meta_key::key(group, tag)).map_err(io_err);
    let applied = match read(meta_key::APPLIED)? {
        None => None,
        Some(b) => codec::decode_opt_log_id(&b).map_err(data_err)?,
    };
    let membership = match read(meta_key::MEMBERSHIP)? {
        None => StoredMembership::default(),
        Some(b) => codec::decode_stored_membership(&b).map_err(data_err)?,
    };
    let range = match read(meta_key::RANGE)? {
        None => KeyRange::whole(),
        Some(b) => codec::decode_key_range(&b).map_err(data_err)?,
    };
    Ok((applied, membership, range))
}

/// The group's key range as stored in `engine` (the whole key space when none is).
pub(crate) fn read_range(engine: &Engine, group: GroupId) -> io::Result<KeyRange> {
    Ok(read_group_state(group, |k| engine.get(Cf::RaftMeta, k))?.2)
}

/// Makes a snapshot of the group from `view`, a point-in-time view taken under the
/// install gate (so never of a half-installed group): its meta and range are read from the
/// view itself, then the live DB is made durable at least up to the view (one flush shared
/// with every group, skipped when a flush since the view has completed), and the view's
/// applied index becomes the group's flushed applied index. Blocking.
pub(crate) fn snapshot_of_view(state: &SmState, view: OwnedSnapshot, chunk_bytes: usize) -> io::Result<Snapshot> {
    let (applied, membership, range) = read_group_state(state.group, |k| view.get(Cf::RaftMeta, k))?;
    let flushed = state.engine.flush_through(view.sequence_number()).map_err(io_err)?;
    debug_assert!(state.engine.flushed_through() >= view.sequence_number());
    if let Some(a) = applied {
        state.flushed_applied.record(a.index);
    }
    tracing::debug!(group = state.group, last_log_id = ?applied, %range, flushed, "snapshot view taken");
    let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
    // A data shard's state (descriptor, dropped tables) travels with its data, read from
    // the same view.
    let group_state = view.get(Cf::RaftMeta, &meta_key::key(state.group, meta_key::SHARD_STATE)).map_err(io_err)?.unwrap_or_default();
    let header = SnapshotHeader { meta: meta.clone(), range, group_state };
    Ok(Snapshot {
        meta,
        snapshot: SnapshotData::View(Box::new(SnapshotView { view, header, cipher: state.log_cipher.clone(), chunk_bytes })),
    })
}

/// Builds a snapshot of the group at its current applied state (`build_snapshot`): a view
/// taken under the install gate, see [`snapshot_of_view`]. Blocking: call it off the async
/// runtime.
pub(crate) fn build(state: &SmState, chunk_bytes: usize) -> io::Result<Snapshot> {
    let view = {
        let _gate = state.blocking_read_gate();
        state.engine.owned_snapshot()
    };
    let snap = snapshot_of_view(state, view, chunk_bytes)?;
    tracing::info!(group = state.group, last_log_id = ?snap.meta.last_log_id, "built snapshot");
    Ok(snap)
}

/// The group's current snapshot (`get_current_snapshot`): a fresh view at the current
/// applied state, or None when nothing was ever applied.
///
/// openraft 0.10.0-alpha.37 allows a snapshot newer than the last one built or installed
/// here; it needs only that the snapshot is durable, covers every purged entry, and that
/// its data and meta agree (line numbers are of that release's `src/`):
/// - at start-up, `StorageHelper::get_initial_state` first calls `restore_from_snapshot`
///   (storage/helper.rs line 130; lines 252–278), which installs the current snapshot only
///   when its last log id is above the applied one (line 260): a fresh view never is. It
///   then re-applies the committed log (lines 136–158) and only after that takes the
///   current snapshot's meta as `RaftState::snapshot_meta` (lines 196–212): the view's
///   applied index is then the committed index, and the flush in [`snapshot_of_view`]
///   makes it durable before any purge computed from it (`LogHandler::calc_purge_upto`,
///   engine/handler/log_handler/mod.rs lines 92–127: `snapshot_meta.last_log_id` minus
///   `max_in_snapshot_log_to_keep`, line 97);
/// - to a lagging follower, the snapshot transmitter asks for the current snapshot on every
///   attempt (replication/snapshot_transmitter.rs lines 202–228), sends it whatever its
///   index, and reports the follower matched at the sent snapshot's own `last_log_id`
///   (lines 233 and 258–260): any applied index at or above the purge point will do, and
///   the leader's applied index is committed and never below its snapshot, hence never
///   below its purge point;
/// - `SnapshotHandler::update_snapshot` (engine/handler/snapshot_handler/mod.rs lines
///   63–78) ignores a snapshot that is not newer than the one it knows; only built and
///   installed snapshots reach it, and a purge waits for the snapshot it relies on to be
///   built or installed (`Command::PurgeLog`'s condition, engine/command.rs line 401).
///
/// openraft's storage suite checks the same (`transfer_snapshot`,
/// testing/log/suite.rs lines 1692–1741): no snapshot before anything is applied, and the
/// current snapshot's meta equal to the one just built or installed (nothing was applied
/// since). Its getting-started guide asks that after a restart `get_current_snapshot`
/// return "the snapshot the node last built or installed": a fresh view is at least as
/// new, and its data is that of its meta.
pub(crate) fn current_snapshot(state: &SmState, chunk_bytes: usize) -> io::Result<Option<Snapshot>> {
    let view = {
        let _gate = state.blocking_read_gate();
        state.engine.owned_snapshot()
    };
    if view.get(Cf::RaftMeta, &meta_key::key(state.group, meta_key::APPLIED)).map_err(io_err)?.is_none() {
        return Ok(None);
    }
    snapshot_of_view(state, view, chunk_bytes).map(Some)
}

/// Puts `snapshot` in place as the durable stream to install, [`INSTALLING_FILE`] in
/// `dir`: a received stream is renamed there; a view (this node's own, or another state
/// machine's in tests) has its stream written there first, so that the install can be
/// redone after a crash. Returns its path. Blocking.
pub(crate) fn stage_for_install(dir: &Path, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<PathBuf> {
    let installing = dir.join(INSTALLING_FILE);
    match snapshot {
        SnapshotData::Stream(file) => {
            drop(file.file);
            if file.path != installing {
                std::fs::rename(&file.path, &installing)?;
            }
        }
        SnapshotData::View(view) => {
            if view.header.meta != *meta {
                return Err(data_err(format!(
                    "a snapshot view of {:?} offered for install as {:?}",
                    view.header.meta.last_log_id, meta.last_log_id
                )));
            }
            let tmp = dir.join(format!("installing-{}.tmp", std::process::id()));
            view.write_stream_file(&tmp, true)?;
            std::fs::rename(&tmp, &installing)?;
        }
    }
    snapshot::sync_dir(dir)?;
    Ok(installing)
}

/// Deletes every key of `range` from the data column family, in `batch`.
fn delete_range(engine: &Engine, batch: &mut kho_engine::WriteBatch, range: &KeyRange) -> io::Result<()> {
    match &range.end {
        Some(end) => batch.delete_range(Cf::Data, &range.start, end),
        None => {
            // RocksDB deletes ranges with an end: up to a key past every data key, then any
            // key at or after it one by one (none is a valid data key; there are none).
            if range.start.as_slice() < PAST_EVERY_DATA_KEY.as_slice() {
                batch.delete_range(Cf::Data, &range.start, &PAST_EVERY_DATA_KEY);
            }
            let from = std::cmp::max(range.start.as_slice(), PAST_EVERY_DATA_KEY.as_slice());
            for (k, _) in engine.scan(Cf::Data, from, None, usize::MAX).map_err(io_err)? {
                batch.delete(Cf::Data, &k);
            }
        }
    }
    Ok(())
}

/// Replaces the group's data with the snapshot at `path` (already durable on disk, the
/// install marker written): deletes the snapshot's range (only it: keys of the group's
/// previous, wider range may be a sibling's since a split), writes the records (each inside the snapshot's range, in key order,
/// each value's header checked), then sets applied id, membership and range and deletes
/// the marker in one synced batch; removes the stream. Readers are excluded meanwhile.
pub(crate) fn install_from(
    state: &SmState,
    path: &Path,
    meta: &SnapshotMeta,
    _readers_excluded: &tokio::sync::RwLockWriteGuard<'_, ()>,
) -> io::Result<()> {
    let engine = &state.engine;
    let group = state.group;
    let mut reader = SnapshotReader::open(path, state.log_cipher.as_ref())?;
    let header = reader.header().clone();
    if header.meta != *meta {
        return Err(data_err(format!(
            "snapshot {} says it holds {:?}, {:?}; it was received as {:?}, {:?}",
            path.display(),
            header.meta.last_log_id,
            header.meta.last_membership,
            meta.last_log_id,
            meta.last_membership
        )));
    }
    let previous = state.range();
    let mut batch = engine.batch();
    // Only the snapshot's range: what the group held beyond it before (a range that split
    // since) may belong to a sibling shard on this node now, which its own log or snapshot
    // keeps; keys no local group holds are replaced by the snapshot of the group that
    // gets them.
    delete_range(engine, &mut batch, &header.range)?;
    if previous != header.range {
        tracing::info!(group, previous = %previous, new = %header.range, "the snapshot changes the group's range");
    }
    engine.write(batch, false).map_err(io_err)?;
    // From here on the group's data is half replaced until the final batch; the marker
    // makes a restart redo the install.
    #[cfg(feature = "failpoints")]
    fail::fail_point!("snapshot-install-midway", |_| Err(io::Error::other("fail point snapshot-install-midway")));
    let mut batch = engine.batch();
    let mut records = 0u64;
    while let Some(chunk) = reader.next_chunk()? {
        for (k, v) in chunk {
            // The reader refused any key outside the range or out of order; each value
            // carries its own checksum or header: refuse to spread a corrupt value
            // (encrypted values are authenticated when read, with their key).
            debug_assert!(header.range.contains(&k));
            value::inspect(&k, &v).map_err(io_err)?;
            batch.put(Cf::Data, &k, &v);
            records += 1;
        }
        if batch.size_bytes() >= INSTALL_BATCH_BYTES_MAX {
            engine.write(std::mem::replace(&mut batch, engine.batch()), false).map_err(io_err)?;
        }
    }
    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::APPLIED), &codec::encode_opt_log_id(meta.last_log_id.as_ref()));
    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::MEMBERSHIP), &codec::encode_stored_membership(&meta.last_membership));
    batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::RANGE), &codec::encode_key_range(&header.range));
    if !header.group_state.is_empty() {
        crate::shard::ShardState::decode(&header.group_state).map_err(data_err)?;
        batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::SHARD_STATE), &header.group_state);
    }
    batch.delete(Cf::RaftMeta, &meta_key::key(group, meta_key::INSTALLING_SNAPSHOT));
    // Synced, and every batch before it is in the WAL before it: the installed state is
    // durable without a flush, and the log may be purged up to its index.
    engine.write(batch, true).map_err(io_err)?;
    *state.range.write().expect("range lock poisoned") = header.range.clone();
    if let Some(l) = meta.last_log_id {
        state.flushed_applied.record(l.index);
    }
    // The live DB holds the snapshot now: its stream is not kept.
    std::fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        snapshot::sync_dir(dir)?;
    }
    tracing::info!(group, records, last_log_id = ?meta.last_log_id, range = %header.range, "installed snapshot");
    Ok(())
}
