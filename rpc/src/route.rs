//! Typed stale-route answers (docs/API.md, "Routing errors").
//!
//! A node that serves a data request by a route that turned out to be stale (it is not the
//! shard's leader, the shard split or moved since the route was looked up, the shard is not
//! in its map, it holds no replica) answers `UNAVAILABLE`, so that stock clients retry, with
//! metadata that names the kind of staleness ([`ROUTE_ERROR_HEADER`]) and what the node
//! knows of the right route (leader, shard, epoch). Such an answer is given **only when
//! nothing was applied**: before any proposal, or after the shard refused the command at
//! apply (`WrongShard`, which writes nothing). The node that received the client's request
//! looks the route up again and retries on such an answer from a node it forwarded to,
//! at most [`STALE_ROUTE_TRIES_MAX`] tries in all (`Ctx::routed`); a smart client does the
//! same with its own cache of routes (`LocateShards`).
//!
//! Pure: building and reading the metadata, tested without a server.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Metadata key naming the kind of a stale route ([`StaleRoute::as_str`]).
pub const ROUTE_ERROR_HEADER: &str = "kho-route-error";
/// Metadata key: the node the answering node knows as the shard's leader (decimal id).
pub const LEADER_HINT_HEADER: &str = "kho-leader-hint";
/// Metadata key: the shard the request was routed to, or the answering node's shard of the
/// key (decimal id).
pub const SHARD_HEADER: &str = "kho-shard";
/// Metadata key: that shard's epoch as the answering node knows it, `<conf_ver>.<version>`
/// (decimal).
pub const EPOCH_HEADER: &str = "kho-shard-epoch";

/// Most tries of a data request on the node that received it from its client, the first
/// included, while the answers are typed stale routes, count. Each try looks the route up
/// again; none starts after the request's deadline.
pub const STALE_ROUTE_TRIES_MAX: u32 = 3;

/// Why a route was stale. The wire names are [`StaleRoute::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleRoute {
    /// The node is not the shard's leader (any more); `kho-leader-hint` names the leader
    /// when the node knows it.
    NotLeader,
    /// The shard refused the command at apply: its epoch changed (a split or merge) since
    /// the route was looked up. Nothing was written.
    EpochMismatch,
    /// The shard no longer holds the key (it split or merged).
    KeyNotInShard,
    /// No shard holds the key in the node's copy of the shard map (a tenant being created).
    ShardNotFound,
    /// The node holds no replica of the shard (its replicas moved).
    NoReplica,
}

impl StaleRoute {
    pub const ALL: [StaleRoute; 5] =
        [StaleRoute::NotLeader, StaleRoute::EpochMismatch, StaleRoute::KeyNotInShard, StaleRoute::ShardNotFound, StaleRoute::NoReplica];

    /// The value of [`ROUTE_ERROR_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            StaleRoute::NotLeader => "not-leader",
            StaleRoute::EpochMismatch => "epoch-mismatch",
            StaleRoute::KeyNotInShard => "key-not-in-shard",
            StaleRoute::ShardNotFound => "shard-not-found",
            StaleRoute::NoReplica => "no-replica",
        }
    }

    pub fn parse(s: &str) -> Option<StaleRoute> {
        StaleRoute::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A shard's epoch in a route error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEpoch {
    pub conf_ver: u64,
    pub version: u64,
}

impl From<kho_raft::shard::Epoch> for RouteEpoch {
    fn from(e: kho_raft::shard::Epoch) -> Self {
        RouteEpoch { conf_ver: e.conf_ver, version: e.version }
    }
}

/// A typed stale-route answer: the kind and what the answering node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub kind: StaleRoute,
    pub leader_hint: Option<u64>,
    pub shard: Option<u64>,
    pub epoch: Option<RouteEpoch>,
}

impl RouteError {
    pub fn new(kind: StaleRoute) -> RouteError {
        RouteError { kind, leader_hint: None, shard: None, epoch: None }
    }

    pub fn leader(mut self, leader: Option<u64>) -> RouteError {
        self.leader_hint = leader.filter(|l| *l != 0);
        self
    }

    pub fn shard(mut self, shard: u64) -> RouteError {
        self.shard = Some(shard);
        self
    }

    pub fn epoch(mut self, epoch: impl Into<RouteEpoch>) -> RouteError {
        self.epoch = Some(epoch.into());
        self
    }

    /// The answer: UNAVAILABLE with `message` and the metadata.
    pub fn status(&self, message: impl Into<String>) -> Status {
        Status::with_metadata(Code::Unavailable, message, self.metadata())
    }

