//! The command-line flags of `kho bench` ([`BenchArgs`]) and their validation into the
//! effective [`Config`] that the runner uses and the JSON report records.
//!
//! Every bound is a named constant with its unit; every validation error starts with the
//! flag it is about (`--concurrency: ...`).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::keys::KeyFormat;
use super::workload::{self, WorkloadName, WorkloadSpec};
use crate::admin_cmd::TenantEncryptionArg;

/// Default endpoint of a Kho node (as in the other `kho` client commands).
pub const KHO_DEFAULT_ENDPOINT: &str = "127.0.0.1:7001";
/// Default endpoint of an etcd member (etcd's client port).
pub const ETCD_DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";
/// Most endpoints one `--endpoints` list may hold.
pub const ENDPOINTS_MAX: usize = 64;

/// Default records of the load phase.
pub const RECORD_COUNT_DEFAULT: u64 = 100_000;
/// Most records of the load phase.
pub const RECORD_COUNT_MAX: u64 = 1_000_000_000;
/// Default measured operations of the run phase.
pub const OPERATION_COUNT_DEFAULT: u64 = 1_000_000;
/// Most measured operations of the run phase.
pub const OPERATION_COUNT_MAX: u64 = 1_000_000_000_000;
/// Default length of the measured run phase, seconds.
pub const DURATION_SECS_DEFAULT: u64 = 60;
/// Longest run phase, seconds (one week).
pub const DURATION_SECS_MAX: u64 = 7 * 24 * 3600;
/// Longest warmup, seconds.
pub const WARMUP_SECS_MAX: u64 = 3600;

/// Default key size, bytes: `user` and 20 digits, the 19 digits of a full 63-bit FNV hash
/// with one leading zero (YCSB's keys are `user` and up to 19 digits).
pub const KEY_BYTES_DEFAULT: usize = 24;
/// Smallest key, bytes: `user` and 4 digits (10,000 distinct keys).
pub const KEY_BYTES_MIN: usize = 8;
/// Most shards `--shards` starts the table in (`CreateTable`'s limit).
pub const SHARDS_MAX: u64 = 64;

fn one_shard() -> u64 {
    1
}

/// Largest key, bytes (Kho's `limits.key_bytes_max` default and hard limit).
pub const KEY_BYTES_MAX: usize = 4096;
/// Default value size, bytes (YCSB: 10 fields of 100 bytes; here one value of 1 KiB).
pub const VALUE_BYTES_DEFAULT: usize = 1024;
/// Smallest value, bytes.
pub const VALUE_BYTES_MIN: usize = 1;
/// Largest value, bytes (1 MiB: Kho's `limits.value_bytes_max` default; etcd refuses
/// requests above 1.5 MiB by default).
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Default concurrent workers (each has one operation in flight at a time).
pub const CONCURRENCY_DEFAULT: usize = 64;
/// Most concurrent workers.
pub const CONCURRENCY_MAX: usize = 4096;
/// Default workers sharing one HTTP/2 connection to an endpoint.
pub const WORKERS_PER_CONNECTION_DEFAULT: usize = 32;
/// Highest target rate, operations per second (all workers together).
pub const RATE_MAX: u64 = 10_000_000;

/// Default longest scan of workload E, keys (YCSB workload E: `maxscanlength=100`).
pub const MAX_SCAN_LENGTH_DEFAULT: usize = 100;
/// Longest scan, keys (Kho's `limits.scan_limit_max` default).
pub const MAX_SCAN_LENGTH_MAX: usize = 10_000;
/// Largest scan answer the clients accept, bytes (as the `kho` CLI).
pub const SCAN_RESPONSE_BYTES_MAX: usize = 64 << 20;

/// Default seconds between progress lines on stderr.
pub const PROGRESS_SECS_DEFAULT: u64 = 10;
/// Longest time between progress lines, seconds.
pub const PROGRESS_SECS_MAX: u64 = 3600;

/// Longest tenant, table or family name, bytes (Kho's naming rule).
pub const NAME_BYTES_MAX: usize = 64;

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A Kho cluster: the kho.v1 Data service (Put, linearizable Get, Scan).
    Kho,
    /// An etcd cluster: the etcd v3 KV service (Put, linearizable Range).
    Etcd,
    /// An embedded RocksDB in --data-dir (Kho's engine), every write synced: the physical
    /// reference for durable writes on this machine.
    Rocksdb,
}

