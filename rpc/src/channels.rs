//! One gRPC channel per peer address, created on first use and reused by every group's
//! Raft messages and by request forwarding.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connect timeout for a peer channel, milliseconds.
const CONNECT_TIMEOUT_MS: u64 = 1_000;

#[derive(Default)]
pub struct Channels {
    map: Mutex<HashMap<String, Channel>>,
    /// Source IP of every outgoing connection (`peer_source_ip`); `None` lets the OS pick.
    source_ip: Option<IpAddr>,
}

impl Channels {
    pub fn new(source_ip: Option<IpAddr>) -> Channels {
        Channels { map: Mutex::default(), source_ip }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.map.lock().expect("channels lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.source_ip);
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
