//! Raft messages between nodes. This crate encodes every message as opaque bytes and
//! hands it to a [`Transport`], which the `rpc` crate implements over gRPC channels per
//! peer node (small and large messages on separate connections), shared by all groups.
//! Every message carries its group id.
//!
//! Wire encoding (docs/FORMATS.md, "Raft messages"): a request payload is the postcard
//! encoding of openraft's request; a reply payload is one status byte (0 = ok, followed by
//! the postcard-encoded response; 1 = error, followed by a UTF-8 message).

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::snapshot::{SnapshotData, SnapshotView};
use crate::{GroupId, NodeId, SnapshotMeta, TypeConfig, Vote};

/// What a request/response Raft message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    AppendEntries,
    Vote,
    /// A follower asks the leader for a read index (follower reads, [`crate::read_batch`]).
    ReadIndex,
    /// A node hands a command to the group's leader ([`crate::RaftNode::propose_anywhere`]):
    /// the payload is the encoded command, the reply the encoded response.
    Propose,
    /// A node asks a data shard's leader to add or remove a replica
    /// ([`crate::RaftNode::change_replicas`]).
    ChangeReplicas,
    /// A node asks a data shard's leader to split it ([`crate::RaftNode::split_shard`]).
    SplitShard,
    /// A node asks a data shard's leader to merge it with its right-hand neighbour
    /// ([`crate::RaftNode::merge_shard`]).
    MergeShard,
    /// A node asks whether this node's replica of a group has applied an index, waiting a
    /// bounded time ([`crate::shard_merge`]): the payload is `(index, wait ms)`, the reply
    /// the applied index.
    WaitApplied,
    /// A Pre-Vote request: answered like a vote, persisting nothing (openraft's
    /// `enable_pre_vote`), so a node that was cut off does not raise its term and depose a
    /// healthy leader when it is back.
    PreVote,
    /// A shard's leader asks a replica to sleep ([`crate::sleep`]): the payload is the
    /// leader, its term and last log index; the reply whether the replica sleeps.
    Sleep,
    /// The node liveness probe ([`crate::sleep`]): empty payload (any group id); the reply
    /// is the answering process's boot id.
    Probe,
}

/// Why a message did not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("node {target} at {addr} is unreachable: {reason}")]
    Unreachable { target: NodeId, addr: String, reason: String },
    #[error("node {target} did not answer within {timeout_ms} ms")]
    Timeout { target: NodeId, timeout_ms: u64 },
    #[error("node {target} answered with an error: {reason}")]
    Remote { target: NodeId, reason: String },
}

/// Sends Raft messages to other nodes. Implemented by the `rpc` crate.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        addr: String,
        group: GroupId,
        kind: MessageKind,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>>;

    /// Streams a snapshot: `header` first, then the file's bytes in bounded chunks.
    fn send_snapshot(
        &self,
        target: NodeId,
        addr: String,
        group: GroupId,
        header: Bytes,
        chunks: BoxStream<'static, io::Result<Bytes>>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>>;
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(v).expect("encoding a Raft message into a Vec cannot fail"))
}

/// How many of `entries`, from the first, fit in `bytes_max` bytes encoded (at least one).
fn entries_within(entries: &[crate::Entry], bytes_max: usize) -> usize {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let n = postcard::serialize_with_flavor::<_, postcard::ser_flavors::Size, usize>(e, postcard::ser_flavors::Size::default())
            .expect("sizing an entry cannot fail");
        total += n;
        if total > bytes_max && i > 0 {
            return i;
        }
    }
    entries.len()
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("undecodable {what}: {e}"))
}

pub(crate) fn encode_reply<T: Serialize>(r: Result<T, String>) -> Bytes {
    match r {
        Ok(v) => {
            let mut out = vec![0u8];
            out = postcard::to_extend(&v, out).expect("encoding a Raft reply into a Vec cannot fail");
            Bytes::from(out)
        }
        Err(msg) => {
            let mut out = vec![1u8];
            out.extend_from_slice(msg.as_bytes());
            Bytes::from(out)
        }
    }
}

pub(crate) fn decode_reply<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, String> {
    match b.split_first() {
        Some((0, rest)) => decode(what, rest),
        Some((1, rest)) => Err(String::from_utf8_lossy(rest).into_owned()),
        _ => Err(format!("malformed {what} reply")),
    }
}

/// The header of a snapshot stream: the leader's vote and the snapshot's meta.
pub(crate) fn encode_snapshot_header(vote: &Vote, meta: &SnapshotMeta) -> Bytes {
    encode(&(vote, meta))
}

pub(crate) fn decode_snapshot_header(b: &[u8]) -> Result<(Vote, SnapshotMeta), String> {
    decode("snapshot header", b)
}

/// Creates a [`PeerClient`] per (group, target node).
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) group: GroupId,
    pub(crate) transport: std::sync::Arc<dyn Transport>,
    pub(crate) rpc_timeout: Duration,
    pub(crate) snapshot_timeout: Duration,
    pub(crate) snapshot_chunk_bytes: usize,
    /// Most bytes of entries one AppendEntries carries ([`crate::RaftSettings::append_bytes_max`]).
    pub(crate) append_bytes_max: usize,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { factory: self.clone(), target, addr: node.addr.clone() }
    }
}

pub struct PeerClient {
    factory: NetworkFactory,
    target: NodeId,
    addr: String,
}

