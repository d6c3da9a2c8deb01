//! `kho cert`: a local certificate authority for development and tests (docs/CLI.md,
//! docs/SECURITY.md "TLS"). It makes a CA, node certificates (URI SAN `kho://node/<id>`,
//! server and client use) and client certificates (URI SAN `kho://user/<name>`, client use
//! only), and revokes certificates with a CRL. Keys are ECDSA P-256, written with mode 0600;
//! every file is written to a temporary name and renamed, so a node reloading its files
//! never reads half of one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// The CA certificate's file name in a `kho cert` directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name.
pub const CA_KEY: &str = "ca.key";
/// The CRL's file name.
pub const CA_CRL: &str = "ca.crl";
/// Longest validity `--valid-for` takes, days (about 20 years).
const VALID_DAYS_MAX: u64 = 7_300;
/// How long a CRL `kho cert revoke` writes says it is current, days.
const CRL_VALID_DAYS: u64 = 30;

#[derive(Debug, Args)]
pub struct CertCmd {
    #[command(subcommand)]
    pub op: CertOp,
}

#[derive(Debug, Subcommand)]
pub enum CertOp {
    /// Creates a CA in DIR: `ca.crt` and `ca.key` (refuses to overwrite a CA key).
    Ca {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity, like `3650d`, `12h`, `10m`.
        #[arg(long, value_name = "DURATION", default_value = "3650d", value_parser = parse_validity)]
        valid_for: Duration,
    },
    /// Issues a node certificate signed by DIR's CA: `node-<id>.crt` and `node-<id>.key`.
    Node {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node's id (`node_id` in its config).
        #[arg(long, value_name = "ID")]
        id: u64,
        /// Host names and IP addresses clients and other nodes reach the node by
        /// (repeatable; default `localhost`, `127.0.0.1` and `::1`).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_validity)]
        valid_for: Duration,
    },
    /// Issues a client certificate signed by DIR's CA: `client-<name>.crt` and `.key`.
    Client {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The user the certificate names (URI SAN `kho://user/<name>` and CN).
        #[arg(long, value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_validity)]
        valid_for: Duration,
    },
    /// Adds certificates to DIR's CRL (`ca.crl`, with every certificate revoked before).
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Certificate files (PEM) to revoke.
        #[arg(required = true, value_name = "CERT")]
        certs: Vec<PathBuf>,
    },
}

/// Parses `<n>s`, `<n>m`, `<n>h` or `<n>d`, at most [`VALID_DAYS_MAX`] days.
pub fn parse_validity(s: &str) -> Result<Duration, String> {
    crate::parse::parse_duration_secs(s, VALID_DAYS_MAX * 86_400).map(Duration::from_secs)
}

