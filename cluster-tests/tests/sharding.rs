//! Data shards on a real 3-node cluster (docs/SHARDING.md): every tenant gets a shard of its
//! own, a Raft group on 3 replicas covering the tenant's key range; writes through any node
//! land in the right shard; `kho shard list --json` shows the shards with their ranges and
//! leaders; the replicas of each shard agree; a dropped table's cells are cleared from its
//! shard; `kho shard split` cuts shards while writes go on, and every row stays readable,
//! once, in order, through every node.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kho_cluster_tests::{assert_checksums_equal, create_table, create_tenant, retry_call, Cluster, ClusterOptions, KvTarget, RetryPolicy};
use kho_proto::v1::{DropTableRequest, GetRequest, PutRequest, ScanRequest, ScanRowsRequest};

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
    let mut cmd = cluster.kho_command();
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

/// Rows loaded before the first split, count.
const SPLIT_ROWS: usize = 600;
/// Shards the tenant is split into, at least.
const SPLIT_SHARDS_MIN: usize = 8;

/// The value of row `key`.
fn value_of(key: &str) -> Vec<u8> {
    format!("thửa đất {key}").into_bytes()
}

/// Puts row `key` through node `via`, retried while the shards move (a split between the
/// route and the apply makes the shard refuse it; the node looks it up again, 3 times).
async fn put_row(cluster: &Cluster, via: u64, key: &str) -> Result<(), tonic::Status> {
    let client = cluster.data_client(via);
    let req =
        PutRequest { tenant: "so_ho".into(), table: "land".into(), key: key.as_bytes().to_vec(), value: value_of(key), family: "f".into() };
    retry_call(&RetryPolicy::STEADY, |_| {
        let mut c = client.clone();
        let r = req.clone();
        async move { c.put(r).await }
    })
    .await
    .map(|_| ())
}

/// Runs `kho` with `args` against node `via`.
fn kho(cluster: &Cluster, via: u64, args: &[&str]) -> std::process::Output {
    let mut cmd = cluster.kho_command();
    cmd.args(args).args(["--endpoints", cluster.addr(via)]);
    cmd.output().unwrap_or_else(|e| cluster.fail(format!("run kho {args:?}: {e}")))
}

/// `kho shard split --shard id [--at at] --json` through node `via`: the two sides, or the
/// error text when it failed.
fn split(cluster: &Cluster, via: u64, id: u64, at: Option<&str>) -> Result<serde_json::Value, String> {
    let id = id.to_string();
    let mut args = vec!["shard", "split", "--json", "--shard", &id];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    let out = kho(cluster, via, &args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("kho shard split --json is not JSON ({e})"))
}

