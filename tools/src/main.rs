//! `kho`: the one binary of Kho. `kho server` runs a node; the other commands are clients
//! of a running cluster, plus `kho demo` (a local cluster with data) and `kho config check`.
//!
//! Exit codes: 0 success; 1 an error (a gRPC status is printed as `error: <CODE>: <message>`,
//! a missing key or row as `not found`); 2 a bad command line or an invalid config.

/// `println!` that ignores a closed stdout instead of panicking: `kho demo` must go on
/// to stop its nodes even when its output pipe is gone.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr (see `say!`).
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Turns transparent huge pages off for this process and the processes it starts
/// (`prctl(PR_SET_THP_DISABLE)`), before anything much is allocated. mimalloc advises huge
/// pages on its arenas, and the kernel then backs every touched 2 MiB of them with a whole
/// huge page: a node holding 257 idle shards was 640 MiB resident with them, 116 MiB
/// without (docs/BENCHMARKS.md, "Idle shards"). RocksDB's block cache is unaffected.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of
    // ours; on a kernel without it the call fails and changes nothing.
    let r =
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r != 0 {
        eprintln!("warning: could not turn transparent huge pages off: {}", std::io::Error::last_os_error());
    }
}

/// mimalloc instead of glibc malloc: allocation was 10-12% of a node's CPU under the write
/// benchmark, much of it glibc's free-list upkeep (docs/BENCHMARKS.md). RocksDB's own C++
/// allocations are not affected.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access_cmd;
mod admin_cmd;
mod audit_cmd;
mod bench;
mod cert_cmd;
mod client;
mod data_cmd;
mod datagen;
mod demo;
mod display;
mod keys_cmd;
mod load;
mod local_cluster;
mod master_key;
mod node_config;
mod parse;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "kho", version, about = "Kho: a Raft-replicated key-value and column-family store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node until SIGINT or SIGTERM.
    Server(server::ServerArgs),
    /// Tenants (hosted databases).
    Tenant(admin_cmd::TenantCmd),
    /// Tables and their column families.
    Table(admin_cmd::TableCmd),
    /// The key-value view: one cell per key (family, empty qualifier).
    Kv(data_cmd::KvCmd),
    /// Bulk loads from CSV, JSON Lines and PostgreSQL: verified, resumable jobs
    /// (docs/MIGRATION.md).
    Load(load::cmd::LoadCmd),
    /// Rows of cells: `family:qualifier = value`.
    Row(data_cmd::RowCmd),
    /// Data shards: their ranges, replicas and leaders.
    Shard(admin_cmd::ShardCmd),
    /// Membership and Raft status.
    Cluster(admin_cmd::ClusterCmd),
    /// Per-tenant encryption keys: status, rotation, re-encryption, destruction.
    Keys(keys_cmd::KeysCmd),
    /// Prints the caller's principal as the cluster sees it.
    Whoami(access_cmd::WhoAmICmd),
    /// Bearer tokens of principals: create, list, revoke.
    Token(access_cmd::TokenCmd),
    /// Grants: read, write or admin on a tenant, table, family or qualifiers.
    Grant(access_cmd::GrantCmd),
    /// Access sessions: open one to read through a grant that requires it.
    Session(access_cmd::SessionCmd),
    /// The audit log (auditors): tail, search, verify the hash chain.
    Audit(audit_cmd::AuditCmd),
    /// Operations on single nodes (each request served by the node it reaches).
    Node(admin_cmd::NodeCmd),
    /// Starts a local cluster of real `kho server` processes and loads demo data.
    Demo(demo::DemoArgs),
    /// YCSB-style benchmark (workloads A-F) of a Kho cluster, of etcd, or of an embedded RocksDB.
    Bench(bench::BenchArgs),
    /// Kho, etcd and an embedded RocksDB side by side: starts the clusters, runs the same
    /// workloads in alternating rounds, writes a table and chart (docs/BENCHMARKS.md).
    BenchCompare(bench::compare::CompareArgs),
    /// A local certificate authority for development and tests: CA, node and client
    /// certificates, revocation (docs/SECURITY.md, "TLS").
    Cert(cert_cmd::CertCmd),
    /// Node config files.
    Config {
        #[command(subcommand)]
        op: ConfigOp,
    },
    /// Prints the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum ConfigOp {
    /// Validates a config file (with the same override flags as `kho server`) and prints
    /// the effective config, every field included.
    Check {
        file: PathBuf,
        #[command(flatten)]
        overrides: node_config::Overrides,
    },
}

