//! `kho load` against real clusters, a real PostgreSQL server and real files
//! (docs/MIGRATION.md):
//! - CSV (BOM, quotes, embedded newlines, bad rows) and JSON Lines (zstd-compressed,
//!   nested JSON, nulls) files of 100,000+ rows load, verify, and read back as mapped; the
//!   bad rows are in the reject file with their line numbers and reasons;
//! - a PostgreSQL table with integer, numeric, Vietnamese text, timestamptz, date, bytea,
//!   boolean, json, jsonb and NULLs loads, verifies, and reads back in the documented
//!   encodings;
//! - into an encrypted tenant's table with hashed row keys: the loader killed (SIGKILL) at a
//!   random point and a node killed during the load, `--resume` finishes with every row
//!   once and verification passing; a row changed behind the load's back is named by
//!   `kho load verify`; no loaded name is found in any file under the nodes' data
//!   directories.
//!
//! Checked to fail: with the checkpoint's digest folded before its batch is acknowledged
//! (or a batch's rows skipped on resume), the resumed load's verification fails.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kho_cluster_tests::disk::{files_under, search_files};
use kho_cluster_tests::postgres::TempPostgres;
use kho_cluster_tests::{create_table, create_table_with, create_tenant, test_seed, Cluster, ClusterOptions};
use kho_proto::v1 as pb;
use rand::{Rng as _, SeedableRng as _};

/// Longest a test body runs, seconds.
const TEST_LIMIT_S: u64 = 600;
/// Rows of the CSV and JSON Lines files, count.
const FILE_ROWS: u64 = 100_000;
/// Rows of the load that is killed and resumed, count.
const RESUMED_ROWS: u64 = 300_000;

const NAMES: &[&str] = &[
    "Nguyễn Văn An",
    "Trần Thị Bình",
    "Lê Hoàng Cường",
    "Phạm Minh Đức",
    "Hoàng Thị Ngọc Ánh",
    "Vũ Đình Phúc",
    "Đặng Thu Giang",
    "Bùi Quốc Huy",
];

fn endpoints(cluster: &Cluster) -> String {
    cluster.ids().into_iter().map(|id| cluster.addr(id).to_string()).collect::<Vec<_>>().join(",")
}

/// Runs `kho` with `args`: exit code, stdout, stderr.
fn kho(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = cluster.kho_command().env("KHO_ENDPOINTS", endpoints(cluster)).args(args).output().expect("run kho");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `kho` as the principal of `token`: TLS with the cluster's CA, no client certificate.
fn kho_as(cluster: &Cluster, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(kho_cluster_tests::kho_binary());
    if let Some(t) = cluster.tls() {
        cmd.env("KHO_CA", t.ca_cert());
    }
    let out = cmd.env("KHO_ENDPOINTS", endpoints(cluster)).env("KHO_TOKEN", token).args(args).output().expect("run kho");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn kho_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, out, err) = kho(cluster, args);
    assert_eq!(code, 0, "kho {} failed:\n{out}\n{err}", args.join(" "));
    out
}

/// A unique name per row: a full name from the list and the row number.
fn name(i: u64) -> String {
    format!("{} {i:06}", NAMES[(i % NAMES.len() as u64) as usize])
}

async fn read_row(cluster: &Cluster, tenant: &str, table: &str, key: &[u8]) -> Option<pb::Row> {
    let mut data = cluster.data_client(1);
    let r = data
        .read_row(pb::ReadRowRequest { tenant: tenant.into(), table: table.into(), row_key: key.to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    r.found.then(|| r.row.unwrap())
}

fn cell<'a>(row: &'a pb::Row, family: &str, qualifier: &str) -> Option<&'a [u8]> {
    row.cells.iter().find(|c| c.family == family && c.qualifier == qualifier.as_bytes()).map(|c| c.value.as_slice())
}

