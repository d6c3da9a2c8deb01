//! The snapshot stream: what a leader sends to a follower, and the file a follower keeps
//! while it installs it. Documented in docs/FORMATS.md ("Snapshot stream").
//!
//! ```text
//! header:  magic "KHOSNAP\0" (8) | version u8 = 3 | meta_len u32 BE | meta (meta_len bytes)
//! chunk*:  stored_len u32 BE (> 0) | raw_len u32 BE | crc32 u32 BE of the stored bytes | stored (zstd)
//! end:     0u32 | record count u64 BE | crc32 u32 BE of the header's meta and the count
//! ```
//! `meta` is the snapshot's last log id, its membership and the group's key range. A chunk
//! decompresses to records `key_len u32 BE | key | value_len u32 BE | value`, where key and
//! value are the raw entries of the data column family (values keep their own header and
//! checksum), in strictly increasing key order, every key inside the range. Only one chunk
//! is ever in memory.
//!
//! Version 4 (written by a node with a master key) seals every chunk under the log key:
//! stored = `nonce (24) | XChaCha20-Poly1305(zstd bytes) | tag (16)` with associated data
//! `"kho snapshot chunk v1" | chunk number u64 BE | meta`; its end marker is
//! `0u32 | sealed(record count u64 BE)` with associated data `"kho snapshot end v1" | chunk
//! count u64 BE | meta` (48 bytes), so chunks cannot be dropped, reordered or moved
//! between snapshots. Versions 1 (plaintext) and 2 (sealed) are the same without the range
//! in the meta; they are still read (their range is the whole key space: the previous
//! build had one group holding everything), never written.
//!
//! A snapshot this node builds is a [`SnapshotView`]: a RocksDB point-in-time view of the
//! group's range, from which the stream is written only when a follower needs it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kho_engine::crypto::LogCipher;
use kho_engine::OwnedSnapshot;

use crate::codec::{self, Reader, Writer};
use crate::{KeyRange, SnapshotMeta};

pub const MAGIC: &[u8; 8] = b"KHOSNAP\0";
/// Plaintext, no range in the meta: read, never written.
pub const SNAPSHOT_FORMAT_V1: u8 = 1;
/// Sealed under the log key, no range in the meta: read, never written.
pub const SNAPSHOT_FORMAT_V2: u8 = 2;
/// Plaintext, with the group's key range in the meta.
pub const SNAPSHOT_FORMAT_V3: u8 = 3;
/// Sealed under the log key, with the group's key range in the meta.
pub const SNAPSHOT_FORMAT_V4: u8 = 4;
/// The newest format version this build reads.
pub const SNAPSHOT_FORMAT_NEWEST: u8 = SNAPSHOT_FORMAT_V4;
/// The stream a state machine is installing, in its snapshot directory: durable before the
/// install marker is written, removed once the install is done (redone from it at open
/// after a crash).
pub const INSTALLING_FILE: &str = "installing.kho";
/// Length of a version 2 end marker after its 0u32: sealed record count.
const SEALED_END_BYTES: usize = 24 + 8 + 16;

fn chunk_aad(n: u64, meta: &[u8]) -> Vec<u8> {
    let mut aad = b"kho snapshot chunk v1".to_vec();
    aad.extend_from_slice(&n.to_be_bytes());
    aad.extend_from_slice(meta);
    aad
}

fn end_aad(chunks: u64, meta: &[u8]) -> Vec<u8> {
    let mut aad = b"kho snapshot end v1".to_vec();
    aad.extend_from_slice(&chunks.to_be_bytes());
    aad.extend_from_slice(meta);
    aad
}
/// Largest decompressed chunk a reader accepts, bytes. A writer flushes a chunk once it
/// reaches its chunk size (at most [`WRITER_CHUNK_BYTES_MAX`]), so a chunk holds at most that
/// plus one record (a value is at most 64 MiB, a key 16 KiB): always below this.
pub const CHUNK_RAW_BYTES_MAX: u32 = 128 << 20;
/// Largest chunk size a writer may be configured with, bytes.
pub const WRITER_CHUNK_BYTES_MAX: usize = 32 << 20;
/// Largest encoded snapshot meta, bytes.
pub const META_BYTES_MAX: u32 = 1 << 20;
/// zstd level used for chunks: fast, still several times smaller for typical rows.
const ZSTD_LEVEL: i32 = 1;

/// The (key, value) records of one chunk.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// A snapshot stream file on disk, opened.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

