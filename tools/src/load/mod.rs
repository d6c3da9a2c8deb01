//! `kho load`: bulk loading of CSV, JSON Lines and PostgreSQL into a table
//! (docs/MIGRATION.md).
//!
//! The pure parts, with no network: `mapping` (which source column becomes which cell, and
//! the row key), `encode` (the stored byte encoding of each column type and of the row key),
//! `source` (streaming, resumable readers of CSV and JSON Lines, plain or compressed) and
//! `reject` (the reject file of rows that could not be loaded). The rest: `postgres` (the
//! PostgreSQL source), `job` (the job's spec and checkpoint), `run` (reading in batches and
//! writing them by shard), `verify` (source digest against the table's), `progress` and
//! `cmd` (the command line).

pub mod cmd;
pub mod encode;
pub mod job;
pub mod mapping;
pub mod postgres;
pub mod progress;
pub mod reject;
pub mod run;
pub mod source;
pub mod verify;
