//! A cluster of real `kho server` processes on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kho_proto::v1::admin_client::AdminClient;
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::{ClusterStatusRequest, NodeChecksumRequest, NodeChecksumResponse, NodeStatus, NodeStatusRequest};
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::binary::kho_binary;
use crate::netproxy::Network;
use crate::process::{NodeProcess, ServerRun};

/// At most one cluster runs at a time in a test binary (cargo runs test binaries one after
/// the other, and the tests of one binary on parallel threads): three debug-build servers
/// already keep a 2-core machine busy.
static CLUSTER_SLOT: Semaphore = Semaphore::const_new(1);

/// Environment variable: when set to 1, the cluster's directory (configs, data, logs) is kept
/// after the test and its path printed.
pub const KEEP_DIR_ENV: &str = "KHO_KEEP_TEST_DIR";

/// Most nodes (voters and spares) of a test cluster: each needs its own source IP
/// `127.0.1.<id>`.
const SOURCE_IP_NODES_MAX: u64 = 254;
/// Lines of each node's log included in a failure message.
const LOG_TAIL_LINES: usize = 30;
/// Longest line of a log tail kept in a failure message, characters.
const LOG_TAIL_LINE_CHARS_MAX: usize = 600;
/// Pause between two polls of a wait loop, milliseconds.
const POLL_INTERVAL_MS: u64 = 100;
/// Timeout of one status or checksum call in a wait loop, milliseconds.
const STATUS_CALL_TIMEOUT_MS: u64 = 3_000;
/// Timeout of establishing a TCP connection to a node, milliseconds.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Largest response message the test clients accept, bytes.
const CLIENT_DECODE_BYTES_MAX: usize = 64 << 20;

/// Request limits written into every node's config; tests read them from here.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub key_bytes_max: u64,
    pub qualifier_bytes_max: u64,
    pub value_bytes_max: u64,
    pub batch_ops_max: u64,
    pub scan_limit_max: u64,
    /// `limits.node_requests_max`; `None` leaves the node's default.
    pub node_requests_max: Option<u64>,
    /// `limits.scan_stall_timeout_ms`; `None` leaves the node's default.
    pub scan_stall_timeout_ms: Option<u64>,
    /// `limits.scan_duration_max_ms`; `None` leaves the node's default.
    pub scan_duration_max_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            qualifier_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            batch_ops_max: 1000,
            scan_limit_max: 10_000,
            node_requests_max: None,
            scan_stall_timeout_ms: None,
            scan_duration_max_ms: None,
        }
    }
}

/// How a test cluster is configured and how long the harness waits for it.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Raft timing, short so that elections after a kill take well under a second or two.
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Timeout of one Raft message between nodes, milliseconds.
    pub raft_rpc_timeout_ms: u64,
    /// `raft.snapshot_logs_since_last`; `None` keeps the server default.
    pub snapshot_logs_since_last: Option<u64>,
    /// `raft.logs_to_keep_after_snapshot`; `None` keeps the server default.
    pub logs_to_keep_after_snapshot: Option<u64>,
    pub limits: Limits,
    /// Longest wait for a started cluster to elect a leader with every node answering, ms.
    pub ready_wait_ms: u64,
    /// Longest wait for `leader()` to find a leader, milliseconds.
    pub leader_wait_ms: u64,
    /// Longest wait for a restarted node to answer, milliseconds.
    pub node_serving_wait_ms: u64,
    /// Grace period between SIGTERM and SIGKILL in `stop`, milliseconds.
    pub stop_grace_ms: u64,
    /// Longest wait for the one-cluster-at-a-time slot, milliseconds (other tests of the
    /// same binary run their clusters meanwhile).
    pub slot_wait_ms: u64,
    /// Extra nodes (ids n+1..) configured to join an existing cluster (empty
    /// `initial_members`) and not started: a test starts one with `restart` and adds it with
    /// `AddNode`.
    pub spare_nodes: u64,
    /// Route every node-to-node connection through a fault-injecting proxy
    /// ([`Cluster::network`]): each node advertises its proxy's address and makes its
    /// outgoing connections from its own loopback IP (`127.0.1.<id>`, config
    /// `peer_source_ip`), so the proxy knows the directed link. Clients of the harness still
    /// reach every node directly.
    pub network_faults: bool,
    /// `raft.proposal_timeout_ms`; `None` keeps the server default.
    pub proposal_timeout_ms: Option<u64>,
    /// `raft.follower_reads`; `None` keeps the server default (on).
    pub follower_reads: Option<bool>,
    /// `raft.sleep_after_idle_ms`; `None` keeps the server default (2 s; 0: shards never
    /// sleep).
    pub sleep_after_idle_ms: Option<u64>,
    /// `encryption.master_key_file` of every node (encryption at rest); `None` writes no
    /// `[encryption]` section. The file must stay outside every node's data directory and
    /// outlive the cluster (see [`crate::MasterKey::write_file`]).
    pub master_key_file: Option<PathBuf>,
    /// Encrypt at rest with a fresh random master key, written to `keys/master.key` in the
    /// cluster's directory (outside every node's data directory), unless `master_key_file`
    /// names one.
    pub encrypted: bool,
    /// The `[sharding]` section of every node; `None` keeps the server defaults (splits
    /// at 256 MiB, no automatic merge within an hour of a split).
    pub sharding: Option<ShardingOptions>,
    /// TLS on both listeners (default): the harness makes a CA, a certificate per node and
    /// the client certificate of user `admin` with `kho cert` in `tls/` of the cluster's
    /// directory, and its clients connect with them. `false`: `tls.plaintext = true`.
    pub tls: bool,
    /// `tls.reload_interval_ms`; `None` keeps the server default.
    pub tls_reload_interval_ms: Option<u64>,
    /// Give every node `tls.crl_file = tls/ca.crl`, a CRL of the CA that revokes one
    /// throwaway client certificate (`kho cert revoke` adds to it).
    pub tls_crl: bool,
}

