//! `kho bench`: a YCSB-style benchmark of a key-value target (Kho, etcd, embedded RocksDB).
//!
//! # What it does
//!
//! The YCSB core workloads A–F (see [`workload`]) run in two phases, each reported on its
//! own:
//!
//! - **load**: `record_count` records are inserted, one insert per operation (no batching,
//!   like YCSB), by `concurrency` workers;
//! - **run**: the workload's mix of operations, until `operation_count` operations or
//!   `duration_secs` seconds, whichever comes first (0 = that limit is off), after
//!   `warmup_secs` seconds of unmeasured operations (which count toward neither limit).
//!
//! Keys are `user` followed by the key number, hashed (YCSB's FNV-1a 64 "hashed insert
//! order"), zero-padded to exactly `key_bytes` bytes (see [`keys`]). Values are
//! `value_bytes` random bytes, generated once per worker, with a few bytes changed per
//! write. Keys to read, update and scan from follow the workload's request distribution
//! (uniform, YCSB's scrambled zipfian with constant 0.99, or latest; see [`generator`]),
//! over the key space that grows with every acknowledged insert.
//!
//! # Measurement
//!
//! Each worker keeps one HDR histogram (microseconds, 1 µs ..= 60 s, 3 significant digits)
//! per operation type; they are merged at the end of the phase. Only successful operations
//! are in the histograms; failures are counted per gRPC status label (`UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`, ...). Latency is measured from the moment the operation is sent
//! (with `--rate`, from its actual start, not its scheduled time). A read-modify-write is
//! one operation of its own type (its read and its update are not also counted as a read
//! and an update, unlike YCSB's DB wrapper).
//!
//! # Use
//!
//! - from the command line: [`BenchArgs`] (clap) and [`command`], which prints the table to
//!   stdout and writes `--json`;
//! - from code (a comparison command running several rounds): [`run`] returns the
//!   [`BenchReport`]; [`run_on`] runs a validated [`Config`] on targets built by the caller
//!   (any implementation of [`Target`]).

pub mod compare;
pub mod config;
pub mod generator;
pub mod keys;
pub mod measure;
pub mod report;
pub mod runner;
pub mod security;
pub mod target;
pub mod workload;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

// The entry points; the other types are in their modules (`bench::report::OpReport`, ...).
// Only names used here are re-exported: in the binary crate, unused `pub use`s warn.
pub use config::{BenchArgs, Config};
pub use report::{BenchReport, PhaseName};
pub use target::Target;

/// Validates the flags, connects to the target, prepares it (for Kho: creates the tenant
/// and table when missing), runs the phases and returns their results. Prints progress
/// lines to stderr (every `--progress-secs`), nothing to stdout.
pub async fn run(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let config = args.validate()?;
    let targets = target::connect(&config).await?;
    let report = run_on(&config, &targets).await;
    for t in &targets {
        t.finish();
    }
    report
}

/// Runs the phases of a validated config on the given targets: worker `i` uses
/// `targets[i % targets.len()]`, so one target shared by all workers, or one per worker,
/// both work.
pub async fn run_on(config: &Config, targets: &[Arc<dyn Target>]) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(!targets.is_empty(), "no target to run on");
    let started_unix_secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut phases = Vec::new();
    if config.phase.includes_load() {
        phases.push(runner::run_phase(PhaseName::Load, config, targets).await?);
    }
    if config.phase.includes_run() {
        phases.push(runner::run_phase(PhaseName::Run, config, targets).await?);
    }
    Ok(BenchReport { tool: report::TOOL_NAME.to_string(), started_unix_secs, config: config.clone(), phases })
}

/// The `kho bench` command: [`run`], then the table to stdout and, with `--json`, the
/// report to that file.
pub async fn command(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let report = run(&args).await?;
    // A closed stdout (`kho bench ... | head`) must not lose the JSON file.
    let _ = write!(std::io::stdout(), "{}", report.render());
    if let Some(path) = &report.config.json {
        report.write_json(path).with_context(|| format!("--json: cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
