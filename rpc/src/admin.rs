//! The `kho.v1.Admin` service.

use std::sync::Arc;
use std::time::Duration;

use kho_engine::crypto;
use kho_proto::v1::admin_server::Admin;
use kho_proto::v1::{self as pb};
use kho_raft::command::{NewTenantKeys, Outcome};
use kho_raft::keyring::{self, KeyState};
use kho_raft::node::ReplicaChange;
use kho_raft::shard::printable_key;
use kho_raft::{Command, GroupStatus};
use tonic::{Request, Response, Status};

use crate::ctx::{Ctx, Kind, Leader, Origin, FORWARD_MARGIN_MS};
use crate::{forward, status, validate};

/// How long ClusterStatus waits for each member's own status, milliseconds.
const MEMBER_STATUS_TIMEOUT_MS: u64 = 2_000;
/// How long AddNode may take (the learner catches up first), milliseconds.
const ADD_NODE_TIMEOUT_MS: u64 = 120_000;

pub struct AdminService {
    pub ctx: Arc<Ctx>,
}

/// The node's status: the meta group's Raft fields, follower read counters summed over the
/// node's data shards (`raft.follower_reads` is about data reads: the meta group's own
/// reads on followers are not counted), and its data shards.
fn node_status(ctx: &Ctx, s: &GroupStatus, address: &str, shards: Vec<pb::ShardStatus>) -> pb::NodeStatus {
    let node = &ctx.node;
    let (mut served, mut forwarded) = (0, 0);
    for id in node.group_ids() {
        if let Some(g) = node.group(id).filter(|g| g.state.kind == kho_raft::GroupKind::Data) {
            let st = g.status();
            served += st.follower_reads;
            forwarded += st.follower_reads_forwarded;
        }
    }
    let s = GroupStatus { follower_reads: served, follower_reads_forwarded: forwarded, ..s.clone() };
    pb::NodeStatus { client_address: ctx.client_addr.clone(), ..node_status_of(&s, address, shards) }
}

fn node_status_of(s: &GroupStatus, address: &str, shards: Vec<pb::ShardStatus>) -> pb::NodeStatus {
    pb::NodeStatus {
        node_id: s.node_id,
        address: address.to_string(),
        role: s.role.to_string(),
        term: s.term,
        leader_id: s.leader_id.unwrap_or(0),
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        error: String::new(),
        follower_reads: s.follower_reads,
        follower_reads_forwarded: s.follower_reads_forwarded,
        shards,
        client_address: String::new(),
    }
}

/// The data shards this node is a member of, with their state here.
fn shard_statuses(node: &kho_raft::RaftNode) -> Vec<pb::ShardStatus> {
    let mut out = Vec::new();
    for id in node.group_ids() {
        let Some(g) = node.group(id) else { continue };
        let Some(st) = g.state.shard() else { continue };
        let s = g.status();
        if !s.members.iter().any(|m| m.id == node.id) {
            continue; // a replica removed from the shard: not served any more
        }
        let (approximate_bytes, approximate_keys) = node.engine().approximate_range(kho_engine::Cf::Data, &st.desc.start, &st.desc.end);
        out.push(pb::ShardStatus {
            shard_id: id,
            tenant_id: st.desc.tenant,
            start: printable_key(&st.desc.start),
            end: printable_key(&st.desc.end),
            role: s.role.to_string(),
            term: s.term,
            leader_id: s.leader_id.unwrap_or(0),
            applied_index: s.applied_index,
            commit_index: s.commit_index,
            last_log_index: s.last_log_index,
            voters: st.desc.voters().collect(),
            learners: st.desc.learners().collect(),
            epoch_conf_ver: st.desc.epoch.conf_ver,
            epoch_version: st.desc.epoch.version,
            first_log_index: s.first_log_index,
            approximate_keys,
            approximate_bytes,
            asleep: s.asleep,
        });
    }
    out
}

/// Replicas of a new tenant's shard: the tenant setting's count (3), on the members of the
/// meta group holding the fewest replicas.
const SHARD_REPLICAS_DEFAULT: usize = 3;

/// Longest wait of `CreateTenant` for its first shard to elect a leader, milliseconds.
const SHARD_READY_WAIT_MS: u64 = 10_000;

/// Most shards `CreateTable` splits a new table into (`split_rows` + 1, `initial_shards`).
pub const CREATE_TABLE_SHARDS_MAX: usize = 64;

impl AdminService {
    /// The rows (as stored: plain, or first bytes of hashed keys) a new table is split at,
    /// from `split_rows` or `initial_shards`, sorted; INVALID_ARGUMENT naming the field.
    fn split_rows_of(&self, r: &pb::CreateTableRequest) -> Result<Vec<Vec<u8>>, Status> {
        if !r.split_rows.is_empty() && r.initial_shards > 1 {
            return Err(Status::invalid_argument("split_rows: give either split_rows or initial_shards, not both"));
        }
        if r.split_rows.len() >= CREATE_TABLE_SHARDS_MAX {
            return Err(Status::invalid_argument(format!(
                "split_rows: {} rows; at most {} (a table starts in at most {CREATE_TABLE_SHARDS_MAX} shards)",
                r.split_rows.len(),
                CREATE_TABLE_SHARDS_MAX - 1
            )));
        }
        if !r.split_rows.is_empty() && r.hashed_row_keys {
            return Err(Status::invalid_argument(
                "split_rows: the row keys of a table with hashed row keys are stored hashed, so a row does not say where it is stored; use initial_shards",
            ));
        }
        for (i, row) in r.split_rows.iter().enumerate() {
            crate::validate::key(&self.ctx.limits, &format!("split_rows[{i}]"), row)?;
        }
        let n = r.initial_shards as usize;
        if n > CREATE_TABLE_SHARDS_MAX {
            return Err(Status::invalid_argument(format!("initial_shards: {n}; at most {CREATE_TABLE_SHARDS_MAX}")));
        }
        let mut rows: Vec<Vec<u8>> = if n > 1 { (1..n).map(|i| vec![(i * 256 / n) as u8]).collect() } else { r.split_rows.clone() };
        rows.sort();
        rows.dedup();
        Ok(rows)
    }

