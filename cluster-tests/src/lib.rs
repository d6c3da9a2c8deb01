//! Kho cluster tests: real `kho server` processes on loopback, driven over gRPC.
//!
//! The harness ([`Cluster`]) starts nodes from a TOML config each, in a temporary directory
//! with one log file per node (`node-<id>.log`), kills and restarts them, finds the leader
//! and waits for replicas to converge ([`Cluster::wait_applied_equal`]). Clients retry with
//! bounded attempts ([`RetryPolicy`]) and record which writes were ACKNOWLEDGED
//! ([`WriteOutcome`]); only those must survive any fault.
//!
//! Encryption at rest: [`ClusterOptions::master_key_file`] names a [`MasterKey`] file for
//! every node; [`disk`] searches every file of the data directories for plaintext and
//! records a directory tree (to check that a refused start-up touched nothing); and
//! [`Cluster::run_server_once`] starts a node by hand with another config and waits for
//! it to exit.
//!
//! Running: build the server first (`cargo build --bin kho`), then
//! `cargo test -p kho-cluster-tests`. Environment:
//! - `KHO_BIN`: the `kho` binary to run (default: `target/<profile>/kho` beside the tests);
//! - `KHO_TEST_SEED`: replay the random choices of a failed run (its seed is printed);
//! - `KHO_KEEP_TEST_DIR=1`: keep each cluster's directory (configs, data, logs);
//! - `RUST_LOG`: passed to the servers (default `info`).
//!
//! Bounds: every wait loop and retry has an explicit limit in its name and unit; every
//! test body runs under [`Cluster::bounded`]; at most one cluster runs at a time in a test
//! binary.

mod binary;
pub mod checker;
mod cluster;
pub mod disk;
pub mod history;
mod keys;
pub mod kv;
pub mod nemesis;
pub mod netproxy;
pub mod postgres;
mod process;
mod retry;
pub mod scenario;
mod seed;
mod setup;
pub mod workload;
pub mod writes;

pub use binary::{kho_binary, KHO_BIN_ENV};
pub use cluster::{describe_checksums, Cluster, ClusterOptions, Limits, ShardingOptions, TestTls, TokenHeader, TokenSvc, KEEP_DIR_ENV};
pub use keys::MasterKey;
pub use kv::KvTarget;
pub use process::ServerRun;
pub use retry::{expect_status, is_retryable, ok, retry_call, RetryPolicy};
pub use seed::{test_seed, SEED_ENV};
pub use setup::{create_table, create_table_with, create_tenant, create_tenant_with_encryption, setup_kv, FAMILY, TABLE, TENANT};
pub use writes::{verify_writes, WriteOutcome, WriteRecord, WriterConfig, Writers};

use kho_proto::v1::NodeChecksumResponse;

/// Writes `text` straight to the process's standard output, past the test harness's
/// output capture (which only catches `print!`), so that CI logs show the summary of every
/// fault-injection run and crash-cycle test, passing or not.
pub fn publish(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Asserts that, for every group, the nodes that hold it report the same checksum and key
/// count at the same applied index (as `Cluster::wait_applied_equal` returns them), and
/// that every node holds the meta group.
pub fn assert_checksums_equal(cluster: &Cluster, answers: &[NodeChecksumResponse]) {
    assert!(!answers.is_empty(), "no checksums to compare");
    let mut first: std::collections::BTreeMap<u64, (u64, u32, u64)> = std::collections::BTreeMap::new();
    let mut same = true;
    for a in answers {
        same &= a.groups.iter().any(|g| g.group_id == 0);
        for g in &a.groups {
            let point = (g.applied_index, g.checksum, g.key_count);
            same &= *first.entry(g.group_id).or_insert(point) == point;
        }
    }
    if !same {
        cluster.fail(format!("replicas differ: {}", describe_checksums(answers)));
    }
}

/// Reads every record back through each node of `via`: each acknowledged write must be
/// present with its value, and no unknown write may have a wrong value.
pub async fn verify_via(cluster: &Cluster, seed: u64, target: &KvTarget, records: &[WriteRecord], via: &[u64]) {
    for &id in via {
        let v = verify_writes(&cluster.data_client(id), target, records, &RetryPolicy::STEADY)
            .await
            .unwrap_or_else(|e| cluster.fail(format!("seed {seed}: reading back via node {id}: {e}")));
        println!("read back via node {id}: {}", v.describe());
        if !v.violations.is_empty() || v.acknowledged != writes::count_acknowledged(records) {
            cluster.fail(format!("seed {seed}: via node {id}: {}", v.describe()));
        }
    }
}

/// `verify_via` every running node.
pub async fn verify_everywhere(cluster: &Cluster, seed: u64, target: &KvTarget, records: &[WriteRecord]) {
    verify_via(cluster, seed, target, records, &cluster.running_ids()).await;
}

/// After a fault, with every node up again: revisions are consistent, the replicas reach
/// the same applied index (within `converge`) with identical data, that index covers every
/// acknowledged revision, and every acknowledged write reads back through each node of
/// `via`. Returns the replicas' checksums.
pub async fn check_no_acknowledged_write_lost(
    cluster: &Cluster,
    seed: u64,
    target: &KvTarget,
    records: &[WriteRecord],
    via: &[u64],
    converge: std::time::Duration,
) -> Vec<NodeChecksumResponse> {
    let revisions = writes::revision_violations(records);
    if !revisions.is_empty() {
        cluster.fail(format!("seed {seed}: revisions: {:#?}", &revisions[..revisions.len().min(10)]));
    }
    let sums = cluster.wait_applied_equal(converge).await;
    assert_checksums_equal(cluster, &sums);
    // Revisions are log indexes of the shard that applied the write: each shard still
    // there has applied every revision acknowledged in it (a shard merged away is gone).
    for (shard, acknowledged_max) in writes::max_revisions(records) {
        let Some(g) = sums[0].groups.iter().find(|g| g.group_id == shard) else { continue };
        if g.applied_index < acknowledged_max {
            cluster.fail(format!(
                "seed {seed}: shard {shard}'s applied index {} is below the revision {acknowledged_max} acknowledged in it",
                g.applied_index
            ));
        }
    }
    verify_via(cluster, seed, target, records, via).await;
    sums
}