/// Logging to stderr, filtered by `KHO_LOG` (tracing-subscriber env-filter syntax).
fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_env("KHO_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    // The one TLS crypto provider (ring), before anything builds a TLS configuration.
    kho_rpc::tls::install_provider();
    let cli = Cli::parse();
    init_logging(match cli.command {
        // openraft logs every election step at info; its warnings and errors are enough.
        Command::Server(_) => "info,openraft=warn",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Server(args) => return server::run(args).await,
        Command::Demo(args) => return demo::run(args).await,
        Command::Config { op: ConfigOp::Check { file, overrides } } => {
            return match node_config::load(Some(&file), &overrides) {
                Ok(c) => {
                    print!("{}", node_config::render(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Version => {
            println!("kho {} (API kho.v1)", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Cert(cmd) => cert_cmd::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Tenant(cmd) => admin_cmd::tenant(cmd).await,
        Command::Table(cmd) => admin_cmd::table(cmd).await,
        Command::Shard(cmd) => admin_cmd::shard(cmd).await,
        Command::Cluster(cmd) => admin_cmd::cluster(cmd).await,
        Command::Keys(cmd) => keys_cmd::keys(cmd).await,
        Command::Whoami(cmd) => access_cmd::whoami(cmd).await,
        Command::Token(cmd) => access_cmd::token(cmd).await,
        Command::Grant(cmd) => access_cmd::grant(cmd).await,
        Command::Session(cmd) => access_cmd::session(cmd).await,
        Command::Audit(cmd) => audit_cmd::audit(cmd).await,
        Command::Node(cmd) => admin_cmd::node(cmd).await,
        Command::Kv(cmd) => data_cmd::kv(cmd).await,
        Command::Row(cmd) => data_cmd::row(cmd).await,
        Command::Load(cmd) => load::cmd::command(cmd).await,
        Command::Bench(args) => bench::command(args).await,
        Command::BenchCompare(args) => bench::compare::command(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Prints a client command's error: a gRPC status as `error: <CODE>: <message>`, anything
/// else with its causes. Output cut short by a closed pipe (`kho kv scan | head`) is not
/// an error.
fn report(e: &anyhow::Error) -> ExitCode {
    if output_closed(e) {
        return ExitCode::SUCCESS;
    }
    match e.downcast_ref::<tonic::Status>() {
        Some(status) => {
            // A TLS node closes a plaintext client's connection at its first byte, which
            // tonic reports on the first call as `UNKNOWN: transport error` or `CANCELLED:
            // operation was canceled`, depending on timing.
            let transport = match status.code() {
                tonic::Code::Unknown | tonic::Code::Cancelled => true,
                tonic::Code::Unavailable => status.message().contains("transport error") || status.message().contains("connection"),
                _ => false,
            };
            if transport && client::PLAINTEXT_USED.load(std::sync::atomic::Ordering::Relaxed) {
                eprintln!("{} ({})", display::status_line(status), client::TLS_HINT);
            } else {
                eprintln!("{}", display::status_line(status));
            }
        }
        None => eprintln!("error: {e:#}"),
    }
    ExitCode::from(1)
}

/// Whether the error is our own output's reader going away (`kho kv scan | head`): a
/// broken pipe that is not inside a gRPC status or a transport error. A TLS node closing a
/// plaintext client's connection is a broken pipe too, but under a status: a failure.
fn output_closed(e: &anyhow::Error) -> bool {
    for cause in e.chain() {
        if cause.is::<tonic::Status>() || cause.is::<tonic::transport::Error>() {
            return false;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_a_closed_output_only_outside_a_status() {
        let pipe = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert!(output_closed(&anyhow::Error::new(pipe())));
        assert!(output_closed(&anyhow::Error::new(pipe()).context("writing the rows")));
        // What a plaintext client gets when a TLS node closes its connection.
        let status = tonic::Status::from_error(Box::new(pipe()));
        assert!(!output_closed(&anyhow::Error::new(status)));
        assert!(!output_closed(&anyhow::Error::new(std::io::Error::other("connection reset"))));
    }
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kho").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_flags() {
        let cli = parse(&[
            "server",
            "--config",
            "n.toml",
            "--node-id",
            "2",
            "--listen",
            "0.0.0.0:7002",
            "--advertise",
            "kho-2:7002",
            "--data-dir",
            "/d",
            "--initial-members",
            "1=a:7001,2=b:7002",
        ])
        .unwrap();
        let Command::Server(a) = cli.command else { panic!() };
        assert_eq!(a.config, Some(PathBuf::from("n.toml")));
        assert_eq!(a.overrides.node_id, Some(2));
        assert_eq!(a.overrides.listen_addr.as_deref(), Some("0.0.0.0:7002"));
        assert_eq!(a.overrides.advertise_addr.as_deref(), Some("kho-2:7002"));
        assert_eq!(a.overrides.initial_members.unwrap().0, ["1=a:7001", "2=b:7002"]);
        let Command::Server(a) = parse(&["server", "--initial-members", ""]).unwrap().command else { panic!() };
        assert_eq!(a.overrides.initial_members.unwrap().0, Vec::<String>::new());
        assert!(parse(&["server", "--node-id", "x"]).is_err());
        assert!(parse(&["server", "--initial-members", "1=a"]).is_err());
        assert_eq!(a.overrides.master_key_file, None);
    }

    #[test]
    fn server_master_key_flags() {
        let Command::Server(a) = parse(&["server", "--master-key-file", "/etc/kho/master.key"]).unwrap().command else { panic!() };
        assert_eq!(a.overrides.master_key_file, Some(PathBuf::from("/etc/kho/master.key")));
        let Command::Server(a) = parse(&["server", "--master-key-command", "vault kv get -field=key kho/master"]).unwrap().command else {
            panic!()
        };
        assert_eq!(a.overrides.master_key_command.as_deref(), Some("vault kv get -field=key kho/master"));
        // One key source only.
        assert!(parse(&["server", "--master-key-file", "/k", "--master-key-command", "cat /k"]).is_err());
        let Command::Config { op: ConfigOp::Check { overrides, .. } } =
            parse(&["config", "check", "n.toml", "--master-key-file", "/k"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(overrides.master_key_file, Some(PathBuf::from("/k")));
    }

    #[test]
    fn keys_and_node_flags() {
        let Command::Keys(cmd) = parse(&["keys", "status"]).unwrap().command else { panic!() };
        assert!(matches!(cmd.op, keys_cmd::KeysOp::Status { tenant: None }));
        let Command::Keys(cmd) = parse(&["keys", "rotate", "--tenant", "dan_cu", "--endpoints", "a:1"]).unwrap().command else { panic!() };
        assert_eq!(cmd.conn.endpoints.0, ["a:1"]);
        assert!(matches!(cmd.op, keys_cmd::KeysOp::Rotate { ref tenant } if tenant == "dan_cu"));
        assert!(parse(&["keys", "rotate"]).is_err());
        let Command::Keys(cmd) = parse(&["keys", "reencrypt", "--tenant", "t"]).unwrap().command else { panic!() };
        let keys_cmd::KeysOp::Reencrypt { no_wait, timeout_secs, .. } = cmd.op else { panic!() };
        assert_eq!((no_wait, timeout_secs), (false, 3600));
        let Command::Keys(cmd) = parse(&["keys", "reencrypt", "--tenant", "t", "--no-wait", "--timeout-secs", "5"]).unwrap().command else {
            panic!()
        };
        let keys_cmd::KeysOp::Reencrypt { no_wait, timeout_secs, .. } = cmd.op else { panic!() };
        assert_eq!((no_wait, timeout_secs), (true, 5));
        assert!(parse(&["keys", "reencrypt", "--tenant", "t", "--timeout-secs", "0"]).is_err());
        let Command::Keys(cmd) = parse(&["keys", "destroy", "--tenant", "t", "--version", "3"]).unwrap().command else { panic!() };
        assert!(matches!(cmd.op, keys_cmd::KeysOp::Destroy { version: 3, .. }));
        assert!(parse(&["keys", "destroy", "--tenant", "t", "--version", "-1"]).is_err());
        let Command::Node(cmd) = parse(&["node", "compact", "--endpoints", "a:1,b:2"]).unwrap().command else { panic!() };
        assert_eq!(cmd.conn.endpoints.0, ["a:1", "b:2"]);
        let admin_cmd::NodeOp::Compact { timeout_secs } = cmd.op;
        assert_eq!(timeout_secs, admin_cmd::COMPACT_TIMEOUT_SECS_DEFAULT);
    }

    #[test]
    fn tenant_encryption_and_hashed_row_keys() {
        let Command::Tenant(cmd) = parse(&["tenant", "create", "dan_cu"]).unwrap().command else { panic!() };
        let admin_cmd::TenantOp::Create { encryption, .. } = cmd.op else { panic!() };
        assert_eq!(encryption, admin_cmd::TenantEncryptionArg::Default);
        let Command::Tenant(cmd) = parse(&["tenant", "create", "ref", "--encryption", "plaintext"]).unwrap().command else { panic!() };
        let admin_cmd::TenantOp::Create { encryption, name } = cmd.op else { panic!() };
        assert_eq!((encryption, name.as_str()), (admin_cmd::TenantEncryptionArg::Plaintext, "ref"));
        assert_eq!(encryption.to_proto(), kho_proto::v1::TenantEncryption::Plaintext);
        assert!(parse(&["tenant", "create", "x", "--encryption", "yes"]).is_err());
        let cli = parse(&["table", "create", "--tenant", "t", "x", "--families", "a", "--hashed-row-keys"]).unwrap();
        let Command::Table(cmd) = cli.command else { panic!() };
        let admin_cmd::TableOp::Create { hashed_row_keys, .. } = cmd.op else { panic!() };
        assert!(hashed_row_keys);
        let cli = parse(&["table", "create", "--tenant", "t", "x", "--families", "a"]).unwrap();
        let Command::Table(cmd) = cli.command else { panic!() };
        let admin_cmd::TableOp::Create { hashed_row_keys, .. } = cmd.op else { panic!() };
        assert!(!hashed_row_keys);
    }

    #[test]
    fn endpoints_flag_anywhere_after_the_group() {
        for args in [
            &["kv", "--endpoints", "a:1,b:2", "get", "--tenant", "t", "--table", "x", "k"][..],
            &["kv", "get", "--endpoints", "a:1,b:2", "--tenant", "t", "--table", "x", "k"][..],
            &["kv", "get", "--tenant", "t", "--table", "x", "k", "--endpoints", "a:1,b:2"][..],
        ] {
            let Command::Kv(cmd) = parse(args).unwrap().command else { panic!() };
            assert_eq!(cmd.conn.endpoints.0, ["a:1", "b:2"]);
        }
        assert!(parse(&["kv", "get", "--tenant", "t", "--table", "x", "k", "--endpoints", "nope"]).is_err());
    }

    #[test]
    fn tls_flags_anywhere_after_the_group_and_the_key_argument_is_not_the_key_flag() {
        let args = ["kv", "--ca", "/ca.crt", "get", "--tenant", "t", "--table", "x", "k", "--cert", "/c.crt", "--key", "/c.key"];
        let Command::Kv(cmd) = parse(&args).unwrap().command else { panic!() };
        assert_eq!(cmd.conn.tls_ca.as_deref(), Some(std::path::Path::new("/ca.crt")));
        assert_eq!(cmd.conn.tls_cert.as_deref(), Some(std::path::Path::new("/c.crt")));
        assert_eq!(cmd.conn.tls_key.as_deref(), Some(std::path::Path::new("/c.key")));
        let Command::Kv(cmd) = parse(&["kv", "get", "--tenant", "t", "--table", "x", "k", "--cert", "/c.crt"]).unwrap().command else {
            panic!()
        };
        let e = cmd.conn.target().unwrap_err().to_string();
        assert!(e.contains("--ca"), "{e}");
    }

    #[test]
    fn row_mutate_flags_repeat() {
        let cli = parse(&[
            "row",
            "mutate",
            "--tenant",
            "dan_cu",
            "--table",
            "citizen",
            "--row",
            "001",
            "--set",
            "identity:ho_ten=Lý Thị Hà",
            "--set",
            "residence:tinh=Cần Thơ",
            "--delete",
            "residence:dia_chi",
            "--delete-row",
        ])
        .unwrap();
        let Command::Row(cmd) = cli.command else { panic!() };
        let data_cmd::RowOp::Mutate { sets, deletes, delete_row, row, .. } = cmd.op else { panic!() };
        assert_eq!(row, "001");
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1].value, "Cần Thơ");
        assert_eq!(deletes[0].qualifier, "dia_chi");
        assert!(delete_row);
        assert!(parse(&["row", "mutate", "--tenant", "t", "--table", "x", "--row", "r", "--set", "novalue"]).is_err());
    }

    #[test]
    fn scans_and_families() {
        let cli = parse(&[
            "row",
            "scan",
            "--tenant",
            "t",
            "--table",
            "x",
            "--prefix",
            "079",
            "--limit",
            "5",
            "--family",
            "identity",
            "--family",
            "residence",
        ])
        .unwrap();
        let Command::Row(cmd) = cli.command else { panic!() };
        let data_cmd::RowOp::Scan { bounds, families, .. } = cmd.op else { panic!() };
        assert_eq!(bounds.limit, 5);
        assert_eq!(bounds.prefix.as_deref(), Some("079"));
        assert_eq!(families, ["identity", "residence"]);
        let cli = parse(&["table", "create", "--tenant", "t", "x", "--families", "a,b"]).unwrap();
        let Command::Table(cmd) = cli.command else { panic!() };
        let admin_cmd::TableOp::Create { families, .. } = cmd.op else { panic!() };
        assert_eq!(families, ["a", "b"]);
        assert!(parse(&["table", "create", "--tenant", "t", "x"]).is_err());
        // The table name after --families is the name, not another family.
        let cli = parse(&["table", "create", "--tenant", "t", "--families", "a,b", "--families", "c", "x"]).unwrap();
        let Command::Table(cmd) = cli.command else { panic!() };
        let admin_cmd::TableOp::Create { families, name, .. } = cmd.op else { panic!() };
        assert_eq!((families, name.as_str()), (vec!["a".to_string(), "b".into(), "c".into()], "x"));
    }

    #[test]
    fn demo_defaults() {
        let Command::Demo(a) = parse(&["demo"]).unwrap().command else { panic!() };
        assert_eq!((a.nodes, a.rows, a.base_port, a.no_wait, a.no_encryption), (3, 1000, 7101, false, false));
        assert_eq!(a.dir, PathBuf::from("./kho-demo-data"));
        let Command::Demo(a) = parse(&["demo", "--no-encryption"]).unwrap().command else { panic!() };
        assert!(a.no_encryption);
    }
}
