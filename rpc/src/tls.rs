//! TLS on the client and peer listeners and on the connections between nodes
//! (docs/SECURITY.md, "TLS").
//!
//! tonic's own TLS builds one rustls configuration at start-up and never reloads it, so
//! the listeners here run their own accept loop: a TCP accept, a rustls handshake with the
//! configuration current at that moment, then the connection is handed to tonic. The
//! outgoing peer connections use a connector of their own the same way. [`TlsState`]
//! holds the configurations built from the node's files (certificate, key, CA bundle,
//! CRL) and rebuilds them when the content of any of them changes; a file that cannot be
//! read or used keeps the last good configuration and the error is logged.
//!
//! Identities: a node certificate names its node by a URI SAN `kho://node/<id>`; the
//! client identity of a certificate is its URI SAN `kho://user/<name>`, else its subject
//! CN ([`cert_identity`]). Only a node certificate is accepted on the peer listener, and
//! a node presents only a node certificate when it connects to another node.
//!
//! Exactly one crypto provider is linked, ring ([`provider`]); every rustls configuration
//! here is built with it explicitly, and [`install_provider`] installs it as the process
//! default for the rest (tonic's client TLS).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

/// The URI SAN prefix of a node certificate: `kho://node/<id>`.
pub const NODE_URI_PREFIX: &str = "kho://node/";
/// The URI SAN prefix of a client certificate's principal: `kho://user/<name>`.
pub const USER_URI_PREFIX: &str = "kho://user/";
/// A TLS handshake not finished within this long of the connection's arrival closes it,
/// milliseconds (the wait for its first byte included).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// A connection that sends nothing within this long is closed, milliseconds.
pub const FIRST_BYTE_TIMEOUT_MS: u64 = 2_000;
/// Most TLS handshakes one listener runs at once; a connection beyond it is closed at once,
/// so a flood of slow handshakes cannot take the node's memory, count.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Most TLS handshakes one listener runs at once for one source IP address, count: one
/// host that opens connections and sends nothing cannot take every slot.
pub const HANDSHAKES_PER_IP_MAX: usize = 16;
/// Accepted connections waiting for the gRPC server to take them, per listener, count.
const ACCEPTED_QUEUE_MAX: usize = 64;
/// Largest certificate, key, CA or CRL file read, bytes: a larger file is refused.
pub const TLS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most addresses of a peer host tried for one connection, count.
const PEER_ADDRS_TRIED_MAX: usize = 8;
/// Pause after a failed `accept` (out of file descriptors), milliseconds.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// The one crypto provider of every TLS configuration Kho builds: ring.
///
/// rustls 0.23.48 deprecates ring's provider because ring has no post-quantum key
/// exchange; aws-lc-rs has it (and a FIPS 140-3 certificate) but needs cmake and a long C
/// build on every cold build. Switching is this function and the `ring` features in the
/// workspace's Cargo.toml (docs/SECURITY.md, "TLS").
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as the process-wide default (once; later calls do nothing).
/// Called at the start of `main`, before any TLS configuration is built.
pub fn install_provider() {
    let _ = CryptoProvider::install_default(Arc::unwrap_or_clone(provider()));
}

/// The name a certificate gives its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertName {
    /// A node certificate: URI SAN `kho://node/<id>`.
    Node(u64),
    /// A client certificate: URI SAN `kho://user/<name>`, else the subject CN.
    User(String),
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertName::Node(id) => write!(f, "node {id}"),
            CertName::User(name) => write!(f, "user `{name}`"),
        }
    }
}

