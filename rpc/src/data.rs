//! The `kho.v1.Data` service.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kho_engine::keys::{self, FamilyId};
use kho_engine::{Cf, Engine};
use kho_proto::v1::data_server::Data;
use kho_proto::v1::{self as pb, mutation, write_op};
use kho_raft::catalog::TableMeta;
use kho_raft::cells::TableAccess;
use kho_raft::command::Outcome;
use kho_raft::command::RawCondition;
use kho_raft::keyring::{self, TenantKeys};
use kho_raft::state_machine::SmState;
use kho_raft::{AppErrorKind, Command, Group, WriteOp};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::ctx::{written, Ctx, Kind, Leader, Origin, ShardRoute, Written};
use crate::locate::{self, LOCATE_KEYS_MAX, LOCATE_RANGE_SHARDS_MAX};
use crate::route::{RouteError, StaleRoute};
use crate::{forward, status, validate};
use kho_raft::access::{Perm, TableView};

/// Most chunks a scan buffers ahead of a slow client, count.
const SCAN_CHANNEL_CHUNKS_MAX: usize = 4;
/// Most times a compare-and-swap reads its cell and proposes its conditional write when
/// other writes to the cell keep landing in between, count.
const CAS_ATTEMPTS_MAX: usize = 8;
/// Most items in one streamed chunk, count.
const SCAN_CHUNK_ITEMS_MAX: usize = 512;
/// A chunk is sent once it holds this many bytes of keys and values.
const SCAN_CHUNK_BYTES_MAX: usize = 1 << 20;

