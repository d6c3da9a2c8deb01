//! The Raft log store of one group: entries in the group's stream of the node's shared log
//! ([`kho_engine::shared_log`], `<data_dir>/log/`), vote and purge point in the `raft_meta`
//! column family.
//!
//! Durability: a vote is written with a synced write before `save_vote` returns. Appended
//! entries are written to the shared log (readable at once) and their flush callback is
//! handed to the node's [`LogSyncer`], which syncs the shared log once for every callback
//! waiting at that moment, of every group (group commit: one `fdatasync` per round however
//! many groups appended), and only then tells openraft the entries are durable. openraft
//! acknowledges an append to the leader, and the leader counts it towards commit, only
//! after that callback. The purge point is synced before the log forgets anything.
//!
//! Each entry is written once: before, in RocksDB, it went to the WAL, then an SST file by
//! flush, then through compaction before a purge deleted it (docs/BENCHMARKS.md).
//!
//! The newest entries are also kept in memory, decoded ([`EntryCache`]): replication to the
//! followers and the state machine read each entry right after it is appended. The cache is
//! never the only copy: every cached entry was written to the log first.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use kho_engine::crypto::LogCipher;
use kho_engine::segment_log::SegmentLog;
use kho_engine::shared_log::SharedLog;
use kho_engine::{Cf, Engine};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::codec;
use crate::flushed_applied::FlushedApplied;
use crate::{Entry, GroupId, LogId, TypeConfig, Vote};

/// Keys of per-group metadata in the `raft_meta` column family: group id (u64 BE) ++ tag.
pub mod meta_key {
    use crate::GroupId;
    pub const VOTE: u8 = 0x01;
    pub const COMMITTED: u8 = 0x02;
    pub const LAST_PURGED: u8 = 0x03;
    pub const APPLIED: u8 = 0x10;
    pub const MEMBERSHIP: u8 = 0x11;
    /// Present while a received snapshot is being installed (crash recovery redoes it).
    pub const INSTALLING_SNAPSHOT: u8 = 0x12;
    /// The group's key range in the `data` column family (absent: the whole key space).
    pub const RANGE: u8 = 0x13;
    /// A data shard's [`crate::shard::ShardState`]: its descriptor and dropped tables.
    pub const SHARD_STATE: u8 = 0x14;

    pub fn key(group: GroupId, tag: u8) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[..8].copy_from_slice(&group.to_be_bytes());
        k[8] = tag;
        k
    }
}

/// Key of a log entry: group id (u64 BE) ++ index (u64 BE). The associated data of a sealed
/// entry, and its key in the `raft_log` column family of data directories from before the
/// segment log (moved out once, [`LogStore::open`]).
pub fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn group_log_end(group: GroupId) -> [u8; 16] {
    // Groups are < u64::MAX, so group + 1 does not overflow.
    log_key(group + 1, 0)
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn data_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Most flush callbacks waiting for the log syncer, count.
pub const SYNC_QUEUE_MAX: usize = 65_536;
/// Most callbacks completed by one round of syncs, count.
pub const SYNC_BATCH_MAX: usize = 8_192;

type SyncRequest = (Arc<SharedLog>, IOFlushed<TypeConfig>);

/// One thread per node that turns many pending appends, of every group, into one sync of
/// the shared log.
pub struct LogSyncer {
    tx: tokio::sync::mpsc::Sender<SyncRequest>,
}

impl LogSyncer {
    /// Starts the sync thread. It ends when every sender (log store) is gone.
    pub fn start() -> Arc<LogSyncer> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SyncRequest>(SYNC_QUEUE_MAX);
        std::thread::Builder::new()
            .name("kho-log-sync".into())
            .spawn(move || {
                let mut pending: Vec<SyncRequest> = Vec::with_capacity(64);
                while let Some(first) = rx.blocking_recv() {
                    pending.push(first);
                    while pending.len() < SYNC_BATCH_MAX {
                        match rx.try_recv() {
                            Ok(r) => pending.push(r),
                            Err(_) => break,
                        }
                    }
                    // One sync per distinct log covers every callback of that log taken so far.
                    let mut results: Vec<*const SharedLog> = Vec::new();
                    for (log, _) in &pending {
                        let ptr = Arc::as_ptr(log);
                        if !results.contains(&ptr) {
                            if let Err(e) = log.sync() {
                                // Never retried, never acknowledged: the node stops (crate::fatal).
                                crate::fatal::storage_failure(&format!("sync of the Raft log in {}", log.dir().display()), &e);
                            }
                            results.push(ptr);
                        }
                    }
                    for (log, cb) in pending.drain(..) {
                        debug_assert!(results.contains(&Arc::as_ptr(&log)), "every log with a waiting callback was synced");
                        cb.io_completed(Ok(()));
                    }
                }
            })
            .expect("spawning the log sync thread");
        Arc::new(LogSyncer { tx })
    }
}

