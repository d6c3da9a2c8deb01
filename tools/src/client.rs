//! Connecting to a cluster: try the endpoints in order, keep the first that connects.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use kho_proto::v1::{admin_client::AdminClient, data_client::DataClient};
use tonic::transport::{Channel, Endpoint};

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

/// A connection to one node of the cluster, with the endpoint it reached.
#[derive(Debug, Clone)]
pub struct Conn {
    pub endpoint: String,
    pub channel: Channel,
}

impl Conn {
    pub fn data(&self) -> DataClient<Channel> {
        DataClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }
}

/// Connects to the first endpoint of the list that accepts a connection, trying them in
/// order. Any node serves any request (it forwards to the leader), so the first is enough.
pub async fn connect(endpoints: &EndpointList, t: Timeouts) -> anyhow::Result<Conn> {
    let mut failures = Vec::new();
    for ep in &endpoints.0 {
        match connect_one(ep, t).await {
            Ok(channel) => {
                tracing::debug!(endpoint = %ep, "connected");
                return Ok(Conn { endpoint: ep.clone(), channel });
            }
            Err(e) => {
                let text = error_text(&e);
                tracing::debug!(endpoint = %ep, error = %text, "connect failed");
                failures.push(format!("{ep} ({text})"));
            }
        }
    }
    Err(anyhow!("could not connect to any endpoint: {}", failures.join("; ")))
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

async fn connect_one(endpoint: &str, t: Timeouts) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(format!("http://{endpoint}"))
        .with_context(|| format!("bad endpoint `{endpoint}`"))?
        .connect_timeout(t.connect)
        .timeout(t.request)
        .tcp_nodelay(true);
    // The connect timeout bounds the TCP connect; this bounds the HTTP/2 handshake too.
    match tokio::time::timeout(t.connect + Duration::from_millis(500), ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("connect")),
        Err(_) => Err(anyhow!("connect timed out after {} ms", t.connect.as_millis())),
    }
}
