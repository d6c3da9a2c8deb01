//! `kho demo`: a local cluster of real `kho server` processes, loaded with generated
//! citizen records, ready for the CLI.
//!
//! The data is encrypted at rest: the demo writes a master key to `DIR/keys/master.key` on
//! its first run (and reuses it later), configures every node with it, and stores the
//! citizens in the encrypted tenant `dan_cu`, in a table with hashed row keys (the CCCD
//! number never reaches the disk). `--no-encryption` runs everything in plaintext.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use futures::StreamExt as _;
use kho_proto::v1::{
    admin_client::AdminClient, data_client::DataClient, mutation, ClusterStatusRequest, ClusterStatusResponse, ColumnFamily,
    CreateTableRequest, CreateTenantRequest, ListTablesRequest, MutateRowRequest, Mutation, SetCell, TenantEncryption,
};

use crate::client::{self, Timeouts};
use crate::datagen::{Citizen, CitizenGen, DEMO_SEED, ROWS_MAX};
use crate::display;
use crate::local_cluster::{self, DemoShape, DirLock, LocalCluster, NodeLayout};
use crate::master_key::{self, MasterKeyFile};
use crate::parse::EndpointList;

pub const TENANT: &str = "dan_cu";
pub const TABLE: &str = "citizen";
pub const FAMILIES: [&str; 2] = ["identity", "residence"];

/// How long the demo waits for the cluster to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// How long the nodes get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// MutateRow requests in flight while loading.
const LOAD_IN_FLIGHT_MAX: usize = 16;
/// Attempts of one request that fails with UNAVAILABLE (no leader yet, leader changing).
const ATTEMPTS_MAX: u32 = 8;
/// Log lines shown per node when something goes wrong.
const TAIL_LINES: usize = 15;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of nodes (1..=9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Generated citizen rows to load (the same rows every time).
    #[arg(long, default_value_t = 1000)]
    pub rows: u64,
    /// Directory of the nodes' data, configs and logs; reused by the next demo.
    #[arg(long, default_value = "./kho-demo-data")]
    pub dir: PathBuf,
    /// Port of node 1; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
    /// Stop the cluster and exit once the data is loaded, instead of waiting for Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
    /// Store everything in plaintext: no master key, a plaintext tenant, plain row keys.
    /// Not possible on a directory whose data was written encrypted (the nodes refuse to
    /// start without its key).
    #[arg(long)]
    pub no_encryption: bool,
    /// Serve without TLS (`tls.plaintext = true` on every node): no encryption on the
    /// wire and no authentication of nodes. For measuring what TLS costs; never in
    /// production.
    #[arg(long)]
    pub no_tls: bool,
    /// Print the rows the demo loads (`--rows` of them) as JSON lines and exit, without
    /// starting anything: to know what the data is, or to search the disk for it.
    #[arg(long)]
    pub print_rows: bool,
}

/// One generated citizen as a JSON line (the cells the demo stores, and the row key).
pub fn citizen_json(c: &Citizen) -> String {
    serde_json::json!({
        "id": c.id,
        "ho_ten": c.ho_ten,
        "ngay_sinh": c.ngay_sinh,
        "gioi_tinh": c.gioi_tinh,
        "tinh": c.tinh,
        "dia_chi": c.dia_chi,
    })
    .to_string()
}

/// Exit code when the demo is interrupted before it is ready.
const EXIT_INTERRUPTED: u8 = 130;