/// Where a node's shared Raft log lives, under its data directory.
pub const SHARED_LOG_DIR: &str = "log";
/// Where an older build kept one segment log per group (`raft-log/<group>/`), moved into
/// the shared log once ([`migrate_group_segment_logs`]).
pub const LEGACY_GROUP_LOGS_DIR: &str = "raft-log";

/// Opens the node's shared log in `dir` with every group's purge point from `raft_meta`.
pub fn open_shared_log(engine: &Engine, dir: &Path) -> io::Result<Arc<SharedLog>> {
    let purged = read_all_purge_points(engine)?;
    let (log, recovered) = SharedLog::open(dir, kho_engine::shared_log::SEGMENT_BYTES_MAX, &purged).map_err(io_err)?;
    if recovered.cut_bytes > 0 {
        tracing::warn!(log = %dir.display(), cut_bytes = recovered.cut_bytes, "cut a torn tail off the Raft log (writes never acknowledged)");
    }
    tracing::info!(log = %dir.display(), entries = recovered.records, groups = recovered.streams, segments = recovered.segments, "opened the shared Raft log");
    Ok(Arc::new(log))
}

/// The purge point of every group that has one.
fn read_all_purge_points(engine: &Engine) -> io::Result<std::collections::BTreeMap<GroupId, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in engine.scan(Cf::RaftMeta, &[], None, usize::MAX).map_err(io_err)? {
        if k.len() != 9 || k[8] != meta_key::LAST_PURGED {
            continue;
        }
        let group = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
        if let Some(l) = codec::decode_opt_log_id(&v).map_err(data_err)? {
            out.insert(group, l.index);
        }
    }
    Ok(out)
}

/// Moves the per-group segment logs of an older build (`<dir>/<group>/*.seg`) into the
/// shared log: each group's entries above its purge point are appended to its stream and
/// synced, then the old directory is removed. A crash in between leaves the old directory
/// and a stream holding a prefix of it (nothing else writes the log during start-up): the
/// next start checks that prefix against the old log, appends the rest, syncs, and only
/// then removes the old directory.
pub fn migrate_group_segment_logs(engine: &Engine, dir: &Path, shared: &SharedLog) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries {
        let e = e?;
        let Some(group) = e.file_name().to_str().and_then(|n| n.parse::<GroupId>().ok()) else { continue };
        let path = e.path();
        let purged = read_last_purged(engine, group)?.map(|l| l.index);
        let (old, _) = SegmentLog::open(&path, purged).map_err(io_err)?;
        if let (Some(first), Some(last)) = (old.first_index(), old.last_index()) {
            let mut at = match shared.last_index(group) {
                None => first,
                Some(moved) if moved >= first && moved <= last => {
                    // The moved prefix must be the old log's: compare its last entry.
                    let ours = shared.read(group, moved, moved + 1).map_err(io_err)?;
                    let theirs = old.read(moved, moved + 1).map_err(io_err)?;
                    if ours != theirs {
                        return Err(data_err(format!(
                            "moving {} into the shared log: entry {moved} of group {group} differs between the two; refusing to go on",
                            path.display()
                        )));
                    }
                    moved + 1
                }
                Some(moved) => {
                    return Err(data_err(format!(
                        "moving {} (entries {first}..={last}) into the shared log: group {group}'s stream already ends at {moved}",
                        path.display()
                    )))
                }
            };
            let resumed_at = at;
            while at <= last {
                let end = (at + MIGRATE_BATCH_ENTRIES as u64).min(last + 1);
                let payloads = old.read(at, end).map_err(io_err)?;
                let records: Vec<(u64, &[u8])> = (at..end).zip(payloads.iter().map(Vec::as_slice)).collect();
                shared.append(group, &records).map_err(io_err)?;
                at = end;
            }
            shared.sync().map_err(io_err)?;
            tracing::info!(group, entries = last + 1 - first, resumed_at, from = %path.display(), "moved a group's Raft log into the shared log");
        }
        drop(old);
        std::fs::remove_dir_all(&path)?;
    }
    if std::fs::read_dir(dir)?.next().is_none() {
        std::fs::remove_dir(dir)?;
    }
    Ok(())
}

