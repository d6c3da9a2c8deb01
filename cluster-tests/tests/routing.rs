//! Routing for clients (docs/API.md, "Routing errors" and `LocateShards`): a stale route
//! answered by the node a request was forwarded to is looked up again and retried by the
//! node that received the request, so its client sees no error; when the tries are used up,
//! the client gets `UNAVAILABLE` with the typed `kho-route-error` metadata and nothing was
//! applied. `LocateShards` names, for keys and row ranges, the shard that serves them,
//! exactly the shard a write to them is applied in, before and after a split, for plain and
//! hashed row keys.
//!
//! A leader that moves while a request is forwarded is a race of milliseconds; the fail
//! point `forwarded-stale-route` (docs/TESTING.md) makes the node a request is forwarded to
//! answer its first tries as a stale route, deterministically, for every data call.
//!
//! Checked to fail: with `STALE_ROUTE_TRIES_MAX` at 1 (no retry), the first call through
//! the follower fails with the fail point's answer.

use std::time::Duration;

use kho_cluster_tests::{create_table, create_table_with, create_tenant, setup_kv, Cluster, ClusterOptions, KvTarget};
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::{
    mutation, write_op, BatchGetRequest, CompareAndSwapRequest, DeleteRequest, GetRequest, LocateShardsRequest, LocateShardsResponse,
    MutateRowRequest, Mutation, PutOp, PutRequest, ReadRowRequest, RowRange, ScanRequest, ScanRowsRequest, SetCell, WriteOp, WriteRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The deadline of every data call, ms: ample for three tries.
const CALL_DEADLINE_MS: u64 = 5_000;
/// How long a whole test may take, s.
const TEST_LIMIT_S: u64 = 240;

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_millis(CALL_DEADLINE_MS));
    r
}

/// The node that leads the test tenant's shard, and one that does not.
async fn leader_and_follower(cluster: &Cluster) -> (u64, u64) {
    let leader = cluster.shard_leader().await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("3 nodes");
    (leader, follower)
}

