//! Automatic splits and merges on a real 3-node cluster (docs/SHARDING.md, "Split and
//! merge"), with a tiny `sharding.split_size_bytes`: a table loaded through every node
//! splits by itself into at least 16 shards while a reader scans it; every row reads back
//! through every node and a full `ScanRows` returns each once, in order; `kho shard merge`
//! merges two loaded shards without losing a row; dropping the table empties its shards and
//! they merge back into one, within a bounded time, with every replica agreeing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kho_cluster_tests::{
    assert_checksums_equal, create_table, create_tenant, retry_call, Cluster, ClusterOptions, RetryPolicy, ShardingOptions,
};
use kho_proto::v1::{DropTableRequest, GetRequest, PutRequest, ScanRowsRequest};

/// `sharding.split_size_bytes` of the test cluster, bytes.
const SPLIT_SIZE_BYTES: u64 = 32 << 10;
/// `sharding.merge_size_bytes`: below what a loaded shard holds, so only emptied shards
/// (or those merged on request) merge.
const MERGE_SIZE_BYTES: u64 = 4 << 10;
/// Shards the table must split into, at least.
const SHARDS_MIN: usize = 16;
/// Most rows loaded while waiting for the splits, count.
const ROWS_MAX: usize = 8_000;
/// Longest wait for the dropped table's shards to merge back into one, seconds.
const MERGE_BACK_WAIT_S: u64 = 120;

/// The value of row `key`: about 250 bytes that compress poorly, so that the table's size
/// on disk grows with its rows.
fn value_of(key: &str) -> Vec<u8> {
    let mut h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut v = format!("thửa đất {key} ").into_bytes();
    while v.len() < 250 {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        v.extend_from_slice(format!("{h:016x}").as_bytes());
    }
    v
}

async fn put_row(cluster: &Cluster, via: u64, key: &str) {
    let client = cluster.data_client(via);
    let req = PutRequest {
        tenant: "dat_dai".into(),
        table: "land".into(),
        key: key.as_bytes().to_vec(),
        value: value_of(key),
        family: "f".into(),
    };
    retry_call(&RetryPolicy::STEADY, |_| {
        let mut c = client.clone();
        let r = req.clone();
        async move { c.put(r).await }
    })
    .await
    .unwrap_or_else(|e| cluster.fail(format!("put {key} via node {via}: {e}")));
}

fn kho(cluster: &Cluster, via: u64, args: &[&str]) -> std::process::Output {
    let mut cmd = cluster.kho_command();
    cmd.args(args).args(["--endpoints", cluster.addr(via)]);
    cmd.output().unwrap_or_else(|e| cluster.fail(format!("run kho {args:?}: {e}")))
}