/// `[sharding]` settings for tests: tiny sizes and short intervals.
#[derive(Debug, Clone, Copy)]
pub struct ShardingOptions {
    pub split_size_bytes: u64,
    pub merge_size_bytes: u64,
    pub split_merge_interval_ms: u64,
    pub check_interval_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            raft_rpc_timeout_ms: 1_000,
            snapshot_logs_since_last: None,
            logs_to_keep_after_snapshot: None,
            limits: Limits::default(),
            ready_wait_ms: 30_000,
            leader_wait_ms: 20_000,
            node_serving_wait_ms: 30_000,
            stop_grace_ms: 10_000,
            slot_wait_ms: 30 * 60_000,
            spare_nodes: 0,
            network_faults: false,
            proposal_timeout_ms: None,
            follower_reads: None,
            sleep_after_idle_ms: None,
            master_key_file: None,
            encrypted: false,
            sharding: None,
            tls: true,
            tls_reload_interval_ms: None,
            tls_crl: false,
        }
    }
}

/// What the harness knows about one node; fixed for the cluster's life.
#[derive(Debug)]
struct NodeInfo {
    id: u64,
    /// `127.0.0.1:port` the node's client listener binds; the harness's clients use it.
    addr: String,
    /// `127.0.0.1:port` the node's peer listener binds.
    peer_addr: String,
    /// The address other nodes use: `peer_addr`, or its proxy's address with
    /// `network_faults`.
    advertise: String,
    config_path: PathBuf,
    log_path: PathBuf,
    /// `data_dir` of its config.
    data_dir: PathBuf,
    /// `initial_members` of its config.
    members: Vec<String>,
    /// `peer_source_ip` of its config.
    source_ip: Option<IpAddr>,
    /// Shared by the clients `data_client` and `admin_client` hand out.
    channel: Channel,
}

/// Real server processes, one per node, with their configs, data and logs in a temporary
/// directory. Every method takes `&self`, so a test body can borrow the cluster while
/// `bounded` keeps it for the failure message.
///
/// Dropping the cluster kills every node still running (SIGKILL to each child's own pid).
/// When the thread is panicking, the tail of every node's log is printed first.
pub struct Cluster {
    opts: ClusterOptions,
    /// The CA and the admin's client certificate, with `opts.tls`.
    tls: Option<TestTls>,
    kho: PathBuf,
    nodes: BTreeMap<u64, NodeInfo>,
    running: Mutex<BTreeMap<u64, NodeProcess>>,
    /// Nodes stopped with SIGSTOP and not yet continued.
    paused: Mutex<BTreeSet<u64>>,
    /// The proxies between nodes, with `network_faults`.
    net: Option<Network>,
    /// Set once a failure message carried the log tails, so `Drop` does not repeat them.
    tails_reported: AtomicBool,
    /// Extra environment of each node's next starts ([`Cluster::set_env`]).
    env: Mutex<BTreeMap<u64, Vec<(String, String)>>>,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    _slot: SemaphorePermit<'static>,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) as a new cluster and waits until it has a leader that
    /// every node knows. Panics, with the nodes' log tails, if that takes longer than
    /// `opts.ready_wait_ms`.
    pub async fn start(n: u64, mut opts: ClusterOptions) -> Cluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let slot = match tokio::time::timeout(Duration::from_millis(opts.slot_wait_ms), CLUSTER_SLOT.acquire()).await {
            Ok(permit) => permit.expect("the cluster slot semaphore is never closed"),
            Err(_) => panic!("waited over {} ms for another test's cluster to finish", opts.slot_wait_ms),
        };
        let kho = kho_binary();
        let dir = tempfile::Builder::new().prefix("kho-cluster-").tempdir().expect("create a temporary directory");
        let root = dir.path().to_path_buf();
        println!("cluster of {n}: directory {}, binary {}", root.display(), kho.display());
        if opts.encrypted && opts.master_key_file.is_none() {
            let keys = root.join("keys");
            std::fs::create_dir_all(&keys).expect("create the key directory");
            let path = keys.join("master.key");
            crate::MasterKey::random(&mut rand::rng()).write_file(&path, 0o600).expect("write the master key file");
            println!("cluster of {n}: encrypted at rest, master key file {}", path.display());
            opts.master_key_file = Some(path);
        }

        let total = n + opts.spare_nodes;
        assert!(total <= SOURCE_IP_NODES_MAX, "at most {SOURCE_IP_NODES_MAX} nodes in a test cluster");
        let tls = opts.tls.then(|| TestTls::create(&kho, &root.join("tls"), total, opts.tls_crl));
        // Client ports, peer ports, then (with network faults) proxy ports, chosen together
        // so all differ.
        let proxied = if opts.network_faults { total as usize } else { 0 };
        let mut client_addrs = free_loopback_addrs(2 * total as usize + proxied);
        let mut addrs = client_addrs.split_off(total as usize);
        let proxy_addrs = addrs.split_off(total as usize);
        let sources: BTreeMap<u64, IpAddr> = (1..=total).map(|id| (id, IpAddr::V4(Ipv4Addr::new(127, 0, 1, id as u8)))).collect();
        let net = opts.network_faults.then(|| Network::new(sources.clone()));
        let mut advertised = Vec::with_capacity(addrs.len());
        for ((id, addr), proxy) in (1..=total).zip(&addrs).zip(proxy_addrs.iter().map(Some).chain(std::iter::repeat(None))) {
            let a = match (&net, proxy) {
                (Some(net), Some(proxy)) => {
                    let target: SocketAddr = addr.parse().expect("a loopback socket address");
                    let listen: SocketAddr = proxy.parse().expect("a loopback socket address");
                    let bound = net.add_destination(id, listen, target).await.expect("start a proxy");
                    bound.to_string()
                }
                _ => addr.clone(),
            };
            advertised.push(a);
        }
        let members: Vec<String> = (1..=n).zip(&advertised).map(|(id, addr)| format!("{id}={addr}")).collect();
        let mut nodes = BTreeMap::new();
        for (((id, peer_addr), advertise), addr) in (1..=total).zip(addrs).zip(advertised).zip(client_addrs) {
            let data_dir = root.join(format!("node-{id}-data"));
            let config_path = root.join(format!("node-{id}.toml"));
            let node_members: &[String] = if id <= n { &members } else { &[] };
            let source_ip = net.as_ref().map(|_| sources[&id]);
            let a = NodeAddrs { addr: &addr, peer_addr: &peer_addr, advertise: &advertise };
            let config = node_config(&opts, id, &a, source_ip, &data_dir, node_members, tls.as_ref().map(|t| t.dir.as_path()));
            std::fs::write(&config_path, config).expect("write a node config");
            let channel = client_endpoint(&addr, tls.as_ref()).connect_lazy();
            let log_path = root.join(format!("node-{id}.log"));
            let members = node_members.to_vec();
            nodes.insert(id, NodeInfo { id, addr, peer_addr, advertise, config_path, log_path, data_dir, members, source_ip, channel });
        }
        let cluster = Cluster {
            opts,
            tls,
            kho,
            nodes,
            running: Mutex::new(BTreeMap::new()),
            paused: Mutex::new(BTreeSet::new()),
            net,
            tails_reported: AtomicBool::new(false),
            env: Mutex::new(BTreeMap::new()),
            dir: Some(dir),
            root,
            _slot: slot,
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        let leader = cluster.wait_ready().await;
        println!("cluster of {n} ready, leader {leader}");
        cluster
    }