pub async fn run(args: DemoArgs) -> ExitCode {
    if args.print_rows {
        if args.rows > ROWS_MAX {
            say_err!("error: --rows {} exceeds {ROWS_MAX}", args.rows);
            return ExitCode::from(2);
        }
        for c in CitizenGen::new(DEMO_SEED).take(args.rows as usize) {
            println!("{}", citizen_json(&c));
        }
        return ExitCode::SUCCESS;
    }
    let signals = match crate::server::shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            say_err!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    tokio::pin!(signals);
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            say_err!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let Prepared { dir, layouts, _lock, exe, reused, master_key, tls } = prepared;
    say!("kho demo: data directory {}", dir.display());
    if reused {
        say!("kho demo: reusing the data of a previous demo (no new bootstrap)");
    }
    say!("kho demo: {}", encryption_line(master_key.as_ref()));
    match &tls {
        Some(t) => say!("kho demo: TLS on both listeners; CA, node and admin certificates in {}", t.dir.display()),
        None => say!("kho demo: WARNING: --no-tls: plaintext on both listeners, nodes not authenticated (tls.plaintext = true)"),
    }
    let key_path = master_key.as_ref().map(|k| k.path.as_path());
    let mut cluster = tokio::select! {
        r = LocalCluster::start(&exe, &layouts, key_path, tls.as_ref().map(|t| t.dir.as_path())) => match r {
            Ok(c) => c,
            Err(e) => {
                say_err!("error: {e:#}");
                return ExitCode::from(1);
            }
        },
        sig = &mut signals => {
            say_err!("kho demo: {sig} while starting");
            return ExitCode::from(EXIT_INTERRUPTED);
        }
    };
    for n in &cluster.nodes {
        say!(
            "kho demo: node {} (pid {}) on {} (peers: {}), log {}",
            n.layout.id,
            n.pid,
            n.layout.addr,
            n.layout.peer_addr,
            n.layout.log.display()
        );
    }
    let endpoints = EndpointList(layouts.iter().map(|l| l.addr.clone()).collect());
    let target = client::Target { endpoints: endpoints.clone(), tls: tls.as_ref().map(|t| t.client.clone()), token: None, session: None };

    let setup = tokio::select! {
        r = setup(&mut cluster, &target, args.rows, master_key.is_some()) => Some(r),
        sig = &mut signals => {
            say_err!("kho demo: {sig} before the demo was ready; stopping the nodes");
            None
        }
    };
    let ready = match setup {
        None => {
            cluster.stop(STOP_GRACE).await;
            return ExitCode::from(EXIT_INTERRUPTED);
        }
        Some(Err(e)) => {
            say_err!("error: {e:#}");
            print_tails(&layouts);
            cluster.stop(STOP_GRACE).await;
            return ExitCode::from(1);
        }
        Some(Ok(ready)) => ready,
    };
    let exe_text = shell_quote(&exe.to_string_lossy());
    let tls_env = tls.as_ref().map(|t| t.env()).unwrap_or_default();
    let usage = usage_text(&exe_text, &endpoints, &tls_env, &dir, ready.first.as_deref(), ready.hashed_row_keys);
    say!("{}", usage.strip_suffix('\n').unwrap_or(&usage));
    say!("kho demo: ready");

    if args.no_wait {
        say!("kho demo: --no-wait: stopping the nodes");
        cluster.stop(STOP_GRACE).await;
        return ExitCode::SUCCESS;
    }
    loop {
        tokio::select! {
            sig = &mut signals => {
                say!("kho demo: {sig}: stopping the nodes");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                report_exits(&mut cluster);
                if cluster.running() == 0 {
                    say_err!("kho demo: every node has exited");
                    return ExitCode::from(1);
                }
            }
        }
    }
    cluster.stop(STOP_GRACE).await;
    ExitCode::SUCCESS
}

struct Prepared {
    dir: PathBuf,
    layouts: Vec<NodeLayout>,
    _lock: DirLock,
    exe: PathBuf,
    reused: bool,
    /// None with --no-encryption.
    master_key: Option<MasterKeyFile>,
    /// None with --no-tls.
    tls: Option<DemoTls>,
}

/// The demo's certificates: `DIR/tls`, made at the first start and kept.
struct DemoTls {
    dir: PathBuf,
    /// The admin's client TLS: the CA and `client-admin.crt`.
    client: client::ClientTls,
}

/// The name of the demo's admin (its client certificate's user).
pub const DEMO_ADMIN: &str = "admin";

impl DemoTls {
    /// Makes whatever is missing in `dir`: the CA, each node's certificate, the admin's.
    fn ensure(dir: &Path, layouts: &[NodeLayout]) -> anyhow::Result<DemoTls> {
        use crate::cert_cmd::{self, Subject};
        if !dir.join(cert_cmd::CA_KEY).exists() {
            cert_cmd::create_ca(dir, Duration::from_secs(DEMO_CA_VALID_DAYS * 86_400))?;
        }
        let leaf = Duration::from_secs(DEMO_CERT_VALID_DAYS * 86_400);
        for l in layouts {
            if !dir.join(format!("node-{}.crt", l.id)).exists() {
                cert_cmd::issue(dir, &Subject::Node { id: l.id, hosts: Vec::new() }, leaf)?;
            }
        }
        let (cert, key) = (dir.join(format!("client-{DEMO_ADMIN}.crt")), dir.join(format!("client-{DEMO_ADMIN}.key")));
        if !cert.exists() {
            cert_cmd::issue(dir, &Subject::User(DEMO_ADMIN.to_string()), leaf)?;
        }
        let client = client::ClientTls::load(&dir.join(cert_cmd::CA_CERT), Some(&cert), Some(&key))?;
        Ok(DemoTls { dir: dir.to_path_buf(), client })
    }