pub struct DataService {
    pub ctx: Arc<Ctx>,
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanResponse, Status>> + Send>>;
type ScanRowsStream = Pin<Box<dyn Stream<Item = Result<pb::ScanRowsResponse, Status>> + Send>>;

fn family_of(meta: &TableMeta, name: &str) -> Result<FamilyId, Status> {
    meta.family_id(name)
        .ok_or_else(|| Status::not_found(format!("column family `{name}` does not exist in table `{}/{}`", meta.tenant, meta.name)))
}

/// The family a request names: its own name, or the table's first family for "".
pub(crate) fn family_name<'a>(meta: &'a TableMeta, name: &'a str) -> &'a str {
    if name.is_empty() {
        meta.families.first().map_or("", String::as_str)
    } else {
        name
    }
}

/// `PERMISSION_DENIED` unless `view` holds the cell (`family`, `qualifier`).
fn need_cell(origin: &Origin, view: &TableView, perm: Perm, meta: &TableMeta, family: &str, qualifier: &[u8]) -> Result<(), Status> {
    let family = family_name(meta, family);
    if view.cell(family, qualifier) {
        return Ok(());
    }
    let q = if view.any_of_family(family) || !qualifier.is_empty() { Some(qualifier) } else { None };
    Err(auth::missing(&origin.caller, perm, &meta.tenant, &meta.name, Some(family), q))
}

/// `PERMISSION_DENIED` unless the write's every op is within `view`: a cell's family and
/// qualifier, a whole family for `DeleteFamily`, the whole table for `DeleteRow`.
pub(crate) fn need_ops(origin: &Origin, view: &TableView, meta: &TableMeta, ops: &[WriteOp]) -> Result<(), Status> {
    for op in ops {
        match op {
            WriteOp::Put { family, qualifier, .. } | WriteOp::Delete { family, qualifier, .. } => {
                need_cell(origin, view, Perm::Write, meta, family, qualifier)?
            }
            WriteOp::DeleteFamily { family, .. } => {
                let family = family_name(meta, family);
                if !view.whole_family(family) {
                    return Err(auth::missing(&origin.caller, Perm::Write, &meta.tenant, &meta.name, Some(family), None));
                }
            }
            WriteOp::DeleteRow { .. } => {
                if !view.whole_table() {
                    return Err(Status::permission_denied(format!(
                        "principal `{}` has no write grant on all of `{}/{}` (every family): DeleteRow needs it; delete the cells or families granted instead",
                        origin.caller.name, meta.tenant, meta.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Most row keys one audit record names, count; past it the record counts the rest.
const AUDIT_KEYS_MAX: usize = 256;

/// Row keys as the audit log names them: the first 8 bytes of each key's SHA-256, hex
/// (never the key itself: a row key is often a citizen's id).
fn hashed_keys<'a>(rows: impl ExactSizeIterator<Item = &'a [u8]>) -> String {
    use sha2::{Digest, Sha256};
    let n = rows.len();
    let mut out: Vec<String> =
        rows.take(AUDIT_KEYS_MAX).map(|k| Sha256::digest(k)[..8].iter().map(|b| format!("{b:02x}")).collect()).collect();
    if n > AUDIT_KEYS_MAX {
        out.push(format!("(+{} more)", n - AUDIT_KEYS_MAX));
    }
    format!("sha256/8: {}", out.join(","))
}

/// A scan's range as the audit log names it (a table with plain row keys: scans of hashed
/// ones are refused), each bound at most 64 bytes shown.
fn range_text(start: &[u8], end: &[u8], prefix: &[u8]) -> String {
    let show = |k: &[u8]| if k.is_empty() { "-".to_string() } else { kho_raft::shard::printable_key(&k[..k.len().min(64)]) };
    format!("rows [{}, {}) prefix {}", show(start), show(end), show(prefix))
}

/// Whether a stream in an access session may go on: its session is still open.
type SessionWatch = Arc<dyn Fn() -> Result<(), Status> + Send + Sync>;

/// Records what a stream in an access session returned (rows or items, bytes, how it ended).
type StreamEnded = Box<dyn FnOnce(u64, u64, &str) + Send>;

impl DataService {
    /// A request in an access session (a read, a write, a shard lookup): appends its record
    /// (principal, session, purpose, what it names, how much it returns) and returns once
    /// the record is committed, before the answer is sent or the write proposed; refuses
    /// the request when it cannot be (fail closed). Nothing outside a session.
    pub(crate) async fn audit_read(
        &self,
        origin: &Origin,
        meta: &TableMeta,
        fill: impl FnOnce(&mut kho_raft::audit::Record),
    ) -> Result<(), Status> {
        match self.session_record(origin, meta, fill) {
            Some(r) => self.ctx.audit.append(r).await,
            None => Ok(()),
        }
    }

    /// The audit record of a request in an access session (none outside one).
    fn session_record(
        &self,
        origin: &Origin,
        meta: &TableMeta,
        fill: impl FnOnce(&mut kho_raft::audit::Record),
    ) -> Option<kho_raft::audit::Record> {
        if !Ctx::in_session(origin) {
            return None;
        }
        let mut r = self.ctx.record(origin);
        r.tenant = meta.tenant.clone();
        r.table = meta.name.clone();
        fill(&mut r);
        Some(r)
    }

    /// For a stream in an access session: checks, at each chunk, that the session is still
    /// open (closing it ends the stream), and records what the stream returned when it ends.
    fn session_watch(&self, origin: &Origin) -> Option<SessionWatch> {
        if !Ctx::in_session(origin) {
            return None;
        }
        let id = origin.caller.session.clone()?;
        let principal = origin.caller.name.clone();
        let caller = origin.caller.clone();
        let ctx = self.ctx.clone();
        Some(Arc::new(move || {
            // A node cut off from the meta group stops too (its copy may miss the close).
            ctx.auth.check_current(&caller)?;
            let meta = ctx.meta();
            let cat = meta.state.catalog();
            match cat.access.session_of(&id, &principal, auth::now_ms()) {
                Ok(_) => Ok(()),
                Err(why) => Err(Status::permission_denied(format!("the stream was ended: {why}"))),
            }
        }))
    }

    /// The record of what a stream in an access session returned, queued when it ends.
    fn stream_ended(&self, origin: &Origin, meta: &TableMeta, keys: String) -> Option<StreamEnded> {
        if !Ctx::in_session(origin) {
            return None;
        }
        let mut r = self.ctx.record(origin);
        r.tenant = meta.tenant.clone();
        r.table = meta.name.clone();
        r.keys = keys;
        let audit = self.ctx.audit.clone();
        Some(Box::new(move |rows, bytes, how: &str| {
            r.rows = rows;
            r.bytes = bytes;
            r.reason = format!("stream ended: {how}");
            audit.note(r);
        }))
    }

    /// What the caller may do with `perm` in `tenant/table` ([`auth::Auth::view`]):
    /// decided from the names before the table is looked up ([`Ctx::authorize`]).
    pub(crate) async fn view(&self, origin: &Origin, perm: Perm, tenant: &str, table: &str) -> Result<TableView, Status> {
        self.ctx
            .authorize(origin, tenant, table, || {
                let meta = self.ctx.meta();
                let cat = meta.state.catalog();
                self.ctx.auth.view(&origin.caller, &cat, perm, tenant, table)
            })
            .await
    }

    /// Records a refusal in the audit log (only `PERMISSION_DENIED`: other failures of a
    /// check are not denials).
    pub(crate) fn deny(&self, origin: &Origin, tenant: &str, table: &str, s: Status) -> Status {
        if s.code() == tonic::Code::PermissionDenied {
            self.ctx.deny(origin, tenant, table, s)
        } else {
            s
        }
    }

    fn limits(&self) -> &crate::config::Limits {
        &self.ctx.limits
    }

    /// The table and its tenant's keys (None for a plaintext tenant), from this node's copy
    /// of the catalog.
    pub(crate) fn access(&self, tenant: &str, table: &str) -> Result<(TableMeta, Option<Arc<TenantKeys>>), Status> {
        let g = self.ctx.meta();
        let cat = g.state.catalog();
        let meta = cat.table(tenant, table).map_err(status::app_error)?.clone();
        let keys = cat.tenant_keys(meta.tenant_id);
        Ok((meta, keys))
    }

    /// [`DataService::access`]; a name this node's catalog does not know is looked up again
    /// after a read barrier of the meta group, so that a table created (and acknowledged)
    /// through another node is found. When that barrier fails (the deadline passed, no
    /// quorum), its failure is the answer, not NOT_FOUND: the table may well exist.
    pub(crate) async fn table_access(
        &self,
        tenant: &str,
        table: &str,
        origin: &Origin,
        kind: Kind,
    ) -> Result<(TableMeta, Option<Arc<TenantKeys>>), Status> {
        match self.access(tenant, table) {
            Err(s) if s.code() == tonic::Code::NotFound => match self.ctx.read_barrier(origin).await {
                Ok(Leader::Here(())) => self.access(tenant, table),
                Ok(Leader::There(_)) => Err(s),
                Err(e) if e.code() == tonic::Code::DeadlineExceeded && kind == Kind::Write => Err(Status::deadline_exceeded(format!(
                    "the request's deadline passed before `{tenant}/{table}` could be looked up in the catalog: the write was not applied"
                ))),
                Err(e) => Err(e),
            },
            other => other,
        }
    }

    fn engine(&self) -> Engine {
        self.ctx.node.engine().clone()
    }

    pub(crate) fn check_table_names(&self, tenant: &str, table: &str) -> Result<(), Status> {
        validate::name("tenant", tenant)?;
        validate::name("table", table)
    }

    /// Resolves named mutations into a write ([`kho_raft::cells`]), routes it by key to its
    /// shard and proposes it there, on the shard's leader; says where to forward the request
    /// (as the client sent it: it is resolved again there) when the leader is another node.
    /// A write whose keys fall in several shards is refused (no cross-shard atomicity yet).
    pub(crate) async fn propose_write(
        &self,
        tenant: &str,
        table: &str,
        ops: Vec<WriteOp>,
        origin: &Origin,
    ) -> Result<Leader<Written>, Status> {
        self.propose_write_as(tenant, table, ops, origin, false).await
    }

    /// [`DataService::propose_write`]; with `sst` (puts only, a bulk load's rows), the
    /// cells are proposed as one SST run ([`Command::IngestSst`]) built by this node, the
    /// shard's leader, instead of a [`Command::Write`].
    pub(crate) async fn propose_write_as(
        &self,
        tenant: &str,
        table: &str,
        ops: Vec<WriteOp>,
        origin: &Origin,
        sst: bool,
    ) -> Result<Leader<Written>, Status> {
        let view = self.view(origin, Perm::Write, tenant, table).await?;
        let (meta, keys) = self.table_access(tenant, table, origin, Kind::Write).await?;
        need_ops(origin, &view, &meta, &ops).map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
        // A write in an access session is recorded before it is proposed (fail closed), by
        // the node that proposes it (not by one that forwards it).
        let record = self.session_record(origin, &meta, |a| {
            let (mut families, mut fields, mut rows) = (Vec::new(), Vec::new(), Vec::new());
            for op in &ops {
                let (row, family, qualifier) = match op {
                    WriteOp::Put { row, family, qualifier, .. } | WriteOp::Delete { row, family, qualifier } => {
                        (row, family.as_str(), Some(qualifier))
                    }
                    WriteOp::DeleteFamily { row, family } => (row, family.as_str(), None),
                    WriteOp::DeleteRow { row } => (row, "", None),
                };
                let family = family_name(&meta, family).to_string();
                if !family.is_empty() && !families.contains(&family) {
                    families.push(family);
                }
                if let Some(q) = qualifier.map(|q| String::from_utf8_lossy(q).into_owned()) {
                    if !fields.contains(&q) {
                        fields.push(q);
                    }
                }
                if !rows.contains(&row.as_slice()) {
                    rows.push(row.as_slice());
                }
            }
            a.families = families;
            a.fields = fields;
            a.keys = hashed_keys(rows.iter().copied());
            a.rows = rows.len() as u64;
            a.reason = format!("write of {} operations", ops.len());
        });
        let mut w = TableAccess { meta: &meta, keys: keys.as_deref() }.resolve(ops, None).map_err(status::app_error)?;
        self.propose_cells(&mut w, origin, record, sst).await
    }

    /// Routes and proposes a resolved write (see [`DataService::propose_write`]), looking
    /// the shard up again (at most [`ROUTE_ATTEMPTS_MAX`] times) when the shard refuses it
    /// as misrouted (a split or merge since the lookup). `record` (a write in an access
    /// session) is appended to the audit log right before the first proposal, on the node
    /// that proposes: a node that forwards the write records nothing.
    async fn propose_cells(
        &self,
        w: &mut kho_raft::CellWrite,
        origin: &Origin,
        mut record: Option<kho_raft::audit::Record>,
        sst: bool,
    ) -> Result<Leader<Written>, Status> {
        let mut last = None;
        // Built once, on the first shard found here; cut again only if its keys no longer
        // fit one shard (then the write is refused below, as any write across shards).
        let mut run: Option<kho_raft::ingest::SstRun> = None;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let first = kho_raft::cells::first_key(w).ok_or_else(|| Status::invalid_argument("ops: no operation"))?.to_vec();
            let g = match self.ctx.shard_route(&first, origin, Kind::Write).await? {
                ShardRoute::Remote(to) => return Ok(Leader::There(to)),
                ShardRoute::Local(g) => g,
            };
            if let Some(to) = self.ctx.leader_elsewhere(&g, origin, Kind::Write) {
                return Ok(Leader::There(to));
            }
            let desc = g.state.shard().ok_or_else(|| status::internal("a data key routed to a group that is not a data shard"))?.desc;
            last = Some((desc.id, desc.epoch));
            if !desc.contains(&first) {
                continue; // the shard split since the lookup: look the key up again
            }
            if !kho_raft::cells::within(w, &desc.start, &desc.end) {
                return Err(Status::failed_precondition(format!(
                    "ops: the write's keys fall in more than one shard (shard {} holds [{}, {})): an atomic write across shards is not supported yet; write each shard's keys apart",
                    desc.id,
                    kho_raft::shard::printable_key(&desc.start),
                    kho_raft::shard::printable_key(&desc.end)
                )));
            }
            w.shard = desc.id;
            w.epoch = desc.epoch.version;
            // Its audit record first (a write in an access session): no record, no write.
            if let Some(r) = record.take() {
                self.ctx.audit.append(r).await?;
            }
            let cmd = if sst {
                let mut r = match run.take() {
                    Some(r) => r,
                    None => {
                        let (engine, cells) = (g.state.engine.clone(), w.clone());
                        tokio::task::spawn_blocking(move || kho_raft::ingest::build(&engine, &cells))
                            .await
                            .map_err(|e| status::internal(format!("building an SST run: {e}")))?
                            .map_err(|e| status::internal(format!("building an SST run: {e}")))?
                    }
                };
                r.shard = w.shard;
                r.epoch = w.epoch;
                run = Some(r.clone());
                Command::IngestSst(r)
            } else {
                Command::Write(w.clone())
            };
            match self.ctx.propose_in(&g, cmd, origin).await? {
                Leader::There(to) => return Ok(Leader::There(to)),
                Leader::Here(r) => match &r.outcome {
                    Outcome::Rejected(e) if e.kind == AppErrorKind::WrongShard => continue,
                    _ => return Ok(Leader::Here(written(r, desc.id)?)),
                },
            }
        }
        // Every lookup found a shard that no longer held the key, or the shard refused the
        // write at apply (`WrongShard`, writing nothing): nothing was written.
        let mut stale = RouteError::new(StaleRoute::EpochMismatch);
        if let Some((id, epoch)) = last {
            stale = stale.shard(id).epoch(epoch);
        }
        Err(stale.status(format!("the shard map kept changing under the write ({ROUTE_ATTEMPTS_MAX} lookups); nothing was written; retry")))
    }

    /// The local replica of the shard holding `key` for a read at `consistency`, after its
    /// read barrier; or where to forward the read.
    async fn read_shard(&self, key: &[u8], consistency: i32, origin: &Origin) -> Result<Leader<Arc<Group>>, Status> {
        let mut attempts = 0;
        let g = loop {
            let g = match self.ctx.shard_route(key, origin, Kind::Read).await? {
                ShardRoute::Remote(to) => return Ok(Leader::There(to)),
                ShardRoute::Local(g) => g,
            };
            if let Leader::There(to) = self.ctx.read_barrier_for(&g, consistency, origin).await? {
                return Ok(Leader::There(to));
            }
            // The barrier brought the shard state up to date: a key it no longer holds was
            // routed before a split applied here: look it up again.
            if g.state.holds(key) {
                break g;
            }
            attempts += 1;
            if attempts == ROUTE_ATTEMPTS_MAX {
                let mut stale = RouteError::new(StaleRoute::KeyNotInShard).shard(g.id);
                if let Some(st) = g.state.shard() {
                    stale = stale.epoch(st.desc.epoch);
                }
                return Err(stale.status(format!(
                    "shard {} no longer holds the key (it split or merged), {ROUTE_ATTEMPTS_MAX} lookups in a row; nothing was read; retry",
                    g.id
                )));
            }
        };
        // A table dropped (and cleared from the shard, which DropTable waits for) before the
        // barrier is gone, even if this node's catalog has not applied the drop yet.
        if let Some(table) = key.get(4..8).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))) {
            if g.state.is_dropped(table) {
                return Err(Status::not_found("the table was dropped"));
            }
        }
        Ok(Leader::Here(g))
    }

    /// The local replicas of every shard that holds a key of `[start, end)`, after their
    /// read barriers, in key order; or where to forward the read (when this node lacks one).
    ///
    /// The range is walked shard by shard by the replicas' own ranges: from `start`, the
    /// shard holding the key, its read barrier, then on from the end of its range as it is
    /// after the barrier (a split committed before the read began has applied by then), up
    /// to `end`. The shards found cover `[start, end)` without gap, so one view of the
    /// node's engine taken after every barrier holds every row of the range exactly once,
    /// in key order, at least as new as the read.
    pub(crate) async fn read_shards(
        &self,
        start: &[u8],
        end: &[u8],
        consistency: i32,
        origin: &Origin,
    ) -> Result<Leader<Vec<Arc<Group>>>, Status> {
        let mut groups: Vec<Arc<Group>> = Vec::new();
        let mut at = start.to_vec();
        let mut lookups = 0usize;
        while at.as_slice() < end {
            if groups.len() == SCAN_SHARDS_MAX {
                return Err(Status::resource_exhausted(format!(
                    "the range spans more than {SCAN_SHARDS_MAX} shards; scan it in parts (resume after the last key received)"
                )));
            }
            lookups += 1;
            if lookups > SCAN_SHARDS_MAX + ROUTE_ATTEMPTS_MAX {
                return Err(RouteError::new(StaleRoute::KeyNotInShard)
                    .status("the shards of the range kept splitting under the scan; nothing was read; retry"));
            }
            let g = match self.read_shard(&at, consistency, origin).await? {
                Leader::Here(g) => g,
                Leader::There(to) => return Ok(Leader::There(to)),
            };
            let (_, shard_end) = g.state.bounds();
            if shard_end <= at {
                continue; // it split since its barrier: look the key up again
            }
            at = shard_end;
            groups.push(g);
        }
        Ok(Leader::Here(groups))
    }

    /// A cell as stored, read from this node's replica of shard `g`: from memory when the
    /// memtables or the block cache hold it, else on a read thread. Never while a snapshot
    /// install of the shard runs.
    async fn read_stored(&self, g: &Group, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let engine = self.engine();
        let state = g.state.clone();
        let in_memory = {
            let _gate = state.read_gate().await;
            engine.get_in_memory(Cf::Data, key).map_err(status::engine_error)?
        };
        if let Some(answer) = in_memory {
            return Ok(answer);
        }
        let key = key.to_vec();
        self.ctx
            .reads
            .run(move || {
                let _gate = state.blocking_read_gate();
                engine.get(Cf::Data, &key)
            })
            .await?
            .map_err(status::engine_error)
    }

    /// One try of `BatchGet` ([`Ctx::routed`]).
    async fn batch_get_once(&self, r: &pb::BatchGetRequest, origin: Origin) -> Result<Response<pb::BatchGetResponse>, Status> {
        let origin = &origin;
        let view = self.view(origin, Perm::Read, &r.tenant, &r.table).await?;
        let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, origin, Kind::Read).await?;
        let fam = family_of(&meta, &r.family)?;
        need_cell(origin, &view, Perm::Read, &meta, &r.family, b"").map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
        // One linearizable read per shard that holds a key (its read barrier), then one
        // point-in-time view of this node's replicas of them all.
        let mut groups: Vec<Arc<Group>> = Vec::new();
        for k in &r.keys {
            let key = keys::data_key(meta.tenant_id, meta.id, &stored_row(&meta, tenant_keys.as_deref(), k)?, fam, b"");
            if groups.iter().any(|g| g.state.bounds().0 <= key && key < g.state.bounds().1) {
                continue;
            }
            match self.read_shard(&key, r.consistency, origin).await? {
                Leader::There(to) => return forward!(self.ctx, data_client, to, batch_get, r.clone()),
                Leader::Here(g) => groups.push(g),
            }
        }
        let engine = self.engine();
        let reply_max = self.limits().grpc_message_bytes_max;
        let states = gate_order(&groups);
        let keys_asked = r.keys.clone();
        let meta_audit = meta.clone();
        let items = self
            .ctx
            .reads
            .run(move || -> Result<Vec<pb::BatchGetItem>, Status> {
                let gates: Vec<_> = states.iter().map(|s| s.blocking_read_gate()).collect();
                let snap = engine.snapshot();
                drop(gates);
                let mut items = Vec::with_capacity(keys_asked.len());
                let mut bytes = 0u64;
                for k in keys_asked {
                    let key = keys::data_key(meta.tenant_id, meta.id, &stored_row(&meta, tenant_keys.as_deref(), &k)?, fam, b"");
                    let v = match snap.get(Cf::Data, &key).map_err(status::engine_error)? {
                        None => None,
                        Some(stored) => Some(open(tenant_keys.as_deref(), &key, &stored)?),
                    };
                    bytes += (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
                    if bytes > reply_max {
                        return Err(Status::resource_exhausted(format!(
                            "keys: the values found exceed {reply_max} bytes (limits.grpc_message_bytes_max); ask for fewer keys"
                        )));
                    }
                    items.push(pb::BatchGetItem { key: k, found: v.is_some(), value: v.unwrap_or_default() });
                }
                Ok(items)
            })
            .await??;
        self.audit_read(origin, &meta_audit, |a| {
            a.families = vec![family_name(&meta_audit, &r.family).to_string()];
            a.keys = hashed_keys(r.keys.iter().map(Vec::as_slice));
            a.rows = items.iter().filter(|i| i.found).count() as u64;
            a.bytes = items.iter().map(|i| i.value.len() as u64).sum();
        })
        .await?;
        Ok(Response::new(pb::BatchGetResponse { items }))
    }

    /// One try of `Scan` ([`Ctx::routed`]): a stream that has started is not tried again.
    async fn scan_once(&self, r: &pb::ScanRequest, limit: usize, origin: Origin) -> Result<Response<ScanStream>, Status> {
        let origin = &origin;
        let view = self.view(origin, Perm::Read, &r.tenant, &r.table).await?;
        let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, origin, Kind::Read).await?;
        refuse_scan_of_hashed(&meta)?;
        let fam = family_of(&meta, &r.family)?;
        need_cell(origin, &view, Perm::Read, &meta, &r.family, b"").map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
        let (start, end) = keys::row_range(meta.tenant_id, meta.id, &r.start_key, end_bound(&r.end_key), &r.prefix);
        let groups = match self.read_shards(&start, &end, r.consistency, origin).await? {
            Leader::There(to) => {
                let resp = forward!(self.ctx, data_client, to.clone(), scan, r.clone())?;
                return Ok(Response::new(Box::pin(to.stream(resp.into_inner())) as ScanStream));
            }
            Leader::Here(groups) => groups,
        };
        // In an access session: recorded before anything is read (fail closed), watched at
        // each chunk, and recorded again with what it returned when it ends.
        let range = range_text(&r.start_key, &r.end_key, &r.prefix);
        self.audit_read(origin, &meta, |a| {
            a.families = vec![family_name(&meta, &r.family).to_string()];
            a.keys = range.clone();
            a.reason = "stream started".into();
        })
        .await?;
        let watch = self.session_watch(origin);
        let ended = self.stream_ended(origin, &meta, range);
        let engine = self.engine();
        let (tx, stream) = ChunkSender::channel(self.ctx.limits.scan_stall_timeout_ms, self.ctx.limits.scan_duration_max_ms);
        let states = gate_order(&groups);
        self.ctx.scans.spawn(move || {
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0usize;
            let mut sent = 0usize;
            let (mut items_out, mut bytes_out) = (0u64, 0u64);
            let check = || watch.as_ref().map_or(Ok(()), |w| w());
            let res = scan_cells(&engine, &states, tenant_keys.as_deref(), &start, &end, |dk, payload| {
                if dk.family != fam || !dk.qualifier.is_empty() {
                    return Ok(true);
                }
                chunk_bytes += dk.row.len() + payload.len();
                chunk.push(pb::KeyValue { key: dk.row, value: payload.to_vec() });
                sent += 1;
                if chunk.len() >= SCAN_CHUNK_ITEMS_MAX || chunk_bytes >= SCAN_CHUNK_BYTES_MAX {
                    check()?;
                    items_out += chunk.len() as u64;
                    bytes_out += chunk_bytes as u64;
                    chunk_bytes = 0;
                    let kvs = std::mem::take(&mut chunk);
                    if !tx.send(Ok(pb::ScanResponse { kvs })) {
                        return Ok(false); // the client went away or stalled
                    }
                }
                Ok(sent < limit)
            });
            let res = res.and_then(|()| if chunk.is_empty() { Ok(()) } else { check() });
            let how = match &res {
                Ok(()) => "complete".to_string(),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            };
            match res {
                Ok(()) if !chunk.is_empty() => {
                    items_out += chunk.len() as u64;
                    bytes_out += chunk_bytes as u64;
                    tx.finish(Some(Ok(pb::ScanResponse { kvs: chunk })))
                }
                Ok(()) => tx.finish(None),
                Err(s) => tx.finish(Some(Err(s))),
            }
            if let Some(ended) = ended {
                ended(items_out, bytes_out, &how);
            }
        })?;
        Ok(Response::new(Box::pin(stream) as ScanStream))
    }

    /// One try of `CompareAndSwap` ([`Ctx::routed`]).
    async fn compare_and_swap_once(
        &self,
        r: &pb::CompareAndSwapRequest,
        origin: Origin,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let origin = &origin;
        // The shard's leader reads the cell (a linearizable read) and compares its value with
        // the expected one; if they match, it proposes the write on condition that the cell
        // is still stored as it read it. A write in between fails that condition at apply,
        // and the comparison starts again, at most CAS_ATTEMPTS_MAX times.
        // It returns the current value: it needs read as well as write.
        let read = self.view(origin, Perm::Read, &r.tenant, &r.table).await?;
        let write = self.view(origin, Perm::Write, &r.tenant, &r.table).await?;
        for _ in 0..CAS_ATTEMPTS_MAX {
            let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, origin, Kind::Write).await?;
            need_cell(origin, &read, Perm::Read, &meta, &r.family, b"").map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
            need_cell(origin, &write, Perm::Write, &meta, &r.family, b"").map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
            let access = TableAccess { meta: &meta, keys: tenant_keys.as_deref() };
            let key = access.cell_key(&r.key, &r.family, b"").map_err(status::app_error)?;
            let g = match self.ctx.shard_route(&key, origin, Kind::Write).await? {
                ShardRoute::Remote(to) => return forward!(self.ctx, data_client, to, compare_and_swap, r.clone()),
                ShardRoute::Local(g) => g,
            };
            if let Some(to) = self.ctx.leader_elsewhere(&g, origin, Kind::Write) {
                return forward!(self.ctx, data_client, to, compare_and_swap, r.clone());
            }
            if let Leader::There(to) = self.ctx.read_barrier_in(&g, origin).await? {
                return forward!(self.ctx, data_client, to.as_write(), compare_and_swap, r.clone());
            }
            let stored = self.read_stored(&g, &key).await?;
            let current = match &stored {
                None => None,
                Some(s) => Some(open(tenant_keys.as_deref(), &key, s)?),
            };
            self.audit_read(origin, &meta, |a| {
                a.families = vec![family_name(&meta, &r.family).to_string()];
                a.keys = hashed_keys([r.key.as_slice()].into_iter());
                a.rows = u64::from(current.is_some());
                a.bytes = current.as_ref().map_or(0, |v| v.len() as u64);
            })
            .await?;
            if current != r.expected_value {
                let revision = g.status().applied_index;
                return Ok(Response::new(pb::CompareAndSwapResponse {
                    header: Some(pb::WriteHeader { revision, shard_id: g.id }),
                    succeeded: false,
                    current_found: current.is_some(),
                    current_value: current.unwrap_or_default(),
                }));
            }
            let op = match &r.new_value {
                Some(v) => WriteOp::Put { row: r.key.clone(), family: r.family.clone(), qualifier: vec![], value: v.clone() },
                None => WriteOp::Delete { row: r.key.clone(), family: r.family.clone(), qualifier: vec![] },
            };
            let mut w = access.resolve(vec![op], Some(RawCondition { key, expected: stored })).map_err(status::app_error)?;
            match self.propose_cells(&mut w, origin, None, false).await? {
                Leader::There(to) => return forward!(self.ctx, data_client, to, compare_and_swap, r.clone()),
                Leader::Here(w) => {
                    let cas = w.cas.as_ref().ok_or_else(|| status::internal("conditional write returned no comparison outcome"))?;
                    if cas.succeeded {
                        return Ok(Response::new(pb::CompareAndSwapResponse {
                            header: Some(w.header()),
                            succeeded: true,
                            current_found: current.is_some(),
                            current_value: current.unwrap_or_default(),
                        }));
                    }
                    // The cell changed between the read and the write: compare again.
                }
            }
        }
        Err(Status::aborted(format!(
            "compare_and_swap: the cell changed between its read and its conditional write {CAS_ATTEMPTS_MAX} times in a row; nothing was written; retry"
        )))
    }

    /// One try of `ReadRow` ([`Ctx::routed`]).
    async fn read_row_once(&self, r: &pb::ReadRowRequest, origin: Origin) -> Result<Response<pb::ReadRowResponse>, Status> {
        let origin = &origin;
        let view = self.view(origin, Perm::Read, &r.tenant, &r.table).await?;
        let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, origin, Kind::Read).await?;
        let fams = r.families.iter().map(|f| family_of(&meta, f)).collect::<Result<Vec<_>, _>>()?;
        need_named(origin, &view, &meta, &r.families, &r.qualifiers).map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
        let prefix = keys::row_prefix(meta.tenant_id, meta.id, &stored_row(&meta, tenant_keys.as_deref(), &r.row_key)?);
        let end = keys::prefix_end(&prefix).expect("a row prefix has an end");
        let g = match self.read_shard(&prefix, r.consistency, origin).await? {
            Leader::There(to) => return forward!(self.ctx, data_client, to, read_row, r.clone()),
            Leader::Here(g) => g,
        };
        let engine = self.engine();
        let reply_max = self.limits().grpc_message_bytes_max as usize;
        let row_key = r.row_key.clone();
        let meta_audit = meta.clone();
        let states = gate_order(&[g]);
        let qualifiers = r.qualifiers.clone();
        let cells = self
            .ctx
            .reads
            .run(move || -> Result<(Vec<pb::Cell>, bool), Status> {
                let mut cells = Vec::new();
                let mut bytes = 0usize;
                let mut withheld = false;
                scan_cells(&engine, &states, tenant_keys.as_deref(), &prefix, &end, |dk, payload| {
                    if (!fams.is_empty() && !fams.contains(&dk.family)) || (!qualifiers.is_empty() && !qualifiers.contains(&dk.qualifier)) {
                        return Ok(true);
                    }
                    if !view.cell(meta.family_name(dk.family).unwrap_or_default(), &dk.qualifier) {
                        withheld = true;
                        return Ok(true);
                    }
                    bytes += dk.qualifier.len() + payload.len();
                    if bytes > reply_max {
                        return Err(Status::resource_exhausted(format!(
                            "row_key: the row exceeds {reply_max} bytes (limits.grpc_message_bytes_max); filter by family or qualifier"
                        )));
                    }
                    let family = meta.family_name(dk.family).unwrap_or_default().to_string();
                    cells.push(pb::Cell { family, qualifier: dk.qualifier, value: payload.to_vec() });
                    Ok(true)
                })?;
                Ok((cells, withheld))
            })
            .await??;
        let (cells, cells_withheld) = cells;
        self.audit_read(origin, &meta_audit, |a| {
            a.families = r.families.clone();
            a.fields = r.qualifiers.iter().map(|q| String::from_utf8_lossy(q).into_owned()).collect();
            a.keys = hashed_keys([r.row_key.as_slice()].into_iter());
            a.rows = u64::from(!cells.is_empty());
            a.bytes = cells.iter().map(|c| (c.qualifier.len() + c.value.len()) as u64).sum();
            if cells_withheld {
                a.reason = "cells withheld".into();
            }
        })
        .await?;
        // A row whose every cell was withheld is found, empty, and says so.
        let found = !cells.is_empty() || cells_withheld;
        Ok(Response::new(pb::ReadRowResponse { found, row: found.then_some(pb::Row { key: row_key, cells, cells_withheld }) }))
    }

    /// One try of `ScanRows` ([`Ctx::routed`]): a stream that has started is not tried again.
    async fn scan_rows_once(&self, r: &pb::ScanRowsRequest, limit: usize, origin: Origin) -> Result<Response<ScanRowsStream>, Status> {
        let origin = &origin;
        let view = self.view(origin, Perm::Read, &r.tenant, &r.table).await?;
        let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, origin, Kind::Read).await?;
        refuse_scan_of_hashed(&meta)?;
        let fams = r.families.iter().map(|f| family_of(&meta, f)).collect::<Result<Vec<_>, _>>()?;
        need_named(origin, &view, &meta, &r.families, &[]).map_err(|s| self.deny(origin, &meta.tenant, &meta.name, s))?;
        let (start, end) = keys::row_range(meta.tenant_id, meta.id, &r.start_row, end_bound(&r.end_row), &r.prefix);
        let groups = match self.read_shards(&start, &end, r.consistency, origin).await? {
            Leader::There(to) => {
                let resp = forward!(self.ctx, data_client, to.clone(), scan_rows, r.clone())?;
                return Ok(Response::new(Box::pin(to.stream(resp.into_inner())) as ScanRowsStream));
            }
            Leader::Here(groups) => groups,
        };
        // In an access session: recorded before anything is read (fail closed), watched at
        // each chunk, and recorded again with what it returned when it ends.
        let range = range_text(&r.start_row, &r.end_row, &r.prefix);
        self.audit_read(origin, &meta, |a| {
            a.families = r.families.clone();
            a.keys = range.clone();
            a.reason = "stream started".into();
        })
        .await?;
        let watch = self.session_watch(origin);
        let ended = self.stream_ended(origin, &meta, range);
        let engine = self.engine();
        let row_bytes_max = self.limits().grpc_message_bytes_max as usize;
        let (tx, stream) = ChunkSender::channel(self.ctx.limits.scan_stall_timeout_ms, self.ctx.limits.scan_duration_max_ms);
        let states = gate_order(&groups);
        self.ctx.scans.spawn(move || {
            let mut rows: Vec<pb::Row> = Vec::new();
            let mut chunk_bytes = 0usize;
            let mut row_bytes = 0usize;
            let mut done_rows = 0usize;
            let (mut rows_out, mut bytes_out) = (0u64, 0u64);
            let check = || watch.as_ref().map_or(Ok(()), |w| w());
            let res = scan_cells(&engine, &states, tenant_keys.as_deref(), &start, &end, |dk, payload| {
                if !fams.is_empty() && !fams.contains(&dk.family) {
                    return Ok(true);
                }
                let new_row = rows.last().is_none_or(|last| last.key != dk.row);
                if new_row {
                    if done_rows == limit {
                        return Ok(false);
                    }
                    done_rows += 1;
                    row_bytes = 0;
                    // Send full chunks only at row boundaries: a row is never split.
                    if rows.len() >= SCAN_CHUNK_ITEMS_MAX || chunk_bytes >= SCAN_CHUNK_BYTES_MAX {
                        check()?;
                        rows_out += rows.len() as u64;
                        bytes_out += chunk_bytes as u64;
                        chunk_bytes = 0;
                        let out = std::mem::take(&mut rows);
                        if !tx.send(Ok(pb::ScanRowsResponse { rows: out })) {
                            return Ok(false); // the client went away or stalled
                        }
                    }
                    rows.push(pb::Row { key: dk.row.clone(), cells: Vec::new(), cells_withheld: false });
                }
                if !view.cell(meta.family_name(dk.family).unwrap_or_default(), &dk.qualifier) {
                    rows.last_mut().expect("a row was pushed").cells_withheld = true;
                    return Ok(true);
                }
                let n = dk.qualifier.len() + payload.len();
                row_bytes += n;
                chunk_bytes += n;
                if row_bytes > row_bytes_max {
                    return Err(Status::resource_exhausted(format!(
                        "a row exceeds {row_bytes_max} bytes (limits.grpc_message_bytes_max); filter by family"
                    )));
                }
                let family = meta.family_name(dk.family).unwrap_or_default().to_string();
                rows.last_mut().expect("a row was pushed").cells.push(pb::Cell {
                    family,
                    qualifier: dk.qualifier,
                    value: payload.to_vec(),
                });
                Ok(true)
            });
            let res = res.and_then(|()| if rows.is_empty() { Ok(()) } else { check() });
            let how = match &res {
                Ok(()) => "complete".to_string(),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            };
            match res {
                Ok(()) if !rows.is_empty() => {
                    rows_out += rows.len() as u64;
                    bytes_out += chunk_bytes as u64;
                    tx.finish(Some(Ok(pb::ScanRowsResponse { rows })))
                }
                Ok(()) => tx.finish(None),
                Err(s) => tx.finish(Some(Err(s))),
            }
            if let Some(ended) = ended {
                ended(rows_out, bytes_out, &how);
            }
        })?;
        Ok(Response::new(Box::pin(stream) as ScanRowsStream))
    }
}

