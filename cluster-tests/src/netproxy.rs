//! A TCP proxy on loopback that injects network faults between the nodes of a
//! local cluster, for Jepsen-style tests of real `kho server` processes.
//!
//! # Model
//!
//! Each node `N` listens on its real address but *advertises* to its peers the
//! address of a proxy listener for `N` (one listener per destination, started
//! with [`Network::add_destination`]). Every node binds its outgoing peer
//! connections to its own loopback source IP (for example node `i` uses
//! `127.0.0.(10 + i)`), so the proxy for `N` can tell from a connection's peer
//! IP which node opened it.
//!
//! A *directed link* `from -> to` is the set of all TCP connections that node
//! `from` opens to node `to`. Bytes in **both** directions of those
//! connections belong to that link: cutting `1 -> 2` stops node 1's requests
//! to node 2 and node 2's replies to them, but not node 2's own connections to
//! node 1 (that is link `2 -> 1`). [`Network::partition`] cuts both.
//!
//! Connections from a source IP that is not in the `sources` map (the test's
//! own clients, for example) belong to the *default link*, which always
//! passes: faults only ever apply between known nodes.
//!
//! # Modes
//!
//! * [`LinkMode::Pass`]: bytes are forwarded as they arrive.
//! * [`LinkMode::Drop`]: emulates an iptables `DROP` rule. Bytes are read and
//!   held, not forwarded; TCP keeps the connection, so senders see their
//!   requests time out. When the link passes again the held bytes flow on, as
//!   TCP retransmission would deliver them. Holding is bounded: at most
//!   [`CHUNKS_IN_FLIGHT`] + 1 chunks of at most [`CHUNK_SIZE`] bytes per
//!   direction; beyond that the proxy stops reading, so the sender's kernel
//!   buffers fill and its writes block.
//!
//!   A connection *opened* while its link is `Drop` is accepted by the proxy
//!   (the client's `connect()` succeeds, unlike with a real dropped SYN), but
//!   the proxy does not connect to the destination and forwards nothing until
//!   the link passes: the destination never sees the connection, and the
//!   client's first request times out. (Nodes that keep reconnecting during a
//!   long cut accumulate such held connections up to
//!   [`MAX_CONNECTIONS_PER_PROXY`]; beyond that new ones are closed at once.)
//! * [`LinkMode::Delay`]: every chunk is forwarded `d` after it was read
//!   (a latency, pipelined over up to [`CHUNKS_IN_FLIGHT`] chunks, so a
//!   round trip through a delayed link takes at least `2 * d`).
//!
//! A mode change applies at once to the link's existing connections (held
//! and delayed chunks included) and to its future ones.
//!
//! # Other faults and lifecycle
//!
//! [`Network::reset_connections`] aborts every proxied connection (both sides
//! get a TCP reset); new connections are accepted normally.
//! [`Network::shutdown`] (also run when the last clone of the [`Network`] is
//! dropped) aborts every listener and connection task; the listening sockets
//! close as soon as the runtime drops the aborted tasks (immediately, unless
//! the runtime is blocked). [`ProxyStats::live_tasks`] counts the tasks whose
//! state has not been dropped yet.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::pending;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A node of the cluster, as the test harness numbers them.
pub type NodeId = u64;

/// How long the proxy waits for the destination to accept its upstream
/// connection before closing (resetting) the client's connection.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Largest chunk read from one side before it is forwarded to the other.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Chunks queued per direction between reading and forwarding (holds the
/// chunks in flight on a delayed link and bounds what a cut link holds).
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// Concurrent connections one destination's proxy listener serves; further
/// connections are closed (reset) as soon as they are accepted.
pub const MAX_CONNECTIONS_PER_PROXY: usize = 1024;

/// Pause after a failed `accept()` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;