    /// Splits the new table `tenant/name` at `rows` (as stored), one shard after the other
    /// from the left (each split's right side holds the rows after it), and returns the
    /// table's shards. UNAVAILABLE naming the row when a split fails: the table exists, its
    /// range split up to there.
    async fn pre_split(&self, tenant: &str, name: &str, rows: Vec<Vec<u8>>, origin: &Origin) -> Result<Vec<pb::ShardInfo>, Status> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let meta = self.ctx.meta().state.catalog().table(tenant, name).map_err(status::app_error)?.clone();
        let points: Vec<Vec<u8>> = rows.iter().map(|row| kho_engine::keys::row_prefix(meta.tenant_id, meta.id, row)).collect();
        let first = self.ctx.node.local_group_for(&points[0]).and_then(|g| g.state.shard()).map(|s| s.desc.id);
        let first = first.or_else(|| self.ctx.meta().state.catalog().shards.lookup(&points[0]).map(|d| d.id));
        let Some(shard) = first else {
            return Err(Status::unavailable(format!(
                "table `{tenant}/{name}` was created, but no shard holds its range yet; split it with `kho shard split`"
            )));
        };
        // From the last point to the first, always in the same shard (the left side keeps
        // the shard id and its leader): each split is one entry in a group that has a
        // leader, never the first command of a child still electing one.
        let mut rights = Vec::new();
        let mut left = None;
        for (row, point) in rows.iter().zip(&points).rev() {
            let Some(remaining) = origin.deadline.remaining(std::time::SystemTime::now()) else {
                return Err(Status::deadline_exceeded(format!(
                    "table `{tenant}/{name}` was created; the deadline passed before its split at row {}",
                    kho_raft::shard::printable_key(row)
                )));
            };
            let budget = crate::deadline::wait_budget(remaining);
            match tokio::time::timeout(budget, self.ctx.node.split_shard(shard, Some(point.clone()))).await {
                Ok(Ok((l, right))) => {
                    rights.push(self.shard_info(&right));
                    left = Some(l);
                }
                Ok(Err(e)) => {
                    let s = status::propose_error(e);
                    return Err(Status::unavailable(format!(
                        "table `{tenant}/{name}` was created, but its split at {} failed ({}: {}); split it with `kho shard split`",
                        kho_raft::shard::printable_key(point),
                        s.code(),
                        s.message()
                    )));
                }
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "table `{tenant}/{name}` was created; its split at {} was not done before the deadline (it may or may not have been applied)",
                        kho_raft::shard::printable_key(point)
                    )))
                }
            }
        }
        let mut out: Vec<pb::ShardInfo> = left.iter().map(|l| self.shard_info(l)).collect();
        out.extend(rights.into_iter().rev());
        Ok(out)
    }

    /// A shard as this node knows it: the descriptor given, its tenant's name, and the
    /// leader and term of its replica here (0 when this node holds none).
    fn shard_info(&self, d: &kho_raft::shard::ShardDesc) -> pb::ShardInfo {
        let tenant = self.ctx.meta().state.catalog().tenant_name(d.tenant).unwrap_or_default().to_string();
        let status = self.ctx.node.group(d.id).map(|g| g.status());
        let (approximate_bytes, approximate_keys) = self.ctx.node.engine().approximate_range(kho_engine::Cf::Data, &d.start, &d.end);
        pb::ShardInfo {
            id: d.id,
            tenant,
            tenant_id: d.tenant,
            start: printable_key(&d.start),
            end: printable_key(&d.end),
            voters: d.voters().collect(),
            learners: d.learners().collect(),
            leader_id: status.as_ref().and_then(|s| s.leader_id).unwrap_or(0),
            term: status.as_ref().map_or(0, |s| s.term),
            epoch_conf_ver: d.epoch.conf_ver,
            epoch_version: d.epoch.version,
            approximate_keys,
            approximate_bytes,
        }
    }
}

/// Records in a `ReadAudit` answer without a limit, count.
pub const READ_AUDIT_LIMIT_DEFAULT: usize = 1_000;
/// Most records in one `ReadAudit` answer, count.
pub const READ_AUDIT_LIMIT_MAX: usize = 10_000;

/// Longest token lifetime, seconds (a year).
pub const TOKEN_TTL_MAX_S: u64 = 31_536_000;
/// Lifetime of a token that asks for none, seconds (30 days).
pub const TOKEN_TTL_DEFAULT_S: u64 = 2_592_000;

impl AdminService {
    fn cluster_admin(&self, origin: &Origin, what: &str) -> Result<(), Status> {
        self.ctx.auth.require_cluster_admin(&origin.caller, what).map_err(|s| self.ctx.deny(origin, "", "", s))
    }

    fn auditor(&self, origin: &Origin) -> Result<(), Status> {
        self.ctx.auth.require_auditor(&origin.caller).map_err(|s| self.ctx.deny(origin, "", "", s))
    }

    /// [`Ctx::authorize`] of an admin grant on `tenant`.
    async fn tenant_admin(&self, origin: &Origin, tenant: &str, what: &str) -> Result<(), Status> {
        self.ctx
            .authorize(origin, tenant, "", || {
                let meta = self.ctx.meta();
                let cat = meta.state.catalog();
                self.ctx.auth.require_tenant_admin(&origin.caller, &cat, tenant, what)
            })
            .await
    }
}

fn grant_to_pb(g: &kho_raft::access::Grant) -> pb::Grant {
    use kho_raft::access::Perm;
    let permissions = [(Perm::Read, pb::Permission::Read), (Perm::Write, pb::Permission::Write), (Perm::Admin, pb::Permission::Admin)]
        .into_iter()
        .filter(|(p, _)| g.has(*p))
        .map(|(_, q)| q as i32)
        .collect();
    pb::Grant {
        grant_id: g.id,
        principal: g.principal.clone(),
        tenant: g.tenant.clone(),
        table: g.table.clone(),
        family: g.family.clone(),
        qualifiers: g.qualifiers.iter().map(|q| q.to_vec()).collect(),
        permissions,
        expires_at_ms: g.expires_at_ms,
        created_at_ms: g.created_at_ms,
        version: g.version,
        granted_by: g.granted_by.clone(),
        session_required: g.session_required,
        session_duration_max_ms: g.session_duration_max_ms,
    }
}

/// Most sessions one ListAccessSessions answer holds, count (the oldest ids first).
const LIST_SESSIONS_MAX: usize = 10_000;
/// Most bytes of sessions one ListAccessSessions answer holds.
const LIST_SESSIONS_BYTES_MAX: usize = 4 << 20;

fn session_to_pb(s: &kho_raft::access::Session, now_ms: u64) -> pb::AccessSession {
    pb::AccessSession {
        session_id: s.id.clone(),
        principal: s.principal.clone(),
        tenant: s.tenant.clone(),
        table: s.table.clone(),
        family: s.family.clone(),
        qualifiers: s.qualifiers.iter().map(|q| q.to_vec()).collect(),
        purpose: s.purpose.clone(),
        opened_at_ms: s.opened_at_ms,
        expires_at_ms: s.expires_at_ms,
        closed_at_ms: s.closed_at_ms,
        closed_by: s.closed_by.clone(),
        version: s.version,
        open: s.open_at(now_ms),
    }
}

