//! One fault-injection run from start to verdict: a cluster with proxies between its nodes,
//! the register and set workloads, a nemesis schedule, then the checks (linearizability of
//! the register history, the set's final read, replicas converged) and a printed summary.
//! A run that fails writes its history and fault schedule to files and names them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checker::{self, CheckLimits, Report};
use crate::history::{json_line, History, HistoryStats};
use crate::nemesis::{Fault, FaultEvent, Nemesis, ScheduleTiming};
use crate::workload::{check_set, RegisterConfig, RegisterWorkload, SetVerdict, SetWorkload, Targets};
use crate::{assert_checksums_equal, setup_kv, Cluster, ClusterOptions};

/// Longest wait for replicas to reach the same applied index after the run, seconds.
const CONVERGE_WAIT_S: u64 = 120;
/// Quiet time after the last fault heals, before the workload stops, milliseconds: every
/// run ends with operations on a healthy cluster.
const TAIL_QUIET_MS: u64 = 1_500;
/// Longest a scenario's cluster start, schedule and checks may take beyond its duration,
/// seconds.
pub const SCENARIO_OVERHEAD_S: u64 = 300;

/// Environment variable: when 1, passing runs also write their history and schedule.
pub const KEEP_ENV: &str = "KHO_NEMESIS_KEEP";

/// What a run must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The register history is linearizable, the set read valid, replicas identical.
    Correct,
    /// The checker finds a linearizability violation (the stale-read proof).
    Violation,
}

/// A run's parameters.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub name: String,
    pub seed: u64,
    pub nodes: u64,
    /// Spare nodes for `Fault::ReplaceNode`, count.
    pub spare_nodes: u64,
    pub faults: Vec<Fault>,
    /// How long the nemesis schedule runs.
    pub duration: Duration,
    pub timing: ScheduleTiming,
    pub register: RegisterConfig,
    /// Set-workload clients, count (0: no set workload).
    pub set_clients: u64,
    /// Most writes of one set client, count.
    pub set_writes_max: u64,
    pub expect: Expect,
    /// Where a failing run writes its files (a directory per run is made inside).
    pub artifacts_dir: PathBuf,
    pub check_limits: CheckLimits,
    /// Write the files of a passing run too (default: `KHO_NEMESIS_KEEP=1`).
    pub keep_artifacts: bool,
}