/// What a directed link does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes are forwarded as they arrive.
    Pass,
    /// Bytes are held, not forwarded, like an iptables `DROP` rule: TCP keeps
    /// the connection and senders' requests time out; when the link passes
    /// again, held bytes flow on.
    Drop,
    /// Every chunk is forwarded this long after it was read.
    Delay(Duration),
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkMode::Pass => f.write_str("pass"),
            LinkMode::Drop => f.write_str("drop"),
            LinkMode::Delay(d) => write!(f, "delay {d:?}"),
        }
    }
}

/// Counters of one link (or of the default link).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connections accepted on this link.
    pub connections: u64,
    /// Bytes forwarded, both directions together.
    pub bytes_forwarded: u64,
    /// Chunks (a read's worth of bytes, or an end-of-stream) that had to wait
    /// because the link was `Drop` when they were due.
    pub chunks_held: u64,
}

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted, all links together (rejected ones excluded).
    pub connections_accepted: u64,
    /// Connections closed at once because a listener was at
    /// [`MAX_CONNECTIONS_PER_PROXY`].
    pub connections_rejected: u64,
    /// Proxied connections open now.
    pub connections_open: usize,
    /// Bytes forwarded, all links and directions together.
    pub bytes_forwarded: u64,
    /// Chunks held by a `Drop` link, all links together.
    pub chunks_held: u64,
    /// Listener and connection tasks not yet dropped.
    pub live_tasks: usize,
    /// Per directed link `(from, to)`, for links that were ever set or used.
    pub links: BTreeMap<(NodeId, NodeId), LinkStats>,
    /// Connections from unknown source IPs (always passing).
    pub default_link: LinkStats,
}

/// Handle on the proxies of one test cluster. Cheap to clone; when the last
/// clone is dropped, everything is shut down as by [`Network::shutdown`].
#[derive(Clone)]
pub struct Network {
    owner: Arc<Owner>,
}

/// Held only by `Network` handles (never by tasks), so its drop means the
/// last handle is gone.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

struct Shared {
    /// Source IP → node.
    by_ip: HashMap<IpAddr, NodeId>,
    links: Mutex<BTreeMap<(NodeId, NodeId), Arc<Link>>>,
    default_link: Arc<Link>,
    /// Bumped by `reset_connections`; every connection task watches it.
    reset: watch::Sender<u64>,
    tasks: Mutex<Tasks>,
    live_tasks: Arc<AtomicUsize>,
    open_connections: Arc<AtomicUsize>,
    rejected: AtomicU64,
}

struct Tasks {
    set: JoinSet<()>,
    closed: bool,
}

struct Link {
    mode: watch::Sender<LinkMode>,
    connections: AtomicU64,
    bytes: AtomicU64,
    held: AtomicU64,
}

impl Link {
    fn new() -> Arc<Link> {
        Arc::new(Link {
            mode: watch::Sender::new(LinkMode::Pass),
            connections: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            held: AtomicU64::new(0),
        })
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            connections: self.connections.load(Ordering::Relaxed),
            bytes_forwarded: self.bytes.load(Ordering::Relaxed),
            chunks_held: self.held.load(Ordering::Relaxed),
        }
    }
}

/// Increments a counter while alive.
struct CountGuard(Arc<AtomicUsize>);

