//! Forwarding is bounded in time (docs/API.md, "Deadlines"): a write sent through a follower
//! cut from the leader, which its client saw fail, is never applied after its deadline plus
//! the documented bound, however long the network held it; and a healed link leaves no
//! `RESOURCE_EXHAUSTED` behind (the HTTP/2 reset-stream flood).
//!
//! The proxy between nodes holds the bytes of a dropped link and delivers them when the link
//! passes again, as TCP retransmission does after an iptables `DROP` rule is removed
//! (cluster-tests/src/netproxy.rs). Each kind of cut (both directions; the follower's own
//! connections only) is made twice: short, healed before keepalive closes the connection
//! that holds the writes, so the leader receives them late on a live connection and only
//! their deadline stops them; and long, so that keepalive closes connections, the follower
//! opens new ones during the cut, and many forwarded calls end while the link is cut.
//!
//! Checked to fail: with the deadline check before proposing disabled (`Ctx::wait`), the
//! short cut ends with k0 holding the old value; with the code before deadlines were
//! forwarded, the same, and its long cut ends with `reached limit (20)` in the node logs,
//! RESOURCE_EXHAUSTED on heartbeats and `UNKNOWN: transport error` to small writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kho_cluster_tests::kv::batch_get_all;
use kho_cluster_tests::netproxy::LinkMode;
use kho_cluster_tests::{setup_kv, test_seed, Cluster, ClusterOptions, KvTarget, RetryPolicy};
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::{GetRequest, PutRequest};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// `raft.proposal_timeout_ms` of the test cluster: part of the documented bound, ms.
const PROPOSAL_TIMEOUT_MS: u64 = 500;
/// The nodes share one clock here: no skew to allow for, ms.
const CLOCK_SKEW_MS: u64 = 0;
/// Writes through the cut follower, each to a key of its own.
const CUT_WRITES: usize = 5;
/// A short cut: the writes through the follower go out at once with this deadline (their
/// `grpc-timeout`), ms, and the link heals as soon as the bound after it has passed and the
/// newer values are written, before keepalive gives up on the connection that holds them
/// (2 s without a byte received): that connection then delivers them to the leader.
const SHORT_CUT_DEADLINE_MS: u64 = 500;
/// The heal of a short cut must come sooner than this after the cut, ms, or the check
/// above did not happen (keepalive closed the connection first): the test then fails.
const SHORT_CUT_MAX_MS: u64 = 1_800;
/// A long cut: the writes go out one after another with this deadline, ms, over several
/// seconds, so the later ones go out on connections the follower opens during the cut.
const LONG_CUT_DEADLINE_MS: u64 = 1_000;
/// Clients that keep writing through the cut follower with a short deadline meanwhile, as
/// a loaded node would (each failed write is a forwarded call the follower gave up on).
const FILLER_CLIENTS: usize = 4;
/// The filler writes' deadline, ms.
const FILLER_DEADLINE_MS: u64 = 200;
/// After a heal: time for the bytes the proxy held to reach the leader, ms.
const HEAL_SETTLE_MS: u64 = 3_000;
/// Small writes through every node, started at the moment of each heal.
const PUTS_AFTER_HEAL: usize = 200;
/// Concurrent clients per node for those writes.
const PUT_CLIENTS_PER_NODE: usize = 4;
/// Deadline of every write expected to succeed, ms.
const HEALTHY_DEADLINE_MS: u64 = 5_000;
/// Guard around every call, beyond its own deadline, so a hung call fails the test, ms.
const CALL_GUARD_MS: u64 = 5_000;

/// A Put with the client's deadline sent as `grpc-timeout`.
async fn put(client: &DataClient<Channel>, target: &KvTarget, key: &[u8], value: &[u8], deadline_ms: u64) -> Result<u64, Status> {
    let mut req = Request::new(PutRequest {
        tenant: target.tenant.clone(),
        table: target.table.clone(),
        key: key.to_vec(),
        value: value.to_vec(),
        family: target.family.clone(),
    });
    req.set_timeout(Duration::from_millis(deadline_ms));
    let mut client = client.clone();
    match tokio::time::timeout(Duration::from_millis(deadline_ms + CALL_GUARD_MS), client.put(req)).await {
        Err(_) => Err(Status::deadline_exceeded("cluster-tests: the call hung past its deadline")),
        Ok(r) => r.map(|r| r.into_inner().header.map_or(0, |h| h.revision)),
    }
}

