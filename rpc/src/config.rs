//! The node configuration: one TOML file per node, every field with a default and a unit,
//! validated at start-up with a message that names the field. Documented in docs/CONFIG.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// A configuration error names the field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

/// Everything a `kho server` process needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id; unique in the cluster, never reused. Required, > 0.
    pub node_id: u64,
    /// Address the client listener binds (the Data and Admin services, health,
    /// reflection). Default `127.0.0.1:7001`.
    pub listen_addr: String,
    /// Address clients use to reach this node, as `kho cluster status` shows it. Default:
    /// `listen_addr`.
    pub advertise_addr: Option<String>,
    /// Address the peer listener binds: Raft messages and requests forwarded by other
    /// nodes, mutual TLS with node certificates only. Required; never the same port as
    /// `listen_addr`.
    pub peer_listen_addr: String,
    /// Address other nodes use to reach this node's peer listener; the address in the
    /// cluster's membership and in `initial_members`. Default: `peer_listen_addr`.
    pub peer_advertise_addr: Option<String>,
    /// Source IP of this node's outgoing connections to other nodes (Raft messages and
    /// forwarded requests). Default: none, the operating system picks it. Set it on a
    /// multi-homed host so that peers and firewalls see the node by one address.
    pub peer_source_ip: Option<String>,
    /// Directory of this node's RocksDB and snapshot files. Default `./kho-data`.
    pub data_dir: PathBuf,
    /// Members of a new cluster, `"id=host:port"`. Every member of a new cluster is started
    /// with the same list; a fresh node bootstraps the cluster with it. Empty on a node that
    /// joins an existing cluster (`kho cluster add-node`). Ignored once the node has state.
    pub initial_members: Vec<String>,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub encryption: EncryptionConfig,
    pub sharding: ShardingConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

/// Who may do what (docs/SECURITY.md, "Principals and grants").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every request must name a principal (a client certificate or a token) that holds a
    /// grant for it. Default true. `false` makes every caller a cluster admin, without
    /// credentials: for development only; the node logs a warning at start.
    pub enabled: bool,
    /// Users that are cluster admins by configuration (the same list on every node):
    /// they may do everything, including granting. Default: none.
    pub cluster_admins: Vec<String>,
    /// Users that may read the audit log (`ReadAudit`, `kho audit`). Being a cluster
    /// admin does not make one an auditor. Default: none.
    pub auditors: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { enabled: true, cluster_admins: Vec::new(), auditors: Vec::new() }
    }
}

/// TLS of both listeners and of the connections between nodes (docs/SECURITY.md, "TLS").
/// Either the three files, or `plaintext = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA certificates (PEM) that node certificates, and client certificates unless
    /// `client_ca_file` is set, must chain to.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate (PEM, leaf first), with the URI SAN `kho://node/<node_id>`
    /// and the node's host names and addresses as DNS and IP SANs.
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM). Keep it readable by the node's user only (the node
    /// does not check the file's mode).
    pub key_file: Option<PathBuf>,
    /// Certificate revocation lists (PEM). Optional.
    pub crl_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to, if not `ca_file`.
    pub client_ca_file: Option<PathBuf>,
    /// Clients must present a certificate (mutual TLS on the client listener). Default
    /// false: a certificate is optional.
    pub client_cert_required: bool,
    /// How often the files are read again; a change of content reloads them, milliseconds.
    /// Default 10000.
    pub reload_interval_ms: u64,
    /// Serve both listeners and connect to other nodes without TLS and without any
    /// authentication of nodes. Default false. For tests and development only; the node
    /// logs a warning at start.
    pub plaintext: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            cert_file: None,
            key_file: None,
            crl_file: None,
            client_ca_file: None,
            client_cert_required: false,
            reload_interval_ms: 10_000,
            plaintext: false,
        }
    }
}

impl TlsConfig {
    /// The files, or `None` with `plaintext` (after `Config::validate`).
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        if self.plaintext {
            return None;
        }
        Some(crate::tls::TlsFiles {
            ca: self.ca_file.clone()?,
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            crl: self.crl_file.clone(),
            client_ca: self.client_ca_file.clone(),
        })
    }
}

