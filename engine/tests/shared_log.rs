//! The shared log (the records of many streams in one sequence of segment files) on a real
//! file system: interleaved streams across segments and reopens, truncation, purging and
//! exactly which segments are deleted, stream removal, torn tails against corruption,
//! durability, concurrent use, and a model-based property test with simulated crashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kho_engine::shared_log::{SharedLog, StreamId, LOG_MAGIC, RECORD_HEADER_BYTES};
use kho_engine::Error;
use proptest::prelude::*;
use tempfile::TempDir;

/// Small segments, so that a few records span several files.
const SEGMENT_BYTES: u64 = 512;

fn no_purges() -> BTreeMap<StreamId, u64> {
    BTreeMap::new()
}

fn open(dir: &Path, purged: &BTreeMap<StreamId, u64>) -> SharedLog {
    let (log, _) = SharedLog::open(dir, SEGMENT_BYTES, purged).expect("open shared log");
    log.check_invariants();
    log
}

fn payload(stream: StreamId, index: u64, generation: u64) -> Vec<u8> {
    format!("stream {stream} entry {index} generation {generation} {}", "x".repeat((index % 23) as usize)).into_bytes()
}

/// Appends entries `[from, to)` of `stream` in one call.
fn append(log: &SharedLog, stream: StreamId, from: u64, to: u64, generation: u64) {
    let payloads: Vec<Vec<u8>> = (from..to).map(|i| payload(stream, i, generation)).collect();
    let records: Vec<(u64, &[u8])> = (from..to).zip(payloads.iter().map(Vec::as_slice)).collect();
    log.append(stream, &records).expect("append");
}

