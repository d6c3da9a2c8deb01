//! Encryption at rest (issue 5, docs/SECURITY.md) through real clusters with a master key:
//! no plaintext value or hashed row key in any file of any data directory (and a control
//! proving the byte search finds plaintext), key rotation with online re-encryption (also
//! across a leader restart), a node that refuses a wrong or missing master key without
//! touching its data, and tables with hashed row keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kho_cluster_tests::disk::{files_under, search_files, SearchReport, TreeState};
use kho_cluster_tests::kv::{batch_get_all, scan_retry, scan_rows};
use kho_cluster_tests::{
    assert_checksums_equal, create_table_with, create_tenant_with_encryption, expect_status, is_retryable, ok, retry_call, rpc, test_seed,
    Cluster, ClusterOptions, KvTarget, MasterKey, RetryPolicy, ServerRun,
};
use kho_proto::v1::mutation::Mutation as M;
use kho_proto::v1::write_op::Op;
use kho_proto::v1::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::{Code, Status};

/// Requests in flight at once while loading or reading back many rows.
const LOAD_CONCURRENCY: usize = 8;
/// Shortest plaintext searched for, bytes: shorter strings could match binary data by chance.
const NEEDLE_BYTES_MIN: usize = 12;
/// `raft.snapshot_logs_since_last` of the no-plaintext test: low, so that the leader purges
/// its log during the loading and a follower that missed it must catch up by snapshot.
const SNAPSHOT_EVERY_ENTRIES: u64 = 200;
/// `raft.logs_to_keep_after_snapshot` of the no-plaintext test, log entries.
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 20;
/// Longest wait for the follower that missed the loading to receive a snapshot and stop at
/// the fault point in the middle of its install, seconds.
const SNAPSHOT_INSTALL_WAIT_S: u64 = 120;
/// The fault point in the middle of a snapshot install (`raft/src/snapshot_store.rs`).
const SNAPSHOT_INSTALL_FAILPOINT: &str = "snapshot-install-midway";
/// Exit status of a node stopped by a storage failure (`kho_raft::fatal`).
const STORAGE_FAILURE_EXIT_CODE: i32 = 74;
/// Longest wait for a re-encryption to finish, seconds.
const REENCRYPTION_WAIT_S: u64 = 60;
/// Pause between two TenantKeyStatus polls while waiting for a re-encryption, milliseconds.
const STATUS_POLL_MS: u64 = 100;
/// Timeout of one TenantKeyStatus call (it counts the tenant's values on the leader), ms.
const STATUS_CALL_TIMEOUT_MS: u64 = 5_000;
/// Longest a refused start-up may take before the node exits, seconds.
const REFUSAL_WAIT_S: u64 = 30;
/// Longest run of one `kho` CLI command, seconds.
const CLI_TIMEOUT_S: u64 = 60;
/// CompactNode flushes and compacts a node's storage: slower than other calls.
const COMPACT_POLICY: RetryPolicy =
    RetryPolicy { attempts_max: 5, backoff_initial_ms: 200, backoff_max_ms: 1_000, call_timeout_ms: 60_000 };

// ---------------------------------------------------------------------------------------
// Master keys

/// A directory for a test's master key files, outside every node's data directory. Declare
/// it before the cluster, so that it outlives the nodes.
fn key_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("kho-keys-").tempdir().expect("create a directory for key files")
}

/// Writes `key` to `dir/name` with permissions `mode` and returns the path.
fn write_key(dir: &Path, name: &str, key: &MasterKey, mode: u32) -> PathBuf {
    let path = dir.join(name);
    key.write_file(&path, mode).unwrap_or_else(|e| panic!("write key file {}: {e}", path.display()));
    path
}

fn encrypted_options(key_file: &Path) -> ClusterOptions {
    ClusterOptions { master_key_file: Some(key_file.to_path_buf()), ..ClusterOptions::default() }
}

// ---------------------------------------------------------------------------------------
// Citizens: rows shaped like `kho demo`'s (tools/src/datagen.rs), with unique names.

const FAMILY_NAMES: &[&str] =
    &["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"];
