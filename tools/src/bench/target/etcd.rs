//! The etcd target: etcd's v3 gRPC KV service (`/etcdserverpb.KV/Put` and `Range`), with
//! linearizable ranges (`serializable = false`). A scan is a Range from the start key to
//! the end of the key space (`range_end = "\0"`) with a limit. Keys are written as they are,
//! without a prefix: benchmark a dedicated etcd.

use async_trait::async_trait;
use tonic::transport::Channel;

use super::{request, with_deadline, OpResult, Target, RESPONSE_BYTES_MAX};

/// Code generated from `proto/etcd/rpc.proto` (a minimal copy of etcd's KV API).
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::{PutRequest, RangeRequest};

/// `range_end` meaning "every key from `key` on".
const RANGE_END_ALL: &[u8] = b"\0";

/// One worker's etcd client.
pub struct EtcdTarget {
    client: KvClient<Channel>,
}

impl EtcdTarget {
    pub fn new(channel: Channel) -> EtcdTarget {
        EtcdTarget { client: KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX) }
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        let req = PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() };
        let mut client = self.client.clone();
        with_deadline(client.put(request(req))).await.map(|_| ())
    }

    async fn range(&self, req: RangeRequest) -> OpResult<pb::RangeResponse> {
        let mut client = self.client.clone();
        with_deadline(client.range(request(req))).await.map(|r| r.into_inner())
    }
}

#[async_trait]
impl Target for EtcdTarget {
    async fn insert(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        self.put(key, value).await
    }

    async fn read(&self, key: &[u8]) -> OpResult<bool> {
        let req = RangeRequest { key: key.to_vec(), serializable: false, ..Default::default() };
        Ok(!self.range(req).await?.kvs.is_empty())
    }

    async fn update(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        self.put(key, value).await
    }

    async fn scan(&self, start_key: &[u8], count: usize) -> OpResult<usize> {
        let req = RangeRequest {
            key: start_key.to_vec(),
            range_end: RANGE_END_ALL.to_vec(),
            limit: i64::try_from(count).unwrap_or(i64::MAX),
            serializable: false,
            ..Default::default()
        };
        Ok(self.range(req).await?.kvs.len())
    }
}
