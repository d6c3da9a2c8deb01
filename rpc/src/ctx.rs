//! What every service handler shares: the node, the limits, the peer channels, and the
//! routing of a request to the Raft leader.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use kho_proto::v1::admin_client::AdminClient;
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::load_client::LoadClient;
use kho_raft::command::Outcome;
use kho_raft::{Command, Group, NodeId, ProposeError, RaftNode};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::auth::Caller;
use crate::channels::Channels;
use crate::config::Limits;
use crate::deadline::{self, Deadline, DEADLINE_HEADER};
use crate::pool::BlockingPool;
use crate::route::{self, RouteError, StaleRoute, STALE_ROUTE_TRIES_MAX};
use crate::status;

/// Metadata key set on a request forwarded by a node to the leader. A forwarded request
/// that reaches a non-leader is answered UNAVAILABLE instead of being forwarded again (a
/// linearizable read is first tried there as a follower read).
pub const FORWARDED: &str = "kho-forwarded";

/// Added to `raft.proposal_timeout_ms` to make the deadline of a request that came without
/// one (no `grpc-timeout`): the time to forward it to the leader and its answer back,
/// milliseconds.
pub const FORWARD_MARGIN_MS: u64 = 1_000;

/// How long past the forwarding node's own wait a forwarded call stays open for the
/// leader's answer, milliseconds. The forwarding node answers its client when its wait
/// ends but does not cancel the call: a cancelled call is an HTTP/2 stream reset, and a cut
/// link delivers those in a burst when it heals. The leader answers every forwarded call by
/// its deadline, and keepalive closes a dead connection within
/// `channels::PEER_DEAD_AFTER_MS` (2 s), both well within this.
pub const FORWARD_LINGER_MS: u64 = 3_000;
const _: () = assert!(FORWARD_LINGER_MS > crate::channels::PEER_DEAD_AFTER_MS, "a lingering call must outlive a dead connection");

/// Longest wait of a request for its group's replica here to know a leader before it is
/// proposed or read (a shard just created, an election), milliseconds.
pub const LEADER_WAIT_MS: u64 = 3_000;

/// Most forwarded calls left open past their client's answer at once, count. Beyond it a
/// call is cancelled when its wait ends.
pub const FORWARDS_LINGERING_MAX: usize = 4_096;

pub struct Ctx {
    pub node: Arc<RaftNode>,
    pub limits: Limits,
    pub channels: Arc<Channels>,
    pub proposal_timeout: Duration,
    /// Client reads that need the disk (`limits.read_threads`).
    pub reads: Arc<BlockingPool>,
    /// Scans (`limits.scan_threads`).
    pub scans: Arc<BlockingPool>,
    /// Permits of forwarded calls that may stay open past their wait ([`FORWARDS_LINGERING_MAX`]).
    pub forwards_lingering: Arc<Semaphore>,
    /// The address clients reach this node at (`advertise_addr`).
    pub client_addr: String,
    /// Other nodes' client addresses as they last reported them (the membership holds
    /// peer addresses only): filled by `ClusterStatus` and by [`refresh_client_addrs`].
    pub client_addrs: std::sync::RwLock<std::collections::HashMap<NodeId, String>>,
    /// Authentication and authorization ([`crate::auth`]).
    pub auth: Arc<crate::auth::Auth>,
    /// The audit log ([`crate::audit`]).
    pub audit: Arc<crate::audit::AuditLog>,
}

/// The `x-request-id` a client sent, if any (at most 128 bytes kept).
pub fn request_id<T>(req: &Request<T>) -> String {
    req.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).map(|v| v.chars().take(128).collect()).unwrap_or_default()
}

/// How often a node asks the members whose client address it does not know yet,
/// milliseconds (every [`CLIENT_ADDR_UNKNOWN_RETRY_MS`] while one is unknown); every
/// [`CLIENT_ADDR_FULL_REFRESH_ROUNDS`] rounds it asks them all.
pub const CLIENT_ADDR_REFRESH_MS: u64 = 5_000;
/// The pause between rounds while some member's client address is unknown, milliseconds.
pub const CLIENT_ADDR_UNKNOWN_RETRY_MS: u64 = 500;
/// Rounds between two refreshes of every member's client address (a node restarted with
/// another `advertise_addr` is seen within this many rounds), count.
pub const CLIENT_ADDR_FULL_REFRESH_ROUNDS: u64 = 12;
/// Timeout of one member's answer, milliseconds.
const CLIENT_ADDR_ASK_TIMEOUT_MS: u64 = 2_000;

/// Learns the client address of every member of the cluster, forever (aborted at stop).
pub async fn refresh_client_addrs(ctx: Arc<Ctx>) {
    let mut round = 0u64;
    loop {
        let full = round.is_multiple_of(CLIENT_ADDR_FULL_REFRESH_ROUNDS);
        round += 1;
        let members = ctx.node.meta().status().members;
        let mut unknown = false;
        for m in members {
            if m.id == ctx.node.id || (!full && !ctx.client_addr_of(m.id).is_empty()) {
                continue;
            }
            let Ok(mut c) = ctx.admin_client(&m.addr) else { continue };
            let ask = c.node_status(kho_proto::v1::NodeStatusRequest {});
            match tokio::time::timeout(Duration::from_millis(CLIENT_ADDR_ASK_TIMEOUT_MS), ask).await {
                Ok(Ok(r)) => ctx.note_client_addr(m.id, &r.into_inner().client_address),
                _ => unknown |= ctx.client_addr_of(m.id).is_empty(),
            }
        }
        let pause = if unknown { CLIENT_ADDR_UNKNOWN_RETRY_MS } else { CLIENT_ADDR_REFRESH_MS };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Whether a request may change data: what a failed forward may have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write,
    Read,
}

/// How a request arrived: from a client or forwarded by a node, its deadline, and who
/// sent it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Forwarded to this node as the leader: never forwarded again.
    pub forwarded: bool,
    /// Forwarded to this node as a replica of the request's shard (by a node that holds
    /// none): it may forward once more, to the shard's leader, but not to another replica.
    pub via_replica: bool,
    pub deadline: Deadline,
    /// Which try of the node that received the request from its client this is (1 for a
    /// request from a client; a forwarded request's [`ROUTE_TRY_HEADER`]).
    pub try_no: u32,
    /// The request's principal ([`crate::auth`]).
    pub caller: Arc<Caller>,
    /// The gRPC method called (`ReadRow`), for the audit log.
    pub action: Arc<str>,
    /// The client's `x-request-id` (at most 128 bytes; empty when none), for the audit log;
    /// forwarded with the request.
    pub request_id: Arc<str>,
}

