//! Sleeping groups (docs/SHARDING.md, "Sleeping shards"): a data shard with nothing to do
//! stops its Raft timers, so that ten thousand idle shards cost a node almost nothing.
//!
//! An awake openraft group ticks every fifth of a heartbeat interval, and its leader sends
//! a heartbeat to every follower each interval: per idle shard, tens of wake-ups and
//! messages a second. Like TiKV's hibernate regions and CockroachDB's quiescence, a
//! shard's leader that has seen no new entry for `raft.sleep_after_idle_ms`, with every
//! replica holding and having applied its whole log, asks each replica to sleep (peer
//! message `SLEEP`); when all agree it stops its own ticker (no heartbeats). A replica
//! agrees only if it follows that leader in that term and has applied the same last
//! index; it stops its ticker (no election timer).
//!
//! What wakes a group, so that it ticks again:
//! - any entry appended to its log: a proposal on the leader, received entries on a
//!   follower ([`Sleep::touch`] in the log store), so the leader and its followers wake
//!   together with the first write;
//! - a vote or Pre-Vote request, and a snapshot, received from a peer;
//! - the node liveness probe ([`spawn_probe`]): each node asks every other node for its
//!   boot id every `raft.heartbeat_interval_ms`. When a node has not answered for
//!   `raft.election_timeout_min_ms`, the groups here that it leads wake (their election
//!   timer has long expired, so they elect at once); when a node comes back or restarted,
//!   the groups led here that it is a member of wake, and their heartbeats reach it.
//!
//! A Pre-Vote for a sleeping group is refused here, without waking it, when this node
//! leads the group (it then wakes and heartbeats) or when the group's leader answers this
//! node's probe: a node that stops hearing a sleeping leader over one broken link must not
//! win an election the awake replicas would refuse (their leader lease would still hold).
//!
//! A node starts its data groups asleep. Once every other node answered its probe, or
//! [`PROBE_START_GRACE_MS`] after it started, it wakes those whose leader is itself,
//! unknown, or a node that did not answer; the others wait for their leader, which learns
//! of the restart from its own probe. A restarted node therefore does not start an
//! election in every shard it holds while their leaders are alive. Within that grace, a
//! node that has not answered since this one started is not taken for dead: after a
//! whole-cluster restart, nodes opening thousands of shards answer late, and their shards
//! must not all elect elsewhere meanwhile.
//!
//! The probe wakes at most [`PROBE_WAKES_PER_ROUND_MAX`] shards per round and keeps at most
//! [`PROBE_AWAKE_MAX`] of those it woke awake; the rest wait their turn.
//!
//! A replica that is down keeps its shards' leaders awake (a leader sleeps only when every
//! replica agrees). The meta group never sleeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::network::{self, MessageKind};
use crate::node::{Group, RaftNode};
use crate::{GroupId, NodeId, Raft, META_GROUP};

/// Most shards the probe wakes per round (one heartbeat interval), count; the others wait
/// for the next rounds.
const PROBE_WAKES_PER_ROUND_MAX: usize = 128;
/// Most shards the probe has woken that are still awake, count: more wait until some sleep
/// again. Each awake shard heartbeats and may elect; ten thousand at once (a whole-cluster
/// restart, a node that led thousands dying) would bury the nodes in messages.
const PROBE_AWAKE_MAX: usize = 512;
/// How long a shard the probe woke counts against [`PROBE_AWAKE_MAX`] at most,
/// milliseconds: one that stays awake (it is written to) stops counting after it.
const PROBE_WAKE_SETTLE_MS: u64 = 10_000;

/// How long after a node started a peer that has not answered its probe yet is presumed
/// alive, milliseconds (see the module docs): a failed node's shards elect new leaders
/// this much later when the other nodes restart too.
pub const PROBE_START_GRACE_MS: u64 = 60_000;

/// How often a node looks for idle groups it leads, milliseconds.
const SLEEP_CHECK_MS: u64 = 250;
/// Most groups a node puts to sleep per check, count (each asks every replica).
const SLEEP_GROUPS_PER_CHECK_MAX: usize = 256;
/// Most shards a node asks to sleep at once, count (each asks its other replicas: 2
/// `SLEEP` requests with 3 replicas).
const SLEEP_GROUPS_IN_FLIGHT_MAX: usize = 32;

