//! Kho's gRPC services, routing and server assembly.

pub mod config;
pub use config::Config;
