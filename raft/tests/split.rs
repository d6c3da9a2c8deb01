//! Shard splits and merges at the storage level (docs/SHARDING.md, "Split and merge"): the
//! meta group's id allocation and a data shard's `Split`, `PrepareMerge`, `CommitMerge` and
//! `RollbackMerge` entries, applied by the real state machine over RocksDB: what one apply
//! batch writes, what it refuses, and what a crash at any instant leaves. Also the bulk
//! load's `IngestSst` runs, refused once a split changed the shard's epoch.

use std::collections::BTreeSet;
use std::path::Path;

use kho_engine::keys::{data_key, row_prefix};
use kho_engine::{Cf, Engine, EngineOptions};
use kho_raft::catalog;
use kho_raft::command::{Outcome, SHARD_IDS_ALLOC_MAX};
use kho_raft::log_store::{meta_key, open_shared_log, LogStore, LogSyncer};
use kho_raft::shard::{tenant_range, Epoch, Replica, ShardDesc, ShardState};
use kho_raft::split_apply::child_initial_log_id;
use kho_raft::state_machine::StateMachine;
use kho_raft::{codec, AppErrorKind, CellOp, CellWrite, Command, Entry, GroupKind, KeyRange, Membership, META_GROUP};
use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::EntryPayload;
use tempfile::TempDir;

const CHUNK: usize = 4 << 10;

/// One node's storage: an engine and its shared log.
struct Node {
    dir: TempDir,
    engine: Engine,
    shared: std::sync::Arc<kho_engine::shared_log::SharedLog>,
}

impl Node {
    fn new() -> Node {
        let dir = TempDir::new().expect("temp dir");
        Node::at(dir)
    }

    fn at(dir: TempDir) -> Node {
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).expect("engine");
        let shared = open_shared_log(&engine, &dir.path().join("log")).expect("shared log");
        Node { dir, engine, shared }
    }

    /// Opens `group`'s log store and state machine.
    fn open(&self, group: u64, kind: GroupKind) -> (LogStore, StateMachine) {
        let log = LogStore::open(group, self.engine.clone(), self.shared.clone(), LogSyncer::start(), None).expect("log");
        let sm = StateMachine::open(
            group,
            kind,
            self.engine.clone(),
            log.group_log(),
            self.dir.path().join("snapshots").join(group.to_string()),
            CHUNK,
            None,
            Default::default(),
        )
        .expect("state machine");
        (log, sm)
    }
}

fn normal(index: u64, cmd: Command) -> Entry {
    Entry { log_id: log_id::<kho_raft::TypeConfig>(2, 1, index), payload: EntryPayload::Normal(cmd) }
}

/// `AllocShardIds` hands out consecutive ids from the counter `CreateTenant` uses too, never
/// the same twice; a count of 0 or above the limit is refused and moves nothing.
#[test]
fn shard_ids_are_allocated_from_the_catalog_counter() {
    let node = Node::new();
    let (_log, sm) = node.open(META_GROUP, GroupKind::Meta);
    let out = sm
        .apply_and_collect(vec![
            normal(1, Command::AllocShardIds { count: 1 }),
            normal(2, Command::AllocShardIds { count: 3 }),
            normal(3, Command::AllocShardIds { count: 0 }),
            normal(4, Command::AllocShardIds { count: SHARD_IDS_ALLOC_MAX + 1 }),
            normal(5, Command::AllocShardIds { count: 1 }),
        ])
        .expect("apply");
    let outcomes: Vec<_> = out.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(outcomes[0], Outcome::ShardIds { first: 1, count: 1 });
    assert_eq!(outcomes[1], Outcome::ShardIds { first: 2, count: 3 });
    for refused in &outcomes[2..4] {
        assert!(matches!(refused, Outcome::Rejected(e) if e.kind == AppErrorKind::InvalidArgument), "{refused:?}");
    }
    assert_eq!(outcomes[4], Outcome::ShardIds { first: 5, count: 1 });
    let counter = node.engine.get_value(&catalog::counter_key(catalog::NEXT_SHARD_ID)).expect("get").expect("a counter");
    assert_eq!(counter, 6u64.to_be_bytes().to_vec());
}

/// The parent shard of the split tests: shard 1 of tenant 5.
const PARENT: u64 = 1;
/// The id the meta group handed out for the right side.
const CHILD: u64 = 9;
const TENANT: u32 = 5;
const TABLE: u32 = 1;

