//! Fault injection (fail-rs) into the logs: a failed `fsync` stops a log for good
//! (fail-stop), and reopening the directory brings back what was durable.
//!
//! Only built with `--features failpoints`. fail-rs keeps its configuration in one
//! process-wide registry, so every test here holds a `FailScenario` (which serialises
//! them) and they all live in this one test binary.
#![cfg(feature = "failpoints")]

use fail::FailScenario;
use kho_engine::segment_log::SegmentLog;
use kho_engine::Error;
use tempfile::TempDir;

fn payload(index: u64) -> Vec<u8> {
    format!("record {index}").into_bytes()
}

fn append(log: &SegmentLog, from: u64, to: u64) -> kho_engine::Result<()> {
    let payloads: Vec<Vec<u8>> = (from..to).map(payload).collect();
    let records: Vec<(u64, &[u8])> = (from..to).zip(payloads.iter().map(Vec::as_slice)).collect();
    log.append(&records)
}

#[test]
fn segment_log_a_failed_sync_stops_the_log_until_it_is_reopened() {
    let scenario = FailScenario::setup();
    let dir = TempDir::new().expect("tempdir");
    let (log, _) = SegmentLog::open_with_segment_bytes(dir.path(), None, 1 << 20).expect("open");
    append(&log, 1, 11).expect("append");
    log.sync().expect("sync");
    assert_eq!(log.durable_end(), 11);

    fail::cfg("segment-log-sync", "return").expect("configure the fail point");
    append(&log, 11, 21).expect("append");
    match log.sync() {
        Err(Error::Io { op, source }) => {
            assert_eq!(op, "sync log segment");
            assert!(source.to_string().contains("segment-log-sync"), "{source}");
        }
        other => panic!("expected the injected sync failure, got {other:?}"),
    }
    let failure = log.failure().expect("the log is stopped").to_string();
    assert!(failure.contains("segment-log-sync") && failure.contains(&dir.path().display().to_string()), "{failure}");
    // Every later change or sync is refused, naming the first failure; nothing more is durable.
    let refused = |r: kho_engine::Result<()>, what: &str| match r {
        Err(Error::LogFailed { what: w }) => assert_eq!(w, failure, "{what}"),
        other => panic!("{what}: expected LogFailed, got {other:?}"),
    };
    refused(log.sync(), "sync");
    refused(log.sync_upto(15), "sync_upto");
    refused(append(&log, 21, 22), "append");
    refused(log.truncate_from(5), "truncate");
    refused(log.purge_upto(3), "purge");
    assert_eq!(log.durable_end(), 11, "durable_end never advances after the failure");

    // Without the fail point, the same log still refuses: the failed fsync is never retried.
    fail::remove("segment-log-sync");
    refused(log.sync(), "sync after the fail point is gone");
    assert_eq!(log.durable_end(), 11);
    drop(log);

    // Reopened, it holds at least what was durable (here everything: the page cache kept it).
    let (log, _) = SegmentLog::open_with_segment_bytes(dir.path(), None, 1 << 20).expect("reopen");
    let last = log.last_index().expect("records");
    assert!(last >= 10, "last index {last}");
    assert_eq!(log.read(1, last + 1).expect("read"), (1..last + 1).map(payload).collect::<Vec<_>>());
    append(&log, last + 1, last + 3).expect("append after reopening");
    log.sync().expect("sync after reopening");
    assert_eq!(log.durable_end(), last + 3);
    scenario.teardown();
}
