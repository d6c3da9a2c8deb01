//! The audit log with real processes (docs/SECURITY.md, "Audit log"): admin changes
//! (tenants, tables, tokens, grants) and denied requests are recorded, never values; only
//! auditors read the log; `kho audit verify` passes on the untouched log and prints its
//! digest; a record edited (its storage checksum recomputed, as an insider with disk access
//! would), deleted, or two records swapped on one node's disk, each is found by
//! `kho audit verify --local` against that node, naming the first bad record, while the
//! other nodes' copies still verify.
//!
//! Checked to fail: with `audit::verify` skipping the hash comparison, the edited and the
//! swapped record pass.

use std::time::{Duration, Instant};

use kho_cluster_tests::{create_table, create_tenant, Cluster, ClusterOptions};
use kho_engine::Cf;
use kho_proto::v1::{self as pb, CompactNodeRequest};
use kho_raft::audit::{self, Entry, Record};
use tonic::Code;

/// Longest the test body runs, seconds.
const TEST_LIMIT_S: u64 = 300;
/// How long a denied request's record may take to be appended, milliseconds (the queue
/// flushes every 100 ms).
const RECORD_WAIT_MS: u64 = 10_000;

fn kho(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let endpoints: Vec<&str> = cluster.ids().into_iter().map(|id| cluster.addr(id)).collect();
    let out = cluster.kho_command().env("KHO_ENDPOINTS", endpoints.join(",")).args(args).output().expect("run kho");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_changes_and_denials_are_recorded_and_verify_finds_each_kind_of_tampering() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster.wait_ready().await;
    cluster
        .bounded("audit", Duration::from_secs(TEST_LIMIT_S), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "dan_cu").await.unwrap();
            create_table(&mut admin, "dan_cu", "cong_dan", &["identity", "health"]).await.unwrap();
            let token = admin
                .create_token(pb::CreateTokenRequest { principal: "bhxh_app".into(), ttl_seconds: 3_600, note: String::new() })
                .await
                .unwrap()
                .into_inner()
                .token;
            let grant = pb::Grant {
                principal: "bhxh_app".into(),
                tenant: "dan_cu".into(),
                table: "cong_dan".into(),
                family: "identity".into(),
                permissions: vec![pb::Permission::Read as i32],
                ..Default::default()
            };
            admin.create_grant(pb::CreateGrantRequest { grant: Some(grant) }).await.unwrap();
            // A grant that the catalog rejects is recorded as rejected.
            let bad =
                pb::Grant { principal: "bhxh_app".into(), tenant: "no_such_tenant".into(), permissions: vec![1], ..Default::default() };
            assert_eq!(admin.create_grant(pb::CreateGrantRequest { grant: Some(bad) }).await.unwrap_err().code(), Code::NotFound);

            cluster.wait_grants_current(&token).await;
            // bhxh_app reads a family it has no grant on, and tries the audit log.
            let (mut data, mut b_admin) = cluster.clients_as(2, Some(&token));
            let started = Instant::now();
            loop {
                let r = data
                    .read_row(pb::ReadRowRequest {
                        tenant: "dan_cu".into(),
                        table: "cong_dan".into(),
                        row_key: b"001".to_vec(),
                        families: vec!["health".into()],
                        ..Default::default()
                    })
                    .await;
                match r {
                    Err(s) if s.code() == Code::PermissionDenied => break,
                    Err(s) if s.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    other => panic!("a read of a family without a grant: {other:?}"),
                }
            }
            let e = b_admin.read_audit(pb::ReadAuditRequest::default()).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "a tenant's principal reads no audit log: {e:?}");
            assert!(e.message().contains("auditor"), "{e:?}");

            // The records, as `kho audit search` prints them.
            let started = Instant::now();
            let denied = loop {
                let (code, out, err) = kho(&cluster, &["audit", "search", "--principal", "bhxh_app", "--decision", "denied"]);
                assert_eq!(code, 0, "kho audit search: {err}");
                if out.contains("ReadAudit") && out.contains("ReadRow") {
                    break out;
                }
                assert!(started.elapsed() < Duration::from_millis(RECORD_WAIT_MS), "the denials were not recorded: {out}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(denied.contains("dan_cu/cong_dan") && denied.contains("family `health`"), "{denied}");
            let (_, all, _) = kho(&cluster, &["audit", "search"]);
            for action in ["CreateTenant", "CreateTable", "CreateToken", "CreateGrant"] {
                assert!(all.contains(action), "{action} is recorded: {all}");
            }
            assert!(all.contains("rejected: grant.tenant"), "the rejected grant is recorded with its outcome: {all}");
            assert!(!token.is_empty() && !all.contains(&token[21..]), "a token's secret is never recorded");
            let (_, tail, _) = kho(&cluster, &["audit", "tail", "-n", "2"]);
            assert_eq!(tail.lines().count(), 2, "{tail}");

            // Verify: intact everywhere, the same digest through every node.
            let mut digest = None;
            for id in cluster.ids() {
                let (code, out, err) = kho(&cluster, &["audit", "verify", "--local", "--endpoints", cluster.addr(id)]);
                assert_eq!(code, 0, "node {id}: {out}{err}");
                assert!(out.starts_with("audit log intact: "), "{out}");
                let d = out.rsplit(' ').next().unwrap().trim().to_string();
                if let Some(prev) = &digest {
                    assert_eq!(prev, &d, "node {id} has another chain");
                }
                digest = Some(d);
            }
            let digest = digest.unwrap();
            let (code, out, _) = kho(&cluster, &["audit", "verify", "--expect", &digest]);
            assert_eq!(code, 0, "{out}");

            // Tamper with one node's disk each: node 1 edits record 2, node 2 deletes record
            // 3, node 3 swaps records 4 and 5.
            for (id, expect) in [(1u64, 2u64), (2, 3), (3, 4)] {
                let mut a = cluster.admin_client(id);
                a.compact_node(CompactNodeRequest {}).await.unwrap();
                cluster.stop(id).await;
                {
                    let engine = kho_engine::Engine::open(&cluster.data_dir(id).join("db"), &kho_engine::EngineOptions::default())
                        .expect("open the stopped node's RocksDB");
                    let get = |seq: u64| engine.get_value(&audit::entry_key(seq)).unwrap().expect("the record is stored");
                    let mut batch = engine.batch();
                    match id {
                        1 => {
                            let mut e = Entry::decode(&get(2)).unwrap();
                            let r = Record { principal: "someone_else".into(), ..Record::decode(&e.record).unwrap() };
                            e.record = r.encode();
                            // put_value writes the storage checksum anew: only the chain can tell.
                            batch.put_value(&audit::entry_key(2), &e.encode());
                        }
                        2 => batch.delete(Cf::Data, &audit::entry_key(3)),
                        _ => {
                            let (four, five) = (get(4), get(5));
                            batch.put_value(&audit::entry_key(4), &five);
                            batch.put_value(&audit::entry_key(5), &four);
                        }
                    }
                    engine.write(batch, true).unwrap();
                    engine.prepare_for_exit().unwrap();
                }
                cluster.restart(id).await;
                cluster.wait_node_serving(id).await;
                let (code, out, err) = kho(&cluster, &["audit", "verify", "--local", "--endpoints", cluster.addr(id)]);
                assert_eq!(code, 1, "node {id}: a tampered log verified: {out}{err}");
                assert!(out.starts_with(&format!("audit log BROKEN at record {expect}:")), "node {id}: {out}");
                eprintln!("node {id}: {}", out.trim());
                // The next node's copy is not tampered with yet: it still verifies.
                if id < 3 {
                    let (code, out, err) = kho(&cluster, &["audit", "verify", "--local", "--endpoints", cluster.addr(id + 1)]);
                    assert_eq!(code, 0, "node {}: {out}{err}", id + 1);
                }
            }
        })
        .await;
}