fn admin_outcome(r: kho_raft::Response) -> Result<u64, Status> {
    match r.outcome {
        Outcome::Rejected(e) => Err(status::app_error(e)),
        _ => Ok(r.revision),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_tenant(&self, req: Request<pb::CreateTenantRequest>) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "create tenants")?;
        validate::name("name", &r.name)?;
        let master = self.ctx.meta().state.master.clone();
        let encrypt = match pb::TenantEncryption::try_from(r.encryption) {
            Ok(pb::TenantEncryption::Default) => master.is_some(),
            Ok(pb::TenantEncryption::Encrypted) if master.is_none() => {
                return Err(Status::failed_precondition(
                    "encryption: TENANT_ENCRYPTION_ENCRYPTED needs a master key on the nodes ([encryption] config)",
                ))
            }
            Ok(pb::TenantEncryption::Encrypted) => true,
            Ok(pb::TenantEncryption::Plaintext) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "encryption: unknown value {}; use 0 (DEFAULT), 1 (ENCRYPTED) or 2 (PLAINTEXT)",
                    r.encryption
                )))
            }
        };
        let keys = match (&master, encrypt) {
            (Some(m), true) => Some(NewTenantKeys {
                master_key_id: m.id(),
                hash_key: keyring::new_wrapped_key(m, &r.name, keyring::HASH_KEY_VERSION),
                data_key: keyring::new_wrapped_key(m, &r.name, 1),
            }),
            _ => None,
        };
        let replicas = {
            let meta = self.ctx.meta();
            let status = meta.status();
            let cat = meta.state.catalog();
            // Every member holds shards, learners of the meta group (beyond its 5 voters) too.
            let mut load: Vec<(u64, usize)> = status.members.iter().map(|m| (m.id, 0)).collect();
            for d in cat.shards.iter() {
                for r in &d.replicas {
                    if let Some(e) = load.iter_mut().find(|(n, _)| *n == r.node) {
                        e.1 += 1;
                    }
                }
            }
            let n = SHARD_REPLICAS_DEFAULT.min(load.len()).max(1);
            kho_raft::shard::choose_replicas(&load, n)
                .map_err(|e| Status::unavailable(format!("placing tenant `{}`'s first shard: {e}", r.name)))?
        };
        match self.ctx.propose_audited(Command::CreateTenant { name: r.name.clone(), keys, replicas }, &origin, &r.name, "").await? {
            Leader::Here(resp) => {
                let revision = admin_outcome(resp)?;
                self.wait_first_shard_led(&r.name).await;
                Ok(Response::new(pb::CreateTenantResponse { revision }))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, create_tenant, r),
        }
    }

    async fn list_tenants(&self, req: Request<pb::ListTenantsRequest>) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_tenants, r);
        }
        // A cluster admin sees every tenant; anyone else the tenants its grants touch.
        let caller = &origin.caller;
        self.ctx.auth.check_current(caller)?;
        let now = crate::auth::now_ms();
        let meta = self.ctx.meta();
        let cat = meta.state.catalog();
        let tenants =
            cat.tenants.keys().filter(|t| caller.cluster_admin || cat.access.touches_tenant(&caller.name, now, t)).cloned().collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn create_table(&self, req: Request<pb::CreateTableRequest>) -> Result<Response<pb::CreateTableResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.tenant_admin(&origin, &r.tenant, "create tables").await?;
        validate::name("tenant", &r.tenant)?;
        validate::name("name", &r.name)?;
        if r.families.is_empty() {
            return Err(Status::invalid_argument("families: a table needs at least one column family"));
        }
        for (i, f) in r.families.iter().enumerate() {
            validate::name(&format!("families[{i}].name"), &f.name)?;
        }
        let split_rows = self.split_rows_of(&r)?;
        let cmd = Command::CreateTable {
            tenant: r.tenant.clone(),
            name: r.name.clone(),
            families: r.families.iter().map(|f| f.name.clone()).collect(),
            hashed_row_keys: r.hashed_row_keys,
        };
        match self.ctx.propose_audited(cmd, &origin, &r.tenant, &r.name).await? {
            Leader::Here(resp) => {
                let revision = admin_outcome(resp)?;
                let shards = self.pre_split(&r.tenant, &r.name, split_rows, &origin).await?;
                Ok(Response::new(pb::CreateTableResponse { revision, shards }))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, create_table, r),
        }
    }

    async fn list_tables(&self, req: Request<pb::ListTablesRequest>) -> Result<Response<pb::ListTablesResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_tables, r);
        }
        let g = self.ctx.meta();
        let cat = g.state.catalog();
        // A cluster admin sees every table, a tenant's admin its tables; anyone else the
        // tables its grants cover (those that require a session too). Who may see nothing of a tenant does not learn whether
        // it exists.
        let caller = &origin.caller;
        let now = crate::auth::now_ms();
        self.ctx.auth.check_current(caller)?;
        if !caller.cluster_admin && !r.tenant.is_empty() && !cat.access.touches_tenant(&caller.name, now, &r.tenant) {
            return Err(Status::permission_denied(format!("principal `{}` has no grant on tenant `{}`", caller.name, r.tenant)));
        }
        if !r.tenant.is_empty() && !cat.tenants.contains_key(&r.tenant) {
            return Err(Status::not_found(format!("tenant `{}` does not exist", r.tenant)));
        }
        let sees = |t: &kho_raft::catalog::TableMeta| {
            use kho_raft::access::Perm;
            caller.cluster_admin
                || cat.access.on_tenant(&caller.name, now, Perm::Admin, &t.tenant)
                || [Perm::Read, Perm::Write].into_iter().any(|p| {
                    !cat.access.view(&caller.name, now, p, &t.tenant, &t.name).is_empty()
                        || cat.access.needs_session(&caller.name, now, p, &t.tenant, &t.name)
                })
        };
        let tables = cat
            .tables
            .values()
            .filter(|t| r.tenant.is_empty() || t.tenant == r.tenant)
            .filter(|t| sees(t))
            .map(|t| pb::TableInfo {
                tenant: t.tenant.clone(),
                name: t.name.clone(),
                families: t.families.iter().map(|f| pb::ColumnFamily { name: f.clone() }).collect(),
                hashed_row_keys: t.hashed_row_keys,
            })
            .collect();
        Ok(Response::new(pb::ListTablesResponse { tables }))
    }

    async fn drop_table(&self, req: Request<pb::DropTableRequest>) -> Result<Response<pb::DropTableResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.tenant_admin(&origin, &r.tenant, "drop tables").await?;
        validate::name("tenant", &r.tenant)?;
        validate::name("name", &r.name)?;
        let table = self.ctx.meta().state.resolve(&r.tenant, &r.name).ok();
        match self
            .ctx
            .propose_audited(Command::DropTable { tenant: r.tenant.clone(), name: r.name.clone() }, &origin, &r.tenant, &r.name)
            .await?
        {
            Leader::Here(resp) => {
                let revision = admin_outcome(resp)?;
                // Answered once every shard of the tenant has cleared the table: a read or a
                // write that reaches a shard after that finds it gone on every node, even one
                // whose catalog has not applied the drop yet. A shard that cannot be reached
                // now is cleared later by its leader (`kho_raft::key_jobs`).
                if let Some(t) = table {
                    let shards: Vec<u64> = self.ctx.meta().state.catalog().shards.shards_of_tenant(t.tenant_id).map(|d| d.id).collect();
                    for shard in shards {
                        let cmd = Command::ClearTable { shard, tenant: t.tenant_id, table: t.id };
                        let cleared = tokio::time::timeout(self.ctx.proposal_timeout, self.ctx.node.propose_anywhere(shard, cmd)).await;
                        let why = match cleared {
                            Ok(Ok(_)) => continue,
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => format!("no answer within {} ms", self.ctx.proposal_timeout.as_millis()),
                        };
                        return Err(Status::unavailable(format!(
                            "table `{}/{}` was dropped from the catalog, but shard {shard} did not confirm clearing its cells ({why}); \
                             it clears them once it has a leader",
                            r.tenant, r.name
                        )));
                    }
                }
                Ok(Response::new(pb::DropTableResponse { revision }))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, drop_table, r),
        }
    }

    async fn list_shards(&self, req: Request<pb::ListShardsRequest>) -> Result<Response<pb::ListShardsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "list shards")?;
        if !r.tenant.is_empty() {
            validate::name("tenant", &r.tenant)?;
        }
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_shards, r);
        }
        let descs: Vec<(String, kho_raft::shard::ShardDesc)> = {
            let meta = self.ctx.meta();
            let cat = meta.state.catalog();
            let wanted = if r.tenant.is_empty() {
                None
            } else {
                Some(*cat.tenants.get(&r.tenant).ok_or_else(|| Status::not_found(format!("tenant `{}` does not exist", r.tenant)))?)
            };
            cat.shards
                .iter()
                .filter(|d| wanted.is_none_or(|t| t == d.tenant))
                .map(|d| (cat.tenant_name(d.tenant).unwrap_or_default().to_string(), d.clone()))
                .collect()
        };
        // Leader, term and size as the replicas report them: the newest term wins.
        let statuses = self.member_statuses().await;
        let shards = descs
            .into_iter()
            .map(|(tenant, d)| {
                let reported = statuses.iter().flat_map(|n| n.shards.iter()).filter(|s| s.shard_id == d.id);
                let leader = reported.clone().filter(|s| s.role == "leader").max_by_key(|s| s.term);
                let term = reported.clone().map(|s| s.term).max().unwrap_or(0);
                let leader_id =
                    leader.map(|s| s.leader_id).or_else(|| reported.clone().filter(|s| s.term == term).map(|s| s.leader_id).max());
                pb::ShardInfo {
                    id: d.id,
                    tenant,
                    tenant_id: d.tenant,
                    start: printable_key(&d.start),
                    end: printable_key(&d.end),
                    voters: d.voters().collect(),
                    learners: d.learners().collect(),
                    leader_id: leader_id.unwrap_or(0),
                    term,
                    epoch_conf_ver: d.epoch.conf_ver,
                    epoch_version: d.epoch.version,
                    approximate_keys: leader.map(|s| s.approximate_keys).unwrap_or(0),
                    approximate_bytes: leader.map(|s| s.approximate_bytes).unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::ListShardsResponse { shards }))
    }

    async fn split_shard(&self, req: Request<pb::SplitShardRequest>) -> Result<Response<pb::SplitShardResponse>, Status> {
        let origin = self.ctx.origin_with(&req, Duration::from_millis(kho_raft::shard_split::SPLIT_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "split shards")?;
        if r.shard_id == 0 {
            return Err(Status::invalid_argument("shard_id: must be > 0 (group 0 is the meta group, which is not split)"));
        }
        let at = if r.at.is_empty() {
            None
        } else {
            Some(kho_raft::shard::parse_printable_key(&r.at).map_err(|e| Status::invalid_argument(format!("at: {e}")))?)
        };
        // The node hands the split to the shard's leader itself (the peer connection), so
        // the request is not forwarded; the deadline bounds the whole of it.
        let Some(remaining) = origin.deadline.remaining(std::time::SystemTime::now()) else {
            return Err(Status::deadline_exceeded("the request's deadline passed before the split began: nothing was split"));
        };
        let budget = crate::deadline::wait_budget(remaining);
        let (left, right) = match tokio::time::timeout(budget, self.ctx.node.split_shard(r.shard_id, at)).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "the split of shard {} was not done within {} ms, before the request's deadline; it may or may not have been applied: see `kho shard list`",
                    r.shard_id,
                    budget.as_millis()
                )))
            }
            Ok(Err(e)) => return Err(status::propose_error(e)),
            Ok(Ok(sides)) => sides,
        };
        Ok(Response::new(pb::SplitShardResponse { left: Some(self.shard_info(&left)), right: Some(self.shard_info(&right)) }))
    }

    async fn merge_shard(&self, req: Request<pb::MergeShardRequest>) -> Result<Response<pb::MergeShardResponse>, Status> {
        let origin = self.ctx.origin_with(&req, Duration::from_millis(kho_raft::shard_merge::MERGE_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "merge shards")?;
        if r.shard_id == 0 {
            return Err(Status::invalid_argument("shard_id: must be > 0 (group 0 is the meta group, which is not merged)"));
        }
        // As a split: the node hands the merge to the shard's leader over the peer
        // connection; the deadline bounds the whole of it.
        let Some(remaining) = origin.deadline.remaining(std::time::SystemTime::now()) else {
            return Err(Status::deadline_exceeded("the request's deadline passed before the merge began: nothing was merged"));
        };
        let budget = crate::deadline::wait_budget(remaining);
        let merged = match tokio::time::timeout(budget, self.ctx.node.merge_shard(r.shard_id)).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "the merge of shard {} was not done within {} ms, before the request's deadline; it may or may not have been applied (a merge left prepared is finished by the shard's leader): see `kho shard list`",
                    r.shard_id,
                    budget.as_millis()
                )))
            }
            Ok(Err(e)) => return Err(status::propose_error(e)),
            Ok(Ok(desc)) => desc,
        };
        Ok(Response::new(pb::MergeShardResponse { merged: Some(self.shard_info(&merged)) }))
    }

    async fn cluster_status(&self, req: Request<pb::ClusterStatusRequest>) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        self.cluster_admin(&origin, "read the cluster's status")?;
        let local = self.ctx.meta().status();
        let nodes = self.member_statuses().await;
        Ok(Response::new(pb::ClusterStatusResponse { leader_id: local.leader_id.unwrap_or(0), term: local.term, nodes }))
    }

    async fn node_status(&self, req: Request<pb::NodeStatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let origin = self.ctx.origin(&req)?;
        self.cluster_admin(&origin, "read a node's status")?;
        let s = self.ctx.meta().status();
        Ok(Response::new(node_status(&self.ctx, &s, &self.ctx.node.addr, shard_statuses(&self.ctx.node))))
    }

    async fn node_checksum(&self, req: Request<pb::NodeChecksumRequest>) -> Result<Response<pb::NodeChecksumResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        self.cluster_admin(&origin, "read node checksums")?;
        let node = self.ctx.node.clone();
        let me = node.id;
        let states: Vec<_> = node
            .group_ids()
            .into_iter()
            .filter_map(|id| node.group(id))
            .filter(|g| g.state.kind == kho_raft::GroupKind::Meta || g.status().members.iter().any(|m| m.id == me))
            .map(|g| g.state.clone())
            .collect();
        let groups = self
            .ctx
            .scans
            .run(move || -> Result<Vec<pb::GroupChecksum>, Status> {
                states
                    .iter()
                    .map(|st| {
                        let (applied_index, checksum, key_count) = st.checksum().map_err(status::internal)?;
                        Ok(pb::GroupChecksum { group_id: st.group, applied_index, checksum, key_count })
                    })
                    .collect()
            })
            .await??;
        let mut h = crc32fast::Hasher::new();
        for g in &groups {
            h.update(&g.group_id.to_be_bytes());
            h.update(&g.checksum.to_be_bytes());
        }
        Ok(Response::new(pb::NodeChecksumResponse {
            node_id: me,
            applied_index: groups.iter().map(|g| g.applied_index).sum(),
            checksum: h.finalize(),
            key_count: groups.iter().map(|g| g.key_count).sum(),
            groups,
        }))
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> Result<Response<pb::AddNodeResponse>, Status> {
        let origin = self.ctx.origin_with(&req, Duration::from_millis(ADD_NODE_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "add nodes")?;
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be > 0"));
        }
        match r.address.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
            _ => return Err(Status::invalid_argument(format!("address: `{}` is not host:port", r.address))),
        }
        let (id, addr) = (r.node_id, r.address.clone());
        let limit = Duration::from_millis(ADD_NODE_TIMEOUT_MS);
        match self.ctx.change_membership(&origin, limit, move |g| async move { g.add_node(id, addr).await }).await? {
            Leader::Here(voters) => {
                self.up_replicate(r.node_id, &r.address).await?;
                Ok(Response::new(pb::AddNodeResponse { voters }))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, add_node, r),
        }
    }

    async fn rotate_tenant_key(&self, req: Request<pb::RotateTenantKeyRequest>) -> Result<Response<pb::RotateTenantKeyResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.tenant_admin(&origin, &r.tenant, "rotate tenant keys").await?;
        validate::name("tenant", &r.tenant)?;
        let (version, has_hasher) = {
            let g = self.ctx.meta();
            let cat = g.state.catalog();
            let Some(&id) = cat.tenants.get(&r.tenant) else {
                return Err(Status::not_found(format!("tenant `{}` does not exist", r.tenant)));
            };
            let keys = cat.tenant_keys(id);
            (keys.as_ref().map(|k| k.latest_version()).unwrap_or(0) + 1, keys.is_some_and(|k| k.hasher.is_some()))
        };
        let m = self.master()?;
        let cmd = Command::RotateKey {
            tenant: r.tenant.clone(),
            version,
            master_key_id: m.id(),
            data_key: keyring::new_wrapped_key(&m, &r.tenant, version),
            hash_key: (!has_hasher).then(|| keyring::new_wrapped_key(&m, &r.tenant, keyring::HASH_KEY_VERSION)),
        };
        match self.ctx.propose_audited(cmd, &origin, &r.tenant, "").await? {
            Leader::Here(resp) => Ok(Response::new(pb::RotateTenantKeyResponse { revision: admin_outcome(resp)?, version })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, rotate_tenant_key, r),
        }
    }

    async fn start_reencryption(
        &self,
        req: Request<pb::StartReencryptionRequest>,
    ) -> Result<Response<pb::StartReencryptionResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.tenant_admin(&origin, &r.tenant, "re-encrypt tenants").await?;
        validate::name("tenant", &r.tenant)?;
        match self.ctx.propose_audited(Command::StartReencrypt { tenant: r.tenant.clone() }, &origin, &r.tenant, "").await? {
            Leader::Here(resp) => {
                let revision = resp.revision;
                match resp.outcome {
                    Outcome::Job { target, resumed } => {
                        Ok(Response::new(pb::StartReencryptionResponse { revision, target_version: target, resumed }))
                    }
                    Outcome::Rejected(e) => Err(status::app_error(e)),
                    other => Err(status::internal(format!("unexpected outcome {other:?}"))),
                }
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, start_reencryption, r),
        }
    }

    async fn tenant_key_status(&self, req: Request<pb::TenantKeyStatusRequest>) -> Result<Response<pb::TenantKeyStatusResponse>, Status> {
        let origin = self.ctx.origin_with(&req, Duration::from_millis(KEY_STATUS_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        self.tenant_admin(&origin, &r.tenant, "read key status").await?;
        if !r.tenant.is_empty() {
            validate::name("tenant", &r.tenant)?;
        }
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, tenant_key_status, r);
        }
        Ok(Response::new(self.key_status_here(&r.tenant, !r.without_counts, &origin).await?))
    }

    async fn destroy_tenant_key(
        &self,
        req: Request<pb::DestroyTenantKeyRequest>,
    ) -> Result<Response<pb::DestroyTenantKeyResponse>, Status> {
        let origin = self.ctx.origin_with(&req, Duration::from_millis(KEY_STATUS_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        self.tenant_admin(&origin, &r.tenant, "destroy tenant keys").await?;
        validate::name("tenant", &r.tenant)?;
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to.as_write(), destroy_tenant_key, r);
        }
        // Nothing may still be sealed under the version: count at the leader's applied state.
        // Values are only ever sealed under the current version (or a running re-encryption's
        // target, which the state machine checks), so the count cannot grow afterwards.
        let st = self.key_status_here(&r.tenant, true, &origin).await?;
        let tenant = st.tenants.first().ok_or_else(|| Status::not_found(format!("tenant `{}` does not exist", r.tenant)))?;
        let Some(v) = tenant.versions.iter().find(|v| v.version == r.version) else {
            return Err(Status::not_found(format!("tenant `{}` has no key version {}", r.tenant, r.version)));
        };
        if v.state == KeyState::Current.name() {
            return Err(Status::failed_precondition(format!("tenant `{}` key version {} is current; rotate first", r.tenant, r.version)));
        }
        if v.values > 0 {
            return Err(Status::failed_precondition(format!(
                "tenant `{}` key version {} still seals {} values; run `kho keys reencrypt --tenant {}` first",
                r.tenant, r.version, v.values, r.tenant
            )));
        }
        // Proposed here or not at all: the check above was made on this node's state.
        let here = Origin { forwarded: true, ..origin };
        match self.ctx.propose_audited(Command::DestroyKey { tenant: r.tenant.clone(), version: r.version }, &here, &r.tenant, "").await? {
            Leader::Here(resp) => Ok(Response::new(pb::DestroyTenantKeyResponse { revision: admin_outcome(resp)? })),
            Leader::There(_) => Err(Status::unavailable("the leader changed during the check; retry")),
        }
    }

    async fn compact_node(&self, req: Request<pb::CompactNodeRequest>) -> Result<Response<pb::CompactNodeResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        self.cluster_admin(&origin, "compact a node")?;
        let engine = self.ctx.node.engine().clone();
        // No snapshot keeps SST files of its own (a snapshot is a view of the live DB, held
        // only while one is sent), so nothing but the compaction is needed.
        self.ctx.scans.run(move || engine.flush_and_compact_all()).await?.map_err(status::engine_error)?;
        Ok(Response::new(pb::CompactNodeResponse { node_id: self.ctx.node.id }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let c = &origin.caller;
        let token_id = match &c.by {
            crate::auth::AuthBy::Token { id } => id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::WhoAmIResponse {
            principal: c.name.clone(),
            authenticated_by: c.by_name().to_string(),
            cluster_admin: c.cluster_admin,
            token_id,
        }))
    }

    async fn create_token(&self, req: Request<pb::CreateTokenRequest>) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "create tokens")?;
        kho_raft::access::check_principal("principal", &r.principal).map_err(status::app_error)?;
        if r.ttl_seconds > TOKEN_TTL_MAX_S {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: {} exceeds the limit of {TOKEN_TTL_MAX_S} s (a year)",
                r.ttl_seconds
            )));
        }
        if r.note.len() > kho_raft::access::TOKEN_NOTE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "note: {} bytes exceed the limit of {} bytes",
                r.note.len(),
                kho_raft::access::TOKEN_NOTE_BYTES_MAX
            )));
        }
        let ttl = if r.ttl_seconds == 0 { TOKEN_TTL_DEFAULT_S } else { r.ttl_seconds };
        let (id, secret) = crate::auth::new_token_secret();
        let now = crate::auth::now_ms();
        let token = kho_raft::access::Token {
            id: id.clone(),
            principal: r.principal.clone(),
            secret_sha256: crate::auth::secret_hash(&secret),
            created_at_ms: now,
            expires_at_ms: now + ttl * 1_000,
            revoked: false,
            note: r.note.clone(),
        };
        let expires_at_ms = token.expires_at_ms;
        match self.ctx.propose_audited(Command::CreateToken { token }, &origin, "", "").await? {
            Leader::Here(resp) => {
                admin_outcome(resp)?;
                Ok(Response::new(pb::CreateTokenResponse { token: crate::auth::token_text(&id, &secret), token_id: id, expires_at_ms }))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, create_token, r),
        }
    }

    async fn revoke_token(&self, req: Request<pb::RevokeTokenRequest>) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if !kho_raft::access::is_token_id(&r.token_id) {
            return Err(Status::invalid_argument(format!("token_id: `{}` is not 16 lowercase hex digits", r.token_id)));
        }
        // A principal may revoke its own tokens; anyone else's takes a cluster admin.
        let own = {
            let meta = self.ctx.meta();
            let cat = meta.state.catalog();
            cat.access.tokens.get(&r.token_id).is_some_and(|t| t.principal == origin.caller.name)
        };
        if !own {
            self.cluster_admin(&origin, "revoke another principal's token")?;
        }
        match self.ctx.propose_audited(Command::RevokeToken { id: r.token_id.clone() }, &origin, "", "").await? {
            Leader::Here(resp) => {
                admin_outcome(resp)?;
                Ok(Response::new(pb::RevokeTokenResponse {}))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, revoke_token, r),
        }
    }

    async fn list_tokens(&self, req: Request<pb::ListTokensRequest>) -> Result<Response<pb::ListTokensResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if r.principal != origin.caller.name {
            self.cluster_admin(&origin, "list other principals' tokens")?;
        }
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_tokens, r);
        }
        let meta = self.ctx.meta();
        let cat = meta.state.catalog();
        let tokens = cat
            .access
            .tokens
            .values()
            .filter(|t| r.principal.is_empty() || t.principal == r.principal)
            .map(|t| pb::TokenInfo {
                token_id: t.id.clone(),
                principal: t.principal.clone(),
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                revoked: t.revoked,
                note: t.note.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn create_grant(&self, req: Request<pb::CreateGrantRequest>) -> Result<Response<pb::CreateGrantResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        let g = r.grant.clone().ok_or_else(|| Status::invalid_argument("grant: not set"))?;
        let mut perms = 0u8;
        for p in &g.permissions {
            perms |= match pb::Permission::try_from(*p) {
                Ok(pb::Permission::Read) => kho_raft::access::Perm::Read as u8,
                Ok(pb::Permission::Write) => kho_raft::access::Perm::Write as u8,
                Ok(pb::Permission::Admin) => kho_raft::access::Perm::Admin as u8,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "grant.permissions: unknown value {p}; use 1 (READ), 2 (WRITE) or 3 (ADMIN)"
                    )))
                }
            };
        }
        let now = crate::auth::now_ms();
        if g.expires_at_ms != 0 && g.expires_at_ms <= now {
            return Err(Status::invalid_argument(format!("grant.expires_at_ms: {} is in the past", g.expires_at_ms)));
        }
        let grant = kho_raft::access::Grant {
            id: 0,
            principal: g.principal.clone(),
            tenant: g.tenant.clone(),
            table: g.table.clone(),
            family: g.family.clone(),
            qualifiers: g.qualifiers.iter().map(|q| serde_bytes::ByteBuf::from(q.clone())).collect(),
            perms,
            expires_at_ms: g.expires_at_ms,
            created_at_ms: now,
            version: 0,
            granted_by: origin.caller.name.clone(),
            session_required: g.session_required,
            session_duration_max_ms: g.session_duration_max_ms,
        };
        grant.check().map_err(status::app_error)?;
        self.tenant_admin(&origin, &grant.tenant, "grant on it").await?;
        let tenant = grant.tenant.clone();
        match self.ctx.propose_audited(Command::AddGrant { grant }, &origin, &tenant, "").await? {
            Leader::Here(resp) => match resp.outcome {
                Outcome::Granted { id } => Ok(Response::new(pb::CreateGrantResponse { grant_id: id, version: resp.revision })),
                Outcome::Rejected(e) => Err(status::app_error(e)),
                other => Err(status::internal(format!("CreateGrant answered {other:?}"))),
            },
            Leader::There(to) => forward!(self.ctx, admin_client, to, create_grant, r),
        }
    }

    async fn revoke_grant(&self, req: Request<pb::RevokeGrantRequest>) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        let tenant = {
            let meta = self.ctx.meta();
            let cat = meta.state.catalog();
            cat.access.grants.get(&r.grant_id).map(|g| g.tenant.clone())
        };
        match tenant {
            Some(t) => self.tenant_admin(&origin, &t, "revoke grants on it").await?,
            None => self.cluster_admin(&origin, "revoke a grant this node does not know")?,
        }
        match self.ctx.propose_audited(Command::RevokeGrant { id: r.grant_id }, &origin, "", "").await? {
            Leader::Here(resp) => Ok(Response::new(pb::RevokeGrantResponse { version: admin_outcome(resp)? })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, revoke_grant, r),
        }
    }

    async fn list_grants(&self, req: Request<pb::ListGrantsRequest>) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_grants, r);
        }
        let caller = &origin.caller;
        self.ctx.auth.check_current(caller)?;
        let now = crate::auth::now_ms();
        let meta = self.ctx.meta();
        let cat = meta.state.catalog();
        // A cluster admin sees every grant, a tenant's admin the grants on its tenant,
        // anyone its own.
        let grants = cat
            .access
            .grants
            .values()
            .filter(|g| r.tenant.is_empty() || g.tenant == r.tenant)
            .filter(|g| r.principal.is_empty() || g.principal == r.principal)
            .filter(|g| {
                caller.cluster_admin
                    || g.principal == caller.name
                    || cat.access.on_tenant(&caller.name, now, kho_raft::access::Perm::Admin, &g.tenant)
            })
            .map(grant_to_pb)
            .collect();
        Ok(Response::new(pb::ListGrantsResponse { grants }))
    }

    async fn open_access_session(
        &self,
        req: Request<pb::OpenAccessSessionRequest>,
    ) -> Result<Response<pb::OpenAccessSessionResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        let caller = origin.caller.clone();
        if caller.by == crate::auth::AuthBy::Off {
            return Err(Status::failed_precondition("access sessions need authorization on (auth.enabled): there is no principal"));
        }
        let now = crate::auth::now_ms();
        if r.duration_ms == 0 || r.duration_ms > kho_raft::access::SESSION_DURATION_MAX_MS {
            return Err(Status::invalid_argument(format!(
                "duration_ms: {} ms; a session lasts 1 ms to its grant's session_duration_max_ms (at most {} ms, 24 hours)",
                r.duration_ms,
                kho_raft::access::SESSION_DURATION_MAX_MS
            )));
        }
        let session = kho_raft::access::Session {
            id: crate::auth::new_session_id(),
            principal: caller.name.clone(),
            tenant: r.tenant.clone(),
            table: r.table.clone(),
            family: r.family.clone(),
            qualifiers: r.qualifiers.iter().map(|q| serde_bytes::ByteBuf::from(q.clone())).collect(),
            purpose: r.purpose.clone(),
            opened_at_ms: now,
            expires_at_ms: now + r.duration_ms,
            closed_at_ms: 0,
            closed_by: String::new(),
            version: 0,
        };
        session.check().map_err(status::app_error)?;
        // The grant behind it, from this node's copy (again after a read barrier when it
        // has none), and again by the meta group at apply.
        let limit = self
            .ctx
            .authorize(&origin, &r.tenant, &r.table, || {
                self.ctx.auth.check_current(&caller)?;
                let meta = self.ctx.meta();
                let cat = meta.state.catalog();
                cat.access
                    .session_limit(&caller.name, now, &session.tenant, &session.table, &session.family, &session.qualifiers)
                    .ok_or_else(|| {
                        Status::permission_denied(format!(
                            "principal `{}` holds no live grant that requires an access session and covers {}",
                            caller.name,
                            session.scope()
                        ))
                    })
            })
            .await?;
        if r.duration_ms > limit {
            return Err(Status::invalid_argument(format!(
                "duration_ms: {} ms exceeds the {limit} ms its grant allows (session_duration_max_ms)",
                r.duration_ms
            )));
        }
        let tenant = r.tenant.clone();
        let table = r.table.clone();
        match self.ctx.propose_audited(Command::OpenSession { session: session.clone() }, &origin, &tenant, &table).await? {
            Leader::Here(resp) => {
                let version = admin_outcome(resp)?;
                let session = kho_raft::access::Session { version, ..session };
                Ok(Response::new(pb::OpenAccessSessionResponse { session: Some(session_to_pb(&session, now)) }))
            }
            Leader::There(to) => forward!(self.ctx, admin_client, to, open_access_session, r),
        }
    }

    async fn close_access_session(
        &self,
        req: Request<pb::CloseAccessSessionRequest>,
    ) -> Result<Response<pb::CloseAccessSessionResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if !kho_raft::access::is_session_id(&r.session_id) {
            return Err(Status::invalid_argument(format!("session_id: `{}` is not 32 lowercase hex digits", r.session_id)));
        }
        // Its principal closes it; anyone else needs to be an admin of its tenant. A session
        // this node does not know yet (opened through another node) is looked up again after
        // a read barrier.
        let lookup = || {
            let meta = self.ctx.meta();
            let cat = meta.state.catalog();
            cat.access.sessions.get(&r.session_id).map(|s| (s.principal.clone(), s.tenant.clone()))
        };
        let mut known = lookup();
        if known.is_none() {
            if let Leader::Here(()) = self.ctx.read_barrier(&origin).await? {
                known = lookup();
            }
        }
        match &known {
            Some((principal, _)) if *principal == origin.caller.name => {}
            Some((_, tenant)) => self.tenant_admin(&origin, tenant, "close another principal's access session").await?,
            None => self.cluster_admin(&origin, "close an access session this node does not know")?,
        }
        let cmd =
            Command::CloseSession { id: r.session_id.clone(), closed_at_ms: crate::auth::now_ms(), closed_by: origin.caller.name.clone() };
        let tenant = known.map(|(_, t)| t).unwrap_or_default();
        match self.ctx.propose_audited(cmd, &origin, &tenant, "").await? {
            Leader::Here(resp) => Ok(Response::new(pb::CloseAccessSessionResponse { version: admin_outcome(resp)? })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, close_access_session, r),
        }
    }

    async fn list_access_sessions(
        &self,
        req: Request<pb::ListAccessSessionsRequest>,
    ) -> Result<Response<pb::ListAccessSessionsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_access_sessions, r);
        }
        let caller = &origin.caller;
        self.ctx.auth.check_current(caller)?;
        let now = crate::auth::now_ms();
        let meta = self.ctx.meta();
        let cat = meta.state.catalog();
        let matching = cat
            .access
            .sessions
            .values()
            .filter(|s| r.tenant.is_empty() || s.tenant == r.tenant)
            .filter(|s| r.principal.is_empty() || s.principal == r.principal)
            .filter(|s| r.include_ended || s.open_at(now))
            .filter(|s| {
                caller.cluster_admin
                    || s.principal == caller.name
                    || cat.access.on_tenant(&caller.name, now, kho_raft::access::Perm::Admin, &s.tenant)
            });
        let (mut sessions, mut bytes, mut truncated) = (Vec::new(), 0usize, false);
        for s in matching {
            let one = session_to_pb(s, now);
            bytes += prost::Message::encoded_len(&one);
            if sessions.len() == LIST_SESSIONS_MAX || bytes > LIST_SESSIONS_BYTES_MAX {
                truncated = true;
                break;
            }
            sessions.push(one);
        }
        Ok(Response::new(pb::ListAccessSessionsResponse { sessions, truncated }))
    }

    async fn read_audit(&self, req: Request<pb::ReadAuditRequest>) -> Result<Response<pb::ReadAuditResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        self.auditor(&origin)?;
        let limit = match r.limit as usize {
            0 => READ_AUDIT_LIMIT_DEFAULT,
            n if n > READ_AUDIT_LIMIT_MAX => {
                return Err(Status::invalid_argument(format!("limit: {n} exceeds the limit of {READ_AUDIT_LIMIT_MAX} records per request")))
            }
            n => n,
        };
        if !r.local {
            if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
                return forward!(self.ctx, admin_client, to, read_audit, r);
            }
        }
        let head = self.ctx.meta().state.catalog().audit_head;
        let engine = self.ctx.node.engine().clone();
        let from = r.from_seq.max(1);
        let (prev, entries) = self
            .ctx
            .reads
            .run(move || -> Result<(Vec<u8>, Vec<pb::AuditEntry>), Status> {
                use kho_raft::audit;
                let prev = if from == 1 {
                    audit::GENESIS.to_vec()
                } else {
                    match engine.get_value(&audit::entry_key(from - 1)).map_err(status::engine_error)? {
                        Some(v) => audit::Entry::decode(&v).map_err(status::internal)?.hash.to_vec(),
                        None => Vec::new(),
                    }
                };
                let start = audit::entry_key(from);
                let end = audit::entry_key(u64::MAX);
                let mut out = Vec::new();
                for (k, v) in engine.scan_values(&start, &end, limit).map_err(status::engine_error)? {
                    let dk = kho_engine::keys::decode_data_key(&k).map_err(status::engine_error)?;
                    let seq = u64::from_be_bytes(dk.row.as_slice().try_into().map_err(|_| status::internal("audit row is not 8 bytes"))?);
                    let e = audit::Entry::decode(&v).map_err(status::internal)?;
                    let rec = audit::Record::decode(&e.record).unwrap_or_default();
                    out.push(pb::AuditEntry {
                        seq,
                        index: e.index,
                        raw: e.record,
                        outcome: e.outcome,
                        hash: e.hash.to_vec(),
                        time_ms: rec.time_ms,
                        node: rec.node,
                        principal: rec.principal,
                        auth: rec.auth,
                        action: rec.action,
                        tenant: rec.tenant,
                        table: rec.table,
                        families: rec.families,
                        fields: rec.fields,
                        keys: rec.keys,
                        rows: rec.rows,
                        bytes: rec.bytes,
                        session: rec.session,
                        purpose: rec.purpose,
                        decision: rec.decision,
                        reason: rec.reason,
                        request_id: rec.request_id,
                    });
                }
                Ok((prev, out))
            })
            .await??;
        Ok(Response::new(pb::ReadAuditResponse { entries, head_seq: head.seq, head_hash: head.hash.to_vec(), prev_hash: prev }))
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let origin = self.ctx.origin_with(&req, Duration::from_millis(ADD_NODE_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        self.cluster_admin(&origin, "remove nodes")?;
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be > 0"));
        }
        let g = self.ctx.meta();
        if g.member_addr(r.node_id).is_none() {
            return Err(Status::not_found(format!("node {} is not a member", r.node_id)));
        }
        if let Some(to) = self.ctx.leader_elsewhere(&g, &origin, Kind::Write) {
            return forward!(self.ctx, admin_client, to, remove_node, r);
        }
        self.move_replicas_off(r.node_id).await?;
        let id = r.node_id;
        let limit = self.ctx.proposal_timeout * 2;
        match self.ctx.change_membership(&origin, limit, move |g| async move { g.remove_node(id).await }).await? {
            Leader::Here(voters) => Ok(Response::new(pb::RemoveNodeResponse { voters })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, remove_node, r),
        }
    }
}

