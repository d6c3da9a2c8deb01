//! The RocksDB instance of a node: column families, reads, atomic batches, snapshots,
//! flushes shared by their callers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRawIteratorWithThreadMode, DBRecoveryMode,
    DBWithThreadMode, Options, ReadOptions, ReadTier, SingleThreaded, SnapshotWithThreadMode, WriteOptions,
};

use crate::error::{key_hex, rocks, Error, Result};
use crate::value::{decode_value, encode_value};

/// The RocksDB handle. Spelled out (not `rocksdb::DB`) so that a workspace-wide
/// `multi-threaded-cf` feature cannot change the column-family handle type under us.
type Db = DBWithThreadMode<SingleThreaded>;

/// The staging directory of SST files, inside the DB directory ([`Engine::staging_dir`]).
const STAGING_DIR: &str = "ingest-staging";
/// Bloom filter bits per key of the Data column family (about 1% false positives).
const DATA_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Compression of the Data column family by level (RocksDB's 7 levels), the bottommost
/// level included: lz4, not zstd. Sealed values (an encrypted tenant's) do not compress,
/// and zstd on the bottommost level, where a small data set's level 0 is compacted, took
/// about a fifth of all CPU during a bulk load (docs/BENCHMARKS.md, "Bulk load"); lz4
/// gives up on them cheaply and still compresses keys and plaintext tenants' values.
const DATA_COMPRESSION_PER_LEVEL: [DBCompressionType; 7] = [
    DBCompressionType::None,
    DBCompressionType::None,
    DBCompressionType::Lz4,
    DBCompressionType::Lz4,
    DBCompressionType::Lz4,
    DBCompressionType::Lz4,
    DBCompressionType::Lz4,
];

/// The RocksDB column families of a node. Names are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// `"raft_log"`: Raft log entries, written and read raw by the `raft` crate.
    RaftLog,
    /// `"raft_meta"`: Raft state such as vote and purge point, raw.
    RaftMeta,
    /// `"data"`: replicated cells under data keys ([`crate::keys`]), every value with the
    /// checksummed header of [`crate::value`].
    Data,
    /// `"local"`: node-local state that is not replicated, raw.
    Local,
}

impl Cf {
    /// Every column family, in the order they are created.
    pub const ALL: [Cf; 4] = [Cf::RaftLog, Cf::RaftMeta, Cf::Data, Cf::Local];

    /// The RocksDB name of the column family (part of the on-disk format).
    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::Data => "data",
            Cf::Local => "local",
        }
    }
}

/// Tuning of an [`Engine`]. None of these affect the on-disk format.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Capacity of the block cache shared by all column families, in bytes. Default 256 MiB.
    pub block_cache_bytes: usize,
    /// Size of one memtable of each column family, in bytes. Default 64 MiB.
    pub write_buffer_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { block_cache_bytes: 256 << 20, write_buffer_bytes: 64 << 20 }
    }
}

/// The storage engine of a node: one RocksDB instance with the column families of [`Cf`].
///
/// Cloning is cheap and shares the instance; it closes when the last clone, batch and
/// snapshot are dropped.
#[derive(Clone)]
pub struct Engine {
    db: Arc<Db>,
    path: PathBuf,
    flushes: Arc<FlushTracker>,
}

/// The node-wide record of flushes, so that one flush serves every caller whose writes it
/// covered ([`Engine::flush_through`]).
#[derive(Default)]
struct FlushTracker {
    /// The highest sequence number that a completed flush covered: every write at or below
    /// it is in SST files. Held while a flush runs, so callers queue behind it and then find
    /// their writes covered.
    flushed_through: std::sync::Mutex<u64>,
}

/// A handle that does not keep the instance open: for background threads, so that the
/// instance closes where its last user drops it, never in a thread racing process exit.
#[derive(Clone)]
pub struct WeakEngine {
    db: std::sync::Weak<Db>,
    path: PathBuf,
    flushes: Arc<FlushTracker>,
}

