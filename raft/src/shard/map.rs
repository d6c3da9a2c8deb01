//! [`ShardMap`]: every data shard's descriptor, by range and by id. The meta group holds the
//! authoritative map and changes it only through the mutations here, which its apply calls;
//! every node caches a copy.

use std::collections::BTreeMap;
use std::ops::Bound;

use kho_engine::keys::TenantId;

use crate::shard::boundary::printable_key;
use crate::shard::desc::{tenant_range, Epoch, Replica, ShardDesc, ShardId, META_SHARD};
use crate::shard::error::ShardError;
use crate::shard::split::is_valid_split_point;

/// Most descriptors one split report records, count ([`ShardMap::record_split`]).
pub const SPLIT_REPORT_PIECES_MAX: usize = 1_024;

/// The data shards of the cluster: descriptors keyed by range start, and an index by id.
///
/// **Invariants** ([`ShardMap::check_invariants`]; after every mutation, in every build,
/// [`ShardMap::check_around`] checks them where the map changed, and panics if broken):
/// ranges never overlap; every tenant that has shards is covered exactly, without
/// gap, from the start to the end of its [`tenant_range`]; ids are unique and none is
/// [`META_SHARD`]; every descriptor validates ([`ShardDesc::validate`]). A mutation that
/// would break one is refused with a [`ShardError`] and changes nothing.
///
/// Memory: one descriptor (about 105 bytes encoded for 3 replicas and 20-byte keys, a few
/// hundred with the map's overhead) per shard; the map is meant to be loaded from the meta
/// group's store, not rebuilt from history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    /// Every descriptor, by `start`.
    by_start: BTreeMap<Vec<u8>, ShardDesc>,
    /// The `start` of every shard, by id.
    start_by_id: BTreeMap<ShardId, Vec<u8>>,
}

impl ShardMap {
    /// An empty map.
    pub fn new() -> ShardMap {
        ShardMap::default()
    }

    /// A map of the given descriptors (a stored map being loaded). Refused with
    /// [`ShardError::BrokenMap`] if they break an invariant.
    pub fn from_descs(descs: impl IntoIterator<Item = ShardDesc>) -> Result<ShardMap, ShardError> {
        let mut map = ShardMap::new();
        for desc in descs {
            if map.start_by_id.contains_key(&desc.id) {
                return Err(ShardError::BrokenMap(format!("shard id {} appears twice", desc.id)));
            }
            if let Some(other) = map.by_start.get(&desc.start) {
                return Err(ShardError::BrokenMap(format!(
                    "shards {} and {} both start at {}",
                    other.id,
                    desc.id,
                    printable_key(&desc.start)
                )));
            }
            map.insert(desc);
        }
        map.check_invariants().map_err(ShardError::BrokenMap)?;
        Ok(map)
    }

