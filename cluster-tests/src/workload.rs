//! Workloads of the fault-injection runs, each operation recorded with its outcome:
//!
//! - *register*: clients do get / put / compare-and-swap on a few keys at a time; the
//!   history goes to the linearizability checker;
//! - *set*: clients write unique keys once; a final read must hold every acknowledged write
//!   and nothing that was never written.
//!
//! Every operation is one attempt with a deadline (no retries), as a Jepsen client does:
//! an answer is `ok`; an error that proves the operation was not applied is `fail`; anything
//! else (timeouts, UNAVAILABLE after proposing, broken connections) is `info`, unknown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::{CompareAndSwapRequest, GetRequest, PutRequest, ReadConsistency, ScanRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::checker::{Outcome, RegisterOp, Value};
use crate::history::History;
use crate::kv::KvTarget;
use crate::retry::{retry_call, RetryPolicy};
use crate::Cluster;

/// Keys of the set workload start with this prefix.
pub const SET_PREFIX: &str = "set/";
/// Keys of the register workload start with this prefix.
pub const REGISTER_PREFIX: &str = "reg/";
/// Pairs asked for per Scan page of the final set read.
const SET_READ_PAGE: u32 = 1_000;
/// Pause of a client after an operation that did not succeed, milliseconds: a node that
/// refuses at once (no leader, connection refused) is not hammered.
const ERROR_BACKOFF_MS: u64 = 100;
/// Most keys the final set read accepts before it gives up, count.
const SET_READ_KEYS_MAX: usize = 5_000_000;

/// The nodes clients send requests to: every node of the cluster (members and spares) with a
/// client each, and the ids of the current members, which a membership change updates.
#[derive(Clone)]
pub struct Targets {
    clients: Arc<BTreeMap<u64, DataClient<Channel>>>,
    members: Arc<RwLock<Vec<u64>>>,
}

impl Targets {
    pub fn new(cluster: &Cluster, members: Vec<u64>) -> Targets {
        let clients = cluster.new_data_clients().into_iter().collect();
        Targets { clients: Arc::new(clients), members: Arc::new(RwLock::new(members)) }
    }

    /// The member that client `client` talks to now, and its client.
    pub fn for_client(&self, client: u64) -> (u64, DataClient<Channel>) {
        let members = self.members.read().unwrap();
        let id = members[(client as usize) % members.len()];
        (id, self.clients[&id].clone())
    }

    pub fn members(&self) -> Vec<u64> {
        self.members.read().unwrap().clone()
    }

    pub fn set_members(&self, members: Vec<u64>) {
        assert!(!members.is_empty(), "a cluster has at least one member");
        *self.members.write().unwrap() = members;
    }
}

/// How the register workload runs. Every field is a bound or a ratio.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// Concurrent clients, count.
    pub clients: u64,
    /// Keys in use at once, count. Each key takes `ops_per_generation / keys_per_generation`
    /// operations, then the clients move to fresh keys (so each key's history stays small).
    pub keys_per_generation: u64,
    /// Operations before the clients move to the next keys, count.
    pub ops_per_generation: u64,
    /// Reads use READ_CONSISTENCY_STALE (served by the called node alone).
    pub stale_reads: bool,
    /// Deadline of one operation, milliseconds; a write that misses it is `info`.
    pub op_timeout_ms: u64,
    /// Pause between two operations of one client, milliseconds.
    pub think_ms: u64,
    /// Most operations in the whole run, count.
    pub ops_max: u64,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            clients: 8,
            keys_per_generation: 3,
            ops_per_generation: 600,
            stale_reads: false,
            op_timeout_ms: 3_000,
            think_ms: 5,
            ops_max: 1_000_000,
        }
    }
}

/// Whether a failed write certainly did not take effect: the server refused it before
/// proposing it (bad argument, unknown table, …). Every other failure is unknown.
pub fn write_certainly_failed(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::Unimplemented
    )
}

fn encode(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// A value the workload never writes, recorded when a read returns bytes that are not one
/// of its values (so the checker reports it).
pub const GARBAGE: Value = u64::MAX;

fn decode(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(GARBAGE)
}

/// Running register clients.
pub struct RegisterWorkload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    history: History,
}

impl RegisterWorkload {
    pub fn spawn(targets: &Targets, target: &KvTarget, cfg: &RegisterConfig, seed: u64, history: History) -> RegisterWorkload {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        // Values are unique in the run, so a read names the write it saw.
        let values = Arc::new(AtomicU64::new(1));
        let tasks = (0..cfg.clients)
            .map(|client| {
                let c = RegisterClient {
                    client,
                    targets: targets.clone(),
                    target: target.clone(),
                    cfg: cfg.clone(),
                    rng: StdRng::seed_from_u64(seed ^ (client + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    stop: stop.clone(),
                    ops: ops.clone(),
                    values: values.clone(),
                    history: history.clone(),
                    seen: BTreeMap::new(),
                };
                tokio::spawn(c.run())
            })
            .collect();
        RegisterWorkload { stop, tasks, history }
    }

    /// Stops the clients (each finishes its operation in flight) and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a register client panicked");
        }
        self.history
    }
}

