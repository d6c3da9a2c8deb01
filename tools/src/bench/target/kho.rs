//! The Kho target: the kho.v1 Data service's Put, Get (linearizable, the default) and Scan
//! on one table and family; and the Admin calls that create the tenant (with the chosen
//! encryption) and the table.
//!
//! With `--route leader`, a [`ShardRouter`] sends each key to its own shard's leader, as a
//! leader-aware client does: it locates the table's shards with `LocateShards` and keeps
//! them by row range, and locates them again when a node answers that a route was stale
//! (`UNAVAILABLE` with `kho-route-error` metadata, docs/API.md "Routing errors").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use futures::StreamExt as _;
use kho_proto::v1::{
    admin_client::AdminClient, data_client::DataClient, ColumnFamily, CreateTableRequest, CreateTenantRequest, GetRequest,
    ListTablesRequest, LocateShardsRequest, PutRequest, ReadConsistency, RowRange, ScanRequest, TenantKeyStatusRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::{request, OpError, OpResult, Target, CONNECT_TIMEOUT, OP_DEADLINE, RESPONSE_BYTES_MAX};
use crate::admin_cmd::TenantEncryptionArg;
use crate::bench::config::Config;
use crate::client::{Bearer, Svc};

/// Attempts of each setup call while the cluster answers `UNAVAILABLE` (no leader yet).
const SETUP_ATTEMPTS: u32 = 20;
/// Pause between setup attempts.
const SETUP_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Most times one operation locates its shards again after a stale-route answer, count.
const ROUTE_REFRESHES_MAX: u32 = 2;
/// Most `LocateShards` pages (of up to 1,000 shards each) one refresh reads, count.
const LOCATE_PAGES_MAX: usize = 64;

/// Where a worker sends its requests.
enum Via {
    /// One connection, to one endpoint (`--route any`).
    Endpoint(Box<DataClient<Svc>>),
    /// The leader of each key's shard, connection `slot` of those to that leader (`--route leader`).
    Router { router: Arc<ShardRouter>, slot: usize },
}

/// One worker's Kho client.
pub struct KhoTarget {
    via: Via,
    tenant: String,
    table: String,
    family: String,
}

/// A client whose requests carry the run's token and session (`--token`, `--session`).
fn data_client(channel: Channel, bearer: &Bearer) -> DataClient<Svc> {
    DataClient::with_interceptor(channel, bearer.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// The run's token and session as request metadata (checked by `BenchArgs::validate`).
pub fn bearer(config: &Config) -> anyhow::Result<Bearer> {
    Bearer::new(config.token.as_deref(), config.session.as_deref())
}

impl KhoTarget {
    /// A worker that sends every request to `channel`'s endpoint.
    pub fn new(channel: Channel, config: &Config, bearer: &Bearer) -> KhoTarget {
        KhoTarget::with(Via::Endpoint(Box::new(data_client(channel, bearer))), config)
    }

    /// A worker that sends each request to its key's shard leader, over connection `slot`
    /// of each leader.
    pub fn routed(router: Arc<ShardRouter>, slot: usize, config: &Config) -> KhoTarget {
        KhoTarget::with(Via::Router { router, slot }, config)
    }

    fn with(via: Via, config: &Config) -> KhoTarget {
        KhoTarget { via, tenant: config.tenant.clone(), table: config.table.clone(), family: config.family.clone() }
    }

    /// Runs `call` on the client for `key`, within [`OP_DEADLINE`] in all. With a router, a
    /// stale-route answer makes it locate the shards again and try again (at most
    /// [`ROUTE_REFRESHES_MAX`] times).
    async fn call<T, F, Fut>(&self, key: &[u8], mut call: F) -> OpResult<T>
    where
        F: FnMut(DataClient<Svc>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let end = Instant::now() + OP_DEADLINE;
        let mut refreshes = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OpError::deadline(OP_DEADLINE));
            }
            let (client, generation) = match &self.via {
                // Clients are cheap handles on the shared connection.
                Via::Endpoint(c) => (DataClient::clone(c), None),
                Via::Router { router, slot } => {
                    let (c, g) = router.client(key, *slot);
                    (c, Some(g))
                }
            };
            match tokio::time::timeout(left, call(client, left)).await {
                Err(_) => return Err(OpError::deadline(OP_DEADLINE)),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) => match (&self.via, generation) {
                    (Via::Router { router, .. }, Some(g)) if is_stale_route(&s) && refreshes < ROUTE_REFRESHES_MAX => {
                        refreshes += 1;
                        router.refresh(g).await;
                    }
                    _ => return Err(OpError::from_status(&s)),
                },
            }
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
        self.call(key, |mut c, left| {
            let req = with_timeout(req.clone(), left);
            async move { c.put(req).await.map(|_| ()) }
        })
        .await
    }
}

