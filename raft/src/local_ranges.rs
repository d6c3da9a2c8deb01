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

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::{GroupId, KeyRange};

/// Most groups a lookup looks at, nearest start first, count: beyond it a key is not in
/// any local group (a range that overlaps this many others would be a broken invariant).
pub const LOOKUP_CANDIDATES_MAX: usize = 8;

#[derive(Debug, Default)]
pub struct LocalRanges {
    by_start: RwLock<BTreeMap<Vec<u8>, GroupId>>,
}

impl LocalRanges {
    /// Replaces the index with `ranges` (every data group of the node and its range). Two
    /// groups starting at the same key (only possible with merges, not built) keep the
    /// higher id, the newer shard.
    pub fn rebuild(&self, ranges: impl IntoIterator<Item = (KeyRange, GroupId)>) {
        let mut by_start = BTreeMap::new();
        for (range, id) in ranges {
            let slot = by_start.entry(range.start).or_insert(id);
            *slot = (*slot).max(id);
        }
        *self.by_start.write().expect("local ranges lock poisoned") = by_start;
    }

    /// The groups that may hold `key`: those starting at or below it, nearest first, at
    /// most [`LOOKUP_CANDIDATES_MAX`]. The caller checks each group's current range.
    pub fn candidates(&self, key: &[u8]) -> Vec<GroupId> {
        let by_start = self.by_start.read().expect("local ranges lock poisoned");
        by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).rev().take(LOOKUP_CANDIDATES_MAX).map(|(_, id)| *id).collect()
    }

    /// The group whose range starts exactly at `start`, if any.
    pub fn starting_at(&self, start: &[u8]) -> Option<GroupId> {
        self.by_start.read().expect("local ranges lock poisoned").get(start).copied()
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
        assert_eq!(idx.candidates(b"p"), vec![12, 1]);
        let many: Vec<_> = (0..20u8).map(|i| (r(&[i], &[i + 1]), u64::from(i) + 1)).collect();
        idx.rebuild(many);
        assert_eq!(idx.candidates(&[19]).len(), LOOKUP_CANDIDATES_MAX);
    }
}
