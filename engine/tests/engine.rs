//! The engine against a real RocksDB in temporary directories.

use std::collections::BTreeMap;
use std::ops::Bound;

use kho_engine::keys::{data_key, row_range};
use kho_engine::value::encode_value;
use kho_engine::{Cf, Engine, EngineOptions, Error};
use proptest::prelude::*;
use tempfile::TempDir;

/// Small caches: tests open many engines.
fn test_options() -> EngineOptions {
    EngineOptions { block_cache_bytes: 8 << 20, write_buffer_bytes: 1 << 20 }
}

fn open(dir: &TempDir) -> Engine {
    Engine::open(dir.path(), &test_options()).expect("open engine")
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(items: &[(&[u8], &[u8])]) -> Pairs {
    items.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

#[test]
fn handles_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine>();
    send_sync::<kho_engine::Snapshot<'static>>();
    send::<kho_engine::WriteBatch>();
}

#[test]
fn open_creates_missing_directories() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("a/b/node");
    let engine = Engine::open(&path, &test_options()).expect("open");
    assert_eq!(engine.path(), path);
}

#[test]
fn second_open_of_the_same_directory_fails() {
    let dir = TempDir::new().expect("tempdir");
    let _engine = open(&dir);
    let err = Engine::open(dir.path(), &test_options()).expect_err("lock held");
    assert!(matches!(err, Error::Rocks { op: "open", .. }), "{err}");
}

#[test]
fn batch_is_atomic_and_visible_after_write() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    assert!(batch.is_empty());
    batch.put(Cf::RaftLog, b"log-1", b"entry");
    batch.put(Cf::RaftMeta, b"vote", b"term 3");
    batch.put_value(b"cell", b"payload");
    batch.put(Cf::Local, b"node", b"7");
    assert_eq!(batch.len(), 4);
    assert!(batch.size_bytes() > 0);

    // Nothing is visible before the write.
    assert_eq!(engine.get(Cf::RaftLog, b"log-1").expect("get"), None);
    engine.write(batch, false).expect("write");

    assert_eq!(engine.get(Cf::RaftLog, b"log-1").expect("get").as_deref(), Some(&b"entry"[..]));
    assert_eq!(engine.get(Cf::RaftMeta, b"vote").expect("get").as_deref(), Some(&b"term 3"[..]));
    assert_eq!(engine.get(Cf::Local, b"node").expect("get").as_deref(), Some(&b"7"[..]));
    assert_eq!(engine.get_value(b"cell").expect("get").as_deref(), Some(&b"payload"[..]));
    // Column families are separate key spaces; the raw Data value carries the header.
    assert_eq!(engine.get(Cf::Local, b"log-1").expect("get"), None);
    assert_eq!(engine.get(Cf::Data, b"cell").expect("get"), Some(encode_value(b"cell", b"payload")));
}

#[test]
fn reopen_keeps_synced_writes() {
    let dir = TempDir::new().expect("tempdir");
    {
        let engine = open(&dir);
        let mut batch = engine.batch();
        batch.put(Cf::RaftLog, b"a", b"synced by write");
        engine.write(batch, true).expect("write");
        let mut batch = engine.batch();
        batch.put(Cf::RaftMeta, b"b", b"synced by sync_wal");
        batch.put_value(b"c", b"value");
        engine.write(batch, false).expect("write");
        engine.sync_wal().expect("sync_wal");
    }
    let engine = open(&dir);
    assert_eq!(engine.get(Cf::RaftLog, b"a").expect("get").as_deref(), Some(&b"synced by write"[..]));
    assert_eq!(engine.get(Cf::RaftMeta, b"b").expect("get").as_deref(), Some(&b"synced by sync_wal"[..]));
    assert_eq!(engine.get_value(b"c").expect("get").as_deref(), Some(&b"value"[..]));
}

/// `get_in_memory` answers from memtables and the block cache, and says so when only a
/// disk read can answer (the server then reads on a blocking thread).
#[test]
fn get_in_memory_answers_from_memory_or_asks_for_a_disk_read() {
    let dir = TempDir::new().expect("tempdir");
    {
        let engine = open(&dir);
        let mut batch = engine.batch();
        batch.put(Cf::Data, b"k", b"in the memtable");
        engine.write(batch, true).expect("write");
        assert_eq!(engine.get_in_memory(Cf::Data, b"k").expect("get"), Some(Some(b"in the memtable".to_vec())));
        assert_eq!(engine.get_in_memory(Cf::Data, b"absent").expect("get"), Some(None));
        engine.flush_all().expect("flush");
    }
    // Reopened: the value is only in an SST file, its block not cached yet.
    let engine = open(&dir);
    assert_eq!(engine.get_in_memory(Cf::Data, b"k").expect("get"), None, "a disk read is needed");
    assert_eq!(engine.get(Cf::Data, b"k").expect("get").as_deref(), Some(&b"in the memtable"[..]));
    // The disk read filled the block cache.
    assert_eq!(engine.get_in_memory(Cf::Data, b"k").expect("get"), Some(Some(b"in the memtable".to_vec())));
}

