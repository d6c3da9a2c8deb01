//! The Kho target: the kho.v1 Data service's Put, Get (linearizable, the default) and Scan
//! on one table and family; and the Admin calls that create the tenant (with the chosen
//! encryption) and the table.

use std::time::Duration;

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use futures::StreamExt as _;
use kho_proto::v1::{
    admin_client::AdminClient, data_client::DataClient, ColumnFamily, CreateTableRequest, CreateTenantRequest, GetRequest,
    ListTablesRequest, PutRequest, ReadConsistency, ScanRequest, TenantKeyStatusRequest,
};
use tonic::transport::Channel;

use super::{request, with_deadline, OpError, OpResult, Target, OP_DEADLINE, RESPONSE_BYTES_MAX};
use crate::admin_cmd::TenantEncryptionArg;
use crate::bench::config::Config;

/// Attempts of each setup call while the cluster answers `UNAVAILABLE` (no leader yet).
const SETUP_ATTEMPTS: u32 = 20;
/// Pause between setup attempts.
const SETUP_RETRY_DELAY: Duration = Duration::from_millis(500);

/// One worker's Kho client.
pub struct KhoTarget {
    client: DataClient<Channel>,
    tenant: String,
    table: String,
    family: String,
}

impl KhoTarget {
    pub fn new(channel: Channel, config: &Config) -> KhoTarget {
        KhoTarget {
            client: DataClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX),
            tenant: config.tenant.clone(),
            table: config.table.clone(),
            family: config.family.clone(),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        let req = PutRequest {
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            key: key.to_vec(),
            value: value.to_vec(),
            family: self.family.clone(),
        };
        // Clients are cheap handles on the shared connection.
        let mut client = self.client.clone();
        with_deadline(client.put(request(req))).await.map(|_| ())
    }
}

#[async_trait]
impl Target for KhoTarget {
    async fn insert(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        self.put(key, value).await
    }

    async fn read(&self, key: &[u8]) -> OpResult<bool> {
        let req = GetRequest {
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            key: key.to_vec(),
            family: self.family.clone(),
            consistency: ReadConsistency::Linearizable as i32,
        };
        let mut client = self.client.clone();
        with_deadline(client.get(request(req))).await.map(|r| r.into_inner().found)
    }

    async fn update(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        self.put(key, value).await
    }

    async fn scan(&self, start_key: &[u8], count: usize) -> OpResult<usize> {
        let req = ScanRequest {
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            family: self.family.clone(),
            start_key: start_key.to_vec(),
            end_key: Vec::new(),
            prefix: Vec::new(),
            limit: u32::try_from(count).unwrap_or(u32::MAX),
            consistency: ReadConsistency::Linearizable as i32,
        };
        let mut client = self.client.clone();
        // The deadline covers the whole stream, not only its start.
        let call = async move {
            let mut stream = client.scan(request(req)).await?.into_inner();
            let mut n = 0usize;
            while let Some(chunk) = stream.next().await {
                n += chunk?.kvs.len();
            }
            Ok(n)
        };
        match tokio::time::timeout(OP_DEADLINE, call).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(status)) => Err(OpError::from_status(&status)),
            Err(_) => Err(OpError::deadline(OP_DEADLINE)),
        }
    }
}

/// Creates the tenant (with the given encryption) and the table (with the one family) when
/// missing, and checks that the table has the family and, for an explicit encryption mode,
/// that the tenant has it (an existing tenant keeps the mode it was created with).
/// `ALREADY_EXISTS` is fine; `UNAVAILABLE` (an election) is retried.
/// The address of the leader of `tenant`'s first data shard (the shard that holds the
/// benchmark's table while the tenant does not split): `ListShards` names the leader,
/// `ClusterStatus` its address, both asked of the first endpoint that answers (a shard
/// may still be electing one: then it retries).
pub async fn leader_endpoint(endpoints: &[String], tenant: &str) -> anyhow::Result<String> {
    for attempt in 0..SETUP_ATTEMPTS {
        let mut unreachable = Vec::new();
        for e in endpoints {
            let channel = match super::connect_one(e).await {
                Ok(c) => c,
                Err(err) => {
                    unreachable.push(err);
                    continue;
                }
            };
            let mut admin = AdminClient::new(channel);
            let Ok(shards) = admin.list_shards(request(kho_proto::v1::ListShardsRequest { tenant: tenant.to_string() })).await else {
                continue;
            };
            let Some(leader_id) = shards.into_inner().shards.first().map(|s| s.leader_id).filter(|l| *l != 0) else { continue };
            let Ok(status) = admin.cluster_status(request(kho_proto::v1::ClusterStatusRequest {})).await else { continue };
            if let Some(leader) = status.into_inner().nodes.iter().find(|n| n.node_id == leader_id) {
                return Ok(leader.address.clone());
            }
        }
        // No endpoint can be reached at all: fail fast, naming the first.
        if attempt == 0 && unreachable.len() == endpoints.len() {
            if let Some(err) = unreachable.into_iter().next() {
                return Err(err);
            }
        }
        tokio::time::sleep(SETUP_RETRY_DELAY).await;
    }
    bail!("--route leader: no endpoint of {} reported a leader of tenant `{tenant}`'s shard", endpoints.join(","))
}