impl WeakEngine {
    /// The engine, if some [`Engine`] still holds it open.
    pub fn upgrade(&self) -> Option<Engine> {
        self.db.upgrade().map(|db| Engine { db, path: self.path.clone(), flushes: Arc::clone(&self.flushes) })
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The handle of a column family. Every column family is opened with the instance, so a
/// missing one is a bug.
fn handle(db: &Db, cf: Cf) -> &ColumnFamily {
    db.cf_handle(cf.name()).unwrap_or_else(|| panic!("column family {} not open", cf.name()))
}

/// Whether `[start, end)` is empty. An inverted range is a caller bug (debug builds panic);
/// release builds treat it as empty.
fn is_empty_range(start: &[u8], end: Option<&[u8]>) -> bool {
    end.is_some_and(|end| {
        debug_assert!(start <= end, "inverted range {}..{}", key_hex(start), key_hex(end));
        start >= end
    })
}

/// Read options bounding an iterator to `[start, end)`.
fn range_read_options(start: &[u8], end: Option<&[u8]>) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    read_options.set_iterate_lower_bound(start);
    if let Some(end) = end {
        read_options.set_iterate_upper_bound(end);
    }
    read_options
}

/// Calls `f` on each item of `iter` from `start` on, in order, until `f` returns `Ok(false)`
/// or the iterator ends; then reports the iterator's status.
fn drive(
    mut iter: DBRawIteratorWithThreadMode<'_, Db>,
    op: &'static str,
    start: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    iter.seek(start);
    while let Some((key, value)) = iter.item() {
        if !f(key, value)? {
            return Ok(());
        }
        iter.next();
    }
    iter.status().map_err(rocks(op))
}

/// The options of one column family.
fn cf_options(cf: Cf, opts: &EngineOptions, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    let mut cf_opts = Options::default();
    cf_opts.set_write_buffer_size(opts.write_buffer_bytes);
    cf_opts.set_compression_type(DBCompressionType::Lz4);
    if cf == Cf::Data {
        // Point reads of absent cells are common; the bottommost level holds most data.
        table.set_bloom_filter(DATA_BLOOM_BITS_PER_KEY, false);
        // As TiKV: levels 0 and 1 (about a tenth of the data, rewritten soonest) are not
        // compressed, so flushes and the first compactions spend no CPU on it; sealed
        // values do not compress anyway.
        cf_opts.set_compression_per_level(&DATA_COMPRESSION_PER_LEVEL);
    }
    cf_opts.set_block_based_table_factory(&table);
    cf_opts
}

impl Engine {
    /// Opens or creates the DB at `path` with all four column families.
    ///
    /// WAL recovery mode is PointInTime: after a crash, a consistent prefix of the writes
    /// survives (every write made durable by `sync` or [`Engine::sync_wal`], at least).
    /// Data is compressed with lz4 (the data column family: not on levels 0 and 1).
    pub fn open(path: &Path, opts: &EngineOptions) -> Result<Engine> {
        std::fs::create_dir_all(path).map_err(|source| Error::Io { op: "create engine directory", source })?;
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        // Every flush (full memtable, manual, shutdown) writes all column families as one
        // cut: the state machine writes without the WAL (`write_unlogged`), so its data and
        // its applied index must always reach SST files together (docs/FORMATS.md, "Crash
        // safety").
        db_opts.set_atomic_flush(true);
        // RocksDB's unused "default" column family; snappy is not linked in.
        db_opts.set_compression_type(DBCompressionType::Lz4);
        let descriptors = Cf::ALL.map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf, opts, &cache)));
        let db = Db::open_cf_descriptors(&db_opts, path, descriptors).map_err(rocks("open"))?;
        // A file staged before a crash is never ingested: its run is applied again from the log.
        let staging = path.join(STAGING_DIR);
        match std::fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io { op: "wipe the SST staging directory", source: e })
            }
            _ => {}
        }
        tracing::info!(path = %path.display(), ?opts, "engine opened");
        Ok(Engine { db: Arc::new(db), path: path.to_path_buf(), flushes: Arc::default() })
    }

    /// Where SST files are made and staged before they are ingested
    /// ([`Engine::write_data_sst`], [`Engine::ingest_data_sst`]): `ingest-staging` inside the
    /// DB directory (RocksDB ignores names it did not make; a hard link into the DB cannot
    /// cross file systems). Wiped when the engine opens.
    pub fn staging_dir(&self) -> PathBuf {
        self.path.join(STAGING_DIR)
    }

    /// The directory of the DB.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw read (no value header): used for Raft log and metadata.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(handle(&self.db, cf), key).map_err(rocks("get"))
    }

    /// Like [`Engine::get`], but answers only from memory (memtables and the block cache):
    /// `Ok(None)` when the answer needs a disk read. Never blocks on I/O, so async code may
    /// call it directly and fall back to a blocking thread only for `Ok(None)`.
    pub fn get_in_memory(&self, cf: Cf, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        let mut read_options = ReadOptions::default();
        read_options.set_read_tier(ReadTier::BlockCache);
        match self.db.get_cf_opt(handle(&self.db, cf), key, &read_options) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(rocks("get in memory")(e)),
        }
    }

    /// An estimate of what `[start, end)` of `cf` holds on disk, from RocksDB's file
    /// metadata (no data is read): (bytes of SST files, keys). The keys are the column
    /// family's estimated key count in proportion to the range's share of its bytes. Data
    /// still in memtables is not counted.
    pub fn approximate_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> (u64, u64) {
        if start >= end {
            return (0, 0);
        }
        let h = handle(&self.db, cf);
        let bytes = self.db.get_approximate_sizes_cf(h, &[rocksdb::Range::new(start, end)]).first().copied().unwrap_or(0);
        let total = self.db.get_approximate_sizes_cf(h, &[rocksdb::Range::new(&[], &[0xff; 16])]).first().copied().unwrap_or(0);
        let keys_total = self.db.property_int_value_cf(h, "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0);
        let keys = if total == 0 { 0 } else { ((keys_total as u128 * bytes.min(total) as u128) / total as u128) as u64 };
        (bytes, keys)
    }

    /// Raw (key, value) pairs of `cf` in `[start, end)` in key order (end None = to the end
    /// of the column family), at most `limit` of them.
    pub fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit == 0 || is_empty_range(start, end) {
            return Ok(out);
        }
        let iter = self.db.raw_iterator_cf_opt(handle(&self.db, cf), range_read_options(start, end));
        drive(iter, "scan", start, |key, value| {
            out.push((key.to_vec(), value.to_vec()));
            Ok(out.len() < limit)
        })?;
        debug_assert!(out.len() <= limit);
        Ok(out)
    }

    /// The last raw (key, value) of `cf` in `[start, end)`, or None.
    pub fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if is_empty_range(start, Some(end)) {
            return Ok(None);
        }
        let mut iter = self.db.raw_iterator_cf_opt(handle(&self.db, cf), range_read_options(start, Some(end)));
        iter.seek_to_last();
        if let Some((key, value)) = iter.item() {
            debug_assert!(start <= key && key < end);
            return Ok(Some((key.to_vec(), value.to_vec())));
        }
        iter.status().map_err(rocks("last_in_range"))?;
        Ok(None)
    }

    /// The first raw (key, value) of `cf` in `[start, end)`, or None.
    pub fn first_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan(cf, start, Some(end), 1)?.pop())
    }

    /// An empty batch for this engine.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch { inner: rocksdb::WriteBatch::default(), db: Arc::clone(&self.db) }
    }

    /// Writes `batch` atomically: after a crash, all of it or none of it is visible.
    /// With `sync`, the WAL is fsynced before returning.
    ///
    /// # Panics
    ///
    /// If `batch` was made by another engine.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        self.write_with(batch, &write_options)
    }

    /// Writes `batch` atomically to the memtables only, without the WAL: it is durable once
    /// a flush has written it to SST files (every flush is atomic across the column
    /// families), and a crash before that loses it whole. For state that can be rebuilt
    /// from durable state: the state machine, whose applied index is in the same batch and
    /// whose lost entries are applied again from the (logged) Raft log.
    ///
    /// # Panics
    ///
    /// If `batch` was made by another engine.
    pub fn write_unlogged(&self, batch: WriteBatch) -> Result<()> {
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        self.write_with(batch, &write_options)
    }

    fn write_with(&self, batch: WriteBatch, write_options: &WriteOptions) -> Result<()> {
        assert!(Arc::ptr_eq(&batch.db, &self.db), "write batch of another engine");
        self.db.write_opt(batch.inner, write_options).map_err(rocks("write"))
    }

    /// Flushes every column family's memtable to SST files, as one atomic cut, and waits
    /// for it: every write so far, logged or not, is then durable.
    pub fn flush_all(&self) -> Result<()> {
        self.flush_through(self.db.latest_sequence_number()).map(|_| ())
    }

    /// Makes every write up to sequence number `sequence` (a [`Snapshot`]'s or
    /// [`OwnedSnapshot`]'s) durable in SST files, logged or not: flushes every column family
    /// as one atomic cut, unless a flush that started after `sequence` has completed
    /// already. Returns whether it flushed. Callers queue behind a running flush and then
    /// usually find their writes covered, so one flush serves every caller that arrived
    /// while it ran (every Raft group of the node making its applied state durable).
    pub fn flush_through(&self, sequence: u64) -> Result<bool> {
        let mut flushed_through = self.flushes.flushed_through.lock().unwrap_or_else(|e| e.into_inner());
        if *flushed_through >= sequence {
            return Ok(false);
        }
        // Every write at or below `target` is in a memtable (a sequence number is published
        // once its write is), and the flush below switches and writes every memtable.
        let target = self.db.latest_sequence_number();
        assert!(target >= sequence, "sequence number {sequence} was never published (latest {target})");
        let handles: Vec<&ColumnFamily> = Cf::ALL.iter().map(|cf| handle(&self.db, *cf)).collect();
        let mut flush_options = rocksdb::FlushOptions::default();
        flush_options.set_wait(true);
        self.db.flush_cfs_opt(&handles, &flush_options).map_err(rocks("flush"))?;
        *flushed_through = target;
        Ok(true)
    }

    /// The highest sequence number a flush made by [`Engine::flush_through`] or
    /// [`Engine::flush_all`] covered (0: none yet since the engine was opened).
    pub fn flushed_through(&self) -> u64 {
        *self.flushes.flushed_through.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every write so far durable (RocksDB `FlushWAL(sync = true)`). Used for group
    /// commit: several writes with `sync = false`, then one `sync_wal`.
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(rocks("sync_wal"))
    }

    /// Writes `cells` (data keys in strictly increasing order, and their stored values) into
    /// a new SST file at `path` for the Data column family (not synced: it is read back and
    /// sent, not kept); returns its size in bytes. An out-of-order or repeated key is refused (the file is then incomplete: the
    /// caller removes it). For [`Engine::ingest_data_sst`] on this or another node.
    pub fn write_data_sst<'a>(&self, path: &Path, cells: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<u64> {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(DATA_BLOOM_BITS_PER_KEY, false);
        let mut opts = Options::default();
        // Ingested files land on level 0 when they overlap what is stored, which is not
        // compressed (DATA_COMPRESSION_PER_LEVEL); compaction compresses them further down.
        opts.set_compression_type(DBCompressionType::None);
        opts.set_block_based_table_factory(&table);
        let mut writer = rocksdb::SstFileWriter::create(&opts);
        writer.open(path).map_err(rocks("open SST writer"))?;
        let mut last: Option<&[u8]> = None;
        for (key, value) in cells {
            if last.is_some_and(|l| l >= key) {
                return Err(Error::InvalidKey { reason: format!("SST cells out of order at key {}", key_hex(key)) });
            }
            writer.put(key, value).map_err(rocks("write SST"))?;
            last = Some(key);
        }
        writer.finish().map_err(rocks("finish SST"))?;
        Ok(std::fs::metadata(path).map_err(|source| Error::Io { op: "stat written SST", source })?.len())
    }

    /// Ingests the SST file at `path` (made by [`Engine::write_data_sst`]) into the Data
    /// column family, moving it (the file at `path` is gone afterwards): its cells replace
    /// the stored ones of the same keys, as a write would, and are durable on return
    /// (RocksDB flushes a memtable holding keys of its range first).
    pub fn ingest_data_sst(&self, path: &Path) -> Result<()> {
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        opts.set_allow_blocking_flush(true);
        opts.set_allow_global_seqno(true);
        self.db.ingest_external_file_cf_opts(handle(&self.db, Cf::Data), &opts, vec![path]).map_err(rocks("ingest SST"))?;
        // Ingested: a leftover link is wiped at the next open, no reason to stop.
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an ingested SST file from the staging directory");
            }
        }
        Ok(())
    }

    /// Whether `e` (from [`Engine::ingest_data_sst`]) is RocksDB refusing the file as
    /// malformed or unsupported (`InvalidArgument`, `NotSupported`): the same on every node
    /// given the same bytes. Corruption is not among them: it may be this node's disk.
    pub fn is_refused_file(e: &Error) -> bool {
        matches!(e, Error::Rocks { source, .. } if matches!(source.kind(), rocksdb::ErrorKind::InvalidArgument | rocksdb::ErrorKind::NotSupported))
    }

    /// A handle that does not keep the instance open.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine { db: Arc::downgrade(&self.db), path: self.path.clone(), flushes: Arc::clone(&self.flushes) }
    }

    /// Readies the process to exit: makes every write durable (synced WAL, flushed
    /// memtables) and stops
    /// RocksDB's background flushes and compactions, waiting for running ones. The engine
    /// must not be written afterwards. A process that exits while RocksDB threads still run
    /// can abort in C++ static destructors; after this it can leave with `_exit`.
    pub fn prepare_for_exit(&self) -> Result<()> {
        self.sync_wal()?;
        // Unlogged writes (`write_unlogged`) are durable only once flushed: without this, a
        // restart after a graceful stop would re-apply everything since the last flush.
        self.flush_all()?;
        self.db.cancel_all_background_work(true);
        Ok(())
    }

    /// Reads a cell of the Data column family and verifies its value header.
    ///
    /// Returns the payload, or [`Error::Corruption`] if verification fails.
    pub fn get_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.get(Cf::Data, key)? {
            Some(stored) => Ok(Some(decode_value(key, &stored)?.to_vec())),
            None => Ok(None),
        }
    }

    /// Verified (key, payload) pairs of the Data column family in `[start, end)`, in key
    /// order, at most `limit` of them. Any value failing verification fails the whole scan
    /// with [`Error::Corruption`].
    pub fn scan_values(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut pairs = self.scan(Cf::Data, start, Some(end), limit)?;
        for (key, stored) in &mut pairs {
            let payload_len = decode_value(key, stored)?.len();
            stored.drain(..stored.len() - payload_len);
        }
        Ok(pairs)
    }

    /// A consistent point-in-time view of all column families.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { db: &self.db, inner: self.db.snapshot() }
    }

    /// A point-in-time view like [`Engine::snapshot`] that owns its handle on the instance,
    /// so it can be kept and moved between threads (a snapshot sent to a follower later).
    /// It keeps the instance open, and the versions of the keys it sees from being
    /// compacted away, until it is dropped.
    pub fn owned_snapshot(&self) -> OwnedSnapshot {
        let db = Arc::clone(&self.db);
        let inner = db.snapshot();
        // SAFETY: `inner` borrows the `Db` inside the `Arc`, which lives on the heap and never
        // moves. `OwnedSnapshot` keeps a clone of that `Arc` in `_db` and declares `inner`
        // first, so `inner` is dropped (the RocksDB snapshot released) before the `Arc`, and
        // the borrow never outlives the `Db`. No method hands out anything that borrows
        // `inner` for longer than the `&self` it was called with.
        let inner = unsafe { std::mem::transmute::<SnapshotWithThreadMode<'_, Db>, SnapshotWithThreadMode<'static, Db>>(inner) };
        OwnedSnapshot { inner, _db: db }
    }

    /// Flushes every memtable to SST files and compacts every column family fully, so
    /// that overwritten and deleted values leave the files (`kho node compact`).
    pub fn flush_and_compact_all(&self) -> Result<()> {
        self.flush_all()?;
        for cf in Cf::ALL {
            self.compact(cf)?;
        }
        Ok(())
    }

    /// Compacts the whole range of a column family, every level rewritten (for tests and
    /// operators). The bottommost level is forced: on a small DB RocksDB flushes straight
    /// into it, and a default manual compaction would leave its files, with the values they
    /// overwrote, as they are.
    pub fn compact(&self, cf: Cf) -> Result<()> {
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db.compact_range_cf_opt(handle(&self.db, cf), None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }
}

