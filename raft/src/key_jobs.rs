//! The background re-encryption driver: on the leader, proposes the next bounded
//! [`Command::ReencryptStep`] of every unfinished job in the catalog, one at a time.
//!
//! The job's cursor lives in the replicated catalog and moves with each applied step, so a
//! restart or a new leader continues where the last applied step stopped. A step proposed
//! with a stale cursor (a step raced with another leader's) is refused at apply and does
//! nothing; the driver then reads the catalog again.

use std::sync::Weak;
use std::time::Duration;

use kho_engine::crypto;

use crate::command::{Command, Outcome};
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
            let pause = match next_step(&node) {
                None => IDLE_POLL_MS,
                Some(cmd) => {
                    let group = node.data_group();
                    drop(node);
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

/// The next step to propose, if this node leads and a job is unfinished.
fn next_step(node: &RaftNode) -> Option<Command> {
    let group = node.data_group();
    if !group.is_leader() {
        return None;
    }
    let cat = group.state.catalog();
    let (tenant_id, job) = cat.jobs.iter().find(|(_, j)| !j.done)?;
    let tenant = cat.tenant_name(*tenant_id)?.to_string();
    Some(Command::ReencryptStep { tenant, target: job.target, cursor: job.cursor.clone(), nonce_seed: crypto::random_nonce_seed() })
}
