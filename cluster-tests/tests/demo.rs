//! The README's first quick-start command: `kho demo` starts a 3-node cluster with sample
//! citizens, prints its endpoints, a `kho row read` of a demo citizen shows the row through
//! any node, and Ctrl-C (SIGINT) stops every node cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kho_cluster_tests::disk::{files_under, search_files, NEEDLE_BYTES_MIN};
use kho_cluster_tests::kho_binary;

/// Longest wait for `kho demo: ready`, seconds.
const READY_TIMEOUT_S: u64 = 120;
/// Longest wait for the demo to stop after SIGINT, seconds.
const STOP_TIMEOUT_S: u64 = 30;

/// The demo's peer ports are its client ports plus this (`kho demo`, docs/CLI.md).
const PEER_PORT_OFFSET: u16 = 100;

fn free_base_port() -> u16 {
    // Three consecutive free ports and the three peer ports: bind them all, then release them.
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if first > 65_000 {
            continue;
        }
        let ports = (0..3).flat_map(|i| [first + i, first + PEER_PORT_OFFSET + i]);
        let all: Vec<_> = ports.map(|p| std::net::TcpListener::bind(("127.0.0.1", p))).collect();
        if all.iter().all(Result::is_ok) {
            return first;
        }
    }
    panic!("no three consecutive free loopback ports found in 50 tries");
}

/// A running `kho demo`, its output read on threads so that every wait is bounded.
struct RunningDemo {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    citizen: Option<String>,
    endpoints: Option<String>,
    /// The variables of the `export KHO_ENDPOINTS=… KHO_CA=…` line the demo prints.
    env: Vec<(String, String)>,
    /// The demo's `--dir`, where it keeps `node-<id>.pid`.
    dir: std::path::PathBuf,
    stopped: bool,
}

impl RunningDemo {
    fn start(kho: &std::path::Path, args: &[&str], dir: &std::path::Path) -> RunningDemo {
        let mut child = Command::new(kho)
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kho demo");
        let (tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        RunningDemo {
            child,
            lines,
            output: Vec::new(),
            citizen: None,
            endpoints: None,
            env: Vec::new(),
            dir: dir.to_path_buf(),
            stopped: false,
        }
    }

    /// Waits at most READY_TIMEOUT_S for `kho demo: ready`, noting the endpoints and the
    /// first citizen id on the way. Stops the demo and panics with its output if not ready.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_S);
        loop {
            let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                self.stop();
                panic!("kho demo did not print `kho demo: ready` within {READY_TIMEOUT_S} s; output:\n{}", self.output.join("\n"));
            };
            if let Some(id) = line.strip_prefix("kho demo: first citizen id ") {
                self.citizen = Some(id.trim().to_string());
            }
            if let Some(e) = line.strip_prefix("kho demo: endpoints ") {
                self.endpoints = Some(e.trim().to_string());
            }
            if let Some(vars) = line.trim().strip_prefix("export ") {
                // The test's directories have no blanks or quotes: no shell unquoting needed.
                self.env = vars.split_whitespace().filter_map(|v| v.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
            }
            let done = line.trim() == "kho demo: ready";
            self.output.push(line);
            if done {
                return;
            }
        }
    }

    /// SIGINT, as Ctrl-C sends, to the demo's own pid; waits at most STOP_TIMEOUT_S, then
    /// kills it. Returns its exit status if it stopped by itself; keeps its last output.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stopped = true;
        // SAFETY: kill(2) on the demo's own positive pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(STOP_TIMEOUT_S);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if status.is_none() {
            // The demo did not stop its nodes: kill them by the pids it wrote.
            for id in 1..=3 {
                let pid = std::fs::read_to_string(self.dir.join(format!("node-{id}.pid"))).ok();
                if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()).filter(|p| *p > 0) {
                    // SAFETY: kill(2) on a positive pid this demo started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.output.push(line);
        }
        status
    }
}

