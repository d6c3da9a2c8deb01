//! `kho keys`: per-tenant encryption keys (docs/SECURITY.md). Status, rotation, online
//! re-encryption and destruction of retired key versions, through the Admin service.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use kho_proto::v1::{
    DestroyTenantKeyRequest, RotateTenantKeyRequest, StartReencryptionRequest, TenantKeyStatusRequest, TenantKeyStatusResponse, TenantKeys,
};

use crate::admin_cmd::ConnArgs;
use crate::client::{self, Conn, Timeouts};
use crate::display;

/// How long one keys request may take until its answer starts. Counting a tenant's values
/// (TenantKeyStatus, DestroyTenantKey) scans the tenant's data on the leader.
pub const KEYS_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Time between two progress lines of `kho keys reencrypt`.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound of `kho keys reencrypt`'s wait, seconds.
pub const REENCRYPT_TIMEOUT_SECS_DEFAULT: u64 = 3600;
/// Largest `--timeout-secs` of `kho keys reencrypt`, seconds (one week).
pub const REENCRYPT_TIMEOUT_SECS_MAX: u64 = 7 * 24 * 3600;

#[derive(Debug, Args)]
pub struct KeysCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: KeysOp,
}

#[derive(Debug, Subcommand)]
pub enum KeysOp {
    /// Per tenant: whether it is encrypted, its key versions with the values each one
    /// seals, the values stored in plaintext, and the progress of its re-encryption.
    Status {
        /// Only this tenant; default: every tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Makes a new key version current: new writes use it at once; older versions still
    /// decrypt. On a plaintext tenant, turns encryption on for new writes.
    Rotate {
        #[arg(long)]
        tenant: String,
    },
    /// Starts (or resumes) rewriting the tenant's values under its current key version, in
    /// the background on the leader, then prints its progress every second until it is done.
    Reencrypt {
        #[arg(long)]
        tenant: String,
        /// Start it and exit; follow it with `kho keys status`.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait for the end, seconds; the re-encryption goes on after it.
        #[arg(
            long,
            default_value_t = REENCRYPT_TIMEOUT_SECS_DEFAULT,
            value_name = "SECONDS",
            value_parser = clap::value_parser!(u64).range(1..=REENCRYPT_TIMEOUT_SECS_MAX)
        )]
        timeout_secs: u64,
    },
    /// Destroys a retired key version: its wrapped key is erased, values sealed under it
    /// could never be read again. Refused while any value uses it, while it is current, or
    /// while a re-encryption targets it.
    Destroy {
        #[arg(long)]
        tenant: String,
        /// The key version to destroy.
        #[arg(long)]
        version: u32,
    },
}

fn timeouts() -> Timeouts {
    Timeouts { connect: client::CONNECT_TIMEOUT, request: KEYS_REQUEST_TIMEOUT }
}

