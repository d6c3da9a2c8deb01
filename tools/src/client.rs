//! Connecting to a cluster: try the endpoints in order, keep the first that connects;
//! with TLS when a CA is given (`--ca`/`KHO_CA`), presenting a client certificate when
//! one is given (`--cert`, `--key`).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use kho_proto::v1::{admin_client::AdminClient, data_client::DataClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::parse::EndpointList;

/// How long one endpoint may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take until its response starts.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response message the CLI accepts, bytes (scans come in chunks well below this).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// Timeouts of one connection attempt.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: CONNECT_TIMEOUT, request: REQUEST_TIMEOUT }
    }
}

/// TLS of a client connection.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The CA certificates (PEM) node certificates must chain to.
    pub ca: Vec<u8>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the files; `cert` and `key` come together or not at all.
    pub fn load(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<ClientTls> {
        let read = |flag: &str, p: &Path| std::fs::read(p).with_context(|| format!("{flag} {}", p.display()));
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read("--cert", c)?, read("--key", k)?)),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--cert needs --key (KHO_KEY)"),
            (None, Some(_)) => anyhow::bail!("--key needs --cert (KHO_CERT)"),
        };
        Ok(ClientTls { ca: read("--ca", ca)?, identity })
    }

    fn config(&self) -> ClientTlsConfig {
        let c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => c.identity(Identity::from_pem(cert, key)),
            None => c,
        }
    }
}

/// Where the cluster is and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoints: EndpointList,
    /// `None`: plaintext (a cluster with `tls.plaintext = true`).
    pub tls: Option<ClientTls>,
    /// A bearer token (`kho_…`) sent with every request (`--token`, `KHO_TOKEN`).
    pub token: Option<String>,
    /// An access session's id sent with every request (`--session`, `KHO_SESSION`).
    pub session: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every request when there is a token, and
/// `kho-session: <id>` when there is an access session.
#[derive(Clone, Debug, Default)]
pub struct Bearer {
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    session: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    pub fn new(token: Option<&str>, session: Option<&str>) -> anyhow::Result<Bearer> {
        let token = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| anyhow!("--token: not printable ASCII (a token is kho_<id>_<secret>)"))?,
            ),
        };
        let session = match session.map(str::trim) {
            None | Some("") => None,
            Some(s) if kho_raft::access::is_session_id(s) => Some(s.parse().expect("hex digits are a valid header value")),
            Some(s) => anyhow::bail!("--session: `{s}` is not a session id (32 lowercase hex digits, from `kho session open`)"),
        };
        Ok(Bearer { token, session })
    }

    /// Whether requests carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.token {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.session {
            req.metadata_mut().insert(kho_rpc::auth::SESSION_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A connection with the caller's token on every request.
pub type Svc = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// An endpoint of `host:port`: `https://` with `tls`, else `http://`.
pub fn endpoint(addr: &str, tls: Option<&ClientTls>) -> anyhow::Result<Endpoint> {
    match tls {
        Some(t) => Ok(Endpoint::from_shared(format!("https://{addr}"))
            .with_context(|| format!("bad endpoint `{addr}`"))?
            .tls_config(t.config())
            .with_context(|| format!("TLS configuration for `{addr}`"))?),
        None => Endpoint::from_shared(format!("http://{addr}")).with_context(|| format!("bad endpoint `{addr}`")),
    }
}

/// Set once a command connected without TLS: a transport failure is then most likely a
/// TLS port refusing a plaintext client, and the error says what to do (`main::report`).
pub static PLAINTEXT_USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The hint added to connection failures of a plaintext client.
pub const TLS_HINT: &str = "a cluster with TLS needs its CA: --ca or KHO_CA";

/// A connection to one node of the cluster, with the endpoint it reached.
#[derive(Debug, Clone)]
pub struct Conn {
    pub endpoint: String,
    pub channel: Channel,
    pub bearer: Bearer,
}

impl Conn {
    pub fn data(&self) -> DataClient<Svc> {
        DataClient::with_interceptor(self.channel.clone(), self.bearer.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub fn admin(&self) -> AdminClient<Svc> {
        AdminClient::with_interceptor(self.channel.clone(), self.bearer.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }
}

/// Connects to the first endpoint of the list that accepts a connection, trying them in
/// order. Any node serves any request (it forwards to the leader), so the first is enough.
pub async fn connect(target: &Target, t: Timeouts) -> anyhow::Result<Conn> {
    if target.tls.is_none() {
        PLAINTEXT_USED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let bearer = Bearer::new(target.token.as_deref(), target.session.as_deref())?;
    let mut failures = Vec::new();
    for ep in &target.endpoints.0 {
        match connect_one(ep, target.tls.as_ref(), t).await {
            Ok(channel) => {
                tracing::debug!(endpoint = %ep, "connected");
                return Ok(Conn { endpoint: ep.clone(), channel, bearer });
            }
            Err(e) => {
                let text = error_text(&e);
                tracing::debug!(endpoint = %ep, error = %text, "connect failed");
                failures.push(format!("{ep} ({text})"));
            }
        }
    }
    let hint = if target.tls.is_none() { format!(" ({TLS_HINT})") } else { String::new() };
    Err(anyhow!("could not connect to any endpoint: {}{hint}", failures.join("; ")))
}

/// An error and its causes on one line, without the repeats tonic's transport errors have
/// ("tcp connect error: tcp connect error: Connection refused").
fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

async fn connect_one(addr: &str, tls: Option<&ClientTls>, t: Timeouts) -> anyhow::Result<Channel> {
    let ep = endpoint(addr, tls)?.connect_timeout(t.connect).timeout(t.request).tcp_nodelay(true);
    // The connect timeout bounds the TCP connect; this bounds the HTTP/2 handshake too.
    match tokio::time::timeout(t.connect + Duration::from_millis(500), ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("connect")),
        Err(_) => Err(anyhow!("connect timed out after {} ms", t.connect.as_millis())),
    }
}
