//! The node configuration as `kho server` and `kho config check` see it: the TOML file
//! (or the defaults), then the command-line flags on top, then `Config::validate`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use kho_rpc::config::{AuthConfig, ConfigError, EncryptionConfig, Limits, RaftConfig, ShardingConfig, TlsConfig};
use kho_rpc::Config;

use crate::parse::{parse_members, MemberList};

/// Flags that override fields of the config file. Each flag overrides exactly one field,
/// except the two master key flags: each chooses the key source, so it also clears the
/// other source of the file (at most one may be set).
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Overrides `node_id`.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Overrides `listen_addr` (ip:port the gRPC server binds).
    #[arg(long = "listen", value_name = "IP:PORT")]
    pub listen_addr: Option<String>,
    /// Overrides `advertise_addr` (host:port clients use to reach this node).
    #[arg(long = "advertise", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,
    /// Overrides `peer_listen_addr` (ip:port the peer listener binds).
    #[arg(long = "peer-listen", value_name = "IP:PORT")]
    pub peer_listen_addr: Option<String>,
    /// Overrides `peer_advertise_addr` (host:port other nodes use to reach this node).
    #[arg(long = "peer-advertise", value_name = "HOST:PORT")]
    pub peer_advertise_addr: Option<String>,
    /// Overrides `peer_source_ip` (source IP of connections to other nodes).
    #[arg(long, value_name = "IP")]
    pub peer_source_ip: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Overrides `initial_members`: `1=127.0.0.1:7001,2=127.0.0.1:7002,...`; an empty
    /// string clears the list (a node that joins an existing cluster).
    #[arg(long, value_name = "ID=HOST:PORT,...", value_parser = parse_members)]
    pub initial_members: Option<MemberList>,
    /// Overrides `encryption.master_key_file` (64 hex characters; no group or other
    /// access) and clears `encryption.master_key_command`.
    #[arg(long, value_name = "PATH", conflicts_with = "master_key_command")]
    pub master_key_file: Option<PathBuf>,
    /// Overrides `encryption.master_key_command` (run with `sh -c`; prints the key as 64
    /// hex characters) and clears `encryption.master_key_file`.
    #[arg(long, value_name = "CMD")]
    pub master_key_command: Option<String>,
}

impl Overrides {
    /// The config with every given flag replacing its field; other fields are untouched.
    pub fn apply(&self, mut c: Config) -> Config {
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = &self.listen_addr {
            c.listen_addr = v.clone();
        }
        if let Some(v) = &self.advertise_addr {
            c.advertise_addr = Some(v.clone());
        }
        if let Some(v) = &self.peer_listen_addr {
            c.peer_listen_addr = v.clone();
        }
        if let Some(v) = &self.peer_advertise_addr {
            c.peer_advertise_addr = Some(v.clone());
        }
        if let Some(v) = &self.peer_source_ip {
            c.peer_source_ip = Some(v.clone());
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.initial_members {
            c.initial_members = v.0.clone();
        }
        if let Some(v) = &self.master_key_file {
            c.encryption.master_key_file = Some(v.clone());
            c.encryption.master_key_command = None;
        }
        if let Some(v) = &self.master_key_command {
            c.encryption.master_key_command = Some(v.clone());
            c.encryption.master_key_file = None;
        }
        c
    }
}

/// Reads the file (or starts from the defaults), applies the flags and validates.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let base = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let config = overrides.apply(base);
    config.validate()?;
    Ok(config)
}

