//! Durability and isolation of one node's storage and threads (docs/TESTING.md): a failed
//! fsync stops the node without acknowledging what it did not sync; a corrupt record in the
//! middle of the newest log segment stops the start-up (a torn tail is still cut); clients
//! that never read their scans cannot starve a node's votes and writes.

use std::time::{Duration, Instant};

use kho_cluster_tests::kv::get;
use kho_cluster_tests::writes::put_with_retry;
use kho_cluster_tests::{setup_kv, Cluster, ClusterOptions, KvTarget, RetryPolicy};
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::{write_op, PutOp, PutRequest, ScanRequest, WriteOp, WriteRequest};
use tonic::transport::Channel;

/// Exit status of a node stopped by a storage failure (`kho_raft::fatal`).
const STORAGE_FAILURE_EXIT_CODE: i32 = 74;

fn value_of(key: &str) -> Vec<u8> {
    format!("value of {key}").into_bytes()
}

async fn put_once(client: &mut DataClient<Channel>, target: &KvTarget, key: &str) -> Result<(), tonic::Status> {
    let req = PutRequest {
        tenant: target.tenant.clone(),
        table: target.table.clone(),
        key: key.as_bytes().to_vec(),
        value: value_of(key),
        family: target.family.clone(),
    };
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_secs(10));
    client.put(req).await.map(|_| ())
}

/// A fault injected into the Raft log's fsync (fail point `shared-log-sync`, built in by
/// the `failpoints` feature) must stop the node at once: the write waiting for that fsync
/// is not acknowledged, no later fsync is tried (it could report pages the kernel dropped
/// as durable), and after a restart without the fault every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_fsync_stops_the_node_and_acknowledges_nothing_unsynced() {
    const NAME: &str = "a_failed_log_fsync_stops_the_node_and_acknowledges_nothing_unsynced";
    /// Log syncs that succeed after the restart before the injected failure.
    const SYNCS_BEFORE_FAILURE: u32 = 12;
    /// Most writes tried after the restart; the failure comes long before.
    const WRITES_MAX: usize = 200;
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let target = setup_kv(&cluster, 1).await;
            let mut acknowledged = Vec::new();
            let mut client = cluster.data_client(1);
            for i in 0..20 {
                let key = format!("before/{i:03}");
                put_once(&mut client, &target, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
                acknowledged.push(key);
            }
            cluster.stop(1).await;
            cluster.set_env(1, &[("FAILPOINTS", &format!("shared-log-sync={SYNCS_BEFORE_FAILURE}*off->return"))]);
            cluster.restart(1).await;
            let mut client = cluster.data_client(1);
            let mut failed = None;
            for i in 0..WRITES_MAX {
                let key = format!("after/{i:03}");
                match put_once(&mut client, &target, &key).await {
                    Ok(()) => acknowledged.push(key),
                    Err(e) => {
                        failed = Some((key, e));
                        break;
                    }
                }
            }
            let Some((failed_key, error)) = failed else {
                cluster.fail(format!("{WRITES_MAX} writes were acknowledged; the injected fsync failure stopped nothing"));
            };
            println!("write {failed_key} failed with {:?}: {}", error.code(), error.message());
            // The fault must have struck a node that was serving writes, not its start-up.
            assert!(acknowledged.iter().any(|k| k.starts_with("after/")), "no write was acknowledged after the restart before the fault");
            let status = cluster.wait_exit(1, Duration::from_secs(10)).await.unwrap_or_else(|| {
                cluster.fail("the node is still running 10 s after its log fsync failed: a failed fsync must stop it (fail-stop)")
            });
            assert_eq!(status.code(), Some(STORAGE_FAILURE_EXIT_CODE), "exit status of a node stopped by a storage failure");
            let log = std::fs::read_to_string(cluster.log_path(1)).expect("read the node's log");
            assert!(log.contains("storage failure") && log.contains("Raft log"), "the log must say which storage failed");

            cluster.set_env(1, &[]);
            cluster.restart(1).await;
            cluster.leader().await;
            let client = cluster.data_client(1);
            for key in &acknowledged {
                let got = get(&client, &target, key.as_bytes(), &RetryPolicy::THROUGH_OUTAGE)
                    .await
                    .unwrap_or_else(|e| cluster.fail(format!("read {key} after the restart: {e}")));
                assert_eq!(got, Some(value_of(key)), "acknowledged write {key} must survive the fail-stop");
            }
            println!("{} acknowledged writes read back after the fail-stop", acknowledged.len());
        })
        .await;
}