/// Writes to apply atomically with [`Engine::write`], in order.
pub struct WriteBatch {
    inner: rocksdb::WriteBatch,
    db: Arc<Db>,
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch").field("len", &self.len()).field("size_bytes", &self.size_bytes()).finish()
    }
}

impl WriteBatch {
    /// Sets `key` of `cf` to the raw `value`.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(handle(&self.db, cf), key, value);
    }

    /// Deletes `key` of `cf`.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(handle(&self.db, cf), key);
    }

    /// Deletes every key of `cf` in `[start, end)`. An empty range is a no-op.
    ///
    /// # Panics
    ///
    /// If `start > end`.
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        assert!(start <= end, "delete_range: inverted range {}..{}", key_hex(start), key_hex(end));
        if start < end {
            self.inner.delete_range_cf(handle(&self.db, cf), start, end);
        }
    }

    /// Sets data `key` of the Data column family to `payload`, behind a value header.
    pub fn put_value(&mut self, key: &[u8], payload: &[u8]) {
        self.put(Cf::Data, key, &encode_value(key, payload));
    }

    /// The number of operations in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The size of the batch's serialized representation, in bytes.
    pub fn size_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

/// A consistent point-in-time view of all column families of an [`Engine`].
pub struct Snapshot<'a> {
    db: &'a Db,
    inner: SnapshotWithThreadMode<'a, Db>,
}

