//! Principals' tokens and grants: the records the meta group replicates, and the pure
//! decision every node takes from its own copy (docs/SECURITY.md, "Principals and grants").
//!
//! System tables (tenant 0): table 8 `grants` (row = grant id u64 BE → [`Grant`] record),
//! table 9 `tokens` (row = token id, 16 hex digits → [`Token`] record), table 11
//! `sessions` (row = session id, 32 hex digits → [`Session`] record). A record is one
//! format byte and the postcard encoding of the struct, its fields in declaration order:
//! [`ACCESS_RECORD_V1`] for tokens and sessions, [`GRANT_RECORD_V2`] for grants (format 1,
//! a grant without the session fields, still decodes). Nothing here reads a clock: "now"
//! is the caller's.

use std::collections::{BTreeMap, BTreeSet};

use kho_engine::keys::{self, TableId, SYSTEM_TENANT};
use serde::{Deserialize, Serialize};

use crate::AppError;

pub const SYS_GRANTS: TableId = 8;
pub const SYS_TOKENS: TableId = 9;
pub const SYS_SESSIONS: TableId = 11;
/// The counter grant ids are drawn from (table `counters`).
pub const NEXT_GRANT_ID: &[u8] = b"next_grant_id";
/// Format byte of a token or session record (and of a grant written before sessions).
pub const ACCESS_RECORD_V1: u8 = 1;
/// Format byte of a grant record with the session fields.
pub const GRANT_RECORD_V2: u8 = 2;

/// Most grants in the cluster, count.
pub const GRANTS_MAX: usize = 100_000;
/// Most grants of one principal, count.
pub const GRANTS_PER_PRINCIPAL_MAX: usize = 1_024;
/// Most qualifiers one grant names, count.
pub const GRANT_QUALIFIERS_MAX: usize = 256;
/// Longest qualifier a grant names, bytes.
pub const GRANT_QUALIFIER_BYTES_MAX: usize = 1_024;
/// Most tokens in the cluster (revoked and expired ones included until removed), count.
pub const TOKENS_MAX: usize = 100_000;
/// Longest note kept with a token, bytes.
pub const TOKEN_NOTE_BYTES_MAX: usize = 256;
/// Longest principal name, bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 64;
/// Most access sessions kept (open, and ended ones until they are pruned), count.
pub const SESSIONS_MAX: usize = 100_000;
/// Most open access sessions of one principal, count.
pub const SESSIONS_PER_PRINCIPAL_MAX: usize = 64;
/// Longest an access session may last, whatever a grant says, milliseconds (24 hours).
pub const SESSION_DURATION_MAX_MS: u64 = 24 * 3_600_000;
/// Longest purpose text of an access session, bytes.
pub const SESSION_PURPOSE_BYTES_MAX: usize = 512;

/// What a grant allows, as bits of [`Grant::perms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Perm {
    Read = 1,
    Write = 2,
    Admin = 4,
}

impl Perm {
    pub fn name(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Admin => "admin",
        }
    }
}

/// One grant: `perms` on a tenant, a table, a family, or some qualifiers of a family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Drawn at apply from [`NEXT_GRANT_ID`]; 0 in a command.
    pub id: u64,
    pub principal: String,
    pub tenant: String,
    /// Empty: every table of the tenant.
    pub table: String,
    /// Empty: every family (of `table`).
    pub family: String,
    /// Empty: every qualifier (of `family`).
    pub qualifiers: Vec<serde_bytes::ByteBuf>,
    /// [`Perm`] bits.
    pub perms: u8,
    /// Milliseconds since the Unix epoch; 0: never.
    pub expires_at_ms: u64,
    /// Set by the proposer.
    pub created_at_ms: u64,
    /// The meta group's log index of the grant; set at apply.
    pub version: u64,
    pub granted_by: String,
    /// The grant counts only inside an open access session ([`Session`]) of its principal
    /// on its tenant (a cross-agency grant); every read through one is audited.
    pub session_required: bool,
    /// The longest session this grant allows, milliseconds; 0 unless `session_required`.
    pub session_duration_max_ms: u64,
}

/// A grant as format 1 stored it, and as `Command::CreateGrant` carries it (before access
/// sessions): read as a grant that requires no session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantV1 {
    pub id: u64,
    pub principal: String,
    pub tenant: String,
    pub table: String,
    pub family: String,
    pub qualifiers: Vec<serde_bytes::ByteBuf>,
    pub perms: u8,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    pub version: u64,
    pub granted_by: String,
}

impl From<GrantV1> for Grant {
    fn from(g: GrantV1) -> Grant {
        Grant {
            id: g.id,
            principal: g.principal,
            tenant: g.tenant,
            table: g.table,
            family: g.family,
            qualifiers: g.qualifiers,
            perms: g.perms,
            expires_at_ms: g.expires_at_ms,
            created_at_ms: g.created_at_ms,
            version: g.version,
            granted_by: g.granted_by,
            session_required: false,
            session_duration_max_ms: 0,
        }
    }
}