impl Origin {
    /// A request to hand to node `leader_id` at `addr`, carrying this request's deadline,
    /// try and principal.
    pub fn forward_to(&self, leader_id: NodeId, addr: String, kind: Kind, to_replica: bool) -> Forward {
        Forward {
            leader_id,
            addr,
            kind,
            deadline: self.deadline,
            to_replica,
            try_no: self.try_no,
            caller: self.caller.clone(),
            request_id: self.request_id.clone(),
        }
    }

    /// The node that received the request from its client: the one that retries stale routes.
    pub fn from_client(&self) -> bool {
        !self.forwarded && !self.via_replica
    }
}

/// Metadata key set on a forwarded request: which try of the node that received it from
/// its client this is (1, 2, …, at most [`STALE_ROUTE_TRIES_MAX`]), decimal. For logs and
/// the `forwarded-stale-route` fail point.
pub const ROUTE_TRY_HEADER: &str = "kho-route-try";

/// Pause before the next try of a request whose route was stale, milliseconds, doubled on
/// each further try (when no leader to wait for is known).
pub const STALE_ROUTE_BACKOFF_MS: u64 = 20;

/// Longest wait, before the next try, for this node's replica of a shard to learn the
/// leader a stale answer named, milliseconds.
pub const STALE_ROUTE_LEADER_WAIT_MS: u64 = 500;

/// The [`FORWARDED`] value of a request forwarded to a replica rather than to the leader.
pub const FORWARDED_TO_REPLICA: &str = "replica";

/// Where a request is served.
pub enum Leader<T> {
    /// Served here (this node is the leader, or a follower that may serve the read).
    Here(T),
    /// Forward to the leader.
    There(Forward),
}

/// A request to hand to the leader: which node, what kind of request, and its deadline.
#[derive(Debug, Clone)]
pub struct Forward {
    pub leader_id: u64,
    pub addr: String,
    pub kind: Kind,
    pub deadline: Deadline,
    /// The node is a replica of the request's shard, not (as far as this node knows) its
    /// leader: this node holds no replica of it.
    pub to_replica: bool,
    /// The try of the request ([`Origin::try_no`]), sent as [`ROUTE_TRY_HEADER`].
    pub try_no: u32,
    /// Sent as [`crate::auth::PRINCIPAL_HEADER`].
    pub caller: Arc<Caller>,
    /// Sent as `x-request-id` when not empty.
    pub request_id: Arc<str>,
}

/// Where the data of a key is served from this node.
pub enum ShardRoute {
    /// This node holds a replica of the key's shard.
    Local(Arc<Group>),
    /// This node holds none: forward to a replica.
    Remote(Forward),
}

impl Forward {
    /// The same request, counted as a write (a read barrier that precedes a write).
    pub fn as_write(self) -> Forward {
        Forward { kind: Kind::Write, ..self }
    }

    fn leader(&self) -> String {
        if self.to_replica {
            format!("a replica of the shard (node {} at {})", self.leader_id, self.addr)
        } else {
            format!("the leader (node {} at {})", self.leader_id, self.addr)
        }
    }