/// One group's stream of the node's shared log.
#[derive(Clone)]
pub struct GroupLog {
    shared: Arc<SharedLog>,
    group: GroupId,
}

impl GroupLog {
    pub fn new(shared: Arc<SharedLog>, group: GroupId) -> Self {
        GroupLog { shared, group }
    }

    /// The node's shared log.
    pub fn shared(&self) -> &Arc<SharedLog> {
        &self.shared
    }

    /// The directory of the shared log (for messages).
    pub fn dir(&self) -> &Path {
        self.shared.dir()
    }

    fn append(&self, records: &[(u64, &[u8])]) -> kho_engine::Result<()> {
        self.shared.append(self.group, records)
    }

    /// Makes sure every entry up to `index` is durable, syncing only if no sync covered it.
    pub fn sync_upto(&self, index: u64) -> kho_engine::Result<()> {
        self.shared.sync_upto(self.group, index)
    }

    fn read(&self, start: u64, end: u64) -> kho_engine::Result<Vec<Vec<u8>>> {
        self.shared.read(self.group, start, end)
    }

    fn first_index(&self) -> Option<u64> {
        self.shared.first_index(self.group)
    }

    fn last_index(&self) -> Option<u64> {
        self.shared.last_index(self.group)
    }

    fn next_index(&self) -> u64 {
        self.shared.next_index(self.group).unwrap_or(0)
    }

    fn truncate_from(&self, index: u64) -> kho_engine::Result<()> {
        self.shared.truncate_from(self.group, index)
    }

    fn purge_upto(&self, index: u64) -> kho_engine::Result<()> {
        self.shared.purge_upto(self.group, index)
    }
}

/// Most entries the in-memory entry cache of a group holds, count.
pub const ENTRY_CACHE_ENTRIES_MAX: usize = 16_384;
/// Most stored bytes of entries the in-memory entry cache of a group holds, bytes.
pub const ENTRY_CACHE_BYTES_MAX: usize = 64 << 20;

/// The newest log entries of a group, decoded: a contiguous run of indexes that always ends
/// at the last entry appended through this store. Reads of a range inside it are answered
/// from memory; any other range is read from RocksDB. Bounded by entries and by bytes (the
/// stored size of each entry); the oldest entries leave first.
struct EntryCache {
    /// `entries[i]` has index `first + i`; each with its stored size in bytes.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl EntryCache {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        EntryCache { entries: VecDeque::new(), bytes: 0, max_entries, max_bytes }
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// Adds an entry just written to its segment. An entry that does not follow the last cached
    /// one (the first append after a restart, a snapshot install or a purge of everything)
    /// starts a new run.
    fn push(&mut self, entry: Entry, size: usize) {
        let follows = match self.entries.back() {
            None => true,
            Some((last, _)) => last.log_id.index.checked_add(1) == Some(entry.log_id.index),
        };
        if !follows {
            self.clear();
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            self.pop_front();
        }
    }

