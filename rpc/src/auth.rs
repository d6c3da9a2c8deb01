//! Who a request comes from (authentication) and what it may do (authorization), from
//! the node's configuration (`[auth]`) and its copy of the catalog's grants and tokens
//! ([`kho_raft::access`]). docs/SECURITY.md, "Principals and grants".
//!
//! The node a client reaches authenticates it; a request it forwards carries the
//! principal in [`PRINCIPAL_HEADER`] and [`PRINCIPAL_BY_HEADER`], believed only on the
//! peer listener (node certificates). Every node that serves a request authorizes it from
//! its own catalog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kho_raft::access::{self, Perm, TableView};
use kho_raft::catalog::Catalog;
use sha2::{Digest, Sha256};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::config::AuthConfig;
use crate::tls::{CertName, ConnInfo, ListenerKind};

/// The metadata key of a bearer token: `authorization: Bearer kho_<id>_<secret>`.
pub const AUTHORIZATION: &str = "authorization";
/// A forwarded request's principal (set by the forwarding node).
pub const PRINCIPAL_HEADER: &str = "kho-principal";
/// The access session a request is made in (`OpenAccessSession`): 32 hex digits. Sent by
/// clients, and by a node with the requests it forwards.
pub const SESSION_HEADER: &str = "kho-session";
/// How the forwarding node authenticated it: `certificate` or `token:<token id>`.
pub const PRINCIPAL_BY_HEADER: &str = "kho-principal-by";
/// Longest `authorization` value looked at, bytes (a token is 86): a longer one is
/// refused without being parsed.
pub const AUTHORIZATION_BYTES_MAX: usize = 512;
/// Secret bytes of a token (64 hex digits in the token).
pub const TOKEN_SECRET_BYTES: usize = 32;
/// How often each node confirms that its copy of the grants is current (a read barrier
/// of the meta group), milliseconds.
pub const GRANTS_CONFIRM_INTERVAL_MS: u64 = 1_000;
/// A node whose last confirmation started longer ago than this refuses requests that
/// depend on grants or tokens (`UNAVAILABLE`), milliseconds. So a revoke holds on every
/// node at most this long after it was acknowledged (docs/SECURITY.md, "How soon a revoke
/// holds").
pub const GRANTS_STALE_MAX_MS: u64 = 5_000;
/// Timeout of one confirmation, milliseconds.
const GRANTS_CONFIRM_TIMEOUT_MS: u64 = 2_000;
/// Pause after a confirmation that failed, milliseconds.
const GRANTS_CONFIRM_RETRY_MS: u64 = 100;

/// How a caller was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthBy {
    /// Its client certificate (SHA-256 fingerprint).
    Certificate { fingerprint: String },
    /// A token (its id).
    Token { id: String },
    /// Authorization is off (`auth.enabled = false`).
    Off,
    /// A node's own request on the peer listener (asking another node for its status):
    /// a node may send Raft messages, so it may do anything.
    Node { id: Option<u64> },
}

/// A request's principal.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user; empty with authorization off.
    pub name: String,
    pub by: AuthBy,
    /// A cluster admin by configuration (`auth.cluster_admins`), or authorization is off.
    pub cluster_admin: bool,
    /// The access session the request names ([`SESSION_HEADER`]), well formed; whether it
    /// is open and the caller's is decided where the request is authorized.
    pub session: Option<String>,
}

impl Caller {
    /// Whether what this caller may do depends on the catalog: everything but a cluster
    /// admin by configuration authenticated by its certificate (no revocable grant or token
    /// stands behind it), and authorization off.
    fn needs_current_grants(&self) -> bool {
        !(self.cluster_admin && matches!(self.by, AuthBy::Certificate { .. } | AuthBy::Off | AuthBy::Node { .. }))
    }

