//! The node's background driver. For each unfinished re-encryption job in the catalog, the
//! leader of the shard holding the job's cursor prepares and proposes the next bounded step
//! ([`Command::Reseal`] in the shard, then [`Command::JobProgress`] in the meta group). It
//! also clears dropped tables from the shards this node leads and reports their replica
//! changes to the meta group.
//!
//! The shard's leader reads a bounded run of the tenant's values from the job's cursor (after a
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

use std::sync::{Arc, Weak};
use std::time::Duration;

use kho_engine::keys::TenantId;
use kho_engine::{crypto, value, Cf};

use crate::command::{Command, Outcome, Replacement};
use crate::keyring::{self, Job, TenantKeys};
use crate::node::{Group, RaftNode};

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
        let mut round: u64 = 0;
        loop {
            let Some(n) = node.upgrade() else { return };
            // Sleeping shards changed nothing since they slept: they are looked at in one
            // round of FULL_PASS_ROUNDS only (a report or a repair that failed while they
            // were awake, a node removed since), so ten thousand idle shards cost little.
            let full = round.is_multiple_of(FULL_PASS_ROUNDS);
            round += 1;
            let groups = if full { n.data_groups() } else { n.awake_data_groups() };
            let led: Vec<Arc<Group>> = groups.into_iter().filter(|g| looked_at(g, full)).collect();
            let cleared = clear_dropped_tables(&n, &led).await;
            report_shards(&n, &led).await;
            repair_replicas(&n, &led).await;
            let pause = match next_job(&n) {
                None => IDLE_POLL_MS,
                Some(job) => step(&n, job).await,
            };
            drop(n);
            if pause == 0 || cleared {
                // Let client requests in between steps.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    })
}

/// One round in this many looks at sleeping shards too, count (2 s at [`IDLE_POLL_MS`]).
const FULL_PASS_ROUNDS: u64 = 10;

/// Whether a round looks at group `g`: a data shard this node leads, awake unless `full`.
fn looked_at(g: &Group, full: bool) -> bool {
    g.state.kind == crate::GroupKind::Data && (full || !g.sleep.is_asleep()) && g.is_leader()
}

/// On every data shard this node leads, clears the cells of the tables the catalog lists
/// as dropped and the shard has not cleared yet (one `ClearTable` per table). Returns
/// whether it proposed anything.
async fn clear_dropped_tables(node: &RaftNode, led: &[Arc<Group>]) -> bool {
    let dropped = node.meta().state.catalog().dropped_tables.clone();
    if dropped.is_empty() {
        return false;
    }
    let mut proposed = false;
    for g in led {
        let id = g.id;
        let Some(st) = g.state.shard() else { continue };
        for (_, table) in dropped.range((st.desc.tenant, 0)..=(st.desc.tenant, u32::MAX)) {
            if st.dropped_tables.contains(table) {
                continue;
            }
            let cmd = Command::ClearTable { shard: id, tenant: st.desc.tenant, table: *table };
            let what = cmd.to_string();
            match tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), g.propose(cmd)).await {
                Ok(Ok(_)) => proposed = true,
                Ok(Err(e)) => tracing::info!(step = %what, error = %e, "clearing a dropped table: not committed"),
                Err(_) => tracing::warn!(step = %what, "clearing a dropped table: not applied within {STEP_TIMEOUT_MS} ms"),
            }
        }
    }
    proposed
}

/// Reports to the meta group the descriptor of every data shard this node leads that the
/// shard map has older: split since (the map's `version` is lower: the descriptors that
/// now tile the map's range, [`crate::shard_split::split_report`]), or with other replicas
/// (its `conf_ver` is lower). A report after a split or replica change that was lost, or
/// not yet made.
async fn report_shards(node: &RaftNode, led: &[Arc<Group>]) {
    for g in led {
        let id = g.id;
        let Some(st) = g.state.shard() else { continue };
        let recorded = node.meta().state.catalog().shards.get(id).map(|d| (d.epoch, d.end.clone()));
        let report = match recorded {
            // A merge the map has not recorded: the shard reaches past the map's end of it.
            Some((e, end)) if e.version < st.desc.epoch.version && end < st.desc.end => {
                Some(Command::RecordShards { pieces: vec![st.desc] })
            }
            Some((e, _)) if e.version < st.desc.epoch.version => crate::shard_split::split_report(node, g),
            Some((e, _)) if e.version == st.desc.epoch.version && e.conf_ver < st.desc.epoch.conf_ver => {
                Some(Command::UpdateShard { desc: st.desc })
            }
            _ => None,
        };
        if let Some(cmd) = report {
            tracing::info!(shard = id, report = %cmd, "reporting a shard the shard map has older");
            if let Err(e) =
                tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), node.propose_anywhere(crate::META_GROUP, cmd)).await
            {
                tracing::info!(shard = id, error = %e, "shard report not applied yet");
            }
        }
    }
}