    pub fn opts(&self) -> &ClusterOptions {
        &self.opts
    }

    /// The directory holding configs, data and logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Every node id, running or not, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes the harness has started and not killed or stopped.
    pub fn running_ids(&self) -> Vec<u64> {
        self.running.lock().unwrap().keys().copied().collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running.lock().unwrap().contains_key(&id)
    }

    /// `127.0.0.1:port` of node `id`.
    pub fn addr(&self, id: u64) -> &str {
        &self.node(id).addr
    }

    /// The address other nodes reach node `id` at (its proxy's, with `network_faults`):
    /// the address to give `AddNode`.
    pub fn advertise_addr(&self, id: u64) -> &str {
        &self.node(id).advertise
    }

    /// The proxies between the nodes. Panics unless the cluster was started with
    /// `network_faults`.
    pub fn network(&self) -> &Network {
        self.net.as_ref().expect("the cluster was started without ClusterOptions::network_faults")
    }

    /// The proxies between the nodes, if the cluster has them.
    pub fn network_if_any(&self) -> Option<&Network> {
        self.net.as_ref()
    }

    /// Stops node `id` with SIGSTOP: it keeps its sockets and state but does nothing (a
    /// long GC pause, a hung disk); `resume` wakes it. Panics if it is not running.
    pub fn pause(&self, id: u64) {
        self.signal_running(id, libc::SIGSTOP, "pause");
        self.paused.lock().unwrap().insert(id);
        println!("node {id} paused (SIGSTOP)");
    }

    /// SIGCONT to a node paused with `pause`.
    pub fn resume(&self, id: u64) {
        assert!(self.paused.lock().unwrap().remove(&id), "node {id} is not paused");
        self.signal_running(id, libc::SIGCONT, "resume");
        println!("node {id} resumed (SIGCONT)");
    }

    /// Nodes paused and not resumed.
    pub fn paused_ids(&self) -> Vec<u64> {
        self.paused.lock().unwrap().iter().copied().collect()
    }

    fn signal_running(&self, id: u64, signal: libc::c_int, what: &str) {
        let running = self.running.lock().unwrap();
        let process = running.get(&id).unwrap_or_else(|| panic!("cannot {what} node {id}: it is not running"));
        process.signal(signal);
    }