/// How a write through the cut follower failed, or why that failure is not allowed.
/// tonic reports the client's own deadline as CANCELLED "Timeout expired" (other gRPC
/// libraries say DEADLINE_EXCEEDED); the server's answers must be DEADLINE_EXCEEDED or
/// UNAVAILABLE, never UNKNOWN or a CANCELLED of its own.
fn failure_kind(s: &Status) -> Result<&'static str, String> {
    match s.code() {
        Code::DeadlineExceeded => Ok("DEADLINE_EXCEEDED"),
        Code::Unavailable => Ok("UNAVAILABLE"),
        Code::Cancelled if s.message() == "Timeout expired" => Ok("the client's own deadline"),
        _ => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn key(phase: &str, what: &str) -> Vec<u8> {
    format!("{phase}/{what}").into_bytes()
}

/// Writes through a follower with a short deadline until `stop`; returns how many it sent
/// and every answer that was not a plain failure of the forwarding (an acknowledgement
/// would be a bug: the follower cannot reach the leader).
async fn filler(client: DataClient<Channel>, target: KvTarget, phase: String, worker: usize, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let (mut sent, mut wrong) = (0u64, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let k = key(&phase, &format!("filler/{worker}/{sent}"));
        match put(&client, &target, &k, b"filler", FILLER_DEADLINE_MS).await {
            Ok(revision) => wrong.push(format!("{}: acknowledged at revision {revision}", String::from_utf8_lossy(&k))),
            Err(s) => {
                if let Err(why) = failure_kind(&s) {
                    wrong.push(format!("{}: {why}", String::from_utf8_lossy(&k)));
                }
            }
        }
        sent += 1;
    }
    (sent, wrong)
}

/// `PUTS_AFTER_HEAL` small Puts through every node at once; every failure, as text.
async fn puts_through_every_node(cluster: &Cluster, target: &KvTarget, phase: &str) -> Vec<String> {
    let mut tasks = Vec::new();
    for id in cluster.ids() {
        for worker in 0..PUT_CLIENTS_PER_NODE {
            let (client, target, phase) = (cluster.data_client(id), target.clone(), phase.to_string());
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in (worker..PUTS_AFTER_HEAL).step_by(PUT_CLIENTS_PER_NODE) {
                    let k = key(&phase, &format!("after-heal/{id}/{i}"));
                    if let Err(s) = put(&client, &target, &k, b"small!", HEALTHY_DEADLINE_MS).await {
                        failures.push(format!("via node {id}, {}: {:?}: {}", String::from_utf8_lossy(&k), s.code(), s.message()));
                    }
                }
                failures
            }));
        }
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("a writer task"));
    }
    failures
}

/// One failed write through the cut follower: when it was sent and when it failed.
struct Failed {
    invoked: Instant,
    failed_at: Instant,
    deadline_ms: u64,
}

impl Failed {
    /// The documented bound (docs/API.md, "Deadlines"): the deadline,
    /// `raft.proposal_timeout_ms` and the clock skew, counted from the client's failure or
    /// its deadline, whichever is later.
    fn never_applied_after(&self) -> Instant {
        let deadline = self.invoked + Duration::from_millis(self.deadline_ms);
        deadline.max(self.failed_at) + Duration::from_millis(PROPOSAL_TIMEOUT_MS + CLOCK_SKEW_MS)
    }
}

/// One write through the cut follower, which must fail with a documented code.
async fn write_through_cut(
    cluster: &Cluster,
    via: &DataClient<Channel>,
    target: &KvTarget,
    phase: &str,
    i: usize,
    deadline_ms: u64,
) -> Failed {
    let k = key(phase, &format!("k{i}"));
    let invoked = Instant::now();
    let r = put(via, target, &k, b"old: sent through the cut follower", deadline_ms).await;
    let failed_at = Instant::now();
    match r {
        Ok(revision) => cluster.fail(format!("{phase}: a write through the cut follower was acknowledged at revision {revision}")),
        Err(s) => match failure_kind(&s) {
            Ok(kind) => println!("{phase}: k{i} failed after {} ms: {kind}: {}", (failed_at - invoked).as_millis(), s.message()),
            Err(why) => cluster.fail(format!("{phase}: k{i} through the cut follower: an undocumented failure: {why}")),
        },
    }
    Failed { invoked, failed_at, deadline_ms }
}