    fn outcome(&self) -> &'static str {
        match self.kind {
            Kind::Write => "the write may or may not have been applied",
            Kind::Read => "nothing was changed",
        }
    }

    /// The request to send and how long to wait for its answer. DEADLINE_EXCEEDED, and
    /// nothing sent, once the deadline has passed.
    pub fn request<T>(&self, msg: T) -> Result<(Request<T>, Duration), Status> {
        let Some(remaining) = self.deadline.remaining(SystemTime::now()) else {
            return Err(Status::deadline_exceeded(format!(
                "the request's deadline passed before it could be forwarded to {}: {}",
                self.leader(),
                match self.kind {
                    Kind::Write => "the write was not applied",
                    Kind::Read => "nothing was read",
                }
            )));
        };
        let mut req = Request::new(msg);
        req.metadata_mut().insert(FORWARDED, MetadataValue::from_static(if self.to_replica { FORWARDED_TO_REPLICA } else { "1" }));
        let unix_ms = MetadataValue::try_from(self.deadline.unix_ms().to_string()).expect("digits are a valid header value");
        req.metadata_mut().insert(DEADLINE_HEADER, unix_ms);
        let try_no = MetadataValue::try_from(self.try_no.to_string()).expect("digits are a valid header value");
        req.metadata_mut().insert(ROUTE_TRY_HEADER, try_no);
        self.caller.forward_into(req.metadata_mut());
        if !self.request_id.is_empty() {
            if let Ok(v) = MetadataValue::try_from(&*self.request_id) {
                req.metadata_mut().insert("x-request-id", v);
            }
        }
        // The leader also gets the time left as grpc-timeout; it keeps the earlier of the two.
        req.set_timeout(remaining);
        Ok((req, deadline::wait_budget(remaining)))
    }

    /// A failure to reach the leader, as the client sees it: UNAVAILABLE naming the leader.
    pub fn failed(&self, why: &Status) -> Status {
        let retry = match self.kind {
            Kind::Write => "; retry with backoff, possibly through another node (make retries idempotent)",
            Kind::Read => "; retry with backoff, possibly through another node",
        };
        Status::unavailable(format!("forwarding to {} failed: {}; {}{retry}", self.leader(), why.message(), self.outcome()))
    }

    /// The answer of a forwarded call as the client sees it. The leader's own answers keep
    /// their code and message; what the transport made up (a broken or refused connection,
    /// an HTTP/2 error, a timeout) becomes UNAVAILABLE or DEADLINE_EXCEEDED naming the
    /// leader, never UNKNOWN or CANCELLED. `None`: no answer within `waited`.
    pub fn answer<R>(&self, waited: Duration, r: Option<Result<Response<R>, Status>>) -> Result<Response<R>, Status> {
        match r {
            None => Err(Status::deadline_exceeded(format!(
                "{} did not answer within {} ms, before the request's deadline; {}",
                self.leader(),
                waited.as_millis(),
                self.outcome()
            ))),
            Some(Ok(resp)) => Ok(resp),
            Some(Err(s)) => Err(self.map_status(s)),
        }
    }

    /// See [`Forward::answer`]; also for the items of a forwarded stream.
    pub fn map_status(&self, s: Status) -> Status {
        // tonic reports a timer that fired, its own or the leader's server's, as CANCELLED
        // "Timeout expired"; Kho never cancels a call otherwise.
        if s.code() == Code::Cancelled {
            return Status::deadline_exceeded(format!(
                "{} did not answer before the request's deadline ({}); {}",
                self.leader(),
                s.message(),
                self.outcome()
            ));
        }
        // A status with a source was made from a transport error on this side; the
        // leader's own statuses arrive as trailers and have none. The leader never answers
        // UNKNOWN itself.
        if std::error::Error::source(&s).is_some() || s.code() == Code::Unknown {
            return self.failed(&Status::new(s.code(), format!("{:?}: {}", s.code(), with_causes(&s))));
        }
        s
    }

    /// A forwarded stream whose errors are mapped as by [`Forward::map_status`].
    pub fn stream<T>(self, s: tonic::Streaming<T>) -> impl Stream<Item = Result<T, Status>> + Send + 'static
    where
        T: Send + 'static,
    {
        futures::StreamExt::map(s, move |item| item.map_err(|e| self.map_status(e)))
    }
}

/// A transport status's message with the causes beneath it ("http2 error: keep-alive
/// timed out"), each once.
fn with_causes(s: &Status) -> String {
    let mut text = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        cause = c.source();
    }
    text
}

/// How `req` arrived and its deadline; `default` from now when it has none.
pub fn origin_of<T>(req: &Request<T>, default: Duration, caller: Arc<Caller>) -> Result<Origin, Status> {
    let deadline = Deadline::of_request(req.metadata(), SystemTime::now(), default)?;
    // Only a node sets the forwarding header, and only the peer listener (node
    // certificates) believes it: a client that sets it is a client.
    let from_client_listener =
        req.extensions().get::<crate::tls::ConnInfo>().is_some_and(|i| i.listener == crate::tls::ListenerKind::Client);
    let hop = if from_client_listener { None } else { req.metadata().get(FORWARDED) };
    let via_replica = hop.is_some_and(|v| v == FORWARDED_TO_REPLICA);
    // A malformed or missing try number counts as a first try.
    let try_no = match hop {
        None => 1,
        Some(_) => req.metadata().get(ROUTE_TRY_HEADER).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1),
    };
    let action = action_of(req);
    let request_id = Arc::from(request_id(req));
    Ok(Origin { forwarded: hop.is_some() && !via_replica, via_replica, deadline, try_no, caller, action, request_id })
}

/// The gRPC method of `req` (from the admission layer), or `?`.
fn action_of<T>(req: &Request<T>) -> Arc<str> {
    req.extensions().get::<crate::admission::RpcMethod>().map_or_else(|| Arc::from("?"), |m| Arc::from(m.0.as_str()))
}

/// What [`Ctx::routed`] does with a failed try.
#[derive(Debug, PartialEq, Eq)]
enum NextTry {
    /// The failure is the answer: not a typed stale route, or the request was forwarded
    /// (the node that forwarded it retries).
    Answer,
    /// A typed stale route, and tries are left: look the route up again.
    After(RouteError),
    /// A typed stale route on the last try: the answer, saying so.
    Exhausted,
}

fn next_try(last: &Status, origin: &Origin) -> NextTry {
    match RouteError::of(last) {
        None => NextTry::Answer,
        Some(_) if !origin.from_client() => NextTry::Answer,
        Some(_) if origin.try_no >= STALE_ROUTE_TRIES_MAX => NextTry::Exhausted,
        Some(stale) => NextTry::After(stale),
    }
}

/// How long a wait for a quorum may take, and whether the deadline set it.
struct Wait {
    limit: Duration,
    by_deadline: bool,
}

impl Ctx {
    /// Node `id`'s client address as last learnt; empty when not known.
    pub fn client_addr_of(&self, id: NodeId) -> String {
        if id == self.node.id {
            return self.client_addr.clone();
        }
        self.client_addrs.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned().unwrap_or_default()
    }

    /// Records what node `id` says its client address is.
    pub fn note_client_addr(&self, id: NodeId, addr: &str) {
        if addr.is_empty() {
            return;
        }
        let mut m = self.client_addrs.write().unwrap_or_else(|p| p.into_inner());
        if m.get(&id).map(String::as_str) != Some(addr) {
            m.insert(id, addr.to_string());
        }
    }

    /// The meta group: catalog requests and cluster membership go there.
    pub fn meta(&self) -> Arc<Group> {
        self.node.meta()
    }