    /// `https://127.0.0.1:port` (or `http://` without TLS) of node `id`'s client listener.
    pub fn endpoint(&self, id: u64) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.node(id).addr)
    }

    /// The address of node `id`'s peer listener (not its proxy's).
    pub fn peer_addr(&self, id: u64) -> &str {
        &self.node(id).peer_addr
    }

    /// The cluster's TLS files, with `opts.tls`.
    pub fn tls(&self) -> Option<&TestTls> {
        self.tls.as_ref()
    }

    /// A `kho` command with the environment that makes it a client of this cluster as
    /// user `admin` (`KHO_CA`, `KHO_CERT`, `KHO_KEY` with TLS; nothing without).
    pub fn kho_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.kho);
        if let Some(t) = &self.tls {
            c.env("KHO_CA", t.ca_cert()).env("KHO_CERT", t.client_cert("admin")).env("KHO_KEY", t.client_key("admin"));
        }
        c
    }

    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log_path
    }

    /// The data directory of node `id` (RocksDB, snapshots, the `ENCRYPTION` marker).
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    /// The config file node `id` is started with.
    pub fn config_path(&self, id: u64) -> &Path {
        &self.node(id).config_path
    }

    /// The TOML config of node `id` as the harness wrote it, but with `master_key_file`
    /// instead of the cluster's (`None`: no `[encryption]` section). For starting a node by
    /// hand with another key, or none ([`Cluster::run_server_once`]).
    pub fn node_config_with_master_key(&self, id: u64, master_key_file: Option<&Path>) -> String {
        let node = self.node(id);
        let opts = ClusterOptions { master_key_file: master_key_file.map(Path::to_path_buf), ..self.opts.clone() };
        let a = NodeAddrs { addr: &node.addr, peer_addr: &node.peer_addr, advertise: &node.advertise };
        node_config(&opts, id, &a, node.source_ip, &node.data_dir, &node.members, self.tls.as_ref().map(|t| t.dir.as_path()))
    }

    /// Runs `kho server` for node `id` (which must not be running) with the config `config`
    /// (written beside the node's own as `node-<id>-<label>.toml`) and waits up to
    /// `timeout` for it to exit by itself: for checking that a node refuses to start. A
    /// process still running at the deadline is killed (SIGKILL to its own pid) and reported
    /// with `timed_out`. Its stdout and stderr are kept apart, in `node-<id>-<label>.out` and
    /// `.err` in the cluster directory.
    pub async fn run_server_once(&self, id: u64, label: &str, config: &str, timeout: Duration) -> ServerRun {
        assert!(!self.is_running(id), "node {id} is running; stop it before starting it by hand");
        assert!(
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "label `{label}` must be a plain file-name part"
        );
        let config_path = self.root.join(format!("node-{id}-{label}.toml"));
        let stdout_path = self.root.join(format!("node-{id}-{label}.out"));
        let stderr_path = self.root.join(format!("node-{id}-{label}.err"));
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let run = crate::process::run_to_exit(&self.kho, &config_path, &stdout_path, &stderr_path, timeout)
            .await
            .unwrap_or_else(|e| panic!("cannot run {} for node {id} ({label}): {e}", self.kho.display()));
        println!("node {id} started by hand ({label}): {}", run.describe());
        run
    }

    /// A Data client of node `id` over the cluster's shared connection to it.
    pub fn data_client(&self, id: u64) -> DataClient<Channel> {
        DataClient::new(self.node(id).channel.clone()).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX)
    }

    /// A Load client of node `id` over the cluster's shared connection to it.
    pub fn load_client(&self, id: u64) -> kho_proto::v1::load_client::LoadClient<Channel> {
        kho_proto::v1::load_client::LoadClient::new(self.node(id).channel.clone()).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX)
    }

    /// An Admin client of node `id` over the cluster's shared connection to it.
    pub fn admin_client(&self, id: u64) -> AdminClient<Channel> {
        AdminClient::new(self.node(id).channel.clone()).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX)
    }

    /// A client of node `id` that presents no client certificate (only the CA, with TLS),
    /// on a connection of its own, sending `token` (`kho_…`) as its bearer token when given:
    /// a principal other than the admin.
    pub fn clients_as(&self, id: u64, token: Option<&str>) -> (DataClient<TokenSvc>, AdminClient<TokenSvc>) {
        let node = self.node(id);
        let ep = match &self.tls {
            Some(t) => {
                let ca = std::fs::read(t.ca_cert()).expect("read the test CA");
                Endpoint::from_shared(format!("https://{}", node.addr))
                    .expect("a valid endpoint URI")
                    .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                    .expect("a valid client TLS configuration")
            }
            None => Endpoint::from_shared(format!("http://{}", node.addr)).expect("a valid endpoint URI"),
        };
        let channel = ep.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS)).tcp_nodelay(true).connect_lazy();
        let header = TokenHeader(token.map(|t| format!("Bearer {t}").parse().expect("a token is ASCII")));
        (
            DataClient::with_interceptor(channel.clone(), header.clone()).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX),
            AdminClient::with_interceptor(channel, header).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX),
        )
    }

    /// Waits (at most 15 s) until every running node serves a request of `token`'s
    /// principal that depends on grants: a node refuses those (`UNAVAILABLE`) until it has
    /// confirmed its copy of the grants once since it started (docs/SECURITY.md, "How soon
    /// a revoke holds"), which a node that lagged at start may take seconds to do.
    pub async fn wait_grants_current(&self, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for id in self.running_ids() {
            let (_, mut admin) = self.clients_as(id, Some(token));
            loop {
                match admin.list_tenants(kho_proto::v1::ListTenantsRequest {}).await {
                    Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        self.fail(format!("node {id} did not confirm its copy of the grants within 15 s: {s}"))
                    }
                    _ => break,
                }
            }
        }
    }

    /// Data clients of every node, each over a new connection of its own, as an independent
    /// client process would have; paired with the node id.
    pub fn new_data_clients(&self) -> Vec<(u64, DataClient<Channel>)> {
        self.nodes
            .values()
            .map(|node| {
                let channel = client_endpoint(&node.addr, self.tls.as_ref()).connect_lazy();
                (node.id, DataClient::new(channel).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX))
            })
            .collect()
    }

    /// Sets the extra environment variables node `id` gets from its next start on (empty:
    /// none), for example a `FAILPOINTS` list (docs/TESTING.md).
    pub fn set_env(&self, id: u64, vars: &[(&str, &str)]) {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.env.lock().unwrap().insert(id, vars);
    }

    /// Waits up to `limit` for node `id` to exit by itself and returns its exit status
    /// (None: still running at the deadline; it is left running).
    pub async fn wait_exit(&self, id: u64, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let mut running = self.running.lock().unwrap();
                let process = running.get_mut(&id).unwrap_or_else(|| panic!("node {id} is not running"));
                if let Some(status) = process.exited() {
                    running.remove(&id);
                    println!("node {id} exited by itself: {status}");
                    return Some(status);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL node `id` and reap it. Panics if it is not running.
    pub fn kill(&self, id: u64) {
        let process = self.take_running(id, "kill");
        let pid = process.pid();
        let status = process.kill();
        println!("node {id} (pid {pid}) killed: {status:?}");
    }

    /// SIGKILL every running node at once (all signals sent before any is reaped).
    pub fn kill_all(&self) -> Vec<u64> {
        let mut processes: Vec<(u64, NodeProcess)> = std::mem::take(&mut *self.running.lock().unwrap()).into_iter().collect();
        self.paused.lock().unwrap().clear();
        for (_, process) in processes.iter_mut() {
            process.send_kill();
        }
        let ids: Vec<u64> = processes.iter().map(|(id, _)| *id).collect();
        for (id, process) in processes {
            let pid = process.pid();
            let status = process.reap();
            println!("node {id} (pid {pid}) killed: {status:?}");
        }
        ids
    }

    /// SIGTERM node `id`, wait up to `opts.stop_grace_ms` for it to exit, then SIGKILL.
    pub async fn stop(&self, id: u64) {
        let process = self.take_running(id, "stop");
        let pid = process.pid();
        let (status, killed) = process.terminate(self.opts.stop_grace_ms).await;
        if killed {
            println!("node {id} (pid {pid}) ignored SIGTERM for {} ms and was killed", self.opts.stop_grace_ms);
        } else {
            println!("node {id} (pid {pid}) stopped: {status:?}");
        }
    }

    /// Starts node `id` again with the same config and data directory and waits until it
    /// answers NodeStatus (it need not know a leader yet: the others may be down).
    pub async fn restart(&self, id: u64) {
        self.spawn(id);
        self.wait_node_serving(id).await;
    }

    /// Starts node `id` again without waiting for it to answer: for a node expected to stop
    /// by itself soon (a fault point), which [`Cluster::wait_exit`] then waits for.
    pub fn launch(&self, id: u64) {
        self.spawn(id);
    }

    /// Starts every node that is not running and waits until the cluster is ready (a leader
    /// every node knows). Returns the leader.
    pub async fn restart_all(&self) -> u64 {
        for id in self.ids() {
            if !self.is_running(id) {
                self.spawn(id);
            }
        }
        self.wait_ready().await
    }

    /// The current leader: a running node that some running node's ClusterStatus names as
    /// leader and that reports itself as leader there. Retries up to `opts.leader_wait_ms`.
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(self.opts.leader_wait_ms);
        let mut last = String::from("no node answered");
        while Instant::now() < deadline {
            self.check_alive();
            for id in self.running_ids() {
                match self.cluster_status(id).await {
                    Ok(status) => {
                        let leader = status.leader_id;
                        let confirmed = leader != 0
                            && self.is_running(leader)
                            && status.nodes.iter().any(|n| n.node_id == leader && n.role == "leader");
                        if confirmed {
                            return leader;
                        }
                        last = format!("node {id} reports leader {leader}: {}", describe_nodes(&status.nodes));
                    }
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.fail(format!("no leader among running nodes within {} ms; last: {last}", self.opts.leader_wait_ms))
    }

    /// The leader of the cluster's data shard (the tests' tenant has one while it does not
    /// split): the running node whose NodeStatus reports it leads the lowest-numbered shard.
    /// Polls until one does; panics after `leader_wait_ms`.
    pub async fn shard_leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(self.opts.leader_wait_ms);
        let mut last = String::from("no node answered");
        while Instant::now() < deadline {
            self.check_alive();
            let mut leaders = Vec::new();
            let mut first_shard = u64::MAX;
            for id in self.running_ids() {
                match self.node_status(id).await {
                    Ok(s) => {
                        for sh in &s.shards {
                            first_shard = first_shard.min(sh.shard_id);
                            if sh.role == "leader" {
                                leaders.push((sh.shard_id, id));
                            }
                        }
                    }
                    Err(e) => last = format!("node {id}: {e:?}"),
                }
            }
            if let Some((_, id)) = leaders.iter().find(|(shard, _)| *shard == first_shard) {
                return *id;
            }
            if first_shard != u64::MAX {
                last = format!("no running node leads shard {first_shard}");
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.fail(format!("no leader of the data shard among running nodes within {} ms; last: {last}", self.opts.leader_wait_ms))
    }

    /// Waits until every running node answers NodeStatus and names the same leader, which is
    /// running, reports itself leader, and whose ClusterStatus shows every node reachable.
    /// Bounded by `opts.ready_wait_ms`. Returns the leader.
    pub async fn wait_ready(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(self.opts.ready_wait_ms);
        let mut last = String::from("no node answered");
        while Instant::now() < deadline {
            self.check_alive();
            match self.ready_leader().await {
                Ok(leader) => return leader,
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.fail(format!("cluster not ready within {} ms; last: {last}", self.opts.ready_wait_ms))
    }

    async fn ready_leader(&self) -> Result<u64, String> {
        let running = self.running_ids();
        let mut statuses = BTreeMap::new();
        for &id in &running {
            let status = self.node_status(id).await.map_err(|e| format!("node {id} NodeStatus: {e}"))?;
            statuses.insert(id, status);
        }
        let leaders: std::collections::BTreeSet<u64> = statuses.values().map(|s| s.leader_id).collect();
        let [leader] = leaders.iter().copied().collect::<Vec<_>>()[..] else {
            return Err(format!("nodes name different leaders: {}", describe_nodes(&statuses.into_values().collect::<Vec<_>>())));
        };
        if leader == 0 || statuses.get(&leader).is_none_or(|s| s.role != "leader") {
            return Err(format!("no confirmed leader: {}", describe_nodes(&statuses.into_values().collect::<Vec<_>>())));
        }
        let cluster = self.cluster_status(leader).await.map_err(|e| format!("leader {leader} ClusterStatus: {e}"))?;
        let reachable = cluster.nodes.iter().filter(|n| n.role != "unreachable").count();
        if cluster.leader_id != leader || reachable < running.len() {
            return Err(format!("leader {leader} ClusterStatus: leader {} {}", cluster.leader_id, describe_nodes(&cluster.nodes)));
        }
        Ok(leader)
    }

    /// Waits until node `id` answers NodeStatus, up to `opts.node_serving_wait_ms`.
    pub async fn wait_node_serving(&self, id: u64) -> NodeStatus {
        let deadline = Instant::now() + Duration::from_millis(self.opts.node_serving_wait_ms);
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_alive();
            match self.node_status(id).await {
                Ok(status) => return status,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.fail(format!("node {id} did not answer NodeStatus within {} ms; last: {last}", self.opts.node_serving_wait_ms))
    }

    /// Polls Admin.NodeChecksum on every running node until, for every group (the meta group
    /// and each data shard), the nodes that hold it report the same applied index; then
    /// returns their answers in node order. Panics after `timeout`.
    pub async fn wait_applied_equal(&self, timeout: Duration) -> Vec<NodeChecksumResponse> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no node answered");
        while Instant::now() < deadline {
            self.check_alive();
            let mut answers = Vec::new();
            for id in self.running_ids() {
                match self.node_checksum(id).await {
                    Ok(answer) => {
                        assert_eq!(answer.node_id, id, "node {id} answered NodeChecksum as node {}", answer.node_id);
                        answers.push(answer);
                    }
                    Err(e) => {
                        last = format!("node {id} NodeChecksum: {e}");
                        answers.clear();
                        break;
                    }
                }
            }
            if !answers.is_empty() {
                if groups_at_equal_points(&answers) {
                    return answers;
                }
                last = describe_checksums(&answers);
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.fail(format!("applied indexes not equal within {} ms; last: {last}", timeout.as_millis()))
    }

    /// Runs `body` with a time bound; on timeout, panics with `name`, the bound and the
    /// nodes' log tails. The cluster outlives `body`, so the logs can still be read.
    pub async fn bounded<T>(&self, name: &str, limit: Duration, body: impl Future<Output = T>) -> T {
        match tokio::time::timeout(limit, body).await {
            Ok(value) => value,
            Err(_) => self.fail(format!("{name}: did not finish within {} s", limit.as_secs())),
        }
    }

    /// Panics with `message` followed by the last lines of every node's log.
    pub fn fail(&self, message: impl std::fmt::Display) -> ! {
        self.tails_reported.store(true, Ordering::SeqCst);
        panic!("{message}\n{}", self.log_tails())
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = format!("cluster directory: {}\n", self.root.display());
        for node in self.nodes.values() {
            let state = if self.is_running(node.id) { "running" } else { "not running" };
            out.push_str(&format!(
                "--- node {} ({}, {state}) log {}, last {LOG_TAIL_LINES} lines ---\n",
                node.id,
                node.addr,
                node.log_path.display()
            ));
            out.push_str(&log_tail(&node.log_path, LOG_TAIL_LINES));
        }
        out
    }

    /// Panics (with log tails) if a node the harness started has exited on its own.
    pub fn check_alive(&self) {
        let mut exited = Vec::new();
        {
            let mut running = self.running.lock().unwrap();
            for (id, process) in running.iter_mut() {
                if let Some(status) = process.exited() {
                    exited.push((*id, status));
                }
            }
            for (id, _) in &exited {
                running.remove(id);
            }
        }
        if !exited.is_empty() {
            let list: Vec<String> = exited.iter().map(|(id, s)| format!("node {id} ({s})")).collect();
            self.fail(format!("server process exited unexpectedly: {}", list.join(", ")));
        }
    }

    /// NodeStatus of node `id`, one bounded call.
    pub async fn node_status(&self, id: u64) -> Result<NodeStatus, tonic::Status> {
        let mut client = self.admin_client(id);
        bounded_call(async move { client.node_status(NodeStatusRequest {}).await }).await
    }

    /// ClusterStatus as seen by node `id`, one bounded call.
    pub async fn cluster_status(&self, id: u64) -> Result<kho_proto::v1::ClusterStatusResponse, tonic::Status> {
        let mut client = self.admin_client(id);
        bounded_call(async move { client.cluster_status(ClusterStatusRequest {}).await }).await
    }

    /// NodeChecksum of node `id`, one bounded call.
    pub async fn node_checksum(&self, id: u64) -> Result<NodeChecksumResponse, tonic::Status> {
        let mut client = self.admin_client(id);
        bounded_call(async move { client.node_checksum(NodeChecksumRequest {}).await }).await
    }

    fn node(&self, id: u64) -> &NodeInfo {
        self.nodes.get(&id).unwrap_or_else(|| panic!("no node {id} in this cluster (ids {:?})", self.ids()))
    }

    /// Removes node `id` from the running set. A paused node is continued first, so that
    /// SIGTERM can reach it (SIGKILL would anyway).
    fn take_running(&self, id: u64, what: &str) -> NodeProcess {
        let process = self.running.lock().unwrap().remove(&id);
        let process = process.unwrap_or_else(|| panic!("cannot {what} node {id}: it is not running"));
        if self.paused.lock().unwrap().remove(&id) {
            process.signal(libc::SIGCONT);
        }
        process
    }

    fn spawn(&self, id: u64) {
        let node = self.node(id);
        let mut running = self.running.lock().unwrap();
        assert!(!running.contains_key(&id), "node {id} is already running");
        let env = self.env.lock().unwrap().get(&id).cloned().unwrap_or_default();
        let process = NodeProcess::spawn(&self.kho, &node.config_path, &node.log_path, id, &env)
            .unwrap_or_else(|e| panic!("cannot start {} for node {id}: {e}", self.kho.display()));
        println!("node {id} started, pid {}, {}", process.pid(), node.addr);
        running.insert(id, process);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(net) = &self.net {
            net.shutdown();
        }
        let processes = std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner()));
        let mut processes: Vec<NodeProcess> = processes.into_values().collect();
        for process in processes.iter_mut() {
            process.send_kill();
        }
        for process in processes {
            process.reap();
        }
        if std::thread::panicking() && !self.tails_reported.load(Ordering::SeqCst) {
            eprintln!("{}", self.log_tails());
        }
        if std::env::var(KEEP_DIR_ENV).is_ok_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("{KEEP_DIR_ENV}=1: kept {}", dir.keep().display());
            }
        }
    }
}

/// One status call bounded by `STATUS_CALL_TIMEOUT_MS`.
async fn bounded_call<T>(call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, tonic::Status> {
    match tokio::time::timeout(Duration::from_millis(STATUS_CALL_TIMEOUT_MS), call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {STATUS_CALL_TIMEOUT_MS} ms"))),
    }
}

/// Ports the harness gives to nodes and proxies: below Linux's default ephemeral range
/// (32768–60999), so that no outgoing connection (whose source port the kernel picks from
/// that range) and no `bind(…:0)` can take a port between its choice and its use.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
/// Most ports `free_loopback_addrs` tries per port it needs.
const PORT_TRIES_PER_PORT: usize = 100;

/// `n` distinct free ports on 127.0.0.1 from `PORT_RANGE`: each is bound (so none repeats
/// and none is in use), then all are released together. Another program could still take
/// one before the node binds it; the node then fails to start with a clear log line.
fn free_loopback_addrs(n: usize) -> Vec<String> {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    for _ in 0..n * PORT_TRIES_PER_PORT {
        if held.len() == n {
            break;
        }
        let port = rng.random_range(PORT_RANGE);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), n, "found only {} free loopback ports in {PORT_RANGE:?}", held.len());
    held.iter().map(|l| l.local_addr().expect("local address").to_string()).collect()
}

/// The addresses of one node.
struct NodeAddrs<'a> {
    addr: &'a str,
    peer_addr: &'a str,
    /// Its peer address as other nodes reach it (a proxy's with network faults).
    advertise: &'a str,
}

/// The files `kho cert` made for a test cluster: `ca.crt`, `node-<id>.crt`/`.key`, and
/// `client-admin.crt`/`.key`.
#[derive(Debug, Clone)]
pub struct TestTls {
    pub dir: PathBuf,
}

impl TestTls {
    /// Runs `kho cert` to make a CA, `nodes` node certificates and user `admin`'s; with
    /// `crl`, also a CRL revoking a throwaway certificate of user `revoked`.
    fn create(kho: &Path, dir: &Path, nodes: u64, crl: bool) -> TestTls {
        let run = |args: &[&str]| {
            let out = std::process::Command::new(kho).arg("cert").args(args).arg("--dir").arg(dir).output().expect("run kho cert");
            assert!(out.status.success(), "kho cert {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["ca"]);
        for id in 1..=nodes {
            run(&["node", "--id", &id.to_string()]);
        }
        run(&["client", "--name", "admin"]);
        if crl {
            run(&["client", "--name", "revoked"]);
            let revoked = dir.join("client-revoked.crt");
            run(&["revoke", revoked.to_str().expect("UTF-8 path")]);
        }
        TestTls { dir: dir.to_path_buf() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn client_cert(&self, user: &str) -> PathBuf {
        self.dir.join(format!("client-{user}.crt"))
    }

    pub fn client_key(&self, user: &str) -> PathBuf {
        self.dir.join(format!("client-{user}.key"))
    }

    /// The client TLS of user `admin`.
    pub fn client_config(&self) -> ClientTlsConfig {
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(self.ca_cert())))
            .identity(Identity::from_pem(read(self.client_cert("admin")), read(self.client_key("admin"))))
    }
}

/// Sets `authorization` on every request when it holds a value ([`Cluster::clients_as`]).
#[derive(Clone, Debug)]
pub struct TokenHeader(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for TokenHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel whose requests carry a [`TokenHeader`].
pub type TokenSvc = tonic::service::interceptor::InterceptedService<Channel, TokenHeader>;

/// An endpoint of a node's client listener, with the admin's TLS when there is TLS.
fn client_endpoint(addr: &str, tls: Option<&TestTls>) -> Endpoint {
    let ep = match tls {
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))
            .expect("a valid endpoint URI")
            .tls_config(t.client_config())
            .expect("a valid client TLS configuration"),
        None => Endpoint::from_shared(format!("http://{addr}")).expect("a valid endpoint URI"),
    };
    ep.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS)).tcp_nodelay(true)
}

/// The TOML config of one node.
fn node_config(
    opts: &ClusterOptions,
    id: u64,
    a: &NodeAddrs<'_>,
    source_ip: Option<IpAddr>,
    data_dir: &Path,
    members: &[String],
    tls_dir: Option<&Path>,
) -> String {
    let (addr, peer_addr, advertise) = (a.addr, a.peer_addr, a.advertise);
    let data_dir = data_dir.to_str().expect("temporary directory path is UTF-8");
    assert!(!data_dir.contains('\''), "data dir {data_dir} cannot be a TOML literal string");
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    let mut raft = format!(
        "heartbeat_interval_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\nrpc_timeout_ms = {}\n",
        opts.heartbeat_interval_ms, opts.election_timeout_min_ms, opts.election_timeout_max_ms, opts.raft_rpc_timeout_ms
    );
    if let Some(v) = opts.snapshot_logs_since_last {
        raft.push_str(&format!("snapshot_logs_since_last = {v}\n"));
    }
    if let Some(v) = opts.logs_to_keep_after_snapshot {
        raft.push_str(&format!("logs_to_keep_after_snapshot = {v}\n"));
    }
    if let Some(v) = opts.follower_reads {
        raft.push_str(&format!("follower_reads = {v}\n"));
    }
    if let Some(v) = opts.proposal_timeout_ms {
        raft.push_str(&format!("proposal_timeout_ms = {v}\n"));
    }
    if let Some(v) = opts.sleep_after_idle_ms {
        raft.push_str(&format!("sleep_after_idle_ms = {v}\n"));
    }
    let source = source_ip.map(|ip| format!("peer_source_ip = \"{ip}\"\n")).unwrap_or_default();
    let encryption = match &opts.master_key_file {
        Some(path) => {
            let path = path.to_str().expect("master key file path is UTF-8");
            assert!(!path.contains('\''), "master key file {path} cannot be a TOML literal string");
            format!("\n[encryption]\nmaster_key_file = '{path}'\n")
        }
        None => String::new(),
    };
    let l = &opts.limits;
    let mut text = format!(
        "# Written by kho-cluster-tests.\n\
         node_id = {id}\n\
         listen_addr = \"{addr}\"\n\
         peer_listen_addr = \"{peer_addr}\"\n\
         peer_advertise_addr = \"{advertise}\"\n\
         {source}\
         data_dir = '{data_dir}'\n\
         initial_members = [{}]\n\
         \n[raft]\n{raft}\
         \n[limits]\nkey_bytes_max = {}\nqualifier_bytes_max = {}\nvalue_bytes_max = {}\nbatch_ops_max = {}\n\
         scan_limit_max = {}\n",
        members.join(", "),
        l.key_bytes_max,
        l.qualifier_bytes_max,
        l.value_bytes_max,
        l.batch_ops_max,
        l.scan_limit_max,
    );
    if let Some(n) = l.node_requests_max {
        text.push_str(&format!("node_requests_max = {n}\n"));
    }
    if let Some(ms) = l.scan_stall_timeout_ms {
        text.push_str(&format!("scan_stall_timeout_ms = {ms}\n"));
    }
    if let Some(ms) = l.scan_duration_max_ms {
        text.push_str(&format!("scan_duration_max_ms = {ms}\n"));
    }
    text.push_str(&encryption);
    if let Some(s) = &opts.sharding {
        text.push_str(&format!(
            "\n[sharding]\nsplit_size_bytes = {}\nmerge_size_bytes = {}\nsplit_merge_interval_ms = {}\ncheck_interval_ms = {}\n",
            s.split_size_bytes, s.merge_size_bytes, s.split_merge_interval_ms, s.check_interval_ms
        ));
    }
    match tls_dir {
        Some(d) => {
            let d = d.to_str().expect("TLS directory path is UTF-8");
            assert!(!d.contains('\''), "TLS directory {d} cannot be a TOML literal string");
            text.push_str(&format!("\n[tls]\nca_file = '{d}/ca.crt'\ncert_file = '{d}/node-{id}.crt'\nkey_file = '{d}/node-{id}.key'\n"));
            if let Some(ms) = opts.tls_reload_interval_ms {
                text.push_str(&format!("reload_interval_ms = {ms}\n"));
            }
            if opts.tls_crl {
                text.push_str(&format!("crl_file = '{d}/ca.crl'\n"));
            }
            text.push_str("\n[auth]\ncluster_admins = ['admin']\nauditors = ['admin', 'auditor']\n");
        }
        None => text.push_str("\n[tls]\nplaintext = true\n\n[auth]\nenabled = false\n"),
    }
    text
}

/// The last `lines` lines of a file (each cut to `LOG_TAIL_LINE_CHARS_MAX` characters).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read: {e})\n"),
    };
    let all: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &all[all.len().saturating_sub(lines)..] {
        let cut: String = line.chars().take(LOG_TAIL_LINE_CHARS_MAX).collect();
        out.push_str(&cut);
        out.push('\n');
    }
    if all.is_empty() {
        out.push_str("(empty)\n");
    }
    out
}