impl Grant {
    /// Whether this grant reaches every cell of the scope `table`/`family`/`qualifiers` of
    /// its tenant (empty parts: everything).
    pub fn covers(&self, table: &str, family: &str, qualifiers: &[serde_bytes::ByteBuf]) -> bool {
        let table_ok = self.table.is_empty() || (self.table == table);
        let family_ok = self.family.is_empty() || (!table.is_empty() && self.family == family);
        let qualifiers_ok = self.qualifiers.is_empty()
            || (!family.is_empty() && !qualifiers.is_empty() && qualifiers.iter().all(|q| self.qualifiers.contains(q)));
        table_ok && family_ok && qualifiers_ok
    }

    pub fn has(&self, p: Perm) -> bool {
        self.perms & p as u8 != 0
    }

    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || now_ms < self.expires_at_ms
    }

    /// `tenant`, `tenant/table`, `tenant/table family`, `tenant/table family:{q1,q2}`.
    pub fn scope(&self) -> String {
        let mut s = self.tenant.clone();
        if !self.table.is_empty() {
            s.push('/');
            s.push_str(&self.table);
        }
        if !self.family.is_empty() {
            s.push_str(&format!(" family `{}`", self.family));
        }
        if !self.qualifiers.is_empty() {
            let q: Vec<String> = self.qualifiers.iter().map(|q| String::from_utf8_lossy(q).into_owned()).collect();
            s.push_str(&format!(" qualifiers {{{}}}", q.join(", ")));
        }
        s
    }

    /// The shape rules, checked where a grant is asked for and again at apply.
    pub fn check(&self) -> Result<(), AppError> {
        check_principal("grant.principal", &self.principal)?;
        crate::catalog::check_name("grant.tenant", &self.tenant)?;
        if !self.table.is_empty() {
            crate::catalog::check_name("grant.table", &self.table)?;
        }
        if !self.family.is_empty() {
            if self.table.is_empty() {
                return Err(AppError::invalid("grant.family: a family grant needs grant.table"));
            }
            crate::catalog::check_name("grant.family", &self.family)?;
        }
        if !self.qualifiers.is_empty() && self.family.is_empty() {
            return Err(AppError::invalid("grant.qualifiers: a qualifier grant needs grant.family"));
        }
        if self.qualifiers.len() > GRANT_QUALIFIERS_MAX {
            return Err(AppError::invalid(format!(
                "grant.qualifiers: {} qualifiers exceed the limit of {GRANT_QUALIFIERS_MAX} per grant",
                self.qualifiers.len()
            )));
        }
        if let Some(q) = self.qualifiers.iter().find(|q| q.len() > GRANT_QUALIFIER_BYTES_MAX) {
            return Err(AppError::invalid(format!(
                "grant.qualifiers: a qualifier of {} bytes exceeds the limit of {GRANT_QUALIFIER_BYTES_MAX} bytes",
                q.len()
            )));
        }
        if self.perms == 0 || self.perms & !7 != 0 {
            return Err(AppError::invalid("grant.permissions: give one or more of READ, WRITE, ADMIN"));
        }
        if self.has(Perm::Admin) && !self.table.is_empty() {
            return Err(AppError::invalid("grant.permissions: ADMIN is granted on a whole tenant (leave grant.table empty)"));
        }
        if self.session_required {
            if self.has(Perm::Admin) {
                return Err(AppError::invalid("grant.session_required: an ADMIN grant cannot require an access session"));
            }
            if self.session_duration_max_ms == 0 || self.session_duration_max_ms > SESSION_DURATION_MAX_MS {
                return Err(AppError::invalid(format!(
                    "grant.session_duration_max_ms: {} ms; a grant that requires a session allows sessions of 1 ms to \
                     {SESSION_DURATION_MAX_MS} ms (24 hours, SESSION_DURATION_MAX_MS)",
                    self.session_duration_max_ms
                )));
            }
        } else if self.session_duration_max_ms != 0 {
            return Err(AppError::invalid("grant.session_duration_max_ms: set only with grant.session_required"));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![GRANT_RECORD_V2];
        out.extend(postcard::to_allocvec(self).expect("a grant encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Grant, String> {
        match bytes.split_first() {
            Some((&GRANT_RECORD_V2, rest)) => postcard::from_bytes(rest).map_err(|e| format!("grant record: {e}")),
            Some((&ACCESS_RECORD_V1, rest)) => {
                let g: GrantV1 = postcard::from_bytes(rest).map_err(|e| format!("grant record: {e}"))?;
                Ok(g.into())
            }
            Some((v, _)) => Err(format!("grant record: unknown format {v}")),
            None => Err("grant record: empty".into()),
        }
    }
}

/// An access session: a principal's declared, time-boxed use of the session-requiring
/// grants it holds on another tenant, for one purpose and a scope of fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// 32 lowercase hex digits (16 random bytes), drawn by the proposer.
    pub id: String,
    pub principal: String,
    pub tenant: String,
    /// Empty: every table the grants reach.
    pub table: String,
    /// Empty: every family (of `table`).
    pub family: String,
    /// Empty: every qualifier (of `family`).
    pub qualifiers: Vec<serde_bytes::ByteBuf>,
    pub purpose: String,
    pub opened_at_ms: u64,
    pub expires_at_ms: u64,
    /// 0: not closed.
    pub closed_at_ms: u64,
    pub closed_by: String,
    /// The meta group's log index of the opening; set at apply.
    pub version: u64,
}

impl Session {
    /// Open at `now_ms`: not closed, not expired.
    pub fn open_at(&self, now_ms: u64) -> bool {
        self.closed_at_ms == 0 && now_ms < self.expires_at_ms
    }

    /// Its scope as a grant of every permission (for [`Grant::covers`] and views).
    fn scope_view(&self, table: &str) -> TableView {
        let mut v = TableView::default();
        if !self.table.is_empty() && self.table != table {
            return v;
        }
        if self.family.is_empty() {
            v.all = true;
        } else if self.qualifiers.is_empty() {
            v.families.insert(self.family.clone(), None);
        } else {
            v.families.insert(self.family.clone(), Some(self.qualifiers.iter().map(|q| q.to_vec()).collect()));
        }
        v
    }

    /// The shape rules (not the grants behind it), checked where it is opened and at apply.
    pub fn check(&self) -> Result<(), AppError> {
        if !is_session_id(&self.id) {
            return Err(AppError::invalid("session.id: not 32 lowercase hex digits"));
        }
        check_principal("session.principal", &self.principal)?;
        crate::catalog::check_name("session.tenant", &self.tenant)?;
        if !self.table.is_empty() {
            crate::catalog::check_name("session.table", &self.table)?;
        }
        if !self.family.is_empty() {
            if self.table.is_empty() {
                return Err(AppError::invalid("fields: a family needs a table"));
            }
            crate::catalog::check_name("session.family", &self.family)?;
        }
        if !self.qualifiers.is_empty() && self.family.is_empty() {
            return Err(AppError::invalid("fields: qualifiers need a family"));
        }
        if self.qualifiers.len() > GRANT_QUALIFIERS_MAX || self.qualifiers.iter().any(|q| q.len() > GRANT_QUALIFIER_BYTES_MAX) {
            return Err(AppError::invalid(format!(
                "fields: at most {GRANT_QUALIFIERS_MAX} qualifiers of at most {GRANT_QUALIFIER_BYTES_MAX} bytes each"
            )));
        }
        if self.purpose.trim().is_empty() || self.purpose.len() > SESSION_PURPOSE_BYTES_MAX {
            return Err(AppError::invalid(format!(
                "purpose: {} bytes; say why the data is read, in 1 to {SESSION_PURPOSE_BYTES_MAX} bytes (SESSION_PURPOSE_BYTES_MAX)",
                self.purpose.len()
            )));
        }
        if self.expires_at_ms <= self.opened_at_ms {
            return Err(AppError::invalid("duration_ms: must be above 0"));
        }
        Ok(())
    }

    /// `tenant`, `tenant/table`, `tenant/table family`, `tenant/table family:{q1,q2}`.
    pub fn scope(&self) -> String {
        let as_grant = Grant {
            id: 0,
            principal: String::new(),
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            family: self.family.clone(),
            qualifiers: self.qualifiers.clone(),
            perms: 0,
            expires_at_ms: 0,
            created_at_ms: 0,
            version: 0,
            granted_by: String::new(),
            session_required: false,
            session_duration_max_ms: 0,
        };
        as_grant.scope()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ACCESS_RECORD_V1];
        out.extend(postcard::to_allocvec(self).expect("a session encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Session, String> {
        decode_record("session", bytes)
    }
}

/// A session id: 32 lowercase hex digits.
pub fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn session_key(id: &str) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_SESSIONS, id.as_bytes(), 0, b"")
}

