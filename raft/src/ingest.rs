//! The fast path of bulk loads ([`Command::IngestSst`]): a sorted run of one table's cells
//! in one data shard, written as an SST file by the shard's leader, carried in the Raft
//! entry to every replica (as CockroachDB's `AddSSTable` carries its file), checked there
//! (length, SHA-256, shard epoch and range) and ingested into RocksDB without going through
//! the memtable. docs/FORMATS.md, "SST runs".
//!
//! The files are made and ingested in the engine's staging directory
//! ([`kho_engine::Engine::staging_dir`]), wiped when the engine opens; they hold cells as
//! stored (values sealed for an encrypted tenant, row keys hashed for a hashed table), never
//! plaintext of an encrypted tenant.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use kho_engine::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{CellOp, CellWrite};

/// A run of cells of one table in one data shard, as an SST file. Every key lies in
/// `[first, last]`, in the table's key range and, when applied, in the shard's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SstRun {
    pub shard: u64,
    /// The shard's epoch version the run was cut for: applied only at that version (a split
    /// or merge since makes the shard refuse it, writing nothing; the proposer routes it
    /// again, and the loader cuts its rows again when they no longer fit one shard).
    pub epoch: u64,
    pub tenant: u32,
    pub table: u32,
    #[serde(with = "serde_bytes")]
    pub first: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub last: Vec<u8>,
    /// How many cells the file holds.
    pub cells: u64,
    /// The file's length in bytes and its SHA-256, checked by every replica before it
    /// ingests the file.
    pub bytes: u64,
    pub sha256: [u8; 32],
    /// The SST file.
    #[serde(with = "serde_bytes")]
    pub sst: Vec<u8>,
}

impl std::fmt::Debug for SstRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SstRun")
            .field("shard", &self.shard)
            .field("epoch", &self.epoch)
            .field("tenant", &self.tenant)
            .field("table", &self.table)
            .field("cells", &self.cells)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// Staging files made by this process (for unique names).
static STAGED: AtomicU64 = AtomicU64::new(0);

fn staging_file(engine: &Engine, what: &str) -> io::Result<PathBuf> {
    let dir = engine.staging_dir();
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(format!("{what}-{}-{}.sst", std::process::id(), STAGED.fetch_add(1, Ordering::Relaxed))))
}

/// Removes `path` when dropped (a staging file whose run failed halfway).
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds the run of `w` (only puts, no condition: a bulk load's rows) with `engine`'s SST
/// writer, keys sorted. Its shard and epoch are `w`'s (set them again when it is routed
/// again). Blocking: writes and reads a staging file.
pub fn build(engine: &Engine, w: &CellWrite) -> io::Result<SstRun> {
    if w.condition.is_some() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an SST run takes no condition"));
    }
    let mut cells: Vec<(&[u8], &[u8])> = Vec::with_capacity(w.ops.len());
    for op in &w.ops {
        match op {
            CellOp::Put { key, stored } => cells.push((key, stored)),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "an SST run holds puts only")),
        }
    }
    cells.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (Some(first), Some(last)) = (cells.first().map(|c| c.0.to_vec()), cells.last().map(|c| c.0.to_vec())) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an SST run holds at least one cell"));
    };
    let staged = Staged(staging_file(engine, "build")?);
    let size = engine.write_data_sst(&staged.0, cells.iter().copied()).map_err(io::Error::other)?;
    let sst = std::fs::read(&staged.0)?;
    if sst.len() as u64 != size {
        return Err(io::Error::other(format!("the SST run file is {} bytes, written as {size}", sst.len())));
    }
    Ok(SstRun {
        shard: w.shard,
        epoch: w.epoch,
        tenant: w.tenant,
        table: w.table,
        first,
        last,
        cells: cells.len() as u64,
        bytes: size,
        sha256: Sha256::digest(&sst).into(),
        sst,
    })
}

/// Why a run's file cannot be ingested as it came (length or checksum), if so.
pub fn check(run: &SstRun) -> Result<(), String> {
    if run.sst.len() as u64 != run.bytes {
        return Err(format!("the SST run is {} bytes, {} expected", run.sst.len(), run.bytes));
    }
    let sum: [u8; 32] = Sha256::digest(&run.sst).into();
    if sum != run.sha256 {
        return Err("the SST run's SHA-256 does not match its file".into());
    }
    if run.first > run.last {
        return Err("the SST run's first key is after its last".into());
    }
    Ok(())
}

/// Ingests a checked run ([`check`]) on this replica: writes its file into the staging
/// directory (synced), then moves it into RocksDB. Blocking. Applying the same run again
/// (after a crash, from the log) writes the same cells again. `Ok(Err(why))`: RocksDB
/// refused the file as malformed or unsupported, which every replica does alike, having
/// the same bytes: nothing was written. An `Err` is this node's failure (its disk, or a
/// corrupt file, which stops the node rather than let it differ from the others).
pub fn ingest(engine: &Engine, run: &SstRun) -> io::Result<Result<(), String>> {
    let staged = Staged(staging_file(engine, "apply")?);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&staged.0)?;
        f.write_all(&run.sst)?;
        f.sync_all()?;
    }
    match engine.ingest_data_sst(&staged.0) {
        Ok(()) => Ok(Ok(())),
        Err(e) if Engine::is_refused_file(&e) => Ok(Err(format!("RocksDB refused the SST run's file: {e}"))),
        Err(e) => Err(io::Error::other(e)),
    }
}
