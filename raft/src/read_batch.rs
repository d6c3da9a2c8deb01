//! Linearizable read barriers shared by concurrent readers.
//!
//! A read barrier (ReadIndex) asks the leader to confirm its leadership with a quorum and
//! then waits until the state machine has applied the commit index of that moment. Every
//! read that arrived before a confirmation *started* may use it: anything acknowledged
//! before such a read was committed before the confirmation began. So concurrent readers
//! join the next round, and one round serves them all, as etcd's read loop does. With many
//! readers this turns one Raft-core message, one heartbeat wait and one apply wait per read
//! into one per round.
//!
//! A read waits for at most the rest of the round in flight plus its own round.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ReadPolicy;
use tokio::sync::oneshot;

use bytes::Bytes;
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use serde::{Deserialize, Serialize};

use crate::error::ProposeError;
use crate::network::{MessageKind, Transport};
use crate::{GroupId, LogId, NodeId, Raft};

/// Most readers waiting for the next round of one group, count. Beyond it a read is
/// refused as unavailable (the node is overloaded), never queued without bound.
pub const READ_WAITERS_MAX: usize = 65_536;
/// Longest one round may take (leadership confirmation plus the apply wait), milliseconds.
/// Its readers then get UNAVAILABLE; the next round starts afresh.
pub const READ_ROUND_TIMEOUT_MS: u64 = 10_000;

/// What a round answers every reader that waited for it.
pub(crate) type RoundResult = Result<(), ProposeError>;

/// Starts one round. Generic over the answer so that tests can see which round served whom.
type RoundFn<T> = Box<dyn Fn() -> BoxFuture<'static, T> + Send + Sync>;

struct Pending<T> {
    /// Whether a driver task is running rounds.
    driving: bool,
    /// Readers that arrived after the round in flight started.
    waiters: Vec<oneshot::Sender<T>>,
}

/// The read barriers of one group.
pub(crate) struct ReadBatcher<T = RoundResult> {
    round: RoundFn<T>,
    /// Answers a reader whose round was abandoned (its task cancelled at shutdown).
    abandoned: fn() -> T,
    /// Answers a reader refused because [`READ_WAITERS_MAX`] readers wait already.
    overloaded: fn() -> T,
    pending: Mutex<Pending<T>>,
}

impl ReadBatcher<RoundResult> {
    /// Rounds of ReadIndex barriers on `raft`.
    pub(crate) fn new(raft: Raft) -> Arc<Self> {
        let round: RoundFn<RoundResult> = Box::new(move || {
            let raft = raft.clone();
            async move { read_index(&raft).await }.boxed()
        });
        Self::with_round(
            round,
            || Err(ProposeError::Unavailable("the read round was abandoned (shutting down)".into())),
            || {
                Err(ProposeError::Unavailable(format!(
                    "{READ_WAITERS_MAX} linearizable reads are already waiting for the next read round \
                     (READ_WAITERS_MAX); retry"
                )))
            },
        )
    }
}

/// Longest a follower waits to apply up to the leader's read index, milliseconds. A
/// follower further behind than that hands the round's reads to the leader instead (the
/// caller forwards them).
pub const FOLLOWER_READ_APPLY_WAIT_MS: u64 = 1_000;
/// After a round found this follower too far behind, how long its reads go straight to the
/// leader without asking for a read index, milliseconds: a lagging replica does not make
/// every read wait [`FOLLOWER_READ_APPLY_WAIT_MS`] first.
pub const FOLLOWER_READ_LAG_BACKOFF_MS: u64 = 1_000;
/// Most read-index requests of followers a node answers at once, count; more are refused
/// (the follower then forwards its reads). A follower sends one per round of its reads.
pub const READ_INDEX_ANSWERS_MAX: usize = 256;

