//! The catalog: tenants, tables and their column families, replicated through the log and
//! stored in the data column family under the reserved system tenant (id 0), so that
//! snapshots and checksums cover it like any other data.
//!
//! System tables (tenant 0): table 1 `tenants` (row = tenant name → tenant id u32 BE, then
//! optionally a flags byte: bit 0 = created encrypted), table 2 `tables` (row = tenant id
//! u32 BE ++ table name → table record), table 3 `counters` (row = counter name → u32 BE),
//! tables 4 and 5: tenant keys and re-encryption jobs ([`crate::keyring`]), 6 and 7: the
//! shard map and dropped tables, 8 and 9: grants and tokens ([`crate::access`]), 10: the
//! audit log ([`crate::audit`]). Ids are never
//! reused, so a dropped table's data can never reappear under a new table of the same name.

use std::collections::BTreeMap;

use std::sync::Arc;

use kho_engine::crypto::MasterKey;
use kho_engine::keys::{self, FamilyId, TableId, TenantId, SYSTEM_TENANT};

use crate::shard::{ShardDesc, ShardId, ShardMap};

use crate::codec::{DecodeError, Reader, Writer};
use crate::keyring::{self, Job, KeyRecord, TenantKeys, TenantKeysMap};

pub const SYS_TENANTS: TableId = 1;
pub const SYS_TABLES: TableId = 2;
pub const SYS_COUNTERS: TableId = 3;
pub const NEXT_TENANT_ID: &[u8] = b"next_tenant_id";
pub const NEXT_TABLE_ID: &[u8] = b"next_table_id";
/// The shard map: row = shard id u64 BE, value = the [`ShardDesc`] record.
pub const SYS_SHARDS: TableId = 6;
/// Dropped tables: row = tenant id u32 BE ++ table id u32 BE, empty value. Every shard of
/// the tenant clears the table's cells (`ClearTable`) once its leader sees the row.
pub const SYS_DROPPED_TABLES: TableId = 7;
pub const NEXT_SHARD_ID: &[u8] = b"next_shard_id";

/// Most column families a table may declare.
pub const FAMILIES_PER_TABLE_MAX: usize = 256;
/// Longest tenant, table or family name, bytes.
pub const NAME_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub tenant: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub id: TableId,
    /// Families in declaration order; a family's id is its position + 1.
    pub families: Vec<String>,
    /// Row keys are stored as keyed hashes ([`kho_engine::crypto::RowHasher`]).
    pub hashed_row_keys: bool,
}

impl TableMeta {
    /// The family's id; an empty name means the first family.
    pub fn family_id(&self, name: &str) -> Option<FamilyId> {
        if name.is_empty() {
            return Some(1);
        }
        self.families.iter().position(|f| f == name).map(|i| (i + 1) as FamilyId)
    }

    pub fn family_name(&self, id: FamilyId) -> Option<&str> {
        self.families.get((id as usize).checked_sub(1)?).map(String::as_str)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.id);
        w.bytes(self.name.as_bytes());
        w.u32(self.families.len() as u32);
        for f in &self.families {
            w.bytes(f.as_bytes());
        }
        // Flags, bit 0: hashed row keys. Absent in records written before it existed.
        if self.hashed_row_keys {
            w.u8(1);
        }
        w.buf
    }

    pub fn decode(tenant: &str, tenant_id: TenantId, bytes: &[u8]) -> Result<TableMeta, DecodeError> {
        let mut r = Reader::new(bytes, "table record");
        let id = r.u32()?;
        let name = utf8(r.bytes()?)?;
        let n = r.u32()?;
        let mut families = Vec::new();
        for _ in 0..n {
            families.push(utf8(r.bytes()?)?);
        }
        let flags = if r.finish().is_ok() { 0 } else { r.u8()? };
        r.finish()?;
        if flags & !1 != 0 {
            return Err(DecodeError { what: "table record", reason: format!("unknown flags 0x{flags:02x}") });
        }
        Ok(TableMeta { tenant: tenant.to_string(), tenant_id, name, id, families, hashed_row_keys: flags & 1 != 0 })
    }
}