/// A bearer token: the catalog keeps the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// 16 lowercase hex digits (8 random bytes).
    pub id: String,
    pub principal: String,
    pub secret_sha256: [u8; 32],
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub revoked: bool,
    pub note: String,
}

impl Token {
    pub fn live(&self, now_ms: u64) -> bool {
        !self.revoked && now_ms < self.expires_at_ms
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ACCESS_RECORD_V1];
        out.extend(postcard::to_allocvec(self).expect("a token encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Token, String> {
        decode_record("token", bytes)
    }
}

fn decode_record<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&ACCESS_RECORD_V1, rest)) => postcard::from_bytes(rest).map_err(|e| format!("{what} record: {e}")),
        Some((v, _)) => Err(format!("{what} record: unknown format {v}")),
        None => Err(format!("{what} record: empty")),
    }
}

/// A principal (user) name: 1 to 64 bytes of a-z, 0-9, `_`, `-`, `.`, `@`, starting with a
/// letter or a digit.
pub fn check_principal(field: &str, name: &str) -> Result<(), AppError> {
    let ok_len = !name.is_empty() && name.len() <= PRINCIPAL_BYTES_MAX;
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.@".contains(&b));
    let ok_start = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(AppError::invalid(format!(
            "{field} `{name}` must be 1 to {PRINCIPAL_BYTES_MAX} bytes of a-z, 0-9, _, -, . and @, starting with a letter or digit"
        )))
    }
}

