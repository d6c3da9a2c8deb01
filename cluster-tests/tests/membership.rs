//! Membership changes through the admin API: a new node joins (learner, catch-up, voter)
//! and holds the same data; removing it leaves a 3-voter cluster that keeps serving.

use std::time::Duration;

use kho_cluster_tests::{assert_checksums_equal, retry_call, setup_kv, Cluster, ClusterOptions, RetryPolicy};
use kho_proto::v1::{AddNodeRequest, ClusterStatusRequest, PutRequest, RemoveNodeRequest};

/// Keys written before the new node joins, and again after it leaves.
const KEYS: u64 = 300;
/// Longest time for the whole test body, seconds.
const TEST_TIMEOUT_S: u64 = 180;

async fn put_keys(cluster: &Cluster, via: u64, prefix: &str) {
    let target = kho_cluster_tests::KvTarget::new(kho_cluster_tests::TENANT, kho_cluster_tests::TABLE, kho_cluster_tests::FAMILY);
    let client = cluster.data_client(via);
    for i in 0..KEYS {
        let req = PutRequest {
            tenant: target.tenant.clone(),
            table: target.table.clone(),
            key: format!("{prefix}{i:05}").into_bytes(),
            value: format!("value {i}").into_bytes(),
            family: target.family.clone(),
        };
        retry_call(&RetryPolicy::STEADY, |_| {
            let mut c = client.clone();
            let r = req.clone();
            async move { c.put(r).await }
        })
        .await
        .unwrap_or_else(|e| cluster.fail(format!("put {prefix}{i}: {e}")));
    }
}

/// A fourth node joins the meta group as a voter and gets the catalog, but no data shard
/// (the tenant's shard keeps its 3 replicas). Removing node 1 moves node 1's replica of the
/// shard to node 4 (added as a learner, caught up, promoted) before node 1 leaves; the
/// three remaining nodes then hold the same catalog and data, and keep serving writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_joining_node_gets_the_catalog_and_a_leaving_node_s_replicas_move() {
    let cluster = Cluster::start(3, ClusterOptions { spare_nodes: 1, ..Default::default() }).await;
    cluster
        .bounded("membership", Duration::from_secs(TEST_TIMEOUT_S), async {
            setup_kv(&cluster, 1).await;
            put_keys(&cluster, 2, "before/").await;

            // Node 4 starts with no initial members: it waits to be added.
            cluster.restart(4).await;
            let added = cluster
                .admin_client(3)
                .add_node(AddNodeRequest { node_id: 4, address: cluster.advertise_addr(4).to_string() })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("AddNode 4 via node 3: {e}")))
                .into_inner();
            assert_eq!(added.voters, vec![1, 2, 3, 4], "voters after AddNode");

            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_eq!(sums.len(), 4, "four nodes answer NodeChecksum");
            assert_checksums_equal(&cluster, &sums);
            let on4: Vec<u64> = sums[3].groups.iter().map(|g| g.group_id).collect();
            assert_eq!(on4, vec![0], "node 4 holds the meta group only: {}", kho_cluster_tests::describe_checksums(&sums));
            let status =
                cluster.admin_client(4).cluster_status(ClusterStatusRequest {}).await.expect("ClusterStatus via node 4").into_inner();
            assert_eq!(status.nodes.len(), 4, "node 4 sees four members: {status:?}");
            assert!(status.nodes.iter().all(|n| n.role != "unreachable"), "{status:?}");

            let removed = cluster
                .admin_client(4)
                .remove_node(RemoveNodeRequest { node_id: 1 })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("RemoveNode 1 via node 4: {e}")))
                .into_inner();
            assert_eq!(removed.voters, vec![2, 3, 4], "voters after RemoveNode");
            cluster.stop(1).await;

            // The remaining three keep serving writes, and agree: node 4 now holds the shard.
            put_keys(&cluster, 4, "after/").await;
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_eq!(sums.len(), 3);
            assert_checksums_equal(&cluster, &sums);
            for s in &sums {
                assert_eq!(
                    s.groups.len(),
                    2,
                    "node {} holds the meta group and the shard: {}",
                    s.node_id,
                    kho_cluster_tests::describe_checksums(&sums)
                );
            }
            assert!(sums[0].key_count >= 2 * KEYS, "key count {} below {}", sums[0].key_count, 2 * KEYS);
            let status = cluster.admin_client(2).cluster_status(ClusterStatusRequest {}).await.expect("ClusterStatus").into_inner();
            let mut ids: Vec<u64> = status.nodes.iter().map(|n| n.node_id).collect();
            ids.sort();
            assert_eq!(ids, vec![2, 3, 4], "members after removal: {status:?}");
            let shard = status.nodes.iter().find(|n| n.node_id == 4).and_then(|n| n.shards.first().cloned());
            let shard = shard.unwrap_or_else(|| cluster.fail(format!("node 4 reports no shard: {status:?}")));
            let mut voters = shard.voters.clone();
            voters.sort();
            assert_eq!(voters, vec![2, 3, 4], "the shard's voters after the move: {shard:?}");
        })
        .await;
}

/// The meta group keeps at most 5 voters: a sixth node joins it as a learner (it has the
/// catalog and the shard map like every node, and takes shard replicas), and when a voter
/// leaves, the learner is promoted first, so the group keeps 5 voters.
#[tokio::test(flavor = "multi_thread")]
async fn a_sixth_node_follows_the_meta_group_as_a_learner_until_a_voter_leaves() {
    let cluster = Cluster::start(5, ClusterOptions { spare_nodes: 1, ..Default::default() }).await;
    cluster
        .bounded("meta learners", Duration::from_secs(TEST_TIMEOUT_S), async {
            setup_kv(&cluster, 1).await;
            put_keys(&cluster, 2, "before/").await;
            cluster.restart(6).await;
            let add = AddNodeRequest { node_id: 6, address: cluster.advertise_addr(6).to_string() };
            let added =
                cluster.admin_client(3).add_node(add).await.unwrap_or_else(|e| cluster.fail(format!("AddNode 6: {e}"))).into_inner();
            assert_eq!(added.voters, vec![1, 2, 3, 4, 5], "the meta group keeps 5 voters");
            let status =
                cluster.admin_client(6).cluster_status(ClusterStatusRequest {}).await.expect("ClusterStatus via node 6").into_inner();
            let six =
                status.nodes.iter().find(|n| n.node_id == 6).unwrap_or_else(|| cluster.fail(format!("node 6 not listed: {status:?}")));
            assert_eq!(six.role, "learner", "{status:?}");
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_eq!(sums.len(), 6, "six nodes answer NodeChecksum");
            assert_checksums_equal(&cluster, &sums);

            let removed = cluster
                .admin_client(6)
                .remove_node(RemoveNodeRequest { node_id: 2 })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("RemoveNode 2 via node 6: {e}")))
                .into_inner();
            assert_eq!(removed.voters, vec![1, 3, 4, 5, 6], "the learner took the leaving voter's place");
            cluster.stop(2).await;
            put_keys(&cluster, 6, "after/").await;
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_eq!(sums.len(), 5);
            assert_checksums_equal(&cluster, &sums);
        })
        .await;
}
