//! `kho bench-compare`'s security cost: what TLS with authorization, and access sessions
//! whose every request is audited, cost against the plaintext cluster without
//! authorization (docs/BENCHMARKS.md, "Security cost").
//!
//! A second Kho cluster runs beside the plaintext one with TLS on every listener and
//! authorization on (a development CA made here with `kho cert`'s code, the admin's client
//! certificate a cluster admin by configuration, as in `kho demo`). In each round the write
//! shape and workload C run on three callers: the plaintext cluster (`kho-no-tls`), the TLS
//! cluster as its admin (`kho-tls`), and the TLS cluster as a principal whose grant
//! requires an access session, every request made in one (`kho-tls-session`: each is
//! recorded in the audit log, and the record committed, before it is answered), in the
//! order A B C C B A (reversed every other round). All three use the encrypted tenant, so
//! encryption costs the same in each.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kho_proto::v1 as pb;
use serde::Serialize;

use super::config::BenchArgs;
use super::report::{LatencyUs, OpReport};
use super::workload::{OpKind, WorkloadName};
use crate::admin_cmd::TenantEncryptionArg;
use crate::local_cluster::{self, LocalCluster};

pub const KHO_NO_TLS: &str = "kho-no-tls";
pub const KHO_TLS: &str = "kho-tls";
pub const KHO_TLS_SESSION: &str = "kho-tls-session";
pub const SECURITY_READ_WORKLOAD: WorkloadName = WorkloadName::C;
/// The principal of the session runs.
const SESSION_PRINCIPAL: &str = "bench_reader";
/// How long its token and its session last, seconds (longer than any comparison).
const SESSION_SECS: u64 = 86_400;
/// Validity of the comparison's certificates, days.
const CERT_VALID_DAYS: u64 = 2;
/// Tries of a call the new token's first requests make while the nodes have not confirmed
/// their copy of the grants yet, count, and the pause between two, milliseconds.
const TOKEN_WAIT_TRIES: u32 = 60;
const TOKEN_WAIT_PAUSE_MS: u64 = 500;

/// The TLS cluster, and the session runs' token and session.
pub struct SecureKho {
    pub cluster: LocalCluster,
    pub endpoints: Vec<String>,
    tls_dir: PathBuf,
    token: String,
    session: String,
}

/// Who runs a security-cost run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    NoTls,
    TlsAdmin,
    TlsSession,
}

impl Caller {
    pub fn label(self) -> &'static str {
        match self {
            Caller::NoTls => KHO_NO_TLS,
            Caller::TlsAdmin => KHO_TLS,
            Caller::TlsSession => KHO_TLS_SESSION,
        }
    }

    /// A B C C B A, reversed every other round.
    pub fn order(round: u32) -> [Caller; 6] {
        let mut three = [Caller::NoTls, Caller::TlsAdmin, Caller::TlsSession];
        if round % 2 == 1 {
            three.reverse();
        }
        [three[0], three[1], three[2], three[2], three[1], three[0]]
    }
}

impl SecureKho {
    /// Makes the CA and certificates in `dir/tls`, starts the TLS cluster in `dir/kho-tls`
    /// with `master_key`, creates the encrypted tenant and the table as the admin, and
    /// gives [`SESSION_PRINCIPAL`] a token, a read and write grant that requires a session,
    /// and an open session.
    pub async fn start(exe: &Path, dir: &Path, master_key: &Path, base_port: u16, base: &BenchArgs) -> anyhow::Result<SecureKho> {
        use crate::cert_cmd::{self, Subject};
        let tls_dir = dir.join("tls");
        let layouts = local_cluster::layout(&dir.join("kho-tls"), super::compare::NODES, base_port)?;
        std::fs::create_dir_all(dir.join("kho-tls"))?;
        local_cluster::check_free(&layouts)?;
        let valid = Duration::from_secs(CERT_VALID_DAYS * 86_400);
        cert_cmd::create_ca(&tls_dir, valid)?;
        for l in &layouts {
            cert_cmd::issue(&tls_dir, &Subject::Node { id: l.id, hosts: Vec::new() }, valid)?;
        }
        cert_cmd::issue(&tls_dir, &Subject::User(crate::demo::DEMO_ADMIN.to_string()), valid)?;
        let mut cluster = LocalCluster::start(exe, &layouts, Some(master_key), Some(&tls_dir)).await?;
        let endpoints: Vec<String> = layouts.iter().map(|l| l.addr.clone()).collect();
        let mut secure = SecureKho { cluster: LocalCluster::default(), endpoints, tls_dir, token: String::new(), session: String::new() };
        match secure.prepare(base).await {
            Ok(()) => {
                secure.cluster = cluster;
                Ok(secure)
            }
            Err(e) => {
                cluster.stop(Duration::from_secs(super::compare::STOP_GRACE_S)).await;
                Err(e.context("preparing the TLS cluster of the security cost"))
            }
        }
    }