/// Which keys the operations of the run phase pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every existing key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian, constant 0.99: a few keys, spread over the key space, are
    /// much more popular than the rest.
    Zipfian,
    /// The most recently inserted keys are the most popular (zipfian over insertion age).
    Latest,
}

/// Which phases to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Only insert the records.
    Load,
    /// Only run the workload, on records loaded before (with the same --record-count and
    /// --key-bytes).
    Run,
    /// Load, then run.
    Both,
}

impl Phase {
    pub fn includes_load(self) -> bool {
        matches!(self, Phase::Load | Phase::Both)
    }

    pub fn includes_run(self) -> bool {
        matches!(self, Phase::Run | Phase::Both)
    }
}

/// Flags of `kho bench`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct BenchArgs {
    /// System under test.
    #[arg(long, value_enum, default_value_t = TargetKind::Kho)]
    pub target: TargetKind,
    /// gRPC endpoints; workers are spread over them round-robin. Default: 127.0.0.1:7001
    /// for kho, 127.0.0.1:2379 for etcd.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub endpoints: Vec<String>,
    /// YCSB core workload: a 50/50 read/update; b 95/5 read/update; c read only; d 95/5
    /// read/insert, latest; e 95/5 scan/insert; f 50/50 read/read-modify-write.
    #[arg(long, value_enum, default_value_t = WorkloadName::A)]
    pub workload: WorkloadName,
    /// Records inserted by the load phase, and the key space the run phase starts with.
    #[arg(long, default_value_t = RECORD_COUNT_DEFAULT, value_name = "RECORDS")]
    pub record_count: u64,
    /// Measured operations of the run phase; 0 = no limit (then --duration-secs ends it).
    #[arg(long, default_value_t = OPERATION_COUNT_DEFAULT, value_name = "OPS")]
    pub operation_count: u64,
    /// Length of the measured run phase, seconds; 0 = no limit (then --operation-count
    /// ends it). The run phase stops at whichever limit comes first.
    #[arg(long, default_value_t = DURATION_SECS_DEFAULT, value_name = "SECONDS")]
    pub duration_secs: u64,
    /// Key size, bytes: `user` and the hashed key number, zero-padded. Below 23 bytes the
    /// number is not a hash but a scrambling of the key number that keeps keys distinct.
    #[arg(long, default_value_t = KEY_BYTES_DEFAULT, value_name = "BYTES")]
    pub key_bytes: usize,
    /// Value size, bytes.
    #[arg(long, default_value_t = VALUE_BYTES_DEFAULT, value_name = "BYTES")]
    pub value_bytes: usize,
    /// Concurrent workers, each with one operation in flight.
    #[arg(long, default_value_t = CONCURRENCY_DEFAULT, value_name = "WORKERS")]
    pub concurrency: usize,
    /// Workers of one endpoint sharing one HTTP/2 connection (etcd's benchmark tool:
    /// --clients / --conns); 500 workers on one endpoint use 16 connections by default.
    #[arg(long, default_value_t = WORKERS_PER_CONNECTION_DEFAULT, value_name = "WORKERS")]
    pub workers_per_connection: usize,
    /// Target throughput of all workers together, operations per second; 0 = as fast as
    /// possible. Each worker follows a fixed schedule (open loop: a late operation does
    /// not shift the ones after it).
    #[arg(long, default_value_t = 0, value_name = "OPS_PER_SEC")]
    pub rate: u64,
    /// Request distribution, overriding the workload's (a, b, c, e, f: zipfian; d: latest).
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Longest scan (workload E), keys; scan lengths are uniform in 1..=this.
    #[arg(long, default_value_t = MAX_SCAN_LENGTH_DEFAULT, value_name = "KEYS")]
    pub max_scan_length: usize,
    /// Phases to run.
    #[arg(long, value_enum, default_value_t = Phase::Both)]
    pub phase: Phase,
    /// Also write the report, with the full configuration, as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The rocksdb target's directory (created when missing); required with
    /// --target rocksdb.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kho tenant; created when missing. With --tenant-encryption encrypted or plaintext,
    /// `_enc` or `_plain` is appended, so that runs of different modes never share a tenant.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// Kho tenant encryption, when the tenant is created: default (encrypted when the
    /// cluster has a master key), encrypted, or plaintext. An existing tenant must match.
    #[arg(long, value_enum, default_value_t = TenantEncryptionArg::Default)]
    pub tenant_encryption: TenantEncryptionArg,
    /// Kho target: `leader` sends each request to the leader of its key's shard (located
    /// with LocateShards, again after a stale-route answer), as a leader-aware client
    /// does; `any` spreads workers over all
    /// endpoints: followers forward writes to the leader and serve linearizable reads
    /// themselves (follower reads, `raft.follower_reads`).
    #[arg(long, value_enum, default_value_t = Route::Leader)]
    pub route: Route,
    /// Kho table; created when missing, with the one family --family.
    #[arg(long, default_value = "usertable")]
    pub table: String,
    /// Kho: shards the table starts in when the bench creates it (1 to 64), split at
    /// evenly spaced key numbers so that every shard gets its share of the keys. An
    /// existing table keeps its shards.
    #[arg(long, default_value_t = 1, value_name = "SHARDS")]
    pub shards: u64,
    /// Kho column family of the key-value cells; must be a family of the table.
    #[arg(long, default_value = "f")]
    pub family: String,
    /// Seconds of unmeasured operations before the measured run phase.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub warmup_secs: u64,
    /// Seed of the random choices (operations, keys, values); default: from the clock. The
    /// report records the seed used. With one worker, a seed fixes the operations sent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds between progress lines on stderr; 0 = none.
    #[arg(long, default_value_t = PROGRESS_SECS_DEFAULT, value_name = "SECONDS")]
    pub progress_secs: u64,
    /// Kho: the CA certificates (PEM) of a cluster with TLS; the connections are then TLS.
    /// Flags only (not KHO_CA): a benchmark says what it measures on its command line.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Kho: a client certificate (PEM) for mutual TLS; needs --key and --ca.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Kho: the client certificate's key (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Kho: a bearer token sent with every request (`kho token create`): the benchmark runs
    /// as that principal, within its grants (the tenant and table must then exist, made by
    /// an admin). Never written to the report.
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub token: Option<String>,
    /// Kho: an access session (`kho session open`) every request is made in: each is
    /// recorded in the audit log before it is answered, which this measures.
    #[arg(long, value_name = "SESSION_ID")]
    #[serde(default)]
    pub session: Option<String>,
}

