//! The segment log (the Raft log's files) on a real file system: round trips across
//! segments and reopens, torn tails, corruption, truncation and purging, and a randomized
//! comparison with an in-memory model.

use std::collections::BTreeMap;
use std::path::Path;

use kho_engine::segment_log::{SegmentLog, RECORD_HEADER_BYTES, SEGMENT_MAGIC};
use kho_engine::Error;
use tempfile::TempDir;

/// Small segments, so that a few records span several files.
const SEGMENT_BYTES: u64 = 256;

fn open(dir: &Path, purged: Option<u64>) -> SegmentLog {
    SegmentLog::open_with_segment_bytes(dir, purged, SEGMENT_BYTES).expect("open log").0
}

fn payload(index: u64, generation: u64) -> Vec<u8> {
    format!("record {index} generation {generation} {}", "x".repeat((index % 40) as usize)).into_bytes()
}

/// Appends `[from, to)` in batches of up to 3 records (one batch always goes to one segment).
fn append(log: &SegmentLog, from: u64, to: u64, generation: u64) {
    let payloads: Vec<Vec<u8>> = (from..to).map(|i| payload(i, generation)).collect();
    let records: Vec<(u64, &[u8])> = (from..to).zip(payloads.iter().map(Vec::as_slice)).collect();
    for batch in records.chunks(3) {
        log.append(batch).expect("append");
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn records_read_back_across_segments_and_reopens() {
    let dir = TempDir::new().expect("tempdir");
    {
        let log = open(dir.path(), None);
        assert_eq!((log.first_index(), log.last_index(), log.next_index()), (None, None, 0));
        for start in (1..67).step_by(6) {
            append(&log, start, start + 6, 0);
        }
        // Index 0 was never written: the first append decides where the log starts.
        assert_eq!(log.first_index(), Some(1));
        assert_eq!(log.last_index(), Some(66));
        log.sync().expect("sync");
        let got = log.read(3, 40).expect("read");
        assert_eq!(got, (3..40).map(|i| payload(i, 0)).collect::<Vec<_>>());
    }
    assert!(segments(dir.path()).len() > 3, "small segments: {:?}", segments(dir.path()));
    let log = open(dir.path(), None);
    assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(66)));
    assert_eq!(log.read(1, 67).expect("read"), (1..67).map(|i| payload(i, 0)).collect::<Vec<_>>());
    append(&log, 67, 70, 0);
    assert_eq!(log.read(66, 70).expect("read").len(), 4);
}

#[test]
fn a_torn_tail_of_the_newest_segment_is_cut_and_earlier_records_stay() {
    let dir = TempDir::new().expect("tempdir");
    {
        let log = open(dir.path(), None);
        append(&log, 1, 30, 0);
        log.sync().expect("sync");
    }
    let newest = dir.path().join(segments(dir.path()).last().expect("a segment"));
    let len = std::fs::metadata(&newest).expect("stat").len();
    // Cut in the middle of the last record, as a crash during its write would.
    let f = std::fs::OpenOptions::new().write(true).open(&newest).expect("open");
    f.set_len(len - 3).expect("cut");
    drop(f);
    let (log, recovered) = SegmentLog::open_with_segment_bytes(dir.path(), None, SEGMENT_BYTES).expect("reopen");
    assert_eq!(log.last_index(), Some(28), "the torn record 29 is gone, 28 stays");
    assert!(recovered.cut_bytes > 0);
    assert_eq!(log.read(1, 29).expect("read"), (1..29).map(|i| payload(i, 0)).collect::<Vec<_>>());
    // The log continues where the valid part ends.
    append(&log, 29, 31, 1);
    drop(log);
    let log = open(dir.path(), None);
    assert_eq!(log.read(29, 31).expect("read"), vec![payload(29, 1), payload(30, 1)]);
}

/// One segment big enough for everything the tests below write.
const ONE_SEGMENT_BYTES: u64 = 1 << 20;