    fn admin_tls(&self) -> anyhow::Result<crate::client::ClientTls> {
        let (cert, key) = self.admin_files();
        crate::client::ClientTls::load(&self.tls_dir.join(crate::cert_cmd::CA_CERT), Some(&cert), Some(&key))
    }

    fn admin_files(&self) -> (PathBuf, PathBuf) {
        let admin = crate::demo::DEMO_ADMIN;
        (self.tls_dir.join(format!("client-{admin}.crt")), self.tls_dir.join(format!("client-{admin}.key")))
    }

    async fn prepare(&mut self, base: &BenchArgs) -> anyhow::Result<()> {
        let probe = self.args(Caller::TlsAdmin, super::compare::probe(base.clone()));
        super::compare::wait_ready_with(probe, "the TLS cluster").await?;
        let tenant = super::config::tenant_name(&base.tenant, TenantEncryptionArg::Encrypted);
        let admin_tls = self.admin_tls()?;
        let channel = super::target::connect_one(&self.endpoints[0], Some(&admin_tls)).await?;
        let split_rows = super::keys::KeyFormat::new(base.key_bytes).split_keys(base.shards);
        let nobody = crate::client::Bearer::default();
        super::target::kho::prepare(&channel, &nobody, &tenant, TenantEncryptionArg::Encrypted, &base.table, &base.family, split_rows)
            .await?;
        let mut admin = pb::admin_client::AdminClient::new(channel.clone());
        let token = admin
            .create_token(pb::CreateTokenRequest {
                principal: SESSION_PRINCIPAL.into(),
                ttl_seconds: SESSION_SECS,
                note: "bench-compare".into(),
            })
            .await
            .context("CreateToken")?
            .into_inner()
            .token;
        let grant = pb::Grant {
            principal: SESSION_PRINCIPAL.into(),
            tenant: tenant.clone(),
            table: base.table.clone(),
            permissions: vec![pb::Permission::Read as i32, pb::Permission::Write as i32],
            session_required: true,
            session_duration_max_ms: SESSION_SECS * 1_000,
            ..Default::default()
        };
        admin.create_grant(pb::CreateGrantRequest { grant: Some(grant) }).await.context("CreateGrant")?;
        // The token works on a node once it has applied it and confirmed its copy of the
        // grants: open the session through each node in turn until one answers, and then
        // wait until every node serves the principal.
        let bearer = crate::client::Bearer::new(Some(&token), None)?;
        let tls = crate::client::ClientTls { identity: None, ..admin_tls };
        let mut session = None;
        for ep in &self.endpoints {
            let ch = super::target::connect_one(ep, Some(&tls)).await?;
            let mut as_principal = pb::admin_client::AdminClient::with_interceptor(ch, bearer.clone());
            let mut tries = 0;
            loop {
                tries += 1;
                let r = match &session {
                    None => as_principal
                        .open_access_session(pb::OpenAccessSessionRequest {
                            tenant: tenant.clone(),
                            table: base.table.clone(),
                            purpose: "kho bench-compare: the cost of audited access sessions".into(),
                            duration_ms: SESSION_SECS * 1_000,
                            ..Default::default()
                        })
                        .await
                        .map(|r| session = r.into_inner().session.map(|s| s.session_id)),
                    Some(_) => as_principal.list_tenants(pb::ListTenantsRequest {}).await.map(|_| ()),
                };
                match r {
                    Ok(()) => break,
                    Err(s) if tries < TOKEN_WAIT_TRIES && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unauthenticated) => {
                        tokio::time::sleep(Duration::from_millis(TOKEN_WAIT_PAUSE_MS)).await
                    }
                    Err(s) => anyhow::bail!("{ep}: the session principal's first requests: {s}"),
                }
            }
        }
        self.token = token;
        self.session = session.context("no session opened")?;
        Ok(())
    }

    /// The arguments of a run on this cluster by `caller` (not [`Caller::NoTls`]).
    pub fn args(&self, caller: Caller, base: BenchArgs) -> BenchArgs {
        let ca = Some(self.tls_dir.join(crate::cert_cmd::CA_CERT));
        let endpoints = self.endpoints.clone();
        match caller {
            Caller::TlsSession => BenchArgs { endpoints, ca, token: Some(self.token.clone()), session: Some(self.session.clone()), ..base },
            _ => {
                let (cert, key) = self.admin_files();
                BenchArgs { endpoints, ca, cert: Some(cert), key: Some(key), ..base }
            }
        }
    }
}

