//! `kho-soak`: a long fault-injection run of every fault family (or the ones named) against
//! a local cluster of real `kho server` processes, with the register and set workloads,
//! then the same checks as the CI suite and a summary: operations by outcome, faults
//! injected, verdict. Exits 0 on PASS, 1 on FAIL (the history and fault schedule are then
//! written under `--out`).
//!
//! `scripts/soak --duration-secs 1800 --seed 42` builds it and `kho`, then runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kho_cluster_tests::nemesis::{Fault, FaultFamily};
use kho_cluster_tests::scenario::{run_scenario, ScenarioConfig};

/// Longest soak, seconds (one day).
const DURATION_S_MAX: u64 = 86_400;
/// Seconds of soak per spare node made ready for node replacements.
const SECONDS_PER_SPARE: u64 = 30;
/// Most spare nodes (each needs its own loopback source IP).
const SPARES_MAX: u64 = 200;

#[derive(Debug, Parser)]
#[command(name = "kho-soak", about = "Long fault-injection run against a local Kho cluster")]
struct Args {
    /// Seconds of faults (the run adds start-up, healing and checking).
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Seed of every random choice (keys, values, fault schedule); default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Fault families, comma-separated: kill, pause, partition, membership, reshard.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition,membership,reshard")]
    families: Vec<String>,
    /// Voting members of the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Register clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Directory for the history, fault schedule and summary of the run.
    #[arg(long, default_value = "kho-soak-out")]
    out: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.duration_secs == 0 || args.duration_secs > DURATION_S_MAX {
        eprintln!("--duration-secs: {} is outside 1..={DURATION_S_MAX}", args.duration_secs);
        return ExitCode::from(2);
    }
    if !(3..=9).contains(&args.nodes) {
        eprintln!("--nodes: {} is outside 3..=9", args.nodes);
        return ExitCode::from(2);
    }
    let mut faults: Vec<Fault> = Vec::new();
    for name in &args.families {
        match FaultFamily::parse(name.trim()) {
            Some(f) => faults.extend_from_slice(f.faults()),
            None => {
                eprintln!("--families: unknown family `{name}`; use kill, pause, partition, membership, reshard");
                return ExitCode::from(2);
            }
        }
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut cfg = ScenarioConfig::new("soak", seed, &faults, Duration::from_secs(args.duration_secs), &args.out);
    cfg.nodes = args.nodes;
    cfg.spare_nodes = (args.duration_secs / SECONDS_PER_SPARE).clamp(2, SPARES_MAX);
    cfg.register.clients = args.clients;
    cfg.keep_artifacts = true;
    // run_scenario panics with the details when the verdict is FAIL.
    let outcome = tokio::spawn(async move { run_scenario(&cfg).await }).await;
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.is_panic() => {
            eprintln!("soak: FAIL (details above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(1)
        }
    }
}
