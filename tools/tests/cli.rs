//! The `kho` client commands, run as a real process against an in-process fake of the
//! Data and Admin services (a BTreeMap, no Raft). This checks what the user sees: the
//! output formats, the exit codes, `error: <CODE>: <message>`, and endpoint failover.
//! It does not check the real server; cluster-tests does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use kho_proto::v1::admin_server::{Admin, AdminServer};
use kho_proto::v1::data_server::{Data, DataServer};
use kho_proto::v1::*;
use tonic::{Request, Response, Status};

type Cells = BTreeMap<(Vec<u8>, String, Vec<u8>), Vec<u8>>;

/// The keys of one tenant, as the fake keeps them.
#[derive(Default)]
struct FakeKeys {
    encrypted: bool,
    /// version -> (state, values)
    versions: BTreeMap<u32, (String, u64)>,
    plaintext_values: u64,
    job: Option<ReencryptionStatus>,
}

#[derive(Default)]
struct Model {
    tenants: BTreeSet<String>,
    keys: BTreeMap<String, FakeKeys>,
    /// (tenant, table) -> families
    tables: BTreeMap<(String, String), Vec<String>>,
    /// Tables created with hashed row keys.
    hashed: BTreeSet<(String, String)>,
    /// (tenant, table) -> (row, family, qualifier) -> value
    cells: BTreeMap<(String, String), Cells>,
    voters: BTreeSet<u64>,
    revision: u64,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Model>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Model) -> Result<T, Status>) -> Result<T, Status> {
        let mut m = self.0.lock().unwrap();
        f(&mut m)
    }
}

impl Model {
    fn bump(&mut self) -> Option<WriteHeader> {
        self.revision += 1;
        Some(WriteHeader { revision: self.revision, shard_id: 1 })
    }

    fn family(&self, tenant: &str, table: &str, family: &str) -> Result<String, Status> {
        let fams = self
            .tables
            .get(&(tenant.to_string(), table.to_string()))
            .ok_or_else(|| Status::not_found(format!("table {tenant}/{table}")))?;
        if family.is_empty() {
            return Ok(fams[0].clone());
        }
        if !fams.iter().any(|f| f == family) {
            return Err(Status::invalid_argument(format!("family: `{family}` is not a family of {tenant}/{table}")));
        }
        Ok(family.to_string())
    }

    fn cells(&mut self, tenant: &str, table: &str) -> &mut Cells {
        self.cells.entry((tenant.to_string(), table.to_string())).or_default()
    }
}

