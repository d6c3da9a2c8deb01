//! Data shards on a real 3-node cluster (docs/SHARDING.md): every tenant gets a shard of its
//! own, a Raft group on 3 replicas covering the tenant's key range; writes through any node
//! land in the right shard; `kho shard list --json` shows the shards with their ranges and
//! leaders; the replicas of each shard agree; a dropped table's cells are cleared from its
//! shard.

use std::time::{Duration, Instant};

use kho_cluster_tests::{
    assert_checksums_equal, create_table, create_tenant, kho_binary, retry_call, Cluster, ClusterOptions, KvTarget, RetryPolicy,
};
use kho_proto::v1::{DropTableRequest, GetRequest, PutRequest, ScanRequest};

/// Keys written to each tenant, count.
const KEYS: usize = 60;
/// Longest wait for a dropped table's cells to be cleared from its shard, seconds.
const CLEAR_WAIT_S: u64 = 30;

async fn put_all(cluster: &Cluster, target: &KvTarget, prefix: &str) {
    for i in 0..KEYS {
        let via = (i % 3) as u64 + 1;
        let req = PutRequest {
            tenant: target.tenant.clone(),
            table: target.table.clone(),
            key: format!("{prefix}{i:04}").into_bytes(),
            value: format!("{} {i}", target.tenant).into_bytes(),
            family: target.family.clone(),
        };
        // Retried on UNAVAILABLE: a new shard's first elections may move its leader.
        let client = cluster.data_client(via);
        let resp = retry_call(&RetryPolicy::STEADY, |_| {
            let mut c = client.clone();
            let r = req.clone();
            async move { c.put(r).await }
        })
        .await
        .unwrap_or_else(|e| cluster.fail(format!("put {}/{prefix}{i} via node {via}: {e}", target.tenant)));
        let header = resp.header.unwrap_or_else(|| cluster.fail("a Put answered without a header"));
        assert!(header.shard_id >= 1 && header.revision >= 1, "write header {header:?}");
    }
}