impl Node {
    /// Gives `PARENT` the state a node writes when it creates the replica of a tenant's
    /// first shard: tenant 5's whole range on nodes 1, 2 and 3, epoch (1, 1).
    fn create_parent(&self) {
        let (start, end) = tenant_range(TENANT).expect("a tenant range");
        let desc = ShardDesc {
            id: PARENT,
            tenant: TENANT,
            start: start.clone(),
            end: end.clone(),
            replicas: vec![Replica::voter(1), Replica::voter(2), Replica::voter(3)],
            epoch: Epoch::INITIAL,
        };
        let mut batch = self.engine.batch();
        batch.put(Cf::RaftMeta, &meta_key::key(PARENT, meta_key::SHARD_STATE), &ShardState::new(desc).encode());
        batch.put(Cf::RaftMeta, &meta_key::key(PARENT, meta_key::RANGE), &codec::encode_key_range(&KeyRange::new(start, Some(end))));
        self.engine.write(batch, true).expect("write the shard state");
    }

    /// `group`'s records in `raft_meta` that a split writes, by tag.
    fn meta(&self, group: u64) -> Vec<(u8, Option<Vec<u8>>)> {
        [meta_key::SHARD_STATE, meta_key::RANGE, meta_key::APPLIED, meta_key::MEMBERSHIP, meta_key::LAST_PURGED]
            .into_iter()
            .map(|tag| (tag, self.engine.get(Cf::RaftMeta, &meta_key::key(group, tag)).expect("get")))
            .collect()
    }

    /// Every raw (key, value) of the data column family.
    fn data(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.engine.scan(Cf::Data, &[], None, usize::MAX).expect("scan")
    }

    /// What a crash at this instant leaves: a copy of the files as they are now (RocksDB's
    /// WAL and SST files, the shared log), reopened. Writes applied without the WAL and not
    /// flushed are not in it.
    /// A copy of the node's files as a crash would leave them. RocksDB's background work
    /// (a flush, a compaction) may create or delete files while they are copied, and a
    /// copy that mixes the before and after (a MANIFEST naming a table made after the
    /// listing) is no state a crash leaves: the copy is made again until the files listed
    /// before and after it are the same (at most COPY_TRIES_MAX times).
    fn crash_copy(&self) -> Node {
        const COPY_TRIES_MAX: usize = 20;
        for _ in 0..COPY_TRIES_MAX {
            let to = TempDir::new().expect("temp dir");
            let before = listing(self.dir.path());
            copy_dir(self.dir.path(), to.path());
            if listing(self.dir.path()) == before {
                return Node::at(to);
            }
        }
        panic!("the node's files kept changing during {COPY_TRIES_MAX} copies");
    }
}

/// Every file under `dir`, by path.
fn listing(dir: &Path) -> BTreeSet<std::path::PathBuf> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        if e.path().is_dir() {
            out.extend(listing(&e.path()));
        } else {
            out.insert(e.path());
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            match std::fs::copy(e.path(), target) {
                // RocksDB deleted an obsolete file (an old WAL or log, a compacted table)
                // between the listing and the copy: a crash then would not have it either.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                r => {
                    r.expect("copy");
                }
            }
        }
    }
}

fn membership_entry(index: u64) -> Entry {
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    Entry {
        log_id: log_id::<kho_raft::TypeConfig>(2, 1, index),
        payload: EntryPayload::Membership(Membership::new_with_defaults(vec![voters], [])),
    }
}

/// A write of row `row` to the parent, routed at epoch `version`.
fn put(index: u64, shard: u64, version: u64, row: &str) -> Entry {
    let key = data_key(TENANT, TABLE, row.as_bytes(), 1, b"");
    let stored = kho_engine::value::encode_value(&key, format!("Tran Thi Binh {row}").as_bytes());
    normal(
        index,
        Command::Write(CellWrite {
            shard,
            epoch: version,
            tenant: TENANT,
            table: TABLE,
            ops: vec![CellOp::Put { key, stored }],
            condition: None,
        }),
    )
}

/// The point between the rows "m" and below, and the rows from "m" on.
fn split_point() -> Vec<u8> {
    row_prefix(TENANT, TABLE, b"m")
}

fn split(index: u64, version: u64, at: Vec<u8>) -> Entry {
    normal(index, Command::Split { shard: PARENT, epoch: version, at, new_id: CHILD })
}

/// The parent's log up to and with the split: its membership, 20 rows, the split at
/// index 22.
fn parent_log() -> Vec<Entry> {
    let mut entries = vec![membership_entry(1)];
    entries.extend((0..20).map(|i| put(2 + i, PARENT, 1, &format!("{}{i:02}", if i % 2 == 0 { "a" } else { "x" }))));
    entries.push(split(22, 1, split_point()));
    entries
}

