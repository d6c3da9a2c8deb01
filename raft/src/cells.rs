//! Resolving a client's mutations into a [`CellWrite`], on the node that proposes it.
//!
//! The proposer turns names into ids (the table, its families), row keys into stored row
//! keys (hashed for a table with hashed row keys) and values into stored bytes (sealed
//! under the tenant's current key, with fresh nonces), using its own applied catalog. The
//! command then carries everything its apply needs, so that no replica needs the catalog
//! or a tenant key to apply it, and every replica writes the same bytes.

use kho_engine::keys::{self, FamilyId};
use kho_engine::{crypto, value};
use serde::{Deserialize, Serialize};

use crate::catalog::TableMeta;
use crate::command::{CellOp, CellWrite, RawCondition};
use crate::keyring::TenantKeys;
use crate::AppError;

/// One cell mutation as a client names it. An empty family names the table's first family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
        family: String,
        #[serde(with = "serde_bytes")]
        qualifier: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
        family: String,
        #[serde(with = "serde_bytes")]
        qualifier: Vec<u8>,
    },
    DeleteFamily {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
        family: String,
    },
    DeleteRow {
        #[serde(with = "serde_bytes")]
        row: Vec<u8>,
    },
}

/// A table with its tenant's keys: what resolving names and sealing values needs.
pub struct TableAccess<'a> {
    pub meta: &'a TableMeta,
    pub keys: Option<&'a TenantKeys>,
}

impl TableAccess<'_> {
    /// The family id of `name`, or NOT_FOUND naming the table.
    pub fn family(&self, name: &str) -> Result<FamilyId, AppError> {
        self.meta.family_id(name).ok_or_else(|| {
            AppError::not_found(format!("column family `{name}` does not exist in table `{}/{}`", self.meta.tenant, self.meta.name))
        })
    }

    /// The row key as stored: a keyed hash for a table with hashed row keys.
    pub fn stored_row(&self, row: &[u8]) -> Result<Vec<u8>, AppError> {
        if !self.meta.hashed_row_keys {
            return Ok(row.to_vec());
        }
        match self.keys.and_then(|k| k.hasher.as_ref()) {
            Some(h) => Ok(h.hash(self.meta.id, row).to_vec()),
            None => Err(AppError::failed_precondition(format!(
                "table `{}/{}` has hashed row keys but its tenant has no hashing key",
                self.meta.tenant, self.meta.name
            ))),
        }
    }

    /// The storage key of a cell.
    pub fn cell_key(&self, row: &[u8], family: &str, qualifier: &[u8]) -> Result<Vec<u8>, AppError> {
        let fam = self.family(family)?;
        Ok(keys::data_key(self.meta.tenant_id, self.meta.id, &self.stored_row(row)?, fam, qualifier))
    }

    /// Resolves `ops` (and a condition's cell, with the stored bytes it must hold) into one
    /// command. An unknown family rejects the whole write.
    pub fn resolve(&self, ops: Vec<WriteOp>, condition: Option<RawCondition>) -> Result<CellWrite, AppError> {
        let sealer = self.keys.and_then(TenantKeys::current);
        let seed = crypto::random_nonce_seed();
        let mut sealed = 0u32;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                WriteOp::Put { row, family, qualifier, value } => {
                    let key = self.cell_key(&row, &family, &qualifier)?;
                    let stored = match sealer {
                        Some((version, k)) => {
                            let nonce = crypto::nonce_at(seed, sealed);
                            sealed += 1;
                            value::seal_value(&key, &value, k, version, nonce)
                        }
                        None => value::encode_value(&key, &value),
                    };
                    CellOp::Put { key, stored }
                }
                WriteOp::Delete { row, family, qualifier } => CellOp::Delete { key: self.cell_key(&row, &family, &qualifier)? },
                WriteOp::DeleteFamily { row, family } => {
                    let p = keys::family_prefix(self.meta.tenant_id, self.meta.id, &self.stored_row(&row)?, self.family(&family)?);
                    let end = keys::prefix_end(&p).expect("a family prefix has an end");
                    CellOp::DeleteRange { start: p, end }
                }
                WriteOp::DeleteRow { row } => {
                    let p = keys::row_prefix(self.meta.tenant_id, self.meta.id, &self.stored_row(&row)?);
                    let end = keys::prefix_end(&p).expect("a row prefix has an end");
                    CellOp::DeleteRange { start: p, end }
                }
            });
        }
        // The router sets the shard and its epoch once it has looked the keys up.
        Ok(CellWrite { shard: 0, epoch: 0, tenant: self.meta.tenant_id, table: self.meta.id, ops: out, condition })
    }
}

