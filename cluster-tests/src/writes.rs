//! Writers that record which writes were acknowledged, and the check that none was lost.
//!
//! A write is ACKNOWLEDGED only when the server answered OK. A write that failed, timed out
//! or ran out of retries has an unknown outcome: it may or may not have been applied, and
//! is never counted as acknowledged. Every key is written once, with a value derived from
//! the seed and the key, so a write of unknown outcome that did land must have that value.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::PutRequest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::Status;

use crate::kv::{batch_get_all, KvTarget};
use crate::retry::{retry_call, RetryPolicy};

/// Violations listed in a failure message, at most.
const VIOLATIONS_SHOWN_MAX: usize = 20;

/// What became of one write.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The server answered OK; `revision` is the Raft log index it reported in the log of
    /// data shard `shard` (0 if absent).
    Acknowledged { revision: u64, shard: u64 },
    /// No OK answer within the retry bound; the last error. Applied or not: unknown.
    Unknown { last_error: Status },
}

impl WriteOutcome {
    pub fn is_acknowledged(&self) -> bool {
        matches!(self, WriteOutcome::Acknowledged { .. })
    }
}

/// One write of one key, as a client saw it.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// The writer that sent it (`WriterConfig::writer`).
    pub writer: u32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// When the client sent the first attempt.
    pub started: Instant,
    /// When the client got the final answer or gave up.
    pub finished: Instant,
    pub outcome: WriteOutcome,
}

/// The value written for `key` in a run with `seed`: recognizable and checkable.
pub fn value_for(seed: u64, key: &[u8]) -> Vec<u8> {
    let mut value = format!("v:{seed:016x}:").into_bytes();
    value.extend_from_slice(key);
    value
}

/// Put with retries. Attempt `a` goes to `clients[(first + a) % len]`, so a retry after a
/// node died goes elsewhere.
pub async fn put_with_retry(
    clients: &[(u64, DataClient<Channel>)],
    first: usize,
    target: &KvTarget,
    key: &[u8],
    value: &[u8],
    policy: &RetryPolicy,
) -> WriteOutcome {
    assert!(!clients.is_empty(), "put_with_retry needs at least one client");
    let req = PutRequest {
        tenant: target.tenant.clone(),
        table: target.table.clone(),
        key: key.to_vec(),
        value: value.to_vec(),
        family: target.family.clone(),
    };
    let result = retry_call(policy, |attempt| {
        let mut client = clients[(first + attempt as usize) % clients.len()].1.clone();
        let req = req.clone();
        async move { client.put(req).await }
    })
    .await;
    match result {
        Ok(resp) => {
            let (revision, shard) = resp.header.map_or((0, 0), |h| (h.revision, h.shard_id));
            WriteOutcome::Acknowledged { revision, shard }
        }
        Err(last_error) => WriteOutcome::Unknown { last_error },
    }
}

/// What one writer task does.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Index of this writer; part of its keys and its random stream.
    pub writer: u32,
    /// Keys are `<key_prefix>/<writer>/<sequence>`.
    pub key_prefix: String,
    pub seed: u64,
    /// Most writes this writer sends, even if never told to stop.
    pub writes_max: u64,
    pub policy: RetryPolicy,
    pub target: KvTarget,
}

/// Counters shared by the writers of a run, for a test to watch progress.
#[derive(Debug, Default)]
pub struct WriterProgress {
    pub acknowledged: AtomicUsize,
    pub unknown: AtomicUsize,
}

impl WriterProgress {
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }
    pub fn unknown(&self) -> usize {
        self.unknown.load(Ordering::SeqCst)
    }
}

/// The key of write `seq` of `writer`.
pub fn writer_key(prefix: &str, writer: u32, seq: u64) -> Vec<u8> {
    format!("{prefix}/{writer:02}/{seq:07}").into_bytes()
}

/// Writes distinct keys one after the other, each through a randomly chosen node, until
/// `stop` is set or `writes_max` writes were sent. Returns every write with its outcome.
pub async fn run_writer(
    clients: Vec<(u64, DataClient<Channel>)>,
    config: WriterConfig,
    stop: Arc<AtomicBool>,
    progress: Arc<WriterProgress>,
) -> Vec<WriteRecord> {
    let mut rng = StdRng::seed_from_u64(config.seed ^ (u64::from(config.writer) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut records = Vec::new();
    for seq in 0..config.writes_max {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let key = writer_key(&config.key_prefix, config.writer, seq);
        let value = value_for(config.seed, &key);
        let first = rng.random_range(0..clients.len());
        let started = Instant::now();
        let outcome = put_with_retry(&clients, first, &config.target, &key, &value, &config.policy).await;
        let counter = if outcome.is_acknowledged() { &progress.acknowledged } else { &progress.unknown };
        counter.fetch_add(1, Ordering::SeqCst);
        records.push(WriteRecord { writer: config.writer, key, value, started, finished: Instant::now(), outcome });
    }
    records
}

/// What reading back a set of writes found.
#[derive(Debug, Default)]
pub struct Verification {
    pub acknowledged: usize,
    pub unknown_present: usize,
    pub unknown_absent: usize,
    /// Acknowledged writes missing or with another value, and present values that no
    /// write wrote. Must be empty.
    pub violations: Vec<String>,
}

impl Verification {
    /// A one-line summary and, if any, the first violations.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} acknowledged, {} unknown present, {} unknown absent, {} violations",
            self.acknowledged,
            self.unknown_present,
            self.unknown_absent,
            self.violations.len()
        );
        for v in self.violations.iter().take(VIOLATIONS_SHOWN_MAX) {
            s.push_str("\n  ");
            s.push_str(v);
        }
        s
    }
}