/// `PERMISSION_DENIED` when a read names a family or a qualifier the caller may read
/// nothing of: each named family must be readable in part at least; a named qualifier must
/// be readable in each named family (in some family, when none is named). What is only
/// partly readable is filtered, and the row says so (`cells_withheld`).
pub(crate) fn need_named(
    origin: &Origin,
    view: &TableView,
    meta: &TableMeta,
    families: &[String],
    qualifiers: &[Vec<u8>],
) -> Result<(), Status> {
    for f in families {
        if !view.any_of_family(f) {
            return Err(auth::missing(&origin.caller, Perm::Read, &meta.tenant, &meta.name, Some(f), None));
        }
    }
    for q in qualifiers {
        if families.is_empty() {
            if !meta.families.iter().any(|f| view.cell(f, q)) {
                return Err(auth::missing(&origin.caller, Perm::Read, &meta.tenant, &meta.name, None, Some(q)));
            }
        } else if let Some(f) = families.iter().find(|f| !view.cell(f, q)) {
            return Err(auth::missing(&origin.caller, Perm::Read, &meta.tenant, &meta.name, Some(f), Some(q)));
        }
    }
    Ok(())
}

/// The states of `groups` in the order their install gates are taken: by group id, so that
/// two readers of the same shards never wait for each other's gates.
pub(crate) fn gate_order(groups: &[Arc<Group>]) -> Vec<Arc<SmState>> {
    let mut states: Vec<_> = groups.iter().map(|g| g.state.clone()).collect();
    states.sort_by_key(|s| s.group);
    states.dedup_by_key(|s| s.group);
    states
}