/// A group's sleep state, shared by its log store (which wakes it) and the node.
pub struct Sleep {
    group: GroupId,
    raft: OnceLock<Raft>,
    /// Bumped by every append and wake: a sleep decided on an older value is refused.
    activity: AtomicU64,
    asleep: AtomicBool,
    /// When the group last woke: milliseconds since [`epoch`] plus one; 0 = never. Read on
    /// every write ([`Sleep::asleep_within`]), so an atomic, not under the lock.
    woke_at_ms: AtomicU64,
    /// Serializes the transitions (the flag and openraft's ticker switch together).
    transition: Mutex<()>,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep").field("asleep", &self.is_asleep()).finish()
    }
}

impl Sleep {
    pub(crate) fn new(group: GroupId) -> Sleep {
        Sleep {
            group,
            raft: OnceLock::new(),
            activity: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            woke_at_ms: AtomicU64::new(0),
            transition: Mutex::new(()),
        }
    }

    /// Hands the group's Raft to the sleep state, once, right after it was created.
    pub(crate) fn attach(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// The activity counter, read before a sleep is decided ([`Sleep::try_sleep`]).
    pub(crate) fn activity(&self) -> u64 {
        self.activity.load(Ordering::SeqCst)
    }

    /// Something happened in the group (`why`: an append, a vote request, ...): wakes it
    /// if it sleeps, so that its ticker runs again (elections on a follower, heartbeats on
    /// a leader).
    pub fn wake(&self, why: &'static str) {
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            self.wake_now(why);
        }
    }

    fn wake_now(&self, why: &'static str) {
        let _one = self.transition.lock().unwrap_or_else(|p| p.into_inner());
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.woke_at_ms.store(since_epoch_ms() + 1, Ordering::SeqCst);
            if let Some(raft) = self.raft.get() {
                raft.runtime_config().tick(true);
            }
            tracing::debug!(group = self.group, why, "group awake");
        }
    }

    /// Whether the group is asleep, or woke less than `d` ago.
    pub(crate) fn asleep_within(&self, d: Duration) -> bool {
        if self.is_asleep() {
            return true;
        }
        let woke = self.woke_at_ms.load(Ordering::SeqCst);
        woke != 0 && (since_epoch_ms() + 1).saturating_sub(woke) < d.as_millis() as u64
    }

    /// Puts the group to sleep unless something happened since `seen` was read from
    /// [`Sleep::activity`]. Returns whether it sleeps.
    pub(crate) fn try_sleep(&self, seen: u64) -> bool {
        let Some(raft) = self.raft.get() else { return false };
        let _one = self.transition.lock().unwrap_or_else(|p| p.into_inner());
        // The flag first, then the counter: an append that bumps the counter after this
        // check sees the flag and wakes the group (after this transition ends).
        self.asleep.store(true, Ordering::SeqCst);
        if self.activity.load(Ordering::SeqCst) != seen {
            self.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        raft.runtime_config().tick(false);
        true
    }
}

/// The process's clock origin for [`Sleep`]'s wake times.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// `raft.sleep_after_idle_ms`'s meaning when 0: groups never sleep.
pub fn enabled(sleep_after_idle_ms: u64) -> bool {
    sleep_after_idle_ms > 0
}

/// What a leader sends a replica it asks to sleep.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct SleepRequest {
    pub leader: NodeId,
    pub term: u64,
    /// The leader's last log index, which the replica must have applied.
    pub last_index: u64,
}

/// Answers a leader's `SLEEP` request for replica `g`: sleeps and says yes only if it
/// follows that leader in that term and has applied the leader's last index.
pub(crate) fn answer_sleep(g: &Group, req: SleepRequest) -> Result<bool, String> {
    let seen = g.sleep.activity();
    let m = g.raft.metrics().borrow_watched().clone();
    let following = matches!(m.state, ServerState::Follower | ServerState::Learner)
        && m.current_leader == Some(req.leader)
        && m.current_term == req.term;
    let caught_up = m.last_log_index == Some(req.last_index) && m.last_applied.map(|l| l.index) == Some(req.last_index);
    Ok(following && caught_up && g.sleep.try_sleep(seen))
}

