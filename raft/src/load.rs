//! Bulk loads (`kho load`, docs/MIGRATION.md): the load job records the meta group keeps,
//! and the order-independent digest of a table's rows that a load is verified with.
//!
//! System table 12 `load_jobs` (tenant 0): row = job id → [`LoadJob`] record (one format
//! byte, [`LOAD_JOB_RECORD_V1`], and the postcard encoding of the struct, its fields in
//! declaration order). The counter `load_jobs` (table `counters`, u64 BE) counts them.
//! The job's `spec` and `checkpoint` are the loader's own (JSON, docs/FORMATS.md): the
//! cluster keeps them, bounds them, and never reads them. Nothing here reads a clock.
//!
//! The digest (docs/FORMATS.md, "Load digest"): a row's digest is the SHA-256 of
//! `"kho-load-digest-v1"`, then the stored row key and, for each cell in stored order
//! (family id, then qualifier), its family name, qualifier and plaintext value, each as a
//! u32 big-endian length and the bytes. A table's digest is, per bucket (the first byte of
//! the SHA-256 of the stored row key), the count of rows and of cells and the wrapping sum
//! (mod 2^128) of the rows' digests' first 16 bytes read as a little-endian integer: the
//! same whatever the order rows are added in, so the loader's running digest and the one
//! the nodes compute over the stored table can be compared bucket by bucket.

use kho_engine::keys::{self, TableId, SYSTEM_TENANT};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::AppError;

pub const SYS_LOAD_JOBS: TableId = 12;
/// The counter of load jobs (table `counters`).
pub const LOAD_JOBS_COUNTER: &[u8] = b"load_jobs";
/// Format byte of a load job record.
pub const LOAD_JOB_RECORD_V1: u8 = 1;

/// Most load jobs the cluster keeps (finished ones included until forgotten), count.
pub const LOAD_JOBS_MAX: u64 = 10_000;
/// Longest job id, bytes.
pub const LOAD_JOB_ID_BYTES_MAX: usize = 64;
/// Largest `spec` of a job (the loader's description of its source and mapping), bytes.
pub const LOAD_JOB_SPEC_BYTES_MAX: usize = 64 << 10;
/// Largest `checkpoint` of a job (position, counts and digest so far), bytes.
pub const LOAD_JOB_CHECKPOINT_BYTES_MAX: usize = 64 << 10;
/// Longest `summary` of a job, bytes.
pub const LOAD_JOB_SUMMARY_BYTES_MAX: usize = 4 << 10;

/// Where a load job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadState {
    /// Created and not finished: a loader runs it, or one died and `--resume` continues it.
    Running,
    /// Every row read, loaded or rejected, and verified.
    Done,
    /// Stopped by an error the loader could not go past (too many rejects, a verification
    /// that failed, a source that changed); `summary` says which.
    Failed,
}

impl LoadState {
    pub fn name(self) -> &'static str {
        match self {
            LoadState::Running => "running",
            LoadState::Done => "done",
            LoadState::Failed => "failed",
        }
    }
}

/// A load job as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadJob {
    /// 1 to 64 bytes of a-z, 0-9, `-` and `_`.
    pub id: String,
    pub tenant: String,
    pub table: String,
    /// The principal that created the job (set by the node that proposes the creation).
    pub owner: String,
    /// The loader run that holds the job: 32 hex digits drawn by the loader. A resume takes
    /// the job over with a new run; an update from any other run is refused, so two
    /// loaders never interleave their checkpoints.
    pub run: String,
    pub state: LoadState,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub summary: String,
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub checkpoint: Vec<u8>,
}

/// What a [`crate::Command::PutLoadJob`] does with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadJobOp {
    /// A new job: refused if the id exists.
    Create,
    /// The run of `job` takes the job over (a resume): its spec, checkpoint and state are
    /// written; owner and creation time are kept.
    Takeover,
    /// A checkpoint or the end: refused unless `job.run` holds the job.
    Update,
    /// Forgets the job (`kho load forget`).
    Delete,
}