impl ReadBatcher<RoundResult> {
    /// Rounds of follower reads on `raft`: one read-index request to the leader, then the
    /// wait until this node has applied up to the index the leader answered.
    pub(crate) fn follower(raft: Raft, transport: Arc<dyn Transport>, group: GroupId, rpc_timeout: Duration) -> Arc<Self> {
        let lagging_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let round: RoundFn<RoundResult> = Box::new(move || {
            let (raft, transport, lagging_until) = (raft.clone(), transport.clone(), lagging_until.clone());
            async move { follower_read_index(&raft, transport.as_ref(), group, rpc_timeout, &lagging_until).await }.boxed()
        });
        Self::with_round(
            round,
            || Err(ProposeError::Unavailable("the follower read round was abandoned (shutting down)".into())),
            || {
                Err(ProposeError::Unavailable(format!(
                    "{READ_WAITERS_MAX} linearizable reads are already waiting for the next follower read round \
                     (READ_WAITERS_MAX); retry"
                )))
            },
        )
    }
}

/// The leader's answer to a read-index request from a follower (docs/FORMATS.md, "Raft
/// messages").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    /// Leadership was confirmed by a quorum after the request arrived; a read that waits
    /// until this log id is applied is linearizable.
    Ready(LogId),
    /// The node asked is not the leader.
    NotLeader { leader_id: Option<NodeId>, leader_addr: Option<String> },
}

/// The leader's side of a follower read: confirms leadership (ReadIndex) without waiting
/// for its own apply, and answers the log id the follower must apply up to: the larger of
/// its commit index and its first entry of its term (openraft's `read_log_id`).
pub(crate) async fn answer_read_index(raft: &Raft) -> Result<ReadIndexReply, String> {
    static ANSWERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(READ_INDEX_ANSWERS_MAX);
    let Ok(_permit) = ANSWERING.try_acquire() else {
        return Err(format!("{READ_INDEX_ANSWERS_MAX} read-index requests are being answered (READ_INDEX_ANSWERS_MAX)"));
    };
    let timeout = Duration::from_millis(READ_ROUND_TIMEOUT_MS);
    match tokio::time::timeout(timeout, raft.get_read_linearizer(ReadPolicy::ReadIndex)).await {
        Err(_) => Err(format!("leadership not confirmed within {READ_ROUND_TIMEOUT_MS} ms (READ_ROUND_TIMEOUT_MS)")),
        Ok(Ok(linearizer)) => Ok(ReadIndexReply::Ready(*linearizer.read_log_id().log_id())),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
            Ok(ReadIndexReply::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) })
        }
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// One follower read round: the leader's read index, then the local apply wait. Whenever
/// the leader cannot give an index (unreachable, busy, or no longer leader), the round's
/// reads are handed to the leader the caller knows: forwarding either works or ends in a
/// clear UNAVAILABLE.
async fn follower_read_index(
    raft: &Raft,
    transport: &dyn Transport,
    group: GroupId,
    rpc_timeout: Duration,
    lagging_until: &Mutex<Option<Instant>>,
) -> RoundResult {
    let (me, leader, addr) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader;
        let addr = leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        (m.id, leader, addr)
    };
    let (leader, addr) = match (leader, addr) {
        // This node became the leader since the caller looked: a local round.
        (Some(l), _) if l == me => return read_index(raft).await,
        (Some(l), Some(a)) => (l, a),
        (l, a) => return Err(ProposeError::ForwardToLeader { leader_id: l, leader_addr: a }),
    };
    let to_leader = || ProposeError::ForwardToLeader { leader_id: Some(leader), leader_addr: Some(addr.clone()) };
    {
        let mut lagging = lagging_until.lock().unwrap_or_else(|p| p.into_inner());
        match *lagging {
            Some(until) if Instant::now() < until => return Err(to_leader()),
            Some(_) => *lagging = None,
            None => {}
        }
    }
    let reply = match transport.call(leader, addr.clone(), group, MessageKind::ReadIndex, Bytes::new(), rpc_timeout).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(error = %e, leader, "follower read: no read index from the leader; forwarding");
            return Err(to_leader());
        }
    };
    let log_id = match crate::network::decode_reply::<ReadIndexReply>("read-index", &reply) {
        Ok(ReadIndexReply::Ready(log_id)) => log_id,
        // The node asked lost an election to this one: a local round.
        Ok(ReadIndexReply::NotLeader { leader_id: Some(l), .. }) if l == me => return read_index(raft).await,
        Ok(ReadIndexReply::NotLeader { leader_id, leader_addr }) => return Err(ProposeError::ForwardToLeader { leader_id, leader_addr }),
        Err(e) => {
            tracing::debug!(error = %e, leader, "follower read: the leader gave no read index; forwarding");
            return Err(to_leader());
        }
    };
    let wait = Duration::from_millis(FOLLOWER_READ_APPLY_WAIT_MS);
    match Linearizer::new(me, ReadLogId::from_log_id(log_id), None).try_await_ready(raft, Some(wait)).await {
        Ok(Ok(_)) => Ok(()),
        // Too far behind: the leader serves these reads, and the next ones for a while.
        Ok(Err(_)) => {
            let until = Instant::now() + Duration::from_millis(FOLLOWER_READ_LAG_BACKOFF_MS);
            *lagging_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
            Err(to_leader())
        }
        Err(e) => Err(ProposeError::Unavailable(e.to_string())),
    }
}