/// The newest segment file of node `id`'s shared Raft log.
fn newest_segment(cluster: &Cluster, id: u64) -> std::path::PathBuf {
    let dir = cluster.data_dir(id).join("log");
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs.pop().unwrap_or_else(|| panic!("no segment in {}", dir.display()))
}

/// A byte flipped in the middle of the newest log segment, with valid records after it, is
/// corruption of acknowledged entries, not a torn write: the node must refuse to start and
/// name the file and the offset, instead of cutting the log there (which silently drops
/// synced entries). Garbage after the last record is a torn tail and is still cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_inside_the_newest_segment_stops_the_start_but_a_torn_tail_is_cut() {
    const NAME: &str = "a_corrupt_record_inside_the_newest_segment_stops_the_start_but_a_torn_tail_is_cut";
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let target = setup_kv(&cluster, 1).await;
            let mut client = cluster.data_client(1);
            for i in 0..200 {
                let key = format!("k/{i:03}");
                put_once(&mut client, &target, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key}: {e}")));
            }
            let leader = cluster.leader().await;
            let victim = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
            cluster.wait_applied_equal(Duration::from_secs(60)).await;
            cluster.stop(victim).await;

            // A torn tail: bytes after the last record that form no record. Cut, start works.
            let seg = newest_segment(&cluster, victim);
            let len = std::fs::metadata(&seg).expect("stat the segment").len();
            {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&seg).expect("open the segment");
                f.write_all(&[0x5a; 23]).expect("append garbage");
            }
            cluster.restart(victim).await;
            cluster.wait_applied_equal(Duration::from_secs(60)).await;
            cluster.stop(victim).await;
            let log = std::fs::read_to_string(cluster.log_path(victim)).expect("read the node's log");
            assert!(log.contains("torn"), "the start-up must report the torn tail it cut");

            // A flipped byte in the middle: valid records follow, so it is corruption.
            let seg = newest_segment(&cluster, victim);
            let bytes = std::fs::read(&seg).expect("read the segment");
            assert!(bytes.len() as u64 >= len / 2, "the segment still holds its records");
            let at = bytes.len() / 2;
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            std::fs::write(&seg, &flipped).expect("write the flipped segment");
            let config = std::fs::read_to_string(cluster.config_path(victim)).expect("read the node config");
            let run = cluster.run_server_once(victim, "corrupt-log", &config, Duration::from_secs(60)).await;
            assert!(!run.timed_out, "a node with a corrupt log must refuse to start, not run: {}", run.describe());
            assert_ne!(run.status.and_then(|s| s.code()), Some(0), "{}", run.describe());
            let seg_name = seg.file_name().expect("a file name").to_string_lossy().into_owned();
            let said = format!("{}\n{}", run.stdout, run.stderr);
            assert!(said.contains(&seg_name), "the refusal must name the segment file {seg_name}: {said}");
            assert!(said.contains("offset"), "the refusal must name the offset: {said}");
        })
        .await;
}

/// Rows written so that a scan of them (the default `scan_limit_max`, 10,000 rows of about
/// 80 bytes) is more than its channel (4 chunks of 512 rows), the server's HTTP/2 send
/// buffer (400 KiB) and the client's unread window hold, so every stalled scan blocks its
/// producer.
const STALL_ROWS: usize = 10_000;
/// Scans opened and never read.
const STALLED_SCANS: usize = 600;
/// Connections they are spread over (HTTP/2 servers allow a bounded number of streams per
/// connection).
const STALL_CONNECTIONS: usize = 6;

