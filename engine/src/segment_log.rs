//! An append-only log of numbered records in segment files (the Raft log of a group).
//!
//! Each record is written once, appended to a file, and removed by deleting whole files:
//! no memtable, no SST, no compaction (docs/FORMATS.md, "Raft log segments").
//!
//! Layout: a directory of segment files named `<first index, 20 digits>.seg`. A segment
//! starts with the 8-byte magic [`SEGMENT_MAGIC`], then holds records of consecutive
//! indexes, each:
//!
//! ```text
//! len u32 LE | crc32 u32 LE (IEEE, over index ++ payload) | index u64 LE | payload (len bytes)
//! ```
//!
//! Durability: [`SegmentLog::append`] writes a batch with one `write` call (into the page
//! cache); [`SegmentLog::sync`] makes every record written before it started durable
//! (`fdatasync` of the segment in use, and of the directory when a segment was created). A
//! new segment is only started after the previous one is synced, so after a crash only the
//! newest segment can end with a torn record, and [`SegmentLog::open`] cuts it there, but
//! only if no valid record follows the bad one anywhere in the file: a bad record with
//! valid ones after it is a flipped byte in records that were synced and acknowledged, not
//! a torn write. That, and a bad record in any older segment, is corruption: `open` fails,
//! naming the file and the offset, rather than drop records.
//!
//! Fail-stop: after a failed write, `fsync` or file operation the log refuses every change
//! and sync ([`Error::LogFailed`]) and [`SegmentLog::durable_end`] never advances again.
//! After a failed `fsync` the kernel may have dropped the dirty pages and marked them clean,
//! so retrying it could report records durable that are not; reopening rereads the files.
//!
//! Truncation ([`SegmentLog::truncate_from`]) is synced before it returns; purging
//! ([`SegmentLog::purge_upto`]) deletes only whole segments, and the caller must have made
//! the purge point durable first (records at or below it are ignored when reopening).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"KHOSEG01";
/// A new segment is started once the one in use holds this many bytes.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Largest payload of one record, bytes. Longer lengths read back are corruption.
pub const RECORD_BYTES_MAX: usize = 1 << 30;
/// Length of a record header: len u32 ++ crc32 u32 ++ index u64.
pub const RECORD_HEADER_BYTES: usize = 16;

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

fn corrupt(what: String) -> Error {
    Error::Corruption { what }
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// One segment file and where each of its records starts.
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of the record with index `first + i`.
    offsets: Vec<u64>,
    /// Bytes in the file (end of the last record).
    len: u64,
}

impl Segment {
    /// One past the last index it holds.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

struct Inner {
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    /// The index the next appended record must have.
    next: u64,
    /// The lowest index held; equal to `next` when the log holds nothing.
    first: u64,
    /// Records at or below this index were purged: never returned, not needed.
    purged: Option<u64>,
    /// The segment in use was written since the last sync.
    active_dirty: bool,
    /// A segment file was created or removed since the last directory sync.
    dir_dirty: bool,
}

/// An append-only, indexed record log in one directory. Shared by reference: appends,
/// reads and syncs may come from different threads.
pub struct SegmentLog {
    dir: PathBuf,
    /// A new segment is started once the one in use holds this many bytes.
    segment_bytes_max: u64,
    inner: Mutex<Inner>,
    /// Serializes syncs, so that a sync that finds nothing left to do returns only after
    /// the sync that took the work has finished.
    sync_lock: Mutex<()>,
    /// Every record below this index is durable.
    durable_end: AtomicU64,
    /// Set by the first failed write, sync or file operation, naming it: from then on the
    /// log refuses every change and sync (fail-stop). After a failed `fsync` the kernel may
    /// have dropped the dirty pages and marked them clean, so a later `fsync` that succeeds
    /// would not mean they are on disk; only reopening (which rereads the files) is safe.
    failed: crate::fail_stop::FailStop,
}

/// What [`SegmentLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Records kept, above the purge point.
    pub records: u64,
    /// Bytes of a torn tail cut from the newest segment.
    pub cut_bytes: u64,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync log directory"))
}