impl LoadJob {
    /// Checks the record's shape (the proposer checks it; the apply again).
    pub fn check(&self) -> Result<(), AppError> {
        check_job_id(&self.id)?;
        crate::catalog::check_name("tenant", &self.tenant)?;
        crate::catalog::check_name("table", &self.table)?;
        if !crate::access::is_session_id(&self.run) {
            return Err(AppError::invalid("job.run: must be 32 lowercase hex digits"));
        }
        for (field, len, max) in [
            ("job.spec", self.spec.len(), LOAD_JOB_SPEC_BYTES_MAX),
            ("job.checkpoint", self.checkpoint.len(), LOAD_JOB_CHECKPOINT_BYTES_MAX),
            ("job.summary", self.summary.len(), LOAD_JOB_SUMMARY_BYTES_MAX),
        ] {
            if len > max {
                return Err(AppError::invalid(format!("{field}: {len} bytes exceeds the limit of {max} bytes")));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![LOAD_JOB_RECORD_V1];
        out.extend(postcard::to_allocvec(self).expect("a load job encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<LoadJob, String> {
        match bytes.split_first() {
            Some((&LOAD_JOB_RECORD_V1, rest)) => postcard::from_bytes(rest).map_err(|e| format!("load job record: {e}")),
            Some((v, _)) => Err(format!("load job record: unknown format {v}")),
            None => Err("load job record: empty".into()),
        }
    }
}

/// A job id: 1 to [`LOAD_JOB_ID_BYTES_MAX`] bytes of a-z, 0-9, `-` and `_`.
pub fn check_job_id(id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty()
        && id.len() <= LOAD_JOB_ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(format!("job id `{id}` must be 1 to {LOAD_JOB_ID_BYTES_MAX} bytes of a-z, 0-9, - and _")))
    }
}

pub fn job_key(id: &str) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_LOAD_JOBS, id.as_bytes(), 0, b"")
}

/// The key range of every job record.
pub fn jobs_range() -> (Vec<u8>, Vec<u8>) {
    keys::row_range(SYSTEM_TENANT, SYS_LOAD_JOBS, b"", None, b"")
}

/// Buckets of a [`TableDigest`], count (a format number: never configurable).
pub const DIGEST_BUCKETS: usize = 256;
const DIGEST_DOMAIN: &[u8] = b"kho-load-digest-v1";

/// The digest of some rows of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub rows: u64,
    pub cells: u64,
    /// Wrapping sum of the rows' digests (their first 16 bytes, little-endian).
    pub sum: u128,
}

impl Bucket {
    pub fn add(&mut self, other: &Bucket) {
        self.rows += other.rows;
        self.cells += other.cells;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

/// The digest of a set of rows: [`DIGEST_BUCKETS`] buckets by row key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    pub buckets: Vec<Bucket>,
}

impl Default for TableDigest {
    fn default() -> Self {
        TableDigest { buckets: vec![Bucket::default(); DIGEST_BUCKETS] }
    }
}

impl TableDigest {
    pub fn add_row(&mut self, row: &RowDigest) {
        let b = &mut self.buckets[row.bucket as usize];
        b.rows += 1;
        b.cells += row.cells;
        b.sum = b.sum.wrapping_add(row.sum);
    }

    pub fn merge(&mut self, other: &TableDigest) {
        assert_eq!(other.buckets.len(), DIGEST_BUCKETS, "a digest has {DIGEST_BUCKETS} buckets");
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.add(b);
        }
    }

    /// All buckets together.
    pub fn total(&self) -> Bucket {
        let mut t = Bucket::default();
        for b in &self.buckets {
            t.add(b);
        }
        t
    }

    /// The buckets that differ from `other`'s.
    pub fn differing(&self, other: &TableDigest) -> Vec<u8> {
        (0..DIGEST_BUCKETS).filter(|&i| self.buckets.get(i) != other.buckets.get(i)).map(|i| i as u8).collect()
    }
}

/// One row's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDigest {
    pub bucket: u8,
    pub cells: u64,
    pub sum: u128,
}

/// The bucket of a stored row key.
pub fn bucket_of(stored_row: &[u8]) -> u8 {
    Sha256::digest(stored_row)[0]
}

/// Computes one row's digest from its cells, given in stored order.
pub struct RowHasher {
    sha: Sha256,
    bucket: u8,
    cells: u64,
}

impl RowHasher {
    pub fn new(stored_row: &[u8]) -> RowHasher {
        let mut sha = Sha256::new();
        sha.update(DIGEST_DOMAIN);
        put(&mut sha, stored_row);
        RowHasher { sha, bucket: bucket_of(stored_row), cells: 0 }
    }

    pub fn cell(&mut self, family: &str, qualifier: &[u8], value: &[u8]) {
        put(&mut self.sha, family.as_bytes());
        put(&mut self.sha, qualifier);
        put(&mut self.sha, value);
        self.cells += 1;
    }