struct RegisterClient {
    client: u64,
    targets: Targets,
    target: KvTarget,
    cfg: RegisterConfig,
    rng: StdRng,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    values: Arc<AtomicU64>,
    history: History,
    /// The last value this client saw per key, for the expected value of its CAS.
    seen: BTreeMap<u64, Option<Value>>,
}

impl RegisterClient {
    async fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) && self.history.has_room() {
            let n = self.ops.fetch_add(1, Ordering::SeqCst);
            if n >= self.cfg.ops_max {
                break;
            }
            let generation = n / self.cfg.ops_per_generation;
            let key = generation * self.cfg.keys_per_generation + self.rng.random_range(0..self.cfg.keys_per_generation);
            let op = match self.rng.random_range(0..10u32) {
                0..=3 => RegisterOp::Read,
                4..=6 => RegisterOp::Write(self.values.fetch_add(1, Ordering::SeqCst)),
                _ => {
                    let expected = self.seen.get(&key).copied().unwrap_or(None);
                    RegisterOp::Cas { expected, new: self.values.fetch_add(1, Ordering::SeqCst) }
                }
            };
            let outcome = self.one(key, op).await;
            match (op, outcome) {
                (_, Outcome::ReadOk(v)) => {
                    self.seen.insert(key, v);
                }
                (RegisterOp::Write(v), Outcome::WriteOk) | (RegisterOp::Cas { new: v, .. }, Outcome::CasOk(true)) => {
                    self.seen.insert(key, Some(v));
                }
                _ => {}
            }
            let pause = match outcome {
                Outcome::Fail | Outcome::Info => ERROR_BACKOFF_MS,
                _ => self.cfg.think_ms,
            };
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }

    /// Sends one operation, records it and returns its outcome.
    async fn one(&mut self, key: u64, op: RegisterOp) -> Outcome {
        let (_, mut client) = self.targets.for_client(self.client);
        let t = &self.target;
        let row = format!("{REGISTER_PREFIX}{key}").into_bytes();
        let pending = self.history.invoke(self.client, key, op);
        let deadline = Duration::from_millis(self.cfg.op_timeout_ms);
        let outcome = match op {
            RegisterOp::Read => {
                let consistency = if self.cfg.stale_reads { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
                let req = GetRequest {
                    tenant: t.tenant.clone(),
                    table: t.table.clone(),
                    key: row,
                    family: t.family.clone(),
                    consistency: consistency as i32,
                };
                match tokio::time::timeout(deadline, client.get(req)).await {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        Outcome::ReadOk(r.found.then(|| decode(&r.value)))
                    }
                    // A read has no effect: any failure is a `fail` (the checker drops it).
                    _ => Outcome::Fail,
                }
            }
            RegisterOp::Write(v) => {
                let req =
                    PutRequest { tenant: t.tenant.clone(), table: t.table.clone(), key: row, value: encode(v), family: t.family.clone() };
                match tokio::time::timeout(deadline, client.put(req)).await {
                    Ok(Ok(_)) => Outcome::WriteOk,
                    Ok(Err(s)) if write_certainly_failed(&s) => Outcome::Fail,
                    _ => Outcome::Info,
                }
            }
            RegisterOp::Cas { expected, new } => {
                let req = CompareAndSwapRequest {
                    tenant: t.tenant.clone(),
                    table: t.table.clone(),
                    key: row,
                    family: t.family.clone(),
                    expected_value: expected.map(encode),
                    new_value: Some(encode(new)),
                };
                match tokio::time::timeout(deadline, client.compare_and_swap(req)).await {
                    Ok(Ok(r)) => Outcome::CasOk(r.into_inner().succeeded),
                    Ok(Err(s)) if write_certainly_failed(&s) => Outcome::Fail,
                    _ => Outcome::Info,
                }
            }
        };
        self.history.complete(pending, outcome);
        outcome
    }
}

/// What one set write became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Ok,
    Fail,
    Info,
}

/// What one set client reports: each element it added and the outcome.
type SetResults = Vec<(Vec<u8>, SetOutcome)>;

/// Running set clients: each writes `set/<client>/<seq>` = `<client>/<seq>` once.
pub struct SetWorkload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<SetResults>>,
}