fn in_bounds(key: &[u8], start: &[u8], end: &[u8], prefix: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end) && key.starts_with(prefix)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Data for Fake {
    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            let fam = m.family(&r.tenant, &r.table, &r.family)?;
            m.cells(&r.tenant, &r.table).insert((r.key, fam, vec![]), r.value);
            Ok(Response::new(PutResponse { header: m.bump() }))
        })
    }

    async fn get(&self, r: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            let fam = m.family(&r.tenant, &r.table, &r.family)?;
            let v = m.cells(&r.tenant, &r.table).get(&(r.key, fam, vec![])).cloned();
            Ok(Response::new(GetResponse { found: v.is_some(), value: v.unwrap_or_default() }))
        })
    }

    async fn delete(&self, r: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            let fam = m.family(&r.tenant, &r.table, &r.family)?;
            let existed = m.cells(&r.tenant, &r.table).remove(&(r.key, fam, vec![])).is_some();
            Ok(Response::new(DeleteResponse { header: m.bump(), existed }))
        })
    }

    async fn batch_get(&self, _: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ScanStream = BoxStream<ScanResponse>;

    async fn scan(&self, r: Request<ScanRequest>) -> Result<Response<Self::ScanStream>, Status> {
        let r = r.into_inner();
        let kvs = self.with(|m| {
            let fam = m.family(&r.tenant, &r.table, &r.family)?;
            let limit = if r.limit == 0 { usize::MAX } else { r.limit as usize };
            Ok(m.cells(&r.tenant, &r.table)
                .iter()
                .filter(|((row, f, q), _)| *f == fam && q.is_empty() && in_bounds(row, &r.start_key, &r.end_key, &r.prefix))
                .take(limit)
                .map(|((row, _, _), v)| KeyValue { key: row.clone(), value: v.clone() })
                .collect::<Vec<_>>())
        })?;
        // Two pairs per message, so the client must read several chunks.
        let chunks: Vec<Result<ScanResponse, Status>> = kvs.chunks(2).map(|c| Ok(ScanResponse { kvs: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn write(&self, _: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn compare_and_swap(&self, _: Request<CompareAndSwapRequest>) -> Result<Response<CompareAndSwapResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn mutate_row(&self, r: Request<MutateRowRequest>) -> Result<Response<MutateRowResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            for mu in &r.mutations {
                match &mu.mutation {
                    Some(mutation::Mutation::SetCell(s)) => {
                        m.family(&r.tenant, &r.table, &s.family)?;
                    }
                    Some(mutation::Mutation::DeleteCell(d)) => {
                        m.family(&r.tenant, &r.table, &d.family)?;
                    }
                    Some(mutation::Mutation::DeleteFamily(d)) => {
                        m.family(&r.tenant, &r.table, &d.family)?;
                    }
                    Some(mutation::Mutation::DeleteRow(_)) => {}
                    None => return Err(Status::invalid_argument("mutations: empty mutation")),
                }
            }
            let row = r.row_key.clone();
            let cells = m.cells(&r.tenant, &r.table);
            for mu in r.mutations {
                match mu.mutation {
                    Some(mutation::Mutation::SetCell(s)) => {
                        cells.insert((row.clone(), s.family, s.qualifier), s.value);
                    }
                    Some(mutation::Mutation::DeleteCell(d)) => {
                        cells.remove(&(row.clone(), d.family, d.qualifier));
                    }
                    Some(mutation::Mutation::DeleteFamily(d)) => cells.retain(|(rk, f, _), _| !(*rk == row && *f == d.family)),
                    Some(mutation::Mutation::DeleteRow(_)) => cells.retain(|(rk, _, _), _| *rk != row),
                    None => {}
                }
            }
            Ok(Response::new(MutateRowResponse { header: m.bump() }))
        })
    }

    async fn read_row(&self, r: Request<ReadRowRequest>) -> Result<Response<ReadRowResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            m.family(&r.tenant, &r.table, "")?;
            let cells: Vec<Cell> = m
                .cells(&r.tenant, &r.table)
                .iter()
                .filter(|((rk, f, _), _)| *rk == r.row_key && (r.families.is_empty() || r.families.contains(f)))
                .map(|((_, f, q), v)| Cell { family: f.clone(), qualifier: q.clone(), value: v.clone() })
                .collect();
            Ok(Response::new(ReadRowResponse { found: !cells.is_empty(), row: Some(Row { key: r.row_key, cells, cells_withheld: false }) }))
        })
    }

    type ScanRowsStream = BoxStream<ScanRowsResponse>;

    async fn locate_shards(
        &self,
        _: Request<kho_proto::v1::LocateShardsRequest>,
    ) -> Result<Response<kho_proto::v1::LocateShardsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn scan_rows(&self, r: Request<ScanRowsRequest>) -> Result<Response<Self::ScanRowsStream>, Status> {
        let r = r.into_inner();
        let rows = self.with(|m| {
            m.family(&r.tenant, &r.table, "")?;
            let mut rows: Vec<Row> = Vec::new();
            for ((rk, f, q), v) in m.cells(&r.tenant, &r.table).iter() {
                if !in_bounds(rk, &r.start_row, &r.end_row, &r.prefix) || !(r.families.is_empty() || r.families.contains(f)) {
                    continue;
                }
                let cell = Cell { family: f.clone(), qualifier: q.clone(), value: v.clone() };
                match rows.last_mut() {
                    Some(last) if last.key == *rk => last.cells.push(cell),
                    _ => rows.push(Row { key: rk.clone(), cells: vec![cell], cells_withheld: false }),
                }
            }
            if r.limit > 0 {
                rows.truncate(r.limit as usize);
            }
            Ok(rows)
        })?;
        let chunks: Vec<Result<ScanRowsResponse, Status>> = rows.chunks(2).map(|c| Ok(ScanRowsResponse { rows: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn create_tenant(&self, r: Request<CreateTenantRequest>) -> Result<Response<CreateTenantResponse>, Status> {
        let r = r.into_inner();
        let name = r.name;
        self.with(|m| {
            if !m.tenants.insert(name.clone()) {
                return Err(Status::already_exists(format!("tenant {name}")));
            }
            // The fake cluster has a master key: default tenants are encrypted.
            let encrypted = r.encryption != TenantEncryption::Plaintext as i32;
            let mut keys = FakeKeys { encrypted, ..FakeKeys::default() };
            if encrypted {
                keys.versions.insert(1, ("current".into(), 0));
            }
            m.keys.insert(name.clone(), keys);
            Ok(Response::new(CreateTenantResponse { revision: m.bump().map(|h| h.revision).unwrap_or(0) }))
        })
    }

    async fn list_tenants(&self, _: Request<ListTenantsRequest>) -> Result<Response<ListTenantsResponse>, Status> {
        self.with(|m| Ok(Response::new(ListTenantsResponse { tenants: m.tenants.iter().cloned().collect() })))
    }

    async fn create_table(&self, r: Request<CreateTableRequest>) -> Result<Response<CreateTableResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            if !m.tenants.contains(&r.tenant) {
                return Err(Status::not_found(format!("tenant {}", r.tenant)));
            }
            let key = (r.tenant.clone(), r.name.clone());
            if m.tables.contains_key(&key) {
                return Err(Status::already_exists(format!("table {}/{}", r.tenant, r.name)));
            }
            if r.hashed_row_keys {
                if !m.keys.get(&r.tenant).is_some_and(|k| k.encrypted) {
                    return Err(Status::failed_precondition(format!("tenant {} is not encrypted", r.tenant)));
                }
                m.hashed.insert(key.clone());
            }
            m.tables.insert(key, r.families.into_iter().map(|f| f.name).collect());
            Ok(Response::new(CreateTableResponse { revision: m.bump().map(|h| h.revision).unwrap_or(0), shards: vec![] }))
        })
    }

    async fn list_shards(&self, r: Request<ListShardsRequest>) -> Result<Response<ListShardsResponse>, Status> {
        let tenant = r.into_inner().tenant;
        self.with(|m| {
            // One shard per tenant, covering its range, on nodes 1-3, led by node 2.
            let shards = m
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| tenant.is_empty() || **t == tenant)
                .map(|(i, t)| ShardInfo {
                    id: i as u64 + 1,
                    tenant: t.clone(),
                    tenant_id: i as u32 + 1,
                    start: format!("t{}", i + 1),
                    end: format!("t{}", i + 2),
                    voters: vec![1, 2, 3],
                    learners: vec![],
                    leader_id: 2,
                    term: 4,
                    epoch_conf_ver: 1,
                    epoch_version: 1,
                    approximate_keys: 10,
                    approximate_bytes: 2048,
                })
                .collect();
            Ok(Response::new(ListShardsResponse { shards }))
        })
    }

    async fn merge_shard(&self, r: Request<MergeShardRequest>) -> Result<Response<MergeShardResponse>, Status> {
        Err(Status::not_found(format!("shard {} does not exist", r.into_inner().shard_id)))
    }

    async fn split_shard(&self, r: Request<SplitShardRequest>) -> Result<Response<SplitShardResponse>, Status> {
        let r = r.into_inner();
        // Shard 1 splits at the point given (printable, passed through), or at `t1/tb1/rm`.
        if r.shard_id != 1 {
            return Err(Status::not_found(format!("shard {} does not exist", r.shard_id)));
        }
        let at = if r.at.is_empty() { "t1/tb1/rm".to_string() } else { r.at };
        let side = |id: u64, start: &str, end: &str| ShardInfo {
            id,
            tenant: "dan_cu".into(),
            tenant_id: 1,
            start: start.into(),
            end: end.into(),
            voters: vec![1, 2, 3],
            learners: vec![],
            leader_id: 2,
            term: 4,
            epoch_conf_ver: 1,
            epoch_version: 2,
            approximate_keys: 5,
            approximate_bytes: 1024,
        };
        Ok(Response::new(SplitShardResponse { left: Some(side(1, "t1", &at)), right: Some(side(7, &at, "t2")) }))
    }

    async fn list_tables(&self, r: Request<ListTablesRequest>) -> Result<Response<ListTablesResponse>, Status> {
        let tenant = r.into_inner().tenant;
        self.with(|m| {
            let tables = m
                .tables
                .iter()
                .filter(|((t, _), _)| tenant.is_empty() || *t == tenant)
                .map(|((t, n), f)| TableInfo {
                    tenant: t.clone(),
                    name: n.clone(),
                    families: f.iter().map(|name| ColumnFamily { name: name.clone() }).collect(),
                    hashed_row_keys: m.hashed.contains(&(t.clone(), n.clone())),
                })
                .collect();
            Ok(Response::new(ListTablesResponse { tables }))
        })
    }

    async fn drop_table(&self, r: Request<DropTableRequest>) -> Result<Response<DropTableResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            let key = (r.tenant.clone(), r.name.clone());
            if m.tables.remove(&key).is_none() {
                return Err(Status::not_found(format!("table {}/{}", r.tenant, r.name)));
            }
            m.cells.remove(&key);
            Ok(Response::new(DropTableResponse { revision: m.bump().map(|h| h.revision).unwrap_or(0) }))
        })
    }

    async fn cluster_status(&self, _: Request<ClusterStatusRequest>) -> Result<Response<ClusterStatusResponse>, Status> {
        let node = |id: u64, role: &str, error: &str| NodeStatus {
            node_id: id,
            address: format!("127.0.0.1:710{id}"),
            role: role.into(),
            term: 4,
            leader_id: 2,
            last_log_index: 57,
            commit_index: 57,
            applied_index: 56,
            error: error.into(),
            ..Default::default()
        };
        Ok(Response::new(ClusterStatusResponse {
            leader_id: 2,
            term: 4,
            nodes: vec![node(1, "follower", ""), node(2, "leader", ""), node(3, "unreachable", "connection refused")],
        }))
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn node_checksum(&self, _: Request<NodeChecksumRequest>) -> Result<Response<NodeChecksumResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn add_node(&self, r: Request<AddNodeRequest>) -> Result<Response<AddNodeResponse>, Status> {
        let id = r.into_inner().node_id;
        self.with(|m| {
            m.voters.insert(id);
            Ok(Response::new(AddNodeResponse { voters: m.voters.iter().copied().collect() }))
        })
    }

    async fn remove_node(&self, r: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let id = r.into_inner().node_id;
        self.with(|m| {
            if !m.voters.remove(&id) {
                return Err(Status::failed_precondition(format!("node {id} is not a member")));
            }
            Ok(Response::new(RemoveNodeResponse { voters: m.voters.iter().copied().collect() }))
        })
    }

    async fn rotate_tenant_key(&self, r: Request<RotateTenantKeyRequest>) -> Result<Response<RotateTenantKeyResponse>, Status> {
        let tenant = r.into_inner().tenant;
        self.with(|m| {
            let keys = m.keys.get_mut(&tenant).ok_or_else(|| Status::not_found(format!("tenant {tenant}")))?;
            for (state, _) in keys.versions.values_mut() {
                *state = "retired".into();
            }
            let version = keys.versions.keys().next_back().copied().unwrap_or(0) + 1;
            keys.versions.insert(version, ("current".into(), 0));
            keys.encrypted = true;
            Ok(Response::new(RotateTenantKeyResponse { revision: m.bump().map(|h| h.revision).unwrap_or(0), version }))
        })
    }

    async fn start_reencryption(&self, r: Request<StartReencryptionRequest>) -> Result<Response<StartReencryptionResponse>, Status> {
        let tenant = r.into_inner().tenant;
        self.with(|m| {
            let keys = m.keys.get_mut(&tenant).ok_or_else(|| Status::not_found(format!("tenant {tenant}")))?;
            let Some(target) = keys.versions.iter().find(|(_, (s, _))| s == "current").map(|(v, _)| *v) else {
                return Err(Status::failed_precondition(format!("tenant {tenant} is not encrypted")));
            };
            let resumed = keys.job.as_ref().is_some_and(|j| j.target_version == target && !j.done);
            if !resumed {
                keys.job = Some(ReencryptionStatus { target_version: target, done: false, visited: 0, rewritten: 0 });
            }
            Ok(Response::new(StartReencryptionResponse {
                revision: m.bump().map(|h| h.revision).unwrap_or(0),
                target_version: target,
                resumed,
            }))
        })
    }

    /// Each call moves an unfinished re-encryption one step: half of the old values, then
    /// the rest (and done).
    async fn tenant_key_status(&self, r: Request<TenantKeyStatusRequest>) -> Result<Response<TenantKeyStatusResponse>, Status> {
        let r = r.into_inner();
        let (tenant, counted) = (r.tenant, !r.without_counts);
        self.with(|m| {
            if !tenant.is_empty() && !m.keys.contains_key(&tenant) {
                return Err(Status::not_found(format!("tenant {tenant}")));
            }
            let mut tenants = Vec::new();
            for (name, keys) in m.keys.iter_mut().filter(|(n, _)| tenant.is_empty() || **n == tenant) {
                let report = TenantKeys {
                    tenant: name.clone(),
                    encrypted: keys.encrypted,
                    current_version: keys.versions.iter().find(|(_, (s, _))| s == "current").map_or(0, |(v, _)| *v),
                    versions: keys
                        .versions
                        .iter()
                        .map(|(v, (state, values))| KeyVersionStatus {
                            version: *v,
                            state: state.clone(),
                            values: *values,
                            created_revision: u64::from(*v) * 10,
                        })
                        .collect(),
                    plaintext_values: keys.plaintext_values,
                    reencryption: keys.job,
                };
                tenants.push(report);
                // The next call sees one more step.
                if let Some(job) = keys.job.as_mut().filter(|j| !j.done) {
                    let target = job.target_version;
                    let old: u64 =
                        keys.versions.iter().filter(|(v, _)| **v != target).map(|(_, (_, n))| n).sum::<u64>() + keys.plaintext_values;
                    let step = if job.visited == 0 { old.div_ceil(2) } else { old };
                    let mut left = step;
                    let take = |n: &mut u64, left: &mut u64| {
                        let t = (*n).min(*left);
                        *n -= t;
                        *left -= t;
                    };
                    take(&mut keys.plaintext_values, &mut left);
                    for (v, (_, n)) in keys.versions.iter_mut() {
                        if *v != target {
                            take(n, &mut left);
                        }
                    }
                    if let Some((_, n)) = keys.versions.get_mut(&target) {
                        *n += step;
                    }
                    job.visited += step.max(1);
                    job.rewritten += step;
                    job.done = step == old;
                }
            }
            Ok(Response::new(TenantKeyStatusResponse { applied_index: m.revision, tenants, counted }))
        })
    }

    async fn destroy_tenant_key(&self, r: Request<DestroyTenantKeyRequest>) -> Result<Response<DestroyTenantKeyResponse>, Status> {
        let r = r.into_inner();
        self.with(|m| {
            let keys = m.keys.get_mut(&r.tenant).ok_or_else(|| Status::not_found(format!("tenant {}", r.tenant)))?;
            let (state, values) = keys
                .versions
                .get_mut(&r.version)
                .ok_or_else(|| Status::not_found(format!("key version {} of tenant {}", r.version, r.tenant)))?;
            if state == "current" {
                return Err(Status::failed_precondition(format!("key version {} is current", r.version)));
            }
            if *values > 0 {
                return Err(Status::failed_precondition(format!(
                    "key version {} of tenant {} still seals {values} values",
                    r.version, r.tenant
                )));
            }
            *state = "destroyed".into();
            Ok(Response::new(DestroyTenantKeyResponse { revision: m.bump().map(|h| h.revision).unwrap_or(0) }))
        })
    }

    async fn compact_node(&self, _: Request<CompactNodeRequest>) -> Result<Response<CompactNodeResponse>, Status> {
        Ok(Response::new(CompactNodeResponse { node_id: 2 }))
    }

    /// Echoes the bearer token the CLI sent as the principal, and its access session as the
    /// token id (the fake checks nothing).
    async fn who_am_i(&self, r: Request<kho_proto::v1::WhoAmIRequest>) -> Result<Response<kho_proto::v1::WhoAmIResponse>, Status> {
        let header = |k: &str| r.metadata().get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Ok(Response::new(kho_proto::v1::WhoAmIResponse {
            principal: header("authorization"),
            authenticated_by: "token".into(),
            cluster_admin: false,
            token_id: header("kho-session"),
        }))
    }

    async fn create_token(
        &self,
        _: Request<kho_proto::v1::CreateTokenRequest>,
    ) -> Result<Response<kho_proto::v1::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_token(
        &self,
        _: Request<kho_proto::v1::RevokeTokenRequest>,
    ) -> Result<Response<kho_proto::v1::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_tokens(
        &self,
        _: Request<kho_proto::v1::ListTokensRequest>,
    ) -> Result<Response<kho_proto::v1::ListTokensResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_grant(
        &self,
        _: Request<kho_proto::v1::CreateGrantRequest>,
    ) -> Result<Response<kho_proto::v1::CreateGrantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_grant(
        &self,
        _: Request<kho_proto::v1::RevokeGrantRequest>,
    ) -> Result<Response<kho_proto::v1::RevokeGrantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_grants(
        &self,
        _: Request<kho_proto::v1::ListGrantsRequest>,
    ) -> Result<Response<kho_proto::v1::ListGrantsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn open_access_session(
        &self,
        _: Request<kho_proto::v1::OpenAccessSessionRequest>,
    ) -> Result<Response<kho_proto::v1::OpenAccessSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn close_access_session(
        &self,
        _: Request<kho_proto::v1::CloseAccessSessionRequest>,
    ) -> Result<Response<kho_proto::v1::CloseAccessSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_access_sessions(
        &self,
        _: Request<kho_proto::v1::ListAccessSessionsRequest>,
    ) -> Result<Response<kho_proto::v1::ListAccessSessionsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn read_audit(&self, _: Request<kho_proto::v1::ReadAuditRequest>) -> Result<Response<kho_proto::v1::ReadAuditResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn start_fake() -> SocketAddr {
    start_fake_model().await.0
}

/// The fake's address, and the fake, for tests that set up its model directly.
async fn start_fake_model() -> (SocketAddr, Fake) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Fake::default();
    fake.0.lock().unwrap().voters.extend([1, 2, 3]);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DataServer::new(fake.clone()))
            .add_service(AdminServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, fake)
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `kho` with the arguments, against the given endpoints (through KHO_ENDPOINTS).
async fn kho(endpoints: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kho"))
        .args(args)
        .env("KHO_ENDPOINTS", endpoints)
        .env_remove("KHO_LOG")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test]