impl CountGuard {
    fn new(counter: &Arc<AtomicUsize>) -> CountGuard {
        counter.fetch_add(1, Ordering::SeqCst);
        CountGuard(counter.clone())
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn closed_error() -> io::Error {
    io::Error::other("netproxy: the network was shut down")
}

impl Shared {
    fn link(&self, from: NodeId, to: NodeId) -> Arc<Link> {
        lock(&self.links).entry((from, to)).or_insert_with(Link::new).clone()
    }

    fn is_closed(&self) -> bool {
        lock(&self.tasks).closed
    }

    /// Spawns `fut` as a task that `shutdown` aborts. Returns false (and
    /// drops `fut`) once the network is shut down.
    fn spawn<F>(&self, fut: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        if tasks.closed {
            return false;
        }
        // Forget finished tasks so the set does not grow without bound.
        while tasks.set.try_join_next().is_some() {}
        let guard = CountGuard::new(&self.live_tasks);
        tasks.set.spawn(async move {
            let _guard = guard;
            fut.await;
        });
        true
    }

    fn shutdown(&self) {
        let set = {
            let mut tasks = lock(&self.tasks);
            tasks.closed = true;
            std::mem::take(&mut tasks.set)
        };
        // Dropping a JoinSet aborts all its tasks.
        drop(set);
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network").field("links", &self.describe()).finish()
    }
}

impl Network {
    /// `sources`: the source IP of each node's outgoing connections.
    ///
    /// # Panics
    /// If two nodes share a source IP (their links could not be told apart).
    #[must_use]
    pub fn new(sources: BTreeMap<NodeId, IpAddr>) -> Network {
        let mut by_ip = HashMap::new();
        for (&node, &ip) in &sources {
            if let Some(other) = by_ip.insert(ip.to_canonical(), node) {
                panic!("netproxy: nodes {other} and {node} share the source IP {ip}");
            }
        }
        let shared = Arc::new(Shared {
            by_ip,
            links: Mutex::new(BTreeMap::new()),
            default_link: Link::new(),
            reset: watch::Sender::new(0),
            tasks: Mutex::new(Tasks { set: JoinSet::new(), closed: false }),
            live_tasks: Arc::new(AtomicUsize::new(0)),
            open_connections: Arc::new(AtomicUsize::new(0)),
            rejected: AtomicU64::new(0),
        });
        Network { owner: Arc::new(Owner { shared }) }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// Starts a proxy for destination `dst`: listens on `listen` (e.g.
    /// `127.0.0.1:0`, or a chosen address) and forwards to `target`, the
    /// node's real address. Returns the bound address, which the harness
    /// advertises to the other nodes as `dst`'s address.
    ///
    /// # Errors
    /// If `listen` cannot be bound, or the network was shut down.
    pub async fn add_destination(&self, dst: NodeId, listen: SocketAddr, target: SocketAddr) -> io::Result<SocketAddr> {
        self.add_destination_limited(dst, listen, target, MAX_CONNECTIONS_PER_PROXY).await
    }

    async fn add_destination_limited(
        &self,
        dst: NodeId,
        listen: SocketAddr,
        target: SocketAddr,
        max_connections: usize,
    ) -> io::Result<SocketAddr> {
        let shared = self.shared();
        if shared.is_closed() {
            return Err(closed_error());
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let limit = Arc::new(Semaphore::new(max_connections));
        if !shared.spawn(accept_loop(listener, shared.clone(), dst, target, limit)) {
            return Err(closed_error());
        }
        Ok(addr)
    }

    /// Sets the mode of the directed link `from -> to` (all connections that
    /// `from` opens to `to`, both directions of their bytes), for its open
    /// connections and its future ones.
    pub fn set(&self, from: NodeId, to: NodeId, mode: LinkMode) {
        self.shared().link(from, to).mode.send_if_modified(|m| {
            let changed = *m != mode;
            *m = mode;
            changed
        });
    }

    /// The mode of the directed link `from -> to` (`Pass` unless set).
    #[must_use]
    pub fn mode(&self, from: NodeId, to: NodeId) -> LinkMode {
        lock(&self.shared().links).get(&(from, to)).map_or(LinkMode::Pass, |l| *l.mode.borrow())
    }

    /// Cuts both directions between every node of `a` and every node of `b`:
    /// mode `Drop` for `x -> y` and `y -> x`. Other links are left as they
    /// are; a node in both sets is not cut from itself.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                if x != y {
                    self.set(x, y, LinkMode::Drop);
                    self.set(y, x, LinkMode::Drop);
                }
            }
        }
    }

