//! One append-only log shared by many streams of numbered records (the Raft logs of many
//! groups), in one sequence of segment files (docs/FORMATS.md, "Shared Raft log").
//!
//! With one [`crate::segment_log::SegmentLog`] per Raft group, a node hosting thousands of
//! groups makes one `fsync` per group per round and keeps files open per group. Here the
//! records of every stream go to the same active segment file, so one `fdatasync` makes the
//! appends of every stream durable, and the number of files grows with the bytes kept,
//! not with the streams (the design of TiKV's raft-engine). The engine knows nothing of
//! Raft: a stream is a [`StreamId`] and a run of consecutive indexes.
//!
//! # Format
//!
//! A directory of segment files named `<seq, 20 decimal digits>.log`; `seq` grows by one
//! per new segment and orders them. A segment starts with the 8-byte magic [`LOG_MAGIC`]
//! (`KHOLOG01`), then holds records, each:
//!
//! ```text
//! offset  size  field
//! 0       4     len      u32 LE: payload length, at most RECORD_BYTES_MAX
//! 4       4     crc32    u32 LE, CRC-32 (IEEE) over bytes 8.. of the record
//!                        (kind ++ stream ++ index ++ payload)
//! 8       1     kind     u8: 1 entry, 2 truncate, 3 remove stream
//! 9       8     stream   u64 LE: the stream
//! 17      8     index    u64 LE: entry: its index; truncate: the first index removed;
//!                        remove: 0
//! 25      len   payload  entry: the record's bytes; truncate and remove: empty
//! ```
//!
//! Worked example (asserted byte for byte by a unit test below): the entry of stream 7 at
//! index 5 with payload `hi` is the 27 bytes
//!
//! ```text
//! 02000000 44b0a793 01 0700000000000000 0500000000000000 6869
//! len=2    crc32    entry stream 7      index 5          "hi"
//! ```
//!
//! (the CRC-32 of `01 0700000000000000 0500000000000000 6869` is `0x93a7b044`), and the
//! truncation of stream 7 from index 3 is the 25 bytes
//! `00000000 ec9ea56e 02 0700000000000000 0300000000000000`.
//!
//! # Replay
//!
//! [`SharedLog::open`] reads the segments in `seq` order and applies every record to a
//! per-stream index. An entry at or below its stream's purge point (given by the caller)
//! is ignored. An entry of a stream that holds live entries must follow the last one; a
//! truncate record drops the stream's live entries at or above its index; a remove record
//! drops all of them (what follows is a new stream of the same id). An entry that does not
//! follow is a gap: corruption (the error names the file and the offset), unless a later
//! truncate record at or below every index the gap concerns, or a remove record, drops it
//! (the entries in between may be ones a truncation dropped, whose segments are deleted
//! while the truncate record was kept). A stream holding no live entry may continue
//! anywhere during replay, since its purge point may be newer than its records; at the
//! end, a purged stream must start right after its purge point. At run time an append
//! continues the stream's last entry, or its purge point; a stream with neither starts
//! anywhere; a purge below the stream's first entry minus one is refused.
//!
//! # Durability and crash safety
//!
//! [`SharedLog::append`] writes with one `pwrite`; [`SharedLog::sync`] makes every record
//! written before it durable with one `fdatasync` of the active segment (and of the
//! directory when a segment was created). A new segment is started only after the old one
//! and the directory are synced, so after a crash only the newest segment can end with a
//! torn record. A bad record is cut only if it is in the newest segment and no valid record
//! follows it anywhere in the file; otherwise `open` fails naming the file and the offset
//! (cutting there would drop records that were synced and acknowledged).
//!
//! A failed write, `fsync` or file operation stops the log for good (fail-stop): every
//! later change or sync fails with [`Error::LogFailed`] and nothing more is reported
//! durable, because after a failed `fsync` the kernel may have dropped the dirty pages.
//! Reopening the directory rereads what is really on disk.
//!
//! # Segment deletion
//!
//! Segments are never rewritten: a segment file is deleted once no stream needs it, that
//! is, it is not the active one, holds no live entry, and none of its truncate or remove
//! records is still needed to drop entries of an older segment that is kept. A stream that
//! is never purged keeps every segment since its oldest live entry alive;
//! [`SharedLog::oldest_pinning_stream`] names it, so that its owner can snapshot and purge.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// The id of a stream: one Raft group's log.
pub type StreamId = u64;

/// First 8 bytes of every segment file.
pub const LOG_MAGIC: &[u8; 8] = b"KHOLOG01";
/// Default segment size, bytes: a new segment is started once the active one holds this many.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Largest `segment_bytes_max` [`SharedLog::open`] accepts, bytes. With
/// [`APPEND_BYTES_MAX`] it keeps every segment file below 4 GiB, so offsets fit a `u32`.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 1 << 30;
/// Largest payload of one record, bytes. Longer lengths read back are corruption.
pub const RECORD_BYTES_MAX: usize = 1 << 30;
/// Largest encoded size of one [`SharedLog::append`] call (headers included), bytes.
pub const APPEND_BYTES_MAX: usize = 2 << 30;
/// Length of a record header, bytes: len u32 ++ crc32 u32 ++ kind u8 ++ stream u64 ++ index u64.
pub const RECORD_HEADER_BYTES: usize = 25;
/// Largest segment file replay accepts, bytes: record offsets are kept as `u32`.
const SEGMENT_FILE_BYTES_MAX: u64 = u32::MAX as u64;

/// What a record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An entry of a stream: index and payload.
    Entry = 1,
    /// Removes the stream's entries at or above the index.
    Truncate = 2,
    /// Removes every entry of the stream.
    Remove = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Truncate),
            3 => Some(Kind::Remove),
            _ => None,
        }
    }
}

