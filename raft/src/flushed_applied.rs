//! The purge rule as a type: a group's log may be purged only up to its **flushed applied
//! index**, the highest applied log index known to be durable in RocksDB.
//!
//! Applies are written without the WAL (`Engine::write_unlogged`): an applied index is
//! durable only once a flush (atomic across column families) has written it to SST files,
//! and after a crash the state machine rolls back to the last flush and re-applies the log
//! after it. So the log must still hold every entry after the flushed applied index. The
//! state machine records the index when it knows it durable: a snapshot's applied index
//! after the flush that covers the snapshot's view (`build_snapshot`,
//! `get_current_snapshot`), an installed snapshot's index after its synced last batch, the
//! applied index found at open after a flush. The log store checks every purge against it
//! ([`FlushedApplied::check_purge`]): openraft purges only up to a snapshot's index, which
//! one of those recorded first, so a purge past it is a bug and fails loudly.

use std::sync::atomic::{AtomicU64, Ordering};

/// A group's flushed applied index, shared by its state machine (which records it) and its
/// log store (which checks every purge against it). It only grows.
#[derive(Debug, Default)]
pub struct FlushedApplied {
    /// The index plus one; 0: nothing applied is known durable.
    next: AtomicU64,
}

/// A purge that would drop entries the state machine may still need after a crash.
#[derive(Debug, thiserror::Error)]
#[error(
    "purge of group {group}'s log up to index {purge} passes its flushed applied index {flushed:?}: \
     after a crash the state machine would need entries that are gone"
)]
pub struct PurgePastFlushed {
    pub group: crate::GroupId,
    pub purge: u64,
    pub flushed: Option<u64>,
}

impl FlushedApplied {
    /// Starts at `index` (None: nothing known durable).
    pub fn new(index: Option<u64>) -> FlushedApplied {
        let f = FlushedApplied::default();
        if let Some(i) = index {
            f.record(i);
        }
        f
    }

    /// Records that the applied state up to `index` is durable in RocksDB.
    pub fn record(&self, index: u64) {
        let next = index.checked_add(1).expect("log index u64::MAX");
        self.next.fetch_max(next, Ordering::AcqRel);
    }

    /// The flushed applied index, if any.
    pub fn get(&self) -> Option<u64> {
        self.next.load(Ordering::Acquire).checked_sub(1)
    }

    /// Checks that a purge of `group`'s log up to `index` (inclusive) keeps every entry
    /// after the flushed applied index.
    pub fn check_purge(&self, group: crate::GroupId, index: u64) -> Result<(), PurgePastFlushed> {
        let flushed = self.get();
        if flushed.is_some_and(|f| index <= f) {
            Ok(())
        } else {
            Err(PurgePastFlushed { group, purge: index, flushed })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grows_and_refuses_a_purge_past_it() {
        let f = FlushedApplied::new(None);
        assert_eq!(f.get(), None);
        assert!(f.check_purge(1, 0).is_err(), "nothing durable: not even index 0 may go");
        f.record(0);
        assert!(f.check_purge(1, 0).is_ok());
        f.record(40);
        f.record(7);
        assert_eq!(f.get(), Some(40), "an older record does not lower it");
        assert!(f.check_purge(1, 40).is_ok());
        let err = f.check_purge(1, 41).expect_err("past the flushed applied index");
        assert!(err.to_string().contains("up to index 41 passes its flushed applied index Some(40)"), "{err}");
    }
}