pub async fn keys(cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    let endpoints = cmd.conn.target()?;
    match cmd.op {
        KeysOp::Status { tenant } => {
            let mut admin = client::connect(&endpoints, timeouts()).await?.admin();
            let req = TenantKeyStatusRequest { tenant: tenant.unwrap_or_default(), without_counts: false };
            let r = admin.tenant_key_status(req).await?.into_inner();
            write!(std::io::stdout(), "{}", display::tenant_keys(&r))?;
        }
        KeysOp::Rotate { tenant } => {
            let mut admin = client::connect(&endpoints, timeouts()).await?.admin();
            let r = admin.rotate_tenant_key(RotateTenantKeyRequest { tenant: tenant.clone() }).await?.into_inner();
            writeln!(std::io::stdout(), "tenant {tenant}: key version {} is current (revision {})", r.version, r.revision)?;
        }
        KeysOp::Reencrypt { tenant, no_wait, timeout_secs } => {
            return reencrypt(&endpoints, &tenant, no_wait, Duration::from_secs(timeout_secs)).await;
        }
        KeysOp::Destroy { tenant, version } => {
            let mut admin = client::connect(&endpoints, timeouts()).await?.admin();
            let req = DestroyTenantKeyRequest { tenant: tenant.clone(), version };
            let r = admin.destroy_tenant_key(req).await?.into_inner();
            writeln!(std::io::stdout(), "tenant {tenant}: key version {version} destroyed (revision {})", r.revision)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Values of the tenant not (yet) under key version `target`: those under any other
/// version, and those stored in plaintext.
pub fn values_not_under(t: &TenantKeys, target: u32) -> u64 {
    let other: u64 = t.versions.iter().filter(|v| v.version != target).map(|v| v.values).sum();
    other + t.plaintext_values
}

/// Where a re-encryption to `target` stands, as one TenantKeyStatus answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The answer shows no job to `target` yet (a leader that has not applied the start).
    NotVisible,
    Running {
        visited: u64,
        rewritten: u64,
        remaining: u64,
    },
    Done {
        visited: u64,
        rewritten: u64,
        remaining: u64,
    },
    /// A re-encryption to a newer version replaced this one.
    Replaced {
        target: u32,
    },
}

/// Pure, for tests: the progress of the re-encryption to `target` in a tenant's status.
pub fn progress(t: &TenantKeys, target: u32) -> Progress {
    let remaining = values_not_under(t, target);
    match &t.reencryption {
        Some(j) if j.target_version == target => {
            if j.done {
                Progress::Done { visited: j.visited, rewritten: j.rewritten, remaining }
            } else {
                Progress::Running { visited: j.visited, rewritten: j.rewritten, remaining }
            }
        }
        Some(j) if j.target_version > target => Progress::Replaced { target: j.target_version },
        _ => Progress::NotVisible,
    }
}

/// Whether a failed poll is worth another attempt: no leader, a leader change, a node that
/// went away (the job goes on at the new leader), or no connection at all.
fn retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        None => true,
    }
}

/// One TenantKeyStatus of `tenant`, connecting first when there is no connection.
async fn poll_once(
    conn: &mut Option<Conn>,
    endpoints: &client::Target,
    tenant: &str,
    counts: bool,
) -> anyhow::Result<TenantKeyStatusResponse> {
    let c = match conn.clone() {
        Some(c) => c,
        None => {
            let c = client::connect(endpoints, timeouts()).await?;
            *conn = Some(c.clone());
            c
        }
    };
    let req = TenantKeyStatusRequest { tenant: tenant.to_string(), without_counts: !counts };
    let r = c.admin().tenant_key_status(req).await?;
    Ok(r.into_inner())
}

