//! One running `kho server` child process, killed when dropped.
//!
//! A child is signalled only through its own pid and only while it has not been reaped, so
//! the pid cannot have been reused by an unrelated process.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often `terminate` checks whether the child has exited.
const EXIT_POLL_MS: u64 = 20;

/// A spawned server. Dropping it sends SIGKILL and reaps the child, so no process outlives
/// the harness, whatever path (panic, timeout, early return) drops it.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    pid: u32,
}

impl NodeProcess {
    /// Starts `kho server --config <config>`, stdout and stderr appended to `log`, with
    /// the extra environment variables `env` (a `FAILPOINTS` list).
    pub fn spawn(kho: &Path, config: &Path, log: &Path, node_id: u64, env: &[(String, String)]) -> std::io::Result<NodeProcess> {
        let mut log_file = OpenOptions::new().create(true).append(true).open(log)?;
        writeln!(log_file, "=== cluster-tests: starting node {node_id}: {} server --config {} ===", kho.display(), config.display())?;
        for (k, v) in env {
            writeln!(log_file, "=== cluster-tests: node {node_id} environment {k}={v} ===")?;
        }
        let stderr = log_file.try_clone()?;
        let mut cmd = Command::new(kho);
        cmd.arg("server").arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::from(log_file)).stderr(Stdio::from(stderr));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        set_parent_death_signal(&mut cmd);
        let child = cmd.spawn()?;
        let pid = child.id();
        Ok(NodeProcess { child: Some(child), pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL without waiting; `reap` (or drop) collects the child afterwards. Lets a
    /// caller kill several nodes at (nearly) the same instant.
    pub fn send_kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Err only if the child was already reaped, which `child` being Some excludes;
            // an exited-but-unreaped child ignores the signal.
            let _ = child.kill();
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the child, if it has not been reaped.
    pub fn signal(&self, signal: libc::c_int) {
        if self.child.is_none() {
            return;
        }
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(pid, signal) };
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) -> Option<ExitStatus> {
        self.send_kill();
        self.reap()
    }

    /// Waits for the child after it was killed.
    pub fn reap(mut self) -> Option<ExitStatus> {
        self.child.take().and_then(|mut c| c.wait().ok())
    }

    /// SIGTERM, then up to `grace_ms` for the child to exit, then SIGKILL.
    /// Returns the exit status and whether SIGKILL was needed.
    pub async fn terminate(mut self, grace_ms: u64) -> (Option<ExitStatus>, bool) {
        let Some(child) = self.child.as_mut() else { return (None, false) };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return (Some(status), false);
        }
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(grace_ms);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.as_mut().expect("child present").try_wait() {
                self.child = None;
                return (Some(status), false);
            }
            tokio::time::sleep(Duration::from_millis(EXIT_POLL_MS)).await;
        }
        (self.kill(), true)
    }

    /// Whether the child has exited on its own (it is reaped if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a server started by [`run_to_exit`] ended.
#[derive(Debug)]
pub struct ServerRun {
    /// The exit status, if it exited by itself before the deadline.
    pub status: Option<ExitStatus>,
    /// True when it was still running at the deadline and was killed.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl ServerRun {
    /// Whether it exited by itself with a non-zero status.
    pub fn refused(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| !s.success())
    }

    /// "exited with exit status: 1 after 0.21 s", and the output, for failure messages.
    pub fn describe(&self) -> String {
        let how = match (&self.status, self.timed_out) {
            (_, true) => "was still running at the deadline and was killed".to_string(),
            (Some(s), false) => format!("exited with {s}"),
            (None, false) => "ended with an unknown status".to_string(),
        };
        format!(
            "{how} after {:.2} s\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.elapsed.as_secs_f64(),
            self.stderr.trim_end(),
            self.stdout.trim_end()
        )
    }
}

/// Starts `kho server --config <config>` with stdout and stderr written to the two files,
/// and waits up to `timeout` for it to exit by itself; a process still running then is
/// killed (SIGKILL to its own pid) and reaped. For start-ups that must be refused.
pub async fn run_to_exit(
    kho: &Path,
    config: &Path,
    stdout_path: &Path,
    stderr_path: &Path,
    timeout: Duration,
) -> std::io::Result<ServerRun> {
    let stdout = std::fs::File::create(stdout_path)?;
    let stderr = std::fs::File::create(stderr_path)?;
    let mut cmd = Command::new(kho);
    cmd.arg("server").arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    set_parent_death_signal(&mut cmd);
    let started = Instant::now();
    // Killed and reaped on drop, whatever happens below.
    let child = cmd.spawn()?;
    let pid = child.id();
    let mut process = NodeProcess { child: Some(child), pid };
    let deadline = started + timeout;
    let mut status = None;
    while Instant::now() < deadline {
        if let Some(s) = process.exited() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(EXIT_POLL_MS)).await;
    }
    let timed_out = status.is_none();
    if timed_out {
        process.kill();
    }
    let elapsed = started.elapsed();
    let read = |p: &Path| std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(ServerRun { status, timed_out, elapsed, stdout: read(stdout_path)?, stderr: read(stderr_path)? })
}

/// On Linux, the kernel sends the child SIGKILL if the thread that spawned it dies, so even
/// a test process killed with SIGKILL leaves no server behind. (Tokio runtime threads live as
/// long as the test's runtime, which owns the cluster.)
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}