/// Every data call once through `via`, no retries by the client: each must succeed.
async fn every_data_call(cluster: &Cluster, via: u64, t: &KvTarget) {
    let mut c = cluster.data_client(via);
    let what = |call: &str, r: Result<(), Status>| r.unwrap_or_else(|e| cluster.fail(format!("{call} through node {via}: {e:?}")));
    let (tenant, table, family) = (t.tenant.clone(), t.table.clone(), t.family.clone());
    let put =
        PutRequest { tenant: tenant.clone(), table: table.clone(), key: b"k1".to_vec(), value: b"v1".to_vec(), family: family.clone() };
    what("Put", c.put(req(put)).await.map(|_| ()));
    let got = c
        .get(req(GetRequest { tenant: tenant.clone(), table: table.clone(), key: b"k1".to_vec(), family: family.clone(), consistency: 0 }))
        .await;
    what("Get", got.map(|r| assert_eq!(r.into_inner().value, b"v1")));
    let del = DeleteRequest { tenant: tenant.clone(), table: table.clone(), key: b"k1".to_vec(), family: family.clone() };
    what("Delete", c.delete(req(del)).await.map(|r| assert!(r.into_inner().existed)));
    let op =
        |k: &[u8], v: &[u8]| WriteOp { op: Some(write_op::Op::Put(PutOp { key: k.to_vec(), value: v.to_vec(), family: family.clone() })) };
    let write = WriteRequest { tenant: tenant.clone(), table: table.clone(), ops: vec![op(b"k2", b"v2"), op(b"k3", b"v3")] };
    what("Write", c.write(req(write)).await.map(|_| ()));
    let batch = BatchGetRequest {
        tenant: tenant.clone(),
        table: table.clone(),
        keys: vec![b"k2".to_vec(), b"k3".to_vec()],
        family: family.clone(),
        consistency: 0,
    };
    what("BatchGet", c.batch_get(req(batch)).await.map(|r| assert!(r.into_inner().items.iter().all(|i| i.found))));
    let scan = ScanRequest { tenant: tenant.clone(), table: table.clone(), family: family.clone(), ..Default::default() };
    let scanned = match c.scan(req(scan)).await {
        Ok(s) => {
            let mut s = s.into_inner();
            let mut n = 0;
            loop {
                match s.message().await {
                    Ok(Some(chunk)) => n += chunk.kvs.len(),
                    Ok(None) => break Ok(n),
                    Err(e) => break Err(e),
                }
            }
        }
        Err(e) => Err(e),
    };
    what("Scan", scanned.map(|n| assert_eq!(n, 2)));
    let cas = CompareAndSwapRequest {
        tenant: tenant.clone(),
        table: table.clone(),
        key: b"k2".to_vec(),
        family: family.clone(),
        expected_value: Some(b"v2".to_vec()),
        new_value: Some(b"v2b".to_vec()),
    };
    what("CompareAndSwap", c.compare_and_swap(req(cas)).await.map(|r| assert!(r.into_inner().succeeded)));
    let set = Mutation {
        mutation: Some(mutation::Mutation::SetCell(SetCell { family: family.clone(), qualifier: b"q".to_vec(), value: b"x".to_vec() })),
    };
    let mutate = MutateRowRequest { tenant: tenant.clone(), table: table.clone(), row_key: b"r1".to_vec(), mutations: vec![set] };
    what("MutateRow", c.mutate_row(req(mutate)).await.map(|_| ()));
    let read = ReadRowRequest { tenant: tenant.clone(), table: table.clone(), row_key: b"r1".to_vec(), ..Default::default() };
    what("ReadRow", c.read_row(req(read)).await.map(|r| assert!(r.into_inner().found)));
    let rows = ScanRowsRequest { tenant: tenant.clone(), table: table.clone(), ..Default::default() };
    let scanned = match c.scan_rows(req(rows)).await {
        Ok(s) => {
            let mut s = s.into_inner();
            let mut keys = Vec::new();
            loop {
                match s.message().await {
                    Ok(Some(chunk)) => keys.extend(chunk.rows.into_iter().map(|r| r.key)),
                    Ok(None) => break Ok(keys),
                    Err(e) => break Err(e),
                }
            }
        }
        Err(e) => Err(e),
    };
    what("ScanRows", scanned.map(|keys| assert_eq!(keys, [b"k2".to_vec(), b"k3".to_vec(), b"r1".to_vec()])));
}

/// Restarts every node with `FAILPOINTS` set to `failpoints`.
async fn restart_with(cluster: &Cluster, failpoints: &str) {
    for id in cluster.ids() {
        cluster.set_env(id, &[("FAILPOINTS", failpoints)]);
    }
    cluster.kill_all();
    cluster.restart_all().await;
}

