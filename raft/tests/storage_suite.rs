//! openraft's storage conformance suite against Kho's log store (the node's shared log, metadata in
//! RocksDB) and state machine (RocksDB).

use kho_engine::crypto::MasterKey;
use kho_engine::{Engine, EngineOptions};
use kho_raft::log_store::{open_shared_log, LogStore, LogSyncer};
use kho_raft::state_machine::StateMachine;
use kho_raft::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

/// Builds stores with or without a master key (sealed log entries and snapshots).
struct RocksBuilder {
    master_key: Option<u8>,
    /// Entry cache limit, entries (`None`: the default).
    cache_entries: Option<usize>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let err = |e: &dyn std::fmt::Display| StorageError::read(TypeConfig::err_from_string(e.to_string()));
        let dir = TempDir::new().map_err(|e| err(&e))?;
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).map_err(|e| err(&e))?;
        let master = self.master_key.map(|b| std::sync::Arc::new(MasterKey::new(zeroize::Zeroizing::new([b; 32]))));
        let cipher = master.as_ref().map(|m| m.log_cipher());
        let syncer = LogSyncer::start();
        let shared = open_shared_log(&engine, &dir.path().join("log")).map_err(|e| err(&e))?;
        let log = match self.cache_entries {
            None => LogStore::open(1, engine.clone(), shared, syncer, cipher),
            Some(n) => LogStore::open_with_cache_limits(1, engine.clone(), shared, syncer, cipher, n, usize::MAX),
        }
        .map_err(|e| err(&e))?;
        let sm = StateMachine::open(
            1,
            kho_raft::GroupKind::Meta,
            engine,
            log.group_log(),
            dir.path().join("snapshots"),
            64 << 10,
            master,
            Default::default(),
        )
        .map_err(|e| err(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb_store() {
    TypeConfig::run(async {
        Suite::test_all(RocksBuilder { master_key: None, cache_entries: None }).await.expect("openraft storage suite");
    });
}

#[test]
fn openraft_storage_suite_passes_with_a_master_key() {
    TypeConfig::run(async {
        Suite::test_all(RocksBuilder { master_key: Some(7), cache_entries: None }).await.expect("openraft storage suite, encrypted");
    });
}

#[test]
fn openraft_storage_suite_passes_with_a_tiny_entry_cache() {
    // Three cached entries: most reads straddle the cache's edge and go to RocksDB.
    TypeConfig::run(async {
        Suite::test_all(RocksBuilder { master_key: Some(7), cache_entries: Some(3) }).await.expect("openraft storage suite, 3-entry cache");
    });
}

/// Random appends, truncations and purges on a store with a small entry cache; after each,
/// random ranges read through it must equal the same ranges read from the shared log
/// alone (a second store over the same log with no cache).
#[test]
fn reads_through_the_entry_cache_equal_reads_from_the_segments() {
    use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
    use openraft::testing::{blank_ent, log_id};
    use rand::{Rng, SeedableRng};

    let seed: u64 = std::env::var("KHO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("entry cache test seed {seed} (KHO_TEST_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    TypeConfig::run(async move {
        let dir = TempDir::new().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).expect("engine");
        let master = MasterKey::new(zeroize::Zeroizing::new([9; 32]));
        let syncer = LogSyncer::start();
        let shared = open_shared_log(&engine, &dir.path().join("log")).expect("open the shared log");
        let mut cached =
            LogStore::open_with_cache_limits(1, engine.clone(), shared, syncer.clone(), Some(master.log_cipher()), 40, usize::MAX)
                .expect("open log");
        let mut plain = LogStore::over(1, engine.clone(), cached.group_log(), syncer, Some(master.log_cipher()), 0, 0);
        let (mut first, mut next, mut term) = (1u64, 1u64, 1u64);
        let mut cache_checks = 0;
        for step in 0..600 {
            match rng.random_range(0..10) {
                0..=5 => {
                    let n = rng.random_range(1..30);
                    let entries: Vec<_> = (next..next + n).map(|i| blank_ent::<TypeConfig>(term, 1, i)).collect();
                    // Reads see appended entries before the sync: no need to wait for it.
                    cached.append(entries, IOFlushed::<TypeConfig>::noop()).await.expect("append");
                    next += n;
                }
                6 | 7 if next > first => {
                    let keep = rng.random_range(first - 1..next);
                    let last = (keep >= first).then(|| log_id::<TypeConfig>(term, 1, keep));
                    cached.truncate_after(last).await.expect("truncate");
                    next = keep + 1;
                    term += 1;
                }
                8 if next > first + 1 => {
                    let upto = rng.random_range(first..next - 1);
                    cached.purge(log_id::<TypeConfig>(term, 1, upto)).await.expect("purge");
                    first = upto + 1;
                }
                _ => {}
            }
            for _ in 0..5 {
                let a = rng.random_range(first.saturating_sub(3)..next + 3);
                let b = rng.random_range(a..next + 5);
                let from_cache = cached.try_get_log_entries(a..b).await.expect("cached read");
                let from_disk = plain.try_get_log_entries(a..b).await.expect("segment read");
                assert_eq!(from_cache, from_disk, "seed {seed} step {step}: entries {a}..{b}");
                let tail_cache = cached.try_get_log_entries(a..).await.expect("cached read");
                let tail_disk = plain.try_get_log_entries(a..).await.expect("segment read");
                assert_eq!(tail_cache, tail_disk, "seed {seed} step {step}: entries {a}..");
            }
            // The cache must end at the log's end and hold what the segments hold.
            if let Some((a, b)) = cached.cached_range() {
                assert_eq!(b, next, "seed {seed} step {step}: the cache ends at {b}, the log at {next}");
                let from_cache = cached.try_get_log_entries(a..b).await.expect("cached read");
                let from_disk = plain.try_get_log_entries(a..b).await.expect("segment read");
                assert_eq!(from_cache, from_disk, "seed {seed} step {step}: cached entries {a}..{b}");
                cache_checks += 1;
            }
        }
        assert!(plain.cached_range().is_none(), "a store with a 0-entry cache caches nothing");
        assert!(cache_checks > 300, "seed {seed}: the cache was empty after {} of 600 steps", 600 - cache_checks);
    });
}

/// A data directory from before the segment log kept entries in the `raft_log` column
/// family: opening the store moves them into the shared log once, and they read back the same.
#[test]
fn entries_of_the_raft_log_column_family_move_into_segments() {
    use kho_engine::Cf;
    use kho_raft::codec::encode_entry;
    use kho_raft::log_store::log_key;
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::testing::blank_ent;

    TypeConfig::run(async {
        let dir = TempDir::new().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).expect("engine");
        let entries: Vec<_> = (1..=50u64).map(|i| blank_ent::<TypeConfig>(2, 1, i)).collect();
        let mut batch = engine.batch();
        for e in &entries {
            batch.put(Cf::RaftLog, &log_key(1, e.log_id.index), &encode_entry(e));
        }
        engine.write(batch, true).expect("write old-layout log");
        let log_dir = dir.path().join("log");
        {
            let shared = open_shared_log(&engine, &log_dir).expect("open the shared log");
            let mut store = LogStore::open(1, engine.clone(), shared, LogSyncer::start(), None).expect("open");
            assert_eq!(store.try_get_log_entries(1..51).await.expect("read"), entries);
            let state = store.get_log_state().await.expect("log state");
            assert_eq!(state.last_log_id.map(|l| l.index), Some(50));
        }
        let left = engine.scan(Cf::RaftLog, &log_key(1, 0), Some(&log_key(2, 0)), usize::MAX).expect("scan");
        assert!(left.is_empty(), "{} entries left in the column family", left.len());
        // Reopened: read from the segments alone (a store with no cache).
        let engine2 = engine.clone();
        let shared = open_shared_log(&engine2, &log_dir).expect("reopen the shared log");
        let mut store = LogStore::open_with_cache_limits(1, engine2, shared, LogSyncer::start(), None, 0, 0).expect("reopen");
        assert_eq!(store.try_get_log_entries(1..51).await.expect("read"), entries);
    });
}

/// A data directory of the previous build kept one segment log per group in
/// `raft-log/<group>/`: the node moves each group's entries above its purge point into the
/// shared log once, removes the old directory, and the entries read back the same.
#[test]
fn per_group_segment_logs_move_into_the_shared_log() {
    use kho_engine::segment_log::SegmentLog;
    use kho_engine::Cf;
    use kho_raft::codec::{encode_entry, encode_opt_log_id};
    use kho_raft::log_store::{meta_key, migrate_group_segment_logs};
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::testing::{blank_ent, log_id};

    TypeConfig::run(async {
        let dir = TempDir::new().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).expect("engine");
        let legacy = dir.path().join("raft-log");
        // Group 1: entries 1..=60, purged up to 10 (its purge point is in raft_meta).
        let entries: Vec<_> = (1..=60u64).map(|i| blank_ent::<TypeConfig>(2, 1, i)).collect();
        {
            let (old, _) = SegmentLog::open(&legacy.join("1"), None).expect("old segment log");
            let stored: Vec<Vec<u8>> = entries.iter().map(encode_entry).collect();
            let records: Vec<(u64, &[u8])> = entries.iter().zip(&stored).map(|(e, b)| (e.log_id.index, b.as_slice())).collect();
            old.append(&records).expect("append");
            old.sync().expect("sync");
            old.purge_upto(10).expect("purge");
        }
        let mut batch = engine.batch();
        batch.put(Cf::RaftMeta, &meta_key::key(1, meta_key::LAST_PURGED), &encode_opt_log_id(Some(&log_id::<TypeConfig>(2, 1, 10))));
        engine.write(batch, true).expect("purge point");

        let log_dir = dir.path().join("log");
        let shared = open_shared_log(&engine, &log_dir).expect("open the shared log");
        migrate_group_segment_logs(&engine, &legacy, &shared).expect("migrate");
        assert!(!legacy.exists(), "the old per-group log directory is removed once moved");
        let mut store = LogStore::open(1, engine.clone(), shared, LogSyncer::start(), None).expect("open");
        assert_eq!(store.try_get_log_entries(11..61).await.expect("read"), entries[10..].to_vec());
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(60));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(10));
        drop(store);

        // After a restart, from the shared log alone.
        let shared = open_shared_log(&engine, &log_dir).expect("reopen the shared log");
        migrate_group_segment_logs(&engine, &legacy, &shared).expect("nothing left to migrate");
        let mut store = LogStore::open_with_cache_limits(1, engine.clone(), shared, LogSyncer::start(), None, 0, 0).expect("reopen");
        assert_eq!(store.try_get_log_entries(11..61).await.expect("read"), entries[10..].to_vec());
    });
}