/// One split entry, applied: the parent keeps its id and `[start, at)`, the child gets
/// `[at, end)`, both at version 2 with the parent's replicas and `conf_ver`, in the batch
/// of the entry; the child's Raft state is the snapshot point at index 0 (applied and
/// purged log id 0, the parent's membership at it) and its group opens initialized with
/// nothing to apply; no data moved; the in-memory range and state are the new ones.
#[test]
fn a_split_writes_both_sides_and_the_childs_initial_state_in_one_batch() {
    let node = Node::new();
    node.create_parent();
    let (_log, sm) = node.open(PARENT, GroupKind::Data);
    let data_before = {
        sm.apply_and_collect(parent_log()[..21].to_vec()).expect("apply");
        node.data()
    };
    assert_eq!(data_before.len(), 20);
    let out = sm.apply_and_collect(vec![split(22, 1, split_point())]).expect("apply the split");
    let (start, end) = tenant_range(TENANT).expect("range");
    let Outcome::Split { left, right } = &out[0].outcome else { panic!("not split: {:?}", out[0]) };
    let epoch = Epoch { conf_ver: 1, version: 2 };
    assert_eq!((left.id, &left.start, &left.end, left.epoch), (PARENT, &start, &split_point(), epoch));
    assert_eq!((right.id, &right.start, &right.end, right.epoch), (CHILD, &split_point(), &end, epoch));
    assert_eq!(left.replicas, right.replicas);
    assert_eq!(node.data(), data_before, "a split moves no data");

    // In memory: the parent's state and range are the left side's.
    assert_eq!(sm.state().shard().expect("a shard").desc, *left);
    assert_eq!(sm.state().range(), KeyRange::new(start.clone(), Some(split_point())));

    // Stored: both sides' states and ranges, the child's initial Raft state.
    let stored_state =
        |g| ShardState::decode(&node.engine.get(Cf::RaftMeta, &meta_key::key(g, meta_key::SHARD_STATE)).unwrap().unwrap()).unwrap();
    assert_eq!(stored_state(PARENT).desc, *left);
    assert_eq!(stored_state(CHILD).desc, *right);
    let stored_range =
        |g| codec::decode_key_range(&node.engine.get(Cf::RaftMeta, &meta_key::key(g, meta_key::RANGE)).unwrap().unwrap()).unwrap();
    assert_eq!(stored_range(PARENT), KeyRange::new(start, Some(split_point())));
    assert_eq!(stored_range(CHILD), KeyRange::new(split_point(), Some(end)));

    TypeConfig::run(async {
        let (mut child_log, mut child) = node.open(CHILD, GroupKind::Data);
        let (applied, membership) = child.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(child_initial_log_id()));
        assert_eq!(membership.log_id(), &Some(child_initial_log_id()));
        assert_eq!(membership.membership().voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
        let st = child_log.get_log_state().await.expect("log state");
        assert_eq!(st.last_purged_log_id, Some(child_initial_log_id()));
        assert_eq!(st.last_log_id, Some(child_initial_log_id()), "the log is empty: its last log id is the purged one");
        assert_eq!(child.state().range(), KeyRange::new(split_point(), Some(tenant_range(TENANT).unwrap().1)));
        // The child's first entries follow index 0: a write to its half, at its epoch.
        let out = child.apply_and_collect(vec![put(1, CHILD, 2, "zz")]).expect("child apply");
        assert!(matches!(out[0].outcome, Outcome::Written { .. }), "{:?}", out[0]);
    });
}

use kho_raft::TypeConfig;