/// An owned snapshot sees every write made before it, unlogged ones too (the state machine
/// writes without the WAL), and none made after it, from another thread and after every
/// other handle on the engine is gone.
#[test]
fn an_owned_snapshot_sees_every_write_before_it_and_none_after() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    batch.put(Cf::Data, b"logged", b"1");
    engine.write(batch, false).expect("write");
    let mut batch = engine.batch();
    batch.put(Cf::Data, b"unlogged", b"2");
    batch.put(Cf::RaftMeta, b"applied", b"7");
    engine.write_unlogged(batch).expect("write");
    let view = engine.owned_snapshot();
    let mut batch = engine.batch();
    batch.put(Cf::Data, b"after", b"3");
    batch.put(Cf::Data, b"logged", b"changed");
    batch.delete(Cf::RaftMeta, b"applied");
    engine.write(batch, true).expect("write");
    drop(engine);
    let read = std::thread::spawn(move || {
        let mut data = Vec::new();
        view.for_each(Cf::Data, b"", None, |k, v| {
            data.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .expect("for_each");
        (data, view.get(Cf::RaftMeta, b"applied").expect("get"))
    })
    .join()
    .expect("reader thread");
    assert_eq!(read.0, vec![(b"logged".to_vec(), b"1".to_vec()), (b"unlogged".to_vec(), b"2".to_vec())]);
    assert_eq!(read.1.as_deref(), Some(&b"7"[..]));
}

/// `flush_through` flushes only when no flush that started after the given sequence number
/// has completed: one flush serves every view taken before it started, and a view taken
/// after a write needs a new one.
#[test]
fn one_flush_serves_every_view_taken_before_it() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let write = |k: &[u8]| {
        let mut batch = engine.batch();
        batch.put(Cf::Data, k, b"v");
        engine.write_unlogged(batch).expect("write");
    };
    write(b"a");
    let first = engine.snapshot().sequence_number();
    write(b"b");
    let second = engine.owned_snapshot().sequence_number();
    assert!(second > first);
    assert!(engine.flush_through(second).expect("flush"), "nothing was flushed yet");
    assert!(engine.flushed_through() >= second);
    assert!(!engine.flush_through(first).expect("flush"), "an older view is covered by the flush");
    assert!(!engine.flush_through(second).expect("flush"), "the same view is covered");
    write(b"c");
    let third = engine.snapshot().sequence_number();
    assert!(!engine.flush_through(second).expect("flush"), "a later write does not uncover an older view");
    assert!(engine.flush_through(third).expect("flush"), "a view after a new write needs a new flush");
    assert!(!engine.flush_through(third).expect("flush"));
    // flush_all with nothing new to flush is covered too; the data is in SST files.
    engine.flush_all().expect("flush_all");
    assert_eq!(engine.get(Cf::Data, b"c").expect("get").as_deref(), Some(&b"v"[..]));
}

