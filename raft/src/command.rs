//! The replicated commands (the `D` of the Raft log) and their responses (`R`).
//!
//! Two kinds of command share the log today (docs/SHARDING.md):
//! - catalog commands name tenants and tables by name and are resolved where they apply;
//!   they will be the meta group's;
//! - [`Command::Write`] is a data command, already resolved by the proposing leader
//!   ([`crate::cells`]): full storage keys (row keys hashed), family ids, and values as
//!   stored (sealed for an encrypted tenant), with a compare-and-swap condition on stored
//!   bytes. Applying it needs no catalog and no key, only the set of live tables (a write
//!   that raced with a `DropTable` is refused, not written under a dropped table).

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;

/// Format version of an encoded command (first byte; the rest is postcard). Version 3
/// resolves data writes at proposal ([`CellWrite`]); versions 1 and 2 (names resolved at
/// apply, values sealed at apply) are refused with an error that says so.
pub const COMMAND_FORMAT_V3: u8 = 3;

/// A replicated state-machine command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// With `keys`, the tenant is created encrypted. Its first data shard covers its whole
    /// key range, on `replicas` (chosen by the proposer; the shard id is allocated at apply).
    CreateTenant {
        name: String,
        keys: Option<NewTenantKeys>,
        replicas: Vec<u64>,
    },
    CreateTable {
        tenant: String,
        name: String,
        families: Vec<String>,
        hashed_row_keys: bool,
    },
    /// Removes the table from the catalog and records it as dropped: every shard of the
    /// tenant then clears its cells ([`Command::ClearTable`]).
    DropTable {
        tenant: String,
        name: String,
    },
    /// Cell changes of one table, applied atomically; with a condition, only if it holds.
    Write(CellWrite),
    /// Adds value key `version` (must be the tenant's latest + 1), current from now on; with
    /// `hash_key`, also the row-key hashing key (a tenant that had none).
    RotateKey {
        tenant: String,
        version: u32,
        master_key_id: [u8; 8],
        #[serde(with = "serde_bytes")]
        data_key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        hash_key: Option<Vec<u8>>,
    },
    /// Starts (or resumes) rewriting the tenant's values under its current key version.
    StartReencrypt {
        tenant: String,
    },
    /// Moves a re-encryption job from `cursor` to `next_cursor` (empty: done), after the
    /// shard holding the values between them applied their [`Command::Reseal`]. Refused
    /// unless the job is unfinished, at `cursor`, with this target.
    JobProgress {
        tenant: String,
        target: u32,
        #[serde(with = "serde_bytes")]
        cursor: Vec<u8>,
        #[serde(with = "serde_bytes")]
        next_cursor: Vec<u8>,
        visited: u64,
        rewritten: u64,
    },
    /// Erases a retired key version that nothing uses (checked by the proposer).
    DestroyKey {
        tenant: String,
        version: u32,
    },
    /// Records a data shard's descriptor as its leader reports it (after a replica change),
    /// if it is newer than the map's ([`crate::shard::Epoch`]).
    UpdateShard {
        desc: crate::shard::ShardDesc,
    },
    /// Data shard: clears the cells of a dropped table in the shard's range and refuses
    /// writes to it from then on.
    ClearTable {
        shard: u64,
        tenant: u32,
        table: u32,
    },
    /// Data shard: re-sealed values of a re-encryption step, prepared by the leader: each
    /// `new` replaces `old`; refused, writing nothing, if any `old` is no longer stored.
    Reseal {
        shard: u64,
        epoch: u64,
        replacements: Vec<Replacement>,
    },
    /// Meta group: hands out `count` new shard ids (1 ..= [`SHARD_IDS_ALLOC_MAX`]), never
    /// used before and never handed out again; the outcome is the first
    /// ([`Outcome::ShardIds`]), the others follow it.
    AllocShardIds {
        count: u64,
    },
    /// Data shard: splits the shard at `at` (a boundary strictly inside its range): it keeps
    /// `[start, at)` and its id, a new shard `new_id` (from [`Command::AllocShardIds`]) gets
    /// `[at, end)`, on the same replicas; both get `version + 1`. Refused, writing nothing,
    /// unless routed with the shard's current epoch `version` ([`crate::split_apply`]).
    Split {
        shard: u64,
        epoch: u64,
        #[serde(with = "serde_bytes")]
        at: Vec<u8>,
        new_id: u64,
    },
    /// Meta group: records splits of shard `pieces[0].id` in the shard map, as a replica
    /// of it reports them: the descriptors that now tile the map's range of that shard
    /// ([`crate::shard::ShardMap::record_split`]). An older or repeated report is ignored.
    RecordSplit {
        pieces: Vec<crate::shard::ShardDesc>,
    },
    /// Data shard (the right-hand side of a merge, the source): freezes the shard for a
    /// merge into its left neighbour `target` (whose epoch is `target_epoch` and whose
    /// voters are `voters`): from this entry on it takes no write, split or re-encryption
    /// step. Refused unless routed with the shard's epoch `version`, with the same voters,
    /// no learner and no change of replicas in progress. The outcome is the entry's index
    /// ([`Outcome::MergePrepared`]).
    PrepareMerge {
        shard: u64,
        epoch: u64,
        target: u64,
        target_epoch: crate::shard::Epoch,
        voters: Vec<u64>,
    },
    /// Data shard (the left-hand side, the target): takes the range of `source` (its right
    /// neighbour, frozen by `PrepareMerge` at `prepare_index`): every replica waits until
    /// its replica of the source has applied `prepare_index`, then in one batch extends its
    /// range to the source's end, takes epoch `(max conf_ver, max version + 1)` and removes
    /// the source's state. Refused unless routed with the shard's epoch (conf_ver and
    /// version) and the source's state is as prepared. No data moves.
    CommitMerge {
        shard: u64,
        epoch: crate::shard::Epoch,
        source: crate::shard::ShardDesc,
        prepare_index: u64,
    },
    /// Data shard (a merge's source): ends a merge that can no longer be committed (the
    /// target's epoch changed since `PrepareMerge`): the shard takes writes again.
    RollbackMerge {
        shard: u64,
        target_epoch: crate::shard::Epoch,
    },
    /// Meta group: the descriptors that now tile a range of the shard map, as a replica
    /// reports them after a merge: they replace the map's shards of that range when each
    /// is newer than the map's shards it overlaps ([`crate::shard::ShardMap::record_tiling`]).
    /// An older or repeated report is ignored.
    RecordShards {
        pieces: Vec<crate::shard::ShardDesc>,
    },
    /// Meta group: adds a grant as entries written before access sessions carry it (a grant
    /// that requires no session); [`Command::AddGrant`] is proposed now.
    CreateGrant {
        grant: crate::access::GrantV1,
    },
    /// Meta group: removes a grant.
    RevokeGrant {
        id: u64,
    },
    /// Meta group: records a token (its id and secret drawn by the proposer; the record
    /// holds the secret's SHA-256 only). Refused if the id exists.
    CreateToken {
        token: crate::access::Token,
    },
    /// Meta group: marks a token revoked.
    RevokeToken {
        id: String,
    },
    /// Meta group: appends encoded audit records ([`crate::audit::Record`]) to the audit
    /// log, in order (at most [`crate::audit::AUDIT_RECORDS_PER_COMMAND_MAX`]).
    Audit {
        records: Vec<serde_bytes::ByteBuf>,
    },
    /// Meta group: applies `cmd` (a catalog command) and appends `record` with its outcome
    /// in the same batch: the change and its audit record are applied together or not at
    /// all. A rejected `cmd` writes nothing but the record.
    Audited {
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
        cmd: Box<Command>,
    },
    /// Meta group: opens an access session ([`crate::access::Session`], its id drawn by
    /// the proposer, its version the entry's index). Refused unless a live grant of its
    /// principal that requires a session covers its scope and allows its duration (checked
    /// at its `opened_at_ms`). Ended sessions beyond [`crate::access::SESSIONS_MAX`] are
    /// pruned, oldest first.
    OpenSession {
        session: crate::access::Session,
    },
    /// Meta group: closes an open access session.
    CloseSession {
        id: String,
        closed_at_ms: u64,
        closed_by: String,
    },
    /// Meta group: adds a grant ([`crate::access`]); its id is drawn at apply
    /// ([`Outcome::Granted`]), its version is the entry's index. Refused unless the tenant
    /// exists, and the table and family when named.
    AddGrant {
        grant: crate::access::Grant,
    },
    /// Meta group: creates, takes over, updates or forgets a load job
    /// ([`crate::load::LoadJob`]; `job.owner` is the caller, `by_admin` whether it is a
    /// cluster admin, both set by the proposer). Refused for a job of another owner unless
    /// `by_admin`, and an update unless the job's run is `job.run`; the spec is written at
    /// creation only.
    PutLoadJob {
        job: crate::load::LoadJob,
        op: crate::load::LoadJobOp,
        by_admin: bool,
    },
    /// Data shard: ingests a sorted run of one table's cells, an SST file made by the
    /// leader ([`crate::ingest`]); its cells replace the stored ones as a write's would.
    /// Refused, writing nothing, unless routed with the shard's epoch `version`, inside the
    /// shard's range and the table's, and its file has its length and SHA-256.
    IngestSst(crate::ingest::SstRun),
}