/// A crash in the middle of that move leaves the old directory and a stream holding a
/// prefix of it: the next start appends the rest (nothing is skipped) before it removes the
/// old directory.
#[test]
fn a_move_of_per_group_logs_interrupted_by_a_crash_resumes() {
    use kho_engine::segment_log::SegmentLog;
    use kho_raft::codec::encode_entry;
    use kho_raft::log_store::migrate_group_segment_logs;
    use openraft::storage::RaftLogReader;
    use openraft::testing::blank_ent;

    TypeConfig::run(async {
        let dir = TempDir::new().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).expect("engine");
        let legacy = dir.path().join("raft-log");
        let entries: Vec<_> = (1..=3000u64).map(|i| blank_ent::<TypeConfig>(2, 1, i)).collect();
        let stored: Vec<Vec<u8>> = entries.iter().map(encode_entry).collect();
        {
            let (old, _) = SegmentLog::open(&legacy.join("1"), None).expect("old segment log");
            let records: Vec<(u64, &[u8])> = entries.iter().zip(&stored).map(|(e, b)| (e.log_id.index, b.as_slice())).collect();
            old.append(&records).expect("append");
            old.sync().expect("sync");
        }
        let log_dir = dir.path().join("log");
        {
            // The interrupted move: the first 1,500 entries reached the shared log.
            let shared = open_shared_log(&engine, &log_dir).expect("open the shared log");
            let records: Vec<(u64, &[u8])> = entries[..1500].iter().zip(&stored).map(|(e, b)| (e.log_id.index, b.as_slice())).collect();
            shared.append(1, &records).expect("append a prefix");
            shared.sync().expect("sync");
        }
        let shared = open_shared_log(&engine, &log_dir).expect("reopen the shared log");
        migrate_group_segment_logs(&engine, &legacy, &shared).expect("resume the move");
        assert!(!legacy.exists(), "the old directory is removed once everything moved");
        let mut store = LogStore::open_with_cache_limits(1, engine.clone(), shared, LogSyncer::start(), None, 0, 0).expect("open");
        assert_eq!(store.try_get_log_entries(1..3001).await.expect("read"), entries);
    });
}

