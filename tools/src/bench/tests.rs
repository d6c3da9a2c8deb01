//! End-to-end tests of the runner: on an in-memory target, and through the real gRPC
//! targets against tiny in-process fakes of Kho's Data and Admin services and of etcd's KV
//! service, on loopback ports (each server is stopped at the end of its test).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kho_proto::v1 as kv1;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use super::config::{BenchArgs, Distribution, Phase, TargetKind};
use super::report::{BenchReport, PhaseName, PhaseReport};
use super::target::etcd::pb as etcdpb;
use super::target::{OpError, OpResult, Target};
use super::workload::{OpKind, WorkloadName};
use crate::admin_cmd::TenantEncryptionArg;

/// Longest a fake server may take to stop.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Small, fast settings: counts instead of durations, no progress lines.
fn small_args(workload: WorkloadName) -> BenchArgs {
    BenchArgs {
        workload,
        record_count: 300,
        operation_count: 2000,
        duration_secs: 0,
        value_bytes: 100,
        concurrency: 8,
        seed: Some(1),
        progress_secs: 0,
        ..BenchArgs::default()
    }
}

fn phase(r: &BenchReport, p: PhaseName) -> &PhaseReport {
    r.phases.iter().find(|x| x.phase == p).unwrap_or_else(|| panic!("no {p:?} phase in {r:?}"))
}

fn count(p: &PhaseReport, op: OpKind) -> u64 {
    p.operations.iter().find(|o| o.op == op).map_or(0, |o| o.count)
}