impl Command {
    /// Whether the command is a data shard's (applied by a shard, not by the meta group).
    pub fn is_data_command(&self) -> bool {
        matches!(
            self,
            Command::Write(_)
                | Command::IngestSst(_)
                | Command::ClearTable { .. }
                | Command::Reseal { .. }
                | Command::Split { .. }
                | Command::PrepareMerge { .. }
                | Command::CommitMerge { .. }
                | Command::RollbackMerge { .. }
        )
    }
}

/// Most shard ids one [`Command::AllocShardIds`] hands out, count.
pub const SHARD_IDS_ALLOC_MAX: u64 = 1_024;

/// A resolved write of cells of one table (`tenant`, `table` are ids) in one data shard,
/// routed with the shard's epoch `version`: every key lies in the table's key range and in
/// the shard's, every value is as stored. Applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellWrite {
    pub shard: u64,
    pub epoch: u64,
    pub tenant: u32,
    pub table: u32,
    pub ops: Vec<CellOp>,
    /// Applied only if the stored bytes of a cell are as expected.
    pub condition: Option<RawCondition>,
}

/// One change of a [`CellWrite`]. A write of exactly one `Delete` reports whether the cell
/// existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CellOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value as stored: checksummed, or sealed under the tenant's current key.
        #[serde(with = "serde_bytes")]
        stored: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Every cell of `[start, end)` (a row, or a family of a row).
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
}