/// How long counting a tenant's values may take (it scans the tenant), milliseconds.
const KEY_STATUS_TIMEOUT_MS: u64 = 120_000;

impl AdminService {
    /// Counts values per key version for the tenants asked for, on this node (the leader,
    /// after a read barrier).
    ///
    /// The tenants' re-encryption jobs are read once, before the shards' read barriers,
    /// and the values are counted after them: a job shown `done` had its last step applied
    /// on the shard before it was marked done, so the count shows it. (Read after the
    /// count, a job finishing meanwhile was shown done beside a count taken before its last
    /// step.) The key versions are read after the count, so a version rotated in during it
    /// is known.
    async fn key_status_here(&self, tenant: &str, count: bool, origin: &Origin) -> Result<pb::TenantKeyStatusResponse, Status> {
        let state = self.ctx.meta().state.clone();
        type Wanted = (String, u32, Option<kho_raft::keyring::Job>);
        let wanted: Vec<Wanted> = {
            let cat = state.catalog();
            if !tenant.is_empty() && !cat.tenants.contains_key(tenant) {
                return Err(Status::not_found(format!("tenant `{tenant}` does not exist")));
            }
            cat.tenants
                .iter()
                .filter(|(n, _)| tenant.is_empty() || n.as_str() == tenant)
                .map(|(n, i)| (n.clone(), *i, cat.jobs.get(i).cloned()))
                .collect()
        };
        // The values are counted in every shard of the tenants, each after its read barrier
        // (a linearizable count): this node must hold a replica of every one of them.
        let mut shards: Vec<(u32, std::sync::Arc<kho_raft::state_machine::SmState>)> = Vec::new();
        if count {
            let mut descs: Vec<_> = {
                let cat = state.catalog();
                wanted.iter().flat_map(|(_, id, _)| cat.shards.shards_of_tenant(*id).cloned().collect::<Vec<_>>()).collect()
            };
            // A shard split here that the shard map does not show yet is counted too.
            for g in self.ctx.node.group_ids().into_iter().filter_map(|id| self.ctx.node.group(id)) {
                let Some(st) = g.state.shard() else { continue };
                if wanted.iter().any(|(_, t, _)| *t == st.desc.tenant) && !descs.iter().any(|d| d.id == g.id) && self.ctx.node.serves(&g) {
                    descs.push(st.desc);
                }
            }
            for d in descs {
                let Some(g) = self.ctx.node.group(d.id) else {
                    return Err(Status::unavailable(format!(
                        "node {} holds no replica of shard {} (tenant {}): ask a node that holds every shard of the tenant",
                        self.ctx.node.id, d.id, d.tenant
                    )));
                };
                if let Leader::There(_) = self.ctx.read_barrier_in(&g, origin).await? {
                    return Err(Status::unavailable(format!(
                        "shard {} cannot be read linearizably on node {}; retry",
                        d.id, self.ctx.node.id
                    )));
                }
                shards.push((d.tenant, g.state.clone()));
            }
        }
        let count = self.ctx.scans.run(move || -> Result<pb::TenantKeyStatusResponse, Status> {
            let mut out = pb::TenantKeyStatusResponse { counted: count, ..Default::default() };
            for (name, id, job) in wanted {
                let (applied, per_version, plain) = if count {
                    let mut total = (0u64, std::collections::BTreeMap::<u32, u64>::new(), 0u64);
                    for (_, shard) in shards.iter().filter(|(t, _)| *t == id) {
                        let (applied, per_version, plain) = shard.key_usage(id).map_err(status::internal)?;
                        total.0 = total.0.max(applied);
                        for (v, n) in per_version {
                            *total.1.entry(v).or_insert(0) += n;
                        }
                        total.2 += plain;
                    }
                    total
                } else {
                    (state.applied_state().map_err(status::internal)?.0.map(|l| l.index).unwrap_or(0), Default::default(), 0)
                };
                out.applied_index = out.applied_index.max(applied);
                let keys = state.catalog().tenant_keys(id);
                let current = keys.as_ref().and_then(|k| k.current().map(|(v, _)| v)).unwrap_or(0);
                let mut versions: Vec<pb::KeyVersionStatus> = keys
                    .iter()
                    .flat_map(|k| k.versions.iter())
                    .map(|(v, kv)| pb::KeyVersionStatus {
                        version: *v,
                        state: kv.state.name().to_string(),
                        values: per_version.get(v).copied().unwrap_or(0),
                        created_revision: kv.created_revision,
                    })
                    .collect();
                // Values under a version the catalog does not know would be corruption: show them.
                for (v, n) in &per_version {
                    if !versions.iter().any(|x| x.version == *v) {
                        versions.push(pb::KeyVersionStatus { version: *v, state: "unknown".into(), values: *n, created_revision: 0 });
                    }
                }
                let reencryption = job.map(|j| pb::ReencryptionStatus {
                    target_version: j.target,
                    done: j.done,
                    visited: j.visited,
                    rewritten: j.rewritten,
                });
                out.tenants.push(pb::TenantKeys {
                    tenant: name,
                    encrypted: current != 0,
                    current_version: current,
                    versions,
                    plaintext_values: plain,
                    reencryption,
                });
            }
            Ok(out)
        });
        tokio::time::timeout(Duration::from_millis(KEY_STATUS_TIMEOUT_MS), count)
            .await
            .map_err(|_| Status::deadline_exceeded(format!("counting values took longer than {KEY_STATUS_TIMEOUT_MS} ms")))??
    }