/// What a peer's end-entity certificate says, read once per connection.
#[derive(Clone, Debug)]
pub struct CertIdentity {
    /// `None`: the certificate names nobody Kho knows (no kho URI SAN and no CN).
    pub name: Option<CertName>,
    /// SHA-256 of the certificate's DER bytes, lowercase hex (what `openssl x509
    /// -fingerprint -sha256` prints, without colons).
    pub fingerprint: String,
    /// The end of the certificate's validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Reads the identity of a DER certificate (docs/SECURITY.md, "Certificate identities"):
/// 1. a URI SAN `kho://node/<id>` makes it a node certificate (the id a number > 0);
/// 2. else a URI SAN `kho://user/<name>` names the user;
/// 3. else the first subject CN names the user.
///
/// A node is never named by a CN.
pub fn cert_identity(der: &[u8]) -> Result<CertIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let fingerprint = hex(&Sha256::digest(der));
    let not_after_unix = cert.validity().not_after.timestamp();
    let mut node = None;
    let mut user = None;
    let san = cert.subject_alternative_name().map_err(|e| format!("bad subject alternative name extension: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!("URI SAN `{uri}`: the node id is not a number"));
                    }
                    let id: u64 = id.parse().map_err(|_| format!("URI SAN `{uri}`: the node id is not a number"))?;
                    if id == 0 {
                        return Err(format!("URI SAN `{uri}`: node id 0 is not a node"));
                    }
                    if node.replace(id).is_some_and(|other| other != id) {
                        return Err("the certificate names two different nodes".into());
                    }
                } else if let Some(u) = uri.strip_prefix(USER_URI_PREFIX) {
                    if u.is_empty() {
                        return Err(format!("URI SAN `{uri}`: no user name"));
                    }
                    if user.replace(u.to_string()).is_some_and(|other| other != u) {
                        return Err("the certificate names two different users".into());
                    }
                }
            }
        }
    }
    let name = match (node, user) {
        (Some(_), Some(_)) => return Err("the certificate names both a node and a user".into()),
        (Some(id), None) => Some(CertName::Node(id)),
        (None, Some(u)) => Some(CertName::User(u)),
        (None, None) => cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(|cn| CertName::User(cn.to_string())),
    };
    Ok(CertIdentity { name, fingerprint, not_after_unix })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// `listen_addr`: clients (Data, Admin, health, reflection).
    Client,
    /// `peer_listen_addr`: other nodes (Raft messages and forwarded requests).
    Peer,
}

/// What a handler knows of the connection its request came on (a request extension).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: ListenerKind,
    pub remote: Option<SocketAddr>,
    /// The verified certificate the other side presented; `None` without TLS or without a
    /// client certificate.
    pub cert: Option<Arc<CertIdentity>>,
}

impl ConnInfo {
    /// The node the connection's certificate names, if it is a node certificate.
    pub fn node(&self) -> Option<u64> {
        match self.cert.as_ref()?.name {
            Some(CertName::Node(id)) => Some(id),
            _ => None,
        }
    }
}

/// The files of a node's TLS configuration (`[tls]` in docs/CONFIG.md).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificates (PEM, one or more) that node certificates are checked against, and
    /// client certificates too unless `client_ca` is set.
    pub ca: PathBuf,
    /// This node's certificate chain (PEM, the leaf first), with URI SAN `kho://node/<id>`.
    pub cert: PathBuf,
    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificate revocation lists (PEM), checked on both listeners and on outgoing peer
    /// connections.
    pub crl: Option<PathBuf>,
    /// CA certificates client certificates are checked against, if not `ca`.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn all(&self) -> Vec<(&'static str, &Path)> {
        let mut v = vec![("tls.ca_file", self.ca.as_path()), ("tls.cert_file", self.cert.as_path()), ("tls.key_file", self.key.as_path())];
        if let Some(p) = &self.crl {
            v.push(("tls.crl_file", p));
        }
        if let Some(p) = &self.client_ca {
            v.push(("tls.client_ca_file", p));
        }
        v
    }
}

/// The configurations built from one reading of the files.
struct Material {
    client_listener: Arc<ServerConfig>,
    peer_listener: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
    /// SHA-256 over every file's name and content: a change of any of them reloads.
    digest: [u8; 32],
    /// The node certificate's identity.
    leaf: CertIdentity,
}

/// The node's TLS configurations, rebuilt when its files change.
pub struct TlsState {
    node_id: u64,
    files: TlsFiles,
    client_cert_required: bool,
    current: RwLock<Arc<Material>>,
    /// The digest of the last content that failed to load, so it is reported once.
    failed: Mutex<Option<([u8; 32], String)>>,
    loaded_at: Mutex<SystemTime>,
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed but cannot be used; the last good configuration stays.
    Failed(String),
}