/// Automatic splits and merges of data shards (docs/SHARDING.md, "Split and merge").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardingConfig {
    /// A shard whose size (RocksDB's estimate) passes it is split at its middle key, bytes.
    /// Default 268435456 (256 MiB, TiKV's default); 0: never automatically.
    pub split_size_bytes: u64,
    /// Two adjacent shards on the same replicas, each smaller than it, are merged, bytes.
    /// Default 20971520 (20 MiB, TiKV's `max-merge-region-size`); 0: only empty shards
    /// merge. At most a quarter of `split_size_bytes`, so a merge is never split again.
    pub merge_size_bytes: u64,
    /// Whether shards merge automatically. Default true.
    pub auto_merge: bool,
    /// How long after a shard split, merged or opened on the node it is not merged
    /// automatically, milliseconds. Default 3600000 (1 h, PD's `split-merge-interval`).
    pub split_merge_interval_ms: u64,
    /// How often each node looks at the sizes of the shards it leads, milliseconds.
    /// Default 5000.
    pub check_interval_ms: u64,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        let d = kho_raft::shard_size::ShardingSettings::default();
        ShardingConfig {
            split_size_bytes: d.split_size_bytes,
            merge_size_bytes: d.merge_size_bytes,
            auto_merge: d.auto_merge,
            split_merge_interval_ms: d.split_merge_interval_ms,
            check_interval_ms: d.check_interval_ms,
        }
    }
}

/// Where the cluster's master key comes from (docs/SECURITY.md). Neither: no encryption.
/// Every node of a cluster must get the same key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// A file holding the key as 64 hex digits; it must not be readable by group or others.
    pub master_key_file: Option<PathBuf>,
    /// A command run with `sh -c` that prints the key as 64 hex digits (an HSM or KMS client).
    /// It must finish within 10 s.
    pub master_key_command: Option<String>,
}

/// Raft timing and log retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat interval, milliseconds. Default 100.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout, milliseconds. Default 800.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, milliseconds. Default 1600.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one. Default 100000, as
    /// etcd's `--snapshot-count`.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind the last snapshot, for slow followers. Default 5000.
    pub logs_to_keep_after_snapshot: u64,
    /// Largest chunk of a snapshot stream, bytes (before compression). Default 1048576,
    /// at most 33554432 (32 MiB).
    pub snapshot_chunk_bytes: u64,
    /// Most entries in one append-entries message. Default 1000.
    pub append_entries_max: u64,
    /// Timeout of one append-entries or vote message, milliseconds. Default 2000.
    pub rpc_timeout_ms: u64,
    /// Timeout of one whole snapshot transfer, milliseconds. Default 600000.
    pub snapshot_timeout_ms: u64,
    /// How long a client write or linearizable read waits for a quorum before it is
    /// answered UNAVAILABLE, milliseconds. Default 5000.
    pub proposal_timeout_ms: u64,
    /// Serve linearizable reads on followers (a read index from the leader, then the local
    /// apply wait) instead of forwarding them to the leader. Default true.
    pub follower_reads: bool,
    /// How long a data shard's leader waits with no new log entry before the shard sleeps
    /// (no heartbeats, no election timers until something wakes it), milliseconds; 0: shards
    /// never sleep. Default 2000.
    pub sleep_after_idle_ms: u64,
}

