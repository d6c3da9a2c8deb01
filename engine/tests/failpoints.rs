//! Fault injection (fail-rs) into the logs: a failed `fsync` stops a log for good
//! (fail-stop), and reopening the directory brings back what was durable.
//!
//! Only built with `--features failpoints`. fail-rs keeps its configuration in one
//! process-wide registry, so every test here holds a `FailScenario` (which serialises
//! them) and they all live in this one test binary.
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;

use fail::FailScenario;
use kho_engine::segment_log::SegmentLog;
use kho_engine::shared_log::SharedLog;
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

fn shared_append(log: &SharedLog, stream: u64, from: u64, to: u64) -> kho_engine::Result<()> {
    let payloads: Vec<Vec<u8>> = (from..to).map(payload).collect();
    let records: Vec<(u64, &[u8])> = (from..to).zip(payloads.iter().map(Vec::as_slice)).collect();
    log.append(stream, &records)
}

#[test]
fn shared_log_a_failed_sync_stops_the_log_until_it_is_reopened() {
    let scenario = FailScenario::setup();
    let dir = TempDir::new().expect("tempdir");
    let (log, _) = SharedLog::open(dir.path(), 1 << 20, &BTreeMap::new()).expect("open");
    shared_append(&log, 1, 1, 11).expect("append");
    shared_append(&log, 2, 1, 6).expect("append");
    log.sync().expect("sync");
    assert!(log.is_durable(1, 10) && log.is_durable(2, 5));

    fail::cfg("shared-log-sync", "return").expect("configure the fail point");
    shared_append(&log, 1, 11, 21).expect("append");
    shared_append(&log, 2, 6, 8).expect("append");
    match log.sync_upto(2, 7) {
        Err(Error::Io { op, source }) => {
            assert_eq!(op, "sync shared log segment");
            assert!(source.to_string().contains("shared-log-sync"), "{source}");
        }
        other => panic!("expected the injected sync failure, got {other:?}"),
    }
    let failure = log.failure().expect("the log is stopped").to_string();
    assert!(failure.contains("shared-log-sync") && failure.contains(&dir.path().display().to_string()), "{failure}");
    let refused = |r: kho_engine::Result<()>, what: &str| match r {
        Err(Error::LogFailed { what: w }) => assert_eq!(w, failure, "{what}"),
        other => panic!("{what}: expected LogFailed, got {other:?}"),
    };
    refused(log.sync(), "sync");
    refused(log.sync_upto(1, 15), "sync_upto");
    refused(shared_append(&log, 3, 1, 2), "append");
    refused(log.truncate_from(1, 5), "truncate");
    refused(log.remove_stream(2), "remove");
    refused(log.purge_upto(1, 3), "purge");
    assert!(!log.is_durable(1, 11) && !log.is_durable(2, 6), "nothing written after the last good sync counts as durable");

    // Without the fail point, the same log still refuses: the failed fsync is never retried.
    fail::remove("shared-log-sync");
    refused(log.sync(), "sync after the fail point is gone");
    assert!(!log.is_durable(1, 11));
    // Reads still answer from what was written.
    assert_eq!(log.read(1, 1, 21).expect("read").len(), 20);
    drop(log);

    // Reopened, it holds at least what was durable (here everything: the page cache kept it).
    let (log, _) = SharedLog::open(dir.path(), 1 << 20, &BTreeMap::new()).expect("reopen");
    let (last1, last2) = (log.last_index(1).expect("held"), log.last_index(2).expect("held"));
    assert!(last1 >= 10 && last2 >= 5, "{last1} {last2}");
    assert_eq!(log.read(1, 1, last1 + 1).expect("read"), (1..last1 + 1).map(payload).collect::<Vec<_>>());
    assert_eq!(log.read(2, 1, last2 + 1).expect("read"), (1..last2 + 1).map(payload).collect::<Vec<_>>());
    shared_append(&log, 1, last1 + 1, last1 + 3).expect("append after reopening");
    log.sync().expect("sync after reopening");
    assert!(log.is_durable(1, last1 + 2));
    scenario.teardown();
}
