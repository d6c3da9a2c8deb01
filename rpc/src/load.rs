//! The `kho.v1.Load` service: bulk loads (docs/MIGRATION.md). Rows are written through the
//! same resolution, routing and proposal as `MutateRow` ([`DataService::propose_write`]),
//! many rows of one shard per proposal; the digests a load is verified with are computed
//! by [`kho_raft::load`]; load jobs are meta-group records.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kho_engine::keys;
use kho_proto::v1::load_server::Load;
use kho_proto::v1::{self as pb};
use kho_raft::access::Perm;
use kho_raft::catalog::TableMeta;
use kho_raft::cells::TableAccess;
use kho_raft::keyring::TenantKeys;
use kho_raft::load::{self as jobs, LoadJob, LoadJobOp, LoadState, RowHasher, TableDigest};
use kho_raft::{Command, WriteOp};
use tonic::{Request, Response, Status};

use crate::ctx::{Ctx, Kind, Leader, Origin};
use crate::data::{family_name, gate_order, need_named, need_ops, scan_cells, DataService};
use crate::{forward, status, validate};

/// Most cells one `ImportRows` request carries, count.
pub const IMPORT_CELLS_MAX: usize = 100_000;
/// Rows `ChecksumTable` lists when `list_rows_max` is 0, count.
pub const CHECKSUM_LIST_ROWS_DEFAULT: usize = 10_000;
/// Most rows `ChecksumTable` lists, count.
pub const CHECKSUM_LIST_ROWS_MAX: usize = 100_000;
/// Longest a `ChecksumTable` reads, ms.
pub const CHECKSUM_DURATION_MAX_MS: u64 = 3_600_000;
/// How often (in cells) a `ChecksumTable` checks whether its client went away and its time.
const CHECKSUM_CHECK_EVERY_CELLS: u64 = 4_096;
/// A listed row's bytes beyond its key, for the listing's bound.
const ROW_DIGEST_BYTES: usize = 48;

/// Sets its flag when dropped: a blocking job sees that the request it serves is gone.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Most jobs `ListLoadJobs` answers, count (the cluster keeps at most
/// [`jobs::LOAD_JOBS_MAX`]).
pub const LIST_LOAD_JOBS_MAX: usize = 10_000;

pub struct LoadService {
    pub ctx: Arc<Ctx>,
}

impl LoadService {
    fn data(&self) -> DataService {
        DataService { ctx: self.ctx.clone() }
    }
}

/// Checks an `ImportRows` request and turns its rows into puts.
fn import_ops(limits: &crate::config::Limits, r: &pb::ImportRowsRequest) -> Result<Vec<WriteOp>, Status> {
    if r.rows.is_empty() {
        return Err(Status::invalid_argument("rows: must not be empty"));
    }
    let cells: usize = r.rows.iter().map(|row| row.cells.len()).sum();
    if cells > IMPORT_CELLS_MAX {
        return Err(Status::invalid_argument(format!(
            "rows: {cells} cells exceed the limit of {IMPORT_CELLS_MAX} cells per request (IMPORT_CELLS_MAX)"
        )));
    }
    for b in &r.list_buckets {
        if *b as usize >= jobs::DIGEST_BUCKETS {
            return Err(Status::invalid_argument(format!("list_buckets: {b} is not a bucket (0 to 255)")));
        }
    }
    let mut ops = Vec::with_capacity(cells);
    let mut bytes = 0u64;
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(r.rows.len());
    let mut first_at: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for (i, row) in r.rows.iter().enumerate() {
        validate::key(limits, &format!("rows[{i}].key"), &row.key)?;
        if let Some(j) = first_at.insert(&row.key, i) {
            return Err(Status::invalid_argument(format!("rows[{i}].key: repeats rows[{j}].key (one row key once per request)")));
        }
        if row.cells_withheld {
            return Err(Status::invalid_argument(format!("rows[{i}].cells_withheld: must be unset")));
        }
        if row.cells.is_empty() {
            return Err(Status::invalid_argument(format!("rows[{i}].cells: a row needs at least one cell")));
        }
        seen.clear();
        let mut names: HashSet<(&str, &[u8])> = HashSet::with_capacity(row.cells.len());
        for (k, c) in row.cells.iter().enumerate() {
            validate::family(&format!("rows[{i}].cells[{k}].family"), &c.family)?;
            validate::qualifier(limits, &format!("rows[{i}].cells[{k}].qualifier"), &c.qualifier)?;
            validate::value(limits, &format!("rows[{i}].cells[{k}].value"), &c.value)?;
            if !names.insert((c.family.as_str(), c.qualifier.as_slice())) {
                return Err(Status::invalid_argument(format!(
                    "rows[{i}].cells[{k}]: repeats the cell {}:{} of the row",
                    c.family,
                    String::from_utf8_lossy(&c.qualifier)
                )));
            }
            bytes += stored_cell_bytes(&row.key, &c.qualifier, &c.value);
            ops.push(WriteOp::Put {
                row: row.key.clone(),
                family: c.family.clone(),
                qualifier: c.qualifier.clone(),
                value: c.value.clone(),
            });
        }
    }
    if bytes > limits.batch_bytes_max {
        return Err(Status::invalid_argument(format!(
            "rows: {bytes} bytes as stored (each cell's key holds its row key; values carry a header or seal) exceed the limit of {} bytes \
             (limits.batch_bytes_max): send fewer rows per request",
            limits.batch_bytes_max
        )));
    }
    Ok(ops)
}