/// The TLS files of a Kho benchmark's connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl BenchTls {
    /// Reads the files.
    pub fn load(&self) -> anyhow::Result<crate::client::ClientTls> {
        crate::client::ClientTls::load(&self.ca, self.cert.as_deref(), self.key.as_deref())
    }
}

impl Default for BenchArgs {
    /// The defaults of the command line.
    fn default() -> Self {
        BenchArgs {
            target: TargetKind::Kho,
            endpoints: Vec::new(),
            workload: WorkloadName::A,
            record_count: RECORD_COUNT_DEFAULT,
            operation_count: OPERATION_COUNT_DEFAULT,
            duration_secs: DURATION_SECS_DEFAULT,
            key_bytes: KEY_BYTES_DEFAULT,
            value_bytes: VALUE_BYTES_DEFAULT,
            concurrency: CONCURRENCY_DEFAULT,
            workers_per_connection: WORKERS_PER_CONNECTION_DEFAULT,
            rate: 0,
            distribution: None,
            max_scan_length: MAX_SCAN_LENGTH_DEFAULT,
            phase: Phase::Both,
            json: None,
            data_dir: None,
            tenant: "bench".to_string(),
            tenant_encryption: TenantEncryptionArg::Default,
            route: Route::Leader,
            table: "usertable".to_string(),
            shards: 1,
            family: "f".to_string(),
            warmup_secs: 0,
            seed: None,
            progress_secs: PROGRESS_SECS_DEFAULT,
            ca: None,
            cert: None,
            key: None,
            token: None,
            session: None,
        }
    }
}

