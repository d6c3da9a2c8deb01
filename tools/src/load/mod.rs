//! `kho load`: bulk loading of CSV and JSON Lines files into a table.
//!
//! The pure parts, with no network: `mapping` (which source column becomes which cell, and
//! the row key), `encode` (the stored byte encoding of each column type and of the row key),
//! `source` (streaming, resumable readers of CSV and JSON Lines, plain or compressed) and
//! `reject` (the reject file of rows that could not be loaded).
#![allow(dead_code)]

pub mod encode;
pub mod mapping;
pub mod reject;
pub mod source;
