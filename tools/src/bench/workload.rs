//! The YCSB core workloads A–F: their operation mixes and request distributions, and the
//! choice of the next operation.
//!
//! | workload | mix | request distribution |
//! |---|---|---|
//! | A (update heavy) | 50% read, 50% update | zipfian |
//! | B (read mostly) | 95% read, 5% update | zipfian |
//! | C (read only) | 100% read | zipfian |
//! | D (read latest) | 95% read, 5% insert | latest |
//! | E (short ranges) | 95% scan, 5% insert; scan length uniform 1..=max | zipfian |
//! | F (read-modify-write) | 50% read, 50% read-modify-write | zipfian |

use clap::ValueEnum;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::config::Distribution;

/// One of the YCSB core workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadName {
    A,
    B,
    C,
    D,
    E,
    F,
}

/// An operation type, as YCSB names them in its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum OpKind {
    Insert,
    Read,
    Update,
    Scan,
    ReadModifyWrite,
}

impl OpKind {
    /// Every operation type, in report order.
    pub const ALL: [OpKind; 5] = [OpKind::Insert, OpKind::Read, OpKind::Update, OpKind::Scan, OpKind::ReadModifyWrite];

    /// YCSB's name: `READ`, `READ-MODIFY-WRITE`, ...
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Insert => "INSERT",
            OpKind::Read => "READ",
            OpKind::Update => "UPDATE",
            OpKind::Scan => "SCAN",
            OpKind::ReadModifyWrite => "READ-MODIFY-WRITE",
        }
    }

    /// Position in [`OpKind::ALL`], for per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A workload: proportions of each operation type (summing to 1) and how keys are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub name: WorkloadName,
    pub read: f64,
    pub update: f64,
    pub insert: f64,
    pub scan: f64,
    pub read_modify_write: f64,
    /// How keys of reads, updates, scans and read-modify-writes are chosen.
    pub request_distribution: Distribution,
}

/// The standard definition of a core workload (YCSB's `workloads/workload[a-f]`).
pub fn spec(name: WorkloadName) -> WorkloadSpec {
    use Distribution::*;
    // (read, update, insert, scan, read-modify-write, distribution)
    let (read, update, insert, scan, read_modify_write, request_distribution) = match name {
        WorkloadName::A => (0.5, 0.5, 0.0, 0.0, 0.0, Zipfian),
        WorkloadName::B => (0.95, 0.05, 0.0, 0.0, 0.0, Zipfian),
        WorkloadName::C => (1.0, 0.0, 0.0, 0.0, 0.0, Zipfian),
        WorkloadName::D => (0.95, 0.0, 0.05, 0.0, 0.0, Latest),
        WorkloadName::E => (0.0, 0.0, 0.05, 0.95, 0.0, Zipfian),
        WorkloadName::F => (0.5, 0.0, 0.0, 0.0, 0.5, Zipfian),
    };
    WorkloadSpec { name, read, update, insert, scan, read_modify_write, request_distribution }
}

impl WorkloadSpec {
    /// `read 95% insert 5%`: the non-zero proportions.
    pub fn mix_text(&self) -> String {
        self.proportions()
            .iter()
            .filter(|(_, p)| *p > 0.0)
            .map(|(op, p)| format!("{} {}%", op.label().to_lowercase(), p * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn proportions(&self) -> [(OpKind, f64); 5] {
        [
            (OpKind::Read, self.read),
            (OpKind::Update, self.update),
            (OpKind::Insert, self.insert),
            (OpKind::Scan, self.scan),
            (OpKind::ReadModifyWrite, self.read_modify_write),
        ]
    }
}

/// Draws operation types in the workload's proportions (YCSB's DiscreteGenerator).
#[derive(Debug, Clone)]
pub struct OpChooser {
    /// (operation, cumulative proportion), only operations with a non-zero proportion.
    cumulative: Vec<(OpKind, f64)>,
}

impl OpChooser {
    pub fn new(spec: &WorkloadSpec) -> OpChooser {
        let mut sum = 0.0;
        let mut cumulative = Vec::new();
        for (op, p) in spec.proportions() {
            if p > 0.0 {
                sum += p;
                cumulative.push((op, sum));
            }
        }
        OpChooser { cumulative }
    }

    /// The next operation type.
    pub fn choose<R: Rng>(&self, rng: &mut R) -> OpKind {
        let total = self.cumulative.last().map_or(0.0, |(_, c)| *c);
        let x = rng.random::<f64>() * total;
        for (op, c) in &self.cumulative {
            if x < *c {
                return *op;
            }
        }
        // Rounding at the top end: the last operation.
        self.cumulative.last().map_or(OpKind::Read, |(op, _)| *op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn proportions_sum_to_one() {
        for name in WorkloadName::value_variants() {
            let s = spec(*name);
            let sum = s.read + s.update + s.insert + s.scan + s.read_modify_write;
            assert!((sum - 1.0).abs() < 1e-12, "{name:?}: {sum}");
        }
        assert_eq!(spec(WorkloadName::D).request_distribution, Distribution::Latest);
        assert_eq!(spec(WorkloadName::E).mix_text(), "insert 5% scan 95%");
    }

    /// Over 100,000 draws, each proportion is within 1 percentage point of the spec.
    #[test]
    fn mixes_within_tolerance() {
        const DRAWS: usize = 100_000;
        const TOLERANCE: f64 = 0.01;
        let mut rng = SmallRng::seed_from_u64(1);
        for name in WorkloadName::value_variants() {
            let s = spec(*name);
            let chooser = OpChooser::new(&s);
            let mut counts = [0usize; 5];
            for _ in 0..DRAWS {
                counts[chooser.choose(&mut rng).index()] += 1;
            }
            for (op, p) in s.proportions() {
                let got = counts[op.index()] as f64 / DRAWS as f64;
                assert!((got - p).abs() < TOLERANCE, "{name:?} {op:?}: {got} vs {p}");
                if p == 0.0 {
                    assert_eq!(counts[op.index()], 0, "{name:?} {op:?} drawn");
                }
            }
        }
    }

    #[test]
    fn labels_are_ycsb_names() {
        assert_eq!(serde_json::to_string(&OpKind::ReadModifyWrite).unwrap(), "\"READ-MODIFY-WRITE\"");
        for op in OpKind::ALL {
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{}\"", op.label()));
            assert_eq!(OpKind::ALL[op.index()], op);
        }
    }
}