/// A test that fails half-way still stops the demo and its nodes.
impl Drop for RunningDemo {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

#[test]
fn demo_starts_loads_and_serves_rows_then_stops_on_ctrl_c() {
    let kho = kho_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let base_port = free_base_port();
    let mut demo = RunningDemo::start(&kho, &["demo", "--rows", "300", "--base-port", &base_port.to_string()], dir.path());
    demo.wait_ready();
    let citizen = demo.citizen.clone().expect("the demo prints the first citizen id");
    let endpoints = demo.endpoints.clone().expect("the demo prints its endpoints");
    assert_eq!(endpoints.split(',').count(), 3, "three endpoints: {endpoints}");
    let names: Vec<&str> = demo.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["KHO_ENDPOINTS", "KHO_CA", "KHO_CERT", "KHO_KEY"], "the export line: {:?}", demo.env);
    // With the export line, a command needs no flags at all (TLS, the admin's certificate).
    let out = Command::new(&kho).args(["tenant", "list"]).envs(demo.env.clone()).output().expect("run kho tenant list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("dan_cu"),
        "kho tenant list with the demo's export line: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the CA the TLS port refuses the plaintext client, and the error says why.
    let out = Command::new(&kho).args(["tenant", "list", "--endpoints", &endpoints]).env_remove("KHO_CA").output().expect("run kho");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("KHO_CA"),
        "a plaintext client of the TLS demo: {} {err} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    // Read the citizen through each node in turn: followers serve the linearizable read
    // themselves after the leader's read index (follower reads).
    for endpoint in endpoints.split(',') {
        let out = Command::new(&kho)
            .args(["row", "read", "--endpoints", endpoint, "--tenant", "dan_cu", "--table", "citizen", "--row", &citizen])
            .envs(demo.env.clone())
            .output()
            .expect("run kho row read");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kho row read via {endpoint} failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with(&citizen), "the row read starts with the row key: {text}");
        for cell in ["identity:ho_ten = ", "identity:ngay_sinh = ", "residence:tinh = "] {
            assert!(text.contains(cell), "row read via {endpoint} lacks `{cell}`: {text}");
        }
    }
    readme_cross_agency_read(&kho, &demo.env, &citizen);
    let status = demo.stop();
    let output = &demo.output;
    assert!(
        status.is_some_and(|s| s.success()),
        "kho demo did not exit cleanly within {STOP_TIMEOUT_S} s of SIGINT ({status:?}); output:\n{}",
        output.join("\n")
    );
    let stopped = output.iter().filter(|l| l.contains(") stopped: exit status: 0")).count();
    assert_eq!(stopped, 3, "every node stops cleanly; output:\n{}", output.join("\n"));
}

/// The README's cross-agency read, command by command, as the demo's admin and as
/// another agency's application with a token: a grant that requires an access session,
/// a read refused without one, a session opened for a purpose on one field, the read in it
/// showing that field only, the session closed and the read refused again; the audit log
/// holds the session's read with its purpose and the row key hashed, and verifies.
fn readme_cross_agency_read(kho: &std::path::Path, env: &[(String, String)], citizen: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |app: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(kho);
        cmd.args(args).envs(env.iter().cloned());
        if let Some(token) = app {
            cmd.env_remove("KHO_CERT").env_remove("KHO_KEY").env("KHO_TOKEN", token);
        }
        let out = cmd.output().expect("run kho");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, token, err) = run(None, &["token", "create", "bhxh_app", "--ttl", "1d"]);
    assert!(ok, "kho token create: {err}");
    std::fs::write(dir.path().join("bhxh.token"), &token).expect("keep the token");
    let token = token.trim().to_string();
    let grant = ["grant", "add", "bhxh_app", "--tenant", "dan_cu", "--table", "citizen", "--family", "identity"];
    let (ok, _, err) = run(None, &[&grant[..], &["--qualifiers", "ho_ten", "--read", "--session-max", "1h"]].concat());
    assert!(ok, "kho grant add: {err}");
    let read = ["row", "read", "--tenant", "dan_cu", "--table", "citizen", "--row", citizen];
    // A node refuses a new token's requests until its copy of the grants is confirmed
    // (at most GRANTS_STALE_MAX_MS after it starts): retry that answer only, for 15 s.
    let started = Instant::now();
    let (ok, _, err) = loop {
        let r = run(Some(&token), &read);
        if !r.2.contains("UNAVAILABLE") || started.elapsed() > Duration::from_secs(15) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!ok && err.contains("PERMISSION_DENIED") && err.contains("access session"), "a read without a session: {err}");
    let open = ["session", "open", "--tenant", "dan_cu", "--table", "citizen", "--family", "identity", "--qualifiers", "ho_ten"];
    let (ok, session, err) = run(Some(&token), &[&open[..], &["--purpose", "xac minh ho so BHXH", "--duration", "10m"]].concat());
    assert!(ok, "kho session open: {err}");
    let session = session.trim().to_string();
    let (ok, text, err) = run(Some(&token), &[&read[..], &["--session", &session]].concat());
    assert!(ok, "a read in the session: {err}");
    assert!(text.contains("identity:ho_ten = ") && !text.contains("ngay_sinh") && text.contains("cells withheld"), "{text}");
    let (ok, _, err) = run(Some(&token), &["session", "close", &session]);
    assert!(ok, "kho session close: {err}");
    let (ok, _, err) = run(Some(&token), &[&read[..], &["--session", &session]].concat());
    assert!(!ok && err.contains("was closed"), "a read in the closed session: {err}");
    let (ok, log, err) = run(None, &["audit", "search", "--session", &session]);
    assert!(ok, "kho audit search: {err}");
    let read_record =
        log.lines().find(|l| l.contains("ReadRow") && l.contains("allowed")).unwrap_or_else(|| panic!("the read's record:\n{log}"));
    assert!(read_record.contains("xac minh ho so BHXH") && read_record.contains("keys=sha256/8: "), "{read_record}");
    assert!(!log.contains(citizen), "no citizen id in the audit log:\n{log}");
    assert!(log.contains("OpenAccessSession") && log.contains("CloseAccessSession"), "{log}");
    let (ok, text, err) = run(None, &["audit", "verify"]);
    assert!(ok && text.contains("audit log intact"), "kho audit verify: {text}{err}");
}