/// Limits on client requests, checked before anything reaches Raft.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest key or row key, bytes. Default 4096.
    pub key_bytes_max: u64,
    /// Largest qualifier, bytes. Default 4096.
    pub qualifier_bytes_max: u64,
    /// Largest value, bytes. Default 1048576 (1 MiB).
    pub value_bytes_max: u64,
    /// Most operations in one Write, MutateRow or BatchGet. Default 1000.
    pub batch_ops_max: u64,
    /// Largest total of keys and values in one Write or MutateRow, bytes. Default 8388608.
    pub batch_bytes_max: u64,
    /// Most pairs or rows one Scan or ScanRows returns. Default 10000.
    pub scan_limit_max: u64,
    /// Largest encoded gRPC message the server accepts, bytes. Default 16777216.
    pub grpc_message_bytes_max: u64,
    /// Most requests served at once on one client connection (others on it wait), count.
    /// Default 1024.
    pub concurrent_requests_max: u64,
    /// Most client requests (Data and Admin services) the node serves at once, over all
    /// connections; a stream counts until it ends. One more is answered RESOURCE_EXHAUSTED
    /// at once. Raft traffic between nodes and health checks are not counted. Default 4096.
    pub node_requests_max: u64,
    /// Threads that serve client reads needing the disk (point reads that miss the memory,
    /// BatchGet, ReadRow), count. Raft's own disk work never waits for them. Default 16.
    pub read_threads: u64,
    /// Threads that serve scans (Scan, ScanRows), count: a scan holds one until it ends or
    /// its client stalls. Further scans wait in the queue. Default 16.
    pub scan_threads: u64,
    /// Most reads and scans waiting for a thread, count (per pool); one more is answered
    /// RESOURCE_EXHAUSTED. Default 4096.
    pub read_queue_max: u64,
    /// A scan whose client has not taken a chunk for this long ends with DEADLINE_EXCEEDED
    /// and frees its thread and its point-in-time view, milliseconds. Default 30000.
    pub scan_stall_timeout_ms: u64,
    /// A scan still sending after this long ends with DEADLINE_EXCEEDED and frees its
    /// thread, however its client reads, milliseconds. Default 120000.
    pub scan_duration_max_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 0,
            listen_addr: "127.0.0.1:7001".to_string(),
            advertise_addr: None,
            peer_listen_addr: String::new(),
            peer_advertise_addr: None,
            peer_source_ip: None,
            data_dir: PathBuf::from("./kho-data"),
            initial_members: Vec::new(),
            raft: RaftConfig::default(),
            limits: Limits::default(),
            encryption: EncryptionConfig::default(),
            sharding: ShardingConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1600,
            snapshot_logs_since_last: 100_000,
            logs_to_keep_after_snapshot: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            append_entries_max: 1_000,
            rpc_timeout_ms: 2_000,
            snapshot_timeout_ms: 600_000,
            proposal_timeout_ms: 5_000,
            follower_reads: true,
            sleep_after_idle_ms: 2_000,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            qualifier_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            batch_ops_max: 1000,
            batch_bytes_max: 8 << 20,
            scan_limit_max: 10_000,
            grpc_message_bytes_max: 16 << 20,
            concurrent_requests_max: 1024,
            node_requests_max: 4096,
            read_threads: 16,
            scan_threads: 16,
            read_queue_max: 4096,
            scan_stall_timeout_ms: 30_000,
            scan_duration_max_ms: 120_000,
        }
    }
}

impl Config {
    /// The Raft settings of this config.
    pub fn raft_settings(&self) -> kho_raft::RaftSettings {
        let r = &self.raft;
        kho_raft::RaftSettings {
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            election_timeout_min_ms: r.election_timeout_min_ms,
            election_timeout_max_ms: r.election_timeout_max_ms,
            snapshot_logs_since_last: r.snapshot_logs_since_last,
            logs_to_keep_after_snapshot: r.logs_to_keep_after_snapshot,
            snapshot_chunk_bytes: r.snapshot_chunk_bytes,
            append_entries_max: r.append_entries_max,
            // Half the message limit: room for the message's own fields and a large entry.
            append_bytes_max: self.limits.grpc_message_bytes_max / 2,
            rpc_timeout_ms: r.rpc_timeout_ms,
            snapshot_timeout_ms: r.snapshot_timeout_ms,
            follower_reads: r.follower_reads,
            sleep_after_idle_ms: r.sleep_after_idle_ms,
            sharding: kho_raft::shard_size::ShardingSettings {
                split_size_bytes: self.sharding.split_size_bytes,
                merge_size_bytes: self.sharding.merge_size_bytes,
                auto_merge: self.sharding.auto_merge,
                split_merge_interval_ms: self.sharding.split_merge_interval_ms,
                check_interval_ms: self.sharding.check_interval_ms,
            },
        }
    }