/// How a cut is made and how long it lasts.
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// Both directions, or only the follower's own connections to the leader.
    both_directions: bool,
    /// Long (writes one after another, several seconds) or short (writes at once, healed
    /// before keepalive closes the connection that holds them).
    long: bool,
}

/// Tries of the warm-up write before a cut, count.
const WARM_UP_ATTEMPTS: usize = 10;

/// Cuts `follower` from `leader`, writes through the follower while the link is cut,
/// writes newer values through the leader once the documented bound has passed, heals,
/// and checks that no failed write was applied late (none overwrote a newer one) and that
/// the heal left every node serving small writes.
async fn cut_write_heal(cluster: &Cluster, target: &KvTarget, phase: &str, leader: u64, follower: u64, cut: Cut) {
    let net = cluster.network();
    let via_follower = cluster.data_client(follower);
    let via_leader = cluster.data_client(leader);
    // A forwarded write just before the cut: the follower's connection to the leader has
    // just received bytes, so keepalive gives up on it 2 s after the cut, not sooner.
    // Retried on UNAVAILABLE: right after the shard's creation its first elections may
    // still move the leader.
    let mut warm = Err(tonic::Status::unavailable("not tried"));
    for _ in 0..WARM_UP_ATTEMPTS {
        warm = put(&via_follower, target, &key(phase, "warm-up"), b"w", HEALTHY_DEADLINE_MS).await;
        match &warm {
            Err(s) if s.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => break,
        }
    }
    if let Err(s) = warm {
        cluster.fail(format!("{phase}: a write through follower {follower} before the cut: {s:?}"));
    }
    if cut.both_directions {
        net.partition(&[follower], &[leader]);
    } else {
        net.set(follower, leader, LinkMode::Drop);
    }
    let cut_at = Instant::now();
    println!("{phase}: follower {follower}, leader {leader}: {}", net.describe());

    let stop = Arc::new(AtomicBool::new(false));
    let fillers: Vec<_> = (0..FILLER_CLIENTS)
        .map(|w| tokio::spawn(filler(via_follower.clone(), target.clone(), phase.to_string(), w, stop.clone())))
        .collect();

    // Every write through the cut follower fails; record when.
    let failed: Vec<Failed> = if cut.long {
        let mut failed = Vec::new();
        for i in 0..CUT_WRITES {
            failed.push(write_through_cut(cluster, &via_follower, target, phase, i, LONG_CUT_DEADLINE_MS).await);
        }
        failed
    } else {
        let writes = (0..CUT_WRITES).map(|i| write_through_cut(cluster, &via_follower, target, phase, i, SHORT_CUT_DEADLINE_MS));
        futures::future::join_all(writes).await
    };
    let late_bound = failed.iter().map(Failed::never_applied_after).max().expect("writes were sent");
    stop.store(true, Ordering::SeqCst);
    let (mut filler_sent, mut filler_wrong) = (0, Vec::new());
    for f in fillers {
        let (sent, wrong) = f.await.expect("a filler task");
        filler_sent += sent;
        filler_wrong.extend(wrong);
    }
    if !filler_wrong.is_empty() {
        cluster.fail(format!("{phase}: filler writes through the cut follower: {:#?}", &filler_wrong[..filler_wrong.len().min(10)]));
    }
    println!("{phase}: {filler_sent} filler writes through follower {follower} with a {FILLER_DEADLINE_MS} ms deadline, all failed");
    // The filler writes' bound has passed too: the last one started before `stop`.
    let late_bound = late_bound.max(Instant::now() + Duration::from_millis(FILLER_DEADLINE_MS + PROPOSAL_TIMEOUT_MS + CLOCK_SKEW_MS));
    tokio::time::sleep_until(late_bound.into()).await;

    // Newer values through the leader, acknowledged, while the link is still cut.
    let status = cluster.node_status(leader).await.unwrap_or_else(|e| cluster.fail(format!("{phase}: NodeStatus of {leader}: {e:?}")));
    // The data shard's role on the node (the writes are the shard's).
    let role = status.shards.first().map(|s| s.role.clone()).unwrap_or_else(|| "no shard".into());
    if role != "leader" {
        cluster.fail(format!("{phase}: node {leader} lost the shard's leadership during the cut ({role}): raise the election timeouts"));
    }
    let newer =
        (0..CUT_WRITES).map(|i| {
            let via_leader = &via_leader;
            async move {
                (i, put(via_leader, target, &key(phase, &format!("k{i}")), b"new: acknowledged by the leader", HEALTHY_DEADLINE_MS).await)
            }
        });
    for (i, r) in futures::future::join_all(newer).await {
        if let Err(s) = r {
            cluster.fail(format!("{phase}: the newer write of k{i} through leader {leader}: {:?}: {}", s.code(), s.message()));
        }
    }
    println!("{phase}: newer values of k0..k{} acknowledged by leader {leader}; healing", CUT_WRITES - 1);

    // (c): the heal, with small writes through every node from its first moment.
    if cut.both_directions {
        net.heal();
    } else {
        net.set(follower, leader, LinkMode::Pass);
    }
    let healed = Instant::now();
    let cut_ms = (healed - cut_at).as_millis();
    println!("{phase}: healed after {cut_ms} ms");
    if !cut.long && cut_ms > u128::from(SHORT_CUT_MAX_MS) {
        cluster.fail(format!(
            "{phase}: the short cut lasted {cut_ms} ms, over {SHORT_CUT_MAX_MS} ms: keepalive may have closed the connection holding the writes, so their late arrival was not tested"
        ));
    }
    let failures = puts_through_every_node(cluster, target, phase).await;
    let exhausted = failures.iter().filter(|f| f.contains("ResourceExhausted")).count();
    println!(
        "{phase}: {} small writes through every node after the heal in {} ms: {} failed, {exhausted} of them RESOURCE_EXHAUSTED",
        PUTS_AFTER_HEAL * cluster.ids().len(),
        healed.elapsed().as_millis(),
        failures.len()
    );
    if !failures.is_empty() {
        cluster.fail(format!("{phase}: small writes after the heal failed: {:#?}", &failures[..failures.len().min(10)]));
    }

    // Whatever the network held has arrived by now; then every node applies the same log.
    tokio::time::sleep_until((healed + Duration::from_millis(HEAL_SETTLE_MS)).into()).await;
    let sums = cluster.wait_applied_equal(Duration::from_secs(60)).await;
    println!("{phase}: every node at applied index {}", sums[0].applied_index);

    for id in cluster.ids() {
        let client = cluster.data_client(id);
        for i in 0..CUT_WRITES {
            let k = key(phase, &format!("k{i}"));
            let mut c = client.clone();
            let req = GetRequest {
                tenant: target.tenant.clone(),
                table: target.table.clone(),
                key: k,
                family: target.family.clone(),
                ..Default::default()
            };
            let got = c.get(req).await.unwrap_or_else(|s| cluster.fail(format!("{phase}: Get k{i} via node {id}: {s:?}"))).into_inner();
            let value = String::from_utf8_lossy(&got.value).to_string();
            if !got.found || !value.starts_with("new:") {
                cluster.fail(format!(
                    "{phase}: k{i} via node {id} holds {value:?} (found {}): the write that failed through follower {follower} was applied after the newer acknowledged one",
                    got.found
                ));
            }
        }
    }
    // No filler write may have been applied: each failed long before the heal.
    let keys: Vec<Vec<u8>> =
        (0..FILLER_CLIENTS).flat_map(|w| (0..filler_sent).map(move |n| key(phase, &format!("filler/{w}/{n}")))).collect();
    let items = batch_get_all(&via_leader, target, &keys, &RetryPolicy::STEADY)
        .await
        .unwrap_or_else(|s| cluster.fail(format!("{phase}: BatchGet of filler keys: {s:?}")));
    let applied: Vec<String> = items.into_iter().filter(|i| i.found).map(|i| String::from_utf8_lossy(&i.key).to_string()).collect();
    if !applied.is_empty() {
        cluster.fail(format!(
            "{phase}: {} filler writes that failed through the cut follower were applied after the heal, e.g. {:?}",
            applied.len(),
            &applied[..applied.len().min(5)]
        ));
    }
    println!("{phase}: every node reads the newer values; none of the failed writes was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_failed_through_a_cut_follower_is_never_applied_late() {
    const NAME: &str = "a_write_that_failed_through_a_cut_follower_is_never_applied_late";
    let seed = test_seed(NAME);
    let opts = ClusterOptions {
        network_faults: true,
        proposal_timeout_ms: Some(PROPOSAL_TIMEOUT_MS),
        // A follower cut off in both directions must not start an election during the cut
        // (under 6 s): the newer writes go through the same leader, and the held writes
        // reach it when the link heals.
        election_timeout_min_ms: 15_000,
        election_timeout_max_ms: 18_000,
        ready_wait_ms: 60_000,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, opts).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let target = setup_kv(&cluster, 1).await;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let cuts = [
                ("both-directions-short", Cut { both_directions: true, long: false }),
                ("both-directions-long", Cut { both_directions: true, long: true }),
                ("follower-to-leader-short", Cut { both_directions: false, long: false }),
                ("follower-to-leader-long", Cut { both_directions: false, long: true }),
            ];
            for (phase, cut) in cuts {
                // The data shard's leader: the writes cut off from it are the shard's.
                let leader = cluster.shard_leader().await;
                let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
                let follower = followers[rng.random_range(0..followers.len())];
                cut_write_heal(&cluster, &target, phase, leader, follower, cut).await;
            }
        })
        .await;
}