/// Writes records `[1, to)` into one segment, synced, and returns its path and the offset
/// of each record (`offsets[i]` is where record `i + 1` starts; the last entry is the end).
fn one_synced_segment(dir: &Path, to: u64) -> (std::path::PathBuf, Vec<usize>) {
    let (log, _) = SegmentLog::open_with_segment_bytes(dir, None, ONE_SEGMENT_BYTES).expect("open");
    append(&log, 1, to, 0);
    log.sync().expect("sync");
    drop(log);
    let names = segments(dir);
    assert_eq!(names.len(), 1, "{names:?}");
    let mut offsets = vec![SEGMENT_MAGIC.len()];
    for i in 1..to {
        offsets.push(offsets.last().expect("one") + RECORD_HEADER_BYTES + payload(i, 0).len());
    }
    (dir.join(&names[0]), offsets)
}

fn open_error(dir: &Path) -> String {
    match SegmentLog::open_with_segment_bytes(dir, None, ONE_SEGMENT_BYTES) {
        Err(Error::Corruption { what }) => what,
        Err(e) => panic!("expected corruption, got {e}"),
        Ok((log, recovered)) => panic!("a corrupt log was opened: last index {:?}, {recovered:?}", log.last_index()),
    }
}

/// Synced records after a bad one in the newest segment were acknowledged: cutting there
/// would lose them, so the open fails, naming the file and both offsets.
#[test]
fn a_flipped_byte_in_the_middle_of_the_newest_segment_fails_the_open_naming_file_and_offset() {
    let dir = TempDir::new().expect("tempdir");
    let (path, offsets) = one_synced_segment(dir.path(), 30);
    let pristine = std::fs::read(&path).expect("read");
    // Record 10: a byte of its payload, of its checksum, of its length (the record then
    // looks torn: its length runs past the end of the file).
    let bad = offsets[9];
    for (what, at, mask) in [("payload", bad + RECORD_HEADER_BYTES + 3, 0x01), ("crc", bad + 5, 0x80), ("length", bad + 3, 0x10)] {
        let mut bytes = pristine.clone();
        bytes[at] ^= mask;
        std::fs::write(&path, &bytes).expect("write");
        let msg = open_error(dir.path());
        assert!(msg.contains(&path.display().to_string()), "{what}: the file is named: {msg}");
        assert!(msg.contains(&format!("offset {bad}")), "{what}: the bad record's offset is named: {msg}");
        assert!(msg.contains(&format!("follows at offset {}", offsets[10])), "{what}: the valid record after it is named: {msg}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "{what}: a refused open changes nothing");
    }
    // A broken segment header with valid records after it is corruption too.
    let mut bytes = pristine.clone();
    bytes[2] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let msg = open_error(dir.path());
    assert!(msg.contains("offset 0") && msg.contains(&format!("follows at offset {}", offsets[0])), "{msg}");
    // Repaired, the log opens with everything.
    std::fs::write(&path, &pristine).expect("write");
    let (log, recovered) = SegmentLog::open_with_segment_bytes(dir.path(), None, ONE_SEGMENT_BYTES).expect("open");
    assert_eq!(recovered.cut_bytes, 0);
    assert_eq!(log.read(1, 30).expect("read"), (1..30).map(|i| payload(i, 0)).collect::<Vec<_>>());
}

/// What a crash leaves after the last complete record (a cut record, zeros of a file
/// extended but not written, garbage) has nothing valid after it: it is cut, and every
/// record before it stays.
#[test]
fn a_torn_tail_with_nothing_valid_after_it_is_cut() {
    let dir = TempDir::new().expect("tempdir");
    let (path, offsets) = one_synced_segment(dir.path(), 30);
    let pristine = std::fs::read(&path).expect("read");
    let end = *offsets.last().expect("end");
    assert_eq!(pristine.len(), end);
    let last = offsets[28];
    let mut garbage = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..700 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        garbage.push(x as u8);
    }
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("last record cut short", pristine[..end - 5].to_vec(), 29),
        ("last record's header cut short", pristine[..last + 7].to_vec(), 29),
        ("zeros appended", [&pristine[..], &[0u8; 4096][..]].concat(), 30),
        ("garbage appended", [&pristine[..], &garbage[..]].concat(), 30),
        ("last record cut, then zeros", [&pristine[..end - 5], &[0u8; 300][..]].concat(), 29),
        (
            "a byte of the last record flipped",
            {
                let mut b = pristine.clone();
                b[end - 1] ^= 0x01;
                b
            },
            29,
        ),
    ];
    for (what, bytes, next) in cases {
        std::fs::write(&path, &bytes).expect("write");
        let (log, recovered) =
            SegmentLog::open_with_segment_bytes(dir.path(), None, ONE_SEGMENT_BYTES).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(log.next_index(), next, "{what}");
        let kept = offsets[(next - 1) as usize];
        assert_eq!(recovered.cut_bytes, (bytes.len() - kept) as u64, "{what}");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), kept as u64, "{what}: the file is cut");
        assert_eq!(log.read(1, next).expect("read"), (1..next).map(|i| payload(i, 0)).collect::<Vec<_>>(), "{what}");
    }
}