/// Reads every recorded key through `client` and checks: an acknowledged write is present
/// with its value; a write of unknown outcome is either absent or present with its value.
pub async fn verify_writes(
    client: &DataClient<Channel>,
    target: &KvTarget,
    records: &[WriteRecord],
    policy: &RetryPolicy,
) -> Result<Verification, Status> {
    let keys: Vec<Vec<u8>> = records.iter().map(|r| r.key.clone()).collect();
    let items = batch_get_all(client, target, &keys, policy).await?;
    let mut v = Verification::default();
    for (record, item) in records.iter().zip(items) {
        let key = String::from_utf8_lossy(&record.key);
        match (&record.outcome, item.found) {
            (WriteOutcome::Acknowledged { revision, shard }, false) => {
                v.violations.push(format!("acknowledged write of `{key}` (revision {revision} of shard {shard}) is missing"))
            }
            (WriteOutcome::Acknowledged { .. }, true) => v.acknowledged += 1,
            (WriteOutcome::Unknown { .. }, true) => v.unknown_present += 1,
            (WriteOutcome::Unknown { .. }, false) => v.unknown_absent += 1,
        }
        if item.found && item.value != record.value {
            v.violations.push(format!(
                "`{key}` has value `{}`, expected `{}`",
                String::from_utf8_lossy(&item.value),
                String::from_utf8_lossy(&record.value)
            ));
        }
    }
    Ok(v)
}

/// How many of `records` were acknowledged.
pub fn count_acknowledged(records: &[WriteRecord]) -> usize {
    records.iter().filter(|r| r.outcome.is_acknowledged()).count()
}

/// The largest revision of an acknowledged write, over every shard (0 if none): for tests
/// whose table stays in one shard.
pub fn max_revision(records: &[WriteRecord]) -> u64 {
    max_revisions(records).into_values().max().unwrap_or(0)
}

/// The largest revision of an acknowledged write in each shard's log.
pub fn max_revisions(records: &[WriteRecord]) -> std::collections::BTreeMap<u64, u64> {
    let mut max = std::collections::BTreeMap::new();
    for r in records {
        if let WriteOutcome::Acknowledged { revision, shard } = r.outcome {
            let m = max.entry(shard).or_insert(0);
            *m = (*m).max(revision);
        }
    }
    max
}

/// Checks the documented meaning of `revision` (the index of the write's entry in the log
/// of the shard that applied it, `shard_id`; docs/API.md): every acknowledged write has a
/// shard and a revision (> 0), no two acknowledged writes share one in a shard, and the
/// acknowledged writes of one writer to one shard, sent one after the other, have growing
/// revisions. Returns the violations.
pub fn revision_violations(records: &[WriteRecord]) -> Vec<String> {
    type Seen<'a> = std::collections::BTreeMap<(u64, u64), &'a [u8]>;
    let mut last: std::collections::BTreeMap<(u32, u64), (u64, &[u8])> = std::collections::BTreeMap::new();
    let mut seen: Seen = std::collections::BTreeMap::new();
    let mut violations = Vec::new();
    let mut sorted: Vec<&WriteRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.writer, r.started));
    for r in sorted {
        let WriteOutcome::Acknowledged { revision, shard } = r.outcome else { continue };
        let key = String::from_utf8_lossy(&r.key);
        if revision == 0 || shard == 0 {
            violations.push(format!("write of `{key}` acknowledged without a revision or shard ({revision} of shard {shard})"));
        } else if let Some(other) = seen.insert((shard, revision), &r.key) {
            violations.push(format!(
                "`{key}` and `{}` were both acknowledged with revision {revision} of shard {shard}",
                String::from_utf8_lossy(other)
            ));
        }
        if let Some((previous, previous_key)) = last.get(&(r.writer, shard)) {
            if revision <= *previous {
                violations.push(format!(
                    "writer {}: `{key}` got revision {revision} of shard {shard}, not above {previous} of the earlier `{}`",
                    r.writer,
                    String::from_utf8_lossy(previous_key)
                ));
            }
        }
        last.insert((r.writer, shard), (revision, &r.key));
    }
    violations
}