/// A stored cell's bytes in the worst case, beyond its row key, qualifier and value: the
/// data key's tenant, table and family ids and escape bytes, and the value's header or
/// seal (key version, nonce, tag).
pub const STORED_CELL_OVERHEAD_BYTES: u64 = 64;

/// What one cell of a request costs in the write's Raft entry, at most: its row key
/// (escaped: at most twice its length), qualifier, value and [`STORED_CELL_OVERHEAD_BYTES`].
/// Bounding a request by this bounds its entry, so that it stays under the message limit
/// between nodes.
pub fn stored_cell_bytes(row: &[u8], qualifier: &[u8], value: &[u8]) -> u64 {
    2 * row.len() as u64 + (qualifier.len() + value.len()) as u64 + STORED_CELL_OVERHEAD_BYTES
}

/// `INVALID_ARGUMENT` for a row that names one cell twice (a family by its name and as ""
/// for the table's first family).
fn no_cell_twice(meta: &TableMeta, r: &pb::ImportRowsRequest) -> Result<(), Status> {
    for (i, row) in r.rows.iter().enumerate() {
        let mut names: HashSet<(&str, &[u8])> = HashSet::with_capacity(row.cells.len());
        for (k, c) in row.cells.iter().enumerate() {
            if !names.insert((family_name(meta, &c.family), c.qualifier.as_slice())) {
                return Err(Status::invalid_argument(format!(
                    "rows[{i}].cells[{k}]: repeats the cell {}:{} of the row",
                    family_name(meta, &c.family),
                    String::from_utf8_lossy(&c.qualifier)
                )));
            }
        }
    }
    Ok(())
}

/// The digest of a request's rows as they are (or would be) stored, and the rows of the
/// listed buckets. Cells hash in stored order: family id, then qualifier.
fn digest_rows(
    meta: &TableMeta,
    keys: Option<&TenantKeys>,
    r: &pb::ImportRowsRequest,
) -> Result<(TableDigest, Vec<pb::RowDigest>), Status> {
    let access = TableAccess { meta, keys };
    let listed: HashSet<u32> = r.list_buckets.iter().copied().collect();
    let mut digest = TableDigest::default();
    let mut rows = Vec::new();
    for (i, row) in r.rows.iter().enumerate() {
        let stored = access.stored_row(&row.key).map_err(status::app_error)?;
        let mut cells = Vec::with_capacity(row.cells.len());
        for c in &row.cells {
            let family = family_name(meta, &c.family);
            let id = access.family(family).map_err(status::app_error)?;
            cells.push((id, family, c.qualifier.as_slice(), c.value.as_slice()));
        }
        cells.sort_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
        let mut h = RowHasher::new(&stored);
        for (_, family, q, v) in cells {
            h.cell(family, q, v);
        }
        let d = h.finish();
        digest.add_row(&d);
        if listed.contains(&(d.bucket as u32)) {
            rows.push(row_digest(stored, &d, i as u32));
        }
    }
    Ok((digest, rows))
}

fn row_digest(stored_key: Vec<u8>, d: &jobs::RowDigest, index: u32) -> pb::RowDigest {
    pb::RowDigest { stored_key, bucket: d.bucket as u32, cells: d.cells, digest: d.sum.to_le_bytes().to_vec(), index }
}