#[test]
fn a_bad_record_in_an_older_segment_fails_the_open_and_a_flipped_byte_fails_a_read() {
    let dir = TempDir::new().expect("tempdir");
    {
        let log = open(dir.path(), None);
        append(&log, 1, 40, 0);
        log.sync().expect("sync");
    }
    let names = segments(dir.path());
    assert!(names.len() >= 3);
    let oldest = dir.path().join(&names[0]);
    let mut bytes = std::fs::read(&oldest).expect("read");
    // A byte of the first record's payload.
    let at = SEGMENT_MAGIC.len() + RECORD_HEADER_BYTES + 2;
    bytes[at] ^= 0x40;
    std::fs::write(&oldest, &bytes).expect("write");
    match SegmentLog::open_with_segment_bytes(dir.path(), None, SEGMENT_BYTES) {
        Err(Error::Corruption { what }) => assert!(what.contains("checksum"), "{what}"),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a corrupt older segment was accepted"),
    }
    // The same flip after the log is open is caught by the read.
    bytes[at] ^= 0x40;
    std::fs::write(&oldest, &bytes).expect("write");
    let log = open(dir.path(), None);
    bytes[at] ^= 0x40;
    std::fs::write(&oldest, &bytes).expect("write");
    assert!(matches!(log.read(1, 2), Err(Error::Corruption { .. })));
}

#[test]
fn truncation_and_purge_survive_a_reopen() {
    let dir = TempDir::new().expect("tempdir");
    {
        let log = open(dir.path(), None);
        append(&log, 1, 50, 0);
        log.truncate_from(30).expect("truncate");
        assert_eq!(log.last_index(), Some(29));
        append(&log, 30, 35, 1);
        log.sync().expect("sync");
        let before = segments(dir.path()).len();
        log.purge_upto(20).expect("purge");
        assert!(segments(dir.path()).len() < before, "whole purged segments are deleted");
        assert_eq!(log.first_index(), Some(21));
        assert!(log.read(20, 22).is_err(), "purged records are not returned");
    }
    let log = open(dir.path(), Some(20));
    assert_eq!((log.first_index(), log.last_index()), (Some(21), Some(34)));
    let mut want: Vec<Vec<u8>> = (21..30).map(|i| payload(i, 0)).collect();
    want.extend((30..35).map(|i| payload(i, 1)));
    assert_eq!(log.read(21, 35).expect("read"), want);
    // A purge beyond the end (a snapshot far ahead) empties the log; it continues after it.
    log.purge_upto(100).expect("purge");
    assert_eq!((log.first_index(), log.last_index(), log.next_index()), (None, None, 101));
    append(&log, 101, 103, 2);
    drop(log);
    let log = open(dir.path(), Some(100));
    assert_eq!(log.read(101, 103).expect("read"), vec![payload(101, 2), payload(102, 2)]);
}

