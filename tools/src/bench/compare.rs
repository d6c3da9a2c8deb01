//! `kho bench-compare`: Kho, etcd and raw RocksDB side by side in one run on this machine.
//!
//! Starts a 3-node Kho cluster (this binary, `kho server`) and a 3-member etcd cluster
//! (the `etcd` binary of Debian's `etcd-server` package) on loopback, then runs rounds: in
//! each round every workload runs against Kho and against etcd, in alternating order from
//! one round to the next so that drift of the machine (page cache, thermal, background
//! work) affects both; the write shape also runs against an embedded RocksDB with synced
//! writes. It stops every process it started (by its own pid), then writes the medians over
//! the rounds as a markdown table, an SVG chart and the raw reports as JSON.
//!
//! The Kho nodes run with a master key (generated in `DIR/keys`, outside the nodes' data
//! directories), so the Kho-vs-etcd runs use an encrypted tenant (`bench`, created with the
//! default encryption). Each round also measures what encryption costs: the write shape
//! and workload C on a plaintext tenant and on an encrypted tenant of the same cluster,
//! twice each in the order A B B A (B A A B every other round); the "Encryption cost"
//! section has the medians and ratios.
//!
//! Each run also records the CPU time it cost per successful operation ([`CpuPerOp`]):
//! the server processes' (Kho nodes or etcd members) from the start of the run until they
//! are quiet again, so that work a run leaves behind (flushes, compactions, etcd's backend
//! commits) counts toward it; and the benchmark client's (this process) during the run.
//! Unlike throughput, CPU per operation does not depend on how the processes share the
//! machine's cores.
//!
//! `scripts/bench-compare` installs `etcd-server` when missing, builds the release binary
//! and runs this command; docs/BENCHMARKS.md has the figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde::Serialize;
use tokio::process::{Child, Command};

use super::config::{tenant_name, BenchArgs, Phase, TargetKind};
use super::report::{BenchReport, LatencyUs, OpReport, PhaseName, PhaseReport};
use super::security::{security_cost, security_markdown, Caller, SecureKho, SecurityCost, SECURITY_READ_WORKLOAD};
use super::workload::{OpKind, WorkloadName};
use crate::admin_cmd::TenantEncryptionArg;
use crate::local_cluster::{self, LocalCluster};
use crate::master_key;

/// Members of each cluster.
pub(super) const NODES: u64 = 3;
/// Longest wait for a cluster to answer after its start, seconds.
const READY_WAIT_S: u64 = 60;
/// Grace between SIGTERM and SIGKILL when stopping, seconds.
pub(super) const STOP_GRACE_S: u64 = 20;
/// Most rounds.
const ROUNDS_MAX: u32 = 20;
/// After each measured run (and before the first), the clusters must have used less than
/// this much CPU (cores, all their processes together) over one sample interval: a run
/// must not pay for the flushes, compactions and snapshots the run before it left behind,
/// and the run that left them is charged their CPU.
const SETTLE_BUSY_CORES_MAX: f64 = 0.10;
/// One CPU sample interval of the settle wait, milliseconds.
const SETTLE_SAMPLE_MS: u64 = 1_000;
/// Longest settle wait, seconds; the next run then starts anyway (and says so).
const SETTLE_WAIT_MAX_S: u64 = 120;
/// The targets of the main table: Kho (its default, encrypted tenant), etcd, RocksDB.
const MAIN_TARGETS: [&str; 3] = ["kho", "etcd", "rocksdb"];
/// Sample label of the encryption-cost runs on the encrypted tenant.
const KHO_ENCRYPTED: &str = "kho-encrypted";
/// Sample label of the encryption-cost runs on the plaintext tenant.
const KHO_PLAINTEXT: &str = "kho-plaintext";
/// The tenant modes of the encryption-cost runs, with their sample labels (plaintext first
/// and last in even rounds).
const ENCRYPTION_MODES: [(TenantEncryptionArg, &str); 2] =
    [(TenantEncryptionArg::Plaintext, KHO_PLAINTEXT), (TenantEncryptionArg::Encrypted, KHO_ENCRYPTED)];
/// The workload whose reads the encryption cost compares (read only).
const ENCRYPTION_READ_WORKLOAD: WorkloadName = WorkloadName::C;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Where the table (`compare.md`), chart (`compare.svg`) and raw reports
    /// (`compare.json`) are written.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: PathBuf,
    /// Scratch directory for the clusters' data and logs (emptied first).
    #[arg(long, default_value = "kho-bench-compare")]
    pub dir: PathBuf,
    /// Rounds; the table shows the median of each figure over the rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// YCSB workloads run after the write (load) phase in each round, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,f")]
    pub workloads: Vec<String>,
    /// Records written by each round's write phase (the load phase), and the key space.
    #[arg(long, default_value_t = 50_000)]
    pub record_count: u64,
    /// Seconds of each workload's measured run.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Concurrent clients (etcd's "l" shape: 500).
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
    /// Clients sharing one HTTP/2 connection, for Kho and etcd alike (see `kho bench
    /// --workers-per-connection`).
    #[arg(long, default_value_t = crate::bench::config::WORKERS_PER_CONNECTION_DEFAULT)]
    pub workers_per_connection: usize,
    /// Key size, bytes (etcd's "l" shape: 256).
    #[arg(long, default_value_t = 256)]
    pub key_bytes: usize,
    /// Value size, bytes (etcd's "l" shape: 1024).
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// First port of the Kho nodes (3 consecutive client ports; peers from this + 100).
    #[arg(long, default_value_t = 7301)]
    pub kho_base_port: u16,
    /// First port of the etcd members (6 consecutive ports: clients, then peers).
    #[arg(long, default_value_t = 2479)]
    pub etcd_base_port: u16,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Shards Kho's benchmark tables start in (`kho bench --shards`: split at evenly spaced
    /// key numbers, 1 to 64).
    #[arg(long, default_value_t = 1)]
    pub shards: u64,
    /// Skip etcd (when it cannot be installed); Kho and RocksDB still run.
    #[arg(long)]
    pub no_etcd: bool,
    /// First port of the second Kho cluster, with TLS and authorization, of the security
    /// cost (3 consecutive client ports; peers from this + 100).
    #[arg(long, default_value_t = 7311)]
    pub kho_tls_base_port: u16,
    /// Skip the security cost (the TLS cluster and its runs).
    #[arg(long)]
    pub no_security: bool,
    /// Keep the data directories under --dir after a successful run (a failed run always
    /// keeps them, for inspection). They hold several GB after the default rounds.
    #[arg(long)]
    pub keep_data: bool,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    pub(super) round: u32,
    /// `kho`, `etcd`, `rocksdb`, for the encryption cost `kho-encrypted` and
    /// `kho-plaintext`, for the security cost `kho-no-tls`, `kho-tls`, `kho-tls-session`.
    pub(super) target: &'static str,
    /// `write` (the load phase) or a YCSB workload letter.
    pub(super) workload: String,
    pub(super) phase: PhaseReport,
    /// CPU time of the run per successful operation; none when no operation succeeded.
    cpu: Option<CpuPerOp>,
}

