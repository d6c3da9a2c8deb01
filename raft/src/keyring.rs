//! Per-tenant keys in memory, loaded from their wrapped records in the catalog, and the
//! records themselves (docs/FORMATS.md, system tables 4 `tenant_keys` and 5 `key_jobs`).
//!
//! Version 0 of a tenant is its row-key hashing key; versions 1.. are value keys. The
//! highest version that is not destroyed is current; older ones are retired and still
//! open the values they sealed.

use std::collections::BTreeMap;
use std::sync::Arc;

use kho_engine::crypto::{self, DataKey, MasterKey, RowHasher, MASTER_KEY_ID_BYTES};
use kho_engine::keys::{self, TenantId, SYSTEM_TENANT};
use kho_engine::value::{self, Stored};

use crate::codec::{DecodeError, Reader, Writer};

pub const SYS_TENANT_KEYS: keys::TableId = 4;
pub const SYS_KEY_JOBS: keys::TableId = 5;

/// The version number of a tenant's row-key hashing key.
pub const HASH_KEY_VERSION: u32 = 0;
/// Format version of a key record and of a job record.
const RECORD_V1: u8 = 1;

/// The lifecycle state of a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Current = 1,
    Retired = 2,
    Destroyed = 3,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Current => "current",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// A stored key record: `1 | state u8 | created revision u64 | master key id (8) | wrapped (60)`;
/// a destroyed key has no wrapped bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub state: KeyState,
    pub created_revision: u64,
    pub master_key_id: [u8; MASTER_KEY_ID_BYTES],
    pub wrapped: Vec<u8>,
}

impl KeyRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RECORD_V1);
        w.u8(self.state as u8);
        w.u64(self.created_revision);
        w.buf.extend_from_slice(&self.master_key_id);
        w.buf.extend_from_slice(&self.wrapped);
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyRecord, DecodeError> {
        let mut r = Reader::new(bytes, "key record");
        let bad = |reason: String| DecodeError { what: "key record", reason };
        if r.u8()? != RECORD_V1 {
            return Err(bad("unknown record version".into()));
        }
        let state = match r.u8()? {
            1 => KeyState::Current,
            2 => KeyState::Retired,
            3 => KeyState::Destroyed,
            s => return Err(bad(format!("unknown key state {s}"))),
        };
        let created_revision = r.u64()?;
        let mut master_key_id = [0u8; MASTER_KEY_ID_BYTES];
        for b in &mut master_key_id {
            *b = r.u8()?;
        }
        let wrapped = r.rest().to_vec();
        let expected = if state == KeyState::Destroyed { 0 } else { crypto::WRAPPED_KEY_BYTES };
        if wrapped.len() != expected {
            return Err(bad(format!("{} wrapped key bytes, expected {expected}", wrapped.len())));
        }
        Ok(KeyRecord { state, created_revision, master_key_id, wrapped })
    }
}

/// The associated data of a wrapped tenant key: binds it to its tenant and version.
pub fn wrap_aad(tenant: &str, version: u32) -> Vec<u8> {
    let mut aad = b"kho tenant key v1\0".to_vec();
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// A fresh random key wrapped for `tenant`'s `version` under `master`.
pub fn new_wrapped_key(master: &MasterKey, tenant: &str, version: u32) -> Vec<u8> {
    master.wrap(&wrap_aad(tenant, version), &crypto::random_key())
}

pub fn key_record_key(tenant: TenantId, version: u32) -> Vec<u8> {
    let mut row = tenant.to_be_bytes().to_vec();
    row.extend_from_slice(&version.to_be_bytes());
    keys::data_key(SYSTEM_TENANT, SYS_TENANT_KEYS, &row, 0, b"")
}

pub fn job_key(tenant: TenantId) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_KEY_JOBS, &tenant.to_be_bytes(), 0, b"")
}

/// One version of a tenant key, unwrapped.
#[derive(Debug, Clone)]
pub struct KeyVersion {
    pub state: KeyState,
    pub created_revision: u64,
    /// None once destroyed.
    pub key: Option<DataKey>,
}

