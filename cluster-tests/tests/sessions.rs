//! Access sessions with real processes (docs/SECURITY.md, "Access sessions"): a grant that
//! requires a session gives nothing outside one; a session is opened for a purpose, on
//! fields the grant covers, for at most the grant's longest duration; inside it, exactly
//! its fields are read, through any node; each read is in the audit log with the session,
//! the purpose, hashed row keys and what it returned, before its answer is sent, and a read
//! whose record cannot be written is refused (fail closed); closing the session refuses
//! its next request and ends its open stream; an expired session is refused.
//!
//! Checked to fail: with `Access::view_in` ignoring the session's scope (the grant's whole
//! family readable), the first read returns `ngay_sinh` too; with the append in
//! `DataService::audit_read` skipped, the audit log has no read records.

use std::time::{Duration, Instant};

use kho_cluster_tests::{create_table, create_tenant, Cluster, ClusterOptions};
use kho_proto::v1::{self as pb, mutation, Mutation};
use tonic::Code;

/// Longest the test body runs, seconds.
const TEST_LIMIT_S: u64 = 240;
const DAN_CU: &str = "dan_cu";
const BHXH: &str = "bhxh";
const CITIZEN: &str = "cong_dan";
/// Rows of the table, count, and the bytes of each row's name: more than a stream's
/// buffers hold (4 chunks of about 1 MiB, HTTP/2's windows and the sockets' buffers:
/// about 10 MiB seen), so that a stream is still being produced when its session is closed.
const ROWS: usize = 3_000;
const NAME_BYTES: usize = 12_000;
const PURPOSE: &str = "xac minh ho so huong bao hiem xa hoi";

fn set(family: &str, q: &str, v: &[u8]) -> Mutation {
    Mutation {
        mutation: Some(mutation::Mutation::SetCell(pb::SetCell {
            family: family.into(),
            qualifier: q.as_bytes().to_vec(),
            value: v.to_vec(),
        })),
    }
}

fn row_key(i: usize) -> Vec<u8> {
    format!("{:012}", 79_000_000_000u64 + i as u64).into_bytes()
}

/// `msg` with the session's id in its `kho-session` metadata.
fn in_session<T>(msg: T, session: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("kho-session", session.parse().expect("a session id is ASCII"));
    req
}

/// Asserts a refusal with `code` whose message contains `needle`.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<tonic::Response<T>, tonic::Status>, code: Code, needle: &str) {
    match r {
        Err(s) if s.code() == code && s.message().contains(needle) => {}
        other => panic!("{what}: expected {code:?} containing `{needle}`, got {other:?}"),
    }
}

