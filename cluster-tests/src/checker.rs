//! Linearizability checker for histories of registers (one register per key).
//!
//! # Model
//!
//! Every key is an independent register whose state is `Option<Value>`, initially `None`
//! (absent). Operations:
//! - `Read` returns the current state;
//! - `Write(v)` sets the state to `Some(v)`;
//! - `Cas { expected, new }` swaps iff the state equals `expected` (`None` = absent), then
//!   the state is `Some(new)`; otherwise the state is unchanged.
//!
//! A history is linearizable if there is a total order of its operations that respects
//! real time (an operation that completed before another was invoked comes first) and in
//! which every operation's observed result is the model's result.
//!
//! # Outcomes
//!
//! - `ReadOk`, `WriteOk`, `CasOk`: the operation took effect atomically at one instant
//!   within `[invoke_ns, complete_ns]` with that result. A `CasOk(false)` must be placed
//!   where the state differs from `expected` and changes nothing.
//! - `Fail`: certainly did not take effect; dropped.
//! - `Info`: unknown. A read with an unknown outcome has no effect and is dropped. A write
//!   or CAS with an unknown outcome is modelled as in Knossos and Porcupine: its completion
//!   is at +infinity and any result is acceptable (the CAS swaps iff the state then equals
//!   `expected`). Placing it after everything else is "it never happened".
//!
//! Intervals are closed: an operation completing at `t` and another invoked at `t` are
//! concurrent (the sorted events put calls before returns at equal times). All times come
//! from one clock; a tie is read in the system's favour, so it never creates a violation.
//!
//! # Algorithm
//!
//! Registers are independent (P-compositionality), so the history is split by key and each
//! key is checked on its own. Each key runs the Wing & Gong search with Lowe's cache, as in
//! Porcupine: call and return events are sorted by time into a doubly linked list; a
//! depth-first search linearizes a pending call whose result the model accepts, removes its
//! call and return from the list ("lifting", undone in LIFO order on backtrack), and
//! backtracks when it reaches a return event whose call is not linearized yet. Nodes already
//! visited are skipped. The search is iterative (an explicit stack of frames), so histories
//! of any length check without recursion.
//!
//! Refinements, each sound because the pruned node is dead or dominated by a node that is
//! explored (a linearization from the pruned node can be rewritten into one from the other);
//! the tests compare the verdicts with a brute-force search on thousands of small histories:
//! - Forced moves: a read, or a CAS that reported no swap, whose result the model accepts
//!   at the current state changes nothing, so moving it to the front of any linearization
//!   keeps it valid: such an operation is taken without trying alternatives.
//! - Lost states: per state, the pending operations that may still write it and the pending
//!   reads and swapped CAS that need it are counted. A node is dead as soon as some needed
//!   state can no longer be written and the register holds another one (a stale read is
//!   caught right after the search passes the last write of the value it saw).
//! - Unknown writes and CAS live in their own list (they never return), are tried after
//!   the completed operations, and only when they change the state and the new state
//!   enables some pending read or CAS (or an unknown CAS chained on it). Right after an
//!   unknown operation neither a completed write nor an unknown write is tried (taking it
//!   directly from the node before is equivalent). Of several identical pending unknown
//!   operations only the earliest is tried.
//! - The cache stores, per (set of completed operations linearized, state), the sets of
//!   unknown operations used; a node is skipped when a visited node with the same completed
//!   set and state used a subset of its unknown operations (unknown operations left unused
//!   can always be placed at the end).
//!
//! The set of completed operations is kept in the cache as a 128-bit Zobrist fingerprint
//! (XOR of random keys per operation, updated in O(1)) rather than as a copy of the bit
//! set: a node then costs a few dozen bytes (plus one bit per unknown operation) instead of
//! n/8, so a search's memory stays bounded by its step budget. The unknown-operation set and
//! the state are kept exactly. Two different sets share a fingerprint with probability
//! 2^-128 per pair (the technique of the TLC model checker's state fingerprints); a
//! collision could only make the search skip a node, i.e. report a violation that is not
//! there, never hide one: a `Linearizable` verdict always rests on a linearization found.
//!
//! When a key is not linearizable, [`Violation`] reports the dead end that got furthest: the
//! latest earliest-pending-completion, then the most completed operations linearized. Every
//! search path ends at or before the first operation that cannot be linearized, so that
//! operation is among the reported stuck ones.
//!
//! # Complexity and bound
//!
//! Sorting is O(n log n) per key. The search is exponential in the worst case (checking
//! linearizability is NP-complete), but for histories of a correct system it is close to
//! linear in the number of operations: each node costs O(concurrent operations), plus
//! O(pending unknown operations) at dead ends. Unique written values (as the Kho workload
//! uses) keep it so even for violations and 20 clients on one key; with a handful of
//! distinct values, many unknown outcomes and a violation, the proof that no order exists
//! may need an exhaustive search, which the budget cuts short. The work per key is bounded by
//! [`CheckLimits::steps_max_per_key`]: a step is one candidate examined at a search node or
//! one linearized operation undone (10^7 steps take about 0.1 to 0.3 s in a release build).
//! A key whose search exceeds it gets [`KeyVerdict::Unknown`], neither a pass nor a failure.
//! Memory is O(n) for the lists plus O(steps) for the cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// A register value.
pub type Value = u64;

/// An operation on a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Read,
    Write(Value),
    Cas { expected: Option<Value>, new: Value },
}

/// What the client observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A read completed and saw this value (`None`: not found).
    ReadOk(Option<Value>),
    /// A write completed.
    WriteOk,
    /// A CAS completed: whether it swapped.
    CasOk(bool),
    /// Certainly did not take effect (e.g. rejected before reaching the log).
    Fail,
    /// Unknown: may have taken effect at any point after its invocation, or never
    /// (timeouts, lost connections).
    Info,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Unique per history.
    pub id: u64,
    pub client: u64,
    pub key: u64,
    pub op: RegisterOp,
    pub outcome: Outcome,
    pub invoke_ns: u64,
    /// Ignored for `Info` operations.
    pub complete_ns: u64,
}

/// Search steps per key before the verdict is [`KeyVerdict::Unknown`], by default.
pub const DEFAULT_STEPS_MAX_PER_KEY: u64 = 10_000_000;

/// Operations of the longest prefix shown by [`Violation::describe`] (the last ones).
const DESCRIBED_PREFIX_OPS: usize = 10;
/// Operations that can never be linearized listed by [`Violation::describe`], at most.
const DESCRIBED_DOOMED_OPS_MAX: usize = 20;
/// Pending unknown operations listed one by one by [`Violation::describe`], at most.
const DESCRIBED_UNKNOWN_OPS_MAX: usize = 10;
/// Keys named in [`Report::summary`], at most.
const SUMMARY_KEYS_MAX: usize = 10;
/// Seed of the per-operation fingerprint keys (any constant works; fixed for repeatability).
const ZOBRIST_SEED: u64 = 0x6b68_6f2d_6c69_6e65;
/// Distinguishes the two halves of a state's fingerprint key.
const STATE_KEY_SALT: u64 = 0x5bd1_e995_2545_f491;
/// End marker of a cache chain.
const NO_ENTRY: usize = usize::MAX;
/// The sentinel node of both event lists.
const HEAD: usize = 0;

/// Bounds on the work of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    /// Search steps per key (a candidate examined or an operation undone), count.
    pub steps_max_per_key: u64,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits { steps_max_per_key: DEFAULT_STEPS_MAX_PER_KEY }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// A linearization exists.
    Linearizable {
        /// Operations checked (failed ones and reads of unknown outcome are dropped).
        ops: usize,
        /// Search steps spent.
        steps: u64,
    },
    /// No linearization exists.
    NotLinearizable(Violation),
    /// The search budget ran out before a verdict.
    Unknown {
        /// Operations checked.
        ops: usize,
        /// Search steps spent (just over the budget).
        steps: u64,
    },
}

impl KeyVerdict {
    fn ops_and_steps(&self) -> (usize, u64) {
        match self {
            KeyVerdict::Linearizable { ops, steps } | KeyVerdict::Unknown { ops, steps } => (*ops, *steps),
            KeyVerdict::NotLinearizable(v) => (v.ops, v.steps),
        }
    }
}

/// Why a key's history is not linearizable: where the search got furthest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: u64,
    /// Operations checked on the key.
    pub ops: usize,
    /// Search steps spent on the key.
    pub steps: u64,
    /// The longest linearizable prefix found (the dead end that got furthest in time, then in
    /// completed operations): operation ids in order, each with the register state after it.
    pub longest_prefix: Vec<(u64, Option<Value>)>,
    /// The last operations of that prefix (up to 10), in order, for [`Violation::describe`].
    pub prefix_tail: Vec<Operation>,
    /// The operations pending after that prefix, none of which leads to a linearization:
    /// the completed ones invoked before the earliest pending completion, in invocation
    /// order, then those that need a lost state, then the unknown ones invoked by then.
    pub stuck_ops: Vec<Operation>,
    /// Lost states: states that pending reads or CAS need, that no pending operation can
    /// write any more, and that the register does not hold after the prefix.
    pub lost_states: Vec<Option<Value>>,
}

impl Violation {
    /// The register state after [`Violation::longest_prefix`].
    #[must_use]
    pub fn state_after_prefix(&self) -> Option<Value> {
        self.longest_prefix.last().and_then(|&(_, s)| s)
    }