/// A record of a segment that failed verification.
struct BadRecord {
    /// Byte offset of the bad record in its segment file.
    offset: u64,
    /// What is wrong with it, naming the file and the offset.
    why: String,
    /// A record with a valid checksum at or after `offset` (its offset and index), if any:
    /// then the bad bytes are not a torn tail but corruption in the middle of the log.
    valid_at: Option<(u64, u64)>,
}

/// Reads the records of one segment file. Returns the segment and, if the file holds a
/// record that fails verification, the first one.
fn scan_segment(path: &Path, first: u64) -> Result<(Segment, Option<BadRecord>)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io("open log segment"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io("read log segment"))?;
    let name = path.display();
    if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        // A segment whose magic never reached the disk holds nothing, unless records follow.
        let valid_at = find_valid_record(&bytes, 1, first, SEGMENT_MAGIC.len(), first);
        let bad = Some(BadRecord { offset: 0, why: format!("{name}: no segment header at offset 0"), valid_at });
        let seg = Segment { first, path: path.to_path_buf(), file: Arc::new(file), offsets: Vec::new(), len: 0 };
        return Ok((seg, bad));
    }
    let mut offsets = Vec::new();
    let mut at = SEGMENT_MAGIC.len();
    let mut bad = None;
    while at < bytes.len() {
        let index = first + offsets.len() as u64;
        let rest = &bytes[at..];
        let mut fail = |why: String, valid_at: Option<(u64, u64)>| {
            let valid_at = valid_at.or_else(|| find_valid_record(&bytes, at + 1, index + 1, at, index));
            bad = Some(BadRecord { offset: at as u64, why, valid_at });
        };
        if rest.len() < RECORD_HEADER_BYTES {
            fail(format!("{name}: torn record header at offset {at}"), None);
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let stored_index = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
        if len > RECORD_BYTES_MAX || rest.len() - RECORD_HEADER_BYTES < len {
            fail(format!("{name}: torn record at offset {at} (length {len})"), None);
            break;
        }
        let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
        if record_crc(stored_index, payload) != crc {
            fail(format!("{name}: checksum mismatch in the record at offset {at}"), None);
            break;
        }
        if stored_index != index {
            // A torn write cannot leave a record with a valid checksum: this one is valid
            // itself, in the wrong place.
            fail(format!("{name}: record at offset {at} has index {stored_index}, expected {index}"), Some((at as u64, stored_index)));
            break;
        }
        offsets.push(at as u64);
        at += RECORD_HEADER_BYTES + len;
    }
    let len = bad.as_ref().map_or(at as u64, |b| b.offset);
    let seg = Segment { first, path: path.to_path_buf(), file: Arc::new(file), offsets, len };
    Ok((seg, bad))
}