fn utf8(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError { what: "catalog", reason: "name is not UTF-8".into() })
}

/// The in-memory catalog, rebuilt from storage at start and after a snapshot install.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tenants: BTreeMap<String, TenantId>,
    /// (tenant name, table name) → table.
    pub tables: BTreeMap<(String, String), TableMeta>,
    /// Keys of the tenants that have any (encrypted tenants).
    pub keys: TenantKeysMap,
    /// Re-encryption jobs by tenant, finished ones included.
    pub jobs: BTreeMap<TenantId, Job>,
    /// (tenant id, table id) of every table: a resolved write to any other is refused.
    live_tables: std::collections::BTreeSet<(TenantId, TableId)>,
    /// Every data shard (the meta group's shard map).
    pub shards: ShardMap,
    /// (tenant id, table id) of every dropped table, whose cells the shards clear.
    pub dropped_tables: std::collections::BTreeSet<(TenantId, TableId)>,
    /// Grants and tokens ([`crate::access`]).
    pub access: crate::access::Access,
    /// The audit log's last record ([`crate::audit`]).
    pub audit_head: crate::audit::Head,
}

impl Catalog {
    pub fn table(&self, tenant: &str, table: &str) -> Result<&TableMeta, crate::AppError> {
        if !self.tenants.contains_key(tenant) {
            return Err(crate::AppError::not_found(format!("tenant `{tenant}` does not exist")));
        }
        self.tables
            .get(&(tenant.to_string(), table.to_string()))
            .ok_or_else(|| crate::AppError::not_found(format!("table `{tenant}/{table}` does not exist")))
    }

    /// Adds a table (created, or loaded).
    pub fn insert_table(&mut self, meta: TableMeta) {
        self.live_tables.insert((meta.tenant_id, meta.id));
        self.tables.insert((meta.tenant.clone(), meta.name.clone()), meta);
    }

    /// Removes a table (dropped).
    pub fn remove_table(&mut self, tenant: &str, name: &str) -> Option<TableMeta> {
        let meta = self.tables.remove(&(tenant.to_string(), name.to_string()))?;
        self.live_tables.remove(&(meta.tenant_id, meta.id));
        Some(meta)
    }

    /// Whether the table with these ids exists (it was created and not dropped).
    pub fn is_live(&self, tenant: TenantId, table: TableId) -> bool {
        self.live_tables.contains(&(tenant, table))
    }

    pub fn tenant_name(&self, id: TenantId) -> Option<&str> {
        self.tenants.iter().find(|(_, i)| **i == id).map(|(n, _)| n.as_str())
    }

    /// The keys of a tenant, if it is encrypted (or was).
    pub fn tenant_keys(&self, id: TenantId) -> Option<Arc<TenantKeys>> {
        self.keys.get(&id).cloned()
    }

