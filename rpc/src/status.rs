//! Mapping of every failure to a gRPC status a client can act on (docs/API.md, "Errors").

use kho_raft::{AppError, AppErrorKind, ProposeError};
use tonic::Status;

pub fn app_error(e: AppError) -> Status {
    match e.kind {
        AppErrorKind::NotFound => Status::not_found(e.message),
        AppErrorKind::AlreadyExists => Status::already_exists(e.message),
        AppErrorKind::InvalidArgument => Status::invalid_argument(e.message),
        AppErrorKind::Corruption => Status::data_loss(e.message),
        AppErrorKind::FailedPrecondition => Status::failed_precondition(e.message),
        // A stale route (a split since the lookup), refused at apply, which wrote nothing:
        // looking the key up again finds the shard.
        AppErrorKind::WrongShard => crate::route::RouteError::new(crate::route::StaleRoute::EpochMismatch)
            .status(format!("{}; nothing was applied; retry", e.message)),
        _ => Status::internal(e.message),
    }
}

pub fn propose_error(e: ProposeError) -> Status {
    match e {
        ProposeError::ForwardToLeader { .. } => Status::unavailable("no leader is known yet (election in progress); retry"),
        ProposeError::Unavailable(m) => Status::unavailable(m),
        ProposeError::Rejected(e) => app_error(e),
        other => Status::unavailable(other.to_string()),
    }
}

pub fn engine_error(e: kho_engine::Error) -> Status {
    match e {
        kho_engine::Error::Corruption { what } => Status::data_loss(format!("stored data is corrupt: {what}")),
        other => Status::internal(other.to_string()),
    }
}

pub fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}