fn record_crc(kind: u8, stream: StreamId, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&stream.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one encoded record to `buf`. The payload length was checked by the caller.
fn encode_record(buf: &mut Vec<u8>, kind: Kind, stream: StreamId, index: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= RECORD_BYTES_MAX);
    let start = buf.len();
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record_crc(kind as u8, stream, index, payload).to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(&stream.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    debug_assert_eq!(buf.len() - start, RECORD_HEADER_BYTES + payload.len());
}

/// A record header as read from disk, not yet verified.
struct Header {
    len: usize,
    crc: u32,
    kind: u8,
    stream: StreamId,
    index: u64,
}

/// Reads the header at the start of `b`, which holds at least [`RECORD_HEADER_BYTES`].
fn parse_header(b: &[u8]) -> Header {
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    Header { len: u32_at(0) as usize, crc: u32_at(4), kind: b[8], stream: u64_at(9), index: u64_at(17) }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

fn corrupt(what: String) -> Error {
    Error::Corruption { what }
}

/// The `map_err` of a failed file operation on `path`: the error names the operation and,
/// in its message, the file.
fn io_at(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let name = path.display().to_string();
    move |e| Error::Io { op, source: std::io::Error::new(e.kind(), format!("{name}: {e}")) }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at("sync shared log directory", dir))
}

/// Where one live entry is: 16 bytes per entry in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    /// The segment holding it.
    seq: u64,
    /// Byte offset of the record in the segment file.
    offset: u32,
    /// Bytes of the whole record, header included.
    len: u32,
}

impl Loc {
    /// Where the record ends, as a position in the log: (segment, end offset).
    fn end(&self) -> (u64, u64) {
        (self.seq, self.offset as u64 + self.len as u64)
    }
}

/// One stream's live entries and purge point.
#[derive(Debug)]
struct Stream {
    /// Entries at or below this index are gone (purged by the caller).
    purged: Option<u64>,
    /// Index of `locs[0]`; meaningless while `locs` is empty.
    first: u64,
    /// Where each live entry is: `locs[i]` holds index `first + i`. Contiguous by
    /// construction, and in log order (each after the one before it).
    locs: VecDeque<Loc>,
}

impl Stream {
    fn new(purged: Option<u64>) -> Stream {
        Stream { purged, first: 0, locs: VecDeque::new() }
    }

    fn first_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then_some(self.first)
    }

    fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// The index the next entry must have; `None`: anywhere (nothing held, never purged).
    fn next_index(&self) -> Option<u64> {
        match self.last_index() {
            Some(last) => Some(last + 1),
            None => self.purged.map(|p| p + 1),
        }
    }

    /// Holds nothing the log must remember.
    fn is_forgotten(&self) -> bool {
        self.locs.is_empty() && self.purged.is_none()
    }

    fn loc(&self, index: u64) -> Option<Loc> {
        let k = index.checked_sub(self.first)?;
        self.locs.get(usize::try_from(k).ok()?).copied()
    }

    fn push(&mut self, index: u64, loc: Loc) {
        debug_assert!(self.last_index().is_none_or(|last| last + 1 == index), "stream entries are contiguous");
        debug_assert!(self.locs.back().is_none_or(|b| (b.seq, b.offset) < (loc.seq, loc.offset)), "stream entries are in log order");
        if self.locs.is_empty() {
            self.first = index;
        }
        self.locs.push_back(loc);
    }

    /// Drops the live entries at or above `index`.
    fn truncate(&mut self, index: u64, segments: &mut BTreeMap<u64, Segment>) {
        while self.last_index().is_some_and(|last| last >= index) {
            let loc = self.locs.pop_back().expect("a last index");
            kill(segments, loc);
        }
    }

    /// Drops the live entries at or below `index` and remembers it as the purge point.
    fn purge(&mut self, index: u64, segments: &mut BTreeMap<u64, Segment>) {
        debug_assert!(self.purged.is_none_or(|p| p < index));
        self.purged = Some(index);
        while self.first_index().is_some_and(|first| first <= index) {
            let loc = self.locs.pop_front().expect("a first index");
            kill(segments, loc);
            self.first += 1;
        }
        // A deque does not shrink by itself; thousands of streams must not keep the
        // capacity of their longest past.
        if self.locs.capacity() > 4 * self.locs.len() + 64 {
            self.locs.shrink_to(2 * self.locs.len());
        }
    }

    /// Drops every live entry.
    fn clear(&mut self, segments: &mut BTreeMap<u64, Segment>) {
        for loc in self.locs.drain(..) {
            kill(segments, loc);
        }
        self.locs = VecDeque::new();
    }
}

/// Accounts for a live entry that died (truncated, purged, removed).
fn kill(segments: &mut BTreeMap<u64, Segment>, loc: Loc) {
    let seg = segments.get_mut(&loc.seq).expect("the segment of a live entry is held");
    assert!(seg.live > 0, "segment {} has no live entry left to drop", loc.seq);
    seg.live -= 1;
}

/// A truncate or remove record: what it drops from older segments.
#[derive(Debug, Clone, Copy)]
enum Tombstone {
    /// Entries at or above this index.
    Truncate(u64),
    /// Every entry.
    Remove,
}

/// A segment file held open for reads and (the active one) appends.
#[derive(Debug)]
struct SegmentFile {
    path: PathBuf,
    file: File,
}

/// One segment: its file and what in it is still needed.
#[derive(Debug)]
struct Segment {
    file: Arc<SegmentFile>,
    /// Bytes in the file: the end of its last record.
    len: u64,
    /// Live entries in it (of any stream).
    live: u64,
    /// For each stream with entries in it (live or not): their lowest and highest index.
    entries: HashMap<StreamId, (u64, u64)>,
    /// Its truncate and remove records.
    tombstones: Vec<(StreamId, Tombstone)>,
}

impl Segment {
    fn note_entries(&mut self, stream: StreamId, low: u64, high: u64) {
        let e = self.entries.entry(stream).or_insert((low, high));
        e.0 = e.0.min(low);
        e.1 = e.1.max(high);
    }

    /// Whether one of its tombstones drops entries held by older segments that are kept:
    /// `older_high` holds, per stream, the highest index of their entries.
    fn drops_entries_of(&self, older_high: &HashMap<StreamId, u64>) -> bool {
        self.tombstones.iter().any(|(stream, t)| match (older_high.get(stream), t) {
            (None, _) => false,
            (Some(_), Tombstone::Remove) => true,
            (Some(high), Tombstone::Truncate(index)) => high >= index,
        })
    }
}

/// The index of every stream and segment; behind `SharedLog::state`.
#[derive(Debug)]
struct State {
    streams: HashMap<StreamId, Stream>,
    /// By `seq`; the last one is the active segment, written to.
    segments: BTreeMap<u64, Segment>,
    /// The `seq` of the next segment created.
    next_seq: u64,
    /// The active segment was written since the last sync started.
    active_dirty: bool,
    /// A segment file was created or deleted since the last directory sync started.
    dir_dirty: bool,
    /// Everything before this position (segment, offset) is durable.
    durable: (u64, u64),
}