/// A token id: 16 lowercase hex digits.
pub fn is_token_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn grant_key(id: u64) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_GRANTS, &id.to_be_bytes(), 0, b"")
}

pub fn token_key(id: &str) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_TOKENS, id.as_bytes(), 0, b"")
}

/// What a principal may read (or write) of one table, from its live grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableView {
    /// Every family, every qualifier.
    pub all: bool,
    /// Family → `None`: every qualifier; `Some(set)`: only those.
    pub families: BTreeMap<String, Option<BTreeSet<Vec<u8>>>>,
}

impl TableView {
    /// Nothing of the table.
    pub fn is_empty(&self) -> bool {
        !self.all && self.families.is_empty()
    }

    /// Every qualifier of `family`.
    pub fn whole_family(&self, family: &str) -> bool {
        self.all || matches!(self.families.get(family), Some(None))
    }

    /// Any cell of `family`.
    pub fn any_of_family(&self, family: &str) -> bool {
        self.all || self.families.contains_key(family)
    }

    pub fn cell(&self, family: &str, qualifier: &[u8]) -> bool {
        if self.all {
            return true;
        }
        match self.families.get(family) {
            None => false,
            Some(None) => true,
            Some(Some(q)) => q.contains(qualifier),
        }
    }

    /// Every cell of the table.
    pub fn whole_table(&self) -> bool {
        self.all
    }

    /// What either view holds.
    pub fn union(mut self, other: TableView) -> TableView {
        if self.all || other.all {
            return TableView { all: true, families: BTreeMap::new() };
        }
        for (f, q) in other.families {
            match (self.families.get_mut(&f), q) {
                (None, q) => {
                    self.families.insert(f, q);
                }
                (Some(mine), None) => *mine = None,
                (Some(None), Some(_)) => {}
                (Some(Some(set)), Some(q)) => set.extend(q),
            }
        }
        self
    }

    /// What both views hold.
    pub fn intersect(self, other: TableView) -> TableView {
        if self.all {
            return other;
        }
        if other.all {
            return self;
        }
        let mut out = TableView::default();
        for (f, q) in self.families {
            let both = match (q, other.families.get(&f)) {
                (_, None) => continue,
                (None, Some(o)) => o.clone(),
                (Some(mine), Some(None)) => Some(mine),
                (Some(mine), Some(Some(o))) => Some(mine.intersection(o).cloned().collect::<BTreeSet<_>>()),
            };
            if both.as_ref().is_some_and(BTreeSet::is_empty) {
                continue;
            }
            out.families.insert(f, both);
        }
        out
    }
}

/// Every grant and token, as the meta group applied them.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub grants: BTreeMap<u64, Grant>,
    by_principal: BTreeMap<String, BTreeSet<u64>>,
    pub tokens: BTreeMap<String, Token>,
    pub sessions: BTreeMap<String, Session>,
}

impl Access {
    pub fn insert_grant(&mut self, g: Grant) {
        self.by_principal.entry(g.principal.clone()).or_default().insert(g.id);
        self.grants.insert(g.id, g);
    }

