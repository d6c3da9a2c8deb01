//! Principals' tokens and grants: the records the meta group replicates, and the pure
//! decision every node takes from its own copy (docs/SECURITY.md, "Principals and grants").
//!
//! System tables (tenant 0): table 8 `grants` (row = grant id u64 BE → [`Grant`] record),
//! table 9 `tokens` (row = token id, 16 hex digits → [`Token`] record). A record is one
//! format byte ([`ACCESS_RECORD_V1`]) and the postcard encoding of the struct, its fields in
//! declaration order. Nothing here reads a clock: "now" is the caller's.

use std::collections::{BTreeMap, BTreeSet};

use kho_engine::keys::{self, TableId, SYSTEM_TENANT};
use serde::{Deserialize, Serialize};

use crate::AppError;

pub const SYS_GRANTS: TableId = 8;
pub const SYS_TOKENS: TableId = 9;
/// The counter grant ids are drawn from (table `counters`).
pub const NEXT_GRANT_ID: &[u8] = b"next_grant_id";
/// Format byte of a grant or token record.
pub const ACCESS_RECORD_V1: u8 = 1;

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
}

impl Grant {
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
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ACCESS_RECORD_V1];
        out.extend(postcard::to_allocvec(self).expect("a grant encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Grant, String> {
        decode_record("grant", bytes)
    }
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
}

/// Every grant and token, as the meta group applied them.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub grants: BTreeMap<u64, Grant>,
    by_principal: BTreeMap<String, BTreeSet<u64>>,
    pub tokens: BTreeMap<String, Token>,
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

    fn live_grants<'a>(&'a self, principal: &'a str, now_ms: u64, p: Perm) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants_of(principal).filter(move |g| g.live(now_ms) && g.has(p))
    }

    /// Whether `principal` holds `p` on the whole tenant.
    pub fn on_tenant(&self, principal: &str, now_ms: u64, p: Perm, tenant: &str) -> bool {
        self.live_grants(principal, now_ms, p).any(|g| g.tenant == tenant && g.table.is_empty())
    }

    /// Whether `principal` holds any grant at all on `tenant` (for listing it).
    pub fn touches_tenant(&self, principal: &str, now_ms: u64, tenant: &str) -> bool {
        self.grants_of(principal).any(|g| g.live(now_ms) && g.tenant == tenant)
    }

    /// What `principal` may do with `p` in `tenant/table`.
    pub fn view(&self, principal: &str, now_ms: u64, p: Perm, tenant: &str, table: &str) -> TableView {
        let mut v = TableView::default();
        for g in self.live_grants(principal, now_ms, p) {
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
        }
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
        assert!(is_token_id("0123456789abcdef") && !is_token_id("0123456789ABCDEF") && !is_token_id("01"));
    }
}