    /// How `req` arrived and its deadline (without one: `raft.proposal_timeout_ms` plus
    /// [`FORWARD_MARGIN_MS`] from now). INVALID_ARGUMENT for a malformed deadline header.
    /// The request's principal is authenticated here: `UNAUTHENTICATED` without valid
    /// credentials ([`crate::auth::Auth::authenticate`]).
    pub fn origin<T>(&self, req: &Request<T>) -> Result<Origin, Status> {
        self.origin_with(req, self.proposal_timeout + Duration::from_millis(FORWARD_MARGIN_MS))
    }

    /// [`Ctx::origin`] with `default` as the deadline of a request that has none.
    pub fn origin_with<T>(&self, req: &Request<T>, default: Duration) -> Result<Origin, Status> {
        let caller = {
            let meta = self.meta();
            let cat = meta.state.catalog();
            self.auth.authenticate(req, &cat)
        };
        match caller {
            Ok(caller) => origin_of(req, default, caller),
            Err(s) => {
                let nobody = Caller { name: String::new(), by: crate::auth::AuthBy::Off, cluster_admin: false, session: None };
                let mut r = self.audit.record(&nobody, &action_of(req));
                r.auth = "none".into();
                r.request_id = request_id(req);
                self.audit.denied(r, &s);
                Err(s)
            }
        }
    }

    /// Runs an authorization `check`; a `PERMISSION_DENIED` is checked again after a read
    /// barrier of the meta group (a grant acknowledged through another node is honoured at
    /// once). A refusal that stands is recorded in the audit log.
    pub async fn authorize<T>(
        &self,
        origin: &Origin,
        tenant: &str,
        table: &str,
        check: impl Fn() -> Result<T, Status>,
    ) -> Result<T, Status> {
        let r = match check() {
            Err(s) if s.code() == Code::PermissionDenied => match self.read_barrier(origin).await {
                Ok(Leader::Here(())) => check(),
                _ => Err(s),
            },
            other => other,
        };
        r.map_err(|s| if s.code() == Code::PermissionDenied { self.deny(origin, tenant, table, s) } else { s })
    }

    /// Records a refused request in the audit log and returns its status.
    pub fn deny(&self, origin: &Origin, tenant: &str, table: &str, s: Status) -> Status {
        let mut r = self.record(origin);
        r.tenant = tenant.to_string();
        r.table = table.to_string();
        self.audit.denied(r, &s);
        s
    }

    /// Proposes a catalog command to the meta group with its audit record
    /// (`Command::Audited`): the change and its record are applied together.
    pub async fn propose_audited(
        &self,
        cmd: Command,
        origin: &Origin,
        tenant: &str,
        table: &str,
    ) -> Result<Leader<kho_raft::Response>, Status> {
        let mut r = self.record(origin);
        r.tenant = tenant.to_string();
        r.table = table.to_string();
        r.reason = cmd.to_string();
        match &cmd {
            Command::OpenSession { session } => {
                r.session = session.id.clone();
                r.purpose = session.purpose.clone();
            }
            Command::CloseSession { id, .. } => {
                r.purpose = self.meta().state.catalog().access.sessions.get(id).map(|s| s.purpose.clone()).unwrap_or_default();
                r.session = id.clone();
            }
            _ => {}
        }
        let r = crate::audit::bounded(r);
        self.propose(Command::Audited { record: r.encode(), cmd: Box::new(cmd) }, origin).await
    }

    /// An audit record of `origin`'s request, stamped with this node, the time, the request
    /// id and the access session it names (and that session's purpose).
    pub fn record(&self, origin: &Origin) -> kho_raft::audit::Record {
        let mut r = self.audit.record(&origin.caller, &origin.action);
        r.request_id = origin.request_id.to_string();
        if let Some(id) = &origin.caller.session {
            r.session = id.clone();
            // The purpose of the caller's own session only (not of one it tried to use).
            let meta = self.meta();
            let cat = meta.state.catalog();
            r.purpose =
                cat.access.sessions.get(id).filter(|s| s.principal == origin.caller.name).map(|s| s.purpose.clone()).unwrap_or_default();
        }
        r
    }

    /// Whether `origin`'s request is made in an access session (and authorization is on):
    /// what it reads is audited, fail closed ([`crate::audit::AuditLog::append`]).
    pub fn in_session(origin: &Origin) -> bool {
        origin.caller.session.is_some() && origin.caller.by != crate::auth::AuthBy::Off
    }

    /// How long a wait for a quorum may take: `raft.proposal_timeout_ms`, or the time left
    /// before the deadline (less [`deadline::DEADLINE_REPLY_MARGIN_MS`]) when that is
    /// shorter. DEADLINE_EXCEEDED once the deadline has passed: nothing is proposed,
    /// forwarded or read for such a request. Called right before every proposal and read
    /// barrier, so every write and read path has the check.
    fn wait(&self, origin: &Origin, kind: Kind, limit: Duration) -> Result<Wait, Status> {
        let Some(remaining) = origin.deadline.remaining(SystemTime::now()) else {
            return Err(Status::deadline_exceeded(match kind {
                Kind::Write => "the request's deadline passed before it was proposed: the write was not applied",
                Kind::Read => "the request's deadline passed before the read began: nothing was read",
            }));
        };
        let budget = deadline::wait_budget(remaining);
        Ok(if budget < limit { Wait { limit: budget, by_deadline: true } } else { Wait { limit, by_deadline: false } })
    }