/// `kho shard list --json --tenant dat_dai` through node `via` (retried while UNAVAILABLE).
async fn shards(cluster: &Cluster, via: u64) -> Vec<serde_json::Value> {
    let mut last = String::new();
    for _ in 0..20 {
        let out = kho(cluster, via, &["shard", "list", "--json", "--tenant", "dat_dai"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kho shard list --json is JSON");
            return v["shards"].as_array().cloned().unwrap_or_default();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if !last.contains("UNAVAILABLE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.fail(format!("kho shard list via node {via}: {last}"))
}

/// The shards cover the tenant's range in key order, neither gap nor overlap, each on the 3
/// nodes.
fn assert_tiling(shards: &[serde_json::Value], tid: u64) {
    assert!(!shards.is_empty());
    assert_eq!(shards[0]["start"].as_str(), Some(format!("t{tid}").as_str()), "{shards:?}");
    assert_eq!(shards.last().unwrap()["end"].as_str(), Some(format!("t{}", tid + 1).as_str()), "{shards:?}");
    for pair in shards.windows(2) {
        assert_eq!(pair[0]["end"], pair[1]["start"], "neither gap nor overlap: {shards:?}");
    }
    let ids: BTreeSet<u64> = shards.iter().map(|s| s["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), shards.len(), "ids repeat: {shards:?}");
    for s in shards {
        let mut replicas: Vec<u64> = s["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
        replicas.sort();
        assert_eq!(replicas, vec![1, 2, 3], "{s}");
    }
}

/// The row keys of a full `ScanRows` of dat_dai/land through node `via`, in order received;
/// every value checked.
async fn scan_row_keys(cluster: &Cluster, via: u64) -> Vec<String> {
    let client = cluster.data_client(via);
    let req = ScanRowsRequest { tenant: "dat_dai".into(), table: "land".into(), ..Default::default() };
    for attempt in 0..20 {
        let mut c = client.clone();
        let mut keys = Vec::new();
        let streamed = async {
            let mut rows = c.scan_rows(req.clone()).await?.into_inner();
            while let Some(chunk) = rows.message().await? {
                for row in chunk.rows {
                    let key = String::from_utf8(row.key).expect("row keys are UTF-8");
                    assert_eq!(row.cells.len(), 1, "row {key} has one cell");
                    assert_eq!(row.cells[0].value, value_of(&key), "row {key}'s value");
                    keys.push(key);
                }
            }
            Ok::<_, tonic::Status>(())
        };
        match streamed.await {
            Ok(()) => return keys,
            Err(e) if kho_cluster_tests::is_retryable(&e) && attempt < 19 => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => cluster.fail(format!("scan rows via node {via}: {e}")),
        }
    }
    unreachable!()
}

/// Every row of `expected` reads back through every node.
async fn read_all(cluster: &Cluster, expected: &BTreeSet<String>) {
    for via in 1..=3u64 {
        let client = cluster.data_client(via);
        for key in expected {
            let req = GetRequest {
                tenant: "dat_dai".into(),
                table: "land".into(),
                key: key.as_bytes().to_vec(),
                family: "f".into(),
                consistency: 0,
            };
            let got = retry_call(&RetryPolicy::STEADY, |_| {
                let mut c = client.clone();
                let r = req.clone();
                async move { c.get(r).await }
            })
            .await
            .unwrap_or_else(|e| cluster.fail(format!("get {key} via node {via}: {e}")));
            assert!(got.found && got.value == value_of(key), "row {key} via node {via}: found {}", got.found);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_splits_by_size_into_16_shards_and_merges_back_once_dropped() {
    let opts = ClusterOptions {
        sharding: Some(ShardingOptions {
            split_size_bytes: SPLIT_SIZE_BYTES,
            merge_size_bytes: MERGE_SIZE_BYTES,
            split_merge_interval_ms: 2_000,
            check_interval_ms: 300,
        }),
        ..ClusterOptions::default()
    };
    let cluster = Arc::new(Cluster::start(3, opts).await);
    let c = cluster.clone();
    cluster
        .bounded("automatic splits and merges", Duration::from_secs(600), async move {
            let cluster = c;
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "dat_dai").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            create_table(&mut admin, "dat_dai", "land", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            let tid = shards(&cluster, 1).await[0]["tenant_id"].as_u64().expect("tenant_id");

            // A reader through every node while the table splits: each full scan holds, once
            // and in order, every row acknowledged before it began.
            let acked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (cluster, stop, acked) = (cluster.clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut scans = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let before: Vec<String> = acked.lock().unwrap().clone();
                        let via = (scans % 3) as u64 + 1;
                        let got = scan_row_keys(&cluster, via).await;
                        assert!(got.windows(2).all(|w| w[0] < w[1]), "a scan during splits via node {via}: rows out of order or repeated");
                        let got: BTreeSet<String> = got.into_iter().collect();
                        let missing: Vec<&String> = before.iter().filter(|k| !got.contains(*k)).take(5).collect();
                        assert!(missing.is_empty(), "a scan during splits via node {via} lacks acknowledged rows {missing:?}");
                        scans += 1;
                    }
                    scans
                })
            };

            // Load in a shuffled key order through every node until the table has split
            // into enough shards by itself.
            let started = Instant::now();
            let mut expected = BTreeSet::new();
            let mut n = 0usize;
            loop {
                for _ in 0..200 {
                    let key = format!("row{:06}", (n * 7919) % 1_000_000);
                    put_row(&cluster, (n % 3) as u64 + 1, &key).await;
                    acked.lock().unwrap().push(key.clone());
                    expected.insert(key);
                    n += 1;
                }
                let now = shards(&cluster, (n % 3) as u64 + 1).await;
                eprintln!("{n} rows loaded, {} shards after {:?}", now.len(), started.elapsed());
                if now.len() >= SHARDS_MIN {
                    break;
                }
                assert!(n < ROWS_MAX, "only {} shards after {n} rows of ~300 bytes (split size {SPLIT_SIZE_BYTES}): {now:?}", now.len());
            }
            stop.store(true, Ordering::SeqCst);
            let scans = reader.await.expect("the reader");
            assert!(scans > 0, "no scan ran during the splits");
            eprintln!("{scans} full scans during the splits");

            let split = shards(&cluster, 2).await;
            assert_tiling(&split, tid);
            assert!(split.iter().all(|s| s["epoch"]["version"].as_u64().unwrap() >= 2), "every shard split or was split: {split:?}");
            read_all(&cluster, &expected).await;
            let want: Vec<String> = expected.iter().cloned().collect();
            for via in 1..=3u64 {
                assert_eq!(scan_row_keys(&cluster, via).await, want, "a full scan via node {via} once the splits settled");
            }

            // A merge on request of two loaded shards (through a node that may not lead):
            // the left one takes both ranges, every row still reads.
            let before = shards(&cluster, 3).await;
            let (left, right) = (&before[1], &before[2]);
            let out = kho(&cluster, 3, &["shard", "merge", "--json", "--shard", &left["id"].to_string()]);
            assert!(out.status.success(), "kho shard merge: {}", String::from_utf8_lossy(&out.stderr));
            let merged: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kho shard merge --json is JSON");
            let merged = &merged["shards"][0];
            assert_eq!((&merged["id"], &merged["start"], &merged["end"]), (&left["id"], &left["start"], &right["end"]), "{merged}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let now = shards(&cluster, 1).await;
                if now.len() == before.len() - 1 {
                    assert_tiling(&now, tid);
                    assert!(now.iter().all(|s| s["id"] != right["id"]), "the merged shard is gone from the map: {now:?}");
                    break;
                }
                assert!(Instant::now() < deadline, "the shard map does not show the merge: {now:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            read_all(&cluster, &expected).await;

            // Dropping the table empties its shards: they merge back into one.
            admin
                .drop_table(DropTableRequest { tenant: "dat_dai".into(), name: "land".into() })
                .await
                .unwrap_or_else(|e| cluster.fail(format!("drop table: {e}")));
            let deadline = Instant::now() + Duration::from_secs(MERGE_BACK_WAIT_S);
            let merged_back = loop {
                let now = shards(&cluster, 2).await;
                if now.len() == 1 {
                    break now;
                }
                assert!(Instant::now() < deadline, "{} shards {MERGE_BACK_WAIT_S} s after the drop: {now:?}", now.len());
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            assert_tiling(&merged_back, tid);
            eprintln!("merged back into one shard: {merged_back:?}");
            // Every node retires the merged shards' groups (its registry does, after it
            // applied the last commit): in the end each holds the merged shard's group only.
            let id = merged_back[0]["id"].as_u64().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
                assert_checksums_equal(&cluster, &sums);
                let held: Vec<(u64, Vec<u64>)> =
                    sums.iter().map(|s| (s.node_id, s.groups.iter().map(|g| g.group_id).filter(|g| *g != 0).collect())).collect();
                if held.iter().all(|(_, groups)| *groups == vec![id]) {
                    break;
                }
                assert!(Instant::now() < deadline, "nodes still hold other groups than the merged shard {id}: {held:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            // The tenant works as before: a table of the same name, written and read.
            create_table(&mut admin, "dat_dai", "land", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table again: {e}")));
            put_row(&cluster, 2, "again").await;
            let again: BTreeSet<String> = ["again".to_string()].into();
            read_all(&cluster, &again).await;
            assert_eq!(scan_row_keys(&cluster, 3).await, vec!["again".to_string()]);
        })
        .await;
}

/// `CreateTable` with `split_rows` starts the table in one shard per range between them
/// (the rows go where the split points say), with `initial_shards` in that many at evenly
/// spaced first bytes; bad combinations are refused naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn create_table_starts_a_table_in_several_shards() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded("pre-split tables", Duration::from_secs(180), async {
            let mut admin = cluster.admin_client(2);
            create_tenant(&mut admin, "dat_dai").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            let families = vec![kho_proto::v1::ColumnFamily { name: "f".into() }];
            let req = kho_proto::v1::CreateTableRequest {
                tenant: "dat_dai".into(),
                name: "land".into(),
                families: families.clone(),
                split_rows: vec![b"g".to_vec(), b"p".to_vec()],
                ..Default::default()
            };
            let r =
                admin.create_table(req).await.unwrap_or_else(|e| cluster.fail(format!("create table with split rows: {e}"))).into_inner();
            let ends: Vec<String> = r.shards.iter().map(|s| s.end.clone()).collect();
            assert_eq!(r.shards.len(), 3, "{:?}", r.shards);
            assert!(ends[0].ends_with("/rg") && ends[1].ends_with("/rp"), "split at rows g and p: {ends:?}");
            for key in ["apple", "grape", "zebra"] {
                put_row(&cluster, 1, key).await;
            }
            let listed = shards(&cluster, 3).await;
            assert_eq!(listed.len(), 3, "{listed:?}");
            let tid = listed[0]["tenant_id"].as_u64().unwrap();
            assert_tiling(&listed, tid);
            assert_eq!(scan_row_keys(&cluster, 3).await, vec!["apple", "grape", "zebra"]);

            let even = kho_proto::v1::CreateTableRequest {
                tenant: "dat_dai".into(),
                name: "parcels".into(),
                families: families.clone(),
                initial_shards: 4,
                ..Default::default()
            };
            let r = admin.create_table(even).await.unwrap_or_else(|e| cluster.fail(format!("create table in 4 shards: {e}"))).into_inner();
            assert_eq!(r.shards.len(), 4, "{:?}", r.shards);
            assert_eq!(shards(&cluster, 1).await.len(), 6, "3 shards of land, 4 of parcels sharing one");

            let both = kho_proto::v1::CreateTableRequest {
                tenant: "dat_dai".into(),
                name: "bad".into(),
                families,
                split_rows: vec![b"m".to_vec()],
                initial_shards: 3,
                ..Default::default()
            };
            let e = admin.create_table(both).await.expect_err("split_rows with initial_shards");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().starts_with("split_rows:"), "{e:?}");
        })
        .await;
}
