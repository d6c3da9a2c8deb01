//! `kho tenant`, `kho table`, `kho cluster`: the Admin service from the command line.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kho_proto::v1::{
    AddNodeRequest, ClusterStatusRequest, ColumnFamily, CreateTableRequest, CreateTenantRequest,
    DropTableRequest, ListTablesRequest, ListTenantsRequest, RemoveNodeRequest,
};

use crate::client::{self, Timeouts};
use crate::display;
use crate::parse::{check_host_port, EndpointList};

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

fn parse_address(s: &str) -> Result<String, String> {
    check_host_port(s)?;
    Ok(s.to_string())
}

pub async fn tenant(cmd: TenantCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.endpoints, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        TenantOp::Create { name } => {
            let r = admin.create_tenant(CreateTenantRequest { name: name.clone() }).await?.into_inner();
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
    let mut admin = client::connect(&cmd.conn.endpoints, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        TableOp::Create { tenant, name, families } => {
            let families = families
                .into_iter()
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .map(|name| ColumnFamily { name })
                .collect::<Vec<_>>();
            if families.is_empty() {
                anyhow::bail!("--families: give at least one column family name");
            }
            let req = CreateTableRequest { tenant: tenant.clone(), name: name.clone(), families };
            let r = admin.create_table(req).await?.into_inner();
            writeln!(out, "created table {tenant}/{name} (revision {})", r.revision)?;
        }
        TableOp::List { tenant } => {
            let r = admin.list_tables(ListTablesRequest { tenant: tenant.unwrap_or_default() }).await?.into_inner();
            let mut rows = vec![vec!["TENANT".to_string(), "TABLE".to_string(), "FAMILIES".to_string()]];
            for t in r.tables {
                let fams: Vec<String> = t.families.into_iter().map(|f| f.name).collect();
                rows.push(vec![t.tenant, t.name, fams.join(",")]);
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
    let conn = client::connect(&cmd.conn.endpoints, Timeouts::default()).await?;
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

fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}