/// Whether led group `g` may sleep: nothing in flight, every replica has its whole log.
/// Returns the term, the last index and the other replicas.
fn quiet(g: &Group) -> Option<(u64, u64, Vec<NodeId>)> {
    let m = g.raft.metrics().borrow_watched().clone();
    if m.state != ServerState::Leader {
        return None;
    }
    let last = m.last_log_index?;
    if m.last_applied.map(|l| l.index) != Some(last) || m.local_committed.map(|l| l.index) != Some(last) {
        return None;
    }
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return None;
    }
    let replication = m.replication.as_ref()?;
    let mut others = Vec::new();
    for (id, _) in membership.nodes() {
        if *id == g.node_id {
            continue;
        }
        match replication.get(id) {
            Some(Some(matched)) if matched.index == last => others.push(*id),
            _ => return None,
        }
    }
    Some((m.current_term, last, others))
}

/// Starts the node's sleeper: every [`SLEEP_CHECK_MS`], the data groups it leads that have
/// been idle for `idle_ms` are put to sleep, replicas first.
pub fn spawn_sleeper(node: Weak<RaftNode>, idle_ms: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Per led group: the activity counter last seen, and since when it is unchanged.
        let mut seen: BTreeMap<GroupId, (u64, Instant)> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(SLEEP_CHECK_MS)).await;
            let Some(n) = node.upgrade() else { return };
            let mut candidates = Vec::new();
            // Only awake groups: a sleeping one has nothing to do here.
            let groups = n.awake_data_groups();
            let awake: std::collections::HashSet<GroupId> = groups.iter().map(|g| g.id).collect();
            seen.retain(|id, _| awake.contains(id));
            for g in groups {
                if g.sleep.is_asleep() || !g.is_leader() {
                    seen.remove(&g.id);
                    continue;
                }
                let act = g.sleep.activity();
                let e = seen.entry(g.id).or_insert((act, Instant::now()));
                if e.0 != act {
                    *e = (act, Instant::now());
                    continue;
                }
                if e.1.elapsed() >= Duration::from_millis(idle_ms) && candidates.len() < SLEEP_GROUPS_PER_CHECK_MAX {
                    candidates.push((g, act));
                }
            }
            let n2 = n.clone();
            futures::stream::iter(candidates)
                .for_each_concurrent(SLEEP_GROUPS_IN_FLIGHT_MAX, |(g, act)| {
                    let n = n2.clone();
                    async move {
                        put_to_sleep(&n, &g, act).await;
                    }
                })
                .await;
        }
    })
}

/// Asks every replica of led group `g` to sleep, then sleeps if all agreed and nothing
/// happened since activity `act`.
async fn put_to_sleep(n: &RaftNode, g: &Arc<Group>, act: u64) {
    let Some((term, last_index, others)) = quiet(g) else { return };
    let req = SleepRequest { leader: n.id, term, last_index };
    let payload = network::encode(&req);
    let timeout = Duration::from_millis(n.settings().rpc_timeout_ms);
    let calls = others.into_iter().map(|peer| {
        let payload = payload.clone();
        async move {
            let Some(addr) = g.member_addr(peer) else { return false };
            match n.transport().call(peer, addr, g.id, MessageKind::Sleep, payload, timeout).await {
                Ok(reply) => network::decode_reply::<bool>("sleep", &reply).unwrap_or(false),
                Err(_) => false,
            }
        }
    });
    let answers = futures::future::join_all(calls).await;
    if answers.iter().all(|ok| *ok) && g.sleep.try_sleep(act) {
        tracing::debug!(shard = g.id, "shard asleep");
    }
}

/// Which other nodes answered the probe recently (shared by the probe and the Pre-Vote
/// handler).
#[derive(Debug)]
pub struct Liveness {
    last_ok: Mutex<BTreeMap<NodeId, Instant>>,
    /// `raft.election_timeout_min_ms`: a node silent this long is dead to the probe.
    dead_after: Duration,
    /// When this node started: [`PROBE_START_GRACE_MS`] counts from it.
    started: Instant,
}

