//! The size checker: every `sharding.check_interval_ms`, on each data shard this node
//! leads whose data changed since the last look, it splits shards grown past
//! `sharding.split_size_bytes` and merges adjacent small ones (docs/SHARDING.md, "Split and
//! merge"); it also finishes merges left prepared ([`crate::shard_merge`]).
//!
//! A shard's size is RocksDB's estimate for its range from the SST files' metadata (no
//! data is read), plus the bytes written to it since it was last measured after a flush
//! (those may still be in a memtable, which the estimate does not count). When that sum
//! crosses the split size but the estimate alone does not, the checker flushes once (at
//! most once per round for the whole node) and measures again. A shard whose range holds
//! no key is empty whatever the estimate says (deleted data stays in SST files until
//! compaction).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use kho_engine::Cf;

use crate::node::{Group, RaftNode};
use crate::GroupId;

/// The size checker's settings (`[sharding]` in the node's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingSettings {
    /// A shard whose estimated size passes it is split at its middle key, bytes (0: never
    /// automatically).
    pub split_size_bytes: u64,
    /// Two adjacent shards on the same replicas, each below it, are merged, bytes (0: only
    /// empty shards merge automatically).
    pub merge_size_bytes: u64,
    /// Whether shards merge automatically at all.
    pub auto_merge: bool,
    /// How long after a shard opened on this node, split or merged it is not merged
    /// automatically, milliseconds (PD's `split-merge-interval`: a shard split on purpose,
    /// say before a load, is not merged back at once).
    pub split_merge_interval_ms: u64,
    /// How often the checker looks at the shards this node leads, milliseconds.
    pub check_interval_ms: u64,
}

impl Default for ShardingSettings {
    fn default() -> Self {
        ShardingSettings {
            split_size_bytes: 256 << 20,
            merge_size_bytes: 20 << 20,
            auto_merge: true,
            split_merge_interval_ms: 3_600_000,
            check_interval_ms: 5_000,
        }
    }
}

/// Most splits and merges one round starts, count: a round's work is bounded, the next
/// round continues.
pub const RESHAPES_PER_ROUND_MAX: usize = 16;

/// How long a small shard that could not merge (its neighbour is not small, not settled,
/// or on other replicas) waits before it is measured again, milliseconds. A write to it
/// has it measured at the next round anyway.
pub const MERGE_RECHECK_MS: u64 = 60_000;

/// Small shards waiting to be looked at again for a merge, with when: at the end of their
/// `split_merge_interval_ms`, or [`MERGE_RECHECK_MS`] after a merge that could not be
/// done. Without it every small shard would be measured every round (ten thousand idle
/// shards: thousands of RocksDB reads a second). At most one entry per shard this node
/// leads.
type MergeWaits = std::collections::BTreeMap<GroupId, std::time::Instant>;

/// Starts the size checker of `node`. It ends when the node is dropped.
pub fn spawn(node: Weak<RaftNode>, settings: ShardingSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut prepared_before = Vec::new();
        let mut waits = MergeWaits::new();
        loop {
            tokio::time::sleep(Duration::from_millis(settings.check_interval_ms.max(100))).await;
            let Some(n) = node.upgrade() else { return };
            prepared_before = crate::shard_merge::finish_prepared_merges(&n, &prepared_before).await;
            round(&n, &settings, &mut waits).await;
        }
    })
}

/// The estimated size of `g`'s range in SST files, bytes; the bytes written to it since
/// it was last measured after a flush; and whether the range holds no key.
async fn measure(g: &Group) -> Option<(u64, u64, bool)> {
    let state = g.state.clone();
    tokio::task::spawn_blocking(move || {
        let written = state.written_bytes.load(Ordering::Relaxed);
        let (start, end) = state.bounds();
        let (bytes, _) = state.engine.approximate_range(Cf::Data, &start, &end);
        let empty = state.engine.scan(Cf::Data, &start, Some(&end), 1).ok()?.is_empty();
        Some((bytes, written, empty))
    })
    .await
    .ok()
    .flatten()
}

/// Flushes the engine (every memtable to SST files) and takes from each group's written
/// bytes what it held before: those bytes are in the estimate now.
async fn flush_and_reset(groups: &[std::sync::Arc<Group>]) -> bool {
    let before: Vec<u64> = groups.iter().map(|g| g.state.written_bytes.load(Ordering::Relaxed)).collect();
    let Some(engine) = groups.first().map(|g| g.state.engine.clone()) else { return false };
    match tokio::task::spawn_blocking(move || engine.flush_all()).await {
        Ok(Ok(())) => {}
        _ => return false,
    }
    for (g, b) in groups.iter().zip(before) {
        g.state.written_bytes.fetch_sub(b, Ordering::Relaxed);
    }
    true
}