/// Most times a request looks its shard up when shards refuse it as misrouted, count.
const ROUTE_ATTEMPTS_MAX: usize = 3;
/// Most shards one scan reads, count.
const SCAN_SHARDS_MAX: usize = 4_096;

/// The row key as stored: a keyed hash for a table with hashed row keys.
fn stored_row(meta: &TableMeta, keys: Option<&TenantKeys>, row: &[u8]) -> Result<Vec<u8>, Status> {
    TableAccess { meta, keys }.stored_row(row).map_err(status::app_error)
}

/// Range scans cannot work on hashed row keys: their order is not the rows' order.
fn refuse_scan_of_hashed(meta: &TableMeta) -> Result<(), Status> {
    if meta.hashed_row_keys {
        return Err(Status::failed_precondition(format!(
            "table `{}/{}` has hashed row keys: range scans are not possible; read rows by key",
            meta.tenant, meta.name
        )));
    }
    Ok(())
}

/// A stored cell's value: checksum verified, or opened with the tenant's key.
fn open(keys: Option<&TenantKeys>, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, Status> {
    keyring::open_value(keys, key, stored).map_err(status::engine_error)
}

/// Reads every cell of `[start, end)` under one point-in-time view, in a blocking task,
/// calling `visit` with the decoded key and verified value; `visit` returns false to stop.
pub(crate) fn scan_cells(
    engine: &Engine,
    states: &[Arc<SmState>],
    tenant_keys: Option<&TenantKeys>,
    start: &[u8],
    end: &[u8],
    mut visit: impl FnMut(keys::DecodedKey, &[u8]) -> Result<bool, Status>,
) -> Result<(), Status> {
    if start >= end {
        return Ok(());
    }
    // The view is taken while no snapshot install of these shards runs; one may start once
    // we have it.
    let gates: Vec<_> = states.iter().map(|s| s.blocking_read_gate()).collect();
    let snap = engine.snapshot();
    drop(gates);
    let mut failure = None;
    snap.for_each(Cf::Data, start, Some(end), |k, v| {
        let step = keys::decode_data_key(k)
            .map_err(status::engine_error)
            .and_then(|dk| open(tenant_keys, k, v).and_then(|payload| visit(dk, &payload)));
        match step {
            Ok(go_on) => Ok(go_on),
            Err(s) => {
                failure = Some(s);
                Ok(false)
            }
        }
    })
    .map_err(status::engine_error)?;
    failure.map_or(Ok(()), Err)
}

/// The producer side of a scan's stream: a scan thread sends chunks through it, waiting at
/// most `limits.scan_stall_timeout_ms` for a client that does not read, and sending for at
/// most `limits.scan_duration_max_ms` in all (so a client that reads a chunk now and then
/// cannot keep a scan thread). A stopped scan frees its thread, drops the chunks still
/// queued and ends the stream with DEADLINE_EXCEEDED, so a client never takes a cut-short
/// scan for a complete one. A producer
/// that ends without [`ChunkSender::finish`] (it failed or panicked) ends the stream with
/// INTERNAL for the same reason.
struct ChunkSender<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    /// The client's side of the channel, shared so that a stalled scan can drop what it
    /// queued: a client that never reads then holds no more than what HTTP/2 buffers.
    rx: Arc<std::sync::Mutex<tokio::sync::mpsc::Receiver<Result<T, Status>>>>,
    runtime: tokio::runtime::Handle,
    stall: std::time::Duration,
    /// When the scan must have sent everything (`limits.scan_duration_max_ms` after it began).
    deadline: std::time::Instant,
    /// How the producer ended: [`SCAN_RUNNING`], [`SCAN_FINISHED`], [`SCAN_STALLED`],
    /// [`SCAN_TOO_LONG`].
    end: Arc<std::sync::atomic::AtomicU8>,
}

