//! Verifying a load: the digest of the source's rows (kept by the job as it loaded them, or
//! computed again from the source) against the digest the nodes compute over the stored
//! table (`ChecksumTable`). When they differ, the rows of a few differing buckets are
//! listed on both sides, so that the verdict names rows: missing, different, or in the
//! table but not in the source.

use std::collections::BTreeMap;
use std::sync::Arc;

use kho_proto::v1 as pb;
use kho_raft::load::TableDigest;

use super::cmd::checksum;
use super::job::{digest_from_pb, Checkpoint, Spec};
use super::run::{self, Cluster, ReadMode};

/// Differing buckets whose rows are listed to name rows, count.
const SAMPLE_BUCKETS_MAX: usize = 4;
/// Rows named in a failed verdict, count.
const SAMPLES_MAX: usize = 10;

pub struct Verdict {
    pub passed: bool,
    /// `passed: …` or `FAILED: …`, naming sample rows.
    pub text: String,
}

/// A source row of a listed bucket: its key as read, where it came from, its digest.
struct SourceRow {
    key: Vec<u8>,
    origin: String,
    digest: Vec<u8>,
}

/// Compares the source's digest (`loaded`, or recomputed from the source with
/// `from_source`) with the table's.
pub async fn verify(cl: &Arc<Cluster>, spec: &Spec, loaded: &TableDigest, from_source: bool) -> anyhow::Result<Verdict> {
    let families = spec.families()?;
    let mut source = if from_source { read_source_digests(cl, spec, &[]).await?.0 } else { loaded.clone() };
    let resp = checksum(cl, &spec.tenant, &spec.table, &families, &[]).await?;
    let table = digest_from_pb(resp.digest.as_ref())?;
    let passed = |t: &TableDigest, note: &str| Verdict {
        passed: true,
        text: format!(
            "passed: {} rows, {} cells, digest {:032x} (the table's computed by node {} over {} shard{}){note}",
            t.total().rows,
            t.total().cells,
            t.total().sum,
            resp.node_id,
            resp.shards,
            if resp.shards == 1 { "" } else { "s" }
        ),
    };
    if source == table {
        return Ok(passed(&table, ""));
    }
    if !from_source {
        // The job's own record disagrees with the table: the source, read again, decides.
        source = read_source_digests(cl, spec, &[]).await?.0;
        if source == table {
            return Ok(passed(
                &table,
                "; the job's recorded digest differed from the source's, read again, which the table matches (a fault of the loader's accounting)",
            ));
        }
    }
    let (s, t) = (source.total(), table.total());
    let differing = source.differing(&table);
    let buckets: Vec<u8> = differing.iter().copied().take(SAMPLE_BUCKETS_MAX).collect();
    let listed = checksum(cl, &spec.tenant, &spec.table, &families, &buckets).await?;
    let (_, listing) = read_source_digests(cl, spec, &buckets).await?;
    // A listing cut short (the table's by the nodes' bounds, the source's by
    // SOURCE_ROWS_LISTED_MAX) names rows only where both sides are complete: up to the
    // table's last listed key, and no "not in the source" once the source's was cut.
    let table_cut = listed.rows_truncated.then(|| listed.rows.last().map(|r| r.stored_key.clone()).unwrap_or_default());
    let mut stored: BTreeMap<Vec<u8>, Vec<u8>> = listed.rows.into_iter().map(|r| (r.stored_key, r.digest)).collect();
    let mut samples = listing.duplicates.clone();
    for (stored_key, row) in &listing.rows {
        if table_cut.as_ref().is_some_and(|cut| stored_key > cut) {
            continue;
        }
        match stored.remove(stored_key) {
            None => samples.push(format!("row {} ({}) is missing from the table", show(&row.key), row.origin)),
            Some(d) if d != row.digest => samples.push(format!("row {} ({}) differs from the source", show(&row.key), row.origin)),
            Some(_) => {}
        }
    }
    if !listing.truncated {
        for k in stored.keys() {
            samples.push(format!("row stored as {} is not in the source", show(k)));
        }
    }
    let named = samples.len();
    samples.truncate(SAMPLES_MAX);
    let rows_text = if samples.is_empty() {
        "no row named (the rows of the differing buckets are the same on both sides now: the table or the source changed while verifying)"
            .to_string()
    } else {
        format!("{}{}", samples.join("; "), if named > SAMPLES_MAX { format!("; and {} more", named - SAMPLES_MAX) } else { String::new() })
    };
    Ok(Verdict {
        passed: false,
        text: format!(
            "FAILED: the source has {} rows and {} cells, the table {} rows and {} cells; {} of 256 buckets differ; {rows_text}",
            s.rows,
            s.cells,
            t.rows,
            t.cells,
            differing.len()
        ),
    })
}

