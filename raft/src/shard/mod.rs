//! The pure core of sharding: shard descriptors, split points, the shard map, route caches
//! and placement decisions. Nothing here does I/O, talks to Raft or awaits: every function
//! is a deterministic function of its arguments, so the meta group's apply, the data shards
//! and the routers can all call it and agree, and it is tested without a cluster.
//!
//! A shard is one Raft group serving a half-open range `[start, end)` of the `data` column
//! family's key space (see `kho_engine::keys`) that never spans two tenants and never
//! splits inside a row. The meta group (shard id [`META_SHARD`]) holds the [`ShardMap`];
//! every node and client caches descriptors in a [`RouteCache`] and detects stale ones by
//! their [`Epoch`].
//!
//! - [`desc`]: [`ShardDesc`], its [`Epoch`], [`Replica`]s and the binary record.
//! - [`boundary`]: the keys a range may start or end at, and their printable form.
//! - [`split`]: split points (always tenant, table or row boundaries).
//! - [`map`]: [`ShardMap`] and the mutations the meta group applies.
//! - [`route_cache`]: [`RouteCache`], a possibly stale cache of descriptors.
//! - [`placement`]: choosing nodes for new shards and shards to merge.
//!
//! Formats and invariants: docs/FORMATS.md ("Shard map records") and docs/ARCHITECTURE.md.

pub mod boundary;
pub mod desc;
pub mod error;
pub mod map;
pub mod placement;
pub mod route_cache;
pub mod split;
pub mod state;

pub use boundary::{parse_printable_key, printable_key, Boundary};
pub use desc::{
    tenant_range, Epoch, Replica, ReplicaRole, ShardDesc, ShardId, BOUNDARY_BYTES_MAX, META_SHARD, REPLICAS_MAX, SHARD_DESC_FORMAT_V1,
    TENANT_ID_MAX,
};
pub use error::ShardError;
pub use map::ShardMap;
pub use placement::{choose_merge_candidates, choose_replicas};
pub use route_cache::{CacheUpdate, RouteCache};
pub use split::{choose_split_point, is_valid_split_point, row_boundary, table_split_points};
pub use state::{MergeState, ShardState};