/// The first record with a valid checksum that starts at a byte offset `from` or later:
/// its offset and index. Only indexes a record of this segment could have there count:
/// at least `min_index`, and at most `base_index` plus one per 16 bytes (the smallest
/// record) after `base`, where the record of index `base_index` belongs. Checked at every
/// byte offset, so that a record is found whatever the bad bytes before it did to the
/// lengths; the index window keeps the checksums computed rare.
fn find_valid_record(bytes: &[u8], from: usize, min_index: u64, base: usize, base_index: u64) -> Option<(u64, u64)> {
    let last = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    (from..=last).find_map(|at| {
        let head = &bytes[at..at + RECORD_HEADER_BYTES];
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let index_max = base_index.saturating_add((at.saturating_sub(base) / RECORD_HEADER_BYTES) as u64);
        if index < min_index || index > index_max {
            return None;
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let payload = bytes.get(at + RECORD_HEADER_BYTES..)?.get(..len)?;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        (len <= RECORD_BYTES_MAX && record_crc(index, payload) == crc).then_some((at as u64, index))
    })
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`. Records at or below `purged` are dropped; whole
    /// segments of them are deleted. A torn tail of the newest segment (a bad record with
    /// no valid one after it) is cut; any other bad record fails the open.
    pub fn open(dir: &Path, purged: Option<u64>) -> Result<(SegmentLog, Recovered)> {
        Self::open_with_segment_bytes(dir, purged, SEGMENT_BYTES_MAX)
    }

    /// [`SegmentLog::open`] with segments of `segment_bytes_max` bytes (tests use small ones).
    pub fn open_with_segment_bytes(dir: &Path, purged: Option<u64>, segment_bytes_max: u64) -> Result<(SegmentLog, Recovered)> {
        std::fs::create_dir_all(dir).map_err(io("create log directory"))?;
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io("list log directory"))? {
            let e = e.map_err(io("list log directory"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".seg") else { continue };
            let first: u64 = stem.parse().map_err(|_| corrupt(format!("{}: not a log segment name", e.path().display())))?;
            names.push((first, e.path()));
        }
        names.sort();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut cut_bytes = 0;
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let newest = i + 1 == count;
            let (seg, bad) = scan_segment(&path, first)?;
            if let Some(BadRecord { offset, why, valid_at }) = bad {
                if !newest {
                    return Err(corrupt(format!("{why}; only the newest segment may end with a torn record")));
                }
                if let Some((valid, index)) = valid_at {
                    // Records after the bad one were written, maybe synced and acknowledged:
                    // cutting here would drop them.
                    return Err(corrupt(format!(
                        "{why}; a valid record (index {index}) follows at offset {valid}, so the log is corrupt, not torn"
                    )));
                }
                tracing::warn!(segment = %path.display(), %why, offset, "cutting the torn tail of the Raft log");
                cut_bytes = seg.file.metadata().map_err(io("stat log segment"))?.len() - offset;
                if offset == 0 {
                    drop(seg);
                    std::fs::remove_file(&path).map_err(io("remove empty log segment"))?;
                    continue;
                }
                seg.file.set_len(offset).map_err(io("cut torn log tail"))?;
                seg.file.sync_all().map_err(io("sync log segment"))?;
            }
            if let Some(prev) = segments.back() {
                if prev.end() != seg.first {
                    return Err(corrupt(format!(
                        "{}: starts at index {}, but the segment before it ends at {}",
                        path.display(),
                        seg.first,
                        prev.end()
                    )));
                }
            }
            segments.push_back(seg);
        }
        // Drop segments that hold only purged records (or none).
        if let Some(p) = purged {
            while segments.front().is_some_and(|s| s.end() <= p + 1) {
                let s = segments.pop_front().expect("checked");
                std::fs::remove_file(&s.path).map_err(io("remove purged log segment"))?;
            }
        }
        let low = purged.map_or(0, |p| p + 1);
        if let (Some(front), Some(_)) = (segments.front(), purged) {
            if front.first > low {
                return Err(corrupt(format!(
                    "{}: the log starts at index {}, but only indexes below {low} were purged",
                    front.path.display(),
                    front.first
                )));
            }
        }
        let next = segments.back().map_or(low, |s| s.end().max(low));
        let first = segments.front().map_or(next, |s| s.first.max(low).min(next));
        let records = next - first;
        // What a killed process left in the page cache reads back as valid: make it durable
        // before anything counts on it.
        if let Some(s) = segments.back() {
            s.file.sync_data().map_err(io("sync log segment"))?;
        }
        sync_dir(dir)?;
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            inner: Mutex::new(Inner { segments, next, first, purged, active_dirty: false, dir_dirty: false }),
            sync_lock: Mutex::new(()),
            durable_end: AtomicU64::new(next),
            failed: crate::fail_stop::FailStop::default(),
        };
        Ok((log, Recovered { records, cut_bytes }))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every mutation leaves `Inner` consistent before it can fail or panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The index the next appended record must have.
    pub fn next_index(&self) -> u64 {
        self.inner().next
    }

    /// The first index held (above the purge point), if any.
    pub fn first_index(&self) -> Option<u64> {
        let inner = self.inner();
        (inner.first < inner.next).then_some(inner.first)
    }

    /// The last index held (above the purge point), if any.
    pub fn last_index(&self) -> Option<u64> {
        let inner = self.inner();
        (inner.first < inner.next).then(|| inner.next - 1)
    }

    /// Starts a new segment whose first record will be `first`: the old one (and the
    /// directory, if it changed) is synced first, so that only the newest segment can ever
    /// hold a torn record and no older one can be missing after a crash. Always synced, even
    /// when `active_dirty` is clear: a sync in flight clears it before its `fsync` has
    /// finished.
    fn start_segment(&self, inner: &mut Inner, first: u64) -> Result<()> {
        if let Some(active) = inner.segments.back() {
            active.file.sync_data().map_err(io("sync log segment"))?;
            inner.active_dirty = false;
        }
        if inner.dir_dirty {
            inner.dir_dirty = false;
            sync_dir(&self.dir)?;
        }
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io("create log segment"))?;
        file.write_all(SEGMENT_MAGIC).map_err(io("write log segment"))?;
        inner.segments.push_back(Segment { first, path, file: Arc::new(file), offsets: Vec::new(), len: SEGMENT_MAGIC.len() as u64 });
        inner.active_dirty = true;
        inner.dir_dirty = true;
        Ok(())
    }

    /// Appends records of consecutive indexes starting at [`SegmentLog::next_index`] (a new,
    /// never purged log starts at its first record's index) with one write. Readable at
    /// once; durable after the next [`SegmentLog::sync`]. Anything else is refused and
    /// writes nothing.
    pub fn append(&self, records: &[(u64, &[u8])]) -> Result<()> {
        self.check_not_failed()?;
        let Some(&(first, _)) = records.first() else { return Ok(()) };
        let mut inner = self.inner();
        // A failure may have stopped the log while this call waited for the lock.
        self.check_not_failed()?;
        let fresh = inner.segments.is_empty() && inner.purged.is_none() && inner.next == 0;
        if fresh {
            // A new log starts wherever its first record is.
            inner.next = first;
            inner.first = first;
        }
        if first != inner.next {
            return Err(corrupt(format!("append at index {first}, but the log continues at {}", inner.next)));
        }
        let mut buf = Vec::with_capacity(records.iter().map(|(_, p)| RECORD_HEADER_BYTES + p.len()).sum());
        for (i, (index, payload)) in records.iter().enumerate() {
            if *index != first + i as u64 {
                return Err(corrupt(format!("append batch is not contiguous at index {index}")));
            }
            if payload.len() > RECORD_BYTES_MAX {
                return Err(corrupt(format!(
                    "record {index} has {} bytes, more than RECORD_BYTES_MAX ({RECORD_BYTES_MAX})",
                    payload.len()
                )));
            }
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&record_crc(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let need_new = inner.segments.back().is_none_or(|s| s.len >= self.segment_bytes_max);
        if need_new {
            self.start_segment(&mut inner, first).map_err(|e| self.fail_stop(e))?;
        }
        let active = inner.segments.back_mut().expect("a segment is in use");
        let start = active.len;
        if let Err(e) = active.file.write_all_at(&buf, start) {
            // Part of the batch may be in the file: nothing more is written after it.
            return Err(self.fail_stop(Error::Io { op: "write log segment", source: e }));
        }
        let mut at = start;
        for (_, payload) in records {
            active.offsets.push(at);
            at += (RECORD_HEADER_BYTES + payload.len()) as u64;
        }
        active.len = at;
        inner.next = first + records.len() as u64;
        inner.active_dirty = true;
        Ok(())
    }

    /// Makes every record appended before this call durable.
    pub fn sync(&self) -> Result<()> {
        self.check_not_failed()?;
        let one_at_a_time = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_locked(&one_at_a_time)
    }

    /// Every record below this index is durable (synced since it was written). Never
    /// advances once the log has failed.
    pub fn durable_end(&self) -> u64 {
        self.durable_end.load(Ordering::SeqCst)
    }

    /// Makes sure every record up to `index` (inclusive) is durable, syncing only if no sync
    /// (this caller's or another's) has covered it yet.
    pub fn sync_upto(&self, index: u64) -> Result<()> {
        self.check_not_failed()?;
        if self.durable_end.load(Ordering::SeqCst) > index {
            return Ok(());
        }
        let one_at_a_time = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The sync that held the lock may have covered it.
        if self.durable_end.load(Ordering::SeqCst) > index {
            return Ok(());
        }
        self.sync_locked(&one_at_a_time)
    }

    /// The sync itself; the caller holds `sync_lock`, so no truncation runs meanwhile and
    /// `durable_end` never claims records written after the truncation. A failure stops
    /// the log: the sync is never retried (see `failed`).
    fn sync_locked(&self, _one_at_a_time: &MutexGuard<'_, ()>) -> Result<()> {
        self.check_not_failed()?;
        let (file, dir_dirty, end) = {
            let mut inner = self.inner();
            let file = if inner.active_dirty { inner.segments.back().map(|s| s.file.clone()) } else { None };
            let dir_dirty = std::mem::take(&mut inner.dir_dirty);
            inner.active_dirty = false;
            (file, dir_dirty, inner.next)
        };
        let res = (|| {
            if let Some(f) = &file {
                #[cfg(feature = "failpoints")]
                fail::fail_point!("segment-log-sync", |_| Err(Error::Io {
                    op: "sync log segment",
                    source: std::io::Error::other("injected by the fail point segment-log-sync"),
                }));
                f.sync_data().map_err(io("sync log segment"))?;
            }
            if dir_dirty {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        res.map_err(|e| self.fail_stop(e))?;
        // A write that failed meanwhile stopped the log: nothing counts as durable any more.
        self.check_not_failed()?;
        self.durable_end.fetch_max(end, Ordering::SeqCst);
        Ok(())
    }

    /// Reads the payloads of `[start, end)`, which must be held (above the purge point and
    /// below [`SegmentLog::next_index`]). Every record's checksum and index are verified.
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Where each record is, then the reads without the lock.
        let mut spans: Vec<(Arc<File>, u64, u64, usize)> = Vec::with_capacity((end - start) as usize);
        {
            let inner = self.inner();
            if start < inner.first || end > inner.next {
                return Err(corrupt(format!("read of log indexes {start}..{end}, but the log holds {}..{}", inner.first, inner.next)));
            }
            let mut i = inner.segments.partition_point(|s| s.end() <= start);
            let mut index = start;
            while index < end {
                let Some(seg) = inner.segments.get(i) else {
                    return Err(corrupt(format!("log index {index} is in no segment")));
                };
                if index < seg.first {
                    return Err(corrupt(format!("log index {index} is in no segment")));
                }
                while index < end && index < seg.end() {
                    let k = (index - seg.first) as usize;
                    let off = seg.offsets[k];
                    let next = seg.offsets.get(k + 1).copied().unwrap_or(seg.len);
                    spans.push((seg.file.clone(), index, off, (next - off) as usize));
                    index += 1;
                }
                i += 1;
            }
        }
        let mut out = Vec::with_capacity(spans.len());
        for (file, index, off, len) in spans {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, off).map_err(io("read log segment"))?;
            out.push(check_record(&buf, index)?);
        }
        Ok(out)
    }

    /// Removes every record at or after `index`, durably. Below the purge point it removes
    /// everything held, and the log continues after the purge point.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        self.check_not_failed()?;
        // No sync may be in flight: it would mark the records written after this truncation
        // (at the same indexes) durable on its completion.
        let _no_sync = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_not_failed()?;
        let mut inner = self.inner();
        self.truncate_locked(&mut inner, index).map_err(|e| self.fail_stop(e))
    }

    fn truncate_locked(&self, inner: &mut Inner, index: u64) -> Result<()> {
        // Purged records are gone already; the log continues after the purge point.
        let index = index.max(inner.purged.map_or(0, |p| p + 1));
        if index >= inner.next {
            return Ok(());
        }
        // Newest first, then cut the segment holding `index`: a crash in between leaves a
        // prefix of the old log, never a gap.
        while inner.segments.back().is_some_and(|s| s.first >= index) {
            let s = inner.segments.pop_back().expect("checked");
            std::fs::remove_file(&s.path).map_err(io("remove log segment"))?;
            inner.dir_dirty = true;
        }
        if inner.dir_dirty {
            sync_dir(&self.dir)?;
            inner.dir_dirty = false;
        }
        if let Some(seg) = inner.segments.back_mut() {
            if seg.end() > index {
                let k = (index - seg.first) as usize;
                let cut = seg.offsets[k];
                seg.offsets.truncate(k);
                seg.len = cut;
                seg.file.set_len(cut).map_err(io("truncate log segment"))?;
                seg.file.sync_data().map_err(io("sync log segment"))?;
            }
        }
        inner.next = index;
        inner.first = inner.first.min(index);
        self.durable_end.fetch_min(index, Ordering::SeqCst);
        Ok(())
    }

    /// Forgets records up to `index` (inclusive) and deletes the segments that hold only
    /// such records. The caller has made `index` durable as its purge point first.
    pub fn purge_upto(&self, index: u64) -> Result<()> {
        self.check_not_failed()?;
        let mut inner = self.inner();
        self.purge_locked(&mut inner, index).map_err(|e| self.fail_stop(e))
    }

    fn purge_locked(&self, inner: &mut Inner, index: u64) -> Result<()> {
        if inner.purged.is_some_and(|p| p >= index) {
            return Ok(());
        }
        inner.purged = Some(index);
        inner.first = inner.first.max(index + 1);
        if inner.next <= index {
            // The purge point is beyond everything held (a snapshot far ahead).
            self.drop_all_segments(inner)?;
            inner.next = index + 1;
            self.durable_end.fetch_max(index + 1, Ordering::SeqCst);
            return Ok(());
        }
        // Keep the segment in use even if all its records are purged.
        while inner.segments.len() > 1 && inner.segments.front().is_some_and(|s| s.end() <= index + 1) {
            let s = inner.segments.pop_front().expect("checked");
            std::fs::remove_file(&s.path).map_err(io("remove purged log segment"))?;
            inner.dir_dirty = true;
        }
        Ok(())
    }

    fn drop_all_segments(&self, inner: &mut Inner) -> Result<()> {
        while let Some(s) = inner.segments.pop_front() {
            std::fs::remove_file(&s.path).map_err(io("remove purged log segment"))?;
            inner.dir_dirty = true;
        }
        inner.active_dirty = false;
        sync_dir(&self.dir)?;
        inner.dir_dirty = false;
        Ok(())
    }
}

/// Verifies a record read back and returns its payload.
fn check_record(buf: &[u8], index: u64) -> Result<Vec<u8>> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(corrupt(format!("log record {index}: short read")));
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let stored_index = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let payload = &buf[RECORD_HEADER_BYTES..];
    if len != payload.len() || stored_index != index || record_crc(stored_index, payload) != crc {
        return Err(corrupt(format!("log record {index}: checksum or header mismatch")));
    }
    Ok(payload.to_vec())
}
