//! The nemesis: faults injected into a running cluster on a random schedule, each one
//! recorded with its time so that a run can be read and replayed.
//!
//! A schedule alternates a quiet period and a fault: pick a fault of the run's families,
//! inject it, hold it, heal it. Every random choice comes from the run's seed; the timing of
//! the servers does not, so a seed replays the schedule, not the interleaving.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use kho_proto::v1::{AddNodeRequest, ListShardsRequest, MergeShardRequest, RemoveNodeRequest, ShardInfo, SplitShardRequest};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::retry::{retry_call, RetryPolicy};
use crate::workload::Targets;
use crate::Cluster;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL one random member; restart it when healed.
    KillOne,
    /// SIGKILL the leader; restart it when healed.
    KillLeader,
    /// SIGKILL a majority of the members at once; restart them when healed.
    KillMajority,
    /// SIGSTOP one random member; SIGCONT when healed.
    PauseOne,
    /// SIGSTOP the leader: it wakes up (SIGCONT) still believing it leads.
    PauseLeader,
    /// Cut every link between the leader and the other members.
    IsolateLeader,
    /// Split the members into a random minority and majority that cannot talk.
    SplitMinority,
    /// Two halves that cannot talk, joined by one node that talks to both.
    Bridge,
    /// Slow every link between members (a congested WAN), 50–300 ms per chunk.
    SlowLinks,
    /// Remove a random member (the leader included) with RemoveNode, stop it, and add a
    /// fresh node with a new id and an empty data directory in its place.
    ReplaceNode,
    /// Split a random shard of the workload's tenant at the middle of its keys
    /// (`SplitShard` through a random member).
    SplitShard,
    /// Merge a random shard of the workload's tenant with its right-hand neighbour
    /// (`MergeShard` through a random member).
    MergeShard,
    /// Ask for a split of a random shard and SIGKILL that shard's leader right after (the
    /// split may or may not be applied); restart it when healed.
    SplitKillLeader,
    /// Partition a random minority from the majority, then split or merge a random shard
    /// through a node of the majority.
    ReshardDuringPartition,
}

/// Longest wait for one split or merge the nemesis asks for, milliseconds (it may be
/// refused or time out under faults: logged, not a failure).
const RESHARD_TIMEOUT_MS: u64 = 15_000;

/// A named group of faults; a test runs one family, a soak all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultFamily {
    Kill,
    Pause,
    Partition,
    Membership,
    /// Splits and merges of the workload's shards, alone and during kills and partitions.
    Reshard,
}

impl FaultFamily {
    pub const ALL: [FaultFamily; 5] =
        [FaultFamily::Kill, FaultFamily::Pause, FaultFamily::Partition, FaultFamily::Membership, FaultFamily::Reshard];

    pub fn faults(self) -> &'static [Fault] {
        match self {
            FaultFamily::Kill => &[Fault::KillOne, Fault::KillLeader, Fault::KillMajority],
            FaultFamily::Pause => &[Fault::PauseOne, Fault::PauseLeader],
            FaultFamily::Partition => &[Fault::IsolateLeader, Fault::SplitMinority, Fault::Bridge, Fault::SlowLinks],
            FaultFamily::Membership => &[Fault::ReplaceNode],
            FaultFamily::Reshard => &[
                Fault::SplitShard,
                Fault::SplitShard,
                Fault::MergeShard,
                Fault::SplitKillLeader,
                Fault::ReshardDuringPartition,
                Fault::KillOne,
            ],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultFamily::Kill => "kill",
            FaultFamily::Pause => "pause",
            FaultFamily::Partition => "partition",
            FaultFamily::Membership => "membership",
            FaultFamily::Reshard => "reshard",
        }
    }

    pub fn parse(name: &str) -> Option<FaultFamily> {
        FaultFamily::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Timing of a schedule, milliseconds; each period is drawn uniformly from its range.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleTiming {
    pub quiet_ms: (u64, u64),
    pub fault_ms: (u64, u64),
}

impl Default for ScheduleTiming {
    fn default() -> Self {
        // Faults outlast the test clusters' election timeout (500–1000 ms) so that
        // elections happen during them; quiet periods let the cluster recover and clients
        // make progress between faults.
        ScheduleTiming { quiet_ms: (800, 2_000), fault_ms: (1_200, 3_500) }
    }
}

/// One line of the fault schedule.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    pub what: String,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8} ms  {}", self.at_ms, self.what)
    }
}