impl TlsState {
    /// Loads the files. An error names the file and what is wrong: a node does not start
    /// with a TLS configuration it cannot use.
    pub fn load(node_id: u64, files: TlsFiles, client_cert_required: bool) -> Result<Arc<TlsState>, String> {
        let (contents, digest) = read_files(&files)?;
        let material = build(node_id, &files, &contents, digest, client_cert_required)?;
        Ok(Arc::new(TlsState {
            node_id,
            files,
            client_cert_required,
            current: RwLock::new(Arc::new(material)),
            failed: Mutex::new(None),
            loaded_at: Mutex::new(SystemTime::now()),
        }))
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The identity of the node certificate in use.
    pub fn leaf(&self) -> CertIdentity {
        self.material().leaf.clone()
    }

    /// Reads the files again and, when their content changed, rebuilds every configuration.
    /// New connections use the new one; established connections keep theirs.
    pub fn reload_if_changed(&self) -> Reload {
        let (contents, digest) = match read_files(&self.files) {
            Ok(r) => r,
            Err(e) => return self.failed(None, e),
        };
        if digest == self.material().digest {
            return Reload::Unchanged;
        }
        match build(self.node_id, &self.files, &contents, digest, self.client_cert_required) {
            Ok(m) => {
                tracing::info!(certificate = %m.leaf.fingerprint, not_after_unix = m.leaf.not_after_unix, "TLS files changed: reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
                Reload::Reloaded
            }
            Err(e) => self.failed(Some(digest), e),
        }
    }

    fn failed(&self, digest: Option<[u8; 32]>, error: String) -> Reload {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest.unwrap_or_default();
        if failed.as_ref().is_none_or(|(d, e)| *d != key || *e != error) {
            let since = self.loaded_at.lock().unwrap_or_else(|p| p.into_inner()).duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            tracing::error!(error = %error, loaded_at_unix = since.as_secs(), "TLS files changed but cannot be used; keeping the configuration loaded before");
            *failed = Some((key, error.clone()));
        }
        Reload::Failed(error)
    }

    /// Looks at the files every `interval` until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = state.clone();
                // The files are small (TLS_FILE_BYTES_MAX) but reading them may block.
                let _ = tokio::task::spawn_blocking(move || s.reload_if_changed()).await;
            }
        })
    }
}

