//! Fail-stop: what the node does when storage fails under a promise it made.
//!
//! After a failed `fsync` the kernel may have dropped the dirty pages it could not write,
//! and a later `fsync` that succeeds says nothing about them (the "fsyncgate" lesson of
//! PostgreSQL, 2018). Retrying would let the node report data durable that is not. The same
//! holds for a synced RocksDB write (a vote, a purge point) and for an apply batch: once one
//! fails, the node can no longer tell what of its state is on disk. So it stops at once,
//! without answering anyone, and recovers on restart from what is durable (the log, the
//! last flushed state), which the other replicas' copies complete.

/// Exit status of a node stopped by a storage failure (`EX_IOERR` of `sysexits.h`).
pub const STORAGE_FAILURE_EXIT_CODE: i32 = 74;

/// Stops the process after a storage failure: logs what failed on which file or group, and
/// exits with [`STORAGE_FAILURE_EXIT_CODE`] without running destructors or answering
/// anyone. Never returns.
pub fn storage_failure(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "storage failure: {what}; stopping the node (fail-stop): nothing written since the last successful sync is reported durable");
    // Also on stderr, in case the log subscriber buffers.
    eprintln!("kho: storage failure: {what}: {error}; stopping the node (fail-stop)");
    // `_exit`: no atexit handlers (RocksDB's static destructors would race its background
    // threads), no flush of anything half-written.
    // SAFETY: `_exit` has no preconditions; it ends the process.
    unsafe { libc::_exit(STORAGE_FAILURE_EXIT_CODE) }
}