    /// Reads a TOML file; unknown fields are errors.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::File { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::File { reason, .. } => ConfigError::File { path: path.display().to_string(), reason },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File { path: String::new(), reason: e.to_string() })
    }

    /// The address clients use for this node.
    pub fn advertise_addr(&self) -> &str {
        self.advertise_addr.as_deref().unwrap_or(&self.listen_addr)
    }

    /// The address other nodes use for this node (its address in the membership).
    pub fn peer_advertise_addr(&self) -> &str {
        self.peer_advertise_addr.as_deref().unwrap_or(&self.peer_listen_addr)
    }

    /// The parsed `peer_source_ip`.
    pub fn peer_source_ip(&self) -> Result<Option<std::net::IpAddr>, ConfigError> {
        match &self.peer_source_ip {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|e| invalid("peer_source_ip", format!("`{s}` is not an IP address ({e})"))),
        }
    }

    /// Parses `initial_members` into id → address.
    pub fn initial_members(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        let mut members = BTreeMap::new();
        for m in &self.initial_members {
            let (id, addr) =
                m.split_once('=').ok_or_else(|| invalid("initial_members", format!("`{m}` is not of the form id=host:port")))?;
            let id: u64 = id.trim().parse().map_err(|_| invalid("initial_members", format!("`{m}`: node id is not a number")))?;
            if id == 0 {
                return Err(invalid("initial_members", format!("`{m}`: node id must be > 0")));
            }
            check_host_port("initial_members", addr.trim())?;
            if members.insert(id, addr.trim().to_string()).is_some() {
                return Err(invalid("initial_members", format!("node id {id} appears twice")));
            }
        }
        Ok(members)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be set to a number > 0"));
        }
        for a in &self.auth.cluster_admins {
            kho_raft::access::check_principal("auth.cluster_admins", a).map_err(|e| invalid("auth.cluster_admins", e.message))?;
        }
        for a in &self.auth.auditors {
            kho_raft::access::check_principal("auth.auditors", a).map_err(|e| invalid("auth.auditors", e.message))?;
        }
        self.listen_addr
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen_addr", format!("`{}` is not ip:port ({e})", self.listen_addr)))?;
        if let Some(a) = &self.advertise_addr {
            check_host_port("advertise_addr", a)?;
        }
        if self.peer_listen_addr.is_empty() {
            return Err(invalid(
                "peer_listen_addr",
                "must be set: the ip:port other nodes connect to (Raft messages, forwarded requests), not listen_addr's port",
            ));
        }
        let peer = self
            .peer_listen_addr
            .parse::<SocketAddr>()
            .map_err(|e| invalid("peer_listen_addr", format!("`{}` is not ip:port ({e})", self.peer_listen_addr)))?;
        if let Ok(client) = self.listen_addr.parse::<SocketAddr>() {
            if client.port() == peer.port()
                && client.port() != 0
                && (client.ip() == peer.ip() || client.ip().is_unspecified() || peer.ip().is_unspecified())
            {
                return Err(invalid(
                    "peer_listen_addr",
                    format!("`{}` is the client listener's address (listen_addr)", self.peer_listen_addr),
                ));
            }
        }
        match &self.peer_advertise_addr {
            Some(a) => {
                check_host_port("peer_advertise_addr", a)?;
                if is_wildcard(a) {
                    return Err(invalid("peer_advertise_addr", format!("`{a}` is a wildcard address: other nodes cannot dial it")));
                }
            }
            None if is_wildcard(&self.peer_listen_addr) => {
                return Err(invalid(
                    "peer_advertise_addr",
                    format!(
                        "not set while peer_listen_addr `{}` is a wildcard address: set the address other nodes reach this node at",
                        self.peer_listen_addr
                    ),
                ));
            }
            None => {}
        }
        self.peer_source_ip()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let members = self.initial_members()?;
        if !members.is_empty() && !members.contains_key(&self.node_id) {
            return Err(invalid("initial_members", format!("does not contain this node's id {} (node_id)", self.node_id)));
        }
        let r = &self.raft;
        positive("raft.heartbeat_interval_ms", r.heartbeat_interval_ms)?;
        positive("raft.election_timeout_min_ms", r.election_timeout_min_ms)?;
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!("must be greater than raft.heartbeat_interval_ms ({})", r.heartbeat_interval_ms),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                format!("must be greater than raft.election_timeout_min_ms ({})", r.election_timeout_min_ms),
            ));
        }
        positive("raft.snapshot_logs_since_last", r.snapshot_logs_since_last)?;
        in_range("raft.snapshot_chunk_bytes", r.snapshot_chunk_bytes, 4096, kho_raft::snapshot::WRITER_CHUNK_BYTES_MAX as u64)?;
        in_range("raft.append_entries_max", r.append_entries_max, 1, 100_000)?;
        positive("raft.rpc_timeout_ms", r.rpc_timeout_ms)?;
        positive("raft.snapshot_timeout_ms", r.snapshot_timeout_ms)?;
        positive("raft.proposal_timeout_ms", r.proposal_timeout_ms)?;
        let l = &self.limits;
        // Key sizes are bounded by the storage format (kho_engine::keys).
        in_range("limits.key_bytes_max", l.key_bytes_max, 1, kho_engine::keys::ROW_BYTES_MAX as u64)?;
        in_range("limits.qualifier_bytes_max", l.qualifier_bytes_max, 1, kho_engine::keys::QUALIFIER_BYTES_MAX as u64)?;
        in_range("limits.value_bytes_max", l.value_bytes_max, 1, 64 << 20)?;
        in_range("limits.batch_ops_max", l.batch_ops_max, 1, 100_000)?;
        in_range("limits.batch_bytes_max", l.batch_bytes_max, 1, 256 << 20)?;
        in_range("limits.scan_limit_max", l.scan_limit_max, 1, 10_000_000)?;
        in_range("limits.grpc_message_bytes_max", l.grpc_message_bytes_max, 4096, 1 << 30)?;
        if l.grpc_message_bytes_max < l.value_bytes_max + l.key_bytes_max {
            return Err(invalid("limits.grpc_message_bytes_max", "must be at least limits.value_bytes_max + limits.key_bytes_max"));
        }
        // A snapshot chunk travels as one gRPC message.
        if l.grpc_message_bytes_max < r.snapshot_chunk_bytes + 4096 {
            return Err(invalid("limits.grpc_message_bytes_max", "must be at least raft.snapshot_chunk_bytes + 4096"));
        }
        in_range("limits.concurrent_requests_max", l.concurrent_requests_max, 1, 1_000_000)?;
        in_range("limits.node_requests_max", l.node_requests_max, 1, 1_000_000)?;
        // Tokio's blocking pool (512 threads) is Raft's own: client pools stay well below it.
        in_range("limits.read_threads", l.read_threads, 1, 256)?;
        in_range("limits.scan_threads", l.scan_threads, 1, 256)?;
        in_range("limits.read_queue_max", l.read_queue_max, 1, 1_000_000)?;
        in_range("limits.scan_stall_timeout_ms", l.scan_stall_timeout_ms, 100, 3_600_000)?;
        in_range("limits.scan_duration_max_ms", l.scan_duration_max_ms, 100, 86_400_000)?;
        let sh = &self.sharding;
        if sh.split_size_bytes > 0 && sh.merge_size_bytes > sh.split_size_bytes / 4 {
            return Err(invalid(
                "sharding.merge_size_bytes",
                format!(
                    "must be at most a quarter of sharding.split_size_bytes ({}), so that a merge is never split again",
                    sh.split_size_bytes
                ),
            ));
        }
        in_range("sharding.check_interval_ms", sh.check_interval_ms, 100, 3_600_000)?;
        let e = &self.encryption;
        if e.master_key_file.is_some() && e.master_key_command.is_some() {
            return Err(invalid(
                "encryption.master_key_command",
                "set either encryption.master_key_file or encryption.master_key_command, not both",
            ));
        }
        if e.master_key_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid("encryption.master_key_file", "must not be empty"));
        }
        if e.master_key_command.as_ref().is_some_and(|c| c.trim().is_empty()) {
            return Err(invalid("encryption.master_key_command", "must not be empty"));
        }
        let t = &self.tls;
        let files = [
            ("tls.ca_file", &t.ca_file),
            ("tls.cert_file", &t.cert_file),
            ("tls.key_file", &t.key_file),
            ("tls.crl_file", &t.crl_file),
            ("tls.client_ca_file", &t.client_ca_file),
        ];
        if t.plaintext {
            if let Some((field, _)) = files.iter().find(|(_, v)| v.is_some()) {
                return Err(invalid(field, "set together with tls.plaintext = true: choose TLS or plaintext"));
            }
            if t.client_cert_required {
                return Err(invalid("tls.client_cert_required", "needs TLS, but tls.plaintext = true"));
            }
        } else {
            for (field, v) in &files[..3] {
                if v.is_none() {
                    return Err(invalid(
                        field,
                        "not set: a node serves TLS with tls.ca_file, tls.cert_file and tls.key_file (`kho cert` makes them for development); \
                         tls.plaintext = true serves without TLS and without authentication (tests only)",
                    ));
                }
            }
            for (field, v) in &files {
                if v.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(invalid(field, "must not be empty"));
                }
            }
        }
        in_range("tls.reload_interval_ms", t.reload_interval_ms, 100, 3_600_000)?;
        Ok(())
    }
}