    /// Loads the catalog from the system tables of the data column family, unwrapping the
    /// tenant keys with `master`. A tenant key that cannot be unwrapped is an error that
    /// names the tenant and the master key ids: the node cannot serve without it.
    pub fn load(engine: &kho_engine::Engine, master: Option<&MasterKey>) -> Result<Catalog, kho_engine::Error> {
        let mut cat = Catalog::default();
        let mut created_encrypted = BTreeMap::new();
        let (start, end) = keys::row_range(SYSTEM_TENANT, SYS_TENANTS, b"", None, b"");
        for (k, v) in engine.scan_values(&start, &end, usize::MAX)? {
            let dk = keys::decode_data_key(&k)?;
            let name = String::from_utf8(dk.row).map_err(|_| corrupt("tenant name is not UTF-8"))?;
            let (id, flags) = decode_tenant_record(&v).map_err(|e| corrupt(&e))?;
            created_encrypted.insert(id, flags & 1 != 0);
            cat.tenants.insert(name, id);
        }
        let by_id: BTreeMap<TenantId, String> = cat.tenants.iter().map(|(n, i)| (*i, n.clone())).collect();
        let (start, end) = keys::row_range(SYSTEM_TENANT, SYS_TABLES, b"", None, b"");
        for (k, v) in engine.scan_values(&start, &end, usize::MAX)? {
            let dk = keys::decode_data_key(&k)?;
            if dk.row.len() < 4 {
                return Err(corrupt("table row key shorter than 4 bytes"));
            }
            let tenant_id = u32::from_be_bytes(dk.row[..4].try_into().expect("4 bytes"));
            let tenant = by_id.get(&tenant_id).ok_or_else(|| corrupt("table of an unknown tenant id"))?;
            let meta = TableMeta::decode(tenant, tenant_id, &v).map_err(|e| corrupt(&e.to_string()))?;
            cat.insert_table(meta);
        }
        let mut records: BTreeMap<TenantId, BTreeMap<u32, KeyRecord>> = BTreeMap::new();
        let (start, end) = keys::row_range(SYSTEM_TENANT, keyring::SYS_TENANT_KEYS, b"", None, b"");
        for (k, v) in engine.scan_values(&start, &end, usize::MAX)? {
            let dk = keys::decode_data_key(&k)?;
            let (Some(t), Some(ver)) = (dk.row.get(..4), dk.row.get(4..8)) else {
                return Err(corrupt("key record row is not tenant id ++ version"));
            };
            let tenant_id = u32::from_be_bytes(t.try_into().expect("4 bytes"));
            let version = u32::from_be_bytes(ver.try_into().expect("4 bytes"));
            let rec = KeyRecord::decode(&v).map_err(|e| corrupt(&e.to_string()))?;
            records.entry(tenant_id).or_default().insert(version, rec);
        }
        for (tenant_id, recs) in records {
            let tenant = by_id.get(&tenant_id).ok_or_else(|| corrupt("key of an unknown tenant id"))?;
            let encrypted = created_encrypted.get(&tenant_id).copied().unwrap_or(false);
            let keys = keyring::unwrap_tenant(master, tenant, tenant_id, encrypted, &recs)
                .map_err(|what| kho_engine::Error::Corruption { what })?;
            cat.keys.insert(tenant_id, Arc::new(keys));
        }
        let (start, end) = keys::row_range(SYSTEM_TENANT, keyring::SYS_KEY_JOBS, b"", None, b"");
        for (k, v) in engine.scan_values(&start, &end, usize::MAX)? {
            let dk = keys::decode_data_key(&k)?;
            let id = u32::from_be_bytes(dk.row.as_slice().try_into().map_err(|_| corrupt("job row is not a tenant id"))?);
            cat.jobs.insert(id, Job::decode(&v).map_err(|e| corrupt(&e.to_string()))?);
        }
        let mut descs = Vec::new();
        let (start, end) = keys::row_range(SYSTEM_TENANT, SYS_SHARDS, b"", None, b"");
        for (_, v) in engine.scan_values(&start, &end, usize::MAX)? {
            descs.push(ShardDesc::decode(&v).map_err(|e| corrupt(&e.to_string()))?);
        }
        cat.shards = ShardMap::from_descs(descs).map_err(|e| corrupt(&e.to_string()))?;
        let (start, end) = keys::row_range(SYSTEM_TENANT, SYS_DROPPED_TABLES, b"", None, b"");
        for (k, _) in engine.scan_values(&start, &end, usize::MAX)? {
            let dk = keys::decode_data_key(&k)?;
            let (Some(t), Some(x)) = (dk.row.get(..4), dk.row.get(4..8)) else {
                return Err(corrupt("dropped table row is not tenant id ++ table id"));
            };
            cat.dropped_tables
                .insert((u32::from_be_bytes(t.try_into().expect("4 bytes")), u32::from_be_bytes(x.try_into().expect("4 bytes"))));
        }
        if let Some(v) = engine.get_value(&counter_key(crate::audit::AUDIT_HEAD))? {
            cat.audit_head = crate::audit::Head::decode(&v).map_err(|e| corrupt(&e))?;
        }
        let (start, end) = keys::row_range(SYSTEM_TENANT, crate::access::SYS_GRANTS, b"", None, b"");
        for (_, v) in engine.scan_values(&start, &end, usize::MAX)? {
            cat.access.insert_grant(crate::access::Grant::decode(&v).map_err(|e| corrupt(&e))?);
        }
        let (start, end) = keys::row_range(SYSTEM_TENANT, crate::access::SYS_TOKENS, b"", None, b"");
        for (_, v) in engine.scan_values(&start, &end, usize::MAX)? {
            let t = crate::access::Token::decode(&v).map_err(|e| corrupt(&e))?;
            cat.access.tokens.insert(t.id.clone(), t);
        }
        let (start, end) = keys::row_range(SYSTEM_TENANT, crate::access::SYS_SESSIONS, b"", None, b"");
        for (_, v) in engine.scan_values(&start, &end, usize::MAX)? {
            let s = crate::access::Session::decode(&v).map_err(|e| corrupt(&e))?;
            cat.access.sessions.insert(s.id.clone(), s);
        }
        Ok(cat)
    }
}

