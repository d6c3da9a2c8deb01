//! Creating tenants and tables, tolerating retries.

use kho_proto::v1::admin_client::AdminClient;
use kho_proto::v1::{ColumnFamily, CreateTableRequest, CreateTenantRequest, TenantEncryption};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cluster::Cluster;
use crate::kv::KvTarget;
use crate::retry::{is_retryable, RetryPolicy};

/// The tenant, table and family most tests use.
pub const TENANT: &str = "t";
pub const TABLE: &str = "kv";
pub const FAMILY: &str = "f";

/// Creates tenant `t` and table `kv` with family `f` through `via`; returns the target.
pub async fn setup_kv(cluster: &Cluster, via: u64) -> KvTarget {
    let mut admin = cluster.admin_client(via);
    if let Err(e) = create_tenant(&mut admin, TENANT).await {
        cluster.fail(format!("create tenant `{TENANT}` via node {via}: {e}"));
    }
    if let Err(e) = create_table(&mut admin, TENANT, TABLE, &[FAMILY]).await {
        cluster.fail(format!("create table `{TENANT}/{TABLE}` via node {via}: {e}"));
    }
    KvTarget::new(TENANT, TABLE, FAMILY)
}

/// Creates a tenant (default encryption: encrypted when the cluster has a master key),
/// retrying on retryable errors. ALREADY_EXISTS counts as success only after an attempt
/// whose outcome is unknown (it may have created the tenant).
pub async fn create_tenant(admin: &mut AdminClient<Channel>, name: &str) -> Result<u64, Status> {
    create_tenant_with_encryption(admin, name, TenantEncryption::Default).await
}

/// `create_tenant` with an explicit encryption choice.
pub async fn create_tenant_with_encryption(
    admin: &mut AdminClient<Channel>,
    name: &str,
    encryption: TenantEncryption,
) -> Result<u64, Status> {
    create_idempotent(&RetryPolicy::STEADY, || {
        let mut admin = admin.clone();
        let req = CreateTenantRequest { name: name.to_string(), encryption: encryption as i32 };
        async move { admin.create_tenant(req).await.map(|r| r.into_inner().revision) }
    })
    .await
}

/// Creates a table with the given families (in declaration order), like `create_tenant`.
pub async fn create_table(admin: &mut AdminClient<Channel>, tenant: &str, name: &str, families: &[&str]) -> Result<u64, Status> {
    create_table_with(admin, tenant, name, families, false).await
}

/// `create_table`, with `hashed_row_keys` (row keys stored as keyed hashes; needs an
/// encrypted tenant).
pub async fn create_table_with(
    admin: &mut AdminClient<Channel>,
    tenant: &str,
    name: &str,
    families: &[&str],
    hashed_row_keys: bool,
) -> Result<u64, Status> {
    create_idempotent(&RetryPolicy::STEADY, || {
        let mut admin = admin.clone();
        let req = CreateTableRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            families: families.iter().map(|f| ColumnFamily { name: f.to_string() }).collect(),
            hashed_row_keys,
            ..Default::default()
        };
        async move { admin.create_table(req).await.map(|r| r.into_inner().revision) }
    })
    .await
}

/// Runs a create call with bounded retries; Ok(0) when it turned out to exist after an
/// ambiguous attempt.
async fn create_idempotent<F, Fut>(policy: &RetryPolicy, mut call: F) -> Result<u64, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, Status>>,
{
    let mut ambiguous = false;
    let mut last = None;
    for attempt in 0..policy.attempts_max {
        let timeout = std::time::Duration::from_millis(policy.call_timeout_ms);
        let result = tokio::time::timeout(timeout, call())
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("cluster-tests: create timed out")));
        match result {
            Ok(revision) => return Ok(revision),
            Err(s) if s.code() == Code::AlreadyExists && ambiguous => return Ok(0),
            Err(s) if is_retryable(&s) => {
                ambiguous = true;
                last = Some(s);
            }
            Err(s) => return Err(s),
        }
        tokio::time::sleep(policy.backoff(attempt)).await;
    }
    Err(last.expect("at least one attempt"))
}