    /// Where a request goes after group `g` refused it (`e`). For one proposal or a read
    /// barrier (`one_step`), `ForwardToLeader` comes before anything was appended (openraft's
    /// `ClientWriteError::ForwardToLeader`; a read barrier applies nothing), so a forwarded
    /// request gets the typed stale-route answer `not-leader`, naming the leader when this
    /// node knows it. A membership change takes several entries, and may have applied some
    /// before it found it no longer leads: its answer is untyped.
    fn route<T>(&self, g: &Group, e: ProposeError, origin: &Origin, kind: Kind, one_step: bool) -> Result<Leader<T>, Status> {
        // A replica that knows the leader before it has the group's membership (a shard just
        // created: the leader's first entries are on their way) finds its address in the
        // meta group's, which has every node's.
        let e = match e {
            ProposeError::ForwardToLeader { leader_id: Some(id), leader_addr: None } => {
                ProposeError::ForwardToLeader { leader_id: Some(id), leader_addr: self.node.node_addr(id) }
            }
            other => other,
        };
        match e {
            ProposeError::ForwardToLeader { leader_id: Some(id), leader_addr: Some(addr) } if !origin.forwarded && id != self.node.id => {
                Ok(Leader::There(origin.forward_to(id, addr, kind, false)))
            }
            ProposeError::ForwardToLeader { .. } if origin.forwarded && !one_step => Err(Status::unavailable(
                "the leader changed while the membership change was forwarded; it may have been partly done: check `kho cluster status`, then retry",
            )),
            ProposeError::ForwardToLeader { leader_id, .. } if origin.forwarded => {
                let mut stale = RouteError::new(StaleRoute::NotLeader).leader(leader_id.filter(|l| *l != self.node.id));
                if let Some(st) = g.state.shard() {
                    stale = stale.shard(g.id).epoch(st.desc.epoch);
                }
                let leader = stale.leader_hint.map_or_else(|| "no leader is known yet".to_string(), |l| format!("the leader is node {l}"));
                Err(stale.status(format!(
                    "node {} does not lead group {} (the leader changed while the request was forwarded; {leader}); nothing was applied; retry",
                    self.node.id, g.id
                )))
            }
            other => Err(status::propose_error(other)),
        }
    }

    /// The leader to forward a request to when this node knows it is another node; None
    /// when this node leads, knows no leader, or got the request forwarded (it is then
    /// tried here, and a non-leader answers UNAVAILABLE rather than forward it again).
    pub fn leader_elsewhere(&self, g: &Group, origin: &Origin, kind: Kind) -> Option<Forward> {
        if origin.forwarded {
            return None;
        }
        let leader = g.status_leader()?;
        if leader == self.node.id {
            return None;
        }
        let addr = g.member_addr(leader).or_else(|| self.node.node_addr(leader))?;
        Some(origin.forward_to(leader, addr, kind, false))
    }

    /// Where the data of storage key `key` is served: this node's replica of its shard, or
    /// a node holding one. A local group whose own range holds the key comes first (the
    /// shard map learns of a split after it applied here); the shard map only says where
    /// to look when this node holds none. UNAVAILABLE when no shard holds the key in this
    /// node's copy of the shard map, or when a forwarded request reached a node without a
    /// replica.
    pub async fn shard_route(&self, key: &[u8], origin: &Origin, kind: Kind) -> Result<ShardRoute, Status> {
        if let Some(g) = self.node.local_group_for(key) {
            return Ok(ShardRoute::Local(g));
        }
        let desc = self.meta().state.catalog().shards.lookup(key).cloned().ok_or_else(|| {
            RouteError::new(StaleRoute::ShardNotFound).status(format!(
                "no shard holds key {} in node {}'s shard map (its tenant is being created?); retry",
                kho_raft::shard::printable_key(key),
                self.node.id
            ))
        })?;
        let listed_here = desc.replicas.iter().any(|r| r.node == self.node.id);
        // A group the map no longer lists here is a replica removed from the shard: it gets
        // no new entries, so it serves nothing.
        if let Some(g) = self.node.group(desc.id).filter(|_| listed_here) {
            return Ok(ShardRoute::Local(g));
        }
        if listed_here {
            // The map names this node, but its registry has not opened the group yet (or a
            // split applied here made a group the registry has not opened yet).
            self.node
                .ensure_shard_group(desc.id)
                .await
                .map_err(|e| Status::unavailable(format!("opening shard {}: {e}; retry", desc.id)))?;
            if let Some(g) = self.node.local_group_for(key).or_else(|| self.node.group(desc.id)) {
                return Ok(ShardRoute::Local(g));
            }
        }
        if !origin.from_client() {
            return Err(RouteError::new(StaleRoute::NoReplica).shard(desc.id).epoch(desc.epoch).status(format!(
                "node {} holds no replica of shard {} (its replicas moved); nothing was applied; retry",
                self.node.id, desc.id
            )));
        }
        let to = desc.voters().find_map(|n| self.node.node_addr(n).map(|a| (n, a)));
        let Some((node, addr)) = to else {
            return Err(Status::unavailable(format!("no address known for any replica of shard {}; retry", desc.id)));
        };
        Ok(ShardRoute::Remote(origin.forward_to(node, addr, kind, true)))
    }

    /// Proposes a command on the leader, waiting at most `raft.proposal_timeout_ms` (or
    /// until shortly before the deadline), or says where the leader is.
    pub async fn propose(&self, cmd: Command, origin: &Origin) -> Result<Leader<kho_raft::Response>, Status> {
        self.propose_in(&self.meta(), cmd, origin).await
    }

    /// [`Ctx::propose`] in group `g`.
    pub async fn propose_in(&self, g: &Group, cmd: Command, origin: &Origin) -> Result<Leader<kho_raft::Response>, Status> {
        let wait = self.wait(origin, Kind::Write, self.proposal_timeout)?;
        // A replica that knows no leader yet (a shard just created, an election) waits for
        // one rather than answer UNAVAILABLE at once.
        g.wait_for_leader(wait.limit.min(Duration::from_millis(LEADER_WAIT_MS))).await;
        match tokio::time::timeout(wait.limit, g.propose(cmd)).await {
            Err(_) if wait.by_deadline => Err(Status::deadline_exceeded(format!(
                "not committed within {} ms, before the request's deadline; the write may or may not have been applied",
                wait.limit.as_millis()
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "not committed within {} ms (raft.proposal_timeout_ms): no quorum reachable; the write may or may not have been applied",
                wait.limit.as_millis()
            ))),
            Ok(Ok(r)) => Ok(Leader::Here(r)),
            Ok(Err(e)) => self.route(g, e, origin, Kind::Write, true),
        }
    }

