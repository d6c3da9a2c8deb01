//! [`LocalRanges`]: the key ranges of a node's data groups, by start. A request finds the
//! local group whose range holds its key here, not in the shard map: the map is the meta
//! group's, told of a split by a report after the split applied, so it lags behind the
//! groups of a node that applied it (docs/SHARDING.md, "Routing").
//!
//! The index holds each group's range start; the group's own range (its state machine's,
//! changed under its install gate) says whether it still holds a key. Ranges of a node's
//! groups never overlap once every group has applied its log; for a while they may (a
//! replica of a child that this node got from the shard map before its replica of the
//! parent applied the split): the nearest start at or below the key wins, which is the
//! newer, narrower shard.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::RwLock;

use crate::{GroupId, KeyRange};

/// Most groups a lookup looks at, nearest start first, count: beyond it a key is not in
/// any local group (a range that overlaps this many others would be a broken invariant).
pub const LOOKUP_CANDIDATES_MAX: usize = 8;

#[derive(Debug, Default)]
pub struct LocalRanges {
    index: RwLock<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// The groups starting at each key (more than one only while a stale, wider replica
    /// has not applied what the newer one did).
    by_start: BTreeMap<Vec<u8>, BTreeSet<GroupId>>,
    /// Each group's start.
    start_of: HashMap<GroupId, Vec<u8>>,
}

impl Index {
    fn remove(&mut self, id: GroupId) {
        let Some(start) = self.start_of.remove(&id) else { return };
        if let Some(ids) = self.by_start.get_mut(&start) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_start.remove(&start);
            }
        }
    }

    fn set(&mut self, id: GroupId, start: Vec<u8>) {
        if self.start_of.get(&id) == Some(&start) {
            return;
        }
        self.remove(id);
        self.by_start.entry(start.clone()).or_default().insert(id);
        self.start_of.insert(id, start);
    }
}

impl LocalRanges {
    /// Replaces the index with `ranges` (every data group of the node and its range).
    pub fn rebuild(&self, ranges: impl IntoIterator<Item = (KeyRange, GroupId)>) {
        let mut index = Index::default();
        for (range, id) in ranges {
            index.set(id, range.start);
        }
        *self.index.write().expect("local ranges lock poisoned") = index;
    }

    /// Indexes group `id` as starting at `start` (a group opened, or its range changed).
    pub fn set(&self, id: GroupId, start: Vec<u8>) {
        self.index.write().expect("local ranges lock poisoned").set(id, start);
    }

    /// Drops group `id` from the index (a group retired or gone).
    pub fn remove(&self, id: GroupId) {
        self.index.write().expect("local ranges lock poisoned").remove(id);
    }

    /// The groups that may hold `key`: those starting at or below it, nearest start first
    /// (at one start, the higher id, the newer shard, first), at most
    /// [`LOOKUP_CANDIDATES_MAX`]. The caller checks each group's current range.
    pub fn candidates(&self, key: &[u8]) -> Vec<GroupId> {
        let index = self.index.read().expect("local ranges lock poisoned");
        index
            .by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .rev()
            .flat_map(|(_, ids)| ids.iter().rev().copied())
            .take(LOOKUP_CANDIDATES_MAX)
            .collect()
    }

    /// The group whose range starts exactly at `start`, if any (the higher id if two do).
    pub fn starting_at(&self, start: &[u8]) -> Option<GroupId> {
        self.index.read().expect("local ranges lock poisoned").by_start.get(start).and_then(|ids| ids.last().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: &[u8], end: &[u8]) -> KeyRange {
        KeyRange::new(start.to_vec(), Some(end.to_vec()))
    }

    #[test]
    fn the_nearest_start_at_or_below_the_key_comes_first() {
        let idx = LocalRanges::default();
        idx.rebuild([(r(b"a", b"m"), 1), (r(b"m", b"z"), 9), (r(b"\0", b"a"), 4)]);
        assert_eq!(idx.candidates(b"c"), vec![1, 4]);
        assert_eq!(idx.candidates(b"m"), vec![9, 1, 4]);
        assert_eq!(idx.candidates(b"a"), vec![1, 4]);
        assert_eq!(idx.candidates(b""), Vec::<GroupId>::new());
        assert_eq!(idx.starting_at(b"m"), Some(9));
        assert_eq!(idx.starting_at(b"n"), None);
        // A stale, wider parent and its child: the child (nearer start) first.
        idx.rebuild([(r(b"a", b"z"), 1), (r(b"m", b"z"), 9), (r(b"m", b"q"), 12)]);
        assert_eq!(idx.candidates(b"p"), vec![12, 9, 1]);
        let many: Vec<_> = (0..20u8).map(|i| (r(&[i], &[i + 1]), u64::from(i) + 1)).collect();
        idx.rebuild(many);
        assert_eq!(idx.candidates(&[19]).len(), LOOKUP_CANDIDATES_MAX);
    }

    #[test]
    fn groups_are_indexed_and_dropped_one_at_a_time() {
        let idx = LocalRanges::default();
        idx.rebuild([(r(b"a", b"z"), 1)]);
        // A split: the child is indexed, the parent keeps its start.
        idx.set(9, b"m".to_vec());
        assert_eq!(idx.candidates(b"p"), vec![9, 1]);
        // A stale replica starting at the same key: the newer (higher) id first, and back
        // to the other once it is dropped.
        idx.set(12, b"m".to_vec());
        assert_eq!(idx.candidates(b"p"), vec![12, 9, 1]);
        assert_eq!(idx.starting_at(b"m"), Some(12));
        idx.remove(12);
        assert_eq!(idx.starting_at(b"m"), Some(9));
        // A group that moved its start (never happens to a shard, but the index follows).
        idx.set(9, b"n".to_vec());
        assert_eq!(idx.starting_at(b"m"), None);
        assert_eq!(idx.candidates(b"p"), vec![9, 1]);
        idx.remove(9);
        idx.remove(9);
        assert_eq!(idx.candidates(b"p"), vec![1]);
    }
}