    /// The number of shards.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether the map has no shard.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// Every shard, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &ShardDesc> {
        self.by_start.values()
    }

    /// The shard with this id.
    pub fn get(&self, id: ShardId) -> Option<&ShardDesc> {
        let start = self.start_by_id.get(&id)?;
        self.by_start.get(start)
    }

    /// The shard whose range contains `key`; None if no shard does (the key's tenant has no
    /// shards, or the key is no tenant's).
    pub fn lookup(&self, key: &[u8]) -> Option<&ShardDesc> {
        lookup_in(&self.by_start, key)
    }

    /// The shards of tenant `tenant`, in key order.
    pub fn shards_of_tenant(&self, tenant: TenantId) -> impl Iterator<Item = &ShardDesc> {
        let range = tenant_range(tenant);
        let (start, end) = match &range {
            Some((start, end)) => (start.as_slice(), end.as_slice()),
            None => (&[][..], &[][..]),
        };
        intersecting(&self.by_start, start, end)
    }

    /// The shards whose ranges intersect `[start, end)`, in key order (what a scan of that
    /// range visits). Empty if `start >= end`.
    pub fn covering(&self, start: &[u8], end: &[u8]) -> Vec<&ShardDesc> {
        intersecting(&self.by_start, start, end).collect()
    }

    /// Creates tenant `tenant`'s first shard, `id`, covering its whole [`tenant_range`], with
    /// epoch [`Epoch::INITIAL`]. Refused if the tenant has shards or the id is in use.
    ///
    /// Tenant ids must never be reused after [`ShardMap::remove_tenant`]: route caches compare
    /// epochs, and a new tenant's epoch starts again at 1.
    pub fn create_tenant_shard(&mut self, id: ShardId, tenant: TenantId, replicas: Vec<Replica>) -> Result<ShardDesc, ShardError> {
        self.check_new_id(id)?;
        let Some((start, end)) = tenant_range(tenant) else {
            return Err(ShardError::InvalidDescriptor { id, reason: format!("tenant {tenant} has no finite key range") });
        };
        if self.shards_of_tenant(tenant).next().is_some() {
            return Err(ShardError::TenantExists(tenant));
        }
        let desc = ShardDesc { id, tenant, start, end, replicas, epoch: Epoch::INITIAL };
        desc.validate().map_err(|reason| ShardError::InvalidDescriptor { id, reason })?;
        self.insert(desc.clone());
        self.assert_around(&desc.start, &desc.end);
        Ok(desc)
    }

    /// Splits shard `id` at `at` ([`is_valid_split_point`]): the left side `[start, at)` keeps
    /// the id, the right side `[at, end)` gets `new_id`; both keep the replicas and
    /// `conf_ver` and get `version + 1`. Returns (left, right).
    pub fn split(&mut self, id: ShardId, at: &[u8], new_id: ShardId) -> Result<(ShardDesc, ShardDesc), ShardError> {
        let parent = self.get(id).ok_or(ShardError::UnknownShard(id))?;
        self.check_new_id(new_id)?;
        is_valid_split_point(parent, at).map_err(|reason| ShardError::BadSplitPoint { id, at: printable_key(at), reason })?;
        let version = parent.epoch.version.checked_add(1).ok_or(ShardError::EpochExhausted(id))?;
        let epoch = Epoch { conf_ver: parent.epoch.conf_ver, version };
        let left = ShardDesc { end: at.to_vec(), epoch, ..parent.clone() };
        let right = ShardDesc { id: new_id, start: at.to_vec(), epoch, ..parent.clone() };
        assert!(left.validate().is_ok() && right.validate().is_ok(), "split sides invalid");
        assert!(left.end == right.start && parent.start == left.start && parent.end == right.end);
        self.insert(left.clone());
        self.insert(right.clone());
        self.assert_around(&left.start, &right.end);
        Ok((left, right))
    }

    /// Records splits of shard `pieces[0].id` as its replicas report them (after the split
    /// applied in the shard's own log; [`Command::RecordSplit`](crate::Command::RecordSplit)):
    /// `pieces` are the descriptors that now tile the map's range of that shard, in key
    /// order: the first keeps the id and the start, each next one starts where the one
    /// before ends, the last ends where the map's shard does; every other id is new to the
    /// map, and every piece's `version` is above the map's. One split reports two pieces;
    /// a map that missed several reports gets them as more. Each cut is a [`ShardMap::split`]
    /// (a valid split point), then each piece is recorded as reported (its epoch and
    /// replicas). Returns false, changing nothing, when the map's shard is already at that
    /// version or newer (a report repeated or overtaken).
    pub fn record_split(&mut self, pieces: &[ShardDesc]) -> Result<bool, ShardError> {
        let Some(current) = self.plan_split(pieces)? else { return Ok(false) };
        self.remove(current.id);
        for p in pieces {
            self.insert(p.clone());
        }
        self.assert_around(&current.start, &current.end);
        Ok(true)
    }

    /// Whether [`ShardMap::record_split`] would record `pieces` (true), ignore them (false)
    /// or refuse them; changes nothing. Time: logarithmic in the map's size, linear in the
    /// pieces.
    pub fn check_split(&self, pieces: &[ShardDesc]) -> Result<bool, ShardError> {
        Ok(self.plan_split(pieces)?.is_some())
    }

    /// The map's shard that `pieces` (a split report) replace; None for a report repeated
    /// or overtaken. Every cut is checked as [`ShardMap::split`] checks it.
    fn plan_split(&self, pieces: &[ShardDesc]) -> Result<Option<ShardDesc>, ShardError> {
        let Some(first) = pieces.first() else {
            return Err(ShardError::InvalidDescriptor { id: 0, reason: "a split report with no descriptor".into() });
        };
        let id = first.id;
        let current = self.get(id).ok_or(ShardError::UnknownShard(id))?.clone();
        if first.epoch.version <= current.epoch.version {
            return Ok(None);
        }
        let refuse = |reason: String| Err(ShardError::InvalidDescriptor { id, reason });
        if pieces.len() < 2 || pieces.len() > SPLIT_REPORT_PIECES_MAX {
            return refuse(format!("a split report has {} pieces; 2 to {SPLIT_REPORT_PIECES_MAX}", pieces.len()));
        }
        if first.start != current.start || pieces.last().map(|p| &p.end) != Some(&current.end) {
            return refuse(format!(
                "the pieces span [{}, {}), the map's shard [{}, {})",
                printable_key(&first.start),
                printable_key(&pieces.last().expect("two pieces").end),
                printable_key(&current.start),
                printable_key(&current.end)
            ));
        }
        for (i, p) in pieces.iter().enumerate() {
            p.validate().map_err(|reason| ShardError::InvalidDescriptor { id: p.id, reason })?;
            if p.tenant != current.tenant || p.epoch.version <= current.epoch.version {
                return refuse(format!("piece {} (shard {}) is of another tenant or not newer than the map's shard", i, p.id));
            }
            if i > 0 && (pieces[i - 1].end != p.start || pieces[..i].iter().any(|q| q.id == p.id)) {
                return refuse(format!("piece {i} (shard {}) does not follow piece {} or repeats an id", p.id, i - 1));
            }
        }
        // Each cut as `split` checks it: a new id, a valid point of what is left to cut.
        for pair in pieces.windows(2) {
            let (left, right) = (&pair[0], &pair[1]);
            self.check_new_id(right.id)?;
            let rest = ShardDesc { start: left.start.clone(), ..current.clone() };
            is_valid_split_point(&rest, &right.start).map_err(|reason| ShardError::BadSplitPoint {
                id: left.id,
                at: printable_key(&right.start),
                reason,
            })?;
        }
        Ok(Some(current))
    }

    /// Records `pieces`, contiguous descriptors of one tenant, as the shards of their range
    /// `[pieces[0].start, last.end)` (a merge's report: the merged shard; or any tiling a
    /// replica knows): the map's shards in that range are replaced, provided they tile the
    /// same range and every piece is newer (a higher `version`) than each map shard it
    /// overlaps and differs from. Returns false, changing nothing, for an older or repeated
    /// report; an error for a malformed one.
    pub fn record_tiling(&mut self, pieces: &[ShardDesc]) -> Result<bool, ShardError> {
        let Some(replaced) = self.plan_tiling(pieces)? else { return Ok(false) };
        for id in replaced {
            self.remove(id);
        }
        for p in pieces {
            self.insert(p.clone());
        }
        self.assert_around(&pieces[0].start, &pieces[pieces.len() - 1].end);
        Ok(true)
    }

    /// Whether [`ShardMap::record_tiling`] would record `pieces` (true), ignore them (false)
    /// or refuse them; changes nothing. Time: logarithmic in the map's size, linear in the
    /// shards of the range.
    pub fn check_tiling(&self, pieces: &[ShardDesc]) -> Result<bool, ShardError> {
        Ok(self.plan_tiling(pieces)?.is_some())
    }

    /// The ids of the map's shards that `pieces` replace; None for an older or repeated
    /// report, or one the map cannot place yet.
    fn plan_tiling(&self, pieces: &[ShardDesc]) -> Result<Option<Vec<ShardId>>, ShardError> {
        let Some(first) = pieces.first() else {
            return Err(ShardError::InvalidDescriptor { id: 0, reason: "a report with no descriptor".into() });
        };
        let refuse = |id: ShardId, reason: String| Err(ShardError::InvalidDescriptor { id, reason });
        if pieces.len() > SPLIT_REPORT_PIECES_MAX {
            return refuse(first.id, format!("a report has {} pieces; at most {SPLIT_REPORT_PIECES_MAX}", pieces.len()));
        }
        for (i, p) in pieces.iter().enumerate() {
            p.validate().map_err(|reason| ShardError::InvalidDescriptor { id: p.id, reason })?;
            if p.tenant != first.tenant || (i > 0 && pieces[i - 1].end != p.start) || pieces[..i].iter().any(|q| q.id == p.id) {
                return refuse(p.id, format!("piece {i} is of another tenant, does not follow piece {}, or repeats an id", i.max(1) - 1));
            }
        }
        let (start, end) = (&first.start, &pieces.last().expect("one piece").end);
        let current = self.covering(start, end);
        let tiles = current.first().is_some_and(|c| &c.start == start) && current.last().is_some_and(|c| &c.end == end);
        if !tiles {
            // The map cuts the range elsewhere (a split of a neighbour not reported yet):
            // a later report, once the map caught up, applies.
            return Ok(None);
        }
        let mut changed = false;
        for p in pieces {
            for c in current.iter().filter(|c| c.start < p.end && p.start < c.end) {
                if *c == p {
                    continue;
                }
                if p.epoch.version <= c.epoch.version {
                    return Ok(None);
                }
                changed = true;
            }
        }
        if !changed {
            return Ok(None);
        }
        for p in pieces {
            if let Some(other) = self.get(p.id).filter(|other| !current.iter().any(|c| c.id == other.id)) {
                return refuse(p.id, format!("shard {} is in the map elsewhere, at {}", p.id, printable_key(&other.start)));
            }
        }
        Ok(Some(current.iter().map(|c| c.id).collect()))
    }

    /// Merges shard `right_id` into shard `left_id`: they must be adjacent (left's end is
    /// right's start), of the same tenant, with the same replica set (nodes and roles), so
    /// no data moves. The result keeps the left id, spans both ranges, and has version
    /// `max(left, right) + 1` and the larger `conf_ver`.
    pub fn merge(&mut self, left_id: ShardId, right_id: ShardId) -> Result<ShardDesc, ShardError> {
        let left = self.get(left_id).ok_or(ShardError::UnknownShard(left_id))?;
        let right = self.get(right_id).ok_or(ShardError::UnknownShard(right_id))?;
        let refuse = |reason: String| ShardError::NotMergeable { left: left_id, right: right_id, reason };
        if left.tenant != right.tenant {
            return Err(refuse(format!("they belong to tenants {} and {}", left.tenant, right.tenant)));
        }
        if left.end != right.start {
            return Err(refuse(format!(
                "not adjacent: the left one ends at {}, the right one starts at {}",
                printable_key(&left.end),
                printable_key(&right.start)
            )));
        }
        if !left.same_replica_set(right) {
            return Err(refuse("their replicas differ".to_owned()));
        }
        let version = left.epoch.version.max(right.epoch.version).checked_add(1).ok_or(ShardError::EpochExhausted(left_id))?;
        let epoch = Epoch { conf_ver: left.epoch.conf_ver.max(right.epoch.conf_ver), version };
        let merged = ShardDesc { end: right.end.clone(), epoch, ..left.clone() };
        assert!(merged.validate().is_ok(), "merged shard invalid");
        let removed = self.remove(right_id);
        assert!(removed.is_some(), "right shard vanished");
        self.insert(merged.clone());
        self.assert_around(&merged.start, &merged.end);
        Ok(merged)
    }

    /// Replaces shard `id`'s replicas (a replica added, removed or promoted) and raises its
    /// `conf_ver` by one.
    pub fn set_replicas(&mut self, id: ShardId, replicas: Vec<Replica>) -> Result<ShardDesc, ShardError> {
        let current = self.get(id).ok_or(ShardError::UnknownShard(id))?;
        let conf_ver = current.epoch.conf_ver.checked_add(1).ok_or(ShardError::EpochExhausted(id))?;
        let desc = ShardDesc { replicas, epoch: Epoch { conf_ver, version: current.epoch.version }, ..current.clone() };
        desc.validate().map_err(|reason| ShardError::InvalidDescriptor { id, reason })?;
        self.insert(desc.clone());
        self.assert_around(&desc.start, &desc.end);
        Ok(desc)
    }

    /// Records `desc` as reported by its shard's leader after a replica change: same id,
    /// tenant and range as the map's, and a newer `conf_ver` (an older or equal report is
    /// ignored: returns false).
    pub fn record_report(&mut self, desc: ShardDesc) -> Result<bool, ShardError> {
        if !self.check_report(&desc)? {
            return Ok(false);
        }
        let (start, end) = (desc.start.clone(), desc.end.clone());
        self.insert(desc);
        self.assert_around(&start, &end);
        Ok(true)
    }

    /// Whether [`ShardMap::record_report`] would record `desc` (true), ignore it (false) or
    /// refuse it; changes nothing.
    pub fn check_report(&self, desc: &ShardDesc) -> Result<bool, ShardError> {
        let id = desc.id;
        let current = self.get(id).ok_or(ShardError::UnknownShard(id))?;
        if (current.tenant, &current.start, &current.end, current.epoch.version)
            != (desc.tenant, &desc.start, &desc.end, desc.epoch.version)
        {
            return Err(ShardError::InvalidDescriptor { id, reason: "a report changed the range or its version".into() });
        }
        if desc.epoch.conf_ver <= current.epoch.conf_ver {
            return Ok(false);
        }
        desc.validate().map_err(|reason| ShardError::InvalidDescriptor { id, reason })?;
        Ok(true)
    }

    /// Removes every shard of tenant `tenant` (the tenant was dropped) and returns them in
    /// key order; empty if it had none.
    pub fn remove_tenant(&mut self, tenant: TenantId) -> Vec<ShardDesc> {
        let ids: Vec<ShardId> = self.shards_of_tenant(tenant).map(|d| d.id).collect();
        let removed: Vec<ShardDesc> = ids.into_iter().map(|id| self.remove(id).expect("a listed shard is in the map")).collect();
        assert!(self.shards_of_tenant(tenant).next().is_none(), "tenant still has shards");
        if let Some((start, end)) = tenant_range(tenant) {
            self.assert_around(&start, &end);
        }
        removed
    }

    /// Checks every invariant of the map (see [`ShardMap`]); the error names the first
    /// broken one and the shards involved. Takes time linear in the number of shards.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.start_by_id.len() != self.by_start.len() {
            return Err(format!("{} ids index {} shards", self.start_by_id.len(), self.by_start.len()));
        }
        let mut previous: Option<&ShardDesc> = None;
        for (start, desc) in &self.by_start {
            if *start != desc.start {
                return Err(format!("shard {} is filed under {}", desc.id, printable_key(start)));
            }
            if desc.id == META_SHARD {
                return Err("the meta group is in the map".to_owned());
            }
            desc.validate().map_err(|reason| format!("shard {}: {reason}", desc.id))?;
            match previous {
                Some(prev) => check_neighbours(prev, desc)?,
                None => check_starts_tenant(desc)?,
            }
            previous = Some(desc);
        }
        if let Some(prev) = previous {
            check_tenant_ends(prev)?;
        }
        for (id, start) in &self.start_by_id {
            match self.by_start.get(start) {
                Some(desc) if desc.id == *id => {}
                _ => return Err(format!("the id index of shard {id} is wrong")),
            }
        }
        Ok(())
    }

    /// Refuses `id` as the id of a new shard: the meta group's, or one in use.
    fn check_new_id(&self, id: ShardId) -> Result<(), ShardError> {
        if id == META_SHARD {
            return Err(ShardError::InvalidDescriptor { id, reason: format!("shard id {META_SHARD} is the meta group's") });
        }
        if self.start_by_id.contains_key(&id) {
            return Err(ShardError::IdInUse(id));
        }
        Ok(())
    }

    /// Files `desc`, replacing the descriptor with its id. A shard's start never changes
    /// (the left side of a split or merge keeps the id), so both indexes stay in step.
    fn insert(&mut self, desc: ShardDesc) {
        let id = desc.id;
        let old_start = self.start_by_id.insert(id, desc.start.clone());
        assert!(old_start.is_none_or(|start| start == desc.start), "shard {id} changed its start");
        let replaced = self.by_start.insert(desc.start.clone(), desc);
        assert!(replaced.is_none_or(|old| old.id == id), "shard {id} replaced another shard");
    }

    /// Removes shard `id` from both indexes.
    fn remove(&mut self, id: ShardId) -> Option<ShardDesc> {
        let start = self.start_by_id.remove(&id)?;
        self.by_start.remove(&start)
    }

    /// Checks the invariants of [`ShardMap`] where a mutation changed the map: the shards
    /// that start inside `[start, end)` and the two on each side, their order, the tenant
    /// ends among them, and their id index. Time: logarithmic in the map's size, linear in
    /// the shards of the range (so every mutation can afford it, in every build).
    pub fn check_around(&self, start: &[u8], end: &[u8]) -> Result<(), String> {
        if self.start_by_id.len() != self.by_start.len() {
            return Err(format!("{} ids index {} shards", self.start_by_id.len(), self.by_start.len()));
        }
        let before: Vec<&ShardDesc> =
            self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(start))).rev().take(2).map(|(_, d)| d).collect();
        let inside = (start < end)
            .then(|| self.by_start.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))))
            .into_iter()
            .flatten()
            .map(|(_, d)| d);
        let after: Vec<&ShardDesc> =
            self.by_start.range::<[u8], _>((Bound::Included(end), Bound::Unbounded)).take(2).map(|(_, d)| d).collect();
        let window: Vec<&ShardDesc> = before.iter().rev().copied().chain(inside).chain(after.iter().copied()).collect();
        for desc in &window {
            if desc.id == META_SHARD {
                return Err("the meta group is in the map".to_owned());
            }
            desc.validate().map_err(|reason| format!("shard {}: {reason}", desc.id))?;
            if self.start_by_id.get(&desc.id) != Some(&desc.start) || self.by_start.get(&desc.start).map(|d| d.id) != Some(desc.id) {
                return Err(format!("shard {} is filed under another start, or its id index is wrong", desc.id));
            }
        }
        for pair in window.windows(2) {
            check_neighbours(pair[0], pair[1])?;
        }
        // The window's ends, when nothing lies beyond them.
        if let (true, Some(first)) = (before.len() < 2, window.first()) {
            check_starts_tenant(first)?;
        }
        if let (true, Some(last)) = (after.len() < 2, window.last()) {
            check_tenant_ends(last)?;
        }
        Ok(())
    }

    /// [`ShardMap::check_around`], panicking: the mutation that just ran checked its input,
    /// so a broken invariant here is a bug, and serving a broken map would route writes to
    /// the wrong shard.
    fn assert_around(&self, start: &[u8], end: &[u8]) {
        if let Err(broken) = self.check_around(start, end) {
            panic!("shard map invariant broken: {broken}");
        }
    }
}

