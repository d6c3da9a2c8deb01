//! The fail-stop state shared by the Raft logs ([`crate::segment_log`], [`crate::shared_log`]).
//!
//! After a failed write or `fsync` a log refuses every later change and sync: the kernel may
//! have dropped the dirty pages it failed to write, so a later `fsync` that succeeds says
//! nothing about them. Only reopening the log (which rereads what is on disk) brings it back.

use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Set once, by the first failure; never cleared.
#[derive(Debug, Default)]
pub(crate) struct FailStop {
    failed: OnceLock<String>,
}

impl FailStop {
    /// The failure that stopped the log, if any.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Refuses any change or sync once the log has failed.
    pub(crate) fn check(&self) -> Result<()> {
        match self.failed.get() {
            Some(what) => Err(Error::LogFailed { what: what.clone() }),
            None => Ok(()),
        }
    }

    /// Stops the log in `dir` for good after `e` (the first failure is the one named
    /// later) and returns `e` to the caller of the operation that failed.
    pub(crate) fn stop(&self, dir: &Path, e: Error) -> Error {
        if self.failed.set(format!("{}: {e}", dir.display())).is_ok() {
            tracing::error!(log = %dir.display(), error = %e, "Raft log write or sync failed: the log refuses every change until it is reopened");
        }
        e
    }
}