    /// Cuts `node` from every other node of `all`, both directions.
    pub fn isolate(&self, node: NodeId, all: &[NodeId]) {
        let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != node).collect();
        self.partition(&[node], &others);
    }

    /// Sets every link to `Pass`.
    pub fn heal(&self) {
        for link in lock(&self.shared().links).values() {
            link.mode.send_if_modified(|m| {
                let changed = *m != LinkMode::Pass;
                *m = LinkMode::Pass;
                changed
            });
        }
    }

    /// Closes every proxied connection now, with a TCP reset to both sides
    /// (held and delayed bytes are discarded). New connections are accepted
    /// normally.
    pub fn reset_connections(&self) {
        self.shared().reset.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The non-passing links, e.g. `"1->2 drop, 2->1 drop, 3->1 delay 50ms"`,
    /// or `"all links pass"`.
    #[must_use]
    pub fn describe(&self) -> String {
        let parts: Vec<String> = lock(&self.shared().links)
            .iter()
            .filter_map(|(&(from, to), link)| {
                let mode = *link.mode.borrow();
                (mode != LinkMode::Pass).then(|| format!("{from}->{to} {mode}"))
            })
            .collect();
        if parts.is_empty() {
            "all links pass".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// Aborts every listener and connection task (also done when the last
    /// handle is dropped). Idempotent; `add_destination` fails afterwards.
    pub fn shutdown(&self) {
        self.shared().shutdown();
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> ProxyStats {
        let shared = self.shared();
        let links: BTreeMap<(NodeId, NodeId), LinkStats> = lock(&shared.links).iter().map(|(&k, l)| (k, l.stats())).collect();
        let default_link = shared.default_link.stats();
        let all = links.values().chain(std::iter::once(&default_link));
        let (mut connections, mut bytes, mut held) = (0, 0, 0);
        for s in all {
            connections += s.connections;
            bytes += s.bytes_forwarded;
            held += s.chunks_held;
        }
        ProxyStats {
            connections_accepted: connections,
            connections_rejected: shared.rejected.load(Ordering::Relaxed),
            connections_open: shared.open_connections.load(Ordering::SeqCst),
            bytes_forwarded: bytes,
            chunks_held: held,
            live_tasks: shared.live_tasks.load(Ordering::SeqCst),
            links,
            default_link,
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, dst: NodeId, target: SocketAddr, limit: Arc<Semaphore>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        };
        let _ = client.set_nodelay(true);
        // The link is decided once, at accept time, from the source IP.
        let link = match shared.by_ip.get(&peer.ip().to_canonical()) {
            Some(&from) => shared.link(from, dst),
            None => shared.default_link.clone(),
        };
        link.connections.fetch_add(1, Ordering::Relaxed);
        let reset = shared.reset.subscribe();
        let open = CountGuard::new(&shared.open_connections);
        shared.spawn(serve_connection(client, target, link, reset, permit, open));
    }
}

async fn serve_connection(
    mut client: TcpStream,
    target: SocketAddr,
    link: Arc<Link>,
    mut reset: watch::Receiver<u64>,
    _permit: OwnedSemaphorePermit,
    _open: CountGuard,
) {
    let mut upstream: Option<TcpStream> = None;
    let outcome = {
        let work = forward(&mut client, &mut upstream, target, &link);
        tokio::select! {
            result = work => result,
            () = reset_signal(&mut reset) => Err(io::ErrorKind::ConnectionReset.into()),
        }
    };
    if outcome.is_err() {
        // An error (or a reset) on one side, or a failed upstream connect:
        // reset both sides rather than closing them gracefully.
        let _ = client.set_zero_linger();
        if let Some(server) = &upstream {
            let _ = server.set_zero_linger();
        }
    }
    // Both sockets close here.
}

async fn reset_signal(reset: &mut watch::Receiver<u64>) {
    if reset.changed().await.is_err() {
        pending::<()>().await;
    }
}

async fn forward(client: &mut TcpStream, upstream: &mut Option<TcpStream>, target: SocketAddr, link: &Link) -> io::Result<()> {
    // Like a dropped SYN: the destination sees nothing while the link is cut.
    let mut mode = link.mode.subscribe();
    if mode.wait_for(|m| *m != LinkMode::Drop).await.is_err() {
        pending::<()>().await;
    }
    drop(mode);
    let connect = TcpStream::connect(target);
    let server = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
        Ok(connected) => connected?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    let _ = server.set_nodelay(true);
    let server = upstream.insert(server);
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(pipe(client_read, server_write, link), pipe(server_read, client_write, link),)?;
    Ok(())
}

/// Bytes read from one side, or (empty) that side's end of stream.
struct Chunk {
    read_at: Instant,
    data: Vec<u8>,
}

/// Copies one direction: a reader fills a bounded queue, a writer forwards
/// each chunk when the link lets it. End of stream is forwarded as a write
/// shutdown (half-close); the other direction goes on.
async fn pipe(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, link: &Link) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = from.read(&mut buf).await?;
            let chunk = Chunk { read_at: Instant::now(), data: buf[..n].to_vec() };
            if tx.send(chunk).await.is_err() || n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        let mut mode = link.mode.subscribe();
        while let Some(chunk) = rx.recv().await {
            wait_release(&mut mode, chunk.read_at, &link.held).await;
            if chunk.data.is_empty() {
                to.shutdown().await?;
                return Ok(());
            }
            // Counted before writing, so a peer that has read them sees them counted.
            link.bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            to.write_all(&chunk.data).await?;
        }
        Ok(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Waits until a chunk read at `read_at` may be forwarded: not while the link
/// is `Drop`, and not before `Delay` has elapsed since it was read (or since
/// the link stopped dropping, for a held chunk). Counts the chunk in `held`
/// as soon as a `Drop` stops it.
async fn wait_release(mode: &mut watch::Receiver<LinkMode>, read_at: Instant, held: &AtomicU64) {
    let mut since = read_at;
    let mut counted = false;
    loop {
        let current = *mode.borrow_and_update();
        match current {
            LinkMode::Pass => return,
            LinkMode::Drop => {
                if !counted {
                    held.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                if mode.changed().await.is_err() {
                    return;
                }
                since = Instant::now();
            }
            LinkMode::Delay(d) => {
                let deadline = since.checked_add(d);
                if deadline.is_some_and(|t| t <= Instant::now()) {
                    return;
                }
                let sleep = async {
                    match deadline {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = sleep => return,
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::net::TcpSocket;

    const TEST_TIMEOUT: Duration = Duration::from_secs(30);
    const SILENCE: Duration = Duration::from_millis(300);

    async fn within<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(TEST_TIMEOUT, fut).await.expect("test timed out")
    }

    fn ip(node: NodeId) -> IpAddr {
        IpAddr::from([127, 0, 0, 10 + node as u8])
    }

    fn three_nodes() -> Network {
        Network::new((1..=3).map(|n| (n, ip(n))).collect())
    }

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Connects to `addr` from `src` (any port), as a node would.
    async fn connect_from(src: IpAddr, addr: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(src, 0)).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// An echo server; counts the connections it accepted.
    async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, accepted)
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.unwrap();
        let mut reply = vec![0u8; msg.len()];
        s.read_exact(&mut reply).await.unwrap();
        reply
    }

    /// Asserts that nothing arrives on `s` for `SILENCE`.
    async fn assert_silent(s: &mut TcpStream) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(SILENCE, s.read(&mut buf)).await {
            Err(_elapsed) => {}
            Ok(r) => panic!("expected no data while the link is cut, got {r:?}"),
        }
    }

    /// Asserts that `s` is closed (EOF or reset) within a bound.
    async fn assert_closed(s: &mut TcpStream) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn client_can_bind_a_distinct_loopback_source_ip() {
        within(async {
            let listener = TcpListener::bind(any_port()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (client, accepted) = tokio::join!(connect_from(ip(1), addr), async { listener.accept().await.unwrap() });
            assert_eq!(client.local_addr().unwrap().ip(), ip(1));
            assert_eq!(accepted.1.ip(), ip(1));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pass_round_trips_from_each_source() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            let mut nodes = Vec::new();
            for n in [1, 3] {
                let mut s = connect_from(ip(n), proxy).await;
                assert_eq!(round_trip(&mut s, b"hello from a node").await, b"hello from a node");
                nodes.push(s);
            }
            let mut client = TcpStream::connect(proxy).await.unwrap(); // 127.0.0.1: unknown
            assert_eq!(round_trip(&mut client, b"client").await, b"client");

            let stats = net.stats();
            assert_eq!(stats.connections_accepted, 3);
            assert_eq!(stats.links[&(1, 2)].connections, 1);
            assert_eq!(stats.links[&(1, 2)].bytes_forwarded, 2 * 17);
            assert_eq!(stats.links[&(3, 2)].connections, 1);
            assert_eq!(stats.default_link.connections, 1);
            assert_eq!(stats.default_link.bytes_forwarded, 2 * 6);
            assert_eq!(stats.bytes_forwarded, 2 * (17 + 17 + 6));
            assert_eq!(stats.chunks_held, 0);
            assert_eq!(stats.connections_open, 3);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_holds_bytes_until_heal() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            let mut from1 = connect_from(ip(1), proxy).await;
            let mut from3 = connect_from(ip(3), proxy).await;
            let mut client = TcpStream::connect(proxy).await.unwrap();
            round_trip(&mut from1, b"warm").await;
            round_trip(&mut from3, b"warm").await;
            round_trip(&mut client, b"warm").await;

            // The reverse link does not govern 1's own connections to 2.
            net.set(2, 1, LinkMode::Drop);
            assert_eq!(round_trip(&mut from1, b"still").await, b"still");

            net.set(1, 2, LinkMode::Drop);
            from1.write_all(b"request").await.unwrap();
            assert_silent(&mut from1).await;
            assert_eq!(round_trip(&mut from3, b"other").await, b"other");
            // Unknown sources use the default link, which always passes.
            net.isolate(2, &[1, 2, 3]);
            assert_eq!(round_trip(&mut client, b"test client").await, b"test client");
            assert!(net.stats().links[&(1, 2)].chunks_held >= 1);

            net.heal();
            assert_eq!(net.describe(), "all links pass");
            let mut reply = [0u8; 7];
            from1.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"request");
            assert_eq!(round_trip(&mut from1, b"after").await, b"after");
        })
        .await;
    }

    /// A server that, on its first connection, reports each request it has
    /// read and replies only when told to.
    async fn controlled_server() -> (SocketAddr, mpsc::Receiver<Vec<u8>>, mpsc::Sender<Vec<u8>>) {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, got_rx) = mpsc::channel(4);
        let (reply_tx, mut reply_rx) = mpsc::channel::<Vec<u8>>(4);
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got_tx.send(buf[..n].to_vec()).await.unwrap();
                let Some(reply) = reply_rx.recv().await else {
                    return;
                };
                s.write_all(&reply).await.unwrap();
            }
        });
        (addr, got_rx, reply_tx)
    }

    #[tokio::test]
    async fn drop_holds_replies_of_the_link_too() {
        within(async {
            let (server, mut got, reply) = controlled_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), server).await.unwrap();
            let mut from1 = connect_from(ip(1), proxy).await;
            from1.write_all(b"ping").await.unwrap();
            assert_eq!(got.recv().await.unwrap(), b"ping");
            // The request went through; now cut the link and let 2 answer.
            net.set(1, 2, LinkMode::Drop);
            reply.send(b"pong".to_vec()).await.unwrap();
            assert_silent(&mut from1).await;
            assert!(net.stats().links[&(1, 2)].chunks_held >= 1);
            net.set(1, 2, LinkMode::Pass);
            let mut buf = [0u8; 4];
            from1.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        })
        .await;
    }

    #[tokio::test]
    async fn connection_opened_during_drop_waits_for_heal() {
        within(async {
            let (echo, upstream_accepted) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            net.partition(&[1], &[2, 3]);
            let mut from1 = connect_from(ip(1), proxy).await;
            from1.write_all(b"first").await.unwrap();
            assert_silent(&mut from1).await;
            assert_eq!(upstream_accepted.load(Ordering::SeqCst), 0, "destination saw the connection");
            assert_eq!(net.stats().connections_accepted, 1);

            net.heal();
            let mut buf = [0u8; 5];
            from1.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"first");
            assert_eq!(upstream_accepted.load(Ordering::SeqCst), 1);
            assert_eq!(round_trip(&mut from1, b"second").await, b"second");
        })
        .await;
    }

    #[tokio::test]
    async fn delay_adds_latency_in_each_direction() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            let mut from1 = connect_from(ip(1), proxy).await;
            round_trip(&mut from1, b"warm").await;
            let delay = Duration::from_millis(200);
            net.set(1, 2, LinkMode::Delay(delay));
            assert_eq!(net.mode(1, 2), LinkMode::Delay(delay));
            assert_eq!(net.describe(), "1->2 delay 200ms");
            let start = std::time::Instant::now();
            assert_eq!(round_trip(&mut from1, b"slow").await, b"slow");
            let took = start.elapsed();
            // Request and reply are each delayed.
            assert!(took >= 2 * delay, "round trip took only {took:?}");
            // Other links are not delayed (no timing bound asserted).
            let mut from3 = connect_from(ip(3), proxy).await;
            assert_eq!(round_trip(&mut from3, b"fast").await, b"fast");
        })
        .await;
    }

    #[test]
    fn partition_isolate_and_heal_set_the_expected_links() {
        let net = three_nodes();
        let nodes = [1, 2, 3];
        assert_eq!(net.describe(), "all links pass");
        net.partition(&[1], &[2, 3]);
        for from in nodes {
            for to in nodes {
                let cut = from != to && (from == 1 || to == 1);
                let expected = if cut { LinkMode::Drop } else { LinkMode::Pass };
                assert_eq!(net.mode(from, to), expected, "{from}->{to}");
            }
        }
        assert_eq!(net.describe(), "1->2 drop, 1->3 drop, 2->1 drop, 3->1 drop");
        net.heal();
        assert_eq!(net.describe(), "all links pass");
        assert_eq!(net.mode(1, 2), LinkMode::Pass);

        net.isolate(2, &nodes);
        assert_eq!(net.describe(), "1->2 drop, 2->1 drop, 2->3 drop, 3->2 drop");
        net.heal();
        net.set(3, 1, LinkMode::Delay(Duration::from_millis(50)));
        net.set(1, 2, LinkMode::Drop);
        assert_eq!(net.describe(), "1->2 drop, 3->1 delay 50ms");
        net.set(1, 2, LinkMode::Pass);
        assert_eq!(net.describe(), "3->1 delay 50ms");
    }

    #[test]
    #[should_panic(expected = "share the source IP")]
    fn duplicate_source_ips_are_rejected() {
        let _ = Network::new([(1, ip(1)), (2, ip(1))].into_iter().collect());
    }

    #[tokio::test]
    async fn half_close_forwards_eof_and_keeps_the_other_direction() {
        within(async {
            // Reads until EOF, then replies with what it read, then closes.
            let listener = TcpListener::bind(any_port()).await.unwrap();
            let server = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(b"got: ").await.unwrap();
                s.write_all(&all).await.unwrap();
            });
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), server).await.unwrap();
            let mut from1 = connect_from(ip(1), proxy).await;
            from1.write_all(b"abc").await.unwrap();
            from1.shutdown().await.unwrap();
            let mut reply = Vec::new();
            from1.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"got: abc");
            wait_until("the connection is closed", || net.stats().connections_open == 0).await;
        })
        .await;
    }

    async fn transfer(net: &Network, proxy: SocketAddr, len: usize) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let s = connect_from(ip(1), proxy).await;
        let (mut r, mut w) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == data, "echoed {} bytes, {} sent, or corrupted", back.len(), data.len());
        assert!(net.stats().links[&(1, 2)].bytes_forwarded >= 2 * len as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_transfer_is_forwarded_intact() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            transfer(&net, proxy, 4 << 20).await;
            net.set(1, 2, LinkMode::Delay(Duration::from_millis(2)));
            transfer(&net, proxy, 1 << 20).await;
        })
        .await;
    }

    #[tokio::test]
    async fn reset_connections_closes_open_connections() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            let mut open = connect_from(ip(1), proxy).await;
            round_trip(&mut open, b"before").await;
            // One connection held before reaching the destination, too.
            net.set(3, 2, LinkMode::Drop);
            let mut held = connect_from(ip(3), proxy).await;
            wait_until("both connections are accepted", || net.stats().connections_open == 2).await;

            net.reset_connections();
            assert_closed(&mut open).await;
            assert_closed(&mut held).await;
            wait_until("no connection is open", || net.stats().connections_open == 0).await;

            let mut fresh = connect_from(ip(1), proxy).await;
            assert_eq!(round_trip(&mut fresh, b"after").await, b"after");
        })
        .await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination_limited(2, any_port(), echo, 2).await.unwrap();
            let mut a = connect_from(ip(1), proxy).await;
            let mut b = connect_from(ip(3), proxy).await;
            round_trip(&mut a, b"a").await;
            round_trip(&mut b, b"b").await;
            let mut c = connect_from(ip(1), proxy).await;
            assert_closed(&mut c).await;
            assert_eq!(net.stats().connections_rejected, 1);
            drop(a);
            wait_until("a permit is free", || net.stats().connections_open == 1).await;
            let mut d = connect_from(ip(1), proxy).await;
            assert_eq!(round_trip(&mut d, b"d").await, b"d");
        })
        .await;
    }

    /// Whether nothing listens on `addr` any more: a connection is refused,
    /// or closed without a byte.
    async fn not_listening(addr: SocketAddr) -> bool {
        match TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"x").await;
                let mut buf = [0u8; 1];
                matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
            }
        }
    }

    #[tokio::test]
    async fn shutdown_stops_listeners_and_every_task() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let p1 = net.add_destination(1, any_port(), echo).await.unwrap();
            let p2 = net.add_destination(2, any_port(), echo).await.unwrap();
            let mut from2 = connect_from(ip(2), p1).await;
            round_trip(&mut from2, b"x").await;
            net.set(1, 2, LinkMode::Drop);
            let _held = connect_from(ip(1), p2).await;
            wait_until("both connections are accepted", || net.stats().connections_open == 2).await;
            assert_eq!(net.stats().live_tasks, 4);

            net.shutdown();
            wait_until("every task is dropped", || net.stats().live_tasks == 0).await;
            assert_eq!(net.stats().connections_open, 0);
            assert_closed(&mut from2).await;
            assert!(not_listening(p1).await);
            assert!(not_listening(p2).await);
            assert!(net.add_destination(3, any_port(), echo).await.is_err());
            net.shutdown(); // idempotent
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_the_last_handle_shuts_down() {
        within(async {
            let (echo, _) = echo_server().await;
            let net = three_nodes();
            let proxy = net.add_destination(2, any_port(), echo).await.unwrap();
            let clone = net.clone();
            drop(net);
            let mut s = connect_from(ip(1), proxy).await;
            assert_eq!(round_trip(&mut s, b"alive").await, b"alive");
            let live = clone.shared().live_tasks.clone();
            drop(clone);
            let deadline = Instant::now() + Duration::from_secs(5);
            while live.load(Ordering::SeqCst) != 0 {
                assert!(Instant::now() < deadline, "tasks outlived the network");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_closed(&mut s).await;
            assert!(not_listening(proxy).await);
        })
        .await;
    }
}
