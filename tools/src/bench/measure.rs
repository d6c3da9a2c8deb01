//! Per-worker measurements: one HDR histogram of latencies per operation type, error counts
//! per status label, and reads that found nothing. Merged at the end of a phase.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::report::{LatencyUs, OpReport};
use super::workload::OpKind;

/// Smallest latency a histogram tells apart, microseconds.
pub const LATENCY_MIN_US: u64 = 1;
/// Largest latency a histogram records, microseconds (60 s); longer ones count as 60 s.
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant decimal digits of recorded latencies.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A new empty histogram with the bounds above.
fn new_histogram<T: hdrhistogram::Counter>() -> anyhow::Result<Histogram<T>> {
    Histogram::new_with_bounds(LATENCY_MIN_US, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
        .map_err(|e| anyhow::anyhow!("cannot create a latency histogram: {e:?}"))
}

/// Measurements of one operation type.
#[derive(Debug, Clone)]
struct OpStats<T: hdrhistogram::Counter> {
    /// Latencies of the successful operations, microseconds.
    latency: Histogram<T>,
    errors: BTreeMap<String, u64>,
    not_found: u64,
}

/// Measurements of one worker; [`Merged::add`] sums them. A worker's histograms count in
/// u32 (half the memory of u64: ~70 KB per histogram, and 500 workers record two operation
/// types each); merged ones count in u64.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Per operation type (`OpKind::index`), created at its first operation.
    ops: [Option<OpStats<u32>>; 5],
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    fn stats(&mut self, op: OpKind) -> anyhow::Result<&mut OpStats<u32>> {
        let slot = &mut self.ops[op.index()];
        if slot.is_none() {
            *slot = Some(OpStats { latency: new_histogram()?, errors: BTreeMap::new(), not_found: 0 });
        }
        slot.as_mut().ok_or_else(|| anyhow::anyhow!("histogram slot vanished"))
    }

    /// Records a successful operation; `found` is false for a read (or read-modify-write)
    /// of a key that does not exist.
    pub fn ok(&mut self, op: OpKind, latency: Duration, found: bool) -> anyhow::Result<()> {
        let s = self.stats(op)?;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(LATENCY_MIN_US, LATENCY_MAX_US);
        s.latency.saturating_record(us);
        if !found {
            s.not_found += 1;
        }
        Ok(())
    }

    /// Records a failed operation with its status label.
    pub fn error(&mut self, op: OpKind, status: &str) -> anyhow::Result<()> {
        let s = self.stats(op)?;
        match s.errors.get_mut(status) {
            Some(n) => *n += 1,
            None => {
                s.errors.insert(status.to_string(), 1);
            }
        }
        Ok(())
    }
}

/// The measurements of all workers of a phase.
#[derive(Debug, Default)]
pub struct Merged {
    ops: [Option<OpStats<u64>>; 5],
}

impl Merged {
    pub fn new() -> Merged {
        Merged::default()
    }

    /// Adds one worker's measurements.
    pub fn add(&mut self, worker: &Recorder) -> anyhow::Result<()> {
        for (slot, theirs) in self.ops.iter_mut().zip(&worker.ops) {
            let Some(theirs) = theirs else { continue };
            if slot.is_none() {
                *slot = Some(OpStats { latency: new_histogram()?, errors: BTreeMap::new(), not_found: 0 });
            }
            let Some(mine) = slot.as_mut() else { continue };
            // Bucket by bucket: the value recorded is in the same bucket as the original.
            for v in theirs.latency.iter_recorded() {
                mine.latency
                    .record_n(v.value_iterated_to(), u64::from(v.count_at_value()))
                    .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e:?}"))?;
            }
            for (status, n) in &theirs.errors {
                *mine.errors.entry(status.clone()).or_default() += n;
            }
            mine.not_found += theirs.not_found;
        }
        Ok(())
    }

    /// One report line per operation type that was attempted, in `OpKind::ALL` order.
    /// `elapsed_secs` is the measured time, for throughput.
    pub fn op_reports(&self, elapsed_secs: f64) -> Vec<OpReport> {
        let mut out = Vec::new();
        for op in OpKind::ALL {
            let Some(s) = &self.ops[op.index()] else { continue };
            let count = s.latency.len();
            let errors: u64 = s.errors.values().sum();
            out.push(OpReport {
                op,
                count,
                not_found: s.not_found,
                errors,
                errors_by_status: s.errors.clone(),
                throughput_ops_per_sec: per_second(count, elapsed_secs),
                latency_us: (count > 0).then(|| latency_summary(&s.latency)),
            });
        }
        out
    }
}