/// The first key `w` touches (of its first change, or its condition): the router looks
/// it up to find the shard, then checks [`within`] that shard's range.
pub fn first_key(w: &CellWrite) -> Option<&[u8]> {
    match w.ops.first() {
        Some(CellOp::Put { key, .. } | CellOp::Delete { key }) => Some(key),
        Some(CellOp::DeleteRange { start, .. }) => Some(start),
        None => w.condition.as_ref().map(|c| c.key.as_slice()),
    }
}

/// Whether every key `w` touches lies in `[start, end)`.
pub fn within(w: &CellWrite, start: &[u8], end: &[u8]) -> bool {
    let inside = |k: &[u8]| start <= k && k < end;
    w.ops.iter().all(|op| match op {
        CellOp::Put { key, .. } | CellOp::Delete { key } => inside(key),
        CellOp::DeleteRange { start: s, end: e } => start <= s.as_slice() && e.as_slice() <= end,
    }) && w.condition.as_ref().is_none_or(|c| inside(&c.key))
}

/// Checks that every key of `w` lies in its table's key range (a command is resolved by
/// Kho itself, so a key outside it is a bug, refused rather than written elsewhere).
pub fn check_in_table(w: &CellWrite) -> Result<(), AppError> {
    let prefix = keys::table_prefix(w.tenant, w.table);
    let end = keys::prefix_end(&prefix).expect("a table prefix has an end");
    let inside = |k: &[u8]| k.starts_with(&prefix);
    let ok = w.ops.iter().all(|op| match op {
        CellOp::Put { key, .. } | CellOp::Delete { key } => inside(key),
        CellOp::DeleteRange { start, end: e } => inside(start) && e.as_slice() <= end.as_slice() && start < e,
    }) && w.condition.as_ref().is_none_or(|c| inside(&c.key));
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(format!("a write to table {}/{} names a key outside the table", w.tenant, w.table)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(hashed: bool) -> TableMeta {
        TableMeta {
            tenant: "t".into(),
            tenant_id: 3,
            name: "x".into(),
            id: 7,
            families: vec!["a".into(), "b".into()],
            hashed_row_keys: hashed,
        }
    }

    #[test]
    fn a_plaintext_write_resolves_to_checksummed_values_under_the_table() {
        let meta = table(false);
        let access = TableAccess { meta: &meta, keys: None };
        let w = access
            .resolve(
                vec![
                    WriteOp::Put { row: b"r".to_vec(), family: "b".into(), qualifier: b"q".to_vec(), value: b"v".to_vec() },
                    WriteOp::DeleteRow { row: b"s".to_vec() },
                ],
                None,
            )
            .unwrap();
        assert_eq!((w.tenant, w.table), (3, 7));
        let CellOp::Put { key, stored } = &w.ops[0] else { panic!("{:?}", w.ops[0]) };
        assert_eq!(key, &keys::data_key(3, 7, b"r", meta.family_id("b").unwrap(), b"q"));
        assert_eq!(value::decode_value(key, stored).unwrap(), b"v");
        check_in_table(&w).unwrap();
    }

    #[test]
    fn an_unknown_family_rejects_the_whole_write() {
        let meta = table(false);
        let access = TableAccess { meta: &meta, keys: None };
        let e = access
            .resolve(
                vec![
                    WriteOp::Put { row: b"r".to_vec(), family: "a".into(), qualifier: vec![], value: vec![] },
                    WriteOp::Delete { row: b"r".to_vec(), family: "zz".into(), qualifier: vec![] },
                ],
                None,
            )
            .unwrap_err();
        assert!(e.message.contains("`zz`") && e.message.contains("t/x"), "{e}");
    }

    #[test]
    fn hashed_row_keys_need_the_hashing_key() {
        let meta = table(true);
        let e = TableAccess { meta: &meta, keys: None }.stored_row(b"r").unwrap_err();
        assert!(e.message.contains("hashing key"), "{e}");
    }

    #[test]
    fn keys_outside_the_table_are_refused() {
        let w = CellWrite {
            shard: 1,
            epoch: 1,
            tenant: 3,
            table: 7,
            ops: vec![CellOp::Delete { key: keys::data_key(3, 8, b"r", 0, b"") }],
            condition: None,
        };
        assert!(check_in_table(&w).is_err());
        let w = CellWrite {
            shard: 1,
            epoch: 1,
            tenant: 3,
            table: 7,
            ops: vec![CellOp::DeleteRange { start: keys::table_prefix(3, 7), end: keys::table_prefix(3, 9) }],
            condition: None,
        };
        assert!(check_in_table(&w).is_err());
    }
}