// ---------------------------------------------------------------------------------------
// Snapshots: a group's key range at one point in time, built lazily, and the purge rule.

mod snapshots {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use kho_engine::crypto::MasterKey;
    use kho_engine::{Cf, Engine, EngineOptions};
    use kho_raft::log_store::{meta_key, open_shared_log, LogStore, LogSyncer};
    use kho_raft::snapshot::{SnapshotData, SnapshotReader, SnapshotView, INSTALLING_FILE};
    use kho_raft::state_machine::StateMachine;
    use kho_raft::{codec, KeyRange, LogId, TypeConfig};
    use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
    use openraft::testing::log_id;
    use openraft::type_config::TypeConfigExt;
    use tempfile::TempDir;

    const CHUNK: usize = 4 << 10;
    const GROUP_A: u64 = 1;
    const GROUP_B: u64 = 2;

    /// Tenant `t`'s range `[t u32 BE, t + 1 u32 BE)`.
    fn tenant(t: u32) -> KeyRange {
        KeyRange::new(t.to_be_bytes().to_vec(), Some((t + 1).to_be_bytes().to_vec()))
    }

    /// A data key of tenant `t`.
    fn key(t: u32, row: &str) -> Vec<u8> {
        kho_engine::keys::data_key(t, 1, row.as_bytes(), 1, b"")
    }