/// [`split`], tried again while it fails with UNAVAILABLE (no leader known yet, a leader
/// that just went down), at most 20 times.
async fn split_retried(cluster: &Cluster, via: u64, id: u64, at: Option<&str>) -> Result<serde_json::Value, String> {
    let mut last = String::new();
    for _ in 0..20 {
        match split(cluster, via, id, at) {
            Err(e) if e.contains("UNAVAILABLE") => last = e,
            other => return other,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

/// `kho shard list --json --tenant so_ho` through node `via`, tried again while it fails
/// with UNAVAILABLE (the meta group electing a leader), at most 20 times: the shards.
async fn so_ho_shards(cluster: &Cluster, via: u64) -> Vec<serde_json::Value> {
    let mut last = String::new();
    for _ in 0..20 {
        let out = kho(cluster, via, &["shard", "list", "--json", "--tenant", "so_ho"]);
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

/// The row keys of a full `ScanRows` of so_ho/land through node `via`, in the order received.
async fn scan_row_keys(cluster: &Cluster, via: u64) -> Vec<String> {
    let client = cluster.data_client(via);
    let req = ScanRowsRequest { tenant: "so_ho".into(), table: "land".into(), ..Default::default() };
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

/// `kho shard split` on a 3-node cluster until the tenant has at least 8 shards, the first
/// splits while a writer keeps writing through every node: every row acknowledged reads
/// back through every node; a full `ScanRows` returns every row exactly once, in key order,
/// through every node; `kho shard list --json` shows disjoint ranges covering the tenant's
/// range, all on the 3 nodes, at newer epochs; and every group's replicas agree (per-group
/// checksums and key counts). A split at a bad point is refused with INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread")]
async fn splits_keep_every_row_readable_once_in_order_through_every_node() {
    let cluster = Arc::new(Cluster::start(3, ClusterOptions::default()).await);
    let c = cluster.clone();
    cluster
        .bounded("splits", Duration::from_secs(420), async move {
            let cluster = c;
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "so_ho").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            create_table(&mut admin, "so_ho", "land", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            let mut expected: BTreeSet<String> = BTreeSet::new();
            for i in 0..SPLIT_ROWS {
                let key = format!("row{i:05}");
                put_row(&cluster, (i % 3) as u64 + 1, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
                expected.insert(key);
            }

            // A writer through every node while the first splits run.
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (cluster, stop) = (cluster.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        // Spread over the whole table: between the loaded rows.
                        let key = format!("row{:05}w", (i * 37) % SPLIT_ROWS);
                        put_row(&cluster, (i % 3) as u64 + 1, &key)
                            .await
                            .unwrap_or_else(|e| cluster.fail(format!("put {key} during splits: {e}")));
                        written.push(key);
                        i += 1;
                    }
                    written
                })
            };

            // A reader through every node while the shards split: each full scan holds every
            // loaded row, once, in order; each read finds its row.
            let loaded: Vec<String> = expected.iter().cloned().collect();
            let reader = {
                let (cluster, stop, loaded) = (cluster.clone(), stop.clone(), loaded.clone());
                tokio::spawn(async move {
                    let mut rounds = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let via = (rounds % 3) as u64 + 1;
                        let got = scan_row_keys(&cluster, via).await;
                        assert!(got.windows(2).all(|w| w[0] < w[1]), "a scan during splits via node {via}: rows out of order or repeated");
                        let got: BTreeSet<String> = got.into_iter().collect();
                        let missing: Vec<&String> = loaded.iter().filter(|k| !got.contains(*k)).take(5).collect();
                        assert!(missing.is_empty(), "a scan during splits via node {via} lacks rows {missing:?}");
                        let key = &loaded[(rounds * 97) % loaded.len()];
                        let client = cluster.data_client(via);
                        let req = GetRequest {
                            tenant: "so_ho".into(),
                            table: "land".into(),
                            key: key.as_bytes().to_vec(),
                            family: "f".into(),
                            consistency: 0,
                        };
                        let r = retry_call(&RetryPolicy::STEADY, |_| {
                            let mut c = client.clone();
                            let r = req.clone();
                            async move { c.get(r).await }
                        })
                        .await
                        .unwrap_or_else(|e| cluster.fail(format!("get {key} via node {via} during splits: {e}")));
                        assert!(r.found && r.value == value_of(key), "get {key} via node {via} during splits: {r:?}");
                        rounds += 1;
                    }
                    rounds
                })
            };

            let first = so_ho_shards(&cluster, 1).await;
            assert_eq!(first.len(), 1, "{first:?}");
            let tid = first[0]["tenant_id"].as_u64().expect("tenant_id");

            // The first split at the middle of the keys, through a node that may not lead.
            let sides =
                split(&cluster, 2, first[0]["id"].as_u64().expect("id"), None).unwrap_or_else(|e| cluster.fail(format!("split: {e}")));
            let at = sides["shards"][1]["start"].as_str().expect("the right side's start").to_string();
            assert_eq!(sides["shards"][0]["end"].as_str(), Some(at.as_str()), "{sides}");
            assert!(at.starts_with(&format!("t{tid}/tb")) && at.contains("/rrow"), "a row boundary: {at}");
            // The table's prefix, to name split points: `t<tenant>/tb<table>`.
            let table = at[..at.find("/r").expect("a row")].to_string();

            // Bad points are refused and change nothing.
            // The tenant's start (the shard's own), a cell's key inside a row (printable as
            // hex: no boundary), and no key at all.
            let table_id: u32 = table.rsplit("tb").next().and_then(|t| t.parse().ok()).expect("a table id");
            let cell: String = [&(tid as u32).to_be_bytes()[..], &table_id.to_be_bytes(), b"row00100", &[0, 1], &[0, 1]]
                .concat()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            for bad in [format!("t{tid}"), format!("0x{cell}"), "t1/zz".to_string()] {
                let e = split(&cluster, 3, first[0]["id"].as_u64().unwrap(), Some(&bad)).expect_err(&bad);
                assert!(e.contains("INVALID_ARGUMENT"), "splitting at {bad}: {e}");
            }

            // An explicit point in the left half, then middle splits, each shard in turn,
            // through every node, until there are enough shards.
            let left_id = sides["shards"][0]["id"].as_u64().unwrap();
            split(&cluster, 3, left_id, Some(&format!("{table}/rrow00100")))
                .unwrap_or_else(|e| cluster.fail(format!("split at row00100: {e}")));
            let mut via = 1u64;
            let mut rounds = 0;
            loop {
                let shards = so_ho_shards(&cluster, via).await;
                if shards.len() >= SPLIT_SHARDS_MIN {
                    break;
                }
                rounds += 1;
                assert!(rounds < 40, "still {} shards after {rounds} rounds: {shards:?}", shards.len());
                if shards.len() >= SPLIT_SHARDS_MIN - 2 {
                    stop.store(true, Ordering::SeqCst); // the last splits with no writes
                }
                for s in shards {
                    let id = s["id"].as_u64().unwrap();
                    match split(&cluster, via, id, None) {
                        Ok(_) => {}
                        // A shard split by a previous round's retry, or with one row: next.
                        Err(e) if e.contains("UNAVAILABLE") || e.contains("FAILED_PRECONDITION") => {
                            eprintln!("split of shard {id} via node {via}: {e}")
                        }
                        Err(e) => cluster.fail(format!("split of shard {id} via node {via}: {e}")),
                    }
                    via = via % 3 + 1;
                }
            }
            stop.store(true, Ordering::SeqCst);
            let written = writer.await.expect("the writer");
            assert!(!written.is_empty(), "the writer wrote nothing while shards split");
            let reads = reader.await.expect("the reader");
            eprintln!("{} writes and {reads} scans and reads while the first shards split", written.len());
            expected.extend(written);

            // The shard map: disjoint ranges, in key order, covering the tenant's range.
            let shards = so_ho_shards(&cluster, 2).await;
            assert!(shards.len() >= SPLIT_SHARDS_MIN, "{shards:?}");
            assert_eq!(shards[0]["start"].as_str(), Some(format!("t{tid}").as_str()), "{shards:?}");
            assert_eq!(shards.last().unwrap()["end"].as_str(), Some(format!("t{}", tid + 1).as_str()), "{shards:?}");
            let mut ids = BTreeSet::new();
            for pair in shards.windows(2) {
                assert_eq!(pair[0]["end"], pair[1]["start"], "neither gap nor overlap: {shards:?}");
            }
            for s in &shards {
                assert!(ids.insert(s["id"].as_u64().unwrap()), "ids repeat: {shards:?}");
                assert!(s["epoch"]["version"].as_u64().unwrap() >= 2, "every shard split or was split: {s}");
                let mut replicas: Vec<u64> = s["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
                replicas.sort();
                assert_eq!(replicas, vec![1, 2, 3], "{s}");
            }

            // Every row reads back through every node.
            for via in 1..=3u64 {
                let client = cluster.data_client(via);
                for key in &expected {
                    let req = GetRequest {
                        tenant: "so_ho".into(),
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
                    assert!(got.found && got.value == value_of(key), "row {key} via node {via}: {got:?}");
                }
            }

            // A full scan returns every row exactly once, in key order, through every node.
            let want: Vec<String> = expected.iter().cloned().collect();
            for via in 1..=3u64 {
                let got = scan_row_keys(&cluster, via).await;
                assert!(got.windows(2).all(|w| w[0] < w[1]), "rows out of order or repeated via node {via}");
                assert_eq!(got.len(), want.len(), "rows via node {via}");
                assert_eq!(got, want, "rows via node {via}");
            }

            // Every group's replicas agree, and the shards hold every row once between them.
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_checksums_equal(&cluster, &sums);
            for s in &sums {
                let held: BTreeSet<u64> = s.groups.iter().map(|g| g.group_id).collect();
                assert!(ids.is_subset(&held), "node {} holds every shard: {held:?} vs {ids:?}", s.node_id);
                let keys: u64 = s.groups.iter().filter(|g| ids.contains(&g.group_id)).map(|g| g.key_count).sum();
                assert_eq!(keys, expected.len() as u64, "node {}: the shards' keys", s.node_id);
            }
        })
        .await;
}

/// A replica that was down while its shard split, and whose peers purged their logs past
/// the splits, catches up by snapshots: of the parent (past the split, narrowing its range
/// there) and of each new shard, which its node opens from the shard map without
/// initializing it. Afterwards it holds every shard, agrees with the other replicas group
/// by group, and serves every row, once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_missed_splits_catches_up_by_snapshots_of_the_new_shards() {
    let opts = ClusterOptions { snapshot_logs_since_last: Some(20), logs_to_keep_after_snapshot: Some(5), ..ClusterOptions::default() };
    let cluster = Cluster::start(3, opts).await;
    cluster
        .bounded("missed splits", Duration::from_secs(300), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "so_ho").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            create_table(&mut admin, "so_ho", "land", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            let mut expected = BTreeSet::new();
            for i in 0..300 {
                let key = format!("row{i:05}");
                put_row(&cluster, (i % 2) as u64 + 1, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
                expected.insert(key);
            }
            cluster.stop(3).await;

            // Three splits while node 3 is down (each through node 1 or 2), then enough
            // writes to every shard that each builds snapshots and purges its log past them.
            for round in 0..3 {
                let shards = so_ho_shards(&cluster, 1).await;
                let id = shards.last().and_then(|s| s["id"].as_u64()).expect("a shard");
                split_retried(&cluster, round % 2 + 1, id, None).await.unwrap_or_else(|e| cluster.fail(format!("split {id}: {e}")));
            }
            for i in 0..600 {
                let key = format!("row{:05}x", i % 300);
                put_row(&cluster, (i % 2) as u64 + 1, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
                expected.insert(key);
            }
            let shards = so_ho_shards(&cluster, 2).await;
            let ids: BTreeSet<u64> = shards.iter().map(|s| s["id"].as_u64().unwrap()).collect();
            assert_eq!(ids.len(), 4, "{shards:?}");

            cluster.restart(3).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            let sums = loop {
                let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
                let node3 = sums.iter().find(|s| s.node_id == 3).expect("node 3 answered");
                let held: BTreeSet<u64> = node3.groups.iter().map(|g| g.group_id).collect();
                if ids.is_subset(&held) {
                    break sums;
                }
                if Instant::now() > deadline {
                    cluster.fail(format!("node 3 holds {held:?}, not every shard {ids:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_checksums_equal(&cluster, &sums);
            for s in &sums {
                let keys: u64 = s.groups.iter().filter(|g| ids.contains(&g.group_id)).map(|g| g.key_count).sum();
                assert_eq!(keys, expected.len() as u64, "node {}: the shards' keys", s.node_id);
            }
            let log = std::fs::read_to_string(cluster.log_path(3)).expect("node 3's log");
            assert!(log.contains("installed snapshot"), "node 3 caught up without a snapshot: the test did not test what it says");
            assert!(
                log.contains("opened a data shard the shard map puts here"),
                "node 3 did not open a new shard from the shard map: the test did not test what it says"
            );
            let want: Vec<String> = expected.iter().cloned().collect();
            assert_eq!(scan_row_keys(&cluster, 3).await, want, "rows via node 3");
        })
        .await;
}

/// Every node SIGKILLed right after a run of splits made while a writer wrote (some splits'
/// batches not flushed yet, some new shards just opened): after the restart every row
/// acknowledged reads back once, in order, the shard map covers the tenant, and every
/// group's replicas agree.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_cluster_killed_right_after_splits_restarts_with_every_row_once() {
    let cluster = Arc::new(Cluster::start(3, ClusterOptions::default()).await);
    let c = cluster.clone();
    cluster
        .bounded("killed after splits", Duration::from_secs(300), async move {
            let cluster = c;
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "so_ho").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            create_table(&mut admin, "so_ho", "land", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            let mut expected = BTreeSet::new();
            for i in 0..300 {
                let key = format!("row{i:05}");
                put_row(&cluster, (i % 3) as u64 + 1, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
                expected.insert(key);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (cluster, stop) = (cluster.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("row{:05}k", (i * 41) % 300);
                        put_row(&cluster, (i % 3) as u64 + 1, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
                        written.push(key);
                        i += 1;
                    }
                    written
                })
            };
            let mut via = 1u64;
            while so_ho_shards(&cluster, via).await.len() < 6 {
                for s in so_ho_shards(&cluster, via).await {
                    let id = s["id"].as_u64().unwrap();
                    if let Err(e) = split_retried(&cluster, via, id, None).await {
                        assert!(e.contains("FAILED_PRECONDITION") || e.contains("UNAVAILABLE"), "split of shard {id}: {e}");
                    }
                    via = via % 3 + 1;
                }
            }
            stop.store(true, Ordering::SeqCst);
            expected.extend(writer.await.expect("the writer"));
            cluster.kill_all();
            cluster.restart_all().await;

            let shards = so_ho_shards(&cluster, 1).await;
            assert!(shards.len() >= 6, "{shards:?}");
            for pair in shards.windows(2) {
                assert_eq!(pair[0]["end"], pair[1]["start"], "neither gap nor overlap: {shards:?}");
            }
            let ids: BTreeSet<u64> = shards.iter().map(|s| s["id"].as_u64().unwrap()).collect();
            let want: Vec<String> = expected.iter().cloned().collect();
            for via in 1..=3u64 {
                assert_eq!(scan_row_keys(&cluster, via).await, want, "rows via node {via} after the restart");
            }
            let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
            assert_checksums_equal(&cluster, &sums);
            for s in &sums {
                let held: BTreeSet<u64> = s.groups.iter().map(|g| g.group_id).collect();
                assert!(ids.is_subset(&held), "node {} holds every shard: {held:?} vs {ids:?}", s.node_id);
                let keys: u64 = s.groups.iter().filter(|g| ids.contains(&g.group_id)).map(|g| g.key_count).sum();
                assert_eq!(keys, expected.len() as u64, "node {}: the shards' keys", s.node_id);
            }
        })
        .await;
}

/// With every split's own report to the shard map lost (fail point `split-report-lost`, as
/// a crash right after the split would), the shard leaders' driver brings the map up to
/// date within a bounded time: after two splits of the same shard, a report per split, or
/// one of the three pieces that now tile its range when it saw both at once.
#[tokio::test(flavor = "multi_thread")]
async fn the_driver_reports_splits_whose_report_was_lost() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded("lost split reports", Duration::from_secs(180), async {
            for id in 1..=3 {
                cluster.set_env(id, &[("FAILPOINTS", "split-report-lost=return")]);
            }
            cluster.kill_all();
            cluster.restart_all().await;
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "so_ho").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            create_table(&mut admin, "so_ho", "land", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            for i in 0..200 {
                let key = format!("row{i:05}");
                put_row(&cluster, (i % 3) as u64 + 1, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
            }
            let first = so_ho_shards(&cluster, 1).await;
            let (tid, id) = (first[0]["tenant_id"].as_u64().unwrap(), first[0]["id"].as_u64().unwrap());
            let sides = split_retried(&cluster, 2, id, None).await.unwrap_or_else(|e| cluster.fail(format!("split: {e}")));
            let at = sides["shards"][1]["start"].as_str().unwrap().to_string();
            let table = at[..at.find("/r").unwrap()].to_string();
            split_retried(&cluster, 3, id, Some(&format!("{table}/rrow00050")))
                .await
                .unwrap_or_else(|e| cluster.fail(format!("split: {e}")));

            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let shards = so_ho_shards(&cluster, 1).await;
                if shards.len() == 3 {
                    let ranges: Vec<(&str, &str)> =
                        shards.iter().map(|s| (s["start"].as_str().unwrap(), s["end"].as_str().unwrap())).collect();
                    let row50 = format!("{table}/rrow00050");
                    let want = [(format!("t{tid}"), row50.clone()), (row50, at.clone()), (at.clone(), format!("t{}", tid + 1))];
                    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                    assert_eq!(ranges, want, "{shards:?}");
                    assert!(shards.iter().all(|s| s["epoch"]["version"].as_u64() >= Some(2)), "{shards:?}");
                    break;
                }
                assert!(shards.len() <= 2, "{shards:?}");
                if Instant::now() > deadline {
                    cluster.fail(format!("the shard map still shows {shards:?} 30 s after the splits"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let log = (1..=3).map(|n| std::fs::read_to_string(cluster.log_path(n)).unwrap_or_default()).collect::<String>();
            assert!(!log.contains("the split is not in the shard map yet"), "a report was made and failed: the fail point did not hold");
            assert!(
                log.contains("reporting a shard the shard map has older") && log.contains("record-split of shard"),
                "the driver did not report the splits: the test did not test what it says"
            );
        })
        .await;
}