/// Replicas a data shard keeps, count (while the cluster has that many members).
pub const SHARD_REPLICAS: usize = 3;

/// The replica checker, on the data shards this node leads: a shard with a replica on a
/// node that is no longer a member of the cluster (removed while the shard split, so that
/// `RemoveNode` did not see the new shard), or with fewer than [`SHARD_REPLICAS`] replicas
/// while the cluster has more members, gets a replica on the member holding the fewest
/// that the shard is not on; then the replica of the removed node is removed. At most one
/// shard per round.
async fn repair_replicas(node: &RaftNode, led: &[Arc<Group>]) {
    let members: Vec<(u64, String)> = node.meta().status().members.iter().map(|m| (m.id, m.addr.clone())).collect();
    for g in led {
        let id = g.id;
        let Some(st) = g.state.shard() else { continue };
        if st.merging.is_some() {
            continue;
        }
        let gone: Vec<u64> = st.desc.replicas.iter().map(|r| r.node).filter(|n| !members.iter().any(|(m, _)| m == n)).collect();
        let live = st.desc.replicas.len() - gone.len();
        if gone.is_empty() && live >= SHARD_REPLICAS.min(members.len()) {
            continue;
        }
        let target = {
            let meta = node.meta();
            let cat = meta.state.catalog();
            let mut load: Vec<(u64, usize)> =
                members.iter().filter(|(m, _)| !st.desc.replicas.iter().any(|r| r.node == *m)).map(|(m, _)| (*m, 0)).collect();
            for d in cat.shards.iter() {
                for r in &d.replicas {
                    if let Some(e) = load.iter_mut().find(|(n, _)| *n == r.node) {
                        e.1 += 1;
                    }
                }
            }
            crate::shard::choose_replicas(&load, 1).ok().and_then(|c| c.first().copied())
        };
        let steps = async {
            if let Some(t) = target.filter(|_| live < SHARD_REPLICAS.min(members.len()) || !gone.is_empty()) {
                let addr = members.iter().find(|(m, _)| *m == t).map(|(_, a)| a.clone()).unwrap_or_default();
                node.change_replicas(id, crate::node::ReplicaChange::Add { node: t, addr }).await?;
            }
            for n in &gone {
                // The removed node's replica goes only while the shard keeps a voter.
                node.change_replicas(id, crate::node::ReplicaChange::Remove { node: *n }).await?;
            }
            Ok::<_, crate::ProposeError>(())
        };
        tracing::info!(shard = id, gone = ?gone, target = ?target, "repairing a shard's replicas");
        match tokio::time::timeout(Duration::from_millis(crate::node::CHANGE_REPLICAS_TIMEOUT_MS), steps).await {
            Ok(Ok(())) => tracing::info!(shard = id, "repaired a shard's replicas"),
            Ok(Err(e)) => tracing::info!(shard = id, error = %e, "a shard's replicas are not repaired yet"),
            Err(_) => tracing::info!(shard = id, "a shard's replicas are not repaired yet (timeout)"),
        }
        return;
    }
}

