//! The recorded history of a workload: every operation with its invoke time, completion time
//! and outcome, in the checker's terms ([`crate::checker::Operation`]), plus its JSON-lines
//! form for the files a failing run leaves behind.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::checker::{Operation, Outcome, RegisterOp};

/// Most operations one history records; a workload stops issuing operations when it is full.
pub const HISTORY_OPS_MAX: usize = 2_000_000;

/// A shared, append-only history. Times are nanoseconds since the history was created.
#[derive(Clone)]
pub struct History {
    start: Instant,
    next_id: Arc<AtomicU64>,
    ops: Arc<Mutex<Vec<Operation>>>,
}

/// An operation invoked and not yet completed.
pub struct Pending {
    id: u64,
    client: u64,
    key: u64,
    op: RegisterOp,
    invoke_ns: u64,
}

impl History {
    pub fn new(start: Instant) -> History {
        History { start, next_id: Arc::new(AtomicU64::new(0)), ops: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Nanoseconds since the start of the history.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Whether the history has room for another operation.
    pub fn has_room(&self) -> bool {
        self.ops.lock().unwrap().len() < HISTORY_OPS_MAX
    }

    /// Records the invocation time of an operation about to be sent.
    pub fn invoke(&self, client: u64, key: u64, op: RegisterOp) -> Pending {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        Pending { id, client, key, op, invoke_ns: self.now_ns() }
    }

    /// Records the completion of `pending` with `outcome`, timed now.
    pub fn complete(&self, pending: Pending, outcome: Outcome) {
        let complete_ns = self.now_ns();
        let op = Operation {
            id: pending.id,
            client: pending.client,
            key: pending.key,
            op: pending.op,
            outcome,
            invoke_ns: pending.invoke_ns,
            complete_ns,
        };
        self.ops.lock().unwrap().push(op);
    }

    /// The operations so far, ordered by invocation.
    pub fn snapshot(&self) -> Vec<Operation> {
        let mut ops = self.ops.lock().unwrap().clone();
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        ops
    }
}

/// Counts of operations by kind and outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// Operations by kind (read, write, cas) and outcome.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryStats {
    pub read: OutcomeCounts,
    pub write: OutcomeCounts,
    pub cas: OutcomeCounts,
    /// CAS operations that completed and did not swap (the expected value differed).
    pub cas_refused: u64,
}

impl HistoryStats {
    pub fn of(ops: &[Operation]) -> HistoryStats {
        let mut s = HistoryStats::default();
        for o in ops {
            let counts = match o.op {
                RegisterOp::Read => &mut s.read,
                RegisterOp::Write(_) => &mut s.write,
                RegisterOp::Cas { .. } => &mut s.cas,
            };
            match o.outcome {
                Outcome::Fail => counts.fail += 1,
                Outcome::Info => counts.info += 1,
                _ => counts.ok += 1,
            }
            if o.outcome == Outcome::CasOk(false) {
                s.cas_refused += 1;
            }
        }
        s
    }

    pub fn total(&self) -> OutcomeCounts {
        let all = [self.read, self.write, self.cas];
        OutcomeCounts { ok: all.iter().map(|c| c.ok).sum(), fail: all.iter().map(|c| c.fail).sum(), info: all.iter().map(|c| c.info).sum() }
    }

    /// "12345 ops: 11000 ok, 300 fail, 1045 info (read 5000/100/0, write …, cas … of which 800 refused)"
    pub fn describe(&self) -> String {
        let t = self.total();
        let c = |x: OutcomeCounts| format!("{} ok/{} fail/{} info", x.ok, x.fail, x.info);
        format!(
            "{} ops: {} ok, {} fail, {} info (read {}; write {}; cas {}, {} of the ok ones refused)",
            t.ok + t.fail + t.info,
            t.ok,
            t.fail,
            t.info,
            c(self.read),
            c(self.write),
            c(self.cas),
            self.cas_refused
        )
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// One operation as a JSON object on one line, e.g.
/// `{"id":7,"client":2,"key":0,"f":"cas","expected":3,"new":9,"outcome":"ok","result":true,"invoke_ns":10,"complete_ns":20}`.
/// `result` is the value read (`null`: not found) or whether a CAS swapped; absent unless ok.
pub fn json_line(o: &Operation) -> String {
    let mut s = format!("{{\"id\":{},\"client\":{},\"key\":{},", o.id, o.client, o.key);
    match o.op {
        RegisterOp::Read => s.push_str("\"f\":\"read\","),
        RegisterOp::Write(v) => {
            let _ = write!(s, "\"f\":\"write\",\"value\":{v},");
        }
        RegisterOp::Cas { expected, new } => {
            let _ = write!(s, "\"f\":\"cas\",\"expected\":{},\"new\":{new},", opt(expected));
        }
    }
    match o.outcome {
        Outcome::ReadOk(v) => {
            let _ = write!(s, "\"outcome\":\"ok\",\"result\":{},", opt(v));
        }
        Outcome::WriteOk => s.push_str("\"outcome\":\"ok\","),
        Outcome::CasOk(swapped) => {
            let _ = write!(s, "\"outcome\":\"ok\",\"result\":{swapped},");
        }
        Outcome::Fail => s.push_str("\"outcome\":\"fail\","),
        Outcome::Info => s.push_str("\"outcome\":\"info\","),
    }
    let _ = write!(s, "\"invoke_ns\":{},\"complete_ns\":{}}}", o.invoke_ns, o.complete_ns);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_valid_json_with_every_field() {
        let ops = [
            Operation { id: 1, client: 2, key: 3, op: RegisterOp::Read, outcome: Outcome::ReadOk(None), invoke_ns: 5, complete_ns: 9 },
            Operation {
                id: 2,
                client: 2,
                key: 3,
                op: RegisterOp::Cas { expected: Some(4), new: 8 },
                outcome: Outcome::CasOk(true),
                invoke_ns: 10,
                complete_ns: 20,
            },
            Operation { id: 3, client: 1, key: 3, op: RegisterOp::Write(7), outcome: Outcome::Info, invoke_ns: 11, complete_ns: 30 },
        ];
        let lines: Vec<serde_json::Value> = ops.iter().map(|o| serde_json::from_str(&json_line(o)).unwrap()).collect();
        assert_eq!(lines[0]["f"], "read");
        assert!(lines[0]["result"].is_null());
        assert_eq!(lines[1]["expected"], 4);
        assert_eq!(lines[1]["result"], true);
        assert_eq!(lines[2]["outcome"], "info");
        assert_eq!(lines[2]["value"], 7);
        assert_eq!(lines[2]["complete_ns"], 30);
    }

    #[test]
    fn stats_count_by_kind_and_outcome() {
        let h = History::new(Instant::now());
        let p = h.invoke(1, 0, RegisterOp::Read);
        h.complete(p, Outcome::ReadOk(Some(1)));
        let p = h.invoke(1, 0, RegisterOp::Cas { expected: None, new: 2 });
        h.complete(p, Outcome::CasOk(false));
        let p = h.invoke(2, 0, RegisterOp::Write(3));
        h.complete(p, Outcome::Info);
        let s = HistoryStats::of(&h.snapshot());
        assert_eq!(s.read, OutcomeCounts { ok: 1, fail: 0, info: 0 });
        assert_eq!(s.cas, OutcomeCounts { ok: 1, fail: 0, info: 0 });
        assert_eq!(s.cas_refused, 1);
        assert_eq!(s.write.info, 1);
        assert_eq!(s.total(), OutcomeCounts { ok: 2, fail: 0, info: 1 });
    }
}
