//! Kho's storage engine: one RocksDB instance per node, the data-key encoding
//! and the checksummed value header.
//!
//! The engine knows nothing of Raft or gRPC. It offers:
//! - [`keys`]: the order-preserving encoding of the data model
//!   tenant → table → row → family → qualifier into RocksDB keys;
//! - [`value`]: the versioned, checksummed or encrypted header of every value in [`Cf::Data`];
//! - [`crypto`]: the ciphers of encryption at rest (master key, tenant keys, log key);
//! - [`Engine`]: the column families of a node, raw reads and writes for the Raft
//!   log and metadata, verified reads of data values, atomic batches and snapshots;
//! - [`segment_log`]: one group's Raft log in its own segment files;
//! - [`shared_log`]: the Raft logs of many groups in one sequence of segment files.
//!
//! On-disk formats are described byte by byte in `docs/FORMATS.md`.

pub mod crypto;
pub mod keys;
pub mod value;

mod db;
mod error;
mod fail_stop;
pub mod segment_log;
pub mod shared_log;

pub use db::{Cf, Engine, EngineOptions, OwnedSnapshot, Snapshot, WeakEngine, WriteBatch};
pub use error::{Error, Result};