/// A request carrying the time left of the operation as its deadline.
fn with_timeout<T>(message: T, left: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(left);
    r
}

/// Whether `s` is a typed stale-route answer (docs/API.md, "Routing errors").
fn is_stale_route(s: &tonic::Status) -> bool {
    kho_rpc::route::RouteError::of(s).is_some()
}

/// One shard of the table as the router knows it: the rows `[start_row, end_row)` (empty
/// `end_row`: to the end of the table) and the address to send them to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    start_row: Vec<u8>,
    end_row: Vec<u8>,
    addr: String,
}

/// The table's shards by row range, and connections to the nodes that lead them.
struct Routes {
    /// In row order, tiling the table.
    shards: Vec<Route>,
    /// Bumped on every refresh: a worker that saw a stale route refreshes only if no other
    /// did since it picked its route.
    generation: u64,
    /// `slots` connections per address.
    channels: HashMap<String, Vec<Channel>>,
}

/// Routes each key of the benchmark's table to its shard's leader (`--route leader`).
pub struct ShardRouter {
    /// Where `LocateShards` is asked, in order, and where a key no shard covers goes.
    endpoints: Vec<String>,
    tenant: String,
    table: String,
    /// Connections per leader (`--workers-per-connection` workers share one).
    slots: usize,
    /// TLS of every connection (`--ca`).
    tls: Option<crate::client::ClientTls>,
    /// The run's token and session.
    bearer: Bearer,
    routes: RwLock<Routes>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// The route of `key`: the last shard starting at or before it, if it ends after it.
fn route_of<'a>(shards: &'a [Route], key: &[u8]) -> Option<&'a Route> {
    let at = shards.partition_point(|s| s.start_row.as_slice() <= key).checked_sub(1)?;
    let s = &shards[at];
    (s.end_row.is_empty() || key < s.end_row.as_slice()).then_some(s)
}

