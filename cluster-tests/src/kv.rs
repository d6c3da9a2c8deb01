//! Reading the key-value view with retries: the reads that checks are built from.

use futures::StreamExt;
use kho_proto::v1::data_client::DataClient;
use kho_proto::v1::{BatchGetItem, BatchGetRequest, GetRequest, KeyValue, Row, ScanRequest, ScanRowsRequest};
use tonic::transport::Channel;
use tonic::Status;

use crate::retry::{retry_call, RetryPolicy};

/// Keys per BatchGet when reading many keys back (below the server's batch_ops_max).
pub const READ_BATCH_KEYS: usize = 500;

/// Where key-value requests go: tenant, table and family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTarget {
    pub tenant: String,
    pub table: String,
    pub family: String,
}

impl KvTarget {
    pub fn new(tenant: &str, table: &str, family: &str) -> KvTarget {
        KvTarget { tenant: tenant.to_string(), table: table.to_string(), family: family.to_string() }
    }
}

/// Get with retries; `Ok(None)` when the key is not found.
pub async fn get(client: &DataClient<Channel>, target: &KvTarget, key: &[u8], policy: &RetryPolicy) -> Result<Option<Vec<u8>>, Status> {
    let req = GetRequest {
        tenant: target.tenant.clone(),
        table: target.table.clone(),
        key: key.to_vec(),
        family: target.family.clone(),
        ..Default::default()
    };
    let resp = retry_call(policy, |_| {
        let mut client = client.clone();
        let req = req.clone();
        async move { client.get(req).await }
    })
    .await?;
    Ok(resp.found.then_some(resp.value))
}

/// Reads `keys` with BatchGets of `READ_BATCH_KEYS`, each retried; one item per key, in
/// order. Checks that the server answered one item per key with the key echoed.
pub async fn batch_get_all(
    client: &DataClient<Channel>,
    target: &KvTarget,
    keys: &[Vec<u8>],
    policy: &RetryPolicy,
) -> Result<Vec<BatchGetItem>, Status> {
    let mut items = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(READ_BATCH_KEYS) {
        let req = BatchGetRequest {
            tenant: target.tenant.clone(),
            table: target.table.clone(),
            keys: chunk.to_vec(),
            family: target.family.clone(),
            ..Default::default()
        };
        let resp = retry_call(policy, |_| {
            let mut client = client.clone();
            let req = req.clone();
            async move { client.batch_get(req).await }
        })
        .await?;
        assert_eq!(resp.items.len(), chunk.len(), "BatchGet answered {} items for {} keys", resp.items.len(), chunk.len());
        for (item, key) in resp.items.iter().zip(chunk) {
            assert_eq!(&item.key, key, "BatchGet items are not in request order");
        }
        items.extend(resp.items);
    }
    Ok(items)
}

/// One Scan (not retried: a stream that fails midway is reported), all chunks collected.
pub async fn scan(client: &DataClient<Channel>, req: ScanRequest) -> Result<Vec<KeyValue>, Status> {
    let mut client = client.clone();
    let mut stream = client.scan(req).await?.into_inner();
    let mut kvs = Vec::new();
    while let Some(chunk) = stream.next().await {
        kvs.extend(chunk?.kvs);
    }
    Ok(kvs)
}

/// Scan with retries of the whole scan on retryable errors.
pub async fn scan_retry(client: &DataClient<Channel>, req: ScanRequest, policy: &RetryPolicy) -> Result<Vec<KeyValue>, Status> {
    retry_call(policy, |_| {
        let req = req.clone();
        async move { scan(client, req).await.map(tonic::Response::new) }
    })
    .await
}

/// One ScanRows, all chunks collected (retried whole on retryable errors).
pub async fn scan_rows(client: &DataClient<Channel>, req: ScanRowsRequest) -> Result<Vec<Row>, Status> {
    retry_call(&RetryPolicy::STEADY, |_| {
        let mut client = client.clone();
        let req = req.clone();
        async move {
            let mut stream = client.scan_rows(req).await?.into_inner();
            let mut rows = Vec::new();
            while let Some(chunk) = stream.next().await {
                rows.extend(chunk?.rows);
            }
            Ok(tonic::Response::new(rows))
        }
    })
    .await
}