/// A split is refused, writing nothing but the applied index, when it is stale (another
/// shard id or an older version) or its point is not a boundary strictly inside the range;
/// after a split, a write routed with the old epoch, or with the new one to a key the
/// parent gave away, is refused as misrouted.
#[test]
fn a_stale_split_or_one_at_a_bad_point_is_refused_and_writes_nothing() {
    let node = Node::new();
    node.create_parent();
    let (_log, sm) = node.open(PARENT, GroupKind::Data);
    sm.apply_and_collect(parent_log()[..21].to_vec()).expect("apply");
    let (start, end) = tenant_range(TENANT).unwrap();
    let before = (node.meta(PARENT), node.meta(CHILD), node.data());
    let kind = |o: &Outcome| match o {
        Outcome::Rejected(e) => e.kind,
        other => panic!("not refused: {other:?}"),
    };
    let refused = [
        (normal(22, Command::Split { shard: 2, epoch: 1, at: split_point(), new_id: CHILD }), AppErrorKind::WrongShard),
        (split(23, 2, split_point()), AppErrorKind::WrongShard),
        (split(24, 1, start.clone()), AppErrorKind::InvalidArgument),
        (split(25, 1, end.clone()), AppErrorKind::InvalidArgument),
        (split(26, 1, data_key(TENANT, TABLE, b"m", 1, b"")), AppErrorKind::InvalidArgument),
        (split(27, 1, tenant_range(TENANT + 1).unwrap().1), AppErrorKind::InvalidArgument),
        (normal(28, Command::Split { shard: PARENT, epoch: 1, at: split_point(), new_id: PARENT }), AppErrorKind::InvalidArgument),
        (normal(29, Command::Split { shard: PARENT, epoch: 1, at: split_point(), new_id: 0 }), AppErrorKind::InvalidArgument),
    ];
    for (entry, want) in refused {
        let what = format!("{:?}", entry.payload);
        let out = sm.apply_and_collect(vec![entry]).expect("apply");
        assert_eq!(kind(&out[0].outcome), want, "{what}");
    }
    let after_meta = node.meta(PARENT);
    assert_eq!(
        after_meta.iter().filter(|(t, _)| *t != meta_key::APPLIED).collect::<Vec<_>>(),
        before.0.iter().filter(|(t, _)| *t != meta_key::APPLIED).collect::<Vec<_>>()
    );
    assert_eq!(node.meta(CHILD), before.1, "nothing of the child was written");
    assert_eq!(node.data(), before.2);
    assert_eq!(sm.state().range(), KeyRange::new(start, Some(end)));

    let out = sm
        .apply_and_collect(vec![split(30, 1, split_point()), put(31, PARENT, 1, "b"), put(32, PARENT, 2, "q"), put(33, PARENT, 2, "b")])
        .expect("apply");
    assert!(matches!(out[0].outcome, Outcome::Split { .. }), "{:?}", out[0]);
    assert_eq!(kind(&out[1].outcome), AppErrorKind::WrongShard, "the old epoch");
    assert_eq!(kind(&out[2].outcome), AppErrorKind::WrongShard, "a key of the right side");
    assert!(matches!(out[3].outcome, Outcome::Written { .. }), "the left side at the new epoch: {:?}", out[3]);
}

/// A crash at any instant leaves every replica able to agree: (1) before the split's batch
/// is durable, the restart has the state before the split and applies the split again,
/// to the same state; (2) once the child's group has opened (which flushes), the restart
/// has the split and the child. In both cases parent, child and data equal those of a
/// node that never crashed. A replica that already holds the child's state when it
/// applies the split (it got it from a snapshot of the child) leaves that state alone.
#[test]
fn a_crash_at_any_instant_of_a_split_leaves_the_same_state_after_restart() {
    // The node that does not crash.
    let reference = Node::new();
    reference.create_parent();
    let (_l, sm) = reference.open(PARENT, GroupKind::Data);
    sm.apply_and_collect(parent_log()).expect("apply");
    let want = (reference.meta(PARENT), reference.meta(CHILD), reference.data());
    drop(sm);

    // (1) The split applied (in memory, without the WAL) but not flushed: the crash loses
    // it with every apply since the open's flush.
    let node = Node::new();
    node.create_parent();
    let (_l, sm) = node.open(PARENT, GroupKind::Data);
    sm.apply_and_collect(parent_log()).expect("apply");
    let crashed = node.crash_copy();
    assert!(crashed.meta(CHILD).iter().all(|(_, v)| v.is_none()), "the unflushed split survived the crash");
    let (_l2, sm2) = crashed.open(PARENT, GroupKind::Data);
    let applied = |n: &Node| {
        n.engine
            .get(Cf::RaftMeta, &meta_key::key(PARENT, meta_key::APPLIED))
            .unwrap()
            .and_then(|b| codec::decode_opt_log_id(&b).unwrap())
            .map(|l| l.index)
    };
    let from = applied(&crashed).map_or(0, |i| i as usize); // openraft re-applies the log after it
    sm2.apply_and_collect(parent_log()[from..].to_vec()).expect("re-apply");
    assert_eq!((crashed.meta(PARENT), crashed.meta(CHILD), crashed.data()), want, "after a crash before the flush");
    drop(sm2);

    // (2) The child's group opened: its open flushed the split's batch, so a crash then
    // keeps the split, and the child's state is complete.
    let (_lc, child) = node.open(CHILD, GroupKind::Data);
    drop(child);
    let crashed = node.crash_copy();
    assert_eq!(applied(&crashed), Some(22));
    assert_eq!((crashed.meta(PARENT), crashed.meta(CHILD), crashed.data()), want, "after a crash once the child opened");

    // A replica that holds the child's state already (a snapshot of the child installed
    // before its parent applied the split) keeps it: the child has moved on.
    let late = Node::new();
    late.create_parent();
    let moved_on = ShardState::new(ShardDesc {
        id: CHILD,
        start: split_point(),
        end: tenant_range(TENANT).unwrap().1,
        tenant: TENANT,
        replicas: vec![Replica::voter(1), Replica::voter(2), Replica::voter(3)],
        epoch: Epoch { conf_ver: 1, version: 5 },
    });
    let mut batch = late.engine.batch();
    batch.put(Cf::RaftMeta, &meta_key::key(CHILD, meta_key::SHARD_STATE), &moved_on.encode());
    batch.put(Cf::RaftMeta, &meta_key::key(CHILD, meta_key::APPLIED), &codec::encode_opt_log_id(Some(&log_id::<TypeConfig>(4, 2, 70))));
    late.engine.write(batch, true).unwrap();
    let child_before = late.meta(CHILD);
    let (_l3, sm3) = late.open(PARENT, GroupKind::Data);
    sm3.apply_and_collect(parent_log()).expect("apply");
    assert_eq!(late.meta(PARENT), want.0);
    assert_eq!(late.meta(CHILD), child_before, "the child's newer state was overwritten");
}

