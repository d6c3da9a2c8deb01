//! The `kho.v1.Admin` service.

use std::sync::Arc;
use std::time::Duration;

use kho_engine::crypto;
use kho_proto::v1::admin_server::Admin;
use kho_proto::v1::{self as pb};
use kho_raft::command::{NewTenantKeys, Outcome};
use kho_raft::keyring::{self, KeyState};
use kho_raft::{Command, GroupStatus};
use tonic::{Request, Response, Status};

use crate::ctx::{origin_of, Ctx, Leader, Origin, FORWARD_MARGIN_MS};
use crate::{forward, status, validate};

/// How long ClusterStatus waits for each member's own status, milliseconds.
const MEMBER_STATUS_TIMEOUT_MS: u64 = 2_000;
/// How long AddNode may take (the learner catches up first), milliseconds.
const ADD_NODE_TIMEOUT_MS: u64 = 120_000;

pub struct AdminService {
    pub ctx: Arc<Ctx>,
}

fn node_status(s: &GroupStatus, address: &str) -> pb::NodeStatus {
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
        validate::name("name", &r.name)?;
        let master = self.ctx.group().state.master.clone();
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
        match self.ctx.propose(Command::CreateTenant { name: r.name.clone(), keys }, &origin).await? {
            Leader::Here(resp) => Ok(Response::new(pb::CreateTenantResponse { revision: admin_outcome(resp)? })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, create_tenant, r),
        }
    }

    async fn list_tenants(&self, req: Request<pb::ListTenantsRequest>) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_tenants, r);
        }
        let tenants = self.ctx.group().state.catalog().tenants.keys().cloned().collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn create_table(&self, req: Request<pb::CreateTableRequest>) -> Result<Response<pb::CreateTableResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        validate::name("tenant", &r.tenant)?;
        validate::name("name", &r.name)?;
        if r.families.is_empty() {
            return Err(Status::invalid_argument("families: a table needs at least one column family"));
        }
        for (i, f) in r.families.iter().enumerate() {
            validate::name(&format!("families[{i}].name"), &f.name)?;
        }
        let cmd = Command::CreateTable {
            tenant: r.tenant.clone(),
            name: r.name.clone(),
            families: r.families.iter().map(|f| f.name.clone()).collect(),
            hashed_row_keys: r.hashed_row_keys,
        };
        match self.ctx.propose(cmd, &origin).await? {
            Leader::Here(resp) => Ok(Response::new(pb::CreateTableResponse { revision: admin_outcome(resp)? })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, create_table, r),
        }
    }

    async fn list_tables(&self, req: Request<pb::ListTablesRequest>) -> Result<Response<pb::ListTablesResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, list_tables, r);
        }
        let g = self.ctx.group();
        let cat = g.state.catalog();
        if !r.tenant.is_empty() && !cat.tenants.contains_key(&r.tenant) {
            return Err(Status::not_found(format!("tenant `{}` does not exist", r.tenant)));
        }
        let tables = cat
            .tables
            .values()
            .filter(|t| r.tenant.is_empty() || t.tenant == r.tenant)
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
        validate::name("tenant", &r.tenant)?;
        validate::name("name", &r.name)?;
        match self.ctx.propose(Command::DropTable { tenant: r.tenant.clone(), name: r.name.clone() }, &origin).await? {
            Leader::Here(resp) => Ok(Response::new(pb::DropTableResponse { revision: admin_outcome(resp)? })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, drop_table, r),
        }
    }

    async fn cluster_status(&self, _req: Request<pb::ClusterStatusRequest>) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let local = self.ctx.group().status();
        let mut members = local.members.clone();
        if !members.iter().any(|m| m.id == local.node_id) {
            members.push(kho_raft::MemberStatus { id: local.node_id, addr: self.ctx.node.addr.clone(), voter: false });
        }
        let asks = members.into_iter().map(|m| {
            let ctx = self.ctx.clone();
            let local = local.clone();
            async move {
                if m.id == ctx.node.id {
                    return node_status(&local, &m.addr);
                }
                let ask = async {
                    let mut c = ctx.admin_client(&m.addr)?;
                    c.node_status(pb::NodeStatusRequest {}).await.map(|r| r.into_inner())
                };
                match tokio::time::timeout(Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS), ask).await {
                    Ok(Ok(mut s)) => {
                        s.address = m.addr.clone();
                        s
                    }
                    Ok(Err(e)) => unreachable_status(m.id, &m.addr, e.message()),
                    Err(_) => unreachable_status(m.id, &m.addr, &format!("no answer within {MEMBER_STATUS_TIMEOUT_MS} ms")),
                }
            }
        });
        let nodes = futures::future::join_all(asks).await;
        Ok(Response::new(pb::ClusterStatusResponse { leader_id: local.leader_id.unwrap_or(0), term: local.term, nodes }))
    }

    async fn node_status(&self, _req: Request<pb::NodeStatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let s = self.ctx.group().status();
        Ok(Response::new(node_status(&s, &self.ctx.node.addr)))
    }

    async fn node_checksum(&self, _req: Request<pb::NodeChecksumRequest>) -> Result<Response<pb::NodeChecksumResponse>, Status> {
        let state = self.ctx.group().state.clone();
        let (applied_index, checksum, key_count) = self.ctx.scans.run(move || state.checksum()).await?.map_err(status::internal)?;
        Ok(Response::new(pb::NodeChecksumResponse { node_id: self.ctx.node.id, applied_index, checksum, key_count }))
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> Result<Response<pb::AddNodeResponse>, Status> {
        let origin = origin_of(&req, Duration::from_millis(ADD_NODE_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
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
            Leader::Here(voters) => Ok(Response::new(pb::AddNodeResponse { voters })),
            Leader::There(to) => forward!(self.ctx, admin_client, to, add_node, r),
        }
    }

    async fn rotate_tenant_key(&self, req: Request<pb::RotateTenantKeyRequest>) -> Result<Response<pb::RotateTenantKeyResponse>, Status> {
        let origin = self.ctx.origin(&req)?;
        let r = req.into_inner();
        validate::name("tenant", &r.tenant)?;
        let (version, has_hasher) = {
            let g = self.ctx.group();
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
        match self.ctx.propose(cmd, &origin).await? {
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
        validate::name("tenant", &r.tenant)?;
        match self.ctx.propose(Command::StartReencrypt { tenant: r.tenant.clone() }, &origin).await? {
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
        let origin = origin_of(&req, Duration::from_millis(KEY_STATUS_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        if !r.tenant.is_empty() {
            validate::name("tenant", &r.tenant)?;
        }
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to, tenant_key_status, r);
        }
        Ok(Response::new(self.key_status_here(&r.tenant, !r.without_counts).await?))
    }

    async fn destroy_tenant_key(
        &self,
        req: Request<pb::DestroyTenantKeyRequest>,
    ) -> Result<Response<pb::DestroyTenantKeyResponse>, Status> {
        let origin = origin_of(&req, Duration::from_millis(KEY_STATUS_TIMEOUT_MS + FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        validate::name("tenant", &r.tenant)?;
        if let Leader::There(to) = self.ctx.read_barrier(&origin).await? {
            return forward!(self.ctx, admin_client, to.as_write(), destroy_tenant_key, r);
        }
        // Nothing may still be sealed under the version: count at the leader's applied state.
        // Values are only ever sealed under the current version (or a running re-encryption's
        // target, which the state machine checks), so the count cannot grow afterwards.
        let st = self.key_status_here(&r.tenant, true).await?;
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
        match self.ctx.propose(Command::DestroyKey { tenant: r.tenant.clone(), version: r.version }, &here).await? {
            Leader::Here(resp) => Ok(Response::new(pb::DestroyTenantKeyResponse { revision: admin_outcome(resp)? })),
            Leader::There(_) => Err(Status::unavailable("the leader changed during the check; retry")),
        }
    }

    async fn compact_node(&self, _req: Request<pb::CompactNodeRequest>) -> Result<Response<pb::CompactNodeResponse>, Status> {
        let engine = self.ctx.node.engine().clone();
        // No snapshot keeps SST files of its own (a snapshot is a view of the live DB, held
        // only while one is sent), so nothing but the compaction is needed.
        self.ctx.scans.run(move || engine.flush_and_compact_all()).await?.map_err(status::engine_error)?;
        Ok(Response::new(pb::CompactNodeResponse { node_id: self.ctx.node.id }))
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let origin = origin_of(&req, self.ctx.proposal_timeout * 2 + Duration::from_millis(FORWARD_MARGIN_MS))?;
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be > 0"));
        }
        let g = self.ctx.group();
        if g.member_addr(r.node_id).is_none() {
            return Err(Status::not_found(format!("node {} is not a member", r.node_id)));
        }
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
    async fn key_status_here(&self, tenant: &str, count: bool) -> Result<pb::TenantKeyStatusResponse, Status> {
        let state = self.ctx.group().state.clone();
        let wanted: Vec<(String, u32)> = {
            let cat = state.catalog();
            if !tenant.is_empty() && !cat.tenants.contains_key(tenant) {
                return Err(Status::not_found(format!("tenant `{tenant}` does not exist")));
            }
            cat.tenants.iter().filter(|(n, _)| tenant.is_empty() || n.as_str() == tenant).map(|(n, i)| (n.clone(), *i)).collect()
        };
        let count = self.ctx.scans.run(move || -> Result<pb::TenantKeyStatusResponse, Status> {
            let mut out = pb::TenantKeyStatusResponse { counted: count, ..Default::default() };
            for (name, id) in wanted {
                let (applied, per_version, plain) = if count {
                    state.key_usage(id).map_err(status::internal)?
                } else {
                    (state.applied_state().map_err(status::internal)?.0.map(|l| l.index).unwrap_or(0), Default::default(), 0)
                };
                out.applied_index = out.applied_index.max(applied);
                let cat = state.catalog();
                let keys = cat.tenant_keys(id);
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
                let reencryption = cat.jobs.get(&id).map(|j| pb::ReencryptionStatus {
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

    fn master(&self) -> Result<std::sync::Arc<crypto::MasterKey>, Status> {
        self.ctx
            .group()
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
