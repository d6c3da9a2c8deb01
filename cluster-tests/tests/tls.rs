//! TLS on both listeners (docs/SECURITY.md, "TLS"), with real processes and `kho cert`:
//! a plaintext client of a TLS port fails cleanly and the node goes on; only a node
//! certificate of the cluster's CA, not revoked, naming the node it claims to be, can speak
//! Raft on the peer listener (a client certificate, another CA's node certificate or a
//! revoked one cannot); and certificates, CA bundle and CRL reload when their content
//! changes, while a writer on the cluster sees no failure beyond retries, a half-written
//! file keeps the last good configuration.
//!
//! Checked to fail: with the reload digest over the certificate file only (as TiKV's mtime
//! check), the CA-only change is never seen and the new CA's client is refused ("not
//! within 10000 ms"). Without the peer listener's node check (`tls::handshake`) the client
//! certificate would reach the Raft service (`PERMISSION_DENIED` from `check_sender`)
//! instead of being refused at the handshake.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kho_cluster_tests::{kho_binary, setup_kv, Cluster, ClusterOptions, RetryPolicy, TokenHeader, TokenSvc};
use kho_proto::v1::admin_client::AdminClient;
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::raft_transport_client::RaftTransportClient;
use kho_proto::v1::{
    ClusterStatusRequest, CreateGrantRequest, CreateTokenRequest, Grant, Permission, PutRequest, RaftMessage, RaftMessageKind,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// Longest any one test body runs, seconds.
const TEST_LIMIT_S: u64 = 240;
/// `tls.reload_interval_ms` of the test clusters: short, so a change is seen quickly.
const RELOAD_MS: u64 = 300;
/// How long a changed file may take to be in use: a few reload intervals, milliseconds.
const RELOAD_WAIT_MS: u64 = 10_000;
/// Timeout of one connection attempt or call of the test's own clients, milliseconds.
const CALL_TIMEOUT_MS: u64 = 5_000;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Runs `kho cert` with `args` and `--dir dir`.
fn cert(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(kho_binary()).arg("cert").args(args).arg("--dir").arg(dir).output().expect("run kho cert");
    assert!(out.status.success(), "kho cert {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Replaces `to` with `from`'s bytes through a rename, as a deployment tool would.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, read(from)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A TLS endpoint trusting `ca` and presenting `identity` (certificate and key files).
fn tls_endpoint(addr: &str, ca: &[u8], identity: Option<(&Path, &Path)>) -> Endpoint {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(read(c), read(k)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
}

/// One Raft message to `addr` over `endpoint`: a vote request with a payload no node can
/// decode, so a message that passes every check is answered INVALID_ARGUMENT.
async fn raft_call(endpoint: Endpoint, from: u64) -> Result<(), tonic::Status> {
    let channel = match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(tonic::Status::unavailable(format!("connect: {e:?}"))),
        Err(_) => return Err(tonic::Status::deadline_exceeded("connect timed out")),
    };
    let mut c = RaftTransportClient::new(channel);
    let m = RaftMessage { group_id: 0, kind: RaftMessageKind::Vote as i32, payload: vec![0xff; 3].into(), from };
    c.call(m).await.map(|_| ())
}

/// Whether a Raft call got past the TLS and certificate checks (answered, or refused for
/// its payload only).
trait PastChecks {
    fn is_ok_or_invalid(&self) -> bool;
}

impl PastChecks for Result<(), tonic::Status> {
    fn is_ok_or_invalid(&self) -> bool {
        match self {
            Ok(()) => true,
            Err(s) => s.code() == Code::InvalidArgument,
        }
    }
}

async fn cluster_status(endpoint: Endpoint) -> Result<u64, tonic::Status> {
    let channel = match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(tonic::Status::unavailable(format!("connect: {e:?}"))),
        Err(_) => return Err(tonic::Status::deadline_exceeded("connect timed out")),
    };
    AdminClient::new(channel).cluster_status(ClusterStatusRequest {}).await.map(|r| r.into_inner().leader_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_node_certificates_speak_raft_and_plaintext_clients_fail_cleanly() {
    // Node 4 is a spare: its certificate is of the cluster's CA; it never joins.
    let opts = ClusterOptions { spare_nodes: 1, tls_crl: true, tls_reload_interval_ms: Some(RELOAD_MS), ..ClusterOptions::default() };
    let cluster = Cluster::start(3, opts).await;
    let tls = cluster.tls().expect("TLS is on by default").clone();
    let ca = read(&tls.ca_cert());
    let dir = &tls.dir;
    cluster
        .bounded("raft admission", Duration::from_secs(TEST_LIMIT_S), async {
            let peer = cluster.peer_addr(1).to_string();
            let node = |id: u64| (dir.join(format!("node-{id}.crt")), dir.join(format!("node-{id}.key")));

            // A node certificate of a member, naming itself: the message gets through every
            // check and fails only on its payload.
            let (c2, k2) = node(2);
            let r = raft_call(tls_endpoint(&peer, &ca, Some((&c2, &k2))), 2).await;
            assert_eq!(r.as_ref().map_err(|s| s.code()), Err(Code::InvalidArgument), "node 2's certificate, from 2: {r:?}");
            // The same certificate claiming to be node 3.
            let r = raft_call(tls_endpoint(&peer, &ca, Some((&c2, &k2))), 3).await;
            let e = r.expect_err("node 2's certificate cannot send as node 3");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("node 3") && e.message().contains("node 2"), "{e:?}");

            // Node 4's certificate, not revoked, gets through (membership is not checked:
            // a lagging node must take members it has not heard of yet); revoked, it is
            // refused at the handshake like the rest below.
            let (c4, k4) = node(4);
            let r = raft_call(tls_endpoint(&peer, &ca, Some((&c4, &k4))), 4).await;
            assert_eq!(r.as_ref().map_err(|s| s.code()), Err(Code::InvalidArgument), "node 4's certificate before revocation: {r:?}");
            cert(dir, &["revoke", c4.to_str().expect("UTF-8 path")]);
            let deadline = Instant::now() + Duration::from_millis(RELOAD_WAIT_MS);
            while raft_call(tls_endpoint(&peer, &ca, Some((&c4, &k4))), 4).await.is_ok_or_invalid() {
                assert!(Instant::now() < deadline, "node 4's revoked certificate still speaks Raft after {RELOAD_WAIT_MS} ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }

            // Refused at the handshake, before any message: the admin's client certificate,
            // no certificate at all, and node 4's revoked certificate.
            let admin = (tls.client_cert("admin"), tls.client_key("admin"));
            for (what, ep) in [
                ("a client certificate", tls_endpoint(&peer, &ca, Some((&admin.0, &admin.1)))),
                ("no client certificate", tls_endpoint(&peer, &ca, None)),
                ("the revoked certificate of node 4", tls_endpoint(&peer, &ca, Some((&c4, &k4)))),
            ] {
                let r = raft_call(ep, 4).await;
                let e = r.expect_err(what);
                assert!(matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{what}: {e:?}");
            }

            // A node certificate from another CA, for an id of the cluster.
            let other = cluster.dir().join("other-ca");
            cert(&other, &["ca"]);
            cert(&other, &["node", "--id", "2"]);
            let other_ca = read(&other.join("ca.crt"));
            let r = raft_call(tls_endpoint(&peer, &ca, Some((&other.join("node-2.crt"), &other.join("node-2.key")))), 2).await;
            let e = r.expect_err("another CA's node certificate");
            assert!(matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{e:?}");
            // ... and a client trusting only that CA does not accept the node either.
            let r = cluster_status(tls_endpoint(cluster.addr(1), &other_ca, None)).await;
            assert!(r.is_err(), "a client trusting another CA accepted the node: {r:?}");

            // The client listener serves no Raft at all, whatever the certificate.
            let r = raft_call(tls_endpoint(cluster.addr(1), &ca, Some((&c2, &k2))), 2).await;
            assert_eq!(r.map_err(|s| s.code()), Err(Code::Unimplemented), "Raft on the client listener");

            // Plaintext to either TLS port: a clean, prompt failure; the node goes on.
            for addr in [cluster.addr(1).to_string(), peer.clone()] {
                let started = Instant::now();
                let ep = Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
                    .timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                let r = cluster_status(ep).await;
                assert!(r.is_err(), "plaintext to the TLS port {addr} answered: {r:?}");
                assert!(started.elapsed() < Duration::from_millis(CALL_TIMEOUT_MS + 1_000), "plaintext to {addr} hung");
            }
            // A TLS client without a certificate completes the handshake; without a token it
            // is no principal.
            let r = cluster_status(tls_endpoint(cluster.addr(1), &ca, None)).await;
            assert_eq!(r.map_err(|s| s.code()), Err(Code::Unauthenticated), "a TLS client without credentials");
            let admin = tls.client_cert("admin");
            let leader = cluster_status(tls_endpoint(cluster.addr(1), &ca, Some((&admin, &tls.client_key("admin")))))
                .await
                .expect("the admin's TLS client");
            assert_ne!(leader, 0, "the cluster has a leader");
            cluster.check_alive();
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_of_another_ca_cannot_join() {
    // Node 4 is a spare, started with a CA, certificate and key of its own CA.
    let cluster = Cluster::start(3, ClusterOptions { spare_nodes: 1, ..ClusterOptions::default() }).await;
    let target = setup_kv(&cluster, 1).await;
    cluster
        .bounded("a node of another CA", Duration::from_secs(TEST_LIMIT_S), async {
            let other = cluster.dir().join("other-ca");
            cert(&other, &["ca"]);
            cert(&other, &["node", "--id", "4"]);
            cert(&other, &["client", "--name", "admin"]);
            let config = std::fs::read_to_string(cluster.config_path(4)).unwrap();
            let tls_dir = cluster.tls().expect("TLS is on by default").dir.to_str().unwrap().to_string();
            let config = config.replace(&tls_dir, other.to_str().unwrap());
            assert!(config.contains("other-ca/node-4.crt"), "node 4's config names the other CA's files:\n{config}");
            std::fs::write(cluster.config_path(4), config).unwrap();
            cluster.launch(4);

            // AddNode: the leader cannot open a connection to node 4 (its certificate is of
            // another CA), so node 4 never catches up, is not made a voter, and the call
            // says so (raft::node::LEARNER_CATCH_UP_WAIT_MS, 30 s).
            let mut admin = cluster.admin_client(1);
            let add = kho_proto::v1::AddNodeRequest { node_id: 4, address: cluster.advertise_addr(4).to_string() };
            let r = tokio::time::timeout(Duration::from_secs(60), admin.add_node(add)).await;
            match r {
                Ok(Err(s)) if s.code() == Code::Unavailable && s.message().contains("did not catch up") => {}
                other => cluster.fail(format!("AddNode of a node of another CA: {other:?}")),
            }
            let status = ok_status(&cluster).await;
            assert!(!status.contains("voters: [1, 2, 3, 4]"), "node 4 became a voter: {status}");

            // Node 4 has received nothing: it answers (to a client of its own CA) with no
            // log and no term.
            let other_ca = read(&other.join("ca.crt"));
            let other_admin = (other.join("client-admin.crt"), other.join("client-admin.key"));
            let status = kho_cluster_tests::retry_call(&RetryPolicy::STEADY, |_| {
                let mut c =
                    AdminClient::new(tls_endpoint(cluster.addr(4), &other_ca, Some((&other_admin.0, &other_admin.1))).connect_lazy());
                async move { c.node_status(kho_proto::v1::NodeStatusRequest {}).await }
            })
            .await
            .unwrap_or_else(|e| cluster.fail(format!("node 4's status: {e}")));
            assert_eq!((status.last_log_index, status.term), (0, 0), "node 4 received Raft state from the cluster: {status:?}");
            // The cluster goes on without it.
            let r = kho_cluster_tests::retry_call(&RetryPolicy::STEADY, |_| {
                let mut c = cluster.data_client(2);
                let req = PutRequest {
                    tenant: target.tenant.clone(),
                    table: target.table.clone(),
                    family: target.family.clone(),
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                };
                async move { c.put(req).await }
            })
            .await;
            assert!(r.is_ok(), "a write with node 4 refused: {r:?}");
            // The leader says why: node 4's certificate is of an issuer it does not know.
            let said =
                [1, 2, 3].iter().any(|&id| std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default().contains("UnknownIssuer"));
            assert!(said, "no node's log names the unknown issuer of node 4's certificate");
        })
        .await;
}

/// The meta group's voters as node 1 reports them, as text.
async fn ok_status(cluster: &Cluster) -> String {
    let r = cluster.cluster_status(1).await.unwrap_or_else(|e| cluster.fail(format!("ClusterStatus: {e}")));
    let voters: Vec<u64> = r.nodes.iter().filter(|n| n.role == "leader" || n.role == "follower").map(|n| n.node_id).collect();
    format!("voters: {voters:?}")
}

/// Files of one node certificate: (certificate, key).
fn node_files(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    (dir.join(format!("node-{id}.crt")), dir.join(format!("node-{id}.key")))
}

/// Whether a new connection to `addr` trusting `ca`, presenting `id`, gets an answer
/// from the node (without a certificate: that it names no principal).
async fn accepted(addr: &str, ca: &[u8], id: Option<&(PathBuf, PathBuf)>) -> bool {
    match cluster_status(tls_endpoint(addr, ca, id.map(|(c, k)| (c.as_path(), k.as_path())))).await {
        Ok(_) => true,
        Err(s) => id.is_none() && s.code() == Code::Unauthenticated,
    }
}

/// Waits at most RELOAD_WAIT_MS until `accepted` says `want`.
async fn wait_accepted(cluster: &Cluster, what: &str, addr: &str, ca: &[u8], id: Option<&(PathBuf, PathBuf)>, want: bool) {
    let deadline = Instant::now() + Duration::from_millis(RELOAD_WAIT_MS);
    while accepted(addr, ca, id).await != want {
        if Instant::now() > deadline {
            cluster.fail(format!("{what}: not within {RELOAD_WAIT_MS} ms"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token for principal `writer`, with read and write on `target`'s tenant, usable on
/// every node (each node confirms its grants within a second or so of the grant).
async fn writer_token(cluster: &Cluster, target: &kho_cluster_tests::KvTarget) -> String {
    let mut admin = cluster.admin_client(1);
    let t = admin
        .create_token(CreateTokenRequest { principal: "writer".into(), ttl_seconds: 3_600, note: String::new() })
        .await
        .unwrap_or_else(|e| cluster.fail(format!("CreateToken: {e}")))
        .into_inner()
        .token;
    let grant = Grant {
        principal: "writer".into(),
        tenant: target.tenant.clone(),
        permissions: vec![Permission::Read as i32, Permission::Write as i32],
        ..Default::default()
    };
    admin.create_grant(CreateGrantRequest { grant: Some(grant) }).await.unwrap_or_else(|e| cluster.fail(format!("CreateGrant: {e}")));
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_ca_and_crl_reload_by_content_under_load() {
    let opts = ClusterOptions { tls_reload_interval_ms: Some(RELOAD_MS), tls_crl: true, ..ClusterOptions::default() };
    let cluster = Cluster::start(3, opts).await;
    let tls = cluster.tls().expect("TLS is on by default").clone();
    let dir = tls.dir.clone();
    let target = setup_kv(&cluster, 1).await;
    cluster
        .bounded("certificate rotation", Duration::from_secs(TEST_LIMIT_S), async {
            // The next CA and its certificates, made up front; the leaves valid for 10
            // minutes, as a short-lived-certificate deployment rotates them.
            let new = cluster.dir().join("tls-new");
            cert(&new, &["ca"]);
            cert(&new, &["client", "--name", "admin", "--valid-for", "10m"]);
            for id in cluster.ids() {
                cert(&new, &["node", "--id", &id.to_string(), "--valid-for", "10m"]);
            }
            let ca1 = read(&tls.ca_cert());
            let ca2 = read(&new.join("ca.crt"));
            let bundle = [ca1.clone(), ca2.clone()].concat();

            // A writer through every node for the whole test, on connections of its own that
            // trust both CAs and present no certificate (a token names its principal); it
            // reconnects as connections end. It must never fail beyond retries.
            let token = writer_token(&cluster, &target).await;
            cluster.wait_grants_current(&token).await;
            let stop = Arc::new(AtomicBool::new(false));
            let (written, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let writer = {
                let header = TokenHeader(Some(format!("Bearer {token}").parse().unwrap()));
                let clients: Vec<DataClient<TokenSvc>> = cluster
                    .ids()
                    .iter()
                    .map(|&id| DataClient::with_interceptor(tls_endpoint(cluster.addr(id), &bundle, None).connect_lazy(), header.clone()))
                    .collect();
                let (stop, written, failed, target) = (stop.clone(), written.clone(), failed.clone(), target.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = clients[(i % clients.len() as u64) as usize].clone();
                        let req = PutRequest {
                            tenant: target.tenant.clone(),
                            table: target.table.clone(),
                            family: target.family.clone(),
                            key: format!("k{i:06}").into_bytes(),
                            value: b"v".to_vec(),
                        };
                        let r = kho_cluster_tests::retry_call(&RetryPolicy::STEADY, |_| {
                            let (mut c, req) = (c.clone(), req.clone());
                            async move { c.put(req).await }
                        })
                        .await;
                        match r {
                            Ok(_) => written.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("write k{i:06} failed: {e:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            };
            let addr = cluster.addr(1).to_string();
            let admin = (tls.client_cert("admin"), tls.client_key("admin"));
            let new_admin = (new.join("client-admin.crt"), new.join("client-admin.key"));
            assert!(accepted(&addr, &ca1, Some(&admin)).await, "the admin connects before any change");

            // 1. A half-written certificate: the node keeps its last good configuration.
            let (c1, _) = node_files(&dir, 1);
            let good = read(&c1);
            let tmp = c1.with_extension("half");
            std::fs::write(&tmp, &good[..good.len() / 2]).unwrap();
            std::fs::rename(&tmp, &c1).unwrap();
            let log_has = |text: &str| std::fs::read_to_string(cluster.log_path(1)).unwrap_or_default().contains(text);
            let deadline = Instant::now() + Duration::from_millis(RELOAD_WAIT_MS);
            while !log_has("keeping the configuration loaded before") {
                assert!(Instant::now() < deadline, "node 1 does not say it keeps its configuration after a half-written certificate");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(accepted(&addr, &ca1, Some(&admin)).await, "a half-written certificate took the node's TLS down");
            std::fs::write(&tmp, &good).unwrap();
            std::fs::rename(&tmp, &c1).unwrap();

            // 2. CA rotation, step one: only the CA bundle changes (old + new CA). A client
            // certificate of the new CA is then accepted: the CA-only change was seen.
            assert!(!accepted(&addr, &ca1, Some(&new_admin)).await, "a client certificate of a CA not yet trusted is accepted");
            let tmp = dir.join("ca.bundle");
            std::fs::write(&tmp, &bundle).unwrap();
            std::fs::rename(&tmp, tls.ca_cert()).unwrap();
            wait_accepted(&cluster, "the new CA's client certificate after a CA-only change", &addr, &ca1, Some(&new_admin), true).await;

            // Step two: every node gets a certificate of the new CA; a client trusting only
            // the new CA then accepts them.
            assert!(!accepted(&addr, &ca2, None).await, "node 1 presents a certificate of the new CA too early");
            for id in cluster.ids() {
                let (nc, nk) = node_files(&new, id);
                let (c, k) = node_files(&dir, id);
                install(&nk, &k);
                install(&nc, &c);
            }
            for id in cluster.ids() {
                wait_accepted(&cluster, "the node presents the new CA's certificate", cluster.addr(id), &ca2, Some(&new_admin), true).await;
            }

            // 3. Revocation: the old admin certificate goes into the old CA's CRL.
            assert!(accepted(&addr, &bundle, Some(&admin)).await, "the old admin is accepted before its revocation");
            cert(&dir, &["revoke", admin.0.to_str().expect("UTF-8 path")]);
            wait_accepted(&cluster, "the revoked admin certificate refused", &addr, &bundle, Some(&admin), false).await;
            assert!(accepted(&addr, &bundle, Some(&new_admin)).await, "the new admin is accepted after the revocation");

            // 4. The old CA leaves the bundle. Node 3 restarts: every connection it opens to
            // the others, and theirs to it, is made with the new certificates only.
            let tmp = dir.join("ca.only-new");
            std::fs::write(&tmp, &ca2).unwrap();
            std::fs::rename(&tmp, tls.ca_cert()).unwrap();
            wait_accepted(&cluster, "the old CA dropped", &addr, &bundle, Some(&admin), false).await;
            cluster.stop(3).await;
            // Not `restart`: its wait uses the harness's connection, which trusts the old CA.
            cluster.launch(3);
            // The writer keeps going until node 3 is back and it has written some more.
            let before = written.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(60);
            while written.load(Ordering::Relaxed) < before + 50 {
                assert!(Instant::now() < deadline, "the writer stalled after node 3's restart");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.store(true, Ordering::Relaxed);
            writer.await.unwrap();
            let (w, f) = (written.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
            println!("writes during the rotation: {w} acknowledged, {f} failed");
            assert!(w > 20, "the writer made progress ({w} writes)");
            assert_eq!(f, 0, "writes failed during the rotation");
            let ok = kho_cluster_tests::retry_call(&RetryPolicy::STEADY, |_| {
                let mut c = DataClient::new(tls_endpoint(cluster.addr(2), &ca2, Some((&new_admin.0, &new_admin.1))).connect_lazy());
                let req = PutRequest {
                    tenant: target.tenant.clone(),
                    table: target.table.clone(),
                    family: target.family.clone(),
                    key: b"after".to_vec(),
                    value: b"rotation".to_vec(),
                };
                async move { c.put(req).await }
            })
            .await;
            assert!(ok.is_ok(), "a write through node 2 after the rotation: {ok:?}");
            // Node 3, restarted with only the new CA, caught up with the others over new
            // peer connections.
            let checked = kho_cluster_tests::retry_call(&RetryPolicy::THROUGH_OUTAGE, |_| {
                let mut c = AdminClient::new(tls_endpoint(cluster.addr(3), &ca2, Some((&new_admin.0, &new_admin.1))).connect_lazy());
                async move { c.node_status(kho_proto::v1::NodeStatusRequest {}).await }
            })
            .await
            .unwrap_or_else(|e| cluster.fail(format!("node 3 after its restart: {e}")));
            assert!(checked.shards.iter().any(|s| s.leader_id != 0), "node 3 sees its shards' leaders: {checked:?}");
            cluster.check_alive();
        })
        .await;
}