/// Checks the invariants of a clean run: every record loaded, exactly `operation_count`
/// measured operations, no error, no read of a missing key.
fn assert_clean(r: &BenchReport, args: &BenchArgs) {
    if args.phase.includes_load() {
        let load = phase(r, PhaseName::Load);
        assert_eq!(load.ops, args.record_count, "{load:?}");
        assert_eq!(count(load, OpKind::Insert), args.record_count);
    }
    if args.phase.includes_run() {
        let run = phase(r, PhaseName::Run);
        assert_eq!(run.ops, args.operation_count, "{run:?}");
        assert_eq!(run.errors, 0, "{run:?}");
        for o in &run.operations {
            assert_eq!(o.not_found, 0, "{o:?}");
            let l = o.latency_us.as_ref().unwrap();
            assert!(l.min <= l.p50 && l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        }
    }
}

// ---------------------------------------------------------------------------------------
// In-memory target.

/// A target over a shared ordered map; optionally fails every update with UNAVAILABLE.
#[derive(Default)]
struct MemoryTarget {
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    fail_updates: bool,
}

#[async_trait]
impl Target for MemoryTarget {
    async fn insert(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        lock(&self.data).insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    async fn read(&self, key: &[u8]) -> OpResult<bool> {
        Ok(lock(&self.data).contains_key(key))
    }

    async fn update(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        if self.fail_updates {
            return Err(OpError { status: "UNAVAILABLE", message: "no leader".into() });
        }
        lock(&self.data).insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    async fn scan(&self, start_key: &[u8], count: usize) -> OpResult<usize> {
        Ok(lock(&self.data).range(start_key.to_vec()..).take(count).count())
    }
}

async fn run_memory(args: &BenchArgs, target: Arc<MemoryTarget>) -> BenchReport {
    let config = args.validate().unwrap();
    let targets: Vec<Arc<dyn Target>> = vec![target];
    super::run_on(&config, &targets).await.unwrap()
}

#[tokio::test]
async fn every_workload_runs_clean_on_memory() {
    for w in [WorkloadName::A, WorkloadName::B, WorkloadName::C, WorkloadName::D, WorkloadName::E, WorkloadName::F] {
        let args = small_args(w);
        let target = Arc::new(MemoryTarget::default());
        let r = run_memory(&args, target.clone()).await;
        assert_clean(&r, &args);
        let run = phase(&r, PhaseName::Run);
        let inserts = count(run, OpKind::Insert);
        // Every key is the configured size; inserts of the run phase add keys.
        let data = lock(&target.data);
        assert_eq!(data.len() as u64, args.record_count + inserts, "{w:?}");
        assert!(data.keys().all(|k| k.len() == args.key_bytes));
        assert!(data.values().all(|v| v.len() == args.value_bytes));
        let expected: &[OpKind] = match w {
            WorkloadName::A | WorkloadName::B => &[OpKind::Read, OpKind::Update],
            WorkloadName::C => &[OpKind::Read],
            WorkloadName::D => &[OpKind::Insert, OpKind::Read],
            WorkloadName::E => &[OpKind::Insert, OpKind::Scan],
            WorkloadName::F => &[OpKind::Read, OpKind::ReadModifyWrite],
        };
        let got: Vec<OpKind> = run.operations.iter().map(|o| o.op).collect();
        assert_eq!(got, expected, "{w:?}");
    }
}

#[tokio::test]
async fn five_hundred_workers_and_distribution_override() {
    let args =
        BenchArgs { concurrency: 500, operation_count: 5000, distribution: Some(Distribution::Uniform), ..small_args(WorkloadName::B) };
    let r = run_memory(&args, Arc::new(MemoryTarget::default())).await;
    assert_clean(&r, &args);
    assert_eq!(r.config.workload.request_distribution, Distribution::Uniform);
    assert_eq!(r.config.concurrency, 500);
}

#[tokio::test]
async fn errors_are_counted_by_status_and_the_run_goes_on() {
    let target = Arc::new(MemoryTarget { fail_updates: true, ..Default::default() });
    let args = BenchArgs { operation_count: 400, ..small_args(WorkloadName::A) };
    let r = run_memory(&args, target).await;
    let run = phase(&r, PhaseName::Run);
    let update = run.operations.iter().find(|o| o.op == OpKind::Update).unwrap();
    assert_eq!(update.count, 0);
    assert!(update.latency_us.is_none());
    assert_eq!(update.errors_by_status.get("UNAVAILABLE"), Some(&update.errors));
    // Failed operations count toward the operation count.
    assert_eq!(run.ops + run.errors, 400);
    assert!(count(run, OpKind::Read) > 100);
    assert!(r.render().contains("error UPDATE UNAVAILABLE:"));
}

#[tokio::test]
async fn duration_ends_the_run_phase() {
    let args = BenchArgs { phase: Phase::Run, operation_count: 0, duration_secs: 1, warmup_secs: 1, ..small_args(WorkloadName::C) };
    let started = std::time::Instant::now();
    let r = run_memory(&args, Arc::new(MemoryTarget::default())).await;
    let run = phase(&r, PhaseName::Run);
    assert_eq!(r.phases.len(), 1);
    assert_eq!(run.warmup_secs, 1.0);
    assert!((1.0..1.5).contains(&run.elapsed_secs), "{run:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(run.ops > 0);
    // Reads of records never loaded: the memory target is empty.
    assert_eq!(run.operations[0].not_found, run.ops);
}

#[tokio::test]
async fn rate_paces_the_workers() {
    // 400 operations at 1000 ops/s: about 0.4 s.
    let args = BenchArgs { phase: Phase::Run, operation_count: 400, rate: 1000, ..small_args(WorkloadName::C) };
    let r = run_memory(&args, Arc::new(MemoryTarget::default())).await;
    let run = phase(&r, PhaseName::Run);
    assert_eq!(run.ops, 400);
    assert!((0.35..0.8).contains(&run.elapsed_secs), "{run:?}");
    assert!((500.0..1150.0).contains(&run.throughput_ops_per_sec), "{run:?}");
}

#[tokio::test]
async fn one_worker_with_a_seed_is_deterministic() {
    let args = BenchArgs { concurrency: 1, operation_count: 500, ..small_args(WorkloadName::D) };
    let a = Arc::new(MemoryTarget::default());
    let b = Arc::new(MemoryTarget::default());
    run_memory(&args, a.clone()).await;
    run_memory(&args, b.clone()).await;
    assert_eq!(*lock(&a.data), *lock(&b.data));
}

// ---------------------------------------------------------------------------------------
// A fake Kho: Data (Put, Get, Scan) and Admin (CreateTenant, CreateTable, ListTables).

/// Key -> value of one family of one table.
type Cells = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
struct KhoState {
    tenants: BTreeSet<String>,
    /// The tenants created encrypted (the fake cluster has a master key: default and
    /// encrypted tenants are).
    encrypted_tenants: BTreeSet<String>,
    /// (tenant, table) -> families.
    tables: BTreeMap<(String, String), Vec<String>>,
    /// (tenant, table, family) -> key -> value.
    cells: BTreeMap<(String, String, String), Cells>,
    stale_reads: u64,
    /// LocateShards calls (the bench's `--route leader` routing).
    locates: u64,
    /// Puts still to answer with a typed stale route (`kho-route-error: not-leader`).
    stale_puts: u64,
}

#[derive(Clone, Default)]
struct FakeKho {
    state: Arc<Mutex<KhoState>>,
}

impl FakeKho {
    /// The cell map of a request, after checking its tenant, table and family.
    fn with_cells<T>(&self, tenant: &str, table: &str, family: &str, f: impl FnOnce(&mut Cells) -> T) -> Result<T, Status> {
        let mut s = lock(&self.state);
        let families = s
            .tables
            .get(&(tenant.to_string(), table.to_string()))
            .ok_or_else(|| Status::not_found(format!("no table {tenant}.{table}")))?;
        let family = if family.is_empty() { families[0].clone() } else { family.to_string() };
        if !families.contains(&family) {
            return Err(Status::not_found(format!("no family {family}")));
        }
        Ok(f(s.cells.entry((tenant.to_string(), table.to_string(), family)).or_default()))
    }

    fn keys(&self, tenant: &str, table: &str, family: &str) -> Vec<(Vec<u8>, usize)> {
        let s = lock(&self.state);
        s.cells
            .get(&(tenant.to_string(), table.to_string(), family.to_string()))
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.len())).collect())
            .unwrap_or_default()
    }
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Scan answers come in chunks of this many pairs, as a real server's do.
const FAKE_SCAN_CHUNK: usize = 16;

#[async_trait]
impl kv1::data_server::Data for FakeKho {
    async fn put(&self, r: Request<kv1::PutRequest>) -> Result<Response<kv1::PutResponse>, Status> {
        let r = r.into_inner();
        {
            let mut s = lock(&self.state);
            if s.stale_puts > 0 {
                s.stale_puts -= 1;
                let stale = kho_rpc::route::RouteError::new(kho_rpc::route::StaleRoute::NotLeader).shard(1);
                return Err(stale.status("fake: the leader moved"));
            }
        }
        self.with_cells(&r.tenant, &r.table, &r.family, |m| m.insert(r.key, r.value))?;
        Ok(Response::new(kv1::PutResponse { header: Some(kv1::WriteHeader { revision: 1, shard_id: 1 }) }))
    }

    async fn get(&self, r: Request<kv1::GetRequest>) -> Result<Response<kv1::GetResponse>, Status> {
        let r = r.into_inner();
        if r.consistency != kv1::ReadConsistency::Linearizable as i32 {
            lock(&self.state).stale_reads += 1;
        }
        let value = self.with_cells(&r.tenant, &r.table, &r.family, |m| m.get(&r.key).cloned())?;
        Ok(Response::new(kv1::GetResponse { found: value.is_some(), value: value.unwrap_or_default() }))
    }

    type ScanStream = BoxStream<kv1::ScanResponse>;

    async fn scan(&self, r: Request<kv1::ScanRequest>) -> Result<Response<Self::ScanStream>, Status> {
        let r = r.into_inner();
        if r.consistency != kv1::ReadConsistency::Linearizable as i32 {
            lock(&self.state).stale_reads += 1;
        }
        let limit = if r.limit == 0 { usize::MAX } else { r.limit as usize };
        let kvs: Vec<kv1::KeyValue> = self.with_cells(&r.tenant, &r.table, &r.family, |m| {
            m.range(r.start_key.clone()..).take(limit).map(|(k, v)| kv1::KeyValue { key: k.clone(), value: v.clone() }).collect()
        })?;
        let chunks: Vec<Result<kv1::ScanResponse, Status>> =
            kvs.chunks(FAKE_SCAN_CHUNK).map(|c| Ok(kv1::ScanResponse { kvs: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn delete(&self, _: Request<kv1::DeleteRequest>) -> Result<Response<kv1::DeleteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn batch_get(&self, _: Request<kv1::BatchGetRequest>) -> Result<Response<kv1::BatchGetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn write(&self, _: Request<kv1::WriteRequest>) -> Result<Response<kv1::WriteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn compare_and_swap(&self, _: Request<kv1::CompareAndSwapRequest>) -> Result<Response<kv1::CompareAndSwapResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn mutate_row(&self, _: Request<kv1::MutateRowRequest>) -> Result<Response<kv1::MutateRowResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn read_row(&self, _: Request<kv1::ReadRowRequest>) -> Result<Response<kv1::ReadRowResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type ScanRowsStream = BoxStream<kv1::ScanRowsResponse>;
    async fn scan_rows(&self, _: Request<kv1::ScanRowsRequest>) -> Result<Response<Self::ScanRowsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn locate_shards(&self, req: Request<kv1::LocateShardsRequest>) -> Result<Response<kv1::LocateShardsResponse>, Status> {
        // One shard, the whole table, led by node 1 (the only node of the fake).
        let address = req.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        lock(&self.state).locates += 1;
        let shard = kv1::ShardLocation {
            id: 1,
            epoch_conf_ver: 1,
            epoch_version: 1,
            replicas: vec![kv1::ShardReplica { node_id: 1, address: address.clone(), learner: false }],
            leader_id: 1,
            leader_address: address,
            ..Default::default()
        };
        Ok(Response::new(kv1::LocateShardsResponse {
            shards: vec![shard],
            key_shard_ids: vec![1; r.keys.len()],
            range_shard_ids: if r.range.is_some() { vec![1] } else { vec![] },
            range_resume_row: vec![],
            node_id: 1,
        }))
    }
}

#[async_trait]
impl kv1::admin_server::Admin for FakeKho {
    async fn create_tenant(&self, r: Request<kv1::CreateTenantRequest>) -> Result<Response<kv1::CreateTenantResponse>, Status> {
        let r = r.into_inner();
        let mut s = lock(&self.state);
        if !s.tenants.insert(r.name.clone()) {
            return Err(Status::already_exists("tenant exists"));
        }
        if r.encryption != kv1::TenantEncryption::Plaintext as i32 {
            s.encrypted_tenants.insert(r.name);
        }
        Ok(Response::new(kv1::CreateTenantResponse { revision: 1 }))
    }

    async fn create_table(&self, r: Request<kv1::CreateTableRequest>) -> Result<Response<kv1::CreateTableResponse>, Status> {
        let r = r.into_inner();
        let mut s = lock(&self.state);
        if !s.tenants.contains(&r.tenant) {
            return Err(Status::not_found("no tenant"));
        }
        let key = (r.tenant, r.name);
        if s.tables.contains_key(&key) {
            return Err(Status::already_exists("table exists"));
        }
        s.tables.insert(key, r.families.into_iter().map(|f| f.name).collect());
        Ok(Response::new(kv1::CreateTableResponse { revision: 2, shards: vec![] }))
    }

    async fn list_shards(&self, r: Request<kv1::ListShardsRequest>) -> Result<Response<kv1::ListShardsResponse>, Status> {
        // One shard per tenant, led by node 1 (the only node of the fake).
        let tenant = r.into_inner().tenant;
        let shard = kv1::ShardInfo { id: 1, tenant, leader_id: 1, term: 1, voters: vec![1], ..Default::default() };
        Ok(Response::new(kv1::ListShardsResponse { shards: vec![shard] }))
    }

    async fn split_shard(&self, _r: Request<kv1::SplitShardRequest>) -> Result<Response<kv1::SplitShardResponse>, Status> {
        Err(Status::unimplemented("the bench does not split shards"))
    }

    async fn merge_shard(&self, _r: Request<kv1::MergeShardRequest>) -> Result<Response<kv1::MergeShardResponse>, Status> {
        Err(Status::unimplemented("the bench does not merge shards"))
    }

    async fn list_tables(&self, r: Request<kv1::ListTablesRequest>) -> Result<Response<kv1::ListTablesResponse>, Status> {
        let tenant = r.into_inner().tenant;
        let s = lock(&self.state);
        let tables = s
            .tables
            .iter()
            .filter(|((t, _), _)| tenant.is_empty() || *t == tenant)
            .map(|((t, name), families)| kv1::TableInfo {
                tenant: t.clone(),
                name: name.clone(),
                families: families.iter().map(|f| kv1::ColumnFamily { name: f.clone() }).collect(),
                hashed_row_keys: false,
            })
            .collect();
        Ok(Response::new(kv1::ListTablesResponse { tables }))
    }

    async fn list_tenants(&self, _: Request<kv1::ListTenantsRequest>) -> Result<Response<kv1::ListTenantsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn drop_table(&self, _: Request<kv1::DropTableRequest>) -> Result<Response<kv1::DropTableResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    /// The fake is a one-node cluster: it leads, at the address the client reached.
    async fn cluster_status(&self, req: Request<kv1::ClusterStatusRequest>) -> Result<Response<kv1::ClusterStatusResponse>, Status> {
        let address = req.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let node = kv1::NodeStatus { node_id: 1, address, role: "leader".into(), leader_id: 1, ..Default::default() };
        Ok(Response::new(kv1::ClusterStatusResponse { leader_id: 1, term: 1, nodes: vec![node] }))
    }
    async fn node_status(&self, _: Request<kv1::NodeStatusRequest>) -> Result<Response<kv1::NodeStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn node_checksum(&self, _: Request<kv1::NodeChecksumRequest>) -> Result<Response<kv1::NodeChecksumResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn add_node(&self, _: Request<kv1::AddNodeRequest>) -> Result<Response<kv1::AddNodeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove_node(&self, _: Request<kv1::RemoveNodeRequest>) -> Result<Response<kv1::RemoveNodeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn rotate_tenant_key(&self, _: Request<kv1::RotateTenantKeyRequest>) -> Result<Response<kv1::RotateTenantKeyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn start_reencryption(
        &self,
        _: Request<kv1::StartReencryptionRequest>,
    ) -> Result<Response<kv1::StartReencryptionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn tenant_key_status(&self, r: Request<kv1::TenantKeyStatusRequest>) -> Result<Response<kv1::TenantKeyStatusResponse>, Status> {
        let tenant = r.into_inner().tenant;
        let s = lock(&self.state);
        let tenants = s
            .tenants
            .iter()
            .filter(|t| tenant.is_empty() || **t == tenant)
            .map(|t| kv1::TenantKeys {
                tenant: t.clone(),
                encrypted: s.encrypted_tenants.contains(t),
                current_version: u32::from(s.encrypted_tenants.contains(t)),
                versions: vec![],
                plaintext_values: 0,
                reencryption: None,
            })
            .collect();
        Ok(Response::new(kv1::TenantKeyStatusResponse { applied_index: 1, tenants, counted: true }))
    }
    async fn destroy_tenant_key(
        &self,
        _: Request<kv1::DestroyTenantKeyRequest>,
    ) -> Result<Response<kv1::DestroyTenantKeyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn compact_node(&self, _: Request<kv1::CompactNodeRequest>) -> Result<Response<kv1::CompactNodeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn who_am_i(&self, _: Request<kv1::WhoAmIRequest>) -> Result<Response<kv1::WhoAmIResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_token(&self, _: Request<kv1::CreateTokenRequest>) -> Result<Response<kv1::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_token(&self, _: Request<kv1::RevokeTokenRequest>) -> Result<Response<kv1::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_tokens(&self, _: Request<kv1::ListTokensRequest>) -> Result<Response<kv1::ListTokensResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_grant(&self, _: Request<kv1::CreateGrantRequest>) -> Result<Response<kv1::CreateGrantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_grant(&self, _: Request<kv1::RevokeGrantRequest>) -> Result<Response<kv1::RevokeGrantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_grants(&self, _: Request<kv1::ListGrantsRequest>) -> Result<Response<kv1::ListGrantsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn read_audit(&self, _: Request<kv1::ReadAuditRequest>) -> Result<Response<kv1::ReadAuditResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn open_access_session(
        &self,
        _: Request<kv1::OpenAccessSessionRequest>,
    ) -> Result<Response<kv1::OpenAccessSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn close_access_session(
        &self,
        _: Request<kv1::CloseAccessSessionRequest>,
    ) -> Result<Response<kv1::CloseAccessSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_access_sessions(
        &self,
        _: Request<kv1::ListAccessSessionsRequest>,
    ) -> Result<Response<kv1::ListAccessSessionsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

// ---------------------------------------------------------------------------------------
// A fake etcd: KV Range and Put.

#[derive(Default)]
struct EtcdState {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    serializable_ranges: u64,
    /// Ranges with range_end "\0" (scans).
    open_ended_ranges: u64,
}

#[derive(Clone, Default)]
struct FakeEtcd {
    state: Arc<Mutex<EtcdState>>,
}

#[async_trait]
impl etcdpb::kv_server::Kv for FakeEtcd {
    async fn range(&self, r: Request<etcdpb::RangeRequest>) -> Result<Response<etcdpb::RangeResponse>, Status> {
        let r = r.into_inner();
        let mut s = lock(&self.state);
        if r.serializable {
            s.serializable_ranges += 1;
        }
        let limit = if r.limit <= 0 { usize::MAX } else { r.limit as usize };
        let kvs: Vec<etcdpb::KeyValue> = if r.range_end.is_empty() {
            s.data.get(&r.key).map(|v| (r.key.clone(), v.clone())).into_iter().collect::<Vec<_>>()
        } else if r.range_end == b"\0" {
            s.open_ended_ranges += 1;
            s.data.range(r.key.clone()..).map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            s.data.range(r.key.clone()..r.range_end.clone()).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        .into_iter()
        .take(limit)
        .map(|(key, value)| etcdpb::KeyValue { key, value, ..Default::default() })
        .collect();
        let count = kvs.len() as i64;
        Ok(Response::new(etcdpb::RangeResponse { header: None, kvs, more: false, count }))
    }

    async fn put(&self, r: Request<etcdpb::PutRequest>) -> Result<Response<etcdpb::PutResponse>, Status> {
        let r = r.into_inner();
        lock(&self.state).data.insert(r.key, r.value);
        Ok(Response::new(etcdpb::PutResponse { header: None, prev_kv: None }))
    }
}

// ---------------------------------------------------------------------------------------
// Serving a fake on a loopback port.

struct FakeServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl FakeServer {
    async fn start(router: tonic::transport::server::Router) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // TCP_NODELAY on accepted connections: tonic's `Server::tcp_nodelay` does not apply
        // to an incoming stream given to `serve_with_incoming*`, and without it a response
        // of a few KiB waits ~40 ms for the client's delayed ACK (Nagle).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        FakeServer { addr, stop: Some(stop), task }
    }

    async fn kho(fake: FakeKho) -> FakeServer {
        let router = tonic::transport::Server::builder()
            .add_service(kv1::data_server::DataServer::new(fake.clone()))
            .add_service(kv1::admin_server::AdminServer::new(fake));
        FakeServer::start(router).await
    }

    async fn etcd(fake: FakeEtcd) -> FakeServer {
        let router = tonic::transport::Server::builder().add_service(etcdpb::kv_server::KvServer::new(fake));
        FakeServer::start(router).await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let result = tokio::time::timeout(SERVER_STOP_TIMEOUT, self.task).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "fake server did not stop cleanly: {result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kho_target_locates_shards_again_after_a_stale_route_and_the_operation_succeeds() {
    let fake = FakeKho::default();
    let server = FakeServer::kho(fake.clone()).await;
    let args = BenchArgs { endpoints: vec![server.addr.to_string()], phase: Phase::Load, ..small_args(WorkloadName::A) };
    // The first two puts are answered with a stale route: each is located again and retried.
    lock(&fake.state).stale_puts = 2;
    let r = super::run(&args).await.unwrap();
    assert_clean(&r, &args);
    assert_eq!(phase(&r, PhaseName::Load).errors, 0, "the client saw no error");
    let (stale_left, locates) = {
        let s = lock(&fake.state);
        (s.stale_puts, s.locates)
    };
    assert_eq!(stale_left, 0);
    assert!(locates >= 2, "located at start and again after a stale route: {locates}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kho_target_end_to_end() {
    let fake = FakeKho::default();
    let server = FakeServer::kho(fake.clone()).await;
    let endpoints = vec![server.addr.to_string()];

    // Load and run workload A with 40 workers (two connections).
    let args = BenchArgs { endpoints: endpoints.clone(), concurrency: 40, ..small_args(WorkloadName::A) };
    let r = super::run(&args).await.unwrap();
    // The human report, for `cargo test -- --nocapture`.
    println!("{}", r.render());
    assert_clean(&r, &args);
    assert_eq!(r.config.target, TargetKind::Kho);
    let keys = fake.keys("bench", "usertable", "f");
    assert_eq!(keys.len(), 300);
    assert!(keys.iter().all(|(k, v)| k.len() == 24 && k.starts_with(b"user") && *v == 100));
    assert!(lock(&fake.state).tables[&("bench".to_string(), "usertable".to_string())] == ["f"]);

    // The other workloads on the loaded table (the tenant and table exist already).
    for w in [WorkloadName::C, WorkloadName::D, WorkloadName::E, WorkloadName::F] {
        let args = BenchArgs { endpoints: endpoints.clone(), phase: Phase::Run, operation_count: 500, ..small_args(w) };
        let before = fake.keys("bench", "usertable", "f").len() as u64;
        let r = super::run(&args).await.unwrap();
        assert_clean(&r, &args);
        let inserts = count(phase(&r, PhaseName::Run), OpKind::Insert);
        // Run-phase inserts take the key numbers 300, 301, ... (each round anew).
        let after = fake.keys("bench", "usertable", "f").len() as u64;
        assert_eq!(after, before.max(300 + inserts), "{w:?}");
    }
    assert_eq!(lock(&fake.state).stale_reads, 0);
    assert!(lock(&fake.state).locates > 0, "--route leader locates the shards");

    // An explicit encryption mode gets its own tenant, created with that mode.
    for (mode, tenant) in [(TenantEncryptionArg::Encrypted, "bench_enc"), (TenantEncryptionArg::Plaintext, "bench_plain")] {
        let args = BenchArgs { endpoints: endpoints.clone(), tenant_encryption: mode, ..small_args(WorkloadName::C) };
        let r = super::run(&args).await.unwrap();
        assert_clean(&r, &args);
        assert_eq!(r.config.tenant, tenant);
        assert_eq!(fake.keys(tenant, "usertable", "f").len(), 300);
        assert_eq!(lock(&fake.state).encrypted_tenants.contains(tenant), mode == TenantEncryptionArg::Encrypted);
    }
    assert!(lock(&fake.state).encrypted_tenants.contains("bench"));
    // A tenant that exists with another mode is refused, naming the flag.
    lock(&fake.state).tenants.insert("mixed_enc".into());
    let args = BenchArgs {
        endpoints: endpoints.clone(),
        tenant: "mixed".into(),
        tenant_encryption: TenantEncryptionArg::Encrypted,
        ..small_args(WorkloadName::A)
    };
    let e = format!("{:#}", super::run(&args).await.unwrap_err());
    assert!(e.contains("--tenant-encryption encrypted: tenant `mixed_enc` exists and is not encrypted"), "{e}");

    // A table without the family is refused, naming the flag.
    lock(&fake.state).tables.insert(("bench".into(), "other".into()), vec!["x".into()]);
    let args = BenchArgs { endpoints: endpoints.clone(), table: "other".into(), ..small_args(WorkloadName::A) };
    let e = super::run(&args).await.unwrap_err().to_string();
    assert!(e.contains("--family: table `other` has no family `f`; its families are x"), "{e}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_target_end_to_end() {
    let fake = FakeEtcd::default();
    let server = FakeServer::etcd(fake.clone()).await;
    let args = BenchArgs {
        target: TargetKind::Etcd,
        endpoints: vec![server.addr.to_string()],
        max_scan_length: 20,
        ..small_args(WorkloadName::E)
    };
    let r = super::run(&args).await.unwrap();
    assert_clean(&r, &args);
    let run = phase(&r, PhaseName::Run);
    let scans = count(run, OpKind::Scan);
    assert!(scans > 1500, "{run:?}");
    {
        let s = lock(&fake.state);
        assert_eq!(s.data.len() as u64, 300 + count(run, OpKind::Insert));
        assert_eq!(s.serializable_ranges, 0);
        assert_eq!(s.open_ended_ranges, scans);
    }

    // Reads and updates (workload A) on the same data.
    let args = BenchArgs { phase: Phase::Run, ..args };
    let args = BenchArgs { workload: WorkloadName::A, ..args };
    let r = super::run(&args).await.unwrap();
    assert_clean(&r, &args);
    server.stop().await;
}

#[tokio::test]
async fn unreachable_endpoint_fails_fast_naming_it() {
    // A port that was just free.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let args = BenchArgs { endpoints: vec![addr.to_string()], ..small_args(WorkloadName::A) };
    let e = format!("{:#}", super::run(&args).await.unwrap_err());
    assert!(e.contains(&format!("cannot connect to {addr}")), "{e}");
}