pub fn run(cmd: CertCmd) -> anyhow::Result<()> {
    match cmd.op {
        CertOp::Ca { dir, valid_for } => {
            create_ca(&dir, valid_for)?;
            say!("CA: {} and {}", dir.join(CA_CERT).display(), dir.join(CA_KEY).display());
        }
        CertOp::Node { dir, id, hosts, valid_for } => {
            let (c, k) = issue(&dir, &Subject::Node { id, hosts }, valid_for)?;
            say!("node {id}: {} and {}", c.display(), k.display());
        }
        CertOp::Client { dir, name, valid_for } => {
            let (c, k) = issue(&dir, &Subject::User(name.clone()), valid_for)?;
            say!("user {name}: {} and {}", c.display(), k.display());
        }
        CertOp::Revoke { dir, certs } => {
            let (crl, n) = revoke(&dir, &certs)?;
            say!("{}: {n} revoked certificate(s)", crl.display());
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // A minute of slack for clocks a little behind this one.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::seconds(valid_for.as_secs() as i64);
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] = (b[0] & 0x7f) | 0x01; // positive, and no leading zero byte
    SerialNumber::from_slice(&b)
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A name of its own: during a rotation two CAs are trusted at once, and verifiers pick
    // a certificate's issuer by name (two CAs of one name fail with BadSignature).
    let id: [u8; 4] = rand::random();
    dn.push(DnType::CommonName, format!("Kho development CA {}", id.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    dn.push(DnType::OrganizationName, "Kho");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

/// Creates `dir/ca.crt` and `dir/ca.key`; refuses if `dir/ca.key` exists.
pub fn create_ca(dir: &Path, valid_for: Duration) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if dir.join(CA_KEY).exists() {
        bail!("{} exists: a CA is there already (remove it first to make a new one)", dir.join(CA_KEY).display());
    }
    let key = KeyPair::generate().context("generate the CA key")?;
    let mut p = ca_params();
    validity(&mut p, valid_for);
    p.serial_number = Some(random_serial());
    let cert = p.self_signed(&key).context("sign the CA certificate")?;
    write_atomic(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn load_issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("read {}", dir.join(name).display()));
    let key = KeyPair::from_pem(&read(CA_KEY)?).with_context(|| format!("{}: not a PEM private key", dir.join(CA_KEY).display()))?;
    Issuer::from_ca_cert_pem(&read(CA_CERT)?, key).with_context(|| format!("{}: not a CA certificate", dir.join(CA_CERT).display()))
}

/// Whom a certificate names.
#[derive(Debug, Clone)]
pub enum Subject {
    Node { id: u64, hosts: Vec<String> },
    User(String),
}

/// Issues a certificate signed by `dir`'s CA; returns the certificate and key paths.
pub fn issue(dir: &Path, subject: &Subject, valid_for: Duration) -> anyhow::Result<(PathBuf, PathBuf)> {
    let issuer = load_issuer(dir)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let ia5 = |s: String| rcgen::string::Ia5String::try_from(s.clone()).map_err(|e| anyhow!("`{s}`: {e}"));
    let stem = match subject {
        Subject::Node { id, hosts } => {
            if *id == 0 {
                bail!("--id: a node id is > 0");
            }
            dn.push(DnType::CommonName, format!("kho node {id}"));
            p.subject_alt_names.push(SanType::URI(ia5(format!("{}{id}", kho_rpc::tls::NODE_URI_PREFIX))?));
            let defaults = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            let hosts = if hosts.is_empty() { &defaults[..] } else { &hosts[..] };
            for h in hosts {
                match h.parse::<IpAddr>() {
                    Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
                    Err(_) if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') => {
                        bail!("--host `{h}`: a DNS name or an IP address, without a port or brackets");
                    }
                    Err(_) => p.subject_alt_names.push(SanType::DnsName(ia5(h.clone())?)),
                }
            }
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            format!("node-{id}")
        }
        Subject::User(name) => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
                bail!("--name `{name}`: letters, digits and - _ . @ only");
            }
            dn.push(DnType::CommonName, name.clone());
            p.subject_alt_names.push(SanType::URI(ia5(format!("{}{name}", kho_rpc::tls::USER_URI_PREFIX))?));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            format!("client-{name}")
        }
    };
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    validity(&mut p, valid_for);
    let key = KeyPair::generate().context("generate a key")?;
    let cert = p.signed_by(&key, &issuer).context("sign the certificate")?;
    let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    // The key first: a reader that sees the new certificate finds its key already there.
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Writes `dir/ca.crl` revoking `certs` and every certificate its previous version revoked;
/// returns its path and how many certificates it revokes.
pub fn revoke(dir: &Path, certs: &[PathBuf]) -> anyhow::Result<(PathBuf, usize)> {
    let issuer = load_issuer(dir)?;
    let crl_path = dir.join(CA_CRL);
    let now = OffsetDateTime::now_utc();
    let mut serials: Vec<Vec<u8>> = Vec::new();
    let mut number: u64 = 1;
    if crl_path.exists() {
        let pem = std::fs::read(&crl_path).with_context(|| format!("read {}", crl_path.display()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| anyhow!("{}: not PEM ({e})", crl_path.display()))?;
        let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).map_err(|e| anyhow!("{}: not a CRL ({e})", crl_path.display()))?;
        for r in crl.iter_revoked_certificates() {
            serials.push(r.raw_serial().to_vec());
        }
        number = crl.crl_number().map(|n| n.to_u64_digits().first().copied().unwrap_or(0) + 1).unwrap_or(1);
    }
    // Only certificates this CA issued: a CRL entry for another CA's certificate revokes
    // nothing (verifiers look for a certificate's CRL by its issuer).
    let ca_pem = std::fs::read(dir.join(CA_CERT)).with_context(|| format!("read {}", dir.join(CA_CERT).display()))?;
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&ca_pem).map_err(|e| anyhow!("{}: not PEM ({e})", dir.join(CA_CERT).display()))?;
    let ca = ca_pem.parse_x509().map_err(|e| anyhow!("{}: not a certificate ({e})", dir.join(CA_CERT).display()))?;
    for c in certs {
        let pem = std::fs::read(c).with_context(|| format!("read {}", c.display()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| anyhow!("{}: not PEM ({e})", c.display()))?;
        let cert = pem.parse_x509().map_err(|e| anyhow!("{}: not a certificate ({e})", c.display()))?;
        if cert.issuer().as_raw() != ca.subject().as_raw() || cert.verify_signature(Some(ca.public_key())).is_err() {
            bail!("{}: not issued by the CA in {} (issuer: {})", c.display(), dir.display(), cert.issuer());
        }
        let serial = cert.raw_serial().to_vec();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(CRL_VALID_DAYS as i64),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).context("sign the CRL")?;
    write_atomic(&crl_path, crl.pem().context("encode the CRL")?.as_bytes(), 0o644)?;
    Ok((crl_path, serials.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_parses_units_and_refuses_nonsense() {
        assert_eq!(parse_validity("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_validity("365d").unwrap(), Duration::from_secs(365 * 86_400));
        assert!(parse_validity("0d").is_err());
        assert!(parse_validity("10").is_err());
        assert!(parse_validity("10y").is_err());
        assert!(parse_validity("99999d").is_err());
    }

    #[test]
    fn issued_certificates_name_their_holder_and_revocation_accumulates() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), Duration::from_secs(3_600)).unwrap();
        assert!(create_ca(dir.path(), Duration::from_secs(3_600)).is_err(), "a second CA over the first is refused");
        let (node_crt, _) = issue(dir.path(), &Subject::Node { id: 7, hosts: vec![] }, Duration::from_secs(600)).unwrap();
        let (user_crt, _) = issue(dir.path(), &Subject::User("alice".into()), Duration::from_secs(600)).unwrap();
        let der = |p: &Path| {
            let pem = std::fs::read(p).unwrap();
            x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
        };
        let node = kho_rpc::tls::cert_identity(&der(&node_crt)).unwrap();
        assert_eq!(node.name, Some(kho_rpc::tls::CertName::Node(7)));
        let user = kho_rpc::tls::cert_identity(&der(&user_crt)).unwrap();
        assert_eq!(user.name, Some(kho_rpc::tls::CertName::User("alice".into())));
        assert_ne!(node.fingerprint, user.fingerprint);
        assert_eq!(revoke(dir.path(), std::slice::from_ref(&user_crt)).unwrap().1, 1);
        assert_eq!(revoke(dir.path(), &[node_crt, user_crt]).unwrap().1, 2, "the CRL keeps what it revoked and adds no duplicate");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "the CA key is readable by its owner only");
    }

    fn der_of(cert: &rcgen::Certificate) -> Vec<u8> {
        cert.der().to_vec()
    }

    #[test]
    fn identity_rule_cn_fallback_and_conflicts() {
        use kho_rpc::tls::{cert_identity, CertName};
        let key = KeyPair::generate().unwrap();
        let with = |cn: Option<&str>, uris: &[&str]| {
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            if let Some(cn) = cn {
                dn.push(DnType::CommonName, cn);
            }
            p.distinguished_name = dn;
            p.subject_alt_names = uris.iter().map(|u| SanType::URI(rcgen::string::Ia5String::try_from(u.to_string()).unwrap())).collect();
            cert_identity(&der_of(&p.self_signed(&key).unwrap()))
        };
        // No kho URI: the CN names the user; a CN never names a node.
        assert_eq!(with(Some("ops"), &[]).unwrap().name, Some(CertName::User("ops".into())));
        assert_eq!(with(Some("node"), &["https://example.org/x"]).unwrap().name, Some(CertName::User("node".into())));
        assert_eq!(with(None, &[]).unwrap().name, None);
        // The URI SAN wins over the CN.
        assert_eq!(with(Some("ops"), &["kho://user/alice"]).unwrap().name, Some(CertName::User("alice".into())));
        assert_eq!(with(Some("x"), &["kho://node/3"]).unwrap().name, Some(CertName::Node(3)));
        // Refused: node 0, a non-number, two nodes, a node and a user.
        for uris in [&["kho://node/0"][..], &["kho://node/x"], &["kho://node/1", "kho://node/2"], &["kho://node/1", "kho://user/a"]] {
            assert!(with(None, uris).is_err(), "{uris:?} accepted");
        }
        assert!(cert_identity(b"not a certificate").is_err());
    }

    #[test]
    fn a_node_refuses_another_node_s_certificate_a_wrong_key_and_keeps_the_last_good_files() {
        use kho_rpc::tls::{Reload, TlsFiles, TlsState};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        create_ca(d, Duration::from_secs(3_600)).unwrap();
        let (c1, k1) = issue(d, &Subject::Node { id: 1, hosts: vec![] }, Duration::from_secs(600)).unwrap();
        let (_, k2) = issue(d, &Subject::Node { id: 2, hosts: vec![] }, Duration::from_secs(600)).unwrap();
        let files = |cert: &Path, key: &Path| TlsFiles {
            ca: d.join(CA_CERT),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            crl: None,
            client_ca: None,
        };
        kho_rpc::tls::install_provider();
        // Node 2 with node 1's certificate, and node 1 with node 2's key: refused, naming the file.
        let e = TlsState::load(2, files(&c1, &k1), false).err().expect("another node's certificate is refused");
        assert!(e.contains("tls.cert_file") && e.contains("kho://node/2"), "{e}");
        let e = TlsState::load(1, files(&c1, &k2), false).err().expect("a key of another certificate is refused");
        assert!(e.contains("tls.key_file"), "{e}");
        // A loaded node keeps its configuration when its certificate turns bad, and takes a
        // good new one.
        let state = TlsState::load(1, files(&c1, &k1), false).unwrap();
        let before = state.leaf().fingerprint;
        assert_eq!(state.reload_if_changed(), Reload::Unchanged);
        let good = std::fs::read(&c1).unwrap();
        std::fs::write(&c1, &good[..good.len() / 2]).unwrap();
        assert!(matches!(state.reload_if_changed(), Reload::Failed(e) if e.contains("tls.cert_file")));
        assert_eq!(state.leaf().fingerprint, before, "the last good certificate stays in use");
        issue(d, &Subject::Node { id: 1, hosts: vec!["kho-1.example".into()] }, Duration::from_secs(600)).unwrap();
        assert_eq!(state.reload_if_changed(), Reload::Reloaded);
        assert_ne!(state.leaf().fingerprint, before, "the new certificate is in use");
        // A change of the CA bundle alone is a change.
        let ca = std::fs::read(d.join(CA_CERT)).unwrap();
        std::fs::write(d.join(CA_CERT), [ca.clone(), ca].concat()).unwrap();
        assert_eq!(state.reload_if_changed(), Reload::Reloaded);
    }
}