/// A compare-and-swap condition on stored bytes: the cell at `key` must be stored exactly
/// as `expected` (`None`: it must not exist). The leader reads the cell, compares the
/// opened value with the client's, and proposes the bytes it read; a change in between
/// makes the condition fail at apply, and the leader reads again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawCondition {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub expected: Option<Vec<u8>>,
}

/// A value re-sealed by a re-encryption step: `new` replaces `old` at `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub old: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub new: Vec<u8>,
}

/// The wrapped keys of a new encrypted tenant: hashing key (version 0) and value key version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTenantKeys {
    pub master_key_id: [u8; 8],
    #[serde(with = "serde_bytes")]
    pub hash_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub data_key: Vec<u8>,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![COMMAND_FORMAT_V3];
        postcard::to_extend(self, out).expect("encoding a command into a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        match bytes.split_first() {
            Some((&COMMAND_FORMAT_V3, rest)) => {
                postcard::from_bytes(rest).map_err(|e| DecodeError { what: "command", reason: e.to_string() })
            }
            Some((v @ (1 | 2), _)) => Err(DecodeError {
                what: "command",
                reason: format!(
                    "format version {v} was written by a build before data commands were resolved at proposal (format 3); \
                     this build cannot apply it: finish the log with the previous build, or start from an empty data directory"
                ),
            }),
            Some((v, _)) => Err(DecodeError { what: "command", reason: format!("unknown format version {v}") }),
            None => Err(DecodeError { what: "command", reason: "empty".into() }),
        }
    }
}