impl ShardRouter {
    /// A router for `config`'s table whose leaders are all known, asking `LocateShards`
    /// again (at most `SETUP_ATTEMPTS` times) while a shard has no leader yet; after that,
    /// such a shard's requests go to one of its replicas, which forwards them.
    pub async fn new(config: &Config, slots: usize) -> anyhow::Result<Arc<ShardRouter>> {
        let router = Arc::new(ShardRouter {
            endpoints: config.endpoints.clone(),
            tenant: config.tenant.clone(),
            table: config.table.clone(),
            slots: slots.max(1),
            tls: config.tls.as_ref().map(|t| t.load()).transpose()?,
            bearer: bearer(config)?,
            routes: RwLock::new(Routes { shards: Vec::new(), generation: 0, channels: HashMap::new() }),
            refreshing: tokio::sync::Mutex::new(()),
        });
        let mut last = None;
        for _ in 0..SETUP_ATTEMPTS {
            match router.locate().await {
                Ok((shards, all_led)) => {
                    router.install(shards).await;
                    if all_led {
                        return Ok(router);
                    }
                    last = Some(anyhow::anyhow!("a shard of `{}/{}` has no leader yet", router.tenant, router.table));
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(SETUP_RETRY_DELAY).await;
        }
        if router.routes.read().expect("routes lock").shards.is_empty() {
            return Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
                .with_context(|| format!("--route leader: cannot locate the shards of `{}/{}`", router.tenant, router.table));
        }
        Ok(router)
    }

    /// The client for `key` (connection `slot` to its shard's leader) and the routes'
    /// generation it came from.
    fn client(&self, key: &[u8], slot: usize) -> (DataClient<Svc>, u64) {
        let routes = self.routes.read().expect("routes lock");
        let addr = route_of(&routes.shards, key).map_or(self.endpoints[0].as_str(), |r| r.addr.as_str());
        let channels = routes.channels.get(addr).expect("every routed address has connections");
        (data_client(channels[slot % channels.len()].clone(), &self.bearer), routes.generation)
    }

    /// Locates the shards again, unless another worker did since `seen` (a generation).
    async fn refresh(&self, seen: u64) {
        let _one = self.refreshing.lock().await;
        if self.routes.read().expect("routes lock").generation != seen {
            return;
        }
        match self.locate().await {
            Ok((shards, _)) => self.install(shards).await,
            // The next stale answer tries again; meanwhile the old routes stay.
            Err(e) => tracing::debug!(error = %e, "could not locate the shards again"),
        }
    }

    /// The table's shards from the first endpoint that answers `LocateShards`, and whether
    /// every one has a known leader (a shard without one goes to a replica).
    async fn locate(&self) -> anyhow::Result<(Vec<Route>, bool)> {
        let mut last = None;
        for e in &self.endpoints {
            match self.locate_at(e).await {
                Ok(r) => return Ok(r),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("--endpoints: none given")))
    }

    async fn locate_at(&self, endpoint: &str) -> anyhow::Result<(Vec<Route>, bool)> {
        let mut client = data_client(super::connect_one(endpoint, self.tls.as_ref()).await?, &self.bearer);
        let (mut shards, mut all_led) = (Vec::new(), true);
        let mut start_row = Vec::new();
        for _ in 0..LOCATE_PAGES_MAX {
            let req = LocateShardsRequest {
                tenant: self.tenant.clone(),
                table: self.table.clone(),
                keys: Vec::new(),
                range: Some(RowRange { start_row: start_row.clone(), end_row: Vec::new(), limit: 0 }),
            };
            let answer = client
                .locate_shards(request(req))
                .await
                .map_err(|s| anyhow::anyhow!("LocateShards at {endpoint}: {}", OpError::from_status(&s)))?
                .into_inner();
            for id in &answer.range_shard_ids {
                let s = answer
                    .shards
                    .iter()
                    .find(|s| s.id == *id)
                    .with_context(|| format!("LocateShards at {endpoint}: shard {id} listed without its record"))?;
                let replica = s.replicas.iter().find(|r| !r.address.is_empty()).map(|r| r.address.clone());
                let addr = if s.leader_address.is_empty() {
                    all_led = false;
                    replica.unwrap_or_else(|| endpoint.to_string())
                } else {
                    s.leader_address.clone()
                };
                shards.push(Route { start_row: s.start_row.clone(), end_row: s.end_row.clone(), addr });
            }
            if answer.range_resume_row.is_empty() {
                return Ok((shards, all_led));
            }
            start_row = answer.range_resume_row;
        }
        bail!("LocateShards at {endpoint}: the table has more than {} shards", LOCATE_PAGES_MAX * 1_000)
    }

    /// Makes `shards` the routes, with connections to every address they name (and the
    /// endpoints, for keys no shard covers).
    async fn install(&self, shards: Vec<Route>) {
        let wanted: Vec<String> = shards.iter().map(|r| r.addr.clone()).chain(self.endpoints.iter().take(1).cloned()).collect();
        let mut opened: Vec<(String, Vec<Channel>)> = Vec::new();
        for addr in wanted {
            let known = self.routes.read().expect("routes lock").channels.contains_key(&addr);
            if known || opened.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            let mut channels = Vec::with_capacity(self.slots);
            for _ in 0..self.slots {
                channels.push(match super::connect_one(&addr, self.tls.as_ref()).await {
                    Ok(c) => c,
                    // A node that does not answer now: its requests fail (and relocate) later.
                    Err(_) => lazy_channel(&addr, self.tls.as_ref()),
                });
            }
            opened.push((addr, channels));
        }
        let mut routes = self.routes.write().expect("routes lock");
        routes.channels.extend(opened);
        routes.shards = shards;
        routes.generation += 1;
    }
}

/// A connection opened at its first call.
fn lazy_channel(addr: &str, tls: Option<&crate::client::ClientTls>) -> Channel {
    crate::client::endpoint(addr, tls)
        .unwrap_or_else(|_| Endpoint::from_static("http://0.0.0.0:0"))
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
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
        self.call(key, |mut c, left| {
            let req = with_timeout(req.clone(), left);
            async move { c.get(req).await.map(|r| r.into_inner().found) }
        })
        .await
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
        // Sent to the shard of its first key; the node reads on across shards. The
        // deadline covers the whole stream, not only its start.
        self.call(start_key, |mut c, left| {
            let req = with_timeout(req.clone(), left);
            async move {
                let mut stream = c.scan(req).await?.into_inner();
                let mut n = 0usize;
                while let Some(chunk) = stream.next().await {
                    n += chunk?.kvs.len();
                }
                Ok(n)
            }
        })
        .await
    }
}

/// Creates the tenant (with the given encryption) and the table (with the one family) when
/// missing, and checks that the table has the family and, for an explicit encryption mode,
/// that the tenant has it (an existing tenant keeps the mode it was created with).
/// `ALREADY_EXISTS` is fine; `UNAVAILABLE` (an election) is retried.
pub async fn prepare(
    channel: &Channel,
    bearer: &Bearer,
    tenant: &str,
    encryption: TenantEncryptionArg,
    table: &str,
    family: &str,
    split_rows: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let admin = AdminClient::with_interceptor(channel.clone(), bearer.clone());
    if bearer.has_token() {
        // A principal's run (`--token`): the tenant and table are an admin's to make; check
        // that they are there and that the principal's grants reach them.
        return check_table(&admin, tenant, table, family).await;
    }
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
            split_rows: split_rows.clone(),
            ..Default::default()
        };
        async move { admin.create_table(request(req)).await.map(|_| ()) }
    })
    .await
    .with_context(|| format!("--table: cannot create table `{table}` of tenant `{tenant}`"))?;
    check_table(&admin, tenant, table, family).await
}