fn log_of(cluster: &Cluster, id: u64) -> String {
    std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_that_received_a_request_retries_a_stale_route_and_says_so_when_the_tries_run_out() {
    // Reads are forwarded to the leader too, as writes are: no follower reads.
    let cluster = Cluster::start(3, ClusterOptions { follower_reads: Some(false), ..ClusterOptions::default() }).await;
    cluster
        .bounded("stale routes retried", Duration::from_secs(TEST_LIMIT_S), async {
            // The node a request is forwarded to answers its first two tries as stale.
            restart_with(&cluster, "forwarded-stale-route=return(2)").await;
            let t = setup_kv(&cluster, 1).await;
            let (leader, follower) = leader_and_follower(&cluster).await;
            every_data_call(&cluster, follower, &t).await;
            let answered = (1..=3).map(|id| log_of(&cluster, id).matches("answers try 2 as a stale route").count()).sum::<usize>();
            assert!(
                answered >= 10,
                "every data call was forwarded and answered stale twice ({answered} second tries seen): the test tested nothing"
            );
            assert_eq!(
                (1..=3).map(|id| log_of(&cluster, id).matches("answers try 3 as a stale route").count()).sum::<usize>(),
                0,
                "the third try is not answered by the fail point"
            );

            // Every try answered stale: the client gets the typed answer, and nothing was written.
            restart_with(&cluster, "forwarded-stale-route=return").await;
            let (leader2, follower2) = leader_and_follower(&cluster).await;
            let mut via = cluster.data_client(follower2);
            let put = PutRequest {
                tenant: t.tenant.clone(),
                table: t.table.clone(),
                key: b"k9".to_vec(),
                value: b"v9".to_vec(),
                family: t.family.clone(),
            };
            let e = via.put(req(put.clone())).await.expect_err("every try of the forwarded write is answered stale");
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert_eq!(e.metadata().get("kho-route-error").map(|v| v.to_str().unwrap()), Some("not-leader"), "{e:?}");
            assert!(e.message().contains(&format!("node {follower2} tried 3 times")), "{e:?}");
            let get = GetRequest {
                tenant: t.tenant.clone(),
                table: t.table.clone(),
                key: b"k9".to_vec(),
                family: t.family.clone(),
                consistency: 0,
            };
            let e = via.get(req(get.clone())).await.expect_err("every try of the forwarded read is answered stale");
            assert_eq!(e.metadata().get("kho-route-error").map(|v| v.to_str().unwrap()), Some("not-leader"), "{e:?}");
            // On the leader itself (nothing forwarded), the same calls succeed, and the
            // write answered stale was not applied.
            let mut direct = cluster.data_client(leader2);
            let found = direct.get(req(get)).await.unwrap_or_else(|e| cluster.fail(format!("Get on the leader: {e:?}"))).into_inner().found;
            assert!(!found, "a write answered with a typed stale route was applied");
            direct.put(req(put)).await.unwrap_or_else(|e| cluster.fail(format!("Put on the leader: {e:?}")));
            let _ = leader;
        })
        .await;
}

async fn locate(client: &mut DataClient<Channel>, r: LocateShardsRequest) -> Result<LocateShardsResponse, Status> {
    client.locate_shards(req(r)).await.map(|r| r.into_inner())
}

/// The shard each key's write is applied in (its `WriteHeader.shard_id`).
async fn written_shards(cluster: &Cluster, tenant: &str, table: &str, keys: &[Vec<u8>]) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let via = cluster.ids()[i % 3];
        let mut c = cluster.data_client(via);
        let put = PutRequest { tenant: tenant.into(), table: table.into(), key: k.clone(), value: b"v".to_vec(), family: "f".into() };
        let mut last = None;
        for _ in 0..20 {
            match c.put(req(put.clone())).await {
                Ok(r) => {
                    last = None;
                    out.push(r.into_inner().header.expect("a write header").shard_id);
                    break;
                }
                Err(e) if e.code() == Code::Unavailable => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => cluster.fail(format!("put {k:?}: {e:?}")),
            }
        }
        if let Some(e) = last {
            cluster.fail(format!("put {k:?}: {e:?}"));
        }
    }
    out
}

/// Splits `shard` at `at` (empty: the middle), retrying while the cluster answers
/// UNAVAILABLE; the right side's start, printable.
async fn split(cluster: &Cluster, shard: u64, at: &str) -> String {
    let mut admin = cluster.admin_client(1);
    for _ in 0..20 {
        match admin.split_shard(kho_proto::v1::SplitShardRequest { shard_id: shard, at: at.to_string() }).await {
            Ok(r) => return r.into_inner().right.expect("the right side").start,
            Err(e) if e.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => cluster.fail(format!("split shard {shard} at `{at}`: {e:?}")),
        }
    }
    cluster.fail(format!("split shard {shard} at `{at}`: UNAVAILABLE 20 times"))
}

/// A printable row (docs/FORMATS.md, "Printable keys": `\\`, `\xNN`, other bytes as
/// themselves) as bytes.
fn printable_row(text: &str) -> Vec<u8> {
    let (mut out, b) = (Vec::new(), text.as_bytes());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b'\\', Some(b'x')) => {
                out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).expect("two hex digits"));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Asks every node until each names, for `keys`, the shards their writes were applied in