fn describe_nodes(nodes: &[NodeStatus]) -> String {
    let parts: Vec<String> = nodes
        .iter()
        .map(|n| {
            let mut s = format!("{}:{} term {} leader {} applied {}", n.node_id, n.role, n.term, n.leader_id, n.applied_index);
            if !n.error.is_empty() {
                s.push_str(&format!(" ({})", n.error));
            }
            s
        })
        .collect();
    format!("[{}]", parts.join("; "))
}

/// Whether every group is at the same applied index on every node that reports it.
pub fn groups_at_equal_points(answers: &[NodeChecksumResponse]) -> bool {
    let mut seen: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    answers.iter().flat_map(|a| a.groups.iter()).all(|g| *seen.entry(g.group_id).or_insert(g.applied_index) == g.applied_index)
}

/// "node 1 applied 10 checksum 0x… keys 5; …"
pub fn describe_checksums(answers: &[NodeChecksumResponse]) -> String {
    let parts: Vec<String> = answers
        .iter()
        .map(|a| {
            let groups: Vec<String> =
                a.groups.iter().map(|g| format!("g{}@{} {:#010x}/{}", g.group_id, g.applied_index, g.checksum, g.key_count)).collect();
            format!(
                "node {} applied {} checksum {:#010x} keys {} [{}]",
                a.node_id,
                a.applied_index,
                a.checksum,
                a.key_count,
                groups.join(" ")
            )
        })
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_toml_with_every_field() {
        let opts = ClusterOptions { snapshot_logs_since_last: Some(500), logs_to_keep_after_snapshot: Some(100), ..Default::default() };
        let members = vec!["1=127.0.0.1:7001".to_string(), "2=127.0.0.1:7002".to_string()];
        let source = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2)));
        let a = NodeAddrs { addr: "127.0.0.1:7002", peer_addr: "127.0.0.1:8002", advertise: "127.0.0.1:9002" };
        let text = node_config(&opts, 2, &a, source, Path::new("/tmp/x/node-2-data"), &members, Some(Path::new("/tmp/x/tls")));
        assert!(text.contains("peer_listen_addr = \"127.0.0.1:8002\"\npeer_advertise_addr = \"127.0.0.1:9002\"\n"), "{text}");
        assert!(text.contains("\n[tls]\nca_file = '/tmp/x/tls/ca.crt'\ncert_file = '/tmp/x/tls/node-2.crt'\n"), "{text}");
        assert!(text.contains("peer_source_ip = \"127.0.1.2\"\n"), "{text}");
        assert!(text.contains("node_id = 2\n"), "{text}");
        assert!(text.contains("initial_members = [\"1=127.0.0.1:7001\", \"2=127.0.0.1:7002\"]"), "{text}");
        assert!(text.contains("data_dir = '/tmp/x/node-2-data'"), "{text}");
        assert!(text.contains("snapshot_logs_since_last = 500\n"), "{text}");
        assert!(text.contains("logs_to_keep_after_snapshot = 100\n"), "{text}");
        assert!(text.contains("[limits]\nkey_bytes_max = 4096\nqualifier_bytes_max = 4096\n"), "{text}");
        assert!(text.contains("scan_limit_max = 10000\n"), "{text}");
        assert!(!text.contains("[encryption]"), "no master key, no [encryption] section: {text}");
    }

    #[test]
    fn config_names_the_master_key_file() {
        let opts = ClusterOptions { master_key_file: Some(PathBuf::from("/tmp/keys/master.key")), ..Default::default() };
        let a = NodeAddrs { addr: "127.0.0.1:7001", peer_addr: "127.0.0.1:8001", advertise: "127.0.0.1:8001" };
        let text = node_config(&opts, 1, &a, None, Path::new("/tmp/x/node-1-data"), &[], None);
        assert!(text.contains("\n[encryption]\nmaster_key_file = '/tmp/keys/master.key'\n"), "{text}");
        assert!(text.ends_with("\n[tls]\nplaintext = true\n\n[auth]\nenabled = false\n"), "{text}");
    }

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let addrs = free_loopback_addrs(50);
        let unique: std::collections::BTreeSet<&String> = addrs.iter().collect();
        assert_eq!(unique.len(), 50);
        for a in &addrs {
            let port: u16 = a.rsplit_once(':').unwrap().1.parse().unwrap();
            assert!(PORT_RANGE.contains(&port), "{a}");
        }
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "line 97\nline 98\nline 99\n");
        assert!(log_tail(&dir.path().join("missing"), 3).starts_with("(cannot read"));
    }
}