/// A split's or merge's answer, for the schedule.
fn describe_answer<T>(answer: Option<Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>>) -> String {
    match answer {
        None => "its task failed".to_string(),
        Some(Err(_)) => format!("no answer within {RESHARD_TIMEOUT_MS} ms"),
        Some(Ok(Ok(_))) => "done".to_string(),
        Some(Ok(Err(s))) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// What to undo when a fault heals.
pub enum Active {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Network,
    Nothing,
}

/// Injects faults into `cluster` and keeps the schedule.
pub struct Nemesis<'a> {
    cluster: &'a Cluster,
    targets: Targets,
    rng: StdRng,
    start: Instant,
    events: Vec<FaultEvent>,
    injected: BTreeMap<Fault, u64>,
    /// Spare node ids not used yet, for `ReplaceNode`.
    spares: Vec<u64>,
}

impl<'a> Nemesis<'a> {
    /// `start` is the instant the run's history counts from, so that fault times and
    /// operation times share one clock.
    pub fn new(cluster: &'a Cluster, targets: Targets, seed: u64, start: Instant) -> Nemesis<'a> {
        let members = targets.members();
        let spares = cluster.ids().into_iter().filter(|id| !members.contains(id)).collect();
        Nemesis {
            cluster,
            targets,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            start,
            events: Vec::new(),
            injected: BTreeMap::new(),
            spares,
        }
    }

    fn log(&mut self, what: String) {
        let event = FaultEvent { at_ms: self.start.elapsed().as_millis() as u64, what };
        println!("nemesis: {event}");
        self.events.push(event);
    }

    /// The schedule so far.
    pub fn events(&self) -> &[FaultEvent] {
        &self.events
    }

    /// Faults injected, by kind.
    pub fn injected(&self) -> &BTreeMap<Fault, u64> {
        &self.injected
    }

    pub fn describe_injected(&self) -> String {
        let total: u64 = self.injected.values().sum();
        let parts: Vec<String> = self.injected.iter().map(|(f, n)| format!("{f:?} {n}")).collect();
        format!("{total} faults ({})", parts.join(", "))
    }

    /// Runs the schedule for `duration`: quiet, fault, heal, and again. Every fault is
    /// healed when it returns.
    pub async fn run(&mut self, faults: &[Fault], duration: Duration, timing: ScheduleTiming) {
        assert!(!faults.is_empty(), "a schedule needs at least one fault");
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let quiet = self.rng.random_range(timing.quiet_ms.0..=timing.quiet_ms.1);
            tokio::time::sleep(Duration::from_millis(quiet)).await;
            if Instant::now() >= end {
                break;
            }
            let fault = *faults.choose(&mut self.rng).expect("faults is not empty");
            let hold = self.rng.random_range(timing.fault_ms.0..=timing.fault_ms.1);
            let active = self.inject(fault).await;
            tokio::time::sleep(Duration::from_millis(hold)).await;
            self.heal(active).await;
        }
    }

    /// Injects one fault.
    pub async fn inject(&mut self, fault: Fault) -> Active {
        let members = self.targets.members();
        *self.injected.entry(fault).or_default() += 1;
        match fault {
            Fault::KillOne => {
                let id = *members.choose(&mut self.rng).expect("members");
                self.kill(vec![id], "a random member")
            }
            Fault::KillLeader => {
                let leader = self.cluster.leader().await;
                self.kill(vec![leader], "the leader")
            }
            Fault::KillMajority => {
                let mut ids = members.clone();
                ids.shuffle(&mut self.rng);
                ids.truncate(members.len() / 2 + 1);
                ids.sort();
                self.kill(ids, "a majority")
            }
            Fault::PauseOne => {
                let id = *members.choose(&mut self.rng).expect("members");
                self.pause(id, "a random member")
            }
            Fault::PauseLeader => {
                let leader = self.cluster.leader().await;
                self.pause(leader, "the leader")
            }
            Fault::IsolateLeader => {
                let leader = self.cluster.leader().await;
                self.cluster.network().isolate(leader, &members);
                self.log(format!("isolate the leader {leader}: {}", self.cluster.network().describe()));
                Active::Network
            }
            Fault::SplitMinority => {
                let mut ids = members.clone();
                ids.shuffle(&mut self.rng);
                let minority_len = self.rng.random_range(1..=(members.len() - 1) / 2);
                let (minority, majority) = ids.split_at(minority_len);
                self.cluster.network().partition(minority, majority);
                self.log(format!("partition minority {minority:?} | majority {majority:?}"));
                Active::Network
            }
            Fault::Bridge => {
                let mut ids = members.clone();
                ids.shuffle(&mut self.rng);
                let bridge = ids[ids.len() / 2];
                let left: Vec<u64> = ids[..ids.len() / 2].to_vec();
                let right: Vec<u64> = ids[ids.len() / 2 + 1..].to_vec();
                self.cluster.network().partition(&left, &right);
                self.log(format!("bridge: {left:?} | {right:?} cut, node {bridge} talks to both"));
                Active::Network
            }
            Fault::SlowLinks => {
                let delay = Duration::from_millis(self.rng.random_range(50..=300));
                for &a in &members {
                    for &b in &members {
                        if a != b {
                            self.cluster.network().set(a, b, crate::netproxy::LinkMode::Delay(delay));
                        }
                    }
                }
                self.log(format!("slow every link between members by {} ms", delay.as_millis()));
                Active::Network
            }
            Fault::ReplaceNode => {
                self.replace_node(&members).await;
                Active::Nothing
            }
            Fault::SplitShard => {
                let via = *members.choose(&mut self.rng).expect("members");
                self.reshard(via, true).await;
                Active::Nothing
            }
            Fault::MergeShard => {
                let via = *members.choose(&mut self.rng).expect("members");
                self.reshard(via, false).await;
                Active::Nothing
            }
            Fault::SplitKillLeader => {
                let via = *members.choose(&mut self.rng).expect("members");
                let Some(shard) = self.pick_shard(via, true).await else {
                    self.log("split and kill: no shard listed, skipped".to_string());
                    return Active::Nothing;
                };
                let leader = if shard.leader_id != 0 && members.contains(&shard.leader_id) { shard.leader_id } else { via };
                let mut admin = self.cluster.admin_client(via);
                let id = shard.id;
                // The split runs on while its shard's leader is killed: its outcome is
                // whatever the cluster decides, checked only through the workload.
                let split = tokio::spawn(async move {
                    let asked = admin.split_shard(SplitShardRequest { shard_id: id, at: String::new() });
                    tokio::time::timeout(Duration::from_millis(RESHARD_TIMEOUT_MS), asked).await
                });
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..=30))).await;
                let active = self.kill(vec![leader], &format!("shard {id}'s leader right after asking to split it via node {via}"));
                let answer = split.await;
                self.log(format!("split of shard {id} (its leader killed): {}", describe_answer(answer.ok())));
                active
            }
            Fault::ReshardDuringPartition => {
                let mut ids = members.clone();
                ids.shuffle(&mut self.rng);
                let minority_len = self.rng.random_range(1..=(members.len() - 1) / 2);
                let (minority, majority) = ids.split_at(minority_len);
                self.cluster.network().partition(minority, majority);
                self.log(format!("partition minority {minority:?} | majority {majority:?}"));
                let via = majority[0];
                let split = self.rng.random_bool(0.5);
                self.reshard(via, split).await;
                Active::Network
            }
        }
    }

    /// A random shard of the workload's tenant as node `via` lists it (for a merge: not the
    /// tenant's last one); None when it does not answer.
    async fn pick_shard(&mut self, via: u64, split: bool) -> Option<ShardInfo> {
        let mut admin = self.cluster.admin_client(via);
        let listed = admin.list_shards(ListShardsRequest { tenant: crate::setup::TENANT.to_string() });
        let shards = tokio::time::timeout(Duration::from_secs(5), listed).await.ok()?.ok()?.into_inner().shards;
        let candidates = if split { &shards[..] } else { &shards[..shards.len().saturating_sub(1)] };
        candidates.choose(&mut self.rng).cloned()
    }

    /// Splits (at its middle) or merges (with its right-hand neighbour) a random shard of
    /// the workload's tenant through node `via`, and logs the answer.
    async fn reshard(&mut self, via: u64, split: bool) {
        // A tenant of one shard has nothing to merge: it is split instead.
        let (split, shard) = match self.pick_shard(via, split).await {
            Some(shard) => (split, Some(shard)),
            None if !split => (true, self.pick_shard(via, true).await),
            None => (split, None),
        };
        let what = if split { "split" } else { "merge" };
        let Some(shard) = shard else {
            self.log(format!("{what}: no shard listed via node {via}, skipped"));
            return;
        };
        let mut admin = self.cluster.admin_client(via);
        let id = shard.id;
        let answer = if split {
            let asked = admin.split_shard(SplitShardRequest { shard_id: id, at: String::new() });
            tokio::time::timeout(Duration::from_millis(RESHARD_TIMEOUT_MS), asked).await.map(|r| r.map(|_| ()))
        } else {
            let asked = admin.merge_shard(MergeShardRequest { shard_id: id });
            tokio::time::timeout(Duration::from_millis(RESHARD_TIMEOUT_MS), asked).await.map(|r| r.map(|_| ()))
        };
        self.log(format!(
            "{what} shard {id} via node {via}: {}",
            describe_answer(Some(answer.map(|r| r.map(|_| tonic::Response::new(())))))
        ));
    }

    fn kill(&mut self, ids: Vec<u64>, which: &str) -> Active {
        for &id in &ids {
            self.cluster.kill(id);
        }
        self.log(format!("SIGKILL {which}: {ids:?}"));
        Active::Killed(ids)
    }

    fn pause(&mut self, id: u64, which: &str) -> Active {
        self.cluster.pause(id);
        self.log(format!("SIGSTOP {which}: {id}"));
        Active::Paused(vec![id])
    }

    /// Undoes a fault.
    pub async fn heal(&mut self, active: Active) {
        match active {
            Active::Killed(ids) => {
                for &id in &ids {
                    self.cluster.restart(id).await;
                }
                self.log(format!("restarted {ids:?}"));
            }
            Active::Paused(ids) => {
                for &id in &ids {
                    self.cluster.resume(id);
                }
                self.log(format!("SIGCONT {ids:?}"));
            }
            Active::Network => {
                self.cluster.network().heal();
                self.log("heal the network".to_string());
            }
            Active::Nothing => {}
        }
    }

    /// Removes a random member and adds a fresh spare node in its place, while the
    /// workload runs. Skipped (and logged) when no spare is left.
    async fn replace_node(&mut self, members: &[u64]) {
        let Some(new) = (!self.spares.is_empty()).then(|| self.spares.remove(0)) else {
            self.log("replace node: no spare node left, skipped".to_string());
            return;
        };
        let victim = *members.choose(&mut self.rng).expect("members");
        let via = *members.iter().find(|&&id| id != victim).expect("at least two members");
        self.log(format!("replace node {victim} by new node {new}: RemoveNode {victim} via {via}"));
        let admin = self.cluster.admin_client(via);
        let removed = retry_call(&RetryPolicy::THROUGH_OUTAGE, |_| {
            let mut a = admin.clone();
            async move { a.remove_node(RemoveNodeRequest { node_id: victim }).await }
        })
        .await;
        // A retry of a removal that was applied but not answered finds the node gone
        // (NOT_FOUND); so does a retried AddNode find the node there.
        let voters = match removed {
            Ok(r) => r.voters,
            Err(e) => match self.voters_via(via).await {
                Some(voters) if !voters.contains(&victim) => voters,
                _ => self.cluster.fail(format!("RemoveNode {victim} via {via}: {e}")),
            },
        };
        let remaining: Vec<u64> = members.iter().copied().filter(|&id| id != victim).collect();
        // Clients stop sending to the removed node before it goes away.
        self.targets.set_members(remaining.clone());
        self.cluster.stop(victim).await;
        self.log(format!("node {victim} removed (voters {voters:?}) and stopped"));

        self.cluster.restart(new).await;
        let address = self.cluster.advertise_addr(new).to_string();
        let added = retry_call(&RetryPolicy::THROUGH_OUTAGE, |_| {
            let mut a = admin.clone();
            let address = address.clone();
            async move { a.add_node(AddNodeRequest { node_id: new, address }).await }
        })
        .await;
        let voters = match added {
            Ok(r) => r.voters,
            Err(e) => match self.voters_via(via).await {
                Some(voters) if voters.contains(&new) => voters,
                _ => self.cluster.fail(format!("AddNode {new} via {via}: {e}")),
            },
        };
        let mut now = remaining;
        now.push(new);
        self.targets.set_members(now);
        self.log(format!("node {new} added (voters {voters:?})"));
    }

    /// The members (voters, and a learner still catching up) as node `via`'s ClusterStatus
    /// lists them, or None if it does not answer.
    async fn voters_via(&self, via: u64) -> Option<Vec<u64>> {
        let status = self.cluster.cluster_status(via).await.ok()?;
        Some(status.nodes.iter().filter(|n| n.role != "learner").map(|n| n.node_id).collect())
    }

    /// Heals everything: restarts nodes that are down (members only), continues paused
    /// ones, heals the network, and waits for a leader every member knows.
    pub async fn heal_all(&mut self) -> u64 {
        for id in self.cluster.paused_ids() {
            self.cluster.resume(id);
        }
        if let Some(net) = self.cluster.network_if_any() {
            net.heal();
        }
        for id in self.targets.members() {
            if !self.cluster.is_running(id) {
                self.cluster.restart(id).await;
            }
        }
        let leader = self.cluster.wait_ready().await;
        self.log(format!("healed everything; leader {leader}"));
        leader
    }
}
