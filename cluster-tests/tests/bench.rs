//! `kho bench` works and reports against a real local cluster (a smoke run: it checks the
//! tool, not the speed). Speed is measured by `kho bench-compare` (`scripts/bench-compare`)
//! and written down in docs/BENCHMARKS.md, never asserted.

use std::time::Duration;

use kho_cluster_tests::{kho_binary, Cluster, ClusterOptions};

/// Longest a smoke run may take, seconds (a bounded child process).
const RUN_TIMEOUT_S: u64 = 120;
/// Records loaded and operations run by each smoke run.
const RECORDS: u64 = 300;
const OPERATIONS: u64 = 600;

/// Runs `kho bench` with `args` and a `--json` file; returns stdout and the parsed report.
async fn bench(cluster: &Cluster, args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let endpoints: Vec<String> = cluster.ids().iter().map(|&id| cluster.addr(id).to_string()).collect();
    let mut cmd = tokio::process::Command::new(kho_binary());
    cmd.arg("bench")
        .args(["--endpoints", &endpoints.join(",")])
        .args(["--record-count", &RECORDS.to_string(), "--operation-count", &OPERATIONS.to_string()])
        .args(["--concurrency", "8", "--progress-secs", "0", "--seed", "7", "--json"])
        .arg(&json)
        .args(args)
        .kill_on_drop(true);
    if let Some(tls) = cluster.tls() {
        cmd.arg("--ca").arg(tls.ca_cert()).arg("--cert").arg(tls.client_cert("admin")).arg("--key").arg(tls.client_key("admin"));
    }
    let out = match tokio::time::timeout(Duration::from_secs(RUN_TIMEOUT_S), cmd.output()).await {
        Ok(out) => out.expect("run kho bench"),
        Err(_) => cluster.fail(format!("kho bench {args:?} did not finish within {RUN_TIMEOUT_S} s")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        cluster.fail(format!("kho bench {args:?} exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the --json file exists")).expect("the report is JSON");
    (stdout, report)
}

fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"].as_array().expect("phases").iter().find(|p| p["phase"] == name).expect("the phase is reported")
}

fn op<'a>(phase: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    phase["operations"].as_array().expect("operations").iter().find(|o| o["op"] == name).unwrap_or_else(|| panic!("{name} in {phase}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kho_bench_runs_workloads_against_a_cluster_and_reports() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded("kho bench smoke", Duration::from_secs(4 * RUN_TIMEOUT_S), async {
            // Workload A: load, then reads and updates, table and JSON.
            let (stdout, report) = bench(&cluster, &["--workload", "a", "--shards", "4"]).await;
            let shards = cluster
                .admin_client(1)
                .list_shards(kho_proto::v1::ListShardsRequest { tenant: "bench".into() })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("ListShards: {e}")))
                .into_inner()
                .shards;
            assert_eq!(shards.len(), 4, "--shards 4 started the table in 4 shards: {shards:?}");
            assert!(shards.iter().all(|s| s.approximate_keys > 0 || s.approximate_bytes == 0), "{shards:?}");
            for needle in ["[load]", "[run]", "INSERT", "READ", "UPDATE", "p99.9"] {
                assert!(stdout.contains(needle), "`{needle}` missing from:\n{stdout}");
            }
            let load = phase(&report, "load");
            assert_eq!(load["ops"], RECORDS, "{load}");
            assert_eq!(load["errors"], 0, "{load}");
            let run = phase(&report, "run");
            assert_eq!(run["ops"], OPERATIONS, "{run}");
            assert_eq!(run["errors"], 0, "{run}");
            let read = op(run, "READ");
            assert_eq!(read["not_found"], 0, "every key read was loaded: {read}");
            let p50 = read["latency_us"]["p50"].as_u64().expect("p50");
            let p99 = read["latency_us"]["p99"].as_u64().expect("p99");
            assert!(p50 > 0 && p50 <= p99, "percentiles in order: {read}");
            assert_eq!(read["count"].as_u64().unwrap() + op(run, "UPDATE")["count"].as_u64().unwrap(), OPERATIONS, "{run}");

            // Workload E: scans over the loaded keys (the table exists now: reused).
            let (_, report) = bench(&cluster, &["--workload", "e"]).await;
            let run = phase(&report, "run");
            assert_eq!(run["errors"], 0, "{run}");
            assert!(op(run, "SCAN")["count"].as_u64().unwrap() > 0, "{run}");
        })
        .await;
}

/// `--route leader` sends each key to its own shard's leader (`LocateShards`): after the
/// benchmark's table is split, a run over the loaded keys still sees no error and finds
/// every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kho_bench_routes_each_key_to_its_shard_after_a_split() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded("kho bench after a split", Duration::from_secs(3 * RUN_TIMEOUT_S), async {
            let (_, report) = bench(&cluster, &["--workload", "a", "--phase", "load"]).await;
            assert_eq!(phase(&report, "load")["errors"], 0);
            let mut admin = cluster.admin_client(1);
            let list = kho_proto::v1::ListShardsRequest { tenant: "bench".into() };
            let shards = admin.list_shards(list.clone()).await.expect("ListShards").into_inner().shards;
            assert_eq!(shards.len(), 1, "{shards:?}");
            let split = kho_proto::v1::SplitShardRequest { shard_id: shards[0].id, at: String::new() };
            admin.split_shard(split).await.unwrap_or_else(|e| cluster.fail(format!("split the bench shard: {e:?}")));
            let (_, report) = bench(&cluster, &["--workload", "a", "--phase", "run"]).await;
            let run = phase(&report, "run");
            assert_eq!(run["errors"], 0, "{run}");
            assert_eq!(op(run, "READ")["not_found"], 0, "every key read was loaded: {run}");
            let shards = admin.list_shards(list).await.expect("ListShards").into_inner().shards;
            assert_eq!(shards.len(), 2, "{shards:?}");
        })
        .await;
}