    /// `KHO_CA=… KHO_CERT=… KHO_KEY=…`, shell-quoted.
    fn env(&self) -> String {
        let q = |name: &str| shell_quote(&self.dir.join(name).to_string_lossy());
        format!(
            "KHO_CA={} KHO_CERT={} KHO_KEY={}",
            q(crate::cert_cmd::CA_CERT),
            q(&format!("client-{DEMO_ADMIN}.crt")),
            q(&format!("client-{DEMO_ADMIN}.key"))
        )
    }
}

/// Validity of the demo's CA, days.
const DEMO_CA_VALID_DAYS: u64 = 3_650;
/// Validity of the demo's node and client certificates, days.
const DEMO_CERT_VALID_DAYS: u64 = 365;

/// The line that says how the demo's data is stored.
pub fn encryption_line(key: Option<&MasterKeyFile>) -> String {
    match key {
        Some(k) => format!(
            "data encrypted at rest; master key {} ({}; keep it: the data cannot be read without it)",
            shell_quote(&k.path.to_string_lossy()),
            if k.created { "created now" } else { "reused" }
        ),
        None => "--no-encryption: data stored in plaintext".to_string(),
    }
}

/// Checks the arguments and the directory; takes the directory's lock.
fn prepare(args: &DemoArgs) -> anyhow::Result<Prepared> {
    if args.rows > ROWS_MAX {
        bail!("--rows {} is more than {ROWS_MAX}", args.rows);
    }
    // Checked before anything is written.
    local_cluster::layout(&args.dir, args.nodes, args.base_port)?;
    let exe = std::env::current_exe().context("cannot find the path of this kho binary")?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().with_context(|| format!("resolve {}", args.dir.display()))?;
    let lock = DirLock::acquire(&dir)?;
    let layouts = local_cluster::layout(&dir, args.nodes, args.base_port)?;
    let shape = DemoShape { nodes: args.nodes, base_port: args.base_port };
    let shape_file = dir.join("demo.toml");
    let reused = layouts.iter().any(|l| dir_has_entries(&l.data_dir));
    match std::fs::read_to_string(&shape_file) {
        Ok(text) => {
            let old = DemoShape::from_toml(&text).with_context(|| format!("read {}", shape_file.display()))?;
            let old_has_data = local_cluster::layout(&dir, old.nodes, old.base_port)
                .map(|ls| ls.iter().any(|l| dir_has_entries(&l.data_dir)))
                .unwrap_or(true);
            if old != shape && !old_has_data {
                // The previous demo never stored anything: nothing to keep consistent with.
                std::fs::write(&shape_file, shape.to_toml()).with_context(|| format!("write {}", shape_file.display()))?;
            } else if old != shape {
                bail!(
                    "{} holds a demo of {} node(s) on ports from {}; its members are fixed in its data. \
                     Run with --nodes {} --base-port {}, or choose another --dir",
                    dir.display(),
                    old.nodes,
                    old.base_port,
                    old.nodes,
                    old.base_port
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if reused {
                bail!("{} holds node data but no demo.toml; choose another --dir", dir.display());
            }
            std::fs::write(&shape_file, shape.to_toml()).with_context(|| format!("write {}", shape_file.display()))?;
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("read {}", shape_file.display()))),
    }
    local_cluster::check_free(&layouts)?;
    // Outside every node's data_dir (DIR/node-<id>).
    let master_key = if args.no_encryption { None } else { Some(master_key::ensure(&dir.join("keys"))?) };
    let tls = if args.no_tls { None } else { Some(DemoTls::ensure(&dir.join("tls"), &layouts)?) };
    Ok(Prepared { dir, layouts, _lock: lock, exe, reused, master_key, tls })
}

fn dir_has_entries(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false)
}

fn report_exits(cluster: &mut LocalCluster) {
    for (l, pid, status) in cluster.newly_exited() {
        match status {
            Ok(s) => say_err!("kho demo: node {} (pid {pid}) exited unexpectedly: {s}", l.id),
            Err(e) => say_err!("kho demo: node {} (pid {pid}): cannot wait: {e}", l.id),
        }
        say_err!("--- last lines of {} ---\n{}", l.log.display(), local_cluster::tail(&l.log, TAIL_LINES));
    }
}

