//! Appending to the audit log ([`kho_raft::audit`]) from the node that sees a request:
//! records of denied requests go through a bounded queue, proposed to the meta group in
//! batches; an audited admin change is proposed with its record in one command
//! (`Command::Audited`), so the change and its record are applied together or not at all;
//! a read in an access session waits until its record is committed ([`AuditLog::append`],
//! fail closed: no record, no answer), its record grouped with those of concurrent reads
//! into one proposal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kho_raft::audit::{Record, AUDIT_RECORDS_PER_COMMAND_MAX, AUDIT_RECORD_BYTES_MAX};
use kho_raft::{Command, RaftNode, META_GROUP};
use tokio::sync::mpsc;
use tonic::Status;

use crate::auth::{now_ms, AuthBy, Caller};

/// Records of denied requests waiting to be proposed, count. Past it, records are dropped
/// and counted; the next batch says how many.
pub const AUDIT_QUEUE_MAX: usize = 10_000;
/// How long the queue collects records before proposing them, milliseconds.
pub const AUDIT_FLUSH_MS: u64 = 100;
/// Timeout of one batch's proposal, milliseconds; a batch that fails is tried again at
/// most [`AUDIT_BATCH_TRIES_MAX`] times, then dropped and counted.
const AUDIT_PROPOSE_TIMEOUT_MS: u64 = 5_000;
const AUDIT_BATCH_TRIES_MAX: u32 = 3;
/// Bytes of records one batch collects before it is proposed (a record is at most
/// AUDIT_RECORD_BYTES_MAX): a batch stays well under the gRPC message limit between nodes.
pub const AUDIT_BATCH_BYTES_MAX: usize = 1 << 20;
/// Reads waiting for their audit record to be committed, count. Past it, a read in an
/// access session is refused (`UNAVAILABLE`) rather than answered unrecorded.
pub const AUDIT_WAITING_MAX: usize = 4_096;
/// Longest wait for a read's audit record to be committed, milliseconds; past it the read
/// is refused.
pub const AUDIT_APPEND_TIMEOUT_MS: u64 = 5_000;

type Waiter = (Record, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Most families or fields one record names, count; past it the record says how many more.
const RECORD_NAMES_MAX: usize = 32;
/// Longest name (family, field), reason or key list a record keeps, bytes.
const RECORD_TEXT_BYTES_MAX: usize = 64;
const RECORD_REASON_BYTES_MAX: usize = 1_024;
const RECORD_KEYS_BYTES_MAX: usize = 6 * 1024;
const RECORD_PURPOSE_BYTES_MAX: usize = kho_raft::access::SESSION_PURPOSE_BYTES_MAX;

/// `s` cut to at most `max` bytes, at a character boundary, marked `…` when cut.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max.saturating_sub(3);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
}

/// A record within the meta group's limit (AUDIT_RECORD_BYTES_MAX): what a request names
/// (families, fields, keys, its reason) is cut to bounded lists of bounded names, so that
/// no request can make a record, or the batch it joins, too large to append.
pub fn bounded(mut r: Record) -> Record {
    for list in [&mut r.families, &mut r.fields] {
        if list.len() > RECORD_NAMES_MAX {
            let more = list.len() - RECORD_NAMES_MAX;
            list.truncate(RECORD_NAMES_MAX);
            list.push(format!("(+{more} more)"));
        }
        for name in list.iter_mut() {
            cut(name, RECORD_TEXT_BYTES_MAX);
        }
    }
    cut(&mut r.tenant, RECORD_TEXT_BYTES_MAX);
    cut(&mut r.table, RECORD_TEXT_BYTES_MAX);
    cut(&mut r.keys, RECORD_KEYS_BYTES_MAX);
    cut(&mut r.reason, RECORD_REASON_BYTES_MAX);
    cut(&mut r.purpose, RECORD_PURPOSE_BYTES_MAX);
    cut(&mut r.principal, RECORD_TEXT_BYTES_MAX);
    cut(&mut r.request_id, RECORD_TEXT_BYTES_MAX);
    debug_assert!(r.encode().len() <= AUDIT_RECORD_BYTES_MAX, "a bounded record fits");
    r
}