/// `kho shard list --json` through node `via`, parsed.
fn shard_list(cluster: &Cluster, via: u64, tenant: Option<&str>) -> serde_json::Value {
    let mut cmd = std::process::Command::new(kho_binary());
    cmd.args(["shard", "list", "--json", "--endpoints", cluster.addr(via)]);
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.output().unwrap_or_else(|e| cluster.fail(format!("run kho shard list: {e}")));
    assert!(out.status.success(), "kho shard list: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| cluster.fail(format!("kho shard list --json is not JSON ({e})")))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_gets_its_own_replicated_shard_and_a_dropped_table_is_cleared() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded("sharding", Duration::from_secs(240), async {
            let mut admin = cluster.admin_client(1);
            let tenants = ["bhxh", "dat_dai"];
            for t in tenants {
                create_tenant(&mut admin, t).await.unwrap_or_else(|e| cluster.fail(format!("create tenant {t}: {e}")));
                create_table(&mut admin, t, "kv", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table {t}/kv: {e}")));
            }
            create_table(&mut admin, "bhxh", "tmp", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table bhxh/tmp: {e}")));
            for t in tenants {
                put_all(&cluster, &KvTarget::new(t, "kv", "f"), "k/").await;
            }
            put_all(&cluster, &KvTarget::new("bhxh", "tmp", "f"), "tmp/").await;

            // Two shards, one per tenant, each covering exactly its tenant's range, on the
            // three nodes, each with a leader, at epoch (1, 1).
            let list = shard_list(&cluster, 2, None);
            let shards = list["shards"].as_array().unwrap_or_else(|| cluster.fail(format!("no `shards` array: {list}")));
            assert_eq!(shards.len(), 2, "{list}");
            let mut ids = Vec::new();
            for (s, t) in shards.iter().zip(tenants) {
                assert_eq!(s["tenant"], t, "{list}");
                let tid = s["tenant_id"].as_u64().expect("tenant_id");
                assert_eq!(s["start"], format!("t{tid}"), "a tenant's first shard starts at its range's start: {list}");
                assert_eq!(s["end"], format!("t{}", tid + 1), "and ends at its range's end: {list}");
                let mut replicas: Vec<u64> = s["replicas"].as_array().expect("replicas").iter().map(|r| r.as_u64().expect("id")).collect();
                replicas.sort();
                assert_eq!(replicas, vec![1, 2, 3], "{list}");
                assert!(s["leader"].as_u64().is_some_and(|l| (1..=3).contains(&l)), "a leader: {list}");
                assert_eq!((s["epoch"]["conf_ver"].as_u64(), s["epoch"]["version"].as_u64()), (Some(1), Some(1)), "{list}");
                ids.push(s["id"].as_u64().expect("id"));
            }
            assert_ne!(ids[0], ids[1], "{list}");
            let one = shard_list(&cluster, 3, Some("dat_dai"));
            assert_eq!(one["shards"].as_array().map(Vec::len), Some(1), "{one}");
            assert_eq!(one["shards"][0]["id"].as_u64(), Some(ids[1]), "{one}");

            // Every node reads every tenant's rows back.
            for via in 1..=3 {
                for t in tenants {
                    let client = cluster.data_client(via);
                    let req =
                        GetRequest { tenant: t.into(), table: "kv".into(), key: b"k/0007".to_vec(), family: "f".into(), consistency: 0 };
                    let got = retry_call(&RetryPolicy::STEADY, |_| {
                        let mut c = client.clone();
                        let r = req.clone();
                        async move { c.get(r).await }
                    })
                    .await
                    .unwrap_or_else(|e| cluster.fail(format!("get {t} via node {via}: {e}")));
                    assert_eq!(got.value, format!("{t} 7").into_bytes(), "{t} via node {via}");
                }
            }

            // The replicas of each group agree: the meta group on every node, each shard on
            // its three replicas.
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_checksums_equal(&cluster, &sums);
            for s in &sums {
                let mut groups: Vec<u64> = s.groups.iter().map(|g| g.group_id).collect();
                groups.sort();
                assert_eq!(groups, vec![0, ids[0], ids[1]], "node {} holds the meta group and both shards", s.node_id);
            }
            let keys_of = |sums: &[kho_proto::v1::NodeChecksumResponse], shard: u64| {
                sums[0].groups.iter().find(|g| g.group_id == shard).map(|g| g.key_count).unwrap_or(0)
            };
            assert_eq!(keys_of(&sums, ids[0]), 2 * KEYS as u64, "bhxh's shard holds kv and tmp");
            assert_eq!(keys_of(&sums, ids[1]), KEYS as u64, "dat_dai's shard holds its kv only");

            // Dropping bhxh/tmp clears its cells from bhxh's shard, on every replica, within
            // a bounded time; bhxh/kv and dat_dai are untouched.
            admin
                .drop_table(DropTableRequest { tenant: "bhxh".into(), name: "tmp".into() })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("drop table bhxh/tmp: {e}")));
            let deadline = Instant::now() + Duration::from_secs(CLEAR_WAIT_S);
            loop {
                let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
                if keys_of(&sums, ids[0]) == KEYS as u64 {
                    assert_checksums_equal(&cluster, &sums);
                    assert_eq!(keys_of(&sums, ids[1]), KEYS as u64);
                    break;
                }
                if Instant::now() > deadline {
                    cluster.fail(format!(
                        "bhxh/tmp's cells were not cleared from shard {} within {CLEAR_WAIT_S} s: {}",
                        ids[0],
                        kho_cluster_tests::describe_checksums(&sums)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut rows = cluster
                .data_client(1)
                .scan(ScanRequest { tenant: "bhxh".into(), table: "kv".into(), family: "f".into(), ..Default::default() })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("scan bhxh/kv: {e}")))
                .into_inner();
            let mut n = 0;
            while let Some(chunk) = rows.message().await.unwrap_or_else(|e| cluster.fail(format!("scan bhxh/kv stream: {e}"))) {
                n += chunk.kvs.len();
            }
            assert_eq!(n, KEYS, "bhxh/kv after the drop of bhxh/tmp");
        })
        .await;
}