/// A snapshot as a node holds it: openraft's `SnapshotData`.
#[derive(Debug)]
pub enum SnapshotData {
    /// A snapshot stream file: received from a leader, installed from there.
    Stream(SnapshotFile),
    /// A point-in-time view of this node's engine, built here. The stream a follower needs
    /// is written from it only when one is sent ([`SnapshotView::write_stream`]).
    View(Box<SnapshotView>),
}

/// What a snapshot stream's header says: the snapshot's meta and the key range its records
/// are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    pub range: KeyRange,
    /// A data shard's stored state record (`raft_meta` tag 0x14: descriptor and dropped
    /// tables) at the snapshot's point; empty for the meta group.
    pub group_state: Vec<u8>,
}

/// A snapshot built by this node: a RocksDB point-in-time view, the group's range in it,
/// and the meta read from the same view, so that data and meta are one point in time.
/// Nothing is copied or written when it is built; it keeps the versions it sees from being
/// compacted away until it is dropped.
pub struct SnapshotView {
    pub view: OwnedSnapshot,
    /// The meta (applied log id, membership) and key range read from `view`.
    pub header: SnapshotHeader,
    /// Seals the stream's chunks (format 4) when the node has a master key.
    pub cipher: Option<LogCipher>,
    pub chunk_bytes: usize,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView")
            .field("view", &self.view)
            .field("last_log_id", &self.header.meta.last_log_id)
            .field("range", &self.header.range.to_string())
            .field("sealed", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl SnapshotView {
    /// Writes the snapshot stream of the view into `out`, one chunk in memory at a time;
    /// returns the record count and `out`.
    pub fn write_stream<W: Write>(&self, out: W) -> io::Result<(u64, W)> {
        let mut w = SnapshotWriter::new(out, &self.header, self.chunk_bytes, self.cipher.clone())?;
        let mut write_err = None;
        let range = &self.header.range;
        self.view
            .for_each(kho_engine::Cf::Data, &range.start, range.end(), |k, v| match w.add(k, v) {
                Ok(()) => Ok(true),
                Err(e) => {
                    write_err = Some(e);
                    Ok(false)
                }
            })
            .map_err(io::Error::other)?;
        if let Some(e) = write_err {
            return Err(e);
        }
        w.finish_into()
    }

    /// Writes the snapshot stream of the view to the file `path`, fsynced when `durable`
    /// (an install redone after a crash needs it); returns the record count.
    pub fn write_stream_file(&self, path: &Path, durable: bool) -> io::Result<u64> {
        let (records, out) = self.write_stream(BufWriter::new(File::create(path)?))?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        if durable {
            file.sync_all()?;
        }
        Ok(records)
    }
}

fn bad(reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt snapshot: {reason}"))
}

/// The meta of a version 3 or 4 header: last log id, membership, key range, and the group's
/// state record (u32 BE length ++ bytes; empty for the meta group).
pub fn encode_meta(header: &SnapshotHeader) -> Vec<u8> {
    let mut w = Writer::default();
    codec::put_opt_log_id(&mut w, header.meta.last_log_id.as_ref());
    codec::put_stored_membership(&mut w, &header.meta.last_membership);
    codec::put_key_range(&mut w, &header.range);
    w.bytes(&header.group_state);
    w.buf
}

/// Decodes the meta of a header of format `version`; versions 1 and 2 carry no range (the
/// whole key space).
pub fn decode_meta(version: u8, bytes: &[u8]) -> io::Result<SnapshotHeader> {
    let mut r = Reader::new(bytes, "snapshot meta");
    let last_log_id = codec::get_opt_log_id(&mut r).map_err(bad)?;
    let last_membership = codec::get_stored_membership(&mut r).map_err(bad)?;
    let (range, group_state) = match version {
        SNAPSHOT_FORMAT_V1 | SNAPSHOT_FORMAT_V2 => (KeyRange::whole(), Vec::new()),
        _ => (codec::get_key_range(&mut r).map_err(bad)?, r.bytes().map_err(bad)?.to_vec()),
    };
    r.finish().map_err(bad)?;
    Ok(SnapshotHeader { meta: SnapshotMeta { last_log_id, last_membership }, range, group_state })
}

/// Writes a snapshot stream chunk by chunk (format 3, or 4 with a cipher).
pub struct SnapshotWriter<W: Write = BufWriter<File>> {
    out: W,
    chunk: Vec<u8>,
    chunk_bytes: usize,
    records: u64,
    trailer_crc: crc32fast::Hasher,
    cipher: Option<LogCipher>,
    meta_bytes: Vec<u8>,
    chunks: u64,
}

impl SnapshotWriter<BufWriter<File>> {
    /// Creates the file `path` and writes the header; with `cipher`, format 4 (sealed
    /// chunks), without, format 3.
    pub fn create(path: &Path, header: &SnapshotHeader, chunk_bytes: usize, cipher: Option<LogCipher>) -> io::Result<Self> {
        SnapshotWriter::new(BufWriter::new(File::create(path)?), header, chunk_bytes, cipher)
    }

    /// Writes the end marker and fsyncs the file. Returns the record count.
    pub fn finish(self) -> io::Result<u64> {
        self.finish_with(true)
    }

    /// Writes the end marker, and fsyncs the file when `sync`. Returns the record count.
    pub fn finish_with(self, sync: bool) -> io::Result<u64> {
        let (records, out) = self.finish_into()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        Ok(records)
    }
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the header into `out`; with `cipher`, format 4 (sealed chunks), without,
    /// format 3.
    pub fn new(mut out: W, header: &SnapshotHeader, chunk_bytes: usize, cipher: Option<LogCipher>) -> io::Result<Self> {
        assert!(chunk_bytes > 0 && chunk_bytes <= WRITER_CHUNK_BYTES_MAX, "snapshot chunk size {chunk_bytes} out of range");
        let meta_bytes = encode_meta(header);
        assert!(meta_bytes.len() <= META_BYTES_MAX as usize, "snapshot meta of {} bytes", meta_bytes.len());
        out.write_all(MAGIC)?;
        out.write_all(&[if cipher.is_some() { SNAPSHOT_FORMAT_V4 } else { SNAPSHOT_FORMAT_V3 }])?;
        out.write_all(&(meta_bytes.len() as u32).to_be_bytes())?;
        out.write_all(&meta_bytes)?;
        let mut trailer_crc = crc32fast::Hasher::new();
        trailer_crc.update(&meta_bytes);
        Ok(SnapshotWriter {
            out,
            chunk: Vec::with_capacity(chunk_bytes),
            chunk_bytes,
            records: 0,
            trailer_crc,
            cipher,
            meta_bytes,
            chunks: 0,
        })
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.chunk.extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.chunk.extend_from_slice(key);
        self.chunk.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.chunk.extend_from_slice(value);
        self.records += 1;
        if self.chunk.len() >= self.chunk_bytes {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let raw_len = u32::try_from(self.chunk.len()).map_err(|_| bad("chunk over 4 GiB"))?;
        assert!(raw_len <= CHUNK_RAW_BYTES_MAX, "a single record is larger than the chunk limit");
        let compressed = zstd::bulk::compress(&self.chunk, ZSTD_LEVEL)?;
        let stored = match &self.cipher {
            None => compressed,
            Some(c) => {
                let mut sealed = Vec::new();
                c.seal_into(&mut sealed, &chunk_aad(self.chunks, &self.meta_bytes), &compressed);
                sealed
            }
        };
        self.chunks += 1;
        self.out.write_all(&(stored.len() as u32).to_be_bytes())?;
        self.out.write_all(&raw_len.to_be_bytes())?;
        self.out.write_all(&crc32fast::hash(&stored).to_be_bytes())?;
        self.out.write_all(&stored)?;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the end marker. Returns the record count and the output.
    pub fn finish_into(mut self) -> io::Result<(u64, W)> {
        self.flush_chunk()?;
        self.trailer_crc.update(&self.records.to_be_bytes());
        self.out.write_all(&0u32.to_be_bytes())?;
        match &self.cipher {
            None => {
                self.out.write_all(&self.records.to_be_bytes())?;
                self.out.write_all(&self.trailer_crc.clone().finalize().to_be_bytes())?;
            }
            Some(c) => {
                let mut sealed = Vec::with_capacity(SEALED_END_BYTES);
                c.seal_into(&mut sealed, &end_aad(self.chunks, &self.meta_bytes), &self.records.to_be_bytes());
                debug_assert_eq!(sealed.len(), SEALED_END_BYTES);
                self.out.write_all(&sealed)?;
            }
        }
        self.out.flush()?;
        Ok((self.records, self.out))
    }
}

/// Reads a snapshot stream, verifying every chunk, and that its records are in strictly
/// increasing key order inside the header's range.
pub struct SnapshotReader<R: Read> {
    input: R,
    meta_bytes: Vec<u8>,
    header: SnapshotHeader,
    records: u64,
    done: bool,
    cipher: Option<LogCipher>,
    chunks: u64,
    /// The last key read, to check the order.
    last_key: Option<Vec<u8>>,
}

impl SnapshotReader<BufReader<File>> {
    /// Opens a snapshot file; a sealed (format 2) one needs the log key.
    pub fn open(path: &Path, cipher: Option<&LogCipher>) -> io::Result<Self> {
        SnapshotReader::new(BufReader::new(File::open(path)?), cipher)
    }
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(mut input: R, cipher: Option<&LogCipher>) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| bad("missing header"))?;
        if &magic != MAGIC {
            return Err(bad("bad magic"));
        }
        let mut v = [0u8; 1];
        input.read_exact(&mut v)?;
        let version = v[0];
        let cipher = match version {
            SNAPSHOT_FORMAT_V1 | SNAPSHOT_FORMAT_V3 => None,
            SNAPSHOT_FORMAT_V2 | SNAPSHOT_FORMAT_V4 => Some(
                cipher.cloned().ok_or_else(|| bad("the snapshot is encrypted, and this node has no master key ([encryption] config)"))?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown format version {other}: this build reads versions {SNAPSHOT_FORMAT_V1} to {SNAPSHOT_FORMAT_NEWEST} \
                     (a snapshot from a newer Kho? every node of a cluster must run the same version)"
                )))
            }
        };
        let meta_len = read_u32(&mut input)?;
        if meta_len > META_BYTES_MAX {
            return Err(bad(format!("meta of {meta_len} bytes exceeds {META_BYTES_MAX}")));
        }
        let mut meta_bytes = vec![0u8; meta_len as usize];
        input.read_exact(&mut meta_bytes).map_err(|_| bad("truncated meta"))?;
        let header = decode_meta(version, &meta_bytes)?;
        Ok(SnapshotReader { input, meta_bytes, header, records: 0, done: false, cipher, chunks: 0, last_key: None })
    }

    /// The header: the snapshot's meta and its key range.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The snapshot's meta.
    pub fn meta(&self) -> SnapshotMeta {
        self.header.meta.clone()
    }

    /// The records of the next chunk, or None after the verified end marker.
    pub fn next_chunk(&mut self) -> io::Result<Option<Records>> {
        if self.done {
            return Ok(None);
        }
        let stored_len = read_u32(&mut self.input)?;
        if stored_len == 0 {
            let count = match &self.cipher {
                None => {
                    let mut count = [0u8; 8];
                    self.input.read_exact(&mut count).map_err(|_| bad("truncated end marker"))?;
                    let crc = read_u32(&mut self.input)?;
                    let mut h = crc32fast::Hasher::new();
                    h.update(&self.meta_bytes);
                    h.update(&count);
                    if h.finalize() != crc {
                        return Err(bad("end marker checksum mismatch"));
                    }
                    u64::from_be_bytes(count)
                }
                Some(c) => {
                    let mut sealed = [0u8; SEALED_END_BYTES];
                    self.input.read_exact(&mut sealed).map_err(|_| bad("truncated end marker"))?;
                    let plain = c.open(&end_aad(self.chunks, &self.meta_bytes), &sealed).map_err(|e| bad(format!("end marker: {e}")))?;
                    u64::from_be_bytes(plain.as_slice().try_into().map_err(|_| bad("end marker is not 8 bytes"))?)
                }
            };
            if count != self.records {
                return Err(bad(format!("end marker says {count} records, read {}", self.records)));
            }
            self.done = true;
            return Ok(None);
        }
        let raw_len = read_u32(&mut self.input)?;
        let crc = read_u32(&mut self.input)?;
        if raw_len > CHUNK_RAW_BYTES_MAX || stored_len > CHUNK_RAW_BYTES_MAX + (CHUNK_RAW_BYTES_MAX >> 4) {
            return Err(bad(format!("chunk of {raw_len} raw / {stored_len} stored bytes exceeds the limit")));
        }
        let mut stored = vec![0u8; stored_len as usize];
        self.input.read_exact(&mut stored)?;
        if crc32fast::hash(&stored) != crc {
            return Err(bad("chunk checksum mismatch"));
        }
        let compressed = match &self.cipher {
            None => stored,
            Some(c) => {
                c.open(&chunk_aad(self.chunks, &self.meta_bytes), &stored).map_err(|e| bad(format!("chunk {}: {e}", self.chunks)))?
            }
        };
        self.chunks += 1;
        let raw = zstd::bulk::decompress(&compressed, raw_len as usize)?;
        if raw.len() != raw_len as usize {
            return Err(bad("chunk length mismatch"));
        }
        let mut records: Records = Vec::new();
        let mut r = &raw[..];
        while !r.is_empty() {
            let key = take_len_prefixed(&mut r)?;
            let value = take_len_prefixed(&mut r)?;
            if !self.header.range.contains(&key) {
                return Err(bad(format!("record key {} is outside the snapshot's range {}", hex(&key), self.header.range)));
            }
            let previous = records.last().map(|(k, _)| k).or(self.last_key.as_ref());
            if previous.is_some_and(|p| p >= &key) {
                return Err(bad(format!("record key {} is not after the key before it", hex(&key))));
            }
            records.push((key, value));
        }
        if let Some((k, _)) = records.last() {
            self.last_key = Some(k.clone());
        }
        self.records += records.len() as u64;
        Ok(Some(records))
    }
}

fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
    if b.len() > 64 {
        format!("{shown}… ({} bytes)", b.len())
    } else {
        shown
    }
}

fn take_len_prefixed(r: &mut &[u8]) -> io::Result<Vec<u8>> {
    if r.len() < 4 {
        return Err(bad("truncated record"));
    }
    let n = u32::from_be_bytes(r[..4].try_into().expect("4 bytes")) as usize;
    if r.len() < 4 + n {
        return Err(bad("truncated record"));
    }
    let out = r[4..4 + n].to_vec();
    *r = &r[4 + n..];
    Ok(out)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|_| bad("truncated"))?;
    Ok(u32::from_be_bytes(b))
}

/// fsyncs a directory so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta { last_log_id: None, last_membership: Default::default() },
            range: KeyRange::whole(),
            group_state: Vec::new(),
        }
    }

    fn log_cipher(b: u8) -> LogCipher {
        kho_engine::crypto::MasterKey::new(zeroize::Zeroizing::new([b; 32])).log_cipher()
    }

    fn read_all(p: &Path, cipher: Option<&LogCipher>) -> io::Result<Records> {
        let mut r = SnapshotReader::open(p, cipher)?;
        let mut all = Vec::new();
        while let Some(c) = r.next_chunk()? {
            all.extend(c);
        }
        Ok(all)
    }

    #[test]
    fn plaintext_round_trip_in_many_chunks_and_detects_any_flipped_byte() {
        round_trip_in_many_chunks_and_detects_any_flipped_byte(None);
    }

    #[test]
    fn sealed_round_trip_in_many_chunks_and_detects_any_flipped_byte() {
        round_trip_in_many_chunks_and_detects_any_flipped_byte(Some(log_cipher(1)));
    }

    #[test]
    fn sealed_snapshot_hides_records_and_needs_the_log_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = SnapshotWriter::create(&path, &header(), 4096, Some(log_cipher(1))).unwrap();
        for i in 0..100u32 {
            w.add(format!("citizen-{i:04}").as_bytes(), b"Nguyen Van An").unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[8], SNAPSHOT_FORMAT_V4);
        assert!(!bytes.windows(7).any(|x| x == b"citizen"));
        let err = SnapshotReader::open(&path, None).err().expect("no key");
        assert!(err.to_string().contains("no master key"), "{err}");
        let mut r = SnapshotReader::open(&path, Some(&log_cipher(2))).unwrap();
        assert!(r.next_chunk().is_err(), "another master key must not open the chunks");
    }

    /// The range is in the header (version 3), authenticated by the end marker: a stream
    /// whose records leave it, or are out of order, is refused as corrupt.
    #[test]
    fn the_range_is_in_the_header_and_every_record_must_lie_in_it_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyRange::new(b"b".to_vec(), Some(b"d".to_vec()));
        let h = SnapshotHeader { range: range.clone(), ..header() };
        let write = |name: &str, keys: &[&[u8]]| -> PathBuf {
            let path = dir.path().join(name);
            let mut w = SnapshotWriter::create(&path, &h, 4096, None).unwrap();
            for k in keys {
                w.add(k, b"v").unwrap();
            }
            w.finish().unwrap();
            path
        };
        let good = write("good", &[b"b", b"c", b"c\xff"]);
        assert_eq!(std::fs::read(&good).unwrap()[8], SNAPSHOT_FORMAT_V3);
        let r = SnapshotReader::open(&good, None).unwrap();
        assert_eq!(r.header(), &h);
        assert_eq!(read_all(&good, None).unwrap().len(), 3);
        for (name, keys) in
            [("below", &[&b"a"[..], b"b"][..]), ("at the end", &[&b"c"[..], b"d"][..]), ("unordered", &[&b"c"[..], b"b"][..])]
        {
            let err = read_all(&write(name, keys), None).expect_err(name);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
        }
        let err = read_all(&write("duplicate", &[b"c", b"c"]), None).expect_err("a repeated key");
        assert!(err.to_string().contains("not after the key before it"), "{err}");
        let err = read_all(&write("outside", &[b"e"]), None).expect_err("a key past the end");
        assert!(err.to_string().contains("outside the snapshot's range [62, 64)"), "{err}");
    }

    /// A version 1 stream (the previous build's) is still read, as the whole key space; a
    /// version this build does not know is refused and says so.
    #[test]
    fn a_version_1_stream_reads_as_the_whole_key_space_and_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Version 1 by hand: the meta without a range, one chunk with one record.
        let mut meta = Writer::default();
        codec::put_opt_log_id(&mut meta, None);
        codec::put_stored_membership(&mut meta, &Default::default());
        let mut raw = Vec::new();
        for part in [&b"\xff\xffkey"[..], b"value"] {
            raw.extend_from_slice(&(part.len() as u32).to_be_bytes());
            raw.extend_from_slice(part);
        }
        let stored = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
        let mut v1 = MAGIC.to_vec();
        v1.push(SNAPSHOT_FORMAT_V1);
        v1.extend_from_slice(&(meta.buf.len() as u32).to_be_bytes());
        v1.extend_from_slice(&meta.buf);
        v1.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        v1.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        v1.extend_from_slice(&crc32fast::hash(&stored).to_be_bytes());
        v1.extend_from_slice(&stored);
        let mut end = crc32fast::Hasher::new();
        end.update(&meta.buf);
        end.update(&1u64.to_be_bytes());
        v1.extend_from_slice(&0u32.to_be_bytes());
        v1.extend_from_slice(&1u64.to_be_bytes());
        v1.extend_from_slice(&end.finalize().to_be_bytes());
        let path = dir.path().join("v1");
        std::fs::write(&path, &v1).unwrap();
        assert_eq!(SnapshotReader::open(&path, None).unwrap().header(), &header());
        assert_eq!(read_all(&path, None).unwrap(), vec![(b"\xff\xffkey".to_vec(), b"value".to_vec())]);

        v1[8] = SNAPSHOT_FORMAT_NEWEST + 1;
        std::fs::write(&path, &v1).unwrap();
        let err = SnapshotReader::open(&path, None).err().expect("an unknown version");
        assert!(err.to_string().contains("unknown format version 5: this build reads versions 1 to 4"), "{err}");
    }

    fn round_trip_in_many_chunks_and_detects_any_flipped_byte(cipher: Option<LogCipher>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let range = KeyRange::new(b"key-".to_vec(), Some(b"key.".to_vec()));
        let h = SnapshotHeader { range, ..header() };
        let mut w = SnapshotWriter::create(&path, &h, 4096, cipher.clone()).unwrap();
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let k = format!("key-{i:06}").into_bytes();
            let v = vec![(i % 251) as u8; (i % 97) as usize];
            w.add(&k, &v).unwrap();
            expected.push((k, v));
        }
        assert_eq!(w.finish().unwrap(), 2000);
        let chunks = |p: &Path| -> io::Result<usize> {
            let mut r = SnapshotReader::open(p, cipher.as_ref())?;
            let mut n = 0;
            while r.next_chunk()?.is_some() {
                n += 1;
            }
            Ok(n)
        };
        assert!(chunks(&path).unwrap() > 1);
        assert_eq!(read_all(&path, cipher.as_ref()).unwrap(), expected);
        let bytes = std::fs::read(&path).unwrap();
        for i in (0..bytes.len()).step_by(37) {
            let mut bad_bytes = bytes.clone();
            bad_bytes[i] ^= 0x10;
            let p = dir.path().join("bad");
            std::fs::write(&p, &bad_bytes).unwrap();
            assert!(read_all(&p, cipher.as_ref()).is_err(), "flipped byte {i} of {} was not detected", bytes.len());
        }
        // A truncated stream is an error, not a shorter snapshot.
        let p = dir.path().join("short");
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        assert!(read_all(&p, cipher.as_ref()).is_err());
    }
}