/// One round: splits, then merges, on the shards this node leads whose data changed or
/// whose wait in `waits` is over.
async fn round(node: &RaftNode, s: &ShardingSettings, waits: &mut MergeWaits) {
    let now = std::time::Instant::now();
    let due: Vec<GroupId> = waits.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
    for id in due {
        waits.remove(&id);
        if let Some(g) = node.group(id) {
            g.state.size_changed.store(true, Ordering::Relaxed);
        }
    }
    let recheck = |waits: &mut MergeWaits, id: GroupId| {
        waits.insert(id, std::time::Instant::now() + Duration::from_millis(MERGE_RECHECK_MS));
    };
    let mut flushed = false;
    let mut reshaped = 0usize;
    let leading: Vec<std::sync::Arc<Group>> = node
        .group_ids()
        .into_iter()
        .filter_map(|id| node.group(id))
        .filter(|g| g.state.kind == crate::GroupKind::Data && g.state.shard().is_some() && g.is_leader())
        .collect();
    let mut small: Vec<GroupId> = Vec::new();
    for g in &leading {
        if reshaped >= RESHAPES_PER_ROUND_MAX {
            break;
        }
        if !g.state.size_changed.swap(false, Ordering::Relaxed) {
            continue;
        }
        let Some((on_disk, written, empty)) = measure(g).await else { continue };
        let mut size = on_disk.saturating_add(written);
        if s.split_size_bytes > 0 && size >= s.split_size_bytes {
            // Part of it may be in memtables or counted twice: measure on disk, after one
            // flush per round.
            if !flushed {
                flushed = flush_and_reset(&leading).await;
            }
            match measure(g).await {
                Some((on_disk, _, _)) => size = on_disk,
                None => continue,
            }
        }
        if s.split_size_bytes > 0 && size >= s.split_size_bytes {
            reshaped += 1;
            match node.split_shard(g.id, None).await {
                Ok((left, right)) => {
                    tracing::info!(shard = g.id, size, left = %left, right = %right, "split a shard grown past sharding.split_size_bytes")
                }
                Err(e) => {
                    tracing::info!(shard = g.id, size, error = %e, "an automatic split was not done; tried again next round");
                    g.state.size_changed.store(true, Ordering::Relaxed);
                }
            }
            continue;
        }
        if s.auto_merge && (empty || size < s.merge_size_bytes) && has_right_neighbour(node, g) {
            // A merge waits for both shards to be settled and its neighbour to be small
            // too. (A tenant's last shard has nothing to merge with: an idle tenant's only
            // shard is not looked at again.)
            match settles_at(g, s) {
                Some(at) => {
                    waits.insert(g.id, at);
                }
                None => small.push(g.id),
            }
        }
    }
    let mut small = small.into_iter();
    for id in small.by_ref() {
        if reshaped >= RESHAPES_PER_ROUND_MAX {
            // Left over by the bound on a round's work, like the rest below.
            waits.insert(id, now);
            break;
        }
        let Some(g) = node.group(id).filter(|g| g.is_leader()) else { continue };
        let Some(target) = g.state.shard().map(|st| st.desc) else { continue };
        let Some(right) = node.local_group_starting_at(&target.end) else { continue };
        let Some(right_state) = right.state.shard() else { continue };
        if right_state.desc.tenant != target.tenant {
            continue;
        }
        if right_state.merging.is_some() {
            waits.insert(id, now);
            continue;
        }
        if let Some(at) = settles_at(&right, s) {
            waits.insert(id, at);
            continue;
        }
        let Some((right_disk, right_written, right_empty)) = measure(&right).await else { continue };
        if !(right_empty || right_disk.saturating_add(right_written) < s.merge_size_bytes) {
            recheck(waits, id);
            continue;
        }
        if !right_state.desc.same_replica_set(&target) {
            tracing::debug!(shard = id, right = right_state.desc.id, "small neighbours on different replicas: not merged");
            recheck(waits, id);
            continue;
        }
        reshaped += 1;
        match node.merge_here(&g).await {
            Ok(merged) => {
                tracing::info!(shard = id, source = right_state.desc.id, merged = %merged, "merged small neighbours")
            }
            Err(e) => {
                tracing::info!(shard = id, source = right_state.desc.id, error = %e, "an automatic merge was not done");
                recheck(waits, id);
            }
        }
    }
    // Left over by the bound on a round's work: looked at again next round.
    for id in small {
        waits.insert(id, now);
    }
}

/// Whether this node holds a replica of the shard right of `g`'s, of the same tenant.
fn has_right_neighbour(node: &RaftNode, g: &Group) -> bool {
    let Some(desc) = g.state.shard().map(|s| s.desc) else { return false };
    node.local_group_starting_at(&desc.end).and_then(|r| r.state.shard()).is_some_and(|r| r.desc.tenant == desc.tenant)
}

/// When `g` will have opened, split or merged `split_merge_interval_ms` ago; None if it has.
fn settles_at(g: &Group, s: &ShardingSettings) -> Option<std::time::Instant> {
    let now = std::time::Instant::now();
    let reshaped_at = *g.state.reshaped_at.lock().expect("reshaped_at lock poisoned");
    // An interval too long to add is "not in this process's lifetime": a day, then again.
    let at = reshaped_at.checked_add(Duration::from_millis(s.split_merge_interval_ms)).unwrap_or(now + Duration::from_secs(86_400));
    (at > now).then_some(at)
}
