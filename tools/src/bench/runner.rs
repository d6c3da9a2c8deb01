//! Running one phase: `concurrency` worker tasks, each with its own random generator,
//! value buffer, key chooser and measurements, one operation in flight at a time; optional
//! pacing; the phase's limits; progress lines on stderr.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::config::Config;
use super::generator::{splitmix64, KeyChooser, KeySpace};
use super::keys::{KeyFormat, ValueSource};
use super::measure::{per_second, round_to, Merged, Recorder};
use super::report::{PhaseName, PhaseReport};
use super::target::{OpResult, Target};
use super::workload::{OpChooser, OpKind, WorkloadSpec};

/// Pause of a worker after a failed operation (not measured), so that a cluster without a
/// leader, or a closed port, is not hammered by a tight loop of instant failures.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// What all workers of a phase share.
struct Shared {
    phase: PhaseName,
    workload: WorkloadSpec,
    record_count: u64,
    /// Measured operations of the run phase; 0 = no limit.
    operation_count: u64,
    value_bytes: usize,
    max_scan_length: usize,
    seed: u64,
    key_format: KeyFormat,
    /// Load: the next key number to insert.
    load_next: AtomicU64,
    /// Run: the key space, growing with inserts.
    key_space: KeySpace,
    /// Run: measured operations claimed so far.
    claimed: AtomicU64,
    /// Measured operations done, for the progress lines.
    done_ok: AtomicU64,
    done_errors: AtomicU64,
    /// When measurement starts (the end of the warmup).
    measure_start: Instant,
    /// When the run phase ends, if it has a duration.
    end: Option<Instant>,
}