/// Whether `tenant/table` is listed, with `family` (an existing table may have others).
async fn check_table(admin: &AdminClient<Svc>, tenant: &str, table: &str, family: &str) -> anyhow::Result<()> {
    let tables = retry_unavailable("ListTables", || {
        let mut admin = admin.clone();
        let req = ListTablesRequest { tenant: tenant.to_string() };
        async move { admin.list_tables(request(req)).await.map(|r| r.into_inner().tables) }
    })
    .await
    .with_context(|| format!("cannot list the tables of tenant `{tenant}`"))?;
    let Some(t) = tables.iter().find(|t| t.name == table) else {
        bail!("--table: table `{table}` of tenant `{tenant}` is not listed (not created, or no grant of the caller reaches it)");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(start: &[u8], end: &[u8], addr: &str) -> Route {
        Route { start_row: start.to_vec(), end_row: end.to_vec(), addr: addr.to_string() }
    }

    #[test]
    fn a_key_goes_to_the_shard_whose_rows_hold_it() {
        let shards = [route(b"", b"m", "a:1"), route(b"m", b"t", "b:1"), route(b"t", b"", "c:1")];
        let at = |k: &[u8]| route_of(&shards, k).map(|r| r.addr.as_str());
        assert_eq!(at(b"a"), Some("a:1"));
        assert_eq!(at(b"l\xff"), Some("a:1"));
        assert_eq!(at(b"m"), Some("b:1"), "a shard's first row is its own");
        assert_eq!(at(b"s"), Some("b:1"));
        assert_eq!(at(b"t"), Some("c:1"));
        assert_eq!(at(b"zzz"), Some("c:1"), "the last shard runs to the end of the table");
        // A gap (routes being refreshed): no route, the first endpoint serves it.
        let gap = [route(b"", b"m", "a:1"), route(b"t", b"", "c:1")];
        assert_eq!(route_of(&gap, b"p"), None);
        assert_eq!(route_of(&[], b"p"), None);
    }
}
