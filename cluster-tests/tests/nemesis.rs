//! The bounded nemesis suite: each fault family against real `kho server` processes while
//! register and set workloads run, then the linearizability checker, the set read and a
//! replica comparison. Plus the proof that the checker catches a real violation: the same
//! partition run with STALE reads must be reported non-linearizable, and with the default
//! (linearizable) reads must pass.
//!
//! Each test prints its seed (replay the schedule with `KHO_TEST_SEED`) and a summary;
//! a failing run writes its history and fault schedule under `target/tmp/nemesis/`.
//! A long run of every family: `scripts/soak` (docs/TESTING.md).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use kho_cluster_tests::nemesis::{Fault, FaultFamily};
use kho_cluster_tests::scenario::{run_scenario, Expect, ScenarioConfig};
use kho_cluster_tests::test_seed;

/// Seconds of faults per family in CI.
const FAMILY_DURATION_S: u64 = 30;
/// Seconds of faults of each stale-read proof run.
const STALE_PROOF_DURATION_S: u64 = 25;

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nemesis")
}

async fn family(name: &str, family: FaultFamily, spare_nodes: u64) {
    let seed = test_seed(name);
    let mut cfg = ScenarioConfig::new(name, seed, family.faults(), Duration::from_secs(FAMILY_DURATION_S), &artifacts());
    cfg.spare_nodes = spare_nodes;
    let r = run_scenario(&cfg).await;
    assert!(r.stats.total().ok > 0, "{name}: no operation succeeded: {}", r.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_kill() {
    family("nemesis_kill", FaultFamily::Kill, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_pause() {
    family("nemesis_pause", FaultFamily::Pause, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_partition() {
    family("nemesis_partition", FaultFamily::Partition, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_membership() {
    // One replacement per fault period at most: ~10 in 30 s.
    family("nemesis_membership", FaultFamily::Membership, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_reshard() {
    // Splits and merges of the workload's shards, alone, right before a leader kill, and
    // during partitions; kills of a random member between them.
    family("nemesis_reshard", FaultFamily::Reshard, 0).await;
}

/// The partition faults of the stale-read proof: a node cut off keeps answering STALE reads
/// from its own old state while the others move on.
const PROOF_FAULTS: [Fault; 2] = [Fault::IsolateLeader, Fault::SplitMinority];

/// One seed for both proof runs of this test binary, so they run the same schedule.
fn proof_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| test_seed("stale-read proof (both modes)"))
}

fn proof_config(name: &str, seed: u64, stale: bool) -> ScenarioConfig {
    let mut cfg = ScenarioConfig::new(name, seed, &PROOF_FAULTS, Duration::from_secs(STALE_PROOF_DURATION_S), &artifacts());
    cfg.register.stale_reads = stale;
    cfg.expect = if stale { Expect::Violation } else { Expect::Correct };
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_reads_under_partitions_are_caught() {
    const NAME: &str = "stale_reads_under_partitions_are_caught";
    let seed = proof_seed();
    let r = run_scenario(&proof_config(NAME, seed, true)).await;
    assert!(!r.report.violations().is_empty(), "{}", r.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_reads_under_partitions_pass() {
    const NAME: &str = "linearizable_reads_under_partitions_pass";
    let seed = proof_seed();
    let r = run_scenario(&proof_config(NAME, seed, false)).await;
    assert!(r.report.is_linearizable(), "{}", r.summary);
}