/// 600 scans whose clients never read must not starve their node: before the scan pool, each
/// parked one of tokio's blocking threads (at most 512), and the node's vote (a synced write
/// on such a thread) then never happened, so no leader could be elected without it. Now the
/// scans wait for the bounded scan threads, and writes through the node and an election that
/// needs its vote go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_scans_do_not_stop_writes_or_an_election_on_their_node() {
    const NAME: &str = "stalled_scans_do_not_stop_writes_or_an_election_on_their_node";
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let target = setup_kv(&cluster, 1).await;
            let mut client = cluster.data_client(1);
            let value = vec![b'v'; 64];
            for batch in 0..STALL_ROWS / 1000 {
                let ops = (0..1000)
                    .map(|i| WriteOp {
                        op: Some(write_op::Op::Put(PutOp {
                            key: format!("row/{:06}", batch * 1000 + i).into_bytes(),
                            value: value.clone(),
                            family: target.family.clone(),
                        })),
                    })
                    .collect();
                let req = WriteRequest { tenant: target.tenant.clone(), table: target.table.clone(), ops };
                client.write(req).await.unwrap_or_else(|e| cluster.fail(format!("write batch {batch}: {e}")));
            }
            let leader = cluster.shard_leader().await;
            let node = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
            cluster.wait_applied_equal(Duration::from_secs(60)).await;

            // Open the scans on the follower and never read them.
            let mut stalled = Vec::with_capacity(STALLED_SCANS);
            let clients: Vec<DataClient<Channel>> = (0..STALL_CONNECTIONS)
                .map(|_| cluster.new_data_clients().into_iter().find(|(id, _)| *id == node).expect("a client of the node").1)
                .collect();
            for i in 0..STALLED_SCANS {
                let mut c = clients[i % STALL_CONNECTIONS].clone();
                let req = ScanRequest {
                    tenant: target.tenant.clone(),
                    table: target.table.clone(),
                    family: target.family.clone(),
                    ..Default::default()
                };
                match c.scan(req).await {
                    Ok(stream) => stalled.push(stream),
                    Err(e) => cluster.fail(format!("scan {i} on node {node} was refused: {e}")),
                }
            }
            println!("{} scans open on node {node}, none read", stalled.len());
            // Writes through the node (forwarded to the leader) go on.
            let mut via = cluster.data_client(node);
            let started = Instant::now();
            for i in 0..50 {
                let key = format!("during/{i:03}");
                put_once(&mut via, &target, &key).await.unwrap_or_else(|e| cluster.fail(format!("put {key} via node {node}: {e}")));
            }
            println!("50 writes through node {node} in {:?} with the scans stalled", started.elapsed());

            // An election that needs the node's vote: the leader dies, two nodes remain.
            cluster.kill(leader);
            let started = Instant::now();
            let new_leader = cluster.shard_leader().await;
            println!("leader {leader} killed; node {new_leader} elected in {:?}", started.elapsed());
            let via = [(node, cluster.data_client(node))];
            for i in 0..20 {
                let key = format!("after/{i:03}");
                let outcome = put_with_retry(&via, 0, &target, key.as_bytes(), &value_of(&key), &RetryPolicy::THROUGH_OUTAGE).await;
                if !outcome.is_acknowledged() {
                    cluster.fail(format!("put {key} via node {node} after the election: {outcome:?}"));
                }
            }
            drop(stalled);
        })
        .await;
}

/// Writes `rows` rows of `value_bytes` bytes each through node 1, 1,000 per `Write`.
async fn load_rows(cluster: &Cluster, target: &KvTarget, rows: usize, value_bytes: usize) {
    let mut client = cluster.data_client(1);
    let value = vec![b'v'; value_bytes];
    for batch in 0..rows.div_ceil(1000) {
        let ops = (batch * 1000..((batch + 1) * 1000).min(rows))
            .map(|i| WriteOp {
                op: Some(write_op::Op::Put(PutOp {
                    key: format!("row/{i:06}").into_bytes(),
                    value: value.clone(),
                    family: target.family.clone(),
                })),
            })
            .collect();
        let req = WriteRequest { tenant: target.tenant.clone(), table: target.table.clone(), ops };
        client.write(req).await.unwrap_or_else(|e| cluster.fail(format!("write batch {batch}: {e}")));
    }
}

fn scan_all(target: &KvTarget) -> ScanRequest {
    ScanRequest { tenant: target.tenant.clone(), table: target.table.clone(), family: target.family.clone(), ..Default::default() }
}

