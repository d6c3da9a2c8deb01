//! A load job as the loader describes it to the cluster: its `spec` (source, options,
//! mapping) and its `checkpoint` (where the source is read up to, the counts and the digest
//! of every row loaded before that point), both JSON in the job record
//! (docs/FORMATS.md, "Load job spec and checkpoint").

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kho_proto::v1 as pb;
use kho_raft::load::{Bucket, TableDigest, DIGEST_BUCKETS};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::source::Position;

/// Version of the spec and checkpoint JSON.
pub const SPEC_VERSION: u32 = 1;
/// Bytes at the start of a source file whose SHA-256 identifies it (with its length).
pub const FILE_HEAD_BYTES: usize = 1 << 20;

/// A source file and what identifies it: a resume refuses a file that changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub bytes: u64,
    /// SHA-256 (hex) of its first [`FILE_HEAD_BYTES`] bytes.
    pub head_sha256: String,
}

impl FileId {
    pub fn of(path: &Path) -> anyhow::Result<FileId> {
        let path = std::fs::canonicalize(path).with_context(|| format!("source file {}", path.display()))?;
        let mut f = std::fs::File::open(&path).with_context(|| format!("source file {}", path.display()))?;
        let bytes = f.metadata()?.len();
        let mut head = Vec::with_capacity(FILE_HEAD_BYTES.min(bytes as usize));
        (&mut f).take(FILE_HEAD_BYTES as u64).read_to_end(&mut head)?;
        Ok(FileId { path, bytes, head_sha256: hex(&Sha256::digest(&head)) })
    }

    /// Refuses a file that is not the one the job started with.
    pub fn check_unchanged(&self) -> anyhow::Result<()> {
        let now = FileId::of(&self.path)?;
        if now.bytes != self.bytes || now.head_sha256 != self.head_sha256 {
            anyhow::bail!(
                "source file {} changed since the job started ({} bytes then, {} now): a resume must read the same source; start a new job",
                self.path.display(),
                self.bytes,
                now.bytes
            );
        }
        Ok(())
    }
}

/// The source of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    Csv {
        files: Vec<FileId>,
        delimiter: u8,
        has_header: bool,
        null: Option<String>,
        columns: Option<Vec<String>>,
    },
    Jsonl {
        files: Vec<FileId>,
        columns: Vec<String>,
    },
    Postgres {
        /// The connection string without its password (given again at a resume, or by
        /// PGPASSWORD / ~/.pgpass).
        dsn: String,
        /// The query the rows are read with (`--table` becomes `SELECT * FROM t`), and the
        /// columns they are ordered by, so that a resume reads the same rows in the same order.
        query: String,
        order_by: Vec<String>,
    },
}

impl SourceSpec {
    pub fn files(&self) -> &[FileId] {
        match self {
            SourceSpec::Csv { files, .. } | SourceSpec::Jsonl { files, .. } => files,
            SourceSpec::Postgres { .. } => &[],
        }
    }

    /// A short description for messages: the file names, or the query.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Csv { files, .. } | SourceSpec::Jsonl { files, .. } => {
                files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
            }
            SourceSpec::Postgres { query, .. } => format!("PostgreSQL: {query}"),
        }
    }
}

/// How a job runs: kept with it so that a resume runs it the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub version: u32,
    pub tenant: String,
    pub table: String,
    pub source: SourceSpec,
    /// The mapping (TOML, docs/MIGRATION.md).
    pub mapping: String,
    pub reject_file: PathBuf,
    pub max_rejects: u64,
    /// Rows per batch (one ImportRows request per shard the batch's rows fall in).
    pub batch_rows: usize,
}

impl Spec {
    /// The families the mapping stores cells in, sorted: what verification covers.
    pub fn families(&self) -> anyhow::Result<Vec<String>> {
        let m = super::mapping::Mapping::parse_toml(&self.mapping)?;
        let mut fams: Vec<String> = m.columns.iter().filter_map(|c| c.cell.as_ref().map(|(f, _)| f.clone())).collect();
        fams.sort();
        fams.dedup();
        Ok(fams)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a spec encodes")
    }

