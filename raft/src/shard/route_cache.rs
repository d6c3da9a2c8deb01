//! [`RouteCache`]: a node's or client's cache of shard descriptors, which may be stale.

use std::collections::BTreeMap;

use crate::shard::desc::{ShardDesc, ShardId};
use crate::shard::map::{intersecting, lookup_in};

/// What [`RouteCache::update`] did with a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUpdate {
    /// The descriptor is cached now; `evicted` older ones were dropped for it (overlapping
    /// ones, the same shard's, and any pushed out by the capacity bound).
    Inserted {
        /// How many cached descriptors were dropped.
        evicted: usize,
    },
    /// The same descriptor was cached already.
    Unchanged,
    /// A cached descriptor sharing a key (or the id) is newer: the update was ignored.
    Stale,
    /// The descriptor does not validate ([`ShardDesc::validate`]) and was ignored.
    Invalid,
}

/// A cache of shard descriptors that may be stale, for routing by key.
///
/// The cached ranges never overlap. A descriptor learnt later (from the meta group, or from
/// an epoch-mismatch answer) replaces every cached one that shares a key with it and is
/// older, as decided by [`crate::shard::Epoch::is_stale_against`]; an update older than a
/// cached overlapping descriptor is ignored. Because the epochs of the owners of a key only
/// grow, feeding descriptors in any order leaves the newest ones; a descriptor that is
/// stale but overlaps nothing newer stays until something replaces or invalidates it, and
/// a request routed with it is answered with an epoch mismatch.
///
/// Bounded: at most `shards_max` descriptors; past that the first ones in key order are
/// dropped (a crude policy: size the cache to the map where routing is hot).
#[derive(Debug, Clone)]
pub struct RouteCache {
    /// The cached descriptors, by `start`; ranges do not overlap.
    by_start: BTreeMap<Vec<u8>, ShardDesc>,
    /// The `start` of every cached descriptor, by shard id.
    start_by_id: BTreeMap<ShardId, Vec<u8>>,
    /// The most descriptors held.
    shards_max: usize,
}

impl RouteCache {
    /// An empty cache holding at most `shards_max` descriptors (at least one).
    pub fn new(shards_max: usize) -> RouteCache {
        RouteCache { by_start: BTreeMap::new(), start_by_id: BTreeMap::new(), shards_max: shards_max.max(1) }
    }