/// A tenant's keys, unwrapped.
#[derive(Debug, Clone, Default)]
pub struct TenantKeys {
    pub tenant_id: TenantId,
    /// The tenant was created encrypted: a plaintext value in it is corruption (downgrade).
    pub created_encrypted: bool,
    pub hasher: Option<RowHasher>,
    /// Value key versions (>= 1).
    pub versions: BTreeMap<u32, KeyVersion>,
}

impl TenantKeys {
    /// The current value key, if the tenant is encrypted.
    pub fn current(&self) -> Option<(u32, &DataKey)> {
        self.versions.iter().rev().find(|(_, v)| v.state == KeyState::Current).and_then(|(n, v)| v.key.as_ref().map(|k| (*n, k)))
    }

    pub fn latest_version(&self) -> u32 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    /// Opens a stored value of this tenant (`key` is its data key).
    pub fn open(&self, key: &[u8], stored: &[u8]) -> kho_engine::Result<Vec<u8>> {
        open_value(Some(self), key, stored)
    }
}

/// Opens a stored value of a user tenant: a plaintext value is verified by its checksum, an
/// encrypted one opened with the version of `keys` its header names.
pub fn open_value(keys: Option<&TenantKeys>, key: &[u8], stored: &[u8]) -> kho_engine::Result<Vec<u8>> {
    let corrupt = |what: String| kho_engine::Error::Corruption { what };
    match value::inspect(key, stored)? {
        Stored::Plain(payload) => {
            if keys.is_some_and(|k| k.created_encrypted) {
                return Err(corrupt(format!(
                    "plaintext value in a tenant created encrypted (key {})",
                    crypto::hex(&key[..key.len().min(64)])
                )));
            }
            Ok(payload.to_vec())
        }
        Stored::Sealed { key_version } => {
            let Some(keys) = keys else {
                return Err(corrupt("encrypted value in a tenant without keys".into()));
            };
            match keys.versions.get(&key_version) {
                None => Err(corrupt(format!("value sealed under unknown key version {key_version}"))),
                Some(KeyVersion { key: None, .. }) => {
                    Err(corrupt(format!("value sealed under key version {key_version}, which was destroyed")))
                }
                Some(KeyVersion { key: Some(k), .. }) => value::open_value(key, stored, k),
            }
        }
    }
}

/// Unwraps a tenant's key records (version → record) into [`TenantKeys`].
pub fn unwrap_tenant(
    master: Option<&MasterKey>,
    tenant: &str,
    tenant_id: TenantId,
    created_encrypted: bool,
    records: &BTreeMap<u32, KeyRecord>,
) -> Result<TenantKeys, String> {
    let mut out = TenantKeys { tenant_id, created_encrypted, ..Default::default() };
    for (&version, rec) in records {
        let key = if rec.state == KeyState::Destroyed {
            None
        } else {
            let Some(master) = master else {
                return Err(format!(
                    "tenant `{tenant}` is encrypted (master key id {}), but this node has no master key; \
                     configure [encryption] master_key_file or master_key_command",
                    crypto::hex(&rec.master_key_id)
                ));
            };
            if rec.master_key_id != master.id() {
                return Err(format!(
                    "tenant `{tenant}` key version {version} is wrapped under master key id {}, \
                     but this node's master key has id {}: every node of a cluster needs the same master key",
                    crypto::hex(&rec.master_key_id),
                    master.id_hex()
                ));
            }
            Some(
                master
                    .unwrap(&wrap_aad(tenant, version), &rec.wrapped)
                    .map_err(|e| format!("tenant `{tenant}` key version {version}: {e}"))?,
            )
        };
        if version == HASH_KEY_VERSION {
            out.hasher = key.as_ref().map(|k| RowHasher::new(k));
        } else {
            out.versions.insert(
                version,
                KeyVersion { state: rec.state, created_revision: rec.created_revision, key: key.as_ref().map(|k| DataKey::new(k)) },
            );
        }
    }
    Ok(out)
}

/// A re-encryption of one tenant: `1 | target u32 | done u8 | visited u64 | rewritten u64 |
/// cursor_len u32 | cursor`. The cursor is the first data key not yet visited (empty: the
/// tenant's first key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    pub target: u32,
    pub done: bool,
    pub visited: u64,
    pub rewritten: u64,
    pub cursor: Vec<u8>,
}

