//! `kho audit tail|search|verify`: the cluster's audit log, for auditors
//! (docs/SECURITY.md, "Audit log"; docs/CLI.md).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kho_proto::v1 as pb;
use kho_raft::audit::{self, Entry, Head, Verdict};

use crate::access_cmd::utc;
use crate::admin_cmd::ConnArgs;
use crate::client::{self, Timeouts};

/// Records asked for per request while paging through the log, count.
const PAGE: u32 = 10_000;

#[derive(Debug, Args)]
pub struct AuditCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: AuditOp,
}

#[derive(Debug, Subcommand)]
pub enum AuditOp {
    /// Prints the last records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: u64,
    },
    /// Prints the records that match every filter given (reads the whole log).
    Search {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// Only records from this many seconds ago on (`90s`, `30m`, `12h`, `30d`).
        #[arg(long, value_parser = crate::access_cmd::parse_duration_s, value_name = "DURATION")]
        since: Option<u64>,
        /// `allowed`, `denied`, `rejected`, `failed`.
        #[arg(long)]
        decision: Option<String>,
    },
    /// Recomputes the hash chain from the first record and prints the head's digest
    /// (`SEQ:HASH`), to keep outside the cluster; exits 1 naming the first bad record.
    Verify {
        /// Check the answering node's own copy (no read barrier): point --endpoints at
        /// one node to check its disk.
        #[arg(long)]
        local: bool,
        /// A digest printed by an earlier verify (`SEQ:HASH`): record SEQ must still have
        /// that hash (finds a log cut short or rewritten from some record on).
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Option<String>,
    },
}

pub async fn audit(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let mut admin = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.admin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        AuditOp::Tail { count } => {
            let head = admin.read_audit(pb::ReadAuditRequest { from_seq: u64::MAX, limit: 1, local: false }).await?.into_inner().head_seq;
            let from = head.saturating_sub(count).saturating_add(1).max(1);
            let r = admin.read_audit(pb::ReadAuditRequest { from_seq: from, limit: count.min(PAGE as u64) as u32, local: false }).await?;
            for e in &r.get_ref().entries {
                writeln!(out, "{}", line(e))?;
            }
        }
        AuditOp::Search { tenant, principal, session, since, decision } => {
            let since_ms = since.map(|s| kho_rpc::auth::now_ms().saturating_sub(s * 1_000));
            let mut from = 1;
            loop {
                let r = admin.read_audit(pb::ReadAuditRequest { from_seq: from, limit: PAGE, local: false }).await?.into_inner();
                let Some(last) = r.entries.last().map(|e| e.seq) else { break };
                for e in &r.entries {
                    let keep = tenant.as_ref().is_none_or(|t| *t == e.tenant)
                        && principal.as_ref().is_none_or(|p| *p == e.principal)
                        && session.as_ref().is_none_or(|s| *s == e.session)
                        && decision.as_ref().is_none_or(|d| *d == e.decision)
                        && since_ms.is_none_or(|t| e.time_ms >= t);
                    if keep {
                        writeln!(out, "{}", line(e))?;
                    }
                }
                from = last + 1;
            }
        }
        AuditOp::Verify { local, expect } => {
            let expect = expect.map(|e| parse_digest(&e)).transpose()?;
            let mut head = Head::default();
            let mut from = 1;
            let mut expected_seen = false;
            loop {
                let r = admin.read_audit(pb::ReadAuditRequest { from_seq: from, limit: PAGE, local }).await?.into_inner();
                if r.entries.is_empty() {
                    if head.seq < r.head_seq {
                        return broken(
                            &mut out,
                            head.seq + 1,
                            &format!("the node's head is record {} but the log ends at {}", r.head_seq, head.seq),
                        );
                    }
                    break;
                }
                let entries: Vec<(u64, Entry)> = r
                    .entries
                    .iter()
                    .map(|e| {
                        let hash: [u8; 32] = e.hash.as_slice().try_into().unwrap_or([0; 32]);
                        (e.seq, Entry { index: e.index, record: e.raw.clone(), outcome: e.outcome.clone(), hash })
                    })
                    .collect();
                match audit::verify(head, entries.iter().map(|(s, e)| (*s, e))) {
                    Verdict::Intact(h) => head = h,
                    Verdict::Broken { seq, why } => return broken(&mut out, seq, &why),
                }
                if let Some((seq, hash)) = &expect {
                    if let Some((_, e)) = entries.iter().find(|(s, _)| s == seq) {
                        if e.hash != *hash {
                            return broken(
                                &mut out,
                                *seq,
                                "its hash differs from the digest kept (--expect): the log was rewritten from there on",
                            );
                        }
                        expected_seen = true;
                    }
                }
                from = head.seq + 1;
            }
            if let Some((seq, _)) = expect {
                if !expected_seen {
                    return broken(&mut out, seq, "the digest kept (--expect) names a record the log no longer has: it was cut short");
                }
            }
            writeln!(out, "audit log intact: {} records; digest {}:{}", head.seq, head.seq, audit::hex(&head.hash))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn broken(out: &mut impl std::io::Write, seq: u64, why: &str) -> anyhow::Result<ExitCode> {
    writeln!(out, "audit log BROKEN at record {seq}: {why}")?;
    out.flush()?;
    Ok(ExitCode::from(1))
}

fn parse_digest(s: &str) -> anyhow::Result<(u64, [u8; 32])> {
    let bad = || anyhow::anyhow!("--expect: `{s}` is not SEQ:HASH (as printed by kho audit verify)");
    let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    if hash.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok((seq, out))
}

/// One record on one line: seq, time, node, principal, action, scope, decision, the rest.
fn line(e: &pb::AuditEntry) -> String {
    let mut scope = e.tenant.clone();
    if !e.table.is_empty() {
        scope = format!("{scope}/{}", e.table);
    }
    let mut extra = Vec::new();
    for (k, v) in [("families", e.families.join(",")), ("fields", e.fields.join(",")), ("keys", e.keys.clone())] {
        if !v.is_empty() {
            extra.push(format!("{k}={v}"));
        }
    }
    if e.rows > 0 || e.bytes > 0 {
        extra.push(format!("rows={} bytes={}", e.rows, e.bytes));
    }
    for (k, v) in
        [("session", &e.session), ("purpose", &e.purpose), ("request", &e.request_id), ("outcome", &e.outcome), ("reason", &e.reason)]
    {
        if !v.is_empty() {
            extra.push(format!("{k}={v:?}"));
        }
    }
    format!(
        "{}  {}  node {}  {}  {}  {}  {}  {}",
        e.seq,
        utc(e.time_ms),
        e.node,
        if e.principal.is_empty() { "-" } else { &e.principal },
        e.action,
        if scope.is_empty() { "-" } else { &scope },
        e.decision,
        extra.join(" ")
    )
}
