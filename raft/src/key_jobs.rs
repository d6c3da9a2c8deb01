//! The background re-encryption driver: on the leader, prepares and proposes the next
//! bounded [`Command::ReencryptStep`] of every unfinished job in the catalog, one at a time.
//!
//! The leader reads a bounded run of the tenant's values from the job's cursor (after a
//! read barrier, so it sees every write committed before), re-seals those not under the
//! target version, and proposes them with the bytes it read. The job's cursor lives in
//! the replicated catalog and moves with each applied step, so a restart or a new leader
//! continues where the last applied step stopped. A step whose cursor is stale or whose
//! values changed since they were read is refused at apply and writes nothing; the driver
//! then prepares it again.
//!
//! A value sealed under an older version by a write proposed before the rotation but
//! applied after the step passed its key stays under that version; `DestroyKey` refuses
//! while any value uses a version, and running the re-encryption again rewrites it.

use std::sync::Weak;
use std::time::Duration;

use kho_engine::keys::TenantId;
use kho_engine::{crypto, value, Cf};

use crate::command::{Command, Outcome, Replacement};
use crate::keyring::{self, Job, TenantKeys};
use crate::node::RaftNode;

/// How often an idle driver looks for work, milliseconds.
const IDLE_POLL_MS: u64 = 200;
/// Pause after a failed or refused step, milliseconds.
const ERROR_BACKOFF_MS: u64 = 1_000;
/// Longest wait for one step to commit and apply, milliseconds.
const STEP_TIMEOUT_MS: u64 = 10_000;

/// Starts the driver of `node`. It ends when the node is dropped; `RaftNode::shutdown`
/// aborts it.
pub fn spawn(node: Weak<RaftNode>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(node) = node.upgrade() else { return };
            let pause = match next_job(&node) {
                None => IDLE_POLL_MS,
                Some(job) => {
                    let group = node.data_group();
                    drop(node);
                    let cmd = match prepare(&group, job).await {
                        Ok(cmd) => cmd,
                        Err(e) => {
                            tracing::info!(error = %e, "re-encryption step not prepared");
                            tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                            continue;
                        }
                    };
                    let what = cmd.to_string();
                    match tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), group.propose(cmd)).await {
                        Ok(Ok(resp)) => match resp.outcome {
                            Outcome::Rejected(e) => {
                                tracing::info!(step = %what, reason = %e, "re-encryption step refused; reading the job again");
                                ERROR_BACKOFF_MS
                            }
                            _ => 0,
                        },
                        Ok(Err(e)) => {
                            tracing::info!(step = %what, error = %e, "re-encryption step not committed");
                            ERROR_BACKOFF_MS
                        }
                        Err(_) => {
                            tracing::warn!(step = %what, "re-encryption step not applied within {STEP_TIMEOUT_MS} ms");
                            ERROR_BACKOFF_MS
                        }
                    }
                }
            };
            if pause == 0 {
                // Let client requests in between steps.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    })
}

/// An unfinished job of a tenant, as this node's catalog has it.
struct NextJob {
    tenant: String,
    tenant_id: TenantId,
    job: Job,
    keys: Option<std::sync::Arc<TenantKeys>>,
}

/// The next job to step, if this node leads and a job is unfinished.
fn next_job(node: &RaftNode) -> Option<NextJob> {
    let group = node.data_group();
    if !group.is_leader() {
        return None;
    }
    let cat = group.state.catalog();
    let (tenant_id, job) = cat.jobs.iter().find(|(_, j)| !j.done)?;
    let tenant = cat.tenant_name(*tenant_id)?.to_string();
    Some(NextJob { tenant, tenant_id: *tenant_id, job: job.clone(), keys: cat.tenant_keys(*tenant_id) })
}

/// Prepares the job's next step on the leader: after a read barrier, reads at most
/// [`REENCRYPT_STEP_VALUES_MAX`] values (or [`REENCRYPT_STEP_BYTES_MAX`] bytes) from the
/// cursor and re-seals those not under the target version.
async fn prepare(group: &crate::Group, next: NextJob) -> Result<Command, String> {
    group.read_barrier().await.map_err(|e| e.to_string())?;
    let state = group.state.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&state, next)).await.map_err(|e| e.to_string())?
}

fn prepare_blocking(state: &crate::state_machine::SmState, next: NextJob) -> Result<Command, String> {
    let NextJob { tenant, tenant_id, job, keys } = next;
    let keys = keys.ok_or_else(|| format!("tenant `{tenant}` has no keys"))?;
    let target_key = keys
        .versions
        .get(&job.target)
        .and_then(|v| v.key.as_ref())
        .ok_or_else(|| format!("tenant `{tenant}`: key version {} is not available", job.target))?;
    let (tenant_start, end) = crate::state_machine::tenant_range(tenant_id);
    let start = if job.cursor.is_empty() { tenant_start } else { job.cursor.clone() };
    let rows = {
        let _gate = state.blocking_read_gate();
        state.engine.scan(Cf::Data, &start, Some(&end), REENCRYPT_STEP_VALUES_MAX).map_err(|e| e.to_string())?
    };
    let seed = crypto::random_nonce_seed();
    let mut replacements = Vec::new();
    let mut bytes = 0usize;
    let mut visited = 0u64;
    let mut last = None;
    let mut reached_end = rows.len() < REENCRYPT_STEP_VALUES_MAX;
    for (i, (k, v)) in rows.iter().enumerate() {
        visited += 1;
        bytes += k.len() + v.len();
        let under_target = matches!(value::inspect(k, v), Ok(value::Stored::Sealed { key_version }) if key_version == job.target);
        if !under_target {
            let plain = keyring::open_value(Some(&keys), k, v).map_err(|e| format!("re-encryption of tenant `{tenant}` stopped: {e}"))?;
            let nonce = crypto::nonce_at(seed, replacements.len() as u32);
            replacements.push(Replacement {
                key: k.clone(),
                old: v.clone(),
                new: value::seal_value(k, &plain, target_key, job.target, nonce),
            });
        }
        last = Some(k.clone());
        if bytes >= REENCRYPT_STEP_BYTES_MAX && i + 1 < rows.len() {
            reached_end = false;
            break;
        }
    }
    let next_cursor = match last {
        Some(mut k) if !reached_end => {
            k.push(0); // the next key after `k`
            k
        }
        _ => Vec::new(),
    };
    Ok(Command::ReencryptStep { tenant, target: job.target, cursor: job.cursor, next_cursor, visited, replacements })
}

/// Most values one re-encryption step visits, count.
pub const REENCRYPT_STEP_VALUES_MAX: usize = 512;
/// Most stored bytes one re-encryption step visits (it stops after the value that crosses it).
pub const REENCRYPT_STEP_BYTES_MAX: usize = 1 << 20;