/// CPU time one run cost, per successful operation, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct CpuPerOp {
    /// The target's server processes (the 3 Kho nodes, or the 3 etcd members), from the
    /// start of the run until they were quiet again; none for the embedded RocksDB, whose
    /// work is in the client's figure.
    servers_us: Option<f64>,
    /// This process: the benchmark client (and, for RocksDB, the embedded engine).
    client_us: f64,
}

pub async fn command(args: CompareArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.rounds == 0 || args.rounds > ROUNDS_MAX {
        bail!("--rounds: {} is outside 1..={ROUNDS_MAX}", args.rounds);
    }
    let workloads: Vec<WorkloadName> = args.workloads.iter().map(|w| parse_workload(w.trim())).collect::<anyhow::Result<_>>()?;
    let etcd_bin = if args.no_etcd { None } else { Some(find_etcd(&args.etcd_bin)?) };
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).with_context(|| format!("--dir: cannot empty {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("--dir: cannot create {}", args.dir.display()))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out: cannot create {}", args.out.display()))?;
    let dir = args.dir.canonicalize()?;

    let exe = std::env::current_exe().context("the path of this kho binary")?;
    let layouts = local_cluster::layout(&dir.join("kho"), NODES, args.kho_base_port)?;
    std::fs::create_dir_all(dir.join("kho"))?;
    local_cluster::check_free(&layouts)?;
    // Outside the nodes' data directories (DIR/kho/node-<id>).
    let key = master_key::ensure(&dir.join("keys"))?;
    // Plaintext: the side-by-side runs measure storage and Raft; a TLS run is to come
    // (docs/BENCHMARKS.md).
    let mut kho = LocalCluster::start(&exe, &layouts, Some(key.path.as_path()), None).await?;
    let kho_endpoints: Vec<String> = layouts.iter().map(|l| l.addr.clone()).collect();
    let mut secure = None;
    if !args.no_security {
        let base = base_args(&args, TargetKind::Kho, &[]);
        match SecureKho::start(&exe, &dir, &key.path, args.kho_tls_base_port, &base).await {
            Ok(s) => secure = Some(s),
            Err(e) => {
                kho.stop(Duration::from_secs(STOP_GRACE_S)).await;
                return Err(e);
            }
        }
    }
    let mut etcd = match &etcd_bin {
        Some(bin) => match Etcd::start(bin, &dir.join("etcd"), args.etcd_base_port) {
            Ok(e) => Some(e),
            Err(e) => {
                kho.stop(Duration::from_secs(STOP_GRACE_S)).await;
                if let Some(s) = secure.as_mut() {
                    s.cluster.stop(Duration::from_secs(STOP_GRACE_S)).await;
                }
                return Err(e);
            }
        },
        None => None,
    };
    let kho_pids: Vec<u32> = kho.nodes.iter().map(|n| n.pid).collect();
    let etcd_pids: Vec<u32> = etcd.iter().flat_map(|e| e.children.iter().map(|(pid, _)| *pid)).collect();
    let tls_pids: Vec<u32> = secure.iter().flat_map(|s| s.cluster.nodes.iter().map(|n| n.pid)).collect();
    let pids = Pids {
        all: kho_pids.iter().chain(&etcd_pids).chain(&tls_pids).copied().collect(),
        kho: kho_pids,
        etcd: etcd_pids,
        kho_tls: tls_pids,
    };
    let result = rounds(&args, &workloads, &kho_endpoints, etcd.as_ref(), secure.as_ref(), &dir, &pids).await;
    kho.stop(Duration::from_secs(STOP_GRACE_S)).await;
    if let Some(s) = secure.as_mut() {
        s.cluster.stop(Duration::from_secs(STOP_GRACE_S)).await;
    }
    if let Some(e) = etcd.as_mut() {
        e.stop(Duration::from_secs(STOP_GRACE_S)).await;
    }
    let samples = result?;
    write_outputs(&args, &samples)?;
    println!(
        "kho bench-compare: wrote {}, {} and {}",
        args.out.join("compare.md").display(),
        args.out.join("compare.svg").display(),
        args.out.join("compare.json").display()
    );
    if !args.keep_data {
        // Every process that used it was stopped above.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("kho bench-compare: removed {} (--keep-data keeps it)", dir.display()),
            Err(e) => println!("kho bench-compare: could not remove {}: {e}", dir.display()),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn parse_workload(w: &str) -> anyhow::Result<WorkloadName> {
    Ok(match w {
        "a" => WorkloadName::A,
        "b" => WorkloadName::B,
        "c" => WorkloadName::C,
        "d" => WorkloadName::D,
        "e" => WorkloadName::E,
        "f" => WorkloadName::F,
        other => bail!("--workloads: unknown workload `{other}`; use a, b, c, d, e, f"),
    })
}

pub(super) fn workload_label(w: WorkloadName) -> String {
    format!("{w:?}").to_lowercase()
}

/// `name` as given if it contains a slash, else the first match on PATH.
fn find_etcd(name: &Path) -> anyhow::Result<PathBuf> {
    if name.components().count() > 1 {
        return if name.is_file() { Ok(name.to_path_buf()) } else { bail!("--etcd-bin: {} is not a file", name.display()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "--etcd-bin: `{}` is not on PATH; install it with `apt-get install etcd-server` (scripts/bench-compare does), \
         or pass --no-etcd",
        name.display()
    )
}

/// The bench arguments shared by every run of the comparison.
fn base_args(args: &CompareArgs, target: TargetKind, endpoints: &[String]) -> BenchArgs {
    BenchArgs {
        target,
        endpoints: endpoints.to_vec(),
        record_count: args.record_count,
        operation_count: 0,
        duration_secs: args.duration_secs,
        key_bytes: args.key_bytes,
        value_bytes: args.value_bytes,
        concurrency: args.concurrency,
        workers_per_connection: args.workers_per_connection,
        progress_secs: 0,
        shards: if target == TargetKind::Kho { args.shards } else { 1 },
        ..BenchArgs::default()
    }
}

/// CPU time used so far by the processes `pids`, seconds (utime + stime of /proc/PID/stat;
/// a process that is gone counts 0).
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks
}

/// Waits until the processes `pids` are quiet (below `SETTLE_BUSY_CORES_MAX` over one
/// sample), at most `SETTLE_WAIT_MAX_S`.
async fn settle(pids: &[u32]) {
    let start = Instant::now();
    let mut before = cpu_seconds(pids);
    loop {
        tokio::time::sleep(Duration::from_millis(SETTLE_SAMPLE_MS)).await;
        let now = cpu_seconds(pids);
        let cores = (now - before) / (SETTLE_SAMPLE_MS as f64 / 1000.0);
        before = now;
        if cores < SETTLE_BUSY_CORES_MAX {
            if start.elapsed() > Duration::from_millis(2 * SETTLE_SAMPLE_MS) {
                eprintln!("settled after {:.0} s (background work of the previous run)", start.elapsed().as_secs_f64());
            }
            return;
        }
        if start.elapsed() > Duration::from_secs(SETTLE_WAIT_MAX_S) {
            eprintln!("still busy ({cores:.2} cores) after {SETTLE_WAIT_MAX_S} s; starting the next run anyway");
            return;
        }
    }
}

async fn one(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let what = format!("{:?} {:?} {:?} (tenant encryption {})", args.target, args.workload, args.phase, args.tenant_encryption.label());
    super::run(&args).await.with_context(|| format!("bench run {what}"))
}

fn phase_of(report: &BenchReport, name: PhaseName) -> anyhow::Result<PhaseReport> {
    report.phases.iter().find(|p| p.phase == name).cloned().context("a phase missing from a report")
}

/// The processes of each system: the Kho nodes, the etcd members, and all of them (whose
/// quiet every run waits for).
struct Pids {
    kho: Vec<u32>,
    etcd: Vec<u32>,
    /// The TLS cluster of the security cost.
    kho_tls: Vec<u32>,
    all: Vec<u32>,
}

impl Pids {
    fn servers(&self, target: TargetKind) -> Option<&[u32]> {
        match target {
            TargetKind::Kho => Some(&self.kho),
            TargetKind::Etcd => Some(&self.etcd),
            TargetKind::Rocksdb => None,
        }
    }
}

/// Runs one benchmark and returns its phase `name` with the CPU it cost ([`CpuPerOp`]),
/// the servers' counted until the clusters are quiet again after the run: so the next run
/// starts on quiet clusters and does not pay for this one's background work.
async fn measured(args: BenchArgs, name: PhaseName, pids: &Pids) -> anyhow::Result<(PhaseReport, Option<CpuPerOp>)> {
    let servers = pids.servers(args.target);
    measured_on(args, name, servers, pids).await
}

/// [`measured`], counting the CPU of the processes `servers`.
async fn measured_on(
    args: BenchArgs,
    name: PhaseName,
    servers: Option<&[u32]>,
    pids: &Pids,
) -> anyhow::Result<(PhaseReport, Option<CpuPerOp>)> {
    let me = [std::process::id()];
    let (servers_before, client_before) = (servers.map(cpu_seconds), cpu_seconds(&me));
    let report = one(args).await?;
    let client = cpu_seconds(&me) - client_before;
    settle(&pids.all).await;
    let servers_cost = servers.map(cpu_seconds).zip(servers_before).map(|(after, before)| after - before);
    let phase = phase_of(&report, name)?;
    let cpu = (phase.ops > 0).then(|| {
        let per_op = |seconds: f64| seconds * 1e6 / phase.ops as f64;
        CpuPerOp { servers_us: servers_cost.map(per_op), client_us: per_op(client) }
    });
    Ok((phase, cpu))
}

async fn rounds(
    args: &CompareArgs,
    workloads: &[WorkloadName],
    kho: &[String],
    etcd: Option<&Etcd>,
    secure: Option<&SecureKho>,
    dir: &Path,
    pids: &Pids,
) -> anyhow::Result<Vec<Sample>> {
    wait_ready(TargetKind::Kho, kho).await?;
    if let Some(e) = etcd {
        wait_ready(TargetKind::Etcd, &e.endpoints).await?;
    }
    // Quiet before the first run; every run then waits for quiet after itself.
    settle(&pids.all).await;
    let mut samples = Vec::new();
    for round in 0..args.rounds {
        let mut targets: Vec<(TargetKind, Vec<String>)> = vec![(TargetKind::Kho, kho.to_vec())];
        if let Some(e) = etcd {
            targets.push((TargetKind::Etcd, e.endpoints.clone()));
        }
        if round % 2 == 1 {
            targets.reverse();
        }
        // The write shape: the load phase (one insert per operation).
        for (target, endpoints) in &targets {
            let run = BenchArgs { phase: Phase::Load, ..base_args(args, *target, endpoints) };
            let (phase, cpu) = measured(run, PhaseName::Load, pids).await?;
            eprintln!("round {round}: {} write: {:.0} ops/s{}", label(*target), phase.throughput_ops_per_sec, cpu_text(cpu));
            samples.push(Sample { round, target: label(*target), workload: "write".into(), phase, cpu });
        }
        // The physical reference: synced writes to an embedded RocksDB, same shape.
        let rocks_dir = dir.join(format!("rocksdb-{round}"));
        let run = BenchArgs { phase: Phase::Load, data_dir: Some(rocks_dir.clone()), ..base_args(args, TargetKind::Rocksdb, &[]) };
        let (phase, cpu) = measured(run, PhaseName::Load, pids).await?;
        eprintln!("round {round}: rocksdb write: {:.0} ops/s{}", phase.throughput_ops_per_sec, cpu_text(cpu));
        samples.push(Sample { round, target: "rocksdb", workload: "write".into(), phase, cpu });
        let _ = std::fs::remove_dir_all(&rocks_dir);

        for &w in workloads {
            for (target, endpoints) in &targets {
                let run = BenchArgs { phase: Phase::Run, workload: w, ..base_args(args, *target, endpoints) };
                let (phase, cpu) = measured(run, PhaseName::Run, pids).await?;
                eprintln!(
                    "round {round}: {} workload {}: {:.0} ops/s{}",
                    label(*target),
                    workload_label(w),
                    phase.throughput_ops_per_sec,
                    cpu_text(cpu)
                );
                samples.push(Sample { round, target: label(*target), workload: workload_label(w), phase, cpu });
            }
        }

        // Encryption cost: the same shapes on a plaintext and an encrypted tenant of the
        // same Kho cluster, in the order A B B A (B A A B in odd rounds): each tenant runs as
        // often early in a round as late, so a drift within the round cancels out.
        let [first, second] = if round % 2 == 0 { ENCRYPTION_MODES } else { [ENCRYPTION_MODES[1], ENCRYPTION_MODES[0]] };
        let modes = [first, second, second, first];
        for &(mode, target) in &modes {
            let run = BenchArgs { phase: Phase::Load, tenant_encryption: mode, ..base_args(args, TargetKind::Kho, kho) };
            let (phase, cpu) = measured(run, PhaseName::Load, pids).await?;
            eprintln!("round {round}: {target} write: {:.0} ops/s{}", phase.throughput_ops_per_sec, cpu_text(cpu));
            samples.push(Sample { round, target, workload: "write".into(), phase, cpu });
        }
        for &(mode, target) in &modes {
            let run = BenchArgs {
                phase: Phase::Run,
                workload: ENCRYPTION_READ_WORKLOAD,
                tenant_encryption: mode,
                ..base_args(args, TargetKind::Kho, kho)
            };
            let (phase, cpu) = measured(run, PhaseName::Run, pids).await?;
            let w = workload_label(ENCRYPTION_READ_WORKLOAD);
            eprintln!("round {round}: {target} workload {w}: {:.0} ops/s{}", phase.throughput_ops_per_sec, cpu_text(cpu));
            samples.push(Sample { round, target, workload: w, phase, cpu });
        }

        // Security cost: the same shapes without TLS, with TLS and authorization, and in an
        // audited access session (super::security).
        if let Some(s) = secure {
            let order = Caller::order(round);
            for (phase_name, workload) in [(PhaseName::Load, None), (PhaseName::Run, Some(SECURITY_READ_WORKLOAD))] {
                for &caller in &order {
                    let mut base = BenchArgs { tenant_encryption: TenantEncryptionArg::Encrypted, ..base_args(args, TargetKind::Kho, kho) };
                    base.phase = if workload.is_some() { Phase::Run } else { Phase::Load };
                    if let Some(w) = workload {
                        base.workload = w;
                    }
                    let (run, servers) = match caller {
                        Caller::NoTls => (base, &pids.kho),
                        _ => (s.args(caller, base), &pids.kho_tls),
                    };
                    let (phase, cpu) = measured_on(run, phase_name, Some(servers), pids).await?;
                    let w = workload.map_or_else(|| "write".to_string(), workload_label);
                    eprintln!("round {round}: {} {w}: {:.0} ops/s{}", caller.label(), phase.throughput_ops_per_sec, cpu_text(cpu));
                    samples.push(Sample { round, target: caller.label(), workload: w, phase, cpu });
                }
            }
        }
    }
    Ok(samples)
}

/// `; CPU per op: servers N µs, client N µs` for the progress lines.
fn cpu_text(cpu: Option<CpuPerOp>) -> String {
    match cpu {
        Some(CpuPerOp { servers_us: Some(s), client_us }) => {
            format!("; CPU per op: servers {s:.0} µs, client {client_us:.0} µs")
        }
        Some(CpuPerOp { servers_us: None, client_us }) => format!("; CPU per op: {client_us:.0} µs"),
        None => String::new(),
    }
}

fn label(t: TargetKind) -> &'static str {
    match t {
        TargetKind::Kho => "kho",
        TargetKind::Etcd => "etcd",
        TargetKind::Rocksdb => "rocksdb",
    }
}

/// Waits until a tiny read succeeds (a leader is elected), bounded by `READY_WAIT_S`.
async fn wait_ready(target: TargetKind, endpoints: &[String]) -> anyhow::Result<()> {
    wait_ready_with(BenchArgs { target, endpoints: endpoints.to_vec(), ..BenchArgs::default() }, label(target)).await
}

/// A probe's arguments: one write with `base`'s target, endpoints and TLS.
pub(super) fn probe(base: BenchArgs) -> BenchArgs {
    BenchArgs { record_count: 1, operation_count: 1, duration_secs: 0, concurrency: 1, phase: Phase::Load, progress_secs: 0, ..base }
}

/// Waits until a probe write with `args`' target, endpoints and TLS succeeds, at most
/// READY_WAIT_S.
pub(super) async fn wait_ready_with(args: BenchArgs, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(READY_WAIT_S);
    let probe = probe(args);
    let mut last = String::new();
    while Instant::now() < deadline {
        match super::run(&probe).await {
            Ok(r) if r.phases.iter().all(|p| p.errors == 0) => return Ok(()),
            Ok(_) => last = "the probe write failed".into(),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{what} did not answer within {READY_WAIT_S} s: {last}")
}

/// The etcd members this command started.
struct Etcd {
    children: Vec<(u32, Child)>,
    endpoints: Vec<String>,
}

impl Etcd {
    fn start(bin: &Path, dir: &Path, base_port: u16) -> anyhow::Result<Etcd> {
        std::fs::create_dir_all(dir)?;
        let last = u64::from(base_port) + 2 * NODES;
        if base_port == 0 || last > u64::from(u16::MAX) {
            bail!("--etcd-base-port {base_port}: ports up to {last} must be within 1..=65535");
        }
        let client = |i: u64| format!("127.0.0.1:{}", u64::from(base_port) + i - 1);
        let peer = |i: u64| format!("http://127.0.0.1:{}", u64::from(base_port) + NODES + i - 1);
        let cluster: Vec<String> = (1..=NODES).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut etcd = Etcd { children: Vec::new(), endpoints: (1..=NODES).map(client).collect() };
        for i in 1..=NODES {
            let log = std::fs::File::create(dir.join(format!("etcd-{i}.log")))?;
            let spawned = Command::new(bin)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}")))
                .args(["--listen-client-urls", &format!("http://{}", client(i))])
                .args(["--advertise-client-urls", &format!("http://{}", client(i))])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "kho-bench-compare"])
                // etcd's own guidance for large values and many clients; the defaults
                // otherwise (fsync on every commit, as Kho).
                .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn();
            match spawned {
                Ok(child) => {
                    let pid = child.id().context("etcd exited at once")?;
                    etcd.children.push((pid, child));
                }
                Err(e) => {
                    for (pid, _) in &etcd.children {
                        signal(*pid, libc::SIGKILL);
                    }
                    bail!("cannot start {}: {e}", bin.display());
                }
            }
        }
        Ok(etcd)
    }

    async fn stop(&mut self, grace: Duration) {
        for (pid, _) in &self.children {
            signal(*pid, libc::SIGTERM);
        }
        for (pid, child) in &mut self.children {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                signal(*pid, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
        self.children.clear();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One row of the table: medians over the rounds.
struct Row {
    workload: String,
    target: &'static str,
    op: OpKind,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: f64,
}

/// The rows of the main table: the targets of [`MAIN_TARGETS`] only.
fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut keys: Vec<(String, &'static str, OpKind)> = Vec::new();
    for s in samples.iter().filter(|s| MAIN_TARGETS.contains(&s.target)) {
        for o in &s.phase.operations {
            let k = (s.workload.clone(), s.target, o.op);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys.into_iter()
        .map(|(workload, target, op)| {
            let ops: Vec<_> = samples
                .iter()
                .filter(|s| s.workload == workload && s.target == target)
                .filter_map(|s| s.phase.operations.iter().find(|o| o.op == op))
                .collect();
            Row {
                ops_per_sec: median(ops.iter().map(|o| o.throughput_ops_per_sec).collect()),
                p50_us: median(ops.iter().filter_map(|o| o.latency_us.as_ref()).map(|l| l.p50 as f64).collect()),
                p99_us: median(ops.iter().filter_map(|o| o.latency_us.as_ref()).map(|l| l.p99 as f64).collect()),
                errors: median(ops.iter().map(|o| o.errors as f64).collect()),
                workload,
                target,
                op,
            }
        })
        .collect()
}

/// One figure of the encryption cost, medians over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Versus {
    encrypted: f64,
    plaintext: f64,
    /// encrypted / plaintext; none when the plaintext figure is 0.
    ratio: Option<f64>,
}

fn versus(encrypted: f64, plaintext: f64) -> Versus {
    Versus { encrypted, plaintext, ratio: (plaintext > 0.0).then(|| encrypted / plaintext) }
}

/// What encryption at rest costs: the write shape and workload C on an encrypted tenant
/// versus a plaintext tenant of the same cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct EncryptionCost {
    encrypted_tenant: String,
    plaintext_tenant: String,
    writes_per_sec: Versus,
    reads_per_sec: Versus,
    read_p50_ms: Versus,
    read_p99_ms: Versus,
}

/// The encryption cost of the samples; none when a run of either tenant is missing.
fn encryption_cost(samples: &[Sample]) -> Option<EncryptionCost> {
    let ops = |target: &str, workload: &str, op: OpKind| -> Vec<&OpReport> {
        samples
            .iter()
            .filter(|s| s.target == target && s.workload == workload)
            .filter_map(|s| s.phase.operations.iter().find(|o| o.op == op))
            .collect()
    };
    let read_workload = workload_label(ENCRYPTION_READ_WORKLOAD);
    let writes = (ops(KHO_ENCRYPTED, "write", OpKind::Insert), ops(KHO_PLAINTEXT, "write", OpKind::Insert));
    let reads = (ops(KHO_ENCRYPTED, &read_workload, OpKind::Read), ops(KHO_PLAINTEXT, &read_workload, OpKind::Read));
    if writes.0.is_empty() || writes.1.is_empty() || reads.0.is_empty() || reads.1.is_empty() {
        return None;
    }
    let per_sec = |v: &[&OpReport]| median(v.iter().map(|o| o.throughput_ops_per_sec).collect());
    let ms = |v: &[&OpReport], pick: fn(&LatencyUs) -> u64| {
        median(v.iter().filter_map(|o| o.latency_us.as_ref()).map(|l| pick(l) as f64 / 1000.0).collect())
    };
    let base = BenchArgs::default().tenant;
    Some(EncryptionCost {
        encrypted_tenant: tenant_name(&base, TenantEncryptionArg::Encrypted),
        plaintext_tenant: tenant_name(&base, TenantEncryptionArg::Plaintext),
        writes_per_sec: versus(per_sec(&writes.0), per_sec(&writes.1)),
        reads_per_sec: versus(per_sec(&reads.0), per_sec(&reads.1)),
        read_p50_ms: versus(ms(&reads.0, |l| l.p50), ms(&reads.1, |l| l.p50)),
        read_p99_ms: versus(ms(&reads.0, |l| l.p99), ms(&reads.1, |l| l.p99)),
    })
}

/// The "Encryption cost" section of compare.md.
fn encryption_markdown(c: &EncryptionCost) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "\n## Encryption cost\n");
    let _ = writeln!(
        md,
        "Kho only, one cluster (its nodes have a master key). In each round the write shape and workload {} run on \
         tenant `{}` (created `--tenant-encryption plaintext`) and on tenant `{}` (`encrypted`: every value sealed \
         with AES-256-GCM), twice each per round in the order plaintext, encrypted, encrypted, plaintext (reversed every \
         other round). Medians over all those runs; the ratio is encrypted / plaintext \
         (below 1 for a rate, above 1 for a latency, is what encryption costs).\n",
        workload_label(ENCRYPTION_READ_WORKLOAD),
        c.plaintext_tenant,
        c.encrypted_tenant
    );
    let _ = writeln!(md, "| figure | encrypted | plaintext | encrypted / plaintext |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let ratio = |v: &Versus| v.ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".to_string());
    let reads = workload_label(ENCRYPTION_READ_WORKLOAD);
    for (name, v, decimals) in [
        ("writes/s".to_string(), &c.writes_per_sec, 0usize),
        (format!("reads/s (workload {reads})"), &c.reads_per_sec, 0),
        (format!("read p50 ms (workload {reads})"), &c.read_p50_ms, 2),
        (format!("read p99 ms (workload {reads})"), &c.read_p99_ms, 2),
    ] {
        let _ = writeln!(md, "| {name} | {:.*} | {:.*} | {} |", decimals, v.encrypted, decimals, v.plaintext, ratio(v));
    }
    md
}

/// compare.json: every run's report, and the encryption cost.
#[derive(Serialize)]
struct CompareJson<'a> {
    samples: &'a [Sample],
    encryption_cost: Option<EncryptionCost>,
    security_cost: Option<SecurityCost>,
}

/// The "CPU per operation" section: medians over the rounds of each run's [`CpuPerOp`],
/// per workload of the main targets.
fn cpu_markdown(samples: &[Sample], workloads: &[String]) -> String {
    let med = |w: &str, t: &str, f: fn(&CpuPerOp) -> Option<f64>| {
        let v: Vec<f64> = samples.iter().filter(|s| s.workload == w && s.target == t).filter_map(|s| s.cpu.as_ref().and_then(f)).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let servers = |c: &CpuPerOp| c.servers_us;
    let client = |c: &CpuPerOp| Some(c.client_us);
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
    let mut md = String::from(
        "\n## CPU per operation\n\nCPU time per successful operation, microseconds (medians over the rounds): the \
         servers' (the 3 Kho nodes, or the 3 etcd members) from the start of a run until they are quiet again, so \
         work a run leaves behind counts toward it; the benchmark client's during the run (for RocksDB, client and \
         embedded engine together). Unlike throughput, these do not depend on how the processes share the \
         machine's cores; they do include the background work a run sets off (a flush, a compaction), which falls \
         into some runs and not others.\n\n\
         | workload | Kho nodes | etcd members | Kho/etcd | Kho client | etcd client | RocksDB |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for w in workloads {
        let (k, e) = (med(w, "kho", servers), med(w, "etcd", servers));
        let ratio = k.zip(e).filter(|(_, e)| *e > 0.0).map(|(k, e)| format!("{:.2}", k / e)).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {w} | {} | {} | {ratio} | {} | {} | {} |",
            cell(k),
            cell(e),
            cell(med(w, "kho", client)),
            cell(med(w, "etcd", client)),
            cell(med(w, "rocksdb", client)),
        );
    }
    md
}

fn write_outputs(args: &CompareArgs, samples: &[Sample]) -> anyhow::Result<()> {
    let rows = rows(samples);
    let cost = encryption_cost(samples);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Generated by `kho bench-compare` ({} rounds; {} clients, {} per connection, keys {} B, values {} B, {} records, {} s per workload; \
         Kho's tables in {} shard(s)). Medians over the rounds. `write` is the load phase: one insert per operation. The Kho rows run on tenant \
         `{}`, created with the default encryption: the Kho nodes have a master key, so its values are encrypted at \
         rest (see \"Encryption cost\" below).\n",
        args.rounds,
        args.concurrency,
        args.workers_per_connection,
        args.key_bytes,
        args.value_bytes,
        args.record_count,
        args.duration_secs,
        args.shards,
        BenchArgs::default().tenant
    );
    let _ = writeln!(md, "| workload | op | target | ops/s | p50 ms | p99 ms | errors/run |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0} |",
            r.workload,
            serde_json::to_value(r.op).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            r.target,
            r.ops_per_sec,
            r.p50_us / 1000.0,
            r.p99_us / 1000.0,
            r.errors
        );
    }
    let _ = writeln!(md, "\nRatios (Kho / etcd, throughput of the whole workload):\n");
    let mut workloads: Vec<String> = Vec::new();
    for s in samples.iter().filter(|s| MAIN_TARGETS.contains(&s.target)) {
        if !workloads.contains(&s.workload) {
            workloads.push(s.workload.clone());
        }
    }
    let total = |w: &str, t: &str| {
        median(samples.iter().filter(|s| s.workload == w && s.target == t).map(|s| s.phase.throughput_ops_per_sec).collect())
    };
    for w in &workloads {
        let (k, e, r) = (total(w, "kho"), total(w, "etcd"), total(w, "rocksdb"));
        let mut line = format!("- {w}: Kho {k:.0} ops/s");
        if e > 0.0 {
            line.push_str(&format!(", etcd {e:.0} ops/s, Kho/etcd {:.2}", k / e));
        }
        if r > 0.0 {
            line.push_str(&format!(", RocksDB {r:.0} ops/s, Kho/RocksDB {:.2}", k / r));
        }
        let _ = writeln!(md, "{line}");
    }
    md.push_str(&cpu_markdown(samples, &workloads));
    match &cost {
        Some(c) => md.push_str(&encryption_markdown(c)),
        None => md.push_str("\n## Encryption cost\n\nNot measured: a run of the encrypted or the plaintext tenant is missing.\n"),
    }
    let security = security_cost(samples);
    match &security {
        Some(c) => md.push_str(&security_markdown(c)),
        None => md.push_str("\n## Security cost\n\nNot measured (`--no-security`, or a caller's runs are missing).\n"),
    }
    std::fs::write(args.out.join("compare.md"), md)?;
    let json = CompareJson { samples, encryption_cost: cost, security_cost: security };
    std::fs::write(args.out.join("compare.json"), serde_json::to_string_pretty(&json)?)?;
    let bars: Vec<(String, Vec<(&str, f64)>)> = workloads
        .iter()
        .map(|w| (w.clone(), ["kho", "etcd", "rocksdb"].iter().map(|t| (*t, total(w, t))).filter(|(_, v)| *v > 0.0).collect()))
        .collect();
    std::fs::write(args.out.join("compare.svg"), svg_chart(&bars))?;
    Ok(())
}