    pub fn remove_grant(&mut self, id: u64) -> Option<Grant> {
        let g = self.grants.remove(&id)?;
        if let Some(ids) = self.by_principal.get_mut(&g.principal) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_principal.remove(&g.principal);
            }
        }
        Some(g)
    }

    pub fn grants_of(&self, principal: &str) -> impl Iterator<Item = &Grant> {
        self.by_principal.get(principal).into_iter().flatten().filter_map(|id| self.grants.get(id))
    }

    pub fn grant_count_of(&self, principal: &str) -> usize {
        self.by_principal.get(principal).map_or(0, BTreeSet::len)
    }

    /// Live grants of `p` that count outside a session.
    fn live_grants<'a>(&'a self, principal: &'a str, now_ms: u64, p: Perm) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants_of(principal).filter(move |g| g.live(now_ms) && g.has(p) && !g.session_required)
    }

    /// The session `id`, if it is `principal`'s and open at `now_ms`; else why not.
    pub fn session_of(&self, id: &str, principal: &str, now_ms: u64) -> Result<&Session, String> {
        match self.sessions.get(id) {
            Some(s) if s.principal == principal => {
                if s.closed_at_ms != 0 {
                    Err(format!("access session {id} was closed at {} (Unix ms) by `{}`", s.closed_at_ms, s.closed_by))
                } else if now_ms >= s.expires_at_ms {
                    Err(format!("access session {id} expired at {} (Unix ms)", s.expires_at_ms))
                } else {
                    Ok(s)
                }
            }
            _ => Err(format!("access session {id} does not exist (or is another principal's)")),
        }
    }

    /// The longest session `principal` may open on `tenant` for the scope
    /// `table`/`family`/`qualifiers`: the longest maximum of its live session-requiring
    /// grants that cover the scope; `None` when none does.
    pub fn session_limit(
        &self,
        principal: &str,
        now_ms: u64,
        tenant: &str,
        table: &str,
        family: &str,
        qualifiers: &[serde_bytes::ByteBuf],
    ) -> Option<u64> {
        self.grants_of(principal)
            .filter(|g| g.live(now_ms) && g.session_required && g.tenant == tenant && g.covers(table, family, qualifiers))
            .map(|g| g.session_duration_max_ms)
            .max()
    }

    /// How many sessions of `principal` are open at `now_ms`.
    pub fn open_sessions_of(&self, principal: &str, now_ms: u64) -> usize {
        self.sessions.values().filter(|s| s.principal == principal && s.open_at(now_ms)).count()
    }

    /// Sessions that ended (closed, or expired at `now_ms`), oldest first, to remove so
    /// that at most `keep` remain (fewer when not enough have ended).
    pub fn sessions_to_prune(&self, now_ms: u64, keep: usize) -> Vec<String> {
        if self.sessions.len() <= keep {
            return Vec::new();
        }
        let mut ended: Vec<(u64, String)> =
            self.sessions.values().filter(|s| !s.open_at(now_ms)).map(|s| (s.opened_at_ms, s.id.clone())).collect();
        ended.sort();
        let excess = self.sessions.len() - keep;
        ended.into_iter().take(excess).map(|(_, id)| id).collect()
    }

    /// Whether `principal` holds `p` on the whole tenant.
    pub fn on_tenant(&self, principal: &str, now_ms: u64, p: Perm, tenant: &str) -> bool {
        self.live_grants(principal, now_ms, p).any(|g| g.tenant == tenant && g.table.is_empty())
    }

    /// Whether `principal` holds any grant at all on `tenant` (for listing it).
    pub fn touches_tenant(&self, principal: &str, now_ms: u64, tenant: &str) -> bool {
        self.grants_of(principal).any(|g| g.live(now_ms) && g.tenant == tenant)
    }

    /// What `principal` may do with `p` in `tenant/table`, inside `session` when there is
    /// one (an open session of `principal`, [`Access::session_of`]): its grants that need
    /// no session, and those that do, within the session's scope when the session is on
    /// `tenant`.
    pub fn view_in(&self, principal: &str, now_ms: u64, p: Perm, tenant: &str, table: &str, session: Option<&Session>) -> TableView {
        let base = self.view(principal, now_ms, p, tenant, table);
        let Some(s) = session.filter(|s| s.tenant == tenant && s.principal == principal && s.open_at(now_ms)) else {
            return base;
        };
        // Only grants that allow a session as long as this one count in it.
        let span = s.expires_at_ms.saturating_sub(s.opened_at_ms);
        let granted =
            self.grants_of(principal).filter(|g| g.live(now_ms) && g.has(p) && g.session_required && g.session_duration_max_ms >= span);
        let in_session = view_of(granted, tenant, table).intersect(s.scope_view(table));
        base.union(in_session)
    }

    /// Whether `principal` holds a live grant of `p` on `tenant/table` that needs a
    /// session (to say so when a read without one is refused).
    pub fn needs_session(&self, principal: &str, now_ms: u64, p: Perm, tenant: &str, table: &str) -> bool {
        self.grants_of(principal)
            .any(|g| g.live(now_ms) && g.has(p) && g.session_required && g.tenant == tenant && (g.table.is_empty() || g.table == table))
    }

    /// What `principal` may do with `p` in `tenant/table` outside any session.
    pub fn view(&self, principal: &str, now_ms: u64, p: Perm, tenant: &str, table: &str) -> TableView {
        view_of(self.live_grants(principal, now_ms, p), tenant, table)
    }
}

