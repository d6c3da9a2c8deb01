//! `kho tenant`, `kho table`, `kho shard`, `kho cluster`, `kho node`: the Admin service from
//! the command line.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use kho_proto::v1::{
    AddNodeRequest, ClusterStatusRequest, ColumnFamily, CompactNodeRequest, CreateTableRequest, CreateTenantRequest, DropTableRequest,
    ListShardsRequest, ListTablesRequest, ListTenantsRequest, MergeShardRequest, RemoveNodeRequest, ShardInfo, SplitShardRequest,
    TenantEncryption,
};
use serde::{Deserialize, Serialize};

use crate::client::{self, Timeouts};
use crate::display;
use crate::parse::{check_host_port, EndpointList};

/// Default bound of one node's `kho node compact`, seconds.
pub const COMPACT_TIMEOUT_SECS_DEFAULT: u64 = 600;
/// Largest `--timeout-secs` of `kho node compact`, seconds (one day).
pub const COMPACT_TIMEOUT_SECS_MAX: u64 = 24 * 3600;

/// Whether a new tenant's values are encrypted at rest (`kho tenant create --encryption`,
/// `kho bench --tenant-encryption`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantEncryptionArg {
    /// Encrypted when the cluster has a master key (the nodes' [encryption] config),
    /// plaintext otherwise.
    #[default]
    Default,
    /// Encrypted; refused (FAILED_PRECONDITION) when the cluster has no master key.
    Encrypted,
    /// Not encrypted (for example public reference data).
    Plaintext,
}

impl TenantEncryptionArg {
    /// The value of `CreateTenantRequest.encryption`.
    pub fn to_proto(self) -> TenantEncryption {
        match self {
            TenantEncryptionArg::Default => TenantEncryption::Default,
            TenantEncryptionArg::Encrypted => TenantEncryption::Encrypted,
            TenantEncryptionArg::Plaintext => TenantEncryption::Plaintext,
        }
    }

    /// The flag value: `default`, `encrypted`, `plaintext`.
    pub fn label(self) -> &'static str {
        match self {
            TenantEncryptionArg::Default => "default",
            TenantEncryptionArg::Encrypted => "encrypted",
            TenantEncryptionArg::Plaintext => "plaintext",
        }
    }
}

/// Where the cluster is. Shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// gRPC endpoints, tried in order until one connects.
    #[arg(
        long,
        global = true,
        env = "KHO_ENDPOINTS",
        default_value = "127.0.0.1:7001",
        value_name = "HOST:PORT,...",
        value_parser = crate::parse::parse_endpoints
    )]
    pub endpoints: EndpointList,
    /// CA certificates (PEM) the nodes' certificates chain to; with it the connection is
    /// TLS. Without it: plaintext (a cluster with `tls.plaintext = true`).
    #[arg(id = "tls_ca", long = "ca", global = true, env = "KHO_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for mutual TLS; needs --key.
    #[arg(id = "tls_cert", long = "cert", global = true, env = "KHO_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(id = "tls_key", long = "key", global = true, env = "KHO_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// A bearer token (`kho_<id>_<secret>`, from `kho token create`) sent with every
    /// request; with a client certificate too, both must name the same principal.
    #[arg(long, global = true, env = "KHO_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An access session (`kho session open`) every request is made in: needed to read
    /// through a grant that requires one.
    #[arg(long, global = true, env = "KHO_SESSION", value_name = "SESSION_ID")]
    pub session: Option<String>,
}

impl ConnArgs {
    /// The endpoints and, with --ca, the TLS files read.
    pub fn target(&self) -> anyhow::Result<client::Target> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(client::ClientTls::load(ca, self.tls_cert.as_deref(), self.tls_key.as_deref())?),
            None if self.tls_cert.is_some() || self.tls_key.is_some() => anyhow::bail!("--cert and --key need --ca (KHO_CA)"),
            None => None,
        };
        Ok(client::Target { endpoints: self.endpoints.clone(), tls, token: self.token.clone(), session: self.session.clone() })
    }
}

#[derive(Debug, Args)]
pub struct TenantCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: TenantOp,
}