impl State {
    fn active_seq(&self) -> Option<u64> {
        self.segments.last_key_value().map(|(seq, _)| *seq)
    }

    /// The end of what was written: the position a sync starting now covers.
    fn written_end(&self) -> (u64, u64) {
        self.segments.last_key_value().map_or((0, 0), |(seq, s)| (*seq, s.len))
    }

    /// The segments that no stream needs any more, oldest first (see the module doc). One
    /// pass: time linear in the segments' streams and tombstones.
    fn unneeded_segments(&self) -> Vec<u64> {
        let active = self.active_seq();
        if !self.segments.iter().any(|(seq, seg)| seg.live == 0 && Some(*seq) != active) {
            return Vec::new();
        }
        // Per stream, the highest index of its entries in the kept segments seen so far.
        let mut kept_high: HashMap<StreamId, u64> = HashMap::new();
        let mut unneeded = Vec::new();
        for (seq, seg) in &self.segments {
            let needed = Some(*seq) == active || seg.live > 0 || seg.drops_entries_of(&kept_high);
            if needed {
                for (stream, &(_, high)) in &seg.entries {
                    let h = kept_high.entry(*stream).or_insert(high);
                    *h = (*h).max(high);
                }
            } else {
                unneeded.push(*seq);
            }
        }
        unneeded
    }
}

/// What [`SharedLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Live entries, of all streams.
    pub records: u64,
    /// Streams with live entries or a purge point.
    pub streams: usize,
    /// Segment files kept.
    pub segments: usize,
    /// Bytes of a torn tail cut from the newest segment.
    pub cut_bytes: u64,
}

/// Numbers for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLogStats {
    /// Segment files.
    pub segments: usize,
    /// Bytes in the segment files.
    pub bytes: u64,
    /// Streams with live entries or a purge point.
    pub streams: usize,
    /// Live entries, of all streams.
    pub records: u64,
    /// The stream whose oldest live entry is in the oldest segment, and that segment's `seq`
    /// (see [`SharedLog::oldest_pinning_stream`]).
    pub oldest_pinning: Option<(StreamId, u64)>,
}

/// A log of many streams in one directory. `Send + Sync`: shared by `Arc`, appends of
/// different streams, reads, syncs and purges may come from different threads at once.
#[derive(Debug)]
pub struct SharedLog {
    dir: PathBuf,
    /// A new segment is started once the active one holds this many bytes.
    segment_bytes_max: u64,
    /// The index. Held for appends (the `pwrite` included: one writer at a time keeps the
    /// file contiguous; and, once per segment, the `fsync` of the old segment and of the
    /// directory when a new one is started) and briefly for everything else; never during
    /// a sync or a read.
    state: Mutex<State>,
    /// Serialises syncs, so that a sync that finds nothing left to do returns only after
    /// the sync that took the work has finished; truncations and removals hold it too.
    sync_lock: Mutex<()>,
    /// Serialises segment deletion (whose order matters, see `collect_segments`).
    delete_lock: Mutex<()>,
    /// Set by the first failed write, sync or file operation, naming it (fail-stop).
    failed: crate::fail_stop::FailStop,
}

/// Adjacent records of one stream in one segment, read with one `pread`.
struct ReadRun {
    file: Arc<SegmentFile>,
    /// Where the first record starts.
    offset: u64,
    /// Bytes of all the records.
    bytes: u64,
    /// Bytes of each record.
    lens: Vec<u32>,
    /// Index of the first record.
    first: u64,
}

/// A record that failed verification during replay.
struct BadRecord {
    offset: u64,
    why: String,
}

/// The first record at byte offset `from` or later whose checksum is valid and whose kind
/// is known: its offset. Every byte offset is tried, so a record is found whatever the bad
/// bytes before it did to the lengths.
fn find_valid_record(bytes: &[u8], from: usize) -> Option<u64> {
    let last = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    (from..=last)
        .find(|&at| {
            let h = parse_header(&bytes[at..]);
            if Kind::from_u8(h.kind).is_none() || h.len > RECORD_BYTES_MAX {
                return false;
            }
            let start = at + RECORD_HEADER_BYTES;
            bytes.get(start..start + h.len).is_some_and(|payload| record_crc(h.kind, h.stream, h.index, payload) == h.crc)
        })
        .map(|at| at as u64)
}

/// A gap in a stream found during replay: an entry that does not follow the stream's last
/// live entry. An error, unless a later truncate record drops everything the gap concerns
/// (or a remove record drops the stream): the missing entries may be ones a truncation
/// dropped, whose segments were deleted since, while the truncate record was kept.
struct Gap {
    /// Where the first entry after the gap is, for the error.
    seq: u64,
    offset: u64,
    why: String,
    /// The lowest index the gap concerns: the one that was expected and the ones found
    /// instead. A truncation at or below it drops all of them.
    low: u64,
    /// The entries after the gap (`first` and on), held apart from the stream's live ones.
    first: u64,
    locs: VecDeque<Loc>,
}

/// Replay of the segments: the state being built and the streams' unexplained gaps.
struct Replay<'a> {
    purged: &'a BTreeMap<StreamId, u64>,
    state: State,
    gaps: HashMap<StreamId, Gap>,
    records_seen: u64,
}