    /// Drops every entry with an index of `from` or more.
    fn truncate_from(&mut self, from: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= from) {
            let (_, size) = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= size;
        }
    }

    /// Drops every entry with an index of `upto` or less.
    fn purge_upto(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= upto) {
            self.pop_front();
        }
    }

    /// The entries `[start, end)` if all of them are cached; `end = None` means to the end of
    /// the log (the cache always ends at the log's last entry).
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let cached_end = first + self.entries.len() as u64;
        let end = end.unwrap_or(cached_end);
        if start < first || end > cached_end {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

/// Format of a log entry sealed under the log key:
/// `2 | nonce (24) | XChaCha20-Poly1305(v1 frame) | tag (16)`, associated data = the entry's
/// `raft_log` key (group ++ index), so an entry cannot be moved to another index.
pub const LOG_ENTRY_FORMAT_SEALED: u8 = 2;

/// The log store of one Raft group.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    /// Vote, committed hint and purge point (`raft_meta`).
    engine: Engine,
    /// The entries: this group's stream of the node's shared log.
    log: GroupLog,
    syncer: Arc<LogSyncer>,
    /// Seals entries when the node has a master key.
    cipher: Option<LogCipher>,
    /// The newest entries, decoded; shared by the store and its readers.
    cache: Arc<std::sync::Mutex<EntryCache>>,
    /// The group's flushed applied index, which no purge may pass (None: not checked, for
    /// a log store tested without its state machine).
    purge_bound: Option<Arc<FlushedApplied>>,
    /// The group's sleep state: an append wakes it ([`crate::sleep`]).
    sleep: Option<Arc<crate::sleep::Sleep>>,
}

/// Entries moved per batch from the `raft_log` column family of an older data directory.
const MIGRATE_BATCH_ENTRIES: usize = 1024;

impl LogStore {
    /// Opens the log of `group` in the node's shared log.
    pub fn open(
        group: GroupId,
        engine: Engine,
        shared: Arc<SharedLog>,
        syncer: Arc<LogSyncer>,
        cipher: Option<LogCipher>,
    ) -> io::Result<Self> {
        Self::open_with_cache_limits(group, engine, shared, syncer, cipher, ENTRY_CACHE_ENTRIES_MAX, ENTRY_CACHE_BYTES_MAX)
    }

    /// A store whose entry cache holds at most `max_entries` entries and `max_bytes` stored
    /// bytes (0 entries: no cache). For tests of the cache's edges.
    pub fn open_with_cache_limits(
        group: GroupId,
        engine: Engine,
        shared: Arc<SharedLog>,
        syncer: Arc<LogSyncer>,
        cipher: Option<LogCipher>,
        max_entries: usize,
        max_bytes: usize,
    ) -> io::Result<Self> {
        let store = Self::over(group, engine, GroupLog::new(shared, group), syncer, cipher, max_entries, max_bytes);
        store.migrate_from_column_family()?;
        Ok(store)
    }

