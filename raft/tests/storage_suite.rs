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
        let sm = StateMachine::open(1, kho_raft::GroupKind::Meta, engine, log.group_log(), dir.path().join("snapshots"), 64 << 10, master).map_err(|e| err(&e))?;
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

/// A snapshot is a RocksDB checkpoint: it holds the data and applied id of the moment it
/// was built, not later writes; it survives a reopen of its state machine; its stream is
/// sealed under the log key; and another state machine that installs it ends up with
/// exactly that data and applied id.
#[test]
fn checkpoint_snapshots_hold_the_state_at_build_time() {
    use kho_engine::Cf;
    use kho_raft::log_store::meta_key;
    use kho_raft::snapshot::{SnapshotData, SnapshotReader};
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::testing::blank_ent;

    const RECORDS: u32 = 300;
    let key = |i: u32| format!("row-{i:05}").into_bytes();
    let value = |i: u32| format!("Nguyen Van An {i:05}").into_bytes();
    let set_applied = |batch: &mut kho_engine::WriteBatch, index: u64| {
        let id = blank_ent::<TypeConfig>(3, 1, index).log_id;
        batch.put(Cf::RaftMeta, &meta_key::key(1, meta_key::APPLIED), &kho_raft::codec::encode_opt_log_id(Some(&id)));
    };
    TypeConfig::run(async {
        let builder = RocksBuilder { master_key: Some(7), cache_entries: None };
        let (dir, log_store, mut sm) = builder.build().await.expect("store");
        let engine = sm.state().engine.clone();
        let mut batch = engine.batch();
        for i in 0..RECORDS {
            batch.put_value(&key(i), &value(i));
        }
        set_applied(&mut batch, 40);
        // As the state machine writes: without the WAL.
        engine.write_unlogged(batch).expect("write");

        let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(40));
        let SnapshotData::Checkpoint(ckpt) = &built.snapshot else { panic!("built {:?}, not a checkpoint", built.snapshot) };
        assert!(ckpt.dir.file_name().unwrap().to_string_lossy().ends_with(".ckpt"), "{}", ckpt.dir.display());

        // Later writes are not in the snapshot.
        let mut batch = engine.batch();
        batch.put_value(&key(0), b"changed after the snapshot");
        batch.put_value(&key(RECORDS), b"added after the snapshot");
        set_applied(&mut batch, 41);
        engine.write_unlogged(batch).expect("write");

        // The stream written from it is sealed: no value is readable in it.
        let stream = dir.path().join("stream");
        assert_eq!(ckpt.write_stream(&built.meta, &stream, true).expect("write stream"), RECORDS as u64);
        let bytes = std::fs::read(&stream).expect("read stream");
        assert!(!bytes.windows(13).any(|w| w == b"Nguyen Van An"), "plaintext in the sealed snapshot stream");
        let reader = SnapshotReader::open(&stream, None);
        assert!(reader.is_err(), "a sealed stream must not open without the log key");

        // After a reopen the state machine finds the same snapshot.
        drop(sm);
        let log = log_store.group_log();
        let mut sm = StateMachine::open(
            1,
            kho_raft::GroupKind::Meta,
            engine.clone(),
            log,
            dir.path().join("snapshots"),
            64 << 10,
            Some(std::sync::Arc::new(MasterKey::new(zeroize::Zeroizing::new([7; 32])))),
        )
        .expect("reopen");
        let current = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta, built.meta);

        // Another state machine installs it: exactly the data and applied id at build time.
        let (_dir2, _log2, mut other) = builder.build().await.expect("store");
        other.install_snapshot(&current.meta, current.snapshot).await.expect("install");
        let installed = other.state().engine.scan(Cf::Data, b"", None, usize::MAX).expect("scan");
        let expected: Vec<_> = (0..RECORDS).map(|i| (key(i), value(i))).collect();
        let payloads: Vec<_> = installed
            .iter()
            .map(|(k, v)| (k.clone(), other.state().engine.get_value(k).expect("value").unwrap_or_else(|| panic!("{v:?}"))))
            .collect();
        assert_eq!(payloads, expected);
        let (applied, _) = other.applied_state().await.expect("applied");
        assert_eq!(applied, built.meta.last_log_id);
    });
}

