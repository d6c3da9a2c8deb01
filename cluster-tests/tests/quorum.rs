//! Without a quorum the cluster answers UNAVAILABLE (never hangs, never claims success);
//! once the quorum is back, it serves again.

use std::time::{Duration, Instant};

use kho_cluster_tests::{setup_kv, Cluster, ClusterOptions, FAMILY, TABLE, TENANT};
use kho_proto::v1::{GetRequest, PutRequest};
use tonic::Code;

/// Longest time one request may take without a quorum: the server's
/// `raft.proposal_timeout_ms` (5 s by default) plus forwarding, seconds.
const NO_QUORUM_ANSWER_S: u64 = 20;

fn put(key: &str) -> PutRequest {
    PutRequest { tenant: TENANT.into(), table: TABLE.into(), key: key.as_bytes().to_vec(), value: b"v".to_vec(), family: FAMILY.into() }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_quorum_requests_get_unavailable_then_recover() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded("quorum", Duration::from_secs(180), async {
            setup_kv(&cluster, 1).await;
            let leader = cluster.leader().await;
            // Keep the leader, stop the two others: the leader can no longer commit or
            // confirm its leadership.
            let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
            for id in &others {
                cluster.stop(*id).await;
            }
            let mut client = cluster.data_client(leader);
            let started = Instant::now();
            let write = tokio::time::timeout(Duration::from_secs(NO_QUORUM_ANSWER_S), client.put(put("no-quorum"))).await;
            match write {
                Err(_) => cluster.fail(format!("a write without quorum got no answer within {NO_QUORUM_ANSWER_S} s")),
                Ok(Ok(r)) => cluster.fail(format!("a write without quorum was acknowledged: {r:?}")),
                Ok(Err(s)) => assert_eq!(s.code(), Code::Unavailable, "write without quorum: {s:?}"),
            }
            println!("write without quorum answered UNAVAILABLE after {:?}", started.elapsed());
            let get =
                GetRequest { tenant: TENANT.into(), table: TABLE.into(), key: b"k".to_vec(), family: FAMILY.into(), ..Default::default() };
            match tokio::time::timeout(Duration::from_secs(NO_QUORUM_ANSWER_S), client.get(get)).await {
                Err(_) => cluster.fail(format!("a read without quorum got no answer within {NO_QUORUM_ANSWER_S} s")),
                Ok(Ok(r)) => cluster.fail(format!("a linearizable read without quorum was served: {r:?}")),
                Ok(Err(s)) => assert_eq!(s.code(), Code::Unavailable, "read without quorum: {s:?}"),
            }

            for id in &others {
                cluster.restart(*id).await;
            }
            cluster.wait_ready().await;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let leader = cluster.leader().await;
                match cluster.data_client(leader).put(put("after-recovery")).await {
                    Ok(_) => break,
                    Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(s) => cluster.fail(format!("write after the quorum returned: {s:?}")),
                }
            }
        })
        .await;
}

/// Pre-Vote: a follower that stops hearing the leader (the leader's link to it drops
/// everything, its own link to the others still works) does not raise its term and depose
/// the healthy leader, neither while cut off nor when the link heals: every group the
/// leader led keeps its leader and term.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_cut_off_one_way_does_not_depose_the_leader() {
    let cluster = Cluster::start(3, ClusterOptions { network_faults: true, ..ClusterOptions::default() }).await;
    cluster
        .bounded("pre-vote", Duration::from_secs(120), async {
            setup_kv(&cluster, 1).await;
            let leader = cluster.leader().await;
            let follower = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
            // Every group the leader leads, with its term, as the leader reports them.
            let led = |s: &kho_proto::v1::NodeStatus| {
                let mut groups = vec![(0u64, s.term)];
                groups.extend(s.shards.iter().filter(|g| g.role == "leader").map(|g| (g.shard_id, g.term)));
                groups
            };
            let before = cluster.node_status(leader).await.unwrap_or_else(|e| cluster.fail(format!("NodeStatus: {e:?}")));
            assert_eq!(before.role, "leader");
            let before = led(&before);
            cluster.network().set(leader, follower, kho_cluster_tests::netproxy::LinkMode::Drop);
            // Several election timeouts (500–1000 ms) without a word from the leader.
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.network().heal();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = cluster.node_status(leader).await.unwrap_or_else(|e| cluster.fail(format!("NodeStatus: {e:?}")));
            assert_eq!(after.role, "leader", "node {leader} was deposed: {after:?}");
            let after = led(&after);
            assert_eq!(after, before, "the groups node {leader} led, with their terms, before and after node {follower} was cut off");
        })
        .await;
}
