//! The RocksDB target: an embedded RocksDB opened with Kho's own engine (`kho-engine`, the
//! same options and column families as a node), on the disk `--data-dir` is on. Every
//! insert and update is one synced write (`WriteOptions::sync`), issued concurrently by
//! the workers, so RocksDB's write group commit batches them as Kho's WAL syncer batches
//! Raft appends: the physical reference for durable writes on this machine. Values carry
//! Kho's value header (checksum), as on a node. Reads and scans use the Data column family.

use async_trait::async_trait;
use kho_engine::{Cf, Engine, EngineOptions};

use super::{OpError, OpResult, Target};

/// The embedded database, shared by every worker.
pub struct RocksTarget {
    engine: Engine,
}

impl RocksTarget {
    pub fn open(dir: &std::path::Path) -> anyhow::Result<RocksTarget> {
        let engine = Engine::open(dir, &EngineOptions::default())
            .map_err(|e| anyhow::anyhow!("--data-dir: cannot open RocksDB in {}: {e}", dir.display()))?;
        Ok(RocksTarget { engine })
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        let engine = self.engine.clone();
        let mut batch = engine.batch();
        batch.put_value(key, value);
        blocking(move || engine.write(batch, true)).await
    }
}

/// Runs a RocksDB call on the blocking pool; an engine error is reported as `INTERNAL`.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> kho_engine::Result<T> + Send + 'static) -> OpResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpError { status: "INTERNAL", message: e.to_string() }),
        Err(e) => Err(OpError { status: "INTERNAL", message: format!("blocking task failed: {e}") }),
    }
}

#[async_trait]
impl Target for RocksTarget {
    async fn insert(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        self.put(key, value).await
    }

    async fn read(&self, key: &[u8]) -> OpResult<bool> {
        let engine = self.engine.clone();
        let key = key.to_vec();
        blocking(move || engine.get_value(&key).map(|v| v.is_some())).await
    }

    async fn update(&self, key: &[u8], value: &[u8]) -> OpResult<()> {
        self.put(key, value).await
    }

    async fn scan(&self, start_key: &[u8], count: usize) -> OpResult<usize> {
        let engine = self.engine.clone();
        let start = start_key.to_vec();
        blocking(move || engine.scan(Cf::Data, &start, None, count).map(|kvs| kvs.len())).await
    }

    fn finish(&self) {
        let _ = self.engine.prepare_for_exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_read_back_and_scanned_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = RocksTarget::open(dir.path()).unwrap();
        t.insert(b"user2", b"b").await.unwrap();
        t.insert(b"user1", b"a").await.unwrap();
        t.update(b"user1", b"c").await.unwrap();
        assert!(t.read(b"user1").await.unwrap());
        assert!(!t.read(b"user9").await.unwrap());
        assert_eq!(t.scan(b"user", 10).await.unwrap(), 2);
        assert_eq!(t.scan(b"user2", 10).await.unwrap(), 1);
        assert!(t.read_modify_write(b"user2", b"d").await.unwrap());
        t.finish();
    }
}
