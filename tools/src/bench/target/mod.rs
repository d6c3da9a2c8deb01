//! The systems under test, behind one trait: [`Target`].
//!
//! [`connect`] builds one handle per worker for the configured target. The gRPC targets
//! (Kho, etcd) spread workers over the endpoints round-robin and open one HTTP/2 connection
//! per `--workers-per-connection` workers of an endpoint (32 by default, so 500 workers on
//! 3 endpoints use 18 connections). Every operation has a deadline of [`OP_DEADLINE`], sent
//! to the server as `grpc-timeout` and enforced by the client, which reports it as
//! `DEADLINE_EXCEEDED`.
//!
//! A new target (RocksDB, embedded) implements [`Target`] and gets an arm in [`connect`].

pub mod etcd;
pub mod kho;
pub mod rocksdb;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tonic::transport::Channel;

use super::config::{Config, TargetKind};
use crate::display::code_name;

/// Longest time one operation may take, scans included, before it fails with
/// `DEADLINE_EXCEEDED`.
pub const OP_DEADLINE: Duration = Duration::from_secs(10);
/// Longest time to open one connection (TCP and HTTP/2 handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response message the gRPC clients accept, bytes (as the `kho` CLI).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// A failed operation: the gRPC status label (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...) by
/// which the report counts it, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub status: &'static str,
    pub message: String,
}

impl OpError {
    pub fn from_status(s: &tonic::Status) -> OpError {
        OpError { status: code_name(s.code()), message: s.message().to_string() }
    }

