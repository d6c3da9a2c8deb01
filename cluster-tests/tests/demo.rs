//! The README's first quick-start command: `kho demo` starts a 3-node cluster with sample
//! citizens, prints its endpoints, a `kho row read` of a demo citizen shows the row through
//! any node, and Ctrl-C (SIGINT) stops every node cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kho_cluster_tests::kho_binary;

/// Longest wait for `kho demo: ready`, seconds.
const READY_TIMEOUT_S: u64 = 120;
/// Longest wait for the demo to stop after SIGINT, seconds.
const STOP_TIMEOUT_S: u64 = 30;

fn free_base_port() -> u16 {
    // Three consecutive free ports: bind them all, then release them.
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if first > 65_000 {
            continue;
        }
        let all: Vec<_> = (0..3).map(|i| std::net::TcpListener::bind(("127.0.0.1", first + i))).collect();
        if all.iter().all(Result::is_ok) {
            return first;
        }
    }
    panic!("no three consecutive free loopback ports found in 50 tries");
}

#[test]
fn demo_starts_loads_and_serves_rows_then_stops_on_ctrl_c() {
    let kho = kho_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let base_port = free_base_port();
    let mut demo = Command::new(&kho)
        .args(["demo", "--rows", "300", "--base-port", &base_port.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kho demo");
    // Read the demo's output on a thread, so the wait for `ready` is bounded.
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = demo.stdout.take().expect("stdout");
    let stderr = demo.stderr.take().expect("stderr");
    for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_S);
    let mut output = Vec::new();
    let mut citizen = None;
    let mut endpoints = None;
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(id) = line.strip_prefix("kho demo: first citizen id ") {
                    citizen = Some(id.trim().to_string());
                }
                if let Some(e) = line.strip_prefix("kho demo: endpoints ") {
                    endpoints = Some(e.trim().to_string());
                }
                let done = line.trim() == "kho demo: ready";
                output.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let stop = |demo: &mut std::process::Child| {
        // SIGINT, as Ctrl-C sends, to the demo's own pid.
        unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(STOP_TIMEOUT_S);
        loop {
            if let Some(status) = demo.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = demo.kill();
                let _ = demo.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    if !ready {
        stop(&mut demo);
        panic!("kho demo did not print `kho demo: ready` within {READY_TIMEOUT_S} s; output:\n{}", output.join("\n"));
    }
    let citizen = citizen.expect("the demo prints the first citizen id");
    let endpoints = endpoints.expect("the demo prints its endpoints");
    assert_eq!(endpoints.split(',').count(), 3, "three endpoints: {endpoints}");
    // Read the citizen through each node in turn: followers forward to the leader.
    for endpoint in endpoints.split(',') {
        let out = Command::new(&kho)
            .args(["row", "read", "--endpoints", endpoint, "--tenant", "dan_cu", "--table", "citizen", "--row", &citizen])
            .output()
            .expect("run kho row read");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kho row read via {endpoint} failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with(&citizen), "the row read starts with the row key: {text}");
        for cell in ["identity:ho_ten = ", "identity:ngay_sinh = ", "residence:tinh = "] {
            assert!(text.contains(cell), "row read via {endpoint} lacks `{cell}`: {text}");
        }
    }
    let status = stop(&mut demo);
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        output.push(line);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "kho demo did not exit cleanly within {STOP_TIMEOUT_S} s of SIGINT ({status:?}); output:\n{}",
        output.join("\n")
    );
    let stopped = output.iter().filter(|l| l.contains(") stopped: exit status: 0")).count();
    assert_eq!(stopped, 3, "every node stops cleanly; output:\n{}", output.join("\n"));
}