async fn client_commands_against_a_fake_cluster() {
    let addr = start_fake().await;
    // The first endpoint refuses connections: the client must fall through to the second.
    let eps = format!("127.0.0.1:1,{addr}");
    let eps = eps.as_str();
    let ok = |o: &Out| assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);

    let o = kho(eps, &["tenant", "create", "dan_cu"]).await;
    ok(&o);
    let o = kho(eps, &["tenant", "create", "dan_cu"]).await;
    assert_eq!(o.code, 1);
    assert_eq!(o.stderr.trim(), "error: ALREADY_EXISTS: tenant dan_cu");
    let o = kho(eps, &["tenant", "list"]).await;
    ok(&o);
    assert_eq!(o.stdout, "dan_cu\n");

    ok(&kho(eps, &["table", "create", "--tenant", "dan_cu", "citizen", "--families", "identity,residence"]).await);
    ok(&kho(eps, &["table", "create", "--tenant", "dan_cu", "tmp", "--families", "a"]).await);
    let o = kho(eps, &["table", "list", "--tenant", "dan_cu"]).await;
    ok(&o);
    assert_eq!(
        o.stdout,
        "TENANT  TABLE    FAMILIES            HASHED ROW KEYS\n\
         dan_cu  citizen  identity,residence  no\n\
         dan_cu  tmp      a                   no\n"
    );
    let o = kho(eps, &["shard", "list"]).await;
    ok(&o);
    assert_eq!(
        o.stdout,
        "ID  TENANT  START  END  REPLICAS  LEADER  TERM  EPOCH  KEYS~  BYTES~\n\
         1   dan_cu  t1     t2   1,2,3     2       4     1/1    10     2048\n"
    );
    let o = kho(eps, &["shard", "list", "--tenant", "dan_cu", "--json"]).await;
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("shard list --json is JSON");
    let s = &v["shards"][0];
    assert_eq!(
        (s["id"].as_u64(), s["tenant"].as_str(), s["start"].as_str(), s["end"].as_str()),
        (Some(1), Some("dan_cu"), Some("t1"), Some("t2"))
    );
    assert_eq!((s["leader"].as_u64(), s["term"].as_u64(), s["epoch"]["version"].as_u64()), (Some(2), Some(4), Some(1)));
    assert_eq!(s["replicas"], serde_json::json!([1, 2, 3]));
    assert_eq!((s["approximate_keys"].as_u64(), s["approximate_bytes"].as_u64()), (Some(10), Some(2048)));
    let o = kho(eps, &["shard", "split", "--shard", "1", "--at", "t1/tb1/rk"]).await;
    ok(&o);
    assert_eq!(
        o.stdout,
        "ID  TENANT  START      END        REPLICAS  LEADER  TERM  EPOCH  KEYS~  BYTES~\n\
         1   dan_cu  t1         t1/tb1/rk  1,2,3     2       4     1/2    5      1024\n\
         7   dan_cu  t1/tb1/rk  t2         1,2,3     2       4     1/2    5      1024\n"
    );
    let o = kho(eps, &["shard", "split", "--shard", "1", "--json"]).await;
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("shard split --json is JSON");
    assert_eq!((v["shards"][0]["end"].as_str(), v["shards"][1]["start"].as_str()), (Some("t1/tb1/rm"), Some("t1/tb1/rm")));
    assert_eq!(v["shards"][1]["id"].as_u64(), Some(7));
    let o = kho(eps, &["shard", "split", "--shard", "9"]).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "error: NOT_FOUND: shard 9 does not exist"));
    ok(&kho(eps, &["table", "drop", "--tenant", "dan_cu", "tmp"]).await);
    let o = kho(eps, &["table", "drop", "--tenant", "dan_cu", "tmp"]).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "error: NOT_FOUND: table dan_cu/tmp"));

    // Key-value view.
    let t = ["--tenant", "dan_cu", "--table", "citizen"];
    for (k, v) in [("a", "một"), ("b", "hai"), ("c", "ba"), ("d", "bốn"), ("e", "năm")] {
        ok(&kho(eps, &[&["kv", "put"][..], &t, &[k, v]].concat()).await);
    }
    let o = kho(eps, &[&["kv", "get"][..], &t, &["d"]].concat()).await;
    ok(&o);
    assert_eq!(o.stdout, "bốn\n");
    let o = kho(eps, &[&["kv", "get"][..], &t, &["zz"]].concat()).await;
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.trim()), (1, "", "not found"));
    let o = kho(eps, &[&["kv", "scan"][..], &t, &["--start", "b", "--end", "e"]].concat()).await;
    ok(&o);
    assert_eq!(o.stdout, "b\thai\nc\tba\nd\tbốn\n");
    let o = kho(eps, &[&["kv", "scan"][..], &t, &["--limit", "2"]].concat()).await;
    assert_eq!(o.stdout, "a\tmột\nb\thai\n");
    let o = kho(eps, &[&["kv", "delete"][..], &t, &["a"]].concat()).await;
    ok(&o);
    assert!(o.stdout.starts_with("deleted"), "{}", o.stdout);
    let o = kho(eps, &[&["kv", "delete"][..], &t, &["a"]].concat()).await;
    assert!(o.stdout.starts_with("did not exist"), "{}", o.stdout);
    let o = kho(eps, &[&["kv", "put", "--family", "nope"][..], &t, &["k", "v"]].concat()).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("error: INVALID_ARGUMENT: family:"), "{}", o.stderr);

    // Rows.
    let m = |row: &str, extra: &[&str]| {
        [&["row", "mutate"][..], &t, &["--row", row], extra].concat().into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = m(
        "079190000001",
        &[
            "--set",
            "identity:ho_ten=Trần Thị Yến",
            "--set",
            "residence:tinh=Thành phố Hồ Chí Minh",
            "--set",
            "residence:dia_chi=Số 5, đường Lê Lợi",
        ],
    );
    ok(&kho(eps, &args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    let args = m("001085000002", &["--set", "identity:ho_ten=Lê Văn Nam"]);
    ok(&kho(eps, &args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    let args = m("079190000001", &["--delete", "residence:dia_chi"]);
    ok(&kho(eps, &args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    let o = kho(eps, &[&["row", "read"][..], &t, &["--row", "079190000001"]].concat()).await;
    ok(&o);
    assert_eq!(o.stdout, "079190000001\n  identity:ho_ten = Trần Thị Yến\n  residence:tinh = Thành phố Hồ Chí Minh\n");
    let o = kho(eps, &[&["row", "read"][..], &t, &["--row", "079190000001", "--family", "residence"]].concat()).await;
    assert_eq!(o.stdout, "079190000001\n  residence:tinh = Thành phố Hồ Chí Minh\n");
    let o = kho(eps, &[&["row", "read"][..], &t, &["--row", "nobody"]].concat()).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "not found"));
    let o = kho(eps, &[&["row", "scan"][..], &t, &["--prefix", "0", "--family", "identity"]].concat()).await;
    ok(&o);
    assert_eq!(o.stdout, "001085000002\n  identity:ho_ten = Lê Văn Nam\n079190000001\n  identity:ho_ten = Trần Thị Yến\n");
    // The kv view's cells are in family `identity` with an empty qualifier.
    let o = kho(eps, &[&["row", "read"][..], &t, &["--row", "b"]].concat()).await;
    assert_eq!(o.stdout, "b\n  identity: = hai\n");
    let args = m("b", &["--delete-row", "--set", "identity:=mới"]);
    ok(&kho(eps, &args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    let o = kho(eps, &[&["kv", "get"][..], &t, &["b"]].concat()).await;
    assert_eq!(o.stdout, "mới\n");
    let o = kho(eps, &[&["row", "mutate"][..], &t, &["--row", "b"]].concat()).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("nothing to do"), "{}", o.stderr);

    // Cluster.
    let o = kho(eps, &["cluster", "status"]).await;
    ok(&o);
    assert!(o.stdout.contains(&format!("asked: {addr}")), "{}", o.stdout);
    assert!(o.stdout.contains("leader: 2  term: 4"), "{}", o.stdout);
    assert!(o.stdout.lines().any(|l| l.starts_with("*  2") && l.contains("leader")), "{}", o.stdout);
    assert!(o.stdout.contains("node 3: connection refused"), "{}", o.stdout);
    let o = kho(eps, &["cluster", "add-node", "--node-id", "4", "--address", "127.0.0.1:7104"]).await;
    ok(&o);
    assert_eq!(o.stdout, "added node 4 (127.0.0.1:7104); voters: 1,2,3,4\n");
    let o = kho(eps, &["cluster", "remove-node", "--node-id", "1"]).await;
    assert_eq!(o.stdout, "removed node 1; voters: 2,3,4\n");
    let o = kho(eps, &["cluster", "remove-node", "--node-id", "1"]).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "error: FAILED_PRECONDITION: node 1 is not a member"));
}

#[tokio::test]
async fn encryption_commands_against_a_fake_cluster() {
    let (addr, fake) = start_fake_model().await;
    let eps = addr.to_string();
    let eps = eps.as_str();
    let ok = |o: &Out| assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);

    // Tenants with each encryption mode; hashed row keys need an encrypted tenant.
    ok(&kho(eps, &["tenant", "create", "dan_cu"]).await);
    ok(&kho(eps, &["tenant", "create", "tham_khao", "--encryption", "plaintext"]).await);
    let o = kho(eps, &["tenant", "create", "x", "--encryption", "aes"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = kho(eps, &["table", "create", "--tenant", "dan_cu", "citizen", "--families", "identity", "--hashed-row-keys"]).await;
    ok(&o);
    assert!(o.stdout.starts_with("created table dan_cu/citizen with hashed row keys (revision "), "{}", o.stdout);
    let o = kho(eps, &["table", "create", "--tenant", "tham_khao", "tinh", "--families", "f", "--hashed-row-keys"]).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "error: FAILED_PRECONDITION: tenant tham_khao is not encrypted"));
    ok(&kho(eps, &["table", "create", "--tenant", "tham_khao", "tinh", "--families", "f"]).await);
    let o = kho(eps, &["table", "list"]).await;
    ok(&o);
    assert_eq!(
        o.stdout,
        "TENANT     TABLE    FAMILIES  HASHED ROW KEYS\n\
         dan_cu     citizen  identity  yes\n\
         tham_khao  tinh     f         no\n"
    );

    // Status of every tenant and of one.
    let o = kho(eps, &["keys", "status"]).await;
    ok(&o);
    assert!(o.stdout.contains("tenant dan_cu: encrypted, current key version 1\n"), "{}", o.stdout);
    assert!(o.stdout.contains("tenant tham_khao: not encrypted\n"), "{}", o.stdout);
    let o = kho(eps, &["keys", "status", "--tenant", "tham_khao"]).await;
    ok(&o);
    assert!(!o.stdout.contains("dan_cu"), "{}", o.stdout);
    assert!(o.stdout.contains("  re-encryption: never started\n"), "{}", o.stdout);
    let o = kho(eps, &["keys", "status", "--tenant", "nobody"]).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "error: NOT_FOUND: tenant nobody"));

    // Rotation, then a re-encryption followed to its end.
    let o = kho(eps, &["keys", "rotate", "--tenant", "dan_cu"]).await;
    ok(&o);
    assert!(o.stdout.starts_with("tenant dan_cu: key version 2 is current (revision "), "{}", o.stdout);
    {
        // Values written before: 6 under version 1, 1 in plaintext (before encryption).
        let mut m = fake.0.lock().unwrap();
        let keys = m.keys.get_mut("dan_cu").unwrap();
        keys.versions.get_mut(&1).unwrap().1 = 6;
        keys.plaintext_values = 1;
    }
    let o = kho(eps, &["keys", "reencrypt", "--tenant", "dan_cu", "--no-wait"]).await;
    ok(&o);
    assert!(o.stdout.starts_with("tenant dan_cu: re-encryption to key version 2 started (revision "), "{}", o.stdout);
    assert!(o.stdout.contains("kho keys status --tenant dan_cu"), "{}", o.stdout);
    let o = kho(eps, &["keys", "reencrypt", "--tenant", "dan_cu", "--timeout-secs", "30"]).await;
    ok(&o);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].starts_with("tenant dan_cu: re-encryption to key version 2 resumed from where it stopped"), "{}", o.stdout);
    // The fake moves half of the 7 values per status call; while it runs, the CLI asks
    // without counts, and counts once at the end.
    assert!(lines[1].starts_with("tenant dan_cu: visited 0, rewritten 0 ("), "{}", o.stdout);
    assert!(lines[2].starts_with("tenant dan_cu: visited 4, rewritten 4 ("), "{}", o.stdout);
    let last = lines.last().unwrap();
    assert!(last.starts_with("tenant dan_cu: re-encryption to key version 2 done in "), "{}", o.stdout);
    assert!(last.ends_with("visited 7, rewritten 7; values not under key version 2: 0"), "{}", o.stdout);
    assert_eq!(lines.len(), 4, "{}", o.stdout);
    let o = kho(eps, &["keys", "reencrypt", "--tenant", "dan_cu", "--timeout-secs", "0"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);

    // Destruction: refused for the current version, done for the retired one.
    let o = kho(eps, &["keys", "destroy", "--tenant", "dan_cu", "--version", "2"]).await;
    assert_eq!((o.code, o.stderr.trim()), (1, "error: FAILED_PRECONDITION: key version 2 is current"));
    let o = kho(eps, &["keys", "destroy", "--tenant", "dan_cu", "--version", "1"]).await;
    ok(&o);
    assert!(o.stdout.starts_with("tenant dan_cu: key version 1 destroyed (revision "), "{}", o.stdout);
    let o = kho(eps, &["keys", "status", "--tenant", "dan_cu"]).await;
    assert!(o.stdout.lines().any(|l| l.starts_with("  1") && l.contains("destroyed")), "{}", o.stdout);

    // Compaction: every endpoint on its own; one that does not answer fails alone.
    let o = kho(eps, &["node", "compact"]).await;
    ok(&o);
    assert!(o.stdout.starts_with(&format!("node 2 ({addr}): compacted in ")), "{}", o.stdout);
    let o = kho(eps, &["node", "compact", "--endpoints", &format!("127.0.0.1:1,{addr}")]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("error: 127.0.0.1:1: "), "{}", o.stderr);
    assert!(o.stdout.starts_with(&format!("node 2 ({addr}): compacted in ")), "{}", o.stdout);
}