fn print_tails(layouts: &[NodeLayout]) {
    for l in layouts {
        say_err!("--- last lines of {} ---\n{}", l.log.display(), local_cluster::tail(&l.log, TAIL_LINES));
    }
}

/// What the demo set up.
struct Ready {
    /// The first citizen id loaded, if any.
    first: Option<String>,
    /// Whether the citizen table has hashed row keys (as the cluster reports it: a table
    /// of an earlier demo keeps how it was created).
    hashed_row_keys: bool,
}

/// Waits for a leader, creates the schema, loads the rows.
async fn setup(cluster: &mut LocalCluster, target: &client::Target, rows: u64, encrypted: bool) -> anyhow::Result<Ready> {
    let status = wait_for_leader(cluster, target).await?;
    say!("kho demo: node {} is the leader (term {})", status.leader_id, status.term);
    // Writes go to the leader directly when its address is known; any node would forward.
    let leader_addr =
        status.nodes.iter().find(|n| n.node_id == status.leader_id).map(|n| n.client_address.clone()).filter(|a| !a.is_empty());
    let mut order = Vec::new();
    order.extend(leader_addr);
    order.extend(target.endpoints.0.iter().cloned());
    let conn = client::connect(&client::Target { endpoints: EndpointList(order), ..target.clone() }, Timeouts::default()).await?;
    let hashed_row_keys = create_schema(&mut conn.admin(), encrypted).await?;
    load(&conn.data(), rows).await?;
    let first = CitizenGen::new(DEMO_SEED).take(usize::try_from(rows)?).next().map(|c| c.id);
    Ok(Ready { first, hashed_row_keys })
}

