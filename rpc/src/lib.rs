//! Kho's gRPC services, request routing and forwarding, and server assembly. The only
//! crate that knows tonic.

mod admin;
mod admission;
mod audit;
pub mod auth;
mod channels;
pub mod config;
pub mod ctx;
mod data;
pub mod deadline;
pub mod load;
mod locate;
pub mod master_key;
mod pool;
pub mod route;
mod server;
mod status;
pub mod tls;
mod transport;
mod validate;

pub use config::Config;
pub use server::run_server;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Other(String),
}