    /// A second store over the same open log (tests compare a cached and an uncached one).
    pub fn over(
        group: GroupId,
        engine: Engine,
        log: GroupLog,
        syncer: Arc<LogSyncer>,
        cipher: Option<LogCipher>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Self {
        let cache = Arc::new(std::sync::Mutex::new(EntryCache::new(max_entries, max_bytes)));
        LogStore { group, engine, log, syncer, cipher, cache, purge_bound: None, sleep: None }
    }

    /// Checks every purge against the group's flushed applied index (its state machine's
    /// [`crate::state_machine::SmState::flushed_applied`]): a purge past it fails. A node's
    /// groups always have it; openraft's conformance suite purges logs that no state
    /// machine applied, so its stores go without.
    pub fn with_purge_bound(mut self, flushed: Arc<FlushedApplied>) -> Self {
        self.purge_bound = Some(flushed);
        self
    }

    /// The store wakes `sleep` whenever it appends entries ([`crate::sleep`]).
    pub fn with_sleep(mut self, sleep: Arc<crate::sleep::Sleep>) -> Self {
        self.sleep = Some(sleep);
        self
    }

    /// The group's log (the state machine syncs it before it records an applied index).
    pub fn group_log(&self) -> GroupLog {
        self.log.clone()
    }

    /// Moves the entries an older build kept in the `raft_log` column family into the
    /// shared log, once: appended and synced, then deleted from RocksDB.
    fn migrate_from_column_family(&self) -> io::Result<()> {
        let end = group_log_end(self.group);
        // After a crash in the middle of the move, the log holds a prefix of the column
        // family's entries: continue after it. Once the move is done the range is empty.
        let mut from = log_key(self.group, self.log.next_index());
        let mut moved = 0u64;
        loop {
            let rows = self.engine.scan(Cf::RaftLog, &from, Some(&end), MIGRATE_BATCH_ENTRIES).map_err(io_err)?;
            let Some((last_key, _)) = rows.last() else { break };
            from = log_key(self.group, key_index(last_key)? + 1);
            let mut records = Vec::with_capacity(rows.len());
            for (k, v) in &rows {
                records.push((key_index(k)?, v.as_slice()));
            }
            self.log.append(&records).map_err(io_err)?;
            moved += records.len() as u64;
        }
        if moved > 0 {
            self.log.shared.sync().map_err(io_err)?;
            let mut batch = self.engine.batch();
            batch.delete_range(Cf::RaftLog, &log_key(self.group, 0), &end);
            self.engine.write(batch, true).map_err(io_err)?;
            tracing::info!(group = self.group, entries = moved, "moved the Raft log from RocksDB into the shared log");
        }
        Ok(())
    }

    /// The indexes `[first, end)` of the cached entries, if any (for tests and status).
    pub fn cached_range(&self) -> Option<(u64, u64)> {
        let cache = self.cache();
        cache.first().map(|f| (f, f + cache.entries.len() as u64))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        // The cache holds no invariant a panic elsewhere could break halfway: keep using it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored bytes of an entry: its v1 frame, sealed when there is a log key.
    fn encode(&self, entry: &Entry) -> Vec<u8> {
        let frame = codec::encode_entry(entry);
        match &self.cipher {
            None => frame,
            Some(c) => {
                let mut out = vec![LOG_ENTRY_FORMAT_SEALED];
                c.seal_into(&mut out, &log_key(self.group, entry.log_id.index), &frame);
                out
            }
        }
    }

    /// Decodes the stored bytes of entry `index`; sealed ones need the log key. Entries
    /// written before the node had a master key (format 1) stay readable.
    fn decode(&self, index: u64, stored: &[u8]) -> io::Result<Entry> {
        let entry = match stored.split_first() {
            Some((&LOG_ENTRY_FORMAT_SEALED, sealed)) => {
                let Some(c) = &self.cipher else {
                    return Err(data_err("the log entry is encrypted, and this node has no master key ([encryption] config)"));
                };
                let frame = c.open(&log_key(self.group, index), sealed).map_err(|e| data_err(format!("log entry: {e}")))?;
                codec::decode_entry(&frame).map_err(data_err)?
            }
            _ => codec::decode_entry(stored).map_err(data_err)?,
        };
        if entry.log_id.index != index {
            return Err(data_err(format!("log entry at index {index} says index {}", entry.log_id.index)));
        }
        Ok(entry)
    }

    fn get_meta(&self, tag: u8) -> io::Result<Option<Vec<u8>>> {
        self.engine.get(Cf::RaftMeta, &meta_key::key(self.group, tag)).map_err(io_err)
    }

    /// The first log index still stored, if any (for status reporting).
    pub fn first_index(&self) -> io::Result<Option<u64>> {
        Ok(self.log.first_index())
    }

    /// Entries `[start, end)` from the segments, clamped to what the log holds.
    fn read_stored(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Entry>> {
        let (Some(first), Some(last)) = (self.log.first_index(), self.log.last_index()) else { return Ok(Vec::new()) };
        let start = start.max(first);
        let end = end.unwrap_or(u64::MAX).min(last + 1);
        if start >= end {
            return Ok(Vec::new());
        }
        let stored = self.log.read(start, end).map_err(io_err)?;
        stored.iter().zip(start..).map(|(b, i)| self.decode(i, b)).collect()
    }
}

fn key_index(k: &[u8]) -> io::Result<u64> {
    Ok(u64::from_be_bytes(k.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(|| data_err("short log key"))?))
}

fn read_last_purged(engine: &Engine, group: GroupId) -> io::Result<Option<LogId>> {
    match engine.get(Cf::RaftMeta, &meta_key::key(group, meta_key::LAST_PURGED)).map_err(io_err)? {
        None => Ok(None),
        Some(b) => codec::decode_opt_log_id(&b).map_err(data_err),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.cache().get(start, end) {
            return Ok(entries);
        }
        self.read_stored(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.get_meta(meta_key::VOTE)? {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode_vote(&b).map_err(data_err)?)),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_log_id = match self.log.last_index() {
            None => None,
            Some(i) => {
                let cached = self.cache().get(i, Some(i + 1));
                let entries = match cached {
                    Some(e) => e,
                    None => self.read_stored(i, Some(i + 1))?,
                };
                entries.into_iter().next().map(|e| e.log_id)
            }
        };
        let last_purged_log_id = read_last_purged(&self.engine, self.group)?;
        let last_log_id = last_log_id.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = self.engine.batch();
        batch.put(Cf::RaftMeta, &meta_key::key(self.group, meta_key::VOTE), &codec::encode_vote(vote));
        let engine = self.engine.clone();
        let group = self.group;
        // A vote must be on disk before it is acted upon: synced write. A failed one stops
        // the node (crate::fatal): it cannot know what of its vote reached the disk.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = engine.write(batch, true) {
                crate::fatal::storage_failure(&format!("synced write of group {group}'s vote"), &e);
            }
        })
        .await
        .map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: the committed index is a hint to re-apply faster after a restart; a lost
        // update only means re-learning it from the leader.
        let mut batch = self.engine.batch();
        batch.put(Cf::RaftMeta, &meta_key::key(self.group, meta_key::COMMITTED), &codec::encode_opt_log_id(committed.as_ref()));
        self.engine.write(batch, false).map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        match self.get_meta(meta_key::COMMITTED)? {
            None => Ok(None),
            Some(b) => codec::decode_opt_log_id(&b).map_err(data_err),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut stored = Vec::new();
        let mut appended = Vec::new();
        for entry in entries {
            stored.push(self.encode(&entry));
            appended.push(entry);
        }
        if let (Some(sleep), false) = (&self.sleep, appended.is_empty()) {
            sleep.wake("an append");
        }
        {
            let records: Vec<(u64, &[u8])> = appended.iter().zip(&stored).map(|(e, b)| (e.log_id.index, b.as_slice())).collect();
            // Readable now (page cache); durable once the syncer has synced the segment.
            if let Err(e) = self.log.append(&records) {
                crate::fatal::storage_failure(&format!("append to the Raft log in {}", self.log.dir().display()), &e);
            }
        }
        {
            let mut cache = self.cache();
            for (entry, bytes) in appended.into_iter().zip(&stored) {
                cache.push(entry, bytes.len());
            }
        }
        self.syncer.tx.send((self.log.shared.clone(), callback)).await.map_err(|_| io_err("log syncer stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index + 1).unwrap_or(0);
        self.cache().truncate_from(from);
        // Synced before it returns (rare: only after a leader change with conflicting
        // entries); the fsyncs run on a blocking thread, not on the async worker.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = log.truncate_from(from) {
                crate::fatal::storage_failure(&format!("truncation of the Raft log in {} from index {from}", log.dir().display()), &e);
            }
        })
        .await
        .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge rule: the state machine's applied state is durable up to the flushed
        // applied index, and after a crash it re-applies the log after it, so the log keeps
        // every entry past it. openraft purges only up to a snapshot, whose applied index
        // was flushed before the snapshot was returned: a purge past it is a bug, and the
        // error stops the group (openraft stops on a storage error) before anything goes.
        if let Some(bound) = &self.purge_bound {
            if let Err(e) = bound.check_purge(self.group, log_id.index) {
                tracing::error!(group = self.group, error = %e, "refusing a purge past the flushed applied index");
                return Err(io::Error::other(e));
            }
        }
        self.cache().purge_upto(log_id.index);
        let mut batch = self.engine.batch();
        batch.put(Cf::RaftMeta, &meta_key::key(self.group, meta_key::LAST_PURGED), &codec::encode_opt_log_id(Some(&log_id)));
        // The purge point is durable before any segment goes: a restart never finds a log that
        // starts after its recorded purge point. The synced write and the file removals run on
        // a blocking thread, not on the async worker.
        let (engine, log) = (self.engine.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = engine.write(batch, true) {
                crate::fatal::storage_failure(&format!("synced write of the purge point of the Raft log in {}", log.dir().display()), &e);
            }
            if let Err(e) = log.purge_upto(log_id.index) {
                crate::fatal::storage_failure(
                    &format!("purge of the Raft log in {} up to index {}", log.dir().display(), log_id.index),
                    &e,
                );
            }
        })
        .await
        .map_err(io_err)
    }
}
