//! The replicated commands (the `D` of the Raft log) and their responses (`R`).
//!
//! A command names tenants, tables and families by name; the state machine resolves names
//! to ids when it applies the command, so a command that races with a `DropTable` fails
//! cleanly with `NotFound` instead of writing under a dropped table.

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;

/// Format version of an encoded command (first byte; the rest is postcard).
pub const COMMAND_FORMAT_V1: u8 = 1;

/// A replicated state-machine command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTenant { name: String },
    CreateTable { tenant: String, name: String, families: Vec<String> },
    DropTable { tenant: String, name: String },
    /// Cell mutations of one table, applied atomically; with a condition, only if it holds.
    Write { tenant: String, table: String, ops: Vec<WriteOp>, condition: Option<Condition> },
}

/// One cell mutation. An empty family names the table's first family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put { row: Vec<u8>, family: String, qualifier: Vec<u8>, value: Vec<u8> },
    Delete { row: Vec<u8>, family: String, qualifier: Vec<u8> },
    DeleteFamily { row: Vec<u8>, family: String },
    DeleteRow { row: Vec<u8> },
}

/// Compare-and-swap condition: the cell's current value must equal `expected`
/// (`None`: the cell must not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub row: Vec<u8>,
    pub family: String,
    pub qualifier: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![COMMAND_FORMAT_V1];
        postcard::to_extend(self, out).expect("encoding a command into a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        match bytes.split_first() {
            Some((&COMMAND_FORMAT_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|e| DecodeError { what: "command", reason: e.to_string() }),
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasOutcome {
    pub succeeded: bool,
    pub current: Option<Vec<u8>>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::CreateTenant { name } => write!(f, "create-tenant {name}"),
            Command::CreateTable { tenant, name, families } => write!(f, "create-table {tenant}/{name} {families:?}"),
            Command::DropTable { tenant, name } => write!(f, "drop-table {tenant}/{name}"),
            Command::Write { tenant, table, ops, condition } => {
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

    #[test]
    fn command_round_trip() {
        let c = Command::CreateTable { tenant: "dân_cư".into(), name: "x".into(), families: vec!["a".into()] };
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        assert!(Command::decode(&[9, 1, 2]).is_err());
        assert!(Command::decode(&[]).is_err());
    }
}