/// The merge back of the split's two sides (docs/SHARDING.md, "Split and merge"): the
/// child (the source) applies `PrepareMerge` and refuses writes from then on (a repeated
/// prepare answers the first one's index); the parent (the target) applies `CommitMerge`
/// once its node's replica of the child has applied the prepare — it waits for it — and
/// in one batch takes the whole range again at version `max + 1`, and the child's state is
/// gone from storage; no data moved. A commit routed with a stale epoch is refused; a
/// rollback lets the source take writes again.
#[test]
fn a_merge_waits_for_the_source_then_takes_its_range_in_one_batch() {
    let node = Node::new();
    node.create_parent();
    let (_log, sm) = node.open(PARENT, GroupKind::Data);
    sm.apply_and_collect(parent_log()).expect("apply the split");
    let (_child_log, child) = node.open(CHILD, GroupKind::Data);
    let source = child.state().shard().expect("the child's state").desc;
    let target_epoch = Epoch { conf_ver: 1, version: 2 };
    let prepare =
        |index| normal(index, Command::PrepareMerge { shard: CHILD, epoch: 2, target: PARENT, target_epoch, voters: vec![1, 2, 3] });
    let out = child.apply_and_collect(vec![put(1, CHILD, 2, "zz"), prepare(2)]).expect("apply");
    assert!(matches!(out[0].outcome, Outcome::Written { .. }), "{:?}", out[0]);
    assert_eq!(out[1].outcome, Outcome::MergePrepared { index: 2 });
    let data = node.data();
    assert_eq!(data.len(), 21);

    // Prepared: no write, no split; a repeated prepare answers the first one's index; a
    // prepare for another target is refused.
    let other = normal(5, Command::PrepareMerge { shard: CHILD, epoch: 2, target: 77, target_epoch, voters: vec![1, 2, 3] });
    let out = child
        .apply_and_collect(vec![
            put(3, CHILD, 2, "zy"),
            prepare(4),
            other,
            normal(6, Command::Split { shard: CHILD, epoch: 2, at: row_prefix(TENANT, TABLE, b"zz"), new_id: 12 }),
        ])
        .expect("apply");
    assert!(matches!(&out[0].outcome, Outcome::Rejected(e) if e.kind == AppErrorKind::WrongShard), "{:?}", out[0]);
    assert_eq!(out[1].outcome, Outcome::MergePrepared { index: 2 });
    assert!(matches!(&out[2].outcome, Outcome::Rejected(e) if e.kind == AppErrorKind::FailedPrecondition), "{:?}", out[2]);
    assert!(matches!(&out[3].outcome, Outcome::Rejected(e) if e.kind == AppErrorKind::WrongShard), "{:?}", out[3]);
    assert_eq!(node.data(), data, "nothing written while prepared");

    // A stale commit is refused and writes nothing.
    let commit =
        |index, epoch, prepare_index| normal(index, Command::CommitMerge { shard: PARENT, epoch, source: source.clone(), prepare_index });
    let out = sm.apply_and_collect(vec![commit(23, Epoch { conf_ver: 1, version: 1 }, 2)]).expect("apply");
    assert!(matches!(&out[0].outcome, Outcome::Rejected(e) if e.kind == AppErrorKind::WrongShard), "{:?}", out[0]);

    // A commit whose prepare the child's replica here has not applied yet waits for it.
    let (tx, rx) = std::sync::mpsc::channel();
    let entry = commit(24, target_epoch, 7);
    let waiting = std::thread::spawn(move || {
        let out = sm.apply_and_collect(vec![entry]).expect("apply the commit");
        tx.send(out[0].outcome.clone()).expect("send");
        sm
    });
    assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "the commit did not wait for the source");
    child
        .apply_and_collect(vec![normal(7, Command::RollbackMerge { shard: CHILD, target_epoch: Epoch { conf_ver: 9, version: 9 } })])
        .expect("apply");
    let merged = match rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the commit applied once the source did") {
        Outcome::Merged { desc } => desc,
        other => panic!("not merged: {other:?}"),
    };
    let sm = waiting.join().expect("the commit's thread");
    let (start, end) = tenant_range(TENANT).unwrap();
    assert_eq!((merged.id, &merged.start, &merged.end, merged.epoch), (PARENT, &start, &end, Epoch { conf_ver: 1, version: 3 }));
    assert_eq!(sm.state().shard().expect("a shard").desc, merged);
    assert_eq!(sm.state().range(), KeyRange::new(start.clone(), Some(end.clone())));
    let stored_range =
        codec::decode_key_range(&node.engine.get(Cf::RaftMeta, &meta_key::key(PARENT, meta_key::RANGE)).unwrap().unwrap()).unwrap();
    assert_eq!(stored_range, KeyRange::new(start, Some(end)));
    for tag in [meta_key::SHARD_STATE, meta_key::RANGE] {
        assert_eq!(node.engine.get(Cf::RaftMeta, &meta_key::key(CHILD, tag)).unwrap(), None, "the source's record {tag:#x} is gone");
    }
    assert_eq!(node.data(), data, "a merge moves no data");
    // The merged shard takes writes over the whole range at its new epoch.
    let out = sm.apply_and_collect(vec![put(25, PARENT, 3, "zx")]).expect("apply");
    assert!(matches!(out[0].outcome, Outcome::Written { .. }), "{:?}", out[0]);
}

