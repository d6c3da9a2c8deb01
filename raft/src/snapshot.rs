//! The snapshot stream: the on-disk snapshot file and, byte for byte, what is sent to a
//! follower. Documented in docs/FORMATS.md ("Snapshot stream").
//!
//! ```text
//! header:  magic "KHOSNAP\0" (8) | version u8 = 1 | meta_len u32 BE | meta (meta_len bytes)
//! chunk*:  stored_len u32 BE (> 0) | raw_len u32 BE | crc32 u32 BE of the stored bytes | stored (zstd)
//! end:     0u32 | record count u64 BE | crc32 u32 BE of the header's meta and the count
//! ```
//! A chunk decompresses to records `key_len u32 BE | key | value_len u32 BE | value`, where
//! key and value are the raw entries of the data column family (values keep their own
//! header and checksum). Only one chunk is ever in memory.
//!
//! Version 2 (written by a node with a master key) seals every chunk under the log key:
//! stored = `nonce (24) | XChaCha20-Poly1305(zstd bytes) | tag (16)` with associated data
//! `"kho snapshot chunk v1" | chunk number u64 BE | meta`; its end marker is
//! `0u32 | sealed(record count u64 BE)` with associated data `"kho snapshot end v1" | chunk
//! count u64 BE | meta` (48 bytes), so chunks cannot be dropped, reordered or moved
//! between snapshots.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kho_engine::crypto::LogCipher;

use crate::codec::{self, Reader, Writer};
use crate::{LogId, SnapshotMeta};

pub const MAGIC: &[u8; 8] = b"KHOSNAP\0";
pub const SNAPSHOT_FORMAT_V1: u8 = 1;
/// The format of a snapshot sealed under the log key.
pub const SNAPSHOT_FORMAT_V2: u8 = 2;
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
    /// A snapshot stream file: received from a leader (or written from a checkpoint).
    Stream(SnapshotFile),
    /// A RocksDB checkpoint of this node's engine, built here. The stream a follower needs is
    /// written from it only when one is sent ([`CheckpointSnapshot::write_stream`]).
    Checkpoint(CheckpointSnapshot),
}

/// A snapshot built as a RocksDB checkpoint (`snap-<index>-<term>-<node>-<build>.ckpt/`): the engine's
/// SST files as hard links, plus [`CHECKPOINT_META_FILE`] holding the snapshot's meta.
pub struct CheckpointSnapshot {
    pub dir: PathBuf,
    /// The group's key range in the data column family: [start, end), end None = unbounded.
    pub range: (Vec<u8>, Option<Vec<u8>>),
    /// Seals the stream's chunks (format 2) when the node has a master key.
    pub cipher: Option<LogCipher>,
    pub chunk_bytes: usize,
}

impl std::fmt::Debug for CheckpointSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSnapshot").field("dir", &self.dir).field("sealed", &self.cipher.is_some()).finish_non_exhaustive()
    }
}

/// The file inside a checkpoint directory that holds its snapshot meta:
/// `magic "KHOCKPT\0" (8) | meta_len u32 BE | meta | crc32 u32 BE of meta`.
pub const CHECKPOINT_META_FILE: &str = "KHO-SNAPSHOT-META";
const CHECKPOINT_MAGIC: &[u8; 8] = b"KHOCKPT\0";
/// Block cache of the read-only RocksDB opened to stream a checkpoint, bytes.
const CHECKPOINT_READ_CACHE_BYTES: usize = 8 << 20;

/// Writes (and fsyncs) the meta file of a checkpoint directory.
pub fn write_checkpoint_meta(dir: &Path, meta: &SnapshotMeta) -> io::Result<()> {
    let meta_bytes = encode_meta(meta);
    let mut out = Vec::with_capacity(meta_bytes.len() + 16);
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta_bytes);
    out.extend_from_slice(&crc32fast::hash(&meta_bytes).to_be_bytes());
    let mut f = File::create(dir.join(CHECKPOINT_META_FILE))?;
    f.write_all(&out)?;
    f.sync_all()
}

/// Reads the meta file of a checkpoint directory.
pub fn read_checkpoint_meta(dir: &Path) -> io::Result<SnapshotMeta> {
    let bytes = std::fs::read(dir.join(CHECKPOINT_META_FILE))?;
    let rest = bytes.strip_prefix(&CHECKPOINT_MAGIC[..]).ok_or_else(|| bad("checkpoint meta: bad magic"))?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("checkpoint meta: truncated"))?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes"));
    if len > META_BYTES_MAX || rest.len() != len as usize + 4 {
        return Err(bad(format!("checkpoint meta: length {len} does not match the file")));
    }
    let (meta_bytes, crc) = rest.split_at(len as usize);
    if crc32fast::hash(meta_bytes).to_be_bytes() != crc {
        return Err(bad("checkpoint meta: checksum mismatch"));
    }
    decode_meta(meta_bytes)
}