/// Every file directly under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).expect("list the DB directory").flatten() {
        let p = e.path();
        if p.is_file() && std::fs::read(&p).expect("read a file").windows(needle.len()).any(|w| w == needle) {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// `flush_and_compact_all` (`kho node compact`) rewrites every file holding an overwritten
/// value, the bottommost level included: on a small DB RocksDB flushes straight into the
/// bottommost level, which a default manual compaction skips. The control: before the
/// compaction the old value is found in an SST file by the same search.
#[test]
fn compaction_removes_overwritten_values_from_the_files() {
    // 32 distinct bytes: no compressor shortens them.
    let token: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    batch.put_value(b"row", &token);
    engine.write_unlogged(batch).expect("write");
    engine.flush_all().expect("flush");
    let mut batch = engine.batch();
    batch.put_value(b"row", b"overwritten");
    engine.write_unlogged(batch).expect("write");
    engine.flush_all().expect("flush");
    let before = files_holding(dir.path(), &token);
    assert!(before.iter().any(|f| f.ends_with(".sst")), "control: the old value is in an SST file before compacting: {before:?}");
    engine.flush_and_compact_all().expect("compact");
    assert_eq!(files_holding(dir.path(), &token), Vec::<String>::new(), "the old value is still on disk after compacting");
    assert_eq!(engine.get_value(b"row").expect("get").as_deref(), Some(&b"overwritten"[..]));
}

#[test]
fn scan_respects_start_end_and_limit() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    for key in [&b"a"[..], b"b", b"b\x00", b"c", b"d"] {
        batch.put(Cf::RaftLog, key, key);
    }
    batch.put(Cf::Local, b"b", b"other cf");
    engine.write(batch, false).expect("write");

    let all = engine.scan(Cf::RaftLog, b"", None, usize::MAX).expect("scan");
    assert_eq!(all.len(), 5);
    assert_eq!(engine.scan(Cf::RaftLog, b"b", Some(b"d"), 10).expect("scan"), pairs(&[(b"b", b"b"), (b"b\x00", b"b\x00"), (b"c", b"c")]));
    assert_eq!(engine.scan(Cf::RaftLog, b"b", Some(b"d"), 2).expect("scan"), pairs(&[(b"b", b"b"), (b"b\x00", b"b\x00")]));
    assert_eq!(engine.scan(Cf::RaftLog, b"c", None, 10).expect("scan"), pairs(&[(b"c", b"c"), (b"d", b"d")]));
    assert!(engine.scan(Cf::RaftLog, b"a", None, 0).expect("scan").is_empty());
    assert!(engine.scan(Cf::RaftLog, b"b", Some(b"b"), 10).expect("scan").is_empty());
}

#[test]
fn delete_and_delete_range() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    for i in 0u8..10 {
        batch.put(Cf::RaftLog, &[i], &[i]);
        batch.put(Cf::RaftMeta, &[i], &[i]);
    }
    engine.write(batch, false).expect("write");
    // Flush some of it to SST files so range tombstones cover both memtable and files.
    engine.compact(Cf::RaftLog).expect("compact");

    let mut batch = engine.batch();
    batch.delete_range(Cf::RaftLog, &[2], &[5]);
    batch.delete_range(Cf::RaftLog, &[7], &[7]);
    batch.delete(Cf::RaftLog, &[8]);
    engine.write(batch, false).expect("write");

    let keys: Vec<u8> = engine.scan(Cf::RaftLog, b"", None, usize::MAX).expect("scan").into_iter().map(|(k, _)| k[0]).collect();
    assert_eq!(keys, vec![0, 1, 5, 6, 7, 9]);
    assert_eq!(engine.scan(Cf::RaftMeta, b"", None, usize::MAX).expect("scan").len(), 10);
    engine.compact(Cf::RaftLog).expect("compact");
    assert_eq!(engine.scan(Cf::RaftLog, b"", None, usize::MAX).expect("scan").len(), 6);
}

#[test]
#[should_panic(expected = "inverted range")]
fn inverted_delete_range_panics() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    engine.batch().delete_range(Cf::Data, b"b", b"a");
}

#[test]
fn first_and_last_in_range() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let index = |i: u64| i.to_be_bytes().to_vec();
    assert_eq!(engine.first_in_range(Cf::RaftLog, &index(0), &index(100)).expect("first"), None);
    assert_eq!(engine.last_in_range(Cf::RaftLog, &index(0), &index(100)).expect("last"), None);

    let mut batch = engine.batch();
    for i in 10..20 {
        batch.put(Cf::RaftLog, &index(i), format!("entry {i}").as_bytes());
    }
    batch.put(Cf::RaftMeta, &index(50), b"other cf");
    engine.write(batch, false).expect("write");

    let key_of = |item: Option<(Vec<u8>, Vec<u8>)>| item.map(|(k, _)| k);
    let first = |s, e| key_of(engine.first_in_range(Cf::RaftLog, &index(s), &index(e)).expect("first"));
    let last = |s, e| key_of(engine.last_in_range(Cf::RaftLog, &index(s), &index(e)).expect("last"));
    assert_eq!(first(0, 100), Some(index(10)));
    assert_eq!(last(0, 100), Some(index(19)));
    assert_eq!(first(12, 15), Some(index(12)));
    assert_eq!(last(12, 15), Some(index(14)), "end is exclusive");
    assert_eq!(last(12, 13), Some(index(12)));
    assert_eq!(first(20, 100), None);
    assert_eq!(last(0, 10), None, "start is inclusive, nothing below 10");
    assert_eq!(last(0, 11), Some(index(10)));
    assert_eq!(last(15, 15), None);
    let (key, value) = engine.last_in_range(Cf::RaftLog, &index(0), &index(100)).expect("last").expect("some");
    assert_eq!((key, value), (index(19), b"entry 19".to_vec()));
}