async fn wait_for_leader(cluster: &mut LocalCluster, endpoints: &client::Target) -> anyhow::Result<ClusterStatusResponse> {
    let start = Instant::now();
    let quick = Timeouts { connect: Duration::from_secs(1), request: Duration::from_secs(3) };
    let mut last_error = String::from("no answer yet");
    say!("kho demo: waiting for a leader (up to {} s)", LEADER_WAIT.as_secs());
    while start.elapsed() < LEADER_WAIT {
        let exited = cluster.newly_exited();
        if !exited.is_empty() {
            let mut msg = Vec::new();
            for (l, pid, status) in exited {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                msg.push(format!("node {} (pid {pid}) exited during start-up: {status}", l.id));
            }
            bail!("{}", msg.join("; "));
        }
        match client::connect(endpoints, quick).await {
            Ok(conn) => match conn.admin().cluster_status(ClusterStatusRequest {}).await {
                Ok(r) if r.get_ref().leader_id != 0 => return Ok(r.into_inner()),
                Ok(_) => last_error = "the cluster reports no leader".into(),
                Err(s) => last_error = display::status_line(&s),
            },
            Err(e) => last_error = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(anyhow!("no leader after {} s (last: {last_error})", LEADER_WAIT.as_secs()))
}

/// Retries a request while it fails with UNAVAILABLE (no leader, leader changing), a
/// bounded number of times with growing pauses.
async fn with_retry<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < ATTEMPTS_MAX => {
                tracing::debug!(attempt, status = %display::status_line(&s), "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Creates the tenant (default encryption: encrypted when the nodes have a master key) and
/// the table (with hashed row keys when `encrypted`). Returns whether the table has hashed
/// row keys.
/// Shards the demo's table starts in (`CreateTable.initial_shards`): `kho shard list` shows
/// them, each with its share of the sample rows.
const DEMO_SHARDS: u32 = 4;

async fn create_schema(admin: &mut AdminClient<client::Svc>, encrypted: bool) -> anyhow::Result<bool> {
    let r = with_retry(|| {
        let mut a = admin.clone();
        let req = CreateTenantRequest { name: TENANT.into(), encryption: TenantEncryption::Default as i32 };
        async move { a.create_tenant(req).await }
    })
    .await;
    match r {
        Ok(_) => say!("kho demo: created tenant {TENANT}"),
        Err(s) if s.code() == tonic::Code::AlreadyExists => say!("kho demo: tenant {TENANT} exists"),
        Err(s) => return Err(anyhow!("create tenant {TENANT}: {}", display::status_line(&s))),
    }
    let r = with_retry(|| {
        let mut a = admin.clone();
        let req = CreateTableRequest {
            tenant: TENANT.into(),
            name: TABLE.into(),
            families: FAMILIES.iter().map(|f| ColumnFamily { name: (*f).into() }).collect(),
            hashed_row_keys: encrypted,
            split_rows: Vec::new(),
            initial_shards: DEMO_SHARDS,
        };
        async move { a.create_table(req).await }
    })
    .await;
    let how = if encrypted { format!(", hashed row keys, {DEMO_SHARDS} shards") } else { format!(", {DEMO_SHARDS} shards") };
    match r {
        Ok(_) => say!("kho demo: created table {TENANT}/{TABLE} (families {}{how})", FAMILIES.join(", ")),
        Err(s) if s.code() == tonic::Code::AlreadyExists => say!("kho demo: table {TENANT}/{TABLE} exists"),
        Err(s) => return Err(anyhow!("create table {TENANT}/{TABLE}: {}", display::status_line(&s))),
    }
    let r = with_retry(|| {
        let mut a = admin.clone();
        async move { a.list_tables(ListTablesRequest { tenant: TENANT.into() }).await }
    })
    .await
    .map_err(|s| anyhow!("list the tables of {TENANT}: {}", display::status_line(&s)))?;
    let table = r
        .get_ref()
        .tables
        .iter()
        .find(|t| t.name == TABLE)
        .ok_or_else(|| anyhow!("table {TENANT}/{TABLE} is not listed after its creation"))?;
    Ok(table.hashed_row_keys)
}

/// The MutateRow request that stores one citizen.
pub fn citizen_request(c: &Citizen) -> MutateRowRequest {
    MutateRowRequest {
        tenant: TENANT.into(),
        table: TABLE.into(),
        row_key: c.id.as_bytes().to_vec(),
        mutations: c
            .cells()
            .iter()
            .map(|(family, qualifier, value)| Mutation {
                mutation: Some(mutation::Mutation::SetCell(SetCell {
                    family: (*family).into(),
                    qualifier: qualifier.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                })),
            })
            .collect(),
    }
}

async fn load(data: &DataClient<client::Svc>, rows: u64) -> anyhow::Result<()> {
    if rows == 0 {
        say!("kho demo: --rows 0: nothing to load");
        return Ok(());
    }
    let start = Instant::now();
    say!("kho demo: loading {rows} rows into {TENANT}/{TABLE} ({LOAD_IN_FLIGHT_MAX} in flight)");
    let mut results = futures::stream::iter(CitizenGen::new(DEMO_SEED).take(usize::try_from(rows)?))
        .map(|c| {
            let data = data.clone();
            async move {
                let req = citizen_request(&c);
                with_retry(|| {
                    let mut d = data.clone();
                    let req = req.clone();
                    async move { d.mutate_row(req).await }
                })
                .await
                .map_err(|s| anyhow!("row {}: {}", c.id, display::status_line(&s)))
            }
        })
        .buffer_unordered(LOAD_IN_FLIGHT_MAX);
    let mut done: u64 = 0;
    let mut reported_tenths = 0;
    while let Some(r) = results.next().await {
        r?;
        done += 1;
        let tenths = done * 10 / rows;
        if tenths > reported_tenths {
            reported_tenths = tenths;
            say!("kho demo: loaded {done}/{rows} rows ({}%)", tenths * 10);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    say!("kho demo: loaded {rows} rows in {secs:.1} s ({:.0} rows/s)", rows as f64 / secs.max(0.001));
    Ok(())
}

/// Quotes a word for a POSIX shell when it needs quoting.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:,=@%+".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What the demo prints when it is ready: where things are and commands to try. A table
/// with hashed row keys cannot be scanned, so scans are suggested only without them.
pub fn usage_text(exe: &str, endpoints: &EndpointList, tls_env: &str, dir: &Path, first: Option<&str>, hashed_row_keys: bool) -> String {
    let eps = endpoints.0.join(",");
    let t = format!("--tenant {TENANT} --table {TABLE}");
    let mut s = String::new();
    s.push_str(&format!("\nkho demo: endpoints {eps}\n"));
    s.push_str(&format!("kho demo: data, configs and logs in {}\n", shell_quote(&dir.to_string_lossy())));
    match first {
        Some(id) => s.push_str(&format!("kho demo: first citizen id {id}\n")),
        None => s.push_str("kho demo: no rows loaded\n"),
    }
    s.push_str("\nEvery kho command then works as the demo's admin without flags:\n");
    s.push_str(&format!("  export {}\n", format!("KHO_ENDPOINTS={eps} {tls_env}").trim_end()));
    s.push_str("Try:\n");
    let mut cmd = |c: String| {
        s.push_str("  ");
        s.push_str(&c);
        s.push('\n');
    };
    let with = |command: &str, rest: &str| format!("{exe} {command} {rest}").trim_end().to_string();
    if let Some(id) = first {
        cmd(with("row read", &format!("{t} --row {id}")));
    }
    if !hashed_row_keys {
        cmd(with("row scan", &format!("{t} --limit 5")));
        cmd(with("row scan", &format!("{t} --prefix 079 --family identity --limit 5")));
    }
    cmd(with("kv put", &format!("{t} --family identity ghi-chu {}", shell_quote("xin chào"))));
    cmd(with("kv get", &format!("{t} --family identity ghi-chu")));
    cmd(with("tenant list", ""));
    cmd(with("table list", &format!("--tenant {TENANT}")));
    cmd(with("keys status", &format!("--tenant {TENANT}")));
    cmd(with("cluster status", ""));
    cmd(with("shard list", ""));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/kho"), "/usr/bin/kho");
        assert_eq!(shell_quote("/my dir/kho"), "'/my dir/kho'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("xin chào"), "'xin chào'");
    }

    #[test]
    fn usage_has_the_promised_commands() {
        let eps = EndpointList(vec!["127.0.0.1:7101".into(), "127.0.0.1:7102".into()]);
        let s = usage_text("/opt/kho", &eps, "KHO_CA=/d/ca.crt", Path::new("/tmp/d"), Some("001085012345"), true);
        assert!(s.contains("\n  export KHO_ENDPOINTS=127.0.0.1:7101,127.0.0.1:7102 KHO_CA=/d/ca.crt\n"), "{s}");
        assert!(s.contains("/opt/kho row read --tenant dan_cu --table citizen --row 001085012345\n"), "{s}");
        // The table has hashed row keys: scans are refused, so none is suggested.
        assert!(!s.contains("row scan") && !s.contains("kv scan"), "{s}");
        assert!(s.contains("/opt/kho keys status --tenant dan_cu\n"), "{s}");
        assert!(s.contains("/opt/kho cluster status\n"), "{s}");
        assert!(s.contains("/opt/kho shard list\n"), "{s}");
        assert!(s.contains("/opt/kho kv get") && s.contains("/opt/kho table list"), "{s}");
        assert!(s.contains("first citizen id 001085012345"));
    }

    #[test]
    fn usage_without_hashed_row_keys_suggests_scans() {
        let eps = EndpointList(vec!["127.0.0.1:7101".into()]);
        let s = usage_text("/opt/kho", &eps, "KHO_CA=/d/ca.crt", Path::new("/tmp/d"), None, false);
        assert!(s.contains("/opt/kho row scan --tenant dan_cu --table citizen --limit 5\n"), "{s}");
        assert!(s.contains("/opt/kho keys status --tenant dan_cu\n"), "{s}");
        assert!(s.contains("no rows loaded") && !s.contains("row read"), "{s}");
    }

    #[test]
    fn encryption_line_names_the_key_file() {
        let k = MasterKeyFile { path: PathBuf::from("/tmp/my demo/keys/master.key"), created: true };
        let line = encryption_line(Some(&k));
        assert!(line.starts_with("data encrypted at rest; master key '/tmp/my demo/keys/master.key' (created now"), "{line}");
        let k = MasterKeyFile { created: false, ..k };
        assert!(encryption_line(Some(&k)).contains("(reused;"));
        assert!(encryption_line(None).contains("plaintext"));
    }

    #[test]
    fn citizen_request_sets_five_cells() {
        let c = CitizenGen::new(DEMO_SEED).next().unwrap();
        let r = citizen_request(&c);
        assert_eq!(r.row_key, c.id.as_bytes());
        assert_eq!(r.mutations.len(), 5);
        let families: Vec<String> = r
            .mutations
            .iter()
            .filter_map(|m| match &m.mutation {
                Some(mutation::Mutation::SetCell(s)) => Some(s.family.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(families, ["identity", "identity", "identity", "residence", "residence"]);
    }
}