/// A rolled-back merge: the source takes writes again, and the rollback is idempotent.
#[test]
fn a_rolled_back_merge_takes_writes_again() {
    let node = Node::new();
    node.create_parent();
    let (_log, sm) = node.open(PARENT, GroupKind::Data);
    sm.apply_and_collect(parent_log()).expect("apply the split");
    let (_child_log, child) = node.open(CHILD, GroupKind::Data);
    let target_epoch = Epoch { conf_ver: 1, version: 2 };
    let out = child
        .apply_and_collect(vec![
            normal(1, Command::PrepareMerge { shard: CHILD, epoch: 2, target: PARENT, target_epoch, voters: vec![1, 2, 4] }),
            normal(2, Command::PrepareMerge { shard: CHILD, epoch: 2, target: PARENT, target_epoch, voters: vec![1, 2, 3] }),
            put(3, CHILD, 2, "zz"),
            normal(4, Command::RollbackMerge { shard: CHILD, target_epoch }),
            normal(5, Command::RollbackMerge { shard: CHILD, target_epoch }),
            put(6, CHILD, 2, "zz"),
        ])
        .expect("apply");
    assert!(matches!(&out[0].outcome, Outcome::Rejected(e) if e.kind == AppErrorKind::FailedPrecondition), "other voters: {:?}", out[0]);
    assert_eq!(out[1].outcome, Outcome::MergePrepared { index: 2 });
    assert!(matches!(&out[2].outcome, Outcome::Rejected(e) if e.kind == AppErrorKind::WrongShard), "{:?}", out[2]);
    assert_eq!((&out[3].outcome, &out[4].outcome), (&Outcome::Done, &Outcome::Done));
    assert!(matches!(out[5].outcome, Outcome::Written { .. }), "{:?}", out[5]);
    assert!(child.state().shard().expect("a shard").merging.is_none());
}

// ---------------------------------------------------------------------------------------
// SST runs (the bulk load's fast path) across a split

/// An SST run of `rows` (puts of family 1, values "Le Van Nam {row}") built by `leader`'s
/// engine for the parent at epoch `version`; the rows are given in any order.
fn sst_run(leader: &Node, version: u64, rows: &[String]) -> kho_raft::ingest::SstRun {
    sst_run_of(leader, version, rows, "Le Van Nam")
}

/// [`sst_run`] with values "{name} {row}".
fn sst_run_of(leader: &Node, version: u64, rows: &[String], name: &str) -> kho_raft::ingest::SstRun {
    let ops = rows
        .iter()
        .map(|row| {
            let key = data_key(TENANT, TABLE, row.as_bytes(), 1, b"");
            let stored = kho_engine::value::encode_value(&key, format!("{name} {row}").as_bytes());
            CellOp::Put { key, stored }
        })
        .collect();
    let w = CellWrite { shard: PARENT, epoch: version, tenant: TENANT, table: TABLE, ops, condition: None };
    kho_raft::ingest::build(&leader.engine, &w).expect("build the SST run")
}