    /// A membership change (`f`), waiting at most `limit` (or until shortly before the
    /// deadline), or where the leader is.
    pub async fn change_membership<F, Fut>(&self, origin: &Origin, limit: Duration, f: F) -> Result<Leader<Vec<u64>>, Status>
    where
        F: FnOnce(Arc<Group>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u64>, ProposeError>>,
    {
        let wait = self.wait(origin, Kind::Write, limit)?;
        match tokio::time::timeout(wait.limit, f(self.meta())).await {
            Err(_) if wait.by_deadline => Err(Status::deadline_exceeded(format!(
                "membership change not done within {} ms, before the request's deadline; check `kho cluster status`",
                wait.limit.as_millis()
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "membership change not done within {} ms; check `kho cluster status`",
                wait.limit.as_millis()
            ))),
            Ok(Ok(voters)) => Ok(Leader::Here(voters)),
            Ok(Err(e)) => self.route(&self.meta(), e, origin, Kind::Write, false),
        }
    }

    /// Waits until a linearizable read can be served from this node's state.
    pub async fn read_barrier(&self, origin: &Origin) -> Result<Leader<()>, Status> {
        self.read_barrier_in(&self.meta(), origin).await
    }

    /// [`Ctx::read_barrier`] in group `g`.
    pub async fn read_barrier_in(&self, g: &Group, origin: &Origin) -> Result<Leader<()>, Status> {
        let wait = self.wait(origin, Kind::Read, self.proposal_timeout)?;
        g.wait_for_leader(wait.limit.min(Duration::from_millis(LEADER_WAIT_MS))).await;
        match tokio::time::timeout(wait.limit, g.read_barrier()).await {
            Err(_) if wait.by_deadline => Err(Status::deadline_exceeded(format!(
                "leadership not confirmed within {} ms, before the request's deadline",
                wait.limit.as_millis()
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "leadership not confirmed within {} ms (raft.proposal_timeout_ms): no quorum reachable",
                wait.limit.as_millis()
            ))),
            Ok(Ok(())) => Ok(Leader::Here(())),
            Ok(Err(e)) => self.route(g, e, origin, Kind::Read, true),
        }
    }

    /// `read_barrier` for a read that asked for `consistency` (the proto enum's number):
    /// a STALE read is served from this node's state at once, without the leader.
    pub async fn read_barrier_for(&self, g: &Group, consistency: i32, origin: &Origin) -> Result<Leader<()>, Status> {
        match kho_proto::v1::ReadConsistency::try_from(consistency) {
            Ok(kho_proto::v1::ReadConsistency::Linearizable) => self.read_barrier_in(g, origin).await,
            Ok(kho_proto::v1::ReadConsistency::Stale) => Ok(Leader::Here(())),
            Err(_) => Err(Status::invalid_argument(format!(
                "consistency: unknown value {consistency}; use 0 (READ_CONSISTENCY_LINEARIZABLE) or 1 (READ_CONSISTENCY_STALE)"
            ))),
        }
    }

    /// Runs `once`, a data handler's route-and-serve step (look the route up, then serve
    /// here or forward), again while it fails with a typed stale route ([`crate::route`]),
    /// on the node that received the request from its client only: at most
    /// [`STALE_ROUTE_TRIES_MAX`] tries in all, none started after the deadline. A forwarded
    /// request is tried once (one hop: its answer goes back to the node that forwarded it,
    /// which retries). A typed answer means nothing was applied, so trying again cannot
    /// apply a write twice; any other failure is the answer. A streaming call's step ends
    /// when its stream starts, so a stream is retried only before its first item.
    pub async fn routed<F, Fut, R>(&self, origin: &Origin, mut once: F) -> Result<R, Status>
    where
        F: FnMut(Origin) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let mut this = origin.clone();
        loop {
            #[cfg(feature = "failpoints")]
            if let Some(stale) = self.stale_route_fail_point(&this) {
                return Err(stale);
            }
            let last = match once(this.clone()).await {
                Err(s) => s,
                ok => return ok,
            };
            let stale = match next_try(&last, &this) {
                NextTry::Answer => return Err(last),
                NextTry::Exhausted => return Err(route::exhausted(last, self.node.id, this.try_no)),
                NextTry::After(stale) => stale,
            };
            if !self.before_next_try(&stale, &this).await {
                return Err(route::exhausted(last, self.node.id, this.try_no));
            }
            tracing::debug!(try_no = this.try_no, kind = stale.kind.as_str(), shard = ?stale.shard, leader = ?stale.leader_hint, "stale route; looking it up again");
            this.try_no += 1;
        }
    }