pub fn digest_to_pb(d: &TableDigest) -> pb::TableDigest {
    pb::TableDigest {
        buckets: d.buckets.iter().map(|b| pb::DigestBucket { rows: b.rows, cells: b.cells, sum: b.sum.to_le_bytes().to_vec() }).collect(),
    }
}

fn job_from_pb(j: &pb::LoadJob) -> Result<LoadJob, Status> {
    let state = match pb::LoadJobState::try_from(j.state) {
        Ok(pb::LoadJobState::Running) => LoadState::Running,
        Ok(pb::LoadJobState::Done) => LoadState::Done,
        Ok(pb::LoadJobState::Failed) => LoadState::Failed,
        Err(_) => return Err(Status::invalid_argument(format!("job.state: unknown value {}", j.state))),
    };
    Ok(LoadJob {
        id: j.id.clone(),
        tenant: j.tenant.clone(),
        table: j.table.clone(),
        owner: String::new(),
        run: j.run.clone(),
        state,
        created_at_ms: 0,
        updated_at_ms: 0,
        summary: j.summary.clone(),
        spec: j.spec.clone(),
        checkpoint: j.checkpoint.clone(),
    })
}

fn job_to_pb(j: LoadJob, full: bool) -> pb::LoadJob {
    let state = match j.state {
        LoadState::Running => pb::LoadJobState::Running,
        LoadState::Done => pb::LoadJobState::Done,
        LoadState::Failed => pb::LoadJobState::Failed,
    };
    pb::LoadJob {
        id: j.id,
        tenant: j.tenant,
        table: j.table,
        owner: j.owner,
        run: j.run,
        state: state as i32,
        created_unix_ms: j.created_at_ms,
        updated_unix_ms: j.updated_at_ms,
        summary: j.summary,
        spec: if full { j.spec } else { Vec::new() },
        checkpoint: if full { j.checkpoint } else { Vec::new() },
    }
}