fn expected(stream: StreamId, from: u64, to: u64, generation: u64) -> Vec<Vec<u8>> {
    (from..to).map(|i| payload(stream, i, generation)).collect()
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

fn seg(seq: u64) -> String {
    format!("{seq:020}.log")
}

#[test]
fn interleaved_appends_of_many_streams_read_back_after_reopening() {
    let dir = TempDir::new().expect("tempdir");
    let streams: Vec<StreamId> = (0..24).map(|i| i * 1_000_003).collect();
    {
        let log = open(dir.path(), &no_purges());
        assert!(log.streams().is_empty());
        for round in 0..10u64 {
            for (k, &s) in streams.iter().enumerate() {
                // Each stream starts where its first entry is, and appends 1 to 3 at a time.
                let start = 1 + k as u64 * 10;
                let n = 1 + (round + k as u64) % 3;
                let from = log.next_index(s).unwrap_or(start);
                append(&log, s, from, from + n, 0);
            }
        }
        log.check_invariants();
        let nexts: Vec<Option<u64>> = streams.iter().map(|s| log.next_index(*s)).collect();
        assert!(streams.iter().zip(&nexts).all(|(s, n)| !log.is_durable(*s, n.expect("appended") - 1)), "nothing is durable before a sync");
        // One sync makes every stream's appends durable.
        log.sync().expect("sync");
        assert!(streams.iter().zip(&nexts).all(|(s, n)| log.is_durable(*s, n.expect("appended") - 1)));
        assert_eq!(log.streams(), streams);
        for (k, &s) in streams.iter().enumerate() {
            let first = 1 + k as u64 * 10;
            assert_eq!(log.first_index(s), Some(first));
            assert_eq!(log.read(s, first, nexts[k].expect("appended")).expect("read"), expected(s, first, nexts[k].expect("appended"), 0));
        }
    }
    let names = segments(dir.path());
    assert!(names.len() > 10, "small segments: {names:?}");
    let (log, recovered) = SharedLog::open(dir.path(), SEGMENT_BYTES, &no_purges()).expect("reopen");
    log.check_invariants();
    assert_eq!(recovered.streams, streams.len());
    assert_eq!(recovered.segments, names.len());
    assert_eq!(recovered.cut_bytes, 0);
    let total: u64 = (0..streams.len() as u64).map(|k| (0..10).map(|round| 1 + (round + k) % 3).sum::<u64>()).sum();
    assert_eq!(recovered.records, total);
    for (k, &s) in streams.iter().enumerate() {
        let first = 1 + k as u64 * 10;
        let next = log.next_index(s).expect("held");
        assert_eq!(log.read(s, first, next).expect("read"), expected(s, first, next, 0));
        assert!(log.is_durable(s, next - 1), "everything found on opening is durable");
    }
    let stats = log.stats();
    assert_eq!((stats.segments, stats.streams, stats.records), (names.len(), streams.len(), total));
    assert_eq!(stats.bytes, names.iter().map(|n| std::fs::metadata(dir.path().join(n)).expect("stat").len()).sum::<u64>());
    assert_eq!(log.bytes_on_disk(), stats.bytes);
    assert_eq!(log.segment_count(), names.len());
}

#[test]
fn truncate_then_append_survives_reopening() {
    let dir = TempDir::new().expect("tempdir");
    {
        let log = open(dir.path(), &no_purges());
        append(&log, 1, 1, 30, 0);
        append(&log, 2, 5, 20, 0);
        log.truncate_from(1, 12).expect("truncate");
        assert_eq!(log.last_index(1), Some(11));
        assert_eq!(log.next_index(1), Some(12));
        assert!(log.read(1, 11, 13).is_err(), "truncated entries are not returned");
        assert!(matches!(log.append(1, &[(13, b"gap")]), Err(Error::Corruption { .. })), "the stream continues at 12");
        append(&log, 1, 12, 15, 1);
        // A truncation below a stream's first entry removes all of it; a stream that holds
        // nothing and was never purged starts anywhere again.
        log.truncate_from(2, 3).expect("truncate");
        assert_eq!((log.first_index(2), log.next_index(2)), (None, None));
        assert_eq!(log.streams(), vec![1]);
        append(&log, 2, 100, 103, 1);
        // Nothing to truncate: no record, no change.
        log.truncate_from(1, 50).expect("truncate beyond the end");
        log.sync().expect("sync");
    }
    let log = open(dir.path(), &no_purges());
    let mut want = expected(1, 1, 12, 0);
    want.extend(expected(1, 12, 15, 1));
    assert_eq!(log.read(1, 1, 15).expect("read"), want);
    assert_eq!((log.first_index(2), log.last_index(2)), (Some(100), Some(102)));
    assert_eq!(log.read(2, 100, 103).expect("read"), expected(2, 100, 103, 1));
}

/// Each append below writes one record of `ROUND_RECORD_BYTES`; with segments of two such
/// records, every segment holds exactly two (a new one starts once one is full).
const ROUND_PAYLOAD: usize = 75;
const ROUND_RECORD_BYTES: u64 = (RECORD_HEADER_BYTES + ROUND_PAYLOAD) as u64;
const TWO_RECORDS: u64 = LOG_MAGIC.len() as u64 + 2 * ROUND_RECORD_BYTES;

fn append_one(log: &SharedLog, stream: StreamId, index: u64) {
    let mut p = format!("{stream}/{index}/").into_bytes();
    p.resize(ROUND_PAYLOAD, b'.');
    log.append(stream, &[(index, &p)]).expect("append");
}

fn read_one(log: &SharedLog, stream: StreamId, index: u64) -> Vec<u8> {
    log.read(stream, index, index + 1).expect("read").remove(0)
}

/// Purging deletes exactly the segments that no stream needs: not the active one, none
/// with a live entry, none whose truncate records still drop entries of a kept segment.
#[test]
fn purge_deletes_exactly_the_segments_nobody_needs() {
    const A: StreamId = 1;
    const B: StreamId = 2;
    const C: StreamId = 3;
    let dir = TempDir::new().expect("tempdir");
    let (log, _) = SharedLog::open(dir.path(), TWO_RECORDS, &no_purges()).expect("open");
    // seg 1: C1 A1 | seg 2: A2 B1 | seg 3: A3 B2 | seg 4: A4 B3 | seg 5 (active): A5 B4
    append_one(&log, C, 1);
    append_one(&log, A, 1);
    for i in 2..=5 {
        append_one(&log, A, i);
        append_one(&log, B, i - 1);
    }
    log.sync().expect("sync");
    assert_eq!(segments(dir.path()), (1..=5).map(seg).collect::<Vec<_>>());
    assert_eq!(log.oldest_pinning_stream(), Some((A, 1)), "A and C pin segment 1; A has the lower id");

    log.purge_upto(A, 2).expect("purge");
    assert_eq!(segments(dir.path()).len(), 5, "segment 2 still holds B1, segment 1 C1");
    assert_eq!(log.oldest_pinning_stream(), Some((C, 1)));
    log.purge_upto(B, 2).expect("purge");
    // Segment 2 (A2 B1) is dead; segment 3 still holds A3.
    assert_eq!(segments(dir.path()), [1, 3, 4, 5].map(seg));
    log.purge_upto(A, 4).expect("purge");
    log.purge_upto(B, 3).expect("purge");
    assert_eq!(segments(dir.path()), [1, 5].map(seg), "only C, never purged, keeps an old segment alive");
    assert_eq!(log.oldest_pinning_stream(), Some((C, 1)));
    // Purging everything of A and B keeps the active segment.
    log.purge_upto(A, 9).expect("purge");
    log.purge_upto(B, 9).expect("purge");
    assert_eq!(segments(dir.path()), [1, 5].map(seg));
    assert_eq!((log.first_index(A), log.next_index(A)), (None, Some(10)), "a purge beyond the end: the stream continues after it");
    log.check_invariants();

    // Reopened with the purge points, C1 is still there.
    drop(log);
    let purged = BTreeMap::from([(A, 9), (B, 9)]);
    let (log, recovered) = SharedLog::open(dir.path(), TWO_RECORDS, &purged).expect("reopen");
    log.check_invariants();
    assert_eq!((recovered.records, recovered.streams, recovered.segments), (1, 3, 2));
    assert_eq!(log.read(C, 1, 2).expect("read").len(), 1);
    assert_eq!(log.next_index(A), Some(10));
    log.purge_upto(C, 1).expect("purge");
    assert_eq!(segments(dir.path()), [seg(5)]);
    assert_eq!(log.oldest_pinning_stream(), None, "only the active segment is left");
}

/// A truncate record is kept while an older segment that is kept holds entries it drops:
/// without it, a reopen would bring them back.
#[test]
fn a_truncate_record_lives_as_long_as_the_entries_it_drops() {
    const A: StreamId = 1;
    const C: StreamId = 3;
    let dir = TempDir::new().expect("tempdir");
    let (log, _) = SharedLog::open(dir.path(), TWO_RECORDS, &no_purges()).expect("open");
    // seg 1: C1 A1 | seg 2: A2 A3 | seg 3: [truncate A from 2] A2' A3' (the truncate record
    // is small: three records) | seg 4 (active): A4
    append_one(&log, C, 1);
    for i in 1..=3 {
        append_one(&log, A, i);
    }
    log.truncate_from(A, 2).expect("truncate");
    for i in 2..=4 {
        append_one(&log, A, i);
    }
    log.sync().expect("sync");
    assert_eq!(segments(dir.path()), (1..=4).map(seg).collect::<Vec<_>>());
    // A1 is purged: segment 2 holds only dropped entries and goes. Segment 3's truncate
    // record does not drop anything of segment 1 (A1 is below 2), but A2' and A3' are live.
    log.purge_upto(A, 1).expect("purge");
    assert_eq!(segments(dir.path()), [1, 3, 4].map(seg));
    log.purge_upto(A, 3).expect("purge");
    // Segment 3 has no live entry any more, and nothing older that it drops is kept.
    assert_eq!(segments(dir.path()), [1, 4].map(seg));
    drop(log);
    let log = open(dir.path(), &BTreeMap::from([(A, 3)]));
    assert_eq!((log.first_index(A), log.last_index(A)), (Some(4), Some(4)));
    assert_eq!(
        read_one(&log, A, 4),
        format!("{A}/4/").into_bytes().into_iter().chain(std::iter::repeat(b'.')).take(ROUND_PAYLOAD).collect::<Vec<_>>()
    );

    // Now the other way round: entries dropped by a truncation sit in a segment kept alive
    // by C, so the segment with the truncate record must stay even with nothing live in it.
    let dir = TempDir::new().expect("tempdir");
    let (log, _) = SharedLog::open(dir.path(), TWO_RECORDS, &no_purges()).expect("open");
    // seg 1: A1 A2 | seg 2: C1 A3 | seg 3: [truncate A from 3] 9/1 9/2 | seg 4 (active): 9/3
    append_one(&log, A, 1);
    append_one(&log, A, 2);
    append_one(&log, C, 1);
    append_one(&log, A, 3);
    log.truncate_from(A, 3).expect("truncate");
    for i in 1..=3 {
        append_one(&log, 9, i);
    }
    assert_eq!(segments(dir.path()), (1..=4).map(seg).collect::<Vec<_>>());
    log.purge_upto(A, 2).expect("purge");
    log.purge_upto(9, 3).expect("purge");
    assert_eq!(segments(dir.path()), [2, 3, 4].map(seg), "segment 3 drops A3 of segment 2, which C keeps");
    drop(log);
    let purged = BTreeMap::from([(A, 2), (9, 3)]);
    let log = open(dir.path(), &purged);
    assert_eq!((log.last_index(A), log.next_index(A)), (None, Some(3)), "A3 stays dropped");
    log.purge_upto(C, 1).expect("purge");
    assert_eq!(segments(dir.path()), [seg(4)]);
}

#[test]
fn a_removed_stream_is_gone_for_good_and_its_id_can_start_again() {
    let dir = TempDir::new().expect("tempdir");
    {
        let log = open(dir.path(), &no_purges());
        for round in 0..5 {
            append(&log, 7, 1 + round * 4, 5 + round * 4, 0);
            append(&log, 8, 1 + round * 4, 5 + round * 4, 0);
        }
        log.purge_upto(7, 3).expect("purge");
        let before = segments(dir.path()).len();
        log.remove_stream(7).expect("remove");
        assert_eq!(log.streams(), vec![8]);
        assert_eq!((log.first_index(7), log.last_index(7), log.next_index(7)), (None, None, None));
        assert!(log.read(7, 4, 5).is_err());
        assert!(segments(dir.path()).len() <= before);
        // The id starts again anywhere.
        append(&log, 7, 50, 53, 1);
        log.sync().expect("sync");
    }
    // The caller forgot the purge point of the removed stream.
    let log = open(dir.path(), &no_purges());
    assert_eq!((log.first_index(7), log.last_index(7)), (Some(50), Some(52)));
    assert_eq!(log.read(7, 50, 53).expect("read"), expected(7, 50, 53, 1));
    assert_eq!(log.read(8, 1, 21).expect("read"), expected(8, 1, 21, 0));
    log.remove_stream(8).expect("remove");
    log.remove_stream(8).expect("removing twice is harmless");
    drop(log);
    let log = open(dir.path(), &no_purges());
    assert_eq!(log.streams(), vec![7]);
}

/// Appends stream 1, entries 1..to, into one segment; returns its path and the offset of
/// each entry (`offsets[i]` for entry `i + 1`, then the end).
fn one_synced_segment(dir: &Path, to: u64) -> (PathBuf, Vec<u64>) {
    let (log, _) = SharedLog::open(dir, 1 << 20, &no_purges()).expect("open");
    let mut offsets = vec![LOG_MAGIC.len() as u64];
    for i in 1..to {
        append(&log, 1, i, i + 1, 0);
        offsets.push(offsets.last().expect("one") + (RECORD_HEADER_BYTES + payload(1, i, 0).len()) as u64);
    }
    log.sync().expect("sync");
    let names = segments(dir);
    assert_eq!(names.len(), 1);
    (dir.join(&names[0]), offsets)
}

#[test]
fn a_torn_tail_is_cut_but_a_bad_record_with_valid_ones_after_it_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let (path, offsets) = one_synced_segment(dir.path(), 30);
    let pristine = std::fs::read(&path).expect("read");
    let end = *offsets.last().expect("end") as usize;
    // Entry 10 damaged: its payload, its stream id, its length.
    let bad = offsets[9];
    for (what, at) in [("payload", bad as usize + RECORD_HEADER_BYTES + 2), ("stream", bad as usize + 9), ("length", bad as usize + 2)] {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        match SharedLog::open(dir.path(), 1 << 20, &no_purges()) {
            Err(Error::Corruption { what: msg }) => {
                assert!(msg.contains(&path.display().to_string()), "{what}: names the file: {msg}");
                assert!(msg.contains(&format!("offset {bad}")), "{what}: names the offset: {msg}");
                assert!(msg.contains(&format!("follows at offset {}", offsets[10])), "{what}: {msg}");
            }
            Err(e) => panic!("{what}: expected corruption, got {e}"),
            Ok(_) => panic!("{what}: a log with a bad record in the middle was opened"),
        }
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "{what}: a refused open changes nothing");
    }
    // Torn tails: nothing valid after the bad bytes. Cut, everything before stays.
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("last entry cut short", pristine[..end - 4].to_vec(), 29),
        ("last header cut short", pristine[..offsets[28] as usize + 10].to_vec(), 29),
        ("zeros appended", [&pristine[..], &[0u8; 1000][..]].concat(), 30),
        (
            "garbage appended",
            [&pristine[..], &(0..999u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>()[..]].concat(),
            30,
        ),
        ("last entry cut, then zeros", [&pristine[..end - 4], &[0u8; 200][..]].concat(), 29),
    ];
    for (what, bytes, next) in cases {
        std::fs::write(&path, &bytes).expect("write");
        let (log, recovered) = SharedLog::open(dir.path(), 1 << 20, &no_purges()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let kept = offsets[(next - 1) as usize];
        assert_eq!(log.next_index(1), Some(next), "{what}");
        assert_eq!(recovered.cut_bytes, bytes.len() as u64 - kept, "{what}");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), kept, "{what}");
        assert_eq!(log.read(1, 1, next).expect("read"), expected(1, 1, next, 0), "{what}");
    }
    // A bad record in an older segment is never a torn tail.
    std::fs::write(&path, &pristine).expect("write");
    {
        let (log, _) = SharedLog::open(dir.path(), 64, &no_purges()).expect("open");
        append(&log, 1, 30, 31, 0);
        log.sync().expect("sync");
    }
    assert_eq!(segments(dir.path()).len(), 2);
    let mut bytes = pristine.clone();
    bytes[end - 1] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    match SharedLog::open(dir.path(), 1 << 20, &no_purges()) {
        Err(Error::Corruption { what }) => {
            assert!(what.contains(&path.display().to_string()) && what.contains(&format!("offset {}", offsets[28])), "{what}")
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn appends_must_continue_their_stream() {
    let dir = TempDir::new().expect("tempdir");
    let log = open(dir.path(), &BTreeMap::from([(2, 10)]));
    append(&log, 1, 5, 8, 0);
    let p = b"p".as_slice();
    assert!(matches!(log.append(1, &[(9, p)]), Err(Error::Corruption { .. })), "a gap is refused");
    assert!(matches!(log.append(1, &[(8, p), (10, p)]), Err(Error::Corruption { .. })), "a batch with a gap is refused");
    assert!(matches!(log.append(1, &[(4, p)]), Err(Error::Corruption { .. })), "going back is refused");
    assert_eq!(log.last_index(1), Some(7), "a refused batch writes nothing");
    // A purged stream continues after its purge point.
    assert_eq!(log.next_index(2), Some(11));
    assert!(matches!(log.append(2, &[(1, p)]), Err(Error::Corruption { .. })));
    log.append(2, &[(11, p)]).expect("append after the purge point");
    log.append(3, &[]).expect("an empty append does nothing");
    assert_eq!(log.streams(), vec![1, 2]);
    log.check_invariants();
}

/// What counts as durable: what a sync covered, whichever stream asked for it; an entry
/// written again after a truncation waits for its own sync.
#[test]
fn durability_follows_syncs_of_any_stream_and_truncations() {
    let dir = TempDir::new().expect("tempdir");
    let log = open(dir.path(), &BTreeMap::from([(3, 4)]));
    append(&log, 1, 1, 11, 0);
    append(&log, 2, 1, 4, 0);
    assert!(!log.is_durable(1, 1) && !log.is_durable(2, 1));
    assert!(log.is_durable(3, 4), "at or below the purge point");
    log.sync_upto(2, 1).expect("sync");
    assert!(log.is_durable(1, 10), "stream 2's sync covered stream 1");
    log.truncate_from(1, 5).expect("truncate");
    append(&log, 1, 5, 8, 1);
    assert!(log.is_durable(1, 4) && !log.is_durable(1, 5), "entry 5 was written again");
    log.sync_upto(1, 4).expect("nothing to sync");
    assert!(!log.is_durable(1, 5));
    log.sync_upto(1, 6).expect("sync");
    assert!(log.is_durable(1, 7));
    assert!(!log.is_durable(1, 8) && !log.is_durable(9, 1), "nothing held there");
}

#[test]
fn streams_append_read_sync_and_purge_from_many_threads() {
    let dir = TempDir::new().expect("tempdir");
    let log = Arc::new(open(dir.path(), &no_purges()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for round in 0..60u64 {
                    for s in [t * 2, t * 2 + 1] {
                        let from = log.next_index(s).unwrap_or(1);
                        append(&log, s, from, from + 1 + round % 3, 0);
                        let first = log.first_index(s).expect("held");
                        let last = log.last_index(s).expect("held");
                        assert_eq!(log.read(s, first, last + 1).expect("read"), expected(s, first, last + 1, 0));
                    }
                    match round % 7 {
                        0 => log.sync().expect("sync"),
                        3 => log.purge_upto(t * 2, log.last_index(t * 2).expect("held") - 2).expect("purge"),
                        5 => log.sync_upto(t * 2 + 1, log.last_index(t * 2 + 1).expect("held")).expect("sync"),
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    log.sync().expect("sync");
    log.check_invariants();
    let purged: BTreeMap<StreamId, u64> = (0..4).filter_map(|t| Some((t * 2, log.purged_index(t * 2)?))).collect();
    let state: Vec<(Option<u64>, Option<u64>)> = (0..8).map(|s| (log.first_index(s), log.last_index(s))).collect();
    drop(log);
    let log = open(dir.path(), &purged);
    for s in 0..8u64 {
        assert_eq!((log.first_index(s), log.last_index(s)), state[s as usize], "stream {s}");
        let (first, last) = (log.first_index(s).expect("held"), log.last_index(s).expect("held"));
        assert_eq!(log.read(s, first, last + 1).expect("read"), expected(s, first, last + 1, 0));
    }
}

// ---------------------------------------------------------------------------------------
// Model-based property test.

/// Streams the property test uses.
const MODEL_STREAMS: u64 = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Appends `n` entries (payloads of about `len` bytes); a stream that starts anywhere
    /// starts at `start`.
    Append {
        stream: u64,
        start: u64,
        n: u64,
        len: usize,
    },
    /// Truncates at an index chosen by `pick` around the stream's range.
    Truncate {
        stream: u64,
        pick: u64,
    },
    /// Purges up to an index chosen by `pick` around (and beyond) the stream's range.
    Purge {
        stream: u64,
        pick: u64,
    },
    Remove {
        stream: u64,
    },
    Sync,
    /// Syncs, then opens the directory afresh.
    Reopen,
    /// Opens the directory afresh after losing everything that was not synced: the newest
    /// segment at the last sync is cut where that sync left it, newer ones are deleted.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let stream = 0..MODEL_STREAMS;
    prop_oneof![
        8 => (stream.clone(), 0..20u64, 1..5u64, 0..60usize).prop_map(|(stream, start, n, len)| Op::Append { stream, start, n, len }),
        2 => (stream.clone(), any::<u64>()).prop_map(|(stream, pick)| Op::Truncate { stream, pick }),
        2 => (stream.clone(), any::<u64>()).prop_map(|(stream, pick)| Op::Purge { stream, pick }),
        1 => stream.prop_map(|stream| Op::Remove { stream }),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ModelStream {
    purged: Option<u64>,
    entries: BTreeMap<u64, Vec<u8>>,
}

impl ModelStream {
    fn next(&self) -> Option<u64> {
        match self.entries.keys().next_back() {
            Some(last) => Some(last + 1),
            None => self.purged.map(|p| p + 1),
        }
    }

    fn forgotten(&self) -> bool {
        self.entries.is_empty() && self.purged.is_none()
    }
}

type Model = BTreeMap<StreamId, ModelStream>;

fn model_payload(stream: StreamId, index: u64, step: usize, len: usize) -> Vec<u8> {
    let mut p = format!("s{stream} i{index} step{step} ").into_bytes();
    p.resize(p.len() + len, b'a' + (step % 26) as u8);
    p
}

/// The newest segment file and its length: where the last sync left the log.
fn newest_file(dir: &Path) -> Option<(u64, u64)> {
    let name = segments(dir).pop()?;
    let seq = name.trim_end_matches(".log").parse().expect("segment name");
    Some((seq, std::fs::metadata(dir.join(&name)).expect("stat").len()))
}

/// Loses what was not synced: what a power cut may do (more, even: a segment synced when
/// the next one was started is cut too, which `open` must take as well).
fn crash(dir: &Path, synced: Option<(u64, u64)>) {
    for name in segments(dir) {
        let seq: u64 = name.trim_end_matches(".log").parse().expect("segment name");
        let path = dir.join(&name);
        match synced {
            Some((s, len)) if seq == s => std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(len).expect("cut"),
            Some((s, _)) if seq < s => {}
            _ => std::fs::remove_file(&path).expect("remove"),
        }
    }
}

fn purge_points(model: &Model) -> BTreeMap<StreamId, u64> {
    model.iter().filter_map(|(id, s)| Some((*id, s.purged?))).collect()
}

fn assert_matches_model(log: &SharedLog, model: &Model, dir: &Path, step: usize) -> std::result::Result<(), TestCaseError> {
    log.check_invariants();
    let ids: Vec<StreamId> = model.keys().copied().collect();
    prop_assert_eq!(log.streams(), ids, "step {}: streams", step);
    for stream in 0..MODEL_STREAMS {
        let m = model.get(&stream).cloned().unwrap_or_default();
        let first = m.entries.keys().next().copied();
        let last = m.entries.keys().next_back().copied();
        prop_assert_eq!(log.first_index(stream), first, "step {}: first index of {}", step, stream);
        prop_assert_eq!(log.last_index(stream), last, "step {}: last index of {}", step, stream);
        prop_assert_eq!(log.next_index(stream), m.next(), "step {}: next index of {}", step, stream);
        prop_assert_eq!(log.purged_index(stream), m.purged, "step {}: purge point of {}", step, stream);
        if let (Some(first), Some(last)) = (first, last) {
            let want: Vec<Vec<u8>> = m.entries.values().cloned().collect();
            prop_assert_eq!(log.read(stream, first, last + 1).expect("read"), want, "step {}: entries of {}", step, stream);
            prop_assert!(log.read(stream, first.saturating_sub(1), first).is_err() || first == 0);
            prop_assert!(log.read(stream, last + 1, last + 2).is_err());
        }
    }
    prop_assert_eq!(log.segment_count(), segments(dir).len(), "step {}: segment files", step);
    Ok(())
}

/// Runs `ops` against the log and a model, checking them against each other after every
/// step and after every reopen and simulated crash.
fn run_model(ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
    // Durability is simulated by `Crash`, so a file system whose fsync is free will do.
    let tmp = if Path::new("/dev/shm").is_dir() { TempDir::new_in("/dev/shm") } else { TempDir::new() };
    let tmp = tmp.expect("tempdir");
    let dir = tmp.path();
    let mut model: Model = BTreeMap::new();
    let mut log = open(dir, &BTreeMap::new());
    // What the last sync made durable: the entries, and where the files ended.
    let mut synced_entries: BTreeMap<StreamId, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    let mut synced_file = newest_file(dir);
    for (step, op) in ops.into_iter().enumerate() {
        let mut synced = false;
        match op {
            Op::Append { stream, start, n, len } => {
                let m = model.entry(stream).or_default();
                let from = m.next().unwrap_or(start);
                let payloads: Vec<Vec<u8>> = (from..from + n).map(|i| model_payload(stream, i, step, len)).collect();
                let records: Vec<(u64, &[u8])> = (from..from + n).zip(payloads.iter().map(Vec::as_slice)).collect();
                log.append(stream, &records).expect("append");
                m.entries.extend((from..from + n).zip(payloads));
                prop_assert!(!log.is_durable(stream, from + n - 1), "step {}: durable before a sync", step);
            }
            Op::Truncate { stream, pick } => {
                let m = model.entry(stream).or_default();
                let low = m.purged.or(m.entries.keys().next().copied()).unwrap_or(0).saturating_sub(2);
                let high = m.next().unwrap_or(low) + 2;
                let index = low + pick % (high - low + 1);
                log.truncate_from(stream, index).expect("truncate");
                let index = index.max(m.purged.map_or(0, |p| p + 1));
                m.entries.retain(|i, _| *i < index);
                // A truncation that removed something synced; one that did not may not have.
                log.sync().expect("sync");
                synced = true;
            }
            Op::Purge { stream, pick } => {
                let m = model.entry(stream).or_default();
                let low = m.purged.or(m.entries.keys().next().copied()).unwrap_or(0).saturating_sub(1);
                let high = m.next().unwrap_or(low) + 3;
                let index = low + pick % (high - low + 1);
                let below_first = m.entries.keys().next().is_some_and(|first| index + 1 < *first);
                if below_first && m.purged.is_none_or(|p| p < index) {
                    prop_assert!(
                        matches!(log.purge_upto(stream, index), Err(Error::Corruption { .. })),
                        "step {}: purge below the first entry",
                        step
                    );
                    continue;
                }
                log.purge_upto(stream, index).expect("purge");
                if m.purged.is_none_or(|p| p < index) {
                    m.purged = Some(index);
                    m.entries.retain(|i, _| *i > index);
                }
            }
            Op::Remove { stream } => {
                log.remove_stream(stream).expect("remove");
                model.remove(&stream);
                log.sync().expect("sync");
                synced = true;
            }
            Op::Sync => {
                log.sync().expect("sync");
                synced = true;
            }
            Op::Reopen => {
                log.sync().expect("sync");
                drop(log);
                log = open(dir, &purge_points(&model));
                synced = true;
            }
            Op::Crash => {
                drop(log);
                crash(dir, synced_file);
                // What survives: the synced entries, less what the purge points (durable
                // before each purge) drop.
                let purged = purge_points(&model);
                let mut survivors: Model = BTreeMap::new();
                for (id, entries) in &synced_entries {
                    let p = purged.get(id).copied();
                    survivors.entry(*id).or_default().entries =
                        entries.iter().filter(|(i, _)| p.is_none_or(|p| **i > p)).map(|(i, v)| (*i, v.clone())).collect();
                }
                for (id, p) in &purged {
                    survivors.entry(*id).or_default().purged = Some(*p);
                }
                model = survivors;
                log = open(dir, &purged);
                synced = true;
            }
        }
        model.retain(|_, m| !m.forgotten());
        if synced {
            synced_entries = model.iter().map(|(id, m)| (*id, m.entries.clone())).collect();
            synced_file = newest_file(dir);
            for (id, m) in &model {
                if let Some(last) = m.entries.keys().next_back() {
                    prop_assert!(log.is_durable(*id, *last), "step {}: entry {} of {} not durable after a sync", step, last, id);
                }
            }
        }
        assert_matches_model(&log, &model, dir, step)?;
    }
    Ok(())
}

proptest! {
    // 64 cases unless PROPTEST_CASES says otherwise (a longer hunt: PROPTEST_CASES=5000).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    /// Random appends, truncations, purges, removals, syncs, reopens and crashes of several
    /// streams against a `BTreeMap` model. On failure proptest prints the smallest failing
    /// sequence of operations and saves its seed in `tests/shared_log.proptest-regressions`,
    /// which replays it first on the next run.
    #[test]
    fn random_operations_match_a_model(ops in proptest::collection::vec(op(), 1..80)) {
        run_model(ops)?;
    }
}