/// The effective configuration of a benchmark: the flags after validation, with defaults
/// resolved (endpoints, seed, request distribution). Recorded in the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub target: TargetKind,
    pub endpoints: Vec<String>,
    /// The workload, with its operation mix and the request distribution in force.
    pub workload: WorkloadSpec,
    pub record_count: u64,
    /// 0 = no limit.
    pub operation_count: u64,
    /// 0 = no limit.
    pub duration_secs: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub concurrency: usize,
    /// Workers of one endpoint per HTTP/2 connection. Absent in reports written before
    /// the flag existed: 32, the value then.
    #[serde(default = "workers_per_connection_default")]
    pub workers_per_connection: usize,
    /// Operations per second, all workers; 0 = unlimited.
    pub rate: u64,
    pub max_scan_length: usize,
    pub phase: Phase,
    pub json: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// The Kho tenant used: `--tenant` with the suffix of `--tenant-encryption`.
    pub tenant: String,
    /// Absent in reports written before encryption existed: default.
    #[serde(default)]
    pub tenant_encryption: TenantEncryptionArg,
    /// Absent in reports written before routing existed: `any`.
    #[serde(default = "route_any")]
    pub route: Route,
    pub table: String,
    /// Absent in reports written before shards existed: 1.
    #[serde(default = "one_shard")]
    pub shards: u64,
    pub family: String,
    pub warmup_secs: u64,
    pub seed: u64,
    pub progress_secs: u64,
    /// Kho over TLS; absent in reports written before TLS existed: plaintext.
    #[serde(default)]
    pub tls: Option<BenchTls>,
    /// The bearer token of the run's principal (`--token`): never in the report.
    #[serde(skip)]
    pub token: Option<String>,
    /// Whether the run used a token (the report's trace of `--token`).
    #[serde(default)]
    pub with_token: bool,
    /// The access session the requests were made in (`--session`).
    #[serde(default)]
    pub session: Option<String>,
}

