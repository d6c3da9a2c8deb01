//! The Raft log store of one group, on the `raft_log` and `raft_meta` column families.
//!
//! Durability: a vote is written with a synced write before `save_vote` returns. Appended
//! entries are written (unsynced, so they are readable at once) and their flush callback is
//! handed to the node's [`WalSyncer`], which syncs the shared RocksDB WAL once for every
//! callback waiting at that moment (group commit across all groups) and only then tells
//! openraft the entries are durable. openraft acknowledges an append to the leader, and the
//! leader counts it towards commit, only after that callback.
//!
//! The newest entries are also kept in memory, decoded ([`EntryCache`]): replication to the
//! followers and the state machine read each entry right after it is appended, and serving
//! those reads from RocksDB cost a scan, a decryption and a decode each time (15% of the
//! leader's CPU under the write benchmark, docs/BENCHMARKS.md). The cache is never the only
//! copy: every cached entry was written to RocksDB first.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use kho_engine::crypto::LogCipher;
use kho_engine::{Cf, Engine};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::codec;
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

    pub fn key(group: GroupId, tag: u8) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[..8].copy_from_slice(&group.to_be_bytes());
        k[8] = tag;
        k
    }
}

/// Key of a log entry in the `raft_log` column family: group id (u64 BE) ++ index (u64 BE).
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

/// Most flush callbacks waiting for the WAL syncer, count.
pub const SYNC_QUEUE_MAX: usize = 65_536;
/// Most callbacks completed by one WAL sync, count.
pub const SYNC_BATCH_MAX: usize = 8_192;

/// One thread per node that turns many pending appends into one WAL sync.
pub struct WalSyncer {
    tx: tokio::sync::mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl WalSyncer {
    /// Starts the sync thread. It holds the engine weakly: the engine closes where its last
    /// user drops it, and the thread then ends.
    pub fn start(engine: Engine) -> Arc<WalSyncer> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<IOFlushed<TypeConfig>>(SYNC_QUEUE_MAX);
        let weak = engine.downgrade();
        drop(engine);
        std::thread::Builder::new()
            .name("kho-wal-sync".into())
            .spawn(move || {
                let mut pending = Vec::with_capacity(64);
                while let Some(first) = rx.blocking_recv() {
                    pending.push(first);
                    while pending.len() < SYNC_BATCH_MAX {
                        match rx.try_recv() {
                            Ok(cb) => pending.push(cb),
                            Err(_) => break,
                        }
                    }
                    let res = match weak.upgrade() {
                        Some(engine) => engine.sync_wal().map_err(io_err),
                        None => Err(io_err("the engine is closed")),
                    };
                    if let Err(e) = &res {
                        tracing::error!(error = %e, "WAL sync failed; appends are not acknowledged");
                    }
                    for cb in pending.drain(..) {
                        cb.io_completed(res.as_ref().map(|_| ()).map_err(io_err));
                    }
                }
            })
            .expect("spawning the WAL sync thread");
        Arc::new(WalSyncer { tx })
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

    /// Adds an entry just written to RocksDB. An entry that does not follow the last cached
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
    engine: Engine,
    syncer: Arc<WalSyncer>,
    /// Seals entries when the node has a master key.
    cipher: Option<LogCipher>,
    /// The newest entries, decoded; shared by the store and its readers.
    cache: Arc<std::sync::Mutex<EntryCache>>,
}

impl LogStore {
    pub fn new(group: GroupId, engine: Engine, syncer: Arc<WalSyncer>, cipher: Option<LogCipher>) -> Self {
        Self::with_cache_limits(group, engine, syncer, cipher, ENTRY_CACHE_ENTRIES_MAX, ENTRY_CACHE_BYTES_MAX)
    }

