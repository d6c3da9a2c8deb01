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

#[tokio::test(flavor = "multi_thread")]
async fn node_joins_as_voter_with_the_same_data_and_leaves() {
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
            let status =
                cluster.admin_client(4).cluster_status(ClusterStatusRequest {}).await.expect("ClusterStatus via node 4").into_inner();
            assert_eq!(status.nodes.len(), 4, "node 4 sees four members: {status:?}");
            assert!(status.nodes.iter().all(|n| n.role != "unreachable"), "{status:?}");

            let removed = cluster
                .admin_client(4)
                .remove_node(RemoveNodeRequest { node_id: 4 })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("RemoveNode 4 via node 4: {e}")))
                .into_inner();
            assert_eq!(removed.voters, vec![1, 2, 3], "voters after RemoveNode");
            cluster.stop(4).await;

            // The remaining three keep serving writes, and agree.
            put_keys(&cluster, 1, "after/").await;
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_eq!(sums.len(), 3);
            assert_checksums_equal(&cluster, &sums);
            assert!(sums[0].key_count >= 2 * KEYS, "key count {} below {}", sums[0].key_count, 2 * KEYS);
            let status = cluster.admin_client(1).cluster_status(ClusterStatusRequest {}).await.expect("ClusterStatus").into_inner();
            let mut ids: Vec<u64> = status.nodes.iter().map(|n| n.node_id).collect();
            ids.sort();
            assert_eq!(ids, vec![1, 2, 3], "members after removal: {status:?}");
        })
        .await;
}