impl LoadService {
    /// `ChecksumTable` where this node holds every shard of the table (after their read
    /// barriers), or forwarded to a node that does.
    async fn checksum_once(
        &self,
        r: &pb::ChecksumTableRequest,
        rows_max: usize,
        origin: Origin,
    ) -> Result<Response<pb::ChecksumTableResponse>, Status> {
        let d = self.data();
        let origin = &origin;
        let view = d.view(origin, Perm::Read, &r.tenant, &r.table).await?;
        let (meta, tenant_keys) = d.table_access(&r.tenant, &r.table, origin, Kind::Read).await?;
        let mut fams = Vec::new();
        for f in &r.families {
            fams.push(meta.family_id(f).ok_or_else(|| {
                Status::not_found(format!("column family `{f}` does not exist in table `{}/{}`", meta.tenant, meta.name))
            })?);
        }
        // The digest covers every cell of the families it names: the caller must be able to
        // read them all.
        let named: Vec<String> = if r.families.is_empty() { meta.families.clone() } else { r.families.clone() };
        for f in &named {
            if !view.whole_family(f) {
                return Err(d.deny(
                    origin,
                    &meta.tenant,
                    &meta.name,
                    crate::auth::missing(&origin.caller, Perm::Read, &meta.tenant, &meta.name, Some(f), None),
                ));
            }
        }
        need_named(origin, &view, &meta, &r.families, &[]).map_err(|s| d.deny(origin, &meta.tenant, &meta.name, s))?;
        let (start, end) = keys::row_range(meta.tenant_id, meta.id, b"", None, b"");
        let groups = match d.read_shards(&start, &end, pb::ReadConsistency::Linearizable as i32, origin).await? {
            Leader::There(to) => return forward!(self.ctx, load_client, to, checksum_table, r.clone()),
            Leader::Here(groups) => groups,
        };
        d.audit_read(origin, &meta, |a| {
            a.families = r.families.clone();
            a.reason = "checksum of the table".into();
        })
        .await?;
        let shards = groups.len() as u32;
        let states = gate_order(&groups);
        let engine = self.ctx.node.engine().clone();
        let listed: HashSet<u32> = r.list_buckets.iter().copied().collect();
        let node_id = self.ctx.node.id;
        // The listing is bounded by bytes too: half the message limit.
        let list_bytes_max = self.ctx.limits.grpc_message_bytes_max as usize / 2;
        // The scan stops when the client goes away (this future is dropped) or after
        // CHECKSUM_DURATION_MAX_MS: a scan thread is never held for nothing.
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        let started = Instant::now();
        self.ctx
            .scans
            .run(move || -> Result<pb::ChecksumTableResponse, Status> {
                let mut digest = TableDigest::default();
                let mut rows = Vec::new();
                let mut list_bytes = 0usize;
                let mut truncated = false;
                let mut current: Option<(Vec<u8>, RowHasher)> = None;
                let mut finish = |cur: Option<(Vec<u8>, RowHasher)>, rows: &mut Vec<pb::RowDigest>| {
                    if let Some((key, h)) = cur {
                        let d = h.finish();
                        digest.add_row(&d);
                        if listed.contains(&(d.bucket as u32)) {
                            if rows.len() < rows_max && list_bytes + key.len() + ROW_DIGEST_BYTES <= list_bytes_max {
                                list_bytes += key.len() + ROW_DIGEST_BYTES;
                                rows.push(row_digest(key, &d, 0));
                            } else {
                                truncated = true;
                            }
                        }
                    }
                };
                let mut cells = 0u64;
                scan_cells(&engine, &states, tenant_keys.as_deref(), &start, &end, |dk, payload| {
                    cells += 1;
                    if cells.is_multiple_of(CHECKSUM_CHECK_EVERY_CELLS) {
                        if cancelled.load(Ordering::Relaxed) {
                            return Err(Status::cancelled("the client went away"));
                        }
                        if started.elapsed() > Duration::from_millis(CHECKSUM_DURATION_MAX_MS) {
                            return Err(Status::deadline_exceeded(format!(
                                "ChecksumTable read for more than {CHECKSUM_DURATION_MAX_MS} ms (CHECKSUM_DURATION_MAX_MS); nothing was answered"
                            )));
                        }
                    }
                    if !fams.is_empty() && !fams.contains(&dk.family) {
                        return Ok(true);
                    }
                    if current.as_ref().is_none_or(|(k, _)| *k != dk.row) {
                        finish(current.take(), &mut rows);
                        let h = RowHasher::new(&dk.row);
                        current = Some((dk.row, h));
                    }
                    let family = meta.family_name(dk.family).unwrap_or_default();
                    current.as_mut().expect("a row is open").1.cell(family, &dk.qualifier, payload);
                    Ok(true)
                })?;
                finish(current.take(), &mut rows);
                Ok(pb::ChecksumTableResponse { digest: Some(digest_to_pb(&digest)), rows, rows_truncated: truncated, node_id, shards })
            })
            .await?
            .map(Response::new)
    }

    /// The digest of a request's rows ([`digest_rows`]), on a read thread: hashing up to
    /// 100,000 cells (and a keyed hash per row key) is no work for an async worker.
    async fn digest(
        &self,
        meta: TableMeta,
        keys: Option<Arc<TenantKeys>>,
        r: Arc<pb::ImportRowsRequest>,
    ) -> Result<(TableDigest, Vec<pb::RowDigest>), Status> {
        self.ctx.reads.run(move || digest_rows(&meta, keys.as_deref(), &r)).await?
    }

    /// Whether the caller may see and run load job `job`: its owner, or a cluster admin.
    fn owns(origin: &Origin, job: &LoadJob) -> bool {
        origin.caller.cluster_admin || job.owner == origin.caller.name
    }

    /// The job `id` as this node's replica of the meta group holds it.
    async fn read_job(&self, id: &str) -> Result<Option<LoadJob>, Status> {
        let engine = self.ctx.node.engine().clone();
        let key = jobs::job_key(id);
        self.ctx
            .reads
            .run(move || -> Result<Option<LoadJob>, Status> {
                match engine.get_value(&key).map_err(status::engine_error)? {
                    Some(v) => Ok(Some(LoadJob::decode(&v).map_err(status::internal)?)),
                    None => Ok(None),
                }
            })
            .await?
    }
}

