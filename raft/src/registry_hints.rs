//! [`RegistryHints`]: which groups changed since the node's group registry last looked
//! ([`crate::RaftNode::ensure_shard_groups`]), so that a round looks at those groups only,
//! not at every shard of the node and of the map: with ten thousand shards a split must not
//! cost a pass over all of them on every node.
//!
//! The groups' apply names what it changed: a data shard whose range changed (a split, a
//! merge's commit, a snapshot install) names itself and the group its batch created or
//! removed (the split's new sibling, the merge's source); the meta group names the shards
//! whose descriptor it recorded. A change it cannot name (the catalog reloaded from a
//! snapshot) asks for a full round.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::GroupId;

/// Most group ids held until the next round, count: past it the next round looks at every
/// group instead (and the ids are dropped).
pub const HINTED_GROUPS_MAX: usize = 4_096;

/// What the next registry round has to look at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hinted {
    /// Groups (shard ids) whose stored state, range or map descriptor changed.
    pub groups: BTreeSet<GroupId>,
    /// Whether the round must look at every group.
    pub everything: bool,
}

/// Changes told by the groups' apply, taken by the registry; see the module docs.
#[derive(Debug, Default)]
pub struct RegistryHints {
    hinted: Mutex<Hinted>,
    wake: tokio::sync::Notify,
}

impl RegistryHints {
    /// Groups `ids` changed.
    pub fn groups(&self, ids: impl IntoIterator<Item = GroupId>) {
        {
            let mut h = self.hinted.lock().expect("registry hints lock poisoned");
            if !h.everything {
                h.groups.extend(ids);
                if h.groups.len() > HINTED_GROUPS_MAX {
                    h.groups.clear();
                    h.everything = true;
                }
            }
        }
        self.wake.notify_one();
    }

    /// Something changed that no list of groups describes.
    pub fn everything(&self) {
        {
            let mut h = self.hinted.lock().expect("registry hints lock poisoned");
            h.groups.clear();
            h.everything = true;
        }
        self.wake.notify_one();
    }

    /// Everything hinted since the last call.
    pub fn take(&self) -> Hinted {
        std::mem::take(&mut *self.hinted.lock().expect("registry hints lock poisoned"))
    }

    /// Waits for a hint given after the last wait returned (or one given before it started
    /// and not waited for yet).
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_collect_until_taken_and_overflow_into_everything() {
        let h = RegistryHints::default();
        h.groups([3, 1]);
        h.groups([3]);
        assert_eq!(h.take(), Hinted { groups: [1, 3].into(), everything: false });
        assert_eq!(h.take(), Hinted::default());
        h.groups(0..HINTED_GROUPS_MAX as u64 + 1);
        assert_eq!(h.take(), Hinted { groups: BTreeSet::new(), everything: true });
        h.everything();
        h.groups([7]);
        assert_eq!(h.take(), Hinted { groups: BTreeSet::new(), everything: true });
    }

    #[tokio::test]
    async fn a_hint_given_before_the_wait_is_not_missed() {
        let h = RegistryHints::default();
        h.groups([5]);
        tokio::time::timeout(std::time::Duration::from_secs(5), h.changed()).await.expect("woken by the earlier hint");
    }
}