    pub fn by_name(&self) -> &'static str {
        match self.by {
            AuthBy::Certificate { .. } => "certificate",
            AuthBy::Token { .. } => "token",
            AuthBy::Off => "none",
            AuthBy::Node { .. } => "node",
        }
    }

    /// Puts the principal and its session into a request forwarded to another node.
    pub fn forward_into(&self, md: &mut MetadataMap) {
        if let Some(v) = self.session.as_deref().and_then(|s| MetadataValue::try_from(s).ok()) {
            md.insert(SESSION_HEADER, v);
        }
        if matches!(self.by, AuthBy::Off | AuthBy::Node { .. }) {
            return;
        }
        if let Ok(v) = MetadataValue::try_from(self.name.as_str()) {
            md.insert(PRINCIPAL_HEADER, v);
        }
        let by = match &self.by {
            AuthBy::Token { id } => format!("token:{id}"),
            _ => "certificate".to_string(),
        };
        if let Ok(v) = MetadataValue::try_from(by) {
            md.insert(PRINCIPAL_BY_HEADER, v);
        }
    }
}

/// The node's authentication and authorization state.
pub struct Auth {
    pub config: AuthConfig,
    /// Unix milliseconds at which the last successful confirmation of the grants started
    /// (0: none yet).
    confirmed_at_ms: AtomicU64,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unauthenticated(why: impl std::fmt::Display) -> Status {
    Status::unauthenticated(why.to_string())
}

/// SHA-256 of a token secret.
pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Equal in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token's text: `kho_<16 hex id>_<64 hex secret>`.
pub fn token_text(id: &str, secret: &[u8]) -> String {
    format!("kho_{id}_{}", hex(secret))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Parses `Bearer kho_<id>_<secret>` into the id and the secret bytes.
pub fn parse_bearer(value: &str) -> Result<(String, Vec<u8>), Status> {
    const SHAPE: &str = "expected `Bearer kho_<16 hex digits>_<64 hex digits>`";
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthenticated(format!("authorization: not a bearer token ({SHAPE})")))?;
    let rest = token.trim().strip_prefix("kho_").ok_or_else(|| unauthenticated(format!("authorization: malformed token ({SHAPE})")))?;
    let (id, secret) = rest.split_once('_').ok_or_else(|| unauthenticated(format!("authorization: malformed token ({SHAPE})")))?;
    let secret = unhex(secret).filter(|s| s.len() == TOKEN_SECRET_BYTES);
    match secret {
        Some(secret) if access::is_token_id(id) => Ok((id.to_string(), secret)),
        _ => Err(unauthenticated(format!("authorization: malformed token ({SHAPE})"))),
    }
}

impl Auth {
    pub fn new(config: AuthConfig) -> Auth {
        Auth { config, confirmed_at_ms: AtomicU64::new(0) }
    }

    fn is_cluster_admin(&self, name: &str) -> bool {
        self.config.cluster_admins.iter().any(|a| a == name)
    }

    /// The principal of `req`: its client certificate's user, or its token's, or (on the
    /// peer listener) the principal the forwarding node names. `UNAUTHENTICATED` without
    /// credentials, with a bad token, or with a certificate and a token that name two
    /// principals.
    pub fn authenticate<T>(&self, req: &Request<T>, cat: &Catalog) -> Result<Arc<Caller>, Status> {
        let session = session_of(req.metadata())?;
        let mut caller = self.principal(req, cat)?;
        if session.is_some() {
            Arc::make_mut(&mut caller).session = session;
        }
        Ok(caller)
    }