/// Runs one re-encryption step of `job` if this node leads the shard that holds the job's
/// cursor: the shard re-seals the values ([`Command::Reseal`]), then the meta group moves
/// the job's cursor ([`Command::JobProgress`]). Returns how long to pause, milliseconds.
async fn step(node: &RaftNode, job: NextJob) -> u64 {
    let cursor_key = if job.job.cursor.is_empty() { crate::state_machine::tenant_range(job.tenant_id).0 } else { job.job.cursor.clone() };
    // The local replica holding the cursor by its own range (the shard map may not know of
    // a split yet).
    let Some(g) = node.local_group_for(&cursor_key).filter(|g| g.is_leader()) else {
        return IDLE_POLL_MS; // another node leads that shard: its driver does the step
    };
    let (reseal, progress) = match prepare(&g, job).await {
        Ok(cmds) => cmds,
        Err(e) => {
            tracing::info!(error = %e, "re-encryption step not prepared");
            return ERROR_BACKOFF_MS;
        }
    };
    let what = progress.to_string();
    let proposed = async {
        if let Some(reseal) = reseal {
            if let Outcome::Rejected(e) = g.propose(reseal).await.map_err(|e| e.to_string())?.outcome {
                return Err(format!("refused by the shard: {e}"));
            }
        }
        match node.propose_anywhere(crate::META_GROUP, progress).await.map_err(|e| e.to_string())?.outcome {
            Outcome::Rejected(e) => Err(format!("refused by the meta group: {e}")),
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), proposed).await {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            tracing::info!(step = %what, error = %e, "re-encryption step not done; reading the job again");
            ERROR_BACKOFF_MS
        }
        Err(_) => {
            tracing::warn!(step = %what, "re-encryption step not applied within {STEP_TIMEOUT_MS} ms");
            ERROR_BACKOFF_MS
        }
    }
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
    let meta = node.meta();
    let cat = meta.state.catalog();
    let (tenant_id, job) = cat.jobs.iter().find(|(_, j)| !j.done)?;
    let tenant = cat.tenant_name(*tenant_id)?.to_string();
    Some(NextJob { tenant, tenant_id: *tenant_id, job: job.clone(), keys: cat.tenant_keys(*tenant_id) })
}

/// Prepares the job's next step on the shard's leader: after a read barrier, reads at most
/// [`REENCRYPT_STEP_VALUES_MAX`] values (or [`REENCRYPT_STEP_BYTES_MAX`] bytes) from the
/// cursor to the shard's end and re-seals those not under the target version. Returns the
/// shard's `Reseal` (None when nothing needs re-sealing) and the meta group's `JobProgress`.
async fn prepare(group: &crate::Group, next: NextJob) -> Result<(Option<Command>, Command), String> {
    group.read_barrier().await.map_err(|e| e.to_string())?;
    let state = group.state.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&state, next)).await.map_err(|e| e.to_string())?
}

fn prepare_blocking(state: &crate::state_machine::SmState, next: NextJob) -> Result<(Option<Command>, Command), String> {
    let NextJob { tenant, tenant_id, job, keys } = next;
    let keys = keys.ok_or_else(|| format!("tenant `{tenant}` has no keys"))?;
    let target_key = keys
        .versions
        .get(&job.target)
        .and_then(|v| v.key.as_ref())
        .ok_or_else(|| format!("tenant `{tenant}`: key version {} is not available", job.target))?;
    let (tenant_start, tenant_end) = crate::state_machine::tenant_range(tenant_id);
    let start = if job.cursor.is_empty() { tenant_start } else { job.cursor.clone() };
    let shard = state.shard().ok_or("not a data shard")?;
    let end = shard.desc.end.clone().min(tenant_end.clone());
    if !shard.desc.contains(&start) {
        return Err(format!("the job's cursor left shard {}", shard.desc.id));
    }
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
        // The end of this shard: the next shard's first key, or done at the tenant's end.
        _ if end < tenant_end => end,
        _ => Vec::new(),
    };
    let rewritten = replacements.len() as u64;
    let reseal =
        (!replacements.is_empty()).then_some(Command::Reseal { shard: shard.desc.id, epoch: shard.desc.epoch.version, replacements });
    let progress = Command::JobProgress { tenant, target: job.target, cursor: job.cursor, next_cursor, visited, rewritten };
    Ok((reseal, progress))
}

/// Most values one re-encryption step visits, count.
pub const REENCRYPT_STEP_VALUES_MAX: usize = 512;
/// Most stored bytes one re-encryption step visits (it stops after the value that crosses it).
pub const REENCRYPT_STEP_BYTES_MAX: usize = 1 << 20;