    pub fn from_bytes(b: &[u8]) -> anyhow::Result<Spec> {
        let s: Spec = serde_json::from_slice(b).context("the job's spec")?;
        if s.version != SPEC_VERSION {
            anyhow::bail!("the job's spec is version {}, this kho reads version {SPEC_VERSION}", s.version);
        }
        Ok(s)
    }
}

/// Where a job is: everything before `(file, position)` is loaded (or rejected), and
/// `digest` is the digest of the rows loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The file being read (index in the spec's files; 0 for PostgreSQL).
    pub file: usize,
    /// Where the next record of that file starts; None: at its start.
    pub position: Option<Position>,
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
    /// Bytes of the source read (decompressed), for the rate.
    pub bytes_read: u64,
    /// Length of the reject file at this point: a resume cuts it there.
    pub reject_file_bytes: u64,
    pub digest: DigestJson,
    /// Every record read and loaded or rejected.
    #[serde(default)]
    pub finished: bool,
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint encodes")
    }

    pub fn from_bytes(b: &[u8]) -> anyhow::Result<Checkpoint> {
        if b.is_empty() {
            return Ok(Checkpoint::default());
        }
        serde_json::from_slice(b).context("the job's checkpoint")
    }
}

/// A [`TableDigest`] as JSON: the non-empty buckets as `[bucket, rows, cells, "sum hex"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DigestJson(pub Vec<(u8, u64, u64, String)>);

impl DigestJson {
    pub fn of(d: &TableDigest) -> DigestJson {
        DigestJson(
            d.buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| **b != Bucket::default())
                .map(|(i, b)| (i as u8, b.rows, b.cells, format!("{:032x}", b.sum)))
                .collect(),
        )
    }

    pub fn digest(&self) -> anyhow::Result<TableDigest> {
        let mut d = TableDigest::default();
        for (i, rows, cells, sum) in &self.0 {
            let sum = u128::from_str_radix(sum, 16).with_context(|| format!("checkpoint digest: bucket {i}: bad sum"))?;
            d.buckets[*i as usize] = Bucket { rows: *rows, cells: *cells, sum };
        }
        Ok(d)
    }
}

/// A digest answered by a node.
pub fn digest_from_pb(d: Option<&pb::TableDigest>) -> anyhow::Result<TableDigest> {
    let d = d.context("the node answered no digest")?;
    if d.buckets.len() != DIGEST_BUCKETS {
        anyhow::bail!("the node answered a digest of {} buckets, not {DIGEST_BUCKETS}", d.buckets.len());
    }
    let mut out = TableDigest::default();
    for (o, b) in out.buckets.iter_mut().zip(&d.buckets) {
        let sum: [u8; 16] = b.sum.as_slice().try_into().context("a digest bucket's sum is not 16 bytes")?;
        *o = Bucket { rows: b.rows, cells: b.cells, sum: u128::from_le_bytes(sum) };
    }
    Ok(out)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A new run id: 32 hex digits.
pub fn new_run_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

/// A job id from the table and the time: `citizens-20261206-071502`.
pub fn default_job_id(table: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{table}-{:04}{:02}{:02}-{:02}{:02}{:02}", now.year(), now.month() as u8, now.day(), now.hour(), now.minute(), now.second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_survives_its_json_form() {
        let mut d = TableDigest::default();
        d.buckets[3] = Bucket { rows: 2, cells: 9, sum: u128::MAX - 5 };
        d.buckets[255] = Bucket { rows: 1, cells: 1, sum: 7 };
        let j = DigestJson::of(&d);
        assert_eq!(j.0.len(), 2);
        let back: DigestJson = serde_json::from_slice(&serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(back.digest().unwrap(), d);
    }

    #[test]
    fn a_changed_file_is_refused_at_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,name\n1,An\n").unwrap();
        let id = FileId::of(&p).unwrap();
        id.check_unchanged().unwrap();
        std::fs::write(&p, "id,name\n1,Anh\n").unwrap();
        assert!(id.check_unchanged().unwrap_err().to_string().contains("changed since the job started"));
    }
}