/// Quotes a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The config as TOML, every field written out (defaults included), in the order of
/// docs/CONFIG.md. Reading the text back gives the same config.
///
/// The structs are destructured without `..` on purpose: a field added to the config
/// does not compile here until it is printed (and documented in docs/CONFIG.md).
pub fn render(c: &Config) -> String {
    let Config {
        node_id,
        listen_addr,
        advertise_addr,
        peer_listen_addr,
        peer_advertise_addr,
        peer_source_ip,
        data_dir,
        initial_members,
        raft,
        limits,
        encryption,
        sharding,
        tls,
        auth,
    } = c;
    let RaftConfig {
        heartbeat_interval_ms,
        election_timeout_min_ms,
        election_timeout_max_ms,
        snapshot_logs_since_last,
        logs_to_keep_after_snapshot,
        snapshot_chunk_bytes,
        append_entries_max,
        rpc_timeout_ms,
        snapshot_timeout_ms,
        proposal_timeout_ms,
        follower_reads,
        sleep_after_idle_ms,
    } = raft;
    let Limits {
        key_bytes_max,
        qualifier_bytes_max,
        value_bytes_max,
        batch_ops_max,
        batch_bytes_max,
        scan_limit_max,
        grpc_message_bytes_max,
        concurrent_requests_max,
        node_requests_max,
        read_threads,
        scan_threads,
        read_queue_max,
        scan_stall_timeout_ms,
        scan_duration_max_ms,
    } = limits;
    let EncryptionConfig { master_key_file, master_key_command } = encryption;
    let ShardingConfig { split_size_bytes, merge_size_bytes, auto_merge, split_merge_interval_ms, check_interval_ms } = sharding;
    let TlsConfig { ca_file, cert_file, key_file, crl_file, client_ca_file, client_cert_required, reload_interval_ms, plaintext } = tls;
    let mut o = String::new();
    let _ = writeln!(o, "node_id = {node_id}");
    let _ = writeln!(o, "listen_addr = {}", toml_str(listen_addr));
    match advertise_addr {
        Some(a) => {
            let _ = writeln!(o, "advertise_addr = {}", toml_str(a));
        }
        None => {
            let _ = writeln!(o, "# advertise_addr is not set: clients use listen_addr");
        }
    }
    let _ = writeln!(o, "peer_listen_addr = {}", toml_str(peer_listen_addr));
    match peer_advertise_addr {
        Some(a) => {
            let _ = writeln!(o, "peer_advertise_addr = {}", toml_str(a));
        }
        None => {
            let _ = writeln!(o, "# peer_advertise_addr is not set: other nodes use peer_listen_addr");
        }
    }
    match peer_source_ip {
        Some(ip) => {
            let _ = writeln!(o, "peer_source_ip = {}", toml_str(ip));
        }
        None => {
            let _ = writeln!(o, "# peer_source_ip is not set: the OS picks the source of connections to peers");
        }
    }
    let _ = writeln!(o, "data_dir = {}", toml_str(&data_dir.to_string_lossy()));
    let members: Vec<String> = initial_members.iter().map(|m| toml_str(m)).collect();
    let _ = writeln!(o, "initial_members = [{}]", members.join(", "));
    let _ = writeln!(o, "\n[raft]");
    let _ = writeln!(o, "heartbeat_interval_ms = {heartbeat_interval_ms}");
    let _ = writeln!(o, "election_timeout_min_ms = {election_timeout_min_ms}");
    let _ = writeln!(o, "election_timeout_max_ms = {election_timeout_max_ms}");
    let _ = writeln!(o, "snapshot_logs_since_last = {snapshot_logs_since_last}");
    let _ = writeln!(o, "logs_to_keep_after_snapshot = {logs_to_keep_after_snapshot}");
    let _ = writeln!(o, "snapshot_chunk_bytes = {snapshot_chunk_bytes}");
    let _ = writeln!(o, "append_entries_max = {append_entries_max}");
    let _ = writeln!(o, "rpc_timeout_ms = {rpc_timeout_ms}");
    let _ = writeln!(o, "snapshot_timeout_ms = {snapshot_timeout_ms}");
    let _ = writeln!(o, "proposal_timeout_ms = {proposal_timeout_ms}");
    let _ = writeln!(o, "follower_reads = {follower_reads}");
    let _ = writeln!(o, "sleep_after_idle_ms = {sleep_after_idle_ms}");
    let _ = writeln!(o, "\n[limits]");
    let _ = writeln!(o, "key_bytes_max = {key_bytes_max}");
    let _ = writeln!(o, "qualifier_bytes_max = {qualifier_bytes_max}");
    let _ = writeln!(o, "value_bytes_max = {value_bytes_max}");
    let _ = writeln!(o, "batch_ops_max = {batch_ops_max}");
    let _ = writeln!(o, "batch_bytes_max = {batch_bytes_max}");
    let _ = writeln!(o, "scan_limit_max = {scan_limit_max}");
    let _ = writeln!(o, "grpc_message_bytes_max = {grpc_message_bytes_max}");
    let _ = writeln!(o, "concurrent_requests_max = {concurrent_requests_max}");
    let _ = writeln!(o, "node_requests_max = {node_requests_max}");
    let _ = writeln!(o, "read_threads = {read_threads}");
    let _ = writeln!(o, "scan_threads = {scan_threads}");
    let _ = writeln!(o, "read_queue_max = {read_queue_max}");
    let _ = writeln!(o, "scan_stall_timeout_ms = {scan_stall_timeout_ms}");
    let _ = writeln!(o, "scan_duration_max_ms = {scan_duration_max_ms}");
    let _ = writeln!(o, "\n[encryption]");
    if master_key_file.is_none() && master_key_command.is_none() {
        let _ = writeln!(o, "# no master key: data, Raft log entries and snapshots are stored in plaintext");
    }
    match master_key_file {
        Some(p) => {
            let _ = writeln!(o, "master_key_file = {}", toml_str(&p.to_string_lossy()));
        }
        None => {
            let _ = writeln!(o, "# master_key_file is not set");
        }
    }
    match master_key_command {
        Some(cmd) => {
            let _ = writeln!(o, "master_key_command = {}", toml_str(cmd));
        }
        None => {
            let _ = writeln!(o, "# master_key_command is not set");
        }
    }
    let _ = writeln!(o, "\n[sharding]");
    let _ = writeln!(o, "split_size_bytes = {split_size_bytes}");
    let _ = writeln!(o, "merge_size_bytes = {merge_size_bytes}");
    let _ = writeln!(o, "auto_merge = {auto_merge}");
    let _ = writeln!(o, "split_merge_interval_ms = {split_merge_interval_ms}");
    let _ = writeln!(o, "check_interval_ms = {check_interval_ms}");
    let _ = writeln!(o, "\n[tls]");
    if *plaintext {
        let _ = writeln!(o, "# plaintext: no TLS and no authentication of nodes (tests and development only)");
    }
    for (name, v) in
        [("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file), ("crl_file", crl_file), ("client_ca_file", client_ca_file)]
    {
        match v {
            Some(p) => {
                let _ = writeln!(o, "{name} = {}", toml_str(&p.to_string_lossy()));
            }
            None => {
                let _ = writeln!(o, "# {name} is not set");
            }
        }
    }
    let _ = writeln!(o, "client_cert_required = {client_cert_required}");
    let _ = writeln!(o, "reload_interval_ms = {reload_interval_ms}");
    let _ = writeln!(o, "plaintext = {plaintext}");
    let AuthConfig { enabled, cluster_admins, auditors } = auth;
    let _ = writeln!(o, "\n[auth]");
    if !*enabled {
        let _ = writeln!(o, "# authorization off: every caller is a cluster admin (development only)");
    }
    let _ = writeln!(o, "enabled = {enabled}");
    let admins: Vec<String> = cluster_admins.iter().map(|a| toml_str(a)).collect();
    let _ = writeln!(o, "cluster_admins = [{}]", admins.join(", "));
    let auditors: Vec<String> = auditors.iter().map(|a| toml_str(a)).collect();
    let _ = writeln!(o, "auditors = [{}]", auditors.join(", "));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
node_id = 1
listen_addr = "127.0.0.1:7001"
peer_listen_addr = "127.0.0.1:7101"
data_dir = "/var/lib/kho"
initial_members = ["1=127.0.0.1:7101", "2=127.0.0.1:7102"]
[raft]
heartbeat_interval_ms = 50
[tls]
plaintext = true
"#;

    #[test]
    fn flags_override_only_their_fields() {
        let base = Config::from_toml(FILE).unwrap();
        let o = Overrides {
            node_id: Some(2),
            listen_addr: Some("0.0.0.0:7002".into()),
            advertise_addr: Some("node-2.dc1:7002".into()),
            peer_listen_addr: Some("0.0.0.0:7102".into()),
            peer_advertise_addr: Some("node-2.dc1:7102".into()),
            peer_source_ip: Some("10.0.0.2".into()),
            data_dir: None,
            initial_members: None,
            master_key_file: None,
            master_key_command: None,
        };
        let c = o.apply(base);
        assert_eq!(c.node_id, 2);
        assert_eq!(c.listen_addr, "0.0.0.0:7002");
        assert_eq!(c.advertise_addr(), "node-2.dc1:7002");
        assert_eq!(c.peer_source_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/kho"));
        assert_eq!(c.initial_members.len(), 2);
        assert_eq!(c.raft.heartbeat_interval_ms, 50);
        assert_eq!(c.encryption.master_key_file, None);
        c.validate().unwrap();
    }

    #[test]
    fn a_master_key_flag_replaces_the_key_source_of_the_file() {
        let file = format!("{FILE}[encryption]\nmaster_key_command = \"cat /run/kho/key\"\n");
        let base = Config::from_toml(&file).unwrap();
        assert_eq!(base.encryption.master_key_command.as_deref(), Some("cat /run/kho/key"));
        let o = Overrides { master_key_file: Some("/etc/kho/master.key".into()), ..Overrides::default() };
        let c = o.apply(base.clone());
        assert_eq!(c.encryption.master_key_file, Some(PathBuf::from("/etc/kho/master.key")));
        assert_eq!(c.encryption.master_key_command, None);
        let o = Overrides { master_key_command: Some("vault kv get -field=key kho/master".into()), ..Overrides::default() };
        let c = o.apply(Config::from_toml(&format!("{FILE}[encryption]\nmaster_key_file = \"/k\"\n")).unwrap());
        assert_eq!(c.encryption.master_key_command.as_deref(), Some("vault kv get -field=key kho/master"));
        assert_eq!(c.encryption.master_key_file, None);
        // Without the flags, the file's source stays.
        let c = Overrides::default().apply(base);
        assert_eq!(c.encryption.master_key_command.as_deref(), Some("cat /run/kho/key"));
    }

    #[test]
    fn no_flags_keep_the_file() {
        let c = Overrides::default().apply(Config::from_toml(FILE).unwrap());
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::from_toml(FILE).unwrap()));
    }

    #[test]
    fn empty_member_list_clears_the_file_list() {
        let o = Overrides { initial_members: Some(MemberList(vec![])), ..Overrides::default() };
        let c = o.apply(Config::from_toml(FILE).unwrap());
        assert!(c.initial_members.is_empty());
    }

    #[test]
    fn load_without_file_uses_defaults_and_flags() {
        let e = load(None, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("node_id"), "{e}");
        let o = Overrides { node_id: Some(7), ..Overrides::default() };
        let e = load(None, &o).unwrap_err().to_string();
        assert!(e.contains("peer_listen_addr"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.toml");
        std::fs::write(&path, "peer_listen_addr = \"127.0.0.1:7101\"\n[tls]\nplaintext = true\n").unwrap();
        let c = load(Some(&path), &o).unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listen_addr, Config::default().listen_addr);
    }

    #[test]
    fn load_names_the_bad_field_after_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, FILE).unwrap();
        // Node 3 is not in the file's initial_members.
        let o = Overrides { node_id: Some(3), ..Overrides::default() };
        let e = load(Some(&path), &o).unwrap_err().to_string();
        assert!(e.contains("initial_members"), "{e}");
        let o = Overrides { listen_addr: Some("localhost".into()), ..Overrides::default() };
        let e = load(Some(&path), &o).unwrap_err().to_string();
        assert!(e.contains("listen_addr"), "{e}");
        let e = load(Some(&dir.path().join("missing.toml")), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn render_round_trips() {
        let with_file = format!("{FILE}[encryption]\nmaster_key_file = \"/etc/kho/master key\"\n");
        let with_command = format!("{FILE}[encryption]\nmaster_key_command = \"sh -c 'cat \\\"/k\\\"'\"\n");
        for text in [
            FILE,
            "node_id = 4\nadvertise_addr = \"kho-4.example:7001\"\ndata_dir = 'C:\\kho \"x\"'\n[tls]\nca_file = '/etc/kho/ca.crt'\ncert_file = 'n.crt'\nkey_file = 'n.key'\ncrl_file = 'c.crl'",
            with_file.as_str(),
            with_command.as_str(),
        ] {
            let c = Config::from_toml(text).unwrap();
            let out = render(&c);
            let back = Config::from_toml(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
            assert_eq!(format!("{back:?}"), format!("{c:?}"), "{out}");
            assert!(out.contains("\n[encryption]\n"), "{out}");
        }
        let c = Config::from_toml(&with_file).unwrap();
        assert!(render(&c).contains("master_key_file = \"/etc/kho/master key\"\n"), "{}", render(&c));
        assert!(render(&Config::from_toml(FILE).unwrap()).contains("# no master key"));
    }
}