    fn principal<T>(&self, req: &Request<T>, cat: &Catalog) -> Result<Arc<Caller>, Status> {
        if !self.config.enabled {
            return Ok(Arc::new(Caller { name: String::new(), by: AuthBy::Off, cluster_admin: true, session: None }));
        }
        let info = req.extensions().get::<ConnInfo>();
        let md = req.metadata();
        if let Some(i) = info.filter(|i| i.listener == ListenerKind::Peer) {
            if md.get(PRINCIPAL_HEADER).is_none() {
                let id = i.node();
                let name = id.map_or_else(|| "node".to_string(), |n| format!("node-{n}"));
                return Ok(Arc::new(Caller { name, by: AuthBy::Node { id }, cluster_admin: true, session: None }));
            }
            return self.forwarded(md, cat);
        }
        let cert_user = info.and_then(|i| i.cert.as_ref()).and_then(|c| match &c.name {
            Some(CertName::User(u)) => Some((u.clone(), c.fingerprint.clone())),
            _ => None,
        });
        let token = match md.get(AUTHORIZATION) {
            None => None,
            Some(v) if v.len() > AUTHORIZATION_BYTES_MAX => {
                return Err(unauthenticated(format!(
                    "authorization: {} bytes exceed the limit of {AUTHORIZATION_BYTES_MAX} bytes",
                    v.len()
                )))
            }
            Some(v) => {
                let text = v.to_str().map_err(|_| unauthenticated("authorization: not printable ASCII"))?;
                Some(self.check_token(text, cat)?)
            }
        };
        let (name, by) = match (cert_user, token) {
            (None, None) => {
                let node =
                    info.and_then(|i| i.node()).map(|n| format!(" (the certificate presented is node {n}'s: a node is not a principal)"));
                return Err(unauthenticated(format!(
                    "no credentials{}: present a client certificate (kho --cert/--key, KHO_CERT/KHO_KEY) or a token (metadata `authorization: Bearer kho_…`, kho --token, KHO_TOKEN)",
                    node.unwrap_or_default()
                )));
            }
            (Some((u, fingerprint)), None) => {
                access::check_principal("certificate user", &u).map_err(|e| unauthenticated(e.message))?;
                (u, AuthBy::Certificate { fingerprint })
            }
            (None, Some((u, id))) => (u, AuthBy::Token { id }),
            (Some((cu, _)), Some((tu, id))) if cu != tu => {
                return Err(unauthenticated(format!(
                    "the client certificate names `{cu}` and token {id} names `{tu}`: a request names one principal"
                )))
            }
            (Some(_), Some((u, id))) => (u, AuthBy::Token { id }),
        };
        let cluster_admin = self.is_cluster_admin(&name);
        Ok(Arc::new(Caller { name, by, cluster_admin, session: None }))
    }

    /// A token's principal and id, if the token is known, its secret right, not revoked and
    /// not expired. An unknown id and a wrong secret get the same answer.
    fn check_token(&self, text: &str, cat: &Catalog) -> Result<(String, String), Status> {
        let (id, secret) = parse_bearer(text)?;
        let hash = secret_hash(&secret);
        let Some(t) = cat.access.tokens.get(&id).filter(|t| same(&t.secret_sha256, &hash)) else {
            return Err(unauthenticated("authorization: invalid token (unknown, or a wrong secret)"));
        };
        if t.revoked {
            return Err(unauthenticated(format!("authorization: token {id} was revoked")));
        }
        if !t.live(now_ms()) {
            return Err(unauthenticated(format!("authorization: token {id} expired at {} (Unix ms)", t.expires_at_ms)));
        }
        Ok((t.principal.clone(), id))
    }

