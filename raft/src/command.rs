//! The replicated commands (the `D` of the Raft log) and their responses (`R`).
//!
//! A command names tenants, tables and families by name; the state machine resolves names
//! to ids when it applies the command, so a command that races with a `DropTable` fails
//! cleanly with `NotFound` instead of writing under a dropped table.

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;

/// Format version of an encoded command (first byte; the rest is postcard). Version 2
/// added encryption (nonce seeds, tenant keys, key commands); version 1 is refused.
pub const COMMAND_FORMAT_V2: u8 = 2;

/// A random 96-bit seed from which a command derives the nonce of every value it seals
/// ([`kho_engine::crypto::nonce_at`]): replicas seal identically.
pub type NonceSeed = [u8; 12];

/// A replicated state-machine command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// With `keys`, the tenant is created encrypted.
    CreateTenant {
        name: String,
        keys: Option<NewTenantKeys>,
    },
    CreateTable {
        tenant: String,
        name: String,
        families: Vec<String>,
        hashed_row_keys: bool,
    },
    DropTable {
        tenant: String,
        name: String,
    },
    /// Cell mutations of one table, applied atomically; with a condition, only if it holds.
    Write {
        tenant: String,
        table: String,
        ops: Vec<WriteOp>,
        condition: Option<Condition>,
        nonce_seed: NonceSeed,
    },
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
    /// One bounded step of a re-encryption, from `cursor`; refused unless it matches the job.
    ReencryptStep {
        tenant: String,
        target: u32,
        #[serde(with = "serde_bytes")]
        cursor: Vec<u8>,
        nonce_seed: NonceSeed,
    },
    /// Erases a retired key version that nothing uses (checked by the proposer).
    DestroyKey {
        tenant: String,
        version: u32,
    },
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

/// One cell mutation. An empty family names the table's first family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// Byte fields are serialized as byte strings (`serde_bytes`): postcard writes them exactly
/// as it writes a `Vec<u8>` sequence (a varint length, then the bytes), so the log format
/// is the same, only encoding and decoding are faster.
pub enum WriteOp {
    Put {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
        family: String,
        #[serde(with = "serde_bytes")]
        qualifier: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
        family: String,
        #[serde(with = "serde_bytes")]
        qualifier: Vec<u8>,
    },
    DeleteFamily {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
        family: String,
    },
    DeleteRow {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
    },
}

/// Compare-and-swap condition: the cell's current value must equal `expected`
/// (`None`: the cell must not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(with = "serde_bytes")]
    pub row: Vec<u8>,
    pub family: String,
    #[serde(with = "serde_bytes")]
    pub qualifier: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub expected: Option<Vec<u8>>,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![COMMAND_FORMAT_V2];
        postcard::to_extend(self, out).expect("encoding a command into a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        match bytes.split_first() {
            Some((&COMMAND_FORMAT_V2, rest)) => {
                postcard::from_bytes(rest).map_err(|e| DecodeError { what: "command", reason: e.to_string() })
            }
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasOutcome {
    pub succeeded: bool,
    pub current: Option<Vec<u8>>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::CreateTenant { name, keys } => {
                write!(f, "create-tenant {name}{}", if keys.is_some() { " (encrypted)" } else { "" })
            }
            Command::CreateTable { tenant, name, families, hashed_row_keys } => {
                write!(f, "create-table {tenant}/{name} {families:?}{}", if *hashed_row_keys { " hashed" } else { "" })
            }
            Command::DropTable { tenant, name } => write!(f, "drop-table {tenant}/{name}"),
            Command::RotateKey { tenant, version, .. } => write!(f, "rotate-key {tenant} to version {version}"),
            Command::StartReencrypt { tenant } => write!(f, "start-reencrypt {tenant}"),
            Command::ReencryptStep { tenant, target, .. } => write!(f, "reencrypt-step {tenant} to version {target}"),
            Command::DestroyKey { tenant, version } => write!(f, "destroy-key {tenant} version {version}"),
            Command::Write { tenant, table, ops, condition, .. } => {
                write!(f, "write {tenant}/{table}: {} ops{}", ops.len(), if condition.is_some() { ", conditional" } else { "" })
            }
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
        let ours = WriteOp::Put { row: row.clone(), family: "f".into(), qualifier: b"q".to_vec(), value: value.clone() };
        let plain = PlainOp::Put { row, family: "f".into(), qualifier: b"q".to_vec(), value };
        assert_eq!(postcard::to_allocvec(&ours).unwrap(), postcard::to_allocvec(&plain).unwrap());
    }

    #[test]
    fn command_round_trip() {
        let c = Command::CreateTable { tenant: "dân_cư".into(), name: "x".into(), families: vec!["a".into()], hashed_row_keys: true };
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        assert!(Command::decode(&[9, 1, 2]).is_err());
        assert!(Command::decode(&[1, 0]).unwrap_err().to_string().contains("unknown format version 1"));
        assert!(Command::decode(&[]).is_err());
    }
}