impl BenchArgs {
    /// Checks every flag and returns the effective configuration. The error names the
    /// flag, the value and the allowed range with its unit.
    pub fn validate(&self) -> anyhow::Result<Config> {
        let endpoints = self.resolve_endpoints()?;
        check_range("--record-count", self.record_count, 1, RECORD_COUNT_MAX, "records")?;
        check_range("--operation-count", self.operation_count, 0, OPERATION_COUNT_MAX, "operations")?;
        check_range("--duration-secs", self.duration_secs, 0, DURATION_SECS_MAX, "seconds")?;
        if self.phase.includes_run() && self.operation_count == 0 && self.duration_secs == 0 {
            bail!(
                "--operation-count and --duration-secs are both 0: the run phase would never end; \
                 set at least one of them"
            );
        }
        check_range("--key-bytes", self.key_bytes, KEY_BYTES_MIN, KEY_BYTES_MAX, "bytes")?;
        check_range("--shards", self.shards as usize, 1, SHARDS_MAX as usize, "shards")?;
        let key_format = KeyFormat::new(self.key_bytes);
        if let Some(capacity) = key_format.distinct_keys() {
            if self.record_count > capacity {
                bail!(
                    "--key-bytes: {} bytes hold at most {capacity} distinct keys, fewer than \
                     --record-count {} records; use longer keys",
                    self.key_bytes,
                    self.record_count
                );
            }
        }
        check_range("--value-bytes", self.value_bytes, VALUE_BYTES_MIN, VALUE_BYTES_MAX, "bytes")?;
        check_range("--concurrency", self.concurrency, 1, CONCURRENCY_MAX, "workers")?;
        check_range("--workers-per-connection", self.workers_per_connection, 1, CONCURRENCY_MAX, "workers")?;
        check_range("--rate", self.rate, 0, RATE_MAX, "operations per second")?;
        check_range("--max-scan-length", self.max_scan_length, 1, MAX_SCAN_LENGTH_MAX, "keys")?;
        let mut spec = workload::spec(self.workload);
        if spec.scan > 0.0 {
            let answer_bytes = self.max_scan_length.saturating_mul(self.key_bytes + self.value_bytes);
            if answer_bytes > SCAN_RESPONSE_BYTES_MAX {
                bail!(
                    "--max-scan-length: {} keys of {} + {} bytes make {answer_bytes} bytes, above \
                     the limit of {SCAN_RESPONSE_BYTES_MAX} bytes for one scan answer; scan fewer keys",
                    self.max_scan_length,
                    self.key_bytes,
                    self.value_bytes
                );
            }
        }
        check_range("--warmup-secs", self.warmup_secs, 0, WARMUP_SECS_MAX, "seconds")?;
        check_range("--progress-secs", self.progress_secs, 0, PROGRESS_SECS_MAX, "seconds")?;
        let tenant = tenant_name(&self.tenant, self.tenant_encryption);
        if self.target == TargetKind::Kho {
            check_name("--tenant", &tenant)?;
            check_name("--table", &self.table)?;
            check_name("--family", &self.family)?;
        }
        if let Some(path) = &self.json {
            check_json_path(path)?;
        }
        let tls = match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => None,
            (Some(_), _, _) if self.target != TargetKind::Kho => bail!("--ca: TLS is for the kho target only"),
            (Some(ca), cert, key) if cert.is_some() == key.is_some() => {
                Some(BenchTls { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
            }
            (Some(_), _, _) => bail!("--cert and --key: give both or neither"),
            (None, _, _) => bail!("--cert and --key need --ca"),
        };
        if (self.token.is_some() || self.session.is_some()) && self.target != TargetKind::Kho {
            bail!("--token and --session: for the kho target only");
        }
        // Checked here, before anything is sent: the shapes the CLI checks.
        crate::client::Bearer::new(self.token.as_deref(), self.session.as_deref())?;
        if self.target == TargetKind::Rocksdb && self.data_dir.is_none() {
            bail!("--data-dir: required with --target rocksdb (the directory of the embedded database)");
        }
        if let Some(d) = self.distribution {
            spec.request_distribution = d;
        }
        Ok(Config {
            target: self.target,
            endpoints,
            workload: spec,
            record_count: self.record_count,
            operation_count: self.operation_count,
            duration_secs: self.duration_secs,
            key_bytes: self.key_bytes,
            value_bytes: self.value_bytes,
            concurrency: self.concurrency,
            workers_per_connection: self.workers_per_connection,
            rate: self.rate,
            max_scan_length: self.max_scan_length,
            phase: self.phase,
            json: self.json.clone(),
            data_dir: self.data_dir.clone(),
            tenant,
            tenant_encryption: self.tenant_encryption,
            route: self.route,
            table: self.table.clone(),
            shards: self.shards,
            family: self.family.clone(),
            warmup_secs: self.warmup_secs,
            seed: self.seed.unwrap_or_else(clock_seed),
            progress_secs: self.progress_secs,
            tls,
            token: self.token.clone(),
            with_token: self.token.is_some(),
            session: self.session.clone(),
        })
    }

    /// The endpoints given, checked, or the target's default.
    fn resolve_endpoints(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for raw in &self.endpoints {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            let entry = entry.strip_prefix("http://").unwrap_or(entry);
            if entry.starts_with("https://") {
                bail!("--endpoints: `{entry}`: TLS endpoints are not supported; use host:port");
            }
            crate::parse::check_host_port(entry).map_err(|e| anyhow::anyhow!("--endpoints: {e}"))?;
            out.push(entry.to_string());
        }
        if out.len() > ENDPOINTS_MAX {
            bail!("--endpoints: {} endpoints given; at most {ENDPOINTS_MAX} endpoints", out.len());
        }
        if out.is_empty() {
            if !self.endpoints.is_empty() {
                bail!("--endpoints: expected host:port[,host:port...], got an empty list");
            }
            out.push(
                match self.target {
                    TargetKind::Kho => KHO_DEFAULT_ENDPOINT,
                    TargetKind::Etcd => ETCD_DEFAULT_ENDPOINT,
                    // The rocksdb target is embedded: no endpoint.
                    TargetKind::Rocksdb => return Ok(Vec::new()),
                }
                .to_string(),
            );
        }
        Ok(out)
    }
}

/// The Kho tenant of a run: `--tenant`, with `_enc` or `_plain` appended for an explicit
/// encryption mode, so that an encrypted and a plaintext run never share a tenant (the mode
/// is fixed when the tenant is created).
pub fn tenant_name(tenant: &str, encryption: TenantEncryptionArg) -> String {
    match encryption {
        TenantEncryptionArg::Default => tenant.to_string(),
        TenantEncryptionArg::Encrypted => format!("{tenant}_enc"),
        TenantEncryptionArg::Plaintext => format!("{tenant}_plain"),
    }
}

/// `flag: value unit is out of range; allowed min..=max unit`.
fn check_range<T>(flag: &str, value: T, min: T, max: T, unit: &str) -> anyhow::Result<()>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        bail!("{flag}: {value} {unit} is out of range; allowed {min}..={max} {unit}");
    }
    Ok(())
}