fn flip64(v: i64) -> Vec<u8> {
    ((v as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

fn flip32(v: i32) -> Vec<u8> {
    ((v as u32) ^ (1 << 31)).to_be_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_and_json_lines_files_load_verify_and_reject_bad_rows_with_their_lines() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster.wait_ready().await;
    cluster
        .bounded("load files", Duration::from_secs(TEST_LIMIT_S), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "dan_cu").await.unwrap();
            create_table(&mut admin, "dan_cu", "cong_dan", &["person"]).await.unwrap();
            create_table(&mut admin, "dan_cu", "ho_so", &["doc"]).await.unwrap();
            let dir = tempfile::tempdir().unwrap();

            // CSV: a BOM, a quoted name with a comma, notes with quotes and newlines, and
            // three bad rows (a birth year that is no integer, a missing key, a date that is
            // no date).
            let csv = dir.path().join("cong_dan.csv");
            let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
            f.write_all("\u{feff}citizen_id,full_name,birth_year,birth_date,note\n".as_bytes()).unwrap();
            let mut line = 2u64;
            let mut bad_lines = Vec::new();
            for i in 0..FILE_ROWS {
                let (id, year, date) = match i {
                    10 => (format!("{i:012}"), "19x0".to_string(), "1990-01-01".to_string()),
                    20 => (String::new(), "1990".to_string(), "1990-01-01".to_string()),
                    30 => (format!("{i:012}"), "1990".to_string(), "31/12/1990".to_string()),
                    _ => {
                        (format!("{i:012}"), (1940 + i % 70).to_string(), format!("{}-{:02}-{:02}", 1940 + i % 70, 1 + i % 12, 1 + i % 28))
                    }
                };
                if [10, 20, 30].contains(&i) {
                    bad_lines.push(line);
                }
                let note = if i % 5 == 0 { format!("\"ghi chú \"\"{i}\"\"\nhai, ba\"") } else { String::new() };
                writeln!(f, "{id},\"{}, Hà Nội\",{year},{date},{note}", name(i)).unwrap();
                line += if i % 5 == 0 { 2 } else { 1 };
            }
            f.flush().unwrap();
            drop(f);
            let mapping = dir.path().join("cong_dan.toml");
            std::fs::write(
                &mapping,
                r#"version = 1
key = ["citizen_id"]
[[column]]
name = "citizen_id"
type = "text"
[[column]]
name = "full_name"
type = "text"
cell = "person:ho_ten"
[[column]]
name = "birth_year"
type = "integer"
cell = "person:nam_sinh"
[[column]]
name = "birth_date"
type = "date"
cell = "person:ngay_sinh"
[[column]]
name = "note"
type = "text"
cell = "person:ghi_chu"
"#,
            )
            .unwrap();
            let rejects = dir.path().join("rejects.jsonl");
            // The first bad row stops a job with the default --max-rejects 0.
            let (code, out, err) = kho(
                &cluster,
                &["load", "csv", csv.to_str().unwrap(), "--into", "dan_cu/cong_dan", "--mapping", mapping.to_str().unwrap(), "--dry-run"],
            );
            assert_eq!(code, 1, "a dry run with a bad row and --max-rejects 0 stops:\n{out}\n{err}");
            assert!(out.contains("exceeds --max-rejects 0"), "{out}");
            let out = kho_ok(
                &cluster,
                &[
                    "load",
                    "csv",
                    csv.to_str().unwrap(),
                    "--into",
                    "dan_cu/cong_dan",
                    "--mapping",
                    mapping.to_str().unwrap(),
                    "--job",
                    "cong-dan-csv",
                    "--max-rejects",
                    "3",
                    "--reject-file",
                    rejects.to_str().unwrap(),
                ],
            );
            let loaded = FILE_ROWS - 3;
            assert!(
                out.contains(&format!("read {FILE_ROWS} rows, loaded {loaded}, rejected 3")) && out.contains("verification: passed"),
                "{out}"
            );
            // Each bad row in the reject file: its line and why.
            let lines: Vec<serde_json::Value> =
                std::fs::read_to_string(&rejects).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(lines.len(), 3, "{lines:?}");
            for (l, want_line) in lines.iter().zip(&bad_lines) {
                assert_eq!(l["line"].as_u64(), Some(*want_line), "{l}");
                assert_eq!(l["source"].as_str(), Some("cong_dan.csv"), "{l}");
            }
            let reasons: Vec<&str> = lines.iter().map(|l| l["reason"].as_str().unwrap()).collect();
            assert!(reasons[0].contains("birth_year") && reasons[0].contains("19x0"), "{reasons:?}");
            assert!(reasons[1].contains("citizen_id"), "{reasons:?}");
            assert!(reasons[2].contains("birth_date") && reasons[2].contains("31/12/1990"), "{reasons:?}");

            // Read back: the row as the mapping says, the note with its quotes and newline.
            let row = read_row(&cluster, "dan_cu", "cong_dan", b"000000000005").await.expect("row 5");
            assert_eq!(cell(&row, "person", "ho_ten"), Some(format!("{}, Hà Nội", name(5)).as_bytes()));
            assert_eq!(cell(&row, "person", "nam_sinh"), Some(flip64(1945).as_slice()));
            assert_eq!(cell(&row, "person", "ghi_chu"), Some("ghi chú \"5\"\nhai, ba".as_bytes()));
            let days = (chrono_days(1945, 6, 6)) as i32;
            assert_eq!(cell(&row, "person", "ngay_sinh"), Some(flip32(days).as_slice()));
            assert!(read_row(&cluster, "dan_cu", "cong_dan", b"000000000010").await.is_none(), "a rejected row is not loaded");

            // The job is listed, done.
            let status = kho_ok(&cluster, &["load", "status"]);
            assert!(status.lines().any(|l| l.starts_with("cong-dan-csv") && l.contains("done")), "{status}");

            // JSON Lines, zstd-compressed: nested JSON, nulls and absent keys.
            let jsonl = dir.path().join("ho_so.jsonl.zst");
            let mut enc = zstd_writer(&jsonl);
            for i in 0..FILE_ROWS {
                let tags = if i % 3 == 0 { serde_json::Value::Null } else { serde_json::json!({"loai": "CCCD", "so": [i, i + 1]}) };
                let mut obj = serde_json::json!({"so_ho_so": format!("HS{i:08}"), "chu_ho": name(i), "the": tags});
                if i % 4 == 0 {
                    obj.as_object_mut().unwrap().insert("dien_tich".into(), serde_json::json!(null));
                } else {
                    obj.as_object_mut().unwrap().insert("dien_tich".into(), serde_json::json!(format!("{}.{:02}", 30 + i % 200, i % 100)));
                }
                writeln!(enc, "{obj}").unwrap();
            }
            enc.finish().unwrap();
            let mapping = dir.path().join("ho_so.toml");
            std::fs::write(
                &mapping,
                r#"version = 1
key = ["so_ho_so"]
[[column]]
name = "so_ho_so"
type = "text"
[[column]]
name = "chu_ho"
type = "text"
cell = "doc:chu_ho"
[[column]]
name = "the"
type = "json"
cell = "doc:the"
[[column]]
name = "dien_tich"
type = "decimal"
cell = "doc:dien_tich"
"#,
            )
            .unwrap();
            let out = kho_ok(
                &cluster,
                &[
                    "load",
                    "jsonl",
                    jsonl.to_str().unwrap(),
                    "--into",
                    "dan_cu/ho_so",
                    "--mapping",
                    mapping.to_str().unwrap(),
                    "--job",
                    "ho-so",
                    // The other write path: each batch a Raft write of its cells.
                    "--write-path",
                    "rows",
                ],
            );
            assert!(
                out.contains(&format!("read {FILE_ROWS} rows, loaded {FILE_ROWS}, rejected 0")) && out.contains("verification: passed"),
                "{out}"
            );
            let row = read_row(&cluster, "dan_cu", "ho_so", b"HS00000001").await.expect("row 1");
            assert_eq!(cell(&row, "doc", "the"), Some(br#"{"loai":"CCCD","so":[1,2]}"#.as_slice()));
            assert_eq!(cell(&row, "doc", "dien_tich"), Some(b"31.01".as_slice()));
            let row = read_row(&cluster, "dan_cu", "ho_so", b"HS00000000").await.expect("row 0");
            assert_eq!(cell(&row, "doc", "the"), None, "a null is no cell");
            assert_eq!(cell(&row, "doc", "dien_tich"), None, "a null is no cell");
            // Verifying again later reads the table again.
            let out = kho_ok(&cluster, &["load", "verify", "ho-so", "--from-source"]);
            assert!(out.contains("verification: passed"), "{out}");

            // Another principal, even one that may write the whole table, neither sees nor
            // resumes nor forgets the admin's job; with write on one family only it cannot
            // start a load.
            let token = admin
                .create_token(pb::CreateTokenRequest { principal: "migrator".into(), ttl_seconds: 3_600, note: String::new() })
                .await
                .unwrap()
                .into_inner()
                .token;
            for (table, family) in [("cong_dan", ""), ("ho_so", "doc")] {
                let grant = pb::Grant {
                    principal: "migrator".into(),
                    tenant: "dan_cu".into(),
                    table: table.into(),
                    family: family.into(),
                    permissions: vec![pb::Permission::Read as i32, pb::Permission::Write as i32],
                    ..Default::default()
                };
                admin.create_grant(pb::CreateGrantRequest { grant: Some(grant) }).await.unwrap();
            }
            cluster.wait_grants_current(&token).await;
            for args in
                [&["load", "status", "cong-dan-csv"][..], &["load", "--resume", "cong-dan-csv"], &["load", "forget", "cong-dan-csv"]]
            {
                let (code, out, err) = kho_as(&cluster, &token, args);
                assert_eq!(code, 1, "{args:?}: {out}{err}");
                assert!(err.contains("does not exist (or is another principal's)"), "{args:?}: {out}{err}");
            }
            let status = kho_as(&cluster, &token, &["load", "status"]).1;
            assert!(!status.contains("cong-dan-csv"), "{status}");
            let (code, out, err) = kho_as(
                &cluster,
                &token,
                &[
                    "load",
                    "jsonl",
                    jsonl.to_str().unwrap(),
                    "--into",
                    "dan_cu/ho_so",
                    "--mapping",
                    mapping.to_str().unwrap(),
                    "--allow-nonempty",
                ],
            );
            assert_eq!(code, 1, "{out}{err}");
            assert!(err.contains("PERMISSION_DENIED") && err.contains("needs write on the whole table"), "{out}{err}");
            assert!(kho_ok(&cluster, &["load", "status"]).contains("cong-dan-csv"), "the admin still has its job");
        })
        .await;
}

fn zstd_writer(path: &Path) -> zstd::stream::write::Encoder<'static, std::fs::File> {
    zstd::stream::write::Encoder::new(std::fs::File::create(path).unwrap(), 3).unwrap()
}

/// Days from 1970-01-01 to a date (proleptic Gregorian).
fn chrono_days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_table_of_every_type_loads_and_verifies() {
    let pg = TempPostgres::start();
    pg.sql(
        "CREATE TABLE cong_dan (
            id bigint PRIMARY KEY,
            so_cccd integer,
            ho_ten text,
            thu_nhap numeric(14,2),
            cap_luc timestamptz,
            ngay_sinh date,
            anh bytea,
            con_song boolean,
            ho_so json,
            the jsonb,
            ghi_chu varchar(100)
        );
        INSERT INTO cong_dan
        SELECT i, i * 7, 'Nguyễn Thị Ánh ' || i, (i * 1234.5)::numeric(14,2),
               timestamptz '2024-05-01 10:00:00+07' + i * interval '1 second',
               date '1950-01-01' + (i % 20000), decode(lpad(to_hex(i), 8, '0'), 'hex'), i % 2 = 0,
               json_build_object('so', i, 'noi', 'Hà Nội'), jsonb_build_object('k', i),
               CASE WHEN i % 3 = 0 THEN NULL ELSE 'ghi chú ' || i END
        FROM generate_series(1, 20000) AS i;
        INSERT INTO cong_dan (id) VALUES (999999);
        INSERT INTO cong_dan (id, ho_ten, ngay_sinh) VALUES (888888, 'Vô Hạn', 'infinity');",
    );
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster.wait_ready().await;
    cluster
        .bounded("load postgres", Duration::from_secs(TEST_LIMIT_S), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "bhxh").await.unwrap();
            create_table(&mut admin, "bhxh", "cong_dan", &["p"]).await.unwrap();
            let dsn = pg.dsn();
            // The proposed mapping takes each column's type from PostgreSQL.
            let mapping = kho_ok(
                &cluster,
                &[
                    "load",
                    "postgres",
                    "--dsn",
                    &dsn,
                    "--table",
                    "cong_dan",
                    "--into",
                    "bhxh/cong_dan",
                    "--key",
                    "id",
                    "--family",
                    "p",
                    "--infer",
                ],
            );
            for (col, ty) in [
                ("id", "integer"),
                ("thu_nhap", "decimal"),
                ("cap_luc", "timestamptz"),
                ("ngay_sinh", "date"),
                ("anh", "bytes"),
                ("con_song", "boolean"),
                ("ho_so", "json"),
                ("the", "json"),
                ("ghi_chu", "text"),
            ] {
                assert!(mapping.contains(&format!("name = \"{col}\"\ntype = \"{ty}\"")), "{col} as {ty}:\n{mapping}");
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("m.toml");
            std::fs::write(&file, &mapping).unwrap();
            // Row 999999 has every column but the key NULL, row 888888 an infinite date:
            // both rejected, so allow two.
            let out = kho_ok(
                &cluster,
                &[
                    "load",
                    "postgres",
                    "--dsn",
                    &dsn,
                    "--table",
                    "cong_dan",
                    "--into",
                    "bhxh/cong_dan",
                    "--mapping",
                    file.to_str().unwrap(),
                    "--job",
                    "pg",
                    "--max-rejects",
                    "2",
                    "--reject-file",
                    dir.path().join("r.jsonl").to_str().unwrap(),
                ],
            );
            assert!(out.contains("read 20002 rows, loaded 20000, rejected 2") && out.contains("verification: passed"), "{out}");
            let rejects = std::fs::read_to_string(dir.path().join("r.jsonl")).unwrap();
            assert!(rejects.contains("ngay_sinh") && rejects.contains("NULL"), "{rejects}");
            let row = read_row(&cluster, "bhxh", "cong_dan", &flip64(2)).await.expect("row 2");
            assert_eq!(cell(&row, "p", "so_cccd"), Some(flip64(14).as_slice()));
            assert_eq!(cell(&row, "p", "ho_ten"), Some("Nguyễn Thị Ánh 2".as_bytes()));
            assert_eq!(cell(&row, "p", "thu_nhap"), Some(b"2469.00".as_slice()));
            // 2024-05-01 03:00:02 UTC in microseconds.
            let micros = (chrono_days(2024, 5, 1) * 86_400 + 3 * 3_600 + 2) * 1_000_000;
            assert_eq!(cell(&row, "p", "cap_luc"), Some(flip64(micros).as_slice()));
            assert_eq!(cell(&row, "p", "ngay_sinh"), Some(flip32((chrono_days(1950, 1, 1) + 2) as i32).as_slice()));
            assert_eq!(cell(&row, "p", "anh"), Some([0u8, 0, 0, 2].as_slice()));
            assert_eq!(cell(&row, "p", "con_song"), Some([1u8].as_slice()));
            assert_eq!(cell(&row, "p", "ho_so"), Some(r#"{"so" : 2, "noi" : "Hà Nội"}"#.as_bytes()));
            assert_eq!(cell(&row, "p", "the"), Some(r#"{"k": 2}"#.as_bytes()));
            assert_eq!(cell(&row, "p", "ghi_chu"), Some("ghi chú 2".as_bytes()));
            let row = read_row(&cluster, "bhxh", "cong_dan", &flip64(3)).await.expect("row 3");
            assert_eq!(cell(&row, "p", "ghi_chu"), None, "NULL is no cell");
            let out = kho_ok(&cluster, &["load", "verify", "pg", "--from-source"]);
            assert!(out.contains("verification: passed"), "{out}");
        })
        .await;
    drop(pg);
}

/// The rows of the resumed load (citizen id, name, birth year) in two files, each with one
/// row whose name is not UTF-8 (rejected) at line 1001 of its file.
fn write_citizens(dir: &Path) -> [PathBuf; 2] {
    let half = RESUMED_ROWS / 2;
    let paths = [dir.join("citizens-1.csv"), dir.join("citizens-2.csv")];
    for (part, path) in paths.iter().enumerate() {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(f, "citizen_id,full_name,birth_year").unwrap();
        for i in part as u64 * half..(part as u64 + 1) * half {
            if i % half == 999 {
                f.write_all(&[format!("{:012},bad ", 20_000_000 + i).as_bytes(), &[0xff], b" name,1990\n"].concat()).unwrap();
            }
            writeln!(f, "{:012},{},{}", 10_000_000 + i, name(i), 1940 + i % 70).unwrap();
        }
    }
    paths
}

/// Starts a load in the background; its stderr (JSON progress lines) is read by a thread
/// that sends each line's rows_loaded.
fn spawn_load(cluster: &Cluster, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<u64>) {
    let mut cmd: Command = cluster.kho_command();
    cmd.env("KHO_ENDPOINTS", endpoints(cluster)).env("KHO_LOG", "kho=debug").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start kho load");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if v["rows_loaded"].is_u64() => {
                    let _ = tx.send(v["rows_loaded"].as_u64().unwrap_or(0));
                }
                _ => println!("loader: {line}"),
            }
        }
    });
    (child, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_killed_with_a_node_resumes_to_every_row_once_and_leaves_no_plaintext() {
    let seed = test_seed("resumed load");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let opts = ClusterOptions { encrypted: true, ..ClusterOptions::default() };
    let cluster = Cluster::start(3, opts).await;
    cluster.wait_ready().await;
    cluster
        .bounded("resumed load", Duration::from_secs(TEST_LIMIT_S), async {
            let mut admin = cluster.admin_client(1);
            create_tenant(&mut admin, "dan_cu").await.unwrap();
            create_table_with(&mut admin, "dan_cu", "cong_dan", &["person"], true).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let [csv1, csv2] = write_citizens(dir.path());
            let rejects = dir.path().join("rejects.jsonl");
            let args = [
                "load",
                "csv",
                csv1.to_str().unwrap(),
                csv2.to_str().unwrap(),
                "--into",
                "dan_cu/cong_dan",
                "--key",
                "citizen_id",
                "--family",
                "person",
                "--job",
                "resumed",
                "--max-rejects",
                "2",
                "--reject-file",
                rejects.to_str().unwrap(),
                "--batch-rows",
                "1000",
                "--concurrency",
                "2",
                "--progress",
                "json",
                "--progress-secs",
                "0.2",
            ];
            // Killed once at least this many rows are loaded (and checkpointed, a second later).
            let kill_at = rng.random_range(RESUMED_ROWS / 5..RESUMED_ROWS * 3 / 5);
            println!("the loader is killed once {kill_at} of {RESUMED_ROWS} rows are loaded");
            let (mut child, progress) = spawn_load(&cluster, &args);
            let started = Instant::now();
            let mut victim = None;
            loop {
                match progress.recv_timeout(Duration::from_secs(60)) {
                    Ok(n) => {
                        if victim.is_none() && n >= kill_at / 2 {
                            // A node dies mid-load; the loader goes on through the others.
                            let v = rng.random_range(1..=3u64);
                            cluster.kill(v);
                            victim = Some(v);
                            println!("node {v} killed at {n} rows loaded");
                        }
                        if n >= kill_at {
                            break;
                        }
                    }
                    Err(e) => panic!("no progress from the loader ({e}) after {:?}: {:?}", started.elapsed(), child.try_wait()),
                }
            }
            child.kill().expect("SIGKILL the loader");
            let status = child.wait().unwrap();
            assert!(!status.success(), "the loader was killed: {status:?}");
            if let Some(v) = victim {
                cluster.restart(v).await;
            }
            let status = kho_ok(&cluster, &["load", "status", "resumed"]);
            assert!(status.contains("state:     running"), "{status}");
            let out = kho_ok(&cluster, &["load", "--resume", "resumed", "--progress", "none"]);
            assert!(
                out.contains(&format!("read {} rows, loaded {RESUMED_ROWS}, rejected 2", RESUMED_ROWS + 2))
                    && out.contains("verification: passed"),
                "{out}"
            );
            // The reject file holds each bad row once, though the rows after the last
            // checkpoint were read twice.
            let lines: Vec<serde_json::Value> =
                std::fs::read_to_string(&rejects).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let at: Vec<(String, u64)> =
                lines.iter().map(|l| (l["source"].as_str().unwrap().to_string(), l["line"].as_u64().unwrap())).collect();
            assert_eq!(at, [("citizens-1.csv".to_string(), 1001), ("citizens-2.csv".to_string(), 1001)], "{lines:?}");
            assert!(lines.iter().all(|l| l["reason"].as_str().unwrap().contains("UTF-8")), "{lines:?}");
            // The digest the job kept across the crash is the table's: it was not rescued
            // by reading the source again.
            assert!(!out.contains("recorded digest differed"), "{out}");
            // Every row is there once: the table holds exactly the source's rows.
            let mut load = cluster.load_client(1);
            let sum = load
                .checksum_table(pb::ChecksumTableRequest { tenant: "dan_cu".into(), table: "cong_dan".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            let rows: u64 = sum.digest.unwrap().buckets.iter().map(|b| b.rows).sum();
            assert_eq!(rows, RESUMED_ROWS);

            // Control: one stored row changed behind the load's back is named.
            let changed = format!("{:012}", 10_000_000 + 77);
            kho_ok(
                &cluster,
                &["row", "mutate", "--tenant", "dan_cu", "--table", "cong_dan", "--row", &changed, "--set", "person:full_name=Ai Đó Khác"],
            );
            let (code, out, err) = kho(&cluster, &["load", "verify", "resumed"]);
            assert_eq!(code, 1, "{out}\n{err}");
            assert!(
                out.contains("FAILED") && out.contains(&format!("row `{changed}` (citizens-1.csv:")) && out.contains("differs"),
                "{out}"
            );

            // No loaded name in plaintext anywhere under the nodes' data directories
            // (their SST staging directories included).
            for id in cluster.ids() {
                cluster.stop(id).await;
            }
            // The rows came by the fast path: every replica ingested SST runs (RocksDB's
            // info log names each ingested file), whether it applied them from the log or
            // not.
            for id in cluster.ids() {
                let db = cluster.data_dir(id).join("db");
                let ingested = files_under(&db)
                    .unwrap()
                    .into_iter()
                    .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("LOG")))
                    .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).matches("was ingested in L").count())
                    .sum::<usize>();
                assert!(ingested > 0, "node {id} ingested no SST run (RocksDB LOG files under {})", db.display());
            }
            let mut files = Vec::new();
            for id in cluster.ids() {
                files.extend(files_under(cluster.data_dir(id)).unwrap());
            }
            let needles: Vec<Vec<u8>> = (0..RESUMED_ROWS).step_by(997).map(|i| name(i).into_bytes()).collect();
            let report = search_files(&files, &needles).unwrap();
            let found: Vec<String> =
                report.found(needles.len()).iter().enumerate().filter(|(_, f)| **f).map(|(i, _)| name(i as u64 * 997)).collect();
            assert!(found.is_empty(), "loaded names in plaintext on disk: {found:?}\n{}", report.summary());
            assert!(report.bytes_searched() > 0);
        })
        .await;
}