impl Liveness {
    pub fn new(dead_after: Duration) -> Liveness {
        Liveness { last_ok: Mutex::new(BTreeMap::new()), dead_after, started: Instant::now() }
    }

    /// Whether node `id` answered a probe within the last `raft.election_timeout_min_ms`,
    /// or, having never answered, is within [`PROBE_START_GRACE_MS`] of this node's start.
    pub fn answers(&self, id: NodeId) -> bool {
        let last = self.last_ok.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
        match last {
            Some(t) => t.elapsed() < self.dead_after,
            None => self.in_start_grace(),
        }
    }

    /// Whether this node started less than [`PROBE_START_GRACE_MS`] ago.
    fn in_start_grace(&self) -> bool {
        self.started.elapsed() < Duration::from_millis(PROBE_START_GRACE_MS)
    }

    fn answered(&self, id: NodeId) {
        self.last_ok.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
    }
}

/// Refuses a Pre-Vote for group `g` while it sleeps here and its leader is alive: this node
/// leads it (then it wakes, and its heartbeats hold the other replicas; it goes on refusing
/// for an election timeout after it woke, while its quorum acknowledgements come back, as
/// several Pre-Votes held up by a broken link may arrive together), or its leader, not the
/// candidate, answers this node's probe. None: openraft answers (after a wake).
pub(crate) fn refuse_pre_vote(
    liveness: &Liveness,
    g: &Group,
    req: &openraft::raft::VoteRequest<crate::TypeConfig>,
) -> Option<openraft::raft::VoteResponse<crate::TypeConfig>> {
    use openraft::vote::RaftLeaderId;
    if !g.sleep.asleep_within(liveness.dead_after) {
        return None;
    }
    let candidate = *req.vote.leader_id().node_id();
    let m = g.raft.metrics().borrow_watched().clone();
    let refuse = if m.state == ServerState::Leader {
        g.sleep.wake("a Pre-Vote reached the leader");
        true
    } else if !g.sleep.is_asleep() {
        false
    } else {
        m.current_leader.is_some_and(|l| l != candidate && liveness.answers(l))
    };
    if !refuse || req.leadership_transfer {
        return None;
    }
    tracing::debug!(shard = g.id, candidate, "refused a Pre-Vote: the shard sleeps and its leader is alive");
    // No last log id: the candidate only uses it to hold back when a voter's log is longer.
    Some(openraft::raft::VoteResponse::new(m.vote, None, false))
}

/// The probe's view of one other node.
struct Peer {
    last_ok: Instant,
    boot: Option<u64>,
    dead: bool,
}

/// This process's boot id: answers probes, so that a peer sees a restart even when it
/// was quicker than a probe's timeout.
pub(crate) fn boot_id() -> u64 {
    static BOOT: OnceLock<u64> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
    })
}