pub async fn prepare(channel: &Channel, tenant: &str, encryption: TenantEncryptionArg, table: &str, family: &str) -> anyhow::Result<()> {
    let admin = AdminClient::new(channel.clone());
    retry_unavailable("CreateTenant", || {
        let mut admin = admin.clone();
        let req = CreateTenantRequest { name: tenant.to_string(), encryption: encryption.to_proto() as i32 };
        async move { admin.create_tenant(request(req)).await.map(|_| ()) }
    })
    .await
    .with_context(|| format!("--tenant: cannot create tenant `{tenant}` (--tenant-encryption {})", encryption.label()))?;
    if encryption != TenantEncryptionArg::Default {
        // Only whether the tenant is encrypted: no counting.
        let status = retry_unavailable("TenantKeyStatus", || {
            let mut admin = admin.clone();
            let req = TenantKeyStatusRequest { tenant: tenant.to_string(), without_counts: true };
            async move { admin.tenant_key_status(request(req)).await.map(|r| r.into_inner().tenants) }
        })
        .await
        .with_context(|| format!("--tenant-encryption: cannot read the key status of tenant `{tenant}`"))?;
        let encrypted = status
            .iter()
            .find(|t| t.tenant == tenant)
            .map(|t| t.encrypted)
            .with_context(|| format!("--tenant-encryption: tenant `{tenant}` is missing from the key status"))?;
        if encrypted != (encryption == TenantEncryptionArg::Encrypted) {
            let is = if encrypted { "encrypted" } else { "not encrypted" };
            bail!("--tenant-encryption {}: tenant `{tenant}` exists and is {is}", encryption.label());
        }
    }
    retry_unavailable("CreateTable", || {
        let mut admin = admin.clone();
        let req = CreateTableRequest {
            tenant: tenant.to_string(),
            name: table.to_string(),
            families: vec![ColumnFamily { name: family.to_string() }],
            // The benchmark scans (workload E): plain row keys.
            hashed_row_keys: false,
            ..Default::default()
        };
        async move { admin.create_table(request(req)).await.map(|_| ()) }
    })
    .await
    .with_context(|| format!("--table: cannot create table `{table}` of tenant `{tenant}`"))?;
    // An existing table may have other families.
    let tables = retry_unavailable("ListTables", || {
        let mut admin = admin.clone();
        let req = ListTablesRequest { tenant: tenant.to_string() };
        async move { admin.list_tables(request(req)).await.map(|r| r.into_inner().tables) }
    })
    .await
    .with_context(|| format!("cannot list the tables of tenant `{tenant}`"))?;
    let Some(t) = tables.iter().find(|t| t.name == table) else {
        bail!("--table: table `{table}` of tenant `{tenant}` is not listed after its creation");
    };
    if !t.families.iter().any(|f| f.name == family) {
        let names: Vec<&str> = t.families.iter().map(|f| f.name.as_str()).collect();
        bail!("--family: table `{table}` has no family `{family}`; its families are {}", names.join(", "));
    }
    Ok(())
}

/// Runs an admin call until it succeeds, fails with something other than `UNAVAILABLE`, or
/// `SETUP_ATTEMPTS` are used. `ALREADY_EXISTS` counts as success (the default value).
async fn retry_unavailable<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    T: Default,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 1;
    loop {
        match tokio::time::timeout(OP_DEADLINE, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => return Ok(T::default()),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable && attempt < SETUP_ATTEMPTS => {}
            Ok(Err(s)) => bail!("{what}: {}", OpError::from_status(&s)),
            Err(_) => bail!("{what}: {}", OpError::deadline(OP_DEADLINE)),
        }
        attempt += 1;
        tokio::time::sleep(SETUP_RETRY_DELAY).await;
    }
}