/// A scan whose client stops reading ends with DEADLINE_EXCEEDED naming
/// `limits.scan_stall_timeout_ms` after the rows already sent, never with a clean end that
/// would pass for a complete scan; one whose client reads slowly ends the same way at
/// `limits.scan_duration_max_ms`; and the node-wide request cap answers RESOURCE_EXHAUSTED
/// naming `limits.node_requests_max` while streams hold every permit, and lets requests in
/// again once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_scan_ends_with_an_error_and_the_request_cap_refuses_then_recovers() {
    const NAME: &str = "a_stalled_scan_ends_with_an_error_and_the_request_cap_refuses_then_recovers";
    /// 10,000 rows of 1 KiB: about 10 MB per scan, more than the client's HTTP/2 window
    /// (2 MiB per stream), the scan's channel (4 chunks of 1 MiB) and the server's send
    /// buffer hold, so a client that does not read stalls the scan.
    const ROWS: usize = 10_000;
    const CAP: u64 = 8;
    let opts = ClusterOptions {
        limits: kho_cluster_tests::Limits {
            node_requests_max: Some(CAP),
            scan_stall_timeout_ms: Some(300),
            scan_duration_max_ms: Some(2_000),
            ..Default::default()
        },
        ..Default::default()
    };
    let cluster = Cluster::start(1, opts).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let target = setup_kv(&cluster, 1).await;
            load_rows(&cluster, &target, ROWS, 1024).await;

            // A scan read once, then left alone for longer than the stall timeout.
            let mut stream = cluster.data_client(1).scan(scan_all(&target)).await.expect("scan").into_inner();
            let first = stream.message().await.expect("first chunk").expect("a chunk");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut keys: Vec<Vec<u8>> = first.kvs.into_iter().map(|kv| kv.key).collect();
            let end = loop {
                match stream.message().await {
                    Ok(Some(chunk)) => keys.extend(chunk.kvs.into_iter().map(|kv| kv.key)),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            let Some(e) = end else {
                cluster.fail(format!("a scan stalled for 1.5 s ended cleanly after {} of {ROWS} rows", keys.len()));
            };
            assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
            assert!(e.message().contains("limits.scan_stall_timeout_ms"), "{e}");
            assert!(keys.len() < ROWS, "the stalled scan cannot have sent every row");
            let expected: Vec<Vec<u8>> = (0..keys.len()).map(|i| format!("row/{i:06}").into_bytes()).collect();
            assert_eq!(keys, expected, "the rows before the error are the scan's first rows, in order");
            println!("stalled scan: {} rows, then {:?}", keys.len(), e.code());

            // A client that reads a chunk every 200 ms (well within the stall timeout) still
            // cannot keep the scan going past limits.scan_duration_max_ms.
            let started = Instant::now();
            let mut stream = cluster.data_client(1).scan(scan_all(&target)).await.expect("scan").into_inner();
            let mut rows = 0usize;
            let end = loop {
                match stream.message().await {
                    Ok(Some(chunk)) => rows += chunk.kvs.len(),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let Some(e) = end else {
                cluster.fail(format!("a scan read at 5 chunks a second ended cleanly after {rows} of {ROWS} rows"));
            };
            assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
            assert!(e.message().contains("limits.scan_duration_max_ms"), "{e}");
            println!("slow reader: {rows} rows in {:?}, then {:?}", started.elapsed(), e.code());

            // Streams that are never read hold every permit of the node.
            let mut held = Vec::new();
            for i in 0..CAP {
                let mut c = cluster.new_data_clients().remove(0).1;
                let s = c.scan(scan_all(&target)).await.unwrap_or_else(|e| cluster.fail(format!("scan {i}: {e}")));
                held.push((c, s));
            }
            let refused = put_once(&mut cluster.data_client(1), &target, "refused").await;
            let e = refused.expect_err("a request over limits.node_requests_max must be refused");
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
            assert!(e.message().contains("limits.node_requests_max"), "{e}");
            drop(held);
            // The permits come back when the streams are gone (their resets reach the node).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match put_once(&mut cluster.data_client(1), &target, "after").await {
                    Ok(()) => break,
                    Err(e) if e.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => cluster.fail(format!("a request after the streams were dropped: {e}")),
                }
            }
        })
        .await;
}