    /// A multi-line explanation: the end of the longest prefix, the state it reaches, and
    /// for each stuck operation its times, operation, outcome and why the model refuses it
    /// there (or that it is accepted but leads nowhere).
    #[must_use]
    pub fn describe(&self) -> String {
        let state = self.state_after_prefix();
        let mut s = format!("key {}: not linearizable ({} ops checked, {} search steps).\n", self.key, self.ops, self.steps);
        let shown = self.prefix_tail.len();
        let _ = writeln!(
            s,
            "Longest linearizable prefix: {} ops{}",
            self.longest_prefix.len(),
            match shown {
                0 => String::new(),
                _ if shown == self.longest_prefix.len() => ":".to_string(),
                _ => format!(", the last {shown}:"),
            }
        );
        let tail_states = &self.longest_prefix[self.longest_prefix.len() - shown..];
        for (op, &(_, after)) in self.prefix_tail.iter().zip(tail_states) {
            let _ = writeln!(s, "  {}  => register {}", format_op(op), format_state(after));
        }
        let _ = writeln!(s, "Register after the prefix: {}", format_state(state));
        let needs_lost = |op: &Operation| {
            let needs = Step::of(op).ok().flatten().and_then(Step::needs);
            needs.is_some_and(|n| self.lost_states.contains(&n))
        };
        let (doomed, others): (Vec<&Operation>, Vec<&Operation>) = self.stuck_ops.iter().partition(|o| needs_lost(o));
        let doomed_listed = !doomed.is_empty();
        if doomed_listed {
            s.push_str(
                "These ops can never be linearized after the prefix: each needs a state the register does not \
                 hold, and no pending operation can write that state any more:\n",
            );
            for op in doomed.iter().take(DESCRIBED_DOOMED_OPS_MAX) {
                let _ = writeln!(s, "  {}: {}", format_op(op), Self::explain(op, state));
            }
            if doomed.len() > DESCRIBED_DOOMED_OPS_MAX {
                let _ = writeln!(s, "  ... and {} more", doomed.len() - DESCRIBED_DOOMED_OPS_MAX);
            }
        }
        let deadline = others.iter().filter(|o| o.outcome != Outcome::Info).min_by_key(|o| (o.complete_ns, o.id));
        match deadline {
            _ if others.is_empty() => {}
            Some(d) if doomed_listed => {
                let _ = writeln!(s, "Other ops pending after the prefix (the next to complete: #{} at {} ns):", d.id, d.complete_ns);
            }
            Some(d) => {
                let _ = writeln!(
                    s,
                    "Op #{} completed at {} ns, so it or an op concurrent with it must come next, but none of these \
                     leads to a linearization:",
                    d.id, d.complete_ns
                );
            }
            None => s.push_str("Pending ops, none of which leads to a linearization:\n"),
        }
        let mut unknown_listed = 0;
        let mut unknown_total = 0;
        for op in others {
            if op.outcome == Outcome::Info {
                unknown_total += 1;
                if unknown_listed == DESCRIBED_UNKNOWN_OPS_MAX {
                    continue;
                }
                unknown_listed += 1;
            }
            let _ = writeln!(s, "  {}: {}", format_op(op), Self::explain(op, state));
        }
        if unknown_total > unknown_listed {
            let _ = writeln!(s, "  ... and {} more ops of unknown outcome", unknown_total - unknown_listed);
        }
        s
    }

    /// Why `op` cannot be the next operation at `state`.
    fn explain(op: &Operation, state: Option<Value>) -> String {
        let step = match Step::of(op) {
            Ok(Some(step)) => step,
            Ok(None) => return "dropped (failed, or a read of unknown outcome)".to_string(),
            Err(e) => return e,
        };
        match step.apply(state) {
            None => format!("refused: {}", step.refusal(state)),
            Some(next) if step.is_unknown() && next == state => "taking effect here would change nothing".to_string(),
            Some(next) => format!(
                "{} here ({}), but no linearization continues from there",
                if step.is_unknown() { "could take effect" } else { "accepted" },
                if next == state { "register unchanged".to_string() } else { format!("register would become {}", format_state(next)) }
            ),
        }
    }
}

/// The verdicts of [`check`], per key, and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub keys: BTreeMap<u64, KeyVerdict>,
    /// Operations checked (all keys), count.
    pub ops_checked: usize,
    /// Operations dropped: `Fail` ones and reads with an unknown outcome, count.
    pub ops_dropped: usize,
    /// Search steps (all keys), count.
    pub steps: u64,
    /// The budget the search ran with.
    pub steps_max_per_key: u64,
    /// Time spent checking.
    pub elapsed: Duration,
}

impl Report {
    /// Whether every key is linearizable (an `Unknown` key is not a pass).
    #[must_use]
    pub fn is_linearizable(&self) -> bool {
        self.keys.values().all(|v| matches!(v, KeyVerdict::Linearizable { .. }))
    }

    /// The violations, by key.
    #[must_use]
    pub fn violations(&self) -> Vec<&Violation> {
        self.keys
            .values()
            .filter_map(|v| match v {
                KeyVerdict::NotLinearizable(violation) => Some(violation),
                _ => None,
            })
            .collect()
    }

    /// Keys whose search ran out of budget.
    #[must_use]
    pub fn unknown_keys(&self) -> Vec<u64> {
        self.keys.iter().filter(|(_, v)| matches!(v, KeyVerdict::Unknown { .. })).map(|(&k, _)| k).collect()
    }

    /// One line: keys, operations, steps, time and the verdict.
    #[must_use]
    pub fn summary(&self) -> String {
        let violating: Vec<u64> = self.violations().iter().map(|v| v.key).collect();
        let unknown = self.unknown_keys();
        let mut verdict = if violating.is_empty() && unknown.is_empty() {
            "linearizable".to_string()
        } else if violating.is_empty() {
            String::new()
        } else {
            format!("NOT LINEARIZABLE on {} key(s) {}", violating.len(), format_keys(&violating))
        };
        if !unknown.is_empty() {
            if !verdict.is_empty() {
                verdict.push_str("; ");
            }
            let _ = write!(
                verdict,
                "UNKNOWN on {} key(s) {} (search budget of {} steps per key exhausted)",
                unknown.len(),
                format_keys(&unknown),
                self.steps_max_per_key
            );
        }
        format!(
            "{} keys, {} ops checked ({} dropped: failed, or reads of unknown outcome), {} search steps, {:.1} ms: {}",
            self.keys.len(),
            self.ops_checked,
            self.ops_dropped,
            self.steps,
            self.elapsed.as_secs_f64() * 1e3,
            verdict
        )
    }
}

/// Checks that a history is well formed: unique ids, `complete_ns >= invoke_ns` for every
/// operation that completed, and outcomes that fit their operations.
///
/// # Errors
///
/// The first problem found, naming the operation.
pub fn validate(history: &[Operation]) -> Result<(), String> {
    let mut ids = HashSet::with_capacity(history.len());
    for op in history {
        if !ids.insert(op.id) {
            return Err(format!("operation id {} appears more than once", op.id));
        }
        if op.outcome != Outcome::Info && op.complete_ns < op.invoke_ns {
            return Err(format!("operation {} completes at {} ns, before its invocation at {} ns", op.id, op.complete_ns, op.invoke_ns));
        }
        Step::of(op)?;
    }
    Ok(())
}

/// Checks a history for linearizability, key by key.
///
/// # Errors
///
/// A malformed history (see [`validate`]).
pub fn check(history: &[Operation], limits: &CheckLimits) -> Result<Report, String> {
    validate(history)?;
    let started = Instant::now();
    let mut per_key: BTreeMap<u64, KeyOps> = BTreeMap::new();
    let mut ops_dropped = 0;
    for op in history {
        let entry = per_key.entry(op.key).or_insert_with(|| KeyOps { key: op.key, ..KeyOps::default() });
        match Step::of(op)? {
            None => ops_dropped += 1,
            Some(step) if step.is_unknown() => entry.unknown.push((op.clone(), step)),
            Some(step) => entry.completed.push((op.clone(), step)),
        }
    }
    let mut keys = BTreeMap::new();
    let (mut ops_checked, mut steps) = (0, 0);
    for (key, mut ops) in per_key {
        ops.completed.sort_by_key(|(o, _)| (o.invoke_ns, o.id));
        ops.unknown.sort_by_key(|(o, _)| (o.invoke_ns, o.id));
        let verdict = Search::new(&ops, limits.steps_max_per_key).run();
        let (o, s) = verdict.ops_and_steps();
        ops_checked += o;
        steps += s;
        keys.insert(key, verdict);
    }
    Ok(Report { keys, ops_checked, ops_dropped, steps, steps_max_per_key: limits.steps_max_per_key, elapsed: started.elapsed() })
}

// ---------------------------------------------------------------------------------------
// Model

type State = Option<Value>;

/// An operation with its outcome, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    /// A read that returned `seen`.
    Read { seen: State },
    /// A completed write.
    Write { value: Value },
    /// A CAS that swapped.
    CasSwapped { expected: State, new: Value },
    /// A CAS that completed without swapping.
    CasRefused { expected: State },
    /// A write of unknown outcome.
    MaybeWrite { value: Value },
    /// A CAS of unknown outcome.
    MaybeCas { expected: State, new: Value },
}

impl Step {
    /// The step of `op`; `None` if it is dropped (failed, or a read of unknown outcome).
    fn of(op: &Operation) -> Result<Option<Step>, String> {
        let step = match (op.op, op.outcome) {
            (_, Outcome::Fail) | (RegisterOp::Read, Outcome::Info) => None,
            (RegisterOp::Read, Outcome::ReadOk(seen)) => Some(Step::Read { seen }),
            (RegisterOp::Write(value), Outcome::WriteOk) => Some(Step::Write { value }),
            (RegisterOp::Write(value), Outcome::Info) => Some(Step::MaybeWrite { value }),
            (RegisterOp::Cas { expected, new }, Outcome::CasOk(true)) => Some(Step::CasSwapped { expected, new }),
            (RegisterOp::Cas { expected, .. }, Outcome::CasOk(false)) => Some(Step::CasRefused { expected }),
            (RegisterOp::Cas { expected, new }, Outcome::Info) => Some(Step::MaybeCas { expected, new }),
            (kind, outcome) => return Err(format!("operation {}: outcome {outcome:?} does not fit operation {kind:?}", op.id)),
        };
        Ok(step)
    }