impl Replay<'_> {
    /// Applies one valid record. While replaying, a stream that holds no live entry may
    /// continue anywhere (its purge point may be newer than its records); the end of the
    /// replay checks that a purged stream starts right after its purge point.
    fn apply(&mut self, seq: u64, offset: u64, h: &Header, path: &Path) {
        self.records_seen += 1;
        let purged = self.purged.get(&h.stream).copied();
        let state = &mut self.state;
        let segment = state.segments.get_mut(&seq).expect("replayed segment");
        let kind = Kind::from_u8(h.kind).expect("checked by the caller");
        match kind {
            Kind::Entry => {
                segment.note_entries(h.stream, h.index, h.index);
                if purged.is_some_and(|p| h.index <= p) {
                    return;
                }
                segment.live += 1;
                let loc = Loc { seq, offset: offset as u32, len: (RECORD_HEADER_BYTES + h.len) as u32 };
                if let Some(gap) = self.gaps.get_mut(&h.stream) {
                    if gap.locs.is_empty() || gap.first + gap.locs.len() as u64 != h.index {
                        // Another gap: start the run after it anew.
                        for dropped in gap.locs.drain(..) {
                            kill(&mut state.segments, dropped);
                        }
                        gap.low = gap.low.min(h.index);
                        gap.first = h.index;
                    }
                    gap.locs.push_back(loc);
                    return;
                }
                let stream = state.streams.entry(h.stream).or_insert_with(|| Stream::new(purged));
                match stream.last_index() {
                    Some(last) if h.index != last + 1 => {
                        let why = format!(
                            "{}: the record at offset {offset} is entry {} of stream {}, but the stream continues at {}",
                            path.display(),
                            h.index,
                            h.stream,
                            last + 1
                        );
                        let low = h.index.min(last + 1);
                        self.gaps.insert(h.stream, Gap { seq, offset, why, low, first: h.index, locs: VecDeque::from([loc]) });
                    }
                    _ => stream.push(h.index, loc),
                }
            }
            Kind::Truncate => {
                segment.tombstones.push((h.stream, Tombstone::Truncate(h.index)));
                if let Some(stream) = state.streams.get_mut(&h.stream) {
                    stream.truncate(h.index, &mut state.segments);
                }
                if let Some(gap) = self.gaps.get_mut(&h.stream) {
                    while !gap.locs.is_empty() && gap.first + gap.locs.len() as u64 > h.index {
                        kill(&mut state.segments, gap.locs.pop_back().expect("not empty"));
                    }
                    if h.index <= gap.low {
                        debug_assert!(gap.locs.is_empty());
                        self.gaps.remove(&h.stream);
                    }
                }
            }
            Kind::Remove => {
                segment.tombstones.push((h.stream, Tombstone::Remove));
                if let Some(stream) = state.streams.get_mut(&h.stream) {
                    stream.clear(&mut state.segments);
                }
                if let Some(gap) = self.gaps.remove(&h.stream) {
                    for dropped in gap.locs {
                        kill(&mut state.segments, dropped);
                    }
                }
            }
        }
    }

    /// The first error the replay leaves: an unexplained gap, or a purged stream whose
    /// first live entry is not right after its purge point.
    fn check_end(&self) -> Option<String> {
        if let Some(gap) = self.gaps.values().min_by_key(|g| (g.seq, g.offset)) {
            return Some(gap.why.clone());
        }
        let mut late: Vec<(Loc, StreamId, u64, u64)> = self
            .state
            .streams
            .iter()
            .filter_map(|(id, s)| {
                let (p, first) = (s.purged?, s.first_index()?);
                (first != p + 1).then(|| (s.locs[0], *id, first, p))
            })
            .collect();
        late.sort_by_key(|(loc, ..)| (loc.seq, loc.offset));
        late.first().map(|(loc, id, first, p)| {
            let path = &self.state.segments[&loc.seq].file.path;
            format!(
                "{}: the record at offset {} is entry {first} of stream {id}, the first one found above its purge point {p}: entries {}..{first} are missing",
                path.display(),
                loc.offset,
                p + 1
            )
        })
    }

    /// Reads one segment file, applies its valid records, and returns the first bad one.
    fn scan(&mut self, seq: u64, path: &Path) -> Result<Option<BadRecord>> {
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_at("open shared log segment", path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_at("read shared log segment", path))?;
        let name = path.display();
        if bytes.len() as u64 > SEGMENT_FILE_BYTES_MAX {
            return Err(corrupt(format!("{name}: {} bytes, more than a segment can hold ({SEGMENT_FILE_BYTES_MAX})", bytes.len())));
        }
        let file = Arc::new(SegmentFile { path: path.to_path_buf(), file });
        let mut seg = Segment { file, len: 0, live: 0, entries: HashMap::new(), tombstones: Vec::new() };
        if bytes.len() < LOG_MAGIC.len() || &bytes[..LOG_MAGIC.len()] != LOG_MAGIC {
            self.state.segments.insert(seq, seg);
            return Ok(Some(BadRecord { offset: 0, why: format!("{name}: no segment header at offset 0") }));
        }
        seg.len = LOG_MAGIC.len() as u64;
        self.state.segments.insert(seq, seg);
        let mut at = LOG_MAGIC.len();
        while at < bytes.len() {
            let rest = &bytes[at..];
            if rest.len() < RECORD_HEADER_BYTES {
                return Ok(Some(BadRecord { offset: at as u64, why: format!("{name}: torn record header at offset {at}") }));
            }
            let h = parse_header(rest);
            if h.len > RECORD_BYTES_MAX || rest.len() - RECORD_HEADER_BYTES < h.len {
                return Ok(Some(BadRecord { offset: at as u64, why: format!("{name}: torn record at offset {at} (length {})", h.len) }));
            }
            let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.len];
            if record_crc(h.kind, h.stream, h.index, payload) != h.crc {
                return Ok(Some(BadRecord { offset: at as u64, why: format!("{name}: checksum mismatch in the record at offset {at}") }));
            }
            if Kind::from_u8(h.kind).is_none() {
                // Its checksum is valid: written so, not torn.
                return Err(corrupt(format!("{name}: the record at offset {at} has unknown kind {}", h.kind)));
            }
            self.apply(seq, at as u64, &h, path);
            at += RECORD_HEADER_BYTES + h.len;
            self.state.segments.get_mut(&seq).expect("replayed segment").len = at as u64;
        }
        Ok(None)
    }
}

