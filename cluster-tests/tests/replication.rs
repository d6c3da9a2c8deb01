//! Replication without faults, and a follower that must catch up from a snapshot.

use std::time::Duration;

use kho_cluster_tests::kv::scan_retry;
use kho_cluster_tests::writes::{count_acknowledged, max_revision, revision_violations};
use kho_cluster_tests::{
    assert_checksums_equal, setup_kv, test_seed, verify_everywhere, Cluster, ClusterOptions, RetryPolicy, WriteOutcome,
    WriteRecord, WriterConfig, Writers,
};
use kho_proto::v1::ScanRequest;

/// Fails the test unless every write was acknowledged.
fn assert_all_acknowledged(cluster: &Cluster, seed: u64, records: &[WriteRecord], expected: usize) {
    let failed: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            WriteOutcome::Acknowledged { .. } => None,
            WriteOutcome::Unknown { last_error } => Some(format!("{}: {last_error}", String::from_utf8_lossy(&r.key))),
        })
        .take(10)
        .collect();
    if records.len() != expected || !failed.is_empty() {
        cluster.fail(format!(
            "seed {seed}: {} of {expected} writes sent, {} acknowledged; first failures: {failed:#?}",
            records.len(),
            count_acknowledged(records)
        ));
    }
    let violations = revision_violations(records);
    if !violations.is_empty() {
        cluster.fail(format!("seed {seed}: revisions: {:#?}", &violations[..violations.len().min(10)]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_read_back_everywhere() {
    const NAME: &str = "concurrent_writes_read_back_everywhere";
    const KEYS: u64 = 10_000;
    const CLIENTS: u32 = 8;
    let seed = test_seed(NAME);
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(600), async {
            let target = setup_kv(&cluster, 1).await;
            let template = WriterConfig {
                writer: 0,
                key_prefix: "a".into(),
                seed,
                writes_max: KEYS / u64::from(CLIENTS),
                policy: RetryPolicy::STEADY,
                target: target.clone(),
            };
            let writers = Writers::spawn(&cluster, &cluster.ids(), CLIENTS, &template);
            let records = writers.join().await;
            assert_all_acknowledged(&cluster, seed, &records, KEYS as usize);
            println!("{KEYS} writes acknowledged, last revision {}", max_revision(&records));

            verify_everywhere(&cluster, seed, &target, &records).await;

            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_checksums_equal(&cluster, &sums);
            assert!(
                sums[0].applied_index >= max_revision(&records),
                "applied index {} is below an acknowledged revision {}",
                sums[0].applied_index,
                max_revision(&records)
            );
            assert!(sums[0].key_count >= KEYS, "key_count {} < {KEYS} keys written", sums[0].key_count);
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_by_snapshot() {
    const NAME: &str = "follower_catches_up_by_snapshot";
    const KEYS: u64 = 3_000;
    const CLIENTS: u32 = 4;
    let seed = test_seed(NAME);
    let opts = ClusterOptions {
        snapshot_logs_since_last: Some(500),
        logs_to_keep_after_snapshot: Some(100),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, opts).await;
    cluster
        .bounded(NAME, Duration::from_secs(600), async {
            let leader = cluster.leader().await;
            let target = setup_kv(&cluster, leader).await;
            let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
            cluster.stop(follower).await;

            // KEYS separate log entries while the follower is away: the leader snapshots every
            // 500 entries and keeps only 100 behind, so the follower's next entry is gone.
            let template = WriterConfig {
                writer: 0,
                key_prefix: "c".into(),
                seed,
                writes_max: KEYS / u64::from(CLIENTS),
                policy: RetryPolicy::STEADY,
                target: target.clone(),
            };
            let writers = Writers::spawn(&cluster, &cluster.running_ids(), CLIENTS, &template);
            let records = writers.join().await;
            assert_all_acknowledged(&cluster, seed, &records, KEYS as usize);

            cluster.restart(follower).await;
            let sums = cluster.wait_applied_equal(Duration::from_secs(120)).await;
            assert_checksums_equal(&cluster, &sums);
            assert!(sums.iter().any(|s| s.node_id == follower), "the follower answered NodeChecksum");
            assert!(
                sums[0].applied_index >= max_revision(&records),
                "applied index {} is below an acknowledged revision {}",
                sums[0].applied_index,
                max_revision(&records)
            );

            let scan = ScanRequest {
                tenant: target.tenant.clone(),
                table: target.table.clone(),
                family: target.family.clone(),
                prefix: b"c/".to_vec(),
                ..Default::default()
            };
            let kvs = scan_retry(&cluster.data_client(follower), scan, &RetryPolicy::STEADY)
                .await
                .unwrap_or_else(|e| cluster.fail(format!("scan via node {follower}: {e}")));
            assert_eq!(kvs.len() as u64, KEYS, "keys under c/ via the follower");
            verify_everywhere(&cluster, seed, &target, &records).await;

            // The leader purged the entries the follower missed, so it can only have caught up
            // by installing a snapshot; the node logs `installed snapshot` when it does.
            let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap_or_default();
            let since_restart = log.rsplit("=== cluster-tests: starting node").next().unwrap_or("");
            assert!(
                since_restart.contains("installed snapshot"),
                "follower {follower} caught up without installing a snapshot; the test no longer exercises snapshots"
            );
        })
        .await;
}
