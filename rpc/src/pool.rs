//! Bounded thread pools for client work that blocks: reads that need the disk, and scans.
//!
//! Tokio's blocking pool (`spawn_blocking`, at most 512 threads) is left to Raft's own disk
//! work: votes, applies, log truncation and purges, snapshots. Before these pools, a scan
//! whose client stopped reading parked a blocking thread for as long as the client held the
//! stream; a few hundred such clients took every thread, and a vote or an apply on that
//! node then waited behind them (no election, no writes). Client reads now run here, on a
//! fixed number of threads with a bounded queue: when both are full the request is refused
//! with RESOURCE_EXHAUSTED, and Raft never notices.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tonic::Status;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs from one bounded queue.
pub struct BlockingPool {
    name: &'static str,
    config_field: &'static str,
    tx: SyncSender<Job>,
    queue_max: usize,
}

impl BlockingPool {
    /// Starts `threads` threads named `kho-<name>-<i>`, with at most `queue_max` jobs
    /// waiting for one. `config_field` names the setting to raise when the pool is full.
    /// The threads end when the pool is dropped.
    pub fn new(name: &'static str, config_field: &'static str, threads: usize, queue_max: usize) -> std::io::Result<Arc<BlockingPool>> {
        assert!(threads > 0 && queue_max > 0, "a pool needs threads and a queue");
        let (tx, rx) = mpsc::sync_channel::<Job>(queue_max);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("kho-{name}-{i}")).spawn(move || worker(&rx))?;
        }
        Ok(Arc::new(BlockingPool { name, config_field, tx, queue_max }))
    }

    /// Queues `job`, or refuses it with RESOURCE_EXHAUSTED when the queue is full.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Status> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Status::resource_exhausted(format!(
                "this node's {} threads are all busy and {} requests wait for them (limits.read_queue_max; threads: {}); retry later or on another node",
                self.name, self.queue_max, self.config_field
            ))),
            Err(TrySendError::Disconnected(_)) => Err(Status::unavailable(format!("the {} pool has stopped (node shutting down)", self.name))),
        }
    }

    /// Runs `f` on a pool thread and returns its result.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(f());
        })?;
        rx.await.map_err(|_| Status::internal(format!("a {} job ended without an answer (it panicked)", self.name)))
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // Hold the lock only to take a job, not while running it.
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => {
                // A panicking job must not take the thread with it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return, // the pool was dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_jobs_and_refuses_when_threads_and_queue_are_full() {
        let pool = BlockingPool::new("test", "limits.read_threads", 1, 1).unwrap();
        assert_eq!(pool.run(|| 41 + 1).await.unwrap(), 42);
        // One job holds the thread, one waits in the queue: the third is refused.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        pool.spawn(move || {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
        })
        .unwrap();
        started_rx.await.unwrap();
        pool.spawn(|| {}).unwrap();
        let refused = pool.spawn(|| {}).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("limits.read_queue_max"), "{}", refused.message());
        release_tx.send(()).unwrap();
        // Once the thread is free again, jobs run.
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match pool.run(|| 7).await {
                    Ok(v) => break v,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(r, 7);
    }

    #[tokio::test]
    async fn a_panicking_job_answers_internal_and_keeps_the_thread() {
        let pool = BlockingPool::new("test", "limits.read_threads", 1, 4).unwrap();
        let e = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert_eq!(pool.run(|| 5).await.unwrap(), 5);
    }
}