/// Whether `prev` and `desc`, next to each other in key order, meet: end to start within
/// one tenant; else `prev` ends its tenant and `desc` starts its own.
fn check_neighbours(prev: &ShardDesc, desc: &ShardDesc) -> Result<(), String> {
    if prev.tenant != desc.tenant {
        check_tenant_ends(prev)?;
        return check_starts_tenant(desc);
    }
    if prev.end != desc.start {
        return Err(format!(
            "shards {} and {} of tenant {} {}: {} then {}",
            prev.id,
            desc.id,
            desc.tenant,
            if prev.end > desc.start { "overlap" } else { "leave a gap" },
            printable_key(&prev.end),
            printable_key(&desc.start)
        ));
    }
    Ok(())
}

/// Whether `desc`, the first shard of its tenant in key order, starts where the tenant does.
fn check_starts_tenant(desc: &ShardDesc) -> Result<(), String> {
    let (tenant_start, _) = tenant_range(desc.tenant).expect("validated tenant");
    if desc.start != tenant_start {
        return Err(format!(
            "tenant {}'s first shard {} starts at {}, not at its range's start",
            desc.tenant,
            desc.id,
            printable_key(&desc.start)
        ));
    }
    Ok(())
}

/// Whether `last`, the last shard of its tenant in key order, ends where the tenant does.
fn check_tenant_ends(last: &ShardDesc) -> Result<(), String> {
    let (_, tenant_end) = tenant_range(last.tenant).expect("validated tenant");
    if last.end != tenant_end {
        return Err(format!(
            "tenant {}'s last shard {} ends at {}, not at its range's end {}",
            last.tenant,
            last.id,
            printable_key(&last.end),
            printable_key(&tenant_end)
        ));
    }
    Ok(())
}