fn positive(field: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(field, "must be > 0"));
    }
    Ok(())
}

fn in_range(field: &'static str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(invalid(field, format!("{v} is outside {min}..={max}")));
    }
    Ok(())
}

/// `0.0.0.0:p`, `[::]:p`: an address to bind, not one to dial.
fn is_wildcard(s: &str) -> bool {
    s.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified())
}

fn check_host_port(field: &'static str, s: &str) -> Result<(), ConfigError> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(field, format!("`{s}` is not host:port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_node_id_are_valid() {
        let c = Config::from_toml("node_id = 1\npeer_listen_addr = \"127.0.0.1:7101\"\n[tls]\nplaintext = true").unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.value_bytes_max, 1 << 20);
    }

    /// The smallest valid config without TLS.
    const PLAIN: &str = "peer_listen_addr = \"127.0.0.1:7101\"\n[tls]\nplaintext = true\n";

    #[test]
    fn a_wildcard_peer_listener_needs_an_address_to_advertise() {
        let c = Config::from_toml("node_id = 1\npeer_listen_addr = \"0.0.0.0:7101\"\n[tls]\nplaintext = true").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("peer_advertise_addr") && e.contains("wildcard"), "{e}");
        let c = Config::from_toml(
            "node_id = 1\npeer_listen_addr = \"0.0.0.0:7101\"\npeer_advertise_addr = \"10.0.0.1:7101\"\n[tls]\nplaintext = true",
        )
        .unwrap();
        c.validate().unwrap();
        let c = Config::from_toml(
            "node_id = 1\npeer_listen_addr = \"127.0.0.1:7101\"\npeer_advertise_addr = \"[::]:7101\"\n[tls]\nplaintext = true",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("peer_advertise_addr"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml("").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("node_id"), "{e}");
        let c =
            Config::from_toml(&format!("node_id = 1\n{PLAIN}[raft]\nelection_timeout_min_ms = 50\nheartbeat_interval_ms = 100")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("raft.election_timeout_min_ms"), "{e}");
        let e = Config::from_toml("node_id = 1\nbogus = 2").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let c = Config::from_toml(&format!("node_id = 2\ninitial_members = [\"1=127.0.0.1:7001\"]\n{PLAIN}")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("initial_members"), "{e}");
        let c = Config::from_toml(&format!("node_id = 1\npeer_source_ip = \"127.0.0.300\"\n{PLAIN}")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("peer_source_ip"), "{e}");
        let c = Config::from_toml(&format!("node_id = 1\npeer_source_ip = \"127.0.1.3\"\n{PLAIN}")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.peer_source_ip().unwrap(), Some("127.0.1.3".parse().unwrap()));
    }

    #[test]
    fn the_peer_listener_and_tls_are_required() {
        let e = Config::from_toml("node_id = 1\n[tls]\nplaintext = true").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("peer_listen_addr"), "{e}");
        let e = Config::from_toml("node_id = 1\npeer_listen_addr = \"127.0.0.1:7001\"\n[tls]\nplaintext = true")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer_listen_addr") && e.contains("listen_addr"), "{e}");
        // No TLS files and no explicit plaintext: refused, naming the first missing file.
        let e = Config::from_toml("node_id = 1\npeer_listen_addr = \"127.0.0.1:7101\"").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("tls.ca_file") && e.contains("tls.plaintext"), "{e}");
        let c = Config::from_toml(
            "node_id = 1\npeer_listen_addr = \"127.0.0.1:7101\"\n[tls]\nca_file = 'ca.crt'\ncert_file = 'n.crt'\nkey_file = 'n.key'",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.tls.files().is_some());
        let e = Config::from_toml(&format!("node_id = 1\n{PLAIN}ca_file = 'ca.crt'")).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("tls.ca_file") && e.contains("plaintext"), "{e}");
    }
}
