//! Kho's gRPC API, package `kho.v1`, generated at build time from `proto/kho/v1/*.proto`.
//!
//! The `.proto` files are the contract for clients in every language; this crate is the
//! Rust client and server code generated from them (tonic and prost).

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("kho.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kho_descriptor");
}