    /// Every member's NodeStatus, as each reports it (this node's from its own state); an
    /// entry with role `unreachable` for one that did not answer within
    /// [`MEMBER_STATUS_TIMEOUT_MS`].
    async fn member_statuses(&self) -> Vec<pb::NodeStatus> {
        let local = self.ctx.meta().status();
        let mut members = local.members.clone();
        if !members.iter().any(|m| m.id == local.node_id) {
            members.push(kho_raft::MemberStatus { id: local.node_id, addr: self.ctx.node.addr.clone(), voter: false });
        }
        let asks = members.into_iter().map(|m| {
            let ctx = self.ctx.clone();
            let local = local.clone();
            async move {
                if m.id == ctx.node.id {
                    return node_status(&ctx, &local, &m.addr, shard_statuses(&ctx.node));
                }
                let ask = async {
                    let mut c = ctx.admin_client(&m.addr)?;
                    c.node_status(pb::NodeStatusRequest {}).await.map(|r| r.into_inner())
                };
                match tokio::time::timeout(Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS), ask).await {
                    Ok(Ok(mut s)) => {
                        s.address = m.addr.clone();
                        ctx.note_client_addr(m.id, &s.client_address);
                        s
                    }
                    Ok(Err(e)) => unreachable_status(m.id, &m.addr, e.message()),
                    Err(_) => unreachable_status(m.id, &m.addr, &format!("no answer within {MEMBER_STATUS_TIMEOUT_MS} ms")),
                }
            }
        });
        futures::future::join_all(asks).await
    }

    /// Waits (at most [`SHARD_READY_WAIT_MS`]) until the first shard of a new tenant has
    /// elected a leader, as this node's replica sees it, so that the tenant takes writes
    /// when `CreateTenant` returns. Returns at once if this node holds no replica of it.
    async fn wait_first_shard_led(&self, tenant: &str) {
        let deadline = std::time::Instant::now() + Duration::from_millis(SHARD_READY_WAIT_MS);
        let shard = {
            let meta = self.ctx.meta();
            let cat = meta.state.catalog();
            cat.tenants.get(tenant).and_then(|id| cat.shards.shards_of_tenant(*id).next().cloned())
        };
        let Some(desc) = shard.filter(|d| d.replicas.iter().any(|r| r.node == self.ctx.node.id)) else { return };
        while std::time::Instant::now() < deadline {
            if self.ctx.node.group(desc.id).is_none() {
                let _ = self.ctx.node.ensure_shard_group(desc.id).await;
            }
            if self.ctx.node.group(desc.id).is_some_and(|g| g.status_leader().is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(tenant, shard = desc.id, "the tenant's first shard has no leader yet");
    }

    /// Adds `node` to every data shard that has fewer replicas than its count, one at a
    /// time (a learner first, caught up, then a voter).
    async fn up_replicate(&self, node: u64, addr: &str) -> Result<(), Status> {
        let short: Vec<_> = {
            let meta = self.ctx.meta();
            let cat = meta.state.catalog();
            cat.shards
                .iter()
                .filter(|d| d.replicas.len() < SHARD_REPLICAS_DEFAULT && !d.replicas.iter().any(|r| r.node == node))
                .map(|d| d.id)
                .collect()
        };
        for shard in short {
            self.ctx.node.change_replicas(shard, ReplicaChange::Add { node, addr: addr.to_string() }).await.map_err(|e| {
                Status::unavailable(format!("node {node} joined the cluster, but adding it to shard {shard} failed: {e}; retry AddNode"))
            })?;
        }
        Ok(())
    }

    /// Moves every replica of `node` to another member of the cluster (the one holding the
    /// fewest replicas that the shard is not on), one shard at a time: the new replica is
    /// added and caught up before `node` leaves the shard. A shard with no other member to
    /// move to loses the replica if it keeps another voter; a shard whose only voter is on
    /// `node` is refused.
    async fn move_replicas_off(&self, node: u64) -> Result<(), Status> {
        loop {
            let next = {
                let meta = self.ctx.meta();
                let status = meta.status();
                let cat = meta.state.catalog();
                let Some(desc) = cat.shards.iter().find(|d| d.replicas.iter().any(|r| r.node == node)).cloned() else { break };
                let mut load: Vec<(u64, usize, String)> =
                    status.members.iter().filter(|m| m.id != node).map(|m| (m.id, 0, m.addr.clone())).collect();
                for d in cat.shards.iter() {
                    for r in &d.replicas {
                        if let Some(e) = load.iter_mut().find(|(n, _, _)| *n == r.node) {
                            e.1 += 1;
                        }
                    }
                }
                load.retain(|(n, _, _)| !desc.replicas.iter().any(|r| r.node == *n));
                load.sort_by_key(|(n, c, _)| (*c, *n));
                (desc, load.into_iter().next())
            };
            let (desc, spare) = next;
            if let Some((to, _, addr)) = spare {
                self.ctx.node.change_replicas(desc.id, ReplicaChange::Add { node: to, addr }).await.map_err(|e| {
                    Status::unavailable(format!("moving shard {}'s replica off node {node}: adding node {to} failed: {e}; retry", desc.id))
                })?;
            } else if desc.voters().filter(|v| *v != node).count() == 0 {
                return Err(Status::failed_precondition(format!(
                    "shard {} has its only voter on node {node} and no other member to move it to: add a node first",
                    desc.id
                )));
            }
            let after = self.ctx.node.change_replicas(desc.id, ReplicaChange::Remove { node }).await.map_err(|e| {
                Status::unavailable(format!("moving shard {}'s replica off node {node}: removing it failed: {e}; retry", desc.id))
            })?;
            if after.replicas.iter().any(|r| r.node == node) {
                return Err(Status::internal(format!("shard {} still lists node {node} after its removal", desc.id)));
            }
            // The map is updated by the report that change_replicas made; wait for it here.
            let deadline = std::time::Instant::now() + Duration::from_millis(ADD_NODE_TIMEOUT_MS);
            while self.ctx.meta().state.catalog().shards.get(desc.id).is_some_and(|d| d.replicas.iter().any(|r| r.node == node)) {
                if std::time::Instant::now() > deadline {
                    return Err(Status::unavailable(format!(
                        "shard {}'s new replicas did not reach the shard map in time; retry",
                        desc.id
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn master(&self) -> Result<std::sync::Arc<crypto::MasterKey>, Status> {
        self.ctx
            .meta()
            .state
            .master
            .clone()
            .ok_or_else(|| Status::failed_precondition("this node has no master key ([encryption] config): tenant keys cannot be made"))
    }
}

fn unreachable_status(id: u64, addr: &str, error: &str) -> pb::NodeStatus {
    pb::NodeStatus {
        node_id: id,
        address: addr.to_string(),
        role: "unreachable".to_string(),
        error: error.to_string(),
        ..Default::default()
    }
}