/// A figure of each caller, medians over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Three {
    pub no_tls: f64,
    pub tls: f64,
    pub session: f64,
}

/// What TLS with authorization, and audited sessions, cost: medians of the write shape
/// and workload C per caller.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecurityCost {
    pub writes_per_sec: Three,
    pub reads_per_sec: Three,
    pub read_p50_ms: Three,
    pub read_p99_ms: Three,
}

/// The security cost of the samples; none when a caller's runs are missing.
pub(super) fn security_cost(samples: &[super::compare::Sample]) -> Option<SecurityCost> {
    let ops = |target: &str, workload: &str, op: OpKind| -> Vec<OpReport> {
        samples
            .iter()
            .filter(|s| s.target == target && s.workload == workload)
            .filter_map(|s| s.phase.operations.iter().find(|o| o.op == op).cloned())
            .collect()
    };
    let reads = super::compare::workload_label(SECURITY_READ_WORKLOAD);
    let w = [KHO_NO_TLS, KHO_TLS, KHO_TLS_SESSION].map(|t| ops(t, "write", OpKind::Insert));
    let r = [KHO_NO_TLS, KHO_TLS, KHO_TLS_SESSION].map(|t| ops(t, &reads, OpKind::Read));
    if w.iter().chain(&r).any(Vec::is_empty) {
        return None;
    }
    let median = super::compare::median;
    let per_sec = |v: &[OpReport]| median(v.iter().map(|o| o.throughput_ops_per_sec).collect());
    let ms = |v: &[OpReport], pick: fn(&LatencyUs) -> u64| {
        median(v.iter().filter_map(|o| o.latency_us.as_ref()).map(|l| pick(l) as f64 / 1000.0).collect())
    };
    let three = |f: &dyn Fn(&[OpReport]) -> f64, v: &[Vec<OpReport>; 3]| Three { no_tls: f(&v[0]), tls: f(&v[1]), session: f(&v[2]) };
    Some(SecurityCost {
        writes_per_sec: three(&per_sec, &w),
        reads_per_sec: three(&per_sec, &r),
        read_p50_ms: three(&|v| ms(v, |l| l.p50), &r),
        read_p99_ms: three(&|v| ms(v, |l| l.p99), &r),
    })
}

/// The "Security cost" section of compare.md.
pub fn security_markdown(c: &SecurityCost) -> String {
    let mut md = String::new();
    let reads = super::compare::workload_label(SECURITY_READ_WORKLOAD);
    let _ = writeln!(md, "\n## Security cost\n");
    let _ = writeln!(
        md,
        "Two Kho clusters on this machine, both with a master key, on the encrypted tenant: `no TLS` is the plaintext \
         cluster with authorization off; `TLS + auth` a cluster with TLS on every listener and authorization on, run as \
         its admin (a client certificate; a cluster admin by configuration); `session` the same cluster as a principal \
         whose read and write grant requires an access session, every request made in one, so that each is recorded in \
         the audit log, the record committed by the meta group, before it is answered. In each round the write shape \
         and workload {reads} run in the order no TLS, TLS + auth, session, session, TLS + auth, no TLS (reversed every \
         other round). Medians over those runs; a ratio below 1 for a rate, above 1 for a latency, is the cost.\n"
    );
    let _ = writeln!(md, "| figure | no TLS | TLS + auth | session | TLS + auth / no TLS | session / TLS + auth |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".to_string() };
    for (name, v, d) in [
        ("writes/s".to_string(), &c.writes_per_sec, 0usize),
        (format!("reads/s (workload {reads})"), &c.reads_per_sec, 0),
        (format!("read p50 ms (workload {reads})"), &c.read_p50_ms, 2),
        (format!("read p99 ms (workload {reads})"), &c.read_p99_ms, 2),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {:.*} | {:.*} | {:.*} | {} | {} |",
            d,
            v.no_tls,
            d,
            v.tls,
            d,
            v.session,
            ratio(v.tls, v.no_tls),
            ratio(v.session, v.tls)
        );
    }
    md
}