/// One leadership confirmation plus the apply wait.
async fn read_index(raft: &Raft) -> RoundResult {
    let timeout = Duration::from_millis(READ_ROUND_TIMEOUT_MS);
    match tokio::time::timeout(timeout, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
        Err(_) => Err(ProposeError::Unavailable(format!(
            "leadership not confirmed and applied within {READ_ROUND_TIMEOUT_MS} ms (READ_ROUND_TIMEOUT_MS)"
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
            Err(ProposeError::ForwardToLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) })
        }
        Ok(Err(e)) => Err(ProposeError::Unavailable(e.to_string())),
    }
}

impl<T: Clone + Send + 'static> ReadBatcher<T> {
    fn with_round(round: RoundFn<T>, abandoned: fn() -> T, overloaded: fn() -> T) -> Arc<Self> {
        Arc::new(ReadBatcher { round, abandoned, overloaded, pending: Mutex::new(Pending { driving: false, waiters: Vec::new() }) })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<T>> {
        // A panic while holding the lock leaves `Pending` consistent (two plain fields).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the answer of a round that started after this call: for ReadIndex rounds,
    /// once a leadership confirmation started after the call has completed and this node has
    /// applied what was committed when it started.
    pub(crate) async fn barrier(self: &Arc<Self>) -> T {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut p = self.pending();
            if p.waiters.len() >= READ_WAITERS_MAX {
                return (self.overloaded)();
            }
            p.waiters.push(tx);
            !std::mem::replace(&mut p.driving, true)
        };
        if start_driver {
            let driver = Driver { batcher: self.clone(), finished: false };
            tokio::spawn(driver.run());
        }
        rx.await.unwrap_or_else(|_| (self.abandoned)())
    }
}

/// Runs rounds while readers wait. If its task is cancelled (shutdown) or panics, dropping
/// it answers the waiting readers and lets the next reader start a new driver.
struct Driver<T: Clone + Send + 'static> {
    batcher: Arc<ReadBatcher<T>>,
    /// Set when `run` returned normally, having handed `driving` back under the lock.
    finished: bool,
}

impl<T: Clone + Send + 'static> Driver<T> {
    async fn run(mut self) {
        loop {
            // Take the readers first, then start their round: every one of them arrived
            // before it started.
            let waiters = {
                let mut p = self.batcher.pending();
                if p.waiters.is_empty() {
                    p.driving = false;
                    self.finished = true;
                    return;
                }
                std::mem::take(&mut p.waiters)
            };
            let result = (self.batcher.round)().await;
            for w in waiters {
                // A reader that gave up (its own timeout) has dropped its receiver.
                let _ = w.send(result.clone());
            }
        }
    }
}