impl SetWorkload {
    /// `first_client` numbers the clients after the register clients (they share
    /// `Targets`, so the two workloads spread over the nodes differently).
    pub fn spawn(
        targets: &Targets,
        target: &KvTarget,
        clients: u64,
        first_client: u64,
        op_timeout_ms: u64,
        writes_max: u64,
    ) -> SetWorkload {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (first_client..first_client + clients)
            .map(|client| {
                let targets = targets.clone();
                let target = target.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    let deadline = Duration::from_millis(op_timeout_ms);
                    for seq in 0..writes_max {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let key = format!("{SET_PREFIX}{client}/{seq:08}").into_bytes();
                        let req = PutRequest {
                            tenant: target.tenant.clone(),
                            table: target.table.clone(),
                            key: key.clone(),
                            value: set_value(&key),
                            family: target.family.clone(),
                        };
                        let (_, mut c) = targets.for_client(client);
                        let outcome = match tokio::time::timeout(deadline, c.put(req)).await {
                            Ok(Ok(_)) => SetOutcome::Ok,
                            Ok(Err(s)) if write_certainly_failed(&s) => SetOutcome::Fail,
                            _ => SetOutcome::Info,
                        };
                        written.push((key, outcome));
                        if outcome != SetOutcome::Ok {
                            tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                        }
                    }
                    written
                })
            })
            .collect();
        SetWorkload { stop, tasks }
    }

    pub async fn stop(self) -> Vec<(Vec<u8>, SetOutcome)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a set client panicked"));
        }
        all
    }
}

/// The value of a set key: the key without the prefix.
fn set_value(key: &[u8]) -> Vec<u8> {
    key[SET_PREFIX.len()..].to_vec()
}

/// The verdict of the set workload's final read.
#[derive(Debug, Default)]
pub struct SetVerdict {
    pub ok: usize,
    pub info: usize,
    pub fail: usize,
    /// Of the `info` writes, how many are present.
    pub info_present: usize,
    /// Acknowledged writes missing from the final read.
    pub lost: Vec<String>,
    /// Keys present that were never written, written with `fail`, or have a wrong value.
    pub unexpected: Vec<String>,
}

impl SetVerdict {
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "set: {} ok, {} info ({} of them present), {} fail; {} lost, {} unexpected",
            self.ok,
            self.info,
            self.info_present,
            self.fail,
            self.lost.len(),
            self.unexpected.len()
        );
        for k in self.lost.iter().take(10) {
            s.push_str(&format!("\n  lost: {k}"));
        }
        for k in self.unexpected.iter().take(10) {
            s.push_str(&format!("\n  unexpected: {k}"));
        }
        s
    }
}

/// Reads every `set/` key through `client` (linearizable scans, retried, paged) and checks
/// it against what the clients were told.
pub async fn check_set(client: &DataClient<Channel>, target: &KvTarget, written: &[(Vec<u8>, SetOutcome)]) -> Result<SetVerdict, Status> {
    let mut present: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut start = SET_PREFIX.as_bytes().to_vec();
    loop {
        let req = ScanRequest {
            tenant: target.tenant.clone(),
            table: target.table.clone(),
            family: target.family.clone(),
            start_key: start.clone(),
            prefix: SET_PREFIX.as_bytes().to_vec(),
            limit: SET_READ_PAGE,
            ..Default::default()
        };
        let page = retry_call(&RetryPolicy::STEADY, |_| {
            let mut c = client.clone();
            let req = req.clone();
            async move {
                let mut stream = c.scan(req).await?.into_inner();
                let mut kvs = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    kvs.extend(chunk.kvs);
                }
                Ok(tonic::Response::new(kvs))
            }
        })
        .await?;
        let n = page.len();
        for kv in page {
            start = kv.key.clone();
            start.push(0);
            present.insert(kv.key, kv.value);
        }
        if n < SET_READ_PAGE as usize || present.len() > SET_READ_KEYS_MAX {
            break;
        }
    }
    let mut v = SetVerdict::default();
    let mut outcomes: BTreeMap<&[u8], SetOutcome> = BTreeMap::new();
    for (key, outcome) in written {
        outcomes.insert(key, *outcome);
        match outcome {
            SetOutcome::Ok => v.ok += 1,
            SetOutcome::Fail => v.fail += 1,
            SetOutcome::Info => v.info += 1,
        }
        let here = present.contains_key(key.as_slice());
        match outcome {
            SetOutcome::Ok if !here => v.lost.push(String::from_utf8_lossy(key).into_owned()),
            SetOutcome::Info if here => v.info_present += 1,
            _ => {}
        }
    }
    for (key, value) in &present {
        let name = String::from_utf8_lossy(key).into_owned();
        match outcomes.get(key.as_slice()) {
            None => v.unexpected.push(format!("{name}: never written")),
            Some(SetOutcome::Fail) => v.unexpected.push(format!("{name}: written with a certain failure")),
            Some(_) if *value != set_value(key) => v.unexpected.push(format!("{name}: value {:?}", String::from_utf8_lossy(value))),
            Some(_) => {}
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_flagged() {
        assert_eq!(decode(&encode(42)), 42);
        assert_eq!(decode(b"not a number"), GARBAGE);
    }

    #[test]
    fn only_refusals_before_proposing_are_certain_failures() {
        assert!(write_certainly_failed(&Status::invalid_argument("key too long")));
        assert!(write_certainly_failed(&Status::not_found("no table")));
        assert!(!write_certainly_failed(&Status::unavailable("no quorum")));
        assert!(!write_certainly_failed(&Status::deadline_exceeded("slow")));
        assert!(!write_certainly_failed(&Status::unknown("connection reset")));
    }
}