/// The acceptance for encryption at rest, on the real demo: after `kho demo` loads its
/// citizens, the nodes are restarted and compacted, no citizen name and no citizen id (the
/// row key of the hashed-key table `citizen`) appears in any file of any node's data
/// directory (SST, WAL, Raft log, MANIFEST, snapshots), while reads return the plaintext.
#[test]
fn demo_data_dirs_hold_no_citizen_name_or_id_after_restart_and_compaction() {
    const ROWS: &str = "300";
    let kho = kho_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let base_port = free_base_port();
    let port = base_port.to_string();
    // What the demo loads.
    let out = Command::new(&kho).args(["demo", "--print-rows", "--rows", ROWS]).output().expect("run kho demo --print-rows");
    assert!(out.status.success(), "kho demo --print-rows: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(rows.len(), 300, "one JSON line per row");
    let field = |r: &serde_json::Value, f: &str| r[f].as_str().expect("string field").to_string();
    let mut needles = Vec::new();
    let mut labels = Vec::new();
    for r in &rows {
        for (what, text) in [("name", field(r, "ho_ten")), ("citizen id", field(r, "id"))] {
            if text.len() >= NEEDLE_BYTES_MIN {
                labels.push(format!("{what} {text:?}"));
                needles.push(text.into_bytes());
            }
        }
    }
    assert!(needles.len() >= 550, "most names and every id are searchable ({} needles)", needles.len());

    // Load, stop.
    let load = Command::new(&kho)
        .args(["demo", "--rows", ROWS, "--no-wait", "--base-port", &port, "--dir"])
        .arg(dir.path())
        .output()
        .expect("run kho demo --no-wait");
    let load_text = format!("{}{}", String::from_utf8_lossy(&load.stdout), String::from_utf8_lossy(&load.stderr));
    assert!(load.status.success(), "kho demo --no-wait failed:\n{load_text}");
    assert!(load_text.contains("encrypted"), "the demo says its data is encrypted:\n{load_text}");

    // Restart on the same data, compact every node, read a row back, stop.
    let mut demo = RunningDemo::start(&kho, &["demo", "--rows", ROWS, "--base-port", &port], dir.path());
    demo.wait_ready();
    let endpoints = demo.endpoints.clone().expect("the demo prints its endpoints");
    let compact = Command::new(&kho)
        .args(["node", "compact", "--endpoints", &endpoints])
        .envs(demo.env.clone())
        .output()
        .expect("run kho node compact");
    let compact_ok = compact.status.success();
    let first = &rows[0];
    let read = Command::new(&kho)
        .args(["row", "read", "--endpoints", &endpoints, "--tenant", "dan_cu", "--table", "citizen", "--row", &field(first, "id")])
        .envs(demo.env.clone())
        .output()
        .expect("run kho row read");
    let status = demo.stop();
    assert!(
        compact_ok,
        "kho node compact failed: {}{}",
        String::from_utf8_lossy(&compact.stdout),
        String::from_utf8_lossy(&compact.stderr)
    );
    let read_text = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success() && read_text.contains(&field(first, "ho_ten")), "reads return the plaintext name: {read_text}");
    assert!(status.is_some_and(|s| s.success()), "the restarted demo stops cleanly: {status:?}");

    // Search every file of every node's data directory.
    let mut files = Vec::new();
    for id in 1..=3 {
        files.extend(files_under(&dir.path().join(format!("node-{id}"))).expect("list a data directory"));
    }
    let report = search_files(&files, &needles).expect("search the data directories");
    println!("searched {}", report.summary());
    assert!(!report.files_named(|n| n.ends_with(".sst")).is_empty(), "compaction left SST files to search: {}", report.summary());
    assert!(!report.files_named(|n| n.starts_with("MANIFEST")).is_empty(), "MANIFEST files are searched");
    // `<seq, 20 digits>.log`; RocksDB's own WAL files are `<6 digits>.log`.
    let shared_log_segment = |n: &str| n.len() == 24 && n.ends_with(".log");
    assert!(!report.files_named(shared_log_segment).is_empty(), "the shared Raft log's segments are searched: {}", report.summary());
    assert!(
        report.hits.is_empty(),
        "plaintext found in the data directories ({} hits):\n{}",
        report.hits.len(),
        report.describe_hits(&labels)
    );
}
