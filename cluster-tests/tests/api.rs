//! The public API end to end through a 3-node cluster: documented status codes for bad
//! input, and every Data and Admin operation through different nodes (so that forwarding to
//! the leader is exercised too).

use std::time::Duration;

use kho_cluster_tests::kv::{scan_retry, scan_rows};
use kho_cluster_tests::{
    create_table, create_tenant, expect_status, ok, rpc, setup_kv, Cluster, ClusterOptions, RetryPolicy, FAMILY, TABLE, TENANT,
};
use kho_proto::v1::mutation::Mutation as M;
use kho_proto::v1::write_op::Op;
use kho_proto::v1::*;
use tonic::Code;

fn put_req(tenant: &str, table: &str, family: &str, key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest { tenant: tenant.into(), table: table.into(), key: key.to_vec(), value: value.to_vec(), family: family.into() }
}

fn get_req(tenant: &str, table: &str, family: &str, key: &[u8]) -> GetRequest {
    GetRequest { tenant: tenant.into(), table: table.into(), key: key.to_vec(), family: family.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_status() {
    const NAME: &str = "bad_input_gets_documented_status";
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            setup_kv(&cluster, 1).await;
            let limits = cluster.opts().limits;
            let key_max = limits.key_bytes_max as usize;
            let value_max = limits.value_bytes_max as usize;
            let ops_max = limits.batch_ops_max as usize;
            let qualifier_max = limits.qualifier_bytes_max as usize;
            let scan_max = u32::try_from(limits.scan_limit_max).expect("scan_limit_max fits u32");
            let (key_max_s, value_max_s, ops_max_s) =
                (limits.key_bytes_max.to_string(), limits.value_bytes_max.to_string(), limits.batch_ops_max.to_string());
            let qualifier_max_s = limits.qualifier_bytes_max.to_string();

            for id in cluster.ids() {
                let c = cluster.data_client(id);
                let via = format!("via node {id}");
                let put = |key: &[u8], value: &[u8]| put_req(TENANT, TABLE, FAMILY, key, value);

                expect_status(&cluster, &format!("{via}: Put, empty key"), rpc!(c, put, put(b"", b"v")), Code::InvalidArgument, &["key"]);
                expect_status(
                    &cluster,
                    &format!("{via}: Get, empty key"),
                    rpc!(c, get, get_req(TENANT, TABLE, FAMILY, b"")),
                    Code::InvalidArgument,
                    &["key"],
                );
                let long_key = vec![b'k'; key_max + 1];
                expect_status(
                    &cluster,
                    &format!("{via}: Put, key of {} bytes", key_max + 1),
                    rpc!(c, put, put(&long_key, b"v")),
                    Code::InvalidArgument,
                    &["key", &key_max_s],
                );
                expect_status(
                    &cluster,
                    &format!("{via}: Get, key of {} bytes", key_max + 1),
                    rpc!(c, get, get_req(TENANT, TABLE, FAMILY, &long_key)),
                    Code::InvalidArgument,
                    &["key", &key_max_s],
                );
                let big_value = vec![b'v'; value_max + 1];
                expect_status(
                    &cluster,
                    &format!("{via}: Put, value of {} bytes", value_max + 1),
                    rpc!(c, put, put(b"big", &big_value)),
                    Code::InvalidArgument,
                    &["value", &value_max_s],
                );

                expect_status(
                    &cluster,
                    &format!("{via}: Put, unknown tenant"),
                    rpc!(c, put, put_req("no_such_tenant", TABLE, FAMILY, b"k", b"v")),
                    Code::NotFound,
                    &[],
                );
                expect_status(
                    &cluster,
                    &format!("{via}: Put, unknown table"),
                    rpc!(c, put, put_req(TENANT, "no_such_table", FAMILY, b"k", b"v")),
                    Code::NotFound,
                    &[],
                );
                expect_status(
                    &cluster,
                    &format!("{via}: Put, unknown family"),
                    rpc!(c, put, put_req(TENANT, TABLE, "no_such_family", b"k", b"v")),
                    Code::NotFound,
                    &[],
                );
                expect_status(
                    &cluster,
                    &format!("{via}: Get, unknown tenant"),
                    rpc!(c, get, get_req("no_such_tenant", TABLE, FAMILY, b"k")),
                    Code::NotFound,
                    &[],
                );
                expect_status(
                    &cluster,
                    &format!("{via}: Get, unknown table"),
                    rpc!(c, get, get_req(TENANT, "no_such_table", FAMILY, b"k")),
                    Code::NotFound,
                    &[],
                );
                expect_status(
                    &cluster,
                    &format!("{via}: Get, unknown family"),
                    rpc!(c, get, get_req(TENANT, TABLE, "no_such_family", b"k")),
                    Code::NotFound,
                    &[],
                );

                let ops: Vec<WriteOp> = (0..=ops_max)
                    .map(|i| WriteOp {
                        op: Some(Op::Put(PutOp { key: format!("batch/{i:05}").into_bytes(), value: b"v".to_vec(), family: String::new() })),
                    })
                    .collect();
                let write = WriteRequest { tenant: TENANT.into(), table: TABLE.into(), ops };
                expect_status(
                    &cluster,
                    &format!("{via}: Write of {} ops", ops_max + 1),
                    rpc!(c, write, write),
                    Code::InvalidArgument,
                    &[&ops_max_s],
                );
                let keys: Vec<Vec<u8>> = (0..=ops_max).map(|i| format!("batch/{i:05}").into_bytes()).collect();
                let batch_get =
                    BatchGetRequest { tenant: TENANT.into(), table: TABLE.into(), keys, family: FAMILY.into(), ..Default::default() };
                expect_status(
                    &cluster,
                    &format!("{via}: BatchGet of {} keys", ops_max + 1),
                    rpc!(c, batch_get, batch_get),
                    Code::InvalidArgument,
                    &[&ops_max_s],
                );
                // The rejected Write wrote nothing.
                let first = ok(&cluster, "Get batch/00000", rpc!(c, get, get_req(TENANT, TABLE, FAMILY, b"batch/00000")));
                assert!(!first.found, "{via}: a rejected Write left batch/00000 behind");

                // One bad op among good ones rejects the whole Write, naming the value limit.
                let mut ops: Vec<WriteOp> = (0..3)
                    .map(|i| WriteOp {
                        op: Some(Op::Put(PutOp { key: format!("mixed/{i}").into_bytes(), value: b"v".to_vec(), family: String::new() })),
                    })
                    .collect();
                ops.push(WriteOp {
                    op: Some(Op::Put(PutOp { key: b"mixed/3".to_vec(), value: big_value.clone(), family: String::new() })),
                });
                let write = WriteRequest { tenant: TENANT.into(), table: TABLE.into(), ops };
                expect_status(
                    &cluster,
                    &format!("{via}: Write with an oversized value in op 3"),
                    rpc!(c, write, write),
                    Code::InvalidArgument,
                    &["value", &value_max_s],
                );
                let first = ok(&cluster, "Get mixed/0", rpc!(c, get, get_req(TENANT, TABLE, FAMILY, b"mixed/0")));
                assert!(!first.found, "{via}: a rejected Write left mixed/0 behind");
                let empty = WriteRequest { tenant: TENANT.into(), table: TABLE.into(), ops: Vec::new() };
                expect_status(&cluster, &format!("{via}: Write without ops"), rpc!(c, write, empty), Code::InvalidArgument, &[]);

                let long_qualifier = vec![b'q'; qualifier_max + 1];
                let mutation = Mutation {
                    mutation: Some(M::SetCell(SetCell { family: FAMILY.into(), qualifier: long_qualifier, value: b"v".to_vec() })),
                };
                let mutate =
                    MutateRowRequest { tenant: TENANT.into(), table: TABLE.into(), row_key: b"row".to_vec(), mutations: vec![mutation] };
                expect_status(
                    &cluster,
                    &format!("{via}: MutateRow, qualifier of {} bytes", qualifier_max + 1),
                    rpc!(c, mutate_row, mutate),
                    Code::InvalidArgument,
                    &["qualifier", &qualifier_max_s],
                );

                let scan = ScanRequest {
                    tenant: TENANT.into(),
                    table: TABLE.into(),
                    family: FAMILY.into(),
                    limit: scan_max + 1,
                    ..Default::default()
                };
                expect_status(
                    &cluster,
                    &format!("{via}: Scan with limit {}", scan_max + 1),
                    scan_retry(&c, scan, &RetryPolicy::STEADY).await,
                    Code::InvalidArgument,
                    &["limit", &scan_max.to_string()],
                );

                // Names are a-z, 0-9 and _, starting with a letter: anything else is a bad
                // argument (naming the field), not an unknown name.
                expect_status(
                    &cluster,
                    &format!("{via}: Put, tenant `Bad-Name`"),
                    rpc!(c, put, put_req("Bad-Name", TABLE, FAMILY, b"k", b"v")),
                    Code::InvalidArgument,
                    &["tenant"],
                );
                let admin = cluster.admin_client(id);
                expect_status(
                    &cluster,
                    &format!("{via}: CreateTenant `Bad-Name`"),
                    rpc!(admin, create_tenant, CreateTenantRequest { name: "Bad-Name".into(), ..Default::default() }),
                    Code::InvalidArgument,
                    &["name"],
                );
            }

            // The limits are inclusive: a key and a value of exactly the maximum are accepted.
            let c = cluster.data_client(2);
            let edge_key = vec![b'e'; key_max];
            let edge_value = vec![b'x'; value_max];
            ok(&cluster, "Put of a key of key_bytes_max bytes", rpc!(c, put, put_req(TENANT, TABLE, FAMILY, &edge_key, b"v")));
            ok(
                &cluster,
                "Put of a value of value_bytes_max bytes",
                rpc!(c, put, put_req(TENANT, TABLE, FAMILY, b"edge-value", &edge_value)),
            );
            let got = ok(&cluster, "Get of the longest key", rpc!(c, get, get_req(TENANT, TABLE, FAMILY, &edge_key)));
            assert!(got.found && got.value == b"v", "longest key read back: found {}", got.found);
            let got = ok(&cluster, "Get of the largest value", rpc!(c, get, get_req(TENANT, TABLE, FAMILY, b"edge-value")));
            assert!(got.found && got.value == edge_value, "largest value read back: found {}, {} bytes", got.found, got.value.len());

            // After all that, every node still serves normal requests.
            for id in cluster.ids() {
                let c = cluster.data_client(id);
                let key = format!("after/{id}").into_bytes();
                let value = format!("value written via node {id}").into_bytes();
                let resp = ok(&cluster, &format!("Put via node {id}"), rpc!(c, put, put_req(TENANT, TABLE, FAMILY, &key, &value)));
                assert!(resp.header.is_some_and(|h| h.revision > 0), "Put via node {id} has no revision");
                let got = ok(&cluster, &format!("Get via node {id}"), rpc!(c, get, get_req(TENANT, TABLE, FAMILY, &key)));
                assert!(got.found && got.value == value, "via node {id}: read back {got:?}");
            }
        })
        .await;
}

