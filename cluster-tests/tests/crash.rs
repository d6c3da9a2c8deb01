//! SIGKILL faults while clients write: no ACKNOWLEDGED write may be lost.

use std::time::Duration;

use kho_cluster_tests::writes::count_acknowledged;
use kho_cluster_tests::{
    check_no_acknowledged_write_lost, setup_kv, test_seed, Cluster, ClusterOptions, KvTarget, RetryPolicy, WriterConfig, Writers,
};

/// Writer tasks in each crash test.
const CLIENTS: u32 = 4;
/// Most writes one writer sends; the tests stop the writers long before.
const WRITES_PER_CLIENT_MAX: u64 = 200_000;
/// Acknowledged writes required before the fault and again after recovery.
const ACKNOWLEDGED_PER_PHASE: usize = 300;
/// Longest wait for one phase's acknowledged writes, milliseconds.
const PHASE_WAIT_MS: u64 = 120_000;
/// Longest wait for the replicas to reach the same applied index after a fault.
const CONVERGE_WAIT: Duration = Duration::from_secs(120);

fn writer_template(seed: u64, prefix: &str, target: &KvTarget) -> WriterConfig {
    WriterConfig {
        writer: 0,
        key_prefix: prefix.into(),
        seed,
        writes_max: WRITES_PER_CLIENT_MAX,
        // Rides out an election or a whole-cluster restart; after that a write is unknown.
        policy: RetryPolicy::THROUGH_OUTAGE,
        target: target.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_during_writes() {
    const NAME: &str = "leader_sigkill_during_writes";
    let seed = test_seed(NAME);
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(600), async {
            let target = setup_kv(&cluster, 1).await;
            let writers = Writers::spawn(&cluster, &cluster.ids(), CLIENTS, &writer_template(seed, "b", &target));
            writers.wait_acknowledged(&cluster, ACKNOWLEDGED_PER_PHASE, PHASE_WAIT_MS).await;

            let old = cluster.leader().await;
            cluster.kill(old);
            let new = cluster.leader().await;
            assert_ne!(new, old, "the killed node cannot be the leader");
            println!("leader {old} killed; new leader {new}");
            // Writes resume under the new leader (each writer has one write in flight, so
            // most of these were sent after the election).
            let before = writers.progress().acknowledged();
            writers.wait_acknowledged(&cluster, before + ACKNOWLEDGED_PER_PHASE, PHASE_WAIT_MS).await;

            let records = writers.stop_and_join().await;
            println!(
                "{} writes: {} acknowledged, {} unknown",
                records.len(),
                count_acknowledged(&records),
                records.len() - count_acknowledged(&records)
            );
            cluster.restart(old).await;
            check_no_acknowledged_write_lost(&cluster, seed, &target, &records, &cluster.running_ids(), CONVERGE_WAIT).await;
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_sigkill_during_writes() {
    const NAME: &str = "all_nodes_sigkill_during_writes";
    /// How long every node stays dead, milliseconds.
    const DOWN_MS: u64 = 500;
    let seed = test_seed(NAME);
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(600), async {
            let target = setup_kv(&cluster, 1).await;
            let writers = Writers::spawn(&cluster, &cluster.ids(), CLIENTS, &writer_template(seed, "d", &target));
            writers.wait_acknowledged(&cluster, ACKNOWLEDGED_PER_PHASE, PHASE_WAIT_MS).await;

            let killed = cluster.kill_all();
            let acknowledged_at_kill = writers.progress().acknowledged();
            println!("killed nodes {killed:?} with {acknowledged_at_kill} writes acknowledged");
            tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
            let leader = cluster.restart_all().await;
            println!("all nodes restarted; leader {leader}");

            let before = writers.progress().acknowledged();
            writers.wait_acknowledged(&cluster, before + ACKNOWLEDGED_PER_PHASE, PHASE_WAIT_MS).await;
            let records = writers.stop_and_join().await;
            println!(
                "{} writes: {} acknowledged, {} unknown",
                records.len(),
                count_acknowledged(&records),
                records.len() - count_acknowledged(&records)
            );
            check_no_acknowledged_write_lost(&cluster, seed, &target, &records, &cluster.running_ids(), CONVERGE_WAIT).await;
        })
        .await;
}