fn read_row(row: &[u8], qualifiers: &[&str]) -> pb::ReadRowRequest {
    pb::ReadRowRequest {
        tenant: DAN_CU.into(),
        table: CITIZEN.into(),
        row_key: row.to_vec(),
        qualifiers: qualifiers.iter().map(|q| q.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn open_request(family: &str, qualifiers: &[&str], duration_ms: u64) -> pb::OpenAccessSessionRequest {
    pb::OpenAccessSessionRequest {
        tenant: DAN_CU.into(),
        table: CITIZEN.into(),
        family: family.into(),
        qualifiers: qualifiers.iter().map(|q| q.as_bytes().to_vec()).collect(),
        purpose: PURPOSE.into(),
        duration_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_reads_exactly_its_fields_every_read_is_audited_first_and_closing_or_expiry_ends_it() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster.wait_ready().await;
    cluster
        .bounded("access sessions", Duration::from_secs(TEST_LIMIT_S), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, DAN_CU).await.unwrap();
            create_tenant(&mut admin, BHXH).await.unwrap();
            create_table(&mut admin, DAN_CU, CITIZEN, &["identity", "contact"]).await.unwrap();
            // ROWS citizens, written by 8 writers at once.
            let mut writers = Vec::new();
            for w in 0..8 {
                let mut data = cluster.data_client(1 + w % 3);
                writers.push(tokio::spawn(async move {
                    for i in (w as usize..ROWS).step_by(8) {
                        let mut name = format!("Nguyễn Văn {i} ").into_bytes();
                        name.resize(NAME_BYTES, b'.');
                        let mutations = vec![
                            set("identity", "ho_ten", &name),
                            set("identity", "ngay_sinh", b"1990-01-01"),
                            set("contact", "phone", b"0901234567"),
                        ];
                        let req = pb::MutateRowRequest { tenant: DAN_CU.into(), table: CITIZEN.into(), row_key: row_key(i), mutations };
                        data.mutate_row(req).await.unwrap_or_else(|e| panic!("write row {i}: {e}"));
                    }
                }));
            }
            for w in writers {
                w.await.unwrap();
            }

            // bhxh_app may read dan_cu's identity family, in sessions of at most an hour.
            let token = admin
                .create_token(pb::CreateTokenRequest { principal: "bhxh_app".into(), ttl_seconds: 0, note: String::new() })
                .await
                .unwrap()
                .into_inner()
                .token;
            let grant = pb::Grant {
                principal: "bhxh_app".into(),
                tenant: DAN_CU.into(),
                table: CITIZEN.into(),
                family: "identity".into(),
                permissions: vec![pb::Permission::Read as i32],
                session_required: true,
                session_duration_max_ms: 3_600_000,
                ..Default::default()
            };
            admin.create_grant(pb::CreateGrantRequest { grant: Some(grant) }).await.unwrap();
            cluster.wait_grants_current(&token).await;
            let (mut data, mut b_admin) = cluster.clients_as(2, Some(&token));
            let first = row_key(0);

            // Outside a session the grant gives nothing, and the refusal says what to do.
            refused("a read without a session", data.read_row(read_row(&first, &[])).await, Code::PermissionDenied, "access session");
            // Opening: within the grant's scope and its longest duration only.
            refused(
                "a session beyond the grant's duration",
                b_admin.open_access_session(open_request("identity", &["ho_ten"], 7_200_000)).await,
                Code::InvalidArgument,
                "3600000 ms its grant allows",
            );
            refused(
                "a session on a family the grant does not cover",
                b_admin.open_access_session(open_request("contact", &[], 60_000)).await,
                Code::PermissionDenied,
                "no live grant that requires an access session",
            );
            let mut no_purpose = open_request("identity", &["ho_ten"], 60_000);
            no_purpose.purpose.clear();
            refused("a session without a purpose", b_admin.open_access_session(no_purpose).await, Code::InvalidArgument, "purpose");
            let session = b_admin
                .open_access_session(open_request("identity", &["ho_ten"], 600_000))
                .await
                .unwrap()
                .into_inner()
                .session
                .expect("the session");
            let id = session.session_id.clone();
            assert!(session.open && session.expires_at_ms > session.opened_at_ms, "{session:?}");

            // Inside it: exactly its field, through every node (forwarded requests carry it).
            for node in 1..=3 {
                let (mut d, _) = cluster.clients_as(node, Some(&token));
                let row = d.read_row(in_session(read_row(&first, &[]), &id)).await.unwrap().into_inner().row.expect("the row");
                let names: Vec<String> =
                    row.cells.iter().map(|c| format!("{}:{}", c.family, String::from_utf8_lossy(&c.qualifier))).collect();
                assert_eq!(names, ["identity:ho_ten"], "through node {node}, only the session's field");
                assert!(row.cells_withheld, "the other cells are withheld, and the row says so");
            }
            refused(
                "a field the session does not name",
                data.read_row(in_session(read_row(&first, &["ngay_sinh"]), &id)).await,
                Code::PermissionDenied,
                "ngay_sinh",
            );
            refused(
                "a malformed session id",
                data.read_row(in_session(read_row(&first, &[]), "not-a-session")).await,
                Code::InvalidArgument,
                "kho-session",
            );
            // Another principal cannot use it.
            let eve = admin
                .create_token(pb::CreateTokenRequest { principal: "eve".into(), ttl_seconds: 0, note: String::new() })
                .await
                .unwrap()
                .into_inner()
                .token;
            cluster.wait_grants_current(&eve).await;
            let (mut eve_data, _) = cluster.clients_as(3, Some(&eve));
            refused(
                "another principal's session",
                eve_data.read_row(in_session(read_row(&first, &[]), &id)).await,
                Code::PermissionDenied,
                "does not exist",
            );

            // The audit log has the opening and every read, with the session and its purpose,
            // the row key hashed, and what came back: never the key or a value.
            // (Refusals reach the log through a queue flushed every 100 ms: wait for it.)
            let started = Instant::now();
            let records = loop {
                let records = admin.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().entries;
                let denial = records.iter().any(|e| e.session == id && e.decision == "denied" && e.reason.contains("ngay_sinh"));
                if denial || started.elapsed() > Duration::from_secs(10) {
                    break records;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let opened = records.iter().find(|e| e.action == "OpenAccessSession" && e.session == id).expect("the opening's record");
            assert_eq!((opened.purpose.as_str(), opened.outcome.as_str()), (PURPOSE, "done"));
            let reads: Vec<_> = records.iter().filter(|e| e.action == "ReadRow" && e.session == id && e.decision == "allowed").collect();
            assert_eq!(reads.len(), 3, "one record per read, on whichever node served it: {reads:?}");
            let nodes: std::collections::BTreeSet<u64> = reads.iter().map(|e| e.node).collect();
            assert!(!nodes.is_empty());
            for e in &reads {
                assert_eq!((e.principal.as_str(), e.tenant.as_str(), e.table.as_str()), ("bhxh_app", DAN_CU, CITIZEN));
                assert_eq!(e.purpose, PURPOSE);
                assert_eq!((e.rows, e.bytes), (1, (b"ho_ten".len() + NAME_BYTES) as u64), "{e:?}");
                assert!(e.keys.starts_with("sha256/8: ") && !e.keys.contains("79000000000"), "hashed row keys: {}", e.keys);
                let raw = String::from_utf8_lossy(&e.raw);
                assert!(!raw.contains("Nguy") && !raw.contains("79000000000"), "no value and no key in the record");
            }
            assert!(
                records.iter().any(|e| e.session == id && e.decision == "denied" && e.reason.contains("ngay_sinh")),
                "the refused field is in the log too"
            );
            let eves = records.iter().find(|e| e.principal == "eve" && e.session == id);
            assert!(eves.is_none_or(|e| e.purpose.is_empty()), "another principal's try does not carry the session's purpose: {eves:?}");

            // A write in a session (a grant that requires one for writing the phone field):
            // recorded once, by the node that proposes it, though sent to a node that may
            // forward it to the shard's leader.
            let phone = pb::Grant {
                principal: "bhxh_app".into(),
                tenant: DAN_CU.into(),
                table: CITIZEN.into(),
                family: "contact".into(),
                qualifiers: vec![b"phone".to_vec()],
                permissions: vec![pb::Permission::Write as i32],
                session_required: true,
                session_duration_max_ms: 600_000,
                ..Default::default()
            };
            admin.create_grant(pb::CreateGrantRequest { grant: Some(phone) }).await.unwrap();
            cluster.wait_grants_current(&token).await;
            let w = b_admin.open_access_session(open_request("contact", &["phone"], 600_000)).await.unwrap().into_inner().session.unwrap();
            let update = pb::MutateRowRequest {
                tenant: DAN_CU.into(),
                table: CITIZEN.into(),
                row_key: first.clone(),
                mutations: vec![set("contact", "phone", b"0987654321")],
            };
            for node in 1..=3 {
                let (mut d, _) = cluster.clients_as(node, Some(&token));
                d.mutate_row(in_session(update.clone(), &w.session_id))
                    .await
                    .unwrap_or_else(|e| panic!("a write in the session via node {node}: {e}"));
            }
            let records = admin.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().entries;
            let writes: Vec<_> = records.iter().filter(|e| e.session == w.session_id && e.action == "MutateRow").collect();
            assert_eq!(writes.len(), 3, "one record per write, whichever node it was sent to: {writes:?}");
            assert!(writes.iter().all(|e| e.fields == ["phone"] && e.keys.starts_with("sha256/8: ")), "{writes:?}");

            // A stream in the session, then the session closed: the stream ends early, refused.
            let mut stream = data
                .scan_rows(in_session(pb::ScanRowsRequest { tenant: DAN_CU.into(), table: CITIZEN.into(), ..Default::default() }, &id))
                .await
                .unwrap()
                .into_inner();
            let mut rows = stream.message().await.unwrap().expect("a first chunk").rows.len();
            let closed = b_admin.close_access_session(pb::CloseAccessSessionRequest { session_id: id.clone() }).await.unwrap();
            println!("session {id} closed at version {}", closed.into_inner().version);
            let end = loop {
                match stream.message().await {
                    Ok(Some(chunk)) => rows += chunk.rows.len(),
                    Ok(None) => break None,
                    Err(s) => break Some(s),
                }
            };
            let end = end.unwrap_or_else(|| panic!("the stream ran to its end ({rows} rows) after its session was closed"));
            assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
            assert!(end.message().contains("closed"), "{end:?}");
            assert!(rows < ROWS, "the stream stopped early: {rows} of {ROWS} rows");
            println!("the stream ended after {rows} of {ROWS} rows: {}", end.message());
            refused(
                "a read in the closed session",
                data.read_row(in_session(read_row(&first, &[]), &id)).await,
                Code::PermissionDenied,
                "closed",
            );
            let listed = b_admin
                .list_access_sessions(pb::ListAccessSessionsRequest { include_ended: true, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .sessions;
            assert!(listed.iter().any(|s| s.session_id == id && !s.open && s.closed_by == "bhxh_app"), "{listed:?}");

            // An expired session is refused.
            let short = b_admin.open_access_session(open_request("identity", &[], 6_000)).await.unwrap().into_inner().session.unwrap();
            data.read_row(in_session(read_row(&first, &[]), &short.session_id)).await.expect("a read before the session expires");
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            let expiry = Duration::from_millis(short.expires_at_ms.saturating_sub(now_ms) + 50);
            tokio::time::sleep(expiry).await;
            refused(
                "a read in an expired session",
                data.read_row(in_session(read_row(&first, &[]), &short.session_id)).await,
                Code::PermissionDenied,
                "expired",
            );

            // Fail closed: a node that cannot write audit records refuses session reads (and
            // still serves reads outside sessions); the other nodes answer.
            let fresh = b_admin.open_access_session(open_request("identity", &[], 600_000)).await.unwrap().into_inner().session.unwrap();
            cluster.set_env(3, &[("FAILPOINTS", "audit-append=return")]);
            cluster.stop(3).await;
            cluster.restart(3).await;
            cluster.wait_grants_current(&token).await;
            let (mut d3, _) = cluster.clients_as(3, Some(&token));
            let started = Instant::now();
            // A stale read: node 3 serves it from its own replica (it never forwards it), so
            // node 3 is the one that must record it.
            let stale = pb::ReadRowRequest { consistency: pb::ReadConsistency::Stale as i32, ..read_row(&first, &[]) };
            refused(
                "a session read whose record cannot be written",
                d3.read_row(in_session(stale, &fresh.session_id)).await,
                Code::Unavailable,
                "audit record could not be written",
            );
            println!("refused in {:?}", started.elapsed());
            cluster.data_client(3).read_row(read_row(&first, &[])).await.expect("node 3 serves a read outside any session");
            let mut d1 = cluster.clients_as(1, Some(&token)).0;
            d1.read_row(in_session(read_row(&first, &[]), &fresh.session_id)).await.expect("node 1 records and answers");
        })
        .await;
}