/// The value of a `tenants` row: tenant id u32 BE, then a flags byte (bit 0: created
/// encrypted) when any flag is set.
pub fn encode_tenant_record(id: TenantId, created_encrypted: bool) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    if created_encrypted {
        out.push(1);
    }
    out
}

fn decode_tenant_record(v: &[u8]) -> Result<(TenantId, u8), String> {
    match v.len() {
        4 | 5 => {
            let id = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
            let flags = v.get(4).copied().unwrap_or(0);
            if flags & !1 != 0 {
                return Err(format!("tenant record has unknown flags 0x{flags:02x}"));
            }
            Ok((id, flags))
        }
        n => Err(format!("tenant record is {n} bytes, expected 4 or 5")),
    }
}

fn corrupt(what: &str) -> kho_engine::Error {
    kho_engine::Error::Corruption { what: format!("catalog: {what}") }
}

pub fn tenant_key(name: &str) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_TENANTS, name.as_bytes(), 0, b"")
}

pub fn table_key(tenant_id: TenantId, name: &str) -> Vec<u8> {
    let mut row = tenant_id.to_be_bytes().to_vec();
    row.extend_from_slice(name.as_bytes());
    keys::data_key(SYSTEM_TENANT, SYS_TABLES, &row, 0, b"")
}

/// The shard map row of a shard.
pub fn shard_key(id: ShardId) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_SHARDS, &id.to_be_bytes(), 0, b"")
}

/// The row recording a dropped table.
pub fn dropped_table_key(tenant: TenantId, table: TableId) -> Vec<u8> {
    let mut row = tenant.to_be_bytes().to_vec();
    row.extend_from_slice(&table.to_be_bytes());
    keys::data_key(SYSTEM_TENANT, SYS_DROPPED_TABLES, &row, 0, b"")
}

pub fn counter_key(name: &[u8]) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_COUNTERS, name, 0, b"")
}

/// Checks a tenant, table or family name: 1..=64 bytes of [a-z0-9_], starting with a letter.
pub fn check_name(field: &str, name: &str) -> Result<(), crate::AppError> {
    let ok_len = !name.is_empty() && name.len() <= NAME_BYTES_MAX;
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let ok_start = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(crate::AppError::invalid(format!(
            "{field} `{name}` must be 1 to {NAME_BYTES_MAX} bytes of a-z, 0-9 and _, starting with a letter"
        )))
    }
}