/// Rows "b000" … in reverse order: the run sorts them.
fn run_rows(n: usize) -> Vec<String> {
    (0..n).rev().map(|i| format!("b{i:03}")).collect()
}

fn value_of(node: &Node, row: &str) -> Option<Vec<u8>> {
    let key = data_key(TENANT, TABLE, row.as_bytes(), 1, b"");
    node.engine
        .get(Cf::Data, &key)
        .expect("get")
        .map(|stored| kho_engine::value::decode_value(&key, &stored).expect("a stored value").to_vec())
}

fn staged_files(node: &Node) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(node.engine.staging_dir()) {
        Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
        Err(_) => vec![],
    }
}

/// A run built on one node (the leader) is applied by every replica from the entry alone:
/// each holds the same cells, a run's cells replace earlier writes of the same keys and a
/// later write replaces them (log order), and nothing stays staged. A run routed with a
/// stale epoch, to another shard, across the split point, or whose file lost a byte or
/// its length, is refused and writes nothing but the applied index.
#[test]
fn an_sst_run_is_ingested_by_every_replica_in_log_order_and_refused_when_stale_or_damaged() {
    let leader = Node::new();
    let mut rows = run_rows(500);
    rows.push("a00".into()); // also written by the log's first put
    let run = sst_run(&leader, 1, &rows);
    assert_eq!(run.cells, 501);
    assert!(staged_files(&leader).is_empty(), "the leader kept its staging file");

    let mut log = parent_log()[..21].to_vec();
    log.push(normal(21, Command::IngestSst(run.clone())));
    log.push(put(22, PARENT, 1, "b007"));
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let node = Node::new();
        node.create_parent();
        let (_log, sm) = node.open(PARENT, GroupKind::Data);
        let out = sm.apply_and_collect(log.clone()).expect("apply");
        assert!(matches!(out[20].outcome, Outcome::Written { .. }), "{:?}", out[20]);
        assert_eq!(value_of(&node, "a00").as_deref(), Some(&b"Le Van Nam a00"[..]), "the run replaces the earlier write");
        assert_eq!(value_of(&node, "b499").as_deref(), Some(&b"Le Van Nam b499"[..]));
        assert_eq!(value_of(&node, "b007").as_deref(), Some(&b"Tran Thi Binh b007"[..]), "the later write replaces the run");
        assert_eq!(node.data().len(), 20 + 500, "20 puts and the run's 500 new rows");
        assert!(staged_files(&node).is_empty(), "an ingested file stayed staged");
        replicas.push(node);
    }
    assert_eq!(replicas[0].data(), replicas[1].data());

    // A new replica that gets a snapshot taken after the run holds the run's cells.
    TypeConfig::run(async {
        let (_log, mut sm) = replicas[1].open(PARENT, GroupKind::Data);
        let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("build a snapshot");
        let fresh = Node::new();
        fresh.create_parent();
        let (_flog, mut fsm) = fresh.open(PARENT, GroupKind::Data);
        fsm.install_snapshot(&built.meta, built.snapshot).await.expect("install the snapshot");
        assert_eq!(fresh.data(), replicas[1].data(), "the snapshot lacks the run's cells");
    });

    // Refused runs, applied on a replica that split at "m" (version 2).
    let node = &replicas[0];
    let (_log, sm) = node.open(PARENT, GroupKind::Data);
    let out = sm.apply_and_collect(vec![split(23, 1, split_point())]).expect("split");
    assert!(matches!(out[0].outcome, Outcome::Split { .. }), "{:?}", out[0]);
    let before = node.data();
    let left_rows: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let across: Vec<String> = vec!["c1".into(), "z1".into()];
    let mut flipped = sst_run(&leader, 2, &left_rows);
    let last = flipped.sst.len() - 1;
    flipped.sst[last / 2] ^= 1;
    let mut short = sst_run(&leader, 2, &left_rows);
    short.sst.pop();
    let mut other_shard = sst_run(&leader, 2, &left_rows);
    other_shard.shard = CHILD;
    let refused = [
        (sst_run(&leader, 1, &left_rows), AppErrorKind::WrongShard, "the epoch before the split"),
        (sst_run(&leader, 2, &across), AppErrorKind::WrongShard, "keys on both sides of the split"),
        (other_shard, AppErrorKind::WrongShard, "another shard"),
        (flipped, AppErrorKind::InvalidArgument, "a flipped byte"),
        (short, AppErrorKind::InvalidArgument, "a byte short"),
    ];
    for (i, (run, want, what)) in refused.into_iter().enumerate() {
        let out = sm.apply_and_collect(vec![normal(24 + i as u64, Command::IngestSst(run))]).expect("apply");
        match &out[0].outcome {
            Outcome::Rejected(e) => assert_eq!(e.kind, want, "{what}: {e}"),
            other => panic!("{what}: not refused: {other:?}"),
        }
    }
    assert_eq!(node.data(), before, "a refused run wrote cells");
    assert!(staged_files(node).is_empty());
    let out = sm.apply_and_collect(vec![normal(40, Command::IngestSst(sst_run(&leader, 2, &left_rows)))]).expect("apply");
    assert!(matches!(out[0].outcome, Outcome::Written { .. }), "the run cut again at the new epoch: {:?}", out[0]);
    assert_eq!(node.data().len(), before.len() + 10);
}