#[derive(Debug, Subcommand)]
pub enum TenantOp {
    /// Creates a tenant (a hosted database).
    Create {
        /// Tenant name.
        name: String,
        /// Whether the tenant's values are encrypted at rest.
        #[arg(long, value_enum, default_value_t = TenantEncryptionArg::Default)]
        encryption: TenantEncryptionArg,
    },
    /// Lists the tenants, one per line.
    List,
}

#[derive(Debug, Args)]
pub struct TableCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: TableOp,
}

#[derive(Debug, Subcommand)]
pub enum TableOp {
    /// Creates a table with its column families.
    Create {
        #[arg(long)]
        tenant: String,
        /// Table name.
        name: String,
        /// Column families, comma-separated; the first is the key-value view's default.
        #[arg(long, value_delimiter = ',', required = true)]
        families: Vec<String>,
        /// Store a keyed hash of each row key instead of the row key (needs an encrypted
        /// tenant). Point reads and writes work as usual; scans of the table are refused.
        #[arg(long)]
        hashed_row_keys: bool,
        /// Split the new table's range into shards at these row keys (comma-separated; a
        /// table with plain row keys): each row and those after it go to the next shard.
        #[arg(long, value_delimiter = ',')]
        split_rows: Vec<String>,
        /// Split the new table's range into this many shards (2 to 64) at evenly spaced
        /// first bytes of the stored row keys (even for hashed row keys).
        #[arg(long, default_value_t = 0)]
        initial_shards: u32,
    },
    /// Lists tables (of one tenant, or of all).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Drops a table and removes its data.
    Drop {
        #[arg(long)]
        tenant: String,
        /// Table name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ShardCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: ShardOp,
}

#[derive(Debug, Subcommand)]
pub enum ShardOp {
    /// Lists the data shards (of one tenant, or of all) in key order: range, replicas,
    /// leader, term, epoch and an estimate of their size.
    List {
        /// Only this tenant's shards.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object `{"shards": [...]}` instead of a table (docs/CLI.md).
        #[arg(long)]
        json: bool,
    },
    /// Splits a shard in two, on its leader: it keeps `[start, AT)` and its id, a new shard
    /// on the same replicas takes `[AT, end)`. No data moves. Prints both shards.
    Split {
        /// The shard's id (`kho shard list`).
        #[arg(long)]
        shard: u64,
        /// The split point, printable as `kho shard list` shows keys (`t5/tb3/ruser42`): a
        /// row, table or tenant boundary strictly inside the shard's range. Without it, the
        /// row boundary nearest the middle of the shard's keys.
        #[arg(long)]
        at: Option<String>,
        /// One JSON object `{"shards": [left, right]}` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Merges a shard with its right-hand neighbour (same tenant, same replicas), on its
    /// leader: the shard keeps its id and takes both ranges. No data moves. Prints it.
    Merge {
        /// The left shard's id (`kho shard list`).
        #[arg(long)]
        shard: u64,
        /// One JSON object `{"shards": [merged]}` instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Longest wait of `kho shard split` and `kho shard merge` for their answer, seconds: the
/// node's own bound on a split or merge (30 s) and the time to reach it.
pub const SHARD_SPLIT_TIMEOUT_SECS: u64 = 40;

/// One shard in `kho shard list --json`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardJson {
    pub id: u64,
    pub tenant: String,
    pub tenant_id: u32,
    /// The range `[start, end)`, printable (docs/FORMATS.md, "Printable keys").
    pub start: String,
    pub end: String,
    /// Voter nodes.
    pub replicas: Vec<u64>,
    pub learners: Vec<u64>,
    /// 0 when no replica knows a leader.
    pub leader: u64,
    pub term: u64,
    pub epoch: EpochJson,
    pub approximate_keys: u64,
    pub approximate_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochJson {
    pub conf_ver: u64,
    pub version: u64,
}

/// The output of `kho shard list --json`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardListJson {
    pub shards: Vec<ShardJson>,
}

impl From<&ShardInfo> for ShardJson {
    fn from(s: &ShardInfo) -> Self {
        ShardJson {
            id: s.id,
            tenant: s.tenant.clone(),
            tenant_id: s.tenant_id,
            start: s.start.clone(),
            end: s.end.clone(),
            replicas: s.voters.clone(),
            learners: s.learners.clone(),
            leader: s.leader_id,
            term: s.term,
            epoch: EpochJson { conf_ver: s.epoch_conf_ver, version: s.epoch_version },
            approximate_keys: s.approximate_keys,
            approximate_bytes: s.approximate_bytes,
        }
    }
}

/// `kho shard`.
pub async fn shard(cmd: ShardCmd) -> anyhow::Result<ExitCode> {
    let timeouts = match cmd.op {
        ShardOp::Split { .. } | ShardOp::Merge { .. } => {
            Timeouts { request: Duration::from_secs(SHARD_SPLIT_TIMEOUT_SECS), ..Timeouts::default() }
        }
        _ => Timeouts::default(),
    };
    let mut admin = client::connect(&cmd.conn.target()?, timeouts).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        ShardOp::Split { shard, at, json } => {
            let r = admin.split_shard(SplitShardRequest { shard_id: shard, at: at.unwrap_or_default() }).await?.into_inner();
            let sides: Vec<ShardInfo> = [r.left, r.right].into_iter().flatten().collect();
            if json {
                let list = ShardListJson { shards: sides.iter().map(ShardJson::from).collect() };
                serde_json::to_writer(&mut out, &list)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", display::shard_list(&sides))?;
            }
        }
        ShardOp::Merge { shard, json } => {
            let r = admin.merge_shard(MergeShardRequest { shard_id: shard }).await?.into_inner();
            let merged: Vec<ShardInfo> = r.merged.into_iter().collect();
            if json {
                let list = ShardListJson { shards: merged.iter().map(ShardJson::from).collect() };
                serde_json::to_writer(&mut out, &list)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", display::shard_list(&merged))?;
            }
        }
        ShardOp::List { tenant, json } => {
            let r = admin.list_shards(ListShardsRequest { tenant: tenant.unwrap_or_default() }).await?.into_inner();
            if json {
                let list = ShardListJson { shards: r.shards.iter().map(ShardJson::from).collect() };
                serde_json::to_writer(&mut out, &list)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", display::shard_list(&r.shards))?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ClusterCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: ClusterOp,
}

#[derive(Debug, Subcommand)]
pub enum ClusterOp {
    /// Shows every member as it sees itself: role, term, log, commit and applied indexes.
    Status,
    /// Adds a node: it catches up as a learner, then becomes a voter.
    AddNode {
        #[arg(long)]
        node_id: u64,
        /// host:port the new node serves gRPC on (its advertise_addr).
        #[arg(long, value_parser = parse_address)]
        address: String,
    },
    /// Removes a node from the voters and learners.
    RemoveNode {
        #[arg(long)]
        node_id: u64,
    },
}

#[derive(Debug, Args)]
pub struct NodeCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: NodeOp,
}

#[derive(Debug, Subcommand)]
pub enum NodeOp {
    /// Flushes and compacts the storage of every node given by --endpoints, one node after
    /// the other. Each request is served by the node it reaches (never forwarded), so list
    /// every node to compact; the default is one node, 127.0.0.1:7001.
    Compact {
        /// Longest wait for one node's compaction, seconds.
        #[arg(
            long,
            default_value_t = COMPACT_TIMEOUT_SECS_DEFAULT,
            value_name = "SECONDS",
            value_parser = clap::value_parser!(u64).range(1..=COMPACT_TIMEOUT_SECS_MAX)
        )]
        timeout_secs: u64,
    },
}

fn parse_address(s: &str) -> Result<String, String> {
    check_host_port(s)?;
    Ok(s.to_string())
}

pub async fn tenant(cmd: TenantCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        TenantOp::Create { name, encryption } => {
            let req = CreateTenantRequest { name: name.clone(), encryption: encryption.to_proto() as i32 };
            let r = admin.create_tenant(req).await?.into_inner();
            writeln!(out, "created tenant {name} (revision {})", r.revision)?;
        }
        TenantOp::List => {
            let r = admin.list_tenants(ListTenantsRequest {}).await?.into_inner();
            for t in r.tenants {
                writeln!(out, "{t}")?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn table(cmd: TableCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        TableOp::Create { tenant, name, families, hashed_row_keys, split_rows, initial_shards } => {
            let families = families
                .into_iter()
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .map(|name| ColumnFamily { name })
                .collect::<Vec<_>>();
            if families.is_empty() {
                anyhow::bail!("--families: give at least one column family name");
            }
            let split_rows = split_rows.into_iter().map(String::into_bytes).collect();
            let req =
                CreateTableRequest { tenant: tenant.clone(), name: name.clone(), families, hashed_row_keys, split_rows, initial_shards };
            let r = admin.create_table(req).await?.into_inner();
            let how = if hashed_row_keys { " with hashed row keys" } else { "" };
            writeln!(out, "created table {tenant}/{name}{how} (revision {})", r.revision)?;
            if !r.shards.is_empty() {
                writeln!(out, "split into {} shards:", r.shards.len())?;
                write!(out, "{}", display::shard_list(&r.shards))?;
            }
        }
        TableOp::List { tenant } => {
            let r = admin.list_tables(ListTablesRequest { tenant: tenant.unwrap_or_default() }).await?.into_inner();
            let header = ["TENANT", "TABLE", "FAMILIES", "HASHED ROW KEYS"];
            let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            for t in r.tables {
                let fams: Vec<String> = t.families.into_iter().map(|f| f.name).collect();
                let hashed = if t.hashed_row_keys { "yes" } else { "no" };
                rows.push(vec![t.tenant, t.name, fams.join(","), hashed.to_string()]);
            }
            write!(out, "{}", display::columns(&rows))?;
        }
        TableOp::Drop { tenant, name } => {
            let r = admin.drop_table(DropTableRequest { tenant: tenant.clone(), name: name.clone() }).await?.into_inner();
            writeln!(out, "dropped table {tenant}/{name} (revision {})", r.revision)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let conn = client::connect(&cmd.conn.target()?, Timeouts::default()).await?;
    let mut admin = conn.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        ClusterOp::Status => {
            let r = admin.cluster_status(ClusterStatusRequest {}).await?.into_inner();
            writeln!(out, "asked: {}", conn.endpoint)?;
            write!(out, "{}", display::cluster_status(&r))?;
        }
        ClusterOp::AddNode { node_id, address } => {
            let r = admin.add_node(AddNodeRequest { node_id, address: address.clone() }).await?.into_inner();
            writeln!(out, "added node {node_id} ({address}); voters: {}", list(&r.voters))?;
        }
        ClusterOp::RemoveNode { node_id } => {
            let r = admin.remove_node(RemoveNodeRequest { node_id }).await?.into_inner();
            writeln!(out, "removed node {node_id}; voters: {}", list(&r.voters))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `kho node compact`: CompactNode on each endpoint in turn, each on its own connection (the
/// request is never forwarded, so one connection per node is the only way to reach them
/// all). One node at a time: a compaction is heavy on the disk, and the other nodes keep
/// the cluster serving meanwhile. A node that fails does not stop the others; the exit
/// code is 1 if any failed.
pub async fn node(cmd: NodeCmd) -> anyhow::Result<ExitCode> {
    let NodeOp::Compact { timeout_secs } = cmd.op;
    let timeouts = Timeouts { connect: client::CONNECT_TIMEOUT, request: Duration::from_secs(timeout_secs) };
    let mut failed = 0usize;
    let target = cmd.conn.target()?;
    for ep in &target.endpoints.0 {
        let started = Instant::now();
        let result = async {
            let one = client::Target { endpoints: EndpointList(vec![ep.clone()]), ..target.clone() };
            let conn = client::connect(&one, timeouts).await?;
            let r = conn.admin().compact_node(CompactNodeRequest {}).await?.into_inner();
            anyhow::Ok(r.node_id)
        }
        .await;
        match result {
            Ok(node_id) => {
                let secs = started.elapsed().as_secs_f64();
                writeln!(std::io::stdout(), "node {node_id} ({ep}): compacted in {secs:.1} s")?;
            }
            Err(e) => {
                failed += 1;
                match e.downcast_ref::<tonic::Status>() {
                    Some(s) => say_err!("error: {ep}: {}: {}", display::code_name(s.code()), s.message()),
                    None => say_err!("error: {ep}: {e:#}"),
                }
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}
