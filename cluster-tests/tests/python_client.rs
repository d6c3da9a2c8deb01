//! A client generated from `proto/` by Python's stock gRPC tooling (grpcio-tools) creates a
//! table, writes and reads a row, and scans, through every node of a real cluster.
//!
//! The test installs the pinned packages of `clients/python/requirements.txt` into a
//! virtual environment beside the build (`target/python-venv`, reused across runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kho_cluster_tests::{kho_binary, Cluster, ClusterOptions};

/// Longest time for creating the virtual environment and installing the packages, seconds.
const VENV_SETUP_TIMEOUT_S: u64 = 600;
/// Longest time for one run of the example client, seconds.
const CLIENT_TIMEOUT_S: u64 = 120;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cluster-tests is inside the repository").to_path_buf()
}

/// Runs a command to completion within `timeout`, killing it (by its pid) if it overruns.
fn run(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start {cmd:?}: {e}")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("waiting for a child process") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, format!("{cmd:?} did not finish within {} s", timeout.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let out = child.wait_with_output().expect("collecting a child's output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The venv's python, with grpcio and grpcio-tools installed.
fn python_with_grpc() -> PathBuf {
    let target_dir = kho_binary().parent().and_then(Path::parent).expect("kho binary is in target/<profile>/").to_path_buf();
    let venv = target_dir.join("python-venv");
    let python = venv.join("bin").join("python");
    let requirements = repo_root().join("clients/python/requirements.txt");
    let check = run(Command::new(&python).args(["-c", "import grpc, grpc_tools"]), Duration::from_secs(60));
    if check.0 {
        return python;
    }
    let timeout = Duration::from_secs(VENV_SETUP_TIMEOUT_S);
    let (ok, out) = run(Command::new("python3").args(["-m", "venv"]).arg(&venv), timeout);
    assert!(ok, "creating a Python virtual environment failed (scripts/ensure-deps installs python3-venv):\n{out}");
    let (ok, out) = run(Command::new(&python).args(["-m", "pip", "install", "-q", "-r"]).arg(&requirements), timeout);
    assert!(ok, "installing {} failed:\n{out}", requirements.display());
    python
}

#[tokio::test(flavor = "multi_thread")]
async fn python_stock_grpc_client_works_against_every_node() {
    let python = tokio::task::spawn_blocking(python_with_grpc).await.expect("venv setup task");
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    let example = repo_root().join("clients/python/example.py");
    for id in cluster.ids() {
        let addr = cluster.addr(id).to_string();
        let (python, example) = (python.clone(), example.clone());
        // TLS with the admin's client certificate: grpc.ssl_channel_credentials.
        let tls = cluster.tls().expect("the cluster runs with TLS").clone();
        let (ok, out) = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(&python);
            cmd.arg(&example).arg(&addr).arg("python_example");
            cmd.env("KHO_CA", tls.ca_cert()).env("KHO_CERT", tls.client_cert("admin")).env("KHO_KEY", tls.client_key("admin"));
            run(&mut cmd, Duration::from_secs(CLIENT_TIMEOUT_S))
        })
        .await
        .expect("client task");
        if !ok || !out.contains("python client: table created, row written and read, 5 keys scanned") {
            cluster.fail(format!("python client via node {id} failed:\n{out}"));
        }
        println!("node {id}: {}", out.trim());
    }

    // A token's principal (no client certificate; grpc.access_token_call_credentials), with
    // grants on its own tenant only: it works there and is refused the admin's tenant.
    let mut admin = cluster.admin_client(1);
    kho_cluster_tests::create_tenant(&mut admin, "python_token").await.expect("create tenant python_token");
    let token = admin
        .create_token(kho_proto::v1::CreateTokenRequest { principal: "py_app".into(), ttl_seconds: 600, note: "python test".into() })
        .await
        .expect("create a token")
        .into_inner()
        .token;
    let grant = kho_proto::v1::Grant {
        principal: "py_app".into(),
        tenant: "python_token".into(),
        permissions: vec![
            kho_proto::v1::Permission::Read as i32,
            kho_proto::v1::Permission::Write as i32,
            kho_proto::v1::Permission::Admin as i32,
        ],
        ..Default::default()
    };
    admin.create_grant(kho_proto::v1::CreateGrantRequest { grant: Some(grant) }).await.expect("grant py_app its tenant");
    // And a cross-agency grant on the admin's tenant, inside access sessions only.
    let cross = kho_proto::v1::Grant {
        principal: "py_app".into(),
        tenant: "python_example".into(),
        table: "people".into(),
        family: "identity".into(),
        permissions: vec![kho_proto::v1::Permission::Read as i32],
        session_required: true,
        session_duration_max_ms: 600_000,
        ..Default::default()
    };
    admin.create_grant(kho_proto::v1::CreateGrantRequest { grant: Some(cross) }).await.expect("grant py_app a session field");
    cluster.wait_grants_current(&token).await;
    let addr = cluster.addr(2).to_string();
    let tls = cluster.tls().expect("the cluster runs with TLS").clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(&python);
        cmd.arg(&example).arg(&addr).arg("python_token").arg("python_example");
        cmd.env("KHO_CA", tls.ca_cert()).env("KHO_TOKEN", token).env_remove("KHO_CERT").env_remove("KHO_KEY");
        cmd.env("KHO_SESSION_PURPOSE", "python test of a cross-agency read");
        run(&mut cmd, Duration::from_secs(CLIENT_TIMEOUT_S))
    })
    .await
    .expect("client task");
    let session_read = out.contains("in access session") && out.contains("['identity'] cells, cells withheld; refused once closed");
    if !ok || !out.contains("as py_app (token)") || !out.contains("a read of tenant python_example was refused") || !session_read {
        cluster.fail(format!("python client with a token failed:\n{out}"));
    }
    println!("token: {}", out.trim());
}