#[tonic::async_trait]
impl Load for LoadService {
    async fn import_rows(&self, req: Request<pb::ImportRowsRequest>) -> Result<Response<pb::ImportRowsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = Arc::new(req.into_inner());
        let d = self.data();
        d.check_table_names(&r.tenant, &r.table)?;
        let ops = import_ops(&self.ctx.limits, &r)?;
        if r.digest_only {
            let view = d.view(&origin, Perm::Write, &r.tenant, &r.table).await?;
            let (meta, keys) = d.table_access(&r.tenant, &r.table, &origin, Kind::Read).await?;
            need_ops(&origin, &view, &meta, &ops).map_err(|s| d.deny(&origin, &meta.tenant, &meta.name, s))?;
            no_cell_twice(&meta, &r)?;
            let (digest, rows) = self.digest(meta, keys, r.clone()).await?;
            return Ok(Response::new(pb::ImportRowsResponse { header: None, digest: Some(digest_to_pb(&digest)), rows }));
        }
        let (r, ops, d) = (&r, &ops, &d);
        self.ctx
            .routed(&origin, |origin| async move {
                // Authorized from the names first, then the table looked up.
                d.view(&origin, Perm::Write, &r.tenant, &r.table).await?;
                let (meta, _) = d.table_access(&r.tenant, &r.table, &origin, Kind::Write).await?;
                no_cell_twice(&meta, r)?;
                match d.propose_write_as(&r.tenant, &r.table, ops.clone(), &origin, r.sst).await? {
                    Leader::Here(w) => {
                        let (meta, keys) = d.access(&r.tenant, &r.table)?;
                        let (digest, rows) = self.digest(meta, keys, r.clone()).await?;
                        Ok(Response::new(pb::ImportRowsResponse { header: Some(w.header()), digest: Some(digest_to_pb(&digest)), rows }))
                    }
                    Leader::There(to) => forward!(self.ctx, load_client, to, import_rows, (**r).clone()),
                }
            })
            .await
    }

    async fn checksum_table(&self, req: Request<pb::ChecksumTableRequest>) -> Result<Response<pb::ChecksumTableResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.data().check_table_names(&r.tenant, &r.table)?;
        for f in &r.families {
            validate::name("families", f)?;
        }
        for b in &r.list_buckets {
            if *b as usize >= jobs::DIGEST_BUCKETS {
                return Err(Status::invalid_argument(format!("list_buckets: {b} is not a bucket (0 to 255)")));
            }
        }
        let rows_max = match r.list_rows_max as usize {
            0 => CHECKSUM_LIST_ROWS_DEFAULT,
            n if n > CHECKSUM_LIST_ROWS_MAX => {
                return Err(Status::invalid_argument(format!("list_rows_max: {n} exceeds the limit of {CHECKSUM_LIST_ROWS_MAX} rows")))
            }
            n => n,
        };
        self.ctx.routed(&origin, |origin| self.checksum_once(&r, rows_max, origin)).await
    }

    async fn put_load_job(&self, req: Request<pb::PutLoadJobRequest>) -> Result<Response<pb::PutLoadJobResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        let j = r.job.as_ref().ok_or_else(|| Status::invalid_argument("job: must be set"))?;
        let op = match pb::LoadJobOp::try_from(r.op) {
            Ok(pb::LoadJobOp::Create) => LoadJobOp::Create,
            Ok(pb::LoadJobOp::Takeover) => LoadJobOp::Takeover,
            Ok(pb::LoadJobOp::Update) => LoadJobOp::Update,
            Ok(pb::LoadJobOp::Delete) => LoadJobOp::Delete,
            Err(_) => return Err(Status::invalid_argument(format!("op: unknown value {}", r.op))),
        };
        let mut job = job_from_pb(j)?;
        job.check().map_err(status::app_error)?;
        // A load writes and verifies the whole table: only a principal that may write all
        // of it runs one (and the job's owner, checked at apply, or a cluster admin).
        let view = self.data().view(&origin, Perm::Write, &job.tenant, &job.table).await?;
        if !view.whole_table() {
            return Err(Status::permission_denied(format!(
                "principal `{}`: a load job needs write on the whole table `{}/{}` (a load is verified against the whole table)",
                origin.caller.name, job.tenant, job.table
            )));
        }
        job.owner = origin.caller.name.clone();
        job.updated_at_ms = crate::auth::now_ms();
        let by_admin = origin.caller.cluster_admin;
        match self.ctx.propose(Command::PutLoadJob { job, op, by_admin }, &origin).await? {
            Leader::Here(resp) => match resp.outcome {
                kho_raft::command::Outcome::Rejected(e) => Err(status::app_error(e)),
                _ => Ok(Response::new(pb::PutLoadJobResponse {})),
            },
            Leader::There(to) => forward!(self.ctx, load_client, to, put_load_job, r),
        }
    }

    async fn get_load_job(&self, req: Request<pb::GetLoadJobRequest>) -> Result<Response<pb::GetLoadJobResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        jobs::check_job_id(&r.id).map_err(status::app_error)?;
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, load_client, to, get_load_job, r);
        }
        let job = self.read_job(&r.id).await?.filter(|j| Self::owns(&origin, j));
        let job = job.ok_or_else(|| Status::not_found(format!("load job `{}` does not exist (or is another principal's)", r.id)))?;
        Ok(Response::new(pb::GetLoadJobResponse { job: Some(job_to_pb(job, true)) }))
    }

    async fn list_load_jobs(&self, req: Request<pb::ListLoadJobsRequest>) -> Result<Response<pb::ListLoadJobsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if !r.tenant.is_empty() {
            validate::name("tenant", &r.tenant)?;
        }
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, load_client, to, list_load_jobs, r);
        }
        let engine = self.ctx.node.engine().clone();
        let tenant = r.tenant.clone();
        let all = self
            .ctx
            .reads
            .run(move || -> Result<Vec<LoadJob>, Status> {
                let (start, end) = jobs::jobs_range();
                let mut out = Vec::new();
                let mut failure = None;
                engine
                    .snapshot()
                    .for_each(kho_engine::Cf::Data, &start, Some(&end), |k, v| {
                        let job = kho_engine::value::decode_value(k, v).map_err(|e| e.to_string()).and_then(LoadJob::decode);
                        match job {
                            Ok(j) if tenant.is_empty() || j.tenant == tenant => {
                                out.push(LoadJob { spec: Vec::new(), checkpoint: Vec::new(), ..j });
                                Ok(out.len() < LIST_LOAD_JOBS_MAX)
                            }
                            Ok(_) => Ok(true),
                            Err(e) => {
                                failure = Some(status::internal(e));
                                Ok(false)
                            }
                        }
                    })
                    .map_err(status::engine_error)?;
                failure.map_or(Ok(out), Err)
            })
            .await??;
        // A job is listed to its owner (and to cluster admins).
        let jobs_out = all.into_iter().filter(|j| Self::owns(&origin, j)).map(|j| job_to_pb(j, false)).collect();
        Ok(Response::new(pb::ListLoadJobsResponse { jobs: jobs_out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, cells: &[(&str, &str, &str)]) -> pb::Row {
        pb::Row {
            key: key.as_bytes().to_vec(),
            cells: cells
                .iter()
                .map(|(f, q, v)| pb::Cell { family: f.to_string(), qualifier: q.as_bytes().to_vec(), value: v.as_bytes().to_vec() })
                .collect(),
            cells_withheld: false,
        }
    }

    fn req(rows: Vec<pb::Row>) -> pb::ImportRowsRequest {
        pb::ImportRowsRequest { tenant: "t".into(), table: "x".into(), rows, ..Default::default() }
    }

    #[test]
    fn import_requests_are_refused_naming_the_field() {
        let l = crate::config::Limits::default();
        let bad = [
            (req(vec![]), "rows: must not be empty"),
            (req(vec![row("a", &[("p", "n", "1")]), row("a", &[("p", "n", "2")])]), "rows[1].key: repeats rows[0].key"),
            (req(vec![row("a", &[])]), "rows[0].cells: a row needs at least one cell"),
            (req(vec![row("a", &[("p", "n", "1"), ("p", "n", "2")])]), "rows[0].cells[1]: repeats the cell p:n"),
            (req(vec![row("", &[("p", "n", "1")])]), "rows[0].key: must not be empty"),
            (pb::ImportRowsRequest { list_buckets: vec![256], ..req(vec![row("a", &[("p", "n", "1")])]) }, "list_buckets: 256"),
        ];
        for (r, want) in bad {
            let e = import_ops(&l, &r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(want), "{} does not start with {want}", e.message());
        }
        let ok = import_ops(&l, &req(vec![row("a", &[("p", "n", "1"), ("p", "m", "2")]), row("b", &[("", "n", "1")])])).unwrap();
        assert_eq!(ok.len(), 3);
        let many = req((0..IMPORT_CELLS_MAX / 2 + 1).map(|i| row(&i.to_string(), &[("p", "a", ""), ("p", "b", "")])).collect());
        assert!(import_ops(&l, &many).unwrap_err().message().contains("IMPORT_CELLS_MAX"));
    }
}