/// A grouped bar chart of throughput per workload and target, as plain SVG.
fn svg_chart(groups: &[(String, Vec<(&str, f64)>)]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 80.0;
    const BOTTOM: f64 = 60.0;
    const TOP: f64 = 50.0;
    let colors = |t: &str| match t {
        "kho" => "#1f77b4",
        "etcd" => "#ff7f0e",
        _ => "#2ca02c",
    };
    let max = groups.iter().flat_map(|(_, b)| b.iter().map(|(_, v)| *v)).fold(1.0f64, f64::max);
    let plot_h = H - TOP - BOTTOM;
    let group_w = (W - LEFT - 20.0) / groups.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">Throughput by workload (ops/s, median of rounds)</text>\n",
        W / 2.0
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(s, "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>", W - 20.0);
        let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>", LEFT - 6.0, y + 4.0);
    }
    for (gi, (name, bars)) in groups.iter().enumerate() {
        let x0 = LEFT + group_w * gi as f64;
        let bar_w = (group_w - 20.0) / bars.len().max(1) as f64;
        for (bi, (t, v)) in bars.iter().enumerate() {
            let h = plot_h * v / max;
            let x = x0 + 10.0 + bar_w * bi as f64;
            let y = TOP + plot_h - h;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{t} {name}: {v:.0} ops/s</title></rect>",
                bar_w - 4.0,
                colors(t)
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.0}</text>",
                x + (bar_w - 4.0) / 2.0,
                y - 3.0
            );
        }
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text>", x0 + group_w / 2.0, H - BOTTOM + 18.0);
    }
    for (i, t) in ["kho", "etcd", "rocksdb"].iter().enumerate() {
        let x = LEFT + 10.0 + 110.0 * i as f64;
        let _ = writeln!(s, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>", H - 24.0, colors(t));
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">{t}</text>", x + 18.0, H - 14.0);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_counts_this_process_and_not_a_missing_one() {
        // The process's CPU time by another route: getrusage.
        let rusage_s = || {
            // SAFETY: getrusage writes into the struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0, "getrusage");
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            secs(u.ru_utime) + secs(u.ru_stime)
        };
        let before = cpu_seconds(&[std::process::id()]);
        let (start, wall) = (rusage_s(), Instant::now());
        // Spin until getrusage says this process used 0.3 s more (10 s at most, on a busy machine).
        let mut x = 0u64;
        while rusage_s() - start < 0.3 && wall.elapsed() < Duration::from_secs(10) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let after = cpu_seconds(&[std::process::id()]);
        assert!(rusage_s() - start >= 0.3, "could not get 0.3 s of CPU in 10 s");
        assert!(after - before >= 0.25, "0.3 s of spinning counted as {:.3} s of CPU", after - before);
        assert_eq!(cpu_seconds(&[u32::MAX]), 0.0, "a pid that does not exist uses no CPU");
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn chart_has_a_bar_per_target_and_workload() {
        let svg = svg_chart(&[
            ("write".into(), vec![("kho", 100.0), ("etcd", 50.0), ("rocksdb", 200.0)]),
            ("c".into(), vec![("kho", 300.0), ("etcd", 150.0)]),
        ]);
        assert_eq!(svg.matches("<title>").count(), 5, "{svg}");
        assert!(svg.contains("kho write: 100 ops/s"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    fn sample(round: u32, target: &'static str, workload: &str, op: OpKind, ops_per_sec: f64, p50_us: u64) -> Sample {
        let latency =
            LatencyUs { min: 1, mean: p50_us as f64, p50: p50_us, p95: 2 * p50_us, p99: 3 * p50_us, p999: 4 * p50_us, max: 5 * p50_us };
        let o = OpReport {
            op,
            count: 100,
            not_found: 0,
            errors: 0,
            errors_by_status: Default::default(),
            throughput_ops_per_sec: ops_per_sec,
            latency_us: Some(latency),
        };
        let phase = PhaseReport {
            phase: if workload == "write" { PhaseName::Load } else { PhaseName::Run },
            warmup_secs: 0.0,
            elapsed_secs: 1.0,
            ops: 100,
            errors: 0,
            throughput_ops_per_sec: ops_per_sec,
            operations: vec![o],
        };
        let cpu = Some(CpuPerOp { servers_us: (target != "rocksdb").then_some(ops_per_sec / 100.0), client_us: 20.0 });
        Sample { round, target, workload: workload.to_string(), phase, cpu }
    }

    #[test]
    fn cpu_per_operation_is_medians_per_system() {
        // Server CPU per op is ops_per_sec / 100 in `sample`: medians 10 (Kho) and 8 (etcd).
        let mut samples = vec![
            sample(0, "kho", "write", OpKind::Insert, 900.0, 5000),
            sample(1, "kho", "write", OpKind::Insert, 1000.0, 5000),
            sample(2, "kho", "write", OpKind::Insert, 5000.0, 5000),
            sample(0, "etcd", "write", OpKind::Insert, 800.0, 5000),
            sample(0, "rocksdb", "write", OpKind::Insert, 3000.0, 5000),
            sample(0, "kho", "c", OpKind::Read, 3000.0, 5000),
        ];
        // A run where nothing succeeded has no CPU figure and does not count.
        samples.push(Sample { cpu: None, ..sample(3, "etcd", "c", OpKind::Read, 0.0, 5000) });
        let md = cpu_markdown(&samples, &["write".to_string(), "c".to_string()]);
        assert!(md.contains("| write | 10 | 8 | 1.25 | 20 | 20 | 20 |"), "{md}");
        assert!(md.contains("| c | 30 | – | – | 20 | – | – |"), "{md}");
    }

    #[test]
    fn encryption_cost_is_medians_of_encrypted_versus_plaintext() {
        let mut samples = vec![sample(0, "kho", "write", OpKind::Insert, 1000.0, 5000)];
        let rounds = [(0, 900.0, 1000.0, 4000.0, 5000.0), (1, 700.0, 1000.0, 4500.0, 5000.0), (2, 800.0, 1000.0, 3000.0, 5000.0)];
        for (round, enc_w, plain_w, enc_r, plain_r) in rounds {
            samples.push(sample(round, KHO_ENCRYPTED, "write", OpKind::Insert, enc_w, 2000));
            samples.push(sample(round, KHO_PLAINTEXT, "write", OpKind::Insert, plain_w, 1000));
            samples.push(sample(round, KHO_ENCRYPTED, "c", OpKind::Read, enc_r, 1500));
            samples.push(sample(round, KHO_PLAINTEXT, "c", OpKind::Read, plain_r, 1000));
        }
        let c = encryption_cost(&samples).unwrap();
        assert_eq!(c.writes_per_sec, versus(800.0, 1000.0));
        assert_eq!(c.writes_per_sec.ratio, Some(0.8));
        assert_eq!(c.reads_per_sec, versus(4000.0, 5000.0));
        assert_eq!(c.read_p50_ms, versus(1.5, 1.0));
        assert_eq!(c.read_p99_ms, versus(4.5, 3.0));
        assert_eq!((c.encrypted_tenant.as_str(), c.plaintext_tenant.as_str()), ("bench_enc", "bench_plain"));
        let md = encryption_markdown(&c);
        assert!(md.contains("## Encryption cost"), "{md}");
        assert!(md.contains("| writes/s | 800 | 1000 | 0.80 |"), "{md}");
        assert!(md.contains("| reads/s (workload c) | 4000 | 5000 | 0.80 |"), "{md}");
        assert!(md.contains("| read p99 ms (workload c) | 4.50 | 3.00 | 1.50 |"), "{md}");
        // The encryption runs stay out of the main table.
        assert!(rows(&samples).iter().all(|r| r.target == "kho"));
        // Without both tenants' runs there is no figure.
        assert_eq!(encryption_cost(&samples[..2]), None);
        assert_eq!(versus(1.0, 0.0).ratio, None);
    }

    #[test]
    fn security_cost_is_medians_per_caller_in_a_b_c_c_b_a_order() {
        use super::super::security::{KHO_NO_TLS, KHO_TLS, KHO_TLS_SESSION};
        let labels = |r| Caller::order(r).map(Caller::label);
        assert_eq!(labels(0), [KHO_NO_TLS, KHO_TLS, KHO_TLS_SESSION, KHO_TLS_SESSION, KHO_TLS, KHO_NO_TLS]);
        assert_eq!(labels(1), [KHO_TLS_SESSION, KHO_TLS, KHO_NO_TLS, KHO_NO_TLS, KHO_TLS, KHO_TLS_SESSION]);
        let mut samples = Vec::new();
        for (round, scale) in [(0u32, 1.0), (1, 1.2), (2, 0.9)] {
            for (target, w, r) in [(KHO_NO_TLS, 1000.0, 4000.0), (KHO_TLS, 900.0, 3600.0), (KHO_TLS_SESSION, 450.0, 1200.0)] {
                samples.push(sample(round, target, "write", OpKind::Insert, w * scale, 2000));
                samples.push(sample(round, target, "c", OpKind::Read, r * scale, (4_000_000.0 / r) as u64));
            }
        }
        let c = security_cost(&samples).unwrap();
        assert_eq!((c.writes_per_sec.no_tls, c.writes_per_sec.tls, c.writes_per_sec.session), (1000.0, 900.0, 450.0));
        assert_eq!((c.reads_per_sec.no_tls, c.reads_per_sec.tls, c.reads_per_sec.session), (4000.0, 3600.0, 1200.0));
        let md = security_markdown(&c);
        assert!(md.contains("## Security cost"), "{md}");
        assert!(md.contains("| writes/s | 1000 | 900 | 450 | 0.90 | 0.50 |"), "{md}");
        assert!(md.contains("| reads/s (workload c) | 4000 | 3600 | 1200 | 0.90 | 0.33 |"), "{md}");
        // The security runs stay out of the main table; without a caller's runs, no figure.
        assert!(rows(&samples).is_empty());
        assert_eq!(security_cost(&samples[..4]), None);
    }

    #[test]
    fn unknown_workload_names_the_flag() {
        let e = parse_workload("z").unwrap_err().to_string();
        assert!(e.contains("--workloads"), "{e}");
    }
}
