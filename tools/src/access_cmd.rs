//! `kho whoami`, `kho token …`, `kho grant …`, `kho session …`: principals' tokens,
//! grants and access sessions (docs/SECURITY.md, "Principals and grants", "Access
//! sessions"; docs/CLI.md).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kho_proto::v1 as pb;

use crate::admin_cmd::ConnArgs;
use crate::client::{self, Timeouts};

#[derive(Debug, Args)]
pub struct WhoAmICmd {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct TokenCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: TokenOp,
}

#[derive(Debug, Subcommand)]
pub enum TokenOp {
    /// Issues a bearer token for a principal (cluster admins) and prints it once.
    Create {
        /// The principal (user) the token authenticates.
        principal: String,
        /// How long it is valid: `90s`, `30m`, `12h`, `30d` (at most 365d; default 30d).
        #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
        ttl: Option<u64>,
        /// Free text kept with the token (who or what it is for), at most 256 bytes.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Lists tokens (never their secrets).
    List {
        /// Only this principal's.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Revokes one token; every other token keeps working.
    Revoke {
        /// The token's id (16 hex digits: `kho_<id>_…`).
        token_id: String,
    },
}

#[derive(Debug, Args)]
pub struct GrantCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: GrantOp,
}

#[derive(Debug, Subcommand)]
pub enum GrantOp {
    /// Grants a principal read, write or admin on a tenant, a table, a family, or some
    /// qualifiers of a family.
    Add {
        /// The principal (user).
        principal: String,
        #[arg(long)]
        tenant: String,
        /// Only this table (default: every table of the tenant).
        #[arg(long)]
        table: Option<String>,
        /// Only this column family of the table.
        #[arg(long)]
        family: Option<String>,
        /// Only these qualifiers (fields) of the family, comma-separated.
        #[arg(long, value_delimiter = ',')]
        qualifiers: Vec<String>,
        /// Read: Get, BatchGet, Scan, ReadRow, ScanRows.
        #[arg(long)]
        read: bool,
        /// Write: Put, Delete, Write, MutateRow (not read).
        #[arg(long)]
        write: bool,
        /// Admin of the tenant: tables, keys, grants on it (not read or write).
        #[arg(long)]
        admin: bool,
        /// The grant ends after this long: `90s`, `30m`, `12h`, `30d` (default: never).
        #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
        expires_in: Option<u64>,
        /// A cross-agency grant: it counts only inside an access session (`kho session
        /// open`) of at most this long (`30m`, `8h`; at most 24h), and every read through
        /// it is audited.
        #[arg(long, value_parser = parse_session_duration_s, value_name = "DURATION")]
        session_max: Option<u64>,
    },
    /// Lists grants: a cluster admin's of anyone, a tenant admin's of its tenant, anyone's
    /// own.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        principal: Option<String>,
    },
    /// Revokes one grant by its id.
    Revoke { grant_id: u64 },
}

#[derive(Debug, Args)]
pub struct SessionCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: SessionOp,
}

#[derive(Debug, Subcommand)]
pub enum SessionOp {
    /// Opens an access session on another tenant's data, for a purpose, and prints its id
    /// (send it with --session or KHO_SESSION).
    Open {
        /// Whose data.
        #[arg(long)]
        tenant: String,
        /// Only this table (default: every table the grant reaches).
        #[arg(long)]
        table: Option<String>,
        /// Only this column family of the table.
        #[arg(long)]
        family: Option<String>,
        /// Only these qualifiers (fields) of the family, comma-separated.
        #[arg(long, value_delimiter = ',')]
        qualifiers: Vec<String>,
        /// Why the data is read (kept in the audit log with every read), 1 to 512 bytes.
        #[arg(long)]
        purpose: String,
        /// How long the session lasts: `90s`, `30m`, `8h` (at most the grant's maximum).
        #[arg(long, value_parser = parse_session_duration_s, value_name = "DURATION")]
        duration: u64,
    },
    /// Closes a session: requests that carry it are refused, its streams end.
    Close { session_id: String },
    /// Lists open sessions: a cluster admin's of anyone, a tenant admin's of its tenant,
    /// anyone's own.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        /// Also sessions that ended (closed or expired).
        #[arg(long)]
        all: bool,
    },
}

/// Longest access session the flags take, seconds (24 hours, SESSION_DURATION_MAX_MS).
const SESSION_DURATION_MAX_S: u64 = kho_raft::access::SESSION_DURATION_MAX_MS / 1_000;