/// The node's side of the audit log.
pub struct AuditLog {
    node: u64,
    tx: mpsc::Sender<Record>,
    /// Records whose request waits for their commit.
    waiting: mpsc::Sender<Waiter>,
    /// Records dropped since the last batch (queue full, or a batch that failed).
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// The log and the task that proposes its batches (run until aborted).
    pub fn start(node: Arc<RaftNode>) -> (Arc<AuditLog>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE_MAX);
        let (waiting, waiting_rx) = mpsc::channel(AUDIT_WAITING_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let log = Arc::new(AuditLog { node: node.id, tx, waiting, dropped: dropped.clone() });
        let appender = tokio::spawn(run_waiting(node.clone(), waiting_rx));
        let task = tokio::spawn(async move {
            run(node, rx, dropped).await;
            appender.abort();
        });
        (log, task)
    }

    /// Appends `r` and returns once the meta group has committed it; `UNAVAILABLE` when it
    /// could not be (the caller refuses the request it records: fail closed).
    pub async fn append(&self, r: Record) -> Result<(), Status> {
        let refuse = |why: &str| {
            Status::unavailable(format!("the read was refused: its audit record could not be written ({why}); nothing was returned; retry"))
        };
        #[cfg(feature = "failpoints")]
        if fail::eval("audit-append", |_| ()).is_some() {
            return Err(refuse("fail point audit-append"));
        }
        let r = bounded(r);
        if r.encode().len() > AUDIT_RECORD_BYTES_MAX {
            return Err(refuse(&format!("the record exceeds {AUDIT_RECORD_BYTES_MAX} bytes (AUDIT_RECORD_BYTES_MAX)")));
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.waiting
            .try_send((r, done))
            .map_err(|_| refuse(&format!("{AUDIT_WAITING_MAX} reads are waiting for their records (AUDIT_WAITING_MAX)")))?;
        match tokio::time::timeout(Duration::from_millis(AUDIT_APPEND_TIMEOUT_MS), wait).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(refuse(&e)),
            Ok(Err(_)) => Err(refuse("the audit appender stopped")),
            Err(_) => Err(refuse(&format!("not committed within {AUDIT_APPEND_TIMEOUT_MS} ms (AUDIT_APPEND_TIMEOUT_MS)"))),
        }
    }