    /// The number of cached descriptors.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// Every cached descriptor, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &ShardDesc> {
        self.by_start.values()
    }

    /// The cached descriptor of shard `id`.
    pub fn get(&self, id: ShardId) -> Option<&ShardDesc> {
        self.by_start.get(self.start_by_id.get(&id)?)
    }

    /// The cached descriptor whose range contains `key`; it may be stale.
    pub fn lookup(&self, key: &[u8]) -> Option<&ShardDesc> {
        lookup_in(&self.by_start, key)
    }

    /// Learns `desc`: caches it and evicts every cached descriptor that shares a key with it
    /// or has its id, unless one of those is newer (then `desc` is ignored). A cached
    /// descriptor with an equal epoch but a different content is replaced.
    pub fn update(&mut self, desc: ShardDesc) -> CacheUpdate {
        if desc.validate().is_err() {
            return CacheUpdate::Invalid;
        }
        let mut rivals: Vec<&ShardDesc> = intersecting(&self.by_start, &desc.start, &desc.end).collect();
        if let Some(same_id) = self.get(desc.id) {
            if !rivals.iter().any(|r| r.id == desc.id) {
                rivals.push(same_id);
            }
        }
        if rivals.iter().any(|cached| **cached == desc) {
            return CacheUpdate::Unchanged;
        }
        if rivals.iter().any(|cached| desc.epoch.is_stale_against(&cached.epoch)) {
            return CacheUpdate::Stale;
        }
        let rivals: Vec<ShardId> = rivals.iter().map(|r| r.id).collect();
        let mut evicted = 0;
        for id in rivals {
            let removed = self.remove(id);
            assert!(removed.is_some(), "a rival descriptor vanished");
            evicted += 1;
        }
        let (id, start) = (desc.id, desc.start.clone());
        self.start_by_id.insert(id, start.clone());
        let replaced = self.by_start.insert(start, desc);
        assert!(replaced.is_none(), "an overlapping descriptor was not evicted");
        while self.by_start.len() > self.shards_max {
            let first = self.iter().map(|d| d.id).find(|&other| other != id);
            let first = first.expect("more than one descriptor is cached");
            self.remove(first);
            evicted += 1;
        }
        debug_assert!(self.check().is_ok(), "{:?}", self.check());
        CacheUpdate::Inserted { evicted }
    }

    /// Forgets shard `id` (after a `RegionNotFound`-like answer); returns what was cached.
    pub fn invalidate(&mut self, id: ShardId) -> Option<ShardDesc> {
        self.remove(id)
    }

    fn remove(&mut self, id: ShardId) -> Option<ShardDesc> {
        let start = self.start_by_id.remove(&id)?;
        self.by_start.remove(&start)
    }

    /// The cache's own invariants: indexes in step, ranges disjoint, within the bound.
    fn check(&self) -> Result<(), String> {
        if self.by_start.len() > self.shards_max || self.by_start.len() != self.start_by_id.len() {
            return Err("cache sizes are out of step".to_owned());
        }
        let mut previous_end: Option<&[u8]> = None;
        for (start, desc) in &self.by_start {
            if *start != desc.start || self.start_by_id.get(&desc.id) != Some(start) {
                return Err(format!("shard {} is filed wrongly", desc.id));
            }
            if previous_end.is_some_and(|end| end > desc.start.as_slice()) {
                return Err(format!("shard {} overlaps its predecessor", desc.id));
            }
            previous_end = Some(&desc.end);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::desc::{Epoch, Replica};
    use crate::shard::map::ShardMap;
    use crate::shard::split::choose_split_point;
    use kho_engine::keys::{data_key, row_prefix};
    use proptest::prelude::*;

    fn voters(nodes: &[u64]) -> Vec<Replica> {
        nodes.iter().copied().map(Replica::voter).collect()
    }

    #[test]
    fn newer_descriptors_replace_older_ones() {
        let mut map = ShardMap::new();
        let whole = map.create_tenant_shard(1, 5, voters(&[1, 2, 3])).expect("created");
        let mut cache = RouteCache::new(100);
        assert_eq!(cache.update(whole.clone()), CacheUpdate::Inserted { evicted: 0 });
        assert_eq!(cache.update(whole.clone()), CacheUpdate::Unchanged);
        let key = data_key(5, 3, b"z", 0, b"");
        assert_eq!(cache.lookup(&key).map(|d| d.id), Some(1));

        let (left, right) = map.split(1, &row_prefix(5, 3, b"m"), 2).expect("split");
        // The right side alone evicts the parent: the key's route is gone until learnt.
        assert_eq!(cache.update(right.clone()), CacheUpdate::Inserted { evicted: 1 });
        assert_eq!(cache.lookup(&data_key(5, 3, b"a", 0, b"")), None);
        assert_eq!(cache.lookup(&key).map(|d| d.id), Some(2));
        // The parent is older than the right side now cached.
        assert_eq!(cache.update(whole.clone()), CacheUpdate::Stale);
        assert_eq!(cache.update(left.clone()), CacheUpdate::Inserted { evicted: 0 });
        assert_eq!(cache.len(), 2);

        // A replica change: same range, higher conf_ver.
        let moved = map.set_replicas(2, voters(&[1, 2, 4])).expect("set");
        assert_eq!(cache.update(right.clone()), CacheUpdate::Unchanged);
        assert_eq!(cache.update(moved.clone()), CacheUpdate::Inserted { evicted: 1 });
        assert_eq!(cache.update(right), CacheUpdate::Stale);
        assert_eq!(cache.get(2), Some(&moved));

        // Equal epoch, different content: replaced.
        let mut odd = moved.clone();
        odd.replicas = voters(&[7]);
        assert_eq!(cache.update(odd.clone()), CacheUpdate::Inserted { evicted: 1 });
        assert_eq!(cache.get(2), Some(&odd));

        let mut invalid = left.clone();
        invalid.replicas.clear();
        assert_eq!(cache.update(invalid), CacheUpdate::Invalid);
        assert_eq!(cache.invalidate(1), Some(left));
        assert_eq!(cache.invalidate(1), None);
        assert_eq!(cache.lookup(&data_key(5, 3, b"a", 0, b"")), None);
    }

    #[test]
    fn capacity_is_bounded() {
        let mut map = ShardMap::new();
        let mut cache = RouteCache::new(2);
        for (id, tenant) in [(1, 5), (2, 6), (3, 7)] {
            let d = map.create_tenant_shard(id, tenant, voters(&[1])).expect("created");
            cache.update(d);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.iter().map(|d| d.id).collect::<Vec<_>>(), vec![2, 3]);
        let mut one = RouteCache::new(0);
        assert_eq!(one.update(map.get(1).expect("1").clone()), CacheUpdate::Inserted { evicted: 0 });
        assert_eq!(one.update(map.get(2).expect("2").clone()), CacheUpdate::Inserted { evicted: 1 });
        assert_eq!(one.iter().map(|d| d.id).collect::<Vec<_>>(), vec![2]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Split(Vec<u8>),
        Merge(Vec<u8>),
        Move(Vec<u8>, u64),
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        (prop::sample::select(vec![5u32, 6]), 0u32..2, prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', 0xff]), 0..3))
            .prop_map(|(t, tb, row)| data_key(t, tb, &row, 0, b""))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => key().prop_map(Op::Split),
            2 => key().prop_map(Op::Merge),
            1 => (key(), 1u64..5).prop_map(|(k, n)| Op::Move(k, n)),
        ]
    }

    proptest! {
        #[test]
        fn the_cache_converges_to_the_map(
            ops in prop::collection::vec(op(), 0..40),
            order in any::<prop::sample::Index>(),
            seed in any::<u64>(),
            probes in prop::collection::vec(key(), 12),
        ) {
            // A real history: every state's descriptors.
            let mut map = ShardMap::new();
            let mut seen = Vec::new();
            for (id, tenant) in [(1, 5), (2, 6)] {
                seen.push(map.create_tenant_shard(id, tenant, voters(&[1, 2, 3])).expect("created"));
            }
            let mut next_id = 2;
            for op in &ops {
                match op {
                    Op::Split(near) => {
                        let d = map.lookup(near).expect("covered").clone();
                        if let Some(at) = choose_split_point(&d, near) {
                            next_id += 1;
                            let (l, r) = map.split(d.id, &at, next_id).expect("split");
                            seen.extend([l, r]);
                        }
                    }
                    Op::Merge(near) => {
                        let d = map.lookup(near).expect("covered").clone();
                        if let Some(r) = map.lookup(&d.end).map(|r| r.id) {
                            if let Ok(m) = map.merge(d.id, r) {
                                seen.push(m);
                            }
                        }
                    }
                    Op::Move(near, node) => {
                        let d = map.lookup(near).expect("covered").clone();
                        let mut nodes: Vec<u64> = d.voters().collect();
                        if let Some(i) = nodes.iter().position(|n| n == node) {
                            if nodes.len() > 1 { nodes.remove(i); }
                        } else {
                            nodes.push(*node);
                        }
                        seen.push(map.set_replicas(d.id, voters(&nodes)).expect("set"));
                    }
                }
            }
            // Feed the history in a shuffled order (deterministic from the seed).
            let mut shuffled = seen.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let cut = order.index(shuffled.len() + 1);
            let mut cache = RouteCache::new(1_000);
            for desc in &shuffled[..cut] {
                cache.update(desc.clone());
                for key in &probes {
                    if let Some(d) = cache.lookup(key) {
                        prop_assert!(d.contains(key));
                    }
                }
            }
            prop_assert_eq!(cache.check(), Ok(()));
            // Whatever came before, the final map's descriptors win.
            for desc in map.iter() {
                cache.update(desc.clone());
            }
            prop_assert_eq!(cache.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>());
            for key in &probes {
                prop_assert_eq!(cache.lookup(key), map.lookup(key));
            }
            // Once the newest descriptors are known, no older one displaces them.
            let mut newest_first = RouteCache::new(1_000);
            for desc in map.iter().chain(&shuffled) {
                newest_first.update(desc.clone());
            }
            prop_assert_eq!(newest_first.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn epochs_of_a_history_only_grow_per_key() {
        // The property update relies on, on a fixed history.
        let mut map = ShardMap::new();
        let a = map.create_tenant_shard(1, 5, voters(&[1])).expect("created");
        let (b, c) = map.split(1, &row_prefix(5, 0, b"m"), 2).expect("split");
        let d = map.merge(1, 2).expect("merged");
        for (older, newer) in [(&a, &b), (&a, &c), (&b, &d), (&c, &d)] {
            assert!(older.epoch.is_stale_against(&newer.epoch));
            assert!(!newer.epoch.is_stale_against(&older.epoch));
        }
        assert_eq!(d.epoch, Epoch { conf_ver: 1, version: 3 });
    }
}