    pub fn finish(self) -> RowDigest {
        let h = self.sha.finalize();
        let sum = u128::from_le_bytes(h[..16].try_into().expect("16 bytes"));
        RowDigest { bucket: self.bucket, cells: self.cells, sum }
    }
}

fn put(sha: &mut Sha256, bytes: &[u8]) {
    sha.update((bytes.len() as u32).to_be_bytes());
    sha.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &[u8], cells: &[(&str, &[u8], &[u8])]) -> RowDigest {
        let mut h = RowHasher::new(key);
        for (f, q, v) in cells {
            h.cell(f, q, v);
        }
        h.finish()
    }

    #[test]
    fn a_table_digest_does_not_depend_on_row_order_but_on_every_byte() {
        let rows = [
            row(b"a", &[("p", b"name", b"Nguy\xe1\xbb\x85n")]),
            row(b"b", &[("p", b"name", b"Tr\xe1\xba\xa7n"), ("p", b"year", b"1990")]),
            row(b"c", &[]),
        ];
        let mut forward = TableDigest::default();
        rows.iter().for_each(|r| forward.add_row(r));
        let mut backward = TableDigest::default();
        rows.iter().rev().for_each(|r| backward.add_row(r));
        assert_eq!(forward, backward);
        assert_eq!(forward.total().rows, 3);
        assert_eq!(forward.total().cells, 3);

        // A changed value, a value moved to another qualifier, a renamed row: all differ.
        for changed in [
            row(b"b", &[("p", b"name", b"Tr\xe1\xba\xa7n"), ("p", b"year", b"1991")]),
            row(b"b", &[("p", b"name", b"Tr\xe1\xba\xa7n"), ("p", b"yea", b"r1990")]),
            row(b"bb", &[("p", b"name", b"Tr\xe1\xba\xa7n"), ("p", b"year", b"1990")]),
        ] {
            let mut other = TableDigest::default();
            [rows[0], changed, rows[2]].iter().for_each(|r| other.add_row(r));
            assert_ne!(other, forward);
            assert!(!forward.differing(&other).is_empty());
        }
    }

    #[test]
    fn the_documented_row_digest_example_holds() {
        // docs/FORMATS.md, "Load digest": row `a`, one cell `p:name = x`.
        let mut input = b"kho-load-digest-v1".to_vec();
        for part in [&b"a"[..], b"p", b"name", b"x"] {
            input.extend((part.len() as u32).to_be_bytes());
            input.extend(part);
        }
        let sha = Sha256::digest(&input);
        let d = row(b"a", &[("p", b"name", b"x")]);
        assert_eq!(d.sum, u128::from_le_bytes(sha[..16].try_into().unwrap()));
        assert_eq!(d.bucket, Sha256::digest(b"a")[0]);
        assert_eq!(d.cells, 1);
    }

    #[test]
    fn merged_digests_equal_one_digest_of_all_rows() {
        let (a, b) = (row(b"x", &[("f", b"q", b"1")]), row(b"y", &[("f", b"q", b"2")]));
        let (mut one, mut left, mut right) = (TableDigest::default(), TableDigest::default(), TableDigest::default());
        one.add_row(&a);
        one.add_row(&b);
        left.add_row(&a);
        right.add_row(&b);
        left.merge(&right);
        assert_eq!(one, left);
        assert_eq!(one.differing(&left), Vec::<u8>::new());
    }

    #[test]
    fn job_records_round_trip_and_are_checked() {
        let job = LoadJob {
            id: "citizens-2026".into(),
            tenant: "population".into(),
            table: "citizens".into(),
            owner: "admin".into(),
            run: "0123456789abcdef0123456789abcdef".into(),
            state: LoadState::Running,
            created_at_ms: 1,
            updated_at_ms: 2,
            summary: String::new(),
            spec: b"{}".to_vec(),
            checkpoint: vec![],
        };
        job.check().unwrap();
        assert_eq!(LoadJob::decode(&job.encode()).unwrap(), job);
        assert!(LoadJob { id: "Bad Id".into(), ..job.clone() }.check().is_err());
        assert!(LoadJob { run: "x".into(), ..job.clone() }.check().is_err());
        let big = LoadJob { checkpoint: vec![0; LOAD_JOB_CHECKPOINT_BYTES_MAX + 1], ..job.clone() };
        assert!(big.check().unwrap_err().message.contains("job.checkpoint"));
    }
}