const MIDDLE_NAMES: &[&str] = &["Văn", "Thị", "Hữu", "Đức", "Minh", "Thanh", "Ngọc"];
const GIVEN_NAMES: &[&str] = &[
    "An",
    "Bình",
    "Cường",
    "Dũng",
    "Khánh",
    "Nam",
    "Phúc",
    "Quang",
    "Tuấn",
    "Việt",
    "Hà",
    "Hạnh",
    "Hương",
    "Lan",
    "Linh",
    "Mai",
    "Thảo",
    "Trang",
    "Yến",
    "Minh Khai",
];
const PROVINCES: &[(&str, &str)] = &[
    ("001", "Hà Nội"),
    ("079", "Thành phố Hồ Chí Minh"),
    ("048", "Đà Nẵng"),
    ("031", "Hải Phòng"),
    ("092", "Cần Thơ"),
    ("040", "Nghệ An"),
];
const STREETS: &[&str] = &["Lê Lợi", "Trần Hưng Đạo", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt", "Quang Trung"];
/// Families of every citizen table.
const CITIZEN_FAMILIES: &[&str] = &["identity", "residence"];
/// The qualifiers of a citizen row's MutateRow cells, in (family, qualifier) order.
const CITIZEN_QUALIFIERS: &[&str] = &["ho_ten", "ngay_sinh", "dia_chi", "tinh"];

#[derive(Debug, Clone)]
struct Citizen {
    /// 12 digits shaped like a CCCD number: province (3), gender/century (1), year (2), serial (6).
    id: String,
    /// `<family> <middle> <given> <serial>`: unique within a run.
    ho_ten: String,
    ngay_sinh: String,
    tinh: &'static str,
    dia_chi: String,
}

impl Citizen {
    /// (family, qualifier, value) of the MutateRow cells, in ReadRow order.
    fn cells(&self) -> Vec<(String, String, String)> {
        vec![
            ("identity".into(), "ho_ten".into(), self.ho_ten.clone()),
            ("identity".into(), "ngay_sinh".into(), self.ngay_sinh.clone()),
            ("residence".into(), "dia_chi".into(), self.dia_chi.clone()),
            ("residence".into(), "tinh".into(), self.tinh.to_string()),
        ]
    }
}

/// `count` citizens with ids not in `taken` (which grows) and name serials
/// `first_serial..first_serial + count`: two calls with disjoint serial ranges give
/// distinct names, none a substring of another's.
fn citizens(rng: &mut StdRng, count: u32, first_serial: u32, taken: &mut BTreeSet<String>) -> Vec<Citizen> {
    assert!(first_serial >= 1000 && first_serial + count <= 10_000, "serials have four digits");
    let mut out = Vec::with_capacity(count as usize);
    for serial in first_serial..first_serial + count {
        let (code, tinh) = PROVINCES[rng.random_range(0..PROVINCES.len())];
        let year: u32 = rng.random_range(1945..=2007);
        let female = rng.random_bool(0.5);
        let gender_century = (if year >= 2000 { 2 } else { 0 }) + u32::from(female);
        let id = loop {
            let id = format!("{code}{gender_century}{:02}{:06}", year % 100, rng.random_range(0..1_000_000u32));
            if taken.insert(id.clone()) {
                break id;
            }
        };
        let ho_ten = format!("{} {} {} {serial:04}", pick(rng, FAMILY_NAMES), pick(rng, MIDDLE_NAMES), pick(rng, GIVEN_NAMES));
        assert!(ho_ten.len() >= NEEDLE_BYTES_MIN, "name `{ho_ten}` is shorter than {NEEDLE_BYTES_MIN} bytes");
        let dia_chi = format!("Số {}, đường {}, tổ dân phố {}", rng.random_range(1..300), pick(rng, STREETS), rng.random_range(1..40));
        let ngay_sinh = format!("{year:04}-{:02}-{:02}", rng.random_range(1..=12), rng.random_range(1..=28));
        out.push(Citizen { id, ho_ten, ngay_sinh, tinh, dia_chi });
    }
    out
}

fn pick(rng: &mut StdRng, items: &[&'static str]) -> &'static str {
    items[rng.random_range(0..items.len())]
}

fn set_cell(family: &str, qualifier: &str, value: &str) -> Mutation {
    Mutation { mutation: Some(M::SetCell(SetCell { family: family.into(), qualifier: qualifier.into(), value: value.into() })) }
}

/// Cells as (family, qualifier, value) strings, for comparisons.
fn cells(row: &Row) -> Vec<(String, String, String)> {
    row.cells
        .iter()
        .map(|c| (c.family.clone(), String::from_utf8_lossy(&c.qualifier).into_owned(), String::from_utf8_lossy(&c.value).into_owned()))
        .collect()
}

/// Writes every citizen into `tenant/table` as `kho demo` does (one MutateRow with its
/// cells), plus a Put of its name under its row key in family `identity` (the key-value
/// view, for Get). Requests go to the running nodes in turn, `LOAD_CONCURRENCY` at a time.
async fn load_citizens(cluster: &Cluster, tenant: &str, table: &str, citizens: &[Citizen]) {
    let ids = cluster.running_ids();
    let failures: Vec<String> = futures::stream::iter(citizens.iter().enumerate())
        .map(|(i, c)| {
            let via = ids[i % ids.len()];
            let client = cluster.data_client(via);
            let mutations = c.cells().iter().map(|(f, q, v)| set_cell(f, q, v)).collect();
            let mutate = MutateRowRequest { tenant: tenant.into(), table: table.into(), row_key: c.id.as_bytes().to_vec(), mutations };
            let put = PutRequest {
                tenant: tenant.into(),
                table: table.into(),
                key: c.id.as_bytes().to_vec(),
                value: c.ho_ten.as_bytes().to_vec(),
                family: "identity".into(),
            };
            async move {
                if let Err(e) = rpc!(client, mutate_row, mutate) {
                    return Some(format!("MutateRow {tenant}/{table} {} via node {via}: {e}", c.id));
                }
                if let Err(e) = rpc!(client, put, put) {
                    return Some(format!("Put {tenant}/{table} {} via node {via}: {e}", c.id));
                }
                None
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    if !failures.is_empty() {
        cluster.fail(format!("loading {} citizens into {tenant}/{table}: {} failed: {failures:#?}", citizens.len(), failures.len()));
    }
    println!("loaded {} citizens into {tenant}/{table}", citizens.len());
}

/// Reads every citizen back through the nodes in turn: ReadRow returns the requested row key
/// and the cells as written.
async fn verify_citizens(cluster: &Cluster, tenant: &str, table: &str, citizens: &[Citizen]) {
    let ids = cluster.ids();
    let problems: Vec<String> = futures::stream::iter(citizens.iter().enumerate())
        .map(|(i, c)| {
            let via = ids[i % ids.len()];
            let client = cluster.data_client(via);
            let req = ReadRowRequest {
                tenant: tenant.into(),
                table: table.into(),
                row_key: c.id.as_bytes().to_vec(),
                qualifiers: CITIZEN_QUALIFIERS.iter().map(|q| q.as_bytes().to_vec()).collect(),
                ..Default::default()
            };
            async move {
                let what = format!("ReadRow {tenant}/{table} {} via node {via}", c.id);
                match rpc!(client, read_row, req) {
                    Err(e) => Some(format!("{what}: {e}")),
                    Ok(resp) if !resp.found => Some(format!("{what}: not found")),
                    Ok(resp) => {
                        let row = resp.row.unwrap_or_default();
                        if row.key != c.id.as_bytes() {
                            Some(format!("{what}: row key {:?}, not the requested one", String::from_utf8_lossy(&row.key)))
                        } else if cells(&row) != c.cells() {
                            Some(format!("{what}: cells {:?}, expected {:?}", cells(&row), c.cells()))
                        } else {
                            None
                        }
                    }
                }
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    if !problems.is_empty() {
        let shown = &problems[..problems.len().min(10)];
        cluster.fail(format!("{} of {} citizens of {tenant}/{table} read back wrong: {shown:#?}", problems.len(), citizens.len()));
    }
}

/// Gets the name of every citizen (BatchGet of the key-value view, family `identity`) and of
/// every `every`-th one with Get, through node `via`.
async fn verify_names_by_get(cluster: &Cluster, via: u64, tenant: &str, table: &str, citizens: &[Citizen], every: usize) {
    let target = KvTarget::new(tenant, table, "identity");
    let keys: Vec<Vec<u8>> = citizens.iter().map(|c| c.id.as_bytes().to_vec()).collect();
    let items = batch_get_all(&cluster.data_client(via), &target, &keys, &RetryPolicy::STEADY)
        .await
        .unwrap_or_else(|e| cluster.fail(format!("BatchGet {tenant}/{table} via node {via}: {e}")));
    let wrong: Vec<String> = items
        .iter()
        .zip(citizens)
        .filter(|(item, c)| !item.found || item.value != c.ho_ten.as_bytes())
        .map(|(item, c)| format!("{}: found {}, value {:?}", c.id, item.found, String::from_utf8_lossy(&item.value)))
        .collect();
    if !wrong.is_empty() {
        cluster.fail(format!(
            "BatchGet {tenant}/{table} via node {via}: {} names wrong: {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        ));
    }
    let client = cluster.data_client(via);
    for c in citizens.iter().step_by(every) {
        let req = GetRequest {
            tenant: tenant.into(),
            table: table.into(),
            key: c.id.as_bytes().to_vec(),
            family: "identity".into(),
            ..Default::default()
        };
        let got = ok(cluster, &format!("Get {tenant}/{table} {} via node {via}", c.id), rpc!(client, get, req));
        assert!(
            got.found && got.value == c.ho_ten.as_bytes(),
            "Get {tenant}/{table} {} via node {via}: found {}, value {:?}, expected {:?}",
            c.id,
            got.found,
            String::from_utf8_lossy(&got.value),
            c.ho_ten
        );
    }
}

// ---------------------------------------------------------------------------------------
// Searching the data directories

/// Plaintext to look for in the files, each with a label for the report.
#[derive(Default)]
struct Needles {
    labels: Vec<String>,
    bytes: Vec<Vec<u8>>,
}

impl Needles {
    fn add(&mut self, label: String, bytes: &[u8]) {
        assert!(bytes.len() >= NEEDLE_BYTES_MIN, "needle {label} is {} bytes, fewer than {NEEDLE_BYTES_MIN}", bytes.len());
        self.labels.push(label);
        self.bytes.push(bytes.to_vec());
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// A file of a snapshot, under `snapshots/<group>/`: a received stream being installed
/// (`installing.kho`) or being received (`incoming-*.tmp`), or anything named `snap-*` (what
/// the previous build kept: checkpoints and stream files). A snapshot a node builds is a
/// view of its live DB and no file; nothing else is kept.
fn is_snapshot_file(path: &Path) -> bool {
    let under_snapshots = path.ancestors().any(|a| a.file_name().is_some_and(|n| n == "snapshots"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    under_snapshots && (name == "installing.kho" || name.starts_with("incoming-") || path.to_string_lossy().contains("/snap-"))
}

/// The searched files that belong to snapshots.
fn snapshot_files_searched(report: &SearchReport) -> Vec<&Path> {
    report.searched.iter().map(|(p, _)| p.as_path()).filter(|p| is_snapshot_file(p)).collect()
}

/// Every file under every node's data directory (running or not), searched for every needle.
fn search_data_dirs(cluster: &Cluster, needles: &Needles) -> SearchReport {
    let mut files = Vec::new();
    for id in cluster.ids() {
        let dir = cluster.data_dir(id);
        let listed = files_under(dir).unwrap_or_else(|e| cluster.fail(format!("list the files under {}: {e}", dir.display())));
        assert!(!listed.is_empty(), "node {id}'s data directory {} holds no file", dir.display());
        files.extend(listed);
    }
    search_files(&files, &needles.bytes).unwrap_or_else(|e| cluster.fail(format!("searching the data directories: {e}")))
}

/// The searched files, relative to the cluster directory, with sizes: what was looked at.
fn describe_files(cluster: &Cluster, report: &SearchReport) -> String {
    let parts: Vec<String> = report
        .searched
        .iter()
        .map(|(p, len)| format!("{} ({len} B)", p.strip_prefix(cluster.dir()).unwrap_or(p.as_path()).display()))
        .collect();
    parts.join(", ")
}

/// Fails, naming every file and offset, if any needle below `secret_count` was found.
fn assert_no_secret_found(cluster: &Cluster, when: &str, report: &SearchReport, needles: &Needles, secret_count: usize) {
    let leaks = SearchReport {
        searched: Vec::new(),
        vanished: Vec::new(),
        hits: report.hits.iter().filter(|h| h.needle < secret_count).cloned().collect(),
    };
    if !leaks.hits.is_empty() {
        cluster.fail(format!(
            "{when}: {} occurrences of plaintext of the encrypted tenant on disk (searched {}):\n{}",
            leaks.hits.len(),
            report.summary(),
            leaks.describe_hits(&needles.labels)
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Key status

/// One TenantKeyStatus call for `tenant` through node `via`, bounded, not retried.
async fn tenant_keys_once(cluster: &Cluster, via: u64, tenant: &str) -> Result<TenantKeys, Status> {
    let mut admin = cluster.admin_client(via);
    let req = TenantKeyStatusRequest { tenant: tenant.into(), ..Default::default() };
    let resp = match tokio::time::timeout(Duration::from_millis(STATUS_CALL_TIMEOUT_MS), admin.tenant_key_status(req)).await {
        Ok(result) => result?.into_inner(),
        Err(_) => return Err(Status::deadline_exceeded(format!("no answer within {STATUS_CALL_TIMEOUT_MS} ms"))),
    };
    let listed: Vec<String> = resp.tenants.iter().map(|t| t.tenant.clone()).collect();
    resp.tenants
        .into_iter()
        .find(|t| t.tenant == tenant)
        .ok_or_else(|| Status::internal(format!("TenantKeyStatus of `{tenant}` lists only {listed:?}")))
}

/// TenantKeyStatus for `tenant`, retried like every other call; the test fails on error.
async fn tenant_keys(cluster: &Cluster, via: u64, tenant: &str) -> TenantKeys {
    let admin = cluster.admin_client(via);
    let resp = ok(
        cluster,
        &format!("TenantKeyStatus {tenant} via node {via}"),
        rpc!(admin, tenant_key_status, TenantKeyStatusRequest { tenant: tenant.into(), ..Default::default() }),
    );
    let listed: Vec<String> = resp.tenants.iter().map(|t| t.tenant.clone()).collect();
    resp.tenants
        .into_iter()
        .find(|t| t.tenant == tenant)
        .unwrap_or_else(|| cluster.fail(format!("TenantKeyStatus of `{tenant}` lists only {listed:?}")))
}

fn version(keys: &TenantKeys, v: u32) -> Option<&KeyVersionStatus> {
    keys.versions.iter().find(|s| s.version == v)
}

/// Fails unless version `v` of `keys` is in `state` and seals `values` values.
fn expect_version(cluster: &Cluster, what: &str, keys: &TenantKeys, v: u32, state: &str, values: u64) {
    match version(keys, v) {
        Some(s) if s.state == state && s.values == values => {}
        other => cluster.fail(format!("{what}: expected version {v} {state} with {values} values, got {other:?}; whole status {keys:?}")),
    }
}

/// Fails unless `keys` is encrypted, at `current`, with no plaintext value.
fn expect_current(cluster: &Cluster, what: &str, keys: &TenantKeys, current: u32) {
    if !keys.encrypted || keys.current_version != current || keys.plaintext_values != 0 {
        cluster.fail(format!("{what}: expected an encrypted tenant at version {current} without plaintext values, got {keys:?}"));
    }
}

/// Polls TenantKeyStatus through the running nodes in turn until the re-encryption to
/// `target` is done; returns that status. Fails after `REENCRYPTION_WAIT_S`.
async fn wait_reencryption_done(cluster: &Cluster, tenant: &str, target: u32) -> TenantKeys {
    let deadline = Instant::now() + Duration::from_secs(REENCRYPTION_WAIT_S);
    let mut last = String::from("no answer yet");
    let mut polls = 0usize;
    while Instant::now() < deadline {
        cluster.check_alive();
        let running = cluster.running_ids();
        let via = running[polls % running.len()];
        polls += 1;
        match tenant_keys_once(cluster, via, tenant).await {
            Ok(keys) => {
                if keys.reencryption.as_ref().is_some_and(|r| r.target_version == target && r.done) {
                    return keys;
                }
                last = format!("via node {via}: {keys:?}");
            }
            Err(e) if is_retryable(&e) => last = format!("via node {via}: {e}"),
            Err(e) => cluster.fail(format!("TenantKeyStatus {tenant} via node {via}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(STATUS_POLL_MS)).await;
    }
    cluster.fail(format!("re-encryption of `{tenant}` to version {target} not done within {REENCRYPTION_WAIT_S} s; last: {last}"))
}

// ---------------------------------------------------------------------------------------
// Key-value helpers

/// Puts every pair into `target`, requests to the running nodes in turn, `LOAD_CONCURRENCY`
/// at a time.
async fn put_all(cluster: &Cluster, target: &KvTarget, pairs: &[(Vec<u8>, Vec<u8>)]) {
    let ids = cluster.running_ids();
    let failures: Vec<String> = futures::stream::iter(pairs.iter().enumerate())
        .map(|(i, (key, value))| {
            let via = ids[i % ids.len()];
            let client = cluster.data_client(via);
            let what = format!("Put {} via node {via}", String::from_utf8_lossy(key));
            let req = PutRequest {
                tenant: target.tenant.clone(),
                table: target.table.clone(),
                key: key.clone(),
                value: value.clone(),
                family: target.family.clone(),
            };
            async move { rpc!(client, put, req).err().map(|e| format!("{what}: {e}")) }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    if !failures.is_empty() {
        cluster.fail(format!("{} of {} puts failed: {:#?}", failures.len(), pairs.len(), &failures[..failures.len().min(10)]));
    }
}

/// Writes every pair into `target` with Write requests of `batch` puts each, to the nodes
/// in turn, a few at a time.
async fn write_all(cluster: &Cluster, target: &KvTarget, pairs: &[(Vec<u8>, Vec<u8>)], batch: usize) {
    /// Write requests in flight at once (each carries `batch` values).
    const WRITES_IN_FLIGHT: usize = 4;
    let ids = cluster.ids();
    let failures: Vec<String> = futures::stream::iter(pairs.chunks(batch).enumerate())
        .map(|(i, chunk)| {
            let via = ids[i % ids.len()];
            let client = cluster.data_client(via);
            let ops = chunk
                .iter()
                .map(|(key, value)| WriteOp {
                    op: Some(Op::Put(PutOp { key: key.clone(), value: value.clone(), family: target.family.clone() })),
                })
                .collect();
            let req = WriteRequest { tenant: target.tenant.clone(), table: target.table.clone(), ops };
            let what = format!("Write of {} puts from {} via node {via}", chunk.len(), String::from_utf8_lossy(&chunk[0].0));
            async move { rpc!(client, write, req).err().map(|e| format!("{what}: {e}")) }
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    if !failures.is_empty() {
        cluster.fail(format!("{} Write requests failed: {:#?}", failures.len(), &failures[..failures.len().min(10)]));
    }
}

/// Reads every key of `model` through node `via` (BatchGet) and compares the values.
async fn verify_model(cluster: &Cluster, via: u64, target: &KvTarget, model: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str) {
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    let items = batch_get_all(&cluster.data_client(via), target, &keys, &RetryPolicy::STEADY)
        .await
        .unwrap_or_else(|e| cluster.fail(format!("{when}: BatchGet via node {via}: {e}")));
    let wrong: Vec<String> = items
        .iter()
        .filter(|item| !item.found || item.value != model[&item.key])
        .map(|item| {
            format!(
                "{}: found {}, {} bytes (expected {} bytes)",
                String::from_utf8_lossy(&item.key),
                item.found,
                item.value.len(),
                model[&item.key].len()
            )
        })
        .collect();
    if !wrong.is_empty() {
        cluster.fail(format!(
            "{when}: via node {via}, {} of {} values read back wrong: {:#?}",
            wrong.len(),
            model.len(),
            &wrong[..wrong.len().min(10)]
        ));
    }
    println!("{when}: all {} values read back via node {via}", model.len());
}

/// Runs the `kho` CLI with `args`, bounded by `CLI_TIMEOUT_S` (killed, by its own pid, if
/// it takes longer).
async fn run_cli(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(cluster.kho_command());
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(CLI_TIMEOUT_S), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => cluster.fail(format!("cannot run kho {args:?}: {e}")),
        Err(_) => cluster.fail(format!("kho {args:?} did not finish within {CLI_TIMEOUT_S} s")),
    }
}

/// Whether some line of `text` starts, after blanks, with the whitespace-separated words
/// `words` (a row of a table printed by the CLI, whatever its column widths).
fn has_row(text: &str, words: &[&str]) -> bool {
    text.lines().any(|line| {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        tokens.len() >= words.len() && tokens[..words.len()] == *words
    })
}

// ---------------------------------------------------------------------------------------
// 1. No plaintext on disk, and the control that proves the search finds plaintext.

/// The encrypted tenant (default encryption on a cluster with a master key) and its tables.
const DAN_CU: &str = "dan_cu";
const CITIZEN: &str = "citizen";
const GHI_CHU: &str = "ghi_chu";
/// A plaintext tenant in the same cluster: the control.
const CONG_KHAI: &str = "cong_khai";
/// Rows of each citizen table.
const SECRET_CITIZENS: u32 = 300;
const PUBLIC_CITIZENS: u32 = 100;
/// Values of the encrypted tenant's plain (not hashed) table.
const NOTES: usize = 10;

/// The acceptance test, with its control. One 3-node cluster with a master key and
/// snapshots every `SNAPSHOT_EVERY_ENTRIES` log entries holds an encrypted tenant `dan_cu`
/// (table `citizen` with hashed row keys, table `ghi_chu` without) and a plaintext tenant
/// `cong_khai`. Every file under every node's data directory (SST, WAL `*.log`, MANIFEST,
/// LOG, OPTIONS, snapshot files, the ENCRYPTION marker) is searched byte by byte:
/// - right after loading, while the WAL holds every log entry: no name, no CCCD row key and
///   no note of `dan_cu` anywhere;
/// - after CompactNode on every node (the applied data, written without the WAL, is now in
///   SST files): still nothing of `dan_cu`, including its 100 random binary tokens, and
///   at least 95 of the 100 random tokens `cong_khai` stored in plaintext, verbatim (the
///   control: the search finds plaintext in these files even through compression, so its
///   silence about `dan_cu`'s tokens means something);
/// - after a graceful restart of every node and CompactNode on each: still nothing of
///   `dan_cu`.
///
/// Snapshots: a node keeps no snapshot file (a snapshot it builds is a view of its live DB);
/// the only snapshot on disk is a stream a follower received, while it installs it. So one
/// follower misses the loading (~800 log entries, a snapshot every 200, 20 entries kept
/// after it: the leader purges what it missed) and catches up by snapshot with the fault
/// point `snapshot-install-midway` set, which stops it (exit 74, as a storage failure
/// would) with the group half installed: the durable received stream `installing.kho` and
/// the install marker stay on disk. The first search must find that stream among the files
/// it searched (and nothing of `dan_cu` in it: it is sealed); the follower then restarts
/// without the fault, redoes the install at open and removes the stream, and after the
/// restart of every node no snapshot file is left anywhere.
/// CompactNode (flush and full compaction) on every node of the cluster.
async fn compact_every_node(cluster: &Cluster) {
    for id in cluster.ids() {
        let admin = cluster.admin_client(id);
        let resp = retry_call(&COMPACT_POLICY, |_| {
            let mut admin = admin.clone();
            async move { admin.compact_node(CompactNodeRequest {}).await }
        })
        .await;
        let resp = ok(cluster, &format!("CompactNode on node {id}"), resp);
        assert_eq!(resp.node_id, id, "CompactNode sent to node {id} was answered by node {}", resp.node_id);
    }
}

/// Share of the plaintext tenant's random tokens the byte search must find verbatim in the
/// flushed and compacted files (the control), percent. A token is lost to compression only
/// if one of its 4-byte windows repeats earlier bytes of its block (odds about 1 in 2,000),
/// or if zstd (the bottommost level) entropy-codes its block's literals.
const CONTROL_FOUND_PERCENT_MIN: usize = 95;
/// Random binary values stored by each tenant of the no-plaintext test, count.
const TOKENS: usize = 100;
/// Size of one random token, bytes. Large enough that a block's literals are mostly
/// random bytes, which zstd stores raw: with 32-byte tokens, a block whose neighbours
/// compressed well (a shift of the block boundaries by other keys was enough) had its
/// literals Huffman-coded and 14 of 100 tokens were not found verbatim.
const TOKEN_BYTES: usize = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_data_dirs_hold_no_plaintext() {
    const NAME: &str = "encrypted_data_dirs_hold_no_plaintext";
    let seed = test_seed(NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let opts = ClusterOptions {
        snapshot_logs_since_last: Some(SNAPSHOT_EVERY_ENTRIES),
        logs_to_keep_after_snapshot: Some(LOGS_KEPT_AFTER_SNAPSHOT),
        encrypted: true,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, opts).await;
    cluster
        .bounded(NAME, Duration::from_secs(420), async {
            let leader = cluster.leader().await;
            let mut admin = cluster.admin_client(leader);
            ok(&cluster, "CreateTenant dan_cu", create_tenant_with_encryption(&mut admin, DAN_CU, TenantEncryption::Default).await);
            ok(&cluster, "CreateTable dan_cu/citizen", create_table_with(&mut admin, DAN_CU, CITIZEN, CITIZEN_FAMILIES, true).await);
            ok(&cluster, "CreateTable dan_cu/ghi_chu", create_table_with(&mut admin, DAN_CU, GHI_CHU, &["f"], false).await);
            ok(&cluster, "CreateTenant cong_khai", create_tenant_with_encryption(&mut admin, CONG_KHAI, TenantEncryption::Plaintext).await);
            ok(&cluster, "CreateTable cong_khai/citizen", create_table_with(&mut admin, CONG_KHAI, CITIZEN, CITIZEN_FAMILIES, false).await);
            ok(&cluster, "CreateTable cong_khai/ghi_chu", create_table_with(&mut admin, CONG_KHAI, GHI_CHU, &["f"], false).await);

            // This follower misses the loading and catches up by snapshot later.
            let behind = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
            cluster.stop(behind).await;

            let mut taken = BTreeSet::new();
            let secret = citizens(&mut rng, SECRET_CITIZENS, 1000, &mut taken);
            let public = citizens(&mut rng, PUBLIC_CITIZENS, 5000, &mut taken);
            let notes: Vec<(Vec<u8>, Vec<u8>)> = (0..NOTES)
                .map(|i| {
                    let value = format!("Ghi chú mật {seed:016x} số {i:02}: hồ sơ của {}", secret[i].ho_ten);
                    (format!("note/{i:02}").into_bytes(), value.into_bytes())
                })
                .collect();
            // Random binary tokens, one per value, in both tenants: compression cannot hide
            // them (no repeats to back-reference), so a token stored in plaintext is found
            // verbatim in SST files; names and row keys may not be.
            let mut tokens = |prefix: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
                (0..TOKENS)
                    .map(|i| (format!("{prefix}/{i:03}").into_bytes(), (0..TOKEN_BYTES).map(|_| rng.random::<u8>()).collect()))
                    .collect()
            };
            let secret_tokens = tokens("token");
            let public_tokens = tokens("token");
            load_citizens(&cluster, DAN_CU, CITIZEN, &secret).await;
            put_all(&cluster, &KvTarget::new(DAN_CU, GHI_CHU, "f"), &notes).await;
            put_all(&cluster, &KvTarget::new(DAN_CU, GHI_CHU, "f"), &secret_tokens).await;
            load_citizens(&cluster, CONG_KHAI, CITIZEN, &public).await;
            put_all(&cluster, &KvTarget::new(CONG_KHAI, GHI_CHU, "f"), &public_tokens).await;

            let dan_cu = tenant_keys(&cluster, leader, DAN_CU).await;
            if !dan_cu.encrypted || dan_cu.plaintext_values != 0 {
                cluster.fail(format!("tenant dan_cu (default encryption, cluster with a master key) is not all encrypted: {dan_cu:?}"));
            }
            let cong_khai = tenant_keys(&cluster, leader, CONG_KHAI).await;
            if cong_khai.encrypted {
                cluster.fail(format!("tenant cong_khai was created plaintext but reports encrypted: {cong_khai:?}"));
            }

            // Needles: everything of dan_cu first (none may be found), then cong_khai's.
            let mut needles = Needles::default();
            for c in &secret {
                needles.add(format!("name `{}` (dan_cu/citizen row {})", c.ho_ten, c.id), c.ho_ten.as_bytes());
                needles.add(format!("row key {} of dan_cu/citizen (hashed row keys)", c.id), c.id.as_bytes());
            }
            for (key, value) in notes.iter().chain(&secret_tokens) {
                needles.add(format!("value of dan_cu/ghi_chu {}", String::from_utf8_lossy(key)), value);
            }
            let secret_count = needles.len();
            for (key, value) in &public_tokens {
                needles.add(format!("value of cong_khai/ghi_chu {}", String::from_utf8_lossy(key)), value);
            }
            let public_tokens_end = needles.len();
            for c in &public {
                needles.add(format!("name `{}` (cong_khai/citizen row {})", c.ho_ten, c.id), c.ho_ten.as_bytes());
                needles.add(format!("row key {} of cong_khai/citizen", c.id), c.id.as_bytes());
            }

            // The shards' leaders purge their logs past what the stopped follower holds (a
            // few entries of the setup), so it can only catch up from a snapshot.
            let purged = async {
                loop {
                    let mut firsts = Vec::new();
                    for id in cluster.running_ids() {
                        if let Ok(s) = cluster.admin_client(id).node_status(kho_proto::v1::NodeStatusRequest {}).await {
                            firsts.extend(s.into_inner().shards.iter().filter(|s| s.role == "leader").map(|s| s.first_log_index));
                        }
                    }
                    if firsts.len() == 2 && firsts.iter().all(|f| *f > LOGS_KEPT_AFTER_SNAPSHOT) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(60), purged).await.is_err() {
                cluster.fail("the shards' leaders did not purge their logs within 60 s of the loading".to_string());
            }

            // --- The follower that missed the loading receives a snapshot and stops in the
            // middle of installing it: the received stream stays on disk.
            cluster.set_env(behind, &[("FAILPOINTS", &format!("{SNAPSHOT_INSTALL_FAILPOINT}=return"))]);
            cluster.launch(behind);
            let status = cluster.wait_exit(behind, Duration::from_secs(SNAPSHOT_INSTALL_WAIT_S)).await.unwrap_or_else(|| {
                cluster.fail(format!(
                    "node {behind} missed the loading but did not stop at `{SNAPSHOT_INSTALL_FAILPOINT}` within \
                     {SNAPSHOT_INSTALL_WAIT_S} s: it received no snapshot (the test no longer exercises snapshots)"
                ))
            });
            assert_eq!(status.code(), Some(STORAGE_FAILURE_EXIT_CODE), "exit status of node {behind} at the fault point");
            // The stream of whichever shard it was installing: snapshots/<shard>/installing.kho.
            let snapshots = cluster.data_dir(behind).join("snapshots");
            let streams: Vec<_> = std::fs::read_dir(&snapshots)
                .map(|d| d.flatten().map(|e| e.path().join("installing.kho")).filter(|p| p.is_file()).collect())
                .unwrap_or_default();
            assert!(!streams.is_empty(), "node {behind} stopped mid-install without a received stream under {}", snapshots.display());

            // --- Right after loading: the nodes run; their WALs hold every log entry (sealed)
            // and their memtables the applied data (written without the WAL); the follower's
            // received snapshot stream is on disk.
            let report = search_data_dirs(&cluster, &needles);
            println!("search right after loading: {}: {}", report.summary(), describe_files(&cluster, &report));
            let snapshot_files = snapshot_files_searched(&report);
            println!("snapshot files searched: {snapshot_files:?}");
            for stream in &streams {
                assert!(
                    snapshot_files.contains(&stream.as_path()),
                    "the received snapshot stream {} was not among the files searched",
                    stream.display()
                );
            }
            assert_no_secret_found(&cluster, "right after loading", &report, &needles, secret_count);

            // --- The follower restarts without the fault: it redoes the install at open.
            cluster.set_env(behind, &[]);
            cluster.restart(behind).await;
            let sums = cluster.wait_applied_equal(Duration::from_secs(120)).await;
            assert_checksums_equal(&cluster, &sums);
            let log = std::fs::read_to_string(cluster.log_path(behind)).unwrap_or_default();
            let since_restart = log.rsplit("=== cluster-tests: starting node").next().unwrap_or("");
            assert!(
                since_restart.contains("finishing a snapshot install interrupted by a crash"),
                "node {behind} did not redo the interrupted install at open"
            );
            for stream in &streams {
                assert!(!stream.exists(), "the installed stream {} is still on disk", stream.display());
            }

            // --- CompactNode on every running node: the memtables go to SST files.
            compact_every_node(&cluster).await;
            let report = search_data_dirs(&cluster, &needles);
            println!("search after flushing and compacting: {}: {}", report.summary(), describe_files(&cluster, &report));
            assert_no_secret_found(&cluster, "after flushing and compacting", &report, &needles, secret_count);
            // The control: the random tokens of cong_khai, stored in plaintext, are found
            // verbatim in the flushed files (names and row keys of cong_khai need not be:
            // SST blocks are compressed; they are counted for information).
            let found = report.found(needles.len());
            let tokens_found = (secret_count..public_tokens_end).filter(|&i| found[i]).count();
            let public_total = needles.len() - secret_count;
            let public_found = (secret_count..needles.len()).filter(|&i| found[i]).count();
            if tokens_found * 100 < TOKENS * CONTROL_FOUND_PERCENT_MIN {
                let missing: Vec<&String> = (secret_count..public_tokens_end).filter(|&i| !found[i]).map(|i| &needles.labels[i]).collect();
                cluster.fail(format!(
                    "the control failed: only {tokens_found} of {TOKENS} random tokens stored in plaintext by tenant \
                     cong_khai were found on disk after flushing (at least {CONTROL_FOUND_PERCENT_MIN}% must be), so the \
                     byte search cannot be trusted; first missing: {:#?}",
                    &missing[..missing.len().min(10)]
                ));
            }
            let mut control_files: BTreeSet<String> = BTreeSet::new();
            for hit in &report.hits {
                control_files.insert(hit.path.strip_prefix(cluster.dir()).unwrap_or(hit.path.as_path()).display().to_string());
            }
            println!(
                "control: {tokens_found} of {TOKENS} plaintext tokens of cong_khai found ({public_found} of its \
                 {public_total} strings in all), in {control_files:?}; none of the {secret_count} of dan_cu"
            );

            // --- Graceful restart of every node, then compaction of each.
            for id in cluster.ids() {
                cluster.stop(id).await;
            }
            let leader = cluster.restart_all().await;
            println!("all nodes restarted; leader {leader}");
            compact_every_node(&cluster).await;

            let report = search_data_dirs(&cluster, &needles);
            println!("search after restart and compaction: {}: {}", report.summary(), describe_files(&cluster, &report));
            let snapshot_files = snapshot_files_searched(&report);
            assert!(snapshot_files.is_empty(), "snapshot files left on disk after the restart: {snapshot_files:?}");
            assert_no_secret_found(&cluster, "after restart and compaction", &report, &needles, secret_count);
            let public_found = report.found(needles.len())[secret_count..].iter().filter(|f| **f).count();
            // For information only: compacted SST blocks are compressed, so cong_khai's
            // strings need not all be found verbatim any more.
            println!(
                "after compaction, {public_found} of {} plaintext strings of cong_khai are still found verbatim",
                needles.len() - secret_count
            );

            // --- The API still answers with the plaintext.
            verify_citizens(&cluster, DAN_CU, CITIZEN, &secret).await;
            verify_names_by_get(&cluster, leader, DAN_CU, CITIZEN, &secret, 10).await;
            verify_citizens(&cluster, CONG_KHAI, CITIZEN, &public[..10]).await;
            let notes_model: BTreeMap<Vec<u8>, Vec<u8>> = notes.iter().chain(&secret_tokens).cloned().collect();
            verify_model(&cluster, leader, &KvTarget::new(DAN_CU, GHI_CHU, "f"), &notes_model, "dan_cu/ghi_chu after restart").await;
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// 2. Rotation and re-encryption.

const SO_CAI: &str = "so_cai";
const TAI_KHOAN: &str = "tai_khoan";
/// Values written under version 1, then new values and overwrites under version 2.
const VALUES_V1: usize = 300;
const NEW_VALUES_V2: usize = 100;
const OVERWRITES_V2: usize = 50;

fn balance(rng: &mut StdRng, seed: u64, i: usize) -> Vec<u8> {
    format!("số dư {seed:016x}/{i:05}: {} đồng", rng.random_range(0..1_000_000_000_000u64)).into_bytes()
}

/// CI acceptance of rotation: values under version 1; RotateTenantKey makes version 2
/// current; destroying version 1 is refused while values use it; new writes and overwrites
/// go under version 2 (the counts show it); StartReencryption moves everything to version 2
/// online; then version 1 seals nothing, destroying it succeeds, destroying the current
/// version is refused, and every value reads back unchanged throughout. `kho keys status`
/// shows the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_reencrypt_then_no_value_under_the_old_version() {
    const NAME: &str = "rotate_reencrypt_then_no_value_under_the_old_version";
    let seed = test_seed(NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(3, ClusterOptions { encrypted: true, ..ClusterOptions::default() }).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let leader = cluster.leader().await;
            let mut admin = cluster.admin_client(leader);
            ok(&cluster, "CreateTenant so_cai", create_tenant_with_encryption(&mut admin, SO_CAI, TenantEncryption::Default).await);
            ok(&cluster, "CreateTable so_cai/tai_khoan", create_table_with(&mut admin, SO_CAI, TAI_KHOAN, &["f"], false).await);
            let target = KvTarget::new(SO_CAI, TAI_KHOAN, "f");
            let key = |i: usize| format!("tk/{i:05}").into_bytes();

            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let first: Vec<(Vec<u8>, Vec<u8>)> = (0..VALUES_V1).map(|i| (key(i), balance(&mut rng, seed, i))).collect();
            put_all(&cluster, &target, &first).await;
            model.extend(first);
            let status = tenant_keys(&cluster, leader, SO_CAI).await;
            expect_current(&cluster, "after the first writes", &status, 1);
            expect_version(&cluster, "after the first writes", &status, 1, "current", VALUES_V1 as u64);

            let rotated = ok(&cluster, "RotateTenantKey", rpc!(admin, rotate_tenant_key, RotateTenantKeyRequest { tenant: SO_CAI.into() }));
            assert_eq!(rotated.version, 2, "RotateTenantKey of a tenant at version 1 made version {} current", rotated.version);
            expect_status(
                &cluster,
                "DestroyTenantKey version 1 while 300 values use it (before any re-encryption)",
                rpc!(admin, destroy_tenant_key, DestroyTenantKeyRequest { tenant: SO_CAI.into(), version: 1 }),
                Code::FailedPrecondition,
                &[],
            );
            let status = tenant_keys(&cluster, leader, SO_CAI).await;
            expect_current(&cluster, "after the rotation", &status, 2);
            expect_version(&cluster, "after the rotation", &status, 1, "retired", VALUES_V1 as u64);
            expect_version(&cluster, "after the rotation", &status, 2, "current", 0);
            verify_model(&cluster, leader, &target, &model, "after the rotation").await;

            // New keys and overwrites of old ones: all sealed under version 2.
            let mut second: Vec<(Vec<u8>, Vec<u8>)> =
                (VALUES_V1..VALUES_V1 + NEW_VALUES_V2).map(|i| (key(i), balance(&mut rng, seed, i))).collect();
            second.extend((0..OVERWRITES_V2).map(|i| (key(i), balance(&mut rng, seed, i))));
            put_all(&cluster, &target, &second).await;
            model.extend(second);
            let total = model.len() as u64;
            let status = tenant_keys(&cluster, leader, SO_CAI).await;
            expect_version(&cluster, "after writes under version 2", &status, 1, "retired", (VALUES_V1 - OVERWRITES_V2) as u64);
            expect_version(&cluster, "after writes under version 2", &status, 2, "current", (NEW_VALUES_V2 + OVERWRITES_V2) as u64);

            let started =
                ok(&cluster, "StartReencryption", rpc!(admin, start_reencryption, StartReencryptionRequest { tenant: SO_CAI.into() }));
            assert_eq!(started.target_version, 2, "StartReencryption targets version {}, not the current 2", started.target_version);
            assert!(!started.resumed, "the first StartReencryption of the tenant says it resumed a job: {started:?}");
            let done = wait_reencryption_done(&cluster, SO_CAI, 2).await;
            println!("re-encryption done: {done:?}");
            expect_current(&cluster, "after the re-encryption", &done, 2);
            expect_version(&cluster, "after the re-encryption", &done, 1, "retired", 0);
            expect_version(&cluster, "after the re-encryption", &done, 2, "current", total);
            let job = done.reencryption.unwrap_or_default();
            assert_eq!(
                (job.visited, job.rewritten),
                (total, (VALUES_V1 - OVERWRITES_V2) as u64),
                "the re-encryption should visit every value ({total}) and rewrite those under version 1: {job:?}"
            );
            for id in cluster.ids() {
                verify_model(&cluster, id, &target, &model, "after the re-encryption").await;
            }

            ok(
                &cluster,
                "DestroyTenantKey version 1 after the re-encryption",
                rpc!(admin, destroy_tenant_key, DestroyTenantKeyRequest { tenant: SO_CAI.into(), version: 1 }),
            );
            let status = tenant_keys(&cluster, leader, SO_CAI).await;
            match version(&status, 1) {
                None => {}
                Some(s) if s.state == "destroyed" && s.values == 0 => {}
                Some(s) => cluster.fail(format!("after DestroyTenantKey, version 1 is {s:?}; whole status {status:?}")),
            }
            expect_version(&cluster, "after destroying version 1", &status, 2, "current", total);
            expect_status(
                &cluster,
                "DestroyTenantKey of the current version 2",
                rpc!(admin, destroy_tenant_key, DestroyTenantKeyRequest { tenant: SO_CAI.into(), version: 2 }),
                Code::FailedPrecondition,
                &[],
            );
            for id in cluster.ids() {
                verify_model(&cluster, id, &target, &model, "after destroying version 1").await;
            }

            let endpoints: Vec<&str> = cluster.ids().into_iter().map(|id| cluster.addr(id)).collect();
            let endpoints = endpoints.join(",");
            let out = run_cli(&cluster, &["keys", "status", "--endpoints", endpoints.as_str(), "--tenant", SO_CAI]).await;
            let text = String::from_utf8_lossy(&out.stdout);
            let describe = format!("stdout:\n{text}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "kho keys status failed ({}): {describe}", out.status);
            // The layout of docs/CLI.md: a line per tenant, then a row per key version.
            let heading = format!("tenant {SO_CAI}: encrypted, current key version 2");
            assert!(text.contains(&heading), "kho keys status lacks `{heading}`: {describe}");
            let total_s = total.to_string();
            assert!(has_row(&text, &["2", "current", total_s.as_str()]), "kho keys status lacks the row `2  current  {total}`: {describe}");
            println!("kho keys status:\n{text}");
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// 3. Re-encryption across a leader restart.

const LUU_TRU: &str = "luu_tru";
const HO_SO: &str = "ho_so";
/// Values of 1 KiB: re-encrypting them takes about ten steps of 512 values.
const RESUME_VALUES: usize = 5_000;
const RESUME_VALUE_BYTES: usize = 1024;
/// Puts per Write request while loading.
const RESUME_WRITE_BATCH: usize = 100;
/// Rotations tried when a re-encryption finishes before the test sees it half done.
const INTERRUPT_ATTEMPTS_MAX: u32 = 3;
/// Pause between status polls while waiting for a half-done re-encryption, milliseconds.
const INTERRUPT_POLL_MS: u64 = 5;

/// A re-encryption job survives its leader: once TenantKeyStatus shows it started (some
/// values visited) and not done, the leader gets SIGKILL and is restarted; the job must
/// finish without another StartReencryption, leave no value under an older version, and
/// every replica must end with the same data (NodeChecksum).
///
/// If a job finishes before the test sees it half done, the test rotates again and retries
/// (every value must then be rewritten again), up to `INTERRUPT_ATTEMPTS_MAX` times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencryption_resumes_after_the_leader_restarts() {
    const NAME: &str = "reencryption_resumes_after_the_leader_restarts";
    let seed = test_seed(NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(3, ClusterOptions { encrypted: true, ..ClusterOptions::default() }).await;
    cluster
        .bounded(NAME, Duration::from_secs(420), async {
            let leader = cluster.leader().await;
            let mut admin = cluster.admin_client(leader);
            ok(&cluster, "CreateTenant luu_tru", create_tenant_with_encryption(&mut admin, LUU_TRU, TenantEncryption::Encrypted).await);
            ok(&cluster, "CreateTable luu_tru/ho_so", create_table_with(&mut admin, LUU_TRU, HO_SO, &["f"], false).await);
            let target = KvTarget::new(LUU_TRU, HO_SO, "f");
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..RESUME_VALUES)
                .map(|i| {
                    let mut value = vec![0u8; RESUME_VALUE_BYTES];
                    rng.fill(&mut value[..]);
                    (format!("hs/{i:06}").into_bytes(), value)
                })
                .collect();
            let loading = Instant::now();
            write_all(&cluster, &target, &pairs, RESUME_WRITE_BATCH).await;
            println!("{RESUME_VALUES} values of {RESUME_VALUE_BYTES} B written in {:?}", loading.elapsed());
            let model: BTreeMap<Vec<u8>, Vec<u8>> = pairs.into_iter().collect();
            let status = tenant_keys(&cluster, leader, LUU_TRU).await;
            expect_current(&cluster, "after loading", &status, 1);
            expect_version(&cluster, "after loading", &status, 1, "current", RESUME_VALUES as u64);

            let mut interrupted = None;
            for attempt in 1..=INTERRUPT_ATTEMPTS_MAX {
                let leader = cluster.leader().await;
                let admin = cluster.admin_client(leader);
                let rotated =
                    ok(&cluster, "RotateTenantKey", rpc!(admin, rotate_tenant_key, RotateTenantKeyRequest { tenant: LUU_TRU.into() }));
                let v = rotated.version;
                let started =
                    ok(&cluster, "StartReencryption", rpc!(admin, start_reencryption, StartReencryptionRequest { tenant: LUU_TRU.into() }));
                assert_eq!(started.target_version, v, "StartReencryption after rotating to {v}: {started:?}");
                let begun = Instant::now();
                let deadline = begun + Duration::from_secs(REENCRYPTION_WAIT_S);
                let mut seen = None;
                let mut finished = false;
                let mut last = String::from("no answer yet");
                while Instant::now() < deadline {
                    cluster.check_alive();
                    match tenant_keys_once(&cluster, leader, LUU_TRU).await {
                        Ok(keys) => match keys.reencryption {
                            Some(r) if r.target_version == v && r.done => {
                                last = format!("{r:?}");
                                finished = true;
                                break;
                            }
                            Some(r) if r.target_version == v && r.visited > 0 => {
                                seen = Some(r);
                                break;
                            }
                            other => last = format!("{other:?}"),
                        },
                        Err(e) if is_retryable(&e) => last = e.to_string(),
                        Err(e) => cluster.fail(format!("TenantKeyStatus via leader {leader}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(INTERRUPT_POLL_MS)).await;
                }
                match seen {
                    Some(r) => {
                        cluster.kill(leader);
                        println!(
                            "attempt {attempt}: re-encryption to version {v} half done after {:?} ({r:?}): leader {leader} killed",
                            begun.elapsed()
                        );
                        cluster.restart(leader).await;
                        interrupted = Some((v, leader, r));
                        break;
                    }
                    None if finished => println!(
                        "attempt {attempt}: re-encryption to version {v} finished after {:?} before it was seen half done \
                         (last: {last}); rotating again",
                        begun.elapsed()
                    ),
                    None => cluster
                        .fail(format!("re-encryption to version {v} visited no value within {REENCRYPTION_WAIT_S} s; last status: {last}")),
                }
            }
            let Some((v, killed, at_kill)) = interrupted else {
                cluster.fail(format!(
                    "in {INTERRUPT_ATTEMPTS_MAX} attempts the re-encryption of {RESUME_VALUES} values was never seen half done; \
                     the test needs more (or larger) values to interrupt it"
                ))
            };

            // No new StartReencryption: the job must go on by itself.
            let done = wait_reencryption_done(&cluster, LUU_TRU, v).await;
            println!("re-encryption to version {v} done after the restart of node {killed} (killed at {at_kill:?}): {done:?}");
            expect_current(&cluster, "after the resumed re-encryption", &done, v);
            expect_version(&cluster, "after the resumed re-encryption", &done, v, "current", RESUME_VALUES as u64);
            let older: Vec<&KeyVersionStatus> = done.versions.iter().filter(|s| s.version < v && s.values != 0).collect();
            if !older.is_empty() {
                cluster.fail(format!("after the resumed re-encryption, older versions still seal values: {older:?}; status {done:?}"));
            }

            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_checksums_equal(&cluster, &sums);
            println!("replicas agree: {}", kho_cluster_tests::describe_checksums(&sums));
            verify_model(&cluster, killed, &target, &model, "after the resumed re-encryption").await;
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// 4. A wrong or missing master key.

/// Fails unless `run` exited by itself with a non-zero status and its stderr mentions
/// every one of `mentions` (case-insensitive).
fn expect_refusal(cluster: &Cluster, what: &str, run: &ServerRun, mentions: &[&str]) {
    let stderr = run.stderr.to_lowercase();
    let missing: Vec<&&str> = mentions.iter().filter(|m| !stderr.contains(&m.to_lowercase())).collect();
    if !run.refused() || !missing.is_empty() {
        cluster.fail(format!(
            "{what}: expected the node to exit with a non-zero status, stderr mentioning {mentions:?} \
             (missing {missing:?}); it {}",
            run.describe()
        ));
    }
}

/// A node's data directory is bound to its master key: started with another key, without
/// one, or with a key file others may read, the node exits at once with a clear error and
/// leaves every file and directory of its data directory as it was (names, sizes, modes,
/// mtimes, contents). With the right key it starts and serves its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_a_wrong_or_missing_master_key_and_touches_nothing() {
    const NAME: &str = "node_refuses_a_wrong_or_missing_master_key_and_touches_nothing";
    const VALUES: usize = 20;
    let seed = test_seed(NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = key_dir();
    let key_a = MasterKey::random(&mut rng);
    let key_b = MasterKey::random(&mut rng);
    let file_a = write_key(keys.path(), "a.key", &key_a, 0o600);
    let file_b = write_key(keys.path(), "b.key", &key_b, 0o600);
    let file_a_open = write_key(keys.path(), "a-readable-by-all.key", &key_a, 0o644);
    let (id_a, id_b) = (key_a.id(), key_b.id());
    println!("key A id {id_a}, key B id {id_b}");
    let cluster = Cluster::start(1, encrypted_options(&file_a)).await;
    cluster
        .bounded(NAME, Duration::from_secs(240), async {
            let mut admin = cluster.admin_client(1);
            ok(&cluster, "CreateTenant bi_mat", create_tenant_with_encryption(&mut admin, "bi_mat", TenantEncryption::Default).await);
            ok(&cluster, "CreateTable bi_mat/kv", create_table_with(&mut admin, "bi_mat", "kv", &["f"], false).await);
            let target = KvTarget::new("bi_mat", "kv", "f");
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..VALUES)
                .map(|i| (format!("k/{i:02}").into_bytes(), format!("giá trị bí mật {seed:016x} số {i}").into_bytes()))
                .collect();
            put_all(&cluster, &target, &pairs).await;
            let model: BTreeMap<Vec<u8>, Vec<u8>> = pairs.into_iter().collect();

            let data_dir = cluster.data_dir(1).to_path_buf();
            let marker_path = data_dir.join("ENCRYPTION");
            let marker = std::fs::read_to_string(&marker_path)
                .unwrap_or_else(|e| cluster.fail(format!("read the marker {}: {e}", marker_path.display())));
            assert_eq!(
                marker,
                format!("kho-encryption 1\nmaster_key_id {id_a}\n"),
                "the ENCRYPTION marker of a data directory written under key A"
            );

            cluster.stop(1).await;
            let before = TreeState::capture(&data_dir).unwrap_or_else(|e| cluster.fail(format!("record {}: {e}", data_dir.display())));
            println!("data directory {}: {} entries, {} files", data_dir.display(), before.entries.len(), before.files());

            let wait = Duration::from_secs(REFUSAL_WAIT_S);
            let config = cluster.node_config_with_master_key(1, Some(file_b.as_path()));
            let run = cluster.run_server_once(1, "wrong-key", &config, wait).await;
            expect_refusal(
                &cluster,
                "started with key B on data written under key A",
                &run,
                &["wrong master key", id_a.as_str(), id_b.as_str()],
            );

            let config = cluster.node_config_with_master_key(1, None);
            let run = cluster.run_server_once(1, "no-key", &config, wait).await;
            expect_refusal(
                &cluster,
                "started without a master key on an encrypted data directory",
                &run,
                &["data directory", "is encrypted", id_a.as_str()],
            );

            let config = cluster.node_config_with_master_key(1, Some(file_a_open.as_path()));
            let run = cluster.run_server_once(1, "readable-key-file", &config, wait).await;
            expect_refusal(&cluster, "started with key A in a file readable by group and others (mode 0644)", &run, &["master_key_file"]);

            let after = TreeState::capture(&data_dir).unwrap_or_else(|e| cluster.fail(format!("record {}: {e}", data_dir.display())));
            let changes = after.differences_from(&before);
            if !changes.is_empty() {
                cluster.fail(format!("refused start-ups changed the data directory {}:\n{}", data_dir.display(), changes.join("\n")));
            }

            // With key A again, the node starts and serves everything.
            cluster.restart(1).await;
            cluster.wait_ready().await;
            verify_model(&cluster, 1, &target, &model, "restarted with key A").await;
            let mut model = model;
            let extra = vec![(b"k/after".to_vec(), b"written after the refused start-ups".to_vec())];
            put_all(&cluster, &target, &extra).await;
            model.extend(extra);
            verify_model(&cluster, 1, &target, &model, "after a new write").await;
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// 5. Hashed row keys.

/// The encrypted tenant of the hashed-table test; its table `citizen` has hashed row keys.
const HO_TICH: &str = "ho_tich";

fn hashed_put(key: &str, value: &str) -> PutRequest {
    PutRequest { tenant: HO_TICH.into(), table: CITIZEN.into(), key: key.into(), value: value.into(), family: "identity".into() }
}

fn hashed_get(key: &str) -> GetRequest {
    GetRequest { tenant: HO_TICH.into(), table: CITIZEN.into(), key: key.into(), family: "identity".into(), ..Default::default() }
}

fn hashed_delete(key: &str) -> DeleteRequest {
    DeleteRequest { tenant: HO_TICH.into(), table: CITIZEN.into(), key: key.into(), family: "identity".into() }
}

fn hashed_cas(key: &str, expected: Option<&str>, new: Option<&str>) -> CompareAndSwapRequest {
    CompareAndSwapRequest {
        tenant: HO_TICH.into(),
        table: CITIZEN.into(),
        key: key.into(),
        family: "identity".into(),
        expected_value: expected.map(|v| v.as_bytes().to_vec()),
        new_value: new.map(|v| v.as_bytes().to_vec()),
    }
}

/// A table with hashed row keys stores a keyed hash of each row key, so it has no key
/// order: Scan and ScanRows are refused with FAILED_PRECONDITION naming the reason, through
/// every node, while every point operation (Put, Get, BatchGet, CompareAndSwap, Delete,
/// Write, MutateRow, ReadRow) works and ReadRow answers with the row key that was asked for. A plain table of the same tenant still scans. A plaintext tenant cannot
/// have a hashed table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_table_refuses_scans_and_serves_point_reads() {
    const NAME: &str = "hashed_table_refuses_scans_and_serves_point_reads";
    const TENANT: &str = HO_TICH;
    const PLAIN: &str = GHI_CHU;
    let seed = test_seed(NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(3, ClusterOptions { encrypted: true, ..ClusterOptions::default() }).await;
    cluster
        .bounded(NAME, Duration::from_secs(240), async {
            let leader = cluster.leader().await;
            let mut admin = cluster.admin_client(leader);
            ok(&cluster, "CreateTenant ho_tich", create_tenant_with_encryption(&mut admin, TENANT, TenantEncryption::Default).await);
            ok(&cluster, "CreateTable ho_tich/citizen", create_table_with(&mut admin, TENANT, CITIZEN, CITIZEN_FAMILIES, true).await);
            ok(&cluster, "CreateTable ho_tich/ghi_chu", create_table_with(&mut admin, TENANT, PLAIN, &["f"], false).await);
            ok(&cluster, "CreateTenant cong_khai", create_tenant_with_encryption(&mut admin, CONG_KHAI, TenantEncryption::Plaintext).await);
            expect_status(
                &cluster,
                "CreateTable with hashed row keys in a plaintext tenant",
                create_table_with(&mut admin, CONG_KHAI, CITIZEN, CITIZEN_FAMILIES, true).await,
                Code::FailedPrecondition,
                &[],
            );
            let tables = ok(&cluster, "ListTables ho_tich", rpc!(admin, list_tables, ListTablesRequest { tenant: TENANT.into() }));
            let mut listed: Vec<(String, bool)> = tables.tables.iter().map(|t| (t.name.clone(), t.hashed_row_keys)).collect();
            listed.sort();
            assert_eq!(
                listed,
                vec![(CITIZEN.to_string(), true), (PLAIN.to_string(), false)],
                "ListTables ho_tich: (name, hashed_row_keys)"
            );
            let tables = ok(&cluster, "ListTables cong_khai", rpc!(admin, list_tables, ListTablesRequest { tenant: CONG_KHAI.into() }));
            assert!(tables.tables.is_empty(), "the refused hashed table exists in cong_khai: {:?}", tables.tables);

            let mut taken = BTreeSet::new();
            let people = citizens(&mut rng, 5, 1000, &mut taken);
            let (a, b, c, d, e) = (&people[0], &people[1], &people[2], &people[3], &people[4]);

            for id in cluster.ids() {
                let client = cluster.data_client(id);
                let via = format!("via node {id}");
                let scan = ScanRequest { tenant: TENANT.into(), table: CITIZEN.into(), family: "identity".into(), ..Default::default() };
                expect_status(
                    &cluster,
                    &format!("{via}: Scan of a hashed table"),
                    scan_retry(&client, scan, &RetryPolicy::STEADY).await,
                    Code::FailedPrecondition,
                    &["hashed row keys"],
                );
                let scan = ScanRequest {
                    tenant: TENANT.into(),
                    table: CITIZEN.into(),
                    family: "identity".into(),
                    prefix: b"079".to_vec(),
                    ..Default::default()
                };
                expect_status(
                    &cluster,
                    &format!("{via}: Scan of a hashed table by prefix"),
                    scan_retry(&client, scan, &RetryPolicy::STEADY).await,
                    Code::FailedPrecondition,
                    &["hashed row keys"],
                );
                let rows = ScanRowsRequest { tenant: TENANT.into(), table: CITIZEN.into(), ..Default::default() };
                expect_status(
                    &cluster,
                    &format!("{via}: ScanRows of a hashed table"),
                    scan_rows(&client, rows).await,
                    Code::FailedPrecondition,
                    &["hashed row keys"],
                );
            }

            let client = cluster.data_client(cluster.ids().into_iter().find(|&id| id != leader).expect("a follower"));
            // --- Key-value view: Put, Get, BatchGet, CompareAndSwap, Delete.
            ok(&cluster, "Put a", rpc!(client, put, hashed_put(&a.id, &a.ho_ten)));
            let got = ok(&cluster, "Get a", rpc!(client, get, hashed_get(&a.id)));
            assert!(got.found && got.value == a.ho_ten.as_bytes(), "Get a: {got:?}");
            let got = ok(&cluster, "Get of a key never written", rpc!(client, get, hashed_get(&b.id)));
            assert!(!got.found, "Get of a key never written: {got:?}");
            let batch = BatchGetRequest {
                tenant: TENANT.into(),
                table: CITIZEN.into(),
                keys: vec![a.id.as_bytes().to_vec(), b.id.as_bytes().to_vec()],
                family: "identity".into(),
                ..Default::default()
            };
            let items = ok(&cluster, "BatchGet a, b", rpc!(client, batch_get, batch)).items;
            let seen: Vec<(Vec<u8>, bool, Vec<u8>)> = items.into_iter().map(|i| (i.key, i.found, i.value)).collect();
            assert_eq!(
                seen,
                vec![(a.id.as_bytes().to_vec(), true, a.ho_ten.as_bytes().to_vec()), (b.id.as_bytes().to_vec(), false, Vec::new())],
                "BatchGet answers the requested keys in order"
            );
            let renamed = format!("{} (đổi tên)", a.ho_ten);
            let r =
                ok(&cluster, "CAS a", rpc!(client, compare_and_swap, hashed_cas(&a.id, Some(a.ho_ten.as_str()), Some(renamed.as_str()))));
            assert!(r.succeeded && r.current_found && r.current_value == a.ho_ten.as_bytes(), "CAS a: {r:?}");
            let r =
                ok(&cluster, "CAS a with a wrong expectation", rpc!(client, compare_and_swap, hashed_cas(&a.id, Some("sai"), Some("x"))));
            assert!(!r.succeeded && r.current_value == renamed.as_bytes(), "failed CAS reports the current value: {r:?}");
            let r = ok(&cluster, "CAS creating c", rpc!(client, compare_and_swap, hashed_cas(&c.id, None, Some(c.ho_ten.as_str()))));
            assert!(r.succeeded && !r.current_found, "CAS on a missing key: {r:?}");
            let got = ok(&cluster, "Get a after CAS", rpc!(client, get, hashed_get(&a.id)));
            assert!(got.found && got.value == renamed.as_bytes(), "Get a after CAS: {got:?}");
            let got = ok(&cluster, "Get c after CAS", rpc!(client, get, hashed_get(&c.id)));
            assert!(got.found && got.value == c.ho_ten.as_bytes(), "Get c after CAS: {got:?}");
            let del = ok(&cluster, "Delete a", rpc!(client, delete, hashed_delete(&a.id)));
            assert!(del.existed, "Delete a: existed = false");
            let got = ok(&cluster, "Get a after Delete", rpc!(client, get, hashed_get(&a.id)));
            assert!(!got.found, "Get a after Delete: {got:?}");
            let del = ok(&cluster, "Delete a again", rpc!(client, delete, hashed_delete(&a.id)));
            assert!(!del.existed, "Delete of a missing key: existed = true");
            // Write: puts and deletes in one atomic batch.
            let write_op = |key: &str, value: Option<&str>| WriteOp {
                op: Some(match value {
                    Some(v) => Op::Put(PutOp { key: key.into(), value: v.into(), family: "identity".into() }),
                    None => Op::Delete(DeleteOp { key: key.into(), family: "identity".into() }),
                }),
            };
            let write = |ops: Vec<WriteOp>| WriteRequest { tenant: TENANT.into(), table: CITIZEN.into(), ops };
            ok(
                &cluster,
                "Write d, e",
                rpc!(
                    client,
                    write,
                    write(vec![write_op(d.id.as_str(), Some(d.ho_ten.as_str())), write_op(e.id.as_str(), Some(e.ho_ten.as_str()))])
                ),
            );
            for p in [d, e] {
                let got = ok(&cluster, "Get after Write", rpc!(client, get, hashed_get(&p.id)));
                assert!(got.found && got.value == p.ho_ten.as_bytes(), "Get {} after Write: {got:?}", p.id);
            }
            ok(&cluster, "Write deleting d", rpc!(client, write, write(vec![write_op(d.id.as_str(), None)])));
            let got = ok(&cluster, "Get d after a deleting Write", rpc!(client, get, hashed_get(&d.id)));
            assert!(!got.found, "Get d after a Write deleted it: {got:?}");
            let got = ok(&cluster, "Get e after d was deleted", rpc!(client, get, hashed_get(&e.id)));
            assert!(got.found && got.value == e.ho_ten.as_bytes(), "Get e after d was deleted: {got:?}");

            // --- Rows: MutateRow and ReadRow.
            let mutate = |mutations: Vec<Mutation>| MutateRowRequest {
                tenant: TENANT.into(),
                table: CITIZEN.into(),
                row_key: b.id.as_bytes().to_vec(),
                mutations,
            };
            let read = |families: &[&str]| ReadRowRequest {
                tenant: TENANT.into(),
                table: CITIZEN.into(),
                row_key: b.id.as_bytes().to_vec(),
                families: families.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            };
            let cells_b = b.cells();
            let mutations = cells_b.iter().map(|(f, q, v)| set_cell(f, q, v)).collect();
            ok(&cluster, "MutateRow b", rpc!(client, mutate_row, mutate(mutations)));
            let got = ok(&cluster, "ReadRow b", rpc!(client, read_row, read(&[])));
            assert!(got.found, "ReadRow b: not found");
            let row = got.row.unwrap_or_default();
            assert_eq!(row.key, b.id.as_bytes().to_vec(), "ReadRow of a hashed table answers with the requested row key");
            assert_eq!(cells(&row), cells_b, "ReadRow b: cells in (family, qualifier) order");
            let got = ok(&cluster, "ReadRow b [residence]", rpc!(client, read_row, read(&["residence"])));
            assert_eq!(cells(&got.row.unwrap_or_default()), cells_b[2..].to_vec(), "ReadRow b, family residence only");
            let delete_birth =
                Mutation { mutation: Some(M::DeleteCell(DeleteCell { family: "identity".into(), qualifier: b"ngay_sinh".to_vec() })) };
            ok(&cluster, "MutateRow b: delete ngay_sinh", rpc!(client, mutate_row, mutate(vec![delete_birth])));
            let got = ok(&cluster, "ReadRow b after DeleteCell", rpc!(client, read_row, read(&[])));
            let expected: Vec<(String, String, String)> = cells_b.iter().filter(|(_, q, _)| q != "ngay_sinh").cloned().collect();
            assert_eq!(cells(&got.row.unwrap_or_default()), expected, "ReadRow b after deleting identity:ngay_sinh");
            let absent =
                ReadRowRequest { tenant: TENANT.into(), table: CITIZEN.into(), row_key: a.id.as_bytes().to_vec(), ..Default::default() };
            let got = ok(&cluster, "ReadRow of a deleted key", rpc!(client, read_row, absent));
            assert!(!got.found, "ReadRow of a row whose only cell was deleted: {:?}", got.row);

            // --- A plain table of the same encrypted tenant still scans, in key order.
            let notes = KvTarget::new(TENANT, PLAIN, "f");
            let pairs: Vec<(Vec<u8>, Vec<u8>)> =
                (0..5).map(|i| (format!("note/{i}").into_bytes(), format!("ghi chú {i}").into_bytes())).collect();
            put_all(&cluster, &notes, &pairs).await;
            let scan = ScanRequest { tenant: TENANT.into(), table: PLAIN.into(), family: "f".into(), ..Default::default() };
            let kvs = ok(&cluster, "Scan of the plain table", scan_retry(&client, scan, &RetryPolicy::STEADY).await);
            let scanned: Vec<(Vec<u8>, Vec<u8>)> = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
            assert_eq!(scanned, pairs, "Scan of a plain table of an encrypted tenant");
        })
        .await;
}

#[test]
fn has_row_finds_table_rows_whatever_the_widths() {
    // The example of docs/CLI.md.
    let text = "counted at applied index 812\n\ntenant dan_cu: encrypted, current key version 2\n  \
                VERSION  STATE    VALUES  CREATED AT REVISION\n  1        retired  120     12\n  \
                2        current  880     700\n  plaintext values: 3\n";
    assert!(has_row(text, &["2", "current", "880"]));
    assert!(has_row(text, &["1", "retired", "120"]));
    assert!(!has_row(text, &["2", "current", "88"]));
    assert!(!has_row(text, &["1", "current"]));
    assert!(!has_row("", &["2"]));
}

// ---------------------------------------------------------------------------------------
// A byte flipped on disk
// ---------------------------------------------------------------------------------------

const FLIP_TENANT: &str = "kho_bac";
const FLIP_TABLE: &str = "so_du";
/// Values written before the value whose SST bytes are flipped, so that its block holds no
/// catalog entry (the node must still start).
const FLIP_FILLER_VALUES: usize = 40;
const FLIP_VALUE_BYTES: usize = 1024;

/// The raw stored (key, value) of row `row` of the first family, read from a stopped node's
/// RocksDB with the engine itself.
fn stored_cell(engine: &kho_engine::Engine, row: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let cells = engine.scan(kho_engine::Cf::Data, &1u32.to_be_bytes(), None, usize::MAX).expect("scan the data column family");
    cells
        .into_iter()
        .find(|(k, _)| kho_engine::keys::decode_data_key(k).is_ok_and(|d| d.row == row))
        .unwrap_or_else(|| panic!("no stored cell for row {:?}", String::from_utf8_lossy(row)))
}

/// Flipping one byte of a stored value, in the value as RocksDB returns it or in the SST
/// file itself, makes its read fail with DATA_LOSS; the other values still read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_on_disk_fails_the_read_and_never_returns_other_data() {
    const NAME: &str = "a_byte_flipped_on_disk_fails_the_read_and_never_returns_other_data";
    let seed = test_seed(NAME);
    let cluster = Cluster::start(1, ClusterOptions { encrypted: true, ..ClusterOptions::default() }).await;
    cluster
        .bounded(NAME, Duration::from_secs(120), async {
            let mut admin = cluster.admin_client(1);
            ok(&cluster, "CreateTenant", create_tenant_with_encryption(&mut admin, FLIP_TENANT, TenantEncryption::Default).await);
            ok(&cluster, "CreateTable", create_table_with(&mut admin, FLIP_TENANT, FLIP_TABLE, &["f"], false).await);
            let target = KvTarget::new(FLIP_TENANT, FLIP_TABLE, "f");
            let value = |i: usize| -> Vec<u8> { (0..FLIP_VALUE_BYTES).map(|j| (i * 31 + j * 7 + (seed as usize)) as u8).collect() };
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
                (0..FLIP_FILLER_VALUES).map(|i| (format!("a-{i:03}").into_bytes(), value(i))).collect();
            pairs.push((b"m-changed-through-rocksdb".to_vec(), value(1000)));
            pairs.push((b"z-changed-in-the-sst".to_vec(), value(2000)));
            put_all(&cluster, &target, &pairs).await;
            ok(&cluster, "CompactNode", admin.compact_node(CompactNodeRequest {}).await);
            cluster.stop(1).await;

            let db = cluster.data_dir(1).join("db");
            let sst_flip = {
                let engine = kho_engine::Engine::open(&db, &kho_engine::EngineOptions::default()).expect("open the stopped node's RocksDB");
                // 1: change a byte of a value as stored (what a disk edit below RocksDB's own
                // checksums, or a bad copy, would give).
                let (key, mut stored) = stored_cell(&engine, b"m-changed-through-rocksdb");
                assert_eq!(stored[0], 2, "values of an encrypted tenant are stored in format 2");
                let at = stored.len() / 2;
                stored[at] ^= 0x01;
                let mut batch = engine.batch();
                batch.put(kho_engine::Cf::Data, &key, &stored);
                engine.write(batch, true).expect("write the changed value");
                // 2: find the other value's ciphertext in an SST file, to flip it there.
                let (_, stored) = stored_cell(&engine, b"z-changed-in-the-sst");
                engine.prepare_for_exit().expect("close the engine");
                stored[kho_engine::value::SEALED_HEADER_LEN..kho_engine::value::SEALED_HEADER_LEN + 32].to_vec()
            };
            let mut flipped = None;
            for file in files_under(&db).expect("list the db").into_iter().filter(|p| p.extension().is_some_and(|e| e == "sst")) {
                let mut bytes = std::fs::read(&file).expect("read an SST file");
                if let Some(at) = bytes.windows(sst_flip.len()).position(|w| w == sst_flip.as_slice()) {
                    bytes[at + 5] ^= 0x01;
                    std::fs::write(&file, &bytes).expect("write the SST file back");
                    flipped = Some(file.clone());
                    break;
                }
            }
            let flipped = flipped.unwrap_or_else(|| cluster.fail("the value's ciphertext is in no SST file (was it compacted?)"));
            println!("flipped one byte of {} and one byte of a stored value", flipped.display());

            cluster.restart(1).await;
            let mut data = cluster.data_client(1);
            let get = |key: &[u8]| GetRequest {
                tenant: FLIP_TENANT.into(),
                table: FLIP_TABLE.into(),
                key: key.to_vec(),
                family: "f".into(),
                ..Default::default()
            };
            for (key, mentions) in [
                (&b"m-changed-through-rocksdb"[..], &["corrupt", "authentication failed"][..]),
                (&b"z-changed-in-the-sst"[..], &["corrupt"][..]),
            ] {
                let mut last = None;
                for _ in 0..20 {
                    match data.get(get(key)).await {
                        Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(200)).await,
                        other => {
                            last = Some(other);
                            break;
                        }
                    }
                }
                let what = format!("Get {}", String::from_utf8_lossy(key));
                expect_status(
                    &cluster,
                    &what,
                    last.unwrap_or_else(|| cluster.fail(format!("{what}: still UNAVAILABLE"))),
                    Code::DataLoss,
                    mentions,
                );
            }
            // Values in other blocks are untouched.
            let got = ok(&cluster, "Get a-000", data.get(get(b"a-000")).await).into_inner();
            assert!(got.found && got.value == value(0), "a value in another block still reads back exactly");
        })
        .await;
}