/// Each file's content by its config field.
type Contents = Vec<(&'static str, Vec<u8>)>;

fn read_files(files: &TlsFiles) -> Result<(Contents, [u8; 32]), String> {
    let mut contents = Vec::new();
    let mut h = Sha256::new();
    for (field, path) in files.all() {
        let bytes = read_bounded(path).map_err(|e| format!("{field} {}: {e}", path.display()))?;
        h.update(field.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
        contents.push((field, bytes));
    }
    Ok((contents, h.finalize().into()))
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(TLS_FILE_BYTES_MAX + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > TLS_FILE_BYTES_MAX {
        return Err(io::Error::other(format!("larger than {TLS_FILE_BYTES_MAX} bytes")));
    }
    Ok(bytes)
}

fn content<'a>(contents: &'a [(&'static str, Vec<u8>)], field: &str) -> Option<&'a [u8]> {
    contents.iter().find(|(f, _)| *f == field).map(|(_, b)| b.as_slice())
}

/// Parses every certificate of a PEM bundle; at least one.
fn pem_certs(field: &str, path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{field} {}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{field} {}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn roots(field: &str, path: &Path, bytes: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in pem_certs(field, path, bytes)? {
        store.add(c).map_err(|e| format!("{field} {}: not a usable CA certificate ({e})", path.display()))?;
    }
    Ok(Arc::new(store))
}

fn build(node_id: u64, files: &TlsFiles, contents: &Contents, digest: [u8; 32], client_cert_required: bool) -> Result<Material, String> {
    let get = |f: &str| content(contents, f).expect("every configured file was read");
    let chain = pem_certs("tls.cert_file", &files.cert, get("tls.cert_file"))?;
    let leaf = cert_identity(&chain[0]).map_err(|e| format!("tls.cert_file {}: {e}", files.cert.display()))?;
    if leaf.name != Some(CertName::Node(node_id)) {
        return Err(format!(
            "tls.cert_file {}: not a certificate of node {node_id}: it must carry the URI SAN {NODE_URI_PREFIX}{node_id} (it names {})",
            files.cert.display(),
            leaf.name.as_ref().map(|n| n.to_string()).unwrap_or_else(|| "nobody".into())
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(get("tls.key_file"))
        .map_err(|e| format!("tls.key_file {}: not a PEM private key ({e})", files.key.display()))?;
    let crls: Vec<CertificateRevocationListDer<'static>> = match &files.crl {
        None => Vec::new(),
        Some(p) => {
            let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(get("tls.crl_file"))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls.crl_file {}: not a PEM CRL ({e})", p.display()))?;
            if crls.is_empty() {
                return Err(format!("tls.crl_file {}: holds no PEM CRL", p.display()));
            }
            crls
        }
    };
    let node_roots = roots("tls.ca_file", &files.ca, get("tls.ca_file"))?;
    let client_roots = match &files.client_ca {
        Some(p) => roots("tls.client_ca_file", p, get("tls.client_ca_file"))?,
        None => node_roots.clone(),
    };
    let provider = provider();
    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(|e| format!("tls.key_file {}: does not fit tls.cert_file {} ({e})", files.key.display(), files.cert.display()))?;
    certified.keys_match().map_err(|e| format!("tls.key_file {}: not the key of tls.cert_file ({e})", files.key.display()))?;

    // A CA of the bundle without a CRL in tls.crl_file is not an error (CA rotation
    // adds a CA before its first CRL); intermediate CAs are not checked, only leaves.
    let client_verifier = {
        let b = WebPkiClientVerifier::builder_with_provider(client_roots, provider.clone())
            .with_crls(crls.clone())
            .allow_unknown_revocation_status()
            .only_check_end_entity_revocation();
        let b = if client_cert_required { b } else { b.allow_unauthenticated() };
        b.build().map_err(|e| format!("client certificate verifier: {e}"))?
    };
    let peer_verifier = WebPkiClientVerifier::builder_with_provider(node_roots.clone(), provider.clone())
        .with_crls(crls.clone())
        .allow_unknown_revocation_status()
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| format!("node certificate verifier: {e}"))?;
    // This node's own certificate must pass the checks its peers make of it (chain to the
    // CA bundle, in its validity, not revoked): a file that would cut the node off from the
    // cluster is refused, and a reload keeps the last good configuration instead.
    peer_verifier.verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now()).map_err(|e| {
        format!(
            "tls.cert_file {}: this node's certificate does not verify against tls.ca_file and tls.crl_file ({e})",
            files.cert.display()
        )
    })?;
    let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(node_roots, provider.clone())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| format!("node certificate verifier: {e}"))?;

    let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let h2 = vec![b"h2".to_vec()];
    let mut client_listener = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("tls.cert_file: {e}"))?;
    client_listener.alpn_protocols = h2.clone();
    let mut peer_listener = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(tls13)
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(peer_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("tls.cert_file: {e}"))?;
    peer_listener.alpn_protocols = h2.clone();
    let mut peer_client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(tls13)
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("tls.cert_file: {e}"))?;
    peer_client.alpn_protocols = h2;
    Ok(Material {
        client_listener: Arc::new(client_listener),
        peer_listener: Arc::new(peer_listener),
        peer_client: Arc::new(peer_client),
        digest,
        leaf,
    })
}

/// A connection: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An accepted connection with what is known of it; tonic puts the [`ConnInfo`] into
/// every request's extensions.
pub struct Accepted {
    io: Stream,
    info: ConnInfo,
}

impl AsyncRead for Accepted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections of one listener, as tonic's `serve_with_incoming` takes them. The
/// accept loop runs until the stream is dropped. With `tls`, each connection's handshake
/// uses the configuration current when it arrives; on the peer listener only a node
/// certificate gets through.
pub fn incoming(listener: TcpListener, kind: ListenerKind, tls: Option<Arc<TlsState>>) -> ReceiverStream<Result<Accepted, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE_MAX);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    let per_ip: Arc<Mutex<std::collections::HashMap<IpAddr, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(listener = ?kind, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                let info = ConnInfo { listener: kind, remote: Some(remote), cert: None };
                if tx.send(Ok(Accepted { io: Stream::Plain(tcp), info })).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(listener = ?kind, %remote, "{HANDSHAKES_IN_FLIGHT_MAX} TLS handshakes in flight (HANDSHAKES_IN_FLIGHT_MAX): connection closed");
                continue;
            };
            let Some(ip_slot) = IpSlot::take(&per_ip, remote.ip()) else {
                tracing::warn!(listener = ?kind, %remote, "{HANDSHAKES_PER_IP_MAX} TLS handshakes in flight from this address (HANDSHAKES_PER_IP_MAX): connection closed");
                continue;
            };
            let config = match kind {
                ListenerKind::Client => tls.material().client_listener.clone(),
                ListenerKind::Peer => tls.material().peer_listener.clone(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), handshake(tcp, remote, kind, config));
                let result = match handshake.await {
                    Ok(r) => r,
                    Err(_) => Err(format!("TLS handshake not finished within {HANDSHAKE_TIMEOUT_MS} ms")),
                };
                drop(ip_slot);
                match result {
                    Ok(a) => {
                        let _ = tx.send(Ok(a)).await;
                    }
                    Err(e) => tracing::info!(listener = ?kind, %remote, error = %e, "connection refused"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(tcp: TcpStream, remote: SocketAddr, kind: ListenerKind, config: Arc<ServerConfig>) -> Result<Accepted, String> {
    // A client that speaks plaintext HTTP/2 to a TLS port: say so in the log instead of
    // a bare handshake error (its first byte is not a TLS handshake record, 0x16).
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(FIRST_BYTE_TIMEOUT_MS), tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => return Err("not a TLS handshake (a plaintext client? this listener requires TLS)".into()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no data within {FIRST_BYTE_TIMEOUT_MS} ms")),
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = acceptor.accept(tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
    let cert = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(der) => Some(Arc::new(cert_identity(der)?)),
        None => None,
    };
    if kind == ListenerKind::Peer {
        match cert.as_ref().and_then(|c| c.name.clone()) {
            Some(CertName::Node(_)) => {}
            other => {
                return Err(format!(
                    "the peer listener takes node certificates only (URI SAN {NODE_URI_PREFIX}<id>); this one names {}",
                    other.map(|n| n.to_string()).unwrap_or_else(|| "nobody".into())
                ))
            }
        }
    }
    let info = ConnInfo { listener: kind, remote: Some(remote), cert };
    Ok(Accepted { io: Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))), info })
}

/// One source address's share of a listener's handshakes; given back when dropped.
struct IpSlot {
    map: Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(map: &Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<IpSlot> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= HANDSHAKES_PER_IP_MAX {
            return None;
        }
        *n += 1;
        Some(IpSlot { map: map.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Opens this node's connections to other nodes' peer listeners (tonic's
/// `Endpoint::connect_with_connector_lazy`): TCP from `source_ip`, then, with TLS, a TLS
/// 1.3 handshake with the node certificate, accepting only a node certificate in return.
#[derive(Clone)]
pub struct PeerConnector {
    pub tls: Option<Arc<TlsState>>,
    pub source_ip: Option<IpAddr>,
}

impl tower::Service<http::Uri> for PeerConnector {
    type Response = hyper_util::rt::TokioIo<Stream>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let source_ip = self.source_ip;
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| io::Error::other(format!("peer address `{uri}` has no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().ok_or_else(|| io::Error::other(format!("peer address `{uri}` has no port")))?;
            // Every address of the host (of the source IP's family when one is set), in turn.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .filter(|a| source_ip.is_none_or(|ip| ip.is_ipv4() == a.is_ipv4()))
                .take(PEER_ADDRS_TRIED_MAX)
                .collect();
            let mut last = io::Error::other(format!("peer host `{host}` has no usable address"));
            let mut connected = None;
            for addr in addrs {
                let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                if let Some(ip) = source_ip {
                    socket.bind(SocketAddr::new(ip, 0))?;
                }
                match socket.connect(addr).await {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let tcp = connected.ok_or(last)?;
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else {
                return Ok(hyper_util::rt::TokioIo::new(Stream::Plain(tcp)));
            };
            let name = ServerName::try_from(host.clone()).map_err(|e| io::Error::other(format!("peer host `{host}`: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(tls.material().peer_client.clone());
            let s = connector.connect(name, tcp).await?;
            let identity = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|der| cert_identity(der))
                .transpose()
                .map_err(io::Error::other)?;
            match identity.and_then(|i| i.name) {
                Some(CertName::Node(_)) => {}
                other => {
                    return Err(io::Error::other(format!(
                        "{host}:{port} is not a node: its certificate names {}",
                        other.map(|n| n.to_string()).unwrap_or_else(|| "nobody".into())
                    )))
                }
            }
            Ok(hyper_util::rt::TokioIo::new(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))))
        })
    }
}