    /// Waits before the next try of a stale route: until this node's replica of the shard
    /// knows the leader the answer named (at most [`STALE_ROUTE_LEADER_WAIT_MS`]), else a
    /// short pause ([`STALE_ROUTE_BACKOFF_MS`], doubled per try); never past the deadline.
    /// False when the deadline leaves no time for another try.
    async fn before_next_try(&self, stale: &RouteError, origin: &Origin) -> bool {
        let Some(remaining) = origin.deadline.remaining(SystemTime::now()) else { return false };
        let budget = deadline::wait_budget(remaining);
        let local = stale.shard.and_then(|id| self.node.group(id));
        match (stale.kind, stale.leader_hint, local) {
            (StaleRoute::NotLeader, Some(leader), Some(g)) => {
                let limit = budget.min(Duration::from_millis(STALE_ROUTE_LEADER_WAIT_MS));
                use openraft::type_config::async_runtime::WatchReceiver as _;
                let mut rx = g.raft.metrics();
                let knows = async {
                    while rx.borrow_watched().current_leader != Some(leader) {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(limit, knows).await;
            }
            _ => {
                let pause = Duration::from_millis(STALE_ROUTE_BACKOFF_MS << (origin.try_no.saturating_sub(1)).min(8));
                tokio::time::sleep(pause.min(budget)).await;
            }
        }
        origin.deadline.remaining(SystemTime::now()).is_some()
    }

    /// Fail point `forwarded-stale-route` (docs/TESTING.md): a forwarded data request whose
    /// try is at most the fail point's argument (every try without one) is answered with
    /// the typed stale route `not-leader`, as if the leader had moved while it was forwarded.
    #[cfg(feature = "failpoints")]
    fn stale_route_fail_point(&self, origin: &Origin) -> Option<Status> {
        if origin.from_client() {
            return None;
        }
        let tries = fail::eval("forwarded-stale-route", |arg| arg.and_then(|a| a.parse::<u32>().ok()).unwrap_or(u32::MAX))?;
        (origin.try_no <= tries).then(|| {
            let why = format!("fail point forwarded-stale-route: node {} answers try {} as a stale route", self.node.id, origin.try_no);
            tracing::info!("{why}");
            RouteError::new(StaleRoute::NotLeader).status(why)
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.channels.get(addr, crate::channels::Lane::Forward).map_err(Status::unavailable)
    }

    pub fn data_client(&self, addr: &str) -> Result<DataClient<Channel>, Status> {
        let n = self.limits.grpc_message_bytes_max as usize;
        Ok(DataClient::new(self.channel(addr)?).max_decoding_message_size(n).max_encoding_message_size(n))
    }

    pub fn load_client(&self, addr: &str) -> Result<LoadClient<Channel>, Status> {
        let n = self.limits.grpc_message_bytes_max as usize;
        Ok(LoadClient::new(self.channel(addr)?).max_decoding_message_size(n).max_encoding_message_size(n))
    }

    pub fn admin_client(&self, addr: &str) -> Result<AdminClient<Channel>, Status> {
        let n = self.limits.grpc_message_bytes_max as usize;
        Ok(AdminClient::new(self.channel(addr)?).max_decoding_message_size(n).max_encoding_message_size(n))
    }

    /// Runs a forwarded call and waits at most `budget` for its answer. With a permit of
    /// [`FORWARDS_LINGERING_MAX`], the call runs in a task of its own that keeps it open up
    /// to [`FORWARD_LINGER_MS`] longer, so that neither this wait ending nor the client
    /// going away cancels it (an HTTP/2 reset; see `FORWARD_LINGER_MS`).
    pub async fn call_forwarded<R, F>(&self, to: &Forward, budget: Duration, call: F) -> Result<Response<R>, Status>
    where
        R: Send + 'static,
        F: std::future::Future<Output = Result<Response<R>, Status>> + Send + 'static,
    {
        let answer = match self.forwards_lingering.clone().try_acquire_owned() {
            Ok(permit) => {
                let linger = budget + Duration::from_millis(FORWARD_LINGER_MS);
                let task = tokio::spawn(async move {
                    let _permit = permit;
                    tokio::time::timeout(linger, call).await
                });
                // Dropping the handle (our wait ended, or our client went away) leaves the task running.
                match tokio::time::timeout(budget, task).await {
                    Ok(Ok(Ok(answer))) => Some(answer),
                    Ok(Ok(Err(_))) | Err(_) => None,
                    Ok(Err(join)) => return Err(Status::internal(format!("the forwarded call's task failed: {join}"))),
                }
            }
            Err(_) => tokio::time::timeout(budget, call).await.ok(),
        };
        to.answer(budget, answer)
    }
}

/// What an applied write reported.
pub struct Written {
    pub revision: u64,
    pub shard: u64,
    pub existed: bool,
    pub cas: Option<kho_raft::command::CasOutcome>,
}

impl Written {
    pub fn header(&self) -> kho_proto::v1::WriteHeader {
        kho_proto::v1::WriteHeader { revision: self.revision, shard_id: self.shard }
    }
}

pub fn written(r: kho_raft::Response, shard: u64) -> Result<Written, Status> {
    match r.outcome {
        Outcome::Written { existed, cas } => Ok(Written { revision: r.revision, shard, existed, cas }),
        Outcome::Done | Outcome::Job { .. } => Ok(Written { revision: r.revision, shard, existed: false, cas: None }),
        Outcome::Rejected(e) => Err(status::app_error(e)),
        other => Err(status::internal(format!("a write was answered with {other:?}"))),
    }
}

/// Forwards a request to the leader (a [`Forward`], which carries the client's deadline)
/// and returns its answer as ours, failures of the forwarding mapped by [`Forward::answer`].
#[macro_export]
macro_rules! forward {
    ($ctx:expr, $client:ident, $to:expr, $method:ident, $msg:expr) => {{
        let to: $crate::ctx::Forward = $to;
        let (req, budget) = to.request($msg)?;
        let mut client = $ctx.$client(&to.addr).map_err(|s| to.failed(&s))?;
        $ctx.call_forwarded(&to, budget, async move { client.$method(req).await }).await
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Arc<Caller> {
        Arc::new(Caller {
            name: "admin".into(),
            by: crate::auth::AuthBy::Certificate { fingerprint: String::new() },
            cluster_admin: true,
            session: None,
        })
    }

    fn to(kind: Kind, deadline: Deadline) -> Forward {
        Forward {
            leader_id: 2,
            addr: "10.0.0.2:7001".into(),
            kind,
            deadline,
            to_replica: false,
            try_no: 1,
            caller: admin(),
            request_id: Arc::from(""),
        }
    }

    fn in_a_minute() -> Deadline {
        Deadline::after(SystemTime::now(), Duration::from_secs(60))
    }

    #[test]
    fn a_forwarded_request_carries_the_absolute_deadline_and_the_time_left() {
        let d = in_a_minute();
        let (req, budget) = to(Kind::Write, d).request(()).unwrap();
        assert_eq!(req.metadata().get(FORWARDED).unwrap(), "1");
        assert_eq!(req.metadata().get(DEADLINE_HEADER).unwrap().to_str().unwrap(), d.unix_ms().to_string());
        let timeout = crate::deadline::parse_grpc_timeout(req.metadata().get("grpc-timeout").unwrap().to_str().unwrap()).unwrap();
        assert!(timeout <= Duration::from_secs(60) && timeout > Duration::from_secs(59), "{timeout:?}");
        assert!(budget < timeout, "the wait ends before the deadline: {budget:?} vs {timeout:?}");
    }

    #[test]
    fn nothing_is_forwarded_past_the_deadline() {
        let past = Deadline::from_unix_ms(crate::deadline::unix_ms(SystemTime::now()) - 1);
        let e = to(Kind::Write, past).request(()).unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(e.message().contains("node 2 at 10.0.0.2:7001") && e.message().contains("was not applied"), "{}", e.message());
    }

    #[test]
    fn transport_failures_become_unavailable_naming_the_leader() {
        let f = to(Kind::Write, in_a_minute());
        let transport = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(transport.code(), Code::Unknown, "tonic's own mapping, for the record");
        let s = f.map_status(transport);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().starts_with("forwarding to the leader (node 2 at 10.0.0.2:7001) failed: "), "{}", s.message());
        assert!(s.message().contains("the write may or may not have been applied"), "{}", s.message());
        assert_eq!(s.message().matches("connection reset").count(), 1, "{}", s.message());
        let read = to(Kind::Read, in_a_minute()).map_status(Status::from_error(Box::new(std::io::Error::other("x"))));
        assert_eq!(read.code(), Code::Unavailable);
        assert!(read.message().contains("node 2") && !read.message().contains("may or may not"), "{}", read.message());
    }

    #[test]
    fn timeouts_become_deadline_exceeded_and_the_leaders_answers_pass_unchanged() {
        let f = to(Kind::Write, in_a_minute());
        let s = f.map_status(Status::cancelled("Timeout expired"));
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert!(s.message().contains("may or may not have been applied"), "{}", s.message());
        let s = f.answer::<()>(Duration::from_millis(950), None).unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert!(s.message().contains("within 950 ms") && s.message().contains("node 2"), "{}", s.message());
        for leaders in [
            Status::not_found("table `t/x` does not exist"),
            Status::resource_exhausted("this node is serving 4096 client requests"),
            Status::unavailable("the leader changed while the request was forwarded; retry"),
            RouteError::new(StaleRoute::NotLeader).leader(Some(3)).shard(4).status("node 2 does not lead group 4"),
            Status::deadline_exceeded("the request's deadline passed before it was proposed: the write was not applied"),
        ] {
            let (code, message, typed) = (leaders.code(), leaders.message().to_string(), RouteError::of(&leaders));
            let s = f.map_status(leaders);
            assert_eq!((s.code(), s.message()), (code, message.as_str()));
            assert_eq!(RouteError::of(&s), typed, "a typed stale route reaches the forwarding node typed");
        }
    }

    fn from(forwarded: bool, via_replica: bool, try_no: u32) -> Origin {
        Origin {
            forwarded,
            via_replica,
            deadline: in_a_minute(),
            try_no,
            caller: admin(),
            action: Arc::from("Put"),
            request_id: Arc::from(""),
        }
    }

    #[test]
    fn only_the_node_that_received_the_request_tries_a_stale_route_again_and_a_bounded_number_of_times() {
        let stale = RouteError::new(StaleRoute::NotLeader).leader(Some(3)).shard(4);
        let typed = stale.status("node 2 does not lead shard 4");
        for try_no in 1..STALE_ROUTE_TRIES_MAX {
            assert_eq!(next_try(&typed, &from(false, false, try_no)), NextTry::After(stale.clone()), "try {try_no}");
        }
        assert_eq!(next_try(&typed, &from(false, false, STALE_ROUTE_TRIES_MAX)), NextTry::Exhausted);
        // One hop: a forwarded request's stale route goes back to the node that forwarded it.
        assert_eq!(next_try(&typed, &from(true, false, 1)), NextTry::Answer);
        assert_eq!(next_try(&typed, &from(false, true, 1)), NextTry::Answer);
        // What may have been applied, or what another try cannot fix, is the answer at once.
        for other in [
            Status::unavailable(
                "not committed within 5000 ms (raft.proposal_timeout_ms): no quorum reachable; the write may or may not have been applied",
            ),
            to(Kind::Write, in_a_minute()).failed(&Status::unavailable("tcp connect error")),
            Status::deadline_exceeded("the leader (node 2 at 10.0.0.2:7001) did not answer within 950 ms"),
            Status::not_found("table `t/x` does not exist"),
        ] {
            assert_eq!(next_try(&other, &from(false, false, 1)), NextTry::Answer, "{other:?}");
        }
    }

    #[test]
    fn a_forwarded_request_names_its_try_and_the_receiving_node_reads_it() {
        let mut f = to(Kind::Read, in_a_minute());
        f.try_no = 2;
        let (req, _) = f.request(()).unwrap();
        assert_eq!(req.metadata().get(ROUTE_TRY_HEADER).unwrap(), "2");
        let o = origin_of(&req, Duration::from_secs(1), admin()).unwrap();
        assert!(o.forwarded && !o.from_client());
        assert_eq!(o.try_no, 2);
        // A client's request is a first try, whatever it sends.
        let mut client = Request::new(());
        client.metadata_mut().insert(ROUTE_TRY_HEADER, MetadataValue::from_static("3"));
        let o = origin_of(&client, Duration::from_secs(1), admin()).unwrap();
        assert!(o.from_client());
        assert_eq!(o.try_no, 1);
    }
}