/// A crash after runs were ingested loses nothing and applies nothing out of order: an
/// entry that read stored cells (here a conditional write) is made durable before the
/// next run is ingested, so no such entry is replayed on top of a later run's cells;
/// blind writes and runs are replayed in log order to the same cells; the staging
/// directory is wiped. Same state as a node that never crashed.
#[test]
fn a_crash_around_an_sst_run_replays_it_to_the_same_state() {
    let leader = Node::new();
    let rows_b: Vec<String> = (5..16).map(|i| format!("b{i:03}")).collect();
    let mut log = parent_log()[..21].to_vec();
    log.push(normal(21, Command::IngestSst(sst_run(&leader, 1, &run_rows(300)))));
    log.push(put(22, PARENT, 1, "b010"));
    log.push(normal(23, Command::IngestSst(sst_run_of(&leader, 1, &rows_b, "Pham Thu Ha"))));
    // Reads a cell (its condition fails: the row exists), writes nothing.
    let mut cas = put(24, PARENT, 1, "b020");
    if let EntryPayload::Normal(Command::Write(w)) = &mut cas.payload {
        w.condition = Some(kho_raft::command::RawCondition { key: data_key(TENANT, TABLE, b"b020", 1, b""), expected: None });
    }
    log.push(cas);
    log.push(normal(25, Command::IngestSst(sst_run_of(&leader, 1, &rows_b[..2], "Vo Thi Sau"))));
    log.push(put(26, PARENT, 1, "zz"));

    let reference = Node::new();
    reference.create_parent();
    let (_l, sm) = reference.open(PARENT, GroupKind::Data);
    sm.apply_and_collect(log.clone()).expect("apply");
    let want = reference.data();
    drop(sm);

    let node = Node::new();
    node.create_parent();
    let (_l, sm) = node.open(PARENT, GroupKind::Data);
    // A file staged by a run that never finished: wiped at the next open.
    std::fs::create_dir_all(node.engine.staging_dir()).unwrap();
    std::fs::write(node.engine.staging_dir().join("apply-0-0.sst"), b"Le Van Nam").unwrap();
    sm.apply_and_collect(log.clone()).expect("apply");
    let crashed = node.crash_copy();
    let applied = crashed
        .engine
        .get(Cf::RaftMeta, &meta_key::key(PARENT, meta_key::APPLIED))
        .unwrap()
        .and_then(|b| codec::decode_opt_log_id(&b).unwrap())
        .map_or(0, |l| l.index);
    assert!(applied >= 24, "the conditional write was not made durable before the next run: applied {applied}");
    assert!(staged_files(&crashed).is_empty(), "the staging directory was not wiped at open");
    let (_l2, sm2) = crashed.open(PARENT, GroupKind::Data);
    sm2.apply_and_collect(log[applied as usize..].to_vec()).expect("re-apply");
    assert_eq!(crashed.data(), want);
    assert_eq!(value_of(&crashed, "b010").as_deref(), Some(&b"Pham Thu Ha b010"[..]));
    assert_eq!(value_of(&crashed, "b005").as_deref(), Some(&b"Vo Thi Sau b005"[..]));
    assert_eq!(value_of(&crashed, "b020").as_deref(), Some(&b"Le Van Nam b020"[..]));

    // Replayed from before the first run (as after a crash before any flush), the same.
    let replayed = Node::new();
    replayed.create_parent();
    let (_l3, sm3) = replayed.open(PARENT, GroupKind::Data);
    sm3.apply_and_collect(log.clone()).expect("apply");
    sm3.apply_and_collect(log[20..].to_vec()).expect("apply the runs and what follows again");
    assert_eq!(replayed.data(), want);
}
