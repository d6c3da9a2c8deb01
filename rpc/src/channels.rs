//! gRPC channels to peer addresses (other nodes' peer listeners), created on first use.
//! Each peer has one channel per [`Lane`], each its own HTTP/2 connection, shared by every
//! group: Raft's small messages (votes, heartbeats, appends of small entries, read index)
//! never wait behind a bulk load's large appends, a snapshot or a forwarded request on the
//! same connection (its flow-control window, its socket buffer, its keepalive PINGs).
//! Connections are opened by `tls::PeerConnector`: mutual TLS 1.3 with this node's
//! certificate.
//!
//! A peer connection notices a dead link by HTTP/2 keepalive: when it has received nothing
//! for [`PEER_KEEPALIVE_INTERVAL_MS`] it sends a PING, busy or idle, and closes the
//! connection if no acknowledgement comes within [`PEER_KEEPALIVE_TIMEOUT_MS`]: so a
//! connection is closed at most [`PEER_DEAD_AFTER_MS`] after the last bytes it received.
//! Its calls then fail at once (UNAVAILABLE) instead of waiting out their timeouts, and the
//! next call opens a new connection. The server side pings the same way
//! (`rpc/src/server.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::{PeerConnector, TlsState};

/// Connect timeout for a peer channel, milliseconds.
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// A peer connection that has received nothing for this long sends an HTTP/2 PING,
/// milliseconds (also while no call is in flight).
pub const PEER_KEEPALIVE_INTERVAL_MS: u64 = 1_000;

/// A PING not acknowledged within this long closes the connection, milliseconds. It bounds
/// the round trip between nodes that a connection survives: keep nodes well under it apart.
pub const PEER_KEEPALIVE_TIMEOUT_MS: u64 = 1_000;

/// Longest time a connection whose link died stays open: the keepalive interval and
/// timeout, milliseconds (docs/ARCHITECTURE.md, "Peer connections").
pub const PEER_DEAD_AFTER_MS: u64 = PEER_KEEPALIVE_INTERVAL_MS + PEER_KEEPALIVE_TIMEOUT_MS;

/// Which connection to a peer a message takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Raft messages of at most [`CONTROL_MESSAGE_BYTES_MAX`] bytes.
    Control,
    /// Larger Raft messages and snapshot streams.
    Bulk,
    /// Client requests forwarded to the node that serves them.
    Forward,
}

/// Largest Raft message sent on the control lane, bytes; larger ones take the bulk lane.
pub const CONTROL_MESSAGE_BYTES_MAX: usize = 64 << 10;

impl Lane {
    /// The lane of a Raft message of `bytes` bytes.
    pub fn of_raft_message(bytes: usize) -> Lane {
        if bytes <= CONTROL_MESSAGE_BYTES_MAX {
            Lane::Control
        } else {
            Lane::Bulk
        }
    }
}

pub struct Channels {
    map: Mutex<HashMap<(String, Lane), Channel>>,
    /// Opens the connections: from `peer_source_ip`, with TLS unless the node is plaintext.
    connector: PeerConnector,
}

impl Channels {
    pub fn new(source_ip: Option<IpAddr>, tls: Option<Arc<TlsState>>) -> Channels {
        Channels { map: Mutex::default(), connector: PeerConnector { tls, source_ip } }
    }

    /// The channel to `addr` for `lane`.
    pub fn get(&self, addr: &str, lane: Lane) -> Result<Channel, String> {
        let mut map = self.map.lock().expect("channels lock");
        if let Some(c) = map.get(&(addr.to_string(), lane)) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(PEER_KEEPALIVE_TIMEOUT_MS))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_with_connector_lazy(self.connector.clone());
        map.insert((addr.to_string(), lane), channel.clone());
        Ok(channel)
    }
}