    /// The state after this step at `state`, or `None` if the observed result is not the
    /// model's.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Read { seen } => (state == seen).then_some(state),
            Step::Write { value } | Step::MaybeWrite { value } => Some(Some(value)),
            Step::CasSwapped { expected, new } => (state == expected).then_some(Some(new)),
            Step::CasRefused { expected } => (state != expected).then_some(state),
            Step::MaybeCas { expected, new } => Some(if state == expected { Some(new) } else { state }),
        }
    }

    /// Accepted at some states, and then never changes the state.
    fn is_pure(self) -> bool {
        matches!(self, Step::Read { .. } | Step::CasRefused { .. })
    }

    fn is_unknown(self) -> bool {
        matches!(self, Step::MaybeWrite { .. } | Step::MaybeCas { .. })
    }

    /// The value this step may write.
    fn written(self) -> Option<Value> {
        match self {
            Step::Write { value } | Step::MaybeWrite { value } => Some(value),
            Step::CasSwapped { new, .. } | Step::MaybeCas { new, .. } => Some(new),
            Step::Read { .. } | Step::CasRefused { .. } => None,
        }
    }

    /// The one state at which this step is accepted, if there is one.
    fn needs(self) -> Option<State> {
        match self {
            Step::Read { seen } => Some(seen),
            Step::CasSwapped { expected, .. } => Some(expected),
            _ => None,
        }
    }

    /// Which states let this step go next, if it depends on the state.
    fn enabler(self) -> Option<Enabler> {
        match self {
            Step::Read { seen } => Some(Enabler::Equal(seen)),
            Step::CasSwapped { expected, .. } | Step::MaybeCas { expected, .. } => Some(Enabler::Equal(expected)),
            Step::CasRefused { expected } => Some(Enabler::Differ(expected)),
            Step::Write { .. } | Step::MaybeWrite { .. } => None,
        }
    }

    /// Why [`Step::apply`] refuses this step at `state`.
    fn refusal(self, state: State) -> String {
        match self {
            Step::Read { seen } => {
                format!("the read returned {} but the register holds {}", format_state(seen), format_state(state))
            }
            Step::CasSwapped { expected, .. } => format!(
                "the CAS reported a swap, which needs the register to hold {}, but it holds {}",
                format_state(expected),
                format_state(state)
            ),
            Step::CasRefused { expected } => {
                format!("the CAS reported no swap, but the register holds its expected value {}", format_state(expected))
            }
            Step::Write { .. } | Step::MaybeWrite { .. } | Step::MaybeCas { .. } => {
                "(never refused: this step is accepted at every state)".to_string()
            }
        }
    }
}

/// The states at which a step is accepted, for a step that depends on the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enabler {
    Equal(State),
    Differ(State),
}

fn format_state(state: State) -> String {
    state.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

fn format_keys(keys: &[u64]) -> String {
    let mut s: Vec<String> = keys.iter().take(SUMMARY_KEYS_MAX).map(u64::to_string).collect();
    if keys.len() > SUMMARY_KEYS_MAX {
        s.push("...".to_string());
    }
    format!("[{}]", s.join(", "))
}

/// `#7 client 2 [100..250 ns] cas 3->9: swapped`
fn format_op(op: &Operation) -> String {
    let what = match op.op {
        RegisterOp::Read => "read".to_string(),
        RegisterOp::Write(v) => format!("write {v}"),
        RegisterOp::Cas { expected, new } => format!("cas {}->{new}", format_state(expected)),
    };
    let (times, result) = match op.outcome {
        Outcome::ReadOk(v) => (format!("{}..{}", op.invoke_ns, op.complete_ns), format!("ok, saw {}", format_state(v))),
        Outcome::WriteOk => (format!("{}..{}", op.invoke_ns, op.complete_ns), "ok".to_string()),
        Outcome::CasOk(true) => (format!("{}..{}", op.invoke_ns, op.complete_ns), "swapped".to_string()),
        Outcome::CasOk(false) => (format!("{}..{}", op.invoke_ns, op.complete_ns), "not swapped".to_string()),
        Outcome::Fail => (format!("{}..{}", op.invoke_ns, op.complete_ns), "failed".to_string()),
        Outcome::Info => (format!("{}..", op.invoke_ns), "unknown outcome".to_string()),
    };
    format!("#{} client {} [{times} ns] {what}: {result}", op.id, op.client)
}

// ---------------------------------------------------------------------------------------
// Bit sets, fingerprints and the cache of visited nodes

/// A fixed-size set of small integers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    const WORD_BITS: usize = u64::BITS as usize;

    fn new(bits: usize) -> BitSet {
        BitSet { words: vec![0; bits.div_ceil(Self::WORD_BITS)] }
    }

    fn insert(&mut self, i: usize) {
        self.words[i / Self::WORD_BITS] |= 1 << (i % Self::WORD_BITS);
    }

    fn remove(&mut self, i: usize) {
        self.words[i / Self::WORD_BITS] &= !(1 << (i % Self::WORD_BITS));
    }

    fn contains(&self, i: usize) -> bool {
        self.words[i / Self::WORD_BITS] & (1 << (i % Self::WORD_BITS)) != 0
    }

    fn words(&self) -> &[u64] {
        &self.words
    }
}

/// Whether the set in `a` is a subset of the set in `b` (same length).
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// `SplitMix64`: the next value of the sequence in `state`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix64(*state)
}