const SCAN_RUNNING: u8 = 0;
const SCAN_FINISHED: u8 = 1;
const SCAN_STALLED: u8 = 2;
const SCAN_TOO_LONG: u8 = 3;

impl<T: Send + 'static> ChunkSender<T> {
    /// A sender and the stream the client reads. Call from the runtime.
    fn channel(stall_ms: u64, duration_max_ms: u64) -> (Self, impl Stream<Item = Result<T, Status>> + Send + 'static) {
        let (tx, rx) = tokio::sync::mpsc::channel(SCAN_CHANNEL_CHUNKS_MAX);
        let end = Arc::new(std::sync::atomic::AtomicU8::new(SCAN_RUNNING));
        let flag = end.clone();
        // Polled only once the channel is closed, that is once the producer is gone.
        let tail = futures::stream::once(async move {
            match flag.load(std::sync::atomic::Ordering::SeqCst) {
                SCAN_FINISHED => None,
                SCAN_STALLED => Some(Err(Status::deadline_exceeded(format!(
                    "the scan stopped: its client took no data for {stall_ms} ms (limits.scan_stall_timeout_ms); resume after the last key received"
                )))),
                SCAN_TOO_LONG => Some(Err(Status::deadline_exceeded(format!(
                    "the scan stopped: it ran longer than {duration_max_ms} ms (limits.scan_duration_max_ms); resume after the last key received"
                )))),
                _ => Some(Err(Status::internal("the scan ended early on the server (see its log); resume after the last key received"))),
            }
        });
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let shared = rx.clone();
        let queued = futures::stream::poll_fn(move |cx| match shared.lock() {
            Ok(mut rx) => rx.poll_recv(cx).map(|item| item.map(Some)),
            Err(_) => std::task::Poll::Ready(None),
        });
        let stream = futures::StreamExt::filter_map(futures::StreamExt::chain(queued, tail), |x| async move { x });
        let sender = ChunkSender {
            tx,
            rx,
            runtime: tokio::runtime::Handle::current(),
            stall: std::time::Duration::from_millis(stall_ms),
            deadline: std::time::Instant::now() + std::time::Duration::from_millis(duration_max_ms),
            end,
        };
        (sender, stream)
    }

    /// Sends one item from a scan thread; false when the scan must stop (the client went
    /// away, took nothing for the stall timeout, or the scan reached its longest duration).
    fn send(&self, item: Result<T, Status>) -> bool {
        let left = self.deadline.saturating_duration_since(std::time::Instant::now());
        let (tx, wait) = (&self.tx, self.stall.min(left));
        // The timer is made inside the runtime (a scan thread is outside it).
        let sent = if left.is_zero() {
            Err(())
        } else {
            self.runtime.block_on(async move { tokio::time::timeout(wait, tx.send(item)).await }).map_err(|_| ())
        };
        match sent {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(()) => {
                let why = if std::time::Instant::now() >= self.deadline { SCAN_TOO_LONG } else { SCAN_STALLED };
                self.end.store(why, std::sync::atomic::Ordering::SeqCst);
                // Drop what the client never took; it gets the DEADLINE_EXCEEDED tail.
                if let Ok(mut rx) = self.rx.lock() {
                    while rx.try_recv().is_ok() {}
                }
                false
            }
        }
    }

    /// Sends the last item, if any, and marks the scan complete.
    fn finish(self, last: Option<Result<T, Status>>) {
        if let Some(item) = last {
            if !self.send(item) {
                return;
            }
        }
        let _ = self.end.compare_exchange(
            SCAN_RUNNING,
            SCAN_FINISHED,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

fn end_bound(end: &[u8]) -> Option<&[u8]> {
    if end.is_empty() {
        None
    } else {
        Some(end)
    }
}

#[tonic::async_trait]
impl Data for DataService {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::family("family", &r.family)?;
        validate::key(self.limits(), "key", &r.key)?;
        validate::value(self.limits(), "value", &r.value)?;
        let r = &r;
        self.ctx
            .routed(&origin, |origin| async move {
                let ops = vec![WriteOp::Put { row: r.key.clone(), family: r.family.clone(), qualifier: vec![], value: r.value.clone() }];
                match self.propose_write(&r.tenant, &r.table, ops, &origin).await? {
                    Leader::Here(w) => Ok(Response::new(pb::PutResponse { header: Some(w.header()) })),
                    Leader::There(to) => forward!(self.ctx, data_client, to, put, r.clone()),
                }
            })
            .await
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::family("family", &r.family)?;
        validate::key(self.limits(), "key", &r.key)?;
        let r = &r;
        self.ctx
            .routed(&origin, |origin| async move {
                let view = self.view(&origin, Perm::Read, &r.tenant, &r.table).await?;
                let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, &origin, Kind::Read).await?;
                let fam = family_of(&meta, &r.family)?;
                need_cell(&origin, &view, Perm::Read, &meta, &r.family, b"")
                    .map_err(|s| self.deny(&origin, &meta.tenant, &meta.name, s))?;
                let key = keys::data_key(meta.tenant_id, meta.id, &stored_row(&meta, tenant_keys.as_deref(), &r.key)?, fam, b"");
                let g = match self.read_shard(&key, r.consistency, &origin).await? {
                    Leader::There(to) => return forward!(self.ctx, data_client, to, get, r.clone()),
                    Leader::Here(g) => g,
                };
                // Memtables and the block cache answer most reads in microseconds: they are
                // read here, and only reads that need the disk go to a read thread.
                let v = match self.read_stored(&g, &key).await? {
                    None => None,
                    Some(stored) => Some(open(tenant_keys.as_deref(), &key, &stored)?),
                };
                self.audit_read(&origin, &meta, |a| {
                    a.families = vec![family_name(&meta, &r.family).to_string()];
                    a.keys = hashed_keys([r.key.as_slice()].into_iter());
                    a.rows = u64::from(v.is_some());
                    a.bytes = v.as_ref().map_or(0, |v| v.len() as u64);
                })
                .await?;
                Ok(Response::new(pb::GetResponse { found: v.is_some(), value: v.unwrap_or_default() }))
            })
            .await
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::family("family", &r.family)?;
        validate::key(self.limits(), "key", &r.key)?;
        let r = &r;
        self.ctx
            .routed(&origin, |origin| async move {
                let ops = vec![WriteOp::Delete { row: r.key.clone(), family: r.family.clone(), qualifier: vec![] }];
                match self.propose_write(&r.tenant, &r.table, ops, &origin).await? {
                    Leader::Here(w) => Ok(Response::new(pb::DeleteResponse { header: Some(w.header()), existed: w.existed })),
                    Leader::There(to) => forward!(self.ctx, data_client, to, delete, r.clone()),
                }
            })
            .await
    }

    async fn batch_get(&self, req: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::family("family", &r.family)?;
        let key_bytes: u64 = r.keys.iter().map(|k| k.len() as u64).sum();
        validate::batch(self.limits(), "keys", r.keys.len(), key_bytes)?;
        for k in &r.keys {
            validate::key(self.limits(), "keys", k)?;
        }
        self.ctx.routed(&origin, |origin| self.batch_get_once(&r, origin)).await
    }

    type ScanStream = ScanStream;

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<ScanStream>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::family("family", &r.family)?;
        validate::optional_key(self.limits(), "start_key", &r.start_key)?;
        validate::optional_key(self.limits(), "end_key", &r.end_key)?;
        validate::optional_key(self.limits(), "prefix", &r.prefix)?;
        let limit = validate::scan_limit(self.limits(), r.limit)?;
        self.ctx.routed(&origin, |origin| self.scan_once(&r, limit, origin)).await
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        let l = self.limits();
        let mut ops = Vec::with_capacity(r.ops.len());
        let mut bytes = 0u64;
        for (i, op) in r.ops.iter().enumerate() {
            match &op.op {
                Some(write_op::Op::Put(p)) => {
                    validate::family(&format!("ops[{i}].put.family"), &p.family)?;
                    validate::key(l, &format!("ops[{i}].put.key"), &p.key)?;
                    validate::value(l, &format!("ops[{i}].put.value"), &p.value)?;
                    bytes += (p.key.len() + p.value.len()) as u64;
                    ops.push(WriteOp::Put { row: p.key.clone(), family: p.family.clone(), qualifier: vec![], value: p.value.clone() });
                }
                Some(write_op::Op::Delete(d)) => {
                    validate::family(&format!("ops[{i}].delete.family"), &d.family)?;
                    validate::key(l, &format!("ops[{i}].delete.key"), &d.key)?;
                    bytes += d.key.len() as u64;
                    ops.push(WriteOp::Delete { row: d.key.clone(), family: d.family.clone(), qualifier: vec![] });
                }
                None => return Err(Status::invalid_argument(format!("ops[{i}]: no operation set"))),
            }
        }
        validate::batch(l, "ops", ops.len(), bytes)?;
        let (r, ops) = (&r, &ops);
        self.ctx
            .routed(&origin, |origin| async move {
                match self.propose_write(&r.tenant, &r.table, ops.clone(), &origin).await? {
                    Leader::Here(w) => Ok(Response::new(pb::WriteResponse { header: Some(w.header()) })),
                    Leader::There(to) => forward!(self.ctx, data_client, to, write, r.clone()),
                }
            })
            .await
    }

    async fn compare_and_swap(&self, req: Request<pb::CompareAndSwapRequest>) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::family("family", &r.family)?;
        validate::key(self.limits(), "key", &r.key)?;
        if let Some(v) = &r.expected_value {
            validate::value(self.limits(), "expected_value", v)?;
        }
        if let Some(v) = &r.new_value {
            validate::value(self.limits(), "new_value", v)?;
        }
        self.ctx.routed(&origin, |origin| self.compare_and_swap_once(&r, origin)).await
    }

    async fn mutate_row(&self, req: Request<pb::MutateRowRequest>) -> Result<Response<pb::MutateRowResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        let l = self.limits();
        validate::key(l, "row_key", &r.row_key)?;
        let mut ops = Vec::with_capacity(r.mutations.len());
        let mut bytes = r.row_key.len() as u64;
        let row = &r.row_key;
        for (i, m) in r.mutations.iter().enumerate() {
            match &m.mutation {
                Some(mutation::Mutation::SetCell(c)) => {
                    validate::name(&format!("mutations[{i}].set_cell.family"), &c.family)?;
                    validate::qualifier(l, &format!("mutations[{i}].set_cell.qualifier"), &c.qualifier)?;
                    validate::value(l, &format!("mutations[{i}].set_cell.value"), &c.value)?;
                    bytes += (c.qualifier.len() + c.value.len()) as u64;
                    ops.push(WriteOp::Put {
                        row: row.clone(),
                        family: c.family.clone(),
                        qualifier: c.qualifier.clone(),
                        value: c.value.clone(),
                    });
                }
                Some(mutation::Mutation::DeleteCell(c)) => {
                    validate::name(&format!("mutations[{i}].delete_cell.family"), &c.family)?;
                    validate::qualifier(l, &format!("mutations[{i}].delete_cell.qualifier"), &c.qualifier)?;
                    bytes += c.qualifier.len() as u64;
                    ops.push(WriteOp::Delete { row: row.clone(), family: c.family.clone(), qualifier: c.qualifier.clone() });
                }
                Some(mutation::Mutation::DeleteFamily(f)) => {
                    validate::name(&format!("mutations[{i}].delete_family.family"), &f.family)?;
                    ops.push(WriteOp::DeleteFamily { row: row.clone(), family: f.family.clone() });
                }
                Some(mutation::Mutation::DeleteRow(_)) => ops.push(WriteOp::DeleteRow { row: row.clone() }),
                None => return Err(Status::invalid_argument(format!("mutations[{i}]: no mutation set"))),
            }
        }
        validate::batch(l, "mutations", ops.len(), bytes)?;
        let (r, ops) = (&r, &ops);
        self.ctx
            .routed(&origin, |origin| async move {
                match self.propose_write(&r.tenant, &r.table, ops.clone(), &origin).await? {
                    Leader::Here(w) => Ok(Response::new(pb::MutateRowResponse { header: Some(w.header()) })),
                    Leader::There(to) => forward!(self.ctx, data_client, to, mutate_row, r.clone()),
                }
            })
            .await
    }

    async fn read_row(&self, req: Request<pb::ReadRowRequest>) -> Result<Response<pb::ReadRowResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::key(self.limits(), "row_key", &r.row_key)?;
        for f in &r.families {
            validate::name("families", f)?;
        }
        for q in &r.qualifiers {
            validate::qualifier(self.limits(), "qualifiers", q)?;
        }
        self.ctx.routed(&origin, |origin| self.read_row_once(&r, origin)).await
    }

    type ScanRowsStream = ScanRowsStream;

    async fn scan_rows(&self, req: Request<pb::ScanRowsRequest>) -> Result<Response<ScanRowsStream>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        validate::optional_key(self.limits(), "start_row", &r.start_row)?;
        validate::optional_key(self.limits(), "end_row", &r.end_row)?;
        validate::optional_key(self.limits(), "prefix", &r.prefix)?;
        for f in &r.families {
            validate::name("families", f)?;
        }
        let limit = validate::scan_limit(self.limits(), r.limit)?;
        self.ctx.routed(&origin, |origin| self.scan_rows_once(&r, limit, origin)).await
    }

    async fn locate_shards(&self, req: Request<pb::LocateShardsRequest>) -> Result<Response<pb::LocateShardsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.check_table_names(&r.tenant, &r.table)?;
        if r.keys.is_empty() && r.range.is_none() {
            return Err(Status::invalid_argument("keys, range: nothing to locate; give keys, a range, or both"));
        }
        if r.keys.len() > LOCATE_KEYS_MAX {
            return Err(Status::invalid_argument(format!(
                "keys: {} keys exceed the limit of {LOCATE_KEYS_MAX} per LocateShards request; ask in parts",
                r.keys.len()
            )));
        }
        for (i, k) in r.keys.iter().enumerate() {
            validate::key(self.limits(), &format!("keys[{i}]"), k)?;
        }
        if let Some(range) = &r.range {
            validate::optional_key(self.limits(), "range.start_row", &range.start_row)?;
            validate::optional_key(self.limits(), "range.end_row", &range.end_row)?;
            if range.limit as usize > LOCATE_RANGE_SHARDS_MAX {
                return Err(Status::invalid_argument(format!(
                    "range.limit: {} exceeds the limit of {LOCATE_RANGE_SHARDS_MAX} shards per LocateShards request",
                    range.limit
                )));
            }
        }
        // Where a table's rows are is for those who may read or write some of it.
        if let Err(denied) = self.view(&origin, Perm::Read, &r.tenant, &r.table).await {
            self.view(&origin, Perm::Write, &r.tenant, &r.table).await.map_err(|_| denied)?;
        }
        let (meta, tenant_keys) = self.table_access(&r.tenant, &r.table, &origin, Kind::Read).await?;
        // Shard bounds are row keys: a lookup in an access session is recorded (fail closed).
        self.audit_read(&origin, &meta, |a| {
            a.keys = match &r.range {
                Some(range) => range_text(&range.start_row, &range.end_row, b""),
                None => hashed_keys(r.keys.iter().map(Vec::as_slice)),
            };
        })
        .await?;
        let stored = r.keys.iter().map(|k| stored_row(&meta, tenant_keys.as_deref(), k)).collect::<Result<Vec<_>, _>>()?;
        let range = match &r.range {
            None => None,
            Some(range) => {
                if meta.hashed_row_keys {
                    return Err(Status::failed_precondition(format!(
                        "range: table `{}/{}` has hashed row keys: its rows are stored in hash order, so a row range has no shards; locate rows by key",
                        meta.tenant, meta.name
                    )));
                }
                let (start, end) = keys::row_range(meta.tenant_id, meta.id, &range.start_row, end_bound(&range.end_row), b"");
                let limit = if range.limit == 0 { LOCATE_RANGE_SHARDS_MAX } else { range.limit as usize };
                Some((start, end, limit))
            }
        };
        Ok(Response::new(locate::answer(&self.ctx, &meta, &stored, range)?))
    }
}