/// Runs one phase of the benchmark and returns its report.
pub async fn run_phase(phase: PhaseName, config: &Config, targets: &[Arc<dyn Target>]) -> anyhow::Result<PhaseReport> {
    anyhow::ensure!(!targets.is_empty(), "no target to run on");
    let is_run = phase == PhaseName::Run;
    let warmup = if is_run { Duration::from_secs(config.warmup_secs) } else { Duration::ZERO };
    // The zipfian generators' zeta sum is computed once here, then cloned per worker. The
    // load phase only inserts: it needs none.
    let chooser = if is_run { KeyChooser::new(config.workload.request_distribution, config.record_count) } else { KeyChooser::Uniform };
    let start = Instant::now();
    let measure_start = start + warmup;
    let end = (is_run && config.duration_secs > 0).then(|| measure_start + Duration::from_secs(config.duration_secs));
    let shared = Arc::new(Shared {
        phase,
        workload: config.workload.clone(),
        record_count: config.record_count,
        operation_count: if is_run { config.operation_count } else { 0 },
        value_bytes: config.value_bytes,
        max_scan_length: config.max_scan_length,
        seed: config.seed,
        key_format: KeyFormat::new(config.key_bytes),
        load_next: AtomicU64::new(0),
        key_space: KeySpace::new(config.record_count),
        claimed: AtomicU64::new(0),
        done_ok: AtomicU64::new(0),
        done_errors: AtomicU64::new(0),
        measure_start,
        end,
    });

    let progress =
        (config.progress_secs > 0).then(|| tokio::spawn(progress_lines(shared.clone(), Duration::from_secs(config.progress_secs))));
    let mut workers = Vec::with_capacity(config.concurrency);
    for index in 0..config.concurrency {
        let pacer = Pacer::new(config.rate, config.concurrency, index, start);
        let worker =
            Worker { shared: shared.clone(), target: targets[index % targets.len()].clone(), index, chooser: chooser.clone(), pacer };
        workers.push(tokio::spawn(worker.run()));
    }
    let mut merged = Merged::new();
    let mut last_stop = measure_start;
    let mut failure = None;
    for w in workers {
        match w.await {
            Ok(Ok((recorder, stopped))) => {
                merged.add(&recorder)?;
                last_stop = last_stop.max(stopped);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("a worker task failed: {e}")),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(e) = failure {
        return Err(e);
    }

    let elapsed_secs = round_to(last_stop.saturating_duration_since(measure_start).as_secs_f64(), 3);
    let operations = merged.op_reports(elapsed_secs);
    let ops = operations.iter().map(|o| o.count).sum();
    Ok(PhaseReport {
        phase,
        warmup_secs: round_to(warmup.as_secs_f64(), 3),
        elapsed_secs,
        ops,
        errors: operations.iter().map(|o| o.errors).sum(),
        throughput_ops_per_sec: per_second(ops, elapsed_secs),
        operations,
    })
}

/// A fixed schedule of one worker for a total rate: one operation every
/// `workers / rate` seconds, the workers' schedules staggered evenly. A late operation
/// does not move the schedule (open loop): the worker catches up without pausing.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    /// None when `rate` is 0 (no pacing).
    pub fn new(rate: u64, workers: usize, index: usize, start: Instant) -> Option<Pacer> {
        if rate == 0 || workers == 0 {
            return None;
        }
        let interval = Duration::from_secs_f64(workers as f64 / rate as f64);
        let offset = interval.mul_f64(index as f64 / workers as f64);
        Some(Pacer { interval, next: start + offset })
    }

    /// When the next operation is due.
    pub fn next_due(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        due
    }
}

/// One worker of a phase.
struct Worker {
    shared: Arc<Shared>,
    target: Arc<dyn Target>,
    index: usize,
    chooser: KeyChooser,
    pacer: Option<Pacer>,
}

impl Worker {
    /// Runs operations until the phase's limits; returns the measurements and when the
    /// worker stopped.
    async fn run(mut self) -> anyhow::Result<(Recorder, Instant)> {
        let s = self.shared.clone();
        let phase_salt = match s.phase {
            PhaseName::Load => 1,
            PhaseName::Run => 2,
        };
        let mut rng = SmallRng::seed_from_u64(splitmix64(s.seed ^ splitmix64((phase_salt << 32) | self.index as u64)));
        let mut values = ValueSource::new(&mut rng, s.value_bytes);
        let ops = OpChooser::new(&s.workload);
        let mut recorder = Recorder::new();
        loop {
            if let Some(pacer) = &mut self.pacer {
                let due = pacer.next_due();
                if s.end.is_some_and(|end| due >= end) {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            }
            let now = Instant::now();
            let measured = now >= s.measure_start;
            if measured && s.end.is_some_and(|end| now >= end) {
                break;
            }
            let op = match s.phase {
                PhaseName::Load => OpKind::Insert,
                PhaseName::Run => {
                    if measured && s.operation_count > 0 && s.claimed.fetch_add(1, Ordering::Relaxed) >= s.operation_count {
                        break;
                    }
                    ops.choose(&mut rng)
                }
            };
            let started = Instant::now();
            let result = match self.execute(op, &mut rng, &mut values).await {
                Some(r) => r,
                // The load phase inserted every record.
                None => break,
            };
            let latency = started.elapsed();
            let failed = result.is_err();
            if measured {
                match result {
                    Ok(found) => {
                        recorder.ok(op, latency, found)?;
                        s.done_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        recorder.error(op, e.status)?;
                        s.done_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if failed {
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
        Ok((recorder, Instant::now()))
    }

    /// Runs one operation; `Ok(found)`. None when the load phase has no record left.
    async fn execute(&mut self, op: OpKind, rng: &mut SmallRng, values: &mut ValueSource) -> Option<OpResult<bool>> {
        let t = self.target.clone();
        Some(match op {
            OpKind::Insert => return self.insert(rng, values).await,
            OpKind::Read => t.read(&self.pick_key(rng)).await,
            OpKind::Update => t.update(&self.pick_key(rng), &values.next(rng)).await.map(|()| true),
            OpKind::Scan => {
                let key = self.pick_key(rng);
                let len = rng.random_range(1..=self.shared.max_scan_length.max(1));
                t.scan(&key, len).await.map(|n| n > 0)
            }
            OpKind::ReadModifyWrite => t.read_modify_write(&self.pick_key(rng), &values.next(rng)).await,
        })
    }

    /// Inserts the next record (load) or a new key (run). None when the load phase has
    /// inserted every record.
    async fn insert(&mut self, rng: &mut SmallRng, values: &mut ValueSource) -> Option<OpResult<bool>> {
        let s = &self.shared;
        let number = match s.phase {
            PhaseName::Load => {
                let n = s.load_next.fetch_add(1, Ordering::Relaxed);
                if n >= s.record_count {
                    return None;
                }
                n
            }
            PhaseName::Run => s.key_space.allocate(),
        };
        let result = self.target.insert(&s.key_format.key(number), &values.next(rng)).await.map(|()| true);
        if s.phase == PhaseName::Run {
            s.key_space.acknowledge(number);
        }
        Some(result)
    }

    /// The key of a read, update, scan or read-modify-write: drawn from the keys inserted
    /// so far, by the workload's request distribution.
    fn pick_key(&mut self, rng: &mut SmallRng) -> Vec<u8> {
        let number = self.chooser.next(rng, self.shared.key_space.items());
        self.shared.key_format.key(number)
    }
}

/// Prints `[run] 10 s: 123456 ops (12345.6 ops/s over the last 10 s), 0 errors` every
/// `every`, until aborted.
async fn progress_lines(s: Arc<Shared>, every: Duration) {
    let mut last_ok = 0;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let label = s.phase.label();
        let line = if now < s.measure_start {
            format!("[{label}] warming up, {} s left", s.measure_start.duration_since(now).as_secs())
        } else {
            let ok = s.done_ok.load(Ordering::Relaxed);
            let errors = s.done_errors.load(Ordering::Relaxed);
            let secs = now.duration_since(s.measure_start).as_secs();
            let recent = per_second(ok - last_ok.min(ok), every.as_secs_f64());
            last_ok = ok;
            let every = every.as_secs();
            format!("[{label}] {secs} s: {ok} ops ({recent:.1} ops/s over the last {every} s), {errors} errors")
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_workers_and_keeps_the_schedule() {
        let start = Instant::now();
        assert!(Pacer::new(0, 4, 0, start).is_none());
        // 1000 ops/s over 4 workers: each every 4 ms, staggered by 1 ms.
        let mut p0 = Pacer::new(1000, 4, 0, start).unwrap();
        let mut p1 = Pacer::new(1000, 4, 1, start).unwrap();
        assert_eq!(p0.next_due(), start);
        assert_eq!(p0.next_due(), start + Duration::from_millis(4));
        assert_eq!(p1.next_due(), start + Duration::from_millis(1));
        assert_eq!(p1.next_due(), start + Duration::from_millis(5));
    }
}