impl Job {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RECORD_V1);
        w.u32(self.target);
        w.u8(u8::from(self.done));
        w.u64(self.visited);
        w.u64(self.rewritten);
        w.bytes(&self.cursor);
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Job, DecodeError> {
        let mut r = Reader::new(bytes, "key job record");
        if r.u8()? != RECORD_V1 {
            return Err(DecodeError { what: "key job record", reason: "unknown record version".into() });
        }
        let job = Job { target: r.u32()?, done: r.u8()? != 0, visited: r.u64()?, rewritten: r.u64()?, cursor: r.bytes()?.to_vec() };
        r.finish()?;
        Ok(job)
    }
}

/// The keys of every tenant, shared with readers.
pub type TenantKeysMap = BTreeMap<TenantId, Arc<TenantKeys>>;

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn master(b: u8) -> MasterKey {
        MasterKey::new(Zeroizing::new([b; 32]))
    }

    fn record(m: &MasterKey, tenant: &str, version: u32, state: KeyState) -> KeyRecord {
        KeyRecord { state, created_revision: 7, master_key_id: m.id(), wrapped: new_wrapped_key(m, tenant, version) }
    }

    #[test]
    fn records_round_trip() {
        let m = master(1);
        let r = record(&m, "a", 1, KeyState::Current);
        assert_eq!(KeyRecord::decode(&r.encode()).unwrap(), r);
        let d = KeyRecord { state: KeyState::Destroyed, created_revision: 3, master_key_id: m.id(), wrapped: vec![] };
        assert_eq!(KeyRecord::decode(&d.encode()).unwrap(), d);
        let j = Job { target: 2, done: false, visited: 10, rewritten: 4, cursor: b"k".to_vec() };
        assert_eq!(Job::decode(&j.encode()).unwrap(), j);
    }

    #[test]
    fn a_tenant_value_cannot_be_opened_with_another_tenants_key() {
        let m = master(1);
        let load = |name: &str, id: u32| {
            let records = BTreeMap::from([(0, record(&m, name, 0, KeyState::Current)), (1, record(&m, name, 1, KeyState::Current))]);
            unwrap_tenant(Some(&m), name, id, true, &records).unwrap()
        };
        let a = load("bo_cong_an", 1);
        let b = load("bao_hiem", 2);
        let key = keys::data_key(1, 1, b"001085012345", 1, b"name");
        let (v, k) = a.current().unwrap();
        let stored = value::seal_value(&key, b"Nguyen Van An", k, v, [3; 12]);
        assert_eq!(a.open(&key, &stored).unwrap(), b"Nguyen Van An");
        // Same version number, another tenant's key: authentication fails.
        let err = b.open(&key, &stored).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        // Copied under the other tenant's key space: fails too.
        let moved = keys::data_key(2, 1, b"001085012345", 1, b"name");
        assert!(b.open(&moved, &stored).is_err());
        // Row hashes differ per tenant.
        assert_ne!(a.hasher.as_ref().unwrap().hash(1, b"x"), b.hasher.as_ref().unwrap().hash(1, b"x"));
        // A plaintext value planted in a tenant created encrypted is refused.
        assert!(a.open(&key, &value::encode_value(&key, b"planted")).is_err());
    }

    #[test]
    fn unwrap_names_a_missing_or_wrong_master_key() {
        let m = master(1);
        let records = BTreeMap::from([(1, record(&m, "t", 1, KeyState::Current))]);
        let e = unwrap_tenant(None, "t", 1, true, &records).unwrap_err();
        assert!(e.contains("has no master key"), "{e}");
        let e = unwrap_tenant(Some(&master(2)), "t", 1, true, &records).unwrap_err();
        assert!(e.contains("every node of a cluster needs the same master key"), "{e}");
        // A record moved to another tenant does not unwrap.
        let e = unwrap_tenant(Some(&m), "u", 2, true, &records).unwrap_err();
        assert!(e.contains("does not authenticate"), "{e}");
    }
}