impl CheckpointSnapshot {
    /// Writes the snapshot stream of this checkpoint to `path` with `meta` in its header,
    /// fsynced when `durable` (an install redone after a crash needs it; a stream that is
    /// only sent does not); returns the record count. Reads the checkpoint through a read-only RocksDB
    /// that opens all its SST files first, so the stream completes even if a newer
    /// snapshot removes the directory meanwhile.
    pub fn write_stream(&self, meta: &SnapshotMeta, path: &Path, durable: bool) -> io::Result<u64> {
        let engine = kho_engine::Engine::open_read_only(&self.dir, CHECKPOINT_READ_CACHE_BYTES, true).map_err(io::Error::other)?;
        let mut w = SnapshotWriter::create(path, meta, self.chunk_bytes, self.cipher.clone())?;
        let mut write_err = None;
        engine
            .snapshot()
            .for_each(kho_engine::Cf::Data, &self.range.0, self.range.1.as_deref(), |k, v| match w.add(k, v) {
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
        w.finish_with(durable)
    }
}

fn bad(reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt snapshot: {reason}"))
}

pub fn encode_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let mut w = Writer::default();
    codec::put_opt_log_id(&mut w, meta.last_log_id.as_ref());
    codec::put_stored_membership(&mut w, &meta.last_membership);
    w.buf
}

pub fn decode_meta(bytes: &[u8]) -> io::Result<SnapshotMeta> {
    let mut r = Reader::new(bytes, "snapshot meta");
    let last_log_id = codec::get_opt_log_id(&mut r).map_err(bad)?;
    let last_membership = codec::get_stored_membership(&mut r).map_err(bad)?;
    r.finish().map_err(bad)?;
    Ok(SnapshotMeta { last_log_id, last_membership })
}

/// A stable file name for the snapshot stream up to `last`.
pub fn file_name(last: Option<&LogId>) -> String {
    format!("{}.kho", base_name(last))
}

/// The directory name of the checkpoint snapshot up to `last`, with its build number (20
/// digits): a checkpoint rebuilt at the same log id (after a compaction) gets the next
/// number, so names sort by index, then by build, and the old one can stay in place until
/// the new one is.
pub fn checkpoint_name(last: Option<&LogId>, build: u64) -> String {
    format!("{}-{build:020}.ckpt", base_name(last))
}

fn base_name(last: Option<&LogId>) -> String {
    match last {
        Some(id) => format!("snap-{:020}-{}-{}", id.index, id.leader_id.term, id.leader_id.node_id),
        None => "snap-empty".to_string(),
    }
}

/// Writes a snapshot file chunk by chunk.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    chunk: Vec<u8>,
    chunk_bytes: usize,
    records: u64,
    trailer_crc: crc32fast::Hasher,
    cipher: Option<LogCipher>,
    meta_bytes: Vec<u8>,
    chunks: u64,
}

impl SnapshotWriter {
    /// With `cipher`, writes format 2 (sealed chunks); without, format 1.
    pub fn create(path: &Path, meta: &SnapshotMeta, chunk_bytes: usize, cipher: Option<LogCipher>) -> io::Result<SnapshotWriter> {
        assert!(chunk_bytes > 0 && chunk_bytes <= WRITER_CHUNK_BYTES_MAX, "snapshot chunk size {chunk_bytes} out of range");
        let mut out = BufWriter::new(File::create(path)?);
        let meta_bytes = encode_meta(meta);
        out.write_all(MAGIC)?;
        out.write_all(&[if cipher.is_some() { SNAPSHOT_FORMAT_V2 } else { SNAPSHOT_FORMAT_V1 }])?;
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

    /// Writes the end marker and fsyncs the file. Returns the record count.
    pub fn finish(self) -> io::Result<u64> {
        self.finish_with(true)
    }

    /// Writes the end marker, and fsyncs the file when `sync`. Returns the record count.
    pub fn finish_with(mut self, sync: bool) -> io::Result<u64> {
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
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        Ok(self.records)
    }
}

/// Reads a snapshot file, verifying every chunk.
pub struct SnapshotReader<R: Read> {
    input: R,
    meta_bytes: Vec<u8>,
    records: u64,
    done: bool,
    cipher: Option<LogCipher>,
    chunks: u64,
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
        let cipher = match v[0] {
            SNAPSHOT_FORMAT_V1 => None,
            SNAPSHOT_FORMAT_V2 => Some(
                cipher.cloned().ok_or_else(|| bad("the snapshot is encrypted, and this node has no master key ([encryption] config)"))?,
            ),
            other => return Err(bad(format!("unknown format version {other}"))),
        };
        let meta_len = read_u32(&mut input)?;
        if meta_len > META_BYTES_MAX {
            return Err(bad(format!("meta of {meta_len} bytes exceeds {META_BYTES_MAX}")));
        }
        let mut meta_bytes = vec![0u8; meta_len as usize];
        input.read_exact(&mut meta_bytes)?;
        Ok(SnapshotReader { input, meta_bytes, records: 0, done: false, cipher, chunks: 0 })
    }