#[test]
fn snapshot_does_not_see_later_writes() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    batch.put(Cf::Data, b"a", b"1");
    batch.put(Cf::Data, b"b", b"1");
    batch.put(Cf::RaftMeta, b"m", b"1");
    engine.write(batch, false).expect("write");

    let snapshot = engine.snapshot();
    let mut batch = engine.batch();
    batch.put(Cf::Data, b"a", b"2");
    batch.delete(Cf::Data, b"b");
    batch.put(Cf::Data, b"c", b"2");
    batch.delete_range(Cf::RaftMeta, b"", b"\xff");
    engine.write(batch, false).expect("write");

    assert_eq!(snapshot.get(Cf::Data, b"a").expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(snapshot.get(Cf::Data, b"c").expect("get"), None);
    assert_eq!(snapshot.get(Cf::RaftMeta, b"m").expect("get").as_deref(), Some(&b"1"[..]));
    let mut seen = Vec::new();
    snapshot
        .for_each(Cf::Data, b"", None, |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .expect("for_each");
    assert_eq!(seen, pairs(&[(b"a", b"1"), (b"b", b"1")]));

    // The live engine sees the new state.
    assert_eq!(engine.scan(Cf::Data, b"", None, 10).expect("scan"), pairs(&[(b"a", b"2"), (b"c", b"2")]));
    assert_eq!(engine.get(Cf::RaftMeta, b"m").expect("get"), None);
}

#[test]
fn snapshot_for_each_stops_early_and_propagates_errors() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let mut batch = engine.batch();
    for i in 0u8..10 {
        batch.put(Cf::Local, &[i], &[i]);
    }
    engine.write(batch, false).expect("write");
    let snapshot = engine.snapshot();

    let mut seen = Vec::new();
    snapshot
        .for_each(Cf::Local, &[2], Some(&[8]), |k, _| {
            seen.push(k[0]);
            Ok(seen.len() < 3)
        })
        .expect("for_each");
    assert_eq!(seen, vec![2, 3, 4]);

    let err = snapshot
        .for_each(Cf::Local, &[0], None, |k, _| if k[0] == 5 { Err(Error::InvalidKey { reason: "stop".into() }) } else { Ok(true) })
        .expect_err("error from f");
    assert!(matches!(err, Error::InvalidKey { .. }));
}

#[test]
fn corrupt_data_values_are_errors_never_data() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let good = data_key(1, 1, b"row", 1, b"good");
    let flipped = data_key(1, 1, b"row", 1, b"flipped");
    let moved = data_key(1, 1, b"row", 1, b"moved");
    let short = data_key(1, 1, b"row", 1, b"short");

    let mut batch = engine.batch();
    batch.put_value(&good, b"ok");
    let mut bad = encode_value(&flipped, b"payload");
    bad[7] ^= 0x01;
    batch.put(Cf::Data, &flipped, &bad);
    // A valid value copied under another key.
    batch.put(Cf::Data, &moved, &encode_value(&good, b"ok"));
    batch.put(Cf::Data, &short, b"\x01\x00");
    engine.write(batch, false).expect("write");

    assert_eq!(engine.get_value(&good).expect("get").as_deref(), Some(&b"ok"[..]));
    for key in [&flipped, &moved, &short] {
        let err = engine.get_value(key).expect_err("corrupt");
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
    }
    let err = engine.scan_values(&good[..8], &[0xff; 9], 10).expect_err("corrupt");
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    // The good value alone still scans.
    let mut end = good.clone();
    end.push(0);
    assert_eq!(engine.scan_values(&good, &end, 10).expect("scan"), vec![(good.clone(), b"ok".to_vec())]);
}