/// `show` a key: text when it is printable UTF-8, else hex.
fn show(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) if !s.chars().any(char::is_control) => format!("`{s}`"),
        _ => format!("0x{}", super::job::hex(k)),
    }
}

/// The source's rows of the listed buckets, by stored key.
#[derive(Default)]
struct SourceListing {
    rows: BTreeMap<Vec<u8>, SourceRow>,
    /// Rows of the listed buckets whose key the source holds twice, as verdict lines.
    duplicates: Vec<String>,
    /// More rows of the listed buckets than [`SOURCE_ROWS_LISTED_MAX`]: the rest is not kept.
    truncated: bool,
}

/// Most source rows kept to name the rows that differ, count.
const SOURCE_ROWS_LISTED_MAX: usize = 100_000;

/// Reads the whole source again and asks the nodes for the digest of its rows as they
/// would be stored (`ImportRows` with `digest_only`: only the nodes can hash a table's
/// hashed row keys), with the rows of `buckets` by stored key.
async fn read_source_digests(cl: &Arc<Cluster>, spec: &Spec, buckets: &[u8]) -> anyhow::Result<(TableDigest, SourceListing)> {
    let (mut rx, reader) = run::spawn_reader(spec, &Checkpoint::default(), ReadMode::Verify);
    let mut digest = TableDigest::default();
    let mut listing = SourceListing::default();
    let mut failure = None;
    while let Some(batch) = rx.recv().await {
        if batch.rows.is_empty() {
            continue;
        }
        let req = pb::ImportRowsRequest {
            tenant: spec.tenant.clone(),
            table: spec.table.clone(),
            rows: batch.rows.iter().map(run::to_pb).collect(),
            digest_only: true,
            list_buckets: buckets.iter().map(|b| *b as u32).collect(),
            sst: false,
        };
        let mut req = tonic::Request::new(req);
        req.set_timeout(std::time::Duration::from_millis(run::CHECKSUM_TIMEOUT_MS));
        let resp = match cl.load().await.import_rows(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context("computing the source's digest (ImportRows, digest_only)"));
                break;
            }
        };
        digest.merge(&digest_from_pb(resp.digest.as_ref())?);
        for r in resp.rows {
            let i = r.index as usize;
            let (Some(row), Some((file, line))) = (batch.rows.get(i), batch.origins.get(i)) else { continue };
            let origin = match spec.source {
                super::job::SourceSpec::Postgres { .. } => format!("source row {line}"),
                _ => format!("{}:{line}", run::part_name(&spec.source, *file)),
            };
            if let Some(first) = listing.rows.get(&r.stored_key) {
                listing.duplicates.push(format!("row {} appears twice in the source ({} and {})", show(&row.key), first.origin, origin));
                continue;
            }
            if listing.rows.len() == SOURCE_ROWS_LISTED_MAX {
                listing.truncated = true;
                continue;
            }
            listing.rows.insert(r.stored_key, SourceRow { key: row.key.clone(), origin, digest: r.digest });
        }
    }
    drop(rx);
    let read = reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    if let Some(e) = failure {
        return Err(e);
    }
    read?;
    Ok((digest, listing))
}