/// A group of writer tasks sharing a stop flag and progress counters. Dropping it tells the
/// writers to stop.
pub struct Writers {
    stop: Arc<AtomicBool>,
    progress: Arc<WriterProgress>,
    handles: Vec<tokio::task::JoinHandle<Vec<WriteRecord>>>,
}

impl Writers {
    /// Spawns `count` writers (numbered 0..count, configured like `template`), each with its
    /// own connections to the nodes `via` and sending each write to a random one of them.
    pub fn spawn(cluster: &crate::Cluster, via: &[u64], count: u32, template: &WriterConfig) -> Writers {
        assert!(!via.is_empty(), "writers need at least one node to write through");
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(WriterProgress::default());
        let handles = (0..count)
            .map(|writer| {
                let clients: Vec<_> = cluster.new_data_clients().into_iter().filter(|(id, _)| via.contains(id)).collect();
                let config = WriterConfig { writer, ..template.clone() };
                tokio::spawn(run_writer(clients, config, stop.clone(), progress.clone()))
            })
            .collect();
        Writers { stop, progress, handles }
    }

    pub fn progress(&self) -> &WriterProgress {
        &self.progress
    }

    /// Waits until at least `at_least` writes in total were acknowledged; fails the test
    /// (with log tails) after `limit_ms` milliseconds.
    pub async fn wait_acknowledged(&self, cluster: &crate::Cluster, at_least: usize, limit_ms: u64) {
        let deadline = Instant::now() + std::time::Duration::from_millis(limit_ms);
        while self.progress.acknowledged() < at_least {
            if Instant::now() >= deadline {
                cluster.fail(format!(
                    "only {} writes acknowledged ({} unknown) after {limit_ms} ms; waiting for {at_least}",
                    self.progress.acknowledged(),
                    self.progress.unknown()
                ));
            }
            cluster.check_alive();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits for every writer to finish its `writes_max` writes; returns all records.
    pub async fn join(mut self) -> Vec<WriteRecord> {
        let mut records = Vec::new();
        for handle in std::mem::take(&mut self.handles) {
            records.extend(handle.await.expect("a writer task panicked"));
        }
        records
    }

    /// Tells the writers to stop after their current write, then joins them.
    pub async fn stop_and_join(self) -> Vec<WriteRecord> {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_ordered_per_writer() {
        assert_eq!(writer_key("b", 3, 42), b"b/03/0000042".to_vec());
        assert!(writer_key("b", 3, 9) < writer_key("b", 3, 10));
        assert_ne!(writer_key("b", 1, 0), writer_key("b", 2, 0));
    }

    fn record(writer: u32, key: &str, started: Instant, revision: Option<u64>) -> WriteRecord {
        let outcome = match revision {
            Some(revision) => WriteOutcome::Acknowledged { revision, shard: 1 },
            None => WriteOutcome::Unknown { last_error: Status::unavailable("no leader") },
        };
        WriteRecord { writer, key: key.into(), value: b"v".to_vec(), started, finished: started, outcome }
    }

    #[test]
    fn revisions_must_be_set_distinct_and_growing_per_writer() {
        let t0 = Instant::now();
        let t = |ms| t0 + std::time::Duration::from_millis(ms);
        let good =
            [record(0, "a", t(0), Some(5)), record(1, "b", t(1), Some(3)), record(0, "c", t(2), None), record(0, "d", t(3), Some(9))];
        assert!(revision_violations(&good).is_empty(), "{:?}", revision_violations(&good));
        let shrinking = [record(0, "a", t(0), Some(5)), record(0, "b", t(1), Some(4))];
        assert_eq!(revision_violations(&shrinking).len(), 1);
        let shared = [record(0, "a", t(0), Some(5)), record(1, "b", t(1), Some(5))];
        assert_eq!(revision_violations(&shared).len(), 1);
        let missing = [record(0, "a", t(0), Some(0))];
        assert_eq!(revision_violations(&missing).len(), 1);
        // Another shard's log has revisions of its own: lower, or the same, is fine there.
        let mut other = record(0, "b", t(1), Some(2));
        other.outcome = WriteOutcome::Acknowledged { revision: 5, shard: 7 };
        let split = [record(0, "a", t(0), Some(5)), other];
        assert!(revision_violations(&split).is_empty(), "{:?}", revision_violations(&split));
    }

    #[test]
    fn values_depend_on_seed_and_key() {
        assert_eq!(value_for(1, b"k"), value_for(1, b"k"));
        assert_ne!(value_for(1, b"k"), value_for(2, b"k"));
        assert_ne!(value_for(1, b"k"), value_for(1, b"j"));
    }
}