impl<T: Clone + Send + 'static> Drop for Driver<T> {
    fn drop(&mut self) {
        if self.finished {
            // Another driver may already own the waiters that arrived since.
            return;
        }
        let mut p = self.batcher.pending();
        p.driving = false;
        // Dropping the senders answers their readers ("abandoned").
        p.waiters.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Rounds that count how many have started and answer their own number; each takes a
    /// little while, so readers arrive while one is in flight.
    fn counting_batcher() -> (Arc<ReadBatcher<u64>>, Arc<AtomicU64>) {
        let started = Arc::new(AtomicU64::new(0));
        let s = started.clone();
        let round: RoundFn<u64> = Box::new(move || {
            let n = s.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                n
            }
            .boxed()
        });
        (ReadBatcher::with_round(round, || 0, || 0), started)
    }

    /// Every reader is answered by a round that started after it arrived, and concurrent
    /// readers share rounds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reader_is_served_by_a_round_started_after_it_arrived() {
        const READERS: usize = 64;
        const READS_EACH: usize = 50;
        let (batcher, started) = counting_batcher();
        let tasks: Vec<_> = (0..READERS)
            .map(|_| {
                let (b, started) = (batcher.clone(), started.clone());
                tokio::spawn(async move {
                    let mut early = Vec::new();
                    for _ in 0..READS_EACH {
                        let before = started.load(Ordering::SeqCst);
                        let served_by = b.barrier().await;
                        if served_by <= before {
                            early.push((before, served_by));
                        }
                    }
                    early
                })
            })
            .collect();
        let mut early = Vec::new();
        for t in tasks {
            early.extend(t.await.expect("reader task"));
        }
        assert!(early.is_empty(), "readers served by a round already started when they arrived: {early:?}");
        let rounds = started.load(Ordering::SeqCst);
        let reads = (READERS * READS_EACH) as u64;
        assert!(rounds < reads / 4, "{rounds} rounds for {reads} reads: concurrent readers did not share rounds");
    }

    /// A runtime shutdown cancels a driver in the middle of a round: its readers are let go
    /// and a later read starts a new driver instead of waiting for the dead one.
    #[test]
    fn reads_work_again_after_a_driver_is_cancelled() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        // The first round never ends; later rounds answer their number at once.
        let round: RoundFn<u64> = Box::new(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                futures::future::pending().boxed()
            } else {
                futures::future::ready(n).boxed()
            }
        });
        let batcher = ReadBatcher::with_round(round, || 0, || 0);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let b = batcher.clone();
        rt.spawn(async move { b.barrier().await });
        let waited = std::time::Instant::now();
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(waited.elapsed() < Duration::from_secs(10), "the first round never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A reader that arrives during the stuck round waits for the next one.
        let b = batcher.clone();
        rt.spawn(async move { b.barrier().await });
        while batcher.pending().waiters.is_empty() {
            assert!(waited.elapsed() < Duration::from_secs(10), "the second reader never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
        rt.shutdown_timeout(Duration::from_secs(5));
        {
            let p = batcher.pending();
            assert!(!p.driving && p.waiters.is_empty(), "the cancelled driver left driving={} and {} readers", p.driving, p.waiters.len());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let answer = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), batcher.barrier()).await });
        assert_eq!(answer, Ok(2), "a read after the cancelled driver is served by a new round");
    }

    /// The read-index reply's wire form (docs/FORMATS.md, "Raft messages"): nodes of one
    /// cluster must agree on it byte for byte.
    #[test]
    fn read_index_reply_wire_form_is_the_documented_one() {
        let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 3, node_id: 2 }, 300);
        let ready = crate::network::encode_reply(Ok(ReadIndexReply::Ready(log_id)));
        // status 0, variant 0, term 3, node 2, index 300 (postcard varints).
        assert_eq!(&ready[..], &[0, 0, 3, 2, 0xac, 0x02]);
        let not_leader = ReadIndexReply::NotLeader { leader_id: Some(7), leader_addr: Some("h:1".into()) };
        let bytes = crate::network::encode_reply(Ok(not_leader.clone()));
        // status 0, variant 1, Some(7), Some("h:1").
        assert_eq!(&bytes[..], &[0, 1, 1, 7, 1, 3, b'h', b':', b'1']);
        assert_eq!(crate::network::decode_reply::<ReadIndexReply>("read-index", &bytes), Ok(not_leader));
        assert_eq!(
            crate::network::decode_reply::<ReadIndexReply>(
                "read-index",
                &crate::network::encode_reply::<ReadIndexReply>(Err("busy".into()))
            ),
            Err("busy".to_string())
        );
        assert!(crate::network::decode_reply::<ReadIndexReply>("read-index", &[0, 9]).is_err(), "an unknown variant is refused");
    }
}