/// `SplitMix64`'s finalizer: a bijection on `u64` that scrambles every bit.
fn mix64(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A 128-bit key per state, distinct for distinct states (`None` is 0, `Some` is odd).
fn state_key(state: State) -> u128 {
    match state {
        None => 0,
        Some(v) => (u128::from(mix64(v)) << 64) | u128::from(mix64(v ^ STATE_KEY_SALT) | 1),
    }
}

/// Hashes a fingerprint (already uniformly random) by folding it, instead of `SipHash`.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u128(&mut self, v: u128) {
        // Truncation intended: the two halves are folded together.
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

/// Visited search nodes. A node is (completed operations linearized, state, unknown
/// operations used); the first two are folded into a fingerprint, the last is kept exactly.
/// Per fingerprint, a chain of the unknown-operation sets seen.
struct VisitedCache {
    /// Words of one unknown-operation set.
    set_words: usize,
    heads: HashMap<u128, usize, BuildHasherDefault<FingerprintHasher>>,
    /// Per entry: the next entry of its chain, or `NO_ENTRY`.
    chain_next: Vec<usize>,
    /// Per entry: its unknown-operation set, `set_words` words.
    sets: Vec<u64>,
}

impl VisitedCache {
    fn new(unknown_ops: usize) -> VisitedCache {
        VisitedCache {
            set_words: unknown_ops.div_ceil(BitSet::WORD_BITS),
            heads: HashMap::default(),
            chain_next: Vec::new(),
            sets: Vec::new(),
        }
    }

    /// Records a node and returns true, unless it was visited or is dominated by a visited
    /// node (same fingerprint, a subset of its unknown operations used): then false.
    fn visit(&mut self, fingerprint: u128, unknown_used: &BitSet) -> bool {
        let words = unknown_used.words();
        let head = self.heads.get(&fingerprint).copied();
        let mut entry = head.unwrap_or(NO_ENTRY);
        while entry != NO_ENTRY {
            let stored = &self.sets[entry * self.set_words..(entry + 1) * self.set_words];
            if is_subset(stored, words) {
                return false;
            }
            entry = self.chain_next[entry];
        }
        let new_entry = self.chain_next.len();
        self.chain_next.push(head.unwrap_or(NO_ENTRY));
        self.sets.extend_from_slice(words);
        self.heads.insert(fingerprint, new_entry);
        true
    }
}

// ---------------------------------------------------------------------------------------
// Lost states

/// For each state that some operation writes or needs: the pending operations that may
/// write it and the pending completed reads and swapped CAS that need it, counted. A state
/// needed but no longer writable by anyone is lost: its readers can only be linearized
/// while the register still holds it, so a node holding any other state is dead (a stale
/// read is caught as soon as the search moves past the last write of the value it saw).
struct Supply {
    /// Per index: the state.
    states: Vec<State>,
    writers: Vec<u32>,
    needers: Vec<u32>,
    /// Indices of the lost states.
    lost: Vec<usize>,
    completed_writes: Vec<Option<usize>>,
    completed_needs: Vec<Option<usize>>,
    unknown_writes: Vec<Option<usize>>,
}

impl Supply {
    fn new(ops: &KeyOps) -> Supply {
        let mut index: HashMap<State, usize> = HashMap::new();
        let mut states = Vec::new();
        let mut index_of = |state: State| {
            *index.entry(state).or_insert_with(|| {
                states.push(state);
                states.len() - 1
            })
        };
        let completed_writes: Vec<Option<usize>> =
            ops.completed.iter().map(|(_, step)| step.written().map(|v| index_of(Some(v)))).collect();
        let completed_needs: Vec<Option<usize>> = ops.completed.iter().map(|(_, step)| step.needs().map(&mut index_of)).collect();
        let unknown_writes: Vec<Option<usize>> = ops.unknown.iter().map(|(_, step)| step.written().map(|v| index_of(Some(v)))).collect();
        let mut writers = vec![0; states.len()];
        let mut needers = vec![0; states.len()];
        for &i in completed_writes.iter().chain(&unknown_writes).flatten() {
            writers[i] += 1;
        }
        for &i in completed_needs.iter().flatten() {
            needers[i] += 1;
        }
        let lost = (0..states.len()).filter(|&i| needers[i] > 0 && writers[i] == 0).collect();
        Supply { states, writers, needers, lost, completed_writes, completed_needs, unknown_writes }
    }

    /// Whether a node whose register holds `state` is dead: some lost state is not `state`.
    fn dooms(&self, state: State) -> bool {
        self.lost.iter().any(|&i| self.states[i] != state)
    }

    /// The lost states other than `state`.
    fn lost_other_than(&self, state: State) -> Vec<State> {
        self.lost.iter().map(|&i| self.states[i]).filter(|&s| s != state).collect()
    }

    fn linearize_completed(&mut self, op: usize) {
        if let Some(i) = self.completed_writes[op] {
            self.writers[i] -= 1;
            self.update(i);
        }
        if let Some(i) = self.completed_needs[op] {
            self.needers[i] -= 1;
            self.update(i);
        }
    }

    fn undo_completed(&mut self, op: usize) {
        if let Some(i) = self.completed_writes[op] {
            self.writers[i] += 1;
            self.update(i);
        }
        if let Some(i) = self.completed_needs[op] {
            self.needers[i] += 1;
            self.update(i);
        }
    }

    fn linearize_unknown(&mut self, k: usize) {
        if let Some(i) = self.unknown_writes[k] {
            self.writers[i] -= 1;
            self.update(i);
        }
    }

    fn undo_unknown(&mut self, k: usize) {
        if let Some(i) = self.unknown_writes[k] {
            self.writers[i] += 1;
            self.update(i);
        }
    }

    /// Keeps `lost` in step with the counts of state `i`.
    fn update(&mut self, i: usize) {
        let is_lost = self.needers[i] > 0 && self.writers[i] == 0;
        match (is_lost, self.lost.iter().position(|&j| j == i)) {
            (true, None) => self.lost.push(i),
            (false, Some(pos)) => {
                self.lost.swap_remove(pos);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The search on one key

/// The operations of one key that take part in the search, each sorted by (invoke, id).
#[derive(Default)]
struct KeyOps {
    key: u64,
    /// Ok operations.
    completed: Vec<(Operation, Step)>,
    /// Writes and CAS of unknown outcome.
    unknown: Vec<(Operation, Step)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A completed operation (index in `KeyOps::completed`).
    Completed(usize),
    /// An operation of unknown outcome (index in `KeyOps::unknown`).
    Unknown(usize),
}

/// A linearized operation on the search stack.
#[derive(Debug, Clone, Copy)]
struct Frame {
    item: Item,
    state_before: State,
    /// Taken as a forced move: its node has no other option worth trying.
    forced: bool,
}

/// What the search loop does next.
enum Action {
    /// Arrive at a new node.
    Enter,
    /// Try completed candidates from this window position on, then unknown ones.
    ResumeCompleted(usize),
    /// Try unknown candidates from this node of the unknown list on.
    ResumeUnknown(usize),
    /// The current node leads nowhere.
    Backtrack,
}

enum SearchEnd {
    Linearizable,
    NotLinearizable,
    BudgetExhausted,
}

struct Search<'a> {
    ops: &'a KeyOps,
    steps_max: u64,
    steps: u64,

    // The event list of completed operations: node 0 is the head, event `e` is node `e + 1`;
    // circular, so the head also ends it.
    next: Vec<usize>,
    prev: Vec<usize>,
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    node_time: Vec<u64>,
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    // The list of unknown operations by invocation: node 0 is the head, operation `k` is
    // node `k + 1`.
    unknown_next: Vec<usize>,
    unknown_prev: Vec<usize>,
    /// Per unknown operation: the previous one (by invocation) with the same step.
    unknown_twin: Vec<Option<usize>>,
    /// The unknown CAS by expected value, each in list order.
    unknown_cas_by_expected: HashMap<State, Vec<usize>>,
    /// Per completed operation: its fingerprint key.
    zobrist: Vec<u128>,
    supply: Supply,

    // The current node.
    state: State,
    fingerprint: u128,
    completed_done: usize,
    unknown_used: BitSet,
    stack: Vec<Frame>,
    /// Completed operations whose call precedes the first return event, in list order.
    window: Vec<usize>,
    /// Time of the first return event: unknown operations invoked by then are candidates.
    deadline: u64,
    /// States that enable a candidate (sorted), and states that a refused CAS candidate
    /// needs the register to differ from.
    enable_equal: Vec<State>,
    enable_differ: Vec<State>,

    cache: VisitedCache,

    /// The dead end that got furthest: latest deadline, then most completed operations.
    best_progress: Option<(u64, usize)>,
    /// Its path (item, state before); the first `best_path_shared` frames equal the stack's.
    best_path: Vec<(Item, State)>,
    best_path_shared: usize,
    best_state: State,
    best_window: Vec<usize>,
    best_unknown: Vec<usize>,
    best_lost: Vec<State>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a KeyOps, steps_max: u64) -> Search<'a> {
        let n = ops.completed.len();
        // Events: (time, 0 for a call / 1 for a return, operation); calls first at equal
        // times, so intervals are closed.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, (op, _)) in ops.completed.iter().enumerate() {
            events.push((op.invoke_ns, 0, i));
            events.push((op.complete_ns, 1, i));
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut node_op = vec![usize::MAX; nodes];
        let mut node_is_call = vec![false; nodes];
        let mut node_time = vec![0; nodes];
        let mut call_node = vec![HEAD; n];
        let mut return_node = vec![HEAD; n];
        for (e, &(time, kind, op)) in events.iter().enumerate() {
            let node = e + 1;
            node_op[node] = op;
            node_time[node] = time;
            node_is_call[node] = kind == 0;
            if kind == 0 {
                call_node[op] = node;
            } else {
                return_node[op] = node;
            }
        }
        let (next, prev) = circular_links(nodes);

        let m = ops.unknown.len();
        let (unknown_next, unknown_prev) = circular_links(m + 1);
        let mut last_with_step: HashMap<Step, usize> = HashMap::new();
        let unknown_twin = ops.unknown.iter().enumerate().map(|(k, (_, step))| last_with_step.insert(*step, k)).collect();

        let mut unknown_cas_by_expected: HashMap<State, Vec<usize>> = HashMap::new();
        for (k, (_, step)) in ops.unknown.iter().enumerate() {
            if let Step::MaybeCas { expected, .. } = step {
                unknown_cas_by_expected.entry(*expected).or_default().push(k);
            }
        }
        let supply = Supply::new(ops);

        let mut seed = ZOBRIST_SEED;
        let zobrist = (0..n).map(|_| (u128::from(splitmix64(&mut seed)) << 64) | u128::from(splitmix64(&mut seed))).collect();

        Search {
            ops,
            steps_max,
            steps: 0,
            next,
            prev,
            node_op,
            node_is_call,
            node_time,
            call_node,
            return_node,
            unknown_next,
            unknown_prev,
            unknown_twin,
            unknown_cas_by_expected,
            zobrist,
            supply,
            state: None,
            fingerprint: 0,
            completed_done: 0,
            unknown_used: BitSet::new(m),
            stack: Vec::new(),
            window: Vec::new(),
            deadline: 0,
            enable_equal: Vec::new(),
            enable_differ: Vec::new(),
            cache: VisitedCache::new(m),
            best_progress: None,
            best_path: Vec::new(),
            best_path_shared: 0,
            best_state: None,
            best_window: Vec::new(),
            best_unknown: Vec::new(),
            best_lost: Vec::new(),
        }
    }

    fn run(mut self) -> KeyVerdict {
        let ops = self.ops.completed.len() + self.ops.unknown.len();
        let root = node_key(self.fingerprint, self.state);
        let recorded = self.cache.visit(root, &self.unknown_used);
        assert!(recorded, "internal: the root is the first node visited");
        match self.search() {
            SearchEnd::Linearizable => KeyVerdict::Linearizable { ops, steps: self.steps },
            SearchEnd::BudgetExhausted => KeyVerdict::Unknown { ops, steps: self.steps },
            SearchEnd::NotLinearizable => KeyVerdict::NotLinearizable(self.violation(ops)),
        }
    }

    fn search(&mut self) -> SearchEnd {
        let mut action = Action::Enter;
        loop {
            if self.steps > self.steps_max {
                return SearchEnd::BudgetExhausted;
            }
            action = match action {
                Action::Enter if self.completed_done == self.ops.completed.len() => {
                    // Unknown operations left can all take effect after everything else.
                    return SearchEnd::Linearizable;
                }
                Action::Enter => self.enter(),
                Action::ResumeCompleted(pos) => self.try_completed(pos),
                Action::ResumeUnknown(node) => self.try_unknown(node),
                Action::Backtrack => match self.backtrack() {
                    Some(action) => action,
                    None => return SearchEnd::NotLinearizable,
                },
            };
        }
    }

    /// At a new node: take a forced move if there is one, else try the candidates.
    fn enter(&mut self) -> Action {
        self.compute_window();
        let ops = self.ops;
        if self.supply.dooms(self.state) {
            return Action::Backtrack;
        }
        for pos in 0..self.window.len() {
            self.steps += 1;
            let op = self.window[pos];
            let step = ops.completed[op].1;
            if step.is_pure() && step.apply(self.state).is_some() {
                return if self.linearize_completed(op, self.state, true) { Action::Enter } else { Action::Backtrack };
            }
        }
        self.try_completed(0)
    }

    /// Tries the completed candidates from window position `start` on, then the unknown ones.
    fn try_completed(&mut self, start: usize) -> Action {
        let ops = self.ops;
        let after_unknown = self.after_unknown();
        for pos in start..self.window.len() {
            self.steps += 1;
            let op = self.window[pos];
            let step = ops.completed[op].1;
            if after_unknown && matches!(step, Step::Write { .. }) {
                // Dominated: the node before the unknown operation tried this write.
                continue;
            }
            if let Some(next_state) = step.apply(self.state) {
                if self.linearize_completed(op, next_state, false) {
                    return Action::Enter;
                }
            }
        }
        self.try_unknown(self.unknown_next[HEAD])
    }

    /// Tries the unknown candidates from node `node` of the unknown list on.
    fn try_unknown(&mut self, mut node: usize) -> Action {
        let ops = self.ops;
        let after_unknown = self.after_unknown();
        let mut enablers_ready = false;
        while node != HEAD {
            let k = node - 1;
            node = self.unknown_next[node];
            let (op, step) = &ops.unknown[k];
            if op.invoke_ns > self.deadline {
                break;
            }
            self.steps += 1;
            if after_unknown && !matches!(step, Step::MaybeCas { expected, .. } if *expected == self.state) {
                // Dominated: only a CAS that depends on the previous unknown operation adds
                // anything to taking that one alone.
                continue;
            }
            let Some(next_state) = step.apply(self.state) else { continue };
            if next_state == self.state || self.has_pending_twin(k) {
                continue;
            }
            if !enablers_ready {
                self.compute_enablers();
                enablers_ready = true;
            }
            if !self.enables(next_state) {
                continue;
            }
            if self.linearize_unknown(k, next_state) {
                return Action::Enter;
            }
        }
        Action::Backtrack
    }

    /// Whether the current node was reached through an unknown operation.
    fn after_unknown(&self) -> bool {
        self.stack.last().is_some_and(|f| matches!(f.item, Item::Unknown(_)))
    }

    /// Whether an earlier unknown operation with the same step is still pending (then it is
    /// tried instead: the two are interchangeable).
    fn has_pending_twin(&self, k: usize) -> bool {
        let mut twin = self.unknown_twin[k];
        while let Some(j) = twin {
            if !self.unknown_used.contains(j) {
                return true;
            }
            twin = self.unknown_twin[j];
        }
        false
    }

    /// Computes the states that let a pending read or CAS, or an unknown CAS, go next.
    fn compute_enablers(&mut self) {
        let ops = self.ops;
        self.enable_equal.clear();
        self.enable_differ.clear();
        for &op in &self.window {
            self.steps += 1;
            match ops.completed[op].1.enabler() {
                Some(Enabler::Equal(s)) => self.enable_equal.push(s),
                Some(Enabler::Differ(s)) => self.enable_differ.push(s),
                None => {}
            }
        }
        self.enable_equal.sort_unstable();
        self.enable_equal.dedup();
    }

    /// Whether reaching `state` lets something go next (after [`Search::compute_enablers`]):
    /// a pending read or CAS, or an unknown CAS that expects `state`.
    fn enables(&mut self, state: State) -> bool {
        if self.enable_equal.binary_search(&state).is_ok() || self.enable_differ.iter().any(|&e| e != state) {
            return true;
        }
        let ops = self.ops;
        for &j in self.unknown_cas_by_expected.get(&state).map_or(&[][..], Vec::as_slice) {
            self.steps += 1;
            if ops.unknown[j].0.invoke_ns > self.deadline {
                break;
            }
            if !self.unknown_used.contains(j) {
                return true;
            }
        }
        false
    }

    /// The unknown operations pending and invoked by the deadline, in list order.
    fn unknown_candidates(&self) -> impl Iterator<Item = usize> + '_ {
        let mut node = self.unknown_next[HEAD];
        std::iter::from_fn(move || {
            if node == HEAD || self.ops.unknown[node - 1].0.invoke_ns > self.deadline {
                return None;
            }
            let k = node - 1;
            node = self.unknown_next[node];
            Some(k)
        })
    }

    fn linearize_completed(&mut self, op: usize, next_state: State, forced: bool) -> bool {
        let fingerprint = self.fingerprint ^ self.zobrist[op];
        if !self.cache.visit(node_key(fingerprint, next_state), &self.unknown_used) {
            return false;
        }
        self.stack.push(Frame { item: Item::Completed(op), state_before: self.state, forced });
        lift(&mut self.next, &mut self.prev, self.call_node[op]);
        lift(&mut self.next, &mut self.prev, self.return_node[op]);
        self.fingerprint = fingerprint;
        self.state = next_state;
        self.completed_done += 1;
        self.supply.linearize_completed(op);
        true
    }

    fn linearize_unknown(&mut self, k: usize, next_state: State) -> bool {
        self.unknown_used.insert(k);
        if !self.cache.visit(node_key(self.fingerprint, next_state), &self.unknown_used) {
            self.unknown_used.remove(k);
            return false;
        }
        self.stack.push(Frame { item: Item::Unknown(k), state_before: self.state, forced: false });
        lift(&mut self.unknown_next, &mut self.unknown_prev, k + 1);
        self.state = next_state;
        self.supply.linearize_unknown(k);
        true
    }

    /// Leaves a dead node: undoes frames until one whose node has options left, and says
    /// where to resume; `None` when the root is dead.
    fn backtrack(&mut self) -> Option<Action> {
        self.record_dead_end();
        loop {
            self.steps += 1;
            let frame = self.stack.pop()?;
            self.best_path_shared = self.best_path_shared.min(self.stack.len());
            self.state = frame.state_before;
            match frame.item {
                Item::Completed(op) => {
                    unlift(&mut self.next, &mut self.prev, self.return_node[op]);
                    unlift(&mut self.next, &mut self.prev, self.call_node[op]);
                    self.fingerprint ^= self.zobrist[op];
                    self.completed_done -= 1;
                    self.supply.undo_completed(op);
                }
                Item::Unknown(k) => {
                    unlift(&mut self.unknown_next, &mut self.unknown_prev, k + 1);
                    self.unknown_used.remove(k);
                    self.supply.undo_unknown(k);
                }
            }
            if frame.forced {
                // The forced move was the only option of its node: that node is dead too.
                continue;
            }
            self.compute_window();
            return Some(match frame.item {
                Item::Completed(op) => {
                    let pos = self.window.iter().position(|&o| o == op);
                    let pos = pos.expect("internal: an undone operation is back in its node's window");
                    Action::ResumeCompleted(pos + 1)
                }
                Item::Unknown(k) => Action::ResumeUnknown(self.unknown_next[k + 1]),
            });
        }
    }

    /// Computes the window and the deadline of the current node.
    fn compute_window(&mut self) {
        self.window.clear();
        let mut node = self.next[HEAD];
        while node != HEAD && self.node_is_call[node] {
            self.window.push(self.node_op[node]);
            node = self.next[node];
        }
        assert!(node != HEAD, "internal: a pending completed operation has no return event");
        self.deadline = self.node_time[node];
    }

    /// Remembers the current (dead) node if it got further than any before.
    fn record_dead_end(&mut self) {
        let progress = (self.deadline, self.completed_done);
        if self.best_progress.is_some_and(|best| best >= progress) {
            return;
        }
        self.best_progress = Some(progress);
        self.best_path.truncate(self.best_path_shared);
        self.best_path.extend(self.stack[self.best_path_shared..].iter().map(|f| (f.item, f.state_before)));
        self.best_path_shared = self.stack.len();
        self.best_state = self.state;
        self.best_window.clone_from(&self.window);
        let candidates: Vec<usize> = self.unknown_candidates().collect();
        self.best_unknown = candidates;
        self.best_lost = self.supply.lost_other_than(self.state);
    }

    fn violation(&self, ops: usize) -> Violation {
        let operation = |item: Item| match item {
            Item::Completed(i) => &self.ops.completed[i].0,
            Item::Unknown(k) => &self.ops.unknown[k].0,
        };
        let states_after = self.best_path.iter().skip(1).map(|&(_, s)| s).chain(std::iter::once(self.best_state));
        let longest_prefix: Vec<(u64, State)> =
            self.best_path.iter().zip(states_after).map(|(&(item, _), after)| (operation(item).id, after)).collect();
        let tail_start = self.best_path.len().saturating_sub(DESCRIBED_PREFIX_OPS);
        let prefix_tail = self.best_path[tail_start..].iter().map(|&(item, _)| operation(item).clone()).collect();
        // The window, then the pending operations that need a lost state, then the unknown ones.
        let linearized: HashSet<usize> = self
            .best_path
            .iter()
            .filter_map(|&(item, _)| match item {
                Item::Completed(i) => Some(i),
                Item::Unknown(_) => None,
            })
            .collect();
        let needing_lost = (0..self.ops.completed.len()).filter(|i| {
            let needs = self.ops.completed[*i].1.needs();
            !linearized.contains(i) && !self.best_window.contains(i) && needs.is_some_and(|n| self.best_lost.contains(&n))
        });
        let stuck_ops = self
            .best_window
            .iter()
            .copied()
            .chain(needing_lost)
            .map(|i| self.ops.completed[i].0.clone())
            .chain(self.best_unknown.iter().map(|&k| self.ops.unknown[k].0.clone()))
            .collect();
        Violation { key: self.ops.key, ops, steps: self.steps, longest_prefix, prefix_tail, stuck_ops, lost_states: self.best_lost.clone() }
    }
}

/// The cache key of a node: the fingerprint of its completed operations and its state.
fn node_key(fingerprint: u128, state: State) -> u128 {
    fingerprint ^ state_key(state)
}

/// Links of a circular list of `nodes` nodes in index order (node 0 is the head).
fn circular_links(nodes: usize) -> (Vec<usize>, Vec<usize>) {
    let next = (0..nodes).map(|i| (i + 1) % nodes).collect();
    let prev = (0..nodes).map(|i| (i + nodes - 1) % nodes).collect();
    (next, prev)
}

/// Removes `node` from its list; it keeps its own links for [`unlift`].
fn lift(next: &mut [usize], prev: &mut [usize], node: usize) {
    next[prev[node]] = next[node];
    prev[next[node]] = prev[node];
}

/// Puts back the node most recently lifted (lifts are undone in reverse order).
fn unlift(next: &mut [usize], prev: &mut [usize], node: usize) {
    next[prev[node]] = node;
    prev[next[node]] = node;
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    // --- helpers -------------------------------------------------------------------------

    /// Builds operations with ids in order, on key 0 unless moved with `on_key`.
    struct H {
        ops: Vec<Operation>,
    }

    impl H {
        fn new() -> H {
            H { ops: Vec::new() }
        }

        fn push(&mut self, client: u64, op: RegisterOp, outcome: Outcome, invoke_ns: u64, complete_ns: u64) -> &mut H {
            let id = self.ops.len() as u64;
            self.ops.push(Operation { id, client, key: 0, op, outcome, invoke_ns, complete_ns });
            self
        }

        fn write(&mut self, client: u64, v: Value, t0: u64, t1: u64) -> &mut H {
            self.push(client, RegisterOp::Write(v), Outcome::WriteOk, t0, t1)
        }

        fn read(&mut self, client: u64, seen: Option<Value>, t0: u64, t1: u64) -> &mut H {
            self.push(client, RegisterOp::Read, Outcome::ReadOk(seen), t0, t1)
        }

        fn cas(&mut self, client: u64, expected: Option<Value>, new: Value, swapped: bool, t0: u64, t1: u64) -> &mut H {
            self.push(client, RegisterOp::Cas { expected, new }, Outcome::CasOk(swapped), t0, t1)
        }

        fn info_write(&mut self, client: u64, v: Value, t0: u64) -> &mut H {
            self.push(client, RegisterOp::Write(v), Outcome::Info, t0, t0)
        }

        fn on_key(&mut self, key: u64) -> &mut H {
            for o in &mut self.ops {
                o.key = key;
            }
            self
        }

        fn check(&self) -> Report {
            check(&self.ops, &CheckLimits::default()).expect("a valid history")
        }
    }

    fn assert_linearizable(h: &H) {
        let r = h.check();
        assert!(r.is_linearizable(), "expected linearizable: {}\n{:#?}", r.summary(), r.keys);
    }

    fn assert_violation(h: &H) -> Violation {
        let r = h.check();
        let v = r.violations();
        assert_eq!(v.len(), 1, "expected one violation: {}", r.summary());
        v[0].clone()
    }

    /// `SplitMix64` as a test random source.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            splitmix64(&mut self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    /// A value no simulated history writes.
    const NEVER_WRITTEN: Value = u64::MAX;

    #[derive(Clone, Copy)]
    struct SimConfig {
        keys: u64,
        clients: u64,
        ops: usize,
        /// Writes and CAS (and reads) with an unknown outcome, percent.
        info_percent: u64,
        fail_percent: u64,
        /// Values drawn from `1..=range`; `None`: every write a fresh value.
        value_range: Option<u64>,
        latency_max_ns: u64,
        think_max_ns: u64,
    }

    impl SimConfig {
        fn small() -> SimConfig {
            SimConfig {
                keys: 3,
                clients: 6,
                ops: 240,
                info_percent: 8,
                fail_percent: 3,
                value_range: None,
                latency_max_ns: 1_000,
                think_max_ns: 200,
            }
        }
    }

    /// What happens to a simulated operation.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Ok,
        Fail,
        /// Took effect inside its interval, reported unknown.
        InfoApplied,
        /// Took effect after the client gave up.
        InfoLate,
        /// Never took effect, reported unknown.
        InfoLost,
    }

    /// Simulates clients against a real (atomic) register: each operation takes effect at
    /// a random instant of its interval (or later, or never, for unknown outcomes).
    fn simulate(seed: u64, cfg: SimConfig) -> Vec<Operation> {
        struct Skeleton {
            op: Operation,
            fate: Fate,
            at_ns: u64,
        }
        let mut rng = Rng(seed);
        let mut free_ns: Vec<u64> = (0..cfg.clients).map(|_| rng.below(cfg.think_max_ns + 1)).collect();
        let mut sk: Vec<Skeleton> = Vec::with_capacity(cfg.ops);
        for id in 0..cfg.ops as u64 {
            let client = (0..cfg.clients).min_by_key(|&c| (free_ns[c as usize], c)).expect("clients > 0");
            let invoke_ns = free_ns[client as usize];
            let complete_ns = invoke_ns + 1 + rng.below(cfg.latency_max_ns);
            let op = match rng.below(10) {
                0..=3 => RegisterOp::Read,
                4..=6 => RegisterOp::Write(0),
                _ => RegisterOp::Cas { expected: None, new: 0 },
            };
            let fate = if rng.percent(cfg.fail_percent) {
                Fate::Fail
            } else if rng.percent(cfg.info_percent) {
                match rng.below(3) {
                    0 => Fate::InfoApplied,
                    1 => Fate::InfoLate,
                    _ => Fate::InfoLost,
                }
            } else {
                Fate::Ok
            };
            let at_ns = match fate {
                Fate::InfoLate => complete_ns + 1 + rng.below(5 * cfg.latency_max_ns),
                _ => invoke_ns + rng.below(complete_ns - invoke_ns + 1),
            };
            let key = rng.below(cfg.keys);
            let op = Operation { id, client, key, op, outcome: Outcome::Fail, invoke_ns, complete_ns };
            sk.push(Skeleton { op, fate, at_ns });
            free_ns[client as usize] = complete_ns + rng.below(cfg.think_max_ns + 1);
        }
        let mut counter = 0;
        let fresh = |rng: &mut Rng, counter: &mut u64| match cfg.value_range {
            None => {
                *counter += 1;
                *counter
            }
            Some(r) => 1 + rng.below(r),
        };
        let mut order: Vec<usize> = (0..sk.len()).collect();
        order.sort_by_key(|&i| (sk[i].at_ns, i));
        let mut state: BTreeMap<u64, State> = BTreeMap::new();
        for i in order {
            let s = &mut sk[i];
            let applied = matches!(s.fate, Fate::Ok | Fate::InfoApplied | Fate::InfoLate);
            let current = state.entry(s.op.key).or_insert(None);
            let outcome = match s.op.op {
                RegisterOp::Read => Outcome::ReadOk(*current),
                RegisterOp::Write(_) => {
                    let v = fresh(&mut rng, &mut counter);
                    s.op.op = RegisterOp::Write(v);
                    if applied {
                        *current = Some(v);
                    }
                    Outcome::WriteOk
                }
                RegisterOp::Cas { .. } => {
                    let expected = if applied && rng.percent(50) {
                        *current
                    } else if rng.percent(20) {
                        None
                    } else {
                        Some(match cfg.value_range {
                            None => 1 + rng.below(counter + 1),
                            Some(r) => 1 + rng.below(r),
                        })
                    };
                    let new = fresh(&mut rng, &mut counter);
                    s.op.op = RegisterOp::Cas { expected, new };
                    let swapped = *current == expected;
                    if applied && swapped {
                        *current = Some(new);
                    }
                    Outcome::CasOk(swapped)
                }
            };
            s.op.outcome = match s.fate {
                Fate::Ok => outcome,
                Fate::Fail => Outcome::Fail,
                Fate::InfoApplied | Fate::InfoLate | Fate::InfoLost => Outcome::Info,
            };
        }
        sk.into_iter().map(|s| s.op).collect()
    }

    /// Linearizability by brute force, straight from the definition: some subset of the
    /// unknown writes and CAS plus all completed operations, in some order that respects
    /// real time, is accepted by the register.
    fn brute_force_linearizable(history: &[Operation]) -> bool {
        fn model(op: &Operation, s: State) -> Option<State> {
            match (op.op, op.outcome) {
                (RegisterOp::Read, Outcome::ReadOk(v)) => (v == s).then_some(s),
                (RegisterOp::Write(v), Outcome::WriteOk | Outcome::Info) => Some(Some(v)),
                (RegisterOp::Cas { expected, new }, Outcome::CasOk(true)) => (s == expected).then_some(Some(new)),
                (RegisterOp::Cas { expected, .. }, Outcome::CasOk(false)) => (s != expected).then_some(s),
                (RegisterOp::Cas { expected, new }, Outcome::Info) => Some(if s == expected { Some(new) } else { s }),
                _ => unreachable!("only kept operations reach the model"),
            }
        }
        fn go(ops: &[&Operation], used: &mut Vec<bool>, s: State) -> bool {
            let done = |i: usize, used: &[bool]| used[i] || ops[i].outcome == Outcome::Info;
            if (0..ops.len()).all(|i| done(i, used)) {
                return true;
            }
            for i in 0..ops.len() {
                if used[i] {
                    continue;
                }
                let must_wait =
                    (0..ops.len()).any(|j| !used[j] && j != i && ops[j].outcome != Outcome::Info && ops[j].complete_ns < ops[i].invoke_ns);
                if must_wait {
                    continue;
                }
                if let Some(next) = model(ops[i], s) {
                    used[i] = true;
                    if go(ops, used, next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        let kept: Vec<&Operation> =
            history.iter().filter(|o| o.outcome != Outcome::Fail && !(o.op == RegisterOp::Read && o.outcome == Outcome::Info)).collect();
        go(&kept, &mut vec![false; kept.len()], None)
    }

    // --- validation ----------------------------------------------------------------------

    #[test]
    fn malformed_histories_are_errors() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).read(1, Some(1), 20, 30);
        h.ops[1].id = 0;
        let e = check(&h.ops, &CheckLimits::default()).unwrap_err();
        assert!(e.contains("id 0 appears more than once"), "{e}");

        let mut h = H::new();
        h.write(0, 1, 50, 10);
        assert!(validate(&h.ops).unwrap_err().contains("before its invocation"));
        // An unknown outcome has no completion time to check.
        let mut h = H::new();
        h.push(0, RegisterOp::Write(1), Outcome::Info, 50, 0);
        assert!(validate(&h.ops).is_ok());

        let mut h = H::new();
        h.push(0, RegisterOp::Read, Outcome::WriteOk, 0, 1);
        assert!(validate(&h.ops).unwrap_err().contains("does not fit"));
        let mut h = H::new();
        h.push(0, RegisterOp::Write(3), Outcome::CasOk(true), 0, 1);
        assert!(check(&h.ops, &CheckLimits::default()).is_err());
    }

    #[test]
    fn empty_history_and_dropped_operations() {
        let r = check(&[], &CheckLimits::default()).unwrap();
        assert!(r.is_linearizable());
        assert!(r.keys.is_empty());

        // A failed write never took effect: reading its value is a violation.
        let mut h = H::new();
        h.push(0, RegisterOp::Write(7), Outcome::Fail, 0, 10).read(1, Some(7), 20, 30);
        assert_violation(&h);
        // A read of unknown outcome is dropped whatever it carries.
        let mut h = H::new();
        h.push(0, RegisterOp::Write(7), Outcome::Fail, 0, 10).push(1, RegisterOp::Read, Outcome::Info, 20, 30);
        let r = h.check();
        assert!(r.is_linearizable());
        assert_eq!((r.ops_checked, r.ops_dropped), (0, 2));
    }

    // --- linearizable --------------------------------------------------------------------

    #[test]
    fn sequential_write_then_read() {
        let mut h = H::new();
        h.read(0, None, 0, 5).write(0, 1, 10, 20).read(0, Some(1), 30, 40).write(1, 2, 50, 60).read(2, Some(2), 70, 80);
        assert_linearizable(&h);
        let mut h = H::new();
        h.write(0, 1, 10, 20).read(0, None, 30, 40);
        assert_violation(&h);
    }

    #[test]
    fn concurrent_read_sees_old_or_new_value() {
        for seen in [Some(1), Some(2)] {
            let mut h = H::new();
            h.write(0, 1, 0, 10).write(0, 2, 20, 40).read(1, seen, 25, 35);
            assert_linearizable(&h);
        }
        let mut h = H::new();
        h.write(0, 1, 0, 10).write(0, 2, 20, 40).read(1, None, 25, 35);
        assert_violation(&h);
    }

    #[test]
    fn intervals_are_closed() {
        // The write completes at 10 and the read is invoked at 10: concurrent, so the read
        // may precede the write.
        let mut h = H::new();
        h.write(0, 1, 0, 10).read(1, None, 10, 20);
        assert_linearizable(&h);
        let mut h = H::new();
        h.write(0, 1, 0, 10).read(1, None, 11, 20);
        assert_violation(&h);
    }

    #[test]
    fn cas_sequences() {
        let mut h = H::new();
        h.cas(0, None, 1, true, 0, 10)
            .cas(1, None, 2, false, 20, 30)
            .cas(0, Some(1), 3, true, 40, 50)
            .cas(1, Some(1), 4, false, 60, 70)
            .read(2, Some(3), 80, 90);
        assert_linearizable(&h);
        // Two concurrent CAS from the same value: only one may swap.
        let mut h = H::new();
        h.write(0, 1, 0, 10).cas(1, Some(1), 2, true, 20, 40).cas(2, Some(1), 3, false, 25, 35).read(0, Some(2), 50, 60);
        assert_linearizable(&h);
        let mut h = H::new();
        h.write(0, 1, 0, 10).cas(1, Some(1), 2, true, 20, 40).cas(2, Some(1), 3, true, 25, 35);
        assert_violation(&h);
        // A refused CAS must see a state other than its expected value.
        let mut h = H::new();
        h.write(0, 1, 0, 10).cas(1, Some(1), 2, false, 20, 30);
        assert_violation(&h);
    }

    #[test]
    fn unknown_write_never_observed() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).info_write(1, 2, 5).read(2, Some(1), 20, 30).read(2, Some(1), 40, 50);
        assert_linearizable(&h);
    }

    #[test]
    fn unknown_write_observed_later() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).info_write(1, 2, 15).read(2, Some(1), 1_000, 1_010).read(2, Some(2), 5_000, 5_010);
        assert_linearizable(&h);
        // ...but not before it was invoked,
        let mut h = H::new();
        h.read(2, Some(2), 0, 10).info_write(1, 2, 15);
        assert_violation(&h);
        // ...and it takes effect once: the value cannot come back after being overwritten.
        let mut h = H::new();
        h.info_write(1, 2, 0).read(2, Some(2), 10, 20).write(0, 3, 30, 40).read(2, Some(2), 50, 60);
        assert_violation(&h);
    }

    #[test]
    fn unknown_cas_applies_only_from_its_expected_value() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).push(1, RegisterOp::Cas { expected: Some(1), new: 5 }, Outcome::Info, 20, 0).read(2, Some(5), 100, 110);
        assert_linearizable(&h);
        let mut h = H::new();
        h.write(0, 1, 0, 10).push(1, RegisterOp::Cas { expected: Some(4), new: 5 }, Outcome::Info, 20, 0).read(2, Some(5), 100, 110);
        assert_violation(&h);
        // Chains of unknown CAS: absent -> 1 -> 2.
        let mut h = H::new();
        h.push(1, RegisterOp::Cas { expected: Some(1), new: 2 }, Outcome::Info, 0, 0)
            .push(2, RegisterOp::Cas { expected: None, new: 1 }, Outcome::Info, 5, 0)
            .read(3, Some(2), 100, 110);
        assert_linearizable(&h);
    }

    #[test]
    fn overlapping_clients() {
        // Four clients, everything overlapping: one order is w1 r1 w2 cas(2->3) r3 r3.
        let mut h = H::new();
        h.write(0, 1, 0, 100)
            .read(1, Some(1), 10, 60)
            .write(2, 2, 20, 110)
            .cas(3, Some(2), 3, true, 30, 120)
            .read(1, Some(3), 70, 130)
            .read(0, Some(3), 115, 140);
        assert_linearizable(&h);
        // The last read cannot see 1 again: after cas(2->3) completed nothing writes 1.
        h.ops[5].outcome = Outcome::ReadOk(Some(1));
        assert_violation(&h);
    }

    // --- not linearizable ----------------------------------------------------------------

    #[test]
    fn read_of_a_value_never_written() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).write(1, 2, 5, 15).read(2, Some(9), 8, 30);
        let v = assert_violation(&h);
        assert_eq!(v.key, 0);
        assert!(v.stuck_ops.iter().any(|o| o.id == 2), "{v:?}");
        let text = v.describe();
        assert!(text.contains("#2 client 2") && text.contains("the read returned 9"), "{text}");
    }

    #[test]
    fn stale_read_after_a_completed_write() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).read(1, Some(1), 5, 15).write(0, 2, 20, 30).read(1, Some(1), 40, 50).read(2, Some(2), 60, 70);
        let v = assert_violation(&h);
        // The prefix reaches w2 (state 2); the read at 40..50 cannot see 1 there.
        assert_eq!(v.state_after_prefix(), Some(2));
        assert_eq!(v.longest_prefix.iter().map(|&(id, _)| id).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(v.stuck_ops.iter().map(|o| o.id).collect::<Vec<_>>(), vec![3]);
        let text = v.describe();
        assert!(text.contains("Register after the prefix: 2"), "{text}");
        assert!(text.contains("the read returned 1 but the register holds 2"), "{text}");
    }

    #[test]
    fn stale_read_in_a_random_history_is_caught() {
        let mut caught = 0;
        for seed in 0..60u64 {
            let cfg = SimConfig { keys: 2, info_percent: 5, ..SimConfig::small() };
            let mut ops = simulate(seed, cfg);
            let r = check(&ops, &CheckLimits::default()).unwrap();
            assert!(r.is_linearizable(), "seed {seed}: the unmutated history must pass: {}", r.summary());
            // A read after a completed write of a new value, made to see an older value
            // written (certainly, with unique values) before that write.
            let sets = |o: &Operation| match (o.op, o.outcome) {
                (RegisterOp::Write(v), Outcome::WriteOk) | (RegisterOp::Cas { new: v, .. }, Outcome::CasOk(true)) => Some(v),
                _ => None,
            };
            let mut candidates = Vec::new();
            for (ri, r) in ops.iter().enumerate() {
                if !matches!(r.outcome, Outcome::ReadOk(_)) {
                    continue;
                }
                let newer = ops.iter().filter(|b| b.key == r.key && sets(b).is_some() && b.complete_ns < r.invoke_ns);
                let older = newer.flat_map(|b| ops.iter().filter(move |a| a.key == b.key && a.complete_ns < b.invoke_ns).filter_map(sets));
                if let Some(old) = older.last() {
                    candidates.push((ri, old));
                }
            }
            if candidates.is_empty() {
                continue;
            }
            let (ri, old) = candidates[(seed as usize * 7919) % candidates.len()];
            println!("seed {seed}: op {} now reads stale value {old}", ops[ri].id);
            ops[ri].outcome = Outcome::ReadOk(Some(old));
            let r = check(&ops, &CheckLimits::default()).unwrap();
            let v = r.violations();
            assert_eq!(v.len(), 1, "seed {seed}: {}", r.summary());
            assert_eq!(v[0].key, ops[ri].key);
            caught += 1;
        }
        assert!(caught >= 50, "only {caught} histories had a stale-read candidate");
    }

    #[test]
    fn cas_from_an_unreachable_state() {
        let mut h = H::new();
        h.write(0, 1, 0, 10).write(1, 2, 5, 15).cas(2, Some(5), 6, true, 20, 30);
        let v = assert_violation(&h);
        let text = v.describe();
        assert!(text.contains("needs the register to hold 5"), "{text}");
    }

    #[test]
    fn reads_going_backward() {
        // w2 overlaps both reads; once a read saw 2, a later read cannot see 1.
        let mut h = H::new();
        h.write(0, 1, 0, 1).write(0, 2, 2, 100).read(1, Some(2), 10, 11).read(2, Some(1), 20, 21);
        assert_violation(&h);
        // Forward is fine.
        let mut h = H::new();
        h.write(0, 1, 0, 1).write(0, 2, 2, 100).read(1, Some(1), 10, 11).read(2, Some(2), 20, 21);
        assert_linearizable(&h);
    }

    #[test]
    fn keys_are_independent() {
        let mut good = H::new();
        good.write(0, 1, 0, 10).read(1, Some(1), 20, 30).on_key(1);
        let mut bad = H::new();
        bad.write(0, 1, 0, 10).write(1, 2, 20, 30).read(1, Some(1), 40, 50).on_key(2);
        let mut h = H::new();
        h.ops = good.ops.clone();
        for (i, mut o) in bad.ops.into_iter().enumerate() {
            o.id = 100 + i as u64;
            h.ops.push(o);
        }
        let r = h.check();
        assert!(!r.is_linearizable());
        assert!(matches!(r.keys[&1], KeyVerdict::Linearizable { ops: 2, .. }), "{:?}", r.keys[&1]);
        let v = r.violations();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, 2);
        assert!(r.summary().contains("NOT LINEARIZABLE on 1 key(s) [2]"), "{}", r.summary());
        assert!(r.unknown_keys().is_empty());
    }

    // --- against the definition ----------------------------------------------------------

    /// Random single-key histories of up to `ops_max` operations, checked against
    /// [`brute_force_linearizable`]; returns (linearizable, not) counts.
    fn compare_with_brute_force(seed: u64, cases: usize, ops_max: u64, info_percent: u64) -> (usize, usize) {
        let mut rng = Rng(seed);
        let (mut yes, mut no) = (0, 0);
        let value = |rng: &mut Rng| match rng.below(3) {
            0 => None,
            v => Some(v),
        };
        for case in 0..cases {
            let n = 1 + rng.below(ops_max);
            let mut ops = Vec::new();
            for id in 0..n {
                let invoke_ns = rng.below(2 * ops_max);
                let complete_ns = invoke_ns + rng.below(ops_max);
                let (op, ok) = match rng.below(3) {
                    0 => (RegisterOp::Read, Outcome::ReadOk(value(&mut rng))),
                    1 => (RegisterOp::Write(1 + rng.below(2)), Outcome::WriteOk),
                    _ => (RegisterOp::Cas { expected: value(&mut rng), new: 1 + rng.below(2) }, Outcome::CasOk(rng.percent(50))),
                };
                let outcome = if rng.percent(info_percent) {
                    Outcome::Info
                } else if rng.percent(5) {
                    Outcome::Fail
                } else {
                    ok
                };
                ops.push(Operation { id, client: id, key: 0, op, outcome, invoke_ns, complete_ns });
            }
            let expected = brute_force_linearizable(&ops);
            let r = check(&ops, &CheckLimits::default()).unwrap();
            assert!(r.unknown_keys().is_empty());
            assert_eq!(r.is_linearizable(), expected, "seed {seed} case {case}: {ops:#?}\n{:#?}", r.keys);
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        println!("seed {seed}: {yes} linearizable, {no} not");
        (yes, no)
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let (yes, no) = compare_with_brute_force(0x5eed, 20_000, 7, 20);
        assert!(yes > 5_000 && no > 5_000, "both verdicts well represented: {yes} / {no}");
        // Many unknown outcomes: exercises their pruning rules.
        let (yes, no) = compare_with_brute_force(0xfeed, 10_000, 8, 45);
        assert!(yes > 2_000 && no > 2_000, "both verdicts well represented: {yes} / {no}");
    }

    // --- generated histories -------------------------------------------------------------

    #[test]
    fn simulated_histories_are_linearizable_and_mutations_are_caught() {
        for seed in 0..200u64 {
            let cfg = SimConfig { value_range: if seed % 4 == 3 { Some(4) } else { None }, ..SimConfig::small() };
            let mut ops = simulate(seed, cfg);
            let r = check(&ops, &CheckLimits::default()).unwrap();
            println!("seed {seed}: {}", r.summary());
            assert!(r.is_linearizable(), "seed {seed}: {}\n{:#?}", r.summary(), r.violations());

            let reads: Vec<usize> = (0..ops.len()).filter(|&i| matches!(ops[i].outcome, Outcome::ReadOk(_))).collect();
            let victim = reads[(Rng(seed).next() % reads.len() as u64) as usize];
            let victim_id = ops[victim].id;
            let mut future = ops.clone();

            // One read now sees a value nobody wrote.
            ops[victim].outcome = Outcome::ReadOk(Some(NEVER_WRITTEN));
            let r = check(&ops, &CheckLimits::default()).unwrap();
            let v = r.violations();
            assert_eq!(v.len(), 1, "seed {seed}: {}", r.summary());
            assert_eq!(v[0].key, ops[victim].key, "seed {seed}");
            assert!(v[0].stuck_ops.iter().any(|o| o.id == victim_id), "seed {seed}: {}", v[0].describe());

            // One read now sees the value of a write invoked after the read completed.
            read_from_the_future(&mut future, victim);
            let r = check(&future, &CheckLimits::default()).unwrap();
            let v = r.violations();
            assert_eq!(v.len(), 1, "seed {seed}: {}", r.summary());
            assert_eq!(v[0].key, future[victim].key, "seed {seed}");
            assert!(v[0].stuck_ops.iter().any(|o| o.id == victim_id), "seed {seed}: {}", v[0].describe());
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut ops = simulate(42, SimConfig::small());
        let a = check(&ops, &CheckLimits::default()).unwrap();
        ops.reverse();
        let b = check(&ops, &CheckLimits::default()).unwrap();
        assert_eq!(a.keys, b.keys);
    }

    #[test]
    fn exhausted_budget_is_unknown() {
        let ops = simulate(7, SimConfig::small());
        let r = check(&ops, &CheckLimits { steps_max_per_key: 20 }).unwrap();
        assert!(!r.is_linearizable());
        assert!(r.violations().is_empty());
        assert_eq!(r.unknown_keys().len(), r.keys.len());
        assert!(r.summary().contains("UNKNOWN on 3 key(s)"), "{}", r.summary());
        // The same history with the default budget passes.
        assert!(check(&ops, &CheckLimits::default()).unwrap().is_linearizable());
    }

    // --- internals -----------------------------------------------------------------------

    #[test]
    fn bit_set_and_subsets() {
        let mut a = BitSet::new(130);
        let mut b = BitSet::new(130);
        for i in [0, 63, 64, 129] {
            a.insert(i);
            b.insert(i);
        }
        b.insert(100);
        assert!(a.contains(129) && !a.contains(100));
        assert!(is_subset(a.words(), b.words()) && !is_subset(b.words(), a.words()));
        b.remove(100);
        assert_eq!(a, b);
    }

    #[test]
    fn cache_skips_dominated_nodes() {
        let mut c = VisitedCache::new(70);
        let mut used = BitSet::new(70);
        used.insert(3);
        assert!(c.visit(1, &used));
        assert!(!c.visit(1, &used), "the same node twice");
        used.insert(69);
        assert!(!c.visit(1, &used), "a superset of unknown operations is dominated");
        assert!(c.visit(2, &used), "another fingerprint");
        let fewer = BitSet::new(70);
        assert!(c.visit(1, &fewer), "a subset is not dominated");
        assert_ne!(state_key(None), state_key(Some(0)));
    }

    /// Makes the read `victim` see the value of a write of unknown outcome added just after
    /// the read completes: certainly not linearizable, yet the value stays writable, so the
    /// search has to rule out every order before the read's completion.
    fn read_from_the_future(ops: &mut Vec<Operation>, victim: usize) {
        let r = ops[victim].clone();
        let id = ops.iter().map(|o| o.id).max().unwrap_or(0) + 1;
        let client = ops.iter().map(|o| o.client).max().unwrap_or(0) + 1;
        let op = RegisterOp::Write(NEVER_WRITTEN);
        let at = r.complete_ns + 1;
        ops.push(Operation { id, client, key: r.key, op, outcome: Outcome::Info, invoke_ns: at, complete_ns: at });
        ops[victim].outcome = Outcome::ReadOk(Some(NEVER_WRITTEN));
    }

    // --- speed ---------------------------------------------------------------------------

    /// A CI-sized history: 5 keys x 2,000 ops, 10 clients, ~5% unknown outcomes.
    fn ci_sized(seed: u64, value_range: Option<u64>) -> Vec<Operation> {
        simulate(
            seed,
            SimConfig {
                keys: 5,
                clients: 10,
                ops: 10_000,
                info_percent: 5,
                fail_percent: 2,
                value_range,
                latency_max_ns: 10_000_000,
                think_max_ns: 1_000_000,
            },
        )
    }

    #[test]
    fn measure_ci_sized_history() {
        for (name, range) in [("unique values", None), ("values 1..=5", Some(5))] {
            let ops = ci_sized(1, range);
            let started = Instant::now();
            let r = check(&ops, &CheckLimits::default()).unwrap();
            println!("{name}: {} ops: {} (wall {:?})", ops.len(), r.summary(), started.elapsed());
            assert!(r.is_linearizable(), "{}", r.summary());
            // A deterministic bound on the work, so a slowdown shows up as a failure.
            assert!(r.steps < 20 * ops.len() as u64, "{} steps", r.steps);
        }
    }

    /// Larger and harder shapes, for measuring (`cargo test --release -- --ignored --nocapture`).
    #[test]
    #[ignore = "measurement: cargo test --release -- --ignored --nocapture measure_stress"]
    fn measure_stress() {
        let shapes: [(&str, SimConfig); 5] = [
            (
                "CI 5 keys x 2000",
                SimConfig {
                    keys: 5,
                    clients: 10,
                    ops: 10_000,
                    info_percent: 5,
                    fail_percent: 2,
                    value_range: None,
                    latency_max_ns: 10_000_000,
                    think_max_ns: 1_000_000,
                },
            ),
            (
                "20k ops 5 keys",
                SimConfig {
                    keys: 5,
                    clients: 10,
                    ops: 20_000,
                    info_percent: 5,
                    fail_percent: 2,
                    value_range: None,
                    latency_max_ns: 10_000_000,
                    think_max_ns: 1_000_000,
                },
            ),
            (
                "1 key 10 clients 4000",
                SimConfig {
                    keys: 1,
                    clients: 10,
                    ops: 4_000,
                    info_percent: 5,
                    fail_percent: 2,
                    value_range: None,
                    latency_max_ns: 10_000_000,
                    think_max_ns: 100_000,
                },
            ),
            (
                "1 key 10 clients 4000 vals 1..=3",
                SimConfig {
                    keys: 1,
                    clients: 10,
                    ops: 4_000,
                    info_percent: 5,
                    fail_percent: 2,
                    value_range: Some(3),
                    latency_max_ns: 10_000_000,
                    think_max_ns: 100_000,
                },
            ),
            (
                "1 key 20 clients 4000 10% info",
                SimConfig {
                    keys: 1,
                    clients: 20,
                    ops: 4_000,
                    info_percent: 10,
                    fail_percent: 2,
                    value_range: None,
                    latency_max_ns: 10_000_000,
                    think_max_ns: 100_000,
                },
            ),
        ];
        for (name, cfg) in shapes {
            for seed in 1..=3 {
                let mut ops = simulate(seed, cfg);
                let r = check(&ops, &CheckLimits::default()).unwrap();
                println!("{name} seed {seed}: {}", r.summary());
                let reads: Vec<usize> = (0..ops.len()).filter(|&i| matches!(ops[i].outcome, Outcome::ReadOk(_))).collect();
                let victim = reads[reads.len() / 2];
                let mut future = ops.clone();
                ops[victim].outcome = Outcome::ReadOk(Some(NEVER_WRITTEN));
                let r = check(&ops, &CheckLimits::default()).unwrap();
                println!("{name} seed {seed} never written: {}", r.summary());
                read_from_the_future(&mut future, victim);
                let r = check(&future, &CheckLimits::default()).unwrap();
                println!("{name} seed {seed} from the future: {}", r.summary());
            }
        }
    }
}
