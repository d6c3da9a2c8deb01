//! The Raft transport over gRPC: `kho_raft::Transport` for the sending side and the
//! `RaftTransport` service for the receiving side.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use kho_proto::v1::raft_transport_client::RaftTransportClient;
use kho_proto::v1::raft_transport_server::RaftTransport;
use kho_proto::v1::{RaftMessage, RaftMessageKind, SnapshotChunk};
use kho_raft::{GroupId, MessageKind, NodeId, RaftNode, Transport, TransportError};
use tonic::{Request, Response, Status, Streaming};

use crate::channels::{Channels, Lane};
use crate::tls::{ConnInfo, ListenerKind};

/// Most snapshot chunks read ahead of the network, count.
const SNAPSHOT_CHUNKS_IN_FLIGHT_MAX: usize = 4;

pub struct GrpcTransport {
    pub from: NodeId,
    pub channels: Arc<Channels>,
    pub message_bytes_max: usize,
}

fn kind_to_proto(k: MessageKind) -> RaftMessageKind {
    match k {
        MessageKind::AppendEntries => RaftMessageKind::AppendEntries,
        MessageKind::Vote => RaftMessageKind::Vote,
        MessageKind::ReadIndex => RaftMessageKind::ReadIndex,
        MessageKind::Propose => RaftMessageKind::Propose,
        MessageKind::ChangeReplicas => RaftMessageKind::ChangeReplicas,
        MessageKind::SplitShard => RaftMessageKind::SplitShard,
        MessageKind::MergeShard => RaftMessageKind::MergeShard,
        MessageKind::WaitApplied => RaftMessageKind::WaitApplied,
        MessageKind::PreVote => RaftMessageKind::PreVote,
        MessageKind::Sleep => RaftMessageKind::Sleep,
        MessageKind::Probe => RaftMessageKind::Probe,
    }
}

fn status_to_error(target: NodeId, addr: &str, s: Status) -> TransportError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            TransportError::Unreachable { target, addr: addr.to_string(), reason: s.message().to_string() }
        }
        _ => TransportError::Remote { target, reason: format!("{:?}: {}", s.code(), s.message()) },
    }
}

impl GrpcTransport {
    fn client(&self, target: NodeId, addr: &str, lane: Lane) -> Result<RaftTransportClient<tonic::transport::Channel>, TransportError> {
        let ch = self.channels.get(addr, lane).map_err(|reason| TransportError::Unreachable { target, addr: addr.to_string(), reason })?;
        Ok(RaftTransportClient::new(ch).max_decoding_message_size(self.message_bytes_max).max_encoding_message_size(self.message_bytes_max))
    }
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        target: NodeId,
        addr: String,
        group: GroupId,
        kind: MessageKind,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let client = self.client(target, &addr, Lane::of_raft_message(payload.len()));
        let from = self.from;
        async move {
            let mut client = client?;
            let mut req = Request::new(RaftMessage { group_id: group, kind: kind_to_proto(kind) as i32, payload, from });
            req.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.call(req)).await {
                Err(_) => Err(TransportError::Timeout { target, timeout_ms: timeout.as_millis() as u64 }),
                Ok(Err(s)) => Err(status_to_error(target, &addr, s)),
                Ok(Ok(r)) => Ok(r.into_inner().payload),
            }
        }
        .boxed()
    }

    fn send_snapshot(
        &self,
        target: NodeId,
        addr: String,
        group: GroupId,
        header: Bytes,
        chunks: BoxStream<'static, io::Result<Bytes>>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let client = self.client(target, &addr, Lane::Bulk);
        let from = self.from;
        // A feeder task reads the file and a bounded channel carries the chunks to gRPC. A
        // read error ends the stream early; the receiver then sees a truncated snapshot and
        // rejects it (the end marker is missing).
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(SNAPSHOT_CHUNKS_IN_FLIGHT_MAX);
        let mut chunks = chunks;
        tokio::spawn(async move {
            let first = SnapshotChunk { group_id: group, header: header.to_vec(), data: Bytes::new(), from };
            if tx.send(first).await.is_err() {
                return;
            }
            while let Some(c) = chunks.next().await {
                match c {
                    Ok(data) => {
                        if tx.send(SnapshotChunk { group_id: group, header: Vec::new(), data, from }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the snapshot file failed; aborting the transfer");
                        return;
                    }
                }
            }
        });
        async move {
            let mut client = client?;
            let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut req = Request::new(outgoing);
            req.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.install_snapshot(req)).await {
                Err(_) => Err(TransportError::Timeout { target, timeout_ms: timeout.as_millis() as u64 }),
                Ok(Err(s)) => Err(status_to_error(target, &addr, s)),
                Ok(Ok(r)) => Ok(r.into_inner().payload),
            }
        }
        .boxed()
    }
}