    pub fn meta(&self) -> io::Result<SnapshotMeta> {
        decode_meta(&self.meta_bytes)
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
        let mut records = Vec::new();
        let mut r = &raw[..];
        while !r.is_empty() {
            let key = take_len_prefixed(&mut r)?;
            let value = take_len_prefixed(&mut r)?;
            records.push((key, value));
        }
        self.records += records.len() as u64;
        Ok(Some(records))
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

    fn meta() -> SnapshotMeta {
        SnapshotMeta { last_log_id: None, last_membership: Default::default() }
    }

    fn log_cipher(b: u8) -> LogCipher {
        kho_engine::crypto::MasterKey::new(zeroize::Zeroizing::new([b; 32])).log_cipher()
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
    fn checkpoint_meta_round_trips_and_any_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint_meta(dir.path(), &meta()).unwrap();
        assert_eq!(read_checkpoint_meta(dir.path()).unwrap(), meta());
        let path = dir.path().join(CHECKPOINT_META_FILE);
        let bytes = std::fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            let mut bad_bytes = bytes.clone();
            bad_bytes[i] ^= 0x01;
            std::fs::write(&path, &bad_bytes).unwrap();
            assert!(read_checkpoint_meta(dir.path()).is_err(), "flipped byte {i} of {} was not detected", bytes.len());
        }
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_checkpoint_meta(dir.path()).is_err(), "a truncated meta file was accepted");
    }

    #[test]
    fn sealed_snapshot_hides_records_and_needs_the_log_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = SnapshotWriter::create(&path, &meta(), 4096, Some(log_cipher(1))).unwrap();
        for i in 0..100u32 {
            w.add(format!("citizen-{i:04}").as_bytes(), b"Nguyen Van An").unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(7).any(|x| x == b"citizen"));
        let err = SnapshotReader::open(&path, None).err().expect("no key");
        assert!(err.to_string().contains("no master key"), "{err}");
        let mut r = SnapshotReader::open(&path, Some(&log_cipher(2))).unwrap();
        assert!(r.next_chunk().is_err(), "another master key must not open the chunks");
    }

    fn round_trip_in_many_chunks_and_detects_any_flipped_byte(cipher: Option<LogCipher>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = SnapshotWriter::create(&path, &meta(), 4096, cipher.clone()).unwrap();
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let k = format!("key-{i:06}").into_bytes();
            let v = vec![(i % 251) as u8; (i % 97) as usize];
            w.add(&k, &v).unwrap();
            expected.push((k, v));
        }
        assert_eq!(w.finish().unwrap(), 2000);
        let read_all = |p: &Path| -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let mut r = SnapshotReader::open(p, cipher.as_ref())?;
            r.meta()?;
            let mut all = Vec::new();
            let mut chunks = 0;
            while let Some(c) = r.next_chunk()? {
                all.extend(c);
                chunks += 1;
            }
            assert!(chunks > 1);
            Ok(all)
        };
        assert_eq!(read_all(&path).unwrap(), expected);
        let bytes = std::fs::read(&path).unwrap();
        for i in (0..bytes.len()).step_by(37) {
            let mut bad_bytes = bytes.clone();
            bad_bytes[i] ^= 0x10;
            let p = dir.path().join("bad");
            std::fs::write(&p, &bad_bytes).unwrap();
            assert!(read_all(&p).is_err(), "flipped byte {i} of {} was not detected", bytes.len());
        }
        // A truncated stream is an error, not a shorter snapshot.
        let p = dir.path().join("short");
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        assert!(read_all(&p).is_err());
    }
}