impl SharedLog {
    /// Opens (or creates) the log in `dir`, replaying every segment. `purged` holds each
    /// stream's purge point, as made durable by the caller: entries at or below it are
    /// ignored. A torn tail of the newest segment (nothing valid after it) is cut; any other
    /// bad record fails the open, naming the file and the offset. Segments no stream needs
    /// are deleted. What a killed process left in the page cache is made durable first.
    ///
    /// Panics if `segment_bytes_max` is 0 or above [`SEGMENT_BYTES_MAX_LIMIT`].
    pub fn open(dir: &Path, segment_bytes_max: u64, purged: &BTreeMap<StreamId, u64>) -> Result<(SharedLog, Recovered)> {
        assert!(
            (1..=SEGMENT_BYTES_MAX_LIMIT).contains(&segment_bytes_max),
            "segment_bytes_max {segment_bytes_max} is outside 1..={SEGMENT_BYTES_MAX_LIMIT}"
        );
        std::fs::create_dir_all(dir).map_err(io_at("create shared log directory", dir))?;
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_at("list shared log directory", dir))? {
            let e = e.map_err(io_at("list shared log directory", dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".log") else { continue };
            let seq: u64 = stem.parse().map_err(|_| corrupt(format!("{}: not a shared log segment name", e.path().display())))?;
            names.push((seq, e.path()));
        }
        names.sort();
        let next_seq = names.last().map_or(1, |(seq, _)| seq + 1);
        let state =
            State { streams: HashMap::new(), segments: BTreeMap::new(), next_seq, active_dirty: false, dir_dirty: false, durable: (0, 0) };
        let mut replay = Replay { purged, state, gaps: HashMap::new(), records_seen: 0 };
        let mut cut_bytes = 0;
        let count = names.len();
        for (i, (seq, path)) in names.iter().enumerate() {
            let newest = i + 1 == count;
            let Some(BadRecord { offset, why }) = replay.scan(*seq, path)? else { continue };
            if !newest {
                return Err(corrupt(format!("{why}; only the newest segment may end with a torn record")));
            }
            let bytes = std::fs::read(path).map_err(io_at("read shared log segment", path))?;
            if let Some(valid) = find_valid_record(&bytes, offset as usize + 1) {
                // Records after the bad one were written, maybe synced and acknowledged:
                // cutting here would drop them.
                return Err(corrupt(format!("{why}; a valid record follows at offset {valid}, so the log is corrupt, not torn")));
            }
            tracing::warn!(segment = %path.display(), %why, offset, "cutting the torn tail of the shared log");
            cut_bytes = bytes.len() as u64 - offset;
            let seg = replay.state.segments.get(seq).expect("scanned segment");
            if offset == 0 {
                // Its header never reached the disk: it holds nothing.
                replay.state.segments.remove(seq);
                std::fs::remove_file(path).map_err(io_at("remove empty shared log segment", path))?;
                continue;
            }
            seg.file.file.set_len(offset).map_err(io_at("cut torn shared log tail", path))?;
            seg.file.file.sync_all().map_err(io_at("sync shared log segment", path))?;
        }
        if let Some(why) = replay.check_end() {
            return Err(corrupt(why));
        }
        let mut state = replay.state;
        state.streams.retain(|_, s| !s.is_forgotten());
        for (&id, &p) in purged {
            state.streams.entry(id).or_insert_with(|| Stream::new(Some(p)));
        }
        // What a killed process left in the page cache reads back as valid: make it durable
        // before anything counts on it.
        if let Some((_, s)) = state.segments.last_key_value() {
            s.file.file.sync_data().map_err(io_at("sync shared log segment", &s.file.path))?;
        }
        sync_dir(dir)?;
        state.durable = state.written_end();
        let log = SharedLog {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            state: Mutex::new(state),
            sync_lock: Mutex::new(()),
            delete_lock: Mutex::new(()),
            failed: crate::fail_stop::FailStop::default(),
        };
        log.collect_segments()?;
        let stats = log.stats();
        tracing::debug!(dir = %dir.display(), records_seen = replay.records_seen, ?stats, "opened the shared log");
        Ok((log, Recovered { records: stats.records, streams: stats.streams, segments: stats.segments, cut_bytes }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation leaves `State` consistent before it can fail or panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_guard(&self) -> MutexGuard<'_, ()> {
        self.sync_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The failure that stopped the log, if a write, sync or file operation failed.
    pub fn failure(&self) -> Option<&str> {
        self.failed.failure()
    }

    /// Refuses any change or sync once the log has failed.
    fn check_not_failed(&self) -> Result<()> {
        self.failed.check()
    }

    /// Stops the log for good after `e` and returns `e` (see [`crate::fail_stop`]).
    fn fail_stop(&self, e: Error) -> Error {
        self.failed.stop(&self.dir, e)
    }

    /// The first index `stream` holds, if any.
    pub fn first_index(&self, stream: StreamId) -> Option<u64> {
        self.state().streams.get(&stream).and_then(Stream::first_index)
    }

    /// The last index `stream` holds, if any.
    pub fn last_index(&self, stream: StreamId) -> Option<u64> {
        self.state().streams.get(&stream).and_then(Stream::last_index)
    }

    /// The index the next entry of `stream` must have: after its last entry, or else after
    /// its purge point; `None` if it holds nothing and was never purged (it starts anywhere).
    pub fn next_index(&self, stream: StreamId) -> Option<u64> {
        self.state().streams.get(&stream).and_then(Stream::next_index)
    }

    /// The purge point of `stream`, if it has one.
    pub fn purged_index(&self, stream: StreamId) -> Option<u64> {
        self.state().streams.get(&stream).and_then(|s| s.purged)
    }

    /// The streams with live entries or a purge point, in order.
    pub fn streams(&self) -> Vec<StreamId> {
        let mut ids: Vec<StreamId> = self.state().streams.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Segment files in the directory.
    pub fn segment_count(&self) -> usize {
        self.state().segments.len()
    }

    /// Bytes in the segment files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.state().segments.values().map(|s| s.len).sum()
    }

    /// The stream that keeps the oldest deletable segment alive: the one whose oldest live
    /// entry is in the oldest segment (the lowest stream id among several), and that
    /// segment's `seq`. `None` if only the active segment holds live entries. Purging that
    /// stream (after a snapshot) lets the segment go.
    pub fn oldest_pinning_stream(&self) -> Option<(StreamId, u64)> {
        Self::oldest_pinning(&self.state())
    }

    fn oldest_pinning(state: &State) -> Option<(StreamId, u64)> {
        let active = state.active_seq()?;
        state
            .streams
            .iter()
            .filter_map(|(id, s)| s.locs.front().map(|loc| (loc.seq, *id)))
            .filter(|(seq, _)| *seq < active)
            .min()
            .map(|(seq, id)| (id, seq))
    }

    /// Numbers for operators, from one look at the index.
    pub fn stats(&self) -> SharedLogStats {
        let state = self.state();
        SharedLogStats {
            segments: state.segments.len(),
            bytes: state.segments.values().map(|s| s.len).sum(),
            streams: state.streams.len(),
            records: state.streams.values().map(|s| s.locs.len() as u64).sum(),
            oldest_pinning: Self::oldest_pinning(&state),
        }
    }

    /// Starts a new segment. The old one and the directory are synced first, so that
    /// only the newest segment can ever hold a torn record and no older one can be missing
    /// after a crash. The old one is synced even when `active_dirty` is clear: a sync in
    /// flight clears it before its `fsync` has finished.
    fn start_segment(&self, state: &mut State) -> Result<()> {
        if let Some((_, active)) = state.segments.last_key_value() {
            active.file.file.sync_data().map_err(io_at("sync shared log segment", &active.file.path))?;
            state.active_dirty = false;
        }
        if state.dir_dirty {
            state.dir_dirty = false;
            sync_dir(&self.dir)?;
        }
        let seq = state.next_seq;
        let path = self.dir.join(segment_name(seq));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io_at("create shared log segment", &path))?;
        state.next_seq += 1;
        state.dir_dirty = true;
        file.write_all_at(LOG_MAGIC, 0).map_err(io_at("write shared log segment", &path))?;
        let file = Arc::new(SegmentFile { path, file });
        state.segments.insert(seq, Segment { file, len: LOG_MAGIC.len() as u64, live: 0, entries: HashMap::new(), tombstones: Vec::new() });
        state.active_dirty = true;
        Ok(())
    }

    /// Writes `buf` (whole records) at the end of the active segment, starting a new one
    /// first if needed, and returns the segment and the offset written at. Any failure stops
    /// the log.
    fn write_locked(&self, state: &mut State, buf: &[u8]) -> Result<(u64, u64)> {
        debug_assert!(buf.len() <= APPEND_BYTES_MAX);
        let full = state.segments.last_key_value().is_none_or(|(_, s)| s.len >= self.segment_bytes_max);
        if full {
            self.start_segment(state).map_err(|e| self.fail_stop(e))?;
        }
        let (&seq, active) = state.segments.last_key_value().expect("a segment is active");
        let start = active.len;
        debug_assert!(start + buf.len() as u64 <= SEGMENT_FILE_BYTES_MAX, "offsets fit a u32");
        active
            .file
            .file
            .write_all_at(buf, start)
            .map_err(io_at("write shared log segment", &active.file.path))
            .map_err(|e| self.fail_stop(e))?;
        let active = state.segments.get_mut(&seq).expect("active");
        active.len += buf.len() as u64;
        state.active_dirty = true;
        Ok((seq, start))
    }

    /// Appends entries of `stream` with consecutive indexes, continuing the stream (see
    /// [`SharedLog::next_index`]; a stream that holds nothing and was never purged starts at
    /// the first one), with one write. Readable at once; durable after the next
    /// [`SharedLog::sync`]. Anything else is refused and writes nothing.
    pub fn append(&self, stream: StreamId, records: &[(u64, &[u8])]) -> Result<()> {
        self.check_not_failed()?;
        let Some(&(first, _)) = records.first() else { return Ok(()) };
        // Encoded before taking the lock: other streams append meanwhile.
        let bytes: usize = records.iter().map(|(_, p)| RECORD_HEADER_BYTES + p.len()).sum();
        if bytes > APPEND_BYTES_MAX {
            return Err(corrupt(format!("append of {bytes} bytes to stream {stream}, more than APPEND_BYTES_MAX ({APPEND_BYTES_MAX})")));
        }
        let mut buf = Vec::with_capacity(bytes);
        for (i, (index, payload)) in records.iter().enumerate() {
            if Some(*index) != first.checked_add(i as u64) {
                return Err(corrupt(format!("append batch of stream {stream} is not contiguous at index {index}")));
            }
            if payload.len() > RECORD_BYTES_MAX {
                return Err(corrupt(format!(
                    "entry {index} of stream {stream} has {} bytes, more than RECORD_BYTES_MAX ({RECORD_BYTES_MAX})",
                    payload.len()
                )));
            }
            encode_record(&mut buf, Kind::Entry, stream, *index, payload);
        }
        let last = first + records.len() as u64 - 1;
        if last == u64::MAX {
            return Err(corrupt(format!("append of entry {last} to stream {stream}: indexes stop below u64::MAX")));
        }
        let mut guard = self.state();
        let state = &mut *guard;
        // A failure may have stopped the log while this call waited for the lock.
        self.check_not_failed()?;
        if let Some(next) = state.streams.get(&stream).and_then(Stream::next_index).filter(|n| *n != first) {
            return Err(corrupt(format!("append at index {first} of stream {stream}, but it continues at {next}")));
        }
        let (seq, start) = self.write_locked(state, &buf)?;
        let seg = state.segments.get_mut(&seq).expect("written segment");
        seg.live += records.len() as u64;
        seg.note_entries(stream, first, last);
        let s = state.streams.entry(stream).or_insert_with(|| Stream::new(None));
        let mut at = start;
        for (index, payload) in records {
            let len = (RECORD_HEADER_BYTES + payload.len()) as u32;
            s.push(*index, Loc { seq, offset: at as u32, len });
            at += len as u64;
        }
        debug_assert_eq!(at, start + buf.len() as u64);
        debug_assert_eq!(s.last_index(), Some(last));
        Ok(())
    }

    /// Makes every record appended (by any stream) before this call durable: one
    /// `fdatasync` of the active segment, and of the directory if a segment was created.
    pub fn sync(&self) -> Result<()> {
        self.check_not_failed()?;
        let one_at_a_time = self.sync_guard();
        self.sync_locked(&one_at_a_time)
    }

    /// Whether entry `index` of `stream` is durable: synced since it was written, or at or
    /// below the stream's purge point. Never changes from `false` once the log has failed.
    pub fn is_durable(&self, stream: StreamId, index: u64) -> bool {
        let state = self.state();
        let Some(s) = state.streams.get(&stream) else { return false };
        if s.purged.is_some_and(|p| index <= p) {
            return true;
        }
        s.loc(index).is_some_and(|loc| loc.end() <= state.durable)
    }

    /// Makes sure entry `index` of `stream` (and everything written before it) is durable,
    /// syncing only if no sync (this caller's or another's) has covered it yet.
    pub fn sync_upto(&self, stream: StreamId, index: u64) -> Result<()> {
        self.check_not_failed()?;
        if self.is_durable(stream, index) {
            return Ok(());
        }
        let one_at_a_time = self.sync_guard();
        // The sync that held the lock may have covered it.
        if self.is_durable(stream, index) {
            return self.check_not_failed();
        }
        self.sync_locked(&one_at_a_time)
    }

    /// The sync itself; the caller holds `sync_lock`. It covers what was written when it
    /// starts (records written meanwhile wait for the next one). A failure stops the log:
    /// the sync is never retried (see [`Error::LogFailed`]).
    fn sync_locked(&self, _one_at_a_time: &MutexGuard<'_, ()>) -> Result<()> {
        self.check_not_failed()?;
        let (file, dir_dirty, end) = {
            let mut state = self.state();
            let file = if state.active_dirty { state.segments.last_key_value().map(|(_, s)| s.file.clone()) } else { None };
            state.active_dirty = false;
            let dir_dirty = std::mem::take(&mut state.dir_dirty);
            (file, dir_dirty, state.written_end())
        };
        let res = (|| {
            if let Some(f) = &file {
                #[cfg(feature = "failpoints")]
                fail::fail_point!("shared-log-sync", |_| Err(Error::Io {
                    op: "sync shared log segment",
                    source: std::io::Error::other(format!("{}: injected by the fail point shared-log-sync", f.path.display())),
                }));
                f.file.sync_data().map_err(io_at("sync shared log segment", &f.path))?;
            }
            if dir_dirty {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        res.map_err(|e| self.fail_stop(e))?;
        let mut state = self.state();
        // A write that failed meanwhile stopped the log: nothing counts as durable any more.
        self.check_not_failed()?;
        debug_assert!(end <= state.written_end());
        state.durable = state.durable.max(end);
        Ok(())
    }

    /// Reads the payloads of entries `[start, end)` of `stream`, which must be held.
    /// Every record's checksum, kind, stream and index are verified. The files are read
    /// without holding the index: records are never overwritten, and a segment deleted
    /// meanwhile stays readable through its open handle.
    pub fn read(&self, stream: StreamId, start: u64, end: u64) -> Result<Vec<Vec<u8>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Runs of adjacent records, each read with one `pread`.
        let mut runs: Vec<ReadRun> = Vec::new();
        {
            let state = self.state();
            let s = state.streams.get(&stream);
            let held = s.and_then(|s| Some((s.first_index()?, s.last_index()? + 1)));
            let Some(s) = s.filter(|_| held.is_some_and(|(first, next)| first <= start && end <= next)) else {
                let held = held.map_or("nothing".to_owned(), |(first, next)| format!("{first}..{next}"));
                return Err(corrupt(format!("read of entries {start}..{end} of stream {stream}, but it holds {held}")));
            };
            for index in start..end {
                let loc = s.loc(index).expect("held");
                let file = &state.segments[&loc.seq].file;
                match runs.last_mut() {
                    Some(run) if Arc::ptr_eq(&run.file, file) && run.offset + run.bytes == loc.offset as u64 => {
                        run.bytes += loc.len as u64;
                        run.lens.push(loc.len);
                    }
                    _ => runs.push(ReadRun {
                        file: file.clone(),
                        offset: loc.offset as u64,
                        bytes: loc.len as u64,
                        lens: vec![loc.len],
                        first: index,
                    }),
                }
            }
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for run in runs {
            let mut buf = vec![0u8; run.bytes as usize];
            run.file.file.read_exact_at(&mut buf, run.offset).map_err(io_at("read shared log segment", &run.file.path))?;
            let mut at = 0usize;
            for (i, len) in run.lens.iter().enumerate() {
                let record = &buf[at..at + *len as usize];
                let payload = check_entry(record, stream, run.first + i as u64).map_err(|why| {
                    corrupt(format!("{}: the record at offset {}: {why}", run.file.path.display(), run.offset + at as u64))
                })?;
                out.push(payload);
                at += *len as usize;
            }
        }
        Ok(out)
    }

    /// Writes one truncate or remove record; the caller holds `sync_lock` and syncs next.
    fn write_tombstone(&self, state: &mut State, stream: StreamId, t: Tombstone) -> Result<()> {
        let (kind, index) = match t {
            Tombstone::Truncate(index) => (Kind::Truncate, index),
            Tombstone::Remove => (Kind::Remove, 0),
        };
        let mut buf = Vec::with_capacity(RECORD_HEADER_BYTES);
        encode_record(&mut buf, kind, stream, index, &[]);
        let (seq, _) = self.write_locked(state, &buf)?;
        state.segments.get_mut(&seq).expect("written segment").tombstones.push((stream, t));
        Ok(())
    }

    /// Removes the entries of `stream` at or after `index`, durably (a truncate record,
    /// synced before this returns). Below the purge point it removes everything held, and
    /// the stream continues after the purge point.
    pub fn truncate_from(&self, stream: StreamId, index: u64) -> Result<()> {
        self.check_not_failed()?;
        // No sync may be in flight while the truncation is written, and the entries
        // written again at the truncated indexes wait for a sync after it; a sync covers
        // only what was written when it started, so it cannot count them.
        let one_at_a_time = self.sync_guard();
        {
            let mut guard = self.state();
            let state = &mut *guard;
            self.check_not_failed()?;
            let Some(s) = state.streams.get(&stream) else { return Ok(()) };
            // Purged entries are gone already; the stream continues after the purge point.
            let index = index.max(s.purged.map_or(0, |p| p + 1));
            if s.last_index().is_none_or(|last| last < index) {
                return Ok(());
            }
            self.write_tombstone(state, stream, Tombstone::Truncate(index))?;
            let s = state.streams.get_mut(&stream).expect("checked");
            s.truncate(index, &mut state.segments);
            if s.is_forgotten() {
                state.streams.remove(&stream);
            }
        }
        self.sync_locked(&one_at_a_time)
    }

    /// Forgets the entries of `stream` up to `index` (inclusive) and deletes the segments no
    /// stream needs any more. Nothing is written: the caller made `index` durable as the
    /// stream's purge point first, and passes it to [`SharedLog::open`] after a restart. A
    /// purge point beyond the stream's last entry makes it continue at `index + 1`; one
    /// below the stream's first entry minus one is refused (replay takes a purged stream
    /// to continue right after its purge point); one at or below the current one does
    /// nothing.
    pub fn purge_upto(&self, stream: StreamId, index: u64) -> Result<()> {
        self.check_not_failed()?;
        if index == u64::MAX {
            return Err(corrupt(format!("purge of stream {stream} up to u64::MAX: indexes stop below it")));
        }
        {
            let mut guard = self.state();
            let state = &mut *guard;
            let current = state.streams.get(&stream);
            if current.and_then(|s| s.purged).is_some_and(|p| p >= index) {
                return Ok(());
            }
            // Replay takes a stream's live entries to start right after its purge point.
            if let Some(first) = current.and_then(Stream::first_index).filter(|first| index.saturating_add(1) < *first) {
                return Err(corrupt(format!(
                    "purge of stream {stream} up to {index}, below its first entry {first}: the purge point must be at least {}",
                    first - 1
                )));
            }
            let s = state.streams.entry(stream).or_insert_with(|| Stream::new(None));
            s.purge(index, &mut state.segments);
        }
        self.collect_segments()
    }

    /// Drops every entry of `stream`, durably (a remove record, synced before this
    /// returns), forgets its purge point, and deletes the segments no stream needs any
    /// more. The caller forgets the purge point too: passed to `open` again, it would bring
    /// the stream back (empty, continuing after it).
    pub fn remove_stream(&self, stream: StreamId) -> Result<()> {
        self.check_not_failed()?;
        let one_at_a_time = self.sync_guard();
        {
            let mut guard = self.state();
            let state = &mut *guard;
            self.check_not_failed()?;
            let Some(mut s) = state.streams.remove(&stream) else { return Ok(()) };
            let written = self.write_tombstone(state, stream, Tombstone::Remove);
            s.clear(&mut state.segments);
            written?;
        }
        self.sync_locked(&one_at_a_time)?;
        drop(one_at_a_time);
        self.collect_segments()
    }

    /// Deletes the segments no stream needs any more (see the module doc), oldest first.
    /// A segment with truncate or remove records is deleted only after a directory sync
    /// has made the deletion of the older segments whose entries they drop durable: a
    /// crash must never bring those entries back without the records that drop them.
    fn collect_segments(&self) -> Result<()> {
        let _one_at_a_time = self.delete_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_not_failed()?;
        let doomed: Vec<(Arc<SegmentFile>, bool)> = {
            let mut state = self.state();
            let unneeded = state.unneeded_segments();
            unneeded
                .into_iter()
                .map(|seq| {
                    let seg = state.segments.remove(&seq).expect("listed");
                    debug_assert_eq!(seg.live, 0);
                    (seg.file, !seg.tombstones.is_empty())
                })
                .collect()
        };
        for (file, has_tombstones) in doomed {
            let res = (|| {
                if has_tombstones {
                    self.state().dir_dirty = false;
                    sync_dir(&self.dir)?;
                }
                std::fs::remove_file(&file.path).map_err(io_at("remove shared log segment", &file.path))
            })();
            res.map_err(|e| self.fail_stop(e))?;
            self.state().dir_dirty = true;
            tracing::debug!(segment = %file.path.display(), "deleted a shared log segment no stream needs");
        }
        Ok(())
    }

    /// Checks the index against itself (live counts, log order, positions); panics on a
    /// broken invariant. For tests: it walks every entry.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let state = self.state();
        let mut live: HashMap<u64, u64> = HashMap::new();
        for (id, s) in &state.streams {
            assert!(!s.is_forgotten(), "stream {id} holds nothing and is kept");
            if let (Some(p), Some(first)) = (s.purged, s.first_index()) {
                assert!(first > p, "stream {id}: entry {first} at or below its purge point {p}");
            }
            let mut prev: Option<Loc> = None;
            for loc in &s.locs {
                let seg = state.segments.get(&loc.seq).unwrap_or_else(|| panic!("stream {id}: an entry in missing segment {}", loc.seq));
                assert!(loc.offset as u64 >= LOG_MAGIC.len() as u64 && loc.end().1 <= seg.len, "stream {id}: {loc:?} outside its segment");
                assert!(prev.is_none_or(|p| p.end() <= (loc.seq, loc.offset as u64)), "stream {id}: entries out of log order");
                *live.entry(loc.seq).or_default() += 1;
                prev = Some(*loc);
            }
        }
        for (seq, seg) in &state.segments {
            assert_eq!(seg.live, live.get(seq).copied().unwrap_or(0), "live entries of segment {seq}");
        }
        assert!(state.durable <= state.written_end() || state.segments.is_empty(), "durable beyond what was written");
    }
}

/// Verifies an entry read back (header and checksum) and returns its payload; the error
/// says what is wrong.
fn check_entry(record: &[u8], stream: StreamId, index: u64) -> std::result::Result<Vec<u8>, String> {
    if record.len() < RECORD_HEADER_BYTES {
        return Err(format!("short read of entry {index} of stream {stream}"));
    }
    let h = parse_header(record);
    let payload = &record[RECORD_HEADER_BYTES..];
    if h.len != payload.len() || record_crc(h.kind, h.stream, h.index, payload) != h.crc {
        return Err(format!("checksum or length mismatch in entry {index} of stream {stream}"));
    }
    if h.kind != Kind::Entry as u8 || h.stream != stream || h.index != index {
        return Err(format!("expected entry {index} of stream {stream}, found kind {} of stream {} index {}", h.kind, h.stream, h.index));
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The worked example of the module doc and docs/FORMATS.md, byte for byte.
    #[test]
    fn worked_example_encodes_byte_for_byte() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Kind::Entry, 7, 5, b"hi");
        assert_eq!(hex(&buf), "02000000".to_owned() + "44b0a793" + "01" + "0700000000000000" + "0500000000000000" + "6869");
        assert_eq!(buf.len(), 27);
        assert_eq!(record_crc(1, 7, 5, b"hi"), 0x93a7_b044);
        let mut buf = Vec::new();
        encode_record(&mut buf, Kind::Truncate, 7, 3, &[]);
        assert_eq!(hex(&buf), "00000000ec9ea56e0207000000000000000300000000000000");
        let h = parse_header(&buf);
        assert_eq!((h.len, h.crc, h.kind, h.stream, h.index), (0, 0x6ea5_9eec, 2, 7, 3));
        assert_eq!(check_entry(&buf, 7, 3), Err("expected entry 3 of stream 7, found kind 2 of stream 7 index 3".into()));
    }

    #[test]
    fn a_valid_record_is_found_at_any_offset() {
        let mut buf = vec![0u8; 13];
        encode_record(&mut buf, Kind::Entry, 1, 2, b"abc");
        assert_eq!(find_valid_record(&buf, 0), Some(13));
        assert_eq!(find_valid_record(&buf, 14), None);
        buf[13 + RECORD_HEADER_BYTES] ^= 1;
        assert_eq!(find_valid_record(&buf, 0), None, "zeros and a bad checksum are not valid");
    }

    #[test]
    fn a_shared_log_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SharedLog>();
    }
}