/// Tenant and tables of the end-to-end test.
const RT: &str = "rt";
const PEOPLE: &str = "people";
const KV: &str = "kv";

fn set(family: &str, qualifier: &str, value: &str) -> Mutation {
    Mutation { mutation: Some(M::SetCell(SetCell { family: family.into(), qualifier: qualifier.into(), value: value.into() })) }
}

fn mutate(row: &str, mutations: Vec<Mutation>) -> MutateRowRequest {
    MutateRowRequest { tenant: RT.into(), table: PEOPLE.into(), row_key: row.into(), mutations }
}

fn read_row(row: &str, families: &[&str], qualifiers: &[&str]) -> ReadRowRequest {
    ReadRowRequest {
        tenant: RT.into(),
        table: PEOPLE.into(),
        row_key: row.into(),
        families: families.iter().map(|f| f.to_string()).collect(),
        qualifiers: qualifiers.iter().map(|q| q.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

/// Cells as (family, qualifier, value) strings, for comparisons.
fn cells(row: &Row) -> Vec<(String, String, String)> {
    row.cells
        .iter()
        .map(|c| (c.family.clone(), String::from_utf8_lossy(&c.qualifier).into_owned(), String::from_utf8_lossy(&c.value).into_owned()))
        .collect()
}

fn triple(f: &str, q: &str, v: &str) -> (String, String, String) {
    (f.into(), q.into(), v.into())
}

fn row_keys(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|r| String::from_utf8_lossy(&r.key).into_owned()).collect()
}

fn kv_scan(start: &str, end: &str, prefix: &str, limit: u32) -> ScanRequest {
    ScanRequest {
        tenant: RT.into(),
        table: KV.into(),
        family: "f".into(),
        start_key: start.into(),
        end_key: end.into(),
        prefix: prefix.into(),
        limit,
        ..Default::default()
    }
}

fn kv_keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

fn names(range: impl Iterator<Item = u32>, fmt: impl Fn(u32) -> String) -> Vec<String> {
    range.map(fmt).collect()
}

/// Checks that revisions of this test's sequential writes keep growing.
struct Revisions {
    last: u64,
}

impl Revisions {
    fn next(&mut self, what: &str, header: Option<WriteHeader>) {
        let revision = header.map_or(0, |h| h.revision);
        assert!(revision > self.last, "{what}: revision {revision} is not above the previous write's {}", self.last);
        self.last = revision;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_admin_end_to_end() {
    const NAME: &str = "rows_and_admin_end_to_end";
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster
        .bounded(NAME, Duration::from_secs(300), async {
            let ids = cluster.ids();
            // Requests go round-robin through the nodes.
            let mut turn = 0usize;
            let mut node = || {
                turn += 1;
                cluster.data_client(ids[turn % ids.len()])
            };
            let mut admin = cluster.admin_client(2);
            let mut revisions = Revisions { last: 0 };

            // --- Admin: tenants and tables.
            ok(&cluster, "CreateTenant rt", create_tenant(&mut admin, RT).await);
            ok(&cluster, "CreateTable people", create_table(&mut admin, RT, PEOPLE, &["info", "stats"]).await);
            ok(&cluster, "CreateTable kv", create_table(&mut admin, RT, KV, &["f"]).await);
            expect_status(
                &cluster,
                "CreateTenant rt again",
                rpc!(admin, create_tenant, CreateTenantRequest { name: RT.into(), ..Default::default() }),
                Code::AlreadyExists,
                &[],
            );
            let again = CreateTableRequest {
                tenant: RT.into(),
                name: PEOPLE.into(),
                families: vec![ColumnFamily { name: "info".into() }],
                ..Default::default()
            };
            expect_status(&cluster, "CreateTable people again", rpc!(admin, create_table, again), Code::AlreadyExists, &[]);
            let orphan = CreateTableRequest {
                tenant: "no_such_tenant".into(),
                name: "x".into(),
                families: vec![ColumnFamily { name: "f".into() }],
                ..Default::default()
            };
            expect_status(&cluster, "CreateTable in an unknown tenant", rpc!(admin, create_table, orphan), Code::NotFound, &[]);

            let tenants = ok(&cluster, "ListTenants", rpc!(admin, list_tenants, ListTenantsRequest {}));
            assert!(tenants.tenants.iter().any(|t| t == RT), "ListTenants {:?} lacks {RT}", tenants.tenants);
            let tables = ok(&cluster, "ListTables rt", rpc!(cluster.admin_client(3), list_tables, ListTablesRequest { tenant: RT.into() }));
            let mut listed: Vec<(String, Vec<String>)> = tables
                .tables
                .iter()
                .map(|t| {
                    assert_eq!(t.tenant, RT, "ListTables rt lists a table of tenant {}", t.tenant);
                    (t.name.clone(), t.families.iter().map(|f| f.name.clone()).collect())
                })
                .collect();
            listed.sort();
            assert_eq!(
                listed,
                vec![(KV.to_string(), vec!["f".to_string()]), (PEOPLE.to_string(), vec!["info".to_string(), "stats".to_string()])],
                "ListTables rt"
            );
            let all = ok(&cluster, "ListTables (all)", rpc!(admin, list_tables, ListTablesRequest { tenant: String::new() }));
            assert!(all.tables.iter().any(|t| t.tenant == RT && t.name == PEOPLE), "ListTables of every tenant lacks rt/people");

            // --- MutateRow across families; ReadRow with and without filters.
            let resp = ok(
                &cluster,
                "MutateRow alice",
                rpc!(
                    node(),
                    mutate_row,
                    mutate("alice", vec![set("info", "name", "Alice"), set("stats", "visits", "3"), set("info", "city", "Hanoi"),])
                ),
            );
            revisions.next("MutateRow alice", resp.header);
            let got = ok(&cluster, "ReadRow alice", rpc!(node(), read_row, read_row("alice", &[], &[])));
            assert!(got.found, "ReadRow alice: not found");
            let row = got.row.expect("a found row has a row");
            assert_eq!(row.key, b"alice".to_vec());
            // Family declaration order, then qualifier order.
            assert_eq!(cells(&row), vec![triple("info", "city", "Hanoi"), triple("info", "name", "Alice"), triple("stats", "visits", "3")]);
            let got = ok(&cluster, "ReadRow alice [stats]", rpc!(node(), read_row, read_row("alice", &["stats"], &[])));
            assert_eq!(cells(&got.row.unwrap_or_default()), vec![triple("stats", "visits", "3")]);
            let got = ok(&cluster, "ReadRow alice name", rpc!(node(), read_row, read_row("alice", &[], &["name"])));
            assert_eq!(cells(&got.row.unwrap_or_default()), vec![triple("info", "name", "Alice")]);
            let got = ok(&cluster, "ReadRow nobody", rpc!(node(), read_row, read_row("nobody", &[], &[])));
            assert!(!got.found, "ReadRow of a row never written: found");

            let delete_city = Mutation { mutation: Some(M::DeleteCell(DeleteCell { family: "info".into(), qualifier: b"city".to_vec() })) };
            let resp = ok(
                &cluster,
                "MutateRow alice 2",
                rpc!(node(), mutate_row, mutate("alice", vec![delete_city, set("stats", "visits", "4")])),
            );
            revisions.next("MutateRow alice 2", resp.header);
            let got = ok(&cluster, "ReadRow alice 2", rpc!(node(), read_row, read_row("alice", &[], &[])));
            assert_eq!(cells(&got.row.unwrap_or_default()), vec![triple("info", "name", "Alice"), triple("stats", "visits", "4")]);

            // A mutation naming an unknown family fails the whole MutateRow: nothing applied.
            let bad = mutate("alice", vec![set("info", "email", "a@example.org"), set("no_such_family", "x", "y")]);
            expect_status(&cluster, "MutateRow with an unknown family", rpc!(node(), mutate_row, bad), Code::NotFound, &[]);
            let got = ok(&cluster, "ReadRow alice 3", rpc!(node(), read_row, read_row("alice", &["info"], &[])));
            assert_eq!(
                cells(&got.row.unwrap_or_default()),
                vec![triple("info", "name", "Alice")],
                "a failed MutateRow applied part of its mutations"
            );

            let delete_stats = Mutation { mutation: Some(M::DeleteFamily(DeleteFamily { family: "stats".into() })) };
            ok(&cluster, "MutateRow delete family", rpc!(node(), mutate_row, mutate("alice", vec![delete_stats])));
            let got = ok(&cluster, "ReadRow alice 4", rpc!(node(), read_row, read_row("alice", &[], &[])));
            assert_eq!(cells(&got.row.unwrap_or_default()), vec![triple("info", "name", "Alice")]);
            let delete_row = Mutation { mutation: Some(M::DeleteRow(DeleteRow {})) };
            ok(&cluster, "MutateRow delete row", rpc!(node(), mutate_row, mutate("alice", vec![delete_row])));
            let got = ok(&cluster, "ReadRow alice 5", rpc!(node(), read_row, read_row("alice", &[], &[])));
            assert!(!got.found, "ReadRow after DeleteRow: found {:?}", got.row);

            // --- ScanRows: 10 rows under user/, one after; prefix, limit, bounds, families.
            for i in 1..=10 {
                let row = format!("user/{i:03}");
                ok(
                    &cluster,
                    "MutateRow user",
                    rpc!(node(), mutate_row, mutate(&row, vec![set("info", "n", &i.to_string()), set("stats", "s", "1")])),
                );
            }
            ok(&cluster, "MutateRow zzz", rpc!(node(), mutate_row, mutate("zzz/1", vec![set("info", "n", "z")])));
            let rows_req = |start: &str, end: &str, prefix: &str, families: &[&str], limit: u32| ScanRowsRequest {
                tenant: RT.into(),
                table: PEOPLE.into(),
                start_row: start.into(),
                end_row: end.into(),
                prefix: prefix.into(),
                families: families.iter().map(|f| f.to_string()).collect(),
                limit,
                ..Default::default()
            };
            let user = |i: u32| format!("user/{i:03}");
            let rows = ok(&cluster, "ScanRows user/", scan_rows(&node(), rows_req("", "", "user/", &[], 0)).await);
            assert_eq!(row_keys(&rows), names(1..=10, user), "ScanRows prefix user/");
            assert_eq!(cells(&rows[0]), vec![triple("info", "n", "1"), triple("stats", "s", "1")]);
            let rows = ok(&cluster, "ScanRows user/ limit 3", scan_rows(&node(), rows_req("", "", "user/", &[], 3)).await);
            assert_eq!(row_keys(&rows), names(1..=3, user), "ScanRows prefix user/ limit 3");
            let rows =
                ok(&cluster, "ScanRows [user/005, user/008)", scan_rows(&node(), rows_req("user/005", "user/008", "", &[], 0)).await);
            assert_eq!(row_keys(&rows), names(5..=7, user), "ScanRows start/end");
            let rows = ok(&cluster, "ScanRows all", scan_rows(&node(), rows_req("", "", "", &[], 0)).await);
            let mut expected = names(1..=10, user);
            expected.push("zzz/1".into());
            assert_eq!(row_keys(&rows), expected, "ScanRows of the whole table");
            let rows = ok(&cluster, "ScanRows user/ [stats]", scan_rows(&node(), rows_req("", "", "user/", &["stats"], 2)).await);
            assert_eq!(row_keys(&rows), names(1..=2, user));
            assert!(rows.iter().all(|r| cells(r) == vec![triple("stats", "s", "1")]), "ScanRows families filter: {rows:?}");

            // --- Key-value view: Write batch, Scan, Delete, CompareAndSwap.
            let kv_put = |key: &str, value: &str| WriteOp {
                op: Some(Op::Put(PutOp { key: key.into(), value: value.into(), family: String::new() })),
            };
            let kv_key = |i: u32| format!("k{i:02}");
            let ops: Vec<WriteOp> = (0..20).map(|i| kv_put(&kv_key(i), &format!("v{i}"))).collect();
            let resp = ok(&cluster, "Write 20 puts", rpc!(node(), write, WriteRequest { tenant: RT.into(), table: KV.into(), ops }));
            revisions.next("Write 20 puts", resp.header);

            let all = ok(&cluster, "Scan all", scan_retry(&node(), kv_scan("", "", "", 0), &RetryPolicy::STEADY).await);
            assert_eq!(kv_keys(&all), names(0..20, kv_key), "Scan of the whole table");
            assert!(all.iter().enumerate().all(|(i, kv)| kv.value == format!("v{i}").into_bytes()), "Scan values");
            let kvs = ok(&cluster, "Scan [k05, k10)", scan_retry(&node(), kv_scan("k05", "k10", "", 0), &RetryPolicy::STEADY).await);
            assert_eq!(kv_keys(&kvs), names(5..10, kv_key), "Scan start/end");
            let kvs = ok(&cluster, "Scan prefix k1", scan_retry(&node(), kv_scan("", "", "k1", 0), &RetryPolicy::STEADY).await);
            assert_eq!(kv_keys(&kvs), names(10..20, kv_key), "Scan prefix");
            let kvs = ok(&cluster, "Scan limit 3", scan_retry(&node(), kv_scan("", "", "", 3), &RetryPolicy::STEADY).await);
            assert_eq!(kv_keys(&kvs), names(0..3, kv_key), "Scan limit");
            let kvs = ok(
                &cluster,
                "Scan prefix k1 from k15 limit 2",
                scan_retry(&node(), kv_scan("k15", "", "k1", 2), &RetryPolicy::STEADY).await,
            );
            assert_eq!(kv_keys(&kvs), names(15..17, kv_key), "Scan prefix with start and limit");

            // A Write is all or none: a batch with one invalid op applies nothing.
            let kv_delete = |key: &str| WriteOp { op: Some(Op::Delete(DeleteOp { key: key.into(), family: String::new() })) };
            let batch = vec![kv_put("new-a", "a"), kv_delete("k00"), kv_put("", "empty key")];
            expect_status(
                &cluster,
                "Write with an empty key",
                rpc!(node(), write, WriteRequest { tenant: RT.into(), table: KV.into(), ops: batch }),
                Code::InvalidArgument,
                &["key"],
            );
            let unknown_family =
                WriteOp { op: Some(Op::Put(PutOp { key: b"new-b".to_vec(), value: b"b".to_vec(), family: "no_such_family".into() })) };
            let batch = vec![kv_put("new-a", "a"), kv_delete("k00"), unknown_family];
            expect_status(
                &cluster,
                "Write with an unknown family",
                rpc!(node(), write, WriteRequest { tenant: RT.into(), table: KV.into(), ops: batch }),
                Code::NotFound,
                &[],
            );
            let kvs = ok(&cluster, "Scan after failed Writes", scan_retry(&node(), kv_scan("", "", "", 0), &RetryPolicy::STEADY).await);
            assert_eq!(kv_keys(&kvs), names(0..20, kv_key), "a rejected Write changed the table");
            let batch = vec![kv_put("new-a", "a"), kv_delete("k00"), kv_put("k01", "v1-updated")];
            let resp = ok(&cluster, "Write mixed", rpc!(node(), write, WriteRequest { tenant: RT.into(), table: KV.into(), ops: batch }));
            revisions.next("Write mixed", resp.header);
            let kvs = ok(&cluster, "Scan after Write", scan_retry(&node(), kv_scan("", "", "", 3), &RetryPolicy::STEADY).await);
            assert_eq!(
                kvs.iter()
                    .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
                    .collect::<Vec<_>>(),
                vec![("k01".into(), "v1-updated".into()), ("k02".into(), "v2".into()), ("k03".into(), "v3".into())],
            );
            let got = ok(&cluster, "Get new-a", rpc!(node(), get, get_req(RT, KV, "", b"new-a")));
            assert!(got.found && got.value == b"a", "Get new-a: {got:?}");

            let del = |key: &str| DeleteRequest { tenant: RT.into(), table: KV.into(), key: key.into(), family: String::new() };
            let resp = ok(&cluster, "Delete k02", rpc!(node(), delete, del("k02")));
            assert!(resp.existed, "Delete k02: existed = false");
            revisions.next("Delete k02", resp.header);
            let resp = ok(&cluster, "Delete k02 again", rpc!(node(), delete, del("k02")));
            assert!(!resp.existed, "Delete of a missing key: existed = true");

            let cas = |expected: Option<&str>, new: Option<&str>| CompareAndSwapRequest {
                tenant: RT.into(),
                table: KV.into(),
                key: b"cas".to_vec(),
                family: "f".into(),
                expected_value: expected.map(|v| v.as_bytes().to_vec()),
                new_value: new.map(|v| v.as_bytes().to_vec()),
            };
            let r = ok(&cluster, "CAS create", rpc!(node(), compare_and_swap, cas(None, Some("v1"))));
            assert!(r.succeeded && !r.current_found, "CAS on a missing key: {r:?}");
            revisions.next("CAS create", r.header);
            let r = ok(&cluster, "CAS v1 -> v2", rpc!(node(), compare_and_swap, cas(Some("v1"), Some("v2"))));
            assert!(r.succeeded && r.current_found && r.current_value == b"v1", "CAS v1 -> v2: {r:?}");
            revisions.next("CAS v1 -> v2", r.header);
            let r = ok(&cluster, "CAS with a wrong expectation", rpc!(node(), compare_and_swap, cas(Some("wrong"), Some("v3"))));
            assert!(!r.succeeded && r.current_found && r.current_value == b"v2", "failed CAS reports the current value: {r:?}");
            let r = ok(&cluster, "CAS expecting absence", rpc!(node(), compare_and_swap, cas(None, Some("v3"))));
            assert!(!r.succeeded && r.current_value == b"v2", "CAS expecting absence of an existing key: {r:?}");
            let got = ok(&cluster, "Get cas", rpc!(node(), get, get_req(RT, KV, "f", b"cas")));
            assert!(got.found && got.value == b"v2", "failed CAS changed the value: {got:?}");
            let r = ok(&cluster, "CAS delete", rpc!(node(), compare_and_swap, cas(Some("v2"), None)));
            assert!(r.succeeded, "CAS delete: {r:?}");
            let got = ok(&cluster, "Get cas after delete", rpc!(node(), get, get_req(RT, KV, "f", b"cas")));
            assert!(!got.found, "CAS with unset new_value did not delete: {got:?}");

            // --- DropTable: reads fail with NOT_FOUND; a new table of that name is empty.
            let drop_people = DropTableRequest { tenant: RT.into(), name: PEOPLE.into() };
            ok(&cluster, "DropTable people", rpc!(admin, drop_table, drop_people.clone()));
            for id in cluster.ids() {
                let c = cluster.data_client(id);
                expect_status(
                    &cluster,
                    &format!("ReadRow of a dropped table via node {id}"),
                    rpc!(c, read_row, read_row("user/001", &[], &[])),
                    Code::NotFound,
                    &[],
                );
                expect_status(
                    &cluster,
                    &format!("ScanRows of a dropped table via node {id}"),
                    scan_rows(&c, rows_req("", "", "", &[], 0)).await,
                    Code::NotFound,
                    &[],
                );
            }
            expect_status(&cluster, "DropTable people again", rpc!(admin, drop_table, drop_people), Code::NotFound, &[]);
            let tables = ok(&cluster, "ListTables after drop", rpc!(admin, list_tables, ListTablesRequest { tenant: RT.into() }));
            let left: Vec<&str> = tables.tables.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(left, vec![KV], "ListTables after DropTable");

            ok(&cluster, "CreateTable people again", create_table(&mut admin, RT, PEOPLE, &["info", "stats"]).await);
            let got = ok(&cluster, "ReadRow in the new table", rpc!(node(), read_row, read_row("user/001", &[], &[])));
            assert!(!got.found, "a re-created table shows a row of the dropped one: {:?}", got.row);
            let rows = ok(&cluster, "ScanRows of the new table", scan_rows(&node(), rows_req("", "", "", &[], 0)).await);
            assert!(rows.is_empty(), "a re-created table shows rows of the dropped one: {:?}", row_keys(&rows));
            // The other table of the tenant is untouched.
            let got = ok(&cluster, "Get new-a after DropTable", rpc!(node(), get, get_req(RT, KV, "f", b"new-a")));
            assert!(got.found && got.value == b"a", "DropTable of people changed rt/kv: {got:?}");
        })
        .await;
}