    /// The principal a forwarding node names (peer listener only).
    fn forwarded(&self, md: &MetadataMap, cat: &Catalog) -> Result<Arc<Caller>, Status> {
        let name = md.get(PRINCIPAL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        access::check_principal(PRINCIPAL_HEADER, name).map_err(|e| unauthenticated(e.message))?;
        let by = match md.get(PRINCIPAL_BY_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default() {
            "certificate" => AuthBy::Certificate { fingerprint: String::new() },
            other => match other.strip_prefix("token:") {
                Some(id) => {
                    // The forwarding node checked the secret; this node checks that the
                    // token is still good by its own catalog.
                    match cat.access.tokens.get(id) {
                        Some(t) if t.principal == name && t.live(now_ms()) => AuthBy::Token { id: id.to_string() },
                        _ => return Err(unauthenticated(format!("authorization: token {id} is not valid (any more)"))),
                    }
                }
                None => return Err(unauthenticated(format!("{PRINCIPAL_BY_HEADER}: `{other}` is not certificate or token:<id>"))),
            },
        };
        Ok(Arc::new(Caller { name: name.to_string(), cluster_admin: self.is_cluster_admin(name), by, session: None }))
    }

    /// `UNAVAILABLE` when this node has not confirmed its copy of the grants within
    /// [`GRANTS_STALE_MAX_MS`] and the caller's rights depend on it.
    pub fn check_current(&self, caller: &Caller) -> Result<(), Status> {
        if !caller.needs_current_grants() {
            return Ok(());
        }
        let at = self.confirmed_at_ms.load(Ordering::Acquire);
        let age = now_ms().saturating_sub(at);
        if at == 0 || age > GRANTS_STALE_MAX_MS {
            let since = if at == 0 { "since it started".to_string() } else { format!("for {age} ms") };
            return Err(Status::unavailable(format!(
                "this node has not confirmed that its copy of the grants and tokens is current {since} (the limit is \
                 {GRANTS_STALE_MAX_MS} ms, GRANTS_STALE_MAX_MS: it has not reached the meta group's leader); retry, or try another node"
            )));
        }
        Ok(())
    }

    /// Records a confirmation that started at `started_ms`.
    pub fn confirmed(&self, started_ms: u64) {
        self.confirmed_at_ms.fetch_max(started_ms, Ordering::AcqRel);
    }

    /// `PERMISSION_DENIED` unless the caller is a cluster admin.
    pub fn require_cluster_admin(&self, caller: &Caller, what: &str) -> Result<(), Status> {
        if caller.cluster_admin {
            // A cluster admin by token: the token may have been revoked.
            return self.check_current(caller);
        }
        Err(Status::permission_denied(format!(
            "principal `{}` may not {what}: that needs the cluster admin role (auth.cluster_admins)",
            caller.name
        )))
    }

    /// `PERMISSION_DENIED` unless the caller is an auditor (`auth.auditors`; everyone with
    /// authorization off).
    pub fn require_auditor(&self, caller: &Caller) -> Result<(), Status> {
        if caller.by == AuthBy::Off {
            return Ok(());
        }
        if self.config.auditors.contains(&caller.name) {
            if matches!(caller.by, AuthBy::Token { .. }) {
                self.check_current(caller)?;
            }
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "principal `{}` may not read the audit log: that needs the auditor role (auth.auditors)",
            caller.name
        )))
    }