    /// Queues a record without waiting (what a stream returned, after it ended).
    pub fn note(&self, r: Record) {
        if self.tx.try_send(bounded(r)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A record of `action` by `caller`, stamped with this node and the time.
    pub fn record(&self, caller: &Caller, action: &str) -> Record {
        Record {
            time_ms: now_ms(),
            node: self.node,
            principal: caller.name.clone(),
            auth: auth_text(caller),
            action: action.to_string(),
            decision: "allowed".into(),
            ..Record::default()
        }
    }

    /// Queues a record of a refused request; never waits.
    pub fn denied(&self, mut r: Record, why: &Status) {
        r.decision = "denied".into();
        r.reason = format!("{:?}: {}", why.code(), why.message());
        if self.tx.try_send(bounded(r)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn auth_text(c: &Caller) -> String {
    match &c.by {
        AuthBy::Certificate { fingerprint } if fingerprint.is_empty() => "certificate (forwarded)".into(),
        AuthBy::Certificate { fingerprint } => format!("certificate {fingerprint}"),
        AuthBy::Token { id } => format!("token {id}"),
        AuthBy::Node { id } => id.map_or_else(|| "node".to_string(), |n| format!("node {n}")),
        AuthBy::Off => "none".into(),
    }
}

async fn run(node: Arc<RaftNode>, mut rx: mpsc::Receiver<Record>, dropped: Arc<AtomicU64>) {
    loop {
        // An idle queue still reports records it dropped (a batch that failed), at most
        // AUDIT_FLUSH_MS × 10 later.
        let mut batch = match tokio::time::timeout(Duration::from_millis(AUDIT_FLUSH_MS * 10), rx.recv()).await {
            Ok(Some(first)) => vec![first],
            Ok(None) => return,
            Err(_) if dropped.load(Ordering::Relaxed) > 0 => Vec::new(),
            Err(_) => continue,
        };
        let mut bytes = batch.iter().map(|r| r.encode().len()).sum::<usize>();
        let until = tokio::time::Instant::now() + Duration::from_millis(AUDIT_FLUSH_MS);
        while batch.len() < AUDIT_RECORDS_PER_COMMAND_MAX - 1 && bytes < AUDIT_BATCH_BYTES_MAX {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => {
                    bytes += r.encode().len();
                    batch.push(r)
                }
                _ => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(Record {
                time_ms: now_ms(),
                node: node.id,
                action: "AuditQueue".into(),
                decision: "failed".into(),
                reason: format!(
                    "{lost} records of denied requests were not recorded (AUDIT_QUEUE_MAX {AUDIT_QUEUE_MAX}, or their batch failed)"
                ),
                ..Record::default()
            });
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let cmd = Command::Audit { records: batch.iter().map(|r| serde_bytes::ByteBuf::from(r.encode())).collect() };
        let mut done = false;
        for _ in 0..AUDIT_BATCH_TRIES_MAX {
            match tokio::time::timeout(Duration::from_millis(AUDIT_PROPOSE_TIMEOUT_MS), node.propose_anywhere(META_GROUP, cmd.clone()))
                .await
            {
                Ok(Ok(_)) => {
                    done = true;
                    break;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, records = n, "audit batch not appended; trying again"),
                Err(_) => tracing::warn!(records = n, "audit batch not appended within {AUDIT_PROPOSE_TIMEOUT_MS} ms; trying again"),
            }
        }
        if !done {
            dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Proposes waiting records: whatever is waiting when a proposal starts goes in it (at most
/// AUDIT_RECORDS_PER_COMMAND_MAX), so concurrent reads share one commit. One try: a
/// failure refuses the reads.
async fn run_waiting(node: Arc<RaftNode>, mut rx: mpsc::Receiver<Waiter>) {
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.0.encode().len();
        let mut batch = vec![first];
        while batch.len() < AUDIT_RECORDS_PER_COMMAND_MAX && bytes < AUDIT_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += w.0.encode().len();
                    batch.push(w)
                }
                Err(_) => break,
            }
        }
        let cmd = Command::Audit { records: batch.iter().map(|(r, _)| serde_bytes::ByteBuf::from(r.encode())).collect() };
        let outcome =
            match tokio::time::timeout(Duration::from_millis(AUDIT_APPEND_TIMEOUT_MS), node.propose_anywhere(META_GROUP, cmd)).await {
                Ok(Ok(resp)) => match resp.outcome {
                    kho_raft::command::Outcome::Rejected(e) => Err(format!("the meta group refused the records: {}", e.message)),
                    _ => Ok(()),
                },
                Ok(Err(e)) => Err(format!("the meta group: {e}")),
                Err(_) => Err(format!("not committed within {AUDIT_APPEND_TIMEOUT_MS} ms")),
            };
        for (_, done) in batch {
            let _ = done.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_any_request_fits_the_limit() {
        let big = Record {
            families: vec!["f".repeat(300); 5_000],
            fields: vec!["ngày_sinh".repeat(200); 5_000],
            keys: "k".repeat(100_000),
            reason: "lý do ".repeat(10_000),
            tenant: "t".repeat(1_000),
            request_id: "r".repeat(1_000),
            purpose: "p".repeat(512),
            ..Record::default()
        };
        let r = bounded(big);
        assert!(r.encode().len() <= AUDIT_RECORD_BYTES_MAX, "{} bytes", r.encode().len());
        assert_eq!(r.fields.len(), RECORD_NAMES_MAX + 1);
        assert_eq!(r.fields.last().map(String::as_str), Some("(+4968 more)"));
        assert!(r.reason.ends_with('…') && r.reason.len() <= RECORD_REASON_BYTES_MAX);
        let small = Record { fields: vec!["ho_ten".into()], ..Record::default() };
        assert_eq!(bounded(small.clone()), small);
    }
}
