//! [`ShardError`]: why a shard map mutation or a placement decision was refused.

use kho_engine::keys::TenantId;

use crate::command::AppError;
use crate::shard::desc::ShardId;

/// Why a shard map mutation or a placement decision was refused. A refused mutation has
/// changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// No shard of the map has this id.
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    /// A new shard was given an id the map already holds.
    #[error("shard id {0} is already in use")]
    IdInUse(ShardId),
    /// The tenant already has shards (its first shard is created once).
    #[error("tenant {0} already has shards")]
    TenantExists(TenantId),
    /// The resulting descriptor would not validate ([`crate::shard::ShardDesc::validate`]).
    #[error("invalid descriptor for shard {id}: {reason}")]
    InvalidDescriptor {
        /// The shard the descriptor is for.
        id: ShardId,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not a valid split point of the shard.
    #[error("cannot split shard {id} at {at}: {reason}")]
    BadSplitPoint {
        /// The shard to split.
        id: ShardId,
        /// The split key, in printable form ([`crate::shard::printable_key`]).
        at: String,
        /// Why the key is refused.
        reason: String,
    },
    /// The two shards cannot be merged.
    #[error("cannot merge shards {left} and {right}: {reason}")]
    NotMergeable {
        /// The shard that would keep its id.
        left: ShardId,
        /// The shard that would disappear.
        right: ShardId,
        /// Why they cannot be merged.
        reason: String,
    },
    /// An epoch counter of the shard is at `u64::MAX` and cannot grow.
    #[error("the epoch of shard {0} cannot grow any further")]
    EpochExhausted(ShardId),
    /// A set of descriptors does not form a valid map (loading a stored map).
    #[error("broken shard map: {0}")]
    BrokenMap(String),
    /// Placement could not choose the requested replicas.
    #[error("cannot place {wanted} replicas: {reason}")]
    Placement {
        /// How many replicas were asked for.
        wanted: usize,
        /// Why they cannot be placed.
        reason: String,
    },
}

impl From<ShardError> for AppError {
    /// The error a replicated command returns to its client.
    fn from(err: ShardError) -> AppError {
        let message = err.to_string();
        match err {
            ShardError::UnknownShard(_) => AppError::not_found(message),
            ShardError::IdInUse(_) | ShardError::TenantExists(_) => AppError::already_exists(message),
            ShardError::InvalidDescriptor { .. } | ShardError::BadSplitPoint { .. } => AppError::invalid(message),
            ShardError::BrokenMap(_) => AppError::corruption(message),
            ShardError::NotMergeable { .. } | ShardError::EpochExhausted(_) | ShardError::Placement { .. } => {
                AppError::failed_precondition(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::AppErrorKind;

    #[test]
    fn errors_map_to_app_error_kinds() {
        let cases = [
            (ShardError::UnknownShard(3), AppErrorKind::NotFound),
            (ShardError::IdInUse(3), AppErrorKind::AlreadyExists),
            (ShardError::TenantExists(5), AppErrorKind::AlreadyExists),
            (ShardError::BadSplitPoint { id: 3, at: "t5".into(), reason: "r".into() }, AppErrorKind::InvalidArgument),
            (ShardError::BrokenMap("x".into()), AppErrorKind::Corruption),
            (ShardError::NotMergeable { left: 1, right: 2, reason: "r".into() }, AppErrorKind::FailedPrecondition),
        ];
        for (err, kind) in cases {
            let message = err.to_string();
            let app = AppError::from(err);
            assert_eq!(app.kind, kind, "{message}");
            assert_eq!(app.message, message);
        }
    }
}