    fn master() -> Arc<MasterKey> {
        Arc::new(MasterKey::new(zeroize::Zeroizing::new([7; 32])))
    }

    fn applied(index: u64) -> LogId {
        log_id::<TypeConfig>(3, 1, index)
    }

    /// One node's storage: an engine, its shared log, and a directory for snapshots.
    struct Node {
        dir: TempDir,
        engine: Engine,
        shared: Arc<kho_engine::shared_log::SharedLog>,
        master: Option<Arc<MasterKey>>,
    }

    impl Node {
        fn new(master: Option<Arc<MasterKey>>) -> Node {
            let dir = TempDir::new().expect("temp dir");
            let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).expect("engine");
            let shared = open_shared_log(&engine, &dir.path().join("log")).expect("shared log");
            Node { dir, engine, shared, master }
        }

        fn snapshot_dir(&self, group: u64) -> PathBuf {
            self.dir.path().join("snapshots").join(group.to_string())
        }

        /// Stores `range` as `group`'s key range (what a split will do in its apply batch).
        fn set_range(&self, group: u64, range: &KeyRange) {
            let mut batch = self.engine.batch();
            batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::RANGE), &codec::encode_key_range(range));
            self.engine.write(batch, true).expect("write range");
        }

        /// Opens `group`'s log store (purges checked against the state machine, as on a
        /// node) and state machine.
        fn open(&self, group: u64) -> (LogStore, StateMachine) {
            let cipher = self.master.as_ref().map(|m| m.log_cipher());
            let log = LogStore::open(group, self.engine.clone(), self.shared.clone(), LogSyncer::start(), cipher).expect("log");
            let sm = StateMachine::open(
                group,
                kho_raft::GroupKind::Data,
                self.engine.clone(),
                log.group_log(),
                self.snapshot_dir(group),
                CHUNK,
                self.master.clone(),
                Default::default(),
            )
            .expect("state machine");
            let log = log.with_purge_bound(sm.state().flushed_applied());
            (log, sm)
        }

        /// Applies as the state machine does: `cells` and the applied id in one batch,
        /// without the WAL.
        fn apply(&self, group: u64, index: u64, cells: &[(Vec<u8>, Vec<u8>)]) {
            let mut batch = self.engine.batch();
            for (k, v) in cells {
                batch.put_value(k, v);
            }
            batch.put(Cf::RaftMeta, &meta_key::key(group, meta_key::APPLIED), &codec::encode_opt_log_id(Some(&applied(index))));
            self.engine.write_unlogged(batch).expect("apply");
        }

        /// Every raw (key, value) of the data column family in `range`.
        fn data(&self, range: &KeyRange) -> Vec<(Vec<u8>, Vec<u8>)> {
            self.engine.scan(Cf::Data, &range.start, range.end(), usize::MAX).expect("scan")
        }

        /// The names in `group`'s snapshot directory.
        fn snapshot_files(&self, group: u64) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.snapshot_dir(group))
                .expect("list the snapshot directory")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn cells(t: u32, prefix: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n).map(|i| (key(t, &format!("{prefix}-{i:04}")), format!("Nguyen Van An {t}/{prefix}/{i:04}").into_bytes())).collect()
    }

    fn view(data: &SnapshotData) -> &SnapshotView {
        match data {
            SnapshotData::View(v) => v,
            other => panic!("a built snapshot is a view, not {other:?}"),
        }
    }

    /// The records of a snapshot's stream, written to `path`.
    fn stream_records(v: &SnapshotView, path: &Path, cipher: Option<&kho_engine::crypto::LogCipher>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let written = v.write_stream_file(path, false).expect("write the stream");
        let mut r = SnapshotReader::open(path, cipher).expect("open the stream");
        assert_eq!(r.header(), &v.header);
        let mut all = Vec::new();
        while let Some(c) = r.next_chunk().expect("chunk") {
            all.extend(c);
        }
        assert_eq!(all.len() as u64, written);
        all
    }

    /// Two groups on one engine with disjoint ranges: a snapshot of group A holds A's range
    /// only, at exactly the applied index read with it; what is written after it was built
    /// is not in it; its stream is sealed on a node with a master key; and no snapshot file
    /// is written.
    #[test]
    fn a_snapshot_is_its_groups_range_at_the_applied_index_read_with_it() {
        TypeConfig::run(async {
            let node = Node::new(Some(master()));
            node.set_range(GROUP_A, &tenant(5));
            node.set_range(GROUP_B, &tenant(6));
            let (_log_a, mut sm_a) = node.open(GROUP_A);
            let (_log_b, _sm_b) = node.open(GROUP_B);
            assert_eq!(sm_a.state().range(), tenant(5));
            assert!(sm_a.get_current_snapshot().await.expect("current").is_none(), "nothing applied, no snapshot");

            let a = cells(5, "a", 300);
            node.apply(GROUP_A, 40, &a);
            node.apply(GROUP_B, 70, &cells(6, "b", 200));
            let built = sm_a.get_snapshot_builder().await.build_snapshot().await.expect("build");
            assert_eq!(built.meta.last_log_id, Some(applied(40)));
            let v = view(&built.snapshot);
            assert_eq!(v.header.range, tenant(5));
            assert!(node.engine.flushed_through() >= v.view.sequence_number(), "the build flushed up to its view");
            assert_eq!(sm_a.state().flushed_applied().get(), Some(40));

            // Written after the build: a changed value, a new key, a later applied index.
            node.apply(GROUP_A, 41, &[(a[0].0.clone(), b"changed after the snapshot".to_vec()), (key(5, "z-new"), b"new".to_vec())]);

            let stream = node.dir.path().join("stream");
            let cipher = node.master.as_ref().map(|m| m.log_cipher());
            let records = stream_records(v, &stream, cipher.as_ref());
            let payloads: Vec<_> = records
                .iter()
                .map(|(k, v)| (k.clone(), kho_engine::value::decode_value(k, v).expect("a plaintext value").to_vec()))
                .collect();
            assert_eq!(payloads, a, "exactly group A's data of index 40");
            let bytes = std::fs::read(&stream).expect("read the stream");
            assert!(!bytes.windows(13).any(|w| w == b"Nguyen Van An"), "plaintext in the sealed snapshot stream");
            assert!(SnapshotReader::open(&stream, None).is_err(), "a sealed stream must not open without the log key");

            // The current snapshot is a fresh view: index 41, with the later writes.
            let current = sm_a.get_current_snapshot().await.expect("current").expect("a snapshot");
            assert_eq!(current.meta.last_log_id, Some(applied(41)));
            assert_eq!(stream_records(view(&current.snapshot), &stream, cipher.as_ref()).len(), 301);
            assert_eq!(sm_a.state().flushed_applied().get(), Some(41));
            assert!(node.snapshot_files(GROUP_A).is_empty(), "no snapshot file: {:?}", node.snapshot_files(GROUP_A));
        });
    }

    /// Installing group A's snapshot into another node that holds stale A data (inside the
    /// snapshot's range and in the wider range A had there before) and group B's data
    /// replaces exactly the snapshot's range: B is untouched byte for byte, no stale key is
    /// left in the snapshot's range, keys of A's previous, wider range outside it are left
    /// (after a split they are a sibling shard's), and applied id, membership and range are
    /// the snapshot's.
    #[test]
    fn installing_a_snapshot_replaces_exactly_the_groups_range() {
        TypeConfig::run(async {
            let leader = Node::new(None);
            leader.set_range(GROUP_A, &tenant(5));
            let (_log, mut sm) = leader.open(GROUP_A);
            let a = cells(5, "a", 250);
            leader.apply(GROUP_A, 40, &a);
            let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");

            let follower = Node::new(None);
            // Before: A held tenants 4 to 5 here (a range the snapshot narrows), B tenant 6.
            let wider = KeyRange::new(4u32.to_be_bytes().to_vec(), Some(6u32.to_be_bytes().to_vec()));
            follower.set_range(GROUP_A, &wider);
            follower.set_range(GROUP_B, &tenant(6));
            let (_fl, mut fsm) = follower.open(GROUP_A);
            let (_bl, _bsm) = follower.open(GROUP_B);
            let mut stale = cells(5, "a", 10); // same keys, older values
            for (_, v) in &mut stale {
                v.extend_from_slice(b" (stale)");
            }
            stale.extend(cells(5, "stale-only", 20));
            stale.extend(cells(4, "old-range", 20));
            follower.apply(GROUP_A, 12, &stale);
            follower.apply(GROUP_B, 9, &cells(6, "b", 100));
            let b_before = follower.data(&tenant(6));
            assert_eq!(b_before.len(), 100);

            fsm.install_snapshot(&built.meta, built.snapshot).await.expect("install");

            assert_eq!(follower.data(&tenant(6)), b_before, "group B's data changed");
            let got: Vec<_> = follower
                .data(&tenant(5))
                .into_iter()
                .map(|(k, v)| (k.clone(), kho_engine::value::decode_value(&k, &v).expect("value").to_vec()))
                .collect();
            assert_eq!(got, a, "group A's range holds exactly the snapshot");
            let kept: Vec<_> = follower.data(&tenant(4)).into_iter().map(|(k, _)| k).collect();
            assert_eq!(
                kept,
                cells(4, "old-range", 20).into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
                "keys outside the snapshot's range went"
            );
            assert_eq!(fsm.applied_state().await.expect("applied").0, Some(applied(40)));
            assert_eq!(fsm.state().range(), tenant(5));
            let stored = follower.engine.get(Cf::RaftMeta, &meta_key::key(GROUP_A, meta_key::RANGE)).expect("get").expect("a range");
            assert_eq!(codec::decode_key_range(&stored).expect("decode"), tenant(5));
            assert!(follower.engine.get(Cf::RaftMeta, &meta_key::key(GROUP_A, meta_key::INSTALLING_SNAPSHOT)).expect("get").is_none());
            assert_eq!(fsm.state().flushed_applied().get(), Some(40));
            assert!(
                follower.snapshot_files(GROUP_A).is_empty(),
                "the installed stream is not kept: {:?}",
                follower.snapshot_files(GROUP_A)
            );
            // The current snapshot is the installed one.
            let current = fsm.get_current_snapshot().await.expect("current").expect("a snapshot");
            assert_eq!(current.meta, built.meta);
        });
    }

    /// A crash in the middle of an install (the marker and the durable stream written, the
    /// group's range half replaced) is redone when the state machine opens again.
    #[test]
    fn an_install_interrupted_by_a_crash_is_redone_at_open() {
        TypeConfig::run(async {
            let leader = Node::new(Some(master()));
            leader.set_range(GROUP_A, &tenant(5));
            let (_log, mut sm) = leader.open(GROUP_A);
            let a = cells(5, "a", 200);
            leader.apply(GROUP_A, 40, &a);
            let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");

            let follower = Node::new(Some(master()));
            follower.set_range(GROUP_A, &tenant(5));
            follower.set_range(GROUP_B, &tenant(6));
            {
                let (_fl, _fsm) = follower.open(GROUP_A);
                let (_bl, _bsm) = follower.open(GROUP_B);
            }
            follower.apply(GROUP_A, 3, &cells(5, "stale", 30));
            follower.apply(GROUP_B, 9, &cells(6, "b", 50));
            let b_before = follower.data(&tenant(6));
            // What install_snapshot had done when the crash came: the stream durable in
            // place, the marker written, the first batches (half the stale keys deleted).
            let dir = follower.snapshot_dir(GROUP_A);
            view(&built.snapshot).write_stream_file(&dir.join(INSTALLING_FILE), true).expect("stream");
            let mut batch = follower.engine.batch();
            batch.put(Cf::RaftMeta, &meta_key::key(GROUP_A, meta_key::INSTALLING_SNAPSHOT), b"1");
            for (k, _) in cells(5, "stale", 15) {
                batch.delete(Cf::Data, &k);
            }
            follower.engine.write(batch, true).expect("marker");

            let (_fl, mut fsm) = follower.open(GROUP_A);
            let got: Vec<_> = follower
                .data(&tenant(5))
                .into_iter()
                .map(|(k, v)| (k.clone(), fsm.state().engine.get_value(&k).expect("value").unwrap_or_else(|| panic!("{v:?}"))))
                .collect();
            assert_eq!(got, a);
            assert_eq!(follower.data(&tenant(6)), b_before, "group B's data changed");
            assert_eq!(fsm.applied_state().await.expect("applied").0, Some(applied(40)));
            assert!(follower.engine.get(Cf::RaftMeta, &meta_key::key(GROUP_A, meta_key::INSTALLING_SNAPSHOT)).expect("get").is_none());
            assert!(follower.snapshot_files(GROUP_A).is_empty(), "{:?}", follower.snapshot_files(GROUP_A));
        });
    }

    /// The log is never purged past the flushed applied index: with nothing flushed no
    /// purge goes; a build flushes and allows a purge up to its applied index, not past;
    /// an apply after it does not move the bound until a snapshot covers it. Old snapshot
    /// files of the previous build are removed when the group opens.
    #[test]
    fn the_purge_never_passes_the_flushed_applied_index() {
        TypeConfig::run(async {
            let node = Node::new(None);
            // Left by the previous build: a checkpoint directory and a stream file.
            let dir = node.snapshot_dir(GROUP_A);
            std::fs::create_dir_all(dir.join("snap-00000000000000000007-1-1-00000000000000000001.ckpt")).expect("mkdir");
            std::fs::write(dir.join("snap-00000000000000000007-1-1.kho"), b"old").expect("write");
            std::fs::write(dir.join("incoming-1-0.tmp"), b"old").expect("write");
            let (mut log, mut sm) = node.open(GROUP_A);
            assert!(node.snapshot_files(GROUP_A).is_empty(), "{:?}", node.snapshot_files(GROUP_A));

            let entries: Vec<_> = (1..=60).map(|i| openraft::testing::blank_ent::<TypeConfig>(3, 1, i)).collect();
            log.append(entries, IOFlushed::<TypeConfig>::noop()).await.expect("append");
            let refused = |e: std::io::Error| assert!(e.to_string().contains("passes its flushed applied index"), "{e}");
            refused(log.purge(applied(10)).await.expect_err("nothing is flushed: no purge"));

            node.apply(GROUP_A, 40, &cells(5, "a", 10));
            refused(log.purge(applied(10)).await.expect_err("applied but not flushed"));
            let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
            assert_eq!(built.meta.last_log_id, Some(applied(40)));
            assert_eq!(sm.state().flushed_applied().get(), Some(40));
            log.purge(applied(30)).await.expect("purge below the flushed applied index");
            log.purge(applied(40)).await.expect("purge up to the flushed applied index");
            refused(log.purge(applied(41)).await.expect_err("past the flushed applied index"));

            node.apply(GROUP_A, 50, &cells(5, "b", 10));
            refused(log.purge(applied(45)).await.expect_err("applied after the snapshot, not flushed"));
            let current = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
            assert_eq!(current.meta.last_log_id, Some(applied(50)));
            log.purge(applied(50)).await.expect("the current snapshot flushed up to 50");
            assert_eq!(log.first_index().expect("first index"), Some(51));

            // A reopen starts from the applied state found, made durable.
            drop((log, sm, current, built));
            let (_log, sm) = node.open(GROUP_A);
            assert_eq!(sm.state().flushed_applied().get(), Some(50));
        });
    }
}
