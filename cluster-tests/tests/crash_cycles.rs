//! Crash consistency: repeated cycles of heavy writes and SIGKILL of random nodes. After
//! every cycle, each acknowledged write so far is present with its value and the replicas
//! hold identical data.

use std::time::Duration;

use kho_cluster_tests::writes::count_acknowledged;
use kho_cluster_tests::{
    check_no_acknowledged_write_lost, publish, setup_kv, test_seed, verify_everywhere, Cluster, ClusterOptions, RetryPolicy, WriteRecord,
    WriterConfig, Writers,
};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

/// Kill-and-recover cycles in CI.
const CYCLES: u32 = 20;
/// Writer tasks during each cycle.
const CLIENTS: u32 = 6;
/// Most writes one writer sends in a cycle; the cycle stops the writers long before.
const WRITES_PER_CLIENT_MAX: u64 = 100_000;
/// Acknowledged writes in a cycle before the kill, and again after the restart.
const ACKNOWLEDGED_PER_PHASE: usize = 100;
/// Longest wait for one phase's acknowledged writes, milliseconds.
const PHASE_WAIT_MS: u64 = 120_000;
/// Longest time nodes stay dead, milliseconds.
const DOWN_MS_MAX: u64 = 400;
/// Longest wait for replicas to reach the same applied index, seconds.
const CONVERGE_WAIT_S: u64 = 120;
/// `raft.snapshot_logs_since_last` of the cluster: a snapshot and a log purge every cycle
/// or so on every node. A node counts from its applied index again after each restart
/// (its current snapshot is a view at that index), and the writes go to the data shard
/// (about 200 entries a cycle), so the count must be well below that.
const SNAPSHOT_EVERY_ENTRIES: u64 = 150;
/// `raft.logs_to_keep_after_snapshot` of the cluster.
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 50;
/// Longest time for the whole test, seconds.
const TEST_TIMEOUT_S: u64 = 1_200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_sigkill_cycles_lose_no_acknowledged_write() {
    const NAME: &str = "repeated_sigkill_cycles_lose_no_acknowledged_write";
    let seed = test_seed(NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    // Encrypted at rest: sealed log entries and values must survive SIGKILL like plain ones.
    // Snapshots (and log purges) every few hundred entries: applies are written without the
    // WAL, so a kill rolls each node's state back to its last flush, and the log it
    // re-applies from must still hold everything after that flush.
    let opts = ClusterOptions {
        encrypted: true,
        snapshot_logs_since_last: Some(SNAPSHOT_EVERY_ENTRIES),
        logs_to_keep_after_snapshot: Some(LOGS_KEPT_AFTER_SNAPSHOT),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, opts).await;
    cluster
        .bounded(NAME, Duration::from_secs(TEST_TIMEOUT_S), async {
            let target = setup_kv(&cluster, 1).await;
            let ids = cluster.ids();
            let mut all: Vec<WriteRecord> = Vec::new();
            let mut kills = 0usize;
            for cycle in 0..CYCLES {
                let template = WriterConfig {
                    writer: 0,
                    key_prefix: format!("cycle{cycle:02}"),
                    seed,
                    writes_max: WRITES_PER_CLIENT_MAX,
                    policy: RetryPolicy::THROUGH_OUTAGE,
                    target: target.clone(),
                };
                let writers = Writers::spawn(&cluster, &ids, CLIENTS, &template);
                writers.wait_acknowledged(&cluster, ACKNOWLEDGED_PER_PHASE, PHASE_WAIT_MS).await;

                // Every other cycle, a split (or, every fourth, a merge) of a random shard of
                // the table is asked for right before the kill: the kill may land at any
                // instant of it.
                if cycle % 2 == 1 {
                    let via = *ids.choose(&mut rng).expect("non-empty");
                    let mut admin = cluster.admin_client(via);
                    let listed = admin.list_shards(kho_proto::v1::ListShardsRequest { tenant: target.tenant.clone() }).await;
                    let shards = listed.map(|r| r.into_inner().shards).unwrap_or_default();
                    let merge = cycle % 4 == 3 && shards.len() > 1;
                    let candidates = if merge { &shards[..shards.len() - 1] } else { &shards[..] };
                    if let Some(shard) = candidates.choose(&mut rng) {
                        let id = shard.id;
                        tokio::spawn(async move {
                            let asked = async {
                                if merge {
                                    admin.merge_shard(kho_proto::v1::MergeShardRequest { shard_id: id }).await.map(|_| ())
                                } else {
                                    admin.split_shard(kho_proto::v1::SplitShardRequest { shard_id: id, at: String::new() }).await.map(|_| ())
                                }
                            };
                            let answer = tokio::time::timeout(Duration::from_secs(10), asked).await;
                            println!("{} of shard {id} via node {via} before the kill: {answer:?}", if merge { "merge" } else { "split" });
                        });
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=20))).await;
                    }
                }
                // One node, a majority, or every node, chosen at random, killed mid-write.
                let mut victims = ids.clone();
                victims.shuffle(&mut rng);
                let how_many = *[1usize, 2, 3].choose(&mut rng).expect("non-empty");
                victims.truncate(how_many);
                victims.sort();
                for &id in &victims {
                    cluster.kill(id);
                }
                kills += victims.len();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=DOWN_MS_MAX))).await;
                let leader = cluster.restart_all().await;
                let before = writers.progress().acknowledged();
                writers.wait_acknowledged(&cluster, before + ACKNOWLEDGED_PER_PHASE, PHASE_WAIT_MS).await;
                let records = writers.stop_and_join().await;
                let acknowledged = count_acknowledged(&records);
                all.extend(records);

                // Every acknowledged write of every cycle so far, read through a random node.
                let via = *ids.choose(&mut rng).expect("non-empty");
                let converge = Duration::from_secs(CONVERGE_WAIT_S);
                let sums = check_no_acknowledged_write_lost(&cluster, seed, &target, &all, &[via], converge).await;
                println!(
                    "cycle {cycle}: killed {victims:?}, leader after restart {leader}; {acknowledged} acknowledged this cycle, \
                     {} in all, {} unknown in all; replicas identical at index {}; all present via node {via}",
                    count_acknowledged(&all),
                    all.len() - count_acknowledged(&all),
                    sums[0].applied_index
                );
            }
            verify_everywhere(&cluster, seed, &target, &all).await;
            let snapshots: usize = ids
                .iter()
                .map(|&id| std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default().matches("built snapshot").count())
                .sum();
            assert!(
                snapshots >= CYCLES as usize,
                "seed {seed}: only {snapshots} snapshots were built in {CYCLES} cycles; the kills did not test rollback past a purge"
            );
            publish(&format!(
                "=== {NAME} (seed {seed}) ===\n{CYCLES} cycles, {kills} SIGKILLs, {snapshots} snapshots built, {} writes ({} acknowledged, {} unknown); \
                 after every cycle all acknowledged writes present and replicas identical\n",
                all.len(),
                count_acknowledged(&all),
                all.len() - count_acknowledged(&all)
            ));
        })
        .await;
}