    /// The client-side deadline passed.
    pub fn deadline(after: Duration) -> OpError {
        OpError { status: "DEADLINE_EXCEEDED", message: format!("no answer within {} ms", after.as_millis()) }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for OpError {}

pub type OpResult<T> = Result<T, OpError>;

/// A key-value system under test, as one worker sees it. Handles are shared between tasks
/// (`&self`), so one handle may serve several workers.
#[async_trait]
pub trait Target: Send + Sync {
    /// Writes a new key.
    async fn insert(&self, key: &[u8], value: &[u8]) -> OpResult<()>;
    /// Reads a key; `Ok(false)` when it does not exist.
    async fn read(&self, key: &[u8]) -> OpResult<bool>;
    /// Overwrites an existing key.
    async fn update(&self, key: &[u8], value: &[u8]) -> OpResult<()>;
    /// Reads up to `count` keys in key order from `start_key` (inclusive); returns how many
    /// were read.
    async fn scan(&self, start_key: &[u8], count: usize) -> OpResult<usize>;
    /// Reads a key, then writes it (YCSB's read-modify-write; not atomic). Returns whether
    /// the key existed.
    async fn read_modify_write(&self, key: &[u8], value: &[u8]) -> OpResult<bool> {
        let found = self.read(key).await?;
        self.update(key, value).await?;
        Ok(found)
    }
    /// Called once after the last phase (the embedded target syncs and stops RocksDB's
    /// background work, so the process exits cleanly).
    fn finish(&self) {}
}

/// Connects to the configured target (and prepares it: Kho's tenant and table) and returns
/// one handle per worker.
pub async fn connect(config: &Config) -> anyhow::Result<Vec<Arc<dyn Target>>> {
    if config.target == TargetKind::Rocksdb {
        let dir = config.data_dir.as_deref().context("--data-dir: required with --target rocksdb")?;
        let db: Arc<dyn Target> = Arc::new(rocksdb::RocksTarget::open(dir)?);
        return Ok(vec![db]);
    }
    if config.target == TargetKind::Kho {
        // The tenant and table first, through the first endpoint that answers: the leader
        // to route to is the leader of the tenant's shard.
        let mut setup = None;
        let mut first_error = None;
        let tls = config.tls.as_ref().map(|t| t.load()).transpose()?;
        for e in &config.endpoints {
            match connect_one(e, tls.as_ref()).await {
                Ok(ch) => {
                    setup = Some(ch);
                    break;
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let Some(setup) = setup else {
            return Err(first_error.unwrap_or_else(|| anyhow::anyhow!("--endpoints: none given")));
        };
        let split_rows = crate::bench::keys::KeyFormat::new(config.key_bytes).split_keys(config.shards);
        let bearer = kho::bearer(config)?;
        kho::prepare(&setup, &bearer, &config.tenant, config.tenant_encryption, &config.table, &config.family, split_rows).await?;
    }
    if (config.target, config.route) == (TargetKind::Kho, crate::bench::config::Route::Leader) {
        // Each key to its shard's leader, over the connections of the plan for one endpoint.
        let plan = channel_plan(1, config.concurrency, config.workers_per_connection);
        let slots = plan.iter().map(|(_, c)| c + 1).max().unwrap_or(1);
        let router = kho::ShardRouter::new(config, slots).await?;
        return Ok(plan
            .into_iter()
            .map(|(_, slot)| Arc::new(kho::KhoTarget::routed(router.clone(), slot, config)) as Arc<dyn Target>)
            .collect());
    }
    let tls = config.tls.as_ref().map(|t| t.load()).transpose()?;
    let channels = connect_channels(&config.endpoints, tls.as_ref(), config.concurrency, config.workers_per_connection).await?;
    match config.target {
        TargetKind::Kho => {
            let bearer = kho::bearer(config)?;
            Ok(channels.into_iter().map(|ch| Arc::new(kho::KhoTarget::new(ch, config, &bearer)) as Arc<dyn Target>).collect())
        }
        TargetKind::Etcd => Ok(channels.into_iter().map(|ch| Arc::new(etcd::EtcdTarget::new(ch)) as Arc<dyn Target>).collect()),
        TargetKind::Rocksdb => unreachable!("handled above"),
    }
}

/// The connection of each worker: `(endpoint index, connection index at that endpoint)`.
/// Worker `i` talks to endpoint `i % endpoints`; the workers of one endpoint share a
/// connection by groups of `per_connection` (`--workers-per-connection`).
pub fn channel_plan(endpoints: usize, workers: usize, per_connection: usize) -> Vec<(usize, usize)> {
    let endpoints = endpoints.max(1);
    let per_connection = per_connection.max(1);
    (0..workers).map(|i| (i % endpoints, (i / endpoints) / per_connection)).collect()
}

/// Opens the connections of [`channel_plan`] (all at once) and returns each worker's.
pub async fn connect_channels(
    endpoints: &[String],
    tls: Option<&crate::client::ClientTls>,
    workers: usize,
    per_connection: usize,
) -> anyhow::Result<Vec<Channel>> {
    let plan = channel_plan(endpoints.len(), workers, per_connection);
    let mut wanted: Vec<(usize, usize)> = plan.clone();
    wanted.sort_unstable();
    wanted.dedup();
    let opened = futures::future::try_join_all(wanted.iter().map(|&(e, _)| connect_one(&endpoints[e], tls))).await?;
    let mut out = Vec::with_capacity(workers);
    for slot in &plan {
        let at = wanted.binary_search(slot).map_err(|_| anyhow::anyhow!("connection {slot:?} not opened"))?;
        out.push(opened[at].clone());
    }
    Ok(out)
}

/// One HTTP/2 connection to `host:port`, TLS with `tls`.
pub(crate) async fn connect_one(endpoint: &str, tls: Option<&crate::client::ClientTls>) -> anyhow::Result<Channel> {
    let ep = crate::client::endpoint(endpoint, tls)
        .with_context(|| format!("--endpoints: bad endpoint `{endpoint}`"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    match tokio::time::timeout(CONNECT_TIMEOUT, ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => anyhow::bail!("cannot connect to {endpoint}: {}", error_text(&e)),
        Err(_) => {
            anyhow::bail!("cannot connect to {endpoint}: no connection within {} ms", CONNECT_TIMEOUT.as_millis())
        }
    }
}

/// An error and its causes on one line, without the repeats of tonic's transport errors
/// ("tcp connect error: tcp connect error: Connection refused").
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// Runs one gRPC call with the operation deadline: sent to the server as `grpc-timeout`,
/// and enforced here (tonic's own timeout would report `CANCELLED`).
pub(crate) async fn with_deadline<T, F>(call: F) -> OpResult<T>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    match tokio::time::timeout(OP_DEADLINE, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(status)) => Err(OpError::from_status(&status)),
        Err(_) => Err(OpError::deadline(OP_DEADLINE)),
    }
}

/// A request carrying the operation deadline.
pub(crate) fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(OP_DEADLINE);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_workers_round_robin_and_groups_connections() {
        let plan = channel_plan(3, 500, 32);
        assert_eq!(plan[0], (0, 0));
        assert_eq!(plan[1], (1, 0));
        assert_eq!(plan[2], (2, 0));
        assert_eq!(plan[3], (0, 0));
        let mut distinct = plan.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // 167, 167 and 166 workers per endpoint: 6 connections each.
        assert_eq!(distinct.len(), 18);
        for e in 0..3 {
            let workers = plan.iter().filter(|(pe, _)| *pe == e).count();
            assert!((166..=167).contains(&workers));
            for c in 0..6 {
                let on = plan.iter().filter(|p| **p == (e, c)).count();
                assert!(on <= 32 && on > 0, "endpoint {e} connection {c}: {on}");
            }
        }
        assert_eq!(channel_plan(1, 1, 32), vec![(0, 0)]);
        // One connection per endpoint: etcd's benchmark tool with --conns 1.
        let one = channel_plan(1, 500, 500);
        assert!(one.iter().all(|p| *p == (0, 0)));
        let mut four = channel_plan(1, 500, 128);
        four.sort_unstable();
        four.dedup();
        assert_eq!(four, vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
    }

    #[test]
    fn status_labels() {
        assert_eq!(OpError::from_status(&tonic::Status::unavailable("no leader")).status, "UNAVAILABLE");
        assert_eq!(OpError::deadline(OP_DEADLINE).status, "DEADLINE_EXCEEDED");
        assert_eq!(OpError::deadline(OP_DEADLINE).to_string(), "DEADLINE_EXCEEDED: no answer within 10000 ms");
    }
}