/// The union of what `grants` reach in `tenant/table`.
fn view_of<'a>(grants: impl Iterator<Item = &'a Grant>, tenant: &str, table: &str) -> TableView {
    let mut v = TableView::default();
    for g in grants {
        if g.tenant != tenant || !(g.table.is_empty() || g.table == table) {
            continue;
        }
        if g.family.is_empty() {
            v.all = true;
            continue;
        }
        let entry = v.families.entry(g.family.clone()).or_insert_with(|| Some(BTreeSet::new()));
        match (entry.as_mut(), g.qualifiers.is_empty()) {
            (_, true) => *entry = None,
            (Some(set), false) => set.extend(g.qualifiers.iter().map(|q| q.to_vec())),
            (None, false) => {}
        }
    }
    if v.all {
        v.families.clear();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: u64, principal: &str, scope: (&str, &str, &str, &[&str]), perms: u8, expires_at_ms: u64) -> Grant {
        Grant {
            id,
            principal: principal.into(),
            tenant: scope.0.into(),
            table: scope.1.into(),
            family: scope.2.into(),
            qualifiers: scope.3.iter().map(|q| serde_bytes::ByteBuf::from(q.as_bytes().to_vec())).collect(),
            perms,
            expires_at_ms,
            created_at_ms: 1,
            version: id,
            granted_by: "admin".into(),
            session_required: false,
            session_duration_max_ms: 0,
        }
    }

    fn session(id: u8, principal: &str, scope: (&str, &str, &str, &[&str]), expires_at_ms: u64) -> Session {
        Session {
            id: format!("{id:032x}"),
            principal: principal.into(),
            tenant: scope.0.into(),
            table: scope.1.into(),
            family: scope.2.into(),
            qualifiers: scope.3.iter().map(|q| serde_bytes::ByteBuf::from(q.as_bytes().to_vec())).collect(),
            purpose: "ho so huong bao hiem".into(),
            opened_at_ms: 1,
            expires_at_ms,
            closed_at_ms: 0,
            closed_by: String::new(),
            version: 1,
        }
    }

    #[test]
    fn a_session_requiring_grant_counts_only_inside_an_open_session_and_its_scope() {
        let mut a = Access::default();
        let mut cross = grant(1, "bhxh_app", ("dan_cu", "citizen", "identity", &[]), Perm::Read as u8, 0);
        cross.session_required = true;
        cross.session_duration_max_ms = 3_600_000;
        a.insert_grant(cross);
        a.insert_grant(grant(2, "bhxh_app", ("dan_cu", "citizen", "residence", &["tinh"]), Perm::Read as u8, 0));
        // Outside a session: only the plain grant.
        let v = a.view_in("bhxh_app", 10, Perm::Read, "dan_cu", "citizen", None);
        assert!(!v.any_of_family("identity") && v.cell("residence", b"tinh"));
        assert!(a.needs_session("bhxh_app", 10, Perm::Read, "dan_cu", "citizen"));
        assert!(!a.needs_session("bhxh_app", 10, Perm::Write, "dan_cu", "citizen"));
        // A session for two fields of the family: those two, not the rest of the family.
        let s = session(1, "bhxh_app", ("dan_cu", "citizen", "identity", &["ho_ten", "ngay_sinh"]), 1_000);
        a.sessions.insert(s.id.clone(), s.clone());
        let v = a.view_in("bhxh_app", 10, Perm::Read, "dan_cu", "citizen", Some(&s));
        assert!(v.cell("identity", b"ho_ten") && v.cell("identity", b"ngay_sinh") && !v.cell("identity", b"dan_toc"));
        assert!(v.cell("residence", b"tinh"), "the plain grant still counts");
        // Write is not read; another table is not in the session's scope.
        assert!(!a.view_in("bhxh_app", 10, Perm::Write, "dan_cu", "citizen", Some(&s)).any_of_family("identity"));
        assert!(a.view_in("bhxh_app", 10, Perm::Read, "dan_cu", "household", Some(&s)).is_empty());
        // Expired, closed, another principal's: refused with the reason.
        assert!(a.session_of(&s.id, "bhxh_app", 10).is_ok());
        assert!(a.session_of(&s.id, "bhxh_app", 1_000).unwrap_err().contains("expired"));
        assert!(a.session_of(&s.id, "eve", 10).unwrap_err().contains("does not exist"));
        a.sessions.get_mut(&s.id).unwrap().closed_at_ms = 5;
        assert!(a.session_of(&s.id, "bhxh_app", 10).unwrap_err().contains("closed"));
        assert!(!a.view_in("bhxh_app", 10, Perm::Read, "dan_cu", "citizen", a.sessions.get(&s.id)).any_of_family("identity"));
        // Which sessions may be opened, for how long.
        let q = |qs: &[&str]| qs.iter().map(|q| serde_bytes::ByteBuf::from(q.as_bytes().to_vec())).collect::<Vec<_>>();
        assert_eq!(a.session_limit("bhxh_app", 10, "dan_cu", "citizen", "identity", &q(&["ho_ten"])), Some(3_600_000));
        assert_eq!(a.session_limit("bhxh_app", 10, "dan_cu", "citizen", "", &[]), None, "the grant is on one family");
        assert_eq!(a.session_limit("bhxh_app", 10, "dan_cu", "citizen", "residence", &q(&["tinh"])), None, "not a session grant");
        assert_eq!(a.session_limit("eve", 10, "dan_cu", "citizen", "identity", &[]), None);
        // A session longer than a grant allows gets nothing from that grant, even when another
        // grant (a write grant here) justified its length.
        let mut long_write = grant(3, "bhxh_app", ("dan_cu", "citizen", "", &[]), Perm::Write as u8, 0);
        long_write.session_required = true;
        long_write.session_duration_max_ms = SESSION_DURATION_MAX_MS;
        a.insert_grant(long_write);
        let mut long = session(2, "bhxh_app", ("dan_cu", "citizen", "identity", &[]), 1 + 7_200_000);
        long.opened_at_ms = 1;
        assert!(!a.view_in("bhxh_app", 10, Perm::Read, "dan_cu", "citizen", Some(&long)).any_of_family("identity"));
        assert!(a.view_in("bhxh_app", 10, Perm::Write, "dan_cu", "citizen", Some(&long)).whole_family("identity"));
    }

    #[test]
    fn ended_sessions_are_pruned_oldest_first_and_open_ones_never() {
        let mut a = Access::default();
        for i in 0..5u8 {
            let mut s = session(i, "p", ("t", "", "", &[]), if i % 2 == 0 { 50 } else { 500 });
            s.opened_at_ms = u64::from(i);
            a.sessions.insert(s.id.clone(), s);
        }
        // At 100, sessions 0, 2 and 4 have ended.
        assert_eq!(a.sessions_to_prune(100, 3), vec![format!("{:032x}", 0), format!("{:032x}", 2)]);
        assert_eq!(a.sessions_to_prune(100, 0).len(), 3, "only ended ones go");
        assert!(a.sessions_to_prune(100, 5).is_empty());
    }

    #[test]
    fn views_unite_and_intersect_by_family_and_qualifier() {
        let fam = |f: &str, qs: Option<&[&str]>| TableView {
            all: false,
            families: [(f.to_string(), qs.map(|qs| qs.iter().map(|q| q.as_bytes().to_vec()).collect()))].into_iter().collect(),
        };
        let all = TableView { all: true, ..TableView::default() };
        let a = fam("f", Some(&["x", "y"]));
        let b = fam("f", Some(&["y", "z"]));
        let i = a.clone().intersect(b.clone());
        assert!(i.cell("f", b"y") && !i.cell("f", b"x") && !i.cell("f", b"z"));
        let u = a.clone().union(b.clone());
        assert!(u.cell("f", b"x") && u.cell("f", b"z") && !u.whole_family("f"));
        assert!(a.clone().union(fam("f", None)).whole_family("f"));
        assert_eq!(all.clone().intersect(a.clone()), a);
        assert!(fam("f", Some(&["x"])).intersect(fam("f", Some(&["y"]))).is_empty());
        assert!(a.clone().intersect(fam("g", None)).is_empty());
        assert!(a.union(all).whole_table());
    }

    #[test]
    fn deny_by_default_and_each_grant_reaches_exactly_its_scope() {
        let mut a = Access::default();
        assert!(a.view("bob", 10, Perm::Read, "dan_cu", "cong_dan").is_empty(), "no grant, nothing");
        a.insert_grant(grant(1, "bob", ("dan_cu", "cong_dan", "identity", &[]), Perm::Read as u8, 0));
        a.insert_grant(grant(2, "bob", ("dan_cu", "cong_dan", "contact", &["phone", "email"]), Perm::Read as u8, 0));
        a.insert_grant(grant(3, "bob", ("dan_cu", "ho_khau", "", &[]), Perm::Write as u8, 0));
        let v = a.view("bob", 10, Perm::Read, "dan_cu", "cong_dan");
        assert!(v.whole_family("identity") && v.cell("identity", b"anything"));
        assert!(v.any_of_family("contact") && !v.whole_family("contact"));
        assert!(v.cell("contact", b"phone") && v.cell("contact", b"email") && !v.cell("contact", b"address"));
        assert!(!v.any_of_family("health") && !v.whole_table());
        // Write does not imply read, nor read write; another principal gets nothing.
        assert!(a.view("bob", 10, Perm::Read, "dan_cu", "ho_khau").is_empty());
        assert!(a.view("bob", 10, Perm::Write, "dan_cu", "ho_khau").whole_table());
        assert!(a.view("bob", 10, Perm::Write, "dan_cu", "cong_dan").is_empty());
        assert!(a.view("eve", 10, Perm::Read, "dan_cu", "cong_dan").is_empty());
        // Another tenant with a table of the same name.
        assert!(a.view("bob", 10, Perm::Read, "bhxh", "cong_dan").is_empty());
    }

    #[test]
    fn a_wider_grant_covers_a_narrower_one_and_expiry_and_removal_end_a_grant() {
        let mut a = Access::default();
        a.insert_grant(grant(1, "bob", ("dan_cu", "cong_dan", "contact", &["phone"]), Perm::Read as u8, 0));
        a.insert_grant(grant(2, "bob", ("dan_cu", "cong_dan", "contact", &[]), Perm::Read as u8, 100));
        assert!(a.view("bob", 99, Perm::Read, "dan_cu", "cong_dan").whole_family("contact"));
        let later = a.view("bob", 100, Perm::Read, "dan_cu", "cong_dan");
        assert!(!later.whole_family("contact") && later.cell("contact", b"phone"), "grant 2 expired at 100");
        a.insert_grant(grant(3, "bob", ("dan_cu", "", "", &[]), (Perm::Read as u8) | (Perm::Admin as u8), 0));
        assert!(a.view("bob", 200, Perm::Read, "dan_cu", "any_table").whole_table());
        assert!(a.on_tenant("bob", 200, Perm::Admin, "dan_cu") && !a.on_tenant("bob", 200, Perm::Write, "dan_cu"));
        assert_eq!(a.remove_grant(3).map(|g| g.id), Some(3));
        assert!(a.view("bob", 200, Perm::Read, "dan_cu", "any_table").is_empty());
        assert_eq!(a.grant_count_of("bob"), 2);
        a.remove_grant(1);
        a.remove_grant(2);
        assert_eq!(a.grant_count_of("bob"), 0);
    }

    #[test]
    fn records_round_trip_and_a_bad_one_is_refused() {
        let g = grant(7, "bob", ("dan_cu", "cong_dan", "contact", &["phone"]), Perm::Read as u8, 5);
        assert_eq!(Grant::decode(&g.encode()).unwrap(), g);
        // A grant stored by format 1 (before sessions) reads as one that needs none.
        #[derive(Serialize)]
        struct V1<'a>(u64, &'a str, &'a str, &'a str, &'a str, Vec<serde_bytes::ByteBuf>, u8, u64, u64, u64, &'a str);
        let v1 = V1(7, "bob", "dan_cu", "cong_dan", "contact", g.qualifiers.clone(), 1, 5, 1, 7, "admin");
        let mut old = vec![ACCESS_RECORD_V1];
        old.extend(postcard::to_allocvec(&v1).unwrap());
        assert_eq!(Grant::decode(&old).unwrap(), g);
        let s = session(3, "bob", ("dan_cu", "cong_dan", "", &[]), 9);
        assert_eq!(Session::decode(&s.encode()).unwrap(), s);
        let t = Token {
            id: "0123456789abcdef".into(),
            principal: "bob".into(),
            secret_sha256: [7; 32],
            created_at_ms: 1,
            expires_at_ms: 2,
            revoked: false,
            note: "for bob".into(),
        };
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        assert!(Grant::decode(&[9, 1, 2]).unwrap_err().contains("unknown format 9"));
        assert!(Token::decode(&[]).is_err());
    }

    #[test]
    fn grant_shapes_are_checked() {
        let ok = grant(0, "bob", ("dan_cu", "cong_dan", "contact", &["phone"]), Perm::Read as u8, 0);
        ok.check().unwrap();
        let no_table = grant(0, "bob", ("dan_cu", "", "contact", &[]), Perm::Read as u8, 0);
        assert!(no_table.check().unwrap_err().message.contains("needs grant.table"));
        let no_family = grant(0, "bob", ("dan_cu", "t", "", &["q"]), Perm::Read as u8, 0);
        assert!(no_family.check().unwrap_err().message.contains("needs grant.family"));
        let admin_on_table = grant(0, "bob", ("dan_cu", "t", "", &[]), Perm::Admin as u8, 0);
        assert!(admin_on_table.check().unwrap_err().message.contains("whole tenant"));
        let nothing = grant(0, "bob", ("dan_cu", "", "", &[]), 0, 0);
        assert!(nothing.check().is_err());
        let bad_name = grant(0, "Bob!", ("dan_cu", "", "", &[]), 1, 0);
        assert!(bad_name.check().unwrap_err().message.contains("grant.principal"));
        assert!(check_principal("p", "nguyen.van.a@bhxh").is_ok());
        let mut needs = ok.clone();
        needs.session_required = true;
        assert!(needs.check().unwrap_err().message.contains("session_duration_max_ms"));
        needs.session_duration_max_ms = SESSION_DURATION_MAX_MS;
        needs.check().unwrap();
        needs.session_duration_max_ms = SESSION_DURATION_MAX_MS + 1;
        assert!(needs.check().is_err());
        let mut stray = ok.clone();
        stray.session_duration_max_ms = 5;
        assert!(stray.check().unwrap_err().message.contains("only with"));
        let mut s = session(1, "bob", ("dan_cu", "cong_dan", "contact", &["phone"]), 9);
        s.check().unwrap();
        s.purpose = " ".into();
        assert!(s.check().unwrap_err().message.contains("purpose"));
        s.purpose = "x".into();
        s.id = "XYZ".into();
        assert!(s.check().unwrap_err().message.contains("session.id"));
        assert!(is_token_id("0123456789abcdef") && !is_token_id("0123456789ABCDEF") && !is_token_id("01"));
    }
}