/// Kho's naming rule for tenants, tables and families: 1 to 64 bytes of `a-z`, `0-9`, `_`.
fn check_name(flag: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        bail!("{flag}: `{name}` is {} bytes; allowed 1..={NAME_BYTES_MAX} bytes", name.len());
    }
    if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_')) {
        bail!("{flag}: `{name}` contains `{c}`; allowed are a-z, 0-9 and _");
    }
    Ok(())
}

/// The JSON report is written at the end: check now that its folder exists, so that a long
/// run does not end in an error.
fn check_json_path(path: &std::path::Path) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() {
        bail!("--json: the path is empty");
    }
    if path.is_dir() {
        bail!("--json: {} is a folder; give a file path", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        bail!("--json: folder {} does not exist", parent.display());
    }
    Ok(())
}

/// A seed from the clock, for runs without `--seed`.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    super::generator::splitmix64(nanos ^ u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    /// A stand-in for `kho bench`.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.args)
    }

    /// The validation error of a command line that parses.
    fn error_of(args: &[&str]) -> String {
        match parse(args) {
            Ok(a) => match a.validate() {
                Ok(_) => panic!("{args:?} was accepted"),
                Err(e) => e.to_string(),
            },
            Err(e) => panic!("{args:?} did not parse: {e}"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_default_impl_and_validate() {
        let parsed = parse(&[]).unwrap();
        assert_eq!(parsed, BenchArgs::default());
        let c = parsed.validate().unwrap();
        assert_eq!(c.endpoints, [KHO_DEFAULT_ENDPOINT]);
        assert_eq!(c.key_bytes, 24);
        assert_eq!(c.value_bytes, 1024);
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.workers_per_connection, 32);
        assert_eq!(c.workload.request_distribution, Distribution::Zipfian);
        let etcd = parse(&["--target", "etcd"]).unwrap().validate().unwrap();
        assert_eq!(etcd.endpoints, [ETCD_DEFAULT_ENDPOINT]);
    }

    #[test]
    fn a_token_and_a_session_are_checked_and_the_token_never_reaches_the_report() {
        let session = "0123456789abcdef0123456789abcdef";
        let c = parse(&["--token", "kho_0123456789abcdef_00", "--session", session]).unwrap().validate().unwrap();
        assert!(c.with_token && c.token.is_some() && c.session.as_deref() == Some(session));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("kho_0123456789abcdef_00") && json.contains(session), "{json}");
        assert!(error_of(&["--session", "nope"]).contains("--session: `nope` is not a session id"));
        assert!(error_of(&["--target", "etcd", "--token", "kho_x"]).contains("for the kho target only"));
    }

    #[test]
    fn flags_parse() {
        let a = parse(&[
            "--target",
            "etcd",
            "--endpoints",
            "a:1, http://b:2",
            "--workload",
            "e",
            "--record-count",
            "10",
            "--operation-count",
            "0",
            "--duration-secs",
            "5",
            "--key-bytes",
            "32",
            "--value-bytes",
            "100",
            "--concurrency",
            "500",
            "--rate",
            "1000",
            "--distribution",
            "uniform",
            "--phase",
            "run",
            "--warmup-secs",
            "2",
            "--seed",
            "7",
            "--max-scan-length",
            "10",
            "--workers-per-connection",
            "500",
        ])
        .unwrap();
        let c = a.validate().unwrap();
        assert_eq!(c.endpoints, ["a:1", "b:2"]);
        assert_eq!(c.workload.name, WorkloadName::E);
        assert_eq!(c.workload.request_distribution, Distribution::Uniform);
        assert_eq!((c.concurrency, c.rate, c.seed, c.warmup_secs), (500, 1000, 7, 2));
        assert_eq!(c.workers_per_connection, 500);
        assert_eq!(c.phase, Phase::Run);
        assert_eq!((c.tenant.as_str(), c.tenant_encryption), ("bench", TenantEncryptionArg::Default));
        assert!(parse(&["--workload", "g"]).is_err());
        assert!(parse(&["--target", "redis"]).is_err());
        // The embedded target needs its directory and no endpoint.
        let e = parse(&["--target", "rocksdb"]).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("--data-dir"), "{e}");
        let r = parse(&["--target", "rocksdb", "--data-dir", "/tmp/x"]).unwrap().validate().unwrap();
        assert!(r.endpoints.is_empty());
        assert_eq!(r.data_dir.as_deref(), Some(std::path::Path::new("/tmp/x")));
    }

    #[test]
    fn tenant_encryption_picks_its_own_tenant() {
        let c = parse(&["--tenant-encryption", "encrypted"]).unwrap().validate().unwrap();
        assert_eq!((c.tenant.as_str(), c.tenant_encryption), ("bench_enc", TenantEncryptionArg::Encrypted));
        let c = parse(&["--tenant", "t", "--tenant-encryption", "plaintext"]).unwrap().validate().unwrap();
        assert_eq!((c.tenant.as_str(), c.tenant_encryption), ("t_plain", TenantEncryptionArg::Plaintext));
        let c = parse(&["--tenant-encryption", "default"]).unwrap().validate().unwrap();
        assert_eq!(c.tenant, "bench");
        assert!(parse(&["--tenant-encryption", "aes"]).is_err());
        // The suffix counts toward the name's length.
        let long = "a".repeat(NAME_BYTES_MAX - 2);
        assert!(parse(&["--tenant", &long]).unwrap().validate().is_ok());
        let e = error_of(&["--tenant", &long, "--tenant-encryption", "plaintext"]);
        assert!(e.contains("--tenant: ") && e.contains("_plain"), "{e}");
        // The JSON of the config names the mode.
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["tenant_encryption"], "default");
        // A report written before --workers-per-connection existed reads as 32, the value then.
        assert_eq!(v["workers_per_connection"], 32);
        v.as_object_mut().unwrap().remove("workers_per_connection");
        let old: Config = serde_json::from_value(v).unwrap();
        assert_eq!(old.workers_per_connection, 32);
    }

    #[test]
    fn every_bound_names_its_flag_and_unit() {
        let cases: &[(&[&str], &str)] = &[
            (&["--concurrency", "0"], "--concurrency: 0 workers is out of range; allowed 1..=4096 workers"),
            (&["--concurrency", "5000"], "--concurrency"),
            (&["--workers-per-connection", "0"], "--workers-per-connection: 0 workers is out of range; allowed 1..=4096 workers"),
            (&["--record-count", "0"], "--record-count: 0 records"),
            (&["--operation-count", "0", "--duration-secs", "0"], "--operation-count and --duration-secs"),
            (&["--duration-secs", "99999999"], "--duration-secs"),
            (&["--key-bytes", "7"], "--key-bytes: 7 bytes is out of range; allowed 8..=4096 bytes"),
            (&["--key-bytes", "8", "--record-count", "10001"], "--key-bytes: 8 bytes hold at most 10000"),
            (&["--value-bytes", "0"], "--value-bytes: 0 bytes"),
            (&["--value-bytes", "2000000"], "--value-bytes"),
            (&["--rate", "20000000"], "--rate: 20000000 operations per second"),
            (&["--max-scan-length", "0"], "--max-scan-length: 0 keys"),
            (&["--workload", "e", "--value-bytes", "1048576", "--max-scan-length", "100"], "--max-scan-length"),
            (&["--warmup-secs", "4000"], "--warmup-secs: 4000 seconds"),
            (&["--progress-secs", "4000"], "--progress-secs"),
            (&["--tenant", "Bad"], "--tenant: `Bad` contains `B`"),
            (&["--table", ""], "--table: `` is 0 bytes"),
            (&["--family", "a-b"], "--family"),
            (&["--endpoints", "nope"], "--endpoints: `nope` is not host:port"),
            (&["--endpoints", ","], "--endpoints: expected host:port"),
            (&["--endpoints", "https://a:1"], "--endpoints: `https://a:1`: TLS"),
            (&["--json", "/nonexistent-dir/x.json"], "--json: folder /nonexistent-dir does not exist"),
        ];
        for (args, expected) in cases {
            let e = error_of(args);
            assert!(e.contains(expected), "{args:?}: `{e}` lacks `{expected}`");
        }
        // Bad names are fine for etcd, which has no tenants.
        assert!(parse(&["--target", "etcd", "--tenant", "Bad"]).unwrap().validate().is_ok());
        // With only a load phase, no run limit is needed.
        assert!(parse(&["--phase", "load", "--operation-count", "0", "--duration-secs", "0"]).unwrap().validate().is_ok());
    }
}

/// Where the Kho target sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Every request to the leader.
    Leader,
    /// Workers spread over every endpoint, round-robin.
    Any,
}

fn route_any() -> Route {
    Route::Any
}

fn workers_per_connection_default() -> usize {
    WORKERS_PER_CONNECTION_DEFAULT
}