impl fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot").field("sequence_number", &self.inner.sequence_number()).finish()
    }
}

impl Snapshot<'_> {
    /// The sequence number of the view: it sees every write at or below it, none above.
    pub fn sequence_number(&self) -> u64 {
        self.inner.sequence_number()
    }

    /// Raw read of `key` of `cf` as of the snapshot.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        snapshot_get(self.db, &self.inner, cf, key)
    }

    /// Calls `f` for each raw (key, value) of `cf` in `[start, end)` in key order (end None =
    /// to the end of the column family), stopping early if `f` returns `Ok(false)`. An error
    /// from `f` stops the iteration and is returned.
    pub fn for_each(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        snapshot_for_each(self.db, &self.inner, cf, start, end, f)
    }
}

/// A consistent point-in-time view of all column families that owns its handle on the
/// instance ([`Engine::owned_snapshot`]): `Send`, `Sync` and `'static`.
pub struct OwnedSnapshot {
    /// Borrows the `Db` of `_db`; declared first so that it is dropped first.
    inner: SnapshotWithThreadMode<'static, Db>,
    _db: Arc<Db>,
}

impl fmt::Debug for OwnedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedSnapshot").field("sequence_number", &self.inner.sequence_number()).finish()
    }
}

impl OwnedSnapshot {
    /// The sequence number of the view: it sees every write at or below it, none above.
    pub fn sequence_number(&self) -> u64 {
        self.inner.sequence_number()
    }

    /// Raw read of `key` of `cf` as of the snapshot.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        snapshot_get(&self._db, &self.inner, cf, key)
    }

    /// [`Snapshot::for_each`] on this view.
    pub fn for_each(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        snapshot_for_each(&self._db, &self.inner, cf, start, end, f)
    }
}

fn snapshot_get(db: &Db, snap: &SnapshotWithThreadMode<'_, Db>, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
    snap.get_cf(handle(db, cf), key).map_err(rocks("snapshot get"))
}

fn snapshot_for_each(
    db: &Db,
    snap: &SnapshotWithThreadMode<'_, Db>,
    cf: Cf,
    start: &[u8],
    end: Option<&[u8]>,
    f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    if is_empty_range(start, end) {
        return Ok(());
    }
    let iter = snap.raw_iterator_cf_opt(handle(db, cf), range_read_options(start, end));
    drive(iter, "snapshot for_each", start, f)
}