/// Every file under `dir`, recursively, searched for `needle`.
fn files_under_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list a directory").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).expect("read a file").windows(needle.len()).any(|w| w == needle) {
                eprintln!("found in {}", p.display());
                return true;
            }
        }
    }
    false
}

/// A checkpoint keeps the SST files it links: after an overwrite and a full compaction the
/// old value is still in the snapshot directory (the control), until `rebuild_checkpoint`
/// (what `CompactNode` does after compacting) replaces the checkpoint with one of the
/// compacted files. A rebuild at an unchanged applied id also replaces it, and exactly one
/// snapshot is left each time.
#[test]
fn a_rebuilt_checkpoint_no_longer_holds_overwritten_values() {
    use kho_engine::Cf;
    use kho_raft::log_store::meta_key;
    use kho_raft::state_machine::rebuild_checkpoint;
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::testing::blank_ent;

    const CHUNK: usize = 64 << 10;
    let set_applied = |batch: &mut kho_engine::WriteBatch, index: u64| {
        let id = blank_ent::<TypeConfig>(3, 1, index).log_id;
        batch.put(Cf::RaftMeta, &meta_key::key(1, meta_key::APPLIED), &kho_raft::codec::encode_opt_log_id(Some(&id)));
    };
    let snapshots_in = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list snapshots")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snap-"))
            .collect();
        names.sort();
        names
    };
    // 32 distinct bytes: no compressor shortens them, so a byte search finds them in any file.
    let token: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
    TypeConfig::run(async {
        let (dir, _log, mut sm) = RocksBuilder { master_key: None, cache_entries: None }.build().await.expect("store");
        let state = sm.state();
        let engine = state.engine.clone();
        let snapshots = dir.path().join("snapshots");
        assert!(rebuild_checkpoint(&state, &snapshots, CHUNK).expect("rebuild").is_none(), "no snapshot yet: nothing to rebuild");

        let mut batch = engine.batch();
        batch.put_value(b"row-secret", &token);
        set_applied(&mut batch, 40);
        engine.write_unlogged(batch).expect("write");
        sm.get_snapshot_builder().await.build_snapshot().await.expect("build");

        let mut batch = engine.batch();
        batch.put_value(b"row-secret", b"overwritten");
        set_applied(&mut batch, 41);
        engine.write_unlogged(batch).expect("write");
        engine.flush_and_compact_all().expect("compact");
        assert!(!files_under_contain(&dir.path().join("db"), &token), "the compaction left the old value in the live DB");
        assert!(files_under_contain(&snapshots, &token), "control: the checkpoint built before still links the old value's file");

        let meta = rebuild_checkpoint(&state, &snapshots, CHUNK).expect("rebuild").expect("a checkpoint to rebuild");
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(41));
        assert!(!files_under_contain(&snapshots, &token), "the rebuilt checkpoint still holds the overwritten value");
        let names = snapshots_in(&snapshots);
        assert_eq!(names.len(), 1, "{names:?}");
        let current = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta, meta);

        // Rebuilt at the same applied id: a new build replaces it.
        let again = rebuild_checkpoint(&state, &snapshots, CHUNK).expect("rebuild").expect("a checkpoint to rebuild");
        assert_eq!(again, meta);
        let after = snapshots_in(&snapshots);
        assert_eq!(after.len(), 1, "{after:?}");
        assert_ne!(after, names, "the same-id rebuild did not replace the checkpoint");
        assert_eq!(sm.get_current_snapshot().await.expect("current").expect("a snapshot").meta, meta);
    });
}