    /// A store whose entry cache holds at most `max_entries` entries and `max_bytes` stored
    /// bytes (0 entries: no cache). For tests of the cache's edges.
    pub fn with_cache_limits(
        group: GroupId,
        engine: Engine,
        syncer: Arc<WalSyncer>,
        cipher: Option<LogCipher>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Self {
        let cache = Arc::new(std::sync::Mutex::new(EntryCache::new(max_entries, max_bytes)));
        LogStore { group, engine, syncer, cipher, cache }
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

    /// Decodes stored entry bytes under `key`; sealed ones need the log key. Entries written
    /// before the node had a master key (format 1) stay readable.
    fn decode(&self, key: &[u8], stored: &[u8]) -> io::Result<Entry> {
        match stored.split_first() {
            Some((&LOG_ENTRY_FORMAT_SEALED, sealed)) => {
                let Some(c) = &self.cipher else {
                    return Err(data_err("the log entry is encrypted, and this node has no master key ([encryption] config)"));
                };
                let frame = c.open(key, sealed).map_err(|e| data_err(format!("log entry: {e}")))?;
                codec::decode_entry(&frame).map_err(data_err)
            }
            _ => codec::decode_entry(stored).map_err(data_err),
        }
    }

    fn get_meta(&self, tag: u8) -> io::Result<Option<Vec<u8>>> {
        self.engine.get(Cf::RaftMeta, &meta_key::key(self.group, tag)).map_err(io_err)
    }

    /// The first log index still stored, if any (for status reporting).
    pub fn first_index(&self) -> io::Result<Option<u64>> {
        let first = self
            .engine
            .first_in_range(Cf::RaftLog, &log_key(self.group, 0), &group_log_end(self.group))
            .map_err(io_err)?;
        Ok(first.map(|(k, _)| u64::from_be_bytes(k[8..16].try_into().expect("16-byte log key"))))
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
            Bound::Included(x) => log_key(self.group, x.saturating_add(1)),
            Bound::Excluded(x) => log_key(self.group, *x),
            Bound::Unbounded => group_log_end(self.group),
        };
        let end_index = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.cache().get(start, end_index) {
            return Ok(entries);
        }
        let start_key = log_key(self.group, start);
        if start_key >= end {
            return Ok(Vec::new());
        }
        let rows = self.engine.scan(Cf::RaftLog, &start_key, Some(&end), usize::MAX).map_err(io_err)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut expected = start;
        for (k, v) in rows {
            let index = u64::from_be_bytes(k[8..16].try_into().map_err(|_| data_err("short log key"))?);
            let entry = self.decode(&k, &v)?;
            if entry.log_id.index != index {
                return Err(data_err(format!("log entry at key index {index} says index {}", entry.log_id.index)));
            }
            if !out.is_empty() && index != expected {
                return Err(data_err(format!("log has a gap: expected index {expected}, found {index}")));
            }
            expected = index + 1;
            out.push(entry);
        }
        Ok(out)
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
        let last = self
            .engine
            .last_in_range(Cf::RaftLog, &log_key(self.group, 0), &group_log_end(self.group))
            .map_err(io_err)?;
        let last_log_id = match last {
            None => None,
            Some((k, v)) => Some(self.decode(&k, &v)?.log_id),
        };
        let last_purged_log_id = match self.get_meta(meta_key::LAST_PURGED)? {
            None => None,
            Some(b) => codec::decode_opt_log_id(&b).map_err(data_err)?,
        };
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
        // A vote must be on disk before it is acted upon: synced write.
        tokio::task::spawn_blocking(move || engine.write(batch, true)).await.map_err(io_err)?.map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: the committed index is a hint to re-apply faster after a restart; a lost
        // update only means re-learning it from the leader.
        let mut batch = self.engine.batch();
        batch.put(
            Cf::RaftMeta,
            &meta_key::key(self.group, meta_key::COMMITTED),
            &codec::encode_opt_log_id(committed.as_ref()),
        );
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
        let mut batch = self.engine.batch();
        let mut appended = Vec::new();
        for entry in entries {
            let stored = self.encode(&entry);
            batch.put(Cf::RaftLog, &log_key(self.group, entry.log_id.index), &stored);
            appended.push((entry, stored.len()));
        }
        // Readable now (memtable); durable once the syncer has synced the WAL.
        self.engine.write(batch, false).map_err(io_err)?;
        {
            let mut cache = self.cache();
            for (entry, size) in appended {
                cache.push(entry, size);
            }
        }
        self.syncer.tx.send(callback).await.map_err(|_| io_err("WAL syncer stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index + 1).unwrap_or(0);
        self.cache().truncate_from(from);
        let mut batch = self.engine.batch();
        batch.delete_range(Cf::RaftLog, &log_key(self.group, from), &group_log_end(self.group));
        // No sync needed: any later append is synced after this write (one WAL, in order), and
        // a truncation lost in a crash with no later append only restores entries that were
        // never acknowledged as replaced.
        self.engine.write(batch, false).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.cache().purge_upto(log_id.index);
        let mut batch = self.engine.batch();
        batch.put(
            Cf::RaftMeta,
            &meta_key::key(self.group, meta_key::LAST_PURGED),
            &codec::encode_opt_log_id(Some(&log_id)),
        );
        batch.delete_range(Cf::RaftLog, &log_key(self.group, 0), &log_key(self.group, log_id.index + 1));
        // Purged entries are covered by a snapshot; losing the purge in a crash is harmless.
        self.engine.write(batch, false).map_err(io_err)
    }
}