fn parse_session_duration_s(s: &str) -> Result<u64, String> {
    crate::parse::parse_duration_secs(s, SESSION_DURATION_MAX_S)
}

/// Longest duration the flags take, seconds (a year).
const DURATION_MAX_S: u64 = 31_536_000;

/// `90s`, `30m`, `12h`, `30d` → seconds (1 ..= a year).
pub fn parse_duration_s(s: &str) -> Result<u64, String> {
    crate::parse::parse_duration_secs(s, DURATION_MAX_S)
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

pub async fn whoami(cmd: WhoAmICmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let r = admin.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    let role = if r.cluster_admin { "cluster admin" } else { "grants only" };
    let by = if r.token_id.is_empty() { r.authenticated_by.clone() } else { format!("token {}", r.token_id) };
    say!("{} (by {by}; {role})", if r.principal.is_empty() { "(authorization off)" } else { &r.principal });
    Ok(ExitCode::SUCCESS)
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        TokenOp::Create { principal, ttl, note } => {
            let req = pb::CreateTokenRequest { principal: principal.clone(), ttl_seconds: ttl.unwrap_or(0), note };
            let r = admin.create_token(req).await?.into_inner();
            writeln!(out, "{}", r.token)?;
            let mut err = std::io::stderr();
            writeln!(
                err,
                "token {} for {principal}, expires {} UTC; shown once: keep it secret (export KHO_TOKEN=…)",
                r.token_id,
                utc(r.expires_at_ms)
            )?;
        }
        TokenOp::List { principal } => {
            let r = admin.list_tokens(pb::ListTokensRequest { principal: principal.unwrap_or_default() }).await?.into_inner();
            let now = kho_rpc::auth::now_ms();
            writeln!(out, "{:<16}  {:<24}  {:<19}  {:<8}  note", "token id", "principal", "expires (UTC)", "state")?;
            for t in r.tokens {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_at_ms <= now {
                    "expired"
                } else {
                    "valid"
                };
                writeln!(out, "{:<16}  {:<24}  {:<19}  {state:<8}  {}", t.token_id, t.principal, utc(t.expires_at_ms), t.note)?;
            }
        }
        TokenOp::Revoke { token_id } => {
            admin.revoke_token(pb::RevokeTokenRequest { token_id: token_id.clone() }).await?;
            writeln!(out, "revoked token {token_id}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn grant(cmd: GrantCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        GrantOp::Add { principal, tenant, table, family, qualifiers, read, write, admin: adm, expires_in, session_max } => {
            let mut permissions = Vec::new();
            for (on, p) in [(read, pb::Permission::Read), (write, pb::Permission::Write), (adm, pb::Permission::Admin)] {
                if on {
                    permissions.push(p as i32);
                }
            }
            if permissions.is_empty() {
                anyhow::bail!("give --read, --write or --admin (or several)");
            }
            let grant = pb::Grant {
                principal,
                tenant,
                table: table.unwrap_or_default(),
                family: family.unwrap_or_default(),
                qualifiers: qualifiers.into_iter().map(String::into_bytes).collect(),
                permissions,
                expires_at_ms: expires_in.map_or(0, |s| kho_rpc::auth::now_ms() + s * 1_000),
                session_required: session_max.is_some(),
                session_duration_max_ms: session_max.map_or(0, |s| s * 1_000),
                ..Default::default()
            };
            let r = admin.create_grant(pb::CreateGrantRequest { grant: Some(grant) }).await?.into_inner();
            writeln!(out, "grant {} (version {})", r.grant_id, r.version)?;
        }
        GrantOp::List { tenant, principal } => {
            let req = pb::ListGrantsRequest { tenant: tenant.unwrap_or_default(), principal: principal.unwrap_or_default() };
            let r = admin.list_grants(req).await?.into_inner();
            writeln!(out, "{:>6}  {:<24}  {:<11}  {:<19}  scope", "id", "principal", "permissions", "expires (UTC)")?;
            for g in r.grants {
                writeln!(
                    out,
                    "{:>6}  {:<24}  {:<11}  {:<19}  {}",
                    g.grant_id,
                    g.principal,
                    perms(&g.permissions),
                    expiry(g.expires_at_ms),
                    scope(&g)
                        + &if g.session_required {
                            format!(" (in a session of at most {} s)", g.session_duration_max_ms / 1_000)
                        } else {
                            String::new()
                        }
                )?;
            }
        }
        GrantOp::Revoke { grant_id } => {
            let r = admin.revoke_grant(pb::RevokeGrantRequest { grant_id }).await?.into_inner();
            writeln!(out, "revoked grant {grant_id} (version {})", r.version)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn perms(p: &[i32]) -> String {
    let names: Vec<&str> = p
        .iter()
        .map(|p| match pb::Permission::try_from(*p) {
            Ok(pb::Permission::Read) => "read",
            Ok(pb::Permission::Write) => "write",
            Ok(pb::Permission::Admin) => "admin",
            _ => "?",
        })
        .collect();
    names.join(",")
}

fn expiry(ms: u64) -> String {
    if ms == 0 {
        "never".into()
    } else {
        utc(ms)
    }
}

/// `tenant`, `tenant/table`, `tenant/table family`, `tenant/table family:{a,b}`.
fn scope(g: &pb::Grant) -> String {
    let mut s = g.tenant.clone();
    if !g.table.is_empty() {
        s = format!("{s}/{}", g.table);
    }
    if !g.family.is_empty() {
        s = format!("{s} {}", g.family);
        if !g.qualifiers.is_empty() {
            let q: Vec<String> = g.qualifiers.iter().map(|q| String::from_utf8_lossy(q).into_owned()).collect();
            s = format!("{s}:{{{}}}", q.join(","));
        }
    }
    s
}

pub async fn session(cmd: SessionCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        SessionOp::Open { tenant, table, family, qualifiers, purpose, duration } => {
            let req = pb::OpenAccessSessionRequest {
                tenant,
                table: table.unwrap_or_default(),
                family: family.unwrap_or_default(),
                qualifiers: qualifiers.into_iter().map(String::into_bytes).collect(),
                purpose,
                duration_ms: duration * 1_000,
            };
            let s = admin.open_access_session(req).await?.into_inner().session.unwrap_or_default();
            writeln!(out, "{}", s.session_id)?;
            writeln!(
                std::io::stderr(),
                "access session {} on {}, until {} UTC; every read in it is audited (export KHO_SESSION={})",
                s.session_id,
                session_scope(&s),
                utc(s.expires_at_ms),
                s.session_id
            )?;
        }
        SessionOp::Close { session_id } => {
            let r = admin.close_access_session(pb::CloseAccessSessionRequest { session_id: session_id.clone() }).await?.into_inner();
            writeln!(out, "closed access session {session_id} (version {})", r.version)?;
        }
        SessionOp::List { tenant, principal, all } => {
            let req = pb::ListAccessSessionsRequest {
                tenant: tenant.unwrap_or_default(),
                principal: principal.unwrap_or_default(),
                include_ended: all,
            };
            let r = admin.list_access_sessions(req).await?.into_inner();
            writeln!(out, "{:<32}  {:<24}  {:<19}  {:<7}  {:<32}  purpose", "session id", "principal", "until (UTC)", "state", "scope")?;
            for s in r.sessions {
                let state = if s.open {
                    "open"
                } else if s.closed_at_ms != 0 {
                    "closed"
                } else {
                    "expired"
                };
                writeln!(
                    out,
                    "{:<32}  {:<24}  {:<19}  {state:<7}  {:<32}  {}",
                    s.session_id,
                    s.principal,
                    utc(s.expires_at_ms),
                    session_scope(&s),
                    s.purpose
                )?;
            }
            if r.truncated {
                writeln!(std::io::stderr(), "(more sessions match than one answer holds: narrow with --tenant or --principal)")?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn session_scope(s: &pb::AccessSession) -> String {
    scope(&pb::Grant {
        tenant: s.tenant.clone(),
        table: s.table.clone(),
        family: s.family.clone(),
        qualifiers: s.qualifiers.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dates() {
        assert_eq!(parse_duration_s("90s"), Ok(90));
        assert_eq!(parse_duration_s("30m"), Ok(1_800));
        assert_eq!(parse_duration_s("12h"), Ok(43_200));
        assert_eq!(parse_duration_s("30d"), Ok(2_592_000));
        assert!(parse_duration_s("0s").is_err() && parse_duration_s("366d").is_err() && parse_duration_s("5w").is_err());
        assert!(parse_duration_s("h").is_err());
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(parse_session_duration_s("24h"), Ok(86_400));
        assert!(parse_session_duration_s("25h").is_err(), "a session lasts at most 24 hours");
    }
}