/// The descriptor of `by_start` (non-overlapping ranges) whose range contains `key`.
pub(crate) fn lookup_in<'a>(by_start: &'a BTreeMap<Vec<u8>, ShardDesc>, key: &[u8]) -> Option<&'a ShardDesc> {
    let (_, desc) = by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
    desc.contains(key).then_some(desc)
}

/// The descriptors of `by_start` (non-overlapping ranges) that intersect `[start, end)`, in
/// key order.
pub(crate) fn intersecting<'a>(
    by_start: &'a BTreeMap<Vec<u8>, ShardDesc>,
    start: &[u8],
    end: &[u8],
) -> impl Iterator<Item = &'a ShardDesc> {
    let nonempty = start < end;
    // The one range starting at or before `start` that may reach into it, then every range
    // starting inside.
    let first = by_start
        .range::<[u8], _>((Bound::Unbounded, Bound::Included(start)))
        .next_back()
        .map(|(_, desc)| desc)
        .filter(|desc| nonempty && desc.intersects(start, end));
    let rest = nonempty
        .then(|| by_start.range::<[u8], _>((Bound::Excluded(start), Bound::Excluded(end))))
        .into_iter()
        .flatten()
        .map(|(_, desc)| desc);
    first.into_iter().chain(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::desc::ReplicaRole;
    use crate::shard::split::choose_split_point;
    use kho_engine::keys::{data_key, row_prefix, table_prefix};
    use proptest::prelude::*;

    fn voters(nodes: &[u64]) -> Vec<Replica> {
        nodes.iter().copied().map(Replica::voter).collect()
    }

    fn two_tenants() -> ShardMap {
        let mut map = ShardMap::new();
        map.create_tenant_shard(1, 5, voters(&[1, 2, 3])).expect("created");
        map.create_tenant_shard(2, 7, voters(&[1, 2, 3])).expect("created");
        map
    }

    #[test]
    fn create_lookup_and_cover() {
        let mut map = two_tenants();
        assert_eq!(map.len(), 2);
        let d = map.get(1).expect("shard 1");
        assert_eq!((d.start.as_slice(), d.end.as_slice()), (&[0, 0, 0, 5][..], &[0, 0, 0, 6][..]));
        assert_eq!(d.epoch, Epoch::INITIAL);
        assert_eq!(map.lookup(&data_key(5, 3, b"r", 1, b"")).map(|d| d.id), Some(1));
        assert_eq!(map.lookup(&data_key(7, 0, b"", 0, b"")).map(|d| d.id), Some(2));
        assert_eq!(map.lookup(&data_key(6, 3, b"r", 1, b"")), None);
        assert_eq!(map.lookup(&[0, 0, 0, 8]), None);
        assert_eq!(map.lookup(&[]), None);
        let ids = |shards: Vec<&ShardDesc>| shards.iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(map.covering(&[0, 0, 0, 5, 9], &[0, 0, 0, 7, 1])), vec![1, 2]);
        assert_eq!(ids(map.covering(&[0, 0, 0, 6], &[0, 0, 0, 7])), Vec::<u64>::new());
        assert_eq!(ids(map.covering(&[0, 0, 0, 7], &[0, 0, 0, 5])), Vec::<u64>::new());
        assert_eq!(ids(map.covering(&[], &[0xff])), vec![1, 2]);

        assert_eq!(map.create_tenant_shard(3, 5, voters(&[1])), Err(ShardError::TenantExists(5)));
        assert_eq!(map.create_tenant_shard(2, 9, voters(&[1])), Err(ShardError::IdInUse(2)));
        assert!(matches!(map.create_tenant_shard(0, 9, voters(&[1])), Err(ShardError::InvalidDescriptor { id: 0, .. })));
        assert!(matches!(map.create_tenant_shard(3, 0, voters(&[1])), Err(ShardError::InvalidDescriptor { .. })));
        assert!(matches!(map.create_tenant_shard(3, u32::MAX, voters(&[1])), Err(ShardError::InvalidDescriptor { .. })));
        assert!(matches!(map.create_tenant_shard(3, 9, vec![]), Err(ShardError::InvalidDescriptor { .. })));
        assert_eq!(map.len(), 2);
    }

    /// Split reports: one split is two pieces; a map that missed a report gets a later one
    /// as more pieces; a repeated or overtaken report changes nothing; a report that does
    /// not tile the map's shard, reuses an id or is not newer is refused and changes nothing.
    #[test]
    fn split_reports_are_recorded_once_in_any_order() {
        let mut map = two_tenants();
        let at = |r: &[u8]| row_prefix(5, 3, r);
        let epoch = |version| Epoch { conf_ver: 1, version };
        let piece = |id, start: Vec<u8>, end: Vec<u8>, version| ShardDesc {
            id,
            tenant: 5,
            start,
            end,
            replicas: voters(&[1, 2, 3]),
            epoch: epoch(version),
        };
        let (t5, t6) = (vec![0, 0, 0, 5], vec![0, 0, 0, 6]);
        // Shard 1 split at "m" (into 10), then 1 at "f" (into 11), then 10 at "t" (into 12).
        let first = [piece(1, t5.clone(), at(b"m"), 2), piece(10, at(b"m"), t6.clone(), 2)];
        assert_eq!(map.record_split(&first), Ok(true));
        assert_eq!(map.record_split(&first), Ok(false), "a repeated report");
        assert_eq!(map.get(10).map(|d| d.epoch), Some(epoch(2)));
        // The map missed 1's second split but hears of 10's: recorded on its own.
        let third = [piece(10, at(b"m"), at(b"t"), 3), piece(12, at(b"t"), t6.clone(), 3)];
        assert_eq!(map.record_split(&third), Ok(true));
        // Shard 1's leader reports its second split.
        let second = [piece(1, t5.clone(), at(b"f"), 3), piece(11, at(b"f"), at(b"m"), 3)];
        let before = map.clone();
        for bad in [
            vec![second[0].clone()],
            vec![second[0].clone(), piece(11, at(b"g"), at(b"m"), 3)],
            vec![second[0].clone(), piece(11, at(b"f"), at(b"n"), 3)],
            vec![second[0].clone(), piece(12, at(b"f"), at(b"m"), 3)],
            vec![second[0].clone(), piece(1, at(b"f"), at(b"m"), 3)],
            vec![piece(1, t5.clone(), at(b"f"), 3), piece(11, at(b"f"), at(b"m"), 2)],
            vec![piece(7, t5.clone(), at(b"f"), 3), piece(11, at(b"f"), at(b"m"), 3)],
            vec![piece(1, t5.clone(), data_key(5, 3, b"f", 1, b""), 3), piece(11, data_key(5, 3, b"f", 1, b""), at(b"m"), 3)],
        ] {
            assert!(map.record_split(&bad).is_err(), "{bad:?}");
            assert_eq!(map, before, "a refused report changed the map");
        }
        assert_eq!(map.record_split(&second), Ok(true));
        assert_eq!(map.shards_of_tenant(5).map(|d| d.id).collect::<Vec<_>>(), vec![1, 11, 10, 12]);
        // A map that missed both of 1's splits: one report of three pieces.
        let mut behind = two_tenants();
        let both = [piece(1, t5.clone(), at(b"f"), 3), piece(11, at(b"f"), at(b"m"), 3), piece(10, at(b"m"), t6.clone(), 2)];
        assert_eq!(behind.record_split(&both), Ok(true));
        assert_eq!(behind.shards_of_tenant(5).map(|d| (d.id, d.epoch.version)).collect::<Vec<_>>(), vec![(1, 3), (11, 3), (10, 2)]);
        assert_eq!(behind.record_split(&first), Ok(false), "an overtaken report");
        assert!(behind.check_invariants().is_ok());
    }

    /// Merge reports: the merged shard replaces the pieces it covers when newer than each;
    /// a repeated or stale report, or one the map does not tile alike, changes nothing.
    #[test]
    fn merge_reports_replace_the_shards_they_cover() {
        let mut map = two_tenants();
        let at = |r: &[u8]| row_prefix(5, 3, r);
        let piece = |id, start: Vec<u8>, end: Vec<u8>, version| ShardDesc {
            id,
            tenant: 5,
            start,
            end,
            replicas: voters(&[1, 2, 3]),
            epoch: Epoch { conf_ver: 1, version },
        };
        let (t5, t6) = (vec![0, 0, 0, 5], vec![0, 0, 0, 6]);
        let split = [piece(1, t5.clone(), at(b"f"), 2), piece(10, at(b"f"), at(b"m"), 3), piece(11, at(b"m"), t6.clone(), 3)];
        assert_eq!(map.record_tiling(&split), Ok(true));
        // 1 and 10 merged (version max(2, 3) + 1).
        let merged = [piece(1, t5.clone(), at(b"m"), 4)];
        let before = map.clone();
        assert_eq!(map.record_tiling(&[piece(1, t5.clone(), at(b"m"), 3)]), Ok(false), "not newer than shard 10");
        assert_eq!(map.record_tiling(&[piece(1, t5.clone(), at(b"g"), 4)]), Ok(false), "the map cuts elsewhere");
        assert_eq!(map, before);
        assert!(map.record_tiling(&[piece(1, t5.clone(), at(b"m"), 4), piece(1, at(b"m"), t6.clone(), 4)]).is_err());
        assert_eq!(map.record_tiling(&merged), Ok(true));
        assert_eq!(map.record_tiling(&merged), Ok(false), "a repeated report");
        assert_eq!(map.shards_of_tenant(5).map(|d| (d.id, d.epoch.version)).collect::<Vec<_>>(), vec![(1, 4), (11, 3)]);
        assert!(map.get(10).is_none());
        // Everything back into one shard.
        assert_eq!(map.record_tiling(&[piece(1, t5.clone(), t6.clone(), 5)]), Ok(true));
        assert_eq!(map.shards_of_tenant(5).count(), 1);
        assert!(map.check_invariants().is_ok());
    }

    #[test]
    fn split_merge_and_replicas() {
        let mut map = two_tenants();
        let at = row_prefix(5, 3, b"m");
        let (left, right) = map.split(1, &at, 10).expect("split");
        assert_eq!((left.id, right.id), (1, 10));
        assert_eq!(left.end, at);
        assert_eq!(right.start, at);
        assert_eq!(left.epoch, Epoch { conf_ver: 1, version: 2 });
        assert_eq!(right.epoch, left.epoch);
        assert_eq!(map.lookup(&data_key(5, 3, b"m", 0, b"")).map(|d| d.id), Some(10));
        assert_eq!(map.lookup(&data_key(5, 3, b"l", 0, b"")).map(|d| d.id), Some(1));
        assert_eq!(map.shards_of_tenant(5).map(|d| d.id).collect::<Vec<_>>(), vec![1, 10]);

        // Refusals change nothing.
        let before = map.clone();
        assert!(matches!(map.split(1, &at, 11), Err(ShardError::BadSplitPoint { .. })));
        assert!(matches!(map.split(1, &data_key(5, 3, b"a", 0, b""), 11), Err(ShardError::BadSplitPoint { .. })));
        assert_eq!(map.split(1, &row_prefix(5, 3, b"a"), 10), Err(ShardError::IdInUse(10)));
        assert_eq!(map.split(4, &row_prefix(5, 3, b"a"), 11), Err(ShardError::UnknownShard(4)));
        assert!(matches!(map.merge(10, 1), Err(ShardError::NotMergeable { .. })));
        assert!(matches!(map.merge(1, 2), Err(ShardError::NotMergeable { .. })));
        assert!(matches!(map.merge(1, 1), Err(ShardError::NotMergeable { .. })));
        assert!(matches!(map.set_replicas(1, voters(&[1, 1])), Err(ShardError::InvalidDescriptor { .. })));
        assert_eq!(map, before);

        // Replicas must match (roles too) for a merge.
        let moved = map.set_replicas(10, vec![Replica::voter(3), Replica::voter(2), Replica::learner(1)]).expect("set");
        assert_eq!(moved.epoch, Epoch { conf_ver: 2, version: 2 });
        let err = map.merge(1, 10).expect_err("replicas differ");
        assert!(err.to_string().contains("their replicas differ"), "{err}");
        map.set_replicas(10, voters(&[3, 2, 1])).expect("set");
        let merged = map.merge(1, 10).expect("merged");
        assert_eq!(merged.epoch, Epoch { conf_ver: 3, version: 3 });
        assert_eq!((merged.start.as_slice(), merged.end.as_slice()), (&[0, 0, 0, 5][..], &[0, 0, 0, 6][..]));
        assert_eq!(map.get(10), None);
        assert_eq!(map.len(), 2);

        assert_eq!(map.remove_tenant(5).len(), 1);
        assert_eq!(map.remove_tenant(5), vec![]);
        assert_eq!(map.lookup(&data_key(5, 3, b"m", 0, b"")), None);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn check_invariants_catches_broken_maps() {
        let mut map = two_tenants();
        map.split(1, &table_prefix(5, 3), 10).expect("split");
        map.split(10, &table_prefix(5, 4), 11).expect("split");
        assert_eq!(map.check_invariants(), Ok(()));
        let good = map.clone();

        // Each corruption goes through the private fields, as a bug would.
        // `in_descs`: the descriptors themselves are broken (not only the indexes), so
        // loading them is refused too.
        let edit = |change: &dyn Fn(&mut ShardMap), reason: &str, in_descs: bool| {
            let mut bad = good.clone();
            change(&mut bad);
            let err = bad.check_invariants().expect_err(reason);
            assert!(err.contains(reason), "{err:?} does not say {reason:?}");
            // The local check, over a window that holds the whole map, catches it too.
            assert!(bad.check_around(b"", &[0xff; 32]).is_err(), "check_around missed: {reason}");
            let loaded = ShardMap::from_descs(bad.by_start.values().cloned());
            if in_descs {
                assert!(matches!(loaded, Err(ShardError::BrokenMap(_))), "{loaded:?}");
            } else {
                assert_eq!(loaded, Ok(good.clone()));
            }
        };
        let set = |map: &mut ShardMap, desc: ShardDesc| {
            map.by_start.insert(desc.start.clone(), desc);
        };
        // A gap: shard 10 shrinks.
        edit(
            &|m| {
                let mut d = m.get(10).unwrap().clone();
                d.end = row_prefix(5, 3, b"z");
                set(m, d)
            },
            "leave a gap",
            true,
        );
        // An overlap: shard 1 grows.
        edit(
            &|m| {
                let mut d = m.get(1).unwrap().clone();
                d.end = row_prefix(5, 3, b"a");
                set(m, d)
            },
            "overlap",
            true,
        );
        // A tenant not covered to its end.
        edit(
            &|m| {
                let mut d = m.get(11).unwrap().clone();
                d.end = table_prefix(5, 9);
                set(m, d)
            },
            "ends at t5/tb9",
            true,
        );
        // A tenant not covered from its start.
        edit(
            &|m| {
                let mut d = m.remove(1).unwrap();
                d.start = table_prefix(5, 1);
                m.start_by_id.insert(1, d.start.clone());
                set(m, d)
            },
            "starts at t5/tb1",
            true,
        );
        // Two shards with one id.
        edit(
            &|m| {
                let mut d = m.get(11).unwrap().clone();
                d.id = 10;
                set(m, d)
            },
            "id",
            true,
        );
        // An invalid descriptor.
        edit(
            &|m| {
                let mut d = m.get(2).unwrap().clone();
                d.replicas.clear();
                set(m, d)
            },
            "no replicas",
            true,
        );
        // A descriptor filed under the wrong start.
        edit(
            &|m| {
                let d = m.get(2).unwrap().clone();
                m.by_start.remove(&d.start);
                m.by_start.insert(vec![0, 0, 0, 7, 0], d);
            },
            "filed under",
            false,
        );
        // The id index out of step.
        edit(
            &|m| {
                m.start_by_id.insert(11, vec![0, 0, 0, 5]);
            },
            "id index",
            false,
        );

        assert_eq!(ShardMap::from_descs(good.iter().cloned()), Ok(good.clone()));
        let twice = good.iter().cloned().chain(good.get(2).cloned());
        assert!(matches!(ShardMap::from_descs(twice), Err(ShardError::BrokenMap(_))));
    }

    /// One step of a random history: split a shard near a key, or merge a shard with its
    /// right neighbour, or move a replica.
    #[derive(Debug, Clone)]
    enum Op {
        Split { near: Vec<u8> },
        Merge { near: Vec<u8> },
        Replicas { near: Vec<u8>, node: u64 },
    }

    fn key_in(tenants: &[TenantId]) -> impl Strategy<Value = Vec<u8>> + Clone {
        (
            prop::sample::select(tenants.to_vec()),
            0u32..3,
            prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 0..4),
            0u16..2,
        )
            .prop_map(|(t, tb, row, f)| data_key(t, tb, &row, f, b""))
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = key_in(&[5, 6, 9]);
        prop_oneof![
            3 => key.clone().prop_map(|near| Op::Split { near }),
            2 => key.clone().prop_map(|near| Op::Merge { near }),
            1 => (key, 1u64..5).prop_map(|(near, node)| Op::Replicas { near, node }),
        ]
    }

    /// Applies `op` to `map` the way the meta group would; refusals must leave it unchanged.
    fn apply(map: &mut ShardMap, op: &Op, next_id: &mut ShardId) {
        let before = map.clone();
        let result = match op {
            Op::Split { near } => {
                let Some(d) = map.lookup(near) else { return };
                let Some(at) = choose_split_point(d, near) else { return };
                let id = d.id;
                *next_id += 1;
                map.split(id, &at, *next_id).map(|_| ())
            }
            Op::Merge { near } => {
                let Some(d) = map.lookup(near) else { return };
                let Some(right) = map.lookup(&d.end) else { return };
                let (left, right) = (d.id, right.id);
                map.merge(left, right).map(|_| ())
            }
            Op::Replicas { near, node } => {
                let Some(d) = map.lookup(near) else { return };
                let mut replicas = d.replicas.clone();
                match replicas.iter().position(|r| r.node == *node) {
                    Some(i) if replicas.len() > 1 => {
                        replicas.remove(i);
                    }
                    Some(i) => replicas[i].role = ReplicaRole::Voter,
                    None => replicas.push(Replica::learner(*node)),
                }
                if !replicas.iter().any(|r| r.role == ReplicaRole::Voter) {
                    replicas[0].role = ReplicaRole::Voter;
                }
                let id = d.id;
                map.set_replicas(id, replicas).map(|_| ())
            }
        };
        if result.is_err() {
            assert_eq!(*map, before, "a refused {op:?} changed the map");
        }
    }

    proptest! {
        #[test]
        fn random_histories_keep_the_invariants(ops in prop::collection::vec(op(), 0..60), probes in prop::collection::vec(key_in(&[4, 5, 6, 7, 9]), 16)) {
            let mut map = ShardMap::new();
            for (id, tenant) in [(1, 5), (2, 6), (3, 9)] {
                map.create_tenant_shard(id, tenant, voters(&[1, 2, 3])).expect("created");
            }
            let mut next_id = 3;
            for op in &ops {
                apply(&mut map, op, &mut next_id);
                prop_assert_eq!(map.check_invariants(), Ok(()));
            }
            for key in &probes {
                let owners: Vec<_> = map.iter().filter(|d| d.contains(key)).map(|d| d.id).collect();
                let tenant = TenantId::from_be_bytes(key[..4].try_into().expect("4 bytes"));
                let expected = usize::from([5, 6, 9].contains(&tenant));
                prop_assert_eq!(owners.len(), expected, "key {} owners {:?}", printable_key(key), owners);
                prop_assert_eq!(map.lookup(key).map(|d| d.id), owners.first().copied());
                let end = [key.clone(), vec![0]].concat();
                prop_assert_eq!(map.covering(key, &end).iter().map(|d| d.id).collect::<Vec<_>>(), owners);
            }
            // The stored form loads back into the same map.
            let loaded = ShardMap::from_descs(map.iter().map(|d| ShardDesc::decode(&d.encode()).expect("decodes")));
            prop_assert_eq!(loaded, Ok(map));
        }

        #[test]
        fn split_then_merge_restores_the_range(
            rows in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5), 1..4),
            table in 0u32..3,
        ) {
            let mut map = two_tenants();
            let original = map.get(1).expect("shard 1").clone();
            let mut at: Vec<Vec<u8>> = rows.iter().map(|r| row_prefix(5, table, r)).collect();
            at.sort();
            at.dedup();
            // Split at every point (right to left, so shard 1 always holds the point), then
            // merge back left to right.
            let mut ids = vec![1];
            for (i, point) in at.iter().rev().enumerate() {
                map.split(1, point, 100 + i as u64).expect("split");
                ids.insert(1, 100 + i as u64);
            }
            prop_assert_eq!(map.shards_of_tenant(5).map(|d| d.id).collect::<Vec<_>>(), ids.clone());
            for &right in &ids[1..] {
                map.merge(1, right).expect("merge");
            }
            let merged = map.get(1).expect("shard 1");
            prop_assert_eq!((&merged.start, &merged.end), (&original.start, &original.end));
            prop_assert_eq!(&merged.replicas, &original.replicas);
            prop_assert!(original.epoch.is_stale_against(&merged.epoch));
            prop_assert_eq!(map.len(), 2);
        }
    }
}
