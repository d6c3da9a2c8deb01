//! openraft's storage conformance suite against Kho's RocksDB log store and state machine.

use kho_engine::crypto::MasterKey;
use kho_engine::{Engine, EngineOptions};
use kho_raft::log_store::{LogStore, WalSyncer};
use kho_raft::state_machine::StateMachine;
use kho_raft::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

/// Builds stores with or without a master key (sealed log entries and snapshots).
struct RocksBuilder {
    master_key: Option<u8>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let err = |e: &dyn std::fmt::Display| StorageError::read(TypeConfig::err_from_string(e.to_string()));
        let dir = TempDir::new().map_err(|e| err(&e))?;
        let engine = Engine::open(&dir.path().join("db"), &EngineOptions::default()).map_err(|e| err(&e))?;
        let master = self.master_key.map(|b| std::sync::Arc::new(MasterKey::new(zeroize::Zeroizing::new([b; 32]))));
        let cipher = master.as_ref().map(|m| m.log_cipher());
        let log = LogStore::new(1, engine.clone(), WalSyncer::start(engine.clone()), cipher);
        let sm = StateMachine::open(1, engine, dir.path().join("snapshots"), 64 << 10, master).map_err(|e| err(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb_store() {
    TypeConfig::run(async {
        Suite::test_all(RocksBuilder { master_key: None }).await.expect("openraft storage suite");
    });
}

#[test]
fn openraft_storage_suite_passes_with_a_master_key() {
    TypeConfig::run(async {
        Suite::test_all(RocksBuilder { master_key: Some(7) }).await.expect("openraft storage suite, encrypted");
    });
}
