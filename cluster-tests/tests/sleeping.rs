//! Sleeping shards (docs/SHARDING.md, "Sleeping shards"): an idle data shard stops its
//! heartbeats and election timers on every replica; a write wakes it without an election;
//! its leader's death still elects a new leader; a node restart or a link broken one way
//! does not move the leadership of shards whose leader is alive.

use std::time::{Duration, Instant};

use kho_cluster_tests::netproxy::LinkMode;
use kho_cluster_tests::{setup_kv, Cluster, ClusterOptions, FAMILY, TABLE, TENANT};
use kho_proto::v1::PutRequest;
use tonic::Code;

/// `raft.sleep_after_idle_ms` of these clusters: short, so that the tests wait little.
const SLEEP_AFTER_IDLE_MS: u64 = 500;
/// Longest wait for every replica of every data shard to sleep, milliseconds: the idle
/// time, a sleeper round (250 ms) and the `SLEEP` round trips, with room for a slow machine.
const ALL_ASLEEP_WAIT_MS: u64 = 20_000;
/// Longest time a write to a sleeping shard may take through a follower: it wakes the
/// shard with its own append, with no election; generous for a loaded test machine.
const WAKING_WRITE_MAX_MS: u64 = 3_000;
/// Longest time until a write succeeds after a sleeping shard's leader was killed: the
/// probe's verdict (the election timeout, 500 ms), an election, retries.
const FAILOVER_WRITE_MAX_MS: u64 = 15_000;

fn opts() -> ClusterOptions {
    ClusterOptions { sleep_after_idle_ms: Some(SLEEP_AFTER_IDLE_MS), ..ClusterOptions::default() }
}

fn put(key: &str) -> PutRequest {
    PutRequest { tenant: TENANT.into(), table: TABLE.into(), key: key.as_bytes().to_vec(), value: b"v".to_vec(), family: FAMILY.into() }
}

/// Every data shard of the running nodes, with its leader and term, as its leader reports it.
async fn led_shards(cluster: &Cluster) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for id in cluster.running_ids() {
        let s = cluster.node_status(id).await.unwrap_or_else(|e| cluster.fail(format!("NodeStatus of node {id}: {e:?}")));
        out.extend(s.shards.iter().filter(|g| g.role == "leader").map(|g| (g.shard_id, id, g.term)));
    }
    out.sort();
    out
}

/// Waits until every replica of every data shard on the running nodes sleeps.
async fn wait_all_asleep(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_millis(ALL_ASLEEP_WAIT_MS);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut awake = Vec::new();
        let mut replicas = 0;
        for id in cluster.running_ids() {
            match cluster.node_status(id).await {
                Ok(s) => {
                    replicas += s.shards.len();
                    awake.extend(s.shards.iter().filter(|g| !g.asleep).map(|g| (id, g.shard_id, g.role.clone())));
                }
                Err(e) => awake.push((id, 0, format!("unreachable: {e:?}"))),
            }
        }
        if awake.is_empty() && replicas > 0 {
            return;
        }
        last = format!("{replicas} replicas, awake (node, shard, role): {awake:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.fail(format!("the data shards did not all sleep within {ALL_ASLEEP_WAIT_MS} ms: {last}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_shard_sleeps_and_a_write_wakes_it_without_an_election() {
    let cluster = Cluster::start(3, opts()).await;
    cluster
        .bounded("sleep and wake", Duration::from_secs(120), async {
            setup_kv(&cluster, 1).await;
            wait_all_asleep(&cluster).await;
            let before = led_shards(&cluster).await;
            assert_eq!(before.len(), 1, "one data shard with one leader: {before:?}");
            let (shard, leader, term) = before[0];
            let follower = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
            let started = Instant::now();
            cluster
                .data_client(follower)
                .put(put("wakes-the-shard"))
                .await
                .unwrap_or_else(|e| cluster.fail(format!("a write to sleeping shard {shard} via node {follower}: {e:?}")));
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(WAKING_WRITE_MAX_MS),
                "a write to a sleeping shard took {took:?} (at most {WAKING_WRITE_MAX_MS} ms)"
            );
            let after = led_shards(&cluster).await;
            assert_eq!(after, vec![(shard, leader, term)], "the write elected nobody: leader and term unchanged");
            // Awake now, it sleeps again once idle.
            wait_all_asleep(&cluster).await;
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_shard_whose_leader_dies_elects_a_new_one() {
    let cluster = Cluster::start(3, opts()).await;
    cluster
        .bounded("failover while asleep", Duration::from_secs(120), async {
            setup_kv(&cluster, 1).await;
            wait_all_asleep(&cluster).await;
            let (shard, leader, _) = led_shards(&cluster).await[0];
            cluster.kill(leader);
            let via = cluster.ids().into_iter().find(|id| *id != leader).expect("another node");
            let started = Instant::now();
            loop {
                match cluster.data_client(via).put(put("after-the-leader-died")).await {
                    Ok(_) => break,
                    Err(s)
                        if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
                            && started.elapsed() < Duration::from_millis(FAILOVER_WRITE_MAX_MS) =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(s) => cluster
                        .fail(format!("no write to shard {shard} within {FAILOVER_WRITE_MAX_MS} ms of its sleeping leader's death: {s:?}")),
                }
            }
            let after = led_shards(&cluster).await;
            assert!(after.iter().any(|(s, l, _)| *s == shard && *l != leader), "shard {shard} has a new leader: {after:?}");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_does_not_move_the_leaders_of_sleeping_shards() {
    let cluster = Cluster::start(3, opts()).await;
    cluster
        .bounded("restart while asleep", Duration::from_secs(150), async {
            setup_kv(&cluster, 1).await;
            wait_all_asleep(&cluster).await;
            let before = led_shards(&cluster).await;
            let (_, leader, _) = before[0];
            let follower = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
            cluster.stop(follower).await;
            cluster.restart(follower).await;
            cluster.wait_ready().await;
            // Several election timeouts (500-1000 ms) after the restart.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(led_shards(&cluster).await, before, "leaders and terms after node {follower} restarted");
            wait_all_asleep(&cluster).await;
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_cut_one_way_does_not_move_the_leader_of_a_sleeping_shard() {
    let cluster = Cluster::start(3, ClusterOptions { network_faults: true, ..opts() }).await;
    cluster
        .bounded("one-way cut while asleep", Duration::from_secs(150), async {
            setup_kv(&cluster, 1).await;
            for (from_leader, what) in [(true, "leader to follower"), (false, "follower to leader")] {
                wait_all_asleep(&cluster).await;
                let before = led_shards(&cluster).await;
                let (_, leader, _) = before[0];
                let follower = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
                let (from, to) = if from_leader { (leader, follower) } else { (follower, leader) };
                cluster.network().set(from, to, LinkMode::Drop);
                // Several election timeouts, and the probe's verdict that the other end is gone.
                tokio::time::sleep(Duration::from_secs(4)).await;
                cluster.network().heal();
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert_eq!(led_shards(&cluster).await, before, "leaders and terms after the link {what} was cut and healed");
            }
        })
        .await;
}