/// The node a Raft message's connection was authenticated as: `Some` with TLS (the peer
/// listener admits node certificates only), `None` on a plaintext node.
///
/// Membership is not checked here: a node that lags (a learner catching up, a voter back
/// from a long outage) does not know the members added since, and refusing them would
/// keep it from ever catching up. A removed node is shut out by revoking its certificate
/// (docs/SECURITY.md, "Removing a node").
fn check_sender<T>(req: &Request<T>) -> Result<Option<NodeId>, Status> {
    let Some(info) = req.extensions().get::<ConnInfo>() else {
        return Err(Status::internal("a Raft message without connection information"));
    };
    if info.listener != ListenerKind::Peer {
        return Err(Status::permission_denied("Raft messages are taken on the peer listener only"));
    }
    match (&info.cert, info.node()) {
        (None, _) => Ok(None),
        (Some(_), Some(id)) => Ok(Some(id)),
        (Some(_), None) => Err(Status::permission_denied("Raft messages are taken from node certificates only")),
    }
}

/// A message must say it is from the node its connection's certificate names.
fn check_from(sender: Option<NodeId>, from: NodeId) -> Result<(), Status> {
    match sender {
        Some(id) if id != from => {
            Err(Status::permission_denied(format!("from: the message says node {from}, the connection's certificate is node {id}")))
        }
        _ => Ok(()),
    }
}

/// The receiving side of the Raft transport.
pub struct RaftService {
    pub node: Arc<RaftNode>,
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn call(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = check_sender(&req)?;
        let m = req.into_inner();
        check_from(sender, m.from)?;
        let kind = match RaftMessageKind::try_from(m.kind) {
            Ok(RaftMessageKind::AppendEntries) => MessageKind::AppendEntries,
            Ok(RaftMessageKind::Vote) => MessageKind::Vote,
            Ok(RaftMessageKind::ReadIndex) => MessageKind::ReadIndex,
            Ok(RaftMessageKind::Propose) => MessageKind::Propose,
            Ok(RaftMessageKind::ChangeReplicas) => MessageKind::ChangeReplicas,
            Ok(RaftMessageKind::SplitShard) => MessageKind::SplitShard,
            Ok(RaftMessageKind::MergeShard) => MessageKind::MergeShard,
            Ok(RaftMessageKind::WaitApplied) => MessageKind::WaitApplied,
            Ok(RaftMessageKind::PreVote) => MessageKind::PreVote,
            Ok(RaftMessageKind::Sleep) => MessageKind::Sleep,
            Ok(RaftMessageKind::Probe) => MessageKind::Probe,
            _ => return Err(Status::invalid_argument(format!("kind: unsupported raft message kind {}", m.kind))),
        };
        let payload = self.node.handle_call(m.group_id, kind, &m.payload, sender).await.map_err(|e| match e {
            kho_raft::RaftNodeError::UnknownGroup(_) => Status::not_found(e.to_string()),
            kho_raft::RaftNodeError::BadMessage(_) => Status::invalid_argument(e.to_string()),
            kho_raft::RaftNodeError::Forbidden(_) => Status::permission_denied(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        Ok(Response::new(RaftMessage { group_id: m.group_id, kind: m.kind, payload, from: self.node.id }))
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftMessage>, Status> {
        let sender = check_sender(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("snapshot stream: empty, the first chunk must carry the header"))?;
        if first.header.is_empty() {
            return Err(Status::invalid_argument("snapshot stream: the first chunk has no header"));
        }
        check_from(sender, first.from)?;
        let group = first.group_id;
        let data: Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>> = Box::pin(stream.map(|c| c.map(|c| c.data)));
        let payload = self.node.receive_snapshot(group, &first.header, data, sender).await.map_err(|e| match e {
            kho_raft::RaftNodeError::UnknownGroup(_) => Status::not_found(e.to_string()),
            kho_raft::RaftNodeError::BadMessage(_) => Status::invalid_argument(e.to_string()),
            kho_raft::RaftNodeError::Forbidden(_) => Status::permission_denied(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        Ok(Response::new(RaftMessage { group_id: group, kind: RaftMessageKind::Snapshot as i32, payload, from: self.node.id }))
    }
}