/// Percentiles of a histogram, microseconds (each the highest value equivalent to the
/// recorded ones at 3 significant digits, as HdrHistogram reports them).
pub fn latency_summary(h: &Histogram<u64>) -> LatencyUs {
    LatencyUs {
        min: h.min(),
        mean: round_to(h.mean(), 1),
        p50: h.value_at_quantile(0.50),
        p95: h.value_at_quantile(0.95),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// `count / secs`, rounded to 0.1; 0 when no time passed.
pub fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round_to(count as f64 / secs, 1)
    } else {
        0.0
    }
}

/// `x` rounded to `decimals` decimals: the report's numbers stay short, and exact through
/// a JSON round trip.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers with known latencies 1..=1000 µs and 1001..=2000 µs: the merged
    /// percentiles are those of 1..=2000 µs, within the histogram's 3 significant digits.
    #[test]
    fn merge_and_percentiles_on_known_data() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for us in 1..=1000u64 {
            a.ok(OpKind::Read, Duration::from_micros(us), true).unwrap();
            b.ok(OpKind::Read, Duration::from_micros(us + 1000), us % 100 != 0).unwrap();
        }
        b.ok(OpKind::Update, Duration::from_secs(3600), true).unwrap(); // clamped to 60 s
        a.error(OpKind::Update, "UNAVAILABLE").unwrap();
        b.error(OpKind::Update, "UNAVAILABLE").unwrap();
        b.error(OpKind::Update, "DEADLINE_EXCEEDED").unwrap();
        let mut m = Merged::new();
        m.add(&a).unwrap();
        m.add(&b).unwrap();
        let reports = m.op_reports(2.0);
        assert_eq!(reports.len(), 2);
        let read = &reports[0];
        assert_eq!((read.op, read.count, read.not_found, read.errors), (OpKind::Read, 2000, 10, 0));
        assert_eq!(read.throughput_ops_per_sec, 1000.0);
        let l = read.latency_us.as_ref().unwrap();
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert_eq!(l.min, 1);
        assert!(close(l.p50, 1000), "p50 {}", l.p50);
        assert!(close(l.p95, 1900), "p95 {}", l.p95);
        assert!(close(l.p99, 1980), "p99 {}", l.p99);
        assert!(close(l.p999, 1998), "p99.9 {}", l.p999);
        assert!(close(l.max, 2000), "max {}", l.max);
        assert!((l.mean - 1000.5).abs() < 2.0, "mean {}", l.mean);
        let update = &reports[1];
        assert_eq!((update.op, update.count, update.errors), (OpKind::Update, 1, 3));
        assert_eq!(update.errors_by_status.get("UNAVAILABLE"), Some(&2));
        assert_eq!(update.errors_by_status.get("DEADLINE_EXCEEDED"), Some(&1));
        let max = update.latency_us.as_ref().unwrap().max;
        assert!(close(max, LATENCY_MAX_US), "{max}");
    }

    #[test]
    fn errors_only_has_no_latency() {
        let mut a = Recorder::new();
        a.error(OpKind::Scan, "UNAVAILABLE").unwrap();
        let mut m = Merged::new();
        m.add(&a).unwrap();
        let r = m.op_reports(1.0);
        assert_eq!((r[0].count, r[0].errors, r[0].latency_us.is_none()), (0, 1, true));
        assert_eq!(per_second(5, 0.0), 0.0);
    }
}