/// What a client can act on when a command is rejected by the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AppErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    /// Stored data failed its checksum.
    Corruption,
    /// The state does not allow the command (for example a key version still in use).
    FailedPrecondition,
    /// The command reached a shard that does not own its keys (any more): the route was
    /// stale (a split, a merge, or the wrong group). The router looks the keys up again.
    WrongShard,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub kind: AppErrorKind,
    pub message: String,
}

impl AppError {
    pub fn not_found(message: impl Into<String>) -> Self {
        AppError { kind: AppErrorKind::NotFound, message: message.into() }
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        AppError { kind: AppErrorKind::AlreadyExists, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError { kind: AppErrorKind::InvalidArgument, message: message.into() }
    }
    pub fn corruption(message: impl Into<String>) -> Self {
        AppError { kind: AppErrorKind::Corruption, message: message.into() }
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        AppError { kind: AppErrorKind::FailedPrecondition, message: message.into() }
    }
    pub fn wrong_shard(message: impl Into<String>) -> Self {
        AppError { kind: AppErrorKind::WrongShard, message: message.into() }
    }
}

/// The state machine's answer to one applied entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    /// The log index at which the command was applied.
    pub revision: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Outcome {
    /// Blank and membership entries, and admin commands that succeeded.
    #[default]
    Done,
    Written {
        /// For a single delete: whether the cell existed.
        existed: bool,
        /// For a conditional write: whether the condition held, and the value before.
        cas: Option<CasOutcome>,
    },
    Rejected(AppError),
    /// A re-encryption was started or stepped: its target version, and whether an
    /// unfinished one was resumed.
    Job {
        target: u32,
        resumed: bool,
    },
    /// Shard ids were allocated: `first` and the `count - 1` ids after it.
    ShardIds {
        first: u64,
        count: u64,
    },
    /// A data shard split: its descriptor now (`left`, the same id) and its new sibling's.
    Split {
        left: crate::shard::ShardDesc,
        right: crate::shard::ShardDesc,
    },
    /// A merge's source was frozen by the entry at `index`.
    MergePrepared {
        index: u64,
    },
    /// A merge's target took its source's range: its descriptor now.
    Merged {
        desc: crate::shard::ShardDesc,
    },
    /// A grant was added with this id.
    Granted {
        id: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// The cell as stored before the write (sealed for an encrypted tenant).
    pub current: Option<Vec<u8>>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::CreateTenant { name, keys, .. } => {
                write!(f, "create-tenant {name}{}", if keys.is_some() { " (encrypted)" } else { "" })
            }
            Command::CreateTable { tenant, name, families, hashed_row_keys } => {
                write!(f, "create-table {tenant}/{name} {families:?}{}", if *hashed_row_keys { " hashed" } else { "" })
            }
            Command::DropTable { tenant, name } => write!(f, "drop-table {tenant}/{name}"),
            Command::RotateKey { tenant, version, .. } => write!(f, "rotate-key {tenant} to version {version}"),
            Command::StartReencrypt { tenant } => write!(f, "start-reencrypt {tenant}"),
            Command::JobProgress { tenant, target, rewritten, .. } => {
                write!(f, "job-progress {tenant} to version {target}: {rewritten} values rewritten")
            }
            Command::UpdateShard { desc } => write!(f, "update-shard {desc}"),
            Command::ClearTable { shard, tenant, table } => write!(f, "clear-table {tenant}/{table} in shard {shard}"),
            Command::Reseal { shard, replacements, .. } => write!(f, "reseal {} values in shard {shard}", replacements.len()),
            Command::IngestSst(run) => write!(f, "ingest an SST run of {} cells ({} bytes) into shard {}", run.cells, run.bytes, run.shard),
            Command::DestroyKey { tenant, version } => write!(f, "destroy-key {tenant} version {version}"),
            Command::AllocShardIds { count } => write!(f, "alloc-shard-ids {count}"),
            Command::RecordSplit { pieces } => {
                write!(f, "record-split of shard {} into", pieces.first().map_or(0, |p| p.id))?;
                for p in pieces {
                    write!(f, " {}", p.id)?;
                }
                Ok(())
            }
            Command::Split { shard, epoch, at, new_id } => {
                write!(f, "split shard {shard} (version {epoch}) at {} into {new_id}", crate::shard::printable_key(at))
            }
            Command::PrepareMerge { shard, epoch, target, .. } => {
                write!(f, "prepare-merge of shard {shard} (version {epoch}) into {target}")
            }
            Command::CommitMerge { shard, source, prepare_index, .. } => {
                write!(f, "commit-merge of shard {} into {shard} (prepared at {prepare_index})", source.id)
            }
            Command::RollbackMerge { shard, .. } => write!(f, "rollback-merge of shard {shard}"),
            Command::CreateGrant { grant } => {
                let grant = crate::access::Grant::from(grant.clone());
                write!(f, "create-grant to {} on {}", grant.principal, grant.scope())
            }
            Command::AddGrant { grant } => {
                write!(f, "create-grant to {} on {}", grant.principal, grant.scope())?;
                if grant.session_required {
                    write!(f, " in sessions of at most {} ms", grant.session_duration_max_ms)?;
                }
                Ok(())
            }
            Command::RevokeGrant { id } => write!(f, "revoke-grant {id}"),
            Command::CreateToken { token } => write!(f, "create-token {} for {}", token.id, token.principal),
            Command::RevokeToken { id } => write!(f, "revoke-token {id}"),
            Command::Audit { records } => write!(f, "audit {} records", records.len()),
            Command::Audited { cmd, .. } => write!(f, "audited {cmd}"),
            Command::OpenSession { session } => {
                write!(f, "open-session {} for {} on {} until {}", session.id, session.principal, session.scope(), session.expires_at_ms)
            }
            Command::CloseSession { id, .. } => write!(f, "close-session {id}"),
            Command::PutLoadJob { job, op, .. } => {
                write!(f, "load-job {op:?} {} on {}/{} ({})", job.id, job.tenant, job.table, job.state.name())
            }
            Command::RecordShards { pieces } => {
                write!(f, "record-shards")?;
                for p in pieces {
                    write!(f, " {}", p.id)?;
                }
                Ok(())
            }
            Command::Write(w) => write!(
                f,
                "write table {}/{}: {} ops{}",
                w.tenant,
                w.table,
                w.ops.len(),
                if w.condition.is_some() { ", conditional" } else { "" }
            ),
        }
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "revision {}: {:?}", self.revision, self.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serde_bytes` must not change the log format: the same bytes as a plain `Vec<u8>`.
    #[test]
    fn byte_fields_encode_as_plain_sequences() {
        #[derive(Serialize)]
        enum PlainOp {
            #[allow(dead_code)]
            Put { row: Vec<u8>, family: String, qualifier: Vec<u8>, value: Vec<u8> },
        }
        let row = vec![0u8, 1, 2, 255];
        let value: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let ours = crate::cells::WriteOp::Put { row: row.clone(), family: "f".into(), qualifier: b"q".to_vec(), value: value.clone() };
        let plain = PlainOp::Put { row, family: "f".into(), qualifier: b"q".to_vec(), value };
        assert_eq!(postcard::to_allocvec(&ours).unwrap(), postcard::to_allocvec(&plain).unwrap());
    }

    #[test]
    fn command_round_trip() {
        let c = Command::CreateTable { tenant: "dân_cư".into(), name: "x".into(), families: vec!["a".into()], hashed_row_keys: true };
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        assert!(Command::decode(&[9, 1, 2]).is_err());
        assert!(Command::decode(&[4, 0]).unwrap_err().to_string().contains("unknown format version 4"));
        assert!(Command::decode(&[]).is_err());
        let w = Command::Write(CellWrite {
            shard: 3,
            epoch: 1,
            tenant: 1,
            table: 2,
            ops: vec![CellOp::Put { key: vec![1, 2], stored: vec![3] }, CellOp::DeleteRange { start: vec![1], end: vec![2] }],
            condition: Some(RawCondition { key: vec![1, 2], expected: None }),
        });
        assert_eq!(Command::decode(&w.encode()).unwrap(), w);
    }

    #[test]
    fn commands_of_earlier_formats_are_refused_naming_the_format() {
        for v in [1u8, 2] {
            let e = Command::decode(&[v, 0, 0]).unwrap_err().to_string();
            assert!(e.contains(&format!("format version {v}")) && e.contains("format 3"), "{e}");
        }
    }
}
