//! The results of a benchmark: [`BenchReport`] (serde, for `--json` and for callers of
//! [`super::run`]) and its human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::Config;
use super::workload::OpKind;

/// The `tool` field of every report.
pub const TOOL_NAME: &str = "kho bench";

/// A whole benchmark: its configuration and one result per phase run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub tool: String,
    /// When the benchmark started, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// The effective configuration (flags with defaults resolved, the seed used).
    pub config: Config,
    /// In the order run: load, then run.
    pub phases: Vec<PhaseReport>,
}

/// Which phase a result is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseName {
    Load,
    Run,
}

impl PhaseName {
    pub fn label(self) -> &'static str {
        match self {
            PhaseName::Load => "load",
            PhaseName::Run => "run",
        }
    }
}

/// The result of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: PhaseName,
    /// Unmeasured seconds before the measurement (the run phase's warmup).
    pub warmup_secs: f64,
    /// Measured seconds: from the end of the warmup until the last worker stopped.
    pub elapsed_secs: f64,
    /// Successful operations of every type.
    pub ops: u64,
    /// Failed operations of every type.
    pub errors: u64,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// One entry per operation type attempted.
    pub operations: Vec<OpReport>,
}

/// The result of one operation type in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    pub op: OpKind,
    /// Successful operations.
    pub count: u64,
    /// Successful reads and read-modify-writes of a key that does not exist.
    pub not_found: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by gRPC status label (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// Latency of the successful operations; none when every one failed.
    pub latency_us: Option<LatencyUs>,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyUs {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl BenchReport {
    /// The human report: a header with the configuration, then a table per phase.
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let rate = if c.rate == 0 { "unlimited".to_string() } else { format!("{} ops/s", c.rate) };
        let place = match (&c.target, &c.data_dir) {
            (crate::bench::config::TargetKind::Rocksdb, Some(dir)) => dir.display().to_string(),
            _ => c.endpoints.join(","),
        };
        let _ = writeln!(
            out,
            "{TOOL_NAME}: target {} at {}; workload {} ({}, {}); {} records, keys {} B, values {} B; \
             {} workers ({} per connection), rate {rate}; seed {}",
            serde_label(&c.target),
            place,
            serde_label(&c.workload.name),
            c.workload.mix_text(),
            serde_label(&c.workload.request_distribution),
            c.record_count,
            c.key_bytes,
            c.value_bytes,
            c.concurrency,
            c.workers_per_connection,
            c.seed,
        );
        if c.target == crate::bench::config::TargetKind::Kho {
            let _ = writeln!(out, "tenant {} (encryption {})", c.tenant, c.tenant_encryption.label());
        }
        for p in &self.phases {
            out.push('\n');
            out.push_str(&p.render());
        }
        out
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(())
    }
}

impl PhaseReport {
    /// `[run] 10.000 s: ...` and the table of operation types.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let warmup = if self.warmup_secs > 0.0 { format!(" after {:.3} s warmup", self.warmup_secs) } else { String::new() };
        let _ = writeln!(
            out,
            "[{}] {:.3} s{warmup}: {} ops, {:.1} ops/s, {} errors",
            self.phase.label(),
            self.elapsed_secs,
            self.ops,
            self.throughput_ops_per_sec,
            self.errors
        );
        let _ = writeln!(
            out,
            "  {:<18} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
            "op", "count", "ops/s", "mean µs", "p50 µs", "p95 µs", "p99 µs", "p99.9 µs", "max µs", "errors", "not found"
        );
        for o in &self.operations {
            let (mean, p50, p95, p99, p999, max) = match &o.latency_us {
                Some(l) => (
                    format!("{:.1}", l.mean),
                    l.p50.to_string(),
                    l.p95.to_string(),
                    l.p99.to_string(),
                    l.p999.to_string(),
                    l.max.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "  {:<18} {:>10} {:>11.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
                o.op.label(),
                o.count,
                o.throughput_ops_per_sec,
                mean,
                p50,
                p95,
                p99,
                p999,
                max,
                o.errors,
                o.not_found
            );
        }
        for o in &self.operations {
            for (status, n) in &o.errors_by_status {
                let _ = writeln!(out, "  error {} {status}: {n}", o.op.label());
            }
        }
        out
    }
}

/// The serde name of a unit enum variant (`kho`, `zipfian`, `a`).
fn serde_label<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::config::BenchArgs;

    fn sample_report() -> BenchReport {
        let config = BenchArgs { seed: Some(7), ..BenchArgs::default() }.validate().unwrap();
        let read = OpReport {
            op: OpKind::Read,
            count: 1000,
            not_found: 2,
            errors: 3,
            errors_by_status: BTreeMap::from([("UNAVAILABLE".to_string(), 3)]),
            throughput_ops_per_sec: 500.5,
            latency_us: Some(LatencyUs { min: 10, mean: 123.4, p50: 100, p95: 200, p99: 300, p999: 400, max: 500 }),
        };
        let update = OpReport {
            op: OpKind::Update,
            count: 0,
            not_found: 0,
            errors: 1,
            errors_by_status: BTreeMap::from([("DEADLINE_EXCEEDED".to_string(), 1)]),
            throughput_ops_per_sec: 0.0,
            latency_us: None,
        };
        BenchReport {
            tool: TOOL_NAME.to_string(),
            started_unix_secs: 1_700_000_000,
            config,
            phases: vec![PhaseReport {
                phase: PhaseName::Run,
                warmup_secs: 1.0,
                elapsed_secs: 2.0,
                ops: 1000,
                errors: 4,
                throughput_ops_per_sec: 500.0,
                operations: vec![read, update],
            }],
        }
    }

    #[test]
    fn json_round_trip() {
        let r = sample_report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: BenchReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        // Field names a reader of the JSON relies on.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["config"]["target"], "kho");
        assert_eq!(v["config"]["workload"]["name"], "a");
        assert_eq!(v["config"]["workload"]["request_distribution"], "zipfian");
        assert_eq!(v["phases"][0]["phase"], "run");
        assert_eq!(v["phases"][0]["operations"][0]["op"], "READ");
        assert_eq!(v["phases"][0]["operations"][0]["latency_us"]["p999"], 400);
        assert_eq!(v["phases"][0]["operations"][1]["errors_by_status"]["DEADLINE_EXCEEDED"], 1);
    }

    #[test]
    fn json_file_round_trip() {
        let r = sample_report();
        let path = std::env::temp_dir().join(format!("kho-bench-report-{}.json", std::process::id()));
        r.write_json(&path).unwrap();
        let back: BenchReport = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(back, r);
    }

    #[test]
    fn table_shows_every_number() {
        let text = sample_report().render();
        assert!(text.contains("target kho at 127.0.0.1:7001; workload a (read 50% update 50%, zipfian)"), "{text}");
        assert!(text.contains("[run] 2.000 s after 1.000 s warmup: 1000 ops, 500.0 ops/s, 4 errors"), "{text}");
        assert!(text.contains("\ntenant bench (encryption default)\n"), "{text}");
        assert!(text.contains("error READ UNAVAILABLE: 3"), "{text}");
        let read_line = text.lines().find(|l| l.trim_start().starts_with("READ ")).unwrap();
        for n in ["1000", "500.5", "123.4", "100", "200", "300", "400", "500", "3", "2"] {
            assert!(read_line.split_whitespace().any(|w| w == n), "{n} missing from {read_line}");
        }
        assert!(text.lines().any(|l| l.trim_start().starts_with("UPDATE") && l.contains(" - ")), "{text}");
    }
}