    fn metadata(&self) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(ROUTE_ERROR_HEADER, MetadataValue::from_static(self.kind.as_str()));
        let digits = |n: String| MetadataValue::try_from(n).expect("digits are a valid header value");
        if let Some(l) = self.leader_hint {
            md.insert(LEADER_HINT_HEADER, digits(l.to_string()));
        }
        if let Some(s) = self.shard {
            md.insert(SHARD_HEADER, digits(s.to_string()));
        }
        if let Some(e) = self.epoch {
            md.insert(EPOCH_HEADER, digits(format!("{}.{}", e.conf_ver, e.version)));
        }
        md
    }

    /// The typed stale route `s` carries, if any: UNAVAILABLE with a known
    /// [`ROUTE_ERROR_HEADER`]. Any other status (another code, no header, an unknown kind) is
    /// not one: it is passed on, never retried as a stale route. A malformed hint, shard or
    /// epoch is left out.
    pub fn of(s: &Status) -> Option<RouteError> {
        if s.code() != Code::Unavailable {
            return None;
        }
        let md = s.metadata();
        let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let number = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
        let kind = StaleRoute::parse(text(ROUTE_ERROR_HEADER)?)?;
        let epoch = text(EPOCH_HEADER).and_then(|v| {
            let (c, v) = v.split_once('.')?;
            Some(RouteEpoch { conf_ver: c.parse().ok()?, version: v.parse().ok()? })
        });
        Some(RouteError { kind, leader_hint: number(LEADER_HINT_HEADER).filter(|l| *l != 0), shard: number(SHARD_HEADER), epoch })
    }
}

/// The last stale-route answer of a request whose tries are used up (or whose deadline
/// came): the same code and metadata, the message saying so.
pub fn exhausted(last: Status, node: u64, tries: u32) -> Status {
    let times = if tries == 1 { "once".to_string() } else { format!("{tries} times") };
    let message = format!("{} (node {node} tried {times}, looking the route up again each time)", last.message());
    Status::with_metadata(last.code(), message, last.metadata().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_with_what_the_node_knows() {
        for kind in StaleRoute::ALL {
            let e = RouteError::new(kind).leader(Some(3)).shard(7).epoch(kho_raft::shard::Epoch { conf_ver: 2, version: 5 });
            let s = e.status("stale");
            assert_eq!(s.code(), Code::Unavailable, "stock clients retry it");
            assert_eq!(s.metadata().get(ROUTE_ERROR_HEADER).unwrap(), kind.as_str());
            assert_eq!(s.metadata().get(LEADER_HINT_HEADER).unwrap(), "3");
            assert_eq!(s.metadata().get(SHARD_HEADER).unwrap(), "7");
            assert_eq!(s.metadata().get(EPOCH_HEADER).unwrap(), "2.5");
            assert_eq!(RouteError::of(&s), Some(e));
        }
        let bare = RouteError::new(StaleRoute::NotLeader).leader(None);
        let s = bare.status("x");
        assert!(s.metadata().get(LEADER_HINT_HEADER).is_none() && s.metadata().get(SHARD_HEADER).is_none());
        assert_eq!(RouteError::of(&s), Some(bare));
        assert_eq!(RouteError::new(StaleRoute::NotLeader).leader(Some(0)).leader_hint, None, "0 is no node");
    }

    #[test]
    fn only_unavailable_with_a_known_kind_is_a_stale_route() {
        assert_eq!(RouteError::of(&Status::unavailable("no quorum reachable; the write may or may not have been applied")), None);
        let mut md = MetadataMap::new();
        md.insert(ROUTE_ERROR_HEADER, MetadataValue::from_static("not-leader"));
        for code in [Code::DeadlineExceeded, Code::Unknown, Code::Internal, Code::Aborted] {
            assert_eq!(RouteError::of(&Status::with_metadata(code, "x", md.clone())), None, "{code:?}");
        }
        let mut unknown = MetadataMap::new();
        unknown.insert(ROUTE_ERROR_HEADER, MetadataValue::from_static("moon-phase"));
        assert_eq!(RouteError::of(&Status::with_metadata(Code::Unavailable, "x", unknown)), None);
        let mut bad = md.clone();
        bad.insert(LEADER_HINT_HEADER, MetadataValue::from_static("two"));
        bad.insert(EPOCH_HEADER, MetadataValue::from_static("3"));
        let e = RouteError::of(&Status::with_metadata(Code::Unavailable, "x", bad)).unwrap();
        assert_eq!(e, RouteError::new(StaleRoute::NotLeader), "malformed details are left out");
    }

    #[test]
    fn an_exhausted_answer_keeps_its_code_and_metadata() {
        let s = RouteError::new(StaleRoute::KeyNotInShard).shard(4).status("shard 4 no longer holds the key");
        let out = exhausted(s, 2, STALE_ROUTE_TRIES_MAX);
        assert_eq!(out.code(), Code::Unavailable);
        assert_eq!(out.message(), "shard 4 no longer holds the key (node 2 tried 3 times, looking the route up again each time)");
        assert_eq!(RouteError::of(&out).unwrap().shard, Some(4));
    }
}