#[test]
fn row_range_scans_exactly_the_wanted_rows() {
    let dir = TempDir::new().expect("tempdir");
    let engine = open(&dir);
    let rows: [&[u8]; 7] = [b"", b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"\xff"];
    let mut batch = engine.batch();
    for table in [1, 2, 3] {
        for row in rows {
            for family in [0u16, 1] {
                let key = data_key(7, table, row, family, b"q");
                batch.put_value(&key, row);
            }
        }
    }
    engine.write(batch, false).expect("write");

    let rows_in = |start_row: &[u8], end_row: Option<&[u8]>, prefix: &[u8]| -> Vec<Vec<u8>> {
        let (start, end) = row_range(7, 2, start_row, end_row, prefix);
        if start >= end {
            return Vec::new();
        }
        let mut found: Vec<Vec<u8>> = engine.scan_values(&start, &end, usize::MAX).expect("scan").into_iter().map(|(_, row)| row).collect();
        assert!(found.len().is_multiple_of(2), "both families of each row");
        found.dedup();
        found
    };
    let all: Vec<Vec<u8>> = rows.iter().map(|r| r.to_vec()).collect();
    assert_eq!(rows_in(b"", None, b""), all);
    assert_eq!(rows_in(b"a\x00", Some(b"b"), b""), all[2..5].to_vec());
    assert_eq!(rows_in(b"", None, b"a"), all[1..5].to_vec());
    assert_eq!(rows_in(b"", None, b"a\x00"), all[2..4].to_vec());
    assert_eq!(rows_in(b"a\x00b", None, b"a"), all[3..5].to_vec());
    assert!(rows_in(b"b", None, b"a").is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
    /// Ends the current batch: writes it and checks a scan against the model.
    Commit {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        sync: bool,
    },
    /// Drops and reopens the engine (after syncing).
    Reopen,
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0x00u8, 0x01, 0x7f, 0xff]), 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (small_key(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::Put(k, v)),
        2 => small_key().prop_map(Op::Delete),
        1 => (small_key(), small_key()).prop_map(|(a, b)| if a <= b { Op::DeleteRange(a, b) } else { Op::DeleteRange(b, a) }),
        3 => (small_key(), prop::option::of(small_key()), 0usize..12, any::<bool>()).prop_map(|(start, end, limit, sync)| {
            let end = end.map(|end| end.max(start.clone()));
            Op::Commit { start, end, limit, sync }
        }),
        1 => Just(Op::Reopen),
    ]
}

fn model_scan(model: &BTreeMap<Vec<u8>, Vec<u8>>, start: &[u8], end: Option<&[u8]>, limit: usize) -> Pairs {
    let upper = end.map_or(Bound::Unbounded, |end| Bound::Excluded(end.to_vec()));
    model.range((Bound::Included(start.to_vec()), upper)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Batches of put/delete/delete_range against a BTreeMap, with scans and reopens.
    #[test]
    fn engine_matches_btreemap_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = TempDir::new().expect("tempdir");
        let mut engine = open(&dir);
        let mut model = BTreeMap::new();
        let mut pending = model.clone();
        let mut batch = engine.batch();
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    batch.put(Cf::Data, &key, &value);
                    pending.insert(key, value);
                }
                Op::Delete(key) => {
                    batch.delete(Cf::Data, &key);
                    pending.remove(&key);
                }
                Op::DeleteRange(start, end) => {
                    batch.delete_range(Cf::Data, &start, &end);
                    pending.retain(|k, _| !(start <= *k && *k < end));
                }
                Op::Commit { start, end, limit, sync } => {
                    // Uncommitted writes are invisible.
                    prop_assert_eq!(engine.scan(Cf::Data, b"", None, usize::MAX)?, model_scan(&model, b"", None, usize::MAX));
                    engine.write(std::mem::replace(&mut batch, engine.batch()), sync)?;
                    model = pending.clone();
                    prop_assert_eq!(
                        engine.scan(Cf::Data, &start, end.as_deref(), limit)?,
                        model_scan(&model, &start, end.as_deref(), limit)
                    );
                    if let Some(end) = &end {
                        let last = model.range(start.clone()..end.clone()).next_back().map(|(k, v)| (k.clone(), v.clone()));
                        prop_assert_eq!(engine.last_in_range(Cf::Data, &start, end)?, last);
                    }
                }
                Op::Reopen => {
                    engine.write(std::mem::replace(&mut batch, engine.batch()), false)?;
                    model = pending.clone();
                    engine.sync_wal()?;
                    drop(batch);
                    drop(engine);
                    engine = open(&dir);
                    batch = engine.batch();
                }
            }
        }
        engine.write(batch, false)?;
        prop_assert_eq!(engine.scan(Cf::Data, b"", None, usize::MAX)?, model_scan(&pending, b"", None, usize::MAX));
    }
}