/// (a node learns of a split by applying it), at most 10 s.
async fn locate_matches_writes(cluster: &Cluster, tenant: &str, table: &str, keys: &[Vec<u8>], written: &[u64]) {
    for id in cluster.ids() {
        let mut c = cluster.data_client(id);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = LocateShardsRequest { tenant: tenant.into(), table: table.into(), keys: keys.to_vec(), range: None };
            let answer = locate(&mut c, r).await.unwrap_or_else(|e| cluster.fail(format!("LocateShards on node {id}: {e:?}")));
            assert_eq!(answer.node_id, id);
            for s in &answer.shards {
                assert_eq!(s.replicas.len(), 3, "{s:?}");
                // An address is a node's client address, or empty until the answering node
                // has heard it from that node (within a second of start).
                for r in &s.replicas {
                    assert!(r.address.is_empty() || r.address == cluster.addr(r.node_id), "{s:?}");
                }
                assert!(s.leader_address.is_empty() || s.leader_address == cluster.addr(s.leader_id), "{s:?}");
            }
            // Every node holds a replica of every shard: once a new shard's leader is
            // elected and heard of, and the nodes' client addresses are known, each node
            // names them.
            let complete = |s: &kho_proto::v1::ShardLocation| {
                s.leader_id != 0 && !s.leader_address.is_empty() && s.replicas.iter().all(|r| !r.address.is_empty())
            };
            if answer.key_shard_ids == written && answer.shards.iter().all(complete) {
                break;
            }
            if std::time::Instant::now() > deadline {
                cluster.fail(format!("node {id} locates {keys:?} in {:?}; written in {written:?}: {answer:?}", answer.key_shard_ids));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn locate_shards_names_the_shard_a_write_goes_to_before_and_after_splits() {
    // Encrypted, for a table with hashed row keys.
    let cluster = Cluster::start(3, ClusterOptions { encrypted: true, ..ClusterOptions::default() }).await;
    cluster
        .bounded("locate shards", Duration::from_secs(TEST_LIMIT_S), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "loc").await.unwrap_or_else(|e| cluster.fail(format!("create tenant: {e}")));
            create_table(&mut admin, "loc", "plain", &["f"]).await.unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("k{i:02}").into_bytes()).collect();
            let mut c = cluster.data_client(2);
            let whole_table =
                || LocateShardsRequest { tenant: "loc".into(), table: "plain".into(), keys: vec![], range: Some(RowRange::default()) };

            // One shard: every key; its range as ListShards shows it.
            let before = written_shards(&cluster, "loc", "plain", &keys).await;
            let shard = before[0];
            assert!(before.iter().all(|s| *s == shard), "{before:?}");
            locate_matches_writes(&cluster, "loc", "plain", &keys, &before).await;
            let whole = locate(&mut c, whole_table()).await.unwrap_or_else(|e| cluster.fail(format!("LocateShards: {e:?}")));
            assert_eq!(whole.range_shard_ids, [shard], "{whole:?}");
            assert_eq!((whole.shards[0].start_row.as_slice(), whole.shards[0].end_row.as_slice()), (&b""[..], &b""[..]), "{whole:?}");
            let list = kho_proto::v1::ListShardsRequest { tenant: "loc".into() };
            let listed = admin.list_shards(list).await.unwrap_or_else(|e| cluster.fail(format!("ListShards: {e:?}"))).into_inner();
            assert_eq!((&listed.shards[0].start, &listed.shards[0].end), (&whole.shards[0].start, &whole.shards[0].end));

            // Split at the middle row: keys below it stay, the others move, and every node
            // locates them where their writes go.
            let at = split(&cluster, shard, "").await;
            let middle = printable_row(&at[at.find("/r").unwrap_or_else(|| panic!("a row boundary: {at}")) + 2..]);
            let after = written_shards(&cluster, "loc", "plain", &keys).await;
            let right = *after.last().expect("keys");
            assert_ne!(right, shard);
            for (k, s) in keys.iter().zip(&after) {
                assert_eq!(*s, if *k < middle { shard } else { right }, "{k:?} split at {at}: {after:?}");
            }
            locate_matches_writes(&cluster, "loc", "plain", &keys, &after).await;

            // The table's range: its shards in order, the row bounds at the split.
            let whole = locate(&mut c, whole_table()).await.unwrap_or_else(|e| cluster.fail(format!("LocateShards: {e:?}")));
            assert_eq!(whole.range_shard_ids, [shard, right], "{whole:?}");
            let by_id = |id: u64| whole.shards.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("shard {id} in {whole:?}")).clone();
            assert_eq!((by_id(shard).start_row, by_id(shard).end_row), (vec![], middle.clone()));
            assert_eq!((by_id(right).start_row, by_id(right).end_row), (middle.clone(), vec![]));
            assert_eq!((by_id(shard).end.as_str(), by_id(right).start.as_str()), (at.as_str(), at.as_str()));
            assert!(by_id(right).epoch_version >= 2 && by_id(shard).epoch_version >= 2, "{whole:?}");
            // A limit of one: the first shard, and where to go on.
            let one = RowRange { limit: 1, ..RowRange::default() };
            let r = LocateShardsRequest { tenant: "loc".into(), table: "plain".into(), keys: vec![], range: Some(one) };
            let first = locate(&mut c, r).await.unwrap_or_else(|e| cluster.fail(format!("LocateShards: {e:?}")));
            assert_eq!((first.range_shard_ids.as_slice(), &first.range_resume_row), (&[shard][..], &middle), "{first:?}");
            let from = RowRange { start_row: middle.clone(), end_row: b"k99".to_vec(), limit: 0 };
            let r = LocateShardsRequest { tenant: "loc".into(), table: "plain".into(), keys: vec![], range: Some(from) };
            let rest = locate(&mut c, r).await.unwrap_or_else(|e| cluster.fail(format!("LocateShards: {e:?}")));
            assert_eq!((rest.range_shard_ids.as_slice(), rest.range_resume_row.as_slice()), (&[right][..], &b""[..]), "{rest:?}");

            // Hashed row keys are located by their hash, as writes are, before and after a
            // split of the shard that holds them (the newer table lies in the right side).
            create_table_with(&mut admin, "loc", "hashed", &["f"], true)
                .await
                .unwrap_or_else(|e| cluster.fail(format!("create table: {e}")));
            let hashed_before = written_shards(&cluster, "loc", "hashed", &keys).await;
            locate_matches_writes(&cluster, "loc", "hashed", &keys, &hashed_before).await;
            split(&cluster, right, "").await;
            let hashed_after = written_shards(&cluster, "loc", "hashed", &keys).await;
            locate_matches_writes(&cluster, "loc", "hashed", &keys, &hashed_after).await;

            // Bad requests name the field and the limit.
            let bad = |keys: Vec<Vec<u8>>, range: Option<RowRange>, table: &str| LocateShardsRequest {
                tenant: "loc".into(),
                table: table.into(),
                keys,
                range,
            };
            for (r, code, needle) in [
                (bad(vec![], None, "plain"), Code::InvalidArgument, "nothing to locate"),
                (bad(vec![b"k".to_vec(); 1_001], None, "plain"), Code::InvalidArgument, "keys: 1001 keys exceed the limit of 1000"),
                (bad(vec![b"k".to_vec(), vec![]], None, "plain"), Code::InvalidArgument, "keys[1]: must not be empty"),
                (
                    bad(vec![], Some(RowRange { limit: 1_001, ..RowRange::default() }), "plain"),
                    Code::InvalidArgument,
                    "range.limit: 1001 exceeds the limit of 1000",
                ),
                (bad(vec![], Some(RowRange::default()), "hashed"), Code::FailedPrecondition, "hashed row keys"),
                (bad(vec![b"k".to_vec()], None, "nope"), Code::NotFound, "nope"),
            ] {
                let e = locate(&mut c, r).await.expect_err(needle);
                assert_eq!(e.code(), code, "{e:?}");
                assert!(e.message().contains(needle), "`{needle}` in {e:?}");
            }
        })
        .await;
}
