//! Server assembly: opens the node, serves the client listener (`listen_addr`: Data,
//! Admin, health, reflection) and the peer listener (`peer_listen_addr`: Raft messages
//! and requests forwarded by other nodes, node certificates only), bootstraps a new
//! cluster, and stops gracefully.

use std::sync::Arc;
use std::time::Duration;

use kho_proto::v1::admin_server::AdminServer;
use kho_proto::v1::data_server::DataServer;
use kho_proto::v1::load_server::LoadServer;
use kho_proto::v1::raft_transport_server::RaftTransportServer;
use kho_raft::RaftNode;

use crate::admin::AdminService;
use crate::admission::AdmissionLayer;
use crate::channels::Channels;
use crate::config::Config;
use crate::ctx::Ctx;
use crate::data::DataService;
use crate::load::LoadService;
use crate::pool::BlockingPool;
use crate::tls::{ListenerKind, TlsState};
use crate::transport::{GrpcTransport, RaftService};
use crate::ServerError;

/// HTTP/2 keepalive of accepted connections, peers' and clients' alike: a PING after this
/// long without received bytes, milliseconds; as on the peer channels (`channels.rs`).
const SERVER_KEEPALIVE_INTERVAL_MS: u64 = crate::channels::PEER_KEEPALIVE_INTERVAL_MS;
/// A PING not acknowledged within this long closes the accepted connection, milliseconds.
/// A closed connection also refuses what a healed link delivers late on it.
const SERVER_KEEPALIVE_TIMEOUT_MS: u64 = crate::channels::PEER_KEEPALIVE_TIMEOUT_MS;

/// Most streams per connection that the other side opened and reset before this server
/// accepted them (h2's `max_pending_accept_reset_streams`, 20 by default); one more closes
/// the connection with GOAWAY ENHANCE_YOUR_CALM, failing every call on it with
/// RESOURCE_EXHAUSTED. A link cut and healed delivers the calls its sender timed out during
/// the cut together with their resets, all before the server accepts any. Until keepalive
/// closes a dead connection (`channels::PEER_DEAD_AFTER_MS`, 2 s) that is one Raft
/// heartbeat per `raft.heartbeat_interval_ms` per group per peer (40 at the test clusters'
/// 50 ms), a few replication and read-index calls, and forwarded calls the forwarding node
/// could not leave open (`ctx::FORWARDS_LINGERING_MAX`). The cost of the bound: each such
/// stream holds its request headers (at most 16 KiB) until it is accepted.
pub const HTTP2_PENDING_ACCEPT_RESET_STREAMS_MAX: usize = 1_024;

/// A connection this old is closed gracefully (GOAWAY; calls in flight finish) and its
/// client opens a new one, milliseconds. Bounds how long a certificate revoked or
/// replaced since the connection's handshake stays in use (docs/SECURITY.md, "TLS").
pub const CONNECTION_AGE_MAX_MS: u64 = 600_000;