/// What counts as durable: only what a sync covered; a truncation takes back the indexes it
/// removed, so records written again at those indexes wait for their own sync.
#[test]
fn durability_follows_syncs_and_truncations() {
    let dir = TempDir::new().expect("tempdir");
    let log = open(dir.path(), None);
    append(&log, 1, 11, 0);
    assert!(log.durable_end() <= 1, "nothing written is durable before a sync");
    log.sync_upto(4).expect("sync");
    assert_eq!(log.durable_end(), 11, "a sync covers everything written before it");
    log.truncate_from(5).expect("truncate");
    assert_eq!(log.durable_end(), 5);
    append(&log, 5, 8, 1);
    log.sync_upto(4).expect("no sync needed");
    assert_eq!(log.durable_end(), 5, "index 4 was durable already: no sync");
    log.sync_upto(6).expect("sync");
    assert_eq!(log.durable_end(), 8);
    drop(log);
    // Reopened, everything held is durable (the newest segment is synced on open).
    let log = open(dir.path(), None);
    assert_eq!(log.durable_end(), 8);
    assert_eq!(log.read(5, 8).expect("read"), (5..8).map(|i| payload(i, 1)).collect::<Vec<_>>());
}

#[test]
fn appends_must_continue_the_log() {
    let dir = TempDir::new().expect("tempdir");
    let log = open(dir.path(), None);
    append(&log, 5, 8, 0);
    let p = payload(9, 0);
    assert!(matches!(log.append(&[(9, &p[..])]), Err(Error::Corruption { .. })), "a gap is refused");
    assert!(matches!(log.append(&[(8, &p[..]), (10, &p[..])]), Err(Error::Corruption { .. })));
    assert_eq!(log.last_index(), Some(7), "a refused batch writes nothing");
}

/// Random appends, truncations, purges, syncs and reopens against a model. Prints its seed;
/// `KHO_TEST_SEED=<n>` replays a run.
#[test]
fn randomized_operations_match_a_model() {
    let seed: u64 = std::env::var("KHO_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64);
    println!("randomized_operations_match_a_model: seed {seed} (KHO_TEST_SEED)");
    let mut state = seed | 1;
    let mut rnd = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    let dir = TempDir::new().expect("tempdir");
    let mut purged: Option<u64> = None;
    let mut log = open(dir.path(), purged);
    let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next = 1u64;
    append(&log, 1, 2, 0);
    model.insert(1, payload(1, 0));
    next += 1;
    for step in 0..2_000u64 {
        match rnd(10) {
            0..=4 => {
                let n = 1 + rnd(8);
                append(&log, next, next + n, step);
                for i in next..next + n {
                    model.insert(i, payload(i, step));
                }
                next += n;
            }
            5 => {
                let low = purged.map_or(1, |p| p + 1);
                if next > low + 1 {
                    let at = low + 1 + rnd(next - low - 1);
                    log.truncate_from(at).expect("truncate");
                    model.retain(|i, _| *i < at);
                    next = at;
                }
            }
            6 => {
                let low = purged.map_or(0, |p| p + 1);
                if next > low + 2 {
                    let p = low + rnd(next - low - 1);
                    log.purge_upto(p).expect("purge");
                    purged = Some(p);
                    model.retain(|i, _| *i > p);
                }
            }
            7 => log.sync().expect("sync"),
            8 => {
                drop(log);
                log = open(dir.path(), purged);
            }
            _ => {
                if let (Some(&first), Some(&last)) = (model.keys().next(), model.keys().next_back()) {
                    let a = first + rnd(last - first + 1);
                    let b = a + 1 + rnd(last + 1 - a);
                    let want: Vec<Vec<u8>> = model.range(a..b).map(|(_, v)| v.clone()).collect();
                    assert_eq!(log.read(a, b).expect("read"), want, "seed {seed} step {step}: read {a}..{b}");
                }
            }
        }
        assert_eq!(log.first_index(), model.keys().next().copied(), "seed {seed} step {step}: first index");
        assert_eq!(log.last_index(), model.keys().next_back().copied(), "seed {seed} step {step}: last index");
    }
}