fn to_rpc_error(e: TransportError) -> RPCError<TypeConfig> {
    match e {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::from_string(e.to_string())),
        _ => RPCError::Network(NetworkError::from_string(e.to_string())),
    }
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: MessageKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let f = &self.factory;
        // openraft's hard TTL bounds the call as well; take the smaller.
        let timeout = f.rpc_timeout.min(option.hard_ttl());
        let reply = f.transport.call(self.target, self.addr.clone(), f.group, kind, encode(req), timeout).await.map_err(to_rpc_error)?;
        decode_reply(&format!("{kind:?}"), &reply).map_err(|m| RPCError::Network(NetworkError::from_string(m)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    /// Sends at most [`NetworkFactory::append_bytes_max`] bytes of entries (at least one):
    /// when openraft hands over more (`append_entries_max` entries of large writes can be
    /// hundreds of MiB), only the prefix that fits is sent, and its success is a partial
    /// one, so openraft sends the rest next.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let keep = entries_within(&rpc.entries, self.factory.append_bytes_max);
        if keep == rpc.entries.len() {
            return self.call(MessageKind::AppendEntries, &rpc, &option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        match self.call(MessageKind::AppendEntries, &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(MessageKind::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(MessageKind::PreVote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let f = self.factory.clone();
        let mut cancel = Box::pin(cancel);
        let header = encode_snapshot_header(&vote, &snapshot.meta);
        let chunk_bytes = f.snapshot_chunk_bytes;
        let chunks = match snapshot.snapshot {
            // A received stream: sent as it is on disk (already chunked, compressed, checksummed).
            SnapshotData::Stream(s) => file_slices(tokio::fs::File::from_std(s.file), chunk_bytes),
            // This node's own snapshot: its stream is written from the view as it is sent.
            SnapshotData::View(view) => view_slices(*view, chunk_bytes),
        };
        let send = f.transport.send_snapshot(self.target, self.addr.clone(), f.group, header, chunks, f.snapshot_timeout);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            reply = send => {
                let reply = reply.map_err(|e| match to_rpc_error(e) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    other => StreamingError::Network(NetworkError::from_string(other.to_string())),
                })?;
                decode_reply("snapshot", &reply).map_err(|m| StreamingError::Network(NetworkError::from_string(m)))
            }
        }
    }
}

/// The bytes of a snapshot stream file in slices of `slice_bytes`.
fn file_slices(file: tokio::fs::File, slice_bytes: usize) -> BoxStream<'static, io::Result<Bytes>> {
    futures::stream::unfold(Some(file), move |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; slice_bytes];
        let mut filled = 0;
        while filled < slice_bytes {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(e), None)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(Bytes::from(buf)), Some(file)))
    })
    .boxed()
}

/// Slices of a snapshot stream in flight between the thread that writes it from a view and
/// the transport, count: with the writer's own chunk, memory stays within a few chunks
/// however large the group is.
const VIEW_SLICES_IN_FLIGHT_MAX: usize = 2;

/// The snapshot stream of a view, in slices of `slice_bytes`, written on a blocking thread
/// as the transport takes them. Dropping the stream (a cancelled or failed transfer) stops
/// the writer and releases the view. A write error is the last item.
fn view_slices(view: SnapshotView, slice_bytes: usize) -> BoxStream<'static, io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(VIEW_SLICES_IN_FLIGHT_MAX);
    tokio::task::spawn_blocking(move || {
        let out = SliceSender { tx: tx.clone(), buf: Vec::with_capacity(slice_bytes), slice_bytes };
        if let Err(e) = view.write_stream(out) {
            // Nobody to tell when the receiver is gone.
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// A `Write` that cuts what is written into slices of `slice_bytes` and sends each into a
/// bounded channel, waiting while it is full.
struct SliceSender {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    slice_bytes: usize,
}

impl SliceSender {
    fn send(&mut self) -> io::Result<()> {
        let slice = std::mem::replace(&mut self.buf, Vec::with_capacity(self.slice_bytes));
        self.tx
            .blocking_send(Ok(Bytes::from(slice)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot transfer ended before its stream was written"))
    }
}

impl std::io::Write for SliceSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.slice_bytes - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.slice_bytes {
            self.send()?;
        }
        Ok(n)
    }

    /// Sends what is buffered: the snapshot writer flushes once, at the end of the stream.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::{CellOp, CellWrite, Command, Entry};

    fn write_of(index: u64, bytes: usize) -> Entry {
        let cmd = Command::Write(CellWrite {
            shard: 1,
            epoch: 1,
            tenant: 1,
            table: 2,
            ops: vec![CellOp::Put { key: b"r".to_vec(), stored: vec![7; bytes] }],
            condition: None,
        });
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 };
        Entry { log_id: openraft::LogId::new(leader, index), payload: EntryPayload::Normal(cmd) }
    }

    #[test]
    fn an_append_carries_the_entries_that_fit_and_always_one() {
        let entries: Vec<Entry> = (1..=10).map(|i| write_of(i, 100_000)).collect();
        assert_eq!(entries_within(&entries, 350_000), 3);
        assert_eq!(entries_within(&entries, 10 << 20), 10);
        // A single entry above the bound still goes alone (the receiver's limit decides).
        assert_eq!(entries_within(&entries, 1_000), 1);
        assert_eq!(entries_within(&[], 1_000), 0);
    }
}
