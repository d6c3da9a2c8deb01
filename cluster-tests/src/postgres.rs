//! A throwaway PostgreSQL server for tests: Debian's `postgresql` package (installed by
//! `scripts/ensure-deps`), a fresh cluster made by `initdb` in a temporary directory,
//! listening on a Unix socket only (no TCP port), stopped (by its own pid) when dropped.
//! As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Longest wait for the server to accept connections, ms.
const PG_START_WAIT_MS: u64 = 60_000;
/// The port number in the socket's name (`.s.PGSQL.<port>`); no TCP port is opened.
const PG_SOCKET_PORT: u16 = 54_329;

pub struct TempPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    run_as: Option<String>,
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: on the PATH, or Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest).
fn bin_dir() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").exists() && d.join("pg_ctl").exists() {
                return d;
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok().map(|v| (v, e.path().join("bin"))))
                .filter(|(_, p)| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no initdb on the PATH or under /usr/lib/postgresql): run scripts/ensure-deps")
    })
}

impl TempPostgres {
    /// Starts a server; the database `kho` and the superuser `kho` (trust authentication on
    /// the socket) exist.
    pub fn start() -> TempPostgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("kho-pg-").tempdir().expect("temp dir");
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_string());
        if root {
            // The server's user owns its directory.
            let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()).status().expect("run chown");
            assert!(status.success(), "chown of {} to postgres failed", dir.path().display());
        }
        let pg = TempPostgres { bin, dir, run_as };
        let data = pg.data_dir();
        let out =
            pg.run("initdb", &["-D", data.to_str().unwrap(), "-U", "kho", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let opts = format!("-k {} -c listen_addresses='' -p {PG_SOCKET_PORT} -c fsync=off", pg.socket_dir().display());
        let log = pg.dir.path().join("postgres.log");
        let out = pg.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                &(PG_START_WAIT_MS / 1000).to_string(),
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let started = Instant::now();
        loop {
            let out = pg.psql_raw("postgres", "CREATE DATABASE kho");
            if out.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_millis(PG_START_WAIT_MS),
                "PostgreSQL did not accept connections: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        c.args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    /// The connection string of database `kho` as user `kho`.
    pub fn dsn(&self) -> String {
        format!("host={} port={PG_SOCKET_PORT} user=kho dbname=kho", self.socket_dir().display())
    }

    fn psql_raw(&self, db: &str, sql: &str) -> Output {
        let psql = if self.bin.join("psql").exists() { self.bin.join("psql") } else { PathBuf::from("psql") };
        Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &PG_SOCKET_PORT.to_string(), "-U", "kho", "-d", db, "-c", sql])
            .output()
            .expect("run psql")
    }

    /// Runs SQL in database `kho`; panics with psql's message when it fails.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.psql_raw("kho", sql);
        assert!(out.status.success(), "psql failed: {}\n{sql}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The postmaster's pid, from its pid file.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let out = self.run("pg_ctl", &["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]);
        if !out.status.success() {
            if let Some(pid) = self.pid() {
                // SAFETY: a plain signal to the server's own pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