/// Runs a node until `shutdown` completes, then stops gracefully.
pub async fn run_server(config: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    config.validate()?;
    // The master key and the data directory's marker are checked before anything is opened
    // or bound: a node with a wrong or missing key refuses to start and touches nothing.
    let master = crate::master_key::load(&config.encryption)?;
    crate::master_key::check_data_dir(&config.data_dir, master.as_ref().map(|(k, p)| (k, p.as_str())))?;
    if let Some((k, provider)) = &master {
        tracing::info!(master_key_id = %k.id_hex(), %provider, "encryption at rest is on");
    }
    let master = master.map(|(k, _)| Arc::new(k));
    let members = config.initial_members()?;
    let advertise = config.peer_advertise_addr().to_string();
    let msg_max = config.limits.grpc_message_bytes_max as usize;
    let tls = match config.tls.files() {
        Some(files) => {
            let state = TlsState::load(config.node_id, files, config.tls.client_cert_required)
                .map_err(|e| ServerError::Other(format!("TLS: {e}")))?;
            let leaf = state.leaf();
            tracing::info!(certificate = %leaf.fingerprint, not_after_unix = leaf.not_after_unix, "TLS is on (both listeners, TLS 1.3 between nodes)");
            Some(state)
        }
        None => {
            tracing::warn!(
                "tls.plaintext = true: both listeners and the connections between nodes are plaintext and nodes are not \
                 authenticated; whoever reaches the peer port can send Raft messages. For tests and development only"
            );
            None
        }
    };
    let bind = |field: &'static str, addr: String| async move {
        tokio::net::TcpListener::bind(&addr).await.map_err(|e| ServerError::Other(format!("{field}: cannot bind {addr}: {e}")))
    };
    let listener = bind("listen_addr", config.listen_addr.clone()).await?;
    let peer_listener = bind("peer_listen_addr", config.peer_listen_addr.clone()).await?;
    let channels = Arc::new(Channels::new(config.peer_source_ip()?, tls.clone()));
    let transport = Arc::new(GrpcTransport { from: config.node_id, channels: channels.clone(), message_bytes_max: msg_max });
    let node = RaftNode::open(config.node_id, advertise.clone(), &config.data_dir, &config.raft_settings(), transport, master)
        .await
        .map_err(|e| ServerError::Other(format!("cannot open node storage in {}: {e}", config.data_dir.display())))?;
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen_addr,
        peer_listen = %config.peer_listen_addr,
        peer_advertise = %advertise,
        data_dir = %config.data_dir.display(),
        "node opened"
    );

    let l = &config.limits;
    let pool_error = |e: std::io::Error| ServerError::Other(format!("cannot start the read threads: {e}"));
    let reads = BlockingPool::new("read", "limits.read_threads", l.read_threads as usize, l.read_queue_max as usize).map_err(pool_error)?;
    let scans = BlockingPool::new("scan", "limits.scan_threads", l.scan_threads as usize, l.read_queue_max as usize).map_err(pool_error)?;
    let auth = Arc::new(crate::auth::Auth::new(config.auth.clone()));
    if !config.auth.enabled {
        tracing::warn!(
            "auth.enabled = false: every caller is a cluster admin, without credentials; grants and tokens are not checked \
             (development only: docs/SECURITY.md)"
        );
    } else if config.auth.cluster_admins.is_empty() {
        tracing::warn!("auth.cluster_admins is empty: no principal can create tenants or grants on this node");
    }
    let (audit, audit_task) = crate::audit::AuditLog::start(node.clone());
    let ctx = Arc::new(Ctx {
        node: node.clone(),
        limits: config.limits.clone(),
        channels,
        proposal_timeout: Duration::from_millis(config.raft.proposal_timeout_ms),
        reads,
        scans,
        forwards_lingering: Arc::new(tokio::sync::Semaphore::new(crate::ctx::FORWARDS_LINGERING_MAX)),
        client_addr: config.advertise_addr().to_string(),
        client_addrs: Default::default(),
        auth: auth.clone(),
        audit,
    });
    let addr_refresher = tokio::spawn(crate::ctx::refresh_client_addrs(ctx.clone()));
    let grants_confirmer = tokio::spawn(auth.clone().confirm_grants(node.meta()));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<DataServer<DataService>>().await;
    health_reporter.set_serving::<AdminServer<AdminService>>().await;
    health_reporter.set_serving::<LoadServer<LoadService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kho_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Other(format!("reflection: {e}")))?;

    let data = || DataServer::new(DataService { ctx: ctx.clone() }).max_decoding_message_size(msg_max).max_encoding_message_size(msg_max);
    let admin =
        || AdminServer::new(AdminService { ctx: ctx.clone() }).max_decoding_message_size(msg_max).max_encoding_message_size(msg_max);
    let load = || LoadServer::new(LoadService { ctx: ctx.clone() }).max_decoding_message_size(msg_max).max_encoding_message_size(msg_max);
    let raft =
        RaftTransportServer::new(RaftService { node: node.clone() }).max_decoding_message_size(msg_max).max_encoding_message_size(msg_max);
    // One admission limit over both listeners: a forwarded request counts like any other.
    let admission = AdmissionLayer::new(config.limits.node_requests_max as usize);
    let builder = || {
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(config.limits.concurrent_requests_max as usize)
            .http2_keepalive_interval(Some(Duration::from_millis(SERVER_KEEPALIVE_INTERVAL_MS)))
            .http2_keepalive_timeout(Some(Duration::from_millis(SERVER_KEEPALIVE_TIMEOUT_MS)))
            .http2_max_pending_accept_reset_streams(Some(HTTP2_PENDING_ACCEPT_RESET_STREAMS_MAX))
            .max_connection_age(Duration::from_millis(CONNECTION_AGE_MAX_MS))
            .layer(admission.clone())
    };
    let reloader = tls.as_ref().map(|t| t.spawn_reloader(Duration::from_millis(config.tls.reload_interval_ms)));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Accepted sockets get TCP_NODELAY in `tls::incoming`: without it a response written
    // in two pieces waits for the client's delayed ACK (~40 ms per 1 KiB read).
    let client_server = builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(data())
        .add_service(admin())
        .add_service(load())
        .serve_with_incoming_shutdown(crate::tls::incoming(listener, ListenerKind::Client, tls.clone()), stopped(stop_rx.clone()));
    let peer_server = builder()
        .add_service(raft)
        .add_service(data())
        .add_service(admin())
        .add_service(load())
        .serve_with_incoming_shutdown(crate::tls::incoming(peer_listener, ListenerKind::Peer, tls.clone()), stopped(stop_rx));
    let server = tokio::spawn(async move {
        let (a, b) = tokio::join!(client_server, peer_server);
        a.and(b)
    });

    let mut failed = None;
    if !members.is_empty() {
        match node.bootstrap(&members).await {
            Ok(true) => tracing::info!(?members, "bootstrapped a new cluster"),
            Ok(false) => tracing::info!("node has Raft state; initial_members ignored"),
            Err(e) => failed = Some(ServerError::Other(format!("bootstrap: {e}"))),
        }
    }

    // A failed bootstrap stops the node the same way as a shutdown: listeners, tasks, node.
    if failed.is_none() {
        shutdown.await;
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(r) = reloader {
        r.abort();
    }
    addr_refresher.abort();
    grants_confirmer.abort();
    audit_task.abort();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!("gRPC server did not stop within 10 s"),
    }
    node.shutdown().await;
    tracing::info!("stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
