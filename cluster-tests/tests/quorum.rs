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