/// `kho keys reencrypt`: StartReencryption, then (unless `no_wait`) TenantKeyStatus every
/// [`POLL_INTERVAL`] until the job is done, bounded by `timeout` in all.
async fn reencrypt(endpoints: &client::Target, tenant: &str, no_wait: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let first = client::connect(endpoints, timeouts()).await?;
    let r = first.admin().start_reencryption(StartReencryptionRequest { tenant: tenant.to_string() }).await?.into_inner();
    let target = r.target_version;
    let how = if r.resumed { "resumed from where it stopped" } else { "started" };
    writeln!(std::io::stdout(), "tenant {tenant}: re-encryption to key version {target} {how} (revision {})", r.revision)?;
    if no_wait {
        writeln!(std::io::stdout(), "tenant {tenant}: it runs in the background; follow it with `kho keys status --tenant {tenant}`")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut conn = Some(first);
    let mut last_seen: Option<(u64, u64)> = None;
    loop {
        let next_poll = tokio::time::Instant::now() + POLL_INTERVAL;
        // Progress only while it runs (counting reads the whole tenant on the leader).
        let polled = tokio::time::timeout_at(deadline, poll_once(&mut conn, endpoints, tenant, false)).await;
        let secs = started.elapsed().as_secs();
        match polled {
            Err(_) => break,
            Ok(Err(e)) if retryable(&e) => {
                let text = match e.downcast_ref::<tonic::Status>() {
                    Some(s) => display::status_line(s),
                    None => format!("error: {e:#}"),
                };
                say_err!("kho keys reencrypt: {text}; asking again");
                // The next poll connects again, to whichever endpoint answers.
                conn = None;
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(status)) => {
                let Some(t) = status.tenants.iter().find(|t| t.tenant == tenant) else {
                    bail!("tenant {tenant} is missing from the key status");
                };
                match progress(t, target) {
                    Progress::NotVisible => {
                        writeln!(std::io::stdout(), "tenant {tenant}: waiting for the re-encryption to show ({secs} s)")?;
                    }
                    Progress::Running { visited, rewritten, remaining } if status.counted => {
                        last_seen = Some((visited, rewritten));
                        writeln!(
                            std::io::stdout(),
                            "tenant {tenant}: visited {visited}, rewritten {rewritten}; \
                             values not yet under key version {target}: {remaining} ({secs} s)"
                        )?;
                    }
                    Progress::Running { visited, rewritten, .. } => {
                        last_seen = Some((visited, rewritten));
                        writeln!(std::io::stdout(), "tenant {tenant}: visited {visited}, rewritten {rewritten} ({secs} s)")?;
                    }
                    Progress::Done { .. } => {
                        // Once, at the end: count what is left under other versions.
                        let status = poll_once(&mut conn, endpoints, tenant, true).await?;
                        let Some(t) = status.tenants.iter().find(|t| t.tenant == tenant) else {
                            bail!("tenant {tenant} is missing from the key status");
                        };
                        let (visited, rewritten, remaining) = match progress(t, target) {
                            Progress::Done { visited, rewritten, remaining } => (visited, rewritten, remaining),
                            other => bail!("tenant {tenant}: the re-encryption was done, now {other:?}"),
                        };
                        writeln!(
                            std::io::stdout(),
                            "tenant {tenant}: re-encryption to key version {target} done in {secs} s: visited {visited}, \
                             rewritten {rewritten}; values not under key version {target}: {remaining}"
                        )?;
                        return Ok(ExitCode::SUCCESS);
                    }
                    Progress::Replaced { target: newer } => {
                        bail!(
                            "tenant {tenant}: a re-encryption to the newer key version {newer} replaced the one to \
                             version {target}; follow it with `kho keys reencrypt --tenant {tenant}`"
                        );
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep_until(next_poll.min(deadline)).await;
    }
    let seen = match last_seen {
        Some((visited, rewritten)) => format!(" (last seen: visited {visited}, rewritten {rewritten})"),
        None => String::new(),
    };
    Err(anyhow!(
        "tenant {tenant}: re-encryption to key version {target} not done after {} s{seen}; it goes on in the \
         background: follow it with `kho keys reencrypt --tenant {tenant}` (it resumes) or `kho keys status`",
        timeout.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_proto::v1::{KeyVersionStatus, ReencryptionStatus};

    fn tenant(job: Option<ReencryptionStatus>) -> TenantKeys {
        let v = |version: u32, state: &str, values: u64| KeyVersionStatus {
            version,
            state: state.into(),
            values,
            created_revision: 10 * u64::from(version),
        };
        TenantKeys {
            tenant: "dan_cu".into(),
            encrypted: true,
            current_version: 3,
            versions: vec![v(1, "retired", 5), v(2, "retired", 7), v(3, "current", 100)],
            plaintext_values: 2,
            reencryption: job,
        }
    }

    fn job(target_version: u32, done: bool) -> Option<ReencryptionStatus> {
        Some(ReencryptionStatus { target_version, done, visited: 50, rewritten: 9 })
    }

    #[test]
    fn remaining_counts_other_versions_and_plaintext() {
        let t = tenant(None);
        assert_eq!(values_not_under(&t, 3), 5 + 7 + 2);
        assert_eq!(values_not_under(&t, 2), 5 + 100 + 2);
    }

    #[test]
    fn progress_follows_the_job_of_the_target() {
        assert_eq!(progress(&tenant(None), 3), Progress::NotVisible);
        assert_eq!(progress(&tenant(job(2, true)), 3), Progress::NotVisible);
        assert_eq!(progress(&tenant(job(3, false)), 3), Progress::Running { visited: 50, rewritten: 9, remaining: 14 });
        assert_eq!(progress(&tenant(job(3, true)), 3), Progress::Done { visited: 50, rewritten: 9, remaining: 14 });
        assert_eq!(progress(&tenant(job(4, false)), 3), Progress::Replaced { target: 4 });
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(retryable(&anyhow::Error::new(tonic::Status::unavailable("no leader"))));
        assert!(retryable(&anyhow!("could not connect to any endpoint")));
        assert!(!retryable(&anyhow::Error::new(tonic::Status::not_found("tenant x"))));
        assert!(!retryable(&anyhow::Error::new(tonic::Status::failed_precondition("not encrypted"))));
    }
}