    /// `PERMISSION_DENIED` unless the caller is a cluster admin or holds `admin` on the tenant.
    pub fn require_tenant_admin(&self, caller: &Caller, cat: &Catalog, tenant: &str, what: &str) -> Result<(), Status> {
        self.check_current(caller)?;
        if caller.cluster_admin {
            return Ok(());
        }
        if cat.access.on_tenant(&caller.name, now_ms(), Perm::Admin, tenant) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "principal `{}` may not {what}: that needs an admin grant on tenant `{tenant}`",
            caller.name
        )))
    }

    /// What the caller may do with `perm` in `tenant/table`, inside its access session
    /// when it names one; `PERMISSION_DENIED` naming the missing grant (or session) when
    /// nothing, or when the session named is not open or not the caller's. Decided from
    /// names only, before the table is looked up, so the answer never tells whether
    /// another tenant's table exists.
    pub fn view(&self, caller: &Caller, cat: &Catalog, perm: Perm, tenant: &str, table: &str) -> Result<TableView, Status> {
        self.check_current(caller)?;
        let now = now_ms();
        let session = match (&caller.session, &caller.by) {
            (Some(id), by) if *by != AuthBy::Off => Some(cat.access.session_of(id, &caller.name, now).map_err(Status::permission_denied)?),
            _ => None,
        };
        if caller.cluster_admin {
            return Ok(TableView { all: true, ..TableView::default() });
        }
        let v = cat.access.view_in(&caller.name, now, perm, tenant, table, session);
        if v.is_empty() {
            if session.is_none_or(|s| s.tenant != tenant) && cat.access.needs_session(&caller.name, now, perm, tenant, table) {
                return Err(Status::permission_denied(format!(
                    "principal `{}`: its {} grant on `{tenant}/{table}` counts only inside an access session on `{tenant}`; open one \
                     (OpenAccessSession, kho session open) and send its id as `{SESSION_HEADER}` metadata",
                    caller.name,
                    perm.name()
                )));
            }
            return Err(missing(caller, perm, tenant, table, None, None));
        }
        Ok(v)
    }

    /// Runs forever: every [`GRANTS_CONFIRM_INTERVAL_MS`] a read barrier of the meta group;
    /// a success records when it started.
    pub async fn confirm_grants(self: Arc<Self>, meta: Arc<kho_raft::Group>) {
        loop {
            let started = now_ms();
            let pause = match tokio::time::timeout(Duration::from_millis(GRANTS_CONFIRM_TIMEOUT_MS), meta.read_barrier()).await {
                Ok(Ok(())) => {
                    self.confirmed(started);
                    GRANTS_CONFIRM_INTERVAL_MS
                }
                // No leader yet (a node starting), or none reachable: try again soon.
                _ => GRANTS_CONFIRM_RETRY_MS,
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// `PERMISSION_DENIED` naming the grant that is missing.
pub fn missing(caller: &Caller, perm: Perm, tenant: &str, table: &str, family: Option<&str>, qualifier: Option<&[u8]>) -> Status {
    let mut scope = format!("`{tenant}/{table}`");
    if let Some(f) = family {
        scope.push_str(&format!(" family `{f}`"));
    }
    if let Some(q) = qualifier {
        scope.push_str(&format!(" qualifier `{}`", String::from_utf8_lossy(q)));
    }
    Status::permission_denied(format!("principal `{}` has no {} grant on {scope}", caller.name, perm.name()))
}

/// The session a request names, when it names one: 32 lowercase hex digits.
fn session_of(md: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(v) = md.get(SESSION_HEADER) else { return Ok(None) };
    match v.to_str() {
        Ok(id) if access::is_session_id(id) => Ok(Some(id.to_string())),
        _ => Err(Status::invalid_argument(format!(
            "{SESSION_HEADER}: not a session id (32 lowercase hex digits, as OpenAccessSession returns)"
        ))),
    }
}

/// A new access session's id: 16 random bytes, hex.
pub fn new_session_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    hex(&id)
}

/// A new token's id and secret.
pub fn new_token_secret() -> (String, Vec<u8>) {
    use rand::RngCore;
    let mut id = [0u8; 8];
    let mut secret = vec![0u8; TOKEN_SECRET_BYTES];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    (hex(&id), secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_malformed_ones_are_refused_by_name() {
        let (id, secret) = new_token_secret();
        let text = token_text(&id, &secret);
        assert_eq!(text.len(), 4 + 16 + 1 + 64);
        assert_eq!(parse_bearer(&format!("Bearer {text}")).unwrap(), (id.clone(), secret));
        for bad in ["", "Basic abc", "Bearer ", "Bearer kho_", "Bearer kho_zz_00", &format!("Bearer kho_{id}_00"), "Bearer xyz"] {
            let e = parse_bearer(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
            assert!(e.message().starts_with("authorization:"), "{bad}: {}", e.message());
        }
        assert!(same(&secret_hash(b"a"), &secret_hash(b"a")) && !same(&secret_hash(b"a"), &secret_hash(b"b")));
    }
}