#[tokio::test]
async fn no_endpoint_answers() {
    let o = kho("127.0.0.1:1,127.0.0.1:2", &["tenant", "list"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("error: could not connect to any endpoint: 127.0.0.1:1"), "{}", o.stderr);
    assert!(o.stderr.contains("127.0.0.1:2"), "{}", o.stderr);
}

#[tokio::test]
async fn bad_command_lines_exit_2() {
    let o = kho("127.0.0.1:1", &["kv", "get", "--tenant", "t", "--table", "x", "k", "--endpoints", "nope"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = kho("nope", &["tenant", "list"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = kho("127.0.0.1:1", &["server"]).await;
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("node_id"), "{}", o.stderr);
}

#[tokio::test]
async fn the_token_flag_and_kho_token_reach_the_server_as_a_bearer_token() {
    let addr = start_fake().await;
    let eps = addr.to_string();
    let o = kho(&eps, &["whoami", "--token", "kho_0123456789abcdef_00"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "Bearer kho_0123456789abcdef_00 (by token; grants only)\n");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kho"))
        .args(["whoami"])
        .env("KHO_ENDPOINTS", &eps)
        .env("KHO_TOKEN", "kho_fedcba9876543210_11")
        .env_remove("KHO_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Bearer kho_fedcba9876543210_11 (by token; grants only)\n");
    // Without one, nothing is sent.
    let o = kho(&eps, &["whoami"]).await;
    assert_eq!(o.stdout, "(authorization off) (by token; grants only)\n");
    // An access session goes as `kho-session`; a malformed one is refused before sending.
    let session = "0123456789abcdef0123456789abcdef";
    let o = kho(&eps, &["whoami", "--session", session]).await;
    assert_eq!(o.stdout, format!("(authorization off) (by token {session}; grants only)\n"), "{}", o.stderr);
    let o = kho(&eps, &["whoami", "--session", "nope"]).await;
    assert!(o.code == 1 && o.stderr.contains("--session: `nope` is not a session id"), "{o:?}");
}