impl ScenarioConfig {
    pub fn new(name: &str, seed: u64, faults: &[Fault], duration: Duration, artifacts_dir: &Path) -> ScenarioConfig {
        ScenarioConfig {
            name: name.to_string(),
            seed,
            nodes: 3,
            spare_nodes: 0,
            faults: faults.to_vec(),
            duration,
            timing: ScheduleTiming::default(),
            register: RegisterConfig::default(),
            set_clients: 2,
            set_writes_max: 1_000_000,
            expect: Expect::Correct,
            artifacts_dir: artifacts_dir.to_path_buf(),
            check_limits: CheckLimits::default(),
            keep_artifacts: std::env::var(KEEP_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

/// What a run found.
pub struct ScenarioReport {
    pub stats: HistoryStats,
    pub faults: String,
    pub report: Report,
    pub set: Option<SetVerdict>,
    pub check_time: Duration,
    pub summary: String,
}

/// `raft.snapshot_logs_since_last` of fault-injection runs, log entries: low, so that
/// snapshots are built, sent and installed under faults many times per run.
pub const NEMESIS_SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;
/// `raft.logs_to_keep_after_snapshot` of fault-injection runs, log entries: a node that was
/// down or cut off for more than this catches up by snapshot.
pub const NEMESIS_LOGS_KEPT_AFTER_SNAPSHOT: u64 = 500;

/// Cluster options of every fault-injection run: proxies between nodes, encryption at rest
/// (sealed log entries, snapshots and values go through every fault), frequent snapshots,
/// and client deadlines short enough that a run under faults keeps moving.
pub fn nemesis_cluster_options(spare_nodes: u64) -> ClusterOptions {
    ClusterOptions {
        network_faults: true,
        proposal_timeout_ms: Some(2_000),
        spare_nodes,
        encrypted: true,
        snapshot_logs_since_last: Some(NEMESIS_SNAPSHOT_EVERY_ENTRIES),
        logs_to_keep_after_snapshot: Some(NEMESIS_LOGS_KEPT_AFTER_SNAPSHOT),
        ..ClusterOptions::default()
    }
}

/// Snapshots built and installed over the run, counted in every node's log (a node's log
/// file is appended to across restarts).
fn count_snapshots(cluster: &Cluster) -> (usize, usize) {
    let mut built = 0;
    let mut installed = 0;
    for id in cluster.ids() {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        built += log.matches("built snapshot").count();
        installed += log.matches("installed snapshot").count();
    }
    (built, installed)
}

/// Runs the scenario and checks it against `cfg.expect`; panics (naming the files written)
/// when the check fails. Returns the report (also printed).
pub async fn run_scenario(cfg: &ScenarioConfig) -> ScenarioReport {
    println!(
        "scenario {}: seed {} (replay with {}={}), {} nodes, faults {:?}, {} s",
        cfg.name,
        cfg.seed,
        crate::SEED_ENV,
        cfg.seed,
        cfg.nodes,
        cfg.faults,
        cfg.duration.as_secs()
    );
    let cluster = Cluster::start(cfg.nodes, nemesis_cluster_options(cfg.spare_nodes)).await;
    let limit = cfg.duration + Duration::from_secs(SCENARIO_OVERHEAD_S);
    cluster.bounded(&cfg.name, limit, run_on(&cluster, cfg)).await
}

async fn run_on(cluster: &Cluster, cfg: &ScenarioConfig) -> ScenarioReport {
    let target = setup_kv(cluster, 1).await;
    let members: Vec<u64> = (1..=cfg.nodes).collect();
    let targets = Targets::new(cluster, members);
    let start = Instant::now();
    let history = History::new(start);
    let register = RegisterWorkload::spawn(&targets, &target, &cfg.register, cfg.seed, history);
    let set = (cfg.set_clients > 0).then(|| {
        SetWorkload::spawn(&targets, &target, cfg.set_clients, cfg.register.clients, cfg.register.op_timeout_ms, cfg.set_writes_max)
    });

    let mut nemesis = Nemesis::new(cluster, targets.clone(), cfg.seed, start);
    nemesis.run(&cfg.faults, cfg.duration, cfg.timing).await;
    let leader = nemesis.heal_all().await;
    tokio::time::sleep(Duration::from_millis(TAIL_QUIET_MS)).await;
    let history = register.stop().await;
    let written = match set {
        Some(s) => Some(s.stop().await),
        None => None,
    };
    let ops = history.snapshot();
    let stats = HistoryStats::of(&ops);
    let faults = nemesis.describe_injected();

    let set_verdict = match &written {
        Some(w) => Some(
            check_set(&cluster.data_client(leader), &target, w)
                .await
                .unwrap_or_else(|e| cluster.fail(format!("{}: final set read: {e}", cfg.name))),
        ),
        None => None,
    };
    let sums = cluster.wait_applied_equal(Duration::from_secs(CONVERGE_WAIT_S)).await;
    assert_checksums_equal(cluster, &sums);

    let checked = Instant::now();
    let report = checker::check(&ops, &cfg.check_limits)
        .unwrap_or_else(|e| cluster.fail(format!("{}: the recorded history is malformed: {e}", cfg.name)));
    let check_time = checked.elapsed();

    let mut summary = format!(
        "=== scenario {} (seed {}) ===\n\
         duration: {} s of faults, {} nodes, {} register clients{}\n\
         faults: {}\n\
         register: {}\n\
         checker: {} in {} ms\n",
        cfg.name,
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.nodes,
        cfg.register.clients,
        if cfg.register.stale_reads { " (STALE reads)" } else { "" },
        faults,
        stats.describe(),
        report.summary(),
        check_time.as_millis()
    );
    if let Some(v) = &set_verdict {
        summary.push_str(&v.describe());
        summary.push('\n');
    }
    summary.push_str(&format!("replicas: {}\n", crate::describe_checksums(&sums)));
    let (built, installed) = count_snapshots(cluster);
    summary.push_str(&format!("snapshots: {built} built, {installed} installed (counted in the node logs)\n"));

    let linearizable = report.is_linearizable();
    let set_ok = set_verdict.as_ref().is_none_or(SetVerdict::is_valid);
    let violations = report.violations();
    let verdict_ok = match cfg.expect {
        Expect::Correct => linearizable && set_ok,
        Expect::Violation => !violations.is_empty() && set_ok,
    };
    let mut detail = String::new();
    for v in violations.iter().take(3) {
        detail.push_str(&v.describe());
        detail.push('\n');
    }
    summary.push_str(&format!(
        "verdict: {}\n",
        match (cfg.expect, verdict_ok) {
            (Expect::Correct, true) => "PASS (linearizable, no acknowledged write lost)".to_string(),
            (Expect::Violation, true) => format!("PASS (the checker caught {} violating key(s), as expected)", violations.len()),
            (Expect::Correct, false) => format!(
                "FAIL ({} non-linearizable key(s), {} key(s) beyond the checker's budget, set read {})",
                violations.len(),
                report.unknown_keys().len(),
                if set_ok { "valid" } else { "INVALID" }
            ),
            (Expect::Violation, false) => "FAIL (expected a linearizability violation, found none)".to_string(),
        }
    ));
    crate::publish(&summary);
    if let Some(first) = violations.first() {
        crate::publish(&format!("first violation:\n{}", first.describe()));
    }
    if !verdict_ok || cfg.keep_artifacts {
        let dir = write_artifacts(cfg, &ops, nemesis.events(), &summary, &detail);
        if !verdict_ok {
            cluster.fail(format!("{}: {}\n{detail}history, fault schedule and summary written to {}", cfg.name, summary, dir.display()));
        }
        println!("history, fault schedule and summary kept in {}", dir.display());
    }
    ScenarioReport { stats, faults, report, set: set_verdict, check_time, summary }
}

/// Writes `history.jsonl`, `faults.txt` and `summary.txt` into
/// `<artifacts_dir>/<name>-<seed>/` and returns that directory.
fn write_artifacts(cfg: &ScenarioConfig, ops: &[checker::Operation], events: &[FaultEvent], summary: &str, detail: &str) -> PathBuf {
    let dir = cfg.artifacts_dir.join(format!("{}-{}", cfg.name, cfg.seed));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let write = |name: &str, fill: &dyn Fn(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w).and_then(|_| w.flush()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    };
    write("history.jsonl", &|w| {
        for o in ops {
            writeln!(w, "{}", json_line(o))?;
        }
        Ok(())
    });
    write("faults.txt", &|w| {
        for e in events {
            writeln!(w, "{e}")?;
        }
        Ok(())
    });
    write("summary.txt", &|w| write!(w, "{summary}\n{detail}"));
    dir
}
