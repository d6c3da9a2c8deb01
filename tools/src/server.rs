//! `kho server`: one node, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::node_config::{self, Overrides};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The node's TOML config file (docs/CONFIG.md). Without it: the defaults and the flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// A future that completes on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, so a signal that arrives before the future is polled is kept.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str> + Send + 'static> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

pub async fn run(args: ServerArgs) -> ExitCode {
    let config = match node_config::load(args.config.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Fault injection (docs/TESTING.md): only a test build has fail points; any other
    // binary refuses `FAILPOINTS` rather than run a fault test that injects nothing.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        eprintln!("error: FAILPOINTS is set, but this kho binary was built without the `failpoints` feature (scripts/test builds it with `--features kho-tools/failpoints`)");
        return ExitCode::from(2);
    }
    let signals = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // Where the master key comes from; never the key, nor the command (it may hold a token).
    let master_key = match (&config.encryption.master_key_file, &config.encryption.master_key_command) {
        (Some(p), _) => format!("file {}", p.display()),
        (None, Some(_)) => "encryption.master_key_command".to_string(),
        (None, None) => "none: no encryption at rest".to_string(),
    };
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen_addr,
        advertise = %config.advertise_addr(),
        data_dir = %config.data_dir.display(),
        initial_members = ?config.initial_members,
        master_key = %master_key,
        version = env!("CARGO_PKG_VERSION"),
        "starting kho server"
    );
    let shutdown = async move {
        let which = signals.await;
        tracing::info!(signal = which, "shutting down");
    };
    match kho_rpc::run_server(config, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            exit_now(0)
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("error: {e}");
            exit_now(1)
        }
    }
}

/// Leaves the process at once, without running C++ static destructors: RocksDB threads
/// may still hold the database, and its destructors then abort ("pthread lock: Invalid
/// argument"). Everything acknowledged is already durable (the WAL was synced by the
/// node's shutdown, and every acknowledged write was synced before it was acknowledged).
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit only ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}