/// A deadline header in the past, or one that is not a number, as a client could send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_refused_and_a_malformed_deadline_named() {
    const NAME: &str = "a_request_past_its_deadline_is_refused_and_a_malformed_deadline_named";
    const HEADER: &str = "kho-deadline-unix-ms";
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(120), async {
            let target = setup_kv(&cluster, 1).await;
            let leader = cluster.shard_leader().await;
            let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
            let with_header = |value: &str, key: &[u8]| {
                let mut req = Request::new(PutRequest {
                    tenant: target.tenant.clone(),
                    table: target.table.clone(),
                    key: key.to_vec(),
                    value: b"v".to_vec(),
                    family: target.family.clone(),
                });
                req.metadata_mut().insert(HEADER, value.parse().expect("an ASCII header value"));
                req
            };
            for via in [leader, follower] {
                let k = format!("expired-via-{via}").into_bytes();
                let mut c = cluster.data_client(via);
                let s = c.put(with_header(&(now_ms - 1_000).to_string(), &k)).await.expect_err("a write past its deadline");
                assert_eq!(s.code(), Code::DeadlineExceeded, "via node {via}: {s:?}");
                assert!(s.message().contains("was not applied"), "via node {via}: {}", s.message());
                let mut get = Request::new(GetRequest {
                    tenant: target.tenant.clone(),
                    table: target.table.clone(),
                    key: k.clone(),
                    family: target.family.clone(),
                    ..Default::default()
                });
                get.metadata_mut().insert(HEADER, (now_ms - 1_000).to_string().parse().expect("digits"));
                let s = c.get(get).await.expect_err("a read past its deadline");
                assert_eq!(s.code(), Code::DeadlineExceeded, "via node {via}: {s:?}");
                assert!(s.message().contains("nothing was read"), "via node {via}: {}", s.message());
                let got = c
                    .get(GetRequest {
                        tenant: target.tenant.clone(),
                        table: target.table.clone(),
                        key: k,
                        family: target.family.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| cluster.fail(format!("Get via node {via}: {s:?}")))
                    .into_inner();
                assert!(!got.found, "a write refused past its deadline via node {via} was applied");

                let s = c.put(with_header("soon", b"malformed")).await.expect_err("a malformed deadline");
                assert_eq!(s.code(), Code::InvalidArgument, "via node {via}: {s:?}");
                assert!(s.message().starts_with(HEADER), "via node {via}: {}", s.message());
                // A deadline in the future is honoured like a grpc-timeout.
                let k = format!("in-time-via-{via}").into_bytes();
                c.put(with_header(&(now_ms + 60_000).to_string(), &k))
                    .await
                    .unwrap_or_else(|s| cluster.fail(format!("a write with a deadline a minute ahead via node {via}: {s:?}")));
            }
            println!("past deadlines refused and malformed ones named via the leader {leader} and the follower {follower}");
        })
        .await;
}
