//! The `kho.v1.Admin` service.

use std::sync::Arc;
use std::time::Duration;

use kho_proto::v1::admin_server::Admin;
use kho_proto::v1::{self as pb};
use kho_raft::command::Outcome;
use kho_raft::{Command, GroupStatus, ProposeError};
use tonic::{Request, Response, Status};

use crate::ctx::{is_forwarded, Ctx, Leader};
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
    }
}

fn admin_outcome(r: kho_raft::Response) -> Result<u64, Status> {
    match r.outcome {
        Outcome::Rejected(e) => Err(status::app_error(e)),
        _ => Ok(r.revision),
    }
}

impl AdminService {
    async fn membership_change<F, Fut>(&self, fwd: bool, timeout_ms: u64, f: F) -> Result<Leader<Vec<u64>>, Status>
    where
        F: FnOnce(Arc<kho_raft::Group>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u64>, ProposeError>>,
    {
        let g = self.ctx.group();
        match tokio::time::timeout(Duration::from_millis(timeout_ms), f(g)).await {
            Err(_) => Err(Status::unavailable(format!("membership change not done within {timeout_ms} ms; check `kho cluster status`"))),
            Ok(Ok(voters)) => Ok(Leader::Here(voters)),
            Ok(Err(ProposeError::ForwardToLeader { leader_id: Some(id), leader_addr: Some(addr) })) if !fwd && id != self.ctx.node.id => {
                Ok(Leader::There(addr))
            }
            Ok(Err(e)) => Err(status::propose_error(e)),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_tenant(&self, req: Request<pb::CreateTenantRequest>) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let fwd = is_forwarded(&req);
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        match self.ctx.propose(Command::CreateTenant { name: r.name.clone() }, fwd).await? {
            Leader::Here(resp) => Ok(Response::new(pb::CreateTenantResponse { revision: admin_outcome(resp)? })),
            Leader::There(addr) => forward!(self.ctx, admin_client, addr, create_tenant, r),
        }
    }

    async fn list_tenants(&self, req: Request<pb::ListTenantsRequest>) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let fwd = is_forwarded(&req);
        let r = req.into_inner();
        if let Leader::There(addr) = self.ctx.read_barrier(fwd).await? {
            return forward!(self.ctx, admin_client, addr, list_tenants, r);
        }
        let tenants = self.ctx.group().state.catalog().tenants.keys().cloned().collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn create_table(&self, req: Request<pb::CreateTableRequest>) -> Result<Response<pb::CreateTableResponse>, Status> {
        let fwd = is_forwarded(&req);
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
        };
        match self.ctx.propose(cmd, fwd).await? {
            Leader::Here(resp) => Ok(Response::new(pb::CreateTableResponse { revision: admin_outcome(resp)? })),
            Leader::There(addr) => forward!(self.ctx, admin_client, addr, create_table, r),
        }
    }

    async fn list_tables(&self, req: Request<pb::ListTablesRequest>) -> Result<Response<pb::ListTablesResponse>, Status> {
        let fwd = is_forwarded(&req);
        let r = req.into_inner();
        if let Leader::There(addr) = self.ctx.read_barrier(fwd).await? {
            return forward!(self.ctx, admin_client, addr, list_tables, r);
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
            })
            .collect();
        Ok(Response::new(pb::ListTablesResponse { tables }))
    }

    async fn drop_table(&self, req: Request<pb::DropTableRequest>) -> Result<Response<pb::DropTableResponse>, Status> {
        let fwd = is_forwarded(&req);
        let r = req.into_inner();
        validate::name("tenant", &r.tenant)?;
        validate::name("name", &r.name)?;
        match self.ctx.propose(Command::DropTable { tenant: r.tenant.clone(), name: r.name.clone() }, fwd).await? {
            Leader::Here(resp) => Ok(Response::new(pb::DropTableResponse { revision: admin_outcome(resp)? })),
            Leader::There(addr) => forward!(self.ctx, admin_client, addr, drop_table, r),
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
        let (applied_index, checksum, key_count) =
            tokio::task::spawn_blocking(move || state.checksum()).await.map_err(status::internal)?.map_err(status::internal)?;
        Ok(Response::new(pb::NodeChecksumResponse { node_id: self.ctx.node.id, applied_index, checksum, key_count }))
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> Result<Response<pb::AddNodeResponse>, Status> {
        let fwd = is_forwarded(&req);
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be > 0"));
        }
        match r.address.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
            _ => return Err(Status::invalid_argument(format!("address: `{}` is not host:port", r.address))),
        }
        let (id, addr) = (r.node_id, r.address.clone());
        match self.membership_change(fwd, ADD_NODE_TIMEOUT_MS, move |g| async move { g.add_node(id, addr).await }).await? {
            Leader::Here(voters) => Ok(Response::new(pb::AddNodeResponse { voters })),
            Leader::There(addr) => {
                let mut c = self.ctx.admin_client(&addr)?;
                c.add_node(crate::ctx::forwarded_request(r, Duration::from_millis(ADD_NODE_TIMEOUT_MS + 5_000))).await
            }
        }
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let fwd = is_forwarded(&req);
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be > 0"));
        }
        let g = self.ctx.group();
        if g.member_addr(r.node_id).is_none() {
            return Err(Status::not_found(format!("node {} is not a member", r.node_id)));
        }
        let id = r.node_id;
        let timeout_ms = self.ctx.proposal_timeout.as_millis() as u64 * 2;
        match self.membership_change(fwd, timeout_ms, move |g| async move { g.remove_node(id).await }).await? {
            Leader::Here(voters) => Ok(Response::new(pb::RemoveNodeResponse { voters })),
            Leader::There(addr) => forward!(self.ctx, admin_client, addr, remove_node, r),
        }
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
