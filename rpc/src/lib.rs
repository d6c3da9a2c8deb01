//! Kho's gRPC services, routing and server assembly.

pub mod config;
pub use config::Config;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Other(String),
}

/// Runs a node until `shutdown` completes, then stops gracefully.
pub async fn run_server(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let _ = shutdown;
    Err(ServerError::Other("server not assembled yet".into()))
}