/// Starts the node liveness probe (see the module's documentation), every `interval_ms`
/// (the Raft heartbeat interval); a node silent for `liveness.dead_after` is dead.
pub fn spawn_probe(node: Weak<RaftNode>, liveness: Arc<Liveness>, interval_ms: u64) -> tokio::task::JoinHandle<()> {
    let dead_after_ms = liveness.dead_after.as_millis() as u64;
    tokio::spawn(async move {
        let mut peers: BTreeMap<NodeId, Peer> = BTreeMap::new();
        let mut first = true;
        let started = Instant::now();
        let mut to_wake: std::collections::VecDeque<(Arc<Group>, &'static str)> = std::collections::VecDeque::new();
        let mut queued: std::collections::BTreeSet<GroupId> = std::collections::BTreeSet::new();
        // The shards this probe woke, with when, until they sleep again (or settle).
        let mut woken: Vec<(Arc<Group>, Instant)> = Vec::new();
        loop {
            let Some(n) = node.upgrade() else { return };
            let targets: Vec<(NodeId, String)> = n.meta().members().into_iter().filter(|(id, _)| *id != n.id).collect();
            let timeout = Duration::from_millis(dead_after_ms.max(interval_ms));
            let answers = futures::future::join_all(targets.iter().map(|(id, addr)| {
                let t = n.transport().clone();
                let (id, addr) = (*id, addr.clone());
                async move {
                    let r = t.call(id, addr, META_GROUP, MessageKind::Probe, Bytes::new(), timeout).await;
                    (id, r.ok().and_then(|b| network::decode_reply::<u64>("probe", &b).ok()))
                }
            }))
            .await;
            peers.retain(|id, _| targets.iter().any(|(t, _)| t == id));
            let mut back = Vec::new();
            let mut dead = Vec::new();
            for (id, boot) in answers {
                let p = peers.entry(id).or_insert(Peer { last_ok: started, boot: None, dead: false });
                match boot {
                    Some(b) => {
                        liveness.answered(id);
                        if p.dead || p.boot.is_some_and(|old| old != b) {
                            back.push(id);
                        }
                        *p = Peer { last_ok: Instant::now(), boot: Some(b), dead: false };
                    }
                    None => {
                        // One that never answered is presumed alive within the start grace.
                        let never = p.boot.is_none() && liveness.in_start_grace();
                        if !never && p.last_ok.elapsed() >= Duration::from_millis(dead_after_ms) {
                            p.dead = true;
                        }
                    }
                }
                if p.dead {
                    dead.push(id);
                }
            }
            // The groups opened asleep at start are looked at once every peer answered or
            // could have (a whole-cluster restart: the peers may not listen yet when this
            // node's first round runs, and their shards are not leaderless for that).
            let started_round =
                first && (targets.iter().all(|(id, _)| peers.get(id).is_some_and(|p| p.boot.is_some())) || !liveness.in_start_grace());
            if first && !started_round {
                drop(n);
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                continue;
            }
            // Most rounds change nothing: the groups are looked at only when a node was
            // found dead or back, and after the first round.
            let groups = if first || !dead.is_empty() || !back.is_empty() { n.data_groups() } else { Vec::new() };
            for g in groups {
                let leader = if first { g.last_known_leader() } else { g.status_leader() };
                let wake = if first {
                    // A group opened asleep at start: keep it asleep only while its leader
                    // is another node that answered.
                    g.sleep.is_asleep()
                        && match leader {
                            None => true,
                            Some(l) => l == n.id || peers.get(&l).is_none_or(|p| p.boot.is_none()),
                        }
                } else {
                    (g.sleep.is_asleep() && leader.is_some_and(|l| dead.contains(&l)))
                        || (!back.is_empty() && g.is_leader() && g.status().members.iter().any(|m| back.contains(&m.id)))
                };
                if wake && queued.insert(g.id) {
                    to_wake.push_back((g, if first { "the node started" } else { "the probe" }));
                }
            }
            // At most PROBE_WAKES_PER_ROUND_MAX per round, and PROBE_AWAKE_MAX awake:
            // thousands of shards electing at once (their leader's node died, or the whole
            // cluster restarted) would bury the node in votes and heartbeats.
            let settle = Duration::from_millis(PROBE_WAKE_SETTLE_MS);
            woken.retain(|(g, at)| !g.sleep.is_asleep() && at.elapsed() < settle);
            let room = PROBE_AWAKE_MAX.saturating_sub(woken.len()).min(PROBE_WAKES_PER_ROUND_MAX);
            for _ in 0..room {
                let Some((g, why)) = to_wake.pop_front() else { break };
                queued.remove(&g.id);
                g.sleep.wake(why);
                woken.push((g, Instant::now()));
            }
            if !to_wake.is_empty() {
                tracing::debug!(waiting = to_wake.len(), awake = woken.len(), "shards wait for the probe to wake them");
            }
            if !back.is_empty() {
                tracing::info!(nodes = ?back, "nodes answer again (or restarted): the shards led here that they hold are awake");
            }
            first = false;
            drop(n);
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
    })
}

/// Builds the reply to a probe: this process's boot id.
pub(crate) fn answer_probe() -> Bytes {
    network::encode_reply::<u64>(Ok(boot_id()))
}
